"""``bench --executor``: runs as scheduler jobs through submitit give the results of a local run."""

import json

import pytest

from AsymSegTrainer.bench import executors, make_folds
from AsymSegTrainer.bench.claims import claim
from AsymSegTrainer.bench.folds import plan_runs
from AsymSegTrainer.cli import main
from AsymSegTrainer.errors import InputError

pytest.importorskip("submitit")


def _argv(dataset, out, *extra):
    return ["bench", "--dataset", str(dataset), "--classes", "lesion=1", "--train-size", "2", "--folds", "1",
            "--seeds", "1", "--methods", "vanilla,asymmetric-focal", "--iterations", "2", "--out", str(out),
            "--quick", "--device", "cpu", *extra]


def _comparable(results: dict) -> dict:
    """results.json without what differs between any two invocations: times, the command line, file paths."""
    runs = [{k: v for k, v in r.items() if k != "seconds"} for r in results["runs"]]
    for r in runs:
        r["last"] = {k: v for k, v in r["last"].items() if k != "model"}
    return {**{k: v for k, v in results.items() if k not in ("command", "seconds", "runs")}, "runs": runs}


def test_submitit_local_executor_aggregates_the_results_of_a_local_run(phantom_dataset, tmp_path, capsys):
    assert main(_argv(phantom_dataset, tmp_path / "local")) == 0
    capsys.readouterr()
    assert main([*_argv(phantom_dataset, tmp_path / "jobs", "--executor", "submitit-local"), "--events"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    local = json.loads((tmp_path / "local" / "results.json").read_text())
    jobs = json.loads((tmp_path / "jobs" / "results.json").read_text())
    assert jobs["complete"] and len(jobs["runs"]) == 2
    assert _comparable(jobs) == _comparable(local)
    assert sorted((e["case"], e["state"]) for e in events if e["type"] == "progress") == \
        [("asymmetric-focal/fold0_seed0", "done"), ("vanilla/fold0_seed0", "done")]
    assert list((tmp_path / "jobs" / executors.JOB_FOLDER).iterdir())  # the jobs' own logs are kept


def test_a_resubmitted_grid_skips_finished_and_claimed_runs(phantom_dataset, tmp_path, capsys):
    out = tmp_path / "jobs"
    assert main(_argv(phantom_dataset, out, "--executor", "submitit-local")) == 0
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/run.json")}
    assert main([*_argv(phantom_dataset, out, "--executor", "submitit-local"), "--events"]) == 0
    assert "Every run is finished or held by a live worker: nothing to submit." in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/run.json")} == before


def test_a_job_does_nothing_for_a_finished_run_or_one_another_worker_holds(phantom_dataset, tmp_path, capsys):
    out = tmp_path / "jobs"
    assert main(_argv(phantom_dataset, out)) == 0
    run = plan_runs(out, ["vanilla"], make_folds([f"phantom_00{i}" for i in range(4)], 2, 1), 1)[0]
    assert executors.run_in_job(run, {}, "cpu", out) is None  # finished: its run.json exists
    (run.folder / "run.json").unlink()
    assert claim(run.folder)  # this process holds it now, as a live worker would
    assert executors.run_in_job(run, {}, "cpu", out) is None
    assert not (run.folder / "run.json").exists()


def test_slurm_without_submitit_says_how_to_install_it(phantom_dataset, tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_submitit(name, *args, **kwargs):
        if name == "submitit":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_submitit)

    class Args:
        executor = "slurm"
    with pytest.raises(InputError, match=r"needs the submitit package.*"):
        executors._executor(Args(), tmp_path)
