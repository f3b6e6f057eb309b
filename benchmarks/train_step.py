"""Seconds per training step of a GCNet on this machine, fp32 vs bf16 autocast, contiguous vs
channels_last (the CPU speed-up quoted in docs/training.md for ``--amp --runtime.channels_last true``).

    python benchmarks/train_step.py [--model gcnet-s] [--batch 8] [--size 288x384] [--steps 4]
"""

from __future__ import annotations

import argparse
import time

import torch

import gcnet
from gcnet.cli.args import parse_size
from gcnet.engine.losses import GCNetLoss, OhemCrossEntropy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gcnet-s")
    ap.add_argument("--classes", type=int, default=11)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=parse_size, default=(288, 384))
    ap.add_argument("--steps", type=int, default=4, help="timed steps after one warm-up step")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = gcnet.build_model(args.model, args.classes).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = GCNetLoss(OhemCrossEntropy(min_kept=10000))
    x = torch.randn(args.batch, 3, *args.size)
    y = torch.randint(0, args.classes, (args.batch, *args.size))
    for name, amp, fmt in [("fp32", False, torch.contiguous_format), ("fp32 channels_last", False, torch.channels_last),
                           ("bf16", True, torch.contiguous_format), ("bf16 channels_last", True, torch.channels_last)]:
        model.to(memory_format=fmt)
        xx = x.contiguous(memory_format=fmt)
        times = []
        for _ in range(args.steps + 1):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                outputs = model(xx)
            loss, _ = criterion(tuple(o.float() for o in outputs), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - t)
        steps = sorted(times[1:])
        print(f"{name:<20} {steps[len(steps) // 2]:.2f} s per step (median of {len(steps)})", flush=True)


if __name__ == "__main__":
    main()
