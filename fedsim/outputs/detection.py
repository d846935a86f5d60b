"""A detection baseline: unsupervised detectors over clients.csv's update statistics, scored against
the ground truth (is_malicious) per round.

Each detector gives every client of a round a score (higher = more suspicious) and flags the
clients whose score exceeds its stated threshold:

- norm_zscore: |norm_zscore|, flagged above 1 (with k of n clients alike and far out, their |z| is
  sqrt((n - k) / k), 1.53 for 3 of 10, so a threshold of 2 would never fire at 30%);
- cosine_to_mean: -cosine_to_mean, flagged above 0 (the update points away from the others' mean);
- distance_to_median: distance_to_median / the round's median of it, flagged above 2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsim.outputs.base import Callback, Phase
from fedsim.outputs.columns import DETECTION_COLUMNS
from fedsim.system.files import write_csv


def _relative_distance(rows: Sequence[dict]) -> np.ndarray:
    distance = np.array([r["distance_to_median"] for r in rows], dtype=float)
    median = np.median(distance)
    return distance / median if median > 0 else np.zeros_like(distance)


DETECTORS: dict[str, tuple[Callable[[Sequence[dict]], np.ndarray], float]] = {
    "norm_zscore": (lambda rows: np.abs([r["norm_zscore"] for r in rows]), 1.0),
    "cosine_to_mean": (lambda rows: -np.array([r["cosine_to_mean"] for r in rows], dtype=float), 0.0),
    "distance_to_median": (_relative_distance, 2.0),
}


def detection_rows(client_rows: Sequence[dict]) -> list[dict]:
    """One row per detector and round that has at least one malicious and one honest client."""
    rounds: dict[int, list[dict]] = {}
    for row in client_rows:
        rounds.setdefault(int(row["round"]), []).append(row)
    mixed = {}
    for server_round, rows in sorted(rounds.items()):
        truth = np.array([bool(r["is_malicious"]) for r in rows])
        if truth.any() and not truth.all():
            mixed[server_round] = rows, truth
    if not mixed:
        return []
    from sklearn.metrics import roc_auc_score  # scikit-learn (0.7 s) only at the end of a run with an attack

    out = []
    for server_round, (rows, truth) in mixed.items():
        for name, (score, threshold) in DETECTORS.items():
            scores = np.nan_to_num(score(rows), nan=0.0)
            flagged = scores > threshold
            hits = int((flagged & truth).sum())
            out.append(
                {
                    "detector": name,
                    "round": server_round,
                    "auc": float(roc_auc_score(truth, scores)),
                    "precision": hits / flagged.sum() if flagged.any() else float("nan"),
                    "recall": hits / truth.sum(),
                    "threshold": threshold,
                    "num_flagged": int(flagged.sum()),
                    "num_malicious": int(truth.sum()),
                    "num_clients": len(rows),
                }
            )
    return out


def mean_auc(rows: Sequence[dict]) -> dict[str, float]:
    """Each detector's AUC averaged over the rounds it was scored in (run.json's summary)."""
    by_detector: dict[str, list[float]] = {}
    for row in rows:
        by_detector.setdefault(row["detector"], []).append(row["auc"])
    return {name: float(np.mean(aucs)) for name, aucs in by_detector.items()}


class DetectionCsv(Callback):
    """detection.csv at the end of the run: the unsupervised detectors, run over clients.csv, scored
    against the attack's ground truth (clients whose update arrived only). A report: it reads clients.csv, which
    the writers have finished."""

    phase = Phase.REPORT

    def __init__(self, path: Path, clients_csv: Path) -> None:
        self.path = path
        self.clients_csv = clients_csv

    def on_run_end(self, summary: dict[str, Any]) -> None:
        clients = pd.read_csv(self.clients_csv)
        detection = detection_rows(clients[clients.status == "ok"].to_dict("records"))
        if detection:  # only rounds with both malicious and honest clients are scored
            write_csv(self.path, pd.DataFrame(detection, columns=DETECTION_COLUMNS))
            summary["detection_auc"] = mean_auc(detection)
