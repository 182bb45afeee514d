"""The hypernetwork agent: generated policy weights per variant, and a critic.

Weights for a batch of variants are generated once and applied by one pure function
(:func:`hyperrl.hypernet.functional_mlp`, batched matmuls). During a rollout each env
column holds up to ``K`` variants (``slots``): its current one and the ones it moves to
when an episode ends (see ``EnvConfig.variant_slots``). :func:`apply_rows` runs a
column's ``T`` observations through its slots' generated weights in one batched pass
and picks each step's output, so a variant's weights are generated and read once per
minibatch instead of once per sample.
"""

from __future__ import annotations

import gymnasium as gym
import torch
from torch import nn

from dataclasses import dataclass

from hyperrl.archs import make_actor
from hyperrl.hypernet import TRAIN_ACT_MODULES, HyperNetwork, functional_mlp
from hyperrl.ppo import Categorical, DiagGaussian, clip_action
from hyperrl.train_config import ModelConfig

__all__ = ["HyperAgent", "ObsNorm", "SlotRows", "RolloutWeights", "apply_rows", "gather_slots", "act"]


@dataclass(frozen=True)
class SlotRows:
    """Which generated-weight rows a block of samples uses.

    Row ``r`` holds the weights of column ``col[r]``'s slot ``slot[r]``; sample ``(m, t)``
    uses row ``sample_row[m, t]``. Generated weights are ``[R, ...]``.
    """

    col: torch.Tensor  # [R] long
    slot: torch.Tensor  # [R] long
    sample_row: torch.Tensor  # [M, T] long

    @staticmethod
    def all_slots(slot: torch.Tensor, num_slots: int) -> "SlotRows":
        """Every (column, slot) pair, R = M*K: branch-free, no host sync (rollout steps)."""
        m = slot.shape[0]
        ar = torch.arange(m, device=slot.device)
        col = ar.repeat_interleave(num_slots)
        sl = torch.arange(num_slots, device=slot.device).repeat(m)
        return SlotRows(col, sl, ar.unsqueeze(1) * num_slots + slot)

    @staticmethod
    def one_each(num: int, device: torch.device) -> "SlotRows":
        """``num`` single samples, each with its own row (M=R=num, T=1)."""
        ar = torch.arange(num, device=device)
        return SlotRows(ar, torch.zeros_like(ar), ar.unsqueeze(1))

    @staticmethod
    def used_slots(slot: torch.Tensor, num_slots: int) -> "SlotRows":
        """Only the pairs some sample uses (one host sync): a column whose episode never
        ended in the rollout costs one weight generation and one pass, not K."""
        m = slot.shape[0]
        used = torch.zeros(m, num_slots, dtype=torch.bool, device=slot.device).scatter_(1, slot, True)
        col, sl = used.nonzero(as_tuple=True)
        row_of = torch.zeros(m, num_slots, dtype=torch.long, device=slot.device)
        row_of[col, sl] = torch.arange(col.numel(), device=slot.device)
        return SlotRows(col, sl, row_of.gather(1, slot))


def apply_rows(
    weights: dict[str, torch.Tensor],  # each [R, ...]
    obs: torch.Tensor,  # [M, T, D]
    rows: SlotRows,
    activation: str,
) -> torch.Tensor:
    """Each sample through its row's generated MLP -> [M, T, out].

    One batched pass over ``[R, T, D]`` (a row sees its column's T observations), then a
    gather picks each sample's output.
    """
    m, t, _ = obs.shape
    if t == 1:  # a rollout step: the 2-D path of functional_mlp is cheaper than a width-1 bmm
        y = functional_mlp(weights, obs[rows.col, 0], activation)  # [R, out]
        return y[rows.sample_row.reshape(-1)].view(m, 1, -1)
    y = functional_mlp(weights, obs[rows.col], activation)  # [R, T, out]
    flat = rows.sample_row * t + torch.arange(t, device=obs.device)  # [M, T]
    return y.reshape(-1, y.shape[-1])[flat.reshape(-1)].view(m, t, -1)


