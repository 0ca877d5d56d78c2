"""Fused Triton kernels for the ConvNeXt block (forward and backward), and the switch that uses them.

    from convnext.kernels import use_kernels
    use_kernels(model)            # or create_model(name, kernels="triton")

Two kernels replace the block's eight layers: a depthwise 7x7 conv fused with the LayerNorm
(`dwconv_ln_triton.py`), and the MLP fused from the first linear to the residual add, its 4x-wide hidden
activation never written in inference (`mlp_triton.py`). `ops.py` registers them as custom ops with fake
implementations and autograd, so torch.compile(fullgraph=True) works over them; `block.py` is the Block
forward that calls them. Off CUDA (or without Triton) the ops run the reference PyTorch math instead.
Design and predicted costs: benchmarks/KERNELS.md.
"""
from convnext.kernels.block import FusedBlock, fused_block_forward, use_kernels
from convnext.kernels.ops import triton_available

__all__ = ["FusedBlock", "fused_block_forward", "triton_available", "use_kernels"]
