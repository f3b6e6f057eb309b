"""``gcnet export``: reparameterized model -> ONNX / TorchScript / torch.export / OpenVINO IR,
optional int8 quantization with an mIoU check against fp32."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gcnet.cli.args import parse_size
from gcnet.cli.predict import add_model_args, model_from_args
from gcnet.errors import ConfigError

FORMATS = ("onnx", "torchscript", "torch-export", "openvino", "safetensors")
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "torch-export": ".pt2", "openvino": ".xml", "safetensors": ""}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export the reparameterized model (ONNX, TorchScript, torch.export, OpenVINO, int8)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Export the deploy form of a GCNet. A training-form model is reparameterized first (every GCBlock
becomes one 3x3 conv, BatchNorms are folded, the auxiliary head is dropped); the outputs are the
1/8-resolution logits (B, K, ceil(H/8), ceil(W/8)) unless --postprocess adds the bilinear upsample
and argmax to the ONNX graph (output: int64 labels (B, H, W)).

formats (--format, several allowed):
  onnx          <name>.onnx, opset >= 17, dynamic batch/height/width (unless --static). Verified
                with ONNX Runtime against PyTorch at --input-size and at an odd size with batch 2;
                the export fails (exit 2) if max|ORT - PyTorch| / max(1, max|logits|) > --tolerance.
  torchscript   <name>.ts (traced and frozen; any input size), verified against eager.
  torch-export  <name>.pt2 (torch.export, symbolic height/width where torch can prove them; batch fixed),
                verified; load with torch.export.load(path).module().
  openvino      <name>.xml/.bin IR (fp32 weights, dynamic shapes). bf16 is a run-time choice:
                gcnet predict/bench --runtime openvino --precision bf16.
  safetensors   <name>/config.json + model.safetensors (save_pretrained: model config, class names,
                palette, normalisation; loads without unpickling: any gcnet command, from_pretrained).

int8 (--precision int8): post-training static quantization calibrated on --num-calib images
(--calib-dataset/--calib-root or --calib-images). Writes <name>_int8.xml (OpenVINO + NNCF) when
openvino is among the formats and <name>_int8.onnx (ONNX Runtime QDQ, u8 activations, s8
per-channel weights) when onnx is. With --eval-dataset/--eval-root the fp32, bf16 and int8 models are
evaluated (whole-image inference) and the mIoU change of each int8 model against fp32 is
reported. A JSON report of everything (paths, verification, accuracy) goes to --json.""",
        epilog="""\
examples:
  gcnet export best.pth --format onnx openvino --out exported/
  gcnet export --model gcnet-s --weights gcnet-s_cityscapes.pth --num-classes 19 --format torchscript
  gcnet export --checkpoint camvid.pth --format openvino onnx --precision int8 \\
      --calib-dataset camvid --calib-root data/camvid --eval-dataset camvid --eval-root data/camvid""")
    p.add_argument("source", nargs="?", metavar="CHECKPOINT", help="gcnet checkpoint (same as --checkpoint)")
    add_model_args(p, allow_exported=False)
    p.add_argument("--format", "-f", nargs="+", choices=FORMATS, default=["onnx"], help="output formats")
    p.add_argument("--out", "-o", default="exported", metavar="DIR", help="output folder (default: %(default)s)")
    p.add_argument("--name", help="base file name (default: the checkpoint's or variant's name)")
    p.add_argument("--input-size", type=parse_size, default=(512, 1024), metavar="HxW",
                   help="example/verification input size (default: 512x1024); exports stay dynamic")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (default: %(default)s)")
    p.add_argument("--static", action="store_true", help="fixed input shape in ONNX/torch.export")
    p.add_argument("--postprocess", action="store_true",
                   help="ONNX graph also upsamples to the input size and returns int64 labels (argmax)")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="max |exported - PyTorch| / max(1, max|logits|) accepted (default: %(default)s)")
    p.add_argument("--no-verify", action="store_true", help="skip the numerical verification")
    q = p.add_argument_group("int8 quantization and accuracy")
    q.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                   help="int8 also writes quantized models (needs calibration data)")
    q.add_argument("--calib-dataset", metavar="KIND", help="calibration dataset kind: cityscapes, camvid, voc, folder")
    q.add_argument("--calib-root", metavar="DIR", help="calibration dataset root")
    q.add_argument("--calib-split", default="train", help="calibration split (default: %(default)s)")
    q.add_argument("--calib-images", metavar="DIR", help="or: a folder of calibration images")
    q.add_argument("--num-calib", type=int, default=32, help="calibration images (default: %(default)s)")
    q.add_argument("--quant-preset", choices=("mixed", "performance"), default="mixed",
                   help="OpenVINO int8: mixed = asymmetric u8 activations (default, more accurate), "
                        "performance = symmetric")
    q.add_argument("--full-bias-correction", action="store_true",
                   help="OpenVINO int8: per-layer bias correction instead of the fast one (slower to quantize)")
    q.add_argument("--eval-dataset", metavar="KIND", help="evaluate fp32 vs int8 on this dataset kind")
    q.add_argument("--eval-root", metavar="DIR", help="evaluation dataset root")
    q.add_argument("--eval-split", default="val", help="evaluation split (default: %(default)s)")
    q.add_argument("--eval-limit", type=int, metavar="N", help="evaluate on the first N images only")
    p.add_argument("--threads", type=int, help="CPU threads for verification/evaluation (default: all)")
    p.add_argument("--json", metavar="FILE", help="write the export report as JSON")
    p.set_defaults(func=run)


