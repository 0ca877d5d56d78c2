"""How well can ConvNeXt-atto name the scenes' items when it is shown exactly where they are, at the offline
segmentation demo's budget? The demo's failure is naming (benchmarks/segmentation_demo_study.py --diagnose); this
bounds what a separate namer would add to the demo's masks, not the task: given four times the steps, the segmenter
names about as well by itself (RESULTS.md).

    .venv/bin/python benchmarks/scenes_naming_ceiling.py --init runs/scenes/last.pt --size 64 \\
        --segmenter runs/scenes_seg/last.pt --out benchmarks/results/scenes_naming_ceiling_detector_init_64.json
    .venv/bin/python benchmarks/scenes_naming_ceiling.py --detector runs/scenes/last.pt   # the detector, GT boxes

Each item of the scenes (data/scenes: COCO annotations, `convnext data scenes`) is cut out by its ground-truth box
(a square around the box, the photograph included), resized to --size and classified by an atto backbone (global
average pool, LayerNorm, a linear classifier) fine-tuned on the training scenes' items: AdamW, lr linear to 0,
flip, label smoothing 0.1, batch 64. Its held-out accuracy after each pass is the share of the held-out items it
names right with a perfect localisation handed to it, at this budget.

`--segmenter CKPT` then says what that naming would be worth in the demo's mIoU: the segmenter's own prediction on
the held-out scenes, with every pixel of an item that it predicts as some item given the crop classifier's class
for that item (pixels it calls photograph stay so; photograph it calls an item stays so).

`--save-backbone PATH` keeps the crop classifier's backbone, to start a segmenter from (its output norms but the
last are new there).

`--detector CKPT` trains nothing: the detection demo's box head classifies the held-out items' ground-truth boxes
(its RoI features at the detector's test scale), the naming the segmenter's backbone was trained to.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from torch import nn

from convnext.backbone import ConvNeXtBackbone, load_backbone_weights
from convnext.benchmark import provenance
from convnext.checkpoint import save, write_text
from convnext.labels import FASHION_MNIST
from convnext.segmentation.data import eval_inputs, normalize
from convnext.segmentation.evaluate import SegMetric, eval_protocol, label_map, predict_probs
from convnext.segmentation.models import load_segmenter

SPLITS = {"train": "train2017", "val": "val2017"}


def read_split(root: Path, split: str, n: int) -> list[tuple[Path, list[dict]]]:
    """The first `n` scenes of a COCO split: (image path, its annotations)."""
    coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    anns: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    return [(root / split / img["file_name"], anns.get(img["id"], [])) for img in coco["images"][:n]]


def square_crop(img: Image.Image, bbox, size: int) -> np.ndarray:
    """The square around a COCO box (x, y, w, h) on its longer side, resized to size x size (bicubic)."""
    x, y, w, h = bbox
    side, cx, cy = max(w, h), x + w / 2, y + h / 2
    box = (int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
    return np.asarray(img.crop(box).resize((size, size), Image.BICUBIC))


def item_crops(scenes, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, size, size) crops of every item of `scenes` and their class (0..9)."""
    crops, labels = [], []
    for path, anns in scenes:
        img = Image.open(path).convert("RGB")
        for a in anns:
            crops.append(square_crop(img, a["bbox"], size))
            labels.append(a["category_id"] - 1)
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


class CropClassifier(nn.Module):
    """An atto backbone's last stage, average-pooled, layer-normalised, classified."""

    def __init__(self, init: str, num_classes: int = len(FASHION_MNIST)):
        super().__init__()
        self.body = ConvNeXtBackbone("convnext_atto", out_indices=(3,))
        if init:
            load_backbone_weights(self.body, init)
        self.norm = nn.LayerNorm(self.body.out_channels[-1], eps=1e-6)
        self.head = nn.Linear(self.body.out_channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.body(x)["3"].mean((2, 3))))


