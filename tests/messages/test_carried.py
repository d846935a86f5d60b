"""One message per simulated node carrying its share of the cohort, and sparse replies: each gives the run of one
message per client with dense replies, to the bit; a sparse reply rebuilds the client's weights exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from helpers.configs import QUICK, TIMING, make_cfg
from helpers.runs import run_locally

from fedsim.config.counts import Counts
from fedsim.config.settings import SimulationSettings
from fedsim.messages.carried import carry, pack, same_content, split, unpack
from fedsim.messages.records import ArrayView, Decoded, to_record
from fedsim.messages.sparse import densified, sparsify
from fedsim.runtimes.simulation import node_slots

CSVS = ("rounds.csv", "clients.csv", "layers.csv")


def files(run_dir: Path) -> dict[str, bytes]:
    """Every archived weight file of a run, by its path in the run."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted((run_dir / "weights").rglob("*.safetensors"))}


@pytest.mark.parametrize(
    "study",
    [
        ["strategy=fedprox", "strategy.proximal_mu=0.5"],
        ["attack=gaussian_noise", "attack.node_ratio=0.2", "strategy=krum", "num_clients=6"],
        ["privacy=client_fixed", "privacy.clipping_norm=0.5", "privacy.noise_multiplier=0.1"],
    ],
    ids=["fedprox", "noise-krum", "client-dp"],
)
def test_carried_cohorts_and_sparse_replies_give_the_per_client_run_to_the_bit(generated_imdb, tmp_path, study):
    overrides = [f"data.path={generated_imdb}", *QUICK, "archive.mode=all", *study]
    plain = make_cfg(*overrides, "runtime.cohort_messages=false", "sparse_updates=false")
    per_client = run_locally(plain, tmp_path / "per_client")
    carried = run_locally(make_cfg(*overrides), tmp_path / "carried", slots=2)
    assert {n for kind, n in per_client.messages if kind == "train"} == {1}
    assert [n for kind, n in carried.messages if kind == "train"] == [plain.num_clients - plain.num_clients // 2,
                                                                       plain.num_clients // 2] * 2  # fmt: skip
    for name in CSVS:
        a, b = pd.read_csv(tmp_path / "per_client" / name), pd.read_csv(tmp_path / "carried" / name)
        drop = [c for c in TIMING if c in a.columns]
        pd.testing.assert_frame_equal(a.drop(columns=drop), b.drop(columns=drop), check_exact=True)
    archived = files(tmp_path / "per_client")
    assert len(archived) == 1 + 2 * (1 + plain.num_clients) and archived == files(tmp_path / "carried")


def test_sparse_replies_travel_when_few_rows_change(generated_imdb, tmp_path, monkeypatch):
    """The bow embedding reaches the server as rows; the classifier layer dense (too small to gain)."""
    import fedsim.messages.sparse as sparse

    seen: list[tuple[str, ...]] = []
    rebuilt = sparse.densified

    def spy(arrays, ids, sent, view):
        seen.append(tuple(ids.keys()))
        return rebuilt(arrays, ids, sent, view)

    monkeypatch.setattr(sparse, "densified", spy)
    run_locally(make_cfg(f"data.path={generated_imdb}", *QUICK, "archive.mode=none"), tmp_path)
    assert seen == [("embedding.weight",)] * 8


def reply_for(sent: np.ndarray, new: np.ndarray) -> np.ndarray:
    """What the server reads from the sparse reply of a client that trained `sent` into `new`."""
    names = ["embedding.weight", "fc.bias"]
    sent_record = to_record(names, [sent, np.zeros(2, np.float32)])
    arrays, ids = sparsify(sent_record, to_record(names, [new, np.ones(2, np.float32)]))
    assert "fc.bias" not in ids  # 1-D tensors stay dense
    read = Decoded(densified(arrays, ids, sent_record, ArrayView))
    np.testing.assert_array_equal(read[1], np.ones(2, np.float32))
    return read[0], ("embedding.weight" in ids)


@pytest.mark.parametrize("changed", ["none", "few", "sign", "all"])
def test_a_sparse_reply_rebuilds_the_clients_weights_exactly(changed):
    rng = np.random.default_rng(0)
    sent = rng.standard_normal((1000, 16)).astype(np.float32)
    sent[7] = 0.0
    new = sent.copy()
    if changed == "few":
        new[[3, 500, 999]] += rng.standard_normal((3, 16)).astype(np.float32)
    elif changed == "sign":
        new[7, 4] = -0.0  # equal as numbers, not as bits: the client's weights are its bits
    elif changed == "all":
        new = new + 1.0
    rebuilt, sparse = reply_for(sent, new)
    assert rebuilt.tobytes() == new.tobytes() and rebuilt.dtype == np.float32
    assert sparse == (changed in ("none", "few", "sign"))  # all rows changed: dense, half its bytes are not saved


def test_a_sparse_reply_is_not_made_across_dtypes_or_shapes():
    sent = to_record(["w"], [np.zeros((100, 4), np.float32)])
    for new in (np.zeros((100, 4), np.float16), np.zeros((50, 8), np.float32)):
        arrays, ids = sparsify(sent, to_record(["w"], [new]))
        assert not len(ids) and arrays["w"].data == to_record(["w"], [new])["w"].data


def test_a_carried_reply_gives_each_client_its_own_answer_or_error():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    content = RecordDict({"arrays": to_record(["w"], [np.ones(3, np.float32)]), "config": ConfigRecord({"lr": 0.1})})
    sent = Message(carry(content, [2, 5, 9], 10), dst_node_id=7, message_type=MessageType.TRAIN)
    sent.metadata.__dict__["_message_id"] = "m1"
    singles = split(sent)
    assert [p for p, _ in singles] == [2, 5, 9]
    assert all(dict(m.content["partition"]) == {"partition-id": p, "num-partitions": 10} for p, m in singles)
    assert all(m.content["arrays"] is content["arrays"] for _, m in singles)  # the model travelled once
    answers = [
        Message(RecordDict({"metrics": MetricRecord({"num-examples": p})}), reply_to=m) for p, m in singles[:2]
    ] + [Message(Error(code=1, reason="ValueError: bad"), reply_to=singles[2][1])]
    unpacked = unpack(Message(pack(answers), reply_to=sent), [2, 5, 9])
    assert [unpacked[p].content["metrics"]["num-examples"] for p in (2, 5)] == [2, 5]
    assert unpacked[9].has_error() and unpacked[9].error.reason == "ValueError: bad"
    failed = unpack(Message(Error(code=3, reason="node lost"), reply_to=sent), [2, 5, 9])
    assert all(m.has_error() and m.error.reason == "node lost" for m in failed.values())
    assert unpack(None, [2, 5, 9]) == {2: None, 5: None, 9: None}


def test_messages_that_differ_are_not_carried():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID

    def message(lr: float, value: float) -> Message:
        content = RecordDict(
            {"arrays": to_record(["w"], [np.full(3, value, np.float32)]), "c": ConfigRecord({"lr": lr})}
        )
        return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)

    assert same_content([message(0.1, 1.0), message(0.1, 1.0)]) is not None  # equal, though not the same objects
    assert same_content([message(0.1, 1.0), message(0.2, 1.0)]) is None
    assert same_content([message(0.1, 1.0), message(0.1, 2.0)]) is None


@pytest.mark.parametrize(
    "clients, carried, actors, slots",
    [(40, True, 2, 2), (40, True, 64, 40 // 2), (40, False, 2, 40 // 2), (2, True, 2, 1)],
)
def test_auto_node_slots_are_the_client_actors_when_messages_carry_cohorts(clients, carried, actors, slots):
    """40 clients, half train and half evaluate a round: 20 messages at once, or one per client actor."""
    cfg = make_cfg(
        f"num_clients={clients}",
        "strategy.fraction_train=0.5",
        "strategy.fraction_evaluate=0.5",
        f"runtime.cohort_messages={str(carried).lower()}",
    )
    assert node_slots(SimulationSettings.of(cfg), Counts.of(cfg).at_once, actors) == slots
