"""The modernization roadmap (paper §2, Figure 2, Tables 10 and 11): ResNet -> ConvNeXt, one change at a time.

`Arch` has one switch per design decision of §2; `RoadmapNet` builds any combination of them; `steps(regime)`
lists the paper's steps as data, each the previous adopted step plus one change (the paper's sentence).
The canonical `convnext.model` has none of these switches (STYLE.md, principle 5).

    from convnext.roadmap import steps
    for s in steps("resnet50"):
        print(s.name, s.change, s.paper_top1, s.paper_gflops)
    model = steps("resnet50")[-1].build()          # = ConvNeXt-T, in the roadmap's module layout

What is not obvious:
- The layout is torchvision's ResNet (`stem`, `stages.i.blocks.j.conv1..3|norm1..3|shortcut`) so that step 0
  loads torchvision's ResNet-50 through a plain key rename; `convnext_to_roadmap` / `roadmap_to_convnext`
  convert the last step to and from the canonical ConvNeXt keys (1x1 convs here, Linear layers there).
- A conv has a bias exactly when it is not followed by a BatchNorm (whose mean subtraction would cancel it).
  That one rule gives torchvision's bias-free ResNet at step 0 and ConvNeXt's biased convs at the last step.
- The recipe, not the architecture, decides the init and the layer scale: Table 5 lists "layer scale init
  1e-6" and "trunc. normal" among the training settings that §2.1 applies from the "modern recipe" step on.
- Multiply-adds are convs and linears, as counted by convnext.benchmark.count_gmacs (the paper's "FLOPs").
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from convnext.errors import UserError
from convnext.model import LN_EPS, DropPath, LayerNorm2d

DEPTHWISE = 0  # `Arch.groups` value meaning one group per channel (§2.3)


@dataclass(frozen=True)
class Arch:
    """One switch per design decision of §2. The defaults are torchvision's ResNet-50."""

    depths: tuple[int, ...] = (3, 4, 6, 3)  # blocks per stage (§2.2 "stage compute ratio")
    width: int = 64  # stage-1 width, doubled per stage: a bottleneck's inner width, an inverted block's own width
    stem: str = "resnet"  # "resnet": 7x7 s2 conv + 3x3 s2 max-pool; "patchify": 4x4 s4 conv (§2.2)
    stem_width: int | None = None  # output channels of the stem; None: `width` (ResNet: 64 = layer1's inner width)
    groups: int = 1  # groups of the spatial conv: 1 dense (ResNet), DEPTHWISE (§2.3), or a ResNeXt group count
    inverted: bool = False  # False: 1x1 d->w, kxk w, 1x1 w->4w (bottleneck); True: 1x1 d->4d, kxk 4d, 1x1 4d->d (§2.4)
    spatial_first: bool = False  # the kxk conv first, before the two 1x1 convs ("move up", §2.5)
    kernel: int = 3  # of the spatial conv (§2.5)
    act: str = "relu"  # "relu" | "gelu" (§2.6)
    acts: str = "every"  # "every": after conv1, conv2 (and in the stem) and after the addition; "one": after conv2 only
    norm: str = "bn"  # "bn" | "ln": type of the stem, block and shortcut norms (§2.6)
    norms: str = "every"  # "every": after each conv; "one": after the spatial conv only (§2.6 "fewer norms")
    downsample: str = "in_block"  # "in_block": stride 2 in the first block's spatial conv + 1x1 s2 projection
    #                               shortcut; "separate": LN + 2x2 s2 conv between stages, LN after the pool (§2.6)

    def __post_init__(self):
        for name, allowed in (("stem", ("resnet", "patchify")), ("act", ("relu", "gelu")), ("acts", ("every", "one")),
                              ("norm", ("bn", "ln")), ("norms", ("every", "one")),
                              ("downsample", ("in_block", "separate"))):
            if getattr(self, name) not in allowed:
                raise UserError(f"roadmap Arch.{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.kernel % 2 == 0:
            raise UserError(f"roadmap Arch.kernel={self.kernel} must be odd, so that 'same' padding exists")


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "bn" else LayerNorm2d(channels, eps=LN_EPS)


def _act(kind: str) -> nn.Module:
    return nn.ReLU(inplace=True) if kind == "relu" else nn.GELU()


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, *, norm: str | None) -> nn.Conv2d:
    # bias only where no BatchNorm follows: BN subtracts the per-channel mean and would cancel it exactly
    # (an LN, which normalises across channels, would not)
    return nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=norm != "bn")


