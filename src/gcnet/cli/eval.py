"""``gcnet eval``: mIoU / per-class IoU and accuracy / aAcc of a checkpoint on a dataset."""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from typing import Any

from gcnet.cli.args import JSON_HELP, check_json_arg, non_negative_int, parse_size, positive_int, show_progress, write_json
from gcnet.data.datasets import CONFIG_KINDS
from gcnet.engine.config import MAX_SCALE
from gcnet.errors import ConfigError

EPILOG = """\
examples:
  gcnet eval runs/s_camvid/best.pth                       # dataset and settings from the run's config
  gcnet eval best.pth --dataset camvid --data-root data/camvid --split val
  gcnet eval best.pth --dataset cityscapes --data-root data/cityscapes --mode slide --crop 1024 --stride 683
  gcnet eval best.pth --dataset camvid --data-root data/camvid --scales 0.75,1.0,1.25 --flip
  gcnet eval best.pth --dataset camvid --data-root data/camvid --both-forms --json results.json
  gcnet eval gcnet_s_cityscapes.pth --model gcnet-s --num-classes 19 --dataset cityscapes --data-root data/cityscapes
  torchrun --nproc_per_node 2 -m gcnet.cli eval best.pth ...  # images split between processes

CHECKPOINT is one of ours (the model config is inside) or the authors' release (training or deploy form;
then give --model and --num-classes). Metrics are percentages: IoU = TP / (TP + FP + FN) per class,
mIoU its mean over classes present in the ground truth or prediction, Acc = per-class recall,
aAcc = overall pixel accuracy.
"""


def _scales(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        vals = ()
    if not vals or not all(0 < v <= MAX_SCALE for v in vals):  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected numbers above 0 and at most {MAX_SCALE:g}, separated by commas, "
                                         f"e.g. 0.75,1.0,1.25; got {text!r}")
    return vals


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: mIoU, per-class IoU/accuracy, aAcc (text and JSON)",
        description=textwrap.dedent("""\
            Evaluate a checkpoint on a dataset split: a per-class IoU / accuracy table, mIoU, mAcc and
            aAcc. Whole-image or sliding-window inference, optional multi-scale + flip test-time
            augmentation, in the training form or the reparameterized (deploy) form of the model, which
            give the same predictions."""),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="checkpoint file (.pth), named weights (`gcnet weights`), URL or save_pretrained folder")
    d = p.add_argument_group("data (defaults: the training config stored in our checkpoints)")
    d.add_argument("--dataset", choices=CONFIG_KINDS, help="dataset kind")
    d.add_argument("--data-root", metavar="DIR", help="dataset root folder")
    d.add_argument("--split", default=None, help="split to evaluate (default: the config's val split, else 'val')")
    d.add_argument("--info", metavar="NAME", help="class metadata for --dataset folder (e.g. camvid); default: "
                   "the folder's dataset.json / classes.txt")
    d.add_argument("--limit", type=positive_int, metavar="N", help="evaluate only the first N images (quick checks)")
    d.add_argument("--skip-data-check", action="store_true",
                   help="do not scan every image and label of the split before evaluating (the scan stops on "
                        "unreadable files, size mismatches and label values outside the classes)")
    m = p.add_argument_group("model (only for checkpoints without a config inside, e.g. the authors')")
    m.add_argument("--model", metavar="NAME", help="gcnet-s, gcnet-m or gcnet-l")
    m.add_argument("--num-classes", type=positive_int, metavar="K", help="number of classes of the checkpoint")
    i = p.add_argument_group("inference")
    i.add_argument("--mode", choices=("whole", "slide"), default=None,
                   help="whole image or overlapping sliding windows (default: the config's, else whole)")
    i.add_argument("--crop", type=parse_size, metavar="HxW", help="sliding-window size (--mode slide)")
    i.add_argument("--stride", type=parse_size, metavar="HxW", help="sliding-window stride (default 2/3 of --crop)")
    i.add_argument("--scales", type=_scales, metavar="S1,S2,..", help="test scales, e.g. 0.5,0.75,1.0,1.25,1.5")
    i.add_argument("--flip", action="store_true", default=None, help="add horizontally flipped inputs")
    i.add_argument("--reparameterize", action="store_true",
                   help="evaluate the reparameterized (deploy) form of a training-form checkpoint")
    i.add_argument("--both-forms", action="store_true",
                   help="evaluate the training form and the reparameterized form and compare them")
    i.add_argument("--float64", action="store_true",
                   help="run in float64 (slow; with --both-forms it shows the two forms' results are identical, "
                        "free of float32 rounding on near-tied pixels)")
    r = p.add_argument_group("runtime")
    r.add_argument("--batch-size", type=positive_int, default=None, help="images per forward pass (same-size images)")
    r.add_argument("--workers", type=non_negative_int, default=2, help="data loader workers")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    r.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA, or CPUs with AVX512_BF16/AMX)")
    r.add_argument("--threads", type=positive_int, help="torch CPU threads")
    r.add_argument("--json", metavar="FILE", help=JSON_HELP)
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _load(args: argparse.Namespace):
    """(model, train_config or None) from the checkpoint."""
    from gcnet.checkpoint import FORMAT, load_model, model_from_weights, read_checkpoint
    from gcnet.weights import find_weights

    obj = read_checkpoint(args.checkpoint)  # a file, named weights or a URL
    train_cfg = obj.get("train_config") if isinstance(obj, dict) else None
    if (isinstance(obj, dict) and obj.get("format") == FORMAT and "config" in obj) or find_weights(args.checkpoint):
        given = " and ".join(f for f, v in (("--model", args.model), ("--num-classes", args.num_classes)) if v)
        if given:
            raise ConfigError(f"{given} go{'es' if ' ' not in given else ''} with the authors' checkpoints; "
                              f"{args.checkpoint} carries its own model and classes: drop {given}")
        return load_model(args.checkpoint), train_cfg
    if not args.model or not args.num_classes:
        raise ConfigError(f"{args.checkpoint} has no model config inside (the authors' format?): pass --model "
                          "(gcnet-s/m/l) and --num-classes")
    try:
        model = model_from_weights(args.model, args.num_classes, obj, str(args.checkpoint))
    except ValueError as exc:  # an unknown variant
        raise ConfigError(str(exc)) from None
    return model.eval(), None


