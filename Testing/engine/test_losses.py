"""AsymSegTrainer.losses against hand-computed values, torch/MONAI reductions and the paper's gradient claims."""

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, FocalLoss

from AsymSegTrainer.losses import (AsymmetricLoss, asymmetric_ce, asymmetric_dice, ldam_rarity, logit_adjusted_ce,
                                   soft_fbeta_loss)

EPS = 1e-6


def sig(x):
    return 1 / (1 + math.exp(-x))


# Two voxels, two classes: voxel 0 is background with logits (2, 0); voxel 1 is rare with logits (0, 1).
Z = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)  # (N=1, C=2, 2 voxels)
T = torch.tensor([[0, 1]])
RARE = [0.0, 1.0]


def one_hot(t, c):
    return F.one_hot(t, c).movedim(-1, 1).double()


@pytest.mark.parametrize("kwargs, expected", [
    ({}, (-math.log(sig(2) + EPS) - math.log(sig(1) + EPS)) / 2),
    # asymmetric margin: only the rare voxel's true logit moves (1 -> 0, so q = 0.5)
    ({"margin": 1.0}, (-math.log(sig(2) + EPS) - math.log(0.5 + EPS)) / 2),
    # symmetric margin: the background voxel's true logit moves too (2 -> 1)
    ({"margin": 1.0, "symmetric": True}, (-math.log(sig(1) + EPS) - math.log(0.5 + EPS)) / 2),
    # asymmetric focal: background attenuated by (1 - q + eps)^gamma, rare voxel keeps weight 1
    ({"gamma": 2.0}, (-(1 - sig(2) + EPS) ** 2 * math.log(sig(2) + EPS) - math.log(sig(1) + EPS)) / 2),
    # symmetric focal: both attenuated
    ({"gamma": 2.0, "symmetric": True},
     (-(1 - sig(2) + EPS) ** 2 * math.log(sig(2) + EPS) - (1 - sig(1) + EPS) ** 2 * math.log(sig(1) + EPS)) / 2),
    # margin + focal: focal factor from the post-margin probability (q = 0.5 for the rare voxel, weight 1)
    ({"margin": 1.0, "gamma": 2.0, "symmetric": True},
     (-(1 - sig(1) + EPS) ** 2 * math.log(sig(1) + EPS) - (0.5 + EPS) ** 2 * math.log(0.5 + EPS)) / 2),
])
def test_ce_hand_computed(kwargs, expected):
    assert asymmetric_ce(Z, T, RARE, **kwargs).item() == pytest.approx(expected, rel=1e-12)


def test_ce_soft_and_ignored_targets():
    y = torch.tensor([[[0.3, 0.0], [0.7, 0.0]]], dtype=torch.float64)  # voxel 0 soft, voxel 1 ignored
    expected = (-0.3 * math.log(sig(2) + EPS) - 0.7 * math.log(1 - sig(2) + EPS)) / 2  # V counts the ignored voxel
    assert asymmetric_ce(Z, y, RARE).item() == pytest.approx(expected, rel=1e-12)


def _dice_by_hand(q1, y1, f1, valid):
    """Foreground class of a single sample, from Python lists (METHOD.md §3 formula)."""
    tp = sum(q * y for q, y in zip(q1, y1))
    fp = sum(q * (1 - y) * v for q, y, v in zip(q1, y1, valid))
    fn = sum((1 - q) * y for q, y in zip(q1, y1))
    ffn = sum((1 - q) * y * f for q, y, f in zip(q1, y1, f1))
    return (fp + ffn + 1e-5) / (2 * tp + fp + fn + 1e-5)


def test_dice_hand_computed_plain_margin_focal():
    q1 = [1 - sig(2), sig(1)]  # foreground probability per voxel
    assert asymmetric_dice(Z, T, RARE).item() == pytest.approx(_dice_by_hand(q1, [0, 1], [1, 1], [1, 1]), rel=1e-12)
    # asymmetric margin: the rare voxel's foreground probability becomes 0.5
    assert asymmetric_dice(Z, T, RARE, margin=1.0).item() == pytest.approx(
        _dice_by_hand([1 - sig(2), 0.5], [0, 1], [1, 1], [1, 1]), rel=1e-12)
    # symmetric focal: weight (1 - q + eps)^gamma on the false negatives of the foreground class only
    f1 = [(1 - q + EPS) ** 3 for q in q1]
    assert asymmetric_dice(Z, T, RARE, gamma=3.0, symmetric=True).item() == pytest.approx(
        _dice_by_hand(q1, [0, 1], f1, [1, 1]), rel=1e-12)
    # asymmetric focal leaves the rare class's Dice untouched
    assert asymmetric_dice(Z, T, RARE, gamma=3.0).item() == pytest.approx(asymmetric_dice(Z, T, RARE).item(),
                                                                        rel=1e-12)


