"""Margin charts, training vs unseen cases, as MRML table / plot-series / plot-chart nodes.

Qt-free; reads the engine's ``asymseg-logit-statistics`` JSON directly (never imports the
engine; format: the docstring of ``AsymSegTrainer/logits.py``). For each class g the chart
shows the distribution of the TRUE-CLASS MARGIN m = z_g - max_{k != g} z_k over the voxels of
g (key ``margins``): on the training cases and on the unseen case(s), with the decision
boundary m = 0 marked. A voxel with m < 0 is on the wrong side: another class wins the argmax,
so the voxel is missed. The headline is that crossing rate, training vs unseen (``marginSentence``);
the paper's shift of the class's own logit, dz = |mean z_unseen| - |mean z_train| (METHOD.md §1),
stays as a secondary number. A summary table lists them per class. A file written before the
engine collected margins has no ``margins``: it still loads, and ``hasMargins`` is False.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .SceneUtils import mrmlScene

FORMAT = "asymseg-logit-statistics"
MARGIN_COLUMN = "margin"
BOUNDARY_COLOR = (0.45, 0.45, 0.45)


def _array(record: dict, key: str, shape: tuple, where: str) -> np.ndarray:
    try:
        array = np.asarray(record[key], np.float64)
    except KeyError:
        raise ValueError(f"{where} lacks the field '{key}'.") from None
    except (TypeError, ValueError):
        raise ValueError(f"{where}: '{key}' is not an array of numbers.") from None
    if array.shape != shape:
        raise ValueError(f"{where}: '{key}' has the shape {array.shape}, expected {shape}.")
    return array


def _volumes(record: dict, key: str, count: int) -> Optional[np.ndarray]:
    """A per-class volume list (mL), None when absent or null (older files, or unknown voxel size)."""
    value = record.get(key)
    if not isinstance(value, list) or len(value) != count or any(v is None for v in value):
        return None
    return np.asarray(value, np.float64)


@dataclass
class MarginHistogram:
    binEdges: np.ndarray   # (B + 1,), 0 among them
    histogram: np.ndarray  # (G, B)
    underflow: np.ndarray  # (G,)
    mean: np.ndarray       # (G,)

    @classmethod
    def fromRecord(cls, record, classCount: int, counts: np.ndarray) -> "MarginHistogram":
        """The nested ``margins`` record (one channel, the margin); ValueError when inconsistent."""
        where = "the field 'margins'"
        if not isinstance(record, dict):
            raise ValueError(f"{where} is not a JSON object.")
        edges = np.asarray(record.get("bin_edges", []), np.float64)
        if edges.ndim != 1 or len(edges) < 2 or not (np.diff(edges) > 0).all() or 0.0 not in edges:
            raise ValueError(f"{where} needs increasing bin edges with 0 among them.")
        bins = len(edges) - 1
        margins = cls(edges, _array(record, "histogram", (classCount, 1, bins), where)[:, 0],
                      _array(record, "underflow", (classCount, 1), where)[:, 0],
                      _array(record, "mean", (classCount, 1), where)[:, 0])
        if not np.array_equal(_array(record, "count", (classCount,), where), counts):
            raise ValueError(f"{where} counts other voxels than its record.")
        return margins

    def belowZero(self) -> np.ndarray:
        """Per class, the voxels with margin < 0: the underflow and the bins ending at or below 0 (exact)."""
        zero = int(np.flatnonzero(self.binEdges == 0.0)[0])
        return self.underflow + self.histogram[:, :zero].sum(axis=1)


@dataclass
class LogitStatistics:
    """What the charts need of one logit-statistics file: counts, own-logit means, margins, volumes."""

    classNames: list
    counts: np.ndarray                  # (G,) voxels per class
    ownMean: Optional[np.ndarray]       # (G,) mean of class g's own logit over its voxels; None if channels differ
    margins: Optional[MarginHistogram]  # None in a file written before margins
    volume: Optional[np.ndarray]        # (G,) mL
    missedVolume: Optional[np.ndarray]  # (G,) mL with margin < 0
    groupedBy: str = "reference"        # or "prediction": voxels grouped by the predicted class (no ground truth)

    @classmethod
    def fromDict(cls, d: dict) -> "LogitStatistics":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            found = d.get("format") if isinstance(d, dict) else None
            raise ValueError(f"Not an AsymSeg logit-statistics record (format {found!r}).")
        if d.get("version") != 1:
            raise ValueError(f"Unsupported logit-statistics version {d.get('version')!r}.")
        where = "the record"
        try:
            classNames, channelNames = [str(n) for n in d["class_names"]], [str(n) for n in d["channel_names"]]
        except (KeyError, TypeError):
            raise ValueError("Logit-statistics record lacks class_names or channel_names.") from None
        g = len(classNames)
        counts = _array(d, "count", (g,), where).astype(np.int64)
        means = _array(d, "mean", (g, len(channelNames)), where)
        ownMean = np.diagonal(means).copy() if channelNames == classNames else None
        margins = MarginHistogram.fromRecord(d["margins"], g, counts) if d.get("margins") is not None else None
        metadata = d.get("metadata") if isinstance(d.get("metadata"), dict) else {}
        return cls(classNames, counts, ownMean, margins, _volumes(d, "volume_ml", g),
                   _volumes(d, "missed_volume_ml", g) if margins is not None else None,
                   str(d.get("grouped_by") or metadata.get("grouped_by") or "reference"))

    @classmethod
    def load(cls, path) -> "LogitStatistics":
        with open(path, encoding="utf-8") as stream:
            try:
                return cls.fromDict(json.load(stream))
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from None

    @property
    def hasMargins(self) -> bool:
        return self.margins is not None

    def crossingRate(self, g: int) -> Optional[float]:
        """Share of class g's voxels with margin < 0 (missed); None without margins or voxels."""
        if self.margins is None or not self.counts[g]:
            return None
        return float(self.margins.belowZero()[g] / self.counts[g])

    def density(self, g: int) -> np.ndarray:
        """The margin histogram of class g as a density (integrates to the in-range share of its voxels)."""
        widths = np.diff(self.margins.binEdges)
        return self.margins.histogram[g] / (self.counts[g] * widths) if self.counts[g] else np.zeros_like(widths)

    def marginMean(self, g: int) -> Optional[float]:
        return float(self.margins.mean[g]) if self.margins is not None and self.counts[g] else None

    def ownLogitMean(self, g: int) -> Optional[float]:
        return float(self.ownMean[g]) if self.ownMean is not None and self.counts[g] else None


