"""checkpoint.safetensors: what a run needs to continue after its last completed round.

It holds the global model, the strategy's own state (FedAdam's and FedYogi's moments, FedAvgM's
momentum: every array the strategy object keeps), the round, and each output's resume state. No
random state is stored because none carries over between rounds: clients, participants, attacks
and faults draw from (seed, round, ...) afresh. It is replaced atomically after every round
(written beside it, fsync'ed, renamed), so a kill at any moment leaves the previous one whole.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy
from safetensors import safe_open
from safetensors.numpy import save_file

from fedsim.messages.records import to_array
from fedsim.outputs.base import Callback, Phase, numbered, state_keys
from fedsim.privacy.dp import inner_strategy
from fedsim.rundir import CHECKPOINT
from fedsim.server.record import RoundRecord
from fedsim.system.files import replaced

FORMAT = 2  # 2: outputs' states keyed by name (state_keys); 1: by place, `INDEX:CLASS`


def _as_items(value: Any) -> tuple[str, dict[str, np.ndarray]] | None:
    """(how the attribute holds arrays, its arrays by key), or None for an attribute that holds none."""
    if isinstance(value, np.ndarray):
        return "array", {"": value}
    if isinstance(value, ArrayRecord):
        return "record", {k: a.numpy() for k, a in value.items()}
    if isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
        return "dict", value
    if isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
        return "list", {str(i): v for i, v in enumerate(value)}
    return None


def _from_items(kind: str, items: dict[str, np.ndarray]) -> Any:
    if kind == "array":
        return items[""]
    if kind == "record":
        return ArrayRecord({k: to_array(v) for k, v in items.items()})
    return list(items.values()) if kind == "list" else items


def strategy_state(strategy: Strategy) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """The aggregating strategy's array-valued attributes (inside a DP wrapper, whose own state is
    fedsim.outputs.privacy_budget.PrivacyBudget's) as flat tensors, and how to rebuild each attribute."""
    tensors, layout = {}, {}
    for attr, value in vars(inner_strategy(strategy)).items():
        held = _as_items(value)
        if held is None:
            continue
        kind, items = held
        layout[attr] = {"kind": kind, "keys": list(items)}
        tensors.update({f"strategy/{attr}/{key}": np.ascontiguousarray(v) for key, v in items.items()})
    return tensors, layout


def restore_strategy(strategy: Strategy, tensors: dict[str, np.ndarray], layout: dict[str, dict]) -> None:
    for attr, spec in layout.items():
        setattr(
            inner_strategy(strategy),
            attr,
            _from_items(spec["kind"], {key: tensors[f"strategy/{attr}/{key}"] for key in spec["keys"]}),
        )


@dataclass
class Checkpoint:
    """The state after round `server_round`: global weights in layer order, strategy, outputs."""

    server_round: int
    weights: list[np.ndarray]
    strategy_tensors: dict[str, np.ndarray]
    strategy_layout: dict[str, dict]
    outputs: dict[str, dict]

    @classmethod
    def load(cls, run_dir: Path, names: Sequence[str]) -> Checkpoint | None:
        path = Path(run_dir) / CHECKPOINT
        if not path.exists():
            return None
        with safe_open(str(path), "np") as f:
            meta = json.loads(f.metadata()["fedsim"])
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        return cls(
            server_round=meta["round"],
            weights=[tensors[f"model/{n}"] for n in names],
            strategy_tensors={k: v for k, v in tensors.items() if k.startswith("strategy/")},
            strategy_layout=meta["strategy"],
            outputs=meta["outputs"] if meta.get("format", 1) >= 2 else _by_name(meta["outputs"]),
        )

    def save(self, run_dir: Path, names: Sequence[str]) -> None:
        path = Path(run_dir) / CHECKPOINT
        meta = {"format": FORMAT, "round": self.server_round, "strategy": self.strategy_layout, "outputs": self.outputs}
        tensors = {f"model/{n}": np.ascontiguousarray(w) for n, w in zip(names, self.weights)}
        with replaced(path) as tmp:
            save_file({**tensors, **self.strategy_tensors}, str(tmp), metadata={"fedsim": json.dumps(meta)})


def checkpoint_round(run_dir: Path) -> int | None:
    """The round of `run_dir`'s checkpoint, read from its header alone; None without one."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        return None
    with safe_open(str(path), "np") as f:
        return int(json.loads(f.metadata()["fedsim"])["round"])


def _by_name(by_place: dict[str, dict]) -> dict[str, dict]:
    """A format-1 checkpoint's output states (`INDEX:CLASS`) under their state keys: places in order, numbered
    as `state_keys` numbers a repeated class."""
    places = sorted(by_place, key=lambda key: int(key.split(":", 1)[0]))
    return dict(zip(numbered([key.split(":", 1)[1] for key in places]), (by_place[key] for key in places)))


class Checkpointer(Callback):
    """Writes checkpoint.safetensors after every round; alone in the last phase, so it sees the others' state.

    `outputs` are the run's callbacks; each state is saved under the callback's name (state_keys).
    """

    phase = Phase.CHECKPOINT

    def __init__(self, run_dir: Path, strategy: Strategy, outputs: Sequence[Callback]) -> None:
        self.run_dir = Path(run_dir)
        self.strategy = strategy
        self.outputs = list(outputs)

    def on_round_end(self, record: RoundRecord) -> None:
        tensors, layout = strategy_state(self.strategy)
        Checkpoint(
            server_round=record.server_round,
            weights=record.global_weights,
            strategy_tensors=tensors,
            strategy_layout=layout,
            outputs={key: c.state() for key, c in zip(state_keys(self.outputs), self.outputs)},
        ).save(self.run_dir, record.names)
