"""UperNet on ConvNeXt (paper §4.2, Table 4): semantic segmentation as the official ADE20K configs build it.

    model = create_segmenter("upernet_convnext_tiny", num_classes=150, backbone_weights="convnext_tiny.fb_in1k_noema")
    out = model(images)         # training: {"decode": (N, K, H/4, W/4), "aux": (N, K, H/16, W/16)} logits
    logits = model(images)      # eval: (N, K, H, W), at the input's resolution
    loss, terms = segmentation_loss(out, labels, model.aux_weight)

`images` are normalised (ImageNet mean/std, convnext/segmentation/data.py does it) and of any size. Every number
is the official config's (facebookresearch/ConvNeXt `semantic_segmentation/configs/_base_/models/upernet_convnext.py`
and the per-size files, on mmsegmentation 0.11):
- UPerHead on the four stages: pyramid pooling of the last stage at scales 1, 2, 3, 6 (each a 1x1 conv to 512),
  concatenated with it and fused by a 3x3 conv ("bottleneck"); 1x1 lateral convs on stages 0-2, a top-down path
  (bilinear upsampling and sum), a 3x3 conv on each of those three levels, all four upsampled to stride 4,
  concatenated and fused by a 3x3 conv ("fpn_bottleneck"); dropout 0.1, a 1x1 classifier. Every conv but the
  classifier is conv (no bias) + BN + ReLU (mmcv's ConvModule), 512 channels; SyncBN under DDP (the task converts).
- An auxiliary FCNHead on stage 2: one 3x3 conv to 256, dropout 0.1, a 1x1 classifier; loss weight 0.4; training
  only (mmseg's `forward_dummy` and inference never run it).
- `align_corners=False` everywhere; cross-entropy with ignore index 255 (`segmentation_loss`).

The module keys are mmseg's (`backbone.*`, `decode_head.psp_modules.0.1.conv.weight`, `decode_head.bottleneck.bn.*`,
`decode_head.lateral_convs.i.*`, `decode_head.fpn_convs.i.*`, `decode_head.fpn_bottleneck.*`,
`decode_head.conv_seg.*`, `auxiliary_head.convs.0.*`, `auxiliary_head.conv_seg.*`), so the official ADE20K
checkpoints' `state_dict` loads with plain `load_state_dict` (`load_segmenter` reads them too). Initialisation is
mmcv's: Kaiming normal (fan out, ReLU) for the head convs, BN at 1 / 0, the classifiers normal with std 0.01.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from convnext.backbone import ConvNeXtBackbone, load_backbone_weights
from convnext.checkpoint import read_checkpoint
from convnext.detection.models import parse_settings
from convnext.errors import UserError
from convnext.model import VARIANTS

IGNORE_INDEX = 255  # mmseg's ignore_index: the label of "other" (ADE20K's 0) and of padding
ALIGN_CORNERS = False  # every resize of the official configs

# ----------------------------------------------------------------------------------------------------------
# The table: Table 4's models with their parameters (M, 150 classes) and FLOPs (G, by mmcv's get_flops on
# mmseg's forward_dummy at the size given; RESULTS.md explains how our count compares).
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmenterSpec:
    backbone: str  # a hierarchical ConvNeXt of convnext/model.py
    params_m: float | None = None  # Table 4 / the official README, 150 classes
    gflops: tuple[tuple[int, int, float], ...] = ()  # (height, width, G): 512 x 2048 (1K rows), 640 x 2560 (22K)


SEGMENTERS: dict[str, SegmenterSpec] = {
    "upernet_convnext_tiny": SegmenterSpec("convnext_tiny", 60, ((512, 2048, 939),)),
    "upernet_convnext_small": SegmenterSpec("convnext_small", 82, ((512, 2048, 1027),)),
    "upernet_convnext_base": SegmenterSpec("convnext_base", 122, ((512, 2048, 1170), (640, 2560, 1828))),
    "upernet_convnext_large": SegmenterSpec("convnext_large", 235, ((640, 2560, 2458),)),
    "upernet_convnext_xlarge": SegmenterSpec("convnext_xlarge", 391, ((640, 2560, 3335),)),
}
PREFIX = "upernet_"


def get_segmenter_spec(name: str) -> SegmenterSpec:
    """The table's entry, or, for another hierarchical ConvNeXt, `upernet_<variant>` (e.g. upernet_convnext_atto)."""
    if name in SEGMENTERS:
        return SEGMENTERS[name]
    arch = name.removeprefix(PREFIX)
    if arch != name and arch in VARIANTS and not VARIANTS[arch].isotropic:
        return SegmenterSpec(arch)
    raise UserError(f"unknown segmenter {name!r}; known: {', '.join(SEGMENTERS)}, or upernet_<model> for any "
                    f"hierarchical ConvNeXt (e.g. upernet_convnext_atto)")


