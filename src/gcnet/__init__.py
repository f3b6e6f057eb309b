"""gcnet: GCNet (Golden Cudgel Network, CVPR 2025) real-time semantic segmentation in plain PyTorch."""

from gcnet.models import VARIANTS, GCNet, build_model, list_models

__version__ = "0.1.0"
__all__ = ["VARIANTS", "GCNet", "build_model", "list_models", "__version__"]
