"""Recipes, the loop, run files, resume after SIGKILL, DDP equivalence and bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import convnext
from convnext.cli import main as cli
from convnext.config import Config, apply_overrides, derive, load_config, replace
from convnext.errors import UserError
from convnext.optim import layer_id, lr_at, param_groups

ROOT = Path(__file__).resolve().parent.parent


def small_cfg(root, **over):
    """ConvNeXt-atto at 32 px on the tiny image folder, a few steps, fp32, the paper's augmentation on."""
    cfg = load_config("in1k:tiny")
    base = {
        "model.name": "convnext_atto", "model.drop_path": 0.1, "data.root": str(root), "data.img_size": 32,
        "data.batch_size": 8, "data.workers": 0, "optim.lr": 1e-3, "optim.scale_lr": False,
        "optim.warmup_epochs": 1.0, "train.epochs": 2, "train.accum_steps": 1, "train.precision": "fp32",
        "train.channels_last": False, "train.ema_decay": 0.9, "train.log_every": 1,
    }
    base.update(over)
    return replace(cfg, **base)


# ------------------------------------------------------------------------------------------- recipe / config


def test_defaults_are_table5():
    c = Config()
    assert (c.optim.lr, c.optim.lr_batch, c.optim.weight_decay, c.optim.betas) == (4e-3, 4096, 0.05, (0.9, 0.999))
    assert (c.train.epochs, c.optim.warmup_epochs, c.optim.min_lr, c.train.ema_decay) == (300, 20, 1e-6, 0.9999)
    augment = (c.data.randaug, c.data.mixup, c.data.cutmix, c.data.mixup_switch_prob)
    assert augment == ("rand-m9-mstd0.5-inc1", 0.8, 1.0, 0.5)
    assert (c.data.reprob, c.data.smoothing) == (0.25, 0.1)
    drop_paths = [load_config(f"in1k:{s}").model.drop_path for s in ("tiny", "small", "base", "large")]
    assert drop_paths == [0.1, 0.4, 0.5, 0.5]


@pytest.mark.parametrize("spec", ["demo", "in1k:tiny", "in1k:large", "in22k:xlarge", "isotropic:small",
                                  "isotropic:large", "finetune:22k_1k_224:tiny", "finetune:22k_1k_384:xlarge",
                                  "finetune:1k_384:large", "folder"])
def test_shipped_configs_load(spec):
    cfg = load_config(spec)
    convnext.get_variant(cfg.model.name)  # names a real model


def test_effective_batch_and_lr():
    cfg = load_config("in1k:tiny")  # 128 per device x accumulation 4
    d = derive(cfg, num_train=1_281_167, world_size=8)
    assert d.effective_batch == 4096 and d.lr == pytest.approx(4e-3)
    assert d.steps_per_epoch == 1_281_167 // 4096 == 312  # the official iters_per_epoch
    assert d.warmup_steps == 20 * 312
    d2 = derive(cfg, num_train=1_281_167, world_size=2)
    assert d2.effective_batch == 1024 and d2.lr == pytest.approx(1e-3)  # linear scaling rule


def test_overrides_and_errors():
    cfg = apply_overrides(Config(), ["optim.lr=1e-3", "train.compile=true", "data.scale=0.2,1.0",
                                     "model.layer_scale=none"])
    assert cfg.optim.lr == 1e-3 and cfg.train.compile is True and cfg.data.scale == (0.2, 1.0)
    assert cfg.model.layer_scale is None
    quoted = apply_overrides(Config(), ['model.detector=("fpn_channels=64", \'box_fc_channels=256\')',
                                        "data.root='a b'"])
    assert quoted.model.detector == ("fpn_channels=64", "box_fc_channels=256") and quoted.data.root == "a b"
    with pytest.raises(UserError, match="unknown config key 'optim.lrr'"):
        apply_overrides(Config(), ["optim.lrr=1"])
    with pytest.raises(UserError, match="unknown config key"):
        apply_overrides(Config(), ["nope.lr=1"])
    with pytest.raises(UserError, match="takes an integer"):
        apply_overrides(Config(), ["train.epochs=ten"])
    with pytest.raises(UserError, match="true or false"):
        apply_overrides(Config(), ["train.compile=maybe"])


def test_lr_schedule():
    peak, total, warm, lo = 1.0, 100, 10, 1e-6
    assert lr_at(0, peak, total, warm, lo) == 0
    assert lr_at(5, peak, total, warm, lo) == pytest.approx(0.5)
    assert lr_at(10, peak, total, warm, lo) == pytest.approx(1.0)
    assert lr_at(55, peak, total, warm, lo) == pytest.approx(0.5 * (1 + lo), rel=1e-4)
    assert lr_at(100, peak, total, warm, lo) == pytest.approx(lo)


