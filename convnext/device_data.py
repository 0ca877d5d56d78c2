"""data.pipeline=gpu: the DataLoader workers only read files; this process decodes and augments each batch on the
device, so that the host's cores no longer set the pace (benchmarks/results/gpu_train_h100.json: PIL and timm in 15
workers deliver ~2,200 img/s, compiled ConvNeXt-T trains at ~3,700 img/s on the H100).

Two halves, which convnext/data.py's DeviceImageFolderData joins (it subclasses ImageFolderData, so the files, the
order of every epoch, the shards and the per-image seeds are the PIL pipeline's):
- `FileBytes`, the workers' dataset: (a 1-D uint8 tensor of the file's bytes, label, path, read error or None);
- `DeviceBatches`, in this process: a batch of bytes -> decoded on the device (nvJPEG for JPEGs on a GPU), augmented
  by the paper's training transform or the eval transform (convnext/device_transforms.py), normalised: (x, y) on the
  device, with the unreadable files as (path, reason) for convnext.data.check_bad_files.

The device is the one torchrun's LOCAL_RANK names on a CUDA machine, else the CPU: convnext.distributed.setup's rule,
which the engine has already applied (calling it again joins nothing and only reads the device).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from convnext import distributed
from convnext.device_transforms import EvalTransform, TrainTransform, decode_batch
from convnext.preprocessing import Preprocessing


class FileBytes(Dataset):
    """(path, label) samples read as raw bytes; a key is (sample index, seed), as ImageFolderData's are."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        path, label = self.samples[key[0]]
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            return None, label, path, f"{type(e).__name__}: {e}"
        if not raw:
            return None, label, path, "the file is empty"
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8), label, path, None


def collate_bytes(items):
    """Lists of bytes (None where unreadable), paths and read errors; the labels as one tensor."""
    data, labels, paths, errors = zip(*items)
    return list(data), torch.tensor(labels), list(paths), list(errors)


class DeviceBatches:
    """A batch of file bytes -> (x, y) on the device: decoded, augmented (training) or resized and cropped
    (evaluation), normalised; `train_reference` is the PIL pipeline's training transform, which the device one copies
    its settings from (None: evaluation only)."""

    def __init__(self, train_reference, pre: Preprocessing, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else distributed.setup().device
        self.train = TrainTransform(train_reference) if train_reference is not None else None
        self.eval = EvalTransform(pre)

    def __call__(self, batch, seeds: list[int], train: bool):
        """(x, y, bad): the decodable images' normalised (N, 3, S, S) float batch and labels on the device (None, None
        when none is), and (path, reason) of the others, in batch order."""
        data, labels, paths, errors = batch
        readable = [k for k, err in enumerate(errors) if err is None]
        images, undecodable = decode_batch([data[k] for k in readable], self.device, [paths[k] for k in readable])
        decoded, reasons = dict(zip(readable, images)), iter(undecodable)
        bad = [(paths[k], errors[k]) if errors[k] is not None else next(reasons)
               for k in range(len(paths)) if errors[k] is not None or decoded[k] is None]
        keep = [k for k in readable if decoded[k] is not None]
        images = [decoded[k] for k in keep]
        if not keep:
            return None, None, bad
        x = self.train(images, [seeds[k] for k in keep]) if train else self.eval(images)
        return x, labels[keep].to(self.device, non_blocking=True), bad
