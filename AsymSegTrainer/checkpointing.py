"""Which checkpoint is ``model_best.pt`` and when early stopping may stop: a smoothed validation curve.

Validation on one or two cases is noisy, and the raw best mean DSC picks early spikes (issue 11
reported the raw best at iteration 60-180 in 19 of 24 BRATS runs of 300 iterations). As nnU-Net does
for its best checkpoint, the choice follows an exponential moving average of the validation
mean DSC instead:

- **Smoothing.** ``m_k = beta * m_{k-1} + (1 - beta) * d_k`` (``m_0 = 0``) over the scored
  validations ``d_1, d_2, ...``, bias-corrected as Adam does, ``s_k = m_k / (1 - beta^k)``,
  so the first values are a weighted mean of the validations so far rather than pulled
  towards 0 (``s_1 = d_1``). ``beta = SMOOTHING = 0.5``: a run has about 10-15 validations,
  and nnU-Net's 0.9 (per epoch, of 1000) would lag about 9 validations, most of the run;
  0.5 lags about one validation and averages about three (for independent noise, the
  standard deviation falls to 1/sqrt(3) of the raw one). ``beta = 0`` is the raw curve.
  The first smoothed value is the first validation itself: a spike there is not damped.
- **Best.** A validation is the new best when its smoothed value is strictly higher than
  every earlier smoothed value; the caller then saves ``model_best.pt``. The checkpoint
  saved is the weights at that validation: the curve decides only *when* to save.
- **Plateau (early stopping).** An improvement is a smoothed value higher than the
  reference by more than ``min_delta``; it becomes the new reference (as Keras'
  EarlyStopping does, so slow steady gains add up and count). Early stopping may stop
  when the last ``patience`` scored validations brought no improvement and at least
  ``min_progress`` of the planned iterations are done (the first validations of a
  fine-tuning run often wobble before the curve rises).
- **Unscorable validations.** A NaN (or ``None``, how strict JSON stores it) mean DSC, when
  no class could be scored, carries no information: it leaves the curve and the patience
  count unchanged and is never the best.
- **Resume.** The caller keeps the history of its validations as dicts with at least
  ``iteration`` and ``mean_dsc`` (``ValidationDecision.to_dict`` gives the rest);
  ``ValidationCurve(history=...)`` replays them, so a resumed run continues in exactly the
  state the interrupted one had. The state does not depend on the planned number of
  iterations, so a resumed run may plan a different number.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Optional, Tuple

from .errors import InputError

SMOOTHING = 0.5  # beta: weight of the previous smoothed value; 1 - beta goes to each new validation
PATIENCE = 4  # scored validations without improvement before early stopping may stop
MIN_DELTA = 0.005  # smallest rise of the smoothed mean DSC that counts as an improvement (half a DSC point)
MIN_PROGRESS = 0.3  # fraction of the planned iterations done before early stopping may stop


def _number(value: Optional[float]) -> Optional[float]:
    """``value`` as strict JSON can store it: NaN becomes None."""
    return None if value is None or math.isnan(value) else value


@dataclass
class ValidationDecision:
    """What one validation means for the checkpoint choice and early stopping."""

    iteration: int
    mean_dsc: float  # raw mean DSC of this validation (NaN: no class could be scored)
    smoothed: float  # bias-corrected moving average after this validation (NaN before any scored one)
    best: bool  # this validation's weights become model_best.pt
    plateau: bool  # early stopping may stop now

    def to_dict(self) -> dict:
        """The decision as strict-JSON values (NaN becomes None), to merge into a history entry."""
        data = asdict(self)
        data["mean_dsc"], data["smoothed"] = _number(self.mean_dsc), _number(self.smoothed)
        return data


class ValidationCurve:
    """The smoothed validation mean DSC of one run: the best checkpoint and the plateau (see the module doc)."""

    def __init__(self, smoothing: float = SMOOTHING, patience: int = PATIENCE, min_delta: float = MIN_DELTA,
                 min_progress: float = MIN_PROGRESS, history: Iterable[Mapping] = ()):
        if not 0.0 <= smoothing < 1.0:
            raise InputError(f"The validation smoothing must be in [0, 1), not {smoothing}.",
                             f"It is the weight of the previous smoothed value: 0 means no smoothing, "
                             f"{SMOOTHING} is the default.")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise InputError(f"The early-stopping patience must be a whole number of validations >= 1, "
                             f"not {patience!r}.", f"The default is {PATIENCE} validations.")
        if not 0.0 <= min_delta < 1.0:
            raise InputError(f"The early-stopping minimum improvement must be a mean DSC in [0, 1), not {min_delta}.",
                             f"The default is {MIN_DELTA} (half a DSC point).")
        if not 0.0 <= min_progress <= 1.0:
            raise InputError(f"The early-stopping minimum progress must be a fraction in [0, 1], not {min_progress}.",
                             f"The default is {MIN_PROGRESS}: no stop before {MIN_PROGRESS:.0%} of the iterations.")
        self.smoothing, self.patience, self.min_delta, self.min_progress = smoothing, patience, min_delta, min_progress
        self.validations = 0  # all validations, scored or not
        self.scored = 0  # validations with a mean DSC: k of the moving average
        self.last: Optional[ValidationDecision] = None
        self.last_iteration: Optional[int] = None
        self._average = 0.0  # m_k, before bias correction
        self._smoothed = math.nan
        self._best: Optional[Tuple[int, float]] = None  # (iteration, smoothed)
        self._raw: Optional[Tuple[int, float]] = None  # (iteration, mean DSC)
        self._reference = -math.inf  # smoothed value at the last improvement by more than min_delta
        self._stale = 0  # scored validations since that improvement
        for entry in history:
            self._advance(int(entry["iteration"]), entry["mean_dsc"])

    # ------------------------------------------------------------------ results
    @property
    def best_iteration(self) -> Optional[int]:
        """Iteration of the validation whose weights are model_best.pt (None before any scored validation)."""
        return self._best[0] if self._best else None

    @property
    def best_smoothed(self) -> float:
        """Highest smoothed mean DSC so far (NaN before any scored validation)."""
        return self._best[1] if self._best else math.nan

    @property
    def best_raw(self) -> Optional[Tuple[int, float]]:
        """(iteration, mean DSC) of the highest single validation, the earliest on ties; None before any."""
        return self._raw

    def to_dict(self) -> dict:
        """Settings and outcome in strict-JSON values, e.g. for the model file's meta or a report."""
        return {"smoothing": self.smoothing, "patience": self.patience, "min_delta": self.min_delta,
                "min_progress": self.min_progress, "validations": self.validations, "scored": self.scored,
                "best_iteration": self.best_iteration, "best_smoothed": _number(self.best_smoothed),
                "best_raw_iteration": self._raw[0] if self._raw else None,
                "best_raw_mean_dsc": self._raw[1] if self._raw else None}

    # ------------------------------------------------------------------ updates
    def update(self, iteration: int, mean_dsc: Optional[float], total_iterations: int) -> ValidationDecision:
        """Add the validation at ``iteration`` (of ``total_iterations`` planned) and decide best and plateau."""
        if total_iterations < 1:
            raise InputError(f"The planned number of iterations must be >= 1, not {total_iterations}.")
        best = self._advance(iteration, mean_dsc)
        plateau = self._stale >= self.patience and iteration >= self.min_progress * total_iterations
        self.last = ValidationDecision(iteration, self._raw_value(mean_dsc), self._smoothed, best, plateau)
        return self.last

    def _advance(self, iteration: int, mean_dsc: Optional[float]) -> bool:
        """Move the curve by one validation; True when it is the new best. Shared by update and replay."""
        if self.last_iteration is not None and iteration <= self.last_iteration:
            raise InputError(f"Validation at iteration {iteration} after one at iteration {self.last_iteration}: "
                             "validations must come in increasing iterations.",
                             "On resume, replay the stored history once and validate only at later iterations.")
        self.last_iteration = iteration
        self.validations += 1
        value = self._raw_value(mean_dsc)
        if math.isnan(value):
            return False
        self.scored += 1
        self._average = self.smoothing * self._average + (1.0 - self.smoothing) * value
        self._smoothed = self._average / (1.0 - self.smoothing ** self.scored)
        if self._raw is None or value > self._raw[1]:
            self._raw = (iteration, value)
        if self._smoothed > self._reference + self.min_delta:
            self._reference, self._stale = self._smoothed, 0
        else:
            self._stale += 1
        if self._best is None or self._smoothed > self._best[1]:
            self._best = (iteration, self._smoothed)
            return True
        return False

    @staticmethod
    def _raw_value(mean_dsc: Optional[float]) -> float:
        return math.nan if mean_dsc is None else float(mean_dsc)

    # ------------------------------------------------------------------ sentences
    def choice_sentence(self, total_iterations: Optional[int] = None, checkpoint: str = "model_best.pt") -> str:
        """Which checkpoint ``checkpoint`` is and why, in one sentence for the log and the report."""
        if self._best is None:
            return (f"no {checkpoint}: no validation could be scored ({self.validations} so far; no class had "
                    "a defined DSC on the validation cases).")
        of = f" of {total_iterations}" if total_iterations else ""
        plural = "s" if self.scored != 1 else ""
        unscorable = self.validations - self.scored
        skipped = f", not counting {unscorable} unscorable one{'s' if unscorable != 1 else ''}" if unscorable else ""
        raw_iteration, raw = self._raw
        if raw_iteration == self.best_iteration:
            raw_part = f"it is also the highest single validation, {raw:.3f}"
        else:
            raw_part = f"the highest single validation was {raw:.3f} at iteration {raw_iteration}"
        return (f"{checkpoint} is iteration {self.best_iteration}{of}: highest smoothed validation mean DSC "
                f"{self.best_smoothed:.3f} (exponential moving average, weight {1.0 - self.smoothing:g} on each new "
                f"validation, {self.scored} validation{plural}{skipped}); {raw_part}.")

    def stop_sentence(self) -> str:
        """Why early stopping may stop now; only meaningful after a decision with ``plateau`` True."""
        if self.last is None or not self.last.plateau:
            raise RuntimeError("stop_sentence() needs a plateau: the last validation decided none.")
        return (f"no improvement of the smoothed validation mean DSC by more than {self.min_delta:g} for "
                f"{self._stale} validations (best {self.best_smoothed:.3f} at iteration {self.best_iteration})")
