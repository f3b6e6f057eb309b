"""``gcnet train``: train GCNet from a preset or a TOML config, with dotted overrides."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

from gcnet.cli.args import check_writable_dir, non_negative_int, positive_int
from gcnet.distributed import env_world_size
from gcnet.engine.config import SCHEMA, TrainConfig, dumps_toml, list_presets, toml_value
from gcnet.errors import ConfigError

_OVR_PREFIX = "cfg:"

EPILOG = """\
examples:
  gcnet train --list-presets
  gcnet train gcnet-s_cityscapes --data.root data/cityscapes --work-dir runs/s_city
  gcnet train gcnet-s_camvid --data.root data/camvid --init.load_from gcnet-s_cityscapes.pth
  gcnet train my_config.toml --schedule.iters 1000 --set optim.lr=0.005
  gcnet train --resume --work-dir runs/s_city            # continue an interrupted run
  gcnet train tiny_synthetic --work-dir runs/tiny --print-config
  torchrun --nproc_per_node 4 -m gcnet.cli train gcnet-s_cityscapes --work-dir runs/s_city --sync-bn
  gcnet train gcnet-s_cityscapes --launcher torchrun --nproc-per-node 2 --work-dir runs/s_city

Every config key can be overridden with --SECTION.KEY VALUE (listed below) or --set SECTION.KEY=VALUE;
values are TOML (numbers, true/false, [512, 1024], {channels = 16}) or plain strings.
Outputs in --work-dir: config.toml (the resolved config), latest.pth, iter_N.pth, best.pth,
metrics.jsonl, tb/ (TensorBoard), summary.json. See docs/training.md.
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``gcnet train`` and its options to the CLI's subcommands."""
    p = sub.add_parser(
        "train",
        help="train GCNet (presets for the paper's Cityscapes / CamVid / VOC recipes)",
        description=textwrap.dedent("""\
            Train GCNet with the paper's recipe: SGD (momentum 0.9, weight decay 5e-4), poly learning-rate
            decay (power 0.9), iteration based; OHEM cross-entropy on the main head + 0.4 x on the auxiliary
            head; random rescale / crop / flip / photometric augmentation. CONFIG is a preset name (see
            --list-presets) or a TOML file. Checkpoints are written atomically and hold everything needed
            to resume exactly (model, optimizer, data order, RNG state)."""),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", metavar="CONFIG",
                   help="preset name (e.g. gcnet-s_cityscapes) or path to a .toml config; optional with "
                        "--resume (the run's config.toml is used)")
    p.add_argument("--work-dir", "-w", metavar="DIR",
                   help="output folder (default: runs/<config name>)")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT_OR_DIR",
                   help="continue from a checkpoint: without a value WORK_DIR/latest.pth; or a .pth file or a "
                        "run folder. Same schedule, data order, optimizer and RNG state as if never stopped")
    p.add_argument("--overwrite", action="store_true",
                   help="start from scratch even though WORK_DIR already holds a run: its checkpoints, logs and "
                        "config are moved into WORK_DIR/replaced-<time>/ (delete that folder yourself)")
    p.add_argument("--skip-data-check", action="store_true",
                   help="start without first scanning every training and validation image and label (the scan "
                        "refuses unreadable files, size mismatches and label values outside the classes)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=0.005 (repeatable; also for sub-keys such "
                        "as model.overrides.channels=16)")
    p.add_argument("--seed", type=non_negative_int, help="random seed (= --runtime.seed)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (= --runtime.device)")
    p.add_argument("--amp", action="store_true", default=None,
                   help="mixed precision (= --runtime.amp true): bf16 autocast on CUDA or CPU (fast on CPUs with "
                        "AVX512_BF16/AMX); --runtime.amp_dtype fp16 (CUDA only) adds a GradScaler. Validation on "
                        "a CPU stays in fp32")
    p.add_argument("--sync-bn", action="store_true", default=None,
                   help="SyncBatchNorm across processes under torchrun (CUDA only; on CPU plain BatchNorm is kept)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads per process (= --runtime.threads)")
    p.add_argument("--launcher", choices=("none", "torchrun"), default="none",
                   help="'torchrun' starts --nproc-per-node processes on this machine (DistributedDataParallel). "
                        "For several machines run torchrun yourself (see docs/training.md)")
    p.add_argument("--nproc-per-node", type=positive_int, default=2, metavar="N",
                   help="processes for --launcher torchrun (default 2)")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="force the progress bar (default: only when stderr is a terminal)")
    prog.add_argument("--no-progress", dest="progress", action="store_false",
                      help="plain log lines instead of a progress bar")
    p.add_argument("--list-presets", action="store_true", help="list the preset configs and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    p.add_argument("--debug-kill-at", type=int, help=argparse.SUPPRESS)  # test hook: SIGKILL after that checkpoint
    _add_config_keys(p)
    p.set_defaults(func=run)


def _add_config_keys(p: argparse.ArgumentParser) -> None:
    """One ``--SECTION.KEY VALUE`` option per config key (collected by :func:`collect_overrides`)."""
    group = p.add_argument_group(
        "config overrides", "each key of the config (defaults shown are the built-in ones; presets change many)")
    for sec, keys in SCHEMA.items():
        for name, (_spec, default, help_text) in keys.items():
            group.add_argument(f"--{sec}.{name}", dest=f"{_OVR_PREFIX}{sec}.{name}", metavar="VALUE",
                               default=argparse.SUPPRESS, help=f"{help_text} [{toml_value(default)}]")


def collect_overrides(args: argparse.Namespace) -> list[str]:
    """``--section.key VALUE`` options, then the convenience flags, then ``--set``, in that order."""
    out = [f"{k[len(_OVR_PREFIX):]}={v}" for k, v in vars(args).items() if k.startswith(_OVR_PREFIX)]
    if getattr(args, "seed", None) is not None:
        out.append(f"runtime.seed={args.seed}")
    if getattr(args, "device", None):
        out.append(f'runtime.device="{args.device}"')
    if getattr(args, "amp", None):
        out.append("runtime.amp=true")
    if getattr(args, "sync_bn", None):
        out.append("model.sync_bn=true")
    if getattr(args, "threads", None) is not None:
        out.append(f"runtime.threads={args.threads}")
    out.extend(getattr(args, "set", []) or [])
    return out


def _resolve(args: argparse.Namespace):
    from pathlib import Path

    overrides = collect_overrides(args)
    source = args.config
    work_dir = args.work_dir
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in --work-dir and --overwrite starts it anew; give one")
    if args.resume not in (None, True) and not Path(args.resume).exists():
        raise ConfigError(f"--resume {args.resume}: no such checkpoint or run folder")
    if source is None:
        if not args.resume:
            raise ConfigError("give a CONFIG (a preset name or a .toml file; see --list-presets), "
                              "or --resume to continue a run")
        resumed = Path(args.resume) if args.resume is not True else None
        candidates = ([Path(work_dir)] if work_dir else []) + (
            [resumed.parent if resumed.is_file() else resumed] if resumed else [])
        run_dir = next((d for d in candidates if (d / "config.toml").is_file()), None)
        if run_dir is None:
            raise ConfigError("--resume without CONFIG needs --work-dir (or a run folder) containing config.toml")
        source = run_dir / "config.toml"
        work_dir = work_dir or str(run_dir)
    cfg = TrainConfig.load(source, overrides)
    if work_dir is None:
        stem = Path(str(source)).name
        stem = stem.removesuffix(".toml")
        work_dir = str(Path("runs") / stem)
    return cfg, work_dir, overrides


def _torchrun(args: argparse.Namespace, work_dir: str, overrides: list[str]) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc_per_node}",
           "-m", "gcnet.cli", "train"]
    if args.config:
        cmd.append(str(args.config))
    cmd += ["--work-dir", work_dir]
    if args.resume is True:
        cmd.append("--resume")
    elif args.resume:
        cmd += ["--resume", str(args.resume)]
    if args.overwrite:
        cmd.append("--overwrite")
    if args.skip_data_check:
        cmd.append("--skip-data-check")
    if args.progress is not None:
        cmd.append("--progress" if args.progress else "--no-progress")
    for o in overrides:
        cmd += ["--set", o]
    print("launching: " + " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def run(args: argparse.Namespace) -> int:
    if args.list_presets:
        from gcnet.engine.config import preset_path

        for name in list_presets():
            first = preset_path(name).read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip()
            print(f"{name:<24} {first}")
        return 0
    cfg, work_dir, overrides = _resolve(args)
    if args.print_config:
        print(dumps_toml(cfg.to_dict()), end="")
        return 0
    check_writable_dir(work_dir, "--work-dir")
    if args.launcher == "torchrun" and env_world_size() <= 1:
        return _torchrun(args, work_dir, overrides)

    from gcnet.engine.trainer import Trainer

    trainer = Trainer(cfg, work_dir, resume=args.resume, overwrite=args.overwrite, progress=args.progress,
                      kill_at=args.debug_kill_at, check_data=not args.skip_data_check)
    trainer.run()
    return 0


__all__ = ["collect_overrides", "register", "run"]
