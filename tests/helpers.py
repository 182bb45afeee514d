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


def short_horizon_copy(run_dir: Path, dest: Path, max_episode_steps: int) -> Path:
    """A copy of a run whose family cuts episodes at ``max_episode_steps``.

    Comparing whole episodes of two computations that differ only in float rounding (the
    batched simulator vs Gymnasium, one batch shape vs another) is exact only while rounding
    cannot grow into a different action: near a balanced pole a one-ulp difference grows
    ~e^(0.09 t) per step. Within a few dozen steps it stays ~1e-14, far from any decision."""
    import shutil

    shutil.copytree(run_dir, dest)
    family = dest / "family.yaml"
    text = family.read_text()
    assert "max_episode_steps" not in text
    family.write_text(text + f"\nmax_episode_steps: {int(max_episode_steps)}\n")
    return dest


def nudge_batched_sims(monkeypatch, seed: int = 0, every: int = 7) -> list[int]:
    """Make every batched simulator move one coordinate of each env's state by one ulp
    (``np.nextafter``) every ``every`` steps, before stepping; returns a list that counts the
    nudges. A comparison that survives this cannot depend on another machine's rounding."""
    import numpy as np
    import torch

    from hyperrl.sim.base import BatchedSim

    rng = np.random.default_rng(seed)
    original = BatchedSim.step
    count = [0]

    def step(self, action):
        count[0] += 1
        if count[0] % every == 0:
            j = torch.from_numpy(rng.integers(0, self.state.shape[1], self.num_envs)).to(self.state.device)
            rows = torch.arange(self.num_envs, device=self.state.device)
            x = self.state[rows, j]
            up = torch.from_numpy(rng.random(self.num_envs) < 0.5).to(x.device)
            towards = torch.where(up, torch.full_like(x, float("inf")), torch.full_like(x, float("-inf")))
            state = self.state.clone()
            state[rows, j] = torch.nextafter(x, towards)
            assert bool((state != self.state).any(1).all())
            self.state = state
        return original(self, action)

    monkeypatch.setattr(BatchedSim, "step", step)
    return count


def expect_cli_error(capsys, main, args) -> str:
    """Run ``main_guard(main)(args)`` as ``python -m`` does: exit status 2 and exactly one
    stderr line starting with ``error:`` (a usage error may add argparse's ``--help`` hint
    line); returns the error line."""
    import pytest

    from hyperrl.cli import main_guard

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main_guard(main)([str(a) for a in args])
    assert exc.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    if len(lines) == 2 and lines[1].startswith("run '") and lines[1].endswith("--help' for usage"):
        lines = lines[:1]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]
