"""What a training config builds: datasets, augmentation, model, initial weights, loss and optimiser."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from gcnet import distributed as gdist
from gcnet.engine.config import DataSection, LossSection, ModelSection, OptimSection, TrainConfig
from gcnet.errors import CheckpointError, ConfigError, DatasetError

__all__ = [
    "build_criterion",
    "build_datasets",
    "build_model_from_config",
    "build_optimizer",
    "build_train_transform",
    "check_crop_size",
    "check_datasets",
    "load_init_weights",
]


def _ensure_synthetic(data: DataSection, seed: int, log: Callable[[str], None]) -> None:
    """Generate the synthetic dataset into ``data.root`` unless its training split is there. Only into a
    new or empty folder, and whole or not at all: a killed run leaves nothing that passes for a dataset."""
    from gcnet.data.synthetic import make_synthetic_dataset
    from gcnet.fileio import remove_stale_temps, staging_folder

    root = Path(data.root)
    if (root / "images" / data.train_split).is_dir() and (root / "labels" / data.train_split).is_dir():
        _say_if_settings_differ(root / "images" / data.train_split, data, log)
        return
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--data.root {root} is a file; the synthetic dataset is generated into a folder: "
                          "give a new or empty one")
    if root.is_dir():
        remove_stale_temps(root)
        if any(root.iterdir()):
            raise ConfigError(f"--data.root {root} holds files but no synthetic dataset (images/"
                              f"{data.train_split}, labels/{data.train_split}); give a new or empty folder to "
                              "generate one in")
    h, w = data.synthetic_size
    check_crop_size(data, (h, w))
    log(f"generating a synthetic dataset in {root} ({data.synthetic_train} train / {data.synthetic_val} val "
        f"images of {h}x{w})")
    try:
        with staging_folder(root) as stage:
            make_synthetic_dataset(stage, num_train=data.synthetic_train, num_val=data.synthetic_val, size=(h, w),
                                   seed=seed)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise  # a full disk: said by gcnet.cli
        raise ConfigError(f"--data.root {root}: cannot generate the synthetic dataset there ({exc.strerror}); "
                          "give a folder you can write to") from None


def check_crop_size(data: DataSection, image_hw: tuple[int, int]) -> None:
    """Refuse a ``data.crop_size`` more than twice as high or wide as the largest rescale of an ``image_hw`` image
    the augmentation makes: such crops are mostly padding, and their activations can exhaust the memory."""
    from gcnet.data.transforms import rescale_size

    ih, iw = (int(v) for v in image_hw)
    hi = data.scale_range[1]
    base = data.base_scale or (iw, ih)
    mw, mh = rescale_size((iw, ih), (int(base[0] * hi), int(base[1] * hi)))
    ch, cw = data.crop_size
    if ch > 2 * mh or cw > 2 * mw:
        raise ConfigError(f"data.crop_size {ch}x{cw} is far larger than the {ih}x{iw} training images ever get (at "
                          f"most {mh}x{mw} after the random rescale): the crops would be mostly padding and may not "
                          f"fit in memory; give a data.crop_size of at most {mh}x{mw}")


def _say_if_settings_differ(train_images: Path, data: DataSection, log: Callable[[str], None]) -> None:
    """Say so where an existing synthetic dataset was made with other ``data.synthetic_*`` settings: it is
    used as it is, never regenerated over."""
    from PIL import Image

    files = sorted(train_images.glob("*.png"))
    size = None
    if files:
        with Image.open(files[0]) as first:
            size = [first.height, first.width]
    if len(files) != data.synthetic_train or size != list(data.synthetic_size):
        log(f"note: the synthetic dataset in {train_images.parent.parent} ({len(files)} train images of "
            f"{size[0] if size else '?'}x{size[1] if size else '?'}) is used as it is; data.synthetic_* apply only "
            "where one is generated (give a new data.root for another)")


def build_datasets(cfg: TrainConfig, log: Callable[[str], None] = print, *, train: bool = True, val: bool = True):
    """``(train_set_without_transform or None, val_set_with_eval_transform or None, info)`` for a config.

    A ``synthetic`` dataset is generated first when missing (by rank 0 under torchrun)."""
    from gcnet.data.datasets import dataset_from_settings
    from gcnet.data.transforms import EvalTransform

    data = cfg.data
    if data.kind == "synthetic":
        if gdist.is_main():
            _ensure_synthetic(data, cfg.runtime.seed, log)
        gdist.barrier()
    train_set = dataset_from_settings(data.kind, data.root, data.train_split, data.info) if train else None
    val_set = None
    if val and data.val_split:
        val_set = dataset_from_settings(data.kind, data.root, data.val_split, data.info, EvalTransform())
    first = train_set if train_set is not None else val_set
    return train_set, val_set, first.info if first is not None else None


def check_datasets(datasets, progress: bool) -> None:
    """Scan every file of ``datasets`` (rank 0) before training or evaluating; any problem stops every rank."""

    def scan() -> None:
        problems = []
        for ds in datasets:  # every split is scanned, so one message names every bad file
            if ds is None:
                continue
            try:
                ds.validate(check_values=True, check_images=True, progress=progress)
            except DatasetError as exc:
                problems.append(str(exc))
        if problems:
            raise DatasetError("\n".join(problems) + "\nfix these files, or pass --skip-data-check to go ahead anyway")

    gdist.on_main(scan)


def build_train_transform(data: DataSection, ignore_index: int):
    """The paper's training augmentation with the config's settings."""
    from gcnet.data.transforms import TrainTransform

    return TrainTransform(tuple(data.crop_size), scale_range=tuple(data.scale_range),
                          cat_max_ratio=data.cat_max_ratio, flip_prob=data.flip_prob,
                          photometric=data.photometric, photometric_strength=data.photometric_strength,
                          ignore_index=ignore_index,
                          base_scale=tuple(data.base_scale) if data.base_scale else None)


def build_model_from_config(model: ModelSection) -> nn.Module:
    """The training-form GCNet of a ``[model]`` section."""
    from gcnet.models.gcnet import build_model

    try:
        return build_model(model.name, num_classes=model.num_classes, **model.overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[model]: {exc}") from None


def load_init_weights(model: nn.Module, source: str, log: Callable[[str], None] = print) -> list[str]:
    """Initialise ``model`` (training form) from a checkpoint: ours or the authors' (train form).

    When the checkpoint was trained for a different number of classes (e.g. Cityscapes weights
    for CamVid), the classifier layers are left at their fresh initialisation and everything else
    is loaded. Returns the names of the tensors that were not loaded."""
    from gcnet.checkpoint import extract_state_dict, load_weights, read_checkpoint, state_dict_form

    sd = extract_state_dict(read_checkpoint(source), str(source))
    if state_dict_form(sd) != "train":
        raise CheckpointError(f"{source}: holds reparameterized (deploy-form) weights; training needs the "
                              "training form (the authors' released training checkpoints or ours)")
    own = model.state_dict()
    mismatched = [k for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if not mismatched:
        load_weights(model, sd)  # strict: clear error if anything else differs
        log(f"initialised from {source}")
        return []
    classifier = ("decode_head.conv_seg.", "decode_head.aux_cls_seg_c4.")
    other = [k for k in mismatched if not k.startswith(classifier)]
    if other:
        raise CheckpointError(f"{source}: does not match the model (shape mismatch in {', '.join(other[:5])}"
                              f"{' ...' if len(other) > 5 else ''}); check [model] name/overrides")
    keep = {k: v for k, v in sd.items() if k not in mismatched}
    bad = [k for k in keep if k not in own] + [k for k in own if k not in keep and not k.startswith(classifier)]
    if bad:
        raise CheckpointError(f"{source}: does not match the model ({len(bad)} tensors differ, e.g. {bad[0]})")
    model.load_state_dict(keep, strict=False)
    log(f"initialised from {source} (classifier re-initialised for {model.num_classes} classes: "
        f"{len(mismatched)} tensors skipped)")
    return mismatched


def build_criterion(loss: LossSection, ignore_index: int) -> nn.Module:
    """OHEM cross-entropy on the main head + ``aux_weight`` x the same on the auxiliary head."""
    from gcnet.engine.losses import GCNetLoss, OhemCrossEntropy

    weights = torch.tensor(loss.class_weights, dtype=torch.float32) if loss.class_weights else None
    main = OhemCrossEntropy(thresh=loss.ohem_thresh, min_kept=loss.min_kept, class_weight=weights,
                            ignore_index=ignore_index)
    return GCNetLoss(main, aux_weight=loss.aux_weight)


def build_optimizer(model: nn.Module, optim: OptimSection) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay on every parameter (the authors' mmseg config)."""
    return torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum,
                           weight_decay=optim.weight_decay)
