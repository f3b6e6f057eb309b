"""How far int8 models' labels are from their fp32 model's on CamVid val: the share of the 1/8-resolution
labels (the logits' argmax) that differ, over all val frames. Steadier than the mIoU change, which moves up
or down with a few frames' errors.

    python benchmarks/int8_label_agreement.py FP32.xml CAMVID_ROOT NAME=INT8.xml [NAME=INT8.xml ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime
import json

from gcnet.data.datasets import build_dataset
from gcnet.data.transforms import EvalTransform
from gcnet.deploy.bench import machine_info
from gcnet.deploy.runtimes import OpenVINORuntime, default_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fp32")
    ap.add_argument("camvid_root")
    ap.add_argument("int8", nargs="+", metavar="NAME=INT8.xml")
    ap.add_argument("--split", default="val")
    ap.add_argument("--json")
    args = ap.parse_args()
    val = build_dataset("camvid", args.camvid_root, args.split, transform=EvalTransform())
    fp32 = OpenVINORuntime(args.fp32, "fp32")
    models = {name: OpenVINORuntime(path, "int8") for name, path in (m.split("=", 1) for m in args.int8)}
    differ = dict.fromkeys(models, 0)
    total = 0
    for i in range(len(val)):
        x = val[i][0].unsqueeze(0).numpy()
        ref = fp32(x).argmax(1)
        total += ref.size
        for name, run in models.items():
            differ[name] += int((run(x).argmax(1) != ref).sum())
    shares = {name: round(100 * n / total, 3) for name, n in differ.items()}
    for name, share in shares.items():
        print(f"{name:<24} {share:.2f}% of the labels differ from fp32's")
    if args.json:
        result = {"what": __doc__.split("\n\n")[0], "date": datetime.date.today().isoformat(),
                  "machine": machine_info(default_threads()), "fp32": args.fp32, "split": args.split,
                  "frames": len(val), "models": dict(m.split("=", 1) for m in args.int8), "percent_differ": shares}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
