"""Frame sources: video files, image folders and cameras behind one iterator of RGB frames.

:func:`open_source` picks the source for a path or camera index; :func:`prefetch` decodes on a
background thread so that decoding overlaps inference (OpenCV and the runtimes release the GIL).
A video that ends before the frame count its container announces raises
:class:`TruncatedVideoError` after the last decodable frame, naming how far it got.
:func:`gcnet.stream` (in :mod:`gcnet.deploy.predict`) puts a model behind them.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from gcnet.errors import DatasetError, GCNetError
from gcnet.fileio import IMAGE_EXTENSIONS

__all__ = ["Frame", "FrameSource", "VideoSource", "ImageFolderSource", "TruncatedVideoError", "SourceError",
           "list_files", "open_source", "open_video_writer", "prefetch", "BackgroundConsumer", "VIDEO_EXTENSIONS"]

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})
# containers whose header/index gives the exact frame count; others give an estimate from the duration
EXACT_COUNT_EXTENSIONS = frozenset({".avi", ".mp4", ".mov", ".m4v"})


class SourceError(GCNetError):
    """A stream source cannot be opened or read, or a video file cannot be written."""


class TruncatedVideoError(SourceError):
    """The video ended before the number of frames its container announces."""

    def __init__(self, path: str, decoded: int, expected: int) -> None:
        super().__init__(f"video {path} is truncated or corrupt: decoded {decoded} of {expected} frames")
        self.decoded, self.expected = decoded, expected


@dataclass
class Frame:
    index: int
    name: str
    rgb: np.ndarray  # HxWx3 uint8


class FrameSource:
    """Base of the sources: iterate for frames; ``fps`` and ``expected`` are None where unknown."""

    name: str = ""
    fps: float | None = None
    expected: int | None = None

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file; iteration after close is undefined."""


class VideoSource(FrameSource):
    """A video file or a camera (an integer index) through OpenCV."""

    def __init__(self, source: str | os.PathLike | int, max_frames: int | None = None) -> None:
        if isinstance(source, int) and source < 0:  # OpenCV may crash the process on a negative index
            raise SourceError(f"camera index must be 0 or more, got {source}")
        self.name = f"camera{source}" if isinstance(source, int) else str(source)
        self._cap = cv2.VideoCapture(source if isinstance(source, int) else str(source))
        if not self._cap.isOpened():
            raise SourceError(f"cannot open camera {source}" if isinstance(source, int) else
                              f"cannot open video {self.name}")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else None
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not isinstance(source, int) else 0
        self.expected = count if count > 0 else None
        self.max_frames = max_frames

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while self.max_frames is None or index < self.max_frames:
            ok, bgr = self._cap.read()
            if not ok:
                break
            yield Frame(index, f"{Path(self.name).stem}_{index:06d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
        if index == 0:
            raise SourceError(f"cannot decode any frame of {self.name}")
        if self._truncated(index):
            raise TruncatedVideoError(self.name, index, self.expected)

    def _truncated(self, decoded: int) -> bool:
        """Fewer frames than the container announces (beyond the error of an estimated count)."""
        if not self.expected or (self.max_frames is not None and decoded >= self.max_frames):
            return False
        exact = Path(self.name).suffix.lower() in EXACT_COUNT_EXTENSIONS
        return decoded < self.expected - (0 if exact else max(1, self.expected // 100))

    def close(self) -> None:
        self._cap.release()


def list_files(folder: str | os.PathLike, extensions: Iterable[str] = IMAGE_EXTENSIONS, *, recursive: bool = True,
               exclude: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """The files in ``folder`` (and its sub-folders if ``recursive``) with one of ``extensions``, sorted by
    path: how gcnet lists a folder of inputs. Hidden files and folders (a name starting with ".": editor and
    OS metadata, gcnet's own temporaries) and anything under ``exclude`` (an output folder) are left out."""
    folder = Path(folder)
    known = frozenset(e.lower() for e in extensions)
    excluded = [Path(e).resolve() for e in exclude]

    def keep(f: Path) -> bool:
        if f.suffix.lower() not in known or not f.is_file():
            return False
        if any(part.startswith(".") for part in f.relative_to(folder).parts):
            return False
        if not excluded:
            return True
        real = f.resolve()
        return not any(real == e or e in real.parents for e in excluded)

    return sorted(f for f in (folder.rglob("*") if recursive else folder.glob("*")) if keep(f))


class ImageFolderSource(FrameSource):
    """The images of a folder (:func:`list_files`, sorted by name; one image file also works), the first
    ``max_frames`` readable ones if given. In a folder, an image that cannot be read (deleted or rewritten
    since it was listed, corrupt) is skipped with a warning; a single image file must be readable."""

    def __init__(self, path: str | os.PathLike, recursive: bool = False, max_frames: int | None = None) -> None:
        path = Path(path)
        self.name = str(path)
        self._folder = not path.is_file()
        self.paths = list_files(path, recursive=recursive) if self._folder else [path]
        if not self.paths:
            raise SourceError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {path}")
        self.expected = min(len(self.paths), max_frames or len(self.paths))
        self.max_frames = max_frames

    def __iter__(self) -> Iterator[Frame]:
        from gcnet.data.datasets import read_image

        index = 0
        for p in self.paths:
            if self.max_frames is not None and index >= self.max_frames:
                return
            try:
                rgb = read_image(p)
            except DatasetError as exc:
                if not self._folder:
                    raise
                warnings.warn(f"skipping an unreadable image of {self.name} ({exc})", stacklevel=1)
                continue
            yield Frame(index, p.stem, rgb)
            index += 1
        if index == 0:
            raise SourceError(f"cannot read any image in {self.name}")


def open_source(source: str | os.PathLike | int, max_frames: int | None = None) -> FrameSource:
    """A camera index (``0``, or ``"0"`` where no file or folder has that name), a video file, an image
    file or a folder of images; ``max_frames`` (at least 1) stops after that many frames."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1 (or None for every frame), got {max_frames}")
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit() and not Path(source).exists()):
        return VideoSource(int(source), max_frames=max_frames)
    path = Path(source)
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageFolderSource(path, max_frames=max_frames)
    return VideoSource(path, max_frames=max_frames)


def open_video_writer(path: str | os.PathLike, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    """An OpenCV writer of an mp4v video of BGR frames of ``size`` (width, height) at ``fps``: the one
    video format gcnet writes (predict, bench end-to-end)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    if not writer.isOpened():
        raise SourceError(f"cannot write an mp4v video to {path} (no mp4v encoder in this OpenCV build?)")
    return writer


_DONE = object()


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """Iterate ``items`` on a background thread, at most ``depth`` ahead; exceptions re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(exc)

    thread = threading.Thread(target=produce, name="gcnet-prefetch", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


class BackgroundConsumer:
    """Run ``consume(item)`` on a background thread for each submitted item, in order, at most
    ``depth`` items behind: the dual of :func:`prefetch`, for writing (overlay + encode) while the
    next frame is inferred. An exception in ``consume`` is re-raised by the next ``submit``/``close``."""

    def __init__(self, consume: Callable[[Any], None], depth: int = 2) -> None:
        self._consume = consume
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gcnet-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not _DONE:
            if self._error is None:
                try:
                    self._consume(item)
                except BaseException as exc:  # re-raised in the submitting thread
                    self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, item: Any) -> None:
        self._raise()
        self._queue.put(item)

    def close(self) -> None:
        """Wait until every submitted item is consumed; re-raise a consumer error."""
        self._queue.put(_DONE)
        self._thread.join()
        self._raise()
