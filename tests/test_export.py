"""`convnext export` round trips: ONNX (onnxruntime), TorchScript (torch.jit.load), torch.export (.pt2).

Each format is exported once through the command line from a checkpoint of ours (convnext_atto, 64 px, seeded
random weights with randomised LN affines and layer scales, so that folding changes the weights), then
loaded in its own runtime and compared with the unfolded PyTorch model at batch sizes it was not traced at.
"""
from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from convnext import create_model
from convnext.cli import main
from convnext.export import ATOL, count_layernorms, onnx_op_counts
from convnext.model import Block

SIZE = 64
CLASSES = [f"class {i}" for i in range(10)]


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=len(CLASSES))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
            if isinstance(m, Block):
                m.gamma.uniform_(0.2, 1.0)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "atto.pth"
    meta = {"arch": "convnext_atto", "num_classes": len(CLASSES), "class_names": CLASSES,
            "preprocessing": {"img_size": SIZE, "crop_pct": 0.875, "mean": [0.485, 0.456, 0.406],
                              "std": [0.229, 0.224, 0.225], "in_chans": 3, "interpolation": "bicubic"}}
    torch.save({"model": _model().state_dict(), "meta": meta}, path)
    return path


def _export(capsys, *args) -> tuple[int, str]:
    rc = main(["export", *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out


def _max_diff(run, batches=(1, 3)) -> float:
    ref = _model()
    worst = 0.0
    with torch.no_grad():
        for n in batches:
            x = torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(n))
            got = run(x)
            assert got.shape == (n, len(CLASSES))
            worst = max(worst, (got - ref(x)).abs().max().item())
    return worst


def test_onnx(checkpoint, tmp_path, capsys):
    out = tmp_path / "atto.onnx"
    rc, printed = _export(capsys, "--checkpoint", checkpoint, "--format", "onnx", "--out", out)
    assert rc == 0 and "OK" in printed, printed
    # one LayerNormalization node per LayerNorm: stem + 3 downsampling + one per block + final
    depths = (2, 2, 6, 2)
    assert count_layernorms(_model()) == 1 + 3 + sum(depths) + 1 == 17
    ops = onnx_op_counts(out)
    assert ops["LayerNormalization"] == 17
    assert ops["ReduceMean"] <= 1 and ops["Sqrt"] == ops["Pow"] == 0  # no hand-built LN; one mean: the pool
    graph = onnx.load(str(out))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    batch_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic: a dynamic batch
    meta = json.loads({p.key: p.value for p in graph.metadata_props}["convnext"])
    assert meta["class_names"] == CLASSES and meta["folded"] and meta["preprocessing"]["img_size"] == SIZE
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    run = lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])  # noqa: E731
    assert _max_diff(run) <= ATOL


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript(checkpoint, tmp_path, capsys):
    out = tmp_path / "atto.pt"
    rc, printed = _export(capsys, "--checkpoint", checkpoint, "--format", "torchscript", "--out", out)
    assert rc == 0 and "torch.jit.load" in printed and "OK" in printed, printed
    extra = {"convnext.json": ""}
    module = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["convnext.json"])["folded"] is True
    assert not any(k.endswith("gamma") for k in module.state_dict())  # folded: gamma is inside pwconv2
    assert _max_diff(module) <= ATOL


def test_torch_export(checkpoint, tmp_path, capsys):
    out = tmp_path / "atto.pt2"
    rc, printed = _export(capsys, "--checkpoint", checkpoint, "--format", "exported", "--out", out)
    assert rc == 0 and "torch.export.load" in printed and "OK" in printed, printed
    extra = {"convnext.json": ""}
    program = torch.export.load(str(out), extra_files=extra)
    assert json.loads(extra["convnext.json"])["arch"] == "convnext_atto"
    assert _max_diff(program.module()) <= ATOL


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_no_fold_and_a_failed_check(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("convnext.export.ATOL", -1.0)  # no difference can pass: the command must say so
    out = tmp_path / "m.pt"
    rc, printed = _export(capsys, "--checkpoint", checkpoint, "--no-fold", "--format", "torchscript", "--out", out)
    assert rc == 1 and "FAILED" in printed and "not folded" in printed
    assert any(k.endswith("gamma") for k in torch.jit.load(str(out)).state_dict())  # --no-fold: as trained


def test_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # no source of weights: argparse names the three choices
        main(["export", "--model", "convnext_atto", "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert e.value.code == 2 and "--random-init" in capsys.readouterr().err
    rc = main(["export", "--model", "convnext_atto", "--random-init", "--format", "exported", "--out",
               str(tmp_path / "m.onnx")])
    assert rc == 2 and ".pt2" in capsys.readouterr().err
    rc = main(["export", "--model", "convnext_atto", "--random-init", "--img-size", "50", "--format", "onnx",
               "--out", str(tmp_path / "m.onnx")])
    assert rc == 2 and "divisible by 32" in capsys.readouterr().err
