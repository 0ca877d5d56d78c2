"""`convnext bench --compare swin_t | resnet50 | vit_b_16`: the paper's reference networks from torchvision, timed
alternately with ours in the same process (convnext/benchmark.py), at tiny settings (batch 1, 32 px, 2 runs)."""
from __future__ import annotations

import json
import statistics

import pytest
from torchvision import models

from convnext.benchmark import make_peer
from convnext.cli import main

TINY = ["--img-size", "32", "--batch-size", "1", "--runs", "2", "--iters", "1", "--warmup", "1", "--threads", "1"]


@pytest.mark.parametrize("peer, mode", [("swin_t", "--train"), ("resnet50", None), ("vit_b_16", None)])
def test_bench_against_a_torchvision_peer(peer, mode, tmp_path, capsys):
    js = tmp_path / "b.json"
    assert main(["bench", "convnext_atto", *TINY, "--compare", peer, "--json", str(js), *([mode] if mode else [])]) == 0
    out = capsys.readouterr().out
    assert f"ratio ours/{peer}" in out and ("mode=train (fwd+bwd+AdamW)" if mode else "mode=inference") in out
    r = json.loads(js.read_text())
    assert len(r["runs"]["ours"]) == len(r["runs"][peer]) == 2 and min(r["runs"]["ours"] + r["runs"][peer]) > 0
    assert r["median"]["ours"] > 0 and r["median"][peer] > 0
    # the ratio is the median of the per-run ratios, each run timing both models
    assert r["ratios"][f"ours/{peer}"] == pytest.approx(
        statistics.median(a / b for a, b in zip(r["runs"]["ours"], r["runs"][peer])))
    assert r["setting"]["train"] is bool(mode) and r["setting"]["img_size"] == 32
    # the peer is torchvision's network (ResNet-50's 25,557,032 parameters: torchvision's published count)
    cls = {"swin_t": models.SwinTransformer, "resnet50": models.ResNet, "vit_b_16": models.VisionTransformer}[peer]
    assert r["models"][peer]["class"] == f"{cls.__module__}.{cls.__name__}"
    assert r["models"]["ours"]["class"] == "convnext.model.ConvNeXt"
    if peer == "resnet50":
        assert r["models"][peer]["params"] == models.ResNet50_Weights.IMAGENET1K_V1.meta["num_params"] == 25_557_032


def test_vit_peer_needs_a_multiple_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        make_peer("vit_b_16", "convnext_tiny", img_size=40)