def test_dice_ignored_voxel_is_masked_out():
    y = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)  # voxel 1 ignored
    q1 = [1 - sig(2), sig(1)]
    expected = _dice_by_hand(q1, [0, 0], [1, 1], [1, 0])  # its foreground probability is not a false positive
    assert asymmetric_dice(Z, y, RARE).item() == pytest.approx(expected, rel=1e-12)


def test_dice_per_sample_mean_over_samples_and_classes():
    torch.manual_seed(1)
    z = torch.randn(3, 3, 5, 4, dtype=torch.float64)
    t = torch.randint(0, 3, (3, 5, 4))
    q = torch.softmax(z, 1)
    y = one_hot(t, 3)
    terms = []
    for i in range(3):
        for c in (1, 2):
            tp, fp, fn = (q[i, c] * y[i, c]).sum(), (q[i, c] * (1 - y[i, c])).sum(), ((1 - q[i, c]) * y[i, c]).sum()
            terms.append((fp + fn + 1e-5) / (2 * tp + fp + fn + 1e-5))
    assert asymmetric_dice(z, t, [0, 1, 1]).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-12)


# ------------------------------------------------------------------- reductions to known losses

@pytest.fixture
def batch():
    torch.manual_seed(0)
    z = torch.randn(2, 3, 6, 7, 5, dtype=torch.float64) * 2
    t = torch.randint(0, 3, (2, 1, 6, 7, 5))
    return z, t


def test_plain_ce_equals_torch_cross_entropy(batch):
    z, t = batch
    ours = asymmetric_ce(z, t, [0, 1, 1])
    assert ours.item() == pytest.approx(F.cross_entropy(z, t[:, 0]).item(), rel=1e-4)
    assert ours.item() == pytest.approx(asymmetric_ce(z, t[:, 0], [0, 1, 1]).item(), rel=1e-15)  # (N, *spatial)


@pytest.mark.parametrize("gamma", [1.0, 2.0, 4.0])
def test_symmetric_focal_over_c_equals_monai_focal(batch, gamma):
    z, t = batch
    ours = asymmetric_ce(z, t, [0, 1, 1], gamma=gamma, symmetric=True) / 3
    monai = FocalLoss(use_softmax=True, include_background=True, gamma=gamma)(z, one_hot(t[:, 0], 3))
    assert ours.item() == pytest.approx(monai.item(), rel=1e-4)


def test_plain_dice_equals_monai_dice(batch):
    z, t = batch
    monai = DiceLoss(include_background=False, softmax=True, batch=False)(z, one_hot(t[:, 0], 3))
    assert abs(asymmetric_dice(z, t, [0, 1, 1]).item() - monai.item()) < 1e-6


def test_any_number_of_spatial_dims():
    torch.manual_seed(2)
    for shape in [(2, 3, 9), (2, 3, 4, 5), (1, 3, 2, 3, 4, 2)]:
        z = torch.randn(*shape, dtype=torch.float64)
        t = torch.randint(0, 3, (shape[0],) + shape[2:])
        assert asymmetric_ce(z, t, [0, 1, 1]).item() == pytest.approx(F.cross_entropy(z, t).item(), rel=1e-4)


def test_half_precision_computed_in_float32_and_float64_kept():
    z = Z.float().half()
    out = asymmetric_ce(z, T, RARE)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(asymmetric_ce(Z, T, RARE).item(), rel=1e-3)
    assert asymmetric_dice(Z, T, RARE).dtype == torch.float64
    assert asymmetric_ce(Z.bfloat16(), T, RARE).dtype == torch.float32


# ------------------------------------------------------------------- the paper's gradient claims

def _logit_grad(fn, z, t, **kwargs):
    z = z.clone().requires_grad_(True)
    fn(z, t, **kwargs).backward()
    return z.grad


def _two_class_case():
    torch.manual_seed(3)
    t = torch.zeros(1, 40, dtype=torch.long)
    t[0, :10] = 1  # 10 rare voxels
    z = torch.randn(1, 2, 40, dtype=torch.float64)
    z[0, 0, 10:] += 1.5  # background fairly well classified (q0 in roughly 0.5-0.99)
    z[0, 1, :10] += 2.5  # rare voxels well classified too
    return z, t


