"""Train a hypernetwork-generated policy across a family with PPO.

    python -m hyperrl.train --env-family cartpole-mass [--config F] [--set ppo.lr=1e-3 ...]
        [--seed N] [--total-steps N] [--device auto|cpu|cuda] [--run-dir DIR] [--resume RUN_DIR]

:func:`train` is the loop, read top to bottom (CleanRL's virtue): draw variants, collect a
rollout, compute advantages, one PPO update, log, evaluate and checkpoint. Its pieces are
separate and tested alone: :func:`collect_rollout`, :func:`advantages`,
:func:`hyperrl.ppo.ppo_update` (the one PPO update, shared with adaptation) with
:func:`minibatch_loss`, :func:`evaluate_heldout`, and the simulator's own
``state_dict`` / ``load_state_dict``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.profiler import record_function

from hyperrl import __version__
from hyperrl.agent import HyperAgent, RolloutWeights, SlotRows, gather_slots
from hyperrl.checkpoint import CheckpointManager, git_commit, load_checkpoint
from hyperrl.cli import int_range, main_guard, make_parser, parse_device, seed_arg
from hyperrl.config import apply_overrides, config_docs, load_yaml_config, save_config, to_dict
from hyperrl.episodes import HELDOUT_EVAL_SEED, EpisodeStats, evaluate_values
from hyperrl.errors import HyperrlError
from hyperrl.families import SPLITS, Family, load_family
from hyperrl.fileio import check_writable, fresh_run_dir, write_json
from hyperrl.hypernet import functional_mlp
from hyperrl.ppo import LossOut, NonFiniteUpdate, explained_variance, gae, ppo_loss, ppo_update
from hyperrl.resources import builtin_dir
from hyperrl.runlock import run_lock
from hyperrl.seeding import make_generator, restore_generators, rng_state, seed_everything, set_rng_state
from hyperrl.sim import VecEnv, make_vec_env
from hyperrl.train_config import EvalConfig, PPOConfig, TrainConfig

__all__ = ["train", "main", "start_run", "resume_run", "resolve_config", "builtin_configs_dir", "TrainingDiverged",
           "Rollout", "EpisodeTracker", "collect_rollout", "advantages", "minibatch_loss", "evaluate_heldout"]

Sampler = Callable[[int, torch.Generator, torch.device, torch.dtype], torch.Tensor]  # -> [n, P] values
EvalCallback = Callable[[dict[str, Any]], None]  # one evaluation history entry


class TrainingDiverged(HyperrlError):
    """A non-finite loss or generated weight: the run stops, the last good checkpoint stays."""


def add_weight_histogram(writer: Any, tag: str, values: torch.Tensor, step: int, bins: int = 64) -> None:
    """``writer.add_histogram`` computed with torch (``bins`` equal-width buckets over [min, max]).

    Why not ``add_histogram``: its sum of squares is a NumPy ``dot``, i.e. an OpenBLAS call
    whose worker threads keep spinning afterwards on the cores torch needs (on 2 cores about
    a fifth of the training loop's CPU; benchmarks/README.md). NumPy's 'tensorflow' bins
    also write ~10 KB per tensor; 64 buckets are plenty for TensorBoard's display (it rebins
    to ~30).
    """
    v = values.detach().reshape(-1).to("cpu", torch.float64)  # [n]
    lo, hi = float(v.min()), float(v.max())
    if hi > lo:
        counts = torch.histc(v, bins=bins, min=lo, max=hi)  # [bins]
        limits = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)[1:]  # right edges
    else:  # constant tensor: one bucket
        counts, limits = torch.tensor([float(v.numel())]), torch.tensor([hi])
    writer.add_histogram_raw(tag, min=lo, max=hi, num=v.numel(), sum=float(v.sum()),
                             sum_squares=float((v * v).sum()), bucket_limits=limits.tolist(),
                             bucket_counts=counts.tolist(), global_step=step)


# --------------------------------------------------------------------------------------------
# Rollout
# --------------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """One rollout of ``T`` steps of ``N`` env columns, time-major, allocated once per run
    and refilled (on the training device).

    Each column visits up to ``K`` variants (slots): ``ctx_tab [N, K, C]`` holds their
    contexts and ``slot [T, N]`` the slot that produced each step (see
    ``EnvConfig.variant_slots``).
    """

    obs: torch.Tensor  # [T, N, D] s_t
    final_obs: torch.Tensor  # [T, N, D] the observation step t reached (before any reset)
    actions: torch.Tensor  # [T, N] long or [T, N, A]
    logp: torch.Tensor  # [T, N] log-probability of the action under the rollout policy
    rewards: torch.Tensor  # [T, N] scaled by ppo.reward_scale
    terminated: torch.Tensor  # [T, N] bool
    truncated: torch.Tensor  # [T, N] bool
    slot: torch.Tensor  # [T, N] long
    ctx_tab: torch.Tensor | None = None  # [N, K, C]
    last_obs: torch.Tensor | None = None  # [N, D] s_T, the observation after the rollout
    last_slot: torch.Tensor | None = None  # [N] its slot

    @classmethod
    def allocate(cls, t: int, n: int, obs_dim: int, agent: HyperAgent, dtype: torch.dtype,
                 device: torch.device) -> "Rollout":
        act_shape = () if agent.discrete else (agent.act_dim,)
        obs = torch.zeros(t, n, obs_dim, dtype=dtype, device=device)
        return cls(obs=obs, final_obs=torch.zeros_like(obs),
                   actions=torch.zeros(t, n, *act_shape, dtype=torch.long if agent.discrete else dtype,
                                       device=device),
                   logp=torch.zeros(t, n, dtype=dtype, device=device),
                   rewards=torch.zeros(t, n, dtype=dtype, device=device),
                   terminated=torch.zeros(t, n, dtype=torch.bool, device=device),
                   truncated=torch.zeros(t, n, dtype=torch.bool, device=device),
                   slot=torch.zeros(t, n, dtype=torch.long, device=device))


@dataclass
class EpisodeTracker:
    """Each env's running episode return and length (carried across rollouts and
    checkpoints), and the episodes that finished in the current rollout (on the device:
    reading them is one host sync per update, in :meth:`finished_means`)."""

    ret: torch.Tensor  # [N] float64
    length: torch.Tensor  # [N] long
    ret_sum: torch.Tensor = field(init=False)
    len_sum: torch.Tensor = field(init=False)
    count: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.start_rollout()

    @classmethod
    def zeros(cls, n: int, device: torch.device) -> "EpisodeTracker":
        return cls(torch.zeros(n, dtype=torch.float64, device=device), torch.zeros(n, dtype=torch.long, device=device))

    def start_rollout(self) -> None:
        dev = self.ret.device
        self.ret_sum = torch.zeros((), dtype=torch.float64, device=dev)
        self.len_sum = torch.zeros((), dtype=torch.long, device=dev)
        self.count = torch.zeros((), dtype=torch.long, device=dev)

    def step(self, reward: torch.Tensor, done: torch.Tensor) -> None:
        """reward [N] (unscaled), done [N] bool: the step that just happened."""
        self.ret += reward.to(torch.float64)
        self.length += 1
        self.ret_sum += (self.ret * done).sum()
        self.len_sum += (self.length * done).sum()
        self.count += done.sum()
        self.ret.masked_fill_(done, 0.0)
        self.length.masked_fill_(done, 0)

    def finished_means(self) -> tuple[float, float] | None:
        """(mean return, mean length) of the episodes finished in this rollout; None if none."""
        cnt = int(self.count)
        return None if cnt == 0 else (float(self.ret_sum) / cnt, float(self.len_sum) / cnt)


def draw_slots(env: VecEnv, family: Family, sample: Sampler, num_slots: int, generator: torch.Generator,
               device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The variant slots of one rollout -> (values [N, K, P], contexts [N, K, C]).

    Slot 0 is each env's current variant (its episode continues); slots 1..K-1 are fresh
    draws it moves to as its episodes end."""
    n, k = env.num_envs, num_slots
    params_tab = torch.cat([env.params.unsqueeze(1), sample(n * (k - 1), generator, device, dtype).view(n, k - 1, -1)], 1)
    return params_tab, family.context(params_tab).to(dtype)


