"""Does a short quantization-aware fine-tune bring OpenVINO int8 within 0.3 mIoU of fp32 where
post-training quantization does not (docs/deploy.md, "The convolutions most sensitive to int8")?

The library's steps (gcnet.deploy.qat: ``fake_quantize`` on the same 32 train frames as `gcnet export`, then
``distill`` toward the fp32 logits on random crops of the train frames, or of ``--frames N`` of them), with
the model scored on val before and after the fine-tune.
Printed: val mIoU of fp32, of the PyTorch-backend PTQ before the fine-tune, and after it.

    python benchmarks/int8_qat.py CHECKPOINT CAMVID_ROOT [--iters 200] [--lr 1e-5] [--batch 4] [--json OUT] [--xml OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time

import torch

import gcnet
from gcnet.data.datasets import build_dataset
from gcnet.data.transforms import EvalTransform
from gcnet.deploy.export import calibration_from_dataset, load_for_deploy
from gcnet.deploy.qat import distill, fake_quantize
from gcnet.deploy.runtimes import OpenVINORuntime
from gcnet.evaluation.inference import evaluate


def val_miou(model, precision: str, val) -> float:
    return evaluate(OpenVINORuntime(model, precision), val, progress=False)["mIoU"]


def load_camvid(checkpoint: str, camvid_root: str):
    """(the checkpoint's deploy form, CamVid train, CamVid val), NNCF's log quietened."""
    logging.getLogger("nncf").setLevel(logging.WARNING)
    deploy = load_for_deploy(gcnet.load_model(checkpoint).eval()).eval()
    train = build_dataset("camvid", camvid_root, "train", transform=EvalTransform())
    return deploy, train, build_dataset("camvid", camvid_root, "val", transform=EvalTransform())


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

    deploy, train, val = load_camvid(args.checkpoint, args.camvid_root)
    example = torch.zeros(1, 3, 360, 480)
    result = {"checkpoint": args.checkpoint, "args": vars(args), "machine": platform.processor() or platform.machine()}
    result["fp32"] = val_miou(ov.convert_model(deploy, example_input=example), "fp32", val)
    calibration = calibration_from_dataset(train, max(32, args.frames))
    student = fake_quantize(deploy, calibration[:32])
    pool = calibration[:args.frames] if args.frames else train
    result["ptq_torch"] = val_miou(ov.convert_model(student, example_input=example), "int8", val)
    print(f"fp32 {result['fp32']:.2f}, PTQ (PyTorch backend) {result['ptq_torch'] - result['fp32']:+.2f}", flush=True)
    t0 = time.perf_counter()
    losses = distill(student, deploy, pool, iters=args.iters, lr=args.lr, batch=args.batch, crop=args.crop,
                     progress=False)
    result["finetune_s"] = round(time.perf_counter() - t0, 1)
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
