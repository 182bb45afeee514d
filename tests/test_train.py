"""End-to-end tests of ``python -m hyperrl.train`` with tiny settings: run-dir layout,
TensorBoard events, exact resume, one-line CLI errors, non-finite handling, and the
continuous-action and generic-gymnasium paths."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
import torch

import hyperrl.train as train_mod
from hyperrl.agent import HyperAgent
from hyperrl.checkpoint import CheckpointManager, load_checkpoint
from hyperrl.cli import main_guard
from hyperrl.config import load_yaml_config
from hyperrl.families import load_family
from hyperrl.ppo import LossOut
from hyperrl.train import TrainingDiverged, main, resolve_config
from hyperrl.train_config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
BATCH = 16 * 16  # num_envs * num_steps below: env steps per update

# Pinned so the tests stay tiny and fast whatever the family's config file is tuned to.
TINY = [
    "env.num_envs=16", "ppo.num_steps=16", "eval.interval_steps=1024", "eval.episodes=1",
    "progress=false", "ppo.update_epochs=2", "ppo.num_minibatches=2", "ppo.target_kl=null",
    "model.hidden_sizes=[16,16]", "model.embed_sizes=[16,16]", "model.critic_hidden_sizes=[16,16]",
    "model.chunk_size=0", "stop_at_return=null", "histogram_interval_evals=1", "env.variant_slots=2",
    "dtype=float32", "checkpoint_interval_steps=250000",
]


def argv(run_dir, total_steps, family="cartpole-mass", extra=(), seed=None):
    out = ["--env-family", family, "--total-steps", str(total_steps), "--device", "cpu",
           "--run-dir", str(run_dir)]
    if seed is not None:
        out += ["--seed", str(seed)]
    for item in [*TINY, *extra]:
        out += ["--set", item]
    return out


def guarded(args):
    """Run the CLI exactly as ``python -m hyperrl.train`` does (main_guard(main))."""
    return main_guard(main)(args)


def expect_usage_error(capsys, args) -> str:
    return helpers.expect_cli_error(capsys, main, args)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def final_hypernet(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints" / "latest.pt")["hypernet"]


def assert_state_dicts_equal(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=f"{key} differs")


# ---------------------------------------------------------------------------------------
# One full run, shared by the layout / TensorBoard tests
# ---------------------------------------------------------------------------------------
CARTPOLE_SET = ["ppo.lr=0.001", "eval.deterministic=true"]


_RESOLVED: dict[str, TrainConfig] = {}


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cartpole") / "run"
    # resolved right before the run: configs/ may be edited while the suite runs
    _RESOLVED["cfg"] = resolve_config(load_family("cartpole-mass"), None, [*TINY, *CARTPOLE_SET], None, 2048, "cpu")
    assert main(argv(run, 2048, extra=CARTPOLE_SET)) == 0
    return run


def test_run_dir_layout_and_config(cartpole_run):
    run = cartpole_run
    for name in ("config.yaml", "family.yaml", "metrics.json", "checkpoints/latest.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    saved = load_yaml_config(TrainConfig, run / "config.yaml")
    assert saved == _RESOLVED["cfg"]
    assert saved.total_steps == 2048 and saved.device == "cpu"
    assert saved.env.num_envs == 16 and saved.ppo.num_steps == 16 and saved.ppo.lr == 0.001
    assert saved.eval.interval_steps == 1024 and saved.eval.episodes == 1 and saved.progress is False
    assert saved.model.hidden_sizes == (16, 16)
    assert load_family(run / "family.yaml").name == "cartpole-mass"
    assert (run / "family.yaml").read_text() == (REPO / "envs" / "cartpole-mass.yaml").read_text()


def test_metrics_json(cartpole_run):
    m = json.loads((cartpole_run / "metrics.json").read_text())
    assert m["family"] == "cartpole-mass"
    assert m["env_steps"] == 2048
    assert m["updates"] == 2048 // BATCH
    for key in ("eval_interpolation_return", "eval_extrapolation_return", "best_heldout_return",
                "wall_clock_s", "steps_per_second"):
        assert isinstance(m[key], (int, float)) and math.isfinite(m[key]), key
    # CartPole gives +1 per step: a held-out return is a mean episode length in [1, 500]
    assert 1.0 <= m["eval_interpolation_return"] <= 500.0
    assert [h["step"] for h in m["history"]] == [1024, 2048]
    assert all(math.isfinite(h["interpolation"]) and math.isfinite(h["extrapolation"]) for h in m["history"])
    assert m["best_heldout_return"] == max(0.5 * (h["interpolation"] + h["extrapolation"]) for h in m["history"])


def test_checkpoints_load_into_a_fresh_agent(cartpole_run):
    cfg = load_yaml_config(TrainConfig, cartpole_run / "config.yaml")
    family = load_family(cartpole_run / "family.yaml")
    import gymnasium as gym

    for name in ("latest.pt", "best.pt"):
        payload = load_checkpoint(cartpole_run / "checkpoints" / name)
        assert payload["family"] == "cartpole-mass"
        assert payload["step"] in (1024, 2048)
        agent = HyperAgent(4, gym.spaces.Discrete(2), family.context_dim, cfg.model)
        agent.load_state_dict(payload["hypernet"])  # strict: every key matches
        w = agent.policy_weights(family.context(family.heldout_values("interpolation")).float())
        assert all(torch.isfinite(t).all() for t in w.values())
    latest = load_checkpoint(cartpole_run / "checkpoints" / "latest.pt")
    assert latest["step"] == 2048
    best = CheckpointManager(cartpole_run).load_best()
    m = json.loads((cartpole_run / "metrics.json").read_text())
    assert best["best_score"] == pytest.approx(m["best_heldout_return"])


def test_tensorboard_events(cartpole_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(cartpole_run), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("charts/episode_return", "charts/steps_per_second", "losses/policy", "losses/value",
                "losses/entropy", "losses/approx_kl", "losses/clipfrac", "losses/explained_variance",
                "eval/interpolation/return_mean", "eval/extrapolation/return_mean"):
        assert tag in tags["scalars"], tag
    for tag in ("losses/policy", "losses/value", "charts/steps_per_second"):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == list(range(BATCH, 2048 + 1, BATCH)), tag
        assert all(math.isfinite(e.value) for e in events), tag
    assert [e.step for e in acc.Scalars("eval/interpolation/return_mean")] == [1024, 2048]
    m = json.loads((cartpole_run / "metrics.json").read_text())
    assert acc.Scalars("eval/interpolation/return_mean")[-1].value == pytest.approx(m["eval_interpolation_return"])
    assert "eval/return_vs_param" in tags["images"]
    img = acc.Images("eval/return_vs_param")
    assert len(img) == 2 and img[0].width > 0 and img[0].height > 0
    hist = [t for t in tags["histograms"] if t.startswith("charts/generated_weights/")]
    assert {"charts/generated_weights/0.weight", "charts/generated_weights/0.bias"} <= set(hist)


# ---------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------
def test_resume_extending_total_steps_is_exact(tmp_path):
    """4 updates in one go == 2 updates, then --resume with --total-steps for 2 more.
    (anneal_lr off: its schedule depends on total_steps, which the extension changes.)

    Bitwise by design, and safe on any machine: both runs execute the same operations on the
    same shapes in the same order in this one process, so they round identically wherever
    they run; the property tested is that a checkpoint restores every state (weights,
    optimiser, RNGs, episodes) exactly."""
    extra = ["ppo.anneal_lr=false", f"eval.interval_steps={2 * BATCH}"]
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(argv(full, 4 * BATCH, extra=extra)) == 0
    assert main(argv(split, 2 * BATCH, extra=extra)) == 0
    assert load_checkpoint(split / "checkpoints" / "latest.pt")["step"] == 2 * BATCH
    assert main(["--resume", str(split), "--total-steps", str(4 * BATCH)]) == 0
    assert_state_dicts_equal(final_hypernet(split), final_hypernet(full))
    a = load_checkpoint(full / "checkpoints" / "latest.pt")
    b = load_checkpoint(split / "checkpoints" / "latest.pt")
    assert a["step"] == b["step"] == 4 * BATCH
    torch.testing.assert_close(a["extra"]["env"]["state"], b["extra"]["env"]["state"], rtol=0, atol=0)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (full, split))
    assert ma["env_steps"] == mb["env_steps"] == 4 * BATCH
    assert ma["eval_interpolation_return"] == mb["eval_interpolation_return"]
    assert [h["step"] for h in mb["history"]] == [2 * BATCH, 4 * BATCH]
    assert load_yaml_config(TrainConfig, split / "config.yaml").total_steps == 4 * BATCH


class _Crash(Exception):
    pass


def test_resume_after_a_crash_is_exact(tmp_path, monkeypatch):
    """Kill a run right after its mid-run checkpoint, resume it: same result as never stopping
    (with the default annealed learning rate). Bitwise by design, like the test above."""
    extra = [f"eval.interval_steps={2 * BATCH}"]
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    assert main(argv(full, 4 * BATCH, extra=extra)) == 0

    original = CheckpointManager.save_latest

    def save_then_crash(self, payload):
        original(self, payload)
        raise _Crash

    monkeypatch.setattr(CheckpointManager, "save_latest", save_then_crash)
    with pytest.raises(_Crash):
        main(argv(crashed, 4 * BATCH, extra=extra))
    monkeypatch.setattr(CheckpointManager, "save_latest", original)
    assert load_checkpoint(crashed / "checkpoints" / "latest.pt")["step"] == 2 * BATCH
    assert not (crashed / "metrics.json").exists()
    assert main(["--resume", str(crashed)]) == 0
    assert_state_dicts_equal(final_hypernet(crashed), final_hypernet(full))
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (full, crashed))
    assert ma["history"][-1]["interpolation"] == mb["history"][-1]["interpolation"]
    assert [h["step"] for h in mb["history"]] == [2 * BATCH, 4 * BATCH]


def test_resume_of_a_finished_run_does_nothing(cartpole_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(cartpole_run, run)
    before = snapshot(run)
    capsys.readouterr()
    assert guarded(["--resume", str(run)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert snapshot(run) == before
    assert guarded(["--resume", str(run), "--total-steps", "1024"]) == 0  # fewer steps than done
    assert snapshot(run) == before
    line = expect_usage_error(capsys, ["--resume", str(run), "--total-steps", "-5"])
    assert "argument --total-steps: must be an integer >= 1, got -5" in line
    assert snapshot(run) == before


# ---------------------------------------------------------------------------------------
# CLI errors: exit 2, one 'error:' line, nothing created or changed
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["--env-family", "no-such-family"], "no-such-family"),
    (["--env-family", "cartpole-mass", "--set", "ppo.lrr=1"], "lrr"),
    (["--env-family", "cartpole-mass", "--set", "ppo.lr=abc"], "ppo.lr"),
    (["--env-family", "cartpole-mass", "--set", "ppo.lr"], "KEY=VALUE"),
    (["--env-family", "cartpole-mass", "--set", "env.num_envs=0"], "env.num_envs"),
    (["--env-family", "cartpole-mass", "--set", "env.num_envs=1000000000000"], "'env.num_envs': must be <="),
    (["--env-family", "cartpole-mass", "--seed", str(2**70)], "argument --seed: must be an integer [0, "),
    (["--env-family", "cartpole-mass", "--seed", "-1"], "argument --seed: must be an integer [0, "),
    (["--env-family", "cartpole-mass", "--set", f"seed={2**64}"], "'seed': must be <="),
    (["--env-family", "cartpole-mass", "--total-steps", "-5"], "argument --total-steps: must be an integer >= 1"),
    (["--env-family", "cartpole-mass", "--set", "env.num_envs=64", "--set", "ppo.num_minibatches=65"],
     "ppo.num_minibatches (65) must be <= env.num_envs (64)"),
    (["--env-family", "cartpole-mass", "--set", "ppo.target_kl=-1"], "'ppo.target_kl': must be > 0"),
    (["--env-family", "cartpole-mass", "--set", "ppo.lr=.inf"], "'ppo.lr': expected a finite number"),
    (["--env-family", "cartpole-mass", "--set", "model.hidden_sizes=[64,0]"], "'model.hidden_sizes[1]': must be >= 1"),
], ids=["unknown-family", "unknown-key", "ill-typed", "malformed-set", "out-of-range", "num-envs-beyond-memory",
        "seed-beyond-64-bits", "negative-seed", "seed-key-beyond-range", "negative-total-steps",
        "more-minibatches-than-envs", "negative-target-kl", "infinite-lr", "zero-width-layer"])
def test_bad_input_one_line_exit_2(tmp_path, capsys, args, needle):
    run = tmp_path / "run"
    line = expect_usage_error(capsys, [*args, "--device", "cpu", "--run-dir", str(run)])
    assert needle in line
    assert not run.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tmp_path, capsys):
    run = tmp_path / "run"
    line = expect_usage_error(capsys, ["--env-family", "cartpole-mass", "--device", "cuda", "--run-dir", str(run)])
    assert "CUDA" in line
    assert not run.exists()


def test_existing_non_empty_run_dir_is_left_alone(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("precious")
    (run / "config.yaml").write_text("seed: 7\n")
    before = snapshot(run)
    line = expect_usage_error(capsys, argv(run, 512))
    assert "not empty" in line
    assert snapshot(run) == before


def test_run_dir_that_is_a_file(tmp_path, capsys):
    run = tmp_path / "run"
    run.write_text("not a folder")
    expect_usage_error(capsys, argv(run, 512))
    assert run.read_text() == "not a folder"


def test_empty_existing_run_dir_is_used(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert main(argv(run, BATCH, extra=[f"eval.interval_steps={BATCH}"])) == 0
    assert (run / "checkpoints" / "latest.pt").is_file()


def test_resume_errors(tmp_path, capsys, cartpole_run):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "config.yaml" in expect_usage_error(capsys, ["--resume", str(empty)])
    assert "config.yaml" in expect_usage_error(capsys, ["--resume", str(tmp_path / "missing")])
    # --resume takes the run's own config
    expect_usage_error(capsys, ["--resume", str(cartpole_run), "--set", "ppo.lr=1"])
    # a corrupt latest.pt: one line naming the file, nothing changed
    run = tmp_path / "corrupt"
    shutil.copytree(cartpole_run, run)
    latest = run / "checkpoints" / "latest.pt"
    data = bytearray(latest.read_bytes())
    latest.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    before = snapshot(run)
    line = expect_usage_error(capsys, ["--resume", str(run), "--total-steps", "4096"])
    assert "latest.pt" in line
    assert snapshot(run) == before
    # a flipped byte inside a tensor (caught by the CRC check)
    data[len(data) // 2] ^= 0xFF
    latest.write_bytes(bytes(data))
    line = expect_usage_error(capsys, ["--resume", str(run), "--total-steps", "4096"])
    assert "latest.pt" in line
    # a missing latest.pt
    latest.unlink()
    assert "latest.pt" in expect_usage_error(capsys, ["--resume", str(run), "--total-steps", "4096"])


def test_real_entry_point_one_line_error(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "hyperrl.train", "--env-family", "cartpole-mass", "--set", "ppo.lrr=1",
         "--run-dir", str(run)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "lrr" in lines[0], proc.stderr
    assert proc.stdout == ""
    assert not run.exists()


# ---------------------------------------------------------------------------------------
# Non-finite handling
# ---------------------------------------------------------------------------------------
def _flag_after_first_checkpoint(monkeypatch) -> dict[str, bool]:
    """A flag that turns on once the first 'latest' checkpoint has been written."""
    state = {"saved": False}
    original = CheckpointManager.save_latest

    def save(self, payload):
        out = original(self, payload)
        state["saved"] = True
        return out

    monkeypatch.setattr(CheckpointManager, "save_latest", save)
    return state


def _check_last_good_checkpoint(run: Path):
    payload = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert payload["step"] == BATCH
    assert all(torch.isfinite(t).all() for t in payload["hypernet"].values())
    assert not (run / "metrics.json").exists()


def test_nan_generated_weights_raise_training_diverged(tmp_path, monkeypatch, capsys):
    state = _flag_after_first_checkpoint(monkeypatch)
    original = HyperAgent.policy_weights

    def nan_weights(self, context):
        w = original(self, context)
        return {k: v * float("nan") for k, v in w.items()} if state["saved"] else w

    monkeypatch.setattr(HyperAgent, "policy_weights", nan_weights)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="non-finite generated weights") as exc:
        main(argv(run, 4 * BATCH, extra=[f"eval.interval_steps={BATCH}"]))
    assert str(run / "checkpoints" / "latest.pt") in str(exc.value)
    _check_last_good_checkpoint(run)
    # through the CLI guard: a one-line error, exit 2
    run2 = tmp_path / "run2"
    state["saved"] = False
    capsys.readouterr()
    with pytest.raises(SystemExit) as se:
        guarded(argv(run2, 4 * BATCH, extra=[f"eval.interval_steps={BATCH}"]))
    assert se.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error:") and "non-finite" in last
    _check_last_good_checkpoint(run2)


def test_nan_loss_raises_training_diverged(tmp_path, monkeypatch):
    state = _flag_after_first_checkpoint(monkeypatch)
    original = train_mod.ppo_loss

    def nan_loss(*args, **kwargs):
        out = original(*args, **kwargs)
        if not state["saved"]:
            return out
        nan = out.loss * float("nan")
        return LossOut(nan, out.policy * float("nan"), out.value * float("nan"), out.entropy,
                       out.approx_kl, out.clipfrac)

    monkeypatch.setattr(train_mod, "ppo_loss", nan_loss)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="non-finite loss"):
        main(argv(run, 4 * BATCH, extra=[f"eval.interval_steps={BATCH}"]))
    _check_last_good_checkpoint(run)


@pytest.mark.parametrize("histograms", [
    pytest.param(1),
    pytest.param(0),
], ids=["histograms", "no-histograms"])
def test_non_finite_parameters_after_an_update_never_reach_a_checkpoint(tmp_path, monkeypatch, histograms):
    """A finite loss with a non-finite gradient (clip_grad_norm_ then turns every gradient into
    NaN) on the last minibatch of update 2: the run must stop with TrainingDiverged and every
    checkpoint on disk must still hold finite weights."""
    original = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def poisoned(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        calls["n"] += 1
        if calls["n"] == 2 * 2 * 2:  # update 2 (2 epochs x 2 minibatches per update), last step
            parameters[0].grad.view(-1)[0] = float("inf")
        return original(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged):
        main(argv(run, 4 * BATCH, extra=[f"eval.interval_steps={BATCH}", f"histogram_interval_evals={histograms}",
                                          "ppo.clip_separately=false"]))  # one clip call per minibatch
    for name in ("latest.pt", "best.pt"):
        payload = load_checkpoint(run / "checkpoints" / name)
        assert all(torch.isfinite(t).all() for t in payload["hypernet"].values()), name


# ---------------------------------------------------------------------------------------
# Other families: continuous actions (batched pendulum) and the generic gymnasium backend
# ---------------------------------------------------------------------------------------
def _check_trained(run: Path, steps: int):
    m = json.loads((run / "metrics.json").read_text())
    assert m["env_steps"] == steps
    assert math.isfinite(m["eval_interpolation_return"]) and math.isfinite(m["eval_extrapolation_return"])
    payload = load_checkpoint(run / "checkpoints" / "latest.pt")
    assert all(torch.isfinite(t).all() for t in payload["hypernet"].values())
    return m, payload


def test_pendulum_continuous_actions_train(tmp_path):
    run = tmp_path / "run"
    assert main(argv(run, 2 * BATCH, family="pendulum-mass-length",
                     extra=[f"eval.interval_steps={2 * BATCH}", "model.log_std=generated"])) == 0
    m, payload = _check_trained(run, 2 * BATCH)
    assert -2000.0 < m["eval_interpolation_return"] <= 0.0  # Pendulum rewards are <= 0, 200 steps
    assert any(k.endswith("log_std") or "head" in k for k in payload["hypernet"])


def test_acrobot_generic_backend_trains(tmp_path):
    """acrobot-links through gymnasium.vector (forced: the family has a batched sim too)."""
    run = tmp_path / "run"
    assert main(argv(run, 4 * 16, family="acrobot-links",
                     extra=["env.num_envs=4", "eval.interval_steps=64", "env.backend=gymnasium"])) == 0
    m, payload = _check_trained(run, 64)
    assert m["updates"] == 1
    assert -500.0 <= m["eval_interpolation_return"] <= 0.0  # -1 per step, 500-step limit
    assert payload["extra"].get("env") is None  # gymnasium envs are not snapshotted


def test_acrobot_batched_trains(tmp_path):
    """acrobot-links on its batched simulator (the default backend): it trains, and its
    envs are snapshotted in the checkpoint like every batched sim's."""
    run = tmp_path / "run"
    assert main(argv(run, 4 * 16, family="acrobot-links", extra=["env.num_envs=4", "eval.interval_steps=64"])) == 0
    m, payload = _check_trained(run, 64)
    assert m["updates"] == 1
    assert -500.0 <= m["eval_interpolation_return"] <= 0.0
    assert payload["extra"]["env"]["state"].shape == (4, 4)


