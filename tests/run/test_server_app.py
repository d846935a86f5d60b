"""The ServerApp and its round loop driven by an in-process grid: outputs, participation, failures, and the
`flwr run` path (config from the run config), all without Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from flwr.app import Context
from helpers.configs import METRICS as CENTRAL_AND_FED
from helpers.configs import QUICK, TIMING, make_cfg
from helpers.local_grid import LocalGrid
from helpers.runs import Crash, run_locally, server_context
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

import fedsim.client.app
import fedsim.run.server_app
from fedsim.client.client import client_fn
from fedsim.config.compose import CONF_DIR
from fedsim.config.resume import resumed_config
from fedsim.outputs.columns import CLIENTS_COLUMNS, ROUNDS_COLUMNS
from fedsim.server.faults import Faults
from fedsim.server.participation import Participants, choose
from fedsim.system.errors import ConfigError, RunFailed

METRICS = [*CENTRAL_AND_FED, "num_fit_clients", "num_failures"]


def read(run_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(run_dir / name)


def test_two_rounds_write_every_output(generated_imdb, tmp_path):
    grid = run_locally(make_cfg(f"data.path={generated_imdb}", *QUICK), tmp_path)
    rounds, clients = read(tmp_path, "rounds.csv"), read(tmp_path, "clients.csv")
    assert list(rounds.columns) == ROUNDS_COLUMNS and rounds["round"].tolist() == [0, 1, 2]
    assert rounds.loc[0, ["fed_accuracy", "train_loss"]].isna().all() and rounds.loc[0, "num_fit_clients"] == 0
    assert rounds.loc[1:, ["central_accuracy", "fed_accuracy", "train_loss", "driver_rss_mb"]].notna().all().all()
    assert (rounds.loc[1:, "num_fit_clients"] == 4).all() and (rounds.loc[1:, "num_failures"] == 0).all()
    assert list(clients.columns) == CLIENTS_COLUMNS and len(clients) == 8
    assert clients.groupby("round").client_id.apply(list).tolist() == [[0, 1, 2, 3]] * 2
    assert clients.update_norm.notna().all() and len(read(tmp_path, "layers.csv")) == 2 * 3
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["status"] == "completed" and info["rounds_completed"] == 2
    assert info["final_central_accuracy"] == pytest.approx(rounds.central_accuracy.iloc[-1])
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "weights" / "round_002").is_dir()
    # one query per node to learn its partition, then per round a train and an evaluate message per client
    kinds = [kind for kind, _ in grid.sent]
    assert kinds == ["query"] * 4 + (["train"] * 4 + ["evaluate"] * 4) * 2


def test_scrutiny_off_skips_the_statistics_and_changes_no_metric(generated_imdb, tmp_path):
    on, off = tmp_path / "on", tmp_path / "off"
    run_locally(make_cfg(f"data.path={generated_imdb}", *QUICK), on)
    run_locally(make_cfg(f"data.path={generated_imdb}", *QUICK, "scrutiny=false"), off)
    pd.testing.assert_frame_equal(read(on, "rounds.csv")[METRICS], read(off, "rounds.csv")[METRICS], check_exact=True)
    clients = read(off, "clients.csv")
    assert len(clients) == 8 and clients["update_norm"].isna().all() and clients["train_loss"].notna().all()
    assert read(on, "clients.csv")["update_norm"].notna().all()
    assert read(off, "layers.csv").empty and not read(on, "layers.csv").empty


def test_partial_participation_is_chosen_from_seed_and_round_not_node_ids(generated_imdb, tmp_path):
    overrides = [
        f"data.path={generated_imdb}",
        "num_clients=6",
        "num_rounds=3",
        "data.train_size=600",
        "data.test_size=100",
        "strategy.fraction_train=0.5",
        "strategy.fraction_evaluate=0.5",
        "archive.mode=none",
    ]
    first = run_locally(make_cfg(*overrides), tmp_path / "a", node_seed=1)
    second = run_locally(make_cfg(*overrides), tmp_path / "b", node_seed=2)
    assert set(first.contexts).isdisjoint(second.contexts)  # Flower's node ids differ from run to run
    a, b = read(tmp_path / "a", "clients.csv"), read(tmp_path / "b", "clients.csv")
    assert a[["round", "client_id"]].equals(b[["round", "client_id"]])
    assert a.groupby("round").size().tolist() == [3, 3, 3]
    assert a.groupby("round").client_id.apply(tuple).nunique() > 1  # a fresh choice each round
    for r in (1, 2, 3):
        assert a[a["round"] == r].client_id.tolist() == choose(0, r, 0x7A, 3, 6)
    evaluated = [p for kind, p in first.sent if kind == "evaluate"]
    assert evaluated == [p for r in (1, 2, 3) for p in choose(0, r, 0xE7, 3, 6)]
    pd.testing.assert_frame_equal(
        read(tmp_path / "a", "rounds.csv")[METRICS], read(tmp_path / "b", "rounds.csv")[METRICS], check_exact=True
    )
    pd.testing.assert_frame_equal(a.drop(columns="fit_time_s"), b.drop(columns="fit_time_s"), check_exact=True)
    # A pool of 2 simulated nodes (runtime.node_slots), each message naming its partition, or each node sent one
    # message a round carrying its share of the cohort (runtime.cohort_messages): the same clients do the same
    # work, to the bit, though a node serves several partitions in a round.
    single = run_locally(make_cfg(*overrides, "runtime.cohort_messages=false"), tmp_path / "pooled", slots=2)
    carried = run_locally(make_cfg(*overrides), tmp_path / "carried", slots=2)
    assert len(single.contexts) == len(carried.contexts) == 2
    assert [p for kind, p in single.sent if kind == "evaluate"] == evaluated
    assert sorted(p for kind, p in carried.sent if kind == "evaluate") == sorted(evaluated)
    assert single.messages == [("query", 1)] * 2 + ([("train", 1)] * 3 + [("evaluate", 1)] * 3) * 3
    assert carried.messages == [("query", 1)] * 2 + [("train", 2), ("train", 1), ("evaluate", 2), ("evaluate", 1)] * 3
    for run in ("pooled", "carried"):
        pd.testing.assert_frame_equal(
            read(tmp_path / "a", "rounds.csv")[METRICS], read(tmp_path / run, "rounds.csv")[METRICS], check_exact=True
        )
        pd.testing.assert_frame_equal(
            a.drop(columns="fit_time_s"),
            read(tmp_path / run, "clients.csv").drop(columns="fit_time_s"),
            check_exact=True,
        )


def test_a_failing_client_is_recorded_counted_printed_once_and_the_run_is_degraded(generated_imdb, tmp_path, capsys):
    def flaky_client_fn(context: Context):
        if int(context.node_config["partition-id"]) == 1:
            raise RuntimeError("disk on fire")
        return client_fn(context)

    run_locally(
        make_cfg(f"data.path={generated_imdb}", *QUICK, "archive.mode=none"), tmp_path, client_fn=flaky_client_fn
    )
    rounds, clients = read(tmp_path, "rounds.csv"), read(tmp_path, "clients.csv")
    # Client 1 fails to train and to evaluate in both rounds; the other three carry each round.
    assert rounds.num_failures.tolist() == [0, 2, 2] and rounds.num_fit_clients.tolist() == [0, 3, 3]
    failed = clients[clients.status != "ok"]
    assert failed[["round", "client_id", "status"]].values.tolist() == [
        [1, 1, "failed"],
        [1, 1, "eval_failed"],
        [2, 1, "failed"],
        [2, 1, "eval_failed"],
    ]
    assert set(failed.error) == {"RuntimeError: disk on fire"} and failed.num_examples.isna().all()
    assert (clients[clients.status == "ok"].client_id != 1).all() and len(clients) == 2 * 3 + 4
    assert rounds.fed_accuracy.iloc[1:].notna().all()  # from the three clients that evaluated
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["status"] == "degraded" and info["client_failures"] == 4
    assert capsys.readouterr().out.count("disk on fire") == 1


def test_every_client_failing_fails_the_run_with_their_error(generated_imdb, tmp_path):
    def broken_client_fn(context: Context):
        raise ValueError("label 7 is not a class")

    with pytest.raises(RunFailed, match="round 1: 4 of 4 clients failed.*ValueError: label 7 is not a class"):
        run_locally(
            make_cfg(f"data.path={generated_imdb}", *QUICK, "archive.mode=none"), tmp_path, client_fn=broken_client_fn
        )
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["status"] == "failed" and "label 7 is not a class" in info["error"]
    assert info["rounds_completed"] == 0 and info["final_central_accuracy"] is not None  # round 0 is kept


def test_a_failure_rate_above_the_threshold_fails_the_run(generated_imdb, tmp_path):
    def flaky_client_fn(context: Context):
        if int(context.node_config["partition-id"]) in (0, 1):
            raise RuntimeError("out of memory")
        return client_fn(context)

    with pytest.raises(
        RunFailed,
        match=r"2 of 4 client training calls failed \(50%\), more than "
        r"faults.max_failure_rate=0.4",
    ):
        run_locally(
            make_cfg(f"data.path={generated_imdb}", *QUICK, "archive.mode=none", "faults.max_failure_rate=0.4"),
            tmp_path,
            client_fn=flaky_client_fn,
        )
    assert read(tmp_path, "rounds.csv")["round"].tolist() == [0, 1]  # the round that crossed it is recorded


def test_flwr_run_path_composes_the_run_config_and_gives_main_pys_numbers(generated_imdb, tmp_path):
    overrides = [f"data.path={generated_imdb}", *QUICK, "archive.mode=none"]
    run_locally(make_cfg(*overrides), tmp_path / "main")

    run_config = {"overrides": " ".join(overrides), "results-dir": str(tmp_path / "results")}
    grid = LocalGrid(fedsim.client.app.app, 4, run_config=run_config, seed=5)  # Flower's contexts under `flwr run`
    fedsim.run.server_app.app(grid, server_context(run_config))
    [run_dir] = (tmp_path / "results" / "runs").glob("*/*")
    assert (
        run_dir.name.split("_", 1)[1]
        == "archive.mode=none,data.test_size=100,data.train_size=400,num_clients=4,num_rounds=2"
    )
    assert {p.name for p in run_dir.iterdir()} >= {
        "rounds.csv",
        "clients.csv",
        "layers.csv",
        "run.json",
        "config.yaml",
        "model.safetensors",
    }
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"
    pd.testing.assert_frame_equal(
        read(tmp_path / "main", "rounds.csv")[METRICS], read(run_dir, "rounds.csv")[METRICS], check_exact=True
    )


def test_flwr_run_path_reports_bad_input_in_run_json(tmp_path):
    run_config = {"overrides": "num_rounds=0", "results-dir": str(tmp_path)}
    with pytest.raises(ConfigError, match="num_rounds"):
        fedsim.run.server_app.app(
            LocalGrid(fedsim.client.app.app, 2, run_config=run_config), server_context(run_config)
        )
    [run_json] = tmp_path.glob("runs/*/*/run.json")
    assert json.loads(run_json.read_text())["status"] == "failed"


def test_a_federation_of_the_wrong_size_is_refused(generated_imdb):
    grid = LocalGrid(fedsim.client.app.app, 3)
    with pytest.raises(
        ConfigError,
        match=r"^num_clients: 4, but after 0.1 s \(runtime.startup_timeout_s\) the "
        r"federation's 3 nodes",
    ):
        Participants.discover(grid, 4, seed=0, timeout=0.1)
    assert len(Participants.discover(grid, 3, seed=0).node_of) == 3


@pytest.mark.parametrize(
    "strategy", sorted(p.stem for p in (Path(__file__).parents[2] / "conf" / "strategy").glob("*.yaml"))
)
def test_every_strategy_runs_a_round_through_every_output(generated_imdb, tmp_path, strategy):
    """Each strategy config through the loop with scrutiny and the full archive (some of Flower's strategies
    empty the replies they aggregate; the round's outputs must still see every update)."""
    run_locally(
        make_cfg(
            f"data.path={generated_imdb}",
            f"strategy={strategy}",
            "num_clients=7",
            "num_rounds=1",
            "data.train_size=350",
            "data.test_size=50",
            "archive.mode=all",
        ),
        tmp_path,
    )
    clients = read(tmp_path, "clients.csv")
    assert len(clients) == 7 and clients.update_norm.notna().all()
    assert len(read(tmp_path, "layers.csv")) == 3 and read(tmp_path, "rounds.csv").num_fit_clients.tolist() == [0, 7]
    assert len(pd.read_csv(tmp_path / "weights" / "manifest.csv")) == 2 + 7
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "completed"


def test_fedprox_as_mu_goes_to_zero_is_fedavg(generated_imdb, tmp_path):
    common = [f"data.path={generated_imdb}", *QUICK, "archive.mode=none"]
    run_locally(make_cfg(*common, "strategy=fedavg"), tmp_path / "fedavg")
    run_locally(make_cfg(*common, "strategy=fedprox", "strategy.proximal_mu=1e-9"), tmp_path / "fedprox")
    fedavg, fedprox = (read(tmp_path / name, "rounds.csv")[METRICS] for name in ("fedavg", "fedprox"))
    pd.testing.assert_frame_equal(fedavg, fedprox, check_exact=False, rtol=1e-5, atol=1e-6)


# stateless, moments, momentum; and FedAdam inside Flower's adaptive DP wrapper (noise, a moving clipping norm)
@pytest.mark.parametrize(
    "choice",
    [
        "strategy=fedavg",
        "strategy=fedadam",
        "strategy=fedavgm",
        "strategy=fedadam privacy=server_adaptive privacy.initial_clipping_norm=0.05",
        # the omniscient adversary, and a strategy whose state (its centre) the checkpoint carries
        "strategy=centered_clipping strategy.tau=1.0 attack=alie attack.z=1.0",
        # a pre-aggregation step with its per-round permutation, against Min-Sum
        "strategy=trimmed_mean pre=bucketing attack=minsum",
    ],
    ids=["fedavg", "fedadam", "fedavgm", "fedadam-dp", "alie-centered-clipping", "minsum-bucketing-trimmed-mean"],
)
def test_a_resumed_run_equals_an_uninterrupted_one(generated_imdb, tmp_path, choice):
    overrides = [f"data.path={generated_imdb}", *QUICK, "num_rounds=3", "archive.mode=all", *choice.split()]
    run_locally(make_cfg(*overrides), tmp_path / "whole")
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_locally(make_cfg(*overrides), cut, callbacks=[Crash(at=2)])
    assert read(cut, "rounds.csv")["round"].tolist() == [0, 1, 2]  # round 2 written, not checkpointed

    run_locally(resumed_config(make_cfg(f"resume={cut}"), [f"resume={cut}"]), cut, node_seed=7)
    for name in ("rounds.csv", "clients.csv", "layers.csv"):
        whole, resumed = (read(d, name).drop(columns=TIMING, errors="ignore") for d in (tmp_path / "whole", cut))
        pd.testing.assert_frame_equal(resumed, whole, check_exact=True)
    manifests = [read(d / "weights", "manifest.csv") for d in (tmp_path / "whole", cut)]
    pd.testing.assert_frame_equal(*(m.drop(columns="path") for m in manifests))
    info = json.loads((cut / "run.json").read_text())
    assert info["status"] == "completed" and info["rounds_completed"] == 3
    assert info["resumed"][0]["from_round"] == 1


def test_resume_refuses_other_keys_and_a_completed_run(generated_imdb, tmp_path):
    run_locally(make_cfg(f"data.path={generated_imdb}", *QUICK, "archive.mode=none"), tmp_path)
    before = (tmp_path / "run.json").read_text()
    with pytest.raises(ConfigError, match="resume: cannot change seed of a run; allowed with resume: num_rounds"):
        resumed_config(make_cfg(f"resume={tmp_path}", "seed=3"), [f"resume={tmp_path}", "seed=3"])
    with pytest.raises(ConfigError, match="completed all 2 rounds"):
        resumed_config(make_cfg(f"resume={tmp_path}"), [f"resume={tmp_path}"])
    assert (tmp_path / "run.json").read_text() == before
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):  # as inside main.py's @hydra.main
        extended = resumed_config(
            make_cfg(f"resume={tmp_path}", "num_rounds=3"), [f"resume={tmp_path}", "num_rounds=3"]
        )
        assert GlobalHydra.instance().is_initialized()  # main.py's Hydra left as it was
    assert extended.num_rounds == 3 and extended.seed == 0


