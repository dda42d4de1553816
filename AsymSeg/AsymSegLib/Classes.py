"""The Classes panel's model: classes found in the annotations, voxel counts, rarity.

Qt-free. Labelmap classes are keyed by raw label value (named from a user colour table,
else ``label_<v>``); segmentation classes by segment name, merged with a labelmap class of
the same name, else given the next free label value. Label value 0 is always 'background'.
Counts are over the training cases (all annotated cases when none is a training case).
The same reading pass checks that each ROI mask has a voxel inside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .Annotations import readAnnotation, readMask
from .Cases import CaseInput, Issue, emptyAnnotationIssue, isLabelmap, isScalarVolume, isSegmentation, nameIssues

BACKGROUND = "background"
PALETTE = [  # distinct, colour-blind friendly (Okabe-Ito + Tol), used when no colour is known
    (0.90, 0.62, 0.00), (0.34, 0.71, 0.91), (0.00, 0.62, 0.45), (0.94, 0.89, 0.26),
    (0.00, 0.45, 0.70), (0.84, 0.37, 0.00), (0.80, 0.47, 0.65), (0.53, 0.13, 0.33),
]


@dataclass
class ClassInfo:
    name: str
    value: int                       # raw label value in the exported label maps
    color: tuple = (0.5, 0.5, 0.5)
    trainVoxels: int = 0
    allVoxels: int = 0
    rare: bool = True
    rarity: float = 1.0              # continuous value sent to the engine (METHOD.md §2)

    @property
    def isBackground(self) -> bool:
        return self.value == 0


@dataclass
class ClassCatalog:
    classes: list = field(default_factory=list)  # ClassInfo, background first, then by value

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def byName(self, name: str) -> Optional[ClassInfo]:
        for c in self.classes:
            if c.name.lower() == name.lower():
                return c
        return None

    def byValue(self, value: int) -> Optional[ClassInfo]:
        for c in self.classes:
            if c.value == value:
                return c
        return None

    def ratio(self, name: str) -> Optional[float]:
        """background:class voxel ratio over the counted cases; None when the class has no voxels."""
        background, info = self.classes[0], self.byName(name)
        if info is None or info.trainVoxels == 0:
            return None
        return background.trainVoxels / info.trainVoxels

    def classesMap(self) -> dict:
        """The job's ``classes``: name -> [raw values], in training order (index 0 = background)."""
        return {c.name: [c.value] for c in self.classes}

    def rarityMap(self) -> dict:
        return {c.name: (0.0 if c.isBackground else float(c.rarity)) for c in self.classes}

    def setRare(self, name: str, rare: bool) -> None:
        self.setRarity(name, 1.0 if rare else 0.0)

    def setRarity(self, name: str, rarity: float) -> None:
        info = self.byName(name)
        if info is None or info.isBackground:
            return
        info.rarity = float(min(max(rarity, 0.0), 1.0))
        info.rare = info.rarity > 0.0

    def applyRarity(self, rarity: dict) -> None:
        """Restore saved rarity values (class name -> value) for the classes that still exist."""
        for name, value in (rarity or {}).items():
            self.setRarity(name, value)

    def suggestRarity(self) -> None:
        """Default: every class but background is rare (METHOD.md §2), except a class that
        outnumbers the background (not a rare class by any measure)."""
        background = self.classes[0]
        for info in self.classes[1:]:
            common = background.trainVoxels > 0 and info.trainVoxels > background.trainVoxels
            info.rare = not common
            info.rarity = 0.0 if common else 1.0

    def colors(self) -> list[tuple]:
        return [c.color for c in self.classes]


@dataclass
class ClassAnalysis:
    catalog: ClassCatalog
    issues: list                       # Issue
    segmentValues: dict                # case index -> {provisional value: raw value} (segmentations)


