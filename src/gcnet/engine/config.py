"""Training configs: TOML presets shipped with the package, user TOML files, dotted overrides.

A config is a nested dict with fixed sections (one dataclass each, see :data:`SECTIONS`; :class:`TrainConfig`
is the typed view the trainer uses)::

    [model]     name, num_classes, overrides (table passed to build_model), sync_bn
    [data]      kind, root, train_split, val_split, crop_size, base_scale, scale_range, batch_size, ...
    [loss]      ohem_thresh, min_kept, class_weights, aux_weight
    [optim]     lr, momentum, weight_decay, power, min_lr
    [schedule]  iters, val_interval, ckpt_interval, log_interval, keep_ckpts
    [eval]      mode, crop_size, stride, scales, flip, batch_size
    [init]      load_from
    [runtime]   seed, device, amp, amp_dtype, channels_last, threads, deterministic

Every key has a default (so a user file only needs what differs); unknown keys and wrong types
raise :class:`gcnet.errors.ConfigError` naming the key. A file may start with
``base = "PRESET_OR_PATH"`` to inherit from a preset or another file.

Presets live in ``gcnet/configs/NAME.toml``; :func:`list_presets` lists them and
:func:`load_config` accepts either a preset name or a path.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from gcnet.data.datasets import CONFIG_KINDS as DATA_KINDS
from gcnet.data.synthetic import MIN_SIDE as SYNTHETIC_MIN_SIDE
from gcnet.errors import ConfigError
from gcnet.fileio import read_text, write_text
from gcnet.models.gcnet import DEFAULTS as MODEL_DEFAULTS
from gcnet.models.gcnet import VARIANTS, list_models

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "SCHEMA",
    "SECTIONS",
    "TrainConfig",
    "apply_overrides",
    "config_diff",
    "default_config",
    "dumps_toml",
    "list_presets",
    "model_override_keys",
    "load_config",
    "parse_override_args",
    "preset_path",
    "save_config",
    "toml_value",
    "validate_config",
]

_ANY = object()


# ---------------------------------------------------------------------------------------- sections
# Each key: a dataclass field whose metadata holds its type spec and help text. Type specs: int, float,
# str, bool, dict, ("list", elem, length or None), ("optional_list", elem, length) (empty list == not set),
# ("choice", (values...)).


def model_override_keys() -> list[str]:
    """The keyword arguments ``build_model`` accepts besides name and num_classes (from gcnet.models)."""
    return sorted({k for variant in VARIANTS.values() for k in variant} | set(MODEL_DEFAULTS))


def _key(spec: Any, default: Any, help_text: str) -> Any:
    return field(default_factory=functools.partial(copy.deepcopy, default), metadata={"spec": spec, "help": help_text})


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class ModelSection:
    name: str = _key(str, "gcnet-s", f"model variant: {', '.join(list_models())}")
    num_classes: int = _key(int, 19, "number of classes (must match the dataset)")
    overrides: dict = _key(dict, {}, "extra build_model keyword arguments, e.g. {channels = 16}")
    sync_bn: bool = _key(bool, False, "convert BatchNorm to SyncBatchNorm under DDP (CUDA only)")

    def check(self) -> None:
        _need(self.name.lower() in list_models(),
              f"model.name must be one of {', '.join(list_models())}, got {self.name!r}")
        _need(self.num_classes >= 1, "model.num_classes must be >= 1")
        valid = model_override_keys()
        for k in self.overrides:
            _need(k in valid, f"model.overrides.{k} is not a build_model option; valid: {', '.join(valid)}")


@dataclass
class DataSection:
    kind: str = _key(("choice", DATA_KINDS), "cityscapes",
                     f"dataset kind: {', '.join(DATA_KINDS)} (synthetic: generated into root when missing)")
    root: str = _key(str, "data/cityscapes", "dataset root folder")
    info: str = _key(str, "", "class metadata name for kind=folder (e.g. camvid); default: the kind")
    train_split: str = _key(str, "train", "split used for training")
    val_split: str = _key(str, "val", "split used for periodic validation ('' disables validation)")
    crop_size: list = _key(("list", int, 2), [1024, 1024], "training crop [height, width]")
    scale_range: list = _key(("list", float, 2), [0.5, 2.0], "random rescale range [min, max]")
    base_scale: list = _key(("optional_list", int, 2), [], ("MMSeg RandomResize scale (e.g. [2048, 1024]) the "
                                                             "scale range is relative to; [] = each image's own size"))
    cat_max_ratio: float = _key(float, 0.75, "max fraction of a crop one class may cover (1.0 disables)")
    flip_prob: float = _key(float, 0.5, "horizontal flip probability")
    photometric: bool = _key(bool, True, "photometric distortion (brightness/contrast/saturation/hue)")
    photometric_strength: float = _key(float, 1.0, ("scale of the photometric ranges, 0..2 (1 = MMSeg's: brightness "
                                                     "+-32, contrast/saturation x0.5-1.5, hue +-18)"))
    batch_size: int = _key(int, 12, "total batch size over all processes")
    workers: int = _key(int, 4, "data loader worker processes per training process")
    synthetic_size: list = _key(("list", int, 2), [128, 160], "image size [H, W] for kind=synthetic")
    synthetic_train: int = _key(int, 48, "number of train images generated for kind=synthetic")
    synthetic_val: int = _key(int, 12, "number of val images generated for kind=synthetic")

    def check(self) -> None:
        _need(all(c >= 8 for c in self.crop_size), "data.crop_size values must be >= 8")
        _need(0 < self.scale_range[0] <= self.scale_range[1],
              "data.scale_range must be [min, max] with 0 < min <= max")
        _need(0 < self.cat_max_ratio <= 1, "data.cat_max_ratio must be in (0, 1]")
        _need(0 <= self.flip_prob <= 1, "data.flip_prob must be in [0, 1]")
        _need(0 <= self.photometric_strength <= 2, "data.photometric_strength must be in [0, 2]")
        _need(self.batch_size >= 1, "data.batch_size must be >= 1")
        _need(self.workers >= 0, "data.workers must be >= 0")
        if self.kind == "synthetic":  # checked before anything is generated
            _need(all(s >= SYNTHETIC_MIN_SIDE for s in self.synthetic_size),
                  f"data.synthetic_size values must be >= {SYNTHETIC_MIN_SIDE}")
            _need(self.synthetic_train >= 1, "data.synthetic_train must be >= 1")
            _need(self.synthetic_val >= 1, "data.synthetic_val must be >= 1")


@dataclass
class LossSection:
    ohem_thresh: float = _key(float, 0.9, "OHEM probability threshold")
    min_kept: int = _key(int, 131072, "OHEM minimum number of kept pixels per batch")
    class_weights: list = _key(("optional_list", float, None), [], "per-class loss weights ([] = none)")
    aux_weight: float = _key(float, 0.4, "weight of the auxiliary head loss")

    def check(self) -> None:
        _need(0 <= self.ohem_thresh <= 1, "loss.ohem_thresh must be in [0, 1]")
        _need(self.min_kept >= 0, "loss.min_kept must be >= 0")
        _need(self.aux_weight >= 0, "loss.aux_weight must be >= 0")


@dataclass
class OptimSection:
    lr: float = _key(float, 0.01, "initial learning rate (SGD)")
    momentum: float = _key(float, 0.9, "SGD momentum")
    weight_decay: float = _key(float, 5e-4, "SGD weight decay")
    power: float = _key(float, 0.9, "poly decay power")
    min_lr: float = _key(float, 0.0, "learning rate at the end of the poly schedule (eta_min)")

    def check(self) -> None:
        _need(self.lr > 0, "optim.lr must be > 0")
        _need(0 <= self.min_lr <= self.lr, "optim.min_lr must be in [0, optim.lr]")
        _need(0 <= self.momentum < 1, "optim.momentum must be in [0, 1)")
        _need(self.weight_decay >= 0, "optim.weight_decay must be >= 0")
        _need(self.power >= 0, "optim.power must be >= 0")


@dataclass
class ScheduleSection:
    iters: int = _key(int, 120000, "total training iterations")
    val_interval: int = _key(int, 4000, "validate every N iterations (0 = only at the end)")
    ckpt_interval: int = _key(int, 4000, "write iter_N.pth every N iterations (latest.pth too)")
    log_interval: int = _key(int, 50, "log metrics every N iterations")
    keep_ckpts: int = _key(int, 3, "keep only the newest N iter_*.pth files (0 = keep all)")
    time_budget_min: float = _key(float, 0.0, (
        "train for this many minutes instead of a fixed iteration count (0 = off): the poly decay follows "
        "elapsed training time and iters is only a cap. For fixed-time CPU runs; the number of iterations then "
        "depends on the machine"))

    def check(self) -> None:
        _need(self.iters >= 1, "schedule.iters must be >= 1")
        _need(self.time_budget_min >= 0, "schedule.time_budget_min must be >= 0")
        for k in ("val_interval", "ckpt_interval", "keep_ckpts"):
            _need(getattr(self, k) >= 0, f"schedule.{k} must be >= 0")
        _need(self.log_interval >= 1, "schedule.log_interval must be >= 1")


MAX_SCALE = 4.0  # larger test scales blow a 1024x2048 frame past 4096x8192: out of memory, nothing gained


@dataclass
class EvalSection:
    mode: str = _key(("choice", ("whole", "slide")), "whole", "inference mode for validation")
    crop_size: list = _key(("optional_list", int, 2), [], "sliding-window size [H, W] (mode=slide)")
    stride: list = _key(("optional_list", int, 2), [], "sliding-window stride [H, W] (mode=slide)")
    scales: list = _key(("list", float, None), [1.0], "test scales (multi-scale when several)")
    flip: bool = _key(bool, False, "add horizontally flipped inputs")
    batch_size: int = _key(int, 1, "validation batch size per process")

    def check(self) -> None:
        _need(len(self.scales) >= 1 and all(0 < x <= MAX_SCALE for x in self.scales),
              f"eval.scales must be numbers above 0 and at most {MAX_SCALE:g}")
        if self.mode == "slide":
            _need(bool(self.crop_size), "eval.crop_size is required when eval.mode = 'slide'")
        _need(self.batch_size >= 1, "eval.batch_size must be >= 1")

    def evaluate_kwargs(self) -> dict[str, Any]:
        """These settings as keyword arguments of :func:`gcnet.evaluation.inference.evaluate`."""
        return {"mode": self.mode, "crop_size": tuple(self.crop_size) or None, "stride": tuple(self.stride) or None,
                "scales": tuple(self.scales), "flip": self.flip, "batch_size": self.batch_size}


@dataclass
class InitSection:
    load_from: str = _key(str, "", "weights to start from (our checkpoint or the authors'); '' = scratch")

    def check(self) -> None:
        pass


@dataclass
class RuntimeSection:
    seed: int = _key(int, 0, "random seed (data order, augmentation, initialisation)")
    device: str = _key(str, "auto", "auto, cpu, cuda or cuda:N")
    amp: bool = _key(bool, False, ("mixed precision: autocast to amp_dtype (CUDA: bf16 or fp16; CPU: bf16, fast "
                                   "on CPUs with AVX512_BF16/AMX)"))
    amp_dtype: str = _key(("choice", ("bf16", "fp16")), "bf16",
                          "autocast dtype for amp (fp16 adds a GradScaler; CUDA only)")
    channels_last: bool = _key(bool, False, ("channels_last memory format for the model and its inputs (faster "
                                             "convolutions on CPUs and on tensor cores)"))
    threads: int = _key(int, 0, "torch CPU threads (0 = torch default)")
    deterministic: bool = _key(bool, False, "use deterministic algorithms (slower on CUDA)")

    def check(self) -> None:
        _need(self.threads >= 0, "runtime.threads must be >= 0")
        _need(re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device) is not None,
              f"runtime.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")


SECTIONS: dict[str, type] = {
    "model": ModelSection, "data": DataSection, "loss": LossSection, "optim": OptimSection,
    "schedule": ScheduleSection, "eval": EvalSection, "init": InitSection, "runtime": RuntimeSection,
}

# section -> key -> (type spec, default, help): the table the CLI, the docs test and validation read.
SCHEMA: dict[str, dict[str, tuple[Any, Any, str]]] = {
    sec: {f.name: (f.metadata["spec"], f.default_factory(), f.metadata["help"]) for f in fields(cls)}
    for sec, cls in SECTIONS.items()
}


@dataclass
class TrainConfig:
    """A validated config with one typed object per section (``cfg.data.batch_size``).

    :func:`load_config` gives the plain nested dict (the form of TOML files, overrides and checkpoints);
    :meth:`from_dict` / :meth:`to_dict` convert between the two."""

    model: ModelSection
    data: DataSection
    loss: LossSection
    optim: OptimSection
    schedule: ScheduleSection
    eval: EvalSection
    init: InitSection
    runtime: RuntimeSection

    @classmethod
    def from_dict(cls, cfg: Mapping) -> TrainConfig:
        """Typed view of a config dict (validated and completed by :func:`validate_config` first)."""
        cfg = validate_config(copy.deepcopy(dict(cfg)))
        return cls(**{sec: SECTIONS[sec](**cfg[sec]) for sec in SECTIONS})

    @classmethod
    def load(cls, source: str | Path | Mapping | None = None,
             overrides: Iterable[str] | Mapping | None = None) -> TrainConfig:
        """:func:`load_config`, typed."""
        return cls.from_dict(load_config(source, overrides))

    def to_dict(self) -> dict[str, Any]:
        return {sec: asdict(getattr(self, sec)) for sec in SECTIONS}


def default_config() -> dict[str, Any]:
    """A config with every key at its default."""
    return {sec: {k: copy.deepcopy(spec[1]) for k, spec in keys.items()} for sec, keys in SCHEMA.items()}


# --------------------------------------------------------------------------------------- presets


def _configs_dir():
    return resources.files("gcnet") / "configs"


def list_presets() -> list[str]:
    """Names of the preset configs shipped with the package."""
    try:
        entries = list(_configs_dir().iterdir())
    except (FileNotFoundError, NotADirectoryError):  # pragma: no cover
        return []
    return sorted(p.name[: -len(".toml")] for p in entries if p.name.endswith(".toml"))


def preset_path(name: str):
    """The resource path of preset ``name`` (``.toml`` optional)."""
    stem = name.removesuffix(".toml")
    path = _configs_dir() / f"{stem}.toml"
    if not path.is_file():
        raise ConfigError(
            f"unknown preset {name!r}; presets: {', '.join(list_presets())} (or give a path to a .toml file)"
        )
    return path


def _read_toml_text(text: str, where: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None


def _load_raw(source: str | Path, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a preset or file, resolve ``base`` inheritance, return the merged raw dict."""
    src = str(source)
    p = Path(src).expanduser()
    if p.suffix == ".toml" or p.exists() or "/" in src or "\\" in src:
        if p.is_dir():
            raise ConfigError(f"config file {src} is a folder; give a .toml file")
        if not p.is_file():
            raise ConfigError(f"config file not found: {src}")
        text, where, base_dir = read_text(p, ConfigError), str(p), p.parent
    else:
        rp = preset_path(src)
        text, where, base_dir = rp.read_text(encoding="utf-8"), f"preset {src}", None
    if where in _seen:
        raise ConfigError(f"config inheritance loop: {' -> '.join(_seen + (where,))}")
    raw = _read_toml_text(text, where)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{where}: 'base' must be a string (a preset name or a path)")
    base_src: str | Path = base
    if base_dir is not None and (base.endswith(".toml") or "/" in base) and not Path(base).is_absolute():
        base_src = base_dir / base
    merged = _load_raw(base_src, _seen + (where,))
    _deep_merge(merged, raw)
    return merged


