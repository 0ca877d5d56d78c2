"""The FCMAE demo: pre-train ConvNeXt V2-atto on Fashion-MNIST's 60,000 training images without their labels, on a
2-core CPU; configs/v2_finetune_demo.py then fine-tunes its encoder on 1,000 labelled images.

    convnext train --config fcmae_demo --out runs/fcmae_demo
    convnext train --config v2_finetune_demo --out runs/v2_ft_demo                  # from runs/fcmae_demo/encoder.pt
    convnext train --config v2_finetune_demo:scratch --out runs/v2_scratch_demo     # the same, from scratch

The patch is 32 px whatever the images: FCMAE's decoder predicts one patch per site of the encoder's last map,
whose stride is 32. So the choice is the input size, i.e. how many patches an image has: at 32 px (the
classification demo's) one, nothing to mask; at 64 px four (2 x 2, each a 14 x 14 quadrant of the 28 x 28
item); at 128 px sixteen (each 7 x 7 px of the item, about ImageNet's 1/7 of the side at 224) for 4x the
compute. We take 64 px (28 -> 64, bicubic): ten minutes buy two passes over the images, where 128 px would
buy half of one. The official ratio 0.6 then keeps int(4 x 0.4) = 1 patch: the encoder sees one quadrant and
the decoder draws the other three (reconstructions.png in the run directory shows it).

What differs from ImageNet's recipe (configs/fcmae.py), and why: 2 epochs (1,874 steps), not 800, so the lr is
1e-3 at batch 64, not the recipe's 1.5e-4 x 64 / 256 = 3.75e-5 sized for 800 epochs (an 80-step check on
5,120 images gave held-out losses 0.5725 / 0.5727 / 0.5841 at 5e-4 / 1e-3 / 2e-3), with a 0.2-epoch warm-up;
RandomResizedCrop (0.2, 1) and flip as the recipe, on the 28 px item; fp32 (the CPU's fast path); the
held-out loss on 1,000 test images after epoch 1 and on all 10,000 at the end.

Expected (2-core CPU; estimated from steps timed on a loaded machine, not run end to end): ~10 minutes; the
held-out loss falls from ~1 (a per-patch-normalised target predicted by its mean) to well below it (0.57 after
80 steps); reconstructions.png and encoder.pt in runs/fcmae_demo.
"""
from convnext.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
    return Config(
        task="fcmae",
        model=ModelConfig(name="convnextv2_atto", drop_path=0.0, in_chans=1, mask_ratio=0.6, decoder_dim=512,
                          decoder_depth=1, norm_pix_loss=True),
        data=DataConfig(dataset="fashion_mnist", img_size=64, batch_size=64, workers=0, scale=(0.2, 1.0), hflip=0.5,
                        randaug="", reprob=0.0, mixup=0.0, cutmix=0.0, smoothing=0.0),
        optim=OptimConfig(lr=1e-3, scale_lr=False, min_lr=0.0, weight_decay=0.05, betas=(0.9, 0.95),
                          warmup_epochs=0.2),
        # the 10,000 test images at the end; a fixed 1,000 of them at the first epoch's end, for the curve
        train=TrainConfig(epochs=2, precision="fp32", channels_last=False, ema_decay=0.0, eval_every=2,
                          eval_subset=1000, log_every=100),
    )
