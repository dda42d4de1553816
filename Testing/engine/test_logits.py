"""Tests of AsymSegTrainer.logits: per-class logit histograms and moments, and the paper's dz."""

import json
import math
import time
import tracemalloc

import numpy as np
import pytest
import torch

from AsymSegTrainer import logits as logits_module
from AsymSegTrainer.logits import DEFAULT_BIN_EDGES, LogitStatistics, logit_shift

EDGES = [-2.0, -1.0, 0.0, 1.0, 2.0]
# Tiny case: spatial (2, 3), two channels. Class 0 at (0,0), (0,1), (1,2); class 1 at the rest.
TINY_LABELS = np.array([[0, 0, 1], [1, 1, 0]])
TINY_LOGITS = np.array([[[-1.5, 0.5, 1.0], [2.0, -3.0, -0.5]],
                        [[0.0, 1.5, -1.0], [0.25, 3.0, 1.0]]], dtype=np.float32)


def tiny_stats(mask=None):
    stats = LogitStatistics(["bg", "fg", "edema"], ["bg", "fg"], EDGES)
    stats.update(TINY_LOGITS, TINY_LABELS, mask)
    return stats


def random_case(rng, shape, num_classes=3, num_channels=3):
    labels = rng.integers(0, num_classes, size=shape)
    logits = rng.normal(size=(num_channels,) + shape) * 9.0 + labels * 2.0  # some values beyond +-20
    return logits.astype(np.float32), labels


def numpy_reference(cases, g, c):
    """Values of channel c over class g in the concatenation of the cases, as float64."""
    return np.concatenate([z[c][y == g] for z, y in cases]).astype(np.float64)


def test_hand_computed_tiny_volume():
    stats = tiny_stats()
    assert [stats.count(g) for g in range(3)] == [3, 3, 0]
    # Class 0, channel 0: -1.5, 0.5, -0.5. Channel 1: 0.0, 1.5, 1.0 (1.0 opens bin [1, 2]).
    assert stats.histogram(0, 0)[1].tolist() == [1, 1, 1, 0]
    assert stats.histogram("bg", "fg")[1].tolist() == [0, 0, 1, 2]
    assert stats.mean(0, 0) == pytest.approx(-0.5, abs=1e-15)
    assert stats.std(0, 0) == pytest.approx(math.sqrt(2 / 3), rel=1e-14)
    assert stats.mean(0, 1) == pytest.approx(2.5 / 3, rel=1e-14)
    assert stats.std(0, 1) == pytest.approx(math.sqrt(7 / 18), rel=1e-14)
    # Class 1, channel 0: 1.0, 2.0 (the last edge belongs to the last bin), -3.0 (underflow).
    edges, counts = stats.histogram(1, 0)
    assert edges.tolist() == EDGES and counts.tolist() == [0, 0, 0, 2]
    assert (stats.underflow(1, 0), stats.overflow(1, 0)) == (1, 0)
    assert stats.mean(1, 0) == pytest.approx(0.0, abs=1e-15)
    assert stats.std(1, 0) == pytest.approx(math.sqrt(14 / 3), rel=1e-14)
    assert (stats.minimum(1, 0), stats.maximum(1, 0)) == (-3.0, 2.0)
    # Class 1, channel 1: -1.0, 0.25, 3.0 (overflow).
    assert stats.histogram(1, 1)[1].tolist() == [0, 1, 1, 0]
    assert (stats.underflow(1, 1), stats.overflow(1, 1)) == (0, 1)
    assert stats.mean(1, 1) == pytest.approx(0.75, rel=1e-14)
    assert stats.std(1, 1) == pytest.approx(math.sqrt(8.375 / 3), rel=1e-14)
    # A class without voxels has no moments and a None summary.
    assert stats.mean("edema", 0) is None and stats.std(2, 1) is None and stats.quantile(2, 0, 0.5) is None
    summary = stats.summary()
    assert summary["edema"] is None
    fg_bg = summary["fg"]["bg"]
    assert (fg_bg["count"], fg_bg["min"], fg_bg["max"]) == (3, -3.0, 2.0)
    assert fg_bg["std"] == pytest.approx(math.sqrt(14 / 3), rel=1e-14)
    assert list(fg_bg["quantiles"]) == ["5", "25", "50", "75", "95"]


