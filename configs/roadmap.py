"""The recipe every roadmap step is trained with by `convnext roadmap --train` (one recipe for all steps).

    # the paper's setting: Table 5 with EMA off (§2: "EMA severely hurts models with BatchNorm")
    torchrun --nproc_per_node=8 -m convnext roadmap --train --data /data/imagenet --config roadmap:imagenet
    # a reproduction you can afford on a laptop: the embedded Fashion-MNIST, 32 px, a short schedule
    convnext roadmap --train --data fashion_mnist --out runs/roadmap/fmnist

The paper trained step 0 with torchvision's original 90-epoch SGD recipe and every later step with the modern
one; with one recipe for all, steps 0 and 1 differ only in their model-side recipe settings (init, layer
scale). The Fashion-MNIST run says nothing about ImageNet: 28x28 grey images are solved by small nets, most
steps land within noise of each other, and the network-wide downsampling by 32 leaves 1x1 maps at 32 px.
"""
from convnext.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config(data: str = "imagenet") -> Config:
    if data == "fashion_mnist":
        return Config(
            model=ModelConfig(name="roadmap/resnet50/resnet50", drop_path=0.0, in_chans=1),
            data=DataConfig(dataset="fashion_mnist", img_size=32, batch_size=64, workers=0, randaug="", reprob=0.0,
                            mixup=0.0, cutmix=0.0, smoothing=0.1, limit_train=2_000,
                            limit_eval=2_000),  # ~2 min per step on 2 CPU cores: 17 steps in ~35 min
            optim=OptimConfig(lr=2e-3, scale_lr=False, warmup_epochs=0.3),
            train=TrainConfig(epochs=2, precision="fp32", channels_last=False, ema_decay=0.0, log_every=20),
        )
    if data == "imagenet":
        return Config(
            model=ModelConfig(name="roadmap/resnet50/resnet50"),
            data=DataConfig(batch_size=128),
            optim=OptimConfig(),
            train=TrainConfig(accum_steps=4, ema_decay=0.0),
        )
    raise ValueError(f"unknown roadmap data {data!r}: imagenet or fashion_mnist")
