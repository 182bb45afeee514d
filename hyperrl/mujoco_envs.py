"""Gymnasium MuJoCo envs hyperrl registers (imported only when one is made: it needs ``mujoco``).

``hyperrl/HalfCheetahVel-v5``: :class:`HalfCheetahVelEnv`, meta-RL's cheetah-vel task
(Finn et al. 2017; garage's ``HalfCheetahVelEnv``, VariBAD's ``HalfCheetahVelEnv``) on
Gymnasium's ``HalfCheetah-v5``: run at ``target_velocity`` m/s. Reward
``-|v_x - target_velocity| - 0.05 * ||a||^2`` (garage and VariBAD: ``-1.0 * |v - v*|`` and
``0.5 * 1e-1 * sum(a^2)``); everything else (model, observation, reset, frame skip) is
``HalfCheetah-v5``'s. ``target_velocity`` is a plain attribute, so a family varies it like
any other (``params.target_velocity``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

__all__ = ["HalfCheetahVelEnv"]


class HalfCheetahVelEnv(HalfCheetahEnv):
    """HalfCheetah-v5 rewarded for running at ``target_velocity`` (m/s, forward positive)."""

    target_velocity: float = 1.0

    def __init__(self, *args: Any, **kwargs: Any):
        """HalfCheetah-v5's arguments, with ``ctrl_cost_weight`` 0.05 unless given (it is
        the 5th positional argument: ``EzPickle`` rebuilds a copy from the positional form)."""
        if len(args) < 5:
            kwargs.setdefault("ctrl_cost_weight", 0.05)
        super().__init__(*args, **kwargs)

    def _get_rew(self, x_velocity: float, action: np.ndarray) -> tuple[float, dict[str, float]]:
        """``-w_f * |v_x - target| - w_c * ||a||^2`` and its parts (``info``'s keys as v5's)."""
        forward_reward = -self._forward_reward_weight * abs(x_velocity - self.target_velocity)
        ctrl_cost = self.control_cost(action)
        return forward_reward - ctrl_cost, {"reward_forward": forward_reward, "reward_ctrl": -ctrl_cost}
