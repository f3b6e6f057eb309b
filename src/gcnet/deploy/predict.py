"""Run a GCNet on images, folders (recursive) and videos; write label PNGs, colour overlays and
annotated videos.

Outputs for an input ``<stem>`` (folder inputs keep their sub-folder layout under the output dir;
inputs that would write the same names get distinct ones, see :func:`collect_inputs`):

- ``<stem>_label.png``: palette ("P" mode) PNG whose pixel values are the class indices (reading it
  with PIL/numpy gives the indices; viewers show the dataset colours); 16-bit greyscale if the model
  has more than 256 classes.
- ``<stem>_overlay.png``: the image with the colourised prediction blended over it.
- videos: ``<stem>_overlay.mp4``: every frame with its overlay and the measured FPS drawn on it.

Every file is written to a temporary name in the output folder and renamed into place only when
complete, so an interrupted or failed run never leaves a truncated file or damages an earlier
output. Unreadable inputs, and videos that end before their announced frame count, are reported by
name and skipped (nothing is kept for them); :func:`predict_paths` returns them in ``failed`` (the
CLI then exits with status 1).
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from gcnet.deploy.pipeline import build
from gcnet.deploy.postprocess import upsample_argmax
from gcnet.deploy.runtimes import OpenVINORuntime, Runtime, TorchRuntime
from gcnet.deploy.sources import (
    VIDEO_EXTENSIONS,
    BackgroundConsumer,
    FrameSource,
    SourceError,
    TruncatedVideoError,
    VideoSource,
    list_files,
    open_source,
    open_video_writer,
    prefetch,
)
from gcnet.errors import ConfigError, DatasetError, GCNetError
from gcnet.fileio import IMAGE_EXTENSIONS, MAX_NAME_BYTES, atomic_path, remove_stale_temps


class InputError(GCNetError):
    """An input file cannot be read or decoded (the message names it); unreadable images raise
    :class:`~gcnet.errors.DatasetError` (from :func:`gcnet.data.datasets.read_image`)."""


class Predictor:
    """RGB uint8 image -> class map at the image size.

    Pre-processing: normalise with the training MEAN/STD (inside the graph for OpenVINO, which takes
    the uint8 frame as it is); resize to ``input_size`` (H, W) first if given, by default to the
    input shape of a model exported with a fixed one (``runtime.input_hw``). Post-processing:
    the argmax of the 1/8 logits upsampled bilinearly (align_corners=False) to the image size,
    computed by :func:`gcnet.deploy.postprocess.upsample_argmax` without full-size logits.
    """

    def __init__(self, runtime: Runtime | torch.nn.Module | Callable[[np.ndarray], np.ndarray], *,
                 input_size: Sequence[int] | None = None) -> None:
        if isinstance(runtime, torch.nn.Module):
            runtime = build(runtime, "torch").runtime
        self.runtime = runtime
        self.input_size = _input_size(input_size, getattr(runtime, "input_hw", None))
        self.num_classes: int | None = None

    def prepare(self, image: np.ndarray) -> np.ndarray | torch.Tensor:
        """The runtime's input for ``image``: the uint8 frame itself (batch of one) for a runtime that
        normalises inside its graph, else normalised float NCHW, resized to ``input_size`` if set."""
        from gcnet.data.transforms import normalize

        resize = bool(self.input_size) and tuple(self.input_size) != tuple(image.shape[:2])
        if isinstance(self.runtime, Runtime) and not isinstance(self.runtime, TorchRuntime) and not resize:
            return image[None]
        x = normalize(image).unsqueeze(0)
        if resize:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        return x

    def infer(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(K, h, w)`` float logits of a :meth:`prepare` result, as the model outputs them (1/8 scale)."""
        if isinstance(x, np.ndarray):  # uint8 frames
            out = torch.from_numpy(np.asarray(self.runtime.frames(x), dtype=np.float32))
        elif isinstance(self.runtime, TorchRuntime):
            out = self.runtime.forward_tensor(x).float()
        else:
            out = torch.from_numpy(np.asarray(self.runtime(x.numpy()), dtype=np.float32))
        self.num_classes = int(out.shape[1])
        return out[0]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return upsample_argmax(self.infer(self.prepare(image)), image.shape[:2])

    def pipelined(self, images: Iterable[np.ndarray], in_flight: int = 2) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(image, labels)`` for each of ``images``, as :meth:`__call__` gives them, with the model ahead
        of the labels: an OpenVINO runtime infers ``in_flight`` images at once
        (:meth:`~gcnet.deploy.runtimes.OpenVINORuntime.frames_in_flight`, one stream per core: a few %
        more frames/s than one stream on 2 cores); any other runtime pre-processes and infers the next image
        on a background thread (which also pulls ``images``) while this one's logits become labels here."""
        if in_flight < 1:
            raise ValueError(f"in_flight must be at least 1, got {in_flight}")
        if isinstance(self.runtime, OpenVINORuntime) and not self.input_size and in_flight > 1:
            ahead = self.runtime.frames_in_flight(images, in_flight)
        else:
            def logits() -> Iterator[tuple[np.ndarray, torch.Tensor]]:
                with torch.inference_mode():  # thread-local: entered on the background thread
                    for image in images:
                        yield image, self.infer(self.prepare(image))

            ahead = prefetch(logits(), depth=1)
        try:
            for image, out in ahead:
                out = torch.as_tensor(out)
                self.num_classes = int(out.shape[-3])
                with torch.inference_mode():
                    labels = upsample_argmax(out, image.shape[:2])
                yield image, labels
        finally:
            ahead.close()  # stops and joins the background thread, or waits for the requests in flight


