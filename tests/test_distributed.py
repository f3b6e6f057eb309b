"""Multi-process training with a real torchrun: 2 CPU processes on the gloo backend (the same worker
runs on 2 GPUs with NCCL in tests/test_cuda.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
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


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


@pytest.mark.distributed
def test_two_process_torchrun_gloo(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    # rank 0 alone logs; the batch is split between the processes; SyncBN falls back on CPU
    assert out.count("training gcnet-s") == 1
    assert "2 processes x 2" in out and "SyncBatchNorm needs CUDA" in out
    assert "validation at iteration 4" in out

    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0["state_dict"]:
        assert torch.equal(r0["state_dict"][k], r1["state_dict"][k]), k  # parameters and BN statistics
    # validation was split between the ranks and all-reduced: both saw all 5 images and the same numbers
    assert r0["final"]["num_images"] == r1["final"]["num_images"] == 5
    assert r0["final"]["mIoU"] == r1["final"]["mIoU"]

    from gcnet import load_model

    ckpt = torch.load(tmp_path / "run" / "latest.pth", weights_only=True)
    assert ckpt["iteration"] == 4 and ckpt["world_size"] == 2 and ckpt["sampler"]["batch_size"] == 2
    model = load_model(tmp_path / "run" / "latest.pth")
    for k, v in model.state_dict().items():
        assert torch.equal(v, r0["state_dict"][k]), k


@pytest.mark.distributed
@pytest.mark.slow
def test_cli_launcher_torchrun(tmp_path):
    cmd = [sys.executable, "-m", "gcnet.cli", "train", "tiny_synthetic", "--launcher", "torchrun",
           "--nproc-per-node", "2", "--work-dir", str(tmp_path / "run"), "--data.root", str(tmp_path / "data"),
           "--data.synthetic_size", "[64, 80]", "--data.synthetic_train", "8", "--data.synthetic_val", "2",
           "--data.crop_size", "64", "--data.batch_size", "4", "--data.workers", "0", "--schedule.iters", "2",
           "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "launching:" in proc.stdout and "2 processes x 2" in proc.stdout
    assert torch.load(tmp_path / "run" / "latest.pth", weights_only=True)["iteration"] == 2
