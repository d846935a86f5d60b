"""run_and_collect.py, fedsim.collections and fedsim.results: planning, ids, resume after kill -9, summary, notebook."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.runs import ROOT, collect, forked
from scipy import stats

from fedsim.collections.contrasts import CONTRAST_COLUMNS
from fedsim.collections.ledger import RUNS_COLUMNS, Collection, resumable, row_of
from fedsim.collections.plan import CollectionError, Planned, default_name, jobs_that_fit, plan
from fedsim.collections.summary import SUMMARY_COLUMNS, mean_interval, summarize
from fedsim.results.loading import CollectionResults, RunResults, load


def tiny(imdb_dir: Path) -> list[str]:
    """A tiny run; its num_clients comes from each test's sweep."""
    return [f"data.path={imdb_dir}", "num_rounds=1", "data.train_size=400", "data.test_size=200"]


# 2 clients, and 300, which the checks pass but 400 rows cannot serve: the run fails once it reads the data.
SWEEP = ["--sweep", "num_clients=2,300"]


def test_plan_crosses_sweeps_with_seeds_seed_outermost():
    runs = plan(["num_rounds=3"], ["strategy=fedavg,krum", "partition=iid,dirichlet"], [0, 5])
    assert len(runs) == 8
    assert [r.seed for r in runs] == [0] * 4 + [5] * 4
    assert runs[0] == Planned(("num_rounds=3", "strategy=fedavg", "partition=iid"), 0)
    assert runs[3].config == "num_rounds=3 strategy=krum partition=dirichlet"
    assert plan([], [], [1])[0].config == "defaults"
    assert default_name(["num_rounds=3"], ["strategy=fedavg,krum"]) == "num_rounds=3_strategy=fedavg,krum"
    assert default_name([], []) == "default"


@pytest.mark.parametrize(
    "overrides, cpus, jobs",
    [
        ([], 2, 1),  # 10 clients all training: a run holds an actor per core
        (["strategy.fraction_train=0.1", "strategy.fraction_evaluate=0.1"], 2, 2),  # one client a round: one actor
        (["strategy.fraction_train=0.1", "strategy.fraction_evaluate=0.1"], 7, 7),
        (["strategy.fraction_train=0.2", "strategy.fraction_evaluate=0.1"], 7, 3),  # two actors a run
        (["strategy.fraction_train=0.2", "strategy.fraction_evaluate=0.2", "resources.num_cpus=2"], 8, 2),  # 2 of 4
        (["ray.max_actors=1"], 3, 3),
    ],
)
def test_jobs_auto_fits_the_runs_client_actors_to_the_cores(overrides, cpus, jobs):
    assert jobs_that_fit(plan(overrides, [], [0]), cpus) == jobs


JOBS = ["0", "two"]
BAD_CONTRAST_OPTIONS = [
    (["--margin", "0"], "error: --margin: got 0; allowed: a number > 0"),
    (["--metric", "best"], "error: --metric: got 'best'; allowed: final, last:K (K an integer >= 1) or mean"),
    (["--until-conclusive", "--max-seeds", "5"], "error: --until-conclusive: needs --baseline KEY=VALUE"),
    (
        ["--baseline", "strategy=krum"],
        "error: --baseline: got strategy=krum, which no configuration has; allowed: ",
    ),
    (
        ["--baseline", "strategy=fedavg", "--until-conclusive", "--max-seeds", "1", "--runs", "2"],
        "--max-seeds: got 1",
    ),
]


@pytest.fixture(scope="module")
def refused(tmp_path_factory) -> dict[str, tuple[Path, str, int]]:
    """run_and_collect.py given each bad option below, each with a root of its own: {the options: (the root, its
    output, stdout then stderr, its exit status)}. None gets as far as a run, so one interpreter imports the
    script's modules and runs it in a fork per case (helpers.runs.forked)."""
    folder = tmp_path_factory.mktemp("refused")
    cases = {f"--jobs {jobs}": ["--jobs", jobs] for jobs in JOBS}
    cases |= {" ".join(args): [*args, "--sweep", "strategy=fedavg,fedmedian"] for args, _ in BAD_CONTRAST_OPTIONS}
    roots = {name: folder / f"root_{i}" for i, name in enumerate(cases)}
    for root in roots.values():
        root.mkdir()
    argvs = [["--root", str(roots[name]), *args] for name, args in cases.items()]
    done = forked("run_and_collect.py", argvs, folder / "forks")
    return {name: (roots[name], r.stdout + r.stderr, r.returncode) for name, r in zip(cases, done, strict=True)}


