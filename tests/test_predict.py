"""`convnext predict` and the Classifier: real photos (scikit-image's bundled data) in the formats people have
them, bad files, preprocessing from the weights' metadata, batching, class names.

The model is convnext_atto with seeded random weights saved as a checkpoint of ours (no weights can be
downloaded here); its head is scaled up so that the 10 classes get clearly different probabilities.
"""
from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import skimage.data as skdata
import torch
from PIL import Image

from convnext import create_model
from convnext.cli import main
from convnext.errors import UserError
from convnext.images import expand_paths, load_image, to_rgb
from convnext.labels import class_names
from convnext.predict import Classifier
from convnext.preprocessing import from_cfg as preprocessing_from_cfg

CLASSES = [f"class_{c}" for c in "abcdefghij"]
SIZE = 64
PREPROCESSING = {"img_size": SIZE, "crop_pct": 0.875, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                 "in_chans": 3, "interpolation": "bicubic"}


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("convnext_atto", num_classes=len(CLASSES))
    with torch.no_grad():
        model.head.weight.mul_(5.0)  # spread the logits: top-1 margins well above JPEG noise
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "atto.pth"
    meta = {"arch": "convnext_atto", "num_classes": len(CLASSES), "class_names": CLASSES,
            "preprocessing": PREPROCESSING}
    torch.save({"model": _model().state_dict(), "meta": meta}, path)
    return path


@pytest.fixture(scope="module")
def clf(checkpoint):
    return Classifier.from_checkpoint(checkpoint)


def _probs(pred) -> np.ndarray:
    """The full distribution of a topk=10 prediction, indexed by class."""
    assert pred.error is None, pred.error
    out = np.zeros(len(CLASSES))
    for label in pred.top:
        out[label.index] = label.prob
    return out


# ------------------------------------------------------------------------------------------- image formats


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    """chelsea.png (the lossless reference) and the same photo in every format the issue lists."""
    d = tmp_path_factory.mktemp("cat")
    rgb = Image.fromarray(skdata.chelsea())  # 451 x 300 RGB
    rgb.save(d / "cat.png")
    rgb.save(d / "cat.jpg", quality=95)
    rgb.save(d / "cat.webp", quality=95)
    rgba = rgb.copy()
    rgba.putalpha(255)  # opaque alpha: composited on white it is the same picture
    rgba.save(d / "cat_rgba.png")
    rgb.quantize(256).save(d / "cat_palette.png")  # mode "P", adaptive palette: colours approximated
    grey = rgb.convert("L")
    grey.save(d / "cat_grey.png")
    # 16-bit greyscale with the same picture: v16 = v8 * 257 maps 0..255 onto 0..65535 exactly
    Image.fromarray(np.asarray(grey).astype(np.uint16) * 257).save(d / "cat_grey16.png")
    # stored rotated 90 degrees counter-clockwise, with EXIF Orientation 6 ("rotate 90 CW to display")
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.transpose(Image.Transpose.ROTATE_90).save(d / "cat_exif6.png", exif=exif)
    rgb.transpose(Image.Transpose.ROTATE_90).save(d / "cat_exif6.jpg", exif=exif, quality=95)
    return d


def test_formats_load_as_the_same_picture(cat):
    ref = np.asarray(load_image(cat / "cat.png"))
    assert np.array_equal(np.asarray(load_image(cat / "cat_rgba.png")), ref)
    assert np.array_equal(np.asarray(load_image(cat / "cat_exif6.png")), ref)  # EXIF rotation undone
    grey = np.asarray(load_image(cat / "cat_grey.png"))
    assert grey.shape == ref.shape and np.array_equal(grey[..., 0], grey[..., 2])  # grey -> 3 equal channels
    assert np.array_equal(np.asarray(load_image(cat / "cat_grey16.png")), grey)  # scaled, not clipped to white
    assert load_image(cat / "cat_palette.png").mode == "RGB"
    assert np.abs(np.asarray(load_image(cat / "cat.jpg")).astype(int) - ref).mean() < 3


