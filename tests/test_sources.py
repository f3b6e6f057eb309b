"""Frame sources (folders, videos complete and truncated), background decoding, and gcnet.stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_model_kwargs, write_video
from PIL import Image

from gcnet.deploy.predict import stream
from gcnet.deploy.sources import SourceError, TruncatedVideoError, list_files, open_source, prefetch


def _labels(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] > 127).astype(np.uint8)


def test_folder_stream_in_name_order(tmp_path: Path) -> None:
    for i, name in enumerate(["b.png", "a.jpg", "c.png"]):
        Image.fromarray(np.full((8, 10, 3), 100 * i, np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    out = list(stream(tmp_path, _labels))
    assert [f[0, 0, 0] for f, _ in out] == [100, 0, 200]
    assert all(lbl.shape == (8, 10) for _, lbl in out)


def test_list_files_sorted_without_hidden_or_excluded(tmp_path: Path) -> None:
    for name in ["b.png", "a.JPG", "sub/c.png", "out/d.png", ".e.png", ".hidden/f.png", "g.txt", "sub/h.mp4"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    names = [p.relative_to(tmp_path).as_posix() for p in list_files(tmp_path, exclude=[tmp_path / "out"])]
    assert names == ["a.JPG", "b.png", "sub/c.png"]
    assert [p.name for p in list_files(tmp_path, recursive=False)] == ["a.JPG", "b.png"]
    assert [p.name for p in list_files(tmp_path, [".mp4"])] == ["h.mp4"]


def test_video_stream_and_truncation(tmp_path: Path) -> None:
    video = tmp_path / "clip.avi"
    write_video(video, 12, size=(48, 64))
    src = open_source(video)
    assert src.expected == 12
    assert len(list(stream(src, _labels))) == 12
    assert len(list(stream(video, _labels, max_frames=5))) == 5
    cut = tmp_path / "cut.avi"
    cut.write_bytes(video.read_bytes()[: video.stat().st_size * 2 // 3])
    seen = []
    with pytest.raises(TruncatedVideoError, match=r"decoded \d+ of 12 frames"):
        for frame, _ in stream(cut, _labels):
            seen.append(frame)
    assert 0 < len(seen) < 12


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        open_source(tmp_path / "missing.mp4")
    with pytest.raises(SourceError, match="no images"):
        open_source(tmp_path)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    with pytest.raises(SourceError):
        list(stream(junk, _labels))
    with pytest.raises(SourceError, match="camera index must be 0 or more"):  # OpenCV would crash Python
        next(stream(-1, _labels))
    with pytest.raises(TypeError, match="model must be .* got NoneType"):
        next(stream(junk, None))


def test_prefetch_reraises_and_stops_early() -> None:
    def items():
        yield 1
        yield 2
        raise ValueError("decoder failed")

    got = []
    with pytest.raises(ValueError, match="decoder failed"):
        for x in prefetch(items()):
            got.append(x)
    assert got == [1, 2]
    gen = prefetch(iter(range(1000)), depth=2)
    assert next(gen) == 0
    gen.close()  # the reader thread stops instead of filling the queue forever


def test_gcnet_stream_with_a_model_matches_reference_postprocessing(tmp_path: Path) -> None:
    import torch

    import gcnet
    from gcnet.data.transforms import normalize
    from gcnet.deploy.postprocess import reference_upsample_argmax

    torch.manual_seed(0)
    model = gcnet.build_model("gcnet-s", **tiny_model_kwargs(num_classes=5)).eval()
    video = tmp_path / "clip.avi"
    write_video(video, 4, size=(64, 96))
    pairs = list(gcnet.stream(video, model))
    assert len(pairs) == 4
    deploy = model.reparameterize()
    for frame, labels in pairs:
        with torch.no_grad():
            logits = deploy(normalize(frame).unsqueeze(0))[0]
        assert labels.shape == frame.shape[:2] and labels.dtype == np.uint8
        assert (labels == reference_upsample_argmax(logits, frame.shape[:2])).mean() >= 0.999


def test_background_consumer_keeps_order_and_reraises() -> None:
    from gcnet.deploy.sources import BackgroundConsumer

    seen: list[int] = []
    consumer = BackgroundConsumer(seen.append)
    for i in range(20):
        consumer.submit(i)
    consumer.close()
    assert seen == list(range(20))

    def fail(item: int) -> None:
        raise OSError(f"disk full at {item}")

    consumer = BackgroundConsumer(fail)
    consumer.submit(1)
    with pytest.raises(OSError, match="disk full at 1"):
        for i in range(2, 10):  # the error surfaces at a later submit, or at close
            consumer.submit(i)
        consumer.close()


def test_folder_named_like_a_camera_index_max_frames_and_unreadable_images(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("2024").mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 10, 3), 50 * i, np.uint8)).save(f"2024/{i}.png")
    assert len(list(stream("2024", _labels))) == 4  # an existing folder wins over camera index 2024
    assert [f[0, 0, 0] for f, _ in stream("2024", _labels, max_frames=2)] == [0, 50]
    src = open_source("2024")  # listed; then files change before they are read
    Path("2024/1.png").unlink()
    Path("2024/2.png").write_bytes(b"half-written")
    with pytest.warns(UserWarning, match=r"skipping an unreadable image of 2024") as caught:
        assert [f[0, 0, 0] for f, _ in stream(src, _labels)] == [0, 150]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "1.png" in messages[0] and "2.png" in messages[1]
    with pytest.raises(SourceError, match="cannot open camera 2025$"):
        open_source("2025")
