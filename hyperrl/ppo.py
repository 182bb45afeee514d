"""Small, separately tested pieces of PPO: GAE, the clipped loss, the update loop, action
distributions. :func:`ppo_update` is the one PPO update: training and every PPO-based
adaptation mode call it with their own minibatch loss.

Conventions: rollout tensors are time-major ``[T, N]``. With same-step autoreset a step's
successor is ``final_obs`` (the observation the step reached, before any reset), so the
value to bootstrap from is ``V(final_obs_t)`` evaluated with the context of the variant
that produced it. A time-limit truncation bootstraps from it; a termination does not
(SB3 issue #633, Pardo et al. 2018 "Time Limits in Reinforcement Learning").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["gae", "ppo_loss", "ppo_update", "LossOut", "NonFiniteUpdate", "Categorical", "DiagGaussian",
           "clip_action", "explained_variance"]


def gae(
    rewards: torch.Tensor,  # [T, N]
    values: torch.Tensor,  # [T, N] V(s_t)
    next_values: torch.Tensor,  # [T, N] V(successor of s_t): V(final_obs_t)
    terminated: torch.Tensor,  # [T, N] bool
    truncated: torch.Tensor,  # [T, N] bool
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) -> (advantages, returns), [T, N].

    ``delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t``: a truncated
    step keeps its bootstrap, a terminated one drops it. The trace stops at any episode
    end (terminated or truncated), so no advantage leaks across an autoreset.
    """
    not_term = (~terminated).to(values.dtype)
    not_done = (~(terminated | truncated)).to(values.dtype)
    deltas = rewards + gamma * not_term * next_values - values
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[0])
    for t in range(values.shape[0] - 1, -1, -1):
        last = deltas[t] + gamma * lam * not_done[t] * last
        adv[t] = last
    return adv, adv + values


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var[target - pred] / Var[target]; nan when the target is constant."""
    var = target.var()
    return float("nan") if float(var) == 0.0 else float(1.0 - (target - pred).var() / var)


@dataclass
class LossOut:
    loss: torch.Tensor
    policy: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clipfrac: torch.Tensor


def ppo_loss(
    new_logprob: torch.Tensor,  # [B]
    old_logprob: torch.Tensor,  # [B]
    advantages: torch.Tensor,  # [B]
    new_value: torch.Tensor,  # [B]
    old_value: torch.Tensor,  # [B]
    returns: torch.Tensor,  # [B]
    entropy: torch.Tensor,  # [B]
    clip_coef: float,
    vf_coef: float,
    ent_coef: float,
    clip_vloss: bool = True,
    norm_adv: bool = True,
) -> LossOut:
    """Clipped surrogate + (optionally clipped) value loss - entropy bonus (CleanRL's form)."""
    logratio = new_logprob - old_logprob
    ratio = logratio.exp()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - logratio).mean()  # Schulman's k3 estimator
        clipfrac = ((ratio - 1.0).abs() > clip_coef).float().mean()
    if norm_adv and advantages.numel() > 1:  # one sample has no spread to normalise by
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean()
    if clip_vloss:
        v_clipped = old_value + (new_value - old_value).clamp(-clip_coef, clip_coef)
        v_loss = 0.5 * torch.max((new_value - returns) ** 2, (v_clipped - returns) ** 2).mean()
    else:
        v_loss = 0.5 * ((new_value - returns) ** 2).mean()
    ent = entropy.mean()
    loss = pg - ent_coef * ent + vf_coef * v_loss
    return LossOut(loss, pg, v_loss, ent, approx_kl, clipfrac)


class NonFiniteUpdate(RuntimeError):
    """A PPO update produced a non-finite loss, gradient or parameter (``epoch`` says when)."""

    def __init__(self, epoch: int):
        super().__init__(f"non-finite loss, gradient or parameters in epoch {epoch}")
        self.epoch = epoch


LOSS_STATS = tuple(f.name for f in fields(LossOut) if f.name != "loss")  # policy, value, entropy, ...