def test_same_prediction_across_formats(clf, cat):
    names = ["cat.png", "cat.jpg", "cat.webp", "cat_rgba.png", "cat_palette.png", "cat_exif6.png", "cat_exif6.jpg"]
    preds = clf.predict([cat / n for n in names], topk=10)
    ref = _probs(preds[0])
    assert ref.max() - np.sort(ref)[-2] > 0.1  # a clear top-1, so "same top-1" means something
    for name, pred in zip(names, preds):
        p = _probs(pred)
        assert p.argmax() == ref.argmax(), name
        assert np.abs(p - ref).max() < (1e-6 if name in ("cat_rgba.png", "cat_exif6.png") else 0.05), name
    # a different photo gets a different distribution: the model is not a constant
    other = _probs(clf.predict(Image.fromarray(skdata.coffee()), topk=10)[0])
    assert np.abs(other - ref).max() > 0.05


def test_greyscale_16bit_predicts_like_8bit(clf, cat):
    p8, p16 = clf.predict([cat / "cat_grey.png", cat / "cat_grey16.png"], topk=10)
    assert np.abs(_probs(p8) - _probs(p16)).max() < 1e-6


def test_transparency_is_composited_on_white():
    a = np.zeros((8, 8, 4), np.uint8)  # black, fully transparent ...
    a[:, 4:] = (10, 20, 30, 255)  # ... except the right half, opaque
    out = np.asarray(to_rgb(Image.fromarray(a, "RGBA")))
    assert (out[:, :4] == 255).all() and (out[:, 4:] == (10, 20, 30)).all()
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0, 200, 0, 0])
    p.info["transparency"] = 0  # palette index 0 is transparent
    assert (np.asarray(to_rgb(p)) == 255).all()


# ------------------------------------------------------------------------------------------- bad files