def logitShift(train: LogitStatistics, unseen: LogitStatistics, g: int) -> Optional[float]:
    """The paper's dz of class g's own logit: |mean z_unseen| - |mean z_train| (negative: towards the boundary)."""
    a, b = train.ownLogitMean(g), unseen.ownLogitMean(g)
    return None if a is None or b is None else abs(b) - abs(a)


def percent(rate: float) -> str:
    """``0.413`` -> ``"41%"``, ``0.034`` -> ``"3.4%"``: one decimal below 10%."""
    return f"{100 * rate:.0f}%" if rate >= 0.1 else f"{100 * rate:.1f}%"


def marginSentence(className: str, g: int, train: LogitStatistics, unseen: Optional[LogitStatistics],
                   unseenOwner: str = "the unseen cases'") -> str:
    """The class's crossing rate on the unseen side against the training cases, in one sentence.

    E.g. "tumor: 41% of this case's voxels (12.3 mL) are on the wrong side of the boundary
    (missed), against 3.0% on the training cases; dz -0.34 (paper's measure)". ``unseenOwner``
    is the possessive of the unseen side ("this case's", "the validation cases'").
    """
    trainRate = train.crossingRate(g)
    trainPart = "no voxels of it in the training cases" if trainRate is None else \
        f"{percent(trainRate)} on the training cases"
    if unseen is None:
        return f"{className}: {trainPart} on the wrong side of the boundary (missed); no unseen cases." \
            if trainRate is not None else f"{className}: {trainPart}."
    if unseen.groupedBy == "prediction":
        return (f"{className}: without a ground truth the voxels are grouped by the prediction, so none is on the "
                f"wrong side of the boundary; apply the model with a ground truth to see what it misses.")
    rate = unseen.crossingRate(g)
    if rate is None:
        return f"{className}: no voxels of it among {unseenOwner} voxels; {trainPart}."
    missed = f" ({unseen.missedVolume[g]:.3g} mL)" if unseen.missedVolume is not None else ""
    dz = logitShift(train, unseen, g)
    return (f"{className}: {percent(rate)} of {unseenOwner} voxels{missed} are on the wrong side of the boundary "
            f"(missed), against {trainPart}" + (f"; dz {dz:+.2f} (paper's measure)" if dz is not None else "") + ".")


