"""Device choice and small helpers for multi-process training with ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m gcnet.cli train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_from_env` reads them and
initialises the process group (``nccl`` on CUDA, ``gloo`` on CPU). Single-process runs never
touch ``torch.distributed``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from gcnet.errors import ConfigError, GCNetError

T = TypeVar("T")

__all__ = [
    "DistInfo",
    "all_reduce_sum",
    "all_true",
    "barrier",
    "broadcast_buffers",
    "cleanup",
    "env_world_size",
    "init_from_env",
    "is_main",
    "on_main",
    "resolve_device",
]


def resolve_device(spec: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a bare ``cuda`` -> GPU ``local_rank``."""
    spec = "auto" if spec is None else str(spec)
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown device {spec!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} requested but CUDA is not available (use --device cpu)")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(device_type: str = "cpu", backend: str | None = None, timeout_s: int = 1800) -> DistInfo:
    """Initialise the default process group from torchrun's environment variables.

    Returns a single-process :class:`DistInfo` when ``WORLD_SIZE`` is unset or 1. With CUDA the
    process uses GPU ``LOCAL_RANK``."""
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if backend is None:
        backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        from datetime import timedelta

        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                    backend=dist.get_backend())


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op without a process group). CPU tensors work with every
    backend: NCCL reduces only GPU tensors, so under NCCL they travel through the current GPU."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if t.device.type == "cpu" and dist.get_backend() == "nccl":
            buf = t.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            t.copy_(buf)
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_true(flag: bool) -> bool:
    """True when ``flag`` is true on every rank (a collective: every rank must call it)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    return int(all_reduce_sum(torch.tensor([0 if flag else 1])).item()) == 0


def on_main(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only (None elsewhere); if it raises there, every rank raises (a collective)."""
    error: Exception | None = None
    result = None
    if is_main():
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error = exc
    if not all_true(error is None):
        raise error or GCNetError("stopped: rank 0 failed (see its message)")
    return result


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy buffers (BatchNorm running statistics) from rank ``src`` to every rank, so that
    validation and checkpoints see the same model everywhere."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