def _input_size(size: Sequence[int] | None, fixed: tuple[int, int] | None) -> tuple[int, int] | None:
    """The (height, width) frames are resized to: ``size``, else ``fixed`` (the shape of a fixed-shape
    model, None for any shape). A ``size`` that is not two positive integers, or that such a model
    cannot take, is refused."""
    from gcnet.data.transforms import size_pair

    if size is None:
        return fixed
    size = size_pair(size, "input_size")
    if fixed and size != fixed:
        raise ConfigError(f"the model takes {fixed[0]}x{fixed[1]} inputs only (it was exported with a fixed shape), "
                          f"not input_size {size[0]}x{size[1]}: leave the input size out, or export the model "
                          "again without --static")
    return size


# -------------------------------------------------------------------------------------------- I/O
def save_png(image: Image.Image | np.ndarray, path: Path) -> Path:
    """Write a PNG atomically (temporary name, renamed when complete), at zlib level 1 (OpenCV's
    default: several times faster to write than PIL's level 6 for a few % more bytes). An RGB array
    (an overlay) is encoded by OpenCV with the Sub filter and run-length matching: 1.8x faster than
    PIL for a 1024x2048 photo, about as small."""
    with atomic_path(path) as tmp:
        if isinstance(image, Image.Image):
            image.save(tmp, format="PNG", compress_level=1)
        else:
            params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB,
                      cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
            ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
            if not ok:
                raise GCNetError(f"OpenCV could not encode {path} as PNG")
            tmp.write_bytes(data)
    return path


def label_image(label: np.ndarray, info: Any) -> Image.Image:
    """Class-index PNG: "P" mode carrying the dataset palette (ignore/out-of-range drawn black),
    or 16-bit greyscale above 256 classes."""
    if label.dtype != np.uint8:
        return Image.fromarray(label.astype(np.uint16))
    label = np.ascontiguousarray(label)
    im = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())
    palette = np.zeros((256, 3), dtype=np.uint8)
    pal = info.palette_array()[:256]
    palette[: len(pal)] = pal
    im.putpalette(palette.reshape(-1).tolist())
    return im


# ---------------------------------------------------------------------------------------- inputs
@dataclass
class InputItem:
    path: Path
    kind: str  # image | video
    stem: Path  # output path without the suffix, relative to the output dir
    root: str = ""  # name of the input (folder, or a file's folder) it came from
    note: str = ""  # why ``stem`` differs from the input's own name, if it does


