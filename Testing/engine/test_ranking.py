"""rank: the hesitation score by hand on synthetic logits, and the command end to end on phantoms.

A tiny network trained for a test's budget (hundreds of iterations on 24^3-40^3 phantoms) stays
unsure everywhere, so it cannot show that a degraded case ranks above its clean version; the
score is checked on logits whose values are known instead, the command's plumbing on a tiny model.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from AsymSegTrainer.data import load_case, read_nnunet_dataset
from AsymSegTrainer.errors import InputError
from AsymSegTrainer.events import EventSink
from AsymSegTrainer.inference import load_predictor, predict_case
from AsymSegTrainer.jobspec import job_from_dataset, job_from_dict
from AsymSegTrainer.ranking import BAND, hesitation, rank_cases
from AsymSegTrainer.training import Trainer

from conftest import TINY_NETWORK, UNPLANNED

NAMES, RARITY = ["background", "lesion"], [0.0, 1.0]
VOXEL_ML = 0.002  # 2 x 1 x 1 mm


def two_class_logits(lesion_margins):
    """Logits (2, 1, 1, n): background 0, lesion its margin."""
    lesion = np.asarray(lesion_margins, np.float32).reshape(1, 1, -1)
    return np.stack([np.zeros_like(lesion), lesion])


def test_the_score_is_the_hesitant_share_of_the_candidate_volume():
    clean = hesitation(two_class_logits([8, 6, 4, 3, 1, -6]), NAMES, RARITY, VOXEL_ML)
    # predicted: m > 0 (5 voxels); hesitant: |m| < 2 (the 1); candidate: m > -2 (5 voxels)
    assert clean["score"] == pytest.approx(1 / 5)
    assert clean["predicted_ml"] == pytest.approx(5 * VOXEL_ML) and clean["hesitant_ml"] == pytest.approx(VOXEL_ML)
    assert clean["candidate_ml"] == pytest.approx(5 * VOXEL_ML)
    assert clean["classes"] == {"lesion": {k: clean[k] for k in ("score", "predicted_ml", "hesitant_ml",
                                                                  "candidate_ml")}}
    # the same lesion at half the contrast: its logits halved, two voxels now hesitate
    faint = hesitation(two_class_logits([4, 3, 2, 1.5, 0.5, -3]), NAMES, RARITY, VOXEL_ML)
    assert faint["score"] == pytest.approx(2 / 5) and faint["score"] > clean["score"]
    assert BAND == 2.0  # the band the numbers above assume


def test_rare_classes_are_pooled_inside_the_mask_and_background_is_not_scored():
    logits = np.array([[0, 0, 0, 0], [5, 1, -1, 1], [-5, 0.5, -3, 0]], np.float32).reshape(3, 1, 1, 4)
    mask = np.array([1, 1, 1, 0], bool).reshape(1, 1, 4)  # the last voxel is outside the ROI
    result = hesitation(logits, ["background", "a", "b"], [0.0, 1.0, 0.5], 1.0, mask)
    # a: margins 5, 0.5, -1 -> predicted 2, hesitant 2, candidate 3; b: margins -10, -0.5, -3 -> 0, 1, 1
    assert result["classes"]["a"] == {"score": pytest.approx(2 / 3), "predicted_ml": 2, "hesitant_ml": 2,
                                      "candidate_ml": 3}
    assert result["classes"]["b"] == {"score": 1.0, "predicted_ml": 0, "hesitant_ml": 1, "candidate_ml": 1}
    assert set(result["classes"]) == {"a", "b"}
    assert (result["score"], result["predicted_ml"], result["hesitant_ml"], result["candidate_ml"]) == (0.75, 2, 3, 4)


def test_a_case_the_model_is_sure_has_no_rare_structure_in_scores_zero():
    assert hesitation(two_class_logits([-9, -7, -5]), NAMES, RARITY, VOXEL_ML) == {
        "score": 0.0, "predicted_ml": 0.0, "hesitant_ml": 0.0, "candidate_ml": 0.0,
        "classes": {"lesion": {"score": 0.0, "predicted_ml": 0.0, "hesitant_ml": 0.0, "candidate_ml": 0.0}}}


@pytest.fixture(scope="module")
def tiny_model(phantom_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("rank") / "run"
    spec = job_from_dataset(phantom_dataset, ["lesion=1"], ["phantom_000"], [], output=str(out),
                            network=TINY_NETWORK, patch_size=[16, 16, 16], batch_size=2, iterations=2, device="cpu",
                            validation_interval=2, logit_statistics=False, **UNPLANNED)
    sink = EventSink(progress_bar=False)
    try:
        return Trainer(job_from_dict(spec, out.parent), sink).run().model
    finally:
        sink.close()


@pytest.fixture
def unlabelled(phantom_dataset, tmp_path):
    """imagesTs with two phantoms (no labels) and an ROI mask for one of them."""
    folder = tmp_path / "new"
    (folder / "imagesTs").mkdir(parents=True)
    shutil.copy(phantom_dataset / "dataset.json", folder)
    for case in ("phantom_002", "phantom_003"):
        for channel in (0, 1):
            shutil.copy(phantom_dataset / "imagesTr" / f"{case}_{channel:04d}.nii.gz", folder / "imagesTs")
    (folder / "masksTs").mkdir()
    shutil.copy(phantom_dataset / "labelsTr" / "phantom_003.nii.gz", folder / "masksTs")  # a small ROI
    return folder


def test_rank_cli_writes_the_ranked_cases_with_their_volumes(tiny_model, unlabelled, tmp_path):
    out = tmp_path / "ranking.json"
    proc = subprocess.run([sys.executable, "-m", "AsymSegTrainer", "rank", "--model", str(tiny_model), "--dataset",
                           str(unlabelled), "--out", str(out), "--device", "cpu", "--events"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[0]["type"] == "start" and events[0]["command"] == "rank"
    progress = [e for e in events if e["type"] == "progress"]
    assert [(e["phase"], e["iteration"], e["total"], e["case"]) for e in progress] == [
        ("rank", 1, 2, "phantom_002"), ("rank", 2, 2, "phantom_003")]
    assert events[-1]["type"] == "done" and events[-1]["outputs"] == {"ranking": str(out)}
    assert "rank  case" in proc.stderr and "hesitant mL" in proc.stderr  # the table in the log

    ranking = json.loads(out.read_text())
    assert ranking["format"] == "asymseg-ranking" and ranking["subset"] == "Ts"
    assert ranking["rare_classes"] == ["lesion"] and ranking["band"] == BAND
    cases = ranking["cases"]
    assert [c["rank"] for c in cases] == [1, 2] and cases[0]["score"] >= cases[1]["score"]
    # the scores are hesitation() of the model's logits on its grid, inside the ROI mask where there is one
    predictor = load_predictor(tiny_model, "cpu")
    _, specs = read_nnunet_dataset(unlabelled, "Ts")
    for spec in specs:
        case = load_case(spec, None, predictor.normalization, predictor.meta.get("target_spacing"))
        expected = hesitation(predict_case(predictor, case), NAMES, RARITY, 1.5e-3, case.mask)
        (found,) = [c for c in cases if c["case"] == spec.id]
        assert found["score"] == pytest.approx(expected["score"])
        assert found["hesitant_ml"] == pytest.approx(expected["hesitant_ml"])
        assert found["predicted_ml"] == pytest.approx(expected["predicted_ml"])
    assert predictor.meta.get("target_spacing") is None  # the 1.5 mL per 1000 voxels above: the phantoms' own grid


def test_rank_refuses_unknown_cases_and_an_output_inside_the_dataset(tiny_model, unlabelled):
    quiet = EventSink(progress_bar=False)
    with pytest.raises(InputError, match=r"\['nobody'\] are not in"):
        rank_cases(tiny_model, unlabelled, ["nobody"], unlabelled.parent / "r.json", sink=quiet)
    with pytest.raises(InputError, match="lies inside the input dataset folder"):
        rank_cases(tiny_model, unlabelled, [], unlabelled / "imagesTs" / "r.json", sink=quiet)
    assert not (unlabelled / "imagesTs" / "r.json").exists()
