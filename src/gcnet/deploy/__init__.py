"""Deployment: runtimes (PyTorch, ONNX Runtime, OpenVINO), export (ONNX, TorchScript, torch.export,
OpenVINO IR, int8), the pipeline between them, benchmarking and prediction on images/folders/videos.

The optional runtimes (onnx, onnxruntime, openvino, nncf) are imported only when used;
``pip install gcnet[deploy]`` installs them.
"""

from gcnet.deploy.export import (
    ExportError,
    calibration_from_dataset,
    calibration_from_images,
    export_onnx,
    export_openvino,
    export_torch_export,
    export_torchscript,
    load_for_deploy,
    quantize_onnx,
    quantize_openvino,
    to_openvino,
)
from gcnet.deploy.pipeline import Built, ExportSettings, build, compare_accuracy, create_runtime
from gcnet.deploy.runtimes import (
    OnnxRuntime,
    OpenVINORuntime,
    Runtime,
    TorchRuntime,
    available_runtimes,
)
from gcnet.optional import RuntimeUnavailableError

__all__ = [
    "Built", "ExportError", "ExportSettings", "OnnxRuntime", "OpenVINORuntime", "Runtime", "RuntimeUnavailableError",
    "TorchRuntime", "available_runtimes", "build", "calibration_from_dataset", "calibration_from_images",
    "compare_accuracy", "create_runtime", "export_onnx", "export_openvino", "export_torch_export",
    "export_torchscript", "load_for_deploy", "quantize_onnx", "quantize_openvino", "to_openvino",
]