def test_no_weight_decay_on_1d_params():
    m = convnext.create_model("convnext_atto")
    for g in param_groups(m, 0.05):
        for name, p in zip(g["names"], g["params"]):
            assert g["weight_decay"] == (0.0 if p.ndim == 1 else 0.05), name
    names = {n for g in param_groups(m, 0.05) if g["weight_decay"] == 0 for n in g["names"]}
    assert "stages.0.0.gamma" in names and "stages.0.0.norm.weight" in names and "head.bias" in names


def test_layer_decay_official_rule_and_tiny():
    with torch.device("meta"):
        s = convnext.create_model("convnext_small")
        t = convnext.create_model("convnext_tiny")
        iso = convnext.create_model("convnext_isotropic_small")
    # official optim_factory.get_num_layer_for_convnext for S/B/L/XL
    assert layer_id("downsample_layers.0.0.weight", s) == 0
    assert layer_id("stages.0.2.dwconv.weight", s) == 1
    assert layer_id("downsample_layers.1.1.weight", s) == layer_id("stages.1.0.gamma", s) == 2
    assert layer_id("downsample_layers.2.0.weight", s) == 3
    assert [layer_id(f"stages.2.{k}.pwconv1.weight", s) for k in range(27)] == [3 + k // 3 for k in range(27)]
    assert layer_id("downsample_layers.3.1.weight", s) == layer_id("stages.3.2.gamma", s) == 12
    assert layer_id("head.weight", s) == layer_id("norm.bias", s) == 13
    # extended: T's 9-block stage 2 spreads over the same 9 ids (the official code refuses T)
    assert [layer_id(f"stages.2.{k}.dwconv.weight", t) for k in range(9)] == list(range(3, 12))
    assert layer_id("blocks.0.dwconv.weight", iso) == 1 and layer_id("blocks.17.dwconv.weight", iso) == 12
    groups = param_groups(t, 0.05, layer_decay=0.8)
    scales = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scales["head.weight"] == 1.0 and scales["downsample_layers.0.0.weight"] == pytest.approx(0.8**13)


def test_randaugment_never_raises_on_posterize():
    # a known pitfall: rand-m9-mstd0.5-inc1 can ask PosterizeIncreasing for 0 bits; Pillow 13 raises
    import random

    import numpy as np
    from PIL import Image

    from convnext.config import DataConfig
    from convnext.transforms import clamp_posterize, train_transform

    t = train_transform(DataConfig(img_size=16))
    assert clamp_posterize(t) >= 0  # idempotent call works; the transform already holds wrapped ops
    ops = [op for tr in t.transforms for op in getattr(tr, "ops", [])]
    post = [op for op in ops if "Posterize" in op.name]
    assert post, "RandAugment should include a Posterize op"
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    random.seed(0)
    for op in post:  # the extreme magnitude directly: 0 bits before the clamp
        op.magnitude, op.magnitude_std = 10, 0
        op.prob = 1.0
        op(img)
    for i in range(3000):
        random.seed(i)
        t(img)


# ------------------------------------------------------------------------------------------- the loop


def test_train_writes_run_files(image_folder, tmp_path):
    from convnext.train import train

    out = tmp_path / "run"
    summary = train(small_cfg(image_folder), out)
    for f in ("config.json", "last.pt", "best.pt", "best_ema.pt", "metrics.jsonl", "summary.json", "curves.png"):
        assert (out / f).exists(), f
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"loss", "lr", "top1", "top5", "ema_top1", "img_s", "time_s"} <= set(rows[0])
    s = json.loads((out / "summary.json").read_text())
    assert s == summary and {"final_top1", "best_top1", "final_ema_top1", "best_ema_top1"} <= set(s)
    ck = torch.load(out / "last.pt", weights_only=True)  # plain data only
    assert ck["meta"]["config"]["model"]["name"] == "convnext_atto" and ck["meta"]["git_commit"]
    assert ck["meta"]["class_names"] == ["class_0", "class_1", "class_2", "class_3"]
    assert json.loads((out / "config.json").read_text())["derived"]["effective_batch"] == 8
    # our checkpoint is an official-layout model for the rest of the library
    m = convnext.create_model("convnext_atto", num_classes=4)
    m.load_state_dict(ck["model"])


def test_training_learns(image_folder, tmp_path):
    from convnext.train import train

    cfg = small_cfg(image_folder, **{"data.mixup": 0.0, "data.cutmix": 0.0, "data.randaug": "", "data.reprob": 0.0,
                                      "train.epochs": 6, "optim.warmup_epochs": 0.5, "optim.lr": 2e-3})
    s = train(cfg, tmp_path / "run")
    assert s["best_top1"] >= 75.0  # 4 colour-coded classes: chance is 25%


