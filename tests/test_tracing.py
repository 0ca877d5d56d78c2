"""The tools people bring: torch.fx (and torchvision's feature extractor on it), torch.export and ONNX with a
dynamic batch and a dynamic H/W, and a clear sentence for an input too small for the network. The depthwise
conv's small-map speed-up (convnext/dwconv.py) stays on in eager mode."""
from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.fx
from torchvision.models.feature_extraction import create_feature_extractor

from convnext import create_model
from convnext.cli import main
from convnext.errors import UserError
from convnext.export import ATOL

MODELS = ["convnext_atto", "convnextv2_atto", "convnext_isotropic_small"]


def _randomised(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1 or p.ndim == 4 and p.shape[:3] == (1, 1, 1):  # LN affine, biases, layer scale, GRN
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


@pytest.mark.parametrize("name", MODELS)
def test_fx_symbolic_trace_equals_eager_at_sizes_that_crop_and_not(name):
    model = _randomised(name)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        for size in (32, 64, 256):  # 32 px: 1x1 and 2x2 maps, where eager crops the 7x7 kernel; 256: none
            x = torch.randn(2, 3, size, size)
            torch.testing.assert_close(traced(x), model(x), atol=1e-5, rtol=1e-5)


def test_feature_extractor_returns_the_stage_outputs():
    model = _randomised("convnext_atto")
    extractor = create_feature_extractor(model, {"stages.1": "s1", "stages.3": "s3", "norm": "pooled"})
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = extractor(x)
        _, stages = model.forward_intermediates(x)
    torch.testing.assert_close(out["s1"], stages[1])
    torch.testing.assert_close(out["s3"], stages[3])
    assert out["pooled"].shape == (2, 320)


def test_eager_keeps_the_small_map_depthwise_path():
    """The crop is what makes 32-px training fast on the CPU; tracing-safety must not switch it off in eager."""
    model = create_model("convnext_atto").train()
    seen = []
    block = model.stages[3][0]
    block.dwconv.register_forward_hook(lambda m, i, o: seen.append(type(o.grad_fn).__name__))
    model(torch.randn(2, 3, 32, 32)).sum().backward()  # stage 3 is 1 x 1 at 32 px: a per-channel scale
    assert seen == ["AddBackward0"]  # x * w + b, not a padded 7x7 convolution
    seen.clear()
    model(torch.randn(2, 3, 64, 64)).sum().backward()  # 2 x 2: the cropped 3 x 3 conv with the fast backward
    assert seen == ["_SmallMapDepthwiseConvBackward"]


@pytest.mark.parametrize("name", ["convnext_atto", "convnextv2_atto"])
def test_torch_export_dynamic_batch_and_size(name):
    model = _randomised(name)
    batch = torch.export.Dim("batch", min=1, max=64)
    h, w = torch.export.Dim("h", min=2, max=16), torch.export.Dim("w", min=2, max=16)
    program = torch.export.export(model, (torch.randn(2, 3, 64, 96),),
                                  dynamic_shapes=({0: batch, 2: 32 * h, 3: 32 * w},))
    run = program.module()
    with torch.no_grad():
        for shape in ((1, 3, 64, 64), (3, 3, 128, 96), (2, 3, 224, 160)):
            x = torch.randn(*shape)
            torch.testing.assert_close(run(x), model(x), atol=1e-5, rtol=1e-5)


def test_cli_exports_with_a_dynamic_size(tmp_path, capsys):
    torch.save({"model": _randomised("convnext_atto").state_dict(),
                "meta": {"arch": "convnext_atto", "num_classes": 5}}, tmp_path / "atto.pth")
    out = tmp_path / "atto.onnx"
    rc = main(["export", "--checkpoint", str(tmp_path / "atto.pth"), "--img-size", "64", "--dynamic-size",
               "--format", "onnx", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0 and "64 x 64 and 64 x 96" in printed and "OK" in printed, printed
    graph = onnx.load(str(out))
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param and not d.dim_value for i, d in enumerate(dims) if i != 1)  # N, H, W symbolic
    meta = json.loads({p.key: p.value for p in graph.metadata_props}["convnext"])
    assert meta["dynamic_size"] == {"multiple_of": 32, "min": 64, "max": 2048}
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = _randomised("convnext_atto")
    for shape in ((1, 3, 160, 96), (2, 3, 96, 224)):  # sizes the command did not check
        x = torch.randn(*shape)
        got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
        with torch.no_grad():
            assert (got - model(x)).abs().max().item() <= ATOL
    rc = main(["export", "--checkpoint", str(tmp_path / "atto.pth"), "--img-size", "32", "--dynamic-size",
               "--format", "exported", "--out", str(tmp_path / "m.pt2")])
    assert rc == 2 and "from 64 to 2048" in capsys.readouterr().err


@pytest.mark.parametrize("name, side, smallest", [("convnext_atto", 16, 32), ("convnextv2_atto", 31, 32),
                                                  ("convnext_isotropic_small", 8, 16)])
def test_too_small_an_input_is_one_sentence(name, side, smallest):
    model = create_model(name).eval()
    with pytest.raises(UserError, match=f"too small.*at least {smallest} x {smallest} px"):
        model(torch.randn(1, 3, side, side))
    with torch.no_grad():
        assert model(torch.randn(1, 3, smallest, smallest + 8)).shape == (1, 1000)  # the smallest works
