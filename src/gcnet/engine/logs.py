"""Training records: ``metrics.jsonl`` (one JSON object per line) and TensorBoard curves (``tb/``)."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gcnet.fileio import write_text

__all__ = ["MetricsLog", "fmt_time", "json_safe"]


class MetricsLog:
    """``metrics.jsonl`` + TensorBoard if installed; a no-op unless ``enabled`` (rank 0).

    Resuming at ``start_iter`` drops the records written after that iteration by the interrupted run, so
    each iteration is logged once."""

    def __init__(self, work_dir: Path, start_iter: int, enabled: bool, log: Callable[[str], None]) -> None:
        self.enabled = enabled
        self.path = work_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            kept = []
            if start_iter > 0:
                for line in self.path.read_text(encoding="utf-8").splitlines():
                    with contextlib.suppress(json.JSONDecodeError):
                        if json.loads(line).get("iter", 0) <= start_iter:
                            kept.append(line)
            write_text(self.path, "".join(k + "\n" for k in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # noqa: BLE001 - tensorboard missing or broken
            log("note: tensorboard is not installed; logging to metrics.jsonl only "
                "(pip install tensorboard to get TensorBoard curves)")
        else:
            self.tb = SummaryWriter(str(work_dir / "tb"), purge_step=start_iter + 1 if start_iter else None)

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (needs ``iter``; ``type`` is train or val) to the log and TensorBoard."""
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is None:
            return
        step, prefix = record["iter"], record.get("type", "train")
        for k, v in record.items():
            if k in ("iter", "type"):
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.tb.add_scalar(f"{prefix}/{k}", v, step)
            elif isinstance(v, Mapping):
                for name, x in v.items():
                    if isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x)):
                        self.tb.add_scalar(f"{prefix}/{k}/{name}", x, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def fmt_time(seconds: float) -> str:
    """``M:SS`` / ``H:MM:SS``; ``?`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def json_safe(obj: Any) -> Any:
    """``obj`` with tensors and numpy values turned into plain Python (for JSON and checkpoints)."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