def _png_header_only(width: int, height: int) -> bytes:
    """A 45-byte PNG that declares width x height pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def test_bad_files_get_errors_and_the_rest_are_classified(checkpoint, tmp_path, capsys, monkeypatch):
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    # the limit is lowered to 10,000 pixels below: the good images are under it
    Image.fromarray(skdata.chelsea()).resize((96, 64)).save(d / "a_cat.jpg", quality=90)
    Image.fromarray(skdata.coffee()).resize((90, 60)).save(d / "sub" / "b_coffee.png")
    Image.fromarray(skdata.astronaut()).resize((120, 120)).save(d / "c_big.png")  # 14,400 pixels: 1x-2x the limit
    (d / "d_notes.png").write_text("this is not an image\n")
    buf = io.BytesIO()
    Image.fromarray(skdata.astronaut()).resize((90, 90)).save(buf, "JPEG", quality=90)
    (d / "e_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "f_bomb.png").write_bytes(_png_header_only(100_000, 100_000))  # 1e10 pixels: PIL's error level
    (d / "readme.txt").write_text("not picked up from a directory: not an image suffix")
    # c_big.png is above the limit but below 2x it, where PIL only warns: we refuse it too
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    rc = main(["predict", str(d), str(tmp_path / "missing.jpg"), "--checkpoint", str(checkpoint), "--json", "-",
               "--topk", "3", "--batch-size", "2"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "Traceback" not in err and "5 of 7 inputs could not be classified" in err
    results = {r["path"].rsplit("/", 1)[-1]: r for r in json.loads(out)["results"]}
    assert list(results) == ["a_cat.jpg", "c_big.png", "d_notes.png", "e_truncated.jpg", "f_bomb.png",
                             "b_coffee.png", "missing.jpg"]
    for ok in ("a_cat.jpg", "b_coffee.png"):
        assert [t["name"] in CLASSES for t in results[ok]["top"]] == [True] * 3
        assert results[ok]["top"][0]["prob"] >= results[ok]["top"][1]["prob"]
    assert "decompression bomb" in results["c_big.png"]["error"]
    assert "decompression bomb" in results["f_bomb.png"]["error"]
    assert "not an image" in results["d_notes.png"]["error"]
    assert "truncated" in results["e_truncated.jpg"]["error"]
    assert results["missing.jpg"]["error"] == "no such file"


def test_api_reports_bad_inputs_per_item(clf):
    buf = io.BytesIO()
    Image.fromarray(skdata.coffee()).resize((90, 60)).save(buf, "JPEG", quality=90)
    lazy = Image.open(io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 2]))  # header fine, data cut short
    good, bad, missing = clf.predict([Image.fromarray(skdata.coffee()), lazy, "no/such.png"], topk=1)
    assert good.error is None and len(good.top) == 1
    assert "truncated" in bad.error and bad.source == "<image 1>" and bad.top == []
    assert missing.error == "no such file"
    with pytest.raises(UserError, match="topk"):
        clf.predict([], topk=0)


def test_text_output_and_exit_code(checkpoint, tmp_path, capsys):
    Image.fromarray(skdata.chelsea()).save(tmp_path / "cat.png")
    assert main(["predict", str(tmp_path / "*.png"), "--checkpoint", str(checkpoint), "--topk", "2"]) == 0
    out, err = capsys.readouterr()
    line = out.strip()
    assert line.startswith(f"{tmp_path / 'cat.png'}: class_") and line.count(" | ") == 1 and line.endswith("%")
    assert "convnext_atto" in err and "centre crop 64" in err and "folded" in err
    assert main(["predict", str(tmp_path / "*.jpeg"), "--checkpoint", str(checkpoint)]) == 1
    assert "no file matches this pattern" in capsys.readouterr().out


def test_no_weights_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["predict", str(tmp_path), "--model", "convnext_atto"])
    assert e.value.code == 2


# ------------------------------------------------------------------------------------------- API and metadata


def test_batching_folding_and_pil_inputs_agree(checkpoint, cat):
    files = [cat / n for n in ("cat.png", "cat_grey.png", "cat_palette.png")]
    one = Classifier.from_checkpoint(checkpoint, batch_size=2).predict(files, topk=10)  # batches of 2 and 1
    many = Classifier.from_checkpoint(checkpoint, batch_size=32).predict(files, topk=10)
    unfolded = Classifier.from_checkpoint(checkpoint, fold=False).predict(files, topk=10)
    pil = Classifier.from_checkpoint(checkpoint).predict([Image.open(f) for f in files], topk=10)
    for a, b, c, d in zip(one, many, unfolded, pil):
        ref = _probs(a)
        for other in (b, c, d):
            assert np.abs(_probs(other) - ref).max() < 1e-5
    assert pil[0].source == "<image 0>" and one[0].source == str(files[0])


def test_checkpoint_metadata_sets_preprocessing_and_names(clf, checkpoint):
    assert clf.class_names == CLASSES and clf.arch == "convnext_atto"
    p = clf.preprocessing
    assert (p.img_size, p.crop_pct, p.interpolation, p.in_chans) == (SIZE, 0.875, "bicubic", 3)
    img = Image.fromarray(skdata.coffee())  # 600 x 400
    assert clf.transform(img).shape == (3, SIZE, SIZE)
    # crop_pct 1.0 (the official protocol at 384): the whole image squeezed to size x size, no crop
    from torchvision.transforms import functional as F

    full = Classifier(_model(), preprocessing_from_cfg({"img_size": SIZE, "crop_pct": 1.0}), CLASSES)
    want = F.normalize(F.to_tensor(img.resize((SIZE, SIZE), Image.Resampling.BICUBIC)),
                       PREPROCESSING["mean"], PREPROCESSING["std"])
    assert torch.allclose(full.transform(img), want, atol=1e-6)
    short = int(SIZE / 0.875)  # 73: the short side; the long side keeps the aspect ratio (600 x 400)
    cropped = F.center_crop(img.resize((short * 600 // 400, short), Image.Resampling.BICUBIC), SIZE)
    assert torch.allclose(clf.transform(img), F.normalize(F.to_tensor(cropped), PREPROCESSING["mean"],
                                                          PREPROCESSING["std"]), atol=1e-6)


def test_greyscale_model(tmp_path):
    """A model with in_chans=1 (the Fashion-MNIST demo): images are converted to "L", normalised with one mean."""
    torch.manual_seed(0)
    model = create_model("convnext_atto", in_chans=1, num_classes=3)
    pre = preprocessing_from_cfg({"img_size": 32, "crop_pct": 1.0, "mean": [0.3], "std": [0.3], "in_chans": 1})
    clf = Classifier(model, pre)
    assert clf.class_names == ["class 0", "class 1", "class 2"]
    pred = clf.predict(Image.fromarray(skdata.chelsea()), topk=2)[0]
    assert pred.error is None and len(pred.top) == 2
    with pytest.raises(UserError, match="1 input channels"):
        Classifier(model)  # the default (ImageNet, 3 means) does not fit


def test_preprocessing_from_flat_metadata():
    p = preprocessing_from_cfg({"meta": {"img_size": 96, "crop_pct": 0.9, "mean": [0.5] * 3, "std": [0.25] * 3}})
    assert (p.img_size, p.crop_pct, p.mean, p.std) == (96, 0.9, (0.5,) * 3, (0.25,) * 3)
    p = preprocessing_from_cfg({"input_size": 384})  # timm-style keys; official crop rule at 384
    assert (p.img_size, p.crop_pct, p.mean) == (384, 1.0, (0.485, 0.456, 0.406))


def test_from_pretrained_uses_the_registry_cfg(tmp_path, monkeypatch):
    """A registry tag, served from the cache (a seeded random convnext_tiny stands in for the official file)."""
    from convnext.weights import get_pretrained_cfg

    cfg = get_pretrained_cfg("convnext_tiny.fb_in22k_ft_in1k_384")
    with torch.device("meta"):  # shapes only: filling 28M weights with randn is faster than the real init
        shapes = create_model("convnext_tiny").state_dict()
    g = torch.Generator().manual_seed(0)
    torch.save({"model": {k: torch.randn(v.shape, generator=g) * 0.02 for k, v in shapes.items()}},
               tmp_path / cfg["file"])
    monkeypatch.setenv("CONVNEXT_HOME", str(tmp_path))
    monkeypatch.setenv("CONVNEXT_OFFLINE", "1")
    clf = Classifier.from_pretrained("convnext_tiny", "fb_in22k_ft_in1k_384")
    assert (clf.preprocessing.img_size, clf.preprocessing.crop_pct) == (384, 1.0)
    assert clf.class_names[281] == "tabby" and len(clf.class_names) == 1000
    pred = clf.predict(Image.fromarray(skdata.chelsea()), topk=5)[0]
    assert pred.error is None and len(pred.top) == 5 and pred.top[0].name in clf.class_names
    with pytest.raises(UserError, match="unknown weights"):
        Classifier.from_pretrained("convnext_tiny", "fb_in3k")


def test_class_names():
    names = class_names(1000)
    assert len(names) == 1000 and len(set(names)) == 998  # "crane" (134, 517) and "maillot" (638, 639) repeat
    assert (names[0], names[281], names[817], names[999]) == ("tench", "tabby", "sports car", "toilet tissue")
    assert all(n and n == n.strip() for n in names)
    names22k = class_names(21841)
    assert len(names22k) == 21841 and names22k[0] == "organism"
    assert class_names(3) == ["class 0", "class 1", "class 2"]


def test_expand_paths(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for p in ("a/2.png", "a/b/1.JPG", "a/notes.txt", "c.webp"):
        (tmp_path / p).write_bytes(b"")
    got = expand_paths([tmp_path / "a", str(tmp_path / "*.webp"), str(tmp_path / "*.gif"), tmp_path / "x.png"])
    rel = [str(p).replace(str(tmp_path) + "/", "") for p in got]
    assert rel == ["a/2.png", "a/b/1.JPG", "c.webp", "*.gif", "x.png"]
