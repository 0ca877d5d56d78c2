"""ConvNeXt V2 (convnext/model_v2.py): the README's sizes, the official key layout, GRN against its formula, the
same function as timm's and HF's V2 given the same weights, the converters, the registry, folding and export.

At init GRN's gamma and beta are zero, so GRN is the identity and a V2 block computes V1's function without its
layer scale: an equivalence test at init would pass with GRN left out or miswired. Every test that compares
outputs therefore draws every parameter at random, GRN's included. Nothing touches the network.
"""
from __future__ import annotations

import re
import urllib.error

import pytest
import torch
from torch import nn

import convnext
from convnext import convert as C
from convnext import weights as W
from convnext.benchmark import count_gmacs, count_params
from convnext.cli import main
from convnext.errors import UserError
from convnext.fold import FoldedBlockV2, fold_for_inference
from convnext.model import VARIANTS, build_model
from convnext.model_v2 import GRN, BlockV2, ConvNeXtV2

V2 = [n for n in convnext.list_models() if VARIANTS[n].family == "v2"]
SIZES = ("atto", "femto", "pico", "nano", "tiny", "base", "large", "huge")

# The V2 README's tables: (depths, first width, params as printed (M), GFLOPs at 224 as printed), and the exact
# parameter counts at 1,000 classes (counted; timm's models give the same, checked below)
README = {
    "convnextv2_atto": ((2, 2, 6, 2), 40, "3.7", "0.55"),
    "convnextv2_femto": ((2, 2, 6, 2), 48, "5.2", "0.78"),
    "convnextv2_pico": ((2, 2, 6, 2), 64, "9.1", "1.37"),
    "convnextv2_nano": ((2, 2, 8, 2), 80, "15.6", "2.45"),
    "convnextv2_tiny": ((3, 3, 9, 3), 96, "28.6", "4.47"),
    "convnextv2_base": ((3, 3, 27, 3), 128, "89", "15.4"),
    "convnextv2_large": ((3, 3, 27, 3), 192, "198", "34.4"),
    "convnextv2_huge": ((3, 3, 27, 3), 352, "660", "115"),
}
EXACT_PARAMS = {
    "convnextv2_atto": 3_708_400,
    "convnextv2_femto": 5_233_240,
    "convnextv2_pico": 9_066_280,
    "convnextv2_nano": 15_623_800,
    "convnextv2_tiny": 28_635_496,
    "convnextv2_base": 88_717_800,
    "convnextv2_large": 197_956_840,
    "convnextv2_huge": 660_289_640,
}
# GFLOPs the README prints at 384 / 512 (IN-22K table) and T at 224, which are 0.1-0.4% above our multiply-adds
# of convs and linears (the README's counter counts more than those); every other printed number is ours rounded
README_ABOVE_OURS = {
    ("convnextv2_tiny", 224): 4.47,
    ("convnextv2_nano", 384): 7.21,
    ("convnextv2_base", 384): 45.2,
    ("convnextv2_large", 384): 101.1,
    ("convnextv2_huge", 384): 337.9,
    ("convnextv2_huge", 512): 600.8,
}


def meta_model(name, **kw):
    with torch.device("meta"):
        return convnext.create_model(name, **kw)


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter at random, whatever the layout's names: matrices and kernels ~ N(0, 0.02), LN weights
    around 1, biases around 0, and GRN's gamma and beta (any shape) ~ N(0, 0.5), so that GRN is far from the
    identity. Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "grn" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            else:  # LayerNorm weights
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def ours(name: str, seed: int = 0, **kw) -> ConvNeXtV2:
    """Our model with random parameters, built on the meta device (no init: randomised() fills everything)."""
    return randomised(meta_model(name, **kw).to_empty(device="cpu"), seed)


