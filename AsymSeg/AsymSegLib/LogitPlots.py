"""Logit histograms, training vs unseen cases, as MRML table / plot-series / plot-chart nodes.

Qt-free; reads the engine's ``asymseg-logit-statistics`` JSON directly (never imports the
engine). For each ground-truth class g there is one chart; for each logit channel c it has a
training series and an unseen series (histograms normalised to densities on the shared bin
edges), named with the paper's shift dz = |mean z_unseen| - |mean z_train| (METHOD.md §1).
A summary table lists counts, means and dz per class and channel. A rare class whose own
logit moves towards 0 on unseen cases (dz < 0) is the over-fitting signature.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .SceneUtils import mrmlScene

FORMAT = "asymseg-logit-statistics"


@dataclass
class LogitHistograms:
    classNames: list
    channelNames: list
    binEdges: np.ndarray     # (B + 1,)
    counts: np.ndarray       # (G,) voxels per class
    histogram: np.ndarray    # (G, C, B)
    mean: np.ndarray         # (G, C)

    @classmethod
    def fromDict(cls, d: dict) -> "LogitHistograms":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"Not an AsymSeg logit-statistics record (format {d.get('format') if isinstance(d, dict) else None!r}).")
        if d.get("version") != 1:
            raise ValueError(f"Unsupported logit-statistics version {d.get('version')!r}.")
        try:
            stats = cls(list(d["class_names"]), list(d["channel_names"]), np.asarray(d["bin_edges"], float),
                        np.asarray(d["count"], np.int64), np.asarray(d["histogram"], np.float64),
                        np.asarray(d["mean"], np.float64))
        except KeyError as error:
            raise ValueError(f"Logit-statistics record lacks the field {error}.") from None
        g, c, b = len(stats.classNames), len(stats.channelNames), len(stats.binEdges) - 1
        if stats.counts.shape != (g,) or stats.histogram.shape != (g, c, b) or stats.mean.shape != (g, c):
            raise ValueError("Logit-statistics record has inconsistent array shapes.")
        return stats

    @classmethod
    def load(cls, path) -> "LogitHistograms":
        with open(path, encoding="utf-8") as stream:
            try:
                return cls.fromDict(json.load(stream))
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from None

    @property
    def centers(self) -> np.ndarray:
        return 0.5 * (self.binEdges[:-1] + self.binEdges[1:])

    def density(self, g: int, c: int) -> np.ndarray:
        """Histogram normalised so that it integrates to the in-range share of the class's voxels."""
        widths = np.diff(self.binEdges)
        total = self.counts[g]
        return self.histogram[g, c] / (total * widths) if total else np.zeros_like(widths)

    def meanOf(self, g: int, c: int) -> Optional[float]:
        return float(self.mean[g, c]) if self.counts[g] else None


def logitShift(train: LogitHistograms, unseen: LogitHistograms, g: int, c: int) -> Optional[float]:
    a, b = train.meanOf(g, c), unseen.meanOf(g, c)
    return None if a is None or b is None else abs(b) - abs(a)


def _visibleRange(arrays: list, centers: np.ndarray, margin: int = 2) -> slice:
    occupied = np.zeros(len(centers), bool)
    for a in arrays:
        occupied |= a > 0
    if not occupied.any():
        return slice(0, len(centers))
    idx = np.flatnonzero(occupied)
    return slice(max(idx[0] - margin, 0), min(idx[-1] + margin + 1, len(centers)))


@dataclass
class LogitChartSet:
    charts: dict          # class name -> vtkMRMLPlotChartNode
    tables: dict          # class name -> vtkMRMLTableNode
    series: dict          # class name -> [vtkMRMLPlotSeriesNode]
    summary: object       # vtkMRMLTableNode


