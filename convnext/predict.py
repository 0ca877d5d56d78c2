"""The `Classifier` API behind `convnext predict`: classify image files as people have them.

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

import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator, NamedTuple

import torch
from PIL import Image
from torch import nn

from convnext import labels
from convnext.errors import UserError
from convnext.factory import load_model
from convnext.fold import fold_for_inference
from convnext.images import load_image
from convnext.preprocessing import Preprocessing, from_cfg
from convnext.transforms import eval_transform

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


class Classifier:
    """A model, its preprocessing and its class names: `predict(paths or PIL images, topk)`."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing | None = None,
                 class_names: list[str] | None = None, *, fold: bool = True, device: str | torch.device = "cpu",
                 batch_size: int = 32, source: str = ""):
        if not getattr(model, "num_classes", 0):
            raise UserError("the model has no classifier head (num_classes=0): there is nothing to predict")
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.preprocessing = preprocessing or from_cfg(cfg, model.in_chans)
        p = self.preprocessing
        if not (len(p.mean) == len(p.std) == p.in_chans == model.in_chans):
            raise UserError(f"the preprocessing ({len(p.mean)} means, {len(p.std)} stds, in_chans {p.in_chans}) "
                            f"does not fit a model with {model.in_chans} input channels; pass a matching Preprocessing")
        self.class_names = labels.of_model(model, class_names)
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
        source = name if tag is None else (tag if "." in tag else f"{name.partition('.')[0]}.{tag}")
        model = load_model(source, name=source.partition(".")[0])
        return cls(model, source=model.pretrained_cfg["tag"], **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, name: str | None = None, *, ema: bool = False,
                        **kwargs) -> Classifier:
        """A checkpoint file (official, ours, timm's, safetensors); `name` when the file does not say it."""
        return cls(load_model(path, name=name, ema=ema), source=str(path), **kwargs)

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
