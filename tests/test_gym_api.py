"""Families as Gymnasium citizens: registered ids, ``gymnasium.make`` with and without values,
``gymnasium.make_vec`` on the batched simulators (one-step checks against the per-env
Gymnasium path across autoresets, both autoreset modes, NumPy and tensors), Gymnasium's
vector wrappers, a family YAML registered from disk, and the stable-baselines3 adapter.

The step-by-step comparisons follow ``tests/test_sim_equivalence.py``: before every step the
simulator's state is re-synced from the Gymnasium envs, so each step compares one transition
from the same state and action (no long open-loop comparison of chaotic systems).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

import hyperrl
from hyperrl.errors import FamilyError
from hyperrl.families import gym_make, list_families, load_family
from hyperrl.sim.base import BatchedSim
from hyperrl.sim.generic import GymnasiumVecEnv
from hyperrl.vector import FamilyVectorEnv

REPO = Path(__file__).resolve().parent.parent
CARTPOLE = "hyperrl/cartpole-mass-v0"
OBS32 = dict(rtol=1e-6, atol=1e-7)  # a float64 state seen through a float32 observation
TOL = 1e-10  # one float64 step from a shared state


def make_vec(env_id: str, n: int, **kwargs) -> FamilyVectorEnv:
    env = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", **kwargs)
    assert isinstance(env, FamilyVectorEnv)
    return env


def unwrapped_values(env: gym.Env, names) -> dict[str, float]:
    return {n: float(getattr(env.unwrapped, n)) for n in names}


# ---- registration ------------------------------------------------------------------------
def test_every_builtin_family_is_registered_with_its_time_limit():
    for name in list_families():
        family = load_family(name)
        spec = gym.spec(f"hyperrl/{name}-v0")
        assert hyperrl.family_env_id(name) == spec.id
        assert spec.max_episode_steps == (family.max_episode_steps or gym.spec(family.env_id).max_episode_steps)
        assert spec.reward_threshold == family.success_return
        assert spec.vector_entry_point is not None
        env = gym.make(spec.id)
        assert env.spec.max_episode_steps == spec.max_episode_steps
        assert env.observation_space == gym_make(family.env_id).observation_space  # MuJoCo: without its deprecation warning
        env.close()


def test_a_fresh_process_reaches_the_ids_through_the_module_prefix():
    """Gymnasium 1.x loads no plugins by entry point: ``"hyperrl:<id>"`` makes Gymnasium import
    hyperrl, whose import registers the families."""
    script = ("import sys, gymnasium as gym\n"
              "env = gym.make('hyperrl:hyperrl/cartpole-mass-v0', masspole=0.3)\n"
              "obs, info = env.reset(seed=0)\n"
              "venv = gym.make_vec('hyperrl:hyperrl/pendulum-actuator-v0', num_envs=3, "
              "vectorization_mode='vector_entry_point')\n"
              "print(info['params']['masspole'], env.unwrapped.total_mass, type(venv).__name__, "
              "sys.modules['hyperrl'].__file__)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    mass, total, cls, where = out.stdout.split()
    assert float(mass) == 0.3 and float(total) == pytest.approx(1.3)
    assert cls == "FamilyVectorEnv" and Path(where).resolve().is_relative_to(REPO)


# ---- gymnasium.make ----------------------------------------------------------------------
def test_make_with_values_gives_that_variant_every_episode():
    env = gym.make(CARTPOLE, masspole=0.3)
    for seed in (0, None, None):
        _, info = env.reset(seed=seed)
        assert info["params"] == {"masspole": 0.3}
        assert unwrapped_values(env, ["masspole", "total_mass"]) == pytest.approx({"masspole": 0.3, "total_mass": 1.3})
    env = gym.make("hyperrl/pendulum-mass-length-v0", m=1.2, l=0.7)
    _, info = env.reset(seed=1)
    assert info["params"] == {"m": 1.2, "l": 0.7} == unwrapped_values(env, ["m", "l"])
    _, _, _, _, info = env.step(env.action_space.sample())
    assert info["params"] == {"m": 1.2, "l": 0.7}


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"masspole": 5.0}, "parameter masspole=5 is outside its physical bounds: masspole in [0.005, 2]"),
    ({"masspol": 0.3}, "family 'cartpole-mass' has no parameter 'masspol'; its parameters: masspole"),
])
def test_make_refuses_bad_values_with_one_line(kwargs, needle):
    with pytest.raises(FamilyError) as e:
        gym.make(CARTPOLE, **kwargs)
    assert str(e.value) == needle
    with pytest.raises(FamilyError, match="no value given for parameter\\(s\\) l"):
        gym.make("hyperrl/pendulum-mass-length-v0", m=1.0)
    with pytest.raises(FamilyError) as e:
        make_vec(CARTPOLE, 4, masspole=[0.1, 0.2, 0.3, 9.0])
    assert str(e.value).startswith("parameter masspole=9 is outside its physical bounds")


def test_make_without_values_draws_a_variant_per_reset_reproducibly():
    family = load_family("cartpole-mass-length")
    env = gym.make("hyperrl/cartpole-mass-length-v0")
    seen = []
    for seed in (7, None, None, None, None):
        _, info = env.reset(seed=seed)
        values = info["params"]
        assert values == pytest.approx(unwrapped_values(env, family.param_names))
        assert env.unwrapped.polemass_length == pytest.approx(values["masspole"] * values["length"])
        assert bool(family.in_train_range(torch.tensor([list(values.values())])))
        seen.append(values)
    assert len({tuple(v.values()) for v in seen}) == len(seen)  # a new variant every reset
    again = gym.make("hyperrl/cartpole-mass-length-v0")
    assert [again.reset(seed=7 if i == 0 else None)[1]["params"] for i in range(5)] == seen
    assert again.reset(seed=8)[1]["params"] != seen[0]


@pytest.mark.parametrize("kwargs", [{}, {"masspole": 0.02}])
def test_single_env_passes_gymnasium_and_sb3_checkers(kwargs):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make(CARTPOLE, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CartPole's infinite bounds; "wrapped env" advice
        check_env(env, skip_render_check=True)
        sb3_check_env(env, skip_render_check=True)


# ---- a family YAML on disk ---------------------------------------------------------------
def _user_family(tmp_path: Path, name: str, batched: bool = False) -> Path:
    text = (REPO / "envs" / "cartpole-mass.yaml").read_text().replace("name: cartpole-mass", f"name: {name}")
    if not batched:
        text = text.replace("batched: cartpole\n", "")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def test_register_family_from_disk_and_the_generic_vector_fallback(tmp_path):
    path = _user_family(tmp_path, "my-cartpole")
    env_id = hyperrl.register_family(path)
    assert env_id == "hyperrl/my-cartpole-v0" and gym.spec(env_id).max_episode_steps == 500
    assert hyperrl.register_family(path) == env_id  # the same file again: fine
    env = gym.make(env_id, masspole=0.2)
    assert env.reset(seed=0)[1]["params"] == {"masspole": 0.2}

    venv = make_vec(env_id, 3, masspole=[0.1, 0.2, 0.4])
    assert isinstance(venv.sim, GymnasiumVecEnv)  # no batched simulator: gymnasium.vector
    obs, info = venv.reset(seed=0)
    assert obs.shape == (3, 4) and obs.dtype == np.float32
    np.testing.assert_allclose(info["params"]["masspole"], [0.1, 0.2, 0.4], rtol=1e-6)
    assert venv.sim.get_attr("masspole") == pytest.approx((0.1, 0.2, 0.4))
    ended = np.zeros(3, dtype=bool)
    for _ in range(60):
        obs, reward, term, trunc, info = venv.step(np.ones(3, dtype=np.int64))  # pushes them over
        ended |= info["_final_obs"]
        assert obs in venv.observation_space
    assert ended.all()  # autoreset kept each env's values
    assert venv.sim.get_attr("masspole") == pytest.approx((0.1, 0.2, 0.4))
    with pytest.raises(FamilyError, match="has no batched simulator"):
        make_vec(env_id, 2, autoreset_mode="NextStep")
    venv.close()


def test_register_family_errors(tmp_path):
    clash = _user_family(tmp_path, "cartpole-mass", batched=True)
    with pytest.raises(FamilyError, match="'hyperrl/cartpole-mass-v0' is already registered"):
        hyperrl.register_family(clash)
    assert hyperrl.register_family(clash, id="hyperrl/cartpole-mass-mine-v0") == "hyperrl/cartpole-mass-mine-v0"
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "envs" / "cartpole-mass.yaml").read_text().replace("bounds: [0.005, 2.0]", "bounds: 3"))
    with pytest.raises(FamilyError, match="params.masspole.bounds: expected \\[low, high\\]"):
        hyperrl.register_family(bad)
    with pytest.raises(FamilyError, match="unknown family 'nope'"):
        hyperrl.register_family("nope")


# ---- gymnasium.make_vec: the vector env ----------------------------------------------------
@pytest.mark.parametrize("name", ["cartpole-mass", "pendulum-actuator", "acrobot-links"])
def test_make_vec_is_a_vector_env_with_gymnasiums_spaces(name):
    family = load_family(name)
    venv = make_vec(f"hyperrl/{name}-v0", 5)
    single = gym.make(f"hyperrl/{name}-v0")
    assert isinstance(venv, gym.vector.VectorEnv) and isinstance(venv.sim, BatchedSim)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert venv.single_observation_space == single.observation_space
    assert venv.single_action_space == single.action_space
    assert venv.observation_space == gym.vector.utils.batch_space(single.observation_space, 5)
    assert venv.action_space == gym.vector.utils.batch_space(single.action_space, 5)
    obs, info = venv.reset(seed=3)
    assert obs in venv.observation_space and obs.dtype == single.observation_space.dtype
    venv.action_space.seed(0)
    for _ in range(30):
        prev = obs
        obs, reward, term, trunc, info = venv.step(venv.action_space.sample())
        assert obs in venv.observation_space and obs is not prev
        assert reward.shape == term.shape == trunc.shape == (5,)
        assert term.dtype == trunc.dtype == np.bool_
        values = np.stack([info["params"][n] for n in family.param_names], -1)
        assert bool(family.in_train_range(torch.from_numpy(values).double()).all())
        assert info["final_obs"].shape == obs.shape and info["_final_obs"].dtype == np.bool_
    venv.close()
    assert venv.closed


def _reset_policy(name: str, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Actions that keep CartPole up in half the envs (so time limits are reached) and are
    random elsewhere; random torques or torque choices for Pendulum and Acrobot."""
    n = obs.shape[0]
    if name.startswith("cartpole"):
        balance = (obs[:, 2] + 0.3 * obs[:, 3] > 0).astype(np.int64)
        return np.where(np.arange(n) % 2 == 0, balance, rng.integers(0, 2, n))
    if name.startswith("pendulum"):
        return rng.uniform(-3.0, 3.0, (n, 1)).astype(np.float32)  # beyond +-max_torque: clipped
    return rng.integers(0, 3, n)


