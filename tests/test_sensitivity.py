"""Every parameter of every built-in family actually changes the physics.

For each family and each of its parameters: from the same initial state under the same
action sequence, moving that one parameter from the lowest to the highest value of its
train range (the others held at the family's first interpolation point) must change the
trajectory, in the real Gymnasium env (``family.make_env``) and, where the family has a
batched simulator, in the batched sim. A parameter that silently does nothing (a typo'd
attribute name, a cached derived quantity) fails here. A task parameter that changes only
the reward (cheetah-vel's target velocity) changes the rewards instead: the trajectory
compared is the observations and the rewards.

Every built-in family has a batched simulator; a user family without one is checked in
Gymnasium only (the generic gymnasium.vector backend is tested elsewhere).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from hyperrl.families import list_families, load_family
from hyperrl.sim import make_vec_env
from hyperrl.sim.base import BatchedSim

STEPS = 40
MIN_CHANGE = 1e-4  # max |obs difference| over the run that counts as "changed"
F64 = torch.float64

CASES = [
    (name, p.name) for name in list_families() for p in load_family(name).params
]


def _low_high(family, param: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The family's first interpolation point with ``param`` set to the lowest, then the
    highest, value of its train range."""
    spec = family.spec(param)
    j = family.param_names.index(param)
    base = family.heldout_values("interpolation")[0]
    lo, hi = base.clone(), base.clone()
    lo[j] = min(a for a, _ in spec.train_ranges)
    hi[j] = max(b for _, b in spec.train_ranges)
    return lo, hi


