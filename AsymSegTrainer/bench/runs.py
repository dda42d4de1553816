"""Training and evaluating one run of the bench, in ``OUT/runs/<method>/fold<f>_seed<s>/``.

- ``train/``: the training output (job.json, model files, log, events);
- ``training_cases/`` and ``predictions/``: ``infer`` outputs (label map with the post-processing
  the model chose on its validation case, ``_logits.json``, ``_metrics.json``) of the training
  cases and of the test cases, made by the same model on
  the same (input) grid, so training-vs-unseen logit statistics compare voxel for voxel;
- ``logits_train.json`` / ``logits_test.json``: the merged logit statistics;
- the same with the suffix ``_last`` for the last checkpoint when validation chose an earlier
  one: every run is evaluated with the checkpoint chosen on its validation case (the headline
  ``raw`` / ``chosen`` / ``post`` numbers, with the post-processing its model file names under
  ``postprocessing``) and with the model at the end of training (``last``);
- ``run.json``: written atomically last: the run is finished when it exists.

A run whose process died is resumed from ``model_last.pt``. Also here: reading a run's record
back and pooling the metrics of records (for results.json, report.md and the log).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..evaluation import VARIANTS
from ..events import EventSink
from ..files import write_json
from ..logits import LogitStatistics, logit_shift
from ..metrics import summarize_metrics
from ..techniques import technique_from_name
from .folds import Run
from .settings import BENCH_FORMAT, BENCH_NORMALIZATION, BENCH_VERSION

RUN_FILE = "run.json"
METRIC_KEYS = ("dsc", "sensitivity", "precision", "hd95")
CALIBRATED = "calibrated"  # a block's test metrics with the logit offsets fitted on the run's validation case
CALIBRATED_ROW = " + calibrated"  # appended to a method's name: its rows with those offsets
LAST_SUFFIX = "_last"  # outputs of the last checkpoint: predictions_last/, logits_test_last.json, ...


class Cancelled(Exception):
    """Training was cancelled (SIGTERM / SIGINT / STOP file): the bench stops after aggregating."""


def read_json(path) -> dict:
    """A JSON file written by the bench (run.json, results.json)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def run_record(run: Run) -> Optional[dict]:
    """The run's ``run.json``; None while the run is not finished (no file, or an unreadable one: redone)."""
    try:
        return read_json(run.folder / RUN_FILE)
    except (OSError, ValueError):
        return None


def pooled_summary(blocks: List[dict], variant: str, classes: Sequence[str]) -> Dict[str, dict]:
    """metric -> summary over the blocks' test cases x the given foreground classes (metrics.summarize_metrics).

    The voxel metrics ``METRIC_KEYS`` and the lesion-wise counts and sensitivities, with the
    lesions of all those cases added up (``total``, ``pooled``). A block is a run.json record
    or its ``last`` block: ``{variant: {case: {class: metrics}}}``; a block without ``variant``
    (a run from before the variant existed) adds nothing to it.
    """
    records = [block[variant][case][name] for block in blocks for case in block.get(variant, {})
               for name in classes if name in block[variant][case]]
    return summarize_metrics(records, METRIC_KEYS)


def logit_means(train: LogitStatistics, test: LogitStatistics) -> Dict[str, Dict[str, Dict[str, Optional[float]]]]:
    """``{"train" | "test": {true class g: {channel c: mean z_c over the voxels of g}}}``."""
    names = train.class_names
    return {side: {g: {c: stats.mean(g, c) for c in names} for g in names}
            for side, stats in (("train", train), ("test", test))}


def run_job(run: Run, settings: dict, device: str):
    """The training job of ``run``: the fold's cases with their roles and the pinned settings (InputError when
    the settings are not a valid job's)."""
    from ..jobspec import NATIVE, job_from_dataset, job_from_dict

    split = run.split
    spec = job_from_dataset(
        settings["dataset"], settings["classes"], split["train"], split["validation"], split["test"],
        technique=technique_from_name(run.method), output=str(run.folder / "train"), iterations=settings["iterations"],
        batch_size=settings["batch_size"], patch_size=settings["patch_size"],
        target_spacing=settings["target_spacing"] or NATIVE, network=settings["network"],
        normalization=BENCH_NORMALIZATION,
        learning_rate=settings["learning_rate"], optimizer=settings["optimizer"],
        lr_schedule=settings.get("lr_schedule", "poly"),
        validation_interval=settings["validation_interval"], seed=run.seed, device=device, logit_statistics=False)
    return job_from_dict(spec, run.folder)


