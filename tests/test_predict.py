"""gcnet.deploy.predict: folders with corrupt files, atomic outputs, label PNGs, video."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_model_kwargs, write_video
from PIL import Image

from gcnet import build_model
from gcnet.data.metadata import get_dataset_info
from gcnet.deploy.predict import Predictor, collect_inputs, predict_paths
from gcnet.errors import ConfigError
from gcnet.fileio import TMP_MARKER


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(build_model("gcnet-s", **tiny_model_kwargs(num_classes=5)).eval())


@pytest.fixture(scope="module")
def info():
    return get_dataset_info("synthetic")


def _image(path, h=40, w=56, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_predictor_label_at_input_size(predictor):
    image = np.random.default_rng(0).integers(0, 255, (45, 67, 3), dtype=np.uint8)
    label = predictor(image)
    assert label.shape == (45, 67) and label.dtype == np.uint8 and label.max() < 5
    resized = Predictor(predictor.runtime, input_size=(64, 96))(image)
    assert resized.shape == (45, 67)


def test_pipelined_labels_equal_one_at_a_time(predictor):
    """The model runs one image ahead on a thread: same labels, same order; closing early stops the thread,
    even over an endless source; an error on the thread reaches the caller."""
    import itertools
    import threading

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8) for i in range(4)]
    pairs = list(predictor.pipelined(iter(images)))
    assert [image is orig for (image, _), orig in zip(pairs, images)] == [True] * 4
    assert all(np.array_equal(labels, predictor(image)) for image, labels in pairs)

    endless = predictor.pipelined(itertools.repeat(images[0]))
    next(endless)
    endless.close()
    assert not [t for t in threading.enumerate() if t.name == "gcnet-prefetch"]

    def broken():
        yield images[0]
        yield np.zeros((40, 56), dtype=np.uint8)  # no colour axis: the pre-processing fails

    with pytest.raises(ValueError, match="HxWx3"):
        list(predictor.pipelined(broken()))


def test_folder_with_corrupt_files(predictor, info, tmp_path):
    src = tmp_path / "in"
    _image(src / "a.png")
    _image(src / "sub" / "b.jpg", 33, 47, seed=1)
    (src / "sub" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    good = src / "good.png"
    _image(good, 64, 80)
    truncated = src / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    (src / "notes.txt").write_text("ignored: not an image")
    out = tmp_path / "out"
    # an output from an earlier run must survive a failing input of the same name
    (out).mkdir()
    old = out / "truncated_label.png"
    old.write_bytes(b"earlier result")
    (out / "sub").mkdir()  # a temporary file of a killed earlier run goes
    (out / "sub" / f".b_label.{2**22 + 1}-0123abcd{TMP_MARKER}.png").write_bytes(b"partial")
    messages: list[str] = []
    summary = predict_paths(predictor, [src], out, info, progress=False, log=messages.append)
    failed = sorted(p for p, _ in summary.failed)
    assert failed == sorted([str(src / "sub" / "corrupt.png"), str(truncated)])
    assert any("corrupt.png" in m for m in messages) and any("truncated.png" in m for m in messages)
    assert summary.processed == 3 and not summary.ok
    assert summary.images == 3 and summary.images_per_s > 0
    for stem in ["a", "sub/b", "good"]:
        label = Image.open(out / f"{stem}_label.png")
        assert label.mode == "P"
        assert np.asarray(label).max() < 5
        assert Image.open(out / f"{stem}_overlay.png").size == label.size
    assert Image.open(out / "sub" / "b_label.png").size == (47, 33)
    assert old.read_bytes() == b"earlier result"
    assert not [p for p in out.rglob("*") if p.name.startswith(".")], "temporary files left behind"


def test_collect_inputs(tmp_path):
    _image(tmp_path / "x.png")
    _image(tmp_path / "x.jpg")
    _image(tmp_path / "deep" / "y.png")
    _image(tmp_path / "out" / "z_label.png")
    (tmp_path / "clip.mp4").write_bytes(b"")
    items, missing = collect_inputs([tmp_path, tmp_path / "nope.png"], exclude=[tmp_path / "out"])
    names = {str(i.stem): i.kind for i in items}
    assert names == {"x.png": "image", "x.jpg": "image", "deep/y": "image", "clip": "video"}
    assert missing and "nope.png" in missing[0][0]
    flat, _ = collect_inputs([tmp_path], recursive=False, exclude=[tmp_path / "out"])
    assert "deep/y" not in {str(i.stem) for i in flat}


def test_video_prediction(predictor, info, tmp_path):
    cv2 = pytest.importorskip("cv2", reason="video needs opencv-python-headless")
    video = write_video(tmp_path / "clip.mp4", frames=5, size=(48, 64), fourcc="mp4v")
    (tmp_path / "broken.avi").write_bytes(b"RIFF....not a video")
    out = tmp_path / "out"
    summary = predict_paths(predictor, [video, tmp_path / "broken.avi"], out, info, progress=False,
                            log=lambda m: None)
    result = out / "clip_overlay.mp4"
    assert result.is_file()
    cap = cv2.VideoCapture(str(result))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 5
    stats = summary.videos[str(video)]
    assert stats["frames"] == 5 and stats["fps"] > 0
    assert [p for p, _ in summary.failed] == [str(tmp_path / "broken.avi")]
    assert not (out / "broken_overlay.mp4").exists()


def test_collect_inputs_gives_same_names_distinct_outputs(tmp_path):
    _image(tmp_path / "x" / "a.png")
    _image(tmp_path / "y" / "a.png")
    _image(tmp_path / "y" / "b.png")
    _image(tmp_path / "z" / "x" / "a.png")
    items, missing = collect_inputs([tmp_path / "x", tmp_path / "y", tmp_path / "y" / "b.png",
                                     tmp_path / "z" / "x" / "a.png"])
    stems = {str(i.path.relative_to(tmp_path)): str(i.stem) for i in items}
    # b.png given twice is done once; the two inputs named "x" are told apart by a number
    assert stems == {"x/a.png": "x/a", "y/a.png": "y/a", "y/b.png": "b", "z/x/a.png": "x/a-2"}
    assert not missing
    assert all(("same name" in i.note) == (i.path.name == "a.png") for i in items)


def test_predictor_and_stream_refuse_sizes_and_counts_that_cannot_work(predictor, tmp_path):
    import gcnet

    for bad in [(0, 0), (64,), (64, 96, 3), "64x64"]:
        with pytest.raises(ValueError, match="input_size must be"):
            Predictor(predictor.runtime, input_size=bad)
    _image(tmp_path / "a.png")
    with pytest.raises(ValueError, match="max_frames must be at least 1"):
        next(gcnet.stream(tmp_path, predictor, max_frames=0))


def test_output_names_too_long_are_refused_before_any_work(predictor, info, tmp_path):
    """An input whose name fits but whose outputs' do not (the label PNG, checked first): refused before any
    work, not half-way through."""
    short = _image(tmp_path / "in" / "a.png")
    long = _image(tmp_path / "in" / ("b" * 246 + ".png"))
    with pytest.raises(ConfigError, match=r"output name b+\.\.\. for .* is too long .*\(256 bytes, at most 255\)"):
        predict_paths(predictor, [short, long], tmp_path / "out", info, progress=False)
    assert not (tmp_path / "out").exists()


def test_outputs_that_would_replace_an_input_are_refused(predictor, info, tmp_path):
    """``a.jpg`` and ``a_label.png`` predicted into their own folder: refused, naming both, before anything
    is written; without label PNGs nothing collides."""
    a, a_label = _image(tmp_path / "a.jpg"), _image(tmp_path / "a_label.png", seed=1)
    before = a_label.read_bytes()
    with pytest.raises(ConfigError, match=r"output .*a_label.png for .*a.jpg would replace the input .*a_label.png"):
        predict_paths(predictor, [a, a_label], tmp_path, info, progress=False)
    assert a_label.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "a_label.png"]
    summary = predict_paths(predictor, [a, a_label], tmp_path, info, save_label=False, progress=False)
    assert sorted(p.name for p in summary.written) == ["a_label_overlay.png", "a_overlay.png"]
    assert a_label.read_bytes() == before


def test_overlay_png_is_lossless_rgb(tmp_path):
    """Overlays are encoded by OpenCV (RGB in, RGB back out of any PNG reader), label PNGs by PIL (palette)."""
    from gcnet.deploy.predict import save_png

    rgb = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    path = save_png(rgb, tmp_path / "a_overlay.png")
    with Image.open(path) as im:
        assert im.mode == "RGB" and np.array_equal(np.array(im), rgb)
    assert [p.name for p in tmp_path.iterdir()] == ["a_overlay.png"]
