"""Segmentation through the engine and the command line, on a tiny scene set: the loss falls, checkpoints rebuild the
segmenter, `convnext segment` and `convnext eval` work, the ADE20K configs are the official recipe, and bad input
gives one sentence."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from convnext.cli import main
from convnext.config import derive, load_config, replace
from convnext.detection.scenes import make_scenes
from convnext.errors import UserError
from convnext.optim import lr_at
from convnext.runtime import Runtime
from convnext.segmentation.data import build_seg_data
from convnext.segmentation.evaluate import evaluate_segmenter
from convnext.segmentation.models import SEGMENTERS, load_segmenter
from convnext.tasks import train

TINY = {  # the demo's recipe, shrunk to seconds: 64 x 80 scenes seen at 32, a 16-channel head
    "data.batch_size": 2, "data.workers": 0, "data.seg_scale": (128, 32), "data.seg_crop_size": 32,
    "model.segmenter": ("channels=16", "aux_channels=8"), "model.init": "", "optim.warmup_steps": 2,
    "optim.lr": 1e-2, "optim.scale_lr": False, "train.total_steps": 0, "train.log_every": 1000,
    "train.eval_subset": 0, "data.seg_test_ratios": (1.0,), "data.seg_test_flip": False,  # `convnext eval`'s default
}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, num_train=8, num_val=3, size=(64, 80), items=(1, 2), scale=(1.0, 2.0), seed=0, progress=False)
    return root / "ade"


def _cfg(scenes, **extra):
    return replace(load_config("scenes_seg"), **{**TINY, "data.root": str(scenes), **extra})


@pytest.fixture(scope="module")
def run(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    summary = train(_cfg(scenes, **{"train.epochs": 5, "train.eval_every": 5}), out)  # 4 steps an epoch
    return out, summary


def test_the_loss_falls_and_the_run_is_complete(run):
    out, summary = run
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12, 16, 20]
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], [r["loss"] for r in rows]
    assert {"train_loss_decode", "train_loss_aux"} <= set(rows[0])
    assert {"mIoU", "mAcc", "aAcc"} <= set(rows[-1]) and "mIoU" not in rows[0]  # evaluated at the end only
    assert 0 <= rows[-1]["mIoU"] <= 100 and summary["best_mIoU"] == rows[-1]["mIoU"]
    for name in ("last.pt", "best.pt", "summary.json", "config.json"):
        assert (out / name).exists()


def test_a_checkpoint_rebuilds_the_segmenter(run):
    out, _ = run
    model = load_segmenter(out / "last.pt")
    assert model.arch == "upernet_convnext_atto" and model.num_classes == 11 and not model.training
    assert model.class_names[0] == "background" and model.decode_head.conv_seg.in_channels == 16
    assert model.inference == {"scale": (128, 32), "mode": "whole", "crop": 32, "stride": 341,
                               "reduce_zero_label": False, "ratios": (1.0,), "flip": False}
    sd = torch.load(out / "last.pt", weights_only=True)["model"]
    torch.testing.assert_close(model.state_dict()["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.weight"])


def test_segment_and_eval_commands(run, scenes, tmp_path, capsys):
    out, _ = run
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    images = scenes / "images" / "validation"
    code = main(["segment", str(images), str(tmp_path / "bad.jpg"), "--checkpoint", str(out / "last.pt"),
                 "--out", str(tmp_path / "seg"), "--json", str(tmp_path / "s.json")])
    assert code == 1  # the unreadable file is reported, the others segmented
    result = json.loads((tmp_path / "s.json").read_text())
    assert len(result["results"]) == 4 and "error" in result["results"][-1]
    for r in result["results"][:3]:
        over, lab = Image.open(r["overlay"]), np.asarray(Image.open(r["labels"]))
        assert over.size == (80, 64) and over.mode == "RGB" and lab.shape == (64, 80) and lab.max() <= 10
        assert abs(sum(r["classes"].values()) - 1) < 1e-3
    assert main(["segment", str(next(images.iterdir())), "--checkpoint", str(out / "last.pt"), "--out",
                 str(tmp_path / "ms"), "--multi-scale"]) == 0
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", str(scenes), "--workers", "0",
                 "--json", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["images"] == 3 and len(metrics["per_class"]) == 11 and "Trouser" in metrics["per_class"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics["mIoU"] == pytest.approx(rows[-1]["mIoU"])  # the same protocol as the run's evaluation
    assert "mIoU" in capsys.readouterr().out  # the table
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", str(scenes), "--workers", "0",
                 "--multi-scale"]) == 0
    # --flip: the single scale and its mirror image, what evaluate_segmenter gives with flip
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", str(scenes), "--workers", "0", "--flip",
                 "--json", str(tmp_path / "f.json")]) == 0
    assert "single scale + flip, whole" in capsys.readouterr().out
    model = load_segmenter(out / "last.pt")
    data = build_seg_data(replace(load_config("scenes_seg"), **{"data.root": str(scenes), "data.workers": 0,
                                                                "data.seg_scale": (128, 32)}).data, train=False)
    want = evaluate_segmenter(model, data.eval_batches(1, 0), Runtime(), 11, mode="whole", flip=True).summarize()
    assert json.loads((tmp_path / "f.json").read_text())["mIoU"] == pytest.approx(want["mIoU"])
    assert main(["segment", str(next(images.iterdir())), "--checkpoint", str(out / "last.pt"), "--out",
                 str(tmp_path / "flip"), "--flip"]) == 0
    # --ratios: those ratios of the test scale (and the mirror image with --flip), in the checkpoint's own mode
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", str(scenes), "--workers", "0", "--ratios",
                 "0.75", "1", "1.25", "--flip", "--json", str(tmp_path / "r.json")]) == 0
    assert "ratios 0.75, 1, 1.25 + flip, whole" in capsys.readouterr().out
    want = evaluate_segmenter(model, data.eval_batches(1, 0, ratios=(0.75, 1.0, 1.25)), Runtime(), 11, mode="whole",
                              flip=True).summarize()
    assert json.loads((tmp_path / "r.json").read_text())["mIoU"] == pytest.approx(want["mIoU"])
    assert main(["segment", str(next(images.iterdir())), "--checkpoint", str(out / "last.pt"), "--out",
                 str(tmp_path / "ratios"), "--ratios", "1", "1.25", "--json", str(tmp_path / "rs.json")]) == 0
    assert json.loads((tmp_path / "rs.json").read_text())["ratios"] == [1.0, 1.25]


def test_the_run_evaluates_by_its_test_protocol_and_reads_subsets_at_one_scale(run, scenes, tmp_path, capsys):
    """The task's full evaluation is the config's seg_test_ratios + seg_test_flip; a subset (the reading after each
    pass) is the single scale, whatever the protocol, so that a multi-scale final test costs nothing per pass."""
    from convnext.segmentation.task import Segmentation
    out, _ = run
    model = load_segmenter(out / "last.pt")
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    cfg = _cfg(scenes, **{"data.seg_test_ratios": (1.0, 2.0), "data.seg_test_flip": True})
    data = build_seg_data(cfg.data, train=False)
    got = Segmentation().evaluate(model, data, Runtime())
    want = evaluate_segmenter(model, data.eval_batches(1, 0, ratios=(1.0, 2.0)), Runtime(), 11, mode="whole",
                              flip=True).summarize()
    assert got["mIoU"] == pytest.approx(want["mIoU"])
    assert len(seen) == 2 * 3 * 4 and {h for h, _ in seen} == {32, 64}  # 3 scenes x 2 ratios x flip, twice
    seen.clear()
    Segmentation().evaluate(model, data, Runtime(), limit=2)
    assert len(seen) == 2 and {h for h, _ in seen} == {32}  # 2 scenes, the test scale only, no mirror
    # a checkpoint stores its run's test; `convnext eval` tests by it unless told otherwise (--ratios 1: single)
    assert data.inference["ratios"] == (1.0, 2.0) and data.inference["flip"] is True
    ckpt = torch.load(out / "last.pt", weights_only=True)
    ckpt["meta"]["inference"] = data.inference
    torch.save(ckpt, tmp_path / "ms.pt")
    assert load_segmenter(tmp_path / "ms.pt").inference["ratios"] == (1.0, 2.0)
    assert main(["eval", "--checkpoint", str(tmp_path / "ms.pt"), "--data", str(scenes), "--workers", "0", "--json",
                 str(tmp_path / "ms.json")]) == 0
    assert "ratios 1, 2 + flip, whole" in capsys.readouterr().out
    assert json.loads((tmp_path / "ms.json").read_text())["mIoU"] == pytest.approx(got["mIoU"])
    assert main(["eval", "--checkpoint", str(tmp_path / "ms.pt"), "--data", str(scenes), "--workers", "0", "--ratios",
                 "1"]) == 0
    assert "single scale, whole" in capsys.readouterr().out


def test_ade20k_configs_are_the_official_recipe():
    """configs/ade20k.py on 8 processes: batch 16, lr 1e-4 (XL 8e-5) as given, 1,500 warm-up steps from 1e-6,
    poly to 0 over 160k, the stage-wise rule over 6 layers for T and 12 otherwise, crops 512 / 640."""
    official = {"tiny": (1e-4, 6, 0.4, 512), "small": (1e-4, 12, 0.3, 512), "base": (1e-4, 12, 0.4, 512),
                "base_22k": (1e-4, 12, 0.4, 640), "large_22k": (1e-4, 12, 0.4, 640),
                "xlarge_22k": (8e-5, 12, 0.4, 640)}
    for arg, (lr, layers, drop_path, crop) in official.items():
        cfg = load_config(f"ade20k:{arg}")
        assert cfg.task == "segmentation" and cfg.model.name in SEGMENTERS and cfg.model.layer_scale == 1.0
        o, d = cfg.optim, cfg.data
        assert (o.layer_decay, o.layer_decay_rule, o.layer_decay_layers) == (0.9, "stage_wise", layers)
        assert cfg.model.drop_path == drop_path and d.seg_crop_size == crop and d.seg_scale == (4 * crop, crop)
        assert d.seg_stride == {512: 341, 640: 426}[crop] and d.seg_test_mode == "slide"
        der = derive(cfg, num_train=20_210, world_size=8)  # ADE20K's training images
        assert der.effective_batch == 16 and math.isclose(der.lr, lr)
        assert (der.warmup_steps, der.total_steps) == (1500, 160_000)
        assert cfg.train.precision == ("fp32" if "large" in arg else "fp16")
    cfg = load_config("ade20k:tiny")
    at = lambda step: lr_at(step, 1e-4, 160_000, 1500, 0.0, schedule="poly", warmup_ratio=1e-6)  # noqa: E731
    assert at(0) == pytest.approx(1e-10) and at(1500) == pytest.approx(1e-4 * (1 - 1500 / 160_000))
    assert at(80_000) == pytest.approx(5e-5) and at(160_000) == 0.0
    with pytest.raises(UserError, match="unknown ADE20K run"):
        load_config("ade20k:huge")


def test_bad_input_is_one_sentence(run, scenes, tmp_path, capsys):
    r = subprocess.run([sys.executable, "-m", "convnext", "train", "--config", "scenes_seg", "--data",
                        str(tmp_path / "nowhere")], capture_output=True, text=True)
    err = r.stderr.strip()
    assert r.returncode == 2 and err.startswith("convnext train: error:") and "Traceback" not in err
    assert len(err.splitlines()) == 1 and "nowhere" in err
    assert main(["segment", str(scenes / "images"), "--checkpoint", str(tmp_path / "missing.pt"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    other = tmp_path / "other"  # data with other classes than the checkpoint's
    (other / "images" / "validation").mkdir(parents=True)
    (other / "annotations" / "validation").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(other / "images" / "validation" / "a.jpg")
    Image.fromarray(np.full((40, 40), 12, np.uint8)).save(other / "annotations" / "validation" / "a.png")
    assert main(["eval", "--checkpoint", str(run[0] / "last.pt"), "--data", str(other), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds the value 12" in err and len(err.splitlines()) == 1
    assert main(["eval", "--checkpoint", str(run[0] / "last.pt"), "--data", str(other), "--detector",
                 "box_score_thresh=0.1"]) == 2  # a detector's settings, not a segmenter's
    assert "not a detector checkpoint" in capsys.readouterr().err
    for extra in (["--ratios", "0", "1"], ["--ratios", "1", "--multi-scale"]):  # a ratio <= 0; both kinds of scales
        assert main(["eval", "--checkpoint", str(run[0] / "last.pt"), "--data", str(scenes), "--workers", "0",
                     *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert "--ratios" in err and len(err.splitlines()) == 1
