"""Reading and writing checkpoints safely.

* Our files: ``{"format": "gcnet", "config": ..., "deployed": bool, "state_dict": ...,
  "dataset": {name, classes, palette, ignore_index} (optional), **extra}``, written atomically and
  loadable with ``torch.load(weights_only=True)``.
* The portable form (:func:`save_pretrained`): a folder with ``config.json`` (model config, dataset
  metadata, normalisation) and ``model.safetensors`` (weights; the same JSON in its header), the
  layout timm and smp use on the Hugging Face Hub. Reading it never unpickles anything.
* The authors' files: mmengine checkpoints (``state_dict``, ``meta``, ``message_hub``, ...), in
  training form or after their ``switch_to_deploy``. mmengine pickles its own objects into them,
  which ``weights_only=True`` refuses; we then read the file with a restricted unpickler that turns
  known metadata classes (mmengine, numpy) into inert placeholders and refuses everything else,
  so no code from a file is ever run.

Every function that takes a checkpoint takes a *spec*: a path, named weights (``gcnet-s_cityscapes``,
see :mod:`gcnet.weights`) or a URL; :func:`resolve_checkpoint` turns it into a local file.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from gcnet.data.metadata import DatasetInfo
from gcnet.data.transforms import MEAN, STD
from gcnet.errors import CheckpointError
from gcnet.fileio import IMAGE_EXTENSIONS, atomic_path, with_default_permissions, write_text
from gcnet.models.gcnet import GCNet, build_model, list_models
from gcnet.weights import Weights, fetch, find_weights, get_weights, list_weights, resolve, sha256sum

FORMAT = "gcnet"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
StateDict = dict[str, Tensor]
Source = str | os.PathLike | Weights

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


def resolve_checkpoint(source: Source) -> Path:
    """The local file (or save_pretrained folder) for a checkpoint spec: a path, named weights
    (``gcnet weights`` lists them) or a URL. Names and URLs are downloaded once into the cache and
    checked first (named weights: keys and shapes against their model)."""
    path = resolve(source, check=_check_download)
    if not path.exists():
        raise CheckpointError(f"{_spec_name(source)}: no such checkpoint file (nor named weights: "
                              f"{', '.join(list_weights())}; nor a URL)")
    return path


def _spec_name(source: Source | dict) -> str:
    return source.name if isinstance(source, Weights) else "state dict" if isinstance(source, dict) else str(source)


def fetch_weights(name: str | Weights, *, force: bool = False, progress: bool = True) -> Path:
    """Download named weights into the cache (unless cached, or with ``force``), checked before kept."""
    return fetch(name, check=_check_download, force=force, progress=progress)


def _check_download(path: Path, entry: Weights | None) -> None:
    if entry is None:
        read_checkpoint(path)  # any URL: must be a readable checkpoint (catches truncated files too)
    else:
        check_weights(path, entry.variant, entry.num_classes, name="the file")


def read_checkpoint(source: Source | io.BytesIO, map_location: str | torch.device = "cpu") -> Any:
    """Read any supported checkpoint without executing code from it: ours, the authors' (mmengine),
    a save_pretrained folder or ``.safetensors`` file (returned in our checkpoint layout)."""
    if isinstance(source, io.IOBase):
        return _torch_load(source, str(getattr(source, "name", source)), map_location)
    path = resolve_checkpoint(source)
    if path.is_dir() or _is_safetensors(path):
        return _read_pretrained(path, map_location)
    problem = _foreign_file(path) or _damaged_zip(path)
    if problem:
        raise CheckpointError(problem)
    return _torch_load(path, str(path), map_location)


def _damaged_zip(path: Path) -> str | None:
    """What is wrong with a zip checkpoint (PyTorch's format) whose stored CRCs do not match its data,
    which torch.load does not check; None if it is fine or not a readable zip (torch.load says why)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return None
    if bad is None:
        return None
    return f"{path}: damaged (its data does not match the checksums stored in it); use an intact copy of the file"


def _brief(exc: BaseException) -> str:
    """First line of an error from torch.load, without its advice to disable weights_only (never wanted)."""
    line = (str(exc).strip().splitlines() or [""])[0]
    if len(line) > 200:  # whole sentences only
        end = line[:200].rfind(". ")
        line = line[:end + 1] if end > 0 else line[:200] + "..."
    return type(exc).__name__ if not line or "weights_only" in line else line


def _torch_load(source: Path | io.IOBase, name: str, map_location: str | torch.device) -> Any:
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        pass  # references a global outside torch's allowlist: retry with our restricted unpickler
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError) as exc:  # the last two: stray bytes
        raise CheckpointError(f"{name}: not a readable PyTorch checkpoint (truncated or corrupt?): {_brief(exc)}") from None
    if isinstance(source, io.IOBase):
        source.seek(0)
    try:
        return torch.load(source, map_location=map_location, weights_only=False,
                          pickle_module=_make_restricted_pickle_module(name))
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything else means the file is unusable
        raise CheckpointError(f"{name}: not a readable checkpoint (truncated, corrupt or not a PyTorch file): "
                              f"{_brief(exc)}") from None


