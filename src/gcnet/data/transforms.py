"""The paper's training augmentation (the MMSegmentation pipeline of the authors' configs) and normalisation.

Training (:class:`TrainTransform`), in MMSegmentation order::

    RandomResize(scale=base_scale, ratio_range=(0.5, 2.0), keep_ratio=True)
    RandomCrop(crop_size, cat_max_ratio=0.75)
    RandomFlip(prob=0.5)                      # horizontal
    PhotoMetricDistortion()                   # brightness 32, contrast/saturation 0.5-1.5, hue 18
    SegDataPreProcessor(mean=MEAN, std=STD, pad_val=0, seg_pad_val=255, size=crop_size)

As in MMSegmentation's ``SegDataPreProcessor``, the image is normalised first and then padded at the bottom
and right to ``crop_size`` with 0 (i.e. the mean colour after normalisation), the label with ``ignore_index``.

All randomness comes from a ``numpy.random.Generator``: the one passed to ``__call__`` (``rng=``), otherwise
the transform's own generator (seeded by ``seed``; :meth:`TrainTransform.reseed`). Inside a DataLoader worker
the own generator is re-derived from the worker's torch seed, so workers never repeat each other's
augmentations and runs with a seeded DataLoader are reproducible. The trainer passes a per-sample generator
derived from ``(seed, epoch, index)`` instead (:class:`gcnet.engine.sampler.SeededTrainSet`; best for resuming).

Images are RGB ``uint8`` ``HxWx3`` arrays, labels integer ``HxW`` arrays; outputs are a float32 tensor
``[3, H, W]`` and an int64 tensor ``[H, W]``. Resizing and HSV conversion use OpenCV.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import cv2
import numpy as np
import torch

__all__ = [
    "MEAN",
    "STD",
    "normalize",
    "denormalize",
    "rescale_size",
    "resize_image",
    "resize_label",
    "random_resize",
    "random_crop",
    "random_flip",
    "photometric_distortion",
    "pad_to_size",
    "size_pair",
    "TrainTransform",
    "EvalTransform",
]

MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255 scale (ImageNet)
STD = (58.395, 57.12, 57.375)

SizeLike = Union[int, Sequence[int]]


def size_pair(size: SizeLike, name: str) -> tuple[int, int]:
    """``(height, width)`` of an int (a square) or a pair; ``name`` (the argument's) goes in the error for
    anything else or for a size below 1."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (size, size)
    elif isinstance(size, np.ndarray):
        size = size.tolist()
    ok = (isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2
          and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size))
    if not ok:
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


# ---------------------------------------------------------------------------------------- normalisation
def normalize(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 ``HxWx3`` -> float32 tensor ``[3, H, W]``: ``(image - MEAN) / STD`` per channel."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"normalize expects an HxWx3 RGB image, got shape {image.shape}")
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.float32)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    return ((t - mean) / std).contiguous()


