"""Run dirs written by earlier versions keep working: ``tests/data/run-format-1`` is a tiny
cartpole-actuator run (checkpoint format 1) with two adapted runs, written by hyperrl 0.1.0
before its modules were reorganised. It is copied to a temporary folder (moved run dirs
must work too), loaded, evaluated, adapted from and resumed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import hyperrl
from hyperrl.adapt import AdaptedRun
from hyperrl.evaluate import evaluate_run
from hyperrl.hyperrun import HyperRun
from hyperrl.train import main as train_main

FIXTURE = Path(__file__).resolve().parent / "data" / "run-format-1"


@pytest.fixture()
def old_run(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "moved-run"))


def test_an_old_training_run_loads_evaluates_and_resumes(old_run):
    run = hyperrl.load(old_run)
    assert isinstance(run, HyperRun) and run.step == 512 and run.family.name == "cartpole-actuator"
    action, _ = run.policy({"force_mag": -10.0}).predict([0.0, 0.0, 0.05, 0.0])
    assert int(action) in (0, 1)
    results, out = evaluate_run(old_run, split="extrapolation", episodes=1, backend="batched")
    assert out == old_run / "eval" / "heldout-extrapolation-batched" and len(results["variants"]) == 12
    assert train_main(["--resume", str(old_run), "--total-steps", "768", "--device", "cpu"]) == 0
    metrics = json.loads((old_run / "metrics.json").read_text())
    assert metrics["env_steps"] == 768 and [h["step"] for h in metrics["history"]] == [512, 768]


@pytest.mark.parametrize("name", ["old-weights", "old-sim"])
def test_old_adapted_runs_load_and_regenerate_after_a_move(old_run, name):
    run = hyperrl.load(old_run / "adapt" / name)
    assert isinstance(run, AdaptedRun) and run.variants.tolist() == [[-10.0]]
    results, _ = evaluate_run(old_run / "adapt" / name, episodes=1, backend="batched", write=False)
    assert [v["values"] for v in results["variants"]] == [{"force_mag": -10.0}]
    if name == "old-sim":  # re-derived from the source run, which has moved since
        regen = run.regenerate()
        for k, w in run.weights_policy.weights.items():
            torch.testing.assert_close(regen.weights[k], w)
