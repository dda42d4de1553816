"""Tests of AsymSegTrainer.regularizers: asymmetric mixup, adversarial training, augmentation (METHOD.md §4)."""

import copy

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from AsymSegTrainer.losses import asymmetric_ce, asymmetric_dice
from AsymSegTrainer.regularizers import (adversarial_perturbation, augmentation_probability,
                                         choose_patches_to_augment, mixup_batch, mixup_targets,
                                         sample_mixup_lambda)

# ---------------------------------------------------------------- mixup targets

RARE4 = [0, 0, 1, 1]  # classes 0, 1 well represented; 2, 3 rare
# voxel pairs (y_i, y_k): same non-rare, same rare, rare only in i, rare only in k, both rare, both non-rare
Y_I = [0, 2, 2, 0, 2, 0]
Y_K = [0, 2, 0, 2, 3, 1]
IGN = None


def expected_rows(labels, num_classes=4):
    """Hand-written rule outcome per voxel -> (1, C, V) target; None = all-zero (ignored) row."""
    rows = [torch.zeros(num_classes) if lab is None else torch.eye(num_classes)[lab] for lab in labels]
    return torch.stack(rows, dim=1).unsqueeze(0)


def labels(values):
    return torch.tensor(values).view(1, 1, -1)


@pytest.mark.parametrize("lam, margin, expected", [
    (0.7, 0.2, [0, 2, 2, 2, IGN, IGN]),    # both weights above the margin: both rare transfers kept
    (0.9, 0.2, [0, 2, 2, IGN, IGN, IGN]),  # k weighs 0.1 <= 0.2: rare label only from i
    (0.1, 0.2, [0, 2, IGN, 2, IGN, IGN]),  # i weighs 0.1 <= 0.2: rare label only from k
    (0.5, 0.6, [0, 2, IGN, IGN, IGN, IGN]),  # margin above both weights: only equal labels survive
])
def test_mixup_rule_every_branch(lam, margin, expected):
    out = mixup_targets(labels(Y_I), labels(Y_K), lam, RARE4, margin)
    assert out.dtype == torch.float32 and out.shape == (1, 4, 6)
    assert torch.equal(out, expected_rows(expected))


@pytest.mark.parametrize("lam, margin, expected", [
    (0.25, 0.25, [0, 2, IGN, 2, IGN, IGN]),          # lam == margin: i's rare label ignored
    (0.25 + 1e-3, 0.25, [0, 2, 2, 2, IGN, IGN]),     # just above: kept
    (0.75, 0.25, [0, 2, 2, IGN, IGN, IGN]),          # 1 - lam == margin: k's rare label ignored
    (0.75 - 1e-3, 0.25, [0, 2, 2, 2, IGN, IGN]),     # just above: kept
])
def test_mixup_margin_is_strict(lam, margin, expected):
    assert torch.equal(mixup_targets(labels(Y_I), labels(Y_K), lam, RARE4, margin), expected_rows(expected))


def reference_rule(a, b, lam, rare, margin):
    """Independent per-voxel implementation of METHOD.md §4 on Python ints."""
    if a == b:
        return a
    if rare[a] == 1 and rare[b] != 1 and lam > margin:
        return a
    if rare[b] == 1 and rare[a] != 1 and 1 - lam > margin:
        return b
    return None


@pytest.mark.parametrize("lam", [0.3, 0.85])
def test_mixup_matches_per_voxel_reference_in_3d(lam):
    rare = [0, 1, 0.5, 1]  # continuous 0.5 counts as not rare for mixup
    gen = torch.Generator().manual_seed(0)
    y_i = torch.randint(0, 4, (2, 3, 4, 5), generator=gen)  # (N, *spatial) form
    y_k = torch.randint(0, 4, (2, 3, 4, 5), generator=gen)
    out = mixup_targets(y_i, y_k, lam, rare, 0.2)
    assert out.shape == (2, 4, 3, 4, 5)
    expected = torch.zeros_like(out)
    for idx in np.ndindex(*y_i.shape):
        lab = reference_rule(int(y_i[idx]), int(y_k[idx]), lam, rare, 0.2)
        if lab is not None:
            expected[(idx[0], lab) + idx[1:]] = 1
    assert torch.equal(out, expected)
    assert 0 < (out.sum(1) == 0).sum() < y_i.numel()  # the case exercises ignored and kept voxels
    # (N, 1, *spatial) and whole-number float label maps give the same target
    assert torch.equal(mixup_targets(y_i.unsqueeze(1).float(), y_k.unsqueeze(1).float(), lam, rare, 0.2), out)


