"""The episode budget and episode collection: every adaptation episode is reserved from one
:class:`EpisodeBudget` (which refuses to overspend before any step runs) and recorded by
:func:`run_episodes`."""

from __future__ import annotations

from typing import Any

import torch

from hyperrl.episodes import Episodes, PolicyStep, run_first_episodes
from hyperrl.errors import HyperrlError
from hyperrl.families import Family


class BudgetExceeded(HyperrlError):
    """An adapter asked for more environment episodes than its budget has left."""


class EpisodeBudget:
    """The one counter every adaptation episode goes through.

    :meth:`take` reserves ``n`` episodes before they are run and refuses (raises
    :class:`BudgetExceeded`) when fewer than ``n`` are left, so an adapter can never use
    more than ``total``. ``log`` records what each reservation was for.
    """

    def __init__(self, total: int):
        if int(total) < 0:
            raise HyperrlError(f"an episode budget must be >= 0, got {total}")
        self.total = int(total)
        self.used = 0
        self.env_steps = 0
        self.log: list[dict[str, Any]] = []

    @property
    def remaining(self) -> int:
        return self.total - self.used

    def take(self, n: int, purpose: str) -> None:
        n = int(n)
        if n < 1:
            raise ValueError(f"take() needs a positive number of episodes, got {n}")
        if n > self.remaining:
            raise BudgetExceeded(f"episode budget exceeded: {purpose} asked for {n} episode(s), "
                                 f"{self.remaining} of {self.total} left")
        self.used += n
        self.log.append({"purpose": purpose, "episodes": n, "steps": 0})

    def add_steps(self, steps: int) -> None:
        self.env_steps += int(steps)
        if self.log:
            self.log[-1]["steps"] += int(steps)

    def __repr__(self) -> str:
        return f"EpisodeBudget(used {self.used} of {self.total}, {self.env_steps} env steps)"


def run_episodes(
    family: Family,
    values: torch.Tensor,  # [P] the variant the episodes run in
    policy: PolicyStep,  # obs [N, D] float32 -> (action, env action, log-prob)
    n: int,
    budget: EpisodeBudget,
    seed: int,
    purpose: str,
    device: torch.device | str = "cpu",
) -> Episodes:
    """Run ``n`` episodes of the variant in parallel (the family's batched simulator, in
    float64, observations handed out as float32 like Gymnasium; or real Gymnasium envs)
    and record them. ``n`` is taken from ``budget`` first."""
    from hyperrl.sim import make_vec_env

    budget.take(n, purpose)
    dev = torch.device(device)
    rows = torch.as_tensor(values, dtype=torch.float64).reshape(1, -1).expand(n, -1).contiguous()
    env = make_vec_env(family, n, device=dev, dtype=torch.float64, seed=int(seed))
    try:
        obs = env.reset(params=rows.to(dev), seed=int(seed))
        # every step checked: the policy's generator is used again by later episodes
        _, _, eps = run_first_episodes(env, obs, policy, record=True, sync_every=1)
    finally:
        env.close()
    budget.add_steps(eps.steps)
    return eps
