"""GCNet models: building blocks, the network, variant specs and complexity counting."""

from gcnet.models.gcnet import VARIANTS, GCNet, build_model, list_models

__all__ = ["VARIANTS", "GCNet", "build_model", "list_models"]
