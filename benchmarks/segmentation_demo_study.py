"""Ablations for the offline segmentation demo: which change makes UperNet learn the scenes faster on a CPU.

    .venv/bin/python benchmarks/segmentation_demo_study.py --init runs/scenes/last.pt --steps 1500 \\
        --out benchmarks/results/seg_study_det_init.json
    .venv/bin/python benchmarks/segmentation_demo_study.py --diagnose runs/scenes_seg/last.pt --val 500
    OMP_NUM_THREADS=1 taskset -c 0 .venv/bin/python benchmarks/segmentation_demo_study.py --cls-init normal ...

Not the demo (configs/scenes_seg.py runs through the engine): a bare loop on the scenes preloaded whole at one
size (data/scenes/ade, `convnext data scenes`), flip only unless asked (`--photometric`: mmseg's
PhotoMetricDistortion per image; `--rescale LO HI`: each batch resized by a random ratio), so that one change at
a time (init, head width, classifier init, lr, size, background weight, augmentation) can be compared at equal
steps, two runs side by side on one core each. AdamW with the demo's stage-wise layer decay and poly schedule.
Each evaluation reports, on held-out scenes and on as many training scenes: mIoU, and two numbers that say which
half of the task fails: `found`, the share of item pixels predicted as some item, and `among`, the share of item
pixels whose best item class (the argmax over the item classes only) is right. `--diagnose` trains nothing: it
takes a trained segmenter and says what its mIoU would be with perfect naming and with perfect finding.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from convnext.benchmark import provenance
from convnext.checkpoint import write_text
from convnext.config import OptimConfig
from convnext.optim import build_optimizer, lr_at, set_lr
from convnext.segmentation.data import normalize, photometric_distortion
from convnext.segmentation.evaluate import SegMetric
from convnext.segmentation.models import (IGNORE_INDEX, create_segmenter, load_segmenter, resize,
                                           segmentation_loss)

NUM_CLASSES = 11  # the scenes: background + Fashion-MNIST's 10


def load_split(root: Path, split: str, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` scenes of a split, resized whole to size x size: uint8 images and their labels."""
    files = sorted((root / "images" / split).iterdir())[:n]
    images, labels = [], []
    for f in files:
        img = Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)
        lab = Image.open(root / "annotations" / split / f"{f.stem}.png").resize((size, size), Image.NEAREST)
        images.append(torch.from_numpy(np.array(img)).permute(2, 0, 1))
        labels.append(torch.from_numpy(np.array(lab).astype(np.int64)))
    return torch.stack(images), torch.stack(labels)


