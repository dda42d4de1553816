"""``python -m AsymSegTrainer demo``: the method's effect on synthetic data, in a few minutes on a CPU.

1. A deterministic phantom dataset (phantoms.py: two-channel 3D volumes of textured tissue
   with small, varied lesions, foreground:background <= 1:100): 2 training cases, 1
   validation case (checkpoint choice), 3 unseen test cases.
2. Fine-tunes the same small U-Net twice, with ``vanilla`` cross-entropy and with the
   ``asymmetric-focal`` preset (the paper's first recommendation), same seed and iterations.
3. Segments the unseen cases with each model (infer), evaluates them voxel- and lesion-wise
   without post-processing, with the post-processing chosen on the validation case and with
   the largest component only, and collects the logit statistics of the training and the
   unseen cases with the same model.
4. Writes OUT/metrics.json, OUT/report.md (the comparison table, also printed to the log),
   OUT/logits_<preset>.png (plotting.plot_margins: per class, the true-class margin on the
   training vs the unseen cases, with the share of voxels on the wrong side of the decision
   boundary and the paper's dz) and, per run, OUT/<preset>/ (model, training log, predictions
   of the unseen cases).

What to look for (METHOD.md §1): on unseen cases the margins of lesion voxels move towards
and across the decision boundary (a larger share on the wrong side than on the training cases;
dz < 0 for the lesion logit on lesion voxels) while those of background voxels stay put, and
lesions are under-segmented (sensitivity below precision). On these
phantoms (1000 iterations, 98 s for the whole demo on 2 shared CPU cores) vanilla misses 23%
of the training cases' lesion voxels and 41% of the unseen ones'; the asymmetric focal run
misses 5% and 37%, and gains a few points of sensitivity at slightly lower precision (raw:
DSC 67.1 -> 67.6, SEN 58.9 -> 62.9, PRC 78.6 -> 73.5). Lesion-wise it finds 8 of the 9
unseen lesions instead of 6, with 9 false-positive components instead of 5; keeping the
largest component leaves 3 of 9 for both, and the validation case chose no post-processing
for either run.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Dict, Optional

import torch

from .errors import InputError
from .evaluation import VARIANT_LABELS, summarize_cases, write_metrics
from .files import check_writable_folder, write_json, write_text
from .events import EventSink
from .formatting import LESION_TITLES, mean_std, percent, signed
from .inference import infer_cases, load_predictor
from .jobspec import job_from_dataset, job_from_dict
from .logits import logit_shift, margin_shift
from .metrics import lesion_totals
from .plotting import plot_margins
from .runtime import resolve_device, versions

DEMO_FORMAT = "asymseg-demo"
RUNS = {"vanilla": "vanilla", "asymmetric-focal": "asymmetric-focal"}  # run name -> job technique
DEFAULT_ITERATIONS = 1000  # per run: about 3-4 minutes for the whole demo on 2 busy CPU cores
CPU_THREADS = 1
"""Torch threads of the demo on a CPU. With 2 threads on 2 cores, any other busy process makes
OpenMP's threads wait for each other and an iteration took 10-40x longer in our measurements;
one thread is about 1.7x slower on an idle machine but keeps the demo within its 5 minutes on a
shared one. The previous setting is restored afterwards."""
NUM_CASES = 6
TRAIN, VALIDATION, TEST = ["phantom_000", "phantom_001"], ["phantom_002"], ["phantom_003", "phantom_004", "phantom_005"]
CLASSES = ["lesion=1"]
SETTINGS = {
    "network": {"name": "unet", "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
    "patch_size": [32, 32, 32],
    "batch_size": 4,
    "seed": 0,
    "device": "auto",
}
"""Pinned so that the demo takes the same few minutes and gives the same numbers everywhere; the spacing,
normalisation and learning rate come from the training plan (``plan.json`` in each run's folder)."""
METRICS = (("dsc", "DSC (%)"), ("sensitivity", "SEN (%)"), ("precision", "PRC (%)"))


def _prepare(out: Path) -> None:
    """A new or empty folder, or the folder of an earlier demo (its runs are replaced)."""
    marker = out / "demo.json"
    if out.is_dir() and any(out.iterdir()):
        try:
            earlier = json.loads(marker.read_text(encoding="utf-8")).get("format") == DEMO_FORMAT
        except (OSError, ValueError, AttributeError):
            earlier = False
        if not earlier:
            raise InputError(f"{out} is not empty and holds no earlier demo; nothing was changed.",
                             "Choose a new or empty folder with --out.")
        for run in RUNS:
            if (out / run).is_dir():
                shutil.rmtree(out / run)
    check_writable_folder(out)


def _cell(summary: dict, variant: str, name: str, key: str) -> str:
    return mean_std(summary[variant].get(name, {}).get(key), count_prefix="n=")


def comparison_table(runs: Dict[str, dict], foreground: str) -> str:
    """Markdown: one row per run and post-processing: mean ± std over the unseen cases, their lesions, the share of
    lesion voxels on the wrong side of the decision boundary (true-class margin < 0) on training and unseen cases,
    and the paper's dz.

    The lesion columns add up the lesions of all unseen cases (formatting.LESION_TITLES).
    """
    lines = ["| Run | Post-processing | " + " | ".join([t for _, t in METRICS] + list(LESION_TITLES)) +
             f" | {foreground} voxels missed, train | missed, unseen | dz[{foreground}] |",
             "|---|---|" + "---:|" * (len(METRICS) + len(LESION_TITLES) + 3)]
    for run, result in runs.items():
        z = result["logits"]
        numbers = [percent(z["train_crossing"]), percent(z["unseen_crossing"]), signed(z["dz"], digits=2)]
        for variant, label in VARIANT_LABELS.items():
            cells = [_cell(result["summary"], variant, foreground, key) for key, _ in METRICS]
            cells += lesion_totals(result["summary"][variant][foreground])
            lines.append(f"| {run} | {label} | " + " | ".join(cells) + " | " + " | ".join(numbers) + " |")
    return "\n".join(lines) + "\n"


def _run(preset: str, technique, data: Path, out: Path, iterations: int, sink: EventSink) -> dict:
    from .training import Trainer

    started = time.perf_counter()
    spec = job_from_dataset(data, CLASSES, TRAIN, VALIDATION, TEST, technique=technique, output=str(out / preset),
                            iterations=iterations, validation_interval=max(1, iterations // 5), **SETTINGS)
    job = job_from_dict(spec, out)
    result = Trainer(job, sink).run()
    sink.attach(out)  # the trainer logged into its own folder; back to the demo's log
    training_seconds = time.perf_counter() - started
    predictor = load_predictor(result.model, job.device)
    names = predictor.class_names
    # Both sides of the logit figure come from the model that segments the unseen cases.
    training = infer_cases(predictor, job.cases_with_role("train"), out / preset / "training_cases", sink=sink,
                           metadata={"run": preset})
    unseen = infer_cases(predictor, job.cases_with_role("test"), out / preset / "predictions", sink=sink,
                         metadata={"run": preset})
    training.logits.save(out / preset / "logits_training_cases.json")
    unseen.logits.save(out / preset / "logits_unseen_cases.json")
    write_metrics(out / preset / "predictions", unseen.metrics, names,
                  extra={"model": str(result.model), "run": preset}, postprocessing=unseen.postprocessing)
    shift = logit_shift(training.logits, unseen.logits)
    margins = margin_shift(training.logits, unseen.logits)
    foreground = names[1]
    png = plot_margins(
        training.logits, unseen.logits, out / f"logits_{preset}.png",
        title=f"{preset}: true-class margins on training vs unseen phantoms ({iterations} iterations)",
        train_label=f"training cases ({len(TRAIN)})", unseen_label=f"unseen cases ({len(TEST)})")
    return {"model": str(result.model), "technique": job.technique.to_dict(), "iterations": iterations,
            "training_seconds": round(training_seconds, 1), "postprocessing": unseen.postprocessing,
            "cases": unseen.metrics, "summary": summarize_cases(unseen.metrics), "logit_shift": shift,
            "margin_shift": margins,
            "logits": {"train_mean": training.logits.mean(foreground, foreground),
                       "unseen_mean": unseen.logits.mean(foreground, foreground), "dz": shift[foreground][foreground],
                       "train_crossing": margins[foreground]["train_crossing"],
                       "unseen_crossing": margins[foreground]["unseen_crossing"]},
            "figure": str(png)}


def run_demo(out: Path, sink: Optional[EventSink] = None, iterations: Optional[int] = None) -> Dict[str, str]:
    """Run the demo into ``out``; returns output name -> path (metrics, report, one figure per run)."""
    sink = sink or EventSink()
    out = Path(out).expanduser().absolute()
    iterations = DEFAULT_ITERATIONS if iterations is None else iterations
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise InputError(f"iterations must be a whole number >= 1; got {iterations!r}.",
                         f"Leave it out for the demo's {DEFAULT_ITERATIONS}.")
    _prepare(out)
    sink.attach(out)
    device = resolve_device(SETTINGS["device"])
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(min(threads, CPU_THREADS))
    try:
        return _demo(out, sink, iterations, device)
    finally:
        torch.set_num_threads(threads)


def _demo(out: Path, sink: EventSink, iterations: int, device) -> Dict[str, str]:
    from .phantoms import make_phantom_dataset

    settings = {"runs": list(RUNS), "iterations": iterations, "cases": NUM_CASES, "train": TRAIN,
                "validation": VALIDATION, "test": TEST, "classes": CLASSES, **SETTINGS}
    write_json(out / "demo.json", {"format": DEMO_FORMAT, "version": 1, "settings": settings})
    sink.emit("start", command="demo", config=settings, device=str(device),
              versions=versions(), output=str(out))
    started = time.perf_counter()
    data = make_phantom_dataset(out / "data", num_cases=NUM_CASES, seed=0)
    sink.log(f"Phantom dataset: {data} ({NUM_CASES} cases; training {', '.join(TRAIN)}, validation "
             f"{', '.join(VALIDATION)}, unseen {', '.join(TEST)})")
    runs = {}
    for preset, technique in RUNS.items():
        sink.log(f"--- {preset}: fine-tuning for {iterations} iterations")
        runs[preset] = _run(preset, technique, data, out, iterations, sink)
    foreground = "lesion"
    table = comparison_table(runs, foreground)
    elapsed = time.perf_counter() - started
    report = (f"# AsymSeg demo: vanilla vs asymmetric on unseen phantoms\n\n"
              f"{len(TRAIN)} training cases, {iterations} iterations per run; mean ± std over {len(TEST)} unseen cases "
              f"({', '.join(TEST)}), class `{foreground}`. Missed: the share of {foreground} voxels whose true-class "
              f"margin (z[{foreground}] minus the largest other logit) is below 0, on the wrong side of the decision "
              f"boundary; dz = |mean z unseen| - |mean z train| of the {foreground} "
              f"logit on {foreground} voxels (the paper's measure; negative: moved towards the boundary). Lesions: "
              f"26-connected components, added up over the unseen cases; found = overlapped by a predicted voxel, "
              f"FP = a predicted component overlapping no lesion. Post-processing chosen on the validation case: "
              + "; ".join(f"{run} {result['postprocessing'][foreground]}" for run, result in runs.items())
              + f".\n\n{table}\n"
              + "".join(f"![{run}](logits_{run}.png)\n" for run in RUNS)
              + f"\nTotal time {elapsed:.0f} s.\n")
    outputs = {"metrics": str(write_json(out / "metrics.json", {
        "format": DEMO_FORMAT, "version": 1, "settings": settings, "seconds": round(elapsed, 1),
        "runs": runs, "comparison_markdown": table})),
        "report": str(write_text(out / "report.md", report))}
    outputs.update({f"logits_{run}": runs[run]["figure"] for run in RUNS})
    sink.log("Comparison on the unseen cases (mean ± std):\n" + table)
    sink.log(f"Demo finished in {elapsed:.0f} s; report: {out / 'report.md'}")
    return outputs