def _settings(args: argparse.Namespace, train_cfg: dict | None) -> dict[str, Any]:
    """Data and inference settings: the command line over the checkpoint's training config over defaults."""
    from gcnet.engine.config import EvalSection, TrainConfig

    cfg = TrainConfig.from_dict(train_cfg) if isinstance(train_cfg, dict) else None
    kind = args.dataset or (cfg.data.kind if cfg else None)
    root = args.data_root or (cfg.data.root if cfg else None)
    if not kind or not root:
        missing = " and ".join(f for f, given in (("--dataset", kind), ("--data-root", root)) if not given)
        raise ConfigError(f"which data? pass {missing} (this checkpoint has no training config inside to take "
                          "them from)")
    same_dataset = cfg is not None and args.dataset in (None, cfg.data.kind)
    e = cfg.eval if cfg else EvalSection()
    e = dataclasses.replace(e, mode=args.mode or e.mode, crop_size=list(args.crop or e.crop_size),
                            stride=list(args.stride or e.stride), scales=list(args.scales or e.scales),
                            flip=e.flip if args.flip is None else args.flip, batch_size=args.batch_size or e.batch_size)
    if e.mode != "slide" and (args.crop or args.stride):
        raise ConfigError("--crop and --stride set the windows of --mode slide; add --mode slide (the mode now "
                          f"is {e.mode})")
    if args.float64 and args.amp:
        raise ConfigError("--float64 and --amp (bfloat16) contradict each other; give one")
    if e.mode == "slide" and not e.crop_size:
        raise ConfigError("--mode slide needs --crop HxW")
    if e.mode == "slide" and e.stride and any(s > c for s, c in zip(e.stride, e.crop_size)):
        raise ConfigError(f"--stride {e.stride[0]}x{e.stride[1]} is larger than --crop {e.crop_size[0]}x"
                          f"{e.crop_size[1]}: the windows would leave pixels out; use a stride <= the crop")
    return {"kind": kind, "root": root, "split": args.split or (cfg.data.val_split if cfg else "") or "val",
            "info": args.info or (cfg.data.info if same_dataset else ""), "eval": e}


