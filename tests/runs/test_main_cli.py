"""`python main.py` driven as a user would: files, columns, row counts, accuracy, determinism, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from helpers.configs import make_cfg
from helpers.data import make_reviews
from helpers.runs import assert_group_ends, forked, run_main, start_main
from safetensors.numpy import load_file

from fedsim.outputs.columns import CLIENTS_COLUMNS, ROUNDS_COLUMNS
from fedsim.run.steps import run_experiment
from fedsim.system.errors import ConfigError
from fedsim.system.processes import group_alive


@pytest.mark.slow
def test_run_writes_every_file_with_spec_columns(small_run):
    rounds = pd.read_csv(small_run / "rounds.csv")
    clients = pd.read_csv(small_run / "clients.csv")
    assert list(rounds.columns) == ROUNDS_COLUMNS and list(clients.columns) == CLIENTS_COLUMNS
    assert rounds["round"].tolist() == [0, 1, 2]
    assert rounds.loc[0, ["fed_accuracy", "train_loss"]].isna().all()
    assert rounds.loc[1:, ["central_accuracy", "fed_accuracy", "train_loss"]].notna().all().all()
    assert (rounds.loc[1:, "num_fit_clients"] == 3).all() and (rounds.loc[1:, "num_failures"] == 0).all()
    assert len(clients) == 6 and sorted(clients.client_id.unique()) == [0, 1, 2]
    assert clients.num_examples.sum() == 2 * 1200  # 80% of 1500 rows train, every round
    assert rounds.central_accuracy.iloc[-1] > 0.6  # better than chance on a balanced test split

    info = json.loads((small_run / "run.json").read_text())
    assert info["status"] == "completed" and info["seed"] == 0 and info["rounds_completed"] == 2
    assert info["final_central_accuracy"] == pytest.approx(rounds.central_accuracy.iloc[-1])
    assert set(info["versions"]) >= {"python", "torch", "flwr", "ray", "transformers"}
    assert "num_clients: 3" in (small_run / "config.yaml").read_text()
    weights = load_file(str(small_run / "model.safetensors"))
    assert weights["embedding.weight"].shape == (262144, 16)


BAD_INPUT = [
    ("num_clients=0", "num_clients"),
    ("num_rounds=0", "num_rounds"),
    ("scrutiny=maybe", "scrutiny"),
    ("strategy.fraction_train=1.5", "strategy.fraction_train"),
    ("data.path=/nonexistent", "data.path"),
    ("strategy=bulyan num_clients=3", "strategy.num_malicious_nodes"),
    ("strategy=trimmed_mean strategy.beta=0.5", "strategy"),
    ("attack=none attack.node_ratio=0.3", "attack.node_ratio"),
    ("attack=label_flip attack.data_ratio=2", "attack.data_ratio"),
    ("attack=alie attack.node_ratio=0.6 num_clients=10", "attack.node_ratio"),
    ("attack=ipm attack.epsilon=-1", "attack.epsilon"),
    ("attack=alie attack.z=-1", "attack.z"),
    ("attack=minsum attack.bound=mean", "attack.bound"),
    ("strategy=multikrum strategy.m=0", "strategy.m"),
    ("strategy=trimmed_mean pre=nnm pre.f=5 num_clients=10", "pre.f"),
    ("strategy.sampling=poisson strategy.fraction_train=0", "strategy.fraction_train"),
    ("strategy=krum strategy.sampling=poisson", "strategy.sampling"),
    ("privacy=server_fixed strategy.sampling=poisson privacy.accountant=moments", "privacy.accountant"),
]
# Keys and options outside conf/: refused from the command line alone, before Hydra composes anything.
OUTSIDE = [
    (
        "+foo=1",
        "error: foo: not a fedsim key; allowed: a key of conf/ (docs/reference/configuration.md), e.g. data, "
        "partition, model, strategy, pre, archive, attack, faults",
    ),
    (
        "num_client=5",
        "error: num_client: not a fedsim key; allowed: num_clients, client, client.lr (the nearest keys)",
    ),
    (
        "strategy=nosuch",
        "error: strategy: no option 'nosuch'; allowed: bulyan, centered_clipping, fedadagrad, fedadam, fedavg, "
        "fedavgm, fedmedian, fedprox, fedyogi, geometric_median, krum, multikrum, trimmed_mean",
    ),
]


@pytest.fixture(scope="module")
def refused(imdb_dir, tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """main.py given each bad input below: {overrides: (its run directory, how it ended)}. None starts a federation,
    so one interpreter imports main.py's modules and runs main.py in a fork per case (helpers.runs.forked)."""
    root = tmp_path_factory.mktemp("refused")
    cases = {}
    for i, (overrides, _) in enumerate(BAD_INPUT):
        words = overrides.split()
        words = [f"data.path={imdb_dir}", *words] if "data.path" not in words[0] else words
        cases[overrides] = root / f"bad_{i}", [*words, "data.train_size=100", "data.test_size=10"]
    for i, (override, _) in enumerate(OUTSIDE):
        cases[override] = root / f"outside_{i}" / "run", [override]
    argvs = [[f"hydra.run.dir={run_dir}", *words] for run_dir, words in cases.values()]
    done = forked("main.py", argvs, root / "forks")
    return {name: (run_dir, result) for (name, (run_dir, _)), result in zip(cases.items(), done, strict=True)}


