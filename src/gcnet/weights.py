"""Named pretrained weights: a registry with their metadata, a download cache, and spec resolution.

A checkpoint *spec* is a local path, a registry name (``gcnet-s_cityscapes``; :func:`list_weights`)
or a URL (``https``, ``http``, ``file``; Google Drive links go through ``gdown``). :func:`resolve`
turns a spec into a local file, downloading a name or URL once into the cache:

* ``$GCNET_HOME/weights/<name>.pth`` for named weights, ``$GCNET_HOME/weights/urls/<hash>/<file>``
  for URLs; ``$GCNET_HOME`` defaults to ``$XDG_CACHE_HOME/gcnet`` or ``~/.cache/gcnet``.
* A download is written to a temporary name, checked (the SHA-256 where known, then the caller's
  check, e.g. keys and shapes against the named model) and only then renamed into place, so a failed
  or refused download leaves nothing in the cache. A cache that cannot be written is refused before
  the download. A cached named file (perhaps saved there by hand) gets the same check once per process.
* ``GCNET_OFFLINE=1`` never touches the network: a cached name works, one that is not cached says
  where to get the file and the exact path to put it at.

This module knows nothing about checkpoint contents: :mod:`gcnet.checkpoint` passes the check.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gcnet.data.metadata import DatasetInfo, get_dataset_info
from gcnet.data.transforms import MEAN, STD
from gcnet.errors import CheckpointError
from gcnet.fileio import TMP_MARKER, atomic_path, folder_problem, gcnet_home
from gcnet.optional import require

__all__ = ["Weights", "REGISTRY", "register_weights", "list_weights", "get_weights", "find_weights",
           "weights_dir", "is_offline", "is_url", "url_cache_path", "sha256sum", "resolve", "fetch"]

AUTHORS_REPO = "https://github.com/JunYanOOO/GCNet"
AUTHORS_LICENSE = (f"no licence file in the authors' repository ({AUTHORS_REPO}, checked 2026-11-21): the "
                   "weights are the authors'; cite their paper and ask them before redistributing the files")


@dataclass(frozen=True)
class Weights:
    """One named set of weights and what is known about it.

    ``sha256`` is the file's SHA-256 where it was published; ``None`` means unknown (then a download is
    checked by its keys and shapes against ``variant`` / ``num_classes`` only). Class names, palette
    and ignore index come from :mod:`gcnet.data.metadata` (``dataset``), the normalisation from
    :mod:`gcnet.data.transforms`.
    """

    name: str
    variant: str  # gcnet-s / gcnet-m / gcnet-l (build_model name)
    dataset: str  # a gcnet.data.metadata dataset name
    url: str
    miou: float | None  # reported mIoU (%)
    reported: str  # where ``miou`` was reported, and how it was measured
    eval_size: tuple[int, int]  # (H, W) the mIoU was measured at
    license: str
    sha256: str | None = None

    @property
    def info(self) -> DatasetInfo:
        return get_dataset_info(self.dataset)

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def mean(self) -> tuple[float, float, float]:
        return MEAN

    @property
    def std(self) -> tuple[float, float, float]:
        return STD

    @property
    def path(self) -> Path:
        """Where the file is (or will be) cached."""
        return weights_dir() / f"{self.name}.pth"

    def is_cached(self) -> bool:
        return self.path.is_file()

    def to_dict(self) -> dict:
        """JSON-able description (metadata, cache path and state)."""
        return {"name": self.name, "model": self.variant, "dataset": self.dataset,
                "num_classes": self.num_classes, "classes": list(self.info.classes),
                "palette": [list(c) for c in self.info.palette], "ignore_index": self.info.ignore_index,
                "mean": list(self.mean), "std": list(self.std), "eval_size": list(self.eval_size),
                "miou": self.miou, "reported": self.reported, "url": self.url, "license": self.license,
                "sha256": self.sha256, "path": str(self.path), "cached": self.is_cached()}


def _authors_cityscapes(variant: str, drive_id: str, miou: float) -> Weights:
    return Weights(
        name=f"{variant}_cityscapes", variant=variant, dataset="cityscapes",
        url=f"https://drive.google.com/file/d/{drive_id}/view", miou=miou,
        reported=f"the authors' README ({AUTHORS_REPO}): Cityscapes val, N=2, trained and evaluated in mmseg",
        eval_size=(1024, 2048), license=AUTHORS_LICENSE, sha256=None)  # the authors publish no hashes


REGISTRY: dict[str, Weights] = {w.name: w for w in (
    _authors_cityscapes("gcnet-s", "1KersBP95k3b0AELiYlQ1rk4PKUmN-ueu", 76.9),
    _authors_cityscapes("gcnet-m", "1sRaoMBirNeOlzV7DSJrML37k6Ypm4E7n", 78.9),
    _authors_cityscapes("gcnet-l", "1FCQJB0kRni7PoMTkLOjzuPi9KI868XB6", 79.6),
)}


def register_weights(weights: Weights, *, replace: bool = False) -> Weights:
    """Add named weights (e.g. your own, or a mirror of the authors' files) to the registry."""
    if weights.name in REGISTRY and not replace:
        raise ValueError(f"weights {weights.name!r} are already registered (pass replace=True)")
    REGISTRY[weights.name] = weights
    return weights


def list_weights() -> list[str]:
    """Names of the registered weights."""
    return sorted(REGISTRY)


def get_weights(name: str | Weights) -> Weights:
    """The registry entry ``name`` (case-insensitive); raises ``CheckpointError`` listing the names."""
    found = name if isinstance(name, Weights) else REGISTRY.get(str(name).strip().lower())
    if found is None:
        raise CheckpointError(f"unknown weights {name!r}; named weights: {', '.join(list_weights())}")
    return found


def find_weights(spec: object) -> Weights | None:
    """The registry entry a checkpoint spec names, or None (an existing path always wins over a name)."""
    if isinstance(spec, Weights):
        return spec
    if not isinstance(spec, str) or Path(spec).expanduser().exists():
        return None
    return REGISTRY.get(spec.strip().lower())


def weights_dir() -> Path:
    return gcnet_home() / "weights"


def is_offline() -> bool:
    return os.environ.get("GCNET_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def is_url(spec: object) -> bool:
    return isinstance(spec, str) and urllib.parse.urlsplit(spec).scheme.lower() in ("http", "https", "file")


def _is_google_drive(url: str) -> bool:
    return urllib.parse.urlsplit(url).hostname in ("drive.google.com", "docs.google.com")


def _google_drive_id(url: str) -> str:
    """The file id of a Drive link (``.../file/d/<id>/view`` or ``...?id=<id>``); gdown takes it in every version."""
    parts = urllib.parse.urlsplit(url)
    found = re.search(r"/d/([-\w]+)", parts.path) or re.search(r"(?:^|&)id=([-\w]+)", parts.query)
    if not found:
        raise _NetworkError(f"{url}: not a link to a Google Drive file (expected .../file/d/<id>/... or ?id=<id>)")
    return found.group(1)


def url_cache_path(url: str) -> Path:
    """Cache path of a URL: its file name under a folder named by the URL's hash (no collisions)."""
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name or "download"
    return weights_dir() / "urls" / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def sha256sum(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


Check = Callable[[Path, "Weights | None"], None]


def resolve(spec: str | os.PathLike | Weights, *, check: Check | None = None, progress: bool = True) -> Path:
    """The local file for a checkpoint spec: an existing path as is; a name or URL from the cache,
    downloaded first if needed (``check(tmp_path, entry)`` may refuse a download by raising). A spec
    that is none of these comes back as a path that does not exist; the caller reports it."""
    entry = find_weights(spec)
    if entry is not None:
        return fetch(entry, check=check, progress=progress)
    text = os.fspath(spec)
    if is_url(text) and not Path(text).exists():
        dest = url_cache_path(text)
        if dest.is_file():
            return dest
        if is_offline():
            raise CheckpointError(f"{text}: not in the cache and GCNET_OFFLINE is set; download it and pass "
                                  f"the file, or save it as {dest}")
        return _download(text, dest, None, check, progress)
    return Path(text).expanduser()


def fetch(name: str | Weights, *, check: Check | None = None, force: bool = False, progress: bool = True) -> Path:
    """The cached file of named weights, downloaded (and checked) first if it is not cached."""
    entry = get_weights(name)
    if entry.is_cached() and not force:
        if check is not None:
            _check_cached(entry, check)
        return entry.path
    if is_offline():
        raise CheckpointError(_where_to_get(entry, "GCNET_OFFLINE is set"))
    try:
        return _download(entry.url, entry.path, entry, check, progress)
    except _NetworkError as exc:
        raise CheckpointError(_where_to_get(entry, str(exc))) from None


_CHECKED: set[tuple[str, int, int]] = set()  # cached files that passed the check in this process: path, size, mtime


def _check_cached(entry: Weights, check: Check) -> None:
    """Check a cached file once per process (users may save it there by hand, or over an earlier one)."""
    stat = entry.path.stat()
    key = (str(entry.path), stat.st_size, stat.st_mtime_ns)
    if key in _CHECKED:
        return
    try:
        check(entry.path, entry)
    except CheckpointError as exc:
        reason = str(exc).splitlines()[0]
        raise CheckpointError(f"the cached file {entry.path} does not match {entry.name} ({reason}); download it "
                              f"again: gcnet weights download {entry.name} --force") from None
    _CHECKED.add(key)


def _where_to_get(entry: Weights, reason: str) -> str:
    return (f"{entry.name} is not in the cache and could not be downloaded ({reason}).\n"
            f"Get it from {entry.url} and save it as {entry.path} ; then `{entry.name}` works offline.")


class _NetworkError(CheckpointError):
    """The transfer failed (no network, HTTP error, missing downloader); distinct from a refused file."""


def _require_writable_cache(folder: Path) -> None:
    """Refuse, before a download, a cache folder that cannot be made or written (nothing is created here)."""
    problem = folder_problem(folder)
    if problem:
        raise CheckpointError(f"the weights cache: {problem}; set GCNET_HOME to a writable folder")


def _download(url: str, dest: Path, entry: Weights | None, check: Check | None, progress: bool) -> Path:
    _require_writable_cache(dest.parent)

    def verify(tmp: Path) -> None:
        if entry is not None and entry.sha256 and (got := sha256sum(tmp)) != entry.sha256.lower():
            raise CheckpointError(f"{url}: refused the download: SHA-256 {got} differs from the published "
                                  f"{entry.sha256}; nothing was kept in the cache")
        if check is not None:
            try:
                check(tmp, entry)
            except CheckpointError as exc:
                raise CheckpointError(f"{url}: refused the download and removed it (nothing was kept in the "
                                      f"cache): {str(exc).replace(str(tmp), 'the file')}") from None

    with atomic_path(dest, check=verify) as tmp:
        if _is_google_drive(url):
            _fetch_google_drive(url, tmp, progress)
        else:
            _fetch_url(url, tmp, progress)
    return dest


def _fetch_url(url: str, tmp: Path, progress: bool) -> None:
    from torch.hub import download_url_to_file  # progress bar, and its own temporary file until complete

    try:
        download_url_to_file(url, str(tmp), progress=progress)
    except urllib.error.HTTPError as exc:
        raise _NetworkError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _NetworkError(f"{url}: {getattr(exc, 'reason', exc)}") from None


def _fetch_google_drive(url: str, tmp: Path, progress: bool) -> None:
    gdown = require("gdown", "downloading from Google Drive", error=_NetworkError)
    # gdown may leave partial files next to its output: give it a private folder, removed afterwards.
    with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=f".{tmp.stem}.", suffix=TMP_MARKER) as folder:
        out = Path(folder) / "download"
        try:
            got = gdown.download(id=_google_drive_id(url), output=str(out), quiet=not progress)
        except Exception as exc:  # noqa: BLE001 - gdown raises its own types for network and quota errors
            raise _NetworkError(f"Google Drive: {type(exc).__name__}: {exc}".splitlines()[0]) from None
        if not got or not out.is_file():
            raise _NetworkError("Google Drive returned no file (quota exceeded or link changed?)")
        shutil.move(out, tmp)
