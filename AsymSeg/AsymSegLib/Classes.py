"""The Classes panel's model: the labels found in the annotations, the training classes they map to, rarity.

Qt-free. A *source label* is what an annotation holds: a label map value (named from a user colour
table, else ``label_<v>``) or a segment name (merged with a label map value of the same name, else
given the next free value). Each source label is trained as a *training class*: by default the class
of its own name; the user may map several labels to one class (tumour core = necrosis + enhancing
from one case's segments and label_1 + label_4 from another's label map) or to ``background``. The
job's class map lists each training class with all its raw values. Counts are over the training
cases (all annotated cases when none is a training case). The same reading pass checks that each
ROI mask has a voxel inside.
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
class SourceLabel:
    """One label value or segment name found in the annotations."""
    name: str
    value: int                       # raw label value in the exported label maps
    color: tuple = (0.5, 0.5, 0.5)
    trainVoxels: int = 0
    allVoxels: int = 0
    cases: set = field(default_factory=set)  # indices of the counted cases with a voxel of it


@dataclass
class TrainingClass:
    """A class the network learns: one or more source labels (background: value 0 and what maps to it)."""
    name: str
    values: list
    color: tuple
    sources: list                    # source label names
    trainVoxels: int
    allVoxels: int
    cases: set
    rarity: float                    # continuous value sent to the engine (METHOD.md §2)

    @property
    def isBackground(self) -> bool:
        return self.name == BACKGROUND

    @property
    def rare(self) -> bool:
        return self.rarity > 0.0


@dataclass
class ClassCatalog:
    sources: list = field(default_factory=list)  # SourceLabel, background (value 0) first, then by value
    countedCases: list = field(default_factory=list)  # indices of the cases whose voxels are counted
    trainAs: dict = field(default_factory=dict)  # source name -> training class name (missing: its own)
    rarity: dict = field(default_factory=dict)   # training class name -> rarity set by the user

    def source(self, name: str) -> Optional[SourceLabel]:
        return next((s for s in self.sources if s.name.lower() == name.lower()), None)

    def targetOf(self, source: SourceLabel) -> str:
        """The training class of a source label (case-insensitive names; the first spelling is kept)."""
        if source.value == 0:
            return BACKGROUND
        wanted = (self.trainAs.get(source.name) or source.name).strip()
        if wanted.lower() == BACKGROUND:
            return BACKGROUND
        for other in self.sources:  # an earlier label already trained under this name gives the spelling
            if other is source:
                break
            target = (self.trainAs.get(other.name) or other.name).strip()
            if target.lower() == wanted.lower() and other.value != 0:
                return target
        return wanted

    @property
    def classes(self) -> list[TrainingClass]:
        """The training classes: background first, then in the order of their first source label."""
        grouped: dict = {}
        for source in self.sources:
            grouped.setdefault(self.targetOf(source), []).append(source)
        background = self.sources[0].trainVoxels if self.sources else 0
        result = []
        for name, members in grouped.items():
            voxels = sum(s.trainVoxels for s in members)
            suggested = 0.0 if name == BACKGROUND or (background and voxels > background) else 1.0
            result.append(TrainingClass(
                name, [s.value for s in members], members[0].color, [s.name for s in members], voxels,
                sum(s.allVoxels for s in members), set().union(*(s.cases for s in members)),
                0.0 if name == BACKGROUND else self._rarity(name, suggested)))
        return result

    def _rarity(self, name: str, suggested: float) -> float:
        """The rarity the user gave the class (names compare case-insensitively, as merging does), else ``suggested``."""
        return next((v for k, v in self.rarity.items() if k.lower() == name.lower()), suggested)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def byName(self, name: str) -> Optional[TrainingClass]:
        return next((c for c in self.classes if c.name.lower() == name.lower()), None)

    def ratio(self, name: str) -> Optional[float]:
        """background:class voxel ratio over the counted cases; None when the class has no voxels."""
        classes = self.classes
        info = next((c for c in classes if c.name.lower() == name.lower()), None)
        if info is None or info.trainVoxels == 0:
            return None
        return classes[0].trainVoxels / info.trainVoxels

    def classesMap(self) -> dict:
        """The job's ``classes``: training class name -> [raw values], in training order (index 0 = background)."""
        return {c.name: sorted(c.values) for c in self.classes}

    def rarityMap(self) -> dict:
        return {c.name: c.rarity for c in self.classes}

    def colors(self) -> dict:
        return {c.name: tuple(c.color) for c in self.classes}

    def sourceValues(self) -> dict:
        """Source label name -> its raw value (what an exported label map holds)."""
        return {s.name: s.value for s in self.sources}

    def setTrainAs(self, source: str, className: str) -> None:
        """Train a source label as ``className`` (its own name, another class's to merge, or background)."""
        label = self.source(source)
        if label is None or label.value == 0:
            return
        className = className.strip() or label.name
        if className == label.name:
            self.trainAs.pop(label.name, None)
        else:
            self.trainAs[label.name] = className

    def applyTrainAs(self, mapping: dict) -> None:
        """Restore a saved mapping (source name -> class name) for the source labels that still exist."""
        for source, className in (mapping or {}).items():
            self.setTrainAs(source, str(className))

    def setRare(self, name: str, rare: bool) -> None:
        self.setRarity(name, 1.0 if rare else 0.0)

    def setRarity(self, name: str, rarity: float) -> None:
        info = self.byName(name)
        if info is None or info.isBackground:
            return
        self.rarity = {k: v for k, v in self.rarity.items() if k.lower() != info.name.lower()}
        self.rarity[info.name] = float(min(max(rarity, 0.0), 1.0))

    def applyRarity(self, rarity: dict) -> None:
        """Restore saved rarity values (class name -> value) for the classes that still exist."""
        for name, value in (rarity or {}).items():
            self.setRarity(name, value)

    def coverageIssues(self) -> list[Issue]:
        """A warning per training class that only some counted cases hold: the others teach it is absent."""
        issues = []
        for info in self.classes[1:]:
            missing = [i for i in self.countedCases if i not in info.cases]
            if missing and len(missing) < len(self.countedCases):
                for index in missing:
                    issues.append(Issue(
                        "warning", f"no voxel of class '{info.name}' ({', '.join(info.sources)}), which "
                                   f"{len(self.countedCases) - len(missing)} other training case(s) annotate: "
                                   f"training would learn that it is absent here.", index,
                        "If this case names it differently, train that label as "
                        f"'{info.name}' in the Classes table (Train as)"))
        return issues


