"""FCMAE, the fully convolutional masked autoencoder that pre-trains ConvNeXt V2 (Woo et al., CVPR 2023, §3.1).

    model = FCMAE("convnextv2_atto")                 # the encoder is the trunk of build_model("convnextv2_atto")
    loss, pred, mask = model(images)                 # pred (N, L, 32*32*C) per patch; mask (N, L), 1 = removed
    features, mask = model.forward_encoder(images)   # (N, C, H/32, W/32), zero where removed
    classifier.load_state_dict(encoder_state_dict(model.state_dict()), strict=False)   # fine-tuning: norm, head new

The official design (models/fcmae.py): each image's 32 px patches are removed at random (60%), the encoder sees
the rest, a light decoder (1x1 conv to 512, a mask token at removed sites, one V2 block, 1x1 conv to 32*32*C)
predicts the pixels of every patch, and the loss is the MSE on removed patches of per-patch normalised pixels.

The encoder is dense, with the sparse encoder's semantics exactly. The official one (convnextv2_sparse.py) runs
the stem densely, zeroes removed sites, and continues on MinkowskiEngine: a submanifold conv at a visible site
sums over its visible neighbours only; LayerNorm, the linears and GELU act per site. A dense conv on an input
that is zero at removed sites computes the same at visible sites, so we keep removed sites at zero before every
op that mixes sites or takes statistics: after the stem, before each depthwise conv (block outputs), before GRN
and before each downsampling conv (`torch.where`, not a product, so not even a non-finite removed value leaks).
The stem's 4x4 windows and the 2x2 downsampling windows never straddle a patch (a patch is 8x8 stem sites and
one stage-4 site), so a visible site never reads a removed pixel: its features do not depend on them, bit for
bit. TRAINING.md's JAX model, which trained the paper's main results, is this masked dense form too.

GRN's statistic is per sample: the L2 norm over the visible sites of that image. The official MinkowskiGRN takes
the norm over the visible sites of the whole batch at once (its `x.F` stacks every sample's sites; official
issue #86, PR #85), so a sample's features there depend on its batch-mates and on the batch size per GPU. We
keep the statistic the dense GRN computes when the encoder is fine-tuned and used (per sample, over H and W),
which is also what the JAX model of TRAINING.md computes (its GRN sums over H and W per sample, masked).

Other choices, each the official one unless said: `int(L * (1 - ratio))` patches kept (gen_random_mask: 19 of
49 at 0.6); per-patch target normalisation with the unbiased variance and eps 1e-6 inside the root (as MAE);
the loss averaged over removed patches. Init: ConvNeXt's (trunc-normal std 0.02, zero bias) on every conv and
linear, mask token normal std 0.02. The official fcmae.py re-initialises convs, depthwise kernels and linears
with timm's trunc_normal_ at its default std of 1.0, overriding its encoder's own std 0.02; we do not copy that.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from convnext.checkpoint import load_checkpoint_file, save
from convnext.errors import UserError
from convnext.layers import init_weights
from convnext.model import VARIANTS, build_model, get_variant
from convnext.model_v2 import BlockV2

NORM_PIX_EPS = 1e-6  # official forward_loss: (target - mean) / (var + 1e-6) ** 0.5


def random_mask(n: int, num_patches: int, mask_ratio: float, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """(n, num_patches) of 0 (kept) and 1 (removed): per row exactly int(num_patches * (1 - mask_ratio)) kept,
    chosen uniformly at random (the official gen_random_mask: the ranks of Gaussian noise)."""
    keep = int(num_patches * (1 - mask_ratio))
    if not 0 < keep < num_patches:
        raise UserError(f"mask_ratio {mask_ratio} keeps {keep} of {num_patches} patches; FCMAE needs at least one "
                        f"patch kept and one removed (change model.mask_ratio or use a larger image)")
    noise = torch.randn(n, num_patches, generator=generator, device=generator.device if generator else device)
    rank = noise.argsort(dim=1).argsort(dim=1)  # each patch's place in its row's random order
    mask = (rank >= keep).float()
    return mask if device is None else mask.to(device)


def _upsample(keep: torch.Tensor, factor: int) -> torch.Tensor:
    return keep.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3) if factor > 1 else keep


def masked_block(block: BlockV2, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`block(x)` at the sites where `keep` (N, 1, H, W) is True, as the sparse block computes it; zero elsewhere.
    `x` must be zero where `keep` is False."""
    y = block.dwconv(x)  # a visible site sums over its visible neighbours: the others are zero
    y = y.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
    y = block.act(block.pwconv1(block.norm(y)))  # per site
    y = block.grn(torch.where(keep.permute(0, 2, 3, 1), y, 0))  # L2 norm over this sample's visible sites
    y = block.pwconv2(y).permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    return torch.where(keep, x + block.drop_path(y), 0)


