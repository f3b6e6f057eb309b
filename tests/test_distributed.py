"""Multi-process training with a real torchrun: 2 CPU processes on the gloo backend (the same worker
runs on 2 GPUs with NCCL in tests/test_cuda.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import DISTRIBUTED_WORKER, subprocess_env

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # each test starts torchrun


def test_two_process_torchrun_gloo(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(DISTRIBUTED_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, check=False, timeout=300)
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


def test_cli_launcher_torchrun(tmp_path):
    cmd = [sys.executable, "-m", "gcnet.cli", "train", "tiny_synthetic", "--launcher", "torchrun",
           "--nproc-per-node", "2", "--work-dir", str(tmp_path / "run"), "--data.root", str(tmp_path / "data"),
           "--data.synthetic_size", "[64, 80]", "--data.synthetic_train", "8", "--data.synthetic_val", "2",
           "--data.crop_size", "64", "--data.batch_size", "4", "--data.workers", "0", "--schedule.iters", "2",
           "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "launching:" in proc.stdout and "2 processes x 2" in proc.stdout
    assert torch.load(tmp_path / "run" / "latest.pth", weights_only=True)["iteration"] == 2
