"""Each output is a callback fed by RoundRecords: one test per callback, no Flower, no Ray; then the order the
session runs them in (fedsim.outputs.phases), and a user callback's metric in a real run's rounds.csv."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
from helpers.configs import QUICK, TIMING, make_cfg
from helpers.runs import Crash, run_locally
from safetensors.numpy import load_file

import fedsim.outputs.memory_probe
import fedsim.server.record
from fedsim.config.resume import resumed_config
from fedsim.outputs.archive import Archive, ArchiveWriter, WeightArchive
from fedsim.outputs.base import Callback, Phase, state_keys
from fedsim.outputs.columns import CLIENTS_COLUMNS, LAYER_COLUMNS, ROUNDS_COLUMNS
from fedsim.outputs.csv_logs import ClientsCsv, RoundsCsv
from fedsim.outputs.detection import DetectionCsv
from fedsim.outputs.final_model import FinalModel
from fedsim.outputs.layer_stats import WeightScrutiny, round_statistics
from fedsim.outputs.memory_probe import MemoryProbe
from fedsim.outputs.phases import CallbackError, Outputs
from fedsim.outputs.privacy_budget import PrivacyBudget
from fedsim.outputs.progress import Progress
from fedsim.outputs.run_summary import RunSummary
from fedsim.privacy.accounting import epsilon
from fedsim.privacy.dp import Privacy
from fedsim.server.record import ClientUpdate, RoundRecord
from fedsim.system.errors import ConfigError

NAMES = ["emb.weight", "fc.bias"]


def weights(rng: np.random.Generator, scale: float = 1.0) -> list[np.ndarray]:
    return [(scale * rng.standard_normal((50, 4))).astype(np.float32), rng.standard_normal(2).astype(np.float32)]


def make_round(server_round: int, num_clients: int = 4, malicious: tuple[int, ...] = (), seed: int = 0) -> RoundRecord:
    """A round whose malicious clients return far-off weights; round 0 has no clients."""
    rng = np.random.default_rng([seed, server_round])
    start = weights(rng)
    clients = (
        []
        if server_round == 0
        else [
            ClientUpdate(
                client_id=c,
                num_examples=10 + c,
                train_loss=0.5 + c / 10,
                fit_time_s=0.1 * c,
                weights=[s + 0.01 * w + (5.0 if c in malicious else 0.0) for s, w in zip(start, weights(rng))],
                is_malicious=c in malicious,
                attack="sign_flip" if c in malicious else "none",
            )
            for c in range(num_clients)
        ]
    )
    return RoundRecord(
        server_round=server_round,
        names=NAMES,
        start_weights=start if clients else None,
        global_weights=weights(rng),
        clients=clients,
        metrics={
            "round": server_round,
            "central_loss": 0.7 - server_round / 10,
            "central_accuracy": 0.5 + server_round / 10,
            "num_fit_clients": len(clients),
            "num_failures": 0,
        },
    )


def test_memory_probe_returns_the_server_process_memory(monkeypatch):
    monkeypatch.setattr(fedsim.outputs.memory_probe, "memory_mb", lambda: {"rss": 812.5, "shared": 96.25})
    record = make_round(1)
    before = dict(record.metrics)
    assert MemoryProbe().on_round_end(record) == {"driver_rss_mb": 812.5, "driver_shared_mb": 96.25}
    assert record.metrics == before  # returned, not written into the record
    assert MemoryProbe.round_metrics == ("driver_rss_mb", "driver_shared_mb")


class Wrapper:
    """Stands in for Flower's DP wrapper: the budget only reads and restores its clipping norm."""

    clipping_norm = 0.5


