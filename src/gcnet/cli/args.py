"""Argument types shared by the subcommands.

Each type turns a bad value into a two-line usage error (exit 2) that names the flag, e.g.
``gcnet eval: error: argument --limit: must be a positive integer (1, 2, ...); got '-1'``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gcnet.deploy.export import FAST_BIAS_CORRECTION
from gcnet.deploy.pipeline import ExportSettings
from gcnet.deploy.qat import FINETUNE_MIN_FRAMES
from gcnet.errors import ConfigError
from gcnet.fileio import folder_problem, write_text

MAX_SIDE = 16384  # per side: larger inputs do not fit in memory
# (description, path) pairs of a command's own files and folders, which an output file must not be nor be inside
Protected = Iterable[tuple[str, str | os.PathLike | None]]


def parse_size(text: str) -> tuple[int, int]:
    """'1024x2048' (HxW) or '512' (square) -> (H, W)."""
    try:
        parts = [int(p) for p in text.lower().replace(",", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1 or max(parts) > MAX_SIDE:
        raise argparse.ArgumentTypeError(f"size must be HxW or N (integers from 1 to {MAX_SIDE}), e.g. 1024x2048 or "
                                         f"512; got {text!r}")
    return parts[0], parts[1]


def _int(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, sizes, thread numbers, limits)."""
    return _int(text, 1, "a positive integer (1, 2, ...)")


def non_negative_int(text: str) -> int:
    """An integer >= 0 (e.g. DataLoader workers, where 0 means 'in this process')."""
    return _int(text, 0, "0 or a positive integer")


def _float(text: str, ok, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not ok(value):  # NaN fails every comparison
        raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (durations, tolerances)."""
    return _float(text, lambda v: 0 < v < float("inf"), "a positive number")


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (durations where 0 means 'no minimum')."""
    return _float(text, lambda v: 0 <= v < float("inf"), "0 or a positive number")


def fraction(text: str) -> float:
    """A number in [0, 1] (opacities, ratios)."""
    return _float(text, lambda v: 0 <= v <= 1, "a number from 0 to 1")


def _file_problem(path: Path) -> str | None:
    """Why file ``path`` cannot be written (its folder created if missing), or None if it can."""
    if path.is_dir():
        return f"{path} is a folder; give a file name"
    problem = folder_problem(path.parent)
    if problem:
        return f"cannot write {path}: {problem}"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path} is not writable"
    return None


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars unless ``--no-progress`` or stderr is not a terminal (a log file gets no bar redraws)."""
    return not args.no_progress and sys.stderr.isatty()


def check_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check before any work that files can be written into folder ``path`` (created later if missing);
    raises ConfigError naming ``what`` (e.g. ``--out``). Nothing is left behind here."""
    problem = folder_problem(_given_path(path, what))
    if problem:
        raise ConfigError(f"{what}: {problem}")
    return Path(path).expanduser()


def check_own_dir(path: str | os.PathLike, flag: str, who: str, marker: str,
                  entries: frozenset[str] | None = None) -> Path:
    """Check, like :func:`check_writable_dir`, a folder whose files a command replaces: it must be missing,
    empty, or marked with the file ``marker`` by an earlier run of that command (and hold only ``entries``
    where given), so the command never touches a folder of the user's. ``who`` names the command."""
    path = check_writable_dir(path, flag)
    names = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    links = [n for n in names if (path / n).is_symlink()]
    if links or (marker in names and not (path / marker).is_file()):
        what = f"symbolic links ({_listing(links)})" if links else f"a {marker} that is not a file"
        raise ConfigError(f"{flag} {path} holds {what}, which {who} does not write; choose an empty or new folder")
    foreign = [n for n in names if n != marker and entries is not None and n not in entries]
    if names and (marker not in names or foreign):
        what = (f"holds files {who} did not write ({_listing(foreign)})" if marker in names else
                f"is not empty ({_listing(names)}) and has no {marker} mark of an earlier run of {who}")
        raise ConfigError(f"{flag} {path} {what}; {who} replaces files there: choose an empty or new folder")
    return path


