"""Episodes of fixed variants: the one episode loop, and zero-shot evaluation on it.

:func:`run_first_episodes` steps N envs until each has finished its first episode,
summing returns and lengths and, when asked, recording every step (:class:`Episodes`, for
adaptation). :func:`evaluate_values` scores a policy on fixed parameter values with it,
for training's periodic held-out evaluation, ``hyperrl.evaluate``, adaptation and the
benchmarks alike: an *actor factory* receives each env's variant once, as context
``[B, C]`` and raw values ``[B, P]``, and returns a function ``obs [B, D] -> env action``.
Any :class:`~hyperrl.sim.base.VecEnv` runs it: the batched simulator (fast, on the
training device) or real Gymnasium envs (``backend='gymnasium'``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from hyperrl.agent import HyperAgent, act
from hyperrl.families import Family
from hyperrl.sim import BatchedSim, VecEnv, make_vec_env

__all__ = ["HELDOUT_EVAL_SEED", "EpisodeStats", "Episodes", "evaluate_values", "hyper_actor", "run_first_episodes",
           "ActorFactory"]

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


@dataclass
class Episodes:
    """``N`` recorded episodes, time-major ``[T, N, ...]``; ``mask`` marks the steps that
    belong to them (an env that finished early is not observed afterwards)."""

    obs: torch.Tensor  # [T, N, D] float32, as a Gymnasium env returns it
    actions: torch.Tensor  # [T, N] long or [T, N, A]: as sampled (unclipped)
    env_actions: torch.Tensor  # as the env received them
    logp: torch.Tensor  # [T, N]
    rewards: torch.Tensor  # [T, N] float64
    terminated: torch.Tensor  # [T, N] bool
    truncated: torch.Tensor  # [T, N] bool
    final_obs: torch.Tensor  # [T, N, D] the observation each step reached
    mask: torch.Tensor  # [T, N] bool

    @property
    def returns(self) -> torch.Tensor:  # [N]
        return (self.rewards * self.mask).sum(0)

    @property
    def lengths(self) -> torch.Tensor:  # [N]
        return self.mask.sum(0)

    @property
    def steps(self) -> int:
        return int(self.mask.sum())


# obs [N, D] float32 -> (action as sampled, action the env receives, log-prob): what a
# recorded episode keeps of each step
PolicyStep = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def run_first_episodes(env: VecEnv, obs: torch.Tensor, policy: Actor | PolicyStep, record: bool = False,
                       sync_every: int = 32) -> tuple[torch.Tensor, torch.Tensor, Episodes | None]:
    """Step ``env`` from ``obs`` until every env has finished its first episode (or the time
    limit) -> (returns [N] float64, lengths [N] long, the recorded :class:`Episodes` or None).

    ``policy`` maps observations to env actions, or with ``record`` to ``(action, env action,
    log-prob)`` (:data:`PolicyStep`) and sees float32 observations, as a Gymnasium env hands
    them out. Whether all envs are done is read every ``sync_every`` steps (one host sync
    each); the steps after an env's first episode are masked out of everything. A policy
    that draws from a generator it keeps using afterwards needs ``sync_every=1``, so that no
    step runs beyond the last episode's end.
    """
    n = env.num_envs
    done = torch.zeros(n, dtype=torch.bool, device=env.device)
    ret = torch.zeros(n, dtype=torch.float64, device=env.device)
    length = torch.zeros(n, dtype=torch.long, device=env.device)
    rec: dict[str, list[torch.Tensor]] = {key: [] for key in ("obs", "a", "ea", "lp", "r", "te", "tr", "fo", "m")}
    for t in range(env.max_episode_steps):
        if record:
            o32 = obs.to(torch.float32)
            action, env_action, logp = policy(o32)
        else:
            env_action = policy(obs)
        out = env.step(env_action)
        alive = ~done
        ret += out.reward.to(torch.float64) * alive
        length += alive.long()
        if record:
            for key, x in (("obs", o32), ("a", action), ("ea", env_action), ("lp", logp.to(torch.float32)),
                           ("r", out.reward.to(torch.float64) * alive), ("te", out.terminated & alive),
                           ("tr", out.truncated & alive), ("fo", out.final_obs.to(torch.float32)), ("m", alive)):
                rec[key].append(x)
        done |= out.terminated | out.truncated
        obs = out.obs
        if t % sync_every == sync_every - 1 and bool(done.all()):
            break
    if not record:
        return ret, length, None
    steps = int(torch.stack(rec["m"]).any(1).nonzero().max()) + 1  # drop the steps after every end
    eps = Episodes(*(torch.stack(rec[key][:steps]) for key in ("obs", "a", "ea", "lp", "r", "te", "tr", "fo", "m")))
    return ret, length, eps


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
        ret, length, _ = run_first_episodes(env, obs, policy)
    finally:
        env.close()
    return EpisodeStats(values, ret.view(m, episodes).cpu(), length.view(m, episodes).cpu())
