"""`python main.py`'s command: its checks before anything starts, and the one line each way of ending prints.

Bad input is `error: KEY: ... allowed: ...` and exit 2, before Hydra writes into the run directory
or any worker starts; a failure inside a run is one `error:` line and exit 1 (its traceback in
main.log, run.json `failed`); a signal is one `interrupted ...` line and exit 128 + the signal.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fedsim.config.overrides import check
from fedsim.config.resume import resumed_config
from fedsim.outputs.tracking.tracker import group_multirun
from fedsim.run.directory import claim
from fedsim.run.steps import record_lost
from fedsim.rundir import MAIN_LOG, holds_run
from fedsim.runtimes import runtime_of
from fedsim.runtimes.warm import kept, kept_warm
from fedsim.system.errors import ConfigError, first_line
from fedsim.system.signals import Interrupted, leave, raise_on_signals
from fedsim.system.supervisor import supervised

HYDRA_WRITES = (".hydra", MAIN_LOG)  # what Hydra has put in the run directory before the run begins


def check_command_line(argv: Sequence[str]) -> None:
    """main.py's overrides, read by Hydra's own argument parser and checked whole (fedsim.config.overrides)."""
    args = get_args_parser().parse_args(list(argv))
    if (
        args.help
        or args.hydra_help
        or args.cfg
        or args.info
        or args.shell_completion
        or args.config_name
        or args.config_path
        or args.config_dir
        or args.experimental_rerun
    ):
        return  # Hydra's own commands, or another config than conf/config.yaml
    check(args.overrides)


@contextmanager
def refusals() -> Iterator[None]:
    """Around everything main.py does: bad input and a signal before the run began, each as one line."""
    raise_on_signals()
    try:
        yield
    except ConfigError as exc:
        leave(2, f"error: {exc}")
    except Interrupted as exc:
        leave(exc.exit_code, f"{exc} before the run began; nothing was written: run the same command again")


def interrupted_line(exc: Interrupted, run_dir: Path) -> str:
    if not run_dir.exists():
        return f"{exc}; its run directory {run_dir} is gone: nothing to resume"
    if holds_run(run_dir):
        return f"{exc}; resume with: python main.py resume={run_dir}"
    return f"{exc} before the run began; nothing to resume: run the same command again"


def interrupt_behind(exc: BaseException) -> Interrupted | None:
    """The signal that `exc` was raised while handling, if any: a run stopped by a signal ends as interrupted
    even when something failed on its way out (its archive's folder removed, say)."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, Interrupted):
        seen = seen.__context__
    return seen


def log_traceback(log: Path) -> bool:
    """Append the exception being handled to `log`; False if it cannot be written (its directory removed).
    The handler that calls this must still end in `leave`: an exception escaping main.py would make the
    interpreter wait, on its way out, for Flower's ServerApp thread, which may never end."""
    try:
        with open(log, "a") as out:
            traceback.print_exc(file=out)
    except OSError:
        return False
    return True


def lost_or_restarted(run_dir: Path, budget: int) -> Callable[[int, int], bool]:
    """What main.py's waiting process does when its run's process ends without recording how: one line, and
    within `runtime.max_restarts` a new process that resumes the run (fedsim.system.supervisor); run.json
    records either."""
    restarts = 0

    def ended(pid: int, code: int) -> bool:
        nonlocal restarts
        try:
            told = record_lost(run_dir, pid, code, restarts + 1, budget)
        except OSError as exc:  # the run directory removed
            gone = f"error: the run's process (pid {pid}) ended without recording why, and run.json is gone ({exc})"
            told = gone, False
        if told is None:
            return False
        line, again = told
        restarts += again
        print(line, file=sys.stderr, flush=True)
        return again

    return ended


def run_command(cfg: DictConfig) -> float | None:
    """One run of main.py, into Hydra's output directory; the final central accuracy.

    When nothing runs in this process after the run (not a `-m` sweep, not a collection's runner), Ray and
    Flower's actors are kept to the end (fedsim.runtimes.warm) and the process leaves once the results are on
    disk: ending Ray's processes with SIGKILL and skipping the interpreter's teardown saves what Ray's graceful
    shutdown and the exit cost (docs/benchmarks/measured.md)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    last = hydra_cfg.mode == RunMode.RUN and not kept()  # nothing runs in this process after this run
    try:
        raise_on_signals(run_dir / MAIN_LOG)
        claim(
            run_dir,
            resume=cfg.get("resume") is not None,
            overwrite=bool(cfg.get("overwrite", False)),
            keep=HYDRA_WRITES,
        )
        cfg = resumed_config(cfg, hydra_cfg.overrides.task)
        if hydra_cfg.mode == RunMode.MULTIRUN:  # `-m`: the sweep's runs are one group in a tracker
            group_multirun(cfg, hydra_cfg.sweep.dir, hydra_cfg.job.num)
        if last:  # this process waits; a child runs the run, a new one resumes it (fedsim.system.supervisor)
            if supervised(lost_or_restarted(run_dir, int(cfg.runtime.max_restarts)), run_dir / MAIN_LOG):
                cfg = resumed_config(OmegaConf.create({"resume": str(run_dir)}), [])
        with kept_warm(end=False) if last else contextlib.nullcontext():  # ended by `leave(0)` below
            info = runtime_of(cfg).run(cfg, run_dir)
    except ConfigError as exc:
        leave(2, f"error: {exc}")
    except Interrupted as exc:
        leave(exc.exit_code, interrupted_line(exc, run_dir))
    except Exception as exc:  # recorded in run.json; the traceback goes to main.log, one line here
        logged = log_traceback(run_dir / MAIN_LOG)
        if (signal := interrupt_behind(exc)) is not None:  # what failed as the run stopped for a signal
            leave(signal.exit_code, interrupted_line(signal, run_dir))
        if not logged:
            leave(1, f"error: {first_line(exc)} (its run directory {run_dir} is gone)")
        leave(1, f"error: {first_line(exc)} (run.json and main.log in {run_dir})")
    failures = (
        f" (degraded: {info['client_failures']} client calls failed, see clients.csv)"
        if info["status"] == "degraded"
        else ""
    )
    print(
        f"done{failures}: final central_accuracy {info['final_central_accuracy']:.4f} in "
        f"{info['wall_time_s']:.0f}s -> {run_dir}"
    )
    sys.stdout.flush()
    if last:  # the results are final on disk: Ray's processes killed, not shut down, no interpreter teardown
        leave(0)
    return info["final_central_accuracy"]
