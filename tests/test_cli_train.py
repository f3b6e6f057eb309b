"""``gcnet train`` / ``gcnet eval`` / ``gcnet demo`` end to end on generated data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gcnet.cli import main

TINY = ["--data.synthetic_size", "[64, 80]", "--data.synthetic_train", "16", "--data.synthetic_val", "4",
        "--data.crop_size", "64", "--data.batch_size", "4", "--data.workers", "0", "--device", "cpu",
        "--no-progress"]


def test_help_lists_every_config_key(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for key in ("--data.root", "--schedule.iters", "--optim.lr", "--loss.min_kept", "--init.load_from", "--resume",
                "--launcher", "--sync-bn", "--amp", "--set"):
        assert key in text
    for cmd in ("eval", "demo"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "examples:" in capsys.readouterr().out


def test_list_presets_and_print_config(capsys):
    assert main(["train", "--list-presets"]) == 0
    out = capsys.readouterr().out
    assert "gcnet-s_cityscapes" in out and "gcnet-l_voc" in out and "gcnet-s_camvid-scratch" in out
    assert main(["train", "gcnet-s_camvid", "--print-config", "--schedule.iters", "77", "--set", "optim.lr=0.02",
                 "--seed", "3", "--data.root=/x"]) == 0
    out = capsys.readouterr().out
    assert "iters = 77" in out and "lr = 0.02" in out and "seed = 3" in out and 'root = "/x"' in out


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    assert main(["train", "gcnet-s_cityscapes", "--schedule.iters", "zero", "--print-config"]) == 2
    assert "schedule.iters must be an integer" in capsys.readouterr().err
    assert main(["train", "no_such_preset"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["train", "gcnet-s_camvid", "--data.root", str(tmp_path / "missing"), "--work-dir",
                 str(tmp_path / "w")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "gcnet-s_camvid", "--data.rooot", "x"]) == 2
    assert "unknown config key data.rooot (did you mean data.root?)" in capsys.readouterr().err
    assert main(["train", "gcnet-s_camvid", "--optim.learning_rate", "1"]) == 2
    err = capsys.readouterr().err
    assert "optim.learning_rate" in err and "unknown" in err
    assert main(["train", "gcnet-s_camvid", "--model.overrides.channels", "8", "--print-config"]) == 0
    assert "channels = 8" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # other commands: argparse's own error
        main(["info", "--nope"])
    assert exc.value.code == 2
    assert main(["eval", str(tmp_path / "nothing.pth")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("mine")
    for flags, message in ((["--resume", str(tmp_path / "gone.pth")], "gone.pth: no such checkpoint or run folder"),
                           (["--resume", "--overwrite"], "give one"),
                           (["tiny_synthetic", "--work-dir", str(tmp_path / "a_file")], "is not a folder")):
        assert main(["train", *flags, "--data.root", str(tmp_path / "data")]) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing generated, nothing written


def test_synthetic_data_is_generated_only_into_a_new_or_empty_folder(tmp_path, capsys):
    (tmp_path / "a_file").write_text("mine")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("mine")
    for root, message in (("a_file", "is a file"), ("project", "holds files but no synthetic dataset")):
        rc = main(["train", "tiny_synthetic", "--data.root", str(tmp_path / root), "--work-dir",
                   str(tmp_path / "run"), *TINY])
        err = capsys.readouterr().err
        assert rc == 2 and f"--data.root {tmp_path / root} {message}" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "a_file", "project", "project/notes.txt"]


def test_synthetic_settings_are_checked_before_anything_is_written(tmp_path, capsys, monkeypatch):
    """Image sizes, image counts and a crop far larger than the images are refused before the data set is
    generated (or, for one already there, before the run starts); a folder that cannot be written is named."""
    import errno

    train = ["train", "tiny_synthetic", "--data.root", str(tmp_path / "data"), "--work-dir", str(tmp_path / "run")]
    for flags, message in ((["--data.synthetic_size", "[15, 15]"], "data.synthetic_size values must be >= 16"),
                           (["--data.synthetic_train", "0"], "data.synthetic_train must be >= 1"),
                           (["--data.synthetic_val", "0"], "data.synthetic_val must be >= 1"),
                           (["--data.crop_size", "[4096, 4096]"], "data.crop_size 4096x4096 is far larger than the "
                                                                  "64x80 training images ever get (at most 96x120")):
        assert main([*train, *TINY, *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert not list(tmp_path.iterdir())

    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "data"))

    with monkeypatch.context() as mp:
        mp.setattr("gcnet.data.synthetic.make_synthetic_dataset", read_only)
        assert main([*train, *TINY]) == 2
    err = capsys.readouterr().err
    assert f"--data.root {tmp_path / 'data'}: cannot generate the synthetic dataset there (Read-only file system)" in err
    assert not list(tmp_path.iterdir())
    # a data set already there: its first image is measured before the run starts
    from gcnet.data.synthetic import make_synthetic_dataset

    make_synthetic_dataset(tmp_path / "data", num_train=2, num_val=1, size=(32, 32))
    assert main([*train, *TINY, "--data.crop_size", "[512, 64]"]) == 2
    assert "512x64 is far larger than the 32x32 training images ever get (at most 48x48" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.slow
def test_train_then_eval_both_forms(tmp_path, capsys):
    work = tmp_path / "run"
    rc = main(["train", "tiny_synthetic", "--data.root", str(tmp_path / "data"), "--work-dir", str(work),
               "--schedule.iters", "30", "--schedule.val_interval", "15", "--schedule.log_interval", "10", *TINY])
    assert rc == 0
    out = capsys.readouterr().out
    assert "iter 30/30" in out and "validation at iteration 30" in out and "mIoU" in out
    assert (work / "best.pth").is_file() and (work / "latest.pth").is_file()

    js = tmp_path / "eval.json"
    rc = main(["eval", str(work / "latest.pth"), "--both-forms", "--json", str(js), "--no-progress",
               "--workers", "0", "--device", "cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "training form mIoU" in out and "Class" in out
    res = json.loads(js.read_text())
    assert res["dataset"] == "synthetic" and res["split"] == "val"  # taken from the run's config
    tr, de = res["results"]["train"], res["results"]["deploy"]
    assert tr["num_images"] == de["num_images"] == 4
    assert abs(tr["mIoU"] - de["mIoU"]) < 0.5  # identical up to float32 rounding of near-ties
    rc = main(["eval", str(work / "latest.pth"), "--both-forms", "--float64", "--no-progress", "--workers", "0"])
    assert rc == 0 and "identical" in capsys.readouterr().out
    assert len(tr["IoU"]) == 5 and 0 <= tr["aAcc"] <= 100

    # explicit dataset options, sliding window + multi-scale + flip
    rc = main(["eval", str(work / "latest.pth"), "--dataset", "synthetic", "--data-root", str(tmp_path / "data"),
               "--mode", "slide", "--crop", "48x48", "--stride", "32", "--scales", "0.75,1.0", "--flip",
               "--reparameterize", "--json", "-", "--no-progress", "--workers", "0", "--limit", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    payload = json.loads(out[out.index("{"):])
    assert payload["mode"] == "slide" and payload["flip"] is True and list(payload["results"]) == ["deploy"]
    assert payload["results"]["deploy"]["num_images"] == 2

    # resume a finished run, even with fewer iterations: nothing to do, and nothing in the run changes
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in work.rglob("*") if p.is_file()}
    for extra in ([], ["--schedule.iters", "1"]):
        assert main(["train", "--resume", "--work-dir", str(work), "--no-progress", *extra]) == 0
        assert "nothing to do" in capsys.readouterr().out
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in work.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_train_bf16_channels_last_on_cpu(tmp_path, capsys):
    work = tmp_path / "run"
    rc = main(["train", "tiny_synthetic", "--data.root", str(tmp_path / "data"), "--work-dir", str(work),
               "--schedule.iters", "6", "--schedule.val_interval", "6", "--schedule.log_interval", "3", "--amp",
               "--runtime.channels_last", "true", *TINY])
    assert rc == 0
    out = capsys.readouterr().out
    assert "amp bf16, channels_last" in out and "iter 6/6" in out and "mIoU" in out
    from gcnet import load_model

    model = load_model(work / "latest.pth")  # an ordinary fp32 checkpoint
    assert all(p.dtype == torch.float32 for p in model.parameters())
    miou = {}
    for flags in ([], ["--amp"]):  # evaluation under bf16 autocast on the CPU too
        js = tmp_path / f"eval{len(flags)}.json"
        assert main(["eval", str(work / "latest.pth"), "--no-progress", "--workers", "0", "--json", str(js),
                     *flags]) == 0
        miou[len(flags)] = json.loads(js.read_text())["results"]["train"]["mIoU"]
    assert abs(miou[0] - miou[1]) < 5.0
    assert main(["train", "tiny_synthetic", "--data.root", str(tmp_path / "data"), "--work-dir", str(tmp_path / "w2"),
                 "--amp", "--runtime.amp_dtype", "fp16", *TINY]) == 2
    assert "fp16 needs CUDA" in capsys.readouterr().err


def test_eval_of_an_authors_style_state_dict_needs_model_and_classes(tmp_path, capsys):
    from helpers import tiny_model_kwargs

    from gcnet import build_model

    model = build_model("gcnet-s", **tiny_model_kwargs(5))
    path = tmp_path / "bare.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {}}, path)
    assert main(["eval", str(path), "--dataset", "synthetic", "--data-root", str(tmp_path)]) == 2
    assert "--model" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--iters", "40", "--no-progress", "--num-overlays", "2"]) == 0
    text = capsys.readouterr().out
    assert "-> identical" in text and "faster" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mIoU"]["identical"] and summary["train"]["iterations"] == 40
    assert len(list((out / "overlays").glob("*.png"))) == 2
    # interrupted while training: the earlier demo's results stay as they were
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def ctrl_c(*_args) -> None:
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("gcnet.engine.trainer.Trainer._finish", ctrl_c)
        assert main(["demo", "--out", str(out), "--iters", "3", "--no-progress"]) == 130
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # a killed demo's staging folder (its process gone) is cleared; the run then replaces the earlier files,
    # with no panels of the earlier run left over
    (out / ".stage.99999999-0123abcd.gcnet-tmp" / "train").mkdir(parents=True)
    assert main(["demo", "--out", str(out), "--iters", "2", "--no-progress", "--num-overlays", "0"]) == 0
    assert json.loads((out / "summary.json").read_text())["train"]["iterations"] == 2
    assert not list((out / "overlays").glob("*.png"))
    assert sorted(p.name for p in out.iterdir()) == [".gcnet-demo", "data", "overlays", "summary.json", "train"]
    assert json.loads((out / "train" / "summary.json").read_text())["work_dir"] == str(out / "train")
    with pytest.raises(SystemExit) as exit_:  # --minutes and --iters: one or the other
        main(["demo", "--out", str(out), "--iters", "2", "--minutes", "1"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


# ------------------------------------------------------------------ nothing a user made is ever lost (issue 9)
def _train(tmp_path, work, *extra: str) -> int:
    """``gcnet train`` of the tiny preset on 16 generated images; 6 iterations, a checkpoint every 2."""
    return main(["train", "tiny_synthetic", "--data.root", str(tmp_path / "data"), "--work-dir", str(work),
                 "--schedule.iters", "6", "--schedule.ckpt_interval", "2", "--schedule.val_interval", "0",
                 "--schedule.log_interval", "2", "--loss.min_kept", "1000", *TINY, *extra])


def _ckpt(path) -> dict:
    return torch.load(path, weights_only=True)


def test_overwrite_of_a_longer_run_moves_its_files_and_keeps_the_new_ones(tmp_path, capsys):
    work = tmp_path / "run"
    assert _train(tmp_path, work, "--schedule.keep_ckpts", "0", "--schedule.val_interval", "2") == 0
    old_id = _ckpt(work / "latest.pth")["run_id"]
    assert _train(tmp_path, work, "--schedule.iters", "4") == 2  # refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert _train(tmp_path, work, "--schedule.iters", "4", "--schedule.keep_ckpts", "1", "--overwrite") == 0
    out = capsys.readouterr().out
    assert "moved the earlier files" in out and "replaced-" in out
    new_id = _ckpt(work / "latest.pth")["run_id"]
    assert new_id != old_id
    assert sorted(p.name for p in work.glob("iter_*.pth")) == ["iter_4.pth"]  # the new run's newest
    assert _ckpt(work / "iter_4.pth")["run_id"] == new_id
    assert _ckpt(work / "best.pth")["run_id"] == new_id  # the old run's best.pth is not passed off as new
    (moved,) = work.glob("replaced-*")
    assert {"iter_2.pth", "iter_4.pth", "iter_6.pth", "latest.pth", "best.pth", "config.toml"} <= {
        p.name for p in moved.iterdir()}
    assert _ckpt(moved / "iter_6.pth")["run_id"] == old_id


def test_resume_from_an_earlier_checkpoint_of_a_finished_run(tmp_path, capsys):
    work = tmp_path / "run"
    assert _train(tmp_path, work, "--schedule.keep_ckpts", "0") == 0
    assert main(["train", "--resume", str(work / "iter_2.pth"), "--work-dir", str(work), "--schedule.keep_ckpts", "2",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "moved the earlier files" in out
    # the continuation's checkpoints survive pruning; the abandoned ones were moved, not deleted
    assert sorted(p.name for p in work.glob("iter_*.pth")) == ["iter_4.pth", "iter_6.pth"]
    run_id = _ckpt(work / "latest.pth")["run_id"]
    assert _ckpt(work / "iter_4.pth")["run_id"] == run_id and _ckpt(work / "latest.pth")["iteration"] == 6
    (moved,) = work.glob("replaced-*")
    assert {"iter_4.pth", "iter_6.pth", "latest.pth"} <= {p.name for p in moved.iterdir()}


def test_resume_into_a_new_work_dir_takes_the_checkpoints_config(tmp_path, capsys):
    work = tmp_path / "run"
    assert _train(tmp_path, work, "--schedule.keep_ckpts", "0") == 0
    before = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}
    assert main(["train", "--resume", str(work / "iter_2.pth"), "--work-dir", str(tmp_path / "branch"),
                 "--no-progress"]) == 0
    assert _ckpt(tmp_path / "branch" / "latest.pth")["iteration"] == 6
    assert {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()} == before  # the original run untouched


def test_refused_resume_changes_nothing_and_names_the_checkpoint(tmp_path, capsys):
    work = tmp_path / "run"
    assert _train(tmp_path, work, "--schedule.iters", "2") == 0
    before = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}
    capsys.readouterr()
    rc = main(["train", "tiny_synthetic", "--resume", "--work-dir", str(work), "--model.overrides.channels", "16",
               "--data.root", str(tmp_path / "data"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"cannot resume from {work / 'latest.pth'}" in err and "state dict" not in err
    assert {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()} == before
    assert main(["train", "--resume", "--work-dir", str(work), "--schedule.iters", "4", "--no-progress"]) == 0
    assert _ckpt(work / "latest.pth")["iteration"] == 4


def test_a_full_disk_while_checkpointing_keeps_the_earlier_checkpoints(tmp_path, capsys, monkeypatch):
    import errno

    real_save, calls = torch.save, {"n": 0}

    def failing_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the checkpoint of iteration 4: half written, then the disk is full
            Path(f).write_bytes(b"\0" * 100) if isinstance(f, (str, Path)) else f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    work = tmp_path / "run"
    monkeypatch.setattr(torch, "save", failing_save)
    assert _train(tmp_path, work) == 2
    err = capsys.readouterr().err
    assert f"could not write checkpoint {work / 'latest.pth'}: disk full?" in err and "--resume" in err
    assert len(err.strip().splitlines()) <= 2
    monkeypatch.setattr(torch, "save", real_save)
    assert _ckpt(work / "latest.pth")["iteration"] == 2
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []  # no temporary files left
    assert main(["train", "--resume", "--work-dir", str(work), "--no-progress"]) == 0
    assert _ckpt(work / "latest.pth")["iteration"] == 6


def test_train_and_eval_scan_the_data_first(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from gcnet.data.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "data", num_train=8, num_val=4, size=(64, 80), seed=0)
    bad = sorted((root / "labels" / "val").glob("*.png"))[1]
    Image.fromarray(np.full((64, 80), 9, dtype=np.uint8)).save(bad)  # class 9 of 5
    work = tmp_path / "run"
    assert _train(tmp_path, work) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "--skip-data-check" in err
    assert not work.exists()  # refused before anything was written
    assert _train(tmp_path, work, "--schedule.iters", "2", "--skip-data-check", "--data.val_split", "") == 0
    capsys.readouterr()
    summary = json.loads((work / "summary.json").read_text())
    assert summary["best"] is None and summary["final"] is None  # no validation: no made-up best
    assert main(["eval", str(work / "latest.pth"), "--no-progress", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "--skip-data-check" in err


@pytest.mark.parametrize("command", ["train", "eval", "demo"])
def test_negative_threads_is_a_short_error(tmp_path, capsys, command):
    args = {"train": ["train", "tiny_synthetic", "--work-dir", str(tmp_path / "w")],
            "eval": ["eval", str(tmp_path / "x.pth")], "demo": ["demo", "--out", str(tmp_path / "d")]}[command]
    with pytest.raises(SystemExit) as exit_:  # argparse rejects it while parsing: usage error, status 2
        main([*args, "--threads", "-3"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) <= 2 and "--threads" in err[0] and "positive integer" in err[0]
    assert not (tmp_path / "w").exists() and not (tmp_path / "d").exists()


def test_checkpoints_carry_the_dataset_metadata_for_predict(tmp_path):
    """Class names and palette travel in latest/best.pth, so predict colours them without flags."""
    from gcnet.checkpoint import checkpoint_dataset_info

    work = tmp_path / "run"
    assert _train(tmp_path, work) == 0
    for name in ("latest.pth", "best.pth"):
        info = checkpoint_dataset_info(work / name)
        assert info is not None and info.num_classes == 5 and len(info.palette) == 5


def test_demo_never_touches_a_folder_it_did_not_write(tmp_path, capsys):
    """The demo replaces an earlier demo's files in --out, so it refuses a folder an earlier demo did not
    make (even one whose entries have the demo's names: a project with data/ and train/) or that holds
    anything else."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "my_dataset.txt").write_text("mine")
    assert main(["demo", "--out", str(project), "--iters", "1"]) == 2
    err = capsys.readouterr().err
    assert "is not empty (data) and has no .gcnet-demo mark of an earlier run of the demo" in err
    assert len(err.strip().splitlines()) <= 2
    assert sorted(p.name for p in project.rglob("*")) == ["data", "my_dataset.txt"]

    earlier = tmp_path / "demo"
    (earlier / "train").mkdir(parents=True)
    (earlier / ".gcnet-demo").write_text("")
    (earlier / "train" / "latest.pth").write_bytes(b"a demo checkpoint")  # an earlier demo's: may be replaced
    (earlier / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(earlier), "--iters", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds files the demo did not write (notes.txt)" in err and len(err.strip().splitlines()) <= 2
    assert (earlier / "notes.txt").read_text() == "mine"
    assert (earlier / "train" / "latest.pth").read_bytes() == b"a demo checkpoint"

    linked = tmp_path / "linked"  # a marked folder whose entry links elsewhere: refused, the target untouched
    linked.mkdir()
    (linked / ".gcnet-demo").write_text("")
    (linked / "data").symlink_to(project / "data")
    assert main(["demo", "--out", str(linked), "--iters", "1"]) == 2
    assert "holds symbolic links (data)" in capsys.readouterr().err
    assert (project / "data" / "my_dataset.txt").read_text() == "mine"


def test_eval_refuses_model_flags_for_a_checkpoint_with_its_own_config(tmp_path, capsys):
    from helpers import tiny_model_kwargs

    from gcnet import build_model
    from gcnet.checkpoint import save_checkpoint

    path = tmp_path / "ours.pth"
    save_checkpoint(path, build_model("gcnet-s", **tiny_model_kwargs(5)))
    for flags, said in ((["--num-classes", "3"], "--num-classes goes"), (["--model", "gcnet-m"], "--model goes"),
                        (["--model", "gcnet-m", "--num-classes", "3"], "--model and --num-classes go")):
        assert main(["eval", str(path), *flags, "--dataset", "synthetic", "--data-root", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert said in err and "carries its own model and classes" in err and "Traceback" not in err


def test_resume_refusals_name_the_newest_checkpoint_to_pass_instead(tmp_path, capsys):
    work = tmp_path / "run"
    assert _train(tmp_path, work, "--schedule.iters", "4", "--schedule.keep_ckpts", "0") == 0
    capsys.readouterr()
    (tmp_path / "e3.log").write_text("iteration 4: loss 0.5\n")
    assert main(["train", "--resume", str(tmp_path / "e3.log"), "--work-dir", str(work), "--no-progress"]) == 2
    assert f"cannot resume from {tmp_path / 'e3.log'}: not a checkpoint" in capsys.readouterr().err
    latest = work / "latest.pth"
    latest.unlink()
    latest.write_bytes((work / "iter_4.pth").read_bytes()[:1000])  # truncated, iter_4.pth intact
    before = {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()}
    assert main(["train", "--resume", "--work-dir", str(work), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{latest}: not a readable" in err and f"--resume {work / 'iter_4.pth'}" in err and "Traceback" not in err
    latest.unlink()
    assert main(["train", "--resume", "--work-dir", str(work), "--no-progress"]) == 2
    assert (f"cannot resume: {latest} does not exist; resume from the newest other checkpoint there: --resume "
            f"{work / 'iter_4.pth'}") in capsys.readouterr().err
    before.pop("latest.pth")
    assert {p.name: p.read_bytes() for p in work.iterdir() if p.is_file()} == before
