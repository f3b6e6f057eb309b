"""Export the reparameterized GCNet: ONNX (verified against PyTorch), TorchScript, torch.export,
OpenVINO IR, and int8 post-training quantization (OpenVINO/NNCF and ONNX Runtime QDQ) with an
accuracy check of every runtime against fp32 on any dataset.

Every export starts from the deploy form: a training-form model is copied and reparameterized
(the caller's module is left unchanged).
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import random
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gcnet.deploy.runtimes import Runtime, require
from gcnet.errors import GCNetError

DEFAULT_OPSET = 17


class ExportError(GCNetError):
    """An export failed or its output does not match PyTorch within the tolerance."""


# ------------------------------------------------------------------------------------------ models
def load_for_deploy(source: nn.Module | str | os.PathLike) -> nn.Module:
    """A reparameterized, eval-mode GCNet from a module (copied if it needs reparameterizing) or a
    gcnet checkpoint path."""
    if isinstance(source, (str, os.PathLike)):
        import gcnet

        model = gcnet.load_model(source)
    else:
        model = source
    if not getattr(model, "is_deployed", True):
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
def export_onnx(model: nn.Module | str | os.PathLike, path: str | os.PathLike, *,
                input_size: Sequence[int] = (512, 1024), opset: int = DEFAULT_OPSET, dynamic: bool = True,
                postprocess: bool = False, verify: bool = True, tolerance: float = 1e-3) -> dict:
    """Export the deploy form to ONNX (input ``input`` float32 NCHW; output ``logits`` at 1/8, or
    ``labels`` int64 (B, H, W) with ``postprocess``). ``dynamic`` marks batch, height and width
    dynamic. ``verify`` runs the file with ONNX Runtime on the export size and (dynamic) on an odd
    size with batch 2 and raises :class:`ExportError` if the max abs difference to PyTorch,
    divided by max(1, max |logits|), exceeds ``tolerance``. Returns a report dict."""
    if opset < 17:
        raise ExportError("opset >= 17 is required")
    model = load_for_deploy(model)
    net = SegmentationWithPostprocess(model).eval() if postprocess else model
    out_name = "labels" if postprocess else "logits"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {"input_names": ["input"], "output_names": [out_name], "opset_version": opset,
                              "do_constant_folding": True}
    if dynamic:
        kwargs["dynamic_axes"] = {"input": {0: "batch", 2: "height", 3: "width"},
                                  out_name: ({0: "batch", 1: "out_height", 2: "out_width"} if postprocess
                                             else {0: "batch", 2: "out_height", 3: "out_width"})}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript exporter: no onnxscript needed, dynamic_axes honoured
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (_example(input_size),), str(tmp), **kwargs)
        os.replace(tmp, path)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, GCNetError):
            raise
        raise ExportError(f"ONNX export failed: {exc}") from exc
    report: dict[str, Any] = {"format": "onnx", "path": str(path), "opset": opset, "dynamic": dynamic,
                              "output": out_name, "size_mb": path.stat().st_size / 2**20}
    if verify:
        ort = require("onnxruntime")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        checks = []
        try:
            for x in verification_inputs(input_size, dynamic):
                with torch.no_grad():
                    ref = net(x).numpy()
                try:
                    out = sess.run(None, {"input": x.numpy()})[0]
                except Exception as exc:
                    raise ExportError(f"ONNX Runtime cannot run the export on {tuple(x.shape)}: {exc}") from exc
                check = _check_close(f"ONNX Runtime on {tuple(x.shape)}", ref, out, tolerance, labels=postprocess)
                checks.append({"input_shape": list(x.shape), **check})
        except ExportError:
            del sess
            path.unlink(missing_ok=True)  # a file on disk is always a verified one
            raise
        report["verification"] = checks
        if not postprocess:
            report["max_abs_diff"] = max(c["max_abs_diff"] for c in checks)
    return report


def is_quantized_onnx(path: str | os.PathLike) -> bool:
    onnx = require("onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    return any(n.op_type in ("QuantizeLinear", "QLinearConv", "ConvInteger") for n in graph.node)


def quantize_onnx(onnx_path: str | os.PathLike, out_path: str | os.PathLike,
                  calibration: Iterable[np.ndarray], *, per_channel: bool = True) -> Path:
    """Static int8 QDQ quantization with ONNX Runtime (u8 activations, s8 per-channel weights,
    min-max calibration on ``calibration`` float32 NCHW arrays)."""
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

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="gcnet-q-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation; quantize the original
            pre = Path(onnx_path)
        tmp_out = Path(tmp) / "q.onnx"
        quant.quantize_static(str(pre), str(tmp_out), Reader(), quant_format=quant.QuantFormat.QDQ,
                              activation_type=quant.QuantType.QUInt8, weight_type=quant.QuantType.QInt8,
                              per_channel=per_channel, calibrate_method=quant.CalibrationMethod.MinMax,
                              extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        out_path.parent.mkdir(parents=True, exist_ok=True)
        part = out_path.with_name(f".{out_path.name}.tmp{os.getpid()}")
        shutil.copyfile(tmp_out, part)
        os.replace(part, out_path)
    return out_path


# ---------------------------------------------------------------------- TorchScript / torch.export
def export_torchscript(model: nn.Module | str | os.PathLike, path: str | os.PathLike, *,
                       input_size: Sequence[int] = (512, 1024), verify: bool = True,
                       tolerance: float = 1e-4) -> dict:
    """Trace the deploy form to TorchScript (sizes are traced symbolically, so other input sizes
    work) and check it against eager on the export size and an odd size."""
    model = load_for_deploy(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (_example(input_size),), check_trace=False)
        traced = torch.jit.freeze(traced.eval()) if hasattr(torch.jit, "freeze") else traced
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    torch.jit.save(traced, str(tmp))
    os.replace(tmp, path)
    report: dict[str, Any] = {"format": "torchscript", "path": str(path), "size_mb": path.stat().st_size / 2**20}
    if verify:
        loaded = torch.jit.load(str(path))
        checks = []
        for x in verification_inputs(input_size, True):
            with torch.no_grad():
                checks.append({"input_shape": list(x.shape), **_check_close(
                    f"TorchScript on {tuple(x.shape)}", model(x).numpy(), loaded(x).numpy(), tolerance)})
        report["verification"] = checks
        report["max_abs_diff"] = max(c["max_abs_diff"] for c in checks)
    return report


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
    path.parent.mkdir(parents=True, exist_ok=True)
    x = _example(input_size)
    ep, is_dynamic = None, False
    auto = getattr(getattr(torch.export, "Dim", None), "AUTO", None)
    if dynamic and auto is not None:
        try:
            ep = torch.export.export(model, (x,), dynamic_shapes=({2: auto, 3: auto},))
            is_dynamic = bool(ep.range_constraints)
        except Exception:  # noqa: BLE001 - fall back to a static export below
            ep = None
    if ep is None:
        ep = torch.export.export(model, (x,))
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    torch.export.save(ep, str(tmp))
    os.replace(tmp, path)
    report: dict[str, Any] = {"format": "torch.export", "path": str(path), "dynamic": is_dynamic,
                              "range_constraints": {str(k): str(v) for k, v in ep.range_constraints.items()},
                              "size_mb": path.stat().st_size / 2**20}
    if verify:
        loaded = torch.export.load(str(path)).module()
        checks = []
        h, w = int(input_size[0]), int(input_size[1])
        inputs = [x] + ([_example((h - 8, w - 8), 1, seed=2)] if is_dynamic and min(h, w) > 72 else [])
        for i, xi in enumerate(inputs):
            with torch.no_grad():
                ref = model(xi).numpy()
                try:
                    out = loaded(xi).numpy()
                except Exception as exc:
                    if i == 0:
                        raise ExportError(f"the torch.export program fails on its example input: {exc}") from exc
                    continue
            checks.append({"input_shape": list(xi.shape),
                           **_check_close(f"torch.export on {tuple(xi.shape)}", ref, out, tolerance)})
        report["verification"] = checks
        report["max_abs_diff"] = max(c["max_abs_diff"] for c in checks)
    return report


# ---------------------------------------------------------------------------------------- OpenVINO
def to_openvino(source: nn.Module | str | os.PathLike, *, input_size: Sequence[int] = (512, 1024)) -> Any:
    """An ``openvino.Model`` with dynamic batch/height/width, from an ONNX/IR file or a module
    (converted directly from PyTorch)."""
    ov = require("openvino")
    if isinstance(source, (str, os.PathLike)):
        suffix = Path(source).suffix.lower()
        if suffix == ".xml":
            return ov.Core().read_model(str(source))
        if suffix == ".onnx":
            return ov.convert_model(str(source))
        source = load_for_deploy(source)
    model = load_for_deploy(source)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ov_model = ov.convert_model(model, example_input=_example(input_size),
                                    input=[ov.PartialShape([-1, 3, -1, -1])])
    return ov_model


def save_openvino(ov_model: Any, path: str | os.PathLike) -> Path:
    """Write an IR (``.xml`` + ``.bin``) with fp32 weights (int8 weights for a quantized model)."""
    ov = require("openvino")
    path = Path(path).with_suffix(".xml")
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    return path


def quantize_openvino(ov_model: Any, calibration: Iterable[np.ndarray], *, preset: str = "mixed",
                      fast_bias_correction: bool = True) -> Any:
    """NNCF post-training int8 quantization of an OpenVINO model: per-channel symmetric s8 weights,
    activations asymmetric u8 (``preset="mixed"``, the default: on GCNet it keeps mIoU clearly
    closer to fp32 than symmetric activations at the same speed) or symmetric (``"performance"``);
    ranges estimated on ``calibration`` (float32 NCHW arrays), then bias correction (fast, or the
    full per-layer one with ``fast_bias_correction=False``)."""
    nncf = require("nncf")
    samples = [np.ascontiguousarray(c, dtype=np.float32) for c in calibration]
    if not samples:
        raise GCNetError("int8 quantization needs at least one calibration image")
    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    if preset not in presets:
        raise GCNetError(f"unknown quantization preset {preset!r} (performance or mixed)")
    import logging

    logging.getLogger("nncf").setLevel(logging.WARNING)
    return nncf.quantize(ov_model, nncf.Dataset(samples), preset=presets[preset], subset_size=len(samples),
                         fast_bias_correction=fast_bias_correction)


# ------------------------------------------------------------------------- calibration & accuracy
def _normalized_image(item: Any) -> torch.Tensor:
    image = item[0]
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8:
            from gcnet.data.transforms import normalize

            return normalize(image)
        image = torch.from_numpy(image)
    return image


def calibration_from_dataset(dataset: Any, num: int = 16, seed: int = 0) -> list[np.ndarray]:
    """``num`` images drawn at random (fixed seed) from ``dataset`` as 1x3xHxW float32 arrays.
    Items may be normalised tensors (EvalTransform) or raw uint8 images (normalised here)."""
    if len(dataset) == 0:
        raise GCNetError("the calibration dataset is empty")
    idx = list(range(len(dataset)))
    random.Random(seed).shuffle(idx)
    return [_normalized_image(dataset[i]).unsqueeze(0).numpy().astype(np.float32) for i in idx[:num]]


def calibration_from_images(paths: Iterable[str | os.PathLike], num: int = 16) -> list[np.ndarray]:
    """Calibration arrays from image files (RGB, normalised with the training MEAN/STD)."""
    from PIL import Image

    from gcnet.data.transforms import normalize

    out = []
    for p in sorted(Path(p) for p in paths)[:num]:
        try:
            with Image.open(p) as im:
                rgb = np.asarray(im.convert("RGB"))
        except Exception as exc:
            raise GCNetError(f"cannot read calibration image {p}: {exc}") from exc
        out.append(normalize(rgb).unsqueeze(0).numpy().astype(np.float32))
    if not out:
        raise GCNetError("no calibration images found")
    return out


def evaluate_runtime(runtime: Runtime | Any, dataset: Any, *, num_classes: int | None = None,
                     ignore_index: int | None = None, limit: int | None = None, progress: bool = False) -> dict:
    """mIoU/aAcc/mAcc of a runtime (or any ``x -> logits`` callable) on ``dataset`` (whole-image
    inference, logits upsampled bilinearly to the label size)."""
    from gcnet.evaluation.metrics import ConfusionMatrix

    info = getattr(dataset, "info", None)
    num_classes = num_classes or (len(info.classes) if info is not None else None)
    ignore_index = ignore_index if ignore_index is not None else (info.ignore_index if info is not None else 255)
    if num_classes is None:
        raise GCNetError("evaluate_runtime: num_classes is unknown (dataset has no .info)")
    cm = ConfusionMatrix(num_classes, ignore_index)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    it = range(n)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"eval {getattr(runtime, 'name', 'model')}", unit="img")
    for i in it:
        item = dataset[i]
        x = _normalized_image(item).unsqueeze(0).numpy().astype(np.float32)
        label = torch.as_tensor(np.asarray(item[1])).long()
        logits = torch.from_numpy(np.asarray(runtime(x), dtype=np.float32))
        logits = F.interpolate(logits, size=tuple(label.shape[-2:]), mode="bilinear", align_corners=False)
        cm.update(logits.argmax(1)[0], label)
    results = cm.compute()
    results["num_images"] = n
    return results


def compare_accuracy(runtimes: Mapping[str, Runtime | Any], dataset: Any, *, reference: str | None = None,
                     **kwargs: Any) -> dict:
    """Evaluate each runtime on ``dataset``; report mIoU, aAcc and ``delta_mIoU`` against
    ``reference`` (default: the first one, normally the fp32 runtime)."""
    if not runtimes:
        return {}
    reference = reference or next(iter(runtimes))
    if reference not in runtimes:
        raise GCNetError(f"reference runtime {reference!r} is not among {', '.join(runtimes)}")
    out: dict[str, dict] = {}
    for name, rt in runtimes.items():
        r = evaluate_runtime(rt, dataset, **kwargs)
        out[name] = {"mIoU": r["mIoU"], "aAcc": r["aAcc"], "mAcc": r["mAcc"], "num_images": r["num_images"]}
    ref = out[reference]["mIoU"]
    for value in out.values():
        value["delta_mIoU"] = value["mIoU"] - ref
    return {"reference": reference, "results": out}
