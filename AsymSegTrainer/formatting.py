"""How numbers read in the engine's logs and Markdown reports, in one place so they all agree.

Fractions (DSC, sensitivity, precision) are shown as percentages with one decimal, as in the
paper's tables; summaries are the ``{"mean", "std", "n", "n_undefined"}`` dicts of
:func:`AsymSegTrainer.metrics.summarize`; "–" fills a table cell without a value. Lesion
counts read as found of reference ("7/9"), missed, false positives and the lesion-wise
sensitivity in percent (``LESION_TITLES``).
"""

from __future__ import annotations

from typing import List, Optional

MISSING = "–"
LESION_TITLES = ("Lesions found", "Lesions missed", "FP lesions", "Lesion SEN (%)")
"""Column titles of ``lesion_cells``."""


def percent(value: Optional[float]) -> str:
    """A fraction for a log line: ``0.873`` -> ``"87.3%"``; ``"n/a"`` when undefined."""
    return "n/a" if value is None else f"{100 * value:.1f}%"


def mean_std(summary: Optional[dict], scale: float = 100.0, count_prefix: str = "", sign: bool = False) -> str:
    """A table cell ``"87.3 ± 4.1"`` of a summary, times ``scale`` (100: percent, 1: e.g. mm).

    ``sign``: the mean of differences with its sign, ``"+1.2 ± 4.1"``. When some values were
    undefined the cell says how many the mean covers, ``" (2/3)"`` (``count_prefix="n="``:
    ``" (n=2/3)"``); "–" when there is no defined value.
    """
    if not summary or summary["mean"] is None:
        return MISSING
    text = f"{scale * summary['mean']:{'+' if sign else ''}.1f} ± {scale * summary['std']:.1f}"
    undefined = summary.get("n_undefined")
    return text + (f" ({count_prefix}{summary['n']}/{summary['n'] + undefined})" if undefined else "")


def mean_percent(summary: dict) -> str:
    """The mean of a summary of fractions as a percentage, ``"87.3"``, for compact cells and log lines."""
    return MISSING if summary["mean"] is None else f"{100 * summary['mean']:.1f}"


def lesion_cells(detected: Optional[int], reference: Optional[int], false_positive: Optional[int]) -> List[str]:
    """Cells under ``LESION_TITLES``: ``["7/9", "2", "3", "77.8"]``; "–" where a count is unknown.

    Missed = reference - detected; the sensitivity is detected / reference ("–" without
    reference lesions: nothing to find).
    """
    known = detected is not None and reference is not None
    return [f"{detected}/{reference}" if known else MISSING, str(reference - detected) if known else MISSING,
            MISSING if false_positive is None else str(false_positive),
            f"{100 * detected / reference:.1f}" if known and reference else MISSING]


def signed(value: Optional[float], scale: float = 1.0, digits: int = 1) -> str:
    """A difference or logit with its sign, ``"+1.2"``; "–" when undefined."""
    return MISSING if value is None else f"{scale * value:+.{digits}f}"


def duration(seconds: Optional[float]) -> str:
    """``"1h02m03s"`` from an hour on, else ``"2m03s"``; "–" when unknown."""
    if seconds is None:
        return MISSING
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 \
        else f"{seconds // 60}m{seconds % 60:02d}s"


def plan_text(plan: dict) -> str:
    """The plan in plain lines, for the log and the CLI."""
    lines = [f"Training plan for {plan['device']['type'].upper()} ({plan['device']['name']}, "
             f"{plan['device']['cores']} core(s)"
             + (f", {plan['device']['memory_gib']} GiB" if plan["device"]["memory_gib"] else "") + "):"]
    for name, value in plan["settings"].items():
        reason = plan["reasons"].get(name) or ""
        lines.append(f"  {name} = {value}  [{plan['source'][name]}]" + (f": {reason}" if reason else ""))
    if plan.get("estimated_minutes") is not None:
        lines.append(f"  estimated training time {plan['estimated_minutes']:g} min "
                     f"({plan['step_seconds']:g} s per iteration measured here)")
    return "\n".join(lines)
