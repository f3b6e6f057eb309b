"""GCNet: Golden Cudgel Network for real-time semantic segmentation (CVPR 2025).

Layout (``channels`` = C): a stem of two stride-2 3x3 conv+BN+ReLU and GCBlock stages 2-3 (1/8, 2C),
then a semantic branch (stages 4-6 at 1/16, 1/32, 1/64 with 4C, 8C, 16C) and a detail branch
(1/8, 2C, 2C, 4C) exchanging features after stages 4 and 5 (bilateral fusion), DAPPM on the semantic
branch, and a segmentation head on their sum. In training, an auxiliary head reads the detail
features after stage 4's fusion.
"""

from __future__ import annotations

import copy
import numbers
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from gcnet.models.blocks import DAPPM, ConvBN, GCBlock, seg_head

# The authors' configs. ``num_blocks`` is their ``num_blocks_per_stage``: stages 2 and 3, then
# [semantic, detail] block counts for stages 4, 5 and 6.
VARIANTS: dict[str, dict[str, Any]] = {
    "gcnet-s": dict(channels=32, ppm_channels=128, num_blocks=[4, 4, [5, 4], [5, 4], [2, 2]], head_channels=64),
    "gcnet-m": dict(channels=64, ppm_channels=128, num_blocks=[4, 4, [5, 4], [5, 4], [2, 2]], head_channels=128),
    "gcnet-l": dict(channels=64, ppm_channels=128, num_blocks=[5, 5, [5, 5], [5, 5], [3, 3]], head_channels=256),
}
DEFAULTS: dict[str, Any] = dict(num_paths=2, num_1x1_convs=2, align_corners=False)
# ``GCNet(...)``'s argument defaults: gcnet-s, read from the table above rather than restated.
_GCNET_DEFAULTS: dict[str, Any] = {**VARIANTS["gcnet-s"], **DEFAULTS}


def _check_num_blocks(num_blocks: list) -> list:
    try:
        s2, s3 = int(num_blocks[0]), int(num_blocks[1])
        pairs = [[int(n) for n in pair] for pair in num_blocks[2:]]
    except (TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"num_blocks must look like [4, 4, [5, 4], [5, 4], [2, 2]], got {num_blocks!r}") from exc
    if len(num_blocks) != 5 or any(len(p) != 2 for p in pairs):
        raise ValueError(f"num_blocks must look like [4, 4, [5, 4], [5, 4], [2, 2]], got {num_blocks!r}")
    (s4, d4), (s5, d5), (s6, d6) = pairs
    if s2 < 0 or s3 < 1 or min(d4, d5) < 1 or min(s4, s5, s6, d6) < 2:
        raise ValueError("num_blocks: stage 2 needs >= 0 blocks, stage 3 >= 1, detail stages 4-5 >= 1, "
                         f"semantic stages 4-6 and detail stage 6 >= 2; got {num_blocks!r}")
    return [s2, s3, *pairs]


