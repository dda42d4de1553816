"""Does ``rank`` put the worst-segmented case first? Measured on labelled cases (a benchmark, not a test).

``rank`` scores cases without their labels (AsymSegTrainer.ranking: the share of the rare
classes' candidate volume where the model hesitates). On labelled cases the claim can be
checked: this script ranks them, segments them with ``infer`` (no post-processing), and reports
per case the score and the mean raw DSC of the rare classes, whether the top-ranked case is the
one with the lowest DSC, and Spearman's rank correlation between score and DSC (the measure
wants it negative). With few cases read it as a first look, not a significance test.

    python benchmarks/rank_vs_dsc.py [--model runs/focal/model_best.pt] [--dataset DIR] [--cases ID,ID] [--out DIR]
    python benchmarks/rank_vs_dsc.py --bench BENCH_OUT [--methods m1,m2] --out DIR

With ``--bench`` every finished run of a ``bench`` folder is one trial: its chosen model ranks the run's
unseen test cases and the raw DSC comes from the run's own evaluation (run.json), so nothing is
segmented twice (rankings already in ``--out`` are reused); the report pools the trials (how often the top-ranked case is the worst, the
mean Spearman rho, and the DSC of the top-ranked case against the run's mean).
Without ``--model`` it first fine-tunes a short run (``--iterations``, default 300,
asymmetric-focal) on ``--train-cases`` with ``--val-cases`` choosing the checkpoint. The default
dataset is the BRATS folder in ../shared; the script says so and exits 0 when it is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from AsymSegTrainer.events import EventSink
from AsymSegTrainer.inference import infer_dataset
from AsymSegTrainer.jobspec import job_from_dataset, job_from_dict
from AsymSegTrainer.ranking import rank_cases
from AsymSegTrainer.training import Trainer

BRATS = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset001_BraTS2015_DeepMedic6"
TRAIN, VALIDATION = "brats_2013_pat0005_1,brats_2013_pat0006_1", "brats_2013_pat0003_1"
UNSEEN = "brats_2013_pat0001_1,brats_2013_pat0002_1,brats_2013_pat0003_1,brats_2013_pat0004_1"


def _ids(text: str) -> list:
    return [s for s in text.split(",") if s]


def train_model(args, out: Path, sink: EventSink) -> Path:
    spec = job_from_dataset(args.dataset, args.classes, _ids(args.train_cases), _ids(args.val_cases),
                            output=str(out), technique="asymmetric-focal", iterations=args.iterations,
                            device=args.device)
    return Trainer(job_from_dict(spec, out.parent), sink).run().model


def compare(ranking: dict, dsc: dict) -> dict:
    """One trial: the ranked cases with their DSC, whether the top-ranked is the worst, Spearman's rho."""
    rows = [{**{k: c[k] for k in ("rank", "case", "score", "predicted_ml", "hesitant_ml")}, "dsc": dsc[c["case"]]}
            for c in ranking["cases"]]
    worst = min(rows, key=lambda r: r["dsc"])
    rho = spearmanr([r["score"] for r in rows], [r["dsc"] for r in rows])[0] if len(rows) > 2 else None
    return {"cases": rows, "top_ranked_is_worst": rows[0]["case"] == worst["case"], "worst": worst["case"],
            "spearman_score_vs_dsc": None if rho is None or np.isnan(rho) else float(rho),
            "top_ranked_dsc": rows[0]["dsc"], "mean_dsc": float(np.mean([r["dsc"] for r in rows]))}


def mean_rare_dsc(metrics: dict, rare: list) -> float:
    """The mean raw DSC of the rare classes of one case's metrics (a class whose DSC is undefined is left out)."""
    return float(np.nanmean([np.nan if metrics[name]["dsc"] is None else metrics[name]["dsc"] for name in rare]))


def print_trial(trial: dict) -> None:
    print(f"{'rank':>4}  {'case':<24}  {'score':>6}  {'DSC':>6}")
    for r in trial["cases"]:
        print(f"{r['rank']:>4}  {r['case']:<24}  {r['score']:>6.3f}  {100 * r['dsc']:>5.1f}%")
    print(f"top-ranked is the worst segmented ({trial['worst']}): {trial['top_ranked_is_worst']}; Spearman rho "
          f"score vs DSC: {trial['spearman_score_vs_dsc']}")