def _dataset(kind: str, root: str | None, split: str, what: str):
    from gcnet.data.datasets import build_dataset
    from gcnet.data.transforms import EvalTransform

    if not root:
        raise ConfigError(f"--{what}-dataset needs --{what}-root DIR")
    return build_dataset(kind, root, split, transform=EvalTransform())


def run(args: argparse.Namespace) -> int:
    import torch

    from gcnet.deploy import export as E
    from gcnet.deploy.runtimes import OnnxRuntime, OpenVINORuntime, TorchRuntime, is_available

    if args.opset < 17:
        raise ConfigError("--opset must be >= 17")
    if args.threads:
        torch.set_num_threads(args.threads)
    formats = list(dict.fromkeys(args.format))
    int8 = args.precision == "int8"
    if int8 and not {"onnx", "openvino"} & set(formats):
        raise ConfigError("--precision int8 needs --format onnx and/or openvino")
    if int8 and not (args.calib_dataset or args.calib_images):
        raise ConfigError("--precision int8 needs calibration data: --calib-dataset KIND --calib-root DIR, "
                          "or --calib-images DIR")
    if args.eval_dataset and not int8:
        print("note: --eval-dataset evaluates the fp32 exports only (no --precision int8)", file=sys.stderr)
    for fmt, mod in (("onnx", "onnx"), ("openvino", "openvino")):
        if fmt in formats and not is_available(mod):
            raise ConfigError(f"--format {fmt} needs the '{mod}' package (pip install gcnet[deploy])")
    if "onnx" in formats and not args.no_verify and not is_available("onnxruntime"):
        raise ConfigError("verifying the ONNX export needs onnxruntime (install it or pass --no-verify)")

    if args.source:
        if args.checkpoint:
            raise ConfigError("give the checkpoint either positionally or with --checkpoint, not both")
        args.checkpoint = args.source
    model = model_from_args(args)
    deploy = E.load_for_deploy(model)
    name = args.name or (Path(args.checkpoint).stem if args.checkpoint else f"{args.model.lower()}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"model": deploy.config, "input_size": list(args.input_size), "exports": {}}
    verify = not args.no_verify

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    for fmt in formats:
        path = out / f"{name}{SUFFIX[fmt]}"
        log(f"exporting {fmt} -> {path}")
        if fmt == "onnx":
            r = E.export_onnx(deploy, path, input_size=args.input_size, opset=args.opset, dynamic=not args.static,
                              postprocess=args.postprocess, verify=verify, tolerance=args.tolerance)
        elif fmt == "torchscript":
            r = E.export_torchscript(deploy, path, input_size=args.input_size, verify=verify,
                                     tolerance=args.tolerance)
        elif fmt == "torch-export":
            r = E.export_torch_export(deploy, path, input_size=args.input_size, dynamic=not args.static,
                                      verify=verify, tolerance=args.tolerance)
            if not args.static and not r["dynamic"]:
                log("  note: torch.export could not make the shapes dynamic; exported for the example size")
        elif fmt == "safetensors":
            from gcnet.checkpoint import checkpoint_dataset_info, save_pretrained

            spec = args.checkpoint or args.weights
            info = checkpoint_dataset_info(spec) if spec else None  # class names and palette travel along
            r = {"format": fmt, "path": str(save_pretrained(deploy, path, dataset=info))}
        else:
            ov_model = E.to_openvino(deploy, input_size=args.input_size)
            E.save_openvino(ov_model, path)
            r = {"format": "openvino", "path": str(path)}
            if verify:
                x = E._example(args.input_size, 1, seed=1)
                with torch.no_grad():
                    ref = deploy(x).numpy()
                rt = OpenVINORuntime(path, "fp32", threads=args.threads)
                r.update(E._check_close("OpenVINO fp32", ref, rt(x.numpy()), args.tolerance))
        report["exports"][fmt] = r
        if "max_abs_diff" in r:
            log(f"  verified: max |diff| to PyTorch = {r['max_abs_diff']:.3g}")

    runtimes: dict = {}
    if int8:
        if args.calib_images:
            files = [p for p in sorted(Path(args.calib_images).rglob("*"))
                     if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp")]
            calibration = E.calibration_from_images(files, args.num_calib)
            report["calibration"] = {"images": args.calib_images, "num": len(calibration)}
        else:
            ds = _dataset(args.calib_dataset, args.calib_root, args.calib_split, "calib")
            calibration = E.calibration_from_dataset(ds, args.num_calib)
            report["calibration"] = {"dataset": args.calib_dataset, "split": args.calib_split,
                                     "num": len(calibration)}
        if "openvino" in formats:
            path = out / f"{name}_int8.xml"
            log(f"quantizing OpenVINO int8 (NNCF, {len(calibration)} images) -> {path}")
            q = E.quantize_openvino(E.to_openvino(deploy, input_size=args.input_size), calibration,
                                    preset=args.quant_preset, fast_bias_correction=not args.full_bias_correction)
            E.save_openvino(q, path)
            report["exports"]["openvino-int8"] = {"format": "openvino", "precision": "int8", "path": str(path)}
            runtimes["openvino-int8"] = OpenVINORuntime(path, "int8", threads=args.threads)
        if "onnx" in formats:
            if args.postprocess:
                raise ConfigError("int8 ONNX quantization needs the logits graph; drop --postprocess")
            path = out / f"{name}_int8.onnx"
            log(f"quantizing ONNX Runtime int8 (QDQ, {len(calibration)} images) -> {path}")
            E.quantize_onnx(out / f"{name}.onnx", path, calibration)
            report["exports"]["onnx-int8"] = {"format": "onnx", "precision": "int8", "path": str(path)}
            runtimes["onnxruntime-int8"] = OnnxRuntime(path, "int8", threads=args.threads)

    if args.eval_dataset:
        ds = _dataset(args.eval_dataset, args.eval_root, args.eval_split, "eval")
        evaluated = {"torch-fp32": TorchRuntime(deploy, threads=args.threads)}
        if "onnx" in formats and not args.postprocess:
            evaluated["onnxruntime-fp32"] = OnnxRuntime(out / f"{name}.onnx", threads=args.threads)
        if "openvino" in formats:
            evaluated["openvino-fp32"] = OpenVINORuntime(out / f"{name}.xml", "fp32", threads=args.threads)
            evaluated["openvino-bf16"] = OpenVINORuntime(out / f"{name}.xml", "bf16", threads=args.threads)
        evaluated.update(runtimes)
        log(f"evaluating {', '.join(evaluated)} on {args.eval_dataset}:{args.eval_split} ...")
        acc = E.compare_accuracy(evaluated, ds, reference="torch-fp32", limit=args.eval_limit, progress=True)
        report["accuracy"] = acc
        print(f"{'runtime':<20}{'mIoU':>8}{'aAcc':>8}{'delta mIoU':>12}")
        for k, v in acc["results"].items():
            print(f"{k:<20}{v['mIoU']:>8.2f}{v['aAcc']:>8.2f}{v['delta_mIoU']:>+12.2f}")

    for k, v in report["exports"].items():
        print(f"{k}: {v['path']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"report: {args.json}")
    return 0
