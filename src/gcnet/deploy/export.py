"""Export the reparameterized GCNet: ONNX, TorchScript, torch.export and OpenVINO IR, and int8
post-training quantization (OpenVINO/NNCF and ONNX Runtime QDQ) with its calibration data.

Every export starts from the deploy form: a training-form model is copied and reparameterized
(the caller's module is left unchanged). Every file is written under a temporary name, checked
(``verify``: run with its runtime and compared with PyTorch; int8 files: loaded and run) and only
then renamed over the destination, so a failed export leaves an earlier file of the same name
byte-identical. An OpenVINO IR's ``.xml`` and ``.bin`` are both written and verified before either
replaces the earlier pair.

Chaining these into a runtime (export -> quantize -> open) is :func:`gcnet.deploy.pipeline.build`.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import logging
import math
import os
import random
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.onnx import _constants as onnx_constants

from gcnet.deploy.runtimes import OpenVINORuntime, is_quantized_openvino, read_openvino
from gcnet.errors import GCNetError
from gcnet.fileio import atomic_path
from gcnet.optional import require

DEFAULT_OPSET = 17
CALIB_IMAGES = 32  # int8 calibration images: gcnet export's and gcnet bench's default
# the newest opset torch's TorchScript ONNX exporter (the one used here) writes
MAX_OPSET: int = getattr(onnx_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", DEFAULT_OPSET)


class ExportError(GCNetError):
    """An export failed or its output does not match PyTorch within the tolerance."""


# ------------------------------------------------------------------------------------------ models
def load_for_deploy(source: nn.Module | str | os.PathLike) -> nn.Module:
    """A reparameterized, eval-mode GCNet from a module (copied if it needs reparameterizing) or a
    gcnet checkpoint path."""
    if isinstance(source, (str, os.PathLike)):
        from gcnet.checkpoint import load_model

        model = load_model(source)
    else:
        model = source
    if not getattr(model, "is_deploy", True):
        model = copy.deepcopy(model)
        model.reparameterize()
    return model.eval()


class SegmentationWithPostprocess(nn.Module):
    """Wraps a GCNet so the graph also upsamples the 1/8 logits to the input size (bilinear,
    align_corners=False) and returns the int64 class map ``(B, H, W)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits.argmax(dim=1)


def _example(input_size: Sequence[int], batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, int(input_size[0]), int(input_size[1]), generator=g)


def _check_close(name: str, ref: np.ndarray, out: np.ndarray, tolerance: float,
                 labels: bool = False) -> dict:
    """max |out - ref| normalised by max(1, max |ref|); raises ExportError above ``tolerance``.
    For label outputs, the fraction of differing pixels is compared instead."""
    if ref.shape != out.shape:
        raise ExportError(f"{name}: output shape {tuple(out.shape)} != PyTorch {tuple(ref.shape)}")
    if labels:
        mismatch = float(np.mean(ref != out))
        if mismatch > 1e-3:
            raise ExportError(f"{name}: {mismatch:.2%} of the labels differ from PyTorch")
        return {"label_mismatch": mismatch}
    diff = float(np.max(np.abs(out.astype(np.float64) - ref)))
    scale = max(1.0, float(np.max(np.abs(ref))))
    if not math.isfinite(diff) or diff / scale > tolerance:
        raise ExportError(f"{name}: max abs difference to PyTorch {diff:.3g} (relative {diff / scale:.3g}) "
                          f"exceeds the tolerance {tolerance:g}")
    return {"max_abs_diff": diff, "rel_diff": diff / scale}


