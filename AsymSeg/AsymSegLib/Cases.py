"""The Training data panel's model: cases (channels + annotation + ROI mask + role) and their checks.

Qt-free. A case is a list of scalar volume nodes, one per channel in the same channel order
for every case, plus an annotation (labelmap volume or segmentation node), an optional ROI
mask (a labelmap volume, non-zero = inside, or a segment of a segmentation node) and a role.
The checks return ``Issue`` objects that the panel shows inline next to the row they concern;
errors block Start, warnings do not. A case is called after its patient (``displayName``): the DICOM
patient name of its first channel when the subject hierarchy has one, else that volume's name; an
issue names the case and its row ("BraTS_001 (row 1): ..."). An annotation with no voxel of any
class is an error naming the node (labelmaps: read at once; segmentations: their binary labelmaps).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Optional

from .Geometry import Geometry, hasParentTransform

ROLES = ("train", "validation")


@dataclass
class CaseInput:
    images: list = field(default_factory=list)  # vtkMRMLScalarVolumeNode (or None) per channel
    annotation: object = None                   # vtkMRMLLabelMapVolumeNode / vtkMRMLSegmentationNode / None
    role: str = "train"
    name: str = ""                              # optional; defaults to the first channel's node name
    mask: object = None                         # ROI: vtkMRMLLabelMapVolumeNode / vtkMRMLSegmentationNode / None
    maskSegment: str = ""                       # segment ID of a segmentation mask; "" = all its segments

    @property
    def reference(self):
        """The first channel: the geometry every export of this case follows."""
        return self.images[0] if self.images else None

    def displayName(self, index: int) -> str:
        """The case's name: ``name``, else the DICOM patient name of the first channel, else its node name,
        else "case <row>"."""
        if self.name:
            return self.name
        ref = self.reference
        if ref is None:
            return f"case {index + 1}"
        return patientName(ref) or ref.GetName() or f"case {index + 1}"


PATIENT_NAME_ATTRIBUTE = "DICOM.PatientName"


def patientName(node) -> str:
    """The DICOM patient name of the subject-hierarchy item above ``node`` ("" when none: not loaded from
    DICOM, or no subject hierarchy). DICOM's ``^`` separators become spaces."""
    scene = node.GetScene() if node is not None else None
    if scene is None:
        return ""
    import slicer

    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = shNode.GetItemByDataNode(node) if shNode is not None else 0
    while item and item != shNode.GetSceneItemID():
        name = shNode.GetItemAttribute(item, PATIENT_NAME_ATTRIBUTE)
        if name:
            return " ".join(part for part in name.replace("^", " ").split() if part)
        item = shNode.GetItemParent(item)
    return ""


