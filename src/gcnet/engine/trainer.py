"""Iteration-based training: the paper's recipe on one process or many (torchrun / DDP).

* Data: :mod:`gcnet.engine.sampler` (the data order is a pure function of the iteration).
* Optimiser: SGD (momentum, weight decay on every parameter, as the authors' mmseg config) with
  :func:`poly_lr` decay (mmseg ``PolyLR``), over iterations or, with a time budget, over training time.
* Loss: OHEM cross-entropy on the main head + ``aux_weight`` x the same on the auxiliary head.
* Each checkpoint iteration: ``latest.pth`` (+ ``iter_N.pth``) is written first, then the log record,
  validation and ``best.pth``; a validation that fails loses no training. See :mod:`gcnet.engine.run_state`.
* Logging: a tqdm bar (loss, lr, it/s, ETA) or plain log lines when not on a terminal,
  ``metrics.jsonl`` and TensorBoard (``tb/``, if tensorboard is installed).
* A non-finite loss stops training with :class:`NonFiniteLossError` naming the iteration;
  nothing is written for that iteration, so the last checkpoint stays the last good one.
* Mixed precision: autocast (bf16 on CUDA or CPU; fp16 with a GradScaler on CUDA).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gcnet import distributed as gdist
from gcnet.data.loading import worker_init
from gcnet.data.metadata import DatasetInfo
from gcnet.engine.builders import (
    build_criterion,
    build_datasets,
    build_model_from_config,
    build_optimizer,
    build_train_transform,
    check_crop_size,
    check_datasets,
    load_init_weights,
)
from gcnet.engine.config import TrainConfig, config_diff, load_config
from gcnet.engine.logs import MetricsLog, fmt_time, json_safe
from gcnet.engine.run_state import Resume, RunDir, capture_rng, read_resume, restore_rng, resume_command, sigint_deferred
from gcnet.engine.sampler import InfiniteBatchSampler, SeededTrainSet
from gcnet.errors import CheckpointError, ConfigError, GCNetError
from gcnet.fileio import write_text
from gcnet.models.complexity import count_params

__all__ = ["NonFiniteLossError", "Trainer", "poly_lr"]


class NonFiniteLossError(GCNetError):
    """The training loss became NaN or infinite."""


def poly_lr(base_lr: float, iteration: float, total: float, power: float = 0.9, min_lr: float = 0.0) -> float:
    """Learning rate at ``iteration`` (0-based) of ``total`` (mmseg ``PolyLR`` with ``eta_min``); also for
    elapsed training seconds of a time budget."""
    frac = min(max(iteration, 0), total) / total
    return (base_lr - min_lr) * (1.0 - frac) ** power + min_lr


@dataclass
class _Session:
    """Everything one call of :meth:`Trainer.run` builds, and the loop's counters."""

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    criterion: Callable
    sampler: InfiniteBatchSampler
    loader: torch.utils.data.DataLoader
    val_set: Any
    info: DatasetInfo  # class names and palette, stored in every checkpoint
    logger: MetricsLog
    eval_kwargs: dict[str, Any]
    device: torch.device
    amp: bool
    amp_dtype: torch.dtype
    memory_format: torch.memory_format
    start_iter: int
    state: dict[str, Any]  # run_id, iter_ckpts, best, pending_val: carried by every checkpoint
    last_ckpt: Path | None
    last_ckpt_it: int
    train_time: float = 0.0  # training seconds so far (shared by rank 0 under DDP): drives a time budget
    local_time: float = 0.0
    it: int = 0
    last_val: dict[str, Any] | None = None
    window: list[torch.Tensor] = field(default_factory=list)
    it_last: int = 0
    time_last: float = 0.0
    data_time: float = 0.0
    t_start: float = 0.0


