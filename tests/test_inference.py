"""Whole / sliding-window / multi-scale + flip inference and dataset evaluation (gcnet.evaluation.inference)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_model_kwargs
from torch import nn

from gcnet import build_model
from gcnet.checkpoint import load_model, save_checkpoint
from gcnet.evaluation.inference import evaluate, infer_logits, slide_logits


class Pointwise(nn.Module):
    """A per-pixel classifier at full resolution: sliding windows must reproduce the whole image."""

    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x)


class Ones(nn.Module):
    num_classes = 2

    def forward(self, x):
        return x.new_ones((x.shape[0], 2, (x.shape[2] + 7) // 8, (x.shape[3] + 7) // 8))


def test_whole_upsamples_eighth_resolution_logits():
    model = build_model("gcnet-s", **tiny_model_kwargs(4)).eval()
    x = torch.randn(2, 3, 67, 101)
    out = infer_logits(model, x)
    assert out.shape == (2, 4, 67, 101)
    ref = F.interpolate(model(x), size=(67, 101), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref)


def test_slide_matches_whole_for_pointwise_model_and_normalises_counts():
    model = Pointwise()
    x = torch.randn(1, 3, 50, 70)
    whole = infer_logits(model, x)
    for crop, stride in (((32, 32), (16, 16)), ((20, 30), (13, 7)), ((64, 80), None), ((50, 70), (50, 70))):
        torch.testing.assert_close(infer_logits(model, x, mode="slide", crop_size=crop, stride=stride), whole)
    # overlapping windows are averaged: a constant model stays constant
    ones = slide_logits(Ones(), torch.zeros(2, 3, 45, 61), crop_size=16, stride=5)
    torch.testing.assert_close(ones, torch.ones(2, 2, 45, 61))
    with pytest.raises(ValueError, match="crop_size"):
        infer_logits(model, x, mode="slide")


def test_multiscale_flip_returns_log_probabilities_at_input_size():
    model = build_model("gcnet-s", **tiny_model_kwargs(4)).eval()
    x = torch.randn(1, 3, 48, 64)
    out = infer_logits(model, x, scales=(0.75, 1.0, 1.25), flip=True)
    assert out.shape == (1, 4, 48, 64)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(1, 48, 64))
    # one scale + flip of a flip-symmetric input equals the plain prediction's probabilities
    sym = torch.cat([x[..., :32], x[..., :32].flip(-1)], dim=-1)
    plain = infer_logits(model, sym).softmax(1)
    flipped = infer_logits(model, sym, flip=True).exp()
    torch.testing.assert_close(flipped, (plain + plain.flip(-1)) / 2, atol=1e-5, rtol=1e-4)


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


class _Float64(nn.Module):
    """Runs a model in float64 (inputs arrive as float32), so rounding cannot flip an argmax."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.double()
        self.num_classes = model.num_classes

    def forward(self, x):
        return self.model(x.double())


def test_train_form_and_reparameterized_form_of_a_checkpoint_give_the_same_miou(tmp_path):
    from gcnet.data.datasets import build_dataset
    from gcnet.data.metadata import get_dataset_info
    from gcnet.data.synthetic import make_synthetic_dataset
    from gcnet.data.transforms import EvalTransform

    root = make_synthetic_dataset(tmp_path / "data", num_train=0, num_val=4, size=(64, 80), seed=3)
    val = build_dataset("folder", root, "val", transform=EvalTransform(), info=get_dataset_info("synthetic"))
    model = build_model("gcnet-s", **tiny_model_kwargs(5))
    _randomise_bn(model)
    ckpt = save_checkpoint(tmp_path / "m.pth", model)

    train_form = load_model(ckpt)
    deploy_form = copy.deepcopy(train_form).reparameterize()
    assert deploy_form.is_deploy and not train_form.is_deploy
    kwargs = {"batch_size": 2, "progress": False}
    r_train = evaluate(_Float64(copy.deepcopy(train_form)), val, **kwargs)
    r_deploy = evaluate(_Float64(copy.deepcopy(deploy_form)), val, **kwargs)
    assert r_train["mIoU"] == r_deploy["mIoU"]
    torch.testing.assert_close(torch.tensor(r_train["IoU"]), torch.tensor(r_deploy["IoU"]), rtol=0, atol=0,
                               equal_nan=True)
    assert r_train["aAcc"] == r_deploy["aAcc"] and r_train["num_images"] == 4
    # and in float32 the logits agree to rounding
    x = val[0][0].unsqueeze(0)
    a, b = infer_logits(train_form, x), infer_logits(deploy_form, x)
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    # the training-mode flag is restored by evaluate()
    train_form.train()
    evaluate(train_form, val, **kwargs)
    assert train_form.training


def test_evaluate_accepts_a_loader_and_variable_sizes():
    from gcnet.evaluation.inference import _collate_eval

    model = Pointwise()
    items = [(torch.randn(3, 20, 30), torch.randint(0, 3, (20, 30))), (torch.randn(3, 24, 16), torch.full((24, 16), 255))]
    r = evaluate(model, items, num_classes=3, ignore_index=255, batch_size=2, progress=False)
    assert r["num_images"] == 2 and set(r) >= {"mIoU", "aAcc", "mAcc", "IoU", "Acc", "class_names"}
    loader = [_collate_eval(items)]
    r2 = evaluate(model, loader, num_classes=3, ignore_index=255, progress=False)
    assert r2["mIoU"] == r["mIoU"] or (r2["mIoU"] != r2["mIoU"] and r["mIoU"] != r["mIoU"])


def test_evaluate_takes_a_runtime_like_the_module():
    """One evaluate() for modules and deploy runtimes: a PyTorch runtime (tensors, no host copies) and
    an ndarray runtime give the module's result; ``limit`` takes the first images."""
    from gcnet.deploy.runtimes import TorchRuntime

    torch.manual_seed(0)
    model = build_model("gcnet-s", **tiny_model_kwargs(4)).eval()
    data = [(torch.randn(3, 32, 48), torch.randint(0, 4, (32, 48))) for _ in range(3)]
    ref = evaluate(model, data, progress=False)

    def numpy_runtime(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    for runtime in [TorchRuntime(model), numpy_runtime]:
        got = evaluate(runtime, data, num_classes=4, progress=False)
        assert got["mIoU"] == pytest.approx(ref["mIoU"]) and got["num_images"] == 3
    assert evaluate(TorchRuntime(model), data, num_classes=4, limit=2, progress=False)["num_images"] == 2
    with pytest.raises(ValueError, match="amp_dtype"):
        evaluate(numpy_runtime, data, num_classes=4, amp_dtype=torch.bfloat16)