def _groups(items: list[InputItem]) -> list[list[InputItem]]:
    """Items that would write the same output names, grouped (groups of two or more only)."""
    by_stem: dict[Path, list[InputItem]] = {}
    for it in items:
        by_stem.setdefault(it.stem, []).append(it)
    return [group for group in by_stem.values() if len(group) > 1]


def _make_stems_unique(items: list[InputItem]) -> None:
    """Give inputs that would write the same output names distinct ones: keep the extension when
    that tells them apart (a.png, a.jpg), else put each under a sub-folder named after the input it
    came from (x/a, y/a); a number (a-2) settles what is left. Each renamed item gets a ``note``."""
    renamed = []
    for group in _groups(items):
        by_name = len({it.path.name for it in group}) == len(group)
        for it in group:
            it.stem = it.stem.with_name(it.path.name) if by_name else Path(it.root or "input") / it.stem
            renamed.append(it)
    for group in _groups(items):
        for i, it in enumerate(group[1:], start=2):
            it.stem = it.stem.with_name(f"{it.stem.name}-{i}")
    for it in renamed:
        it.note = f"{it.path}: another input has the same name; its outputs are named {it.stem}_*"


def collect_inputs(inputs: Iterable[str | os.PathLike], *, recursive: bool = True,
                   exclude: Iterable[str | os.PathLike] = ()) -> tuple[list[InputItem], list[tuple[str, str]]]:
    """Expand files and folders into image/video items. Folders are walked (recursively by
    default) in sorted order, keeping files with known image/video extensions, skipping hidden
    files and anything under ``exclude`` (the output dir). Explicit files of unknown extension are
    treated as images; a file given twice is processed once. Inputs that would write the same
    output names get distinct ones (see :func:`_make_stems_unique`, ``item.note`` says so).
    Returns (items, missing) where missing lists (path, reason)."""
    exclude = list(exclude)  # used for every folder
    items: list[InputItem] = []
    missing: list[tuple[str, str]] = []
    known = frozenset(IMAGE_EXTENSIONS) | VIDEO_EXTENSIONS

    def kind_of(p: Path) -> str:
        return "video" if p.suffix.lower() in VIDEO_EXTENSIONS else "image"

    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            files = list_files(p, known, recursive=recursive, exclude=exclude)
            root = p.resolve().name
            items += [InputItem(f, kind_of(f), f.relative_to(p).with_suffix(""), root) for f in files]
            if not files:
                missing.append((str(p), "a folder without images or videos"))
        elif p.is_file():
            items.append(InputItem(p, kind_of(p), Path(p.stem), p.resolve().parent.name))
        else:
            missing.append((str(p), "no such file or directory"))
    unique: dict[Path, InputItem] = {}
    for it in items:
        unique.setdefault(it.path.resolve(), it)
    items = list(unique.values())
    _make_stems_unique(items)
    return items, missing


def output_paths(base: Path, kind: str, *, save_label: bool = True, save_overlay: bool = True) -> list[Path]:
    """The files an input of ``kind`` writes for ``base`` (its output path without a suffix):
    ``<base>_label.png`` and/or ``<base>_overlay.png`` for an image, ``<base>_overlay.mp4`` for a video."""
    suffixes = ["_overlay.mp4"] if kind == "video" else ["_label.png"] * save_label + ["_overlay.png"] * save_overlay
    return [base.with_name(base.name + suffix) for suffix in suffixes]


def check_outputs(items: Iterable[InputItem], out_dir: str | os.PathLike, *, save_label: bool = True,
                  save_overlay: bool = True) -> None:
    """Refuse (:class:`~gcnet.errors.ConfigError`), before any work, outputs that would replace an input (e.g.
    for ``a.jpg`` and ``a_label.png`` with their own folder as ``out_dir``) or whose names are too long."""
    items = list(items)
    inputs = {item.path.resolve(): item.path for item in items}
    for item in items:
        for path in output_paths(Path(out_dir) / item.stem, item.kind, save_label=save_label,
                                 save_overlay=save_overlay):
            if len(path.name.encode()) > MAX_NAME_BYTES:
                raise ConfigError(f"the output name {path.name[:40]}... for {item.path} is too long for the file system "
                                  f"({len(path.name.encode())} bytes, at most {MAX_NAME_BYTES}): give the input a shorter name")
            if (same := inputs.get(path.resolve())) is not None:
                raise ConfigError(f"the output {path} for {item.path} would replace the input {same}: "
                                  "choose another output folder (--out)")


