"""End-to-end timing (frame in, labels and annotated frame out) and `gcnet bench --end-to-end`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from helpers import FakeClock, tiny_model_kwargs

import gcnet
from gcnet.cli import main
from gcnet.data.metadata import default_info
from gcnet.data.synthetic import render_scene
from gcnet.deploy.e2e import STAGES, make_video, measure_end_to_end
from gcnet.deploy.pipeline import build


def test_measure_end_to_end_reports_every_stage(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = gcnet.build_model("gcnet-s", **tiny_model_kwargs(num_classes=5)).eval()
    frame = render_scene(np.random.default_rng(0), (64, 96))[0]
    video = make_video(tmp_path / "v.mp4", frame, frames=6)
    runtime = build(model, "torch").runtime
    res = measure_end_to_end(runtime, video, default_info(5), frames=4, warmup=1, clock=FakeClock(0.01))
    assert set(res["stage_ms"]) == set(STAGES) and res["frames_timed"] == 4 and res["frames"] == 4
    assert all(v is not None and v > 0 for v in res["stage_ms"].values())  # every stage read the clock
    assert res["sequential_ms"] == sum(res["stage_ms"].values())
    assert res["labels_fps"] > 0 and res["overlay_video_fps"] > 0


def test_bench_end_to_end_in_json_and_table(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--size", "64x96", "--forms", "torch-fp32", "--in-process",
                 "--end-to-end", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    e2e = report["results"][0]["end_to_end"]
    assert set(e2e["stage_ms"]) == set(STAGES) and e2e["frames"] == 3
    assert report["config"]["end_to_end"]["frames"] == 3
    assert "labels FPS" in capsys.readouterr().out


def test_bench_keep_artifacts_replaced_only_by_a_complete_run(tmp_path: Path, monkeypatch) -> None:
    """An interrupted (or killed) run leaves the earlier run's kept files as they were; the next complete run
    clears a killed run's staging folder and replaces them, with no per-form output of other forms left."""
    kept = tmp_path / "kept"
    args = ["bench", "--quick", "--in-process", "--threads", "1", "--size", "32x64", "--end-to-end", "2",
            "--keep-artifacts", str(kept), "--no-progress"]
    assert main([*args, "--forms", "torch-fp32-cl"]) == 0
    before = {p.name: p.read_bytes() for p in kept.iterdir()}
    assert {"model_deploy.pt", "e2e.mp4", "out_torch-fp32-cl.npy"} <= set(before)

    def ctrl_c(*_args) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr("gcnet.deploy.bench._result_entry", ctrl_c)
        assert main([*args, "--forms", "torch-fp32"]) == 130
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == before
    (kept / ".stage.99999999-0123abcd.gcnet-tmp").mkdir()  # a killed run's (its process gone)
    assert main([*args, "--forms", "torch-fp32", "onnxruntime-fp32", "--json", str(tmp_path / "report.json")]) == 0
    report = (tmp_path / "report.json").read_text()
    assert "gcnet-tmp" not in report and f'"{kept / "model.onnx"}"' in report  # files named where they are kept
    names = {p.name for p in kept.iterdir()}
    assert "out_torch-fp32.npy" in names and "out_torch-fp32-cl.npy" not in names
    assert not [n for n in names if "gcnet-tmp" in n]
