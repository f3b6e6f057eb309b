"""``gcnet export``: reparameterized model -> ONNX / TorchScript / torch.export / OpenVINO IR,
optional int8 quantization with an mIoU check against fp32."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gcnet.cli.args import (
    CALIB_FLAG_DEFAULTS,
    JSON_HELP,
    QUANT_FLAG_DEFAULTS,
    add_eval_args,
    add_model_args,
    add_quant_args,
    check_json_arg,
    check_quant_args,
    check_writable_dir,
    given_flags,
    model_from_args,
    parse_size,
    positive_int,
    quant_settings,
    show_progress,
    write_json,
)
from gcnet.deploy.export import CALIB_IMAGES
from gcnet.deploy.qat import FINETUNE_MIN_FRAMES, finetune_summary
from gcnet.errors import ConfigError
from gcnet.fileio import staging_folder, unstaged

FORMATS = ("onnx", "torchscript", "torch-export", "openvino", "safetensors")
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "torch-export": ".pt2", "openvino": ".xml", "safetensors": ""}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export the reparameterized model (ONNX, TorchScript, torch.export, OpenVINO, int8)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"""\
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
Every file is written under a temporary name, and the files replace earlier ones of the same names
only once all of them are complete and verified, so a failed export (or quantization, or
evaluation) leaves the --out folder unchanged.