# -------------------------------------------------------------------------------------- predicting
def write_image_outputs(image: np.ndarray, label: np.ndarray, base: Path, info: Any, *, save_label: bool = True,
                        save_overlay: bool = True, alpha: float = 0.5) -> list[Path]:
    """Write ``<base>_label.png`` and/or ``<base>_overlay.png`` for one image and its class map."""
    from gcnet.data.metadata import overlay

    label_path, overlay_path = output_paths(base, "image")
    written = []
    if save_label:
        written.append(save_png(label_image(label, info), label_path))
    if save_overlay:
        written.append(save_png(overlay(image, label, info, alpha=alpha), overlay_path))
    return written


def _read_ahead(items: list[InputItem]) -> Iterator[tuple[InputItem, np.ndarray | None, Exception | None]]:
    """``(item, image, error)`` for every input, images decoded on a background thread one input
    ahead (videos: no image; they decode their own frames)."""
    from gcnet.data.datasets import read_image

    def read(item: InputItem) -> tuple[InputItem, np.ndarray | None, Exception | None]:
        if item.kind == "video":
            return item, None, None
        try:
            return item, read_image(item.path), None
        except (InputError, DatasetError) as exc:
            return item, None, exc

    return prefetch(read(item) for item in items)


def _draw_text(frame_bgr: np.ndarray, text: str) -> None:
    """White text on a dark box in the top-left corner."""
    scale = max(0.45, frame_bgr.shape[0] / 800)
    thick = max(1, round(scale * 1.5))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    pad = max(3, int(6 * scale))
    x0, y0, x1, y1 = pad, pad, pad + tw + 2 * pad, pad + th + base + 2 * pad
    box = frame_bgr[y0:y1, x0:x1]
    box[:] = (box * 0.35).astype(frame_bgr.dtype)
    cv2.putText(frame_bgr, text, (x0 + pad, y0 + pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                thick, cv2.LINE_AA)


def _annotate_frames(frames: Iterable[np.ndarray], path: Path, predictor: Predictor, info: Any, *, alpha: float,
                     label_text: str, fps_in: float, bar: Any) -> tuple[int, float]:
    """Write each frame with its overlay and the FPS to ``path``; returns (frames, seconds). The model runs
    one frame ahead on a background thread (:meth:`Predictor.pipelined`), overlay and encoding on a writer
    thread."""
    from gcnet.data.metadata import overlay

    writer = None

    def write(item: tuple[np.ndarray, np.ndarray, str]) -> None:
        nonlocal writer
        rgb, label, text = item
        out = cv2.cvtColor(overlay(rgb, label, info, alpha=alpha), cv2.COLOR_RGB2BGR)
        _draw_text(out, text)
        if writer is None:
            writer = open_video_writer(path, fps_in, (out.shape[1], out.shape[0]))
        writer.write(out)
        if bar is not None:
            bar.update(1)

    count, start = 0, time.perf_counter()
    done: deque[float] = deque([start], maxlen=31)  # when the last 30 frames were labelled
    consumer = BackgroundConsumer(write)
    labelled = predictor.pipelined(frames)
    try:
        for rgb, label in labelled:
            done.append(time.perf_counter())
            count += 1
            consumer.submit((rgb, label, f"{label_text}  {(len(done) - 1) / (done[-1] - done[0]):.1f} FPS"))
    finally:
        labelled.close()
        try:
            consumer.close()
        finally:
            if writer is not None:
                writer.release()
    return count, time.perf_counter() - start


def predict_video(predictor: Predictor, path: str | os.PathLike, out_dir: str | os.PathLike,
                  stem: str | os.PathLike, info: Any, *, alpha: float = 0.5, label_text: str = "GCNet",
                  max_frames: int | None = None, progress: bool = True) -> tuple[list[Path], dict]:
    """Annotated ``<stem>_overlay.mp4`` (mp4v codec, the input's frame rate) with the FPS (frames labelled
    per second, averaged over the last 30 frames) drawn on each frame. Frames are decoded on a background
    thread. Returns (written files, stats with frames and mean FPS).

    A video that ends before the frame count its container announces (truncated or corrupt) raises
    :class:`InputError` naming both counts; its partial output is removed and an earlier
    ``<stem>_overlay.mp4`` is left as it was."""
    path = Path(path)
    try:
        source = VideoSource(path, max_frames=max_frames)
    except SourceError as exc:
        raise InputError(str(exc)) from None
    fps_in = source.fps or 25.0
    total = min(source.expected or max_frames, max_frames) if max_frames else source.expected
    [final] = output_paths(Path(out_dir) / stem, "video")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=path.name, unit="frame", leave=False, file=sys.stderr)
    frames = (f.rgb for f in prefetch(source))
    try:
        with atomic_path(final) as tmp:
            count, seconds = _annotate_frames(frames, tmp, predictor, info, alpha=alpha,
                                                 label_text=label_text, fps_in=fps_in, bar=bar)
    except SourceError as exc:
        partial = "; its partial output was removed" if isinstance(exc, TruncatedVideoError) else ""
        raise InputError(f"{exc}{partial}") from None
    finally:
        frames.close()
        source.close()
        if bar is not None:
            bar.close()
    return [final], {"frames": count, "fps": count / seconds if seconds > 0 else None, "input_fps": fps_in}