@torch.no_grad()
def collect_rollout(env: VecEnv, agent: HyperAgent, rollout: Rollout, obs: torch.Tensor,
                    params_tab: torch.Tensor, ctx_tab: torch.Tensor, weights: RolloutWeights,
                    generator: torch.Generator, episodes: EpisodeTracker, reward_scale: float,
                    branch_free: bool) -> torch.Tensor:
    """Fill ``rollout`` with ``T`` steps of the N variants from ``obs``; returns the last
    observation. No host transfer: actions are sampled with ``generator`` on the device,
    and a column whose episode ends moves to its next slot's variant (``env.next_params``)
    and weights (``weights.advance``, branch-free on accelerators)."""
    n, k = params_tab.shape[:2]
    cols = torch.arange(n, device=obs.device)
    slot = torch.zeros(n, dtype=torch.long, device=obs.device)
    env.next_params = params_tab[:, 1]
    rollout.ctx_tab = ctx_tab
    episodes.start_rollout()
    for t in range(rollout.obs.shape[0]):
        rollout.obs[t], rollout.slot[t] = obs, slot
        w_now = weights.current  # each env's slot weights, [N, ...]
        dist = agent.policy_head(w_now, functional_mlp(w_now, obs, agent.cfg.activation))
        action = dist.sample(generator)
        rollout.logp[t] = dist.log_prob(action)
        rollout.actions[t] = action
        out = env.step(agent.env_action(action))
        rollout.rewards[t], rollout.terminated[t], rollout.truncated[t], rollout.final_obs[t] = (
            out.reward * reward_scale, out.terminated, out.truncated, out.final_obs)
        done = out.terminated | out.truncated
        episodes.step(out.reward, done)
        slot = torch.where(done, (slot + 1).clamp(max=k - 1), slot)
        weights.advance(done, slot, branch_free=branch_free)
        env.next_params = params_tab[cols, (slot + 1).clamp(max=k - 1)]
        obs = out.obs
    rollout.last_obs, rollout.last_slot = obs, slot
    return obs