def test_mixup_symmetric_soft_labels():
    out = mixup_targets(labels(Y_I), labels(Y_K), 0.7, RARE4, 0.2, symmetric=True)
    torch.testing.assert_close(out.sum(1), torch.ones(1, 6))  # nothing ignored
    torch.testing.assert_close(out[0, :, 2], torch.tensor([0.3, 0.0, 0.7, 0.0]))  # (2, 0)
    torch.testing.assert_close(out[0, :, 4], torch.tensor([0.0, 0.0, 0.7, 0.3]))  # (2, 3)
    torch.testing.assert_close(out[0, :, 5], torch.tensor([0.7, 0.3, 0.0, 0.0]))  # (0, 1)
    torch.testing.assert_close(out[0, :, 1], torch.tensor([0.0, 0.0, 1.0, 0.0]))  # (2, 2)


def test_mixup_ignored_rows_give_zero_ce_gradient():
    target = mixup_targets(labels(Y_I), labels(Y_K), 0.7, RARE4, 0.2)
    logits = torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(1), requires_grad=True)
    (grad,) = torch.autograd.grad(asymmetric_ce(logits, target, RARE4), logits)
    ignored = target.sum(1)[0] == 0
    assert ignored.tolist() == [False, False, False, False, True, True]
    assert torch.equal(grad[0][:, ignored], torch.zeros(4, 2))
    assert (grad[0][:, ~ignored].abs().sum(0) > 0).all()


@pytest.mark.parametrize("kwargs, name", [
    (dict(lam=-0.1), "lam"), (dict(lam=1.1), "lam"), (dict(lam=float("nan")), "lam"), (dict(lam="x"), "lam"),
    (dict(margin=-0.1), "margin"), (dict(margin=1.5), "margin"),
    (dict(y_k=labels([0, 1, 2])), "y_k"),
    (dict(y_i=labels([0, 1, 4, 0, 2, 0])), "y_i"),          # label >= C
    (dict(y_i=labels([0, 1, 0.5, 0, 2, 0])), "y_i"),        # not a whole number
    (dict(rare=[0]), "rare"), (dict(rare=1.0), "rare"),    # too short / not a sequence
    (dict(rare=[0, 1, 2, 1]), "rare"),                     # values outside [0, 1]
    (dict(rare=[[0, 1], [1, 1]]), "rare"),                 # wrong length once flattened
    (dict(y_i=torch.tensor([0, 1])), "y_i"),               # no spatial dimension
])
def test_mixup_bad_inputs(kwargs, name):
    args = dict(y_i=labels(Y_I), y_k=labels(Y_K), lam=0.5, rare=RARE4, margin=0.2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        mixup_targets(**args)


def test_mixup_batch_pairs_with_reversed_batch():
    x = torch.arange(3.0).view(3, 1, 1).expand(3, 1, 4)
    y = torch.tensor([[0], [1], [2]]).expand(3, 4)
    x_mix, y_i, y_k = mixup_batch(x, y, 0.75)
    torch.testing.assert_close(x_mix[:, 0, 0], torch.tensor([0.5, 1.0, 1.5]))  # 0.75 x_i + 0.25 x_{N-1-i}
    assert torch.equal(y_i, y) and torch.equal(y_k[:, 0], torch.tensor([2, 1, 0]))
    with pytest.raises(ValueError, match="lam"):
        mixup_batch(x, y, 2.0)
    with pytest.raises(ValueError, match="y"):
        mixup_batch(x, y[:2], 0.5)


# ---------------------------------------------------------------- mixup lambda

def test_lambda_alpha_one_is_uniform():
    rng = np.random.default_rng(0)
    draws = np.array([sample_mixup_lambda(1.0, rng) for _ in range(3000)])
    assert ((draws >= 0) & (draws <= 1)).all()
    assert abs(draws.mean() - 0.5) < 0.02  # sd of the mean ~ 0.005
    assert scipy.stats.kstest(draws, "uniform").pvalue > 1e-3


def test_lambda_alpha_small_is_u_shaped():
    rng = np.random.default_rng(1)
    draws = np.array([sample_mixup_lambda(0.2, rng) for _ in range(3000)])
    assert abs(draws.mean() - 0.5) < 0.03
    edges = ((draws < 0.1) | (draws > 0.9)).mean()
    middle = ((draws > 0.4) & (draws < 0.6)).mean()
    # Beta(0.2, 0.2): P(edges) = 0.61, P(middle) = 0.067 (a uniform would give 0.2 and 0.2)
    assert edges > 0.55 and middle < 0.1
    assert scipy.stats.kstest(draws, scipy.stats.beta(0.2, 0.2).cdf).pvalue > 1e-3


def test_lambda_deterministic_and_bad_inputs():
    first = [sample_mixup_lambda(1.0, np.random.default_rng(7)) for _ in range(2)]
    assert first[0] == first[1]
    assert sample_mixup_lambda(1.0, np.random.default_rng(8)) != first[0]
    for alpha in (0, -1, float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            sample_mixup_lambda(alpha)
    with pytest.raises(ValueError, match="generator"):
        sample_mixup_lambda(1.0, torch.Generator())


# ---------------------------------------------------------------- adversarial perturbation

RARE3 = [0, 1, 1]


def tiny_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(2, 6, 3, padding=1), nn.BatchNorm3d(6), nn.Tanh(), nn.Conv3d(6, 3, 1))
    return net.double()


def batch():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 4, 4, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (3, 1, 4, 4, 4), generator=gen)
    y[0] = torch.where(y[0] == 2, 0, y[0])  # sample 0: classes 0 and 1
    y[2] = 0  # sample 2: no rare voxel at all
    return x, y


