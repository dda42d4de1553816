"""Import of engine results into NEW MRML nodes: prediction -> segmentation, metrics -> table.

The metrics table has one row per post-processing and class, its columns in plain words with
their units (percent for rates, mm for HD95: "DSC (%)", "Sensitivity (%)", "Precision (%)",
"HD95 (mm)"...): voxel overlap, then lesions found, missed and
false positive (a lesion is a 26-connected component; protocol.md, "infer outputs"), and a
sentence saying what each post-processing did.

Qt-free. The prediction file holds class indices (0 = background) in the exact geometry of
the first input channel (protocol.md, "infer outputs"); it is read into a temporary labelmap
with a colour table that carries the class names and colours, imported as a segmentation
(one segment per foreground class, named and coloured, empty classes included so the list is
complete), and the temporaries are removed. The reference geometry is the input volume's.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from .Classes import PALETTE
from .SceneUtils import mrmlScene, readVolumeData, removeWithDependents

PREDICTION_ATTRIBUTE = "AsymSeg.Prediction"
"""Set on every segmentation a prediction import makes (value: the prediction file): what lists predictions."""


def readLabelmap(path, name: str = "__AsymSegPrediction__"):
    """Read a label image into a new labelmap node in the scene (caller removes it)."""
    scene = mrmlScene()
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    try:
        return readVolumeData(node, path, "the label image")
    except RuntimeError:
        scene.RemoveNode(node)
        raise


def readLabelArray(path) -> np.ndarray:
    """The voxels (k, j, i) of a label image, read into a node of no scene."""
    import slicer

    return slicer.util.arrayFromVolume(readVolumeData(slicer.vtkMRMLLabelMapVolumeNode(), path, "the label image"))


def classColors(classNames: list, colors: Optional[dict] = None) -> list:
    """A colour per class (index order): the given one, else the palette."""
    colors = colors or {}
    result = []
    for index, name in enumerate(classNames):
        color = colors.get(name)
        result.append(tuple(color) if color is not None else (0.0, 0.0, 0.0) if index == 0
                      else PALETTE[(index - 1) % len(PALETTE)])
    return result


def _colorTable(classNames: list, colors: list):
    import slicer

    table = slicer.vtkMRMLColorTableNode()
    table.SetTypeToUser()
    table.SetName("__AsymSegClasses__")
    table.HideFromEditorsOn()
    table.SetNumberOfColors(len(classNames))
    table.NamesInitialisedOn()
    for index, (name, color) in enumerate(zip(classNames, colors)):
        table.SetColor(index, name, *color, 0.0 if index == 0 else 1.0)
    mrmlScene().AddNode(table)
    return table


def importPrediction(path, classNames: list, referenceVolume, name: str = "",
                     colors: Optional[dict] = None, includeEmpty: bool = True):
    """A new segmentation node from a class-index label file.

    ``classNames`` are the training classes in index order (index 0 = background, not
    imported). ``colors`` maps class name -> (r, g, b). Returns the segmentation node.
    """
    import slicer

    scene = mrmlScene()
    palette = classColors(classNames, colors)
    labelmap = readLabelmap(path)
    table = None
    try:
        array = slicer.util.arrayFromVolume(labelmap)
        present = {int(v) for v in np.unique(array)}
        unknown = sorted(v for v in present if v < 0 or v >= len(classNames))
        if unknown:
            raise RuntimeError(f"The prediction holds label values {unknown} outside the model's "
                               f"{len(classNames)} classes {classNames}.")
        table = _colorTable(classNames, palette)
        labelmap.CreateDefaultDisplayNodes()
        labelmap.GetDisplayNode().SetAndObserveColorNodeID(table.GetID())
        segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                   name or scene.GenerateUniqueName("AsymSeg prediction"))
        segmentationNode.CreateDefaultDisplayNodes()
        if referenceVolume is not None:
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
        if present - {0}:
            if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentationNode):
                scene.RemoveNode(segmentationNode)
                raise RuntimeError(f"Could not import {path} as a segmentation.")
        segmentation = segmentationNode.GetSegmentation()
        # Name and colour every segment by its label value (does not rely on the import's naming).
        byValue = {}
        for index in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(index)
            value = segment.GetLabelValue() if hasattr(segment, "GetLabelValue") else index + 1
            byValue[int(value)] = segment
        for value, segment in byValue.items():
            if 0 < value < len(classNames):
                segment.SetName(classNames[value])
                segment.SetColor(*palette[value])
        if includeEmpty:
            for value in range(1, len(classNames)):
                if segmentation.GetSegmentIdBySegmentName(classNames[value]) == "":
                    segmentation.AddEmptySegment("", classNames[value], list(palette[value]))
        _orderSegments(segmentation, classNames)
        segmentationNode.SetAttribute(PREDICTION_ATTRIBUTE, os.fspath(path))
        return segmentationNode
    finally:
        removeWithDependents(scene, labelmap)
        if table is not None and scene.IsNodePresent(table):
            scene.RemoveNode(table)


def _orderSegments(segmentation, classNames: list) -> None:
    """Segments in class order (the import creates them in label-value order, empties last)."""
    for position, name in enumerate(classNames[1:]):
        segmentId = segmentation.GetSegmentIdBySegmentName(name)
        if segmentId and hasattr(segmentation, "SetSegmentIndex"):
            segmentation.SetSegmentIndex(segmentId, position)


# ---------------------------------------------------------------------------- metrics

METRIC_COLUMNS = ("dsc", "sensitivity", "precision", "specificity", "hd95", "reference_voxels", "predicted_voxels",
                  "lesions_reference", "lesions_detected", "lesions_false_positive", "lesion_sensitivity")
"""The engine's per-class metric keys a row keeps; a dictionary with any of them holds a class's metrics."""

TABLE_COLUMNS = (("DSC (%)", "dsc", 100.0), ("Sensitivity (%)", "sensitivity", 100.0),
                 ("Precision (%)", "precision", 100.0), ("Specificity (%)", "specificity", 100.0),
                 ("HD95 (mm)", "hd95", 1.0), ("Lesions in reference", "lesions_reference", 1.0),
                 ("Lesions found", "lesions_detected", 1.0), ("Lesions missed", "lesions_missed", 1.0),
                 ("False-positive lesions", "lesions_false_positive", 1.0),
                 ("Lesions found (%)", "lesion_sensitivity", 100.0), ("Reference voxels", "reference_voxels", 1.0),
                 ("Predicted voxels", "predicted_voxels", 1.0))
"""The metrics table's numeric columns: (title in plain words with its unit, row key, factor to that unit)."""