def test_privacy_budget_returns_epsilon_after_each_release_and_resumes_its_count():
    """Round 0 releases nothing; each round with updates releases one noisy average (2 of 4 clients each)."""
    privacy = Privacy(mode="server_fixed", noise_multiplier=0.8)
    budget = PrivacyBudget(privacy, Wrapper(), num_clients=4, clients_per_round=2)
    records = [make_round(r, num_clients=2) for r in range(3)]
    returned = [budget.on_round_end(record) for record in records]
    assert returned == [{"epsilon": epsilon(0.8, 2, 4, releases, 1e-5)} for releases in (0, 1, 2)]
    assert returned[0] == {"epsilon": 0.0} and 0 < returned[1]["epsilon"] < returned[2]["epsilon"]
    assert all("epsilon" not in record.metrics for record in records)  # returned, not written
    wrapper = Wrapper()
    wrapper.clipping_norm = 9.0
    resumed = PrivacyBudget(privacy, wrapper, num_clients=4, clients_per_round=2)
    resumed.on_run_start(budget.state())
    assert wrapper.clipping_norm == 0.5 and resumed.on_round_end(make_round(3, num_clients=2)) == {
        "epsilon": epsilon(0.8, 2, 4, 3, 1e-5)
    }
    summary: dict = {}
    resumed.on_run_end(summary)
    assert summary == {
        "epsilon": epsilon(0.8, 2, 4, 3, 1e-5),
        "delta": 1e-5,
        "privacy_releases": 3,
        "privacy_sampling": "without_replacement",
        "neighbouring_relation": "replace_one",
        "accountant": "rdp",
        "noise_multiplier_effective": 0.8,
        "count_sensitivity": None,
        "noise_source": "seeded",
    }


def test_under_poisson_sampling_every_round_after_round_0_is_a_release_even_without_clients():
    """The fixed-denominator wrapper adds its noise every round (fedsim.privacy.fixed_denominator)."""
    privacy = Privacy(mode="server_fixed", noise_multiplier=0.8, sampling="poisson", accountant="pld")
    budget = PrivacyBudget(privacy, Wrapper(), num_clients=40, clients_per_round=4.0)
    returned = [budget.on_round_end(make_round(r, num_clients=n)) for r, n in enumerate((0, 2, 0, 3))]
    assert returned == [{"epsilon": epsilon(0.8, 4.0, 40, r, 1e-5, "poisson", "pld")} for r in range(4)]
    summary: dict = {}
    budget.on_run_end(summary)
    assert summary["privacy_releases"] == 3 and summary["neighbouring_relation"] == "add_or_remove_one"


def test_weight_scrutiny_writes_layers_and_fills_each_update(tmp_path):
    scrutiny = WeightScrutiny(tmp_path / "layers.csv", "sign_flip", 0.25)
    records = [make_round(r, malicious=(2,)) for r in range(3)]
    for record in records:
        scrutiny.on_round_end(record)
    scrutiny.close()
    layers = pd.read_csv(tmp_path / "layers.csv")
    assert list(layers.columns) == LAYER_COLUMNS and len(layers) == 2 * len(NAMES)  # round 0 has no clients
    assert set(layers.attack) == {"sign_flip"} and set(layers.malicious_node_ratio) == {0.25}
    expected_layers, expected_updates = round_statistics(
        NAMES, records[2].start_weights, [u.weights for u in records[2].clients]
    )
    assert layers[layers["round"] == 2].mean_variance.tolist() == pytest.approx(
        [r["mean_variance"] for r in expected_layers]
    )
    assert [u.stats for u in records[2].clients] == expected_updates
    assert max(records[2].clients, key=lambda u: u.stats["update_norm"]).client_id == 2


def test_weight_scrutiny_disabled_writes_only_the_header(tmp_path):
    scrutiny = WeightScrutiny(tmp_path / "layers.csv", "none", 0.0, enabled=False)
    scrutiny.on_run_start(None)
    record = make_round(1)
    scrutiny.on_round_end(record)
    scrutiny.close()
    assert pd.read_csv(tmp_path / "layers.csv").empty and all(not u.stats for u in record.clients)


