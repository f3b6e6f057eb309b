"""Reading and writing checkpoints safely.

* Our files: ``{"format": "gcnet", "config": ..., "deployed": bool, "state_dict": ..., **extra}``,
  written atomically and loadable with ``torch.load(weights_only=True)``.
* The authors' files: mmengine checkpoints (``state_dict``, ``meta``, ``message_hub``, ...), in
  training form or after their ``switch_to_deploy``. mmengine pickles its own objects into them,
  which ``weights_only=True`` refuses; we then read the file with a restricted unpickler that turns
  known metadata classes (mmengine, numpy) into inert placeholders and refuses everything else,
  so no code from a file is ever run.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from gcnet.errors import CheckpointError
from gcnet.models.gcnet import GCNet, build_model

FORMAT = "gcnet"
StateDict = dict[str, Tensor]

# Classes of metadata that mmengine writes next to the weights: read as inert placeholders.
_OPAQUE_MODULE_PREFIXES = ("mmengine.", "mmcv.", "mmseg.", "numpy")
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("_codecs", "encode"): __import__("_codecs").encode,
    **{("builtins", n): getattr(__import__("builtins"), n)
       for n in ("set", "frozenset", "tuple", "list", "dict", "int", "float", "bool", "str", "bytes",
                 "bytearray", "complex", "slice")},
}


class _Opaque:
    """Stands in for a metadata object or function from the file; stores its arguments, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state = args, kwargs, None

    def __call__(self, *args: Any, **kwargs: Any) -> _Opaque:
        return type(self)(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _make_restricted_pickle_module(path: str) -> Any:
    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in _SAFE_GLOBALS:
                return _SAFE_GLOBALS[(module, name)]
            if module == "torch" and name.endswith("Storage"):
                return getattr(torch, name)
            if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
                return getattr(torch, name)
            if module.startswith(_OPAQUE_MODULE_PREFIXES):
                return type(name, (_Opaque,), {"__module__": "gcnet.checkpoint.opaque"})
            raise CheckpointError(
                f"{path}: refusing to load: the file references `{module}.{name}`, which is neither "
                "tensor data nor known checkpoint metadata (a pickle can run code). Nothing from the "
                "file was executed.")

    def load(file: Any, **kwargs: Any) -> Any:  # torch's legacy (non-zip) reader calls load() directly
        return RestrictedUnpickler(file, **kwargs).load()

    return SimpleNamespace(Unpickler=RestrictedUnpickler, load=load, __name__="gcnet_restricted_pickle")


def read_checkpoint(source: str | os.PathLike | io.BytesIO, map_location: str | torch.device = "cpu") -> Any:
    """Read any supported checkpoint file without executing code from it."""
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else str(getattr(source, "name", source))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        pass  # references a global outside torch's allowlist: retry with our restricted unpickler
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(f"{name}: not a readable PyTorch checkpoint (corrupt or truncated?): {exc}") from exc
    if isinstance(source, io.BytesIO):
        source.seek(0)
    try:
        return torch.load(source, map_location=map_location, weights_only=False,
                          pickle_module=_make_restricted_pickle_module(name))
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything else means the file is unusable
        raise CheckpointError(f"{name}: not a readable checkpoint (corrupt, truncated or not a PyTorch file): {exc}") from exc


def extract_state_dict(obj: Any, name: str = "checkpoint") -> StateDict:
    """The model weights inside a checkpoint: ours, mmengine's wrapper, or a bare state dict."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{name}: no model state dict found (expected a dict of tensors, or one "
                              "under 'state_dict')")
    prefix = "module."
    if all(k.startswith(prefix) for k in obj):  # saved from DistributedDataParallel
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def state_dict_form(state_dict: StateDict) -> str:
    """'train' (GCBlock paths), 'fused_blocks' (authors' deploy form) or 'deploy' (BN folded too)."""
    if any(".path_3x3_" in k for k in state_dict):
        return "train"
    if "backbone.stem.0.bn.weight" in state_dict:
        return "fused_blocks"
    return "deploy"


def model_form(model: GCNet) -> str:
    return "deploy" if model.is_deployed else "train"


def _compare(model_sd: StateDict, state_dict: StateDict, name: str, ignore_missing: tuple[str, ...] = ()) -> None:
    missing = sorted(k for k in model_sd if k not in state_dict and not k.startswith(ignore_missing))
    unexpected = sorted(k for k in state_dict if k not in model_sd)
    shapes = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                    for k, v in model_sd.items() if k in state_dict and state_dict[k].shape != v.shape)
    if not (missing or unexpected or shapes):
        return

    def listing(title: str, items: list[str]) -> str:
        more = f"\n    ... and {len(items) - 12} more" if len(items) > 12 else ""
        return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:12]) + more if items else ""

    raise CheckpointError(f"{name}: checkpoint does not match the model (nothing was loaded)"
                          + listing("missing in checkpoint", missing)
                          + listing("unexpected in checkpoint", unexpected)
                          + listing("shape mismatch", shapes))