def reference_direction(model, x, y, weights):
    """Gradient wrt x of -sum_v w[y_v] log softmax(z)_{y_v}, normalised per sample (independent of losses.py)."""
    model = copy.deepcopy(model)
    x = x.clone().requires_grad_(True)
    logp = torch.log_softmax(model(x), dim=1).gather(1, y)
    objective = -(torch.tensor(weights, dtype=x.dtype)[y] * logp).sum()
    (g,) = torch.autograd.grad(objective, x)
    return g / g.flatten(1).norm(dim=1).clamp_min(1e-300).view(-1, 1, 1, 1, 1)


def cosine(a, b):
    return (a.flatten(1) * b.flatten(1)).sum(1) / (a.flatten(1).norm(dim=1) * b.flatten(1).norm(dim=1))


def test_adversarial_norm_direction_and_empty_sample():
    model, (x, y) = tiny_net(), batch()
    r_adv = adversarial_perturbation(model, x, y, RARE3, xi=1e-6, l=10.0, generator=torch.Generator().manual_seed(0))
    assert r_adv.shape == x.shape and r_adv.dtype == x.dtype and not r_adv.requires_grad
    norms = r_adv.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms[:2], torch.full((2,), 10.0, dtype=torch.float64), rtol=1e-5, atol=0)
    assert torch.equal(r_adv[2], torch.zeros_like(r_adv[2]))  # no rare voxel -> no perturbation
    assert (cosine(r_adv, reference_direction(model, x, y, RARE3))[:2] > 0.999).all()


def test_adversarial_symmetric_uses_every_voxel():
    model, (x, y) = tiny_net(), batch()
    asym = adversarial_perturbation(model, x, y, RARE3, l=5.0)
    sym = adversarial_perturbation(model, x, y, RARE3, l=5.0, symmetric=True)
    assert (cosine(sym, reference_direction(model, x, y, [1, 1, 1])) > 0.999).all()
    assert (cosine(sym[:2], asym[:2]) < 0.99).all()  # background voxels change the direction
    torch.testing.assert_close(sym[2].norm(), torch.tensor(5.0, dtype=torch.float64))  # all-background sample too


def test_adversarial_continuous_rarity_lies_between():
    model, (x, y) = tiny_net(), batch()

    def direction(rare):
        return adversarial_perturbation(model, x[:2], y[:2], rare, generator=torch.Generator().manual_seed(5))

    only2, half1, both = direction([0, 0, 1]), direction([0, 0.5, 1]), direction([0, 1, 1])
    # sample 1 holds classes 1 and 2; the objective is linear in r, so the r_1 = 0.5 direction is a
    # positive combination of the r_1 = 0 and r_1 = 1 directions, closer to each than they are to each other
    basis = torch.stack([only2[1].flatten(), both[1].flatten()], dim=1)
    coef = torch.linalg.lstsq(basis, half1[1].flatten().unsqueeze(1)).solution.flatten()
    assert (basis @ coef - half1[1].flatten()).norm() / half1[1].norm() < 1e-6 and (coef > 0).all()
    apart = cosine(both, only2)[1]
    assert cosine(half1, only2)[1] > apart and cosine(half1, both)[1] > apart and apart < 0.99
    # sample 0 has no class-2 voxel: r = [0, 0, 1] leaves it unperturbed, r_1 = 0.5 does not
    assert torch.equal(only2[0], torch.zeros_like(only2[0])) and half1[0].norm() > 0


@pytest.mark.parametrize("training", [True, False])
def test_adversarial_leaves_model_untouched(training):
    model, (x, y) = tiny_net(), batch()
    model(x)  # move BatchNorm running stats away from their initial values
    model.train(training)
    conv = model[0]
    conv.weight.grad = torch.full_like(conv.weight, 0.25)  # a pre-existing gradient; the others stay None
    before = copy.deepcopy(model.state_dict())
    x.requires_grad_(True)
    assert adversarial_perturbation(model, x, y, RARE3, use_dice=True).grad_fn is None
    assert model.training is training and x.grad is None
    assert torch.equal(conv.weight.grad, torch.full_like(conv.weight, 0.25))
    assert all(p.grad is None for name, p in model.named_parameters() if name != "0.weight")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # parameters and BatchNorm stats, bitwise
    assert after["1.num_batches_tracked"].item() == 1


