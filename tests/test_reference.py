"""Parity with the authors' released model (../shared/reference; skipped when absent)."""

from __future__ import annotations

import pytest
import torch

from gcnet import build_model, load_weights
from gcnet.models.complexity import count_macs, count_params

ATOL = 1e-4


def test_eval_logits_match(golden, golden_kwargs):
    model = build_model("gcnet-s", **golden_kwargs)
    model.load_state_dict(golden["state_dict"])
    with torch.no_grad():
        out = model.eval()(golden["input"])
    assert (out - golden["eval_logits"]).abs().max() <= ATOL


def test_train_logits_aux_and_running_stats_match(golden, golden_kwargs):
    model = build_model("gcnet-s", **golden_kwargs)
    model.load_state_dict(golden["state_dict"])
    logits, aux = model.train()(golden["train_input"])
    assert (logits - golden["train_logits"]).abs().max() <= ATOL
    assert (aux - golden["train_aux_logits"]).abs().max() <= ATOL
    state = model.state_dict()
    stats = golden["running_stats_after_train_forward"]
    assert len(stats) > 100
    for key, expected in stats.items():
        assert (state[key] - expected).abs().max() <= ATOL, key


def test_our_reparameterization_matches_deploy_logits(golden, golden_kwargs):
    model = build_model("gcnet-s", **golden_kwargs)
    model.load_state_dict(golden["state_dict"])
    with torch.no_grad():
        out = model.eval().reparameterize()(golden["input"])
    assert (out - golden["deploy_logits"]).abs().max() <= ATOL


def test_fused_blocks_state_dict_equals_authors_deploy_state_dict(golden, golden_kwargs):
    model = build_model("gcnet-s", **golden_kwargs)
    model.load_state_dict(golden["state_dict"])
    ours = model.eval().fuse_gcblocks().state_dict()
    theirs = golden["deploy_state_dict"]
    assert list(ours) == list(theirs)
    for key in theirs:
        assert (ours[key].double() - theirs[key].double()).abs().max() <= ATOL, key


def test_authors_deploy_weights_load_into_deploy_model(golden, golden_kwargs):
    model = build_model("gcnet-s", deploy=True, **golden_kwargs)
    load_weights(model, golden["deploy_state_dict"])
    with torch.no_grad():
        out = model.eval()(golden["input"])
    assert (out - golden["deploy_logits"]).abs().max() <= ATOL


def test_official_mmengine_file_loads(reference_dir, golden, golden_kwargs):
    model = build_model("gcnet-s", **golden_kwargs)
    load_weights(model, reference_dir / "official_format_tiny.pth")
    with torch.no_grad():
        out = model.eval()(golden["input"])
    assert (out - golden["eval_logits"]).abs().max() <= ATOL


def read_tsv(path):
    rows = [line.rstrip("\n").split("\t") for line in path.read_text().splitlines() if line.strip()]
    return [(key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype.replace("torch.", ""))
            for key, shape, dtype in rows]


@pytest.mark.parametrize("name", ["gcnet-s", "gcnet-m", "gcnet-l"])
@pytest.mark.parametrize("form", ["train", "deploy"])
def test_state_dict_layout_matches_authors(reference_dir, name, form):
    expected = read_tsv(reference_dir / f"official_keys_{name}_{form}.tsv")
    with torch.device("meta"):
        model = build_model(name, num_classes=19)
        if form == "deploy":
            model.fuse_gcblocks()  # the authors' switch_to_deploy form
    actual = [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]
    assert actual == expected


@pytest.mark.parametrize("name,params_m,gmacs", [("gcnet-s", 9.21, 45.1), ("gcnet-m", 34.2, 178.4),
                                                  ("gcnet-l", 45.2, 231.6)])
def test_params_and_macs_match_reference_table(name, params_m, gmacs):
    with torch.device("meta"):
        authors_deploy = build_model(name, num_classes=19).fuse_gcblocks()
        ours = build_model(name, num_classes=19, deploy=True)
    assert round(count_params(authors_deploy) / 1e6, 1 if params_m > 10 else 2) == params_m
    assert round(count_macs(authors_deploy, (1024, 2048)) / 1e9, 1) == gmacs
    assert round(count_macs(ours, (1024, 2048)) / 1e9, 1) == gmacs  # folding BN adds no MACs
    assert count_params(ours) < count_params(authors_deploy)  # no aux head, no BN after convs
    if name == "gcnet-s":
        with torch.device("meta"):
            assert round(count_params(build_model(name, num_classes=19)) / 1e6, 1) == 20.7
