"""The model family: the paper's size table, the official key layout, the timm-style interface."""
import pytest
import torch

import convnext
from convnext.benchmark import count_gmacs, count_params
from convnext.model import VARIANTS

ALL = [n for n in convnext.list_models() if VARIANTS[n].family == "v1"]  # ConvNeXt V2: tests/test_v2.py
HIER = [n for n in ALL if not VARIANTS[n].isotropic]
ISO = [n for n in ALL if VARIANTS[n].isotropic]

# Paper Tables 1 and 2, with exact counts (written out here, not read back from the code's table)
PAPER_PARAMS = {
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
    "convnext_xlarge": 350_196_968,
    "convnext_isotropic_small": 22_315_624,
    "convnext_isotropic_base": 87_097_576,
    "convnext_isotropic_large": 305_942_504,
}
PAPER_PARAMS_22K = {
    "convnext_tiny": 44_615_857,
    "convnext_small": 66_250_417,
    "convnext_base": 109_953_489,
    "convnext_large": 229_799_953,
    "convnext_xlarge": 392_900_177,
}
# Table 1 / Table 2 "FLOPs" (multiply-adds), as printed: (224, 384)
PAPER_GMACS = {
    "convnext_tiny": (4.5, 13.1),
    "convnext_small": (8.7, 25.5),
    "convnext_base": (15.4, 45.1),
    "convnext_large": (34.4, 101.0),
    "convnext_xlarge": (60.9, 179.0),
    "convnext_isotropic_small": (4.3, None),
    "convnext_isotropic_base": (16.9, None),
    "convnext_isotropic_large": (59.7, None),
}


def meta_model(name, **kw):
    with torch.device("meta"):
        return convnext.create_model(name, **kw)


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_params_match_paper(name):
    # the counts with a layer-scale gamma in every block, isotropic S/B included
    assert count_params(meta_model(name, layer_scale_init_value=1e-6)) == PAPER_PARAMS[name]


@pytest.mark.parametrize("name", ["convnext_isotropic_small", "convnext_isotropic_base"])
def test_isotropic_sb_default_has_no_gamma(name):
    # trained with layer scale 0 (TRAINING.md), so the official checkpoints and our default have no gamma
    m = meta_model(name)
    assert not any(k.endswith("gamma") for k in m.state_dict())
    assert count_params(m) == PAPER_PARAMS[name] - 18 * m.dim


@pytest.mark.parametrize("name", list(PAPER_PARAMS_22K))
def test_params_22k_head(name):
    assert count_params(meta_model(name, num_classes=21841)) == PAPER_PARAMS_22K[name]


@pytest.mark.parametrize("name", ALL)
def test_table_params_exact(name):
    # the small variants' exact counts are our own (no paper prints them); the table must agree with the
    # model and round to the printed millions
    v = VARIANTS[name]
    n = count_params(meta_model(name))
    assert n == v.params
    assert round(n / 1e6, 1) == v.params_m or round(n / 1e6) == v.params_m


@pytest.mark.parametrize("name", list(PAPER_GMACS))
def test_gmacs_match_paper(name):
    g224, g384 = PAPER_GMACS[name]
    model = meta_model(name)
    assert round(count_gmacs(model, 224), 1) == g224
    if g384 is not None:
        assert round(count_gmacs(model, 384), 1) == g384


@pytest.mark.parametrize("name", ["convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano"])
def test_small_variant_gmacs_match_table(name):
    assert round(count_gmacs(meta_model(name), 224), 2) == VARIANTS[name].gmacs_224


def test_small_variant_architecture():
    expect = {
        "convnext_atto": ((2, 2, 6, 2), 40),
        "convnext_femto": ((2, 2, 6, 2), 48),
        "convnext_pico": ((2, 2, 6, 2), 64),
        "convnext_nano": ((2, 2, 8, 2), 80),
    }
    for name, (depths, c0) in expect.items():
        m = meta_model(name)
        assert m.depths == depths
        assert m.dims == (c0, 2 * c0, 4 * c0, 8 * c0)


def official_layout(depths, dims, num_classes=1000, gamma=True):
    """The official checkpoint keys, written out from the official models/convnext.py."""
    keys = {
        "downsample_layers.0.0.weight": (dims[0], 3, 4, 4),
        "downsample_layers.0.0.bias": (dims[0],),
        "downsample_layers.0.1.weight": (dims[0],),
        "downsample_layers.0.1.bias": (dims[0],),
    }
    for i in (1, 2, 3):
        keys[f"downsample_layers.{i}.0.weight"] = (dims[i - 1],)
        keys[f"downsample_layers.{i}.0.bias"] = (dims[i - 1],)
        keys[f"downsample_layers.{i}.1.weight"] = (dims[i], dims[i - 1], 2, 2)
        keys[f"downsample_layers.{i}.1.bias"] = (dims[i],)
    for s, (depth, c) in enumerate(zip(depths, dims)):
        for b in range(depth):
            p = f"stages.{s}.{b}."
            if gamma:
                keys[p + "gamma"] = (c,)
            keys[p + "dwconv.weight"] = (c, 1, 7, 7)
            keys[p + "dwconv.bias"] = (c,)
            keys[p + "norm.weight"] = (c,)
            keys[p + "norm.bias"] = (c,)
            keys[p + "pwconv1.weight"] = (4 * c, c)
            keys[p + "pwconv1.bias"] = (4 * c,)
            keys[p + "pwconv2.weight"] = (c, 4 * c)
            keys[p + "pwconv2.bias"] = (c,)
    keys["norm.weight"] = (dims[-1],)
    keys["norm.bias"] = (dims[-1],)
    keys["head.weight"] = (num_classes, dims[-1])
    keys["head.bias"] = (num_classes,)
    return keys


