"""Gymnasium-facing helpers: a family as one ordinary ``gymnasium.Env`` for other tools
(stable-baselines3, user code)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch

from hyperrl.families import Family

__all__ = ["FamilyEnv", "context_observation_space"]


def context_observation_space(base: gym.spaces.Box, context_dim: int) -> gym.spaces.Box:
    """``base`` (a 1-D Box) with ``context_dim`` unbounded coordinates appended: the
    observation of a policy that sees the family's context vector after the env's own."""
    low = np.concatenate([base.low, np.full(context_dim, -np.inf, dtype=base.dtype)])
    high = np.concatenate([base.high, np.full(context_dim, np.inf, dtype=base.dtype)])
    return gym.spaces.Box(low, high, dtype=base.dtype)


class FamilyEnv(gym.Wrapper):
    """A real Gymnasium env of ``family`` whose parameters change per episode.

    With ``values`` given, every episode uses those values; otherwise each ``reset`` draws
    fresh values from the train distribution (domain randomisation) with its own generator,
    seeded with ``seed`` (``None``: fresh entropy, as Gymnasium seeds an env never given a
    seed) and re-seeded by ``reset(seed=...)``. ``append_context=True`` appends the family's context vector to the
    observation (the 'concat' baseline); ``info['params']`` always holds the values.
    """

    def __init__(
        self,
        family: Family,
        values: Mapping[str, float] | Sequence[float] | torch.Tensor | None = None,
        append_context: bool = False,
        seed: int | None = 0,
        **make_kwargs: Any,
    ):
        self.family = family
        self.fixed_values = None if values is None else family.values_tensor(values)
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))
        first = self.fixed_values if self.fixed_values is not None else family.sample(1, self.generator, dtype=torch.float64)[0]
        super().__init__(family.make_env(first, **make_kwargs))
        self.values = first
        self.append_context = append_context
        if append_context:
            self.observation_space = context_observation_space(self.env.observation_space, family.context_dim)

    def _obs(self, obs: np.ndarray) -> np.ndarray:
        if not self.append_context:
            return obs
        ctx = self.family.context(self.values.reshape(1, -1))[0].numpy().astype(obs.dtype)
        return np.concatenate([obs, ctx])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.generator.manual_seed(int(seed))
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
