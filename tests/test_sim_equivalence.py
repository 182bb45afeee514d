"""The batched torch simulators reproduce Gymnasium's physics, one step at a time.

For random parameter draws of every family with a batched simulator, one real Gymnasium env
per variant (``family.make_env``, its own TimeLimit) and one batched sim run side by side in
float64. Before every step the sim's state is re-synced from the Gymnasium envs, so each
step compares one transition from the very same state and action: the next state (as the
sim's observation of it), the reward, ``terminated`` and ``truncated``, tightly (``TOL``, far
below the physics' own scale), across whole episodes, time-limit truncations and autoresets.

Why one step at a time: the sim computes ``sin``/``cos`` with torch, Gymnasium with Python's
``math``; the two may differ in the last bit on another CPU or math library. Near CartPole's
or Pendulum's unstable equilibrium such a difference grows ~e^(0.09 t) per step, so an
open-loop comparison over hundreds of steps would pass or fail on rounding, not on physics.
From a shared state, one step differs by ~1e-16, and a wrong mass, sign or order of update
by ~1e-3 or more. Half of the envs of every run (every second group of four, so each
action policy is among them) are "nudged": the sim's state moves by one ulp (``np.nextafter``)
at random steps, and they must pass too: a test that survives that cannot hang on another
machine's rounding. A termination decided differently is accepted only when the state lies
within ``TOL`` of a termination threshold (the one place where one ulp legitimately decides).
Besides the observation, the sim's next state itself is compared (Acrobot observes its angles
only through cos/sin; its angles are compared modulo 2 pi, since one ulp can decide on which
side of +-pi ``wrap`` puts an angle, and the wrap itself is checked bit for bit separately).

At each autoreset the sim's env takes its row of ``next_params``: the test gives it a new
variant, applies the same values to the Gymnasium env (``family.apply``) and resets it, so
the next episode checks the new variant's physics too.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from hyperrl.families import list_families, load_family
from hyperrl.sim import BATCHED_SIMS, make_vec_env
from hyperrl.errors import FamilyError
from hyperrl.sim.acrobot import BatchedAcrobot
from hyperrl.sim.base import BatchedSim
from hyperrl.sim.cartpole import BatchedCartPole
from hyperrl.sim.pendulum import BatchedPendulum

F64 = torch.float64
TOL = 1e-10  # one float64 step from a shared state: rounding differences are ~1e-16
OBS32 = dict(rtol=1e-6, atol=1e-7)  # Gymnasium's float32 observation of a float64 state
# the torch simulators (the batched MuJoCo backend: tests/test_mujoco.py)
BATCHED_FAMILIES = [f for f in list_families() if load_family(f).batched in BATCHED_SIMS]


def gym_states(envs) -> np.ndarray:
    """[N, STATE_DIM] float64: every Gymnasium env's exact internal state."""
    return np.stack([np.asarray(e.unwrapped.state, dtype=np.float64) for e in envs])


def nudge_one_ulp(state: torch.Tensor, rows: np.ndarray, rng: np.random.Generator) -> None:
    """Move one random coordinate of each of ``rows`` by one ulp, up or down (in place)."""
    for i in rows:
        j = int(rng.integers(state.shape[1]))
        x = float(state[i, j])
        state[i, j] = float(np.nextafter(x, np.inf if rng.random() < 0.5 else -np.inf))
        assert float(state[i, j]) != x


def threshold_margin(sim: BatchedSim, state: np.ndarray) -> np.ndarray:
    """[N] distance of each state to the nearest termination threshold (inf: none)."""
    if isinstance(sim, BatchedCartPole):
        return np.minimum(np.abs(np.abs(state[:, 0]) - sim.x_threshold),
                          np.abs(np.abs(state[:, 2]) - sim.theta_threshold_radians))
    if isinstance(sim, BatchedAcrobot):  # -cos(t1) - cos(t2 + t1) > 1.0
        return np.abs(-np.cos(state[:, 0]) - np.cos(state[:, 1] + state[:, 0]) - 1.0)
    return np.full(len(state), np.inf)


