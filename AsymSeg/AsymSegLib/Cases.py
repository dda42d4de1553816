"""The Training data panel's model: cases (channels + annotation + role) and their checks.

Qt-free. A case is a list of scalar volume nodes, one per channel in the same channel order
for every case, plus an annotation (labelmap volume or segmentation node) and a role. The
checks return ``Issue`` objects that the panel shows inline next to the row they concern;
errors block Start, warnings do not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from .Geometry import Geometry, hasParentTransform

ROLES = ("train", "validation")


@dataclass
class CaseInput:
    images: list = field(default_factory=list)  # vtkMRMLScalarVolumeNode (or None) per channel
    annotation: object = None                   # vtkMRMLLabelMapVolumeNode / vtkMRMLSegmentationNode / None
    role: str = "train"
    name: str = ""                              # optional; defaults to the first channel's node name

    @property
    def reference(self):
        """The first channel: the geometry every export of this case follows."""
        return self.images[0] if self.images else None

    def displayName(self, index: int) -> str:
        if self.name:
            return self.name
        ref = self.reference
        return ref.GetName() if ref is not None else f"case {index + 1}"


@dataclass(frozen=True)
class Issue:
    severity: str                 # "error" (blocks Start) or "warning"
    message: str
    case: Optional[int] = None    # row index, None for the whole table
    hint: str = ""

    @property
    def isError(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        where = f"Case {self.case + 1}: " if self.case is not None else ""
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


def checkCases(cases: list[CaseInput], channelCount: int) -> list[Issue]:
    """Structure and geometry checks that need no voxel reading (voxel checks: ``Classes``)."""
    issues: list[Issue] = []
    if channelCount < 1:
        issues.append(Issue("error", "Choose at least one input channel."))
    if not cases:
        issues.append(Issue("error", "Add at least one case.", hint="Press 'Add case' and choose its volumes"))
        return issues
    seen: dict = {}
    for index, case in enumerate(cases):
        issues += _checkCase(index, case, channelCount, seen)
    roles = [case.role for case in cases]
    if "train" not in roles:
        issues.append(Issue("error", "No case has the role 'train'.", hint="Set the role of at least one case to train"))
    if "validation" not in roles:
        issues.append(Issue("warning", "No validation case: no validation metrics, the last checkpoint is kept, "
                                       "and the logit histograms will have no unseen cases.",
                            hint="Set one or more annotated cases to 'validation'"))
    return issues


def _checkCase(index: int, case: CaseInput, channelCount: int, seen: dict) -> list[Issue]:
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
            add("warning", f"'{node.GetName()}' is also used in case {seen[node.GetID()] + 1}.")
        else:
            seen[node.GetID()] = index
    reference = case.reference
    refOk = isScalarVolume(reference) and reference.GetImageData() is not None
    if refOk:
        refGeometry = Geometry.fromVolume(reference)
        for channel, node in enumerate(case.images[1:], start=2):
            if isScalarVolume(node) and node.GetImageData() is not None:
                diff = refGeometry.differences(Geometry.fromVolume(node))
                if diff:
                    add("error", f"Geometry of channel {channel} differs from channel 1: {'; '.join(diff)}.",
                        "Resample it onto channel 1 (Resample Scalar/Vector/DWI Volume module)")
    annotation = case.annotation
    if annotation is None:
        add("error", "No annotation chosen.", "Choose a labelmap volume or a segmentation with the ground truth")
    elif isLabelmap(annotation):
        if annotation.GetImageData() is None:
            add("error", f"Labelmap '{annotation.GetName()}' has no voxels.")
        elif refOk:
            diff = refGeometry.differences(Geometry.fromVolume(annotation))
            if diff:
                add("error", f"Geometry of labelmap '{annotation.GetName()}' differs from channel 1: "
                             f"{'; '.join(diff)}.",
                    "Resample the labelmap, or convert it to a segmentation (exported in channel 1's geometry)")
        if hasParentTransform(annotation):
            add("warning", f"'{annotation.GetName()}' is under a transform, which the export ignores.")
    elif isSegmentation(annotation):
        if annotation.GetSegmentation().GetNumberOfSegments() == 0:
            add("error", f"Segmentation '{annotation.GetName()}' has no segments.")
        if hasParentTransform(annotation) != (refOk and hasParentTransform(reference)):
            add("warning", f"'{annotation.GetName()}' and channel 1 are under different transforms; "
                           "the export uses untransformed coordinates.")
    else:
        add("error", f"'{annotation.GetName()}' is neither a labelmap volume nor a segmentation.")
    return issues
