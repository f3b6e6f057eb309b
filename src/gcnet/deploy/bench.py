"""Benchmark every form of a GCNet on this machine: training form vs reparameterized form vs each
runtime and precision.

For each *form* (see :data:`FORMS`) it reports latency (median, IQR, min/max after warm-up), FPS,
params, MACs, achieved GFLOP/s (2 x MACs / median latency; for int8 these are effective operations
per second), the output difference to the fp32 reference (training form, PyTorch eager fp32:
max/mean abs difference of the 1/8 logits and the fraction of equal argmax labels), peak memory,
and optionally mIoU on a dataset.

Isolation and memory. By default every form runs in a fresh worker process (``python -m
gcnet.deploy.bench --worker JOB``), so runtimes do not share thread pools or allocators and the
memory numbers are per form: ``peak_mem_mb`` is the worker's peak resident set size (VmHWM) minus
its resident size right after importing its runtime library, i.e. what loading, compiling and
running this form costs on top of a bare interpreter with the library loaded. On CUDA it is
``torch.cuda.max_memory_allocated`` (weights + activations). In-process mode (``isolate=False``)
skips the memory column.

Weights. Speed does not depend on weights, so without a checkpoint a randomly initialised model
is used whose BatchNorm statistics are first re-estimated on random inputs (so the logits have a
realistic scale and the output differences are meaningful).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gcnet.checkpoint import load_model, save_checkpoint
from gcnet.deploy.export import CALIB_IMAGES, calibration_from_dataset, load_for_deploy
from gcnet.deploy.pipeline import ExportSettings, build
from gcnet.deploy.qat import finetune_summary
from gcnet.deploy.runtimes import Runtime, default_threads
from gcnet.errors import GCNetError
from gcnet.fileio import atomic_path, staging_folder, unstaged, write_text
from gcnet.models.gcnet import build_model
from gcnet.optional import is_available, require


@dataclass(frozen=True)
class Form:
    name: str
    kind: str  # torch | onnxruntime | openvino
    precision: str
    device: str = "cpu"
    model_form: str = "deploy"  # train | authors (GCBlocks fused, BatchNorms kept) | deploy
    options: dict = field(default_factory=dict)
    default: bool = True
    description: str = ""
    artifact: str = ""  # the file it runs (a key of the driver's artefacts); "" = derived from kind/precision

    @property
    def artifact_key(self) -> str:
        if self.artifact:
            return self.artifact
        if self.kind == "torch":
            return "checkpoint_deploy" if self.model_form == "deploy" else "checkpoint"
        return {"onnxruntime": "onnx", "openvino": "openvino"}[self.kind] + ("_int8" if self.precision == "int8" else "")


FORMS: dict[str, Form] = {f.name: f for f in [
    Form("torch-train-fp32", "torch", "fp32", model_form="train", options={"channels_last": False},
         description="training form (multi-branch GCBlocks, BatchNorm), PyTorch eager fp32"),
    Form("torch-authors-fp32", "torch", "fp32", model_form="authors", options={"channels_last": False},
         default=False, description="the authors' deploy form (switch_to_deploy: GCBlocks fused, BatchNorms "
                                    "kept), PyTorch eager fp32, NCHW"),
    Form("torch-fp32", "torch", "fp32", options={"channels_last": False},
         description="reparameterized (BN folded), PyTorch eager fp32, NCHW: the reference for speed-ups"),
    Form("torch-fp32-cl", "torch", "fp32", options={"channels_last": True},
         description="reparameterized, PyTorch eager fp32, channels_last: gcnet's torch runtime on CPUs"),
    Form("torch-bf16-cl", "torch", "bf16", options={"channels_last": True},
         description="reparameterized, PyTorch eager, model cast to bf16, channels_last"),
    Form("torch-fp16-cl", "torch", "fp16", options={"channels_last": True}, default=False,
         description="reparameterized, model cast to fp16, channels_last: slow on CPUs, for checking "
                     "the accuracy of the CUDA fp16 forms"),
    Form("torch-fp32-compile", "torch", "fp32", options={"channels_last": True, "compile": True}, default=False,
         description="reparameterized, torch.compile (inductor), channels_last; slow to compile"),
    Form("onnxruntime-fp32", "onnxruntime", "fp32", description="ONNX Runtime CPU, all graph optimisations"),
    Form("onnxruntime-int8", "onnxruntime", "int8", description="ONNX Runtime, static int8 QDQ (u8/s8)"),
    Form("openvino-fp32", "openvino", "fp32", description="OpenVINO CPU, f32 inference precision"),
    Form("openvino-bf16", "openvino", "bf16", description="OpenVINO CPU, bf16 inference precision"),
    Form("openvino-int8", "openvino", "int8",
         description="OpenVINO CPU, NNCF int8 fine-tuned toward fp32 (with 200+ calibration frames; else "
                     "post-training, settings chosen per model), other ops bf16 where native"),
    Form("openvino-int8-baseline", "openvino", "int8", artifact="openvino_int8_baseline", options={"plain": True},
         description="what a user assembles: ov.convert_model + nncf.quantize + compile_model, all defaults"),
    # CUDA (used when torch.cuda.is_available())
    Form("cuda-train-fp32", "torch", "fp32", device="cuda", model_form="train",
         description="training form, CUDA eager fp32"),
    Form("cuda-fp32", "torch", "fp32", device="cuda",
         description="reparameterized, CUDA eager fp32 (cuDNN convs may use TF32, PyTorch's default)"),
    Form("cuda-fp16-cl", "torch", "fp16", device="cuda", options={"channels_last": True},
         description="reparameterized, CUDA eager, model cast to fp16, channels_last"),
    Form("cuda-bf16-cl", "torch", "bf16", device="cuda", options={"channels_last": True},
         description="reparameterized, CUDA eager, model cast to bf16, channels_last"),
    Form("cuda-fp16-cl-graphs", "torch", "fp16", device="cuda",
         options={"channels_last": True, "cuda_graphs": True},
         description="fp16, channels_last, replayed as a CUDA graph"),
    Form("cuda-fp16-cl-compile", "torch", "fp16", device="cuda",
         options={"channels_last": True, "compile": "max-autotune"},
         description="fp16, channels_last, torch.compile(mode='max-autotune') (uses CUDA graphs)"),
]}

BASELINE_FORM = "openvino-int8-baseline"  # what a user assembles; "speedup_vs_baseline" is against it
MAX_ITERS = 100_000
ARTIFACTS_MARKER = ".gcnet-bench"  # marks an --keep-artifacts folder as bench's: a later run may replace its files
TIMING = {"input_size": (1024, 2048), "warmup": 3, "iters": 10, "min_time": 1.0}  # run_benchmark's defaults
QUICK = {"input_size": (128, 256), "warmup": 1, "iters": 3, "min_time": 0.0}  # `gcnet bench --quick`
RANDOM_CALIB_INPUTS = 2  # int8 calibration inputs without a dataset: random (speed does not depend on them)


def default_forms(device: str = "auto") -> list[str]:
    """Every default form whose runtime is installed; CUDA forms when CUDA is available (or asked)."""
    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    names = []
    for f in FORMS.values():
        if not f.default or not is_available(f.kind):
            continue
        if f.device == "cuda" and not cuda:
            continue
        if f.device == "cpu" and device == "cuda":
            continue
        names.append(f.name)
    return names


# ------------------------------------------------------------------------------------ statistics
def latency_stats(times_s: list[float]) -> dict:
    a = np.asarray(times_s, dtype=np.float64) * 1e3
    p25, med, p75 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max()),
            "p25": float(p25), "p75": float(p75), "iqr": float(p75 - p25), "std": float(a.std()),
            "n": int(a.size)}


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024


def _peak_rss_mb() -> float:
    """This process's own peak resident size: VmHWM (getrusage's ru_maxrss would count the peak of the
    parent a worker was started from); ru_maxrss where there is no /proc."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
        return r / 2**20 if sys.platform == "darwin" else r / 1024
    return kb / 1024