class Block(nn.Module):
    """conv1 -> norm1 -> act1 -> conv2 -> norm2 -> act2 -> conv3 -> norm3 -> x gamma -> + shortcut -> act3.

    Which conv is the spatial (kxk) one, its groups, the widths, and which norms/acts exist come from `Arch`;
    the absent norms and activations are Identity, so the forward is the same straight line at every step.
    """

    def __init__(self, a: Arch, cin: int, dim: int, stride: int, drop_path: float, layer_scale: float):
        super().__init__()
        hidden, out = (4 * dim, dim) if a.inverted else (dim, 4 * dim)  # expansion 4 either way (§2.4)
        k = a.kernel

        def groups(channels: int) -> int:
            return channels if a.groups == DEPTHWISE else a.groups

        # (in, out, kernel, stride, groups) of conv1..conv3, and which of them is the spatial one
        if a.spatial_first:  # dw kxk on the block's input (stride here), then the two 1x1 convs (§2.5)
            shapes = [(cin, cin, k, stride, groups(cin)), (cin, hidden, 1, 1, 1), (hidden, out, 1, 1, 1)]
            spatial = 0
        else:  # torchvision ResNet v1.5: the stride sits in the 3x3 conv, not in the first 1x1
            shapes = [(cin, hidden, 1, 1, 1), (hidden, hidden, k, stride, groups(hidden)), (hidden, out, 1, 1, 1)]
            spatial = 1
        for i, (ci, co, kernel, s, g) in enumerate(shapes, start=1):
            has_norm = a.norms == "every" or i - 1 == spatial  # "one": the norm after the spatial conv (§2.6)
            self.add_module(f"conv{i}", _conv(ci, co, kernel, s, g, norm=a.norm if has_norm else None))
            self.add_module(f"norm{i}", _norm(a.norm, co) if has_norm else nn.Identity())
        every = a.acts == "every"
        self.act1 = _act(a.act) if every else nn.Identity()
        self.act2 = _act(a.act)  # "one" keeps this one: between the two 1x1 convs once the dw conv is first
        self.gamma = nn.Parameter(torch.full((out,), layer_scale)) if layer_scale > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if a.downsample == "in_block" and (stride != 1 or cin != out):  # ResNet's projection shortcut
            self.shortcut = nn.Sequential(
                OrderedDict(conv=_conv(cin, out, 1, stride, norm=a.norm), norm=_norm(a.norm, out))
            )
        else:
            self.shortcut = nn.Identity()
        self.act3 = _act(a.act) if every else nn.Identity()  # ResNet's ReLU after the addition

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.act1(self.norm1(self.conv1(x)))
        x = self.act2(self.norm2(self.conv2(x)))
        x = self.norm3(self.conv3(x))
        if self.gamma is not None:
            x = x * self.gamma[:, None, None]  # layer scale, per channel
        return self.act3(shortcut + self.drop_path(x))