def test_clients_csv_has_one_row_per_update_with_ground_truth_and_statistics(tmp_path):
    output = ClientsCsv(tmp_path / "clients.csv")
    record = make_round(1, malicious=(1,))
    record.clients[0].stats = {"update_norm": 1.5, "cosine_to_mean": 0.2, "distance_to_median": 0.3, "norm_zscore": -1}
    output.on_round_end(make_round(0))
    output.on_round_end(record)
    output.close()
    clients = pd.read_csv(tmp_path / "clients.csv")
    assert list(clients.columns) == CLIENTS_COLUMNS and clients.client_id.tolist() == [0, 1, 2, 3]
    assert clients.is_malicious.tolist() == [False, True, False, False]
    assert clients.attack.tolist() == ["none", "sign_flip", "none", "none"]
    assert clients.update_norm.iloc[0] == 1.5 and clients.update_norm.iloc[1:].isna().all()
    assert clients.num_examples.tolist() == [10, 11, 12, 13] and clients.train_loss.iloc[3] == pytest.approx(0.8)


def test_rounds_csv_writes_the_records_metrics_with_the_specs_columns_first(tmp_path):
    output = RoundsCsv(tmp_path / "rounds.csv", extra=["grad_norm", "lr"])
    record = make_round(1)
    record.metrics.update(driver_rss_mb=123.0, round_time_s=2.5, lr=0.01)
    output.on_round_end(record)
    output.close()
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    assert list(rounds.columns) == [*ROUNDS_COLUMNS, "grad_norm", "lr"] and rounds["round"].tolist() == [1]
    assert rounds.round_time_s.iloc[0] == 2.5 and rounds.driver_rss_mb.iloc[0] == 123.0 and rounds.lr.iloc[0] == 0.01
    assert pd.isna(rounds.fed_accuracy.iloc[0]) and pd.isna(rounds.grad_norm.iloc[0])  # nobody set them: empty


def test_rounds_csv_without_extra_metrics_has_exactly_the_specs_columns(tmp_path):
    output = RoundsCsv(tmp_path / "rounds.csv")
    output.on_run_start(None)
    output.close()
    assert (tmp_path / "rounds.csv").read_text().splitlines() == [",".join(ROUNDS_COLUMNS)]


def test_a_resume_refuses_a_rounds_csv_with_other_columns(tmp_path):
    """A run resumed with other metric-returning callbacks would write its rows under the first run's header."""
    first = RoundsCsv(tmp_path / "rounds.csv", extra=["grad_norm"])
    first.on_run_start(None)
    first.on_round_end(make_round(0))
    saved, before = first.state(), (tmp_path / "rounds.csv").read_text()
    first.close()
    with pytest.raises(ConfigError, match=r"resume: .*rounds.csv has the columns .*'grad_norm'.* resume with the"):
        RoundsCsv(tmp_path / "rounds.csv").on_run_start(saved)
    assert (tmp_path / "rounds.csv").read_text() == before  # refused before it cut anything
    same = RoundsCsv(tmp_path / "rounds.csv", extra=["grad_norm"])
    same.on_run_start(saved)
    same.close()


@pytest.mark.parametrize("clients", [False, True])
def test_weight_archive_stores_global_and_optionally_client_weights(tmp_path, clients):
    output = WeightArchive(lambda resume_after: ArchiveWriter(tmp_path, NAMES, ["*"], "float32"), clients=clients)
    output.on_run_start(None)
    records = [make_round(0), make_round(1)]
    for record in records:
        output.on_round_end(record)
    output.on_run_end({})
    output.close()  # after on_run_end: harmless
    archive = Archive(tmp_path)
    assert archive.rounds() == [0, 1] and archive.clients(1) == ([0, 1, 2, 3] if clients else [])
    np.testing.assert_array_equal(archive.tensor(1, "emb.weight"), records[1].global_weights[0])
    if clients:
        np.testing.assert_array_equal(archive.tensor(1, "fc.bias", client_id=3), records[1].clients[3].weights[1])


def test_progress_prints_one_line_per_round_with_an_eta():
    lines: list[str] = []
    progress = Progress(num_rounds=4, echo=lines.append)
    for server_round in range(3):
        record = make_round(server_round)
        record.metrics.update(round_time_s=1.25, fed_accuracy=0.75 if server_round else None)
        progress.on_round_end(record)
    assert len(lines) == 3 and lines[0].startswith("round   0/4") and "ETA -" in lines[0]
    assert "central_acc 0.7000" in lines[2] and "fed_acc 0.7500" in lines[2] and "1.2s" in lines[2]
    assert "ETA -" not in lines[2] and lines[2].split("ETA ")[1].endswith("s")


