"""The bench's runs: folds of a dataset's cases, and one run per (method, fold, seed).

Splits (:func:`make_folds`, deterministic): the dataset's case ids are shuffled once with a
fixed split seed; fold f takes K consecutive cases of that order (rotating by K per fold, so
different folds train on different cases) as training cases, the next case as the validation
case (checkpoint choice only; it is never a test case of the fold) and every other case as
test cases. With fewer than K + 2 cases there is no validation case (the last model is used).
Seeds repeat every fold with another training seed (the split stays the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

import numpy as np

from ..errors import InputError
from ..techniques import PRESETS, technique_from_name

SPLIT_SEED = 0


def make_folds(case_ids: Sequence[str], train_size: int, folds: int, seed: int = SPLIT_SEED) -> List[dict]:
    """``folds`` splits of ``case_ids``: ``{"fold", "train", "validation", "test"}`` (lists of ids).

    Deterministic from ``seed``. Fold f trains on K consecutive cases of a shuffled order
    starting at f*K (shifted by one per full turn, so folds differ while they can), validates
    on the next case, tests on all the others. A test case is never a training or validation
    case of its fold.
    """
    ids = sorted(dict.fromkeys(case_ids))
    n = len(ids)
    if isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1:
        raise InputError(f"--train-size must be a whole number >= 1; got {train_size!r}.", "E.g. --train-size 2.")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise InputError(f"--folds must be a whole number >= 1; got {folds!r}.", "E.g. --folds 3.")
    if n - train_size < 1:
        raise InputError(f"--train-size {train_size} leaves no test case: the dataset has {n} case(s).",
                         f"Use --train-size {max(1, n - 2)} or less (one case validates, the rest test).")
    n_val = 1 if n - train_size >= 2 else 0
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    result = []
    for f in range(folds):
        start = (f * train_size + (f * train_size) // n) % n
        chosen = [order[(start + i) % n] for i in range(train_size + n_val)]
        train, validation = chosen[:train_size], chosen[train_size:]
        test = [c for c in order if c not in chosen]
        result.append({"fold": f, "train": train, "validation": validation, "test": test})
    return result


@dataclass
class Run:
    """One run of the bench: ``method`` trained on ``split`` (a :func:`make_folds` entry) with ``seed``."""

    method: str
    fold: int
    seed: int
    split: dict
    folder: Path

    @property
    def name(self) -> str:
        return f"{self.method}/fold{self.fold}_seed{self.seed}"


def parse_methods(text: str) -> List[str]:
    """``--methods`` (comma-separated preset names, each optionally ``+setting=value``) without repeats.

    InputError for unknown presets or settings.
    """
    methods = list(dict.fromkeys(m.strip() for m in (text or "").split(",") if m.strip()))
    unknown = [m for m in methods if m.split("+")[0] not in PRESETS]
    if not methods or unknown:
        raise InputError(f"--methods: {unknown or 'none given'} {'is not a' if len(unknown) == 1 else 'are not'} "
                         f"known preset name{'' if len(unknown) == 1 else 's'}.",
                         f"Use comma-separated presets from: {', '.join(PRESETS)}; a variant adds settings: "
                         f"asymmetric-combination+update=sum.")
    for method in methods:
        technique_from_name(method)
    return methods


def plan_runs(out: Path, methods: Sequence[str], folds: List[dict], seeds: int) -> List[Run]:
    """Runs ordered seed, fold, method: a partial benchmark has every method on the folds it covers."""
    return [Run(m, f["fold"], s, f, out / "runs" / m / f"fold{f['fold']}_seed{s}")
            for s in range(seeds) for f in folds for m in methods]


def folds_of(runs: Sequence[Run]) -> List[dict]:
    """The distinct splits of ``runs``, ordered by fold."""
    seen = {}
    for run in runs:
        seen.setdefault(run.fold, run.split)
    return [seen[f] for f in sorted(seen)]
