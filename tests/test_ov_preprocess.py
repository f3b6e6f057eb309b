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


def test_frames_in_flight_match_one_at_a_time() -> None:
    """Several OpenVINO requests in flight (throughput mode): the same labels as one image at a time, in the
    images' order, across a change of size; closing early waits for the requests; a bad image is named."""
    import itertools

    from gcnet.deploy.pipeline import build
    from gcnet.deploy.predict import Predictor

    torch.manual_seed(0)
    model = gcnet.build_model("gcnet-s", num_classes=4, channels=8, ppm_channels=16, head_channels=16,
                              num_blocks=[1, 1, [2, 1], [2, 1], [2, 2]]).eval()
    predictor = Predictor(build(model, "openvino", "fp32").runtime)
    rng = np.random.default_rng(2)
    sizes = [(64, 96), (64, 96), (64, 96), (48, 80), (48, 80), (64, 96)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    pairs = list(predictor.pipelined(iter(images), in_flight=2))
    assert [image is orig for (image, _), orig in zip(pairs, images)] == [True] * len(images)
    assert all(np.array_equal(labels, predictor(image)) for image, labels in pairs)
    assert any(key[2] == 2 for key in predictor.runtime._requests), "the throughput compile ran"
    one_at_a_time = list(predictor.pipelined(iter(images), in_flight=1))  # latency mode, a background thread
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(pairs, one_at_a_time))

    endless = predictor.pipelined(itertools.repeat(images[0]), in_flight=3)
    next(endless)
    endless.close()  # returns once the two requests still in flight are done

    def failing(n):  # a source that fails after n images: those n still come out, then the error
        yield from images[:n]
        raise OSError("the source broke")

    for in_flight in (2, 3):
        got = []
        with pytest.raises(OSError, match="source broke"):
            for image, _ in predictor.pipelined(failing(3), in_flight=in_flight):
                got.append(image)
        assert len(got) == 3 and all(a is b for a, b in zip(got, images))
    got = []
    with pytest.raises(ValueError, match="HxWx3"):
        for image, _ in predictor.pipelined(iter([images[0], images[1], images[2][..., 0]])):
            got.append(image)
    assert len(got) == 2