@pytest.mark.slow
@pytest.mark.parametrize("overrides, key", BAD_INPUT)
def test_bad_input_is_one_clear_line_and_exit_2(overrides, key, refused):
    run_dir, result = refused[overrides]
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.strip().startswith(f"error: {key}:")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert not (run_dir / "rounds.csv").exists()


def defective_imdb(root: Path, defect: str) -> Path:
    """A small IMDB copy with one kind of defect in its train split."""
    root.mkdir(parents=True, exist_ok=True)
    train = make_reviews(200, 0)
    if defect == "labels":
        train.loc[[3, 5], "label"] = [7, -1]
    elif defect == "texts":
        train["text"] = train["text"].astype(object)
        train.loc[[2, 4, 6], "text"] = [None, "", None]
    train.to_parquet(root / "train.parquet")
    make_reviews(50, 1).to_parquet(root / "test.parquet")
    return root


@pytest.mark.parametrize(
    "case, overrides, key, says",
    [
        ("no validation rows", ["data.val_fraction=0"], "data.val_fraction", "nothing to evaluate"),
        (
            "a partition too small to evaluate",
            ["num_clients=200"],
            "data.val_fraction",
            "client 0 holds 1 rows, 0 of them for validation",
        ),
        ("labels outside the classes", ["DEFECT=labels"], "data.path", "labels [-1, 7] outside IMDB's classes"),
        ("null and empty texts", ["DEFECT=texts"], "data.path", "3 of 200 train rows"),
        (
            "a model directory that does not exist",
            ["model=hf", "model.name=/no/such/model"],
            "model.name",
            "no such directory",
        ),
        (
            "more CPUs per client than the machine has",
            ["resources.num_cpus=4096"],
            "resources.num_cpus",
            "Ray would wait forever",
        ),
        (
            "a Hub dataset with the Hub out of reach",
            ["data.path=stanfordnlp/imdb-not-cached"],
            "data.path",
            "data.path=DIR or IMDB_PATH=DIR",
        ),
        (
            "a Hub model with the Hub out of reach",
            ["model=hf", "model.name=someone/not-cached"],
            "model.name",
            "model.name=/path/to/checkpoint",
        ),
    ],
)
def test_bad_input_battery(case, overrides, key, says, tmp_path):
    """Each is a ConfigError (main.py's one line and exit 2, tested above) raised before the federation starts."""
    defect = next((o.split("=")[1] for o in overrides if o.startswith("DEFECT=")), None)
    data = defective_imdb(tmp_path / "data", defect)
    overrides = [o for o in overrides if not o.startswith("DEFECT=")]
    given = [] if any(o.startswith("data.path=") for o in overrides) else [f"data.path={data}"]
    cfg = make_cfg(*given, *overrides, "data.train_size=200", "data.test_size=50")

    def federate(session) -> None:
        pytest.fail(f"{case}: reached the federation")

    with pytest.raises(ConfigError) as refused:
        run_experiment(cfg, tmp_path / "run", federate=federate)
    message = str(refused.value)
    assert message.startswith(f"{key}:") and says in message and "\n" not in message, (case, message)
    assert not (tmp_path / "run" / "rounds.csv").exists()


@pytest.mark.slow
@pytest.mark.parametrize("override, line", OUTSIDE)
def test_keys_and_options_outside_the_config_are_one_line_before_anything_is_written(override, line, refused):
    run_dir, result = refused[override]
    assert result.returncode == 2 and result.stderr == line + "\n" and result.stdout == ""
    assert not run_dir.exists()


@pytest.mark.slow
def test_a_run_into_a_finished_runs_directory_is_refused_and_touches_nothing(small_run):
    before = {p: p.stat().st_mtime_ns for p in small_run.rglob("*") if p.name != ".lock"}
    result = run_main(small_run, "num_rounds=1")
    assert result.returncode == 2 and result.stderr == (
        f"error: hydra.run.dir: {small_run} holds a run (completed, 2 rounds); allowed: another directory, "
        f"overwrite=true to replace it, resume={small_run} num_rounds=MORE to continue it\n"
    )
    assert {p: p.stat().st_mtime_ns for p in small_run.rglob("*") if p.name != ".lock"} == before


@pytest.mark.slow
def test_every_client_failing_ends_the_process_with_their_error_in_one_line(imdb_dir, tmp_path):
    """A failure inside the engine (here every client's optimizer cannot be built) ends main.py at once."""
    process = start_main(
        tmp_path,
        f"data.path={imdb_dir}",
        "num_clients=2",
        "num_rounds=3",
        "data.train_size=400",
        "data.test_size=200",
        "model.optimizer._target_=no_such_module.Optimizer",
    )
    try:
        output, _ = process.communicate(timeout=300)
        assert_group_ends(process)
    finally:
        if group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert process.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert len(errors) == 1 and "round 1: 2 of 2 clients failed" in errors[0] and "no_such_module" in errors[0]
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["status"] == "failed" and "no_such_module" in info["error"] and info["rounds_completed"] == 0
