"""Batched Acrobot-v1 in torch: Gymnasium's physics, one parameter row per env.

Every env carries its own values of the varying attributes: any of the link masses
``LINK_MASS_1``/``LINK_MASS_2``, the first link's length ``LINK_LENGTH_1``, the centres of
mass ``LINK_COM_POS_1``/``LINK_COM_POS_2``, the moment of inertia ``LINK_MOI`` (both links,
as Gymnasium), the velocity bounds ``MAX_VEL_1``/``MAX_VEL_2`` and the integration step
``dt``. These are exactly the attributes ``AcrobotEnv.step`` and ``_dsdt`` read at every
step, so :meth:`Family.apply` setting one on the Gymnasium env changes its physics the same
way. ``torque_gain`` too: the signed actuator gain of
:class:`hyperrl.gym_envs.AcrobotActuatorEnv` (``hyperrl/AcrobotActuator-v1``), whose
``AVAIL_TORQUE`` is ``[-torque_gain, 0.0, torque_gain]``; plain ``Acrobot-v1`` has no such
attribute, so a family on it cannot vary it. Not offered, because Gymnasium's dynamics
never read them: ``LINK_LENGTH_2`` (only its renderer does; the goal height
``-cos(t1) - cos(t2 + t1) > 1`` assumes unit links whatever the lengths) and gravity
(``g = 9.8`` is a local constant of ``_dsdt``, no attribute). ``torque_noise_max`` is
accepted only as Gymnasium's 0.0 (noise would draw from the env's ``np_random``, which no
batched sim can reproduce).

The step follows ``gymnasium.envs.classic_control.acrobot.AcrobotEnv.step`` operation by
operation: torque ``AVAIL_TORQUE[a]`` (-1, 0, +1, times ``torque_gain``), one classic RK4
step of ``_dsdt`` over ``dt`` (the "book" equations by default, ``book_or_nips="nips"`` for
the paper's), the angles wrapped into [-pi, pi] by ``wrap``'s repeated +-2 pi, the
velocities bounded by ``bound``, then termination ``-cos(t1) - cos(t2 + t1) > 1.0`` and
reward -1 (0 on the terminal step). In float64 it reproduces Gymnasium to the last bits of
``sin``/``cos`` and ``x**2`` (libm's ``pow``, which the sim computes as ``x * x``; the two
differ by one ulp on ~0.1 % of inputs) (``tests/test_sim_equivalence.py``): ~1e-15 per step
over the family's ranges. Far outside them (a centre of mass beyond the link, dt near 0.4)
one RK4 step can amplify an ulp ~1e7-fold, in Gymnasium as much as here, and the two then
differ by as much.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

from hyperrl.errors import FamilyError
from hyperrl.sim.base import BatchedSim

__all__ = ["BatchedAcrobot"]


class BatchedAcrobot(BatchedSim):
    """Acrobot-v1 for N parameter variants at once; state = (theta1, theta2, dtheta1, dtheta2),
    obs = (cos t1, sin t1, cos t2, sin t2, dtheta1, dtheta2).

    Actions: ``[N]`` tensor of 0/1/2 on the sim's device (long; int and ``[N, 1]`` are
    accepted), the torques -1, 0, +1 (times ``torque_gain``) on the joint between the links.
    """

    DEFAULTS = {
        "LINK_LENGTH_1": 1.0,  # [m]
        "LINK_MASS_1": 1.0,  # [kg]
        "LINK_MASS_2": 1.0,  # [kg]
        "LINK_COM_POS_1": 0.5,  # [m] position of the centre of mass of link 1
        "LINK_COM_POS_2": 0.5,  # [m] position of the centre of mass of link 2
        "LINK_MOI": 1.0,  # moment of inertia of each link
        "MAX_VEL_1": 4 * math.pi,
        "MAX_VEL_2": 9 * math.pi,
        "dt": 0.2,  # [s] the RK4 step
        "torque_gain": 1.0,  # AcrobotActuatorEnv's: AVAIL_TORQUE = [-torque_gain, 0.0, torque_gain]
    }
    NOT_OFFERED = {
        "LINK_LENGTH_2": "Acrobot-v1's dynamics never read it (only its renderer does), so varying it "
                         "would change nothing",
        "gravity": "Acrobot-v1 hard-codes g = 9.8 inside _dsdt; no attribute sets it",
        "g": "Acrobot-v1 hard-codes g = 9.8 inside _dsdt; no attribute sets it",
        "torque_noise_max": "only Gymnasium's 0.0 is supported (torque noise is drawn from the env's "
                            "np_random, which a batched simulator cannot reproduce)",
    }
    MAX_EPISODE_STEPS = 500
    STATE_DIM = 4

    GRAVITY = 9.8  # _dsdt's local g
    AVAIL_TORQUE = (-1.0, 0.0, 1.0)
    reset_low, reset_high = -0.1, 0.1
    MAX_WRAP_ROUNDS = 64  # wrap's loop runs |angle| / 2 pi times; past this, a remainder does it

    def __init__(self, *args, book_or_nips: str = "book", **kwargs):
        """:class:`BatchedSim`'s arguments (``constants`` by keyword), and the formulation."""
        constants = dict(kwargs.pop("constants", None) or {})
        # torque_noise_max: Gymnasium's 0.0 means "no noise", the only setting supported
        if constants.get("torque_noise_max", 0.0) == 0.0:
            constants.pop("torque_noise_max", None)
        super().__init__(*args, constants=constants, **kwargs)
        if book_or_nips not in ("book", "nips"):
            raise FamilyError(f"book_or_nips must be 'book' or 'nips', got {book_or_nips!r}")
        self.book_or_nips = book_or_nips
        # The spaces AcrobotEnv builds in __init__ (from its class defaults; setting MAX_VEL_*
        # on the env afterwards leaves them unchanged there too).
        d = self.DEFAULTS
        high = np.array([1.0, 1.0, 1.0, 1.0, d["MAX_VEL_1"], d["MAX_VEL_2"]], dtype=np.float32)
        self.single_observation_space = gym.spaces.Box(low=-high, high=high, dtype=np.float32)
        self.single_action_space = gym.spaces.Discrete(3)

        self._torques = torch.tensor(self.AVAIL_TORQUE, dtype=self.dtype, device=self.device)
        # A gain of exactly 1 changes no bit (x * 1.0 == x): skip its multiply then.
        self._gain = self.varies("torque_gain") or self.constants["torque_gain"] != 1.0
        self._zero = self.scalar(0.0)
        self._g = self.scalar(self.GRAVITY)
        self._two = self.scalar(2.0)
        self._six = self.scalar(6.0)
        self._half_pi = self.scalar(math.pi / 2.0)
        self._pi = self.scalar(math.pi)
        self._two_pi = self.scalar(math.pi - -math.pi)  # wrap's diff = M - m
        self._one = self.scalar(1.0)
        # Host-checked wrap loop (exact for any finite angle) where a host sync is free; on
        # accelerators two rounds without a sync, then a remainder (see _wrap).
        self.wrap_checked = self.device.type == "cpu"

    # ---- reset ----------------------------------------------------------------------------
    def initial_state(self, n: int) -> torch.Tensor:
        # [n, 4] as the transposed view of a [4, n] buffer, the layout dynamics works in
        out = torch.empty(self.STATE_DIM, n, dtype=self.dtype, device=self.device)
        out.uniform_(self.reset_low, self.reset_high, generator=self.generator)
        if self.dtype != torch.float32:  # AcrobotEnv.reset stores its draw as float32
            out = out.float().to(self.dtype)
        return out.t()

    @classmethod
    def gymnasium_reset_state(cls, rng: np.random.Generator) -> np.ndarray:
        # AcrobotEnv.reset: self.np_random.uniform(low=-0.1, high=0.1, size=(4,)).astype(np.float32)
        return rng.uniform(low=cls.reset_low, high=cls.reset_high, size=(4,)).astype(np.float32)

    def observe(self, state: torch.Tensor) -> torch.Tensor:
        # _get_ob: [cos(s[0]), sin(s[0]), cos(s[1]), sin(s[1]), s[2], s[3]]
        # One [N] column at a time: an [N, 2] operand would make the inner loops 2 long
        # (~20x slower), and a [6, N] buffer would need a transposing copy.
        obs = torch.empty(state.shape[0], 6, dtype=state.dtype, device=state.device)
        t1, t2, dt1, dt2 = state.unbind(1)
        torch.cos(t1, out=obs[:, 0])
        torch.sin(t1, out=obs[:, 1])
        torch.cos(t2, out=obs[:, 2])
        torch.sin(t2, out=obs[:, 3])
        obs[:, 4].copy_(dt1)
        obs[:, 5].copy_(dt2)
        return obs

    # ---- physics --------------------------------------------------------------------------
    def dynamics(self, state, action, params):
        # Each attribute: [N] values when it varies (a column or derived), else a 0-dim constant.
        l1, m1, m2, lc1, lc2, moi, max_vel_1, max_vel_2, dt, gain = self.attribute_values(params)
        i1 = i2 = moi  # I1 = I2 = self.LINK_MOI
        g = self._g

        # torque = self.AVAIL_TORQUE[a] (torque_noise_max is 0: no noise)
        if action.dtype != torch.long or action.dim() != 1:
            action = action.reshape(-1).long()
        torque = self._torques.index_select(0, action)
        if self._gain:
            # AVAIL_TORQUE = [-torque_gain, 0.0, torque_gain]: -1 * g and 1 * g are exact, and
            # adding 0.0 turns the -0.0 of 0 * (a negative g) into the table's +0.0.
            torque = torque.mul_(gain).add_(self._zero)

        # The parameter-only factors of _dsdt's products, formed once per step: each is a
        # left-to-right prefix of a Gymnasium product (or sum), so its rounding is the same.
        two = self._two
        k = _DsdtFactors(
            m1_lc1sq=m1 * (lc1 * lc1),  # m1 * lc1**2
            l1sq_lc2sq=(l1 * l1) + (lc2 * lc2),  # l1**2 + lc2**2
            two_l1_lc2=(two * l1) * lc2,  # 2 * l1 * lc2
            lc2sq=lc2 * lc2,  # lc2**2
            l1_lc2=l1 * lc2,  # l1 * lc2
            m2_lc2_g=(m2 * lc2) * g,  # m2 * lc2 * g
            neg_m2_l1_lc2=((-m2) * l1) * lc2,  # -m2 * l1 * lc2
            two_m2_l1_lc2=((two * m2) * l1) * lc2,  # 2 * m2 * l1 * lc2
            m1lc1_m2l1_g=((m1 * lc1) + (m2 * l1)) * g,  # (m1 * lc1 + m2 * l1) * g
            m2_l1_lc2=(m2 * l1) * lc2,  # m2 * l1 * lc2
            den0=(m2 * (lc2 * lc2)) + i2,  # m2 * lc2**2 + I2
            m2=m2, i1=i1, i2=i2, torque=torque,
        )

        # The integration runs on rows [4, N]; the new state is returned as their [N, 4] view.
        y0 = self.state_rows(state)

        # rk4(self._dsdt, s_augmented, [0, self.dt]): one step of size dt (= t[1] - t[0]);
        # the torque (the 5th component, derivative 0) stays constant through the stages.
        # dt is 0-dim or [N] (one per env, broadcast along each row).
        dt2 = dt / self._two  # dt2 = dt / 2.0 (0-dim tensors: CUDA turns "/ python float" into "* 1/x")
        k1 = self._dsdt(y0, k)
        k2 = self._dsdt(y0 + dt2 * k1, k)  # derivs(y0 + dt2 * k1)
        k3 = self._dsdt(y0 + dt2 * k2, k)  # derivs(y0 + dt2 * k2)
        k4 = self._dsdt(y0 + dt * k3, k)  # derivs(y0 + dt * k3)
        # yout = y0 + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4); add(alpha=2) rounds once, as
        # Gymnasium's "+ 2 * k" does (the doubling is exact)
        incr = torch.add(k1, k2, alpha=2).add_(k3, alpha=2).add_(k4)
        ns = y0 + incr.mul_(dt / self._six)

        # ns[0] = wrap(ns[0], -pi, pi); ns[1] = wrap(ns[1], -pi, pi)
        new = torch.empty_like(ns)
        new[:2] = self._wrap(ns[:2])
        # ns[2] = bound(ns[2], -MAX_VEL_1, MAX_VEL_1) = min(max(x, -MAX_VEL_1), MAX_VEL_1)
        torch.minimum(torch.maximum(ns[2], -max_vel_1), max_vel_1, out=new[2])
        torch.minimum(torch.maximum(ns[3], -max_vel_2), max_vel_2, out=new[3])

        # _terminal: -cos(s[0]) - cos(s[1] + s[0]) > 1.0
        t1, t2 = new[0], new[1]
        terminated = torch.cos(t1).neg_().sub_(torch.cos(t2 + t1)) > 1.0
        # reward = -1.0 if not terminated else 0.0
        reward = terminated.to(self.dtype).sub_(self._one)
        return new.t(), reward, terminated

    def _dsdt(self, y: torch.Tensor, k: "_DsdtFactors") -> torch.Tensor:
        """AcrobotEnv._dsdt for all envs, transposed: y [4, N] ->
        (dtheta1, dtheta2, ddtheta1, ddtheta2) [4, N]."""
        theta1, theta2, dtheta1, dtheta2 = y.unbind(0)
        cos_t2 = torch.cos(theta2)
        sin_t2 = torch.sin(theta2)
        # d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos(theta2)) + I1 + I2
        d1 = (cos_t2 * k.two_l1_lc2).add_(k.l1sq_lc2sq).mul_(k.m2).add_(k.m1_lc1sq).add_(k.i1).add_(k.i2)
        # d2 = m2 * (lc2**2 + l1 * lc2 * cos(theta2)) + I2
        d2 = (cos_t2 * k.l1_lc2).add_(k.lc2sq).mul_(k.m2).add_(k.i2)
        # phi2 = m2 * lc2 * g * cos(theta1 + theta2 - pi / 2.0)
        phi2 = torch.cos((theta1 + theta2).sub_(self._half_pi)).mul_(k.m2_lc2_g)
        # phi1 = -m2 * l1 * lc2 * dtheta2**2 * sin(theta2)
        #        - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin(theta2)
        #        + (m1 * lc1 + m2 * l1) * g * cos(theta1 - pi / 2)
        #        + phi2
        phi1 = (dtheta2 * dtheta2).mul_(k.neg_m2_l1_lc2).mul_(sin_t2)
        phi1.sub_((dtheta2 * k.two_m2_l1_lc2).mul_(dtheta1).mul_(sin_t2))
        phi1.add_(torch.cos(theta1 - self._half_pi).mul_(k.m1lc1_m2l1_g)).add_(phi2)
        # the common part of both formulations: a + d2 / d1 * phi1
        num = torch.div(d2, d1).mul_(phi1).add_(k.torque)
        if self.book_or_nips == "book":
            # ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * sin(theta2) - phi2)
            #            / (m2 * lc2**2 + I2 - d2**2 / d1)
            num.sub_((dtheta1 * dtheta1).mul_(k.m2_l1_lc2).mul_(sin_t2))
        # nips: ddtheta2 = (a + d2 / d1 * phi1 - phi2) / (m2 * lc2**2 + I2 - d2**2 / d1)
        num.sub_(phi2)
        out = torch.empty_like(y)
        ddtheta1, ddtheta2 = out[2], out[3]
        torch.div(num, torch.sub(k.den0, (d2 * d2).div_(d1)), out=ddtheta2)
        # ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        torch.div((d2 * ddtheta2).add_(phi1).neg_(), d1, out=ddtheta1)
        out[:2] = y[2:]  # (dtheta1, dtheta2)
        return out

    def _wrap(self, x: torch.Tensor) -> torch.Tensor:
        """Gymnasium's ``wrap(x, -pi, pi)`` on angles (any shape): ``while x > M: x = x - diff``,
        then ``while x < m: x = x + diff``, as masked rounds, each one loop iteration of the
        envs still outside (a subtraction never leaves a value below -pi, so one round can
        test both sides). Bit-exact for every finite angle on the CPU; on accelerators (no
        host sync) for any angle two iterations bring back (|x| < 5 pi, beyond anything one
        step of the default physics reaches), with ``remainder`` for the rest."""
        hi, lo, diff = self._pi, -self._pi, self._two_pi
        limit = self.MAX_WRAP_ROUNDS if self.wrap_checked else 2
        rounds = 0
        while rounds < limit:
            over, under = x > hi, x < lo
            if self.wrap_checked and not bool((over | under).any()):
                return x
            x = torch.where(over, x - diff, torch.where(under, x + diff, x))
            rounds += 1
        # An angle Gymnasium's loop would take more rounds over (or never leave: inf, or x
        # so large that x - 2 pi == x): into [-pi, pi) by a remainder.
        outside = (x > hi) | (x < lo)
        return torch.where(outside, torch.remainder(x + self._pi, diff).sub_(self._pi), x)


class _DsdtFactors:
    """The per-step, state-independent operands of ``_dsdt`` (each [N] or 0-dim)."""

    __slots__ = ("m1_lc1sq", "l1sq_lc2sq", "two_l1_lc2", "lc2sq", "l1_lc2", "m2_lc2_g", "neg_m2_l1_lc2",
                 "two_m2_l1_lc2", "m1lc1_m2l1_g", "m2_l1_lc2", "den0", "m2", "i1", "i2", "torque")

    def __init__(self, **values: torch.Tensor):
        for name, value in values.items():
            setattr(self, name, value)
