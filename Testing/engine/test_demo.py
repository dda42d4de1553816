"""The demo (a handful of iterations: behaviour, not quality); its figure: test_plotting.py."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest
import torch

from AsymSegTrainer.demo import RUNS, TEST, run_demo
from AsymSegTrainer.errors import InputError
from AsymSegTrainer.events import EventSink


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
    assert ("| PRC (%) | Lesions found | Lesions missed | FP lesions | Lesion SEN (%) | lesion voxels missed, train | "
            "missed, unseen | dz[lesion] |") in header
    for run in RUNS:  # missed lesion voxels (margin < 0) = 1 - pooled raw voxel sensitivity of the unseen cases
        cases = record["runs"][run]["cases"]
        tp, reference = (sum(cases[c]["raw"]["lesion"][k] for c in TEST) for k in ("tp", "reference_voxels"))
        assert record["runs"][run]["logits"]["unseen_crossing"] == pytest.approx(1 - tp / reference, abs=1e-9)
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
