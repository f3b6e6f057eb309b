"""Labels at image size from 1/8 logits: bilinear upsampling + argmax, without the full-size logits.

The reference post-processing upsamples ``K x h x w`` logits to ``K x H x W`` (bilinear,
``align_corners=False``) and takes the argmax: at 1024x2048 with 19 classes that is 160 MB of floats
per frame. When ``H = s*h`` and ``W = s*w`` for an integer ``s`` the same labels come from far less
work. Every output pixel interpolates the four low-resolution pixels around it (a *cell*) with
non-negative weights summing to one, so where those four share one argmax class the interpolated
argmax is that class too (a convex combination keeps every inequality ``logit_c >= logit_k``). Only
the cells on class boundaries are interpolated, ``s x s`` pixels at a time, with PyTorch's weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["upsample_argmax", "reference_upsample_argmax"]

# Interpolated logits held at once while labelling boundary cells (8 MB of floats): memory stays
# bounded however much of the frame is boundary (all of it for noise-like logits), and the allocator
# reuses the batch buffers instead of faulting in fresh pages for one large batch.
_BATCH_VALUES = 1 << 21


def _label_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.uint16)


def reference_upsample_argmax(logits: torch.Tensor, size: Sequence[int]) -> np.ndarray:
    """Full-size fp32 bilinear upsampling then argmax: the definition the fast path must match."""
    logits = torch.as_tensor(logits).detach().float().cpu().reshape(-1, *logits.shape[-2:])
    up = F.interpolate(logits[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
    return up.argmax(0).numpy().astype(_label_dtype(logits.shape[0]))


def _integer_scale(low: Sequence[int], size: Sequence[int]) -> int | None:
    (h, w), (H, W) = low, size
    if H % h or W % w or H // h != W // w:
        return None
    return H // h


def _cell_weights(s: int) -> tuple[torch.Tensor, int]:
    """Interpolation weights of the ``s`` output rows inside one cell, and the first row's offset.

    Output row ``y`` samples source row ``(y + 0.5) / s - 0.5``; the rows between source rows ``i``
    and ``i + 1`` are ``s*i + o + j`` for ``j < s`` with ``o = ceil((s - 1) / 2)``.
    """
    o = s // 2  # == ceil((s - 1) / 2) for every integer s >= 1
    lam = (torch.arange(s, dtype=torch.float64) + o + 0.5) / s - 0.5
    return lam.float(), o


def _boundary_labels(channels_last: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, s: int) -> torch.Tensor:
    """Argmax of the interpolated logits of the cells ``(cy, cx)``: ``(C, s, s)`` int64.

    ``channels_last`` is the replicate-padded logits as ``(h + 2, w + 2, K)``, so that the class
    axis, reduced last, is contiguous and a cell's four corners are gathered in one indexing. The
    weights are applied as PyTorch applies them: along x first, then along y.
    """
    lam, _ = _cell_weights(s)
    k, row = channels_last.shape[-1], channels_last.shape[1]
    top_left = cy * row + cx
    corners = channels_last.view(-1, k)[torch.cat((top_left, top_left + 1, top_left + row, top_left + row + 1))]
    tl, tr, bl, br = corners.view(4, -1, 1, k)                       # each (C, 1, K)
    wx1, wx0 = lam[None, :, None], 1 - lam[None, :, None]           # (1, s, 1)
    top, bottom = torch.addcmul(wx0 * tl, wx1, tr), torch.addcmul(wx0 * bl, wx1, br)  # (C, s, K)
    wy1, wy0 = lam[None, :, None, None], 1 - lam[None, :, None, None]  # (1, s, 1, 1)
    values = top[:, None] * wy0                                      # (C, s, s, K)
    values.addcmul_(wy1, bottom[:, None])
    return values.max(-1).indices  # the first maximal class, as argmax; faster on CPUs


def upsample_argmax(logits: torch.Tensor | np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Class map ``(H, W)`` equal to ``argmax(bilinear_upsample(logits, size))``.

    ``logits``: ``(K, h, w)`` or ``(1, K, h, w)``, any float dtype. Uses the boundary-only path when
    ``size`` is an integer multiple of ``(h, w)`` (e.g. the model's 1/8 output of a 1024x2048 frame),
    the reference otherwise. Labels are uint8 (uint16 above 256 classes).
    """
    import cv2  # its nearest resize repeats each cell's label 2x faster than numpy

    x = torch.as_tensor(logits)
    x = x.detach().reshape(-1, *x.shape[-2:]).float().cpu()  # low resolution: cheap to move off a GPU
    k, h, w = x.shape
    H, W = int(size[0]), int(size[1])
    s = _integer_scale((h, w), (H, W))
    if s is None:
        return reference_upsample_argmax(x, (H, W))
    padded = F.pad(x[None], (1, 1, 1, 1), mode="replicate")[0]  # edge clamping = replicated border
    low = padded.max(0).indices  # == argmax(0) (first maximal class), ~3x faster over a leading dim
    corners = (low[:-1, :-1], low[:-1, 1:], low[1:, :-1], low[1:, 1:])
    uniform = (corners[0] == corners[1]) & (corners[0] == corners[2]) & (corners[0] == corners[3])
    size_cells = ((w + 1) * s, (h + 1) * s)
    first = corners[0].numpy().astype(_label_dtype(k))
    canvas = cv2.resize(first, size_cells, interpolation=cv2.INTER_NEAREST_EXACT)
    cells = canvas.reshape(h + 1, s, w + 1, s)
    cy, cx = torch.nonzero(~uniform, as_tuple=True)
    if cy.numel():
        channels_last = padded.permute(1, 2, 0).contiguous()
        step = max(1, _BATCH_VALUES // (s * s * k))
        for i in range(0, cy.numel(), step):
            by, bx = cy[i:i + step], cx[i:i + step]
            cells[by.numpy(), :, bx.numpy(), :] = _boundary_labels(channels_last, by, bx, s).numpy()
    start = s - _cell_weights(s)[1]
    return np.ascontiguousarray(canvas[start:start + H, start:start + W])
