"""GCNet model: forward contract, variant specs, overrides, whole-model reparameterization."""

from __future__ import annotations

import math
import re

import pytest
import torch
from helpers import assert_close_rel, randomize_bn, tiny_model_kwargs
from torch import nn

from gcnet import VARIANTS, build_model, list_models, models
from gcnet.models.blocks import ConvBN, GCBlock
from gcnet.models.complexity import model_info


def test_variants_are_the_authors_configs():
    assert list_models() == ["gcnet-l", "gcnet-m", "gcnet-s"]
    assert VARIANTS["gcnet-s"] == dict(channels=32, ppm_channels=128, num_blocks=[4, 4, [5, 4], [5, 4], [2, 2]],
                                       head_channels=64)
    assert VARIANTS["gcnet-m"]["channels"] == 64 and VARIANTS["gcnet-m"]["head_channels"] == 128
    assert VARIANTS["gcnet-l"]["num_blocks"] == [5, 5, [5, 5], [5, 5], [3, 3]]
    assert VARIANTS["gcnet-l"]["head_channels"] == 256


@pytest.mark.parametrize("size", [(64, 96), (67, 101), (33, 47)])
def test_forward_contract_eval_and_train(size):
    model = build_model("gcnet-s", **tiny_model_kwargs(num_classes=5))
    x = torch.randn(2, 3, *size)
    expected = (2, 5, math.ceil(size[0] / 8), math.ceil(size[1] / 8))
    model.eval()
    with torch.no_grad():
        assert model(x).shape == expected
    model.train()
    logits, aux = model(x)
    assert logits.shape == expected and aux.shape == expected


@pytest.mark.parametrize("name", ["gcnet-s", "gcnet-m", "gcnet-l"])
def test_full_size_variants_shapes_on_meta(name):
    with torch.device("meta"):
        model = build_model(name, num_classes=19).eval()
        out = model(torch.empty(1, 3, 1024, 2048))
    assert out.shape == (1, 19, 128, 256)


def test_overrides_change_structure():
    model = build_model("gcnet-s", num_paths=3, num_1x1_convs=1, **tiny_model_kwargs())
    block = model.backbone.stem[2]
    assert isinstance(block, GCBlock)
    assert hasattr(block, "path_3x3_3") and not hasattr(block, "path_3x3_4")
    assert hasattr(block.path_1x1, "conv1") and not hasattr(block.path_1x1, "conv2")
    no_1x1 = build_model("gcnet-s", num_1x1_convs=0, **tiny_model_kwargs())
    assert no_1x1.backbone.stem[2].path_1x1 is None
    assert model.config["num_paths"] == 3 and build_model(**model.config).config == model.config


def test_bad_options_are_reported():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("gcnet-xl")
    with pytest.raises(ValueError, match="unknown option"):
        build_model("gcnet-s", chanels=16)
    with pytest.raises(ValueError, match="num_blocks"):
        build_model("gcnet-s", num_blocks=[4, 4, [5, 4], [5, 4]])
    with pytest.raises(ValueError, match="num_blocks"):
        build_model("gcnet-s", num_blocks=[4, 4, [1, 4], [5, 4], [2, 2]])


@pytest.mark.parametrize("value, error", [("19", TypeError), (19.5, TypeError), (True, TypeError), (0, ValueError)])
def test_num_classes_must_be_a_positive_int(value, error):
    # were "'<' not supported between 'str' and 'int'" and "out_channels must be divisible by groups"
    for build in (build_model, models.build_model):
        with pytest.raises(error, match=r"num_classes must be a positive integer.* got " + re.escape(repr(value))):
            build("gcnet-s", num_classes=value, channels=8)
    with pytest.raises(error, match="num_classes must be a positive integer"):
        build_model("gcnet-s", num_classes=value, weights="gcnet-s_cityscapes")  # before the weights are fetched


def test_model_info_checks_input_size():
    with pytest.raises(ValueError, match=r"input_size must be a positive int or a pair of positive ints, got \(0, 0\)"):
        model_info("gcnet-s", input_size=(0, 0))
    info = model_info("gcnet-s", input_size=1, channels=8)  # a single pixel is the smallest input
    assert info["input_size"] == [1, 1] and info["train"]["macs"] > 0


def test_reparameterize_whole_model_is_exact_and_plain():
    torch.manual_seed(0)
    model = build_model("gcnet-s", **tiny_model_kwargs(num_classes=6))
    randomize_bn(model, seed=3)
    model.eval()
    x = torch.randn(2, 3, 61, 83)
    with torch.no_grad():
        expected = model(x)
        assert model.reparameterize() is model
        actual = model(x)
    assert_close_rel(actual, expected)
    assert model.is_deploy and not model.training
    assert all(m.is_deploy for m in model.modules() if isinstance(m, GCBlock))
    assert all(m.bn is None for m in model.modules() if isinstance(m, ConvBN))
    assert model.decode_head.aux_head_c4 is None
    assert not any("aux" in k for k in model.state_dict())
    # The only BatchNorms left precede a ReLU: DAPPM pre-activations (5 scales, 4 processes,
    # compression, shortcut) and the head input.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 12
    model.train()  # a deployed model has no auxiliary head: it always returns logits only
    assert model(x).shape == expected.shape


def test_deploy_build_has_same_structure_as_reparameterized():
    kwargs = tiny_model_kwargs()
    direct = build_model("gcnet-s", deploy=True, **kwargs)
    converted = build_model("gcnet-s", **kwargs).reparameterize()
    a, b = direct.state_dict(), converted.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)


def test_model_is_trainable():
    model = build_model("gcnet-s", **tiny_model_kwargs())
    logits, aux = model(torch.randn(2, 3, 32, 32))
    (logits.mean() + aux.mean()).backward()
    assert all(p.grad is not None for p in model.parameters())
