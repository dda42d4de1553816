"""The paper's logit-distribution figure (Li et al., TMI 2020, Fig. 3 / 7) from LogitStatistics.

One panel per (ground-truth class g, logit channel c): the distribution of z_c over the
voxels whose true class is g, on training cases (filled) and unseen cases (step line),
density-normalised on the shared bin edges so cases of different sizes compare. Dashed
lines mark the two means; the panel title gives ``dz = |mean unseen| - |mean train|``
(METHOD.md §1; negative = the logit moved towards the boundary). The grey line at z = 0 is
the decision boundary of the diagnostic (the reference dz is measured from). Matplotlib's
Agg canvas is used directly: no display and no pyplot global state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .files import atomic_output
from .logits import LogitStatistics, logit_shift

TRAIN_COLOR, UNSEEN_COLOR = "#1f77b4", "#d62728"


def _density(stats: LogitStatistics, g: int, c: int):
    """(edges, density) of channel c over class g; the density integrates to the in-range share."""
    edges, counts = stats.histogram(g, c)
    total = stats.count(g)
    return edges, counts / (total * np.diff(edges)) if total else None


def _x_range(stats_list, g: int, c: int, edges: np.ndarray):
    """The bins holding data in any of the statistics, with a margin, always showing z = 0."""
    low, high = 0.0, 0.0
    for stats in stats_list:
        if stats is None or not stats.count(g):
            continue
        _, counts = stats.histogram(g, c)
        filled = np.flatnonzero(counts)
        if filled.size:
            low, high = min(low, edges[filled[0]]), max(high, edges[filled[-1] + 1])
        low = min(low, max(stats.minimum(g, c), edges[0]))
        high = max(high, min(stats.maximum(g, c), edges[-1]))
    margin = 0.05 * (high - low) or 1.0
    return low - margin, high + margin


def logit_histogram_figure(train: LogitStatistics, unseen: Optional[LogitStatistics], title: str = "",
                           train_label: str = "training cases", unseen_label: str = "unseen cases"):
    """A matplotlib Figure (Agg canvas) of the panels; see the module docstring."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shift = logit_shift(train, unseen) if unseen is not None else None
    rows, cols = len(train.class_names), len(train.channel_names)
    fig = Figure(figsize=(4.6 * cols, 3.3 * rows + (0.5 if title else 0.2)), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for g, true_name in enumerate(train.class_names):
        for c, channel in enumerate(train.channel_names):
            ax = axes[g][c]
            edges = train.bin_edges
            drawn, peak = False, 0.0
            for stats, color, label, filled in ((train, TRAIN_COLOR, train_label, True),
                                                (unseen, UNSEEN_COLOR, unseen_label, False)):
                if stats is None:
                    continue
                _, density = _density(stats, g, c)
                if density is None:
                    continue
                peak = max(peak, float(density.max()))
                text = f"{label} (n={stats.count(g):,}, mean {stats.mean(g, c):+.2f})"
                if filled:
                    ax.stairs(density, edges, fill=True, color=color, alpha=0.35, label=text)
                else:
                    ax.stairs(density, edges, color=color, linewidth=1.8, label=text)
                ax.axvline(stats.mean(g, c), color=color, linestyle="--", linewidth=1.2)
                drawn = True
            ax.axvline(0.0, color="0.35", linewidth=1.0, label="decision boundary (z = 0)")
            ax.set_xlim(*_x_range([train, unseen], g, c, edges))
            dz = None if shift is None else shift[true_name][channel]
            dz_text = "" if shift is None else ("   dz = n/a" if dz is None else f"   dz = {dz:+.2f}")
            ax.set_title(f"true class: {true_name} | logit z[{channel}]{dz_text}", fontsize=10)
            ax.set_xlabel(f"logit z[{channel}]")
            ax.set_ylabel("density")
            if drawn:
                ax.set_ylim(0, 1.4 * peak)  # head room for the legend
                ax.legend(fontsize=7, loc="upper left", framealpha=0.85)
            else:
                ax.text(0.5, 0.5, f"no voxels of class {true_name}", transform=ax.transAxes, ha="center",
                        va="center", color="0.4")
    if title:
        fig.suptitle(title, fontsize=12)
    if unseen is not None:
        fig.supxlabel("dz = |mean unseen| - |mean train| (dashed lines: means); dz < 0: the logit moved towards the "
                      "decision boundary z = 0 on unseen cases", fontsize=8, color="0.3")
    return fig


def plot_logit_histograms(train: LogitStatistics, unseen: Optional[LogitStatistics], path, title: str = "",
                          train_label: str = "training cases", unseen_label: str = "unseen cases") -> Path:
    """Write the figure of :func:`logit_histogram_figure` as a PNG, atomically; returns the path."""
    path = Path(path)
    fig = logit_histogram_figure(train, unseen, title, train_label, unseen_label)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path
