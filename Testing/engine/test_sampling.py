"""Patch sampler: exact rare-centred share, true centres, border padding, determinism, 2D, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk

from AsymSegTrainer.data import LoadedCase
from AsymSegTrainer.errors import InputError
from AsymSegTrainer.sampling import PatchSampler

OFFSET = 100_000  # voxel ids of the second case start here


def make_case(label: np.ndarray, mask=None, first_id: int = 1, case_id: str = "c") -> LoadedCase:
    """A case whose single channel holds each voxel's id (first_id + flat index): patches reveal their source."""
    image = (np.arange(label.size, dtype=np.float32) + first_id).reshape((1,) + label.shape)
    grid = sitk.Image(list(reversed(label.shape)), sitk.sitkUInt8)
    return LoadedCase(case_id, image, label.astype(np.uint8), mask, (1.0, 1.0, 1.0), grid, grid)


def padded_patch(volume: np.ndarray, centre, patch) -> np.ndarray:
    """Independent reference: pad the volume by a patch on every side, then slice."""
    padded = np.pad(volume, [(p, p) for p in patch])
    start = [c - p // 2 + p for c, p in zip(centre, patch)]
    return padded[tuple(slice(s, s + p) for s, p in zip(start, patch))]


@pytest.fixture
def two_cases():
    rng = np.random.default_rng(0)
    label = rng.choice([0, 1, 2], size=(20, 30, 40), p=[0.6, 0.3, 0.1])
    mask = np.zeros(label.shape, bool)
    mask[3:17, 5:25, 5:35] = True
    other = np.where(rng.random((20, 30, 40)) < 0.1, 2, 0)  # no rare voxel at all
    return [make_case(label, mask), make_case(other, first_id=OFFSET, case_id="d")]


def test_rare_count_true_centres_and_patch_content(two_cases):
    sampler = PatchSampler(two_cases, (5, 7, 9), rare_classes=[1], seed=3)
    patch = np.array([5, 7, 9])
    sources = {True: set(), False: set()}
    for _ in range(20):
        image, label, on_rare = sampler.sample(10)
        assert image.shape == (10, 1, 5, 7, 9) and image.dtype == np.float32
        assert label.shape == (10, 5, 7, 9) and label.dtype == np.int64
        assert on_rare.sum() == 5
        for b in range(10):
            voxel = int(image[b, 0, 2, 3, 4])
            k = int(voxel >= OFFSET)
            case = two_cases[k]
            centre = np.unravel_index(voxel - (OFFSET if k else 1), case.label.shape)
            sources[bool(on_rare[b])].add(k)
            if on_rare[b]:
                assert case.label[centre] == 1
            else:
                assert case.label[centre] != 1 and (case.mask is None or case.mask[centre])
            np.testing.assert_array_equal(image[b, 0], padded_patch(case.image[0], centre, patch))
            np.testing.assert_array_equal(label[b], padded_patch(case.label, centre, patch))
    assert sources == {True: {0}, False: {0, 1}}  # rare patches only from the case that has rare voxels


@pytest.mark.parametrize("fraction, batch, expected", [(0.3, 10, 3), (0.0, 4, 0), (1.0, 4, 4), (0.5, 5, 2),
                                                        (0.5, 1, 0), (0.8, 10, 8)])
def test_rare_count_is_round_of_fraction_times_batch(two_cases, fraction, batch, expected):
    sampler = PatchSampler(two_cases, (3, 3, 3), rare_classes=[1], foreground_fraction=fraction)
    for _ in range(3):
        assert sampler.sample(batch)[2].sum() == expected


def test_corner_patch_is_padded_with_zeros():
    label = np.full((6, 8, 10), 3)  # a non-rare class everywhere, so label padding (0) is visible
    label[0, 0, 0] = 1  # the only rare voxel: rare-centred patches sit on the corner
    case = make_case(label)
    image, patch_label, on_rare = PatchSampler([case], (5, 7, 9), rare_classes=[1], foreground_fraction=1.0).sample(2)
    assert on_rare.all()
    for b in range(2):
        inside = (slice(2, None), slice(3, None), slice(4, None))
        np.testing.assert_array_equal(image[b, 0][inside], case.image[0, :3, :4, :5])
        np.testing.assert_array_equal(patch_label[b][inside], label[:3, :4, :5])
        outside = np.ones((5, 7, 9), bool)
        outside[inside] = False
        assert (image[b, 0][outside] == 0).all() and (patch_label[b][outside] == 0).all()
        assert patch_label[b, 2, 3, 4] == 1


def test_deterministic_given_seed(two_cases):
    def batches(seed):
        sampler = PatchSampler(two_cases, (5, 5, 5), rare_classes=[1], seed=seed)
        return [sampler.sample(6) for _ in range(3)]

    for a, b in zip(batches(7), batches(7)):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(batches(7), batches(8)))


def test_2d_cases():
    label = np.zeros((1, 30, 40))
    label[0, 10:12, 20:25] = 1
    case = make_case(label)
    case.image = np.concatenate([case.image, -case.image])  # two channels
    image, patch_label, on_rare = PatchSampler([case], (1, 16, 16), rare_classes=[1]).sample(6)
    assert image.shape == (6, 2, 1, 16, 16) and patch_label.shape == (6, 1, 16, 16)
    assert on_rare.sum() == 3 and (patch_label[on_rare, 0, 8, 8] == 1).all()
    np.testing.assert_array_equal(image[:, 1], -image[:, 0])


def test_without_rare_voxels_all_patches_are_background(two_cases):
    sampler = PatchSampler(two_cases[1:], (3, 3, 3), rare_classes=[1])
    assert not sampler.has_rare and PatchSampler(two_cases, (3, 3, 3), rare_classes=[1]).has_rare
    assert not sampler.sample(8)[2].any()


def test_invalid_arguments(two_cases):
    with pytest.raises(InputError, match="foreground_fraction"):
        PatchSampler(two_cases, (3, 3, 3), [1], foreground_fraction=1.5)
    with pytest.raises(InputError, match="patch_size"):
        PatchSampler(two_cases, (0, 3, 3), [1])
    unlabelled = make_case(np.zeros((4, 4, 4)), case_id="nolabel")
    unlabelled.label = None
    with pytest.raises(InputError, match="'nolabel' has no label"):
        PatchSampler([unlabelled], (3, 3, 3), [1])
    with pytest.raises(InputError, match="ROI masks"):
        PatchSampler([make_case(np.zeros((4, 4, 4)), mask=np.zeros((4, 4, 4), bool))], (3, 3, 3), [1])


def test_brats_sized_batches_take_milliseconds():
    shape = (155, 240, 240)
    cases = []
    for k in range(2):
        label = np.zeros(shape, np.uint8)
        label[60:90, 100:140, 90:130] = 1
        grid = sitk.Image(list(reversed(shape)), sitk.sitkUInt8)
        cases.append(LoadedCase(f"c{k}", np.zeros((2,) + shape, np.float32), label, None, (1.0, 1.0, 1.0), grid, grid))
    sampler = PatchSampler(cases, (37, 37, 37), rare_classes=[1])
    assert sampler._rare[0].dtype == np.int32 and sampler._background[0].dtype == np.int32  # memory: 4 B per index
    start = time.perf_counter()
    for _ in range(20):
        image, label, on_rare = sampler.sample(10)
    per_batch = (time.perf_counter() - start) / 20
    assert image.shape == (10, 2, 37, 37, 37) and (label[on_rare, 18, 18, 18] == 1).all()
    assert per_batch < 0.05, f"{per_batch * 1000:.1f} ms per batch"
