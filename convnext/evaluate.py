"""Top-1/top-5 with the official protocol, correct under torchrun: each process reads a disjoint shard of the
evaluation set (rank::world, no padding) and the counts are summed over processes, so no image counts twice."""
from __future__ import annotations

import torch
from torch import nn

from convnext.distributed import all_sum
from convnext.errors import UserError
from convnext.runtime import Runtime


@torch.no_grad()
def evaluate(model: nn.Module, batches, rt: Runtime) -> dict:
    """{"top1", "top5" (percent), "loss" (mean cross-entropy), "n" (images)} over `batches` of (x, y)."""
    was_training = model.training
    model.eval()
    n = correct1 = correct5 = loss_sum = 0.0
    for x, y in batches:
        x, y = rt.images(x), rt.to_device(y)
        with rt.autocast():
            logits = model(x)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top5 == y[:, None]
        correct1 += hit[:, 0].sum().item()
        correct5 += hit.any(1).sum().item()
        n += len(y)
    n, correct1, correct5, loss_sum = all_sum([n, correct1, correct5, loss_sum], rt.dist)
    model.train(was_training)
    if n == 0:
        raise UserError("the evaluation set is empty")
    return {"top1": 100 * correct1 / n, "top5": 100 * correct5 / n, "loss": loss_sum / n, "n": int(n)}
