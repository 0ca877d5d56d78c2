"""Fine-tuning ConvNeXt V2 on ImageNet-1K from FCMAE pre-training (TRAINING.md, official main_finetune.py).

    torchrun --nproc_per_node=8 -m convnext train --config v2_finetune:base --data /data/imagenet \\
        model.init=runs/fcmae_b/encoder.pt --out runs/v2_b

`model.init` is the pre-trained encoder: encoder.pt of an FCMAE run (configs/fcmae.py) or an official FCMAE file
in the classifier layout. TRAINING.md gives three sizes; each row is its command: base lr per 256 images
(lr = blr x 1024 / 256: 32 per GPU x 32 GPUs), epochs, warm-up, layer decay and its rule ('single' for A and T,
'group' for B: convnext/optim.py v2_layer_id), weight decay, drop path, mixup / CutMix, label smoothing. All
share: head init scale 0.001 (main_finetune.py's default: the head starts as trunc-normal std 2e-5), EMA
(decay 0.9999, evaluated), RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, AdamW (0.9, 0.999), a
cosine to 1e-6, GRN's gamma/beta without weight decay (commit 2553895). The official sources we read give no
command for F, P, N, L or H.

Expected (V2 README, IN-1K, 224): A 76.7, T 83.0, B 84.9 top-1.
"""
from convnext.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig

# size: (blr, epochs, warm-up epochs, layer decay rule, layer decay, weight decay, drop path, mixup, cutmix, smoothing)
RECIPES = {
    "atto": (2e-4, 600, 0, "v2_single", 0.9, 0.3, 0.1, 0.0, 0.0, 0.2),
    "tiny": (8e-4, 300, 40, "v2_single", 0.9, 0.05, 0.2, 0.8, 1.0, 0.1),
    "base": (6.25e-4, 100, 20, "v2_group", 0.6, 0.05, 0.1, 0.8, 1.0, 0.1),
}


def get_config(arg: str = "base") -> Config:
    if arg not in RECIPES:
        raise ValueError(f"TRAINING.md gives fine-tuning commands for {', '.join(RECIPES)}, not {arg!r}")
    blr, epochs, warmup, rule, decay, wd, drop, mixup, cutmix, smoothing = RECIPES[arg]
    return Config(
        model=ModelConfig(name=f"convnextv2_{arg}", drop_path=drop, head_init_scale=0.001),
        data=DataConfig(img_size=224, batch_size=32, workers=10, reprob=0.25, mixup=mixup, cutmix=cutmix,
                        smoothing=smoothing),
        optim=OptimConfig(lr=blr, lr_batch=256, min_lr=1e-6, weight_decay=wd, warmup_epochs=warmup,
                          layer_decay=decay, layer_decay_rule=rule),
        # 32 per GPU x 8 GPUs x 4 (TRAINING.md's single-machine --update_freq 4) = 1024
        train=TrainConfig(epochs=epochs, accum_steps=4, ema_decay=0.9999),
    )
