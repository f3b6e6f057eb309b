"""The one deploy pipeline: a GCNet (module, checkpoint, ONNX file or OpenVINO IR) -> its deploy
form -> exported artefact -> int8 quantization -> an open :class:`~gcnet.deploy.runtimes.Runtime`.

Every runtime and every ONNX / OpenVINO file is made by :func:`build`: :func:`create_runtime`, ``gcnet
predict``, ``gcnet export``, ``gcnet bench`` and ``gcnet.stream`` call it::

    runtime = build(model, "openvino", "int8", calibration=arrays).runtime
    built = build("best.pth", "onnxruntime", out="exported/best.onnx", open_runtime=False)  # verified file
    built.path, built.report

:func:`compare_accuracy` evaluates several runtimes on one dataset against a reference.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from gcnet.deploy.export import (
    DEFAULT_OPSET,
    FAST_BIAS_CORRECTION,
    export_onnx,
    export_openvino,
    is_quantized_onnx,
    load_for_deploy,
    quant_settings_of,
    quantize_onnx,
    quantize_openvino,
    to_openvino,
)
from gcnet.deploy.qat import FINETUNE_ITERS, FINETUNE_MIN_FRAMES, quantize_aware
from gcnet.deploy.runtimes import (
    PRECISIONS,
    RUNTIME_KINDS,
    OnnxRuntime,
    OpenVINORuntime,
    Runtime,
    TorchRuntime,
    is_quantized_openvino,
)
from gcnet.errors import GCNetError
from gcnet.evaluation.inference import evaluate

Source = nn.Module | str | os.PathLike


@dataclass
class Built:
    """What :func:`build` made: the open ``runtime`` (None with ``open_runtime=False``), the artefact
    ``path`` it runs (None for in-memory models) and the export ``report`` of a written file."""

    runtime: Runtime | None
    path: Path | None = None
    report: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ExportSettings:
    """How :func:`build` exports, checks (``verify``: files written to ``out``) and quantizes for OpenVINO
    int8: a quantization-aware fine-tune of ``finetune_iters`` steps (:mod:`gcnet.deploy.qat`; a module or
    checkpoint source), or with ``finetune_iters=0`` (and for ONNX/IR sources) post-training quantization
    with ``preset``, ``fast_bias_correction`` and ``float_convs`` (:mod:`gcnet.deploy.export`)."""

    input_size: Sequence[int] = (512, 1024)
    opset: int = DEFAULT_OPSET
    dynamic: bool = True
    postprocess: bool = False
    verify: bool = True
    tolerance: float = 1e-3
    preset: str = "auto"
    fast_bias_correction: bool | None = True  # None: chosen per model, as preset="auto"
    float_convs: int | str = "auto"  # the most int8-sensitive convolutions left in float
    finetune_iters: int = FINETUNE_ITERS

    def quant_flags(self) -> dict[str, Any]:
        """The OpenVINO int8 settings by the names of `gcnet export`'s and `gcnet bench`'s flags."""
        bias = {fast: name for name, fast in FAST_BIAS_CORRECTION.items()}[self.fast_bias_correction]
        return {"quant_preset": self.preset, "bias_correction": bias, "float_convs": self.float_convs,
                "finetune_iters": self.finetune_iters}


def default_runtime(source: Source) -> str:
    """The runtime a source's file type asks for: openvino for an ``.xml`` IR, onnxruntime for an
    ``.onnx`` file, torch for anything else (a module, a checkpoint)."""
    suffix = Path(source).suffix.lower() if isinstance(source, (str, os.PathLike)) else ""
    return {".xml": "openvino", ".onnx": "onnxruntime"}.get(suffix, "torch")


def _check_request(runtime: str, precision: str, device: str, source: Source) -> str:
    """Validate the runtime/precision/device/source combination; returns the source's file suffix."""
    if runtime not in RUNTIME_KINDS:
        raise GCNetError(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIME_KINDS)})")
    if precision not in PRECISIONS[runtime]:
        raise GCNetError(f"runtime {runtime!r} does not support precision {precision!r} "
                         f"(supported: {', '.join(PRECISIONS[runtime])})")
    if device != "cpu" and runtime != "torch":
        raise GCNetError(f"runtime {runtime!r} runs on CPU only here; use runtime='torch' for CUDA")
    if not isinstance(source, (str, os.PathLike)):
        return ""
    suffix = Path(source).suffix.lower()
    if suffix in (".onnx", ".xml") and not Path(source).exists():  # a checkpoint may also be a name or URL
        raise GCNetError(f"model file not found: {source}")
    if runtime == "torch" and suffix in (".onnx", ".xml"):
        raise GCNetError(f"the torch runtime needs a GCNet module or checkpoint, not {source}")
    if runtime == "onnxruntime" and suffix == ".xml":
        raise GCNetError(f"onnxruntime cannot run an OpenVINO IR ({source}); use runtime 'openvino'")
    return suffix


