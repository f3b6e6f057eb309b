"""``gcnet info`` end to end (a real subprocess, as a user runs it)."""

from __future__ import annotations

import json

import pytest
from helpers import run_gcnet as run_cli

pytestmark = pytest.mark.slow  # every test starts gcnet processes


def test_info_json_reports_reference_numbers():
    result = run_cli("info", "gcnet-s", "--size", "1024x2048", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert round(row["deploy"]["macs"] / 1e9, 1) == 45.1
    assert round(row["train"]["params"] / 1e6, 1) == 20.7
    assert row["deploy"]["params"] < row["train"]["params"]


def test_info_table_and_errors():
    result = run_cli("info", "--size", "512")
    assert result.returncode == 0 and "gcnet-l" in result.stdout and "512x512" in result.stdout
    bad = run_cli("info", "gcnet-xxl")
    assert bad.returncode == 2 and "unknown model" in bad.stderr
    bad_size = run_cli("info", "--size", "abc")
    assert bad_size.returncode == 2 and "size must be HxW" in bad_size.stderr