@pytest.mark.parametrize("jobs", JOBS)
def test_jobs_is_a_count_or_auto(jobs, refused):
    root, output, code = refused[f"--jobs {jobs}"]
    assert code == 2 and f"error: --jobs: got {jobs}; allowed: an integer >= 1, or auto" in output
    assert not any(root.iterdir())  # refused before the collection exists


@pytest.mark.parametrize("args, message", BAD_CONTRAST_OPTIONS)
def test_bad_contrast_options_are_one_line_before_anything_exists(args, message, refused):
    root, output, code = refused[" ".join(args)]
    assert code == 2 and message in output, output[-2000:]
    assert len(output.strip().splitlines()) == 1 and output.startswith("error: ")  # one line
    assert not any(root.iterdir())


def test_jobs_auto_fits_the_hungriest_configuration():
    planned = plan([], ["strategy.fraction_train=0.1,1.0"], [0, 1])
    assert jobs_that_fit(planned, 4) == 1


@pytest.mark.parametrize(
    "overrides, sweeps, seeds, message",
    [
        (["seed=3"], [], [0], "seed: given as an override"),
        ([], ["strategy"], [0], "--sweep: got 'strategy'"),
        ([], [], [1, 1], "--seeds: [1, 1] repeats a seed"),
    ],
)
def test_plan_rejects_bad_input(overrides, sweeps, seeds, message):
    with pytest.raises(CollectionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        plan(overrides, sweeps, seeds)


def test_run_ids_are_kept_for_known_runs_and_fresh_for_new_ones(tmp_path):
    collection = Collection(tmp_path / "c")
    a, b, c = Planned(("x=1",), 0), Planned(("x=1",), 1), Planned(("x=2",), 0)
    assert collection.todo([a, b], force=False) == [(0, a), (1, b)]
    collection.record(0, {"seed": 0, "overrides": "x=1", "status": "completed", "config": a.config})
    collection.record(1, {"seed": 1, "overrides": "x=1", "status": "running", "config": b.config})
    assert collection.todo([a, b, c], force=False) == [(1, b), (2, c)]  # a done; b was cut off; c is new
    assert collection.todo([a, b, c], force=True) == [(0, a), (1, b), (2, c)]
    with pytest.raises(CollectionError, match="another run_and_collect"):
        Collection(tmp_path / "c")
    collection.close()
    reopened = Collection(tmp_path / "c")
    assert reopened.runs.run_id.tolist() == [0, 1] and reopened.runs.status.tolist() == ["completed", "running"]
    reopened.close()


def test_summary_matches_a_scipy_reference():
    rng = np.random.default_rng(0)
    accuracy = rng.uniform(0.6, 0.9, 7)
    runs = pd.DataFrame(
        {
            "run_id": range(7),
            "seed": [0, 1, 2, 3, 0, 1, 2],
            "config": ["a"] * 4 + ["b"] * 3,
            "status": ["completed"] * 3 + ["failed"] + ["completed"] * 3,
            "final_central_accuracy": accuracy,
        }
    )
    summary = summarize(runs).set_index("config")
    assert list(summary.reset_index().columns) == SUMMARY_COLUMNS
    for config, values in (("a", accuracy[:3]), ("b", accuracy[4:])):
        low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
        row = summary.loc[config]
        assert row.n_runs == 3 and row["mean"] == pytest.approx(values.mean())
        assert row["std"] == pytest.approx(values.std(ddof=1))
        assert (row.ci95_low, row.ci95_high) == pytest.approx((low, high))
    assert summary.loc["a", "n_failed"] == 1 and summary.loc["b", "n_failed"] == 0


def test_degraded_runs_are_counted_and_left_out_of_the_statistics():
    runs = pd.DataFrame(
        {
            "run_id": range(4),
            "seed": range(4),
            "config": ["a"] * 4,
            "status": ["completed", "completed", "degraded", "failed"],
            "final_central_accuracy": [0.8, 0.9, 0.1, None],
        }
    )
    row = summarize(runs).iloc[0]
    assert (row.n_runs, row.n_failed, row.n_degraded) == (2, 1, 1) and row["mean"] == pytest.approx(0.85)


def test_only_cut_off_runs_with_a_checkpoint_are_resumed(tmp_path):
    def run_dir(name: str, status: str, checkpoint: bool, pid: int | None = None) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "run.json").write_text(
            json.dumps({"status": status, "host": socket.gethostname(), "pid": pid or os.getpid()})
        )
        if checkpoint:
            (d / "checkpoint.safetensors").write_bytes(b"")
        return d

    dead = subprocess.Popen(["true"])
    dead.wait()
    assert resumable(run_dir("interrupted", "interrupted", True))
    assert resumable(run_dir("killed", "running", True, pid=dead.pid))  # says running, its process is gone
    assert not resumable(run_dir("alive", "running", True))  # this test's own process
    assert not resumable(run_dir("failed", "failed", True))
    assert not resumable(run_dir("early", "interrupted", False))


