"""Post-processing per class: specs, applying them, the choice on validation cases, the model file, phantoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from AsymSegTrainer.errors import InputError
from AsymSegTrainer.metrics import keep_largest_component, lesion_metrics
from AsymSegTrainer.network import build_network, load_model_file, save_model, update_model_meta
from AsymSegTrainer.phantoms import phantom_case
from AsymSegTrainer.postprocessing import (CANDIDATES, apply_postprocessing, choose_postprocessing,
                                           describe_postprocessing, parse_postprocessing, resolve_postprocessing)

NAMES = ["background", "lesion", "edema"]


def test_specs_are_parsed_to_one_form_and_read_in_words():
    assert CANDIDATES == ("none", "min-size=3", "min-size=10", "min-size=30", "min-size=100", "largest")
    assert [parse_postprocessing(s) for s in ("None", " largest", "min-size=10.0", "MIN-SIZE=2.50")] == \
        ["none", "largest", "min-size=10", "min-size=2.5"]
    for bad in ("biggest", "min-size=", "min-size=0", "min-size=-3", "min-size=nan", "min-size=inf", None):
        with pytest.raises(InputError, match="Unknown post-processing") as error:
            parse_postprocessing(bad)
        assert "min-size=V" in error.value.hint
    assert describe_postprocessing("min-size=10") == "components smaller than 10 mm³ removed"
    assert describe_postprocessing("largest") == "largest connected component only"
    assert describe_postprocessing("none") == "none (the network's output)"


def test_min_size_removes_the_components_under_v_mm3_of_its_class_only():
    labels = np.zeros((4, 8, 8), np.uint8)
    labels[0, 0, 0] = 1          # 2 mm³ (voxels of 2 x 1 x 1 mm)
    labels[0, 4, 0:5] = 1        # 10 mm³: kept, not smaller than 10
    labels[3, 0:2, 6:8] = 1      # 8 mm³
    labels[3, 7, 7] = 2          # edema, 2 mm³
    original = labels.copy()
    out = apply_postprocessing(labels, {"lesion": "min-size=10"}, NAMES, (2.0, 1.0, 1.0))
    expected = labels.copy()
    expected[0, 0, 0] = 0
    expected[3, 0:2, 6:8] = 0
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(labels, original)  # a copy
    largest = apply_postprocessing(labels, {"lesion": "largest", "edema": "none"}, NAMES, (2, 1, 1))
    np.testing.assert_array_equal(largest, keep_largest_component(labels, [1]))
    np.testing.assert_array_equal(apply_postprocessing(labels, {}, NAMES, (2, 1, 1)), labels)  # unlisted: none


def validation_case():
    """Lesion: a found 8-voxel lesion, a found 1-voxel lesion and a 5-voxel stray component; edema: a found
    27-voxel lesion and a 2-voxel stray component. Voxels of 1 mm³."""
    reference, prediction = np.zeros((6, 12, 12), np.uint8), np.zeros((6, 12, 12), np.uint8)
    reference[0:2, 0:2, 0:2] = prediction[0:2, 0:2, 0:2] = 1
    reference[0, 6, 6] = prediction[0, 6, 6] = 1
    prediction[4, 0, 0:5] = 1
    reference[3:6, 8:11, 8:11] = prediction[3:6, 8:11, 8:11] = 2
    prediction[0, 10, 10:12] = 2
    return prediction, reference


def test_the_choice_never_buys_dsc_with_a_found_lesion_and_ties_go_to_the_least_invasive():
    prediction, reference = validation_case()
    choice = choose_postprocessing([prediction], [reference], [(1.0, 1.0, 1.0)], NAMES)
    scores = choice["scores"]["lesion"]
    # none: TP 9 of 9 reference voxels, 14 predicted; largest: the 8-voxel lesion alone, the better DSC ...
    assert scores["none"] == {"dsc": pytest.approx(18 / 23), "lesions_detected": 2, "lesions_false_positive": 1}
    assert scores["largest"] == {"dsc": pytest.approx(16 / 17), "lesions_detected": 1, "lesions_false_positive": 0}
    # ... but it deletes a found lesion, as every min-size does (the 1 mm³ one, then the 8 mm³ one): none stays
    assert scores["min-size=3"]["lesions_detected"] == 1 and scores["min-size=10"]["lesions_detected"] == 0
    assert choice["classes"]["lesion"] == "none"
    # edema: min-size=3, 10 and largest all remove just the stray pair (DSC 1, 3.6 points more): the least
    # invasive wins; min-size=30 would delete the found 27 mm³ lesion
    edema = choice["scores"]["edema"]
    assert edema["none"]["dsc"] == pytest.approx(54 / 56)
    assert edema["min-size=3"]["dsc"] == edema["min-size=10"]["dsc"] == edema["largest"]["dsc"] == 1.0
    assert edema["min-size=30"]["lesions_detected"] == 0
    assert choice["classes"] == {"lesion": "none", "edema": "min-size=3"}
    assert choice["validation_cases"] == 1 and choice["candidates"] == list(CANDIDATES)
    assert "least invasive" in choice["criterion"]
    perfect = choose_postprocessing([reference, reference], [reference, reference], [(1, 1, 1)] * 2, NAMES)
    assert perfect["classes"] == {"lesion": "none", "edema": "none"}  # everything ties at DSC 1
    big, stray = np.zeros((6, 12, 12), np.uint8), np.zeros((6, 12, 12), np.uint8)
    big[0:5, 0:5, 0:5] = stray[0:5, 0:5, 0:5] = 2
    stray[5, 11, 11] = 2  # removing it raises the DSC from 250/251 to 1: 0.4 points, too little to act on
    small_gain = choose_postprocessing([stray], [big], [(1, 1, 1)], NAMES)
    assert small_gain["scores"]["edema"]["min-size=3"]["dsc"] == 1.0 and small_gain["classes"]["edema"] == "none"
    with pytest.raises(ValueError, match="one prediction, reference and spacing"):
        choose_postprocessing([prediction], [], [], NAMES)
    with pytest.raises(ValueError, match="shape"):
        choose_postprocessing([prediction], [reference[:3]], [(1, 1, 1)], NAMES)


def test_what_infer_applies_and_the_model_file():
    meta = {"postprocessing": {"classes": {"lesion": "min-size=10"}}}
    assert resolve_postprocessing(None, NAMES, meta) == {"lesion": "min-size=10", "edema": "none"}
    assert resolve_postprocessing("largest", NAMES, meta) == {"lesion": "largest", "edema": "largest"}
    assert resolve_postprocessing(None, NAMES, {}) == {"lesion": "none", "edema": "none"}  # no choice: none
    with pytest.raises(InputError):
        resolve_postprocessing(None, NAMES, {"postprocessing": {"classes": {"lesion": "smallest"}}})


def test_update_model_meta_keeps_everything_else(tmp_path):
    network = build_network({"name": "unet", "channels": [4, 8], "strides": [2], "num_res_units": 1}, 2, 3)
    path = tmp_path / "model_best.pt"
    save_model(path, network, {"class_names": NAMES, "seed": 3}, iteration=7)
    before, _ = load_model_file(path)
    choice = {"classes": {"lesion": "min-size=3", "edema": "none"}, "criterion": "test"}
    update_model_meta(path, postprocessing=choice)
    state, meta = load_model_file(path)
    assert meta == {"class_names": NAMES, "seed": 3, "postprocessing": choice}
    assert state["iteration"] == 7
    assert all(torch.equal(before["state_dict"][k], v) for k, v in state["state_dict"].items())
    assert [p.name for p in tmp_path.iterdir()] == ["model_best.pt"]  # written atomically, nothing left over


def simulated_prediction(label: np.ndarray, body: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible network output: a quarter of the lesions missed, the others found and grown by a voxel in-plane,
    and 20 single stray voxels in the body, at least 4 voxels from any lesion."""
    components, count = ndimage.label(label, np.ones((3, 3, 3)))
    found = np.isin(components, 1 + np.flatnonzero(rng.random(count) > 0.25))
    prediction = ndimage.binary_dilation(found, np.array([[[0, 0, 0], [0, 0, 0], [0, 0, 0]],
                                                          [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                                                          [[0, 0, 0], [0, 0, 0], [0, 0, 0]]], bool))
    far = np.argwhere(body & (ndimage.distance_transform_edt(label == 0) > 4))
    prediction[tuple(far[rng.choice(len(far), 20, replace=False)].T)] = True
    return prediction.astype(np.uint8)


def test_the_chosen_post_processing_keeps_every_found_lesion_on_multi_lesion_phantoms():
    spacing = (1.5, 1.0, 1.0)
    cases = []
    for i in range(6):
        image, label = phantom_case(np.random.default_rng([0, i]), multi_lesion=True)
        cases.append((simulated_prediction(label, image[0] != 0, np.random.default_rng(i)), label))
    names = ["background", "lesion"]
    validation, unseen = cases[:3], cases[3:]
    choice = choose_postprocessing([p for p, _ in validation], [r for _, r in validation], [spacing] * 3, names)
    applied = resolve_postprocessing(None, names, {"postprocessing": choice})  # what infer does by default
    assert applied == {"lesion": "min-size=3"}  # the strays go; 1-voxel lesions grown in-plane (7.5 mm³) stay
    for prediction, reference in unseen:
        raw = lesion_metrics(prediction == 1, reference == 1, spacing)
        chosen = lesion_metrics(apply_postprocessing(prediction, applied, names, spacing) == 1, reference == 1, spacing)
        largest = lesion_metrics(keep_largest_component(prediction) == 1, reference == 1, spacing)
        assert raw["lesions_reference"] >= 4 and raw["lesions_detected"] >= 2
        assert chosen["lesions_detected"] == raw["lesions_detected"]  # not one found lesion removed
        assert chosen["lesions_false_positive"] < raw["lesions_false_positive"]
        assert largest["lesions_detected"] == 1  # the paper's post-processing keeps one lesion of several
