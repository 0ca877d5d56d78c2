"""FCMAE (convnext/fcmae.py, convnext/fcmae_task.py): the dense masked encoder against a sparse reference written
here with loops over visible sites; masked pixels that cannot matter; the loss on removed patches only; masks;
the official checkpoint layout; the V2 layer-decay rules; pre-training on the engine, its artifacts and exact
resume; the configs' numbers against TRAINING.md."""
from __future__ import annotations

import gzip
import json
import math

import pytest
import torch
from PIL import Image

from convnext.checkpoint import save
from convnext.config import Config, OptimConfig, derive, load_config, replace
from convnext.errors import UserError
from convnext.fcmae import (FCMAE, encoder_state_dict, infer_settings, load_fcmae, random_mask,
                            remap_fcmae_state_dict)
from convnext.fcmae_task import FCMAEPretraining, crop_box
from convnext.model import build_model
from convnext.optim import build_optimizer, v2_layer_id
from convnext.tasks import train

ATTO_DEPTHS, ATTO_DIMS = (2, 2, 6, 2), (40, 80, 160, 320)  # ConvNeXt V2-atto (official fcmae.py convnextv2_atto)


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter random, GRN's gamma/beta (which start at 0) and the LayerNorms' affines too, at scales that
    keep activations near 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if p.ndim == 1 and name.endswith(".weight"):  # the LayerNorms
                p.copy_(1 + 0.3 * noise)
            elif p.ndim == 1 or ".grn." in name:  # biases, GRN's gamma and beta
                p.copy_(0.3 * noise)
            else:  # convs and linears: unit gain
                p.copy_(noise / math.sqrt(p[0].numel()))


# ------------------------------------------------------------------------------------------ the sparse reference


def ln(v, weight, bias, eps=1e-6):
    return (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + eps) * weight + bias


def gelu(v):
    return 0.5 * v * (1 + torch.erf(v / math.sqrt(2)))


def ref_block(blk, feats: dict) -> dict:
    """A V2 block on the sites in `feats` ({(i, j): (C,)}) only, as MinkowskiEngine computes it: the depthwise conv
    sums over the neighbours present, GRN's norm runs over the sites present (of this one image)."""
    w, b = blk.dwconv.weight[:, 0], blk.dwconv.bias
    hidden = {}
    for (i, j) in feats:
        acc = b.clone()
        for di in range(-3, 4):
            for dj in range(-3, 4):
                if (i + di, j + dj) in feats:
                    acc = acc + w[:, di + 3, dj + 3] * feats[i + di, j + dj]
        v = ln(acc, blk.norm.weight, blk.norm.bias)
        hidden[i, j] = gelu(blk.pwconv1.weight @ v + blk.pwconv1.bias)
    gx = torch.sqrt(sum(h * h for h in hidden.values()))  # per channel, over this image's visible sites
    nx = gx / (gx.mean() + 1e-6)
    gamma, beta = blk.grn.gamma.reshape(-1), blk.grn.beta.reshape(-1)
    out = {}
    for s, h in hidden.items():
        h = gamma * (h * nx) + beta + h
        out[s] = feats[s] + blk.pwconv2.weight @ h + blk.pwconv2.bias
    return out


