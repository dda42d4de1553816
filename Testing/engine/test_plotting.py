"""The margin chart: one panel per class, the boundary at 0, and a sentence with the numbers under each panel."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from AsymSegTrainer.logits import LogitStatistics, logit_shift
from AsymSegTrainer.plotting import MARGIN_LABEL, margin_figure, margin_sentence, plot_margins

CLASSES = ("background", "lesion")


def statistics(seed: int, fg_shift: float, classes=CLASSES, empty=(), voxel_ml=None) -> LogitStatistics:
    """Fake logits: background voxels far on the background side, lesion voxels at 4 - fg_shift."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((10, 20, 20)) < 0.05).astype(np.int64)
    logits = np.stack([np.where(labels == 0, 5.0, -(4.0 - fg_shift)), np.where(labels == 1, 4.0 - fg_shift, -5.0)])
    logits = (logits + rng.normal(0, 1, logits.shape)).astype(np.float32)
    stats = LogitStatistics(list(classes))
    stats.update(np.concatenate([logits, np.full((len(classes) - 2,) + labels.shape, -9.0, np.float32)]), labels,
                 ~np.isin(labels, [list(classes).index(e) for e in empty]) if empty else None, voxel_volume_ml=voxel_ml)
    return stats


def counted(lesion_margins, voxel_ml=None) -> LogitStatistics:
    """Ten background voxels with margin 5 and lesion voxels with the given margins (logits (0, m))."""
    m = np.asarray(lesion_margins, float)
    z = np.concatenate([np.tile([[5.0], [0.0]], 10), np.stack([np.zeros_like(m), m])], axis=1)
    stats = LogitStatistics(list(CLASSES))
    stats.update(z, np.r_[np.zeros(10, int), np.ones(m.size, int)], voxel_volume_ml=voxel_ml)
    return stats


def panel_text(ax) -> str:
    """The sentence under a panel, unwrapped."""
    return " ".join(t.get_text().replace("\n", " ") for t in ax.texts if t.get_position()[1] < 0)


def test_one_panel_per_class_with_the_boundary_and_at_most_four_curves():
    classes = ("background", "lesion", "edema", "necrosis", "enhancing")
    train, unseen = statistics(0, 0.0, classes), statistics(1, 3.0, classes)
    fig = margin_figure(train, unseen, title="vanilla")
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == list(classes)  # 5 panels in a 2 x 3 grid, the spare one removed
    for ax in axes:
        assert ax.get_xlabel() == MARGIN_LABEL == "margin z_true - max other z (logit units)"
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert len(labels) <= 4 and any("decision boundary" in l for l in labels)
        lo, hi = ax.get_xlim()
        assert lo < 0 < hi  # the boundary is in view
        assert any(np.allclose(line.get_xdata(), 0.0) for line in ax.get_lines())
    lesion = axes[1]
    labels = [t.get_text() for t in lesion.get_legend().get_texts()]
    assert labels[0].startswith("training cases (n=") and labels[1].startswith("unseen cases (n=")
    values, edges, _ = lesion.patches[0].get_data()  # the filled training density integrates to 1
    assert np.sum(values * np.diff(edges)) == pytest.approx(1.0, abs=1e-6)
    assert "no voxels of this class in the unseen cases" in panel_text(axes[2])  # edema: never labelled
    assert "vanilla" in [t.get_text() for t in fig.texts]  # the suptitle


def test_sentence_gives_the_shares_volumes_and_dz():
    # Training: 1 of 10 lesion voxels crosses; unseen: 3 of 10, 0.5 mL each.
    train = counted([-1.0, 1, 2, 2, 2, 3, 3, 3, 4, 4], voxel_ml=0.5)
    unseen = counted([-2.0, -1.0, -0.5, 0.5, 1, 1, 1, 2, 2, 2], voxel_ml=0.5)
    dz = logit_shift(train, unseen)["lesion"]["lesion"]
    expected = (f"lesion: 30% of the unseen voxels (1.50 mL of 5.00 mL) fall on the wrong side of the boundary "
                f"(missed), against 10% on the training cases; dz = {dz:+.2f} (paper's measure).")
    assert margin_sentence(train, unseen, "lesion") == expected == margin_sentence(train, unseen, 1)
    assert margin_sentence(train, unseen, 0) == ("background: 0% of the unseen voxels (0.00 mL of 5.00 mL) fall on "
                                                 "the wrong side of the boundary (segmented as another class), "
                                                 "against 0% on the training cases; dz = +0.00 (paper's measure).")
    fig = margin_figure(train, unseen)
    assert panel_text(fig.get_axes()[1]) == expected
    # Without voxel volumes the sentence leaves the mL out; small shares keep a decimal.
    few = counted([-1.0] + [1.0] * 249)
    assert margin_sentence(few, few, "lesion").startswith(
        "lesion: 0.4% of the unseen voxels fall on the wrong side of the boundary (missed), against 0.4% on")


def test_png_is_written_atomically_and_is_a_real_image(tmp_path):
    classes = ("background", "lesion", "edema")
    train = statistics(0, 0.0, classes, voxel_ml=0.001)
    unseen = statistics(1, 1.0, classes, voxel_ml=0.001)
    path = plot_margins(train, unseen, tmp_path / "figs" / "logits.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 1000  # three panels side by side
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert [p.name for p in path.parent.iterdir()] == ["logits.png"]  # no temporary file left


def test_statistics_without_margins_still_plot_with_dz(tmp_path):
    def old_file(stats):  # as loaded from a file written before margins and volumes
        record = stats.to_dict()
        return LogitStatistics.from_dict({k: v for k, v in record.items() if "margin" not in k and "volume" not in k})

    train, unseen = old_file(statistics(0, 0.0)), old_file(statistics(1, 2.0))
    assert not train.has_margins
    fig = margin_figure(train, unseen)
    text = panel_text(fig.get_axes()[1])
    assert text.startswith("lesion: margins not recorded") and "dz = " in text
    assert any(t.get_text() == "no margins to show" for t in fig.get_axes()[1].texts)
    assert plot_margins(train, unseen, tmp_path / "old.png").is_file()


def test_mismatched_statistics_are_refused():
    with pytest.raises(ValueError, match="^unseen has classes"):
        margin_figure(statistics(0, 0.0), statistics(1, 0.0, ("background", "tumour")))
    with pytest.raises(ValueError, match="^unseen must be a LogitStatistics"):
        margin_figure(statistics(0, 0.0), None)