def _visibleRange(arrays: list, size: int, margin: int = 2) -> slice:
    occupied = np.zeros(size, bool)
    for a in arrays:
        occupied |= a > 0
    if not occupied.any():
        return slice(0, size)
    idx = np.flatnonzero(occupied)
    return slice(max(idx[0] - margin, 0), min(idx[-1] + margin + 1, size))


@dataclass
class LogitChartSet:
    charts: dict          # class name -> vtkMRMLPlotChartNode
    tables: dict          # class name -> vtkMRMLTableNode
    series: dict          # class name -> [vtkMRMLPlotSeriesNode]: training, unseen, boundary (at most four)
    summary: object       # vtkMRMLTableNode
    sentences: dict       # class name -> marginSentence

    def nodes(self) -> list:
        """Every node of the set (charts, their tables and series, the summary table), each once."""
        found = [self.summary, *self.charts.values(), *self.tables.values()]
        for series in self.series.values():
            found += series
        for series in self.series.values():
            found += [s.GetTableNode() for s in series]
        unique, seen = [], set()
        for node in found:
            if node is not None and node.GetID() not in seen:
                seen.add(node.GetID())
                unique.append(node)
        return unique


SIDE_WORDS = {"train": "training cases", "validation": "validation cases", "unseen": "unseen cases"}
"""A side's chart label -> its words in node names ("lesion margin, training cases: 3.0% missed")."""


def sideWords(label: str) -> str:
    return SIDE_WORDS.get(label, label)


def _series(scene, name: str, table, xColumn: str, yColumn: str, color, style: str, width: int):
    import slicer

    node = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(name))
    node.SetName(name)
    node.SetAndObserveTableNodeID(table.GetID())
    node.SetXColumnName(xColumn)
    node.SetYColumnName(yColumn)
    node.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    node.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
    node.SetLineStyle(getattr(slicer.vtkMRMLPlotSeriesNode, f"LineStyle{style}"))
    node.SetLineWidth(width)
    node.SetColor(*color)
    return node