def _dataset(s: dict[str, Any], limit: int | None):
    from gcnet.data.datasets import dataset_from_settings
    from gcnet.data.transforms import EvalTransform

    dataset = dataset_from_settings(s["kind"], s["root"], s["split"], s["info"], EvalTransform())
    if limit:
        dataset.samples = dataset.samples[:limit]
    return dataset


def _forms(args: argparse.Namespace, model) -> list[tuple[str, Any]]:
    """The (form name, module) pairs to evaluate: the checkpoint's form, its deploy form, or both."""
    import copy

    if args.both_forms:
        if model.is_deploy:
            raise ConfigError("--both-forms needs a training-form checkpoint")
        return [("train", model), ("deploy", copy.deepcopy(model).reparameterize())]
    if args.reparameterize and not model.is_deploy:
        return [("deploy", model.reparameterize())]
    return [("deploy" if model.is_deploy else "train", model)]


def _compare_forms(results: dict[str, Any], float64: bool) -> bool:
    """Print how the two forms' mIoUs compare; True when they are identical."""
    a, b = results["train"], results["deploy"]
    same = abs(a["mIoU"] - b["mIoU"]) < 1e-9
    note = "" if same or float64 else (" (float32 rounding flips pixels whose two best classes are "
                                       "tied to ~1e-6; --float64 removes it)")
    print(f"training form mIoU {a['mIoU']:.4f} vs reparameterized form mIoU {b['mIoU']:.4f}: "
          + ("identical" if same else f"differ by {abs(a['mIoU'] - b['mIoU']):.4f}{note}"))
    return same


def run(args: argparse.Namespace) -> int:
    import torch

    from gcnet import distributed as gdist
    from gcnet.engine.builders import check_datasets
    from gcnet.evaluation.inference import evaluate
    from gcnet.evaluation.metrics import format_table

    if args.threads:
        torch.set_num_threads(args.threads)
    device = gdist.resolve_device(args.device)
    dist = gdist.init_from_env(device.type)
    device = gdist.resolve_device(args.device, dist.local_rank)
    try:
        check_json_arg(args.json, [("the checkpoint", args.checkpoint), ("the data set root", args.data_root)])
        model, train_cfg = _load(args)
        s = _settings(args, train_cfg)  # the data set root may come from the checkpoint's config
        check_json_arg(args.json, [("the data set root", s["root"])])
        dataset = _dataset(s, args.limit)
        dataset.info.check_model_classes(model.num_classes)
        if not args.skip_data_check:
            check_datasets([dataset], progress=show_progress(args))
        if args.float64:
            model = model.double()
        forms = _forms(args, model)
        e = s["eval"]
        kwargs = e.evaluate_kwargs()
        out: dict[str, Any] = {"checkpoint": str(args.checkpoint), "dataset": s["kind"], "data_root": str(s["root"]),
                               "split": s["split"], "mode": e.mode, "crop": kwargs["crop_size"],
                               "stride": kwargs["stride"], "scales": list(e.scales), "flip": e.flip, "results": {}}
        main = dist.is_main
        for name, net in forms:
            net = net.to(device).eval()
            res = evaluate(net, dataset, **kwargs, workers=args.workers, device=device,
                           amp_dtype=torch.bfloat16 if args.amp else None,
                           progress=show_progress(args), desc=f"eval ({name} form)")
            out["results"][name] = res
            if main:
                tta = f", scales {','.join(f'{x:g}' for x in e.scales)}" + (" + flip" if e.flip else "")
                print(f"{args.checkpoint} ({name} form) on {dataset.info.name} {s['split']} "
                      f"({res['num_images']} images, {e.mode} inference{tta}, {res['seconds']:.1f}s):")
                print(format_table(res, res["class_names"]))
        if main and len(forms) == 2:
            out["identical_mIoU"] = _compare_forms(out["results"], args.float64)
        if main and args.json is not None:
            write_json(args.json, out)
    finally:
        gdist.cleanup()
    return 0