def test_a_resume_refused_at_its_start_is_recorded_as_failed_with_its_own_error(tmp_path):
    """The stopped run's run.json and log are an earlier invocation's; the row is this invocation's."""
    info = {"status": "interrupted", "error": "interrupted by SIGINT", "host": socket.gethostname(), "pid": 1}
    (tmp_path / "run.json").write_text(json.dumps(info))
    (tmp_path / "output.log").write_text("round   1/8\nerror: an earlier invocation's error\n")
    log_from, since = (tmp_path / "output.log").stat().st_size, time.time() + 1  # this invocation began after both
    with open(tmp_path / "output.log", "a") as log:
        log.write("error: resume: the run cannot continue\n")
    row = row_of(Planned(("num_rounds=8",), 0), tmp_path, 2, 1.0, since, log_from)
    assert (row["status"], row["error"]) == ("failed", "resume: the run cannot continue")
    assert row_of(Planned(("num_rounds=8",), 0), tmp_path, 130, 1.0)["status"] == "interrupted"  # its own run.json


def test_concurrent_writers_of_one_json_file_never_collide(tmp_path):
    """Concurrent runs write the data cache's manifest at once; a shared temporary name made one fail."""
    from concurrent.futures import ThreadPoolExecutor

    from fedsim.system.files import write_json

    target = tmp_path / "prepared.json"
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: write_json(target, {"writer": i % 4}), range(400)))
    assert json.loads(target.read_text())["writer"] in range(4) and [p.name for p in tmp_path.iterdir()] == [
        target.name
    ]


@pytest.fixture(scope="module")
def tiny_collection(imdb_dir, tmp_path_factory) -> tuple[Path, str]:
    """2 seeds x (2 clients, too many clients for the data), uninterrupted."""
    root = tmp_path_factory.mktemp("collections")
    proc = collect(root, "--runs", "2", "--name", "tiny", *SWEEP, "--", *tiny(imdb_dir))
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 1, output[-3000:]  # a failed configuration makes the exit code non-zero
    return root / "tiny", output


@pytest.mark.slow
def test_collection_writes_every_file_with_row_counts(tiny_collection):
    path, output = tiny_collection
    runs = pd.read_csv(path / "runs.csv")
    assert list(runs.columns) == RUNS_COLUMNS
    assert runs.run_id.tolist() == list(range(4))
    done = runs[runs.status == "completed"]
    assert len(done) == 2 and done.final_central_accuracy.between(0, 1).all()
    failed = runs[runs.status == "failed"]
    assert failed.overrides.str.endswith("num_clients=300").all() and len(failed) == 2
    assert failed.error.str.startswith("data.val_fraction: client ").all(), failed.error.tolist()

    rounds, clients, layers = (pd.read_csv(path / name) for name in ("rounds.csv", "clients.csv", "layers.csv"))
    for table in (rounds, clients, layers):
        assert table.columns[0] == "run_id" and set(table.run_id) == set(done.run_id)
    assert len(rounds) == 2 * 2 and not rounds.duplicated(["run_id", "round"]).any()
    assert len(clients) == 2 * 2 and len(layers) == 2 * 3
    final = rounds[rounds["round"] == 1].set_index("run_id").central_accuracy
    assert final.to_dict() == pytest.approx(done.set_index("run_id").final_central_accuracy.to_dict())

    summary = pd.read_csv(path / "summary.csv").set_index("config")
    assert summary.n_runs.tolist() == [2, 0] and summary.n_failed.tolist() == [0, 2]
    assert summary.ci95_low.iloc[0] <= summary["mean"].iloc[0]
    assert (path / "accuracy.png").stat().st_size > 10_000
    progress = [line for line in output.splitlines() if line.startswith("[")]
    assert [line.split()[0] for line in progress] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert all("seed=" in line and "ETA" in line for line in progress)
    assert sum("FAILED: data.val_fraction: client " in line for line in progress) == 2


