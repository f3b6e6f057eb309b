"""Iteration-based training: the paper's recipe on one process or many (torchrun / DDP).

* Data: an infinite, seeded sampler. Batch ``i`` is a pure function of ``(seed, i, rank,
  world_size)``, and each sample's augmentation RNG is derived from ``(seed, epoch, index)``, so
  worker processes, prefetching and ``--resume`` never change what the model sees.
* Optimiser: SGD (momentum, weight decay on every parameter, as the authors' mmseg config) with
  poly decay ``lr_i = min_lr + (lr - min_lr) * (1 - i / iters) ** power`` (mmseg ``PolyLR``).
* Loss: OHEM cross-entropy on the main head + ``aux_weight`` x the same on the auxiliary head.
* Checkpoints: ``latest.pth`` and ``iter_N.pth`` every ``ckpt_interval`` iterations and at the end,
  ``best.pth`` on the best validation mIoU; each written atomically (temp file + ``os.replace``),
  readable with ``torch.load(weights_only=True)``, holding the model config, optimiser, sampler and
  RNG state, so a crash never leaves a corrupt latest checkpoint and ``resume`` continues exactly.
* Logging: a tqdm bar (loss, lr, it/s, ETA) or plain log lines when not on a terminal,
  ``metrics.jsonl`` and TensorBoard (``tb/``, if tensorboard is installed).
* A non-finite loss stops training with :class:`NonFiniteLossError` naming the iteration;
  nothing is written for that iteration, so the last checkpoint stays the last good one.
* Mixed precision (autocast + GradScaler for fp16) on CUDA only.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gcnet.engine import distributed as gdist
from gcnet.engine.config import config_diff, load_config, save_config
from gcnet.errors import CheckpointError, ConfigError, DatasetError, GCNetError

__all__ = [
    "InfiniteBatchSampler",
    "NonFiniteLossError",
    "SeededTrainSet",
    "Trainer",
    "build_datasets",
    "build_model_from_config",
    "load_init_weights",
    "poly_lr",
    "resolve_device",
    "train",
]


class NonFiniteLossError(GCNetError):
    """The training loss became NaN or infinite."""


# ------------------------------------------------------------------------------------- schedule


def poly_lr(base_lr: float, iteration: int, total: int, power: float = 0.9, min_lr: float = 0.0) -> float:
    """Learning rate for (0-based) ``iteration`` of ``total`` (mmseg ``PolyLR`` with ``eta_min``)."""
    frac = min(max(iteration, 0), total) / total
    return (base_lr - min_lr) * (1.0 - frac) ** power + min_lr


# --------------------------------------------------------------------------------------- devices


def resolve_device(spec: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    spec = "auto" if spec is None else str(spec)
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {spec!r} requested but CUDA is not available (use --device cpu)")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


# ----------------------------------------------------------------------------------------- data


class InfiniteBatchSampler:
    """Endless, seeded, sharded batches of ``(epoch, index)`` keys.

    Every epoch is a permutation of the dataset drawn from ``(seed, epoch)``; like
    ``DistributedSampler`` it is padded to a multiple of ``world_size`` and rank ``r`` takes
    positions ``r, r + world_size, ...``. Each rank's shards are concatenated epoch after epoch and
    cut into batches of ``batch_size`` (per process), so batch ``i`` depends only on ``i``:
    ``start_iter`` resumes the exact data order.
    """

    def __init__(self, dataset_len: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, start_iter: int = 0) -> None:
        if dataset_len < 1:
            raise DatasetError("the training set is empty")
        self.n, self.batch_size, self.seed = dataset_len, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.start_iter = start_iter
        self.shard_len = math.ceil(dataset_len / world_size)
        self._cache: tuple[int, np.ndarray] | None = None

    def _shard(self, epoch: int) -> np.ndarray:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        total = self.shard_len * self.world_size
        if total > self.n:
            order = np.concatenate([order, order[: total - self.n]])
        shard = order[self.rank::self.world_size]
        self._cache = (epoch, shard)
        return shard

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        start = iteration * self.batch_size
        keys = []
        for p in range(start, start + self.batch_size):
            epoch, pos = divmod(p, self.shard_len)
            keys.append((epoch, int(self._shard(epoch)[pos])))
        return keys

    def state(self, iteration: int) -> dict[str, int]:
        epoch, pos = divmod(iteration * self.batch_size, self.shard_len)
        return {"seed": self.seed, "epoch": epoch, "position": pos, "iteration": iteration,
                "batch_size": self.batch_size, "world_size": self.world_size, "dataset_len": self.n}

    def __iter__(self):
        it = self.start_iter
        while True:
            yield self.batch(it)
            it += 1


def _accepts_rng(fn: Callable) -> bool:
    try:
        return "rng" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


@contextlib.contextmanager
def _seeded_global_rngs(seed: int):
    """Seed python/numpy/torch global RNGs for one sample, restoring them afterwards."""
    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)


class SeededTrainSet(torch.utils.data.Dataset):
    """Applies ``transform`` to ``base[index]`` with an RNG derived from ``(seed, epoch, index)``.

    Keys are the ``(epoch, index)`` pairs yielded by :class:`InfiniteBatchSampler`. The
    transform receives ``rng=numpy.random.Generator`` if it accepts an ``rng`` argument; otherwise
    the global python/numpy/torch RNGs are seeded around the call."""

    def __init__(self, base, transform: Callable, seed: int = 0) -> None:
        self.base, self.transform, self.seed = base, transform, seed
        self._rng_arg = _accepts_rng(transform)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        epoch, index = key
        image, label = self.base[index]
        ss = np.random.SeedSequence([self.seed, epoch, index])
        if self._rng_arg:
            return self.transform(image, label, rng=np.random.default_rng(ss))
        with _seeded_global_rngs(int(ss.generate_state(1, dtype=np.uint64)[0] % (2**63))):
            return self.transform(image, label)


def _dataset_info(cfg: Mapping):
    from gcnet.data.metadata import get_dataset_info

    d = cfg["data"]
    name = d["info"] or ("synthetic" if d["kind"] == "synthetic" else d["kind"])
    if d["kind"] == "folder" and not d["info"]:
        return None
    return get_dataset_info(name)


def _ensure_synthetic(cfg: Mapping, log: Callable[[str], None]) -> None:
    from gcnet.data.synthetic import make_synthetic_dataset

    d = cfg["data"]
    root = Path(d["root"])
    if (root / "images" / d["train_split"]).is_dir() and (root / "labels" / d["train_split"]).is_dir():
        return
    log(f"generating a synthetic dataset in {root} ({d['synthetic_train']} train / {d['synthetic_val']} val "
        f"images of {d['synthetic_size'][0]}x{d['synthetic_size'][1]})")
    make_synthetic_dataset(root, num_train=d["synthetic_train"], num_val=d["synthetic_val"],
                           size=tuple(d["synthetic_size"]), seed=cfg["runtime"]["seed"])


def build_datasets(cfg: Mapping, log: Callable[[str], None] = print, *, train: bool = True, val: bool = True):
    """``(train_set_without_transform, val_set_with_eval_transform_or_None, info)`` for a config."""
    from gcnet.data.datasets import build_dataset
    from gcnet.data.transforms import EvalTransform

    d = cfg["data"]
    kind = d["kind"]
    if kind == "synthetic":
        if gdist.is_main():
            _ensure_synthetic(cfg, log)
        gdist.barrier()
    info = _dataset_info(cfg)
    real_kind = "folder" if kind == "synthetic" else kind
    train_set = build_dataset(real_kind, d["root"], d["train_split"], transform=None, info=info) if train else None
    val_set = None
    if val and d["val_split"]:
        val_set = build_dataset(real_kind, d["root"], d["val_split"], transform=EvalTransform(), info=info)
    info = getattr(train_set if train_set is not None else val_set, "info", info)
    return train_set, val_set, info


def _build_train_transform(cfg: Mapping, ignore_index: int):
    from gcnet.data.transforms import TrainTransform

    d = cfg["data"]
    return TrainTransform(tuple(d["crop_size"]), scale_range=tuple(d["scale_range"]),
                          cat_max_ratio=d["cat_max_ratio"], flip_prob=d["flip_prob"],
                          photometric=d["photometric"], ignore_index=ignore_index,
                          base_scale=tuple(d["base_scale"]) if d["base_scale"] else None)


# ---------------------------------------------------------------------------------------- model


def build_model_from_config(cfg: Mapping) -> nn.Module:
    from gcnet.models.gcnet import build_model

    m = cfg["model"]
    try:
        return build_model(m["name"], num_classes=m["num_classes"], **m["overrides"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[model]: {exc}") from None


def load_init_weights(model: nn.Module, source: str, log: Callable[[str], None] = print) -> list[str]:
    """Initialise ``model`` (training form) from a checkpoint: ours or the authors' (train form).

    When the checkpoint was trained for a different number of classes (e.g. Cityscapes weights
    for CamVid), the classifier layers are left at their fresh initialisation and everything else
    is loaded. Returns the names of the tensors that were not loaded."""
    from gcnet.checkpoint import extract_state_dict, load_weights, read_checkpoint, state_dict_form

    obj = read_checkpoint(source)
    sd = extract_state_dict(obj, str(source))
    if state_dict_form(sd) != "train":
        raise CheckpointError(f"{source}: holds reparameterized (deploy-form) weights; training needs the "
                              "training form (the authors' released training checkpoints or ours)")
    own = model.state_dict()
    mismatched = [k for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if not mismatched:
        load_weights(model, sd)  # strict: clear error if anything else differs
        log(f"initialised from {source}")
        return []
    classifier = ("decode_head.conv_seg.", "decode_head.aux_cls_seg_c4.")
    other = [k for k in mismatched if not k.startswith(classifier)]
    if other:
        raise CheckpointError(f"{source}: does not match the model (shape mismatch in {', '.join(other[:5])}"
                              f"{' ...' if len(other) > 5 else ''}); check [model] name/overrides")
    keep = {k: v for k, v in sd.items() if k not in mismatched}
    missing = [k for k in own if k not in keep]
    unexpected = [k for k in keep if k not in own]
    if unexpected or any(not k.startswith(classifier) for k in missing):
        bad = unexpected + [k for k in missing if not k.startswith(classifier)]
        raise CheckpointError(f"{source}: does not match the model ({len(bad)} tensors differ, e.g. {bad[0]})")
    model.load_state_dict(keep, strict=False)
    log(f"initialised from {source} (classifier re-initialised for {model.num_classes} classes: "
        f"{len(mismatched)} tensors skipped)")
    return mismatched


# ------------------------------------------------------------------------------------ rng state


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": [int(x) for x in keys], "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(py[0]), "state": [int(x) for x in py[1]]},
    }
    if torch.cuda.is_available():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    with contextlib.suppress(Exception):
        torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    with contextlib.suppress(Exception):
        n = state["numpy"]
        np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    with contextlib.suppress(Exception):
        p = state["python"]
        random.setstate((p["version"], tuple(p["state"]), None))
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ---------------------------------------------------------------------------------------- logging


class _Logger:
    """metrics.jsonl + optional TensorBoard (rank 0 only)."""

    def __init__(self, work_dir: Path, start_iter: int, enabled: bool, log: Callable[[str], None]) -> None:
        self.enabled = enabled
        self.path = work_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if start_iter > 0 and self.path.exists():  # drop records written after the resumed checkpoint
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(json.JSONDecodeError):
                    if json.loads(line).get("iter", 0) <= start_iter:
                        kept.append(line)
            self.path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        elif start_iter == 0 and self.path.exists():
            self.path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # noqa: BLE001 - tensorboard missing or broken
            log("note: tensorboard is not installed; logging to metrics.jsonl only "
                "(pip install tensorboard to get TensorBoard curves)")
        else:
            self.tb = SummaryWriter(str(work_dir / "tb"), purge_step=start_iter + 1 if start_iter else None)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            step = record["iter"]
            prefix = record.get("type", "train")
            for k, v in record.items():
                if k in ("iter", "type"):
                    continue
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)
                elif isinstance(v, Mapping):
                    for name, x in v.items():
                        if isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x)):
                            self.tb.add_scalar(f"{prefix}/{k}/{name}", x, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


# ---------------------------------------------------------------------------------------- trainer


class Trainer:
    """Train a GCNet according to a config (see :mod:`gcnet.engine.config`).

    Args:
        cfg: a config dict (validated with :func:`load_config`), a preset name or a TOML path.
        work_dir: output folder (checkpoints, ``config.toml``, ``metrics.jsonl``, ``tb/``).
        resume: ``None``/``False`` to start fresh, ``True`` for ``work_dir/latest.pth``, or a path.
        overwrite: allow starting fresh in a ``work_dir`` that already holds ``latest.pth``.
        progress: tqdm bar (default: when stderr is a terminal); otherwise plain log lines.
        criterion: replaces the OHEM loss (called as ``criterion(outputs, labels) -> (loss, parts)``).
        kill_at: test hook: SIGKILL this process right after the checkpoint of this iteration.
        clock: seconds counter for the timings and the time budget (tests inject a fake one).
    """

    def __init__(self, cfg: Mapping | str | Path, work_dir: str | Path, *, resume: bool | str | Path | None = None,
                 overwrite: bool = False, progress: bool | None = None,
                 criterion: Callable | None = None, kill_at: int | None = None,
                 log: Callable[[str], None] | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.cfg = copy.deepcopy(dict(cfg)) if isinstance(cfg, Mapping) else load_config(cfg)
        self.cfg = load_config(self.cfg)  # validate / fill defaults
        self.work_dir = Path(work_dir)
        self.resume = resume
        self.overwrite = overwrite
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.custom_criterion = criterion
        self.kill_at = kill_at
        self.clock = clock
        self._log_fn = log or (lambda msg: print(msg, flush=True))
        self.dist = gdist.DistInfo()
        self.model: nn.Module | None = None

    # -- helpers -------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if self.dist.is_main:
            if self._bar is not None:
                self._bar.write(msg)
            else:
                self._log_fn(msg)

    _bar = None

    def _resume_path(self) -> Path | None:
        if not self.resume:
            return None
        if self.resume is True:
            p = self.work_dir / "latest.pth"
        else:
            p = Path(self.resume)
            if p.is_dir():
                p = p / "latest.pth"
        if not p.is_file():
            raise CheckpointError(f"cannot resume: {p} does not exist (no checkpoint was written yet?)")
        return p

    # -- main ----------------------------------------------------------------------------------
    def run(self, keep_process_group: bool = False) -> dict[str, Any]:
        """Train; returns a summary dict (also written to ``work_dir/summary.json``). The process group
        that torchrun's environment made this call create is destroyed at the end unless
        ``keep_process_group``."""
        cfg = self.cfg
        rt, sched, optim_cfg = cfg["runtime"], cfg["schedule"], cfg["optim"]
        want = resolve_device(rt["device"])
        self.dist = gdist.init_from_env(want.type)
        try:
            return self._run(cfg, rt, sched, optim_cfg)
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            if not keep_process_group:
                gdist.cleanup()

    def _run(self, cfg, rt, sched, optim_cfg) -> dict[str, Any]:
        dist_info = self.dist
        device = resolve_device(rt["device"], dist_info.local_rank)
        if rt["threads"] > 0:
            torch.set_num_threads(rt["threads"])
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = not rt["deterministic"]
        if rt["deterministic"]:
            torch.use_deterministic_algorithms(True, warn_only=True)
        amp = bool(rt["amp"]) and device.type in ("cuda", "cpu")
        if rt["amp"] and not amp:
            self.log(f"note: runtime.amp is ignored on {device.type} (mixed precision is for CUDA and CPUs)")
        amp_dtype = torch.bfloat16 if rt["amp_dtype"] == "bf16" else torch.float16
        if amp and device.type == "cpu" and amp_dtype == torch.float16:
            raise ConfigError("runtime.amp_dtype fp16 needs CUDA; use bf16 for mixed precision on a CPU")
        memory_format = torch.channels_last if rt["channels_last"] else torch.contiguous_format

        world = dist_info.world_size
        bs = cfg["data"]["batch_size"]
        if bs % world:
            raise ConfigError(f"data.batch_size={bs} is not divisible by the {world} processes")
        per_rank_bs = bs // world

        # --- work dir / resume -------------------------------------------------------------
        resume_path = self._resume_path()
        ckpt = None
        if resume_path is not None:
            from gcnet.checkpoint import read_checkpoint

            ckpt = read_checkpoint(resume_path)
            if not isinstance(ckpt, dict) or "optimizer" not in ckpt or "iteration" not in ckpt:
                raise CheckpointError(f"{resume_path}: not a training checkpoint (no optimizer/iteration state)")
            saved_cfg = ckpt.get("train_config")
            if isinstance(saved_cfg, dict):
                diff = [k for k in config_diff(load_config(saved_cfg), cfg) if not k.startswith("runtime.")]
                if diff:
                    self.log(f"warning: resuming with a config that differs from the checkpoint's in: {', '.join(diff)}")
        elif (self.work_dir / "latest.pth").exists() and not self.overwrite:
            raise ConfigError(f"{self.work_dir} already holds a training run (latest.pth); pass --resume to "
                              "continue it, --overwrite to start again, or choose another --work-dir")
        if dist_info.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.work_dir / "config.toml", header="resolved training config (gcnet train)")
        gdist.barrier()

        # --- data ----------------------------------------------------------------------------
        train_base, val_set, info = build_datasets(cfg, self.log)
        num_classes = cfg["model"]["num_classes"]
        if info is not None and len(info.classes) != num_classes:
            raise ConfigError(f"model.num_classes is {num_classes} but the {info.name} dataset has "
                              f"{len(info.classes)} classes")
        ignore_index = info.ignore_index if info is not None else 255
        class_names = list(info.classes) if info is not None else [str(i) for i in range(num_classes)]
        seed = rt["seed"]
        train_set = SeededTrainSet(train_base, _build_train_transform(cfg, ignore_index), seed)
        start_iter = int(ckpt["iteration"]) if ckpt is not None else 0
        sampler = InfiniteBatchSampler(len(train_set), per_rank_bs, seed=seed, rank=dist_info.rank,
                                       world_size=world, start_iter=start_iter)
        if ckpt is not None:
            s = ckpt.get("sampler") or {}
            if s and (s.get("world_size") != world or s.get("batch_size") != per_rank_bs
                      or s.get("dataset_len") != len(train_set) or s.get("seed") != seed):
                self.log("warning: the number of processes, batch size, seed or dataset size changed since the "
                         "checkpoint; training continues but the data order is not the uninterrupted run's")

        # --- model / optimiser -------------------------------------------------------------
        torch.manual_seed(seed)
        np.random.seed(seed % (2**32))
        random.seed(seed)
        model = build_model_from_config(cfg)
        if ckpt is None and cfg["init"]["load_from"]:
            # every rank loads (DDP would broadcast rank 0's weights anyway); only rank 0 talks
            load_init_weights(model, cfg["init"]["load_from"], self.log if dist_info.is_main else (lambda m: None))
        if ckpt is not None:
            from gcnet.checkpoint import load_weights

            load_weights(model, ckpt)
        if cfg["model"]["sync_bn"] and dist_info.enabled:
            if device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                self.log("note: model.sync_bn is ignored on CPU (SyncBatchNorm needs CUDA); using BatchNorm")
        model.to(device, memory_format=memory_format)
        self.model = model  # the trained module (unwrapped), e.g. for tests or notebooks
        net = model
        if dist_info.enabled:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        optimizer = torch.optim.SGD(model.parameters(), lr=optim_cfg["lr"], momentum=optim_cfg["momentum"],
                                    weight_decay=optim_cfg["weight_decay"])
        scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
        best = {"mIoU": -1.0, "iteration": 0}
        if ckpt is not None:
            optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scaler") and scaler.is_enabled():
                scaler.load_state_dict(ckpt["scaler"])
            best = dict(ckpt.get("best") or best)
            if ckpt.get("rng"):
                _set_rng_state(ckpt["rng"])
            self.log(f"resumed from {resume_path} at iteration {start_iter}")

        if self.custom_criterion is not None:
            criterion = self.custom_criterion
        else:
            from gcnet.engine.losses import GCNetLoss, OhemCrossEntropy

            lc = cfg["loss"]
            weights = torch.tensor(lc["class_weights"], dtype=torch.float32) if lc["class_weights"] else None
            main = OhemCrossEntropy(thresh=lc["ohem_thresh"], min_kept=lc["min_kept"], class_weight=weights,
                                    ignore_index=ignore_index)
            criterion = GCNetLoss(main, aux_weight=lc["aux_weight"])
            if isinstance(criterion, nn.Module):
                criterion.to(device)

        total = sched["iters"]
        if start_iter >= total:
            self.log(f"nothing to do: the checkpoint is at iteration {start_iter} >= schedule.iters {total}")
            return {"iterations": start_iter, "best": best, "final": None, "work_dir": str(self.work_dir)}

        loader = torch.utils.data.DataLoader(
            train_set, batch_sampler=sampler, num_workers=cfg["data"]["workers"],
            pin_memory=device.type == "cuda", persistent_workers=False)
        logger = _Logger(self.work_dir, start_iter, dist_info.is_main, self.log)
        # validation under autocast on CUDA only: on a CPU it stays float32
        eval_kwargs = self._eval_kwargs(cfg, class_names, num_classes, ignore_index, device,
                                        amp_dtype if amp and device.type == "cuda" else None)

        if dist_info.is_main:
            n_params = sum(p.numel() for p in model.parameters())
            self.log(f"training {cfg['model']['name']} ({n_params / 1e6:.2f} M params, {num_classes} classes) on "
                     f"{len(train_base)} images of {cfg['data']['kind']} for {total} iterations, batch {bs}"
                     f"{f' ({world} processes x {per_rank_bs})' if world > 1 else ''}, device {device}"
                     f"{', amp ' + rt['amp_dtype'] if amp else ''}{', channels_last' if rt['channels_last'] else ''}"
                     f"; work dir {self.work_dir}")

        budget_s = sched["time_budget_min"] * 60.0
        # Training time so far (excludes validation and checkpoint writing); with a time budget it drives
        # the poly decay and the stop. Under DDP rank 0's clock is shared through the loss all-reduce so
        # that every rank uses the same learning rate and stops at the same iteration.
        train_time = float(ckpt.get("train_time_s", 0.0)) if ckpt is not None else 0.0
        local_time = train_time
        if budget_s and dist_info.is_main:
            self.log(f"time budget: {sched['time_budget_min']:g} min of training (poly decay over time, "
                     f"at most {total} iterations)")

        def progress_frac(i: int) -> float:
            if budget_s:
                return min(train_time / budget_s, 1.0)
            return i / total

        if self.progress and dist_info.is_main:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=None if budget_s else total, initial=start_iter, desc="train", unit="it",
                             dynamic_ncols=True, smoothing=0.05)
        net.train()
        t_start = self.clock()
        it_last, time_last = start_iter, train_time
        data_time = 0.0
        window: list[torch.Tensor] = []
        last_val: dict[str, Any] | None = None
        last_ckpt_it = start_iter
        it = start_iter
        data_iter = iter(loader)
        done = False
        try:
            while not done:
                t0 = self.clock()
                images, labels = next(data_iter)
                data_time += self.clock() - t0
                images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                labels = labels.to(device, non_blocking=True).long()
                lr = optim_cfg["min_lr"] + (optim_cfg["lr"] - optim_cfg["min_lr"]) * (
                    1.0 - progress_frac(it)) ** optim_cfg["power"]
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                    outputs = net(images)
                if isinstance(outputs, (tuple, list)):
                    outputs = tuple(o.float() for o in outputs)
                else:
                    outputs = outputs.float()
                loss, parts = criterion(outputs, labels)
                stats = torch.stack([loss.detach().float(),
                                     *(torch.as_tensor(parts.get(k, 0.0), device=loss.device).detach().float()
                                       for k in ("loss_main", "loss_aux"))])
                if dist_info.enabled:
                    clock = torch.tensor([local_time if dist_info.is_main else 0.0], dtype=torch.float64)
                    stats = gdist.all_reduce_sum(stats) / world
                    train_time = float(gdist.all_reduce_sum(clock).item())
                else:
                    train_time = local_time
                if not bool(torch.isfinite(stats).all()):
                    raise NonFiniteLossError(self._nonfinite_message(it + 1, stats, lr))
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                it += 1
                local_time += self.clock() - t0
                if not dist_info.enabled:
                    train_time = local_time
                window.append(stats)
                done = it >= total or (budget_s > 0 and train_time >= budget_s)

                if self._bar is not None:
                    self._bar.update(1)
                    if it % max(1, min(10, sched["log_interval"])) == 0 or done:
                        self._bar.set_postfix_str(f"loss {stats[0].item():.4f} lr {lr:.2e}", refresh=False)

                if it % sched["log_interval"] == 0 or done:
                    now = self.clock()
                    ips = (it - it_last) / max(local_time - time_last, 1e-9)
                    mean = torch.stack(window).mean(0).tolist()
                    window.clear()
                    if budget_s:
                        eta = max(budget_s - train_time, 0.0)
                        if self._bar is not None:
                            self._bar.total = it + int(eta * ips)
                    else:
                        eta = (total - it) / ips if ips > 0 else float("inf")
                    rec = {"type": "train", "iter": it, "loss": mean[0], "loss_main": mean[1], "loss_aux": mean[2],
                           "lr": lr, "it_per_s": ips, "data_time": data_time / max(it - it_last, 1),
                           "eta_s": eta, "elapsed_s": now - t_start, "train_time_s": train_time}
                    logger.write(rec)
                    if self._bar is None:
                        of = f"{it}" if budget_s else f"{it}/{total}"
                        self.log(f"iter {of}  loss {mean[0]:.4f} (main {mean[1]:.4f}, aux {mean[2]:.4f})  "
                                 f"lr {lr:.3e}  {ips:.3f} it/s  data {rec['data_time']:.3f}s  "
                                 f"eta {_fmt_time(eta)}")
                    it_last, time_last, data_time = it, local_time, 0.0

                do_val = val_set is not None and (
                    done or (sched["val_interval"] > 0 and it % sched["val_interval"] == 0))
                do_ckpt = done or (sched["ckpt_interval"] > 0 and it % sched["ckpt_interval"] == 0) \
                    or (self.kill_at is not None and it == self.kill_at)
                if do_val:
                    last_val = self._validate(model, val_set, eval_kwargs, it, logger)
                    improved = last_val["mIoU"] > best["mIoU"]
                    if improved:
                        best = {"mIoU": float(last_val["mIoU"]), "iteration": it}
                        if dist_info.is_main:
                            from gcnet.checkpoint import save_checkpoint

                            save_checkpoint(self.work_dir / "best.pth", model, iteration=it, best=best,
                                            results=_json_safe(last_val), train_config=cfg)
                    gdist.barrier()
                    net.train()
                if do_ckpt:
                    self._save(model, optimizer, scaler, sampler, it, best, cfg, world, local_time)
                    last_ckpt_it = it
                if self.kill_at is not None and it == self.kill_at and dist_info.is_main:
                    self.log(f"test hook: killing this process (SIGKILL) after iteration {it}")
                    sys.stdout.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
        finally:
            logger.close()
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            del data_iter

        seconds = self.clock() - t_start
        summary = {"iterations": it, "start_iteration": start_iter, "seconds": round(seconds, 1),
                   "train_time_s": round(local_time, 1),
                   "best": best, "final": _json_safe(last_val) if last_val else None,
                   "work_dir": str(self.work_dir), "last_checkpoint": str(self.work_dir / "latest.pth"),
                   "last_checkpoint_iteration": last_ckpt_it}
        if dist_info.is_main:
            (self.work_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            msg = f"done: {it - start_iter} iterations in {_fmt_time(seconds)}"
            if last_val:
                msg += f"; final mIoU {last_val['mIoU']:.2f}, best {best['mIoU']:.2f} at iteration {best['iteration']}"
            self.log(msg + f"; checkpoints in {self.work_dir}")
        return summary

    # -- pieces --------------------------------------------------------------------------------
    @staticmethod
    def _eval_kwargs(cfg, class_names, num_classes, ignore_index, device, amp_dtype) -> dict[str, Any]:
        e = cfg["eval"]
        return {"num_classes": num_classes, "ignore_index": ignore_index, "class_names": class_names,
                    "mode": e["mode"], "crop_size": e["crop_size"] or None, "stride": e["stride"] or None,
                    "scales": tuple(e["scales"]), "flip": e["flip"], "batch_size": e["batch_size"],
                    "workers": min(cfg["data"]["workers"], 2), "device": device, "amp_dtype": amp_dtype}

    def _validate(self, model, val_set, eval_kwargs, it, logger) -> dict[str, Any]:
        from gcnet.evaluation.inference import evaluate
        from gcnet.evaluation.metrics import format_table

        gdist.broadcast_buffers(model)
        res = evaluate(model, val_set, progress=self._bar is not None, desc=f"val @ {it}", **eval_kwargs)
        if self.dist.is_main:
            names = res["class_names"]
            logger.write({"type": "val", "iter": it, "mIoU": res["mIoU"], "aAcc": res["aAcc"], "mAcc": res["mAcc"],
                          "IoU": dict(zip(names, map(float, res["IoU"]))),
                          "Acc": dict(zip(names, map(float, res["Acc"]))), "seconds": res["seconds"]})
            self.log(f"validation at iteration {it} ({res['num_images']} images, {res['seconds']:.1f}s):\n"
                     + format_table(res, names))
        return res

    def _save(self, model, optimizer, scaler, sampler, it, best, cfg, world, train_time: float = 0.0) -> None:
        if self.dist.is_main:
            from gcnet.checkpoint import save_checkpoint

            extra = {"optimizer": optimizer.state_dict(), "iteration": it, "sampler": sampler.state(it),
                         "rng": _rng_state(), "best": best, "train_config": cfg, "world_size": world,
                         "train_time_s": float(train_time)}
            if scaler.is_enabled():
                extra["scaler"] = scaler.state_dict()
            latest = self.work_dir / "latest.pth"
            save_checkpoint(latest, model, **extra)
            _atomic_copy(latest, self.work_dir / f"iter_{it}.pth")
            keep = cfg["schedule"]["keep_ckpts"]
            if keep > 0:
                olds = sorted(self.work_dir.glob("iter_*.pth"), key=lambda p: _iter_of(p))
                for p in olds[:-keep]:
                    with contextlib.suppress(OSError):
                        p.unlink()
        gdist.barrier()

    def _nonfinite_message(self, it: int, stats: torch.Tensor, lr: float) -> str:
        latest = self.work_dir / "latest.pth"
        vals = ", ".join(f"{k} {v:.4g}" for k, v in zip(("loss", "main", "aux"), stats.tolist()))
        where = (f"the last good checkpoint is {latest} (kept unchanged)" if latest.exists()
                 else "no checkpoint was written before it")
        return (f"the training loss is not finite at iteration {it} ({vals}, lr {lr:.3g}); stopped. "
                f"{where}. Try a lower optim.lr, check the labels (values must be class indices or the "
                "ignore index), or disable mixed precision.")


def _iter_of(p: Path) -> int:
    try:
        return int(p.stem.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            os.link(src, tmp)  # same file system: no data copied
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def train(cfg: Mapping | str | Path, work_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Convenience wrapper: ``Trainer(cfg, work_dir, **kwargs).run()``."""
    return Trainer(cfg, work_dir, **kwargs).run()

