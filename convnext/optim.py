"""Parameter groups (no weight decay on 1-D parameters, layer-wise lr decay), the lr schedule, and EMA."""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from convnext.errors import UserError

NUM_LAYER_GROUPS = 12  # the official rule: 12 layer ids + the head (optim_factory.get_num_layer_for_convnext)


def layer_id(name: str, model: nn.Module) -> int:
    """Layer id in 0..13 of a parameter, for layer-wise lr decay: scale = decay ** (13 - id).

    Official rule (ConvNeXt-S/B/L/XL, stage 3 of 27 blocks): stem 0; stage 0 -> 1; downsample 1 + stage 1
    -> 2; downsample 2 -> 3; block k of stage 2 -> 3 + k // 3; downsample 3 + stage 3 -> 12; norm/head -> 13.
    Extended to any depth: block k of a stage 2 of depth D -> 3 + floor(9k / D), which equals k // 3 at
    D = 27 and makes ConvNeXt-T (D = 9) and the small variants work too (the official code refuses T).
    Isotropic: stem 0, block j of D -> 1 + floor(12j / D), norm/head 13.
    """
    parts = name.split(".")
    top = NUM_LAYER_GROUPS + 1
    if parts[0] == "downsample_layers":
        i = int(parts[1])
        return {0: 0, 1: 2, 2: 3, 3: 12}[i]
    if parts[0] == "stages":
        s, k = int(parts[1]), int(parts[2])
        if s == 2:
            return 3 + (9 * k) // len(model.stages[2])
        return {0: 1, 1: 2, 3: 12}[s]
    if parts[0] == "stem":
        return 0
    if parts[0] == "blocks":
        return 1 + (NUM_LAYER_GROUPS * int(parts[1])) // len(model.blocks)
    return top


def dense_layer_id(name: str, num_layers: int, kind: str = "layer_wise") -> int:
    """Layer id of a parameter of a detector or segmenter whose backbone is `backbone.body.*` or `backbone.*`,
    by the official dense-prediction rule (`object_detection/mmcv_custom/layer_decay_optimizer_constructor.py`,
    the same file for segmentation); scale = decay ** (num_layers + 1 - id).

    Not the classification rule above. `layer_wise` (detection; `num_layers` 6 for T, 12 for the others):
    downsample 0 -> 0, 1 -> 2, 2 -> 3, 3 -> num_layers; stage 0 -> 1, stage 1 -> 2, block k of stage 2 -> 3 + k // 3
    (not scaled by depth), stage 3 -> num_layers; everything outside the backbone (neck, heads) -> num_layers + 1.
    `stage_wise` (segmentation): downsample layers -> 0, stage s -> s + 1, everything else -> num_layers + 1.
    """
    parts = name.split(".")
    if parts[0] != "backbone":
        return num_layers + 1
    parts = parts[2:] if parts[1] == "body" else parts[1:]  # torchvision's BackboneWithFPN-like nesting, or not
    if parts[0] not in ("downsample_layers", "stages"):
        return num_layers + 1  # the backbone's output norms: the official rule puts them with the heads
    i = int(parts[1])
    if kind == "stage_wise":
        return 0 if parts[0] == "downsample_layers" else i + 1
    if kind != "layer_wise":
        raise ValueError(f"unknown layer decay type {kind!r}")
    if parts[0] == "downsample_layers":
        return {0: 0, 1: 2, 2: 3, 3: num_layers}[i]
    return {0: 1, 1: 2, 2: 3 + int(parts[2]) // 3, 3: num_layers}[i]


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0,
                 layer_of: Callable[[str], int] | None = None, top: int = NUM_LAYER_GROUPS + 1,
                 no_decay_suffixes: tuple[str, ...] = ()) -> list[dict]:
    """AdamW groups: weight decay only on >= 2-D weights (not on norms, biases or the layer scale gamma, as the
    official code); each group carries `lr_scale` = layer_decay ** (top - layer id) (1.0 everywhere when decay is
    1). `layer_of(name)` gives the layer id: the classification rule (`layer_id`) unless given.
    `no_decay_suffixes`: names ending so get no weight decay whatever their shape (ConvNeXt V2's GRN gamma/beta)."""
    layer_of = layer_of or (lambda name: layer_id(name, model))
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or name.endswith(".bias") or name.endswith(no_decay_suffixes)
        lid = layer_of(name) if layer_decay != 1.0 else top
        key = (lid, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [], "names": [], "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (top - lid),
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())


