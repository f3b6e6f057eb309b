"""Named weights (registry, cache, download, verification), dataset metadata in predict, and the
safetensors form. No internet: a real HTTP server on 127.0.0.1 serves generated checkpoints."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import subprocess
import sys
import threading
import types
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import randomize_bn, save_mmengine, trained_tiny
from PIL import Image

import gcnet
from gcnet import weights as W
from gcnet.cli import main
from gcnet.data.metadata import CITYSCAPES_CLASSES, DatasetInfo, get_dataset_info
from gcnet.data.transforms import MEAN, STD
from gcnet.errors import CheckpointError, GCNetError

CITYSCAPES = get_dataset_info("cityscapes")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``/cut/NAME`` announces the whole file but closes the connection half-way."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.server.requests.append(self.path)
        if self.path.startswith("/cut/"):
            data = (Path(self.directory) / self.path[len("/cut/"):]).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


class Server:
    def __init__(self, root: Path) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
        self.httpd.requests = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A full-size GCNet-S (19 classes) in the authors' mmengine format, and a file of the wrong model."""
    root = tmp_path_factory.mktemp("served")
    torch.manual_seed(0)
    model = gcnet.build_model("gcnet-s", 19)
    randomize_bn(model)
    save_mmengine(root / "gcnet-s.pth", model.state_dict(),
                  {"classes": CITYSCAPES_CLASSES, "palette": [list(c) for c in CITYSCAPES.palette]})
    save_mmengine(root / "tiny.pth", trained_tiny(19).state_dict())
    return {"root": root, "sha256": W.sha256sum(root / "gcnet-s.pth"), "state": model.state_dict()}


@pytest.fixture(scope="module")
def server(served):
    s = Server(served["root"])
    yield s
    s.stop()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GCNET_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GCNET_OFFLINE", raising=False)
    return tmp_path / "home" / "weights"


@pytest.fixture
def register(monkeypatch):
    """Register a test entry (removed after the test)."""
    def add(name: str, url: str, sha256: str | None = None) -> W.Weights:
        entry = W.Weights(name=name, variant="gcnet-s", dataset="cityscapes", url=url, miou=None,
                          reported="test", eval_size=(64, 64), license="test", sha256=sha256)
        monkeypatch.setitem(W.REGISTRY, name, entry)
        return entry
    return add


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_registry_holds_the_authors_releases_with_metadata():
    assert gcnet.list_weights() == ["gcnet-l_cityscapes", "gcnet-m_cityscapes", "gcnet-s_cityscapes"]
    for variant, drive_id, miou in [("gcnet-s", "1KersBP95k3b0AELiYlQ1rk4PKUmN-ueu", 76.9),
                                    ("gcnet-m", "1sRaoMBirNeOlzV7DSJrML37k6Ypm4E7n", 78.9),
                                    ("gcnet-l", "1FCQJB0kRni7PoMTkLOjzuPi9KI868XB6", 79.6)]:
        w = gcnet.get_weights(f"{variant}_cityscapes")
        assert (w.variant, w.miou, w.eval_size, w.num_classes) == (variant, miou, (1024, 2048), 19)
        assert drive_id in w.url and "mmseg" in w.reported and "N=2" in w.reported and w.license
        assert w.sha256 is None  # the authors publish no hashes
        assert w.info is CITYSCAPES  # from gcnet.data.metadata, not a copy
        assert (w.mean, w.std) == (MEAN, STD)
        json.dumps(w.to_dict())
    with pytest.raises(CheckpointError, match="unknown weights 'nope'; named weights: gcnet-l"):
        gcnet.get_weights("nope")


def test_register_own_weights(monkeypatch):
    monkeypatch.setattr(W, "REGISTRY", dict(W.REGISTRY))
    mine = W.register_weights(W.Weights(name="mine_camvid", variant="gcnet-s", dataset="camvid", url="https://x/m.pth",
                                        miou=None, reported="", eval_size=(720, 960), license="ours"))
    assert gcnet.get_weights("MINE_camvid") is mine and mine.num_classes == 11 and "mine_camvid" in gcnet.list_weights()
    with pytest.raises(ValueError, match="already registered"):
        W.register_weights(mine)