class Trainer:
    """Train a GCNet according to a config (see :mod:`gcnet.engine.config`).

    Args:
        cfg: a :class:`TrainConfig`, a config dict, a preset name or a TOML path.
        work_dir: output folder (checkpoints, ``config.toml``, ``metrics.jsonl``, ``tb/``).
        resume: ``None``/``False`` to start fresh, ``True`` for ``work_dir/latest.pth``, or a path.
        overwrite: allow starting fresh in a ``work_dir`` that already holds a run (its files are moved
            into a ``replaced-<time>/`` subfolder).
        progress: tqdm bar (default: when stderr is a terminal); otherwise plain log lines.
        criterion: replaces the OHEM loss (called as ``criterion(outputs, labels) -> (loss, parts)``).
        kill_at: test hook: SIGKILL this process at the end of this iteration (after its checkpoint).
        check_data: scan every training and validation file before training (``--skip-data-check``).
        clock: seconds counter for the timings and the time budget (tests inject a fake one).
    """

    def __init__(self, cfg: TrainConfig | Mapping | str | Path, work_dir: str | Path, *,
                 resume: bool | str | Path | None = None, overwrite: bool = False, progress: bool | None = None,
                 criterion: Callable | None = None, kill_at: int | None = None,
                 log: Callable[[str], None] | None = None, check_data: bool = True,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if isinstance(cfg, TrainConfig):
            self.cfg = cfg
        else:
            self.cfg = TrainConfig.from_dict(cfg) if isinstance(cfg, Mapping) else TrainConfig.load(cfg)
        self.run_dir = RunDir(work_dir)
        self.work_dir = self.run_dir.path
        self.resume = resume
        self.overwrite = overwrite
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.custom_criterion = criterion
        self.kill_at = kill_at
        self.check_data = check_data
        self.clock = clock
        self._log_fn = log or (lambda msg: print(msg, flush=True))
        self.dist = gdist.DistInfo()
        self.model: nn.Module | None = None  # the trained module (unwrapped), e.g. for tests or notebooks
        self._bar = None

    def log(self, msg: str) -> None:
        if self.dist.is_main:
            if self._bar is not None:
                self._bar.write(msg)
            else:
                self._log_fn(msg)

    def run(self, keep_process_group: bool = False) -> dict[str, Any]:
        """Train; returns a summary dict (also written to ``work_dir/summary.json``). The process group
        that torchrun's environment made this call create is destroyed at the end unless
        ``keep_process_group``."""
        self.dist = gdist.init_from_env(gdist.resolve_device(self.cfg.runtime.device).type)
        s = None
        try:
            resume = read_resume(self.work_dir, self.resume) if self.resume else None
            if resume is not None and self._finished(resume):
                return {"iterations": resume.iteration, "best": _validated(resume.ckpt.get("best", {"mIoU": -1.0})),
                        "final": None, "work_dir": str(self.work_dir)}
            s = self._setup(resume)
            if s.state["pending_val"]:  # resumed from a checkpoint whose validation did not complete
                with self._resume_hint(s):
                    self._validate(s)
            if s.start_iter >= self.cfg.schedule.iters:  # the pending validation was all that was left
                return {"iterations": s.start_iter, "best": _validated(s.state["best"]), "final": None,
                        "work_dir": str(self.work_dir)}
            with self._resume_hint(s):
                self._loop(s)
            return self._finish(s)
        finally:
            if s is not None:
                s.logger.close()
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            if not keep_process_group:
                gdist.cleanup()

    # -- setup: every check first, then the first write ------------------------------------------------
    def _runtime(self) -> tuple[torch.device, bool, torch.dtype, torch.memory_format]:
        runtime = self.cfg.runtime
        device = gdist.resolve_device(runtime.device, self.dist.local_rank)
        if runtime.threads > 0:
            torch.set_num_threads(runtime.threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = not runtime.deterministic
        if runtime.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        amp = runtime.amp and device.type in ("cuda", "cpu")
        if runtime.amp and not amp:
            self.log(f"note: runtime.amp is ignored on {device.type} (mixed precision is for CUDA and CPUs)")
        amp_dtype = torch.bfloat16 if runtime.amp_dtype == "bf16" else torch.float16
        if amp and device.type == "cpu" and amp_dtype == torch.float16:
            raise ConfigError("runtime.amp_dtype fp16 needs CUDA; use bf16 for mixed precision on a CPU")
        if self.cfg.data.batch_size % self.dist.world_size:
            raise ConfigError(f"data.batch_size={self.cfg.data.batch_size} is not divisible by the "
                              f"{self.dist.world_size} processes")
        return device, amp, amp_dtype, torch.channels_last if runtime.channels_last else torch.contiguous_format

    def _changed_keys(self, resume) -> list[str]:
        """Config keys whose values differ from those the checkpoint was trained with."""
        saved = resume.ckpt.get("train_config")
        return config_diff(load_config(saved), self.cfg.to_dict()) if isinstance(saved, dict) else []

    def _build_model(self, resume, device: torch.device, memory_format) -> nn.Module:
        cfg = self.cfg
        seed = cfg.runtime.seed
        torch.manual_seed(seed)
        np.random.seed(seed % (2**32))
        random.seed(seed)
        model = build_model_from_config(cfg.model)
        if resume is not None:
            from gcnet.checkpoint import load_weights

            try:
                load_weights(model, resume.ckpt)
            except CheckpointError as exc:
                keys = [k for k in self._changed_keys(resume) if k.startswith("model.")]
                what = (f"its model differs from this config's in {', '.join(keys)}" if keys
                        else str(exc).removeprefix("state dict: ").splitlines()[0])
                raise CheckpointError(f"cannot resume from {resume.path}: {what}\n(leave out CONFIG to use the run's "
                                      "config.toml, or start a new run in another --work-dir)") from None
        elif cfg.init.load_from:  # every rank loads (DDP would broadcast rank 0's anyway); rank 0 talks
            load_init_weights(model, cfg.init.load_from, self.log if self.dist.is_main else (lambda m: None))
        if cfg.model.sync_bn and self.dist.enabled:
            if device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                self.log("note: model.sync_bn is ignored on CPU (SyncBatchNorm needs CUDA); using BatchNorm")
        return model.to(device, memory_format=memory_format)

    def _build_data(self, start_iter: int, resume):
        cfg, dist = self.cfg, self.dist
        train_base, val_set, info = build_datasets(cfg, self.log)
        num_classes = cfg.model.num_classes
        if len(info.classes) != num_classes:
            raise ConfigError(f"model.num_classes is {num_classes} but the {info.name} dataset has "
                              f"{len(info.classes)} classes")
        if len(train_base):
            check_crop_size(cfg.data, train_base.load_image(0).shape[:2])
        if self.check_data:
            check_datasets((train_base, val_set), progress=self.progress)
        train_set = SeededTrainSet(train_base, build_train_transform(cfg.data, info.ignore_index), cfg.runtime.seed)
        sampler = InfiniteBatchSampler(len(train_set), cfg.data.batch_size // dist.world_size, seed=cfg.runtime.seed,
                                       rank=dist.rank, world_size=dist.world_size, start_iter=start_iter)
        if resume is not None and resume.ckpt.get("sampler") and not sampler.matches(resume.ckpt["sampler"]):
            self.log("warning: the number of processes, batch size, seed or dataset size changed since the "
                     "checkpoint; training continues but the data order is not the uninterrupted run's")
        return train_set, val_set, info, sampler

    def _finished(self, resume: Resume) -> bool:
        """Whether the checkpoint already reached schedule.iters with nothing pending; said, and nothing is
        written (not even config.toml), so resuming a finished run leaves it as it was."""
        iters = self.cfg.schedule.iters
        if resume.iteration < iters or resume.ckpt.get("pending_val"):
            return False
        self.log(f"nothing to do: {resume.path} is at iteration {resume.iteration} >= schedule.iters {iters}; "
                 "nothing was changed (raise --schedule.iters to train further)")
        return True

    def _setup(self, resume: Resume | None) -> _Session:
        cfg = self.cfg
        device, amp, amp_dtype, memory_format = self._runtime()
        if resume is None:
            move_away = self.run_dir.previous_run(self.overwrite)
        else:
            move_away = self.run_dir.later_timeline(resume)
            diff = [k for k in self._changed_keys(resume) if not k.startswith("runtime.")]
            if diff:
                self.log(f"warning: resuming with a config that differs from {resume.path}'s in: {', '.join(diff)}")
        model = self._build_model(resume, device, memory_format)
        start_iter = resume.iteration if resume is not None else 0
        train_set, val_set, info, sampler = self._build_data(start_iter, resume)
        optimizer = build_optimizer(model, cfg.optim)
        scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
        state = {"run_id": uuid.uuid4().hex, "iter_ckpts": [], "best": {"mIoU": -1.0, "iteration": 0},
                 "pending_val": False}
        if resume is not None:
            optimizer.load_state_dict(resume.ckpt["optimizer"])
            if resume.ckpt.get("scaler") and scaler.is_enabled():
                scaler.load_state_dict(resume.ckpt["scaler"])
            state.update({k: resume.ckpt[k] for k in state if k in resume.ckpt})
            state["iter_ckpts"] = list(state["iter_ckpts"])
            state["best"] = dict(state["best"])
        criterion = self.custom_criterion or build_criterion(cfg.loss, info.ignore_index).to(device)
        gdist.on_main(lambda: self.run_dir.prepare(cfg.to_dict(), move_away, self.log))  # the first write
        if resume is not None:
            if resume.ckpt.get("rng"):
                restore_rng(resume.ckpt["rng"])
            self.log(f"resumed from {resume.path} at iteration {start_iter}")
        self.model = model
        net = model
        if self.dist.enabled:
            net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.data.workers,
                                             pin_memory=device.type == "cuda", persistent_workers=False,
                                             worker_init_fn=worker_init)
        # validation under autocast on CUDA only: on a CPU it stays float32
        eval_kwargs = {"num_classes": cfg.model.num_classes, "ignore_index": info.ignore_index,
                       "class_names": list(info.classes), **cfg.eval.evaluate_kwargs(),
                       "workers": min(cfg.data.workers, 2), "device": device,
                       "amp_dtype": amp_dtype if amp and device.type == "cuda" else None}
        train_time = float(resume.ckpt.get("train_time_s", 0.0)) if resume is not None else 0.0
        return _Session(model=model, net=net, optimizer=optimizer, scaler=scaler, criterion=criterion,
                        sampler=sampler, loader=loader, val_set=val_set, info=info,
                        logger=MetricsLog(self.work_dir, start_iter, self.dist.is_main, self.log),
                        eval_kwargs=eval_kwargs, device=device,
                        amp=amp, amp_dtype=amp_dtype, memory_format=memory_format, start_iter=start_iter,
                        state=state, last_ckpt=resume.path if resume is not None else None, last_ckpt_it=start_iter,
                        train_time=train_time, local_time=train_time, it=start_iter)

    # -- the loop ----------------------------------------------------------------------------------------
    def _announce(self, s: _Session) -> None:
        cfg, dist = self.cfg, self.dist
        if not dist.is_main:
            return
        n_params = count_params(s.model)
        world = dist.world_size
        procs = f" ({world} processes x {cfg.data.batch_size // world})" if world > 1 else ""
        extras = (f", amp {cfg.runtime.amp_dtype}" if s.amp else "") + (", channels_last" if cfg.runtime.channels_last
                                                                         else "")
        self.log(f"training {cfg.model.name} ({n_params / 1e6:.2f} M params, {cfg.model.num_classes} classes) on "
                 f"{s.sampler.n} images of {cfg.data.kind} for "
                 f"{cfg.schedule.iters} iterations, batch {cfg.data.batch_size}{procs}, device {s.device}{extras}; "
                 f"work dir {self.work_dir}")
        if cfg.schedule.time_budget_min:
            self.log(f"time budget: {cfg.schedule.time_budget_min:g} min of training (poly decay over time, "
                     f"at most {cfg.schedule.iters} iterations)")
        if self.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=None if cfg.schedule.time_budget_min else cfg.schedule.iters, initial=s.start_iter,
                             desc="train", unit="it", dynamic_ncols=True, smoothing=0.05)

    def _lr(self, s: _Session) -> float:
        o, sched = self.cfg.optim, self.cfg.schedule
        if sched.time_budget_min:
            return poly_lr(o.lr, s.train_time, sched.time_budget_min * 60.0, o.power, o.min_lr)
        return poly_lr(o.lr, s.it, sched.iters, o.power, o.min_lr)

    def _step(self, s: _Session, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """One optimiser step; returns the (all-reduced) ``[loss, loss_main, loss_aux]`` and the lr used."""
        images = images.to(s.device, non_blocking=True).contiguous(memory_format=s.memory_format)
        labels = labels.to(s.device, non_blocking=True).long()
        lr = self._lr(s)
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(s.device.type, dtype=s.amp_dtype, enabled=s.amp):
            outputs = s.net(images)
        outputs = tuple(o.float() for o in outputs) if isinstance(outputs, (tuple, list)) else outputs.float()
        loss, parts = s.criterion(outputs, labels)
        stats = torch.stack([loss.detach().float(),
                             *(torch.as_tensor(parts.get(k, 0.0), device=loss.device).detach().float()
                               for k in ("loss_main", "loss_aux"))])
        if self.dist.enabled:  # every rank uses rank 0's clock: the same lr and the same stopping iteration
            clock = torch.tensor([s.local_time if self.dist.is_main else 0.0], dtype=torch.float64)
            stats = gdist.all_reduce_sum(stats) / self.dist.world_size
            s.train_time = float(gdist.all_reduce_sum(clock).item())
        else:
            s.train_time = s.local_time
        if not bool(torch.isfinite(stats).all()):
            raise NonFiniteLossError(self._nonfinite_message(s.it + 1, stats, lr))
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(loss).backward()
        s.scaler.step(s.optimizer)
        s.scaler.update()
        return stats, lr

    def _loop(self, s: _Session) -> None:
        sched = self.cfg.schedule
        budget_s = sched.time_budget_min * 60.0
        self._announce(s)
        s.net.train()
        s.t_start = self.clock()
        s.it_last, s.time_last = s.start_iter, s.local_time
        data_iter = iter(s.loader)
        done = False
        try:
            while not done:
                t0 = self.clock()
                images, labels = next(data_iter)
                s.data_time += self.clock() - t0
                stats, lr = self._step(s, images, labels)
                s.it += 1
                s.local_time += self.clock() - t0
                if not self.dist.enabled:
                    s.train_time = s.local_time
                s.window.append(stats)
                done = s.it >= sched.iters or (budget_s > 0 and s.train_time >= budget_s)
                self._after_step(s, stats, lr, done)
        except KeyboardInterrupt:
            self.log(self._interrupted_message(s))
            raise
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            del data_iter

    def _after_step(self, s: _Session, stats: torch.Tensor, lr: float, done: bool) -> None:
        """Checkpoint first, then what may fail: the log record, validation, best.pth."""
        sched, it = self.cfg.schedule, s.it
        do_val = s.val_set is not None and (done or (sched.val_interval > 0 and it % sched.val_interval == 0))
        iter_file = done or (sched.ckpt_interval > 0 and it % sched.ckpt_interval == 0) or it == self.kill_at
        if iter_file or do_val:
            s.state["pending_val"] = do_val
            self._save(s, iter_file)
        if self._bar is not None:
            self._bar.update(1)
            if it % max(1, min(10, sched.log_interval)) == 0 or done:
                self._bar.set_postfix_str(f"loss {stats[0].item():.4f} lr {lr:.2e}", refresh=False)
        if it % sched.log_interval == 0 or done:
            self._log_train(s, lr)
        if do_val:
            self._validate(s)
        if it == self.kill_at and self.dist.is_main:
            self.log(f"test hook: killing this process (SIGKILL) after iteration {it}")
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def _log_train(self, s: _Session, lr: float) -> None:
        sched, it = self.cfg.schedule, s.it
        budget_s = sched.time_budget_min * 60.0
        ips = (it - s.it_last) / max(s.local_time - s.time_last, 1e-9)
        mean = torch.stack(s.window).mean(0).tolist()
        s.window.clear()
        if budget_s:
            eta = max(budget_s - s.train_time, 0.0)
            if self._bar is not None:
                self._bar.total = it + int(eta * ips)
        else:
            eta = (sched.iters - it) / ips if ips > 0 else float("inf")
        rec = {"type": "train", "iter": it, "loss": mean[0], "loss_main": mean[1], "loss_aux": mean[2], "lr": lr,
               "it_per_s": ips, "data_time": s.data_time / max(it - s.it_last, 1), "eta_s": eta,
               "elapsed_s": self.clock() - s.t_start, "train_time_s": s.train_time}
        s.logger.write(rec)
        if self._bar is None:
            of = f"{it}" if budget_s else f"{it}/{sched.iters}"
            self.log(f"iter {of}  loss {mean[0]:.4f} (main {mean[1]:.4f}, aux {mean[2]:.4f})  lr {lr:.3e}  "
                     f"{ips:.3f} it/s  data {rec['data_time']:.3f}s  eta {fmt_time(eta)}")
        s.it_last, s.time_last, s.data_time = it, s.local_time, 0.0

    # -- checkpoints and validation -----------------------------------------------------------------------
    def _save(self, s: _Session, iter_file: bool) -> None:
        state = {**s.state, "optimizer": s.optimizer.state_dict(), "iteration": s.it,
                 "sampler": s.sampler.state(s.it), "rng": capture_rng(), "train_config": self.cfg.to_dict(),
                 "world_size": self.dist.world_size, "train_time_s": float(s.local_time)}
        if s.scaler.is_enabled():
            state["scaler"] = s.scaler.state_dict()
        with sigint_deferred():
            gdist.on_main(lambda: self.run_dir.save(s.model, state, iter_file, self.cfg.schedule.keep_ckpts,
                                                     dataset=s.info))
            s.last_ckpt, s.last_ckpt_it = self.run_dir.latest, s.it

    def _validate(self, s: _Session) -> None:
        """Validate at ``s.it``; write best.pth if improved; mark latest.pth's validation done."""
        from gcnet.evaluation.inference import evaluate
        from gcnet.evaluation.metrics import format_table

        it = s.it
        gdist.broadcast_buffers(s.model)
        try:
            res = evaluate(s.model, s.val_set, progress=self._bar is not None, desc=f"val @ {it}", **s.eval_kwargs)
        except GCNetError as exc:
            raise type(exc)(f"validation at iteration {it} failed: {exc}") from None
        s.last_val = res
        if self.dist.is_main:
            names = res["class_names"]
            s.logger.write({"type": "val", "iter": it, "mIoU": res["mIoU"], "aAcc": res["aAcc"], "mAcc": res["mAcc"],
                            "IoU": dict(zip(names, map(float, res["IoU"]))),
                            "Acc": dict(zip(names, map(float, res["Acc"]))), "seconds": res["seconds"]})
            self.log(f"validation at iteration {it} ({res['num_images']} images, {res['seconds']:.1f}s):\n"
                     + format_table(res, names))
        state = s.state
        if res["mIoU"] > state["best"]["mIoU"]:
            state["best"] = {"mIoU": float(res["mIoU"]), "iteration": it}
            with sigint_deferred():
                gdist.on_main(lambda: self.run_dir.save_best(s.model, dataset=s.info, iteration=it, best=state["best"],
                                                            results=json_safe(res), train_config=self.cfg.to_dict(),
                                                            run_id=state["run_id"]))
        state["pending_val"] = False
        if s.last_ckpt == self.run_dir.latest:  # latest.pth is of this iteration: record the validation
            self._save(s, iter_file=False)
        s.net.train()

    def _finish(self, s: _Session) -> dict[str, Any]:
        seconds = self.clock() - s.t_start
        best = s.state["best"]
        summary = {"iterations": s.it, "start_iteration": s.start_iter, "seconds": round(seconds, 1),
                   "train_time_s": round(s.local_time, 1), "best": _validated(best),
                   "final": json_safe(s.last_val) if s.last_val else None, "work_dir": str(self.work_dir),
                   "last_checkpoint": str(self.run_dir.latest), "last_checkpoint_iteration": s.last_ckpt_it}
        if self.dist.is_main:
            write_text(self.work_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
            msg = f"done: {s.it - s.start_iter} iterations in {fmt_time(seconds)}"
            if s.last_val:
                msg += f"; final mIoU {s.last_val['mIoU']:.2f}, best {best['mIoU']:.2f} at iteration {best['iteration']}"
            self.log(msg + f"; checkpoints in {self.work_dir}")
        return summary

    # -- messages -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _resume_hint(self, s: _Session) -> Iterator[None]:
        """Add to a user-fixable error what is saved and the command that continues from it."""
        try:
            yield
        except NonFiniteLossError:
            raise
        except GCNetError as exc:
            if s.last_ckpt is None:
                raise
            raise type(exc)(f"{exc}\n(training up to iteration {s.last_ckpt_it} is saved in {s.last_ckpt}; fix the "
                            f"cause, then: {resume_command(self.work_dir, s.last_ckpt)})") from None

    def _nonfinite_message(self, it: int, stats: torch.Tensor, lr: float) -> str:
        latest = self.run_dir.latest
        vals = ", ".join(f"{k} {v:.4g}" for k, v in zip(("loss", "main", "aux"), stats.tolist()))
        where = (f"the last good checkpoint is {latest} (kept unchanged)" if latest.exists()
                 else "no checkpoint was written before it")
        return (f"the training loss is not finite at iteration {it} ({vals}, lr {lr:.3g}); stopped. "
                f"{where}. Try a lower optim.lr, check the labels (values must be class indices or the "
                "ignore index), or disable mixed precision.")

    def _interrupted_message(self, s: _Session) -> str:
        if s.last_ckpt is None:
            return (f"interrupted after iteration {s.it}, before the first checkpoint: nothing was saved; run the same "
                    "command again to start over")
        return (f"interrupted after iteration {s.it}; training up to iteration {s.last_ckpt_it} is saved in "
                f"{s.last_ckpt}. Continue with:\n  {resume_command(self.work_dir, s.last_ckpt)}")


def _validated(best: dict[str, Any]) -> dict[str, Any] | None:
    """The run's best validation, None where it never validated (e.g. ``data.val_split = ""``)."""
    return best if best["mIoU"] >= 0 else None