int8 (--precision int8): static quantization calibrated on --num-calib images (--calib-dataset/
--calib-root or --calib-images). Writes <name>_int8.xml (OpenVINO + NNCF) when openvino is among the
formats: fine-tuned for --finetune-iters steps to reproduce the fp32 logits on crops of three quarters
of the frames of the calibration split or folder, keeping the snapshot (every 50 steps) closest to fp32
on the other quarter (post-training with --finetune-iters 0 or fewer than {FINETUNE_MIN_FRAMES} frames),
which removes post-training quantization's systematic mIoU shift; and <name>_int8.onnx
(ONNX Runtime QDQ, post-training, u8 activations, s8 per-channel weights) when onnx is. With
--eval-dataset/--eval-root the fp32, bf16 and int8 models are evaluated (whole-image inference) and
the mIoU change of each int8 model against fp32 is reported. A JSON report of everything (paths,
verification, accuracy) goes to --json.""",
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
    p.add_argument("--opset", type=positive_int, default=17,
                   help="ONNX opset, 17 to what this torch writes (default: %(default)s)")
    p.add_argument("--static", action="store_true", help="fixed input shape in ONNX/torch.export")
    p.add_argument("--postprocess", action="store_true",
                   help="the ONNX graph also upsamples to the input size and returns int64 labels (argmax); "
                        "ONNX only (other formats keep the logits)")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="max |exported - PyTorch| / max(1, max|logits|) accepted (default: %(default)s)")
    p.add_argument("--no-verify", action="store_true", help="skip the numerical verification")
    q = p.add_argument_group("int8 quantization and accuracy")
    q.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                   help="int8 also writes quantized models (needs calibration data)")
    add_quant_args(q, CALIB_IMAGES, "calibration images (default: %(default)s)")
    q.add_argument("--calib-images", metavar="DIR",
                   help="or (instead of --calib-dataset/--calib-root): a folder of calibration images")
    add_eval_args(q, "evaluate fp32 vs int8 on this dataset kind")
    p.add_argument("--threads", type=positive_int, help="CPU threads for verification/evaluation (default: all)")
    p.add_argument("--json", metavar="FILE", help=JSON_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (e.g. when logging to a file)")
    p.set_defaults(func=run)


def _dataset(kind: str, root: str | None, split: str, what: str):
    from gcnet.data.datasets import dataset_from_settings
    from gcnet.data.transforms import EvalTransform

    if not root:
        raise ConfigError(f"--{what}-dataset needs --{what}-root DIR")
    return dataset_from_settings(kind, root, split, transform=EvalTransform())


def _check_args(args: argparse.Namespace, formats: list[str]) -> None:
    from gcnet.deploy.export import DEFAULT_OPSET, MAX_OPSET
    from gcnet.optional import is_available

    if args.source:
        if args.checkpoint:
            raise ConfigError("give the checkpoint either positionally or with --checkpoint, not both")
        args.checkpoint = args.source
    if not DEFAULT_OPSET <= args.opset <= MAX_OPSET:
        raise ConfigError(f"--opset must be from {DEFAULT_OPSET} to {MAX_OPSET} (what this torch's ONNX exporter "
                          "writes)")
    if args.name is not None and (not args.name.strip(".") or Path(args.name).name != args.name):
        raise ConfigError(f"--name {args.name!r} must be a plain file name (no folders); --out chooses the folder")
    if not 0 <= args.tolerance < float("inf"):  # NaN too: no comparison with it could fail
        raise ConfigError("--tolerance must be a number >= 0 (a relative difference, e.g. 1e-3)")
    check_writable_dir(args.out, "--out")
    check_json_arg(args.json, [("the checkpoint", args.checkpoint), ("the weights", args.weights),
                               ("the calibration data set root", args.calib_root),
                               ("the --calib-images folder", args.calib_images),
                               ("the evaluation data set root", args.eval_root),
                               *(("an output of this export", p) for p in _outputs(args, formats))])
    folder = Path(args.out) / _name(args) if "safetensors" in formats else None  # a save_pretrained folder
    _check_outputs_in_the_way([p for p in _outputs(args, formats) if p != folder], folder)
    if args.static and not {"onnx", "torch-export"} & set(formats):
        raise ConfigError("--static fixes the input shape of ONNX and torch.export files only; add --format onnx "
                          "or torch-export, or drop --static")
    if args.postprocess and "onnx" not in formats:
        raise ConfigError("--postprocess changes the ONNX graph only; add --format onnx or drop --postprocess")
    _check_int8_args(args, formats)
    if args.eval_dataset and args.precision != "int8":
        print("note: --eval-dataset evaluates the fp32 exports only (no --precision int8)", file=sys.stderr)
    for fmt, mod in (("onnx", "onnx"), ("openvino", "openvino")):
        if fmt in formats and not is_available(mod):
            raise ConfigError(f"--format {fmt} needs the '{mod}' package (pip install gcnet[deploy])")
    if "onnx" in formats and not args.no_verify and not is_available("onnxruntime"):
        raise ConfigError("verifying the ONNX export needs onnxruntime (install it or pass --no-verify)")


def _check_int8_args(args: argparse.Namespace, formats: list[str]) -> None:
    """The calibration and quantization flags go with --precision int8, and one calibration source with it."""
    if args.precision != "int8":
        unused = given_flags(args, {**CALIB_FLAG_DEFAULTS, "calib_images": None, "num_calib": CALIB_IMAGES,
                                    **QUANT_FLAG_DEFAULTS})
        if unused:
            raise ConfigError(f"{', '.join(unused)}: for int8 quantization only; add --precision int8 or drop them")
        return
    if not {"onnx", "openvino"} & set(formats):
        raise ConfigError("--precision int8 needs --format onnx and/or openvino")
    dataset_flags = given_flags(args, CALIB_FLAG_DEFAULTS)
    if args.calib_images and dataset_flags:
        raise ConfigError(f"--calib-images and {', '.join(dataset_flags)} both choose the calibration data; give "
                          "either --calib-images DIR or --calib-dataset KIND --calib-root DIR")
    if not (args.calib_dataset or args.calib_images):
        raise ConfigError("--precision int8 needs calibration data: --calib-dataset KIND --calib-root DIR, "
                          "or --calib-images DIR")
    if "onnx" in formats and args.postprocess:
        raise ConfigError("int8 ONNX quantization needs the logits graph; drop --postprocess")
    if "openvino" not in formats and (tuning := given_flags(args, QUANT_FLAG_DEFAULTS)):
        raise ConfigError(f"{', '.join(tuning)}: for OpenVINO int8 only; add --format openvino or drop them")
    check_quant_args(args)


def _name(args: argparse.Namespace) -> str:
    """The exports' base file name: --name, else the checkpoint's or the variant's; a format suffix is dropped
    (--name m.onnx means m, not m.onnx.onnx)."""
    name = args.name or (Path(args.checkpoint).stem if args.checkpoint else (args.model or "").lower())
    return Path(name).stem if Path(name).suffix in set(SUFFIX.values()) - {""} else name


def _outputs(args: argparse.Namespace, formats: list[str]) -> list[Path]:
    """The files (a folder for safetensors) the export writes into --out."""
    name, int8 = _name(args), args.precision == "int8"
    files = [name + SUFFIX[fmt] for fmt in formats]
    if "openvino" in formats:
        files += [f"{name}.bin"] + ([f"{name}_int8.xml", f"{name}_int8.bin"] if int8 else [])
    if "onnx" in formats and int8:
        files.append(f"{name}_int8.onnx")
    return [Path(args.out) / f for f in files]


def _check_outputs_in_the_way(files: list[Path], folder: Path | None) -> None:
    """Refuse, before any work, a folder where one of ``files`` is to be written, a file where the
    safetensors ``folder`` goes, or such a folder holding anything but an earlier save_pretrained's files
    (it is replaced whole): the user's files are never replaced by a folder or removed with one."""
    from gcnet.checkpoint import CONFIG_NAME, WEIGHTS_NAME

    for path in files:
        if path.is_dir():
            raise ConfigError(f"--out: a folder {path} is in the way of the file of that name; move it, or "
                              "choose another --name or --out")
    if folder is not None and folder.is_file():
        raise ConfigError(f"--out: a file {folder} is in the way of the safetensors folder of that name; move it, "
                          "or choose another --name or --out")
    pretrained = {CONFIG_NAME, WEIGHTS_NAME}  # what save_pretrained writes
    if folder is not None and folder.is_dir() and (other := sorted({p.name for p in folder.iterdir()} - pretrained)):
        raise ConfigError(f"--out: {folder} holds files the export did not write ({', '.join(other[:3])}), and the "
                          "safetensors export replaces that folder; choose another --name or --out")


