"""Latency cost of leaving the most int8-sensitive convolutions in float (``quantize_openvino(float_convs=...)``):
OpenVINO int8 at 1024x2048, batch 1, for several counts, timed interleaved (one run of each setting per
round) so that a change in the machine's load hits every setting alike. The sensitivities come from
``benchmarks/int8_sensitivity.py``'s JSON for the same checkpoint.

    python benchmarks/int8_float_convs_latency.py CHECKPOINT CAMVID_ROOT SENSITIVITY_JSON [--counts 0 2 4] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np

import gcnet
from gcnet.data.datasets import build_dataset
from gcnet.data.transforms import EvalTransform
from gcnet.deploy.bench import machine_info
from gcnet.deploy.export import _nncf_quantize, calibration_from_dataset, load_for_deploy, to_openvino
from gcnet.deploy.runtimes import OpenVINORuntime, default_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("camvid_root")
    ap.add_argument("sensitivity_json")
    ap.add_argument("--counts", type=int, nargs="+", default=[0, 2, 4])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    logging.getLogger("nncf").setLevel(logging.WARNING)
    sens = json.load(open(args.sensitivity_json))["per_layer"]
    ranked = sorted((c for c in sens if c != "other ops"), key=lambda c: -sens[c]["rel_error"])
    ov_model = to_openvino(load_for_deploy(gcnet.load_model(args.checkpoint).eval()), input_size=(256, 512))
    train = build_dataset("camvid", args.camvid_root, "train", transform=EvalTransform())
    calib = calibration_from_dataset(train, 32)
    runs = {k: OpenVINORuntime(_nncf_quantize(ov_model, calib, "performance", True, ranked[:k]), "int8")
            for k in args.counts}
    x = np.random.default_rng(0).standard_normal((1, 3, 1024, 2048), dtype=np.float32)
    for run in runs.values():
        for _ in range(3):
            run(x)
    times: dict[int, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, run in runs.items():
            t = time.perf_counter()
            run(x)
            times[k].append(1000 * (time.perf_counter() - t))
    report = {"checkpoint": args.checkpoint, "machine": machine_info(default_threads()), "rounds": args.rounds,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "results": [{"float_convs": ranked[:k], "median_ms": float(np.median(t)),
                           "iqr_ms": float(np.subtract(*np.percentile(t, [75, 25])))} for k, t in times.items()]}
    for k, r in zip(runs, report["results"]):
        print(f"{k} convs in float: {r['median_ms']:.1f} ms (IQR {r['iqr_ms']:.1f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
