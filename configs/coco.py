"""COCO detection and instance segmentation: the paper's Table 3 runs (official `object_detection/configs/convnext`).

    torchrun --nproc_per_node=8 -m convnext train --config coco:mask_rcnn_tiny --data /data/coco --out runs/mrcnn_t
    torchrun --nproc_per_node=8 -m convnext train --config coco:cascade_small --data /data/coco --out runs/cmrcnn_s
    convnext eval --checkpoint runs/mrcnn_t/best.pt --data /data/coco

DATA is COCO 2017 as released: DATA/annotations/instances_{train,val}2017.json, DATA/{train,val}2017/*.jpg.
Expected (paper Table 3, val2017 box / mask AP): Mask R-CNN T 46.2 / 41.7; Cascade T 50.4 / 43.7, S 51.9 / 45.0,
B 52.7 / 45.6, B-22K 54.0 / 46.9, L-22K 54.8 / 47.6, XL-22K 55.2 / 47.7.

The recipe of every official file: AdamW (betas 0.9, 0.999), weight decay 0.05 (none on norms, biases, layer
scale), the detection layer-wise lr decay (optim.layer_decay_rule=layer_wise over 6 layers for T, 12 otherwise),
36 epochs ("3x") with the lr x0.1 at epochs 27 and 33 after mmdetection's default linear warm-up (500 iterations
from 0.001 x lr), batch 16 = 2 images per GPU x 8 GPUs (the lr is scaled linearly if yours differs), the
multi-scale training pipeline (convnext/config.py: det_*), test at (800, 1333), backbone from the ImageNet
weights the official READMEs name (1K: the final, non-EMA weights; 22K: the 22K pre-trained weights), layer scale
initialised at 1.0 as the official configs (then overwritten by the pre-trained gamma), no EMA. Precision as the
official files: fp16 mixed precision for T/S/B, fp32 for L/XL.
"""
from convnext.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from convnext.errors import UserError

# arg -> (detector, backbone weights, lr, layer decay, its num_layers, drop path, precision), as the official
# object_detection/configs/convnext files set them (the paper's §A.3 lists the values swept)
RUNS = {
    "mask_rcnn_tiny": ("mask_rcnn_convnext_tiny", "convnext_tiny.fb_in1k_noema", 1e-4, 0.95, 6, 0.4, "fp16"),
    "cascade_tiny": ("cascade_mask_rcnn_convnext_tiny", "convnext_tiny.fb_in1k_noema", 2e-4, 0.7, 6, 0.4, "fp16"),
    "cascade_small": ("cascade_mask_rcnn_convnext_small", "convnext_small.fb_in1k_noema", 2e-4, 0.7, 12, 0.6, "fp16"),
    "cascade_base": ("cascade_mask_rcnn_convnext_base", "convnext_base.fb_in1k_noema", 2e-4, 0.8, 12, 0.7, "fp16"),
    "cascade_base_22k": ("cascade_mask_rcnn_convnext_base", "convnext_base.fb_in22k", 1e-4, 0.8, 12, 0.6, "fp16"),
    "cascade_large_22k": ("cascade_mask_rcnn_convnext_large", "convnext_large.fb_in22k", 1e-4, 0.7, 12, 0.7, "fp32"),
    "cascade_xlarge_22k": ("cascade_mask_rcnn_convnext_xlarge", "convnext_xlarge.fb_in22k", 1e-4, 0.7, 12, 0.8, "fp32"),
}


def get_config(arg: str = "mask_rcnn_tiny") -> Config:
    if arg not in RUNS:
        raise UserError(f"unknown COCO run {arg!r}; choose one of {', '.join(RUNS)}")
    name, init, lr, decay, layers, drop_path, precision = RUNS[arg]
    return Config(
        task="detection",
        model=ModelConfig(name=name, drop_path=drop_path, layer_scale=1.0, init=init),
        data=DataConfig(dataset="coco", batch_size=2, workers=2),  # 2 images per GPU (mmdet workers_per_gpu=2)
        optim=OptimConfig(lr=lr, lr_batch=16, weight_decay=0.05, layer_decay=decay, layer_decay_rule="layer_wise",
                          layer_decay_layers=layers, schedule="step", milestones=(27, 33), warmup_steps=500,
                          warmup_ratio=0.001, min_lr=0.0),
        # evaluation every epoch (mmdet's EvalHook default); last.pt every 2,000 of the 7,330 steps of an epoch
        train=TrainConfig(epochs=36, precision=precision, channels_last=False, ema_decay=0.0, eval_every=1,
                          ckpt_every_steps=2000, log_every=50),
    )