def test_run_summary_gives_run_json_its_final_metrics():
    """Accuracy peaks in round 1 and falls in round 2: best and final differ."""
    summary_output, summary = RunSummary(), {}
    for server_round, accuracy in enumerate((0.5, 0.8, 0.7)):
        record = make_round(server_round)
        record.metrics.update(central_accuracy=accuracy, fed_accuracy=0.6)
        summary_output.on_round_end(record)
    summary_output.on_run_end(summary)
    assert summary == {
        "final_central_accuracy": 0.7,
        "best_central_accuracy": 0.8,
        "final_central_loss": pytest.approx(0.5),
        "final_fed_accuracy": 0.6,
        "rounds_completed": 2,
    }


def test_detection_csv_scores_rounds_with_both_classes_from_clients_csv(tmp_path):
    scrutiny, clients = WeightScrutiny(tmp_path / "layers.csv", "sign_flip", 0.25), ClientsCsv(tmp_path / "clients.csv")
    output = DetectionCsv(tmp_path / "d.csv", tmp_path / "clients.csv")
    for server_round in range(3):
        record = make_round(server_round, malicious=(2,))
        scrutiny.on_round_end(record)
        clients.on_round_end(record)
    scrutiny.close()
    summary: dict = {}
    output.on_run_end(summary)
    detection = pd.read_csv(tmp_path / "d.csv")
    assert sorted(detection["round"].unique()) == [1, 2] and len(detection) == 2 * 3
    assert summary["detection_auc"]["distance_to_median"] == 1.0


def test_detection_csv_is_not_written_without_malicious_clients(tmp_path):
    clients, summary = ClientsCsv(tmp_path / "clients.csv"), {}
    clients.on_round_end(make_round(1))
    DetectionCsv(tmp_path / "d.csv", tmp_path / "clients.csv").on_run_end(summary)
    assert not (tmp_path / "d.csv").exists() and "detection_auc" not in summary


def test_final_model_saves_the_last_global_weights_by_name(tmp_path):
    output = FinalModel(tmp_path / "model.safetensors")
    records = [make_round(r) for r in range(3)]
    for record in records:
        output.on_round_end(record)
    output.on_run_end({})
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert list(saved) == sorted(NAMES)
    np.testing.assert_array_equal(saved["emb.weight"], records[-1].global_weights[0])


class UpdatesSeen(Callback):
    """A user's producer with state: the running count of updates, and this round's mean update norm (read from
    the statistics fedsim's weight scrutiny fills, a producer that comes first)."""

    round_metrics = ("updates_so_far", "mean_update_norm")

    def __init__(self) -> None:
        self.total = 0

    def on_run_start(self, saved):
        self.total = saved["total"] if saved else 0

    def on_round_end(self, record):
        self.total += len(record.clients)
        norms = [u.stats["update_norm"] for u in record.clients]
        return {"updates_so_far": self.total, "mean_update_norm": float(np.mean(norms)) if norms else None}

    def state(self):
        return {"total": self.total}


def run_outputs(make_outputs, records, stop_after: int | None = None) -> dict:
    """Feed `records` to fresh outputs (fedsim's, then a user's) as the session does. With `stop_after`, "kill" them
    one round after that round's checkpoint (that round written but not checkpointed) and resume new ones from
    the saved state."""
    outputs = Outputs(*make_outputs())
    outputs.start({})
    for record in records if stop_after is None else records[: stop_after + 2]:
        outputs.end_round(record)
        if record.server_round == stop_after:
            saved = {key: output.state() for key, output in zip(state_keys(outputs.given), outputs.given)}
    if stop_after is not None:
        outputs.close()
        outputs = Outputs(*make_outputs())
        outputs.start(saved)
        for record in records[stop_after + 1 :]:
            outputs.end_round(record)
    summary = outputs.finish()
    outputs.close()
    return summary


