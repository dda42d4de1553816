"""``OUT/results.json`` (and through report.py ``OUT/report.md``) from the finished runs' ``run.json``.

Rebuilt at the end of every invocation, under an exclusive lock, and written atomically:
per method and checkpoint (chosen on the validation case / last), the metrics pooled over
runs x unseen cases, the logit statistics of all runs' training cases against all runs'
unseen cases (the figures ``OUT/logits_<method>[_last].png``), the runs themselves, the
hardware and the time spent.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..evaluation import VARIANTS
from ..files import write_json, write_text
from ..logits import LogitStatistics, logit_shift
from ..runtime import versions
from .claims import aggregation_lock
from .folds import Run, folds_of
from .report import report_markdown
from .runs import CALIBRATED, CALIBRATED_ROW, LAST_SUFFIX, logit_means, pooled_summary, run_record
from .settings import BENCH_FORMAT, BENCH_VERSION, created

RUN_KEYS = ("method", "fold", "seed", "train_cases", "validation_cases", "test_cases", "postprocessing", *VARIANTS,
            "logit_shift", "logit_means", "training_cases", "model_iteration", "last", "seconds", CALIBRATED)
"""The fields of a run.json that results.json repeats per run (those it has: older runs lack ``chosen``)."""


def write_results(out: Path, settings: dict, methods: Sequence[str], runs: Sequence[Run], command: str,
                  wall_seconds: Optional[float] = None) -> Dict[str, str]:
    """Rebuild OUT/results.json, OUT/report.md and OUT/logits_<method>[_last].png from the finished runs."""
    out = Path(out)
    with aggregation_lock(out):
        records, missing = [], []
        for run in runs:
            record = run_record(run)
            if record is None:
                missing.append(run.name)
            else:
                records.append(record)
        names = settings["class_names"]
        blocks = {"": lambda r: r, LAST_SUFFIX: lambda r: r["last"]}
        summary, figures = {"": {}, LAST_SUFFIX: {}}, {"": {}, LAST_SUFFIX: {}}
        shift, means, per_class = {"": {}, LAST_SUFFIX: {}}, {"": {}, LAST_SUFFIX: {}}, {}
        for method in methods:
            mine = [r for r in records if r["method"] == method]
            if not mine:
                continue
            for suffix, block in blocks.items():
                chosen = [(r, block(r)) for r in mine]
                result = _checkpoint_summary(out, method, chosen, names, settings, suffix)
                summary[suffix][method], shift[suffix][method], means[suffix][method], figures[suffix][method] = result
                calibrated = [b[CALIBRATED] for _, b in chosen if b.get(CALIBRATED)]
                if calibrated:  # the same models with the offsets fitted on each run's validation case
                    summary[suffix][method + CALIBRATED_ROW] = {
                        **{v: pooled_summary(calibrated, v, names[1:]) for v in VARIANTS}, "runs": len(calibrated),
                        "offsets": [c["offsets"] for c in calibrated]}
            per_class[method] = {name: {v: pooled_summary(mine, v, [name]) for v in VARIANTS} for name in names[1:]}
        results = {
            "format": BENCH_FORMAT, "version": BENCH_VERSION, "command": command, "settings": settings,
            "methods": list(methods), "complete": not missing, "missing_runs": missing,
            "folds": folds_of(runs), "hardware": hardware(), "versions": versions(),
            "seconds": {"runs_total": round(sum(r["seconds"]["total"] for r in records), 1),
                        "this_invocation": None if wall_seconds is None else round(wall_seconds, 1),
                        "span": _span(out, records)},
            "runs": [{k: r[k] for k in RUN_KEYS if k in r} for r in records],
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


def _checkpoint_summary(out: Path, method: str, chosen: List[Tuple[dict, dict]], names: List[str], settings: dict,
                        suffix: str) -> tuple:
    """(summary, dz, logit means, figure name) of one method's runs for one checkpoint (selected or last).

    ``chosen``: (run record, block) pairs; a block holds raw/post/training_cases/model_iteration.
    Logit statistics of all runs' training cases are merged against all runs' test cases.
    """
    from ..plotting import plot_margins

    foreground = names[1:]
    blocks = [b for _, b in chosen]
    summary = {v: pooled_summary(blocks, v, foreground) for v in VARIANTS}
    summary["runs"] = len(blocks)
    summary["model_iterations"] = [b.get("model_iteration") for b in blocks]
    summary["training_cases"] = {v: pooled_summary([b["training_cases"] for b in blocks], v, foreground)
                                 for v in VARIANTS}
    train_stats = test_stats = None
    for r, b in chosen:
        folder = out / "runs" / r["method"] / f"fold{r['fold']}_seed{r['seed']}"
        own = "" if b.get("same_as_selected") else suffix
        a = LogitStatistics.load(folder / f"logits_train{own}.json")
        t = LogitStatistics.load(folder / f"logits_test{own}.json")
        train_stats = a if train_stats is None else train_stats.merge(a)
        test_stats = t if test_stats is None else test_stats.merge(t)
    n_train = len({c for r, _ in chosen for c in r["train_cases"]})
    n_test = len({c for r, _ in chosen for c in r["test_cases"]})
    which = (f"last checkpoint (iteration {settings['iterations']})" if suffix
             else "checkpoint chosen on the validation case")
    png = plot_margins(
        train_stats, test_stats, out / f"logits_{method}{suffix}.png",
        title=f"{method}, {which}: true-class margins, training vs unseen cases ({len(blocks)} run(s))",
        train_label=f"training cases ({n_train} distinct)", unseen_label=f"unseen cases ({n_test} distinct)")
    return summary, logit_shift(train_stats, test_stats), logit_means(train_stats, test_stats), png.name


def _span(out: Path, records: List[dict]) -> Optional[float]:
    """Seconds from the benchmark's first start to its last finished run."""
    start = created(out)
    return None if start is None or not records else round(max(r["finished"] for r in records) - start, 1)


def hardware() -> dict:
    """The machine, for the report: CPU, cores, memory, GPU, torch threads."""
    import psutil
    import torch
    info = {"machine": platform.machine(), "processor": platform.processor() or None, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)}
    try:  # Linux only; elsewhere the report falls back to the processor's name
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info