@torch.no_grad()
def predict(model: nn.Module, crops: torch.Tensor) -> torch.Tensor:
    model.eval()
    out = torch.cat([model(normalize(x)).argmax(1) for x in crops.split(256)])
    model.train()
    return out


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, a) -> list[dict]:
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.05)
    g = torch.Generator().manual_seed(a.seed)
    per_pass, curve, t0 = len(y) // a.batch, [], time.perf_counter()
    steps = a.epochs * per_pass
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = a.lr * (1 - step / steps)
        idx = torch.randint(len(y), (a.batch,), generator=g)
        xb = x[idx]
        flip = torch.rand(a.batch, generator=g) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        loss = F.cross_entropy(model(normalize(xb)), y[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % per_pass == 0:
            acc = (predict(model, xv) == yv).float().mean().item()
            curve.append({"pass": (step + 1) // per_pass, "held_out_accuracy": round(acc, 4),
                          "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(curve[-1]), flush=True)
    return curve


@torch.no_grad()
def with_crop_naming(segmenter, scenes, names: torch.Tensor, num_classes: int) -> dict[str, float]:
    """mIoU of the segmenter as it is and with the crop classifier's names for the items it finds (module doc)."""
    metrics = {"segmenter": SegMetric(num_classes), "segmenter_named_by_crops": SegMetric(num_classes)}
    inf, k = segmenter.inference, 0
    mode = eval_protocol(inf)[0]
    for path, anns in scenes:
        img = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        h, w = img.shape[-2:]
        pred = label_map(predict_probs(segmenter, eval_inputs(img, inf["scale"]), (h, w), mode=mode, crop=inf["crop"],
                                       stride=inf["stride"]))  # the checkpoint's single-scale test, as convnext eval
        label = torch.zeros(h, w, dtype=torch.long)
        named = pred.clone()
        for a in anns:
            m = torch.from_numpy(mask_utils.decode(a["segmentation"]).astype(bool))
            label[m] = a["category_id"]
            named[m & (pred > 0)] = int(names[k]) + 1
            k += 1
        metrics["segmenter"].update(pred[None], label[None])
        metrics["segmenter_named_by_crops"].update(named[None], label[None])
    return {key: round(m.summarize()["mIoU"], 2) for key, m in metrics.items()}


@torch.no_grad()
def detector_naming(path: str, scenes) -> dict:
    """Share of held-out items the detector's box head names right from their ground-truth boxes."""
    from convnext.detection.models import load_detector
    model = load_detector(path)
    right = total = 0
    for img_path, anns in scenes:
        if not anns:
            continue
        img = torch.from_numpy(np.array(Image.open(img_path).convert("RGB"))).permute(2, 0, 1).float() / 255
        batch, _ = model.transform([img])
        scale = batch.tensors.shape[-2] / img.shape[-2]  # the scenes are square: one scale for both sides
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]) * scale
        heads = model.roi_heads
        feats = heads.box_roi_pool(model.backbone(batch.tensors), [boxes.float()], batch.image_sizes)
        logits, _ = heads.box_predictor(heads.box_head(feats))
        truth = torch.tensor([a["category_id"] - 1 for a in anns])
        right += int((logits[:, 1:].argmax(1) == truth).sum())
        total += len(anns)
    return {"items": total, "accuracy": round(right / total, 4)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/scenes", help="the scenes (COCO layout, `convnext data scenes`)")
    p.add_argument("--init", default="runs/demo/best_ema.pt", help="backbone weights for the crop classifier")
    p.add_argument("--size", type=int, default=64, help="side the crops are resized to")
    p.add_argument("--epochs", type=int, default=6, help="passes over the training items")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--train", type=int, default=4000, help="training scenes whose items are used")
    p.add_argument("--val", type=int, default=500, help="held-out scenes whose items are named")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--segmenter", help="a segmentation run's checkpoint: what the crop naming is worth in its mIoU")
    p.add_argument("--detector", help="train nothing: the detector's box-head naming on ground-truth boxes")
    p.add_argument("--save-backbone", metavar="PATH", help="write the crop classifier's backbone here (a state dict "
                   "that `--init` of benchmarks/segmentation_demo_study.py and `model.init` load)")
    p.add_argument("--out", help="write the result as JSON here")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    root = Path(a.data)
    val = read_split(root, SPLITS["val"], a.val)
    result = {**provenance(device="cpu", precision="fp32", batch_size=a.batch, img_size=a.size, channels_last=False,
                           compile="none", model="convnext_atto"), "args": vars(a)}
    if a.detector:
        result["detector_naming"] = detector_naming(a.detector, val)
        print(json.dumps(result["detector_naming"]))
    else:
        t0 = time.perf_counter()
        x, y = item_crops(read_split(root, SPLITS["train"], a.train), a.size)
        xv, yv = item_crops(val, a.size)
        print(f"{len(y):,} training items, {len(yv):,} held-out items ({time.perf_counter() - t0:.0f} s)", flush=True)
        model = CropClassifier(a.init).train()
        result["curve"] = train(model, x, y, xv, yv, a)
        if a.save_backbone:
            save(model.body.state_dict(), a.save_backbone)
        names = predict(model, xv)
        truth, guess = yv.numpy(), names.numpy()
        result["per_class_accuracy"] = {c: round(float((guess[truth == k] == k).mean()), 4) if (truth == k).any()
                                        else None for k, c in enumerate(FASHION_MNIST)}  # None: no such item
        if a.segmenter:
            result["mIoU"] = with_crop_naming(load_segmenter(a.segmenter), val, names, len(FASHION_MNIST) + 1)
            print(json.dumps(result["mIoU"]))
    if a.out:
        write_text(json.dumps(result, indent=2) + "\n", a.out)


if __name__ == "__main__":
    main()
