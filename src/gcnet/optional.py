"""Optional dependencies (onnx, onnxruntime, openvino, nncf, gdown, huggingface_hub): import on first use
with an install hint. A leaf module: it imports nothing from gcnet but the error class."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

from gcnet.errors import GCNetError

# the gcnet extra (``pip install 'gcnet[extra]'``) that installs each optional dependency
EXTRAS = {"openvino": "deploy", "onnxruntime": "deploy", "onnx": "deploy", "nncf": "deploy", "gdown": "gdrive",
          "huggingface_hub": "hub"}
# packages that send usage telemetry through openvino_telemetry when it is importable (each falls back to a stub)
_TELEMETRY_USERS = ("openvino", "nncf")


class RuntimeUnavailableError(GCNetError):
    """An optional dependency (onnxruntime, openvino, nncf, gdown, ...) is not installed, or CUDA is missing."""


def require(module: str, purpose: str = "", error: type[GCNetError] = RuntimeUnavailableError) -> Any:
    """Import an optional dependency, or raise ``error`` with an install hint: "``purpose`` needs
    <package>: pip install 'gcnet[extra]' (or pip install <package>)".

    OpenVINO's and NNCF's telemetry is turned off (its sender forks children that can hang an interrupted
    command): unless already imported, ``openvino_telemetry`` is made unimportable in this process."""
    if module.split(".")[0] in _TELEMETRY_USERS:
        sys.modules.setdefault("openvino_telemetry", None)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        need = f"{purpose} needs {package}" if purpose else f"'{module}' is not installed"
        extra = EXTRAS.get(package)
        hint = f"pip install 'gcnet[{extra}]' (or pip install {package})" if extra else f"pip install {package}"
        raise error(f"{need}: {hint}") from exc


def is_available(module: str) -> bool:
    """Whether ``module`` can be imported here (``torch`` always can)."""
    return module == "torch" or importlib.util.find_spec(module) is not None
