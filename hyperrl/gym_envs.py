"""Gymnasium envs hyperrl registers: classic-control tasks with an attribute Gymnasium lacks.

Gymnasium's ``Pendulum-v1`` and ``Acrobot-v1`` have no actuator gain to vary, so a family
cannot reverse or weaken their motors. The subclasses here add ``torque_gain`` (default
1.0): the torque applied to the joint is ``torque_gain`` times the torque Gymnasium would
apply; a negative gain is a reversed motor. With the default gain they are Gymnasium's
envs bit for bit (``tests/test_gym_envs.py``).

Importing this module registers them with Gymnasium (idempotent):

* ``hyperrl/PendulumActuator-v1``: :class:`PendulumActuatorEnv` (``Pendulum-v1``'s
  200-step time limit);
* ``hyperrl/AcrobotActuator-v1``: :class:`AcrobotActuatorEnv` (``Acrobot-v1``'s 500-step
  time limit and reward threshold -100);
* ``hyperrl/HalfCheetahVel-v5``: :class:`hyperrl.mujoco_envs.HalfCheetahVelEnv`, meta-RL's
  cheetah-vel task (``HalfCheetah-v5``'s 1000-step time limit; its module, which needs
  ``mujoco``, is imported only when the env is made).

:mod:`hyperrl.families` imports it, so every process holding a family (a trainer, a
``gymnasium.vector`` or SB3 worker unpickling one) can ``gym.make`` these ids.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.acrobot import AcrobotEnv
from gymnasium.envs.classic_control.pendulum import PendulumEnv, angle_normalize

__all__ = ["AcrobotActuatorEnv", "PendulumActuatorEnv", "ENV_IDS", "base_env_id", "register_envs"]


class PendulumActuatorEnv(PendulumEnv):
    """Pendulum-v1 with a signed actuator gain ``torque_gain``.

    The policy commands ``u`` (clipped to ``max_torque`` as in Gymnasium); the joint receives
    ``torque_gain * u``. The cost keeps the commanded ``u`` (``0.001 * u**2``: the
    controller's effort), so with ``|torque_gain| = 1`` the rewards are Gymnasium's.
    """

    torque_gain: float = 1.0

    def step(self, u: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        """PendulumEnv.step operation by operation, the applied torque scaled by the gain.

        ``u``: ``[1]`` commanded torque (float32 from the action space)."""
        th, thdot = self.state  # th := theta

        g = self.g
        m = self.m
        l = self.l  # noqa: E741 - Gymnasium's name
        dt = self.dt

        u = np.clip(u, -self.max_torque, self.max_torque)[0]
        self.last_u = u  # for rendering
        costs = angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * (u**2)

        # The one change from Gymnasium: the joint receives torque_gain * u. A python-float
        # gain times a float32 u stays float32 (NumPy 2's promotion), as Gymnasium's u does.
        torque = self.torque_gain * u
        newthdot = thdot + (3 * g / (2 * l) * np.sin(th) + 3.0 / (m * l**2) * torque) * dt
        newthdot = np.clip(newthdot, -self.max_speed, self.max_speed)
        newth = th + newthdot * dt

        self.state = np.array([newth, newthdot])

        if self.render_mode == "human":
            self.render()
        return self._get_obs(), -costs, False, False, {}


class AcrobotActuatorEnv(AcrobotEnv):
    """Acrobot-v1 with a signed actuator gain ``torque_gain``.

    Actions 0, 1, 2 apply ``-torque_gain``, 0 and ``+torque_gain`` to the joint between the
    links. ``AcrobotEnv.step`` reads ``self.AVAIL_TORQUE[a]`` at every step, so the table is a
    property of the gain and the step is Gymnasium's own (torque noise, when
    ``torque_noise_max > 0``, is still added to the applied torque there).
    """

    torque_gain: float = 1.0

    @property  # type: ignore[override]
    def AVAIL_TORQUE(self) -> list[float]:  # noqa: N802 - Gymnasium's name
        """``[-g, 0.0, g]`` for ``g = torque_gain``; 0.0 stays +0.0 for a negative gain."""
        g = self.torque_gain
        return [-g, 0.0, g]


# id -> (entry point, the Gymnasium id it extends: its time limit and reward threshold are kept)
ENV_IDS: dict[str, tuple[str, str]] = {
    "hyperrl/PendulumActuator-v1": ("hyperrl.gym_envs:PendulumActuatorEnv", "Pendulum-v1"),
    "hyperrl/AcrobotActuator-v1": ("hyperrl.gym_envs:AcrobotActuatorEnv", "Acrobot-v1"),
    "hyperrl/HalfCheetahVel-v5": ("hyperrl.mujoco_envs:HalfCheetahVelEnv", "HalfCheetah-v5"),
}


def base_env_id(env_id: str) -> str:
    """The Gymnasium id a hyperrl env extends (``Pendulum-v1`` for
    ``hyperrl/PendulumActuator-v1``); any other id unchanged."""
    entry = ENV_IDS.get(env_id)
    return entry[1] if entry else env_id


def register_envs() -> None:
    """Register every id in :data:`ENV_IDS` that Gymnasium does not know yet, with the time
    limit, reward threshold and determinism of the env it extends."""
    for env_id, (entry_point, base) in ENV_IDS.items():
        if env_id in gym.registry:
            continue
        spec = gym.spec(base)
        # a reward threshold belongs to the base task's reward; an env with its own reward has none
        threshold = spec.reward_threshold if "mujoco" not in entry_point else None
        gym.register(id=env_id, entry_point=entry_point, max_episode_steps=spec.max_episode_steps,
                     reward_threshold=threshold, nondeterministic=spec.nondeterministic)


register_envs()
