"""One federated run: `python main.py num_clients=10 strategy=fedprox ...` (keys: README, conf/)."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedsim.errors import ConfigError
from fedsim.experiment import run_experiment


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        info = run_experiment(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"done: final central_accuracy {info['final_central_accuracy']:.4f} in {info['wall_time_s']:.0f}s "
          f"-> {HydraConfig.get().runtime.output_dir}")
    return info["final_central_accuracy"]


if __name__ == "__main__":
    main()
