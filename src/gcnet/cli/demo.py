"""``gcnet demo``: the whole pipeline in a few minutes on a CPU, with no downloads.

Generates a synthetic dataset, trains a small GCNet, evaluates it, reparameterizes it, shows that the
reparameterized network gives the same mIoU (and logits up to float rounding) while running faster,
and writes colour overlays.
"""

from __future__ import annotations

import argparse
import copy
import json
import textwrap
import time
from pathlib import Path
from typing import Any

from gcnet.cli.args import check_own_dir, non_negative_int, positive_float, positive_int

EPILOG = """\
examples:
  gcnet demo                              # ~2 minutes, everything under demo_out/
  gcnet demo --out /tmp/demo --minutes 1
  gcnet demo --iters 300 --seed 1         # a fixed number of iterations (reproducible)

What it does:
  1. writes a synthetic dataset (random scenes of sky, road, boxes, balls, stripes) to OUT/data
  2. trains a reduced GCNet-S (the tiny_synthetic preset) for about --minutes (or exactly --iters), logs and
     checkpoints in OUT/train
  3. evaluates it (per-class IoU table), reparameterizes it (every GCBlock -> one 3x3 conv, BN folded)
  4. evaluates the reparameterized model: the same mIoU; prints the largest logit difference
  5. times both forms (batch 1) and prints the speed-up
  6. writes image | ground truth | prediction panels to OUT/overlays and a summary to OUT/summary.json
Run again with the same OUT, it replaces the earlier demo's files: OUT/data as soon as the new dataset is
complete (it depends only on --seed), the rest only when the new demo finishes; an interrupted run leaves them.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train, evaluate, reparameterize and time a small GCNet on synthetic data (no downloads)",
        description=textwrap.dedent("""\
            A self-contained tour of GCNet on this machine, with no downloads: train a small GCNet on a
            generated dataset for a couple of minutes, evaluate it, reparameterize it, show that both forms
            give the same mIoU and how much faster the reparameterized form runs, and write colour
            overlays to look at."""),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default demo_out)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=positive_float, default=2.0,
                        help="training time in minutes (the learning rate decays over this time; default 2)")
    length.add_argument("--iters", type=positive_int,
                        help="train for exactly N iterations instead of --minutes (reproducible)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed for the data and the training run")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--num-overlays", type=non_negative_int, default=6, metavar="N", help="overlay panels to write (default 6)")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="force the progress bar (default: only on a terminal)")
    prog.add_argument("--no-progress", dest="progress", action="store_false", help="plain log lines")
    p.set_defaults(func=run)


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _time_forward(model, x, repeats: int = 10, min_seconds: float = 1.0) -> float:
    """Median milliseconds per forward pass after 3 warm-up passes: at least ``repeats`` passes and
    ``min_seconds`` of them (the timing loop of ``gcnet bench``)."""
    import torch

    from gcnet.deploy.bench import latency_stats, timed_runs

    def forward() -> None:
        model(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        for _ in range(3):
            forward()
        times, _ = timed_runs(forward, repeats, min_seconds)
    return latency_stats(times)["median"]


def _compare_logits(a, b, dataset, device) -> tuple[float, float]:
    """(max |logit difference|, % of pixels with the same argmax) of two models over a dataset."""
    import torch

    from gcnet.evaluation.inference import infer_logits

    dtype = next(a.parameters()).dtype
    max_diff, same, total = 0.0, 0, 0
    with torch.no_grad():
        for i in range(len(dataset)):
            img = dataset[i][0].unsqueeze(0).to(device, dtype=dtype)
            la, lb = infer_logits(a, img), infer_logits(b, img)
            max_diff = max(max_diff, float((la - lb).abs().max()))
            same += int((la.argmax(1) == lb.argmax(1)).sum())
            total += la.shape[-1] * la.shape[-2]
    return max_diff, 100.0 * same / total


def _demo_config(args: argparse.Namespace, data_dir: Path, device):
    from gcnet.engine.config import TrainConfig

    overrides = [f'data.root="{data_dir.as_posix()}"', f"runtime.seed={args.seed}", f'runtime.device="{device}"',
                 "schedule.val_interval=0", "schedule.ckpt_interval=0", "schedule.keep_ckpts=1"]
    if args.iters:
        overrides += [f"schedule.iters={args.iters}", "schedule.time_budget_min=0"]
    else:
        overrides += ["schedule.iters=1000000", f"schedule.time_budget_min={args.minutes}"]
    return TrainConfig.load("tiny_synthetic", overrides)


def _write_data(cfg, out: Path):
    """Generate the config's synthetic dataset (the trainer's own builder) into a staging folder and swap it in
    whole for ``cfg.data.root`` (``out/data``), where the training then finds it; return its val split and
    classes."""
    from gcnet.data.metadata import get_dataset_info
    from gcnet.engine.builders import build_datasets
    from gcnet.fileio import staging_folder

    d = cfg.data
    h, w = d.synthetic_size
    info = get_dataset_info("synthetic")
    _say(f"[1/6] writing a synthetic dataset to {d.root} ({d.synthetic_train} train / {d.synthetic_val} val "
         f"images of {h}x{w}, classes: {', '.join(info.classes)})")
    staged = copy.deepcopy(cfg)
    with staging_folder(out) as stage:
        staged.data.root = str(stage / Path(d.root).name)
        build_datasets(staged, lambda _msg: None, train=False, val=False)
    _, val_set, _ = build_datasets(cfg, lambda _msg: None, train=False)
    return val_set, info


def _train(args: argparse.Namespace, cfg, work: Path, final: Path, device) -> dict[str, Any]:
    """Train in the staging folder ``work``; its summary.json names ``final``, where the run ends up."""
    from gcnet.engine.trainer import Trainer
    from gcnet.fileio import unstaged, write_text

    how = f"{args.iters} iterations" if args.iters else f"about {args.minutes:g} minutes"
    _say(f"[2/6] training a reduced GCNet-S for {how} on {device} (config: tiny_synthetic; logs and checkpoints "
         f"for {final}, replacing an earlier demo's when this one finishes)")
    train_cfg = copy.deepcopy(cfg)
    train_cfg.data.val_split = ""  # the demo evaluates below, in both forms
    summary = Trainer(train_cfg, work, progress=args.progress,  # its messages name where the files end up
                      log=lambda m: _say("      " + unstaged(m, work, final).replace("\n", "\n      "))).run()
    summary = unstaged({**summary, "last_checkpoint": str(work / "latest.pth")}, work, final)
    write_text(work / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _evaluate_forms(model, deployed, val_set, device) -> dict[str, Any]:
    """Both forms' results in float32 and float64, and how far their logits are apart."""
    from gcnet.evaluation.inference import evaluate
    from gcnet.evaluation.metrics import format_table
    from gcnet.models.complexity import count_params

    _say(f"[3/6] evaluating the trained model (training form) on {len(val_set)} val images")
    res_train = evaluate(model, val_set, batch_size=4, device=device, progress=False)
    _say(format_table(res_train, res_train["class_names"]))
    n_train, n_deploy = count_params(model), count_params(deployed)
    _say(f"[4/6] reparameterized: {n_train / 1e6:.3f} M -> {n_deploy / 1e6:.3f} M parameters "
         "(each GCBlock is now one 3x3 conv, BatchNorm folded, auxiliary head dropped); evaluating again")
    res_deploy = evaluate(deployed, val_set, batch_size=4, device=device, progress=False)
    diff32, agree32 = _compare_logits(model, deployed, val_set, device)
    # The conversion is exact algebra; float32 rounding (~1e-6 of the logits) can still flip the argmax of a
    # pixel whose two best classes are tied to 1e-6. In float64 the rounding is ~1e-15: identical results.
    model64 = copy.deepcopy(model).double()
    deployed64 = copy.deepcopy(model64).reparameterize()
    res_train64 = evaluate(model64, val_set, batch_size=4, device=device, progress=False)
    res_deploy64 = evaluate(deployed64, val_set, batch_size=4, device=device, progress=False)
    diff64, _ = _compare_logits(model64, deployed64, val_set, device)
    identical = res_train64["mIoU"] == res_deploy64["mIoU"] and res_train64["IoU"] == res_deploy64["IoU"]
    _say(f"      {'':<18}{'mIoU':>9}{'aAcc':>9}{'params':>10}")
    _say(f"      {'training form':<18}{res_train['mIoU']:>9.4f}{res_train['aAcc']:>9.4f}{n_train / 1e6:>9.3f}M")
    _say(f"      {'reparameterized':<18}{res_deploy['mIoU']:>9.4f}{res_deploy['aAcc']:>9.4f}{n_deploy / 1e6:>9.3f}M")
    _say(f"      float32: the same prediction on {agree32:.4f}% of pixels; max |logit difference| {diff32:.1e} "
         "(rounding)")
    _say(f"      float64: mIoU {res_train64['mIoU']:.4f} vs {res_deploy64['mIoU']:.4f} -> "
         f"{'identical' if identical else 'DIFFERENT'}; max |logit difference| {diff64:.1e} "
         "(the reparameterization is exact)")
    return {
        "mIoU": {"train_form": res_train["mIoU"], "reparameterized": res_deploy["mIoU"],
                 "train_form_float64": res_train64["mIoU"], "reparameterized_float64": res_deploy64["mIoU"],
                 "identical": identical},
        "per_class_IoU": dict(zip(res_train["class_names"], res_train["IoU"])),
        "max_abs_logit_diff": {"float32": diff32, "float64": diff64},
        "same_prediction_percent_float32": agree32,
        "params": {"train_form": n_train, "reparameterized": n_deploy},
    }


