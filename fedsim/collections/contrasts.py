"""Paired contrasts: each configuration against its baseline, seed by seed, with a verdict a reviewer accepts.

Runs of one collection with the same seed share their partition, their malicious clients, their initial model and
every client's random stream (docs/explanation/contrasts.md), so the difference between two configurations is
measured pair by pair over the seeds both have: the paired t-test (scipy.stats.ttest_rel) and its 95% interval,
Wilcoxon's signed-rank test from 6 pairs up (scipy.stats.wilcoxon), and the two one-sided tests against the
margin (statsmodels' ttost_paired), each family Holm-adjusted over the collection's contrasts (statsmodels'
multipletests). A verdict is `worse` or `better` (a difference), `equivalent` (within the margin) or
`inconclusive`, never "no effect" for want of significance; an inconclusive contrast says how many pairs
would decide it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

from fedsim.collections.metric import Metric
from fedsim.collections.plan import CollectionError
from fedsim.config.overrides import config_pairs

CONTRAST_COLUMNS = [
    "config",
    "baseline",
    "metric",
    "n_pairs",
    "mean_diff",
    "sd_diff",
    "ci95_low",
    "ci95_high",
    "p_value",
    "p_wilcoxon",
    "p_holm",
    "verdict",
    "seeds_needed",
    "margin",
    "p_equivalence",
    "p_equivalence_holm",
]
VERDICTS = ("worse", "better", "equivalent", "inconclusive")
WILCOXON_FROM = 6  # pairs: below this the signed-rank test cannot reach p < 0.05 (two-sided, exact: 2 / 2^5)
MOST_SEEDS = 10_000  # seeds_needed is looked for up to this many pairs (NaN beyond)


@dataclass(frozen=True)
class Baseline:
    """`--baseline KEY=VALUE`: every configuration is compared with the one that differs from it only in KEY,
    where KEY is VALUE."""

    key: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Baseline:
        key, sep, value = text.partition("=")
        if not sep or not key or not value or " " in text:
            raise CollectionError(f"--baseline: got {text!r}; allowed: KEY=VALUE, a key the collection sweeps")
        return cls(key, value)

    def __str__(self) -> str:
        return f"{self.key}={self.value}"


@dataclass(frozen=True)
class Analysis:
    """How a collection's runs are compared: the metric, the baselines, the equivalence margin (in the metric's
    units, accuracy) and the level of every test."""

    metric: Metric = field(default_factory=Metric)
    baselines: tuple[Baseline, ...] = ()
    margin: float = 0.02
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if not self.margin > 0:
            raise CollectionError(f"--margin: got {self.margin:g}; allowed: a number > 0 (in the metric's units)")


def baseline_of(config: str, baseline: Baseline, known: dict[frozenset, str]) -> str | None:
    """The configuration `config` is compared with under `baseline`: the known one whose overrides are
    `config`'s with KEY set to VALUE; None where `config` does not name KEY, already has VALUE, or that one is
    not known."""
    pairs = config_pairs(config)
    if pairs.get(baseline.key, baseline.value) == baseline.value:
        return None
    return known.get(frozenset({**pairs, baseline.key: baseline.value}.items()))


def comparisons(configs: Sequence[str], baselines: Sequence[Baseline]) -> list[tuple[str, str]]:
    """(configuration, baseline configuration) for every baseline in turn, configurations in their order; a pair
    already compared the other way round (`--baseline attack=none --baseline attack=alie` meets ALIE against
    no attack twice) is kept once, as first met."""
    known = {frozenset(config_pairs(c).items()): c for c in configs}
    pairs, seen = [], set()
    for baseline in baselines:
        for config in configs:
            other = baseline_of(config, baseline, known)
            if other is not None and frozenset((config, other)) not in seen:
                seen.add(frozenset((config, other)))
                pairs.append((config, other))
    return pairs


def check_baselines(configs: Sequence[str], baselines: Sequence[Baseline]) -> None:
    """Refuse, before anything runs, a baseline no configuration of the collection names, or one that pairs
    none of them."""
    for baseline in baselines:
        named = [config_pairs(c) for c in configs]
        values = list(dict.fromkeys(p[baseline.key] for p in named if baseline.key in p))
        if baseline.value not in values:
            keys = list(dict.fromkeys(k for p in named for k in p))
            allowed = (
                ", ".join(f"{baseline.key}={v}" for v in values) or f"a key of the configurations ({', '.join(keys)})"
            )
            raise CollectionError(f"--baseline: got {baseline}, which no configuration has; allowed: {allowed}")
        if not comparisons(configs, [baseline]):
            raise CollectionError(
                f"--baseline: {baseline} pairs no configuration (none differs from one with it in "
                f"{baseline.key} alone); allowed: a key the collection sweeps"
            )


def paired(x: np.ndarray, y: np.ndarray, margin: float) -> dict[str, float]:
    """The statistics of the paired differences x - y: their mean and standard deviation, the paired t-test's
    95% interval and p-value, Wilcoxon's p-value (from WILCOXON_FROM pairs), and the two one-sided tests' p-value
    against (-margin, margin). Differences all equal (no spread) have the point as interval, p 0 for a non-zero
    difference (1 for none), and are equivalent exactly when inside the margin."""
    d = x - y
    n = len(d)
    row = {"n_pairs": n, "mean_diff": float(d.mean()) if n else math.nan}
    row.update(dict.fromkeys(("sd_diff", "ci95_low", "ci95_high", "p_value", "p_wilcoxon", "p_equivalence"), math.nan))
    if n < 2:
        return row
    mean, sd = row["mean_diff"], float(d.std(ddof=1))
    row["sd_diff"] = sd
    if sd == 0:
        row.update(ci95_low=mean, ci95_high=mean, p_value=float(mean == 0))
        row["p_equivalence"] = float(abs(mean) >= margin)
    else:
        test = stats.ttest_rel(x, y)
        interval = test.confidence_interval(0.95)
        row.update(ci95_low=float(interval.low), ci95_high=float(interval.high), p_value=float(test.pvalue))
        row["p_equivalence"] = float(ttost_paired(x, y, -margin, margin)[0])
    if n >= WILCOXON_FROM:
        row["p_wilcoxon"] = float(stats.wilcoxon(x, y).pvalue) if (d != 0).any() else 1.0
    return row


def holm(p: pd.Series, alpha: float) -> pd.Series:
    """Holm's step-down adjustment (statsmodels' multipletests) of the finite p-values; NaN stays NaN."""
    adjusted = pd.Series(math.nan, index=p.index)
    finite = p.notna()
    if finite.any():
        adjusted[finite] = multipletests(p[finite].to_numpy(), alpha=alpha, method="holm")[1]
    return adjusted


def verdict(row: pd.Series, alpha: float) -> str:
    """`worse`/`better`: the 95% interval excludes 0 and the Holm-adjusted p < alpha; else `equivalent`: the two
    one-sided tests reject at alpha after Holm; else `inconclusive`."""
    if row.p_holm < alpha and (row.ci95_low > 0 or row.ci95_high < 0):
        return "worse" if row.mean_diff < 0 else "better"
    if row.p_equivalence_holm < alpha:
        return "equivalent"
    return "inconclusive"


def seeds_needed(mean: float, sd: float, n: int, margin: float, level: float, level_equivalence: float) -> float:
    """The pairs an inconclusive contrast needs if its mean and spread stay as measured: the smallest N > n whose
    paired t interval at `level` excludes 0, or whose two one-sided tests at `level_equivalence` put it inside the
    margin. NaN with fewer than two pairs (no spread to go by) or beyond MOST_SEEDS."""
    if n < 2 or not np.isfinite(sd):
        return math.nan
    size = np.arange(n + 1, MOST_SEEDS + 1)
    error = sd / np.sqrt(size)
    decided = (stats.t.ppf(1 - level / 2, size - 1) * error < abs(mean)) | (
        abs(mean) + stats.t.ppf(1 - level_equivalence, size - 1) * error < margin
    )
    return float(size[decided][0]) if decided.any() else math.nan


def contrasts(values: pd.DataFrame, analysis: Analysis, pairs: Sequence[tuple[str, str]] | None = None) -> pd.DataFrame:
    """One row per (configuration, baseline) from `values` (config, seed, value: one row per run counted), seeds
    matched, in CONTRAST_COLUMNS; the tests Holm-adjusted over every row. The (configuration, baseline) pairs are
    the analysis's baselines' (`comparisons`), or `pairs` (a study's claims, gathered from several collections)."""
    configs = list(dict.fromkeys(values["config"]))
    by_config = {c: group.set_index("seed")["value"] for c, group in values.groupby("config", sort=False)}
    empty = pd.Series(dtype=float)
    rows = []
    for config, base in comparisons(configs, analysis.baselines) if pairs is None else pairs:
        mine, theirs = by_config.get(config, empty), by_config.get(base, empty)
        shared = mine.index.intersection(theirs.index).sort_values()
        x, y = mine[shared].to_numpy(float), theirs[shared].to_numpy(float)
        rows.append({"config": config, "baseline": base, **paired(x, y, analysis.margin)})
    table = pd.DataFrame(rows, columns=[c for c in CONTRAST_COLUMNS if c not in ("metric", "p_holm", "verdict")])
    table["metric"] = analysis.metric.name
    table["margin"] = analysis.margin
    table["p_holm"] = holm(table["p_value"], analysis.alpha)
    table["p_equivalence_holm"] = holm(table["p_equivalence"], analysis.alpha)
    table["verdict"] = [verdict(row, analysis.alpha) for row in table.itertuples()] if len(table) else []
    table["seeds_needed"] = needed(table, analysis)
    return table[CONTRAST_COLUMNS]


def needed(table: pd.DataFrame, analysis: Analysis) -> list[float]:
    """seeds_needed of each inconclusive row (NaN for the others), each test at the level Holm would test it at
    next: alpha over the hypotheses of its family not yet rejected."""

    def next_level(p: pd.Series, adjusted: pd.Series) -> float:
        open_ = int(p.notna().sum() - (adjusted < analysis.alpha).sum())
        return analysis.alpha / max(1, open_)

    level = next_level(table["p_value"], table["p_holm"])
    level_equivalence = next_level(table["p_equivalence"], table["p_equivalence_holm"])
    return [
        seeds_needed(row.mean_diff, row.sd_diff, row.n_pairs, analysis.margin, level, level_equivalence)
        if row.verdict == "inconclusive"
        else math.nan
        for row in table.itertuples()
    ]


def summary_line(table: pd.DataFrame) -> str:
    """`contrasts: 12 of 20 conclusive (5 worse, 1 better, 6 equivalent); 8 inconclusive at 3 to 10 pairs, needing
    12 to 40`: a collection's last line."""
    counts = table["verdict"].value_counts()
    kinds = ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS[:3])
    line = f"contrasts: {sum(counts.get(v, 0) for v in VERDICTS[:3])} of {len(table)} conclusive ({kinds})"
    open_ = table[table["verdict"] == "inconclusive"]
    if len(open_):
        line += f"; {len(open_)} inconclusive at {span(open_['n_pairs'])} pairs"
        need = open_["seeds_needed"].dropna()
        line += f", needing {span(need)}" if len(need) else ""
    return line


def span(values: pd.Series) -> str:
    low, high = int(values.min()), int(values.max())
    return str(low) if low == high else f"{low} to {high}"


def changed(config: str, baseline: str) -> str:
    """What a baseline changes: `attack=none`, its values of the keys where it differs from `config`."""
    mine = config_pairs(config)
    return " ".join(f"{k}={v}" for k, v in config_pairs(baseline).items() if mine.get(k) != v)
