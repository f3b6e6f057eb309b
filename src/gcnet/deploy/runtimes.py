"""One small interface over the inference runtimes: PyTorch (eager / channels_last / bf16 /
torch.compile, CPU or CUDA), ONNX Runtime (fp32, int8 QDQ) and OpenVINO (fp32, bf16, int8).

A :class:`Runtime` takes a float32 NCHW array (normalised like the training data, see
``gcnet.data.transforms``) and returns the model's float32 logits at 1/8 resolution, exactly like
``GCNet.forward`` in eval mode::

    runtime = OpenVINORuntime("model.xml", precision="bf16", threads=2)
    logits = runtime(batch)        # np.ndarray (B, K, ceil(H/8), ceil(W/8))

The classes open what they are given (a module, an ONNX file, an OpenVINO model); converting,
exporting and quantizing on the way there is :func:`gcnet.deploy.pipeline.build`. Only PyTorch is
required; the other runtimes are imported when first used and raise
:class:`~gcnet.optional.RuntimeUnavailableError` with an install hint when missing.
"""

from __future__ import annotations

import copy
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gcnet.errors import GCNetError
from gcnet.optional import RuntimeUnavailableError, is_available, require

RUNTIME_KINDS = ("torch", "onnxruntime", "openvino")
PRECISIONS = {
    "torch": ("fp32", "bf16", "fp16"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}


def available_runtimes() -> list[str]:
    """The runtime kinds installed here."""
    return [k for k in RUNTIME_KINDS if is_available(k)]


def default_threads() -> int:
    """Threads to use: the CPUs this process may run on (respects taskset / cgroup cpusets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class Runtime:
    """Base class: ``runtime(x: float32 NCHW ndarray) -> float32 logits ndarray``.

    Attributes: ``kind`` ("torch", "onnxruntime", "openvino"), ``precision`` ("fp32", "bf16", "fp16",
    "int8"), ``device`` ("cpu" or "cuda"), ``name`` ("<kind>-<precision>" plus options), ``threads``,
    ``input_hw``: the (height, width) a model of fixed input shape takes (a static export), else None.
    """

    kind = "base"
    input_hw: tuple[int, int] | None = None

    def __init__(self, precision: str, device: str = "cpu", threads: int | None = None,
                 tag: str = "") -> None:
        self.precision = precision
        self.device = device
        self.threads = threads
        self.name = f"{self.kind}{'-cuda' if device == 'cuda' else ''}-{precision}{tag}"

    def __call__(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def frames(self, images: np.ndarray) -> np.ndarray:
        """Logits of RGB uint8 frames ``(N, H, W, 3)``, normalised as in training.

        Runtimes that can normalise inside their graph override this to skip the float copy.
        """
        from gcnet.data.transforms import normalize

        return self(torch.stack([normalize(image) for image in images]).numpy())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} threads={self.threads}>"


# ----------------------------------------------------------------------------------------- torch
class TorchRuntime(Runtime):
    """PyTorch eager (channels_last, bf16/fp16, ``torch.compile``, CUDA graphs as asked).

    ``precision`` "bf16"/"fp16": a copy of the model is cast to that dtype (weights, activations;
    inputs are cast on entry, logits returned as float32), or with ``cast_model=False`` autocast
    runs the convs in low precision with fp32 weights. ``cuda_graphs`` captures one forward per
    input shape (CUDA only). On CUDA, ``cudnn_benchmark`` (default on) lets cuDNN time its
    convolution algorithms on the first call of each input shape and keep the fastest (this sets
    the process-wide ``torch.backends.cudnn.benchmark``). ``channels_last`` (default: on CPUs, where
    oneDNN's convolutions run 1.3x faster on NHWC tensors, not on CUDA) runs on a channels_last copy
    of the model. The model is used as given otherwise (moved to ``device``): pass a reparameterized
    model for the deploy form.
    """

    kind = "torch"

    def __init__(self, model: nn.Module, precision: str = "fp32", *, device: str = "cpu",
                 threads: int | None = None, channels_last: bool | None = None, compile: bool | str = False,
                 cuda_graphs: bool = False, cast_model: bool = True, cudnn_benchmark: bool = True) -> None:
        channels_last = device == "cpu" if channels_last is None else channels_last
        tag = ("-cl" if channels_last else "") + ("-compile" if compile else "") + (
            "-graphs" if cuda_graphs else "")
        super().__init__(precision, device, threads, tag)
        if precision not in PRECISIONS["torch"]:
            raise GCNetError(f"torch runtime: unsupported precision {precision!r} "
                             f"(choose from {', '.join(PRECISIONS['torch'])})")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeUnavailableError("CUDA was requested but torch.cuda.is_available() is False")
        if cuda_graphs and device != "cuda":
            raise GCNetError("CUDA graphs need device='cuda'")
        if threads and device == "cpu":
            torch.set_num_threads(int(threads))
        if device == "cuda" and cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        self.channels_last = channels_last
        self.cuda_graphs = cuda_graphs
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self._cast = bool(cast_model and self._dtype is not None)
        if self._cast or channels_last:  # the caller's module keeps its dtype and layout
            model = copy.deepcopy(model)
        if self._cast:
            model = model.to(self._dtype)
        model = model.eval().to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self._forward: Callable = model
        if compile:
            mode = compile if isinstance(compile, str) else None
            self._forward = torch.compile(model, mode=mode, dynamic=False)
        self._graphs: dict[tuple, tuple] = {}

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self._dtype is None:
            return self._forward(x)
        if self._cast:
            return self._forward(x.to(self._dtype))
        with torch.autocast(self.device, dtype=self._dtype):
            return self._forward(x)

    @torch.inference_mode()
    def forward_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Tensor in, tensor out (on the runtime's device, float32); no host copies."""
        x = x.to(self.device, torch.float32).contiguous(memory_format=self.memory_format)
        if self.cuda_graphs:
            return self._graph_forward(x)
        return self._run(x).float()

    def _graph_forward(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        if key not in self._graphs:
            static_in = x.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):  # warm-up on a side stream, as CUDA graphs require
                for _ in range(3):
                    self._run(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._run(static_in).float()
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.forward_tensor(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return out.cpu().numpy()


# ----------------------------------------------------------------------------------- onnxruntime
class OnnxRuntime(Runtime):
    """ONNX Runtime CPU session, all graph optimisations on, ``threads`` intra-op threads."""

    kind = "onnxruntime"

    def __init__(self, path: str | os.PathLike, precision: str = "fp32", *, threads: int | None = None,
                 providers: list[str] | None = None) -> None:
        super().__init__(precision, "cpu", threads)
        ort = require("onnxruntime")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        threads = threads or default_threads()
        self.threads = threads
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise GCNetError(f"onnxruntime cannot load {path}: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.input_hw = fixed_hw(self.session.get_inputs()[0].shape)
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: x})[0]


# -------------------------------------------------------------------------------------- openvino
class OpenVINORuntime(Runtime):
    """OpenVINO CPU plugin, latency mode (one stream, ``threads`` threads).

    ``precision`` "fp32" pins f32 execution (OpenVINO would otherwise pick bf16 on CPUs with
    AVX512_BF16/AMX), "bf16" asks for bf16 execution, "int8" expects a quantized model (FakeQuantize
    nodes, see :func:`gcnet.deploy.export.quantize_openvino`); its non-quantized ops run in
    ``int8_rest`` precision, by default OpenVINO's choice: bf16 on CPUs with AVX512_BF16 or AMX (4%
    faster than f32 for GCNet-S on a Zen 5, mIoU unchanged), else f32.

    With ``static_shapes`` (default) the model is compiled once per input shape (kept for the last
    ``max_shapes`` shapes), which is faster than a dynamic-shape compile; otherwise one dynamic
    compile serves every shape.

    ``plain`` compiles the model as it comes with OpenVINO's default configuration (no hints, no
    reshape; only the thread count is kept, so every form gets the same cores): what
    ``core.compile_model(model, "CPU")`` gives, the baseline `gcnet bench` compares with.
    """

    kind = "openvino"

    def __init__(self, model: Any, precision: str = "fp32", *, threads: int | None = None,
                 static_shapes: bool = True, max_shapes: int = 4, int8_rest: str | None = None,
                 config: dict | None = None, plain: bool = False) -> None:
        super().__init__(precision, "cpu", threads)
        ov = require("openvino")
        if precision not in PRECISIONS["openvino"]:
            raise GCNetError(f"openvino runtime: unsupported precision {precision!r}")
        self.core = ov.Core()
        self.model = read_openvino(model) if isinstance(model, (str, os.PathLike)) else model
        if precision == "int8" and not is_quantized_openvino(self.model):
            raise GCNetError("openvino int8 needs a quantized model (no FakeQuantize nodes found); "
                             "quantize it with gcnet.deploy.export.quantize_openvino or `gcnet export "
                             "--format openvino --precision int8`")
        self.input_hw = fixed_hw([d.get_length() if d.is_static else None
                                  for d in self.model.inputs[0].get_partial_shape()])
        threads = threads or default_threads()
        self.threads = threads
        hint = {"fp32": "f32", "bf16": "bf16", "int8": int8_rest}[precision]
        self.config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads)}
        if hint:
            self.config["INFERENCE_PRECISION_HINT"] = hint
        self.config.update(config or {})
        if plain:
            self.config, static_shapes = {"INFERENCE_NUM_THREADS": str(threads), **(config or {})}, False
        self.static_shapes = static_shapes
        self.max_shapes = max_shapes
        self._requests: dict[tuple, Any] = {}

    def _requests_for(self, shape: tuple, uint8: bool, in_flight: int = 1) -> list:
        """``in_flight`` infer requests of the model compiled for ``shape`` (cached per shape, input type
        and count): one request in latency mode, or one per stream in throughput mode, the threads
        shared between ``in_flight`` streams."""
        key = (uint8, shape if self.static_shapes else (), in_flight)
        requests = self._requests.get(key)
        if requests is None:
            model = self.model.clone()
            if uint8:
                from gcnet.deploy.ov_preprocess import with_uint8_nhwc_input

                model = with_uint8_nhwc_input(model)
            if self.static_shapes:
                model.reshape({model.inputs[0].any_name: list(shape)})
            config = self.config
            if in_flight > 1:
                config = {**config, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": str(in_flight)}
            compiled = self.core.compile_model(model, "CPU", config)
            if len(self._requests) >= self.max_shapes:  # forget the oldest compile
                oldest = next(iter(self._requests))
                del self._requests[oldest]  # an infer request holds its compiled model: this frees both
            requests = self._requests[key] = [compiled.create_infer_request() for _ in range(in_flight)]
        return requests

    def _infer(self, x: np.ndarray, uint8: bool) -> np.ndarray:
        req = self._requests_for(tuple(x.shape), uint8)[0]
        req.infer([x], share_inputs=True)
        return np.array(req.get_output_tensor(0).data, copy=True)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._infer(np.ascontiguousarray(x, dtype=np.float32), uint8=False)

    def frames(self, images: np.ndarray) -> np.ndarray:
        """Logits of RGB uint8 frames ``(N, H, W, 3)``: conversion, normalisation and layout run
        inside the compiled graph (see :mod:`gcnet.deploy.ov_preprocess`)."""
        return self._infer(np.ascontiguousarray(images, dtype=np.uint8), uint8=True)

    def frames_in_flight(self, images: Iterable[np.ndarray], in_flight: int = 2
                         ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(image, logits)`` for each RGB uint8 ``(H, W, 3)`` image, in order, as :meth:`frames` gives
        them, with up to ``in_flight`` images inferred at once (throughput mode: ``in_flight`` streams
        share the threads). On few cores one stream per core keeps them busier than one stream of all
        threads; each image then waits longer for its own result (about ``in_flight`` x the latency)."""
        pending: deque[tuple[Any, np.ndarray, np.ndarray]] = deque()  # (request, image, input), in order
        free: deque = deque()
        shape = None

        def collect() -> tuple[np.ndarray, np.ndarray]:
            req, image, _ = pending.popleft()
            req.wait()
            free.append(req)
            return image, np.array(req.get_output_tensor(0).data, copy=True)

        try:
            for image in images:
                if image.ndim != 3 or image.shape[2] != 3:
                    raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
                x = np.ascontiguousarray(image, dtype=np.uint8)[None]
                if x.shape != shape:  # a new size: finish the old one's frames, then switch compiles
                    while pending:
                        yield collect()
                    shape, free = x.shape, deque(self._requests_for(x.shape, True, in_flight))
                done = None if free else collect()
                req = free.popleft()
                req.start_async([x], share_inputs=True)  # before the caller works on ``done``
                pending.append((req, image, x))
                if done is not None:
                    yield done
            while pending:
                yield collect()
        except Exception:  # a bad image or a failing source: the images before it come out first
            while pending:
                yield collect()
            raise
        finally:  # never leave a request running on an input that is about to be freed
            for req, _, _ in pending:
                req.wait()


def fixed_hw(shape: Iterable[Any]) -> tuple[int, int] | None:
    """``(height, width)`` of an NCHW input shape whose last two dims are fixed numbers (ONNX Runtime gives
    names or None for dynamic dims), else None."""
    dims = list(shape)
    if len(dims) == 4 and all(isinstance(d, int) and d > 0 for d in dims[2:]):
        return dims[2], dims[3]
    return None


def read_openvino(path: str | os.PathLike, convert: bool = False) -> Any:
    """An ``openvino.Model`` read from an IR ``.xml`` (``convert``: converted from an ONNX file); a file
    OpenVINO cannot read (no or a truncated ``.bin``, not a model) raises GCNetError naming it."""
    ov = require("openvino")
    try:
        return ov.convert_model(str(path)) if convert else ov.Core().read_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError with its C++ call chain; its last line says why
        reason = [line for line in str(exc).splitlines() if line.strip()]
        raise GCNetError(f"openvino cannot read {path}: {reason[-1] if reason else type(exc).__name__}") from exc


def is_quantized_openvino(model: Any) -> bool:
    """Whether an ``openvino.Model`` holds FakeQuantize nodes (an int8 model from NNCF)."""
    return any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
