"""Malicious clients: which ones, and what they do.

An attack is built from the `attack` config group with `hydra.utils.instantiate`. Data poisoning
changes the labels a malicious client trains on (its data path); model poisoning transforms the
weights it returns (a wrapper around the honest client). An omniscient attack holds both halves:
its clients reply without training, and its `forge`, run by the server between the round's replies
and the strategy (fedsim.server.adversary), computes what they submit from the honest updates.
With attack=none nothing here runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedsim.byzantine import omniscient
from fedsim.byzantine.vectors import Matrix
from fedsim.config.counts import num_malicious

NUM_CLASSES = 2


_SELECT, _LABELS, _WEIGHTS = 0xA7, 0x1A, 0x3E  # separate random streams per purpose


def malicious_clients(node_ratio: float, num_clients: int, seed: int) -> list[int]:
    """The malicious partition ids: drawn from the seed alone, fixed for the whole run."""
    count = num_malicious(node_ratio, num_clients)
    chosen = np.random.default_rng([seed, _SELECT]).choice(num_clients, size=count, replace=False)
    return sorted(int(c) for c in chosen)


def malicious_of(attack: Attack, num_clients: int, seed: int) -> list[int]:
    """The run's malicious partition ids: none unless the attack poisons data or the model."""
    if not (attack.poisons_data or attack.poisons_model):
        return []
    return malicious_clients(attack.node_ratio, num_clients, seed)


