"""Weights: the official registry, cache/download (offline), safe file reading, and the timm / torchvision /
HF converters checked against the reference implementations themselves. No test touches the network: every
test runs with an empty cache and a download function that fails (or copies a local file)."""
from __future__ import annotations

import argparse
import re
import shutil
import urllib.error

import pytest
import torch

import convnext
from convnext import checkpoint as CK
from convnext import convert as C
from convnext import labels
from convnext import weights as W
from convnext.errors import UserError

SMALL_VARIANTS = {"convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano"}  # no official weights
OFFICIAL_URL = re.compile(
    r"^https://dl\.fbaipublicfiles\.com/convnext/"
    r"convnext_(tiny|small|base|large|xlarge|iso_small|iso_base|iso_large)_(1k|22k|22k_1k)_(224|384)(_ema)?\.pth$"
)


class Opaque:  # an arbitrary class: pickling an instance needs code execution to load it back
    def __init__(self):
        self.lr = 4e-3


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """An empty cache and no network: any download attempt is recorded and fails like a machine offline."""
    home = tmp_path / "convnext_home"
    monkeypatch.setenv("CONVNEXT_HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # the torch.hub folder is searched too
    monkeypatch.delenv("CONVNEXT_OFFLINE", raising=False)
    calls = []

    def no_network(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return home, calls


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """At init the LN affines are 1/0, biases 0 and layer scale 1e-6, so every block is nearly an identity and
    a wrong mapping of those tensors would go unseen. Give every per-channel tensor (the (C,) ones and
    torchvision's (C,1,1) layer scale) a random value, then switch to eval."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.numel() != p.shape[0]:
                continue
            if "gamma" in name or "layer_scale" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            else:
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def _timm(name):
    import timm

    return timm.create_model(name, pretrained=False, num_classes=7), lambda m, x: m(x)


def _torchvision(name):
    import torchvision

    return getattr(torchvision.models, name)(num_classes=7), lambda m, x: m(x)


def _hf(name):
    from transformers import ConvNextConfig, ConvNextForImageClassification

    assert name == "convnext_tiny"  # ConvNextConfig's defaults are ConvNeXt-T
    # HF's final pooled LN defaults to eps 1e-12; the official model uses 1e-6 everywhere
    cfg = ConvNextConfig(num_labels=7, layer_norm_eps=1e-6)
    return ConvNextForImageClassification(cfg), lambda m, x: m(pixel_values=x).logits


# ----------------------------------------------------------------------------------------------------------
# Converters against the reference implementations
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, arch, build",
    [
        ("timm", "convnext_tiny", _timm),
        ("timm", "convnext_atto", _timm),  # conv_mlp=True in timm: fc weights stored as (out, in, 1, 1)
        ("torchvision", "convnext_tiny", _torchvision),
        ("hf", "convnext_tiny", _hf),
    ],
)
def test_converter_matches_reference(fmt, arch, build):
    torch.manual_seed(0)
    ref, run = build(arch)
    randomise(ref)
    sd = ref.state_dict()
    assert C.detect_format(sd) == fmt
    converted = C.convert_state_dict(sd)  # format auto-detected
    assert C.infer_arch(converted) == arch
    with torch.device("meta"):  # no init: strict loading below overwrites every tensor
        ours = convnext.create_model(arch, num_classes=7)
    ours = ours.to_empty(device="cpu").eval()
    ours.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = run(ref, x)
        got = ours(x)
        # the comparison can fail: swap two same-shaped LayerNorm weights (stem <-> first downsampling), as a
        # wrong mapping would, and the logits move far beyond the tolerance
        swapped = dict(converted)
        a, b = "downsample_layers.0.1.weight", "downsample_layers.1.0.weight"
        swapped[a], swapped[b] = converted[b], converted[a]
        ours.load_state_dict(swapped, strict=True)
        wrong = ours(x)
    assert expected.shape == got.shape == (2, 7) and expected.std() > 0.05  # not a constant output
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert (wrong - expected).abs().max() > 1e-3


def test_official_layout_is_identity_after_unwrapping():
    with torch.device("meta"):
        sd = convnext.create_model("convnext_atto").state_dict()
    wrapped = {"model": {"module._orig_mod." + k: v for k, v in sd.items()}}  # DDP around torch.compile
    assert C.detect_format(wrapped) == "official"
    out = C.convert_state_dict(wrapped)
    assert list(out) == list(sd) and all(out[k] is sd[k] for k in sd)


@pytest.mark.parametrize("arch", convnext.list_models())
def test_infer_arch_and_detect_every_variant(arch):
    with torch.device("meta"):  # shapes only: instant even for XL
        sd = convnext.create_model(arch).state_dict()
    assert C.detect_format(sd) == "official"
    assert C.infer_arch(sd) == arch


def test_converter_errors():
    with pytest.raises(UserError, match="unrecognised checkpoint layout.*supported"):
        C.detect_format({"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)})
    with pytest.raises(UserError, match="no ConvNeXt counterpart: head.pre_logits.fc.weight"):
        C.convert_state_dict({"stem.0.weight": torch.zeros(1), "head.pre_logits.fc.weight": torch.zeros(1)})
    with pytest.raises(UserError, match="unknown checkpoint format 'keras'"):
        C.convert_state_dict({"stem.0.weight": torch.zeros(1)}, src="keras")
    with pytest.raises(UserError, match="not a state dict"):
        C.convert_state_dict({"epoch": 3})


# ----------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------


V1_TAGS = [t for t in W.PRETRAINED if W.PRETRAINED[t]["arch"].startswith("convnext_")]  # V2: tests/test_v2.py


def test_registry_covers_the_readme():
    # the official README's tables: 6 IN-1K files, 3 non-EMA 1K files, 5 IN-22K, 10 22K->1K, 3 isotropic
    assert len(V1_TAGS) == 27
    assert sum(t.endswith(".fb_in22k") for t in W.PRETRAINED) == 5
    assert sum(".fb_in22k_ft_in1k" in t for t in W.PRETRAINED) == 10
    for arch in convnext.list_models():
        if arch in SMALL_VARIANTS:
            assert W.list_pretrained(arch) == [] and arch not in W.DEFAULT_TAGS
        else:
            default = W.get_pretrained_cfg(arch)  # the bare name gives the default tag
            assert default["tag"] == f"{arch}.{W.DEFAULT_TAGS[arch]}"
            assert default["num_classes"] == 1000 and default["preprocessing"]["img_size"] == 224
    assert W.DEFAULT_TAGS["convnext_xlarge"] == "fb_in22k_ft_in1k"  # XL has no 1K-only weights
    files = [cfg["file"] for cfg in W.PRETRAINED.values()]
    assert len(set(files)) == len(files)


@pytest.mark.parametrize("tag", V1_TAGS)
def test_registry_entry(tag):
    cfg = W.get_pretrained_cfg(tag)
    arch, short = tag.split(".")
    assert cfg["tag"] == tag and cfg["arch"] == arch and arch in convnext.list_models()
    m = OFFICIAL_URL.match(cfg["url"])
    assert m, cfg["url"]
    size, data, res, _ = m.groups()
    assert arch.replace("isotropic", "iso").endswith(size)
    assert data == {"fb_in1k": "1k", "fb_in1k_noema": "1k", "fb_in1k_384": "1k", "fb_in22k": "22k"}.get(short, "22k_1k")
    pre = cfg["preprocessing"]
    assert pre["img_size"] == int(res) == (384 if short.endswith("_384") else 224)
    assert pre["crop_pct"] == (1.0 if pre["img_size"] == 384 else 0.875)  # official eval: no crop at 384
    assert pre["interpolation"] == "bicubic" and pre["in_chans"] == 3
    assert pre["mean"] == (0.485, 0.456, 0.406) and pre["std"] == (0.229, 0.224, 0.225)
    assert cfg["num_classes"] == (21841 if short == "fb_in22k" else 1000)
    assert (cfg["top1"] is None) == (short in ("fb_in22k", "fb_in1k_noema"))


def test_registry_numbers_and_names():
    top1 = {t: c["top1"] for t, c in W.PRETRAINED.items()}
    assert top1["convnext_tiny.fb_in1k"] == 82.1
    assert top1["convnext_base.fb_in22k_ft_in1k"] == 85.8  # the README's eval check: Acc@1 85.820
    assert top1["convnext_xlarge.fb_in22k_ft_in1k_384"] == 87.8
    assert top1["convnext_isotropic_small.fb_in1k"] == 78.7  # README; paper Table 2 says 79.7
    names = labels.class_names(W.get_pretrained_cfg("convnext_tiny.fb_in1k")["num_classes"])
    assert len(names) == 1000 and names[0] == "tench" and len(set(names)) > 990
    assert len(labels.class_names(W.get_pretrained_cfg("convnext_tiny.fb_in22k")["num_classes"])) == 21841
    assert labels.class_names(2, ["cat", "dog"]) == ["cat", "dog"]
    with pytest.raises(UserError, match="3 class names were given for a 2-class model"):
        labels.class_names(2, ["cat", "dog", "eel"])
    cfg = W.get_pretrained_cfg("convnext_tiny.fb_in1k")
    cfg["preprocessing"]["img_size"] = 1  # a copy: the registry is not changed through it
    assert W.PRETRAINED["convnext_tiny.fb_in1k"]["preprocessing"]["img_size"] == 224


def test_unknown_tags_are_user_errors(offline):
    # create_model builds the model before it looks at the tag; on the meta device that costs nothing
    with torch.device("meta"):
        _check_unknown_tags()
    assert offline[1] == []  # none of these tried the network


def _check_unknown_tags():
    with pytest.raises(UserError, match=r"unknown weights 'convnext_tiny\.fb_in9k'.*convnext_tiny\.fb_in1k"):
        W.get_pretrained_cfg("convnext_tiny.fb_in9k")
    with pytest.raises(UserError, match=r"unknown weights 'convnext_tiny\.fb_in9k'.*fb_in22k_ft_in1k_384"):
        convnext.create_model("convnext_tiny.fb_in9k")
    with pytest.raises(UserError, match=r"unknown weights 'convnext_small\.fb_in9k'.*convnext_small\.fb_in1k"):
        convnext.create_model("convnext_small", pretrained="fb_in9k")
    with pytest.raises(UserError, match="no official weights for convnext_atto"):
        convnext.create_model("convnext_atto", pretrained=True)
    with pytest.raises(UserError, match="unknown model"):
        W.list_pretrained("convnext_huge")
    with pytest.raises(UserError, match="are for convnext_base, not convnext_tiny"):
        convnext.create_model("convnext_tiny", pretrained="convnext_base.fb_in1k")


# ----------------------------------------------------------------------------------------------------------
# Cache, download, load_pretrained
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_official(tmp_path_factory):
    """A seeded random ConvNeXt-T saved the way the official files are: {"model": state_dict}."""
    torch.manual_seed(0)
    src = randomise(convnext.create_model("convnext_tiny"))
    path = tmp_path_factory.mktemp("official") / "convnext_tiny_1k_224_ema.pth"
    torch.save({"model": src.state_dict()}, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        return path, x, src(x)


def test_offline_error_names_url_and_path(offline):
    home, calls = offline
    url = "https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224_ema.pth"
    with pytest.raises(UserError) as e, torch.device("meta"):  # meta: no weight is ever materialised
        convnext.create_model("convnext_tiny", pretrained=True)
    msg = str(e.value)
    assert url in msg and str(home / "convnext_tiny_1k_224_ema.pth") in msg and "URLError" in msg
    assert "\n" not in msg
    assert calls == [url]
    assert not home.exists() or not any(home.iterdir())  # no partial file left behind


def test_convnext_offline_env_skips_the_network(offline, monkeypatch):
    monkeypatch.setenv("CONVNEXT_OFFLINE", "1")
    with pytest.raises(UserError, match=r"CONVNEXT_OFFLINE is set.*convnext_small_22k_1k_384\.pth"):
        W.download_pretrained("convnext_small.fb_in22k_ft_in1k_384")
    assert offline[1] == []


def test_cached_official_file_loads(offline, tiny_official):
    home, calls = offline
    path, x, expected = tiny_official
    home.mkdir()
    shutil.copy(path, home / path.name)
    model = convnext.create_model("convnext_tiny", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=0, rtol=0)
    cfg = model.pretrained_cfg
    assert cfg["tag"] == "convnext_tiny.fb_in1k" and cfg["path"] == str(home / path.name)
    assert cfg["preprocessing"]["crop_pct"] == 0.875 and cfg["num_classes"] == 1000
    assert calls == []


def test_download_lands_under_the_official_name_once(offline, tmp_path, monkeypatch):
    home, _ = offline
    path = tmp_path / "served.pth"
    torch.save({"model": {"w": torch.randn(8)}}, path)
    calls = []

    def fake_download(url, dst, *args, **kwargs):  # what torch.hub does, from a local file
        calls.append((url, dst))
        shutil.copy(path, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    for _ in range(2):
        got = W.download_pretrained("convnext_tiny.fb_in1k")
        assert got == home / "convnext_tiny_1k_224_ema.pth" and got.read_bytes() == path.read_bytes()
    assert len(calls) == 1 and calls[0][0].endswith("/convnext_tiny_1k_224_ema.pth")
    assert calls[0][1] != str(home / "convnext_tiny_1k_224_ema.pth")  # written to a temp name, then renamed
    assert sorted(p.name for p in home.iterdir()) == ["convnext_tiny_1k_224_ema.pth"]


def test_22k_tag_needs_num_classes(offline):
    with pytest.raises(UserError, match=r"21841-class head.*1000 classes.*num_classes=21841.*drop_head=True"):
        with torch.device("meta"):
            convnext.create_model("convnext_tiny.fb_in22k")
    assert offline[1] == []  # refused before downloading 170 MB


@pytest.fixture(scope="module")
def timm_atto_file(tmp_path_factory):
    """A randomised timm convnext_atto (1000 classes), saved as a timm training checkpoint."""
    import timm

    torch.manual_seed(0)
    ref = randomise(timm.create_model("convnext_atto", pretrained=False))
    path = tmp_path_factory.mktemp("timm") / "atto.pth"
    torch.save({"state_dict": ref.state_dict(), "epoch": 3}, path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return path, x, ref(x), ref.forward_head(ref.forward_features(x), pre_logits=True)


def test_local_file_in_another_layout(timm_atto_file):
    path, x, logits, pooled = timm_atto_file
    model = convnext.create_model("convnext_atto", pretrained=str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), logits, atol=1e-4, rtol=0)
    assert model.pretrained_cfg["tag"] is None and model.pretrained_cfg["path"] == str(path)
    assert model.pretrained_cfg["preprocessing"]["img_size"] == 224


def test_head_mismatch_and_drop_head(timm_atto_file):
    path, x, logits, pooled = timm_atto_file
    model = convnext.create_model("convnext_atto", num_classes=5)
    head = model.head.weight.clone()
    with pytest.raises(UserError, match=r"1000-class head but the model has 5.*num_classes=1000"):
        W.load_pretrained(model, str(path))
    W.load_pretrained(model, str(path), drop_head=True)
    model.eval()
    assert torch.equal(model.head.weight, head)  # the model's new head is kept
    assert model.pretrained_cfg["num_classes"] == 5 and model.pretrained_cfg["head_dropped"]
    headless = convnext.create_model("convnext_atto")
    headless.reset_classifier(0)  # a feature extractor: the checkpoint's head is not wanted
    W.load_pretrained(headless, str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), pooled,
                                   atol=1e-4, rtol=0)
        torch.testing.assert_close(headless(x), pooled, atol=1e-4, rtol=0)


def test_wrong_variant_is_named(timm_atto_file):
    path = timm_atto_file[0]
    with pytest.raises(UserError, match="does not fit convnext_femto: it holds convnext_atto weights"):
        convnext.create_model("convnext_femto", pretrained=str(path))
    with pytest.raises(UserError, match=r"downsample_layers\.0\.0\.weight has shape \(40, 3, 4, 4\).*in_chans"):
        convnext.create_model("convnext_atto", in_chans=1, pretrained=str(path))


def test_convert_file_and_model_from_file(timm_atto_file, tmp_path):
    path, x, logits, _ = timm_atto_file
    for name in ("atto.safetensors", "atto.pth"):
        dst = W.convert_file(path, tmp_path / name)
        sd, meta = CK.load_checkpoint_file(dst)
        assert C.detect_format(sd) == "official"
        assert meta["arch"] == "convnext_atto" and meta["num_classes"] == 1000 and meta["converted_from"] == "timm"
        model = convnext.load_model(dst).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x), logits, atol=1e-4, rtol=0)
    with pytest.raises(UserError, match="must end in .safetensors"):
        W.convert_file(path, tmp_path / "atto.onnx")


# ----------------------------------------------------------------------------------------------------------
# Files: safetensors, our checkpoints, and files that must be refused
# ----------------------------------------------------------------------------------------------------------


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    model = randomise(convnext.create_model("convnext_atto", num_classes=3))
    meta = {"class_names": ["cat", "dog", "eel"], "config": {"lr": 4e-3, "epochs": 300}, "git_commit": "abc123"}
    path = CK.save_safetensors(model, tmp_path / "out" / "m.safetensors", metadata=meta)
    assert [p.name for p in path.parent.iterdir()] == ["m.safetensors"]  # no temp file left
    sd, got = CK.load_checkpoint_file(path)
    assert got == {**meta, "arch": "convnext_atto", "num_classes": 3}
    ref = model.state_dict()
    assert set(sd) == set(ref) and all(torch.equal(sd[k], ref[k]) and sd[k].dtype == ref[k].dtype for k in ref)
    # a bare state dict with string metadata comes back exactly; other tools see plain strings
    CK.save_safetensors(ref, tmp_path / "bare.safetensors", metadata={"source": "x"})
    assert CK.load_checkpoint_file(tmp_path / "bare.safetensors")[1] == {"source": "x"}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert f.metadata()["arch"] == "convnext_atto" and f.metadata()["num_classes"] == "3"


def test_our_training_checkpoint(tmp_path):
    sd = {"a": torch.zeros(2)}
    ema = {"a": torch.ones(2)}
    meta = {"arch": "convnext_atto", "num_classes": 10, "class_names": list("abcdefghij"), "config": {"x": 1}}
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd, "model_ema": ema, "optimizer": {"state": {}}, "epoch": 2, "meta": meta}, path)
    got, got_meta = CK.load_checkpoint_file(path)
    assert torch.equal(got["a"], sd["a"]) and got_meta == meta
    assert torch.equal(CK.load_checkpoint_file(path, ema=True)[0]["a"], ema["a"])
    torch.save({"model": sd}, tmp_path / "official.pth")
    with pytest.raises(UserError, match="no EMA weights"):
        CK.load_checkpoint_file(tmp_path / "official.pth", ema=True)
    torch.save(sd, tmp_path / "bare.pt")
    assert list(CK.load_checkpoint_file(tmp_path / "bare.pt")[0]) == ["a"]


@pytest.mark.parametrize("extra", [argparse.Namespace(lr=4e-3), Opaque()], ids=["namespace", "custom_class"])
def test_pickled_objects_are_refused(tmp_path, extra):
    path = tmp_path / "pickled.pth"
    torch.save({"model": {"a": torch.zeros(2)}, "args": extra}, path)
    with pytest.raises(UserError, match="contains pickled Python objects.*refusing to unpickle") as e:
        CK.load_checkpoint_file(path)
    assert type(extra).__name__ in str(e.value)


def test_bad_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such checkpoint file"):
        CK.load_checkpoint_file(tmp_path / "missing.pth")
    with pytest.raises(UserError, match="is not a file"):
        CK.load_checkpoint_file(tmp_path)
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.randn(256, 256)}}, good)
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        CK.load_checkpoint_file(tmp_path / "truncated.pth")
    (tmp_path / "notes.pth").write_text("not a checkpoint\n" * 10)
    with pytest.raises(UserError, match="truncated or corrupt"):
        CK.load_checkpoint_file(tmp_path / "notes.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(UserError, match="holds a Tensor, not a checkpoint"):
        CK.load_checkpoint_file(tmp_path / "tensor.pth")
    torch.save({"epoch": 3, "best": 81.0}, tmp_path / "nothing.pth")
    with pytest.raises(UserError, match="not a model checkpoint"):
        CK.load_checkpoint_file(tmp_path / "nothing.pth")
    CK.save_safetensors({"w": torch.randn(64, 64)}, tmp_path / "x.safetensors")
    data = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "x.safetensors").write_bytes(data[:-100])
    with pytest.raises(UserError, match="not a readable safetensors file"):
        CK.load_checkpoint_file(tmp_path / "x.safetensors")
    with pytest.raises(UserError, match="no such checkpoint file"):
        convnext.create_model("convnext_atto", pretrained=str(tmp_path / "nope.pth"))
