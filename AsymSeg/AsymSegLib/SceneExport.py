"""Export of the chosen MRML nodes into a job folder (protocol.md: images, labels, masks).

Qt-free. Channels are written through a standalone ``vtkMRMLVolumeArchetypeStorageNode``
(never attached to the user's node), so geometry and voxel type are Slicer's own. Labelmaps
are written as they are (raw label values kept); segmentations are exported onto the first
channel's grid with each segment's voxels set to its class's label value. ROI masks are
written as 0/1 label maps on the first channel's grid. Input nodes are never modified and the
scene ends with the nodes it started with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .Annotations import readAnnotation, readMask
from .Cases import CaseInput, Issue, caseIdentifiers, checkCases, isLabelmap, isSegmentation
from .Classes import BACKGROUND, ClassAnalysis, discoverClasses
from .SceneUtils import volumeStorage

IMAGE_EXTENSION = ".nrrd"  # exact geometry (NIfTI stores float32 transforms) and compressed


class ExportError(RuntimeError):
    def __init__(self, issues: list):
        self.issues = [i for i in issues if i.isError]
        super().__init__("; ".join(str(i) for i in self.issues) or "Export failed.")


@dataclass
class ExportedCase:
    id: str
    images: list          # paths relative to the job folder
    label: Optional[str]
    role: str
    mask: Optional[str] = None

    def jobCase(self) -> dict:
        """The job's entry of this case (protocol.md); ``mask`` only when the case has one."""
        spec = {"id": self.id, "images": list(self.images), "label": self.label, "role": self.role}
        if self.mask:
            spec["mask"] = self.mask
        return spec


@dataclass
class ExportResult:
    folder: Path
    channels: list
    cases: list = field(default_factory=list)    # ExportedCase
    classes: dict = field(default_factory=dict)  # name -> [raw values]
    rarity: dict = field(default_factory=dict)
    colors: dict = field(default_factory=dict)   # name -> (r, g, b)
    issues: list = field(default_factory=list)   # warnings that did not block the export
    sources: dict = field(default_factory=dict)  # exported file (relative) -> the node and case it came from

    def fileNames(self) -> dict:
        """Each exported file, relative and absolute, -> the node and case it came from, in the user's words."""
        return {**self.sources, **{str(self.folder / path): words for path, words in self.sources.items()}}


def writeVolume(volumeNode, path: Path) -> Path:
    """Write a volume node (scalar or labelmap) to ``path`` without attaching a storage node."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = volumeStorage(path)
    storage.SetUseCompression(1)
    if not storage.WriteData(volumeNode):
        raise RuntimeError(f"Could not write '{volumeNode.GetName()}' to {path}.")
    return path


def writeLabelArray(array: np.ndarray, referenceVolume, path: Path) -> Path:
    """Write a (k, j, i) label array in ``referenceVolume``'s geometry, via a node outside the scene."""
    import slicer
    import vtk

    node = slicer.vtkMRMLLabelMapVolumeNode()
    matrix = vtk.vtkMatrix4x4()
    referenceVolume.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    dtype = np.uint8 if array.size == 0 or int(array.max()) < 256 else np.uint16
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array, dtype=dtype))
    return writeVolume(node, path)


def segmentValueMapping(segments: list, sourceValues: dict) -> tuple[dict, list]:
    """Provisional segment values -> raw label values by segment name (``sourceValues``: the catalog's source
    labels); unknown names -> 0."""
    byName = {name.lower(): value for name, value in sourceValues.items()}
    mapping, unknown = {}, []
    for segment in segments:
        key = segment.name.strip().lower()
        if key == BACKGROUND:
            mapping[segment.provisionalValue] = 0
        elif key in byName:
            mapping[segment.provisionalValue] = byName[key]
        else:
            mapping[segment.provisionalValue] = 0
            unknown.append(segment.name)
    return mapping, unknown