# ------------------------------------------------------------------------------------------ models
def recalibrate_bn(model: torch.nn.Module, size: tuple[int, int] = (128, 256), batches: int = 2,
                   seed: int = 0) -> torch.nn.Module:
    """Re-estimate BatchNorm running statistics on random inputs (for randomly initialised models,
    so their logits have a realistic scale). Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(2, 3, *size, generator=g))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    return model.eval()


def bench_model(name: str = "gcnet-s", num_classes: int = 19, checkpoint: str | None = None,
                seed: int = 0) -> torch.nn.Module:
    if checkpoint:
        return load_model(checkpoint).eval()
    torch.manual_seed(seed)
    return recalibrate_bn(build_model(name, num_classes), seed=seed)


# ------------------------------------------------------------------------------------------ worker
def _build_runtime(job: dict) -> Runtime:
    """The form's runtime, opened from the artefact the driver wrote for it."""
    form = Form(**job["form"])
    source = job["artifacts"][form.artifact_key]
    if form.model_form == "authors":
        source = load_model(source).eval().fuse_gcblocks()
    return build(source, form.kind, form.precision, device=form.device, threads=job["threads"],
                 reparameterize=form.model_form == "deploy", **form.options).runtime


def timed_runs(call: Callable[[], Any], iters: int, min_time: float = 0.0,
               clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], Any]:
    """Time ``call()`` until there are ``iters`` runs *and* they took ``min_time`` seconds together
    (at most :data:`MAX_ITERS` runs); returns the durations and the last output."""
    times: list[float] = []
    out = None
    while len(times) < iters or (sum(times) < min_time and len(times) < MAX_ITERS):
        t = clock()
        out = call()
        times.append(clock() - t)
    return times, out