_PASS_INSTEAD = ("pass a gcnet checkpoint (.pth from `gcnet train`), named weights (`gcnet weights`), the "
                 "authors' .pth, or a save_pretrained folder")


def _foreign_file(path: Path) -> str | None:
    """What a file that is not a checkpoint is, and what to pass instead; None if it may be one."""
    suffix = path.suffix.lower()
    with open(path, "rb") as f:
        head = f.read(256).lstrip()
    hint = ""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
            kind = "a TorchScript module (`gcnet export --format torchscript`; load it with torch.jit.load)"
        elif suffix == ".pt2" or any(n.endswith("/archive_format") for n in names):
            kind = "a torch.export program (`gcnet export --format torch-export`; load it with torch.export.load)"
        elif any(n.endswith("data.pkl") for n in names):
            return None
        else:
            kind = "a zip archive"
    elif suffix == ".onnx":
        kind, hint = "an ONNX model (from `gcnet export`)", "; `gcnet predict` runs it as is"
    elif suffix == ".xml" or head.startswith((b"<?xml", b"<net")) or (suffix == ".bin" and path.with_suffix(".xml").is_file()):
        kind, hint = "an OpenVINO IR model (from `gcnet export`)", "; `gcnet predict` runs the .xml as is"
    elif head[:15].lower().startswith((b"<!doctype html", b"<html")):
        kind = "an HTML page (a failed download? Google Drive answers large files with a confirmation page)"
    elif suffix in IMAGE_EXTENSIONS or head.startswith((b"\x89PNG", b"\xff\xd8\xff")):
        kind = "an image"
    elif suffix == ".toml":
        kind = "a training config (for `gcnet train`)"
    elif suffix == ".json" and path.name == CONFIG_NAME:
        kind, hint = "a save_pretrained config", f"; pass its folder ({path.parent})"
    else:
        return None
    return f"{path}: this is {kind}, not a model checkpoint: {_PASS_INSTEAD}{hint}"


def _is_safetensors(path: Path) -> bool:
    if path.suffix.lower() == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)  # 8-byte little-endian header length, then the JSON header
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 1 << 30


