"""ImageNet-22K pre-training (Table 5, right column): 90 epochs, 5 warm-up epochs, no EMA, no evaluation
set of its own (21,841 classes; put a held-out split in val/ to monitor).

    torchrun --nnodes=16 --nproc_per_node=8 --rdzv_endpoint=HOST:29500 -m convnext train --config in22k:base \
        --data /data/imagenet22k
"""
from convnext.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig

DROP_PATH_22K = {"tiny": 0.0, "small": 0.0, "base": 0.1, "large": 0.1, "xlarge": 0.2}  # Table 5


def get_config(size: str = "base") -> Config:
    return Config(
        model=ModelConfig(name=f"convnext_{size}", drop_path=DROP_PATH_22K[size]),
        data=DataConfig(batch_size=32),  # TRAINING.md: 32 x 128 GPUs = 4096
        optim=OptimConfig(warmup_epochs=5),
        train=TrainConfig(epochs=90, accum_steps=16, ema_decay=0.0),  # 32 x 8 GPUs x 16 = 4096
    )