def run_form(job: dict) -> dict:
    """Measure one form (called in the worker process, or in-process). ``job`` holds the form,
    artifact paths, input/reference paths, warm-up/iteration counts and threads. Timed runs go on
    until there are ``iters`` of them *and* they took ``min_time_s`` seconds together, so fast forms
    (a GPU at a few ms per frame) are timed over many runs."""
    form = Form(**job["form"])
    if form.kind in ("onnxruntime", "openvino"):
        __import__(form.kind)  # baseline memory includes the runtime library
        if form.kind == "onnxruntime" and form.precision == "int8":
            __import__("onnx")  # and the onnx package that checks the file is quantized
    cuda = form.device == "cuda"
    baseline = _rss_mb()
    t0 = time.perf_counter()
    runtime = _build_runtime(job)
    x = np.load(job["input"])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        xt = torch.from_numpy(x).cuda()

        def call():
            out = runtime.forward_tensor(xt)
            torch.cuda.synchronize()
            return out
    else:
        def call():
            return runtime(x)

    out = call()  # first call: compiles / allocates
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(max(0, job["warmup"] - 1)):
        call()
    times, out = timed_runs(call, job["iters"], float(job.get("min_time_s", 0.0)))
    if cuda:
        out = out.cpu().numpy()
    result: dict[str, Any] = {"latency_ms": latency_stats(times), "load_and_first_call_ms": first_ms,
                              "runtime": runtime.name, "threads": runtime.threads}
    result.update(_memory(cuda, bool(job.get("isolated")), baseline))
    np.save(job["output"], np.asarray(out, dtype=np.float32))
    if job.get("end_to_end") and not cuda and form.name != BASELINE_FORM:  # the baseline is the model only
        result["end_to_end"] = _end_to_end(runtime, job["end_to_end"])
    if job.get("eval"):
        result.update(_accuracy(runtime, job["eval"]))
    return result


def _memory(cuda: bool, isolated: bool, baseline: float | None) -> dict:
    """The peak-memory fields of a form's result (on the CPU only where the form ran in its own process)."""
    if cuda:
        return {"peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20,
                "mem_note": "torch.cuda.max_memory_allocated (weights + activations)"}
    if not isolated:
        return {}
    peak = _peak_rss_mb()
    return {"peak_rss_mb": peak, "baseline_rss_mb": baseline,
            "peak_mem_mb": peak - baseline if baseline is not None else None,
            "mem_note": "peak RSS of the worker minus its RSS after importing the runtime"}


def _accuracy(runtime: Runtime, ev: dict) -> dict:
    """mIoU and aAcc of ``runtime`` on the dataset ``ev`` names (kind, root, split, limit)."""
    from gcnet.evaluation.inference import evaluate

    r = evaluate(runtime, _dataset(ev, eval_transform=True), limit=ev.get("limit"), progress=False)
    return {"mIoU": r["mIoU"], "aAcc": r["aAcc"], "eval_images": r["num_images"]}


def _end_to_end(runtime: Runtime, spec: dict) -> dict:
    """Per-stage times and pipeline FPS on the driver's video (see :mod:`gcnet.deploy.e2e`)."""
    from gcnet.data.metadata import default_info
    from gcnet.deploy.e2e import measure_end_to_end

    return measure_end_to_end(runtime, spec["video"], default_info(spec["num_classes"]), frames=spec["frames"])


def _worker_main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    try:
        result = run_form(job)
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        import traceback

        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    write_text(job["result"], json.dumps(result))
    return 0