def official_iso_layout(depth, dim, gamma):
    keys = {"stem.weight": (dim, 3, 16, 16), "stem.bias": (dim,)}
    for b in range(depth):
        p = f"blocks.{b}."
        if gamma:
            keys[p + "gamma"] = (dim,)
        for k, shape in [
            ("dwconv.weight", (dim, 1, 7, 7)), ("dwconv.bias", (dim,)), ("norm.weight", (dim,)),
            ("norm.bias", (dim,)), ("pwconv1.weight", (4 * dim, dim)), ("pwconv1.bias", (4 * dim,)),
            ("pwconv2.weight", (dim, 4 * dim)), ("pwconv2.bias", (dim,)),
        ]:
            keys[p + k] = shape
    keys.update({"norm.weight": (dim,), "norm.bias": (dim,), "head.weight": (1000, dim), "head.bias": (1000,)})
    return keys


OFFICIAL = {
    "convnext_tiny": official_layout((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": official_layout((3, 3, 27, 3), (96, 192, 384, 768)),
    "convnext_base": official_layout((3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnext_large": official_layout((3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnext_xlarge": official_layout((3, 3, 27, 3), (256, 512, 1024, 2048)),
    "convnext_isotropic_small": official_iso_layout(18, 384, gamma=False),
    "convnext_isotropic_base": official_iso_layout(18, 768, gamma=False),
    "convnext_isotropic_large": official_iso_layout(36, 1024, gamma=True),
}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_state_dict_layout_is_official(name):
    sd = meta_model(name).state_dict()
    ours = {k: tuple(v.shape) for k, v in sd.items()}
    assert ours == OFFICIAL[name]
    assert list(ours) == list(OFFICIAL[name])  # the order, too (same as the official module tree)


def test_official_checkpoint_loads_strict(tmp_path):
    # an official-style file: {"model": state_dict}, tensors only
    ref = convnext.create_model("convnext_atto")
    path = tmp_path / "official.pth"
    torch.save({"model": ref.state_dict()}, path)
    model = convnext.create_model("convnext_atto")
    model.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model.eval()(x), ref.eval()(x))


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_shapes(name):
    v = VARIANTS[name]
    model = convnext.create_model(name, num_classes=7, drop_path_rate=0.1)
    if v.params > 100e6:  # keep the suite fast on 2 cores: the big ones at 32 px, one image
        x = torch.randn(1, 3, 32, 32)
    else:
        x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (x.shape[0], 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    feats = model.forward_features(x.detach())
    s = v.stride
    assert feats.shape == (x.shape[0], v.dims[-1], x.shape[2] // s, x.shape[3] // s)
    assert model.forward_head(feats, pre_logits=True).shape == (x.shape[0], v.dims[-1])


def test_init_follows_official():
    torch.manual_seed(0)
    m = convnext.create_model("convnext_tiny", head_init_scale=0.001)
    w = m.stages[2][0].pwconv1.weight
    assert abs(w.std().item() - 0.02) < 0.002  # trunc normal, std 0.02 (truncated at +-2 -> ~0.02)
    assert w.abs().max().item() <= 2.0
    assert torch.all(m.stages[2][0].pwconv1.bias == 0)
    assert torch.all(m.stages[0][0].gamma == 1e-6)
    assert torch.all(m.downsample_layers[1][0].weight == 1) and torch.all(m.norm.bias == 0)
    assert m.head.weight.std().item() < 0.02 * 0.001 * 1.2  # scaled by head_init_scale
    assert m.stages[0][0].norm.eps == 1e-6 and m.downsample_layers[0][1].eps == 1e-6 and m.norm.eps == 1e-6


def test_drop_path_linear_over_all_blocks():
    m = convnext.create_model("convnext_tiny", drop_path_rate=0.3)
    rates = [getattr(b.drop_path, "p", 0.0) for stage in m.stages for b in stage]
    expect = torch.linspace(0, 0.3, 18).tolist()
    assert rates == pytest.approx(expect)


def test_no_gamma_without_layer_scale():
    m = convnext.create_model("convnext_atto", layer_scale_init_value=0)
    assert not any(k.endswith("gamma") for k in m.state_dict())


def test_unknown_name_lists_models():
    with pytest.raises(ValueError, match="convnext_tiny.*convnext_isotropic_large"):
        convnext.create_model("convnext_huge")


def test_layernorm2d_is_per_position_channel_norm():
    from convnext.model import LayerNorm2d

    ln = LayerNorm2d(8, eps=1e-6)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(2, 8, 5, 3)
    # the official channels_first formula (models/convnext.py LayerNorm)
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    ref = ln.weight[:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + ln.bias[:, None, None]
    torch.testing.assert_close(ln(x), ref, atol=1e-5, rtol=1e-5)


def randomize(model, seed=0):
    """Move LN affines and layer scales off their identity-like init, so equivalence tests mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    return model


def test_channels_last_matches():
    m = randomize(convnext.create_model("convnext_atto")).eval()
    x = torch.randn(2, 3, 64, 64)
    ref = m(x)
    m_cl = m.to(memory_format=torch.channels_last)
    out = m_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["convnext_atto", "convnext_isotropic_small"])
def test_forward_intermediates(name):
    m = randomize(convnext.create_model(name)).eval()
    x = torch.randn(1, 3, 64, 64)
    final, inter = m.forward_intermediates(x)
    torch.testing.assert_close(final, m.forward_features(x))
    n = len(m.stages) if hasattr(m, "stages") else len(m.blocks)
    assert len(inter) == n
    if hasattr(m, "stages"):
        assert [t.shape[1] for t in inter] == list(m.dims)
        assert [t.shape[-1] for t in inter] == [16, 8, 4, 2]
    only = m.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
    torch.testing.assert_close(only[0], inter[0])
    torch.testing.assert_close(only[1], inter[-1])
    assert len(m.forward_intermediates(x, indices=2, intermediates_only=True)) == 2
    with pytest.raises(ValueError):
        m.forward_intermediates(x, indices=[99])


def test_reset_classifier():
    m = convnext.create_model("convnext_atto")
    m.reset_classifier(10)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    m.reset_classifier(0)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 320)


@pytest.mark.parametrize("name", ["convnext_atto", "convnext_isotropic_small"])
def test_grad_checkpointing_same_gradients(name):
    torch.manual_seed(0)
    m = randomize(convnext.create_model(name, num_classes=5))
    x = torch.randn(2, 3, 64, 64)
    m(x).square().sum().backward()
    ref = {k: p.grad.clone() for k, p in m.named_parameters()}
    m.zero_grad()
    m.set_grad_checkpointing(True)
    m(x).square().sum().backward()
    for k, p in m.named_parameters():
        torch.testing.assert_close(p.grad, ref[k], atol=1e-5, rtol=1e-4)


def test_input_size_multiple_of_32_non_square():
    m = convnext.create_model("convnext_atto")
    assert m.forward_features(torch.randn(1, 3, 96, 160)).shape == (1, 320, 3, 5)


def test_torch_compile_fullgraph():
    m = randomize(convnext.create_model("convnext_atto")).eval()
    x = torch.randn(1, 3, 32, 32)
    compiled = torch.compile(m, fullgraph=True, backend="eager")  # fullgraph: any graph break raises
    torch.testing.assert_close(compiled(x), m(x))


def test_torch_export():
    m = randomize(convnext.create_model("convnext_atto")).eval()
    x = torch.randn(2, 3, 64, 64)
    ep = torch.export.export(m, (x,))
    torch.testing.assert_close(ep.module()(x), m(x))


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (2, 3), (3, 3), (4, 4), (4, 5), (1, 6), (5, 5), (8, 8)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_depthwise_conv_small_maps_same_function(hw, channels_last):
    """Cropping the 7x7 kernel to the map, and the CPU backward used when it covers the map, change nothing:
    output and every gradient equal the plain padded conv's (float64)."""
    import torch.nn.functional as F

    from convnext.dwconv import DepthwiseConv2d

    torch.manual_seed(0)
    conv = DepthwiseConv2d(6, 6, kernel_size=7, padding=3, groups=6).double()
    x = torch.randn(3, 6, *hw, dtype=torch.double)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = conv(x)
    ref = F.conv2d(x, conv.weight, conv.bias, padding=3, groups=6)
    gy = torch.randn_like(ref)
    ours = torch.autograd.grad(y, (x, conv.weight, conv.bias), gy)
    theirs = torch.autograd.grad(ref, (x, conv.weight, conv.bias), gy)
    torch.testing.assert_close(y, ref, atol=1e-12, rtol=0)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), ref, atol=1e-12, rtol=0)
    covered = hw[0] <= 4 and hw[1] <= 4 and hw != (1, 1)  # kernel reaches the whole map: the custom backward
    assert ("SmallMapDepthwiseConv" in type(y.grad_fn).__name__) == covered