def buildMarginCharts(train: LogitStatistics, unseen: Optional[LogitStatistics] = None, name: str = "AsymSeg",
                      colors: Optional[dict] = None, trainLabel: str = "train", unseenLabel: str = "unseen",
                      unseenOwner: str = "the unseen cases'") -> LogitChartSet:
    """New table, series and chart nodes for every class with voxels on either side; both files need margins.

    Node names are plain words, prefixed by ``name`` (the run or case): the chart "<name>: lesion margin,
    training vs validation cases", its table "<name>: lesion margin densities", the series "lesion margin,
    training cases: 3.0% missed" and "lesion decision boundary (margin 0)", the tables "<name>: decision
    boundaries" and "<name>: margin summary"."""
    import slicer

    from .ResultImport import classColors, tableFromRows

    if not train.hasMargins or (unseen is not None and not unseen.hasMargins):
        raise ValueError("Both logit-statistics files need margins to chart them.")
    if unseen is not None and unseen.classNames != train.classNames:
        raise ValueError(f"Training and unseen statistics have different classes: {train.classNames} vs "
                         f"{unseen.classNames}.")
    if unseen is not None and not np.array_equal(unseen.margins.binEdges, train.margins.binEdges):
        raise ValueError("Training and unseen margins use different bin edges.")
    scene = mrmlScene()
    prefix = f"{name}: " if name else ""
    palette = classColors(train.classNames, colors)
    palette[0] = (0.35, 0.35, 0.35)  # background drawn in grey rather than black
    edges = train.margins.binEdges
    centers = 0.5 * (edges[:-1] + edges[1:])
    charts, tables, seriesByClass, sentences, summaryRows = {}, {}, {}, {}, []
    sides = [(trainLabel, train)] + ([(unseenLabel, unseen)] if unseen is not None else [])
    boundaryColumns = {MARGIN_COLUMN: np.zeros(2)}
    for g, className in enumerate(train.classNames):
        sentences[className] = marginSentence(className, g, train, unseen, unseenOwner)
        summaryRows.append({
            "class": className, "train voxels": int(train.counts[g]),
            "unseen voxels": int(unseen.counts[g]) if unseen is not None else None,
            "train missed (%)": _scaled(train.crossingRate(g)),
            "unseen missed (%)": _scaled(unseen.crossingRate(g)) if unseen is not None else None,
            "unseen missed (mL)": float(unseen.missedVolume[g]) if unseen is not None and
            unseen.missedVolume is not None else None,
            "train mean margin": train.marginMean(g),
            "unseen mean margin": unseen.marginMean(g) if unseen is not None else None,
            "dz": logitShift(train, unseen, g) if unseen is not None else None})
        present = [(label, stats) for label, stats in sides if stats.counts[g]]
        if not present:
            continue
        densities = {label: stats.density(g) for label, stats in present}
        window = _visibleRange(list(densities.values()), len(centers))
        tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{prefix}{className} margin densities"))
        slicer.util.updateTableFromArray(tableNode, [centers[window]] + [d[window] for d in densities.values()],
                                         [MARGIN_COLUMN] + list(densities))
        boundaryColumns[className] = np.array([0.0, max(float(d[window].max()) for d in densities.values())])
        chartNode = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(
            f"{prefix}{className} margin, " + " vs ".join(sideWords(label) for label, _ in sides)))
        rates = {label: stats.crossingRate(g) for label, stats in present if stats.groupedBy != "prediction"}
        headline = " vs ".join(f"{percent(rate)} missed on {label}" for label, rate in rates.items())
        chartNode.SetTitle(f"'{className}' margin" + (f": {headline}" if headline else ""))
        chartNode.SetXAxisTitle("margin: own logit - largest other (< 0: missed)")
        chartNode.SetYAxisTitle("density")
        chartNode.SetAttribute("AsymSeg.Class", className)
        chartNode.SetAttribute("AsymSeg.Summary", sentences[className])
        seriesNodes = []
        for label, stats in present:
            title = f"{className} margin, {sideWords(label)}" + \
                (f": {percent(rates[label])} missed" if label in rates else "")
            seriesNode = _series(scene, title, tableNode, MARGIN_COLUMN, label, palette[g],
                                 "Solid" if stats is train else "Dash", 3 if stats is train else 2)
            seriesNode.SetAttribute("AsymSeg.Side", "train" if stats is train else "unseen")
            chartNode.AddAndObservePlotSeriesNodeID(seriesNode.GetID())
            seriesNodes.append(seriesNode)
        charts[className], tables[className], seriesByClass[className] = chartNode, tableNode, seriesNodes
    if charts:  # one table holds the boundary line of every chart: x = 0, from 0 to the chart's highest density
        boundaryTable = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{prefix}decision boundaries"))
        slicer.util.updateTableFromArray(boundaryTable, list(boundaryColumns.values()), list(boundaryColumns))
        for className, chartNode in charts.items():
            seriesNode = _series(scene, f"{className} decision boundary (margin 0)", boundaryTable, MARGIN_COLUMN, className, BOUNDARY_COLOR,
                                 "Dot", 1)
            seriesNode.SetAttribute("AsymSeg.Side", "boundary")
            chartNode.AddAndObservePlotSeriesNodeID(seriesNode.GetID())
            seriesByClass[className].append(seriesNode)
    summary = tableFromRows(summaryRows, list(summaryRows[0]), f"{prefix}margin summary")
    return LogitChartSet(charts, tables, seriesByClass, summary, sentences)


def _scaled(rate: Optional[float]) -> Optional[float]:
    return None if rate is None else 100.0 * rate


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
