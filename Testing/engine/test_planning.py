"""The training plan (planning.py): fingerprint of real files, choices against hand-computed values, and the plan
reaching the run, its files and the model."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from AsymSegTrainer.data import ClassMap, read_nnunet_dataset
from AsymSegTrainer.jobspec import job_from_dataset, job_from_dict
from AsymSegTrainer.phantoms import make_phantom_dataset
from AsymSegTrainer.planning import (CT_PERCENTILES, fingerprint, fit_iterations, make_plan, measure_step_seconds,
                                     technique_passes)
from AsymSegTrainer.techniques import resolve_technique

CPU2 = {"type": "cpu", "name": "test", "cores": 2, "memory_gib": None}
GPU24 = {"type": "cuda", "name": "test", "cores": 16, "memory_gib": 24.0}


def brats_like(diameter_mm=45.0, spacing=(1.0, 1.0, 1.0), extent=(140.0, 170.0, 140.0), modality="mr"):
    """The fingerprint fields the plan reads, for a BRATS-like training set (one rare class)."""
    return {"median_spacing": list(spacing), "median_roi_extent_mm": list(extent), "two_d": False,
            "modality": modality, "cases": [],
            "channels": [{"min": -1000.0, "max": 1500.0, "foreground_percentiles": [20.0, 180.0]}],
            "classes": {"background": {"rare": False, "structure_diameter_mm": None},
                        "tumor_core": {"rare": True, "structure_diameter_mm": diameter_mm}}}


NOTHING_GIVEN = dict.fromkeys(("target_spacing", "patch_size", "batch_size", "network", "normalization",
                               "learning_rate", "iterations", "validation_interval"))


def test_cpu_plan_for_brats_coarsens_to_2mm_so_a_32_voxel_patch_sees_the_tumour_and_its_context():
    plan = make_plan(brats_like(), CPU2, NOTHING_GIVEN)
    s = plan["settings"]
    # context wanted max(64, 1.5 * 45 = 67.5) mm; 32 voxels * 1.5 mm = 48 < 0.75 * 67.5 = 50.6; 32 * 2 = 64 is enough
    assert s["target_spacing"] == [2.0, 2.0, 2.0] and s["patch_size"] == [32, 32, 32]
    assert s["batch_size"] == 8 and s["learning_rate"] == 1e-3
    assert s["network"] == {"name": "unet", "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 2}
    assert s["normalization"] == {"mode": "zscore", "window": None, "statistics": "foreground"}
    assert set(plan["source"].values()) == {"plan"} and all(plan["reasons"][k] for k in s)
    assert "64 x 64 x 64 mm" in plan["reasons"]["target_spacing"]
    assert "iterations" not in s  # fitted to a measured step time later


def test_gpu_plan_keeps_the_native_spacing_with_a_large_patch():
    plan = make_plan(brats_like(), GPU24, NOTHING_GIVEN)
    s = plan["settings"]
    assert s["target_spacing"] == [1.0, 1.0, 1.0] and s["patch_size"] == [96, 96, 96]
    assert s["batch_size"] == 5  # 2 * 128**3 / 96**3 = 4.74
    assert s["network"]["channels"] == [32, 64, 128, 256]


def test_small_structures_keep_enough_voxels_across_and_patches_are_cut_to_the_roi():
    plan = make_plan(brats_like(diameter_mm=10.0, extent=(20.0, 100.0, 100.0), spacing=(2.0, 0.8, 0.8)),
                     CPU2, NOTHING_GIVEN)
    # 10 mm / 8 voxels = 1.25 mm at most: 0.8 * 1.5 = 1.2 is allowed, 0.8 * 2 = 1.6 is not (though 32 * 1.2 mm
    # is short of 0.75 * 64 mm of context in y and x); z keeps its native 2 mm
    assert plan["settings"]["target_spacing"] == [2.0, 1.2, 1.2]
    assert plan["settings"]["patch_size"] == [16, 32, 32]  # 20 mm / 2 mm = 10 voxels -> 16 (multiple of 8)


def test_settings_the_job_gives_are_kept_and_the_spacing_follows_the_given_patch():
    given = {**NOTHING_GIVEN, "patch_size": [64, 64, 64], "learning_rate": 0.01}
    plan = make_plan(brats_like(), CPU2, given)
    assert plan["settings"]["patch_size"] == [64, 64, 64] and plan["source"]["patch_size"] == "user"
    assert plan["settings"]["learning_rate"] == 0.01 and plan["reasons"]["learning_rate"] == "set in the job"
    assert plan["settings"]["target_spacing"] == [1.0, 1.0, 1.0]  # 64 voxels * 1 mm >= 0.75 * 67.5 mm
    assert plan["settings"]["batch_size"] == 2  # 262144 / 64**3 = 1 -> at least 2


def test_fine_tuning_keeps_the_initial_models_network_normalisation_and_spacing():
    model = {"network": {"name": "unet", "channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 2},
             "normalization": {"mode": "zscore", "window": None, "statistics": "mask"}, "target_spacing": None}
    plan = make_plan(brats_like(), CPU2, NOTHING_GIVEN, initial_model=model)
    s, source = plan["settings"], plan["source"]
    assert s["network"] == model["network"] and s["normalization"] == model["normalization"]
    assert s["target_spacing"] == "native" and source["target_spacing"] == "initial model"
    assert s["learning_rate"] == pytest.approx(3e-4) and source["learning_rate"] == "plan"


def test_ct_is_recognised_and_windowed_on_the_labelled_voxels(tmp_path):
    folder = make_phantom_dataset(tmp_path / "ct", num_cases=2, modality="ct")
    _, specs = read_nnunet_dataset(folder)
    class_map = ClassMap.parse(["lesion=1"])
    fp = fingerprint(specs, class_map, [0.0, 1.0])
    assert fp["modality"] == "ct"
    values = []
    for spec in specs:
        image = sitk.GetArrayFromImage(sitk.ReadImage(spec.images[0]))
        values.append(np.percentile(image[sitk.GetArrayFromImage(sitk.ReadImage(spec.label)) > 0], CT_PERCENTILES))
    window = np.median(values, axis=0)
    plan = make_plan(fp, CPU2, NOTHING_GIVEN)
    assert plan["settings"]["normalization"]["mode"] == "ct"
    np.testing.assert_allclose(plan["settings"]["normalization"]["window"], window, atol=0.05)


def test_fingerprint_of_phantoms_matches_an_independent_count(tmp_path):
    folder = make_phantom_dataset(tmp_path / "mr", num_cases=2, shape=(24, 32, 32), spacing=(2.0, 1.0, 1.0))
    _, specs = read_nnunet_dataset(folder)
    fp = fingerprint(specs, ClassMap.parse(["lesion=1"]), [0.0, 1.0])
    assert fp["median_spacing"] == [2.0, 1.0, 1.0] and fp["median_shape"] == [24, 32, 32]
    assert fp["modality"] == "mr" and not fp["two_d"]
    largest, volumes = [], []
    for spec in specs:
        label = sitk.GetArrayFromImage(sitk.ReadImage(spec.label)) > 0
        volumes.append(label.sum() * 2.0 / 1000)
        components, _ = ndimage.label(label, structure=np.ones((3, 3, 3)))  # 26-connected, as lesions are counted
        largest.append(np.bincount(components.ravel())[1:].max() * 2.0 / 1000)
    lesion = fp["classes"]["lesion"]
    assert lesion["median_volume_ml"] == pytest.approx(np.median(volumes))
    assert lesion["structure_diameter_mm"] == pytest.approx(np.cbrt(6 * np.median(largest) * 1000 / np.pi))
    # the body (non-zero voxels) is the region of interest of cases without an ROI mask
    body = sitk.GetArrayFromImage(sitk.ReadImage(specs[0].images[0])) > 0
    z, y, x = (np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != k))) for k in range(3))
    assert fp["cases"][0]["roi_extent_mm"] == [(z[-1] - z[0] + 1) * 2.0, float(y[-1] - y[0] + 1),
                                               float(x[-1] - x[0] + 1)]


def test_iterations_fit_the_budget_at_the_measured_step_time():
    plan = make_plan(brats_like(), CPU2, NOTHING_GIVEN)
    fit_iterations(plan, step_seconds=0.5, budget_minutes=10)
    # 80% of 600 s at 0.5 s = 960 iterations; about 12 validations: 960 / 12 = 80
    assert plan["settings"]["iterations"] == 960 and plan["settings"]["validation_interval"] == 80
    assert plan["estimated_minutes"] == pytest.approx(10.0)
    slow = fit_iterations(make_plan(brats_like(), CPU2, NOTHING_GIVEN), step_seconds=60.0, budget_minutes=1)
    assert slow["settings"]["iterations"] == 100 and "the run will take longer" in slow["reasons"]["iterations"]


def test_step_time_counts_the_techniques_extra_passes():
    assert [technique_passes(resolve_technique(p)) for p in
            ("vanilla", "asymmetric-adversarial", "asymmetric-mixup", "asymmetric-combination")] == [1, 3, 2, 4]
    import torch
    settings = {"network": {"name": "unet", "channels": [4, 8], "strides": [2], "num_res_units": 1},
                "patch_size": [8, 8, 8], "batch_size": 2}
    seconds = measure_step_seconds(settings, 1, 2, 3, torch.device("cpu"), resolve_technique("vanilla"), 1, 3)
    assert 0 < seconds < 5


def test_train_with_settings_left_out_plans_them_and_stores_the_plan(phantom_dataset, tmp_path):
    from AsymSegTrainer.events import EventSink
    from AsymSegTrainer.network import load_model_file
    from AsymSegTrainer.training import Trainer

    out = tmp_path / "run"
    spec = job_from_dataset(phantom_dataset, ["lesion=1"], ["phantom_000", "phantom_001"], ["phantom_002"],
                            output=str(out), iterations=3, device="cpu", batch_size=2, logit_statistics=False,
                            time_budget_minutes=1.0)
    sink = EventSink(progress_bar=False)
    result = Trainer(job_from_dict(spec, tmp_path), sink).run()
    plans = [e["plan"] for e in sink.events if e["type"] == "plan"]
    assert len(plans) == 1 and [e["type"] for e in sink.events].index("plan") > 0  # after start
    plan = plans[0]
    assert plan["source"]["iterations"] == "user" and plan["source"]["batch_size"] == "user"
    assert plan["source"]["patch_size"] == "plan" and plan["step_seconds"] > 0
    assert json.loads((out / "plan.json").read_text()) == plan
    written = json.loads((out / "job.json").read_text())
    for name in ("target_spacing", "patch_size", "network", "normalization", "learning_rate", "validation_interval"):
        assert written[name] is not None and written[name] == json.loads(json.dumps(plan["settings"][name])), name
    _, meta = load_model_file(result.model)
    assert meta["plan"] == plan and meta["patch_size"] == plan["settings"]["patch_size"]
    chosen = [e for e in sink.events if e["type"] == "checkpoint" and e["kind"] == "chosen"]
    assert len(chosen) == 1 and "smoothed validation mean DSC" in chosen[0]["reason"]