def _deep_merge(dst: dict, src: Mapping) -> None:
    for k, v in src.items():
        if isinstance(v, Mapping) and isinstance(dst.get(k), dict) and k != "overrides":
            _deep_merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


def load_config(source: str | Path | Mapping | None = None, overrides: Iterable[str] | Mapping | None = None):
    """Load a config from a preset name, a TOML path or a (partial) dict; apply overrides; validate.

    ``overrides`` is a list of ``"section.key=value"`` strings (values parsed as TOML, falling back
    to a plain string) or a ``{"section.key": value}`` mapping. Returns a complete, validated dict.
    """
    cfg = default_config()
    if source is not None:
        raw = copy.deepcopy(dict(source)) if isinstance(source, Mapping) else _load_raw(source)
        raw.pop("base", None)
        _check_structure(raw)
        _deep_merge(cfg, raw)
    if overrides:
        apply_overrides(cfg, overrides)
    return validate_config(cfg)


# ------------------------------------------------------------------------------------- overrides


def parse_value(text: str) -> Any:
    """Parse an override value as a TOML value (``3``, ``1e-3``, ``true``, ``[512, 512]``,
    ``"x"``, ``{channels = 8}``); anything that is not valid TOML is taken as a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _split_key(key: str) -> tuple[str, str, str | None]:
    parts = key.split(".")
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(f"config key {key!r} must look like 'section.key' (e.g. data.root)")
    sec, name = parts[0], parts[1]
    if sec not in SCHEMA:
        raise ConfigError(f"unknown config section {sec!r} in {key!r}; sections: {', '.join(SCHEMA)}")
    if name not in SCHEMA[sec]:
        raise ConfigError(_unknown_key_msg(sec, name))
    sub = parts[2] if len(parts) == 3 else None
    if sub is not None and SCHEMA[sec][name][0] is not dict:
        raise ConfigError(f"config key {sec}.{name} is not a table, so {key!r} is invalid")
    return sec, name, sub


def apply_overrides(cfg: dict, overrides: Iterable[str] | Mapping) -> dict:
    """Apply dotted overrides in place (``data.root=/x``, ``model.overrides.channels=8``)."""
    items = overrides.items() if isinstance(overrides, Mapping) else (_split_assignment(s) for s in overrides)
    for key, value in items:
        sec, name, sub = _split_key(key)
        if isinstance(value, str) and not isinstance(overrides, Mapping):
            value = parse_value(value)
        if sub is None:
            cfg[sec][name] = value
        else:
            cfg[sec][name] = dict(cfg[sec].get(name) or {})
            cfg[sec][name][sub] = value
    return cfg


def _split_assignment(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must be KEY=VALUE, e.g. schedule.iters=1000")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


_DOTTED = re.compile(r"^--([a-z_]+\.[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)?)(?:=(.*))?$", re.DOTALL)


def parse_override_args(tokens: list[str]) -> list[str]:
    """Turn leftover command-line tokens ``--data.root PATH`` / ``--data.root=PATH`` into
    ``["data.root=PATH"]``. Anything else raises ConfigError naming the token."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        m = _DOTTED.match(tok)
        if not m:
            raise ConfigError(
                f"unrecognized argument {tok!r} (config overrides look like --section.key VALUE, "
                "e.g. --schedule.iters 1000)"
            )
        key, value = m.group(1), m.group(2)
        _split_key(key)  # early, clear error for unknown keys
        if value is None:
            if i + 1 >= len(tokens):
                raise ConfigError(f"override {tok} needs a value")
            value = tokens[i + 1]
            i += 1
        out.append(f"{key}={value}")
        i += 1
    return out


