"""The FCMAE demo's second half: fine-tune ConvNeXt V2-atto on 1,000 labelled Fashion-MNIST images from the encoder
that configs/fcmae_demo.py pre-trained on the 60,000 training images without labels, against the same run from
scratch; both are evaluated on the 10,000 test images.

    convnext train --config fcmae_demo --out runs/fcmae_demo                        # first: the pre-training
    convnext train --config v2_finetune_demo --out runs/v2_ft_demo                  # from runs/fcmae_demo/encoder.pt
    convnext train --config v2_finetune_demo:scratch --out runs/v2_scratch_demo     # the baseline: model.init=""

The recipe is TRAINING.md's ConvNeXt V2-atto fine-tuning where it fits a 1,000-image run: layer decay 0.9 by the
'single' rule (convnext/optim.py v2_layer_id), weight decay 0.3, drop path 0.1, label smoothing 0.2, no
mixup/CutMix, head init scale 0.001, EMA. What differs, and why: 40 epochs of 15 steps (600 epochs of 1.28M
images in the recipe) at lr 2e-3 for batch 64, the classification demo's (the recipe's 2e-4 x 64 / 256 is sized
for 600 epochs), with a 2-epoch warm-up (none in the recipe) and EMA decay 0.99 for 600 steps; the in-memory
set's augmentation (convnext/data.py TensorData: a shift of up to 4 px and a flip; RandAugment and random
erasing belong to the image-folder pipeline); 64 px, the size the encoder was pre-trained at. Both runs use
this recipe unchanged, so the difference is the initialisation alone.

Expected (2-core CPU; estimated from steps timed on a loaded machine, not run end to end): ~4 minutes per run
(600 steps, the 500-image curve points, 2 x 10,000 test images at the end); the run from the FCMAE encoder
above the one from scratch in top-1 (not yet measured).
"""
from convnext.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig

ENCODER = "runs/fcmae_demo/encoder.pt"  # written by `convnext train --config fcmae_demo --out runs/fcmae_demo`


def get_config(arg: str = "") -> Config:
    if arg not in ("", "scratch"):
        raise ValueError(f"v2_finetune_demo takes no argument (from the FCMAE encoder) or 'scratch', not {arg!r}")
    return Config(
        model=ModelConfig(name="convnextv2_atto", drop_path=0.1, in_chans=1, head_init_scale=0.001,
                          init="" if arg == "scratch" else ENCODER),
        data=DataConfig(dataset="fashion_mnist", img_size=64, batch_size=64, workers=0, limit_train=1000, shift=4,
                        hflip=0.5, randaug="", reprob=0.0, mixup=0.0, cutmix=0.0, smoothing=0.2),
        optim=OptimConfig(lr=2e-3, scale_lr=False, min_lr=1e-6, weight_decay=0.3, warmup_epochs=2,
                          layer_decay=0.9, layer_decay_rule="v2_single"),
        # the 10,000 test images at the end (raw and EMA); a fixed 500 of them at the other epochs' ends, for curves
        train=TrainConfig(epochs=40, precision="fp32", channels_last=False, ema_decay=0.99, eval_every=40,
                          eval_subset=500, log_every=50),
    )
