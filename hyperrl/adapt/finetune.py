"""PPO on recorded episodes (with the trainer's update, :func:`hyperrl.ppo.ppo_update`): the
loop that the ``weights`` and ``hypernet`` modes and both references share. Each update uses ``episodes_per_update`` episodes taken
from the budget; with identification on, the first batch identifies the parameters and the
learner restarts from them when the belief changes."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from hyperrl.adapt.budget import EpisodeBudget, run_episodes
from hyperrl.adapt.config import ADAPT_SEED, AdaptConfig
from hyperrl.adapt.learners import Learner
from hyperrl.adapt.sysid import identify, mismatch
from hyperrl.episodes import Episodes
from hyperrl.errors import HyperrlError
from hyperrl.families import Family
from hyperrl.ppo import LossOut, NonFiniteUpdate, gae, ppo_loss, ppo_update


def finetune_update(learner: Learner, eps: Episodes, optimizer: torch.optim.Optimizer,
                    groups: list[list[nn.Parameter]], cfg: AdaptConfig, gamma: float, lam: float,
                    reward_scale: float, gen: torch.Generator) -> dict[str, float]:
    """One PPO update (:func:`hyperrl.ppo.ppo_update`, the trainer's) on the recorded
    episodes: ``update_epochs`` epochs of minibatches of ``minibatch_size`` steps. A
    time-limit truncation bootstraps from ``V(final_obs)``; a termination does not. The
    learner's extra loss (the hypernet mode's regulariser) is added to every minibatch's."""
    t_len, n = eps.mask.shape
    flat = lambda x: x.reshape(t_len * n, *x.shape[2:])  # noqa: E731
    with torch.no_grad():
        v = learner.value(flat(eps.obs)).view(t_len, n).to(torch.float64)
        nv = learner.value(flat(eps.final_obs)).view(t_len, n).to(torch.float64)
    m = eps.mask.to(v.device)
    rew = eps.rewards.to(v.device) * reward_scale * m
    adv, ret = gae(rew, v * m, nv * m, eps.terminated.to(v.device) & m, eps.truncated.to(v.device) & m,
                   gamma, lam)
    idx = m.reshape(-1).nonzero().squeeze(1)
    b_obs = flat(eps.obs).to(v.device)[idx]
    b_act = flat(eps.actions).to(v.device)[idx]
    b_logp = flat(eps.logp).to(v.device)[idx].to(torch.float64)
    b_adv, b_ret, b_v = flat(adv)[idx], flat(ret)[idx], flat(v)[idx]
    # Advantages are normalised once over the whole update batch, not per minibatch as in
    # training: a batch here is a few short episodes, and minibatches of 64 of them give
    # noisy statistics (training's minibatches hold thousands of steps).
    if cfg.norm_adv and b_adv.numel() > 1:
        b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-8)
    extras: list[torch.Tensor] = []

    def loss(mb: torch.Tensor) -> LossOut:
        d = learner.dist(b_obs[mb])
        new_logp = d.log_prob(b_act[mb]).to(torch.float64)
        ent = d.entropy()
        ent = ent.to(torch.float64) if ent.dim() else ent.expand(mb.numel()).to(torch.float64)
        new_v = learner.value(b_obs[mb]).to(torch.float64)
        lo = ppo_loss(new_logp, b_logp[mb], b_adv[mb], new_v, b_v[mb], b_ret[mb], ent, cfg.clip_coef,
                      cfg.vf_coef, cfg.ent_coef, clip_vloss=False, norm_adv=False)
        extra = learner.extra_loss()
        if extra is not None:
            lo.loss = lo.loss + extra.to(lo.loss.dtype)
            extras.append(extra.detach())
        return lo

    stats = ppo_update(loss, optimizer, groups, int(idx.numel()), cfg.minibatch_size, cfg.update_epochs,
                       cfg.max_grad_norm, cfg.target_kl, v.device, generator=gen)
    out = {key: float(stats[key].mean()) for key in ("policy", "value", "approx_kl")}
    out["extra"] = float(torch.stack(extras).mean()) if extras else float("nan")
    return out


def _make_optimizer(learner: Learner) -> tuple[torch.optim.Optimizer, list[list[nn.Parameter]]]:
    groups = learner.param_groups()
    opt = torch.optim.Adam([{"params": ps, "lr": lr} for ps, lr in groups], eps=1e-5)
    return opt, [ps for ps, _ in groups]


def ppo_loop(make_learner: Callable[[torch.Tensor], Learner], belief: torch.Tensor, hidden: bool,
             family: Family, env_values: torch.Tensor, budget: EpisodeBudget, cfg: AdaptConfig,
             gamma: float, lam: float, reward_scale: float, seed: int, device: torch.device,
             label: str, use_sysid: bool, world: Family | None = None) -> tuple[Learner, dict[str, Any]]:
    """PPO with ``episodes_per_update`` episodes per update until the budget is spent. With
    ``use_sysid`` the first batch identifies the parameters and, if the belief changes
    (hidden values or a detected mismatch), the learner restarts from them. The episodes run
    in ``world`` (default ``family``, the model the identification fits)."""
    gen = torch.Generator().manual_seed(int(seed) + 17)  # minibatch order (CPU)
    act_gen = torch.Generator(device=device).manual_seed(int(seed) + 19)  # action sampling
    learner = make_learner(belief)
    opt, groups = _make_optimizer(learner)
    info: dict[str, Any] = {"start_values": belief.tolist(), "updates": 0, "identified_values": None,
                            "restarted_from_identified": False, "episode_returns": []}
    first = True
    r = 0
    while budget.remaining > 0:
        n = min(cfg.episodes_per_update, budget.remaining)
        eps = run_episodes(world or family, env_values, learner.step_fn(False, act_gen), n, budget,
                           seed=ADAPT_SEED + 1000 * int(seed) + r, purpose=f"{label} rollout {r}", device=device)
        info["episode_returns"] += [float(x) for x in eps.returns]
        r += 1
        if first and use_sysid:
            first = False
            ident = identify(family, [eps], cfg.sysid_transitions, device)
            if ident is not None:
                info["identified_values"] = ident.values.tolist()
                if hidden or mismatch(ident, belief, cfg.mismatch_ratio):
                    belief = ident.values
                    learner = make_learner(belief)
                    opt, groups = _make_optimizer(learner)
                    info["start_values"] = belief.tolist()
                    info["restarted_from_identified"] = True
                    continue  # that batch came from another policy: identification only
        first = False
        try:
            finetune_update(learner, eps, opt, groups, cfg, gamma, lam, reward_scale, gen)
        except NonFiniteUpdate:
            raise HyperrlError(f"{label}: the PPO update diverged (non-finite loss or weights) after "
                               f"{info['updates']} update(s); try a lower --set lr") from None
        info["updates"] += 1
    return learner, info


def rl_settings(source: Any) -> tuple[float, float, float]:
    """The run's ``(gamma, gae_lambda, reward_scale)``: fine-tuning keeps the returns the
    critic was trained to predict."""
    ppo = source.config.ppo
    return float(ppo.gamma), float(ppo.gae_lambda), float(getattr(ppo, "reward_scale", 1.0))
