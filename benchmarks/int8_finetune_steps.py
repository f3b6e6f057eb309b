"""Can the int8 fine-tune's step count be chosen per model without labels, on frames held out from it?

200 steps leave one CamVid model +0.36 val mIoU from fp32 and 400 bring it to +0.02, while 400 move another
from -0.02 to +0.88 (docs/deploy.md). This runs the library's fine-tune (gcnet.deploy.qat: ``fake_quantize``
on 32 train frames, ``distill`` on crops of the train frames but every fourth, which is held out) and, every
``--every`` steps, converts the student to OpenVINO int8 and records its val mIoU change against fp32 next to
three label-free scores on the held-out frames, each against the fp32 model:
``error`` (relative squared logit error), ``agree`` (mIoU of the int8 labels against the fp32 labels) and
``shift`` (L1 distance between the two models' predicted class distributions, %).

    python benchmarks/int8_finetune_steps.py CHECKPOINT CAMVID_ROOT [--iters 400] [--every 100] [--seed 0]
        [--lr LR] [--cosine] [--crop H W] [--ema DECAY] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from int8_qat import load_camvid  # this folder: run as python benchmarks/int8_finetune_steps.py

from gcnet.deploy.export import calibration_from_dataset
from gcnet.deploy.qat import FINETUNE_BATCH, FINETUNE_CROP, FINETUNE_LR, distill, fake_quantize
from gcnet.deploy.runtimes import OpenVINORuntime
from gcnet.evaluation.inference import evaluate
from gcnet.evaluation.metrics import ConfusionMatrix


def held_out_scores(int8: OpenVINORuntime, frames: list[np.ndarray], reference: list[np.ndarray]) -> dict:
    """The label-free scores of ``int8`` against the fp32 logits ``reference`` on ``frames``."""
    num_classes = reference[0].shape[1]
    matrix = ConfusionMatrix(num_classes)
    err_num = err_den = 0.0
    counts = np.zeros((2, num_classes))
    for x, ref in zip(frames, reference):
        out = int8(x)
        err_num += float(((out - ref) ** 2).sum())
        err_den += float((ref ** 2).sum())
        a, b = out.argmax(1), ref.argmax(1)
        matrix.update(torch.from_numpy(a), torch.from_numpy(b))
        counts += [np.bincount(a.ravel(), minlength=num_classes), np.bincount(b.ravel(), minlength=num_classes)]
    dist = counts / counts.sum(1, keepdims=True)
    return {"error": round(err_num / err_den, 6), "agree": round(matrix.compute()["mIoU"], 3),
            "shift": round(100 * float(np.abs(dist[0] - dist[1]).sum()), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("camvid_root")
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--every", type=int, default=100, help="score a snapshot every this many steps")
    ap.add_argument("--seed", type=int, default=0, help="the fine-tune's crop draw")
    ap.add_argument("--lr", type=float, default=FINETUNE_LR, help="Adam's learning rate")
    ap.add_argument("--crop", type=int, nargs=2, default=FINETUNE_CROP, metavar=("H", "W"),
                    help="fine-tune crop size (CamVid frames are 360x480: that size trains on whole frames)")
    ap.add_argument("--ema", type=float, default=0.0,
                    help="also score an exponential moving average of the student's parameters (this decay)")
    ap.add_argument("--cosine", action="store_true", help="decay the rate to zero along a cosine")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    import openvino as ov

    deploy, train, val = load_camvid(args.checkpoint, args.camvid_root)
    example = torch.zeros(1, 3, 360, 480)
    fp32 = OpenVINORuntime(ov.convert_model(deploy, example_input=example), "fp32")
    result = {"checkpoint": args.checkpoint, "args": vars(args), "machine": platform.processor() or platform.machine(),
              "fp32": evaluate(fp32, val, progress=False)["mIoU"], "snapshots": []}
    held = [np.ascontiguousarray(train[i][0][None].numpy()) for i in range(3, len(train), 4)]
    pool = [i for i in range(len(train)) if i % 4 != 3]
    reference = [fp32(x) for x in held]
    student = fake_quantize(deploy, calibration_from_dataset(train, 32))
    t0 = time.perf_counter()

    params = {k: v for k, v in student.named_parameters() if v.is_floating_point() and v.requires_grad}
    average = {k: v.detach().clone() for k, v in params.items()}

    def scored(tag: str) -> dict:
        int8 = OpenVINORuntime(ov.convert_model(student, example_input=example), "int8")
        return {f"delta{tag}": round(evaluate(int8, val, progress=False)["mIoU"] - result["fp32"], 3),
                **{f"{k}{tag}": v for k, v in held_out_scores(int8, held, reference).items()}}

    def score(step: int) -> None:
        if step and args.ema:
            for k, v in params.items():
                average[k].lerp_(v.detach(), 1 - args.ema)
        if step and step % args.every:  # step 0: post-training quantization, before the fine-tune
            return
        student.eval()
        snap = {"step": step, **scored("")}
        if step and args.ema:
            with torch.no_grad():
                current = {k: v.detach().clone() for k, v in params.items()}
                for k, v in params.items():
                    v.copy_(average[k])
                snap.update(scored("_ema"))
                for k, v in params.items():
                    v.copy_(current[k])
        snap["elapsed_s"] = round(time.perf_counter() - t0, 1)
        result["snapshots"].append(snap)
        print(json.dumps(snap), flush=True)

    score(0)
    distill(student, deploy, torch.utils.data.Subset(train, pool), iters=args.iters, lr=args.lr,
            batch=FINETUNE_BATCH, crop=args.crop, seed=args.seed, cosine=args.cosine, progress=False, after_step=score)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