def _model_iteration(model: Path) -> Optional[int]:
    from ..network import load_model_file
    try:
        state, _ = load_model_file(model)
        return int(state["iteration"])
    except Exception:  # informative only
        return None


def _evaluate(run: Run, job, model: Path, settings: dict, device: str, sink: EventSink, suffix: str = "") -> dict:
    """Segment the training and the test cases with ``model``: metrics and logit statistics (one block).

    When the model holds logit offsets fitted on the run's validation case (training stores them), the test
    cases are also segmented with them: the block's ``calibrated`` (``{"offsets", variant: {case: metrics}}``).
    """
    from ..inference import infer_cases, load_predictor

    folder = run.folder
    predictor = load_predictor(model, device)
    options = {"overlap": settings["overlap"], "sink": sink, "metadata": {"run": run.name}}
    train = infer_cases(predictor, job.cases_with_role("train"), folder / f"training_cases{suffix}", **options)
    test = infer_cases(predictor, job.cases_with_role("test"), folder / f"predictions{suffix}", **options)
    train.logits.save(folder / f"logits_train{suffix}.json")
    test.logits.save(folder / f"logits_test{suffix}.json")

    def per_variant(metrics: dict) -> dict:
        return {variant: {case: m[variant] for case, m in metrics.items()} for variant in VARIANTS}

    block = {"model": str(model), "model_iteration": _model_iteration(model), "postprocessing": test.postprocessing,
             **per_variant(test.metrics), "training_cases": per_variant(train.metrics),
             "logit_shift": logit_shift(train.logits, test.logits), "logit_means": logit_means(train.logits, test.logits)}
    offsets = (predictor.meta.get("calibration") or {}).get("offsets")
    if offsets:
        calibrated = infer_cases(predictor, job.cases_with_role("test"), folder / f"predictions{suffix}_calibrated",
                                 offsets=offsets, **options)
        block[CALIBRATED] = {"offsets": offsets, **per_variant(calibrated.metrics)}
    return block


def _last_block(run: Run, job, selected: dict, settings: dict, device: str, sink: EventSink) -> dict:
    """The block of the last checkpoint (end of training): the selected one's when they are the same model."""
    last = job.output / "model_last.pt"
    if selected["model_iteration"] == _model_iteration(last):
        keys = ("model_iteration", "postprocessing", *VARIANTS, "training_cases", "logit_shift", "logit_means",
                CALIBRATED)
        return {"model": str(last), "same_as_selected": True, **{k: selected[k] for k in keys if k in selected}}
    return {**_evaluate(run, job, last, settings, device, sink, LAST_SUFFIX), "same_as_selected": False}


def run_one(run: Run, settings: dict, device: str, sink: EventSink, out: Path) -> dict:
    """Train ``run`` (resuming a training left by a dead process), evaluate both checkpoints, write run.json.

    Raises :class:`Cancelled` when the training was cancelled. Returns the run.json record.
    """
    from ..training import Trainer

    split, folder = run.split, run.folder
    started = time.perf_counter()
    job = run_job(run, settings, device)
    resume = (job.output / "model_last.pt").exists()  # a run whose process died: continue its training
    if resume:
        sink.log(f"{run.name}: continuing the training left by an earlier process")
    result = Trainer(job, sink).run(resume=resume)
    sink.end_progress()
    sink.attach(out)  # back to the bench's own log
    if result.status != "finished":
        raise Cancelled(run.name)
    train_seconds = time.perf_counter() - started
    model = job.output / "model_best.pt"
    model = model if model.exists() else job.output / "model_last.pt"
    selected = _evaluate(run, job, model, settings, device, sink)
    record = {
        "format": BENCH_FORMAT, "version": BENCH_VERSION,
        "method": run.method, "fold": run.fold, "seed": run.seed,
        "train_cases": split["train"], "validation_cases": split["validation"], "test_cases": split["test"],
        **selected,
        "last": _last_block(run, job, selected, settings, device, sink),
        "seconds": {"train": round(train_seconds, 1), "total": round(time.perf_counter() - started, 1)},
        "finished": time.time(), "settings": settings, "device": device,
    }
    write_json(folder / RUN_FILE, record)
    return record