class RolloutWeights:
    """Each env's current generated weights during a rollout.

    ``table`` holds the weights of all N*K slots (row ``n*K + k``); ``current`` the row of
    each env's slot, ``[N, ...]``. When episodes end, :meth:`advance` copies the new slot's
    rows in: only the rows that changed (one host sync: free on CPU), or with
    ``branch_free`` a ``where`` over all rows (no sync: for accelerators; the trainer's
    ``env.sync_free`` decides). A step then reads N weight rows, not N*K.
    """

    def __init__(self, table: dict[str, torch.Tensor], num_envs: int, num_slots: int):
        self.table = {key: w.view(num_envs, num_slots, *w.shape[1:]) for key, w in table.items()}
        self.current = {key: w[:, 0].clone() for key, w in self.table.items()}
        self._cols = torch.arange(num_envs, device=next(iter(table.values())).device)

    def advance(self, done: torch.Tensor, slot: torch.Tensor, branch_free: bool) -> None:
        """done [N] bool: envs whose episode ended; slot [N] long: their slot from now on."""
        if not branch_free:
            idx = done.nonzero().squeeze(1)
            if idx.numel():
                for key, w in self.table.items():
                    self.current[key][idx] = w[idx, slot[idx]]
            return
        for key, w in self.table.items():
            mask = done.view(-1, *([1] * (w.dim() - 2)))
            self.current[key] = torch.where(mask, w[self._cols, slot], self.current[key])


def gather_slots(table: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """table [N, K, F], slot [T, N] -> [T, N, F]: each step's row of its column's table."""
    n, k, f = table.shape
    idx = slot.t().unsqueeze(-1).expand(n, slot.shape[0], f)  # [N, T, F]
    return table.gather(1, idx).transpose(0, 1)


class ObsNorm(nn.Module):
    """Running mean and variance of observations (``model.obs_norm``; the statistics of
    Gymnasium's ``NormalizeObservation`` and SB3's ``VecNormalize``: Chan et al.'s parallel
    update, initial count 1e-4, variance epsilon 1e-8).

    Normalising ``(o - mean) / std`` before a linear layer ``W o + b`` is the layer
    ``(W / std) o + (b - (W / std) mean)``: :meth:`fold` rewrites a generated first layer so,
    and every consumer of generated weights (rollouts, evaluation, adaptation, exports) gets
    a policy on raw observations. Statistics are buffers: saved with the agent, never trained.
    """

    EPS = 1e-8

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    @torch.no_grad()
    def update(self, obs: torch.Tensor) -> None:
        """Add a batch of observations ``[..., D]`` to the statistics (in float64)."""
        x = obs.reshape(-1, obs.shape[-1]).to(torch.float64)
        n = x.shape[0]
        if n == 0:
            return
        mean, var = x.mean(0), x.var(0, unbiased=False)
        c = self.count.to(torch.float64)
        m = self.mean.to(torch.float64)
        tot = c + n
        delta = mean - m
        m2 = self.var.to(torch.float64) * c + var * n + delta.pow(2) * c * n / tot
        self.mean.copy_(m + delta * n / tot)
        self.var.copy_(m2 / tot)
        self.count.copy_(tot)

    def shift_scale(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1 / std) ``[D]`` in ``dtype``."""
        return self.mean.to(dtype), torch.rsqrt(self.var.to(torch.float64) + self.EPS).to(dtype)

    def fold(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Generated weights of an MLP on normalised observations -> the same MLP on raw ones
        (``"0.weight" [B, h, D]`` and ``"0.bias" [B, h]`` rewritten; other entries shared)."""
        w0, b0 = weights["0.weight"], weights["0.bias"]
        mean, inv = self.shift_scale(w0.dtype)
        w = w0 * inv
        out = dict(weights)
        out["0.weight"], out["0.bias"] = w, b0 - (w * mean).sum(-1)
        return out

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        mean, inv = self.shift_scale(obs.dtype)
        return (obs - mean) * inv


class _NormalizeFirst(nn.Module):
    """The MLP critic's input ``[obs, context]`` with the observation columns normalised."""

    def __init__(self, norm: ObsNorm, obs_dim: int):
        super().__init__()
        self.norm = norm
        self.obs_dim = obs_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.norm(x[..., :self.obs_dim]), x[..., self.obs_dim:]], -1)


