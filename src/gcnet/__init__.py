"""gcnet: GCNet (Golden Cudgel Network, CVPR 2025) real-time semantic segmentation in plain PyTorch.

>>> import gcnet
>>> model = gcnet.build_model("gcnet-s", weights="gcnet-s_cityscapes")  # the authors' release, cached
>>> model.eval().reparameterize()                                       # one 3x3 conv per GCBlock
>>> gcnet.list_weights()                                                # named weights and their metadata
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> the module that defines it. Imported on first use, so that ``import gcnet`` does not wait
# seconds for torch, and the command line (whose start-up imports it) handles a Ctrl-C during that wait.
_EXPORTS = {
    "checkpoint_dataset_info": "gcnet.checkpoint", "load_model": "gcnet.checkpoint",
    "load_weights": "gcnet.checkpoint", "read_checkpoint": "gcnet.checkpoint",
    "save_checkpoint": "gcnet.checkpoint", "save_pretrained": "gcnet.checkpoint",
    "build_model": "gcnet.hub", "from_pretrained": "gcnet.hub",
    "VARIANTS": "gcnet.models", "GCNet": "gcnet.models", "list_models": "gcnet.models",
    "model_complexity": "gcnet.models.complexity", "model_info": "gcnet.models.complexity",
    "Weights": "gcnet.weights", "get_weights": "gcnet.weights", "list_weights": "gcnet.weights",
    "stream": "gcnet.deploy.predict",
}
__all__ = [  # literal, for linters: the names of _EXPORTS
    "VARIANTS", "GCNet", "build_model", "list_models", "load_model", "load_weights", "read_checkpoint",
    "save_checkpoint", "save_pretrained", "from_pretrained", "checkpoint_dataset_info", "Weights",
    "get_weights", "list_weights", "model_complexity", "model_info", "stream", "__version__",
]

if TYPE_CHECKING:  # what type checkers and IDEs see
    from gcnet.checkpoint import (
        checkpoint_dataset_info,
        load_model,
        load_weights,
        read_checkpoint,
        save_checkpoint,
        save_pretrained,
    )
    from gcnet.deploy.predict import stream
    from gcnet.hub import build_model, from_pretrained
    from gcnet.models import VARIANTS, GCNet, list_models
    from gcnet.models.complexity import model_complexity, model_info
    from gcnet.weights import Weights, get_weights, list_weights


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gcnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
