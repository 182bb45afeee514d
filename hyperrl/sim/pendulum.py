"""Batched Pendulum-v1 in torch: Gymnasium's physics, one parameter row per env.

Any of ``g``, ``m``, ``l`` (and ``max_torque``, ``max_speed``, ``dt``, which Gymnasium keeps
constant) may vary per env, and ``torque_gain``, the signed actuator gain of
:class:`hyperrl.gym_envs.PendulumActuatorEnv` (``hyperrl/PendulumActuator-v1``; plain
``Pendulum-v1`` has no such attribute, so a family on it cannot vary it). The step follows
``gymnasium.envs.classic_control.pendulum.PendulumEnv.step`` operation by operation (and
``PendulumActuatorEnv.step``, which differs only in the torque the joint receives): the
commanded torque ``u`` is clipped to ``[-max_torque, max_torque]``, the cost
``angle_normalize(th)**2 + .1 * thdot**2 + .001 * u**2`` is taken on the state *before*
the update, then semi-implicit Euler, driven by ``torque_gain * u``, with the angular speed
clipped to ``max_speed``. The episode never terminates; the 200-step time limit truncates it.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

from hyperrl.sim.base import BatchedSim

__all__ = ["BatchedPendulum"]


class BatchedPendulum(BatchedSim):
    """Pendulum-v1 for N parameter variants at once; state = (th, thdot), obs = (cos, sin, thdot).

    Actions: ``[N, 1]`` (or ``[N]``) float torques on the sim's device, clipped to
    ``max_torque`` as Gymnasium does.
    """

    DEFAULTS = {
        "g": 10.0,
        "m": 1.0,
        "l": 1.0,
        "max_torque": 2.0,
        "max_speed": 8.0,
        "dt": 0.05,
        "torque_gain": 1.0,  # PendulumActuatorEnv's; the joint receives torque_gain * u
    }
    MAX_EPISODE_STEPS = 200
    STATE_DIM = 2

    reset_high = (math.pi, 1.0)  # th ~ U(-pi, pi), thdot ~ U(-1, 1), as Gymnasium's reset

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The spaces Gymnasium's PendulumEnv builds in __init__ (from its defaults; setting
        # max_torque or max_speed on the env afterwards leaves them unchanged there too).
        d = self.DEFAULTS
        high = np.array([1.0, 1.0, d["max_speed"]], dtype=np.float32)
        self.single_observation_space = gym.spaces.Box(low=-high, high=high, dtype=np.float32)
        self.single_action_space = gym.spaces.Box(
            low=-d["max_torque"], high=d["max_torque"], shape=(1,), dtype=np.float32
        )

        # Constants as 0-dim tensors on the device, so every expression below is tensor
        # arithmetic whatever varies (``float / tensor`` in torch is reciprocal-then-multiply,
        # which would round differently from Gymnasium's division).
        self._three = self.scalar(3.0)
        self._milli32 = torch.tensor(0.001, dtype=torch.float32, device=self.device)
        # A gain of exactly 1 changes no bit (x * 1.0 == x): skip its multiply then.
        self._gain = self.varies("torque_gain") or self.constants["torque_gain"] != 1.0

    def initial_state(self, n: int) -> torch.Tensor:
        out = torch.empty(n, self.STATE_DIM, dtype=self.dtype, device=self.device)
        for j, h in enumerate(self.reset_high):
            out[:, j].uniform_(-h, h, generator=self.generator)
        return out

    @classmethod
    def gymnasium_reset_state(cls, rng: np.random.Generator) -> np.ndarray:
        # PendulumEnv.reset: high = np.array([DEFAULT_X, DEFAULT_Y]) (pi, 1.0);
        # self.np_random.uniform(low=-high, high=high)
        high = np.array(cls.reset_high)
        return rng.uniform(low=-high, high=high)

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        th = state[:, 0]
        obs = torch.empty(state.shape[0], 3, dtype=state.dtype, device=state.device)
        torch.cos(th, out=obs[:, 0])
        torch.sin(th, out=obs[:, 1])
        obs[:, 2] = state[:, 1]
        return obs

    def dynamics(self, state, action, params):
        # Each attribute: [N] values when it varies, else a 0-dim constant.
        g, m, l, max_torque, max_speed, dt, gain = self.attribute_values(params)
        th, thdot = state[:, 0], state[:, 1]
        if action.dtype == torch.float32 and self.dtype == torch.float64:
            # Gymnasium receives float32 actions (its action space's dtype), and NumPy 2's
            # promotion rules (NEP 50) then compute the action's terms in float32:
            # np.clip -> np.float32 u, 0.001 * (u**2), torque_gain * u (a python float times
            # np.float32) and 3.0 / (m * l**2) * torque. Round the same way, so a float64 sim
            # replays Gymnasium exactly for a float32 policy.
            f32 = torch.float32
            mt = max_torque.to(f32)
            u32 = torch.clamp(action.reshape(state.shape[0]), -mt, mt)
            u_cost = (u32 * u32).mul_(self._milli32).to(self.dtype)
            torque32 = gain.to(f32) * u32 if self._gain else u32  # torque = torque_gain * u
            torque_term = (torch.div(self._three, m * (l * l)).to(f32) * torque32).to(self.dtype)
        else:
            u = action.reshape(state.shape[0]).to(self.dtype)
            u = torch.clamp(u, -max_torque, max_torque)  # np.clip(u, -max_torque, max_torque)[0]
            u_cost = (u * u).mul_(0.001)
            torque = gain * u if self._gain else u  # torque = torque_gain * u
            torque_term = torque * torch.div(self._three, m * (l * l))

        # Gymnasium's expressions evaluated in the same order, so float64 agrees to the bit
        # (up to sin and Python's l**2 being pow(), which can differ from l*l in the last bit).
        # costs = angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * (u**2)
        ang = torch.remainder(th + math.pi, 2 * math.pi).sub_(math.pi)
        costs = (ang * ang).add_((thdot * thdot).mul_(0.1)).add_(u_cost)
        # newthdot = thdot + (3 * g / (2 * l) * sin(th) + 3.0 / (m * l**2) * torque) * dt
        gravity_term = torch.sin(th).mul_(torch.div(g * 3, l * 2))
        newthdot = thdot + gravity_term.add_(torque_term).mul_(dt)
        newthdot = torch.clamp(newthdot, -max_speed, max_speed)
        new_state = torch.empty_like(state)
        torch.add(th, newthdot * dt, out=new_state[:, 0])  # newth = th + newthdot * dt
        new_state[:, 1] = newthdot
        terminated = torch.zeros(state.shape[0], dtype=torch.bool, device=state.device)
        return new_state, costs.neg_(), terminated
