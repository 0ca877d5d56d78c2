"""Semantic segmentation on the engine: UperNet on ConvNeXt with ADE20K-layout data.

    torchrun --nproc_per_node=8 -m convnext train --config ade20k:tiny --data /data/ADEChallengeData2016   # Table 4
    convnext train --config scenes_seg --data data/scenes/ade                                            # 2-core CPU

The task supplies the data (convnext/segmentation/data.py: the official training pipeline), the segmenter
(convnext/segmentation/models.py, its backbone initialised from classification weights `model.init`), the loss
(decode head + 0.4 x auxiliary head, each logged as train_loss_<head>) and mIoU / mAcc / aAcc by the config's test
protocol (convnext/segmentation/evaluate.py); the engine does the rest, iteration-based as mmseg's runner
(`train.total_steps`, `train.eval_every_steps`).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from convnext import engine
from convnext.config import Config
from convnext.errors import UserError
from convnext.runtime import Runtime
from convnext.segmentation.data import build_seg_data
from convnext.segmentation.evaluate import evaluate_segmenter
from convnext.segmentation.models import create_segmenter, segmentation_loss, segmenter_settings


def settings_of(cfg: Config) -> dict:
    """create_segmenter's settings for a run's config: what follows from model.* and the explicit
    `model.segmenter` ones. Stored in every checkpoint's meta (with drop path off), for load_segmenter."""
    m = cfg.model
    s = {"drop_path_rate": m.drop_path, "grad_checkpointing": m.grad_checkpointing, "in_chans": m.in_chans}
    if m.layer_scale is not None:
        s["layer_scale_init_value"] = m.layer_scale
    return {**s, **segmenter_settings(m.segmenter)}


class Segmentation(engine.Task):
    name = "segmentation"
    best_metric = "mIoU"

    def __init__(self):
        self.aux_weight = 0.4

    def build_data(self, cfg: Config, seed: int):
        return build_seg_data(cfg.data, seed=seed)

    def build_model(self, cfg: Config, data, rt: Runtime) -> nn.Module:
        model = create_segmenter(cfg.model.name, data.num_classes, backbone_weights=cfg.model.init or None,
                                 **settings_of(cfg))
        self.aux_weight = model.aux_weight
        if rt.dist.enabled and rt.device.type == "cuda":  # the heads' BN: SyncBN under DDP, as the official configs
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def loss(self, net: nn.Module, batch, rt: Runtime):
        images, labels = batch
        return segmentation_loss(net(rt.images(images)), rt.to_device(labels), self.aux_weight)

    def evaluate(self, model: nn.Module, data, rt: Runtime, limit: int = 0) -> dict[str, float]:
        d = data.cfg
        # the config's test scales and flip for the full evaluation; a subset (the progress reading after each
        # pass, train.eval_subset) at the single scale, so that a multi-scale protocol costs only the final one
        ratios, flip = ((1.0,), False) if limit else (d.seg_test_ratios, d.seg_test_flip)
        batches = data.eval_batches(rt.dist.world, rt.dist.rank, limit, ratios)
        metric = evaluate_segmenter(model, batches, rt, data.num_classes, data.class_names, mode=d.seg_test_mode,
                                    crop=d.seg_crop_size, stride=d.seg_stride, flip=flip)
        return metric.summarize()

    def describe(self, data) -> str:
        return f"{data.num_train} train / {data.num_eval} eval images, {data.num_classes} classes"

    def meta(self, cfg: Config, data) -> dict:
        return {"arch": cfg.model.name, "num_classes": data.num_classes, "class_names": data.class_names,
                "settings": {**settings_of(cfg), "drop_path_rate": 0.0}, "inference": data.inference,
                "preprocessing": vars(data.preprocessing)}

    def check_resume(self, meta: dict, data, where: Path) -> None:
        if meta.get("num_classes") != data.num_classes:
            raise UserError(f"the checkpoint in {where} has {meta.get('num_classes')} classes but the data has "
                            f"{data.num_classes}")
