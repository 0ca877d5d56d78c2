"""Data sources for classification, and a sampler that makes every run resumable (transforms: transforms.py).

Three data sources with one interface (`Data`):
- `ImageFolderData`: the ImageNet layout (root/train/<class>/*, root/val/<class>/*), decoded by PIL in
  DataLoader workers, with timm's training transform (what the paper used) and the official eval transform.
  `DeviceImageFolderData` (data.pipeline=gpu) reads the same files in the same order, but its workers only read
  bytes: this process decodes and augments each batch on the device (device_data.py, device_transforms.py).
- `TensorData`: an in-memory set (the embedded Fashion-MNIST demo), augmented batch-wise with torch ops.
- `SyntheticData`: one fixed random batch, for timing the model and the training loop without a pipeline.

Determinism (needed for resume-equals-continuous and for 1-process == N-process tests): the order of an epoch
is a permutation seeded by (seed, epoch); optimizer step t, micro-batch m, rank r reads a fixed slice of it;
every sample's augmentation is seeded by (seed, epoch, position), whichever worker decodes it (seeding.py); the
engine seeds each step's own draws. So resuming at step t replays exactly what an uninterrupted run would have seen.
"""
from __future__ import annotations

import abc
import gzip
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from convnext.device_data import DeviceBatches, FileBytes, collate_bytes
from convnext.errors import UserError
from convnext.images import IMAGE_SUFFIXES
from convnext.labels import FASHION_MNIST
from convnext.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, default_crop_pct
from convnext.seeding import sample_seed, seed_everything
from convnext.transforms import eval_transform, train_transform

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
PIPELINES = ("pil", "gpu")  # data.pipeline: where image folders are decoded and augmented (config.py)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(sample_seed(seed, epoch, 0))
    return torch.randperm(n, generator=g)


def micro_batch_slices(step_range: range, accum: int, world: int, rank: int, batch: int):
    """Global positions read by `rank` for each micro-batch of each optimizer step in `step_range`."""
    for t in step_range:
        for m in range(accum):
            start = ((t * accum + m) * world + rank) * batch
            yield t, m, slice(start, start + batch)


# ---------------------------------------------------------------------------------------------- data sources


class Data(abc.ABC):
    """What the trainer and evaluator need from a data source."""

    num_classes: int
    class_names: list[str]
    num_train: int
    num_eval: int
    preprocessing: Preprocessing
    skipped: int = 0

    @abc.abstractmethod
    def train_batches(self, epoch: int, steps: range, accum: int, world: int, rank: int) -> Iterator:
        """(x, y) micro-batches of this rank for the optimizer steps in `steps` of `epoch`."""

    @abc.abstractmethod
    def eval_batches(self, world: int, rank: int, limit: int = 0) -> Iterator:
        """(x, y) batches of this rank's shard of the evaluation set (rank::world, nothing counted twice);
        `limit` > 0: of a fixed random subset of that many evaluation images (the same in every call)."""


