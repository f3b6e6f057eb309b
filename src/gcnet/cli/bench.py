"""``gcnet bench``: latency / FPS / GFLOP/s / memory / accuracy of every form and runtime."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from gcnet.cli.args import (
    JSON_HELP,
    add_eval_args,
    add_quant_args,
    non_negative_float,
    parse_size,
    positive_float,
    positive_int,
)
from gcnet.errors import ConfigError


def _forms_help() -> str:
    from gcnet.deploy.bench import FORMS

    return "\n".join(f"  {f.name:<24}{f.description}{'' if f.default else ' [not in the default set]'}"
                     for f in FORMS.values())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="benchmark training vs reparameterized form vs each runtime and precision",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"""\
Benchmark a GCNet on this machine: the training form, the reparameterized (deploy) form and every
runtime/precision, at one input size and batch (default gcnet-s, 1024x2048, batch 1).

Per form: latency after warm-up (median, IQR, min, max over --iters timed runs), FPS, params,
MACs, achieved GFLOP/s (= 2 x MACs / median latency; for bf16/int8 this is the effective rate of
the fp32 network's work), speed-up over torch-fp32 (reparameterized, eager fp32, NCHW; about as
fast as the authors' own deploy form, torch-authors-fp32), the difference of the 1/8 logits to
the fp32 reference (training form, eager fp32): max abs difference and % of equal argmax labels,
and peak memory.

Timing: one thread pool per form, --threads threads (default: all usable cores); at least --iters
timed runs and at least --min-time seconds of them; on CUDA the input is already on the GPU, every
iteration ends with torch.cuda.synchronize() and cuDNN autotuning (cudnn.benchmark) is on. Each
form runs in a fresh worker process (unless --in-process), so forms do not disturb each other and
memory is per form: "mem MB" is the worker's peak resident memory (VmHWM) minus its resident
memory after importing its runtime library, i.e. what loading, compiling and running the form
costs; on CUDA it is torch.cuda.max_memory_allocated.

Weights: --checkpoint (or --model/--weights); otherwise random weights with BatchNorm statistics
re-estimated on random data (speed does not depend on the weights). int8 forms are calibrated on
--calib-* data or, without it, on random inputs (fine for speed, not for accuracy). --eval-* adds
mIoU per form and its change against the fp32 reference.

forms (--forms; default: every form marked default whose runtime is installed, CUDA forms when
CUDA is available):
{_forms_help()}""",
        epilog="""\
examples:
  gcnet bench                                   # gcnet-s, 1024x2048, every CPU runtime
  gcnet bench --quick --json bench.json         # tiny size, few iterations (smoke test)
  gcnet bench --device cuda --json gpu.json     # every CUDA form (fp32, fp16/bf16, graphs, compile)
  gcnet bench --forms torch-fp32 openvino-int8 --checkpoint camvid.pth \\
      --calib-dataset camvid --calib-root data/camvid --eval-dataset camvid --eval-root data/camvid""")
    from gcnet.cli.args import add_model_args
    from gcnet.deploy.bench import QUICK, RANDOM_CALIB_INPUTS, TIMING
    from gcnet.deploy.export import CALIB_IMAGES

    p.add_argument("variant", nargs="?", default=None, metavar="MODEL",
                   help="variant for random weights: gcnet-s (default), gcnet-m, gcnet-l")
    add_model_args(p, allow_exported=False, required=False)
    p.add_argument("--size", type=parse_size, default=None, metavar="HxW", dest="input_size",
                   help="input size (default: {}x{})".format(*TIMING["input_size"]))
    p.add_argument("--batch", type=positive_int, default=1, help="batch size (default: %(default)s)")
    p.add_argument("--forms", nargs="+", metavar="FORM", help="forms to run (see above); 'all' = every form")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="which default forms: CPU, CUDA, or both when CUDA is available (default: auto)")
    p.add_argument("--warmup", type=positive_int, default=None, help=f"warm-up runs per form (default: {TIMING['warmup']})")
    p.add_argument("--iters", type=positive_int, default=None, help=f"timed runs per form, at least (default: {TIMING['iters']})")
    p.add_argument("--min-time", type=non_negative_float, default=None, metavar="SEC",
                   help="time each form for at least SEC seconds: more runs than --iters for fast forms, "
                        f"e.g. on a GPU (default: {TIMING['min_time']}; {QUICK['min_time']} with --quick)")
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: all usable cores)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: {}x{}, {} warm-up, {} timed runs (explicit options still win)".format(
                       *QUICK["input_size"], QUICK["warmup"], QUICK["iters"]))
    p.add_argument("--in-process", action="store_true", help="run every form in this process (no memory column)")
    add_quant_args(p, None, f"calibration images (default: {CALIB_IMAGES} from a dataset, {RANDOM_CALIB_INPUTS} "
                            "random inputs otherwise)")
    add_eval_args(p, "also measure mIoU per form on this dataset kind")
    p.add_argument("--keep-artifacts", metavar="DIR",
                   help="keep the exported/quantized models in DIR (a new or empty folder, or one an earlier "
                        "gcnet bench kept them in: their files are replaced)")
    p.add_argument("--timeout", type=positive_float, default=1800, help="seconds allowed per form (default: %(default)s)")
    p.add_argument("--end-to-end", nargs="?", type=positive_int, const=30, default=0, metavar="FRAMES",
                   help="also time a video frame in -> labels (+ annotated frame) out per CPU form: decode, "
                        "pre, model, post, overlay, encode, and the FPS of both pipelines (default: 30 frames)")
    p.add_argument("--json", metavar="FILE", help=JSON_HELP)
    p.add_argument("--no-progress", action="store_true", help="no per-form progress lines on stderr")
    p.set_defaults(func=run)


def _checkpoint(args: argparse.Namespace, scratch: str) -> str | None:
    """The checkpoint the workers load: --checkpoint (checked now), or --model/--weights saved in ``scratch``."""
    import gcnet
    from gcnet.cli.args import model_from_args

    if not (args.checkpoint or args.weights):
        return None
    model = model_from_args(args)  # validates the files early
    if args.checkpoint:
        return args.checkpoint
    return str(gcnet.save_checkpoint(Path(scratch) / "w.pt", model))


def _forms(args: argparse.Namespace) -> list[str]:
    import torch

    from gcnet.deploy.bench import FORMS, default_forms

    if args.forms == ["all"]:
        forms = [f for f in FORMS if FORMS[f].device == "cpu" or args.device != "cpu"]
        if not torch.cuda.is_available():
            forms = [f for f in forms if FORMS[f].device == "cpu"]
    else:
        forms = args.forms or default_forms(args.device)
    if not forms:
        raise ConfigError("no forms to run")
    return forms


def _datasets(args: argparse.Namespace) -> tuple[dict | None, dict | None]:
    """(calibration, evaluation) dataset specs of the run, or None; each found on disk before any work starts
    (a missing root is said before a --keep-artifacts folder is made)."""
    from gcnet.data.datasets import dataset_from_settings

    calib = ev = None
    if args.calib_dataset:
        if not args.calib_root:
            raise ConfigError("--calib-dataset needs --calib-root")
        calib = {"kind": args.calib_dataset, "root": args.calib_root, "split": args.calib_split,
                 "num": args.num_calib}
    if args.eval_dataset:
        if not args.eval_root:
            raise ConfigError("--eval-dataset needs --eval-root")
        ev = {"kind": args.eval_dataset, "root": args.eval_root, "split": args.eval_split, "limit": args.eval_limit}
    for spec in (calib, ev):
        if spec:
            dataset_from_settings(spec["kind"], spec["root"], spec["split"])
    return calib, ev


def run(args: argparse.Namespace) -> int:
    import gcnet
    from gcnet.cli.args import check_json_arg, check_own_dir, check_quant_args, quant_settings, write_json
    from gcnet.deploy.bench import ARTIFACTS_MARKER, QUICK, TIMING, command_line, format_report, run_benchmark

    check_quant_args(args)
    check_json_arg(args.json, [("the checkpoint", args.checkpoint), ("the weights", args.weights),
                               ("the calibration data set root", args.calib_root),
                               ("the evaluation data set root", args.eval_root),
                               ("the --keep-artifacts folder", args.keep_artifacts)])
    if args.keep_artifacts:
        check_own_dir(args.keep_artifacts, "--keep-artifacts", "gcnet bench", ARTIFACTS_MARKER)
    calib, ev = _datasets(args)
    if args.variant and (args.model or args.checkpoint):
        raise ConfigError("give the variant either positionally or with --model/--checkpoint, not both")
    variant = (args.variant or args.model or "gcnet-s").lower()
    if variant not in gcnet.list_models():
        raise ConfigError(f"unknown model {variant!r}; choose from {', '.join(gcnet.list_models())}")
    timing = {key: given if (given := getattr(args, key)) is not None else default  # explicit flags win
              for key, default in (QUICK if args.quick else TIMING).items()}
    forms = _forms(args)
    with tempfile.TemporaryDirectory(prefix="gcnet-bench-w-") as scratch:
        report = run_benchmark(variant, args.num_classes or 19, checkpoint=_checkpoint(args, scratch), **timing,
                               batch=args.batch, forms=forms,
                               threads=args.threads, isolate=not args.in_process, calib=calib,
                               calib_num=args.num_calib, quant=quant_settings(args),
                               eval=ev, artifacts_dir=args.keep_artifacts, timeout=args.timeout,
                               end_to_end=args.end_to_end, progress=not args.no_progress,
                               command=command_line())
    print(format_report(report))
    if args.json is not None:
        write_json(args.json, report)
    failed = [r["form"] for r in report["results"] if "error" in r]
    if failed:
        print(f"gcnet bench: {len(failed)} form(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
