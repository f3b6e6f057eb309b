"""End-to-end timing: a video frame in, its labels (and an annotated frame) out.

What users run is not the model but the whole path: decode a frame, pre-process it, run the
model, turn the 1/8 logits into labels at frame size, blend the overlay and encode the output
video. :func:`measure_end_to_end` times each stage on its own (sequentially, frame by frame) and
then the two pipelines as ``gcnet predict`` and :func:`gcnet.stream` run them (decoding on a
background thread): labels only, and labels plus the annotated video.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from gcnet.data.metadata import DatasetInfo, overlay
from gcnet.deploy.postprocess import upsample_argmax
from gcnet.deploy.predict import Predictor, predict_video, stream
from gcnet.deploy.runtimes import Runtime
from gcnet.deploy.sources import VideoSource, open_video_writer

STAGES = ("decode", "pre", "model", "post", "overlay", "encode")


def make_video(path: str | Path, frame: np.ndarray, frames: int = 30, fps: float = 25.0) -> Path:
    """An mp4v video of ``frames`` frames at ``frame``'s size: ``frame`` (RGB uint8) panned by a few
    pixels per frame, so that the encoder and decoder do real work."""
    path = Path(path)
    h, w = frame.shape[:2]
    writer = open_video_writer(path, fps, (w, h))
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    for i in range(frames):
        writer.write(np.roll(bgr, 4 * i, axis=1))
    writer.release()
    return path


def stage_times(runtime: Runtime, video: str | Path, info: DatasetInfo, frames: int,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per stage for each of the first ``frames`` frames, one stage after the other, through the
    :class:`VideoSource` and :class:`Predictor` that ``gcnet predict`` uses (decode: the source's next frame;
    a runtime that normalises inside its graph has ~0 pre)."""
    predictor = Predictor(runtime)
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    source = VideoSource(video)
    decoded = iter(source)
    with tempfile.TemporaryDirectory(prefix="gcnet-e2e-") as tmp:
        writer = None
        try:
            for _ in range(frames):
                t0 = clock()
                frame = next(decoded, None)
                if frame is None:
                    break
                rgb = frame.rgb
                t1 = clock()
                with torch.inference_mode():
                    x = predictor.prepare(rgb)
                    t_pre = clock()
                    logits = predictor.infer(x)
                    t2 = clock()
                    labels = upsample_argmax(logits, rgb.shape[:2])
                t3 = clock()
                out = cv2.cvtColor(overlay(rgb, labels, info), cv2.COLOR_RGB2BGR)
                t4 = clock()
                if writer is None:
                    writer = open_video_writer(Path(tmp) / "out.mp4", 25.0, (out.shape[1], out.shape[0]))
                writer.write(out)
                t5 = clock()
                for name, dt in zip(STAGES, (t1 - t0, t_pre - t1, t2 - t_pre, t3 - t2, t4 - t3, t5 - t4)):
                    times[name].append(dt)
        finally:
            decoded.close()
            source.close()
            if writer is not None:
                writer.release()
    return times


def pipeline_fps(runtime: Runtime, video: str | Path, info: DatasetInfo, frames: int,
                 clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Frames per second of the two real pipelines over ``frames`` frames: labels only
    (:func:`gcnet.stream`), and labels + annotated video (``gcnet predict`` on a video)."""
    predictor = Predictor(runtime)
    t0 = clock()
    n = sum(1 for _ in stream(video, predictor, max_frames=frames))
    labels_fps = n / (clock() - t0)
    with tempfile.TemporaryDirectory(prefix="gcnet-e2e-") as tmp:
        t0 = clock()
        _, stats = predict_video(predictor, video, tmp, "out", info, max_frames=frames, progress=False)
        overlay_fps = stats["frames"] / (clock() - t0)
    return {"labels_fps": labels_fps, "overlay_video_fps": overlay_fps, "frames": n}


def measure_end_to_end(runtime: Runtime, video: str | Path, info: DatasetInfo, frames: int = 30,
                       warmup: int = 2, clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Per-stage medians (ms) and the end-to-end FPS of both pipelines; ``warmup`` frames first."""
    stage_times(runtime, video, info, warmup, clock)
    pipeline_fps(runtime, video, info, warmup, clock)  # the pipelines' own compile (OpenVINO's throughput mode)
    times = stage_times(runtime, video, info, frames, clock)
    medians = {s: float(np.median(v)) * 1e3 if v else None for s, v in times.items()}
    sequential = sum(v for v in medians.values() if v is not None)
    return {"stage_ms": medians, "sequential_ms": sequential, "frames_timed": len(times["decode"]),
            **pipeline_fps(runtime, video, info, frames, clock)}
