"""Quantization-aware fine-tuning for OpenVINO int8.

Post-training quantization leaves GCNet-S up to 1.3 val mIoU away from fp32 on CamVid models, the error
spread over the whole network (docs/deploy.md). A short fine-tune removes the systematic part of it: the
deploy form gets NNCF's fake quantizers (weights and activations, calibrated like post-training
quantization), then its weights, biases and quantizer ranges are trained for a few hundred steps to
reproduce the fp32 model's logits on random crops of the training frames (the rate decaying along a
cosine), and of the snapshots taken along the way the one closest to fp32 on frames held out from the
fine-tune is kept. It needs no labels: the fp32 model is the teacher. It does need many frames
(:data:`FINETUNE_MIN_FRAMES`). The result converts to an OpenVINO int8 model like NNCF's post-training one::

    ov_model = quantize_aware(deploy_model, calibration_arrays, train_set)  # then export_openvino / OpenVINORuntime
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gcnet.errors import GCNetError
from gcnet.optional import require

FINETUNE_ITERS = 400  # steps of the default fine-tune (about 6 minutes for GCNet-S on 2 cores)
FINETUNE_EVERY = 50  # steps between the held-out scores that choose the snapshot kept
FINETUNE_HOLD_OUT_EVERY = 4  # every fourth frame is held out from the fine-tune to score it ...
FINETUNE_HELD_OUT_MAX = 48  # ... at most this many
FINETUNE_LR = 1e-5  # Adam, decaying along a cosine; NNCF's advice for quantization-aware fine-tuning
FINETUNE_BATCH = 4
FINETUNE_CROP = (288, 384)  # crops of the frames (smaller frames are used whole)
# fewer frames to draw crops from and the fine-tune drifts from fp32 on other images (val mIoU change of a
# CamVid model: +1.61 with 32 frames, +0.63 with 100, +0.21 with 200, -0.02 with 367): post-training instead
FINETUNE_MIN_FRAMES = 200


def fake_quantize(deploy: nn.Module, calibration: Sequence[np.ndarray]) -> nn.Module:
    """A copy of the deploy form with NNCF int8 fake quantizers (symmetric activations, per-channel
    weights), ranges calibrated on ``calibration``. NNCF's bias correction is left out: its PyTorch
    backend fails on GCNet (NNCF 3.4), and the fine-tune does that job."""
    nncf = require("nncf")
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    logging.getLogger("nncf").setLevel(logging.WARNING)
    samples = [torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32)) for c in calibration]
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's rich progress bars
        return nncf.quantize(copy.deepcopy(deploy).eval(), nncf.Dataset(samples),
                             preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(samples),
                             advanced_parameters=AdvancedQuantizationParameters(disable_bias_correction=True))


def _image(item: Any) -> torch.Tensor:
    """A frame's normalised 3xHxW float tensor, from a dataset item (image first), a tensor or a 1x3xHxW array."""
    image = torch.as_tensor(item[0] if isinstance(item, (tuple, list)) else item, dtype=torch.float32)
    return image[0] if image.dim() == 4 else image


