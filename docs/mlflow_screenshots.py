"""Screenshots of MLflow's UI for the README: the experiments, one experiment's runs and its metric charts.

    python docs/mlflow_screenshots.py --experiment default-mlflow --out docs/img

Starts `mlflow ui` on a free local port over the SQLite store, drives headless Chromium with Playwright
(FEDSIM_CHROMIUM names the browser, default /usr/bin/chromium: Debian's `chromium` package), and stops the
server and every process below it afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from fedsim.runtimes.ports import free_port
from fedsim.system.processes import Processes

# Chromium on a machine without a network: no background fetches, no sandbox (root), no GPU.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


COLUMNS = [
    "Dataset",
    "Source",
    "Models",
    "central_accuracy",
    "fed_accuracy",
    "epsilon",
    "run_id",
    "seed",
    "privacy.noise_multiplier",
]


def start_ui(processes: Processes, store: Path, port: int, log: Path) -> None:
    """`mlflow ui` in its own session (stopped with its workers by `processes`); returns once it answers."""
    processes.start(
        "mlflow-ui",
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            f"sqlite:///{store}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        log=log,
        env=os.environ,
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"mlflow ui did not answer within 180 s (see {log})")


def shoot(base: str, experiment_id: str, metric: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=os.environ.get("FEDSIM_CHROMIUM", "/usr/bin/chromium"), args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport={"width": 1600, "height": 560})
        page.goto(f"{base}/#/experiments/{experiment_id}/runs")
        page.get_by_text("run_0000").first.wait_for(timeout=60_000)
        page.get_by_role("button", name="Close").last.click()  # MLflow's assistant panel
        page.get_by_role("button", name="Toggle sidebar").click()
        page.get_by_role("button", name="Columns").click()
        for column in COLUMNS:  # toggled: the defaults named here go, the metrics, tag and parameters come
            page.get_by_placeholder("Search columns").fill(column)
            page.wait_for_timeout(800)
            option = page.get_by_text(column, exact=True)
            if option.count():  # epsilon and privacy.* exist only in a DP experiment
                option.last.click()
        page.keyboard.press("Escape")
        page.wait_for_timeout(2000)
        page.screenshot(path=str(out / "mlflow-runs.png"))
        page.goto(f"{base}/#/experiments")
        page.get_by_text("default-mlflow").first.wait_for(timeout=60_000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(out / "mlflow-experiments.png"))
        page.set_viewport_size({"width": 1600, "height": 900})
        page.goto(f"{base}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART")
        page.get_by_text(metric).first.wait_for(timeout=60_000)
        page.wait_for_timeout(4000)
        page.screenshot(path=str(out / "mlflow-metrics.png"))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("results/mlflow.db"))
    parser.add_argument("--experiment", default="default-mlflow")
    parser.add_argument("--metric", default="central_accuracy")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "img")
    args = parser.parse_args()
    from mlflow.tracking import MlflowClient

    store = args.store.absolute()
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(args.experiment)
    args.out.mkdir(parents=True, exist_ok=True)
    port, processes = free_port("127.0.0.1"), Processes()
    try:
        start_ui(processes, store, port, Path(tempfile.gettempdir()) / "fedsim-mlflow-ui.log")
        shoot(f"http://127.0.0.1:{port}", experiment.experiment_id, args.metric, args.out)
    finally:
        processes.stop_all()
    print(f"wrote mlflow-experiments.png, mlflow-runs.png and mlflow-metrics.png in {args.out}")


if __name__ == "__main__":
    main()
