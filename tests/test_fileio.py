"""The atomic-write helper: complete files only, the previous version kept on any failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gcnet import fileio


def test_atomic_write_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    fileio.write_text(target, "old")
    with pytest.raises(RuntimeError), fileio.atomic_write(target, "w") as f:
        f.write("new, half")
        raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    fileio.write_text(target, "new")
    assert target.read_text() == "new"


def test_atomic_path_check_refuses_and_keeps_previous(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"verified")

    def check(tmp: Path) -> None:
        raise ValueError(f"{tmp.name} failed verification")

    with pytest.raises(ValueError), fileio.atomic_path(target, check=check) as tmp:
        assert tmp.suffix == ".bin" and tmp.parent == tmp_path
        tmp.write_bytes(b"bad")
    assert target.read_bytes() == b"verified"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_writer_that_writes_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), fileio.atomic_path(tmp_path / "x.onnx"):
        pass
    assert not (tmp_path / "x.onnx").exists()


def test_remove_stale_temps(tmp_path: Path) -> None:
    stale = fileio.temp_name(tmp_path / "latest.pth")
    stale.write_bytes(b"")
    keep = tmp_path / "latest.pth"
    keep.write_bytes(b"x")
    assert fileio.remove_stale_temps(tmp_path) == [stale]
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]
    # a temp of a process that still runs is in use; one of a process that is gone is stale, also below
    live = tmp_path / f".a.{os.getppid()}-0123abcd{fileio.TMP_MARKER}.png"
    dead = tmp_path / "sub" / f".b.{2**22 + 12345}-0123abcd{fileio.TMP_MARKER}.png"
    dead.parent.mkdir()
    live.write_bytes(b"")
    dead.write_bytes(b"")
    assert fileio.remove_stale_temps(tmp_path) == []
    assert fileio.remove_stale_temps(tmp_path, recursive=True) == [dead]
    assert live.exists()


def test_staging_folder_clears_a_killed_runs_stage(tmp_path: Path) -> None:
    out = tmp_path / "out"
    dead = out / f".stage.{2**22 + 12345}-0123abcd{fileio.TMP_MARKER}"  # left by a kill -9
    live = out / f".stage.{os.getppid()}-0123abcd{fileio.TMP_MARKER}"  # another run, still going
    dead.mkdir(parents=True)
    live.mkdir()
    (out / "m.xml").write_text("old")
    with fileio.staging_folder(out) as stage:
        assert stage.parent == out and stage.name.endswith(fileio.TMP_MARKER)
        (stage / "m.xml").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == sorted([live.name, "m.xml"])
    assert (out / "m.xml").read_text() == "new"


def test_image_extensions() -> None:
    assert fileio.IMAGE_EXTENSIONS[0] == ".png"
    assert all(e == e.lower() and e.startswith(".") for e in fileio.IMAGE_EXTENSIONS)


def test_with_default_permissions(tmp_path: Path) -> None:
    import os
    import stat

    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    os.chmod(f, 0o600)  # as safetensors creates its files
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(fileio.with_default_permissions(f).stat().st_mode) == 0o666 & ~mask


def test_atomic_path_refuses_a_folder_in_the_way_before_the_work(tmp_path):
    (tmp_path / "out.png").mkdir()
    (tmp_path / "m.bin").mkdir()
    ran = []
    for name, companions in (("out.png", ()), ("m.xml", (".bin",))):
        with pytest.raises(IsADirectoryError) as info:
            with fileio.atomic_path(tmp_path / name, companions=companions):
                ran.append(name)
        assert info.value.filename in (str(tmp_path / "out.png"), str(tmp_path / "m.bin"))
    assert not ran and sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "out.png"]


def test_a_failed_write_removes_the_folders_it_made(tmp_path):
    """atomic_path and staging_folder make missing parent folders; a failure removes those again (not a folder
    that was there before, nor one that meanwhile holds something else)."""
    def refuse(tmp):
        raise ValueError("refused")

    with pytest.raises(ValueError):
        with fileio.atomic_path(tmp_path / "a" / "b" / "f.txt", check=refuse) as tmp:
            tmp.write_text("x")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        with fileio.staging_folder(tmp_path / "c" / "d") as stage:
            (stage / "f.txt").write_text("x")
            (tmp_path / "c" / "other.txt").write_text("someone else's")
            raise ValueError("failed")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["c", "c/other.txt"]
    with fileio.atomic_path(tmp_path / "e" / "f.txt") as tmp:
        tmp.write_text("kept")
    assert (tmp_path / "e" / "f.txt").read_text() == "kept"


def test_a_name_that_fits_is_written_although_its_temporary_name_is_longer(tmp_path):
    """The temporary name adds ~30 bytes: its stem is shortened so that any name the file system takes works;
    a name too long itself is one line from the CLI."""
    from gcnet.cli import resource_message

    name = "b" * 250 + ".png"
    assert len(fileio.temp_name(tmp_path / name).name.encode()) <= 255
    fileio.write_text(tmp_path / name, "x")
    assert [p.name for p in tmp_path.iterdir()] == [name]
    try:
        fileio.write_text(tmp_path / ("c" * 256), "x")
    except OSError as exc:
        assert resource_message(exc).startswith("file name too long: ")
    else:
        pytest.fail("a 256-byte name was accepted")
