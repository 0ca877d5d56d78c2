"""ADE20K semantic segmentation: the paper's Table 4 runs (official `semantic_segmentation/configs/convnext`).

    torchrun --nproc_per_node=8 -m convnext train --config ade20k:tiny --data /data/ade --out runs/upernet_t
    torchrun --nproc_per_node=8 -m convnext train --config ade20k:large_22k --data /data/ade --out runs/upernet_l
    convnext eval --checkpoint runs/upernet_t/last.pt --data /data/ade                  # single scale (Table 7)
    convnext eval --checkpoint runs/upernet_t/last.pt --data /data/ade --multi-scale    # ms + flip (Table 4)

/data/ade is ADEChallengeData2016 as released: images/{training,validation}/*.jpg, annotations/{...}/*.png.
Expected (paper Table 7 single-scale / Table 4 multi-scale + flip, mIoU on the 2,000 validation images): T 46.0 /
46.7, S 48.7 / 49.6, B 49.1 / 49.9, B-22K 52.6 / 53.1, L-22K 53.2 / 53.7, XL-22K 53.6 / 54.0.

The recipe of every official file (upernet_convnext_<size>_<crop>_160k_ade20k_ss.py): AdamW (betas 0.9, 0.999),
lr 1e-4 (XL 8e-5) for batch 16, weight decay 0.05 (none on norms, biases, layer scale), the *stage-wise* layer
decay 0.9 (optim.layer_decay_rule=stage_wise over 6 layers for T, 12 otherwise: the heads at 1, stage s at
0.9^(layers - s), the downsampling layers at 0.9^(layers + 1)), the poly schedule (power 1, down to 0) after a
linear warm-up of 1,500 iterations from 1e-6 x lr, 160,000 iterations of batch 16 = 2 images per GPU x 8
(the lr is scaled linearly if yours differs), evaluation every 16,000 (mmseg's EvalHook), drop path 0.4 (S 0.3),
layer scale initialised at 1.0 (then overwritten by the pre-trained gamma), no EMA; mixed precision (apex fp16,
`use_fp16=True`) for T/S/B, fp32 for L/XL. The 1K rows start from the final ImageNet-1K weights
(convnext_<size>_1k_224.pth), crop 512; the 22K rows from the ImageNet-22K weights, crop 640, scale (2560, 640),
test stride 426. The data pipeline and test protocol are convnext/config.py's seg_* defaults (mmseg's ADE20K).
"""
from convnext.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from convnext.errors import UserError

# arg -> (segmenter, backbone weights, lr, layer-decay num_layers, drop path, crop, precision), as the official
# semantic_segmentation/configs/convnext files set them
RUNS = {
    "tiny": ("upernet_convnext_tiny", "convnext_tiny.fb_in1k_noema", 1e-4, 6, 0.4, 512, "fp16"),
    "small": ("upernet_convnext_small", "convnext_small.fb_in1k_noema", 1e-4, 12, 0.3, 512, "fp16"),
    "base": ("upernet_convnext_base", "convnext_base.fb_in1k_noema", 1e-4, 12, 0.4, 512, "fp16"),
    "base_22k": ("upernet_convnext_base", "convnext_base.fb_in22k", 1e-4, 12, 0.4, 640, "fp16"),
    "large_22k": ("upernet_convnext_large", "convnext_large.fb_in22k", 1e-4, 12, 0.4, 640, "fp32"),
    "xlarge_22k": ("upernet_convnext_xlarge", "convnext_xlarge.fb_in22k", 8e-5, 12, 0.4, 640, "fp32"),
}


def get_config(arg: str = "tiny") -> Config:
    if arg not in RUNS:
        raise UserError(f"unknown ADE20K run {arg!r}; choose one of {', '.join(RUNS)}")
    name, init, lr, layers, drop_path, crop, precision = RUNS[arg]
    return Config(
        task="segmentation",
        model=ModelConfig(name=name, drop_path=drop_path, layer_scale=1.0, init=init),
        # 2 images per GPU (samples_per_gpu=2, mmseg's workers_per_gpu=2); the 22K models' ade20k_640x640.py
        data=DataConfig(dataset="ade20k", batch_size=2, workers=2, train_split="training", eval_split="validation",
                        seg_scale=(4 * crop, crop), seg_crop_size=crop, seg_stride=341 if crop == 512 else 426),
        optim=OptimConfig(lr=lr, lr_batch=16, weight_decay=0.05, layer_decay=0.9, layer_decay_rule="stage_wise",
                          layer_decay_layers=layers, schedule="poly", poly_power=1.0, min_lr=0.0, warmup_steps=1500,
                          warmup_ratio=1e-6),
        # 160k iterations (schedule_160k.py), evaluated and checkpointed every 16k; last.pt also every 2,000 steps
        train=TrainConfig(total_steps=160_000, eval_every_steps=16_000, precision=precision, channels_last=False,
                          ema_decay=0.0, ckpt_every_steps=2000, log_every=50),
    )