def test_name_downloads_once_is_checked_and_builds_the_model(served, server, home, register):
    register("test-s", f"{server.url}/gcnet-s.pth", sha256=served["sha256"])
    model = gcnet.build_model("gcnet-s", weights="test-s")  # num_classes from the weights
    assert model.num_classes == 19 and files_in(home) == ["test-s.pth"]
    assert torch.equal(model.state_dict()["backbone.stem.0.conv.weight"], served["state"]["backbone.stem.0.conv.weight"])
    before = len(server.requests)
    loaded = gcnet.load_model("test-s")  # the registry knows the variant; cached: no request
    assert len(server.requests) == before and not loaded.is_deploy
    assert gcnet.checkpoint_dataset_info("test-s") is CITYSCAPES
    with pytest.raises(CheckpointError, match="19 classes"):
        gcnet.build_model("gcnet-s", 11, weights="test-s")
    with pytest.raises(CheckpointError, match="for gcnet-s, not gcnet-m"):
        gcnet.build_model("gcnet-m", weights="test-s")
    from gcnet.engine.trainer import load_init_weights

    fresh = gcnet.build_model("gcnet-s", 19)
    assert load_init_weights(fresh, "test-s", log=lambda m: None) == []  # train's init.load_from takes names


def test_wrong_sha256_is_refused_and_nothing_kept(server, home, register):
    register("test-s", f"{server.url}/gcnet-s.pth", sha256="0" * 64)
    with pytest.raises(CheckpointError, match="SHA-256 .* differs from the published 0000"):
        gcnet.load_model("test-s")
    assert files_in(home) == []


def test_wrong_model_is_refused_and_removed_with_the_reason(server, home, register):
    register("test-s", f"{server.url}/tiny.pth")
    with pytest.raises(CheckpointError) as err:
        gcnet.load_model("test-s")
    message = str(err.value)
    assert "refused the download and removed it" in message and "expected gcnet-s weights for 19 classes" in message
    assert "shape mismatch" in message and files_in(home) == []


@pytest.mark.parametrize("path", ["/missing.pth", "/cut/gcnet-s.pth"])
def test_failed_download_leaves_nothing_in_the_cache(server, home, register, path):
    entry = register("test-s", server.url + path)
    with pytest.raises(CheckpointError) as err:
        gcnet.load_model("test-s")
    assert ("HTTP 404" in str(err.value) and str(entry.path) in str(err.value)) or "refused" in str(err.value)
    assert files_in(home) == []


def test_offline_a_cached_name_works_and_a_missing_one_says_where(served, home, register, monkeypatch):
    server = Server(served["root"])
    register("test-s", f"{server.url}/gcnet-s.pth")
    missing = register("test-other", f"{server.url}/gcnet-s.pth")
    gcnet.build_model("gcnet-s", weights="test-s")
    server.stop()
    assert gcnet.load_model("test-s").num_classes == 19  # server gone: the cache serves
    with pytest.raises(CheckpointError) as err:
        gcnet.load_model("test-other")  # connection refused
    assert f"Get it from {missing.url} and save it as {missing.path}" in str(err.value)
    monkeypatch.setenv("GCNET_OFFLINE", "1")
    assert gcnet.load_model("test-s").num_classes == 19
    with pytest.raises(CheckpointError, match="GCNET_OFFLINE is set"):
        gcnet.load_model("test-other")
    assert files_in(home) == ["test-s.pth"]


def test_url_is_downloaded_once_into_the_cache(served, server, home, monkeypatch):
    url = f"{server.url}/gcnet-s.pth"
    model = gcnet.load_weights(gcnet.build_model("gcnet-s", 19), url)
    assert torch.equal(model.state_dict()["backbone.stem.0.conv.weight"], served["state"]["backbone.stem.0.conv.weight"])
    assert W.url_cache_path(url).is_file() and len(files_in(home)) == 1
    monkeypatch.setenv("GCNET_OFFLINE", "1")
    gcnet.load_weights(gcnet.build_model("gcnet-s", 19), url)
    with pytest.raises(CheckpointError, match="tiny.pth: not in the cache and GCNET_OFFLINE is set"):
        gcnet.read_checkpoint(f"{server.url}/tiny.pth")


