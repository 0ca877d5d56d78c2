"""FCMAE pre-training of ConvNeXt V2 on ImageNet-1K (Woo et al. 2023, §3; official main_pretrain.py, TRAINING.md):
AdamW (0.9, 0.95), base lr 1.5e-4 per 256 images, wd 0.05, batch 4096, 40 warm-up epochs then a cosine to 0,
800 epochs (TRAINING.md's V2-B command: 1600), RandomResizedCrop 224 (scale 0.2-1) + flip only, 60% of the
32 px patches removed, a 1-block 512-wide decoder, per-patch normalised targets, no EMA.

    # TRAINING.md's 8 nodes x 8 GPUs x 64 images; on one 8-GPU machine add train.accum_steps=8 (its --update_freq 8)
    torchrun --nproc_per_node=8 -m convnext train --config fcmae:base:1600 --data /data/imagenet --out runs/fcmae_b \\
        train.accum_steps=8
    # then fine-tune its encoder (configs/v2_finetune.py)
    torchrun --nproc_per_node=8 -m convnext train --config v2_finetune:base --data /data/imagenet \\
        model.init=runs/fcmae_b/encoder.pt --out runs/v2_b

Expected: the pre-training has no accuracy of its own; V2-B fine-tuned from 1600 epochs reaches 84.9% top-1
(V2 README). Not in the official recipe: the held-out loss on 10,000 val images every 20 epochs (<1% of the
time), our addition to follow the run.
"""
from convnext.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig

SIZES = ("atto", "femto", "pico", "nano", "tiny", "base", "large", "huge")  # the official fcmae.py constructors


def get_config(arg: str = "base") -> Config:
    size, _, epochs = arg.partition(":")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: one of {', '.join(SIZES)}")
    if epochs not in ("", "800", "1600"):
        raise ValueError(f"pre-training runs 800 (main_pretrain.py's default) or 1600 (TRAINING.md) epochs, "
                         f"not {epochs}")
    return Config(
        task="fcmae",
        # main_pretrain.py: mask 0.6, decoder depth 1 and width 512, norm_pix_loss on; the encoder without drop path
        model=ModelConfig(name=f"convnextv2_{size}", drop_path=0.0, mask_ratio=0.6, decoder_dim=512, decoder_depth=1,
                          norm_pix_loss=True),
        # 64 per GPU (TRAINING.md); RandomResizedCrop(224, scale=(0.2, 1.0), bicubic) + flip, ImageNet mean/std
        data=DataConfig(img_size=224, batch_size=64, workers=10, scale=(0.2, 1.0), hflip=0.5, randaug="",
                        color_jitter=0.0, reprob=0.0, mixup=0.0, cutmix=0.0, smoothing=0.0, limit_eval=10_000),
        # lr = blr x batch / 256; adjust_learning_rate: linear warm-up, half cosine to min_lr 0
        optim=OptimConfig(lr=1.5e-4, lr_batch=256, min_lr=0.0, weight_decay=0.05, betas=(0.9, 0.95),
                          warmup_epochs=40),
        train=TrainConfig(epochs=int(epochs or 800), ema_decay=0.0, eval_every=20),
    )
