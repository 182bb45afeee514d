"""hyperrl's Gymnasium envs (``hyperrl.gym_envs``): Pendulum-v1 and Acrobot-v1 with a signed
actuator gain ``torque_gain``.

With gain 1 each is Gymnasium's env bit for bit; with gain -1 each applies the opposite
torque (Gymnasium's env given the opposite action); with gain g Pendulum's joint receives
g * u while its cost keeps the commanded u. Every comparison is one step from a shared
state (re-synced each step), so it tests the step, never an accumulated trajectory. The ids
are registered wherever a family can be loaded, a ``gymnasium.vector`` worker process
included; a family on plain Pendulum-v1 / Acrobot-v1 cannot vary ``torque_gain``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from hyperrl import gym_envs
from hyperrl.baselines import ZOO_HYPERPARAMS, hyperparams
from hyperrl.errors import FamilyError
from hyperrl.families import builtin_families_dir, load_family
from hyperrl.sim.generic import GymnasiumVecEnv, _EnvFactory

PENDULUM, ACROBOT = "hyperrl/PendulumActuator-v1", "hyperrl/AcrobotActuator-v1"
STEPS = 150


def _pair(env_id: str, base_id: str, gain: float, seed: int = 0) -> tuple[gym.Env, gym.Env]:
    """hyperrl's env with ``torque_gain = gain`` and Gymnasium's, both reset with ``seed``."""
    ours, theirs = gym.make(env_id), gym.make(base_id)
    ours.unwrapped.torque_gain = gain
    ours.reset(seed=seed)
    theirs.reset(seed=seed)
    return ours, theirs


def _step_both(ours: gym.Env, theirs: gym.Env, a_ours, a_theirs) -> tuple[tuple, tuple]:
    """Copy Gymnasium's state into ours, then step each with its action."""
    ours.unwrapped.state = np.array(theirs.unwrapped.state, copy=True)
    return ours.step(a_ours), theirs.step(a_theirs)


def _assert_same(mine: tuple, other: tuple, ours: gym.Env, theirs: gym.Env, where: str,
                 reward: bool = True) -> None:
    np.testing.assert_array_equal(mine[0], other[0], err_msg=where)
    np.testing.assert_array_equal(np.asarray(ours.unwrapped.state), np.asarray(theirs.unwrapped.state),
                                  err_msg=where)
    if reward:
        assert mine[1] == other[1], where
    assert mine[2:4] == other[2:4], where


def _pendulum_actions(rng: np.random.Generator, dtype: type) -> np.ndarray:
    """[STEPS, 1] torques, a third beyond +-max_torque (clipped)."""
    return rng.uniform(-3.0, 3.0, (STEPS, 1)).astype(dtype)


def _reset_if_done(step: tuple, *envs: gym.Env) -> None:
    if step[2] or step[3]:
        for env in envs:
            env.reset()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pendulum_gain_one_is_gymnasiums_and_minus_one_mirrors_the_torque(dtype):
    rng = np.random.default_rng(0)
    for gain, sign in ((1.0, 1.0), (-1.0, -1.0)):
        ours, theirs = _pair(PENDULUM, "Pendulum-v1", gain)
        for t, u in enumerate(_pendulum_actions(rng, dtype)):
            mine, other = _step_both(ours, theirs, u, (sign * u).astype(dtype))
            # gain -1 with u is Gymnasium with -u: the same next state, and the same cost
            # (0.001 * u**2 is even in u)
            _assert_same(mine, other, ours, theirs, f"gain {gain} step {t}")
            _reset_if_done(other, ours, theirs)


def test_pendulum_gain_scales_the_applied_torque_and_the_cost_keeps_the_command():
    """gain g with u: the next state is Gymnasium's with g * u (float64, unclipped), and the
    reward is Gymnasium's with u from the same state."""
    rng = np.random.default_rng(1)
    for gain in (0.5, -1.7, 0.25):
        ours, theirs = _pair(PENDULUM, "Pendulum-v1", gain)
        command = gym.make("Pendulum-v1")
        command.reset(seed=0)
        for t in range(STEPS):
            u = rng.uniform(-2.0, 2.0, 1) / max(1.0, abs(gain))  # g * u stays inside max_torque
            command.unwrapped.state = np.array(theirs.unwrapped.state, copy=True)
            mine, other = _step_both(ours, theirs, u, gain * u)
            _assert_same(mine, other, ours, theirs, f"gain {gain} step {t}", reward=False)
            assert mine[1] == command.step(u)[1], f"gain {gain} step {t}: cost of the commanded u"
            _reset_if_done(other, ours, theirs)