class Stage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[Block]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class RoadmapNet(nn.Module):
    """stem -> 4 stages -> global average pool -> (LN) -> head, at any point of the roadmap."""

    def __init__(self, arch: Arch, num_classes: int = 1000, drop_path_rate: float = 0.0, layer_scale: float = 0.0,
                 init: str = "trunc_normal", in_chans: int = 3):
        super().__init__()
        a = self.arch = arch
        stem_width = a.stem_width or a.width
        if a.stem == "resnet":
            conv, pool = nn.Conv2d(in_chans, stem_width, 7, 2, 3, bias=a.norm != "bn"), nn.MaxPool2d(3, 2, 1)
        else:  # non-overlapping 4x4 patches, like Swin's patch embedding (§2.2)
            conv, pool = nn.Conv2d(in_chans, stem_width, 4, 4, bias=a.norm != "bn"), nn.Identity()
        # The stem keeps ResNet's norm throughout (its type follows `norm`); its activation goes with "fewer
        # activations", after which the only activation left in the network is the one inside each block.
        act = _act(a.act) if a.acts == "every" else nn.Identity()
        self.stem = nn.Sequential(OrderedDict(conv=conv, norm=_norm(a.norm, stem_width), act=act, pool=pool))
        rates = torch.linspace(0, drop_path_rate, sum(a.depths), device="cpu").tolist()  # cpu: meta-safe
        self.stages = nn.ModuleList()
        cin = stem_width
        for i, depth in enumerate(a.depths):
            dim = a.width * 2**i
            out = dim if a.inverted else 4 * dim
            stride = 1 if i == 0 else 2
            downsample: nn.Module = nn.Identity()
            if a.downsample == "separate" and i > 0:
                # §2.6: alone, a 2x2 s2 conv "leads to diverged training"; an LN before it makes it stable
                downsample = nn.Sequential(
                    OrderedDict(norm=LayerNorm2d(cin, eps=LN_EPS), conv=nn.Conv2d(cin, out, 2, 2))
                )
                cin, stride = out, 1
            start = sum(a.depths[:i])
            blocks = []
            for j in range(depth):
                blocks.append(Block(a, cin, dim, stride if j == 0 else 1, rates[start + j], layer_scale))
                cin = out
            self.stages.append(Stage(downsample, blocks))
        self.num_features = cin
        # §2.6: with separate downsampling also "one [LN] after the final global average pooling"
        self.norm = nn.LayerNorm(cin, eps=LN_EPS) if a.downsample == "separate" else nn.Identity()
        self.head = nn.Linear(cin, num_classes)
        self.apply(_INITS[init])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x).mean((-2, -1))  # global average pool: (N, C, H, W) -> (N, C)
        return self.head(self.norm(x))


def _init_torchvision(m: nn.Module) -> None:
    # torchvision's ResNet: kaiming-normal (fan_out) convs, BN at 1/0; the fc keeps PyTorch's default init
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _init_trunc_normal(m: nn.Module) -> None:
    # Table 5 / the official code: trunc-normal std 0.02 on every conv and linear weight, zero bias
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


_INITS = {"torchvision": _init_torchvision, "trunc_normal": _init_trunc_normal}

# What a recipe decides about the network it trains. The recipes themselves (optimizer, epochs, augmentation)
# are the trainer's; these are only their model-side settings.
RECIPES = {
    # torchvision's 90-epoch SGD recipe, which produced the 76.13 / 78.20 of step 0
    "resnet_original": dict(init="torchvision", layer_scale=0.0),
    # Table 5 with EMA off ("EMA severely hurts models with BatchNorm", Appendix A.1): trunc-normal init and
    # layer scale 1e-6 are rows of that table, so every step from the "modern recipe" on has them
    "convnext_in1k_no_ema": dict(init="trunc_normal", layer_scale=1e-6),
}


@dataclass(frozen=True)
class Step:
    """One row of Table 10 / 11: an architecture, a recipe, and what the paper measured for them."""

    name: str  # short, unique within its regime; also the run directory of `convnext roadmap --train`
    change: str  # the one change from `base`, in the paper's words
    paper_top1: float  # IN-1K top-1 (Table 10: mean of 3 seeds; Table 11: single runs)
    paper_gflops: float  # the paper's "FLOPs" (multiply-adds) at 224, as printed
    arch: Arch
    recipe: str  # a key of RECIPES
    adopted: bool = True  # False for the kernel sizes 5, 9, 11, which the next step does not build on
    base: str | None = None  # the step this one changes: the previous adopted one
    drop_path: float = 0.0  # stochastic depth the recipe trains it with (Table 5); build() defaults to 0
    note: str = ""  # where our count and the printed one disagree, and why
    regime: str = ""
    label: str = ""  # its row in the paper's order: "0", "1", ..., "8a".."8d" for the kernel sweep

    def build(self, num_classes: int = 1000, drop_path_rate: float = 0.0, in_chans: int = 3) -> RoadmapNet:
        r = RECIPES[self.recipe]
        return RoadmapNet(self.arch, num_classes, drop_path_rate, r["layer_scale"], r["init"], in_chans)


