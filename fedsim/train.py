"""Local training and evaluation loops shared by clients and the server's central evaluation."""

from __future__ import annotations

from typing import Iterable

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

    With proximal_mu > 0 the FedProx term mu/2 * ||w - w_global||^2 is added to every step's loss,
    w_global being the weights the client received.
    """
    model.train()
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    total, count = 0.0, 0
    for _ in range(epochs):
        for batch in loader:
            batch = _to(batch, device)
            labels = batch.pop("labels")
            with _autocast(device):
                loss = F.cross_entropy(model(**batch).float(), labels)
            objective = loss
            if anchor is not None:
                prox = sum((p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor))
                objective = loss + 0.5 * proximal_mu * prox
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            total += loss.item() * len(labels)
            count += len(labels)
    return total / max(count, 1)


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