def test_resume_after_sigkill_equals_uninterrupted(image_folder, tmp_path):
    # batch 4 x accumulation 2: 4 optimizer steps per epoch, 12 in all
    over = ["data.root=" + str(image_folder), "model.name=convnext_atto", "data.img_size=32", "data.batch_size=4",
            "train.accum_steps=2", "data.workers=0", "optim.scale_lr=false", "optim.lr=1e-3", "train.epochs=3",
            "train.precision=fp32",
            "train.channels_last=false", "train.ema_decay=0.9", "train.ckpt_every_steps=1", "model.drop_path=0.1"]
    cmd = [sys.executable, "-m", "convnext", "train", "--config", "in1k:tiny"]
    full = tmp_path / "full"
    subprocess.run(cmd + ["--out", str(full)] + over, check=True, capture_output=True, cwd=ROOT)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(cmd + ["--out", str(cut)] + over, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=ROOT)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill -9 once it has checkpointed a few steps
        if (cut / "last.pt").exists():
            try:
                if torch.load(cut / "last.pt", weights_only=True)["step"] >= 5:
                    break
            except Exception:  # noqa: BLE001 - replaced under our feet; try again
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(cut / "last.pt", weights_only=True)["step"]
    assert 1 <= killed_at < 12, killed_at  # 12 steps in all: it really was interrupted
    r = subprocess.run(cmd + ["--out", str(cut), "--resume"] + over, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert f"resumed from {cut / 'last.pt'} at step {killed_at}" in r.stdout
    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(cut / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 12
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=0)
        torch.testing.assert_close(b["model_ema"][k], a["model_ema"][k], rtol=0, atol=0)


def test_ddp_two_processes_match_one(image_folder, tmp_path):
    over = ["data.root=" + str(image_folder), "model.name=convnext_atto", "data.img_size=32", "data.workers=0",
            "optim.scale_lr=false", "optim.lr=1e-3", "train.epochs=1", "train.precision=fp32", "train.accum_steps=1",
            "train.channels_last=false", "train.ema_decay=0", "model.drop_path=0", "data.mixup=0", "data.cutmix=0"]
    base = ["-m", "convnext", "train", "--config", "in1k:tiny", "--device", "cpu"]
    one = tmp_path / "one"
    subprocess.run([sys.executable] + base + ["--out", str(one), "data.batch_size=8"] + over, check=True,
                   capture_output=True, cwd=ROOT)
    two = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
                       + base[1:] + ["--out", str(two), "data.batch_size=4"] + over, capture_output=True, text=True,
                       cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(one / "last.pt", weights_only=True)
    b = torch.load(two / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4 and b["meta"]["derived"]["world_size"] == 2
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=1e-5)


def test_finetune_replaces_head(image_folder, tmp_path):
    from convnext.train import train

    src = convnext.create_model("convnext_atto", num_classes=7)
    path = tmp_path / "official.pth"
    torch.save({"model": src.state_dict()}, path)
    cfg = small_cfg(image_folder, **{"model.init": str(path), "model.head_init_scale": 0.001, "train.max_steps": 1,
                                      "optim.lr": 0.0, "optim.min_lr": 0.0, "optim.layer_decay": 0.8,
                                      "train.ema_decay": 0.0})
    train(cfg, tmp_path / "ft")
    ck = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)
    assert ck["model"]["head.weight"].shape == (4, 320)
    assert ck["model"]["head.weight"].abs().max() < 0.01  # fresh head, scaled by 0.001
    torch.testing.assert_close(ck["model"]["stages.2.3.pwconv1.weight"], src.state_dict()["stages.2.3.pwconv1.weight"])


def test_eval_command(image_folder, tmp_path, capsys):
    from convnext.train import train

    train(small_cfg(image_folder, **{"train.epochs": 1}), tmp_path / "run")
    assert cli(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", str(image_folder),
                "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["n"] == 16 and 0 <= r["top1"] <= 100
    assert "Acc@1" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- bad input


def run_cli(args, capsys):
    code = cli(args)
    err = capsys.readouterr().err
    return code, err


def test_missing_and_empty_data(tmp_path, capsys):
    code, err = run_cli(["train", "--config", "in1k:tiny", "--data", str(tmp_path / "nope")], capsys)
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "val").mkdir()
    code, err = run_cli(["train", "--config", "in1k:tiny", "--data", str(tmp_path / "empty")], capsys)
    assert code == 2 and "no class sub-folders" in err


def test_wrong_layout(tmp_path, capsys):
    (tmp_path / "flat").mkdir()
    code, err = run_cli(["train", "--config", "in1k:tiny", "--data", str(tmp_path / "flat")], capsys)
    assert code == 2 and "train/ and val/" in err


def test_unknown_key(capsys):
    code, err = run_cli(["train", "--config", "demo", "optim.learning_rate=1"], capsys)
    assert code == 2 and "unknown config key 'optim.learning_rate'" in err


