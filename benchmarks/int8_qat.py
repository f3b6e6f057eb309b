"""Does a short quantization-aware fine-tune bring OpenVINO int8 within 0.3 mIoU of fp32 where
post-training quantization does not (docs/deploy.md, "The convolutions most sensitive to int8")?

The deploy form (every GCBlock folded, no BatchNorm) is quantized by NNCF's PyTorch backend (fake
quantizers on weights and activations, calibrated on the same 32 train frames as `gcnet export`), then
fine-tuned to reproduce the fp32 model's logits (mean squared error at 1/8 resolution; no labels: any
frames would do) on randomly cropped and flipped train frames, converted to OpenVINO and scored on val.
Printed: val mIoU of fp32, of the PyTorch-backend PTQ before the fine-tune, and after it.

    python benchmarks/int8_qat.py CHECKPOINT CAMVID_ROOT [--iters 200] [--lr 1e-5] [--batch 4] [--json OUT] [--xml OUT]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import time

import torch
import torch.nn.functional as F

import gcnet
from gcnet.data.datasets import build_dataset
from gcnet.data.transforms import EvalTransform
from gcnet.deploy.export import calibration_from_dataset, load_for_deploy
from gcnet.deploy.runtimes import OpenVINORuntime
from gcnet.evaluation.inference import evaluate


def quantize_torch(deploy: torch.nn.Module, calibration: list) -> torch.nn.Module:
    """NNCF int8 fake quantization of a copy of ``deploy`` (performance preset; its bias correction is
    off: NNCF 3.4's PyTorch backend fails on GCNet with it)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    return nncf.quantize(copy.deepcopy(deploy), nncf.Dataset([torch.from_numpy(c) for c in calibration]),
                         preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(calibration),
                         advanced_parameters=AdvancedQuantizationParameters(disable_bias_correction=True))


def frames(dataset, batch: int, crop: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """``batch`` random train frames, each randomly cropped to ``crop`` and flipped half the time."""
    out = []
    for i in torch.randint(len(dataset), (batch,), generator=gen).tolist():
        image = dataset[i][0]
        top = int(torch.randint(image.shape[1] - crop[0] + 1, (1,), generator=gen))
        left = int(torch.randint(image.shape[2] - crop[1] + 1, (1,), generator=gen))
        image = image[:, top:top + crop[0], left:left + crop[1]]
        out.append(image.flip(-1) if torch.rand(1, generator=gen) < 0.5 else image)
    return torch.stack(out)


def finetune(student: torch.nn.Module, teacher: torch.nn.Module, dataset, iters: int, lr: float, batch: int,
             crop: tuple[int, int]) -> list[float]:
    """Adam on the student's weights, biases and quantizer ranges to match the teacher's logits."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    losses = []
    student.train()
    for it in range(iters):
        x = frames(dataset, batch, crop, gen)
        with torch.no_grad():
            target = teacher(x)
        loss = F.mse_loss(student(x), target) / target.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
        if it % 20 == 0 or it == iters - 1:
            print(f"  iter {it}: relative logit error {losses[-1]:.4g}", flush=True)
    return losses


def val_miou(model, precision: str, val) -> float:
    return evaluate(OpenVINORuntime(model, precision), val, progress=False)["mIoU"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("camvid_root")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, nargs=2, default=(288, 384))
    ap.add_argument("--frames", type=int, default=0,
                    help="fine-tune on this many train frames only (the first of the calibration draw; 0: all)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--xml", help="save the fine-tuned int8 model here (OpenVINO IR)")
    args = ap.parse_args()
    import openvino as ov

    logging.getLogger("nncf").setLevel(logging.WARNING)
    deploy = load_for_deploy(gcnet.load_model(args.checkpoint).eval()).eval()
    train = build_dataset("camvid", args.camvid_root, "train", transform=EvalTransform())
    val = build_dataset("camvid", args.camvid_root, "val", transform=EvalTransform())
    example = torch.zeros(1, 3, 360, 480)
    result = {"checkpoint": args.checkpoint, "args": vars(args), "machine": platform.processor() or platform.machine()}
    result["fp32"] = val_miou(ov.convert_model(deploy, example_input=example), "fp32", val)
    calibration = calibration_from_dataset(train, max(32, args.frames))
    student = quantize_torch(deploy, calibration[:32])
    pool = [(torch.from_numpy(c[0]),) for c in calibration[:args.frames]] if args.frames else train
    student.eval()
    result["ptq_torch"] = val_miou(ov.convert_model(student, example_input=example), "int8", val)
    print(f"fp32 {result['fp32']:.2f}, PTQ (PyTorch backend) {result['ptq_torch'] - result['fp32']:+.2f}", flush=True)
    t0 = time.perf_counter()
    losses = finetune(student, deploy, pool, args.iters, args.lr, args.batch, tuple(args.crop))
    result["finetune_s"] = round(time.perf_counter() - t0, 1)
    student.eval()
    qat = ov.convert_model(student, example_input=example)
    result["qat"] = val_miou(qat, "int8", val)
    if args.xml:
        ov.save_model(qat, args.xml)
    result["losses"] = [round(v, 5) for v in losses[::10]]
    print(f"after {args.iters} iterations ({result['finetune_s']:.0f} s): {result['qat'] - result['fp32']:+.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