class MaskedEncoder(nn.Module):
    """The trunk of a ConvNeXt V2 classifier (`downsample_layers`, `stages`: the same modules and keys) run on
    the visible sites of a patch mask, densely (module docstring)."""

    def __init__(self, name: str, in_chans: int = 3, drop_path_rate: float = 0.0):
        super().__init__()
        trunk = build_model(name, num_classes=0, in_chans=in_chans, drop_path_rate=drop_path_rate)
        self.downsample_layers, self.stages = trunk.downsample_layers, trunk.stages
        self.dims, self.depths = trunk.dims, trunk.depths

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images and `keep` (N, 1, H/32, W/32), True = visible -> (N, dims[-1], H/32, W/32)."""
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            here = _upsample(keep, 2 ** (last - i))  # the mask on this stage's grid (stride 4 * 2**i)
            if i == 0:
                x = self.downsample_layers[0](x)  # stem: every 4x4 window lies inside one patch
            else:
                norm, conv = self.downsample_layers[i]
                x = conv(torch.where(previous, norm(x), 0))  # 2x2 windows: all visible or all removed
            x = torch.where(here, x, 0)
            for block in stage:
                x = masked_block(block, x, here)
            previous = here
        return x


class FCMAE(nn.Module):
    """Masked encoder + decoder + loss of the official FCMAE; `settings()` rebuilds it (stored in checkpoints)."""

    def __init__(self, encoder: str = "convnextv2_atto", mask_ratio: float = 0.6, patch_size: int = 32,
                 decoder_dim: int = 512, decoder_depth: int = 1, norm_pix_loss: bool = True, img_size: int = 224,
                 in_chans: int = 3, drop_path_rate: float = 0.0):
        super().__init__()
        variant = get_variant(encoder)
        if variant.family != "v2" or variant.isotropic:
            raise UserError(f"FCMAE pre-trains ConvNeXt V2 encoders (convnextv2_*), not {encoder}")
        if patch_size != variant.stride:  # the decoder predicts one patch per stage-4 site
            raise UserError(f"patch_size must equal the encoder's total stride, {variant.stride}, not {patch_size}")
        variant.check_img_size(img_size)
        self.arch, self.mask_ratio, self.patch_size, self.norm_pix_loss = encoder, mask_ratio, patch_size, norm_pix_loss
        self.img_size, self.in_chans, self.drop_path_rate = img_size, in_chans, drop_path_rate
        self.encoder = MaskedEncoder(encoder, in_chans, drop_path_rate)
        self.proj = nn.Conv2d(self.encoder.dims[-1], decoder_dim, kernel_size=1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_dim, 1, 1))
        self.decoder = nn.Sequential(*[BlockV2(decoder_dim) for _ in range(decoder_depth)])
        self.pred = nn.Conv2d(decoder_dim, patch_size ** 2 * in_chans, kernel_size=1)
        for part in (self.proj, self.decoder, self.pred):
            part.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def settings(self) -> dict:
        return {"encoder": self.arch, "mask_ratio": self.mask_ratio, "patch_size": self.patch_size,
                "decoder_dim": self.proj.out_channels, "decoder_depth": len(self.decoder),
                "norm_pix_loss": self.norm_pix_loss, "img_size": self.img_size, "in_chans": self.in_chans,
                "drop_path_rate": self.drop_path_rate}

    def grid(self, imgs: torch.Tensor) -> tuple[int, int]:
        """(rows, columns) of patches of `imgs` (N, C, H, W); a UserError unless the patch size divides H and W."""
        h, w = imgs.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise UserError(f"images of {h}x{w} px do not divide into {self.patch_size} px patches")
        return h // self.patch_size, w // self.patch_size

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C), patches in row-major order, each (row, column, channel) in its patch."""
        (n, c), (h, w), p = imgs.shape[:2], self.grid(imgs), self.patch_size
        x = imgs.reshape(n, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1)  # (N, h, w, p, p, C)
        return x.reshape(n, h * w, p * p * c)

    def unpatchify(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, h*p, w*p): patchify's inverse."""
        n, p, c = x.shape[0], self.patch_size, self.in_chans
        return x.reshape(n, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, h * p, w * p)

    def forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor | None = None,
                        mask_ratio: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (N, C, H/32, W/32), zero at removed sites; mask (N, L), 1 = removed). Without `mask`, a random
        one at `mask_ratio` (default: the model's), drawn from torch's generator."""
        h, w = self.grid(imgs)
        if mask is None:
            ratio = self.mask_ratio if mask_ratio is None else mask_ratio
            mask = random_mask(imgs.shape[0], h * w, ratio, device=imgs.device)
        if mask.shape != (imgs.shape[0], h * w):
            raise UserError(f"the mask has shape {tuple(mask.shape)}; these images need ({imgs.shape[0]}, {h * w})")
        keep = (mask == 0).reshape(-1, 1, h, w)
        return self.encoder(imgs, keep), mask

    def forward_decoder(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Features and mask -> predicted pixels (N, L, p*p*C) of every patch."""
        x = self.proj(x)
        removed = mask.reshape(x.shape[0], 1, *x.shape[-2:]).bool()
        x = torch.where(removed, self.mask_token.to(x.dtype), x)  # the mask token at removed sites
        x = self.pred(self.decoder(x))  # (N, p*p*C, h, w)
        return x.flatten(2).transpose(1, 2)

    def patch_loss(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """(N, L): the mean squared error of each patch's prediction against its (normalised) pixels."""
        dtype = torch.promote_types(imgs.dtype, torch.float32)  # at least fp32: under autocast pred is bf16/fp16
        target, pred = self.patchify(imgs).to(dtype), pred.to(dtype)
        if self.norm_pix_loss:  # each patch's pixels to zero mean, unit (unbiased) variance
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
        return (pred - target).pow(2).mean(dim=-1)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The mean of `patch_loss` over removed patches: visible patches do not count."""
        return torch.where(mask.bool(), self.patch_loss(imgs, pred), 0).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor | None = None,
                mask_ratio: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, mask = self.forward_encoder(imgs, mask, mask_ratio)
        pred = self.forward_decoder(x, mask)
        return self.forward_loss(imgs, pred, mask), pred, mask

    def reconstruct(self, imgs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the images with removed patches zeroed, the prediction with visible patches pasted from the input), both
        (N, C, H, W). With norm_pix_loss a prediction is in normalised units: each patch is mapped back with
        the true patch's mean and std (MAE's visualisation)."""
        _, pred, _ = self(imgs, mask=mask)
        dtype = torch.promote_types(imgs.dtype, torch.float32)
        target, pred = self.patchify(imgs).to(dtype), pred.to(dtype)
        if self.norm_pix_loss:
            pred = pred * (target.var(dim=-1, keepdim=True) + NORM_PIX_EPS) ** 0.5 + target.mean(dim=-1, keepdim=True)
        removed = mask.bool()[..., None]
        h, w = self.grid(imgs)
        return (self.unpatchify(torch.where(removed, 0, target), h, w),
                self.unpatchify(torch.where(removed, pred, target), h, w))


# ------------------------------------------------------------------------------------------ weights


def remap_fcmae_state_dict(sd: Mapping) -> dict:
    """An official FCMAE checkpoint (MinkowskiEngine layout) -> our FCMAE's keys and shapes; ours pass unchanged.

    What the official utils.remap_checkpoint_keys does, for every key (it is meant for the encoder; here the
    decoder, which is dense already, is left as it is): a sparse conv's `kernel` (k*k, in, out) becomes `weight`
    (out, in, k, k), kernel offset o at row o % k, column o // k; a depthwise `kernel` (k*k, C) becomes (C, 1, k, k)
    the same way; the `.ln.` / `.linear.` wrappers leave the names; biases stored (1, C) become (C,); GRN's
    gamma/beta (1, C) become (1, 1, 1, C). A `{"model": ...}` wrapper is taken off.
    """
    if isinstance(sd.get("model"), Mapping):
        sd = sd["model"]
    out = {}
    for key, v in sd.items():
        if key.endswith(".kernel"):
            key = key[: -len("kernel")] + "weight"
            k = math.isqrt(v.shape[0])
            if v.ndim == 3:  # (k*k, in, out)
                v = v.permute(2, 1, 0).reshape(v.shape[2], v.shape[1], k, k).transpose(2, 3)
            else:  # depthwise (k*k, C)
                v = v.permute(1, 0).reshape(v.shape[1], 1, k, k).transpose(2, 3)
        key = re.sub(r"\.(ln|linear)\.", ".", key)
        if key.endswith(".bias") and v.ndim > 1:
            v = v.reshape(-1)
        elif key.endswith((".grn.gamma", ".grn.beta")) and v.ndim == 2:
            v = v.reshape(1, 1, 1, -1)
        out[key] = v.contiguous()
    return out


def encoder_state_dict(sd: Mapping) -> dict:
    """The encoder of an FCMAE state dict (ours or official) in a ConvNeXt V2 classifier's keys: load it with
    strict=False into a `convnextv2_*` model, whose final `norm` and `head` FCMAE does not train."""
    sd = remap_fcmae_state_dict(sd)
    enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    if not enc:
        raise UserError("this state dict has no FCMAE encoder (no 'encoder.*' keys)")
    return enc


def infer_settings(sd: Mapping) -> dict:
    """FCMAE's constructor arguments read from the shapes of a state dict (ours or official, remapped); the mask
    ratio, norm_pix_loss and image size, which no weight shows, are the official defaults."""
    stem = sd["encoder.downsample_layers.0.0.weight"]
    blocks = {tuple(map(int, m.groups())) for k in sd if (m := re.match(r"encoder\.stages\.(\d+)\.(\d+)\.", k))}
    depths = tuple(sum(1 for s, _ in blocks if s == i) for i in range(4))
    dims = tuple(sd[f"encoder.stages.{i}.0.dwconv.weight"].shape[0] for i in range(4))
    arch = next((n for n, v in VARIANTS.items() if v.family == "v2" and (v.depths, v.dims) == (depths, dims)), None)
    if arch is None:
        raise UserError(f"no ConvNeXt V2 variant has depths {depths} and widths {dims}")
    in_chans = stem.shape[1]
    decoder_depth = len({k.split(".")[1] for k in sd if k.startswith("decoder.")})
    return {"encoder": arch, "in_chans": in_chans, "decoder_dim": sd["proj.weight"].shape[0],
            "decoder_depth": decoder_depth, "patch_size": math.isqrt(sd["pred.weight"].shape[0] // in_chans)}


def load_fcmae_weights(model: FCMAE, path: str | Path, ema: bool = False) -> FCMAE:
    """Load an FCMAE checkpoint file (ours or official) into `model`, exactly; a UserError says what does not fit."""
    return _load_exactly(model, remap_fcmae_state_dict(load_checkpoint_file(path, ema)[0]), path)


def _load_exactly(model: FCMAE, sd: dict, path: str | Path) -> FCMAE:
    own = model.state_dict()
    wrong = sorted(set(own) ^ set(sd)) or [k for k in own if own[k].shape != sd[k].shape]
    if wrong:
        raise UserError(f"{path} does not fit FCMAE({model.arch}): {len(wrong)} weights missing, unexpected or of "
                        f"another shape (e.g. {wrong[0]})")
    model.load_state_dict(sd)
    return model


def load_fcmae(path: str | Path, ema: bool = False) -> FCMAE:
    """An FCMAE from a checkpoint: one of our runs' (its meta holds the settings) or an official FCMAE file."""
    sd, meta = load_checkpoint_file(path, ema)
    sd = remap_fcmae_state_dict(sd)
    if "encoder.downsample_layers.0.0.weight" not in sd or "proj.weight" not in sd:
        raise UserError(f"{path} is not an FCMAE checkpoint (no encoder and decoder weights)")
    return _load_exactly(FCMAE(**(meta.get("fcmae") or infer_settings(sd))), sd, path)


def save_encoder(model: FCMAE, path: str | Path, meta: Mapping | None = None) -> Path:
    """Write `model`'s encoder as the weights of a ConvNeXt V2 classifier without a head (`{"model", "meta"}`),
    for fine-tuning (`model.init=PATH`). The classifier's final LayerNorm, which FCMAE does not have, is written at
    its initial value (weight 1, bias 0): where main_finetune.py leaves it, as the official weights lack it."""
    sd = {k: v.detach().cpu().clone() for k, v in encoder_state_dict(model.state_dict()).items()}
    dim = model.encoder.dims[-1]
    sd.update({"norm.weight": torch.ones(dim), "norm.bias": torch.zeros(dim)})
    info = {"arch": model.arch, "num_classes": 0, "fcmae": model.settings(), "fcmae_encoder": True, **(meta or {})}
    return save({"model": sd, "meta": info}, path)