def denormalize(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`normalize`: float ``[3, H, W]`` tensor -> RGB uint8 ``HxWx3`` (rounded, clipped)."""
    t = tensor.detach().to("cpu", torch.float32)
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"denormalize expects a [3, H, W] tensor, got shape {tuple(t.shape)}")
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    img = (t * std + mean).round().clamp(0, 255).to(torch.uint8)
    return img.permute(1, 2, 0).numpy()


# ----------------------------------------------------------------------------------------------- resize
def rescale_size(old_wh: tuple[int, int], scale: Sequence[float]) -> tuple[int, int]:
    """New ``(w, h)`` of mmcv ``imrescale``: the largest size with the same aspect ratio that fits ``scale``.

    ``scale`` is a pair (order irrelevant): the long edge is limited by ``max(scale)``, the short edge by
    ``min(scale)``.
    """
    w, h = old_wh
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)


def resize_image(image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (OpenCV ``INTER_LINEAR``, as mmcv) of an image to ``(w, h)``."""
    w, h = size_wh
    if image.shape[1] == w and image.shape[0] == h:
        return image
    return cv2.resize(image, (int(w), int(h)), interpolation=cv2.INTER_LINEAR)


def resize_label(label: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize (OpenCV ``INTER_NEAREST``, as mmcv) of an integer label map to ``(w, h)``."""
    w, h = size_wh
    label = np.asarray(label)
    if label.shape[1] == w and label.shape[0] == h:
        return label
    lo, hi = (int(label.min()), int(label.max())) if label.size else (0, 0)
    work = label.astype(np.uint8 if 0 <= lo and hi <= 255 else np.int32)
    out = cv2.resize(work, (int(w), int(h)), interpolation=cv2.INTER_NEAREST)
    return out.astype(label.dtype, copy=False)


# ------------------------------------------------------------------------------------------ augmentation
def random_resize(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    base_scale: Sequence[int] | None = None,
    ratio_range: tuple[float, float] = (0.5, 2.0),
) -> tuple[np.ndarray, np.ndarray]:
    """MMSeg ``RandomResize(scale=base_scale, ratio_range, keep_ratio=True)``.

    ``ratio ~ U(ratio_range)``; target ``(int(s0 * ratio), int(s1 * ratio))`` of ``base_scale`` (default: the
    image's own ``(w, h)``), then an aspect-preserving rescale to fit it (bilinear image, nearest label).
    """
    h, w = image.shape[:2]
    base = (w, h) if base_scale is None else tuple(base_scale)
    lo, hi = ratio_range
    ratio = rng.random() * (hi - lo) + lo
    target = (int(base[0] * ratio), int(base[1] * ratio))
    new_wh = rescale_size((w, h), target)
    return resize_image(image, new_wh), resize_label(label, new_wh)


def random_crop(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    crop_size: SizeLike,
    cat_max_ratio: float = 0.75,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray]:
    """MMSeg ``RandomCrop(crop_size=(h, w), cat_max_ratio)``.

    The crop is ``min(crop, image)`` per side. With ``cat_max_ratio < 1`` up to 10 crops are tried until the
    crop holds more than one class and no class (ignore excluded) covers ``cat_max_ratio`` or more of its
    labelled pixels; after 10 failures an 11th random crop is used as is (MMSeg behaviour).
    """
    ch, cw = size_pair(crop_size, "crop_size")
    h, w = image.shape[:2]
    margin_h, margin_w = max(h - ch, 0), max(w - cw, 0)

    def bbox():
        y = int(rng.integers(0, margin_h + 1))
        x = int(rng.integers(0, margin_w + 1))
        return y, y + ch, x, x + cw

    y1, y2, x1, x2 = bbox()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            values, counts = np.unique(label[y1:y2, x1:x2], return_counts=True)
            counts = counts[values != ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y1, y2, x1, x2 = bbox()
    return image[y1:y2, x1:x2], label[y1:y2, x1:x2]


def random_flip(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, prob: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal flip of image and label together with probability ``prob``."""
    if prob > 0 and rng.random() < prob:
        return image[:, ::-1], label[:, ::-1]
    return image, label


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    out = img.astype(np.float32) * alpha + beta
    return np.clip(out, 0, 255).astype(np.uint8)


def photometric_distortion(
    image: np.ndarray,
    rng: np.random.Generator,
    brightness_delta: float = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """MMSeg ``PhotoMetricDistortion`` on an RGB uint8 image (same random draws, same order).

    Brightness (``+U(-delta, delta)``), then contrast (``*U(range)``) either first or last (coin flip),
    saturation (``*U(range)`` on S of OpenCV uint8 HSV) and hue (``+randint(-delta, delta)`` mod 180 on H);
    each step happens with probability 0.5. Values are clipped to 0..255 and truncated to uint8 after
    every step.
    """
    img = np.ascontiguousarray(image)
    if rng.integers(2):  # brightness
        img = _convert(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):  # contrast first
        img = _convert(img, alpha=rng.uniform(*contrast_range))
    if rng.integers(2):  # saturation
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rng.uniform(*saturation_range))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.integers(2):  # hue
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        shift = int(rng.integers(-hue_delta, hue_delta))
        hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int64) + shift) % 180).astype(np.uint8)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if mode == 0 and rng.integers(2):  # contrast last
        img = _convert(img, alpha=rng.uniform(*contrast_range))
    return img