def v2_layer_id(name: str, depths: Sequence[int], kind: str) -> int:
    """Layer id of a parameter of a ConvNeXt V2 classifier by the official V2 fine-tuning rules
    (ConvNeXt-V2 `optim_factory.py`, `--layer_decay_type`); scale = decay ** (top - id), `v2_top` gives top.

    `v2_single` (official 'single'; TRAINING.md: atto, tiny): every block its own layer; downsample i ->
    sum(depths[:i]) + 1, block j of stage i -> sum(depths[:i]) + j + 1 (downsample i shares its id with the first
    block of stage i, and no parameter gets 0), norm/head -> sum(depths) + 1. `v2_group` (official 'group';
    TRAINING.md: base; "Base and Large" in main_finetune.py): the 12-group rule of ConvNeXt V1 *without* our
    depth scaling: stem 0, stage 0 -> 1, downsample 1 + stage 1 -> 2, downsample 2 -> 3, block k of stage 2 ->
    3 + k // 3, downsample 3 + stage 3 -> 12, norm/head -> 13 (on a stage 2 of 9 blocks the ids stop at 5: the
    official rule, kept as is).
    """
    parts = name.split(".")
    if kind == "v2_single":
        if parts[0] == "downsample_layers":
            return sum(depths[: int(parts[1])]) + 1
        if parts[0] == "stages":
            return sum(depths[: int(parts[1])]) + int(parts[2]) + 1
        return sum(depths) + 1
    if kind != "v2_group":
        raise ValueError(f"unknown V2 layer decay type {kind!r}")
    if parts[0] == "downsample_layers":
        return {0: 0, 1: 2, 2: 3, 3: NUM_LAYER_GROUPS}[int(parts[1])]
    if parts[0] == "stages":
        s = int(parts[1])
        return 3 + int(parts[2]) // 3 if s == 2 else {0: 1, 1: 2, 3: NUM_LAYER_GROUPS}[s]
    return NUM_LAYER_GROUPS + 1


def v2_top(depths: Sequence[int], kind: str) -> int:
    """The top layer id of `v2_layer_id` (the head's): main_finetune.py's num_layers + 1."""
    return sum(depths) + 1 if kind == "v2_single" else NUM_LAYER_GROUPS + 1


# ConvNeXt V2 fine-tuning: GRN's gamma and beta ((1, 1, 1, C), so >= 2-D) get no weight decay (official commit
# 2553895, "Fix gamma/beta wd update rule", optim_factory.get_parameter_groups)
V2_NO_DECAY = (".gamma", ".beta")

# classification: V1 Table 6 (`layer_id`); layer_wise / stage_wise: the V1 dense-prediction rules
# (`dense_layer_id`); v2_single / v2_group: the ConvNeXt V2 fine-tuning rules (`v2_layer_id`)
LAYER_DECAY_RULES = ("classification", "layer_wise", "stage_wise", "v2_single", "v2_group")