def test_asymmetric_focal_keeps_rare_gradient_and_attenuates_background():
    z, t = _two_class_case()
    g_ce = _logit_grad(asymmetric_ce, z, t, rare=RARE)
    g_focal = _logit_grad(asymmetric_ce, z, t, rare=RARE, gamma=2.0)
    rare, bg = t[0] == 1, t[0] == 0
    assert torch.allclose(g_focal[..., rare], g_ce[..., rare], rtol=0, atol=1e-15)
    # well-classified background voxels (q0 > 0.5) are attenuated, the more the better classified
    easy = bg & (torch.softmax(z, 1)[0, 0] > 0.5)
    assert easy.sum() >= 20
    ratio = g_focal[..., easy].norm(dim=1) / g_ce[..., easy].norm(dim=1)
    assert (ratio < 1).all() and ratio.max() < 0.6
    # symmetric focal attenuates the rare voxels too
    g_sym = _logit_grad(asymmetric_ce, z, t, rare=RARE, gamma=2.0, symmetric=True)
    assert (torch.softmax(z, 1)[0, 1, rare] > 0.5).all()
    assert (g_sym[..., rare].norm(dim=1) < g_ce[..., rare].norm(dim=1)).all()


def test_asymmetric_margin_enlarges_only_rare_gradients():
    z, t = _two_class_case()
    g_ce = _logit_grad(asymmetric_ce, z, t, rare=RARE)
    g_m = _logit_grad(asymmetric_ce, z, t, rare=RARE, margin=1.0)
    rare, bg = t[0] == 1, t[0] == 0
    assert torch.equal(g_m[..., bg], g_ce[..., bg])
    assert (g_m[..., rare].norm(dim=1) > g_ce[..., rare].norm(dim=1) * 1.05).all()
    g_sym = _logit_grad(asymmetric_ce, z, t, rare=RARE, margin=1.0, symmetric=True)
    assert (g_sym[..., bg].norm(dim=1) > g_ce[..., bg].norm(dim=1)).all()


@pytest.mark.parametrize("loss", [asymmetric_ce, asymmetric_dice])
def test_ignored_voxels_get_zero_gradient(loss):
    torch.manual_seed(4)
    z = torch.randn(2, 3, 8, dtype=torch.float64)
    y = one_hot(torch.randint(0, 3, (2, 8)), 3)
    y[0, :, 2] = 0
    y[1, :, 5:] = 0
    g = _logit_grad(loss, z, y, rare=[0, 1, 1], margin=0.5, gamma=2.0)
    assert torch.count_nonzero(g[0, :, 2]) == 0 and torch.count_nonzero(g[1, :, 5:]) == 0
    assert torch.count_nonzero(g[0, :, 3]) > 0


def test_continuous_rarity_interpolates():
    z, t = _two_class_case()
    # focal factor is linear in r: r = 0.5 gives the mean of r = 0 and r = 1
    low, high = (asymmetric_ce(z, t, [0, r], gamma=2.0).item() for r in (0.0, 1.0))
    assert asymmetric_ce(z, t, [0, 0.5], gamma=2.0).item() == pytest.approx((low + high) / 2, rel=1e-12)
    # margin: r = 0.5 acts like margin m / 2 with r = 1, and its rare gradients lie between r = 0 and r = 1
    half = asymmetric_ce(z, t, [0, 0.5], margin=1.0).item()
    assert half == pytest.approx(asymmetric_ce(z, t, [0, 1.0], margin=0.5).item(), rel=1e-12)
    rare = t[0] == 1
    norms = [_logit_grad(asymmetric_ce, z, t, rare=[0, r], margin=1.0)[..., rare].norm(dim=1) for r in (0, .5, 1)]
    assert (norms[0] < norms[1]).all() and (norms[1] < norms[2]).all()


def test_focal_factor_is_not_detached():
    z, t = _two_class_case()
    g = _logit_grad(asymmetric_ce, z, t, rare=RARE, gamma=2.0)
    zz = z.clone().requires_grad_(True)
    q = torch.softmax(zz, 1)
    f = (1 - q + EPS) ** 2
    f = torch.stack([f[:, 0], torch.ones_like(f[:, 1])], 1).detach()  # detached reference
    (-(f * one_hot(t, 2) * torch.log(q + EPS)).sum() / 40).backward()
    assert not torch.allclose(g, zz.grad)


# ------------------------------------------------------------------- module wrapper and baselines

