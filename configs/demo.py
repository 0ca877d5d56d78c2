"""The embedded demo: ConvNeXt-atto on Fashion-MNIST (real photos of clothing, 28x28 grey), on a 2-core CPU.

    make demo                      # = convnext train --config demo --out runs/demo
    convnext train --config demo train.epochs=2 --out runs/quick

Expected: >= 90% top-1 on the 10,000 test images in under 10 minutes on 2 CPU cores (README, "Results").
What differs from the ImageNet recipe, and why: a 10-minute budget is 6 epochs, not 300, so the
regularisation that pays off over 300 epochs (mixup/cutmix, RandAugment, random erasing, stochastic depth) is
off and the only augmentation is a horizontal flip; the images are resized 28 -> 32 (bicubic, as
`convnext predict` does) so the total stride of 32 divides them; the EMA decay is shortened to the run's
length; lr is given for this batch.
"""
from convnext.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
    return Config(
        model=ModelConfig(name="convnext_atto", drop_path=0.0, in_chans=1),
        data=DataConfig(dataset="fashion_mnist", img_size=32, batch_size=64, workers=0, randaug="", reprob=0.0,
                        mixup=0.0, cutmix=0.0, smoothing=0.1, shift=0),
        optim=OptimConfig(lr=2e-3, scale_lr=False, warmup_epochs=0.3, weight_decay=0.05),
        # the full test set (raw + EMA) is evaluated once, at the end: each such evaluation costs ~3% of the
        # 10-minute budget; the epochs before are evaluated on a fixed 1,000-image subset (~0.5 s) for the curves
        train=TrainConfig(epochs=6, precision="fp32", channels_last=False, ema_decay=0.998, eval_every=6,
                          eval_subset=1000, log_every=100),
    )
