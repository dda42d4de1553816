"""Next case to annotate: the unlabelled cases exported for the engine's ``rank``, and its ranking file.

Qt-free (docs/protocol.md, ``rank``). ``exportRankingDataset`` writes the chosen cases (one volume
per model channel) as the nnU-Net v2 raw folder ``rank`` reads: ``dataset.json`` and
``imagesTs/<case>_<cccc>.nrrd``, with the case ids of the training export (``caseIdentifiers``:
``<row>_<name>``). ``readRanking`` reads the JSON ``rank`` writes. Folder of one ranking
(``Logic.rankingRunFolder``)::

    dataset/      dataset.json, imagesTs/   the exported cases
    ranking.json                            the engine's ranking (outside dataset/: no output inside an input)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .Cases import CaseInput, caseIdentifiers
from .SceneExport import IMAGE_EXTENSION, exportVolumes

RANKING_FORMAT = "asymseg-ranking"
SUBSET = "Ts"   # rank reads images<SUBSET>: new, unlabelled cases


@dataclass
class RankedCase:
    rank: int
    case: str            # the case id of the export
    score: float         # hesitant / candidate rare-class volume, 0-1
    hesitantMl: float
    candidateMl: float


@dataclass
class Ranking:
    cases: list                                       # RankedCase, highest score first
    rareClasses: list = field(default_factory=list)
    band: float = 2.0                                 # logit units either side of the decision boundary

    def explanation(self) -> str:
        """The measure in one line."""
        return (f"Score: of the volume the model calls (or nearly calls) {' or '.join(self.rareClasses)}, the share "
                f"where it hesitates (margin within ±{self.band:g} logits of the boundary); annotate the first. "
                "A structure the model misses with confidence does not show.")


@dataclass
class PreparedRanking:
    folder: Path
    modelPath: Path
    dataset: Path
    outputPath: Path
    cases: dict                 # case id -> CaseInput (its volumes)
    names: dict                 # case id -> the case's name (``CaseInput.displayName``)
    device: str = "auto"


def exportRankingDataset(cases: list[CaseInput], channelNames: list[str], folder) -> dict:
    """Write ``cases`` under ``folder`` in the layout ``rank`` reads; returns case id -> case."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = caseIdentifiers(cases)
    for case, caseId in zip(cases, ids):
        exportVolumes(case.images, folder / f"images{SUBSET}", caseId)
    dataset = {"name": "AsymSeg cases to rank", "channel_names": {str(i): n for i, n in enumerate(channelNames)},
               "labels": {"background": 0}, "file_ending": IMAGE_EXTENSION}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    return dict(zip(ids, cases))


def readRanking(path) -> Ranking:
    """The ranking JSON of ``rank``; ValueError for another file."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != RANKING_FORMAT:
        raise ValueError(f"{path} is not a ranking of AsymSeg (format '{RANKING_FORMAT}').")
    cases = [RankedCase(int(c["rank"]), str(c["case"]), float(c["score"]), float(c["hesitant_ml"]),
                        float(c["candidate_ml"])) for c in data.get("cases", [])]
    return Ranking(sorted(cases, key=lambda c: c.rank), [str(n) for n in data.get("rare_classes", [])],
                   float(data.get("band", 2.0)))
