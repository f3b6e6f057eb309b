"""Does running several OpenVINO requests at once pay on this CPU? Frames/s of an OpenVINO IR, one request at
a time (``in_flight=1``: the model one frame ahead on a background thread, latency mode) against
``in_flight=2`` requests (throughput mode, one stream per core; :meth:`OpenVINORuntime.frames_in_flight`):

- ``model``: the model alone over decoded frames (``runtime.frames`` one by one, or ``frames_in_flight``);
- ``labels``: :func:`gcnet.stream` over the video (decode, model, labels at frame size);
- ``annotated``: ``gcnet predict``'s annotated video (plus overlay and mp4 encoding on a writer thread).

Rounds interleave the two settings in one process, so that a change in the machine's load hits both alike.

    python benchmarks/in_flight.py MODEL.xml VIDEO [--frames 30] [--rounds 5] [--json OUT]

``gcnet bench --keep-artifacts DIR --end-to-end`` leaves both: ``DIR/model_ov_int8.xml`` and ``DIR/e2e.mp4``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from gcnet.data.metadata import default_info
from gcnet.deploy.bench import machine_info
from gcnet.deploy.predict import Predictor, predict_video, stream
from gcnet.deploy.runtimes import OpenVINORuntime, default_threads, is_quantized_openvino
from gcnet.deploy.sources import open_source


class FixedPredictor(Predictor):
    """A Predictor whose pipelines keep ``in_flight`` requests in flight."""

    def __init__(self, runtime: OpenVINORuntime, in_flight: int) -> None:
        super().__init__(runtime)
        self.in_flight = in_flight

    def pipelined(self, images, in_flight=2):
        return super().pipelined(images, in_flight=self.in_flight)


def annotated(predictor: Predictor, video: Path, frames: int, num_classes: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        _, stats = predict_video(predictor, video, tmp, "out", default_info(num_classes), max_frames=frames,
                                 progress=False)
    return stats["frames"]


def pipelines(runtime: OpenVINORuntime, video: Path, decoded: list[np.ndarray], num_classes: int) -> dict:
    """name -> a callable running it over every frame and returning the frame count."""
    runs = {"model in_flight=1": lambda: sum(1 for im in decoded if runtime.frames(im[None]) is not None),
            "model in_flight=2": lambda: sum(1 for _ in runtime.frames_in_flight(decoded, 2))}
    for k in (1, 2):
        p = FixedPredictor(runtime, k)
        runs[f"labels in_flight={k}"] = lambda p=p: sum(1 for _ in stream(video, p, max_frames=len(decoded)))
        runs[f"annotated in_flight={k}"] = lambda p=p: annotated(p, video, len(decoded), num_classes)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("video", type=Path)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import openvino as ov

    model = ov.Core().read_model(str(args.model))
    runtime = OpenVINORuntime(model, "int8" if is_quantized_openvino(model) else "fp32")
    source = open_source(args.video, max_frames=args.frames)
    decoded = [frame.rgb for frame in source]
    source.close()
    num_classes = int(runtime.frames(decoded[0][None]).shape[1])
    runs = pipelines(runtime, args.video, decoded, num_classes)
    for run in runs.values():  # warm-up: compiles, first-run allocations
        run()
    fps: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            assert run() == len(decoded)
            fps[name].append(len(decoded) / (time.perf_counter() - t0))
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(default_threads()),
              "model": str(args.model), "video": str(args.video), "frames": len(decoded), "fps": fps,
              "median_fps": {k: float(np.median(v)) for k, v in fps.items()}}
    for name, v in fps.items():
        print(f"{name:24s} {np.median(v):6.2f} FPS  ({', '.join(f'{x:.2f}' for x in v)})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
