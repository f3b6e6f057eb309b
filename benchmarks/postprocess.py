"""Post-processing at 1024x2048: the reference (fp32 bilinear upsample of the 1/8 logits, then argmax)
against gcnet.deploy.postprocess.upsample_argmax, on the logits of a real frame, with label agreement.

    python benchmarks/postprocess.py [--checkpoint CKPT] [--image PNG] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np
import torch

import gcnet
from gcnet.data.datasets import read_image
from gcnet.data.synthetic import render_scene
from gcnet.data.transforms import normalize
from gcnet.deploy.bench import bench_model, machine_info
from gcnet.deploy.postprocess import reference_upsample_argmax, upsample_argmax


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="model (default: random GCNet-S with BN statistics re-estimated)")
    ap.add_argument("--image", help="frame to segment (default: a synthetic street scene)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = gcnet.load_model(args.checkpoint) if args.checkpoint else bench_model("gcnet-s", 19)
    model = model.eval().reparameterize()
    frame = read_image(args.image) if args.image else render_scene(np.random.default_rng(0), (256, 512))[0]
    frame = cv2.resize(frame, (2048, 1024), interpolation=cv2.INTER_LINEAR)
    with torch.inference_mode():
        logits = model(normalize(frame).unsqueeze(0))[0]
    ref = reference_upsample_argmax(logits, (1024, 2048))
    fast = upsample_argmax(logits, (1024, 2048))
    low = logits.argmax(0)
    mixed = float(((low[:-1, :-1] != low[1:, 1:]) | (low[:-1, :-1] != low[:-1, 1:])
                   | (low[:-1, :-1] != low[1:, :-1])).float().mean())
    result = {
        "logits": list(logits.shape), "output": [1024, 2048],
        "reference_ms": _median_ms(lambda: reference_upsample_argmax(logits, (1024, 2048)), args.repeats),
        "upsample_argmax_ms": _median_ms(lambda: upsample_argmax(logits, (1024, 2048)), args.repeats),
        "label_agreement": float((ref == fast).mean()),
        "boundary_cell_fraction": mixed,
        "normalize_ms": _median_ms(lambda: normalize(frame), args.repeats),
        "machine": machine_info(2),
        "model": args.checkpoint or "random gcnet-s, BN re-estimated",
        "frame": args.image or "synthetic scene 256x512 resized to 1024x2048",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