def test_total_steps_rounded_up_to_whole_updates_is_said(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(argv(run, BATCH + 1)) == 0
    err = capsys.readouterr().err
    assert f"training runs 2 update(s) = {2 * BATCH:,} steps" in err
    assert json.loads((run / "metrics.json").read_text())["env_steps"] == 2 * BATCH
    assert main(argv(tmp_path / "exact", BATCH)) == 0
    assert "not a multiple" not in capsys.readouterr().err


@pytest.mark.parametrize("critic", ["mlp", "hyper"])
def test_sync_free_path_trains_the_same(tmp_path, critic):
    """env.sync_free=on runs the accelerator code path (every slot row, branch-free slot
    changes) on CPU: the same update as the CPU path, up to float summation order.

    One update of a 48-step rollout: CartPole's episodes are short at init, so every column
    moves through its slots within the rollout. The rollout itself is bitwise identical by
    design (the paths differ in bookkeeping, selects vs indexed writes, not in arithmetic),
    so the env state and episode lengths are compared exactly; the update sums over other
    row sets, so the weights agree to rounding. A second rollout is not compared: a sampled
    action whose probability differs in the last bit can flip and grow into another episode.
    """
    extra = [f"model.critic={critic}", "env.variant_slots=3", "ppo.num_steps=48"]
    off, on = tmp_path / "off", tmp_path / "on"
    assert main(argv(off, 16 * 48, extra=[*extra, "env.sync_free=off"], seed=3)) == 0
    assert main(argv(on, 16 * 48, extra=[*extra, "env.sync_free=on"], seed=3)) == 0
    a = load_checkpoint(off / "checkpoints" / "latest.pt")
    b = load_checkpoint(on / "checkpoints" / "latest.pt")
    assert a["extra"]["update"] == b["extra"]["update"] == 1
    assert torch.equal(a["extra"]["env"]["state"], b["extra"]["env"]["state"])
    assert a["extra"]["ep_len"].tolist() == b["extra"]["ep_len"].tolist()
    assert torch.equal(a["extra"]["env"]["params"], b["extra"]["env"]["params"])
    assert_state_dicts_equal(final_hypernet(on), final_hypernet(off), atol=1e-5)


def test_every_shipped_config_loads_and_names_a_family():
    """configs/*.yaml: each is a valid TrainConfig (unknown keys would raise); a config is
    either a family's defaults (configs/<family>.yaml) or a named variant of one
    (configs/<family>-<what>.yaml, e.g. the N = 1,024 throughput schedule)."""
    families = {p.stem for p in (REPO / "envs").glob("*.yaml")}
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        cfg = load_yaml_config(TrainConfig, path)
        assert any(path.stem == f or path.stem.startswith(f + "-") for f in families), path.name
        assert cfg.env.num_envs % cfg.ppo.num_minibatches == 0, path.name  # whole env columns per minibatch
    n1024 = load_yaml_config(TrainConfig, REPO / "configs" / "cartpole-mass-n1024.yaml")
    assert (n1024.env.num_envs, n1024.ppo.update_epochs, n1024.ppo.num_minibatches) == (1024, 1, 16)


def test_weight_histogram_matches_numpy_and_reads_back(tmp_path):
    """add_weight_histogram (torch, no NumPy/OpenBLAS) writes the same statistics as a NumPy
    histogram with the same edges, and TensorBoard's reader gets them back."""
    import numpy as np
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from hyperrl.train import add_weight_histogram

    g = torch.Generator().manual_seed(0)
    x = torch.randn(18, 32, 4, generator=g) * 0.3 + 0.1
    with SummaryWriter(str(tmp_path)) as w:
        add_weight_histogram(w, "h", x, step=7, bins=16)
        add_weight_histogram(w, "const", torch.full((5,), 0.25), step=7)
    acc = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0})
    acc.Reload()
    (ev,) = acc.Histograms("h")
    hv = ev.histogram_value
    a = x.double().numpy().ravel()
    counts, edges = np.histogram(a, bins=16)
    assert ev.step == 7 and hv.num == a.size == sum(hv.bucket)
    assert hv.min == pytest.approx(a.min()) and hv.max == pytest.approx(a.max())
    assert hv.sum == pytest.approx(a.sum(), abs=1e-9) and hv.sum_squares == pytest.approx((a * a).sum(), rel=1e-12)
    np.testing.assert_allclose(hv.bucket_limit, edges[1:], rtol=1e-12)
    assert list(hv.bucket) == counts.tolist()
    (c,) = acc.Histograms("const")
    assert (c.histogram_value.num, list(c.histogram_value.bucket), c.histogram_value.max) == (5, [5.0], 0.25)


