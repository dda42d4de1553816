"""The smoothed validation curve: moving average, best checkpoint, plateau, sentences, resume, NaN, arguments."""

from __future__ import annotations

import json
import math

import pytest

from AsymSegTrainer.checkpointing import MIN_DELTA, MIN_PROGRESS, PATIENCE, SMOOTHING, ValidationCurve

# A noisy run of 300 iterations validated every 30: a spike at iteration 90, the curve peaks later.
NOISY = [0.20, 0.30, 0.45, 0.32, 0.36, 0.38, 0.40, 0.41, 0.37, 0.35]


def run(curve, values, every=30, total=300):
    return [curve.update(every * i, value, total) for i, value in enumerate(values, 1)]


def test_defaults():
    assert (SMOOTHING, PATIENCE, MIN_DELTA, MIN_PROGRESS) == (0.5, 4, 0.005, 0.3)


def test_moving_average_is_bias_corrected():
    # beta 0.5: m1 = 0.2, m2 = 0.1 + 0.05 = 0.15, m3 = 0.075 + 0.35 = 0.425; divided by 0.5, 0.75, 0.875.
    decisions = run(ValidationCurve(), [0.4, 0.1, 0.7])
    assert [d.smoothed for d in decisions] == pytest.approx([0.4, 0.2, 0.425 / 0.875])
    assert [d.best for d in decisions] == [True, False, True]
    # beta 0.9: m1 = 0.04, m2 = 0.036 + 0.01 = 0.046; divided by 0.1 and 0.19.
    decisions = run(ValidationCurve(smoothing=0.9), [0.4, 0.1])
    assert [d.smoothed for d in decisions] == pytest.approx([0.4, 0.046 / 0.19])
    # beta 0: the raw curve.
    assert [d.smoothed for d in run(ValidationCurve(smoothing=0.0), [0.4, 0.1, 0.7])] == [0.4, 0.1, 0.7]


def test_an_early_spike_is_not_the_best_checkpoint():
    curve = ValidationCurve()
    decisions = run(curve, NOISY)
    assert curve.best_raw == (90, 0.45)
    assert curve.best_iteration == 240
    # With beta 0.5 the bias-corrected average of k values weighs value i by 2^(i-1) / (2^k - 1).
    assert curve.best_smoothed == pytest.approx(sum(2 ** i * v for i, v in enumerate(NOISY[:8])) / 255)
    assert [d.iteration for d in decisions if d.best] == [30, 60, 90, 210, 240]
    assert [d.mean_dsc for d in decisions] == NOISY
    # The raw curve would have chosen the spike.
    raw = ValidationCurve(smoothing=0.0)
    run(raw, NOISY)
    assert raw.best_iteration == 90


def test_plateau_after_exactly_patience_validations_without_improvement():
    curve = ValidationCurve(smoothing=0.0, patience=3, min_delta=0.01, min_progress=0.5)
    # 0.405 and 0.408 are new bests but not improvements by more than 0.01 over 0.40.
    decisions = run(curve, [0.30, 0.40, 0.405, 0.408, 0.39], every=10, total=100)
    assert [d.best for d in decisions] == [True, True, True, True, False]
    assert [d.plateau for d in decisions] == [False, False, False, False, True]
    assert curve.best_iteration == 40


def test_no_plateau_before_min_progress():
    curve = ValidationCurve(smoothing=0.0, patience=3, min_delta=0.01, min_progress=0.7)
    decisions = run(curve, [0.30, 0.40, 0.39, 0.38, 0.37, 0.36, 0.35], every=10, total=100)
    # Three validations without improvement at iteration 50, but 70 of 100 iterations must be done.
    assert [d.plateau for d in decisions] == [False, False, False, False, False, False, True]


def test_slow_steady_gains_count_as_improvement():
    curve = ValidationCurve(smoothing=0.0, patience=2, min_delta=0.01, min_progress=0.0)
    # Each step gains 0.006, less than min_delta, but 0.412 is more than 0.01 above the reference 0.40
    # and 0.424 more than 0.01 above 0.412; then 0.425 and 0.426 are two validations without improvement.
    decisions = run(curve, [0.40, 0.406, 0.412, 0.418, 0.424, 0.425, 0.426], every=10, total=100)
    assert [d.plateau for d in decisions] == [False, False, False, False, False, False, True]
    assert all(d.best for d in decisions)


def test_plateau_with_smoothing():
    curve = ValidationCurve(patience=2, min_delta=0.01, min_progress=0.0)
    # Smoothed: 0.5, then (0.5 + 2 * 0.4) / 3 = 0.4333, then (0.5 + 0.8 + 4 * 0.52) / 7 = 0.4829.
    decisions = run(curve, [0.5, 0.4, 0.52], every=10, total=100)
    assert [d.smoothed for d in decisions] == pytest.approx([0.5, 1.3 / 3, 3.38 / 7])
    assert [d.plateau for d in decisions] == [False, False, True]
    assert curve.best_iteration == 10