@dataclass
class PredictSummary:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    processed: int = 0
    videos: dict[str, dict] = field(default_factory=dict)
    images: int = 0
    image_seconds: float = 0.0  # wall time of the image inputs: read, predict and write, overlapped

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.image_seconds if self.images and self.image_seconds > 0 else None


def _skip(summary: PredictSummary, path: Path, exc: Exception, log: Callable[[str], None], fail_fast: bool) -> None:
    summary.failed.append((str(path), str(exc)))
    log(f"skipped {path}: {exc}")
    if fail_fast:
        raise exc


def predict_paths(predictor: Predictor, inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                  info: Any, *, recursive: bool = True, save_label: bool = True, save_overlay: bool = True,
                  alpha: float = 0.5, max_frames: int | None = None, progress: bool = True,
                  fail_fast: bool = False, label_text: str = "GCNet",
                  log: Callable[[str], None] | None = None) -> PredictSummary:
    """Predict every image/video under ``inputs``; failures are reported through ``log`` and
    collected in the summary (or raised with ``fail_fast``); outputs that would replace an input are
    refused first (:func:`check_outputs`). Images are decoded one ahead on a
    reader thread and their PNGs written on a writer thread, both overlapping the next inference."""
    out_dir = Path(out_dir)
    items, missing = collect_inputs(inputs, recursive=recursive, exclude=[out_dir])
    check_outputs(items, out_dir, save_label=save_label, save_overlay=save_overlay)
    if out_dir.is_dir():
        remove_stale_temps(out_dir, recursive=True)  # left by a killed earlier run
    summary = PredictSummary(failed=list(missing))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc="predict", unit="file", file=sys.stderr)
        log = log or bar.write
    log = log or (lambda msg: print(msg, file=sys.stderr))
    for path, reason in missing:
        log(f"skipped {path}: {reason}")
        if fail_fast:
            raise InputError(f"{path}: {reason}")
    for item in items:
        if item.note:
            log(item.note)

    def write(job: tuple[InputItem, np.ndarray, np.ndarray]) -> None:
        item, image, label = job
        summary.written.extend(write_image_outputs(image, label, out_dir / item.stem, info, save_label=save_label,
                                                   save_overlay=save_overlay, alpha=alpha))
        summary.processed += 1

    writer, reader, t_images = BackgroundConsumer(write), _read_ahead(items), time.perf_counter()
    try:
        for item, image, error in reader:
            if error is not None:
                _skip(summary, item.path, error, log, fail_fast)
            elif item.kind == "image":
                writer.submit((item, image, predictor(image)))
                summary.images += 1
            else:
                _predict_video_item(predictor, item, out_dir, info, summary, log, alpha=alpha, max_frames=max_frames,
                                    progress=progress, label_text=label_text, fail_fast=fail_fast)
            if bar is not None:
                bar.update(1)
    finally:
        reader.close()
        writer.close()
        if bar is not None:
            bar.close()
    video_seconds = sum(v["seconds"] for v in summary.videos.values())
    summary.image_seconds = time.perf_counter() - t_images - video_seconds
    return summary