def verification_inputs(input_size: Sequence[int], dynamic: bool) -> list[torch.Tensor]:
    """The export-size input, plus (dynamic export) batch 2 at an odd size, to exercise the dynamic
    axes and the ceil(H/8) sizing."""
    h, w = int(input_size[0]), int(input_size[1])
    inputs = [_example((h, w), 1, seed=1)]
    if dynamic:
        inputs.append(_example((max(9, h // 2 + 3), max(9, w // 2 + 5)), 2, seed=2))
    return inputs


# -------------------------------------------------------------------------------------------- ONNX
def _onnx_export_kwargs(out_name: str, opset: int, dynamic: bool, postprocess: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"input_names": ["input"], "output_names": [out_name], "opset_version": opset,
                              "do_constant_folding": True}
    if dynamic:
        kwargs["dynamic_axes"] = {"input": {0: "batch", 2: "height", 3: "width"},
                                  out_name: ({0: "batch", 1: "out_height", 2: "out_width"} if postprocess
                                             else {0: "batch", 2: "out_height", 3: "out_width"})}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript exporter: no onnxscript needed, dynamic_axes honoured
    return kwargs


def _verify_onnx(net: nn.Module, path: Path, inputs: list[torch.Tensor], tolerance: float,
                 labels: bool) -> list[dict]:
    """Run the ONNX file with ONNX Runtime on ``inputs`` and compare with ``net``."""
    ort = require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    checks = []
    for x in inputs:
        with torch.no_grad():
            ref = net(x).numpy()
        try:
            out = session.run(None, {"input": x.numpy()})[0]
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ExportError(f"ONNX Runtime cannot run the export on {tuple(x.shape)}: {exc}") from exc
        checks.append({"input_shape": list(x.shape),
                       **_check_close(f"ONNX Runtime on {tuple(x.shape)}", ref, out, tolerance, labels=labels)})
    return checks


def export_onnx(model: nn.Module | str | os.PathLike, path: str | os.PathLike, *,
                input_size: Sequence[int] = (512, 1024), opset: int = DEFAULT_OPSET, dynamic: bool = True,
                postprocess: bool = False, verify: bool = True, tolerance: float = 1e-3) -> dict:
    """Export the deploy form to ONNX (input ``input`` float32 NCHW; output ``logits`` at 1/8, or
    ``labels`` int64 (B, H, W) with ``postprocess``). ``dynamic`` marks batch, height and width
    dynamic. ``verify`` runs the file with ONNX Runtime on the export size and (dynamic) on an odd
    size with batch 2 and raises :class:`ExportError` if the max abs difference to PyTorch,
    divided by max(1, max |logits|), exceeds ``tolerance``. Returns a report dict."""
    if not DEFAULT_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset must be from {DEFAULT_OPSET} to {MAX_OPSET} (what this torch exports)")
    model = load_for_deploy(model)
    net = SegmentationWithPostprocess(model).eval() if postprocess else model
    out_name = "labels" if postprocess else "logits"
    path = Path(path)
    checks: list[dict] = []

    def check(tmp: Path) -> None:
        checks.extend(_verify_onnx(net, tmp, verification_inputs(input_size, dynamic), tolerance, postprocess))

    with atomic_path(path, check if verify else None) as tmp:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(net, (_example(input_size),), str(tmp),
                                  **_onnx_export_kwargs(out_name, opset, dynamic, postprocess))
        except Exception as exc:
            raise ExportError(f"ONNX export failed: {exc}") from exc
    report: dict[str, Any] = {"format": "onnx", "path": str(path), "opset": opset, "dynamic": dynamic,
                              "output": out_name, "size_mb": path.stat().st_size / 2**20}
    return _verified_report(report, checks)


def is_quantized_onnx(path: str | os.PathLike) -> bool:
    """Whether an ONNX file holds quantized ops (QDQ or QLinear)."""
    onnx = require("onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    return any(n.op_type in ("QuantizeLinear", "QLinearConv", "ConvInteger") for n in graph.node)


def _check_runs(name: str, run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> None:
    """A written model that cannot be compared with PyTorch (int8) must at least run: finite 4-D logits."""
    try:
        out = np.asarray(run(x))
    except GCNetError:
        raise
    except Exception as exc:  # the runtimes raise their own exception types
        raise ExportError(f"{name} cannot run the written model: {exc}") from exc
    if out.ndim != 4 or out.shape[0] != x.shape[0] or not np.isfinite(out).all():
        raise ExportError(f"{name}: the written model gives {tuple(out.shape)} outputs "
                          f"{'' if np.isfinite(out).all() else 'with NaN/inf '}for a {tuple(x.shape)} input")


def quantize_onnx(onnx_path: str | os.PathLike, out_path: str | os.PathLike,
                  calibration: Iterable[np.ndarray], *, per_channel: bool = True) -> Path:
    """Static int8 QDQ quantization with ONNX Runtime (u8 activations, s8 per-channel weights,
    min-max calibration on ``calibration`` float32 NCHW arrays). The result is loaded and run on
    the first calibration array before it replaces ``out_path``."""
    quant = require("onnxruntime.quantization")
    samples = [np.ascontiguousarray(c, dtype=np.float32) for c in calibration]
    if not samples:
        raise GCNetError("int8 quantization needs at least one calibration image")

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(samples)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"input": x}

    def check(tmp: Path) -> None:
        session = require("onnxruntime").InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        _check_runs("ONNX Runtime int8", lambda x: session.run(None, {"input": x})[0], samples[0])

    with tempfile.TemporaryDirectory(prefix="gcnet-q-") as scratch, atomic_path(out_path, check) as tmp:
        pre = Path(scratch) / "pre.onnx"
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation; quantize the original
            pre = Path(onnx_path)
        root = logging.getLogger()  # ONNX Runtime warns on the root logger where it quantizes a tensor per
        level = root.level  # tensor instead of per channel ("Axis 1 is out-of-range"): expected, not news
        root.setLevel(logging.ERROR)
        try:
            quant.quantize_static(str(pre), str(tmp), Reader(), quant_format=quant.QuantFormat.QDQ,
                                  activation_type=quant.QuantType.QUInt8, weight_type=quant.QuantType.QInt8,
                                  per_channel=per_channel, calibrate_method=quant.CalibrationMethod.MinMax,
                                  extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        finally:
            root.setLevel(level)
    return Path(out_path)


# ---------------------------------------------------------------------- TorchScript / torch.export
def _compare(name: str, model: nn.Module, loaded: Callable, inputs: list[torch.Tensor], tolerance: float,
             *, optional_after_first: bool = False) -> list[dict]:
    """Compare ``loaded(x)`` with ``model(x)`` on each input. With ``optional_after_first`` an input
    after the first that ``loaded`` cannot run is skipped (a shape outside a proven range)."""
    checks = []
    for i, x in enumerate(inputs):
        with torch.no_grad():
            ref = model(x).numpy()
            try:
                out = loaded(x).numpy()
            except Exception as exc:
                if i == 0 or not optional_after_first:
                    raise ExportError(f"the {name} program fails on {tuple(x.shape)}: {exc}") from exc
                continue
        checks.append({"input_shape": list(x.shape), **_check_close(f"{name} on {tuple(x.shape)}", ref, out,
                                                                    tolerance)})
    return checks


def _verified_report(report: dict, checks: list[dict]) -> dict:
    """``report`` with the verification checks and their worst absolute and relative logit differences."""
    if checks:
        report["verification"] = checks
    if checks and "max_abs_diff" in checks[0]:  # logits (label outputs report their mismatch per check)
        report["max_abs_diff"] = max(c["max_abs_diff"] for c in checks)
        report["rel_diff"] = max(c["rel_diff"] for c in checks)
    return report


def export_torchscript(model: nn.Module | str | os.PathLike, path: str | os.PathLike, *,
                       input_size: Sequence[int] = (512, 1024), verify: bool = True,
                       tolerance: float = 1e-4) -> dict:
    """Trace the deploy form to TorchScript (sizes are traced symbolically, so other input sizes
    work) and check it against eager on the export size and an odd size."""
    model = load_for_deploy(model)
    path = Path(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (_example(input_size),), check_trace=False)
        traced = torch.jit.freeze(traced.eval())
    checks: list[dict] = []

    def check(tmp: Path) -> None:
        checks.extend(_compare("TorchScript", model, torch.jit.load(str(tmp)),
                               verification_inputs(input_size, True), tolerance))

    with atomic_path(path, check if verify else None) as tmp:
        torch.jit.save(traced, str(tmp))
    return _verified_report({"format": "torchscript", "path": str(path), "size_mb": path.stat().st_size / 2**20},
                            checks)


def _torch_export_program(model: nn.Module, x: torch.Tensor, dynamic: bool) -> tuple[Any, bool]:
    """``torch.export`` with symbolic height/width when asked and possible; (program, is_dynamic)."""
    auto = getattr(getattr(torch.export, "Dim", None), "AUTO", None)
    if dynamic and auto is not None:
        try:
            program = torch.export.export(model, (x,), dynamic_shapes=({2: auto, 3: auto},))
            return program, bool(program.range_constraints)
        except Exception:  # noqa: BLE001 - fall back to a static export
            pass
    return torch.export.export(model, (x,)), False


def export_torch_export(model: nn.Module | str | os.PathLike, path: str | os.PathLike, *,
                        input_size: Sequence[int] = (512, 1024), dynamic: bool = True, verify: bool = True,
                        tolerance: float = 1e-4) -> dict:
    """``torch.export`` the deploy form to a ``.pt2`` archive (load with ``torch.export.load``).

    With ``dynamic`` (and a torch that has ``Dim.AUTO``) height and width are exported as symbolic
    sizes; torch narrows them to the range it can prove shape-generic (DAPPM's pooling pyramid
    adds guards), reported as ``range_constraints``. The batch stays at the example's size.
    Without dynamic support the export is static, and ``dynamic`` is False in the report."""
    model = load_for_deploy(model)
    path = Path(path)
    x = _example(input_size)
    program, is_dynamic = _torch_export_program(model, x, dynamic)
    h, w = int(input_size[0]), int(input_size[1])
    inputs = [x] + ([_example((h - 8, w - 8), 1, seed=2)] if is_dynamic and min(h, w) > 72 else [])
    checks: list[dict] = []

    def check(tmp: Path) -> None:
        checks.extend(_compare("torch.export", model, torch.export.load(str(tmp)).module(), inputs, tolerance,
                               optional_after_first=True))

    with atomic_path(path, check if verify else None) as tmp:
        torch.export.save(program, str(tmp))
    report = {"format": "torch.export", "path": str(path), "dynamic": is_dynamic,
              "range_constraints": {str(k): str(v) for k, v in program.range_constraints.items()},
              "size_mb": path.stat().st_size / 2**20}
    return _verified_report(report, checks)


# ---------------------------------------------------------------------------------------- OpenVINO
def to_openvino(source: nn.Module | str | os.PathLike, *, input_size: Sequence[int] = (512, 1024)) -> Any:
    """An ``openvino.Model`` with dynamic batch/height/width, from an ONNX/IR file or a module or
    gcnet checkpoint (its deploy form, converted directly from PyTorch)."""
    ov = require("openvino")
    suffix = Path(source).suffix.lower() if isinstance(source, (str, os.PathLike)) else ""
    if suffix in (".xml", ".onnx"):
        return read_openvino(source, convert=suffix == ".onnx")
    model = load_for_deploy(source)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ov.convert_model(model, example_input=_example(input_size),
                                    input=[ov.PartialShape([-1, 3, -1, -1])])
        except Exception as exc:
            if _interrupted(exc):  # Ctrl-C while tracing, wrapped by OpenVINO's converter
                raise KeyboardInterrupt from None
            raise


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` carries a KeyboardInterrupt: in its chain of causes, or in its message."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt) or "KeyboardInterrupt" in str(exc):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def export_openvino(ov_model: Any, path: str | os.PathLike, *, reference: nn.Module | None = None,
                    input_size: Sequence[int] = (512, 1024), verify: bool = True, tolerance: float = 1e-3,
                    threads: int | None = None) -> dict:
    """Write an IR (``.xml`` + ``.bin``; fp32 weights, int8 weights for a quantized model).

    ``verify`` runs the written pair with OpenVINO on an ``input_size`` example before it replaces
    anything: compared with ``reference`` (the PyTorch deploy form) within ``tolerance`` when given
    (report keys ``max_abs_diff``, ``rel_diff``), otherwise (an int8 model) only checked to run."""
    ov = require("openvino")
    path = Path(path).with_suffix(".xml")
    report: dict[str, Any] = {"format": "openvino", "path": str(path)}
    x = _example(input_size, 1, seed=1)

    def check(tmp_xml: Path) -> None:
        precision = "int8" if is_quantized_openvino(ov_model) else "fp32"
        runtime = OpenVINORuntime(tmp_xml, precision, threads=threads)
        if reference is None:
            _check_runs(f"OpenVINO {precision}", runtime, x.numpy())
            return
        with torch.no_grad():
            ref = reference(x).numpy()
        report.update(_check_close("OpenVINO fp32", ref, runtime(x.numpy()), tolerance))

    with atomic_path(path.with_suffix(".xml"), check if verify else None, companions=(".bin",)) as tmp_xml:
        ov.save_model(ov_model, str(tmp_xml), compress_to_fp16=False)
    return report


QUANT_PRESETS = ("performance", "mixed")  # NNCF's: symmetric / asymmetric u8 activations
# --bias-correction choices -> quantize_openvino's fast_bias_correction (None: chosen per model)
FAST_BIAS_CORRECTION = {"auto": None, "fast": True, "full": False}
FLOAT_CONVS_AUTO = 4  # float_convs="auto": at most this many convolutions stay in float ...
FLOAT_CONVS_SHARE = 0.25  # ... those whose error alone is at least this share of the whole int8 model's


def quantize_openvino(ov_model: Any, calibration: Iterable[np.ndarray], *, preset: str = "auto",
                      fast_bias_correction: bool | None = True, float_convs: int | str = "auto",
                      progress: bool | None = None) -> Any:
    """NNCF post-training int8 quantization of an OpenVINO model: per-channel symmetric s8 weights,
    activations symmetric (``preset="performance"``) or asymmetric u8 (``"mixed"``); ranges estimated
    on ``calibration`` (float32 NCHW arrays), then bias correction (fast, or the full per-layer one with
    ``fast_bias_correction=False``).

    Which settings keep a model closest to fp32 differ from model to model (on one CamVid GCNet-S
    checkpoint asymmetric activations lost 0.7 mIoU where symmetric ones lost none; on another the
    fast bias correction lost 1.3 and the full one 0.4), so what is left open is chosen per model
    (:func:`select_quant_settings`): the preset by default (``preset="auto"``), the bias correction
    too with ``fast_bias_correction=None`` (not the default: on a third model the full correction
    scored 0.3 points higher on the held-out frames and then lost 0.7 mIoU more on val).

    A few reparameterized convolutions carry most of the int8 error (on one CamVid model each of three
    of GCNet-S's 50, quantized alone, added about as much logit error as quantizing all of them, and car
    IoU dropped 8 points),
    so the ``float_convs`` most sensitive ones stay in float (:func:`int8_sensitivity`); ``"auto"``
    keeps those whose error alone is at least :data:`FLOAT_CONVS_SHARE` of the whole model's, at most
    :data:`FLOAT_CONVS_AUTO`; 0 quantizes every convolution.
    The settings used, and the scores behind a choice, are kept in the model's ``rt_info`` (read them
    with :func:`quant_settings_of`; they travel into a saved IR). ``progress``: a bar over the
    sensitivity runs (None: only on a terminal)."""
    samples = [np.ascontiguousarray(c, dtype=np.float32) for c in calibration]
    if not samples:
        raise GCNetError("int8 quantization needs at least one calibration image")
    if preset != "auto" and preset not in QUANT_PRESETS:
        raise GCNetError(f"unknown quantization preset {preset!r} (auto, {', '.join(QUANT_PRESETS)})")
    if float_convs != "auto" and not (isinstance(float_convs, int) and float_convs >= 0):
        raise GCNetError(f"float_convs must be 'auto' or a count >= 0, not {float_convs!r}")
    candidates = [(p, fast) for p in (QUANT_PRESETS if preset == "auto" else (preset,))
                  for fast in ((True, False) if fast_bias_correction is None else (fast_bias_correction,))]
    # NNCF's own defaults first: they are kept unless another candidate is clearly better
    (preset, fast), scores = select_quant_settings(ov_model, samples, candidates)
    floats, errors = _choose_float_convs(ov_model, samples, preset, fast, float_convs, progress)
    quantized = _nncf_quantize(ov_model, samples, preset, fast, floats)
    record_quant_settings(quantized, preset=preset, bias_correction="fast" if fast else "full", scores=scores,
                          float_convs=floats, sensitivity=errors)
    return quantized


def _setting_name(preset: str, fast: bool) -> str:
    return f"{preset}/{'fast' if fast else 'full'}-bc"


SELECTION_MARGIN = 1.0  # points of held-out mIoU another candidate must gain over the first to be chosen


def _held_out(samples: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(calibration, check): the last quarter of ``samples`` is held out from calibration."""
    held = len(samples) // 4
    return samples[:-held], samples[-held:]


def select_quant_settings(ov_model: Any, samples: list[np.ndarray],
                          candidates: list[tuple[str, bool]]) -> tuple[tuple[str, bool], dict[str, float]]:
    """The ``(preset, fast_bias_correction)`` candidate whose int8 model agrees best with the fp32
    model on frames held out from its calibration: each is calibrated on the first three quarters of
    ``samples`` and scored on the last quarter by the mIoU of its labels against the fp32 model's (%,
    at the logits' 1/8 resolution). The first candidate is kept unless another scores more than
    :data:`SELECTION_MARGIN` higher (smaller gaps are within the noise of a few frames). Returns the
    choice and the scores (empty when there was nothing to choose, or fewer than 4 samples to hold
    any out: then the first candidate)."""
    if len(candidates) == 1 or len(samples) < 4:
        return candidates[0], {}
    from gcnet.evaluation.metrics import ConfusionMatrix

    calib, check = _held_out(samples)
    fp32 = OpenVINORuntime(ov_model, "fp32")
    reference = [fp32(x).argmax(1) for x in check]
    scores = {}
    for preset, fast in candidates:
        int8 = OpenVINORuntime(_nncf_quantize(ov_model, calib, preset, fast), "int8")
        matrix = ConfusionMatrix(fp32(check[0]).shape[1])
        for x, ref in zip(check, reference):
            matrix.update(torch.from_numpy(int8(x).argmax(1)), torch.from_numpy(ref))
        scores[_setting_name(preset, fast)] = round(matrix.compute()["mIoU"], 3)
    first = _setting_name(*candidates[0])
    best = max(scores, key=scores.get)
    if scores[best] <= scores[first] + SELECTION_MARGIN:
        best = first
    return next(c for c in candidates if _setting_name(*c) == best), scores


def _convolutions(ov_model: Any) -> list[str]:
    return [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() == "Convolution"]


SENSITIVITY_MAX_PIXELS = 360 * 480  # larger samples are scaled down for int8_sensitivity (a CamVid frame)


def _scaled_down(x: np.ndarray, max_pixels: int) -> np.ndarray:
    """``x`` (NCHW) resized (bilinear, antialiased) to at most ``max_pixels`` per image, aspect kept."""
    h, w = x.shape[2:]
    if h * w <= max_pixels:
        return x
    scale = math.sqrt(max_pixels / (h * w))
    size = (max(8, int(h * scale)), max(8, int(w * scale)))
    return F.interpolate(torch.from_numpy(x), size=size, mode="bilinear", antialias=True).numpy()


def relative_error(run: Callable[[Any], Any], inputs: Sequence[Any], reference: Sequence[Any]) -> float:
    """``sum |run(x) - ref|^2 / sum |ref|^2`` over ``inputs`` (arrays or tensors): how far ``run`` is from the
    logits ``reference``."""
    num = sum(float(((run(x) - ref) ** 2).sum()) for x, ref in zip(inputs, reference))
    return num / max(sum(float((ref ** 2).sum()) for ref in reference), 1e-12)


def int8_sensitivity(ov_model: Any, samples: list[np.ndarray], preset: str = "performance",
                     fast_bias_correction: bool = True, progress: bool | None = None) -> dict[str, float]:
    """How much int8 error each convolution of ``ov_model`` brings: the relative squared error of the
    logits (``|int8 - fp32|^2 / |fp32|^2``) on the last quarter of ``samples`` when only that convolution
    is quantized (calibrated on the other three quarters), by convolution name; ``"all"``: every
    convolution quantized (NNCF's default model). Needs at least 4 samples. Samples larger than
    :data:`SENSITIVITY_MAX_PIXELS` are scaled down first: one NNCF run per convolution, so the cost
    grows with their size (about 2 s per convolution at 360x480 on 2 cores). ``progress``: a bar over
    the convolutions (None: only on a terminal)."""
    from tqdm.auto import tqdm

    calib, check = _held_out([_scaled_down(x, SENSITIVITY_MAX_PIXELS) for x in samples])
    fp32 = OpenVINORuntime(ov_model, "fp32")
    reference = [fp32(x) for x in check]

    def error(model: Any) -> float:
        run = OpenVINORuntime(model, "int8" if is_quantized_openvino(model) else "fp32")  # NNCF may skip a conv
        return relative_error(run, check, reference)

    convs = _convolutions(ov_model)
    errors = {"all": error(_nncf_quantize(ov_model, calib, preset, fast_bias_correction))}
    disable = None if progress is None else not progress  # tqdm's None: off unless on a terminal
    for name in tqdm(convs, desc="int8 sensitivity", unit="conv", leave=False, disable=disable):
        rest = [c for c in convs if c != name]
        errors[name] = error(_nncf_quantize(ov_model, calib, preset, fast_bias_correction, rest, other_ops=False))
    return errors


def _choose_float_convs(ov_model: Any, samples: list[np.ndarray], preset: str, fast: bool,
                        float_convs: int | str, progress: bool | None) -> tuple[list[str], dict[str, float]]:
    """The convolutions to leave in float and the sensitivities behind the choice (empty without a
    choice to make, or with fewer than 4 samples: then none stay in float)."""
    if float_convs == 0 or len(samples) < 4:
        return [], {}
    errors = int8_sensitivity(ov_model, samples, preset, fast, progress)
    return pick_float_convs(errors, float_convs), {k: float(f"{v:.3g}") for k, v in errors.items()}


def pick_float_convs(errors: dict[str, float], float_convs: int | str) -> list[str]:
    """From :func:`int8_sensitivity`'s ``errors``, the ``float_convs`` most sensitive convolutions, most
    sensitive first; ``"auto"``: those among the :data:`FLOAT_CONVS_AUTO` most sensitive whose error alone
    is at least :data:`FLOAT_CONVS_SHARE` of the whole int8 model's (``errors["all"]``)."""
    ranked = sorted((c for c in errors if c != "all"), key=errors.get, reverse=True)
    if float_convs != "auto":
        return ranked[:float_convs]
    return [c for c in ranked[:FLOAT_CONVS_AUTO] if errors[c] >= FLOAT_CONVS_SHARE * errors["all"]]


# quant_settings_of's keys -> where they live in a model's rt_info (under "gcnet"), as JSON but for the first two
_QUANT_INFO = {"preset": "quant_preset", "bias_correction": "quant_bias_correction", "scores": "quant_scores",
               "float_convs": "quant_float_convs", "sensitivity": "quant_float_convs_errors",
               "finetune": "quant_finetune"}
_QUANT_EMPTY = {"scores": {}, "float_convs": [], "sensitivity": {}, "finetune": {}}


def record_quant_settings(ov_model: Any, **settings: Any) -> None:
    """Keep how ``ov_model`` was quantized in its ``rt_info`` (it travels into a saved IR): the keys of
    :func:`quant_settings_of`; empty values are left out."""
    for key, value in settings.items():
        if value:
            ov_model.set_rt_info(value if isinstance(value, str) else json.dumps(value), ["gcnet", _QUANT_INFO[key]])


def quant_settings_of(ov_model: Any) -> dict[str, Any]:
    """How a gcnet int8 model was quantized: ``preset``, ``bias_correction`` ("fast", "full"; "none" after
    a fine-tune), ``scores`` (of an automatic choice), ``float_convs`` (left unquantized), ``sensitivity``
    (the per-convolution errors behind them) and ``finetune`` (steps, learning rate, logit error of a
    quantization-aware fine-tune: :func:`gcnet.deploy.qat.quantize_aware`); empty for other models."""
    def read(key: str) -> str | None:
        path = ["gcnet", _QUANT_INFO[key]]
        return ov_model.get_rt_info(path).astype(str) if ov_model.has_rt_info(path) else None

    if read("preset") is None:
        return {}
    out = {key: read(key) for key in ("preset", "bias_correction")}
    out.update({key: json.loads(read(key) or json.dumps(empty)) for key, empty in _QUANT_EMPTY.items()})
    return out


NON_CONV_QUANTIZED_OPS = ["Add", "Interpolate", "AvgPool", "Concat", "ReduceMean", "Multiply"]


def _nncf_quantize(ov_model: Any, samples: list[np.ndarray], preset: str, fast_bias_correction: bool,
                   float_convs: Sequence[str] = (), other_ops: bool = True) -> Any:
    """NNCF quantization, ``float_convs`` left unquantized and, unless ``other_ops``, the inputs of the
    non-convolution ops (:data:`NON_CONV_QUANTIZED_OPS`) too. NNCF's progress bars are not shown."""
    nncf = require("nncf")
    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    logging.getLogger("nncf").setLevel(logging.WARNING)
    scope = nncf.IgnoredScope(names=list(float_convs), types=[] if other_ops else NON_CONV_QUANTIZED_OPS,
                              validate=False)  # a model may lack some of these types
    with contextlib.redirect_stdout(io.StringIO()):  # rich bars, two per call
        return nncf.quantize(ov_model, nncf.Dataset(samples), preset=presets[preset], subset_size=len(samples),
                             fast_bias_correction=fast_bias_correction, ignored_scope=scope)


# ------------------------------------------------------------------------------------- calibration
def calibration_from_dataset(dataset: Any, num: int = CALIB_IMAGES, seed: int = 0) -> list[np.ndarray]:
    """``num`` images drawn at random (fixed seed) from ``dataset`` as 1x3xHxW float32 arrays.
    Items may be normalised tensors (EvalTransform) or raw uint8 images (normalised here)."""
    from gcnet.data.transforms import normalize

    if len(dataset) == 0:
        raise GCNetError("the calibration dataset is empty")
    idx = list(range(len(dataset)))
    random.Random(seed).shuffle(idx)
    out = []
    for i in idx[:num]:
        image = dataset[i][0]
        if isinstance(image, np.ndarray):
            image = normalize(image) if image.dtype == np.uint8 else torch.from_numpy(image)
        out.append(image.unsqueeze(0).numpy().astype(np.float32))
    return out


class ImageFiles(Sequence):
    """Image files (sorted) as an unlabelled dataset: items ``(normalised 3xHxW tensor, None)``, read like
    dataset images (the training MEAN/STD) when indexed: calibration images and the int8 fine-tune's frames."""

    def __init__(self, paths: Iterable[str | os.PathLike]) -> None:
        self.paths = sorted(Path(p) for p in paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, None]:
        from gcnet.data.datasets import read_image
        from gcnet.data.transforms import normalize

        return normalize(read_image(self.paths[i])), None


def calibration_from_images(paths: Iterable[str | os.PathLike], num: int = CALIB_IMAGES) -> list[np.ndarray]:
    """Calibration arrays (1x3xHxW float32) from the first ``num`` of :class:`ImageFiles` ``(paths)``."""
    files = ImageFiles(paths)
    if not len(files):
        raise GCNetError("no calibration images found")
    return [files[i][0].unsqueeze(0).numpy().astype(np.float32) for i in range(min(num, len(files)))]
