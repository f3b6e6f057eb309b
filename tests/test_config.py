"""Config presets, dotted overrides and validation errors (gcnet.engine.config)."""

from __future__ import annotations

import pytest

from gcnet.engine import config as C
from gcnet.errors import ConfigError


def test_every_preset_loads_and_validates():
    names = C.list_presets()
    for variant in ("s", "m", "l"):
        for ds in ("cityscapes", "camvid", "voc"):
            assert f"gcnet-{variant}_{ds}" in names
    assert "gcnet-s_camvid-scratch" in names and "tiny_synthetic" in names
    for name in names:
        cfg = C.load_config(name)
        assert set(cfg) == set(C.SCHEMA)
        assert cfg["model"]["name"].startswith("gcnet-")


def test_paper_recipes():
    city = C.load_config("gcnet-m_cityscapes")
    assert (city["model"]["name"], city["model"]["num_classes"]) == ("gcnet-m", 19)
    assert city["schedule"]["iters"] == 120000 and city["optim"]["lr"] == 0.01
    assert city["data"]["crop_size"] == [1024, 1024] and city["data"]["batch_size"] == 12
    assert (city["optim"]["momentum"], city["optim"]["weight_decay"], city["optim"]["power"]) == (0.9, 5e-4, 0.9)
    assert (city["loss"]["ohem_thresh"], city["loss"]["min_kept"], city["loss"]["aux_weight"]) == (0.9, 131072, 0.4)
    camvid = C.load_config("gcnet-l_camvid")
    assert camvid["schedule"]["iters"] == 7800 and camvid["optim"]["lr"] == 1e-3
    assert camvid["data"]["crop_size"] == [720, 960] and camvid["model"]["num_classes"] == 11
    voc = C.load_config("gcnet-s_voc")
    assert voc["schedule"]["iters"] == 24400 and voc["data"]["batch_size"] == 16 and voc["data"]["crop_size"] == [512, 512]


def test_overrides_are_parsed_as_toml_values():
    cfg = C.load_config("gcnet-s_cityscapes", [
        "data.root=/data/city", "schedule.iters=100", "optim.lr=1e-3", "data.crop_size=[512, 256]",
        "eval.flip=true", "model.overrides.channels=16", "data.crop_size=[512, 1024]",
    ])
    assert cfg["data"]["root"] == "/data/city"
    assert cfg["schedule"]["iters"] == 100 and cfg["optim"]["lr"] == 1e-3
    assert cfg["data"]["crop_size"] == [512, 1024]  # the last one wins
    assert cfg["eval"]["flip"] is True and cfg["model"]["overrides"] == {"channels": 16}
    # ints are accepted for floats, a single int for a [h, w] pair
    cfg = C.load_config("tiny_synthetic", {"optim.lr": 1, "data.crop_size": 96})
    assert cfg["optim"]["lr"] == 1.0 and isinstance(cfg["optim"]["lr"], float)
    assert cfg["data"]["crop_size"] == [96, 96]


def test_parse_override_args():
    assert C.parse_override_args(["--data.root", "/x", "--schedule.iters=5"]) == ["data.root=/x", "schedule.iters=5"]
    with pytest.raises(ConfigError, match="did you mean data.root"):
        C.parse_override_args(["--data.rot", "/x"])
    with pytest.raises(ConfigError, match="needs a value"):
        C.parse_override_args(["--schedule.iters"])
    with pytest.raises(ConfigError, match="unrecognized argument"):
        C.parse_override_args(["--bogus"])


@pytest.mark.parametrize("override, message", [
    ("schedule.iters=abc", "schedule.iters must be an integer"),
    ("schedule.iters=0", "schedule.iters must be >= 1"),
    ("data.crop_size=[1, 2, 3]", "data.crop_size must be a list of 2 ints"),
    ("optim.lr=-1", "optim.lr must be > 0"),
    ("eval.mode=tiles", "eval.mode must be one of"),
    ("eval.scales=[1.0, 100.0]", "eval.scales must be numbers above 0 and at most 4"),
    ("data.kind=kitti", "data.kind must be"),
    ("model.overrides.width=3", "model.overrides.width is not a build_model option"),
    ("loss.class_weights=[1.0, 2.0]", "loss.class_weights has 2 values but model.num_classes is 19"),
    ("nosection.key=1", "unknown config section"),
    ("optim.learning_rate=0.1", "unknown config key optim.learning_rate"),
    ("optim=0.1", "must look like 'section.key'"),
    ("runtime.device=gpu", "runtime.device must be"),
])
def test_validation_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        C.load_config("gcnet-s_cityscapes", [override])


