"""The offline detection demo: Mask R-CNN with a ConvNeXt-atto backbone on scenes of Fashion-MNIST items pasted
onto real photographs (convnext/detection/scenes.py), on a 2-core CPU, fine-tuned from the classification demo.

    make demo-detection      # = the three commands below (the first two skipped when their output is there)

    convnext train --config demo --out runs/demo        # the classifier whose backbone starts the detector
    convnext data scenes --out data/scenes
    torchrun --standalone --nproc_per_node=2 -m convnext train --config scenes --data data/scenes --out runs/scenes
    convnext detect data/scenes/val2017 --checkpoint runs/scenes/best.pt --out runs/scenes/drawn

The backbone starts from the Fashion-MNIST classifier of `make demo` (`model.init`; its 1-channel stem is spread
over RGB, convnext/backbone.py), the fine-tuning path the paper takes from ImageNet; `model.init=` trains from
scratch. What differs from the COCO recipe (configs/coco.py), and why: a 15-minute CPU budget and 256 x 256
scenes of 1-4 items of 56-112 px instead of 1333 x 800 photographs. The scenes are trained at short sides 128-192
(the multi-scale policies scaled down; crops of 96-144 px from 128/144/160) and tested at 192, where the items are
42-84 px (at 160: 2.8 box AP50 points less for the same weights; RESULTS.md). One short side per step, shared by
all its images on both processes (`data.det_step_scale`; mmdet draws one per image): a batch is padded to its
largest image and the process with the larger images sets the pace. FPN and heads are 64 channels wide, the box
head's two FCs 256 (the recipe's 1024 is sized for 80 classes), the mask head's 3 x 3 convs 2 instead of 4 (50.3
against 51.0 box AP50 at 2,200 steps, a cheaper step), 64 RoIs per image (the recipe's 512 is for COCO's ~7
objects per image at 800 px; 32 cost 5 points); at test 100 proposals and at most 50 detections per image (the
recipe's 1,000 / 100 are for COCO: the same AP on the scenes, about half the evaluation time). 2,200 steps of 4 images
(2.2 passes over the 4,000 scenes) at an lr given for batch 16 and scaled, x0.1 at 3/4 and 11/12 of the run as the
3x schedule's 27 and 33 of 36; fp32. `data.batch_size` is per process: the demo runs two processes of one thread
each (torchrun, gloo; ~10 img/s on the 2 cores against 7 for one process of two threads), so a step is 4 images.
Run as one process (`convnext train`), it is a run of batch 2 (the lr scaled to it), not the same run;
`data.batch_size=4` gives the 4-image step there. Fewer steps cost the bar: 1,700 / 2,000 steps gave box AP50
47.8 / 49.0 (RESULTS.md).

Expected (RESULTS.md, 2-core CPU): box AP50 ~50-51 and mask AP50 ~49-50 on the 500 held-out scenes (the bar:
>= 50), in the time RESULTS.md states.
"""
from convnext.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
    return Config(
        task="detection",
        model=ModelConfig(name="mask_rcnn_convnext_atto", drop_path=0.0, init="runs/demo/best_ema.pt",
                          detector=("fpn_channels=64", "box_batch_size_per_image=64",
                                    "rpn_post_nms_top_n_train=500", "rpn_pre_nms_top_n_train=600",
                                    "rpn_pre_nms_top_n_test=200", "rpn_post_nms_top_n_test=100",
                                    "box_detections_per_img=50",
                                    "box_fc_channels=256", "mask_convs=2")),
        data=DataConfig(dataset="coco", batch_size=2, workers=1, det_scales=(128, 144, 160, 176, 192),
                        det_max_size=300, det_crop_scales=(128, 144, 160), det_crop_size=(96, 144),
                        det_test_scale=192, det_step_scale=True),
        optim=OptimConfig(lr=3.2e-3, lr_batch=16, weight_decay=0.05, schedule="step", milestones=(1.65, 2.0167),
                          warmup_steps=100, warmup_ratio=0.001, min_lr=0.0),
        train=TrainConfig(epochs=3, total_steps=2200, precision="fp32", channels_last=False, ema_decay=0.0,
                          eval_every=3, eval_subset=50, log_every=100),
    )