def test_resumed_outputs_equal_an_uninterrupted_runs(tmp_path):
    def outputs(folder):
        return lambda: (
            [
                RunSummary(),
                RoundsCsv(folder / "rounds.csv", UpdatesSeen.round_metrics),
                WeightArchive(
                    lambda after: ArchiveWriter(folder, NAMES, ["*"], "float32", resume_after=after), clients=True
                ),
                ClientsCsv(folder / "clients.csv"),
                WeightScrutiny(folder / "layers.csv", "sign_flip", 0.25),
            ],
            [UpdatesSeen()],
        )

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    expected = run_outputs(outputs(whole), [make_round(r, malicious=(1,)) for r in range(5)])
    summary = run_outputs(outputs(cut), [make_round(r, malicious=(1,)) for r in range(5)], stop_after=2)
    assert summary == expected and summary["rounds_completed"] == 4
    for name in ("layers.csv", "clients.csv"):
        assert (cut / name).read_text() == (whole / name).read_text()
    rounds = [pd.read_csv(d / "rounds.csv").drop(columns="round_time_s") for d in (cut, whole)]
    pd.testing.assert_frame_equal(*rounds)
    assert pd.read_csv(cut / "rounds.csv")["round"].tolist() == [0, 1, 2, 3, 4]  # round 3 not written twice
    assert rounds[0].updates_so_far.tolist() == [0, 4, 8, 12, 16] and rounds[0].mean_update_norm.notna().sum() == 4
    manifests = [pd.read_csv(d / "weights" / "manifest.csv").drop(columns="path") for d in (cut, whole)]
    pd.testing.assert_frame_equal(*manifests)
    assert Archive(cut).clients(3) == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- the order, enforced


class Seen(Callback):
    """Notes, in a shared log, its name and the record's metrics as it saw them; returns `returns`."""

    def __init__(self, name, log, phase=None, metrics=(), returns=None):
        self.name, self.log, self.returns = name, log, returns
        if phase is not None:
            self.phase = phase
        if metrics:
            self.round_metrics = tuple(metrics)

    def on_round_end(self, record):
        self.log.append((self.name, dict(record.metrics)))
        return self.returns

    def on_run_start(self, saved):
        self.log.append((self.name, "start"))

    def on_run_end(self, summary):
        self.log.append((self.name, "end"))


def test_producers_run_before_writers_and_reports_whatever_their_place(monkeypatch):
    """Listed report, writer, producer (a user's producer last of all): they run producer, writer, report, the
    checkpointer; every writer and report sees the producers' metrics, and round_time_s is stamped between the
    writers and the reports."""
    log: list = []
    report = Seen("report", log, Phase.REPORT)
    writer = Seen("writer", log, Phase.WRITE)
    producer = Seen("producer", log, metrics=["a"], returns={"a": 1.5})
    users = Seen("user producer", log, metrics=["b"], returns={"b": 2})
    outputs = Outputs([report, writer, producer], [users], lambda given: Seen("checkpointer", log, Phase.CHECKPOINT))
    assert outputs.given[:4] == [report, writer, producer, users]  # as given: the checkpoint's keys
    outputs.start({})
    assert [name for name, _ in log] == ["producer", "user producer", "writer", "report", "checkpointer"]
    log.clear()
    record = make_round(1)
    record.started = 100.0
    monkeypatch.setattr(fedsim.server.record.time, "perf_counter", lambda: 102.5)
    outputs.end_round(record)
    seen = dict(log)
    assert [name for name, _ in log] == ["producer", "user producer", "writer", "report", "checkpointer"]
    assert "a" not in seen["user producer"] and "b" not in seen["producer"]  # producers never see each other
    assert seen["writer"]["a"] == 1.5 and seen["writer"]["b"] == 2 and "round_time_s" not in seen["writer"]
    assert seen["report"]["round_time_s"] == 2.5 and seen["checkpointer"]["b"] == 2
    assert record.metrics["a"] == 1.5 and record.metrics["b"] == 2
    log.clear()
    outputs.finish()
    assert [name for name, _ in log] == ["producer", "user producer", "writer", "report", "checkpointer"]


