"""Reading annotations and ROI masks as arrays in the geometry of a case's first channel.

Qt-free. A labelmap volume is read as it is (its raw label values). A segmentation is
exported, all segments at once (or the chosen ones, for a mask), onto the reference volume's
voxel grid through a temporary labelmap node that is removed again (with the display and
colour nodes the export adds), so the scene ends as it began and the segmentation itself is
never modified.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .Cases import isLabelmap, isSegmentation
from .SceneUtils import mrmlScene, removeWithDependents


@dataclass
class SegmentInfo:
    segmentId: str
    name: str
    color: tuple
    provisionalValue: int  # value in the array returned by readAnnotation (segment order, from 1)


@dataclass
class AnnotationArray:
    array: np.ndarray        # (k, j, i), raw values (labelmap) or provisional segment values
    segments: list           # SegmentInfo per segment (segmentation), [] for a labelmap
    names: dict              # raw value -> name from a user colour table (labelmap), else {}
    colors: dict             # raw value -> (r, g, b)


def colorTableNames(labelmapNode) -> tuple[dict, dict]:
    """(value -> name, value -> colour) from a labelmap's colour table.

    Names only from user colour tables: Slicer's built-in tables (singleton nodes such as
    'Labels', whose entry 1 is 'jake') carry no meaning for the user's classes.
    """
    names, colors = {}, {}
    display = labelmapNode.GetDisplayNode() if labelmapNode is not None else None
    colorNode = display.GetColorNode() if display is not None else None
    if colorNode is None:
        return names, colors
    builtIn = bool(colorNode.GetSingletonTag())
    rgba = [0.0, 0.0, 0.0, 0.0]
    for value in range(colorNode.GetNumberOfColors()):
        if colorNode.GetColor(value, rgba):
            colors[value] = tuple(rgba[:3])
        name = colorNode.GetColorName(value)
        if not builtIn and name and name not in ("(none)", "invalid"):
            names[value] = name
    return names, colors


def readAnnotation(annotation, referenceVolume) -> AnnotationArray:
    """The annotation's labels on ``referenceVolume``'s grid (a labelmap must already share it)."""
    import slicer

    if isLabelmap(annotation):
        array = slicer.util.arrayFromVolume(annotation)  # a view: only read, never written
        names, colors = colorTableNames(annotation)
        return AnnotationArray(array, [], names, colors)
    if not isSegmentation(annotation):
        raise ValueError(f"'{annotation.GetName()}' is neither a labelmap volume nor a segmentation.")
    return _exportSegmentation(annotation, referenceVolume)


def readMask(mask, segmentId: str, referenceVolume) -> np.ndarray:
    """An ROI mask as a boolean (k, j, i) array on ``referenceVolume``'s grid: a labelmap's non-zero
    voxels (it must already share the grid), or segment ``segmentId`` of a segmentation ("" = all)."""
    if isLabelmap(mask):
        return readAnnotation(mask, referenceVolume).array != 0
    if not isSegmentation(mask):
        raise ValueError(f"ROI mask '{mask.GetName()}' is neither a labelmap volume nor a segmentation.")
    if segmentId and mask.GetSegmentation().GetSegment(segmentId) is None:
        raise ValueError(f"ROI mask segment '{segmentId}' is not in segmentation '{mask.GetName()}'.")
    return _exportSegmentation(mask, referenceVolume, [segmentId] if segmentId else None).array != 0


def _exportSegmentation(segmentationNode, referenceVolume, segmentIds=None) -> AnnotationArray:
    """Export the segments ``segmentIds`` (None: all) onto the reference grid, one provisional value each."""
    import slicer
    import vtk

    segmentation = segmentationNode.GetSegmentation()
    ids = vtk.vtkStringArray()
    segments = []
    allIds = [segmentation.GetNthSegmentID(index) for index in range(segmentation.GetNumberOfSegments())]
    for segmentId in allIds if segmentIds is None else segmentIds:
        segment = segmentation.GetSegment(segmentId)
        ids.InsertNextValue(segmentId)
        segments.append(SegmentInfo(segmentId, segment.GetName(), tuple(segment.GetColor()), len(segments) + 1))
    shape = tuple(reversed(referenceVolume.GetImageData().GetDimensions()))
    if not segments:
        return AnnotationArray(np.zeros(shape, np.uint8), [], {}, {})
    scene = mrmlScene()
    temporary = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__AsymSegExport__")
    try:
        logic = slicer.modules.segmentations.logic()
        if not logic.ExportSegmentsToLabelmapNode(segmentationNode, ids, temporary, referenceVolume):
            raise RuntimeError(f"Could not export segmentation '{segmentationNode.GetName()}' onto "
                               f"'{referenceVolume.GetName()}'.")
        array = np.array(slicer.util.arrayFromVolume(temporary), copy=True)
    finally:
        removeWithDependents(scene, temporary)
    if array.shape != shape:
        raise RuntimeError(f"Exported segmentation '{segmentationNode.GetName()}' has shape {array.shape}, "
                           f"expected {shape}.")
    return AnnotationArray(array, segments, {}, {s.provisionalValue: s.color for s in segments})
