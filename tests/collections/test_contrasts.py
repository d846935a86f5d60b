"""fedsim.collections.contrasts, .metric and .precision: paired contrasts checked against scipy and statsmodels on
the same pairs, the verdict rule, seeds_needed's promise, the metrics, and seeds added only where a contrast is
inconclusive (a collection of fake runs: no Ray, no main.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

from fedsim.collections.contrasts import (
    CONTRAST_COLUMNS,
    Analysis,
    Baseline,
    check_baselines,
    comparisons,
    contrasts,
    paired,
    seeds_needed,
    summary_line,
)
from fedsim.collections.ledger import Collection
from fedsim.collections.metric import Metric, gain_per_round
from fedsim.collections.plan import CollectionError, plan
from fedsim.collections.plots import plot_contrasts
from fedsim.collections.precision import Precision, adding_seeds, carried_over
from fedsim.collections.scheduler import run_collection
from fedsim.collections.summary import summarize

CONFIGS = ["attack=none strategy=krum", "attack=alie strategy=krum"]


# statsmodels' Holm step runs gc.collect() on every call, and the collections below make dozens of tables
pytestmark = pytest.mark.usefixtures("without_full_collections")


def values_of(table: dict[str, list[float]]) -> pd.DataFrame:
    """(config, seed, value) rows: each configuration's values for seeds 0, 1, ..."""
    return pd.DataFrame(
        [(config, seed, v) for config, vs in table.items() for seed, v in enumerate(vs)],
        columns=["config", "seed", "value"],
    )


def test_contrasts_equal_scipy_and_statsmodels_on_the_same_pairs():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.7, 0.8, 8)
    table = {
        "attack=none s=a": list(base),
        "attack=x s=a": list(base - 0.05 + rng.normal(0, 0.01, 8)),
        "attack=y s=a": list(base + rng.normal(0, 0.01, 8))[:5],  # 5 seeds: no Wilcoxon
    }
    margin = 0.03
    result = contrasts(values_of(table), Analysis(baselines=(Baseline("attack", "none"),), margin=margin))
    assert list(result.columns) == CONTRAST_COLUMNS and result.config.tolist() == ["attack=x s=a", "attack=y s=a"]
    p_values, p_tost = [], []
    for row in result.itertuples():
        x = np.array(table[row.config])
        y = base[: len(x)]
        test = stats.ttest_rel(x, y)
        interval = test.confidence_interval(0.95)
        assert row.n_pairs == len(x)
        assert row.mean_diff == pytest.approx(np.mean(x - y), abs=1e-12)
        assert row.sd_diff == pytest.approx(np.std(x - y, ddof=1), abs=1e-12)
        assert (row.ci95_low, row.ci95_high, row.p_value) == pytest.approx(
            (interval.low, interval.high, test.pvalue), abs=1e-12
        )
        wilcoxon = stats.wilcoxon(x, y).pvalue if len(x) >= 6 else np.nan
        np.testing.assert_allclose(row.p_wilcoxon, wilcoxon, atol=1e-12)
        p_values.append(test.pvalue)
        p_tost.append(ttost_paired(x, y, -margin, margin)[0])
    np.testing.assert_allclose(result.p_holm, multipletests(p_values, method="holm")[1], atol=1e-12)
    np.testing.assert_allclose(result.p_equivalence_holm, multipletests(p_tost, method="holm")[1], atol=1e-12)
    assert result.verdict.tolist() == ["worse", "equivalent"]
    assert (result.metric == "final").all() and (result.margin == margin).all()


def test_each_configuration_meets_the_one_that_differs_only_in_the_baselines_key_once():
    configs = [
        "attack=none strategy=krum",
        "attack=alie strategy=krum",
        "attack=minmax strategy=krum",
        "attack=none strategy=median",
        "attack=alie strategy=median",
        "strategy=fedavg",  # names no attack: it has no baseline
    ]
    pairs = comparisons(configs, [Baseline("attack", "none"), Baseline("attack", "alie")])
    assert pairs == [
        ("attack=alie strategy=krum", "attack=none strategy=krum"),
        ("attack=minmax strategy=krum", "attack=none strategy=krum"),
        ("attack=alie strategy=median", "attack=none strategy=median"),
        ("attack=minmax strategy=krum", "attack=alie strategy=krum"),  # none vs alie is alie vs none, kept once
    ]
    assert comparisons(configs, [Baseline("strategy", "krum")]) == [
        ("attack=none strategy=median", "attack=none strategy=krum"),
        ("attack=alie strategy=median", "attack=alie strategy=krum"),
    ]


