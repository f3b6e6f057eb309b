"""Semantic segmentation metrics (MMSegmentation ``IoUMetric`` semantics) from a confusion matrix.

``matrix[t, p]`` counts pixels of ground-truth class ``t`` predicted as ``p`` (ignored pixels excluded).
Per class: ``IoU = TP / (TP + FP + FN)``, ``Acc = TP / (TP + FN)``; ``aAcc = sum(TP) / #pixels``. A class with
an empty union (absent from ground truth and prediction) has IoU NaN, a class absent from ground truth has
Acc NaN; ``mIoU`` / ``mAcc`` are NaN-ignoring means (like MMSeg's ``np.nanmean``). All values are percentages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch

from gcnet.distributed import all_reduce_sum

__all__ = ["ConfusionMatrix", "format_table"]

ArrayLike = Union[torch.Tensor, np.ndarray]


class ConfusionMatrix:
    """Accumulates a ``[num_classes, num_classes]`` int64 confusion matrix on the CPU."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add predicted labels ``pred`` against ``target`` (same shape, any shape, any device).

        Pixels whose target is ``ignore_index`` are skipped. Other targets and all counted predictions must
        lie in ``[0, num_classes)`` (ValueError otherwise).
        """
        pred = torch.as_tensor(pred)
        target = torch.as_tensor(target, device=pred.device)
        if pred.is_floating_point() or target.is_floating_point():
            raise TypeError("pred and target must be integer label maps (take argmax of the logits first)")
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        pred = pred.reshape(-1).long()
        target = target.reshape(-1).long()
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() == 0:
            return
        k = self.num_classes
        bad_t = (target < 0) | (target >= k)
        bad_p = (pred < 0) | (pred >= k)
        if bool(bad_t.any()):
            raise ValueError(
                f"target values {torch.unique(target[bad_t])[:10].tolist()} are outside [0, {k}) and are not "
                f"the ignore index {self.ignore_index}"
            )
        if bool(bad_p.any()):
            raise ValueError(f"predicted values {torch.unique(pred[bad_p])[:10].tolist()} are outside [0, {k})")
        counts = torch.bincount(target * k + pred, minlength=k * k)
        self.matrix += counts.reshape(k, k).to("cpu", torch.int64)

    def all_reduce(self) -> None:
        """Sum the matrix over all processes when ``torch.distributed`` is initialised (no-op otherwise)."""
        all_reduce_sum(self.matrix)

    def compute(self) -> dict:
        """``{"mIoU", "mAcc", "aAcc"}`` floats and per-class ``"IoU"`` / ``"Acc"`` lists, in percent."""
        m = self.matrix.to(torch.float64)
        tp = m.diag()
        gt = m.sum(1)  # TP + FN
        pr = m.sum(0)  # TP + FP
        union = gt + pr - tp
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan) * 100
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan) * 100
        total = gt.sum()
        aacc = float(tp.sum() / total * 100) if total > 0 else float("nan")
        return {
            "mIoU": _nanmean(iou),
            "mAcc": _nanmean(acc),
            "aAcc": aacc,
            "IoU": [float(v) for v in iou],
            "Acc": [float(v) for v in acc],
        }


def _nanmean(x: torch.Tensor) -> float:
    finite = x[~torch.isnan(x)]
    return float(finite.mean()) if finite.numel() else float("nan")


def _fmt(v: float) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def format_table(results: dict, class_names: Sequence[str]) -> str:
    """MMSeg-style per-class table (``Class | IoU | Acc``) plus a summary line ``aAcc / mIoU / mAcc``."""
    ious, accs = list(results["IoU"]), list(results["Acc"])
    names = [str(n) for n in class_names]
    if not (len(names) == len(ious) == len(accs)):
        raise ValueError(f"{len(names)} class names for {len(ious)} IoU / {len(accs)} Acc values")
    rows = [(n, _fmt(i), _fmt(a)) for n, i, a in zip(names, ious, accs)]
    header = ("Class", "IoU", "Acc")
    widths = [max(len(r[c]) for r in rows + [header]) for c in range(3)]
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(r):
        return "| " + r[0].ljust(widths[0]) + " | " + " | ".join(r[c].rjust(widths[c]) for c in (1, 2)) + " |"

    out = ["per class results:", sep, line(header), sep, *(line(r) for r in rows), sep]
    out.append(
        f"Summary: aAcc {_fmt(results['aAcc'])}  mIoU {_fmt(results['mIoU'])}  mAcc {_fmt(results['mAcc'])}"
    )
    return "\n".join(out)
