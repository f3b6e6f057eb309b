"""Training / evaluation transforms: MMSeg pipeline semantics, padding, determinism, normalisation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gcnet.data import transforms as T
from gcnet.data.transforms import (
    MEAN,
    STD,
    EvalTransform,
    TrainTransform,
    denormalize,
    normalize,
    photometric_distortion,
    random_crop,
    rescale_size,
)


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _lbl(h, w, k=4, seed=0):
    return np.random.default_rng(seed + 1).integers(0, k, (h, w)).astype(np.int64)


def _plain(crop, **kw):
    """TrainTransform with every random step disabled unless re-enabled in kw."""
    args = dict(scale_range=(1.0, 1.0), cat_max_ratio=1.0, flip_prob=0.0, photometric=False, seed=0)
    args.update(kw)
    return TrainTransform(crop, **args)


def test_normalization_constants_and_roundtrip():
    assert MEAN == (123.675, 116.28, 103.53) and STD == (58.395, 57.12, 57.375)
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 200, 255
    t = normalize(img)
    assert t.dtype == torch.float32 and t.shape == (3, 2, 3)
    for c, v in enumerate((10, 200, 255)):
        assert torch.allclose(t[c], torch.full((2, 3), (v - MEAN[c]) / STD[c]))
    big = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(denormalize(normalize(big)), big)


def test_output_shapes_dtypes_and_exact_crop_size():
    tt = TrainTransform((32, 48), seed=0)
    for h, w in [(50, 70), (20, 30), (100, 40)]:
        x, y = tt(_img(h, w), _lbl(h, w))
        assert x.shape == (3, 32, 48) and x.dtype == torch.float32 and x.is_contiguous()
        assert y.shape == (32, 48) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= {0, 1, 2, 3, 255}
    x, y = TrainTransform(16, seed=0)(_img(40, 40), _lbl(40, 40))  # int crop size
    assert x.shape == (3, 16, 16) and y.shape == (16, 16)


def test_padding_values_image_zero_after_normalisation_label_ignore():
    img, lbl = _img(20, 30), _lbl(20, 30)
    x, y = _plain((32, 40), ignore_index=255)(img, lbl)
    torch.testing.assert_close(x[:, :20, :30], normalize(img))
    torch.testing.assert_close(y[:20, :30], torch.from_numpy(lbl))
    # MMSeg SegDataPreProcessor: normalise, then pad bottom/right with pad_val=0 and seg_pad_val=255
    assert torch.count_nonzero(x[:, 20:, :]) == 0 and torch.count_nonzero(x[:, :, 30:]) == 0
    assert (y[20:, :] == 255).all() and (y[:, 30:] == 255).all()
    _, y2 = _plain((32, 40), ignore_index=99)(img, lbl)
    assert (y2[20:, :] == 99).all()


def test_no_crop_no_pad_identity():
    img, lbl = _img(24, 36), _lbl(24, 36)
    x, y = _plain((24, 36))(img, lbl)
    torch.testing.assert_close(x, normalize(img))
    assert torch.equal(y, torch.from_numpy(lbl))


def test_flip_flips_image_and_label_together():
    img, lbl = _img(12, 16), _lbl(12, 16)
    x, y = _plain((12, 16), flip_prob=1.0)(img, lbl)
    torch.testing.assert_close(x, normalize(img[:, ::-1]))
    assert torch.equal(y, torch.from_numpy(lbl[:, ::-1].copy()))
    # with p=0.5 both outcomes occur, and image/label always agree
    tt = _plain((12, 16), flip_prob=0.5)
    flips = 0
    for s in range(20):
        x, y = tt(img, lbl, rng=np.random.default_rng(s))
        flipped = torch.equal(y, torch.from_numpy(lbl[:, ::-1].copy()))
        torch.testing.assert_close(x, normalize(img[:, ::-1] if flipped else img))
        flips += flipped
    assert 0 < flips < 20


def _band_label(h=20, w=100):
    """Left half one class (0), right half alternating columns of classes 1 and 2."""
    lbl = np.zeros((h, w), np.int64)
    lbl[:, 50:] = 1 + (np.arange(50) % 2)
    return lbl


def _max_ratio(y: np.ndarray, ignore=255):
    vals, cnt = np.unique(y, return_counts=True)
    cnt = cnt[vals != ignore]
    return cnt.max() / cnt.sum(), len(cnt)


def test_cat_max_ratio_respected():
    lbl = _band_label()
    img = _img(*lbl.shape)
    for s in range(40):
        rng = np.random.default_rng(s)
        _, y = random_crop(img, lbl, rng, (20, 40), cat_max_ratio=0.75)
        ratio, n = _max_ratio(y)
        assert ratio < 0.75 and n > 1, (s, ratio)
        _, y = _plain((20, 40), cat_max_ratio=0.75)(img, lbl, rng=np.random.default_rng(s))
        ratio, n = _max_ratio(y.numpy())
        assert ratio < 0.75 and n > 1
    # sanity: without the constraint, plenty of crops violate it (so the check above is not vacuous)
    violations = sum(
        _max_ratio(random_crop(img, lbl, np.random.default_rng(s), (20, 40), cat_max_ratio=1.0)[1])[0] >= 0.75
        for s in range(40)
    )
    assert violations >= 5


def test_cat_max_ratio_ignores_ignore_pixels():
    # crop with class 0 on 30% of pixels, class 1 on 20%, ignore on 50%: ratio over labelled = 0.6 -> accepted
    lbl = np.full((10, 10), 255, np.int64)
    lbl[:3] = 0
    lbl[3:5] = 1
    rng = np.random.default_rng(0)
    _, y = random_crop(_img(10, 10), lbl, rng, (10, 10), cat_max_ratio=0.75)
    assert _max_ratio(y)[0] == pytest.approx(0.6)


def test_same_rng_same_output_and_rng_overrides_own_generator():
    img, lbl = _img(60, 80), _lbl(60, 80)
    a = TrainTransform((32, 32), seed=5)
    b = TrainTransform((32, 32), seed=5)
    for _ in range(3):  # the own generators advance identically
        xa, ya = a(img, lbl)
        xb, yb = b(img, lbl)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    outs = {TrainTransform((32, 32), seed=s)(img, lbl)[0].sum().item() for s in range(4)}
    assert len(outs) > 1  # different seeds -> different augmentations
    c, d = TrainTransform((32, 32), seed=1), TrainTransform((32, 32), seed=2)
    xc, yc = c(img, lbl, rng=np.random.default_rng(9))
    xd, yd = d(img, lbl, rng=np.random.default_rng(9))
    assert torch.equal(xc, xd) and torch.equal(yc, yd)
    a.reseed(5)
    b.reseed(5)
    assert torch.equal(a(img, lbl)[0], b(img, lbl)[0])


def test_rescale_size_matches_mmcv():
    assert rescale_size((2048, 1024), (1024, 512)) == (1024, 512)
    assert rescale_size((480, 360), (960, 720)) == (960, 720)
    assert rescale_size((500, 375), (2048, 512)) == (683, 512)  # short edge limited
    assert rescale_size((500, 375), (512, 2048)) == (683, 512)  # order irrelevant
    assert rescale_size((100, 50), (150, 150)) == (150, 75)  # long edge limited


def test_random_resize_ratio_and_base_scale():
    img, lbl = _img(100, 200), _lbl(100, 200)
    rng = np.random.default_rng(3)
    r = np.random.default_rng(3).random() * 1.5 + 0.5
    im2, lb2 = T.random_resize(img, lbl, rng, base_scale=(2048, 1024), ratio_range=(0.5, 2.0))
    expect = rescale_size((200, 100), (int(2048 * r), int(1024 * r)))
    assert (im2.shape[1], im2.shape[0]) == expect == (lb2.shape[1], lb2.shape[0])
    # without base_scale the image's own size is the base: 0.5..2x of it
    sizes = [T.random_resize(img, lbl, np.random.default_rng(s))[0].shape[:2] for s in range(30)]
    assert all(50 <= h <= 200 and 100 <= w <= 400 for h, w in sizes)
    assert min(h for h, _ in sizes) < 80 and max(h for h, _ in sizes) > 150


def test_label_resize_is_nearest():
    lbl = np.array([[0, 1, 2, 255]] * 4, dtype=np.int64)
    up = T.resize_label(lbl, (9, 7))
    assert up.dtype == np.int64 and up.shape == (7, 9)
    assert set(np.unique(up).tolist()) == {0, 1, 2, 255}
    big = (np.arange(12).reshape(3, 4) * 1000).astype(np.int64)  # values beyond uint8
    assert set(np.unique(T.resize_label(big, (8, 6))).tolist()) == set(big.ravel().tolist())


class _ScriptedRng:
    """Stands in for a Generator: integers() returns scripted coin flips, uniform() a fixed value."""

    def __init__(self, flips, uniform=0.0, hue=0):
        self.flips = list(flips)
        self.u = uniform
        self.hue = hue

    def integers(self, low, high=None):
        if high is None:  # coin flip integers(2)
            return self.flips.pop(0)
        return self.hue

    def uniform(self, low, high):
        assert low <= self.u <= high
        return self.u


def test_photometric_distortion_steps():
    img = _img(8, 8)
    # all coins 0 -> unchanged (brightness, mode=0, saturation, hue, contrast-last)
    np.testing.assert_array_equal(photometric_distortion(img, _ScriptedRng([0, 0, 0, 0, 0])), img)
    # brightness only: + beta, clipped, truncated
    out = photometric_distortion(img, _ScriptedRng([1, 0, 0, 0, 0], uniform=20.0))
    np.testing.assert_array_equal(out, np.clip(img.astype(np.float32) + 20, 0, 255).astype(np.uint8))
    # contrast first (mode 1) only
    out = photometric_distortion(img, _ScriptedRng([0, 1, 1, 0, 0], uniform=1.25))
    np.testing.assert_array_equal(out, np.clip(img.astype(np.float32) * 1.25, 0, 255).astype(np.uint8))
    # saturation 0.5 on a grey image changes nothing, on a coloured one it moves towards grey
    grey = np.full((4, 4, 3), 120, np.uint8)
    np.testing.assert_array_equal(photometric_distortion(grey, _ScriptedRng([0, 0, 1, 0, 0], 0.5)), grey)
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 200
    desat = photometric_distortion(red, _ScriptedRng([0, 0, 1, 0, 0], 0.5))
    assert desat[0, 0, 0] >= 195 and 90 <= desat[0, 0, 1] <= 110
    # hue shift of 60 (OpenCV units, 120 degrees) turns red into green
    green = photometric_distortion(red, _ScriptedRng([0, 0, 0, 1, 0], hue=60))
    assert green[0, 0, 1] >= 195 and green[0, 0, 0] <= 5
    # with a real generator: same seed -> same output, output stays uint8 of the same shape
    a = photometric_distortion(img, np.random.default_rng(1))
    assert a.dtype == np.uint8 and a.shape == img.shape
    np.testing.assert_array_equal(a, photometric_distortion(img, np.random.default_rng(1)))


def test_photometric_strength_scales_the_distortion():
    """Strength 1 is MMSeg's distortion draw for draw; a weaker one changes the image less."""
    img, lbl = _img(48, 64), _lbl(48, 64)
    args = dict(scale_range=(1.0, 1.0), cat_max_ratio=1.0, flip_prob=0.0)

    def change(strength: float) -> float:
        t = TrainTransform((48, 64), photometric_strength=strength, **args)
        outs = [t(img, lbl, np.random.default_rng(i))[0] for i in range(8)]
        return float(sum((o - normalize(img)).abs().mean() for o in outs))

    plain = TrainTransform((48, 64), **args)(img, lbl, np.random.default_rng(3))[0]
    one = TrainTransform((48, 64), photometric_strength=1.0, **args)(img, lbl, np.random.default_rng(3))[0]
    assert torch.equal(plain, one)
    assert change(0.0) < change(0.5) < change(1.0) < change(2.0)
    with pytest.raises(ValueError, match="photometric_strength"):
        TrainTransform((48, 64), photometric_strength=3.0)


