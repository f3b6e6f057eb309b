"""Latency of several OpenVINO IRs of one model side by side (e.g. int8 from post-training quantization
and from the quantization-aware fine-tune): batch 1 at HxW, timed interleaved (one run of each model per
round) so that a change in the machine's load hits every model alike; median and quartiles per model.

    python benchmarks/ir_latency.py NAME=MODEL.xml [NAME=MODEL.xml ...] [--size 1024x2048] [--rounds 30]
        [--json OUT]

A model with FakeQuantize nodes runs as OpenVINO int8, any other as fp32.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

import numpy as np

from gcnet.cli.args import parse_size
from gcnet.deploy.bench import machine_info
from gcnet.deploy.runtimes import OpenVINORuntime, default_threads, is_quantized_openvino


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", metavar="NAME=MODEL.xml")
    ap.add_argument("--size", type=parse_size, default=(1024, 2048), metavar="HxW")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    import openvino as ov

    runtimes = {}
    for item in args.models:
        name, _, path = item.partition("=")
        model = ov.Core().read_model(path)
        runtimes[name] = OpenVINORuntime(model, "int8" if is_quantized_openvino(model) else "fp32")
    x = np.random.default_rng(0).standard_normal((1, 3, *args.size)).astype(np.float32)
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    for r in range(args.warmup + args.rounds):
        for name, run in runtimes.items():
            t0 = time.perf_counter()
            run(x)
            if r >= args.warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    result = {"what": __doc__.split("\n\n")[0], "date": datetime.date.today().isoformat(),
              "machine": machine_info(default_threads()), "size": list(args.size), "rounds": args.rounds,
              "models": dict(item.partition("=")[::2] for item in args.models),
              "latency_ms": {name: {"median": round(float(np.median(t)), 2),
                                    "q1": round(float(np.percentile(t, 25)), 2),
                                    "q3": round(float(np.percentile(t, 75)), 2)} for name, t in times.items()}}
    for name, lat in result["latency_ms"].items():
        print(f"{name:<24} median {lat['median']:.1f} ms (quartiles {lat['q1']:.1f}-{lat['q3']:.1f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
