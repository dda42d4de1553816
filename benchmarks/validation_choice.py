"""A setting chosen on the validation case only: which of several bench methods would a user pick?

The paper's protocol allows choosing settings on validation cases, never on unseen ones. For
every fold (and seed) of a ``bench`` folder this picks, among ``--among`` methods (e.g. the
combination with several mixup margins), the run whose chosen checkpoint scored the highest
validation DSC, and pairs the picked runs' unseen cases with vanilla as the bench report does
(raw and post-processed). Printed as Markdown and written as JSON. (A benchmark, not a test.)

    python benchmarks/validation_choice.py --bench OUT --among m1,m2[,...] [--name picked] [--out choice.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from AsymSegTrainer.bench.report import paired_table


def validation_dsc(bench: Path, run: dict) -> float:
    """Mean validation DSC of the run's chosen checkpoint, from its ``train/validation.json``."""
    path = bench / "runs" / run["method"] / f"fold{run['fold']}_seed{run['seed']}" / "train" / "validation.json"
    for entry in json.loads(path.read_text(encoding="utf-8")):
        if entry["iteration"] == run["model_iteration"]:
            return entry["mean_dsc"]
    raise SystemExit(f"{path}: no validation at iteration {run['model_iteration']} (the chosen checkpoint).")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", type=Path, required=True, help="a bench output folder")
    parser.add_argument("--among", required=True, help="comma-separated methods of that bench to choose from")
    parser.add_argument("--name", default="validation-chosen", help="the row's name (default validation-chosen)")
    parser.add_argument("--out", type=Path, help="JSON output (default: BENCH/validation_choice.json)")
    args = parser.parse_args(argv)
    results = json.loads((args.bench / "results.json").read_text(encoding="utf-8"))
    among = [m.strip() for m in args.among.split(",") if m.strip()]
    missing = sorted(set(among) - set(results["methods"]))
    if missing or len(among) < 2:
        parser.error(f"--among needs at least two methods of {args.bench / 'results.json'}; not there: {missing}")
    candidates = {}
    for run in results["runs"]:
        if run["method"] in among:
            candidates.setdefault((run["fold"], run["seed"]), []).append((validation_dsc(args.bench, run), run))
    picks = []
    for key in sorted(candidates):
        if len(candidates[key]) < len(among):
            print(f"fold {key[0]} seed {key[1]}: not every method finished, left out", file=sys.stderr)
            continue
        dsc, run = max(candidates[key], key=lambda pair: pair[0])
        picks.append({"fold": key[0], "seed": key[1], "method": run["method"], "validation_dsc": dsc,
                      "candidates": {r["method"]: d for d, r in candidates[key]}})
        print(f"fold {key[0]} seed {key[1]}: " + ", ".join(f"{r['method']} {d:.3f}" for d, r in candidates[key])
              + f" -> {run['method']}")
    picked = {(p["fold"], p["seed"], p["method"]) for p in picks}
    runs = [r for r in results["runs"] if r["method"] == "vanilla"] + \
        [{**r, "method": args.name} for r in results["runs"] if (r["fold"], r["seed"], r["method"]) in picked]
    chosen = {**results, "methods": ["vanilla", args.name], "runs": runs, "summary": {}, "summary_last": {}}
    tables = {variant: paired_table(chosen, variant) for variant in ("raw", "post")}
    for variant, table in tables.items():
        print(f"\nPaired with vanilla, {variant}, checkpoint chosen on the validation case:\n\n{table}")
    out = args.out or args.bench / "validation_choice.json"
    out.write_text(json.dumps({"among": among, "name": args.name, "picks": picks, "paired": tables}, indent=1) + "\n",
                   encoding="utf-8")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
