"""Export to ONNX, TorchScript or torch.export (.pt2), checked against PyTorch before it is called done
(`convnext export`, convnext/cli/export.py).

    convnext export --pretrained convnext_tiny.fb_in1k --format onnx --out convnext_tiny.onnx

What is not obvious:
- ONNX goes through torch.onnx.export's default (dynamo, torch.export-based) exporter at opset 18. From
  opset 17 on, ONNX has a `LayerNormalization` operator, so every LayerNorm (stem, 3 downsampling, one per
  block, final) is one node instead of the ReduceMean/Sub/Pow/Sqrt/Div chain that loses precision and that
  TensorRT parses badly. The tests count those nodes.
- The batch dimension is dynamic in all three formats (traced at batch 2, checked at batches 1 and 3);
  the image size is fixed at the weights' resolution (or --img-size), as the weights were trained for it,
  unless `dynamic_size` (`--dynamic-size`): then height and width are each any multiple of the network's stride
  from 2 strides (64 px) to 2048 px, checked at the traced size and at the smallest, non-square. Not from one
  stride: torch.export (ours and timm's ConvNeXt alike) guards on the last map being more than 1 x 1.
- By default the model is folded first (convnext/fold.py); the check always compares against the
  *unfolded* PyTorch model in fp32, so it covers the folding too. Tolerance: max |difference| <= 1e-4.
- Each file carries the preprocessing and class names as JSON under the key "convnext": ONNX
  metadata_props, or an extra file "convnext.json" in the TorchScript / .pt2 archive.
- TorchScript is deprecated in PyTorch 2.x; it is produced by tracing and offered for older runtimes.
"""
from __future__ import annotations

import importlib.util
import json
import os
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from convnext.errors import UserError

FORMATS = ("onnx", "torchscript", "exported")
ONNX_OPSET = 18  # >= 17 for a single LayerNormalization node; 18 is the dynamo exporter's native opset
ATOL = 1e-4  # fp32, max abs difference of logits
TRACE_BATCH = 2  # not 1: torch.export specialises a dimension of size 1 to a constant
CHECK_BATCHES = (1, 3)  # sizes other than the traced one: proves the batch dimension is dynamic
META_KEY = "convnext"


def require_onnx() -> None:
    """A UserError naming what to install when the optional ONNX packages are missing."""
    modules = ("onnx", "onnxscript", "onnxruntime")
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs {', '.join(missing)}; install them with pip install 'convnext[export]'")


MAX_SIDE = 2048  # the largest side of a dynamic-size export


def _dims(dynamic_size: bool, stride: int) -> tuple[dict]:
    """torch.export's dynamic_shapes for the one input: the batch, and with `dynamic_size` H and W as multiples
    of the stride (a size the network does not divide would be cropped silently by its convs)."""
    dims = {0: torch.export.Dim("batch", min=1, max=65536)}
    if dynamic_size:
        dims[2] = stride * torch.export.Dim("h_strides", min=2, max=MAX_SIDE // stride)
        dims[3] = stride * torch.export.Dim("w_strides", min=2, max=MAX_SIDE // stride)
    return (dims,)


def check_sizes(img_size: int, dynamic_size: bool, stride: int) -> list[tuple[int, int]]:
    """The (H, W) sizes `check` runs an export at: its own size, and for a dynamic size also the smallest (2 x 3
    strides: non-square, so a transposed H/W would show)."""
    return [(img_size, img_size)] + ([(2 * stride, 3 * stride)] if dynamic_size else [])


def export_model(model: nn.Module, fmt: str, out: str | os.PathLike, img_size: int, in_chans: int = 3,
                 metadata: dict | None = None, dynamic_size: bool = False, stride: int = 32) -> Path:
    """Write `model` (eval mode, on the CPU) to `out` in format `fmt`; returns the path. `dynamic_size`: any H, W
    that are multiples of `stride` (the network's total stride) from 2 strides to MAX_SIDE, not only `img_size`."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if dynamic_size and (img_size % stride or not 2 * stride <= img_size <= MAX_SIDE):
        raise UserError(f"a dynamic-size export is traced at a multiple of {stride} from {2 * stride} to {MAX_SIDE} "
                        f"px; {img_size} is not one")
    out = Path(out)
    if fmt == "exported" and out.suffix != ".pt2":
        raise UserError(f"{out}: a torch.export file must end in .pt2 (torch.export.load refuses other names)")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    x = torch.randn(TRACE_BATCH, in_chans, img_size, img_size)
    meta = json.dumps(metadata or {})
    with torch.no_grad():
        if fmt == "onnx":
            program = torch.onnx.export(
                model, (x,), None, dynamo=True, opset_version=ONNX_OPSET, input_names=["image"],
                output_names=["logits"], dynamic_shapes=_dims(dynamic_size, stride), verbose=False,
            )
            program.model.metadata_props[META_KEY] = meta
            # one self-contained file: even XL with a 22K head (1.6 GB) is under protobuf's 2 GB limit
            program.save(str(out), external_data=False)
        elif fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated": we say so in --help
                traced = torch.jit.trace(model, x, check_trace=False)  # check() below does the checking
                torch.jit.save(traced, str(out), _extra_files={f"{META_KEY}.json": meta})
        else:
            program = torch.export.export(model, (x,), dynamic_shapes=_dims(dynamic_size, stride))
            torch.export.save(program, str(out), extra_files={f"{META_KEY}.json": meta})
    return out


def load_exported(fmt: str, path: str | os.PathLike):
    """A callable (N, C, H, W) float tensor -> logits tensor, running the exported file in its own runtime."""
    path = str(path)
    if fmt == "onnx":
        import onnxruntime as ort  # optional: the export extra

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(path, map_location="cpu")
        return module
    if fmt == "exported":
        return torch.export.load(path).module()
    raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")


def check(reference: nn.Module, fmt: str, path: str | os.PathLike, img_size: int | tuple[int, int] | list,
          in_chans: int = 3, batches=CHECK_BATCHES, seed: int = 0) -> float:
    """Max |exported - reference| over random inputs at each batch size in `batches` and each size in `img_size`
    (a side, an (H, W), or a list of (H, W): `check_sizes`), fp32, CPU."""
    run = load_exported(fmt, path)
    reference = reference.eval().cpu()
    g = torch.Generator().manual_seed(seed)
    sizes = [(img_size, img_size)] if isinstance(img_size, int) else [img_size] if isinstance(img_size, tuple) \
        else list(img_size)
    worst = 0.0
    with torch.no_grad():
        for n, (h, w) in ((n, hw) for hw in sizes for n in batches):
            x = torch.randn(n, in_chans, h, w, generator=g)  # what normalised images look like
            got, want = run(x), reference(x)
            if got.shape != want.shape:
                raise UserError(f"the exported model returned shape {tuple(got.shape)} for a batch of {n}, "
                                f"expected {tuple(want.shape)}")
            worst = max(worst, (got.float() - want.float()).abs().max().item())
    return worst


def onnx_op_counts(path: str | os.PathLike) -> Counter:
    """How many nodes of each op type the ONNX graph has (top-level graph: our models have no subgraphs)."""
    import onnx  # optional: the export extra

    return Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


def count_layernorms(model: nn.Module) -> int:
    """LayerNorm modules: stem + 3 downsampling + one per block + final (hierarchical); blocks + final (isotropic)."""
    return sum(isinstance(m, nn.LayerNorm) for m in model.modules())