def _regime(regime: str, table: list, start: Arch, drop_path: float) -> list[Step]:
    """Expand a table into cumulative Steps, each its base's Arch with one row's changes applied.

    A row is (name, change, top1, gflops, arch changes[, note]). A `_Sweep` is a group of alternatives built
    on the same base (the kernel sizes, §2.5); only its adopted row becomes the base of the next row.
    """
    out: list[Step] = []
    base: Step | None = None
    for n, row in enumerate(table):
        group = row.rows if isinstance(row, _Sweep) else [row]
        for letter, (name, change, top1, gflops, changes, *note) in zip("abcdefgh", group):
            arch = dataclasses.replace(base.arch if base else start, **changes)
            recipe = "resnet_original" if base is None else "convnext_in1k_no_ema"
            adopted = not isinstance(row, _Sweep) or name == row.adopt
            label = f"{n}{letter}" if isinstance(row, _Sweep) else str(n)
            out.append(Step(name, change, top1, gflops, arch, recipe, adopted, base.name if base else None,
                            0.0 if base is None else drop_path, note[0] if note else "", regime, label))
        base = next(s for s in out[-len(group):] if s.adopted)
    return out


@dataclass(frozen=True)
class _Sweep:
    adopt: str  # the row the roadmap continues from
    rows: list


