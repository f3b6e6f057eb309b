"""Argument types shared by the subcommands.

Each type turns a bad value into a two-line usage error (exit 2) that names the flag, e.g.
``gcnet eval: error: argument --limit: must be a positive integer (1, 2, ...); got '-1'``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from gcnet.deploy.qat import FINETUNE_ITERS, FINETUNE_MIN_FRAMES
from gcnet.errors import ConfigError

MAX_SIDE = 16384  # per side: larger inputs do not fit in memory


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


def _dir_problem(path: Path) -> str | None:
    """Why files cannot be written into folder ``path`` (created if missing), or None if they can."""
    if path.exists() and not path.is_dir():
        return f"{path} exists and is not a folder"
    if path.is_symlink() and not path.exists():
        return f"{path} is a symbolic link to a missing folder ({os.readlink(path)}); create it or give another path"
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot create folder {path}: {existing} is a file"
    try:  # a real probe: permission bits do not tell for root, read-only mounts or /proc
        tempfile.TemporaryDirectory(dir=existing, prefix=".gcnet-probe-").cleanup()
    except OSError:
        return f"{existing} is not writable" if existing == path else f"cannot create {path}: {existing} is not writable"
    return None


def _file_problem(path: Path) -> str | None:
    """Why file ``path`` cannot be written (its folder created if missing), or None if it can."""
    if path.is_dir():
        return f"{path} is a folder; give a file name"
    problem = _dir_problem(path.parent)
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
    problem = _dir_problem(Path(path).expanduser())
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


def check_writable_file(path: str | os.PathLike, what: str) -> Path:
    """Check before any work that file ``path`` can be written (not a folder, its folder writable);
    raises ConfigError naming ``what`` (e.g. ``--json``)."""
    problem = _file_problem(Path(path).expanduser())
    if problem:
        raise ConfigError(f"{what}: {problem}")
    return Path(path).expanduser()


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


def add_quant_args(group, num_calib_default: int | None, num_calib_help: str) -> None:
    """The int8 calibration and quantization flags, shared by ``gcnet export`` and ``gcnet bench``."""
    group.add_argument("--calib-dataset", metavar="KIND", help="calibration dataset kind: cityscapes, camvid, voc, folder")
    group.add_argument("--calib-root", metavar="DIR", help="calibration dataset root")
    group.add_argument("--calib-split", default="train", metavar="SPLIT", help="calibration split (default: %(default)s)")
    group.add_argument("--num-calib", type=positive_int, default=num_calib_default, metavar="N",
                       help=num_calib_help)
    group.add_argument("--finetune-iters", type=non_negative_int, default=FINETUNE_ITERS, metavar="N",
                       help="OpenVINO int8 from a checkpoint: fine-tune the fake-quantized model N steps to "
                            "reproduce the fp32 model's logits on crops of three quarters of the frames of the "
                            "calibration split or folder, keeping the snapshot closest to fp32 on the other quarter "
                            f"(no labels needed; at least {FINETUNE_MIN_FRAMES} frames, else "
                            "post-training quantization is used; about 6 minutes for GCNet-S on 2 cores; "
                            "default: %(default)s); 0: post-training quantization only, tuned by the three flags below")
    group.add_argument("--quant-preset", choices=("auto", "mixed", "performance"), default="auto",
                       help="OpenVINO int8: performance = symmetric activations (NNCF's default), mixed = "
                            "asymmetric u8; auto (default): mixed only where it matches fp32 clearly better "
                            "on calibration images held out from calibration (the better one differs per model)")
    group.add_argument("--bias-correction", choices=("auto", "fast", "full"), default="fast",
                       help="OpenVINO int8: NNCF's fast (default) or full per-layer bias correction, or auto: "
                            "like --quant-preset auto, each candidate is quantized on 3/4 of the calibration "
                            "images and the one whose labels match fp32 best on the other 1/4 is kept")
    group.add_argument("--full-bias-correction", dest="bias_correction", action="store_const", const="full",
                       help="= --bias-correction full")
    group.add_argument("--float-convs", type=auto_or_count, default="auto", metavar="auto|N",
                       help="OpenVINO int8: leave the N convolutions most sensitive to int8 in float (each is "
                            "quantized alone on 3/4 of the calibration images and its error measured on the "
                            "other 1/4); auto (default): those whose error alone is at least a quarter of the "
                            "whole int8 model's, at most 4; 0: quantize every convolution")


def check_quant_args(args) -> None:
    """The post-training flags of :func:`add_quant_args` only apply without a fine-tune."""
    set_ = [flag for flag, value, default in (("--quant-preset", args.quant_preset, "auto"),
                                              ("--bias-correction", args.bias_correction, "fast"),
                                              ("--float-convs", args.float_convs, "auto")) if value != default]
    if set_ and args.finetune_iters:
        raise ConfigError(f"{', '.join(set_)} tune post-training quantization; add --finetune-iters 0 to use it "
                          "(by default OpenVINO int8 is fine-tuned instead)")


def add_eval_args(group, what: str) -> None:
    """The ``--eval-*`` flags (an mIoU measurement per model form), shared by ``gcnet export`` and ``gcnet bench``."""
    group.add_argument("--eval-dataset", metavar="KIND", help=what)
    group.add_argument("--eval-root", metavar="DIR", help="evaluation dataset root")
    group.add_argument("--eval-split", default="val", metavar="SPLIT", help="evaluation split (default: %(default)s)")
    group.add_argument("--eval-limit", type=positive_int, metavar="N", help="evaluate on the first N images only")