# ------------------------------------------------------------------------------------------ driver
def machine_info(threads: int) -> dict:
    """The CPU (model name, family/model numbers, which tell CPU generations with one name apart, e.g.
    an AMD EPYC Zen 4 from a Zen 5), its relevant ISA extensions, the thread counts and the platform."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if not key.strip():
                    break  # the first processor's block is enough
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    info = {"cpu": fields.get("model name") or platform.processor() or platform.machine(),
            "cpu_family_model": f"{fields['cpu family']}/{fields['model']}" if "cpu family" in fields else None,
            "logical_cpus": os.cpu_count(), "usable_cpus": default_threads(), "threads": threads,
            "platform": platform.platform()}
    flags = f" {fields.get('flags', '')} "
    info["isa"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8")
                   if f" {f} " in flags]
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for pkg in ("gcnet", "onnx", "onnxruntime", "openvino", "nncf"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            if pkg == "gcnet":
                import gcnet

                out[pkg] = gcnet.__version__
    return out


def _diff(out: np.ndarray, ref: np.ndarray) -> dict:
    if out.shape != ref.shape:
        return {"max_abs_diff": None, "mean_abs_diff": None, "label_agreement": None}
    d = np.abs(out.astype(np.float64) - ref)
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
            "label_agreement": float(np.mean(out.argmax(1) == ref.argmax(1)))}


def _calibration(calib: dict | None, calib_num: int | None, x: np.ndarray) -> tuple[list[np.ndarray], Any, str]:
    """(calibration arrays, the frames of the int8 fine-tune: the whole split, or None, a description)."""
    if calib:
        ds = _dataset(calib, eval_transform=True)
        return (calibration_from_dataset(ds, calib.get("num") or CALIB_IMAGES), ds,
                f"{calib['kind']}:{calib['split']}")
    g = np.random.default_rng(1)
    n = calib_num or RANDOM_CALIB_INPUTS
    return [g.standard_normal((1,) + x.shape[1:]).astype(np.float32) for _ in range(n)], None, "random"


def _dataset(spec: dict, eval_transform: bool = False):
    """The dataset a spec of the command line names (kind, root, split), normalised for a model or as
    read (uint8 images)."""
    from gcnet.data.datasets import dataset_from_settings
    from gcnet.data.transforms import EvalTransform

    return dataset_from_settings(spec["kind"], spec["root"], spec["split"],
                                 transform=EvalTransform() if eval_transform else None)


def _bench_input(data: dict | None, batch: int, h: int, w: int) -> tuple[np.ndarray, str]:
    """The timed input: with a dataset (calibration or evaluation), its first image resized to
    (h, w), so the output differences of calibrated int8 forms are measured in distribution;
    otherwise standard-normal noise (speed does not depend on the input)."""
    if data:
        import torch.nn.functional as F

        first = _dataset(data, eval_transform=True)[0][0].unsqueeze(0)
        img = F.interpolate(first, size=(h, w), mode="bilinear", align_corners=False)
        x = img.repeat(batch, 1, 1, 1).numpy().astype(np.float32)
        return x, f"{data['kind']}:{data['split']}[0] resized to {h}x{w}"
    return np.random.default_rng(0).standard_normal((batch, 3, h, w)).astype(np.float32), "standard normal"


def _e2e_video(work: Path, data: dict | None, h: int, w: int, frames: int) -> tuple[str, str]:
    """The end-to-end test video at the bench size: the dataset's first image (resized) or a
    synthetic street scene, panned frame by frame; returns (path, description)."""
    import cv2

    from gcnet.data.synthetic import render_scene

    if data:
        frame = cv2.resize(_dataset(data)[0][0], (w, h),
                           interpolation=cv2.INTER_LINEAR)
        desc = f"{data['kind']}:{data['split']}[0] resized to {h}x{w}"
    else:
        frame, desc = render_scene(np.random.default_rng(0), (h, w))[0], f"synthetic scene {h}x{w}"
    from gcnet.deploy.e2e import make_video

    return str(make_video(work / "e2e.mp4", frame, frames + 2)), f"{desc}, {frames} frames, mp4v"


def _write_artifacts(work: Path, net: torch.nn.Module, deploy: torch.nn.Module, keys: set[str],
                     vsize: tuple[int, int], calib: tuple[list[np.ndarray], Any], quant: ExportSettings,
                     log: Any) -> tuple[dict[str, str], dict]:
    """Write the files the forms run (``keys``: see :attr:`Form.artifact_key`) into ``work`` through the
    deploy pipeline; returns (artefact paths by key, export report). ``calib``: the calibration arrays and
    the int8 fine-tune's frames (None: the arrays)."""
    calibration, frames = calib
    artifacts = {"checkpoint": str(save_checkpoint(work / "model.pt", net)),
                 "checkpoint_deploy": str(save_checkpoint(work / "model_deploy.pt", deploy))}
    export_report: dict[str, Any] = {}
    if any(k.startswith(("onnx", "openvino")) for k in keys):
        log("exporting ONNX ...")
        built = build(deploy, "onnxruntime", out=work / "model.onnx", open_runtime=False,
                      settings=ExportSettings(input_size=vsize, verify=is_available("onnxruntime")))
        export_report["onnx"], artifacts["onnx"] = built.report, str(built.path)
    if "onnx_int8" in keys:
        log("quantizing for ONNX Runtime int8 ...")
        built = build(work / "model.onnx", "onnxruntime", "int8", calibration=calibration,
                      out=work / "model_int8.onnx", open_runtime=False)
        artifacts["onnx_int8"] = str(built.path)
    settings = dataclasses.replace(quant, input_size=vsize, verify=False)
    if "openvino" in keys:
        built = build(deploy, "openvino", out=work / "model_ov.xml", open_runtime=False, settings=settings)
        artifacts["openvino"] = str(built.path)
    if "openvino_int8" in keys:
        log("quantizing for OpenVINO int8 (NNCF) ...")
        built = build(deploy, "openvino", "int8", calibration=calibration, finetune_frames=frames,
                      out=work / "model_ov_int8.xml", open_runtime=False, settings=settings)
        artifacts["openvino_int8"] = str(built.path)
        export_report["openvino_int8"] = done = built.report.get("quantization", {})
        log(f"  {finetune_summary(done['finetune'])}" if done.get("finetune") else
            f"  {done.get('preset')}, {done.get('bias_correction')} bias correction"
            + (f" (held-out mIoU against fp32: {done['scores']})" if done.get("scores") else "")
            + f", {len(done.get('float_convs', []))} convolutions left in float")
    if "openvino_int8_baseline" in keys:
        log("quantizing the user baseline (OpenVINO and NNCF defaults) ...")
        path = user_baseline_openvino(deploy, calibration, vsize, work / "model_ov_int8_baseline.xml")
        artifacts["openvino_int8_baseline"] = str(path)
    return artifacts, export_report


