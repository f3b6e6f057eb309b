"""Reparameterization math: pure functions on (kernel, bias) pairs.

Every GCBlock path is a linear map followed by an affine BatchNorm (in eval mode), so each path and
their sum collapse exactly into one 3x3 convolution with bias. The rules, each exact in real
arithmetic:

* ``fold_bn``: conv (kernel ``K``, bias ``b``) then BN  ->  ``K * g/s``, ``beta + (b - mean) * g/s``
  with ``s = sqrt(var + eps)``.
* ``compose_1x1``: a kxk conv then a 1x1 conv  ->  one kxk conv (channel mixing commutes with the
  spatial sum; the first conv's bias passes through the 1x1 as ``K2 @ b1``). Exact at borders too,
  because the 1x1 conv adds no padding of its own.
* ``pad_to_3x3``: a 1x1 kernel (stride s, padding 0) equals a 3x3 kernel with that value at the
  centre (stride s, padding 1).
* ``identity_kernel``: the identity is a 3x3 conv with a one at each channel's own centre tap.
* ``sum_kernels``: parallel branches on the same input add their kernels and biases.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

KernelBias = tuple[Tensor, Tensor]


def fold_bn(kernel: Tensor, bn: nn.BatchNorm2d, conv_bias: Tensor | None = None) -> KernelBias:
    """Fold an eval-mode BatchNorm that follows a conv into the conv's kernel and bias."""
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    bias = bn.bias - bn.running_mean * scale
    if conv_bias is not None:
        bias = bias + conv_bias * scale
    return kernel * scale.reshape(-1, 1, 1, 1), bias


def compose_1x1(first: KernelBias, second: KernelBias) -> KernelBias:
    """Compose a conv ``first`` (O1, I, k, k) followed by a 1x1 conv ``second`` (O2, O1, 1, 1)."""
    k1, b1 = first
    k2, b2 = second
    mix = k2.flatten(1)  # (O2, O1)
    kernel = torch.einsum("om,mikl->oikl", mix, k1)
    return kernel, b2 + mix @ b1


def pad_to_3x3(kernel: Tensor) -> Tensor:
    """Embed a 1x1 kernel at the centre of a 3x3 kernel."""
    return nn.functional.pad(kernel, [1, 1, 1, 1])


def identity_kernel(channels: int, *, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """A 3x3 kernel that maps each of ``channels`` channels to itself."""
    kernel = torch.zeros(channels, channels, 3, 3, dtype=dtype, device=device)
    index = torch.arange(channels, device=device)
    kernel[index, index, 1, 1] = 1.0
    return kernel


def sum_kernels(branches: Iterable[KernelBias]) -> KernelBias:
    """Sum parallel branches (all already 3x3 with the same stride and padding)."""
    branches = list(branches)
    if not branches:
        raise ValueError("sum_kernels needs at least one branch")
    kernel = torch.stack([k for k, _ in branches]).sum(0)
    bias = torch.stack([b for _, b in branches]).sum(0)
    return kernel, bias


def conv_bn_chain(convs: Iterable[tuple[nn.Conv2d, nn.BatchNorm2d]]) -> KernelBias:
    """Collapse a chain of conv+BN pairs (first any kxk, the rest 1x1) into one conv."""
    fused: KernelBias | None = None
    for conv, bn in convs:
        step = fold_bn(conv.weight, bn, conv.bias)
        fused = step if fused is None else compose_1x1(fused, step)
    if fused is None:
        raise ValueError("conv_bn_chain needs at least one conv")
    return fused