def list_segmenters() -> list[str]:
    return list(SEGMENTERS)


# ----------------------------------------------------------------------------------------------------------
# The heads (mmseg 0.x decode_heads/uper_head.py, psp_head.py, fcn_head.py)
# ----------------------------------------------------------------------------------------------------------


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """mmseg's `resize` as the configs call it: bilinear, align_corners=False."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=ALIGN_CORNERS)


class ConvBNReLU(nn.Module):
    """mmcv's ConvModule with BN and ReLU: conv without bias (a BN follows), keys `conv.*` and `bn.*`."""

    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU(inplace=True)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")  # mmcv's kaiming_init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class DecodeHead(nn.Module):
    """mmseg's BaseDecodeHead: what every head ends with (dropout, then a 1x1 classifier `conv_seg`)."""

    def __init__(self, channels: int, num_classes: int, dropout: float, cls_init: str = "normal"):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        if cls_init == "normal":
            nn.init.normal_(self.conv_seg.weight, std=0.01)  # mmseg: normal_init(conv_seg, mean=0, std=0.01)
            nn.init.zeros_(self.conv_seg.bias)
        elif cls_init != "default":  # "default": PyTorch's own Conv2d init (kaiming-uniform, a=sqrt(5))
            raise UserError(f"cls_init={cls_init!r}: the classifier's init is 'normal' (mmseg's, std 0.01) or "
                            f"'default' (PyTorch's)")

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class UPerHead(DecodeHead):
    """Unified Perceptual Parsing's head (Xiao et al. 2018): PPM on the last level + FPN, fused at stride 4."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1, cls_init: str = "normal"):
        super().__init__(channels, num_classes, dropout, cls_init)
        top = in_channels[-1]
        # keys psp_modules.<i>.1.conv.weight: each branch an nn.Sequential(pool, conv), as mmseg's PPM
        self.psp_modules = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvBNReLU(top, channels, 1))
                                         for s in pool_scales)
        self.bottleneck = ConvBNReLU(top + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [resize(branch(x), x.shape[-2:]) for branch in self.psp_modules]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        laterals.append(self.psp_forward(feats[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down: each level plus the one above, upsampled
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)] + [laterals[-1]]  # PPM level: no 3x3
        outs = [outs[0]] + [resize(o, outs[0].shape[-2:]) for o in outs[1:]]
        return self.cls_seg(self.fpn_bottleneck(torch.cat(outs, dim=1)))


class FCNHead(DecodeHead):
    """mmseg's FCNHead as the auxiliary head: `num_convs` 3x3 ConvModules, no concatenation of the input."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_convs: int = 1, dropout: float = 0.1,
                 cls_init: str = "normal"):
        super().__init__(channels, num_classes, dropout, cls_init)
        self.convs = nn.Sequential(*(ConvBNReLU(in_channels if i == 0 else channels, channels, 3)
                                     for i in range(num_convs)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_seg(self.convs(x))


# ----------------------------------------------------------------------------------------------------------
# The segmenter
# ----------------------------------------------------------------------------------------------------------

AUX_INDEX = 2  # the auxiliary head reads stage 2 (stride 16): `in_index=2`


class Segmenter(nn.Module):
    """mmseg's EncoderDecoder: body -> UPerHead (+ the auxiliary FCNHead in training).

    `body` returns the four stage outputs at strides 4..32 (a dict or a sequence) and lists their widths in
    `body.out_channels`. Training mode returns the logits the loss needs at the heads' strides; eval mode the
    decode head's logits resized to the input (`encode_decode`)."""

    def __init__(self, body: nn.Module, num_classes: int, channels: int = 512, aux_channels: int = 256,
                 aux_weight: float = 0.4, dropout: float = 0.1, pool_scales: Sequence[int] = (1, 2, 3, 6),
                 cls_init: str = "normal"):
        super().__init__()
        if num_classes < 1:
            raise UserError(f"num_classes={num_classes}: a segmenter needs at least one class")
        widths = list(body.out_channels)
        if len(widths) != 4:
            raise UserError(f"UperNet reads four stages (strides 4-32); this body returns {len(widths)}")
        self.backbone = body
        self.decode_head = UPerHead(widths, channels, num_classes, pool_scales, dropout, cls_init)
        # no auxiliary head without its loss: an unused head would break DDP's gradient bucketing
        self.auxiliary_head = (FCNHead(widths[AUX_INDEX], aux_channels, num_classes, 1, dropout, cls_init)
                               if aux_weight else None)
        self.num_classes, self.aux_weight = num_classes, aux_weight

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(x)
        return list(feats.values()) if isinstance(feats, dict) else list(feats)

    def forward(self, x: torch.Tensor):
        feats = self.features(x)
        logits = self.decode_head(feats)  # (N, K, H/4, W/4)
        if self.training:
            out = {"decode": logits}
            if self.auxiliary_head is not None:
                out["aux"] = self.auxiliary_head(feats[AUX_INDEX])  # (N, K, H/16, W/16)
            return out
        return resize(logits, x.shape[-2:])


def segmentation_loss(outputs: dict[str, torch.Tensor], labels: torch.Tensor, aux_weight: float = 0.4,
                      class_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """mmseg 0.x's decode-head loss for each head: its logits resized to the labels' size (bilinear,
    align_corners=False) and cross-entropy with ignore index 255, *averaged over all pixels*, the ignored ones
    counting as 0 (mmseg's CrossEntropyLoss before v0.23's `avg_non_ignore`, which the official code ran);
    the auxiliary head's loss weighted by `aux_weight`. `class_weight` (K,): mmseg's CrossEntropyLoss option, each
    pixel's loss times its label's weight, still averaged over all pixels. Returns (total, {"loss_decode",
    "loss_aux"})."""
    terms = {}
    for name, weight in (("decode", 1.0), ("aux", aux_weight)):
        if name in outputs:
            logits = resize(outputs[name].float(), labels.shape[-2:])  # in fp32: 150-way softmax under fp16
            ce = F.cross_entropy(logits, labels.long(), weight=class_weight, ignore_index=IGNORE_INDEX,
                                 reduction="none")
            terms[f"loss_{name}"] = weight * ce.mean()
    return sum(terms.values()), terms


# ----------------------------------------------------------------------------------------------------------
# The factory
# ----------------------------------------------------------------------------------------------------------

# Overrides create_segmenter accepts, with their defaults (the official configs' values).
DEFAULTS = dict(
    drop_path_rate=0.0,  # training configs set the paper's (configs/ade20k.py: 0.4, S 0.3); 0 for inference
    layer_scale_init_value=None,  # the variant's default; the official configs pass 1.0 (then overwritten)
    in_chans=3,
    channels=512,  # UPerHead
    aux_channels=256,  # FCNHead
    aux_weight=0.4,  # the auxiliary loss weight; 0: no auxiliary head
    dropout=0.1,
    # the heads' 1x1 classifiers: "normal" (mmseg's std 0.01) or "default" (PyTorch's, ~7x larger at 64 channels:
    # configs/scenes_seg.py, where 0.01 learnt more slowly in a short high-lr run; RESULTS.md)
    cls_init="normal",
    grad_checkpointing=False,
)


def _settings(overrides: dict) -> dict:
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise UserError(f"unknown segmenter setting(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    return {**DEFAULTS, **overrides}


def create_segmenter(name: str, num_classes: int = 150, backbone_weights: str | os.PathLike | None = None,
                     **overrides) -> Segmenter:
    """A segmenter of the table by name, with `num_classes` classes (ADE20K: 150).

    `backbone_weights`: classification weights for the backbone (a registry tag such as `convnext_tiny.fb_in1k`, or
    a checkpoint file of any origin `convnext` reads); what is not used and what is new is printed.
    `overrides`: any key of DEFAULTS (e.g. `drop_path_rate=0.4`, `channels=64`); a training run stores them in its
    checkpoints' meta ("settings"), from which `load_segmenter` rebuilds the same model.
    """
    spec = get_segmenter_spec(name)
    s = _settings(overrides)
    body = ConvNeXtBackbone(spec.backbone, drop_path_rate=s["drop_path_rate"],
                            layer_scale_init_value=s["layer_scale_init_value"], in_chans=s["in_chans"])
    if backbone_weights:
        load_backbone_weights(body, backbone_weights)
    if s["grad_checkpointing"]:
        body.set_grad_checkpointing(True)
    model = segmenter_on(body, num_classes, **overrides)
    model.arch = name  # type: ignore[attr-defined]
    return model


def segmenter_on(body: nn.Module, num_classes: int = 150, **overrides) -> Segmenter:
    """UperNet with the config's heads on any `body` that returns the four stage outputs and lists their widths in
    `body.out_channels`: ours (create_segmenter), or another network's for a comparison at equal heads
    (benchmarks/segmentation_speed.py)."""
    s = _settings(overrides)
    return Segmenter(body, num_classes, channels=s["channels"], aux_channels=s["aux_channels"],
                     aux_weight=s["aux_weight"], dropout=s["dropout"], cls_init=s["cls_init"])


def segmenter_settings(items: tuple[str, ...] | list[str]) -> dict:
    """`("channels=64", "aux_weight=0")` -> create_segmenter's settings (a config's `model.segmenter`)."""
    return parse_settings(items)


def load_segmenter(path: str | os.PathLike, *, ema: bool = False, name: str | None = None) -> Segmenter:
    """A segmenter in eval mode from one of our checkpoints (a segmentation run's best.pt / last.pt), with
    `model.class_names` and `model.inference` (test scale, sliding window, label encoding, the run's test ratios and
    flip) from its meta; or from
    an official mmseg checkpoint (`{"state_dict", "meta"}`, e.g. upernet_convnext_tiny_1k_512x512.pth): its keys
    are ours, its backbone is recognised from the weights' shapes (or `name`), and its inference settings are
    the official ADE20K ones for its crop size."""
    obj = read_checkpoint(path)
    meta = obj.get("meta") or {}
    if isinstance(obj.get("state_dict"), dict) and "decode_head.conv_seg.weight" in obj["state_dict"]:
        return _load_mmseg(path, obj["state_dict"], meta, name)
    if meta.get("task") != "segmentation":
        raise UserError(f"{path} is not a segmenter checkpoint (it was written by "
                        f"{meta.get('task') or 'something else'}); pass a segmentation run's best.pt or last.pt")
    key = "model_ema" if ema else "model"
    if key not in obj:
        raise UserError(f"{path} has no EMA weights; leave out the EMA option")
    model = create_segmenter(meta["arch"], meta["num_classes"], **meta.get("settings", {}))
    _load_state(model, obj[key], path, meta["arch"])
    model.class_names = list(meta.get("class_names") or [str(i) for i in range(meta["num_classes"])])
    model.inference = {**official_inference(), **(meta.get("inference") or {})}
    model.inference["scale"] = tuple(model.inference["scale"])
    model.inference["ratios"] = tuple(model.inference["ratios"])
    return model.eval()


def _load_state(model: nn.Module, sd: dict, path, arch: str) -> None:
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise UserError(f"{path} does not fit {arch}: {str(e).splitlines()[0]}") from None


def _load_mmseg(path, sd: dict, meta: dict, name: str | None) -> Segmenter:
    """An official mmseg UperNet checkpoint: the variant is the one whose stem width and stage-2 depth match, the
    heads as wide as their classifiers' inputs, the class names mmcv stored in meta["CLASSES"]."""
    if "backbone.downsample_layers.0.0.weight" not in sd:
        raise UserError(f"{path} is an mmseg checkpoint without a ConvNeXt backbone (no backbone.downsample_layers)")
    if name is None:
        width = sd["backbone.downsample_layers.0.0.weight"].shape[0]
        depth = 1 + max((int(k.split(".")[3]) for k in sd if k.startswith("backbone.stages.2.")), default=-1)
        found = [f"{PREFIX}{a}" for a, v in VARIANTS.items()
                 if not v.isotropic and v.dims[0] == width and v.depths[2] == depth]
        if not found:
            raise UserError(f"{path} has a backbone of width {width} and stage-2 depth {depth}, which no ConvNeXt has")
        name = next((f for f in found if f in SEGMENTERS), found[0])
    num_classes, channels = sd["decode_head.conv_seg.weight"].shape[:2]
    aux = sd.get("auxiliary_head.conv_seg.weight")
    model = create_segmenter(name, num_classes, channels=channels, aux_weight=0.0 if aux is None else 0.4,
                             aux_channels=DEFAULTS["aux_channels"] if aux is None else aux.shape[1])
    _load_state(model, sd, path, name)
    # the official files are named upernet_convnext_<size>_{1k_512x512,22k_640x640}.pth: the 22K ones crop 640
    crop = 640 if "640" in Path(path).name or name in ("upernet_convnext_large", "upernet_convnext_xlarge") else 512
    names = list(meta.get("CLASSES") or [])
    model.class_names = [str(c).strip() for c in names] if len(names) == num_classes else \
        [str(i) for i in range(num_classes)]
    model.inference = official_inference(crop)
    return model.eval()


def official_inference(crop: int = 512) -> dict:
    """The official ADE20K test settings (single scale) for a training crop of 512 or 640 (the 22K models); also
    what a checkpoint written before its run's test ratios and flip were stored falls back to."""
    return {"scale": (4 * crop, crop), "mode": "slide", "crop": crop, "stride": 341 if crop == 512 else 426,
            "reduce_zero_label": True, "ratios": (1.0,), "flip": False}


def count_segmenter_gmacs(model: Segmenter, height: int = 512, width: int = 2048) -> dict[str, float]:
    """Multiply-adds (G) of one image through the path mmseg's `get_flops` measures (`forward_dummy` =
    `encode_decode`: backbone and decode head; the auxiliary head is not run, the final resize not counted).

    "backbone", "decode_head", "total": the convs' and linears' multiply-adds (torch.utils.flop_counter, 2 FLOPs per
    multiply-add, halved). "elementwise": what mmcv's counter adds to that on this path: one per conv-bias add and
    ReLU output, two per BatchNorm element, one per input element of the pyramid pooling (mmcv counts no GELU,
    no interpolation, and not the official backbone's own LayerNorm class). "mmcv_total" = total + elementwise,
    the number Table 4 prints (RESULTS.md)."""
    def macs(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 2 / 1e9

    extra = [0]

    def count(module, inputs, output):
        if isinstance(module, nn.Conv2d) and module.bias is not None:
            extra[0] += output.numel()
        elif isinstance(module, nn.BatchNorm2d):
            extra[0] += 2 * output.numel()  # affine: scale and shift
        elif isinstance(module, (nn.ReLU, nn.AdaptiveAvgPool2d)):
            extra[0] += inputs[0].numel()

    model = model.eval()
    device = next(model.parameters()).device  # "meta" counts without computing
    x = torch.zeros(1, model.backbone.in_chans, height, width, device=device)
    feats: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(count) for m in model.modules()]
    try:
        with torch.no_grad():
            out = {"backbone": macs(lambda: feats.extend(model.features(x)))}
            out["decode_head"] = macs(lambda: model.decode_head(feats))
    finally:
        for h in hooks:
            h.remove()
    out["total"] = out["backbone"] + out["decode_head"]
    out["elementwise"] = extra[0] / 1e9
    out["mmcv_total"] = out["total"] + out["elementwise"]
    return out