def test_corrupt_image_named_then_skipped(image_folder, tmp_path, capsys):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    bad = root / "train" / "class_1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    args = ["train", "--config", "in1k:tiny", "--out", str(tmp_path / "r")] + [
        f"{k}={v}" for k, v in {"data.root": root, "model.name": "convnext_atto", "data.img_size": 32,
                                "data.batch_size": 12, "data.workers": 0, "train.epochs": 1, "train.precision": "fp32",
                                "train.accum_steps": 1,
                                "train.channels_last": "false"}.items()]
    code, err = run_cli(args, capsys)
    assert code == 2 and "broken.png" in err and "skip_bad_images" in err and "Traceback" not in err
    code, err = run_cli(args + ["data.skip_bad_images=true"], capsys)
    assert code == 0
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_images"] == 1


def test_class_count_mismatch_on_resume(image_folder, tmp_path, capsys):
    from convnext.train import train

    out = tmp_path / "r"
    train(small_cfg(image_folder, **{"train.max_steps": 1}), out)
    ck = torch.load(out / "last.pt", weights_only=True)
    ck["meta"]["num_classes"] = 9
    torch.save(ck, out / "last.pt")
    code, err = run_cli(["train", "--out", str(out), "--resume"], capsys)
    assert code == 2 and "9 classes" in err


def test_nan_loss_stops_with_checkpoint_intact(image_folder, tmp_path, capsys):
    out = tmp_path / "r"
    args = ["train", "--config", "in1k:tiny", "--out", str(out)] + [
        f"{k}={v}" for k, v in {"data.root": image_folder, "model.name": "convnext_atto", "data.img_size": 32,
                                "data.batch_size": 8, "data.workers": 0, "train.epochs": 3, "train.precision": "fp32",
                                "train.accum_steps": 1, "train.channels_last": "false", "optim.warmup_epochs": 0,
                                "optim.scale_lr": "false",
                                "optim.lr": 1e30, "optim.min_lr": 1e30, "data.mixup": 0, "data.cutmix": 0,
                                "train.ckpt_every_steps": 1}.items()]
    code, err = run_cli(args, capsys)
    assert code == 2 and "Traceback" not in err
    assert "the loss became" in err and "last good checkpoint" in err
    failed_at = int(err.split(" at step ")[1].split()[0])
    good = torch.load(out / "last.pt", weights_only=True)  # intact and readable
    assert good["step"] == failed_at  # written after the last step whose loss was finite
    assert failed_at >= 1  # step 0's loss is finite; the lr of 1e30 blows the weights up after it


def test_synthetic_data_runs_the_whole_loop(tmp_path):
    """data.dataset=synthetic (for timing): one fixed batch, the model's channel count, every part of the loop."""
    from convnext.data import build_data
    from convnext.train import train

    cfg = small_cfg("", **{"data.dataset": "synthetic", "model.in_chans": 1, "data.limit_train": 40,
                           "data.limit_eval": 10, "train.max_steps": 3})
    data = build_data(cfg.data, in_chans=1)
    x, y = next(data.train_batches(0, range(1), 1, 1, 0))
    assert x.shape == (8, 1, 32, 32) and y.shape == (8,) and data.num_classes == 1000
    assert sum(len(b[1]) for b in data.eval_batches(world=2, rank=1)) == 5  # its shard of 10, nothing twice
    summary = train(cfg, tmp_path / "r")
    assert summary["steps"] == 3 and summary["final_top1"] is not None



def test_readme_finetune_command(image_folder, tmp_path, capsys):
    """`convnext train --config folder --data DIR --init WEIGHTS` (the README's fine-tune line), offline: the
    weights are a local official-format file; the head is replaced for the folder's classes."""
    src = convnext.create_model("convnext_atto")  # 1,000 classes, as an ImageNet checkpoint
    path = tmp_path / "convnext_atto_official.pth"
    torch.save({"model": src.state_dict()}, path)
    out = tmp_path / "mine"
    code = cli(["train", "--config", "folder", "--data", str(image_folder), "--init", str(path), "--out", str(out),
                "model.name=convnext_atto", "data.img_size=32", "data.batch_size=8", "data.workers=0",
                "train.precision=fp32", "train.max_steps=2", "train.channels_last=false"])
    assert code == 0
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["model"]["head.weight"].shape == (4, 320)
    assert ck["meta"]["class_names"] == [f"class_{i}" for i in range(4)]
    moved = (ck["model"]["stages.0.0.pwconv1.weight"] - src.state_dict()["stages.0.0.pwconv1.weight"]).abs().max()
    assert moved < 1e-3  # started from the file's backbone (lr 5e-5 scaled to batch 8: tiny steps)
