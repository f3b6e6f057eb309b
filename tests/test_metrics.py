"""Confusion-matrix metrics against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from gcnet.evaluation.metrics import ConfusionMatrix, format_table

# Hand example, 3 classes, one ignored pixel (its prediction must not matter):
#   target: 0 0 1 1 2 255
#   pred:   0 1 1 1 0 2
# matrix[t, p]:  t0: [1, 1, 0]   t1: [0, 2, 0]   t2: [1, 0, 0]
# TP = [1, 2, 0]; GT area = [2, 2, 1]; predicted area = [2, 3, 0]; union = [3, 3, 1]
# IoU = [1/3, 2/3, 0] -> mIoU = 1/3;  Acc = [1/2, 1, 0] -> mAcc = 1/2;  aAcc = 3/5
TARGET = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [1, 0, 2]])


def test_hand_computed_example():
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(PRED, TARGET)
    assert cm.matrix.dtype == torch.int64 and cm.matrix.device.type == "cpu"
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    r = cm.compute()
    assert r["IoU"] == pytest.approx([100 / 3, 200 / 3, 0.0])
    assert r["Acc"] == pytest.approx([50.0, 100.0, 0.0])
    assert r["mIoU"] == pytest.approx(100 / 3)
    assert r["mAcc"] == pytest.approx(50.0)
    assert r["aAcc"] == pytest.approx(60.0)


def test_ignore_pixels_do_not_count_whatever_is_predicted():
    cm = ConfusionMatrix(3)
    pred = PRED.clone()
    pred[1, 2] = 99  # out-of-range prediction at an ignored pixel is fine
    cm.update(pred, TARGET)
    assert cm.matrix.sum() == 5
    assert cm.compute()["aAcc"] == pytest.approx(60.0)
    cm2 = ConfusionMatrix(3, ignore_index=0)  # now class-0 pixels are the ignored ones
    cm2.update(PRED, torch.where(TARGET == 255, torch.tensor(2), TARGET))
    assert cm2.matrix.sum() == 4


def test_absent_classes():
    # class 3 absent from GT and prediction -> NaN, excluded from the means (MMSeg nanmean)
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    r = cm.compute()
    assert math.isnan(r["IoU"][3]) and math.isnan(r["Acc"][3])
    assert r["mIoU"] == pytest.approx(100 / 3) and r["mAcc"] == pytest.approx(50.0)
    # class 3 predicted but absent from GT -> IoU 0 counts, Acc NaN does not
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 3, 1]), torch.tensor([0, 0, 1]))
    # matrix: t0: p0 1, p3 1; t1: p1 1 -> IoU = [1/2, 1, nan, 0], Acc = [1/2, 1, nan, nan]
    r = cm.compute()
    assert r["IoU"][:2] == pytest.approx([50.0, 100.0]) and r["IoU"][3] == 0.0 and math.isnan(r["IoU"][2])
    assert r["mIoU"] == pytest.approx(50.0)  # (50 + 100 + 0) / 3
    assert r["mAcc"] == pytest.approx(75.0)  # (50 + 100) / 2
    assert r["aAcc"] == pytest.approx(200 / 3)
    empty = ConfusionMatrix(2).compute()
    assert math.isnan(empty["mIoU"]) and math.isnan(empty["aAcc"])


def test_accumulates_over_updates_any_shape_numpy_and_reset():
    cm = ConfusionMatrix(3)
    cm.update(PRED.reshape(1, 2, 3), TARGET.reshape(1, 2, 3))  # [B, H, W]
    cm.update(PRED.numpy().ravel(), TARGET.numpy().ravel())  # numpy, 1-D
    assert cm.matrix.tolist() == [[2, 2, 0], [0, 4, 0], [2, 0, 0]]
    assert cm.compute()["mIoU"] == pytest.approx(100 / 3)
    cm.reset()
    assert cm.matrix.sum() == 0


def test_matches_bruteforce_on_random_data():
    g = torch.Generator().manual_seed(0)
    k = 6
    target = torch.randint(0, k, (3, 11, 13), generator=g)
    target[torch.rand(3, 11, 13, generator=g) < 0.1] = 255
    pred = torch.randint(0, k, (3, 11, 13), generator=g)
    cm = ConfusionMatrix(k)
    cm.update(pred, target)
    t, p = target.numpy().ravel(), pred.numpy().ravel()
    m = t != 255
    t, p = t[m], p[m]
    ious = [((t == c) & (p == c)).sum() / ((t == c) | (p == c)).sum() * 100 for c in range(k)]
    r = cm.compute()
    assert r["IoU"] == pytest.approx(ious)
    assert r["aAcc"] == pytest.approx((t == p).mean() * 100)


def test_invalid_inputs():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.tensor([0, 5]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError):
        cm.update(torch.randn(2, 3), torch.tensor([0, 1]))
    assert cm.matrix.sum() == 0


def test_all_reduce_noop_and_single_process_group(tmp_path):
    import torch.distributed as dist

    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    before = cm.matrix.clone()
    cm.all_reduce()  # not initialised: no-op
    assert torch.equal(cm.matrix, before)
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        cm.all_reduce()
        assert torch.equal(cm.matrix, before) and cm.matrix.dtype == torch.int64
    finally:
        dist.destroy_process_group()


def test_format_table():
    cm = ConfusionMatrix(4)
    cm.update(PRED, TARGET)
    text = format_table(cm.compute(), ["road", "car", "sky", "bicycle"])
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith("| car"))
    assert "66.67" in row and "100.00" in row
    assert "nan" in next(line for line in lines if line.startswith("| bicycle"))
    assert any("Class" in line and "IoU" in line and "Acc" in line for line in lines)
    assert "aAcc 60.00" in lines[-1] and "mIoU 33.33" in lines[-1] and "mAcc 50.00" in lines[-1]
    with pytest.raises(ValueError):
        format_table(cm.compute(), ["a", "b"])
