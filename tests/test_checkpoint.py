"""Checkpoint reading/writing: formats, forms, safety, and clear errors."""

from __future__ import annotations

import io
import os
import pickle

import pytest
import torch
from helpers import assert_close_rel, save_mmengine, tiny_model_kwargs, trained_tiny

from gcnet import GCNet, build_model, load_model, load_weights, read_checkpoint, save_checkpoint, save_pretrained
from gcnet.errors import CheckpointError


def test_save_and_load_model_round_trip_weights_only(tmp_path):
    model = trained_tiny()
    path = save_checkpoint(tmp_path / "ckpt.pth", model, iteration=7)
    raw = torch.load(path, weights_only=True)  # our format never needs unpickling of code
    assert raw["format"] == "gcnet" and raw["iteration"] == 7 and raw["deployed"] is False
    loaded = load_model(path)
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"], "atomic write left a temporary file"


def test_build_model_weights_take_a_path_or_say_it_is_missing(tmp_path):
    model = trained_tiny()
    path = save_checkpoint(tmp_path / "best.pth", model)
    options = {k: v for k, v in tiny_model_kwargs().items() if k != "num_classes"}
    loaded = build_model("gcnet-s", model.num_classes, weights=str(path), **options)  # as load_weights takes it
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError, match="runs/t1/best.pth: no such checkpoint file .*nor named weights"):
        build_model("gcnet-s", weights="runs/t1/best.pth")
    deployed = save_checkpoint(tmp_path / "deploy.pth", trained_tiny().eval().reparameterize())
    assert build_model("gcnet-s", model.num_classes, weights=str(deployed), **options).is_deploy  # the weights' form
    with pytest.raises(CheckpointError, match="deploy-form.*build the model with deploy=True"):
        build_model("gcnet-s", model.num_classes, weights=str(deployed), deploy=False, **options)


def test_save_pretrained_refuses_a_file_and_writes_nothing(tmp_path):
    mine = tmp_path / "existing_file.pth"
    mine.write_bytes(b"mine")
    with pytest.raises(NotADirectoryError, match="existing_file.pth is a file; save_pretrained writes a folder"):
        save_pretrained(trained_tiny(), mine)
    assert mine.read_bytes() == b"mine" and list(tmp_path.iterdir()) == [mine]


def test_deploy_checkpoint_rebuilds_deploy_model(tmp_path):
    model = trained_tiny()
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        expected = model(x)
        save_checkpoint(tmp_path / "deploy.pth", model.reparameterize())
        loaded = load_model(tmp_path / "deploy.pth")
        assert loaded.is_deploy
        assert_close_rel(loaded(x), expected)


def test_train_weights_load_into_deploy_model(tmp_path):
    model = trained_tiny()
    save_checkpoint(tmp_path / "train.pth", model)
    deploy = build_model("gcnet-s", deploy=True, **tiny_model_kwargs())
    load_weights(deploy, tmp_path / "train.pth")
    x = torch.randn(2, 3, 35, 45)
    with torch.no_grad():
        assert_close_rel(deploy.eval()(x), model(x))


def test_ddp_prefix_and_mmengine_wrapper_are_accepted():
    model = trained_tiny()
    wrapped = {"meta": {"epoch": 3}, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    fresh = build_model("gcnet-s", **tiny_model_kwargs())
    load_weights(fresh, wrapped)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_class_count_mismatch_is_explained():
    model = trained_tiny(num_classes=4)
    other = build_model("gcnet-s", **tiny_model_kwargs(num_classes=7))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match="4 classes but the model has 7"):
        load_weights(other, model.state_dict())
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items()), "partial load happened"


def test_missing_unexpected_and_shape_mismatch_are_listed():
    state = trained_tiny().state_dict()
    state.pop("backbone.stem.0.conv.weight")
    state["backbone.extra.weight"] = torch.zeros(1)
    state["backbone.down_1.conv.weight"] = torch.zeros(1, 1, 3, 3)
    with pytest.raises(CheckpointError) as info:
        load_weights(build_model("gcnet-s", **tiny_model_kwargs()), state)
    message = str(info.value)
    assert "missing in checkpoint (1)" in message and "backbone.stem.0.conv.weight" in message
    assert "unexpected in checkpoint (1)" in message and "backbone.extra.weight" in message
    assert "shape mismatch (1)" in message and "backbone.down_1.conv.weight" in message


def test_deploy_weights_refused_by_training_model():
    deploy_state = trained_tiny().reparameterize().state_dict()
    with pytest.raises(CheckpointError, match="deploy=True"):
        load_weights(build_model("gcnet-s", **tiny_model_kwargs()), deploy_state)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": trained_tiny().state_dict(), "meta": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load.*system"):
        load_weights(build_model("gcnet-s", **tiny_model_kwargs()), path)
    assert not marker.exists()


def test_legacy_pickle_with_eval_is_refused(tmp_path):
    path = tmp_path / "evil_legacy.pth"
    with open(path, "wb") as f:
        pickle.dump({"x": _Payload(str(tmp_path / "pwned"))}, f)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_mmengine_metadata_objects_are_read_inertly():
    buffer = io.BytesIO()
    save_mmengine(buffer, trained_tiny().state_dict())
    buffer.seek(0)
    obj = read_checkpoint(buffer)
    loss = obj["message_hub"]["log_scalars"]["loss"]
    assert type(loss).__name__ == "HistoryBuffer" and type(loss).__module__ == "gcnet.checkpoint.opaque"


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated zip", b"hello", b"abc"])
def test_corrupt_files_give_clear_errors(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert str(err.value).startswith(f"{path}: ")  # the whole path, as given, not only the file name


def test_missing_file_and_foreign_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "nope.pth")
    torch.save({"state_dict": trained_tiny().state_dict()}, tmp_path / "authors.pth")
    with pytest.raises(CheckpointError, match="not a gcnet checkpoint"):
        load_model(tmp_path / "authors.pth")