@pytest.mark.parametrize(("name", "steps", "limit", "branch_free"), [
    ("cartpole-mass", 260, 120, False), ("cartpole-mass", 260, 120, True), ("pendulum-actuator", 120, 50, False),
    ("acrobot-links", 120, 40, False)])
def test_make_vec_matches_the_per_env_gymnasium_path_step_by_step(name, steps, limit, branch_free):
    """Domain randomisation, same-step autoreset and info, against one ``gym.make(id,
    **values)`` env per variant: each step from the same (re-synced) state and action.
    ``branch_free``: the accelerator code path (no host sync), run on the CPU."""
    n = 6
    family = load_family(name)
    env_id = f"hyperrl/{name}-v0"
    venv = make_vec(env_id, n, dtype="float64", max_episode_steps=limit)
    sim = venv.sim
    sim.branch_free_autoreset = branch_free
    obs, info = venv.reset(seed=5)
    values = np.stack([info["params"][p] for p in family.param_names], -1)
    envs = [gym.make(env_id, max_episode_steps=limit, **family.as_dict(torch.from_numpy(v))) for v in values]
    gym_obs = np.stack([e.reset(seed=100 + i)[0] for i, e in enumerate(envs)])
    rng = np.random.default_rng(0)
    ends = {"terminated": 0, "truncated": 0}
    for t in range(steps):
        sim.state = torch.from_numpy(np.stack([np.asarray(e.unwrapped.state, dtype=np.float64) for e in envs]))
        actions = _reset_policy(name, gym_obs, rng)
        obs, reward, term, trunc, info = venv.step(actions)
        results = [e.step(a) for e, a in zip(envs, actions)]
        expected = np.stack([r[0] for r in results])
        done = term | trunc
        np.testing.assert_allclose(info["final_obs"][done], expected[done], **OBS32)
        np.testing.assert_allclose(obs[~done], expected[~done], **OBS32)
        np.testing.assert_allclose(reward, [r[1] for r in results], rtol=TOL, atol=TOL)
        assert np.array_equal(term, [r[2] for r in results]), f"step {t}"
        assert np.array_equal(trunc, [r[3] for r in results]), f"step {t}"
        assert np.array_equal(info["_final_obs"], done) and np.array_equal(info["_final_info"], done)
        now = np.stack([info["params"][p] for p in family.param_names], -1)
        ended = np.stack([info["final_info"]["params"][p] for p in family.param_names], -1)
        np.testing.assert_array_equal(ended[done], values[done])  # the episode's own values
        np.testing.assert_array_equal(now[~done], values[~done])  # unchanged mid-episode
        gym_obs = expected
        for i in np.flatnonzero(done).tolist():
            ends["terminated"] += int(term[i])
            ends["truncated"] += int(trunc[i])
            assert not np.array_equal(now[i], values[i])  # a new variant, from the train distribution
            assert bool(family.in_train_range(torch.from_numpy(now[i:i + 1])))
            np.testing.assert_allclose(obs[i], sim.observe(sim.state)[i].numpy(), **OBS32)  # its fresh start
            envs[i].close()
            envs[i] = gym.make(env_id, max_episode_steps=limit, **family.as_dict(torch.from_numpy(now[i])))
            gym_obs[i] = envs[i].reset(seed=1000 * t + i)[0]
        values = now
    assert ends["truncated"] >= 2
    if name.startswith("cartpole"):
        assert ends["terminated"] >= 5