def ref_encoder(enc, img: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """The sparse encoder on one image (C, H, W) with `removed` (H/32, W/32), 1 = removed: the stem on visible
    4x4 windows, then blocks and 2x2 stride-2 convs on the sites present (a site exists where any input of its
    window does); dense output, zero where no site exists."""
    stem, stem_ln = enc.downsample_layers[0]
    rows, cols = img.shape[1] // 4, img.shape[2] // 4
    feats = {}
    for i in range(rows):
        for j in range(cols):
            if not removed[i // 8, j // 8]:
                window = img[:, 4 * i: 4 * i + 4, 4 * j: 4 * j + 4]
                v = (stem.weight * window).sum(dim=(1, 2, 3)) + stem.bias
                feats[i, j] = ln(v, stem_ln.weight, stem_ln.bias)
    for s, stage in enumerate(enc.stages):
        if s > 0:
            norm, conv = enc.downsample_layers[s]
            normed = {k: ln(v, norm.weight, norm.bias) for k, v in feats.items()}
            rows, cols, feats = rows // 2, cols // 2, {}
            for i in range(rows):
                for j in range(cols):
                    inputs = [(a, b) for a in (0, 1) for b in (0, 1) if (2 * i + a, 2 * j + b) in normed]
                    if inputs:
                        feats[i, j] = conv.bias + sum(conv.weight[:, :, a, b] @ normed[2 * i + a, 2 * j + b]
                                                      for a, b in inputs)
        for blk in stage:
            feats = ref_block(blk, feats)
    out = torch.zeros(len(enc.stages[-1][0].dwconv.weight), rows, cols, dtype=img.dtype)
    for (i, j), v in feats.items():
        out[:, i, j] = v
    return out


@pytest.fixture(scope="module")
def model64():
    torch.manual_seed(0)
    m = FCMAE("convnextv2_atto", decoder_dim=64, img_size=64).double().eval()
    randomize(m)
    return m


def test_dense_encoder_equals_the_sparse_reference(model64):
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)  # 2 x 3 patches
    mask = torch.tensor([[1, 0, 0, 1, 1, 0], [0, 1, 1, 0, 1, 0]], dtype=torch.float64)  # per image: 3 kept
    with torch.no_grad():
        feats, _ = model64.forward_encoder(x, mask)
        for n in range(2):
            ref = ref_encoder(model64.encoder, x[n], mask[n].reshape(2, 3))
            torch.testing.assert_close(feats[n], ref, rtol=1e-9, atol=1e-9)
    assert feats.abs().amax() > 1  # a real signal, not zeros matching zeros


def test_removed_pixels_cannot_reach_the_features_and_removed_sites_are_zero(model64):
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 0, 1], [1, 0, 1, 1]], dtype=torch.float64)
    changed = x.clone()
    removed = mask.reshape(3, 1, 2, 1, 2, 1).bool().expand(3, 3, 2, 32, 2, 32).reshape(3, 3, 64, 64)
    changed[removed] = 1e3 * torch.randn(int(removed.sum()), dtype=torch.float64)
    changed[0, :, :32, 32:] = float("nan")  # patch 1 of image 0, removed: not even a NaN leaks (torch.where, not *)
    with torch.no_grad():
        a, _ = model64.forward_encoder(x, mask)
        b, _ = model64.forward_encoder(changed, mask)
    assert torch.equal(a, b)  # bit for bit
    assert (a[mask.reshape(3, 1, 2, 2).expand_as(a).bool()] == 0).all()
    assert (a[~mask.reshape(3, 1, 2, 2).expand_as(a).bool()] != 0).all()


def test_grn_statistics_are_per_sample(model64):
    """A sample's features do not depend on its batch-mates (the official sparse GRN pools over the batch)."""
    x = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    mask = random_mask(3, 4, 0.5, torch.Generator().manual_seed(4))
    with torch.no_grad():
        batch, _ = model64.forward_encoder(x, mask)
        alone, _ = model64.forward_encoder(x[1:2], mask[1:2])
    torch.testing.assert_close(batch[1:2], alone, rtol=1e-12, atol=1e-12)


def test_encoder_loads_into_the_classifier_and_equals_it_with_nothing_removed(model64):
    clf = build_model("convnextv2_atto", num_classes=7).double().eval()
    missing, unexpected = clf.load_state_dict(encoder_state_dict(model64.state_dict()), strict=False)
    assert sorted(missing) == ["head.bias", "head.weight", "norm.bias", "norm.weight"] and not unexpected
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        dense = clf.forward_features(x)
        masked, _ = model64.forward_encoder(x, torch.zeros(2, 4, dtype=torch.float64))
    torch.testing.assert_close(masked, dense, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------ masks, patches, loss


@pytest.mark.parametrize("num_patches,ratio,kept", [(49, 0.6, 19), (4, 0.6, 1), (16, 0.75, 4), (196, 0.6, 78)])
def test_random_mask_keeps_int_of_l_times_one_minus_ratio(num_patches, ratio, kept):
    mask = random_mask(64, num_patches, ratio, torch.Generator().manual_seed(0))
    assert mask.shape == (64, num_patches) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask.sum(1) == num_patches - kept).all()  # official gen_random_mask: int(L * (1 - ratio)) kept
    assert len({tuple(r) for r in mask.tolist()}) > 1  # per sample
    assert torch.equal(mask, random_mask(64, num_patches, ratio, torch.Generator().manual_seed(0)))


def test_mask_ratio_that_keeps_nothing_or_everything_is_refused():
    with pytest.raises(UserError, match="keeps 0 of 4 patches"):
        random_mask(1, 4, 0.8)
    with pytest.raises(UserError, match="keeps 4 of 4"):
        random_mask(1, 4, 0.0)


