"""Atomic file writing, the one list of image extensions gcnet reads, and where gcnet keeps its caches.

Every file gcnet writes goes through :func:`atomic_path` (or :func:`atomic_write`): the content is
written to a hidden temporary name in the destination folder, optionally checked, and only then
renamed over the destination, so a crash, a kill or a failed check never leaves a partial file and
never destroys the previous version. A leaf module: it imports nothing from gcnet.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
TMP_MARKER = ".gcnet-tmp"


def gcnet_home() -> Path:
    """Where gcnet keeps its caches (downloaded weights, data-check results): ``$GCNET_HOME``, else
    ``$XDG_CACHE_HOME/gcnet``, else ``~/.cache/gcnet``. Not created here."""
    home = os.environ.get("GCNET_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "gcnet"


def is_image_file(path: str | os.PathLike) -> bool:
    """True for an existing file whose extension is one of :data:`IMAGE_EXTENSIONS`."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()


MAX_NAME_BYTES = 255  # bytes in a file name on common file systems


def temp_name(path: str | os.PathLike) -> Path:
    """A unique hidden sibling of ``path`` that keeps its suffix (writers choose formats by suffix); the
    stem is shortened where the temporary name would be too long although ``path``'s own name is not."""
    p = Path(path)
    tag = f".{os.getpid()}-{uuid.uuid4().hex[:8]}{TMP_MARKER}{p.suffix}"
    stem = p.stem.encode()[: max(1, MAX_NAME_BYTES - 1 - len(tag.encode()))].decode(errors="ignore")
    return p.with_name(f".{stem}{tag}")


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        os.fsync(f.fileno())


def folder_problem(path: str | os.PathLike) -> str | None:
    """Why files cannot be written into folder ``path`` (to be created if missing), or None if they can.
    Checked before long work; nothing is created (a probe folder is made and removed)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{path} exists and is not a folder"
    if path.is_symlink() and not path.exists():
        return f"{path} is a symbolic link to a missing folder ({os.readlink(path)}); create it or give another path"
    existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        return f"cannot create folder {path}: {existing} is a file"
    try:  # a real probe: permission bits do not tell for root, read-only mounts or /proc
        tempfile.TemporaryDirectory(dir=existing, prefix=".gcnet-probe-").cleanup()
    except OSError:
        return f"{existing} is not writable" if existing == path else f"cannot create {path}: {existing} is not writable"
    return None


def _make_folder(folder: Path) -> list[Path]:
    """``mkdir -p folder``; returns the folders it made, innermost first, for :func:`_remove_made`."""
    made = []
    while not folder.exists() and folder != folder.parent:
        made.append(folder)
        folder = folder.parent
    if made:
        made[0].mkdir(parents=True, exist_ok=True)
    return made


def _remove_made(made: list[Path]) -> None:
    """Remove the folders :func:`_make_folder` made, innermost first, as long as they are empty."""
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, check: Callable[[Path], None] | None = None,
                companions: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; rename it into place on success.

    ``check(tmp)`` runs before the rename and may raise to refuse the result. ``companions`` are
    suffixes of files the writer puts beside the temporary file (OpenVINO writes ``.bin`` next to
    ``.xml``): each must exist and is renamed to ``path`` with that suffix first, so the main file
    only ever appears next to complete companions. On any exception (or a check failure) every
    temporary file, and every folder made for ``path``, is removed and the existing files are left untouched.
    """
    path = Path(path)
    tmp = temp_name(path)
    extra = [(tmp.with_suffix(s), path.with_suffix(s)) for s in companions]
    for final in [path, *(f for _, f in extra)]:
        if final.is_dir():  # refused before the work, not by the rename after it
            raise IsADirectoryError(errno.EISDIR, "a folder is in the way of this file", str(final))
    made, done = _make_folder(path.parent), False
    try:
        yield tmp
        for produced in [tmp, *(t for t, _ in extra)]:
            if not produced.exists():
                raise FileNotFoundError(f"{produced}: the writer produced no file")
        if check is not None:
            check(tmp)
        for produced, final in [*extra, (tmp, path)]:
            _fsync(produced)
            os.replace(produced, final)
        done = True
    finally:
        for produced in [tmp, *(t for t, _ in extra)]:
            with contextlib.suppress(OSError):
                produced.unlink()
        if not done:
            _remove_made(made)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` only if the block completes."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as f:
        yield f
        f.flush()


def with_default_permissions(path: str | os.PathLike) -> Path:
    """Give a file the permissions a plain ``open()`` would (0666 less the umask): some writers
    (safetensors) create private 0600 files, which surprises users sharing a model folder."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
    return Path(path)


def read_text(path: str | os.PathLike, error: type[Exception] = ValueError) -> str:
    """A UTF-8 text file's content (a leading BOM, as Notepad writes, dropped); raises ``error`` with a
    message naming the file where it is not UTF-8 or cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{path} is not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                    "save it as UTF-8") from None
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from None


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


@contextlib.contextmanager
def staging_folder(out: str | os.PathLike) -> Iterator[Path]:
    """A hidden folder inside ``out`` for a command that writes several files (or folders): they
    replace their namesakes in ``out`` only if the whole block succeeds, so a failure anywhere
    leaves ``out`` as it was (and removes ``out`` and its parents again if the block made them). A staging
    folder left by a killed earlier run is removed first."""
    out = Path(out)
    made = _make_folder(out)
    remove_stale_temps(out)
    stage = temp_name(out / "stage")  # names this process, so a live run's folder is never taken for stale
    stage.mkdir()
    done = False
    try:
        yield stage
        for item in sorted(stage.iterdir()):  # sorted: an IR's .bin is in place before its .xml
            _move_into_place(item, out / item.name)
        done = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if not done:
            _remove_made(made)


def unstaged(obj: Any, stage: str | os.PathLike, out: str | os.PathLike) -> Any:
    """``obj`` (a message, a path, or a report: dicts and lists of them) with the paths inside the staging
    folder ``stage`` of :func:`staging_folder` named where they end up, in ``out``."""
    if isinstance(obj, dict):
        return {k: unstaged(v, stage, out) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(unstaged(v, stage, out) for v in obj)
    if isinstance(obj, (str, Path)):
        text = str(obj).replace(str(stage), str(out))
        return Path(text) if isinstance(obj, Path) else text
    return obj


def _move_into_place(src: Path, dst: Path) -> None:
    """Rename ``src`` over ``dst``; a folder replaces an earlier folder of that name."""
    if src.is_dir() and dst.is_dir():
        old = dst.with_name(f".{dst.name}.old{TMP_MARKER}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete temporary files and staging folders left in ``folder`` (and below, ``recursive``) by a killed
    writer. Those of another process that still runs are in use and stay; call this before writing."""
    removed = []
    pattern = f"**/.*{TMP_MARKER}*" if recursive else f".*{TMP_MARKER}*"
    for p in sorted(Path(folder).glob(pattern)):
        if _writer_alive(p):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(p)
    return removed


def _writer_alive(temp: Path) -> bool:
    """Whether the process named in a :func:`temp_name` (other than this one) still runs."""
    m = re.search(rf"\.(\d+)-[0-9a-f]{{8}}{re.escape(TMP_MARKER)}", temp.name)
    if not m or int(m.group(1)) == os.getpid():
        return False
    try:
        os.kill(int(m.group(1)), 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True