def test_make_vec_values_set_params_and_seeding():
    venv = make_vec(CARTPOLE, 4, masspole=0.3)
    _, info = venv.reset(seed=0)
    assert np.allclose(info["params"]["masspole"], 0.3)
    for _ in range(60):
        _, _, _, _, info = venv.step(np.ones(4, dtype=np.int64))
        assert np.allclose(info["params"]["masspole"], 0.3)
    venv.set_params({"masspole": [0.1, 0.2, 0.4, 0.8]})
    venv.reset()
    np.testing.assert_allclose(venv.params[:, 0], [0.1, 0.2, 0.4, 0.8], rtol=1e-6)
    venv.set_params(None, indices=[1, 3])  # those two back to the train distribution
    venv.set_params([0.05], indices=[0])
    draws = []
    for _ in range(5):
        venv.reset()
        draws.append(venv.params[:, 0].copy())
    draws = np.stack(draws)
    np.testing.assert_allclose(draws[:, 0], 0.05, rtol=1e-6)
    np.testing.assert_allclose(draws[:, 2], 0.4, rtol=1e-6)
    assert len(set(draws[:, 1].tolist())) == 5 and len(set(draws[:, 3].tolist())) == 5
    with pytest.raises(FamilyError, match="one value or 4"):
        venv.set_params({"masspole": [0.1, 0.2]})
    with pytest.raises(FamilyError, match="outside its physical bounds"):
        venv.set_params([3.0], indices=[2])

    def rollout(seed: int) -> list[np.ndarray]:
        env = make_vec(CARTPOLE, 8)
        obs, info = env.reset(seed=seed)
        out = [obs, info["params"]["masspole"].copy()]
        rng = np.random.default_rng(0)
        for _ in range(40):
            obs, _, _, _, info = env.step(rng.integers(0, 2, 8))
            out += [obs, info["params"]["masspole"].copy()]
        return out

    a, b, c = rollout(1), rollout(1), rollout(2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1]) and not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0][:, 0], a[1])  # start states and values are separate streams