# Table 10 (ResNet-50 / Swin-T regime; top-1 is the mean of 3 seeds). Readings of what the paper leaves open:
# - "width": the stem's output width follows (64 -> 96): in ResNet the stem feeds layer1 at its inner width,
#   and 5.27 G needs it (a 64-wide stem gives 5.21 G).
# - "inverted": a block's first 1x1 maps its input width to 4x its own width; the shortcut of a downsampling
#   block is still ResNet's 1x1 s2 projection, now from d/2 to d instead of 2w to 4w channels (hence the drop
#   the paper attributes to "the downsampling residual blocks' shortcut 1x1 conv"); 4.64 G follows.
# - "dw_up": the stride 2 of a downsampling block moves with the dw conv to the block's front (4.07 G).
# - "fewer_norms": the one BN sits after the dw conv, before the 1x1 convs (the paper's "one BN layer before
#   the conv1x1 layers", and where ConvNeXt's LN is), so BN -> LN is then a pure type swap. Shortcut
#   projections keep their norm: the sentence is about the residual branch. Norms cost no MACs either way.
# - Until "separate downsampling" the shortcut of each stage's first block is ResNet's 1x1 s2 conv + norm;
#   that is the reading under which every printed number but the two noted ones is reproduced.
_RESNET50 = [
    ("resnet50", "ResNet-50 (torchvision), trained with its original 90-epoch SGD recipe", 76.13, 4.09, {}),
    ("recipe", "modern training recipe (§2.1): 300 epochs, AdamW, Mixup, CutMix, RandAugment, Random Erasing, "
     "stochastic depth, label smoothing (Table 5, EMA off); same layers", 78.82, 4.09, {}),
    ("stage_ratio", "stage compute ratio (3, 4, 6, 3) -> (3, 3, 9, 3), Swin-T's 1:1:3:1 (§2.2)", 79.36, 4.53,
     dict(depths=(3, 3, 9, 3))),
    ("patchify", "\"patchify\" stem: 7x7 s2 conv + max-pool -> 4x4 s4 conv (§2.2)", 79.51, 4.42,
     dict(stem="patchify")),
    ("depthwise", "ResNeXt-ify: the 3x3 conv becomes depthwise, groups = channels (§2.3)", 78.28, 2.35,
     dict(groups=DEPTHWISE)),
    ("width", "width 64 -> 96, as Swin-T (§2.3)", 80.50, 5.27, dict(width=96)),
    ("inverted", "inverted bottleneck: 1x1 d->4d, dw 3x3 on 4d, 1x1 4d->d (§2.4)", 80.64, 4.64, dict(inverted=True)),
    ("dw_up", "move the depthwise conv up, before the two 1x1 convs (§2.5)", 79.92, 4.07, dict(spatial_first=True)),
    _Sweep("kernel7", [
        ("kernel5", "kernel size 3 -> 5 (§2.5)", 80.35, 4.10, dict(kernel=5)),
        ("kernel7", "kernel size 3 -> 7 (§2.5)", 80.57, 4.15, dict(kernel=7)),
        ("kernel9", "kernel size 3 -> 9 (§2.5)", 80.57, 4.21, dict(kernel=9)),
        ("kernel11", "kernel size 3 -> 11 (§2.5)", 80.47, 4.29, dict(kernel=11)),
    ]),
    ("gelu", "ReLU -> GELU (§2.6)", 80.62, 4.15, dict(act="gelu")),
    ("fewer_acts", "fewer activations: one GELU per block, between the two 1x1 convs (§2.6)", 81.27, 4.15,
     dict(acts="one")),
    ("fewer_norms", "fewer norms: one BN per block, after the dw conv, before the 1x1 convs (§2.6)", 81.41, 4.15,
     dict(norms="one")),
    # † Table 10 prints 4.46 here, but the type of a norm changes no conv or linear: the architecture gives the
    # previous step's 4.15. 4.46 is exactly what the next step's layout gives (4.456), so the printed value
    # most likely belongs to the next row (or was counted after it); Table 11 has 14.81 -> 14.81 at this step
    # and +0.54 only at separate downsampling, and the review of the paper puts the +0.3 G there too.
    ("ln", "BatchNorm -> LayerNorm (§2.6)", 81.47, 4.46, dict(norm="ln"),
     "Table 10 prints 4.46 G. A norm's type changes no conv or linear, so the architecture gives the previous "
     "step's 4.15 G; 4.46 G is what the next step (separate downsampling) gives, and Table 11 keeps 14.81 G "
     "at BN -> LN and adds FLOPs only at the separate-downsampling step."),
    # Table 10 prints 4.49; the exact ConvNeXt-T layout has 4.456 G of conv + linear MACs (our 4.46, Table 1's
    # 4.5), and Table 11's ConvNeXt-B row (15.35) equals our count for B, so no single counting convention
    # gives both (counting LayerNorms too would add ~0.01 G to T and ~0.02 G to B); we keep the architecture's.
    ("separate_ds", "separate downsampling: LN + 2x2 s2 conv between stages, LN after the pool (§2.6) "
     "= ConvNeXt-T", 81.97, 4.49, dict(downsample="separate"),
     "Table 10 prints 4.49 G; the ConvNeXt-T layout has 4.456 G of conv + linear multiply-adds (Table 1: 4.5), "
     "and the same count gives Table 11's ConvNeXt-B 15.35 G exactly."),
]