def test_asymmetric_loss_module_combines_terms(batch):
    z, t = batch
    loss = AsymmetricLoss([0, 1, 1], margin=0.5, gamma=2.0, ce_weight=1.0, dice_weight=2.0)
    terms = loss.terms(z, t)
    assert set(terms) == {"ce", "dice"}
    assert terms["ce"].item() == pytest.approx(asymmetric_ce(z, t, [0, 1, 1], 0.5, 2.0).item(), rel=1e-12)
    assert terms["dice"].item() == pytest.approx(2 * asymmetric_dice(z, t, [0, 1, 1], 0.5, 2.0).item(), rel=1e-12)
    assert loss(z, t).item() == pytest.approx(terms["ce"].item() + terms["dice"].item(), rel=1e-12)
    assert set(AsymmetricLoss([0, 1, 1], dice_weight=1.0, ce_weight=0.0).terms(z, t)) == {"dice"}
    with pytest.raises(ValueError, match="rare of length 2"):
        AsymmetricLoss([0, 1])(z, t)
    with pytest.raises(ValueError, match="both 0"):
        AsymmetricLoss([0, 1], ce_weight=0.0)


def test_soft_fbeta():
    torch.manual_seed(5)
    z = torch.randn(2, 2, 10, dtype=torch.float64)
    t = torch.randint(0, 2, (2, 10))
    # F1 is exactly the (m = 0, gamma = 0) Dice loss
    assert soft_fbeta_loss(z, t, 1.0).item() == pytest.approx(asymmetric_dice(z, t, RARE).item(), rel=1e-12)
    q = torch.softmax(z, 1)[:, 1]
    y = t.double()
    tp, fp, fn = (q * y).sum(1), (q * (1 - y)).sum(1), ((1 - q) * y).sum(1)
    expected = (1 - 5 * tp / (5 * tp + 4 * fn + fp + 1e-5)).mean()
    assert soft_fbeta_loss(z, t, 2.0).item() == pytest.approx(expected.item(), rel=1e-12)
    with pytest.raises(ValueError, match="beta"):
        soft_fbeta_loss(z, t, 0.0)


def test_ldam_rarity():
    assert ldam_rarity([10000, 16]) == pytest.approx([0.2, 1.0], rel=1e-12)
    assert ldam_rarity([81, 1, 16]) == pytest.approx([1 / 3, 1.0, 0.5], rel=1e-12)
    with pytest.raises(ValueError, match="class_counts"):
        ldam_rarity([10, 0])


def test_logit_adjusted_ce():
    assert logit_adjusted_ce(Z, T, [1, 1]).item() == pytest.approx(asymmetric_ce(Z, T, RARE).item(), rel=1e-12)
    # priors 0.8 / 0.2, tau = 1: logits shift by log prior
    za = Z + torch.log(torch.tensor([0.8, 0.2], dtype=torch.float64)).view(1, 2, 1)
    expected = (-math.log(torch.softmax(za, 1)[0, 0, 0].item() + EPS)
                - math.log(torch.softmax(za, 1)[0, 1, 1].item() + EPS)) / 2
    assert logit_adjusted_ce(Z, T, [0.8, 0.2]).item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="class_priors"):
        logit_adjusted_ce(Z, T, [1, 0])


# ------------------------------------------------------------------- bad input

@pytest.mark.parametrize("loss", [asymmetric_ce, asymmetric_dice])
@pytest.mark.parametrize("args, kwargs, match", [
    ((Z, T, [0, 1, 1]), {}, "rare has 3 entries but the logits have 2 classes"),
    ((Z, T, [0, 1.5]), {}, r"rare values must lie in \[0, 1\]"),
    ((Z, T, [-0.1, 1]), {}, r"rare values must lie in \[0, 1\]"),
    ((Z, torch.tensor([[0, 2]]), RARE), {}, r"label values \[2\] outside \[0, 1\]"),
    ((Z, torch.tensor([[0, -1]]), RARE), {}, r"label values \[-1\]"),
    ((Z, torch.tensor([[0, 1, 1]]), RARE), {}, "must match voxel for voxel"),
    ((Z, torch.zeros(1, 3, 2), RARE), {}, "fits neither a label map"),
    ((Z, torch.tensor([[[0.5, 1.0]]]), RARE), {}, "non-integer values"),
    ((Z, T, RARE), {"margin": -1.0}, "margin must be a finite number >= 0"),
    ((Z, T, RARE), {"gamma": -2.0}, "gamma must be a finite number >= 0"),
    ((Z[0], T, RARE), {}, "at least one spatial dimension"),
    ((Z.long(), T, RARE), {}, "floating-point"),
])
def test_bad_input_raises_value_error_naming_argument(loss, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        loss(*args, **kwargs)


def test_symmetric_still_validates_rare():
    with pytest.raises(ValueError, match="rare"):
        asymmetric_ce(Z, T, [0, 1, 1], symmetric=True)
