"""Synthetic phantoms: deterministic, rare lesions of varied size and count, learnable but not trivial."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from AsymSegTrainer.data import Normalization, normalize
from AsymSegTrainer.errors import InputError
from AsymSegTrainer.metrics import component_volumes, connected_components
from AsymSegTrainer.phantoms import make_phantom_dataset, phantom_case


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantoms") / "Dataset900_Phantoms"
    start = time.perf_counter()
    make_phantom_dataset(folder)
    seconds = time.perf_counter() - start
    read = lambda path: sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # noqa: E731
    cases = [(np.stack([read(folder / "imagesTr" / f"phantom_{i:03d}_000{c}.nii.gz") for c in (0, 1)]),
              read(folder / "labelsTr" / f"phantom_{i:03d}.nii.gz")) for i in range(6)]
    return folder, cases, seconds


def test_dataset_files_json_and_speed(dataset):
    folder, cases, seconds = dataset
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "t1", "1": "t2"} and meta["labels"] == {"background": 0, "lesion": 1}
    assert meta["file_ending"] == ".nii.gz" and meta["numTraining"] == 6
    image = sitk.ReadImage(str(folder / "imagesTr" / "phantom_000_0000.nii.gz"))
    assert image.GetSize() == (48, 48, 48) and image.GetSpacing() == pytest.approx((1.0, 1.0, 1.5))
    assert all(img.shape == (2, 48, 48, 48) and img.dtype == np.float32 and lab.dtype == np.uint8
               for img, lab in cases)
    assert seconds < 2.0


def test_deterministic_for_a_seed(dataset):
    _, cases, _ = dataset
    for i in (0, 5):
        image, label = phantom_case(np.random.default_rng([0, i]))  # the generator behind case i of seed 0
        np.testing.assert_array_equal(image, cases[i][0])  # and what the files hold
        np.testing.assert_array_equal(label, cases[i][1])
    other, _ = phantom_case(np.random.default_rng([1, 0]))
    assert not np.array_equal(other, cases[0][0])


def test_lesions_are_rare_and_vary_in_size_and_count(dataset):
    _, cases, _ = dataset
    counts, sizes = [], []
    for image, label in cases:
        foreground = int(label.sum())
        assert set(np.unique(label)) == {0, 1}
        assert foreground * 100 <= label.size - foreground  # foreground:background <= 1:100
        components, n = ndimage.label(label)
        assert 1 <= n <= 4
        counts.append(n)
        sizes += np.bincount(components.ravel())[1:].tolist()
        assert (image[:, label == 1] != 0).all()  # lesions lie inside the body
    assert len(set(counts)) >= 3 and max(sizes) >= 5 * min(sizes)


def test_multi_lesion_phantoms_have_separate_lesions_of_every_size(dataset, tmp_path):
    folder = make_phantom_dataset(tmp_path / "multi", num_cases=2, multi_lesion=True)
    settings = json.loads((folder / "dataset.json").read_text())["settings"]
    assert settings["multi_lesion"] is True
    assert "multi_lesion" not in json.loads((dataset[0] / "dataset.json").read_text())["settings"]  # default as before
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "phantom_001.nii.gz")))
    np.testing.assert_array_equal(label, phantom_case(np.random.default_rng([0, 1]), multi_lesion=True)[1])
    bins = set()
    for i in range(6):
        image, label = phantom_case(np.random.default_rng([0, i]), multi_lesion=True)
        assert label.sum() * 100 <= label.size - label.sum() and (image[:, label == 1] != 0).all()
        components, n = connected_components(label == 1)
        assert 4 <= n <= 8  # MULTI_LESION_COUNT lesions, none touching another
        volumes = component_volumes(components, n, (1.5, 1.0, 1.0))[1:]
        bins |= set(np.digitize(volumes, [10.0, 100.0]).tolist())
        assert volumes.min() < 10 and volumes.max() >= 100  # a small and a large lesion in every case
    assert bins == {0, 1, 2}  # small, medium and large lesions


def best_threshold_dice(score: np.ndarray, label: np.ndarray) -> float:
    truth = label.astype(bool)
    return max(2 * (truth & (score > t)).sum() / (truth.sum() + (score > t).sum())
               for t in np.quantile(score, np.linspace(0.9, 0.9999, 100)))


def test_lesions_need_both_channels(dataset):
    _, cases, _ = dataset
    for image, label in cases:
        body = image[0] != 0
        z = normalize(image, None, Normalization())  # z-score over the body (non-zero voxels)
        lesion = label == 1
        assert (z[:, lesion].mean(axis=1) > z[:, body & ~lesion].mean(axis=1) + 0.5).all()  # visible in both
        single = max(best_threshold_dice(z[c][body], label[body]) for c in (0, 1))
        combined = best_threshold_dice((z[0] + z[1])[body], label[body])
        assert single < 0.8 and combined > single  # one channel alone is not enough; noise keeps it imperfect
        assert combined < 0.95


def test_geometry_options(tmp_path):
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    folder = make_phantom_dataset(tmp_path / "d", num_cases=1, shape=(10, 12, 14), spacing=(2.0, 0.5, 0.7),
                                  direction=direction, origin=(5.0, -3.0, 8.0))
    for path in [folder / "imagesTr" / "phantom_000_0001.nii.gz", folder / "labelsTr" / "phantom_000.nii.gz"]:
        image = sitk.ReadImage(str(path))
        assert image.GetSize() == (14, 12, 10) and image.GetSpacing() == pytest.approx((0.7, 0.5, 2.0))
        assert image.GetDirection() == pytest.approx(direction) and image.GetOrigin() == pytest.approx((5, -3, 8))
    with pytest.raises(InputError, match="direction"):
        make_phantom_dataset(tmp_path / "e", num_cases=1, shape=(10, 10, 10), direction=(1, 0, 0))


def test_never_overwrites_a_folder(tmp_path):
    folder = make_phantom_dataset(tmp_path / "d", num_cases=1, shape=(10, 10, 10))
    label = folder / "labelsTr" / "phantom_000.nii.gz"
    stamp = label.stat().st_mtime_ns
    assert make_phantom_dataset(folder, num_cases=1, shape=(10, 10, 10)) == folder  # same settings: reused
    assert label.stat().st_mtime_ns == stamp
    with pytest.raises(InputError, match="left untouched"):
        make_phantom_dataset(folder, num_cases=1, shape=(10, 10, 10), seed=1)
    assert label.stat().st_mtime_ns == stamp
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        make_phantom_dataset(user)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
