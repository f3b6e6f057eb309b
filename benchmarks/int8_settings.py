"""mIoU change of OpenVINO int8 (NNCF) against fp32 on CamVid val for several quantization settings of one
model: fast vs per-layer bias correction, 32 vs 128 calibration frames, the first / last convolution left
in floating point, NNCF's activation range estimators and channel alignment (the tables in docs/deploy.md).

    python benchmarks/int8_settings.py CHECKPOINT CAMVID_ROOT [--preset performance] [--settings NAME ...]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import dataclass

import gcnet
from gcnet.data.datasets import build_dataset
from gcnet.data.transforms import EvalTransform
from gcnet.deploy.export import calibration_from_dataset, export_openvino, load_for_deploy, to_openvino
from gcnet.deploy.runtimes import OpenVINORuntime
from gcnet.evaluation.inference import evaluate


@dataclass(frozen=True)
class Setting:
    fast_bias_correction: bool = True
    frames: int = 32
    float_convs: tuple[int, ...] = ()  # indices (in graph order) of convolutions left unquantized
    range_estimator: str = ""  # an nncf RangeEstimatorParametersSet name for activations ("": NNCF's default)
    channel_alignment: bool = False


SETTINGS = {
    "fast BC, 32": Setting(),
    "full BC, 32": Setting(fast_bias_correction=False),
    "fast BC, 128": Setting(frames=128),
    "full BC, 128": Setting(fast_bias_correction=False, frames=128),
    "first conv float": Setting(float_convs=(0,)),
    "last conv float": Setting(float_convs=(-1,)),
    "first+last float": Setting(float_convs=(0, -1)),
    **{f"ranges {r}": Setting(range_estimator=r) for r in ("MINMAX", "HISTOGRAM", "MEAN_QUANTILE", "MEDIAN_MINMAX")},
    "channel alignment": Setting(channel_alignment=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("camvid_root")
    ap.add_argument("--preset", choices=("mixed", "performance"), default="mixed", help="NNCF preset")
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS)[:4])
    args = ap.parse_args()
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    logging.getLogger("nncf").setLevel(logging.WARNING)
    deploy = load_for_deploy(gcnet.load_model(args.checkpoint).eval())
    ov_model = to_openvino(deploy, input_size=(256, 512))
    convs = [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    train = build_dataset("camvid", args.camvid_root, "train", transform=EvalTransform())
    val = build_dataset("camvid", args.camvid_root, "val", transform=EvalTransform())

    def miou(model, precision: str) -> float:
        path = export_openvino(model, tempfile.mkdtemp(prefix="gcnet-int8-") + "/m.xml", verify=False)["path"]
        return evaluate(OpenVINORuntime(path, precision, threads=None), val, progress=False)["mIoU"]

    ref = miou(ov_model, "fp32")
    print(f"fp32: {ref:.2f} mIoU ({args.preset} preset below)")
    for name in args.settings:
        s = SETTINGS[name]
        scope = nncf.IgnoredScope(names=[convs[i] for i in s.float_convs])
        adv = AdvancedQuantizationParameters(disable_channel_alignment=not s.channel_alignment)
        if s.range_estimator:
            adv.activations_range_estimator_params = getattr(RangeEstimatorParametersSet, s.range_estimator)
        q = nncf.quantize(ov_model, nncf.Dataset(calibration_from_dataset(train, s.frames)),
                          preset=nncf.QuantizationPreset(args.preset), subset_size=s.frames,
                          fast_bias_correction=s.fast_bias_correction, ignored_scope=scope, advanced_parameters=adv)
        m = miou(q, "int8")
        print(f"{name}: {m:.2f} mIoU ({m - ref:+.2f})", flush=True)


if __name__ == "__main__":
    main()