def random_crops(frames: Sequence[Any], batch: int, crop: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    """``batch`` crops of at most ``crop`` (HxW) from ``frames`` (see :func:`_image`) drawn at random, each
    flipped horizontally half the time; the crop size is clipped to the smallest frame drawn."""
    drawn = [_image(frames[i]) for i in torch.randint(len(frames), (batch,), generator=gen).tolist()]
    h = min(crop[0], *(im.shape[1] for im in drawn))
    w = min(crop[1], *(im.shape[2] for im in drawn))
    out = []
    for image in drawn:
        top = int(torch.randint(image.shape[1] - h + 1, (1,), generator=gen))
        left = int(torch.randint(image.shape[2] - w + 1, (1,), generator=gen))
        patch = image[:, top:top + h, left:left + w]
        out.append(patch.flip(-1) if float(torch.rand(1, generator=gen)) < 0.5 else patch)
    return torch.stack(out)


def distill(student: nn.Module, teacher: nn.Module, frames: Sequence[Any], *, iters: int, lr: float,
            batch: int, crop: Sequence[int], seed: int = 0, cosine: bool = False, progress: bool | None = None,
            after_step: Callable[[int], None] | None = None) -> list[float]:
    """Train ``student`` (Adam) to reproduce ``teacher``'s logits on random crops of ``frames``; the loss
    is the relative squared error ``|student - teacher|^2 / |teacher|^2``. Returns the loss per step.
    ``cosine``: the rate decays to zero along a cosine over the steps. ``after_step(n)`` is called after the
    n-th step (1-based), e.g. to score snapshots of the student.

    The student stays in eval mode: the deploy form keeps the BatchNorms that precede a ReLU (DAPPM,
    heads), and in train mode they would normalise with the statistics of each batch of crops and
    overwrite their running statistics, moving the model away from the teacher on every other image."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters) if cosine else None
    student.eval()
    losses = []
    bar = tqdm(range(iters), desc="int8 fine-tune", unit="step", leave=False,
               disable=None if progress is None else not progress)
    for _ in bar:
        x = random_crops(frames, batch, crop, gen)
        with torch.no_grad():
            target = teacher(x)
        loss = F.mse_loss(student(x), target) / target.pow(2).mean().clamp_min(1e-12)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if decay is not None:
            decay.step()
        losses.append(loss.item())
        bar.set_postfix(error=f"{losses[-1]:.3g}", refresh=False)
        if after_step is not None:
            after_step(len(losses))
            student.eval()
    return losses


def held_out_split(count: int, every: int = FINETUNE_HOLD_OUT_EVERY,
                   most: int = FINETUNE_HELD_OUT_MAX) -> tuple[list[int], list[int]]:
    """(frames to train on, frames to score snapshots on) of ``count``: every ``every``-th frame is held out
    (at most ``most`` of them, spread evenly; the rest of those are not used)."""
    held = list(range(every - 1, count, every))
    train = [i for i in range(count) if i % every != every - 1]
    return train, held[:: -(-len(held) // most)] if held else held


def center_crop(image: torch.Tensor, crop: Sequence[int]) -> torch.Tensor:
    """The centre ``crop`` (HxW, clipped to the image) of a 3xHxW ``image``, as a batch of one."""
    h, w = min(crop[0], image.shape[1]), min(crop[1], image.shape[2])
    top, left = (image.shape[1] - h) // 2, (image.shape[2] - w) // 2
    return image[None, :, top:top + h, left:left + w]


def quantize_aware(deploy: nn.Module, calibration: Sequence[np.ndarray], frames: Sequence[Any] | None = None, *,
                   iters: int = FINETUNE_ITERS, every: int = FINETUNE_EVERY, lr: float = FINETUNE_LR,
                   batch: int = FINETUNE_BATCH, crop: Sequence[int] = FINETUNE_CROP, seed: int = 0,
                   input_size: Sequence[int] = (512, 1024), progress: bool | None = None) -> Any:
    """An OpenVINO int8 model of the deploy-form ``deploy``: fake-quantized (:func:`fake_quantize`) on
    ``calibration`` (float32 1x3xHxW arrays), fine-tuned ``iters`` steps (:func:`distill`) on crops of
    ``frames`` (a dataset giving normalised images, or tensors; default: the calibration images, but
    see :data:`FINETUNE_MIN_FRAMES`) but those :func:`held_out_split` keeps back, the rate decaying along a
    cosine (at a constant rate the val mIoU moved by up to a point with the last crops drawn:
    docs/deploy.md), converted with dynamic shapes. Every ``every`` steps the student's logit error
    against fp32 on the held-out frames (centre crops) is measured, and the snapshot with the lowest
    error (step 0: before the fine-tune) is the one converted.
    What was done is kept in its ``rt_info`` (``finetune``: the settings, the held-out error per snapshot
    and the step kept; see :func:`gcnet.deploy.export.quant_settings_of`). ``progress``: a bar over the
    steps (None: on a terminal)."""
    from gcnet.deploy.export import record_quant_settings, relative_error, to_openvino

    if not calibration:
        raise GCNetError("int8 quantization needs at least one calibration image")
    if iters < 1:
        raise GCNetError(f"the int8 fine-tune needs at least one step, not {iters}")
    teacher = deploy.eval()
    student = fake_quantize(teacher, calibration).eval()
    frames = calibration if frames is None else frames
    train, held = held_out_split(len(frames))
    inputs = [center_crop(_image(frames[i]), crop) for i in held]
    with torch.no_grad():
        reference = [teacher(x) for x in inputs]
    scores: dict[int, float] = {}
    kept: dict[str, torch.Tensor] = {}

    def snapshot(step: int) -> None:
        if held and (step % every == 0 or step == iters):
            with torch.no_grad():
                scores[step] = relative_error(student, inputs, reference)
            if scores[step] == min(scores.values()):
                kept.clear()
                kept.update({k: v.detach().clone() for k, v in student.state_dict().items()})

    snapshot(0)
    distill(student, teacher, torch.utils.data.Subset(frames, train) if held else frames, iters=iters, lr=lr,
            batch=batch, crop=crop, seed=seed, cosine=True, progress=progress, after_step=snapshot)
    if kept:
        student.load_state_dict(kept)
    ov_model = to_openvino(student, input_size=input_size)
    step = min(scores, key=scores.get) if scores else iters
    record_quant_settings(ov_model, preset="performance", bias_correction="none", finetune={
        "iters": iters, "lr": lr, "schedule": "cosine", "batch": batch, "crop": list(crop),
        "frames": len(train) if held else len(frames), "held_out": len(held), "step": step,
        "error_held_out": {str(k): round(v, 5) for k, v in scores.items()}})
    return ov_model


def finetune_summary(tuned: dict) -> str:
    """One line on a fine-tune from its record (the ``finetune`` of :func:`gcnet.deploy.export.quant_settings_of`)."""
    line = f"fine-tuned {tuned['iters']} steps on crops of {tuned['frames']} frames"
    errors = tuned.get("error_held_out")
    if not errors:
        return line
    return (f"{line}; kept step {tuned['step']}: relative logit error against fp32 on {tuned['held_out']} held-out "
            f"frames {errors[str(tuned['step'])]:.3g} (before the fine-tune {errors['0']:.3g})")
