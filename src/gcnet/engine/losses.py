"""Losses of the authors' training recipe: OHEM cross-entropy on the main and the auxiliary head.

:class:`OhemCrossEntropy` follows MMSegmentation's ``OhemCrossEntropy`` (the DDRNet-era loss the GCNet configs
use); :class:`GCNetLoss` resizes the 1/8-resolution logits to the label size and combines
``main + aux_weight * aux`` (the configs give the auxiliary ``loss_c4`` a weight of 0.4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OhemCrossEntropy", "GCNetLoss"]


class OhemCrossEntropy(nn.Module):
    """Online hard example mining cross-entropy (MMSeg ``OhemCrossEntropy``).

    For logits ``[B, K, H, W]`` (already at label size) and labels ``[B, H, W]``:

    1. per-pixel cross-entropy with ``class_weight`` (``w[y] * -log p_y``, no reduction);
    2. ``p_y``, the softmax probability of the true class, for the valid (non-ignored) pixels, sorted
       ascending; ``min_value = sorted[min(min_kept, n_valid - 1)]`` and ``threshold = max(min_value, thresh)``;
    3. loss = ``loss_weight`` x plain mean of the per-pixel losses of valid pixels with ``p_y < threshold``.

    So at least ``min_kept`` of the hardest pixels are kept (when available), plus every pixel predicted with
    confidence below ``thresh``. Without valid pixels (or with nothing kept) the loss is ``0 * logits.sum()``,
    which keeps the graph connected (DDP-safe).
    """

    def __init__(
        self,
        thresh: float = 0.9,
        min_kept: int = 131072,
        class_weight: Sequence[float] | None = None,
        ignore_index: int = 255,
        loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if min_kept < 0:
            raise ValueError(f"min_kept must be >= 0, got {min_kept}")
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)
        self.ignore_index = int(ignore_index)
        self.loss_weight = float(loss_weight)
        weight = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32)
        self.register_buffer("class_weight", weight, persistent=False)

    def extra_repr(self) -> str:
        return (
            f"thresh={self.thresh}, min_kept={self.min_kept}, ignore_index={self.ignore_index}, "
            f"loss_weight={self.loss_weight}, class_weight={'yes' if self.class_weight is not None else None}"
        )

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        if logits.ndim != 4 or labels.ndim != 3 or logits.shape[0] != labels.shape[0]:
            raise ValueError(
                f"OhemCrossEntropy expects logits [B,K,H,W] and labels [B,H,W], got {tuple(logits.shape)} "
                f"and {tuple(labels.shape)}"
            )
        if logits.shape[-2:] != labels.shape[-2:]:
            raise ValueError(
                f"logits {tuple(logits.shape[-2:])} and labels {tuple(labels.shape[-2:])} differ in size; "
                "resize the logits first (GCNetLoss does)"
            )
        logits_f = logits.float()
        labels = labels.long()
        weight = None
        if self.class_weight is not None:
            if self.class_weight.numel() != logits.shape[1]:
                raise ValueError(
                    f"class_weight has {self.class_weight.numel()} entries but logits have {logits.shape[1]} classes"
                )
            weight = self.class_weight.to(device=logits.device, dtype=torch.float32)
        pixel_losses = F.cross_entropy(
            logits_f, labels, weight=weight, ignore_index=self.ignore_index, reduction="none"
        ).reshape(-1)
        valid = labels.reshape(-1) != self.ignore_index
        losses = pixel_losses[valid]
        n_valid = losses.numel()
        if n_valid == 0:
            return logits.sum() * 0.0
        with torch.no_grad():
            safe = labels.masked_fill(labels == self.ignore_index, 0)
            prob = F.softmax(logits_f, dim=1).gather(1, safe.unsqueeze(1)).reshape(-1)[valid]
            k = min(self.min_kept, n_valid - 1)
            if prob.is_cuda and torch.are_deterministic_algorithms_enabled():
                min_value = torch.sort(prob).values[k]  # kthvalue has no deterministic CUDA kernel
            else:
                min_value = torch.kthvalue(prob, k + 1).values  # k-th smallest (0-based) == sorted[k]
            threshold = torch.clamp(min_value, min=self.thresh)
            keep = prob < threshold
        kept = losses[keep]
        if kept.numel() == 0:
            return logits.sum() * 0.0
        return self.loss_weight * kept.mean()


Outputs = Union[Tensor, Sequence[Tensor]]


class GCNetLoss(nn.Module):
    """Total training loss of GCNet: ``criterion_main(main) + aux_weight * criterion_aux(aux)``.

    ``outputs`` is the model's train-mode output ``(logits, aux_logits)`` (both at 1/8 resolution) or plain
    ``logits``; each is resized bilinearly (``align_corners=False``) to the label size ``[B, H, W]`` first.
    ``criterion_aux`` defaults to ``criterion_main``; ``criterion_main`` defaults to ``OhemCrossEntropy()``.

    Returns ``(total, parts)`` where ``parts = {"loss_main": ..., "loss_aux": ...}`` holds detached,
    *unweighted* values (``loss_aux`` only when auxiliary logits were given).
    """

    def __init__(
        self,
        criterion_main: nn.Module | None = None,
        criterion_aux: nn.Module | None = None,
        aux_weight: float = 0.4,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.criterion_main = criterion_main if criterion_main is not None else OhemCrossEntropy()
        self.criterion_aux = criterion_aux if criterion_aux is not None else self.criterion_main
        self.aux_weight = float(aux_weight)
        self.align_corners = bool(align_corners)

    def _resize(self, logits: Tensor, size) -> Tensor:
        if logits.shape[-2:] == size:
            return logits
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, outputs: Outputs, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if isinstance(outputs, Tensor):
            main, aux = outputs, None
        else:
            outputs = tuple(outputs)
            if len(outputs) not in (1, 2):
                raise ValueError(f"expected logits or (logits, aux_logits), got {len(outputs)} tensors")
            main, aux = outputs[0], (outputs[1] if len(outputs) == 2 else None)
        size = tuple(labels.shape[-2:])
        loss_main = self.criterion_main(self._resize(main, size), labels)
        parts = {"loss_main": loss_main.detach()}
        total = loss_main
        if aux is not None:
            loss_aux = self.criterion_aux(self._resize(aux, size), labels)
            parts["loss_aux"] = loss_aux.detach()
            total = total + self.aux_weight * loss_aux
        return total, parts