@pytest.mark.parametrize(
    "baseline, message",
    [
        (
            "attack=nonee",
            "got attack=nonee, which no configuration has; allowed: attack=none, attack=alie, attack=minmax",
        ),
        ("seed=3", "allowed: a key of the configurations (attack, strategy)"),
        ("strategy=median", "--baseline: strategy=median pairs no configuration"),
        ("attack", "--baseline: got 'attack'; allowed: KEY=VALUE"),
    ],
)
def test_a_baseline_that_pairs_nothing_is_refused(baseline, message):
    with pytest.raises(CollectionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_baselines(CONFIGS[:2] + ["attack=minmax strategy=median"], [Baseline.parse(baseline)])


def test_the_verdict_rule():
    margin, analysis = 0.02, Analysis(baselines=(Baseline("a", "0"),), margin=0.02)
    seeds = 10
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, seeds)
    noise = (noise - noise.mean()) / noise.std(ddof=1)  # exactly mean 0, sd 1
    base = np.full(seeds, 0.8)
    table = {
        "a=0": base,
        "a=1": base - 0.1 + 0.01 * noise,  # a clear drop
        "a=2": base + 0.1 + 0.01 * noise,  # a clear gain
        "a=3": base + 0.001 * noise,  # tight around zero: within the margin
        "a=4": base + 0.05 * noise,  # centred on zero, too noisy for either
        "a=5": base - 0.01 + 0.001 * noise,  # a real difference, inside the margin: the difference is the verdict
    }
    result = contrasts(values_of({k: list(v) for k, v in table.items()}), analysis).set_index("config")
    assert result.verdict.to_dict() == {
        "a=1": "worse",
        "a=2": "better",
        "a=3": "equivalent",
        "a=4": "inconclusive",
        "a=5": "worse",
    }
    assert result.seeds_needed[["a=1", "a=2", "a=3", "a=5"]].isna().all()
    assert result.loc["a=4", "seeds_needed"] > seeds and margin == analysis.margin
    assert summary_line(result.reset_index()).startswith(
        "contrasts: 4 of 5 conclusive (2 worse, 1 better, 1 equivalent)"
    )


def decided(mean: float, sd: float, n: int, margin: float, alpha: float) -> bool:
    """Whether n pairs of this mean and spread decide a contrast: an effect, or equivalence within the margin."""
    error = sd / np.sqrt(n)
    effect = stats.t.ppf(1 - alpha / 2, n - 1) * error < abs(mean)
    return bool(effect or abs(mean) + stats.t.ppf(1 - alpha, n - 1) * error < margin)


def test_seeds_needed_is_where_the_same_mean_and_spread_decide():
    """With the mean and spread as measured, `seeds_needed` pairs decide the contrast and one fewer do not."""
    margin, alpha = 0.03, 0.05
    for mean, sd in ((0.01, 0.03), (0.02, 0.05), (0.0, 0.04), (-0.015, 0.02)):
        needed = int(seeds_needed(mean, sd, 3, margin, alpha, alpha))
        assert decided(mean, sd, needed, margin, alpha) and not decided(mean, sd, needed - 1, margin, alpha)
    assert np.isnan(seeds_needed(0.01, np.nan, 1, margin, alpha, alpha))


def test_identical_differences_are_a_point_not_nan():
    """Two configurations at chance in every seed differ by exactly 0: equivalent, not 'no data'."""
    row = paired(np.full(3, 0.507), np.full(3, 0.507), 0.02)
    assert (row["ci95_low"], row["ci95_high"], row["p_value"], row["p_equivalence"]) == (0.0, 0.0, 1.0, 0.0)
    row = paired(np.full(3, 0.6), np.full(3, 0.5), 0.02)
    assert (row["p_value"], row["p_equivalence"]) == (0.0, 1.0)


