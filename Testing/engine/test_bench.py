"""``bench``: the paper's protocol end to end on generated phantoms (--quick), results schema,
resume, parallel claims and the fold rule (a test case never trains or validates)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from AsymSegTrainer import bench
from AsymSegTrainer.bench.settings import quick_spacing
from AsymSegTrainer.cli import main
from AsymSegTrainer.errors import InputError
from AsymSegTrainer.network import load_model_file

METHODS = ["vanilla", "asymmetric-focal"]
FOLDS = 2


def _argv(dataset, out, *extra, iterations=3, methods=METHODS, folds=FOLDS):
    return ["bench", "--dataset", str(dataset), "--classes", "lesion=1", "--train-size", "2", "--folds", str(folds),
            "--seeds", "1", "--methods", ",".join(methods), "--iterations", str(iterations), "--out", str(out),
            "--quick", "--device", "cpu", *extra]


def _events(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def quick_bench(phantom_dataset, tmp_path_factory):
    """One --quick benchmark (2 methods x 2 folds x 1 seed) shared by the tests of this module."""
    out = tmp_path_factory.mktemp("bench") / "out"
    code = main(_argv(phantom_dataset, out))
    assert code == 0
    return out


# ---------------------------------------------------------------------------- folds

@pytest.mark.parametrize("n,k,folds", [(6, 2, 3), (6, 2, 5), (4, 2, 2), (3, 2, 2), (10, 3, 4), (5, 1, 5), (2, 1, 1)])
def test_folds_never_put_a_test_case_into_training(n, k, folds):
    ids = [f"case{i:02d}" for i in range(n)]
    result = bench.make_folds(ids, k, folds)
    assert [f["fold"] for f in result] == list(range(folds))
    for f in result:
        assert len(f["train"]) == k and len(set(f["train"])) == k
        assert len(f["validation"]) == (1 if n - k >= 2 else 0)
        assert not set(f["test"]) & (set(f["train"]) | set(f["validation"]))
        assert not set(f["train"]) & set(f["validation"])
        assert sorted(f["train"] + f["validation"] + f["test"]) == ids
        assert f["test"]
    assert bench.make_folds(list(reversed(ids)), k, folds) == result  # deterministic, order-independent


def test_folds_rotate_the_training_cases():
    ids = [f"brats{i}" for i in range(6)]
    result = bench.make_folds(ids, 2, 3)
    trained = [c for f in result for c in f["train"]]
    assert sorted(trained) == ids  # K=2, 3 folds: every case trains exactly once
    assert bench.make_folds(ids, 2, 3, seed=1) != result


def test_folds_refuse_a_split_without_test_cases():
    with pytest.raises(InputError, match="no test case"):
        bench.make_folds(["a", "b"], 2, 1)
    with pytest.raises(InputError):
        bench.make_folds(["a", "b", "c"], 0, 1)


# ---------------------------------------------------------------------------- end to end

def test_quick_bench_writes_results_report_and_figures(quick_bench):
    for name in ("results.json", "report.md", "bench.json", "logits_vanilla.png", "logits_asymmetric-focal.png",
                 "logits_vanilla_last.png"):
        assert (quick_bench / name).is_file(), name
    for method in METHODS:
        for fold in range(FOLDS):
            run = quick_bench / "runs" / method / f"fold{fold}_seed0"
            assert (run / "run.json").is_file()
            assert not (run / "claim.json").exists()
            assert (run / "train" / "model_best.pt").is_file()
    report = (quick_bench / "report.md").read_text(encoding="utf-8")
    assert "| Method | runs | DSC (%) | SEN (%) | PRC (%) | HD95 (mm) |" in report
    assert "python -m AsymSegTrainer bench --dataset" in report and "--quick" in report
    assert "dz[lesion]" in report and "![vanilla](logits_vanilla.png)" in report
    assert "## Unseen cases, post-processing chosen on the validation case (per class)" in report
    assert "## Lesion-wise detection on the unseen cases" in report
    assert ("| Method | Post-processing | Lesions found | Lesions missed | FP lesions | Lesion SEN (%) | "
            "Lesion SEN per case (%) | found small (< 10 mm³) | found medium (10–100 mm³) | found large (≥ 100 mm³) |"
            in report)
    for label in ("raw", "chosen on validation", "largest component"):
        assert f"| vanilla | {label} | " in report
    assert "| vanilla + calibrated | " in report and "| asymmetric-focal + calibrated | " in report
    paired = report.split("## Paired with vanilla")[1].split("## Per fold")[0]
    assert paired.count("| vanilla + calibrated | ") == paired.count("| asymmetric-focal + calibrated | ") == 2
    for method in METHODS:  # the offsets of the calibrated rows are the ones training stored in each run's model
        for fold in range(FOLDS):
            record = json.loads((quick_bench / "runs" / method / f"fold{fold}_seed0" / "run.json").read_text())
            _, meta = load_model_file(record["model"])
            assert record["calibrated"]["offsets"] == meta["calibration"]["offsets"]
            assert set(record["calibrated"]["post"]) == set(record["test_cases"])
    assert (quick_bench / "logits_vanilla.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _case(dsc, sen, prc, hd95):
    return {"lesion": {"dsc": dsc, "sensitivity": sen, "precision": prc, "hd95": hd95}}


def test_paired_table_pairs_each_unseen_case_with_vanilla_raw_and_post_processed():
    """Two folds, three pairs: the row is the mean and population std of hand-computed differences."""
    def run(method, fold, cases):
        block = {"raw": cases, "post": {c: _case(m["lesion"]["dsc"] + 0.1, 0, 0, None) for c, m in cases.items()}}
        return {"method": method, "fold": fold, "seed": 0, **block, "last": block}
    results = {"settings": {"class_names": ["background", "lesion"]}, "methods": ["vanilla", "focal"],
               "summary": {}, "summary_last": {},
               "runs": [run("vanilla", 0, {"a": _case(0.50, 0.40, 0.90, 10.0), "b": _case(0.20, 0.10, 0.50, None)}),
                        run("focal", 0, {"a": _case(0.60, 0.70, 0.80, 6.0), "b": _case(0.10, 0.30, 0.20, 30.0)}),
                        run("vanilla", 1, {"c": _case(0.70, 0.60, 0.80, 4.0)}),
                        run("focal", 1, {"c": _case(0.80, 0.90, 0.70, 5.0)})]}
    # raw differences: DSC +10, -10, +10; SEN +30, +20, +30; PRC -10, -30, -10; HD95 -4, (undefined), +1
    raw = bench.report.paired_table(results, "raw")
    assert "| focal | 3 | +3.3 ± 9.4 | +26.7 ± 4.7 | -16.7 ± 9.4 | -1.5 ± 2.5 (2/3) | 2/3 | 3/3 | 1/2 |" in raw
    post = bench.report.paired_table(results, "post", last=True)
    assert "| focal | 3 | +3.3 ± 9.4 | +0.0 ± 0.0 | +0.0 ± 0.0 | – | 2/3 | 0/3 | 0/0 |" in post
    assert bench.report.paired_table({**results, "runs": results["runs"][1::2]}) == "(no vanilla runs to pair with)\n"


def test_results_json_follows_the_schema(quick_bench, phantom_dataset):
    results = json.loads((quick_bench / "results.json").read_text(encoding="utf-8"))
    assert results["format"] == "asymseg-bench" and results["complete"] is True
    assert results["methods"] == METHODS
    calibrated = {f"{m} + calibrated" for m in METHODS}  # every run had a validation case: offsets were fitted
    assert set(results["summary_last"]) == set(results["summary"]) == set(METHODS) | calibrated
    assert len(results["runs"]) == len(METHODS) * FOLDS
    cases = {p.name.split("_0000")[0] for p in (phantom_dataset / "imagesTr").glob("*_0000.nii.gz")}
    for run in results["runs"]:
        assert run["method"] in METHODS and run["fold"] in range(FOLDS) and run["seed"] == 0
        assert run["train_cases"] and run["test_cases"]
        assert not set(run["test_cases"]) & set(run["train_cases"] + run["validation_cases"])
        assert set(run["train_cases"] + run["validation_cases"] + run["test_cases"]) == cases
        assert set(run["postprocessing"]) == {"lesion"}  # what the model chose on its validation case
        for variant in ("raw", "chosen", "post"):
            assert set(run[variant]) == set(run["test_cases"])
            for case, per_class in run[variant].items():
                m = per_class["lesion"]
                assert {"dsc", "sensitivity", "precision", "hd95", "tp", "fp", "fn", "lesions_reference",
                        "lesions_detected", "lesions_false_positive", "small_lesions_detected"} <= set(m)
                assert 0.0 <= m["dsc"] <= 1.0
        last = run["last"]  # the model at the end of training, evaluated as well
        assert last["model_iteration"] == 3 and {"raw", "post", "training_cases", "logit_shift"} <= set(last)
        dz = run["logit_shift"]
        assert set(dz) == {"background", "lesion"} and set(dz["lesion"]) == {"background", "lesion"}
        assert isinstance(dz["lesion"]["lesion"], float)
    for method in METHODS:
        for variant in ("raw", "post"):
            for key in ("dsc", "sensitivity", "precision", "hd95"):
                s = results["summary"][method][variant][key]
                assert {"mean", "std", "n"} <= set(s)
                if key == "dsc":  # 4 cases: 2 train, 1 validation, 1 test per fold
                    assert s["n"] == FOLDS * 1
        assert isinstance(results["logit_shift"][method]["lesion"]["lesion"], float)
    # the summary is exactly the mean over runs x test cases
    runs = [r for r in results["runs"] if r["method"] == "vanilla"]
    values = [r["post"][c]["lesion"]["dsc"] for r in runs for c in r["post"]]
    assert results["summary"]["vanilla"]["post"]["dsc"]["mean"] == pytest.approx(sum(values) / len(values))
    # lesions add up over runs x test cases
    for key in ("lesions_reference", "lesions_detected", "lesions_false_positive"):
        total = sum(r["raw"][c]["lesion"][key] for r in runs for c in r["raw"])
        assert results["summary"]["vanilla"]["raw"][key]["total"] == total
    found, reference = (sum(r["chosen"][c]["lesion"][k] for r in runs for c in r["chosen"])
                        for k in ("lesions_detected", "lesions_reference"))
    assert results["summary"]["vanilla"]["chosen"]["lesion_sensitivity"]["pooled"] == pytest.approx(found / reference)


def test_results_of_runs_from_before_lesion_metrics_still_aggregate(quick_bench, phantom_dataset, tmp_path):
    out = tmp_path / "old"
    shutil.copytree(quick_bench, out)

    def strip(block: dict) -> None:
        """What a run.json held before the chosen post-processing and the lesion-wise metrics."""
        block.pop("chosen", None)
        block.pop("postprocessing", None)
        for variant in ("raw", "post"):
            for per_class in block.get(variant, {}).values():
                for metrics in per_class.values():
                    for key in [k for k in metrics if "lesion" in k]:
                        del metrics[key]

    for path in out.glob("runs/*/*/run.json"):
        record = json.loads(path.read_text(encoding="utf-8"))
        for block in (record, record["last"], record["training_cases"], record["last"]["training_cases"]):
            strip(block)
        path.write_text(json.dumps(record), encoding="utf-8")
    assert main(_argv(phantom_dataset, out)) == 0  # every run finished: aggregation only
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    summary = results["summary"]["vanilla"]
    assert summary["post"]["dsc"]["n"] == FOLDS and summary["chosen"]["dsc"]["n"] == 0
    assert summary["raw"]["lesions_detected"]["total"] is None
    assert "chosen" not in results["runs"][0]
    assert "| vanilla | raw | – | – | – | – | – |" in (out / "report.md").read_text(encoding="utf-8")


def test_run_roles_match_the_fold(quick_bench):
    for run_json in quick_bench.glob("runs/*/*/run.json"):
        run = json.loads(run_json.read_text(encoding="utf-8"))
        job = json.loads((run_json.parent / "train" / "job.json").read_text(encoding="utf-8"))
        roles = {c["id"]: c["role"] for c in job["cases"]}
        assert {c for c, r in roles.items() if r == "train"} == set(run["train_cases"])
        assert {c for c, r in roles.items() if r == "validation"} == set(run["validation_cases"])
        assert not set(run["test_cases"]) & {c for c, r in roles.items() if r in ("train", "validation")}


def test_a_second_invocation_skips_finished_runs(quick_bench, phantom_dataset, capsys):
    before = {p: p.stat().st_mtime_ns for p in quick_bench.glob("runs/*/*/run.json")}
    capsys.readouterr()
    assert main(_argv(phantom_dataset, quick_bench, "--events")) == 0
    events = _events(capsys)
    assert not [e for e in events if e["type"] == "start" and e["command"] == "train"]
    assert {p: p.stat().st_mtime_ns for p in quick_bench.glob("runs/*/*/run.json")} == before
    assert events[-1]["type"] == "done" and events[-1]["exit_code"] == 0
    assert "results" in events[-1]["outputs"]


def test_extending_methods_runs_only_the_new_ones(quick_bench, phantom_dataset, capsys):
    capsys.readouterr()
    assert main(_argv(phantom_dataset, quick_bench, "--events", methods=METHODS + ["asymmetric-margin"])) == 0
    events = _events(capsys)
    trained = [e["output"] for e in events if e["type"] == "start" and e["command"] == "train"]
    assert len(trained) == FOLDS and all("asymmetric-margin" in t for t in trained)
    bench_progress = [e for e in events if e["type"] == "progress" and e.get("phase") == "bench"]
    assert bench_progress and all("eta_seconds" in e and "elapsed_seconds" in e for e in bench_progress)
    results = json.loads((quick_bench / "results.json").read_text(encoding="utf-8"))
    assert "asymmetric-margin" in results["summary"] and results["complete"]


def test_a_variant_method_trains_with_its_overridden_settings(quick_bench, phantom_dataset, capsys):
    variant = "asymmetric-focal+gamma=4+update=sum"
    capsys.readouterr()
    assert main(_argv(phantom_dataset, quick_bench, "--events", methods=METHODS + [variant])) == 0
    jobs = sorted(quick_bench.glob(f"runs/{variant}/*/train/job.json"))
    assert len(jobs) == FOLDS
    technique = json.loads(jobs[0].read_text(encoding="utf-8"))["technique"]
    assert technique["preset"] == "asymmetric-focal" and technique["gamma"] == 4.0 and technique["update"] == "sum"
    results = json.loads((quick_bench / "results.json").read_text(encoding="utf-8"))
    assert variant in results["summary"]


@pytest.mark.parametrize("methods,message", [
    ("asymmetric-combination+update=bogus", "technique.update must be one of"),
    ("vanilla+gama=2", "unknown setting(s) ['gama']"),
    ("vanilla+gamma", "'gamma' is not setting=value"),
    ("focal+gamma=2", "not a known preset"),
])
def test_bad_method_variants_are_refused_before_anything_runs(methods, message, phantom_dataset, tmp_path, capsys):
    capsys.readouterr()
    assert main(_argv(phantom_dataset, tmp_path / "out", "--events", methods=[methods])) == 3
    error = [e for e in _events(capsys) if e["type"] == "error"][0]
    assert message in error["message"]
    assert not (tmp_path / "out").exists()


def test_other_settings_in_the_same_out_are_refused(quick_bench, phantom_dataset, capsys):
    capsys.readouterr()
    assert main(_argv(phantom_dataset, quick_bench, "--events", "--batch-size", "3")) == 3
    error = [e for e in _events(capsys) if e["type"] == "error"][0]
    assert "other settings" in error["message"] and "batch_size" in error["message"]


def test_runs_claimed_by_a_live_process_are_left_alone(phantom_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    held = out / "runs" / "vanilla" / "fold0_seed0"
    held.mkdir(parents=True)
    (held / "claim.json").write_text(json.dumps({"pid": os.getppid(), "host": __import__("socket").gethostname(),
                                                 "time": 0}))
    assert main(_argv(phantom_dataset, out, "--events", methods=["vanilla"], folds=1)) == 0
    events = _events(capsys)
    assert any(e["type"] == "warning" and "not finished" in e["message"] for e in events)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["complete"] is False and results["missing_runs"] == ["vanilla/fold0_seed0"]
    assert (held / "claim.json").exists() and not (held / "run.json").exists()

    # the holder dies: its claim is stale and the next invocation takes the run over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (held / "claim.json").write_text(json.dumps({"pid": dead.pid, "host": __import__("socket").gethostname(),
                                                 "time": 0}))
    assert main(_argv(phantom_dataset, out, "--events", methods=["vanilla"], folds=1)) == 0
    capsys.readouterr()
    assert (held / "run.json").exists() and not (held / "claim.json").exists()
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["complete"] is True


def test_two_processes_share_one_out_folder(phantom_dataset, tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "AsymSegTrainer"] + _argv(phantom_dataset, out, "--events", iterations=2,
                                                            methods=["vanilla", "asymmetric-margin"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                              cwd=Path(__file__).resolve().parents[2]) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    trained = [json.loads(line)["output"] for text in outputs for line in text.splitlines()
               if '"command": "train"' in line and json.loads(line)["type"] == "start"]
    assert sorted(trained) == sorted(set(trained))  # no run trained twice
    assert len(trained) == 4
    assert json.loads((out / "results.json").read_text(encoding="utf-8"))["complete"] is True


def test_quick_keeps_small_images_and_coarsens_large_ones(phantom_dataset, brats):
    assert quick_spacing(phantom_dataset) is None  # 24^3 phantoms: already small
    assert quick_spacing(brats) == [5.0, 5.0, 5.0]  # 240 mm / 48 voxels


def test_sigterm_cancels_with_exit_code_10_and_partial_results(phantom_dataset, tmp_path):
    import signal
    out = tmp_path / "bench"
    proc = subprocess.Popen([sys.executable, "-m", "AsymSegTrainer", "bench", "--dataset", str(phantom_dataset),
                             "--classes", "lesion=1", "--train-size", "2", "--folds", "1", "--methods", "vanilla",
                             "--iterations", "100000", "--patch-size", "16", "16", "16", "--batch-size", "2",
                             "--network", json.dumps({"name": "unet", "channels": [4, 8], "strides": [2]}),
                             "--device", "cpu", "--out", str(out), "--events"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if json.loads(line).get("phase") == "train":
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 10
    done = json.loads(rest.splitlines()[-1])
    assert done["type"] == "done" and done["status"] == "cancelled"
    results = json.loads(Path(done["outputs"]["results"]).read_text())
    assert results["complete"] is False and not results["runs"]
