"""``gcnet predict``: segment images, folders (recursive) and videos."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gcnet.cli.args import add_model_args, check_writable_dir, fraction, model_from_args, parse_size, positive_int, show_progress
from gcnet.errors import ConfigError


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--runtime", choices=("torch", "onnxruntime", "openvino"), default=None,
                   help="inference engine (default: torch for gcnet checkpoints, onnxruntime for an .onnx file, "
                        "openvino for an .xml IR; an .onnx file also runs on openvino)")
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16", "int8"), default="fp32",
                   help="fp32; bf16 (torch autocast / OpenVINO); fp16 (torch on CUDA; on the CPU it is emulated, "
                        "slower than fp32, and shows the CUDA fp16 model's labels); int8 needs an "
                        "already-quantized model from `gcnet export --precision int8`")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="torch runtime device")
    g.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: all usable cores)")


def runtime_from_args(args: argparse.Namespace, source):
    """The runtime for ``gcnet predict``: ``--runtime``, by default the one the source's file type
    asks for (an .xml IR openvino, an .onnx file onnxruntime, else torch); ``--precision``, ``--device``,
    ``--threads``. A runtime that cannot run the source is refused by the pipeline, naming both."""
    import torch

    from gcnet.deploy.pipeline import build, default_runtime

    kind = args.runtime or default_runtime(source)
    device = args.device
    if device == "auto":
        device = "cuda" if (kind == "torch" and torch.cuda.is_available()) else "cpu"
    if args.precision == "fp16" and kind == "torch" and device == "cpu":
        print("note: --precision fp16 on the CPU is emulated: slower than fp32 (it shows the labels of the CUDA "
              "fp16 model); use fp32 or bf16 for speed", file=sys.stderr)
    if args.precision == "int8" and not isinstance(source, Path):
        raise ConfigError("--precision int8 needs a quantized model: run `gcnet export --precision int8 ...` "
                          "and pass the .xml/.onnx it writes as --checkpoint")
    return build(source, kind, args.precision, threads=args.threads, device=device).runtime


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="segment images, folders and videos (label PNGs, overlays, annotated video)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Segment images, folders (searched recursively) and video files.

For every image <stem> it writes, under --out (folder inputs keep their sub-folder layout):
  <stem>_label.png     class-index PNG (palette mode: pixel value = class index; viewers show
                       the dataset colours; 16-bit greyscale above 256 classes)
  <stem>_overlay.png   the image with the coloured prediction blended over it (--alpha)
For every video (.mp4 .avi .mov .mkv .webm ...):
  <stem>_overlay.mp4   every frame with its overlay and the measured FPS (frames labelled per second) on it

Pre-processing: RGB, normalised with the training mean/std, optionally resized to --input-size;
the 1/8-resolution logits are upsampled bilinearly to the input size and argmax'ed.

Inputs that would write the same names (x/a.png and y/a.png) write them under sub-folders named
after their input (x/a_label.png, y/a_label.png); stderr says so.

Failures: an unreadable, corrupt or truncated input is reported by name on stderr and skipped;
the other inputs are still processed. A video that ends before the frame count its file announces
is reported with both counts, and its partial annotated video is not kept. The exit status is 0
when every input succeeded, 1 when any input was skipped (a summary lists them), 2 for usage
errors (bad model, bad option, an --out that is a file or not writable).
Nothing already written is lost: every output is written to a temporary file and renamed into
place only when complete, so a failed or interrupted input never truncates or replaces an
earlier output.""",
        epilog="""\
examples:
  gcnet predict street.jpg --checkpoint gcnet-s_cityscapes       # the authors' model, downloaded once
  gcnet predict photos/ --checkpoint runs/camvid/best.pth --out pred/
  gcnet predict street.mp4 --model gcnet-s --weights gcnet-s_cityscapes.pth --num-classes 19
  gcnet predict img.png --checkpoint gcnet-s_int8.xml --precision int8 --dataset camvid""")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, video files or folders")
    p.add_argument("--out", "-o", default="predictions", metavar="DIR", help="output folder (default: %(default)s)")
    add_model_args(p)
    add_runtime_args(p)
    p.add_argument("--dataset", metavar="NAME",
                   help="palette/class names: cityscapes, camvid, voc, synthetic (default: those stored with "
                        "the checkpoint or known for named weights, else a generic palette)")
    p.add_argument("--input-size", type=parse_size, metavar="HxW",
                   help="resize inputs to HxW before the model (outputs stay at the original size); "
                        "default: native resolution")
    p.add_argument("--alpha", type=fraction, default=0.5, help="overlay opacity of the colours (default: %(default)s)")
    p.add_argument("--no-label", action="store_true", help="do not write *_label.png")
    p.add_argument("--no-overlay", action="store_true", help="do not write *_overlay.png")
    p.add_argument("--no-recursive", action="store_true", help="do not descend into sub-folders")
    p.add_argument("--max-frames", type=positive_int, metavar="N", help="process at most N frames per video")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first unreadable input (exit 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _check_out_apart_from_inputs(out: Path, inputs: list[Path]) -> None:
    """``--out`` must not be or hold an input folder (one inside it is left out of the scan), nor be the folder
    of an input file: the outputs would mix with the inputs (and replace files named like them, e.g. a label
    kept by its image)."""
    resolved = out.resolve()
    for given in inputs:
        folder = given if given.is_dir() else given.parent
        where = folder.resolve()
        if resolved == where or (given.is_dir() and resolved in where.parents):
            what = f"the input folder {folder}" if given.is_dir() else f"the folder of the input {given}"
            raise ConfigError(f"--out {out}: shares {what}: the outputs would mix with the inputs (and could replace "
                              f"files named like them); choose another --out, e.g. {folder / 'predictions'}")


def run(args: argparse.Namespace) -> int:
    from gcnet.deploy.predict import (
        VIDEO_EXTENSIONS,
        InputError,
        Predictor,
        check_outputs,
        collect_inputs,
        predict_paths,
    )
    from gcnet.errors import DatasetError

    check_writable_dir(args.out, "--out")
    if args.no_label and args.no_overlay and not any(
            Path(i).suffix.lower() in VIDEO_EXTENSIONS for i in args.inputs):
        raise ConfigError("--no-label and --no-overlay together leave nothing to write")
    _check_out_apart_from_inputs(Path(args.out), [Path(i) for i in args.inputs])
    items, missing = collect_inputs(args.inputs, recursive=not args.no_recursive, exclude=[args.out])
    if not items:
        reasons = "; ".join(f"{path}: {reason}" for path, reason in missing)
        raise ConfigError(f"no images or videos to predict ({reasons}); give image or video files, or folders "
                          "holding them")
    check_outputs(items, args.out, save_label=not args.no_label, save_overlay=not args.no_overlay)  # before the model
    source = model_from_args(args, allow_exported=True)
    runtime = runtime_from_args(args, source)
    info = _class_info(args, source, _num_classes(source, runtime))
    predictor = Predictor(runtime, input_size=args.input_size)
    variant = getattr(source, "config", {}).get("name") if not isinstance(source, Path) else None
    pretty = variant.replace("gcnet", "GCNet").replace("-s", "-S").replace("-m", "-M").replace("-l", "-L") \
        if variant else "GCNet"
    label_text = f"{pretty} {runtime.name}"
    try:
        summary = predict_paths(predictor, args.inputs, args.out, info, recursive=not args.no_recursive,
                                save_label=not args.no_label, save_overlay=not args.no_overlay, alpha=args.alpha,
                                max_frames=args.max_frames, progress=show_progress(args),
                                fail_fast=args.fail_fast, label_text=label_text)
    except (InputError, DatasetError) as exc:
        print(f"gcnet predict: stopped (--fail-fast): {exc}", file=sys.stderr)
        return 1
    total = summary.processed + len(summary.failed)  # every input found or named, whether it succeeded or not
    done = f"{summary.processed} of {total}" if summary.processed < total else str(total)
    print(f"wrote {len(summary.written)} file(s) for {done} input(s) to {args.out}")
    if summary.images_per_s:
        print(f"{summary.images} image(s) at {summary.images_per_s:.2f} images/s (read, predict and write overlapped)")
    if summary.failed:
        print(f"gcnet predict: {len(summary.failed)} input(s) failed and were skipped:", file=sys.stderr)
        for path, reason in summary.failed:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def _class_info(args: argparse.Namespace, source, num_classes: int):
    """Class names and palette: --dataset, else those stored with the checkpoint, else generic (said so)."""
    from gcnet.checkpoint import checkpoint_dataset_info
    from gcnet.data.metadata import default_info

    spec = args.checkpoint or args.weights
    stored = checkpoint_dataset_info(spec) if spec and not args.dataset and not isinstance(source, Path) else None
    if not args.dataset and stored is None:
        print(f"note: {spec or 'the model'} carries no class names or palette: using a generic palette and "
              "class_<i> names (--dataset NAME for a dataset's)", file=sys.stderr)
    return default_info(num_classes, args.dataset or stored)


def _num_classes(source, runtime) -> int:
    if not isinstance(source, Path):
        return int(source.num_classes)
    if runtime.kind == "onnxruntime":  # an .onnx file may also run on OpenVINO (--runtime openvino)
        shape = list(runtime.session.get_outputs()[0].shape)
        dim = shape[1] if len(shape) == 4 else None
    else:
        shape = runtime.model.outputs[0].get_partial_shape()
        dim = shape[1].get_length() if len(shape) == 4 and shape[1].is_static else None
    if len(shape) != 4:
        raise ConfigError(f"{source}: the model outputs labels, not logits (exported with --postprocess?); "
                          "export it again without --postprocess for `gcnet predict`")
    if not isinstance(dim, int):
        raise ConfigError(f"{source}: cannot tell the number of classes from the model's output shape")
    return dim