def _time_forms(model, deployed, val_set, device) -> dict[str, Any]:
    import torch

    x = val_set[0][0].unsqueeze(0).to(device)
    bigger = torch.randn(1, 3, 512, 640, device=device)
    _say(f"[5/6] timing both forms (batch 1, median of repeated forward passes on {device})")
    speed: dict[str, Any] = {}
    for label, inp in ((f"{x.shape[-2]}x{x.shape[-1]}", x), ("512x640", bigger)):
        t_tr, t_de = _time_forward(model, inp), _time_forward(deployed, inp)
        speed[label] = {"train_ms": t_tr, "deploy_ms": t_de, "speedup": t_tr / t_de}
        _say(f"      {label:>8}: training form {t_tr:7.2f} ms, reparameterized {t_de:7.2f} ms "
             f"-> {t_tr / t_de:.2f}x faster")
    return speed


def _write_overlays(deployed, val_set, count: int, ov_dir: Path, final: Path, device, info) -> list[str]:
    """Write the panels into ``ov_dir`` (staging); returns their paths in ``final``, where they end up."""
    import numpy as np
    import torch
    from PIL import Image

    from gcnet.data.metadata import colorize, overlay
    from gcnet.evaluation.inference import infer_logits

    ov_dir.mkdir()
    written = []
    with torch.no_grad():
        for i in range(min(count, len(val_set))):
            image = val_set.load_image(i)
            gt = val_set.load_label(i)
            pred = infer_logits(deployed, val_set[i][0].unsqueeze(0).to(device)).argmax(1)[0].cpu().numpy()
            gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
            panel = np.concatenate([image, gap, colorize(gt, info), gap, overlay(image, pred, info, alpha=0.6)], axis=1)
            Image.fromarray(panel).save(ov_dir / f"val_{i:04d}.png")
            written.append(str(final / f"val_{i:04d}.png"))
    _say(f"[6/6] wrote {len(written)} panels (image | ground truth | prediction overlay) to {final}")
    return written