def test_mask_excludes_voxels():
    mask = np.ones((2, 3), bool)
    mask[0, 0] = mask[1, 1] = False  # drops -1.5 from class 0 and -3.0 / 3.0 from class 1
    stats = tiny_stats(mask)
    assert [stats.count(g) for g in range(3)] == [2, 2, 0]
    assert stats.histogram(0, 0)[1].tolist() == [0, 1, 1, 0]
    assert (stats.mean(0, 0), stats.std(0, 0)) == (0.0, 0.5)
    assert (stats.mean(1, 0), stats.std(1, 0)) == (1.5, 0.5)
    assert stats.underflow(1, 0) == 0 and stats.overflow(1, 1) == 0
    assert stats.minimum(1, 1) == -1.0 and stats.maximum(1, 1) == 0.25


def test_streaming_over_volumes_and_chunks_equals_one_pass_over_the_concatenation(monkeypatch):
    monkeypatch.setattr(logits_module, "_CHUNK", 50)  # many chunks per volume as well
    rng = np.random.default_rng(0)
    cases = [random_case(rng, shape) for shape in [(7, 11, 5), (13, 4, 9), (6, 6, 6)]]
    stats = LogitStatistics(["bg", "a", "b"])
    for z, y in cases:
        stats.update(z, y)
    out_of_range = 0
    for g in range(3):
        for c in range(3):
            v = numpy_reference(cases, g, c)
            assert stats.count(g) == v.size
            assert np.array_equal(stats.histogram(g, c)[1], np.histogram(v, DEFAULT_BIN_EDGES)[0])
            assert stats.underflow(g, c) == np.sum(v < -20) and stats.overflow(g, c) == np.sum(v > 20)
            assert stats.mean(g, c) == pytest.approx(v.mean(), rel=1e-9)
            assert stats.std(g, c) == pytest.approx(v.std(), rel=1e-9)
            assert (stats.minimum(g, c), stats.maximum(g, c)) == (v.min(), v.max())
            out_of_range += stats.underflow(g, c) + stats.overflow(g, c)
    assert out_of_range > 0  # the data exercise the under/overflow counters


def test_merge_equals_sequential_update():
    rng = np.random.default_rng(1)
    cases = [random_case(rng, (9, 8, 7)) for _ in range(3)]
    sequential, first, second = (LogitStatistics(["bg", "a", "b"]) for _ in range(3))
    for z, y in cases:
        sequential.update(z, y)
    for z, y in cases[:2]:
        first.update(z, y)
    second.update(*cases[2])
    merged, expected = first.merge(second).to_dict(), sequential.to_dict()
    for key in ("count", "histogram", "underflow", "overflow", "min", "max"):
        assert merged[key] == expected[key], key
    for key in ("mean", "m2"):
        np.testing.assert_allclose(merged[key], expected[key], rtol=1e-12)


def test_quantile_within_one_bin_width_of_numpy():
    rng = np.random.default_rng(2)
    z = (rng.normal(size=(2, 20000)) * 4.0).astype(np.float32)
    y = rng.integers(0, 2, size=20000)
    stats = LogitStatistics(["bg", "fg"])
    stats.update(z, y)
    width = DEFAULT_BIN_EDGES[1] - DEFAULT_BIN_EDGES[0]
    v = z[1][y == 1].astype(np.float64)
    for q in (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99):
        assert abs(stats.quantile(1, 1, q) - np.quantile(v, q)) <= width, q
    assert (stats.quantile(1, 1, 0.0), stats.quantile(1, 1, 1.0)) == (v.min(), v.max())


