"""The official training procedure (METHOD.md v2): mixup's (1 - m_mix), separate optimiser steps, the
paper's optimiser and schedule, and the Table II baselines as selectable techniques."""

from pathlib import Path

import numpy as np
import pytest
import torch

from AsymSegTrainer.errors import InputError
from AsymSegTrainer.events import EventSink
from AsymSegTrainer.jobspec import job_from_dataset, job_from_dict
from AsymSegTrainer.losses import ldam_rarity
from AsymSegTrainer.regularizers import sample_mixup_lambda
from AsymSegTrainer.training import Trainer, learning_rate

from conftest import TINY_NETWORK, UNPLANNED


def make_trainer(dataset, out, technique, **settings):
    spec = job_from_dataset(dataset, ["lesion=1"], ["phantom_000", "phantom_001"], [],
                            **{"output": str(out), "network": TINY_NETWORK, "patch_size": [16, 16, 16],
                               "batch_size": 2, "iterations": 2, "device": "cpu", "logit_statistics": False,
                               "technique": technique, **UNPLANNED, **settings})
    trainer = Trainer(job_from_dict(spec, Path(out).parent), EventSink(progress_bar=False))
    trainer._load_cases()
    return trainer


def test_mixup_weight_is_scaled_by_one_minus_the_margin():
    plain = sample_mixup_lambda(1.0, np.random.default_rng(3))
    scaled = sample_mixup_lambda(1.0, np.random.default_rng(3), margin=0.2)
    assert scaled == pytest.approx(plain * 0.8, abs=0)
    draws = [sample_mixup_lambda(1.0, np.random.default_rng(s), margin=0.3) for s in range(500)]
    assert max(draws) <= 0.7 and min(draws) >= 0.0 and max(draws) > 0.65
    with pytest.raises(ValueError, match="margin must lie in"):
        sample_mixup_lambda(1.0, margin=1.5)


@pytest.mark.parametrize("preset, update, steps", [
    ("vanilla", "sequential", 1), ("asymmetric-adversarial", "sequential", 2), ("asymmetric-mixup", "sequential", 2),
    ("asymmetric-combination", "sequential", 3), ("asymmetric-combination", "sum", 1)])
def test_sequential_update_takes_one_optimiser_step_per_batch(phantom_dataset, tmp_path, preset, update, steps):
    trainer = make_trainer(phantom_dataset, tmp_path / "run", {"preset": preset, "update": update})
    trainer._build(resume=False)
    calls = []
    original = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    from AsymSegTrainer.sampling import PatchSampler
    sampler = PatchSampler(trainer.train_cases, [16, 16, 16], [1], 0.5, seed=0)
    x, y = trainer._batch(sampler, np.random.default_rng(0), None)
    total, terms = trainer._step(x, y, np.random.default_rng(0), torch.Generator().manual_seed(0))
    assert len(calls) == steps
    assert total == pytest.approx(sum(v.item() for v in terms.values()))


def test_sequential_adversarial_direction_uses_the_parameters_before_the_clean_step(phantom_dataset, tmp_path,
                                                                                     monkeypatch):
    trainer = make_trainer(phantom_dataset, tmp_path / "run", {"preset": "asymmetric-adversarial"})
    trainer._build(resume=False)
    seen = {}
    import AsymSegTrainer.training as training

    def direction(model, x, *args, **kwargs):
        seen["weights"] = [p.detach().clone() for p in model.parameters()]
        return torch.zeros_like(x)
    monkeypatch.setattr(training, "adversarial_perturbation", direction)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    from AsymSegTrainer.sampling import PatchSampler
    sampler = PatchSampler(trainer.train_cases, [16, 16, 16], [1], 0.5, seed=0)
    x, y = trainer._batch(sampler, np.random.default_rng(0), None)
    trainer._step(x, y, np.random.default_rng(0), torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(seen["weights"], before))
    assert not all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))


def test_official_schedule_halves_at_17_22_27_30_33_of_35():
    total = 35_000
    rates = [learning_rate(1e-3, "official", it * 1000 + 1, total) for it in range(35)]
    assert rates[16] == 1e-3 and rates[17] == 5e-4 and rates[22] == 2.5e-4 and rates[27] == 1.25e-4
    assert rates[30] == 6.25e-5 and rates[33] == 3.125e-5 and rates[34] == 3.125e-5
    assert learning_rate(1e-3, "poly", 1, 10) == 1e-3
    assert learning_rate(1e-3, "poly", 6, 10) == pytest.approx(1e-3 * 0.5 ** 0.9)


