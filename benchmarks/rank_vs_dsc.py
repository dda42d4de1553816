"""Does ``rank`` put the worst-segmented case first? Measured on labelled cases (a benchmark, not a test).

``rank`` scores cases without their labels (AsymSegTrainer.ranking: the share of the rare
classes' candidate volume where the model hesitates). On labelled cases the claim can be
checked: this script ranks them, segments them with ``infer`` (no post-processing), and reports
per case the score and the mean raw DSC of the rare classes, whether the top-ranked case is the
one with the lowest DSC, and Spearman's rank correlation between score and DSC (the measure
wants it negative). With few cases read it as a first look, not a significance test.

    python benchmarks/rank_vs_dsc.py [--model runs/focal/model_best.pt] [--dataset DIR] [--cases ID,ID] [--out DIR]

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="model file (default: train a short run first)")
    parser.add_argument("--dataset", type=Path, default=BRATS, help="nnU-Net folder with labelsTr (default: BRATS)")
    parser.add_argument("--classes", nargs="+", default=["tumor_core=1,3,4"], help="without --model: the classes")
    parser.add_argument("--train-cases", default=TRAIN, help="without --model: training cases")
    parser.add_argument("--val-cases", default=VALIDATION, help="without --model: validation cases")
    parser.add_argument("--iterations", type=int, default=300, help="without --model: training iterations")
    parser.add_argument("--cases", default=UNSEEN, help="the labelled cases to rank (unseen by the model)")
    parser.add_argument("--out", type=Path, help="output folder (default: a temporary one)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if not args.dataset.is_dir():
        print(f"skipped: no dataset at {args.dataset}")
        return 0
    out = args.out or Path(tempfile.mkdtemp(prefix="rank-vs-dsc-"))
    sink = EventSink(progress_bar=False)
    try:
        model = args.model or train_model(args, out / "train", sink)
        cases = _ids(args.cases)
        ranking = json.loads(Path(rank_cases(model, args.dataset, cases, out / "ranking.json", subset="Tr",
                                             device=args.device, sink=sink)["ranking"]).read_text())
        infer_dataset(model, args.dataset, cases, out / "predictions", device=args.device, postprocess="none",
                      sink=sink)
    finally:
        sink.close()
    metrics = json.loads((out / "predictions" / "metrics.json").read_text())["cases"]
    rare = ranking["rare_classes"]
    rows = [{**{k: c[k] for k in ("rank", "case", "score", "predicted_ml", "hesitant_ml")},
             "dsc": float(np.nanmean([np.nan if metrics[c["case"]]["raw"][name]["dsc"] is None
                                      else metrics[c["case"]]["raw"][name]["dsc"] for name in rare]))}
            for c in ranking["cases"]]
    worst = min(rows, key=lambda r: r["dsc"])
    rho = spearmanr([r["score"] for r in rows], [r["dsc"] for r in rows])[0] if len(rows) > 2 else None
    result = {"model": str(model), "dataset": str(args.dataset), "rare_classes": rare, "cases": rows,
              "top_ranked_is_worst": rows[0]["case"] == worst["case"], "worst": worst["case"],
              "spearman_score_vs_dsc": None if rho is None or np.isnan(rho) else float(rho)}
    (out / "rank_vs_dsc.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"{'rank':>4}  {'case':<24}  {'score':>6}  {'DSC':>6}")
    for r in rows:
        print(f"{r['rank']:>4}  {r['case']:<24}  {r['score']:>6.3f}  {100 * r['dsc']:>5.1f}%")
    print(f"top-ranked is the worst segmented ({worst['case']}): {result['top_ranked_is_worst']}; Spearman rho "
          f"score vs DSC: {result['spearman_score_vs_dsc']}; written to {out / 'rank_vs_dsc.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
