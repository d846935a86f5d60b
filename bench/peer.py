"""Ours vs the peer pattern: the same run where every fit and evaluate reloads its partition from
the raw dataset, re-tokenizes it with a freshly loaded tokenizer and re-creates the model from
disk, as Flower's quickstart-huggingface example does in `client_fn`/`load_data`.

    python bench/peer.py                           # minilm on a subset
    python bench/peer.py -- num_clients=8          # overrides for both runs

Both runs go through the same Flower simulation, server, strategy and training loop; only the
client's per-message setup differs (the peer's `client_fn` is passed in through
fedsim.run.experiment.build). Reports seconds per round and the speedup.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import MINILM, compose, machine, run_harness, table

CONFIG = MINILM


def peer_client_fn(featurizer: dict, imdb_path: str, train_size: int | None):
    """A `client_fn` whose clients set everything up again on every message, as the peer pattern does."""

    def client_fn(context):
        import numpy as np
        import torch
        from hydra.utils import instantiate

        from fedsim.client.client import settings_for, step_seed
        from fedsim.data.imdb import select_rows
        from fedsim.data.loader import Loader
        from fedsim.data.partition import partition_rows, train_val_split
        from fedsim.model.train import evaluate, train
        from fedsim.model.weights import get_weights, set_weights

        settings = settings_for(context.run_config)
        partition_id = int(context.node_config["partition-id"])

        class PeerClient:
            def _setup(self) -> tuple[torch.nn.Module, Loader, Loader]:
                from datasets import load_dataset

                torch.set_num_threads(settings.num_threads)
                raw = load_dataset("parquet", data_files={"train": f"{imdb_path}/train.parquet"})["train"]
                chosen = select_rows(len(raw), train_size, settings.seed)
                train_rows, val_rows = train_val_split(
                    partition_rows(settings.prepared.partition_file, partition_id),
                    settings.prepared.val_fraction,
                    settings.seed,
                    partition_id,
                )
                mine = np.concatenate([train_rows, val_rows])
                part = raw.select(chosen[mine].tolist())
                features = instantiate(featurizer)(part["text"], np.asarray(part["label"]))
                model = instantiate(settings.net).to(settings.device)
                ntrain = len(train_rows)
                return (
                    model,
                    Loader(features, np.arange(ntrain), settings.batch_size, shuffle=True),
                    Loader(features, np.arange(ntrain, len(mine)), 4 * settings.batch_size, shuffle=False),
                )

            def fit(self, weights, config):
                model, trainloader, _ = self._setup()
                set_weights(model, weights)
                seed = step_seed(settings.seed, int(config.get("server-round", 0)), partition_id)
                torch.manual_seed(seed)
                trainloader.reseed(seed)
                optimizer = instantiate(settings.optimizer)(model.parameters(), lr=settings.lr)
                loss = train(model, trainloader, settings.local_epochs, optimizer, settings.device)
                return get_weights(model), trainloader.num_examples, {"train-loss": loss, "fit-time": 0.0}

            def evaluate(self, weights, config):
                model, _, valloader = self._setup()
                set_weights(model, weights)
                loss, accuracy = evaluate(model, valloader, settings.device)
                return loss, valloader.num_examples, {"accuracy": accuracy}

        return PeerClient()

    return client_fn


def child(mode: str, overrides: list[str]) -> None:
    """Run one experiment in this process, with our clients or the peer's (given to fedsim.run.experiment.build)."""
    from omegaconf import OmegaConf

    from fedsim.run.steps import run_experiment
    from fedsim.runtimes.simulation import simulate

    run_dir = Path(next(o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")))
    cfg = compose([o for o in overrides if not o.startswith("hydra.")])
    parts = {}
    if mode == "peer":
        parts["client_fn"] = peer_client_fn(
            OmegaConf.to_container(cfg.model.featurizer, resolve=True), str(cfg.data.path), cfg.data.train_size
        )
    run_experiment(cfg, run_dir, federate=simulate, **parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extra", nargs="*", help="overrides for both runs (after --)")
    args = parser.parse_args()
    overrides = CONFIG + args.extra
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="fedsim-peer-") as tmp:
        runs = {
            mode: run_harness(overrides, Path(tmp) / mode, script=(__file__, "--child", mode))
            for mode in ("ours", "peer")
        }
    per_round = {mode: run.rounds_s / (len(run.rounds) - 1) for mode, run in runs.items()}
    print(
        table(
            [
                {
                    "config": " ".join(overrides),
                    "ours s/round": per_round["ours"],
                    "peer s/round": per_round["peer"],
                    "speedup per round": per_round["peer"] / per_round["ours"],
                    "ours wall s": runs["ours"].wall_s,
                    "peer wall s": runs["peer"].wall_s,
                    "acc ours": runs["ours"].final_accuracy,
                    "acc peer": runs["peer"].final_accuracy,
                }
            ]
        )
    )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
    else:
        main()
