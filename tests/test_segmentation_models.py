"""UperNet on ConvNeXt: Table 4's sizes, mmseg's module keys, the heads' outputs, the loss, the stage-wise layer decay,
and loading an official-layout checkpoint."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from convnext.benchmark import count_params
from convnext.checkpoint import save
from convnext.config import OptimConfig
from convnext.errors import UserError
from convnext.optim import build_optimizer, dense_layer_id
from convnext.segmentation.models import (SEGMENTERS, count_segmenter_gmacs, create_segmenter, get_segmenter_spec,
                                          load_segmenter, segmentation_loss)

# ------------------------------------------------------------------------------------------ Table 4


@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_sizes_reproduce_table_4(name):
    """Parameters at 150 classes to Table 4's precision (M); FLOPs at 2048 x 512 (1K rows) and 2560 x 640 (22K
    rows) as mmcv's get_flops counts mmseg's forward_dummy: conv and linear multiply-adds plus the elementwise
    work mmcv adds (conv biases, BN, ReLU, pooling) round to the printed number; the multiply-adds alone are
    within 0.1% below it."""
    spec = SEGMENTERS[name]
    with torch.device("meta"):
        model = create_segmenter(name, num_classes=150)
    assert round(count_params(model) / 1e6) == spec.params_m
    for h, w, printed in spec.gflops:
        g = count_segmenter_gmacs(model, h, w)
        assert round(g["mmcv_total"]) == printed, (h, w, g)
        assert printed * 0.999 < g["total"] < printed
        assert g["total"] == pytest.approx(g["backbone"] + g["decode_head"])


def test_names_and_settings():
    assert get_segmenter_spec("upernet_convnext_atto").backbone == "convnext_atto"
    with pytest.raises(UserError, match="unknown segmenter"):
        get_segmenter_spec("upernet_convnext_isotropic_small")
    with pytest.raises(UserError, match="unknown segmenter setting"):
        create_segmenter("upernet_convnext_atto", 3, chanels=8)
    assert create_segmenter("upernet_convnext_atto", 3, channels=8, aux_weight=0.0).auxiliary_head is None


def test_classifier_init_official_or_pytorchs():
    """The heads' conv_seg: mmseg's normal(0, 0.01) with zero bias by default; cls_init="default" keeps PyTorch's
    kaiming-uniform (bound 1/sqrt(fan_in), std bound/sqrt(3)); anything else is refused."""
    torch.manual_seed(0)
    official = create_segmenter("upernet_convnext_atto", 150, channels=256, aux_channels=128)
    torch.manual_seed(0)
    default = create_segmenter("upernet_convnext_atto", 150, channels=256, aux_channels=128, cls_init="default")
    for head in ("decode_head", "auxiliary_head"):
        conv = getattr(official, head).conv_seg
        assert abs(conv.weight.std().item() - 0.01) < 1e-3 and not conv.bias.any()
        conv = getattr(default, head).conv_seg
        bound = 1 / math.sqrt(conv.in_channels)
        assert conv.weight.abs().max() <= bound and abs(conv.weight.std().item() / (bound / math.sqrt(3)) - 1) < 0.05
        assert conv.bias.abs().max() <= bound and conv.bias.any()
    with pytest.raises(UserError, match="cls_init='zeros'"):
        create_segmenter("upernet_convnext_atto", 3, channels=8, cls_init="zeros")


# ------------------------------------------------------------------------------------------ structure


def test_module_keys_and_shapes_are_mmsegs():
    """The state dict of mmseg's EncoderDecoder(ConvNeXt, UPerHead, FCNHead) for ConvNeXt-T at 150 classes,
    written down from mmseg's module structure (ConvModule = conv + bn, no conv bias; PPM branches
    Sequential(pool, ConvModule); conv_seg with bias), so the official ADE20K files load unchanged."""
    with torch.device("meta"):
        sd = create_segmenter("upernet_convnext_tiny", 150).state_dict()
    want = {
        "decode_head.conv_seg.weight": (150, 512, 1, 1), "decode_head.conv_seg.bias": (150,),
        "decode_head.bottleneck.conv.weight": (512, 768 + 4 * 512, 3, 3),
        "decode_head.fpn_bottleneck.conv.weight": (512, 4 * 512, 3, 3),
        "auxiliary_head.convs.0.conv.weight": (256, 384, 3, 3), "auxiliary_head.conv_seg.weight": (150, 256, 1, 1),
        "auxiliary_head.convs.0.bn.running_var": (256,), "backbone.norm3.weight": (768,),
        "backbone.stages.2.8.pwconv1.weight": (1536, 384), "backbone.downsample_layers.0.0.weight": (96, 3, 4, 4),
    }
    for i, s in enumerate((1, 2, 3, 6)):
        want[f"decode_head.psp_modules.{i}.1.conv.weight"] = (512, 768, 1, 1)
        want[f"decode_head.psp_modules.{i}.1.bn.weight"] = (512,)
    for i, c in enumerate((96, 192, 384)):
        want[f"decode_head.lateral_convs.{i}.conv.weight"] = (512, c, 1, 1)
        want[f"decode_head.fpn_convs.{i}.conv.weight"] = (512, 512, 3, 3)
        want[f"decode_head.fpn_convs.{i}.bn.num_batches_tracked"] = ()
    for k, shape in want.items():
        assert tuple(sd[k].shape) == shape, k
    heads = [k for k in sd if not k.startswith("backbone.")]
    assert all(k.startswith(("decode_head.", "auxiliary_head.")) for k in heads)
    # every head conv but the classifiers is a ConvModule: conv.weight + bn.{weight,bias,running_*,num_batches}
    convs = [k for k in heads if k.endswith("conv.weight")]
    assert len(convs) == 4 + 1 + 3 + 3 + 1 + 1  # ppm, bottleneck, laterals, fpn convs, fpn_bottleneck, aux
    assert not [k for k in heads if k.endswith("conv.bias")]
    assert len(heads) == 6 * len(convs) + 4  # + the two classifiers' weight and bias


@pytest.mark.parametrize("size", [(64, 64), (70, 90)])
def test_training_and_eval_outputs(size):
    torch.manual_seed(0)
    model = create_segmenter("upernet_convnext_atto", 5, channels=16, aux_channels=8)
    x = torch.randn(2, 3, *size)
    out = model.train()(x)
    assert set(out) == {"decode", "aux"}
    assert out["decode"].shape[:2] == (2, 5) and out["decode"].shape[-1] == size[1] // 4
    assert out["aux"].shape[-1] == size[1] // 16
    logits = model.eval()(x)
    assert logits.shape == (2, 5, *size)  # at the input's resolution, even where the strides do not divide it
    assert torch.isfinite(logits).all()


def test_loss_is_mmsegs():
    """Each head's logits bilinearly resized to the labels, cross-entropy averaged over *all* pixels with the
    ignored ones (255) counting 0 (mmseg 0.x), the auxiliary head weighted 0.4."""
    torch.manual_seed(0)
    decode, aux = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 2, 2)
    labels = torch.randint(0, 4, (2, 32, 32))
    labels[:, :10] = 255
    total, terms = segmentation_loss({"decode": decode, "aux": aux}, labels, aux_weight=0.4)

    def ce(logits):
        up = F.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
        return F.cross_entropy(up, labels, ignore_index=255, reduction="sum") / labels.numel()

    torch.testing.assert_close(terms["loss_decode"], ce(decode))
    torch.testing.assert_close(terms["loss_aux"], 0.4 * ce(aux))
    torch.testing.assert_close(total, ce(decode) + 0.4 * ce(aux))
    # the mean is over all pixels: more ignored pixels, smaller loss (not so with torch's default mean)
    assert terms["loss_decode"] < F.cross_entropy(F.interpolate(decode, size=(32, 32), mode="bilinear"), labels,
                                                  ignore_index=255)
    all_ignored = torch.full_like(labels, 255)
    assert segmentation_loss({"decode": decode}, all_ignored)[0] == 0
    # class_weight (mmseg's): each pixel's loss times its label's weight, still over all pixels
    weight = torch.tensor([0.0, 1.0, 2.0, 1.0])
    up = F.interpolate(decode, size=(32, 32), mode="bilinear", align_corners=False)
    per_pixel = F.cross_entropy(up, labels, ignore_index=255, reduction="none")
    want = (per_pixel * weight[labels.clamp(max=3)] * (labels != 255)).sum() / labels.numel()
    torch.testing.assert_close(segmentation_loss({"decode": decode}, labels, class_weight=weight)[0], want)


# ------------------------------------------------------------------------------------------ layer decay


def official_stage_wise_scale(name: str, num_layers: int, decay: float) -> float:
    """semantic_segmentation/mmcv_custom/layer_decay_optimizer_constructor.py, restated: the constructor's own
    num_layers is the config's + 2; stage_wise gives downsampling layers 0, stage s s + 1, anything else
    num_layers - 1; the scale is decay ** (num_layers - id - 1)."""
    top = num_layers + 2
    if name.startswith("backbone.downsample_layers"):
        lid = 0
    elif name.startswith("backbone.stages"):
        lid = int(name.split(".")[2]) + 1
    else:
        lid = top - 1
    return decay ** (top - lid - 1)


@pytest.mark.parametrize("num_layers", [6, 12])
def test_stage_wise_layer_decay_is_the_official_rule(num_layers):
    model = create_segmenter("upernet_convnext_atto", 150)
    opt = build_optimizer(model, OptimConfig(weight_decay=0.05, layer_decay=0.9, layer_decay_rule="stage_wise",
                                             layer_decay_layers=num_layers), lr=1e-4)
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert math.isclose(scale[id(p)], official_stage_wise_scale(name, num_layers, 0.9)), name
        assert wd[id(p)] == (0.0 if p.ndim == 1 or name.endswith(".bias") else 0.05), name
    named = dict(model.named_parameters())
    assert math.isclose(scale[id(named["backbone.stages.0.0.pwconv1.weight"])], 0.9 ** num_layers)
    assert math.isclose(scale[id(named["backbone.downsample_layers.2.1.weight"])], 0.9 ** (num_layers + 1))
    assert scale[id(named["backbone.norm3.weight"])] == scale[id(named["auxiliary_head.conv_seg.weight"])] == 1.0
    assert dense_layer_id("backbone.stages.3.1.gamma", num_layers, "stage_wise") == 4


# ------------------------------------------------------------------------------------------ loading


def test_an_official_layout_checkpoint_loads(tmp_path):
    """An mmseg checkpoint ({"state_dict", "meta"}) of our keys: the variant is recognised from the weights, the
    outputs are the model's, and the official single-scale protocol comes with it."""
    torch.manual_seed(0)
    model = create_segmenter("upernet_convnext_atto", 7, channels=48, aux_channels=24).eval()
    save({"state_dict": model.state_dict(), "meta": {"CLASSES": ("wall", "bed ", *"abcde")}},
         tmp_path / "upernet_convnext_atto_1k_512x512.pth")
    loaded = load_segmenter(tmp_path / "upernet_convnext_atto_1k_512x512.pth")
    assert loaded.arch == "upernet_convnext_atto" and loaded.num_classes == 7 and not loaded.training
    assert loaded.class_names[:2] == ["wall", "bed"] and loaded.auxiliary_head.conv_seg.in_channels == 24
    assert loaded.inference == {"scale": (2048, 512), "mode": "slide", "crop": 512, "stride": 341,
                                "reduce_zero_label": True, "ratios": (1.0,), "flip": False}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    save({"model": model.state_dict()}, tmp_path / "plain.pth")
    with pytest.raises(UserError, match="not a segmenter checkpoint"):
        load_segmenter(tmp_path / "plain.pth")
