"""`convnext predict` and the `Classifier` API: classify image files as people have them.

    from convnext.predict import Classifier
    clf = Classifier.from_pretrained("convnext_tiny", "fb_in1k")      # or .from_checkpoint("run/best.pth")
    for p in clf.predict(["cat.jpg", "scan.png", pil_image], topk=5):
        print(p.source, p.error or p.top[0].name)

What is not obvious:
- Preprocessing comes from the weights (the registry entry, or the `preprocessing` a checkpoint of ours
  stores) and is the official eval protocol, `convnext.transforms.eval_transform`: resize the short side to
  int(size / crop_pct) and centre-crop below 384; resize to size x size at crop_pct 1.0; bicubic.
- Images are read by convnext/images.py: EXIF orientation, 16-bit greyscale, transparency and the
  decompression-bomb limit are explained there.
- A file that cannot be read is that file's error; the others are still classified, and the command
  exits 1 at the end. Class names: a checkpoint's own, else ImageNet-1K (shipped, imagenet_classes.txt),
  else ImageNet-22K (21841 classes: timm's WordNet lemmas, first lemma of each synset).
- Layer scale and the block LN affine are folded into the Linear layers first (convnext/fold.py);
  `--no-fold` keeps the model as trained.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import torch
from PIL import Image
from torch import nn

from convnext.errors import UserError
from convnext.images import _PIL_DATA_ERRORS, _corrupt, expand_paths, load_image, to_rgb

# ------------------------------------------------------------------------------------------- class names


def default_class_names(num_classes: int) -> list[str]:
    """ImageNet-1K (1000) or ImageNet-22K (21841) names; "class <i>" for any other head."""
    if num_classes == 1000:
        return Path(__file__).with_name("imagenet_classes.txt").read_text().splitlines()
    if num_classes == 21841:
        # The official 22K head follows the sorted fall11 synsets (official issue #22), which is timm's
        # imagenet22k_synsets.txt; its lemma file gives the names (first lemma, e.g. "tabby").
        from timm.data import ImageNetInfo

        info = ImageNetInfo("imagenet-22k")
        return [info.index_to_description(i).split(",")[0] for i in range(num_classes)]
    return [f"class {i}" for i in range(num_classes)]


# ------------------------------------------------------------------------------------------- the Classifier


class Label(NamedTuple):
    index: int
    name: str
    prob: float


@dataclass
class Prediction:
    source: str  # the path, or "<image i>" for a PIL image
    top: list[Label] = field(default_factory=list)  # best first
    error: str | None = None  # why this input could not be classified

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.source, "error": self.error}
        return {"path": self.source, "top": [l._asdict() for l in self.top]}


def preprocessing_from_cfg(cfg: dict | None, in_chans: int = 3):
    """A `convnext.data.Preprocessing` from a pretrained cfg: its `preprocessing` entry (registry and our
    checkpoints), else flat keys (`input_size`/`img_size`, `crop_pct`, ...) in it or in its `meta`."""
    from convnext.data import Preprocessing
    from convnext.transforms import IMAGENET_MEAN, IMAGENET_STD, default_crop_pct

    cfg = dict(cfg or {})
    meta = cfg.get("meta") or {}
    pre: dict = {}
    # first found wins: the file's own metadata, then the cfg (which falls back to the official 224 protocol)
    for src in (meta.get("preprocessing") or {}, meta, cfg.get("preprocessing") or {}, cfg):
        for key in ("img_size", "input_size", "crop_pct", "mean", "std", "interpolation", "in_chans"):
            if src.get(key) is not None:
                pre.setdefault("img_size" if key == "input_size" else key, src[key])
    size = pre.get("img_size", 224)
    size = int(size[-1] if isinstance(size, (list, tuple)) else size)  # timm style (C, H, W)
    return Preprocessing(
        img_size=size,
        mean=tuple(pre.get("mean", IMAGENET_MEAN)),
        std=tuple(pre.get("std", IMAGENET_STD)),
        crop_pct=float(pre.get("crop_pct") or default_crop_pct(size)),
        in_chans=int(pre.get("in_chans", in_chans)),
        interpolation=str(pre.get("interpolation", "bicubic")),
    )


class Classifier:
    """A model, its preprocessing and its class names: `predict(paths or PIL images, topk)`."""

    def __init__(self, model: nn.Module, preprocessing=None, class_names: list[str] | None = None, *,
                 fold: bool = True, device: str | torch.device = "cpu", batch_size: int = 32, source: str = ""):
        from convnext.transforms import eval_transform
        from convnext.fold import fold_for_inference

        if not getattr(model, "num_classes", 0):
            raise UserError("the model has no classifier head (num_classes=0): there is nothing to predict")
        in_chans = model.stem.in_channels if hasattr(model, "stem") else model.downsample_layers[0][0].in_channels
        self.preprocessing = preprocessing or preprocessing_from_cfg(getattr(model, "pretrained_cfg", None), in_chans)
        p = self.preprocessing
        if not (len(p.mean) == len(p.std) == p.in_chans == in_chans):
            raise UserError(f"the preprocessing ({len(p.mean)} means, {len(p.std)} stds, in_chans {p.in_chans}) "
                            f"does not fit a model with {in_chans} input channels; pass a matching Preprocessing")
        self.class_names = list(class_names) if class_names else default_class_names(model.num_classes)
        if len(self.class_names) != model.num_classes:
            raise UserError(f"{len(self.class_names)} class names were given for a {model.num_classes}-class model")
        self.arch = getattr(model, "arch", type(model).__name__)
        self.folded = fold
        self.model = (fold_for_inference(model) if fold else model.eval()).to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.source = source  # where the weights came from, for printing
        self.transform = eval_transform(p.img_size, p.mean, p.std, p.crop_pct, p.interpolation)

    @classmethod
    def from_pretrained(cls, name: str, tag: str | None = None, **kwargs) -> Classifier:
        """Official weights: `("convnext_tiny", "fb_in1k")`, `("convnext_tiny.fb_in22k")`, or the default tag."""
        from convnext.model import create_model
        from convnext.weights import get_pretrained_cfg

        if tag is None:  # "convnext_tiny" (its default weights) or "convnext_tiny.fb_in22k"
            full = name
        else:  # "fb_in22k" or "convnext_tiny.fb_in22k"
            full = tag if "." in tag else f"{name.partition('.')[0]}.{tag}"
        cfg = get_pretrained_cfg(full)
        model = create_model(cfg["arch"], pretrained=cfg["tag"], num_classes=cfg["num_classes"])
        return cls(model, class_names=_names_from_cfg(model), source=cfg["tag"], **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, name: str | None = None, *, ema: bool = False,
                        **kwargs) -> Classifier:
        """A checkpoint file (official, ours, timm's, safetensors); `name` when the file does not say it."""
        from convnext.weights import model_from_file

        model = model_from_file(path, name, which="model_ema" if ema else "model")
        return cls(model, class_names=_names_from_cfg(model), source=str(path), **kwargs)

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax over classes of a preprocessed (N, C, H, W) batch, in fp32 on the CPU."""
        return self.model(batch.to(self.device)).float().softmax(dim=1).cpu()

    def iter_predict(self, images: Iterable, topk: int = 5) -> Iterator[Prediction]:
        """Like `predict`, one Prediction at a time (batch by batch), for long lists of files."""
        if topk < 1:
            raise UserError(f"topk must be at least 1, not {topk}")
        topk = min(topk, len(self.class_names))
        images = list(images)
        for start in range(0, len(images), self.batch_size):
            preds, tensors, slots = [], [], []
            for i, item in enumerate(images[start:start + self.batch_size], start):
                pred = Prediction(f"<image {i}>" if isinstance(item, Image.Image) else str(item))
                try:
                    tensors.append(self._prepare(item))
                    slots.append(pred)
                except UserError as e:
                    pred.error = str(e)
                preds.append(pred)
            if tensors:
                probs, idx = self.probabilities(torch.stack(tensors)).topk(topk, dim=1)
                for pred, ps, ix in zip(slots, probs.tolist(), idx.tolist()):
                    pred.top = [Label(i, self.class_names[i], p) for p, i in zip(ps, ix)]
            yield from preds

    def predict(self, images, topk: int = 5) -> list[Prediction]:
        """Classify paths and/or PIL images (one, or a list); a bad input gets `.error`, the rest are classified."""
        if isinstance(images, (str, os.PathLike, Image.Image)):
            images = [images]
        return list(self.iter_predict(images, topk))

    def _prepare(self, item) -> torch.Tensor:
        if isinstance(item, Image.Image):
            try:  # an image opened lazily by the caller decodes here
                img = to_rgb(item)
            except UserError:
                raise
            except _PIL_DATA_ERRORS as e:
                raise _corrupt(e) from None
        else:
            img = load_image(item)
        if self.preprocessing.in_chans == 1:  # a model trained on greyscale (the Fashion-MNIST demo)
            img = img.convert("L")
        return self.transform(img)

    def describe(self) -> str:
        p = self.preprocessing
        resize = (f"resize to {p.img_size}x{p.img_size}" if p.crop_pct >= 1.0 else
                  f"resize short side to {int(p.img_size / p.crop_pct)}, centre crop {p.img_size}")
        return (f"{self.arch} ({self.source or 'weights given'}), {'folded' if self.folded else 'not folded'}, "
                f"{self.device}; preprocessing: {resize} ({p.interpolation}), mean {tuple(p.mean)}, std {tuple(p.std)}")


def _names_from_cfg(model: nn.Module) -> list[str] | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("class_names") or (cfg.get("meta") or {}).get("class_names")
    return list(names) if names else None


# ------------------------------------------------------------------------------------------- command line


def add_weights_arguments(p: argparse.ArgumentParser, random_init: bool = False, device: bool = True) -> None:
    """--model and exactly one source of weights; shared with `convnext export`."""
    p.add_argument("--model", metavar="NAME", help="model name (with --checkpoint: default, the one the file names)")
    w = p.add_mutually_exclusive_group(required=True)
    w.add_argument("--pretrained", metavar="TAG", help="official weights: a tag such as fb_in1k, or NAME.TAG")
    w.add_argument("--checkpoint", metavar="PATH", help="a checkpoint file: official, ours, timm's, or .safetensors")
    if random_init:
        w.add_argument("--random-init", action="store_true", help="no weights: a seeded random model (for testing)")
    p.add_argument("--ema", action="store_true", help="with --checkpoint: the EMA weights of a training checkpoint")
    p.add_argument("--no-fold", action="store_true", help="do not fold layer scale and LN affine (convnext/fold.py)")
    if device:
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def classifier_from_args(args: argparse.Namespace, fold: bool) -> Classifier:
    device = getattr(args, "device", "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} was asked for, but no CUDA device is available")
    kw = dict(fold=fold, device=device)
    if args.checkpoint:
        return Classifier.from_checkpoint(args.checkpoint, args.model, ema=args.ema, **kw)
    if args.ema:
        raise UserError("--ema applies to --checkpoint only (the official files hold one set of weights)")
    if getattr(args, "random_init", False):
        if not args.model:
            raise UserError("--random-init needs --model NAME")
        from convnext.model import create_model

        torch.manual_seed(0)
        return Classifier(create_model(args.model), source="random init, seed 0", **kw)
    if not args.model and "." not in args.pretrained:
        raise UserError(f"--pretrained {args.pretrained} needs --model NAME (or pass NAME.{args.pretrained})")
    return Classifier.from_pretrained(args.model or args.pretrained, args.pretrained, **kw)


def add_arguments(p: argparse.ArgumentParser, command: str = "predict") -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, directories (searched recursively), globs")
    add_weights_arguments(p)
    p.add_argument("--topk", type=int, default=5, help="how many classes to print per image (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of one line per image")
    p.add_argument("--batch-size", type=int, default=32)


def run(args: argparse.Namespace) -> int:
    clf = classifier_from_args(args, fold=not args.no_fold)
    clf.batch_size = max(1, args.batch_size)
    paths = expand_paths(args.paths)
    print(f"convnext predict: {clf.describe()}", file=sys.stderr, flush=True)
    results = []
    for pred in clf.iter_predict(paths, args.topk):
        results.append(pred)
        if not args.json:
            text = f"error: {pred.error}" if pred.error else " | ".join(f"{l.name} {l.prob:.2%}" for l in pred.top)
            print(f"{pred.source}: {text}", flush=True)
    if args.json:
        doc = {"model": clf.arch, "weights": clf.source, "folded": clf.folded,
               "preprocessing": asdict(clf.preprocessing), "results": [r.to_dict() for r in results]}
        print(json.dumps(doc, indent=2))
    failed = sum(r.error is not None for r in results)
    if failed:
        print(f"convnext predict: {failed} of {len(results)} inputs could not be classified", file=sys.stderr)
        return 1
    return 0
