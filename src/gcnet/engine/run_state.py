"""A training run's folder: checkpoints of the run state, resuming, replacing a previous run.

* ``latest.pth`` after every checkpoint, ``iter_N.pth`` every ``ckpt_interval`` iterations, ``best.pth`` on
  the best validation mIoU; each written atomically, readable with ``torch.load(weights_only=True)``.
* Every checkpoint records the run (``run_id``) and the ``iter_N.pth`` files this run wrote
  (``iter_ckpts``); pruning (``keep_ckpts``) removes only the oldest of those, never another run's files.
* Starting again with ``--overwrite`` moves the previous run's files into ``replaced-<time>/``; resuming
  from an earlier checkpoint moves the later checkpoints of the abandoned continuation there too. Both
  are said; nothing a user made is deleted.
* RNG state (python, numpy, torch, CUDA) is captured in checkpoints and restored on resume.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gcnet.data.metadata import DatasetInfo
from gcnet.engine.config import save_config
from gcnet.errors import CheckpointError, ConfigError
from gcnet.fileio import atomic_path, remove_stale_temps

__all__ = ["Resume", "RunDir", "capture_rng", "read_resume", "restore_rng", "resume_command", "sigint_deferred"]

_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt")
_RUN_FILES = ("latest.pth", "best.pth", "metrics.jsonl", "summary.json", "config.toml", "tb")


def capture_rng() -> dict[str, Any]:
    """The global RNG states, in a form ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": [int(x) for x in keys], "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(py[0]), "state": [int(x) for x in py[1]]},
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (parts that do not fit this machine are skipped)."""
    with contextlib.suppress(Exception):
        torch.set_rng_state(state["torch"].cpu())
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


def resume_command(work_dir: Path, checkpoint: Path | None = None) -> str:
    """The command that continues the run in ``work_dir`` (from ``checkpoint`` if not its latest.pth)."""
    cmd = "gcnet train --resume"
    if checkpoint is not None and checkpoint != work_dir / "latest.pth":
        cmd += f" {shlex.quote(str(checkpoint))}"
    return f"{cmd} --work-dir {shlex.quote(str(work_dir))}"


def iteration_of(path: Path) -> int:
    """N of ``iter_N.pth`` (-1 for other names)."""
    try:
        return int(path.stem.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1


@dataclass
class Resume:
    """A training checkpoint to continue from."""

    path: Path
    ckpt: dict[str, Any]

    @property
    def iteration(self) -> int:
        return int(self.ckpt["iteration"])


def read_resume(work_dir: Path, resume: bool | str | os.PathLike) -> Resume:
    """Read the checkpoint ``--resume`` names: ``True`` = ``work_dir/latest.pth``, a file, or a run folder.
    A missing or unreadable one is refused naming the newest other ``iter_N.pth`` beside it to pass instead."""
    from gcnet.checkpoint import read_checkpoint

    path = work_dir / "latest.pth" if resume is True else Path(resume)
    if path.is_dir():
        path = path / "latest.pth"
    if not path.is_file():
        first = " (no checkpoint was written yet?)"
        raise CheckpointError(f"cannot resume: {path} does not exist{_instead(path, first)}")
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as exc:
        if path.suffix.lower() not in _CHECKPOINT_SUFFIXES:
            raise CheckpointError(f"cannot resume from {path}: not a checkpoint; --resume takes a run folder or "
                                  "one of its checkpoints (latest.pth, iter_N.pth)") from None
        raise CheckpointError(str(exc).rstrip(".") + _instead(path, "")) from None
    if not isinstance(ckpt, dict) or "optimizer" not in ckpt or "iteration" not in ckpt:
        raise CheckpointError(f"{path}: not a training checkpoint (no optimizer/iteration state)")
    return Resume(path, ckpt)


def _instead(path: Path, otherwise: str) -> str:
    """'; pass --resume <the newest iter_N.pth beside path that is another file>', or ``otherwise``."""
    for other in reversed(RunDir(path.parent).iter_files()):
        if other != path and not (path.exists() and os.path.samefile(other, path)):  # iter files are hard links
            return f"; resume from the newest other checkpoint there: --resume {shlex.quote(str(other))}"
    return otherwise


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) until the block is done, then raise KeyboardInterrupt: an interrupted
    ``torch.save`` would otherwise surface as an unrelated write error."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield  # not ours to change (another thread, Ctrl-C ignored or handled elsewhere)
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _writing_checkpoint(path: Path) -> Iterator[None]:
    """Turn a failed checkpoint write (full disk, I/O error) into a CheckpointError saying what to do."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        text = str(exc)
        if isinstance(exc, RuntimeError) and not any(
                s in text for s in ("inline_container", "PytorchStreamWriter", "file write failed")):
            raise
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else text.strip().splitlines()[0][:160]
        raise CheckpointError(f"could not write checkpoint {path}: disk full? ({reason}); any earlier "
                              "checkpoint is intact") from None