def test_eval_transform():
    img, lbl = _img(30, 40), _lbl(30, 40)
    x, y = EvalTransform()(img, lbl)
    torch.testing.assert_close(x, normalize(img))
    assert y.dtype == torch.int64 and torch.equal(y, torch.from_numpy(lbl))
    x, y = EvalTransform(scale=(80, 60))(img, lbl)  # keep ratio: 40x30 -> 80x60
    assert x.shape == (3, 60, 80) and y.shape == (30, 40)
    x, _ = EvalTransform(scale=(50, 10), keep_ratio=False)(img, lbl)
    assert x.shape == (3, 10, 50)
    x, y = EvalTransform()(img)
    assert y is None and x.shape == (3, 30, 40)


def test_input_validation():
    with pytest.raises(ValueError):
        TrainTransform(16)(_img(10, 10), _lbl(10, 11))
    with pytest.raises(ValueError):
        TrainTransform(16)(_img(10, 10).astype(np.float32), _lbl(10, 10))
    with pytest.raises(ValueError):
        TrainTransform((0, 4))


class _RepeatDataset(torch.utils.data.Dataset):
    def __init__(self, tt):
        self.tt = tt
        self.img, self.lbl = _img(24, 24), _lbl(24, 24)

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.tt(self.img, self.lbl)