@dataclass
class ClassAnalysis:
    catalog: ClassCatalog
    readIssues: list                   # Issue, found while reading the annotations
    segmentValues: dict                # case index -> {provisional value: raw value} (segmentations)
    cases: list = field(default_factory=list)  # the CaseInputs read (to name the cases of issues)

    @property
    def coverageIssues(self) -> list[Issue]:
        """The warnings of the current mapping to training classes (they change with it), naming the cases."""
        return nameIssues(self.catalog.coverageIssues(), self.cases)

    @property
    def issues(self) -> list[Issue]:
        return self.readIssues + self.coverageIssues


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

    byValue: dict = {0: SourceLabel(BACKGROUND, 0, (0.0, 0.0, 0.0))}
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
                byValue[value] = SourceLabel(name, value, annotation.colors.get(value, _palette(len(byValue))))
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
                existing = byValue[value] = SourceLabel(segment.name, value, segment.color)
            mapping[segment.provisionalValue] = existing.value
        segmentValues[index] = mapping
    # 3. counts
    anyTrain = any(cases[index].role == "train" for index, _, _ in readable)
    catalog = ClassCatalog([byValue[v] for v in sorted(byValue)],
                           [index for index, case, _ in readable if case.role == "train" or not anyTrain])
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
            source = byValue.get(value)
            if source is None:
                continue
            source.allVoxels += number
            if counted:
                source.trainVoxels += number
                if number:
                    source.cases.add(index)
        if sum(n for v, n in counts.items() if v != 0) == 0:  # as checkCases says (segments named background)
            issues.append(emptyAnnotationIssue(index, case))
        if index in segmentValues:
            for segment in annotation.segments:
                if not np.any(annotation.array == segment.provisionalValue):
                    issues.append(Issue("warning", f"Segment '{segment.name}' is empty or hidden by overlapping "
                                                   f"segments in '{case.annotation.GetName()}'.", index))
    return ClassAnalysis(catalog, nameIssues(issues, cases), segmentValues, list(cases))


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