def x64(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------
# Sizes (README tables)
# ----------------------------------------------------------------------------------------------------------


def test_the_table_has_the_eight_readme_sizes():
    assert V2 == [f"convnextv2_{s}" for s in SIZES]
    for name, (depths, c0, _, _) in README.items():
        v = convnext.get_variant(name)
        assert (v.depths, v.dims, v.family, v.layer_scale) == (depths, (c0, 2 * c0, 4 * c0, 8 * c0), "v2", 0.0)


@pytest.mark.parametrize("name", V2)
def test_params_match_readme(name):
    n = count_params(meta_model(name))
    assert n == EXACT_PARAMS[name] == VARIANTS[name].params
    printed = README[name][2]
    decimals = len(printed.partition(".")[2])
    assert f"{n / 1e6:.{decimals}f}" == printed  # as the README rounds it
    assert float(printed) == VARIANTS[name].params_m


def test_params_equal_timms():
    import timm

    for name in V2:  # the same architecture counted by an independent implementation
        with torch.device("meta"):
            assert count_params(timm.create_model(name)) == EXACT_PARAMS[name]


def test_params_differ_from_v1_by_grn_minus_layer_scale():
    # each block: + GRN gamma and beta (2 x 4d), - V1's layer scale (d)
    v1 = count_params(meta_model("convnext_tiny"))
    blocks = sum(d * c for d, c in zip((3, 3, 9, 3), (96, 192, 384, 768)))
    assert EXACT_PARAMS["convnextv2_tiny"] == v1 + 8 * blocks - blocks


@pytest.mark.parametrize("name", V2)
def test_gflops_match_readme(name):
    model = meta_model(name)
    got = count_gmacs(model, 224)
    printed = README[name][3]
    assert float(printed) == VARIANTS[name].gmacs_224
    if (name, 224) in README_ABOVE_OURS:
        assert 0 < float(printed) - got < 0.004 * float(printed)
    else:
        assert f"{got:.{len(printed.partition('.')[2])}f}" == printed
    for (n, res), value in README_ABOVE_OURS.items():
        if n == name and res != 224:
            assert 0 < value - count_gmacs(model, res) < 0.004 * value
    if name == "convnextv2_tiny":
        assert round(count_gmacs(model, 384), 1) == VARIANTS[name].gmacs_384 == 13.1
        assert count_gmacs(model, 224) == count_gmacs(meta_model("convnext_tiny"), 224)  # GRN adds no matmul


# ----------------------------------------------------------------------------------------------------------
# The official layout and the interface
# ----------------------------------------------------------------------------------------------------------


def official_v2_layout(depths, dims, num_classes=1000):
    """The keys and shapes of the official models/convnextv2.py, written out (in its module order)."""
    keys = {"downsample_layers.0.0.weight": (dims[0], 3, 4, 4), "downsample_layers.0.0.bias": (dims[0],),
            "downsample_layers.0.1.weight": (dims[0],), "downsample_layers.0.1.bias": (dims[0],)}
    for i in (1, 2, 3):
        keys[f"downsample_layers.{i}.0.weight"] = (dims[i - 1],)
        keys[f"downsample_layers.{i}.0.bias"] = (dims[i - 1],)
        keys[f"downsample_layers.{i}.1.weight"] = (dims[i], dims[i - 1], 2, 2)
        keys[f"downsample_layers.{i}.1.bias"] = (dims[i],)
    for s, (depth, c) in enumerate(zip(depths, dims)):
        for b in range(depth):
            p = f"stages.{s}.{b}."
            keys.update({p + "dwconv.weight": (c, 1, 7, 7), p + "dwconv.bias": (c,), p + "norm.weight": (c,),
                         p + "norm.bias": (c,), p + "pwconv1.weight": (4 * c, c), p + "pwconv1.bias": (4 * c,),
                         p + "grn.gamma": (1, 1, 1, 4 * c), p + "grn.beta": (1, 1, 1, 4 * c),
                         p + "pwconv2.weight": (c, 4 * c), p + "pwconv2.bias": (c,)})
    keys.update({"norm.weight": (dims[-1],), "norm.bias": (dims[-1],), "head.weight": (num_classes, dims[-1]),
                 "head.bias": (num_classes,)})
    return keys


@pytest.mark.parametrize("name", V2)
def test_state_dict_layout_is_official(name):
    depths, c0, _, _ = README[name]
    sd = meta_model(name).state_dict()
    want = official_v2_layout(depths, [c0 * 2**i for i in range(4)])
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == list(want.items())  # keys, shapes and order
    assert C.detect_format(sd) == "official" and C.infer_arch(sd) == name


def test_official_file_round_trip_strict(tmp_path):
    ref = ours("convnextv2_atto")
    path = tmp_path / "convnextv2_atto_1k_224_ema.pt"  # an official file: {"model": state_dict}, tensors only
    torch.save({"model": ref.state_dict()}, path)
    model = ConvNeXtV2(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320))
    model.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x64()), ref(x64()), atol=0, rtol=0)
    loaded = convnext.load_model(path)  # architecture read from the keys, registry cfg from the official name
    assert isinstance(loaded, ConvNeXtV2) and loaded.arch == "convnextv2_atto"
    assert loaded.pretrained_cfg["tag"] == "convnextv2_atto.fcmae_ft_in1k"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x64()), ref(x64()), atol=0, rtol=0)


