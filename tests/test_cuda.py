"""The CUDA paths, on a GPU: runtimes (fp32, fp16/bf16 + channels_last, CUDA graphs, torch.compile),
AMP training, evaluation, prediction and ``gcnet bench --device cuda``.

Skipped, with the reason, where ``torch.cuda.is_available()`` is False (CI and the development
machines have no GPU). Run them on a GPU machine with ``python -m pytest -m cuda``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import DISTRIBUTED_WORKER, subprocess_env, tiny_model_kwargs

from gcnet import build_model, save_checkpoint
from gcnet.cli import main
from gcnet.deploy import export as E
from gcnet.deploy.bench import recalibrate_bn
from gcnet.deploy.runtimes import TorchRuntime

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]


def _rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))))


@pytest.fixture(scope="module")
def deploy_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = recalibrate_bn(build_model("gcnet-s", **tiny_model_kwargs(num_classes=5)), size=(64, 96))
    return E.load_for_deploy(model)


@pytest.fixture(scope="module")
def inputs() -> list[np.ndarray]:
    g = np.random.default_rng(0)
    return [g.standard_normal(s).astype(np.float32) for s in [(1, 3, 64, 96), (1, 3, 64, 96), (2, 3, 72, 88)]]


@pytest.fixture(scope="module")
def cpu_reference(deploy_model, inputs) -> list[np.ndarray]:
    rt = TorchRuntime(deploy_model, "fp32")
    return [rt(x) for x in inputs]


def test_cuda_fp32_matches_cpu(deploy_model, inputs, cpu_reference):
    rt = TorchRuntime(deploy_model, "fp32", device="cuda")
    for x, ref in zip(inputs, cpu_reference):
        out = rt(x)
        assert out.shape == ref.shape and out.dtype == np.float32
        assert _rel_diff(out, ref) < 1e-2  # cuDNN may use TF32 for fp32 convolutions


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_half_precision_channels_last(deploy_model, inputs, cpu_reference, precision):
    rt = TorchRuntime(deploy_model, precision, device="cuda", channels_last=True)
    for x, ref in zip(inputs, cpu_reference):
        out = rt(x)
        assert np.isfinite(out).all() and out.dtype == np.float32
        assert _rel_diff(out, ref) < (0.05 if precision == "fp16" else 0.2)
        assert np.mean(out.argmax(1) == ref.argmax(1)) > 0.9


def test_cuda_graphs_replay_new_inputs_and_shapes(deploy_model, inputs):
    eager = TorchRuntime(deploy_model, "fp16", device="cuda", channels_last=True)
    graphs = TorchRuntime(deploy_model, "fp16", device="cuda", channels_last=True, cuda_graphs=True)
    for x in inputs:  # two inputs of one shape (one capture, two replays), then a new shape (a new capture)
        np.testing.assert_allclose(graphs(x), eager(x), rtol=0, atol=1e-2)
    assert len(graphs._graphs) == 2
    first = graphs(inputs[0])
    graphs(inputs[1])
    np.testing.assert_array_equal(first, graphs(inputs[0]))  # outputs are copies, not the static buffer


def test_cuda_compile(deploy_model, inputs, cpu_reference):
    rt = TorchRuntime(deploy_model, "fp16", device="cuda", channels_last=True, compile=True)
    out = rt(inputs[0])
    assert _rel_diff(out, cpu_reference[0]) < 0.05


@pytest.mark.slow
def test_train_amp_eval_predict_on_cuda(tmp_path, capsys):
    work = tmp_path / "run"
    rc = main(["train", "tiny_synthetic", "--data.root", str(tmp_path / "data"), "--work-dir", str(work),
               "--schedule.iters", "20", "--schedule.val_interval", "20", "--schedule.log_interval", "10",
               "--data.synthetic_size", "[64, 80]", "--data.synthetic_train", "16", "--data.synthetic_val", "4",
               "--data.crop_size", "64", "--data.batch_size", "4", "--data.workers", "0", "--device", "cuda",
               "--amp", "--no-progress"])
    assert rc == 0
    assert "iter 20/20" in capsys.readouterr().out
    results = {}
    for device in ("cpu", "cuda"):
        js = tmp_path / f"eval_{device}.json"
        assert main(["eval", str(work / "latest.pth"), "--device", device, "--workers", "0", "--no-progress",
                     "--json", str(js)]) == 0
        results[device] = json.loads(js.read_text())["results"]
    cpu, cuda = (next(iter(results[d].values())) for d in ("cpu", "cuda"))
    assert abs(cpu["mIoU"] - cuda["mIoU"]) < 1.0
    out = tmp_path / "pred"
    images = tmp_path / "data" / "images" / "val"
    assert main(["predict", str(images), "--checkpoint", str(work / "latest.pth"), "--device", "cuda",
                 "--precision", "fp16", "--out", str(out), "--no-progress"]) == 0
    assert len(list(out.rglob("*_label.png"))) == 4


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_cuda_forms(tmp_path, deploy_model):
    ckpt = save_checkpoint(tmp_path / "m.pt", deploy_model)
    path = tmp_path / "bench.json"
    forms = ["cuda-fp32", "cuda-fp16-cl", "cuda-bf16-cl", "cuda-fp16-cl-graphs"]
    proc = subprocess.run([sys.executable, "-m", "gcnet.cli", "bench", "--checkpoint", str(ckpt), "--quick",
                           "--forms", *forms, "--json", str(path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(path.read_text())
    assert report["machine"]["cuda_device"]
    assert [r["form"] for r in report["results"]] == forms
    for r in report["results"]:
        assert r["device"] == "cuda" and r["fps"] > 0 and r["peak_mem_mb"] > 0
        assert r["label_agreement"] > 0.9
    assert report["results"][0]["speedup_vs_torch_fp32"] == 1.0



@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs for a 2-process NCCL run")
def test_two_process_torchrun_nccl(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(DISTRIBUTED_WORKER)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path), "cuda"], env=subprocess_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "validation at iteration 4" in proc.stdout
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0["state_dict"]:
        assert torch.equal(r0["state_dict"][k], r1["state_dict"][k]), k
    assert r0["final"]["num_images"] == r1["final"]["num_images"] == 5
