"""Inference helpers: whole-image, sliding-window, multi-scale + flip logits, and dataset evaluation.

``infer_logits`` works with both model forms (training form in ``eval()`` mode and the
reparameterized form) and any callable: it only needs ``model(x) -> logits at ceil(H/8) x ceil(W/8)``.
``evaluate`` takes a module or a deploy runtime (``gcnet.deploy.runtimes.Runtime``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gcnet.data.loading import worker_init
from gcnet.data.transforms import size_pair
from gcnet.distributed import all_reduce_sum, rank_and_world

__all__ = ["evaluate", "infer_logits", "slide_logits"]


def _forward(model: nn.Module | Callable, x: Tensor) -> Tensor:
    out = model(x)
    if isinstance(out, (tuple, list)):  # a training-mode model returns (logits, aux)
        out = out[0]
    return out


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def whole_logits(model: nn.Module, images: Tensor) -> Tensor:
    """Logits of the whole image, upsampled (bilinear, align_corners=False) to input size."""
    return _resize(_forward(model, images), tuple(images.shape[-2:]))


def slide_logits(model: nn.Module, images: Tensor, crop_size, stride=None) -> Tensor:
    """MMSeg-style sliding-window inference: overlapping ``crop_size`` windows every ``stride``
    pixels (the last window is aligned to the border), logits summed and divided by the number of
    windows covering each pixel. Images smaller than the window are processed whole."""
    ch, cw = size_pair(crop_size, "crop_size")
    stride = size_pair(stride, "stride") if stride is not None else (max(1, ch * 2 // 3), max(1, cw * 2 // 3))
    sh, sw = stride
    if sh > ch or sw > cw:
        raise ValueError(f"stride {stride} is larger than crop_size {(ch, cw)}: windows would leave pixels out")
    b, _, h, w = images.shape
    h_grids = max(h - ch + sh - 1, 0) // sh + 1
    w_grids = max(w - cw + sw - 1, 0) // sw + 1
    preds: Tensor | None = None
    count = images.new_zeros((1, 1, h, w))
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * sh, wi * sw
            y2, x2 = min(y1 + ch, h), min(x1 + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            crop = images[:, :, y1:y2, x1:x2]
            logit = whole_logits(model, crop)
            if preds is None:
                preds = images.new_zeros((b, logit.shape[1], h, w), dtype=logit.dtype)
            preds[:, :, y1:y2, x1:x2] += logit
            count[:, :, y1:y2, x1:x2] += 1
    assert preds is not None  # there is always at least one window
    return preds / count.to(preds.dtype)


@torch.no_grad()
def infer_logits(
    model: nn.Module,
    images: Tensor,
    mode: str = "whole",
    crop_size=None,
    stride=None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> Tensor:
    """Class scores ``[B, K, H, W]`` at input size for normalised ``images [B, 3, H, W]``.

    * ``mode="whole"``: one forward pass; 1/8 logits upsampled bilinearly (align_corners=False).
    * ``mode="slide"``: overlapping ``crop_size`` windows every ``stride`` (default 2/3 of the
      window), averaged where they overlap.
    * ``scales`` / ``flip``: test-time augmentation. The input is resized by each scale (and
      flipped horizontally if ``flip``), softmax probabilities are averaged at input size, and
      the log of the averaged probabilities is returned (so ``argmax`` and ``softmax`` behave
      as for plain logits). With a single scale 1.0 and no flip the raw logits are returned.

    The model should be in ``eval()`` mode (the caller's choice; this function does not change it).
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide" and crop_size is None:
        raise ValueError("mode='slide' needs crop_size")
    scales = tuple(float(s) for s in scales) or (1.0,)
    h, w = images.shape[-2:]

    def run(x: Tensor) -> Tensor:
        if mode == "slide":
            return slide_logits(model, x, crop_size, stride)
        return whole_logits(model, x)

    if scales == (1.0,) and not flip:
        return run(images)

    probs: Tensor | None = None
    n = 0
    for s in scales:
        size = (max(1, math.floor(h * s + 0.5)), max(1, math.floor(w * s + 0.5)))
        x = _resize(images, size)
        variants = [False, True] if flip else [False]
        for do_flip in variants:
            xi = x.flip(-1) if do_flip else x
            logit = run(xi)
            if do_flip:
                logit = logit.flip(-1)
            p = _resize(logit.float(), (h, w)).softmax(dim=1)
            probs = p if probs is None else probs + p
            n += 1
    assert probs is not None
    return torch.log((probs / n).clamp_min(1e-12))


# ------------------------------------------------------------------------------------ evaluation


def _collate_eval(batch):
    images = [b[0] for b in batch]
    labels = [torch.as_tensor(b[1]) for b in batch]
    if all(i.shape == images[0].shape for i in images) and all(l.shape == labels[0].shape for l in labels):
        return torch.stack(images), torch.stack(labels)
    return images, labels  # variable sizes: processed one by one


def _is_dataset(data: Any) -> bool:
    """A dataset of ``(image [3,H,W], label)`` items, as opposed to an iterable of batches."""
    if isinstance(data, torch.utils.data.Dataset):
        return True
    if isinstance(data, (list, tuple)) and len(data) > 0:
        first = data[0]
        return isinstance(first, (list, tuple)) and isinstance(first[0], Tensor) and first[0].dim() == 3
    return False


def _runtime_forward(runtime: Callable) -> Callable[[Tensor], Tensor]:
    """``Tensor -> Tensor`` logits of a deploy runtime: a PyTorch runtime's ``forward_tensor`` (no
    host copies), or the ``ndarray -> ndarray`` call of any other runtime."""
    forward_tensor = getattr(runtime, "forward_tensor", None)
    if forward_tensor is not None:
        return forward_tensor

    def forward(x: Tensor) -> Tensor:
        return torch.from_numpy(np.asarray(runtime(x.cpu().float().numpy()), dtype=np.float32))

    return forward


def _eval_loader(data: Any, batch_size: int, workers: int, limit: int | None, use_dist: bool) -> tuple[Any, int | None]:
    """(iterable of batches, number of images or None): a dataset is cut to ``limit`` images and
    split between the ranks; an iterable of batches is used as given."""
    if not _is_dataset(data):
        return data, None
    indices = list(range(len(data) if limit is None else min(limit, len(data))))
    if use_dist:
        rank, world = rank_and_world()
        indices = indices[rank::world]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, indices), batch_size=batch_size,
                                         shuffle=False, num_workers=workers, collate_fn=_collate_eval,
                                         persistent_workers=False, worker_init_fn=worker_init)
    return loader, len(indices)