def test_official_optimiser(phantom_dataset, tmp_path):
    trainer = make_trainer(phantom_dataset, tmp_path / "run", "vanilla", optimizer="rmsprop-official",
                           lr_schedule="official", learning_rate=1e-3)
    trainer._build(resume=False)
    group = trainer.optimizer.param_groups[0]
    assert isinstance(trainer.optimizer, torch.optim.RMSprop)
    assert (group["alpha"], group["eps"], group["momentum"], group["lr"]) == (0.9, 1e-4, 0.6, 1e-3)


def test_ldam_and_logit_adjustment_use_the_training_class_frequencies(phantom_dataset, tmp_path):
    trainer = make_trainer(phantom_dataset, tmp_path / "run", "ldam-margin")
    counts = [int(sum((c.label == k).sum() for c in trainer.train_cases)) for k in (0, 1)]
    assert trainer._class_counts() == counts and counts[1] < counts[0]
    trainer._build(resume=False)
    assert trainer.loss.rare == pytest.approx(ldam_rarity(counts)) and trainer.loss.margin == 1.0
    assert trainer.loss.rare[1] == 1.0 and trainer.loss.rare[0] == pytest.approx((counts[1] / counts[0]) ** 0.25)
    adjusted = make_trainer(phantom_dataset, tmp_path / "run2", "logit-adjusted")
    adjusted._build(resume=False)
    assert adjusted.loss.options["class_priors"] == counts and adjusted.loss.options["tau"] == 1.0
    fbeta = make_trainer(phantom_dataset, tmp_path / "run3", "soft-fbeta-4")
    fbeta._build(resume=False)
    assert fbeta.loss.options == {"beta": 4.0} and fbeta.loss.name == "fbeta"


def test_a_baseline_objective_does_not_take_another_loss(phantom_dataset, tmp_path):
    with pytest.raises(InputError, match="objective 'soft-fbeta' is a loss of its own"):
        make_trainer(phantom_dataset, tmp_path / "run", "soft-fbeta-2", loss="ce+dice")
    with pytest.raises(InputError, match=r"technique.update must be one of \['sequential', 'sum'\]"):
        make_trainer(phantom_dataset, tmp_path / "run", {"preset": "vanilla", "update": "both"})


def test_bench_official_protocol_uses_the_official_optimiser_and_schedule(phantom_dataset, tmp_path):
    from AsymSegTrainer.bench import make_folds
    from AsymSegTrainer.bench.folds import plan_runs
    from AsymSegTrainer.bench.report import _update_structure
    from AsymSegTrainer.bench.runs import run_job
    from AsymSegTrainer.bench.settings import bench_settings
    from AsymSegTrainer.cli import build_parser

    def settings(*extra):
        return bench_settings(build_parser().parse_args(
            ["bench", "--dataset", str(phantom_dataset), "--classes", "lesion=1", "--train-size", "2", "--folds", "1",
             "--methods", "asymmetric-combination", "--iterations", "10", "--out", str(tmp_path), *extra]))
    official = settings("--official")
    assert (official["optimizer"], official["learning_rate"], official["lr_schedule"], official["batch_size"],
            official["patch_size"], official["official"]) == ("rmsprop-official", 1e-3, "official", 10, [40] * 3, True)
    assert settings("--official", "--batch-size", "4")["batch_size"] == 4  # explicit options still win
    plain = settings()
    assert (plain["optimizer"], plain["lr_schedule"], plain["official"]) == ("adam", "poly", False)
    run = plan_runs(tmp_path, ["asymmetric-combination"], make_folds([f"phantom_00{i}" for i in range(4)], 2, 1), 1)[0]
    job = run_job(run, official, "cpu")
    assert (job.optimizer, job.lr_schedule, job.learning_rate, job.loss) == ("rmsprop-official", "official", 1e-3, "ce")
    assert _update_structure(["vanilla", "asymmetric-combination"]).startswith("sequential: one optimiser step each")
    assert _update_structure(["vanilla"]).startswith("one optimiser step per batch")
