"""How far does CamVid val mIoU move when the fp32 logits are disturbed as much as int8 disturbs them?

The int8 models' logits differ from fp32 by a relative squared error of about 0.002-0.004 (the held-out
error of ``gcnet export --precision int8``). This adds smooth random noise of a given relative size to the
fp32 model's logits (drawn at half the logit resolution and upsampled, as a conv net's errors are smooth)
and reports the val mIoU change per draw: the size of change an error that large brings by itself.

    python benchmarks/logit_noise_floor.py CHECKPOINT CAMVID_ROOT [--errors 0.002 0.0035] [--draws 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from int8_qat import load_camvid  # this folder: run as python benchmarks/logit_noise_floor.py

from gcnet.deploy.bench import machine_info
from gcnet.evaluation.inference import evaluate


def noisy(model: torch.nn.Module, error: float, gen: torch.Generator):
    """``model``'s logits plus smooth Gaussian noise of relative squared size ``error``, as a runtime (numpy)."""

    @torch.no_grad()
    def forward(x):
        y = model(torch.as_tensor(x))
        noise = torch.randn(*y.shape[:2], (y.shape[2] + 1) // 2, (y.shape[3] + 1) // 2, generator=gen)
        noise = F.interpolate(noise, size=y.shape[2:], mode="bilinear", align_corners=False)
        return (y + noise * (error * y.pow(2).mean() / noise.pow(2).mean()).sqrt()).numpy()

    return forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("camvid_root")
    ap.add_argument("--errors", type=float, nargs="+", default=[0.002, 0.0035])
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    deploy, _, val = load_camvid(args.checkpoint, args.camvid_root)
    fp32 = evaluate(deploy, val, progress=False)["mIoU"]
    result = {"checkpoint": args.checkpoint, "args": vars(args), "machine": machine_info(torch.get_num_threads()),
              "fp32": fp32, "delta": {}}
    for error in args.errors:
        result["delta"][str(error)] = [
            round(evaluate(noisy(deploy, error, torch.Generator().manual_seed(d)), val, progress=False)["mIoU"] - fp32, 3)
            for d in range(args.draws)]
        print(error, result["delta"][str(error)], flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
