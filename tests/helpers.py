"""Shared test helpers (imported by the test modules; pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def train_tiny(run_dir: Path, family: str, steps: int, settings: Sequence[str], eval_interval: int) -> Path:
    """A tiny real training run through the CLI entry point, on the CPU; returns run_dir."""
    from hyperrl.train import main as train_main

    args = ["--env-family", family, "--total-steps", str(steps), "--device", "cpu", "--run-dir", str(run_dir),
            "--set", f"eval.interval_steps={eval_interval}"]
    for item in settings:
        args += ["--set", item]
    assert train_main(args) == 0
    return run_dir
