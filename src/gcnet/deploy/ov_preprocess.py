"""Pre-processing inside an OpenVINO graph: uint8 HWC frames in, no float copy made in Python.

Normalising a 1024x2048 frame in numpy (uint8 -> float32, subtract the mean, divide by the std,
HWC -> CHW) costs about as much as the int8 model itself on a 2-core CPU. OpenVINO's
``PrePostProcessor`` adds those steps to the compiled graph, where they run fused with the first
convolution's input handling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gcnet.data.transforms import MEAN, STD

__all__ = ["with_uint8_nhwc_input"]


def with_uint8_nhwc_input(ov_model: Any, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> Any:
    """``ov_model`` (float NCHW input, normalised) -> a model taking ``uint8 (N, H, W, 3)`` RGB frames."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(ov_model)
    tensor = ppp.input().tensor()
    tensor.set_element_type(ov.Type.u8)
    tensor.set_layout(ov.Layout("NHWC"))
    steps = ppp.input().preprocess()
    steps.convert_element_type(ov.Type.f32)
    steps.mean([float(m) for m in mean])
    steps.scale([float(s) for s in std])
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    return ppp.build()
