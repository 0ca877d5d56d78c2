"""ImageNet-1K training from scratch: the paper's recipe (Table 5), per model.

    torchrun --nproc_per_node=8 -m convnext train --config in1k:tiny --data /data/imagenet --out runs/in1k_t
    # 8 GPUs x 128 x accumulation 4 = 4096 (TRAINING.md's single-node form); L: data.batch_size=64 train.accum_steps=8

Expected (Table 1, 300 epochs, EMA weights): T 82.1, S 83.1, B 83.8, L 84.3 top-1.
"""
from convnext.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from convnext.model import get_variant

SIZES = {"tiny": "convnext_tiny", "small": "convnext_small", "base": "convnext_base", "large": "convnext_large"}


def get_config(size: str = "tiny") -> Config:
    name = SIZES[size]
    large = size == "large"
    return Config(
        model=ModelConfig(name=name, drop_path=get_variant(name).drop_path),
        data=DataConfig(batch_size=64 if large else 128),
        optim=OptimConfig(),  # AdamW 4e-3 @ 4096, wd 0.05, 20 warm-up epochs, cosine to 1e-6
        train=TrainConfig(accum_steps=8 if large else 4),  # 4096 on one 8-GPU node
    )
