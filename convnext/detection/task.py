"""Detection and instance segmentation on the engine: Mask R-CNN / Cascade Mask R-CNN on COCO-format data.

    convnext train --config coco:mask_rcnn_tiny --data /data/coco          # the paper's Table 3 run (8 GPUs)
    convnext train --config scenes --data data/scenes                      # the offline demo (2-core CPU)

The task supplies the data (convnext/detection/data.py: COCO json + images, the official multi-scale pipeline),
the detector (convnext/detection/models.py, its backbone initialised from classification weights `model.init`),
the loss (the detector's own dict of terms, summed: each term is logged as train_<term>) and the COCO box and
mask AP (convnext/detection/evaluate.py). The engine does the rest, as for classification; a batch is a pair of
lists (images of different sizes, target dicts), so `batch_size` counts the list.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from convnext import engine
from convnext.config import Config
from convnext.detection.data import build_coco_data
from convnext.detection.evaluate import CocoEvaluator
from convnext.detection.models import create_detector, parse_settings
from convnext.errors import UserError
from convnext.runtime import Runtime


def detector_settings(cfg: Config) -> dict:
    """create_detector's settings for a run's config: what follows from model.* and data.* and the explicit
    `model.detector` ones. Stored in every checkpoint's meta (with drop path off), for load_detector."""
    m, d = cfg.model, cfg.data
    s = {"drop_path_rate": m.drop_path, "min_size": d.det_test_scale, "max_size": d.det_max_size,
         "grad_checkpointing": m.grad_checkpointing}
    if m.layer_scale is not None:
        s["layer_scale_init_value"] = m.layer_scale
    return {**s, **parse_settings(m.detector)}


class Detection(engine.Task):
    name = "detection"
    best_metric = "box_AP"

    def build_data(self, cfg: Config, seed: int):
        return build_coco_data(cfg.data, seed=seed)

    def build_model(self, cfg: Config, data, rt: Runtime) -> nn.Module:
        model = create_detector(cfg.model.name, data.num_classes, backbone_weights=cfg.model.init or None,
                                **detector_settings(cfg))
        if rt.dist.enabled and rt.device.type == "cuda":  # the cascade's BN heads: SyncBN under DDP, as official
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def loss(self, net: nn.Module, batch, rt: Runtime):
        images, targets = batch
        images = [rt.to_device(x) for x in images]
        targets = [{k: rt.to_device(v) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        terms = net(images, targets)
        return sum(terms.values()), terms

    def batch_size(self, batch) -> int:
        return len(batch[0])

    def evaluate(self, model: nn.Module, data, rt: Runtime, limit: int = 0) -> dict[str, float]:
        evaluator = CocoEvaluator(data.coco_eval, data.category_ids)
        for images, metas in data.eval_batches(rt.dist.world, rt.dist.rank, limit):
            with rt.autocast():
                outputs = model([rt.to_device(x) for x in images])
            evaluator.update([m["image_id"] for m in metas], outputs)  # masks thresholded on the device
        evaluator.gather(rt.dist)
        return evaluator.summarize()

    def describe(self, data) -> str:
        return f"{data.num_train} train / {data.num_eval} eval images, {data.num_classes} classes"

    def meta(self, cfg: Config, data) -> dict:
        return {"arch": cfg.model.name, "num_classes": data.num_classes, "class_names": data.class_names,
                "category_ids": data.category_ids,
                "settings": {**detector_settings(cfg), "drop_path_rate": 0.0}}

    def check_resume(self, meta: dict, data, where: Path) -> None:
        if meta.get("num_classes") != data.num_classes:
            raise UserError(f"the checkpoint in {where} has {meta.get('num_classes')} classes but the data has "
                            f"{data.num_classes}")
