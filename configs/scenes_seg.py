"""The offline segmentation demo: UperNet with a ConvNeXt-atto backbone on the scenes of Fashion-MNIST items pasted
onto real photographs (convnext/detection/scenes.py, their ADE20K-layout copy), on a 2-core CPU, fine-tuned from
the classification demo.

    make demo-segmentation   # = the three commands below (the first two skipped when their output is there)

    convnext train --config demo --out runs/demo        # the classifier whose backbone starts the segmenter
    convnext data scenes --out data/scenes              # also writes data/scenes/ade (per-pixel labels)
    convnext train --config scenes_seg --data data/scenes/ade --out runs/scenes_seg
    convnext segment data/scenes/ade/images/validation --checkpoint runs/scenes_seg/last.pt --out runs/scenes_seg/drawn

The backbone starts from the Fashion-MNIST classifier of `make demo` (`model.init`; its 1-channel stem is spread
over RGB, convnext/backbone.py), the fine-tuning path the paper takes from ImageNet; `model.init=` trains from
scratch. What differs from the ADE20K recipe (configs/ade20k.py), and why:
- 11 classes, the photograph being one ("background", label 0, `seg_reduce_zero_label=false`): in ADE20K's
  convention it would be "other" and ignored, and the task would reduce to naming the items' pixels with no need
  to find them; here the mIoU also pays for every pixel of photograph called an item and every item pixel missed.
- The scenes (256 x 256, items 56-112 px) are seen at a quarter of the ADE20K scales: `seg_scale` (512, 128) x
  0.5-2.0, crops of 128, test at 128 (whole image, which one 128 crop would cover anyway), where the items are
  28-56 px, the scale at which the classifier learnt them. The category ratio rule, flip and photometric
  distortion are the official ones.
- UPerHead 32 channels wide and the auxiliary FCNHead 16 (the official 512 / 256 are sized for 150 classes and
  a 768-wide stage 3; atto's is 320): the head would otherwise cost 50x the backbone (at 64 wide a step took
  1.4x as long).
- A 15-minute CPU budget: 3,000 steps of batch 8 (12 passes over the 2,000 scenes) instead of 160k of 16, at
  a higher lr (6e-3 for batch 16, scaled: 3e-3 at 8; the official 1e-4 fine-tunes for 160k steps): AdamW, the
  stage-wise decay 0.9 over 6 layers as ConvNeXt-T, poly to 0 after 100 warm-up steps from 1e-6 x lr; fp32.
  A subset of 50 held-out scenes is evaluated after each pass, all 500 at the end.
What the short runs tried while building it showed (1 thread on a busy machine, 100 held-out scenes): the
classifier's features do not name the items on photographs (15% of item crops right: it learnt grey items on
black), so the segmenter learns the classes here. At lr 3e-3 (batch 8) it first learns the class prior, then to
find the items (after 600 steps: P(background) 0.35 on item pixels, 0.96 on the photograph) before telling them
apart (11% right among the ten then; mIoU 9.2); at 1e-3 and 5e-4 no item pixel was called an item by step 200,
and a constant 4e-3 collapsed to background on a synthetic task. Time: a step (64-wide head) took 0.85x a step
of the detection demo on the same machine, so this run should take ~12 minutes where that demo takes its 15. The
mIoU of the whole run is RESULTS.md's (not measured when this was written; the bar set for it is mIoU >= 60 on
the 500 held-out scenes in <= 15 minutes).
"""
from convnext.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
    return Config(
        task="segmentation",
        model=ModelConfig(name="upernet_convnext_atto", drop_path=0.0, init="runs/demo/best_ema.pt",
                          segmenter=("channels=32", "aux_channels=16")),
        data=DataConfig(dataset="ade20k", batch_size=8, workers=1, train_split="training", eval_split="validation",
                        seg_num_classes=11, seg_reduce_zero_label=False, seg_scale=(512, 128), seg_crop_size=128,
                        seg_test_mode="whole"),
        optim=OptimConfig(lr=6e-3, lr_batch=16, weight_decay=0.05, layer_decay=0.9, layer_decay_rule="stage_wise",
                          layer_decay_layers=6, schedule="poly", poly_power=1.0, min_lr=0.0, warmup_steps=100,
                          warmup_ratio=1e-6),
        # eval_every past the run's 12 epochs: the full evaluation only at the end, a 50-scene subset per epoch
        train=TrainConfig(epochs=12, total_steps=3000, precision="fp32", channels_last=False, ema_decay=0.0,
                          eval_every=100, eval_subset=50, log_every=100),
    )