def test_cli_weights_list_download_verify(served, server, home, register, capsys):
    register("test-s", f"{server.url}/gcnet-s.pth")
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    assert "gcnet-s_cityscapes" in out and "76.9" in out and "1024x2048" in out and str(home) in out
    assert next(line for line in out.splitlines() if line.startswith("test-s ")).rstrip().endswith("no")
    assert main(["weights", "download", "test-s", "--no-progress"]) == 0
    assert f"test-s: {home / 'test-s.pth'}" in capsys.readouterr().out
    assert main(["weights"]) == 0 and "MiB" in next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith("test-s "))
    assert main(["weights", "verify"]) == 0
    out = capsys.readouterr().out
    assert "test-s: OK" in out and served["sha256"] in out and "no published hash" in out
    save_mmengine(home / "test-s.pth", trained_tiny(19).state_dict())  # the cached file gets replaced
    assert main(["weights", "verify", "test-s"]) == 1
    assert "test-s: FAILED" in capsys.readouterr().err
    assert main(["weights", "download", "nope"]) == 2
    assert "unknown weights 'nope'" in capsys.readouterr().err


def test_unusable_cache_is_refused_before_downloading(server, home, register, monkeypatch, capsys, tmp_path):
    register("test-s", f"{server.url}/gcnet-s.pth")
    image = tmp_path / "street.png"
    Image.new("RGB", (32, 32)).save(image)
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("not a folder")
    monkeypatch.setenv("GCNET_HOME", str(in_the_way))
    before = len(server.requests)
    for argv in (["weights", "download", "test-s", "--no-progress"],
                 ["predict", str(image), "-c", "test-s", "--out", str(tmp_path / "out")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"the weights cache: cannot create folder {in_the_way / 'weights'}: {in_the_way} is a file" in err, err
        assert "set GCNET_HOME to a writable folder" in err and "Traceback" not in err
    monkeypatch.setenv("GCNET_HOME", str(home.parent))  # read-only (permission bits do not stop root: a stand-in)

    monkeypatch.setattr(W, "folder_problem", lambda folder: f"{folder.parent} is not writable")
    with pytest.raises(CheckpointError, match=r"the weights cache: .* is not writable; set GCNET_HOME"):
        gcnet.load_model(f"{server.url}/gcnet-s.pth")
    assert len(server.requests) == before and in_the_way.read_text() == "not a folder" and not home.parent.exists()


def test_cached_file_is_checked_against_its_name_once(served, home, register, monkeypatch, capsys, tmp_path):
    # users save files there by hand (where to get them says so): a wrong one is named, not used
    entry = register("test-s", "http://127.0.0.1:9/unreachable.pth")
    home.mkdir(parents=True)
    gcnet.save_checkpoint(entry.path, gcnet.build_model("gcnet-s", 5, channels=8))
    expected = (rf"the cached file {entry.path} does not match test-s \(the file holds weights for 5 classes, not "
                r"19\); download it again: gcnet weights download test-s --force")
    with pytest.raises(CheckpointError, match=expected):
        gcnet.load_model("test-s")
    image = tmp_path / "street.png"
    Image.new("RGB", (32, 32)).save(image)
    assert main(["predict", str(image), "-c", "test-s", "--out", str(tmp_path / "out")]) == 2
    assert "does not match test-s" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(["weights", "download", "test-s"]) == 2  # not "already cached"
    assert "does not match test-s" in capsys.readouterr().err
    save_mmengine(entry.path, served["state"])
    checks = []
    monkeypatch.setattr(gcnet.checkpoint, "check_weights", lambda *a, **k: checks.append(a))
    assert gcnet.load_model("test-s").num_classes == 19 and gcnet.load_model("test-s").num_classes == 19
    assert len(checks) == 1  # once per process (per file version)


def test_cli_offline_named_weights_say_where_to_get_them(home, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("GCNET_OFFLINE", "1")
    entry = gcnet.get_weights("gcnet-s_cityscapes")
    image = tmp_path / "street.png"
    Image.new("RGB", (32, 32)).save(image)
    for argv in (["weights", "download", entry.name], ["predict", str(image), "--checkpoint", entry.name],
                 ["export", entry.name, "--format", "safetensors"], ["bench", "--checkpoint", entry.name]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert entry.url in err and str(entry.path) in err and "Traceback" not in err
    assert files_in(home) == []


@pytest.mark.skipif(importlib.util.find_spec("gdown") is not None, reason="gdown installed: would use the network")
def test_google_drive_without_gdown_says_how(home):
    with pytest.raises(CheckpointError, match=r"needs gdown: pip install 'gcnet\[gdrive\]'"):
        gcnet.load_model("gcnet-s_cityscapes")
    assert files_in(home) == []


@pytest.mark.parametrize("fails", [False, True])
def test_google_drive_glue_with_a_stand_in_for_gdown(served, home, monkeypatch, fails):
    # gdown needs the internet: a stand-in with its download(id=, output=, quiet=) call checks our glue
    # (file id, private temporary folder, checks, nothing left behind on failure), not Google Drive.
    calls = []

    def download(id=None, output=None, quiet=False):  # noqa: A002 - gdown's parameter name
        calls.append(id)
        data = (served["root"] / "gcnet-s.pth").read_bytes()
        Path(output).write_bytes(data[: len(data) // 3] if fails else data)
        if fails:
            raise ConnectionError("Connection reset by peer")
        return output

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))
    entry = gcnet.get_weights("gcnet-s_cityscapes")
    if fails:
        with pytest.raises(CheckpointError, match="Connection reset by peer") as err:
            gcnet.load_model(entry.name)
        assert f"save it as {entry.path}" in str(err.value) and files_in(home) == []
    else:
        assert gcnet.load_model(entry.name).num_classes == 19 and files_in(home) == [entry.path.name]
    assert calls == ["1KersBP95k3b0AELiYlQ1rk4PKUmN-ueu"]


def _predict(tmp_path, *extra) -> tuple[np.ndarray, list[int]]:
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "pred"
    assert main(["predict", str(image), "--out", str(out), "--no-progress", "--no-overlay", *extra]) == 0
    label = Image.open(out / "in_label.png")
    return np.asarray(label), label.getpalette()


def _palette(info: DatasetInfo) -> list[int]:
    return [v for c in info.palette for v in c]


def test_predict_colours_named_weights_from_their_metadata(served, server, home, register, tmp_path, capsys):
    register("test-s", f"{server.url}/gcnet-s.pth")
    _, palette = _predict(tmp_path, "--checkpoint", "test-s")
    assert palette[: 3 * 19] == _palette(CITYSCAPES) and "generic" not in capsys.readouterr().err


def test_stream_and_deploy_build_take_a_weights_name(served, server, home, register, tmp_path):
    """``gcnet.stream(source, "name")`` and ``gcnet.deploy.build("name", ...)``: a name, like a path."""
    from gcnet.deploy.pipeline import build

    register("test-s", f"{server.url}/gcnet-s.pth")
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(np.zeros((48, 64, 3), dtype=np.uint8)).save(frames / "a.png")
    assert build("test-s", "torch").runtime is not None
    ((frame, labels),) = list(gcnet.stream(frames, "test-s"))
    assert frame.shape == (48, 64, 3) and labels.shape == (48, 64)


@pytest.mark.parametrize("fuse", [False, True], ids=["training-form", "deploy-form"])
def test_predict_model_and_weights_take_either_form_of_the_authors_weights(served, tmp_path, fuse):
    """``--model VARIANT --weights FILE``: the authors' training-form and ``switch_to_deploy`` files alike."""
    model = gcnet.build_model("gcnet-s", 19)
    model.load_state_dict(served["state"])
    if fuse:
        model.eval().fuse_gcblocks()
    save_mmengine(tmp_path / "authors.pth", model.state_dict())
    labels, _ = _predict(tmp_path, "--model", "gcnet-s", "--weights", str(tmp_path / "authors.pth"))
    assert labels.shape == (48, 64)


def test_predict_uses_the_checkpoint_metadata_and_never_guesses(tmp_path, capsys):
    info = DatasetInfo("mine", ("a", "b", "c", "d"), ((9, 9, 9), (200, 0, 0), (0, 200, 0), (0, 0, 200)))
    gcnet.save_checkpoint(tmp_path / "own.pth", trained_tiny(4), dataset=info)
    _, palette = _predict(tmp_path, "--checkpoint", str(tmp_path / "own.pth"))
    assert palette[:12] == _palette(info) and "generic" not in capsys.readouterr().err
    gcnet.save_checkpoint(tmp_path / "bare19.pth", trained_tiny(19))  # 19 classes, no metadata: not Cityscapes
    _, palette = _predict(tmp_path, "--checkpoint", str(tmp_path / "bare19.pth"))
    assert palette[: 3 * 19] != _palette(CITYSCAPES) and "generic palette" in capsys.readouterr().err


@pytest.mark.parametrize("deploy", [False, True])
def test_safetensors_round_trip_never_unpickles(tmp_path, monkeypatch, deploy):
    model = trained_tiny(19)
    if deploy:
        model.reparameterize()
    folder = gcnet.save_pretrained(model, tmp_path / "pretrained", dataset=CITYSCAPES)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    card = json.loads((folder / "config.json").read_text())
    assert card["model"] == model.config and card["deployed"] is deploy and card["dataset"]["classes"] == list(CITYSCAPES_CLASSES)
    assert card["normalization"]["mean"] == list(MEAN)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called: safetensors must not unpickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    x = torch.randn(1, 3, 40, 56)
    for source in (folder, folder / "model.safetensors"):  # the file alone carries the config in its header
        loaded = gcnet.from_pretrained(source)
        assert loaded.is_deploy is deploy
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert gcnet.checkpoint_dataset_info(folder) == DatasetInfo(
        "cityscapes", CITYSCAPES.classes, CITYSCAPES.palette, CITYSCAPES.ignore_index)


def test_export_safetensors_keeps_the_class_metadata(tmp_path, capsys):
    info = DatasetInfo("mine", ("a", "b", "c", "d"), ((9, 9, 9), (200, 0, 0), (0, 200, 0), (0, 0, 200)))
    model = trained_tiny(4)
    gcnet.save_checkpoint(tmp_path / "own.pth", model, dataset=info)
    assert main(["export", str(tmp_path / "own.pth"), "--format", "safetensors", "--out", str(tmp_path / "out")]) == 0
    folder = tmp_path / "out" / "own"
    loaded = gcnet.load_model(folder)
    assert loaded.is_deploy and gcnet.checkpoint_dataset_info(folder) == info
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.reparameterize()(x), rtol=1e-4, atol=1e-4)
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["config.json", "model.safetensors", "own"]


def test_corrupt_safetensors_is_a_clear_error(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        gcnet.load_model(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("huggingface_hub") is not None, reason="huggingface_hub installed")
def test_hub_repo_id_without_huggingface_hub_says_so():
    with pytest.raises(GCNetError, match="install huggingface_hub"):
        gcnet.from_pretrained("someone/gcnet-s-camvid")


@pytest.mark.slow
def test_cli_process_lists_and_refuses_offline(tmp_path):
    env = {**os.environ, "GCNET_HOME": str(tmp_path), "GCNET_OFFLINE": "1"}
    run = partial(subprocess.run, capture_output=True, text=True, env=env, timeout=120)
    listing = run([sys.executable, "-m", "gcnet.cli", "weights", "--json"])
    assert listing.returncode == 0 and [e["name"] for e in json.loads(listing.stdout)][0] == "gcnet-l_cityscapes"
    refused = run([sys.executable, "-m", "gcnet.cli", "weights", "download", "gcnet-m_cityscapes"])
    assert refused.returncode == 2 and str(tmp_path / "weights" / "gcnet-m_cityscapes.pth") in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 2


def test_cli_weights_list_is_the_default_and_failed_verify_says_what_to_do(served, server, home, register, capsys):
    register("test-s", f"{server.url}/gcnet-s.pth")
    assert main(["weights"]) == 0
    default = capsys.readouterr().out
    assert main(["weights", "list"]) == 0 and capsys.readouterr().out == default
    assert main(["weights", "--json"]) == 0
    as_json = capsys.readouterr().out
    assert main(["weights", "list", "--json"]) == 0 and capsys.readouterr().out == as_json
    assert main(["weights", "download", "test-s", "--no-progress"]) == 0
    save_mmengine(home / "test-s.pth", trained_tiny(19).state_dict())  # keys/shapes no longer match test-s
    assert main(["weights", "verify", "test-s"]) == 1
    err = capsys.readouterr().err
    assert "test-s: FAILED" in err and err.count("gcnet weights download test-s --force") == 1, err