@pytest.mark.slow
def test_same_command_again_reruns_only_the_failed_runs(tiny_collection, imdb_dir):
    path, _ = tiny_collection
    before = pd.read_csv(path / "runs.csv")
    proc = collect(path.parent, "--runs", "2", "--name", "tiny", *SWEEP, "--", *tiny(imdb_dir))
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "2 already completed, 2 to run" in output, output[-2000:]
    after = pd.read_csv(path / "runs.csv")
    pd.testing.assert_frame_equal(after.drop(columns="wall_time_s"), before.drop(columns="wall_time_s"))
    completed = before.status == "completed"  # not rerun: their rows are as they were, times included
    pd.testing.assert_frame_equal(after[completed], before[completed])


@pytest.mark.slow
def test_ctrl_c_stops_the_collection_and_the_same_command_resumes_the_run_from_its_checkpoint(imdb_dir, tmp_path):
    args = [
        "--runs",
        "1",
        "--name",
        "long",
        "--",
        f"data.path={imdb_dir}",
        "num_clients=2",
        "num_rounds=5",
        "data.train_size=400",
        "data.test_size=200",
    ]
    proc = collect(tmp_path, *args, start_new_session=True)
    rounds = tmp_path / "long" / "runs" / "run_0000" / "rounds.csv"
    deadline = time.time() + 300
    while time.time() < deadline and not (rounds.exists() and len(rounds.read_text().splitlines()) > 3):
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the collector and its run
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted: the running runs were stopped" in output, output[-2000:]
    assert "Traceback" not in output
    ledger = pd.read_csv(tmp_path / "long" / "runs.csv")
    assert ledger.status.tolist() == ["interrupted"]
    done = json.loads((tmp_path / "long" / "runs" / "run_0000" / "run.json").read_text())["rounds_completed"]

    output, _ = collect(tmp_path, *args).communicate(timeout=900)
    info = json.loads((tmp_path / "long" / "runs" / "run_0000" / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed"][0]["from_round"] >= done - 1, output[-2000:]
    assert pd.read_csv(rounds)["round"].tolist() == list(range(6))


@pytest.mark.slow
def test_results_loader_and_example_notebook(tiny_collection):
    import nbclient
    import nbformat

    path, _ = tiny_collection
    collection = load(path)
    assert isinstance(collection, CollectionResults) and len(collection.runs) == 4
    assert set(collection.with_config("rounds").config) == set(collection.summary.config[:1])
    run = load(path / collection.runs.run_dir.dropna().iloc[0])
    assert isinstance(run, RunResults) and run.info["status"] == "completed" and run.config["num_clients"] == 2

    notebook = nbformat.read(ROOT / "notebooks" / "explore_collection.ipynb", as_version=4)
    os.environ["FEDSIM_COLLECTION"] = str(path)
    try:
        nbclient.NotebookClient(
            notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        ).execute()
    finally:
        del os.environ["FEDSIM_COLLECTION"]
    images = [
        o
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.outputs
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == 3


def test_config_columns_split_overrides_for_pivots():
    from fedsim.results.loading import config_columns

    summary = pd.DataFrame(
        {
            "config": [
                "num_rounds=3 attack=sign_flip strategy=krum",
                "num_rounds=3 attack=none strategy=krum",
                "defaults",
            ],
            "mean": [0.7, 0.8, 0.9],
        }
    )
    table = config_columns(summary)
    assert table.loc[0, ["num_rounds", "attack", "strategy"]].tolist() == ["3", "sign_flip", "krum"]
    assert table.iloc[:2].pivot(index="attack", columns="strategy", values="mean").loc["none", "krum"] == 0.8
    assert table.loc[2, ["attack", "strategy"]].isna().all()


def test_equal_values_have_the_point_as_their_interval():
    """Seeds that all end at the same accuracy (a run held at chance) have no spread: the interval is the point,
    where scipy's t.interval would give NaN."""
    assert mean_interval(np.array([0.507, 0.507, 0.507])) == (0.507, 0.0, 0.507, 0.507)
    mean, std, low, high = mean_interval(np.array([0.5, 0.6, 0.7]))
    assert low < mean < high and std > 0


@pytest.fixture(scope="module")
def contrasted(imdb_dir, tmp_path_factory) -> tuple[Path, str]:
    """3 seeds x (no attack, sign flipping), one round each, each attack compared with no attack."""
    root = tmp_path_factory.mktemp("contrasts")
    args = ["--seeds", "0", "1", "2", "--name", "c", "--sweep", "attack=none,sign_flip", "--baseline"]
    proc = collect(root, *args, "attack=none", "--", *tiny(imdb_dir), "num_clients=4")
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output[-3000:]
    return root / "c", output


@pytest.mark.slow
def test_a_collection_with_a_baseline_writes_contrasts_that_scipy_recomputes_from_runs_csv(contrasted):
    path, output = contrasted
    contrasts = pd.read_csv(path / "contrasts.csv")
    assert list(contrasts.columns) == CONTRAST_COLUMNS and len(contrasts) == 1
    row = contrasts.iloc[0]
    assert row.config.endswith("attack=sign_flip") and row.baseline.endswith("attack=none") and row.n_pairs == 3
    runs = pd.read_csv(path / "runs.csv")
    accuracy = runs.pivot(index="seed", columns="config", values="final_central_accuracy")
    test = stats.ttest_rel(accuracy[row.config], accuracy[row.baseline])
    interval = test.confidence_interval(0.95)
    assert abs(row.mean_diff - (accuracy[row.config] - accuracy[row.baseline]).mean()) < 1e-9
    assert abs(row.ci95_low - interval.low) < 1e-9 and abs(row.ci95_high - interval.high) < 1e-9
    assert abs(row.p_value - test.pvalue) < 1e-9 and np.isnan(row.p_wilcoxon)  # 3 pairs: no Wilcoxon
    assert row.verdict in ("worse", "better", "equivalent", "inconclusive") and row.metric == "final"
    assert output.rstrip().splitlines()[-1].startswith("contrasts: ") and (path / "contrasts.png").exists()
    loaded = load(path)
    assert isinstance(loaded, CollectionResults) and loaded.contrasts.equals(contrasts)


@pytest.mark.slow
def test_runs_with_one_seed_share_partition_initial_model_and_client_streams(contrasted):
    """What a seed pairs across configurations: the same clients with the same rows, the same initial model, the
    same training in round 1 (the attack acts on the update after training); another seed changes all three."""
    path, _ = contrasted
    runs = pd.read_csv(path / "runs.csv")
    clients = pd.read_csv(path / "clients.csv").merge(runs[["run_id", "seed", "config"]], on="run_id")
    rounds = pd.read_csv(path / "rounds.csv").merge(runs[["run_id", "seed", "config"]], on="run_id")
    first = clients[clients["round"] == 1].sort_values("client_id")
    for seed, group in first.groupby("seed"):
        by_config = [g.set_index("client_id") for _, g in group.groupby("config")]
        assert len(by_config) == 2
        none, flipped = by_config
        assert none.num_examples.equals(flipped.num_examples)
        np.testing.assert_array_equal(none.train_loss, flipped.train_loss)
        initial = rounds[(rounds.seed == seed) & (rounds["round"] == 0)].central_loss
        assert initial.nunique() == 1
    seed_0, seed_1 = (first[(first.seed == s) & first.config.str.endswith("none")] for s in (0, 1))
    assert not np.array_equal(seed_0.train_loss, seed_1.train_loss)
    assert rounds[rounds["round"] == 0].groupby("seed").central_loss.first().nunique() > 1