def check_worker_streams() -> None:
    def run(seed):
        loader = torch.utils.data.DataLoader(
            _RepeatDataset(TrainTransform(16, seed=0)), batch_size=1, num_workers=2,
            generator=torch.Generator().manual_seed(seed),
        )
        return [x for x, _ in loader]

    a = run(0)
    # samples 0 and 1 come from different workers holding copies of the same transform: must differ
    assert not torch.equal(a[0], a[1])
    b = run(0)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.slow
def test_workers_get_distinct_reproducible_streams():
    # In a fresh interpreter: runtimes that other tests load into this process (OpenVINO, ONNX Runtime)
    # start thread pools after which forking or spawning DataLoader workers is unsafe.
    code = "import test_transforms as t; t.check_worker_streams(); print('ok')"
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.parametrize("bad", ["64", "64x64", (64.0, 32), (64, "a"), (1, 2, 3), 0, (3, 0), True, None])
def test_size_pair_refuses_what_is_not_one_or_two_positive_ints(bad):
    """A string is not silently split into digits ("64" -> (6, 4)), nor a float truncated."""
    from gcnet.data.transforms import size_pair

    with pytest.raises(ValueError, match=r"crop_size must be a positive int or a pair of positive ints, got"):
        size_pair(bad, "crop_size")
    assert size_pair(5, "crop_size") == (5, 5) and size_pair([3, 4], "crop_size") == (3, 4)
    assert size_pair(np.array([3, 4]), "crop_size") == (3, 4) and size_pair(np.int64(2), "crop_size") == (2, 2)
