"""The margin chart: where each class's voxels sit relative to the decision boundary, training vs unseen.

The paper's figure (Li et al., TMI 2020, Fig. 3 / 7) draws every logit channel for every true
class (G x G panels) and sums the shift up as dz = |mean unseen| - |mean train|, which hides a
logit that crosses the boundary. Here each true class g gets ONE panel: the distribution of the
true-class margin m = z_g - max_{k != g} z_k over the voxels of g (logits.py), on training
cases (filled) and unseen cases (step line), density-normalised so cases of different sizes
compare. The vertical line m = 0 is the decision boundary; left of it (shaded) the voxel is
segmented as another class. Under each panel a plain sentence gives the share (and, when the
voxel volume is known, the mL) of the unseen voxels on the wrong side against the training
share, and the paper's dz of the class's own logit.

Background keeps its panel: its voxels on the wrong side are the volume segmented as a
structure that is not there (false positives), the other side of the trade-off the asymmetric
methods make, and the paper's claim that background stays put is read there. Matplotlib's Agg
canvas is used directly: no display and no pyplot global state.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np

from .files import atomic_output
from .logits import LogitStatistics, logit_shift, margin_shift

TRAIN_COLOR, UNSEEN_COLOR = "#1f77b4", "#d62728"
MARGIN_LABEL = "margin z_true - max other z (logit units)"
MAX_COLUMNS = 3


def _percent(fraction: float) -> str:
    """A share as a percentage that keeps small non-zero shares visible (0.4%, <0.1%)."""
    if fraction == 0:
        return "0%"
    if fraction < 0.001:
        return "<0.1%"
    return f"{100 * fraction:.1f}%" if fraction < 0.1 else f"{100 * fraction:.0f}%"


def _ml(volume: float) -> str:
    return f"{volume:.2f}" if volume < 10 else f"{volume:.1f}"


def margin_sentence(train: LogitStatistics, unseen: LogitStatistics, g) -> str:
    """The plain sentence under class g's panel: share (and mL) of unseen voxels on the wrong side, vs training.

    Class 0 is the background: its voxels on the wrong side are segmented as another class
    (false positives) rather than missed.
    """
    shifts = margin_shift(train, unseen)  # checks that the two are comparable
    g = train._class(g)
    name = train.class_names[g]
    shift = shifts[name]
    own = logit_shift(train, unseen)[name].get(name)  # the paper's dz of the class's own logit
    dz = "" if own is None else f"; dz = {own:+.2f} (paper's measure)"
    if not (train.has_margins and unseen.has_margins):
        return f"{name}: margins not recorded in these statistics (collected before AsymSeg kept them){dz}."
    if shift["unseen_crossing"] is None:
        return f"{name}: no voxels of this class in the unseen cases{dz}."
    missed, total = unseen.missed_volume_ml(g), unseen.volume_ml(g)
    volume = "" if missed is None else f" ({_ml(missed)} mL of {_ml(total)} mL)"
    what = "segmented as another class" if g == 0 else "missed"
    against = ("no voxels of this class in the training cases" if shift["train_crossing"] is None
               else f"against {_percent(shift['train_crossing'])} on the training cases")
    return (f"{name}: {_percent(shift['unseen_crossing'])} of the unseen voxels{volume} fall on the wrong side "
            f"of the boundary ({what}), {against}{dz}.")


def _x_range(stats_list, g: int):
    """The bins holding margins in any of the statistics, with a little room, always showing m = 0."""
    low, high = 0.0, 0.0
    for stats in stats_list:
        if not stats.has_margins or not stats.count(g):
            continue
        edges, counts = stats.margin_histogram(g)
        filled = np.flatnonzero(counts)
        if filled.size:
            low, high = min(low, edges[filled[0]]), max(high, edges[filled[-1] + 1])
        low = min(low, max(stats.margin_quantile(g, 0.0), edges[0]))
        high = max(high, min(stats.margin_quantile(g, 1.0), edges[-1]))
    room = 0.05 * (high - low) or 1.0
    return low - room, high + room


def margin_figure(train: LogitStatistics, unseen: LogitStatistics, title: str = "",
                  train_label: str = "training cases", unseen_label: str = "unseen cases"):
    """A matplotlib Figure (Agg canvas), one margin panel per class; see the module docstring."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(unseen, LogitStatistics):
        raise ValueError(f"unseen must be a LogitStatistics (the unseen cases' logit statistics); "
                         f"got {type(unseen).__name__}.")
    sentences = [margin_sentence(train, unseen, g) for g in range(len(train.class_names))]  # checks the pair
    count = len(train.class_names)
    cols = min(count, MAX_COLUMNS)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(5.4 * cols, 4.3 * rows + (0.5 if title else 0.2)), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.remove()
    for g, (name, ax) in enumerate(zip(train.class_names, axes)):
        low, high = _x_range([train, unseen], g)
        peak = 0.0
        for stats, color, label, filled in ((train, TRAIN_COLOR, train_label, True),
                                            (unseen, UNSEEN_COLOR, unseen_label, False)):
            if not stats.has_margins or not stats.count(g):
                continue
            edges, counts = stats.margin_histogram(g)
            density = counts / (stats.count(g) * np.diff(edges))
            peak = max(peak, float(density.max()))
            text = f"{label} (n={stats.count(g):,}, mean {stats.margin_mean(g):+.2f})"
            if filled:
                ax.stairs(density, edges, fill=True, color=color, alpha=0.35, label=text)
            else:
                ax.stairs(density, edges, color=color, linewidth=1.8, label=text)
        ax.axvspan(low, 0.0, color="0.5", alpha=0.12, linewidth=0, label="wrong side (margin < 0)")
        ax.axvline(0.0, color="0.2", linewidth=1.2, label="decision boundary (margin = 0)")
        ax.set_xlim(low, high)
        ax.set_ylim(0, 1.45 * peak if peak else 1.0)  # head room for the legend
        ax.set_title(name, fontsize=11)
        ax.set_xlabel(MARGIN_LABEL)
        ax.set_ylabel("density")
        ax.legend(fontsize=7, loc="upper left", framealpha=0.85)
        if not peak:
            ax.text(0.5, 0.45, "no margins to show", transform=ax.transAxes, ha="center", va="center", color="0.4")
        ax.text(0.0, -0.2, textwrap.fill(sentences[g], 78), transform=ax.transAxes, ha="left", va="top",
                fontsize=8.5, wrap=False)
    if title:
        fig.suptitle(title, fontsize=12)
    return fig


def plot_margins(train: LogitStatistics, unseen: LogitStatistics, path, title: str = "",
                 train_label: str = "training cases", unseen_label: str = "unseen cases") -> Path:
    """Write the figure of :func:`margin_figure` as a PNG, atomically; returns the path."""
    path = Path(path)
    fig = margin_figure(train, unseen, title, train_label, unseen_label)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path