def build_optimizer(model: nn.Module, cfg, lr: float) -> torch.optim.AdamW:
    """AdamW over `param_groups`, with the layer-decay rule `cfg.layer_decay_rule` names: the classification rule
    (`layer_id`), the dense-prediction rules (`dense_layer_id`, over `cfg.layer_decay_layers` layers), or the
    ConvNeXt V2 fine-tuning rules (`v2_layer_id`, GRN gamma/beta without weight decay)."""
    rule = cfg.layer_decay_rule
    if rule not in LAYER_DECAY_RULES:
        raise UserError(f"optim.layer_decay_rule={rule!r} is not one of {', '.join(LAYER_DECAY_RULES)}")
    if rule == "classification":
        groups = param_groups(model, cfg.weight_decay, cfg.layer_decay)
    elif rule in ("v2_single", "v2_group"):
        depths = [len(stage) for stage in model.stages]
        groups = param_groups(model, cfg.weight_decay, cfg.layer_decay, lambda name: v2_layer_id(name, depths, rule),
                              v2_top(depths, rule), no_decay_suffixes=V2_NO_DECAY)
    else:
        n = cfg.layer_decay_layers
        groups = param_groups(model, cfg.weight_decay, cfg.layer_decay, lambda name: dense_layer_id(name, n, rule),
                              n + 1)
    for g in groups:
        g.pop("names")
    # fused on CPU too: PyTorch's default there is the per-tensor loop, ~9x slower for ConvNeXt-atto's step
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, eps=cfg.eps, fused=True)


def lr_at(step: int, peak: float, total: int, warmup: int, min_lr: float, *, schedule: str = "cosine",
          warmup_ratio: float = 0.0, milestones: tuple[int, ...] = (), power: float = 1.0) -> float:
    """The learning rate at optimizer step `step` (a pure function of it, so a resumed run gets the same lrs).

    cosine (Table 5; the official per-iteration cosine_scheduler): a linear warm-up from `warmup_ratio` x peak
    (0 in the paper) to `peak` over `warmup` steps, then half a cosine from `peak` down to `min_lr` at `total`.
    poly and step follow mmcv's LrUpdaterHook (the detection and segmentation code): the schedule runs over all
    steps, poly = (peak - min_lr) (1 - step/total)^power + min_lr, step = peak x 0.1^(milestones passed), and the
    linear warm-up multiplies it by a factor rising from `warmup_ratio` to 1.
    """
    if schedule == "cosine":
        if step < warmup:
            return peak * (warmup_ratio + (1 - warmup_ratio) * step / warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "poly":
        lr = (peak - min_lr) * (1 - min(1.0, step / max(1, total))) ** power + min_lr
    elif schedule == "step":
        lr = max(min_lr, peak * 0.1 ** sum(step >= m for m in milestones))
    else:
        raise ValueError(f"unknown lr schedule {schedule!r}")
    if step < warmup:
        lr *= 1 - (1 - step / warmup) * (1 - warmup_ratio)
    return lr


def scheduled_lr(step: int, der, o) -> float:
    """`lr_at` with the values a run derived (convnext.config.Derived) and its optimizer config."""
    return lr_at(step, der.lr, der.total_steps, der.warmup_steps, o.min_lr, schedule=o.schedule,
                 warmup_ratio=o.warmup_ratio, milestones=der.milestone_steps, power=o.poly_power)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


class EMA:
    """Exponential moving average of the weights (Polyak): ema = decay * ema + (1 - decay) * weights.

    Kept in fp32 on the model's device, updated after every optimizer step; buffers are copied. The tensor
    lists are gathered once: walking ~100 modules twice per step for them cost more than the average itself
    (ConvNeXt-atto on the CPU: 4 ms -> 2 ms a step).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._ema = (list(self.module.parameters()), list(self.module.buffers()))
        self._source: tuple[int, list, list] | None = None  # (id of the trained model, its parameters, buffers)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if self._source is None or self._source[0] != id(model):
            self._source = (id(model), list(model.parameters()), list(model.buffers()))
        _, params, buffers = self._source
        torch._foreach_lerp_(self._ema[0], params, 1.0 - self.decay)
        if buffers:
            torch._foreach_copy_(self._ema[1], buffers)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, sd):
        self.module.load_state_dict(sd)
