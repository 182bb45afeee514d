"""The references every mode is compared with, on the same budgets and evaluation:
``scratch``, PPO from a freshly initialised policy of the run's architecture with a fresh
critic (the ``weights`` mode's PPO settings); ``dr-finetune``, the ``dr`` baseline's SB3
policy fine-tuned by the same PPO loop with its own value head."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from hyperrl.adapt.budget import EpisodeBudget
from hyperrl.adapt.config import REFERENCES, AdaptConfig
from hyperrl.adapt.finetune import ppo_loop, rl_settings
from hyperrl.adapt.learners import Learner, SB3Learner, WeightsLearner, WeightsPolicy, space_bounds
from hyperrl.adapt.result import AdaptResult
from hyperrl.errors import HyperrlError
from hyperrl.families import Family
from hyperrl.hypernet import TRAIN_ACT_MODULES, make_target_mlp


def _init_orthogonal(net: nn.Sequential, out_gain: float, gen: torch.Generator) -> None:
    """CleanRL's init: orthogonal weights (gain sqrt(2), ``out_gain`` on the last layer), zero
    biases; the layers draw from ``gen`` in order."""
    lins = [m for m in net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for i, lin in enumerate(lins):
            w = torch.empty_like(lin.weight)
            nn.init.orthogonal_(w, gain=out_gain if i == len(lins) - 1 else math.sqrt(2.0), generator=gen)
            lin.weight.copy_(w)
            lin.bias.zero_()


def fresh_policy(source: Any, seed: int, device: torch.device) -> tuple[WeightsPolicy, nn.Module]:
    """A freshly initialised policy of the run's architecture and a fresh critic, both with
    the run's activation (the critic's module is the one the agent's own critic uses)."""
    agent = source.agent
    sizes = [agent.obs_dim, *agent.cfg.hidden_sizes, agent.act_dim]
    g = torch.Generator().manual_seed(int(seed) + 101)
    mlp = make_target_mlp(sizes, agent.cfg.activation)
    _init_orthogonal(mlp, 0.01, g)
    weights = {k: v.detach().unsqueeze(0).to(device=device, dtype=source.dtype) for k, v in mlp.state_dict().items()}
    log_std = None if agent.discrete else torch.zeros(agent.act_dim, dtype=source.dtype, device=device)
    low, high = space_bounds(source.action_space, source.dtype, torch.device(device))
    pol = WeightsPolicy(weights, log_std, agent.cfg.activation, agent.discrete, low, high)
    layers: list[nn.Module] = []
    dims = [agent.obs_dim, *agent.cfg.critic_hidden_sizes]
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), TRAIN_ACT_MODULES[agent.cfg.activation]()]
    layers.append(nn.Linear(dims[-1], 1))
    critic = nn.Sequential(*layers)
    _init_orthogonal(critic, 1.0, g)
    critic = _Squeeze(critic).to(device=device, dtype=source.dtype)
    return pol, critic


class _Squeeze(nn.Module):
    """``[B, 1] -> [B]``: the value shape the PPO loop expects."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


def adapt_reference(source: Any, reference: str, env_values: torch.Tensor, episodes: int,
                    cfg: AdaptConfig | None = None, seed: int = 0, device: torch.device | str = "cpu",
                    dr_run: Any = None, world: Family | None = None) -> AdaptResult:
    """``scratch`` (PPO from a fresh policy) or ``dr-finetune`` (PPO from the dr baseline's
    SB3 policy) with exactly ``episodes`` episodes on the variant (run in ``world``, default
    the run's family)."""
    cfg = cfg or AdaptConfig()
    dev = torch.device(device)
    family: Family = source.family
    budget = EpisodeBudget(episodes)
    t0 = time.perf_counter()
    if reference == "scratch":
        gamma, lam, rscale = rl_settings(source)

        def make(values: torch.Tensor) -> Learner:
            pol, critic = fresh_policy(source, seed, dev)
            return WeightsLearner(pol, critic, cfg.lr, cfg.critic_lr)

        learner, info = ppo_loop(make, env_values, False, family, env_values, budget, cfg, gamma, lam, rscale,
                                 seed, dev, "scratch", False, world)
        return AdaptResult("scratch", learner.policy(), budget, info, wall_s=time.perf_counter() - t0)
    if reference == "dr-finetune":
        if dr_run is None:
            raise HyperrlError("dr-finetune needs a dr run (--dr RUN_DIR)")
        model = dr_run.model
        gamma, lam = float(model.gamma), float(model.gae_lambda)

        def make_sb3(values: torch.Tensor) -> Learner:
            return SB3Learner(model, cfg.lr)

        learner, info = ppo_loop(make_sb3, env_values, False, family, env_values, budget, cfg, gamma, lam, 1.0,
                                 seed, dev, "dr-finetune", False, world)
        return AdaptResult("dr-finetune", learner, budget, info, wall_s=time.perf_counter() - t0)
    raise HyperrlError(f"unknown reference '{reference}'; expected one of: {', '.join(REFERENCES)}")
