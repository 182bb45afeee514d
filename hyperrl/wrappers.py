"""Gymnasium-facing helpers: a family as one ordinary ``gymnasium.Env`` for other tools
(stable-baselines3, user code)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch

from hyperrl.families import Family

__all__ = ["FamilyEnv"]


class FamilyEnv(gym.Wrapper):
    """A real Gymnasium env of ``family`` whose parameters change per episode.

    With ``values`` given, every episode uses those values; otherwise each ``reset`` draws
    fresh values from the train distribution (domain randomisation) with its own seeded
    generator. ``append_context=True`` appends the family's context vector to the
    observation (the 'concat' baseline); ``info['params']`` always holds the values.
    """

    def __init__(
        self,
        family: Family,
        values: Mapping[str, float] | Sequence[float] | torch.Tensor | None = None,
        append_context: bool = False,
        seed: int = 0,
        **make_kwargs: Any,
    ):
        self.family = family
        self.fixed_values = None if values is None else family.values_tensor(values)
        self.generator = torch.Generator().manual_seed(seed)
        first = self.fixed_values if self.fixed_values is not None else family.sample(1, self.generator, dtype=torch.float64)[0]
        super().__init__(family.make_env(first, **make_kwargs))
        self.values = first
        self.append_context = append_context
        if append_context:
            base = self.env.observation_space
            c = family.context_dim
            low = np.concatenate([base.low, np.full(c, -np.inf, dtype=base.dtype)])
            high = np.concatenate([base.high, np.full(c, np.inf, dtype=base.dtype)])
            self.observation_space = gym.spaces.Box(low, high, dtype=base.dtype)

    def _obs(self, obs: np.ndarray) -> np.ndarray:
        if not self.append_context:
            return obs
        ctx = self.family.context(self.values.reshape(1, -1))[0].numpy().astype(obs.dtype)
        return np.concatenate([obs, ctx])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.generator.manual_seed(seed)
        if self.fixed_values is None:
            self.values = self.family.sample(1, self.generator, dtype=torch.float64)[0]
            self.family.apply(self.env, self.values)
        obs, info = self.env.reset(seed=seed, options=options)
        info["params"] = self.family.as_dict(self.values)
        return self._obs(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info["params"] = self.family.as_dict(self.values)
        return self._obs(obs), reward, terminated, truncated, info
