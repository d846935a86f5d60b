"""`transport`: client updates in float16/bfloat16 and back, and the server aggregating them in float32."""

import json

import numpy as np
import pytest
import torch
from helpers.configs import make_cfg
from helpers.runs import run_locally

from fedsim.config.validate import TRANSPORTS
from fedsim.messages.records import to_record, viewed
from fedsim.messages.transport import VIEWS, encode, to_float32
from fedsim.outputs.base import Callback


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_updates_round_trip_rounded_to_the_transport_and_back_in_float32(transport):
    weights = [np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32) * 100, np.arange(6)]
    sent = encode(weights, transport)
    back = [to_float32(a, transport) for a in sent]
    rounded = {
        "float32": weights[0],
        "float16": weights[0].astype(np.float16).astype(np.float32),
        "bfloat16": torch.from_numpy(weights[0]).bfloat16().float().numpy(),
    }[transport]
    assert back[0].dtype == np.float32 and np.array_equal(back[0], rounded)
    assert sent[0].nbytes == weights[0].nbytes // (1 if transport == "float32" else 2)
    assert np.array_equal(back[1], weights[1]) and back[1].dtype == weights[1].dtype  # not a float: untouched
    assert (transport == "float32") == np.array_equal(back[0], weights[0])
    as_aggregated = viewed(to_record(["w", "i"], sent), VIEWS[transport])  # what the strategy reads
    assert all(
        np.array_equal(as_aggregated[k].numpy(), b) and as_aggregated[k].numpy().dtype == b.dtype
        for k, b in zip(("w", "i"), back)
    )


class Rounds(Callback):
    def __init__(self) -> None:
        self.records = []

    def on_round_end(self, record) -> None:
        if record.server_round:
            self.records.append(
                (
                    [np.array(w) for w in record.global_weights],
                    [([np.array(w) for w in c.weights], c.num_examples) for c in record.clients],
                )
            )


def test_float16_updates_are_aggregated_in_float32_and_named_in_run_json(generated_imdb, tmp_path):
    seen = Rounds()
    run_locally(
        make_cfg(
            f"data.path={generated_imdb}",
            "num_clients=3",
            "num_rounds=1",
            "data.train_size=600",
            "data.test_size=100",
            "archive.mode=none",
            "transport=float16",
        ),
        tmp_path,
        callbacks=[seen],
    )
    ((global_weights, clients),) = seen.records
    total = sum(n for _, n in clients)
    for layer, aggregated in enumerate(global_weights):
        received = [w[layer] for w, _ in clients]
        assert all(np.array_equal(w, w.astype(np.float16).astype(np.float32)) for w in received)  # travelled in f16
        mean = sum(w.astype(np.float64) * n for w, (_, n) in zip(received, clients)) / total
        assert aggregated.dtype == np.float32 and np.allclose(aggregated, mean, rtol=1e-6, atol=1e-7)
    embedding = global_weights[0]  # a float16 sum would leave every weight on float16's grid
    assert not np.array_equal(embedding, embedding.astype(np.float16).astype(np.float32))
    assert json.loads((tmp_path / "run.json").read_text())["transport"] == "float16"