def exportAnnotation(annotation, referenceVolume, path: Path, sourceValues: dict) -> list[str]:
    """Write an annotation as a label map on ``referenceVolume``'s grid with the source labels' raw values.

    Returns the names of segments that match no class (written as background).
    """
    from .Classes import remapSegmentArray

    if isLabelmap(annotation):
        writeVolume(annotation, path)
        return []
    if not isSegmentation(annotation):
        raise ValueError(f"'{annotation.GetName()}' is neither a labelmap volume nor a segmentation.")
    read = readAnnotation(annotation, referenceVolume)
    mapping, unknown = segmentValueMapping(read.segments, sourceValues)
    array = remapSegmentArray(read.array, mapping) if mapping else np.zeros_like(read.array, np.uint8)
    writeLabelArray(array, referenceVolume, path)
    return unknown


def exportMask(mask, segmentId: str, referenceVolume, path: Path) -> Path:
    """Write an ROI mask (``readMask``) as a 0/1 label map in ``referenceVolume``'s geometry."""
    return writeLabelArray(readMask(mask, segmentId, referenceVolume).astype(np.uint8), referenceVolume, path)


def exportCases(cases: list[CaseInput], channelNames: list[str], folder, analysis: ClassAnalysis = None,
                rarity: dict = None, allowErrors: bool = False) -> ExportResult:
    """Write every case's channels, annotation and ROI mask under ``folder`` (``images/``, ``labels/``, ``masks/``).

    ``analysis`` (from ``discoverClasses``) carries the class catalog the user edited in the
    Classes panel; it is computed when not given. ``rarity`` overrides the catalog's values.
    Errors from the checks raise ``ExportError`` unless ``allowErrors`` (the engine then
    reports them itself, e.g. in tests of its error events).
    """
    folder = Path(folder)
    issues = checkCases(cases, len(channelNames))
    if analysis is None:
        analysis = discoverClasses(cases)
    issues += analysis.issues
    if any(i.isError for i in issues) and not allowErrors:
        raise ExportError(issues)
    catalog = analysis.catalog
    if rarity:
        catalog.applyRarity(rarity)
    result = ExportResult(folder, list(channelNames), classes=catalog.classesMap(), rarity=catalog.rarityMap(),
                          colors=catalog.colors(),
                          issues=[i for i in issues if not i.isError])
    for index, (case, caseId) in enumerate(zip(cases, caseIdentifiers(cases))):
        where = f"of {case.displayName(index)} (row {index + 1})"
        images = []
        for channel, node in enumerate(case.images):
            if node is None:
                continue
            relative = Path("images") / f"{caseId}_{channel:04d}{IMAGE_EXTENSION}"
            writeVolume(node, folder / relative)
            images.append(relative.as_posix())
            result.sources[relative.as_posix()] = f"volume '{node.GetName()}', channel {channelNames[channel]} {where}"
        label = None
        if case.annotation is not None and case.reference is not None:
            relative = Path("labels") / f"{caseId}{IMAGE_EXTENSION}"
            unknown = exportAnnotation(case.annotation, case.reference, folder / relative, catalog.sourceValues())
            if unknown:
                result.issues.append(Issue("warning", f"Segments {unknown} match no class; exported as background."))
            label = relative.as_posix()
            result.sources[label] = f"annotation '{case.annotation.GetName()}' {where}"
        mask = None
        if case.mask is not None and case.reference is not None:
            relative = Path("masks") / f"{caseId}{IMAGE_EXTENSION}"
            exportMask(case.mask, case.maskSegment, case.reference, folder / relative)
            mask = relative.as_posix()
            result.sources[mask] = f"ROI mask '{case.mask.GetName()}' {where}"
        result.cases.append(ExportedCase(caseId, images, label, case.role, mask))
    return result


def exportVolumes(volumes: list, folder, stem: str = "input") -> list[Path]:
    """Write the channels of one case for inference: ``<stem>_0000.nrrd``, ``<stem>_0001.nrrd`` ..."""
    folder = Path(folder)
    return [writeVolume(node, folder / f"{stem}_{channel:04d}{IMAGE_EXTENSION}")
            for channel, node in enumerate(volumes)]
