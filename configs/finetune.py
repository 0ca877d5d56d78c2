"""Fine-tuning at ImageNet-1K (Table 6): 30 epochs, AdamW 5e-5 @ 512, wd 1e-8, no warm-up, layer-wise lr
decay, head init scale 0.001, no mixup/cutmix; RandAugment, random erasing and smoothing as in pre-training.

    # 22K -> 1K at 224 or 384 (layer decay 0.8; drop path T/S/B/L/XL 0.0/0.1/0.2/0.3/0.4; EMA only for XL)
    torchrun --nproc_per_node=8 -m convnext train --config finetune:22k_1k_224:base --data /data/imagenet
    torchrun --nproc_per_node=8 -m convnext train --config finetune:22k_1k_384:large --data /data/imagenet
    # 1K 224 -> 384 (B/L; layer decay 0.7; drop path 0.8 / 0.95; L starts from the EMA weights, §A.2)
    torchrun --nproc_per_node=8 -m convnext train --config finetune:1k_384:base --data /data/imagenet

Expected (Table 1): 22K->1K B 85.8 @224, 86.8 @384; 1K->384 B 85.1, L 85.5.
"""
from convnext.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig

DROP_22K_1K = {"tiny": 0.0, "small": 0.1, "base": 0.2, "large": 0.3, "xlarge": 0.4}  # Table 6
DROP_1K_384 = {"base": 0.8, "large": 0.95}


def get_config(arg: str = "22k_1k_224:base") -> Config:
    kind, _, size = arg.rpartition(":")
    if kind in ("22k_1k_224", "22k_1k_384"):
        res = int(kind[-3:])
        init, drop, decay = f"convnext_{size}.fb_in22k", DROP_22K_1K[size], 0.8
        ema = 0.9999 if size == "xlarge" else 0.0
    elif kind == "1k_384":
        res, init, drop, decay, ema = 384, f"convnext_{size}.fb_in1k_noema", DROP_1K_384[size], 0.7, 0.0
        if size == "large":  # §A.2: 1K-pretrained L starts from its EMA weights (the released 1K file is EMA)
            init = "convnext_large.fb_in1k"
    else:
        raise ValueError(f"unknown fine-tuning kind {kind!r}: 22k_1k_224, 22k_1k_384 or 1k_384")
    return Config(
        model=ModelConfig(name=f"convnext_{size}", drop_path=drop, head_init_scale=0.001, init=init),
        data=DataConfig(img_size=res, batch_size=32 if res == 224 else 16, mixup=0.0, cutmix=0.0),
        optim=OptimConfig(lr=5e-5, lr_batch=512, weight_decay=1e-8, warmup_epochs=0, layer_decay=decay),
        train=TrainConfig(epochs=30, accum_steps=2 if res == 224 else 4, ema_decay=ema),  # 8 GPUs -> 512
    )
