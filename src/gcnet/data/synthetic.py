"""A procedurally generated segmentation dataset (no downloads) for demos, smoke tests and CI.

Each scene has a sky gradient above a random horizon, a noisy road below it, and random objects of three
more classes, each with its own colour *and* texture cue so that a small network can learn them:

============  ====================================================================
class         appearance
============  ====================================================================
``sky``       smooth vertical blue gradient (top)
``road``      grey with strong fine-grain noise (bottom)
``box``       1-3 red rectangles with a checkerboard texture
``ball``      0-2 green discs with radial shading; a 1-pixel ring around each is ignored (255)
``stripes``   0-1 band of diagonal yellow / dark stripes
============  ====================================================================

Global colour jitter and Gaussian pixel noise are added. Labels match ``get_dataset_info("synthetic")``.
The output is a ``folder``-layout dataset (see :mod:`gcnet.data.datasets`) plus ``dataset.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from gcnet.data.metadata import get_dataset_info

__all__ = ["make_synthetic_dataset", "render_scene"]

SKY, ROAD, BOX, BALL, STRIPES = range(5)
MIN_SIDE = 16  # the smallest image height and width a scene is drawn at


def render_scene(rng: np.random.Generator, size: tuple[int, int] = (128, 160), ignore_index: int = 255):
    """Draw one scene: returns ``(RGB uint8 HxWx3, int64 HxW label)``."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), dtype=np.float32)
    label = np.zeros((h, w), dtype=np.int64)

    # Sky above a random horizon, road below.
    horizon = int(h * rng.uniform(0.3, 0.55))
    t = (yy / max(horizon, 1))[..., None]
    sky_top = np.array([40, 90, 200], np.float32) + rng.uniform(-15, 15, 3)
    sky_bottom = np.array([150, 190, 240], np.float32) + rng.uniform(-15, 15, 3)
    img[:] = sky_top * (1 - t) + sky_bottom * t
    road = yy >= horizon
    grey = rng.uniform(90, 130)
    img[road] = grey + rng.normal(0, 18, size=(int(road.sum()), 1))
    label[:] = np.where(road, ROAD, SKY)

    # Stripes: a band (random rectangle) of diagonal stripes.
    if rng.random() < 0.75:
        bh, bw = int(h * rng.uniform(0.15, 0.35)), int(w * rng.uniform(0.3, 0.7))
        y0, x0 = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        band = (yy >= y0) & (yy < y0 + bh) & (xx >= x0) & (xx < x0 + bw)
        period = rng.uniform(6, 10)
        on = ((xx + yy) % period) < period / 2
        img[band & on] = np.array([235, 200, 40], np.float32)
        img[band & ~on] = np.array([50, 40, 20], np.float32)
        label[band] = STRIPES

    # Boxes: red rectangles with a checkerboard.
    for _ in range(int(rng.integers(1, 4))):
        bh, bw = int(h * rng.uniform(0.12, 0.35)), int(w * rng.uniform(0.1, 0.3))
        y0, x0 = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        box = (yy >= y0) & (yy < y0 + bh) & (xx >= x0) & (xx < x0 + bw)
        check = ((yy // 4 + xx // 4) % 2).astype(bool)
        base = np.array([200, 40, 40], np.float32) + rng.uniform(-20, 20, 3)
        img[box & check] = base
        img[box & ~check] = base * 0.6
        label[box] = BOX

    # Balls: green shaded discs with an ignored boundary ring.
    for _ in range(int(rng.integers(0, 3))):
        r = rng.uniform(0.08, 0.18) * min(h, w)
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        disc = d <= r
        shade = (1.0 - 0.6 * (d / r))[..., None]
        color = np.array([40, 190, 60], np.float32) + rng.uniform(-20, 20, 3)
        img[disc] = (color * shade)[disc]
        label[disc] = BALL
        label[(d > r - 1.0) & (d <= r + 0.5)] = ignore_index

    img += rng.uniform(-20, 20, 3)  # global colour jitter
    img += rng.normal(0, 6, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), label


def make_synthetic_dataset(
    root: str | Path,
    num_train: int = 48,
    num_val: int = 12,
    size: tuple[int, int] = (128, 160),
    seed: int = 0,
) -> Path:
    """Write a ``folder``-layout dataset to ``root`` and return ``root`` as a Path.

    Layout: ``images/{train,val}/NNNN.png``, ``labels/{train,val}/NNNN.png`` (index PNGs, 255 = ignore) and
    ``dataset.json`` (the ``synthetic`` :class:`DatasetInfo`). ``size`` is ``(H, W)``. The output is a pure
    function of the arguments (scene ``i`` of a split uses ``default_rng([seed, split, i])``); existing files
    with the same names are overwritten.
    """
    h, w = (int(s) for s in size)
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ValueError(f"size must be at least {MIN_SIDE}x{MIN_SIDE}, got {size}")
    if num_train < 0 or num_val < 0:
        raise ValueError("num_train and num_val must be >= 0")
    info = get_dataset_info("synthetic")
    root = Path(root)
    for split_id, (split, n) in enumerate((("train", num_train), ("val", num_val))):
        img_dir = root / "images" / split
        lbl_dir = root / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng([seed, split_id, i])
            image, label = render_scene(rng, (h, w), info.ignore_index)
            Image.fromarray(image).save(img_dir / f"{i:04d}.png", compress_level=1)
            Image.fromarray(label.astype(np.uint8)).save(lbl_dir / f"{i:04d}.png", compress_level=1)
    (root / "dataset.json").write_text(json.dumps(info.to_dict(), indent=2) + "\n")
    return root
