"""Zero-shot evaluation of generated policies on fixed parameter values.

Used by training (periodic held-out evaluation) and by ``hyperrl.evaluate``. Any
:class:`~hyperrl.sim.base.VecEnv` works: the batched simulator (fast, on the training
device) or real Gymnasium envs (``backend='gymnasium'``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hyperrl.agent import HyperAgent, act
from hyperrl.families import Family
from hyperrl.sim import make_vec_env

__all__ = ["EpisodeStats", "evaluate_values"]


@dataclass
class EpisodeStats:
    values: torch.Tensor  # [M, P] float64 parameter values
    returns: torch.Tensor  # [M, E] float64 episode returns
    lengths: torch.Tensor  # [M, E] long episode lengths

    @property
    def mean(self) -> torch.Tensor:  # [M]
        return self.returns.mean(1)

    @property
    def std(self) -> torch.Tensor:  # [M]
        return self.returns.std(1, unbiased=False)


@torch.no_grad()
def evaluate_values(
    agent: HyperAgent,
    family: Family,
    values: torch.Tensor,  # [M, P]
    episodes: int,
    seed: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    deterministic: bool = True,
    backend: str = "auto",
) -> EpisodeStats:
    """Run ``episodes`` episodes of every variant at once; each env's first episode counts."""
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1, family.num_params)
    m = values.shape[0]
    rows = values.repeat_interleave(episodes, 0)  # [M*E, P]
    env = make_vec_env(family, rows.shape[0], device=device, dtype=dtype, seed=seed, backend=backend)
    try:
        obs = env.reset(params=rows.to(device=device, dtype=dtype), seed=seed)
        ctx = family.context(rows).to(device=device, dtype=dtype)
        weights = agent.policy_weights(ctx)
        gen = torch.Generator(device=torch.device(device)).manual_seed(seed)
        n = rows.shape[0]
        done = torch.zeros(n, dtype=torch.bool, device=env.device)
        ret = torch.zeros(n, dtype=torch.float64, device=env.device)
        length = torch.zeros(n, dtype=torch.long, device=env.device)
        for t in range(env.max_episode_steps):
            action = act(agent, weights, obs, deterministic, gen)
            out = env.step(agent.env_action(action))
            alive = ~done
            ret += out.reward.to(torch.float64) * alive
            length += alive.long()
            done |= out.terminated | out.truncated
            obs = out.obs
            if t % 32 == 31 and bool(done.all()):  # one host sync every 32 steps
                break
    finally:
        env.close()
    return EpisodeStats(values, ret.view(m, episodes).cpu(), length.view(m, episodes).cpu())