def positive_int(value: Any, name: str) -> int:
    """``value`` as an int; TypeError for a non-integer (``"19"``, ``19.5``, ``True``), ValueError below 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer (1 or more), got {value}")
    return int(value)


class GCNetBackbone(nn.Module):
    def __init__(self, channels: int, ppm_channels: int, num_blocks: list, num_paths: int,
                 num_1x1_convs: int, align_corners: bool, deploy: bool) -> None:
        super().__init__()
        c = channels
        s2, s3, (s4, d4), (s5, d5), (s6, d6) = num_blocks
        self.align_corners = align_corners

        def block(cin: int, cout: int, stride: int = 1, act: bool = True) -> GCBlock:
            return GCBlock(cin, cout, stride, act, num_paths, num_1x1_convs, deploy)

        def stage(cin: int, cout: int, n: int, stride: int, first_changes: bool) -> nn.Sequential:
            """n blocks; the first maps cin->cout; the last has no ReLU (the fusion applies it)."""
            blocks = [block(cin, cout, stride)] if first_changes else []
            blocks += [block(cout, cout) for _ in range(n - len(blocks) - 1)]
            return nn.Sequential(*blocks, block(cout, cout, act=False))

        self.stem = nn.Sequential(
            ConvBN(3, c, 3, stride=2, padding=1, deploy=deploy),
            ConvBN(c, c, 3, stride=2, padding=1, deploy=deploy),
            *[block(c, c) for _ in range(s2)],
            block(c, 2 * c, stride=2),
            *[block(2 * c, 2 * c) for _ in range(s3 - 1)],
        )
        self.relu = nn.ReLU()
        self.semantic_branch_layers = nn.ModuleList([
            stage(2 * c, 4 * c, s4, 2, True),
            stage(4 * c, 8 * c, s5, 2, True),
            stage(8 * c, 16 * c, s6, 2, True),
        ])
        self.compression_1 = ConvBN(4 * c, 2 * c, 1, act=False, deploy=deploy)
        self.down_1 = ConvBN(2 * c, 4 * c, 3, stride=2, padding=1, act=False, deploy=deploy)
        self.compression_2 = ConvBN(8 * c, 2 * c, 1, act=False, deploy=deploy)
        self.down_2 = nn.Sequential(
            ConvBN(2 * c, 4 * c, 3, stride=2, padding=1, act=True, deploy=deploy),
            ConvBN(4 * c, 8 * c, 3, stride=2, padding=1, act=False, deploy=deploy),
        )
        self.detail_branch_layers = nn.ModuleList([
            stage(2 * c, 2 * c, d4, 1, False),
            stage(2 * c, 2 * c, d5, 1, False),
            stage(2 * c, 4 * c, d6, 1, True),
        ])
        self.spp = DAPPM(16 * c, ppm_channels, 4 * c)

    def _up(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def _fuse(self, x_s: Tensor, x_d: Tensor, compression: nn.Module, down: nn.Module,
              size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Bilateral fusion. The authors' in-place ReLU also rectifies the tensors being added to,
        so both sums start from the rectified features."""
        x_s, x_d = self.relu(x_s), self.relu(x_d)
        return x_s + down(x_d), x_d + self._up(compression(x_s), size)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (detail features after stage 4's fusion, final features), both at 1/8."""
        x = self.stem(x)
        # The detail branch runs at ceil(H/8) x ceil(W/8) (three stride-2 3x3 convs); taking the size
        # from its tensor rather than from Python ints keeps traced / exported graphs shape-dynamic.
        x_s, x_d = self.semantic_branch_layers[0](x), self.detail_branch_layers[0](x)
        x_s, x_d = self._fuse(x_s, x_d, self.compression_1, self.down_1, x_d.shape[-2:])
        c4_feat = x_d
        x_s, x_d = self.semantic_branch_layers[1](self.relu(x_s)), self.detail_branch_layers[1](self.relu(x_d))
        x_s, x_d = self._fuse(x_s, x_d, self.compression_2, self.down_2, x_d.shape[-2:])
        x_d = self.detail_branch_layers[2](self.relu(x_d))
        x_s = self.spp(self.semantic_branch_layers[2](self.relu(x_s)))
        return c4_feat, x_d + self._up(x_s, x_d.shape[-2:])


class GCNetHead(nn.Module):
    """Main head (and, in training form, the auxiliary head on the stage-4 detail features)."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, deploy: bool) -> None:
        super().__init__()
        self.head = seg_head(in_channels, channels, deploy=deploy)
        if deploy:
            self.aux_head_c4 = self.aux_cls_seg_c4 = None
        else:
            self.aux_head_c4 = seg_head(in_channels // 2, channels)
            self.aux_cls_seg_c4 = nn.Conv2d(channels, num_classes, 1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: Tensor) -> Tensor:
        return self.conv_seg(self.head(feats))

    def forward_aux(self, c4_feat: Tensor) -> Tensor:
        return self.aux_cls_seg_c4(self.aux_head_c4(c4_feat))


class GCNet(nn.Module):
    """GCNet segmentation model: ``backbone`` + ``decode_head`` (the authors' state-dict layout).

    ``eval()``: returns logits ``(B, K, ceil(H/8), ceil(W/8))``. ``train()``: returns
    ``(logits, aux_logits)``. After ``reparameterize()`` the model is in the *deploy* form, a plain
    conv network (one 3x3 conv per GCBlock, BatchNorms after convs folded, no auxiliary head)
    returning logits only; ``deploy=True`` builds that form directly and ``is_deploy`` tells which
    form a model is in. Arguments left out take gcnet-s's values (``VARIANTS`` and ``DEFAULTS``).
    """

    def __init__(self, num_classes: int = 19, channels: int = _GCNET_DEFAULTS["channels"],
                 ppm_channels: int = _GCNET_DEFAULTS["ppm_channels"], num_blocks: list | None = None,
                 head_channels: int = _GCNET_DEFAULTS["head_channels"], num_paths: int = _GCNET_DEFAULTS["num_paths"],
                 num_1x1_convs: int = _GCNET_DEFAULTS["num_1x1_convs"],
                 align_corners: bool = _GCNET_DEFAULTS["align_corners"], deploy: bool = False,
                 name: str = "custom") -> None:
        super().__init__()
        num_blocks = _check_num_blocks(num_blocks if num_blocks is not None else _GCNET_DEFAULTS["num_blocks"])
        num_classes, channels = positive_int(num_classes, "num_classes"), positive_int(channels, "channels")
        ppm_channels, head_channels = positive_int(ppm_channels, "ppm_channels"), positive_int(head_channels, "head_channels")
        self.config: dict[str, Any] = dict(
            name=name, num_classes=num_classes, channels=channels, ppm_channels=ppm_channels,
            num_blocks=copy.deepcopy(num_blocks), head_channels=head_channels, num_paths=num_paths,
            num_1x1_convs=num_1x1_convs, align_corners=align_corners)
        self.num_classes = num_classes
        self.is_deploy = deploy
        self.backbone = GCNetBackbone(channels, ppm_channels, num_blocks, num_paths, num_1x1_convs,
                                      align_corners, deploy)
        self.decode_head = GCNetHead(4 * channels, head_channels, num_classes, deploy)
        if not deploy:
            self._init_weights()

    def _init_weights(self) -> None:
        """Kaiming-normal (fan_out) convs, unit BN, as the authors initialise from scratch."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        c4_feat, feats = self.backbone(x)
        logits = self.decode_head(feats)
        if self.training and not self.is_deploy:
            return logits, self.decode_head.forward_aux(c4_feat)
        return logits

    def reparameterize(self) -> GCNet:
        """Convert to the deploy form in place (eval mode): GCBlocks -> one 3x3 conv each, BNs that
        follow a conv folded into it, auxiliary head dropped. Returns ``self``."""
        self.eval()
        self.fuse_gcblocks()
        for module in self.modules():
            if isinstance(module, ConvBN):
                module.fold_bn()
        self.decode_head.aux_head_c4 = self.decode_head.aux_cls_seg_c4 = None
        self.is_deploy = True
        return self

    def fuse_gcblocks(self) -> GCNet:
        """Collapse only the GCBlocks (the authors' ``switch_to_deploy`` form)."""
        for module in self.modules():
            if isinstance(module, GCBlock):
                module.reparameterize()
        return self


def list_models() -> list[str]:
    return sorted(VARIANTS)


def build_model(name: str = "gcnet-s", num_classes: int = 19, *, deploy: bool = False, **overrides: Any) -> GCNet:
    """Build a GCNet variant (``gcnet-s``, ``gcnet-m``, ``gcnet-l``).

    ``overrides`` replace the variant's defaults: ``channels``, ``ppm_channels``, ``num_blocks``,
    ``head_channels``, ``num_paths`` (N parallel 3x3-1x1 paths, 2 in the release),
    ``num_1x1_convs`` (depth of the 1x1 path, 0-3), ``align_corners``. ``deploy=True`` builds the
    reparameterized form directly (load deploy weights into it with ``load_weights``).
    """
    key = name.lower()
    if key not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    unknown = set(overrides) - set(VARIANTS[key]) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown option(s) for {key}: {', '.join(sorted(unknown))}; valid: "
                         f"{', '.join(sorted({*VARIANTS[key], *DEFAULTS}))}")
    kwargs = {**copy.deepcopy(VARIANTS[key]), **DEFAULTS, **overrides}
    return GCNet(num_classes=num_classes, deploy=deploy, name=key, **kwargs)