def _need_calibration(runtime: str, source: Source, calibration: Any) -> None:
    if calibration is None:
        what = source if isinstance(source, (str, os.PathLike)) else "the model"
        raise GCNetError(f"{runtime} int8: {what} is not quantized; quantize it with `gcnet export --precision "
                         f"int8` (or pass calibration=... to gcnet.deploy.build)")


def _onnx_file(source: Source, suffix: str, precision: str, calibration: Any, out: Path | None,
               scratch: Path, settings: ExportSettings) -> tuple[Path, dict]:
    """The ONNX file to run, exported and/or quantized as needed (into ``out`` or ``scratch``)."""
    report: dict = {}
    if suffix == ".onnx":
        path = Path(source)
    else:
        path = out if out is not None and precision == "fp32" else scratch / "model.onnx"
        verify = settings.verify and path == out
        report = export_onnx(source, path, input_size=settings.input_size, opset=settings.opset,
                             dynamic=settings.dynamic, postprocess=settings.postprocess, verify=verify,
                             tolerance=settings.tolerance)
    if precision == "int8" and not is_quantized_onnx(path):
        _need_calibration("onnxruntime", source, calibration)
        path = quantize_onnx(path, out if out is not None else scratch / f"{path.stem}_int8.onnx", calibration)
        report = {"format": "onnx", "precision": "int8", "path": str(path)}
    return path, report


def _int8_openvino(source: Source, model: Any, calibration: Any, frames: Sequence | None, settings: ExportSettings,
                   progress: bool | None) -> Any:
    """OpenVINO int8 of a float ``source`` (``model``: its OpenVINO conversion, None for a module): fine-tuned
    when the settings ask for it and there are frames enough, otherwise post-training quantization."""
    _need_calibration("openvino", source, calibration)
    calibration = list(calibration)
    frames = calibration if frames is None else frames
    if settings.finetune_iters and isinstance(source, nn.Module) and len(frames) >= FINETUNE_MIN_FRAMES:
        return quantize_aware(source, calibration, frames, iters=settings.finetune_iters,
                              input_size=settings.input_size, progress=progress)
    return quantize_openvino(model or to_openvino(source, input_size=settings.input_size), calibration,
                             preset=settings.preset, fast_bias_correction=settings.fast_bias_correction,
                             float_convs=settings.float_convs, progress=progress)


def _openvino_model(source: Source, suffix: str, precision: str, calibration: Any, frames: Sequence | None,
                    out: Path | None, threads: int | None, settings: ExportSettings,
                    progress: bool | None) -> tuple[Any, dict]:
    """The ``openvino.Model`` to run, converted and/or quantized as needed; written to ``out`` if given."""
    int8_of_module = precision == "int8" and isinstance(source, nn.Module)
    model = None if int8_of_module else to_openvino(source, input_size=settings.input_size)
    if int8_of_module or (precision == "int8" and not is_quantized_openvino(model)):
        model = _int8_openvino(source, model, calibration, frames, settings, progress)
    if out is None:
        return model, {}
    # a file source has no PyTorch model to compare with, and int8 differs from it by design: both are
    # only checked to load and run
    reference = source if suffix not in (".onnx", ".xml") and not is_quantized_openvino(model) else None
    report = export_openvino(model, out, reference=reference, input_size=settings.input_size,
                             verify=settings.verify, tolerance=settings.tolerance, threads=threads)
    if quant := quant_settings_of(model):
        report["quantization"] = quant
    return model, report


