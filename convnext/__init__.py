"""convnext: ConvNeXt ("A ConvNet for the 2020s", Liu et al., CVPR 2022) and ConvNeXt V2 (Woo et al., CVPR 2023)
in PyTorch.

    import convnext
    model = convnext.create_model("convnext_tiny", pretrained=True)
    model = convnext.load_model("runs/demo/best_ema.pt")        # a model from weights
"""
from convnext.factory import create_model, load_model
from convnext.fold import fold_for_inference
from convnext.model import VARIANTS, ConvNeXt, ConvNeXtIsotropic, build_model, get_variant, list_models
from convnext.model_v2 import ConvNeXtV2

__all__ = ["VARIANTS", "ConvNeXt", "ConvNeXtIsotropic", "ConvNeXtV2", "build_model", "create_model",
           "fold_for_inference", "get_variant", "list_models", "load_model"]
__version__ = "0.1.0"