@pytest.mark.parametrize("noise", [0.0, 0.2], ids=["no-noise", "torque-noise"])
def test_acrobot_gain_one_is_gymnasiums_and_minus_one_mirrors_the_torque(noise):
    """Gain -1 with action a is Gymnasium with 2 - a. With torque noise (drawn from the
    env's np_random after the table lookup) both still agree: the noise is added to the
    applied torque, the same draw for the same seed."""
    rng = np.random.default_rng(2)
    for gain, flip in ((1.0, False), (-1.0, True)):
        ours, theirs = _pair(ACROBOT, "Acrobot-v1", gain)
        ours.unwrapped.torque_noise_max = theirs.unwrapped.torque_noise_max = noise
        for t, a in enumerate(rng.integers(0, 3, STEPS)):
            mine, other = _step_both(ours, theirs, int(a), int(2 - a) if flip else int(a))
            _assert_same(mine, other, ours, theirs, f"gain {gain} step {t}")
            _reset_if_done(other, ours, theirs)


def test_acrobot_gain_scales_the_torque_table():
    env = gym.make(ACROBOT).unwrapped
    assert env.AVAIL_TORQUE == [-1.0, 0.0, 1.0]
    env.torque_gain = -0.3
    table = env.AVAIL_TORQUE
    assert table == [0.3, 0.0, -0.3] and np.copysign(1.0, table[1]) == 1.0  # +0.0, as Gymnasium's
    assert not hasattr(gym.make("Acrobot-v1").unwrapped, "torque_gain")


def test_registered_like_the_envs_they_extend():
    for env_id, base in ((PENDULUM, "Pendulum-v1"), (ACROBOT, "Acrobot-v1")):
        ours, theirs = gym.spec(env_id), gym.spec(base)
        assert (ours.max_episode_steps, ours.reward_threshold) == (theirs.max_episode_steps, theirs.reward_threshold)
        assert gym_envs.base_env_id(env_id) == base
        env, ref = gym.make(env_id), gym.make(base)
        assert env.observation_space == ref.observation_space and env.action_space == ref.action_space
        assert env.unwrapped.torque_gain == 1.0
    before = dict(gym.registry)
    gym_envs.register_envs()  # idempotent: nothing re-registered
    assert all(gym.registry[k] is v for k, v in before.items()) and len(gym.registry) == len(before)
    assert gym_envs.base_env_id("CartPole-v1") == "CartPole-v1"


def test_baselines_use_the_extended_envs_zoo_hyperparameters():
    for name, base in (("pendulum-actuator", "Pendulum-v1"), ("acrobot-actuator", "Acrobot-v1")):
        assert hyperparams(load_family(name)) == ZOO_HYPERPARAMS[base]


@pytest.mark.parametrize(("base", "ours"), [("Pendulum-v1", "pendulum-actuator"), ("Acrobot-v1", "acrobot-actuator")])
def test_a_family_on_the_plain_env_cannot_vary_torque_gain(tmp_path, base, ours):
    raw = yaml.safe_load((builtin_families_dir() / f"{ours}.yaml").read_text())
    raw["env_id"] = base
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(FamilyError, match=f"params.torque_gain: {base} has no attribute 'torque_gain'"):
        load_family(path)


def test_a_spawned_vector_worker_can_make_the_env():
    """A worker process started fresh (``spawn``: nothing inherited) unpickles the family,
    which imports hyperrl.families and so registers the ids before ``gym.make``."""
    family = load_family("acrobot-actuator")
    fns = [_EnvFactory(family, [-0.7]), _EnvFactory(family, [1.3])]
    vec = gym.vector.AsyncVectorEnv(fns, context="spawn")
    try:
        vec.reset(seed=0)
        vec.step(np.array([0, 2]))
        assert vec.get_attr("torque_gain") == (-0.7, 1.3)
    finally:
        vec.close()


def test_generic_async_backend_runs_the_family():
    family = load_family("pendulum-actuator")
    vec = GymnasiumVecEnv(family, 2, seed=0, vectorization="async")
    try:
        vec.reset(params=torch.tensor([[-1.2], [0.6]], dtype=torch.float64))
        out = vec.step(torch.zeros(2, 1))
        assert out.obs.shape == (2, 3)
        assert vec.get_attr("torque_gain") == (-1.2, 0.6)
    finally:
        vec.close()
