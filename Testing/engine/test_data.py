"""Data layer: I/O round trips, geometry checks, class maps, normalisation, resampling, nnU-Net reader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from AsymSegTrainer.data import (CaseSpec, ClassMap, LoadedCase, Normalization, check_same_geometry, load_case,
                                 normalize, read_image, read_nnunet_dataset, resample_to_spacing, spacing_zyx,
                                 to_reference, write_image)
from AsymSegTrainer.errors import InputError
from AsymSegTrainer.phantoms import make_phantom_dataset

# A rotation about an oblique axis: non-identity, non-diagonal direction cosines.
DIRECTION = tuple(sitk.VersorTransform((1.0, 2.0, 3.0), 0.4).GetMatrix())


def reference_image(size_xyz=(20, 16, 12), spacing_xyz=(0.8, 1.1, 2.5), origin=(-10.0, 5.0, 30.0),
                    direction=DIRECTION) -> sitk.Image:
    image = sitk.Image(list(size_xyz), sitk.sitkUInt8)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def blob(shape_zyx, spacing_zyx, radius_mm) -> np.ndarray:
    """Ball of the given radius (mm) in the middle of the grid, as uint8."""
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape_zyx, spacing_zyx)], indexing="ij")
    return (sum(g ** 2 for g in grids) <= radius_mm ** 2).astype(np.uint8)


def dice(a, b) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# ---------------------------------------------------------------------------- I/O


@pytest.mark.parametrize("ending", [".nii.gz", ".nrrd", ".mha"])
def test_write_read_round_trip_keeps_values_and_geometry(tmp_path, ending):
    reference = reference_image()
    array = np.random.default_rng(0).normal(size=(12, 16, 20)).astype(np.float32)
    path = write_image(array, reference, tmp_path / "sub" / f"out{ending}")  # parent folder created
    back = read_image(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)
    assert back.GetSize() == (20, 16, 12)
    np.testing.assert_allclose(back.GetSpacing(), (0.8, 1.1, 2.5), atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), (-10.0, 5.0, 30.0), atol=1e-5)
    np.testing.assert_allclose(back.GetDirection(), DIRECTION, atol=1e-6)
    assert spacing_zyx(back) == pytest.approx((2.5, 1.1, 0.8))
    assert [p.name for p in path.parent.iterdir()] == [f"out{ending}"]  # no temporary file left


def test_write_multichannel_bool_and_2d(tmp_path):
    reference = reference_image()
    probabilities = np.random.default_rng(1).random((3, 12, 16, 20)).astype(np.float32)
    back = read_image(write_image(probabilities, reference, tmp_path / "p.nrrd"))
    assert back.GetNumberOfComponentsPerPixel() == 3
    np.testing.assert_array_equal(np.moveaxis(sitk.GetArrayFromImage(back), -1, 0), probabilities)

    flat = reference_image(size_xyz=(5, 4), spacing_xyz=(0.5, 2.0), origin=(1.0, 2.0), direction=(0, 1, 1, 0))
    mask = np.zeros((1, 4, 5), bool)
    mask[0, 1, 3] = True
    back = read_image(write_image(mask, flat, tmp_path / "m.nii.gz"))
    assert back.GetDimension() == 2 and back.GetPixelID() == sitk.sitkUInt8
    assert back.GetDirection() == (0, 1, 1, 0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), mask[0])


def test_write_rejects_unknown_extension_and_replaces_atomically(tmp_path):
    with pytest.raises(InputError, match=r"out\.png"):
        write_image(np.zeros((12, 16, 20)), reference_image(), tmp_path / "out.png")
    target = tmp_path / "out.nii.gz"
    write_image(np.zeros((12, 16, 20), np.uint8), reference_image(), target)
    write_image(np.ones((12, 16, 20), np.uint8), reference_image(), target)
    assert sitk.GetArrayFromImage(read_image(target)).min() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.nii.gz") as info:
        read_image(tmp_path / "missing.nii.gz")
    assert "not found" in info.value.message
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"this is not a volume")
    with pytest.raises(InputError, match="corrupt.nii.gz") as info:
        read_image(corrupt)
    assert "NIfTI" in info.value.hint and "sitk" not in info.value.message
    noise = np.random.default_rng(0).random((12, 16, 20))  # incompressible: half the file keeps the header
    whole = write_image(noise, reference_image(), tmp_path / "whole.nii.gz").read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(whole[: len(whole) // 2])  # SimpleITK alone would read it, zero-filled
    with pytest.raises(InputError, match="truncated.nii.gz: the compressed file is truncated"):
        read_image(truncated)


# ---------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("field, change, shown", [
    ("spacing", dict(spacing_xyz=(0.8, 1.1, 3.0)), "(0.8, 1.1, 3)"),
    ("origin", dict(origin=(-10.0, 5.0, 31.0)), "(-10, 5, 31)"),
    ("size", dict(size_xyz=(20, 16, 13)), "(20, 16, 13)"),
    ("direction", dict(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)), "(1, 0, 0, 0, 1, 0, 0, 0, 1)"),
])
def test_geometry_mismatch_names_both_files_field_and_values(field, change, shown):
    with pytest.raises(InputError) as info:
        check_same_geometry(reference_image(), "case_0000.nii.gz", reference_image(**change), "case_label.nii.gz")
    message = info.value.message
    assert "case_0000.nii.gz" in message and "case_label.nii.gz" in message
    assert f"{field} differs" in message and shown in message


def test_geometry_within_tolerance_passes():
    check_same_geometry(reference_image(), "a", reference_image(origin=(-10.0, 5.0, 30.0 + 1e-4)), "b")


# ---------------------------------------------------------------------------- class map


def test_class_map_lookup_by_hand():
    class_map = ClassMap({"background": [0, 2], "tumor_core": [1, 3, 4], "edema": [7]})
    raw = np.array([[0, 1, 2], [3, 4, 7]], np.int16)
    mapped = class_map.lookup(raw)
    np.testing.assert_array_equal(mapped, [[0, 1, 0], [1, 1, 2]])
    assert mapped.dtype == np.uint8
    assert class_map.names == ["background", "tumor_core", "edema"] and class_map.num_classes == 3
    np.testing.assert_array_equal(class_map.lookup(raw.astype(np.float32)), mapped)  # float-stored labels


def test_class_map_lists_unlisted_values_and_names_the_file():
    class_map = ClassMap({"background": [0], "lesion": [1]})
    with pytest.raises(InputError, match=r"lab\.nii\.gz: label values \[-1, 5, 9\] are not in the class map"):
        class_map.lookup(np.array([0, 1, 5, 9, 9, -1], np.int32), source="lab.nii.gz")
    lenient = ClassMap({"background": [0], "lesion": [1]}, unlisted="background")
    np.testing.assert_array_equal(lenient.lookup(np.array([0, 1, 5, 9], np.uint8)), [0, 1, 0, 0])
    with pytest.raises(InputError, match="must be integers; found"):
        class_map.lookup(np.array([0.0, 0.5]))
    with pytest.raises(InputError, match="does not look like a label map"):
        class_map.lookup(np.array([0, 1, 100000], np.int32))


@pytest.mark.parametrize("classes, unlisted, problem", [
    ({"background": [0], "a": [1, 2], "b": [2]}, "error", "label value 2 is in both 'a' and 'b'"),
    ({"background": [0], "a": [-1]}, "error", "non-negative integer"),
    ({"background": [0], "a": [1.5]}, "error", "non-negative integer"),
    ({"background": [0]}, "error", "at least 2 classes"),
    ({"background": [], "a": [1]}, "error", "'background' has no label values"),
    ({"background": [0], "a": []}, "background", "'a' has no label values"),
    ({"background": [0], "a": [1]}, "maybe", "unlisted must be"),
])
def test_class_map_validation_names_the_classes_field(classes, unlisted, problem):
    with pytest.raises(InputError) as info:
        ClassMap(classes, unlisted)
    assert info.value.message.startswith("classes:") and problem in info.value.message


def test_class_map_parse_and_dict_round_trip():
    implied = ClassMap.parse(["tumor_core=1,3,4", "edema = 2"])
    assert implied.classes == {"background": [], "tumor_core": [1, 3, 4], "edema": [2]}
    assert implied.unlisted == "background"
    np.testing.assert_array_equal(implied.lookup(np.array([0, 1, 2, 3, 4, 9])), [0, 1, 2, 1, 1, 0])
    explicit = ClassMap.parse(["lesion=1", "background=0"])
    assert explicit.names == ["background", "lesion"] and explicit.unlisted == "error"
    assert ClassMap.from_dict(json.loads(json.dumps(explicit.to_dict()))) == explicit
    for bad, problem in [("tumor", "not NAME=VALUES"), ("a=1,x", "not an integer"), ("a=", "'a' has no label"),
                         ("background=", "'background' has no label")]:
        with pytest.raises(InputError, match=problem):
            ClassMap.parse([bad, "b=5"])
    with pytest.raises(InputError, match="given twice"):
        ClassMap.parse(["a=1", "a=2"])


def test_class_map_from_nnunet_labels_orders_by_value():
    class_map = ClassMap.from_nnunet_labels({"edema": 2, "background": 0, "core": 1})
    assert class_map.classes == {"background": [0], "core": [1], "edema": [2]} and class_map.unlisted == "error"
    with pytest.raises(InputError, match="no class has value 0"):
        ClassMap.from_nnunet_labels({"a": 1, "b": 2})


# ---------------------------------------------------------------------------- normalisation


def test_zscore_over_voxels_other_than_a_zero_background_by_hand():
    image = np.array([[0.0, 0.0, 1.0, 2.0, 3.0], [5.0, 5.0, 5.0, 5.0, 5.0]])[:, None, None, :]
    out = normalize(image, None, Normalization("zscore"))
    std = np.sqrt(2 / 3)  # of 1, 2, 3 (population std)
    np.testing.assert_allclose(out[0].ravel(), [-2 / std, -2 / std, -1 / std, 0.0, 1 / std], rtol=1e-6)
    np.testing.assert_allclose(out[1], 0.0)  # constant channel: no division by zero
    assert out.dtype == np.float32


def test_zscore_without_mask_skips_a_constant_background_at_any_value():
    rng = np.random.default_rng(0)
    inside = rng.normal(2.0, 1.0, 600)  # tissue stays above the background value
    pre_normalised = np.concatenate([np.full(400, -3.62), inside])  # BRATS-like: -3.62 outside the brain
    out = normalize(pre_normalised[None, None, None, :], None, Normalization())[0, 0, 0]
    np.testing.assert_allclose([out[400:].mean(), out[400:].std()], [0.0, 1.0], atol=1e-6)
    # a minimum shared by few voxels (< 10%) is tissue, not background: every voxel counts
    few = np.concatenate([np.full(30, -3.62), inside])
    out = normalize(few[None, None, None, :], None, Normalization())[0, 0, 0]
    np.testing.assert_allclose([out.mean(), out.std()], [0.0, 1.0], atol=1e-6)


def test_zscore_over_mask_keeps_outside_on_the_same_scale():
    image = np.array([[10.0, 20.0, 30.0, 100.0]])[:, None, None, :]
    mask = np.array([True, True, True, False])[None, None, :]
    out = normalize(image, mask, Normalization(statistics="mask"))
    std = np.sqrt(200 / 3)  # of 10, 20, 30 around their mean 20
    np.testing.assert_allclose(out.ravel(), [-10 / std, 0.0, 10 / std, 80 / std], rtol=1e-6)
    all_zero = normalize(np.zeros((1, 2, 2, 2)), None, Normalization())
    np.testing.assert_array_equal(all_zero, 0.0)


def test_zscore_over_the_foreground_ignores_the_mask_so_image_files_alone_normalise_alike():
    # 0 = background outside the head (>= 10% of the volume); the mask leaves out the 100
    image = np.array([0.0, 0.0, 0.0, 10.0, 20.0, 30.0, 100.0])[None, None, None, :]
    mask = np.array([False, False, False, True, True, True, False])[None, None, :]
    with_mask, without = normalize(image, mask, Normalization()), normalize(image, None, Normalization())
    np.testing.assert_array_equal(with_mask, without)
    inside = np.array([10.0, 20.0, 30.0, 100.0])  # the statistics come from the non-background voxels
    np.testing.assert_allclose(without.ravel()[3:], (inside - inside.mean()) / inside.std(), rtol=1e-6)
    assert Normalization().to_dict()["statistics"] == "foreground"
    with pytest.raises(InputError, match="normalization.statistics"):
        Normalization(statistics="roi")


def test_ct_window_and_none():
    image = np.array([-1000.0, -100.0, 70.0, 240.0, 3000.0])[None, None, None, :]
    out = normalize(image, None, Normalization("ct", (-100, 240)))
    np.testing.assert_allclose(out.ravel(), [-1.0, -1.0, 0.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_array_equal(normalize(image, None, Normalization("none")), image.astype(np.float32))


def test_normalization_validation_and_dict():
    assert Normalization.from_dict({"mode": "ct", "window": [-100, 240]}).window == (-100.0, 240.0)
    assert Normalization.from_dict(Normalization("ct", (0, 1)).to_dict()) == Normalization("ct", (0.0, 1.0))
    for kwargs, problem in [(dict(mode="minmax"), "normalization.mode"), (dict(mode="ct"), "normalization.window"),
                            (dict(mode="ct", window=(5, 1)), "low < high"),
                            (dict(mode="zscore", window=(0, 1)), "only used with mode 'ct'")]:
        with pytest.raises(InputError, match=problem):
            Normalization(**kwargs)
    with pytest.raises(InputError, match=r"unknown field\(s\) \['windw'\]"):
        Normalization.from_dict({"mode": "ct", "windw": [0, 1]})


# ---------------------------------------------------------------------------- resampling


def test_resample_to_spacing_and_back_restores_label_and_geometry():
    reference = reference_image(size_xyz=(40, 36, 16), spacing_xyz=(0.8, 0.9, 2.5))
    label = blob((16, 36, 40), (2.5, 0.9, 0.8), radius_mm=9.0)
    label_image = sitk.GetImageFromArray(label)
    label_image.CopyInformation(reference)

    resampled = resample_to_spacing(label_image, (1.25, 1.5, 1.6), sitk.sitkNearestNeighbor)
    assert spacing_zyx(resampled) == pytest.approx((1.25, 1.5, 1.6))
    assert resampled.GetSize() == (20, 22, 32)  # round(40*0.8/1.6), round(36*0.9/1.5), round(16*2.5/1.25)
    assert resampled.GetDirection() == pytest.approx(reference.GetDirection())
    centre = lambda img: np.array(img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in img.GetSize()]))
    np.testing.assert_allclose(centre(resampled), centre(reference), atol=1e-9)
    # The blob is the same physical ball on the new grid.
    expected = blob((32, 22, 20), (1.25, 1.5, 1.6), radius_mm=9.0)
    assert dice(sitk.GetArrayFromImage(resampled), expected) > 0.9

    grid = sitk.Image(resampled.GetSize(), sitk.sitkUInt8)
    grid.CopyInformation(resampled)
    back = to_reference(sitk.GetArrayFromImage(resampled), grid, reference, nearest=True)
    assert back.shape == label.shape and back.dtype == np.uint8
    assert dice(back, label) > 0.9
    probabilities = np.stack([1.0 - sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(resampled)])
    back = to_reference(probabilities.astype(np.float32), grid, reference, nearest=False)
    assert back.shape == (2,) + label.shape
    np.testing.assert_allclose(back.sum(0), 1.0, atol=1e-5)  # linear; the grid covers every reference voxel
    same = np.zeros((16, 36, 40), np.uint8)
    assert to_reference(same, reference, reference, nearest=True) is same


# ---------------------------------------------------------------------------- cases


def write_case(folder: Path, reference: sitk.Image, label: np.ndarray, mask: np.ndarray | None = None) -> CaseSpec:
    shape = label.shape
    rng = np.random.default_rng(3)
    for c in range(2):
        write_image(rng.normal(100 * (c + 1), 10, shape).astype(np.float32), reference, folder / f"img_{c}.nii.gz")
    write_image(label, reference, folder / "label.nrrd")
    if mask is not None:
        write_image(mask, reference, folder / "mask.nii.gz")
    return CaseSpec("c1", ["img_0.nii.gz", "img_1.nii.gz"], "label.nrrd", "mask.nii.gz" if mask is not None else None)


def test_load_case_relative_paths_normalisation_and_label(tmp_path):
    reference = reference_image()
    raw = np.zeros((12, 16, 20), np.uint8)
    raw[4:8, 5:9, 6:10] = 4
    raw[5, 6, 7] = 2
    mask = np.zeros_like(raw, bool)
    mask[2:10, 2:14, 2:18] = True
    spec = write_case(tmp_path, reference, raw, mask)
    assert CaseSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(InputError, match=r"case: missing field\(s\) \['id'\]"):
        CaseSpec.from_dict({"images": ["a.nii.gz"]})
    case = load_case(spec, ClassMap.parse(["core=4", "edema=2"]), Normalization(statistics="mask"), base_dir=tmp_path)
    assert isinstance(case, LoadedCase) and case.id == "c1" and case.role == "train"
    assert case.image.shape == (2, 12, 16, 20) and case.image.dtype == np.float32
    np.testing.assert_allclose(case.image[:, case.mask].mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(case.image[:, case.mask].std(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(case.mask, mask)
    expected = np.where(raw == 4, 1, np.where(raw == 2, 2, 0))
    np.testing.assert_array_equal(case.label, expected)
    assert case.spacing == pytest.approx((2.5, 1.1, 0.8))
    assert case.grid is case.reference and case.reference.GetSize() == (20, 16, 12)
    assert case.reference.GetDirection() == pytest.approx(DIRECTION)
    assert load_case(spec, None, Normalization(), base_dir=tmp_path).label is None


def test_load_case_resamples_and_outputs_return_to_input_geometry(tmp_path):
    reference = reference_image(size_xyz=(40, 36, 16), spacing_xyz=(0.8, 0.9, 2.5))
    label = blob((16, 36, 40), (2.5, 0.9, 0.8), radius_mm=9.0)
    spec = write_case(tmp_path, reference, label, mask=np.ones_like(label, bool))
    case = load_case(spec, ClassMap({"background": [0], "lesion": [1]}), Normalization(), (1.25, 1.5, 1.6),
                     base_dir=tmp_path)
    assert case.spacing == pytest.approx((1.25, 1.5, 1.6))
    assert case.image.shape == (2, 32, 22, 20) and case.label.shape == case.mask.shape == (32, 22, 20)
    assert case.reference.GetSize() == (40, 36, 16) and case.grid.GetSize() == (20, 22, 32)
    out = tmp_path / "out" / "prediction.nii.gz"
    write_image(to_reference(case.label, case.grid, case.reference, nearest=True), case.reference, out)
    written = read_image(out)
    check_same_geometry(read_image(tmp_path / "img_0.nii.gz"), "input", written, "prediction", tolerance=1e-6)
    assert dice(sitk.GetArrayFromImage(written), label) > 0.9


def test_load_case_geometry_mismatch_and_unlisted_values_name_files(tmp_path):
    raw = np.zeros((12, 16, 20), np.uint8)
    raw[1, 1, 1] = 9
    spec = write_case(tmp_path, reference_image(), raw)
    with pytest.raises(InputError, match=r"label\.nrrd: label values \[9\]"):
        load_case(spec, ClassMap({"background": [0], "lesion": [1]}), Normalization(), base_dir=tmp_path)
    write_image(raw, reference_image(origin=(0.0, 0.0, 0.0)), tmp_path / "label.nrrd")
    with pytest.raises(InputError) as info:
        load_case(spec, ClassMap({"background": [0], "lesion": [9]}), Normalization(), base_dir=tmp_path)
    assert "img_0.nii.gz" in info.value.message and "label.nrrd" in info.value.message
    assert "origin differs" in info.value.message


# ---------------------------------------------------------------------------- nnU-Net layout


def test_read_nnunet_dataset_on_phantoms(tmp_path):
    folder = make_phantom_dataset(tmp_path / "Dataset900_Phantoms", num_cases=2, shape=(12, 12, 12))
    (folder / "masksTr").mkdir()
    shutil.copy(folder / "labelsTr" / "phantom_001.nii.gz", folder / "masksTr" / "phantom_001.nii.gz")
    dataset, cases = read_nnunet_dataset(folder)
    assert dataset["channel_names"] == {"0": "t1", "1": "t2"} and dataset["labels"] == {"background": 0, "lesion": 1}
    assert [c.id for c in cases] == ["phantom_000", "phantom_001"]
    assert cases[0].images == [str(folder.resolve() / "imagesTr" / f"phantom_000_000{c}.nii.gz") for c in (0, 1)]
    assert cases[0].label == str(folder.resolve() / "labelsTr" / "phantom_000.nii.gz")
    assert cases[0].mask is None and cases[1].mask.endswith("masksTr/phantom_001.nii.gz")
    case = load_case(cases[1], ClassMap.from_nnunet_labels(dataset["labels"]), Normalization())
    np.testing.assert_array_equal(case.mask, case.label == 1)

    (folder / "imagesTr" / "phantom_001_0001.nii.gz").unlink()
    with pytest.raises(InputError, match="phantom_001_0001.nii.gz"):
        read_nnunet_dataset(folder)
    (folder / "dataset.json").unlink()
    with pytest.raises(InputError, match="dataset.json not found"):
        read_nnunet_dataset(folder)


@pytest.mark.slow
def test_read_nnunet_dataset_on_brats(brats):
    dataset, cases = read_nnunet_dataset(brats)
    assert len(cases) == 6 and all(len(c.images) == 2 and c.mask for c in cases)
    case = load_case(cases[0], ClassMap.parse(["tumor_core=1,3,4"]),
                     Normalization(), target_spacing=(1.0, 1.0, 1.0))
    assert case.id == "brats_2013_pat0001_1" and case.image.shape == (2, 155, 240, 240)
    assert int((case.label == 1).sum()) == 58674  # tumor_core voxels per the dataset's README
    assert int(case.mask.sum()) == 1487565  # ROI voxels per the README
    assert case.grid is case.reference  # already at the target spacing: not resampled
