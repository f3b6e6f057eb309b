"""gcnet: GCNet (Golden Cudgel Network, CVPR 2025) real-time semantic segmentation in plain PyTorch.

>>> import gcnet
>>> model = gcnet.build_model("gcnet-s", weights="gcnet-s_cityscapes")  # the authors' release, cached
>>> model.eval().reparameterize()                                       # one 3x3 conv per GCBlock
>>> gcnet.list_weights()                                                # named weights and their metadata
"""

from gcnet.checkpoint import (
    checkpoint_dataset_info,
    load_model,
    load_weights,
    read_checkpoint,
    save_checkpoint,
    save_pretrained,
)
from gcnet.hub import build_model, from_pretrained
from gcnet.models import VARIANTS, GCNet, list_models
from gcnet.models.complexity import model_complexity, model_info
from gcnet.weights import Weights, get_weights, list_weights

__version__ = "0.1.0"
__all__ = [
    "VARIANTS", "GCNet", "build_model", "list_models", "load_model", "load_weights", "read_checkpoint",
    "save_checkpoint", "save_pretrained", "from_pretrained", "checkpoint_dataset_info", "Weights",
    "get_weights", "list_weights", "model_complexity", "model_info", "stream", "__version__",
]


def __getattr__(name: str):
    """``gcnet.stream`` is imported on first use (it pulls in the deploy runtimes)."""
    if name == "stream":
        from gcnet.deploy.predict import stream

        return stream
    raise AttributeError(f"module 'gcnet' has no attribute {name!r}")