@pytest.mark.parametrize("branch_free", [False, True])
def test_next_step_autoreset_matches_gymnasiums_sync_vector_env(branch_free):
    """NextStep: the step that ends an episode returns its last observation; the next one
    returns the reset observation with reward 0, ignoring that env's action. Compared with
    Gymnasium's ``SyncVectorEnv`` of the registered single envs in NextStep mode, re-synced
    every step (start states come from different generators)."""
    n, values = 4, [0.05, 0.1, 0.3, 0.6]
    ours = make_vec(CARTPOLE, n, masspole=values, autoreset_mode="NextStep", dtype="float64", max_episode_steps=30)
    ours.sim.branch_free_autoreset = branch_free
    assert ours.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    theirs = gym.vector.SyncVectorEnv(
        [lambda v=v: gym.make(CARTPOLE, masspole=v, max_episode_steps=30) for v in values],
        autoreset_mode=AutoresetMode.NEXT_STEP)
    ours.reset(seed=0)
    their_obs, _ = theirs.reset(seed=0)
    rng = np.random.default_rng(1)
    pending = np.zeros(n, dtype=bool)
    resets = 0
    for _ in range(150):
        states = np.stack([np.asarray(e.unwrapped.state, dtype=np.float64) for e in theirs.envs])
        live = torch.from_numpy(~pending)
        ours.sim.state = torch.where(live[:, None], torch.from_numpy(states), ours.sim.state)
        actions = rng.integers(0, 2, n)
        obs, reward, term, trunc, info = ours.step(actions)
        their_obs, their_reward, their_term, their_trunc, _ = theirs.step(actions)
        np.testing.assert_allclose(obs[~pending], their_obs[~pending], **OBS32)
        np.testing.assert_allclose(reward, their_reward, rtol=TOL, atol=TOL)
        assert np.array_equal(term, their_term) and np.array_equal(trunc, their_trunc)
        assert "final_obs" not in info
        np.testing.assert_allclose(info["params"]["masspole"], values, rtol=1e-12)
        if pending.any():  # the reset step: a fresh start of ours (|x| <= 0.05), reward 0
            resets += int(pending.sum())
            assert (np.abs(obs[pending]) <= 0.05).all() and (reward[pending] == 0).all()
            assert (ours.sim.elapsed.numpy()[pending] == 0).all()
            start = torch.from_numpy(np.stack([np.asarray(e.unwrapped.state, dtype=np.float64) for e in theirs.envs]))
            ours.sim.state = torch.where(torch.from_numpy(pending)[:, None], start, ours.sim.state)
        pending = term | trunc
    assert resets >= 6