DEMO_ENTRIES = frozenset({"data", "train", "overlays", "summary.json"})
MARKER = ".gcnet-demo"  # written first into a demo's folder: the licence to replace its contents next time


def _demo_folder(out: Path) -> Path:
    """The --out folder, created if missing and marked as the demo's: the demo replaces an earlier demo's
    files there, and refuses any other folder that is not empty. Staging folders a killed demo left go first."""
    from gcnet.fileio import remove_stale_temps, write_text

    if (out / MARKER).is_file():
        remove_stale_temps(out)
    check_own_dir(out, "--out", "the demo", MARKER, DEMO_ENTRIES)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / MARKER, "written by gcnet demo, which replaces this folder's contents when run again\n")
    return out


def _results(args: argparse.Namespace, cfg, val_set, info, stage: Path, out: Path, device) -> dict[str, Any]:
    """Train, evaluate, time and draw into ``stage``; the summary names the files where they end up in ``out``."""
    from gcnet.checkpoint import load_model

    summary = _train(args, cfg, stage / "train", out / "train", device)
    model = load_model(stage / "train" / "latest.pth").to(device).eval()
    deployed = copy.deepcopy(model).reparameterize().to(device).eval()
    return {"train": {"iterations": summary["iterations"], "train_time_s": summary.get("train_time_s"),
                      "checkpoint": summary["last_checkpoint"]},
            **_evaluate_forms(model, deployed, val_set, device),
            "speed": _time_forms(model, deployed, val_set, device),
            "overlays": _write_overlays(deployed, val_set, args.num_overlays, stage / "overlays", out / "overlays",
                                        device, info)}


def run(args: argparse.Namespace) -> int:
    import torch

    from gcnet.distributed import resolve_device
    from gcnet.fileio import staging_folder, write_text

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    out = _demo_folder(Path(args.out))
    t_all = time.perf_counter()
    cfg = _demo_config(args, out / "data", device)
    val_set, info = _write_data(cfg, out)
    with staging_folder(out) as stage:  # train/, overlays/ and summary.json replace the earlier ones at the end
        result = _results(args, cfg, val_set, info, stage, out, device)
        result["seconds"] = round(time.perf_counter() - t_all, 1)
        write_text(stage / "summary.json", json.dumps(result, indent=2) + "\n")
    work, ckpt = out / "train", result["train"]["checkpoint"]
    _say("")
    _say(f"done in {result['seconds']:.0f}s. Everything is under {out}/:")
    _say("  data/             the synthetic dataset (folder layout: images/, labels/, dataset.json)")
    _say(f"  train/            checkpoint latest.pth, config.toml, metrics.jsonl, tb/ (tensorboard --logdir {work})")
    _say(f"  overlays/         {len(result['overlays'])} PNG panels: image | ground truth | prediction")
    _say("  summary.json      the numbers above")
    _say("next:")
    _say(f"  gcnet eval {ckpt} --both-forms")
    _say("  gcnet train --list-presets        # the paper's recipes (Cityscapes, CamVid, VOC; S, M, L)")
    return 0
