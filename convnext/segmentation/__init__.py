"""Semantic segmentation with ConvNeXt backbones (paper §4.2, Table 4): UperNet as the official ADE20K configs.

    from convnext.segmentation import create_segmenter, load_segmenter
    model = create_segmenter("upernet_convnext_tiny", num_classes=150, backbone_weights="convnext_tiny.fb_in1k_noema")

models.py (UPerHead, FCNHead, the segmenter, its table, the loss, FLOP counts), data.py (ADE20K-layout data and
the official pipelines), evaluate.py (mIoU as mmseg computes it, sliding-window and multi-scale inference),
draw.py (overlays and label PNGs), task.py (training on the engine).
"""
from convnext.segmentation.models import (SEGMENTERS, create_segmenter, list_segmenters, load_segmenter,
                                          segmentation_loss)

__all__ = ["SEGMENTERS", "create_segmenter", "list_segmenters", "load_segmenter", "segmentation_loss"]
