"""Batched CartPole-v1 in torch: Gymnasium's physics, one parameter row per env.

Every env carries its own values of the varying attributes (any of ``gravity``,
``masscart``, ``masspole``, ``length``, ``force_mag``, ``tau``). ``total_mass`` and
``polemass_length`` are recomputed from the current values at every step; they are never
cached, so a changed ``masspole`` can never leave them stale (the bug CARL and RLlib's
CartPoleMassEnv shipped). ``force_mag`` may be negative: a reversed motor; the force is
``force_mag`` for action 1 and ``-force_mag`` for action 0, as in Gymnasium.

The arithmetic follows ``gymnasium.envs.classic_control.cartpole.CartPoleEnv.step``
operation by operation (explicit Euler, the same thresholds, reward 1.0 on every step
including the terminating one), so in float64 it reproduces Gymnasium to the last bits of
``sin``/``cos`` (``tests/test_sim_equivalence.py``).
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

from hyperrl.sim.base import BatchedSim

__all__ = ["BatchedCartPole"]


class BatchedCartPole(BatchedSim):
    """CartPole-v1 for N parameter variants at once; state = (x, x_dot, theta, theta_dot).

    Actions: ``[N]`` tensor of 0/1 on the sim's device (long; int, bool and ``[N, 1]`` are
    accepted). Observations are the state itself in the sim's dtype (Gymnasium returns
    float32); like the state they are never modified in place by the sim, and callers
    should treat them as read-only too (the returned ``obs`` may share the sim's state).
    """

    DEFAULTS = {
        "gravity": 9.8,
        "masscart": 1.0,
        "masspole": 0.1,
        "length": 0.5,  # half the pole's length, as in Gymnasium
        "force_mag": 10.0,
        "tau": 0.02,  # seconds between state updates
    }
    # CartPoleEnv caches these in __init__; the sim computes them from the current values
    # at every step (in dynamics), so a family's `derived` entries must say the same.
    RECOMPUTED = {"total_mass": "masspole + masscart", "polemass_length": "masspole * length"}
    MAX_EPISODE_STEPS = 500
    STATE_DIM = 4

    theta_threshold_radians = 12 * 2 * math.pi / 360  # as Gymnasium
    x_threshold = 2.4
    reset_low, reset_high = -0.05, 0.05

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        high = np.array(
            [self.x_threshold * 2, np.inf, self.theta_threshold_radians * 2, np.inf],
            dtype=np.float32,
        )
        self.single_observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        self.single_action_space = gym.spaces.Discrete(2)

        self._four_thirds = self.scalar(4.0 / 3.0)
        # (x_threshold, theta_threshold) as a column: compared with |(x, theta)| rows [2, N]
        thr = torch.tensor([[self.x_threshold], [self.theta_threshold_radians]], dtype=self.dtype)
        self._thresholds = thr.to(self.device)
        self._force_varies = self.varies("force_mag")
        # action -> +-1 (times force_mag when it varies), or straight to +-force_mag
        fm = self.constants["force_mag"]
        signs = [-1.0, 1.0] if self._force_varies else [-fm, fm]
        self._signs = torch.tensor(signs, dtype=self.dtype, device=self.device)
        # On the CPU the step runs on NumPy views of the same memory: ~30 elementwise ops on a
        # few thousand rows cost NumPy ~1-3 us each and torch ~5-10 us (bench_sim.py). The
        # physics below is written once for both (operators, in-place updates and functions
        # both libraries share); accelerators, and tests that set this False, run it in torch.
        self.numpy_step = self.device.type == "cpu"
        self._np_consts: list[np.ndarray] | None = None

    def initial_state(self, n: int) -> torch.Tensor:
        out = torch.empty(n, self.STATE_DIM, dtype=self.dtype, device=self.device)
        return out.uniform_(self.reset_low, self.reset_high, generator=self.generator)

    @classmethod
    def gymnasium_reset_state(cls, rng: np.random.Generator) -> np.ndarray:
        # CartPoleEnv.reset: self.np_random.uniform(low=-0.05, high=0.05, size=(4,))
        return rng.uniform(low=cls.reset_low, high=cls.reset_high, size=(4,))

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        return state

    def dynamics(self, state, action, params):
        if action.dtype != torch.long or action.dim() != 1:
            action = action.reshape(-1).long()
        # The integration runs on rows [4, N]; the new state is returned as their [N, 4] view.
        rows = self.state_rows(state)
        consts = [self._signs, self._four_thirds, self._thresholds]
        if not self.numpy_step:
            # Each attribute: [N] values when it varies, else a 0-dim constant.
            values = self.attribute_values(params)
            new_rows, reward, terminated = self._physics(torch, rows, action, values, consts)
            return new_rows.t(), reward, terminated
        if self._np_consts is None:  # NumPy views of the constants, made once
            self._np_consts = [c.numpy() for c in consts]
        new_rows, reward, terminated = self._physics(np, rows.numpy(), action.numpy(), self.attribute_arrays(params),
                                                     self._np_consts)
        return torch.from_numpy(new_rows).t(), torch.from_numpy(reward), torch.from_numpy(terminated)

    def _physics(self, xp, rows, action, values, consts):
        """One step of CartPoleEnv for every env, in ``xp`` (``torch`` or ``numpy``): rows
        ``[4, N]`` (x, x_dot, theta, theta_dot), action ``[N]`` 0/1 -> (new rows ``[4, N]``,
        reward ``[N]``, terminated ``[N]``)."""
        gravity, masscart, masspole, length, force_mag, tau = values
        signs, four_thirds, thresholds = consts
        # Derived quantities, recomputed from the current values at every step: never stale.
        total_mass = masspole + masscart
        polemass_length = masspole * length

        # force = force_mag if action == 1 else -force_mag (a negative gain: reversed motor)
        force = xp.take(signs, action)
        if self._force_varies:
            force *= force_mag
        theta, theta_dot = rows[2], rows[3]
        costheta = xp.cos(theta)
        sintheta = xp.sin(theta)

        # Gymnasium's expressions evaluated in the same order, so float64 agrees to the bit
        # (up to sin/cos); in-place updates only save allocations.
        # temp = (force + polemass_length * theta_dot**2 * sintheta) / total_mass
        temp = theta_dot * theta_dot
        temp *= polemass_length
        temp *= sintheta
        temp += force
        temp /= total_mass
        # thetaacc = (gravity * sintheta - costheta * temp)
        #            / (length * (4/3 - masspole * costheta**2 / total_mass))
        denom = costheta * costheta
        denom *= masspole
        denom /= total_mass
        denom = four_thirds - denom
        denom *= length
        # Derivatives (x_dot, xacc, theta_dot, thetaacc) laid out like the rows, so explicit
        # Euler from the old state is one multiply and one add over [4, N].
        deriv = xp.empty_like(rows)
        deriv[0::2] = rows[1::2]  # (x_dot, theta_dot)
        num = sintheta * gravity
        num -= costheta * temp
        xp.divide(num, denom, out=deriv[3])  # thetaacc
        # xacc = temp - polemass_length * thetaacc * costheta / total_mass
        tail = deriv[3] * polemass_length
        tail *= costheta
        tail /= total_mass
        xp.subtract(temp, tail, out=deriv[1])
        # x += tau * x_dot, x_dot += tau * xacc, theta += tau * theta_dot, theta_dot += tau * thetaacc
        deriv *= tau
        deriv += rows
        # |x| > x_threshold or |theta| > theta_threshold, on the (x, theta) rows [2, N]
        out_of_bounds = abs(deriv[0::2]) > thresholds
        terminated = out_of_bounds[0] | out_of_bounds[1]
        return deriv, xp.ones_like(temp), terminated
