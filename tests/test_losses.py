"""OHEM cross-entropy against an independent numpy computation; GCNetLoss composition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gcnet.engine.losses import GCNetLoss, OhemCrossEntropy

IGNORE = 255


def _case(seed=0, b=2, k=5, h=7, w=9, ignore_frac=0.2, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, k, (b, h, w), generator=g)
    labels[torch.rand(b, h, w, generator=g) < ignore_frac] = IGNORE
    return logits, labels


def _ohem_reference(logits, labels, thresh, min_kept, weight=None, loss_weight=1.0):
    """Pixel-by-pixel numpy re-derivation of the authors' OhemCrossEntropy. Returns (loss, n_kept, min_value)."""
    x = logits.detach().numpy().astype(np.float64)
    y = labels.numpy()
    b, k, h, w = x.shape
    probs, losses = [], []
    for n in range(b):
        for i in range(h):
            for j in range(w):
                t = y[n, i, j]
                if t == IGNORE:
                    continue
                z = x[n, :, i, j]
                m = z.max()
                lse = m + np.log(np.exp(z - m).sum())
                p = np.exp(z[t] - lse)
                wt = 1.0 if weight is None else weight[t]
                probs.append(p)
                losses.append(wt * (lse - z[t]))
    probs, losses = np.array(probs), np.array(losses)
    if len(probs) == 0:
        return 0.0, 0, None
    min_value = np.sort(probs)[min(min_kept, len(probs) - 1)]
    threshold = max(min_value, thresh)
    kept = losses[probs < threshold]
    return loss_weight * kept.mean(), len(kept), min_value


def test_ohem_min_kept_dominated_regime():
    logits, labels = _case(0)
    weight = [0.8, 1.2, 1.0, 0.5, 1.7]
    thresh, min_kept = 0.01, 50
    ref, n_kept, min_value = _ohem_reference(logits, labels, thresh, min_kept, weight)
    assert min_value > thresh and n_kept == min_kept  # the regime under test
    loss = OhemCrossEntropy(thresh=thresh, min_kept=min_kept, class_weight=weight)(logits, labels)
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(ref, rel=1e-6)


def test_ohem_thresh_dominated_regime():
    logits, labels = _case(1)
    weight = [1.1, 0.9, 1.3, 0.7, 1.0]
    thresh, min_kept = 0.7, 10
    ref, n_kept, min_value = _ohem_reference(logits, labels, thresh, min_kept, weight, loss_weight=0.4)
    assert min_value < thresh and n_kept > min_kept + 20  # the regime under test
    loss = OhemCrossEntropy(thresh=thresh, min_kept=min_kept, class_weight=weight, loss_weight=0.4)(logits, labels)
    assert loss.item() == pytest.approx(ref, rel=1e-6)


def test_ohem_is_plain_mean_not_weighted_mean():
    logits, labels = _case(2, ignore_frac=0.0)
    weight = [3.0, 0.1, 1.0, 2.0, 0.5]
    loss = OhemCrossEntropy(thresh=1.01, min_kept=0, class_weight=weight)(logits, labels)  # keeps all pixels
    per_pixel = F.cross_entropy(logits, labels, weight=torch.tensor(weight, dtype=logits.dtype), reduction="none")
    assert loss.item() == pytest.approx(per_pixel.mean().item(), rel=1e-6)
    weighted_mean = F.cross_entropy(logits, labels, weight=torch.tensor(weight, dtype=logits.dtype)).item()
    assert loss.item() != pytest.approx(weighted_mean, rel=1e-3)


def test_ohem_defaults_and_min_kept_larger_than_valid():
    logits, labels = _case(3)
    crit = OhemCrossEntropy()
    assert crit.thresh == 0.9 and crit.min_kept == 131072 and crit.ignore_index == 255
    ref, n_kept, _ = _ohem_reference(logits, labels, 0.9, 131072)
    n_valid = int((labels != IGNORE).sum())
    assert n_kept == n_valid - 1  # threshold = largest probability: everything but the easiest pixel
    assert crit(logits, labels).item() == pytest.approx(ref, rel=1e-6)


def test_ohem_gradients_and_float32():
    logits, labels = _case(4)
    logits = logits.float().requires_grad_(True)
    loss = OhemCrossEntropy(thresh=0.7, min_kept=16)(logits, labels)
    loss.backward()
    g = logits.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert (g.permute(0, 2, 3, 1)[labels == IGNORE] == 0).all()  # ignored pixels get no gradient
    ref, _, _ = _ohem_reference(logits.detach().double(), labels, 0.7, 16)
    assert loss.item() == pytest.approx(ref, rel=1e-4)


def test_ohem_no_valid_pixel_is_zero_but_differentiable():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    labels = torch.full((1, 4, 4), IGNORE)
    loss = OhemCrossEntropy(class_weight=[1.0, 2.0, 3.0])(logits, labels)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and (logits.grad == 0).all()


def test_ohem_shape_errors():
    with pytest.raises(ValueError, match="resize"):
        OhemCrossEntropy()(torch.randn(1, 3, 4, 4), torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="class_weight"):
        OhemCrossEntropy(class_weight=[1.0, 1.0])(torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))


def test_gcnet_loss_is_main_plus_0_4_aux_after_upsampling():
    g = torch.Generator().manual_seed(5)
    main = torch.randn(2, 4, 3, 5, generator=g, requires_grad=True)
    aux = torch.randn(2, 4, 3, 5, generator=g, requires_grad=True)
    labels = torch.randint(0, 4, (2, 24, 40), generator=g)
    labels[:, :3] = IGNORE
    crit = OhemCrossEntropy(thresh=0.7, min_kept=100)
    total, parts = GCNetLoss(crit)((main, aux), labels)

    up = lambda t: F.interpolate(t, size=(24, 40), mode="bilinear", align_corners=False)  # noqa: E731
    exp_main = crit(up(main), labels)
    exp_aux = crit(up(aux), labels)
    assert total.item() == pytest.approx((exp_main + 0.4 * exp_aux).item(), rel=1e-6)
    assert parts["loss_main"].item() == pytest.approx(exp_main.item(), rel=1e-6)
    assert parts["loss_aux"].item() == pytest.approx(exp_aux.item(), rel=1e-6)
    assert not parts["loss_main"].requires_grad
    total.backward()
    assert main.grad.abs().sum() > 0 and aux.grad.abs().sum() > 0

    # separate aux criterion and weight; plain logits (eval-style output) -> main only
    ce = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    total2, parts2 = GCNetLoss(crit, ce, aux_weight=1.0)((main, aux), labels)
    assert total2.item() == pytest.approx((exp_main + ce(up(aux), labels)).item(), rel=1e-6)
    total3, parts3 = GCNetLoss(ce)(main, labels)
    assert set(parts3) == {"loss_main"}
    assert total3.item() == pytest.approx(ce(up(main), labels).item(), rel=1e-6)