def test_the_standard_outputs_run_in_phases_with_the_checkpointer_last(tmp_path):
    """In the standard list the memory probe comes after clients.csv and the archive; it still runs before them."""
    from fedsim.outputs.checkpointer import Checkpointer

    standard = [
        WeightScrutiny(tmp_path / "layers.csv", "none", 0.0),
        ClientsCsv(tmp_path / "clients.csv"),
        MemoryProbe(),
        RoundsCsv(tmp_path / "rounds.csv"),
        Progress(3),
        FinalModel(tmp_path / "model.safetensors"),
    ]
    user = Seen("user", [])
    outputs = Outputs(standard, [user], lambda given: Checkpointer(tmp_path, None, given))
    assert [type(c).__name__ for c in outputs.ordered] == [
        "WeightScrutiny",
        "MemoryProbe",
        "ClientsCsv",
        "FinalModel",
        "RoundsCsv",
        "Progress",
        "Seen",
        "Checkpointer",
    ]
    assert outputs.given[:-1] == [*standard, user]  # the checkpoint's keys keep the places as given


@pytest.mark.parametrize(
    ("standard", "user", "message"),
    [
        ([], [Seen("u", [], Phase.CHECKPOINT)], "Phase.CHECKPOINT is the checkpointer's alone"),
        ([], [Seen("u", [], 7)], r"Seen.phase is 7; allowed: a fedsim.outputs.base.Phase"),
        ([], [Seen("u", [], Phase.REPORT, metrics=["x"])], r"declares round_metrics \['x'\] but runs in REPORT"),
        ([MemoryProbe()], [Seen("u", [], metrics=["driver_rss_mb"])], "driver_rss_mb', which MemoryProbe declares"),
        ([], [Seen("u", [], metrics=["epsilon"])], "'epsilon', one of rounds.csv's own columns"),
        ([], [Seen("u", [], metrics=["x"]), Seen("v", [], metrics=["x"])], "'x', which Seen declares"),
    ],
    ids=["checkpoint-phase", "no-phase", "metrics-outside-produce", "standard-name", "spec-column", "twice"],
)
def test_callbacks_that_cannot_work_are_refused_when_the_outputs_open(standard, user, message):
    with pytest.raises(CallbackError, match=message):
        Outputs(standard, user)


@pytest.mark.parametrize(
    ("returns", "message"),
    [
        ({"a": 1.0, "b": 2.0}, r"returned metric\(s\) \['b'\] it did not declare; rounds.csv's header is written"),
        ({"a": "high"}, r"returned a='high'; allowed: a number or None"),
        ([1.0], r"returned list; allowed: None, or a mapping"),
    ],
    ids=["undeclared", "not-a-number", "not-a-mapping"],
)
def test_a_round_whose_returned_metrics_break_the_contract_fails_with_its_message(returns, message):
    writer_log: list = []
    outputs = Outputs([Seen("writer", writer_log, Phase.WRITE)], [Seen("p", [], metrics=["a"], returns=returns)])
    with pytest.raises(CallbackError, match=message):
        outputs.end_round(make_round(1))
    assert writer_log == []  # nothing was written from a bad round


def test_a_report_that_returns_metrics_fails_instead_of_losing_them():
    outputs = Outputs([], [Seen("late", [], returns={"a": 1.0})])
    with pytest.raises(CallbackError, match=r"Seen.on_round_end returned metric\(s\) \['a'\] it did not declare"):
        outputs.end_round(make_round(1))


# ----------------------------------------------------------------------------- a user's metric in a real run


class LearningSignal(Callback):
    """A user's per-round metrics: the global model's first weight, and the round's train loss doubled (None
    when no client trained, as in round 0)."""

    round_metrics = ("first_weight", "double_train_loss")

    def on_round_end(self, record):
        loss = record.metrics.get("train_loss")
        return {
            "first_weight": float(record.global_weights[0].flat[0]),
            "double_train_loss": None if loss is None else 2 * loss,
        }


