"""One pfl-research run of a task that bench/pfl.py exported from fedsim: runs in pfl's own venv.

It imports nothing of fedsim but `fedsim/model/nets.py` and `fedsim/data/features.py` (plain PyTorch and
NumPy, loaded by file path: the same model and the same batches) and reads
everything else from the export: the initial weights, every client's train and validation
features, the round's clients, the order each client reads its rows in, and the torch seed of its
local training. pfl then does what it does best: one process trains the cohort's users one after
another on one model, sums their updates and evaluates centrally. One JSON line per round goes to
stdout, with wall-clock stamps (`time.time()`) that the parent compares with its own launch time.

Under `torch.distributed.run --nproc_per_node N` it runs as N pfl workers (gloo): each trains its
share of every cohort (pfl deals the i-th user of a round to worker i mod N),
evaluates its share of the test split, and pfl all-reduces the sums.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from pfl.aggregate.simulate import SimulatedBackend
from pfl.aggregate.weighting import WeightByDatapoints
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
from pfl.callback.base import TrainingProcessCallback
from pfl.common_types import Population
from pfl.data.dataset import Dataset
from pfl.data.federated_dataset import FederatedDataset
from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
from pfl.internal import ops
from pfl.metrics import Metrics, StringMetricName, Weighted
from pfl.model.pytorch import PyTorchModel
from safetensors.numpy import load_file
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[2]


def fedsim_module(name: str):
    """A module of fedsim (model/nets, data/features: plain PyTorch and NumPy) without the fedsim package,
    whose __init__ needs OmegaConf, absent here."""
    spec = importlib.util.spec_from_file_location(f"fedsim_{name.replace('/', '_')}", ROOT / "fedsim" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class OrderedRows(Dataset):
    """A user's rows in a fixed order (fedsim's shuffle of that client and round); the torch seed of
    its local training is set when training starts reading it, as fedsim's client does."""

    def __init__(self, rows, order: np.ndarray, user_id: str, seed: int | None = None) -> None:
        super().__init__(raw_data=[order], user_id=user_id)
        self.rows, self.order, self.seed = rows, order, seed  # rows: fedsim's Features of the split

    def __len__(self) -> int:
        return len(self.order)

    def iter(self, batch_size):  # noqa: A003 - pfl's name
        if self.seed is not None:
            torch.manual_seed(self.seed)
        batch_size = batch_size or len(self.order)
        for start in range(0, len(self.order), batch_size):
            yield self.rows.batch(self.order[start : start + batch_size], self.rows.labels)


