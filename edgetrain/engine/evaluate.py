"""Per-epoch evaluation: loss, top-1, top-5 (more than 5 classes) and correct counts."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from edgetrain._modules import eval_mode

__all__ = ["accumulate_topk", "evaluate"]


def accumulate_topk(
    outputs: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...]
) -> list[torch.Tensor]:
    """Number of samples whose target is among the top-k outputs, for each k (tensors)."""
    maxk = min(max(ks), outputs.shape[1])
    top = outputs.topk(maxk, dim=1).indices
    hits = top.eq(targets.unsqueeze(1))
    return [hits[:, : min(k, maxk)].any(dim=1).sum() for k in ks]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    num_classes: int | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Evaluate ``model`` in eval mode and restore its previous mode.

    Args:
        model: the network.
        batches: iterable of ``(inputs, targets)``.
        loss_fn: a loss with ``reduction="mean"``; it is weighted by batch size.
        device: where to run.
        num_classes: report top-5 when this is greater than 5 (read from outputs if None).
        reduce: optional in-place sum across processes (distributed evaluation).

    Returns:
        ``loss``, ``top1`` (percent), ``correct``, ``samples`` and ``top5`` when classes > 5.
    """
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    classes = num_classes
    with eval_mode(model):
        for inputs, targets in batches:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            outputs = model(inputs)
            classes = classes or outputs.shape[1]
            top1, top5 = accumulate_topk(outputs, targets, (1, 5))
            n = targets.shape[0]
            sums += torch.stack(
                [
                    loss_fn(outputs, targets).double() * n,
                    top1.double(),
                    top5.double(),
                    torch.tensor(float(n), dtype=torch.float64, device=device),
                ]
            )
    if reduce is not None:
        reduce(sums)
    loss, correct, correct5, n = sums.tolist()
    n = max(n, 1.0)
    metrics = {
        "loss": loss / n,
        "top1": 100.0 * correct / n,
        "correct": int(correct),
        "samples": int(n),
    }
    if classes is not None and classes > 5:
        metrics["top5"] = 100.0 * correct5 / n
    return metrics
