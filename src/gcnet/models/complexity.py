"""Parameter and multiply-add (MAC) counts; MACs come from one forward pass of a shape-only copy of the
model on PyTorch's meta device, so counting is fast at any input size and touches no real memory.

MACs count convolutions and linear layers (the paper's "GFLOPs" column counts multiply-adds of
these); BatchNorm, activations, pooling and interpolation are elementwise and left out.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Complexity:
    params: int
    macs: int
    input_size: tuple[int, int]

    def as_dict(self) -> dict:
        return asdict(self)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int], batch: int = 1) -> int:
    """Multiply-adds of one forward pass (eval mode) at ``input_size`` = (H, W)."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    shadow = copy.deepcopy(model).to("meta").eval()
    for m in shadow.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, nn.Linear):
            m.register_forward_hook(linear_hook)
    shadow(torch.empty(batch, 3, *input_size, device="meta"))
    return total


def model_complexity(model: nn.Module, input_size: tuple[int, int] = (1024, 2048)) -> Complexity:
    return Complexity(count_params(model), count_macs(model, input_size), tuple(input_size))


def model_info(name: str = "gcnet-s", input_size: tuple[int, int] = (1024, 2048), num_classes: int = 19,
               **overrides) -> dict:
    """Params and MACs of a variant in training form and in deploy (reparameterized) form; ``input_size``:
    (H, W) or one int for a square, at least 1 pixel a side."""
    from gcnet.data.transforms import size_pair
    from gcnet.models.gcnet import build_model

    input_size = size_pair(input_size, "input_size")

    with torch.device("meta"):
        train = build_model(name, num_classes, **overrides)
        deploy = build_model(name, num_classes, deploy=True, **overrides)
    return {"model": name, "num_classes": num_classes, "input_size": list(input_size),
            "train": model_complexity(train, input_size).as_dict(),
            "deploy": model_complexity(deploy, input_size).as_dict()}
