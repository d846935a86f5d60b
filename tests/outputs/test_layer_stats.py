"""Scrutiny statistics against a plain NumPy reference, and the archive's round trip."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.outputs.archive import Archive, ArchiveWriter, check_disk, expected_bytes
from fedsim.outputs.layer_stats import (
    coordinate_median,
    layer_statistics,
    round_statistics,
)
from fedsim.outputs.quantiles import exact_quantiles
from fedsim.system.errors import ConfigError


def test_layer_statistics_match_numpy_with_a_planted_outlier():
    rng = np.random.default_rng(0)
    stack = rng.standard_normal((12, 50)).astype(np.float32)
    stack[3, 7] = 100.0  # with 12 clients |z| can reach sqrt(11) > 3
    stats = layer_statistics(stack)
    z = (stack - stack.mean(axis=0)) / stack.std(axis=0)
    assert stats["num_outliers"] == np.count_nonzero(np.abs(z) > 3) >= 1
    assert stats["mean_variance"] == pytest.approx(np.var(stack, axis=0).mean(), rel=1e-6)
    assert stats["weight_median"] == pytest.approx(np.median(stack), rel=1e-6)
    assert stats["weight_q25"] == pytest.approx(np.quantile(stack, 0.25), rel=1e-6)
    assert stats["weight_q75"] == pytest.approx(np.quantile(stack, 0.75), rel=1e-6)
    assert stats["weight_std"] == pytest.approx(stack.std(), rel=1e-6)
    assert (stats["weight_min"], stats["weight_max"]) == (stack.min(), 100.0)
    assert stats["first_weight"] == pytest.approx(stack[:, 0].mean(), rel=1e-6)


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(4).standard_normal((10, 3000)),  # one bucket holds several wanted ranks
        np.random.default_rng(5).integers(-3, 3, 1001),  # ties across buckets
        np.array([-0.0, 0.0, -1.0, 2.0, 2.0, 2.0]),  # signed zeros, repeats
        -np.abs(np.random.default_rng(6).standard_normal(99)) * 1e-30,  # all negative, tiny
        np.array([7.0]),
        np.array([1.0, np.nan, 2.0]),  # NaN: NumPy's own answer
    ],
)
def test_exact_quantiles_match_numpy(values, monkeypatch):
    monkeypatch.setattr("fedsim.outputs.quantiles.RADIX_MIN", 0)  # the bucket path even for these small arrays
    values = np.asarray(values, dtype=np.float32)
    qs = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]
    np.testing.assert_allclose(exact_quantiles(values, qs), np.quantile(values, qs), rtol=1e-6, equal_nan=True)


@pytest.mark.parametrize("k", [1, 2, 3, 10, 16, 17, 40])
def test_coordinate_median_matches_numpy(k):
    stack = np.random.default_rng(k).standard_normal((k, 500))
    stack[:, :50] = 1.0  # columns where every client agrees
    np.testing.assert_array_equal(coordinate_median(stack), np.median(stack, axis=0))


def test_layer_statistics_over_several_blocks(monkeypatch):
    monkeypatch.setattr("fedsim.outputs.layer_stats.BLOCK", 7)
    stack = np.random.default_rng(8).standard_normal((12, 100)).astype(np.float32) * 3 + 1
    stack[0, 55] = 40.0
    stats = layer_statistics(stack)
    z = (stack - stack.mean(axis=0)) / stack.std(axis=0)
    assert stats["num_outliers"] == np.count_nonzero(np.abs(z) > 3) >= 1
    assert stats["weight_mean"] == pytest.approx(stack.mean(dtype=np.float64), rel=1e-9)
    assert stats["weight_std"] == pytest.approx(stack.std(dtype=np.float64), rel=1e-9)
    assert stats["mean_variance"] == pytest.approx(np.var(stack, axis=0, dtype=np.float64).mean(), rel=1e-9)


def test_one_client_apart_from_ten_is_not_an_outlier():
    stack = np.zeros((10, 1000), dtype=np.float32)
    stack[4] = np.random.default_rng(3).standard_normal(1000).astype(np.float32)  # |z| = 3 exactly
    assert layer_statistics(stack)["num_outliers"] == 0


def test_no_outliers_where_clients_agree():
    assert layer_statistics(np.ones((12, 5), dtype=np.float32))["num_outliers"] == 0


@pytest.mark.parametrize("block", [2, 1 << 14])
def test_update_statistics_match_numpy(monkeypatch, block):
    monkeypatch.setattr("fedsim.outputs.layer_stats.BLOCK", block)
    rng = np.random.default_rng(1)
    start = [rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)]
    clients = [[w + rng.standard_normal(w.shape).astype(np.float32) * (i + 1) for w in start] for i in range(5)]
    layers, rows = round_statistics(["a", "b"], start, clients)
    updates = np.stack([np.concatenate([(c - s).ravel() for c, s in zip(w, start)]) for w in clients])
    norms = np.linalg.norm(updates, axis=1)
    median = np.median(updates, axis=0)
    for i, row in enumerate(rows):
        others = np.delete(updates, i, axis=0).mean(axis=0)
        cosine = updates[i] @ others / (norms[i] * np.linalg.norm(others))
        assert row["update_norm"] == pytest.approx(norms[i], rel=1e-5)
        assert row["cosine_to_mean"] == pytest.approx(cosine, rel=1e-4, abs=1e-6)
        assert row["distance_to_median"] == pytest.approx(np.linalg.norm(updates[i] - median), rel=1e-5)
        assert row["norm_zscore"] == pytest.approx((norms[i] - norms.mean()) / norms.std(), rel=1e-5)
    assert [layer["layer"] for layer in layers] == ["a", "b"]


@pytest.mark.parametrize("dtype, tolerance", [("float32", 0.0), ("float16", 1e-3), ("bfloat16", 1e-2)])
def test_archive_round_trip(tmp_path, dtype, tolerance):
    rng = np.random.default_rng(2)
    names = ["layer.weight", "layer.bias", "steps"]
    weights = [
        rng.standard_normal((8, 4)).astype(np.float32),
        rng.standard_normal(4).astype(np.float32),
        np.array([3], dtype=np.int64),
    ]
    writer = ArchiveWriter(tmp_path, names, ["*"], dtype)
    writer.put(0, weights)
    writer.put(1, weights, client_id=2)
    writer.close()
    archive = Archive(tmp_path)
    assert archive.rounds() == [0, 1] and archive.clients(1) == [2]
    for name, original in zip(names, weights):
        stored = archive.tensor(1, name, client_id=2)
        np.testing.assert_allclose(stored, original, rtol=tolerance, atol=tolerance)
    assert archive.manifest["num_bytes"].gt(0).all()


def test_archive_keeps_only_selected_layers(tmp_path):
    writer = ArchiveWriter(tmp_path, ["enc.weight", "head.weight"], ["head.*"], "float32")
    writer.put(0, [np.zeros(3, np.float32), np.ones(2, np.float32)])
    writer.close()
    assert Archive(tmp_path).layers() == ["head.weight"]


def test_disk_check_refuses_a_run_that_would_not_fit(tmp_path, monkeypatch):
    weights = [np.zeros((1000, 100), np.float32)]
    needed = expected_bytes(weights, ["w"], ["w"], "float32", "all", num_rounds=3, clients_per_round=10)
    assert needed == 400_000 * (3 * (10 + 1) + 1)  # every round: 10 clients and the global; plus round 0
    monkeypatch.setattr("shutil.disk_usage", lambda path: type("Usage", (), {"free": needed - 1})())
    with pytest.raises(ConfigError, match="archive.mode"):
        check_disk(tmp_path, needed)


def test_disk_check_counts_the_final_model_and_the_checkpoint_without_an_archive(tmp_path, monkeypatch):
    from helpers.configs import make_cfg

    from fedsim.config.settings import OutputSettings
    from fedsim.run.experiment import check_space

    weights = [np.zeros((1000, 100), np.float32)]  # 400 kB: the model; the checkpoint up to 4x, twice while replaced
    for free, refused in ((9 * 400_000 - 1, True), (9 * 400_000, False)):
        monkeypatch.setattr("shutil.disk_usage", lambda path, free=free: type("Usage", (), {"free": free})())
        if refused:
            with pytest.raises(ConfigError, match="checkpoint, final model"):
                check_space(OutputSettings.of(make_cfg("archive.mode=none")), tmp_path, ["w"], weights, 10)
        else:
            check_space(OutputSettings.of(make_cfg("archive.mode=none")), tmp_path, ["w"], weights, 10)