LARGEST = "Largest connected component of each class only (the paper's; every other lesion is deleted)"
POSTPROCESSING_WORDS = {"raw": "None: the network's output as it is", "post": LARGEST, "largest_component": LARGEST}
"""What each variant of the engine's metrics did, in words (``chosen``: postprocessingWords)."""


def specWords(spec: str) -> str:
    """An engine post-processing spec in words: ``"min-size=10"`` -> ``"lesions smaller than 10 mm³ removed"``.

    ``none`` stays as it is, as does a spec this module does not know (from a newer engine).
    """
    if spec == "largest":
        return "largest connected component only"
    if spec.startswith("min-size="):
        return f"lesions smaller than {spec[len('min-size='):]} mm³ removed"
    return spec


def postprocessingWords(variant: str, spec: Optional[str] = None) -> str:
    """What a metrics variant did: ``chosen`` is the imported segmentation, post-processed as ``spec``."""
    if variant == "chosen":
        return f"As in the segmentation: {specWords(spec or 'none')} (the model's choice on its validation cases)"
    return POSTPROCESSING_WORDS.get(variant, variant)


def metricRows(data, classNames: Optional[list] = None) -> list[dict]:
    """Flatten a metrics JSON into rows {variant, postprocessing, class, metric...}.

    Accepts the engine's per-class dictionaries (class index or name -> {dsc, ...}) at any
    nesting (e.g. ``{"raw": {...}, "largest_component": {...}}``): the path of keys above a
    class dictionary becomes the row's ``variant``, and ``postprocessing`` says in words what
    it did (the class's spec from the file's ``postprocessing`` for ``chosen``). A row adds
    ``lesions_missed`` (reference - found) when both counts are there.
    """
    specs = data.get("postprocessing") if isinstance(data, dict) else None
    specs = specs if isinstance(specs, dict) else {}
    rows: list[dict] = []

    def className(key) -> str:
        text = str(key)
        if classNames and text.isdigit() and int(text) < len(classNames):
            return classNames[int(text)]
        return text

    def visit(node, path: list) -> None:
        if not isinstance(node, dict):
            return
        perClass = {k: v for k, v in node.items() if isinstance(v, dict) and any(m in v for m in METRIC_COLUMNS)}
        if perClass:
            for key, values in perClass.items():
                row = {"variant": "/".join(path) or "raw", "class": className(key)}
                row["postprocessing"] = postprocessingWords(row["variant"], specs.get(row["class"]))
                row.update({m: values.get(m) for m in METRIC_COLUMNS})
                found, reference = row["lesions_detected"], row["lesions_reference"]
                row["lesions_missed"] = None if found is None or reference is None else reference - found
                rows.append(row)
        for key, value in node.items():
            if isinstance(value, dict) and key not in perClass:
                visit(value, path + [str(key)])

    visit(data, [])
    return rows


def tableRow(row: dict) -> dict:
    """A metricRows row under the metrics table's titles, in their units (``TABLE_COLUMNS``)."""
    table = {"Post-processing": row["postprocessing"], "Class": row["class"]}
    for title, key, factor in TABLE_COLUMNS:
        table[title] = None if row.get(key) is None else factor * row[key]
    return table


def importMetrics(path, classNames: Optional[list] = None, name: str = ""):
    """A new table node with one row per (post-processing, class) and a column per metric (``TABLE_COLUMNS``)."""
    with open(path, encoding="utf-8") as stream:
        data = json.load(stream)
    rows = metricRows(data, classNames)
    if not rows:
        raise RuntimeError(f"{path} holds no per-class metrics.")
    columns = ["Post-processing", "Class", *(title for title, _, _ in TABLE_COLUMNS)]
    return tableFromRows([tableRow(row) for row in rows], columns, name or "AsymSeg metrics")


def tableFromRows(rows: list[dict], columns: list[str], name: str = "", tableNode=None):
    """A new vtkMRMLTableNode named ``name`` (or ``tableNode``, emptied and refilled): text columns for
    strings, double columns for numbers (NaN = n/a)."""
    import vtk

    if tableNode is None:
        scene = mrmlScene()
        tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    table = tableNode.GetTable()
    table.Initialize()
    numeric = {c: all(r.get(c) is None or (isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool))
                      for r in rows) for c in columns}
    arrays = []
    for column in columns:
        array = vtk.vtkDoubleArray() if numeric[column] else vtk.vtkStringArray()
        array.SetName(column)
        array.SetNumberOfTuples(len(rows))
        for index, row in enumerate(rows):
            value = row.get(column)
            if numeric[column]:
                array.SetValue(index, float("nan") if value is None else float(value))
            else:
                array.SetValue(index, "" if value is None else str(value))
        arrays.append(array)
    for array in arrays:
        table.AddColumn(array)
    tableNode.Modified()
    return tableNode