def build(source: Source, runtime: str | None = None, precision: str = "fp32", *,
          calibration: Iterable[np.ndarray] | None = None, finetune_frames: Sequence | None = None,
          out: str | os.PathLike | None = None,
          open_runtime: bool = True, settings: ExportSettings | None = None, threads: int | None = None,
          device: str = "cpu", reparameterize: bool = True, progress: bool | None = None, **options: Any) -> Built:
    """Take ``source`` to a ``runtime`` ("torch", "onnxruntime", "openvino"; None: the one its file type
    asks for, :func:`default_runtime`) at ``precision``.

    ``source``: a GCNet module (a reparameterized copy is used if it is in training form; the
    caller's module is not changed; ``reparameterize=False`` keeps the training form for the torch
    runtime, e.g. to time it),
    a gcnet checkpoint (a file, named weights or a URL), an ONNX file or an OpenVINO ``.xml``. Conversions happen on the way: ONNX
    export, OpenVINO conversion, and for ``precision="int8"`` on a float model int8 quantization
    calibrated on ``calibration`` (float32 NCHW arrays; a few real images are enough): for OpenVINO from
    a module or checkpoint with a short quantization-aware fine-tune (as ``settings`` say) on crops of
    ``finetune_frames`` (e.g. the calibration dataset; default: the calibration images) when there are at
    least :data:`~gcnet.deploy.qat.FINETUNE_MIN_FRAMES` of them, otherwise post-training.

    ``out``: write the final artefact there (``.onnx``, or an ``.xml`` + ``.bin`` IR), under a
    temporary name, verified as ``settings`` say (:class:`ExportSettings`) before it replaces an
    earlier file. Without ``out`` nothing is kept on disk. ``open_runtime=False`` only writes ``out``.
    ``threads``, ``device`` and ``options`` go to the runtime class (e.g. ``channels_last=True``).
    ``progress``: a bar over long quantization work (None: only on a terminal).
    """
    settings = settings or ExportSettings()
    runtime = runtime or default_runtime(source)
    suffix = _check_request(runtime, precision, device, source)
    out = Path(out) if out is not None else None
    if suffix not in (".onnx", ".xml"):  # a module or checkpoint: loaded and reparameterized once
        source = load_for_deploy(source) if reparameterize or runtime != "torch" else _load_module(source)
    if runtime == "torch":
        opened = TorchRuntime(source, precision, device=device, threads=threads, **options) if open_runtime else None
        return Built(opened)
    if runtime == "onnxruntime":
        # onnxruntime reads the whole file when it opens it, so scratch files can go right after
        with tempfile.TemporaryDirectory(prefix="gcnet-rt-") as scratch:
            path, report = _onnx_file(source, suffix, precision, calibration, out, Path(scratch), settings)
            opened = OnnxRuntime(path, precision, threads=threads, **options) if open_runtime else None
        return Built(opened, path if path.parent != Path(scratch) else None, report)
    model, report = _openvino_model(source, suffix, precision, calibration, finetune_frames, out, threads, settings,
                                    progress)
    opened = OpenVINORuntime(model, precision, threads=threads, **options) if open_runtime else None
    return Built(opened, out.with_suffix(".xml") if out is not None else None, report)


def _load_module(source: Source) -> nn.Module:
    """The module as it is (training form kept), in eval mode."""
    if isinstance(source, nn.Module):
        return source.eval()
    from gcnet.checkpoint import load_model

    return load_model(source).eval()


def create_runtime(kind: str, source: Source, precision: str = "fp32", **kwargs: Any) -> Runtime:
    """``build(source, kind, precision, **kwargs).runtime``: an open runtime, nothing kept on disk
    unless ``out`` is given."""
    return build(source, kind, precision, **kwargs).runtime


def compare_accuracy(runtimes: Mapping[str, Runtime | nn.Module], dataset: Any, *, reference: str | None = None,
                     limit: int | None = None, progress: bool = False) -> dict:
    """Evaluate each runtime on ``dataset`` (whole-image inference, :func:`gcnet.evaluation.inference.evaluate`);
    report mIoU, aAcc, mAcc and ``delta_mIoU`` against ``reference`` (default: the first one,
    normally the fp32 runtime). ``limit`` evaluates the first ``limit`` images only."""
    if not runtimes:
        return {}
    reference = reference or next(iter(runtimes))
    if reference not in runtimes:
        raise GCNetError(f"reference runtime {reference!r} is not among {', '.join(runtimes)}")
    results: dict[str, dict] = {}
    for name, runtime in runtimes.items():
        r = evaluate(runtime, dataset, limit=limit, progress=progress, desc=f"eval {name}")
        results[name] = {"mIoU": r["mIoU"], "aAcc": r["aAcc"], "mAcc": r["mAcc"], "num_images": r["num_images"]}
    for value in results.values():
        value["delta_mIoU"] = value["mIoU"] - results[reference]["mIoU"]
    return {"reference": reference, "results": results}