@pytest.mark.parametrize("override, message", [
    ("data.synthetic_size=[15, 15]", "data.synthetic_size values must be >= 16"),
    ("data.synthetic_train=0", "data.synthetic_train must be >= 1"),
    ("data.synthetic_val=-1", "data.synthetic_val must be >= 1"),
])
def test_synthetic_settings_are_checked(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        C.load_config("tiny_synthetic", [override])


def test_user_file_with_base_and_errors(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('base = "gcnet-s_camvid"\n[data]\nroot = "/somewhere"\n[schedule]\niters = 10\n')
    cfg = C.load_config(f)
    assert cfg["data"]["root"] == "/somewhere" and cfg["schedule"]["iters"] == 10
    assert cfg["optim"]["lr"] == 1e-3 and cfg["model"]["num_classes"] == 11  # inherited

    bad = tmp_path / "bad.toml"
    bad.write_text("[data\nroot = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        C.load_config(bad)
    bad.write_text("[optim]\nlr = 'fast'\n")
    with pytest.raises(ConfigError, match="optim.lr must be a number"):
        C.load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        C.load_config(tmp_path / "missing.toml")
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(ConfigError, match="dir.toml is a folder; give a .toml file"):
        C.load_config(tmp_path / "dir.toml")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'base = "tiny_synthetic"\n# caf\xe9\n')
    with pytest.raises(ConfigError, match="latin.toml is not UTF-8 text .*save it as UTF-8"):
        C.load_config(latin)
    latin.write_bytes(b'\xef\xbb\xbfbase = "tiny_synthetic"\n')  # a BOM (Notepad) is fine
    assert C.load_config(latin)["model"]["num_classes"] == 5
    with pytest.raises(ConfigError, match="unknown preset"):
        C.load_config("gcnet-xl_mars")
    loop = tmp_path / "loop.toml"
    loop.write_text('base = "loop.toml"\n')
    with pytest.raises(ConfigError, match="inheritance loop"):
        C.load_config(loop)


def test_toml_round_trip(tmp_path):
    cfg = C.load_config("tiny_synthetic", ['data.root="a \\"quoted\\" path"', "optim.lr=1e-05"])
    path = C.save_config(cfg, tmp_path / "config.toml", header="resolved")
    again = C.load_config(path)
    assert again == cfg
    assert C.config_diff(cfg, again) == []
    again["optim"]["lr"] = 0.5
    assert C.config_diff(cfg, again) == ["optim.lr"]


def test_every_config_key_is_documented():
    """docs/training.md lists every key of every section (one table per section)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    for sec, keys in C.SCHEMA.items():
        section = text.split(f"**[{sec}]**", 1)
        assert len(section) == 2, f"no table for [{sec}]"
        table = section[1].split("\n\n", 2)[1]
        missing = [k for k in keys if f"| `{k}` |" not in table]
        assert not missing, f"[{sec}] keys missing from docs/training.md: {missing}"


def test_typed_sections_take_their_choices_from_the_owning_modules():
    from gcnet.data.datasets import CONFIG_KINDS, DATASET_KINDS
    from gcnet.models import build_model, list_models

    assert C.SCHEMA["data"]["kind"][0] == ("choice", CONFIG_KINDS) and set(DATASET_KINDS) < set(CONFIG_KINDS)
    for key in C.model_override_keys():  # every key the config accepts, build_model accepts
        value = {"num_blocks": [1, 1, [2, 1], [2, 1], [2, 2]], "align_corners": False}.get(key, 2 if "num" in key else 8)
        build_model("gcnet-s", num_classes=3, **({"channels": 8, "ppm_channels": 8, "head_channels": 8} | {key: value}))
    with pytest.raises(ConfigError, match="model.name must be one of " + ", ".join(list_models())):
        C.load_config("tiny_synthetic", ["model.name=gcnet-xl"])
    cfg = C.TrainConfig.load("tiny_synthetic", ["data.batch_size=3"])
    assert cfg.data.batch_size == 3 and cfg.model.overrides["channels"] == 8
    assert cfg.to_dict() == C.load_config("tiny_synthetic", ["data.batch_size=3"])
    assert C.TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.eval.evaluate_kwargs() == {"mode": "whole", "crop_size": None, "stride": None, "scales": (1.0,),
                                          "flip": False, "batch_size": 4}
