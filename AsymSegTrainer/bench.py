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
- ``run.json``: written atomically last: the run is finished when it exists.

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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .data import ClassMap, read_nnunet_dataset
from .errors import InputError
from .evaluation import check_writable_folder, write_json, write_text
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

# Relative cost of one iteration (forward + backward passes), for the ETA only.
COST = {"adversarial": 2.5, "mixup": 1.8, "both": 3.5}

DEFAULTS = {"batch_size": 4, "patch_size": [48, 48, 48], "learning_rate": 1e-3, "overlap": 0.5}
"""Bench defaults where they differ from a job's: learning rate 1e-3 (the paper's BRATS rate;
short budgets need it)."""

QUICK = {"network": {"name": "unet", "channels": [4, 8], "strides": [2], "num_res_units": 1},
         "patch_size": [16, 16, 16], "batch_size": 2, "max_iterations": 5}
"""``--quick``: a tiny network, small patches, at most 5 iterations per run (a smoke run)."""


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


def _release(folder: Path) -> None:
    (folder / CLAIM_FILE).unlink(missing_ok=True)


# ---------------------------------------------------------------------------- one run

def _read_json(path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _run_one(run: Run, settings: dict, device: str, sink: EventSink, out: Path) -> dict:
    from .inference import infer_specs, load_predictor, merge_logit_statistics
    from .jobspec import job_from_dataset, job_from_dict
    from .training import Trainer

    split, folder = run.split, run.folder
    started = time.perf_counter()
    spec = job_from_dataset(
        settings["dataset"], settings["classes"], split["train"], split["validation"], split["test"],
        technique=run.method, output=str(folder / "train"), iterations=settings["iterations"],
        batch_size=settings["batch_size"], patch_size=settings["patch_size"],
        target_spacing=settings["target_spacing"], network=settings["network"],
        learning_rate=settings["learning_rate"], optimizer=settings["optimizer"],
        validation_interval=settings["validation_interval"], seed=run.seed, device=device, logit_statistics=False)
    job = job_from_dict(spec, folder)
    resume = (job.output / "model_last.pt").exists()  # a run whose process died: continue its training
    if resume:
        sink.log(f"{run.name}: continuing the training left by an earlier process")
    result = Trainer(job, sink).run(resume=resume)
    _end_progress_bar(sink)
    sink.attach(out)  # back to the bench's own log
    if result.status != "finished":
        raise _Cancelled(run.name)
    train_seconds = time.perf_counter() - started
    model = job.output / "model_best.pt"
    model = model if model.exists() else job.output / "model_last.pt"
    predictor = load_predictor(model, device)
    overlap = settings["overlap"]
    train_out = infer_specs(predictor, job.cases_with_role("train"), folder / "training_cases", overlap=overlap,
                            sink=sink)
    test_out = infer_specs(predictor, job.cases_with_role("test"), folder / "predictions", overlap=overlap, sink=sink)
    train_stats = merge_logit_statistics([o["logits"] for o in train_out.values()],
                                         {"grouped_by": "reference", "cases": split["train"], "run": run.name})
    test_stats = merge_logit_statistics([o["logits"] for o in test_out.values()],
                                        {"grouped_by": "reference", "cases": split["test"], "run": run.name})
    train_stats.save(folder / "logits_train.json")
    test_stats.save(folder / "logits_test.json")

    def per_variant(outputs):
        records = {case: _read_json(files["metrics"]) for case, files in outputs.items()}
        return {variant: {case: r[variant] for case, r in records.items()} for variant in VARIANTS}

    test_metrics, train_metrics = per_variant(test_out), per_variant(train_out)
    names = predictor.class_names
    record = {
        "format": BENCH_FORMAT, "version": BENCH_VERSION,
        "method": run.method, "fold": run.fold, "seed": run.seed,
        "train_cases": split["train"], "validation_cases": split["validation"], "test_cases": split["test"],
        "raw": test_metrics["raw"], "post": test_metrics["post"],
        "training_cases": train_metrics,
        "logit_shift": logit_shift(train_stats, test_stats),
        "logit_means": {side: {g: {c: stats.mean(g, c) for c in names} for g in names}
                        for side, stats in (("train", train_stats), ("test", test_stats))},
        "model": str(model), "model_iteration": _model_iteration(model),
        "seconds": {"train": round(train_seconds, 1), "total": round(time.perf_counter() - started, 1)},
        "finished": time.time(), "settings": settings, "device": str(predictor.device),
    }
    write_json(folder / RUN_FILE, record)
    return record


def _end_progress_bar(sink: EventSink) -> None:
    """Close the run's training bar so later log lines do not redraw it (EventSink has no public call)."""
    bar = getattr(sink, "_bar", None)
    if bar is not None:
        bar.close()
        sink._bar = None


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
    """Rebuild OUT/results.json, OUT/report.md and OUT/logits_<method>.png from the finished runs."""
    from .plotting import plot_logit_histograms

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
        foreground = names[1:]
        summary, per_class, shift, figures, means = {}, {}, {}, {}, {}
        for method in methods:
            mine = [r for r in records if r["method"] == method]
            if not mine:
                continue
            summary[method] = {v: _pooled_summary(mine, v, foreground) for v in VARIANTS}
            summary[method]["runs"] = len(mine)
            summary[method]["training_cases"] = {v: _pooled_summary([{v: r["training_cases"][v]} for r in mine], v,
                                                                    foreground) for v in VARIANTS}
            per_class[method] = {name: {v: _pooled_summary(mine, v, [name]) for v in VARIANTS} for name in foreground}
            train_stats = test_stats = None
            for r in mine:
                folder = out / "runs" / r["method"] / f"fold{r['fold']}_seed{r['seed']}"
                a, b = LogitStatistics.load(folder / "logits_train.json"), LogitStatistics.load(folder / "logits_test.json")
                train_stats = a if train_stats is None else train_stats.merge(a)
                test_stats = b if test_stats is None else test_stats.merge(b)
            shift[method] = logit_shift(train_stats, test_stats)
            means[method] = {side: {g: {c: s.mean(g, c) for c in names} for g in names}
                             for side, s in (("train", train_stats), ("test", test_stats))}
            n_train = len({c for r in mine for c in r["train_cases"]})
            n_test = len({c for r in mine for c in r["test_cases"]})
            png = plot_logit_histograms(
                train_stats, test_stats, out / f"logits_{method}.png",
                title=f"{method}: logits on training vs unseen cases ({len(mine)} run(s), "
                      f"{settings['iterations']} iterations)",
                train_label=f"training cases ({n_train} distinct)", unseen_label=f"unseen cases ({n_test} distinct)")
            figures[method] = png.name
        results = {
            "format": BENCH_FORMAT, "version": BENCH_VERSION, "command": command, "settings": settings,
            "methods": list(methods), "complete": not missing, "missing_runs": missing,
            "folds": _folds_of(runs), "hardware": hardware(settings), "versions": versions(),
            "seconds": {"runs_total": round(sum(r["seconds"]["total"] for r in records), 1),
                        "this_invocation": None if wall_seconds is None else round(wall_seconds, 1),
                        "span": _span(out, records)},
            "runs": [_run_entry(r) for r in records],
            "summary": summary, "summary_per_class": per_class, "logit_shift": shift, "logit_means": means,
            "figures": figures,
        }
        outputs = {"results": str(write_json(out / "results.json", results))}
        outputs["report"] = str(write_text(out / "report.md", report_markdown(results)))
        outputs.update({f"logits_{m}": str(out / f) for m, f in figures.items()})
        return outputs
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _run_entry(r: dict) -> dict:
    keys = ("method", "fold", "seed", "train_cases", "validation_cases", "test_cases", "raw", "post", "logit_shift",
            "logit_means", "training_cases", "model_iteration", "seconds")
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


def hardware(settings: Optional[dict] = None) -> dict:
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


def table_ii(results: dict, variant: str) -> str:
    """Markdown in the layout of the paper's Table II: one row per method, mean ± std over runs x test cases."""
    summary = results["summary"]
    base = summary.get("vanilla", {}).get(variant)
    lines = ["| Method | runs | DSC (%) | SEN (%) | PRC (%) | HD95 (mm) | ΔDSC | ΔSEN | ΔPRC |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method in results["methods"]:
        if method not in summary:
            lines.append(f"| {method} | 0 | – | – | – | – | – | – | – |")
            continue
        s = summary[method][variant]
        deltas = ["(reference)", "", ""] if method == "vanilla" else [("–" if base is None or s[k]["mean"] is None or base[k]["mean"] is None
                   else _signed(s[k]["mean"] - base[k]["mean"], 100)) for k in ("dsc", "sensitivity", "precision")]
        lines.append(f"| {method} | {summary[method]['runs']} | {_pct(s['dsc'])} | {_pct(s['sensitivity'])} | "
                     f"{_pct(s['precision'])} | {_mm(s['hd95'])} | " + " | ".join(deltas) + " |")
    return "\n".join(lines) + "\n"


def logit_table(results: dict) -> str:
    """Per method and class g: mean of z_g on voxels of g, training vs unseen, and dz."""
    names = results["settings"]["class_names"]
    head = "| Method | " + " | ".join(f"z[{g}] on {g}: train | unseen | dz[{g}]" for g in names) + " |"
    lines = [head, "|---|" + "---:|" * (3 * len(names))]
    for method in results["methods"]:
        if method not in results["logit_shift"]:
            continue
        cells = []
        for g in names:
            m = results["logit_means"][method]
            cells += [_signed(m["train"][g][g], digits=2), _signed(m["test"][g][g], digits=2),
                      _signed(results["logit_shift"][method][g][g], digits=2)]
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


def _pct1(s: dict) -> str:
    return "–" if s["mean"] is None else f"{100 * s['mean']:.1f}"


def training_table(results: dict) -> str:
    """DSC / SEN on the training cases vs the unseen cases (post-processed): the generalisation gap."""
    lines = ["| Method | training DSC | unseen DSC | training SEN | unseen SEN |", "|---|---:|---:|---:|---:|"]
    for method in results["methods"]:
        s = results["summary"].get(method)
        if not s:
            continue
        t, u = s["training_cases"]["post"], s["post"]
        lines.append(f"| {method} | {_pct(t['dsc'])} | {_pct(u['dsc'])} | {_pct(t['sensitivity'])} | "
                     f"{_pct(u['sensitivity'])} |")
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
    figures = "\n".join(f"![{m}]({f})" for m, f in results["figures"].items())
    return f"""# AsymSeg benchmark: {Path(s['dataset']).name}

Protocol of Li, Kamnitsas, Glocker (IEEE TMI 2020), METHOD.md §5/§6: {s['train_size']} training case(s)
per fold, a validation case for checkpoint choice (never a test case of its fold), every other case
unseen; class(es) `{foreground}`. Mean ± std over runs × unseen cases; percentages. {n_runs} run(s),
{status}.

## Unseen cases, post-processed (largest connected component; the paper's headline numbers)

{table_ii(results, 'post')}
## Unseen cases, raw (without post-processing)

{table_ii(results, 'raw')}
Δ: difference of the means to `vanilla` in percentage points. HD95 is undefined for an empty
prediction; a count (n/N) says when a mean covers fewer than all cases.

## Per fold (post-processed, mean over seeds × unseen cases)

{per_fold_table(results)}
## Training cases vs unseen cases (post-processed)

{training_table(results)}
## Logit shift (METHOD.md §1)

Mean logit z[g] over the voxels of true class g, pooled over all runs' training cases and all
runs' unseen cases (inside the ROI mask when the dataset has one), and dz = |mean unseen| −
|mean train| (negative: the logit moved towards the decision boundary on unseen cases).

{logit_table(results)}
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


def run_bench(args, sink: Optional[EventSink] = None) -> Dict[str, str]:
    """``python -m AsymSegTrainer bench ...``; returns output name -> path (results, report, figures)."""
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
        if (run.folder / RUN_FILE).exists():
            sink.log(f"[{i}/{len(runs)}] {run.name}: finished earlier, skipped")
            continue
        if not _claim(run.folder):
            sink.log(f"[{i}/{len(runs)}] {run.name}: claimed by another live process, skipped")
            continue
        if (run.folder / RUN_FILE).exists():  # finished between our check and our claim
            _release(run.folder)
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
    return outputs


def _eta(spent: float, done_cost: float, remaining: Sequence[Run]) -> Optional[float]:
    """Seconds left: the cost of the runs not finished yet, at this process's pace, shared by the live workers.

    Every other process holding a claim on one of ``remaining`` counts as one more worker.
    """
    if done_cost <= 0:
        return None
    todo = [r for r in remaining if not (r.folder / RUN_FILE).exists()]
    workers = 1 + sum(1 for r in todo if (r.folder / CLAIM_FILE).exists() and _claim_owner(r.folder) != os.getpid())
    return round(sum(_cost(r.method) for r in todo) * spent / done_cost / workers, 1)


def _claim_owner(folder: Path) -> Optional[int]:
    try:
        return int(json.loads((folder / CLAIM_FILE).read_text(encoding="utf-8"))["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
