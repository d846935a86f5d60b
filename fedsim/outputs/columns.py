"""The columns of every table a run writes, in order: the public interface researchers read in notebooks
(../shared/SPEC.md; tests/docs/test_docs.py checks these against it). Columns may be added, never renamed."""

ROUNDS_COLUMNS = [
    "round",
    "central_loss",
    "central_accuracy",
    "fed_loss",
    "fed_accuracy",
    "train_loss",
    "num_fit_clients",
    "num_failures",
    "round_time_s",
    "driver_rss_mb",
    "driver_shared_mb",
    "num_dropped",
    "num_late",
    "sim_round_time_s",
    "epsilon",
]

CLIENTS_COLUMNS = [
    "round",
    "client_id",
    "num_examples",
    "train_loss",
    "fit_time_s",
    "is_malicious",
    "attack",
    "update_norm",
    "cosine_to_mean",
    "distance_to_median",
    "norm_zscore",
    "status",
    "error",
    "sim_time_s",
    "node",
    "retries",
    "retry_reason",
]

LAYER_COLUMNS = [
    "round",
    "layer",
    "num_clients",
    "mean_variance",
    "num_outliers",
    "weight_min",
    "weight_max",
    "weight_mean",
    "weight_median",
    "weight_std",
    "weight_q25",
    "weight_q75",
    "first_weight",
    "attack",
    "malicious_node_ratio",
]

CLIENT_STAT_COLUMNS = ["update_norm", "cosine_to_mean", "distance_to_median", "norm_zscore"]

DETECTION_COLUMNS = [
    "detector",
    "round",
    "auc",
    "precision",
    "recall",
    "threshold",
    "num_flagged",
    "num_malicious",
    "num_clients",
]

MANIFEST_COLUMNS = ["round", "kind", "client_id", "path", "num_bytes"]