def _read_pretrained(path: Path, map_location: str | torch.device) -> dict:
    """A save_pretrained folder or .safetensors file, as our checkpoint dict; nothing is unpickled."""
    from safetensors import safe_open

    file = path / WEIGHTS_NAME if path.is_dir() else path
    if not file.is_file():
        pth = sorted(p.name for p in path.glob("*.pth"))[:4]
        raise CheckpointError(f"{path}: a folder, not a checkpoint: pass a checkpoint file"
                              + (f" inside it ({', '.join(pth)})" if pth else "")
                              + f", or a save_pretrained folder ({CONFIG_NAME} + {WEIGHTS_NAME})")
    try:
        with safe_open(file, "pt", device=str(map_location)) as f:
            card_text = (f.metadata() or {}).get(FORMAT)
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for bad files
        raise CheckpointError(f"{file}: not a readable safetensors file (truncated or corrupt?): {_brief(exc)}") from None
    config_file = file.parent / CONFIG_NAME
    if card_text is None and config_file.is_file():
        card_text = config_file.read_text(encoding="utf-8")
    if card_text is None:
        return {"state_dict": state}  # weights only, e.g. from another tool
    try:
        card = json.loads(card_text)
        config = dict(card["model"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{file}: invalid gcnet model config ({exc})") from None
    return {"format": FORMAT, "config": config, "deployed": bool(card.get("deployed")), "state_dict": state,
            "dataset": card.get("dataset")}


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
    return "deploy" if model.is_deploy else "train"


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


def load_weights(model: GCNet, source: Source | dict, strict: bool = True) -> GCNet:
    """Load weights into ``model`` from a checkpoint spec (path, name, URL) or a state dict.

    Accepts our checkpoints, save_pretrained folders, the authors' training-form and deploy-form
    (``switch_to_deploy``) checkpoints, and the mmengine wrapper. A deploy-form model accepts any form
    (the weights are reparameterized on the way in; the auxiliary head's weights are not needed); a
    training-form model needs training-form weights. Mismatches raise ``CheckpointError`` listing what
    differs; nothing is loaded then.
    """
    name = _spec_name(source)
    obj = read_checkpoint(source) if not isinstance(source, dict) else source
    return _load_state(model, extract_state_dict(obj, name), name, strict)


def _model_from_config(config: dict, deploy: bool) -> GCNet:
    """A named variant through ``build_model`` (which checks the options); a GCNet built directly
    (``GCNet(...)``, named "custom") from the full config it saved."""
    if str(config.get("name", "")).lower() in list_models():
        return build_model(deploy=deploy, **config)
    return GCNet(deploy=deploy, **config)


def _load_state(model: GCNet, state_dict: StateDict, name: str, strict: bool = True) -> GCNet:
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
        staging = _model_from_config(model.config, deploy=False)  # training form, converted like the checkpoint
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


def model_from_weights(variant: str, num_classes: int, source: Source | dict, name: str | None = None, *,
                       deploy: bool | None = None, **overrides: Any) -> GCNet:
    """``variant`` for ``num_classes`` classes (and ``overrides``: see ``build_model``) with ``source``'s
    weights loaded, built in the form they are in (training form for training-form weights, deploy form for
    reparameterized ones: the authors' ``switch_to_deploy`` files and ours) unless ``deploy`` says which.
    ``CheckpointError`` lists what differs."""
    name = name or _spec_name(source)
    state = extract_state_dict(source if isinstance(source, dict) else read_checkpoint(source), name)
    deploy = state_dict_form(state) != "train" if deploy is None else deploy
    return _load_state(build_model(variant, num_classes, deploy=deploy, **overrides), state, name)


def check_weights(source: Source, variant: str, num_classes: int, name: str | None = None) -> None:
    """Raise ``CheckpointError`` (with what differs) unless ``source`` holds ``variant`` weights for
    ``num_classes`` classes, in any form (keys and shapes are compared)."""
    name = name or _spec_name(source)
    state = extract_state_dict(source if isinstance(source, dict) else read_checkpoint(source), name)
    head = state.get("decode_head.conv_seg.weight")
    if head is not None and head.shape[0] != num_classes:
        raise CheckpointError(f"{name} holds weights for {head.shape[0]} classes, not {num_classes}")
    model_from_weights(variant, num_classes, state, f"{name} (expected {variant} weights for {num_classes} classes)")


def verify_weights(name: str | Weights) -> str:
    """Check cached named weights (SHA-256 where published, keys and shapes); returns the file's SHA-256."""
    entry = get_weights(name)
    if not entry.is_cached():
        raise CheckpointError(f"{entry.name}: not in the cache ({entry.path}); run `gcnet weights download "
                              f"{entry.name}`")
    digest = sha256sum(entry.path)
    if entry.sha256 and digest != entry.sha256.lower():
        raise CheckpointError(f"{entry.path}: SHA-256 {digest} differs from the published {entry.sha256}; "
                              f"download it again: gcnet weights download {entry.name} --force")
    check_weights(entry.path, entry.variant, entry.num_classes)
    return digest


def _dataset_dict(info: DatasetInfo | None, num_classes: int) -> dict | None:
    if info is None:
        return None
    if not isinstance(info, DatasetInfo):
        raise TypeError(f"dataset must be a gcnet.data.metadata.DatasetInfo, got {type(info).__name__}")
    if info.num_classes != num_classes:
        raise ValueError(f"dataset {info.name!r} has {info.num_classes} classes but the model has {num_classes}")
    return {"name": info.name, "classes": list(info.classes), "palette": [list(c) for c in info.palette],
            "ignore_index": int(info.ignore_index)}


def save_checkpoint(path: str | os.PathLike, model: nn.Module, *, dataset: DatasetInfo | None = None,
                    **extra: Any) -> Path:
    """Write ``model`` (config + weights), its ``dataset`` metadata (class names, palette, ignore index)
    and ``extra`` atomically; loads with ``weights_only=True``."""
    net = getattr(model, "module", model)  # unwrap DistributedDataParallel
    payload = {"format": FORMAT, "config": net.config, "deployed": net.is_deploy,
               "state_dict": net.state_dict(), **extra}
    stored = _dataset_dict(dataset, net.num_classes)
    if stored is not None:
        payload["dataset"] = stored
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def save_pretrained(model: nn.Module, directory: str | os.PathLike, *, dataset: DatasetInfo | None = None) -> Path:
    """Write ``directory/config.json`` (model config, dataset metadata, normalisation) and
    ``directory/model.safetensors`` (the weights, in the model's form), each atomically; returns the folder.
    ``load_model(directory)`` / ``gcnet.from_pretrained`` read it back without unpickling anything."""
    from safetensors.torch import save_file

    net = getattr(model, "module", model)
    card = {"library": "gcnet", "format_version": 1, "model": net.config, "deployed": net.is_deploy,
            "num_classes": net.num_classes, "dataset": _dataset_dict(dataset, net.num_classes),
            "normalization": {"mean": list(MEAN), "std": list(STD), "input": "RGB, 0-255"}}
    text = json.dumps(card, indent=2) + "\n"
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file; save_pretrained writes a folder ({CONFIG_NAME} + {WEIGHTS_NAME}): "
                                 "give a folder path (save_checkpoint writes a single .pth file)")
    state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    with atomic_path(folder / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", FORMAT: text})
        with_default_permissions(tmp)
    write_text(folder / CONFIG_NAME, text)
    return folder


def checkpoint_dataset_info(source: Source | dict) -> DatasetInfo | None:
    """Class names, palette and ignore index stored with a checkpoint (or known for named weights);
    None when there are none. Reads ours, save_pretrained folders and mmseg's ``meta.dataset_meta``."""
    entry = find_weights(source)
    if entry is not None:
        return entry.info
    obj = source if isinstance(source, dict) else read_checkpoint(source)
    if not isinstance(obj, dict):
        return None
    stored = obj.get("dataset")
    if isinstance(stored, dict):
        try:
            return DatasetInfo(str(stored["name"]), stored["classes"], stored["palette"],
                               int(stored.get("ignore_index", 255)))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{_spec_name(source)}: invalid dataset metadata inside ({exc})") from None
    meta = obj.get("meta")
    mm = meta.get("dataset_meta") if isinstance(meta, dict) else None
    if isinstance(mm, dict) and mm.get("classes") and mm.get("palette"):
        try:  # mmseg's: classes and palette, no name
            return DatasetInfo("mmseg dataset_meta", tuple(mm["classes"]), tuple(mm["palette"]), 255)
        except (TypeError, ValueError):
            return None
    return None


def load_model(source: Source, map_location: str | torch.device = "cpu") -> GCNet:
    """Rebuild a model, in the form it was saved, from one of our checkpoints or a save_pretrained
    folder (the config is inside) or from named weights (the registry knows the model)."""
    obj = read_checkpoint(source, map_location)
    entry, name = find_weights(source), _spec_name(source)
    ours = isinstance(obj, dict) and obj.get("format") == FORMAT and "config" in obj
    if not ours and entry is not None:
        return model_from_weights(entry.variant, entry.num_classes, obj, name).to(map_location).eval()
    if not ours:
        raise CheckpointError(f"{name}: not a gcnet checkpoint (no model config inside); for the authors' "
                              "files use build_model(...) then load_weights(model, path)")
    state = obj["state_dict"]
    try:
        model = _model_from_config(obj["config"], bool(obj.get("deployed")))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{name}: invalid model config inside the checkpoint: {exc}") from exc
    _load_state(model, extract_state_dict(state, name) if isinstance(state, dict) else state, name)
    return model.to(map_location).eval()
