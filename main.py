"""One federated run: `python main.py num_clients=10 strategy=fedprox ...` (keys: README, conf/)."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedsim.errors import ConfigError
from fedsim.experiment import run_experiment
from fedsim.launch import simulate
from fedsim.resume import resumed_config


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        info = run_experiment(resumed_config(cfg, hydra_cfg.overrides.task), run_dir, federate=simulate)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"done: final central_accuracy {info['final_central_accuracy']:.4f} in {info['wall_time_s']:.0f}s "
          f"-> {run_dir}")
    return info["final_central_accuracy"]


if __name__ == "__main__":
    main()
