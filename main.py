"""One federated run: `python main.py num_clients=10 strategy=fedprox ...` (keys: conf/, and
docs/reference/configuration.md)."""

import sys

import hydra
from omegaconf import DictConfig

from fedsim.cli.command import check_command_line, refusals, run_command


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run_command(cfg)


if __name__ == "__main__":
    with refusals():  # bad input and early signals: one line, before Hydra writes anything
        check_command_line(sys.argv[1:])
        main()
