"""FCMAE pre-training on the engine (task "fcmae"): images without labels, the masked loss, a held-out loss.

    convnext train --config fcmae:base --data /data/imagenet --out runs/fcmae_b    # TRAINING.md's V2-B (64 GPUs)
    convnext train --config fcmae_demo --out runs/fcmae_demo                        # Fashion-MNIST, 2-core CPU

The task supplies:
- data: the training images alone, with the official pre-training augmentation (main_pretrain.py):
  RandomResizedCrop (`data.scale`, (0.2, 1) in the configs; bicubic) and a horizontal flip, nothing else. From
  an image folder (root/train, root/val in the ImageNet layout; the class folders are walked, their labels
  unused) or Fashion-MNIST's images in memory (the demo: cropped and resized with torch ops, each image seeded
  by (seed, epoch, position) like every sample of the engine's data); data.dataset=synthetic for timing.
- model: `convnext.fcmae.FCMAE` of the encoder `model.name`; `model.init` continues from an FCMAE checkpoint
  (one of ours, or an official one).
- loss: FCMAE's; the masks come from torch's generator, which the engine seeds per step, so a resumed run
  draws the masks the uninterrupted run drew.
- evaluation: `eval_loss`, the mean loss on removed patches of held-out images (the val folder, the test
  set), each image with one fixed mask (seeded by its index), so that evaluations compare; lower is better.
  The official code does not evaluate during pre-training.
- after each full evaluation: reconstructions.png (held-out images: the input, what the encoder sees, the
  prediction with the visible patches pasted back) and encoder.pt (`convnext.fcmae.save_encoder`: the encoder
  as ConvNeXt V2 classifier weights, for fine-tuning with `model.init=RUN/encoder.pt`).
The optimizer is the engine's default, main_pretrain.py's groups (timm's add_weight_decay: no decay on 1-D
parameters and biases; GRN's gamma/beta and the mask token are decayed there, as here).
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from convnext import engine
from convnext.checkpoint import atomic_write
from convnext.config import Config
from convnext.data import (FASHION_MNIST_DIR, FASHION_MNIST_MEAN, FASHION_MNIST_STD, ImageFolderData, SyntheticData,
                           epoch_permutation, load_fashion_mnist, micro_batch_slices, subset_indices)
from convnext.distributed import all_sum
from convnext.errors import UserError
from convnext.fcmae import FCMAE, load_fcmae_weights, random_mask, save_encoder
from convnext.preprocessing import Preprocessing
from convnext.runtime import Runtime
from convnext.seeding import sample_seed

EVAL_MASK_SEED = 1_000_003  # held-out image i is always masked by the generator seeded with this + i
RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's aspect-ratio range (torchvision's default, main_pretrain.py's)


class Unlabelled:
    """A labelled data source (convnext/data.py) with its labels dropped: images alone for training, (indices in
    the evaluation set, images) for evaluation."""

    def __init__(self, inner):
        self.inner, self.num_train, self.num_eval = inner, inner.num_train, inner.num_eval
        self.preprocessing = inner.preprocessing

    @property
    def skipped(self) -> int:
        return self.inner.skipped

    def train_batches(self, epoch, steps, accum, world, rank):
        for x, _ in self.inner.train_batches(epoch, steps, accum, world, rank):
            yield x

    def eval_batches(self, world: int, rank: int, limit: int = 0):
        idx, at = subset_indices(self.num_eval, limit)[rank::world], 0
        for x, _ in self.inner.eval_batches(world, rank, limit):
            yield idx[at: at + len(x)], x
            at += len(x)


def crop_box(h: int, w: int, scale: tuple[float, float], g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop: torchvision's RandomResizedCrop.get_params, drawn from `g`."""
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    for a, b, c, d in torch.rand(10, 4, generator=g).tolist():  # 10 tries, as torchvision
        area = h * w * (scale[0] + (scale[1] - scale[0]) * a)
        aspect = math.exp(log_lo + (log_hi - log_lo) * b)
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return int(c * (h - ch + 1)), int(d * (w - cw + 1)), ch, cw
    ch, cw = min(h, round(w / RATIO[0])), min(w, round(h * RATIO[1]))  # torchvision's fallback: a central crop
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class TensorImages:
    """uint8 images (N, C, H, W) in memory: the training ones cropped and resized per image (`crop_box`, torch's
    bicubic) and flipped; the held-out ones resized once to `img_size`, without a crop."""

    skipped = 0

    def __init__(self, train, held_out, img_size, mean, std, scale, hflip, batch_size, seed):
        self.train, self.img_size, self.scale, self.hflip = train, img_size, scale, hflip
        self.held_out = self._resize(held_out.float()).round_().clamp_(0, 255).to(torch.uint8)
        self.num_train, self.num_eval, self.batch_size, self.seed = len(train), len(held_out), batch_size, seed
        self.preprocessing = Preprocessing(img_size, tuple(mean), tuple(std), 1.0, train.shape[1])
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std).view(1, -1, 1, 1) * 255

    def _resize(self, x):
        return F.interpolate(x, size=(self.img_size, self.img_size), mode="bicubic", align_corners=False,
                             antialias=True)

    def _view(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        top, left, ch, cw = crop_box(img.shape[-2], img.shape[-1], self.scale, g)
        x = self._resize(img[None, :, top: top + ch, left: left + cw].float()).clamp_(0, 255)[0]
        return x.flip(-1) if torch.rand(1, generator=g).item() < self.hflip else x

    def train_batches(self, epoch, steps, accum, world, rank):
        perm, g = epoch_permutation(self.num_train, self.seed, epoch), torch.Generator()
        for _, _, sl in micro_batch_slices(steps, accum, world, rank, self.batch_size):
            views = [self._view(self.train[perm[p]], g.manual_seed(sample_seed(self.seed, epoch, p)))
                     for p in range(sl.start, sl.stop)]
            yield (torch.stack(views) - self.mean) / self.std

    def eval_batches(self, world: int, rank: int, limit: int = 0):
        idx_all = subset_indices(self.num_eval, limit)[rank::world]
        for i in range(0, len(idx_all), 2 * self.batch_size):
            idx = idx_all[i: i + 2 * self.batch_size]
            yield idx, (self.held_out[idx].float() - self.mean) / self.std


def build_images(cfg, seed: int, in_chans: int):
    """The pre-training data of `cfg` (DataConfig): an image folder (train/, and val/ held out), Fashion-MNIST
    (the 60,000 training images, the 10,000 test images held out), or synthetic images."""
    if cfg.dataset == "imagefolder":
        # main_pretrain.py's transform: timm's RandomResizedCrop (bicubic) and flip, without the classification
        # recipe's RandAugment, colour jitter and random erasing
        data = Unlabelled(ImageFolderData(replace(cfg, randaug="", color_jitter=0.0, reprob=0.0), seed))
    elif cfg.dataset == "synthetic":  # for timing: one fixed random batch (convnext/data.py)
        data = Unlabelled(SyntheticData(cfg, seed, in_chans))
    elif cfg.dataset == "fashion_mnist":
        xt, _, xe, _ = load_fashion_mnist(Path(cfg.root) if cfg.root else FASHION_MNIST_DIR)
        xt, xe = xt[subset_indices(len(xt), cfg.limit_train)], xe[subset_indices(len(xe), cfg.limit_eval)]
        data = TensorImages(xt[:, None], xe[:, None], cfg.img_size, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                            cfg.scale, cfg.hflip, cfg.batch_size, seed)
    else:
        raise UserError(f"FCMAE pre-trains on data.dataset=imagefolder, fashion_mnist or synthetic, "
                        f"not {cfg.dataset!r}")
    if data.preprocessing.in_chans != in_chans:
        raise UserError(f"the images have {data.preprocessing.in_chans} channels but model.in_chans is {in_chans}")
    return data


def fcmae_settings(cfg: Config) -> dict:
    """FCMAE's constructor arguments for a run's config (stored in every checkpoint's meta)."""
    m = cfg.model
    return {"encoder": m.name, "mask_ratio": m.mask_ratio, "patch_size": 32, "decoder_dim": m.decoder_dim,
            "decoder_depth": m.decoder_depth, "norm_pix_loss": m.norm_pix_loss, "img_size": cfg.data.img_size,
            "in_chans": m.in_chans, "drop_path_rate": m.drop_path}


def eval_masks(indices: torch.Tensor, num_patches: int, mask_ratio: float) -> torch.Tensor:
    """One fixed mask per held-out image, a function of its index alone (the same at every evaluation, on every
    number of processes)."""
    g = torch.Generator()
    return torch.cat([random_mask(1, num_patches, mask_ratio, g.manual_seed(EVAL_MASK_SEED + int(i)))
                      for i in indices])


class FCMAEPretraining(engine.Task):
    name = "fcmae"
    best_metric = "eval_loss"
    higher_is_better = False

    def __init__(self):
        self.settings: dict = {}

    def build_data(self, cfg: Config, seed: int):
        self.settings = fcmae_settings(cfg)
        return build_images(cfg.data, seed, cfg.model.in_chans)

    def build_model(self, cfg: Config, data, rt: Runtime) -> nn.Module:
        model = FCMAE(**self.settings)
        if cfg.model.init:  # continue pre-training from FCMAE weights, ours or official
            load_fcmae_weights(model, cfg.model.init, cfg.model.init_ema)
        return model

    def build_optimizer(self, model: nn.Module, cfg: Config, lr: float) -> torch.optim.Optimizer:
        if cfg.optim.layer_decay != 1.0:
            raise UserError("layer-wise lr decay is a fine-tuning setting; pre-training has none (optim.layer_decay=1)")
        return super().build_optimizer(model, cfg, lr)

    def loss(self, net: nn.Module, batch, rt: Runtime):
        loss, _, _ = net(rt.images(batch))
        return loss, {}

    def batch_size(self, batch) -> int:
        return len(batch)

    def evaluate(self, model: nn.Module, data, rt: Runtime, limit: int = 0) -> dict[str, float]:
        total = count = 0.0
        for idx, x in data.eval_batches(rt.dist.world, rt.dist.rank, limit):
            x = rt.images(x)
            h, w = model.grid(x)
            mask = eval_masks(idx, h * w, model.mask_ratio).to(rt.device)
            with rt.autocast():
                _, pred, _ = model(x, mask=mask)
            total += torch.where(mask.bool(), model.patch_loss(x, pred), 0).sum().item()
            count += mask.sum().item()
        total, count = all_sum([total, count], rt.dist)
        return {"eval_loss": total / count}

    def describe(self, data) -> str:
        return f"{data.num_train} train / {data.num_eval} held-out images, no labels"

    def meta(self, cfg: Config, data) -> dict:
        return {"arch": cfg.model.name, "fcmae": self.settings, "preprocessing": vars(data.preprocessing)}

    def check_resume(self, meta: dict, data, where: Path) -> None:
        old = meta.get("fcmae") or {}
        for key in ("encoder", "in_chans", "patch_size", "decoder_dim", "decoder_depth"):
            if old.get(key) != self.settings[key]:
                raise UserError(f"the checkpoint in {where} has {key}={old.get(key)!r} but the config asks for "
                                f"{self.settings[key]!r}")

    def write_artifacts(self, model: nn.Module, data, rt: Runtime, out: Path) -> None:
        save_reconstructions(model, data, rt, out / "reconstructions.png")
        save_encoder(model, out / "encoder.pt", {"preprocessing": vars(data.preprocessing)})


def save_reconstructions(model: FCMAE, data, rt: Runtime, path: Path, n: int = 8) -> Path:
    """A PNG of `n` held-out images (rows): the input, the input with removed patches blanked, the prediction
    with the visible patches pasted back; each image with its fixed evaluation mask."""
    import matplotlib  # heavy (~0.3 s), and only this picture needs it here
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx, x = next(iter(data.eval_batches(1, 0, n)))
    x = x[:n].to(rt.device)
    h, w = model.grid(x)
    mask = eval_masks(idx[:n], h * w, model.mask_ratio).to(rt.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        masked, pred = model.reconstruct(x, mask)
    model.train(was_training)
    mean = torch.tensor(data.preprocessing.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(data.preprocessing.std, device=x.device).view(1, -1, 1, 1)
    columns = {"input": x, "what the encoder sees": masked, "prediction": pred}
    # one image of n rows x 3 panels with 2 px white gaps, drawn once (24 axes cost ~4 s, one ~0.3 s)
    panels = torch.stack([(v.float() * std + mean).clamp(0, 1) for v in columns.values()], dim=1).cpu()
    n, _, c, hh, ww = panels.shape
    panels = F.pad(panels, (0, 2, 0, 2), value=1.0)  # (n, 3, C, H + 2, W + 2)
    grid = panels.permute(0, 3, 1, 4, 2).reshape(n * (hh + 2), 3 * (ww + 2), c)
    fig, ax = plt.subplots(figsize=(3 * (ww + 2) / 40 + 0.5, n * (hh + 2) / 40 + 0.5))
    ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([(ww + 2) * (j + 0.5) for j in range(3)], list(columns), fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=60))
    plt.close(fig)
    return path
