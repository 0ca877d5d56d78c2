"""fold_for_inference: layer scale folded into pwconv2, the block LN affine into pwconv1; same outputs.

At init most of a ConvNeXt is an identity (gamma = 1e-6, LN weight 1 and bias 0, zero biases), where a wrong
fold would go unnoticed, so every affine parameter and bias is randomised first.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from convnext import create_model
from convnext.fold import FoldedBlock, fold_for_inference
from convnext.model import Block, DropPath

CASES = [  # (model, layer scale init, drop path rate): every family, with and without layer scale
    ("convnext_atto", 1e-6, 0.0),
    ("convnext_atto", 0.0, 0.0),
    ("convnext_atto", 1e-6, 0.2),  # DropPath modules (identities in eval) are kept, not folded
    ("convnext_isotropic_small", 0.0, 0.0),
    ("convnext_isotropic_small", 1e-6, 0.0),
]


def randomised(name: str, layer_scale: float, drop_path: float = 0.0, seed: int = 0) -> nn.Module:
    """The model with every parameter drawn at random (weights ~ the official init's scale)."""
    with torch.device("meta"):  # skip the real init (slow trunc_normal): every tensor is filled below
        model = create_model(name, num_classes=10, layer_scale_init_value=layer_scale, drop_path_rate=drop_path)
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.normal_(0.0, 0.02, generator=g)
                m.bias.normal_(0.0, 0.05, generator=g)
            if isinstance(m, Block) and m.gamma is not None:
                m.gamma.uniform_(0.2, 1.0, generator=g)
    return model.eval()


def _blocks(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (Block, FoldedBlock))]


@pytest.mark.parametrize("name,layer_scale,drop_path", CASES)
def test_folded_model_equals_the_original(name, layer_scale, drop_path):
    model = randomised(name, layer_scale, drop_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_for_inference(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = model(x), folded(x)
    assert want.abs().max() > 0.1  # not a degenerate output
    assert (got - want).abs().max().item() <= 1e-5

    # the structure: every Block replaced, no gamma, no block-LN affine; the original untouched
    n_blocks = len(_blocks(model))
    assert all(isinstance(b, FoldedBlock) for b in _blocks(folded)) and len(_blocks(folded)) == n_blocks
    assert all(isinstance(b, Block) for b in _blocks(model))
    assert all(b.norm.weight is None and b.norm.bias is None for b in _blocks(folded))
    keys = set(folded.state_dict())
    assert not any(k.endswith("gamma") for k in keys)
    in_block = ("stages." in k or "blocks." in k for k in before)
    dropped = {k for k, b in zip(before, in_block) if b and k.endswith(("gamma", "norm.weight", "norm.bias"))}
    assert keys == set(before) - dropped
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    kept = [b.drop_path for b in _blocks(folded)]
    assert all(isinstance(d, DropPath) for d in kept[1:]) if drop_path else all(d is None for d in kept)


def test_the_folded_parameters_matter():
    """A fold that forgot either affine would fail the equality above: both change the output a lot."""
    model = randomised("convnext_atto", 1e-6)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    folded = fold_for_inference(model)
    with torch.no_grad():
        want = model(x)
        for attr in ("pwconv1", "pwconv2"):
            broken = fold_for_inference(model)
            for fb, b in zip(_blocks(broken), _blocks(model)):
                getattr(fb, attr).load_state_dict(getattr(b, attr).state_dict())  # the un-folded weights
            assert (broken(x) - want).abs().max() > 1e-2, attr
        assert (folded(x) - want).abs().max() <= 1e-5


def test_folded_model_compiles_in_one_graph():
    """torch.compile captures the folded model whole (torch.export and ONNX: tests/test_export.py)."""
    folded = fold_for_inference(randomised("convnext_atto", 1e-6))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        compiled = torch.compile(folded, backend="eager", fullgraph=True)  # dynamo capture; no C++ compiler needed
        assert torch.allclose(compiled(x), folded(x), atol=1e-6)
    torch._dynamo.reset()