def test_gymnasium_vector_wrappers():
    venv = gym.wrappers.vector.RecordEpisodeStatistics(make_vec(CARTPOLE, 16))
    venv.reset(seed=0)
    rewards = np.zeros(16)
    episodes = 0
    for _ in range(100):
        _, reward, term, trunc, info = venv.step(venv.action_space.sample())
        rewards += reward
        if "episode" in info:
            done = info["_episode"]
            assert np.array_equal(done, term | trunc)
            np.testing.assert_allclose(info["episode"]["r"][done], rewards[done])
            np.testing.assert_array_equal(info["episode"]["l"][done], rewards[done])  # CartPole: 1 per step
            episodes += int(done.sum())
            rewards[done] = 0
    assert episodes >= 16

    with pytest.raises(ValueError, match="NEXT_STEP"):  # Gymnasium's own requirement
        gym.wrappers.vector.NormalizeObservation(make_vec(CARTPOLE, 4))
    norm = gym.wrappers.vector.NormalizeObservation(make_vec(CARTPOLE, 256, autoreset_mode="NextStep"))
    norm.reset(seed=0)
    for _ in range(200):
        obs, *_ = norm.step(norm.action_space.sample())
    assert np.abs(obs.mean(0)).max() < 0.5 and np.all(np.abs(obs.std(0) - 1) < 0.5)
    assert norm.obs_rms.count > 200 * 256


