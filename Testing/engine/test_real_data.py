"""Slow: a short fine-tune on two real BRATS cases segments tumour core on an unseen case.

Skipped cleanly when ../shared (the CC BY-NC-SA data, never copied into the repo) is absent.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

pytestmark = pytest.mark.slow

TRAIN, UNSEEN = "brats_2013_pat0005_1,brats_2013_pat0006_1", "brats_2013_pat0001_1"


def test_short_finetune_segments_unseen_tumour_core(brats, tmp_path):
    run = [sys.executable, "-m", "AsymSegTrainer"]
    train = subprocess.run(run + ["train", "--dataset", str(brats), "--classes", "tumor_core=1,3,4",
                                  "--train-cases", TRAIN, "--preset", "asymmetric-focal",
                                  "--iterations", "300", "--learning-rate", "0.001",
                                  "--target-spacing", "2", "2", "2", "--patch-size", "32", "32", "32",
                                  "--batch-size", "8", "--device", "cpu", "--out", str(tmp_path / "run"), "--events"],
                           capture_output=True, text=True, timeout=1200)
    assert train.returncode == 0, train.stderr[-2000:]
    model = json.loads(train.stdout.splitlines()[-1])["model"]  # the last model: no validation case

    images = [str(brats / "imagesTr" / f"{UNSEEN}_000{c}.nii.gz") for c in (0, 1)]
    out = tmp_path / "pred.nii.gz"
    infer = subprocess.run(run + ["infer", "--model", model, "--images", *images, "--out", str(out), "--label",
                                  str(brats / "labelsTr" / f"{UNSEEN}.nii.gz"), "--device", "cpu"],
                           capture_output=True, text=True, timeout=600)
    assert infer.returncode == 0, infer.stderr[-2000:]

    # the prediction lies on the input grid (1 mm, 240x240x155), though the network ran at 2 mm
    reference, prediction = sitk.ReadImage(images[0]), sitk.ReadImage(str(out))
    assert prediction.GetSize() == reference.GetSize()
    assert np.allclose(prediction.GetSpacing(), reference.GetSpacing())
    assert np.allclose(prediction.GetOrigin(), reference.GetOrigin())
    assert np.allclose(prediction.GetDirection(), reference.GetDirection())

    # DSC recomputed here from the files, independently of the engine's metrics
    truth = np.isin(sitk.GetArrayFromImage(sitk.ReadImage(str(brats / "labelsTr" / f"{UNSEEN}.nii.gz"))), [1, 3, 4])
    predicted = sitk.GetArrayFromImage(prediction) == 1
    dsc = 2 * (truth & predicted).sum() / (truth.sum() + predicted.sum())
    sensitivity = (truth & predicted).sum() / truth.sum()
    print(f"unseen {UNSEEN}: tumour-core DSC {dsc:.3f}, sensitivity {sensitivity:.3f}")
    assert dsc > 0.4 and sensitivity > 0.5  # measured: DSC 0.61, sensitivity 0.80
    metrics = json.loads((tmp_path / "pred_metrics.json").read_text())
    assert metrics["raw"]["tumor_core"]["dsc"] == pytest.approx(dsc, abs=1e-6)
