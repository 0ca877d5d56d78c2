"""Our RoIAlign (separable CPU backward) against torchvision's, both directions, over its whole contract."""
import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from convnext.detection import roi_align as ra


def _boxes(n_rois: int, n_images: int, height: int, width: int, stride: float, gen: torch.Generator):
    xy = torch.rand(n_rois, 2, generator=gen) * torch.tensor([width * stride * 1.2, height * stride * 1.2]) - 20
    wh = torch.rand(n_rois, 2, generator=gen) * 100 + torch.rand(n_rois, 1, generator=gen) * 10
    boxes = torch.cat([torch.randint(0, n_images, (n_rois, 1), generator=gen).float(), xy, xy + wh], 1)
    boxes[:5, 3:] = boxes[:5, 1:3]  # empty boxes
    boxes[5:8, 1:] -= 500  # wholly outside the map: nothing sampled
    boxes[8, 1:] = torch.tensor([-5.0, -5.0, width * stride + 5, height * stride + 5])  # the whole map and beyond
    return boxes


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2, -1])
@pytest.mark.parametrize("shape, stride, output", [((2, 8, 20, 30), 4, (7, 7)), ((3, 5, 7, 9), 16, (7, 5)),
                                                   ((1, 3, 50, 40), 1, (14, 14))])
def test_equals_torchvision_forward_and_backward(aligned, sampling_ratio, shape, stride, output):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, generator=gen, requires_grad=True)
    boxes = _boxes(40, shape[0], shape[2], shape[3], stride, gen).double()
    ref = tv_roi_align(x, boxes, output, 1 / stride, sampling_ratio, aligned)
    ours = ra.roi_align(x, boxes, output, 1 / stride, sampling_ratio, aligned)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
    (g_ref,) = torch.autograd.grad(ref, x, grad)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    assert g_ref.abs().sum() > 0
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-12)


def test_backward_in_chunks_and_channels_last(monkeypatch):
    """Many groups (RoIs of similar size) and small chunks (the memory bound) give the same gradient; a
    channels-last map gets one back."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, 24, 24, generator=gen).to(memory_format=torch.channels_last).requires_grad_()
    boxes = _boxes(30, 2, 24, 24, 4, gen)
    grad = torch.randn(30, 6, 7, 7, generator=gen)
    (g_ref,) = torch.autograd.grad(tv_roi_align(x, boxes, 7, 0.25, 0, True), x, grad)
    monkeypatch.setattr(ra, "GROUP", 7)
    monkeypatch.setattr(ra, "WINDOW_ELEMENTS", 6 * 8 * 8 * 3)  # a few RoIs per chunk, one for the largest
    (g_ours,) = torch.autograd.grad(ra.roi_align(x, boxes, 7, 0.25, 0, True), x, grad)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-5)
    assert g_ours.is_contiguous(memory_format=torch.channels_last)


def test_no_rois_and_no_grad():
    x = torch.randn(1, 4, 10, 10, requires_grad=True)
    out = ra.roi_align(x, torch.zeros(0, 5), 7, 1.0, 0, True)
    assert out.shape == (0, 4, 7, 7)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    with torch.no_grad():
        boxes = torch.tensor([[0.0, 1, 1, 8, 8]])
        torch.testing.assert_close(ra.roi_align(x, boxes, 7, 1.0, 0, True), tv_roi_align(x, boxes, 7, 1.0, 0, True))