def user_baseline_openvino(deploy: torch.nn.Module, calibration: list[np.ndarray], input_size: tuple[int, int],
                           out: Path) -> Path:
    """The int8 model a user assembles from OpenVINO's and NNCF's documentation in a few lines, every
    setting at its default: ``ov.convert_model(model, example_input=x)``, ``nncf.quantize(model,
    nncf.Dataset(images))``, ``ov.save_model``. Its form opens it with ``compile_model(model, "CPU")``
    and no configuration (``OpenVINORuntime(plain=True)``)."""
    ov, nncf = require("openvino"), require("nncf")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(deploy, example_input=torch.zeros(1, 3, *input_size))
    quantized = nncf.quantize(model, nncf.Dataset(list(calibration)))
    with atomic_path(out, companions=(".bin",)) as tmp:
        ov.save_model(quantized, str(tmp))
    return out


def _run_job(job: dict, work: Path, isolate: bool, threads: int, timeout: float) -> dict:
    """Run one form's job in a fresh worker process (``isolate``) or here; errors come back as ``error``."""
    if not isolate:
        try:
            return run_form(job)
        except Exception as exc:  # noqa: BLE001 - reported in the results
            return {"error": f"{type(exc).__name__}: {exc}"}
    job_path = work / f"job_{Form(**job['form']).name}.json"  # names files in the work folder: removed after use
    write_text(job_path, json.dumps(job))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run([sys.executable, "-m", "gcnet.deploy.bench", "--worker", str(job_path)],
                              env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        job_path.unlink()
    if Path(job["result"]).exists():
        return json.loads(Path(job["result"]).read_text())
    return {"error": f"worker exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}"}


def _result_entry(name: str, res: dict, complexity: dict, batch: int, out_path: str, ref: np.ndarray,
                  log: Any) -> dict:
    """One row of ``results``: the form, its complexity and, unless it failed, speed and differences."""
    form = FORMS[name]
    entry: dict[str, Any] = {"form": name, "runtime": form.kind, "precision": form.precision,
                             "device": form.device, "model_form": form.model_form, "description": form.description}
    c = complexity[form.model_form]
    entry["params"], entry["macs"] = c["params"], c["macs"]
    if "error" in res:
        entry["error"] = res["error"]
        log(f"    failed: {res['error'].splitlines()[0] if res['error'] else res['error']}")
        return entry
    entry.update(res)
    med = res["latency_ms"]["median"]
    entry["fps"] = batch * 1e3 / med
    entry["gflops"] = 2 * c["macs"] / (med * 1e-3) / 1e9
    entry.update(_diff(np.load(out_path), ref))
    log(f"    {med:.1f} ms median, {entry['fps']:.2f} FPS, {entry['gflops']:.0f} GFLOP/s")
    return entry


def _relative_columns(results: list[dict]) -> dict | None:
    """Add speed-up against eager fp32 on the same device (reparameterized, NCHW: torch-fp32, cuda-fp32) and
    against what a user assembles (``openvino-int8-baseline``, CPU forms), and the mIoU change against
    the first fp32 form with mIoU; returns that reference result."""
    base = {dev: next((r for r in results if r["form"] == name and "latency_ms" in r), None)
            for dev, name in (("cpu", "torch-fp32"), ("cuda", "cuda-fp32"))}
    user = next((r for r in results if r["form"] == BASELINE_FORM and "latency_ms" in r), None)
    ref_eval = next((r for r in results if "mIoU" in r and r["precision"] == "fp32"), None)
    for r in results:
        b = base.get(r["device"])
        if b and "latency_ms" in r:
            r["speedup_vs_torch_fp32"] = b["latency_ms"]["median"] / r["latency_ms"]["median"]
        if user and r["device"] == "cpu" and "latency_ms" in r:
            r["speedup_vs_baseline"] = user["latency_ms"]["median"] / r["latency_ms"]["median"]
        if ref_eval and "mIoU" in r:
            r["delta_mIoU"] = r["mIoU"] - ref_eval["mIoU"]
    return ref_eval


def _check_forms(forms: list[str]) -> None:
    unknown = [f for f in forms if f not in FORMS]
    if unknown:
        raise GCNetError(f"unknown form(s) {', '.join(unknown)}; known: {', '.join(FORMS)}")
    missing = sorted({FORMS[f].kind for f in forms if not is_available(FORMS[f].kind)})
    if missing:
        raise GCNetError(f"runtime(s) not installed: {', '.join(missing)} (pip install gcnet[deploy])")
    if any(FORMS[f].device == "cuda" for f in forms) and not torch.cuda.is_available():
        raise GCNetError("CUDA forms were requested but torch.cuda.is_available() is False")


def _deploy_forms_only(forms: list[str], checkpoint: str | None) -> list[str]:
    """The forms a deploy-form model can run; says which others are skipped, refuses if none is left."""
    kept = [f for f in forms if FORMS[f].model_form == "deploy"]
    skipped = [f for f in forms if f not in kept]
    if skipped and not kept:
        raise GCNetError(f"nothing to run: {', '.join(skipped)} need(s) the training form and {checkpoint} is in "
                         "deploy form; pass a training-form checkpoint or other --forms")
    if skipped:
        print(f"note: skipping {', '.join(skipped)} ({checkpoint} is in deploy form; they need the training form)",
              file=sys.stderr)
    return kept


def _complexity(net: torch.nn.Module, deploy: torch.nn.Module, size: tuple[int, int], batch: int,
                model_forms: set[str]) -> dict:
    """Params and MACs of each model form asked for (train, authors, deploy)."""
    from gcnet.models.complexity import model_complexity

    forms = {"deploy": deploy}
    if "train" in model_forms:
        forms["train"] = net
    if "authors" in model_forms:
        forms["authors"] = copy.deepcopy(net).fuse_gcblocks()
    out = {}
    for key, module in forms.items():
        out[key] = model_complexity(module, size).as_dict()
        out[key]["macs"] *= batch
    return out


def _report(command: str | None, threads: int, config: dict, complexity: dict, export_report: dict,
            results: list[dict], loadavg_start) -> dict:
    """The benchmark's JSON report: when, where and how it ran, and one entry per form."""
    ok = [r for r in results if "latency_ms" in r]
    return {
        "gcnet_bench_version": 1,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "machine": machine_info(threads),
        "versions": versions(),
        "config": config,
        "complexity": complexity,
        "export": export_report,
        "results": results,
        "fastest": min(ok, key=lambda r: r["latency_ms"]["median"])["form"] if ok else None,
        "loadavg": {"start": loadavg_start, "end": os.getloadavg() if hasattr(os, "getloadavg") else None},
    }


def _jobs(forms: list[str], work: Path, artifacts: dict, timing: dict,
          log: Callable[[str], None]) -> Iterator[tuple[dict, str]]:
    """(job, form name) for each form in turn, logging which is next."""
    for i, name in enumerate(forms):
        log(f"[{i + 1}/{len(forms)}] {name} ...")
        yield {"form": asdict(FORMS[name]), "artifacts": artifacts, "input": str(work / "input.npy"),
               "output": str(work / f"out_{name}.npy"), "result": str(work / f"result_{name}.json"), **timing}, name


def _prepare(model: str, num_classes: int, checkpoint: str | None, forms: list[str], eval: dict | None):
    """``(net, deploy form, the forms it can run, has a training form)``; a dataset of other classes than
    the model's is refused here, before anything is exported."""
    net = bench_model(model, num_classes, checkpoint)
    has_train = not getattr(net, "is_deploy", False)
    if eval:
        _dataset(eval).info.check_model_classes(int(net.num_classes))
    if not has_train:
        forms = _deploy_forms_only(forms, checkpoint)
    return net, load_for_deploy(net), forms, has_train


def _e2e_setup(work: Path, source: dict | None, h: int, w: int, frames: int, num_classes: int, log) -> dict:
    """The test video of the end-to-end measurement and what the jobs need to know of it."""
    log(f"writing a {h}x{w} test video for the end-to-end measurement ...")
    video, description = _e2e_video(work, source, h, w, frames)
    return {"video": video, "frames": frames, "num_classes": num_classes, "description": description}


PER_FORM_OUTPUTS = ("out_*.npy", "result_*.json", "job_*.json")  # job_*.json: kept by earlier versions of bench


@contextlib.contextmanager
def _work_dir(artifacts_dir: str | None) -> Iterator[Path]:
    """Where the forms' files go: a temporary folder removed afterwards or, with ``artifacts_dir``, a staging
    folder in it whose files replace their namesakes there when the run completes (an interrupted or killed
    run leaves the earlier run's files as they were); the earlier run's per-form outputs of forms not run this
    time are removed then. The folder is marked as bench's first, so a later run takes a killed run's leftovers."""
    if not artifacts_dir:
        with tempfile.TemporaryDirectory(prefix="gcnet-bench-") as tmp:
            yield Path(tmp)
        return
    kept = Path(artifacts_dir)
    with staging_folder(kept) as stage:
        write_text(kept / ARTIFACTS_MARKER, "written by gcnet bench, which replaces its files here when run again\n")
        yield stage
        new = {p.name for p in stage.iterdir()}
    for stale in (p for pattern in PER_FORM_OUTPUTS for p in kept.glob(pattern)):
        if stale.name not in new:
            stale.unlink()


def run_benchmark(model: str = "gcnet-s", num_classes: int = 19, *, checkpoint: str | None = None,
                  input_size: tuple[int, int] = TIMING["input_size"], batch: int = 1, forms: list[str] | None = None,
                  warmup: int = TIMING["warmup"], iters: int = TIMING["iters"], min_time: float = TIMING["min_time"],
                  threads: int | None = None,
                  isolate: bool = True,
                  calib: dict | None = None, calib_num: int | None = None, quant: ExportSettings | None = None,
                  eval: dict | None = None,
                  artifacts_dir: str | None = None, timeout: float = 1800, progress: bool = True,
                  end_to_end: int = 0, command: str | None = None) -> dict:
    """Benchmark ``forms`` (default: :func:`default_forms`) and return the report dict (the JSON);
    ``quant``: how gcnet's int8 forms are quantized (its input size and verification are bench's own).
    ``calib``: a calibration dataset spec (kind, root, split, num), else ``calib_num`` random arrays."""
    threads = threads or default_threads()
    forms = list(forms) if forms else default_forms()
    _check_forms(forms)
    h, w = int(input_size[0]), int(input_size[1])
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    quant = quant or ExportSettings()

    loadavg_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    torch.set_num_threads(threads)
    net, deploy, forms, has_train = _prepare(model, num_classes, checkpoint, forms, eval)
    model, num_classes = net.config.get("name", model), int(net.num_classes)
    model_forms = {FORMS[f].model_form for f in forms} | ({"train"} if has_train else set())
    complexity = _complexity(net, deploy, (h, w), batch, model_forms)

    with _work_dir(artifacts_dir) as work:
        x, input_desc = _bench_input(calib or eval, batch, h, w)
        np.save(work / "input.npy", x)
        with torch.no_grad():
            ref = (net if has_train else deploy)(torch.from_numpy(x)).numpy()
        keys = {FORMS[f].artifact_key for f in forms}
        calib_source, calibration, frames = None, [], None
        if any(FORMS[f].precision == "int8" for f in forms):
            calibration, frames, calib_source = _calibration(calib, calib_num, x)
        artifacts, export_report = _write_artifacts(work, net, deploy, keys, (min(h, 256), min(w, 512)),
                                                    (calibration, frames), quant, log)
        del net, deploy
        e2e = _e2e_setup(work, calib or eval, h, w, end_to_end, num_classes, log) if end_to_end else None

        timing = {"warmup": warmup, "iters": iters, "min_time_s": min_time, "threads": threads, "isolated": isolate,
                  "eval": eval, "end_to_end": e2e}
        results = [_result_entry(name, _run_job(job, work, isolate, threads, timeout), complexity, batch,
                                 job["output"], ref, log)
                   for job, name in _jobs(forms, work, artifacts, timing, log)]
        ref_eval = _relative_columns(results)
    config = {"model": model, "num_classes": num_classes, "checkpoint": checkpoint,
              "weights": "checkpoint" if checkpoint else "random (BN re-estimated)",
              "input_size": [h, w], "batch": batch, **{k: v for k, v in timing.items() if k != "end_to_end"},
              "calibration": calib_source, "calibration_images": len(calibration) if calib_source else None,
              **quant.quant_flags(), "input": input_desc,
              "reference": "torch-train-fp32" if has_train else "torch-fp32",
              "mIoU_reference": ref_eval["form"] if ref_eval else None,
              "end_to_end": e2e and {"frames": e2e["frames"], "video": e2e["description"]}}
    report = _report(command, threads, config, complexity, export_report, results, loadavg_start)
    return unstaged(report, work, artifacts_dir) if artifacts_dir else report  # files named where they are kept


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def fmt_ms(v: float) -> str:
    """Milliseconds with about three significant digits (1.73, 51.4, 329.1)."""
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def result_cells(r: dict, with_eval: bool) -> list[str]:
    """One successful result as formatted cells: median, IQR, min, max (ms), FPS, GFLOP/s, speed-up,
    max abs diff, argmax agreement %, peak memory MB and, ``with_eval``, mIoU and its change."""
    lat, agree = r["latency_ms"], r.get("label_agreement")
    cells = [fmt_ms(lat["median"]), fmt_ms(lat["iqr"]), fmt_ms(lat["min"]), fmt_ms(lat["max"]), f"{r['fps']:.2f}",
             f"{r['gflops']:.0f}", _fmt(r.get("speedup_vs_torch_fp32"), ".2f"), _fmt(r.get("max_abs_diff"), ".2g"),
             _fmt(None if agree is None else 100 * agree, ".2f"), _fmt(r.get("peak_mem_mb"), ".0f")]
    if with_eval:
        cells += [_fmt(r.get("mIoU"), ".2f"), _fmt(r.get("delta_mIoU"), "+.2f")]
    return cells


def format_report(report: dict) -> str:
    """A plain-text table of a :func:`run_benchmark` report."""
    cfg = report["config"]
    m = report["machine"]
    title = (f"{cfg['model']} {cfg['input_size'][0]}x{cfg['input_size'][1]} batch {cfg['batch']} | "
             f"{m['cuda_device'] + ' + ' if m.get('cuda_device') else ''}{m['cpu']}"
             f"{' (family/model ' + m['cpu_family_model'] + ')' if m.get('cpu_family_model') else ''}"
             f" {'/'.join(m.get('isa', []))}, {m['threads']} threads | "
             f"{cfg['weights']} | {report['date']}")
    lines = [title]
    has_eval = any("mIoU" in r for r in report["results"])
    head = (f"{'form':<22}{'median ms':>10}{'IQR':>8}{'min':>8}{'max':>8}{'FPS':>8}{'GFLOP/s':>9}"
            f"{'speedup':>8}{'max|d|':>10}{'agree%':>8}{'mem MB':>8}")
    if has_eval:
        head += f"{'mIoU':>7}{'dmIoU':>7}"
    lines += [head, "-" * len(head)]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"{r['form']:<22} failed: {r['error'].splitlines()[0]}")
            continue
        widths = (10, 8, 8, 8, 8, 9, 8, 10, 8, 8, 7, 7)
        lines.append(f"{r['form']:<22}" + "".join(f"{c:>{w}}" for c, w in zip(result_cells(r, has_eval), widths)))
    lines += _end_to_end_lines(report["results"])
    c = report["complexity"]
    lines.append(f"params/MACs: deploy {c['deploy']['params'] / 1e6:.2f} M / {c['deploy']['macs'] / 1e9:.1f} G"
                 + (f", train {c['train']['params'] / 1e6:.2f} M / {c['train']['macs'] / 1e9:.1f} G"
                    if "train" in c else ""))
    fastest = next((r for r in report["results"] if r["form"] == report.get("fastest")), None)
    if fastest:
        vs = fastest.get("speedup_vs_baseline")
        lines.append(f"fastest: {fastest['form']}" + (f" ({vs:.2f}x {BASELINE_FORM})" if vs else ""))
    return "\n".join(lines)


