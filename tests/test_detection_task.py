"""Detection through the engine and the command line, on a tiny scene set: the loss falls, a resumed run ends with
the weights of an uninterrupted one, checkpoints rebuild the detector, `convnext detect` and `convnext eval` work,
and bad input gives one sentence."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
import torch

from convnext.cli import main
from convnext.config import load_config, replace
from convnext.detection.models import load_detector
from convnext.detection.scenes import make_scenes
from convnext.tasks import train

TINY = {  # the demo's recipe, shrunk to seconds: 96 px scenes, a 32-channel FPN, few RoIs
    "data.batch_size": 2, "data.workers": 0, "data.det_scales": (80, 96), "data.det_max_size": 128,
    "data.det_crop_scales": (64, 80), "data.det_crop_size": (48, 64), "data.det_test_scale": 96,
    "model.detector": ("fpn_channels=32", "box_batch_size_per_image=32", "rpn_post_nms_top_n_train=64",
                       "rpn_pre_nms_top_n_train=200", "rpn_pre_nms_top_n_test=200", "rpn_post_nms_top_n_test=64"),
    "model.init": "", "optim.warmup_steps": 2, "optim.milestones": (), "train.total_steps": 0, "train.log_every": 1000,
}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, num_train=8, num_val=4, size=(96, 96), items=(1, 2), scale=(1.0, 2.0), seed=0, progress=False)
    return root


def _cfg(scenes, **extra):
    return replace(load_config("scenes"), **{**TINY, "data.root": str(scenes), **extra})


@pytest.fixture(scope="module")
def run(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = _cfg(scenes, **{"train.epochs": 4, "optim.lr": 2e-3})  # 4 steps an epoch
    summary = train(cfg, out)
    return out, summary


def test_the_loss_falls_and_the_run_is_complete(run):
    out, summary = run
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12, 16]
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], [r["loss"] for r in rows]
    assert {"train_loss_classifier", "train_loss_mask", "train_loss_objectness"} <= set(rows[0])
    assert "box_AP" in rows[-1] and "mask_AP50" in rows[-1] and "best_box_AP" in summary
    assert rows[-1]["img_s"] * rows[-1]["time_s"] == pytest.approx(8, rel=1e-6)  # 4 steps x 2 images
    for name in ("last.pt", "best.pt", "summary.json", "config.json"):
        assert (out / name).exists()


def test_a_checkpoint_rebuilds_the_detector(run, scenes):
    out, _ = run
    model = load_detector(out / "last.pt")
    assert model.arch == "mask_rcnn_convnext_atto" and model.num_classes == 10 and len(model.class_names) == 10
    assert model.backbone.out_channels == 32 and model.transform.min_size == (96,)
    sd = torch.load(out / "last.pt", weights_only=True)["model"]
    torch.testing.assert_close(model.state_dict()["roi_heads.box_head.fc6.weight"], sd["roi_heads.box_head.fc6.weight"])


def test_resume_equals_uninterrupted(scenes, tmp_path):
    cfg = _cfg(scenes, **{"train.epochs": 2})
    train(cfg, tmp_path / "whole")
    train(replace(cfg, **{"train.max_steps": 3}), tmp_path / "cut")
    train(cfg, tmp_path / "cut", resume=True)
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 8
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


def test_detect_and_eval_commands(run, scenes, tmp_path, capsys):
    out, _ = run
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    code = main(["detect", str(scenes / "val2017"), str(tmp_path / "bad.jpg"), "--checkpoint", str(out / "last.pt"),
                 "--out", str(tmp_path / "drawn"), "--score-thresh", "0.0", "--json", str(tmp_path / "d.json")])
    assert code == 1  # the unreadable file is reported, the others drawn
    result = json.loads((tmp_path / "d.json").read_text())
    assert len(result["results"]) == 5 and "error" in result["results"][-1]
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 4
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", str(scenes), "--workers", "0",
                 "--json", str(tmp_path / "m.json"), "--results", str(tmp_path / "r.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics) >= {"box_AP", "box_AP50", "mask_AP", "mask_ARl"}
    assert len(metrics["per_class_AP50"]["bbox"]) == 10
    assert isinstance(json.loads((tmp_path / "r.json").read_text()), list)
    printed = capsys.readouterr().out
    assert "AP50" in printed and "short side 96" in printed  # the table, at the checkpoint's test scale
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])  # the run's own final evaluation
    assert metrics["box_AP"] == pytest.approx(last["box_AP"], abs=1e-6)  # the same images, scale and numbers
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", str(scenes), "--workers", "0",
                 "--img-size", "64"]) == 0
    assert "short side 64" in capsys.readouterr().out
    # test-time settings replaced: every score kept, one detection per image at most
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", str(scenes), "--workers", "0",
                 "--detector", "box_score_thresh=0.0", "box_detections_per_img=1", "rpn_post_nms_top_n_test=50",
                 "--results", str(tmp_path / "r1.json")]) == 0
    per_image = Counter(r["image_id"] for r in json.loads((tmp_path / "r1.json").read_text()))
    assert per_image and max(per_image.values()) == 1
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", str(scenes), "--detector", "no_such=1"]) == 2
    assert "no_such" in capsys.readouterr().err


def test_bad_input_is_one_sentence(scenes, tmp_path):
    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "convnext", *args], capture_output=True, text=True)
        return r.returncode, r.stderr.strip()

    code, err = cli("train", "--config", "scenes", "--data", str(tmp_path / "nowhere"))
    assert code == 2 and err.startswith("convnext train: error:")
    assert "Traceback" not in err and len(err.splitlines()) == 1
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train2017.json").write_text('{"not": "coco"}')
    code, err = cli("train", "--config", "scenes", "--data", str(tmp_path))
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1
    code, err = cli("train", "--config", "coco:mask_rcnn_huge")
    assert code == 2 and "unknown COCO run" in err
    code, err = cli("detect", str(scenes / "val2017"), "--checkpoint", str(tmp_path / "missing.pt"), "--out",
                    str(tmp_path / "o"))
    assert code == 2 and "missing.pt" in err and "Traceback" not in err
