"""Few-episode adaptation of a trained hypernetwork run to one variant.

    python -m hyperrl.adapt RUN_DIR --values masspole=0.9 [--episodes K] [--mode context|weights|hypernet|sim|all]
        [--hidden] [--seed N] [--device auto|cpu|cuda] [--dr DR_RUN_DIR] [--no-references]
        [--budgets 0,1,2,5,10] [--eval-episodes E] [--name NAME] [--force]
        [--true-values NAME=V ...] [--checkpoint best|latest] [--set KEY=VALUE ...] [--threads T]

The episodes run in the family's real dynamics (its batched simulator, or real Gymnasium
envs for a family without one). **Every** episode the adapter steps, including an episode
spent trying a candidate context or one used only to identify the parameters, goes through
one :class:`EpisodeBudget` and counts toward ``K``; asking for more than is left raises
:class:`BudgetExceeded` before any step runs. Evaluation episodes (the reported returns)
use other seeds and do not count.

Modes (``--mode``; ``all`` runs the four):

* ``context`` (default): the hypernetwork is frozen; only the context vector, a handful of
  numbers, is searched. Each episode evaluates one candidate context (deterministic
  actions). The search space is the context of physically valid values (each magnitude
  feature min-max scaled so the train range is [-1, 1]; a signed parameter's sign feature
  is ±1 and both signs are searched when the sign is unknown). Candidates, in order: the
  context of the believed values (the given values, or with ``--hidden`` the centre of the
  train distribution), the nearest in-train-range context when that differs, the train
  centre, then a sequential cross-entropy search: each new candidate is drawn from a
  Gaussian around the mean of the best-returning candidates so far (elite fraction
  ``elite_frac``), its spread shrinking from ``sigma`` by ``sigma_decay`` per draw. Racing:
  when several candidates share the best mean return (CartPole's returns saturate at the
  time limit) the least-evaluated of them is run again, up to ``race_evals`` episodes each.
  A candidate's k-th episode starts from the k-th common seeded initial state (common
  random numbers), so candidates compare on the same starts. The policy kept is the
  candidate with the best mean return (ties: the most evaluated, then the least outside the
  train range, where the hypernetwork was trained, then the one nearest the believed
  context).
* ``weights``: the policy generated for the believed values becomes a plain set of
  weights (leaf tensors) fine-tuned directly with PPO, ``episodes_per_update`` episodes per
  update; the run's critic, at the believed context, is fine-tuned alongside.
* ``hypernet``: a copy of the hypernetwork and critic is fine-tuned with PPO on the
  variant's episodes, plus ``reg_coef`` x an L2 penalty (relative to each tensor's scale)
  between the generated weights and the pre-trained hypernetwork's on contexts drawn from
  the train distribution, so the rest of the family is not forgotten (checked after the
  budget-K run on the interpolation held-out set: ``family_interpolation_return``
  ``{before, after}`` in its curve point).

* ``sim`` (sim-to-real style, families with a batched simulator): episode 1 runs the
  zero-shot policy; its transitions identify the parameters (given values are kept unless
  they predict the physics ``mismatch_ratio`` times worse); a copy of the agent is then
  trained further by ``hyperrl.train`` (the run's config, fresh optimiser, ``sim_steps``
  steps at ``sim_lr_scale`` x its learning rate) on simulated variants within
  ``+-sim_spread`` of the identified values; simulated steps cost no episodes. Episodes
  2..K run the fine-tuned policy in the real env (the first from the zero-shot episode's
  start), and it is kept unless it does worse than the zero-shot episode both from that
  shared start and clearly on average (mean + 2 standard errors below it). Its cost is
  compute, and its result is only as good as the simulator: in hyperrl's own benchmarks the
  simulator *is* the target env, so this mode shows what a perfect model gives, not
  few-episode sample efficiency.

System identification (``identify``, on by default, families with a batched simulator):
the transitions (s, a, s') the adapter has recorded are replayed one step through the
batched simulator for a grid of candidate parameter values (refined coarse to fine
around the best), and the values with the smallest normalised prediction error are the
*identified* values. It costs no episodes: it reuses what was recorded. With ``--hidden``
the identified values replace the prior belief; otherwise they replace the given values
only when those predict the transitions ``mismatch_ratio`` times worse (the user's values
were wrong). In context mode identification runs after every episode and re-centres the
search; in the PPO modes the first batch is used for it and, if the belief changed, PPO
starts from the policy generated for the identified values (that batch, collected with
another policy, is not used for the update).

References (same budgets, same evaluation): ``scratch``, PPO from a freshly initialised
policy of the same architecture with a fresh critic (same PPO settings as ``weights``);
``dr-finetune``, the stable-baselines3 ``dr`` baseline (``--dr RUN_DIR``) fine-tuned with
the same PPO loop (its own value head) on the variant; skipped, and said so, without
``--dr``.

Outputs: for each budget ``b`` in 0, 1, 2, 5, 10 (those up to K, plus K itself) an
independent adaptation with exactly ``b`` episodes is run and its policy evaluated on
``--eval-episodes`` fresh episodes (``b = 0``: the zero-shot policy). Per mode,
``RUN_DIR/adapt/<name>/`` holds ``run.json`` (method ``adapted``), ``family.yaml``,
``metrics.json`` (env steps, wall-clock, returns per budget for every mode and
reference), ``policy.pt`` (the adapted policy of the budget-K run), ``returns_vs_episodes.png``
(one line per mode and reference) and TensorBoard scalars ``adapt/<line>/return_mean``
(step = episodes used). The folder is written under a temporary name and renamed, and
nothing else in RUN_DIR is touched. ``hyperrl.load`` reads it (see :class:`AdaptedRun`);
``python -m hyperrl.evaluate RUN_DIR/adapt/<name> --values ...`` evaluates it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from hyperrl.runs import Values, read_metrics, read_run_info
from hyperrl.config import Checked, ConfigError, apply_overrides, opt
from hyperrl.errors import HyperrlError
from hyperrl.episodes import Actor, ActorFactory
from hyperrl.evaluate import OUTPUT_NAME_MAX, OUTPUT_NAME_RE, check_output_name
from hyperrl.families import Family, load_family
from hyperrl.fileio import check_writable, publish_dir, refuse_existing
from hyperrl.hypernet import functional_mlp, make_target_mlp
from hyperrl.ppo import Categorical, DiagGaussian, gae, ppo_loss
from hyperrl.seeding import MAX_SEED

__all__ = [
    "MODES",
    "REFERENCES",
    "DEFAULT_BUDGETS",
    "AdaptConfig",
    "BudgetExceeded",
    "EpisodeBudget",
    "Episodes",
    "run_episodes",
    "Identification",
    "identify",
    "WeightsPolicy",
    "adapt_mode",
    "adapt_reference",
    "evaluate_policy",
    "adapt",
    "AdaptedRun",
    "load_adapted_run",
    "main",
]

MODES = ("context", "weights", "hypernet", "sim")
REFERENCES = ("scratch", "dr-finetune")
DEFAULT_BUDGETS = (0, 1, 2, 5, 10)
EVAL_SEED = 20_000  # evaluation episodes: env i reset with Gymnasium seed EVAL_SEED + i
ADAPT_SEED = 500_000  # adaptation episodes: simulator seeds from here (never an evaluation seed)
SIM_CHECK_SEED = 700_000  # sim mode: the simulated comparison's starts (neither of the above)
POLICY_FILE = "policy.pt"
FORMAT = 1


# ======================================================================================
# Settings
# ======================================================================================
@dataclass(frozen=True)
class AdaptConfig(Checked):
    """Adaptation settings (``--set KEY=VALUE`` on the command line), loaded like the
    training config (:func:`hyperrl.config.apply_overrides`: unknown keys, wrong types and
    out-of-range values are refused, each range declared with its key below)."""

    # context search
    sigma: float = opt(0.5, "initial std of the context search, in context units (train range = [-1, 1])",
                       gt=0.0)
    sigma_min: float = opt(0.05, "smallest std of the context search", min=0.0)
    sigma_decay: float = opt(0.8, "context-search std factor per candidate drawn", gt=0.0, max=1.0)
    elite_frac: float = opt(0.3, "fraction of the tried candidates the cross-entropy draws centre on",
                            gt=0.0, max=1.0)
    crn: bool = opt(True, "a candidate's k-th episode starts from the k-th common seeded initial state")
    race_evals: int = opt(2, "candidates tied for the best mean are re-evaluated up to this many episodes", min=1)
    # system identification
    identify: bool = opt(True, "identify the parameters from the recorded transitions (batched simulator)")
    mismatch_ratio: float = opt(4.0, "given values are replaced when they predict this many times worse",
                                min=1.0)
    sysid_transitions: int = opt(512, "at most this many recorded transitions are replayed", min=1)
    # PPO (weights, hypernet and the references)
    episodes_per_update: int = opt(1, "episodes per PPO update", min=1)
    lr: float = opt(1e-3, "learning rate: weights mode, scratch and dr-finetune policy parameters", gt=0.0)
    hypernet_lr: float = opt(1e-4, "learning rate of the hypernetwork (hypernet mode)", gt=0.0)
    critic_lr: float = opt(1e-3, "learning rate of the critic", gt=0.0)
    update_epochs: int = opt(10, "epochs per PPO update", min=1)
    minibatch_size: int = opt(64, "PPO minibatch size (samples)", min=1)
    clip_coef: float = opt(0.2, "PPO ratio clip", gt=0.0)
    ent_coef: float = opt(0.0, "entropy bonus coefficient", min=0.0)
    vf_coef: float = opt(0.5, "value loss coefficient", min=0.0)
    max_grad_norm: float = opt(0.5, "gradient norm clip (per parameter group)", gt=0.0)
    target_kl: float | None = opt(0.01, "stop an update's epochs when the mean approx. KL exceeds this "
                                  "(null: never)", gt=0.0)
    norm_adv: bool = opt(True, "normalise advantages per update batch")
    # hypernet mode: regulariser toward the pre-trained hypernetwork
    reg_coef: float = opt(1.0, "hypernet mode: weight of the L2 penalty toward the pre-trained outputs",
                          min=0.0)
    reg_contexts: int = opt(16, "hypernet mode: train contexts per gradient step (from a pool of 8x as many)",
                            min=1)
    # sim mode: fine-tune in the family's simulator at the identified parameters
    sim_steps: int = opt(2_000_000, "sim mode: simulated env steps (they cost no episodes of the real env)",
                         min=1)
    sim_lr_scale: float = opt(1.0, "sim mode: fraction of the run's learning rate (annealed to 0)", gt=0.0)
    sim_spread: float = opt(0.05, "sim mode: simulated variants drawn within +-this fraction of each "
                            "identified value", min=0.0, max=0.9)
    sim_check_episodes: int = opt(64, "sim mode: simulated episodes (free) on which the fine-tuned policy "
                                  "must beat the zero-shot one at the identified values", min=1)
    check_forgetting: bool = opt(True, "evaluate the interpolation held-out set before/after (hypernet mode)")

    @classmethod
    def from_overrides(cls, items: Sequence[str] | None) -> "AdaptConfig":
        try:
            return apply_overrides(cls(), items)
        except ConfigError as e:
            raise HyperrlError(f"--set: {e}") from None


# ======================================================================================
# Budget and episodes
# ======================================================================================
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


PolicyStep = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _device_of(device: torch.device | str) -> torch.device:
    return torch.device(device)


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
    dev = _device_of(device)
    rows = torch.as_tensor(values, dtype=torch.float64).reshape(1, -1).expand(n, -1).contiguous()
    env = make_vec_env(family, n, device=dev, dtype=torch.float64, seed=int(seed))
    rec: dict[str, list[torch.Tensor]] = {k: [] for k in ("obs", "a", "ea", "lp", "r", "te", "tr", "fo", "m")}
    try:
        obs = env.reset(params=rows.to(dev), seed=int(seed))
        done = torch.zeros(n, dtype=torch.bool, device=env.device)
        for _ in range(env.max_episode_steps):
            o32 = obs.to(torch.float32)
            action, env_action, logp = policy(o32)
            out = env.step(env_action)
            alive = ~done
            rec["obs"].append(o32)
            rec["a"].append(action)
            rec["ea"].append(env_action)
            rec["lp"].append(logp.to(torch.float32))
            rec["r"].append(out.reward.to(torch.float64) * alive)
            rec["te"].append(out.terminated & alive)
            rec["tr"].append(out.truncated & alive)
            rec["fo"].append(out.final_obs.to(torch.float32))
            rec["m"].append(alive)
            done = done | out.terminated | out.truncated
            obs = out.obs
            if bool(done.all()):
                break
    finally:
        env.close()
    eps = Episodes(*(torch.stack(rec[k]) for k in ("obs", "a", "ea", "lp", "r", "te", "tr", "fo", "m")))
    budget.add_steps(eps.steps)
    return eps


# ======================================================================================
# Values <-> context coordinates
# ======================================================================================
def _prior_values(family: Family) -> torch.Tensor:
    """[P]: the centre of the train distribution in context space (magnitude feature 0,
    positive sign): the belief when the values are hidden."""
    return _z_to_values(family, torch.zeros(family.num_params, dtype=torch.float64),
                        torch.ones(family.num_params, dtype=torch.float64))


def _values_to_z(family: Family, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., P] values -> (magnitude context features [..., P], signs [..., P] (+1 unsigned))."""
    v = torch.as_tensor(values, dtype=torch.float64)
    zs, ss = [], []
    for j, p in enumerate(family.params):
        c = p.to_context(v[..., j])
        if p.signed:
            ss.append(torch.where(c[..., 0] < 0, -1.0, 1.0).to(torch.float64))
            zs.append(c[..., 1])
        else:
            ss.append(torch.ones_like(v[..., j]))
            zs.append(c[..., 0])
    return torch.stack(zs, -1), torch.stack(ss, -1)


