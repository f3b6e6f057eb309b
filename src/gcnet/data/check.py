"""Where dataset checks remember their results, so a second run over unchanged files costs only a ``stat``.

:meth:`gcnet.data.datasets.SegmentationDataset.validate` keeps one small JSON file per data set in
:func:`cache_dir` (``datacheck`` under :func:`gcnet.fileio.gcnet_home`). The file name is a digest of
what the check depends on (dataset kind, root,
split, label space, label decoding, check version); inside, each sample that passed is stored with the
(size, mtime_ns) of its image and label, so changing, replacing or touching a file re-checks that sample
only. The cache is an optimisation: an unreadable, corrupt or unwritable cache is ignored, never fatal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from gcnet.fileio import gcnet_home, write_text

CHECK_VERSION = 1  # bump when what validate() checks changes: older cache files are then ignored

__all__ = ["CHECK_VERSION", "cache_dir", "file_stamp", "CheckCache", "write_report"]


def cache_dir() -> Path:
    """Folder of the dataset-check cache files (not created here)."""
    return gcnet_home() / "datacheck"


def file_stamp(path: Path) -> list[int] | None:
    """``[size, mtime_ns]`` of a file, or None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


class CheckCache:
    """Per-sample results of earlier checks of one data set.

    ``key`` is a JSON-able description of what the results depend on; entries are
    ``{"stamps": [image stamp, label stamp], "values": bool, "images": bool, "ignore": int, "counts": [int]}``.
    A disabled cache (``enabled=False``, e.g. for a label decoder that cannot be fingerprinted) remembers
    nothing between runs.
    """

    def __init__(self, key: dict[str, Any], enabled: bool = True) -> None:
        self.key = {"version": CHECK_VERSION, **key}
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        self.path = cache_dir() / f"{digest}.json"
        self.report_path = cache_dir() / f"{digest}-problems.txt"
        self.enabled = enabled
        self.entries: dict[str, dict[str, Any]] = self._load() if enabled else {}
        self._dirty = False

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("key") != json.loads(json.dumps(self.key, default=str)):
                return {}
            entries = data["entries"]
            return {str(k): v for k, v in entries.items() if isinstance(v, dict)}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return {}

    def lookup(self, name: str, stamps: list, check_values: bool, check_images: bool) -> dict[str, Any] | None:
        """The stored entry of sample ``name`` if its files are unchanged and it was checked at least as fully."""
        entry = self.entries.get(name)
        if entry is None or None in stamps or entry.get("stamps") != stamps:
            return None
        if (check_values and not entry.get("values")) or (check_images and not entry.get("images")):
            return None
        counts = entry.get("counts")
        if check_values and not (isinstance(counts, list) and len(counts) == self.key.get("num_classes")
                                 and all(type(c) is int for c in counts) and type(entry.get("ignore")) is int):
            return None  # an entry edited or damaged by hand
        return entry

    def store(self, name: str, entry: dict[str, Any]) -> None:
        self.entries[name] = entry
        self._dirty = True

    def keep_only(self, names: set[str]) -> None:
        """Forget samples that are no longer in the data set."""
        stale = set(self.entries) - names
        for name in stale:
            del self.entries[name]
        self._dirty = self._dirty or bool(stale)

    def save(self) -> None:
        """Write the cache atomically when it changed; failures are ignored (the cache is optional)."""
        if not (self.enabled and self._dirty):
            return
        with contextlib.suppress(OSError):
            write_text(self.path, json.dumps({"key": self.key, "entries": self.entries}, default=str))
            self._dirty = False


def write_report(path: Path, lines: list[str]) -> Path | None:
    """Write ``lines`` (a full list of problems) to ``path``; the path, or None when it cannot be written."""
    try:
        return write_text(path, "\n".join(lines) + "\n")
    except OSError:
        return None
