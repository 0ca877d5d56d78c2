"""benchmarks/scenes_naming_ceiling.py on a tiny scene set: one crop per annotated item, and the mIoU it reports for
a segmenter named by the crop classifier is the mIoU of the label map built by hand."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convnext.detection.scenes import make_scenes
from convnext.labels import FASHION_MNIST
from convnext.segmentation.evaluate import SegMetric

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("scenes_naming_ceiling", ROOT / "benchmarks/scenes_naming_ceiling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    make_scenes(root, num_train=3, num_val=3, size=(64, 80), items=(1, 3), scale=(1.0, 2.0), seed=0, progress=False)
    return root


class EveryPixelTshirt(nn.Module):
    """A stand-in segmenter: class 1 (T-shirt) everywhere, at the input's size."""
    inference = {"scale": (160, 64), "mode": "whole", "crop": 64, "stride": 48}

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 11, *x.shape[-2:])
        logits[:, 1] = 1.0
        return logits


def test_one_crop_per_item_and_the_named_mIoU(scenes):
    script = _script()
    val = script.read_split(scenes, "val2017", 3)
    coco = json.loads((scenes / "annotations/instances_val2017.json").read_text())
    crops, labels = script.item_crops(val, 24)
    assert crops.shape == (len(coco["annotations"]), 3, 24, 24) and crops.dtype == torch.uint8
    assert labels.tolist() == [a["category_id"] - 1 for a in coco["annotations"]]
    # named with the truth, every item pixel is right and the photograph stays T-shirt
    got = script.with_crop_naming(EveryPixelTshirt(), val, labels, 11)
    as_is, named = SegMetric(11), SegMetric(11)
    for path, _ in val:
        label = torch.from_numpy(np.array(Image.open(scenes / "ade/annotations/validation" / f"{path.stem}.png")))
        label = label.long()[None]
        as_is.update(torch.ones_like(label), label)
        named.update(torch.where(label > 0, label, torch.ones_like(label)), label)
    assert got == {"segmenter": round(as_is.summarize()["mIoU"], 2),
                   "segmenter_named_by_crops": round(named.summarize()["mIoU"], 2)}
    assert got["segmenter_named_by_crops"] > got["segmenter"]


def test_the_crop_classifier_trains(scenes):
    script = _script()
    x, y = script.item_crops(script.read_split(scenes, "train2017", 3), 32)
    args = type("Args", (), {"lr": 1e-3, "seed": 0, "epochs": 2, "batch": 2})()
    model = script.CropClassifier("")
    curve = script.train(model, x, y, x, y, args)
    assert [row["pass"] for row in curve] == [1, 2]
    assert all(0.0 <= row["held_out_accuracy"] <= 1.0 for row in curve)
    assert script.predict(model, x).shape == y.shape


def test_main_keeps_a_backbone_a_segmenter_starts_from(scenes, tmp_path, monkeypatch):
    from convnext.segmentation.models import create_segmenter
    script = _script()
    out, kept = tmp_path / "ceiling.json", tmp_path / "crops_backbone.pt"
    monkeypatch.setattr("sys.argv", ["scenes_naming_ceiling.py", "--data", str(scenes), "--init", "", "--size", "32",
                                     "--epochs", "1", "--batch", "2", "--train", "3", "--val", "3", "--out", str(out),
                                     "--save-backbone", str(kept)])
    script.main()
    result = json.loads(out.read_text())
    assert len(result["curve"]) == 1 and set(result["per_class_accuracy"]) == set(FASHION_MNIST)
    body = torch.load(kept, weights_only=True)
    segmenter = create_segmenter("upernet_convnext_atto", 11, backbone_weights=str(kept), channels=16, aux_channels=8)
    assert torch.equal(segmenter.backbone.stages[3][0].dwconv.weight, body["stages.3.0.dwconv.weight"])