def end_to_end_cells(r: dict) -> list[str]:
    """Per-stage median ms (decode, pre, model, post, overlay, encode), their sum, and the FPS of the
    labels-only and the annotated-video pipelines."""
    e = r["end_to_end"]
    stages = [_fmt(e["stage_ms"][s], ".1f") for s in ("decode", "pre", "model", "post", "overlay", "encode")]
    return stages + [f"{e['sequential_ms']:.1f}", f"{e['labels_fps']:.1f}", f"{e['overlay_video_fps']:.1f}"]


def _end_to_end_lines(results: list[dict]) -> list[str]:
    rows = [r for r in results if "end_to_end" in r]
    if not rows:
        return []
    head = (f"{'end to end (ms/frame)':<22}{'decode':>8}{'pre':>8}{'model':>8}{'post':>8}{'overlay':>8}"
            f"{'encode':>8}{'sum':>8}{'labels FPS':>11}{'video FPS':>10}")
    lines = ["", head, "-" * len(head)]
    widths = (8, 8, 8, 8, 8, 8, 8, 11, 10)
    for r in rows:
        lines.append(f"{r['form']:<22}" + "".join(f"{c:>{w}}" for c, w in zip(end_to_end_cells(r), widths)))
    return lines


def command_line() -> str:
    return "gcnet " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else "gcnet bench"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2]))
    print("usage: python -m gcnet.deploy.bench --worker JOB.json  (internal; use `gcnet bench`)", file=sys.stderr)
    sys.exit(2)
