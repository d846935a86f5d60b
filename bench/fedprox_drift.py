"""Why FedProx with Adam used to collapse: one client's local epoch from the initial global model,
with FedProx's term coupled into the loss (the old implementation) and as fedsim applies it now
(its own proximal step beside the optimizer's), for Adam and for plain SGD.

    python bench/fedprox_drift.py            # bow, client 0 of 10 on full IMDB

Prints ||w - w_global|| of the embedding after the epoch, as a share of FedAvg's (mu = 0).
"""

from __future__ import annotations

import torch
from common import compose, machine, table
from hydra.utils import instantiate
from torch.nn import functional as F

from fedsim.config.settings import DataSettings
from fedsim.data.loader import load_data
from fedsim.data.prepare import prepare_data
from fedsim.model.train import train

MUS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
OPTIMIZERS = {"adam": (torch.optim.Adam, 0.01), "sgd": (torch.optim.SGD, 1.0)}


def coupled_epoch(model, loader, optimizer, mu: float) -> None:
    """The old implementation: mu/2 ||w - w_global||^2 added to every step's loss."""
    anchor = [p.detach().clone() for p in model.parameters()]
    for batch in loader:
        labels = batch.pop("labels")
        loss = F.cross_entropy(model(**batch), labels)
        loss = loss + 0.5 * mu * sum((p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def drift(cfg, loader, optimizer_name: str, mu: float, coupled: bool) -> float:
    torch.manual_seed(0)
    loader.reseed(0)
    model = instantiate(cfg.model.net)
    start = model.embedding.weight.detach().clone()
    cls, lr = OPTIMIZERS[optimizer_name]
    optimizer = cls(model.parameters(), lr=lr)
    if coupled and mu > 0:
        coupled_epoch(model, loader, optimizer, mu)
    else:
        train(model, loader, 1, optimizer, torch.device("cpu"), proximal_mu=mu)
    return float((model.embedding.weight.detach() - start).norm())


def main() -> None:
    print(f"machine: {machine()}")
    torch.set_num_threads(1)
    cfg = compose(["num_clients=10"])
    loader, _ = load_data(prepare_data(DataSettings.of(cfg)), 0, int(cfg.client.batch_size))
    rows = []
    for name in OPTIMIZERS:
        fedavg = drift(cfg, loader, name, 0.0, coupled=False)
        for coupled in (True, False):
            rows.append(
                {
                    "optimizer": f"{name} (lr {OPTIMIZERS[name][1]})",
                    "proximal term": "in the loss (old)" if coupled else "own step (now)",
                    **{f"mu={mu:g}": drift(cfg, loader, name, mu, coupled) / fedavg for mu in MUS},
                }
            )
        print(table(rows[-2:]), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
