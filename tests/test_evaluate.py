"""``hyperrl.load`` for a trained run (``hyperrl.policy``) and ``python -m hyperrl.evaluate``.

Tiny trained runs (CartPole: discrete actions; Pendulum: continuous) are evaluated on both
backends; the batched simulator, started from Gymnasium's initial states and run in float64,
must give the very same returns as real Gymnasium envs over episodes short enough that float
rounding cannot decide them (``helpers.short_horizon_copy``), even with the simulator's state
nudged by one ulp along the way. Outputs, extrapolation marking,
one-line errors that leave the run dir untouched, stable-baselines3's ``evaluate_policy``
on a generated policy, and TorchScript / ONNX export are checked.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import helpers
import pytest
import torch

import hyperrl
import hyperrl.runs
from hyperrl import export as export_mod
from hyperrl.checkpoint import CheckpointError
from hyperrl.cli import main_guard
from hyperrl.errors import HyperrlError
from hyperrl.evaluate import main, run_evaluation
from hyperrl.hypernet import functional_mlp
from hyperrl.hyperrun import HyperRun
from hyperrl.policy import GeneratedPolicy
from hyperrl.sim.acrobot import BatchedAcrobot
from hyperrl.sim.cartpole import BatchedCartPole
from hyperrl.sim.pendulum import BatchedPendulum

TINY = [
    "env.num_envs=16", "ppo.num_steps=16", "eval.episodes=1", "progress=false",
    "ppo.update_epochs=2", "ppo.num_minibatches=2", "ppo.target_kl=null",
    "model.hidden_sizes=[16,16]", "model.embed_sizes=[16,16]", "model.critic_hidden_sizes=[16,16]",
    "model.chunk_size=0", "stop_at_return=null", "histogram_interval_evals=0", "dtype=float32",
]


def train_tiny(run_dir: Path, family: str, steps: int) -> Path:
    return helpers.train_tiny(run_dir, family, steps, TINY, eval_interval=steps // 2)


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("eval-cartpole") / "run", "cartpole-mass", 2048)


@pytest.fixture(scope="module")
def pendulum_run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("eval-pendulum") / "run", "pendulum-mass-length", 512)


def evaluate_cli(capsys, *args) -> str:
    capsys.readouterr()
    assert main_guard(main)([str(a) for a in args]) == 0
    return capsys.readouterr().out


def expect_error(capsys, *args) -> str:
    return helpers.expect_cli_error(capsys, main, args)


def tree_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def real_observations(family, values, policy: GeneratedPolicy, n: int = 300) -> np.ndarray:
    """Observations visited by the policy (with some random actions) on a real env."""
    env = family.make_env(values)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    out = []
    for _ in range(n):
        out.append(obs)
        a = policy.predict(obs)[0] if rng.random() < 0.7 else env.action_space.sample()
        obs, _, term, trunc, _ = env.step(a)
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    return np.stack(out).astype(np.float32)


# --------------------------------------------------------------------------------------
# The batched sims start from Gymnasium's initial states
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, env_id", [(BatchedCartPole, "CartPole-v1"), (BatchedPendulum, "Pendulum-v1"),
                                         (BatchedAcrobot, "Acrobot-v1")])
def test_gymnasium_initial_states_match_gymnasium(cls, env_id):
    states = cls.gymnasium_initial_states(seed=11, n=4)
    assert states.dtype == torch.float64 and states.shape == (4, cls.STATE_DIM)
    vec = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(4)])
    obs, _ = vec.reset(seed=11)  # sub-env i gets seed 11 + i
    for i in range(4):
        np.testing.assert_array_equal(np.asarray(vec.envs[i].unwrapped.state, dtype=np.float64), states[i].numpy())
    sim = cls(4, (), dtype=torch.float64, seed=0)
    sim_obs = sim.reset(initial_state=states)
    np.testing.assert_allclose(sim_obs.numpy(), obs, atol=1e-6, rtol=0)  # Gymnasium's obs are float32
    with pytest.raises(ValueError, match="initial_state"):
        sim.reset(initial_state=states[:2])
    vec.close()


# --------------------------------------------------------------------------------------
# hyperrl.load / HyperRun / GeneratedPolicy
# --------------------------------------------------------------------------------------
def test_load_hyperrl_run(cartpole_run):
    run = hyperrl.load(cartpole_run)
    assert isinstance(run, HyperRun) and isinstance(run, hyperrl.runs.LoadedRun)
    assert run.method == "hyperrl" and run.family.name == "cartpole-mass"
    assert run.checkpoint_path.name == "best.pt" and run.info["env_steps"] == 2048
    assert not run.agent.training
    latest = hyperrl.load(cartpole_run, checkpoint="latest")
    assert latest.checkpoint_path.name == "latest.pt" and latest.step == 2048

    values = torch.tensor([[0.05], [0.2], [1.0]], dtype=torch.float64)
    w = run.generate(values)
    assert w["0.weight"].shape == (3, 16, 4) and w["4.weight"].shape == (3, 2, 16)
    with pytest.raises(HyperrlError, match="outside its physical bounds"):
        run.generate([[5.0]])
    p = run.policy({"masspole": 0.2})
    assert p.params == {"masspole": 0.2}
    for k in p.weights:
        torch.testing.assert_close(p.weights[k], w[k][1], rtol=1e-5, atol=1e-6)  # batch of 1 vs 3: rounding
    module = p.to_module()
    assert isinstance(module, torch.nn.Module) and isinstance(module.mlp, torch.nn.Sequential)
    obs = torch.randn(7, 4)
    logits = functional_mlp({k: v[1:2] for k, v in w.items()}, obs.unsqueeze(0), "tanh")[0]
    torch.testing.assert_close(module.mlp(obs), logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(module(obs), logits.argmax(-1))


def test_predict_follows_sb3_shapes(cartpole_run, pendulum_run):
    cart = hyperrl.load(cartpole_run).policy([0.1])
    o = np.zeros(4, dtype=np.float32)
    a, state = cart.predict(o)
    assert isinstance(a, np.ndarray) and a.shape == () and a.dtype == np.int64 and state is None
    a, _ = cart.predict(np.zeros((5, 4), dtype=np.float32), state="s")
    assert a.shape == (5,) and a.dtype == np.int64
    a, _ = cart.predict(np.zeros((5, 4)), deterministic=False)
    assert set(a.tolist()) <= {0, 1}
    with pytest.raises(ValueError, match=r"\[4\]"):
        cart.predict(np.zeros(3))

    pend = hyperrl.load(pendulum_run).policy({"m": 1.0, "l": 1.0})
    a, _ = pend.predict(np.array([1.0, 0.0, 0.0], dtype=np.float32))
    assert a.shape == (1,) and a.dtype == np.float32
    big = np.tile(np.array([[1.0, 0.0, 0.0]], dtype=np.float32), (64, 1))
    big[:, 2] = np.linspace(-8, 8, 64)
    a, _ = pend.predict(big, deterministic=False)
    assert a.shape == (64, 1) and a.dtype == np.float32
    assert np.all(a >= -2.0) and np.all(a <= 2.0)


def test_missing_and_corrupt_checkpoints(cartpole_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(cartpole_run, run)
    (run / "checkpoints" / "best.pt").unlink()
    with pytest.raises(CheckpointError, match=r"best\.pt does not exist.*latest"):
        hyperrl.load(run)
    (run / "checkpoints" / "best.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match=r"best\.pt is corrupt"):
        hyperrl.load(run)


# --------------------------------------------------------------------------------------
# The evaluator
# --------------------------------------------------------------------------------------
def test_heldout_outputs_and_backends_agree(cartpole_run, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    before = set(cartpole_run.glob("events.out.tfevents.*"))
    out = evaluate_cli(capsys, cartpole_run, "--episodes", 2, "--seed", 3, "--name", "gym")
    assert "interpolation" in out and "extrapolation" in out and "all" in out
    evaluate_cli(capsys, cartpole_run, "--episodes", 2, "--seed", 3, "--backend", "batched", "--name", "bat")
    family = hyperrl.load(cartpole_run).family
    res = {}
    for name in ("gym", "bat"):
        d = cartpole_run / "eval" / name
        res[name] = r = json.loads((d / "results.json").read_text())
        assert (d / "return_vs_param.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert r["method"] == "hyperrl" and r["family"] == "cartpole-mass" and r["success_return"] == 475
        s = r["settings"]
        assert s["episodes"] == 2 and s["seed"] == 3 and s["deterministic"] is True and s["step"] == 2048
        assert s["selection"] == {"kind": "heldout", "split": "all"}
        assert s["checkpoint"].endswith("best.pt")
        expect = [(float(v), sp) for sp in ("interpolation", "extrapolation")
                  for v in family.heldout_values(sp)[:, 0]]
        assert [(v["values"]["masspole"], v["split"]) for v in r["variants"]] == expect
        for v in r["variants"]:
            assert len(v["returns"]) == 2 and v["mean"] == pytest.approx(np.mean(v["returns"]))
            assert v["std"] == pytest.approx(np.std(v["returns"]))
            assert v["length"] == pytest.approx(np.mean(v["lengths"]))  # CartPole: return == length
            assert v["success"] == np.mean(np.array(v["returns"]) >= 475)
        for sp in ("interpolation", "extrapolation"):
            means = [v["mean"] for v in r["variants"] if v["split"] == sp]
            assert r["splits"][sp]["variants"] == 9 and r["splits"][sp]["mean"] == pytest.approx(np.mean(means))
        with open(d / "results.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 18
        for row, v in zip(rows, r["variants"]):
            assert float(row["masspole"]) == v["values"]["masspole"] and row["split"] == v["split"]
            assert float(row["mean"]) == v["mean"] and [float(row["return_0"]), float(row["return_1"])] == v["returns"]
    assert res["bat"]["settings"]["backend"] == "batched"

    new = [p for p in cartpole_run.glob("events.out.tfevents.*") if p not in before]
    assert len(new) == 2  # one new event file per evaluation, nothing else touched
    accs = [EventAccumulator(str(p)) for p in new]
    for a in accs:
        a.Reload()
    acc = next(a for a in accs if "eval/gym/all/return_mean" in a.Tags()["scalars"])
    scalars = acc.Tags()["scalars"]
    for split in ("interpolation", "extrapolation", "all"):
        assert f"eval/gym/{split}/return_mean" in scalars and f"eval/gym/{split}/success_rate" in scalars
    assert acc.Scalars("eval/gym/all/return_mean")[0].value == pytest.approx(res["gym"]["splits"]["all"]["mean"])
    assert acc.Scalars("eval/gym/all/return_mean")[0].step == 2048
    assert "eval/gym/return_vs_param" in acc.Tags()["images"]


@pytest.mark.parametrize("nudge", [False, True], ids=["exact", "nudged"])
def test_backends_agree_on_short_episodes(cartpole_run, pendulum_run, tmp_path, monkeypatch, nudge):
    """Same policy, variants and seeds: the batched simulator replays Gymnasium's episodes.
    Pendulum: a float32 policy, so Gymnasium computes the action terms in float32 (NumPy 2
    promotion), and the float64 batched sim reproduces that."""
    nudges = helpers.nudge_batched_sims(monkeypatch) if nudge else [0]
    cart = hyperrl.load(helpers.short_horizon_copy(cartpole_run, tmp_path / "cart", 40))
    values = cart.family.heldout_values("extrapolation")
    a = run_evaluation(cart, values, episodes=2, seed=3, backend="gymnasium")
    b = run_evaluation(cart, values, episodes=2, seed=3, backend="batched")
    assert torch.equal(a.returns, b.returns) and torch.equal(a.lengths, b.lengths)
    assert bool((a.lengths == 40).any())  # some episodes reach the (short) time limit

    pend = hyperrl.load(helpers.short_horizon_copy(pendulum_run, tmp_path / "pend", 40))
    values = torch.tensor([[0.6, 0.6], [1.4, 0.9], [0.3, 2.0]], dtype=torch.float64)
    a = run_evaluation(pend, values, episodes=2, seed=5, backend="gymnasium")
    b = run_evaluation(pend, values, episodes=2, seed=5, backend="batched")
    torch.testing.assert_close(a.returns, b.returns, rtol=0, atol=1e-6)
    assert torch.equal(a.lengths, b.lengths) and bool((a.lengths == 40).all())
    assert (nudges[0] > 0) == nudge
    # chunking keeps env i on seed + i (weights generated in smaller batches round
    # differently in the last bits: close, not equal)
    import hyperrl.evaluate as ev

    monkeypatch.setattr(ev, "MAX_ENVS_PER_CALL", 2)
    c = run_evaluation(pend, values, episodes=2, seed=5, backend="batched")
    torch.testing.assert_close(c.returns, b.returns, rtol=0, atol=1e-4)


def test_values_grid_and_extrapolation_marking(cartpole_run, pendulum_run, capsys):
    out = evaluate_cli(capsys, cartpole_run, "--values", "masspole=0.02,0.1,1.5", "--episodes", 1)
    r = json.loads((cartpole_run / "eval" / "values-masspole=0.02,0.1,1.5" / "results.json").read_text())
    assert [v["split"] for v in r["variants"]] == ["extrapolation", "interpolation", "extrapolation"]
    assert r["settings"]["selection"] == {"kind": "values", "values": {"masspole": [0.02, 0.1, 1.5]}}
    table = [ln.split() for ln in out.splitlines()]
    assert ["1.5", "extrapolation"] == next(t[:2] for t in table if t and t[0] == "1.5")
    with open(cartpole_run / "eval" / "values-masspole=0.02,0.1,1.5" / "results.csv") as f:
        assert [row["split"] for row in csv.DictReader(f)] == ["extrapolation", "interpolation", "extrapolation"]

    evaluate_cli(capsys, pendulum_run, "--values", "m=0.3,1.0", "--values", "l=1.0", "--episodes", 1)
    r = json.loads((pendulum_run / "eval" / "values-m=0.3,1-l=1" / "results.json").read_text())
    assert [v["values"] for v in r["variants"]] == [{"m": 0.3, "l": 1.0}, {"m": 1.0, "l": 1.0}]
    assert [v["split"] for v in r["variants"]] == ["extrapolation", "interpolation"]
    assert r["success_return"] is None and r["variants"][0]["success"] is None

    evaluate_cli(capsys, pendulum_run, "--grid", 2, "--episodes", 1, "--backend", "batched")
    r = json.loads((pendulum_run / "eval" / "grid-2-batched" / "results.json").read_text())
    assert len(r["variants"]) == 4 and all(v["split"] == "extrapolation" for v in r["variants"])


def test_errors_are_one_line_and_leave_the_run_dir_untouched(cartpole_run, pendulum_run, tmp_path, capsys):
    before = tree_hash(cartpole_run)
    err = expect_error(capsys, cartpole_run, "--values", "masspole=0.02,5")
    assert "masspole" in err and "0.005" in err and "2" in err
    err = expect_error(capsys, cartpole_run, "--values", "masspole=abc")
    assert "abc" in err
    err = expect_error(capsys, cartpole_run, "--values", "gravity=9.8")
    assert "masspole" in err
    err = expect_error(capsys, cartpole_run, "--seed", 2**70)
    assert "argument --seed: must be an integer [0, " in err
    err = expect_error(capsys, cartpole_run, "--episodes", 0)
    assert "argument --episodes: must be an integer >= 1" in err
    assert tree_hash(cartpole_run) == before

    before = tree_hash(pendulum_run)
    err = expect_error(capsys, pendulum_run, "--values", "m=1.0")
    assert "missing: l" in err and "m, l" in err
    assert tree_hash(pendulum_run) == before

    assert "does not exist" in expect_error(capsys, tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "run.json" in expect_error(capsys, empty)
    assert not any(empty.iterdir())

    broken = tmp_path / "broken"
    shutil.copytree(cartpole_run, broken)
    best = broken / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])  # truncated
    before = tree_hash(broken)
    err = expect_error(capsys, broken)
    assert "best.pt" in err and "corrupt" in err
    assert tree_hash(broken) == before


# --------------------------------------------------------------------------------------
# stable-baselines3 and export
# --------------------------------------------------------------------------------------
def test_sb3_evaluate_policy_matches_our_evaluator(cartpole_run, tmp_path):
    """SB3 acts one observation at a time, our evaluator on a batch: the float32 policy
    rounds differently in the last bits, so the episodes are kept short (see
    ``helpers.short_horizon_copy``)."""
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    run = hyperrl.load(helpers.short_horizon_copy(cartpole_run, tmp_path / "short", 60))
    family, seed, episodes = run.family, 7, 3
    value = {"masspole": 0.3}
    policy = run.policy(value)
    ours = run_evaluation(run, torch.tensor([[0.3]], dtype=torch.float64), episodes, seed, "gymnasium")
    sb3 = []
    for e in range(episodes):  # our env e is reset with seed + e
        venv = DummyVecEnv([lambda: Monitor(family.make_env(value))])
        venv.seed(seed + e)
        rewards, lengths = evaluate_policy(policy, venv, n_eval_episodes=1, return_episode_rewards=True)
        sb3 += rewards
        venv.close()
    assert sb3 == ours.returns[0].tolist()
    mean, std = evaluate_policy(policy, Monitor(family.make_env(value)), n_eval_episodes=2)
    assert 1.0 <= mean <= 60.0


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_export_matches_policy(cartpole_run, pendulum_run, tmp_path):
    paths = {}
    for name, run_dir, values in (("cart", cartpole_run, {"masspole": 0.7}),
                                  ("pend", pendulum_run, {"m": 1.2, "l": 0.8})):
        run = hyperrl.load(run_dir)
        policy = run.policy(values)
        obs = real_observations(run.family, values, policy)
        expected, _ = policy.predict(obs)
        path = policy.export_torchscript(tmp_path / f"{name}.pt")
        loaded = torch.jit.load(str(path))
        got = loaded(torch.from_numpy(obs)).numpy()
        if name == "cart":
            np.testing.assert_array_equal(got, expected)
        else:
            np.testing.assert_array_equal(got.astype(np.float32), expected)
        # and the evaluator's batched path (one generated MLP per row) agrees
        actor = run.actor_factory()(run.family.context(run.values_2d(values)).float().expand(len(obs), -1), None)
        via_actor = actor(torch.from_numpy(obs)).numpy()
        np.testing.assert_allclose(via_actor.reshape(expected.shape), expected, rtol=0, atol=1e-5)
        paths[name] = (path, obs, expected)
        np.save(tmp_path / f"{name}-obs.npy", obs)
        np.save(tmp_path / f"{name}-act.npy", expected)

    # loadable without hyperrl at all
    code = (
        "import sys; sys.modules['hyperrl'] = None\n"
        "import numpy as np, torch\n"
        f"d = {str(tmp_path)!r}\n"
        "for n, dim in (('cart', 4), ('pend', 3)):\n"
        "    m = torch.jit.load(f'{d}/{n}.pt')\n"
        "    a = m(torch.from_numpy(np.load(f'{d}/{n}-obs.npy'))).numpy()\n"
        "    assert np.array_equal(a, np.load(f'{d}/{n}-act.npy')), n\n"
        "    m(torch.zeros(dim, dtype=torch.float64))  # one observation, any float dtype\n"
        "print('ok')\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_onnx_export(cartpole_run, pendulum_run, tmp_path, monkeypatch):
    policy = hyperrl.load(cartpole_run).policy([0.7])
    with monkeypatch.context() as m:
        m.setattr(export_mod, "_importable", lambda name: False)
        with pytest.raises(HyperrlError, match="'onnx' package"):
            policy.export_onnx(tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    pytest.importorskip("onnx", reason="the onnx package is not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    for name, run_dir, values in (("cart", cartpole_run, [0.7]), ("pend", pendulum_run, [1.2, 0.8])):
        run = hyperrl.load(run_dir)
        policy = run.policy(values)
        obs = real_observations(run.family, values, policy, n=200)
        expected, _ = policy.predict(obs)
        path = policy.export_onnx(tmp_path / f"{name}.onnx")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = sess.run(None, {"obs": obs})
        if name == "cart":
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, expected)
        else:
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


class _OtherMethodRun:
    """A LoadedRun of another method (as the baselines write): only the interface."""

    method = "other-test"

    def __init__(self, run_dir, info):
        inner = HyperRun(run_dir, info)
        self.run_dir, self.family, self.info = Path(run_dir), inner.family, {"env_steps": 123}
        self._inner = inner

    def actor_factory(self, deterministic=True, seed=0, device="cpu"):
        return self._inner.actor_factory(deterministic, seed, device)

    def policy(self, values, device="cpu"):
        return self._inner.policy(values, device)


def test_any_method_through_runs_load(cartpole_run, tmp_path, capsys, monkeypatch):
    run = tmp_path / "other"
    shutil.copytree(cartpole_run, run, ignore=shutil.ignore_patterns("eval"))
    (run / "run.json").write_text(json.dumps({"method": "other-test", "family": "cartpole-mass"}))
    monkeypatch.setitem(hyperrl.runs.LOADERS, "other-test", "test_evaluate:_OtherMethodRun")
    evaluate_cli(capsys, run, "--split", "extrapolation", "--episodes", 1)
    r = json.loads((run / "eval" / "heldout-extrapolation" / "results.json").read_text())
    assert r["method"] == "other-test" and r["settings"]["step"] == 123
    assert len(r["variants"]) == 9 and {v["split"] for v in r["variants"]} == {"extrapolation"}
    before = tree_hash(run)
    assert "--checkpoint" in expect_error(capsys, run, "--checkpoint", "latest")
    assert "--name" in expect_error(capsys, run, "--name", "../escape")
    assert tree_hash(run) == before


def test_parse_values_all_parameters_in_one_item():
    from hyperrl.evaluate import parse_values
    from hyperrl.families import load_family

    fam = load_family("pendulum-mass-length")
    one, lists = parse_values(fam, ["m=0.3,2,l=0.8"])
    two, _ = parse_values(fam, ["m=0.3,2", "l=0.8"])
    assert torch.equal(one, two) and lists == {"m": [0.3, 2.0], "l": [0.8]}
    assert one.tolist() == [[0.3, 0.8], [2.0, 0.8]]
    with pytest.raises(HyperrlError, match="given twice"):
        parse_values(fam, ["m=1,l=1,m=2"])
    with pytest.raises(HyperrlError, match="'x' is not a number"):
        parse_values(fam, ["m=1,x,l=1"])


def test_run_first_episodes_counts_each_envs_first_episode_and_records_it():
    """Returns and lengths stop at each env's first episode end (whatever the env does
    after its autoreset); the record holds exactly those steps, trimmed after the last end."""
    from hyperrl.episodes import run_first_episodes
    from hyperrl.sim import make_vec_env

    family = hyperrl.load_family("cartpole-mass")
    env = make_vec_env(family, 6, dtype=torch.float64, seed=0)
    obs = env.reset(params=torch.full((6, 1), 0.1, dtype=torch.float64), seed=0)
    push = torch.tensor([0, 1, 0, 1, 1, 0])  # always the same push: falls within ~10-40 steps

    def step(o):
        return push, push, torch.zeros(6)

    ret, length, eps = run_first_episodes(env, obs, step, record=True, sync_every=1)
    assert torch.equal(ret, length.double())  # CartPole: +1 per step
    assert torch.equal(eps.lengths, length) and torch.equal(eps.returns, ret)
    assert eps.mask.shape[0] == int(length.max())  # nothing recorded after the last end
    ends = (eps.terminated | eps.truncated).sum(0)
    assert ends.tolist() == [1] * 6  # exactly one episode end per env, its first
    env2 = make_vec_env(family, 6, dtype=torch.float64, seed=0)
    obs2 = env2.reset(params=torch.full((6, 1), 0.1, dtype=torch.float64), seed=0)
    ret2, length2, none = run_first_episodes(env2, obs2, lambda o: push)  # sync every 32 steps
    assert none is None and torch.equal(ret2, ret) and torch.equal(length2, length)