# Table 11 (ResNet-200 / Swin-B regime; single runs). ResNet-200 is torchvision's ResNet with (3, 24, 36, 3).
# - "stage_ratio_width": the paper changes depths and width together; the stem width follows the width to 84,
#   as in "width" above (14.52 G; a 64-wide stem would give 14.46 G).
# - the same readings as Table 10 for everything else; here every printed number is reproduced.
_RESNET200 = [
    ("resnet200", "ResNet-200 (3, 24, 36, 3), trained with the original 90-epoch SGD recipe", 78.20, 15.01, {}),
    ("recipe", "modern training recipe (§2.1, Table 5, EMA off); same layers", 81.14, 15.01, {}),
    ("stage_ratio_width", "stage ratio (3, 24, 36, 3) -> (3, 3, 27, 3) and width 64 -> 84 (§2.2)", 81.33, 14.52,
     dict(depths=(3, 3, 27, 3), width=84)),
    ("patchify", "\"patchify\" stem: 7x7 s2 conv + max-pool -> 4x4 s4 conv (§2.2)", 81.59, 14.38,
     dict(stem="patchify")),
    ("depthwise", "ResNeXt-ify: the 3x3 conv becomes depthwise, groups = channels (§2.3)", 80.54, 7.23,
     dict(groups=DEPTHWISE)),
    ("width", "width 84 -> 128, as Swin-B (§2.3)", 81.85, 16.76, dict(width=128)),
    ("inverted", "inverted bottleneck: 1x1 d->4d, dw 3x3 on 4d, 1x1 4d->d (§2.4)", 82.64, 15.68, dict(inverted=True)),
    ("dw_up", "move the depthwise conv up, before the two 1x1 convs (§2.5)", 82.04, 14.63, dict(spatial_first=True)),
    # In this regime 5 is marginally the best (82.32 vs 82.30), but ConvNeXt-B, the endpoint, uses 7 (§2.5)
    _Sweep("kernel7", [
        ("kernel5", "kernel size 3 -> 5 (§2.5)", 82.32, 14.70, dict(kernel=5)),
        ("kernel7", "kernel size 3 -> 7 (§2.5)", 82.30, 14.81, dict(kernel=7)),
        ("kernel9", "kernel size 3 -> 9 (§2.5)", 82.27, 14.95, dict(kernel=9)),
        ("kernel11", "kernel size 3 -> 11 (§2.5)", 82.18, 15.13, dict(kernel=11)),
    ]),
    ("gelu", "ReLU -> GELU (§2.6)", 82.19, 14.81, dict(act="gelu")),
    ("fewer_acts", "fewer activations: one GELU per block, between the two 1x1 convs (§2.6)", 82.71, 14.81,
     dict(acts="one")),
    ("fewer_norms", "fewer norms: one BN per block, after the dw conv, before the 1x1 convs (§2.6)", 83.17, 14.81,
     dict(norms="one")),
    ("ln", "BatchNorm -> LayerNorm (§2.6)", 83.35, 14.81, dict(norm="ln")),
    ("separate_ds", "separate downsampling: LN + 2x2 s2 conv between stages, LN after the pool (§2.6) "
     "= ConvNeXt-B", 83.60, 15.35, dict(downsample="separate")),
]

# Stochastic depth of the Table 5 recipe: the ResNet-50 regime ends at ConvNeXt-T (0.1), ResNet-200 at B (0.5)
_REGIMES = {
    "resnet50": (_RESNET50, Arch(), 0.1),
    "resnet200": (_RESNET200, Arch(depths=(3, 24, 36, 3)), 0.5),
}
REGIMES = tuple(_REGIMES)
# The transformer each regime is compared with (Tables 10 and 11): name, top-1, GFLOPs
REFERENCE = {"resnet50": ("Swin-T", 81.30, 4.50), "resnet200": ("Swin-B", 83.50, 15.43)}


def steps(regime: str = "resnet50") -> list[Step]:
    """The ordered steps of Table 10 ("resnet50") or Table 11 ("resnet200"), side branches included."""
    if regime not in _REGIMES:
        raise UserError(f"unknown roadmap regime {regime!r}; choose one of {', '.join(REGIMES)}")
    table, start, drop_path = _REGIMES[regime]
    return _regime(regime, table, start, drop_path)


def get_step(regime: str, name: str) -> Step:
    for s in steps(regime):
        if s.name == name:
            return s
    names = ", ".join(s.name for s in steps(regime))
    raise UserError(f"no step {name!r} in the {regime} roadmap; its steps are {names}")


# ------------------------------------------------------------------------------------------------------------
# Key maps: torchvision ResNet -> roadmap (step 0), and canonical ConvNeXt <-> roadmap (the last step)
# ------------------------------------------------------------------------------------------------------------


