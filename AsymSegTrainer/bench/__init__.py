"""``bench``: the paper's protocol (folds x seeds x methods) on an nnU-Net v2 raw folder.

``python -m AsymSegTrainer bench --dataset DIR --classes NAME=v1,v2 --train-size K --folds F
--seeds S --methods m1,m2 --iterations N --out OUT``

One run = (method, fold, seed) (folds.py: the splits), trained and evaluated in
``OUT/runs/<method>/fold<f>_seed<s>/`` (runs.py: the files of a run), with the settings pinned in
``OUT/bench.json`` (settings.py). Resume and parallel safety (claims.py): runs that are
finished are skipped, runs claimed by a live process are left to it, a claim whose process has
died is taken over and its training resumed. ``OUT/results.json`` (aggregate.py),
``OUT/report.md`` (report.py) and ``OUT/logits_<method>[_last].png`` are rebuilt from all
``run.json`` files at the end of every invocation.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional, Sequence

from ..data import read_nnunet_dataset
from ..errors import InputError
from ..events import EventSink
from ..files import case_inputs, check_writable_folder, refuse_overwriting_inputs
from ..formatting import duration, mean_percent
from ..runtime import resolve_device, versions
from ..techniques import resolve_technique, technique_from_name
from .aggregate import write_results
from .claims import claim, claimed_by_another, refuse_held_folder, release
from .executors import run_as_jobs
from .folds import Run, make_folds, parse_methods, plan_runs
from .runs import Cancelled, pooled_summary, read_json, run_job, run_one, run_record
from .settings import bench_settings, command_line, pin_settings

__all__ = ["make_folds", "run_bench"]

COST = {"adversarial": 2.7, "mixup": 2.0, "both": 3.6}
"""Relative cost of one iteration, for the ETA only (benchmarks/engine_benchmark.py, 2-core CPU)."""


def run_bench(args, sink: Optional[EventSink] = None) -> dict:
    """``python -m AsymSegTrainer bench ...``: ``{"status": finished | cancelled, "outputs": name -> path}``."""
    sink = sink or EventSink()
    started = time.perf_counter()
    out = Path(args.out).expanduser().absolute()
    methods = parse_methods(args.methods)
    seeds = int(args.seeds)
    if seeds < 1:
        raise InputError(f"--seeds must be >= 1; got {seeds}.", "E.g. --seeds 1.")
    settings = bench_settings(args)
    device = str(getattr(args, "device", None) or "auto")
    resolve_device(device)
    _, specs = read_nnunet_dataset(Path(settings["dataset"]))
    folds = make_folds([c.id for c in specs], settings["train_size"], int(args.folds), settings["split_seed"])
    runs = plan_runs(out, methods, folds, seeds)
    run_job(runs[0], settings, device)  # the settings are checked as a job's before anything is written
    refuse_overwriting_inputs([out], {"dataset folder (--dataset)": settings["dataset"], **case_inputs(specs)})
    check_writable_folder(out)
    refuse_held_folder(out)
    pin_settings(out, settings)
    sink.attach(out)
    command = command_line(args)
    sink.emit("start", command="bench", config={**settings, "methods": methods, "folds": folds, "seeds": seeds,
                                                "command": command},
              device=str(resolve_device(device)), versions=versions(), output=str(out))
    if settings["quick"]:
        sink.log(f"--quick: {settings['iterations']} iteration(s) per run, tiny network, patch "
                 f"{settings['patch_size']}: a smoke test, not a result.")

    def progress(i: int, run: Run, state: str, eta: Optional[float]) -> None:
        """The ``progress`` event of run ``i`` (``state``: start | done)."""
        sink.emit("progress", phase="bench", iteration=i, total=len(runs), case=run.name, method=run.method,
                  fold=run.fold, seed=run.seed, state=state, elapsed_seconds=round(time.perf_counter() - started, 1),
                  eta_seconds=eta)

    cancelled = False
    if getattr(args, "executor", "local") != "local":
        run_as_jobs(args, runs, settings, device, out, sink, lambda i, run, state: progress(i, run, state, None))
    else:
        cancelled = _run_here(runs, settings, device, out, sink, progress, started)
    outputs = write_results(out, settings, methods, runs, command, time.perf_counter() - started)
    results = read_json(outputs["results"])
    if not results["complete"] and not cancelled:
        sink.warning(f"{len(results['missing_runs'])} run(s) are not finished (another process holds them, or it "
                     f"died): the results are partial.", "Run the same command again to finish them.")
    sink.log(f"Benchmark report: {outputs['report']}")
    return {"status": "cancelled" if cancelled else "finished", "outputs": outputs}


def _run_here(runs: Sequence[Run], settings: dict, device: str, out: Path, sink: EventSink, progress,
              started: float) -> bool:
    """``--executor local``: the runs one after the other in this process, next to any other local worker.

    Returns True when a training was cancelled.
    """
    done_cost, spent = 0.0, 0.0
    for i, run in enumerate(runs, 1):
        if run_record(run) is not None:
            sink.log(f"[{i}/{len(runs)}] {run.name}: finished earlier, skipped")
            continue
        if not claim(run.folder):
            sink.log(f"[{i}/{len(runs)}] {run.name}: claimed by another live process, skipped")
            continue
        if run_record(run) is not None:  # finished between our check and our claim
            release(run.folder)
            continue
        split = run.split
        sink.log(f"[{i}/{len(runs)}] {run.name}: start (train {', '.join(split['train'])}; "
                 f"validation {', '.join(split['validation']) or '-'}; test {', '.join(split['test'])})")
        progress(i, run, "start", _eta(spent, done_cost, runs[i - 1:]))
        t0 = time.perf_counter()
        try:
            record = run_one(run, settings, device, sink, out)
        except Cancelled:
            sink.warning(f"{run.name} was cancelled; its training can be continued.",
                         "Run the same command again: finished runs are skipped, this one resumes.")
            return True
        finally:
            release(run.folder)
            sink.attach(out)
        spent += time.perf_counter() - t0
        done_cost += _cost(run.method)
        eta = _eta(spent, done_cost, runs[i:])
        post = pooled_summary([record], "post", settings["class_names"][1:])
        sink.log(f"[{i}/{len(runs)}] {run.name}: done in {duration(time.perf_counter() - t0)}; unseen DSC "
                 f"{mean_percent(post['dsc'])}% SEN {mean_percent(post['sensitivity'])}% (post-processed); elapsed "
                 f"{duration(time.perf_counter() - started)}, ETA {duration(eta)}")
        progress(i, run, "done", eta)
    return False


def _cost(method: str) -> float:
    """Relative cost of one iteration of ``method`` (vanilla: 1)."""
    t = resolve_technique(technique_from_name(method))
    if t.adversarial and t.mixup:
        return COST["both"]
    return COST["adversarial"] if t.adversarial else COST["mixup"] if t.mixup else 1.0


def _eta(spent: float, done_cost: float, remaining: Sequence[Run]) -> Optional[float]:
    """Seconds left: the cost of the runs not finished yet, at this process's pace, shared by the live workers.

    Every other process holding a claim on one of ``remaining`` counts as one more worker.
    """
    if done_cost <= 0:
        return None
    todo: List[Run] = [r for r in remaining if run_record(r) is None]
    workers = 1 + sum(1 for r in todo if claimed_by_another(r.folder))
    return round(sum(_cost(r.method) for r in todo) * spent / done_cost / workers, 1)