def rounds_of(curves: dict[int, list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [(run_id, r, acc) for run_id, curve in curves.items() for r, acc in enumerate(curve)],
        columns=["run_id", "round", "central_accuracy"],
    )


def test_metrics_and_the_last_five_rounds_gain():
    curves = {0: [0.5, 0.6, 0.7, 0.72, 0.73, 0.74, 0.75, 0.76], 1: [0.5, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]}
    rounds = rounds_of(curves)
    runs = pd.DataFrame({"run_id": [0, 1], "final_central_accuracy": [0.76, 0.8]})
    assert Metric.parse("final").of_runs(runs, rounds).tolist() == [0.76, 0.8]
    assert Metric.parse("last:3").of_runs(runs, rounds).tolist() == pytest.approx([0.75, 0.8])
    assert Metric.parse("mean").of_runs(runs, rounds).tolist() == pytest.approx([np.mean(curves[0][1:]), 0.8])
    assert gain_per_round(rounds).tolist() == pytest.approx([0.01, 0.0])
    for bad in ("last", "last:0", "best", "last:-2"):
        with pytest.raises(CollectionError, match="--metric: got .*; allowed: final, last:K"):
            Metric.parse(bad)
    ledger = runs.assign(config=["a", "b"], seed=[0, 0], status="completed")
    summary = summarize(ledger, rounds, Metric.parse("last:3")).set_index("config")
    assert summary.converged.tolist() == [False, True] and (summary.metric == "last:3").all()
    assert summary.loc["a", "gain_last5_per_round"] == pytest.approx(0.01)


class FakeRuns:
    """A launcher that writes a run's results without running it: central accuracy `value(config, seed)` in
    every round."""

    overrides: tuple[str, ...] = ()

    def __init__(self, value) -> None:
        self.value, self.ran = value, []

    def run(self, command: list[str], log_path: Path, run_dir: Path) -> int:
        words = command[2:]
        seed = int(next(w for w in words if w.startswith("seed=")).removeprefix("seed="))
        config = " ".join(w for w in words if not w.startswith(("seed=", "hydra.", "tracking.", "++tracking")))
        accuracy = self.value(config, seed)
        self.ran.append((config, seed))
        pd.DataFrame({"round": [0, 1, 2], "central_accuracy": [0.5, accuracy, accuracy]}).to_csv(
            run_dir / "rounds.csv", index=False
        )
        info = {"status": "completed", "final_central_accuracy": accuracy, "wall_time_s": 1.0}
        (run_dir / "run.json").write_text(json.dumps(info))
        return 0

    def stop(self) -> None: ...

    def close(self) -> None: ...


SWING = [0.05, -0.04, 0.03, -0.05, 0.02, -0.03, 0.04]


def two_contrasts(config: str, seed: int) -> float:
    """ALIE against no attack under krum: a drop of 0.2 that 3 seeds settle; under median: a difference that swings
    with the seed, centred near 0 but too spread for the margin of 0.02 (it would need some 30 pairs)."""
    base = 0.8 + 0.001 * seed
    if config == "attack=alie strategy=krum":
        return base - 0.2 + 0.001 * (seed % 2)
    if config == "attack=alie strategy=median":
        return base + SWING[seed]
    return base


def collected(path: Path, precision: Precision) -> tuple[FakeRuns, Collection]:
    """The two contrasts' collection, seeds 0-2 and then what `precision` adds, as run_and_collect runs it."""
    planned = plan([], ["attack=none,alie", "strategy=krum,median"], [0, 1, 2])
    collection = Collection(path, Analysis(baselines=(Baseline("attack", "none"),), margin=0.02))
    runs = FakeRuns(two_contrasts)
    everything = [*planned, *carried_over(collection.runs, planned)]
    more = adding_seeds(collection, everything, precision)
    run_collection(collection, Path(sys.argv[0]), everything, launcher=runs, more=more, echo=lambda line: None)
    return runs, collection


def test_until_conclusive_adds_seeds_only_where_a_contrast_is_inconclusive(tmp_path):
    precision = Precision(max_seeds=6, batch=2)

    def collect() -> tuple[FakeRuns, Collection]:
        return collected(tmp_path / "c", precision)

    runs, collection = collect()
    ledger = collection.runs
    added = ledger[ledger.reason != "planned"]
    assert set(added.config) == {"attack=alie strategy=median", "attack=none strategy=median"}
    assert sorted(added.seed.unique()) == [3, 4, 5]  # batches of 2, then 1: six pairs in all
    assert added.reason.str.fullmatch(r"until-conclusive: attack=alie vs attack=none inconclusive at [35] pairs").all()
    table = collection.contrasts().set_index("config")
    assert table.loc["attack=alie strategy=krum", ["verdict", "n_pairs"]].tolist() == ["worse", 3]
    assert table.loc["attack=alie strategy=median", ["verdict", "n_pairs"]].tolist() == ["inconclusive", 6]
    assert (tmp_path / "c" / "contrasts.png").stat().st_size > 10_000
    collection.close()

    again, collection = collect()  # the same command again: the added runs are known, nothing more is needed
    assert again.ran == [] and len(collection.runs) == len(ledger)
    collection.close()


def test_futility_stops_seeds_for_a_contrast_out_of_reach(tmp_path):
    """With --futility the swinging contrast gets seeds to 5 pairs, then none: at 5 pairs it would need far more
    than --max-seeds."""
    _, collection = collected(tmp_path / "c", Precision(max_seeds=6, batch=2, futility=True))
    added = collection.runs[collection.runs.reason != "planned"]
    assert sorted(added.seed.unique()) == [3, 4]
    row = collection.contrasts().set_index("config").loc["attack=alie strategy=median"]
    assert row.verdict == "inconclusive" and row.n_pairs == 5 and row.seeds_needed > 6
    collection.close()


def test_the_forest_plot_draws_every_contrast(tmp_path):
    table = contrasts(
        values_of({"a=0": [0.8, 0.81, 0.79], "a=1": [0.7, 0.72, 0.69], "a=2": [0.8, 0.84, 0.75]}),
        Analysis(baselines=(Baseline("a", "0"),)),
    )
    plot_contrasts(table, tmp_path / "contrasts.png")
    assert (tmp_path / "contrasts.png").stat().st_size > 10_000


def test_a_seed_fixes_the_malicious_clients_whatever_the_attack():
    """Paired runs under different attacks (or aggregators) with one seed have the same malicious clients."""
    from fedsim.client.attacks import ALIE, LabelPoisoning, MinMax, SignFlip, malicious_of

    attacks = [LabelPoisoning(node_ratio=0.2), SignFlip(node_ratio=0.2), ALIE(node_ratio=0.2), MinMax(node_ratio=0.2)]
    for seed in range(5):
        chosen = {tuple(malicious_of(attack, 25, seed)) for attack in attacks}
        assert len(chosen) == 1 and len(next(iter(chosen))) == 5
    assert len({tuple(malicious_of(attacks[0], 25, seed)) for seed in range(5)}) > 1