def test_interface_for_the_fcmae_and_dense_tasks():
    m = build_model("convnextv2_atto", num_classes=5, drop_path_rate=0.2, head_init_scale=0.001)
    assert type(m) is ConvNeXtV2 and m.arch == "convnextv2_atto" and m.num_features == 320
    assert m.dims == (40, 80, 160, 320) and m.depths == (2, 2, 6, 2)
    assert isinstance(m.downsample_layers, nn.ModuleList) and len(m.downsample_layers) == 4
    assert isinstance(m.stages, nn.ModuleList) and isinstance(m.norm, nn.LayerNorm) and m.head.out_features == 5
    block = m.stages[3][-1]
    assert isinstance(block, BlockV2) and isinstance(block.grn, GRN)
    assert [n for n, _ in block.named_children()] == ["dwconv", "norm", "pwconv1", "act", "grn", "pwconv2", "drop_path"]
    assert block.drop_path.p == pytest.approx(0.2)  # the last block: drop path grows linearly to the rate
    rates = [getattr(b.drop_path, "p", 0.0) for stage in m.stages for b in stage]
    assert rates == pytest.approx(torch.linspace(0, 0.2, 12).tolist())
    assert not any(k.endswith(".gamma") and ".grn." not in k for k in m.state_dict())  # no layer scale


def test_init_follows_official():
    torch.manual_seed(0)
    m = convnext.create_model("convnextv2_tiny", head_init_scale=0.001)
    w = m.stages[2][0].pwconv1.weight
    assert abs(w.std().item() - 0.02) < 0.002 and w.abs().max().item() <= 2.0  # trunc normal std 0.02
    assert torch.all(m.stages[2][0].pwconv1.bias == 0)
    assert all(torch.all(b.grn.gamma == 0) and torch.all(b.grn.beta == 0) for s in m.stages for b in s)
    assert m.head.weight.std().item() < 0.02 * 0.001 * 1.2  # scaled by head_init_scale
    assert m.stages[0][0].norm.eps == m.downsample_layers[0][1].eps == m.norm.eps == 1e-6


def test_usage_errors():
    with pytest.raises(UserError, match="convnextv2_atto has no layer scale"):
        build_model("convnextv2_atto", layer_scale_init_value=1e-6)
    assert isinstance(build_model("convnextv2_atto", layer_scale_init_value=0.0), ConvNeXtV2)
    with pytest.raises(UserError, match="Triton kernels implement the V1 block.*kernels='torch'"):
        convnext.create_model("convnextv2_atto", kernels="triton")


# ----------------------------------------------------------------------------------------------------------
# GRN and the forward interface
# ----------------------------------------------------------------------------------------------------------


