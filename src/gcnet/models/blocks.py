"""GCNet building blocks. Parameter names follow the authors' release so their checkpoints load
unchanged: ``conv``/``bn`` as in mmcv's ``ConvModule``, ``path_3x3_i``/``path_1x1``/``path_residual``
/``reparam_3x3`` in a GCBlock, ``scales``/``processes``/``compression``/``shortcut`` in DAPPM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gcnet.models import fusion


class ConvBN(nn.Module):
    """Conv -> BN -> optional ReLU (mmcv ``ConvModule`` order). ``fold_bn()`` makes it conv(+bias) -> ReLU,
    the deploy form (``deploy=True`` builds that form directly)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, act: bool = True, deploy: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=deploy)
        self.bn = None if deploy else nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)

    @torch.no_grad()
    def fold_bn(self) -> None:
        """Fold the BatchNorm into the conv (exact in eval mode)."""
        if self.bn is None:
            return
        kernel, bias = fusion.fold_bn(self.conv.weight, self.bn, self.conv.bias)
        conv = self.conv
        self.conv = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                              conv.padding, bias=True).to(kernel)
        self.conv.weight.copy_(kernel)
        self.conv.bias.copy_(bias)
        self.bn = None


class BNReLUConv(nn.Module):
    """BN -> ReLU -> conv without bias (mmcv ``ConvModule`` with order norm, act, conv; used by DAPPM)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(in_channels)  # registered after conv, as mmcv does
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.act(self.bn(x)))


class ConvChain(nn.Module):
    """A path of conv+BN pairs named ``conv1``, ``conv2``, ... (authors' ``Block3x3``/``Block1x1``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_sizes: list[int], stride: int) -> None:
        super().__init__()
        for i, k in enumerate(kernel_sizes):
            self.add_module(f"conv{i + 1}", ConvBN(in_channels if i == 0 else out_channels, out_channels, k,
                                                   stride=stride if i == 0 else 1, padding=k // 2, act=False))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.children():
            x = layer(x)
        return x

    def equivalent_kernel_bias(self) -> fusion.KernelBias:
        return fusion.conv_bn_chain((layer.conv, layer.bn) for layer in self.children())


class GCBlock(nn.Module):
    """The Golden Cudgel block.

    Training form: ``num_paths`` parallel 3x3-conv+BN -> 1x1-conv+BN paths, one path of
    ``num_1x1_convs`` 1x1-conv+BN layers (0 disables it), and a BN identity path when the shape is
    preserved; their sum goes through a ReLU (or not, with ``act=False``). ``reparameterize()``
    replaces all of it by one 3x3 conv with bias, ``reparam_3x3``: the deploy form (``deploy=True``
    builds it directly; ``is_deploy`` tells which form a block is in).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, act: bool = True,
                 num_paths: int = 2, num_1x1_convs: int = 2, deploy: bool = False) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"GCBlock stride must be 1 or 2, got {stride}")
        if num_paths < 1:
            raise ValueError(f"GCBlock needs at least one 3x3 path, got num_paths={num_paths}")
        if not 0 <= num_1x1_convs <= 3:
            raise ValueError(f"num_1x1_convs must be 0-3, got {num_1x1_convs}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.relu = nn.ReLU() if act else nn.Identity()
        if deploy:
            self.reparam_3x3 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=True)
            return
        self.reparam_3x3 = None
        has_identity = in_channels == out_channels and stride == 1
        self.path_residual = nn.BatchNorm2d(in_channels) if has_identity else None
        for i in range(num_paths):
            self.add_module(f"path_3x3_{i + 1}", ConvChain(in_channels, out_channels, [3, 1], stride))
        self.path_1x1 = ConvChain(in_channels, out_channels, [1] * num_1x1_convs, stride) if num_1x1_convs else None

    @property
    def is_deploy(self) -> bool:
        return self.reparam_3x3 is not None

    def _paths_3x3(self) -> list[ConvChain]:
        return [m for name, m in self.named_children() if name.startswith("path_3x3_")]

    def forward(self, x: Tensor) -> Tensor:
        if self.reparam_3x3 is not None:
            return self.relu(self.reparam_3x3(x))
        out = sum(path(x) for path in self._paths_3x3())
        if self.path_1x1 is not None:
            out = out + self.path_1x1(x)
        if self.path_residual is not None:
            out = out + self.path_residual(x)
        return self.relu(out)

    def equivalent_kernel_bias(self) -> fusion.KernelBias:
        """The single 3x3 conv (kernel, bias) equal to this block's eval-mode linear part."""
        branches = [path.equivalent_kernel_bias() for path in self._paths_3x3()]
        if self.path_1x1 is not None:
            kernel, bias = self.path_1x1.equivalent_kernel_bias()
            branches.append((fusion.pad_to_3x3(kernel), bias))
        if self.path_residual is not None:
            bn = self.path_residual
            identity = fusion.identity_kernel(self.in_channels, dtype=bn.weight.dtype, device=bn.weight.device)
            branches.append(fusion.fold_bn(identity, bn))
        return fusion.sum_kernels(branches)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the training-form paths by one 3x3 conv (in place, exact in eval mode)."""
        if self.is_deploy:
            return
        kernel, bias = self.equivalent_kernel_bias()
        conv = nn.Conv2d(self.in_channels, self.out_channels, 3, self.stride, 1, bias=True).to(kernel)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        for name in [n for n, _ in self.named_children() if n.startswith("path_")]:
            delattr(self, name)
        self.reparam_3x3 = conv


class DAPPM(nn.Module):
    """Deep Aggregation Pyramid Pooling Module (DDRNet), as in MMSegmentation with 5 scales."""

    POOLS = ((5, 2, 2), (9, 4, 4), (17, 8, 8))  # (kernel, stride, padding) of the average pools

    def __init__(self, in_channels: int, branch_channels: int, out_channels: int) -> None:
        super().__init__()
        self.scales = nn.ModuleList([BNReLUConv(in_channels, branch_channels, 1)])
        for kernel, stride, padding in self.POOLS:
            self.scales.append(nn.Sequential(nn.AvgPool2d(kernel, stride, padding),
                                             BNReLUConv(in_channels, branch_channels, 1)))
        self.scales.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), BNReLUConv(in_channels, branch_channels, 1)))
        self.processes = nn.ModuleList(
            BNReLUConv(branch_channels, branch_channels, 3, padding=1) for _ in range(len(self.scales) - 1))
        self.compression = BNReLUConv(branch_channels * len(self.scales), out_channels, 1)
        self.shortcut = BNReLUConv(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[2:]
        feats = [self.scales[0](x)]
        for scale, process in zip(self.scales[1:], self.processes):
            up = F.interpolate(scale(x), size=size, mode="bilinear", align_corners=False)
            feats.append(process(up + feats[-1]))
        return self.compression(torch.cat(feats, dim=1)) + self.shortcut(x)


def seg_head(in_channels: int, channels: int, deploy: bool = False) -> nn.Sequential:
    """BN -> ReLU -> 3x3 conv -> BN -> ReLU (the authors' ``_make_base_head``)."""
    return nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(),
                         ConvBN(in_channels, channels, 3, padding=1, act=True, deploy=deploy))
