"""One federated run: `python main.py num_clients=10 strategy=fedprox ...` (keys: README, conf/)."""

import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from fedsim.errors import ConfigError, first_line
from fedsim.interrupts import Interrupted, leave
from fedsim.resume import resumed_config
from fedsim.runtimes import runtime_of
from fedsim.tracking import group_multirun


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        cfg = resumed_config(cfg, hydra_cfg.overrides.task)
        if hydra_cfg.mode == RunMode.MULTIRUN:  # `-m`: the sweep's runs are one group in a tracker
            group_multirun(cfg, hydra_cfg.sweep.dir, hydra_cfg.job.num)
        info = runtime_of(cfg).run(cfg, run_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as exc:
        leave(exc.exit_code, f"{exc}; resume with: python main.py resume={run_dir}")
    except Exception as exc:  # recorded in run.json; the traceback goes to main.log, one line here
        with open(run_dir / "main.log", "a") as log:
            traceback.print_exc(file=log)
        leave(1, f"error: {first_line(exc)} (run.json and main.log in {run_dir})")
    failures = f" (degraded: {info['client_failures']} client calls failed, see clients.csv)" \
        if info["status"] == "degraded" else ""
    print(f"done{failures}: final central_accuracy {info['final_central_accuracy']:.4f} in "
          f"{info['wall_time_s']:.0f}s -> {run_dir}")
    return info["final_central_accuracy"]


if __name__ == "__main__":
    main()
