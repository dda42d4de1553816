"""The logit-histogram figure and the demo (a handful of iterations: behaviour, not quality)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from AsymSegTrainer.demo import RUNS, TEST, run_demo
from AsymSegTrainer.errors import InputError
from AsymSegTrainer.events import EventSink
from AsymSegTrainer.logits import LogitStatistics, logit_shift
from AsymSegTrainer.plotting import logit_histogram_figure, plot_logit_histograms


def statistics(seed: int, fg_shift: float, classes=("background", "lesion"), empty=()) -> LogitStatistics:
    """Fake logits: background voxels far on the background side, lesion voxels at 4 - fg_shift."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((10, 20, 20)) < 0.05).astype(np.int64)
    logits = np.stack([np.where(labels == 0, 5.0, -(4.0 - fg_shift)), np.where(labels == 1, 4.0 - fg_shift, -5.0)])
    logits = (logits + rng.normal(0, 1, logits.shape)).astype(np.float32)
    stats = LogitStatistics(list(classes))
    stats.update(np.concatenate([logits, np.zeros((len(classes) - 2,) + labels.shape, np.float32)]), labels,
                 ~np.isin(labels, [list(classes).index(e) for e in empty]) if empty else None)
    return stats


def test_figure_has_one_panel_per_class_and_logit_with_dz_in_the_title():
    train, unseen = statistics(0, 0.0), statistics(1, 3.0)
    fig = logit_histogram_figure(train, unseen, title="vanilla")
    axes = fig.get_axes()
    assert len(axes) == 4
    shift = logit_shift(train, unseen)
    titles = [ax.get_title() for ax in axes]
    assert titles[3] == f"true class: lesion | logit z[lesion]   dz = {shift['lesion']['lesion']:+.2f}"
    assert shift["lesion"]["lesion"] == pytest.approx(-3.0, abs=0.1)  # moved towards the boundary
    assert titles[0].startswith("true class: background | logit z[background]")
    for ax in axes:
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any(l.startswith("training cases") for l in labels) and any(l.startswith("unseen cases") for l in labels)
        assert any("decision boundary" in l for l in labels)
        assert ax.get_xlabel().startswith("logit z[") and ax.get_ylabel() == "density"
        lo, hi = ax.get_xlim()
        assert lo < 0 < hi  # the boundary is in view
    # density-normalised: the filled training histogram of each panel integrates to ~1
    values, edges, _ = axes[3].patches[0].get_data()
    assert np.sum(values * np.diff(edges)) == pytest.approx(1.0, abs=1e-6)


def test_png_is_written_atomically_and_empty_classes_are_marked(tmp_path):
    train = statistics(0, 0.0, classes=("background", "lesion", "edema"))
    unseen = statistics(1, 1.0, classes=("background", "lesion", "edema"))
    fig = logit_histogram_figure(train, unseen)
    assert len(fig.get_axes()) == 9
    edema_panel = fig.get_axes()[6]
    assert edema_panel.get_title().endswith("dz = n/a")
    assert any("no voxels of class edema" in t.get_text() for t in edema_panel.texts)
    path = plot_logit_histograms(train, unseen, tmp_path / "figs" / "logits.png", title="test")
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 500 and image.shape[1] > 1000
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert [p.name for p in path.parent.iterdir()] == ["logits.png"]


def test_demo_with_a_handful_of_iterations(tmp_path):
    out = tmp_path / "demo"
    sink = EventSink(progress_bar=False)
    threads = torch.get_num_threads()
    outputs = run_demo(out, sink, iterations=2)
    assert torch.get_num_threads() == threads  # the demo's single-thread setting is undone
    assert set(outputs) == {"metrics", "report", "logits_vanilla", "logits_asymmetric-focal"}
    record = json.loads((out / "metrics.json").read_text())
    assert list(record["runs"]) == list(RUNS) == ["vanilla", "asymmetric-focal"]
    for run in RUNS:
        result = record["runs"][run]
        assert sorted(result["cases"]) == TEST  # evaluated on the unseen cases only
        for variant in ("raw", "chosen", "post"):
            assert result["summary"][variant]["lesion"]["dsc"]["n"] + \
                result["summary"][variant]["lesion"]["dsc"]["n_undefined"] == len(TEST)
        assert set(result["postprocessing"]) == {"lesion"}  # the run's model's choice, applied by infer
        assert set(result["logit_shift"]) == {"background", "lesion"}
        assert result["logits"]["dz"] == result["logit_shift"]["lesion"]["lesion"]
        assert result["iterations"] == 2
        assert Path(result["model"]).is_file() and (out / run / "predictions" / f"{TEST[0]}.nii.gz").is_file()
        assert matplotlib.image.imread(out / f"logits_{run}.png").shape[-1] in (3, 4)
    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| Run")]
    assert [row.split(" | ")[:2] for row in rows] == [[f"| {run}", label] for run in RUNS for label in
                                                      ("raw", "chosen on validation", "largest component")]
    dsc = record["runs"]["vanilla"]["summary"]["raw"]["lesion"]["dsc"]
    assert f"{100 * dsc['mean']:.1f} ± {100 * dsc['std']:.1f}" in rows[0]
    header = next(line for line in report.splitlines() if line.startswith("| Run"))
    assert "| PRC (%) | Lesions found | Lesions missed | FP lesions | Lesion SEN (%) | mean z[lesion] train |" in header
    cases = record["runs"]["vanilla"]["cases"]  # the lesions of the unseen cases, added up
    found, reference = (sum(cases[c]["raw"]["lesion"][k] for c in TEST) for k in ("lesions_detected",
                                                                                  "lesions_reference"))
    assert f" | {found}/{reference} | {reference - found} | " in rows[0]
    logged = (out / "log.txt").read_text()
    assert "| asymmetric-focal | largest component |" in logged  # the table is printed to the log
    starts = [e["command"] for e in sink.events if e["type"] == "start"]
    assert starts == ["demo", "train", "train"]


def test_demo_refuses_a_foreign_non_empty_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        run_demo(tmp_path, EventSink(progress_bar=False), iterations=1)
    assert [p.name for p in tmp_path.iterdir()] == ["precious.txt"]
    with pytest.raises(InputError, match="iterations"):
        run_demo(tmp_path / "new", EventSink(progress_bar=False), iterations=0)
