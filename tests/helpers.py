"""Helpers shared by several test modules (import as ``from helpers import ...``; pytest puts this
folder on ``sys.path``). Test modules import from here, never from each other or from conftest."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

import gcnet

REPO = Path(__file__).resolve().parents[1]


def tiny_model_kwargs(num_classes: int = 4) -> dict:
    """A GCNet small enough for CPU tests that still has every kind of block and fusion."""
    return dict(num_classes=num_classes, channels=8, ppm_channels=16, head_channels=16,
                num_blocks=[1, 1, [2, 1], [2, 1], [2, 2]])


def randomize_bn(module: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm random affine parameters and running statistics (so folding is not trivial)."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g)
            m.running_mean = torch.randn(n, generator=g)
            m.running_var = torch.rand(n, generator=g) + 0.5


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    """Max abs error within ``rel`` x the largest magnitude of ``expected``."""
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel} x {scale:.3g}"


class FakeClock:
    """A clock for injection (``clock=FakeClock(0.5)``): each call returns a time ``step`` seconds later."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        self.now += self.step
        return self.now


def subprocess_env() -> dict:
    """Environment for a gcnet subprocess: this checkout's ``src`` first, one OpenMP thread that does not spin."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def run_gcnet(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m gcnet.cli ARGS`` in its own process, as a user does."""
    return subprocess.run([sys.executable, "-m", "gcnet.cli", *args], env=subprocess_env(), capture_output=True,
                          text=True, timeout=timeout)


# Two-process training worker for torchrun (gloo on CPU in test_distributed, NCCL in test_cuda).
DISTRIBUTED_WORKER = textwrap.dedent("""
    import sys
    import torch
    import torch.distributed as dist
    from gcnet.engine.config import load_config
    from gcnet.engine.trainer import Trainer

    out, device = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "cpu"
    cfg = load_config("tiny_synthetic", [
        f"data.root={out}/data", "data.synthetic_size=[64, 80]", "data.synthetic_train=12",
        "data.synthetic_val=5", "data.crop_size=[64, 64]", "data.batch_size=4", "data.workers=0",
        "schedule.iters=4", "schedule.val_interval=2", "schedule.ckpt_interval=2", "schedule.log_interval=1",
        "eval.batch_size=2", "model.sync_bn=true", f"runtime.device={device}",
    ])
    trainer = Trainer(cfg, f"{out}/run", progress=False)
    summary = trainer.run(keep_process_group=True)
    rank = dist.get_rank()
    assert dist.get_world_size() == 2 and dist.get_backend() == ("nccl" if device == "cuda" else "gloo")
    torch.save({"state_dict": trainer.model.state_dict(), "final": summary["final"]}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()
""")


def trained_tiny(num_classes: int = 4):
    torch.manual_seed(0)
    model = gcnet.build_model("gcnet-s", **tiny_model_kwargs(num_classes))
    randomize_bn(model)
    return model.eval()


@contextlib.contextmanager
def fake_mmengine():
    """An mmengine-like ``HistoryBuffer`` class, importable only inside the block (mmengine is not installed)."""
    names = ["mmengine", "mmengine.logging", "mmengine.logging.history_buffer"]
    modules = {name: types.ModuleType(name) for name in names}

    class HistoryBuffer:
        def __init__(self):
            self.values = [1.0, 2.0]

    HistoryBuffer.__module__ = names[-1]
    HistoryBuffer.__qualname__ = "HistoryBuffer"
    modules[names[-1]].HistoryBuffer = HistoryBuffer
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update(modules)
    try:
        yield HistoryBuffer
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous


def save_mmengine(target, state_dict: dict, dataset_meta: dict | None = None) -> None:
    """Write a checkpoint laid out like the authors' (mmengine): meta, state_dict, pickled message hub."""
    with fake_mmengine() as HistoryBuffer:
        meta = {"mmengine_version": "0.10.2", "epoch": 0, "iter": 120000}
        if dataset_meta is not None:
            meta["dataset_meta"] = dataset_meta
        torch.save({"meta": meta, "state_dict": OrderedDict(state_dict),
                    "message_hub": {"log_scalars": {"loss": HistoryBuffer()}}}, target)


def png16(path: Path, arr: np.ndarray) -> Path:
    """Write a 16-bit PNG (grey, grey + alpha, RGB or RGBA by channel count): Pillow cannot write all of them."""
    import struct
    import zlib

    arr = np.asarray(arr, dtype=">u2")
    h, w = arr.shape[:2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[arr.shape[2] if arr.ndim == 3 else 1]
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def write_video(path: Path, frames: int = 12, size: tuple[int, int] = (32, 48), fourcc: str = "MJPG") -> Path:
    """A video of random frames (MJPG AVI: its header announces the exact frame count, and a cut file
    keeps whole frames); skips the test where this OpenCV build cannot write the codec."""
    import cv2
    import pytest

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (size[1], size[0]))
    if not writer.isOpened():
        pytest.skip(f"this OpenCV build cannot write {fourcc}")
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    writer.release()
    return path