def _listing(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _given_path(path: str | os.PathLike, what: str) -> Path:
    """``path`` with ``~`` expanded; an empty one is refused (``Path("")`` would be the current folder)."""
    if not str(path).strip():
        raise ConfigError(f"{what}: the path is empty; give a file or folder name")
    return Path(path).expanduser()


def _protected_problem(path: Path, protected: Protected) -> str | None:
    """Why writing ``path`` would damage one of ``protected`` (description, file or folder), or None."""
    target = path.resolve()
    for what, other in protected:
        if not other:
            continue
        resolved = Path(other).expanduser().resolve()
        if target == resolved:
            return f"{path} is {what}; writing there would replace it: give another file"
        if resolved in target.parents:
            return f"{path} is inside {what} {other}; give a file outside it"
    return None


def check_writable_file(path: str | os.PathLike, what: str,
                        protected: Protected = ()) -> Path:
    """Check before any work that file ``path`` can be written (not a folder, its folder writable) and is
    none of the command's own files or folders ``protected`` (pairs of a description such as "the checkpoint"
    and a path; None is skipped), nor inside one; raises ConfigError naming ``what`` (e.g. ``--json``)."""
    path = _given_path(path, what)
    problem = _file_problem(path) or _protected_problem(path, protected)
    if problem:
        raise ConfigError(f"{what}: {problem}")
    return path


JSON_HELP = "also write a JSON report to FILE ('-': to stdout, after the text)"


def check_json_arg(path: str | None, protected: Protected = ()) -> None:
    """Check ``--json FILE`` before any work, like :func:`check_writable_file`; '-' (stdout) needs no check."""
    if path is not None and path != "-":
        check_writable_file(path, "--json", protected)


def write_json(path: str, obj: Any) -> None:
    """Write ``--json``'s report: to stdout for '-', else atomically to the file, saying where."""
    text = json.dumps(obj, indent=2, default=str)
    if path == "-":
        print(text)
    else:
        write_text(path, text + "\n")
        print(f"report written to {path}")


def auto_or_count(text: str) -> int | str:
    """argparse type: ``auto`` or a count >= 0."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected auto or a count >= 0, got {text!r}")
    return value


# The OpenVINO quantization flags' defaults, by their argparse names: ExportSettings' defaults
QUANT_FLAG_DEFAULTS = ExportSettings().quant_flags()
# The calibration data flags' defaults (--num-calib's is the command's)
CALIB_FLAG_DEFAULTS = {"calib_dataset": None, "calib_root": None, "calib_split": "train"}


def given_flags(args: argparse.Namespace, defaults: dict[str, Any]) -> list[str]:
    """The flags among ``defaults`` (argparse name -> default) given another value, as ``--flag-name``."""
    return ["--" + key.replace("_", "-") for key, default in defaults.items() if getattr(args, key) != default]


def add_quant_args(group, num_calib_default: int | None, num_calib_help: str) -> None:
    """The int8 calibration and quantization flags, shared by ``gcnet export`` and ``gcnet bench``; their
    defaults are :class:`~gcnet.deploy.pipeline.ExportSettings`'s (:func:`quant_settings` reads them back)."""
    defaults = QUANT_FLAG_DEFAULTS
    group.add_argument("--calib-dataset", metavar="KIND", help="calibration dataset kind: cityscapes, camvid, voc, folder")
    group.add_argument("--calib-root", metavar="DIR", help="calibration dataset root")
    group.add_argument("--calib-split", default=CALIB_FLAG_DEFAULTS["calib_split"], metavar="SPLIT",
                       help="calibration split (default: %(default)s)")
    group.add_argument("--num-calib", type=positive_int, default=num_calib_default, metavar="N",
                       help=num_calib_help)
    group.add_argument("--finetune-iters", type=non_negative_int, default=defaults["finetune_iters"], metavar="N",
                       help="OpenVINO int8 from a checkpoint: fine-tune the fake-quantized model N steps to "
                            "reproduce the fp32 model's logits on crops of three quarters of the frames of the "
                            "calibration split or folder, keeping the snapshot closest to fp32 on the other quarter "
                            f"(no labels needed; at least {FINETUNE_MIN_FRAMES} frames, else "
                            "post-training quantization is used; about 6 minutes for GCNet-S on 2 cores; "
                            "default: %(default)s); 0: post-training quantization only, tuned by the three flags below")
    group.add_argument("--quant-preset", choices=("auto", "mixed", "performance"),
                       default=defaults["quant_preset"],
                       help="OpenVINO int8: performance = symmetric activations (NNCF's default), mixed = "
                            "asymmetric u8; auto (default): mixed only where it matches fp32 clearly better "
                            "on calibration images held out from calibration (the better one differs per model)")
    group.add_argument("--bias-correction", choices=tuple(FAST_BIAS_CORRECTION),
                       default=defaults["bias_correction"],
                       help="OpenVINO int8: NNCF's fast (default) or full per-layer bias correction, or auto: "
                            "like --quant-preset auto, each candidate is quantized on 3/4 of the calibration "
                            "images and the one whose labels match fp32 best on the other 1/4 is kept")
    group.add_argument("--full-bias-correction", dest="bias_correction", action="store_const", const="full",
                       help="= --bias-correction full")
    group.add_argument("--float-convs", type=auto_or_count, default=defaults["float_convs"], metavar="auto|N",
                       help="OpenVINO int8: leave the N convolutions most sensitive to int8 in float (each is "
                            "quantized alone on 3/4 of the calibration images and its error measured on the "
                            "other 1/4); auto (default): those whose error alone is at least a quarter of the "
                            "whole int8 model's, at most 4; 0: quantize every convolution")


def check_quant_args(args: argparse.Namespace) -> None:
    """The post-training flags of :func:`add_quant_args` only apply without a fine-tune."""
    set_ = given_flags(args, {k: v for k, v in QUANT_FLAG_DEFAULTS.items() if k != "finetune_iters"})
    if set_ and args.finetune_iters:
        raise ConfigError(f"{', '.join(set_)} tune post-training quantization; add --finetune-iters 0 to use it "
                          "(by default OpenVINO int8 is fine-tuned instead)")


def quant_settings(args: argparse.Namespace, **fields) -> ExportSettings:
    """The :class:`~gcnet.deploy.pipeline.ExportSettings` of the :func:`add_quant_args` flags, and ``fields``."""
    return ExportSettings(preset=args.quant_preset, fast_bias_correction=FAST_BIAS_CORRECTION[args.bias_correction],
                          float_convs=args.float_convs, finetune_iters=args.finetune_iters, **fields)


def add_eval_args(group, what: str) -> None:
    """The ``--eval-*`` flags (an mIoU measurement per model form), shared by ``gcnet export`` and ``gcnet bench``."""
    group.add_argument("--eval-dataset", metavar="KIND", help=what)
    group.add_argument("--eval-root", metavar="DIR", help="evaluation dataset root")
    group.add_argument("--eval-split", default="val", metavar="SPLIT", help="evaluation split (default: %(default)s)")
    group.add_argument("--eval-limit", type=positive_int, metavar="N", help="evaluate on the first N images only")


def _sources_help(allow_exported: bool) -> str:
    exported = ", or a file from `gcnet export`: .onnx or OpenVINO .xml" if allow_exported else ""
    return ("Model: either --checkpoint FILE (a gcnet checkpoint .pt/.pth from `gcnet train`, named weights such "
            f"as gcnet-s_cityscapes (`gcnet weights`), a URL, a save_pretrained folder{exported}), or --model "
            "VARIANT --weights FILE --num-classes K for the authors' released weights (mmengine .pth, training or "
            "deploy form).")


def add_model_args(p: argparse.ArgumentParser, *, allow_exported: bool = True, required: bool = True) -> None:
    g = p.add_argument_group("model", _sources_help(allow_exported) if required else
                             _sources_help(allow_exported) + " Without either, a randomly initialised model is used.")
    g.add_argument("--checkpoint", "-c", metavar="FILE",
                   help="gcnet checkpoint" + (" or exported .onnx/.xml model" if allow_exported else ""))
    g.add_argument("--model", "-m", metavar="VARIANT", help="gcnet-s, gcnet-m or gcnet-l (with --weights)")
    g.add_argument("--weights", "-w", metavar="FILE", help="weights for --model (authors' or ours)")
    g.add_argument("--num-classes", type=positive_int, metavar="K", help="classes of --model (default 19)")


def model_from_args(args: argparse.Namespace, *, required: bool = True, allow_exported: bool = False):
    """The model (torch module) or exported file path selected by the model arguments."""
    import gcnet
    from gcnet.checkpoint import model_from_weights, resolve_checkpoint

    if args.checkpoint and (args.model or args.weights):
        raise ConfigError("give either --checkpoint or --model/--weights, not both")
    if args.checkpoint and args.num_classes:
        raise ConfigError("--num-classes goes with --model; a --checkpoint carries its own classes")
    if args.checkpoint:
        path = resolve_checkpoint(args.checkpoint)  # a file, named weights or a URL (downloaded once)
        if path.suffix.lower() in (".onnx", ".xml"):
            if not allow_exported:
                raise ConfigError(f"{path}: this command needs a gcnet checkpoint, not an exported model; pass the "
                                  "checkpoint it was exported from (`gcnet predict` runs exported models)")
            return path
        return gcnet.load_model(args.checkpoint)
    if args.weights and not args.model:
        raise ConfigError("--weights needs --model VARIANT (e.g. --model gcnet-s)")
    if args.model:
        if args.model.lower() not in gcnet.list_models():
            raise ConfigError(f"unknown model {args.model!r}; choose from {', '.join(gcnet.list_models())}")
        if args.weights:  # a file, named weights or a URL; in the form they are in
            return model_from_weights(args.model.lower(), args.num_classes or 19, args.weights).eval()
        if required:
            raise ConfigError("--model needs --weights FILE (or use --checkpoint)")
        return gcnet.build_model(args.model.lower(), args.num_classes or 19).eval()
    if required:
        raise ConfigError("no model given: use --checkpoint FILE or --model VARIANT --weights FILE")
    return None