def _predict_video_item(predictor: Predictor, item: InputItem, out_dir: Path, info: Any, summary: PredictSummary,
                        log: Callable[[str], None], *, fail_fast: bool, **kwargs: Any) -> None:
    t = time.perf_counter()
    try:
        files, stats = predict_video(predictor, item.path, out_dir, item.stem, info, **kwargs)
    except (InputError, DatasetError) as exc:
        _skip(summary, item.path, exc, log, fail_fast)
        return
    summary.videos[str(item.path)] = dict(stats, seconds=time.perf_counter() - t)
    summary.written.extend(files)
    summary.processed += 1
    log(f"{item.path}: {stats['frames']} frames, {stats['fps']:.1f} FPS")


def stream(source: str | os.PathLike | int | FrameSource, model: Any, *, runtime: str | None = None,
           precision: str = "fp32", calibration: Iterable[np.ndarray] | None = None,
           finetune_frames: Sequence | None = None, threads: int | None = None,
           input_size: Sequence[int] | None = None, max_frames: int | None = None,
           depth: int = 2, in_flight: int = 2) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(frame, labels)`` for every frame of a video file, an image folder or a camera index.

    ``model``: anything :func:`gcnet.deploy.pipeline.build` takes (a GCNet module, a checkpoint path,
    a weights name, an ``.onnx``/``.xml`` file), run with ``runtime`` (default: the one its file type asks
    for, :func:`~gcnet.deploy.pipeline.default_runtime`) at ``precision`` (int8 from a
    float model is calibrated on ``calibration``; OpenVINO's is also fine-tuned on crops of
    ``finetune_frames``, e.g. the training set, when there are enough
    (:data:`~gcnet.deploy.qat.FINETUNE_MIN_FRAMES`): a few minutes before the first frame; see
    :func:`~gcnet.deploy.pipeline.build`); or a :class:`Runtime`; or a ready ``frame -> labels``
    callable such as a :class:`Predictor`. Frames are RGB uint8; labels are class maps at the frame's
    size; ``max_frames`` stops after that many frames; an image of a folder that cannot be read is skipped
    with a warning (:class:`~gcnet.deploy.sources.ImageFolderSource`). Decoding runs ahead on a background
    thread, and with a :class:`Predictor` (any model but a callable) so does the model
    (:meth:`Predictor.pipelined`): OpenVINO infers ``in_flight`` frames at once (more frames/s; each
    frame's labels come about ``in_flight`` model runs after it), other runtimes one
    frame ahead of the labels. ``in_flight=1`` for the lowest latency, e.g. from a camera.
    """
    if isinstance(model, (torch.nn.Module, str, os.PathLike)):
        model = build(model, runtime, precision, calibration=calibration, finetune_frames=finetune_frames,
                      threads=threads).runtime
    if isinstance(model, Runtime):
        model = Predictor(model, input_size=input_size)
    elif not callable(model):
        raise TypeError("model must be a GCNet module, a checkpoint or .onnx/.xml path, a Runtime or a "
                        f"frame -> labels callable, got {type(model).__name__}")
    src = source if isinstance(source, FrameSource) else open_source(source, max_frames=max_frames)
    frames = prefetch(src, depth)
    rgbs = (frame.rgb for frame in frames)
    labelled = (model.pipelined(rgbs, in_flight=in_flight) if isinstance(model, Predictor)
                else ((rgb, model(rgb)) for rgb in rgbs))
    try:
        yield from labelled
    finally:
        labelled.close()
        frames.close()  # stops and joins the reader before the source is released
        src.close()
