"""The omniscient adversary's step and the robust strategies, wired: what the step sees and writes, what the
strategies aggregate (against Flower's and ByzFL's where they have them), and whole runs: the attack applied, ALIE's
reply as its formula read back from the archive, sparse replies aggregated as the dense ones."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan as FlowerBulyan
from flwr.serverapp.strategy import FedTrimmedAvg
from flwr.serverapp.strategy import MultiKrum as FlowerMultiKrum
from flwr.serverapp.strategy.multikrum import select_multikrum
from helpers.byzfl import byzfl
from helpers.configs import TIMING, make_cfg
from helpers.local_grid import LocalGrid
from helpers.runs import run_locally
from safetensors.numpy import load_file
from scipy import sparse

from fedsim.byzantine import aggregators, omniscient
from fedsim.byzantine.vectors import updates
from fedsim.client.app import make_client_app
from fedsim.client.attacks import ALIE, Omniscient
from fedsim.messages.records import ArrayView, Decoded, record_views, to_record, viewed
from fedsim.messages.sparse import densified, sparsify
from fedsim.server.adversary import Adversary
from fedsim.server.robust import ARC, NNM, Bucketing, Bulyan, CenteredClipping, MultiKrum, PreAggregated
from fedsim.server.updates import update_matrix

NAMES = ["embedding", "bias", "steps"]
START = [np.full((6, 2), 0.5, np.float32), np.zeros(3, np.float32), np.arange(2)]  # an integer buffer last


def replies_of(
    grid_messages: list[Message], updates: np.ndarray, examples: Sequence[int] | None = None
) -> list[Message]:
    """Training replies whose float weights are START plus each row of `updates`, with 10 examples each unless
    `examples` says."""
    out = []
    for i, (message, row) in enumerate(zip(grid_messages, updates)):
        weights = [START[0] + row[:12].reshape(6, 2), START[1] + row[12:], START[2]]
        metrics = MetricRecord({"num-examples": 10 if examples is None else examples[i], "train-loss": 0.5})
        out.append(Message(RecordDict({"arrays": to_record(NAMES, weights), "metrics": metrics}), reply_to=message))
    return out


def messages(strategy, n: int) -> list[Message]:
    return list(strategy.configure_train(1, to_record(NAMES, START), ConfigRecord(), LocalGrid(make_client_app(), n)))


def flat(record) -> np.ndarray:
    views = record_views(record)
    return np.concatenate([views[0].ravel() - START[0].ravel(), views[1] - START[1]])


class Recorder(Omniscient):
    """Forges the honest mean plus one, and keeps what it was shown."""

    def forge(self, honest, n, f, rng):
        Recorder.seen = (honest.copy(), n, f, rng.integers(1 << 30))
        return honest.mean(axis=0) + 1.0


def test_the_adversary_sees_the_honest_updates_and_writes_dense_replies_of_its_own():
    rng = np.random.default_rng(0)
    updates = rng.normal(size=(5, 15))
    replies = dict(enumerate(replies_of(messages(CenteredClipping(), 5), updates)))
    honest_before = flat(replies[0].content["arrays"])
    adversary = Adversary(Recorder(), frozenset({1, 3}), seed=7)
    adversary.forge(2, to_record(NAMES, START), replies)
    honest, n, f, draw = Recorder.seen
    np.testing.assert_allclose(honest, updates[[0, 2, 4]], rtol=1e-6)  # the honest ones, in partition order
    assert (n, f) == (5, 2)
    for p in (1, 3):
        np.testing.assert_allclose(flat(replies[p].content["arrays"]), updates[[0, 2, 4]].mean(axis=0) + 1, rtol=1e-5)
        assert np.array_equal(record_views(replies[p].content["arrays"])[2], START[2])  # buffers kept
    assert replies[1].content["arrays"] is not replies[3].content["arrays"]
    np.testing.assert_array_equal(flat(replies[0].content["arrays"]), honest_before)  # honest replies untouched
    adversary.forge(2, to_record(NAMES, START), dict(enumerate(replies_of(messages(CenteredClipping(), 5), updates))))
    assert Recorder.seen[3] == draw  # its randomness: from (seed, round) alone


def test_attackers_alone_submit_the_zero_update():
    replies = dict(enumerate(replies_of(messages(CenteredClipping(), 2), np.ones((2, 15)))))
    Adversary(ALIE(z=1.0), frozenset({0, 1}), seed=0).forge(1, to_record(NAMES, START), replies)
    assert all(np.array_equal(flat(r.content["arrays"]), np.zeros(15)) for r in replies.values())


def test_centered_clipping_strategy_centres_each_round_on_the_last_aggregate():
    strategy = CenteredClipping(tau=0.5, iterations=2)
    rng = np.random.default_rng(1)
    center = np.zeros(15)
    for server_round in (1, 2):
        updates = rng.normal(size=(6, 15))
        aggregated, _ = strategy.aggregate_train(server_round, replies_of(messages(strategy, 6), updates))
        center = aggregators.centered_clipping(updates.astype(np.float32), center, 0.5, 2)
        np.testing.assert_allclose(flat(aggregated), center, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(strategy.center, center, rtol=1e-5, atol=1e-6)  # kept for the next round


@pytest.mark.parametrize(("f", "m"), [(0, 1), (1, 3), (2, 6), (3, 10)])
def test_weighted_multi_krum_with_m_is_flowers_multikrum(f, m):
    """fedsim's Multi-Krum with `weighted` and an explicit m aggregates the same replies to what Flower's MultiKrum
    (num_malicious_nodes=f, num_nodes_to_select=m) does, to float32 rounding."""
    updates = np.random.default_rng(f).normal(size=(10, 15)) * np.linspace(0.5, 3, 10)[:, None]
    examples = [7, 120, 33, 5, 64, 18, 90, 41, 2, 77]
    aggregated = []
    for strategy in (
        MultiKrum(num_malicious_nodes=f, m=m, weighted=True),
        FlowerMultiKrum(num_malicious_nodes=f, num_nodes_to_select=m),
    ):
        aggregated.append(flat(strategy.aggregate_train(1, replies_of(messages(strategy, 10), updates, examples))[0]))
    np.testing.assert_allclose(*aggregated, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("f_byzfl", [1, 2, 4])
def test_unweighted_multi_krum_of_a_round_is_byzfls(f_byzfl):
    """ByzFL's MultiKrum(f') scores over n - f' - 1 neighbours and averages the n - f' best; the paper (and fedsim)
    score over n - f - 2. So fedsim's strategy with f = f' - 1, m = n - f' and the plain mean (weighted false, the
    default) is ByzFL's MultiKrum(f'), whatever the replies' examples."""
    updates = np.random.default_rng(f_byzfl).normal(size=(10, 15)) * np.linspace(0.5, 3, 10)[:, None]
    strategy = MultiKrum(num_malicious_nodes=f_byzfl - 1, m=10 - f_byzfl)
    replies = replies_of(messages(strategy, 10), updates, [7, 120, 33, 5, 64, 18, 90, 41, 2, 77])
    theirs = byzfl("aggregators.aggregators").MultiKrum(f=f_byzfl)(updates.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(flat(strategy.aggregate_train(1, replies)[0]), theirs, rtol=1e-5, atol=1e-6)


def test_multi_krum_m_defaults_to_n_minus_f_of_the_rounds_replies():
    """m null is n - f with n the replies of the round: 8 of 10 replies, 7 of 9 (a client failed), for f = 2."""
    updates = np.random.default_rng(9).normal(size=(10, 15)) * np.linspace(0.5, 3, 10)[:, None]

    def aggregate(strategy: MultiKrum, n: int) -> np.ndarray:
        return flat(strategy.aggregate_train(1, replies_of(messages(strategy, 10)[:n], updates))[0])

    for n in (10, 9):
        default = aggregate(MultiKrum(num_malicious_nodes=2), n)
        np.testing.assert_array_equal(default, aggregate(MultiKrum(num_malicious_nodes=2, m=n - 2), n))
        assert not np.array_equal(default, aggregate(MultiKrum(num_malicious_nodes=2, m=n - 3), n))


def recursive_flower_krum(contents: list[RecordDict], num_malicious_nodes: int, theta: int) -> list[RecordDict]:
    """The paper's Bulyan selection from Flower's own Krum: `select_multikrum` picking one of those that remain,
    theta times."""
    remaining, chosen = list(contents), []
    while len(chosen) < theta:
        chosen.append(select_multikrum(remaining, num_malicious_nodes, 1)[0])
        remaining = [c for c in remaining if c is not chosen[-1]]
    return chosen


def test_bulyan_selects_recursively_by_default_and_as_flower_with_one_shot(without_full_collections):
    """fedsim's Bulyan: with selection one_shot, Flower's Bulyan to the bit; by default, Flower's Bulyan whose
    selection rule is Flower's Krum applied recursively, to the bit (the same replies in the same order), and here
    a different aggregate from the one-shot one. n = 15, f = 3 (no exact ties of Krum scores: see
    tests/byzantine/test_aggregators.py)."""
    updates = np.random.default_rng(11).normal(size=(15, 15)) * np.linspace(0.5, 3, 15)[:, None]

    def aggregate(strategy) -> list[np.ndarray]:
        return record_views(strategy.aggregate_train(1, replies_of(messages(strategy, 15), updates))[0])

    one_shot = aggregate(Bulyan(selection="one_shot", num_malicious_nodes=3))
    recursive = aggregate(Bulyan(num_malicious_nodes=3))
    for ours, theirs in zip(one_shot, aggregate(FlowerBulyan(num_malicious_nodes=3))):
        np.testing.assert_array_equal(ours, theirs)
    reference = aggregate(FlowerBulyan(num_malicious_nodes=3, selection_rule=recursive_flower_krum))
    for ours, theirs in zip(recursive, reference):
        np.testing.assert_array_equal(ours, theirs)
    assert not all(np.array_equal(a, b) for a, b in zip(recursive, one_shot))


def test_pre_aggregation_hands_the_mixed_updates_to_the_wrapped_strategy():
    """NNM then Flower's trimmed mean equals the trimmed mean of the NNM-mixed update vectors."""
    strategy = PreAggregated(FedTrimmedAvg(beta=0.2), NNM(f=2))
    updates = np.random.default_rng(2).normal(size=(10, 15)).astype(np.float32)
    aggregated, _ = strategy.aggregate_train(1, replies_of(messages(strategy, 10), updates))
    mixed = np.sort(aggregators.nnm(updates, 2), axis=0)[2:-2].mean(axis=0)
    np.testing.assert_allclose(flat(aggregated), mixed, rtol=1e-5, atol=1e-6)


def read(run_dir, name: str) -> pd.DataFrame:
    return pd.read_csv(run_dir / name).drop(columns=TIMING, errors="ignore")


ATTACKED = ["num_clients=6", "num_rounds=2", "data.train_size=900", "data.test_size=300", "client.local_epochs=2"]


def test_alies_reply_is_the_honest_mean_plus_z_std_read_back_from_the_archive(imdb_dir, tmp_path):
    """Every malicious client's archived weights in round 2 are g + mean + z * std (ddof 1, the plus sign) of that
    round's honest updates, g the global model of round 1."""
    run_locally(
        make_cfg(
            f"data.path={imdb_dir}",
            *ATTACKED,
            "attack=alie",
            "attack.node_ratio=0.34",
            "attack.z=1.5",
            "archive.mode=all",
        ),  # fmt: skip
        tmp_path,
    )
    manifest = pd.read_csv(tmp_path / "weights" / "manifest.csv")
    clients = pd.read_csv(tmp_path / "clients.csv").query("round == 2").set_index("client_id")

    def weights(row) -> np.ndarray:
        tensors = load_file(str(tmp_path / row.path))
        return np.concatenate([tensors[k].ravel() for k in tensors]).astype(np.float64)

    global_1 = weights(manifest.query("round == 1 and kind == 'global'").iloc[0])
    archived = {
        int(r.client_id): weights(r) - global_1 for r in manifest.query("round == 2 and kind == 'client'").itertuples()
    }
    honest = np.stack([u for c, u in sorted(archived.items()) if not clients.loc[c, "is_malicious"]])
    malicious = [u for c, u in archived.items() if clients.loc[c, "is_malicious"]]
    assert len(malicious) == 2 and len(honest) == 4
    expected = honest.mean(axis=0) + 1.5 * honest.std(axis=0, ddof=1)
    for update in malicious:
        np.testing.assert_allclose(update, expected, atol=2e-6)
    np.testing.assert_allclose(expected, omniscient.alie(honest, 1.5))


def test_a_large_ipm_takes_fedavg_far_below_the_same_run_unattacked(imdb_dir, tmp_path):
    common = [f"data.path={imdb_dir}", *ATTACKED, "num_rounds=3", "data.train_size=1500", "archive.mode=none"]
    run_locally(make_cfg(*common), tmp_path / "clean")
    run_locally(make_cfg(*common, "attack=ipm", "attack.epsilon=10"), tmp_path / "ipm")
    clean, attacked = (read(tmp_path / d, "rounds.csv").central_accuracy.iloc[-1] for d in ("clean", "ipm"))
    assert clean > 0.6 and attacked < clean - 0.1


@pytest.mark.parametrize(
    "choice",
    [
        "strategy=geometric_median pre=arc attack=minsum",
        "strategy=centered_clipping attack=mimic strategy.fraction_train=0.5",  # partial participation too
        "strategy=krum",
        "strategy=multikrum attack=alie",
    ],
)
def test_sparse_replies_aggregate_exactly_as_dense_ones(imdb_dir, tmp_path, choice):
    """An untouched embedding row is a zero update in a sparse reply as in the dense one: whole runs equal."""
    common = [f"data.path={imdb_dir}", *ATTACKED, "archive.mode=none", *choice.split()]
    run_locally(make_cfg(*common, "sparse_updates=true"), tmp_path / "sparse")
    run_locally(make_cfg(*common, "sparse_updates=false"), tmp_path / "dense")
    for name in ("rounds.csv", "clients.csv", "layers.csv"):
        pd.testing.assert_frame_equal(read(tmp_path / "sparse", name), read(tmp_path / "dense", name), check_exact=True)


def test_a_round_of_sparse_replies_is_read_as_they_travelled():
    """Replies that changed few embedding rows give a sparse update matrix equal to the dense matrix of the same
    replies rebuilt whole; replies that changed most rows give the dense one."""
    sent = to_record(["embedding", "bias"], [np.zeros((400, 4), np.float32), np.zeros(2, np.float32)])
    rng = np.random.default_rng(3)

    def reply(rows: int) -> Message:
        weights = [np.zeros((400, 4), np.float32), rng.normal(size=2).astype(np.float32)]
        weights[0][rng.choice(400, rows, replace=False)] = rng.normal(size=(rows, 4))
        arrays, ids = sparsify(sent, to_record(["embedding", "bias"], weights))
        return Message(RecordDict({"arrays": densified(arrays, ids, sent, ArrayView)}), reply_to=sent_message)

    sent_message = messages(CenteredClipping(), 2)[0]
    start = record_views(sent)
    few = [reply(5) for _ in range(6)]
    matrix = update_matrix(few, start)
    assert sparse.issparse(matrix)
    np.testing.assert_array_equal(matrix.toarray(), updates([Decoded(r.content["arrays"]) for r in few], start))
    assert not sparse.issparse(update_matrix([reply(150) for _ in range(3)], start))


@pytest.mark.parametrize("step", [NNM(f=2), Bucketing(s=2, seed=1), ARC(f=2)], ids=["nnm", "bucketing", "arc"])
def test_pre_aggregation_of_sparse_replies_equals_that_of_the_same_replies_dense(step):
    """A round of replies that changed few rows goes through a pre-aggregation step as a sparse matrix, and the
    wrapped strategy's aggregate equals the one from the same replies made dense."""
    sent = to_record(["embedding", "bias"], [np.zeros((400, 4), np.float32), np.zeros(2, np.float32)])
    rng = np.random.default_rng(4)
    sent_message = messages(CenteredClipping(), 2)[0]
    sparse_replies, dense_replies = [], []
    for _ in range(8):
        weights = [np.zeros((400, 4), np.float32), rng.normal(size=2).astype(np.float32)]
        weights[0][rng.choice(400, 5, replace=False)] = rng.normal(size=(5, 4))
        arrays, ids = sparsify(sent, to_record(["embedding", "bias"], weights))
        metrics = MetricRecord({"num-examples": 10, "train-loss": 0.5})
        for out, record in (
            (sparse_replies, densified(arrays, ids, sent, ArrayView)),
            (dense_replies, viewed(to_record(["embedding", "bias"], weights))),
        ):
            out.append(Message(RecordDict({"arrays": record, "metrics": metrics}), reply_to=sent_message))
    aggregated = []
    for replies in (sparse_replies, dense_replies):
        strategy = PreAggregated(FedTrimmedAvg(beta=0.2), step)
        strategy.configure_train(1, sent, ConfigRecord(), LocalGrid(make_client_app(), 8))
        aggregated.append(record_views(strategy.aggregate_train(1, replies)[0]))
    assert sparse.issparse(update_matrix(sparse_replies, record_views(sent)))
    for ours, theirs in zip(*aggregated):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
