"""What the robustness sets of paper Table 8 are, as data: their names and released layouts, their classes, their
corruptions, AlexNet's published ImageNet-C errors (the mCE's normaliser) and the paper's Table 8 for our weights.
The evaluation itself is convnext/robustness.py.

Every list is the published one, read from the sets' own repositories (commits below); none is rebuilt here.
"""
from __future__ import annotations

import functools
from pathlib import Path

from timm.data import ImageNetInfo

# --suite name -> (what it is called, its released layout under --data)
SUITES: dict[str, tuple[str, str]] = {
    "imagenet-a": ("ImageNet-A", "DIR/<wnid>/*.jpg, 200 class folders"),
    "imagenet-r": ("ImageNet-R", "DIR/<wnid>/*.jpg, 200 class folders"),
    "imagenet-sketch": ("ImageNet-Sketch", "DIR/<wnid>/*.JPEG, 1000 class folders"),
    "imagenet-c": ("ImageNet-C", "DIR/<corruption>/<severity 1-5>/<wnid>/*.JPEG, 15 corruptions"),
    "imagenet-c-bar": ("ImageNet-C-bar", "DIR/<corruption>/<severity 1-5>/<wnid>/*.JPEG, 10 corruptions"),
}
SEVERITIES = ("1", "2", "3", "4", "5")  # the severity folders of both corruption sets

# ImageNet-C's 15 corruptions -> their group (Hendrycks & Dietterich, ICLR 2019, Fig. 1), in the order of the
# ALEXNET_ERR list below (google-research/augmix @ 9b9824c7c19bf7e72df2d085d97b99b3bfb00ba4, imagenet.py, CORRUPTIONS)
IMAGENET_C: dict[str, str] = {
    "gaussian_noise": "noise", "shot_noise": "noise", "impulse_noise": "noise",
    "defocus_blur": "blur", "glass_blur": "blur", "motion_blur": "blur", "zoom_blur": "blur",
    "snow": "weather", "frost": "weather", "fog": "weather", "brightness": "weather",
    "contrast": "digital", "elastic_transform": "digital", "pixelate": "digital", "jpeg_compression": "digital",
}

# AlexNet's top-1 error on each ImageNet-C corruption, averaged over the 5 severities (a fraction). Source:
# google-research/augmix @ 9b9824c7c19bf7e72df2d085d97b99b3bfb00ba4, imagenet.py lines 147-152 ("Raw AlexNet errors
# taken from https://github.com/hendrycks/robustness"; that repository's README links them as a spreadsheet).
# CE_c = sum_s E_{s,c} / sum_s E^AlexNet_{s,c} needs only these means: both sums are 5 x the means.
ALEXNET_ERR: dict[str, float] = dict(zip(IMAGENET_C, (
    0.886428, 0.894468, 0.922640, 0.819880, 0.826268, 0.785948, 0.798360,
    0.866816, 0.826572, 0.819324, 0.564592, 0.853204, 0.646056, 0.717840, 0.606500,
)))
# AlexNet's clean top-1 error for the relative mCE: 1 - 56.522% (torchvision's published acc@1 of its AlexNet weights,
# AlexNet_Weights.IMAGENET1K_V1, the model hendrycks/robustness ImageNet-C/test.py evaluates). The ImageNet-C paper
# prints it rounded, 43.5.
ALEXNET_CLEAN_ERR = 0.43478  # 1 - 0.56522

# ImageNet-C-bar's 10 corruptions, as released (facebookresearch/augmentation-corruption @
# ba4d5a5e9132fe98fcd4be1ac90abedbbb188794: README.md's list of the preprocessed set, the same 10 as
# imagenet_c_bar/imagenet_c_bar.csv). Not CIFAR-10-C-bar's list (pinch_and_twirl, ripple, ...: cifar10_c_bar.csv).
IMAGENET_C_BAR: tuple[str, ...] = (
    "blue_noise_sample", "brownish_noise", "caustic_refraction", "checkerboard_cutout", "cocentric_sine_waves",
    "inverse_sparkles", "perlin_noise", "plasma_noise", "single_frequency_greyscale", "sparkles",
)

# Paper Table 8 for the official weights it reports: clean top-1, IN-C mCE, IN-C-bar error, IN-A/-R/-Sketch top-1
_TABLE8_COLUMNS = ("clean", "imagenet-c", "imagenet-c-bar", "imagenet-a", "imagenet-r", "imagenet-sketch")
PAPER_TABLE8: dict[str, dict[str, float]] = {tag: dict(zip(_TABLE8_COLUMNS, row)) for tag, row in {
    "convnext_tiny.fb_in1k": (82.1, 53.2, 40.0, 24.2, 47.2, 33.8),
    "convnext_base.fb_in1k": (83.8, 46.8, 34.4, 36.7, 51.3, 38.2),
    "convnext_base.fb_in22k_ft_in1k_384": (86.8, 43.1, 30.7, 62.3, 64.9, 51.6),
    "convnext_large.fb_in22k_ft_in1k_384": (87.5, 40.2, 29.9, 65.5, 66.7, 52.8),
    "convnext_xlarge.fb_in22k_ft_in1k_384": (87.8, 38.8, 27.1, 69.3, 68.2, 55.0),
}.items()}


@functools.cache
def imagenet_1k_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1K WordNet IDs in class-index order (sorted), as timm ships them."""
    return tuple(ImageNetInfo("imagenet-1k").label_names())


@functools.cache
def subset_wnids(suite: str) -> tuple[str, ...]:
    """The classes a set is scored on, in the published order: ImageNet-A's and -R's 200 (package data files naming
    their source), all 1,000 otherwise."""
    if suite not in ("imagenet-a", "imagenet-r"):
        return imagenet_1k_wnids()
    text = Path(__file__).with_name(f"{suite.replace('-', '_')}_wnids.txt").read_text()
    return tuple(line for line in text.splitlines() if line and not line.startswith("#"))
