"""Robustness evaluation (paper §5.3, Table 8): top-1 on ImageNet-A, -R and -Sketch, mCE and relative mCE on
ImageNet-C, mean top-1 error on ImageNet-C-bar, each read from its released folder layout (convnext/robustness_sets.py).

What is not obvious:
- ImageNet-A and -R have 200 classes: the prediction is the argmax of the 1,000 logits restricted to those 200, as
  the sets' own code scores them (hendrycks/natural-adv-examples eval.py, hendrycks/imagenet-r eval.py).
- A label is the ImageNet-1K index of its folder's WordNet ID, not the folder's rank in a listing, so a set with
  classes missing is still scored right, and a folder that is no class of the named set is refused.
- Preprocessing: A, R, Sketch and clean ImageNet val go through the ImageNet evaluation's transform (resize to
  size / crop_pct, centre crop; convnext/transforms.py). ImageNet-C and -C-bar images are already 224 x 224 centre
  crops (their generators resize to 256 and crop 224 before corrupting), so they are resized to size x size without
  a crop: at 224 that leaves them as they are (torchvision returns an image of the asked size unchanged), as
  hendrycks/robustness ImageNet-C/test.py and RVT's main.py (centre crop 224 only) do; at 384 it upsamples them.
- Errors are per (corruption, severity) folder and averaged over folders, as the official code does (each released
  folder holds the same 50,000 images). CE_c = sum_s E_{s,c} / sum_s E^AlexNet_{s,c}; relative
  CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^AlexNet_{s,c} - E^AlexNet_clean); mCE is their mean over the 15.
- Distributed like convnext/evaluate.py: all images of a suite in one list, each process reads rank::world of it,
  and the counts (per folder and per class) are summed over processes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from convnext.data import load_files, open_rgb
from convnext.distributed import all_sum
from convnext.errors import UserError
from convnext.images import IMAGE_SUFFIXES
from convnext.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from convnext.robustness_sets import (ALEXNET_CLEAN_ERR, ALEXNET_ERR, IMAGENET_C, IMAGENET_C_BAR, SEVERITIES,
                                      SUITES, imagenet_1k_wnids, subset_wnids)
from convnext.runtime import Runtime
from convnext.transforms import eval_transform

CORRUPTIONS = {"imagenet-c": tuple(IMAGENET_C), "imagenet-c-bar": IMAGENET_C_BAR}


@dataclass
class SuiteImages:
    """A suite's images: (path, ImageNet-1K label, folder index) each; `folders` names the (corruption, severity)
    folders ("all" for a set without corruptions); `classes`, the 1K indices the logits are restricted to."""

    suite: str
    folders: list[str]
    samples: list[tuple[str, int, int]]
    classes: tuple[int, ...]
    ignored: tuple[str, ...] = ()


def _class_folders(d: Path, allowed: dict[str, int], title: str, layout: str) -> list[tuple[str, int]]:
    """(path, 1K label) of every image in d/<wnid>/, refusing a folder that is not one of the set's classes."""
    subdirs = sorted(e.name for e in os.scandir(d) if e.is_dir())
    if not subdirs:
        raise UserError(f"{d} has no class folders: {title}'s layout is {layout}")
    for name in subdirs:
        if name not in allowed:
            raise UserError(f"{d} is not {title}'s layout: its folder {name!r} is not one of {title}'s "
                            f"{len(allowed)} classes (expected {layout})")
    return [(str(d / name / f), allowed[name]) for name in subdirs
            for f in sorted(e.name for e in os.scandir(d / name) if e.is_file())
            if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES]