# --------------------------------------------------------------------------------------------
# Advantages and the minibatch loss
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def critic_values(
    agent: HyperAgent,
    ctx_tab: torch.Tensor,  # [N, K, C] contexts of each column's variant slots
    obs_buf: torch.Tensor,  # [T, N, D] s_t
    slot_buf: torch.Tensor,  # [T, N] slot that produced step t
    final_obs_buf: torch.Tensor,  # [T, N, D] the observation step t reached (before any reset)
    trunc_buf: torch.Tensor,  # [T, N] bool
    obs_last: torch.Tensor,  # [N, D] s_T (the observation after the rollout)
    slot_last: torch.Tensor,  # [N] its slot
    slot_rows=SlotRows.used_slots,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> values [T, N] = V(s_t), next_values [T, N] = V(successor of s_t), ctx [T, N, C].

    Each under the variant that produced step t. While an episode runs the successor is
    s_{t+1} (same variant; final_obs_t == s_{t+1}); where it was truncated it is final_obs_t;
    where it terminated it is unused (GAE drops it). So one critic pass over T+1
    observations plus the few truncated final observations replaces a second full pass.
    """
    k = ctx_tab.shape[1]
    tm = lambda x: x.transpose(0, 1)  # noqa: E731  [T, N, ...] <-> [N, T, ...]
    slot_ext = torch.cat([slot_buf, slot_last.unsqueeze(0)])  # [T+1, N]
    ctx_ext = gather_slots(ctx_tab, slot_ext)  # [T+1, N, C]
    hyper = agent.critic is None
    rows = slot_rows(tm(slot_ext), k) if hyper else None
    cw = agent.critic_weights(ctx_tab[rows.col, rows.slot]) if rows is not None else None
    v_ext = tm(agent.value(tm(torch.cat([obs_buf, obs_last.unsqueeze(0)])), tm(ctx_ext), rows, cw))  # [T+1, N]
    values, next_values = v_ext[:-1], v_ext[1:].clone()
    t_idx, n_idx = trunc_buf.nonzero(as_tuple=True)  # one host sync per update
    if t_idx.numel():
        fc = ctx_ext[t_idx, n_idx]  # [P, C]
        rows1 = SlotRows.one_each(t_idx.numel(), fc.device) if hyper else None
        v_final = agent.value(final_obs_buf[t_idx, n_idx].unsqueeze(1), fc.unsqueeze(1), rows1, agent.critic_weights(fc))
        next_values[t_idx, n_idx] = v_final.squeeze(1)
    return values, next_values, ctx_ext[:-1]


@dataclass
class Targets:
    """What the update fits, per step ``[T, N]``: advantages, returns, the rollout's values
    V(s_t) and each step's context."""

    adv: torch.Tensor
    returns: torch.Tensor
    values: torch.Tensor
    ctx: torch.Tensor  # [T, N, C]


def advantages(agent: HyperAgent, rollout: Rollout, gamma: float, lam: float,
               slot_rows=SlotRows.used_slots) -> Targets:
    """V(s_t) and V(successor) under the variant that produced step t, then GAE
    (truncation bootstraps from V(final_obs_t), termination does not)."""
    values, next_values, ctx = critic_values(agent, rollout.ctx_tab, rollout.obs, rollout.slot, rollout.final_obs,
                                             rollout.truncated, rollout.last_obs, rollout.last_slot, slot_rows)
    adv, returns = gae(rollout.rewards, values, next_values, rollout.terminated, rollout.truncated, gamma, lam)
    return Targets(adv, returns, values, ctx)


def minibatch_loss(agent: HyperAgent, rollout: Rollout, targets: Targets, ppo: PPOConfig,
                   slot_rows=SlotRows.used_slots) -> Callable[[torch.Tensor], LossOut]:
    """``loss(columns)``: the PPO loss of a minibatch of env columns (all their T steps).
    Each visited (column, slot) variant's weights are generated once per minibatch and
    applied to all its steps."""
    tm = lambda x: x.transpose(0, 1).contiguous()  # noqa: E731  [T, N, ...] -> [N, T, ...]
    # env-major copies, made once per update: a minibatch of columns is then a contiguous
    # row gather instead of a strided one per tensor
    obs, slot, act, ctx = tm(rollout.obs), tm(rollout.slot), tm(rollout.actions), tm(targets.ctx)
    logp, adv, values, returns = tm(rollout.logp), tm(targets.adv), tm(targets.values), tm(targets.returns)
    ctx_tab, k = rollout.ctx_tab, rollout.ctx_tab.shape[1]

    def loss(mb: torch.Tensor) -> LossOut:
        o = obs[mb]  # [M, T, D]
        rows = slot_rows(slot[mb], k)
        ctx_rows = ctx_tab[mb[rows.col], rows.slot]  # [R, C]
        dist = agent.dist_rows(agent.policy_weights(ctx_rows), o, rows)
        new_v = agent.value(o, ctx[mb], rows, agent.critic_weights(ctx_rows))
        return ppo_loss(dist.log_prob(act[mb]).reshape(-1), logp[mb].reshape(-1), adv[mb].reshape(-1),
                        new_v.reshape(-1), values[mb].reshape(-1), returns[mb].reshape(-1),
                        dist.entropy().reshape(-1), ppo.clip_coef, ppo.vf_coef, ppo.ent_coef,
                        ppo.clip_vloss, ppo.norm_adv)

    return loss


def log_update(writer: Any, step: int, stats: dict[str, torch.Tensor], targets: Targets, lr: float,
               episodes: EpisodeTracker, steps_per_second: float) -> tuple[float, float] | None:
    """TensorBoard ``losses/...`` and ``charts/...`` of one update; returns the mean return and
    length of the episodes that finished in its rollout (None if none did)."""
    for key, v in stats.items():
        writer.add_scalar(f"losses/{key}", float(v.mean()), step)
    writer.add_scalar("losses/explained_variance",
                      explained_variance(targets.values.flatten(), targets.returns.flatten()), step)
    writer.add_scalar("charts/learning_rate", lr, step)
    finished = episodes.finished_means()
    if finished is not None:
        writer.add_scalar("charts/episode_return", finished[0], step)
        writer.add_scalar("charts/episode_length", finished[1], step)
    writer.add_scalar("charts/steps_per_second", steps_per_second, step)
    return finished


# --------------------------------------------------------------------------------------------
# Held-out evaluation
# --------------------------------------------------------------------------------------------
def evaluate_heldout(agent: HyperAgent, family: Family, eval_cfg: EvalConfig, round_index: int,
                     device: torch.device, dtype: torch.dtype) -> dict[str, EpisodeStats]:
    """Zero-shot returns on the family's held-out splits; evaluation ``round_index`` of a run
    resets env i with seed ``HELDOUT_EVAL_SEED + round_index + i``."""
    agent.eval()
    try:
        return {split: evaluate_values(agent, family, family.heldout_values(split), eval_cfg.episodes,
                                       seed=HELDOUT_EVAL_SEED + round_index, device=device, dtype=dtype,
                                       deterministic=eval_cfg.deterministic)
                for split in SPLITS}
    finally:
        agent.train()


def log_heldout(writer: Any, family: Family, agent: HyperAgent, stats: dict[str, EpisodeStats], step: int,
                histograms: bool) -> dict[str, float]:
    """TensorBoard ``eval/<split>/...`` scalars, the return-vs-parameter picture and (with
    ``histograms``) the generated weights' histograms; returns the split means."""
    from hyperrl.plots import figure_to_array, return_vs_param_figure

    result: dict[str, float] = {}
    for split, st in stats.items():
        result[split] = float(st.mean.mean())
        writer.add_scalar(f"eval/{split}/return_mean", result[split], step)
        writer.add_scalar(f"eval/{split}/return_min", float(st.mean.min()), step)
        if family.success_return is not None:
            success = float((st.returns >= family.success_return).double().mean())
            writer.add_scalar(f"eval/{split}/success_rate", success, step)
    values = torch.cat([st.values for st in stats.values()])
    means = torch.cat([st.mean for st in stats.values()])
    fig = return_vs_param_figure(family, values, means, None, title=f"zero-shot return, step {step}",
                                 threshold=family.success_return)
    writer.add_image("eval/return_vs_param", figure_to_array(fig), step, dataformats="HWC")
    if histograms:
        param = next(agent.parameters())
        with torch.no_grad():
            w = agent.policy_weights(family.context(values).to(param.device, param.dtype))
        for key, tensor in w.items():
            add_weight_histogram(writer, f"charts/generated_weights/{key}", tensor, step)
    return result


# --------------------------------------------------------------------------------------------
# Progress and checkpoints
# --------------------------------------------------------------------------------------------
@dataclass
class Progress:
    """Where a run is: what a checkpoint's ``extra`` carries besides the episodes and the
    simulator (key names are the checkpoint format's)."""

    update: int = 0
    best_score: float = -math.inf
    evals_done: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0  # wall-clock seconds of earlier sessions of this run (resume)
    time_to_target: float | None = None
    steps_to_target: int | None = None

    @classmethod
    def from_extra(cls, extra: dict[str, Any]) -> "Progress":
        return cls(update=extra["update"], best_score=extra["best_score"], evals_done=extra["evals_done"],
                   history=extra["history"], elapsed=extra["elapsed"], time_to_target=extra.get("time_to_target"),
                   steps_to_target=extra.get("steps_to_target"))

    def record_eval(self, step: int, elapsed: float, result: dict[str, float], target: float | None) -> float:
        """Append an evaluation to the history, note when the target was first reached;
        returns its score (the mean of the two held-out means)."""
        self.evals_done += 1
        self.history.append({"step": step, "time_s": elapsed, **result})
        if self.time_to_target is None and target is not None and min(result.values()) >= target:
            self.time_to_target, self.steps_to_target = elapsed, step
        return 0.5 * (result["interpolation"] + result["extrapolation"])


def checkpoint_payload(cfg: TrainConfig, family: Family, agent: HyperAgent, optimizer: torch.optim.Optimizer,
                       env: VecEnv, generators: dict[str, torch.Generator], progress: Progress,
                       episodes: EpisodeTracker, step: int, elapsed: float, commit: str | None) -> dict[str, Any]:
    """Everything a resumed run needs to continue exactly (``load_checkpoint`` reads it)."""
    extra: dict[str, Any] = {**asdict(progress), "elapsed": elapsed,
                             "ep_ret": episodes.ret.cpu(), "ep_len": episodes.length.cpu()}
    if hasattr(env, "state_dict"):  # gymnasium envs cannot be snapshotted
        extra["env"] = env.state_dict()
    return {
        "hypernet": agent.state_dict(),
        "critic": (agent.critic or agent.critic_hyper).state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
        "step": step,
        "version": __version__,
        "git_commit": commit,
        "config": to_dict(cfg),
        "family": family.name,
        "obs_dim": env.obs_dim,
        "extra": extra,
    }


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def train(
    cfg: TrainConfig,
    family: Family,
    run_dir: Path,
    resume: dict[str, Any] | None = None,
    init: dict[str, Any] | None = None,
    sample: Sampler | None = None,
    on_eval: EvalCallback | None = None,
) -> dict[str, Any]:
    """Run PPO on ``family`` with ``cfg``, writing TensorBoard events, checkpoints and
    ``metrics.json`` into ``run_dir``. ``resume`` is a loaded 'latest' checkpoint.

    ``on_eval(row)`` is called after each periodic held-out evaluation, once its checkpoint
    is written: ``row`` is the evaluation history's entry (``step``, ``time_s``,
    ``interpolation``, ``extrapolation``: the split means). A sweep reports it to Ray Tune,
    whose scheduler may end the process there; the run then resumes from that checkpoint.

    ``init`` (a checkpoint payload: its ``hypernet`` entry, the agent state) starts from a
    trained agent with a fresh optimiser; ``sample(n, generator, device, dtype) -> [n, P]``
    replaces the family's train distribution (the context transform stays the family's).
    Both serve ``hyperrl.adapt --mode sim`` (fine-tuning at identified parameters)."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    t_start = time.perf_counter()
    device = parse_device(cfg.device)
    dtype = cfg.torch_dtype
    seed_everything(cfg.seed)
    n, k, t_len = cfg.env.num_envs, cfg.env.variant_slots, cfg.ppo.num_steps
    batch, num_updates = n * t_len, cfg.num_updates

    # ---- environments, agent, optimiser --------------------------------------------------
    # Explicit generators (design rule 9): parameter draws and policy sampling have their own
    # streams, so changing one (e.g. eval settings) never shifts the other.
    sample = sample or family.sample
    generators = {"params": make_generator(cfg.seed, device), "actions": make_generator(cfg.seed + 1, device)}
    env = make_vec_env(family, n, device=device, dtype=dtype, seed=cfg.seed, backend=cfg.env.backend,
                       threads=cfg.env.sim_threads)
    agent = HyperAgent(env.obs_dim, env.single_action_space, family.context_dim, cfg.model).to(device, dtype)
    # fused Adam: one kernel for all parameters (~2x cheaper step on CPU and CUDA)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.ppo.lr, eps=cfg.ppo.adam_eps, fused=True)
    clip_groups = ([agent.actor_parameters(), agent.critic_parameters()] if cfg.ppo.clip_separately
                   else [list(agent.parameters())])
    # Update rows: on CPU only the visited (column, slot) pairs (compute is the cost; the
    # host sync is free); on an accelerator every pair (no sync; spare compute is cheap).
    sync_free = device.type != "cpu" if cfg.env.sync_free == "auto" else cfg.env.sync_free == "on"
    slot_rows = SlotRows.all_slots if sync_free else SlotRows.used_slots
    ckpt = CheckpointManager(run_dir)
    # Looked up once, at the start: the code running is the code loaded then (a checkout
    # during the run would otherwise be recorded), and no `git` subprocess per checkpoint.
    commit = git_commit()

    progress, step = Progress(), 0
    episodes = EpisodeTracker.zeros(n, device)
    obs = env.reset(params=sample(n, generators["params"], device, dtype), seed=cfg.seed)
    if init is not None:
        agent.load_state_dict(init["hypernet"])
    if resume is not None:
        agent.load_state_dict(resume["hypernet"])
        optimizer.load_state_dict(resume["optimizer"])
        set_rng_state(resume["rng"])
        restore_generators(generators, resume["generators"])
        step, progress = resume["step"], Progress.from_extra(resume["extra"])
        if "ep_ret" in resume["extra"]:
            episodes = EpisodeTracker(resume["extra"]["ep_ret"].to(device), resume["extra"]["ep_len"].to(device))
        if hasattr(env, "load_state_dict") and "env" in resume["extra"]:  # continue the very same episodes
            obs = env.load_state_dict(resume["extra"]["env"])
        else:  # generic backend: gymnasium envs cannot be snapshotted; start fresh episodes
            obs = env.reset(params=sample(n, generators["params"], device, dtype), seed=cfg.seed + progress.update)
    rollout = Rollout.allocate(t_len, n, env.obs_dim, agent, dtype, device)

    def elapsed() -> float:
        return progress.elapsed + time.perf_counter() - t_start

    def payload(at_step: int) -> dict[str, Any]:
        return checkpoint_payload(cfg, family, agent, optimizer, env, generators, progress, episodes, at_step,
                                  elapsed(), commit)

    # purge_step: a resumed run overwrites any events logged after its checkpoint.
    writer = SummaryWriter(str(run_dir), purge_step=step if resume is not None else None)
    bar = tqdm(total=cfg.total_steps, initial=min(step, cfg.total_steps), unit="step",
               unit_scale=True, dynamic_ncols=True, disable=not cfg.progress, file=sys.stderr)
    next_eval = (step // cfg.eval.interval_steps + 1) * cfg.eval.interval_steps
    next_ckpt = step + cfg.checkpoint_interval_steps
    target = cfg.stop_at_return if cfg.stop_at_return is not None else family.success_return
    recent_return, last_eval, stopped_early = float("nan"), {}, False
    t_loop, steps_at_loop, eval_seconds = time.perf_counter(), step, 0.0  # evaluation is excluded from steps/s
    try:
        while progress.update < num_updates:
            progress.update += 1
            if cfg.ppo.anneal_lr:
                optimizer.param_groups[0]["lr"] = cfg.ppo.lr * (1.0 - (progress.update - 1) / num_updates)

            # -- variants and their generated weights, once per rollout --
            params_tab, ctx_tab = draw_slots(env, family, sample, k, generators["params"], device, dtype)
            with torch.no_grad():
                weights = agent.policy_weights(ctx_tab.view(n * k, -1))  # each [N*K, ...]
            if not bool(torch.stack([torch.isfinite(w).all() for w in weights.values()]).all()):
                raise TrainingDiverged(f"non-finite generated weights at step {step}; "
                                       f"the last good checkpoint is in {ckpt.latest_path}")

            # -- rollout: T steps of N variants, no host transfer --
            with record_function("hyperrl/rollout"):
                obs = collect_rollout(env, agent, rollout, obs, params_tab, ctx_tab, RolloutWeights(weights, n, k),
                                      generators["actions"], episodes, cfg.ppo.reward_scale, sync_free)
            step += batch

            # -- advantages, then one PPO update over minibatches of env columns --
            with record_function("hyperrl/advantages"):
                targets = advantages(agent, rollout, cfg.ppo.gamma, cfg.ppo.gae_lambda, slot_rows)
            with record_function("hyperrl/update"):
                try:
                    stats = ppo_update(minibatch_loss(agent, rollout, targets, cfg.ppo, slot_rows), optimizer,
                                       clip_groups, n, max(1, n // cfg.ppo.num_minibatches), cfg.ppo.update_epochs,
                                       cfg.ppo.max_grad_norm, cfg.ppo.target_kl, device)
                except NonFiniteUpdate as e:
                    raise TrainingDiverged(f"non-finite loss, gradient or weights at step {step} (update "
                                           f"{progress.update}, epoch {e.epoch}); stopped; the last good "
                                           f"checkpoint is {ckpt.latest_path}") from None
            if agent.obs_norm is not None:  # the next rollout and update read the new statistics
                agent.obs_norm.update(rollout.obs)

            # -- logging: one host sync per update --
            sps = (step - steps_at_loop) / max(time.perf_counter() - t_loop - eval_seconds, 1e-9)
            finished = log_update(writer, step, stats, targets, optimizer.param_groups[0]["lr"], episodes, sps)
            recent_return = finished[0] if finished is not None else recent_return
            bar.update(min(step, cfg.total_steps) - bar.n)
            bar.set_postfix_str(f"{sps:,.0f} steps/s, return {recent_return:.1f}", refresh=False)

            # -- zero-shot evaluation on the held-out sets, checkpoints --
            if step >= next_eval or progress.update == num_updates:
                t_eval = time.perf_counter()
                heldout = evaluate_heldout(agent, family, cfg.eval, progress.evals_done, device, dtype)
                histograms = bool(cfg.histogram_interval_evals) and progress.evals_done % cfg.histogram_interval_evals == 0
                last_eval = log_heldout(writer, family, agent, heldout, step, histograms)
                score = progress.record_eval(step, elapsed(), last_eval, target)
                if score > progress.best_score:
                    progress.best_score = score
                    ckpt.save_best(payload(step), score)
                eval_seconds += time.perf_counter() - t_eval
                next_eval = (step // cfg.eval.interval_steps + 1) * cfg.eval.interval_steps
                ckpt.save_latest(payload(step))
                next_ckpt = step + cfg.checkpoint_interval_steps
                if on_eval is not None:
                    t_cb = time.perf_counter()
                    on_eval(dict(progress.history[-1]))
                    eval_seconds += time.perf_counter() - t_cb
                tqdm.write(f"step {step:>10,}  eval interpolation {last_eval['interpolation']:8.1f}  "
                           f"extrapolation {last_eval['extrapolation']:8.1f}", file=sys.stderr)
                if cfg.stop_at_return is not None and min(last_eval.values()) >= cfg.stop_at_return:
                    stopped_early = True
                    break
            elif step >= next_ckpt:
                ckpt.save_latest(payload(step))
                next_ckpt = step + cfg.checkpoint_interval_steps
    except BaseException:
        writer.close()
        raise
    finally:
        bar.close()
        env.close()
    train_s = max(time.perf_counter() - t_loop - eval_seconds, 1e-9)
    metrics = {
        "family": family.name,
        "env_steps": step,
        "updates": progress.update,
        "wall_clock_s": elapsed(),
        "steps_per_second": (step - steps_at_loop) / train_s,
        "eval_seconds": eval_seconds,
        "eval_interpolation_return": last_eval.get("interpolation"),
        "eval_extrapolation_return": last_eval.get("extrapolation"),
        "best_heldout_return": progress.best_score,
        "time_to_target_s": progress.time_to_target,
        "steps_to_target": progress.steps_to_target,
        "target_return": target,
        "stopped_early": stopped_early,
        "history": progress.history,
        "device": str(device),
        "seed": cfg.seed,
    }
    hparams = {"family": family.name, "seed": cfg.seed, "num_envs": n, "lr": cfg.ppo.lr,
               "num_steps": t_len, "hidden": str(list(cfg.model.hidden_sizes)), "init": cfg.model.init,
               "critic": cfg.model.critic, "chunk_size": cfg.model.chunk_size}
    writer.add_hparams(hparams, {"hparam/interpolation_return": metrics["eval_interpolation_return"] or 0.0,
                                 "hparam/extrapolation_return": metrics["eval_extrapolation_return"] or 0.0},
                       run_name=".")
    writer.close()
    write_json(run_dir / "metrics.json", metrics)
    return metrics


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def builtin_configs_dir() -> Path:
    """The folder of the built-in training configs (``configs/<family>.yaml``)."""
    return builtin_dir("configs")


def resolve_config(family: Family, config_path: str | None, overrides: Sequence[str],
                   seed: int | None = None, total_steps: int | None = None,
                   device: str | None = None) -> TrainConfig:
    """Defaults <- configs/<family>.yaml (or --config) <- --set overrides <- explicit flags."""
    builtin = builtin_configs_dir() / f"{family.name}.yaml"
    if config_path is not None:
        cfg = load_yaml_config(TrainConfig, config_path)
    elif builtin.is_file():
        cfg = load_yaml_config(TrainConfig, builtin)
    else:
        cfg = TrainConfig()
    cfg = apply_overrides(cfg, list(overrides))
    flags = {"seed": seed, "total_steps": total_steps, "device": device}
    return replace(cfg, **{key: v for key, v in flags.items() if v is not None})


def config_differences(run_dir: str | Path, family: Family, config_path: str | None, overrides: Sequence[str],
                       seed: int | None = None, total_steps: int | None = None,
                       device: str | None = None) -> list[str]:
    """The keys where a run dir's saved ``config.yaml`` differs from the config these
    arguments resolve to (:func:`resolve_config`), as ``key: saved there, wanted here``;
    empty when they agree or the run has no config yet. A sweep or benchmark that reuses or
    continues a run dir checks it first."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return []

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    want = flat(to_dict(resolve_config(family, config_path, overrides, seed, total_steps, device)))
    have = flat(to_dict(load_yaml_config(TrainConfig, path)))
    return [f"{k}: {have.get(k)!r} there, {want.get(k)!r} here" for k in want if want.get(k) != have.get(k)]


def start_run(family_arg: str | Family, config_path: str | None = None, overrides: Sequence[str] = (),
              seed: int | None = None, total_steps: int | None = None, device: str | None = None,
              run_dir: str | Path | None = None, run_info: dict[str, Any] | None = None,
              on_eval: EvalCallback | None = None) -> tuple[Path, dict[str, Any]]:
    """A new run: resolve the config, create the run dir (locked for this process while it
    trains, :mod:`hyperrl.runlock`), write ``config.yaml``, ``run.json`` (plus ``run_info``)
    and ``family.yaml``, train. Returns ``(run_dir, metrics)``. What ``python -m
    hyperrl.train`` runs, and each trial of a sweep."""
    family = family_arg if isinstance(family_arg, Family) else load_family(family_arg)
    cfg = resolve_config(family, config_path, overrides, seed, total_steps, device)
    if cfg.env.distractors:
        family = family.with_distractors(cfg.env.distractors)
    parse_device(cfg.device)  # fail before creating anything
    batch = cfg.env.num_envs * cfg.ppo.num_steps
    if cfg.num_updates * batch != cfg.total_steps:  # say so instead of overshooting silently
        print(f"note: total_steps {cfg.total_steps:,} is not a multiple of env.num_envs x ppo.num_steps = "
              f"{batch:,}; training runs {cfg.num_updates:,} update(s) = {cfg.num_updates * batch:,} steps",
              file=sys.stderr)
    # A run that fails before its first checkpoint leaves nothing worth keeping: its files go
    # again, so the same --run-dir is free once the problem is fixed.
    with fresh_run_dir(family.name, "", cfg.seed, run_dir,
                       keep=lambda d: CheckpointManager(d).latest_path.is_file(),
                       exists_hint="use --resume to continue it or pick another --run-dir") as out:
        save_config(cfg, out / "config.yaml")
        write_json(out / "run.json", {"method": "hyperrl", "family": family.name, "seed": cfg.seed,
                                      "version": __version__, **(run_info or {})})
        family.save_copy(out / "family.yaml")
        metrics = train(cfg, family, out, on_eval=on_eval)
    return out, metrics


def resume_run(run_dir: str | Path, total_steps: int | None = None, device: str | None = None,
               on_eval: EvalCallback | None = None, wait_s: float = 0.0) -> tuple[dict[str, Any] | None, int]:
    """Continue a run from its latest checkpoint, holding the run dir's exclusive lock
    (refused while another process trains into it or writes into it; retried for ``wait_s``
    seconds). Returns ``(metrics, step)``: metrics None when the checkpoint already has the
    run's ``total_steps`` (nothing to do), ``step`` the checkpoint's step."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise HyperrlError(f"{run_dir} is not a hyperrl run dir (no config.yaml)")
    with run_lock(run_dir, exclusive=True, wait_s=wait_s, what="resume training in"):
        cfg = load_yaml_config(TrainConfig, run_dir / "config.yaml")
        family = load_family(run_dir / "family.yaml")
        cfg = replace(cfg, **{k_: v for k_, v in {"total_steps": total_steps, "device": device}.items()
                              if v is not None})
        ckpt = CheckpointManager(run_dir)
        payload = load_checkpoint(ckpt.latest_path, map_location=parse_device(cfg.device))
        if payload["step"] >= cfg.total_steps:
            return None, int(payload["step"])
        check_writable(run_dir)
        check_writable(ckpt.latest_path.parent)
        save_config(cfg, run_dir / "config.yaml")
        return train(cfg, family, run_dir, resume=payload, on_eval=on_eval), int(payload["step"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m hyperrl.train", "Train a hypernetwork policy across an environment family.")
    parser.add_argument("--env-family", help="built-in family name (see envs/) or path to a family YAML")
    parser.add_argument("--config", help="training config YAML (default: configs/<family>.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set ppo.lr=1e-3 (repeatable)")
    parser.add_argument("--seed", type=seed_arg)
    parser.add_argument("--total-steps", type=int_range(1))
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--run-dir", help="output folder (default: runs/<family>/<timestamp>-s<seed>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    parser.add_argument("--help-config", action="store_true", help="list every config key and exit")
    args = parser.parse_args(argv)
    if args.help_config:
        print(config_docs(TrainConfig))
        return 0

    if args.resume:
        if args.env_family or args.config or args.overrides or args.run_dir or args.seed is not None:
            raise HyperrlError("--resume takes the run's own config; only --total-steps and --device may be given")
        metrics, step = resume_run(args.resume, args.total_steps, args.device)
        if metrics is None:
            total = load_yaml_config(TrainConfig, Path(args.resume) / "config.yaml").total_steps
            print(f"run {args.resume} already has {step:,} of {args.total_steps or total:,} steps; nothing to do")
            return 0
        print(f"run dir: {args.resume}")
        return 0

    if not args.env_family:
        parser.error("--env-family is required (or --resume RUN_DIR)")
    run_dir, metrics = start_run(args.env_family, args.config, args.overrides, args.seed, args.total_steps,
                                 args.device, args.run_dir)
    print(f"run dir: {run_dir}")
    print(f"held-out return: interpolation {metrics['eval_interpolation_return']:.1f}, "
          f"extrapolation {metrics['eval_extrapolation_return']:.1f}; "
          f"{metrics['env_steps']:,} steps in {metrics['wall_clock_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main)())
