"""Zero-shot evaluation of policies on fixed parameter values.

Used by training (periodic held-out evaluation), by ``hyperrl.evaluate`` and by the
benchmarks, for every method alike: an *actor factory* receives each env's variant once,
as context ``[B, C]`` and raw values ``[B, P]``, and returns a function
``obs [B, D] -> env action``. Any
:class:`~hyperrl.sim.base.VecEnv` runs it: the batched simulator (fast, on the training
device) or real Gymnasium envs (``backend='gymnasium'``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from hyperrl.agent import HyperAgent, act
from hyperrl.families import Family
from hyperrl.sim import BatchedSim, make_vec_env

__all__ = ["HELDOUT_EVAL_SEED", "EpisodeStats", "evaluate_values", "hyper_actor", "ActorFactory"]

HELDOUT_EVAL_SEED = 10_000  # held-out evaluation k of a run resets env i with seed HELDOUT_EVAL_SEED + k + i

Actor = Callable[[torch.Tensor], torch.Tensor]  # obs [B, D] -> env action [B] or [B, A]
ActorFactory = Callable[[torch.Tensor, torch.Tensor], Actor]  # (context [B, C], values [B, P]) -> actor


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


def hyper_actor(agent: HyperAgent, deterministic: bool = True, seed: int = 0) -> ActorFactory:
    """Actor factory for a hypernetwork agent: weights generated once per variant."""

    def factory(context: torch.Tensor, values: torch.Tensor | None = None) -> Actor:
        with torch.no_grad():
            weights = agent.policy_weights(context)
        gen = torch.Generator(device=context.device).manual_seed(seed)
        return lambda obs: agent.env_action(act(agent, weights, obs, deterministic, gen))

    return factory


@torch.no_grad()
def evaluate_values(
    actor: ActorFactory | HyperAgent,
    family: Family,
    values: torch.Tensor,  # [M, P]
    episodes: int,
    seed: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    deterministic: bool = True,
    backend: str = "auto",
    gymnasium_resets: bool = False,
) -> EpisodeStats:
    """Run ``episodes`` episodes of every variant at once; each env's first episode counts.

    ``actor`` is an :data:`ActorFactory` or a :class:`HyperAgent` (wrapped by
    :func:`hyper_actor` with ``deterministic``). Env ``i`` (variant ``i // episodes``) is
    reset with seed ``seed + i`` on the Gymnasium backend. ``gymnasium_resets=True`` makes a
    batched simulator start from exactly those Gymnasium initial states (instead of its own
    draws), so with ``dtype=torch.float64`` both backends give the same returns (up to float
    rounding, which a long balancing episode can amplify).
    """
    if isinstance(actor, HyperAgent):
        actor = hyper_actor(actor, deterministic, seed)
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1, family.num_params)
    family.validate(values)
    m = values.shape[0]
    rows = values.repeat_interleave(episodes, 0)  # [M*E, P]
    env = make_vec_env(family, rows.shape[0], device=device, dtype=dtype, seed=seed, backend=backend)
    try:
        if gymnasium_resets and isinstance(env, BatchedSim):
            start = type(env).gymnasium_initial_states(seed, rows.shape[0])
            obs = env.reset(params=rows.to(device=device, dtype=dtype), seed=seed, initial_state=start)
        else:
            obs = env.reset(params=rows.to(device=device, dtype=dtype), seed=seed)
        policy = actor(family.context(rows).to(device=device, dtype=dtype), rows)
        n = rows.shape[0]
        done = torch.zeros(n, dtype=torch.bool, device=env.device)
        ret = torch.zeros(n, dtype=torch.float64, device=env.device)
        length = torch.zeros(n, dtype=torch.long, device=env.device)
        for t in range(env.max_episode_steps):
            out = env.step(policy(obs))
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
