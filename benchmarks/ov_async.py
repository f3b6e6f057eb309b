"""Does OpenVINO's throughput mode pay for a video pipeline? Frames/s of an int8 IR over real frames,
latency mode (one stream of all threads, one request: what gcnet runs) against throughput mode (one
stream per core, N requests in flight through an AsyncInferQueue), each with and without the
post-processing (``upsample_argmax``) done on this thread in frame order, as ``gcnet.stream`` does.
Rounds interleave the modes so that a change in the machine's load hits every mode alike.

    python benchmarks/ov_async.py MODEL.xml IMAGE_FOLDER [--frames 30] [--rounds 3] [--json OUT]

Frames are the folder's first images (sorted) resized to 1024x2048; uint8 input, normalised in the graph.
"""

from __future__ import annotations

import argparse
import datetime
import json
import queue
import time
from pathlib import Path

import numpy as np
import torch

from gcnet.deploy.bench import machine_info
from gcnet.deploy.ov_preprocess import with_uint8_nhwc_input
from gcnet.deploy.postprocess import upsample_argmax
from gcnet.deploy.runtimes import default_threads


def load_frames(folder: Path, n: int) -> list[np.ndarray]:
    import cv2

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:n]
    return [cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (2048, 1024))[None] for p in paths]


def post(logits: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return upsample_argmax(torch.from_numpy(logits[0]), (1024, 2048))


def sequential_fps(compiled, frames: list[np.ndarray], with_post: bool) -> float:
    req = compiled.create_infer_request()
    t0 = time.perf_counter()
    for frame in frames:
        req.infer([frame], share_inputs=True)
        out = np.array(req.get_output_tensor(0).data)
        if with_post:
            post(out)
    return len(frames) / (time.perf_counter() - t0)


def async_fps(compiled, frames: list[np.ndarray], with_post: bool, in_flight: int) -> float:
    """``in_flight`` requests queued; results taken in frame order, the next frame queued as one is taken."""
    import openvino as ov

    done: queue.Queue = queue.Queue()
    jobs = ov.AsyncInferQueue(compiled, in_flight)
    jobs.set_callback(lambda req, i: done.put((i, np.array(req.get_output_tensor(0).data))))
    t0 = time.perf_counter()
    queued = min(in_flight, len(frames))
    for i in range(queued):
        jobs.start_async([frames[i]], i, share_inputs=True)
    ready: dict[int, np.ndarray] = {}
    for want in range(len(frames)):
        while want not in ready:
            i, out = done.get()
            ready[i] = out
        out = ready.pop(want)
        if queued < len(frames):
            jobs.start_async([frames[queued]], queued, share_inputs=True)
            queued += 1
        if with_post:
            post(out)
    jobs.wait_all()
    return len(frames) / (time.perf_counter() - t0)


def main() -> None:
    import openvino as ov

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--in-flight", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    threads = str(default_threads())
    frames = load_frames(args.folder, args.frames)
    core = ov.Core()
    model = with_uint8_nhwc_input(core.read_model(str(args.model)))
    model.reshape({model.inputs[0].any_name: list(frames[0].shape)})
    latency = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                                                 "INFERENCE_NUM_THREADS": threads})
    throughput = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": threads,
                                                    "INFERENCE_NUM_THREADS": threads})
    modes = {f"{name}{'+post' if p else ''}": (fn, p) for name, fn in
             (("latency", lambda f, p: sequential_fps(latency, f, p)),
              (f"throughput x{args.in_flight}", lambda f, p: async_fps(throughput, f, p, args.in_flight)))
             for p in (False, True)}
    for fn, p in modes.values():  # warm-up
        fn(frames[:3], p)
    fps: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.rounds):
        for name, (fn, p) in modes.items():
            fps[name].append(fn(frames, p))
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine_info(int(threads)),
              "model": str(args.model), "frames": len(frames), "fps": fps,
              "median_fps": {k: float(np.median(v)) for k, v in fps.items()}}
    for name, v in report["median_fps"].items():
        print(f"{name:24s} {v:6.2f} FPS  ({', '.join(f'{x:.2f}' for x in fps[name])})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