def test_dropout_and_stragglers_come_from_the_seed_and_are_recorded(generated_imdb, tmp_path):
    overrides = [
        f"data.path={generated_imdb}",
        *QUICK,
        "num_rounds=3",
        "archive.mode=none",
        "faults=stragglers",
        "faults.dropout=0.3",
        "faults.stragglers=0.5",
        "faults.round_timeout_s=0.15",
        "faults.examples_per_s=2000",
        "faults.max_failure_rate=1",
    ]
    for name in ("a", "b"):
        run_locally(make_cfg(*overrides), tmp_path / name, node_seed=ord(name))
    a, b = read(tmp_path / "a", "clients.csv"), read(tmp_path / "b", "clients.csv")
    pd.testing.assert_frame_equal(a.drop(columns="fit_time_s"), b.drop(columns="fit_time_s"), check_exact=True)

    cfg = make_cfg(*overrides)
    faults: Faults = instantiate(cfg.faults)
    slow = faults.slow_devices(cfg.seed, cfg.num_clients)
    for server_round, rows in a.groupby("round"):
        dropped = faults.dropped(cfg.seed, server_round, list(range(cfg.num_clients)))
        assert sorted(rows[rows.status == "dropped"].client_id) == dropped
        late, ok = rows[rows.status == "late"], rows[rows.status == "ok"]
        assert (late.sim_time_s > 0.15).all() and (ok.sim_time_s <= 0.15).all()
        assert set(late.client_id) <= slow  # only slow devices miss this timeout
    assert set(a.status) == {"ok", "dropped", "late"}  # the draws above exercise every outcome
    rounds = read(tmp_path / "a", "rounds.csv").iloc[1:]
    counts = a.groupby("round").status.value_counts().unstack(fill_value=0)
    assert rounds.num_dropped.tolist() == counts["dropped"].tolist()
    assert rounds.num_late.tolist() == counts["late"].tolist() and (rounds.num_failures == 0).all()
    assert rounds.num_fit_clients.tolist() == counts["ok"].tolist()
    assert json.loads((tmp_path / "a" / "run.json").read_text())["status"] == "completed"  # simulated, not failed
