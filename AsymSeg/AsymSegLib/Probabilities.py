"""Class probabilities of a prediction: where the model hesitates, and logit offsets applied live.

``infer --probabilities`` writes ``<stem>_probabilities.nii.gz`` beside the label map: the
softmax, one vector component per class, in the geometry of the first input channel
(docs/protocol.md, "infer outputs"). ``readProbabilities`` reads it and checks its class count
and grid against the input volume; ``addProbabilityOverlays`` makes one scalar volume per rare
class, colour-mapped where the probability is not negligible, for the slice views' foreground.

``OffsetPreview`` relabels the prediction with per-class logit offsets b_k. Adding b_k to class
k's logit multiplies its softmax numerator by e^b_k, so the label is argmax_k(log p_k + b_k):
the stored probabilities suffice, without the network or an engine call. Probabilities are
clipped at float32's smallest normal number (about e^-87) before the log, so a softmax that
underflowed to 0 stays finite and the least likely by far. All offsets 0 is the engine's own
label map (post-processed as the model chose); with offsets, the argmax itself (no post-processing).

Qt-free. Every node made here is new; the user's nodes are only read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .Geometry import Geometry
from .ResultImport import tableFromRows
from .SceneUtils import folderOf, mrmlScene, placeInFolder, readVolumeData, removeWithDependents

PROBABILITY_FLOOR = float(np.finfo(np.float32).tiny)
HEAT_COLORS = "vtkMRMLPETProceduralColorNodePET-Heat"  # black-red-yellow-white, built into Slicer's Colors module
OVERLAY_THRESHOLD = 0.05  # probabilities below are transparent in the overlay: only where the class is plausible
OVERLAY_OPACITY = 0.5     # of the overlay as the slice views' foreground: the image stays readable under it
OFFSETS_ATTRIBUTE = "AsymSeg.LogitOffsets"


@dataclass
class Probabilities:
    array: np.ndarray      # (K, k, j, i) float32, component c = class c
    ijkToRas: np.ndarray   # 4 x 4
    path: Path

    @property
    def voxelMilliliters(self) -> float:
        return abs(float(np.linalg.det(self.ijkToRas[:3, :3]))) / 1000.0


def readProbabilities(path, classNames: list, referenceVolume) -> Probabilities:
    """The engine's probability file, checked to hold one component per class on the reference volume's grid."""
    import slicer
    import vtk

    node = readVolumeData(slicer.vtkMRMLVectorVolumeNode(), path, "the class probabilities")  # no scene
    array = slicer.util.arrayFromVolume(node)
    components = array.shape[3] if array.ndim == 4 else 1
    if components != len(classNames):
        raise RuntimeError(f"The class probabilities {path} have {components} component(s); the model has "
                           f"{len(classNames)} classes {classNames}.")
    differences = Geometry.fromVolume(node).differences(Geometry.fromVolume(referenceVolume))
    if differences:
        raise RuntimeError(f"The class probabilities {path} are not on the grid of '{referenceVolume.GetName()}': "
                           f"{'; '.join(differences)}.")
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return Probabilities(np.ascontiguousarray(np.moveaxis(array, -1, 0), dtype=np.float32),
                         slicer.util.arrayFromVTKMatrix(matrix), Path(path))


def rareClasses(classNames: list, rarity: Optional[dict]) -> list:
    """The classes after the first (background) whose rarity is > 0; a class the rarity omits counts as
    rare (the job's default: first class 0, others 1)."""
    rarity = rarity or {}
    return [name for name in classNames[1:] if float(rarity.get(name, 1.0)) > 0]


def addProbabilityOverlays(probabilities: Probabilities, classNames: list, classes: list, caseName: str) -> dict:
    """New scalar volumes "<case> <class> probability" (class name -> node), heat colours on [0, 1],
    transparent below ``OVERLAY_THRESHOLD``."""
    import slicer

    overlays = {}
    for name in classes:
        node = slicer.util.addVolumeFromArray(probabilities.array[classNames.index(name)], probabilities.ijkToRas,
                                              name=f"{caseName} {name} probability")
        node.SetAttribute("AsymSeg.ProbabilityOf", name)
        display = node.GetDisplayNode()
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(0.0, 1.0)
        display.SetThreshold(OVERLAY_THRESHOLD, 1.0)
        display.ApplyThresholdOn()
        display.SetAndObserveColorNodeID(HEAT_COLORS)
        overlays[name] = node
    return overlays


@dataclass
class Calibration:
    """Logit offsets the engine fitted to the model (model meta ``calibration``, reported in the infer
    ``start`` event's ``config``)."""

    offsets: dict     # class name -> logit offset
    criterion: str

    @classmethod
    def fromConfig(cls, config: dict) -> Optional["Calibration"]:
        """The calibration of an infer ``start`` config; None when absent or without numeric offsets."""
        data = config.get("calibration") if isinstance(config, dict) else None
        offsets = data.get("offsets") if isinstance(data, dict) else None
        if not isinstance(offsets, dict):
            return None
        numbers = {str(k): float(v) for k, v in offsets.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return cls(numbers, str(data.get("criterion") or "")) if numbers else None


def describeOffsets(offsets: dict) -> str:
    """``"tumor +1.50, edema -0.30"``; ``"none"`` when every offset is 0."""
    parts = [f"{name} {value:+.2f}" for name, value in offsets.items() if value]
    return ", ".join(parts) or "none"


class OffsetPreview:
    """The prediction segmentation relabelled live with per-class logit offsets.

    ``show(offsets)`` updates its segments in place (a node the module created); ``apply()``
    keeps what is shown: the segmentation's name and ``AsymSeg.LogitOffsets`` attribute say
    which offsets, and a table (in the prediction's subject-hierarchy folder) records them with the class
    volumes; ``discard()`` goes back to
    what was last applied, ``reset()`` to the engine's label map.
    """

    def __init__(self, probabilities: Probabilities, classNames: list, segmentation, predicted: np.ndarray):
        if probabilities.array.shape[1:] != predicted.shape:
            raise RuntimeError(f"The class probabilities {probabilities.path} ({probabilities.array.shape[1:]}) and "
                               f"the prediction ({predicted.shape}) differ in size.")
        self.classNames = list(classNames)
        self.segmentation = segmentation
        self.baseName = segmentation.GetName()
        self.logProbabilities = np.log(np.clip(probabilities.array, PROBABILITY_FLOOR, 1.0))
        self.predicted = predicted
        self.ijkToRas = probabilities.ijkToRas
        self.voxelMilliliters = probabilities.voxelMilliliters
        segments = segmentation.GetSegmentation()
        self.segmentIds = [segments.GetSegmentIdBySegmentName(name) for name in self.classNames[1:]]
        self.shown: dict = {}
        self.applied: dict = {}
        self.table = None
        self.rows: list = []

    def labels(self, offsets: dict) -> np.ndarray:
        """Class indices with ``offsets`` (class name -> logit offset): argmax_k(log p_k + b_k), computed
        one class at a time (memory: two volumes); the engine's label map when every offset is 0."""
        bias = np.zeros(len(self.classNames), np.float32)
        for name, value in offsets.items():
            if name not in self.classNames:
                raise ValueError(f"No class '{name}' in the model's classes {self.classNames}.")
            bias[self.classNames.index(name)] = value
        if not bias.any():
            return self.predicted
        best = self.logProbabilities[0] + bias[0]
        labels = np.zeros(best.shape, np.uint8)
        for k in range(1, len(self.classNames)):
            score = self.logProbabilities[k] + bias[k]
            labels[score > best] = k
            np.maximum(best, score, out=best)
        return labels

    def show(self, offsets: dict) -> np.ndarray:
        """Put the labels of ``offsets`` into the segmentation's segments; returns them."""
        import slicer
        import vtk

        scene = mrmlScene()
        name = self.segmentation.GetName()
        if not scene.IsNodePresent(self.segmentation):
            raise RuntimeError(f"The prediction '{name}' is no longer in the scene: apply the model again.")
        segments = self.segmentation.GetSegmentation()
        ids = vtk.vtkStringArray()
        for className, segmentId in zip(self.classNames[1:], self.segmentIds):
            if segments.GetSegment(segmentId) is None:
                raise RuntimeError(f"The segment '{className}' of '{name}' was removed: apply the model again.")
            ids.InsertNextValue(segmentId)
        labels = self.labels(offsets)
        labelmap = slicer.util.addVolumeFromArray(labels, self.ijkToRas, name="__AsymSegOffsets__",
                                                  nodeClassName="vtkMRMLLabelMapVolumeNode")
        try:
            if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, self.segmentation,
                                                                                         ids):
                raise RuntimeError(f"Could not update the segments of '{name}'.")
        finally:
            removeWithDependents(scene, labelmap)
        self.shown = {k: float(v) for k, v in offsets.items() if v}
        return labels

    def apply(self):
        """Keep the offsets shown: name and attribute of the segmentation, a row of the offsets table
        (the first row is the prediction as the engine made it). Returns the table node."""
        if not self.rows:
            self.rows.append(self._row({}, self.baseName))
        self._label(self.shown)
        self.rows.append(self._row(self.shown, self.segmentation.GetName()))
        columns = list(self.rows[0])
        if self.table is None:
            self.table = tableFromRows(self.rows, columns, f"{self.baseName} logit offsets")
            placeInFolder(folderOf(self.segmentation), self.table)  # beside the prediction, in its run's folder
        else:
            tableFromRows(self.rows, columns, tableNode=self.table)
        return self.table

    def discard(self) -> None:
        """Show what was last applied again, if something else is shown."""
        if self.shown != self.applied:
            self.show(self.applied)

    def reset(self) -> None:
        """The engine's label map, under the segmentation's first name."""
        self.show({})
        self._label({})

    def _label(self, offsets: dict) -> None:
        self.applied = dict(offsets)
        if offsets:
            self.segmentation.SetName(f"{self.baseName} (logit offsets {describeOffsets(offsets)})")
            self.segmentation.SetAttribute(OFFSETS_ATTRIBUTE, json.dumps(offsets))
        else:
            self.segmentation.SetName(self.baseName)
            self.segmentation.RemoveAttribute(OFFSETS_ATTRIBUTE)

    def voxelCounts(self, labels: np.ndarray) -> dict:
        """Voxels of each class but the first (background) in ``labels``."""
        counts = np.bincount(labels.ravel(), minlength=len(self.classNames))
        return {name: int(counts[index]) for index, name in enumerate(self.classNames[1:], start=1)}

    def milliliters(self, labels: np.ndarray) -> dict:
        """Volume of each class but the first (background) in ``labels``, in mL."""
        return {name: count * self.voxelMilliliters for name, count in self.voxelCounts(labels).items()}

    def _row(self, offsets: dict, segmentationName: str) -> dict:
        row = {"Segmentation": segmentationName, "Logit offsets": describeOffsets(offsets)}
        for name, count in self.voxelCounts(self.labels(offsets)).items():
            row[f"{name} voxels"] = count
            row[f"{name} (mL)"] = count * self.voxelMilliliters
        return row