def _read_idx(path: Path) -> np.ndarray:
    """An MNIST-style idx file (gzipped or not) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise UserError(f"{path} is truncated: expected {math.prod(shape)} values, found {data.size}")
    return data.reshape(shape)


def load_fashion_mnist(root: Path = FASHION_MNIST_DIR):
    root = Path(root)
    files = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        for kind in ("images", "labels"):
            stem = f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
            path = next((p for p in (root / f"{stem}.gz", root / stem) if p.exists()), None)
            if path is None:
                raise UserError(
                    f"Fashion-MNIST not found in {root}: install it with `apt-get install dataset-fashion-mnist` "
                    f"(or `make setup`), or set data.root to a folder holding the four idx files"
                )
            files[split, kind] = _read_idx(path)

    def pair(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(files[name, "images"].copy()), torch.from_numpy(files[name, "labels"].astype(np.int64))

    return (*pair("train"), *pair("test"))


class TensorData(Data):
    """An in-memory uint8 image set (N, H, W) or (N, C, H, W), resized once to `img_size` (bicubic, the same
    resize-without-crop that prediction applies: crop_pct 1.0), then augmented per batch with torch ops:
    random translation by up to `shift` pixels and a horizontal flip. The demo's augmentation is deliberately
    light: a 2-core, 10-minute budget is far from the paper's 300 epochs."""

    def __init__(self, x_train, y_train, x_eval, y_eval, class_names, img_size, mean, std, batch_size,
                 shift: int = 2, hflip: float = 0.5, seed: int = 0):
        self.x_train, self.y_train = self._resize(self._nchw(x_train), img_size), y_train
        self.x_eval, self.y_eval = self._resize(self._nchw(x_eval), img_size), y_eval
        self.class_names, self.num_classes = list(class_names), len(class_names)
        self.num_train, self.num_eval = len(self.y_train), len(self.y_eval)
        self.batch_size, self.shift, self.hflip, self.seed = batch_size, shift, hflip, seed
        c = self.x_train.shape[1]
        self.preprocessing = Preprocessing(img_size, tuple(mean), tuple(std), 1.0, c)
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std).view(1, -1, 1, 1) * 255

    @staticmethod
    def _nchw(x):
        return x[:, None] if x.ndim == 3 else x

    @staticmethod
    def _resize(x, size: int):
        if x.shape[-2:] == (size, size):
            return x
        out = torch.empty(x.shape[:2] + (size, size), dtype=torch.uint8)
        for i in range(0, len(x), 4096):  # in chunks: the float copy of all of it would be large
            chunk = torch.nn.functional.interpolate(x[i: i + 4096].float(), size=(size, size), mode="bicubic",
                                                    align_corners=False)
            out[i: i + 4096] = chunk.round_().clamp_(0, 255).to(torch.uint8)
        return out

    def _normalize(self, x):
        return (x.float() - self.mean) / self.std

    def _augment(self, x, g: torch.Generator):
        n = x.shape[0]
        s = self.shift
        if s:
            padded = torch.nn.functional.pad(x, (s, s, s, s))
            dy = torch.randint(0, 2 * s + 1, (n,), generator=g)
            dx = torch.randint(0, 2 * s + 1, (n,), generator=g)
            h, w = x.shape[-2:]
            rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * s)
            x = padded.gather(2, rows)
            cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, x.shape[1], h, w)
            x = x.gather(3, cols)
        if self.hflip:
            flip = torch.rand(n, generator=g) < self.hflip
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def train_batches(self, epoch, steps, accum, world, rank):
        perm = epoch_permutation(self.num_train, self.seed, epoch)
        for t, m, sl in micro_batch_slices(steps, accum, world, rank, self.batch_size):
            idx = perm[sl]
            g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, sl.start))
            x = self._augment(self.x_train[idx], g)
            yield self._normalize(x), self.y_train[idx]

    def eval_batches(self, world, rank, limit=0):
        idx_all = subset_indices(self.num_eval, limit)[rank::world]  # a shard per rank, nothing counted twice
        for i in range(0, len(idx_all), self.batch_size * 2):
            idx = idx_all[i: i + self.batch_size * 2]
            yield self._normalize(self.x_eval[idx]), self.y_eval[idx]


def subset_indices(n: int, limit: int) -> torch.Tensor:
    """All n indices, or the fixed random subset of `limit` of them, sorted (seed 0, whatever the run's seed):
    what data.limit_train, data.limit_eval and evaluation subsets mean, in every task."""
    keep = _subset(n, limit)
    return torch.arange(n)[keep] if isinstance(keep, slice) else keep


def _subset(n: int, limit: int) -> torch.Tensor | slice:
    """A fixed random subset (seed 0, whatever the run's seed) of `limit` of n indices; all when limit is 0."""
    if not limit or limit >= n:
        return slice(None)
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:limit].sort().values


def _take(items: list, limit: int) -> list:
    keep = _subset(len(items), limit)
    return items[keep] if isinstance(keep, slice) else [items[i] for i in keep.tolist()]


def fashion_mnist(cfg, seed: int = 0, root: str | Path | None = None) -> TensorData:
    xt, yt, xe, ye = load_fashion_mnist(Path(root) if root else FASHION_MNIST_DIR)
    keep, keep_eval = _subset(len(yt), cfg.limit_train), _subset(len(ye), cfg.limit_eval)
    xt, yt, xe, ye = xt[keep], yt[keep], xe[keep_eval], ye[keep_eval]
    return TensorData(xt, yt, xe, ye, FASHION_MNIST, cfg.img_size, FASHION_MNIST_MEAN, FASHION_MNIST_STD,
                      cfg.batch_size, shift=cfg.shift, hflip=cfg.hflip, seed=seed)