def _label_info(model: Any, data: Any, num_classes: int | None, ignore_index: int | None,
                class_names: Sequence[str] | None) -> tuple[int, int, list[str]]:
    """Classes, ignore index and class names: as given, else from the model / ``data.info``."""
    info = getattr(data, "info", None)
    if num_classes is None and info is not None and getattr(model, "num_classes", None) is not None:
        info.check_model_classes(model.num_classes)
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None) or (len(info.classes) if info else None)
    if num_classes is None:
        raise ValueError("evaluate() needs num_classes (model.num_classes or dataset.info)")
    if ignore_index is None:
        ignore_index = info.ignore_index if info is not None else 255
    if class_names is None:
        class_names = list(info.classes) if info is not None else [str(i) for i in range(num_classes)]
    return num_classes, ignore_index, list(class_names)


def _accumulate(loader: Iterable, forward: Callable, cm: Any, device: torch.device, in_dtype: torch.dtype,
                amp_dtype: torch.dtype | None, infer: dict, advance: Callable[[int], None]) -> int:
    """Run every batch (or list of differently sized images) of ``loader`` through ``forward`` and add
    its predictions at label size to ``cm``; returns the number of images."""
    use_amp = amp_dtype is not None and device.type in ("cuda", "cpu")
    n_images = 0
    with torch.no_grad():
        for images, labels in loader:
            pairs = [(images, labels)] if isinstance(images, Tensor) else [
                (i.unsqueeze(0), torch.as_tensor(l).unsqueeze(0)) for i, l in zip(images, labels)
            ]
            for img, lab in pairs:
                img = img.to(device, dtype=in_dtype, non_blocking=True)
                lab = torch.as_tensor(lab).to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    logits = infer_logits(forward, img, **infer)
                if tuple(logits.shape[-2:]) != tuple(lab.shape[-2:]):
                    logits = _resize(logits.float(), tuple(lab.shape[-2:]))
                cm.update(logits.argmax(dim=1), lab)
                n_images += img.shape[0]
                advance(img.shape[0])
    return n_images