def _export(fmt: str, deploy, path: Path, args: argparse.Namespace, settings) -> dict:
    """Write one fp32 format (verified unless --no-verify); returns its report."""
    from gcnet.deploy.export import export_torch_export, export_torchscript
    from gcnet.deploy.pipeline import build

    if fmt == "onnx":
        return build(deploy, "onnxruntime", out=path, open_runtime=False, settings=settings).report
    if fmt == "openvino":
        return build(deploy, "openvino", out=path, open_runtime=False, settings=settings,
                     threads=args.threads).report
    if fmt == "safetensors":
        from gcnet.checkpoint import checkpoint_dataset_info, save_pretrained

        spec = args.checkpoint or args.weights
        info = checkpoint_dataset_info(spec) if spec else None  # class names and palette travel along
        return {"format": fmt, "path": str(save_pretrained(deploy, path, dataset=info))}
    if fmt == "torchscript":
        return export_torchscript(deploy, path, input_size=args.input_size, verify=settings.verify,
                                  tolerance=args.tolerance)
    return export_torch_export(deploy, path, input_size=args.input_size, dynamic=not args.static,
                               verify=settings.verify, tolerance=args.tolerance)


def _calibration(args: argparse.Namespace) -> tuple[list, Any, dict]:
    """(calibration arrays, every frame of the calibration source for the fine-tune, report entry)."""
    from gcnet.deploy.export import ImageFiles, calibration_from_dataset, calibration_from_images
    from gcnet.deploy.sources import list_files

    if args.calib_images:
        frames = ImageFiles(list_files(Path(args.calib_images)))
        if not len(frames):
            raise ConfigError(f"--calib-images {args.calib_images}: no calibration images found there (no image files)")
        calibration = calibration_from_images(frames.paths, args.num_calib)
        return calibration, frames, {"images": args.calib_images, "num": len(calibration), "frames": len(frames)}
    frames = _dataset(args.calib_dataset, args.calib_root, args.calib_split, "calib")
    calibration = calibration_from_dataset(frames, args.num_calib)
    return calibration, frames, {"dataset": args.calib_dataset, "split": args.calib_split, "num": len(calibration),
                                 "frames": len(frames)}


def _log_quantization(quant: dict, args: argparse.Namespace, calibration: list, frames, log) -> None:
    """Say how the OpenVINO int8 model was made (``quant``: :func:`gcnet.deploy.export.quant_settings_of`)."""
    if tuned := quant.get("finetune"):
        log(f"  {finetune_summary(tuned)}")
    elif args.finetune_iters:
        log(f"  note: {len(frames)} frames to fine-tune on, fewer than {FINETUNE_MIN_FRAMES} (a fine-tune on few "
            "frames drifts from fp32 on others): post-training quantization instead")
    if quant.get("scores"):
        scores = ", ".join(f"{k} {v:.1f}" for k, v in quant["scores"].items())
        log(f"  chose {quant['preset']}, {quant['bias_correction']} bias correction (mIoU against the fp32 "
            f"labels on held-out calibration images: {scores})")
    chosen = args.quant_preset == "auto" or args.bias_correction == "auto" or args.float_convs != 0
    if chosen and not quant.get("finetune") and len(calibration) < 4:
        log("  note: fewer than 4 calibration images, none to hold out: nothing chosen per model "
            f"({quant['preset']}, {quant['bias_correction']} bias correction, every convolution int8)")
    if quant.get("float_convs"):
        names = [c.removeprefix("__module.").split("/")[0] for c in quant["float_convs"]]
        log(f"  left in float (the convolutions most sensitive to int8): {', '.join(names)}")