@dataclass(frozen=True)
class Issue:
    severity: str                 # "error" (blocks Start) or "warning"
    message: str
    case: Optional[int] = None    # row index, None for the whole table
    hint: str = ""
    caseName: str = ""            # the case's displayName ("" : "Case <row>")

    @property
    def isError(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        where = "" if self.case is None else \
            f"{self.caseName} (row {self.case + 1}): " if self.caseName else f"Case {self.case + 1}: "
        return f"{where}{self.message}" + (f" ({self.hint})" if self.hint else "")


def isLabelmap(node) -> bool:
    return node is not None and node.IsA("vtkMRMLLabelMapVolumeNode")


def isSegmentation(node) -> bool:
    return node is not None and node.IsA("vtkMRMLSegmentationNode")


def isScalarVolume(node) -> bool:
    return (node is not None and node.IsA("vtkMRMLScalarVolumeNode")
            and not node.IsA("vtkMRMLLabelMapVolumeNode"))


def caseIdentifiers(cases: list[CaseInput]) -> list[str]:
    """Unique, file-name-safe case ids: ``<index>_<name>``."""
    ids = []
    for index, case in enumerate(cases):
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", case.displayName(index)).strip("_")[:40] or "case"
        ids.append(f"{index:03d}_{stem}")
    return ids


def nameIssues(issues: list[Issue], cases: list[CaseInput]) -> list[Issue]:
    """The issues, each about a case given that case's name (``displayName``)."""
    return [replace(i, caseName=cases[i.case].displayName(i.case))
            if i.case is not None and not i.caseName and 0 <= i.case < len(cases) else i for i in issues]


def checkCases(cases: list[CaseInput], channelCount: int) -> list[Issue]:
    """Structure and geometry checks, and whether each annotation has a voxel of a class (other voxel checks:
    ``Classes``); each issue names its case."""
    return nameIssues(_checkCases(cases, channelCount), cases)


def _checkCases(cases: list[CaseInput], channelCount: int) -> list[Issue]:
    issues: list[Issue] = []
    if channelCount < 1:
        issues.append(Issue("error", "Choose at least one input channel."))
    if not cases:
        issues.append(Issue("error", "Add at least one case.", hint="Press 'Add case' and choose its volumes"))
        return issues
    seen: dict = {}
    names = [case.displayName(index) for index, case in enumerate(cases)]
    for index, case in enumerate(cases):
        issues += _checkCase(index, case, channelCount, seen, names)
    roles = [case.role for case in cases]
    if "train" not in roles:
        issues.append(Issue("error", "No case has the role 'train'.", hint="Set the role of at least one case to train"))
    if "validation" not in roles:
        issues.append(Issue("warning", "No validation case: no validation metrics, the last checkpoint is kept, "
                                       "and the margin charts will have no unseen cases.",
                            hint="Set one or more annotated cases to 'validation'"))
    return issues


def _checkCase(index: int, case: CaseInput, channelCount: int, seen: dict, caseNames: list) -> list[Issue]:
    issues = []

    def add(severity, message, hint=""):
        issues.append(Issue(severity, message, index, hint))

    if case.role not in ROLES:
        add("error", f"Unknown role '{case.role}'.", f"Use one of {', '.join(ROLES)}")
    if len(case.images) != channelCount or any(node is None for node in case.images):
        missing = max(channelCount - len([n for n in case.images if n is not None]), 0)
        add("error", f"{missing or 'Some'} input channel(s) not chosen.", "Choose a volume for every channel")
    for channel, node in enumerate(case.images):
        if node is None:
            continue
        if not isScalarVolume(node):
            add("error", f"Channel {channel + 1} ('{node.GetName()}') is not a scalar volume.")
            continue
        if node.GetImageData() is None:
            add("error", f"Channel {channel + 1} ('{node.GetName()}') has no voxels.")
            continue
        if hasParentTransform(node):
            add("warning", f"'{node.GetName()}' is under a transform, which the export ignores.",
                "Harden the transform first (Data module) if it matters")
        if node.GetID() in seen:
            other = seen[node.GetID()]
            add("warning", f"'{node.GetName()}' is also used in case '{caseNames[other]}' (row {other + 1}).")
        else:
            seen[node.GetID()] = index
    reference = case.reference
    refOk = isScalarVolume(reference) and reference.GetImageData() is not None
    refGeometry = Geometry.fromVolume(reference) if refOk else None  # None: nothing to compare with
    refTransformed = refOk and hasParentTransform(reference)
    if refOk:
        for channel, node in enumerate(case.images[1:], start=2):
            if isScalarVolume(node) and node.GetImageData() is not None:
                diff = refGeometry.differences(Geometry.fromVolume(node))
                if diff:
                    add("error", f"Geometry of channel {channel} differs from channel 1: {'; '.join(diff)}.",
                        "Resample it onto channel 1 (Resample Scalar/Vector/DWI Volume module)")
    if case.annotation is None:
        add("error", "No annotation chosen.", "Choose a labelmap volume or a segmentation with the ground truth")
    else:
        _checkLabelNode(case.annotation, "", refGeometry, refTransformed, add,
                        "Resample the labelmap, or convert it to a segmentation (exported in channel 1's geometry)")
        if annotationIsEmpty(case.annotation):
            issues.append(emptyAnnotationIssue(index, case))
    if case.mask is not None:
        _checkLabelNode(case.mask, "ROI mask ", refGeometry, refTransformed, add,
                        "Resample the mask onto channel 1, or use a segment (exported in channel 1's geometry)")
        if isSegmentation(case.mask) and case.maskSegment and \
                case.mask.GetSegmentation().GetSegment(case.maskSegment) is None:
            add("error", f"ROI mask segment '{case.maskSegment}' is not in segmentation '{case.mask.GetName()}'.",
                "Choose one of its segments again")
    return issues


def emptyAnnotationIssue(index: int, case: CaseInput) -> Issue:
    """The error of a case whose annotation has no voxel of any class."""
    return Issue("error", f"Annotation '{case.annotation.GetName()}' is empty: no voxel of any class (background "
                          f"only).", index, "Choose the annotation of this case, or draw it first",
                 case.displayName(index))


def annotationIsEmpty(node) -> bool:
    """Whether a labelmap has only zeros, or a segmentation no voxel in the binary labelmaps of its segments.
    False when it cannot be told without converting (a segmentation stored as closed surfaces)."""
    if isLabelmap(node):
        image = node.GetImageData()
        if image is None or image.GetPointData().GetScalars() is None:
            return False
        import slicer

        return not slicer.util.arrayFromVolume(node).any()
    if not isSegmentation(node):
        return False
    segmentation = node.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        return False  # an error of its own
    from vtk.util.numpy_support import vtk_to_numpy

    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        image = segment.GetRepresentation("Binary labelmap")
        if image is None:
            return False
        scalars = image.GetPointData().GetScalars() if image.GetPointData() is not None else None
        if scalars is None or scalars.GetNumberOfTuples() == 0:
            continue
        value = segment.GetLabelValue() if hasattr(segment, "GetLabelValue") else 1
        if (vtk_to_numpy(scalars) == value).any():
            return False
    return True


def _checkLabelNode(node, role: str, refGeometry, refTransformed: bool, add, resampleHint: str) -> None:
    """Checks shared by a case's annotation (``role`` "") and its ROI mask (``role`` "ROI mask "): a
    labelmap must have voxels on channel 1's grid (``refGeometry``; None: not comparable), a segmentation
    segments; a transform that only one of them and channel 1 (``refTransformed``) is under is ignored by
    the export."""
    name = node.GetName()
    if isLabelmap(node):
        if node.GetImageData() is None:
            add("error", _sentence(f"{role}labelmap '{name}' has no voxels."))
        elif refGeometry is not None:
            diff = refGeometry.differences(Geometry.fromVolume(node))
            if diff:
                add("error", f"Geometry of {role}labelmap '{name}' differs from channel 1: {'; '.join(diff)}.",
                    resampleHint)
        if hasParentTransform(node):
            add("warning", f"'{name}' is under a transform, which the export ignores.")
    elif isSegmentation(node):
        if node.GetSegmentation().GetNumberOfSegments() == 0:
            add("error", _sentence(f"{role}segmentation '{name}' has no segments."))
        if hasParentTransform(node) != refTransformed:
            add("warning", f"'{name}' and channel 1 are under different transforms; "
                           "the export uses untransformed coordinates.")
    else:
        add("error", _sentence(f"{role}'{name}' is neither a labelmap volume nor a segmentation."))


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]
