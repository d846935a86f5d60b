"""Local training and evaluation loops shared by clients and the server's central evaluation."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F


def _autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op on CPU, where bf16 would only be slower."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train(
    model: nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    epochs: int,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    proximal_mu: float = 0.0,
) -> float:
    """Train in place; return the mean training loss (cross-entropy, without the proximal term).

    With proximal_mu > 0, FedProx's term mu/2 * ||w - w_global||^2 (w_global: the weights the
    client received) takes its own step every step, beside the optimizer's step on the loss
    rather than through it. Through Adam, the term's small gradients would be rescaled into
    full-size steps back to w_global (the reason AdamW decouples weight decay): clients then
    barely move, and any mu > 0, however small, is far from FedAvg. The step is the term's exact
    proximal step at the optimizer's learning rate, w -= lr*mu / (1 + lr*mu) * (w - w_global):
    to first order the paper's SGD step lr*mu * (w - w_global), stable for every mu, and FedAvg
    as mu -> 0.
    """
    model.train()
    anchors = (
        [[p.detach().clone() for p in group["params"]] for group in optimizer.param_groups] if proximal_mu > 0 else None
    )
    total, count = 0.0, 0
    for _ in range(epochs):
        for batch in loader:
            batch = _to(batch, device)
            labels = batch.pop("labels")
            with _autocast(device):
                loss = F.cross_entropy(model(**batch).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if anchors is not None:
                _proximal_step(optimizer, anchors, proximal_mu)
            optimizer.step()
            total += loss.item() * len(labels)
            count += len(labels)
    return total / max(count, 1)


@torch.no_grad()
def _proximal_step(optimizer: torch.optim.Optimizer, anchors: list[list[torch.Tensor]], mu: float) -> None:
    """w <- w - lr*mu / (1 + lr*mu) * (w - w_global) for every parameter, at its group's learning rate."""
    for group, group_anchors in zip(optimizer.param_groups, anchors):
        strength = float(group["lr"]) * mu
        for p, anchor in zip(group["params"], group_anchors):
            p.lerp_(anchor, strength / (1.0 + strength))


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[dict[str, torch.Tensor]], device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over the loader."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for batch in loader:
        batch = _to(batch, device)
        labels = batch.pop("labels")
        with _autocast(device):
            logits = model(**batch).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(dim=1) == labels).sum().item()
        count += len(labels)
    if count == 0:
        return float("nan"), float("nan")
    return loss_sum / count, correct / count