def test_model_forward_shapes_and_errors():
    m = FCMAE("convnextv2_atto", decoder_dim=32, img_size=64, in_chans=1)
    loss, pred, mask = m(torch.randn(2, 1, 64, 96))
    assert pred.shape == (2, 6, 32 * 32) and mask.shape == (2, 6) and loss.ndim == 0
    assert (mask.sum(1) == 6 - int(6 * 0.4)).all()
    assert m(torch.randn(2, 1, 64, 64), mask_ratio=0.25)[2].sum(1).tolist() == [1.0, 1.0]
    with pytest.raises(UserError, match="ConvNeXt V2 encoders"):
        FCMAE("convnext_atto")
    with pytest.raises(UserError, match="total stride, 32"):
        FCMAE("convnextv2_atto", patch_size=16)
    with pytest.raises(UserError, match="do not divide into 32 px patches"):
        m(torch.randn(1, 1, 48, 64))


def test_patchify_is_the_official_layout():
    m = FCMAE("convnextv2_atto", decoder_dim=32, img_size=64)
    x = torch.randn(2, 3, 64, 96)
    official = torch.einsum("nchpwq->nhwpqc", x.reshape(2, 3, 2, 32, 3, 32)).reshape(2, 6, 32 * 32 * 3)
    assert torch.equal(m.patchify(x), official)
    assert torch.equal(m.unpatchify(m.patchify(x), 2, 3), x)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_counts_removed_patches_only(norm_pix):
    m = FCMAE("convnextv2_atto", decoder_dim=32, img_size=64, norm_pix_loss=norm_pix).double()
    imgs, pred = torch.randn(2, 3, 64, 64, dtype=torch.float64), torch.randn(2, 4, 3072, dtype=torch.float64)
    mask = torch.tensor([[1.0, 0, 1, 1], [0, 1, 1, 0]], dtype=torch.float64)
    total, count = 0.0, 0
    for n in range(2):  # the reference: patch by patch
        for k in range(4):
            if mask[n, k]:
                r, c = divmod(k, 2)
                t = imgs[n, :, 32 * r: 32 * r + 32, 32 * c: 32 * c + 32].permute(1, 2, 0).reshape(-1)
                if norm_pix:
                    t = (t - t.mean()) / (t.var() + 1e-6) ** 0.5  # unbiased variance, as the official code
                total, count = total + ((pred[n, k] - t) ** 2).mean(), count + 1
    loss = m.forward_loss(imgs, pred, mask)
    torch.testing.assert_close(loss, total / count, rtol=1e-12, atol=0)
    visible = imgs.clone()
    visible[0, :, :32, 32:] += 5 * torch.randn(3, 32, 32, dtype=torch.float64)  # patch 1 of image 0: kept
    assert m.forward_loss(visible, pred, mask) == loss
    hidden = imgs.clone()
    hidden[0, :, :32, :32] += torch.randn(3, 32, 32, dtype=torch.float64)  # patch 0 of image 0: removed
    assert m.forward_loss(hidden, pred, mask) != loss


# ------------------------------------------------------------------------------------------ official checkpoints