def test_grn_against_its_formula():
    torch.manual_seed(0)
    grn = GRN(6).double()
    with torch.no_grad():
        grn.gamma.normal_()
        grn.beta.normal_()
    x = torch.randn(3, 5, 4, 6, dtype=torch.double)  # (N, H, W, C)
    out = grn(x)
    want = torch.empty_like(x)
    for n in range(3):  # the official computation, one sample and channel at a time
        g = [x[n, :, :, c].pow(2).sum().sqrt() for c in range(6)]  # L2 norm over the spatial positions
        mean = sum(g) / 6
        for c in range(6):
            xc, gamma, beta = x[n, :, :, c], grn.gamma[0, 0, 0, c], grn.beta[0, 0, 0, c]
            want[n, :, :, c] = gamma * xc * (g[c] / (mean + 1e-6)) + beta + xc
    torch.testing.assert_close(out, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(grn(x[1:2]), out[1:2], atol=1e-12, rtol=0)  # per sample: no batch statistics
    assert (out - x).abs().max() > 0.5  # not the identity
    fresh = GRN(6)
    y = torch.randn(2, 3, 3, 6)
    assert torch.equal(fresh(y), y) and fresh.gamma.shape == fresh.beta.shape == (1, 1, 1, 6)  # identity at init


def test_forward_shapes_and_backward():
    m = convnext.create_model("convnextv2_atto", num_classes=7, drop_path_rate=0.1)
    x = torch.randn(2, 3, 64, 64)
    out = m(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())  # GRN's gamma and beta included
    feats = m.forward_features(x)
    assert feats.shape == (2, 320, 2, 2) and m.forward_head(feats, pre_logits=True).shape == (2, 320)
    final, inter = m.eval().forward_intermediates(x)
    assert [tuple(t.shape[1:]) for t in inter] == [(40, 16, 16), (80, 8, 8), (160, 4, 4), (320, 2, 2)]
    torch.testing.assert_close(final, m.forward_features(x))
    assert len(m.forward_intermediates(x, indices=2, intermediates_only=True)) == 2


def test_reset_classifier_and_get_classifier():
    m = ours("convnextv2_atto")
    x = x64(1)
    with torch.no_grad():
        pooled = m.forward_head(m.forward_features(x), pre_logits=True)
        m.reset_classifier(10)
        assert m.get_classifier() is m.head and m(x).shape == (1, 10) and m.num_classes == 10
        m.reset_classifier(0)
        torch.testing.assert_close(m(x), pooled)  # headless: the pooled, normalised features


def test_grad_checkpointing_same_gradients():
    m = ours("convnextv2_atto", num_classes=5).train()
    x = x64()
    m(x).square().sum().backward()
    ref = {k: p.grad.clone() for k, p in m.named_parameters()}
    assert ref["stages.0.0.grn.gamma"].abs().sum() > 0
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(x).square().sum().backward()
    for k, p in m.named_parameters():
        torch.testing.assert_close(p.grad, ref[k], atol=1e-5, rtol=1e-4)


def test_channels_last_matches():  # torch.export: test_export_command_folds_and_checks_v2
    m = ours("convnextv2_atto")
    x = x64()
    with torch.no_grad():
        ref = m(x)
        torch.testing.assert_close(m.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last)),
                                   ref, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------------------
# The same function as timm's and HF's V2
# ----------------------------------------------------------------------------------------------------------


def _timm(name):
    import timm

    with torch.device("meta"):  # no init: randomised() fills every tensor
        return timm.create_model(name, pretrained=False, num_classes=7), lambda m, x: m(x)


def _hf_classifier(name):
    from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

    depths, c0, _, _ = README[name]
    # HF's final pooled LN defaults to eps 1e-12; the official model uses 1e-6 everywhere
    cfg = ConvNextV2Config(depths=list(depths), hidden_sizes=[c0 * 2**i for i in range(4)], num_labels=7,
                           layer_norm_eps=1e-6)
    return ConvNextV2ForImageClassification(cfg), lambda m, x: m(pixel_values=x).logits


