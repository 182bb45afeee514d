"""The batched torch simulators reproduce Gymnasium, env by env, across autoresets.

For random parameter draws of a family, one real Gymnasium env per variant
(``family.make_env``, its own TimeLimit) and one batched sim run side by side in float64
(a balanced pole amplifies float32 rounding) from the same initial states with the same
actions. Observations, rewards, ``terminated`` and ``truncated`` must agree at every step
of several whole episodes per env, time-limit truncations included. At each autoreset the
sim's env takes its row of ``next_params``: the test gives it a new variant, applies the
same values to the Gymnasium env (``family.apply``), resets that env and copies its state
into the sim, so the next episode checks the new variant's physics too.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from hyperrl.families import load_family
from hyperrl.sim import make_vec_env
from hyperrl.sim.cartpole import BatchedCartPole
from hyperrl.sim.pendulum import BatchedPendulum

ATOL = 1e-5
F64 = torch.float64


def _copy_state(sim, i: int, env) -> None:
    sim.state[i] = torch.as_tensor(np.asarray(env.unwrapped.state, dtype=np.float64), dtype=sim.dtype)


def _cartpole_actions(obs: np.ndarray, force_sign: np.ndarray, p_random: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """Balance (push toward where the pole falls, through the motor's sign) with some
    random pushes mixed in; ``p_random`` 0 balances to the time limit, 1 is a random walk."""
    push_right = (obs[:, 2] + 0.5 * obs[:, 3] > 0) == (force_sign > 0)
    random = rng.random(len(obs)) < p_random
    return np.where(random, rng.integers(0, 2, len(obs)), push_right.astype(np.int64))


def run_side_by_side(family_name: str, n: int, steps: int, seed: int, branch_free: bool = False):
    """Step ``n`` variants of a family in the batched sim and in Gymnasium; assert they
    agree; return per-env counts of terminations and truncations."""
    family = load_family(family_name)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    values = family.sample(n, gen, dtype=F64)
    sim = make_vec_env(family, n, dtype=F64, seed=seed)
    sim.branch_free_autoreset = branch_free
    sim.reset(params=values)
    nxt = family.sample(n, gen, dtype=F64)
    sim.next_params = nxt.clone()
    current = values.clone()  # the values each Gymnasium env runs with now

    envs = [family.make_env(values[i]) for i in range(n)]
    gym_obs = np.zeros((n, sim.obs_dim))
    for i, env in enumerate(envs):
        gym_obs[i], _ = env.reset(seed=seed * 1000 + i)
        _copy_state(sim, i, env)
    np.testing.assert_allclose(sim.observe(sim.state).numpy(), gym_obs, atol=ATOL, rtol=0)

    is_cartpole = isinstance(sim, BatchedCartPole)
    force_col = family.param_names.index("force_mag") if "force_mag" in family.param_names else None
    p_random = np.array([0.0, 0.02, 0.3, 1.0])[np.arange(n) % 4]
    terminations = np.zeros(n, dtype=int)
    truncations = np.zeros(n, dtype=int)
    for t in range(steps):
        if is_cartpole:
            sign = current[:, force_col].numpy() if force_col is not None else np.ones(n)
            actions = _cartpole_actions(gym_obs, sign, p_random, rng)
            out = sim.step(torch.from_numpy(actions))
            gym_actions = [int(a) for a in actions]
        else:
            actions = rng.uniform(-3.0, 3.0, size=(n, 1))  # beyond +-max_torque: clipped
            out = sim.step(torch.from_numpy(actions))
            gym_actions = list(actions)  # float64, as the sim sees them
        elapsed = sim.elapsed.numpy()
        for i, env in enumerate(envs):
            o, r, term, trunc, _ = env.step(gym_actions[i])
            where = f"{family_name} env {i} step {t}"
            assert bool(out.terminated[i]) == term, where
            assert bool(out.truncated[i]) == trunc, where
            assert float(out.reward[i]) == pytest.approx(r, abs=ATOL), where
            np.testing.assert_allclose(out.final_obs[i].numpy(), o, atol=ATOL, rtol=0, err_msg=where)
            if not (term or trunc):
                np.testing.assert_allclose(out.obs[i].numpy(), o, atol=ATOL, rtol=0, err_msg=where)
                assert elapsed[i] == env._elapsed_steps, where
                gym_obs[i] = o
                continue
            # Autoreset: counter back to 0, params taken from next_params, a fresh start
            # in the reset range already returned as obs.
            terminations[i] += term
            truncations[i] += trunc
            assert elapsed[i] == 0, where
            assert torch.equal(sim.params[i], nxt[i]), where
            np.testing.assert_allclose(out.obs[i].numpy(), sim.observe(sim.state)[i].numpy(), atol=0)
            if is_cartpole:
                assert bool((out.obs[i].abs() <= 0.05).all()), where
            # Gymnasium: the same new variant, reset, and its start copied into the sim.
            family.apply(env, nxt[i])
            current[i] = nxt[i]
            gym_obs[i], _ = env.reset()
            _copy_state(sim, i, env)
            np.testing.assert_allclose(sim.observe(sim.state)[i].numpy(), gym_obs[i], atol=ATOL, rtol=0,
                                       err_msg=where)
            nxt[i] = family.sample(1, gen, dtype=F64)[0]
            sim.next_params[i] = nxt[i]
    for env in envs:
        env.close()
    return terminations, truncations


@pytest.mark.parametrize("family_name", ["cartpole-mass-length", "cartpole-actuator"])
def test_cartpole_matches_gymnasium(family_name):
    term, trunc = run_side_by_side(family_name, n=24, steps=1100, seed=3)
    assert trunc.sum() >= 3, "no episode reached the 500-step time limit"
    assert term.sum() >= 50, "too few terminations to exercise autoreset"
    assert ((term + trunc) >= 2).all(), "every env should run several episodes"


def test_pendulum_matches_gymnasium():
    term, trunc = run_side_by_side("pendulum-mass-length", n=24, steps=450, seed=5)
    assert term.sum() == 0  # Pendulum never terminates
    assert (trunc == 2).all()  # every episode is cut at 200 steps


@pytest.mark.parametrize("family_name", ["cartpole-actuator", "pendulum-mass-length"])
def test_branch_free_autoreset_matches_too(family_name):
    """The accelerator path (draw N starts and blend, no host sync), run on the CPU."""
    term, trunc = run_side_by_side(family_name, n=8, steps=520, seed=11, branch_free=True)
    assert (term + trunc).sum() > 0


@pytest.mark.parametrize(
    ("cls", "env_id"), [(BatchedCartPole, "CartPole-v1"), (BatchedPendulum, "Pendulum-v1")]
)
def test_spaces_and_time_limit_match_gymnasium(cls, env_id):
    sim = cls(3, ())
    env = gym.make(env_id)
    assert sim.single_observation_space == env.observation_space
    assert sim.single_action_space == env.action_space
    assert sim.max_episode_steps == cls.MAX_EPISODE_STEPS == env.spec.max_episode_steps
    env.reset(seed=0)
    assert sim.STATE_DIM == np.asarray(env.unwrapped.state).shape[0]
    assert sim.obs_dim == env.observation_space.shape[0]
    env.close()


def test_cartpole_reads_force_sign_and_action_formats():
    """force = force_mag for action 1, -force_mag for 0; a reversed motor flips the push;
    int32, bool and [N, 1] actions mean the same."""
    family = load_family("cartpole-actuator")
    sim = make_vec_env(family, 4, dtype=F64)
    sim.reset(params=torch.tensor([[10.0], [-10.0], [10.0], [-10.0]], dtype=F64))
    sim.state.zero_()
    out = sim.step(torch.tensor([1, 1, 0, 0]))
    x_dot = out.obs[:, 1]
    assert x_dot[0] > 0 and x_dot[1] < 0 and x_dot[2] < 0 and x_dot[3] > 0
    assert torch.equal(x_dot[0], -x_dot[1])
    for action in (torch.tensor([1, 1, 0, 0], dtype=torch.int32), torch.tensor([True, True, False, False]),
                   torch.tensor([[1], [1], [0], [0]])):
        sim.state.zero_()
        assert torch.equal(sim.step(action).obs, out.obs)


def test_float32_default_and_device_consistency():
    """Default dtype float32 runs, keeps its dtype and device, and stays close to float64."""
    family = load_family("cartpole-mass")
    gen = torch.Generator().manual_seed(0)
    values = family.sample(16, gen)
    sims = {}
    for dtype in (torch.float32, F64):
        sim = make_vec_env(family, 16, dtype=dtype, seed=1)
        sim.reset(params=values)
        sims[dtype] = sim
    sims[torch.float32].state = sims[F64].state.float()
    actions = (torch.arange(30)[:, None] + torch.arange(16)) % 2  # wiggles, rarely falls
    live = torch.ones(16, dtype=torch.bool)  # envs not yet reset (the two draw different starts)
    for a in actions:
        o32, o64 = sims[torch.float32].step(a), sims[F64].step(a)
        assert o32.obs.dtype == o32.final_obs.dtype == o32.reward.dtype == torch.float32
        assert o32.terminated.dtype == o32.truncated.dtype == torch.bool
        live &= ~(o64.terminated | o64.truncated | o32.terminated | o32.truncated)
        torch.testing.assert_close(o32.final_obs[live].double(), o64.final_obs[live], atol=1e-4, rtol=0)
    assert live.sum() >= 8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("family_name", ["cartpole-actuator", "pendulum-mass-length"])
def test_cuda_matches_cpu(family_name):
    family = load_family(family_name)
    gen = torch.Generator().manual_seed(0)
    values = family.sample(64, gen, dtype=F64)
    cpu = make_vec_env(family, 64, dtype=F64, seed=0)
    gpu = make_vec_env(family, 64, device="cuda", dtype=F64, seed=0)
    cpu.reset(params=values)
    gpu.reset(params=values)
    gpu.state = cpu.state.cuda()
    for _ in range(30):
        if isinstance(cpu, BatchedCartPole):
            a = torch.randint(0, 2, (64,), generator=gen)
        else:
            a = torch.rand(64, 1, generator=gen, dtype=F64) * 4 - 2
        oc, og = cpu.step(a), gpu.step(a.cuda())
        assert torch.equal(oc.terminated, og.terminated.cpu())
        torch.testing.assert_close(og.final_obs.cpu(), oc.final_obs, atol=1e-9, rtol=0)
        torch.testing.assert_close(og.reward.cpu(), oc.reward, atol=1e-9, rtol=0)
        gpu.state = cpu.state.cuda()  # resets draw from different generators


def _gym_with(env_id: str, name: str, value: float):
    env = gym.make(env_id)
    u = env.unwrapped
    setattr(u, name, value)
    if env_id.startswith("CartPole"):  # what a family's `derived` does
        u.total_mass = u.masspole + u.masscart
        u.polemass_length = u.masspole * u.length
    return env


# (attribute, two values) for every attribute each sim can vary; values chosen so each
# one matters within the run (a low max_speed binds, a low max_torque clips).
_ATTRS = [
    (BatchedCartPole, "CartPole-v1", "gravity", (6.0, 14.0)),
    (BatchedCartPole, "CartPole-v1", "masscart", (0.5, 2.0)),
    (BatchedCartPole, "CartPole-v1", "masspole", (0.05, 0.6)),
    (BatchedCartPole, "CartPole-v1", "length", (0.3, 0.9)),
    (BatchedCartPole, "CartPole-v1", "force_mag", (-7.0, 13.0)),
    (BatchedCartPole, "CartPole-v1", "tau", (0.01, 0.03)),
    (BatchedPendulum, "Pendulum-v1", "g", (4.0, 12.0)),
    (BatchedPendulum, "Pendulum-v1", "m", (0.4, 1.7)),
    (BatchedPendulum, "Pendulum-v1", "l", (0.4, 1.7)),
    (BatchedPendulum, "Pendulum-v1", "max_torque", (0.5, 2.5)),
    (BatchedPendulum, "Pendulum-v1", "max_speed", (1.0, 3.0)),
    (BatchedPendulum, "Pendulum-v1", "dt", (0.02, 0.07)),
]


@pytest.mark.parametrize(("cls", "env_id", "name", "vals"), _ATTRS, ids=[a[2] for a in _ATTRS])
def test_every_supported_attribute_matches_gymnasium(cls, env_id, name, vals):
    n = len(vals)
    sim = cls(n, (name,), dtype=F64, seed=0)
    sim.reset(params=torch.tensor(vals, dtype=F64).reshape(n, 1))
    envs = [_gym_with(env_id, name, v) for v in vals]
    for i, env in enumerate(envs):
        env.reset(seed=i)
        _copy_state(sim, i, env)
    rng = np.random.default_rng(0)
    for t in range(120):
        if cls is BatchedCartPole:
            a = rng.integers(0, 2, n)
            gym_a = [int(x) for x in a]
        else:
            a = rng.uniform(-3.0, 3.0, (n, 1))
            gym_a = list(a)
        out = sim.step(torch.from_numpy(a))
        for i, env in enumerate(envs):
            o, r, term, trunc, _ = env.step(gym_a[i])
            where = f"{name} step {t}"
            np.testing.assert_allclose(out.final_obs[i].numpy(), o, atol=ATOL, rtol=0, err_msg=where)
            assert float(out.reward[i]) == pytest.approx(r, abs=ATOL)
            assert (bool(out.terminated[i]), bool(out.truncated[i])) == (term, trunc)
            if term or trunc:
                env.reset()
                _copy_state(sim, i, env)


def test_unknown_attribute_is_refused():
    from hyperrl.errors import FamilyError

    with pytest.raises(FamilyError, match="cannot vary 'total_mass'"):
        BatchedCartPole(2, ("total_mass",))
    with pytest.raises(FamilyError, match="cannot vary 'LINK_MASS_1'"):
        BatchedPendulum(2, ("LINK_MASS_1",))