def official_fcmae_state_dict(g: torch.Generator) -> dict:
    """A random FCMAE-atto state dict in the official MinkowskiEngine layout (convnextv2_sparse.py, fcmae.py):
    sparse convs' `kernel` (k*k, in, out), depthwise (k*k, C), their biases (1, C); MinkowskiLayerNorm's `.ln.`,
    MinkowskiLinear's `.linear.`; MinkowskiGRN (1, C); the dense stem, decoder, proj, pred and mask token."""
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    sd, d = {}, ATTO_DIMS
    sd["encoder.downsample_layers.0.0.weight"], sd["encoder.downsample_layers.0.0.bias"] = r(d[0], 3, 4, 4), r(d[0])
    sd["encoder.downsample_layers.0.1.weight"], sd["encoder.downsample_layers.0.1.bias"] = r(d[0]), r(d[0])
    for i in range(1, 4):
        p = f"encoder.downsample_layers.{i}"
        sd[f"{p}.0.ln.weight"], sd[f"{p}.0.ln.bias"] = r(d[i - 1]), r(d[i - 1])
        sd[f"{p}.1.kernel"], sd[f"{p}.1.bias"] = r(4, d[i - 1], d[i]), r(1, d[i])
    for i, depth in enumerate(ATTO_DEPTHS):
        for j in range(depth):
            p, c = f"encoder.stages.{i}.{j}", d[i]
            sd[f"{p}.dwconv.kernel"], sd[f"{p}.dwconv.bias"] = r(49, c), r(1, c)
            sd[f"{p}.norm.ln.weight"], sd[f"{p}.norm.ln.bias"] = r(c), r(c)
            sd[f"{p}.pwconv1.linear.weight"], sd[f"{p}.pwconv1.linear.bias"] = r(4 * c, c), r(4 * c)
            sd[f"{p}.grn.gamma"], sd[f"{p}.grn.beta"] = r(1, 4 * c), r(1, 4 * c)
            sd[f"{p}.pwconv2.linear.weight"], sd[f"{p}.pwconv2.linear.bias"] = r(c, 4 * c), r(c)
    sd["proj.weight"], sd["proj.bias"], sd["mask_token"] = r(512, d[3], 1, 1), r(512), r(1, 512, 1, 1)
    sd["decoder.0.dwconv.weight"], sd["decoder.0.dwconv.bias"] = r(512, 1, 7, 7), r(512)
    sd["decoder.0.norm.weight"], sd["decoder.0.norm.bias"] = r(512), r(512)
    sd["decoder.0.pwconv1.weight"], sd["decoder.0.pwconv1.bias"] = r(2048, 512), r(2048)
    sd["decoder.0.grn.gamma"], sd["decoder.0.grn.beta"] = r(1, 1, 1, 2048), r(1, 1, 1, 2048)
    sd["decoder.0.pwconv2.weight"], sd["decoder.0.pwconv2.bias"] = r(512, 2048), r(512)
    sd["pred.weight"], sd["pred.bias"] = r(32 * 32 * 3, 512, 1, 1), r(32 * 32 * 3)
    return sd