def _hf_bare(name):
    from transformers import ConvNextV2Config, ConvNextV2Model

    depths, c0, _, _ = README[name]
    cfg = ConvNextV2Config(depths=list(depths), hidden_sizes=[c0 * 2**i for i in range(4)], layer_norm_eps=1e-6)
    return ConvNextV2Model(cfg), lambda m, x: m(pixel_values=x).pooler_output  # pooled + final LN, no head


@pytest.mark.parametrize(
    "fmt, name, build, classes",
    [
        ("timm", "convnextv2_atto", _timm, 7),  # timm's conv_mlp: fc as (out, in, 1, 1) convs, GRN on NCHW
        ("timm", "convnextv2_tiny", _timm, 7),  # Linear MLP on NHWC
        ("hf", "convnextv2_atto", _hf_classifier, 7),  # prefix convnextv2., classifier
        ("hf", "convnextv2_atto", _hf_bare, 0),  # ConvNextV2Model: no prefix, no head
    ],
    ids=["timm-atto", "timm-tiny", "hf-classifier", "hf-model"],
)
def test_same_function_as_reference(fmt, name, build, classes):
    ref, run = build(name)
    ref = randomised(ref.to_empty(device="cpu") if next(ref.parameters()).is_meta else ref)
    sd = ref.state_dict()
    assert any("grn" in k for k in sd) and C.detect_format(sd) == fmt
    converted = C.convert_state_dict(sd)
    assert C.infer_arch(converted) == name
    assert converted["stages.0.0.grn.gamma"].shape == (1, 1, 1, 4 * README[name][1])  # the official shape
    model = meta_model(name, num_classes=classes).to_empty(device="cpu").eval()
    model.load_state_dict(converted, strict=True)
    x = x64()
    with torch.no_grad():
        expected, got = run(ref, x), model(x)
        # the comparison can fail: without GRN (gamma = beta = 0) the outputs move far beyond the tolerance
        for block in (b for s in model.stages for b in s):
            block.grn.gamma.zero_()
            block.grn.beta.zero_()
        without_grn = model(x)
    assert expected.shape == got.shape == (2, classes or 320) and expected.std() > 0.05
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert (without_grn - expected).abs().max() > 1e-2


def test_timm_file_loads_as_v2_and_not_into_v1(tmp_path):
    ref, run = _timm("convnextv2_atto")
    ref = randomised(ref.to_empty(device="cpu"))
    path = tmp_path / "timm_v2_atto.pth"
    torch.save({"state_dict": ref.state_dict(), "epoch": 3}, path)  # a timm training checkpoint
    model = convnext.load_model(path)
    assert isinstance(model, ConvNeXtV2) and model.arch == "convnextv2_atto" and model.num_classes == 7
    with torch.no_grad():
        torch.testing.assert_close(model(x64()), run(ref, x64()), atol=1e-4, rtol=0)
    with pytest.raises(UserError, match="does not fit convnext_atto: it holds convnextv2_atto weights"):
        convnext.create_model("convnext_atto", num_classes=7, pretrained=str(path))
    dst = W.convert_file(path, tmp_path / "atto.safetensors")
    sd, meta = W.read_weights(dst)
    assert meta["arch"] == "convnextv2_atto" and meta["converted_from"] == "timm"
    assert sd["stages.3.1.grn.beta"].shape == (1, 1, 1, 1280)


def test_v1_and_v2_of_the_same_size_are_told_apart():
    v1, v2 = meta_model("convnext_tiny").state_dict(), meta_model("convnextv2_tiny").state_dict()
    assert C.infer_arch(v1) == "convnext_tiny" and C.infer_arch(v2) == "convnextv2_tiny"
    assert not C.describe(v2).layer_scale and C.describe(v1).layer_scale


# ----------------------------------------------------------------------------------------------------------
# FCMAE checkpoints are recognised and refused with a pointer
# ----------------------------------------------------------------------------------------------------------