@dataclass(frozen=True)
class Attack:
    """No attack: the base every attack extends. `name` is what clients.csv and layers.csv record."""

    name: str = "none"
    node_ratio: float = 0.0
    data_ratio: float = 0.0

    poisons_data = False
    poisons_model = False
    trains = True  # False: returns its weights without local training
    omniscient = False  # True: the server-side step forges its replies (`forge`, fedsim.server.adversary)

    def poison_labels(
        self, labels: np.ndarray, rows: np.ndarray, seed: int, partition_id: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(labels with some of `rows` replaced, the replaced rows); labels index the whole feature table."""
        return labels, rows[:0]

    def poison_update(
        self, weights: list[np.ndarray], start: list[np.ndarray], seed: int, server_round: int, partition_id: int
    ) -> list[np.ndarray]:
        """What a malicious client returns instead of `weights`, trained from the global `start`: each floating
        tensor through `poison_tensor` (in order, drawing from one generator per client and round), every
        other tensor (integer buffers) as it is."""
        if not self.poisons_model:
            return weights
        rng = self.rng(seed, _WEIGHTS, server_round, partition_id)
        return [
            self.poison_tensor(w, s, rng) if is_float else w for w, s, is_float in zip(weights, start, _floats(weights))
        ]

    def poison_tensor(self, weights: np.ndarray, start: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One floating tensor of the update as a model-poisoning attack returns it."""
        return weights

    def rng(self, seed: int, stream: int, *keys: int) -> np.random.Generator:
        return np.random.default_rng([seed, stream, *keys])


@dataclass(frozen=True)
class LabelPoisoning(Attack):
    """Replaces the labels of exactly round(data_ratio x n) of the client's training samples.

    mode "flip": each chosen label becomes the other class, so every one of them changes.
    mode "random": each chosen label is drawn uniformly from the classes (the study's "random"),
    so with two classes about half of them keep their true value.
    """

    mode: str = "flip"
    poisons_data = True

    def poison_labels(
        self, labels: np.ndarray, rows: np.ndarray, seed: int, partition_id: int
    ) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng(seed, _LABELS, partition_id)
        count = int(math.floor(self.data_ratio * len(rows) + 0.5 + 1e-9))
        chosen = np.sort(rng.choice(rows, size=min(count, len(rows)), replace=False))
        poisoned = labels.copy()
        if self.mode == "flip":
            poisoned[chosen] = NUM_CLASSES - 1 - labels[chosen]
        else:
            poisoned[chosen] = rng.integers(0, NUM_CLASSES, size=len(chosen))
        return poisoned, chosen


def _floats(arrays: list[np.ndarray]) -> list[bool]:
    return [np.issubdtype(a.dtype, np.floating) for a in arrays]


@dataclass(frozen=True)
class RandomWeights(Attack):
    """Returns random weights instead of training: each tensor drawn from N(0, (scale * s)^2), s the
    global tensor's std (its |mean| where the tensor is constant, else 1e-2). scale = 1: the same
    shapes and scale as the model's own weights."""

    scale: float = 1.0
    poisons_model = True
    trains = False

    def poison_tensor(self, weights: np.ndarray, start: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not start.size:
            return weights
        spread = float(np.std(start)) or float(np.abs(np.mean(start))) or 1e-2
        return rng.normal(0.0, self.scale * spread, size=start.shape).astype(start.dtype)


@dataclass(frozen=True)
class GaussianNoise(Attack):
    """Adds N(0, std^2) noise to every element of its update (so to its weights)."""

    std: float = 0.1
    poisons_model = True

    def poison_tensor(self, weights: np.ndarray, start: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (weights + rng.normal(0.0, self.std, size=weights.shape)).astype(weights.dtype)


@dataclass(frozen=True)
class Scaling(Attack):
    """Multiplies its update by `scale` (model replacement): start + scale * (weights - start)."""

    scale: float = 10.0
    poisons_model = True

    def poison_tensor(self, weights: np.ndarray, start: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (start + self.scale * (weights - start)).astype(weights.dtype)


@dataclass(frozen=True)
class SignFlip(Scaling):
    """Returns the negated update: start - (weights - start), i.e. scaling by -1."""

    scale: float = -1.0


@dataclass(frozen=True)
class Omniscient(Attack):
    """An omniscient, colluding attack (docs/explanation/byzantine.md): its clients do not train and reply with the
    model they were sent; the server replaces their replies with `forge`'s update, the same for all of them."""

    poisons_model = True
    trains = False
    omniscient = True

    def forge(self, honest: Matrix, n: int, f: int, rng: np.random.Generator) -> np.ndarray:
        """The malicious update for a cohort of n with f attackers, from the honest updates (a row each, a dense or
        a sparse matrix: fedsim.byzantine.vectors)."""
        raise NotImplementedError


@dataclass(frozen=True)
class ALIE(Omniscient):
    """A Little Is Enough: mean + z * std of the honest updates; z None: the paper's z_max from n and f."""

    z: float | None = None

    def forge(self, honest: Matrix, n: int, f: int, rng: np.random.Generator) -> np.ndarray:
        return omniscient.alie(honest, self.z if self.z is not None else omniscient.alie_z(n, f))


@dataclass(frozen=True)
class IPM(Omniscient):
    """Inner-product manipulation: -epsilon times the honest mean."""

    epsilon: float = 0.1

    def forge(self, honest: Matrix, n: int, f: int, rng: np.random.Generator) -> np.ndarray:
        return omniscient.ipm(honest, self.epsilon)


@dataclass(frozen=True)
class MinMax(Omniscient):
    """Min-Max: mean + gamma * p, the largest gamma whose farthest honest update is no farther than any two honest
    updates are apart; p by `direction` (unit_vec, std, sign)."""

    direction: str = "std"
    tolerance: float = 1e-6
    objective = "minmax"

    def forge(self, honest: Matrix, n: int, f: int, rng: np.random.Generator) -> np.ndarray:
        return omniscient.agr_agnostic(honest, self.direction, self.objective, self.tolerance)[0]


@dataclass(frozen=True)
class MinSum(MinMax):
    """Min-Sum: as Min-Max, bounding the sum of squared distances to the honest updates instead of the largest, by
    the smallest honest update's such sum (`bound` min: the authors' code) or the largest (max: the paper's text)."""

    bound: str = "min"
    objective = "minsum"

    def forge(self, honest: Matrix, n: int, f: int, rng: np.random.Generator) -> np.ndarray:
        return omniscient.agr_agnostic(honest, self.direction, self.objective, self.tolerance, self.bound)[0]


@dataclass(frozen=True)
class Mimic(Omniscient):
    """Mimic: every attacker copies one honest update (`target`: by position; None: the paper's choice)."""

    target: int | None = None

    def forge(self, honest: Matrix, n: int, f: int, rng: np.random.Generator) -> np.ndarray:
        return omniscient.mimic(honest, self.target)