def _quantize(deploy, out: Path, name: str, formats: list[str], args: argparse.Namespace, settings,
              calibration: list, frames, report: dict, log) -> dict:
    """Write the int8 models (OpenVINO from the deploy form, ONNX from the fp32 .onnx); returns their runtimes."""
    from gcnet.deploy.pipeline import build

    runtimes = {}
    if "openvino" in formats:
        path = out / f"{name}_int8.xml"
        log(f"quantizing OpenVINO int8 (NNCF, {len(calibration)} images) -> {Path(args.out) / path.name}")
        built = build(deploy, "openvino", "int8", calibration=calibration, finetune_frames=frames, out=path,
                      settings=settings, threads=args.threads, progress=show_progress(args))
        quant = built.report.get("quantization", {})
        report["exports"]["openvino-int8"] = {"format": "openvino", "precision": "int8", "path": str(path),
                                              "quantization": quant}
        _log_quantization(quant, args, calibration, frames, log)
        runtimes["openvino-int8"] = built.runtime
    if "onnx" in formats:
        path = out / f"{name}_int8.onnx"
        log(f"quantizing ONNX Runtime int8 (QDQ, {len(calibration)} images) -> {Path(args.out) / path.name}")
        built = build(out / f"{name}.onnx", "onnxruntime", "int8", calibration=calibration, out=path,
                      settings=settings, threads=args.threads)
        report["exports"]["onnx-int8"] = {"format": "onnx", "precision": "int8", "path": str(path)}
        runtimes["onnxruntime-int8"] = built.runtime
    return runtimes


def _accuracy(deploy, out: Path, name: str, formats: list[str], args: argparse.Namespace, ds, int8_runtimes: dict,
              log) -> dict:
    """mIoU of PyTorch fp32, every fp32/bf16 export and the int8 runtimes on ``ds``; prints the table."""
    from gcnet.deploy.pipeline import build, compare_accuracy

    evaluated = {"torch-fp32": build(deploy, "torch", threads=args.threads).runtime}
    if "onnx" in formats and not args.postprocess:
        evaluated["onnxruntime-fp32"] = build(out / f"{name}.onnx", "onnxruntime", threads=args.threads).runtime
    if "openvino" in formats:
        for precision in ("fp32", "bf16"):
            evaluated[f"openvino-{precision}"] = build(out / f"{name}.xml", "openvino", precision,
                                                       threads=args.threads).runtime
    evaluated.update(int8_runtimes)
    log(f"evaluating {', '.join(evaluated)} on {args.eval_dataset}:{args.eval_split} ...")
    acc = compare_accuracy(evaluated, ds, reference="torch-fp32", limit=args.eval_limit,
                           progress=show_progress(args))
    print(f"{'runtime':<20}{'mIoU':>8}{'aAcc':>8}{'delta mIoU':>12}")
    for k, v in acc["results"].items():
        print(f"{k:<20}{v['mIoU']:>8.2f}{v['aAcc']:>8.2f}{v['delta_mIoU']:>+12.2f}")
    return acc


def run(args: argparse.Namespace) -> int:
    import torch

    from gcnet.deploy.export import ExportError, load_for_deploy

    formats = list(dict.fromkeys(args.format))
    _check_args(args, formats)
    if args.threads:
        torch.set_num_threads(args.threads)
    deploy = load_for_deploy(model_from_args(args))
    # the calibration and evaluation data are read before anything is exported: a wrong root fails at once
    calibration, frames, calib_report = _calibration(args) if args.precision == "int8" else (None, None, None)
    eval_set = _dataset(args.eval_dataset, args.eval_root, args.eval_split, "eval") if args.eval_dataset else None
    if eval_set is not None:
        eval_set.info.check_model_classes(deploy.num_classes)
    name = _name(args)
    out = Path(args.out)
    report: dict = {"model": deploy.config, "input_size": list(args.input_size), "exports": {}}
    settings = quant_settings(args, input_size=args.input_size, opset=args.opset, dynamic=not args.static,
                              postprocess=args.postprocess, verify=not args.no_verify, tolerance=args.tolerance)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with staging_folder(out) as stage:
        for fmt in formats:
            path = stage / f"{name}{SUFFIX[fmt]}"
            log(f"exporting {fmt} -> {out / path.name}")
            try:
                r = report["exports"][fmt] = _export(fmt, deploy, path, args, settings)
            except ExportError as exc:
                raise ExportError(f"{exc}\nnothing was written; earlier files in {out} are unchanged") from exc
            if fmt == "torch-export" and not args.static and not r["dynamic"]:
                log("  note: torch.export could not make the shapes dynamic; exported for the example size")
            if "max_abs_diff" in r:
                log(f"  verified: max |diff| to PyTorch = {r['max_abs_diff']:.3g} (relative {r['rel_diff']:.2g}, "
                    f"accepted up to --tolerance {args.tolerance:g})")
        int8_runtimes = {}
        if args.precision == "int8":
            report["calibration"] = calib_report
            int8_runtimes = _quantize(deploy, stage, name, formats, args, settings, calibration, frames, report,
                                      log)
        if eval_set is not None:
            report["accuracy"] = _accuracy(deploy, stage, name, formats, args, eval_set, int8_runtimes, log)
    report = unstaged(report, stage, out)
    for k, v in report["exports"].items():
        print(f"{k}: {v['path']}")
    if args.json is not None:
        write_json(args.json, report)
    return 0
