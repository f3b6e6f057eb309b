"""Exactness of each reparameterization rule and of whole GCBlocks (random weights and BN stats)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_rel, randomize_bn
from torch import nn

from gcnet.models import fusion
from gcnet.models.blocks import ConvBN, GCBlock


def test_fold_bn_matches_conv_then_bn():
    conv, bn = nn.Conv2d(5, 7, 3, padding=1, bias=True), nn.BatchNorm2d(7)
    randomize_bn(bn)
    bn.eval()
    x = torch.randn(2, 5, 9, 11)
    kernel, bias = fusion.fold_bn(conv.weight, bn, conv.bias)
    assert_close_rel(F.conv2d(x, kernel, bias, padding=1), bn(conv(x)))


@pytest.mark.parametrize("stride", [1, 2])
def test_compose_1x1_after_3x3_is_exact_at_borders(stride):
    k1, b1 = torch.randn(6, 4, 3, 3), torch.randn(6)
    k2, b2 = torch.randn(8, 6, 1, 1), torch.randn(8)
    x = torch.randn(2, 4, 13, 7)
    expected = F.conv2d(F.conv2d(x, k1, b1, stride, 1), k2, b2)
    kernel, bias = fusion.compose_1x1((k1, b1), (k2, b2))
    assert_close_rel(F.conv2d(x, kernel, bias, stride, 1), expected)


@pytest.mark.parametrize("stride", [1, 2])
def test_pad_1x1_to_3x3(stride):
    k = torch.randn(5, 3, 1, 1)
    x = torch.randn(1, 3, 11, 10)
    assert_close_rel(F.conv2d(x, fusion.pad_to_3x3(k), stride=stride, padding=1), F.conv2d(x, k, stride=stride))


def test_identity_kernel():
    x = torch.randn(2, 6, 5, 9)
    torch.testing.assert_close(F.conv2d(x, fusion.identity_kernel(6), padding=1), x, rtol=0, atol=0)


def test_sum_kernels_is_sum_of_convs():
    branches = [(torch.randn(4, 3, 3, 3), torch.randn(4)) for _ in range(3)]
    x = torch.randn(1, 3, 8, 8)
    expected = sum(F.conv2d(x, k, b, padding=1) for k, b in branches)
    assert_close_rel(F.conv2d(x, *fusion.sum_kernels(branches), padding=1), expected)
    with pytest.raises(ValueError):
        fusion.sum_kernels([])


def test_convbn_fold_bn():
    m = ConvBN(3, 6, 3, stride=2, padding=1)
    randomize_bn(m)
    m.eval()
    x = torch.randn(2, 3, 15, 17)
    expected = m(x)
    m.fold_bn()
    assert m.bn is None and m.conv.bias is not None
    assert_close_rel(m(x), expected)


@pytest.mark.parametrize("num_paths", [1, 2, 3, 4])
@pytest.mark.parametrize("num_1x1_convs", [0, 1, 2, 3])
@pytest.mark.parametrize("stride,cin,cout", [(1, 8, 8), (1, 8, 12), (2, 8, 16), (2, 8, 8)])
def test_gcblock_reparameterization_exact(num_paths, num_1x1_convs, stride, cin, cout):
    torch.manual_seed(num_paths * 10 + num_1x1_convs)
    block = GCBlock(cin, cout, stride, act=True, num_paths=num_paths, num_1x1_convs=num_1x1_convs)
    randomize_bn(block, seed=num_paths + 7 * num_1x1_convs)
    block.eval()
    assert (block.path_residual is not None) == (cin == cout and stride == 1)
    x = torch.randn(2, cin, 13, 19)  # odd sizes exercise the stride-2 borders
    expected = block(x)
    block.reparameterize()
    assert block.is_deploy and not any(n.startswith("path_") for n, _ in block.named_children())
    assert list(dict(block.named_parameters())) == ["reparam_3x3.weight", "reparam_3x3.bias"]
    assert_close_rel(block(x), expected)


def test_gcblock_without_relu_keeps_negative_values():
    block = GCBlock(4, 4, act=False)
    randomize_bn(block)
    block.eval()
    assert (block(torch.randn(1, 4, 6, 6)) < 0).any()


def test_gcblock_rejects_bad_options():
    with pytest.raises(ValueError, match="stride"):
        GCBlock(4, 4, stride=3)
    with pytest.raises(ValueError, match="num_1x1_convs"):
        GCBlock(4, 4, num_1x1_convs=4)
    with pytest.raises(ValueError, match="num_paths"):
        GCBlock(4, 4, num_paths=0)
