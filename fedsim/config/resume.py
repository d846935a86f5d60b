"""`python main.py resume=RUN_DIR`: the stopped run's own config, checked before anything is touched."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from fedsim.config.compose import compose
from fedsim.rundir import config_path, effective_status, read_info
from fedsim.system.errors import ConfigError

# What a resume may change: how long, how verbose, and where the clients run (a Ray cluster, its share of
# actors), which leaves results unchanged; anything else would be another run.
CHANGEABLE = ("num_rounds", "log_level", "ray.address", "ray.max_actors")


# Where each object a saved config builds lives now, for runs saved before fedsim's packages (issue 26).
MOVED = {
    "fedsim.attacks.": "fedsim.client.attacks.",
    "fedsim.faults.": "fedsim.server.faults.",
    "fedsim.models.": "fedsim.model.nets.",
    "fedsim.features.": "fedsim.data.features.",
    "fedsim.data.pathological_partitioner": "fedsim.data.partitioners.pathological_partitioner",
    "fedsim.data.partition.pathological_partitioner": "fedsim.data.partitioners.pathological_partitioner",
    "fedsim.privacy.Privacy": "fedsim.privacy.dp.Privacy",
    "fedsim.runtimes.Simulation": "fedsim.runtimes.simulation.Simulation",
    "fedsim.runtimes.Deployment": "fedsim.runtimes.deployment.Deployment",
    "fedsim.tracking.NoTracking": "fedsim.outputs.tracking.tracker.NoTracking",
    "fedsim.outputs.tracking.base.NoTracking": "fedsim.outputs.tracking.tracker.NoTracking",  # renamed 2026-12
    "fedsim.tracking.TensorBoard": "fedsim.outputs.tracking.tensorboard.TensorBoard",
    "fedsim.tracking.MLflow": "fedsim.outputs.tracking.mlflow.MLflow",
    "fedsim.tracking.WandB": "fedsim.outputs.tracking.wandb.WandB",
}


MIN_SUM = "fedsim.client.attacks.MinSum"  # its attack.bound (issue 45): an older run's, the largest honest sum


def upgrade(saved: DictConfig) -> DictConfig:
    """A config saved by an older fedsim, as this one reads it; every old-run upgrade is here, in one step.

    A key or group the run lacks did not exist when it ran, and it ran with what is now that key's
    default (`runtime`, `faults`, `privacy`, `tracking`, `transport`, `ray`, the runtime's timeouts): each
    is taken from conf/. Every `_target_` is renamed to where its object lives now. A Min-Sum run without
    `attack.bound` ran with the bound that is now `max`. Nothing else in fedsim needs to know that a run is old.
    """
    runtime = [f"runtime={saved.runtime.name}"] if "runtime" in saved else []
    current = compose(runtime)
    with open_dict(saved):
        for key in current:
            if key not in saved:
                saved[key] = current[key]
        for key in current.runtime:
            if key not in saved.runtime:
                saved.runtime[key] = current.runtime[key]
    _rename_targets(saved)
    attack = saved.get("attack")
    if attack is not None and attack.get("_target_") == MIN_SUM and "bound" not in attack:
        with open_dict(saved):
            attack.bound = "max"  # the bound a Min-Sum run had before attack.bound, whose default is now min
    return saved


def _rename_targets(node: DictConfig) -> None:
    for key in list(node.keys()):
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _rename_targets(child)
        elif key == "_target_":
            target = str(node[key])
            for old, new in MOVED.items():
                if target.startswith(old) and not target.startswith(new):
                    node[key] = new + target[len(old) :] if old.endswith(".") else new
                    break


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def resumed_config(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """`cfg` itself for a fresh run; for `resume=RUN_DIR`, RUN_DIR's config.yaml with `resume` set
    and any CHANGEABLE keys given on the command line. Raises ConfigError for a run that cannot resume."""
    if cfg.get("resume") is None:
        return cfg
    run_dir = Path(str(cfg.resume)).expanduser().resolve()
    info = read_info(run_dir)
    if info is None or not config_path(run_dir).exists():
        raise ConfigError(
            "resume", f"{run_dir} has no config.yaml and run.json; allowed: a run directory written by main.py"
        )
    others = sorted({_key(o) for o in overrides} - {"resume", *CHANGEABLE})
    if others:
        raise ConfigError(
            "resume", f"cannot change {', '.join(others)} of a run; allowed with resume: {', '.join(CHANGEABLE)}"
        )
    status = effective_status(info)
    if status == "running":
        raise ConfigError(
            "resume",
            f"{run_dir} is still running (pid {info.get('pid')} on {info.get('host')}); "
            "allowed: a stopped, failed, interrupted or killed run",
        )
    saved = upgrade(OmegaConf.load(config_path(run_dir)))
    given = {_key(o) for o in overrides}
    with open_dict(saved):
        saved.resume = str(run_dir)
        for key in CHANGEABLE:
            if key in given:
                OmegaConf.update(saved, key, OmegaConf.select(cfg, key), force_add=True)
    done = int(info.get("rounds_completed") or 0)
    if status == "completed" and done >= saved.num_rounds:
        raise ConfigError(
            "resume",
            f"{run_dir} completed all {done} rounds; allowed: a stopped run, or num_rounds above {done} to continue it",
        )
    if saved.num_rounds < done:
        raise ConfigError(
            "num_rounds", f"{saved.num_rounds}, but {run_dir} has completed {done} rounds; allowed: at least {done}"
        )
    return saved