def bench_trials(args, out: Path, sink: EventSink) -> dict:
    """Every finished run of ``args.bench`` (of ``args.methods`` when given) as a trial."""
    bench = json.loads((args.bench / "bench.json").read_text())
    dataset, methods, trials = Path(bench["settings"]["dataset"]), _ids(args.methods or ""), []
    for record in sorted(args.bench.glob("runs/*/*/run.json")):
        run = json.loads(record.read_text())
        if methods and run["method"] not in methods:
            continue
        name = f"{run['method']}/fold{run['fold']}_seed{run['seed']}"
        path = out / name / "ranking.json"  # kept: a second call ranks only the runs finished since
        if not path.is_file():
            rank_cases(run["model"], dataset, run["test_cases"], path, subset="Tr", device=args.device, sink=sink)
        ranking = json.loads(path.read_text())
        dsc = {case: mean_rare_dsc(run["raw"][case], ranking["rare_classes"]) for case in run["test_cases"]}
        trial = {"run": name, **compare(ranking, dsc)}
        print(name)
        print_trial(trial)
        trials.append(trial)
    rhos = [t["spearman_score_vs_dsc"] for t in trials if t["spearman_score_vs_dsc"] is not None]
    summary = {"trials": len(trials), "top_ranked_is_worst": sum(t["top_ranked_is_worst"] for t in trials),
               "chance": float(np.mean([1 / len(t["cases"]) for t in trials])) if trials else None,
               "mean_spearman": float(np.mean(rhos)) if rhos else None,
               "negative_spearman": sum(r < 0 for r in rhos),
               "top_ranked_dsc_below_run_mean": sum(t["top_ranked_dsc"] < t["mean_dsc"] for t in trials)}
    print(f"{summary['trials']} trials: top-ranked = worst in {summary['top_ranked_is_worst']} (chance "
          f"{summary['chance']:.2f} per trial); top-ranked DSC below the run's mean in "
          f"{summary['top_ranked_dsc_below_run_mean']}; Spearman rho mean {summary['mean_spearman']:.2f}, "
          f"negative in {summary['negative_spearman']}")
    return {"bench": str(args.bench), "dataset": str(dataset), "summary": summary, "trials": trials}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="model file (default: train a short run first)")
    parser.add_argument("--bench", type=Path, help="a bench output folder: rank the test cases of each finished run")
    parser.add_argument("--methods", help="with --bench: only these methods (comma-separated)")
    parser.add_argument("--dataset", type=Path, default=BRATS, help="nnU-Net folder with labelsTr (default: BRATS)")
    parser.add_argument("--classes", nargs="+", default=["tumor_core=1,3,4"], help="without --model: the classes")
    parser.add_argument("--train-cases", default=TRAIN, help="without --model: training cases")
    parser.add_argument("--val-cases", default=VALIDATION, help="without --model: validation cases")
    parser.add_argument("--iterations", type=int, default=300, help="without --model: training iterations")
    parser.add_argument("--cases", default=UNSEEN, help="the labelled cases to rank (unseen by the model)")
    parser.add_argument("--out", type=Path, help="output folder (default: a temporary one)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if not args.bench and not args.dataset.is_dir():
        print(f"skipped: no dataset at {args.dataset}")
        return 0
    out = args.out or Path(tempfile.mkdtemp(prefix="rank-vs-dsc-"))
    sink = EventSink(progress_bar=False)
    try:
        if args.bench:
            result = bench_trials(args, out, sink)
        else:
            model = args.model or train_model(args, out / "train", sink)
            cases = _ids(args.cases)
            ranking = json.loads(Path(rank_cases(model, args.dataset, cases, out / "ranking.json", subset="Tr",
                                                 device=args.device, sink=sink)["ranking"]).read_text())
            infer_dataset(model, args.dataset, cases, out / "predictions", device=args.device, postprocess="none",
                          sink=sink)
            metrics = json.loads((out / "predictions" / "metrics.json").read_text())["cases"]
            trial = compare(ranking, {c: mean_rare_dsc(metrics[c]["raw"], ranking["rare_classes"]) for c in cases})
            result = {"model": str(model), "dataset": str(args.dataset), "rare_classes": ranking["rare_classes"],
                      **trial}
            print_trial(trial)
    finally:
        sink.close()
    (out / "rank_vs_dsc.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"written to {out / 'rank_vs_dsc.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