# ---------------------------------------------------------------------------------------
# The loop's pieces
# ---------------------------------------------------------------------------------------
def _pieces(family_name="cartpole-mass", n=8, k=3, t=40, seed=0):
    from hyperrl.agent import HyperAgent
    from hyperrl.sim import make_vec_env
    from hyperrl.train_config import ModelConfig

    family = load_family(family_name)
    torch.manual_seed(seed)
    env = make_vec_env(family, n, seed=seed)
    agent = HyperAgent(env.obs_dim, env.single_action_space, family.context_dim,
                       ModelConfig(hidden_sizes=(16, 16), embed_sizes=(16,), critic_hidden_sizes=(16,)))
    gen = torch.Generator().manual_seed(seed)
    obs = env.reset(params=family.sample(n, gen), seed=seed)
    return family, env, agent, gen, obs


def test_collect_rollout_acts_with_each_steps_slot_variant():
    """Every stored log-probability is the one the step's own slot variant's generated policy
    gives its action (so weights and parameters follow the slots), slots advance at episode
    ends and stop at the last one, and the episode tracker saw every finished episode."""
    from hyperrl.agent import RolloutWeights
    from hyperrl.hypernet import functional_mlp
    from hyperrl.train import EpisodeTracker, Rollout, collect_rollout, draw_slots

    family, env, agent, gen, obs = _pieces()
    n, k, t = 8, 3, 40
    params_tab, ctx_tab = draw_slots(env, family, family.sample, k, gen, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        w = agent.policy_weights(ctx_tab.view(n * k, -1))
    rollout = Rollout.allocate(t, n, env.obs_dim, agent, torch.float32, torch.device("cpu"))
    episodes = EpisodeTracker.zeros(n, torch.device("cpu"))
    collect_rollout(env, agent, rollout, obs, params_tab, ctx_tab, RolloutWeights(w, n, k),
                    torch.Generator().manual_seed(1), episodes, 1.0, branch_free=False)
    done = rollout.terminated | rollout.truncated
    assert done.any()  # CartPole at init: episodes end within 40 steps
    # slot(t+1) = min(slot(t) + done(t), K - 1)
    expected = torch.minimum(rollout.slot[:-1] + done[:-1].long(), torch.tensor(k - 1))
    assert torch.equal(rollout.slot[1:], expected) and bool((rollout.slot[0] == 0).all())
    with torch.no_grad():
        for col in range(n):
            for s in rollout.slot[:, col].unique().tolist():
                steps = (rollout.slot[:, col] == s).nonzero().squeeze(1)
                wv = {key: v.view(n, k, *v.shape[1:])[col, s:s + 1] for key, v in w.items()}
                out = functional_mlp(wv, rollout.obs[steps, col].unsqueeze(0), agent.cfg.activation)[0]
                logp = agent.policy_head(wv, out).log_prob(rollout.actions[steps, col])
                torch.testing.assert_close(logp, rollout.logp[steps, col], rtol=1e-5, atol=1e-5)
    assert int(episodes.count) == int(done.sum())
    assert episodes.finished_means()[1] == pytest.approx(float(episodes.len_sum) / int(done.sum()))


def test_episode_tracker_by_hand():
    from hyperrl.train import EpisodeTracker

    tr = EpisodeTracker.zeros(2, torch.device("cpu"))
    assert tr.finished_means() is None
    tr.step(torch.tensor([1.0, 2.0]), torch.tensor([False, False]))
    tr.step(torch.tensor([1.0, 2.0]), torch.tensor([True, False]))  # env 0: return 2, length 2
    tr.step(torch.tensor([3.0, 2.0]), torch.tensor([False, True]))  # env 1: return 6, length 3
    assert tr.finished_means() == (4.0, 2.5)
    assert tr.ret.tolist() == [3.0, 0.0] and tr.length.tolist() == [1, 0]
    tr.start_rollout()
    assert tr.finished_means() is None and tr.ret.tolist() == [3.0, 0.0]  # running episodes carry over


def test_simulator_state_dict_continues_the_same_episodes():
    """state_dict / load_state_dict: the steps after a restore repeat the steps after the save
    exactly, autoresets (which draw from the simulator's generator) included."""
    family, env, agent, gen, obs = _pieces("cartpole-actuator", n=16)
    actions = torch.randint(0, 2, (60, 16), generator=torch.Generator().manual_seed(2))
    for a in actions[:10]:
        env.step(a)
    saved = env.state_dict()
    first = [env.step(a) for a in actions[10:]]
    assert any(bool(o.terminated.any()) for o in first)
    _, env2, _, _, _ = _pieces("cartpole-actuator", n=16, seed=5)  # another start, another generator
    env2.load_state_dict(saved)
    for a, o in zip(actions[10:], first):
        o2 = env2.step(a)
        assert torch.equal(o2.obs, o.obs) and torch.equal(o2.final_obs, o.final_obs)
        assert torch.equal(o2.terminated, o.terminated) and torch.equal(o2.truncated, o.truncated)
    assert torch.equal(env2.params, env.params)


def test_evaluate_heldout_scores_both_splits_and_restores_train_mode():
    from hyperrl.train import evaluate_heldout
    from hyperrl.train_config import EvalConfig

    family, env, agent, gen, obs = _pieces()
    agent.train()
    stats = evaluate_heldout(agent, family, EvalConfig(episodes=2), 0, torch.device("cpu"), torch.float32)
    assert set(stats) == {"interpolation", "extrapolation"} and agent.training
    for split, st in stats.items():
        assert st.returns.shape == (len(family.heldout_values(split)), 2)
        assert bool(((st.returns >= 1) & (st.returns <= 500)).all())
    again = evaluate_heldout(agent, family, EvalConfig(episodes=2), 0, torch.device("cpu"), torch.float32)
    assert torch.equal(again["interpolation"].returns, stats["interpolation"].returns)  # same round, same starts
