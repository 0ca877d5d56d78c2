"""Detection and instance segmentation with ConvNeXt backbones (paper §4.2, Table 3) on torchvision's detectors.

    from convnext.detection import create_detector, load_detector
    model = create_detector("cascade_mask_rcnn_convnext_tiny", num_classes=80, backbone_weights="convnext_tiny.fb_in1k")

models.py (the detectors, their table, FLOP counts), cascade.py (Cascade R-CNN's heads), data.py (COCO-format
data and the official training pipeline), scenes.py (the offline demo set), evaluate.py (COCO AP), draw.py,
task.py (training on the engine).
"""
from convnext.detection.models import DETECTORS, create_detector, list_detectors, load_detector

__all__ = ["DETECTORS", "create_detector", "list_detectors", "load_detector"]