def scan(suite: str, root: str | os.PathLike) -> SuiteImages:
    """A suite's images from its released layout at `root` (SUITES); "imagenet" is the clean ImageNet val
    (root/val/<wnid>/*), scored like ImageNet-Sketch. Any other layout gives one sentence saying what was expected."""
    title, layout = SUITES.get(suite, ("ImageNet", "DIR/val/<wnid>/*.JPEG"))
    root = Path(root)
    d = root / "val" if suite == "imagenet" else root
    if not d.is_dir():
        raise UserError(f"{d} does not exist: {title}'s layout is {layout}")
    index = {w: i for i, w in enumerate(imagenet_1k_wnids())}
    classes = tuple(index[w] for w in subset_wnids(suite))
    allowed = {w: index[w] for w in subset_wnids(suite)}
    if suite not in CORRUPTIONS:
        samples = [(p, y, 0) for p, y in _class_folders(d, allowed, title, layout)]
        folders, ignored = ["all"], ()
        if not samples:
            raise UserError(f"{d} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    else:
        names = CORRUPTIONS[suite]
        present = {e.name for e in os.scandir(d) if e.is_dir()}
        missing = [c for c in names if c not in present]
        if len(missing) == len(names):
            raise UserError(f"{d} is not {title}'s layout: none of its {len(names)} corruption folders ({names[0]}, "
                            f"..., {names[-1]}) is there (expected {layout})")
        if missing:
            raise UserError(f"{d} lacks {title}'s corruption folders {', '.join(missing)}: the set needs all "
                            f"{len(names)} (expected {layout})")
        folders, samples = [], []
        for c in names:
            for s in SEVERITIES:
                if not (d / c / s).is_dir():
                    raise UserError(f"{d / c} has no severity folder {s}: {title}'s layout is {layout}")
                found = _class_folders(d / c / s, allowed, title, layout)
                if not found:
                    raise UserError(f"{d / c / s} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
                samples += [(p, y, len(folders)) for p, y in found]
                folders.append(f"{c}/{s}")
        ignored = tuple(sorted(present - set(names)))  # e.g. ImageNet-C's 4 extra corruptions, not in the mCE
    return SuiteImages(suite, folders, samples, classes, ignored)


class _Images(Dataset):
    """A suite's samples through `transform`; a file PIL cannot read comes back as its error, for the main
    process to report (as convnext/data.py does)."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label, folder = self.samples[i]
        try:
            return self.transform(open_rgb(path)), label, folder, None
        except Exception as e:  # any decoder error: report the file, never crash a worker  # noqa: BLE001
            return None, label, folder, f"cannot read image {path} ({type(e).__name__}: {e}); fix or remove it"


def _collate(items):
    bad = [err for *_, err in items if err is not None]
    if bad:
        return None, None, None, bad[0]
    x, y, f, _ = zip(*items)
    return torch.stack(x), torch.tensor(y), torch.tensor(f), None


def transform_for(suite: str, img_size: int, crop_pct: float | None = None):
    """The corruption sets' images are 224 crops already: resize only (module docstring); the others, the ImageNet
    evaluation's transform at `crop_pct` (None: 0.875 below 384, 1.0 from 384)."""
    crop = 1.0 if suite in CORRUPTIONS else crop_pct
    return eval_transform(img_size, IMAGENET_MEAN, IMAGENET_STD, crop)


@torch.no_grad()
def count(model: nn.Module, images: SuiteImages, rt: Runtime, transform, batch_size: int = 64,
          workers: int = 0) -> dict:
    """Images and correct top-1 predictions per folder and per ImageNet-1K class, summed over processes."""
    model.eval()
    mine = list(range(len(images.samples)))[rt.dist.rank::rt.dist.world]  # a shard per rank, nothing counted twice
    batches = [mine[i: i + batch_size] for i in range(0, len(mine), batch_size)]
    nf, restrict = len(images.folders), torch.tensor(images.classes)
    per = torch.zeros(2, nf + 1000, dtype=torch.float64)  # rows: images, correct; columns: folders, then classes
    for x, y, f, err in load_files(_Images(images.samples, transform), batches, _collate, workers):
        if err is not None:
            raise UserError(err)
        with rt.autocast():
            logits = model(rt.images(x)).float().cpu()
        pred = restrict[logits[:, restrict].argmax(1)]  # the argmax over the set's classes, as a 1K index
        hit = (pred == y).double()
        for row, w in ((0, torch.ones_like(hit)), (1, hit)):
            per[row, :nf] += torch.bincount(f, w, minlength=nf)
            per[row, nf:] += torch.bincount(y, w, minlength=1000)
    per = torch.tensor(all_sum(per.flatten().tolist(), rt.dist), dtype=torch.float64).view(2, -1)
    n, correct = per[0], per[1]
    return {"folders": {k: (int(n[i]), int(correct[i])) for i, k in enumerate(images.folders)},
            "classes": {w: (int(n[nf + i]), int(correct[nf + i])) for i, w in enumerate(imagenet_1k_wnids())
                        if n[nf + i] > 0}}


def mce(errors: dict[str, list[float]], clean_error: float | None = None) -> dict:
    """ImageNet-C's CE and relative CE per corruption and their means (%), from top-1 errors in % per corruption
    and severity: CE_c = sum_s E_sc / sum_s E^AlexNet_sc; relative, each error less the clean one (Hendrycks &
    Dietterich 2019, §3; AlexNet's errors from convnext/robustness_sets.py)."""
    if set(errors) != set(ALEXNET_ERR):
        raise UserError(f"the mCE needs ImageNet-C's 15 corruptions; got {', '.join(sorted(errors))}")
    ce = {c: sum(e) / len(e) / ALEXNET_ERR[c] for c, e in errors.items()}  # the sums are 5 x the means
    out = {"ce": ce, "mce": sum(ce.values()) / len(ce)}
    if clean_error is not None:
        rel = {c: (sum(e) / len(e) - clean_error) / (ALEXNET_ERR[c] - ALEXNET_CLEAN_ERR) for c, e in errors.items()}
        out.update(relative_ce=rel, relative_mce=sum(rel.values()) / len(rel), clean_error=clean_error)
    return out


def summarize(images: SuiteImages, counts: dict, clean_error: float | None = None) -> dict:
    """The suite's numbers (%): top-1 and per-class top-1; or the error per corruption and severity, its mean per
    corruption and overall, and for ImageNet-C the mCE (and the relative mCE given the clean error)."""
    n_all = sum(n for n, _ in counts["folders"].values())
    r = {"suite": images.suite, "set": SUITES.get(images.suite, ("ImageNet val",))[0], "images": n_all}
    if images.suite not in CORRUPTIONS:
        n, c = counts["folders"]["all"]
        per_class = {w: {"images": k, "top1": 100 * h / k} for w, (k, h) in counts["classes"].items()}
        return {**r, "top1": 100 * c / n, "error": 100 - 100 * c / n, "per_class": per_class}
    err: dict[str, list[float]] = {}
    for key, (n, c) in counts["folders"].items():
        err.setdefault(key.split("/")[0], []).append(100 - 100 * c / n)
    r.update(errors=err, mean_error={c: sum(e) / len(e) for c, e in err.items()},
             error=sum(map(sum, err.values())) / sum(map(len, err.values())), ignored=list(images.ignored))
    if images.suite == "imagenet-c":
        r.update(mce(err, clean_error), alexnet_err=ALEXNET_ERR, alexnet_clean_err=ALEXNET_CLEAN_ERR)
    return r


def evaluate_suite(model: nn.Module, suite: str, root, rt: Runtime, *, img_size: int = 224,
                   crop_pct: float | None = None, batch_size: int = 64, workers: int = 0,
                   clean_error: float | None = None) -> dict:
    """scan -> count -> summarize: a suite's numbers for `model` (a 1,000-class ImageNet classifier)."""
    if getattr(model, "num_classes", 1000) != 1000:
        raise UserError(f"the robustness sets are scored on ImageNet-1K's classes, but the model has "
                        f"{model.num_classes} outputs")
    images = scan(suite, root)
    counts = count(model, images, rt, transform_for(suite, img_size, crop_pct), batch_size, workers)
    return summarize(images, counts, clean_error)


def table(r: dict, paper: float | None = None) -> str:
    """The result as the lines to print; `paper`: Table 8's number for these weights, shown beside ours."""
    ref = f" (paper Table 8: {paper:.1f})" if paper is not None else ""
    if "errors" not in r:
        return f"{r['set']}: top-1 {r['top1']:.2f}%{ref} over {r['images']} images in {len(r['per_class'])} classes"
    rel = "relative_ce" in r
    lines = [f"{r['set']}: top-1 error (%) per severity" + (", CE and relative CE vs AlexNet (%)" if rel else
             ", CE vs AlexNet (%)" if "ce" in r else ""),
             f"{'corruption':27s}" + "".join(f"{'s' + s:>7s}" for s in SEVERITIES) + f"{'mean':>8s}"
             + (f"{'CE':>8s}" if "ce" in r else "") + (f"{'rel.CE':>8s}" if rel else "")]
    for c, e in r["errors"].items():
        name = f"{IMAGENET_C[c]}/{c}" if c in IMAGENET_C else c
        lines.append(f"{name:27s}" + "".join(f"{x:7.1f}" for x in e) + f"{r['mean_error'][c]:8.1f}"
                     + (f"{r['ce'][c]:8.1f}" if "ce" in r else "") + (f"{r['relative_ce'][c]:8.1f}" if rel else ""))
    if "mce" in r:
        lines.append(f"mCE {r['mce']:.1f}%{ref}" + (f", relative mCE {r['relative_mce']:.1f}% (clean error "
                                                    f"{r['clean_error']:.2f}%)" if rel else "")
                     + f"; mean error {r['error']:.2f}% over {r['images']} images")
    else:
        lines.append(f"mean error {r['error']:.2f}%{ref} over {r['images']} images")
    if r["ignored"]:
        lines.append(f"not part of the set, not evaluated: {', '.join(r['ignored'])}")
    return "\n".join(lines)


def plot(r: dict, path: str | os.PathLike) -> None:
    """The chart of a result: error per corruption and severity as a heatmap, or the per-class top-1, sorted."""
    import matplotlib  # heavy (~0.3 s), and only the chart needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "errors" in r:
        names = list(r["errors"])
        grid = [r["errors"][c] for c in names]
        fig, ax = plt.subplots(figsize=(7, 0.4 * len(names) + 1.5))
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="w" if v < 60 else "k", fontsize=8)
        ax.set_xticks(range(len(SEVERITIES)), [f"severity {s}" for s in SEVERITIES])
        ax.set_yticks(range(len(names)), names)
        fig.colorbar(im, label="top-1 error (%)")
        title = f"mCE {r['mce']:.1f}%" if "mce" in r else f"mean error {r['error']:.1f}%"
        ax.set_title(f"{r['set']}: {title}")
    else:
        acc = sorted((v["top1"] for v in r["per_class"].values()), reverse=True)
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot(range(1, len(acc) + 1), acc, ".-")
        ax.axhline(r["top1"], color="k", ls="--", label=f"top-1 over all images {r['top1']:.1f}%")
        ax.set_ylim(-2, 102), ax.set_xlabel("class, best first"), ax.set_ylabel("top-1 (%)"), ax.legend()
        ax.set_title(f"{r['set']}: per-class top-1")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
