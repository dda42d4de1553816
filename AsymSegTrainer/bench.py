"""``bench``: the paper's protocol (folds x seeds x methods) on an nnU-Net v2 raw folder.

``python -m AsymSegTrainer bench --dataset DIR --classes NAME=v1,v2 --train-size K --folds F
--seeds S --methods m1,m2 --iterations N --out OUT``

Splits (:func:`make_folds`, deterministic): the dataset's case ids are shuffled once with a
fixed split seed; fold f takes K consecutive cases of that order (rotating by K per fold, so
different folds train on different cases) as training cases, the next case as the validation
case (checkpoint choice only; it is never a test case of the fold) and every other case as
test cases. With fewer than K + 2 cases there is no validation case (the last model is used).
Seeds repeat every fold with another training seed (the split stays the same).

One run = (method, fold, seed), in ``OUT/runs/<method>/fold<f>_seed<s>/``:

- ``train/``: the training output (job.json, model files, log, events);
- ``training_cases/`` and ``predictions/``: ``infer`` outputs (label map, ``_logits.json``,
  ``_metrics.json``) of the training cases and of the test cases, made by the same model on
  the same (input) grid, so training-vs-unseen logit statistics compare voxel for voxel;
- ``logits_train.json`` / ``logits_test.json``: the merged logit statistics;
- the same with the suffix ``_last`` for the last checkpoint when validation chose an earlier
  one: every run is evaluated with the checkpoint chosen on its validation case (the headline
  ``raw`` / ``post`` numbers) and with the model at the end of training (``last``);
- ``run.json``: written atomically last: the run is finished when it exists (a ``run.json``
  without the ``last`` block, from an older version, gets it on the next invocation).

Resume and parallel safety: a run is claimed by creating ``claim.json`` with
``O_CREAT | O_EXCL``; runs that are finished are skipped, runs claimed by a live process are
left to it, a claim whose process has died is taken over (atomic rename) and its training is
resumed from ``model_last.pt``. ``OUT/bench.json`` pins the settings: a second invocation
with other settings is refused (methods, folds and seeds may grow). ``OUT/results.json``,
``OUT/report.md`` and ``OUT/logits_<method>.png`` are rebuilt from all ``run.json`` files at
the end of every invocation, under an exclusive lock, and written atomically.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .data import ClassMap, read_nnunet_dataset
from .errors import InputError
from .files import check_writable_folder, write_json, write_text
from .events import EventSink
from .logits import LogitStatistics, logit_shift
from .metrics import summarize
from .runtime import resolve_device, versions
from .techniques import PRESETS

BENCH_FORMAT = "asymseg-bench"
BENCH_VERSION = 1
SPLIT_SEED = 0
METRIC_KEYS = ("dsc", "sensitivity", "precision", "hd95")
VARIANTS = {"raw": "without post-processing", "post": "largest connected component per class"}
RUN_FILE, CLAIM_FILE = "run.json", "claim.json"
LAST_SUFFIX = "_last"  # outputs of the last checkpoint: predictions_last/, logits_test_last.json, ...

# Relative cost of one iteration, for the ETA only (benchmarks/engine_benchmark.py, 2-core CPU).
COST = {"adversarial": 2.7, "mixup": 2.0, "both": 3.6}

DEFAULTS = {"batch_size": 4, "patch_size": [48, 48, 48], "learning_rate": 1e-3, "overlap": 0.5}
"""Bench defaults where they differ from a job's: learning rate 1e-3 (the paper's BRATS rate;
short budgets need it)."""

QUICK = {"network": {"name": "unet", "channels": [4, 8], "strides": [2], "num_res_units": 1},
         "patch_size": [16, 16, 16], "batch_size": 2, "max_iterations": 5, "max_voxels_per_axis": 48}
"""``--quick``: a tiny network, small patches, at most 5 iterations per run and, unless
``--target-spacing`` is given, images resampled to at most ~48 voxels per axis (a smoke run)."""


# ---------------------------------------------------------------------------- splits

def make_folds(case_ids: Sequence[str], train_size: int, folds: int, seed: int = SPLIT_SEED) -> List[dict]:
    """``folds`` splits of ``case_ids``: ``{"fold", "train", "validation", "test"}`` (lists of ids).

    Deterministic from ``seed``. Fold f trains on K consecutive cases of a shuffled order
    starting at f*K (shifted by one per full turn, so folds differ while they can), validates
    on the next case, tests on all the others. A test case is never a training or validation
    case of its fold.
    """
    ids = sorted(dict.fromkeys(case_ids))
    n = len(ids)
    if isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1:
        raise InputError(f"--train-size must be a whole number >= 1; got {train_size!r}.", "E.g. --train-size 2.")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise InputError(f"--folds must be a whole number >= 1; got {folds!r}.", "E.g. --folds 3.")
    if n - train_size < 1:
        raise InputError(f"--train-size {train_size} leaves no test case: the dataset has {n} case(s).",
                         f"Use --train-size {max(1, n - 2)} or less (one case validates, the rest test).")
    n_val = 1 if n - train_size >= 2 else 0
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    result = []
    for f in range(folds):
        start = (f * train_size + (f * train_size) // n) % n
        chosen = [order[(start + i) % n] for i in range(train_size + n_val)]
        train, validation = chosen[:train_size], chosen[train_size:]
        test = [c for c in order if c not in chosen]
        result.append({"fold": f, "train": train, "validation": validation, "test": test})
    return result


# ---------------------------------------------------------------------------- settings

@dataclass
class Run:
    method: str
    fold: int
    seed: int
    split: dict
    folder: Path

    @property
    def name(self) -> str:
        return f"{self.method}/fold{self.fold}_seed{self.seed}"


def _methods(text: str) -> List[str]:
    methods = list(dict.fromkeys(m.strip() for m in (text or "").split(",") if m.strip()))
    unknown = [m for m in methods if m not in PRESETS]
    if not methods or unknown:
        raise InputError(f"--methods: {unknown or 'none given'} {'is not a' if len(unknown) == 1 else 'are not'} "
                         f"known preset name{'' if len(unknown) == 1 else 's'}.",
                         f"Use comma-separated presets from: {', '.join(PRESETS)}.")
    return methods


def _opt(args, name, default=None):
    value = getattr(args, name, None)
    return default if value is None else value


def bench_settings(args) -> dict:
    """The settings that every run of an OUT folder must share (pinned in OUT/bench.json)."""
    quick = bool(getattr(args, "quick", False))
    iterations = int(args.iterations)
    if iterations < 1:
        raise InputError(f"--iterations must be >= 1; got {iterations}.", "E.g. --iterations 500.")
    if quick:
        iterations = min(iterations, QUICK["max_iterations"])
    patch = _opt(args, "patch_size", QUICK["patch_size"] if quick else DEFAULTS["patch_size"])
    spacing = _opt(args, "target_spacing")
    if quick and spacing is None:
        spacing = _quick_spacing(Path(args.dataset))
    network = _opt(args, "network", QUICK["network"] if quick else None)
    if isinstance(network, str):
        network = json.loads(network)
    from .network import network_config
    class_map = ClassMap.parse(list(args.classes))
    return {
        "dataset": str(Path(args.dataset).expanduser().resolve()),
        "classes": list(args.classes),
        "class_names": class_map.names,
        "train_size": int(args.train_size),
        "split_seed": SPLIT_SEED,
        "iterations": iterations,
        "quick": quick,
        "patch_size": [int(p) for p in patch],
        "target_spacing": [float(s) for s in spacing] if spacing else None,
        "batch_size": int(_opt(args, "batch_size", QUICK["batch_size"] if quick else DEFAULTS["batch_size"])),
        "network": network_config(network),
        "learning_rate": float(_opt(args, "learning_rate", DEFAULTS["learning_rate"])),
        "optimizer": _opt(args, "optimizer", "adam"),
        "validation_interval": max(1, iterations // 5),
        "overlap": float(_opt(args, "overlap", DEFAULTS["overlap"])),
    }


def _quick_spacing(dataset: Path) -> Optional[List[float]]:
    """--quick without --target-spacing: an isotropic spacing giving at most ~48 voxels per axis
    (None when the images are that small already), so a smoke run on full-size scans stays quick."""
    import SimpleITK as sitk

    _, specs = read_nnunet_dataset(dataset)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(specs[0].images[0]))
    reader.ReadImageInformation()
    extent = [n * s for n, s in zip(reader.GetSize(), reader.GetSpacing())]
    spacing = round(max(extent) / QUICK["max_voxels_per_axis"], 1)
    return [spacing] * 3 if spacing > max(reader.GetSpacing()) else None


def command_line(args) -> str:
    """The bench command as a user would type it (reconstructed from the parsed arguments)."""
    parts = ["python", "-m", "AsymSegTrainer", "bench", "--dataset", str(args.dataset), "--classes", *args.classes,
             "--train-size", str(args.train_size), "--folds", str(args.folds), "--seeds", str(args.seeds),
             "--methods", args.methods, "--iterations", str(args.iterations), "--out", str(args.out)]
    if getattr(args, "quick", False):
        parts.append("--quick")
    for flag, name in (("--target-spacing", "target_spacing"), ("--patch-size", "patch_size")):
        if getattr(args, name, None):
            parts += [flag, *(f"{v:g}" if isinstance(v, float) else str(v) for v in getattr(args, name))]
    for flag, name in (("--batch-size", "batch_size"), ("--device", "device")):
        value = getattr(args, name, None)
        if value is not None and not (name == "device" and value == "auto"):
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def _pin_settings(out: Path, settings: dict) -> None:
    """Create OUT/bench.json atomically (link of a temporary file), or check it against ``settings``."""
    path = out / "bench.json"
    record = {"format": BENCH_FORMAT, "version": BENCH_VERSION, "settings": settings, "created": time.time()}
    if not path.exists():
        tmp = out / f".bench.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    try:
        pinned = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is unreadable ({exc}).", "Choose a new --out folder, or delete that file.") from exc
    if pinned.get("format") != BENCH_FORMAT:
        raise InputError(f"{out} holds a bench.json that is not a benchmark's.", "Choose a new --out folder.")
    differ = sorted(k for k in set(settings) | set(pinned["settings"]) if settings.get(k) != pinned["settings"].get(k))
    if differ:
        detail = "; ".join(f"{k}: {pinned['settings'].get(k)!r} there, {settings.get(k)!r} now" for k in differ)
        raise InputError(f"{out} holds a benchmark with other settings ({detail}); its runs would not compare.",
                         "Use the same settings to resume or extend it (more methods, folds or seeds are fine), "
                         "or choose a new --out folder.")


# ---------------------------------------------------------------------------- claims

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim(folder: Path) -> bool:
    """Claim a run folder (``claim.json`` created exclusively); False when a live process holds it.

    A claim left by a process that has died (same host, pid gone) is taken over: it is renamed
    away atomically, so of several processes only one wins it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CLAIM_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue
            except (OSError, ValueError):
                other = None
            if other is None:  # being written right now (or garbage older than a minute)
                try:
                    if time.time() - path.stat().st_mtime < 60:
                        return False
                except FileNotFoundError:
                    continue
            elif other.get("host") != me["host"] or _pid_alive(int(other.get("pid", -1))):
                return False
            stale = folder / f".stale-claim.{os.getpid()}"
            try:
                os.rename(path, stale)
            except FileNotFoundError:
                return False
            stale.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        return True
    return False