def ppo_update(
    minibatch_loss: Callable[[torch.Tensor], LossOut],
    optimizer: torch.optim.Optimizer,
    clip_groups: Sequence[Sequence[nn.Parameter]],
    num_items: int,
    minibatch_size: int,
    epochs: int,
    max_grad_norm: float,
    target_kl: float | None,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One PPO update: ``epochs`` passes over ``num_items`` items in shuffled minibatches of
    ``minibatch_size``; ``minibatch_loss(indices)`` returns the :class:`LossOut` of those
    items (what an item is, an env column or a sample, is the caller's). Each parameter
    group's gradient norm is clipped to ``max_grad_norm`` separately, so a large value-loss
    gradient cannot shrink the policy's step.

    After each epoch (one host sync): a non-finite loss, gradient or parameter raises
    :class:`NonFiniteUpdate`, and with ``target_kl`` the update stops once the epoch's mean
    approx-KL exceeds it (early stopping as in Schulman et al.'s PPO implementations).
    The shuffle draws from ``generator`` (torch's global RNG when None).

    Returns every minibatch's statistics, ``{"policy": [M], "value": [M], ...}`` (tensors on
    the device: reading them is the caller's sync).
    """
    stats: dict[str, list[torch.Tensor]] = {key: [] for key in LOSS_STATS}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    bad_grad = torch.zeros((), dtype=torch.bool, device=device)
    for epoch in range(epochs):
        if generator is None:
            perm = torch.randperm(num_items, device=device)
        else:
            perm = torch.randperm(num_items, generator=generator, device=generator.device).to(device)
        first = len(stats["policy"])
        for mb in perm.split(minibatch_size):
            lo = minibatch_loss(mb)
            optimizer.zero_grad(set_to_none=True)
            lo.loss.backward()
            for group in clip_groups:
                norm = torch.nn.utils.clip_grad_norm_(group, max_grad_norm)
                bad_grad |= ~torch.isfinite(norm)
            optimizer.step()
            for key in stats:
                stats[key].append(getattr(lo, key).detach())
        losses = torch.stack(stats["policy"][first:] + stats["value"][first:])
        finite = torch.isfinite(losses).all() & ~bad_grad
        finite &= torch.stack([torch.isfinite(p).all() for p in params]).all()
        if not bool(finite):
            raise NonFiniteUpdate(epoch)
        if target_kl is not None and float(torch.stack(stats["approx_kl"][first:]).mean()) > target_kl:
            break
    return {key: torch.stack(v) for key, v in stats.items()}


def clip_action(action: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A continuous action clipped elementwise to a Box's ``[low, high]``: what the env receives.
    The Gaussian policy samples unbounded actions and is trained on those (their log-prob),
    so only the copy sent to the env is clipped (as SB3 does)."""
    return torch.max(torch.min(action, high.to(action.dtype)), low.to(action.dtype))


class Categorical:
    """Categorical over logits ``[..., A]``; sampling by Gumbel-max (one rand, no multinomial)."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits - logits.logsumexp(-1, keepdim=True)  # normalised log-probs

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        u = torch.rand(self.logits.shape, generator=generator, device=self.logits.device,
                       dtype=self.logits.dtype)
        tiny = torch.finfo(u.dtype).tiny
        gumbel = -torch.log((-torch.log(u.clamp(tiny, 1.0 - 1e-7))).clamp_min(tiny))
        return (self.logits + gumbel).argmax(-1)

    def mode(self) -> torch.Tensor:
        return self.logits.argmax(-1)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        return self.logits.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.logits.exp() * self.logits).sum(-1)


class DiagGaussian:
    """Diagonal Gaussian over ``[..., act_dim]``.

    The env receives the sample clipped to the action bounds (Gymnasium's Pendulum clips
    the torque itself as well); log-probs are of the unclipped sample, which is what was
    drawn, so the PPO ratio stays exact (CleanRL's choice; a tanh squash would need the
    change-of-variables term instead).
    """

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor):
        self.mean = mean
        self.log_std = log_std.expand_as(mean)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device,
                            dtype=self.mean.dtype)
        return self.mean + self.log_std.exp() * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        z = (action - self.mean) * torch.exp(-self.log_std)
        return (-0.5 * z.pow(2) - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (self.log_std + 0.5 * (1.0 + math.log(2 * math.pi))).sum(-1)
