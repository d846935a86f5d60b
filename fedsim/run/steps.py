"""One federated run, as numbered steps: check, model, data, federate, finish; run.json says how it ended.

`federate` is the only part that differs between runtimes: main.py simulates (fedsim.runtimes.simulation),
and `flwr run` hands the ServerApp a Grid to run the rounds on (fedsim.run.server_app).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedsim.config.settings import DataSettings
from fedsim.data.prepare import prepare_data
from fedsim.outputs.checkpointer import checkpoint_round
from fedsim.run.experiment import build, load_model
from fedsim.run.info import RunInfo, _now
from fedsim.run.session import Session
from fedsim.rundir import config_path, read_info, write_info
from fedsim.system.errors import ConfigError, first_line
from fedsim.system.memory import return_freed_buffers_to_os
from fedsim.system.signals import Interrupted


def preflight(cfg: DictConfig) -> None:
    """What a run checks before its first round, for a runtime whose server starts in another process:
    the config, the model and the data (featurized into the cache the server then reads). ConfigError on bad input."""
    build(cfg)
    load_model(cfg)
    prepare_data(DataSettings.of(cfg))


def record_or_note(exc: BaseException, record: Callable[[BaseException], object]) -> None:
    """Record in run.json how a run ended with `exc`. A record that cannot be written (the run directory
    removed under the run) becomes a note on `exc`, never its replacement: the caller re-raises `exc`, so
    the user still hears that the run was interrupted or why it failed."""
    try:
        record(exc)
    except OSError as lost:
        exc.add_note(f"run.json could not be written: {lost}")


def record_stopped(run_dir: Path, cfg: DictConfig, exc: BaseException) -> None:
    """run.json of a run whose server ran in another process and did not finish: interrupted (a signal) or
    failed, unless the server itself recorded the failure or finished."""
    status = "interrupted" if isinstance(exc, Interrupted) else "failed"
    data = read_info(run_dir)
    if data is None:
        RunInfo(run_dir, cfg).finish(status, error=first_line(exc), error_type=type(exc).__name__)
        return
    if data["status"] == "running" or (status == "interrupted" and data["status"] == "failed"):
        data.update(status=status, finished_at=_now(), error=first_line(exc), error_type=type(exc).__name__)
        write_info(run_dir, data)


def record_lost(run_dir: Path, pid: int, code: int, restart: int, budget: int) -> tuple[str, bool] | None:
    """run.json of a run whose process `pid` ended with `code` (negative: a signal) without recording how (a
    crash in native code; fedsim.system.supervisor). Within `budget` (`restart` counts this command's restarts,
    this one included) the restart is listed and the run left to resume from its checkpoint; beyond it the run
    is failed, with why. The one line to print and whether the run goes on; None if run.json had recorded the
    ending itself (or is not this process's)."""
    data = read_info(run_dir)
    if data is None:
        return None
    if data.get("status") != "running" or data.get("pid") != pid:
        return None
    how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
    in_round = int(data.get("rounds_completed") or 0) + 1
    lost = (
        f"the run's process (pid {pid}) ended without recording why ({how}): a crash in native code, or Ray's core "
        f"worker ending its driver as the node under it died (stacks in main.log); in round {in_round}"
    )
    if restart <= budget:
        after = checkpoint_round(run_dir)
        after = -1 if after is None else after
        data.setdefault("restarts", []).append({"at": _now(), "after_round": after, "why": lost})
        write_info(run_dir, data)
        again = f"a new process resumes the run after round {after}" if after >= 0 else "a new process starts it again"
        return f"warning: {lost}; {again} (restart {restart} of runtime.max_restarts={budget})", True
    error = f"{lost}, after runtime.max_restarts={budget} restarts; resume with: python main.py resume={run_dir}"
    data.update(status="failed", finished_at=_now(), error=error, error_type="ProcessLost")
    write_info(run_dir, data)
    return f"error: {error}", False


def run_experiment(cfg: DictConfig, run_dir: Path, federate: Callable[[Session], None], **parts: Any) -> dict:
    """Run one experiment into `run_dir`; return run.json's content. Raises ConfigError on bad input.

    `parts` go to `build` (a client factory, extra outputs).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    # 1. Check the whole config (a refused resume leaves the stopped run untouched), then save it resolved.
    try:
        experiment = build(cfg, **parts)
    except ConfigError as exc:
        if cfg.get("resume") is None:
            RunInfo(run_dir, cfg).finish("failed", error=str(exc), error_type=type(exc).__name__)
        raise
    config_path(run_dir).write_text(OmegaConf.to_yaml(cfg, resolve=True))  # first: what a resume reads
    info = RunInfo(run_dir, cfg)
    session: Session | None = None
    try:
        info.update(attack=experiment.attack.name, malicious_clients=experiment.malicious)
        return_freed_buffers_to_os()

        # 2. The seeded initial model; the archive's size checked against the free disk.
        session = Session(experiment, run_dir, info)
        if session.checkpoint is not None:
            info.resumed_from(session.checkpoint.server_round)

        # 3. Read, subset and featurize IMDB once (cached on disk for later runs).
        session.prepare()

        # 4. Open the outputs and federate.
        session.open_outputs()
        federate(session)

        # 5. Close the books: final model, detection baseline, archive flushed.
        summary = session.finish()
        info.finish("degraded" if summary.get("client_failures") else "completed", **summary)
        return info.data
    except BaseException as exc:  # run.json already has the metrics of every round that ended (RunSummary)
        record_or_note(
            exc,
            lambda stopped: info.finish(
                "interrupted" if isinstance(stopped, Interrupted) else "failed",
                error=first_line(stopped),
                error_type=type(stopped).__name__,
            ),
        )
        raise
    finally:
        if session is not None:
            session.close()