class Weights(Callback):
    def __init__(self) -> None:
        self.first = []

    def on_round_end(self, record):
        self.first.append(float(record.global_weights[0].flat[0]))


def quietly(function, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args, **kwargs)


def test_a_user_callbacks_metrics_land_in_rounds_csv_as_their_own_columns(generated_imdb, tmp_path):
    seen = Weights()
    cfg = make_cfg(f"data.path={generated_imdb}", *QUICK, "archive.mode=none")
    quietly(run_locally, cfg, tmp_path / "with", callbacks=[LearningSignal(), seen])
    quietly(run_locally, cfg, tmp_path / "without")
    rounds = pd.read_csv(tmp_path / "with" / "rounds.csv")
    assert list(rounds.columns) == [*ROUNDS_COLUMNS, "first_weight", "double_train_loss"]
    assert rounds["round"].tolist() == [0, 1, 2] and rounds.first_weight.tolist() == seen.first
    assert pd.isna(rounds.double_train_loss[0])
    assert rounds.double_train_loss[1:].tolist() == (2 * rounds.train_loss[1:]).tolist()
    plain = pd.read_csv(tmp_path / "without" / "rounds.csv")
    assert list(plain.columns) == ROUNDS_COLUMNS  # a run without user callbacks: the SPEC's columns alone
    pd.testing.assert_frame_equal(
        rounds[ROUNDS_COLUMNS].drop(columns=TIMING, errors="ignore"),
        plain.drop(columns=TIMING, errors="ignore"),
        check_exact=True,
    )
    assert rounds.round_time_s.notna().all() and rounds.driver_rss_mb.notna().all()


def test_a_user_metric_that_was_not_declared_stops_the_run_with_its_message(generated_imdb, tmp_path):
    class Undeclared(Callback):
        round_metrics = ("declared",)

        def on_round_end(self, record):
            return {"declared": 1.0, "surprise": 2.0}

    cfg = make_cfg(f"data.path={generated_imdb}", *QUICK, "archive.mode=none")
    with pytest.raises(CallbackError, match=r"Undeclared.on_round_end returned metric\(s\) \['surprise'\]"):
        quietly(run_locally, cfg, tmp_path, callbacks=[Undeclared()])
    assert pd.read_csv(tmp_path / "rounds.csv").empty  # round 0 was refused before its row was written
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "failed"


class Counted(Callback):
    """A user's producer whose metric needs its state across a resume: rounds with updates so far."""

    round_metrics = ("trained_rounds",)

    def __init__(self) -> None:
        self.count = 0

    def on_run_start(self, saved):
        self.count = saved["count"] if saved else 0

    def on_round_end(self, record):
        self.count += bool(record.clients)
        return {"trained_rounds": self.count}

    def state(self):
        return {"count": self.count}


def test_a_resumed_run_keeps_a_user_callbacks_column(generated_imdb, tmp_path):
    overrides = [f"data.path={generated_imdb}", *QUICK, "num_rounds=3", "archive.mode=none"]
    quietly(run_locally, make_cfg(*overrides), tmp_path / "whole", callbacks=[Counted()])
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        quietly(run_locally, make_cfg(*overrides), cut, callbacks=[Counted(), Crash(at=2)])
    assert pd.read_csv(cut / "rounds.csv")["round"].tolist() == [0, 1, 2]  # round 2 written, not checkpointed
    resumed = resumed_config(make_cfg(f"resume={cut}"), [f"resume={cut}"])
    with pytest.raises(ConfigError, match="resume with the callbacks"):
        quietly(run_locally, resumed, cut)  # without the callback whose column rounds.csv has
    quietly(run_locally, resumed, cut, callbacks=[Counted(), Crash(at=99)])
    whole, back = (
        pd.read_csv(d / "rounds.csv").drop(columns=TIMING, errors="ignore") for d in (tmp_path / "whole", cut)
    )
    pd.testing.assert_frame_equal(back, whole, check_exact=True)
    assert back.trained_rounds.tolist() == [0, 1, 2, 3]
