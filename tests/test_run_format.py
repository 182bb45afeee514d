"""The run-dir format stays readable: a tiny cartpole-actuator run with two adapted runs
(weights and sim) is written here, its checkpoint and adapted-policy files are checked
against the format's documented keys (format 1: a change to them breaks every existing run
dir), then the whole tree is moved and loaded, evaluated, resumed and regenerated from (run
dirs are copied between machines; an adapted run records its source by path)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import helpers
import pytest
import torch

import hyperrl
from hyperrl.adapt import AdaptedRun
from hyperrl.adapt import main as adapt_main
from hyperrl.checkpoint import FORMAT_VERSION, load_checkpoint
from hyperrl.evaluate import evaluate_run
from hyperrl.hyperrun import HyperRun
from hyperrl.train import main as train_main

TINY = ["env.num_envs=16", "ppo.num_steps=16", "progress=false", "model.hidden_sizes=[8,8]",
        "model.embed_sizes=[8]", "model.critic_hidden_sizes=[8]", "eval.episodes=1",
        "histogram_interval_evals=0", "ppo.num_minibatches=2"]
CHECKPOINT_KEYS = {"config", "critic", "extra", "family", "format", "generators", "git_commit", "hypernet",
                   "obs_dim", "optimizer", "rng", "step", "version"}
EXTRA_KEYS = {"best_score", "elapsed", "env", "ep_len", "ep_ret", "evals_done", "history", "steps_to_target",
              "time_to_target", "update"}
SIM_STATE_KEYS = {"elapsed", "generator", "next_params", "params", "state"}
POLICY_KEYS = {"activation", "context", "context_values", "format", "hypernet", "log_std", "mode", "model_config",
               "source_checkpoint", "source_checkpoint_sha256", "weights"}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    run = helpers.train_tiny(tmp_path_factory.mktemp("format") / "run", "cartpole-actuator", 512, TINY, 512)
    for mode in ("weights", "sim"):
        assert adapt_main([str(run), "--values", "force_mag=-10", "--episodes", "1", "--mode", mode,
                           "--no-references", "--eval-episodes", "1", "--set", "sim_steps=256",
                           "--name", f"old-{mode}"]) == 0
    return run


@pytest.fixture()
def moved(written, tmp_path) -> Path:
    """The written tree at another path, the original gone (as on another machine)."""
    dest = Path(shutil.copytree(written, tmp_path / "moved-run"))
    hidden = written.with_name(written.name + "-away")
    written.rename(hidden)  # restored after the test: the module's other tests need it
    yield dest
    hidden.rename(written)


def test_the_files_keep_format_1(written):
    payload = load_checkpoint(written / "checkpoints" / "latest.pt")
    assert payload["format"] == FORMAT_VERSION == 1
    assert set(payload) == CHECKPOINT_KEYS and set(payload["extra"]) == EXTRA_KEYS
    assert set(payload["extra"]["env"]) == SIM_STATE_KEYS
    policy = torch.load(written / "adapt" / "old-sim" / "policy.pt", weights_only=True)
    assert set(policy) == POLICY_KEYS
    assert json.loads((written / "run.json").read_text())["method"] == "hyperrl"
    assert json.loads((written / "adapt" / "old-sim" / "run.json").read_text())["source_run"] == "../.."


def test_a_moved_training_run_loads_evaluates_and_resumes(moved):
    run = hyperrl.load(moved)
    assert isinstance(run, HyperRun) and run.step == 512 and run.family.name == "cartpole-actuator"
    action, _ = run.policy({"force_mag": -10.0}).predict([0.0, 0.0, 0.05, 0.0])
    assert int(action) in (0, 1)
    results, out = evaluate_run(moved, split="extrapolation", episodes=1, backend="batched")
    assert out == moved / "eval" / "heldout-extrapolation-batched" and len(results["variants"]) == 12
    assert train_main(["--resume", str(moved), "--total-steps", "768", "--device", "cpu"]) == 0
    metrics = json.loads((moved / "metrics.json").read_text())
    assert metrics["env_steps"] == 768 and [h["step"] for h in metrics["history"]] == [512, 768]


@pytest.mark.parametrize("name", ["old-weights", "old-sim"])
def test_moved_adapted_runs_load_and_regenerate(moved, name):
    run = hyperrl.load(moved / "adapt" / name)
    assert isinstance(run, AdaptedRun) and run.variants.tolist() == [[-10.0]]
    results, _ = evaluate_run(moved / "adapt" / name, episodes=1, backend="batched", write=False)
    assert [v["values"] for v in results["variants"]] == [{"force_mag": -10.0}]
    if name == "old-sim":  # re-derived from the source run, whose recorded path is gone
        regen = run.regenerate()
        for k, w in run.weights_policy.weights.items():
            torch.testing.assert_close(regen.weights[k], w)