def scan_folder(root: Path, split: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(path, label)]) of root/split/<class>/*, with people-readable errors."""
    d = root / split
    if not d.is_dir():
        raise UserError(f"{d} does not exist: the data directory must hold train/ and val/, each with one "
                        f"sub-folder of images per class (the ImageNet layout)")
    classes = sorted(p.name for p in d.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"{d} has no class sub-folders: put each class's images in {d}/<class name>/")
    samples = []
    for label, c in enumerate(classes):
        for p in sorted((d / c).rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                samples.append((str(p), label))
    if not samples:
        raise UserError(f"{d} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    return classes, samples


def open_rgb(path: str):
    """The training/evaluation loader of the official code (torchvision's default): PIL, convert("RGB")."""
    with Image.open(path) as img:
        return img.convert("RGB")


class _Files(Dataset):
    """(path, label) samples; an index is (position in the epoch, sample index, seed), so that augmentation
    is seeded per sample. A file PIL cannot read comes back as None, for the main process to report."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        i, seed = key
        path, label = self.samples[i]
        try:
            img = open_rgb(path)
        except Exception as e:  # any decoder error: report the file, never crash a worker  # noqa: BLE001
            return None, path, f"{type(e).__name__}: {e}"
        seed_everything(seed)
        return self.transform(img), label, None


def _collate(items):
    good = [(x, y) for x, y, err in items if err is None]
    bad = [(path, err) for _, path, err in items if err is not None]
    if good:
        x = torch.stack([g[0] for g in good])
        y = torch.tensor([g[1] for g in good])
    else:
        x = y = None
    return x, y, bad


def load_files(dataset: Dataset, batches: list, collate, workers: int) -> DataLoader:
    """A loader of `batches` (lists of dataset keys) decoded in `workers` processes (0: in this one)."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False)


def check_bad_files(bad: list[tuple[str, str]], skip: bool) -> int:
    """The rule for unreadable files, in every task: a UserError naming the first of `bad` ((path, reason) pairs),
    or, with data.skip_bad_images (`skip`), how many to add to the count of skipped files."""
    if bad and not skip:
        path, err = bad[0]
        raise UserError(f"cannot read image {path} ({err}); fix or remove it, or pass "
                        f"data.skip_bad_images=true to skip and count unreadable files")
    return len(bad)


class ImageFolderData(Data):
    def __init__(self, cfg, seed: int = 0, train: bool = True):
        root = Path(cfg.root)
        if not cfg.root or not root.is_dir():
            raise UserError(f"data directory {cfg.root!r} does not exist (set data.root=PATH)")
        self.cfg, self.seed = cfg, seed
        val_classes, self.val = scan_folder(root, "val")
        if train:
            self.class_names, self.train = scan_folder(root, "train")
            self.train = _take(self.train, cfg.limit_train)
            if val_classes != self.class_names:
                raise UserError(f"{root}/train and {root}/val have different class folders "
                                f"({len(self.class_names)} vs {len(val_classes)} classes)")
        else:
            self.class_names, self.train = val_classes, []
        self.val = _take(self.val, cfg.limit_eval)
        self.num_classes = len(self.class_names)
        self.num_train, self.num_eval = len(self.train), len(self.val)
        crop = default_crop_pct(cfg.img_size) if cfg.crop_pct is None else cfg.crop_pct
        self.preprocessing = Preprocessing(cfg.img_size, IMAGENET_MEAN, IMAGENET_STD, crop, 3)
        self.skipped = 0
        self._train_tf = train_transform(cfg) if train else None
        self._eval_tf = eval_transform(cfg.img_size, IMAGENET_MEAN, IMAGENET_STD, crop)

    def train_batches(self, epoch, steps, accum, world, rank):
        perm = epoch_permutation(self.num_train, self.seed, epoch).tolist()
        batches = [[(perm[p], sample_seed(self.seed, epoch, p)) for p in range(sl.start, sl.stop)]
                   for _, _, sl in micro_batch_slices(steps, accum, world, rank, self.cfg.batch_size)]
        yield from self._load(self.train, batches, train=True)

    def eval_batches(self, world, rank, limit=0):
        idx = subset_indices(self.num_eval, limit)[rank::world].tolist()
        bs = max(1, int(self.cfg.batch_size * 1.5))  # the official val batch is 1.5 x the training batch
        batches = [[(i, 0) for i in idx[j: j + bs]] for j in range(0, len(idx), bs)]
        yield from self._load(self.val, batches, train=False)

    def _load(self, samples, batches, train: bool):
        """(x, y) of each batch of (sample index, seed) keys, decoded and transformed by PIL in the workers."""
        tf = self._train_tf if train else self._eval_tf
        for x, y, bad in load_files(_Files(samples, tf), batches, _collate, self.cfg.workers):
            self.skipped += check_bad_files(bad, self.cfg.skip_bad_images)
            if x is not None:
                yield x, y


class DeviceImageFolderData(ImageFolderData):
    """data.pipeline=gpu: ImageFolderData's files, order, shards and seeds; the workers only read each file's bytes,
    and this process decodes, augments and normalises the batch on the device (convnext/device_data.py), yielding
    device tensors. The augmentation is the paper's, with the PIL pipeline's settings and distributions, not its
    random streams (convnext/device_transforms.py)."""

    def __init__(self, cfg, seed: int = 0, train: bool = True):
        super().__init__(cfg, seed, train)
        self.device_batches = DeviceBatches(self._train_tf, self.preprocessing)

    def _load(self, samples, batches, train: bool):
        loader = load_files(FileBytes(samples), batches, collate_bytes, self.cfg.workers)
        for keys, raw in zip(batches, loader):  # the loader keeps the batches' order
            x, y, bad = self.device_batches(raw, [seed for _, seed in keys], train)
            self.skipped += check_bad_files(bad, self.cfg.skip_bad_images)
            if x is not None:
                yield x, y


class SyntheticData(Data):
    """Random images, no pipeline: for timing the model and the loop alone (`data.dataset=synthetic`).

    One fixed batch of N(0, 1) images (pinned when CUDA is present, as a DataLoader with pin_memory hands them
    over) is yielded for every micro-batch, so the trainer's own cost is all that is added to the model's.
    ImageNet-1K sized by default (1,281,167 train / 50,000 eval images, 1,000 classes); data.limit_train and
    data.limit_eval shrink it, `num_classes` changes the class count."""

    def __init__(self, cfg, seed: int = 0, in_chans: int = 3, num_classes: int = 1000):
        g = torch.Generator().manual_seed(seed)
        b, s = cfg.batch_size, cfg.img_size
        self.x = torch.randn(b, in_chans, s, s, generator=g)
        self.y = torch.randint(0, num_classes, (b,), generator=g)
        if torch.cuda.is_available():
            self.x, self.y = self.x.pin_memory(), self.y.pin_memory()
        self.num_classes, self.class_names = num_classes, [f"class_{i}" for i in range(num_classes)]
        self.num_train, self.num_eval = cfg.limit_train or 1_281_167, cfg.limit_eval or 50_000
        self.preprocessing = Preprocessing(s, IMAGENET_MEAN[:in_chans], IMAGENET_STD[:in_chans], 1.0, in_chans)

    def train_batches(self, epoch, steps, accum, world, rank):
        for _ in micro_batch_slices(steps, accum, world, rank, len(self.y)):
            yield self.x, self.y

    def eval_batches(self, world, rank, limit=0):
        n = len(range(rank, min(self.num_eval, limit or self.num_eval), world))
        for i in range(0, n, len(self.y)):
            yield self.x[: n - i], self.y[: n - i]


def build_data(cfg, seed: int = 0, train: bool = True, in_chans: int = 3) -> Data:
    if cfg.pipeline not in PIPELINES:
        raise UserError(f"unknown data.pipeline {cfg.pipeline!r}; choose {' or '.join(PIPELINES)}")
    if cfg.pipeline == "gpu" and cfg.dataset in ("fashion_mnist", "synthetic"):
        raise UserError(f"data.pipeline=gpu decodes image folders (data.dataset=imagefolder); {cfg.dataset} has no "
                        f"files to decode, so leave data.pipeline=pil")
    if cfg.dataset == "fashion_mnist":
        return fashion_mnist(cfg, seed, cfg.root or None)
    if cfg.dataset == "imagefolder":
        return (DeviceImageFolderData if cfg.pipeline == "gpu" else ImageFolderData)(cfg, seed, train)
    if cfg.dataset == "synthetic":
        return SyntheticData(cfg, seed, in_chans)
    raise UserError(f"unknown data.dataset {cfg.dataset!r}; choose imagefolder, fashion_mnist or synthetic")