class RunDir:
    """The files of one training run in ``path`` (rank 0 writes them)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.latest = self.path / "latest.pth"
        self.best = self.path / "best.pth"

    def iter_files(self) -> list[Path]:
        return sorted(self.path.glob("iter_*.pth"), key=iteration_of)

    # -- before anything is written -------------------------------------------------------------------
    def previous_run(self, overwrite: bool) -> list[Path]:
        """Files of an earlier run that a fresh start replaces; refuses unless ``overwrite``."""
        ckpts = [p for p in (self.latest, self.best, *self.iter_files()) if p.exists()]
        if ckpts and not overwrite:
            raise ConfigError(f"{self.path} already holds a training run ({', '.join(p.name for p in ckpts[:3])}"
                              f"{', ...' if len(ckpts) > 3 else ''}); pass --resume to continue it, --overwrite to "
                              "start again (its files are moved to a replaced-* subfolder), or choose another "
                              "--work-dir")
        if not ckpts:
            return []
        return [*ckpts, *(p for p in (self.path / n for n in _RUN_FILES[2:]) if p.exists())]

    def later_timeline(self, resume: Resume) -> list[Path]:
        """Checkpoints that continue past the one being resumed (an abandoned continuation of the run)."""
        from gcnet.checkpoint import read_checkpoint

        later = [p for p in self.iter_files() if iteration_of(p) > resume.iteration]
        if not later:
            return []
        if self.latest.exists() and self.latest.resolve() != resume.path.resolve():
            later.append(self.latest)
        if self.best.exists():
            with contextlib.suppress(CheckpointError):
                best = read_checkpoint(self.best)
                if int(best.get("iteration", 0)) > resume.iteration:
                    later.append(self.best)
        return later

    # -- writing ----------------------------------------------------------------------------------------
    def prepare(self, cfg: Mapping, move_away: list[Path], log: Callable[[str], None]) -> None:
        """Create the folder, clear temporary files of killed writers, move ``move_away`` into a
        ``replaced-<time>/`` subfolder (said), write the resolved ``config.toml``."""
        try:
            self._prepare(cfg, move_away, log)
        except OSError as exc:
            raise ConfigError(f"cannot write to the run folder {self.path}: {exc.strerror or exc}") from None

    def _prepare(self, cfg: Mapping, move_away: list[Path], log: Callable[[str], None]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path)
        if move_away:
            dest = self.path / time.strftime("replaced-%Y%m%d-%H%M%S")
            n = 1
            while dest.exists():
                n += 1
                dest = dest.with_name(f"{dest.name.split('.')[0]}.{n}")
            dest.mkdir()
            for p in move_away:
                shutil.move(str(p), str(dest / p.name))
            log(f"moved the earlier files {', '.join(p.name for p in move_away)} to {dest} "
                "(delete that folder when you no longer need them)")
        save_config(cfg, self.path / "config.toml", header="resolved training config (gcnet train)")

    def save(self, model: nn.Module, state: dict[str, Any], iter_file: bool, keep: int,
             dataset: DatasetInfo | None = None) -> None:
        """Write ``latest.pth`` (and ``iter_N.pth``), then prune: ``state["iter_ckpts"]`` (the run's iter files,
        oldest first) is updated in place to the newest ``keep``, the older ones are deleted once written.
        ``dataset`` (class names, palette) travels in the file for ``gcnet predict``."""
        from gcnet.checkpoint import save_checkpoint

        history: list[str] = state["iter_ckpts"]
        name = f"iter_{state['iteration']}.pth"
        dropped: list[str] = []
        if iter_file:
            history[:] = [n for n in history if n != name] + [name]
            if keep > 0:
                dropped = history[:-keep]
                del history[:-keep]
        with _writing_checkpoint(self.latest):
            save_checkpoint(self.latest, model, dataset=dataset, **state)
        if not iter_file:
            return
        with _writing_checkpoint(self.path / name), atomic_path(self.path / name) as tmp:
            try:
                os.link(self.latest, tmp)  # same file system: no data copied
            except OSError:
                shutil.copyfile(self.latest, tmp)
        for old in dropped:
            with contextlib.suppress(OSError):
                (self.path / old).unlink()

    def save_best(self, model: nn.Module, dataset: DatasetInfo | None = None, **extra: Any) -> None:
        from gcnet.checkpoint import save_checkpoint

        with _writing_checkpoint(self.best):
            save_checkpoint(self.best, model, dataset=dataset, **extra)
