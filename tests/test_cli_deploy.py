"""CLI: gcnet predict / export / bench (exit codes, files, documented JSON keys)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import FakeClock, tiny_model_kwargs, write_video
from PIL import Image

import gcnet
from gcnet.cli import main
from gcnet.deploy.bench import recalibrate_bn, timed_runs


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    """Run ``gcnet`` in its own process, as a user does. The OpenVINO / ONNX Runtime / NNCF thread pools
    those commands start must not live on in the test process: forking DataLoader workers after them
    (later tests) is unsafe."""
    return subprocess.run([sys.executable, "-m", "gcnet.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = recalibrate_bn(gcnet.build_model("gcnet-s", **tiny_model_kwargs(num_classes=5)), size=(64, 96))
    return gcnet.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model)


@pytest.mark.parametrize("cmd", ["predict", "export", "bench"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([cmd, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert len(text) > 1000
    if cmd == "predict":
        assert "skipped" in text and "exit status" in text
    if cmd == "bench":
        assert "openvino-int8" in text and "median" in text


def test_predict_folder_with_corrupt_file(checkpoint, tmp_path, capsys):
    src = tmp_path / "imgs"
    (src / "nested").mkdir(parents=True)
    for i, name in enumerate(["one.png", "nested/two.jpg"]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(src / name)
    (src / "bad.png").write_bytes(b"not an image at all")
    out = tmp_path / "pred"
    code = main(["predict", str(src), "--checkpoint", str(checkpoint), "--out", str(out), "--no-progress",
                 "--dataset", "synthetic", "--device", "cpu"])
    out_text, err = capsys.readouterr()
    assert code == 1
    assert "bad.png" in err
    assert "wrote 4 file(s) for 2 of 3 input(s)" in out_text  # the skipped input counted too
    assert (out / "one_label.png").is_file() and (out / "one_overlay.png").is_file()
    assert (out / "nested" / "two_label.png").is_file()
    assert not (out / "bad_label.png").exists()
    code = main(["predict", str(src / "one.png"), "--checkpoint", str(checkpoint), "--out", str(out),
                 "--no-progress", "--no-overlay", "--device", "cpu", "--precision", "fp16"])
    out_text, err = capsys.readouterr()
    assert code == 0
    assert "1 image(s) at" in out_text and "note: --precision fp16 on the CPU is emulated" in err


def test_predict_usage_errors(checkpoint, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32)).save(images / "a.png")
    assert main(["predict", str(images), "--out", str(tmp_path / "o")]) == 2
    assert "no model given" in capsys.readouterr().err
    assert main(["predict", str(images), "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert main(["predict", str(images), "--checkpoint", str(checkpoint), "--num-classes", "7"]) == 2
    assert "--num-classes goes with --model" in capsys.readouterr().err
    assert main(["predict", str(images), "--checkpoint", str(checkpoint), "--dataset", "cityscapes"]) == 2
    assert "classes" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty"), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no images or videos to predict" in err and "a folder without images" in err and not (tmp_path / "o").exists()
    assert main(["predict", str(tmp_path / "missing.png"), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]) == 2
    assert "missing.png: no such file or directory" in capsys.readouterr().err
    assert main(["predict", str(images), "--checkpoint", str(checkpoint), "--out", ""]) == 2
    assert "--out: the path is empty" in capsys.readouterr().err
    for out in (images, tmp_path):  # the input folder itself, or a folder holding it
        assert main(["predict", str(images), "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
        assert f"--out {out}: shares the input folder {images}" in capsys.readouterr().err
    (images / "a_label.png").write_bytes((images / "a.png").read_bytes())  # e.g. a ground truth kept by its image
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    assert main(["predict", str(images / "a.png"), "--checkpoint", str(checkpoint), "--out", str(images)]) == 2
    assert f"--out {images}: shares the folder of the input {images / 'a.png'}" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before


def test_export_torchscript(checkpoint, tmp_path):
    out = tmp_path / "exp"
    code = main(["export", str(checkpoint), "--format", "torchscript", "--out", str(out),
                 "--input-size", "64x96", "--json", str(out / "report.json")])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["exports"]["torchscript"]["max_abs_diff"] < 1e-3
    assert (out / "tiny.ts").is_file()
    assert main(["export", str(checkpoint), "--format", "torchscript", "--out", str(out), "--input-size", "64x96",
                 "--name", "m.ts"]) == 0
    assert (out / "m.ts").is_file() and not (out / "m.ts.ts").exists()  # the format's suffix is not doubled


def test_export_errors(checkpoint, tmp_path, capsys):
    assert main(["export", "--format", "onnx"]) == 2
    assert main(["export", "--checkpoint", str(checkpoint), "--precision", "int8", "--format", "onnx"]) == 2
    assert "calibration" in capsys.readouterr().err
    base = ["export", str(checkpoint), "--format", "openvino", "--precision", "int8", "--calib-images", "."]
    assert main([*base, "--float-convs", "2"]) == 2
    assert "--float-convs tune post-training quantization; add --finetune-iters 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*base, "--finetune-iters", "-1"])
    assert exc.value.code == 2 and "--finetune-iters" in capsys.readouterr().err
    for flag, value, message in (("--opset", "99", "--opset must be from 17 to"),
                                 ("--tolerance", "-1", "--tolerance must be a number >= 0"),
                                 ("--tolerance", "nan", "--tolerance must be a number >= 0"),
                                 ("--name", "../up", "must be a plain file name")):
        assert main(["export", str(checkpoint), flag, value, "--out", str(tmp_path / "out")]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags,message", [
    (["--format", "torchscript", "--postprocess"], "--postprocess changes the ONNX graph only"),
    (["--format", "safetensors", "--static"], "--static fixes the input shape of ONNX and torch.export files only"),
    (["--precision", "int8", "--calib-images", "{tmp}", "--calib-dataset", "folder", "--calib-root", "{tmp}"],
     "--calib-images and --calib-dataset, --calib-root both choose the calibration data"),
    (["--calib-images", "{tmp}", "--finetune-iters", "10", "--num-calib", "3"],
     "--calib-images, --num-calib, --finetune-iters: for int8 quantization only; add --precision int8"),
    (["--quant-preset", "mixed"], "--quant-preset: for int8 quantization only; add --precision int8"),
    (["--precision", "int8", "--calib-images", "{tmp}", "--float-convs", "0"],
     "--float-convs: for OpenVINO int8 only; add --format openvino"),
])
def test_export_refuses_flags_it_would_ignore(checkpoint, tmp_path, capsys, flags, message):
    out = tmp_path / "exp"
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(out),
                 *[f.format(tmp=tmp_path) for f in flags]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("formats, in_the_way, message", [
    (["safetensors"], "y/data.txt", "holds files the export did not write (data.txt)"),
    (["onnx", "safetensors"], "y.onnx/keep.txt", "a folder {out}/y.onnx is in the way"),
    (["onnx", "safetensors"], "y", "a file {out}/y is in the way of the safetensors folder"),
])
def test_export_never_replaces_what_is_in_the_way(checkpoint, tmp_path, capsys, formats, in_the_way, message):
    """A folder where a file goes, a file where the safetensors folder goes, or a folder of that name holding the
    user's files: refused before any work, nothing written or removed."""
    out = tmp_path / "exp"
    (out / in_the_way).parent.mkdir(parents=True, exist_ok=True)
    (out / in_the_way).write_text("mine")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert main(["export", str(checkpoint), "--format", *formats, "--out", str(out), "--name", "y"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(out=out) in err[0], err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before and (out / in_the_way).read_text() == "mine"


def _json_cases(tmp_path, checkpoint):
    """(command line, --json path that is one of the command's own files, message) per command."""
    from gcnet.data.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "synth", num_train=1, num_val=1, size=(32, 48))
    image = next((root / "images").rglob("*.png"))
    out, kept = tmp_path / "exp", tmp_path / "kept"
    eval_ = ["eval", str(checkpoint), "--dataset", "synthetic", "--data-root", str(root), "--no-progress"]
    export = ["export", str(checkpoint), "--format", "torchscript", "--out", str(out), "--input-size", "32x48"]
    bench = ["bench", "--quick", "--in-process", "--size", "32x64", "--forms", "torch-fp32", "-c", str(checkpoint),
             "--keep-artifacts", str(kept)]
    return [(eval_, checkpoint, "is the checkpoint"), (eval_, image, "is inside the data set root"),
            (export, checkpoint, "is the checkpoint"), (export, out / f"{checkpoint.stem}.ts", "is an output of this export"),
            ([*export, "--format", "onnx", "--precision", "int8", "--calib-images", str(root)], image,
             "is inside the --calib-images folder"),
            (bench, checkpoint, "is the checkpoint"), (bench, kept / "r.json", "is inside the --keep-artifacts folder")]


def test_json_is_never_a_file_the_command_reads_or_writes(checkpoint, tmp_path, capsys):
    """--json naming the checkpoint, a data set file or an output: exit 2 before any work, every file unchanged."""
    mine = tmp_path / checkpoint.name
    mine.write_bytes(checkpoint.read_bytes())
    for args, path, message in _json_cases(tmp_path, mine):
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        assert main([*args, "--json", str(path)]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--json: {path} {message}" in err[0], err
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("cmd", ["export", "bench"])
def test_json_dash_is_stdout(cmd, checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = {"export": ["export", str(checkpoint), "--format", "torchscript", "--out", "exp", "--input-size", "32x48"],
            "bench": ["bench", "--quick", "--in-process", "--threads", "1", "--size", "32x64", "--forms", "torch-fp32",
                      "-c", str(checkpoint), "--no-progress"]}[cmd]
    assert main([*args, "--json", "-"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{\n"):])
    assert ("exports" if cmd == "export" else "results") in report
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("flags", [["--format", "openvino", "--precision", "int8", "--calib-dataset", "camvid",
                                    "--calib-root", "{missing}"],
                                   ["--format", "torchscript", "--eval-dataset", "camvid", "--eval-root", "{missing}"]])
def test_export_checks_data_roots_before_exporting(checkpoint, tmp_path, capsys, flags):
    if "openvino" in flags:
        pytest.importorskip("openvino", reason="needs openvino")
    out = tmp_path / "exp"
    missing = str(tmp_path / "no_such_root")
    code = main(["export", str(checkpoint), "--out", str(out), "--input-size", "64x96",
                 *[f.format(missing=missing) for f in flags]])
    err = capsys.readouterr().err
    assert code == 2 and "no_such_root" in err
    assert "exporting" not in err and not out.exists()


@pytest.mark.slow
@pytest.mark.deploy
def test_export_onnx_openvino_int8_with_accuracy(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    pytest.importorskip("openvino", reason="needs openvino")
    pytest.importorskip("nncf", reason="needs nncf")
    synth = pytest.importorskip("gcnet.data.synthetic", reason="needs gcnet.data.synthetic")
    root = synth.make_synthetic_dataset(tmp_path / "synth", num_train=3, num_val=3, size=(64, 96))
    out = tmp_path / "exp"
    result = run_cli(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "openvino", "--out", str(out),
                      "--input-size", "64x96", "--precision", "int8", "--calib-dataset", "folder", "--calib-root",
                      str(root), "--num-calib", "2", "--eval-dataset", "folder", "--eval-root", str(root),
                      "--threads", "1", "--json", str(out / "r.json"), "--no-progress"])
    assert result.returncode == 0, result.stderr
    assert "eval torch-fp32" not in result.stderr  # --no-progress: no evaluation bars
    assert "3 frames to fine-tune on, fewer than 200" in result.stderr  # post-training instead
    assert "fewer than 4 calibration images" in result.stderr
    report = json.loads((out / "r.json").read_text())
    assert report["exports"]["openvino-int8"]["quantization"]["finetune"] == {}
    for name in ["tiny.onnx", "tiny.xml", "tiny.bin", "tiny_int8.xml", "tiny_int8.onnx"]:
        assert (out / name).is_file(), name
    acc = report["accuracy"]["results"]
    assert set(acc) >= {"torch-fp32", "onnxruntime-fp32", "openvino-fp32", "openvino-int8", "onnxruntime-int8"}
    assert acc["torch-fp32"]["delta_mIoU"] == 0
    assert all(np.isfinite(v["delta_mIoU"]) for v in acc.values())
    assert "delta mIoU" in result.stdout
    image = tmp_path / "img.png"  # an .onnx file also runs on OpenVINO
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(image)
    assert main(["predict", str(image), "-c", str(out / "tiny.onnx"), "--runtime", "openvino", "-o",
                 str(tmp_path / "pred"), "--no-progress"]) == 0
    assert (tmp_path / "pred" / "img_label.png").is_file()


@pytest.mark.slow
@pytest.mark.deploy
def test_export_openvino_int8_fine_tunes_on_every_calibration_image(checkpoint, tmp_path):
    """With 200 images the OpenVINO int8 model is fine-tuned on crops of three quarters of them and scored on
    the rest (32 calibrate)."""
    pytest.importorskip("openvino", reason="needs openvino")
    pytest.importorskip("nncf", reason="needs nncf")
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(200):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(images / f"{i:03d}.png")
    out = tmp_path / "exp"
    result = run_cli(["export", str(checkpoint), "--format", "openvino", "--out", str(out), "--input-size", "64x96",
                      "--precision", "int8", "--calib-images", str(images), "--finetune-iters", "20",
                      "--json", str(out / "r.json"), "--no-progress"])
    assert result.returncode == 0, result.stderr
    assert "fine-tuned 20 steps on crops of 150 frames; kept step" in result.stderr  # a quarter held out
    assert "int8 fine-tune" not in result.stderr
    report = json.loads((out / "r.json").read_text())
    tuned = report["exports"]["openvino-int8"]["quantization"]["finetune"]
    assert tuned["iters"] == 20 and tuned["frames"] == 150 and tuned["held_out"] == 25
    assert list(tuned["error_held_out"]) == ["0", "20"] and tuned["step"] in (0, 20)
    assert report["calibration"] == {"images": str(images), "num": 32, "frames": 200}
    assert sorted(p.name for p in out.iterdir()) == ["r.json", "tiny.bin", "tiny.xml", "tiny_int8.bin", "tiny_int8.xml"]


BENCH_KEYS = {"date", "command", "machine", "versions", "config", "complexity", "results", "fastest"}
RESULT_KEYS = {"form", "runtime", "precision", "device", "model_form", "params", "macs", "latency_ms", "fps",
               "gflops", "max_abs_diff", "mean_abs_diff", "label_agreement", "peak_mem_mb"}


@pytest.mark.slow
def test_bench_quick_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code = main(["bench", "--quick", "--threads", "1", "--forms", "torch-train-fp32", "torch-authors-fp32",
                 "torch-fp32", "--json", str(path), "--no-progress"])
    assert code == 0
    assert "[1/3]" not in capsys.readouterr().err  # --no-progress: no per-form lines
    report = json.loads(path.read_text())
    assert BENCH_KEYS <= set(report)
    assert report["config"]["input_size"] == [128, 256] and report["config"]["batch"] == 1
    assert [r["form"] for r in report["results"]] == ["torch-train-fp32", "torch-authors-fp32", "torch-fp32"]
    for r in report["results"]:
        assert RESULT_KEYS <= set(r), RESULT_KEYS - set(r)
        assert {"median", "iqr", "min", "max"} <= set(r["latency_ms"])
        assert r["fps"] > 0 and r["gflops"] > 0 and r["peak_mem_mb"] > 0
        assert r["label_agreement"] > 0.99
    train, authors, deploy = report["results"]
    assert deploy["params"] < authors["params"] < train["params"] and deploy["macs"] < train["macs"]
    assert authors["max_abs_diff"] < 1e-3  # the authors' switch_to_deploy form: GCBlocks fused only
    assert deploy["speedup_vs_torch_fp32"] == 1.0


@pytest.mark.slow
@pytest.mark.deploy
def test_bench_quick_runtimes_in_process(tmp_path):
    pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    pytest.importorskip("openvino", reason="needs openvino")
    path = tmp_path / "bench.json"
    result = run_cli(["bench", "--quick", "--in-process", "--threads", "1", "--size", "64x128", "--forms",
                      "onnxruntime-fp32", "openvino-fp32", "--json", str(path)])
    assert result.returncode == 0, result.stderr
    report = json.loads(path.read_text())
    assert report["export"]["onnx"]["max_abs_diff"] < 1e-2
    for r in report["results"]:
        assert r["label_agreement"] > 0.99 and r["max_abs_diff"] < 1e-2


@pytest.mark.slow
@pytest.mark.deploy
def test_bench_user_baseline_form(tmp_path, capsys):
    """The baseline is a real NNCF int8 model compiled with OpenVINO's defaults, and every CPU row is
    compared with it."""
    ov = pytest.importorskip("openvino", reason="needs openvino")
    pytest.importorskip("nncf", reason="needs nncf")
    path, kept = tmp_path / "bench.json", tmp_path / "artifacts"
    assert main(["bench", "--quick", "--in-process", "--threads", "1", "--size", "64x128", "--forms",
                 "openvino-int8", "openvino-int8-baseline", "--keep-artifacts", str(kept),
                 "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    ours, baseline = report["results"]
    assert baseline["form"] == "openvino-int8-baseline" and baseline["speedup_vs_baseline"] == 1.0
    assert ours["speedup_vs_baseline"] > 0 and math.isfinite(baseline["max_abs_diff"])
    model = ov.Core().read_model(str(kept / "model_ov_int8_baseline.xml"))
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
    out, err = capsys.readouterr()
    assert "openvino-int8-baseline)" in out and "[2/2] openvino-int8-baseline" in err  # a line per form


def test_bench_keeps_artifacts_only_in_its_own_folder(tmp_path, capsys):
    kept = tmp_path / "artifacts"
    args = ["bench", "--quick", "--in-process", "--threads", "1", "--size", "32x64", "--forms", "torch-fp32",
            "--keep-artifacts", str(kept), "--no-progress"]
    assert main([*args, "--forms", "torch-fp32-cl"]) == 0 and (kept / "out_torch-fp32-cl.npy").is_file()
    assert main(args) == 0 and (kept / "model_deploy.pt").is_file()  # its own folder: replaced
    assert not (kept / "out_torch-fp32-cl.npy").exists()  # no output of the earlier run's other forms left
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model_deploy.pt").write_text("my model")
    assert main([*args[:-3], "--keep-artifacts", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "is not empty (model_deploy.pt) and has no .gcnet-bench mark of an earlier run of gcnet bench" in err
    assert [p.name for p in mine.iterdir()] == ["model_deploy.pt"] and (mine / "model_deploy.pt").read_text() == "my model"


@pytest.mark.slow
def test_bench_min_time_adds_runs(tmp_path):
    path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--in-process", "--threads", "1", "--size", "32x64", "--forms", "torch-fp32",
                 "--iters", "2", "--min-time", "0.3", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["config"]["min_time_s"] == 0.3 and report["results"][0]["latency_ms"]["n"] >= 2
    # the rule itself, on an injected clock (every reading 0.125 s later, so every run "takes" 0.125 s)
    times, out = timed_runs(lambda: "y", iters=2, min_time=0.3, clock=FakeClock(0.125))
    assert times == [0.125] * 3 and out == "y"  # 2 runs are 0.25 s: a third one reaches 0.3 s
    assert len(timed_runs(lambda: None, iters=5, min_time=0.3, clock=FakeClock(0.125))[0]) == 5


def test_bench_errors(capsys):
    assert main(["bench", "--quick", "--forms", "nope"]) == 2
    assert "unknown form" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--quick", "--forms", "torch-fp32", "--min-time", "-1"])
    assert exit_.value.code == 2 and "--min-time: must be 0 or a positive number" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["export", "bench", "eval"])
def test_evaluation_refuses_a_dataset_with_other_classes(cmd, tmp_path, capsys):
    """A 4-class model on the 5-class synthetic dataset: exit 2 before any work, nothing written."""
    from gcnet.data.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "synth", num_train=1, num_val=1, size=(32, 48))
    path = gcnet.save_checkpoint(tmp_path / "four.pt", gcnet.GCNet(**tiny_model_kwargs(num_classes=4)).eval())
    out = tmp_path / "out"
    args = {"export": ["export", str(path), "--out", str(out), "--input-size", "32x48", "--eval-dataset", "synthetic",
                       "--eval-root", str(root)],
            "bench": ["bench", "--quick", "-c", str(path), "--forms", "torch-fp32", "--json", str(out / "b.json"),
                      "--eval-dataset", "synthetic", "--eval-root", str(root)],
            "eval": ["eval", str(path), "--dataset", "synthetic", "--data-root", str(root)]}[cmd]
    assert main(args) == 2
    assert "the model has 4 classes but the synthetic dataset has 5" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("flags,message", [
    (["--json", "{tmp}"], "is a folder; give a file name"),
    (["--mode", "slide", "--crop", "16x16", "--stride", "32x32"], "--stride 32x32 is larger than --crop 16x16"),
    (["--mode", "whole", "--crop", "16x16"], "add --mode slide"),
    (["--float64", "--amp"], "--float64 and --amp (bfloat16) contradict each other"),
])
def test_eval_refuses_bad_output_and_windows_up_front(checkpoint, tmp_path, capsys, flags, message):
    from gcnet.data.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "synth", num_train=1, num_val=1, size=(32, 48))
    code = main(["eval", str(checkpoint), "--dataset", "synthetic", "--data-root", str(root), "--no-progress",
                 *[f.format(tmp=tmp_path) for f in flags]])
    out, err = capsys.readouterr()
    assert code == 2 and message in err and "mIoU" not in out  # refused before evaluating


@pytest.mark.parametrize("scales", ["100", "1.0,5", "nan", "0"])
def test_eval_refuses_absurd_scales(checkpoint, scales, capsys):
    with pytest.raises(SystemExit) as exc:  # a usage error, before the checkpoint is read
        main(["eval", str(checkpoint), "--dataset", "synthetic", "--data-root", ".", "--scales", scales])
    assert exc.value.code == 2 and "numbers above 0 and at most 4" in capsys.readouterr().err


def test_bench_training_forms_of_a_deploy_checkpoint(tmp_path, capsys):
    """Forms that need the training form are named when skipped; with none left, exit 2 and no JSON."""
    path = tmp_path / "deploy.pt"
    gcnet.save_checkpoint(path, gcnet.GCNet(**tiny_model_kwargs()).eval().reparameterize())
    report = tmp_path / "bench.json"
    args = ["bench", "--quick", "--in-process", "--checkpoint", str(path), "--json", str(report), "--forms"]
    assert main([*args, "torch-authors-fp32", "torch-train-fp32"]) == 2
    err = capsys.readouterr().err
    assert "nothing to run: torch-authors-fp32, torch-train-fp32" in err and "deploy form" in err
    assert not report.exists()
    assert main([*args, "torch-authors-fp32", "torch-fp32"]) == 0
    assert "skipping torch-authors-fp32" in capsys.readouterr().err
    assert [r["form"] for r in json.loads(report.read_text())["results"]] == ["torch-fp32"]


# ------------------------------------------------------------------------- nothing a user made is lost
def _files(folder) -> dict:
    """Every file under ``folder`` (temporary ones included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _failing_verification(monkeypatch) -> None:
    """Make every export's verification fail: the real comparison, against a tolerance no export meets."""
    from gcnet.deploy import export

    real = export._check_close
    monkeypatch.setattr(export, "_check_close", lambda name, ref, out, tolerance, labels=False:
                        real(name, ref, out, -1.0, labels))


@pytest.mark.slow
@pytest.mark.deploy
def test_export_failing_verification_keeps_the_earlier_export(checkpoint, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    pytest.importorskip("openvino", reason="needs openvino")
    out = tmp_path / "exp"
    common = ["--checkpoint", str(checkpoint), "--out", str(out), "--input-size", "64x96", "--threads", "1"]
    assert main(["export", "--format", "onnx", "openvino", *common]) == 0
    before = _files(out)
    assert set(before) == {"tiny.onnx", "tiny.xml", "tiny.bin"}
    with monkeypatch.context() as m:
        _failing_verification(m)
        for fmt in ["onnx", "openvino"]:
            capsys.readouterr()
            assert main(["export", "--format", fmt, *common]) == 2
            err = capsys.readouterr().err
            assert "exceeds the tolerance" in err and "unchanged" in err and "Traceback" not in err
            assert _files(out) == before, f"{fmt}: the earlier export changed"
    # the fp32 ONNX export succeeds, then int8 calibration fails: the whole command changes nothing
    (tmp_path / "no_images").mkdir()
    result = run_cli(["export", "--format", "onnx", "--precision", "int8", "--calib-images",
                      str(tmp_path / "no_images"), *common])
    assert result.returncode == 2 and "no calibration images" in result.stderr, result.stderr
    assert _files(out) == before


def test_export_torchscript_failing_verification_keeps_the_earlier_file(checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "exp"
    args = ["export", str(checkpoint), "--format", "torchscript", "--out", str(out), "--input-size", "64x96"]
    assert main(args) == 0
    before = _files(out)
    _failing_verification(monkeypatch)
    assert main(args) == 2
    assert "exceeds the tolerance" in capsys.readouterr().err
    assert _files(out) == before
    fresh = tmp_path / "fresh"
    assert main(["export", str(checkpoint), "--format", "torchscript", "--out", str(fresh), "--input-size",
                 "64x96"]) == 2
    assert "exceeds the tolerance" in capsys.readouterr().err and not fresh.exists()


@pytest.mark.parametrize("cmd", ["predict", "export"])
def test_out_that_is_a_file_is_refused(cmd, checkpoint, tmp_path, capsys):
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(image)
    blocker = tmp_path / "taken"
    blocker.write_text("a file the user made")
    head = ["predict", str(image)] if cmd == "predict" else ["export", "--format", "torchscript"]
    for out in [blocker, blocker / "sub"]:
        assert main([*head, "--checkpoint", str(checkpoint), "--out", str(out), "--device" if cmd == "predict"
                     else "--input-size", "cpu" if cmd == "predict" else "64x96"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) <= 2 and "--out" in err[0] and str(blocker.name) in err[0], err
    assert blocker.read_text() == "a file the user made"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "taken"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write to read-only folders")
def test_out_in_a_read_only_folder_is_refused(checkpoint, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["export", str(checkpoint), "--format", "torchscript", "--out", str(locked / "exp")]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and "not writable" in err
        assert not any(locked.iterdir())
    finally:
        locked.chmod(0o755)


def test_predict_inputs_with_the_same_name(checkpoint, tmp_path, capsys):
    for folder, seed in [("x", 0), ("y", 1)]:
        (tmp_path / folder).mkdir()
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(
            tmp_path / folder / "a.png")
    out = tmp_path / "pred"
    code = main(["predict", str(tmp_path / "x"), str(tmp_path / "y" / "a.png"), "--checkpoint", str(checkpoint),
                 "--out", str(out), "--no-progress", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["x/a_label.png", "x/a_overlay.png", "y/a_label.png", "y/a_overlay.png"]
    assert np.any(np.asarray(Image.open(out / "x" / "a_overlay.png")) !=
                  np.asarray(Image.open(out / "y" / "a_overlay.png")))
    assert "same name" in captured.err
    assert "wrote 4 file(s) for 2 input(s)" in captured.out


def test_predict_truncated_video_fails_with_frame_counts(checkpoint, tmp_path, capsys):
    video = write_video(tmp_path / "clip.avi")
    out = tmp_path / "pred"
    args = ["predict", str(video), "--checkpoint", str(checkpoint), "--out", str(out), "--no-progress",
            "--device", "cpu", "--no-label", "--no-overlay"]
    assert main(args) == 0
    earlier = (out / "clip_overlay.mp4").read_bytes()
    capsys.readouterr()
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])  # cut the file: its header still announces 12 frames
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "truncated" in captured.err and "of 12 frames" in captured.err
    assert "wrote 0 file(s)" in captured.out
    assert (out / "clip_overlay.mp4").read_bytes() == earlier
    assert [p.name for p in out.iterdir()] == ["clip_overlay.mp4"]


@pytest.mark.slow
@pytest.mark.deploy
def test_predict_with_a_broken_openvino_ir_names_it(checkpoint, tmp_path):
    """An IR without its .bin, with a truncated .bin, or a text file named .xml: one line naming the file,
    exit 2, nothing written."""
    result = run_cli(["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--out", str(tmp_path / "ir"),
                      "--name", "m", "--input-size", "64x96"])
    assert result.returncode == 0, result.stderr
    xml = tmp_path / "ir" / "m.xml"
    (tmp_path / "no_bin.xml").write_bytes(xml.read_bytes())
    (tmp_path / "short.xml").write_bytes(xml.read_bytes())
    (tmp_path / "short.bin").write_bytes(xml.with_suffix(".bin").read_bytes()[:1000])
    (tmp_path / "text.xml").write_text("hello")
    image = tmp_path / "a.png"
    Image.new("RGB", (96, 64)).save(image)
    for name, reason in [("no_bin.xml", "bin file cannot be found"), ("short.xml", "Incorrect weights"),
                         ("text.xml", "Unable to read the model")]:
        result = run_cli(["predict", str(image), "--checkpoint", str(tmp_path / name), "--out", str(tmp_path / "o")])
        assert result.returncode == 2, result.stderr
        assert f"openvino cannot read {tmp_path / name}: " in result.stderr and reason in result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "o").exists()


def test_predict_with_a_folder_where_an_output_goes(checkpoint, tmp_path, capsys):
    """A folder named like an output file: one line naming it, exit 2; the folder is left as it was."""
    Image.new("RGB", (96, 64)).save(tmp_path / "a.png")
    blocked = tmp_path / "o" / "a_overlay.png"
    blocked.mkdir(parents=True)
    (blocked / "keep.txt").write_text("mine")
    assert main(["predict", str(tmp_path / "a.png"), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {blocked}: a folder of that name is in the way" in err and "Traceback" not in err
    assert (blocked / "keep.txt").read_text() == "mine"


def test_openvino_conversion_interrupted_is_ctrl_c_and_telemetry_off(monkeypatch):
    """Ctrl-C that OpenVINO's converter wraps in its own error comes back as KeyboardInterrupt (exit 130, one
    line), and gcnet's use of OpenVINO/NNCF sends no telemetry (its forked senders hung interrupted exports)."""
    pytest.importorskip("openvino")
    import openvino as ov

    from gcnet.deploy.export import to_openvino
    from gcnet.optional import require

    require("openvino")
    assert "openvino_telemetry" in sys.modules  # imported before gcnet's require, or blocked by it

    def wrapped(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise RuntimeError("Couldn't get TorchScript module by tracing: KeyboardInterrupt") from exc

    monkeypatch.setattr(ov, "convert_model", wrapped)
    with pytest.raises(KeyboardInterrupt):
        to_openvino(gcnet.build_model("gcnet-s", **tiny_model_kwargs(num_classes=5)).eval(), input_size=(64, 64))