def torchvision_resnet_to_roadmap(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ResNet keys (`conv1`, `bn1`, `layerI.J.convK|bnK|downsample.{0,1}`, `fc`) -> step 0's."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("layer"):
            stage, rest = k[len("layer"):].split(".", 1)
            j, rest = rest.split(".", 1)
            rest = rest.replace("bn", "norm").replace("downsample.0", "shortcut.conv")
            rest = rest.replace("downsample.1", "shortcut.norm")
            k = f"stages.{int(stage) - 1}.blocks.{j}.{rest}"
        else:
            k = k.replace("conv1.", "stem.conv.").replace("bn1.", "stem.norm.").replace("fc.", "head.")
        out[k] = v
    return out


def _convnext_key_pairs(depths: tuple[int, ...]) -> list[tuple[str, str]]:
    """(canonical prefix, roadmap prefix) for every module of a ConvNeXt with these depths."""
    pairs = [("downsample_layers.0.0", "stem.conv"), ("downsample_layers.0.1", "stem.norm"),
             ("norm", "norm"), ("head", "head")]
    for i, depth in enumerate(depths):
        if i > 0:
            pairs += [(f"downsample_layers.{i}.0", f"stages.{i}.downsample.norm"),
                      (f"downsample_layers.{i}.1", f"stages.{i}.downsample.conv")]
        for j in range(depth):
            a, b = f"stages.{i}.{j}", f"stages.{i}.blocks.{j}"
            pairs += [(f"{a}.dwconv", f"{b}.conv1"), (f"{a}.norm", f"{b}.norm1"), (f"{a}.pwconv1", f"{b}.conv2"),
                      (f"{a}.pwconv2", f"{b}.conv3"), (f"{a}.gamma", f"{b}.gamma")]
    return pairs


def _depths(state_dict: dict, block_index: int) -> tuple[int, ...]:
    """Blocks per stage, from keys `stages.<i>.<j>....` (canonical, block_index 2) or `stages.<i>.blocks.<j>....`."""
    depths: dict[int, int] = {}
    for k in state_dict:
        parts = k.split(".")
        if parts[0] == "stages" and len(parts) > block_index and parts[block_index].isdigit():
            i = int(parts[1])
            depths[i] = max(depths.get(i, 0), int(parts[block_index]) + 1)
    return tuple(depths[i] for i in sorted(depths))


def _convert(state_dict: dict, pairs: list[tuple[str, str]], reshape, what: str) -> dict[str, torch.Tensor]:
    out = {}
    for src, dst in pairs:
        for k, v in state_dict.items():
            if k == src or k.startswith(src + "."):
                out[dst + k[len(src):]] = reshape(k, v)
    if len(out) != len(state_dict) or not out:
        raise UserError(f"not {what}: {len(state_dict) - len(out)} of its {len(state_dict)} keys have no place "
                        "in the other layout")
    return out


def _pointwise(key: str) -> bool:  # a roadmap block's 1x1 convs: Linear layers (pwconv1, pwconv2) in ConvNeXt's
    return ".blocks." in key and key.endswith((".conv2.weight", ".conv3.weight"))


def convnext_to_roadmap(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Canonical ConvNeXt weights -> the last roadmap step's; Linear (o, i) weights become 1x1 convs (o, i, 1, 1)."""
    pairs = _convnext_key_pairs(_depths(state_dict, 2))
    def reshape(key: str, v: torch.Tensor) -> torch.Tensor:
        return v[:, :, None, None] if key.endswith(("pwconv1.weight", "pwconv2.weight")) else v

    return _convert(state_dict, pairs, reshape, "a canonical ConvNeXt state dict")


def roadmap_to_convnext(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The last roadmap step's weights -> canonical ConvNeXt keys (loads into create_model(...))."""
    pairs = [(dst, src) for src, dst in _convnext_key_pairs(_depths(state_dict, 3))]
    return _convert(state_dict, pairs, lambda k, v: v[:, :, 0, 0] if _pointwise(k) else v,
                    "the state dict of a roadmap's last step")


__all__ = ["Arch", "Block", "RoadmapNet", "Step", "RECIPES", "REGIMES", "REFERENCE", "DEPTHWISE",
           "steps", "get_step", "torchvision_resnet_to_roadmap", "convnext_to_roadmap", "roadmap_to_convnext"]