def _actions(space: gym.Space, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    if isinstance(space, gym.spaces.Discrete):
        return [int(a) for a in rng.integers(0, space.n, STEPS)]
    return [rng.uniform(space.low, space.high).astype(np.float64) for _ in range(STEPS)]


def _gym_rollout(family, values: torch.Tensor, actions: list) -> np.ndarray:
    """[steps + 1, obs_dim + 1]: observations from reset(seed=0) under ``actions``, up to
    the first episode end, each with the reward that led to it (0 at the start)."""
    env = family.make_env(values)
    obs, _ = env.reset(seed=0)
    traj = [np.append(obs, 0.0)]
    for a in actions:
        obs, reward, term, trunc, _ = env.step(a)
        traj.append(np.append(obs, reward))
        if term or trunc:
            break
    env.close()
    return np.asarray(traj, dtype=np.float64)


def _differ(a: np.ndarray, b: np.ndarray) -> float:
    """Largest observation difference over the common prefix (inf if the lengths differ)."""
    if len(a) != len(b):
        return float("inf")
    return float(np.abs(a - b).max())


def test_every_family_has_cases():
    names = list_families()
    assert {"cartpole-mass", "cartpole-mass-length", "cartpole-actuator", "pendulum-mass-length",
            "acrobot-links", "pendulum-actuator", "acrobot-actuator"} <= set(names)
    assert len(CASES) >= sum(load_family(n).num_params for n in names)


@pytest.mark.parametrize(("family_name", "param"), CASES, ids=[f"{f}:{p}" for f, p in CASES])
def test_parameter_changes_gymnasium_trajectory(family_name, param):
    family = load_family(family_name)
    lo, hi = _low_high(family, param)
    env = family.make_env(lo)
    if family.spec(param).mujoco is None:  # a model quantity: tests/test_mujoco.py checks the model
        assert getattr(env.unwrapped, param) == pytest.approx(float(lo[family.param_names.index(param)]))
    actions = _actions(env.action_space)
    env.close()
    a, b = _gym_rollout(family, lo, actions), _gym_rollout(family, hi, actions)
    np.testing.assert_array_equal(a[0], b[0])  # same start: the seed, not the parameter, draws it
    assert _differ(a, b) > MIN_CHANGE, (
        f"{family_name}: {param} {lo.tolist()} vs {hi.tolist()} left the run unchanged"
    )


BATCHED = [(f, p) for f, p in CASES if load_family(f).batched is not None]


def _pair_sim(family, first: torch.Tensor, second: torch.Tensor):
    """The family's batched simulator with two envs, at values ``first`` and ``second`` [P]."""
    sim = make_vec_env(family, 2, dtype=F64, seed=0)
    sim.reset(params=torch.stack([first, second]))
    return sim


def _same_start(sim) -> torch.Tensor:
    """Give env 1 env 0's state; returns their observation [2, obs_dim]."""
    if isinstance(sim, BatchedSim):
        sim.state[1] = sim.state[0]
        return sim.observe(sim.state).clone()
    sim.batch.state[1] = sim.batch.state[0]  # MuJoCo: the whole integration state
    return sim.observation()


@pytest.mark.parametrize(("family_name", "param"), BATCHED, ids=[f"{f}:{p}" for f, p in BATCHED])
def test_parameter_changes_batched_trajectory(family_name, param):
    family = load_family(family_name)
    lo, hi = _low_high(family, param)
    sim = _pair_sim(family, lo, hi)
    start = _same_start(sim)  # one initial state for both
    actions = _actions(sim.single_action_space)
    obs = [torch.cat([start, torch.zeros(2, 1, dtype=start.dtype)], 1)]
    for a in actions:
        if isinstance(sim.single_action_space, gym.spaces.Discrete):
            act = torch.tensor([a, a])
        else:
            act = torch.as_tensor(np.stack([a, a]), dtype=F64)
        out = sim.step(act)
        obs.append(torch.cat([out.final_obs, out.reward.unsqueeze(1)], 1))
        if bool((out.terminated | out.truncated).any()):
            if not bool(out.terminated[0] == out.terminated[1]):
                return  # one fell and the other did not: changed
            break
    traj = torch.stack(obs).numpy()
    change = float(np.abs(traj[:, 0] - traj[:, 1]).max())
    assert change > MIN_CHANGE, f"batched {family_name}: {param} left the run unchanged"


# ------------------------------------------------------------------------------------------
# A signed parameter is a motor's sign: flipping it reverses the response to the same action.
# CartPole, Pendulum and Acrobot are odd-symmetric about the state 0 (gravity enters through
# sin, the rest is even or odd accordingly), so from the mirrored state the same action
# under the opposite sign leads to the mirrored next state, with the same reward.
# ------------------------------------------------------------------------------------------
SIGNED = [(f, p) for f, p in CASES if load_family(f).spec(p).signed and load_family(f).spec(p).mujoco is None]
MIRROR_TOL = 1e-9  # one step: sin/cos of -x vs x and angle_normalize round differently in the last bits


def _signed_values(family, param: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The family's first interpolation point with ``param`` positive, then negative."""
    j = family.param_names.index(param)
    pos = family.heldout_values("interpolation")[0].clone()
    pos[j] = abs(float(pos[j]))
    neg = pos.clone()
    neg[j] = -pos[j]
    return pos, neg


def test_every_signed_family_is_checked():
    assert {f for f, _ in SIGNED} >= {"cartpole-actuator", "pendulum-actuator", "acrobot-actuator"}


@pytest.mark.parametrize(("family_name", "param"), SIGNED, ids=[f"{f}:{p}" for f, p in SIGNED])
def test_sign_flip_mirrors_the_gymnasium_step(family_name, param):
    family = load_family(family_name)
    pos, neg = _signed_values(family, param)
    envs = [family.make_env(pos), family.make_env(neg)]
    for e in envs:
        e.reset(seed=0)
    actions = _actions(envs[0].action_space, seed=1)
    state = np.asarray(envs[0].unwrapped.state, dtype=np.float64)
    moved = 0.0
    for t, a in enumerate(actions[:20]):
        envs[0].unwrapped.state = state.copy()
        envs[1].unwrapped.state = -state
        (_, r_pos, term, trunc, _), (_, r_neg, *_) = envs[0].step(a), envs[1].step(a)
        nxt = [np.asarray(e.unwrapped.state, dtype=np.float64) for e in envs]
        np.testing.assert_allclose(nxt[1], -nxt[0], rtol=0, atol=MIRROR_TOL, err_msg=f"step {t}")
        assert r_neg == pytest.approx(r_pos, abs=MIRROR_TOL), f"step {t}"
        moved = max(moved, float(np.abs(nxt[0] - nxt[1]).max()))
        if term or trunc:
            break
        state = nxt[0]
    assert moved > MIN_CHANGE  # the states did move apart: the mirror is not the trivial state 0
    for e in envs:
        e.close()


@pytest.mark.parametrize(("family_name", "param"), SIGNED, ids=[f"{f}:{p}" for f, p in SIGNED])
def test_sign_flip_mirrors_the_batched_step(family_name, param):
    family = load_family(family_name)
    pos, neg = _signed_values(family, param)
    sim = _pair_sim(family, pos, neg)
    state = sim.state[0].clone()
    discrete = isinstance(sim.single_action_space, gym.spaces.Discrete)
    for t, a in enumerate(_actions(sim.single_action_space, seed=1)[:20]):
        sim.state = torch.stack([state, -state])
        act = torch.tensor([a, a]) if discrete else torch.as_tensor(np.stack([a, a]), dtype=F64)
        out = sim.step(act)
        if bool((out.terminated | out.truncated).any()):
            break
        torch.testing.assert_close(sim.state[1], -sim.state[0], rtol=0, atol=MIRROR_TOL, msg=f"step {t}")
        torch.testing.assert_close(out.reward[1], out.reward[0], rtol=0, atol=MIRROR_TOL)
        state = sim.state[0].clone()
    assert t >= 5 and float(state.abs().max()) > MIN_CHANGE


# ------------------------------------------------------------------------------------------
# Why families declare `derived`: CartPoleEnv caches total_mass and polemass_length.
# ------------------------------------------------------------------------------------------
def test_cartpole_masspole_updates_derived_where_naive_setattr_does_not():
    family = load_family("cartpole-mass")
    assert set(family.derived) == {"total_mass", "polemass_length"}
    env = family.make_env({"masspole": 0.5})
    u = env.unwrapped
    assert u.masspole == 0.5
    assert u.total_mass == pytest.approx(u.masscart + 0.5)
    assert u.polemass_length == pytest.approx(0.5 * u.length)

    # The CARL / RLlib CartPoleMassEnv bug: setting the attribute alone leaves both stale.
    naive = gym.make("CartPole-v1")
    naive.unwrapped.masspole = 0.5
    assert naive.unwrapped.total_mass == pytest.approx(1.1)  # still 1.0 + 0.1
    assert naive.unwrapped.polemass_length == pytest.approx(0.05)  # still 0.1 * 0.5

    # ... and it matters: the same start and pushes give another trajectory, and the
    # batched sim (which recomputes both every step) follows the correct one.
    actions = [0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 0, 1]
    sim = make_vec_env(family, 1, dtype=F64)
    sim.reset(params=torch.tensor([[0.5]], dtype=F64))
    runs = {}
    for name, e in (("applied", env), ("naive", naive)):
        e.reset(seed=0)
        runs[name] = [e.step(a)[0] for a in actions]
    sim.state[0] = torch.as_tensor(_start_state(), dtype=F64)  # reset(seed=0)'s start
    batched = [sim.step(torch.tensor([a])).final_obs[0].numpy() for a in actions]
    np.testing.assert_allclose(np.asarray(batched), np.asarray(runs["applied"]), atol=1e-5, rtol=0)
    assert np.abs(np.asarray(runs["naive"]) - np.asarray(runs["applied"])).max() > 1e-3


def _start_state() -> np.ndarray:
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    state = np.array(env.unwrapped.state, dtype=np.float64)
    env.close()
    return state


CARTPOLE_FAMILIES = [n for n in list_families() if load_family(n).env_id.startswith("CartPole")]


@pytest.mark.parametrize("family_name", CARTPOLE_FAMILIES)
def test_cartpole_families_keep_derived_consistent(family_name):
    """After ``apply`` with any train values, CartPole's cached quantities match the masses."""
    family = load_family(family_name)
    gen = torch.Generator().manual_seed(0)
    env = gym.make(family.env_id)
    for values in family.sample(5, gen, dtype=F64):
        family.apply(env, values)
        u = env.unwrapped
        assert u.total_mass == pytest.approx(u.masspole + u.masscart, rel=1e-12)
        assert u.polemass_length == pytest.approx(u.masspole * u.length, rel=1e-12)
    env.close()