# ------------------------------------------------------------------------------------ validation


def _unknown_key_msg(sec: str, name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(SCHEMA[sec]), n=1)
    hint = f" (did you mean {sec}.{close[0]}?)" if close else ""
    return f"unknown config key {sec}.{name}{hint}; valid keys in [{sec}]: {', '.join(SCHEMA[sec])}"


def _check_structure(raw: Mapping) -> None:
    for sec, body in raw.items():
        if sec not in SCHEMA:
            raise ConfigError(f"unknown config section [{sec}]; sections: {', '.join(SCHEMA)}")
        if not isinstance(body, Mapping):
            raise ConfigError(f"config section [{sec}] must be a table")
        for name in body:
            if name not in SCHEMA[sec]:
                raise ConfigError(_unknown_key_msg(sec, name))


def _type_name(spec) -> str:
    if isinstance(spec, tuple):
        kind = spec[0]
        if kind == "choice":
            return "one of " + ", ".join(repr(c) for c in spec[1])
        n = f"{spec[2]} " if spec[2] else ""
        return f"a list of {n}{spec[1].__name__}s" + (" (or [])" if kind == "optional_list" else "")
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a table"}[spec]


def _coerce(spec, value, key: str):
    bad = ConfigError(f"config key {key} must be {_type_name(spec)}, got {value!r}")
    if isinstance(spec, tuple):
        kind = spec[0]
        if kind == "choice":
            if value not in spec[1]:
                raise bad
            return value
        elem, length = spec[1], spec[2]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and length == 2:
            value = [value, value]  # crop_size = 512 -> [512, 512]
        if not isinstance(value, (list, tuple)):
            raise bad
        if kind == "optional_list" and len(value) == 0:
            return []
        if length is not None and len(value) != length:
            raise bad
        return [_coerce(elem, v, key) for v in value]
    if spec is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if spec is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad
        return value
    if spec is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        return float(value)
    if spec is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise bad
        return value
    if spec is dict:
        if not isinstance(value, Mapping):
            raise bad
        return dict(value)
    raise AssertionError(spec)  # pragma: no cover