def test_tensors_mode_gives_the_same_numbers_as_tensors_on_the_device():
    a = make_vec(CARTPOLE, 8, append_context=True)
    b = make_vec(CARTPOLE, 8, append_context=True, tensors=True, device="cpu")
    oa, ia = a.reset(seed=4)
    ob, ib = b.reset(seed=4)
    assert isinstance(ob, torch.Tensor) and ob.device == b.sim.device
    np.testing.assert_array_equal(oa, ob.numpy())
    family = load_family("cartpole-mass")
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(40):
        act = rng.integers(0, 2, 8)
        ra = a.step(act)
        rb = b.step(torch.from_numpy(act))
        for x, y in zip(ra[:4], rb[:4]):
            assert isinstance(y, torch.Tensor)
            np.testing.assert_array_equal(x, y.numpy())
        assert isinstance(rb[4]["final_obs"], torch.Tensor) and isinstance(rb[4]["_final_obs"], torch.Tensor)
        np.testing.assert_array_equal(ra[4]["final_obs"], rb[4]["final_obs"].numpy())
        np.testing.assert_array_equal(ra[4]["params"]["masspole"], rb[4]["params"]["masspole"].numpy())
        # the context of each observation's own variant: the new one after an autoreset,
        # the ended episode's in final_obs
        now = torch.from_numpy(ra[4]["params"]["masspole"]).reshape(-1, 1)
        before = torch.from_numpy(ra[4]["final_info"]["params"]["masspole"]).reshape(-1, 1)
        np.testing.assert_allclose(ra[0][:, 4:], family.context(now).numpy(), rtol=1e-6)
        done = ra[4]["_final_obs"]
        np.testing.assert_allclose(ra[4]["final_obs"][done, 4:], family.context(before[done]).numpy(), rtol=1e-6)
        ended += int(done.sum())
    assert ended >= 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_tensors_stay_on_cuda():
    venv = make_vec(CARTPOLE, 64, tensors=True, device="cuda")
    obs, info = venv.reset(seed=0)
    for _ in range(30):
        obs, reward, term, trunc, info = venv.step(torch.randint(0, 2, (64,), device="cuda"))
    for x in (obs, reward, term, trunc, info["final_obs"], info["params"]["masspole"]):
        assert x.device.type == "cuda"


# ---- stable-baselines3 --------------------------------------------------------------------
def test_sb3_adapter_reports_terminal_observations_and_truncation():
    from hyperrl.sb3 import SB3VecEnv

    venv = SB3VecEnv("cartpole-mass", num_envs=6, max_episode_steps=25)
    assert venv.observation_space == gym.spec(CARTPOLE).make().observation_space
    venv.seed(3)
    first = venv.reset()
    venv.seed(3)
    assert np.array_equal(venv.reset(), first)
    assert [set(i["params"]) for i in venv.reset_infos] == [{"masspole"}] * 6
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(80):
        before = venv.venv.sim.state.clone()
        obs, reward, dones, infos = venv.step(np.where(np.arange(6) % 2 == 0, (before[:, 2] > 0).long().numpy(),
                                                       rng.integers(0, 2, 6)))
        assert obs.shape == (6, 4) and reward.dtype == np.float32 and dones.dtype == np.bool_
        for i, info in enumerate(infos):
            assert ("terminal_observation" in info) == bool(dones[i])
            if dones[i]:
                x, theta = info["terminal_observation"][[0, 2]]
                fell = abs(x) > 2.4 or abs(theta) > 12 * 2 * np.pi / 360
                assert info["TimeLimit.truncated"] == (not fell)  # cut by the limit, not fallen
                kinds.add(info["TimeLimit.truncated"])
                assert np.abs(obs[i]).max() <= 0.05  # already the next episode's start
    assert kinds == {True, False}
    venv.set_attr("params", [0.7], indices=[0, 1])
    venv.env_method("set_params", {"masspole": 0.2}, indices=2)
    venv.reset()
    got = [p["masspole"] for p in venv.get_attr("params")]
    assert got[:3] == pytest.approx([0.7, 0.7, 0.2])
    with pytest.raises(AttributeError):
        venv.set_attr("gravity", 3.0)
    venv.close()