def test_out_of_range_values_are_counted_and_enter_the_moments_exactly():
    z = np.array([[-50.0, -21.0, 0.1, 20.0, 20.5, 100.0]])
    stats = LogitStatistics(["only"])
    stats.update(z, np.zeros(6, int))
    assert (stats.underflow(0, 0), stats.overflow(0, 0)) == (2, 2)
    assert stats.histogram(0, 0)[1].sum() == 2 and stats.histogram(0, 0)[1][-1] == 1  # 20.0 is in the last bin
    assert stats.mean(0, 0) == pytest.approx(z.mean(), rel=1e-15)
    assert stats.std(0, 0) == pytest.approx(z.std(), rel=1e-14)
    # Quantiles inside the underflow / overflow reach the exact extremes.
    assert (stats.quantile(0, 0, 0.0), stats.quantile(0, 0, 1.0)) == (-50.0, 100.0)
    assert -50.0 < stats.quantile(0, 0, 0.1) < -20.0 and 20.0 < stats.quantile(0, 0, 0.95) < 100.0


def test_logit_shift_hand_computed():
    # spatial (4,): voxels 0, 1 are background, 2, 3 foreground; channel 0 = bg logit, 1 = fg logit.
    names, channels = ["bg", "fg", "edema"], ["bg", "fg"]
    train, unseen = LogitStatistics(names, channels), LogitStatistics(names, channels)
    train.update(np.array([[3.0, 5.0, -4.0, -6.0], [-1.0, -1.0, 4.0, 6.0]]), np.array([0, 0, 1, 1]))
    unseen.update(np.array([[3.0, -1.0, -2.0], [0.0, 1.0, 3.0]]), np.array([0, 1, 1]))
    shift = logit_shift(train, unseen)
    assert shift["bg"]["bg"] == pytest.approx(3.0 - 4.0)
    assert shift["bg"]["fg"] == pytest.approx(0.0 - 1.0)
    assert shift["fg"]["bg"] == pytest.approx(1.5 - 5.0)
    assert shift["fg"]["fg"] == pytest.approx(2.0 - 5.0)
    assert shift["edema"] == {"bg": None, "fg": None}


def test_torch_input_with_batch_dimension_matches_numpy():
    rng = np.random.default_rng(3)
    z, y = random_case(rng, (5, 6, 7), num_classes=2, num_channels=2)
    z = z.astype(np.float16)
    mask = rng.random((5, 6, 7)) < 0.7
    from_numpy, from_torch = LogitStatistics(["bg", "fg"]), LogitStatistics(["bg", "fg"])
    from_numpy.update(z, y, mask)
    from_torch.update(torch.from_numpy(z)[None], torch.from_numpy(y)[None], torch.from_numpy(mask))
    assert from_torch.to_dict() == from_numpy.to_dict()
    assert from_torch.count(1) == np.sum(mask & (y == 1))


def test_json_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(4)
    stats = LogitStatistics(["bg", "fg", "edema"], bin_edges=np.linspace(-10, 10, 41))
    stats.update(*random_case(rng, (6, 7, 8), num_classes=2))  # "edema" stays empty
    path = tmp_path / "stats.json"
    stats.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]  # no temporary file left behind
    record = json.loads(path.read_text())
    assert (record["format"], record["version"]) == ("asymseg-logit-statistics", 1)
    loaded = LogitStatistics.load(path)
    assert loaded.to_dict() == stats.to_dict()
    assert loaded.summary() == stats.summary() and loaded.summary()["edema"] is None
    assert loaded.merge(stats).count(0) == 2 * stats.count(0)  # the edges survived exactly


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: "{not json", "stats.json"),
    (lambda d: json.dumps({**d, "format": "something-else"}), "format"),
    (lambda d: json.dumps({**d, "version": 2}), "version"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "m2"}), "'m2'"),
    (lambda d: json.dumps({**d, "underflow": [[d["underflow"][0][0] + 1, 0], [0, 0]]}), "inconsistent"),
    (lambda d: json.dumps({**d, "min": [[None, None], [0.0, 0.0]]}), "'min'"),
])
def test_load_rejects_a_wrong_or_corrupt_file_naming_it(tmp_path, corrupt, message):
    stats = LogitStatistics(["bg", "fg"])
    stats.update(np.array([[1.0, 2.0], [-1.0, -2.0]]), np.array([0, 1]))
    path = tmp_path / "stats.json"
    path.write_text(corrupt(stats.to_dict()))
    with pytest.raises(ValueError, match="stats.json") as info:
        LogitStatistics.load(path)
    assert message in str(info.value)