def validate_config(cfg: dict) -> dict:
    """Check every key and type, coerce ints to floats where needed, check value ranges.
    Returns ``cfg`` (modified in place). Raises ConfigError with the offending key."""
    _check_structure(cfg)
    for sec, keys in SCHEMA.items():
        body = cfg.setdefault(sec, {})
        for name, (spec, default, _help) in keys.items():
            if name not in body:
                body[name] = copy.deepcopy(default)
            body[name] = _coerce(spec, body[name], f"{sec}.{name}")
    for sec, cls in SECTIONS.items():
        cls(**cfg[sec]).check()
    weights, classes = cfg["loss"]["class_weights"], cfg["model"]["num_classes"]
    _need(not weights or len(weights) == classes,
          f"loss.class_weights has {len(weights)} values but model.num_classes is {classes}")
    return cfg


# ------------------------------------------------------------------------------------ TOML output
# Hand-written rather than tomli-w: tomli-w writes every array one element per line and nested tables
# (model.overrides) as [sub.tables], and has no one-value form for `gcnet train --help`; this keeps the
# presets' compact one-line style in config.toml and --print-config.


def toml_value(v: Any) -> str:
    """One config value as inline TOML (``[512, 1024]``, ``{channels = 16}``, ``"text"``)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            raise ConfigError(f"cannot write non-finite number {v} to TOML")
        r = repr(v)
        return r if any(c in r for c in ".eE") else r + ".0"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise ConfigError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(cfg: Mapping, header: str | None = None) -> str:
    """Serialise a config to TOML text (round-trips through :func:`load_config`)."""
    lines: list[str] = []
    if header:
        lines += [f"# {h}" if h else "#" for h in header.splitlines()] + [""]
    for sec, body in cfg.items():
        lines.append(f"[{sec}]")
        for k, v in body.items():
            lines.append(f"{k} = {toml_value(v)}")
        lines.append("")
    return "\n".join(lines)


def save_config(cfg: Mapping, path: str | Path, header: str | None = None) -> Path:
    """Write a config as TOML (atomically)."""
    return write_text(path, dumps_toml(cfg, header))


def config_diff(a: Mapping, b: Mapping) -> list[str]:
    """Dotted keys whose values differ between two configs (for resume warnings)."""
    out = []
    for sec in sorted(set(a) | set(b)):
        ka, kb = a.get(sec, {}), b.get(sec, {})
        for k in sorted(set(ka) | set(kb)):
            if ka.get(k, _ANY) != kb.get(k, _ANY):
                out.append(f"{sec}.{k}")
    return out