def _torchscript(path):
    torch.jit.save(torch.jit.trace(torch.nn.Conv2d(3, 2, 1), torch.randn(1, 3, 4, 4)), path)


def _torch_export(path):
    torch.export.save(torch.export.export(torch.nn.Conv2d(3, 2, 1), (torch.randn(1, 3, 4, 4),)), path)


def _png(path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(path)


NOT_CHECKPOINTS = {  # file name -> (writer, words the message must contain)
    "model.onnx": (lambda p: p.write_bytes(b"\x08\x08\x12\x07pytorch"), "ONNX model"),
    "model.xml": (lambda p: p.write_text('<?xml version="1.0"?>\n<net name="gcnet" version="11"/>'), "OpenVINO IR"),
    "model.ts": (_torchscript, "TorchScript module"),
    "model.pt2": (_torch_export, "torch.export program"),
    "photo.png": (_png, "an image"),
    "train.toml": (lambda p: p.write_text("[model]\nname = 'gcnet-s'\n"), "training config"),
    "download.pth": (lambda p: p.write_text("<!DOCTYPE html><html>Google Drive - Virus scan warning</html>"),
                     "HTML page"),
}


@pytest.mark.parametrize("name", sorted(NOT_CHECKPOINTS))
def test_non_checkpoint_files_say_what_they_are(tmp_path, name, capsys):
    from gcnet.cli import main

    write, words = NOT_CHECKPOINTS[name]
    path = tmp_path / name
    write(path)
    with pytest.raises(CheckpointError) as err:
        load_weights(build_model("gcnet-s", **tiny_model_kwargs()), path)
    message = str(err.value)
    assert message.startswith(f"{path}: this is ") and words in message and "gcnet checkpoint" in message
    assert "weights_only" not in message and "corrupt" not in message and message.count("\n") <= 1
    assert main(["eval", str(path), "--dataset", "camvid", "--data-root", str(tmp_path)]) == 2
    stderr = capsys.readouterr().err
    assert words in stderr and "weights_only" not in stderr and "Traceback" not in stderr


def test_truncated_checkpoint_never_suggests_weights_only_false(tmp_path):
    path = tmp_path / "cut.pth"
    save_checkpoint(path, trained_tiny())
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        read_checkpoint(path)
    assert "weights_only" not in str(err.value)


def test_dataset_metadata_round_trip_weights_only(tmp_path):
    from gcnet import checkpoint_dataset_info
    from gcnet.data.metadata import DatasetInfo

    info = DatasetInfo("fields", ("soil", "crop", "weed", "sky"), ((1, 2, 3), (4, 5, 6), (7, 8, 9), (9, 9, 9)), 255)
    path = save_checkpoint(tmp_path / "own.pth", trained_tiny(), dataset=info, iteration=3)
    raw = torch.load(path, weights_only=True)
    assert raw["dataset"] == {"name": "fields", "classes": list(info.classes),
                              "palette": [list(c) for c in info.palette], "ignore_index": 255}
    assert checkpoint_dataset_info(path) == info and checkpoint_dataset_info(raw) == info
    assert checkpoint_dataset_info(save_checkpoint(tmp_path / "bare.pth", trained_tiny())) is None
    with pytest.raises(ValueError, match="4 classes but the model has 7"):
        save_checkpoint(tmp_path / "x.pth", trained_tiny(num_classes=7), dataset=info)
    assert not (tmp_path / "x.pth").exists()


def test_mmseg_dataset_meta_is_read(tmp_path):
    from gcnet import checkpoint_dataset_info

    classes, palette = ["a", "b", "c", "d"], [[1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]]
    save_mmengine(tmp_path / "authors.pth", trained_tiny().state_dict(), {"classes": tuple(classes), "palette": palette})
    info = checkpoint_dataset_info(tmp_path / "authors.pth")
    assert list(info.classes) == classes and [list(c) for c in info.palette] == palette


def test_a_directly_built_gcnet_round_trips(tmp_path):
    """A GCNet(...) built without a variant name ("custom") loads back from its checkpoint, in
    training form and as a deploy model from training weights."""
    model = GCNet(**tiny_model_kwargs()).eval()
    path = tmp_path / "custom.pt"
    save_checkpoint(path, model)
    loaded = load_model(path)
    assert loaded.config == model.config and not loaded.is_deploy
    x = torch.randn(1, 3, 64, 96)
    deploy = GCNet(deploy=True, **tiny_model_kwargs()).eval()
    load_weights(deploy, path)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(loaded(x), ref)
        assert_close_rel(deploy(x), ref)


def test_a_checkpoint_damaged_in_the_middle_is_refused(tmp_path):
    """Bytes overwritten inside a stored tensor: torch.load would read wrong weights; the zip CRCs catch it."""
    path = save_checkpoint(tmp_path / "m.pt", GCNet(**tiny_model_kwargs()).eval())
    data = path.read_bytes()
    mid = len(data) // 2
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(data[:mid] + bytes(1000) + data[mid + 1000:])
    with pytest.raises(CheckpointError, match="damaged.*checksums"):
        load_model(damaged)
    load_model(path)  # the intact file still loads