@pytest.mark.parametrize("logits, labels, mask, argument", [
    (np.zeros((3, 4, 4)), np.zeros((4, 4), int), None, "logits"),  # channel count mismatch
    (np.zeros((2, 4, 4), int), np.zeros((4, 4), int), None, "logits"),  # not floating point
    (np.full((2, 4, 4), np.nan), np.zeros((4, 4), int), None, "logits"),
    (np.zeros((2, 4, 4)), np.full((4, 4), 2), None, "labels"),  # value >= number of classes
    (np.zeros((2, 4, 4)), np.full((4, 4), -1), None, "labels"),
    (np.zeros((2, 4, 4)), np.full((4, 4), 0.5), None, "labels"),
    (np.zeros((2, 4, 4)), np.zeros((4, 5), int), None, "labels"),  # shape mismatch
    (np.zeros((2, 4, 4)), np.zeros((4, 4), int), np.ones((4, 3), bool), "mask"),
    (np.zeros((2, 4, 4)), np.zeros((4, 4), int), np.ones((4, 4)), "mask"),  # float mask
])
def test_bad_update_input_raises_naming_the_argument_and_adds_nothing(logits, labels, mask, argument):
    stats = LogitStatistics(["bg", "fg"])
    with pytest.raises(ValueError, match=rf"^{argument}"):
        stats.update(logits, labels, mask)
    assert stats.count(0) == stats.count(1) == 0


def test_out_of_range_labels_inside_the_mask_only_are_rejected():
    stats = LogitStatistics(["bg", "fg"])
    labels = np.array([0, 1, 255])
    stats.update(np.zeros((2, 3)), labels, labels != 255)  # 255 is masked out: accepted
    assert stats.count(0) == stats.count(1) == 1


def test_bad_arguments_raise_naming_them():
    stats = LogitStatistics(["bg", "fg"])
    with pytest.raises(ValueError, match="^other .*bin edges"):
        stats.merge(LogitStatistics(["bg", "fg"], bin_edges=np.linspace(-20, 20, 81)))
    with pytest.raises(ValueError, match="^other has classes"):
        stats.merge(LogitStatistics(["bg", "tumour"]))
    with pytest.raises(ValueError, match="^unseen has classes"):
        logit_shift(stats, LogitStatistics(["bg", "fg"], ["z0", "z1"]))
    with pytest.raises(ValueError, match="^bin_edges"):
        LogitStatistics(["bg", "fg"], bin_edges=[0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="^class_names"):
        LogitStatistics(["bg", "bg"])
    with pytest.raises(ValueError, match="^q "):
        stats.quantile(0, 0, 1.5)
    with pytest.raises(ValueError, match="^g "):
        stats.mean("tumour", 0)
    with pytest.raises(ValueError, match="^c "):
        stats.std(0, 2)


def test_full_size_volume_stays_within_memory_budget():
    rng = np.random.default_rng(5)
    z = (rng.standard_normal((2, 240, 240, 155), dtype=np.float32) * 5.0)
    y = (rng.random((240, 240, 155), dtype=np.float32) < 0.05).astype(np.uint8)
    stats = LogitStatistics(["bg", "fg"])
    tracemalloc.start()
    try:
        start = time.perf_counter()
        stats.update(z, y)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"update of a (2, 240, 240, 155) float32 volume: {elapsed:.2f} s, "
          f"peak extra memory {peak / z.nbytes:.2f} x the volume")
    assert stats.count(0) + stats.count(1) == y.size
    assert peak < 3 * z.nbytes