@torch.no_grad()
def measure(model, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    model.eval()
    metric, found, among, items = SegMetric(NUM_CLASSES), 0, 0, 0
    for x, y in zip(images.split(20), labels.split(20)):
        logits = model(normalize(x))
        pred, item = logits.argmax(1), (y > 0) & (y != IGNORE_INDEX)
        metric.update(pred, y)
        items += int(item.sum())
        found += int((pred[item] > 0).sum())
        among += int((logits[:, 1:].argmax(1)[item] + 1 == y[item]).sum())
    model.train()
    iou = [round(c["IoU"], 1) for c in metric.per_class().values()]
    return {"mIoU": round(metric.summarize()["mIoU"], 2), "found": round(found / items, 3),
            "among": round(among / items, 3), "IoU": iou}


@torch.no_grad()
def diagnose(model, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Which half of the task a trained segmenter fails, in mIoU: as predicted; with every item pixel it finds
    given its true class (perfect naming); with every item pixel given its best item class (perfect finding).
    And `among` per pixel against `whole_items`: the share of item pixels in items whose majority item class is
    right (each connected region of one class in the label map is an item): close to `among` when whole items are
    misnamed, above it when the pixels of one item disagree."""
    model.eval()
    metrics = {k: SegMetric(NUM_CLASSES) for k in ("mIoU", "perfect_naming_mIoU", "perfect_finding_mIoU")}
    pixels = right = whole = 0
    for x, y in zip(images.split(20), labels.split(20)):
        logits = model(normalize(x))
        pred, best_item = logits.argmax(1), logits[:, 1:].argmax(1) + 1
        item = (y > 0) & (y != IGNORE_INDEX)
        named = torch.where(item & (pred > 0), y, pred)
        metrics["mIoU"].update(pred, y)
        metrics["perfect_naming_mIoU"].update(named, y)
        metrics["perfect_finding_mIoU"].update(torch.where(item, best_item, pred), y)
        for lab, guess in zip(y.numpy(), best_item.numpy()):
            for k in range(1, NUM_CLASSES):
                regions, n = ndimage.label(lab == k)
                for r in range(1, n + 1):
                    votes = guess[regions == r]
                    pixels += votes.size
                    right += int((votes == k).sum())
                    whole += votes.size * int(np.bincount(votes, minlength=NUM_CLASSES).argmax() == k)
    out = {k: round(m.summarize()["mIoU"], 2) for k, m in metrics.items()}
    return {**out, "among": round(right / pixels, 3), "whole_items": round(whole / pixels, 3)}


def run_provenance(batch: int, size: int) -> dict:
    """The machine, versions and commit of a run, with its setting (fp32 on the CPU, eager)."""
    return provenance(device="cpu", precision="fp32", batch_size=batch, img_size=size, channels_last=False,
                      compile="none", model="upernet_convnext_atto")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/scenes/ade", help="the scenes' ADE20K-layout copy")
    p.add_argument("--init", default="runs/scenes/last.pt", help="backbone weights ('' for none)")
    p.add_argument("--size", type=int, default=128, help="side the scenes are resized to")
    p.add_argument("--channels", type=int, default=64, help="UPerHead width")
    p.add_argument("--aux-channels", type=int, default=32, help="auxiliary FCNHead width")
    p.add_argument("--cls-init", default="default", choices=("default", "normal"))
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--layer-decay", type=float, default=0.9)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--bg-weight", type=float, default=1.0, help="loss weight of the background class")
    p.add_argument("--photometric", action="store_true", help="mmseg's PhotoMetricDistortion on each image")
    p.add_argument("--rescale", type=float, nargs=2, metavar=("LO", "HI"), help="resize each batch by a ratio in "
                   "[LO, HI] (to a multiple of 32)")
    p.add_argument("--train", type=int, default=4000, help="training scenes to preload")
    p.add_argument("--val", type=int, default=100, help="held-out scenes (and as many training scenes) to evaluate")
    p.add_argument("--eval-every", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the curve as JSON here")
    p.add_argument("--diagnose", metavar="CHECKPOINT", help="train nothing: say which half of the task a trained "
                   "segmenter (a run's last.pt) fails, on --val held-out scenes at --size")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    root = Path(a.data)
    if a.diagnose:
        result = diagnose(load_segmenter(a.diagnose), *load_split(root, "validation", a.val, a.size))
        print(json.dumps(result))
        if a.out:
            write_text(json.dumps({**run_provenance(20, a.size), "args": vars(a), "diagnosis": result}, indent=2)
                       + "\n", a.out)
        return
    x_train, y_train = load_split(root, "training", a.train, a.size)
    x_val, y_val = load_split(root, "validation", a.val, a.size)
    model = create_segmenter("upernet_convnext_atto", NUM_CLASSES, backbone_weights=a.init or None,
                             channels=a.channels, aux_channels=a.aux_channels, cls_init=a.cls_init).train()
    optim = OptimConfig(lr=a.lr, weight_decay=0.05, layer_decay=a.layer_decay, layer_decay_rule="stage_wise",
                        layer_decay_layers=6)
    opt = build_optimizer(model, optim, a.lr)
    class_weight = None if a.bg_weight == 1.0 else torch.tensor([a.bg_weight] + [1.0] * (NUM_CLASSES - 1))
    g, rng = torch.Generator().manual_seed(a.seed), random.Random(a.seed)
    curve, losses, t0 = [], [], time.perf_counter()
    for step in range(a.steps):
        set_lr(opt, lr_at(step, a.lr, a.steps, a.warmup, 0.0, schedule="poly", warmup_ratio=1e-6))
        idx = torch.randint(len(x_train), (a.batch,), generator=g)
        x, y = x_train[idx], y_train[idx]
        flip = torch.rand(a.batch, generator=g) < 0.5
        x, y = torch.where(flip[:, None, None, None], x.flip(-1), x), torch.where(flip[:, None, None], y.flip(-1), y)
        if a.photometric:
            x = torch.stack([photometric_distortion(img, rng) for img in x])
        x = normalize(x)
        if a.rescale:
            side = max(32, round(a.size * rng.uniform(*a.rescale) / 32) * 32)
            x = resize(x, (side, side))
            y = F.interpolate(y[:, None].float(), size=(side, side), mode="nearest")[:, 0].long()
        loss = segmentation_loss(model(x), y, model.aux_weight, class_weight)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            row = {"step": step + 1, "loss": round(float(np.mean(losses[-50:])), 4),
                   "s_per_step": round((time.perf_counter() - t0) / (step + 1), 3),
                   "val": measure(model, x_val, y_val), "train": measure(model, x_train[:a.val], y_train[:a.val])}
            curve.append(row)
            v, t = row["val"], row["train"]
            print(f"step {row['step']} loss {row['loss']:.3f} | held-out mIoU {v['mIoU']:.1f} found {v['found']:.2f} "
                  f"among {v['among']:.2f} | training mIoU {t['mIoU']:.1f} among {t['among']:.2f}", flush=True)
    if a.out:
        result = {**run_provenance(a.batch, a.size), "args": vars(a), "curve": curve}
        write_text(json.dumps(result, indent=2) + "\n", a.out)


if __name__ == "__main__":
    main()
