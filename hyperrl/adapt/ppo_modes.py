"""``weights`` and ``hypernet`` modes: PPO on the variant's episodes.

``weights``: the policy generated for the believed values becomes a plain set of weights,
fine-tuned with the run's critic at the believed context. ``hypernet``: a copy of the
hypernetwork and critic is fine-tuned, plus ``reg_coef`` x an L2 penalty toward the
pre-trained hypernetwork's outputs on train contexts, so the rest of the family is kept
(:func:`hyperrl.adapt.scoring.forgetting` measures it).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from hyperrl.adapt.budget import EpisodeBudget
from hyperrl.adapt.config import AdaptConfig
from hyperrl.adapt.finetune import ppo_loop, rl_settings
from hyperrl.adapt.learners import HypernetLearner, Learner, ValueAt, WeightsLearner, generated_policy
from hyperrl.adapt.result import AdaptResult
from hyperrl.families import Family


def ppo_mode_adapt(source: Any, mode: str, env_values: torch.Tensor, belief: torch.Tensor, hidden: bool,
                   budget: EpisodeBudget, cfg: AdaptConfig, seed: int, dev: torch.device, use_sysid: bool,
                   t0: float, world: Family | None = None) -> AdaptResult:
    """``mode`` (``weights`` or ``hypernet``) within ``budget``, starting from the policy
    generated for ``belief`` (or for the identified values when they replace it)."""
    family: Family = source.family
    gamma, lam, rscale = rl_settings(source)
    gen = torch.Generator().manual_seed(int(seed) + 5)
    if mode == "weights":
        def make(values: torch.Tensor) -> Learner:
            ctx = family.context(values.reshape(1, -1)).to(dev, source.dtype)
            critic = ValueAt(source.agent_on(dev), ctx)
            return WeightsLearner(generated_policy(source, values, dev), critic, cfg.lr, cfg.critic_lr)
    else:
        def make(values: torch.Tensor) -> Learner:
            ctx = family.context(values.reshape(1, -1))[0]
            return HypernetLearner(source, ctx, cfg, gen, dev)
    learner, info = ppo_loop(make, belief, hidden, family, env_values, budget, cfg, gamma, lam, rscale, seed,
                             dev, mode, use_sysid, world)
    start = torch.tensor(info["start_values"], dtype=torch.float64)
    ctx = family.context(start.reshape(1, -1))[0]
    res = AdaptResult(mode, learner.policy(), budget, info, ctx, start, wall_s=time.perf_counter() - t0)
    if mode == "hypernet":
        assert isinstance(learner, HypernetLearner)
        res.hypernet_state = {k: v.detach().cpu().clone() for k, v in learner.agent.state_dict().items()}
        res.info["regulariser"] = learner.regulariser()
        res.info["_agent"] = learner.agent  # for the forgetting check (not serialised)
    return res