def buildLogitCharts(train: LogitHistograms, unseen: Optional[LogitHistograms] = None, name: str = "AsymSeg logits",
                     colors: Optional[dict] = None, trainLabel: str = "train", unseenLabel: str = "unseen") -> LogitChartSet:
    """New table, series and chart nodes for every class that has voxels on either side."""
    import slicer

    from .ResultImport import classColors, tableFromRows

    if unseen is not None and (unseen.classNames != train.classNames or unseen.channelNames != train.channelNames):
        raise ValueError(f"Training and unseen statistics have different classes/channels: "
                         f"{train.classNames}/{train.channelNames} vs {unseen.classNames}/{unseen.channelNames}.")
    if unseen is not None and not np.array_equal(unseen.binEdges, train.binEdges):
        raise ValueError("Training and unseen statistics use different bin edges.")
    scene = mrmlScene()
    palette = classColors(train.channelNames, colors)
    palette[0] = (0.35, 0.35, 0.35)  # the background channel drawn in grey rather than black
    charts, tables, seriesByClass, summaryRows = {}, {}, {}, []
    centers = train.centers
    for g, className in enumerate(train.classNames):
        hasTrain = bool(train.counts[g])
        hasUnseen = unseen is not None and bool(unseen.counts[g])
        for c, channel in enumerate(train.channelNames):
            summaryRows.append({
                "class": className, "logit channel": channel,
                "train voxels": int(train.counts[g]), "unseen voxels": int(unseen.counts[g]) if unseen else None,
                "train mean": train.meanOf(g, c), "unseen mean": unseen.meanOf(g, c) if unseen else None,
                "dz": logitShift(train, unseen, g, c) if unseen else None})
        if not (hasTrain or hasUnseen):
            continue
        densities = {}
        for c, channel in enumerate(train.channelNames):
            densities[(channel, trainLabel)] = train.density(g, c)
            if unseen is not None:
                densities[(channel, unseenLabel)] = unseen.density(g, c)
        window = _visibleRange(list(densities.values()), centers)
        tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{name} {className} table"))
        columns = {"logit": centers[window]}
        for (channel, side), values in densities.items():
            columns[f"{channel} {side}"] = values[window]
        slicer.util.updateTableFromArray(tableNode, list(columns.values()), list(columns.keys()))
        chartNode = scene.AddNewNodeByClass("vtkMRMLPlotChartNode",
                                            scene.GenerateUniqueName(f"{name} {className}"))
        chartNode.SetTitle(f"Logits on '{className}' voxels: {trainLabel} vs {unseenLabel}")
        chartNode.SetXAxisTitle("logit z")
        chartNode.SetYAxisTitle("density")
        chartNode.SetAttribute("AsymSeg.Class", className)
        seriesNodes = []
        for (channel, side) in densities:
            c = train.channelNames.index(channel)
            label = f"z[{channel}] {side}"
            if side == unseenLabel:
                dz = logitShift(train, unseen, g, c)
                label += f" (dz={dz:+.2f})" if dz is not None else " (no voxels)"
            elif not hasTrain:
                label += " (no voxels)"
            seriesNode = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(label))
            seriesNode.SetName(label)
            seriesNode.SetAndObserveTableNodeID(tableNode.GetID())
            seriesNode.SetXColumnName("logit")
            seriesNode.SetYColumnName(f"{channel} {side}")
            seriesNode.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            seriesNode.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
            seriesNode.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleSolid if side == trainLabel
                                    else slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
            seriesNode.SetLineWidth(3 if side == trainLabel else 2)
            seriesNode.SetColor(*palette[c])
            seriesNode.SetAttribute("AsymSeg.Side", side)
            seriesNode.SetAttribute("AsymSeg.Channel", channel)
            chartNode.AddAndObservePlotSeriesNodeID(seriesNode.GetID())
            seriesNodes.append(seriesNode)
        charts[className], tables[className], seriesByClass[className] = chartNode, tableNode, seriesNodes
    summary = tableFromRows(summaryRows, ["class", "logit channel", "train voxels", "unseen voxels",
                                          "train mean", "unseen mean", "dz"], f"{name} summary")
    return LogitChartSet(charts, tables, seriesByClass, summary)


def preferredChart(chartSet: LogitChartSet, rarity: Optional[dict] = None):
    """The chart to show first: the first rare class with a chart, else the last class."""
    for className, chart in chartSet.charts.items():
        if rarity and rarity.get(className, 0) > 0:
            return chart
    return list(chartSet.charts.values())[-1] if chartSet.charts else None


def showChart(chartNode) -> None:
    """Switch to a layout with a plot view and show ``chartNode`` in it."""
    import slicer

    plots = getattr(getattr(slicer, "modules", None), "plots", None)
    logic = plots.logic() if plots is not None else None
    if logic is None:
        raise RuntimeError("The Plots module logic is not available.")
    logic.ShowChartInLayout(chartNode)
