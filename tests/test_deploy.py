"""Runtimes and exports on a tiny GCNet: ONNX round trip with dynamic shapes, OpenVINO vs PyTorch,
int8 calibration with an mIoU delta, TorchScript / torch.export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_model_kwargs

from gcnet import build_model
from gcnet.deploy import export
from gcnet.deploy.bench import recalibrate_bn
from gcnet.deploy.pipeline import ExportSettings, build, compare_accuracy, create_runtime
from gcnet.deploy.runtimes import TorchRuntime
from gcnet.errors import GCNetError
from gcnet.evaluation.inference import evaluate


def _rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b))))


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return recalibrate_bn(build_model("gcnet-s", **tiny_model_kwargs(num_classes=5)), size=(64, 96))


@pytest.fixture(scope="module")
def tiny_deploy(tiny):
    return export.load_for_deploy(tiny)


def _x(b: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, 3, h, w)).astype(np.float32)


def test_load_for_deploy_copies_training_model(tiny):
    deploy = export.load_for_deploy(tiny)
    assert deploy.is_deploy and not tiny.is_deploy
    assert export.load_for_deploy(deploy) is deploy


def test_torch_runtime_matches_module(tiny, tiny_deploy):
    x = _x(1, 67, 101)
    runtime = create_runtime("torch", tiny)
    assert runtime.name == "torch-fp32-cl" and runtime.kind == "torch"  # channels_last: the CPU default
    out = runtime(x)
    with torch.no_grad():
        ref = tiny(torch.from_numpy(x)).numpy()
    assert out.shape == (1, 5, 9, 13)
    assert _rel_diff(out, ref) < 1e-4
    nchw = TorchRuntime(tiny_deploy, channels_last=False)
    assert nchw.name == "torch-fp32" and _rel_diff(nchw(x), ref) < 1e-4


def test_torch_channels_last_leaves_the_callers_module_alone(tiny_deploy):
    weight = next(p for p in tiny_deploy.parameters() if p.dim() == 4)
    runtime = TorchRuntime(tiny_deploy)
    assert runtime.channels_last and runtime.model is not tiny_deploy
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)


def test_torch_bf16_runtime_leaves_the_model_alone(tiny_deploy):
    x = _x(1, 64, 96)
    runtime = TorchRuntime(tiny_deploy, "bf16", channels_last=True)
    out = runtime(x)
    assert out.dtype == np.float32 and out.shape == (1, 5, 8, 12) and np.isfinite(out).all()
    assert next(tiny_deploy.parameters()).dtype == torch.float32
    assert runtime.name == "torch-bf16-cl"


def test_unknown_runtime_and_precision_are_clear(tiny):
    with pytest.raises(GCNetError, match="unknown runtime"):
        create_runtime("tensorrt", tiny)
    with pytest.raises(GCNetError, match="precision"):
        create_runtime("onnxruntime", tiny, "fp16")


@pytest.mark.deploy
def test_onnx_roundtrip_dynamic_shapes(tiny, tiny_deploy, tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    ort = pytest.importorskip("onnxruntime", reason="ONNX verification needs onnxruntime")
    path = tmp_path / "tiny.onnx"
    report = export.export_onnx(tiny, path, input_size=(67, 101))
    assert report["opset"] >= 17 and report["max_abs_diff"] < 1e-3
    assert [c["input_shape"] for c in report["verification"]][1][0] == 2  # batch 2 was verified
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dims = sess.get_inputs()[0].shape
    assert isinstance(dims[0], str) and isinstance(dims[2], str) and isinstance(dims[3], str)
    for shape in [(1, 3, 67, 101), (3, 3, 45, 77), (1, 3, 96, 128)]:
        x = _x(*[shape[0], shape[2], shape[3]], seed=sum(shape))
        out = sess.run(None, {"input": x})[0]
        with torch.no_grad():
            ref = tiny_deploy(torch.from_numpy(x)).numpy()
        assert out.shape == ref.shape == (shape[0], 5, -(-shape[2] // 8), -(-shape[3] // 8))
        assert _rel_diff(out, ref) < 1e-4
    runtime = create_runtime("onnxruntime", path, threads=1)
    assert runtime.name == "onnxruntime-fp32"
    assert runtime(_x(1, 40, 56)).shape == (1, 5, 5, 7)


@pytest.fixture(scope="module")
def static_onnx(tiny_deploy, tmp_path_factory):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    pytest.importorskip("onnxruntime", reason="ONNX verification needs onnxruntime")
    path = tmp_path_factory.mktemp("static") / "static.onnx"
    return export.export_onnx(tiny_deploy, path, input_size=(64, 96), dynamic=False)["path"]


@pytest.mark.deploy
@pytest.mark.parametrize("kind", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.slow)])
def test_fixed_shape_model_runs_on_frames_of_any_size(kind, tiny_deploy, static_onnx, tmp_path):
    """A static export: the Predictor resizes frames to the model's shape and gives labels at the frame size;
    gcnet.stream picks the runtime of an .onnx file by itself."""
    from PIL import Image

    import gcnet
    from gcnet.deploy.predict import Predictor

    if kind == "openvino":
        pytest.importorskip("openvino", reason="needs openvino")
    runtime = create_runtime(kind, static_onnx, threads=1)
    assert runtime.input_hw == (64, 96)
    frame = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    labels = Predictor(runtime)(frame)
    assert labels.shape == (40, 56)
    assert (labels == Predictor(tiny_deploy, input_size=(64, 96))(frame)).mean() > 0.99
    with pytest.raises(GCNetError, match="takes 64x96 inputs only"):
        Predictor(runtime, input_size=(40, 56))
    Image.fromarray(frame).save(tmp_path / "frame.png")
    [(_, streamed)] = gcnet.stream(tmp_path / "frame.png", static_onnx, runtime=None if kind == "onnxruntime" else kind)
    assert np.array_equal(streamed, labels)
    assert create_runtime(kind, export.export_onnx(tiny_deploy, tmp_path / "dynamic.onnx", input_size=(64, 96),
                                                   verify=False)["path"]).input_hw is None


@pytest.mark.deploy
def test_onnx_postprocess_returns_labels(tiny_deploy, tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    ort = pytest.importorskip("onnxruntime", reason="ONNX verification needs onnxruntime")
    path = tmp_path / "labels.onnx"
    export.export_onnx(tiny_deploy, path, input_size=(67, 101), postprocess=True)
    x = _x(2, 50, 70)
    labels = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        logits = tiny_deploy(torch.from_numpy(x))
        ref = torch.nn.functional.interpolate(logits, size=(50, 70), mode="bilinear").argmax(1).numpy()
    assert labels.shape == (2, 50, 70)
    assert np.mean(labels == ref) > 0.999


@pytest.mark.deploy
def test_onnx_verification_failure_is_clear_and_leaves_no_file(tiny_deploy, tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
    pytest.importorskip("onnxruntime", reason="ONNX verification needs onnxruntime")
    path = tmp_path / "bad.onnx"
    with pytest.raises(export.ExportError, match="exceeds the tolerance"):
        export.export_onnx(tiny_deploy, path, input_size=(32, 48), tolerance=-1.0)
    assert not path.exists()
    with pytest.raises(export.ExportError, match="opset"):
        export.export_onnx(tiny_deploy, path, opset=13)


@pytest.mark.slow
@pytest.mark.deploy
def test_openvino_fp32_matches_torch_and_bf16_runs(tiny, tiny_deploy, tmp_path):
    pytest.importorskip("openvino", reason="the OpenVINO runtime needs the openvino package")
    runtime = create_runtime("openvino", tiny, "fp32", threads=1)
    assert runtime.name == "openvino-fp32"
    for b, h, w in [(1, 67, 101), (2, 48, 64), (1, 67, 101)]:
        x = _x(b, h, w, seed=h)
        with torch.no_grad():
            ref = tiny_deploy(torch.from_numpy(x)).numpy()
        out = runtime(x)
        assert out.shape == ref.shape
        assert _rel_diff(out, ref) < 1e-4
    path = export.export_openvino(export.to_openvino(tiny_deploy), tmp_path / "tiny.xml", reference=tiny_deploy,
                                  input_size=(64, 96))["path"]
    bf16 = create_runtime("openvino", path, "bf16", threads=1, static_shapes=False)
    out = bf16(_x(1, 67, 101))
    assert out.shape == (1, 5, 9, 13) and np.isfinite(out).all()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    synth = pytest.importorskip("gcnet.data.synthetic", reason="needs gcnet.data.synthetic")
    from gcnet.data.datasets import build_dataset
    from gcnet.data.transforms import EvalTransform

    root = synth.make_synthetic_dataset(tmp_path_factory.mktemp("synth"), num_train=4, num_val=4, size=(64, 96))
    return (build_dataset("folder", root, "train", transform=EvalTransform()),
            build_dataset("folder", root, "val", transform=EvalTransform()))


@pytest.mark.slow
@pytest.mark.deploy
def test_openvino_int8_calibration_reports_miou_delta(synthetic):
    pytest.importorskip("openvino", reason="int8 needs openvino")
    pytest.importorskip("nncf", reason="OpenVINO int8 quantization needs nncf")
    train, val = synthetic
    torch.manual_seed(0)
    model = recalibrate_bn(build_model("gcnet-s", **tiny_model_kwargs(num_classes=5)), size=(64, 96))
    calib = export.calibration_from_dataset(train, num=3)
    assert len(calib) == 3 and calib[0].shape == (1, 3, 64, 96) and calib[0].dtype == np.float32
    int8 = create_runtime("openvino", model, "int8", calibration=calib, threads=1)
    assert int8.name == "openvino-int8"
    with pytest.raises(GCNetError, match="calibration"):
        create_runtime("openvino", model, "int8")
    acc = compare_accuracy({"fp32": create_runtime("torch", model), "int8": int8}, val)
    assert acc["reference"] == "fp32"
    res = acc["results"]
    assert res["fp32"]["delta_mIoU"] == 0.0
    assert np.isfinite(res["int8"]["mIoU"]) and np.isfinite(res["int8"]["delta_mIoU"])
    assert res["int8"]["num_images"] == len(val)


@pytest.mark.deploy
def test_onnxruntime_int8_qdq(synthetic, tiny_deploy, tmp_path):
    pytest.importorskip("onnx", reason="needs onnx")
    pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    train, val = synthetic
    calib = export.calibration_from_dataset(train, num=2)
    built = build(tiny_deploy, "onnxruntime", "int8", calibration=calib, out=tmp_path / "q.onnx", threads=1)
    runtime = built.runtime
    assert runtime.name == "onnxruntime-int8" and built.path == tmp_path / "q.onnx"
    assert export.is_quantized_onnx(built.path)
    out = runtime(calib[0])
    assert out.shape == (1, 5, 8, 12) and np.isfinite(out).all()
    r = evaluate(runtime, val, limit=2, progress=False)
    assert r["num_images"] == 2 and 0 <= r["mIoU"] <= 100


def test_torchscript_roundtrip(tiny_deploy, tmp_path):
    report = export.export_torchscript(tiny_deploy, tmp_path / "m.ts", input_size=(67, 101))
    loaded = torch.jit.load(str(tmp_path / "m.ts"))
    x = torch.from_numpy(_x(2, 45, 77))
    with torch.no_grad():
        assert _rel_diff(loaded(x).numpy(), tiny_deploy(x).numpy()) < 1e-4
    assert report["max_abs_diff"] < 1e-3


@pytest.mark.slow
def test_torch_export_roundtrip(tiny_deploy, tmp_path):
    report = export.export_torch_export(tiny_deploy, tmp_path / "m.pt2", input_size=(64, 96))
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    x = torch.from_numpy(_x(1, 64, 96))
    with torch.no_grad():
        assert _rel_diff(program(x).numpy(), tiny_deploy(x).numpy()) < 1e-4
    assert report["max_abs_diff"] < 1e-3


@pytest.mark.deploy
def test_build_writes_verified_ir_pair_and_int8(tiny, synthetic, tmp_path):
    pytest.importorskip("openvino", reason="needs openvino")
    pytest.importorskip("nncf", reason="needs nncf")
    settings = ExportSettings(input_size=(64, 96))
    built = build(tiny, "openvino", out=tmp_path / "m.xml", settings=settings, open_runtime=False, threads=1)
    assert built.runtime is None and built.path == tmp_path / "m.xml"
    assert built.report["max_abs_diff"] < 1e-3 and (tmp_path / "m.bin").is_file()
    calib = export.calibration_from_dataset(synthetic[0], num=2)
    int8 = build(built.path, "openvino", "int8", calibration=calib, out=tmp_path / "q.xml", settings=settings,
                 threads=1)
    assert int8.runtime.name == "openvino-int8" and (tmp_path / "q.bin").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml", "q.bin", "q.xml"]
    with pytest.raises(export.ExportError, match="tolerance"):
        build(tiny, "openvino", out=tmp_path / "m.xml", settings=ExportSettings(input_size=(64, 96), tolerance=-1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml", "q.bin", "q.xml"]


def test_random_crops_are_clipped_flipped_and_seeded():
    from gcnet.deploy.qat import random_crops

    images = [torch.arange(3 * 10 * 12, dtype=torch.float32).reshape(3, 10, 12), -torch.ones(3, 8, 16)]
    crops = random_crops(images, 32, (288, 384), torch.Generator().manual_seed(0))
    assert crops.shape == (32, 3, 8, 12)  # clipped to the smallest image
    again = random_crops(images, 32, (288, 384), torch.Generator().manual_seed(0))
    assert torch.equal(crops, again)
    first = images[0]
    windows = {(first[:, t:t + 8, l:l + 12].flip(-1) if f else first[:, t:t + 8, l:l + 12]).sum().item()
               for t in range(3) for l in range(1) for f in (0, 1)}
    from_first = [c for c in crops if c.min() >= 0]
    assert from_first and len(from_first) < len(crops)  # both images drawn
    assert all(c.sum().item() in windows for c in from_first)
    flipped = [c for c in from_first if c[0, 0, 0] > c[0, 0, -1]]
    assert 0 < len(flipped) < len(from_first)  # some mirrored, some not


def test_distill_keeps_batchnorm_statistics():
    """The student trains in eval mode: the BatchNorm statistics stay; ``after_step`` sees steps 1..iters and
    may switch the student to train mode without changing that."""
    from gcnet.deploy.qat import distill

    torch.manual_seed(0)
    teacher = torch.nn.Conv2d(3, 2, 3, padding=1)
    student = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.BatchNorm2d(2)).eval()
    student[1].running_mean.fill_(0.5)
    stats = [student[1].running_mean.clone(), student[1].running_var.clone()]
    seen = []

    def after_step(n: int) -> None:
        seen.append((n, student.training))
        student.train()

    frames = [torch.randn(3, 12, 16) for _ in range(3)]
    losses = distill(student, teacher, frames, iters=30, lr=1e-2, batch=2, crop=(8, 8), after_step=after_step,
                     progress=False)
    assert seen == [(n, False) for n in range(1, 31)] and not student.training
    assert torch.equal(student[1].running_mean, stats[0]) and torch.equal(student[1].running_var, stats[1])
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_held_out_split_keeps_every_fourth_frame_back():
    from gcnet.deploy.qat import held_out_split

    train, held = held_out_split(367)
    assert len(train) == 276 and len(held) == 46 and not set(train) & set(held)
    assert all(i % 4 == 3 for i in held) and held[0] == 3 and held[-1] >= 355  # spread over the whole set
    assert held_out_split(3) == ([0, 1, 2], [])
    assert held_out_split(8, most=1) == ([0, 1, 2, 4, 5, 6], [3])


@pytest.mark.slow
def test_int8_fine_tune_moves_toward_fp32(tiny_deploy, synthetic):
    """The fake-quantized model is trained toward the fp32 logits; the IR is int8 and records the run."""
    pytest.importorskip("openvino", reason="needs openvino")
    pytest.importorskip("nncf", reason="needs nncf")
    from gcnet.deploy.qat import quantize_aware
    from gcnet.deploy.runtimes import OpenVINORuntime, is_quantized_openvino

    calib = export.calibration_from_dataset(synthetic[0], num=4)
    ov_model = quantize_aware(tiny_deploy, calib, iters=40, every=10, lr=1e-3, batch=2, input_size=(64, 96),
                              progress=False)
    assert is_quantized_openvino(ov_model)
    quant = export.quant_settings_of(ov_model)
    tuned = quant["finetune"]
    assert quant["preset"] == "performance" and tuned["iters"] == 40
    assert tuned["frames"] == 3 and tuned["held_out"] == 1  # the fourth frame scores the snapshots
    scores = tuned["error_held_out"]
    assert list(scores) == ["0", "10", "20", "30", "40"]
    assert scores[str(tuned["step"])] == min(scores.values())
    held = torch.from_numpy(calib[3])  # the converted model is the snapshot kept, not the last one
    with torch.no_grad():
        ref = tiny_deploy(held).numpy()
    err = ((OpenVINORuntime(ov_model, "int8", threads=1)(held.numpy()) - ref) ** 2).sum() / (ref ** 2).sum()
    assert abs(err - min(scores.values())) < 0.2 * min(scores.values()) < abs(err - scores["40"])
    x = _x(1, 80, 112)  # dynamic shapes kept
    with torch.no_grad():
        ref = tiny_deploy(torch.from_numpy(x)).numpy()
    out = OpenVINORuntime(ov_model, "int8", threads=1)(x)
    assert out.shape == ref.shape and np.isfinite(out).all()
    with pytest.raises(GCNetError, match="at least one step"):
        quantize_aware(tiny_deploy, calib, iters=0)


def _quantized_convs(ov_model) -> set[str]:
    """Convolutions with a FakeQuantize on their activation input."""
    return {op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() == "Convolution"
            and op.input_value(0).get_node().get_type_name() == "FakeQuantize"}


@pytest.mark.slow
def test_int8_leaves_the_most_sensitive_convolutions_in_float(tiny, synthetic, capsys):
    """Each convolution is quantized alone on 3/4 of the images and its logit error measured on the other
    1/4; the N worst stay in float (no FakeQuantize on their input), the rest are quantized. The bar over
    those runs follows ``progress``."""
    pytest.importorskip("openvino", reason="needs openvino")
    pytest.importorskip("nncf", reason="needs nncf")
    calib = export.calibration_from_dataset(synthetic[0], num=8)
    ov_model = export.to_openvino(tiny, input_size=(64, 96))
    convs = [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    two = export.quantize_openvino(ov_model, calib, preset="performance", float_convs=2, progress=False)
    assert "int8 sensitivity" not in capsys.readouterr().err
    quant = export.quant_settings_of(two)
    errors = quant["sensitivity"]
    assert set(errors) == {"all", *convs} and all(v >= 0 for v in errors.values())
    worst = sorted(convs, key=errors.get, reverse=True)[:2]
    assert quant["float_convs"] == worst
    assert _quantized_convs(two) == set(convs) - set(worst)
    with pytest.raises(GCNetError, match="float_convs"):
        export.quantize_openvino(ov_model, calib, float_convs=-1)
    again = export.int8_sensitivity(ov_model, calib, "performance", progress=True)
    assert "int8 sensitivity" in capsys.readouterr().err and set(again) == set(errors)


def test_sensitivity_samples_are_scaled_down():
    x = np.zeros((1, 3, 1024, 2048), np.float32)
    small = export._scaled_down(x, 360 * 480)
    assert small.shape[:2] == (1, 3) and small.shape[2] * small.shape[3] <= 360 * 480
    assert abs(small.shape[3] / small.shape[2] - 2) < 0.02
    y = np.ones((1, 3, 64, 96), np.float32)
    assert export._scaled_down(y, 360 * 480) is y


def test_pick_float_convs():
    errors = {"all": 1.0, "a": 0.1, "b": 2.0, "c": 0.3, "d": 0.5, "e": 0.25, "f": 0.24}
    assert export.pick_float_convs(errors, 2) == ["b", "d"]
    assert export.pick_float_convs(errors, 0) == []
    assert export.FLOAT_CONVS_AUTO == 4 and export.FLOAT_CONVS_SHARE == 0.25
    assert export.pick_float_convs(errors, "auto") == ["b", "d", "c", "e"]  # at most 4, each >= 0.25 of "all"
    assert export.pick_float_convs({"all": 1.0, "a": 0.2, "b": 0.3}, "auto") == ["b"]


def test_int8_settings_are_chosen_per_model_on_held_out_images(tiny, synthetic, tmp_path):
    """By default both presets are quantized on 3/4 of the images and scored on the other 1/4 against the
    fp32 labels; NNCF's default is kept unless the other is clearly better, and the IR says which and why."""
    ov = pytest.importorskip("openvino", reason="needs openvino")
    pytest.importorskip("nncf", reason="needs nncf")
    calib = export.calibration_from_dataset(synthetic[0], num=8)
    built = build(tiny, "openvino", "int8", calibration=calib, out=tmp_path / "q.xml",
                  settings=ExportSettings(input_size=(64, 96), float_convs=0, finetune_iters=0), threads=1)
    quant = export.quant_settings_of(ov.Core().read_model(str(tmp_path / "q.xml")))
    scores = quant["scores"]
    assert set(scores) == {"performance/fast-bc", "mixed/fast-bc"} and all(0 <= v <= 100 for v in scores.values())
    clearly_better = scores["mixed/fast-bc"] > scores["performance/fast-bc"] + export.SELECTION_MARGIN
    assert quant["preset"] == ("mixed" if clearly_better else "performance") and quant["bias_correction"] == "fast"
    assert built.report["quantization"] == quant
    ov_model = export.to_openvino(tiny, input_size=(64, 96))
    both = export.quantize_openvino(ov_model, calib, fast_bias_correction=None, float_convs=0)  # BC chosen too
    assert len(export.quant_settings_of(both)["scores"]) == 4
    # what is given is used as given; too few images to hold any out: NNCF's defaults, no scores
    fixed = export.quantize_openvino(ov_model, calib, preset="mixed", fast_bias_correction=False, float_convs=0)
    assert export.quant_settings_of(fixed) == {"preset": "mixed", "bias_correction": "full", "scores": {},
                                               "float_convs": [], "sensitivity": {}, "finetune": {}}
    few = export.quantize_openvino(ov_model, calib[:3])
    assert export.quant_settings_of(few) == {"preset": "performance", "bias_correction": "fast", "scores": {},
                                             "float_convs": [], "sensitivity": {}, "finetune": {}}
    with pytest.raises(GCNetError, match="unknown quantization preset"):
        export.quantize_openvino(None, calib, preset="fastest")
