"""Deployment: runtimes (PyTorch, ONNX Runtime, OpenVINO), export (ONNX, TorchScript, torch.export,
OpenVINO IR, int8), benchmarking and prediction on images/folders/videos.

The optional runtimes (onnx, onnxruntime, openvino, nncf, opencv) are imported only when used;
``pip install gcnet[deploy]`` installs them.
"""

from gcnet.deploy.export import (
    ExportError,
    calibration_from_dataset,
    calibration_from_images,
    compare_accuracy,
    evaluate_runtime,
    export_onnx,
    export_torch_export,
    export_torchscript,
    load_for_deploy,
    quantize_onnx,
    quantize_openvino,
    save_openvino,
    to_openvino,
)
from gcnet.deploy.runtimes import (
    OnnxRuntime,
    OpenVINORuntime,
    Runtime,
    RuntimeUnavailableError,
    TorchRuntime,
    available_runtimes,
    create_runtime,
)

__all__ = [
    "ExportError", "OnnxRuntime", "OpenVINORuntime", "Runtime", "RuntimeUnavailableError", "TorchRuntime",
    "available_runtimes", "calibration_from_dataset", "calibration_from_images", "compare_accuracy",
    "create_runtime", "evaluate_runtime", "export_onnx", "export_torch_export", "export_torchscript",
    "load_for_deploy", "quantize_onnx", "quantize_openvino", "save_openvino", "to_openvino",
]