def official_fcmae_keys(c: int = 40) -> dict[str, torch.Tensor]:
    """A few keys of an official FCMAE file, in its MinkowskiEngine layout (official models/fcmae.py and
    convnextv2_sparse.py): depthwise `kernel` (k^2, C), `.ln.` / `.linear.` levels, GRN (1, C), the decoder."""
    p = "encoder.stages.0.0."
    return {"encoder.downsample_layers.0.0.weight": torch.zeros(c, 3, 4, 4),
            "encoder.downsample_layers.1.0.ln.weight": torch.zeros(c),
            "encoder.downsample_layers.1.1.kernel": torch.zeros(4, c, 2 * c),
            p + "dwconv.kernel": torch.zeros(49, c), p + "norm.ln.weight": torch.zeros(c),
            p + "pwconv1.linear.weight": torch.zeros(4 * c, c), p + "grn.gamma": torch.zeros(1, 4 * c),
            "proj.weight": torch.zeros(512, 8 * c, 1, 1), "mask_token": torch.zeros(1, 512, 1, 1),
            "decoder.0.dwconv.weight": torch.zeros(512, 1, 7, 7), "pred.weight": torch.zeros(3072, 512, 1, 1)}


def test_fcmae_file_is_refused_with_a_pointer(tmp_path):
    sd = official_fcmae_keys()
    assert C.detect_format({"model": sd}) == "fcmae"
    assert C.detect_format({"mask_token": torch.zeros(1), "encoder.stages.0.0.grn.gamma": torch.zeros(1)}) == "fcmae"
    with pytest.raises(UserError, match="FCMAE pre-training checkpoint.*not a classifier; load it with convnext.fcmae"):
        C.convert_state_dict(sd)
    path = tmp_path / "convnextv2_atto_1k_224_fcmae.pt"
    torch.save({"model": sd}, path)
    with pytest.raises(UserError, match="FCMAE pre-training checkpoint"):
        convnext.load_model(path)