def test_official_checkpoint_layout_is_remapped(tmp_path):
    official = official_fcmae_state_dict(torch.Generator().manual_seed(0))
    ours = remap_fcmae_state_dict({"model": official})
    model = FCMAE("convnextv2_atto")
    model.load_state_dict(ours)  # strict: every key, every shape
    # utils.remap_checkpoint_keys: kernel offset o of a k x k kernel goes to row o % k, column o // k
    kernel, weight = official["encoder.downsample_layers.2.1.kernel"], ours["encoder.downsample_layers.2.1.weight"]
    dw, dw_weight = official["encoder.stages.1.0.dwconv.kernel"], ours["encoder.stages.1.0.dwconv.weight"]
    for o in range(4):
        assert torch.equal(weight[:, :, o % 2, o // 2], kernel[o].T)  # (in, out) -> (out, in)
    for o in range(49):
        assert torch.equal(dw_weight[:, 0, o % 7, o // 7], dw[o])
    assert torch.equal(ours["encoder.stages.3.1.grn.gamma"].flatten(), official["encoder.stages.3.1.grn.gamma"][0])
    assert torch.equal(ours["encoder.stages.0.0.pwconv1.weight"], official["encoder.stages.0.0.pwconv1.linear.weight"])
    assert torch.equal(ours["decoder.0.grn.beta"], official["decoder.0.grn.beta"])  # dense already: unchanged
    assert ours["encoder.downsample_layers.3.1.bias"].shape == (320,)
    # fine-tuning: the encoder alone, into a ConvNeXt V2 classifier
    clf = build_model("convnextv2_atto", num_classes=10)
    missing, unexpected = clf.load_state_dict(encoder_state_dict(official), strict=False)
    assert sorted(missing) == ["head.bias", "head.weight", "norm.bias", "norm.weight"] and not unexpected
    # a whole official file: the settings come from the shapes
    assert infer_settings(ours) == {"encoder": "convnextv2_atto", "in_chans": 3, "decoder_dim": 512,
                                    "decoder_depth": 1, "patch_size": 32}
    save({"model": official, "epoch": 799}, tmp_path / "convnextv2_atto_1k_224_fcmae.pt")
    loaded = load_fcmae(tmp_path / "convnextv2_atto_1k_224_fcmae.pt")
    key = "encoder.stages.2.5.dwconv.weight"
    assert torch.equal(loaded.state_dict()[key], ours[key])
    save({"model": {"head.weight": torch.zeros(2, 2)}}, tmp_path / "not.pt")
    with pytest.raises(UserError, match="not an FCMAE checkpoint"):
        load_fcmae(tmp_path / "not.pt")


# ------------------------------------------------------------------------------------------ V2 layer decay


def test_v2_layer_ids_follow_the_official_rules():
    single = {"downsample_layers.0.0.weight": 1, "stages.0.0.dwconv.weight": 1, "stages.0.1.grn.gamma": 2,
              "downsample_layers.1.1.weight": 3, "stages.1.1.norm.bias": 4, "downsample_layers.2.0.bias": 5,
              "stages.2.5.pwconv2.weight": 10, "downsample_layers.3.1.bias": 11, "stages.3.1.pwconv1.weight": 12,
              "norm.weight": 13, "head.bias": 13}  # atto: sum(depths) = 12 layers + the head
    assert {k: v2_layer_id(k, ATTO_DEPTHS, "v2_single") for k in single} == single
    group = {"downsample_layers.0.1.weight": 0, "stages.0.2.dwconv.weight": 1, "downsample_layers.1.0.weight": 2,
             "stages.1.2.grn.beta": 2, "downsample_layers.2.1.weight": 3, "stages.2.0.norm.weight": 3,
             "stages.2.5.norm.weight": 4, "stages.2.26.pwconv1.bias": 11, "downsample_layers.3.0.weight": 12,
             "stages.3.2.pwconv2.weight": 12, "head.weight": 13}  # base: 12 groups + the head
    assert {k: v2_layer_id(k, (3, 3, 27, 3), "v2_group") for k in group} == group


def test_v2_optimizer_groups_lr_scales_and_no_decay_on_grn():
    model = build_model("convnextv2_atto", num_classes=10)
    opt = build_optimizer(model, OptimConfig(weight_decay=0.3, layer_decay=0.9, layer_decay_rule="v2_single"), 1e-3)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    for name, lid, wd in [("stages.0.0.grn.gamma", 1, 0.0), ("stages.0.0.grn.beta", 1, 0.0),
                          ("stages.2.3.pwconv1.weight", 8, 0.3), ("stages.2.3.pwconv1.bias", 8, 0.0),
                          ("downsample_layers.0.0.weight", 1, 0.3), ("head.weight", 13, 0.3)]:
        g = group_of[id(params[name])]
        assert g["lr_scale"] == pytest.approx(0.9 ** (13 - lid)) and g["weight_decay"] == wd, name
    assert sum(len(g["params"]) for g in opt.param_groups) == len(params)


# ------------------------------------------------------------------------------------------ pre-training on the engine


def fake_fashion_mnist(root, n_train=8, n_test=8):
    """Four idx files in Fashion-MNIST's format: a blob of random brightness on black, like an item."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        centre = 10 + 8 * torch.rand(n, 2, generator=g)
        blob = torch.exp(-((yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2) / 40)
        images = (255 * blob * torch.rand(n, 1, 1, generator=g)).to(torch.uint8)
        head = bytes([0, 0, 8, 3]) + b"".join(v.to_bytes(4, "big") for v in (n, 28, 28))
        with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(head + images.numpy().tobytes())
        with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(bytes([0, 0, 8, 1]) + n.to_bytes(4, "big") + bytes(i % 10 for i in range(n)))
    return root


def demo_cfg(root, **over) -> Config:
    cfg = replace(load_config("fcmae_demo"), **{
        "data.root": str(root), "data.batch_size": 2, "model.decoder_dim": 32, "train.epochs": 2,
        "train.eval_every": 1, "train.eval_subset": 0, "optim.warmup_epochs": 0.5, "train.log_every": 1})
    return replace(cfg, **over)


def test_pretraining_writes_checkpoints_a_picture_and_an_encoder_to_fine_tune(tmp_path):
    root = fake_fashion_mnist(tmp_path)
    summary = train(demo_cfg(root), tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8] and all(r["eval_loss"] > 0 for r in rows)
    assert summary["best_eval_loss"] == min(r["eval_loss"] for r in rows)  # lower is better
    with Image.open(tmp_path / "run" / "reconstructions.png") as img:
        assert img.format == "PNG" and img.size[1] > img.size[0]  # 8 rows of 3 panels
        img.verify()
    # every checkpoint rebuilds the model it holds
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["meta"]["fcmae"]["img_size"] == 64 and last["meta"]["task"] == "fcmae"
    model = load_fcmae(tmp_path / "run" / "last.pt")
    assert all(torch.equal(v, last["model"][k]) for k, v in model.state_dict().items())
    task = FCMAEPretraining()  # model.init: pre-training continues from FCMAE weights
    cfg = demo_cfg(root, **{"model.init": str(tmp_path / "run" / "last.pt")})
    again = task.build_model(cfg, task.build_data(cfg, 0), None)
    assert all(torch.equal(v, last["model"][k]) for k, v in again.state_dict().items())
    with pytest.raises(UserError, match="encoder.pt does not fit FCMAE"):
        task.build_model(replace(cfg, **{"model.init": str(tmp_path / "run" / "encoder.pt")}), None, None)
    # encoder.pt is a head-less ConvNeXt V2 classifier file: what the fine-tuning config's model.init reads
    from convnext.factory import create_model
    from convnext.weights import load_pretrained

    clf = create_model("convnextv2_atto", num_classes=10, in_chans=1)
    load_pretrained(clf, tmp_path / "run" / "encoder.pt", drop_head="auto")
    enc = encoder_state_dict(last["model"])
    assert all(torch.equal(clf.state_dict()[k], v) for k, v in enc.items())


def test_resume_continues_pretraining_exactly(tmp_path):
    root = fake_fashion_mnist(tmp_path)
    cfg = demo_cfg(root, **{"train.eval_every": 2})  # 2 epochs of 4 steps, evaluated at the end
    full = train(cfg, tmp_path / "full")
    train(replace(cfg, **{"train.max_steps": 3}), tmp_path / "cut")  # stops mid-epoch
    resumed = train(cfg, tmp_path / "cut", resume=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final_eval_loss"] == full["final_eval_loss"]
    task = FCMAEPretraining()
    task.build_data(demo_cfg(root, **{"model.decoder_dim": 64}), 0)
    with pytest.raises(UserError, match="decoder_dim=32 but the config asks for 64"):
        task.check_resume(torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["meta"], None, tmp_path)


def test_random_resized_crops_are_the_official_scale_and_seeded(tmp_path):
    g = torch.Generator()
    for s in range(200):
        top, left, h, w = crop_box(28, 28, (0.2, 1.0), g.manual_seed(s))
        assert 0 <= top <= 28 - h and 0 <= left <= 28 - w
        assert 0.2 * 784 * 0.9 <= h * w <= 784 and 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.2  # rounding to pixels
    root = fake_fashion_mnist(tmp_path)
    data = FCMAEPretraining().build_data(demo_cfg(root), 0)
    first, again = (next(iter(data.train_batches(1, range(2), 1, 1, 0))) for _ in range(2))
    assert first.shape == (2, 1, 64, 64) and torch.equal(first, again)
    other_epoch = next(iter(data.train_batches(2, range(2), 1, 1, 0)))
    assert not torch.equal(first, other_epoch)


def test_configs_hold_the_official_numbers():
    pre = load_config("fcmae:base:1600")
    d = derive(pre, 1_281_167, world_size=64)  # TRAINING.md: 8 nodes x 8 GPUs x 64
    assert pre.task == "fcmae" and pre.train.epochs == 1600 and load_config("fcmae:atto").train.epochs == 800
    assert d.effective_batch == 4096 and d.lr == pytest.approx(1.5e-4 * 4096 / 256)
    assert pre.optim.betas == (0.9, 0.95) and pre.optim.min_lr == 0 and d.warmup_steps == 40 * d.steps_per_epoch
    assert pre.data.scale == (0.2, 1.0) and not pre.data.randaug and pre.data.reprob == 0 and pre.train.ema_decay == 0
    for size, lr, rule, decay in [("atto", 2e-4 * 4, "v2_single", 0.9), ("tiny", 8e-4 * 4, "v2_single", 0.9),
                                  ("base", 6.25e-4 * 4, "v2_group", 0.6)]:
        ft = load_config(f"v2_finetune:{size}")
        assert derive(ft, 1_281_167, world_size=8).lr == pytest.approx(lr)  # blr x 1024 / 256
        assert (ft.optim.layer_decay_rule, ft.optim.layer_decay, ft.model.head_init_scale) == (rule, decay, 0.001)
    assert load_config("v2_finetune_demo").model.init == "runs/fcmae_demo/encoder.pt"
    assert load_config("v2_finetune_demo:scratch").model.init == ""
    with pytest.raises(UserError, match="layer-wise lr decay is a fine-tuning setting"):
        FCMAEPretraining().build_optimizer(torch.nn.Linear(2, 2), replace(Config(), **{"optim.layer_decay": 0.8}), 1.0)
