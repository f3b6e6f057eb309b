"""Training loop: schedule, sampler, checkpoints, exact resume after a SIGKILL, non-finite loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FakeClock

from gcnet import fileio
from gcnet.engine.builders import load_init_weights
from gcnet.engine.config import load_config
from gcnet.engine.sampler import InfiniteBatchSampler, SeededTrainSet
from gcnet.engine.trainer import NonFiniteLossError, Trainer, poly_lr
from gcnet.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[1]


def tiny_cfg(root: Path, **extra) -> dict:
    """The tiny_synthetic preset, made smaller still: 16 train / 4 val images of 64x80."""
    overrides = {
        "data.root": str(root), "data.synthetic_size": [64, 80], "data.synthetic_train": 16, "data.synthetic_val": 4,
        "data.crop_size": [64, 64], "data.batch_size": 4, "data.workers": 0, "schedule.iters": 6,
        "schedule.val_interval": 3, "schedule.ckpt_interval": 3, "schedule.log_interval": 2, "runtime.device": "cpu",
        "eval.batch_size": 2,
    }
    overrides.update(extra)
    return load_config("tiny_synthetic", overrides)


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def test_poly_lr_matches_mmseg_polylr():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 100, 100) == 0.0
    assert poly_lr(0.01, 50, 100, power=0.9) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 100, 100, min_lr=1e-4) == pytest.approx(1e-4)
    assert poly_lr(0.01, 30, 100, power=1.0, min_lr=1e-3) == pytest.approx(1e-3 + 0.009 * 0.7)


def test_sampler_is_a_pure_function_of_the_iteration_and_shards_epochs():
    s = InfiniteBatchSampler(10, batch_size=3, seed=5)
    first = [s.batch(i) for i in range(8)]
    assert [b for b, _ in zip(iter(InfiniteBatchSampler(10, 3, seed=5, start_iter=4)), range(4))] == first[4:]
    keys = [k for b in first for k in b]
    assert sorted(i for e, i in keys if e == 0) == list(range(10))  # an epoch is a permutation
    assert [i for e, i in keys if e == 0] != [i for e, i in keys if e == 1]  # reshuffled per epoch
    assert InfiniteBatchSampler(10, 3, seed=6).batch(0) != first[0]
    assert s.state(4) == {"seed": 5, "epoch": 1, "position": 2, "iteration": 4, "batch_size": 3,
                          "world_size": 1, "dataset_len": 10}
    # two ranks: disjoint halves of the same (padded) permutation each epoch
    r0 = InfiniteBatchSampler(7, 2, seed=1, rank=0, world_size=2)
    r1 = InfiniteBatchSampler(7, 2, seed=1, rank=1, world_size=2)
    e0 = [i for it in range(2) for _, i in r0.batch(it)]
    e1 = [i for it in range(2) for _, i in r1.batch(it)]
    assert set(e0) | set(e1) == set(range(7)) and len(e0) == len(e1) == 4


def test_augmentation_depends_only_on_seed_epoch_and_index():
    from gcnet.data.transforms import TrainTransform

    rng = np.random.default_rng(0)
    base = [(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8), rng.integers(0, 3, (40, 50))) for _ in range(3)]
    ds = SeededTrainSet(base, TrainTransform((32, 32), cat_max_ratio=1.0), seed=7)
    a = ds[(2, 1)]
    ds[(0, 0)]
    b = ds[(2, 1)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = ds[(3, 1)]
    assert not torch.equal(a[0], c[0])


def test_training_writes_checkpoints_metrics_and_config(tmp_path):
    cfg = tiny_cfg(tmp_path / "data", **{"schedule.keep_ckpts": 1})
    work = tmp_path / "run"
    summary = Trainer(cfg, work, progress=False, log=lambda m: None).run()
    assert summary["iterations"] == 6 and summary["final"] is not None
    names = sorted(p.name for p in work.iterdir())
    assert {"config.toml", "latest.pth", "best.pth", "iter_6.pth", "metrics.jsonl", "summary.json"} <= set(names)
    assert "iter_3.pth" not in names  # keep_ckpts = 1
    assert not [n for n in names if fileio.TMP_MARKER in n or n.endswith(".tmp")]
    ckpt = torch.load(work / "latest.pth", weights_only=True)  # safe format
    assert ckpt["format"] == "gcnet" and ckpt["iteration"] == 6 and "optimizer" in ckpt
    assert ckpt["sampler"]["iteration"] == 6 and ckpt["train_config"]["schedule"]["iters"] == 6
    best = torch.load(work / "best.pth", weights_only=True)
    assert best["best"]["mIoU"] == summary["best"]["mIoU"]
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if r["type"] == "train"]
    val_recs = [r for r in records if r["type"] == "val"]
    assert [r["iter"] for r in train_recs] == [2, 4, 6] and [r["iter"] for r in val_recs] == [3, 6]
    assert all(np.isfinite(r["loss"]) and r["lr"] > 0 for r in train_recs)
    assert set(val_recs[0]["IoU"]) == {"sky", "road", "box", "ball", "stripes"}
    assert load_config(work / "config.toml") == cfg
    # the model loads back (ours, with the config inside)
    from gcnet import load_model

    model = load_model(work / "latest.pth")
    assert model.num_classes == 5
    # starting again in the same folder without --resume is refused
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(cfg, work, progress=False, log=lambda m: None).run()


def _run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gcnet.cli", "train", *args], env=subprocess_env(),
                          capture_output=True, text=True, check=False, timeout=timeout)


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_uninterrupted_run(tmp_path):
    """A real training process is SIGKILLed right after its iteration-4 checkpoint; --resume then
    finishes the schedule; parameters, buffers and optimizer state equal an uninterrupted run's."""
    data = tmp_path / "data"
    common = ["tiny_synthetic", "--data.root", str(data), "--data.synthetic_size", "[64, 80]",
              "--data.synthetic_train", "16", "--data.synthetic_val", "4", "--data.crop_size", "[64, 64]",
              "--data.batch_size", "4", "--data.workers", "1", "--schedule.iters", "8",
              "--schedule.ckpt_interval", "4", "--schedule.val_interval", "4", "--schedule.log_interval", "1",
              "--device", "cpu", "--threads", "1", "--no-progress"]
    straight = _run_cli(common + ["--work-dir", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr

    killed = _run_cli(common + ["--work-dir", str(tmp_path / "killed"), "--debug-kill-at", "5",
                                "--schedule.ckpt_interval", "4"])
    assert killed.returncode == -9, killed.stderr  # SIGKILL: no cleanup ran
    ck = torch.load(tmp_path / "killed" / "latest.pth", weights_only=True)
    assert ck["iteration"] == 5  # the hook checkpoints, then dies

    from gcnet.fileio import TMP_MARKER

    # what a writer killed mid-write leaves (its process id is gone; 2**22 is above any Linux pid_max)
    stale = tmp_path / "killed" / f".latest.{2**22 + 7}-0123abcd{TMP_MARKER}.pth"
    stale.write_bytes(b"")
    resumed = _run_cli(common + ["--work-dir", str(tmp_path / "killed"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert not stale.exists()

    a = torch.load(tmp_path / "straight" / "latest.pth", weights_only=True)
    b = torch.load(tmp_path / "killed" / "latest.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 8
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], atol=1e-6, rtol=0, msg=k)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        torch.testing.assert_close(sa["momentum_buffer"], sb["momentum_buffer"], atol=1e-6, rtol=0)
    assert a["best"] == b["best"]
    # metrics.jsonl holds each iteration once, even though the killed run logged past its checkpoint
    iters = [json.loads(x)["iter"] for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "train"]
    assert iters == list(range(1, 9))


def test_resume_from_an_earlier_checkpoint_in_process(tmp_path):
    """Simulated crash: roll latest.pth back to iteration 2 (as if the process died there), resume."""
    import shutil

    cfg = tiny_cfg(tmp_path / "data", **{"schedule.iters": 4, "schedule.ckpt_interval": 2,
                                          "schedule.val_interval": 0, "schedule.keep_ckpts": 0})
    quiet = {"progress": False, "log": lambda m: None}
    Trainer(cfg, tmp_path / "run", **quiet).run()
    final = torch.load(tmp_path / "run" / "latest.pth", weights_only=True)["state_dict"]
    shutil.copyfile(tmp_path / "run" / "iter_2.pth", tmp_path / "run" / "latest.pth")
    summary = Trainer(cfg, tmp_path / "run", resume=True, **quiet).run()
    assert summary["start_iteration"] == 2 and summary["iterations"] == 4
    again = torch.load(tmp_path / "run" / "latest.pth", weights_only=True)["state_dict"]
    for k in final:
        assert torch.equal(final[k], again[k]), k
    with pytest.raises(CheckpointError, match="cannot resume"):
        Trainer(cfg, tmp_path / "empty", resume=True, **quiet).run()


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    from gcnet.engine.losses import GCNetLoss, OhemCrossEntropy

    real = GCNetLoss(OhemCrossEntropy(min_kept=1000), aux_weight=0.4)
    calls = {"n": 0}

    def exploding(outputs, labels):
        calls["n"] += 1
        loss, parts = real(outputs, labels)
        if calls["n"] == 3:
            loss = loss * float("nan")
        return loss, parts

    cfg = tiny_cfg(tmp_path / "data", **{"schedule.ckpt_interval": 2, "schedule.val_interval": 0})
    work = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"not finite at iteration 3 .*last good checkpoint") as err:
        Trainer(cfg, work, progress=False, criterion=exploding, log=lambda m: None).run()
    assert "optim.lr" in str(err.value)
    ck = torch.load(work / "latest.pth", weights_only=True)
    assert ck["iteration"] == 2
    assert all(torch.isfinite(v.float()).all() for v in ck["state_dict"].values())


def test_time_budget_ends_the_run_with_the_lr_annealed(tmp_path):
    cfg = tiny_cfg(tmp_path / "data", **{"schedule.iters": 100000, "schedule.time_budget_min": 0.05,
                                          "schedule.val_interval": 0, "schedule.ckpt_interval": 0,
                                          "schedule.log_interval": 1})
    clock = FakeClock(0.25)  # every reading 0.25 s later: the 3 s budget ends the run after a few iterations
    summary = Trainer(cfg, tmp_path / "run", progress=False, log=lambda m: None, clock=clock).run()
    assert 2 <= summary["iterations"] <= 12
    assert 3.0 <= summary["train_time_s"] <= 4.0
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in recs if r["type"] == "train"]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.5 * lrs[0]


def test_init_from_weights_with_a_different_number_of_classes(tmp_path):
    from helpers import tiny_model_kwargs

    from gcnet import build_model, save_checkpoint

    src = build_model("gcnet-s", **tiny_model_kwargs(19))
    path = save_checkpoint(tmp_path / "city.pth", src)
    dst = build_model("gcnet-s", **tiny_model_kwargs(11))
    before = dst.decode_head.conv_seg.weight.clone()
    skipped = load_init_weights(dst, str(path), log=lambda m: None)
    classifiers = ("conv_seg", "aux_cls_seg_c4")
    assert sorted(skipped) == sorted(f"decode_head.{m}.{p}" for m in classifiers for p in ("weight", "bias"))
    src_sd, dst_sd = src.state_dict(), dst.state_dict()
    for k in dst_sd:
        if k not in skipped:
            assert torch.equal(dst_sd[k], src_sd[k]), k
    assert torch.equal(dst.decode_head.conv_seg.weight, before)  # classifier left at its initialisation
    same = build_model("gcnet-s", **tiny_model_kwargs(19))
    assert load_init_weights(same, str(path), log=lambda m: None) == []
    other = build_model("gcnet-s", **{**tiny_model_kwargs(19), "channels": 16})
    with pytest.raises(CheckpointError):
        load_init_weights(other, str(path), log=lambda m: None)


def _loss_that_spoils_a_val_label(label_path: Path | None):
    """The usual loss; on its first call it writes class 9 (of 5) into ``label_path``, as if the file went bad
    after the run started."""
    from gcnet.engine.losses import GCNetLoss, OhemCrossEntropy

    real = GCNetLoss(OhemCrossEntropy(min_kept=1000), aux_weight=0.4)

    def loss(outputs, labels):
        if label_path is not None and not loss.spoiled:
            from PIL import Image

            Image.fromarray(np.full((64, 80), 9, dtype=np.uint8)).save(label_path)
            loss.spoiled = True
        return real(outputs, labels)

    loss.spoiled = False
    return loss


def test_a_failed_validation_loses_no_training_and_resume_redoes_it(tmp_path):
    cfg = tiny_cfg(tmp_path / "data", **{"schedule.iters": 4, "schedule.val_interval": 2, "schedule.ckpt_interval": 4})
    quiet = {"progress": False, "log": lambda m: None}
    straight = Trainer(cfg, tmp_path / "straight", criterion=_loss_that_spoils_a_val_label(None), **quiet)
    straight.run()
    label = sorted((tmp_path / "data" / "labels" / "val").glob("*.png"))[0]
    good = label.read_bytes()
    work = tmp_path / "run"
    from gcnet.errors import DatasetError

    with pytest.raises(DatasetError, match=r"(?s)validation at iteration 2 failed.*--resume"):
        Trainer(cfg, work, criterion=_loss_that_spoils_a_val_label(label), **quiet).run()
    ck = torch.load(work / "latest.pth", weights_only=True)
    assert ck["iteration"] == 2 and ck["pending_val"] is True  # written before the validation
    assert not (work / "iter_2.pth").exists()  # not a ckpt_interval iteration: latest.pth only
    label.write_bytes(good)  # the user fixes the file and resumes: the validation of iteration 2 is redone
    summary = Trainer(cfg, work, resume=True, criterion=_loss_that_spoils_a_val_label(None), **quiet).run()
    assert summary["iterations"] == 4
    vals = [json.loads(x)["iter"] for x in (work / "metrics.jsonl").read_text().splitlines()
            if json.loads(x)["type"] == "val"]
    assert vals == [2, 4]
    a = torch.load(tmp_path / "straight" / "latest.pth", weights_only=True)
    b = torch.load(work / "latest.pth", weights_only=True)
    assert a["best"] == b["best"] and b["pending_val"] is False
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


@pytest.mark.slow
@pytest.mark.parametrize("signame,status,word,group", [("SIGINT", 130, "interrupted", False),
                                                      ("SIGTERM", 143, "terminated", False),
                                                      ("SIGTERM", 143, "terminated", True)],
                         ids=["ctrl-c", "kill", "timeout-to-the-group"])
def test_ctrl_c_says_how_to_resume(tmp_path, signame, status, word, group):
    """Ctrl-C, and SIGTERM (kill, timeout, a job scheduler) handled the same way: the run stops after a
    checkpoint and says how to resume. ``group``: the signal goes to the whole process group (as from
    ``timeout`` or a scheduler), DataLoader workers included, who leave the stop to the main process."""
    import signal
    import time

    work = tmp_path / "run"
    cmd = [sys.executable, "-m", "gcnet.cli", "train", "tiny_synthetic", "--data.root", str(tmp_path / "data"),
           "--data.synthetic_size", "[64, 80]", "--data.synthetic_train", "8", "--data.synthetic_val", "2",
           "--data.crop_size", "64", "--data.batch_size", "2", "--data.workers", "2" if group else "0",
           "--schedule.iters", "100000",
           "--schedule.ckpt_interval", "2", "--schedule.val_interval", "0", "--device", "cpu", "--threads", "1",
           "--no-progress", "--work-dir", str(work)]
    # a shell's background job inherits SIGINT ignored (then Ctrl-C is not ours to handle): start the run as a
    # terminal would, with SIGINT at its default
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), start_new_session=group)
    try:
        deadline = time.monotonic() + 240
        while not (work / "latest.pth").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1]  # still training (its workers up: it checkpointed)
        if group:
            os.killpg(proc.pid, getattr(signal, signame))
        else:
            proc.send_signal(getattr(signal, signame))
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert "interrupted after iteration" in out and f"gcnet train --resume --work-dir {work}" in out
    assert f"gcnet train: {word}" in err and "Traceback" not in err