def discoverClasses(cases: list[CaseInput]) -> ClassAnalysis:
    """Read every usable annotation once: classes, voxel counts and voxel-level issues (also of the ROI masks)."""
    issues: list[Issue] = []
    readable = []
    for index, case in enumerate(cases):
        annotation, reference = case.annotation, case.reference
        if not isScalarVolume(reference) or reference.GetImageData() is None:
            continue
        issues += _maskIssues(index, case)
        if annotation is None:
            continue
        if not (isLabelmap(annotation) or isSegmentation(annotation)):
            continue
        if isLabelmap(annotation) and annotation.GetImageData() is None:
            continue
        try:
            readable.append((index, case, readAnnotation(annotation, reference)))
        except (RuntimeError, ValueError) as error:
            issues.append(Issue("error", str(error), index))

    byValue: dict = {0: ClassInfo(BACKGROUND, 0, (0.0, 0.0, 0.0), rare=False, rarity=0.0)}
    # 1. labelmap values
    for index, case, annotation in readable:
        if annotation.segments:
            continue
        values = np.unique(annotation.array)
        bad = [v for v in values if v < 0 or float(v) != int(v)]
        if bad:
            issues.append(Issue("error", f"Labelmap '{case.annotation.GetName()}' holds values that are not "
                                         f"non-negative integers ({', '.join(str(v) for v in bad[:5])}).", index))
            continue
        for value in (int(v) for v in values if v != 0):
            if value not in byValue:
                name = annotation.names.get(value, f"label_{value}")
                if any(c.name.lower() == name.lower() for c in byValue.values()):
                    name = f"{name}_{value}"
                byValue[value] = ClassInfo(name, value, annotation.colors.get(value, _palette(len(byValue))))
            elif value in annotation.names and byValue[value].name == f"label_{value}":
                byValue[value].name = annotation.names[value]
    # 2. segment names
    segmentValues: dict = {}
    for index, case, annotation in readable:
        if not annotation.segments:
            continue
        mapping = {}
        for segment in annotation.segments:
            if segment.name.strip().lower() == BACKGROUND:
                mapping[segment.provisionalValue] = 0
                continue
            existing = next((c for c in byValue.values() if c.name.lower() == segment.name.lower()), None)
            if existing is None:
                value = max(byValue) + 1
                existing = byValue[value] = ClassInfo(segment.name, value, segment.color)
            mapping[segment.provisionalValue] = existing.value
        segmentValues[index] = mapping
    catalog = ClassCatalog([byValue[v] for v in sorted(byValue)])
    # 3. counts
    anyTrain = any(cases[index].role == "train" for index, _, _ in readable)
    for index, case, annotation in readable:
        if index in segmentValues:
            counts = _segmentCounts(annotation.array, segmentValues[index])
        elif any(i.case == index and i.isError for i in issues):
            continue
        else:
            values, numbers = np.unique(annotation.array, return_counts=True)
            counts = {int(v): int(n) for v, n in zip(values, numbers)}
        counted = case.role == "train" or not anyTrain
        for value, number in counts.items():
            info = catalog.byValue(value)
            if info is None:
                continue
            info.allVoxels += number
            if counted:
                info.trainVoxels += number
        if sum(n for v, n in counts.items() if v != 0) == 0:  # as checkCases says (segments named background)
            issues.append(emptyAnnotationIssue(index, case))
        if index in segmentValues:
            for segment in annotation.segments:
                if not np.any(annotation.array == segment.provisionalValue):
                    issues.append(Issue("warning", f"Segment '{segment.name}' is empty or hidden by overlapping "
                                                   f"segments in '{case.annotation.GetName()}'.", index))
    catalog.suggestRarity()
    return ClassAnalysis(catalog, nameIssues(issues, cases), segmentValues)


def _maskIssues(index: int, case: CaseInput) -> list[Issue]:
    """An ROI mask with no voxel inside: the engine would have nothing to normalise or sample in."""
    mask = case.mask
    if mask is None or (isLabelmap(mask) and mask.GetImageData() is None):
        return []
    try:
        inside = readMask(mask, case.maskSegment, case.reference).any()
    except (RuntimeError, ValueError):  # not a mask node, or a missing segment: checkCases names the problem
        return []
    return [] if inside else [Issue("error", f"ROI mask '{mask.GetName()}' is empty: no voxel is inside.", index,
                                    "Choose the mask (or segment) that covers the region of interest, or none")]


def _segmentCounts(array: np.ndarray, mapping: dict) -> dict:
    counts: dict = {}
    values, numbers = np.unique(array, return_counts=True)
    for value, number in zip(values, numbers):
        raw = 0 if value == 0 else mapping.get(int(value), 0)
        counts[raw] = counts.get(raw, 0) + int(number)
    return counts


def remapSegmentArray(array: np.ndarray, mapping: dict, dtype=np.uint16) -> np.ndarray:
    """Provisional segment values -> the catalog's raw values (0 stays 0)."""
    lookup = np.zeros(max(list(mapping) + [0]) + 1, dtype=dtype)
    for provisional, raw in mapping.items():
        lookup[provisional] = raw
    return lookup[array]


def _palette(index: int) -> tuple:
    return PALETTE[(index - 1) % len(PALETTE)]
