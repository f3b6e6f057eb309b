"""Shared test fixtures. Tests generate their own data; the authors' reference files are optional.
Plain helper functions live in ``helpers.py``: test modules never import this file."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# On a small shared CPU, OpenMP threads that spin while waiting slow every other process 10-20x
# (subprocesses started by tests inherit this too). Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# gcnet's caches (data-check results, downloaded weights) go to a fresh folder per test session, never to the
# user's ~/.cache/gcnet; subprocesses inherit it. Tests that check caching set their own GCNET_HOME.
os.environ["GCNET_HOME"] = tempfile.mkdtemp(prefix="gcnet-test-home-")
atexit.register(shutil.rmtree, os.environ["GCNET_HOME"], ignore_errors=True)

import ast  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path(os.environ.get("GCNET_REFERENCE_DIR", REPO.parent / "shared" / "reference"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"authors' reference data not found at {REFERENCE_DIR} (set GCNET_REFERENCE_DIR)")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def golden(reference_dir: Path) -> dict:
    path = reference_dir / "golden_tiny.pt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="session")
def golden_kwargs(golden: dict) -> dict:
    cfg = golden["config"]
    return dict(num_classes=cfg["num_classes"], channels=cfg["channels"], ppm_channels=cfg["ppm_channels"],
                num_blocks=[*ast.literal_eval(cfg["num_blocks_per_stage"])], head_channels=cfg["head_channels"])
