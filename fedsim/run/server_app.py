"""fedsim's Flower ServerApp: a whole run in `main`, its rounds (`federate`) in fedsim.server.loop's round loop.

`app` is what `flwr run` loads (pyproject.toml's [tool.flwr.app.components]): it composes the
config from the run config's `overrides`, writes the run under `results-dir`, and runs the same
steps as `python main.py`. main.py builds the same app around the session it has prepared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsim.config.compose import RESULTS_KEY, RUN_DIR_KEY, config_from, overrides_of
from fedsim.config.settings import ServerSettings
from fedsim.privacy.dp import uniform_weight
from fedsim.privacy.randomness import NoiseSource
from fedsim.run.directory import claim
from fedsim.run.session import Session
from fedsim.run.steps import run_experiment
from fedsim.server.adversary import Adversary
from fedsim.server.cohort import Cohort, GroundTruth
from fedsim.server.loop import Result, run_rounds
from fedsim.server.participation import Participants, Sampling
from fedsim.system.errors import ConfigError


def run_dir_for(run_config: Mapping[str, Any], now: datetime | None = None) -> Path:
    """results-dir/runs/DATE/TIME_OVERRIDES, the layout of main.py's run directories.

    A relative results-dir is taken from the working directory of the process running the
    ServerApp (for Flower's local SuperLink: where it was started).
    """
    now = now or datetime.now()
    root = Path(str(run_config.get(RESULTS_KEY) or "results")).expanduser().absolute()
    overrides = sorted(o for o in overrides_of(run_config) if not o.startswith(("data.path=", "tracking.uri=")))
    return root / "runs" / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S-%f')}_{','.join(overrides)}"


def run_from_run_config(grid: Grid, context: Context) -> dict:
    """`flwr run`: the run config's overrides composed as main.py would, then the run's steps on `grid`.

    Under `python main.py runtime=deployment` (`run-dir` set), main.py names the directory and
    reports how the run ended; here only the run's own output is printed.
    """
    given = str(context.run_config.get(RUN_DIR_KEY) or "")
    run_dir = Path(given) if given else run_dir_for(context.run_config)
    try:
        if not given:  # under main.py, main.py owns the directory
            claim(run_dir)
            print(f"fedsim: run directory {run_dir}")
        info = run_experiment(
            config_from(context.run_config), run_dir, federate=partial(federate, grid), run_config=context.run_config
        )
    except ConfigError as exc:
        print(f"error: {exc}")
        raise
    if not given:
        print(
            f"done: final central_accuracy {info['final_central_accuracy']:.4f} in {info['wall_time_s']:.0f}s "
            f"-> {run_dir}"
        )
    return info


def sampling_of(server: ServerSettings, noise: NoiseSource) -> Sampling:
    """`strategy.sampling`, the rates a Poisson draw takes (the strategy's fractions), and whether the draws are
    secret (a DP run whose noise is)."""
    return Sampling(server.sampling, server.fraction_train, server.fraction_evaluate, secret=noise.secure)


def federate(grid: Grid, session: Session, slots: int | None = None) -> Result:
    """The session's rounds on `grid`: its nodes found (a pool of `slots` simulated nodes, or one node per
    client), then `run_rounds` with the session's parts."""
    experiment = session.experiment
    server = experiment.server
    noise = experiment.privacy.noise(server.seed)
    participants = Participants.discover(
        grid,
        server.num_clients,
        server.seed,
        slots,
        timeout=server.startup_timeout_s,
        carried=server.cohort_messages,
        sampling=sampling_of(server, noise),
    )
    malicious = frozenset(experiment.malicious)
    cohort = Cohort(
        grid,
        participants,
        experiment.faults,
        server.seed,
        server.local_epochs,
        GroundTruth(malicious, experiment.attack.name),
        server.transport,
        server.reply_timeout_s,
        Adversary(experiment.attack, malicious, server.seed) if experiment.attack.omniscient else None,
        uniform_weight if experiment.privacy.enabled else None,
    )
    return run_rounds(
        session.strategy,
        cohort,
        session.start(),
        server.num_rounds,
        session.evaluate,
        session.end_round,
        noise,
    )


def make_server_app(
    session: Session | None = None, slots: int | None = None, watched: Callable[[Grid], Grid] | None = None
) -> ServerApp:
    """The ServerApp; given a session (main.py's), it only runs that session's rounds, on a pool of
    `slots` simulated nodes if given, and on `watched(grid)` if given (a grid that raises once the runtime
    under it has died: fedsim.runtimes.recovery)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if session is not None:
            federate(watched(grid) if watched is not None else grid, session, slots)
        else:
            run_from_run_config(grid, context)

    return app


app = make_server_app()