def test_fcmae_tag_is_refused_before_downloading(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVNEXT_HOME", str(tmp_path))
    calls = []

    def no_network(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with torch.device("meta"):
        with pytest.raises(UserError, match=r"convnextv2_tiny\.fcmae is an FCMAE pre-training checkpoint.*"
                                            r"convnext\.fcmae.*convnextv2_tiny\.fcmae_ft_in1k for a classifier"):
            convnext.create_model("convnextv2_tiny.fcmae")
        with pytest.raises(UserError, match="FCMAE pre-training checkpoint"):
            convnext.load_model("convnextv2_huge.fcmae")
    assert calls == []
    with pytest.raises(UserError, match=r"pt_only/convnextv2_pico_1k_224_fcmae\.pt"):  # convnext.fcmae downloads it
        W.download_pretrained("convnextv2_pico.fcmae")
    assert calls == ["https://dl.fbaipublicfiles.com/convnext/convnextv2/pt_only/convnextv2_pico_1k_224_fcmae.pt"]


# ----------------------------------------------------------------------------------------------------------
# Registry (the V2 README's three tables)
# ----------------------------------------------------------------------------------------------------------

V2_TAGS = [t for t in W.PRETRAINED if t.startswith("convnextv2_")]
V2_URL = re.compile(r"^https://dl\.fbaipublicfiles\.com/convnext/convnextv2/(pt_only|im1k|im22k)/"
                    r"convnextv2_(atto|femto|pico|nano|tiny|base|large|huge)_(1k|22k)_(224|384|512)_(fcmae|ema)\.pt$")
README_TOP1 = {  # ImageNet-1K fine-tuned; ImageNet-22K fine-tuned (224 / 384; huge 384 / 512)
    "fcmae_ft_in1k": dict(atto=76.7, femto=78.5, pico=80.3, nano=81.9, tiny=83.0, base=84.9, large=85.8, huge=86.3),
    "fcmae_ft_in22k_in1k": dict(nano=82.1, tiny=83.9, base=86.8, large=87.3),
    "fcmae_ft_in22k_in1k_384": dict(nano=83.4, tiny=85.1, base=87.7, large=88.2, huge=88.7),
    "fcmae_ft_in22k_in1k_512": dict(huge=88.9),
}


def test_v2_registry_covers_the_readme():
    want = {f"convnextv2_{s}.fcmae" for s in SIZES}
    want |= {f"convnextv2_{s}.{tag}" for tag, rows in README_TOP1.items() for s in rows}
    assert set(V2_TAGS) == want and len(V2_TAGS) == 8 + 8 + 10
    for s in SIZES:
        assert W.get_pretrained_cfg(f"convnextv2_{s}")["tag"] == f"convnextv2_{s}.fcmae_ft_in1k"  # pretrained=True


@pytest.mark.parametrize("tag", V2_TAGS)
def test_v2_registry_entry(tag):
    cfg = W.get_pretrained_cfg(tag)
    arch, short = tag.split(".")
    m = V2_URL.match(cfg["url"])
    assert m, cfg["url"]
    folder, size, data, res, kind = m.groups()
    assert arch == f"convnextv2_{size}" and cfg["file"] == cfg["url"].rsplit("/", 1)[1]
    pre = cfg["preprocessing"]
    assert pre["img_size"] == int(res)
    # the official eval (V2 datasets.py): resize to size / (224/256) and centre-crop below 384, no crop from 384 on
    assert pre["crop_pct"] == (0.875 if pre["img_size"] < 384 else 1.0)
    assert pre["interpolation"] == "bicubic" and pre["mean"] == (0.485, 0.456, 0.406)
    if short == "fcmae":
        assert (folder, data, res, kind) == ("pt_only", "1k", "224", "fcmae")
        assert cfg["layout"] == "fcmae" and cfg["num_classes"] == 0 and cfg["top1"] is None
    else:
        assert kind == "ema" and cfg["layout"] == "official" and cfg["num_classes"] == 1000
        assert (folder, data) == (("im1k", "1k") if short == "fcmae_ft_in1k" else ("im22k", "22k"))
        assert int(res) == {"fcmae_ft_in22k_in1k_384": 384, "fcmae_ft_in22k_in1k_512": 512}.get(short, 224)
        assert cfg["top1"] == README_TOP1[short][size]


# ----------------------------------------------------------------------------------------------------------
# Folding and export
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("drop_path", [0.0, 0.2])
def test_fold_equals_the_original(drop_path):
    model = ours("convnextv2_atto", drop_path_rate=drop_path)
    folded = fold_for_inference(model)
    x = x64()
    with torch.no_grad():
        want, got = model(x), folded(x)
    assert want.abs().max() > 0.1 and (got - want).abs().max().item() <= 1e-5
    blocks = [m for m in folded.modules() if isinstance(m, FoldedBlockV2)]
    assert len(blocks) == 12 and not any(isinstance(m, BlockV2) for m in folded.modules())
    keys = folded.state_dict()
    assert "stages.0.0.grn.gamma" in keys and not any(k.endswith(("grn.beta", "0.norm.weight")) for k in keys
                                                       if k.startswith("stages."))
    assert isinstance(model.stages[0][0], BlockV2)  # the original is untouched
    # the folded weights matter: folding again from a model with GRN's beta zeroed gives other outputs
    with torch.no_grad():
        for s in model.stages:
            for b in s:
                b.grn.beta.zero_()
        assert (fold_for_inference(model)(x) - got).abs().max() > 1e-3


def test_export_command_folds_and_checks_v2(tmp_path, capsys):
    path = tmp_path / "v2.pth"
    meta = {"arch": "convnextv2_atto", "num_classes": 7, "preprocessing": {"img_size": 64}}
    torch.save({"model": ours("convnextv2_atto", num_classes=7).state_dict(), "meta": meta}, path)
    out = tmp_path / "v2.pt2"
    rc = main(["export", "--checkpoint", str(path), "--format", "exported", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0 and out.is_file(), printed
    assert "convnextv2_atto" in printed and "folded" in printed and ": OK" in printed