class Classifier(torch.nn.Module):
    """The fedsim model with the `loss` and `metrics` pfl's PyTorchModel calls."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, **inputs):
        return self.net(**inputs)

    def loss(self, labels, **inputs):
        return F.cross_entropy(self.net(**inputs).float(), labels)

    @torch.no_grad()
    def metrics(self, labels, **inputs):
        logits = self.net(**inputs).float()
        return {
            "loss": Weighted(F.cross_entropy(logits, labels, reduction="sum").item(), len(labels)),
            "accuracy": Weighted((logits.argmax(dim=1) == labels).sum().item(), len(labels)),
        }


class EveryRound(TrainingProcessCallback):
    """Central evaluation of the initial model and after every round, and a JSON line per round."""

    def __init__(self, test: Dataset, batch_size: int, rank: int) -> None:
        self.test, self.params, self.rank = test, NNEvalHyperParams(local_batch_size=batch_size), rank

    def _evaluate(self, model, server_round: int) -> None:
        metrics = ops.all_reduce_metrics(
            model.evaluate(self.test, lambda n: StringMetricName(f"central {n}"), self.params)
        )
        if self.rank:
            return
        print(
            json.dumps(
                {
                    "round": server_round,
                    "time": time.time(),
                    "central_loss": metrics[StringMetricName("central loss")].overall_value,
                    "central_accuracy": metrics[StringMetricName("central accuracy")].overall_value,
                }
            ),
            flush=True,
        )

    def on_train_begin(self, *, model) -> Metrics:
        self._evaluate(model, 0)
        return Metrics()

    def after_central_iteration(self, aggregate_metrics, model, *, central_iteration: int):
        self._evaluate(model, central_iteration + 1)
        return False, Metrics()


class FedAvg(FederatedAveraging):
    """pfl's FedAvg without its evaluation of each training user's data before and after local
    training: fedsim does no such work (its federated evaluation is the validation cohort's)."""

    def simulate_one_user(self, model, user_dataset, central_context):
        if central_context.population == Population.TRAIN:
            central_context = dataclasses.replace(central_context, do_evaluation=False)
        return super().simulate_one_user(model, user_dataset, central_context)


def schedule_sampler(user_ids: list[str]):
    """pfl's user sampler: the exported clients of every round, in order."""
    it = iter(user_ids)
    return lambda: next(it)


def main(export: Path) -> None:
    meta = json.loads((export / "meta.json").read_text())
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    torch.set_num_threads(max(1, meta["threads"] // world))
    rounds = meta["num_rounds"]
    features = fedsim_module("data/features").FEATURE_TYPES[meta["kind"]]
    orders = load_file(str(export / "orders.safetensors"))
    splits: dict[str, dict] = {}  # "c{p}/train" -> that split's arrays, in one pass (5,000 clients: 30,000 arrays)
    for key, array in load_file(str(export / "clients.safetensors")).items():
        prefix, name = key.rsplit("/", 1)
        splits.setdefault(prefix, {})[name] = array
    train = {p: features(**splits[f"c{p}/train"]) for p in range(meta["num_clients"])}
    val = {p: features(**splits[f"c{p}/val"]) for p in range(meta["num_clients"])}
    test_rows = features(**load_file(str(export / "test.safetensors")))
    seeds = meta["seeds"]

    def train_user(user_id: str) -> OrderedRows:
        server_round, p = (int(x) for x in user_id.split(":"))
        return OrderedRows(train[p], orders[f"r{server_round}/c{p}"], user_id, seeds[user_id])

    def val_user(user_id: str) -> OrderedRows:
        p = int(user_id.split(":")[1])
        return OrderedRows(val[p], np.arange(len(val[p].labels)), user_id)

    # Every worker samples the whole sequence; pfl keeps the i-th user of a cohort on worker i mod N.
    train_ids = [f"{r}:{p}" for r in range(1, rounds + 1) for p in meta["train"][str(r)]]
    val_ids = [f"{r}:{p}" for r in range(1, rounds + 1) for p in meta["evaluate"][str(r)]]
    backend = SimulatedBackend(
        training_data=FederatedDataset(train_user, schedule_sampler(train_ids)),
        val_data=FederatedDataset(val_user, schedule_sampler(val_ids)),
        postprocessors=[WeightByDatapoints()],
    )

    net = getattr(fedsim_module("model/nets"), meta["net"]["class"])(**meta["net"]["kwargs"])
    net.load_state_dict({k: torch.from_numpy(v) for k, v in load_file(str(export / "init.safetensors")).items()})
    module = Classifier(net)
    optimizer = getattr(torch.optim, meta["optimizer"]["class"])
    model = PyTorchModel(
        module,
        local_optimizer_create=partial(optimizer, **meta["optimizer"]["kwargs"]),
        central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0),
    )
    test = OrderedRows(test_rows, np.arange(len(test_rows.labels))[rank::world], "test")
    FedAvg().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=rounds,
            evaluation_frequency=1,
            train_cohort_size=len(meta["train"]["1"]),
            val_cohort_size=len(meta["evaluate"]["1"]),
        ),
        backend=backend,
        model=model,
        model_train_params=NNTrainHyperParams(
            local_learning_rate=meta["lr"], local_num_epochs=meta["local_epochs"], local_batch_size=meta["batch_size"]
        ),
        model_eval_params=NNEvalHyperParams(local_batch_size=4 * meta["batch_size"]),
        callbacks=[EveryRound(test, 4 * meta["batch_size"], rank)],
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
