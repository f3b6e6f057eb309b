"""Device choice and small helpers for multi-process training and evaluation with ``torchrun`` (DDP).

``torchrun --nproc_per_node N -m gcnet.cli train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_from_env` reads them and
initialises the process group (``nccl`` on CUDA, ``gloo`` on CPU). Single-process runs never
touch ``torch.distributed``. A leaf module (only :mod:`gcnet.errors` below it), so that both
:mod:`gcnet.engine` and :mod:`gcnet.evaluation` can use it.
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
    "group_active",
    "init_from_env",
    "is_main",
    "on_main",
    "rank_and_world",
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


def group_active() -> bool:
    """True inside an initialised ``torch.distributed`` process group (the one place that asks)."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the process group; (0, 1) without one (a single process)."""
    return (dist.get_rank(), dist.get_world_size()) if group_active() else (0, 1)


def env_world_size() -> int:
    """The ``WORLD_SIZE`` torchrun sets (1 when unset or not a number): >1 means a multi-process launch."""
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
    if not group_active():
        from datetime import timedelta

        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                    backend=dist.get_backend())


def is_main() -> bool:
    """True on rank 0 and in single-process runs."""
    return rank_and_world()[0] == 0


def barrier() -> None:
    """Wait for every rank (no-op in single-process runs)."""
    if group_active():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op without a process group). CPU tensors work with every
    backend: NCCL reduces only GPU tensors, so under NCCL they travel through the current GPU."""
    if rank_and_world()[1] > 1:
        if t.device.type == "cpu" and dist.get_backend() == "nccl":
            buf = t.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            t.copy_(buf)
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_true(flag: bool) -> bool:
    """True when ``flag`` is true on every rank (a collective: every rank must call it)."""
    if rank_and_world()[1] == 1:
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
    if rank_and_world()[1] == 1:
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src)


def cleanup() -> None:
    """Destroy the process group, if any (at the end of a torchrun process)."""
    if group_active():
        dist.destroy_process_group()