def _forward_of(model: nn.Module | Callable, device: torch.device | str | None
                ) -> tuple[Callable, torch.device, torch.dtype]:
    """(forward, device, input dtype) for :func:`evaluate`: a module runs on its parameters' device and
    floating dtype (e.g. float64 for exactness checks), a runtime on its own device with float32 inputs."""
    if not isinstance(model, nn.Module):
        default = getattr(model, "device", "cpu")
        return _runtime_forward(model), torch.device(default if device is None else device), torch.float32
    params = list(model.parameters())
    default = params[0].device if params else "cpu"
    device = torch.device(default if device is None else device)
    return model, device, next((p.dtype for p in params if p.is_floating_point()), torch.float32)


def evaluate(
    model: nn.Module | Callable,
    data: Any,
    *,
    num_classes: int | None = None,
    ignore_index: int | None = None,
    class_names: Sequence[str] | None = None,
    mode: str = "whole",
    crop_size=None,
    stride=None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    batch_size: int = 1,
    workers: int = 0,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
    distributed: bool | None = None,
    desc: str = "eval",
    limit: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on a dataset (a ``torch.utils.data.Dataset`` or a list of items ``(image [3,H,W]
    normalised, label [H,W])``) or on an iterable of ``(images [B,3,H,W], labels [B,H,W])`` batches
    (e.g. a DataLoader). Returns ``ConfusionMatrix.compute()`` plus
    ``class_names``, ``num_images`` and ``seconds``.

    ``model`` is a module or a deploy runtime (:class:`gcnet.deploy.runtimes.Runtime`: a PyTorch
    runtime runs on tensors on its device, the others on float32 arrays on the CPU, each at its own
    precision). ``limit`` evaluates the first ``limit`` images of a dataset.

    Under an initialised ``torch.distributed`` process group (or ``distributed=True``) a dataset
    is split between the ranks (each image evaluated exactly once) and the confusion matrices are
    all-reduced, so every rank returns the same result. A module is put in ``eval()`` mode and
    restored to its previous mode afterwards. ``amp_dtype`` (e.g. ``torch.bfloat16``) runs a
    module's forward passes under autocast on CUDA or CPU.
    """
    from gcnet.evaluation.metrics import ConfusionMatrix

    is_module = isinstance(model, nn.Module)
    if not is_module and amp_dtype is not None:
        raise ValueError("amp_dtype applies to modules; a runtime runs at its own precision")
    num_classes, ignore_index, class_names = _label_info(model, data, num_classes, ignore_index, class_names)
    forward, device, in_dtype = _forward_of(model, device)

    rank, world = rank_and_world()
    use_dist = world > 1 if distributed is None else (distributed and world > 1)
    loader, total = _eval_loader(data, batch_size, workers, limit, use_dist)
    cm = ConfusionMatrix(num_classes, ignore_index)
    was_training = model.training if is_module else False
    if is_module:
        model.eval()
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True, disable=not progress or rank != 0)
    t0 = time.perf_counter()
    infer = dict(mode=mode, crop_size=crop_size, stride=stride, scales=scales, flip=flip)
    try:
        n_images = _accumulate(loader, forward, cm, device, in_dtype, amp_dtype, infer,
                               lambda n: bar.update(n if total is not None else 1))
    finally:
        bar.close()
        if is_module:
            model.train(was_training)
    if use_dist:
        cm.all_reduce()
        n_images = int(all_reduce_sum(torch.tensor([n_images], dtype=torch.long)).item())
    results = dict(cm.compute())
    results["class_names"] = list(class_names)
    results["num_images"] = n_images
    results["seconds"] = round(time.perf_counter() - t0, 3)
    return results