def state_difference(sim: BatchedSim, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, S] |a - b|, Acrobot's angles modulo 2 pi (the angle ``wrap`` puts at -pi + e
    is the one Gymnasium leaves at pi + e)."""
    d = np.abs(a - b)
    if isinstance(sim, BatchedAcrobot):
        d[:, :2] = np.abs(np.remainder(a[:, :2] - b[:, :2] + np.pi, 2 * np.pi) - np.pi)
    return d


def cartpole_actions(obs: np.ndarray, force_sign: np.ndarray, p_random: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """Balance (push toward where the pole falls, through the motor's sign) with some
    random pushes mixed in; ``p_random`` 0 balances to the time limit, 1 is a random walk."""
    push_right = (obs[:, 2] + 0.5 * obs[:, 3] > 0) == (force_sign > 0)
    random = rng.random(len(obs)) < p_random
    return np.where(random, rng.integers(0, 2, len(obs)), push_right.astype(np.int64))


def acrobot_actions(obs: np.ndarray, p_random: np.ndarray, rng: np.random.Generator,
                    torque_sign: np.ndarray | None = None) -> np.ndarray:
    """Pump energy (torque +1 while the second link swings one way, -1 the other, through the
    motor's sign: reaches the goal height in ~100 steps at the default links) with some
    random torques mixed in; ``p_random`` 0 terminates episodes quickly, 1 mostly runs into
    the 500-step limit."""
    forward = obs[:, 5] > 0
    pump = np.where(forward if torque_sign is None else forward == (torque_sign > 0), 2, 0)
    random = rng.random(len(obs)) < p_random
    return np.where(random, rng.integers(0, 3, len(obs)), pump)


def assert_close(actual: np.ndarray, desired: np.ndarray, rtol: float, atol: float, err_msg: str) -> None:
    """``np.testing.assert_allclose``, which is called (for its verdict and message) only when
    a plain check fails: it costs ~20x the check, and these run on every step."""
    if not (np.abs(actual - desired) <= atol + rtol * np.abs(desired)).all():
        np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol, err_msg=err_msg)


def step_side_by_side(sim: BatchedSim, envs: list, actions: np.ndarray, nudge_rows: np.ndarray,
                      rng: np.random.Generator, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-sync the sim from ``envs``, nudge ``nudge_rows``, step both with ``actions``
    ([N] ints or [N, A] floats) and assert the one-step transitions agree.

    Returns Gymnasium's (float32 obs [N, D], terminated [N], truncated [N])."""
    sim.state = torch.from_numpy(gym_states(envs)).to(sim.dtype)
    nudge_one_ulp(sim.state, nudge_rows, rng)
    out = sim.step(torch.from_numpy(actions))
    results = [env.step(int(a) if actions.ndim == 1 else a) for env, a in zip(envs, actions)]
    obs = np.stack([np.asarray(r[0], dtype=np.float32) for r in results])
    reward = np.array([float(r[1]) for r in results])
    term = np.array([bool(r[2]) for r in results])
    trunc = np.array([bool(r[3]) for r in results])
    nxt = gym_states(envs)  # the state each env reached, before any reset

    # next state (through the sim's observation function, which is tested against Gymnasium's
    # float32 observation just below, and itself where the sim did not reset) and reward: tight
    expected = sim.observe(torch.from_numpy(nxt).to(sim.dtype)).numpy()
    assert_close(out.final_obs.numpy(), expected, rtol=TOL, atol=TOL, err_msg=where)
    kept = ~(out.terminated | out.truncated).numpy()
    diff = state_difference(sim, sim.state.numpy()[kept], nxt[kept])
    assert (diff <= TOL * np.maximum(1.0, np.abs(nxt[kept]))).all(), f"{where}: state differs by {diff.max()}"
    assert_close(expected, obs, **OBS32, err_msg=f"{where}: observation function")
    assert_close(out.reward.numpy(), reward, rtol=TOL, atol=TOL, err_msg=where)
    assert np.array_equal(out.truncated.numpy(), trunc), where
    differs = out.terminated.numpy() != term
    assert (threshold_margin(sim, nxt)[differs] <= TOL).all(), f"{where}: terminated differs for {np.where(differs)[0]}"
    return obs, term, trunc


def run_side_by_side(family_name: str, n: int, steps: int, seed: int,
                     branch_free: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Step ``n`` random variants of a family in the batched sim and in Gymnasium, one
    re-synced step at a time, the nudged half of them moved by one ulp at 3 random steps
    each; assert they agree; return per-env counts of terminations and truncations."""
    family = load_family(family_name)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    values = family.sample(n, gen, dtype=F64)
    sim = make_vec_env(family, n, dtype=F64, seed=seed)
    assert isinstance(sim, BatchedSim)
    sim.branch_free_autoreset = branch_free
    if branch_free and isinstance(sim, BatchedCartPole):
        sim.numpy_step = False  # the accelerator path: the physics in torch too
    sim.reset(params=values)
    nxt = family.sample(n, gen, dtype=F64)
    sim.next_params = nxt.clone()
    current = values.clone()  # the values each Gymnasium env runs with now

    envs = [family.make_env(values[i]) for i in range(n)]
    obs = np.stack([env.reset(seed=seed * 1000 + i)[0] for i, env in enumerate(envs)])
    is_cartpole = isinstance(sim, BatchedCartPole)
    is_acrobot = isinstance(sim, BatchedAcrobot)
    if is_acrobot:
        sim.wrap_checked = not branch_free  # the accelerator path wraps without a host sync
    # the motor's sign (CartPole's force_mag, Pendulum's and Acrobot's torque_gain): the
    # balancing and pumping policies push through it
    sign_col = next((j for j, p in enumerate(family.params) if p.signed), None)
    p_random = np.array([0.0, 0.02, 0.3, 1.0])[np.arange(n) % 4]
    nudged = (np.arange(n) // 4) % 2 == 1  # rows 4-7, 12-15, ...: every p_random level
    nudge_at = np.where(nudged, rng.integers(0, steps, size=(3, n)), -1)
    terminations = np.zeros(n, dtype=int)
    truncations = np.zeros(n, dtype=int)
    for t in range(steps):
        where = f"{family_name} step {t}"
        sign = current[:, sign_col].numpy() if sign_col is not None else np.ones(n)
        if is_cartpole:
            actions = cartpole_actions(obs, sign, p_random, rng)
        elif is_acrobot:
            actions = acrobot_actions(obs, p_random, rng, sign)
        else:
            actions = rng.uniform(-3.0, 3.0, size=(n, 1))  # beyond +-max_torque: clipped
        assert torch.equal(sim.params, current), where
        obs, term, trunc = step_side_by_side(sim, envs, actions, np.flatnonzero((nudge_at == t).any(0)), rng, where)
        out_obs = sim.observe(sim.state).numpy()
        elapsed = sim.elapsed.numpy()
        sim_reset = elapsed == 0  # after a step the counter is 0 only where the sim autoreset
        ended = term | trunc | sim_reset  # they differ only within TOL of a threshold (checked)
        live = np.flatnonzero(~ended)
        assert (elapsed[live] == np.array([envs[i]._elapsed_steps for i in live])).all(), where
        for i in np.flatnonzero(ended):
            terminations[i] += term[i]
            truncations[i] += trunc[i]
            if sim_reset[i]:
                # Autoreset: params taken from next_params, a fresh start in the reset range
                # already returned as obs.
                assert torch.equal(sim.params[i], nxt[i]), where
                if is_cartpole:
                    assert bool((np.abs(out_obs[i]) <= 0.05).all()), where
                if is_acrobot:
                    assert bool((sim.state[i].abs() <= 0.1).all()), where
            else:  # Gymnasium ended on a threshold the sim missed by an ulp: restart both
                sim.params[i], sim.elapsed[i] = nxt[i], 0
            # Gymnasium: the same new variant, reset; the next step re-syncs the sim from it.
            family.apply(envs[i], nxt[i])
            current[i] = nxt[i]
            obs[i] = envs[i].reset()[0]
            nxt[i] = family.sample(1, gen, dtype=F64)[0]
            sim.next_params[i] = nxt[i]
    for env in envs:
        env.close()
    return terminations, truncations


def _episodes_ok(family_name: str, term: np.ndarray, trunc: np.ndarray) -> None:
    if family_name.startswith("pendulum"):
        assert term.sum() == 0 and (trunc >= 2).all()  # never terminates; cut at 200 steps
    else:
        assert trunc.sum() >= 2, "no episode reached the 500-step time limit"
        assert term.sum() >= 30, "too few terminations to exercise autoreset"
        assert ((term + trunc) >= 2).all(), "every env should run several episodes"


@pytest.mark.parametrize("family_name", BATCHED_FAMILIES)
def test_batched_sim_matches_gymnasium_step_by_step(family_name):
    steps = 450 if family_name.startswith("pendulum") else 1050
    term, trunc = run_side_by_side(family_name, n=16, steps=steps, seed=3)
    _episodes_ok(family_name, term, trunc)


@pytest.mark.parametrize("family_name", ["cartpole-actuator", "pendulum-mass-length", "acrobot-links",
                                         "pendulum-actuator", "acrobot-actuator"])
def test_branch_free_autoreset_matches_too(family_name):
    """The accelerator path (draw N starts and blend, no host sync; Acrobot's wrap without a
    host check; CartPole's physics in torch, not NumPy), run on the CPU."""
    term, trunc = run_side_by_side(family_name, n=8, steps=520, seed=11, branch_free=True)
    assert (term + trunc).sum() > 0


@pytest.mark.parametrize(("cls", "env_id", "name", "value"), [
    (BatchedCartPole, "CartPole-v1", "gravity", 9.8 * 1.001),
    (BatchedCartPole, "CartPole-v1", "masspole", 0.1 * 1.001),
    (BatchedAcrobot, "Acrobot-v1", "LINK_MASS_2", 1.001),
    (BatchedAcrobot, "Acrobot-v1", "LINK_MOI", 1.001),
    (BatchedAcrobot, "Acrobot-v1", "dt", 0.2 * 1.001),
    (BatchedPendulum, "hyperrl/PendulumActuator-v1", "torque_gain", 1.001),
    (BatchedPendulum, "hyperrl/PendulumActuator-v1", "torque_gain", -1.0),
    (BatchedAcrobot, "hyperrl/AcrobotActuator-v1", "torque_gain", 1.001),
    (BatchedAcrobot, "hyperrl/AcrobotActuator-v1", "torque_gain", -1.0),
], ids=lambda v: v if isinstance(v, str) else None)
def test_a_small_physics_error_is_caught(cls, env_id, name, value):
    """The tolerance sees a small physics error in one step: a sim with one attribute 0.1 %
    off (CartPole's gravity or pole mass, Acrobot's second link, inertia or time step, the
    motor's gain) or a reversed motor fails the step-by-step comparison from Gymnasium's
    first states."""
    sim = cls(4, (), dtype=F64, constants={name: value}, seed=0)
    sim.reset()
    envs = [gym.make(env_id) for _ in range(4)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    if isinstance(sim.single_action_space, gym.spaces.Discrete):
        actions = np.array([0, 1, 2, 0]) % sim.single_action_space.n  # Acrobot: 1 is no torque
    else:
        actions = np.array([[1.0], [-2.0], [0.5], [1.5]])
    with pytest.raises(AssertionError):
        step_side_by_side(sim, envs, actions, np.array([], dtype=int),
                          np.random.default_rng(0), f"wrong {name}")


@pytest.mark.parametrize(
    ("cls", "env_id"),
    [(BatchedCartPole, "CartPole-v1"), (BatchedPendulum, "Pendulum-v1"), (BatchedAcrobot, "Acrobot-v1"),
     (BatchedPendulum, "hyperrl/PendulumActuator-v1"), (BatchedAcrobot, "hyperrl/AcrobotActuator-v1")],
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


@pytest.mark.parametrize("family_name", ["cartpole-mass", "acrobot-links"])
def test_float32_default_and_device_consistency(family_name):
    """Default dtype float32 runs, keeps its dtype and device, and one step from the same
    state stays within float32 rounding of float64 (re-synced every step)."""
    family = load_family(family_name)
    gen = torch.Generator().manual_seed(0)
    values = family.sample(16, gen)
    sims = {}
    for dtype in (torch.float32, F64):
        sim = make_vec_env(family, 16, dtype=dtype, seed=1)
        sim.reset(params=values)
        sims[dtype] = sim
    actions = (torch.arange(30)[:, None] + torch.arange(16)) % 2  # wiggles, rarely falls
    live = torch.ones(16, dtype=torch.bool)  # envs not yet reset (the two draw different starts)
    for a in actions:
        sims[torch.float32].state = sims[F64].state.float()
        o32, o64 = sims[torch.float32].step(a), sims[F64].step(a)
        assert o32.obs.dtype == o32.final_obs.dtype == o32.reward.dtype == torch.float32
        assert o32.terminated.dtype == o32.truncated.dtype == torch.bool
        live &= ~(o64.terminated | o64.truncated | o32.terminated | o32.truncated)
        torch.testing.assert_close(o32.final_obs[live].double(), o64.final_obs[live], atol=1e-5, rtol=1e-5)
    assert live.sum() >= 8


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_cartpole_numpy_and_torch_steps_agree(dtype):
    """CartPole's physics runs in NumPy on the CPU and in torch elsewhere (one implementation,
    two array libraries): one step from the same states, values and actions agrees to the
    rounding of sin/cos (the two libraries may differ in their last bit)."""
    n = 4096
    gen = torch.Generator().manual_seed(0)
    sim = BatchedCartPole(n, ("masspole", "force_mag", "tau"), dtype=dtype, seed=0)
    params = torch.stack([torch.rand(n, generator=gen, dtype=dtype) * 0.5 + 0.05,
                          torch.rand(n, generator=gen, dtype=dtype) * 20 - 10,
                          torch.rand(n, generator=gen, dtype=dtype) * 0.02 + 0.01], 1)
    state = (torch.rand(n, 4, generator=gen, dtype=dtype) - 0.5) * torch.tensor([5.0, 4.0, 0.45, 4.0], dtype=dtype)
    action = torch.randint(0, 2, (n,), generator=gen)
    sim.numpy_step = True
    new_np, reward_np, term_np = sim.dynamics(state, action, params)
    sim.numpy_step = False
    new_t, reward_t, term_t = sim.dynamics(state, action, params)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(new_np, new_t, rtol=8 * eps, atol=8 * eps)
    assert new_np.dtype == new_t.dtype == dtype and torch.equal(reward_np, reward_t)
    margin = torch.from_numpy(threshold_margin(sim, new_t.double().numpy()))
    far = margin > 1e-4  # a termination within rounding of a threshold may go either way
    assert far.sum() > n // 2 and term_t[far].any() and torch.equal(term_np[far], term_t[far])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("family_name", ["cartpole-actuator", "pendulum-mass-length", "acrobot-links",
                                         "pendulum-actuator", "acrobot-actuator"])
def test_cuda_matches_cpu(family_name):
    """One re-synced step at a time (CUDA's sin/cos round differently from the CPU's)."""
    family = load_family(family_name)
    gen = torch.Generator().manual_seed(0)
    values = family.sample(64, gen, dtype=F64)
    cpu = make_vec_env(family, 64, dtype=F64, seed=0)
    gpu = make_vec_env(family, 64, device="cuda", dtype=F64, seed=0)
    cpu.reset(params=values)
    gpu.reset(params=values)
    for _ in range(30):
        gpu.state = cpu.state.cuda()  # resets draw from different generators
        if isinstance(cpu, (BatchedCartPole, BatchedAcrobot)):
            a = torch.randint(0, cpu.single_action_space.n, (64,), generator=gen)
        else:
            a = torch.rand(64, 1, generator=gen, dtype=F64) * 4 - 2
        oc, og = cpu.step(a), gpu.step(a.cuda())
        differs = (oc.terminated != og.terminated.cpu()).numpy()
        assert (threshold_margin(cpu, oc.final_obs.numpy())[differs] <= TOL).all()
        torch.testing.assert_close(og.final_obs.cpu(), oc.final_obs, atol=TOL, rtol=TOL)
        torch.testing.assert_close(og.reward.cpu(), oc.reward, atol=TOL, rtol=TOL)


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
    (BatchedPendulum, "hyperrl/PendulumActuator-v1", "torque_gain", (-0.7, 1.6)),
    # Acrobot under the pumping policy: swings reach the velocity bounds and the goal height
    (BatchedAcrobot, "Acrobot-v1", "LINK_LENGTH_1", (0.5, 1.5)),
    (BatchedAcrobot, "Acrobot-v1", "LINK_MASS_1", (0.5, 2.0)),
    (BatchedAcrobot, "Acrobot-v1", "LINK_MASS_2", (0.5, 2.0)),
    (BatchedAcrobot, "Acrobot-v1", "LINK_COM_POS_1", (0.25, 0.8)),
    (BatchedAcrobot, "Acrobot-v1", "LINK_COM_POS_2", (0.25, 0.8)),
    (BatchedAcrobot, "Acrobot-v1", "LINK_MOI", (0.5, 2.0)),
    (BatchedAcrobot, "Acrobot-v1", "MAX_VEL_1", (1.5, 6.0)),
    (BatchedAcrobot, "Acrobot-v1", "MAX_VEL_2", (3.0, 12.0)),
    (BatchedAcrobot, "Acrobot-v1", "dt", (0.1, 0.3)),
    (BatchedAcrobot, "hyperrl/AcrobotActuator-v1", "torque_gain", (-1.3, 0.6)),
]


@pytest.mark.parametrize(("cls", "env_id", "name", "vals"), _ATTRS,
                         ids=[f"{a[1].split('/')[-1][:-3]}:{a[2]}" for a in _ATTRS])
def test_every_supported_attribute_matches_gymnasium(cls, env_id, name, vals):
    """Two values of each attribute, the second env nudged by one ulp at 10 random steps."""
    n = len(vals)
    sim = cls(n, (name,), dtype=F64, seed=0)
    sim.reset(params=torch.tensor(vals, dtype=F64).reshape(n, 1))
    envs = [_gym_with(env_id, name, v) for v in vals]
    obs = np.stack([env.reset(seed=i)[0] for i, env in enumerate(envs)])
    rng = np.random.default_rng(0)
    nudge_at = set(rng.integers(0, 120, size=10).tolist())
    for t in range(120):
        if cls is BatchedCartPole:
            a = rng.integers(0, 2, n)
        elif cls is BatchedAcrobot:
            a = acrobot_actions(obs, np.full(n, 0.1), rng)
        else:
            a = rng.uniform(-3.0, 3.0, (n, 1))
        rows = np.array([n - 1] if t in nudge_at else [], dtype=int)
        obs, term, trunc = step_side_by_side(sim, envs, a, rows, rng, f"{name} step {t}")
        for i in np.flatnonzero(term | trunc):
            obs[i] = envs[i].reset()[0]  # the sim autoreset with the same values; re-synced next step


def test_pendulum_torque_gain_with_float32_actions_matches_gymnasium():
    """A float32 policy: Gymnasium's PendulumActuatorEnv computes ``torque_gain * u`` in float32
    (a python float times np.float32, NumPy 2's promotion) and the float64 sim rounds the same
    way (a float64 product would differ by ~1e-9 per step, far above TOL)."""
    vals = (-0.7, 1.3, 0.35, -1.45)
    n = len(vals)
    sim = BatchedPendulum(n, ("torque_gain",), dtype=F64, seed=0)
    sim.reset(params=torch.tensor(vals, dtype=F64).reshape(n, 1))
    envs = [_gym_with("hyperrl/PendulumActuator-v1", "torque_gain", v) for v in vals]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    rng = np.random.default_rng(0)
    for t in range(60):
        a = rng.uniform(-3.0, 3.0, (n, 1)).astype(np.float32)
        step_side_by_side(sim, envs, a, np.array([], dtype=int), rng, f"float32 torque_gain step {t}")


def test_unknown_attribute_is_refused():
    with pytest.raises(FamilyError, match="cannot vary 'total_mass'"):
        BatchedCartPole(2, ("total_mass",))
    with pytest.raises(FamilyError, match="cannot vary 'LINK_MASS_1'"):
        BatchedPendulum(2, ("LINK_MASS_1",))


def test_acrobot_offers_only_what_gymnasium_reads():
    """LINK_LENGTH_2 and gravity change nothing in Gymnasium's Acrobot (its renderer reads
    the one, _dsdt hard-codes the other): refused, saying why. torque_noise_max: Gymnasium's
    0.0 only. Everything offered is read by AcrobotEnv.step/_dsdt, torque_gain through
    hyperrl's AcrobotActuatorEnv (the _ATTRS test shows each one changing the Gymnasium
    env's step the same way)."""
    with pytest.raises(FamilyError, match="cannot vary 'LINK_LENGTH_2': .*never read it"):
        BatchedAcrobot(2, ("LINK_LENGTH_2",))
    with pytest.raises(FamilyError, match="cannot vary 'gravity': .*hard-codes g = 9.8"):
        BatchedAcrobot(2, (), constants={"gravity": 9.81})
    with pytest.raises(FamilyError, match="cannot vary 'torque_noise_max': only Gymnasium's 0.0"):
        BatchedAcrobot(2, (), constants={"torque_noise_max": 0.1})
    with pytest.raises(FamilyError, match="cannot vary 'torque_noise_max'"):
        BatchedAcrobot(2, ("torque_noise_max",))
    BatchedAcrobot(2, (), constants={"torque_noise_max": 0.0})  # Gymnasium's own value
    with pytest.raises(FamilyError, match="book_or_nips"):
        BatchedAcrobot(2, (), book_or_nips="paper")
    env = gym.make("hyperrl/AcrobotActuator-v1").unwrapped
    for name, default in BatchedAcrobot.DEFAULTS.items():
        assert getattr(type(env), name) == default, name  # a class attribute the env reads
    assert not hasattr(env, "gravity") and not hasattr(env, "g")
    assert not hasattr(gym.make("Acrobot-v1").unwrapped, "torque_gain")  # only hyperrl's env has it


@pytest.mark.parametrize("book_or_nips", ["book", "nips"])
def test_acrobot_both_formulations_match_gymnasium(book_or_nips):
    """``book_or_nips``: the sim's option and Gymnasium's attribute select the same equations
    (the two differ by the m2 * l1 * lc2 * dtheta1**2 * sin(theta2) term)."""
    n = 6
    sim = BatchedAcrobot(n, ("LINK_MASS_2",), dtype=F64, book_or_nips=book_or_nips)
    masses = torch.linspace(0.5, 2.0, n, dtype=F64).reshape(n, 1)
    sim.reset(params=masses)
    envs = [_gym_with("Acrobot-v1", "LINK_MASS_2", float(m)) for m in masses]
    obs = np.stack([env.reset(seed=i)[0] for i, env in enumerate(envs)])
    for env in envs:
        env.unwrapped.book_or_nips = book_or_nips
    rng = np.random.default_rng(1)
    other = BatchedAcrobot(n, ("LINK_MASS_2",), dtype=F64, book_or_nips="nips" if book_or_nips == "book" else "book")
    other.reset(params=masses)
    apart = 0.0
    for t in range(150):
        a = acrobot_actions(obs, np.full(n, 0.2), rng)
        other.state = torch.from_numpy(gym_states(envs))
        theirs = other.step(torch.from_numpy(a)).final_obs
        obs, term, trunc = step_side_by_side(sim, envs, a, np.array([], dtype=int), rng, f"{book_or_nips} step {t}")
        apart = max(apart, float((theirs - sim.observe(torch.from_numpy(gym_states(envs)))).abs().max()))
        for i in np.flatnonzero(term | trunc):
            obs[i] = envs[i].reset()[0]
    assert apart > 1e-3  # the other formulation is another physics: the comparison sees it


@pytest.mark.parametrize("checked", [True, False], ids=["host-checked", "sync-free"])
def test_acrobot_wrap_and_bound_are_gymnasiums_bit_for_bit(checked):
    """``wrap`` is a loop of +-2 pi steps and ``bound`` a min/max: exact operations, so the
    sim reproduces them bit for bit, the edges +-pi and one ulp past them included. The
    host-checked path (CPU) is exact for any angle up to MAX_WRAP_ROUNDS turns, the sync-free
    one (accelerators) for two; beyond, both land in [-pi, pi] by a remainder."""
    from gymnasium.envs.classic_control.acrobot import wrap

    pi = np.pi
    edges = [pi, -pi, np.nextafter(pi, 4), np.nextafter(-pi, -4), np.nextafter(pi, 0), 3 * pi, -3 * pi,
             np.nextafter(3 * pi, 10), np.nextafter(-3 * pi, -10), 5 * pi, 0.0, -0.0, 2 * pi, -2 * pi]
    rng = np.random.default_rng(0)
    reach = 5 * pi if not checked else 100 * pi
    x = np.concatenate([edges, rng.uniform(-reach, reach, 4000), rng.uniform(-3.5, 3.5, 4000)])
    sim = BatchedAcrobot(1, (), dtype=F64)
    sim.wrap_checked = checked
    exact_range = np.abs(x) < (5 * pi if not checked else 2 * sim.MAX_WRAP_ROUNDS * pi)
    got = sim._wrap(torch.from_numpy(x.reshape(-1, 2))).numpy().reshape(-1)
    want = np.array([wrap(float(v), -pi, pi) for v in x])
    assert np.array_equal(got[exact_range], want[exact_range])
    assert (np.abs(got) <= pi).all()
    far = np.array([1e3, -1e3, 1e4, 123.0 * 2 * pi])
    got_far = sim._wrap(torch.from_numpy(far.reshape(-1, 2))).numpy().reshape(-1)
    assert (np.abs(got_far) <= pi).all()
    np.testing.assert_allclose(np.cos(got_far), np.cos(far), atol=1e-9)

    # bound(x, -MAX_VEL, MAX_VEL) on the velocities, through a whole step from states that
    # hit the bounds: where Gymnasium's velocity is the bound, the sim's is that number exactly
    vmax = [(1.0, 2.0), (0.5, 0.5), (4 * pi, 9 * pi), (0.25, 30.0)]
    states = np.array([[0.3, -0.2, 5.0, -5.0], [2.0, 1.0, -3.0, 7.0], [1.0, 2.0, 20.0, -40.0],
                       [0.1, 0.1, 0.0, 0.0]])
    sim = BatchedAcrobot(4, ("MAX_VEL_1", "MAX_VEL_2"), dtype=F64)
    sim.reset(params=torch.tensor(vmax, dtype=F64))
    sim.state = torch.from_numpy(states)
    vel = sim.step(torch.tensor([2, 0, 1, 2])).final_obs[:, 4:].numpy()
    bounded = 0
    for i, (v1, v2) in enumerate(vmax):
        env = gym.make("Acrobot-v1").unwrapped
        env.MAX_VEL_1, env.MAX_VEL_2 = v1, v2
        env.state = states[i].copy()
        env.step([2, 0, 1, 2][i])
        for j, v in ((0, v1), (1, v2)):
            want = float(env.state[2 + j])
            if abs(want) == v:
                assert vel[i, j] == want
                bounded += 1
            else:
                assert abs(vel[i, j] - want) <= TOL
    assert bounded >= 4


def test_family_derived_is_evaluated_per_step():
    """acrobot-links derives LINK_COM_POS_1 = 0.5 * LINK_LENGTH_1: the sim evaluates it from
    each env's current length (as Family.apply does on the Gymnasium env), and a derived entry
    of constants only is a constant."""
    family = load_family("acrobot-links")
    sim = make_vec_env(family, 3, dtype=F64)
    values = torch.tensor([[1.0, 1.0, 0.6], [1.2, 0.7, 1.4], [0.5, 1.5, 1.0]], dtype=F64)
    sim.reset(params=values)
    assert sim.varies("LINK_COM_POS_1") and not sim.varies("LINK_COM_POS_2")
    assert torch.equal(sim.attr("LINK_COM_POS_1", sim.params), 0.5 * values[:, 2])
    for i in range(3):
        assert family.make_env(values[i]).unwrapped.LINK_COM_POS_1 == float(sim.attr("LINK_COM_POS_1", sim.params)[i])
    const = BatchedAcrobot(2, ("LINK_MASS_1",), derived={"LINK_COM_POS_2": "0.25 * LINK_LENGTH_1 + 0.1"})
    assert not const.varies("LINK_COM_POS_2") and const.attr("LINK_COM_POS_2", const.params) == 0.35
    with pytest.raises(FamilyError, match="cannot derive 'SCREEN_DIM'"):
        BatchedAcrobot(2, (), derived={"SCREEN_DIM": "2 * LINK_MOI"})
    with pytest.raises(FamilyError, match="reads 'SCREEN_DIM'"):
        BatchedAcrobot(2, ("LINK_MOI",), derived={"LINK_COM_POS_2": "LINK_MOI / SCREEN_DIM"})


def test_cartpole_derived_must_match_what_the_sim_recomputes():
    """CartPole's sim computes total_mass and polemass_length itself at every step: a family
    deriving them the same way (any spelling) is accepted, another formula is refused."""
    BatchedCartPole(2, ("masspole",), derived={"total_mass": "masscart + masspole",
                                               "polemass_length": "length * masspole"})
    with pytest.raises(FamilyError, match="computes total_mass = masspole \\+ masscart .* differs"):
        BatchedCartPole(2, ("masspole",), derived={"total_mass": "masspole + 2 * masscart"})
    sim = BatchedCartPole(2, ("force_mag",), derived={"tau": "0.002 * force_mag"})  # an attribute it models
    assert sim.varies("tau")
    sim.reset(params=torch.tensor([[10.0], [5.0]]))
    assert torch.allclose(sim.attr("tau", sim.params), torch.tensor([0.02, 0.01]))
