"""Boundary-only upsample + argmax equals full-size bilinear upsampling then argmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gcnet.deploy.postprocess import reference_upsample_argmax, upsample_argmax


def _smooth_logits(k: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Logits with regions and boundaries like a segmentation model's, plus noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, k, max(2, h // 6), max(2, w // 6), generator=g) * 3
    return F.interpolate(coarse, size=(h, w), mode="bilinear")[0] + 0.3 * torch.randn(k, h, w, generator=g)


@pytest.mark.parametrize("k,h,w,s", [(19, 32, 64, 8), (11, 45, 60, 8), (4, 7, 9, 3), (3, 10, 12, 2), (5, 6, 5, 1)])
def test_integer_scale_matches_reference(k: int, h: int, w: int, s: int) -> None:
    x = _smooth_logits(k, h, w)
    fast = upsample_argmax(x, (h * s, w * s))
    ref = reference_upsample_argmax(x, (h * s, w * s))
    assert fast.shape == ref.shape == (h * s, w * s) and fast.dtype == np.uint8
    assert (fast == ref).mean() >= 0.9999


def test_batched_and_half_inputs() -> None:
    x = _smooth_logits(6, 12, 16, seed=1)
    ref = reference_upsample_argmax(x, (96, 128))
    assert np.array_equal(upsample_argmax(x[None], (96, 128)), ref)
    assert (upsample_argmax(x.half().numpy(), (96, 128)) == reference_upsample_argmax(x.half(), (96, 128))).mean() > 0.999


def test_non_integer_scale_falls_back_to_reference() -> None:
    x = _smooth_logits(5, 45, 61)
    assert np.array_equal(upsample_argmax(x, (360, 480)), reference_upsample_argmax(x, (360, 480)))


def test_many_classes_use_uint16() -> None:
    x = _smooth_logits(300, 5, 6)
    out = upsample_argmax(x, (20, 24))
    assert out.dtype == np.uint16
    assert np.array_equal(out, reference_upsample_argmax(x, (20, 24)))


def test_tied_logits_pick_the_first_class_like_argmax() -> None:
    """Exact ties (e.g. int8 logits) resolve to the lowest class index, as the reference's argmax does."""
    x = torch.randint(0, 3, (6, 16, 24), generator=torch.Generator().manual_seed(2)).float()
    x[4] = x[1]  # classes 1 and 4 tie everywhere: 4 must never win
    fast = upsample_argmax(x, (128, 192))
    assert np.array_equal(fast, reference_upsample_argmax(x, (128, 192)))
    assert not (fast == 4).any()


def test_boundary_cells_in_batches_match_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Boundary cells labelled a few at a time give the labels of one batch (the frame-size path)."""
    import gcnet.deploy.postprocess as post

    x = _smooth_logits(19, 32, 64, seed=3)
    whole = upsample_argmax(x, (256, 512))
    monkeypatch.setattr(post, "_BATCH_VALUES", 19 * 64 * 7)  # 7 cells per batch: many batches
    assert np.array_equal(upsample_argmax(x, (256, 512)), whole)
    assert (whole == reference_upsample_argmax(x, (256, 512))).mean() >= 0.9999
