"""Per-layer int8 sensitivity of one CamVid model (OpenVINO, NNCF defaults): where the accuracy goes.

1. Sensitivity, on 8 calibration frames held out from the 24 used to calibrate: the relative error added to
   the logits, and the share of (1/8-resolution) labels that change, when only one part is quantized: each
   convolution alone, and the quantizers NNCF puts on the inputs of the other ops (Add, Interpolate, AvgPool,
   Concat, ...) together.
2. The whole model quantized with the k most sensitive convolutions left in float, with and without the
   non-convolution quantizers: the same errors, the mIoU change on val and (``--latency``) the median latency
   at 1024x2048.

    python benchmarks/int8_sensitivity.py CHECKPOINT CAMVID_ROOT [--keep 0 2 4] [--latency] [--json OUT]
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
from gcnet.deploy.export import _nncf_quantize, calibration_from_dataset, load_for_deploy, to_openvino
from gcnet.deploy.runtimes import OpenVINORuntime
from gcnet.evaluation.inference import evaluate


def quantize(ov_model, calib: list[np.ndarray], float_convs: list[str], other_ops: bool):
    """NNCF defaults (performance preset, fast bias correction) with ``float_convs`` left unquantized, and
    without the quantizers on the inputs of non-convolution ops unless ``other_ops``."""
    return _nncf_quantize(ov_model, calib, "performance", True, float_convs, other_ops)


def errors(model, check: list[np.ndarray], reference: list[np.ndarray]) -> dict[str, float]:
    """Relative logit error and % of labels that differ from fp32's, on ``check``."""
    run = OpenVINORuntime(model, "int8", threads=None)
    num = den = changed = total = 0.0
    for x, ref in zip(check, reference):
        out = run(x)
        num += float(((out - ref) ** 2).sum())
        den += float((ref ** 2).sum())
        changed += float((out.argmax(1) != ref.argmax(1)).sum())
        total += ref.shape[0] * ref.shape[2] * ref.shape[3]
    return {"rel_error": num / den, "labels_changed_pct": 100 * changed / total}


def latency_ms(model, iters: int = 20) -> float:
    run = OpenVINORuntime(model, "int8", threads=None)
    x = np.random.default_rng(0).standard_normal((1, 3, 1024, 2048), dtype=np.float32)
    for _ in range(3):
        run(x)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        run(x)
        times.append(1000 * (time.perf_counter() - t))
    return float(np.median(times))


def sensitivity(ov_model, convs, calib, check, reference) -> dict[str, dict]:
    """Each convolution quantized alone, and the non-convolution quantizers alone."""
    out = {"other ops": errors(quantize(ov_model, calib, convs, True), check, reference)}
    for i, name in enumerate(convs):
        rest = [c for c in convs if c != name]
        out[name] = {"index": i, **errors(quantize(ov_model, calib, rest, False), check, reference)}
        print(f"{i:3d} {name:60s} {out[name]['rel_error']:.2e} {out[name]['labels_changed_pct']:.2f}%", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("camvid_root")
    ap.add_argument("--keep", type=int, nargs="+", default=[0, 2, 4])
    ap.add_argument("--latency", action="store_true", help="also time each setting at 1024x2048")
    ap.add_argument("--json")
    args = ap.parse_args()
    import nncf

    nncf.set_log_level(logging.WARNING)
    ov_model = to_openvino(load_for_deploy(gcnet.load_model(args.checkpoint).eval()), input_size=(256, 512))
    convs = [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    train = build_dataset("camvid", args.camvid_root, "train", transform=EvalTransform())
    val = build_dataset("camvid", args.camvid_root, "val", transform=EvalTransform())
    samples = calibration_from_dataset(train, 32)
    calib, check = samples[:24], samples[24:]
    fp32 = OpenVINORuntime(ov_model, "fp32", threads=None)
    reference = [fp32(x) for x in check]
    per_layer = sensitivity(ov_model, convs, calib, check, reference)
    print("other ops:", per_layer["other ops"], flush=True)
    ranked = sorted(convs, key=lambda c: -per_layer[c]["rel_error"])

    fp32_miou = evaluate(fp32, val, progress=False)["mIoU"]
    rows = []
    for other_ops in (True, False):
        for k in args.keep:
            q = quantize(ov_model, calib, ranked[:k], other_ops)
            miou = evaluate(OpenVINORuntime(q, "int8", threads=None), val, progress=False)["mIoU"]
            row = {"float_convs": ranked[:k], "other_ops_quantized": other_ops, **errors(q, check, reference),
                   "val_miou": miou, "delta_miou": miou - fp32_miou}
            if args.latency:
                row["latency_ms_1024x2048"] = latency_ms(q)
            rows.append(row)
            print(f"k={k} other ops {'int8' if other_ops else 'float'}: {row['rel_error']:.2e}, "
                  f"{row['labels_changed_pct']:.2f}% changed, val {miou:.2f} ({miou - fp32_miou:+.2f}) "
                  f"{row.get('latency_ms_1024x2048', '')}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "fp32_val_miou": fp32_miou, "per_layer": per_layer,
                       "settings": rows}, f, indent=1)


if __name__ == "__main__":
    main()
