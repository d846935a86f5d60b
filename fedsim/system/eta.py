"""Durations as people read them, and the one estimate of the time left (a run's rounds, a collection's runs)."""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def eta(elapsed_s: float, done: int, left: int, at_once: int = 1) -> str:
    """The time left at the pace so far: `done` items took `elapsed_s` (summed), `left` remain, `at_once` run
    side by side; `-` when nothing is left or nothing has been timed yet."""
    if not left or not done:
        return "-"
    return format_duration(elapsed_s / done * left / max(1, at_once))
