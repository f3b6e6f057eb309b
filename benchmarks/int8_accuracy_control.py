"""Experiment: NNCF accuracy-controlled int8 (``nncf.quantize_with_accuracy_control``) on a CamVid
GCNet-S: calibration on 128 train frames, accuracy control (max mIoU drop 0.2) on 60 other train
frames, then mIoU on CamVid val and latency at 1024x2048 (docs/deploy.md, "The bf16-trained CamVid model").

    python benchmarks/int8_accuracy_control.py CHECKPOINT CAMVID_ROOT
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import gcnet
from gcnet.data.datasets import build_dataset
from gcnet.data.transforms import EvalTransform
from gcnet.deploy.export import export_openvino, load_for_deploy, to_openvino
from gcnet.deploy.runtimes import OpenVINORuntime
from gcnet.evaluation.inference import evaluate
from gcnet.evaluation.metrics import ConfusionMatrix
from gcnet.optional import require


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("camvid_root")
    ap.add_argument("--max-drop", type=float, default=0.2, help="mIoU points (default: %(default)s)")
    args = ap.parse_args()
    nncf = require("nncf")
    logging.getLogger("nncf").setLevel(logging.WARNING)
    ov_model = to_openvino(load_for_deploy(gcnet.load_model(args.checkpoint).eval()), input_size=(256, 512))
    train = build_dataset("camvid", args.camvid_root, "train", transform=EvalTransform())
    val = build_dataset("camvid", args.camvid_root, "val", transform=EvalTransform())
    k, ignore = len(train.info.classes), train.info.ignore_index
    order = np.random.default_rng(0).permutation(len(train))
    calib = [train[i][0].unsqueeze(0).numpy() for i in order[:128]]
    held_out = [(train[i][0].unsqueeze(0).numpy(), torch.as_tensor(train[i][1]).long()) for i in order[128:188]]

    def validate(compiled, data) -> tuple[float, list[float]]:
        """mIoU (as a fraction) of the set, and pixel accuracy per image for NNCF's ranking."""
        total, per_image = ConfusionMatrix(k, ignore), []
        for x, label in data:
            logits = torch.from_numpy(compiled(x)[compiled.outputs[0]])
            pred = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False).argmax(1)[0]
            one = ConfusionMatrix(k, ignore)
            one.update(pred, label)
            total.update(pred, label)
            per_image.append(one.compute()["aAcc"] / 100)
        return total.compute()["mIoU"] / 100, per_image

    t0 = time.time()
    q = nncf.quantize_with_accuracy_control(ov_model, nncf.Dataset(calib), nncf.Dataset(held_out), validate,
                                            max_drop=args.max_drop / 100, preset=nncf.QuantizationPreset.MIXED,
                                            subset_size=len(calib))
    print(f"quantized in {time.time() - t0:.0f} s")
    runtime = OpenVINORuntime(export_openvino(q, tempfile.mkdtemp(prefix="gcnet-ac-") + "/m.xml", verify=False)["path"],
                             "int8")
    print(f"CamVid val mIoU: {evaluate(runtime, val, progress=False)['mIoU']:.2f}")
    x = np.random.default_rng(0).standard_normal((1, 3, 1024, 2048)).astype(np.float32)
    for _ in range(3):
        runtime(x)
    times = []
    for _ in range(10):
        t = time.perf_counter()
        runtime(x)
        times.append(time.perf_counter() - t)
    print(f"1024x2048 median latency: {1e3 * float(np.median(times)):.1f} ms")


if __name__ == "__main__":
    main()
