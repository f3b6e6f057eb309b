"""gcnet: GCNet (Golden Cudgel Network, CVPR 2025) real-time semantic segmentation in plain PyTorch.

>>> import gcnet
>>> model = gcnet.build_model("gcnet-s", num_classes=19)
>>> gcnet.load_weights(model, "gcnet-s_cityscapes.pth")   # authors' mmengine file, or ours
>>> model.eval().reparameterize()                          # one 3x3 conv per GCBlock
"""

from gcnet.checkpoint import load_model, load_weights, read_checkpoint, save_checkpoint
from gcnet.models import VARIANTS, GCNet, build_model, list_models
from gcnet.models.complexity import model_complexity, model_info

__version__ = "0.1.0"
__all__ = [
    "VARIANTS", "GCNet", "build_model", "list_models", "load_model", "load_weights", "read_checkpoint",
    "save_checkpoint", "model_complexity", "model_info", "__version__",
]