def pad_to_size(
    image: torch.Tensor, label: torch.Tensor, size: SizeLike, pad_val: float = 0.0, ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a ``[C, h, w]`` image and ``[h, w]`` label at the bottom/right to at least ``size = (H, W)``."""
    th, tw = size_pair(size, "size")
    h, w = label.shape[-2:]
    if h >= th and w >= tw:
        return image, label
    H, W = max(h, th), max(w, tw)
    img = image.new_full((image.shape[0], H, W), pad_val)
    img[:, :h, :w] = image
    lbl = label.new_full((H, W), ignore_index)
    lbl[:h, :w] = label
    return img, lbl


# ---------------------------------------------------------------------------------------- rng handling
class _RngMixin:
    def _init_rng(self, seed: int | None) -> None:
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._entropy = np.random.SeedSequence(seed).entropy
        self._worker_key = None

    def reseed(self, seed: int | None) -> None:
        """Reset the transform's own generator (e.g. per worker or per run)."""
        self._init_rng(seed)

    def _own_rng(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker_key != (info.id, info.seed):
            # A DataLoader worker got a copy of the parent's generator: derive a distinct, reproducible one.
            self.rng = np.random.default_rng([self._entropy, info.seed])
            self._worker_key = (info.id, info.seed)
        return self.rng


# ----------------------------------------------------------------------------------------------- pipelines
class TrainTransform(_RngMixin):
    """The paper's training augmentation; ``__call__(image, label, rng=None) -> (image [3,H,W], label [H,W])``.

    Args:
        crop_size: ``(h, w)`` or an int; outputs are exactly this size (padded when the image is smaller).
        scale_range: ``ratio_range`` of the random rescale relative to ``base_scale``.
        cat_max_ratio: crop retry criterion (see :func:`random_crop`); ``>= 1`` disables it.
        flip_prob: probability of a horizontal flip.
        photometric: apply :func:`photometric_distortion`.
        photometric_strength: scales its ranges (brightness delta 32, contrast and saturation 1 +- 0.5,
            hue delta 18; 1 = MMSeg's, 0..2).
        ignore_index: label value for padding / ignored pixels.
        base_scale: MMSeg ``scale`` of ``RandomResize``, e.g. ``(2048, 1024)`` for Cityscapes or ``(960, 720)``
            for CamVid (order irrelevant, aspect ratio is kept); None = each image's own size.
        seed: seed of the transform's own generator (used when ``rng`` is not passed).
        pad_val: image padding value, in normalised space (MMSeg ``pad_val=0``).
    """

    def __init__(
        self,
        crop_size: SizeLike,
        scale_range: tuple[float, float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        ignore_index: int = 255,
        base_scale: Sequence[int] | None = None,
        photometric_strength: float = 1.0,
        seed: int | None = None,
        pad_val: float = 0.0,
    ) -> None:
        self.crop_size = size_pair(crop_size, "crop_size")
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = (lo, hi)
        self.cat_max_ratio = float(cat_max_ratio)
        self.flip_prob = float(flip_prob)
        self.photometric = bool(photometric)
        if not 0 <= photometric_strength <= 2:
            raise ValueError(f"photometric_strength must be within 0..2, got {photometric_strength}")
        k = float(photometric_strength)
        self._photometric_args = dict(brightness_delta=32 * k, contrast_range=(1 - k / 2, 1 + k / 2),
                                      saturation_range=(1 - k / 2, 1 + k / 2), hue_delta=max(1, round(18 * k)))
        self.ignore_index = int(ignore_index)
        self.base_scale = None if base_scale is None else size_pair(base_scale, "base_scale")
        self.pad_val = float(pad_val)
        self._init_rng(seed)

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop_size={self.crop_size}, scale_range={self.scale_range}, "
            f"base_scale={self.base_scale}, cat_max_ratio={self.cat_max_ratio}, flip_prob={self.flip_prob}, "
            f"photometric={self.photometric}, photometric_args={self._photometric_args}, "
            f"ignore_index={self.ignore_index})"
        )

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image = np.asarray(image)
        label = np.asarray(label)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
        if label.shape != image.shape[:2]:
            raise ValueError(f"label shape {label.shape} differs from image size {image.shape[:2]}")
        if rng is None:
            rng = self._own_rng()
        image, label = random_resize(image, label, rng, self.base_scale, self.scale_range)
        image, label = random_crop(image, label, rng, self.crop_size, self.cat_max_ratio, self.ignore_index)
        image, label = random_flip(image, label, rng, self.flip_prob)
        if self.photometric:
            image = photometric_distortion(image, rng, **self._photometric_args)
        img_t = normalize(image)
        lbl_t = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64, copy=False))
        return pad_to_size(img_t, lbl_t, self.crop_size, self.pad_val, self.ignore_index)


class EvalTransform(_RngMixin):
    """Evaluation / inference transform: ``(image, label) -> (normalised [3,H,W] tensor, int64 [H,W] | None)``.

    With ``scale`` the image is resized like MMSeg's test ``Resize(scale, keep_ratio)`` (``keep_ratio``: fit
    into ``scale`` keeping the aspect ratio, else resize to exactly ``scale = (w, h)``); the label always stays
    at full resolution (predictions are resized back to it). ``label=None`` gives ``(image, None)``.
    """

    def __init__(self, scale: Sequence[int] | None = None, keep_ratio: bool = True) -> None:
        self.scale = None if scale is None else size_pair(scale, "scale")
        self.keep_ratio = bool(keep_ratio)
        self._init_rng(None)

    def __repr__(self) -> str:
        return f"EvalTransform(scale={self.scale}, keep_ratio={self.keep_ratio})"

    def __call__(self, image: np.ndarray, label: np.ndarray | None = None, rng=None):
        image = np.asarray(image)
        if self.scale is not None:
            h, w = image.shape[:2]
            new_wh = rescale_size((w, h), self.scale) if self.keep_ratio else self.scale
            image = resize_image(image, new_wh)
        img_t = normalize(image)
        if label is None:
            return img_t, None
        return img_t, torch.from_numpy(np.ascontiguousarray(label).astype(np.int64, copy=False))
