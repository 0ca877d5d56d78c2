"""Fine-tune an ImageNet-1K ConvNeXt on your own folder of images (root/train/<class>/*, root/val/<class>/*).

    convnext train --config folder --data ~/my_photos --out runs/mine
    convnext train --config folder --data ~/my_photos --init convnext_small.fb_in22k_ft_in1k model.name=convnext_small

Defaults: ConvNeXt-T from its 22K->1K weights, the head replaced for your classes (init scale 0.001),
Table 6's fine-tuning recipe scaled to a small set (30 epochs, AdamW 5e-5 @ 512 scaled linearly to the batch,
layer decay 0.8), bf16 on a GPU. On a CPU pass train.precision=fp32.
"""
from convnext.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
    return Config(
        model=ModelConfig(name="convnext_tiny", drop_path=0.1, head_init_scale=0.001,
                          init="convnext_tiny.fb_in22k_ft_in1k"),
        data=DataConfig(batch_size=32, workers=4, mixup=0.0, cutmix=0.0),
        optim=OptimConfig(lr=5e-5, lr_batch=512, weight_decay=1e-8, warmup_epochs=1, layer_decay=0.8),
        train=TrainConfig(epochs=30, ema_decay=0.0),
    )
