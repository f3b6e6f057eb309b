"""Pretrained models: by name from the registry (:mod:`gcnet.weights`), or from a save_pretrained
folder or a Hugging Face Hub repository (``config.json`` + ``model.safetensors``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from gcnet.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_model, model_from_weights, resolve_checkpoint
from gcnet.errors import CheckpointError
from gcnet.models.gcnet import GCNet, positive_int
from gcnet.models.gcnet import build_model as _build_model
from gcnet.optional import require
from gcnet.weights import Weights, find_weights

__all__ = ["build_model", "from_pretrained"]


def build_model(name: str = "gcnet-s", num_classes: int | None = None, *, weights: str | Weights | None = None,
                deploy: bool | None = None, **overrides: Any) -> GCNet:
    """Build a GCNet variant (``gcnet-s``, ``gcnet-m``, ``gcnet-l``), optionally with weights.

    ``weights`` named (``gcnet.list_weights()``): the class count comes from the weights, the file is
    downloaded once into the cache, and ``num_classes`` and the variant must agree with them. A checkpoint
    path or URL is loaded into the model built with ``num_classes`` (default 19). With weights the model is
    built in the form they are in (the training form, or the deploy form for reparameterized weights) unless
    ``deploy`` says which; without, in the training form unless ``deploy=True``. Other arguments: see
    :func:`gcnet.models.build_model`.
    """
    if num_classes is not None:
        num_classes = positive_int(num_classes, "num_classes")
    entry = find_weights(weights) if weights is not None else None
    if weights is None:
        return _build_model(name, 19 if num_classes is None else num_classes, deploy=bool(deploy), **overrides)
    if entry is None:
        resolve_checkpoint(weights)  # a missing file or an unknown name fails before anything is read
        return model_from_weights(name, 19 if num_classes is None else num_classes, weights, deploy=deploy,
                                  **overrides)
    if entry.variant != name.lower():
        raise CheckpointError(f"weights {entry.name} are for {entry.variant}, not {name}")
    if num_classes is not None and num_classes != entry.num_classes:
        raise CheckpointError(f"weights {entry.name} have {entry.num_classes} classes ({entry.dataset}), "
                              f"not {num_classes}; leave num_classes out to take it from the weights")
    return model_from_weights(entry.variant, entry.num_classes, entry, deploy=deploy, **overrides)


def from_pretrained(name_or_path: str | os.PathLike, *, revision: str | None = None,
                    map_location: str | torch.device = "cpu") -> GCNet:
    """Load a model saved with :func:`gcnet.save_pretrained`: a local folder, or a Hugging Face Hub
    repository id (``owner/name``, through ``huggingface_hub`` when installed). Nothing is unpickled."""
    path = Path(name_or_path).expanduser()
    if not path.exists() and isinstance(name_or_path, str) and name_or_path.count("/") == 1:
        path = _download_repo(name_or_path, revision)
    return load_model(resolve_checkpoint(path), map_location)


def _download_repo(repo_id: str, revision: str | None) -> Path:
    hf_hub_download = require("huggingface_hub", f"{repo_id}: no such folder; loading it from the Hugging Face Hub",
                              error=CheckpointError).hf_hub_download
    try:
        hf_hub_download(repo_id, CONFIG_NAME, revision=revision)
        return Path(hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision)).parent
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises many types (network, 404, auth)
        raise CheckpointError(f"{repo_id}: could not download {CONFIG_NAME} and {WEIGHTS_NAME} from the "
                              f"Hugging Face Hub: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