def _z_range(family: Family) -> tuple[torch.Tensor, torch.Tensor]:
    """[P] lowest and highest magnitude feature of physically valid values."""
    lo = torch.tensor([p.bounds[0] for p in family.params], dtype=torch.float64)
    hi = torch.tensor([p.bounds[1] for p in family.params], dtype=torch.float64)
    return _values_to_z(family, lo)[0], _values_to_z(family, hi)[0]


def _z_to_values(family: Family, z: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_values_to_z` (magnitudes clamped to the physical bounds)."""
    z = torch.as_tensor(z, dtype=torch.float64)
    out = []
    for j, p in enumerate(family.params):
        lo, hi = p.context_range()
        scaled = (z[..., j] + 1.0) / 2.0 * max(hi - lo, 1e-12) + lo
        mag = torch.exp(scaled) if p.context == "log" else scaled
        mag = mag.clamp(p.bounds[0], p.bounds[1])
        out.append(mag * sign[..., j] if p.signed else mag)
    return torch.stack(out, -1)


# ======================================================================================
# System identification by one-step simulation
# ======================================================================================
def _obs_to_state(sim_name: str, obs: torch.Tensor) -> torch.Tensor:
    if sim_name == "cartpole":
        return obs
    if sim_name == "pendulum":
        return torch.stack([torch.atan2(obs[..., 1], obs[..., 0]), obs[..., 2]], -1)
    raise KeyError(sim_name)


def sysid_available(family: Family) -> bool:
    return family.batched in ("cartpole", "pendulum")


@dataclass
class Identification:
    """The values that best predict the recorded transitions, and how well."""

    values: torch.Tensor  # [P]
    error: float  # mean normalised squared one-step prediction error at ``values``
    transitions: int
    error_fn: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)

    def error_at(self, values: torch.Tensor) -> float:
        return float(self.error_fn(torch.as_tensor(values, dtype=torch.float64).reshape(1, -1))[0])


def identify(family: Family, episodes: Sequence[Episodes], max_transitions: int = 512,
             device: torch.device | str = "cpu") -> Identification | None:
    """System identification: the parameter values whose batched-simulator step best
    reproduces the recorded ``(s, a, s')`` (``None`` when the family has no batched
    simulator or nothing was recorded).

    Each candidate's error is the mean over transitions of the squared difference between
    predicted and observed next observation, per dimension divided by the variance of the
    observed one-step change (parameter-free dimensions then weigh nothing special). A grid
    over the physical bounds (log-spaced for log-context parameters, both signs for signed
    ones) is refined four times around the best point."""
    from hyperrl.sim import batched_sim_class

    if not sysid_available(family):
        return None
    dev = _device_of(device)
    obs, act, nxt = [], [], []
    for e in episodes:
        m = e.mask.reshape(-1)
        obs.append(e.obs.reshape(m.numel(), -1)[m])
        nxt.append(e.final_obs.reshape(m.numel(), -1)[m])
        a = e.env_actions
        act.append(a.reshape(m.numel(), *a.shape[2:])[m])
    if not obs or sum(o.shape[0] for o in obs) == 0:
        return None
    obs_t, nxt_t, act_t = torch.cat(obs), torch.cat(nxt), torch.cat(act)
    if obs_t.shape[0] > max_transitions:  # evenly spaced subset
        idx = torch.linspace(0, obs_t.shape[0] - 1, max_transitions).round().long()
        obs_t, nxt_t, act_t = obs_t[idx], nxt_t[idx], act_t[idx]
    obs64, nxt64 = obs_t.to(dev, torch.float64), nxt_t.to(dev, torch.float64)
    act_t = act_t.to(dev)
    t = obs64.shape[0]
    state = _obs_to_state(family.batched, obs64)
    delta = nxt64 - obs64
    scale = delta.std(0, unbiased=False) if t > 1 else delta.abs().reshape(-1)
    scale = scale.clamp_min(1e-6)
    cls = batched_sim_class(family.batched)

    def errors(cands: torch.Tensor) -> torch.Tensor:  # [M, P] -> [M]
        cands = cands.to(dev, torch.float64)
        out = []
        per = max(1, 65536 // t)
        for c0 in range(0, cands.shape[0], per):
            c = cands[c0:c0 + per]
            m = c.shape[0]
            sim = cls(m * t, family.param_names, device=dev, dtype=torch.float64, constants=family.constants())
            a = act_t.repeat(m, *([1] * (act_t.dim() - 1)))
            with torch.no_grad():
                ns, _, _ = sim.dynamics(state.repeat(m, 1), a, c.repeat_interleave(t, 0))
                pred = sim.observe(ns).view(m, t, -1)
            err = ((pred - nxt64) / scale).pow(2).sum(-1).mean(-1)
            out.append(torch.nan_to_num(err, nan=math.inf))
        return torch.cat(out).cpu()

    # grid in (sign, scale) space: log|v| or |v|
    p_n = family.num_params
    per_dim = max(5, int(round(4096 ** (1.0 / p_n))))
    axes, steps = [], []
    for p in family.params:
        lo, hi = p.bounds
        if p.context == "log":
            u = torch.linspace(math.log(lo), math.log(hi), per_dim, dtype=torch.float64)
        else:
            u = torch.linspace(lo, hi, per_dim, dtype=torch.float64)
        steps.append(float(u[1] - u[0]))
        axes.append(u)

    def to_values(u: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        cols = []
        for j, p in enumerate(family.params):
            mag = torch.exp(u[:, j]) if p.context == "log" else u[:, j]
            mag = mag.clamp(p.bounds[0], p.bounds[1])
            cols.append(mag * s[:, j])
        return torch.stack(cols, -1)

    sign_axes = [torch.tensor([1.0, -1.0] if p.signed else [1.0], dtype=torch.float64) for p in family.params]
    grid_u = torch.cartesian_prod(*axes).reshape(-1, p_n)
    grid_s = torch.cartesian_prod(*sign_axes).reshape(-1, p_n)
    u_all = grid_u.repeat(grid_s.shape[0], 1)
    s_all = grid_s.repeat_interleave(grid_u.shape[0], 0)
    err = errors(to_values(u_all, s_all))
    best = int(err.argmin())
    best_u, best_s, best_err = u_all[best], s_all[best], float(err[best])
    step = torch.tensor(steps, dtype=torch.float64)
    for _ in range(4):  # zoom: 9 points per dimension across +-1 step, then step / 4
        local = [torch.linspace(float(best_u[j] - step[j]), float(best_u[j] + step[j]), 9, dtype=torch.float64)
                 for j in range(p_n)]
        u = torch.cartesian_prod(*local).reshape(-1, p_n)
        s = best_s.expand(u.shape[0], p_n)
        e = errors(to_values(u, s))
        i = int(e.argmin())
        if float(e[i]) <= best_err:
            best_u, best_err = u[i], float(e[i])
        step = step / 4.0
    best_values = to_values(best_u.reshape(1, -1), best_s.reshape(1, -1))[0]
    return Identification(best_values, best_err, t, errors)


def _mismatch(ident: Identification, belief: torch.Tensor, ratio: float) -> bool:
    """True when the believed values predict the transitions ``ratio`` times worse than the
    identified ones (and clearly worse than the numerical floor)."""
    e_belief = ident.error_at(belief)
    return e_belief > ratio * ident.error + 1e-10


# ======================================================================================
# Policies and learners
# ======================================================================================
def _head(discrete: bool, out: torch.Tensor, log_std: torch.Tensor | None):
    if discrete:
        return Categorical(out)
    assert log_std is not None
    return DiagGaussian(out, log_std)


class _Acting:
    """``step_fn`` for anything with ``dist(obs)`` and ``env_action(a)``."""

    def step_fn(self, deterministic: bool, gen: torch.Generator | None) -> PolicyStep:
        def step(obs: torch.Tensor):
            with torch.no_grad():
                d = self.dist(obs)  # type: ignore[attr-defined]
                a = d.mode() if deterministic else d.sample(gen)
                return a, self.env_action(a), d.log_prob(a)  # type: ignore[attr-defined]

        return step


class WeightsPolicy(_Acting):
    """One variant's policy as generated-MLP weights (each ``[1, ...]``) plus its log-std."""

    def __init__(self, weights: Mapping[str, torch.Tensor], log_std: torch.Tensor | None, activation: str,
                 discrete: bool, act_low: torch.Tensor | None = None, act_high: torch.Tensor | None = None):
        self.weights = {k: v.detach() for k, v in weights.items()}
        self.log_std = None if log_std is None else log_std.detach().reshape(-1)
        self.activation = activation
        self.discrete = discrete
        self.act_low, self.act_high = act_low, act_high

    def to(self, device: torch.device | str) -> "WeightsPolicy":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return WeightsPolicy({k: v.to(device) for k, v in self.weights.items()}, mv(self.log_std),
                             self.activation, self.discrete, mv(self.act_low), mv(self.act_high))

    @property
    def dtype(self) -> torch.dtype:
        return self.weights["0.weight"].dtype

    def dist(self, obs: torch.Tensor):
        out = functional_mlp(self.weights, obs.to(self.dtype).unsqueeze(0), self.activation)[0]
        return _head(self.discrete, out, self.log_std)

    def env_action(self, a: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return a
        return torch.max(torch.min(a, self.act_high.to(a)), self.act_low.to(a))

    def actor_factory(self, deterministic: bool = True, seed: int = 0,
                      device: torch.device | str = "cpu") -> ActorFactory:
        pol = self.to(device)
        dev = torch.device(device)

        def factory(context: torch.Tensor, values: torch.Tensor | None = None) -> Actor:
            gen = torch.Generator(device=dev).manual_seed(int(seed))

            def actor(obs: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    d = pol.dist(obs.to(dev))
                    a = d.mode() if deterministic else d.sample(gen)
                return pol.env_action(a).to(obs.device)

            return actor

        return factory

def _space_bounds(space: gym.spaces.Space, dtype: torch.dtype, device: torch.device):
    if isinstance(space, gym.spaces.Discrete):
        return None, None
    return (torch.as_tensor(space.low, dtype=dtype, device=device),
            torch.as_tensor(space.high, dtype=dtype, device=device))


def generated_policy(source: Any, values: torch.Tensor, device: torch.device | str = "cpu",
                     agent: Any = None) -> WeightsPolicy:
    """The frozen hypernetwork's policy for ``values`` [P] (any values, also extrapolated);
    ``agent`` (default: the run's own) generates it, e.g. a fine-tuned copy."""
    agent = source.agent_on(device) if agent is None else agent
    dev = next(agent.parameters()).device
    ctx = source.family.context(torch.as_tensor(values, dtype=torch.float64).reshape(1, -1)).to(dev, source.dtype)
    with torch.no_grad():
        w = agent.policy_weights(ctx)
    log_std = None
    if not agent.discrete:
        log_std = agent.log_std if agent.log_std is not None else w["log_std"][0]
    low, high = _space_bounds(source.action_space, source.dtype, dev)
    return WeightsPolicy({k: v for k, v in w.items() if k != "log_std"}, log_std, agent.cfg.activation,
                         agent.discrete, low, high)


class _Learner:
    """What the PPO loop needs: a distribution and a value per observation, parameter
    groups with their learning rates, an optional extra loss, and the current policy."""

    discrete: bool
    dtype: torch.dtype

    def dist(self, obs: torch.Tensor) -> Any: ...

    def value(self, obs: torch.Tensor) -> torch.Tensor: ...

    def param_groups(self) -> list[tuple[list[nn.Parameter], float]]: ...

    def extra_loss(self) -> torch.Tensor | None:
        return None

    def env_action(self, a: torch.Tensor) -> torch.Tensor:
        return a

    step_fn = _Acting.step_fn


class _ValueAt(nn.Module):
    """The run's critic (a trainable copy) at one fixed context: ``obs [B, D] -> [B]``."""

    def __init__(self, agent: Any, context: torch.Tensor):
        super().__init__()
        self.activation = agent.cfg.activation
        ctx = agent.condition(context.reshape(1, -1)).detach().clone()
        if agent.critic is not None:
            self.mlp: nn.Module | None = copy.deepcopy(agent.critic)
            for p in self.mlp.parameters():
                p.requires_grad_(True)
            self.register_buffer("ctx", ctx)
            self.keys: list[str] = []
            self.w = nn.ParameterList()
        else:
            self.mlp = None
            self.register_buffer("ctx", ctx)
            with torch.no_grad():
                cw = agent.critic_weights(context.reshape(1, -1))
            self.keys = list(cw.keys())
            self.w = nn.ParameterList([nn.Parameter(v.detach().clone()) for v in cw.values()])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.mlp is not None:
            return self.mlp(torch.cat([obs, self.ctx.to(obs.dtype).expand(obs.shape[0], -1)], -1)).squeeze(-1)
        w = dict(zip(self.keys, self.w))
        return functional_mlp(w, obs.unsqueeze(0), self.activation)[0].squeeze(-1)


class WeightsLearner(_Learner):
    """``weights`` mode (and ``scratch``): the policy's weights are the parameters."""

    def __init__(self, policy: WeightsPolicy, critic: nn.Module, lr: float, critic_lr: float):
        self.keys = list(policy.weights.keys())
        self.w = [nn.Parameter(v.detach().clone()) for v in policy.weights.values()]
        self.log_std = None if policy.log_std is None else nn.Parameter(policy.log_std.detach().clone())
        self.critic = critic
        self.activation, self.discrete = policy.activation, policy.discrete
        self.low, self.high = policy.act_low, policy.act_high
        self.dtype = policy.dtype
        self.lr, self.critic_lr = lr, critic_lr

    def dist(self, obs: torch.Tensor):
        w = dict(zip(self.keys, self.w))
        out = functional_mlp(w, obs.to(self.dtype).unsqueeze(0), self.activation)[0]
        return _head(self.discrete, out, self.log_std)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs.to(self.dtype))

    def env_action(self, a: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return a
        return torch.max(torch.min(a, self.high.to(a)), self.low.to(a))

    def param_groups(self):
        actor = self.w + ([self.log_std] if self.log_std is not None else [])
        return [(actor, self.lr), (list(self.critic.parameters()), self.critic_lr)]

    def policy(self) -> WeightsPolicy:
        return WeightsPolicy(dict(zip(self.keys, self.w)), self.log_std, self.activation, self.discrete,
                             self.low, self.high)


class HypernetLearner(_Learner):
    """``hypernet`` mode: a copy of the hypernetwork and critic, conditioned on one context,
    regularised toward the pre-trained hypernetwork's outputs on train contexts."""

    def __init__(self, source: Any, context: torch.Tensor, cfg: AdaptConfig, gen: torch.Generator,
                 device: torch.device | str):
        ref = source.agent_on(device)
        dev = next(ref.parameters()).device
        self.agent = copy.deepcopy(ref)
        self.agent.train()
        for p in self.agent.parameters():
            p.requires_grad_(True)
        self.discrete = self.agent.discrete
        self.dtype = source.dtype
        self.context = context.reshape(1, -1).to(dev, self.dtype)
        self.cfg = cfg
        self.gen = gen
        fam = source.family
        pool = fam.context(fam.sample(8 * cfg.reg_contexts, torch.Generator().manual_seed(int(gen.initial_seed())),
                                      dtype=torch.float64)).to(dev, self.dtype)
        with torch.no_grad():
            anchor = ref.policy_weights(pool)
        self.pool = pool
        self.anchor = {k: v.detach() for k, v in anchor.items()}
        self.anchor_scale = {k: v.pow(2).mean().clamp_min(1e-8) for k, v in self.anchor.items()}
        self.low, self.high = _space_bounds(source.action_space, self.dtype, dev)

    def _weights(self) -> dict[str, torch.Tensor]:
        return self.agent.policy_weights(self.context)

    def _log_std(self, w: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        if self.discrete:
            return None
        return self.agent.log_std if self.agent.log_std is not None else w["log_std"][0]

    def dist(self, obs: torch.Tensor):
        w = self._weights()
        out = functional_mlp(w, obs.to(self.dtype).unsqueeze(0), self.agent.cfg.activation)[0]
        return _head(self.discrete, out, self._log_std(w))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        obs = obs.to(self.dtype)
        if self.agent.critic is not None:
            ctx = self.agent.condition(self.context).expand(obs.shape[0], -1)
            return self.agent.critic(torch.cat([obs, ctx], -1)).squeeze(-1)
        cw = self.agent.critic_weights(self.context)
        return functional_mlp(cw, obs.unsqueeze(0), self.agent.cfg.activation)[0].squeeze(-1)

    def env_action(self, a: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return a
        return torch.max(torch.min(a, self.high.to(a)), self.low.to(a))

    def extra_loss(self) -> torch.Tensor | None:
        if self.cfg.reg_coef <= 0:
            return None
        idx = torch.randint(self.pool.shape[0], (self.cfg.reg_contexts,), generator=self.gen).to(self.pool.device)
        w = self.agent.policy_weights(self.pool[idx])
        terms = [(w[k] - self.anchor[k][idx]).pow(2).mean() / self.anchor_scale[k] for k in w]
        return self.cfg.reg_coef * torch.stack(terms).mean()

    def regulariser(self) -> float:
        """The full penalty over the whole pool (reporting)."""
        with torch.no_grad():
            w = self.agent.policy_weights(self.pool)
            terms = [(w[k] - self.anchor[k]).pow(2).mean() / self.anchor_scale[k] for k in w]
        return float(torch.stack(terms).mean())

    def param_groups(self):
        return [(self.agent.actor_parameters(), self.cfg.hypernet_lr),
                (self.agent.critic_parameters(), self.cfg.critic_lr)]

    def policy(self) -> WeightsPolicy:
        with torch.no_grad():
            w = self._weights()
        return WeightsPolicy({k: v for k, v in w.items() if k != "log_std"}, self._log_std(w),
                             self.agent.cfg.activation, self.discrete, self.low, self.high)


class _SB3Dist:
    """An SB3 distribution with the interface the PPO loop uses (seeded sampling)."""

    def __init__(self, dist: Any, device: torch.device):
        self.d = dist
        self.device = torch.device(device)

    def sample(self, gen: torch.Generator | None = None) -> torch.Tensor:
        seed = int(torch.randint(2**62, (1,), generator=gen, device=gen.device)) if gen is not None else 0
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return self.d.get_actions(deterministic=False)

    def mode(self) -> torch.Tensor:
        return self.d.get_actions(deterministic=True)

    def log_prob(self, a: torch.Tensor) -> torch.Tensor:
        return self.d.log_prob(a)

    def entropy(self) -> torch.Tensor:
        e = self.d.entropy()
        if e is None:
            return torch.zeros(())
        return e


def _clone_sb3_policy(policy: Any) -> Any:
    """A fresh copy of an SB3 policy (``deepcopy`` fails on the tensors its distribution
    keeps from the last forward pass): rebuilt from its constructor arguments."""
    clone = type(policy)(**policy._get_constructor_parameters())
    clone.load_state_dict(policy.state_dict())
    return clone.to(policy.device)


class SB3Learner(_Learner):
    """``dr-finetune``: an SB3 ActorCriticPolicy (a copy) fine-tuned with the same loop."""

    def __init__(self, model: Any, lr: float):
        self.policy_module = _clone_sb3_policy(model.policy)
        self.policy_module.set_training_mode(True)
        self.action_space = model.action_space
        self.discrete = isinstance(model.action_space, gym.spaces.Discrete)
        self.dtype = torch.float32
        self.lr = lr
        self.device = model.device
        self.low, self.high = _space_bounds(model.action_space, torch.float32, torch.device(model.device))

    def dist(self, obs: torch.Tensor):
        return _SB3Dist(self.policy_module.get_distribution(obs.to(self.device, torch.float32)), self.device)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy_module.predict_values(obs.to(self.device, torch.float32)).squeeze(-1)

    def env_action(self, a: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return a
        return torch.max(torch.min(a, self.high.to(a)), self.low.to(a))

    def step_fn(self, deterministic: bool, gen: torch.Generator | None) -> PolicyStep:
        if getattr(self.policy_module, "use_sde", False):
            self.policy_module.reset_noise(1)
        return super().step_fn(deterministic, gen)

    def param_groups(self):
        return [(list(self.policy_module.parameters()), self.lr)]

    def actor_factory(self, deterministic: bool = True, seed: int = 0,
                      device: torch.device | str = "cpu") -> ActorFactory:
        from hyperrl.baselines import sb3_actor

        pol = _clone_sb3_policy(self.policy_module).to(device)
        pol.set_training_mode(False)
        model = SimpleNamespace(policy=pol, device=torch.device(device), action_space=self.action_space)
        return sb3_actor(model, False, deterministic, seed)


# ======================================================================================
# PPO on recorded episodes
# ======================================================================================
def ppo_update(learner: _Learner, eps: Episodes, optimizer: torch.optim.Optimizer,
               groups: list[list[nn.Parameter]], cfg: AdaptConfig, gamma: float, lam: float,
               reward_scale: float, gen: torch.Generator) -> dict[str, float]:
    """One PPO update (``update_epochs`` epochs of minibatches) on the recorded episodes.
    A time-limit truncation bootstraps from ``V(final_obs)``; a termination does not."""
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
    if cfg.norm_adv and b_adv.numel() > 1:
        b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-8)
    b = int(idx.numel())
    stats: dict[str, list[float]] = {"policy": [], "value": [], "approx_kl": [], "extra": []}
    for _ in range(cfg.update_epochs):
        perm = torch.randperm(b, generator=gen).to(v.device)
        kls = []
        for mb in perm.split(cfg.minibatch_size):
            d = learner.dist(b_obs[mb])
            new_logp = d.log_prob(b_act[mb]).to(torch.float64)
            ent = d.entropy()
            ent = ent.to(torch.float64) if ent.dim() else ent.expand(mb.numel()).to(torch.float64)
            new_v = learner.value(b_obs[mb]).to(torch.float64)
            lo = ppo_loss(new_logp, b_logp[mb], b_adv[mb], new_v, b_v[mb], b_ret[mb], ent, cfg.clip_coef,
                          cfg.vf_coef, cfg.ent_coef, clip_vloss=False, norm_adv=False)
            loss = lo.loss
            extra = learner.extra_loss()
            if extra is not None:
                loss = loss + extra.to(loss.dtype)
                stats["extra"].append(float(extra.detach()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for g in groups:
                torch.nn.utils.clip_grad_norm_(g, cfg.max_grad_norm)
            optimizer.step()
            kls.append(float(lo.approx_kl))
            stats["policy"].append(float(lo.policy.detach()))
            stats["value"].append(float(lo.value.detach()))
        stats["approx_kl"].append(sum(kls) / len(kls))
        if cfg.target_kl is not None and stats["approx_kl"][-1] > cfg.target_kl:
            break
    return {k: (sum(x) / len(x) if x else float("nan")) for k, x in stats.items()}


def _make_optimizer(learner: _Learner) -> tuple[torch.optim.Optimizer, list[list[nn.Parameter]]]:
    groups = learner.param_groups()
    opt = torch.optim.Adam([{"params": ps, "lr": lr} for ps, lr in groups], eps=1e-5)
    return opt, [ps for ps, _ in groups]


def _ppo_loop(make_learner: Callable[[torch.Tensor], _Learner], belief: torch.Tensor, hidden: bool,
              family: Family, env_values: torch.Tensor, budget: EpisodeBudget, cfg: AdaptConfig,
              gamma: float, lam: float, reward_scale: float, seed: int, device: torch.device,
              label: str, use_sysid: bool, world: Family | None = None) -> tuple[_Learner, dict[str, Any]]:
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
                if hidden or _mismatch(ident, belief, cfg.mismatch_ratio):
                    belief = ident.values
                    learner = make_learner(belief)
                    opt, groups = _make_optimizer(learner)
                    info["start_values"] = belief.tolist()
                    info["restarted_from_identified"] = True
                    continue  # that batch came from another policy: identification only
        first = False
        ppo_update(learner, eps, opt, groups, cfg, gamma, lam, reward_scale, gen)
        info["updates"] += 1
    return learner, info


# ======================================================================================
# Context search
# ======================================================================================
@dataclass(eq=False)
class _Candidate:
    z: torch.Tensor  # [P] magnitude context features
    s: torch.Tensor  # [P] signs
    returns: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return sum(self.returns) / len(self.returns) if self.returns else -math.inf

    def same(self, z: torch.Tensor, s: torch.Tensor, tol: float = 0.05) -> bool:
        return bool(torch.equal(self.s, s)) and float((self.z - z).abs().max()) < tol


def _context_search(source: Any, env_values: torch.Tensor, belief: torch.Tensor, hidden: bool,
                    budget: EpisodeBudget, cfg: AdaptConfig, seed: int, device: torch.device,
                    use_sysid: bool, world: Family | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Returns the chosen values (whose context the frozen hypernetwork is run at). The
    episodes run in ``world`` (default: the run's family)."""
    family: Family = source.family
    world = world or family
    gen = torch.Generator().manual_seed(int(seed) + 29)
    z_lo, z_hi = _z_range(family)
    signed = torch.tensor([p.signed for p in family.params])
    mu, sign = _values_to_z(family, belief)
    sign_known = not (hidden and bool(signed.any()))
    cands: list[_Candidate] = []
    recorded: list[Episodes] = []
    queue: list[_Candidate] = []

    def standard_queue(mu: torch.Tensor, sign: torch.Tensor, other_sign: bool) -> list[_Candidate]:
        """The believed context, the nearest in-train-range one, the train centre."""
        out: list[_Candidate] = []
        for z, s in [(mu, sign)] + ([(mu, torch.where(signed, -sign, sign))] if other_sign else []) + \
                [(mu.clamp(-1.0, 1.0), sign), (torch.zeros_like(mu), sign)]:
            if not any(c.same(z, s) for c in out):
                out.append(_Candidate(z.clone(), s.clone()))
        return out

    queue = standard_queue(mu, sign, not sign_known and not (use_sysid and sysid_available(family)))
    draws = 0
    info: dict[str, Any] = {"candidates": [], "identified_values": None, "belief_values": belief.tolist(),
                            "episodes": []}
    crn_seed = ADAPT_SEED + 1000 * int(seed)

    while budget.remaining > 0:
        cand = None
        # racing: several candidates share the best mean (CartPole's returns saturate at the
        # time limit): evaluate the least-tried of them again, on the next common start
        if cands and cfg.race_evals > 1:
            best = max(c.mean for c in cands)
            tied = [c for c in cands if c.mean >= best - 1e-6 * max(1.0, abs(best))]
            least = min(tied, key=lambda c: len(c.returns))
            if len(tied) > 1 and len(least.returns) < cfg.race_evals:
                cand = least
        while cand is None and queue:
            c = queue.pop(0)
            if not any(x.same(c.z, c.s, 1e-3) for x in cands):
                cand = c
                cands.append(c)
        if cand is None:  # sequential cross-entropy draw around the elites
            pool = [c for c in cands if not sign_known or bool(torch.equal(c.s, sign))] or cands
            pool = sorted(pool, key=lambda c: -c.mean)
            n_elite = max(1, int(math.ceil(cfg.elite_frac * len(pool))))
            cut = pool[n_elite - 1].mean  # candidates tied with the last elite are elites too
            elites = [c for c in pool if c.mean >= cut - 1e-6 * max(1.0, abs(cut))]
            center = torch.stack([e.z for e in elites]).mean(0)
            sigma = max(cfg.sigma_min, cfg.sigma * cfg.sigma_decay ** draws)
            z = (center + sigma * torch.randn(center.shape, generator=gen, dtype=torch.float64)).clamp(z_lo, z_hi)
            if sign_known:
                s = sign.clone()
            else:  # sign per signed parameter: the best elite's, flipped with probability 0.25
                s = elites[0].s.clone()
                flip = (torch.rand(s.shape, generator=gen, dtype=torch.float64) < 0.25) & signed
                s = torch.where(flip, -s, s)
            draws += 1
            cand = _Candidate(z, s)
            cands.append(cand)
        values = _z_to_values(family, cand.z, cand.s)
        pol = generated_policy(source, values, device)
        k = len(cand.returns)
        eps = run_episodes(world, env_values, pol.step_fn(True, None), 1, budget,
                           seed=crn_seed + k if cfg.crn else crn_seed + len(info["episodes"]),
                           purpose=f"context candidate {cands.index(cand)} (evaluation {k + 1})", device=device)
        ret = float(eps.returns[0])
        cand.returns.append(ret)
        recorded.append(eps)
        info["episodes"].append({"candidate": cands.index(cand), "values": values.tolist(), "return": ret})
        if use_sysid:
            ident = identify(family, recorded, cfg.sysid_transitions, device)
            if ident is not None:
                info["identified_values"] = ident.values.tolist()
                if hidden or _mismatch(ident, belief, cfg.mismatch_ratio):
                    new_z, new_s = _values_to_z(family, ident.values)
                    if not (sign_known and bool(torch.equal(new_s, sign)) and float((new_z - mu).abs().max()) < 1e-3):
                        mu, sign, sign_known = new_z, new_s, True
                        info["belief_changed"] = True
                        info["belief_values"] = ident.values.tolist()
                        queue = standard_queue(mu, sign, False)
                        draws = 0
    info["candidates"] = [{"values": _z_to_values(family, c.z, c.s).tolist(), "returns": c.returns} for c in cands]
    if not cands:
        return belief, info
    best = max(c.mean for c in cands)
    # The budget ran out right after identification moved the belief: its context is
    # untried, and the tried ones were chosen under a belief now known to be wrong. Take
    # the identified context unless a tried candidate already reached the success return.
    thr = family.success_return
    if info.get("belief_changed") and not any(c.same(mu, sign, 1e-3) for c in cands) \
            and (thr is None or best < thr):
        info["chosen"] = "identified (untried)"
        return _z_to_values(family, mu, sign), info
    ties = [c for c in cands if c.mean >= best - 1e-6 * max(1.0, abs(best))]
    # ties: the most evaluated, then the least extrapolated (the hypernetwork was trained on
    # the train range), then the one nearest the believed context
    pick = min(ties, key=lambda c: (-len(c.returns), round(float((c.z.abs() - 1.0).clamp_min(0.0).sum()), 6),
                                    float((c.z - mu).abs().sum()) + (0.0 if torch.equal(c.s, sign) else 1e3)))
    info["chosen"] = "best tried"
    return _z_to_values(family, pick.z, pick.s), info


# ======================================================================================
# One adaptation run (one mode or reference, one budget)
# ======================================================================================
@dataclass
class AdaptResult:
    """The policy a run with ``budget.total`` episodes ends with, and what it did."""

    line: str
    policy: Any  # WeightsPolicy, or a learner with actor_factory (dr-finetune)
    budget: EpisodeBudget
    info: dict[str, Any]
    context: torch.Tensor | None = None  # context / hypernet modes: the context used
    context_values: torch.Tensor | None = None
    hypernet_state: dict[str, torch.Tensor] | None = None
    wall_s: float = 0.0


def _rl_settings(source: Any) -> tuple[float, float, float]:
    ppo = source.config.ppo
    return float(ppo.gamma), float(ppo.gae_lambda), float(getattr(ppo, "reward_scale", 1.0))


def adapt_mode(source: Any, mode: str, env_values: torch.Tensor, given_values: torch.Tensor | None,
               episodes: int, cfg: AdaptConfig | None = None, seed: int = 0,
               device: torch.device | str = "cpu", world: Family | None = None) -> AdaptResult:
    """Adapt the frozen run ``source`` (a :class:`hyperrl.policy.HyperRun`) to the variant
    ``env_values`` with exactly ``episodes`` episodes. ``given_values`` is what the adapter is
    told (``None``: hidden). ``world``: the family whose env the episodes run in, when it is
    not the run's own (a model error no parameter value absorbs; see :func:`adapt`)."""
    if mode not in MODES:
        raise HyperrlError(f"unknown mode '{mode}'; expected one of: {', '.join(MODES)}")
    cfg = cfg or AdaptConfig()
    dev = _device_of(device)
    family: Family = source.family
    hidden = given_values is None
    belief = _prior_values(family) if hidden else torch.as_tensor(given_values, dtype=torch.float64)
    use_sysid = cfg.identify and sysid_available(family)
    budget = EpisodeBudget(episodes)
    t0 = time.perf_counter()
    if mode == "sim":
        return _sim_adapt(source, env_values, belief, hidden, budget, cfg, seed, dev, use_sysid, t0, world)
    if mode == "context":
        if source.agent.cfg.context == "none":
            raise HyperrlError(f"{source.run_dir} is a context-blind run (model.context: none): context mode "
                               "cannot change its policy; use --mode weights")
        chosen, info = _context_search(source, env_values, belief, hidden, budget, cfg, seed, dev, use_sysid, world)
        pol = generated_policy(source, chosen, dev)
        ctx = family.context(chosen.reshape(1, -1))[0]
        return AdaptResult("context", pol, budget, info, ctx, chosen, wall_s=time.perf_counter() - t0)
    gamma, lam, rscale = _rl_settings(source)
    gen = torch.Generator().manual_seed(int(seed) + 5)
    if mode == "weights":
        def make(values: torch.Tensor) -> _Learner:
            ctx = family.context(values.reshape(1, -1)).to(dev, source.dtype)
            critic = _ValueAt(source.agent_on(dev), ctx)
            return WeightsLearner(generated_policy(source, values, dev), critic, cfg.lr, cfg.critic_lr)
    else:
        def make(values: torch.Tensor) -> _Learner:
            ctx = family.context(values.reshape(1, -1))[0]
            return HypernetLearner(source, ctx, cfg, gen, dev)
    learner, info = _ppo_loop(make, belief, hidden, family, env_values, budget, cfg, gamma, lam, rscale, seed,
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


# ======================================================================================
# Sim mode: identify, then fine-tune in the family's simulator
# ======================================================================================
def sim_finetune(source: Any, values: torch.Tensor, cfg: AdaptConfig, seed: int,
                 device: torch.device) -> tuple[Any, dict[str, Any]]:
    """A copy of the run's agent trained further by ``hyperrl.train`` (same config, fresh
    optimiser, ``sim_steps`` steps, lr x ``sim_lr_scale``) on simulated variants within
    ``+-sim_spread`` of ``values`` [P]. Returns (agent, train metrics). The family's context
    transform is unchanged, so the agent still reads every context as before."""
    import tempfile

    from hyperrl.checkpoint import CheckpointManager, load_checkpoint
    from hyperrl.train import train

    family: Family = source.family
    tcfg = source.config
    lo_b = torch.tensor([p.bounds[0] for p in family.params], dtype=torch.float64)
    hi_b = torch.tensor([p.bounds[1] for p in family.params], dtype=torch.float64)
    center = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    lo = torch.maximum(center - cfg.sim_spread * center.abs(), lo_b)
    hi = torch.minimum(center + cfg.sim_spread * center.abs(), hi_b)

    def sample(n: int, gen: torch.Generator, dev: Any = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        u = torch.rand(n, center.numel(), generator=gen, device=gen.device, dtype=torch.float64)
        return (lo.to(u.device) + u * (hi - lo).to(u.device)).to(dev or u.device, dtype)  # [n, P]

    sim_cfg = dataclasses.replace(
        tcfg, seed=(int(seed) + 1) % (MAX_SEED + 1), device=str(device), total_steps=int(cfg.sim_steps),
        stop_at_return=None, progress=False, histogram_interval_evals=0, checkpoint_interval_steps=10**12,
        ppo=dataclasses.replace(tcfg.ppo, lr=tcfg.ppo.lr * cfg.sim_lr_scale),
        eval=dataclasses.replace(tcfg.eval, interval_steps=10**12, episodes=1))
    with tempfile.TemporaryDirectory(prefix="hyperrl-sim-") as tmp:
        metrics = train(sim_cfg, family, Path(tmp) / "run", init={"hypernet": source.agent.state_dict()},
                        sample=sample)
        payload = load_checkpoint(CheckpointManager(Path(tmp) / "run").latest_path, map_location="cpu")
    agent = copy.deepcopy(source.agent)
    agent.load_state_dict(payload["hypernet"])
    return agent.to(device), {"sim_steps": metrics["env_steps"], "sim_wall_s": metrics["wall_clock_s"],
                              "sim_family_heldout_return": {"interpolation": metrics["eval_interpolation_return"],
                                                            "extrapolation": metrics["eval_extrapolation_return"]}}


def _sim_adapt(source: Any, env_values: torch.Tensor, belief: torch.Tensor, hidden: bool, budget: EpisodeBudget,
               cfg: AdaptConfig, seed: int, dev: torch.device, use_sysid: bool, t0: float,
               world: Family | None = None) -> "AdaptResult":
    """Episode 1: the zero-shot policy (deterministic) at the believed values; its transitions
    identify the parameters. Then :func:`sim_finetune` at the identified values (no episodes).
    The fine-tuned policy is kept only if it beats the zero-shot one in the simulator (free
    episodes from common starts) and, when episodes 2..K are left, is not worse in the real
    env than the zero-shot episode both from that episode's start and clearly on average (a
    guard against a wrong model)."""
    family: Family = source.family  # the model: identification and the simulator
    world = world or family  # the system the episodes run in
    if hidden and not use_sysid:
        raise HyperrlError(f"--mode sim with --hidden needs system identification, which family "
                           f"'{family.name}' does not have (no batched simulator)")
    ctx_of = lambda v: family.context(v.reshape(1, -1))[0]  # noqa: E731
    zero = generated_policy(source, belief, dev)
    info: dict[str, Any] = {"start_values": belief.tolist(), "identified_values": None, "episode_returns": []}
    if budget.remaining == 0:
        return AdaptResult("sim", zero, budget, info, ctx_of(belief), belief, wall_s=time.perf_counter() - t0)
    seed0 = ADAPT_SEED + 1000 * int(seed)
    eps = run_episodes(world, env_values, zero.step_fn(True, None), 1, budget, seed=seed0,
                       purpose="sim: zero-shot episode (identification)", device=dev)
    r_zero = float(eps.returns[0])
    info["episode_returns"].append(r_zero)
    values = belief
    if use_sysid:
        ident = identify(family, [eps], cfg.sysid_transitions, dev)
        if ident is not None:
            info["identified_values"] = ident.values.tolist()
            if hidden or _mismatch(ident, belief, cfg.mismatch_ratio):
                values = ident.values
    agent, sim_info = sim_finetune(source, values, cfg, seed, dev)
    info.update(sim_info, sim_values=values.tolist())
    tuned = generated_policy(source, values, dev, agent=agent)
    # The simulator is free: the fine-tuned policy must first beat the zero-shot one there, on
    # common starts at the identified values. PPO can drift in 2 M steps (measured: m=2, l=1
    # went from -378 to -669 in the exact simulator), and a guard on a few noisy real
    # episodes alone let that through.
    zero_at = generated_policy(source, values, dev)
    sim_ret = {name: float(evaluate_policy(family, pol, values, cfg.sim_check_episodes, SIM_CHECK_SEED, dev).mean())
               for name, pol in (("zero_shot", zero_at), ("tuned", tuned))}
    keep = sim_ret["tuned"] >= sim_ret["zero_shot"]
    info["sim_check_return"] = sim_ret
    state = {k: v.detach().cpu().clone() for k, v in agent.state_dict().items()}
    res = AdaptResult("sim", tuned, budget, info, ctx_of(values), values, hypernet_state=state)
    if budget.remaining > 0:
        # The first check starts where the zero-shot episode started (same seed): a paired
        # comparison, since Pendulum's return varies by hundreds with the start state.
        paired = run_episodes(world, env_values, tuned.step_fn(True, None), 1, budget, seed=seed0,
                              purpose="sim: check in the real env (zero-shot's start)", device=dev)
        rets = [float(paired.returns[0])]
        if budget.remaining > 0:
            more = run_episodes(world, env_values, tuned.step_fn(True, None), budget.remaining, budget,
                                seed=seed0 + 1, purpose="sim: check in the real env", device=dev)
            rets += [float(x) for x in more.returns]
        info["episode_returns"] += rets
        # Keep the fine-tuned policy unless it is worse on the shared start AND clearly worse
        # on average (mean + 2 standard errors below the zero-shot episode): one zero-shot
        # episode is a noisy yardstick, so only a clear loss reverts (a wrong model).
        r = torch.tensor(rets, dtype=torch.float64)
        se = float(r.std() / math.sqrt(len(rets))) if len(rets) > 1 else 0.0
        keep = keep and (rets[0] >= r_zero or float(r.mean()) + 2.0 * se >= r_zero)
    info["kept"] = "sim" if keep else "zero-shot"
    if not keep:
        res = AdaptResult("sim", zero_at, budget, info, ctx_of(values), values)
    res.wall_s = time.perf_counter() - t0
    return res


def _fresh_policy(source: Any, seed: int, device: torch.device) -> tuple[WeightsPolicy, nn.Module]:
    """A freshly initialised policy of the run's architecture (CleanRL init) and critic."""
    agent = source.agent
    sizes = [agent.obs_dim, *agent.cfg.hidden_sizes, agent.act_dim]
    g = torch.Generator().manual_seed(int(seed) + 101)
    mlp = make_target_mlp(sizes, agent.cfg.activation)
    lins = [m for m in mlp if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for i, lin in enumerate(lins):
            w = torch.empty_like(lin.weight)
            nn.init.orthogonal_(w, gain=0.01 if i == len(lins) - 1 else math.sqrt(2.0), generator=g)
            lin.weight.copy_(w)
            lin.bias.zero_()
    weights = {k: v.detach().unsqueeze(0).to(device=device, dtype=source.dtype) for k, v in mlp.state_dict().items()}
    log_std = None if agent.discrete else torch.zeros(agent.act_dim, dtype=source.dtype, device=device)
    low, high = _space_bounds(source.action_space, source.dtype, torch.device(device))
    pol = WeightsPolicy(weights, log_std, agent.cfg.activation, agent.discrete, low, high)
    layers: list[nn.Module] = []
    dims = [agent.obs_dim, *agent.cfg.critic_hidden_sizes]
    for a, b in zip(dims[:-1], dims[1:]):
        lin = nn.Linear(a, b)
        layers += [lin, nn.Tanh()]
    layers.append(nn.Linear(dims[-1], 1))
    critic = nn.Sequential(*layers)
    with torch.no_grad():
        lins = [m for m in critic if isinstance(m, nn.Linear)]
        for i, lin in enumerate(lins):
            w = torch.empty_like(lin.weight)
            nn.init.orthogonal_(w, gain=1.0 if i == len(lins) - 1 else math.sqrt(2.0), generator=g)
            lin.weight.copy_(w)
            lin.bias.zero_()
    critic = _Squeeze(critic).to(device=device, dtype=source.dtype)
    return pol, critic


class _Squeeze(nn.Module):
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
    dev = _device_of(device)
    family: Family = source.family
    budget = EpisodeBudget(episodes)
    t0 = time.perf_counter()
    if reference == "scratch":
        gamma, lam, rscale = _rl_settings(source)

        def make(values: torch.Tensor) -> _Learner:
            pol, critic = _fresh_policy(source, seed, dev)
            return WeightsLearner(pol, critic, cfg.lr, cfg.critic_lr)

        learner, info = _ppo_loop(make, env_values, False, family, env_values, budget, cfg, gamma, lam, rscale,
                                  seed, dev, "scratch", False, world)
        return AdaptResult("scratch", learner.policy(), budget, info, wall_s=time.perf_counter() - t0)
    if reference == "dr-finetune":
        if dr_run is None:
            raise HyperrlError("dr-finetune needs a dr run (--dr RUN_DIR)")
        model = dr_run.model
        gamma, lam = float(model.gamma), float(model.gae_lambda)

        def make_sb3(values: torch.Tensor) -> _Learner:
            return SB3Learner(model, cfg.lr)

        learner, info = _ppo_loop(make_sb3, env_values, False, family, env_values, budget, cfg, gamma, lam, 1.0,
                                  seed, dev, "dr-finetune", False, world)
        return AdaptResult("dr-finetune", learner, budget, info, wall_s=time.perf_counter() - t0)
    raise HyperrlError(f"unknown reference '{reference}'; expected one of: {', '.join(REFERENCES)}")


# ======================================================================================
# Evaluation (fresh episodes, never counted)
# ======================================================================================
def evaluate_policy(family: Family, policy: Any, values: torch.Tensor, episodes: int, seed: int = EVAL_SEED,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Returns ``[episodes]`` of ``policy`` (anything with ``actor_factory``) on the variant,
    deterministic actions, env ``i`` starting where Gymnasium's ``reset(seed=seed + i)``
    does (:func:`hyperrl.evaluate.run_evaluation`; batched simulator when the family has one)."""
    from hyperrl.evaluate import run_evaluation

    backend = "batched" if family.batched is not None else "gymnasium"
    run_like = SimpleNamespace(family=family, actor_factory=policy.actor_factory)
    st = run_evaluation(run_like, torch.as_tensor(values, dtype=torch.float64).reshape(1, -1), int(episodes),
                        int(seed), backend, device, True)
    return st.returns[0]


def _forgetting(source: Any, agent: Any, device: torch.device, episodes: int = 1) -> dict[str, float]:
    """Mean interpolation held-out return of the pre-trained and the adapted hypernetwork."""
    from hyperrl.episodes import evaluate_values

    fam = source.family
    vals = fam.heldout_values("interpolation")
    out = {}
    for key, ag in (("before", source.agent_on(device)), ("after", agent)):
        st = evaluate_values(ag, fam, vals, episodes, seed=EVAL_SEED, device=device, dtype=source.dtype)
        out[key] = float(st.mean.mean())
    return out


# ======================================================================================
# Orchestration: budgets, lines, outputs
# ======================================================================================
def budgets_for(k: int, budgets: Sequence[int] | None = None) -> list[int]:
    """The budgets to report: ``budgets`` (default 0, 1, 2, 5, 10) up to ``k``, plus 0 (the
    zero-shot return every output reports) and ``k``."""
    base = DEFAULT_BUDGETS if budgets is None else budgets
    out = sorted({int(b) for b in base if 0 <= int(b) <= k} | {0, int(k)})
    return out


def _parse_single_values(family: Family, values: Any, flag: str = "--values") -> torch.Tensor:
    """``{name: v}``, ``[P]`` or CLI strings ``["masspole=0.9"]`` -> [P] (one variant)."""
    if isinstance(values, (list, tuple)) and values and all(isinstance(x, str) for x in values):
        from hyperrl.evaluate import parse_values

        v, lists = parse_values(family, list(values))
        if v.shape[0] != 1:
            many = [n for n, xs in lists.items() if len(xs) > 1]
            raise HyperrlError(f"{flag}: adaptation is to ONE variant; give one value per parameter "
                               f"({', '.join(many)} has several)")
        return v[0]
    if isinstance(values, str):
        return _parse_single_values(family, [values], flag)
    return family.values_tensor(values)


def _curve_point(budget: int, res: AdaptResult, returns: torch.Tensor) -> dict[str, Any]:
    pt = {
        "budget": int(budget),
        "episodes_used": res.budget.used,
        "env_steps": res.budget.env_steps,
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std(unbiased=False)),
        "returns": [float(x) for x in returns],
        "adapt_seconds": round(res.wall_s, 3),
    }
    if res.context_values is not None:
        pt["context_values"] = [float(x) for x in res.context_values]
    ident = res.info.get("identified_values")
    if ident is not None:
        pt["identified_values"] = [float(x) for x in ident]
    return pt


def run_line(source: Any, line: str, env_values: torch.Tensor, given_values: torch.Tensor | None,
             budgets: Sequence[int], cfg: AdaptConfig, seed: int, device: torch.device, eval_episodes: int,
             dr_run: Any = None, log: Callable[[str], None] | None = None,
             world: Family | None = None) -> tuple[list[dict[str, Any]], AdaptResult]:
    """The curve of one mode or reference: an independent run per budget, each evaluated on
    the same fresh evaluation episodes. Returns the points and the largest budget's result."""
    points, last = [], None
    for b in budgets:
        if line in MODES:
            res = adapt_mode(source, line, env_values, given_values, b, cfg, seed, device, world)
        else:
            res = adapt_reference(source, line, env_values, b, cfg, seed, device, dr_run, world)
        assert res.budget.used == b, (line, b, res.budget)
        rets = evaluate_policy(world or source.family, res.policy, env_values, eval_episodes, EVAL_SEED, device)
        pt = _curve_point(b, res, rets)
        if line == "hypernet" and b == max(budgets) and cfg.check_forgetting and source.family.batched:
            agent = res.info.get("_agent")
            if agent is not None:
                pt["family_interpolation_return"] = _forgetting(source, agent, device)
        points.append(pt)
        last = res
        if log:
            log(f"  {line:<12} budget {b:>3}: return {pt['return_mean']:8.1f} ± {pt['return_std']:.1f} "
                f"({res.budget.used} episodes, {res.budget.env_steps} steps, {res.wall_s:.1f} s)")
    assert last is not None
    return points, last


def _default_name(family: Family, mode: str, values: torch.Tensor, hidden: bool, k: int, seed: int) -> str:
    label = ",".join(f"{n}={float(x):g}" for n, x in zip(family.param_names, values.tolist()))
    name = f"{mode}-{label}{'-hidden' if hidden else ''}-k{k}-s{seed}"
    if len(name) > OUTPUT_NAME_MAX or not OUTPUT_NAME_RE.match(name):
        name = f"{mode}-{hashlib.sha1(label.encode()).hexdigest()[:10]}{'-hidden' if hidden else ''}-k{k}-s{seed}"
    return name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def curves_figure(family: Family, curves: Mapping[str, Sequence[Mapping[str, Any]]], title: str,
                  threshold: float | None = None, oracle: float | None = None):
    """Return against episodes used, one line (mean ± std band) per mode and reference."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    styles = {"context": ("C0", "o"), "weights": ("C1", "s"), "hypernet": ("C2", "^"),
              "scratch": ("C7", "x"), "dr-finetune": ("C3", "D")}
    for i, (line, pts) in enumerate(curves.items()):
        if not pts:
            continue
        color, marker = styles.get(line, (f"C{i % 10}", "o"))
        x = np.array([p["budget"] for p in pts], dtype=float)
        y = np.array([p["return_mean"] for p in pts])
        s = np.array([p["return_std"] for p in pts])
        ls = "--" if line in REFERENCES else "-"
        ax.plot(x, y, ls, marker=marker, color=color, label=line)
        ax.fill_between(x, y - s, y + s, color=color, alpha=0.12, lw=0)
    if threshold is not None:
        ax.axhline(threshold, color="0.3", lw=0.8, ls=":", label=f"success ({threshold:g})")
    if oracle is not None:
        ax.axhline(oracle, color="k", lw=0.8, ls="-.", label="oracle")
    ax.set_xlabel("episodes used for adaptation")
    ax.set_ylabel("return (fresh evaluation episodes)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def format_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    budgets = sorted({p["budget"] for pts in curves.values() for p in pts})
    head = ["line"] + [f"{b} ep" for b in budgets]
    rows = []
    for line, pts in curves.items():
        by = {p["budget"]: p for p in pts}
        rows.append([line] + [f"{by[b]['return_mean']:.1f}" if b in by else "" for b in budgets])
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


def _policy_payload(res: AdaptResult, source: Any, mode: str) -> dict[str, Any]:
    pol: WeightsPolicy = res.policy
    agent = source.agent
    from hyperrl.config import to_dict

    payload: dict[str, Any] = {
        "format": FORMAT,
        "mode": mode,
        "activation": pol.activation,
        "weights": {k: v[0].detach().cpu().clone() for k, v in pol.weights.items()},
        "log_std": None if pol.log_std is None else pol.log_std.detach().cpu().clone(),
        "context": None if res.context is None else res.context.detach().cpu().to(torch.float64).clone(),
        "context_values": None if res.context_values is None else [float(x) for x in res.context_values],
        "model_config": to_dict(agent.cfg),
        "source_checkpoint": str(source.checkpoint_path),
        "source_checkpoint_sha256": _sha256(Path(source.checkpoint_path)),
    }
    if mode in ("hypernet", "sim"):
        payload["hypernet"] = res.hypernet_state
    return payload


def _write_adapted(source: Any, out_dir: Path, mode: str, res: AdaptResult, run_info: dict[str, Any],
                   metrics: dict[str, Any], curves: Mapping[str, Any], force: bool) -> Path:
    """Write ``out_dir`` whole (:func:`hyperrl.fileio.publish_dir`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from torch.utils.tensorboard import SummaryWriter

    from hyperrl.plots import close_figure, figure_to_array

    family: Family = source.family

    def build(tmp: Path) -> None:
        shutil.copyfile(source.run_dir / "family.yaml", tmp / "family.yaml")
        (tmp / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        torch.save(_policy_payload(res, source, mode), tmp / POLICY_FILE)
        title = (f"{family.name}: adapt to {family.label(run_info['values_list'])}"
                 f"{' (hidden)' if run_info['hidden'] else ''}, K={run_info['budget']}")
        fig = curves_figure(family, curves, title, family.success_return)
        if not isinstance(fig.canvas, FigureCanvasAgg):
            FigureCanvasAgg(fig)
        fig.savefig(tmp / "returns_vs_episodes.png", dpi=120)
        image = figure_to_array(fig, close=False)
        close_figure(fig)
        writer = SummaryWriter(str(tmp))
        try:
            for line, pts in curves.items():
                for p in pts:
                    writer.add_scalar(f"adapt/{line}/return_mean", p["return_mean"], p["budget"])
                    writer.add_scalar(f"adapt/{line}/return_std", p["return_std"], p["budget"])
                    writer.add_scalar(f"adapt/{line}/env_steps", p["env_steps"], p["budget"])
            writer.add_scalar("adapt/zero_shot_return", metrics["zero_shot_return"], 0)
            writer.add_scalar("adapt/final_return", metrics["final_return"], metrics["episodes_used"])
            writer.add_image("adapt/return_vs_episodes", image, 0, dataformats="HWC")
            writer.add_text("adapt/table", "    " + format_curves(curves).replace("\n", "\n    "), 0)
        finally:
            writer.close()

    return publish_dir(out_dir, build, force)


def _world_info(world: Family) -> dict[str, Any]:
    return {"family": world.name, "fixed": dict(world.fixed), "env_kwargs": dict(world.env_kwargs),
            "source": world.source or None}


def adapt(
    run_dir: str | os.PathLike,
    values: Any,
    episodes: int = 10,
    modes: Sequence[str] | str = ("context",),
    hidden: bool = False,
    seed: int = 0,
    device: str = "cpu",
    dr: str | os.PathLike | None = None,
    references: bool = True,
    budgets: Sequence[int] | None = None,
    eval_episodes: int = 10,
    name: str | None = None,
    true_values: Any = None,
    world: Any = None,
    checkpoint: str = "best",
    config: AdaptConfig | None = None,
    save: bool = True,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Adapt the hypernetwork run ``run_dir`` to one variant; see the module docstring.

    ``values`` are the variant's parameters (``{name: v}``, ``[P]`` or ``["name=v", ...]``).
    With ``hidden`` the adapter is not told them (the episodes still run there). With
    ``true_values`` the episodes run in that variant while the adapter is told ``values``
    (a misspecified model). ``world`` (a :class:`Family`, a family name or YAML path): the
    episodes and the evaluations run in that family's env instead of the run's own; same
    parameters, other ``fixed`` constants or env kwargs: a model error that no parameter value
    absorbs (benchmarks of the ``sim`` mode). Every error is raised before anything is written.
    Returns
    ``{"curves": {line: [points]}, "dirs": {mode: path}, "notes": [...], ...}``.
    """
    from hyperrl.cli import parse_device
    from hyperrl.hyperrun import HyperRun

    cfg = config or AdaptConfig()
    if isinstance(modes, str):
        modes = list(MODES) if modes == "all" else [m.strip() for m in modes.split(",") if m.strip()]
    modes = list(dict.fromkeys(modes))
    if not modes:
        raise HyperrlError("--mode: give at least one of " + ", ".join(MODES))
    for m in modes:
        if m not in MODES:
            raise HyperrlError(f"unknown --mode '{m}'; expected one of: {', '.join(MODES)} (or all)")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise HyperrlError(f"--episodes must be at least 1, got {episodes}")
    if int(eval_episodes) < 1:
        raise HyperrlError(f"--eval-episodes must be at least 1, got {eval_episodes}")
    if budgets is not None:
        bad = [b for b in budgets if int(b) < 0 or int(b) > episodes]
        if bad:
            raise HyperrlError(f"--budgets: every budget must be in 0..{episodes} (--episodes), got {bad[0]}")
    if hidden and true_values is not None:
        raise HyperrlError("--true-values and --hidden exclude each other: with --hidden, --values is the "
                           "variant the episodes run in and the adapter is not told it")
    if name is not None:
        check_output_name(name)
        if len(modes) > 1:
            raise HyperrlError("--name names one adapted run; with several modes the names are derived")
    dev = parse_device(device)
    info = read_run_info(run_dir)
    if info["method"] != "hyperrl":
        raise HyperrlError(f"{run_dir} is a '{info['method']}' run; adaptation needs a hypernetwork run "
                           "(method 'hyperrl', written by python -m hyperrl.train)")
    source = HyperRun(run_dir, info, checkpoint=checkpoint)
    family: Family = source.family
    given = _parse_single_values(family, values, "--values")
    env_values = given if true_values is None else _parse_single_values(family, true_values, "--true-values")
    given_values = None if hidden else given
    if world is not None:
        if not isinstance(world, Family):
            world = load_family(world)
        if world.param_names != family.param_names or world.env_id != family.env_id:
            raise HyperrlError(f"--world '{world.name}' ({world.env_id}: {', '.join(world.param_names)}) must have "
                               f"the run's env and parameters ({family.env_id}: {', '.join(family.param_names)})")
        world.validate(env_values.reshape(1, -1))
    world_info = None if world is None else _world_info(world)
    dr_run = None
    notes: list[str] = []
    if dr is not None:
        from hyperrl.runs import load

        dr_method = read_run_info(dr)["method"]
        if dr_method != "dr":
            raise HyperrlError(f"--dr {dr}: expected a 'dr' baseline run dir, got method '{dr_method}'")
        dr_run = load(dr, device=str(dev))
        if dr_run.family.name != family.name:
            raise HyperrlError(f"--dr {dr}: family '{dr_run.family.name}' differs from the run's '{family.name}'")
    lines = list(modes)
    if references:
        lines.append("scratch")
        if dr_run is not None:
            lines.append("dr-finetune")
        else:
            notes.append("reference dr-finetune skipped: no --dr RUN_DIR given")
    else:
        notes.append("references skipped (--no-references)")
    bl = budgets_for(episodes, budgets)
    root = Path(run_dir) / "adapt"
    names = {m: (name or _default_name(family, m, env_values, hidden, episodes, seed)) for m in modes}
    if save:  # before adapting, which may take long
        for nm in names.values():
            refuse_existing(root / nm, force)
        check_writable(root)

    t0 = time.perf_counter()
    curves: dict[str, list[dict[str, Any]]] = {}
    finals: dict[str, AdaptResult] = {}
    for line in lines:
        if log:
            log(f"{line}:")
        t_line = time.perf_counter()
        pts, last = run_line(source, line, env_values, given_values, bl, cfg, seed, dev, eval_episodes,
                             dr_run, log, world)
        curves[line] = pts
        finals[line] = last
        if log:
            log(f"  ({time.perf_counter() - t_line:.1f} s)")
    wall = time.perf_counter() - t0

    result: dict[str, Any] = {"family": family.name, "values": family.as_dict(env_values),
                              "given_values": None if hidden else family.as_dict(given), "hidden": hidden,
                              "budget": episodes, "budgets": bl, "curves": curves, "notes": notes,
                              "world": world_info,
                              "dirs": {}, "wall_clock_s": wall}
    if not save:
        result["finals"] = finals
        return result
    for m in modes:
        res = finals[m]
        pts = curves[m]
        final_pt = pts[-1]
        extra = {k: v for k, v in res.info.items() if not k.startswith("_")}
        run_info = {
            "method": "adapted", "family": family.name, "values": family.as_dict(env_values),
            "values_list": [float(x) for x in env_values], "mode": m, "hidden": hidden,
            "given_values": None if hidden else family.as_dict(given),
            "episodes_used": res.budget.used, "budget": episodes, "seed": seed,
            "world": world_info,
            "source_run": os.path.relpath(Path(run_dir).resolve(), (root / names[m]).resolve()),
            "source_run_abs": str(Path(run_dir).resolve()), "source_checkpoint": str(source.checkpoint_path),
            "version": _version(),
        }
        metrics = {
            "family": family.name, "mode": m, "values": family.as_dict(env_values), "hidden": hidden,
            "env_steps": res.budget.env_steps, "episodes_used": res.budget.used, "budget": episodes,
            "wall_clock_s": wall, "adapt_seconds": res.wall_s,
            "zero_shot_return": pts[0]["return_mean"],  # budgets_for always starts at budget 0
            "final_return": final_pt["return_mean"],
            "returns": {str(p["budget"]): p["return_mean"] for p in pts},
            "eval_episodes": int(eval_episodes), "eval_seed": EVAL_SEED,
            "budget_log": res.budget.log, "adaptation": extra, "curves": curves, "notes": notes,
            "config": dataclasses.asdict(cfg),
        }
        out = _write_adapted(source, root / names[m], m, res, run_info, metrics, curves, force)
        result["dirs"][m] = str(out)
    return result


def _version() -> str:
    from hyperrl import __version__

    return __version__


# ======================================================================================
# Loading an adapted run: hyperrl.load(RUN_DIR/adapt/<name>)
# ======================================================================================
class AdaptedRun:
    """A policy adapted to ONE variant (``method: adapted``), implementing
    :class:`hyperrl.runs.LoadedRun`.

    :meth:`actor_factory` and :meth:`policy` act with the adapted policy whatever values they
    are asked about (it is a single-variant policy: ``variants`` is ``[[values]]``, so
    ``hyperrl.evaluate`` restricts held-out selections to it). ``policy.pt`` holds the
    adapted weights for every mode, plus the found context (context mode; the policy is
    the frozen hypernetwork there, :meth:`regenerate` re-derives it from the source run) or
    the fine-tuned hypernetwork's state dict (hypernet mode).
    """

    method = "adapted"

    def __init__(self, run_dir: str | os.PathLike, info: Mapping[str, Any] | None = None,
                 device: torch.device | str = "cpu"):
        self.run_dir = Path(run_dir)
        self.run_info = dict(info) if info is not None else read_run_info(self.run_dir)
        fam_path = self.run_dir / "family.yaml"
        if not fam_path.is_file():
            raise HyperrlError(f"{self.run_dir} is not an adapted run dir (no family.yaml)")
        self.family: Family = load_family(fam_path)
        try:
            self.values = self.family.values_tensor(self.run_info["values"])
            self.mode = str(self.run_info["mode"])
        except (KeyError, TypeError) as e:
            raise HyperrlError(f"{self.run_dir / 'run.json'} is corrupt: {e}") from None
        self.variants = self.values.reshape(1, -1)
        self.info: dict[str, Any] = read_metrics(self.run_dir)
        self.step = self.info.get("env_steps")
        ppath = self.run_dir / POLICY_FILE
        if not ppath.is_file():
            raise HyperrlError(f"{ppath} is missing")
        try:
            self.payload = torch.load(ppath, map_location="cpu", weights_only=True)
            weights = self.payload["weights"]
            activation = self.payload["activation"]
        except Exception as e:  # noqa: BLE001 - any failure means an unusable file
            raise HyperrlError(f"{ppath} is corrupt: {type(e).__name__}: {e}") from None
        probe = self.family.make_env(self.values)
        try:
            self.observation_space, self.action_space = probe.observation_space, probe.action_space
        finally:
            probe.close()
        discrete = isinstance(self.action_space, gym.spaces.Discrete)
        w = {k: v.unsqueeze(0) for k, v in weights.items()}
        dtype = w["0.weight"].dtype
        low, high = _space_bounds(self.action_space, dtype, torch.device("cpu"))
        self.weights_policy = WeightsPolicy(w, self.payload.get("log_std"), activation, discrete, low, high)

    def __repr__(self) -> str:
        return (f"AdaptedRun({str(self.run_dir)!r}, mode={self.mode!r}, "
                f"values={self.family.as_dict(self.values)})")

    def source_dir(self) -> Path:
        rel = self.run_info.get("source_run")
        if rel is not None and (self.run_dir / rel).is_dir():
            return (self.run_dir / rel).resolve()
        return Path(self.run_info.get("source_run_abs", ""))

    def regenerate(self) -> WeightsPolicy:
        """Context / hypernet mode: the policy re-derived from the source run (context mode)
        or the saved hypernetwork (hypernet mode) at the saved context."""
        from hyperrl.hyperrun import HyperRun

        ctx = self.payload.get("context")
        if ctx is None:
            raise HyperrlError(f"{self.run_dir}: a '{self.mode}' adapted run has no context to regenerate from")
        src = HyperRun(self.source_dir(), checkpoint=self.payload.get("source_checkpoint") or "best")
        agent = src.agent
        if self.mode in ("hypernet", "sim") and self.payload.get("hypernet") is not None:
            agent = copy.deepcopy(agent)
            agent.load_state_dict(self.payload["hypernet"])
        with torch.no_grad():
            w = agent.policy_weights(ctx.reshape(1, -1).to(src.dtype))
        log_std = None
        if not agent.discrete:
            log_std = agent.log_std if agent.log_std is not None else w["log_std"][0]
        low, high = _space_bounds(src.action_space, src.dtype, torch.device("cpu"))
        return WeightsPolicy({k: v for k, v in w.items() if k != "log_std"}, log_std, agent.cfg.activation,
                             agent.discrete, low, high)

    def actor_factory(self, deterministic: bool = True, seed: int = 0,
                      device: torch.device | str = "cpu") -> ActorFactory:
        return self.weights_policy.actor_factory(deterministic, seed, device)

    def policy(self, values: Values | None = None, device: torch.device | str = "cpu", seed: int = 0) -> Any:
        """A :class:`hyperrl.policy.GeneratedPolicy` (SB3's ``predict``) of the adapted policy.
        ``values`` (validated when given) does not change it: this is a one-variant policy."""
        from hyperrl.policy import GeneratedPolicy

        if values is not None:
            if isinstance(values, Mapping):
                self.family.values_tensor(values)
            else:
                self.family.validate(torch.as_tensor(values, dtype=torch.float64))
        wp = self.weights_policy.to(device)
        return GeneratedPolicy({k: v[0] for k, v in wp.weights.items()}, wp.activation, self.action_space,
                               self.observation_space, log_std=wp.log_std, family=self.family,
                               values=self.values, seed=seed)


def load_adapted_run(run_dir: Path, info: dict[str, Any], device: torch.device | str = "cpu") -> AdaptedRun:
    """The loader :func:`hyperrl.runs.load` calls for ``method: adapted``."""
    return AdaptedRun(run_dir, info, device=device)





# ======================================================================================
# CLI
# ======================================================================================
def main(argv: Sequence[str] | None = None) -> int:
    from hyperrl.cli import int_range, make_parser, seed_arg

    parser = make_parser(
        "python -m hyperrl.adapt",
        "Adapt a trained hypernetwork run to one variant with a budget of K episodes "
        "(every episode the adapter runs counts).",
        epilog="modes: context = search the frozen hypernetwork's context (CEM + system identification); "
               "weights = PPO on the generated weights; hypernet = PPO on the hypernetwork, regularised "
               "toward the pre-trained one. References: scratch (PPO from a fresh policy) and "
               "dr-finetune (--dr). Outputs: RUN_DIR/adapt/<name>/ (loadable by hyperrl.load).")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run dir written by python -m hyperrl.train")
    parser.add_argument("--values", action="append", required=True, metavar="NAME=V",
                        help="the variant: one value per parameter (repeat for each parameter, or all in "
                             "one: m=2,l=0.8)")
    parser.add_argument("--episodes", type=int_range(1), default=10, metavar="K",
                        help="adaptation budget: environment episodes, all uses counted")
    parser.add_argument("--mode", default="context",
                        help="context | weights | hypernet | sim | all (or a comma-separated list)")
    parser.add_argument("--hidden", action="store_true",
                        help="do not tell the adapter the values: it must find a context from its episodes")
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dr", metavar="DR_RUN_DIR", default=None,
                        help="a 'dr' baseline run dir (python -m hyperrl.baselines --method dr) for the "
                             "dr-finetune reference (skipped when not given)")
    parser.add_argument("--no-references", action="store_true", help="skip the scratch and dr-finetune references")
    parser.add_argument("--budgets", default=None, metavar="B1,B2,...",
                        help="budgets to report (default 0,1,2,5,10 up to K; 0 and K are always added)")
    parser.add_argument("--eval-episodes", type=int_range(1), default=10,
                        help="fresh evaluation episodes per reported budget (not counted)")
    parser.add_argument("--name", default=None, help="output folder name under RUN_DIR/adapt/")
    parser.add_argument("--force", action="store_true", help="replace an existing RUN_DIR/adapt/<name>/")
    parser.add_argument("--true-values", action="append", default=None, metavar="NAME=V",
                        help="run the episodes in this variant while the adapter is told --values "
                             "(a misspecified model; testing)")
    parser.add_argument("--world", default=None, metavar="FAMILY",
                        help="run the episodes (and evaluations) in this family's env: a family YAML with "
                             "the run's parameters but other fixed constants (a model error; testing)")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="adaptation setting, e.g. --set lr=3e-4 (see AdaptConfig in hyperrl/adapt.py)")
    parser.add_argument("--threads", type=int_range(0), default=1, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    budgets = None
    if args.budgets is not None:
        try:
            budgets = [int(x) for x in args.budgets.split(",") if x.strip()]
        except ValueError:
            raise HyperrlError(f"--budgets {args.budgets!r}: expected comma-separated integers") from None
    cfg = AdaptConfig.from_overrides(args.overrides)
    res = adapt(args.run_dir, args.values, episodes=args.episodes, modes=args.mode, hidden=args.hidden,
                seed=args.seed, device=args.device, dr=args.dr, references=not args.no_references,
                budgets=budgets, eval_episodes=args.eval_episodes, name=args.name, true_values=args.true_values,
                world=args.world,
                checkpoint=args.checkpoint, config=cfg, force=args.force,
                log=lambda s: print(s, file=sys.stderr))
    vals = ",".join(f"{k}={v:g}" for k, v in res["values"].items())
    print(f"{args.run_dir}: adapted to {vals}{' (values hidden from the adapter)' if res['hidden'] else ''}, "
          f"budget {res['budget']} episodes; returns on {args.eval_episodes} fresh evaluation episodes "
          f"(budget 0 = zero-shot):")
    print(format_curves(res["curves"]))
    for note in res["notes"]:
        print(f"note: {note}")
    for m, d in res["dirs"].items():
        print(f"wrote {d}/ ({m}: run.json, metrics.json, policy.pt, returns_vs_episodes.png, TensorBoard adapt/...)")
    return 0


if __name__ == "__main__":
    from hyperrl.cli import main_guard

    sys.exit(main_guard(main)())