def test_sb3_ppo_trains_on_the_adapter():
    """A few PPO updates on the batched family: the rollout buffer holds the adapter's
    observations; exactly the time-limit truncations are bootstrapped (SB3 adds gamma *
    V(terminal observation) to their reward, CartPole's reward being 1 otherwise), not the
    terminations; the policy's weights change."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import VecMonitor

    from hyperrl.sb3 import SB3VecEnv

    class Record(BaseCallback):  # which steps of the last rollout were cut by the time limit
        def _on_rollout_start(self) -> None:
            self.cut: list[list[bool]] = []

        def _on_step(self) -> bool:
            infos, dones = self.locals["infos"], self.locals["dones"]
            self.cut.append([bool(d and i["TimeLimit.truncated"]) for d, i in zip(dones, infos)])
            for d, i in zip(dones, infos):
                if d:  # cut exactly when the 12th step ends with the pole still up
                    x, theta = i["terminal_observation"][[0, 2]]
                    up = abs(x) <= 2.4 and abs(theta) <= 12 * 2 * np.pi / 360
                    assert i["TimeLimit.truncated"] == (up and i["episode"]["l"] == 12)
            return True

    venv = VecMonitor(SB3VecEnv("cartpole-mass", num_envs=8, max_episode_steps=12))
    model = PPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=2, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16]})
    before = [p.detach().clone() for p in model.policy.parameters()]
    record = Record()
    model.learn(3 * 32 * 8, callback=record)
    assert model.num_timesteps == 3 * 32 * 8
    assert any(not torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    buf = model.rollout_buffer
    # the last rollout, flattened for the update: 32 steps x 8 envs
    assert buf.full and buf.observations.shape == (256, 4) and buf.actions.shape == (256, 1)
    obs = buf.observations
    assert np.all(np.abs(obs[:, 0]) <= 4.8) and np.unique(obs, axis=0).shape[0] > 200
    cut = np.array(record.cut)
    assert buf.rewards.shape == cut.shape == (32, 8) and 5 <= cut.sum() < 200
    assert np.array_equal(buf.rewards != 1.0, cut)
    assert len(model.ep_info_buffer) > 8 and max(e["l"] for e in model.ep_info_buffer) <= 12
    venv.close()


def test_baselines_choose_the_vec_env(tmp_path):
    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

    from hyperrl.baselines import resolve_vec_env, sb3_vec_env
    from hyperrl.errors import HyperrlError
    from hyperrl.sb3 import SB3VecEnv

    cartpole, pendulum = load_family("cartpole-mass"), load_family("pendulum-mass-length")
    generic = load_family(_user_family(tmp_path, "no-sim"))
    assert [resolve_vec_env(f) for f in (cartpole, load_family("acrobot-links"), pendulum, generic)] == \
        ["batched", "batched", "dummy", "dummy"]
    assert resolve_vec_env(pendulum, "batched") == "batched" and resolve_vec_env(cartpole, "dummy") == "dummy"
    with pytest.raises(HyperrlError, match="has no batched simulator"):
        resolve_vec_env(generic, "batched")
    venv = sb3_vec_env(cartpole, "concat", 3, seed=0, values=torch.tensor([0.2]))
    assert isinstance(venv, VecMonitor) and isinstance(venv.venv, SB3VecEnv)
    assert venv.observation_space.shape == (4 + cartpole.context_dim,)
    venv.reset()
    assert [p["masspole"] for p in venv.get_attr("params")] == pytest.approx([0.2] * 3)
    assert isinstance(sb3_vec_env(pendulum, "dr", 2, seed=0), DummyVecEnv)


@pytest.mark.parametrize("tensors", [False, True])
def test_what_the_vector_env_returns_is_the_callers_to_write(tensors):
    """CartPole's simulator observes its state itself: writing into a returned observation,
    ``final_obs`` or value must not move the simulation (a vector observation wrapper
    rewrites ``final_obs`` in place)."""
    venv = make_vec(CARTPOLE, 16, tensors=tensors)
    obs, info = venv.reset(seed=0)
    for _ in range(50):
        state, params = venv.sim.state.clone(), venv.sim.params.clone()
        for x in (obs, info["params"]["masspole"], *([info["final_obs"]] if "final_obs" in info else [])):
            x[...] = 7.0
        assert torch.equal(venv.sim.state, state) and torch.equal(venv.sim.params, params)
        act = np.arange(16) % 2
        obs, _, _, _, info = venv.step(torch.from_numpy(act) if tensors else act)
