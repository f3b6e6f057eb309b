"""Dataset checks before long jobs: every bad file in one message, results cached per data set, and
data errors raised inside DataLoader workers printed as their one- or two-line message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import png16, tiny_model_kwargs
from PIL import Image

import gcnet
import gcnet.data.datasets as datasets
from gcnet.cli import user_message
from gcnet.data.check import cache_dir
from gcnet.data.datasets import build_dataset
from gcnet.errors import DatasetError

S = 32  # image side


@pytest.fixture(autouse=True)
def gcnet_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "gcnet_home"
    monkeypatch.setenv("GCNET_HOME", str(home))
    return home


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (S, S, 3), dtype=np.uint8)


def _label(seed: int, size=(S, S)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, size).astype(np.uint8)


def make_dataset(root: Path, n: int = 6, split: str = "val") -> Path:
    """A folder dataset of n good samples (PNG images, L index labels, 3 classes)."""
    for d in ("images", "labels"):
        (root / d / split).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(_image(i)).save(root / "images" / split / f"s{i}.png")
        Image.fromarray(_label(i), mode="L").save(root / "labels" / split / f"s{i}.png")
    (root / "classes.txt").write_text("a\nb\nc\n")
    return root


def damage(root: Path, split: str = "val") -> list[str]:
    """Make four samples bad in four ways (a fifth keeps a good 16-bit image); the names of the bad files."""
    img, lbl = root / "images" / split, root / "labels" / split
    bad = _label(1)
    bad[0, 0] = 7
    Image.fromarray(bad, mode="L").save(lbl / "s1.png")  # value out of range
    png16(lbl / "s2.png", np.where(_label(2) == 1, 300, _label(2).astype(np.int64)))  # 16-bit label, value 300
    (img / "s3.png").unlink()
    data = _jpeg_bytes(_image(3))
    (img / "s3.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    Image.fromarray(_label(4, (S + 2, S)), mode="L").save(lbl / "s4.png")  # wrong size
    png16(img / "s5.png", _image(5).astype(np.uint16) * 257)  # fine: 16-bit image
    return ["labels/val/s1.png", "labels/val/s2.png", "images/val/s3.jpg", "labels/val/s4.png"]


def _jpeg_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _listed(message: str, name: str) -> bool:
    return name.replace("/", os.sep) in message


# ------------------------------------------------------------------------------------------- in-process
def test_every_bad_file_in_one_message(tmp_path, capsys):
    root = make_dataset(tmp_path / "d")
    names = damage(root)
    ds = build_dataset("folder", root, "val")
    with pytest.raises(DatasetError) as e:
        ds.validate(check_values=True, check_images=True, progress=True)
    msg = str(e.value)
    assert msg.startswith(f"4 problem(s) in folder dataset {root} (split 'val'):")
    assert all(_listed(msg, n) for n in names), msg
    assert "s0.png" not in msg and "s5.png" not in msg
    assert "values outside [0, 3)" in msg and ": 300" in msg and "is 32x34 but image" in msg
    assert "checking folder/val" in capsys.readouterr().err  # the progress bar


def test_second_run_reads_only_changed_files(tmp_path, gcnet_home, monkeypatch):
    root = make_dataset(tmp_path / "d")
    ds = build_dataset("folder", root, "val")
    first = ds.validate(check_images=True, progress=False)
    (cache_file,) = (gcnet_home / "datacheck").glob("*.json")
    assert cache_dir() == gcnet_home / "datacheck"

    reads: list[str] = []
    real_image, real_label = datasets.read_image, datasets.read_label_file
    monkeypatch.setattr(datasets, "read_image", lambda p: reads.append(Path(p).name) or real_image(p))
    monkeypatch.setattr(datasets, "read_label_file", lambda p: reads.append(Path(p).name) or real_label(p))
    assert ds.validate(check_images=True, progress=False) == first and reads == []
    assert ds.validate(check_values=False, progress=False)["num_samples"] == 6 and reads == []  # a weaker check

    Image.fromarray(_label(9), mode="L").save(root / "labels/val/s2.png")  # a changed file is read again
    again = ds.validate(check_images=True, progress=False)
    assert sorted(reads) == ["s2.png", "s2.png"] and again["num_samples"] == 6
    assert again["class_pixels"] != first["class_pixels"]

    reads.clear()  # a dataset with other classes (or another split, root, kind) has its own cache
    other = build_dataset("folder", root, "val", info=gcnet.data.DatasetInfo("x", ("a", "b", "c", "d"),
                                                                               ((0, 0, 0),) * 4))
    other.validate(progress=False)
    assert len(reads) == 6

    data = json.loads(cache_file.read_text())  # damaged entries are checked again
    for entry in data["entries"].values():
        entry["counts"] = entry["counts"][:2]
    cache_file.write_text(json.dumps(data))
    reads.clear()
    assert ds.validate(check_images=True, progress=False) == again and len(reads) == 12

    cache_file.write_text("{ not json")  # a corrupt cache is ignored and rewritten
    reads.clear()
    assert ds.validate(check_images=True, progress=False) == again and len(reads) == 12
    assert json.loads(cache_file.read_text())["key"]["kind"] == "folder"


def test_fixed_files_pass_and_good_ones_stay_cached(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "d")
    damage(root)
    ds = build_dataset("folder", root, "val")
    with pytest.raises(DatasetError):
        ds.validate(progress=False)
    Image.fromarray(_label(1), mode="L").save(root / "labels/val/s1.png")
    Image.fromarray(_label(2), mode="L").save(root / "labels/val/s2.png")
    Image.fromarray(_label(4), mode="L").save(root / "labels/val/s4.png")
    reads: list[str] = []
    real = datasets.read_label_file
    monkeypatch.setattr(datasets, "read_label_file", lambda p: reads.append(Path(p).name) or real(p))
    assert ds.validate(progress=False)["num_samples"] == 6  # truncated JPEG unnoticed without check_images
    assert sorted(reads) == ["s1.png", "s2.png", "s4.png"]
    with pytest.raises(DatasetError, match=r"s3.jpg"):
        ds.validate(check_images=True, progress=False)


def test_many_problems_listed_in_a_report_file(tmp_path):
    root = make_dataset(tmp_path / "d", n=14)
    for i in range(13):
        Image.fromarray(np.full((S, S), 9, np.uint8), mode="L").save(root / f"labels/val/s{i}.png")
    with pytest.raises(DatasetError) as e:
        build_dataset("folder", root, "val").validate(progress=False)
    msg = str(e.value)
    assert msg.count("has values outside") == 10
    head, _, tail = msg.rpartition("... and 3 more (all 13 listed in ")
    assert head and tail.endswith(")")
    report = Path(tail[:-1]).read_text()
    assert all(f"s{i}.png" in report for i in range(13)) and "s13.png" not in report


def test_custom_decoder_without_fingerprint_still_checked(tmp_path):
    root = make_dataset(tmp_path / "d", n=2)
    ds = build_dataset("folder", root, "val")
    ds.label_decoder = lambda raw, path: raw.astype(np.int64)  # not picklable: no cache, same checks
    assert ds.validate(progress=False)["num_samples"] == 2
    assert ds.validate(progress=False)["num_samples"] == 2


@pytest.mark.slow
def test_worker_error_message_without_traceback():
    """A DatasetError raised in a DataLoader worker comes back with the worker traceback in its message;
    the CLI shows only the original message. The error is re-raised here by torch's own wrapper, as the
    DataLoader does (a real worker in the test process would stay registered with torch's SIGCHLD
    handler; the CLI test below runs one in a real `gcnet eval`)."""
    from torch._utils import ExceptionWrapper

    try:
        raise DatasetError("label s1.png has values outside [0, 3) (found 9)")
    except DatasetError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DatasetError) as e:
        wrapped.reraise()
    assert "Traceback" in str(e.value)
    msg = user_message(e.value)
    assert msg == "label s1.png has values outside [0, 3) (found 9)"


# ------------------------------------------------------------------------------------------------- CLI
def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GCNET_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "gcnet.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    return gcnet.save_checkpoint(tmp_path / "tiny.pt", gcnet.build_model("gcnet-s", **tiny_model_kwargs(3)))


def _eval_has_data_check() -> bool:
    from gcnet.cli import build_parser

    return "--skip-data-check" in build_parser()._subparsers._group_actions[0].choices["eval"].format_help()


@pytest.mark.slow
@pytest.mark.skipif(not _eval_has_data_check(), reason="gcnet eval does not check its data yet")
def test_eval_lists_every_bad_file_then_uses_the_cache(tmp_path, checkpoint, gcnet_home):
    root = make_dataset(tmp_path / "d")
    names = damage(root)
    args = ["eval", str(checkpoint), "--dataset", "folder", "--data-root", str(root), "--split", "val",
            "--device", "cpu", "--workers", "0", "--no-progress"]
    result = run_cli(*args, home=gcnet_home)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "4 problem(s)" in result.stderr
    assert all(_listed(result.stderr, n) for n in names), result.stderr
    assert list((gcnet_home / "datacheck").glob("*.json"))  # the good samples are remembered


@pytest.mark.slow
def test_eval_data_error_in_worker_is_short(tmp_path, checkpoint, gcnet_home):
    root = make_dataset(tmp_path / "d", n=2)
    Image.fromarray(np.full((S, S), 9, np.uint8), mode="L").save(root / "labels/val/s1.png")
    args = ["eval", str(checkpoint), "--dataset", "folder", "--data-root", str(root), "--split", "val",
            "--device", "cpu", "--workers", "1", "--no-progress"]
    if _eval_has_data_check():
        args.append("--skip-data-check")  # let the bad label reach a DataLoader worker
    result = run_cli(*args, home=gcnet_home)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "DataLoader worker" not in result.stderr
    assert _listed(result.stderr, "labels/val/s1.png") and "values outside [0, 3)" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3, result.stderr
