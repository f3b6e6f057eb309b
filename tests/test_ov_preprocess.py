"""uint8 NHWC frames into an OpenVINO graph that normalises them itself: same logits as numpy pre-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gcnet
from gcnet.data.transforms import normalize

ov = pytest.importorskip("openvino")
pytestmark = pytest.mark.deploy


def test_uint8_input_matches_float_pipeline() -> None:
    from gcnet.deploy.ov_preprocess import with_uint8_nhwc_input

    torch.manual_seed(0)
    model = gcnet.build_model("gcnet-s", num_classes=4, channels=8, ppm_channels=16, head_channels=16,
                              num_blocks=[1, 1, [2, 1], [2, 1], [2, 2]]).eval().reparameterize()
    ov_model = ov.convert_model(model, example_input=torch.randn(1, 3, 64, 96), input=[ov.PartialShape([-1, 3, -1, -1])])
    core = ov.Core()
    float_net = core.compile_model(ov_model, "CPU")
    uint8_net = core.compile_model(with_uint8_nhwc_input(ov_model.clone()), "CPU")
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    ref = float_net(normalize(image).unsqueeze(0).numpy())[0]
    out = uint8_net(image[None])[0]
    assert out.shape == ref.shape == (1, 4, 8, 12)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_openvino_runtime_frames_and_predictor_use_the_uint8_graph() -> None:
    from gcnet.deploy.pipeline import build
    from gcnet.deploy.postprocess import reference_upsample_argmax
    from gcnet.deploy.predict import Predictor

    torch.manual_seed(0)
    model = gcnet.build_model("gcnet-s", num_classes=4, channels=8, ppm_channels=16, head_channels=16,
                              num_blocks=[1, 1, [2, 1], [2, 1], [2, 2]]).eval()
    runtime = build(model, "openvino", "fp32").runtime
    image = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    ref = runtime(normalize(image).unsqueeze(0).numpy())
    out = runtime.frames(image[None])
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert any(key[0] for key in runtime._requests), "the uint8 graph was compiled"
    labels = Predictor(runtime)(image)
    assert (labels == reference_upsample_argmax(torch.from_numpy(ref), (64, 96))).mean() >= 0.999
