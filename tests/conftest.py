import numpy as np
import pytest
from PIL import Image


def make_image_folder(root, classes=4, train_per_class=8, val_per_class=4, size=40, seed=0):
    """A tiny ImageNet-layout folder of real PNG files; each class has its own colour so it is learnable."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True, exist_ok=True)
            base = np.array([(c * 70) % 256, (c * 130 + 40) % 256, (255 - c * 60) % 256], dtype=np.float32)
            for i in range(n):
                img = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("folder"))