def test_adversarial_dice_and_determinism():
    model, (x, y) = tiny_net(), batch()
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    with_dice = adversarial_perturbation(model, x, y, RARE3, xi=1e-6, use_dice=True, generator=gen())
    with torch.no_grad():  # the engine may call it from a no-grad context; the result must not change
        assert torch.equal(with_dice, adversarial_perturbation(model, x, y, RARE3, xi=1e-6, use_dice=True,
                                                               generator=gen()))
    # reference: gradient at x of CE + Dice on the rare-restricted target
    restricted = torch.zeros(3, 3, 4, 4, 4, dtype=torch.float64).scatter_(1, y, 1.0)
    restricted[:, 0] = 0
    ref_model, xr = copy.deepcopy(model), x.clone().requires_grad_(True)
    logits = ref_model(xr)
    (g,) = torch.autograd.grad(asymmetric_ce(logits, restricted, RARE3) + asymmetric_dice(logits, restricted, RARE3),
                               xr)
    assert (cosine(with_dice, g)[:2] > 0.999).all()
    assert (cosine(with_dice, adversarial_perturbation(model, x, y, RARE3))[:2] < 0.999).all()


def test_adversarial_under_autocast_float32_input():
    model, (x, y) = tiny_net().float(), batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r_adv = adversarial_perturbation(model, x.float(), y, RARE3, l=3.0)
    assert r_adv.dtype == torch.float32 and torch.isfinite(r_adv).all()
    torch.testing.assert_close(r_adv[:2].flatten(1).norm(dim=1), torch.full((2,), 3.0), rtol=1e-4, atol=0)


@pytest.mark.parametrize("kwargs, name", [
    (dict(xi=-1e-5), "xi"), (dict(l=-1.0), "l"), (dict(l=float("nan")), "l"),
    (dict(rare=[0, 1], target=torch.ones(3, 1, 4, 4, 4, dtype=torch.long)), "model"),  # logits have 3 channels
    (dict(target=torch.full((3, 1, 4, 4, 4), 3)), "target"),         # label >= C
    (dict(target=torch.zeros(3, 1, 4, 4, 5, dtype=torch.long)), "target"),  # wrong spatial size
    (dict(x=torch.zeros(3, 2)), "x"), (dict(model=lambda t: t), "model"),
])
def test_adversarial_bad_inputs(kwargs, name):
    x, y = batch()
    args = dict(model=tiny_net(), x=x, target=y, rare=RARE3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        adversarial_perturbation(**args)


# ---------------------------------------------------------------- augmentation

def test_augmentation_frequencies_and_determinism():
    centred = np.arange(20000) % 2 == 0
    chosen = choose_patches_to_augment(centred, 0.8, 0.3, np.random.default_rng(0))
    assert chosen.dtype == np.bool_ and chosen.shape == centred.shape
    assert abs(chosen[centred].mean() - 0.8) < 0.02 and abs(chosen[~centred].mean() - 0.3) < 0.02  # sd ~ 0.005
    assert np.array_equal(chosen, choose_patches_to_augment(centred, 0.8, 0.3, np.random.default_rng(0)))
    assert not np.array_equal(chosen, choose_patches_to_augment(centred, 0.8, 0.3, np.random.default_rng(1)))
    extremes = choose_patches_to_augment(centred, 1.0, 0.0, np.random.default_rng(2))
    assert np.array_equal(extremes, centred)  # p = 1 always, p = 0 never


def test_augmentation_probability_values():
    assert augmentation_probability(True, 0.9, 0.2) == 0.9 and augmentation_probability(False, 0.9, 0.2) == 0.2
    assert augmentation_probability(np.bool_(True)) == 1.0 and augmentation_probability(False) == 0.0  # defaults
    np.testing.assert_array_equal(augmentation_probability(np.array([True, False, True]), 0.75, 0.25),
                                  [0.75, 0.25, 0.75])


@pytest.mark.parametrize("args, name", [
    ((True, 1.5, 0.0), "p_fg"), ((True, -0.1, 0.0), "p_fg"), ((True, 1.0, float("nan")), "p_bg"),
    ((True, 1.0, 2.0), "p_bg"), ((np.array([1, 0]), 1.0, 0.0), "centred_on_rare"),
])
def test_augmentation_bad_inputs(args, name):
    with pytest.raises(ValueError, match=name):
        augmentation_probability(*args)
    with pytest.raises(ValueError, match=name):
        choose_patches_to_augment(*args, np.random.default_rng(0))


def test_choose_patches_needs_numpy_generator():
    with pytest.raises(ValueError, match="rng"):
        choose_patches_to_augment(np.array([True]), 1.0, 0.0, torch.Generator())
