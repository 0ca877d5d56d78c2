"""Training recipes as frozen dataclasses whose defaults are the paper's ImageNet-1K recipe (Table 5).

Experiments are small Python files under configs/ that build a `Config` (big_vision style); the command line
only overrides keys (`optim.lr=1e-3`), and an unknown key or a value of the wrong type is a UserError.
Derived values (effective batch, scaled lr, steps per epoch, warm-up steps) are computed once, in `derive`.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from convnext.errors import UserError


@dataclass(frozen=True)
class ModelConfig:
    name: str = "convnext_tiny"
    drop_path: float = 0.1  # Table 5: T 0.1, S 0.4, B 0.5, L 0.5
    layer_scale: float | None = None  # None: the variant's default (1e-6; 0 for isotropic S/B, §A.1)
    head_init_scale: float = 1.0  # Table 6: 0.001 when fine-tuning
    in_chans: int = 3
    init: str = ""  # fine-tune from: a registry tag, an official checkpoint or one of ours ("" = from scratch)
    init_ema: bool = False  # start from the EMA weights of `init` (a checkpoint of ours; §A.2)
    grad_checkpointing: bool = False
    # detectors only: settings of convnext.detection.create_detector beyond the official defaults, as
    # "name=value" strings (e.g. model.detector=box_batch_size_per_image=128,fpn_channels=128 on the command line)
    detector: tuple[str, ...] = ()
    # segmenters only: settings of convnext.segmentation.create_segmenter beyond the official defaults, as
    # "name=value" strings (e.g. model.segmenter=channels=64,aux_channels=32)
    segmenter: tuple[str, ...] = ()
    # FCMAE pre-training only (task=fcmae, convnext/fcmae.py): the official main_pretrain.py defaults, which
    # TRAINING.md's pre-training commands keep. `name` is then the encoder (convnextv2_*).
    mask_ratio: float = 0.6  # fraction of the 32 px patches removed from each image (int(L * 0.4) kept)
    decoder_dim: int = 512  # --decoder_embed_dim
    decoder_depth: int = 1  # ConvNeXt V2 blocks in the decoder
    norm_pix_loss: bool = True  # targets: each patch's pixels normalised to zero mean and unit variance


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "imagefolder"  # imagefolder (root/train, root/val) | fashion_mnist (the demo) | synthetic (timing)
    root: str = ""
    img_size: int = 224
    batch_size: int = 128  # per device (TRAINING.md: 128 x 32 GPUs for T/S/B)
    workers: int = 8
    # image folders: pil = PIL and timm in the DataLoader workers (the reference); gpu = the workers read bytes, the
    # device decodes and augments (the same augmentation, drawn from per-image seeds: convnext/device_transforms.py)
    pipeline: str = "pil"
    # augmentation (Table 5); the names are timm's, which the paper used
    randaug: str = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.4  # official main.py default (ignored by timm when RandAugment is on)
    reprob: float = 0.25  # random erasing
    hflip: float = 0.5
    shift: int = 2  # in-memory sets (the demo): random translation by up to this many pixels
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1
    crop_pct: float | None = None  # eval crop; None = 0.875 below 384, 1.0 (no crop) at 384 and above
    skip_bad_images: bool = False  # opt-in: skip and count unreadable images instead of stopping
    limit_train: int = 0  # train on a fixed random subset of this many images (0 = all); for small runs
    limit_eval: int = 0  # evaluate on a fixed random subset of this many images (0 = all); for smoke tests
    # Detection (dataset=coco: root/annotations/instances_<split>.json + root/<split>/; configs/coco.py). The
    # official ConvNeXt COCO pipeline: flip 0.5, then one of two policies at random: resize the short side to one
    # of `det_scales` (long side <= det_max_size); or resize to one of `det_crop_scales`, crop a random
    # `det_crop_size` range, resize to one of `det_scales`. Evaluation resizes to det_test_scale / det_max_size.
    det_scales: tuple[int, ...] = tuple(range(480, 801, 32))  # 480, 512, ..., 800
    det_max_size: int = 1333
    det_crop_scales: tuple[int, ...] = (400, 500, 600)
    det_crop_size: tuple[int, int] = (384, 600)  # mmdet RandomCrop(crop_type="absolute_range")
    det_test_scale: int = 800
    # One short side from det_scales per optimizer step, shared by its images on every process (the last resize of
    # either policy; the crop policy's first resize still draws per image); mmdet draws per image. A batch is padded
    # to its largest image and under DDP the slowest process sets the pace, so per-image sizes cost time on a CPU.
    det_step_scale: bool = False
    train_split: str = "train2017"
    eval_split: str = "val2017"
    # Segmentation (dataset=ade20k: root/images/<split>/ + root/annotations/<split>/, splits training / validation;
    # configs/ade20k.py). mmseg's configs/_base_/datasets/ade20k.py, which the official UperNet configs use
    # (ade20k_640x640.py for the 22K models): resize to seg_scale x a ratio in seg_ratio_range keeping the aspect,
    # random crop seg_crop_size with cat_max_ratio, flip (hflip), photometric distortion, pad (labels with 255).
    # Test: resize to seg_scale, sliding windows of seg_crop_size at seg_stride (the _ss configs) or the whole image.
    seg_num_classes: int = 150  # ADE20K's 150 classes
    seg_reduce_zero_label: bool = True  # ADE20K's label 0 ("other") is ignored, 1..150 become 0..149
    seg_scale: tuple[int, int] = (2048, 512)  # img_scale (long, short); the 22K models' (2560, 640)
    seg_ratio_range: tuple[float, float] = (0.5, 2.0)
    seg_crop_size: int = 512  # crop_size (512, 512); the 22K models' 640
    seg_cat_max_ratio: float = 0.75  # RandomCrop: re-draw a crop where one class covers >= 75% (up to 10 times)
    # Not mmseg's: the share of crops placed around one whole object instead (a random class's random connected
    # region; nnU-Net's foreground oversampling; convnext/segmentation/data.py object_window). 0 for the recipes.
    seg_object_crop: float = 0.0
    seg_photometric: bool = True  # PhotoMetricDistortion
    # Not mmseg's: keep each training pair in memory after its first read, decoded and (at a fixed scale,
    # seg_ratio_range (r, r)) resized with its object regions, so later passes start at the crop: the same samples,
    # less work. For sets that fit in memory (the scenes: 4,000 x 192 x 192 x 4 bytes a process), with data.workers=0.
    seg_cache: bool = False
    seg_test_mode: str = "slide"  # slide (the _ss configs' test_cfg) | whole (the _ms configs)
    seg_stride: int = 341  # slide stride (341, 341); the 22K models' 426
    seg_test_ratios: tuple[float, ...] = (1.0,)  # multi-scale test: (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) (--aug-test)
    seg_test_flip: bool = False  # multi-scale test: also the mirrored image


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 4e-3  # Table 5, for a batch of `lr_batch`
    lr_batch: int = 4096  # the batch `lr` is given for; scaled linearly to the effective batch (see derive)
    scale_lr: bool = True  # False: use `lr` as is (what the official main.py does)
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_epochs: float = 20.0
    layer_decay: float = 1.0  # Table 6: 0.7 (1K->384), 0.8 (22K->1K); 1.0 = off
    # which parameters form a "layer" (convnext/optim.py): classification (Table 6; 12 groups + head) |
    # layer_wise (the official detection rule) | stage_wise (the official segmentation rule) |
    # v2_single / v2_group (ConvNeXt V2 fine-tuning, TRAINING.md's --layer_decay_type 'single' / 'group')
    layer_decay_rule: str = "classification"
    layer_decay_layers: int = 12  # num_layers of the official dense configs: 6 for T, 12 for S/B/L/XL
    clip_grad: float = 0.0  # max global grad norm; 0 = off (Table 5: none). Applied in every precision
    # The lr schedule after the warm-up (convnext/optim.py: lr_at). cosine: the official classification schedule
    # (to min_lr, over the steps after the warm-up); poly: (1 - t/T)^poly_power down to min_lr (UperNet: power 1,
    # min 0); step: x0.1 at each epoch in `milestones` (Mask R-CNN 3x: 27, 33).
    schedule: str = "cosine"
    poly_power: float = 1.0
    milestones: tuple[float, ...] = ()  # epochs, for schedule=step
    warmup_steps: int = 0  # warm-up in optimizer steps, instead of warmup_epochs (mmdetection 500, UperNet 1500)
    warmup_ratio: float = 0.0  # the warm-up starts at this fraction of the lr (mmdetection 0.001; Table 5: 0)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 300
    accum_steps: int = 1  # gradient accumulation (the official --update_freq)
    precision: str = "bf16"  # fp32 | bf16 | fp16 (autocast; GradScaler only for fp16)
    channels_last: bool = True
    compile: bool = False
    ema_decay: float = 0.9999  # 0 = no EMA (roadmap runs: §2 "EMA severely hurts models with BatchNorm")
    seed: int = 0
    total_steps: int = 0  # the schedule's length in optimizer steps (0 = epochs x steps per epoch); UperNet: 160k
    eval_every: int = 1  # epochs
    eval_every_steps: int = 0  # evaluate every N optimizer steps instead (iteration-based runs; UperNet: 16k)
    eval_subset: int = 0  # where no evaluation is due at an epoch's end, evaluate on a fixed random subset of this
    #                       many evaluation images (0 = off): a curve per epoch when full evaluations are rare
    ckpt_every_steps: int = 0  # also write `last` every N optimizer steps (0 = at epoch ends only)
    log_every: int = 50  # steps, for plain-text progress when not on a terminal
    max_steps: int = 0  # stop after this many optimizer steps (0 = the whole schedule); for tests and smoke runs


TASKS = ("classification", "detection", "segmentation", "fcmae")  # what convnext/tasks.py trains


@dataclass(frozen=True)
class Config:
    task: str = "classification"  # one of TASKS; set by the config file (configs/coco.py: detection, ade20k.py)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def replace(cfg, **changes):
    """dataclasses.replace for nested keys: replace(cfg, **{"optim.lr": 1e-3})."""
    nested: dict[str, dict] = {}
    flat = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[key] = value
    for head, sub in nested.items():
        flat[head] = replace(getattr(cfg, head), **sub)
    return dataclasses.replace(cfg, **flat)


def _field_types(cls) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def _parse_value(text: str, typ, key: str):
    """Parse an override's text as the field's declared type; a mismatch is a UserError."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse_value(text, inner[0], key)
    if typ is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{key} takes true or false, not {text!r}")
    if origin is tuple:
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[float, ...]: any number of values
            return tuple(_parse_value(p.strip(), args[0], key) for p in parts)
        if len(parts) != len(args):
            raise UserError(f"{key} takes {len(args)} comma-separated values, not {text!r}")
        return tuple(_parse_value(p.strip(), a, key) for a, p in zip(args, parts))
    try:
        if typ is int:
            return int(text)
        if typ is float:
            return float(text)
    except ValueError:
        raise UserError(f"{key} takes {'an integer' if typ is int else 'a number'}, not {text!r}") from None
    if typ is str:  # a quoted value ('x' or "x", as in tuple syntax) is the text between the quotes
        return text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else text
    raise UserError(f"{key} cannot be set from the command line")


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `section.key=value` overrides, checking every key and type against the dataclasses."""
    changes = {}
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq:
            raise UserError(f"override {item!r} is not of the form section.key=value (e.g. optim.lr=1e-3)")
        section, _, name = key.partition(".")
        sections = {f.name: f for f in dataclasses.fields(Config) if dataclasses.is_dataclass(f.default_factory)}
        if section not in sections or not name:
            raise UserError(f"unknown config key {key!r}; sections are {', '.join(sections)} (e.g. optim.lr)")
        sub = getattr(cfg, section)
        types = _field_types(type(sub))
        if name not in types:
            raise UserError(f"unknown config key {key!r}; {section} has: {', '.join(types)}")
        changes[key] = _parse_value(text, types[name], key)
    return replace(cfg, **changes) if changes else cfg


CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def load_config(spec: str) -> Config:
    """`spec` is a config file (`configs/in1k.py`), optionally with an argument (`configs/in1k.py:small`),
    or the bare name of a file in configs/ (`demo`, `in1k:small`). The file defines get_config(arg)."""
    path_text, _, arg = spec.partition(":")
    path = Path(path_text)
    if not path.suffix:
        path = CONFIG_DIR / f"{path_text}.py"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_")))
        raise UserError(f"config {spec!r} not found (looked for {path}); the shipped configs are: {known}")
    module_spec = importlib.util.spec_from_file_location(f"convnext_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UserError(f"config file {path} defines no get_config(arg) function")
    cfg = module.get_config(arg) if arg else module.get_config()
    if not isinstance(cfg, Config):
        raise UserError(f"get_config in {path} returned {type(cfg).__name__}, not a convnext.config.Config")
    return cfg


@dataclass(frozen=True)
class Derived:
    """What follows from the config and the launch; computed once, printed once, stored in every checkpoint."""

    world_size: int
    effective_batch: int  # per device x world x accumulation
    lr: float  # the peak learning rate actually used
    lr_rule: str
    steps_per_epoch: int  # optimizer steps
    total_steps: int  # the schedule's length
    warmup_steps: int
    milestone_steps: tuple[int, ...] = ()  # schedule=step: where the lr drops x0.1

    def describe(self) -> str:
        drops = f", x0.1 at steps {', '.join(map(str, self.milestone_steps))}" if self.milestone_steps else ""
        return (
            f"effective batch {self.effective_batch} "
            f"(= per-device batch x {self.world_size} processes x accumulation); "
            f"lr {self.lr:.3g} ({self.lr_rule}); {self.steps_per_epoch} steps/epoch, {self.total_steps} steps, "
            f"{self.warmup_steps} warm-up steps{drops}"
        )


SCHEDULES = ("cosine", "poly", "step")


def derive(cfg: Config, num_train: int, world_size: int) -> Derived:
    batch = cfg.data.batch_size * world_size * cfg.train.accum_steps
    # The official train loader drops the last partial batch: len(dataset) // total batch steps per epoch.
    steps_per_epoch = num_train // batch
    if steps_per_epoch == 0:
        raise UserError(f"the training set has {num_train} images, fewer than one effective batch of {batch}")
    if cfg.optim.scale_lr:
        lr = cfg.optim.lr * batch / cfg.optim.lr_batch
        rule = f"linear scaling: {cfg.optim.lr:g} x {batch} / {cfg.optim.lr_batch}"
    else:
        lr = cfg.optim.lr
        rule = "as given, not scaled (optim.scale_lr=false)"
    o = cfg.optim
    if o.schedule not in SCHEDULES:
        raise UserError(f"optim.schedule={o.schedule!r} is not one of {', '.join(SCHEDULES)}")
    total = cfg.train.total_steps or steps_per_epoch * cfg.train.epochs
    warmup = o.warmup_steps or round(o.warmup_epochs * steps_per_epoch)
    return Derived(
        world_size=world_size, effective_batch=batch, lr=lr, lr_rule=rule, steps_per_epoch=steps_per_epoch,
        total_steps=total, warmup_steps=warmup,
        milestone_steps=tuple(round(m * steps_per_epoch) for m in o.milestones) if o.schedule == "step" else (),
    )


def dumps(cfg: Config, derived: Derived | None = None) -> str:
    out = {"config": cfg.to_dict()}
    if derived is not None:
        out["derived"] = dataclasses.asdict(derived)
    return json.dumps(out, indent=2)


def from_dict(d: dict) -> Config:
    """Rebuild a Config from `to_dict()` output (tuples come back from JSON as lists)."""
    def build(cls, values):
        types = _field_types(cls)
        kw = {}
        for k, v in values.items():
            if k not in types:
                raise UserError(f"unknown config key {k!r} in a stored config")
            kw[k] = tuple(v) if isinstance(v, list) else v
        return cls(**kw)

    return Config(
        task=d.get("task", "classification"),
        model=build(ModelConfig, d["model"]), data=build(DataConfig, d["data"]),
        optim=build(OptimConfig, d["optim"]), train=build(TrainConfig, d["train"]),
    )
