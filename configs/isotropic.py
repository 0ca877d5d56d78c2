"""Isotropic ConvNeXt on ImageNet-1K (Appendix A.1, Table 2): the IN-1K recipe with 50 warm-up epochs,
layer scale off for S/B (on for L), stochastic depth 0.1 / 0.2 / 0.5.

    torchrun --nproc_per_node=8 -m convnext train --config isotropic:small --data /data/imagenet

Expected (Table 2): S 79.7 (the README says 78.7), B 82.0, L 82.6.
"""
from convnext.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from convnext.model import get_variant


def get_config(size: str = "small") -> Config:
    name = f"convnext_isotropic_{size}"
    return Config(
        model=ModelConfig(name=name, drop_path=get_variant(name).drop_path,
                          layer_scale=1e-6 if size == "large" else 0.0),
        data=DataConfig(batch_size=64 if size == "large" else 128),
        optim=OptimConfig(warmup_epochs=50),
        train=TrainConfig(accum_steps=8 if size == "large" else 4),
    )
