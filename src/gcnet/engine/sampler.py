"""Training data order: an endless, seeded, sharded sampler and per-sample seeded augmentation.

Batch ``i`` is a pure function of ``(seed, i, rank, world_size)`` and each sample's augmentation RNG is
derived from ``(seed, epoch, index)``, so worker processes, prefetching and ``--resume`` never change what
the model sees.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch

from gcnet.errors import DatasetError

__all__ = ["InfiniteBatchSampler", "SeededTrainSet"]


class InfiniteBatchSampler:
    """Endless, seeded, sharded batches of ``(epoch, index)`` keys.

    Every epoch is a permutation of the dataset drawn from ``(seed, epoch)``; like
    ``DistributedSampler`` it is padded to a multiple of ``world_size`` and rank ``r`` takes
    positions ``r, r + world_size, ...``. Each rank's shards are concatenated epoch after epoch and
    cut into batches of ``batch_size`` (per process), so batch ``i`` depends only on ``i``:
    ``start_iter`` resumes the exact data order.
    """

    def __init__(self, dataset_len: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_iter: int = 0) -> None:
        if dataset_len < 1:
            raise DatasetError("the training set is empty")
        self.n, self.batch_size, self.seed = dataset_len, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.start_iter = start_iter
        self.shard_len = math.ceil(dataset_len / world_size)
        self._cache: tuple[int, np.ndarray] | None = None

    def _shard(self, epoch: int) -> np.ndarray:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        total = self.shard_len * self.world_size
        if total > self.n:
            order = np.concatenate([order, order[: total - self.n]])
        shard = order[self.rank::self.world_size]
        self._cache = (epoch, shard)
        return shard

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        """The ``(epoch, index)`` keys of batch ``iteration`` (0-based) on this rank."""
        start = iteration * self.batch_size
        keys = []
        for p in range(start, start + self.batch_size):
            epoch, pos = divmod(p, self.shard_len)
            keys.append((epoch, int(self._shard(epoch)[pos])))
        return keys

    def state(self, iteration: int) -> dict[str, int]:
        """What a checkpoint records about the data order after ``iteration`` batches."""
        epoch, pos = divmod(iteration * self.batch_size, self.shard_len)
        return {"seed": self.seed, "epoch": epoch, "position": pos, "iteration": iteration,
                "batch_size": self.batch_size, "world_size": self.world_size, "dataset_len": self.n}

    def matches(self, state: dict) -> bool:
        """Whether a checkpoint's :meth:`state` was recorded with this sampler's settings."""
        return (state.get("world_size"), state.get("batch_size"), state.get("dataset_len"), state.get("seed")) == (
            self.world_size, self.batch_size, self.n, self.seed)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
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

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        image, label = self.base[index]
        ss = np.random.SeedSequence([self.seed, epoch, index])
        if self._rng_arg:
            return self.transform(image, label, rng=np.random.default_rng(ss))
        with _seeded_global_rngs(int(ss.generate_state(1, dtype=np.uint64)[0] % (2**63))):
            return self.transform(image, label)
