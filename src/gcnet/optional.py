"""Optional dependencies (onnx, onnxruntime, openvino, nncf, opencv): import on first use with an
install hint. A leaf module: it imports nothing from gcnet but the error class."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from gcnet.errors import GCNetError

PIP_NAMES = {"openvino": "openvino", "onnxruntime": "onnxruntime", "onnx": "onnx", "nncf": "nncf",
             "cv2": "opencv-python-headless"}


class RuntimeUnavailableError(GCNetError):
    """An optional dependency (onnxruntime, openvino, nncf, opencv) is not installed, or CUDA is missing."""


def require(module: str) -> Any:
    """Import an optional dependency or raise :class:`RuntimeUnavailableError` with an install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pip_name = PIP_NAMES.get(module.split(".")[0], module)
        raise RuntimeUnavailableError(
            f"'{module}' is not installed; install it with `pip install {pip_name}` "
            f"(or `pip install gcnet[deploy]` for all deployment runtimes)") from exc


def is_available(module: str) -> bool:
    """Whether ``module`` can be imported here (``torch`` always can)."""
    return module == "torch" or importlib.util.find_spec(module) is not None