def test_sentences_give_the_numbers():
    curve = ValidationCurve()
    run(curve, NOISY)
    assert curve.choice_sentence(300) == (
        "model_best.pt is iteration 240 of 300: highest smoothed validation mean DSC 0.397 (exponential moving "
        "average, weight 0.5 on each new validation, 10 validations); the highest single validation was 0.450 "
        "at iteration 90.")
    assert curve.choice_sentence().startswith("model_best.pt is iteration 240: ")
    with pytest.raises(RuntimeError, match="plateau"):
        curve.stop_sentence()

    flat = ValidationCurve(smoothing=0.0, patience=3, min_delta=0.01, min_progress=0.5)
    run(flat, [0.30, 0.40, 0.405, 0.408, 0.39], every=10, total=100)
    assert flat.stop_sentence() == ("no improvement of the smoothed validation mean DSC by more than 0.01 for 3 "
                                    "validations (best 0.408 at iteration 40)")
    assert flat.choice_sentence(100, checkpoint="best.pt") == (
        "best.pt is iteration 40 of 100: highest smoothed validation mean DSC 0.408 (exponential moving average, "
        "weight 1 on each new validation, 5 validations); it is also the highest single validation, 0.408.")


def test_replay_restores_the_state():
    original = ValidationCurve()
    history = [{"metrics": {"lesion": {"dsc": d.to_dict()["mean_dsc"]}}, **d.to_dict()}
               for d in run(original, NOISY[:6] + [math.nan] + NOISY[6:8])]
    history = json.loads(json.dumps(history, allow_nan=False))  # as stored: NaN is null
    assert history[6]["mean_dsc"] is None and history[6]["smoothed"] is not None

    resumed = ValidationCurve(history=history)
    assert resumed.best_iteration == original.best_iteration == 270
    assert resumed.best_smoothed == original.best_smoothed
    assert resumed.best_raw == original.best_raw == (90, 0.45)
    assert resumed.to_dict() == original.to_dict()
    rest = [original.update(300 + 30 * i, v, 600) for i, v in enumerate(NOISY[8:] + [0.5, 0.3], 1)]
    assert [resumed.update(300 + 30 * i, v, 600) for i, v in enumerate(NOISY[8:] + [0.5, 0.3], 1)] == rest
    assert resumed.choice_sentence(600) == original.choice_sentence(600)
    with pytest.raises(ValueError, match="increasing iterations"):
        ValidationCurve(history=history + history[-1:])


def test_unscorable_validations_change_nothing():
    curve = ValidationCurve(patience=2, min_progress=0.0)
    first = curve.update(10, math.nan, 100)
    assert math.isnan(first.smoothed) and not first.best and not first.plateau
    assert first.to_dict() == {"iteration": 10, "mean_dsc": None, "smoothed": None, "best": False, "plateau": False}
    assert curve.best_iteration is None and math.isnan(curve.best_smoothed) and curve.best_raw is None
    assert curve.choice_sentence() == ("no model_best.pt: no validation could be scored (1 so far; no class had "
                                       "a defined DSC on the validation cases).")

    # NaN is skipped: the next scored validation is k = 1 of the average.
    assert curve.update(20, 0.4, 100).smoothed == 0.4
    middle = curve.update(30, None, 100)
    assert middle.smoothed == 0.4 and not middle.best and math.isnan(middle.mean_dsc)
    assert curve.update(40, 0.1, 100).smoothed == pytest.approx(0.2)  # as if the NaN were not there
    # Patience counts scored validations only: one without improvement so far, NaN adds none.
    assert not curve.update(50, math.nan, 100).plateau
    last = curve.update(60, 0.2, 100)
    assert last.plateau and last.smoothed == pytest.approx((0.4 + 2 * 0.1 + 4 * 0.2) / 7)
    assert curve.best_iteration == 20
    assert ("(exponential moving average, weight 0.5 on each new validation, 3 validations, "
            "not counting 3 unscorable ones)") in curve.choice_sentence(100)
    assert curve.to_dict() == {"smoothing": 0.5, "patience": 2, "min_delta": 0.005, "min_progress": 0.0,
                               "validations": 6, "scored": 3, "best_iteration": 20, "best_smoothed": 0.4,
                               "best_raw_iteration": 20, "best_raw_mean_dsc": 0.4}


@pytest.mark.parametrize("arguments, message", [
    ({"smoothing": 1.0}, r"smoothing must be in \[0, 1\), not 1.0"),
    ({"smoothing": -0.1}, r"smoothing must be in \[0, 1\), not -0.1"),
    ({"patience": 0}, "patience must be a whole number of validations >= 1, not 0"),
    ({"patience": 2.5}, "patience must be a whole number of validations >= 1, not 2.5"),
    ({"min_delta": -0.01}, r"minimum improvement must be a mean DSC in \[0, 1\)"),
    ({"min_progress": 1.5}, r"minimum progress must be a fraction in \[0, 1\]"),
])
def test_arguments_are_checked(arguments, message):
    with pytest.raises(ValueError, match=message) as error:
        ValidationCurve(**arguments)
    assert "default" in error.value.hint


def test_updates_are_checked():
    curve = ValidationCurve()
    curve.update(30, 0.4, 300)
    with pytest.raises(ValueError, match="iteration 30 after one at iteration 30"):
        curve.update(30, 0.5, 300)
    with pytest.raises(ValueError, match="planned number of iterations must be >= 1, not 0"):
        curve.update(60, 0.5, 0)
    assert curve.validations == 1  # a refused update changes nothing
