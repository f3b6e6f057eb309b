"""mIoU change of OpenVINO int8 (NNCF) against fp32 for several quantization settings of one model:
fast vs per-layer bias correction, 32 vs 128 calibration frames (the table in docs/deploy.md).

    python benchmarks/int8_settings.py CHECKPOINT CAMVID_ROOT
"""

from __future__ import annotations

import argparse
import tempfile

import gcnet
from gcnet.data.datasets import build_dataset
from gcnet.data.transforms import EvalTransform
from gcnet.deploy.export import (
    calibration_from_dataset,
    export_openvino,
    load_for_deploy,
    quantize_openvino,
    to_openvino,
)
from gcnet.deploy.runtimes import OpenVINORuntime
from gcnet.evaluation.inference import evaluate

SETTINGS = [("fast BC, 32", True, 32), ("full BC, 32", False, 32), ("fast BC, 128", True, 128),
            ("full BC, 128", False, 128)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("camvid_root")
    args = ap.parse_args()
    deploy = load_for_deploy(gcnet.load_model(args.checkpoint).eval())
    ov_model = to_openvino(deploy, input_size=(256, 512))
    train = build_dataset("camvid", args.camvid_root, "train", transform=EvalTransform())
    val = build_dataset("camvid", args.camvid_root, "val", transform=EvalTransform())

    def miou(model, precision: str) -> float:
        path = export_openvino(model, tempfile.mkdtemp(prefix="gcnet-int8-") + "/m.xml", verify=False)["path"]
        return evaluate(OpenVINORuntime(path, precision, threads=None), val, progress=False)["mIoU"]

    ref = miou(ov_model, "fp32")
    print(f"fp32: {ref:.2f} mIoU")
    for name, fast, num in SETTINGS:
        q = quantize_openvino(ov_model, calibration_from_dataset(train, num), preset="mixed", fast_bias_correction=fast)
        m = miou(q, "int8")
        print(f"{name} frames: {m:.2f} mIoU ({m - ref:+.2f})", flush=True)


if __name__ == "__main__":
    main()
