"""Where do a bench run's false-positive voxels lie? (a benchmark, not a test)

For every finished run of a ``bench`` folder and every unseen (test) case, the voxels its
prediction calls the rare class but the reference does not are split by where they lie: in a
given neighbouring label (e.g. BraTS edema), within a distance of the reference structure (its
rim), elsewhere inside the body (image channel 0 non-zero: the skull-stripped brain), or outside
it. Printed and written as JSON per method (summed over the runs' cases), next to the true-positive
volume for scale.

    python benchmarks/false_positives.py --bench OUT [--methods m1,m2] [--structure 1,3] [--neighbour 2]
        [--rim-mm 3] [--out fp.json]

The predictions are the files the bench wrote (``runs/<method>/<fold>/predictions/<case>.nii.gz``:
the chosen model, with the post-processing the run chose on its validation case).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import distance_transform_edt


def _values(text: str) -> list:
    return [int(v) for v in text.split(",") if v.strip()]


def _array(path: Path) -> tuple[np.ndarray, tuple]:
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing()))


def split_false_positives(predicted: np.ndarray, label: np.ndarray, body: np.ndarray, spacing: tuple,
                          structure: list, neighbour: list, rim_mm: float) -> dict:
    """Voxel counts: true positives and false positives by place (neighbour label, rim, body, outside)."""
    reference = np.isin(label, structure)
    false = predicted & ~reference
    near = distance_transform_edt(~reference, sampling=spacing) <= rim_mm if reference.any() \
        else np.zeros_like(reference)
    in_neighbour = false & np.isin(label, neighbour)
    in_rim = false & ~in_neighbour & near
    in_body = false & ~in_neighbour & ~in_rim & body
    return {"true_positive": int((predicted & reference).sum()), "false_positive": int(false.sum()),
            "in_neighbour": int(in_neighbour.sum()), "in_rim": int(in_rim.sum()), "in_body": int(in_body.sum()),
            "outside": int((false & ~body).sum())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", type=Path, required=True, help="a bench output folder")
    parser.add_argument("--methods", help="only these methods (comma-separated)")
    parser.add_argument("--structure", default="1,3", help="raw label values of the rare class (default 1,3)")
    parser.add_argument("--neighbour", default="2", help="raw label values of the neighbouring label (default 2)")
    parser.add_argument("--rim-mm", type=float, default=3.0, help="rim width around the reference in mm (default 3)")
    parser.add_argument("--out", type=Path, help="JSON output (default: BENCH/false_positives.json)")
    args = parser.parse_args(argv)
    settings = json.loads((args.bench / "bench.json").read_text())["settings"]
    dataset = Path(settings["dataset"])
    methods = [m for m in (args.methods or "").split(",") if m]
    structure, neighbour = _values(args.structure), _values(args.neighbour)
    totals: dict = {}
    for record in sorted(args.bench.glob("runs/*/*/run.json")):
        run = json.loads(record.read_text())
        if methods and run["method"] not in methods:
            continue
        for case in run["test_cases"]:
            predicted, _ = _array(record.parent / "predictions" / f"{case}.nii.gz")
            label, spacing = _array(dataset / "labelsTr" / f"{case}.nii.gz")
            image, _ = _array(dataset / "imagesTr" / f"{case}_0000.nii.gz")
            # the prediction holds class indices: 1 = the rare class of a one-class bench
            counts = split_false_positives(predicted == 1, label, image != 0, spacing, structure, neighbour,
                                           args.rim_mm)
            method = totals.setdefault(run["method"], {"runs": set(), "cases": 0})
            method["runs"].add(record.parent.name)
            method["cases"] += 1
            voxel_ml = float(np.prod(spacing)) / 1000.0  # cases may differ in spacing: add up mL, not voxels
            for key, value in counts.items():
                method[key] = method.get(key, 0.0) + value * voxel_ml
    order = methods or sorted(totals)
    print(f"{'method':<44} {'runs':>4} {'cases':>5} {'TP mL':>8} {'FP mL':>8} {'neighbour':>9} {'rim':>5} "
          f"{'body':>5} {'outside':>7}")
    result = {}
    for name in order:
        t = totals.get(name)
        if not t:
            continue
        fp = t["false_positive"] or 1.0
        row = {"runs": len(t["runs"]), "cases": t["cases"], "true_positive_ml": t["true_positive"],
               "false_positive_ml": t["false_positive"],
               **{f"share_{k}": t[k] / fp for k in ("in_neighbour", "in_rim", "in_body", "outside")}}
        result[name] = row
        print(f"{name:<44} {row['runs']:>4} {row['cases']:>5} {row['true_positive_ml']:>8.1f} "
              f"{row['false_positive_ml']:>8.1f} {row['share_in_neighbour']:>9.0%} {row['share_in_rim']:>5.0%} "
              f"{row['share_in_body']:>5.0%} {row['share_outside']:>7.0%}")
    out = args.out or args.bench / "false_positives.json"
    out.write_text(json.dumps({"bench": str(args.bench), "structure": structure, "neighbour": neighbour,
                               "rim_mm": args.rim_mm, "methods": result}, indent=1) + "\n", encoding="utf-8")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