def _finished(run: Run) -> bool:
    """run.json exists and holds the last checkpoint's block (runs of older versions lack it)."""
    try:
        return "last" in _read_json(run.folder / RUN_FILE)
    except FileNotFoundError:
        return False
    except (OSError, ValueError):  # unreadable: treat as not finished; it will be redone
        return False


def _release(folder: Path) -> None:
    (folder / CLAIM_FILE).unlink(missing_ok=True)


# ---------------------------------------------------------------------------- one run

def _read_json(path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _job(run: Run, settings: dict, device: str):
    from .jobspec import job_from_dataset, job_from_dict

    split = run.split
    spec = job_from_dataset(
        settings["dataset"], settings["classes"], split["train"], split["validation"], split["test"],
        technique=run.method, output=str(run.folder / "train"), iterations=settings["iterations"],
        batch_size=settings["batch_size"], patch_size=settings["patch_size"],
        target_spacing=settings["target_spacing"], network=settings["network"],
        learning_rate=settings["learning_rate"], optimizer=settings["optimizer"],
        validation_interval=settings["validation_interval"], seed=run.seed, device=device, logit_statistics=False)
    return job_from_dict(spec, run.folder)


def _evaluate(run: Run, job, model: Path, settings: dict, device: str, sink: EventSink, suffix: str = "") -> dict:
    """Segment the training and the test cases with ``model``: metrics and logit statistics (one block)."""
    from .inference import infer_specs, load_predictor, merge_logit_statistics

    folder, split = run.folder, run.split
    predictor = load_predictor(model, device)
    overlap = settings["overlap"]
    train_out = infer_specs(predictor, job.cases_with_role("train"), folder / f"training_cases{suffix}",
                            overlap=overlap, sink=sink)
    test_out = infer_specs(predictor, job.cases_with_role("test"), folder / f"predictions{suffix}", overlap=overlap,
                           sink=sink)
    train_stats = merge_logit_statistics([o["logits"] for o in train_out.values()],
                                         {"grouped_by": "reference", "cases": split["train"], "run": run.name})
    test_stats = merge_logit_statistics([o["logits"] for o in test_out.values()],
                                        {"grouped_by": "reference", "cases": split["test"], "run": run.name})
    train_stats.save(folder / f"logits_train{suffix}.json")
    test_stats.save(folder / f"logits_test{suffix}.json")

    def per_variant(outputs):
        records = {case: _read_json(files["metrics"]) for case, files in outputs.items()}
        return {variant: {case: r[variant] for case, r in records.items()} for variant in VARIANTS}

    test_metrics = per_variant(test_out)
    names = predictor.class_names
    return {"model": str(model), "model_iteration": _model_iteration(model),
            "raw": test_metrics["raw"], "post": test_metrics["post"], "training_cases": per_variant(train_out),
            "logit_shift": logit_shift(train_stats, test_stats),
            "logit_means": {side: {g: {c: stats.mean(g, c) for c in names} for g in names}
                            for side, stats in (("train", train_stats), ("test", test_stats))}}


def _last_block(run: Run, job, selected: dict, settings: dict, device: str, sink: EventSink) -> dict:
    """The block of the last checkpoint (end of training): the selected one's when they are the same model."""
    last = job.output / "model_last.pt"
    if selected["model_iteration"] == _model_iteration(last):
        keys = ("model_iteration", "raw", "post", "training_cases", "logit_shift", "logit_means")
        return {"model": str(last), "same_as_selected": True, **{k: selected[k] for k in keys}}
    return {**_evaluate(run, job, last, settings, device, sink, LAST_SUFFIX), "same_as_selected": False}


def _run_one(run: Run, settings: dict, device: str, sink: EventSink, out: Path) -> dict:
    from .training import Trainer

    split, folder = run.split, run.folder
    started = time.perf_counter()
    job = _job(run, settings, device)
    resume = (job.output / "model_last.pt").exists()  # a run whose process died: continue its training
    if resume:
        sink.log(f"{run.name}: continuing the training left by an earlier process")
    result = Trainer(job, sink).run(resume=resume)
    sink.end_progress()
    sink.attach(out)  # back to the bench's own log
    if result.status != "finished":
        raise _Cancelled(run.name)
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


def _add_last(run: Run, settings: dict, device: str, sink: EventSink) -> dict:
    """Complete a run finished by an older AsymSeg (no ``last`` block): evaluate its last checkpoint."""
    record = _read_json(run.folder / RUN_FILE)
    started = time.perf_counter()
    job = _job(run, settings, device)
    record["last"] = _last_block(run, job, record, settings, device, sink)
    record["seconds"]["last"] = round(time.perf_counter() - started, 1)
    record["seconds"]["total"] = round(record["seconds"]["total"] + record["seconds"]["last"], 1)
    write_json(run.folder / RUN_FILE, record)
    return record


class _Cancelled(Exception):
    """Training was cancelled (SIGTERM / SIGINT / STOP file): the bench stops after aggregating."""


def _model_iteration(model: Path) -> Optional[int]:
    from .network import load_model_file
    try:
        state, _ = load_model_file(model)
        return int(state["iteration"])
    except Exception:  # informative only
        return None


# ---------------------------------------------------------------------------- aggregation

def _cost(method: str) -> float:
    t = PRESETS[method]
    if t.get("adversarial") and t.get("mixup"):
        return COST["both"]
    return COST["adversarial"] if t.get("adversarial") else COST["mixup"] if t.get("mixup") else 1.0


def _pooled_summary(runs: List[dict], variant: str, classes: Sequence[str]) -> Dict[str, dict]:
    """metric -> summarize(values over runs x test cases x the given foreground classes)."""
    return {key: _plain(summarize(run[variant][case][name][key] for run in runs for case in run[variant]
                                  for name in classes if name in run[variant][case]))
            for key in METRIC_KEYS}


def _plain(s: dict) -> dict:
    return {"mean": s["mean"], "std": s["std"], "n": s["n"], "n_undefined": s["n_undefined"]}


def aggregate(out: Path, settings: dict, methods: Sequence[str], runs: Sequence[Run], command: str,
              wall_seconds: Optional[float] = None) -> Dict[str, str]:
    """Rebuild OUT/results.json, OUT/report.md and OUT/logits_<method>[_last].png from the finished runs."""
    out = Path(out)
    lock = open(out / ".aggregate.lock", "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        records, missing = [], []
        for run in runs:
            path = run.folder / RUN_FILE
            if path.exists():
                records.append(_read_json(path))
            else:
                missing.append(run.name)
        names = settings["class_names"]
        blocks = {"": lambda r: r, LAST_SUFFIX: lambda r: r.get("last")}
        summary, figures = {"": {}, LAST_SUFFIX: {}}, {"": {}, LAST_SUFFIX: {}}
        shift, means, per_class = {"": {}, LAST_SUFFIX: {}}, {"": {}, LAST_SUFFIX: {}}, {}
        for method in methods:
            mine = [r for r in records if r["method"] == method]
            for suffix, block in blocks.items():
                chosen = [(r, block(r)) for r in mine if block(r) is not None]
                if not chosen:
                    continue
                result = _checkpoint_summary(out, method, chosen, names, settings, suffix)
                summary[suffix][method], shift[suffix][method], means[suffix][method], figures[suffix][method] = result
                if not suffix:
                    per_class[method] = {name: {v: _pooled_summary([b for _, b in chosen], v, [name])
                                                for v in VARIANTS} for name in names[1:]}
        missing += [f"{r['method']}/fold{r['fold']}_seed{r['seed']} (last checkpoint)" for r in records
                    if "last" not in r]
        results = {
            "format": BENCH_FORMAT, "version": BENCH_VERSION, "command": command, "settings": settings,
            "methods": list(methods), "complete": not missing, "missing_runs": missing,
            "folds": _folds_of(runs), "hardware": hardware(), "versions": versions(),
            "seconds": {"runs_total": round(sum(r["seconds"]["total"] for r in records), 1),
                        "this_invocation": None if wall_seconds is None else round(wall_seconds, 1),
                        "span": _span(out, records)},
            "runs": [_run_entry(r) for r in records],
            "summary": summary[""], "summary_per_class": per_class, "logit_shift": shift[""],
            "logit_means": means[""], "figures": figures[""],
            "summary_last": summary[LAST_SUFFIX], "logit_shift_last": shift[LAST_SUFFIX],
            "logit_means_last": means[LAST_SUFFIX], "figures_last": figures[LAST_SUFFIX],
        }
        outputs = {"results": str(write_json(out / "results.json", results))}
        outputs["report"] = str(write_text(out / "report.md", report_markdown(results)))
        for suffix in blocks:
            outputs.update({f"logits_{m}{suffix}": str(out / f) for m, f in figures[suffix].items()})
        return outputs
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _checkpoint_summary(out: Path, method: str, chosen: List[tuple], names: List[str], settings: dict,
                        suffix: str) -> tuple:
    """(summary, dz, logit means, figure name) of one method's runs for one checkpoint (selected or last).

    ``chosen``: (run record, block) pairs; a block holds raw/post/training_cases/model_iteration.
    Logit statistics of all runs' training cases are merged against all runs' test cases.
    """
    from .plotting import plot_logit_histograms

    foreground = names[1:]
    blocks = [b for _, b in chosen]
    summary = {v: _pooled_summary(blocks, v, foreground) for v in VARIANTS}
    summary["runs"] = len(blocks)
    summary["model_iterations"] = [b.get("model_iteration") for b in blocks]
    summary["training_cases"] = {v: _pooled_summary([{v: b["training_cases"][v]} for b in blocks], v, foreground)
                                 for v in VARIANTS}
    train_stats = test_stats = None
    for r, b in chosen:
        folder = out / "runs" / r["method"] / f"fold{r['fold']}_seed{r['seed']}"
        own = "" if b.get("same_as_selected") else suffix
        a = LogitStatistics.load(folder / f"logits_train{own}.json")
        t = LogitStatistics.load(folder / f"logits_test{own}.json")
        train_stats = a if train_stats is None else train_stats.merge(a)
        test_stats = t if test_stats is None else test_stats.merge(t)
    means = {side: {g: {c: st.mean(g, c) for c in names} for g in names}
             for side, st in (("train", train_stats), ("test", test_stats))}
    n_train = len({c for r, _ in chosen for c in r["train_cases"]})
    n_test = len({c for r, _ in chosen for c in r["test_cases"]})
    which = (f"last checkpoint (iteration {settings['iterations']})" if suffix
             else "checkpoint chosen on the validation case")
    png = plot_logit_histograms(
        train_stats, test_stats, out / f"logits_{method}{suffix}.png",
        title=f"{method}, {which}: training vs unseen cases ({len(blocks)} run(s))",
        train_label=f"training cases ({n_train} distinct)", unseen_label=f"unseen cases ({n_test} distinct)")
    return summary, logit_shift(train_stats, test_stats), means, png.name


def _run_entry(r: dict) -> dict:
    keys = ("method", "fold", "seed", "train_cases", "validation_cases", "test_cases", "raw", "post", "logit_shift",
            "logit_means", "training_cases", "model_iteration", "last", "seconds")
    return {k: r.get(k) for k in keys}


def _folds_of(runs: Sequence[Run]) -> List[dict]:
    seen = {}
    for run in runs:
        seen.setdefault(run.fold, run.split)
    return [seen[f] for f in sorted(seen)]


def _span(out: Path, records: List[dict]) -> Optional[float]:
    try:
        created = _read_json(out / "bench.json")["created"]
    except (OSError, ValueError, KeyError):
        return None
    return round(max(r["finished"] for r in records) - created, 1) if records else None


def hardware() -> dict:
    """The machine, for the report: CPU, cores, memory, GPU, torch threads."""
    import torch
    info = {"machine": platform.machine(), "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


# ---------------------------------------------------------------------------- report

def _pct(s: Optional[dict]) -> str:
    if not s or s["mean"] is None:
        return "–"
    text = f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}"
    return text + (f" ({s['n']}/{s['n'] + s['n_undefined']})" if s.get("n_undefined") else "")


def _mm(s: Optional[dict]) -> str:
    if not s or s["mean"] is None:
        return "–"
    text = f"{s['mean']:.1f} ± {s['std']:.1f}"
    return text + (f" ({s['n']}/{s['n'] + s['n_undefined']})" if s.get("n_undefined") else "")


def _signed(value: Optional[float], scale: float = 1.0, digits: int = 1) -> str:
    return "–" if value is None else f"{scale * value:+.{digits}f}"


def table_ii(results: dict, variant: str, key: str = "summary") -> str:
    """Markdown in the layout of the paper's Table II: one row per method, mean ± std over runs x test cases.

    ``key``: ``summary`` (checkpoint chosen on the validation case) or ``summary_last`` (end of training).
    """
    summary = results[key]
    base = summary.get("vanilla", {}).get(variant)
    lines = ["| Method | runs | DSC (%) | SEN (%) | PRC (%) | HD95 (mm) | ΔDSC | ΔSEN | ΔPRC |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method in results["methods"]:
        if method not in summary:
            lines.append(f"| {method} | 0 | – | – | – | – | – | – | – |")
            continue
        s = summary[method][variant]
        if method == "vanilla":
            deltas = ["(reference)", "", ""]
        else:
            deltas = ["–" if base is None or s[k]["mean"] is None or base[k]["mean"] is None
                      else _signed(s[k]["mean"] - base[k]["mean"], 100) for k in ("dsc", "sensitivity", "precision")]
        lines.append(f"| {method} | {summary[method]['runs']} | {_pct(s['dsc'])} | {_pct(s['sensitivity'])} | "
                     f"{_pct(s['precision'])} | {_mm(s['hd95'])} | " + " | ".join(deltas) + " |")
    return "\n".join(lines) + "\n"


def logit_table(results: dict, suffix: str = "") -> str:
    """Per method and class g: mean of z_g on voxels of g, training vs unseen, their difference and dz.

    ``suffix``: "" (chosen checkpoint) or "_last". dz = |mean unseen| - |mean train| (METHOD.md §1)
    understates a mean that crosses zero, hence the signed difference beside it.
    """
    names = results["settings"]["class_names"]
    shift, means = results["logit_shift" + suffix], results["logit_means" + suffix]
    head = "| Method | " + " | ".join(f"z[{g}] on {g}: train | unseen | unseen − train | dz[{g}]" for g in names) + " |"
    lines = [head, "|---|" + "---:|" * (4 * len(names))]
    for method in results["methods"]:
        if method not in shift:
            continue
        cells = []
        for g in names:
            m = means[method]
            before, after = m["train"][g][g], m["test"][g][g]
            cells += [_signed(before, digits=2), _signed(after, digits=2),
                      _signed(None if before is None or after is None else after - before, digits=2),
                      _signed(shift[method][g][g], digits=2)]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def per_fold_table(results: dict, variant: str = "post") -> str:
    """DSC / SEN per method and fold (mean over seeds x test cases): how much the folds disagree."""
    folds = [f["fold"] for f in results["folds"]]
    foreground = results["settings"]["class_names"][1:]
    lines = ["| Method | " + " | ".join(f"fold {f} DSC / SEN" for f in folds) + " |", "|---|" + "---:|" * len(folds)]
    for method in results["methods"]:
        cells = []
        for f in folds:
            runs = [r for r in results["runs"] if r["method"] == method and r["fold"] == f]
            if not runs:
                cells.append("–")
                continue
            s = _pooled_summary(runs, variant, foreground)
            cells.append(f"{_pct1(s['dsc'])} / {_pct1(s['sensitivity'])}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_table(results: dict, variant: str = "post", last: bool = False) -> str:
    """Differences to vanilla paired by (fold, seed, test case): mean ± std and how often the method is higher.

    Cases differ far more from each other than methods do, so the pairs say more than the
    difference of two means with their large standard deviations.
    """
    foreground = results["settings"]["class_names"][1:]
    block = (lambda r: r.get("last")) if last else (lambda r: r)
    base = {(r["fold"], r["seed"]): block(r) for r in results["runs"] if r["method"] == "vanilla" and block(r)}
    if not base:
        return "(no vanilla runs to pair with)\n"
    keys = ("dsc", "sensitivity", "precision")
    lines = ["| Method | pairs | ΔDSC | ΔSEN | ΔPRC | DSC higher | SEN higher |", "|---|---:|---:|---:|---:|---:|---:|"]
    for method in results["methods"]:
        if method == "vanilla":
            continue
        diffs = {k: [] for k in keys}
        for r in results["runs"]:
            b = base.get((r["fold"], r["seed"]))
            if r["method"] != method or b is None or block(r) is None:
                continue
            for case, per_class in block(r)[variant].items():
                for name in foreground:
                    for k in keys:
                        mine, theirs = per_class[name][k], b[variant][case][name][k]
                        if mine is not None and theirs is not None:
                            diffs[k].append(mine - theirs)
        if not diffs["dsc"]:
            continue
        cells = []
        for k in keys:
            st = summarize(diffs[k])
            cells.append("–" if st["mean"] is None else f"{100 * st['mean']:+.1f} ± {100 * st['std']:.1f}")
        wins = [f"{sum(d > 0 for d in diffs[k])}/{len(diffs[k])}" for k in ("dsc", "sensitivity")]
        lines.append(f"| {method} | {len(diffs['dsc'])} | " + " | ".join(cells + wins) + " |")
    return "\n".join(lines) + "\n"


def _pct1(s: dict) -> str:
    return "–" if s["mean"] is None else f"{100 * s['mean']:.1f}"


def training_table(results: dict) -> str:
    """DSC / SEN on the training cases vs the unseen cases (post-processed), for both checkpoints."""
    lines = ["| Method | checkpoint (iterations) | training DSC | unseen DSC | training SEN | unseen SEN |",
             "|---|---|---:|---:|---:|---:|"]
    for method in results["methods"]:
        for key, label in (("summary", "chosen"), ("summary_last", "last")):
            s = results[key].get(method)
            if not s:
                continue
            t, u = s["training_cases"]["post"], s["post"]
            its = ", ".join(str(i) for i in s["model_iterations"])
            lines.append(f"| {method} | {label} ({its}) | {_pct(t['dsc'])} | {_pct(u['dsc'])} | "
                         f"{_pct(t['sensitivity'])} | {_pct(u['sensitivity'])} |")
    return "\n".join(lines) + "\n"


def report_markdown(results: dict) -> str:
    s = results["settings"]
    hw = results["hardware"]
    foreground = ", ".join(s["class_names"][1:])
    secs = results["seconds"]
    folds = "\n".join(f"| {f['fold']} | {', '.join(f['train'])} | {', '.join(f['validation']) or '–'} | "
                      f"{', '.join(f['test'])} |" for f in results["folds"])
    n_runs = len(results["runs"])
    status = "complete" if results["complete"] else \
        f"**incomplete**: {len(results['missing_runs'])} run(s) missing ({', '.join(results['missing_runs'][:8])}" \
        + (" ..." if len(results["missing_runs"]) > 8 else "") + ")"
    figures = "\n".join(f"![{m}]({f}) ![{m}, last checkpoint]({results['figures_last'].get(m, '')})"
                        if m in results["figures_last"] else f"![{m}]({f})" for m, f in results["figures"].items())
    return f"""# AsymSeg benchmark: {Path(s['dataset']).name}

Protocol of Li, Kamnitsas, Glocker (IEEE TMI 2020), METHOD.md §5/§6: {s['train_size']} training case(s)
per fold, a validation case for checkpoint choice (never a test case of its fold), every other case
unseen; class(es) `{foreground}`. Mean ± std over runs × unseen cases; percentages. {n_runs} run(s),
{status}.

Two checkpoints of every run are evaluated: the one **chosen on the validation case** (best
validation DSC, checked every {s['validation_interval']} iterations) and the **last** one (end of
training, {s['iterations']} iterations, no choice at all).

## Unseen cases, post-processed (largest connected component; the paper's headline numbers)

Checkpoint chosen on the validation case:

{table_ii(results, 'post')}
Last checkpoint:

{table_ii(results, 'post', 'summary_last')}
## Unseen cases, raw (without post-processing)

Checkpoint chosen on the validation case:

{table_ii(results, 'raw')}
Last checkpoint:

{table_ii(results, 'raw', 'summary_last')}
Δ: difference of the means to `vanilla` in percentage points. HD95 is undefined for an empty
prediction; a count (n/N) says when a mean covers fewer than all cases.

## Paired with vanilla (same fold, seed and unseen case; post-processed)

Mean ± std of the per-case differences to `vanilla` (percentage points) and how many of the
pairs the method scores higher on.

Checkpoint chosen on the validation case:

{paired_table(results)}
Last checkpoint:

{paired_table(results, last=True)}
## Per fold (chosen checkpoint, post-processed, mean over seeds × unseen cases)

{per_fold_table(results)}
## Training cases vs unseen cases (post-processed)

{training_table(results)}
## Logit shift (METHOD.md §1)

Mean logit z[g] over the voxels of true class g, pooled over all runs' training cases and all
runs' unseen cases (inside the ROI mask when the dataset has one), their difference, and
dz = |mean unseen| − |mean train| (negative: the logit moved towards z = 0 on unseen cases; a
mean that crosses zero makes dz small although the logit moved a lot: read the difference too).
With softmax the decision is the largest logit, so z = 0 is the boundary only approximately.

Checkpoint chosen on the validation case:

{logit_table(results)}
Last checkpoint:

{logit_table(results, '_last')}
{figures}

## Settings

| setting | value |
|---|---|
| command | `{results['command']}` |
| classes | {', '.join(s['classes'])} |
| target spacing (mm) | {s['target_spacing'] or 'native'} |
| patch / batch | {s['patch_size']} / {s['batch_size']} (50% of patches centred on the rare class) |
| network | {json.dumps(s['network'])} |
| optimiser | {s['optimizer']}, learning rate {s['learning_rate']} (polynomial decay) |
| iterations | {s['iterations']} per run, validation every {s['validation_interval']} (best checkpoint) |
| inference | sliding window, overlap {s['overlap']}, logits resampled linearly to the input grid |
| quick | {s['quick']} |

| fold | training | validation | unseen (test) |
|---|---|---|---|
{folds}

## Hardware and time

{hw.get('cpu_model') or hw.get('processor') or hw['machine']}, {hw['cpu_count']} CPU core(s),
{hw.get('memory_gib', '?')} GiB, GPU: {hw['cuda'] or 'none'}; torch threads per process
{hw['torch_threads']} (OMP_NUM_THREADS={hw['OMP_NUM_THREADS']}). Sum of run times
{_duration(secs['runs_total'])}; first start to last finish {_duration(secs['span'])}; this invocation
{_duration(secs['this_invocation'])}.
"""


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 \
        else f"{seconds // 60}m{seconds % 60:02d}s"


# ---------------------------------------------------------------------------- entry point

def plan_runs(out: Path, methods: Sequence[str], folds: List[dict], seeds: int) -> List[Run]:
    """Runs ordered seed, fold, method: a partial benchmark has every method on the folds it covers."""
    return [Run(m, f["fold"], s, f, out / "runs" / m / f"fold{f['fold']}_seed{s}")
            for s in range(seeds) for f in folds for m in methods]


def run_bench(args, sink: Optional[EventSink] = None) -> dict:
    """``python -m AsymSegTrainer bench ...``: ``{"status": finished | cancelled, "outputs": name -> path}``."""
    sink = sink or EventSink()
    started = time.perf_counter()
    out = Path(args.out).expanduser().absolute()
    methods = _methods(args.methods)
    seeds = int(args.seeds)
    if seeds < 1:
        raise InputError(f"--seeds must be >= 1; got {seeds}.", "E.g. --seeds 1.")
    settings = bench_settings(args)
    device = str(getattr(args, "device", None) or "auto")
    resolve_device(device)
    _, specs = read_nnunet_dataset(Path(settings["dataset"]))
    folds = make_folds([c.id for c in specs], settings["train_size"], int(args.folds), settings["split_seed"])
    check_writable_folder(out)
    _pin_settings(out, settings)
    sink.attach(out)
    command = command_line(args)
    runs = plan_runs(out, methods, folds, seeds)
    sink.emit("start", command="bench", config={**settings, "methods": methods, "folds": folds, "seeds": seeds,
                                                "command": command},
              device=str(resolve_device(device)), versions=versions(), output=str(out))
    if settings["quick"]:
        sink.log(f"--quick: {settings['iterations']} iteration(s) per run, tiny network, patch "
                 f"{settings['patch_size']}: a smoke test, not a result.")
    done_cost, spent, cancelled = 0.0, 0.0, False
    for i, run in enumerate(runs, 1):
        if _finished(run):
            sink.log(f"[{i}/{len(runs)}] {run.name}: finished earlier, skipped")
            continue
        if not _claim(run.folder):
            sink.log(f"[{i}/{len(runs)}] {run.name}: claimed by another live process, skipped")
            continue
        if _finished(run):  # finished between our check and our claim
            _release(run.folder)
            continue
        if (run.folder / RUN_FILE).exists():  # finished by an older AsymSeg: only the last checkpoint is missing
            sink.log(f"[{i}/{len(runs)}] {run.name}: evaluating its last checkpoint (missing)")
            try:
                _add_last(run, settings, device, sink)
            finally:
                _release(run.folder)
                sink.attach(out)
            continue
        split = run.split
        sink.log(f"[{i}/{len(runs)}] {run.name}: start (train {', '.join(split['train'])}; "
                 f"validation {', '.join(split['validation']) or '-'}; test {', '.join(split['test'])})")
        sink.emit("progress", phase="bench", iteration=i, total=len(runs), case=run.name, method=run.method,
                  fold=run.fold, seed=run.seed, state="start", elapsed_seconds=round(time.perf_counter() - started, 1),
                  eta_seconds=_eta(spent, done_cost, runs[i - 1:]))
        t0 = time.perf_counter()
        try:
            record = _run_one(run, settings, device, sink, out)
        except _Cancelled:
            sink.warning(f"{run.name} was cancelled; its training can be continued.",
                         "Run the same command again: finished runs are skipped, this one resumes.")
            cancelled = True
            break
        finally:
            _release(run.folder)
            sink.attach(out)
        spent += time.perf_counter() - t0
        done_cost += _cost(run.method)
        eta = _eta(spent, done_cost, runs[i:])
        post = _pooled_summary([record], "post", settings["class_names"][1:])
        sink.log(f"[{i}/{len(runs)}] {run.name}: done in {_duration(time.perf_counter() - t0)}; unseen DSC "
                 f"{_pct1(post['dsc'])}% SEN {_pct1(post['sensitivity'])}% (post-processed); elapsed "
                 f"{_duration(time.perf_counter() - started)}, ETA {_duration(eta)}")
        sink.emit("progress", phase="bench", iteration=i, total=len(runs), case=run.name, method=run.method,
                  fold=run.fold, seed=run.seed, state="done", elapsed_seconds=round(time.perf_counter() - started, 1),
                  eta_seconds=eta)
    outputs = aggregate(out, settings, methods, runs, command, time.perf_counter() - started)
    results = _read_json(outputs["results"])
    if not results["complete"] and not cancelled:
        sink.warning(f"{len(results['missing_runs'])} run(s) are not finished (another process holds them, or it "
                     f"died): the results are partial.", "Run the same command again to finish them.")
    sink.log(f"Benchmark report: {outputs['report']}")
    return {"status": "cancelled" if cancelled else "finished", "outputs": outputs}


def _eta(spent: float, done_cost: float, remaining: Sequence[Run]) -> Optional[float]:
    """Seconds left: the cost of the runs not finished yet, at this process's pace, shared by the live workers.

    Every other process holding a claim on one of ``remaining`` counts as one more worker.
    """
    if done_cost <= 0:
        return None
    todo = [r for r in remaining if not _finished(r)]
    workers = 1 + sum(1 for r in todo if (r.folder / CLAIM_FILE).exists() and _claim_owner(r.folder) != os.getpid())
    return round(sum(_cost(r.method) for r in todo) * spent / done_cost / workers, 1)


def _claim_owner(folder: Path) -> Optional[int]:
    try:
        return int(json.loads((folder / CLAIM_FILE).read_text(encoding="utf-8"))["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