_AUX_PREFIX = ("decode_head.aux_",)


def load_weights(model: GCNet, source: str | os.PathLike | dict, strict: bool = True) -> GCNet:
    """Load weights into ``model`` from a path or a state dict, converting the form if needed.

    Accepts our checkpoints, the authors' training-form and deploy-form (``switch_to_deploy``)
    checkpoints, and the mmengine wrapper. A deploy-form model accepts any form (the weights are
    reparameterized on the way in; the auxiliary head's weights are not needed); a training-form
    model needs training-form weights. Mismatches raise ``CheckpointError`` listing what differs;
    nothing is loaded then.
    """
    name = str(source) if not isinstance(source, dict) else "state dict"
    obj = read_checkpoint(source) if not isinstance(source, dict) else source
    state_dict = extract_state_dict(obj, name)
    classes = state_dict.get("decode_head.conv_seg.weight")
    if classes is not None and classes.shape[0] != model.num_classes:
        raise CheckpointError(f"{name}: checkpoint has {classes.shape[0]} classes but the model has "
                              f"{model.num_classes}; build the model with num_classes={classes.shape[0]} "
                              "(or fine-tune from the backbone only)")
    form, target = state_dict_form(state_dict), model_form(model)
    if form != "train" and target == "train":
        raise CheckpointError(f"{name}: checkpoint holds reparameterized (deploy-form) weights, which cannot "
                              "be expanded back into the training form; build the model with deploy=True")
    if form != target:
        staging = build_model(**model.config)  # training form, then converted like the checkpoint
        if form == "fused_blocks":
            staging.fuse_gcblocks()
        _compare(staging.state_dict(), state_dict, name, ignore_missing=_AUX_PREFIX)
        staging.load_state_dict(state_dict, strict=False)
        state_dict = staging.to(next(model.parameters()).device).reparameterize().state_dict()
    elif target == "deploy":
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(_AUX_PREFIX)}
    if strict:
        _compare(model.state_dict(), state_dict, name)
    model.load_state_dict(state_dict, strict=strict)
    return model


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra: Any) -> Path:
    """Write ``model`` (config + weights) and ``extra`` atomically; loads with ``weights_only=True``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = getattr(model, "module", model)  # unwrap DistributedDataParallel
    payload = {"format": FORMAT, "config": net.config, "deployed": net.is_deployed,
               "state_dict": net.state_dict(), **extra}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> GCNet:
    """Rebuild a model from one of our checkpoints (its config is inside), in the form it was saved."""
    obj = read_checkpoint(path, map_location)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or "config" not in obj:
        raise CheckpointError(f"{path}: not a gcnet checkpoint (no model config inside); for the authors' "
                              "files use build_model(...) then load_weights(model, path)")
    try:
        model = build_model(deploy=bool(obj.get("deployed")), **obj["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid model config inside the checkpoint: {exc}") from exc
    load_weights(model, obj["state_dict"])
    return model.to(map_location).eval()
