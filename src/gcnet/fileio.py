"""Atomic file writing and the one list of image extensions gcnet reads.

Every file gcnet writes goes through :func:`atomic_path` (or :func:`atomic_write`): the content is
written to a hidden temporary name in the destination folder, optionally checked, and only then
renamed over the destination, so a crash, a kill or a failed check never leaves a partial file and
never destroys the previous version. A leaf module: it imports nothing from gcnet.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
TMP_MARKER = ".gcnet-tmp"


def is_image_file(path: str | os.PathLike) -> bool:
    """True for an existing file whose extension is one of :data:`IMAGE_EXTENSIONS`."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()


def temp_name(path: str | os.PathLike) -> Path:
    """A unique hidden sibling of ``path`` that keeps its suffix (writers choose formats by suffix)."""
    p = Path(path)
    return p.with_name(f".{p.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TMP_MARKER}{p.suffix}")


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; rename it into place on success.

    ``check(tmp)`` runs before the rename and may raise to refuse the result. On any exception
    (or a check failure) the temporary file is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{tmp}: the writer produced no file")
        if check is not None:
            check(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` only if the block completes."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as f:
        yield f
        f.flush()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files left in ``folder`` by a killed writer; returns what was removed."""
    removed = []
    for p in Path(folder).glob(f".*{TMP_MARKER}*"):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed
