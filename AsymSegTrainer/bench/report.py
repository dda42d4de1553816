"""``OUT/report.md``: the Markdown report of a bench's results.json.

Tables in the layout of the paper (Li, Kamnitsas, Glocker, IEEE TMI 2020): metrics per method
and checkpoint, differences to ``vanilla`` (of the means, and paired by fold, seed and unseen
case), lesion-wise detection, per fold, training vs unseen cases and the logit shift, then
settings, hardware and time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

from ..evaluation import VARIANT_LABELS
from ..formatting import LESION_TITLES, duration, mean_percent, mean_std, signed
from ..metrics import lesion_size_labels, lesion_totals, summarize
from ..techniques import resolve_technique, technique_from_name
from .runs import CALIBRATED, CALIBRATED_ROW, pooled_summary
from .settings import OFFICIAL_DIFFERENCES

SCHEDULES = {"poly": "polynomial decay", "official": "halved at 17, 22, 27, 30, 33 of 35 parts, as the official code"}
OFFICIAL_NOTE = f"yes (--official), as closely as this machine allows; differs in: {OFFICIAL_DIFFERENCES}"


def _with_calibrated(results: dict, key: str = "summary") -> List[str]:
    """The methods, each followed by its "+ calibrated" row when its runs had logit offsets."""
    return [name for method in results["methods"] for name in (method, method + CALIBRATED_ROW)
            if name == method or name in results[key]]


def table_ii(results: dict, variant: str, key: str = "summary") -> str:
    """Markdown in the layout of the paper's Table II: one row per method, mean ± std over runs x test cases.

    ``key``: ``summary`` (checkpoint chosen on the validation case) or ``summary_last`` (end of training).
    """
    summary = results[key]
    base = summary.get("vanilla", {}).get(variant)
    lines = ["| Method | runs | DSC (%) | SEN (%) | PRC (%) | HD95 (mm) | ΔDSC | ΔSEN | ΔPRC |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method in _with_calibrated(results, key):
        if method not in summary:
            lines.append(f"| {method} | 0 | – | – | – | – | – | – | – |")
            continue
        s = summary[method][variant]
        if method == "vanilla":
            deltas = ["(reference)", "", ""]
        else:
            deltas = ["–" if base is None or s[k]["mean"] is None or base[k]["mean"] is None
                      else signed(s[k]["mean"] - base[k]["mean"], 100) for k in ("dsc", "sensitivity", "precision")]
        lines.append(f"| {method} | {summary[method]['runs']} | {mean_std(s['dsc'])} | {mean_std(s['sensitivity'])} | "
                     f"{mean_std(s['precision'])} | {mean_std(s['hd95'], scale=1.0)} | " + " | ".join(deltas) + " |")
    return "\n".join(lines) + "\n"


def lesion_table(results: dict, key: str = "summary") -> str:
    """Lesion-wise detection per method and post-processing, over runs x unseen cases.

    Found / missed / false-positive lesions and the lesion sensitivity of all those cases'
    lesions added up (every lesion counts once), the lesion sensitivity averaged per case, and
    the lesions found per size bin. ``key``: ``summary`` or ``summary_last``.
    """
    bins = lesion_size_labels()
    titles = ["Method", "Post-processing", *LESION_TITLES, "Lesion SEN per case (%)",
              *(f"found {label}" for label in bins.values())]
    lines = ["| " + " | ".join(titles) + " |", "|---|---|" + "---:|" * (len(titles) - 2)]
    for method in results["methods"]:
        summary = results[key].get(method)
        if not summary:
            continue
        for variant, label in VARIANT_LABELS.items():
            s = summary[variant]
            found_by_size = [lesion_totals(s, f"{b}_")[0] for b in bins]
            cells = lesion_totals(s) + [mean_std(s["lesion_sensitivity"])] + found_by_size
            lines.append(f"| {method} | {label} | " + " | ".join(cells) + " |")
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
            cells += [signed(before, digits=2), signed(after, digits=2),
                      signed(None if before is None or after is None else after - before, digits=2),
                      signed(shift[method][g][g], digits=2)]
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
            s = pooled_summary(runs, variant, foreground)
            cells.append(f"{mean_percent(s['dsc'])} / {mean_percent(s['sensitivity'])}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired_table(results: dict, variant: str = "post", last: bool = False) -> str:
    """Differences to vanilla paired by (fold, seed, test case): mean ± std and how often the method is better.

    Cases differ far more from each other than methods do, so the pairs say more than the
    difference of two means with their large standard deviations. DSC, SEN and PRC in
    percentage points, HD95 in mm over the pairs where both predictions are non-empty (a count
    says when that is not all of them); "better" is higher for DSC and SEN, lower for HD95.
    """
    foreground = results["settings"]["class_names"][1:]
    block = (lambda r: r["last"]) if last else (lambda r: r)
    base = {(r["fold"], r["seed"]): block(r) for r in results["runs"] if r["method"] == "vanilla"}
    if not base:
        return "(no vanilla runs to pair with)\n"
    keys = ("dsc", "sensitivity", "precision", "hd95")
    lines = ["| Method | pairs | ΔDSC | ΔSEN | ΔPRC | ΔHD95 (mm) | DSC higher | SEN higher | HD95 lower |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method in _with_calibrated(results, "summary_last" if last else "summary"):
        if method == "vanilla":
            continue
        own = method.removesuffix(CALIBRATED_ROW)

        def mine_of(r: dict) -> Optional[dict]:
            b = block(r)
            return b.get(CALIBRATED) if own != method else b

        diffs = {k: [] for k in keys}
        for r in results["runs"]:
            b = base.get((r["fold"], r["seed"]))
            if r["method"] != own or b is None or not mine_of(r):
                continue
            for case, per_class in mine_of(r)[variant].items():
                for name in foreground:
                    for k in keys:
                        mine, theirs = per_class[name][k], b[variant][case][name][k]
                        diffs[k].append(None if mine is None or theirs is None else mine - theirs)
        if not diffs["dsc"]:
            continue
        cells = [mean_std(summarize(diffs[k]), scale=1.0 if k == "hd95" else 100.0, sign=True) for k in keys]
        defined = {k: [d for d in diffs[k] if d is not None] for k in keys}
        wins = [f"{sum(d > 0 for d in defined[k])}/{len(defined[k])}" for k in ("dsc", "sensitivity")]
        wins.append(f"{sum(d < 0 for d in defined['hd95'])}/{len(defined['hd95'])}")
        lines.append(f"| {method} | {len(diffs['dsc'])} | " + " | ".join(cells + wins) + " |")
    return "\n".join(lines) + "\n"


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
            lines.append(f"| {method} | {label} ({its}) | {mean_std(t['dsc'])} | {mean_std(u['dsc'])} | "
                         f"{mean_std(t['sensitivity'])} | {mean_std(u['sensitivity'])} |")
    return "\n".join(lines) + "\n"


def _both_checkpoints(chosen: str, last: str) -> str:
    """A table of the checkpoint chosen on the validation case, then the same of the last checkpoint."""
    return f"Checkpoint chosen on the validation case:\n\n{chosen}\nLast checkpoint:\n\n{last}"


def report_markdown(results: dict) -> str:
    """The whole report.md, from results.json's content alone."""
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
    figures = "\n".join(f"![{m}]({f}) ![{m}, last checkpoint]({results['figures_last'][m]})"
                        for m, f in results["figures"].items())
    return f"""# AsymSeg benchmark: {Path(s['dataset']).name}

Protocol of Li, Kamnitsas, Glocker (IEEE TMI 2020), METHOD.md §5/§6: {s['train_size']} training case(s)
per fold, a validation case for checkpoint choice (never a test case of its fold), every other case
unseen; class(es) `{foreground}`. Mean ± std over runs × unseen cases; percentages. {n_runs} run(s),
{status}.

Two checkpoints of every run are evaluated: the one **chosen on the validation case** (best
validation DSC, checked every {s['validation_interval']} iterations) and the **last** one (end of
training, {s['iterations']} iterations, no choice at all).

## Unseen cases, post-processed (largest connected component; the paper's headline numbers)

{_both_checkpoints(table_ii(results, 'post'), table_ii(results, 'post', 'summary_last'))}
## Unseen cases, post-processing chosen on the validation case (per class)

Per class the post-processing with the best validation DSC among those that keep every lesion
the network found (none, components under a size removed, or the largest component; see
`postprocessing` of each run in results.json).

{_both_checkpoints(table_ii(results, 'chosen'), table_ii(results, 'chosen', 'summary_last'))}
## Unseen cases, raw (without post-processing)

{_both_checkpoints(table_ii(results, 'raw'), table_ii(results, 'raw', 'summary_last'))}
Δ: difference of the means to `vanilla` in percentage points. HD95 is undefined for an empty
prediction; a count (n/N) says when a mean covers fewer than all cases. A row "+ calibrated" is
the same models with one logit offset per rare class added before the arg-max, fitted at the end
of training on the run's validation case only (post-hoc logit adjustment, `infer --calibrated`):
does moving the boundary back after training close the gap, and does it add to a technique?

## Lesion-wise detection on the unseen cases

A lesion is a 26-connected component of a class; a reference lesion is found when a predicted
voxel of its class overlaps it; a predicted component overlapping no reference voxel of its
class is a false positive (FP). Counts add up over runs × unseen cases; a lesion's size is its
own volume.

{_both_checkpoints(lesion_table(results), lesion_table(results, 'summary_last'))}
## Paired with vanilla (same fold, seed and unseen case; post-processed)

Mean ± std of the per-case differences to `vanilla` (percentage points; HD95 in mm, over the
pairs where both predictions are non-empty) and in how many pairs the method is better.

{_both_checkpoints(paired_table(results), paired_table(results, last=True))}
## Paired with vanilla (same fold, seed and unseen case; raw)

{_both_checkpoints(paired_table(results, 'raw'), paired_table(results, 'raw', last=True))}
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

{_both_checkpoints(logit_table(results), logit_table(results, '_last'))}
The figures (chosen checkpoint, last checkpoint) show per class the true-class margin
z[g] − max of the other logits over the voxels of g, training cases filled, unseen cases as a
line: left of 0 the voxel is segmented as another class, the decision boundary exactly. The
sentence under each panel gives the share (and volume) of the unseen voxels on that side,
against the training cases.

{figures}

## Settings

| setting | value |
|---|---|
| command | `{results['command']}` |
| classes | {', '.join(s['classes'])} |
| target spacing (mm) | {s['target_spacing'] or 'native'} |
| patch / batch | {s['patch_size']} / {s['batch_size']} (50% of patches centred on the rare class) |
| network | {json.dumps(s['network'])} |
| optimiser | {s['optimizer']}, learning rate {s['learning_rate']} ({SCHEDULES[s.get('lr_schedule', 'poly')]}) |
| official protocol | {OFFICIAL_NOTE if s.get('official') else 'no'} |
| update structure | {_update_structure(results['methods'])} |
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
{duration(secs['runs_total'])}; first start to last finish {duration(secs['span'])}; this invocation
{duration(secs['this_invocation'])}.
"""


def _update_structure(methods) -> str:
    """How the methods with an extra term update (METHOD.md §4): every report says it."""
    regularised = [resolve_technique(technique_from_name(m)) for m in methods]
    updates = sorted({t.update for t in regularised if t.adversarial or t.mixup})
    if not updates:
        return "one optimiser step per batch (no adversarial or mixup term)"
    meaning = {"sequential": "sequential: one optimiser step each on the clean, adversarial and mixed batch",
               "sum": "sum: one optimiser step on the summed terms"}
    return "; ".join(meaning[u] for u in updates)