class HyperAgent(nn.Module):
    """The actor of ``model.arch`` (context -> per-variant policy weights, :mod:`hyperrl.archs`;
    a hypernetwork generating every weight by default) and a critic.

    The critic is an MLP on ``[obs, context]`` (default) or, with ``model.critic: hyper``,
    a second hypernetwork generating a value MLP per variant.
    """

    def __init__(self, obs_dim: int, action_space: gym.spaces.Space, context_dim: int, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.obs_dim = obs_dim
        self.context_dim = context_dim
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:
            self.act_dim = int(action_space.n)
            self.register_buffer("act_low", torch.zeros(0), persistent=False)
            self.register_buffer("act_high", torch.zeros(0), persistent=False)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            self.act_dim = int(action_space.shape[0])
            self.register_buffer("act_low", torch.as_tensor(action_space.low, dtype=torch.float32), persistent=False)
            self.register_buffer("act_high", torch.as_tensor(action_space.high, dtype=torch.float32), persistent=False)
        else:
            raise TypeError(f"unsupported action space {action_space}")
        extra = {}
        extra_init = {}
        if not self.discrete and cfg.log_std == "generated":
            extra = {"log_std": (self.act_dim,)}
            extra_init = {"log_std": cfg.log_std_init}
        # model.obs_norm: one set of statistics, read by the actor's fold and the critic
        self.obs_norm = ObsNorm(obs_dim) if cfg.obs_norm else None
        hyper_kwargs = dict(embed_sizes=cfg.embed_sizes, init=cfg.init, chunk_size=cfg.chunk_size,
                            chunk_embed_dim=cfg.chunk_embed_dim)
        self.actor = make_actor(cfg.arch, context_dim, [obs_dim, *cfg.hidden_sizes, self.act_dim], cfg.activation,
                                embed_sizes=cfg.embed_sizes, adapter_sizes=cfg.adapter_sizes,
                                hyper_kwargs=hyper_kwargs, extra_shapes=extra or None,
                                extra_init=extra_init or None)
        if not self.discrete and cfg.log_std == "learned":
            self.log_std = nn.Parameter(torch.full((self.act_dim,), float(cfg.log_std_init)))
        else:
            self.log_std = None
        if cfg.critic == "hyper":
            self.critic_hyper: HyperNetwork | None = HyperNetwork(
                context_dim, [obs_dim, *cfg.critic_hidden_sizes, 1], activation=cfg.activation,
                out_gain=1.0, **hyper_kwargs)
            self.critic = None
        else:
            self.critic_hyper = None
            layers: list[nn.Module] = []
            sizes = [obs_dim + context_dim, *cfg.critic_hidden_sizes]
            for a, b in zip(sizes[:-1], sizes[1:]):
                lin = nn.Linear(a, b)
                nn.init.orthogonal_(lin.weight, 2**0.5)
                nn.init.zeros_(lin.bias)
                layers += [lin, _activation(cfg.activation)]
            out = _ScalarLinear(sizes[-1], 1)
            nn.init.orthogonal_(out.weight, 1.0)
            nn.init.zeros_(out.bias)
            first = [_NormalizeFirst(self.obs_norm, obs_dim)] if self.obs_norm is not None else []
            self.critic = nn.Sequential(*first, *layers, out)

    def actor_parameters(self) -> list[nn.Parameter]:
        """The hypernetwork (and a learned log-std)."""
        return list(self.actor.parameters()) + ([self.log_std] if self.log_std is not None else [])

    def critic_parameters(self) -> list[nn.Parameter]:
        return list((self.critic if self.critic is not None else self.critic_hyper).parameters())

    # ---- policy -------------------------------------------------------------------
    def condition(self, context: torch.Tensor) -> torch.Tensor:
        """The context the networks see: zeroed for the context-blind ablation."""
        return torch.zeros_like(context) if self.cfg.context == "none" else context

    def policy_weights(self, context: torch.Tensor) -> dict[str, torch.Tensor]:
        """[B, C] -> generated policy weights, each [B, ...] keyed like the target state dict
        (with ``model.obs_norm``, the normalisation folded into the first layer)."""
        w = self.actor(self.condition(context))
        return w if self.obs_norm is None else self.obs_norm.fold(w)

    def log_std_of(self, weights: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The Gaussian policy's log-std: the learned one ``[A]``, or the one generated with
        ``weights`` (``[B, A]``, ``model.log_std: generated``); None for discrete actions."""
        if self.discrete:
            return None
        return self.log_std if self.log_std is not None else weights["log_std"]

    def policy_head(self, weights: dict[str, torch.Tensor], out: torch.Tensor):
        """Network output [..., A] -> action distribution."""
        if self.discrete:
            return Categorical(out)
        return DiagGaussian(out, self.log_std_of(weights))

    def dist_rows(self, weights: dict[str, torch.Tensor], obs: torch.Tensor, rows: SlotRows):
        """obs [M, T, D] -> distribution over [M, T] actions, each sample under its row's weights."""
        out = apply_rows(weights, obs, rows, self.cfg.activation)
        if self.discrete:
            return Categorical(out)
        log_std = self.log_std_of(weights)
        return DiagGaussian(out, log_std if self.log_std is not None else log_std[rows.sample_row])  # [M, T, A]

    def env_action(self, action: torch.Tensor) -> torch.Tensor:
        """The action the env receives: clipped to the Box bounds for continuous actions."""
        return action if self.discrete else clip_action(action, self.act_low, self.act_high)

    # ---- critic -------------------------------------------------------------------
    def critic_weights(self, context: torch.Tensor) -> dict[str, torch.Tensor] | None:
        if self.critic_hyper is None:
            return None
        w = self.critic_hyper(self.condition(context))
        return w if self.obs_norm is None else self.obs_norm.fold(w)

    def value(
        self,
        obs: torch.Tensor,  # [M, T, D]
        context: torch.Tensor,  # [M, T, C] per-step context (MLP critic)
        rows: SlotRows | None = None,  # hyper critic: which generated row each sample uses
        critic_weights: dict[str, torch.Tensor] | None = None,  # hyper critic: each [R, ...]
    ) -> torch.Tensor:
        """State value [M, T]."""
        if self.critic is not None:
            return self.critic(torch.cat([obs, self.condition(context).to(obs.dtype)], -1)).squeeze(-1)
        assert critic_weights is not None and rows is not None
        return apply_rows(critic_weights, obs, rows, self.cfg.activation).squeeze(-1)


class _ScalarLinear(nn.Linear):
    """``nn.Linear(in, 1)`` as a broadcast multiply and sum (same weights, same output).

    Why: autograd's input gradient of a width-1 Linear is an outer-product GEMM
    ``[B, 1] @ [1, in]`` that MKL runs ~10x slower than the equivalent broadcast multiply
    (about 0.4 ms of a 6 ms minibatch at B=4096 in the training profile).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight[0]).sum(-1, keepdim=True) + self.bias


def _activation(name: str) -> nn.Module:
    return TRAIN_ACT_MODULES[name]()


@torch.no_grad()
def act(
    agent: HyperAgent,
    weights: dict[str, torch.Tensor],  # each [B, ...]: one variant per env
    obs: torch.Tensor,  # [B, D]
    deterministic: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Actions [B] (discrete) or [B, A] for one step, one variant per env (unclipped)."""
    out = functional_mlp(weights, obs.unsqueeze(1), agent.cfg.activation).squeeze(1)  # [B, A]
    dist = agent.policy_head(weights, out)
    return dist.mode() if deterministic else dist.sample(generator)
