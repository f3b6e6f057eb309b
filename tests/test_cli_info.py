"""``gcnet info`` end to end (a real subprocess, as a user runs it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import run_gcnet as run_cli


@pytest.mark.slow  # starts a gcnet process
def test_info_json_reports_reference_numbers():
    result = run_cli("info", "gcnet-s", "--size", "1024x2048", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert round(row["deploy"]["macs"] / 1e9, 1) == 45.1
    assert round(row["train"]["params"] / 1e6, 1) == 20.7
    assert row["deploy"]["params"] < row["train"]["params"]


@pytest.mark.slow  # starts gcnet processes
def test_info_table_and_errors():
    result = run_cli("info", "--size", "512")
    assert result.returncode == 0 and "gcnet-l" in result.stdout and "512x512" in result.stdout
    bad = run_cli("info", "gcnet-xxl")
    assert bad.returncode == 2 and "unknown model" in bad.stderr
    bad_size = run_cli("info", "--size", "abc")
    assert bad_size.returncode == 2 and "size must be HxW" in bad_size.stderr


# ------------------------------------------------------------------------- shared argument types (cli/args.py)
def _parser():
    import argparse

    from gcnet.cli.args import fraction, non_negative_int, positive_float, positive_int

    p = argparse.ArgumentParser(prog="gcnet x")
    p.add_argument("--limit", type=positive_int)
    p.add_argument("--workers", type=non_negative_int)
    p.add_argument("--minutes", type=positive_float)
    p.add_argument("--alpha", type=fraction)
    return p


@pytest.mark.parametrize("flag,value,message", [
    ("--limit", "-1", "must be a positive integer (1, 2, ...)"),
    ("--limit", "0", "must be a positive integer (1, 2, ...)"),
    ("--limit", "two", "must be a positive integer (1, 2, ...)"),
    ("--workers", "-3", "must be 0 or a positive integer"),
    ("--minutes", "nan", "must be a positive number"),
    ("--minutes", "-2", "must be a positive number"),
    ("--alpha", "1.5", "must be a number from 0 to 1"),
])
def test_number_types_refuse_bad_values(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args([flag, value])
    assert exc.value.code == 2
    assert f"argument {flag}: {message}; got '{value}'" in capsys.readouterr().err


def test_number_types_accept_good_values():
    args = _parser().parse_args(["--limit", "3", "--workers", "0", "--minutes", "0.5", "--alpha", "0"])
    assert (args.limit, args.workers, args.minutes, args.alpha) == (3, 0, 0.5, 0.0)


def test_output_paths_checked_without_creating_anything(tmp_path):
    import os

    from gcnet.cli.args import check_writable_dir, check_writable_file
    from gcnet.errors import ConfigError

    a_file = tmp_path / "taken.txt"
    a_file.write_text("mine")
    assert check_writable_dir(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    assert check_writable_file(tmp_path / "r.json", "--json") == tmp_path / "r.json"
    assert not (tmp_path / "new").exists()
    for check, path, message in [(check_writable_dir, a_file, "--out: .*taken.txt exists and is not a folder"),
                                 (check_writable_dir, a_file / "sub", "--out: .*taken.txt is a file"),
                                 (check_writable_file, tmp_path, "--out: .* is a folder; give a file name"),
                                 (check_writable_file, a_file / "r.json", "taken.txt exists and is not a folder"),
                                 (check_writable_dir, "", "--out: the path is empty"),  # not the current folder
                                 (check_writable_file, " ", "--out: the path is empty")]:
        with pytest.raises(ConfigError, match=message):
            check(path, "--out")
    for path, message in [(a_file, "taken.txt is the checkpoint; writing there would replace it"),
                          (tmp_path / "x" / ".." / "r.json", "r.json is inside the data set root .*; give a file outside it")]:
        with pytest.raises(ConfigError, match=message):
            check_writable_file(path, "--json", [("the weights", None), ("the checkpoint", a_file),
                                                 ("the data set root", tmp_path)])
    assert a_file.read_text() == "mine"
    dangling = tmp_path / "link"
    dangling.symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError, match="link is a symbolic link to a missing folder"):
        check_writable_dir(dangling, "--out")
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match="is not writable"):
            check_writable_dir(locked / "out", "--out")


def test_usage_errors_are_two_lines(capsys):
    from gcnet.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["info", "--size", "0x5"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gcnet info: error: argument --size: size must be HxW or N (integers from 1 to 16384), e.g. 1024x2048 "
                   "or 512; got '0x5'", "(run 'gcnet info --help' for the options)"]
    with pytest.raises(SystemExit) as exc:
        main(["eval", "x.pth", "--no-such-flag"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("gcnet eval: error: unrecognized arguments: --no-such-flag\n")


def test_running_out_of_memory_or_disk_is_one_line_not_a_traceback():
    import torch

    from gcnet.cli import resource_message

    with pytest.raises(RuntimeError) as alloc:  # a real allocation failure
        torch.empty(2**50, dtype=torch.uint8)
    assert resource_message(alloc.value).startswith("out of memory (")
    with pytest.raises(OSError) as full, open("/dev/full", "wb", buffering=0) as f:  # a real full device
        f.write(b"x")
    assert resource_message(full.value).startswith("no space left on the device")
    with pytest.raises(RuntimeError) as zipped:  # torch's zip writer on a full device
        torch.save({"x": torch.zeros(10_000)}, "/dev/full")
    assert "disk full?" in resource_message(zipped.value)
    assert resource_message(RuntimeError("shape mismatch")) is None  # a bug keeps its traceback


def test_import_gcnet_leaves_torch_for_first_use():
    """``import gcnet`` and the CLI module load without torch (so a Ctrl-C during torch's import is the CLI's
    clean "interrupted"); every public name still resolves on first use."""
    code = ("import sys, gcnet, gcnet.cli; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert all(getattr(gcnet, n) is not None for n in gcnet.__all__); "
            "assert set(gcnet.__all__) == {*gcnet._EXPORTS, '__version__'} and set(gcnet.__all__) <= set(dir(gcnet)); "
            "print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.slow  # starts a gcnet process
def test_output_to_a_closed_pipe_stops_quietly():
    """``gcnet weights | head -1``: the reader goes away; no BrokenPipeError traceback, status 141 as a shell tool."""
    proc = subprocess.Popen([sys.executable, "-m", "gcnet.cli", "weights"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before gcnet writes anything (its start-up takes seconds)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err, err
