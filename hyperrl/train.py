"""Train a hypernetwork-generated policy across a family with PPO.

    python -m hyperrl.train --env-family cartpole-mass [--config F] [--set ppo.lr=1e-3 ...]
        [--seed N] [--total-steps N] [--device auto|cpu|cuda] [--run-dir DIR] [--resume RUN_DIR]

The PPO loop is :func:`train`, top to bottom (CleanRL's virtue); its pieces (GAE, loss,
distributions, slot-wise weight application) live in ``ppo.py``/``agent.py`` and are
tested alone.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.profiler import record_function

from hyperrl import __version__
from hyperrl.agent import HyperAgent, RolloutWeights, SlotRows, gather_slots
from hyperrl.hypernet import functional_mlp
from hyperrl.checkpoint import CheckpointManager, git_commit, load_checkpoint
from hyperrl.cli import int_range, main_guard, make_parser, parse_device, seed_arg
from hyperrl.config import apply_overrides, config_docs, load_yaml_config, save_config, to_dict
from hyperrl.errors import HyperrlError
from hyperrl.episodes import HELDOUT_EVAL_SEED, evaluate_values
from hyperrl.families import SPLITS, Family, load_family
from hyperrl.fileio import check_writable, fresh_run_dir, write_json
from hyperrl.ppo import explained_variance, gae, ppo_loss
from hyperrl.resources import builtin_dir
from hyperrl.seeding import make_generator, restore_generators, rng_state, seed_everything, set_rng_state
from hyperrl.sim import BatchedSim, make_vec_env
from hyperrl.train_config import TrainConfig

__all__ = ["train", "main", "resolve_config", "builtin_configs_dir", "TrainingDiverged"]


class TrainingDiverged(HyperrlError):
    """A non-finite loss or generated weight: the run stops, the last good checkpoint stays."""


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


def add_weight_histogram(writer: Any, tag: str, values: torch.Tensor, step: int, bins: int = 64) -> None:
    """``writer.add_histogram`` computed with torch (``bins`` equal-width buckets over [min, max]).

    Why not ``add_histogram``: its sum of squares is a NumPy ``dot``, i.e. an OpenBLAS call
    whose worker threads keep spinning afterwards on the cores torch needs (issue #3: the
    N = 1,024 config's whole-run steps/s went from ~295k to ~375k without it, 2 cores;
    ``OPENBLAS_NUM_THREADS=1`` closed the gap too). NumPy's 'tensorflow' bins also wrote
    ~10 KB per tensor; 64 buckets are plenty for TensorBoard's display (it rebins to ~30).
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


def _all_finite(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack([torch.isfinite(t).all() for t in tensors.values()]).all()


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


def train(
    cfg: TrainConfig,
    family: Family,
    run_dir: Path,
    resume: dict[str, Any] | None = None,
    init: dict[str, Any] | None = None,
    sample: Callable[[int, torch.Generator, torch.device, torch.dtype], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Run PPO on ``family`` with ``cfg``, writing TensorBoard events, checkpoints and
    ``metrics.json`` into ``run_dir``. ``resume`` is a loaded 'latest' checkpoint.

    ``init`` (a checkpoint payload: its ``hypernet`` entry, the agent state) starts from a
    trained agent with a fresh optimiser; ``sample(n, generator, device, dtype) -> [n, P]``
    replaces the family's train distribution (the context transform stays the family's).
    Both serve ``hyperrl.adapt --mode sim`` (fine-tuning at identified parameters)."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from hyperrl.plots import figure_to_array, return_vs_param_figure

    t_start = time.perf_counter()
    device = parse_device(cfg.device)
    dtype = _dtype(cfg.dtype)
    seed_everything(cfg.seed)
    n, k, t_len = cfg.env.num_envs, cfg.env.variant_slots, cfg.ppo.num_steps
    batch = n * t_len
    num_updates = cfg.num_updates
    mb_cols = max(1, n // cfg.ppo.num_minibatches)

    # ---- environments, variants, agent --------------------------------------------------
    # Explicit generators (design rule 9): parameter draws and policy sampling have their own
    # streams, so changing one (e.g. eval settings) never shifts the other.
    sample = sample or family.sample
    param_gen = make_generator(cfg.seed, device)
    action_gen = make_generator(cfg.seed + 1, device)
    env = make_vec_env(family, n, device=device, dtype=dtype, seed=cfg.seed, backend=cfg.env.backend)
    agent = HyperAgent(env.obs_dim, env.single_action_space, family.context_dim, cfg.model).to(device, dtype)
    # fused Adam: one kernel for all parameters (~2x cheaper step on CPU and CUDA)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.ppo.lr, eps=cfg.ppo.adam_eps, fused=True)
    ckpt = CheckpointManager(run_dir)
    clip_groups = ([agent.actor_parameters(), agent.critic_parameters()] if cfg.ppo.clip_separately
                   else [list(agent.parameters())])

    global_step, update0, best_score, evals_done = 0, 0, -math.inf, 0
    history: list[dict[str, Any]] = []
    time_to_target: float | None = None
    steps_to_target: int | None = None
    elapsed_before = 0.0
    obs = env.reset(params=sample(n, param_gen, device, dtype), seed=cfg.seed)
    if init is not None:
        agent.load_state_dict(init["hypernet"])
    if resume is not None:
        agent.load_state_dict(resume["hypernet"])
        optimizer.load_state_dict(resume["optimizer"])
        set_rng_state(resume["rng"])
        restore_generators({"params": param_gen, "actions": action_gen}, resume["generators"])
        st = resume["extra"]
        global_step, update0, best_score = resume["step"], st["update"], st["best_score"]
        evals_done, history, elapsed_before = st["evals_done"], st["history"], st["elapsed"]
        time_to_target, steps_to_target = st.get("time_to_target"), st.get("steps_to_target")
        if isinstance(env, BatchedSim) and "env" in st:  # continue the very same episodes
            es = st["env"]
            env.state, env.elapsed = es["state"].to(device, dtype), es["elapsed"].to(device)
            env.params, env.next_params = es["params"].to(device, dtype), es["next_params"].to(device, dtype)
            env.generator.set_state(es["generator"].cpu())
            obs = env.observe(env.state)
        else:  # generic backend: gymnasium envs cannot be snapshotted; start fresh episodes
            obs = env.reset(params=sample(n, param_gen, device, dtype), seed=cfg.seed + update0)

    # purge_step: a resumed run overwrites any events logged after its checkpoint.
    writer = SummaryWriter(str(run_dir), purge_step=global_step if resume is not None else None)
    ep_ret = torch.zeros(n, dtype=torch.float64, device=device)
    ep_len = torch.zeros(n, dtype=torch.long, device=device)
    if resume is not None and "ep_ret" in resume["extra"]:
        ep_ret = resume["extra"]["ep_ret"].to(device)
        ep_len = resume["extra"]["ep_len"].to(device)

    # Rollout storage, time-major [T, N, ...], on the device for the whole run.
    obs_buf = torch.zeros(t_len, n, env.obs_dim, dtype=dtype, device=device)
    final_obs_buf = torch.zeros_like(obs_buf)
    act_shape = () if agent.discrete else (agent.act_dim,)
    act_buf = torch.zeros(t_len, n, *act_shape, dtype=torch.long if agent.discrete else dtype, device=device)
    logp_buf = torch.zeros(t_len, n, dtype=dtype, device=device)
    rew_buf = torch.zeros(t_len, n, dtype=dtype, device=device)
    term_buf = torch.zeros(t_len, n, dtype=torch.bool, device=device)
    trunc_buf = torch.zeros(t_len, n, dtype=torch.bool, device=device)
    slot_buf = torch.zeros(t_len, n, dtype=torch.long, device=device)
    cols = torch.arange(n, device=device)
    # Update rows: on CPU only the visited (column, slot) pairs (compute is the cost; the
    # host sync is free); on an accelerator every pair (no sync; spare compute is cheap).
    sync_free = device.type != "cpu" if cfg.env.sync_free == "auto" else cfg.env.sync_free == "on"
    slot_rows = SlotRows.all_slots if sync_free else SlotRows.used_slots

    def run_eval(step: int) -> dict[str, float]:
        """Zero-shot evaluation on the held-out splits: scalars, a picture, a checkpoint."""
        nonlocal best_score, evals_done, time_to_target, steps_to_target, eval_seconds
        t_eval = time.perf_counter()
        agent.eval()
        result: dict[str, float] = {}
        all_values, all_means = [], []
        for split in SPLITS:
            stats = evaluate_values(agent, family, family.heldout_values(split), cfg.eval.episodes,
                                    seed=HELDOUT_EVAL_SEED + evals_done, device=device, dtype=dtype,
                                    deterministic=cfg.eval.deterministic)
            result[split] = float(stats.mean.mean())
            writer.add_scalar(f"eval/{split}/return_mean", result[split], step)
            writer.add_scalar(f"eval/{split}/return_min", float(stats.mean.min()), step)
            if family.success_return is not None:
                success = float((stats.returns >= family.success_return).double().mean())
                writer.add_scalar(f"eval/{split}/success_rate", success, step)
            all_values.append(stats.values)
            all_means.append(stats.mean)
        values, means = torch.cat(all_values), torch.cat(all_means)
        fig = return_vs_param_figure(family, values, means, None, title=f"zero-shot return, step {step}",
                                     threshold=family.success_return)
        writer.add_image("eval/return_vs_param", figure_to_array(fig), step, dataformats="HWC")
        if cfg.histogram_interval_evals and evals_done % cfg.histogram_interval_evals == 0:
            with torch.no_grad():
                w = agent.policy_weights(family.context(values).to(device, dtype))
            for key, tensor in w.items():
                add_weight_histogram(writer, f"charts/generated_weights/{key}", tensor, step)
        evals_done += 1
        agent.train()
        score = 0.5 * (result["interpolation"] + result["extrapolation"])
        elapsed = elapsed_before + time.perf_counter() - t_start
        history.append({"step": step, "time_s": elapsed, **result})
        target = cfg.stop_at_return if cfg.stop_at_return is not None else family.success_return
        if time_to_target is None and target is not None and min(result.values()) >= target:
            time_to_target, steps_to_target = elapsed, step
        if score > best_score:
            best_score = score
            ckpt.save_best(payload(step, update), score)
        eval_seconds += time.perf_counter() - t_eval
        return result

    # Looked up once, at the start: the code running is the code loaded then (a checkout
    # during the run would otherwise be recorded), and no `git` subprocess per checkpoint.
    commit = git_commit()

    def payload(step: int, upd: int) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "update": upd, "best_score": best_score, "evals_done": evals_done, "history": history,
            "elapsed": elapsed_before + time.perf_counter() - t_start,
            "time_to_target": time_to_target, "steps_to_target": steps_to_target,
            "ep_ret": ep_ret.cpu(), "ep_len": ep_len.cpu(),
        }
        if isinstance(env, BatchedSim):
            extra["env"] = {"state": env.state.cpu(), "elapsed": env.elapsed.cpu(), "params": env.params.cpu(),
                            "next_params": env.next_params.cpu(), "generator": env.generator.get_state()}
        return {
            "hypernet": agent.state_dict(),
            "critic": (agent.critic or agent.critic_hyper).state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(),
            "generators": {"params": param_gen.get_state(), "actions": action_gen.get_state()},
            "step": step,
            "version": __version__,
            "git_commit": commit,
            "config": to_dict(cfg),
            "family": family.name,
            "obs_dim": env.obs_dim,
            "extra": extra,
        }

    # ---- the loop ---------------------------------------------------------------------------
    bar = tqdm(total=cfg.total_steps, initial=min(global_step, cfg.total_steps), unit="step",
               unit_scale=True, dynamic_ncols=True, disable=not cfg.progress, file=sys.stderr)
    next_eval = (global_step // cfg.eval.interval_steps + 1) * cfg.eval.interval_steps
    next_ckpt = global_step + cfg.checkpoint_interval_steps
    recent_return = float("nan")
    last_eval: dict[str, float] = {}
    update = update0
    stopped_early = False
    t_loop = time.perf_counter()
    steps_at_loop = global_step
    eval_seconds = 0.0  # excluded from the training throughput
    try:
        while update < num_updates:
            update += 1
            if cfg.ppo.anneal_lr:
                optimizer.param_groups[0]["lr"] = cfg.ppo.lr * (1.0 - (update - 1) / num_updates)

            # Variant slots for this rollout: slot 0 is each env's current variant (its episode
            # continues), slots 1..K-1 are fresh draws it moves to as its episodes end.
            params_tab = torch.cat([env.params.unsqueeze(1),
                                    sample(n * (k - 1), param_gen, device, dtype).view(n, k - 1, -1)], 1)
            ctx_tab = family.context(params_tab).to(dtype)  # [N, K, C]
            slot = torch.zeros(n, dtype=torch.long, device=device)
            env.next_params = params_tab[:, 1]
            with torch.no_grad():
                weights = agent.policy_weights(ctx_tab.view(n * k, -1))  # each [N*K, ...]
                if not bool(_all_finite(weights)):
                    raise TrainingDiverged(f"non-finite generated weights at step {global_step}; "
                                           f"the last good checkpoint is in {ckpt.latest_path}")
                rollout_w = RolloutWeights(weights, n, k)

            # -- rollout: T steps of N variants, no host transfer --
            with record_function("hyperrl/rollout"):
                ret_sum = torch.zeros((), dtype=torch.float64, device=device)
                ret_cnt = torch.zeros((), dtype=torch.long, device=device)
                len_sum = torch.zeros((), dtype=torch.long, device=device)
                for t in range(t_len):
                    obs_buf[t], slot_buf[t] = obs, slot
                    with torch.no_grad():
                        w_now = rollout_w.current  # each env's slot weights, [N, ...]
                        dist = agent.policy_head(w_now, functional_mlp(w_now, obs, cfg.model.activation))
                        action = dist.sample(action_gen)
                        logp_buf[t] = dist.log_prob(action)
                    act_buf[t] = action
                    out = env.step(agent.env_action(action))
                    rew_buf[t], term_buf[t], trunc_buf[t], final_obs_buf[t] = (
                        out.reward * cfg.ppo.reward_scale, out.terminated, out.truncated, out.final_obs)
                    done = out.terminated | out.truncated
                    ep_ret += out.reward.to(torch.float64)
                    ep_len += 1
                    ret_sum += (ep_ret * done).sum()
                    len_sum += (ep_len * done).sum()
                    ret_cnt += done.sum()
                    ep_ret.masked_fill_(done, 0.0)
                    ep_len.masked_fill_(done, 0)
                    slot = torch.where(done, (slot + 1).clamp(max=k - 1), slot)
                    rollout_w.advance(done, slot, branch_free=sync_free)
                    env.next_params = params_tab[cols, (slot + 1).clamp(max=k - 1)]
                    obs = out.obs
                global_step += batch

            # -- advantages: V(s_t) and V(successor) under the variant that produced step t
            #    (truncation bootstraps from V(final_obs_t), termination does not) --
            with record_function("hyperrl/advantages"):
                values, next_values, ctx_buf = critic_values(agent, ctx_tab, obs_buf, slot_buf, final_obs_buf,
                                                             trunc_buf, obs, slot, slot_rows)
                tm = lambda x: x.transpose(0, 1)  # noqa: E731  [T, N, ...] <-> [N, T, ...]
                adv, returns = gae(rew_buf, values, next_values, term_buf, trunc_buf, cfg.ppo.gamma, cfg.ppo.gae_lambda)

            # -- update: minibatches of env columns; each visited (column, slot) variant's weights
            #    are generated once per minibatch and applied to all its steps --
            with record_function("hyperrl/update"):
                stats: dict[str, list[torch.Tensor]] = {k_: [] for k_ in
                                                        ("policy", "value", "entropy", "approx_kl", "clipfrac")}
                bad_grad = torch.zeros((), dtype=torch.bool, device=device)
                # env-major [N, T, ...] copies, made once per update: a minibatch of columns is
                # then a contiguous row gather instead of a strided one per tensor
                nm = {key: tm(x).contiguous() for key, x in (("obs", obs_buf), ("slot", slot_buf), ("act", act_buf),
                      ("ctx", ctx_buf), ("logp", logp_buf), ("adv", adv), ("values", values), ("returns", returns))}
                for epoch in range(cfg.ppo.update_epochs):
                    perm = torch.randperm(n, device=device)
                    for mb in perm.split(mb_cols):
                        o = nm["obs"][mb]  # [M, T, D]
                        rows = slot_rows(nm["slot"][mb], k)
                        ctx_rows = ctx_tab[mb[rows.col], rows.slot]  # [R, C]
                        dist = agent.dist_rows(agent.policy_weights(ctx_rows), o, rows)
                        new_logp = dist.log_prob(nm["act"][mb])
                        new_v = agent.value(o, nm["ctx"][mb], rows, agent.critic_weights(ctx_rows))
                        lo = ppo_loss(new_logp.reshape(-1), nm["logp"][mb].reshape(-1), nm["adv"][mb].reshape(-1),
                                      new_v.reshape(-1), nm["values"][mb].reshape(-1), nm["returns"][mb].reshape(-1),
                                      dist.entropy().reshape(-1), cfg.ppo.clip_coef, cfg.ppo.vf_coef, cfg.ppo.ent_coef,
                                      cfg.ppo.clip_vloss, cfg.ppo.norm_adv)
                        optimizer.zero_grad(set_to_none=True)
                        lo.loss.backward()
                        for group in clip_groups:
                            norm = torch.nn.utils.clip_grad_norm_(group, cfg.ppo.max_grad_norm)
                            bad_grad |= ~torch.isfinite(norm)  # checked once per epoch (no per-step sync)
                        optimizer.step()
                        for key in stats:
                            stats[key].append(getattr(lo, key).detach())
                    finite = torch.isfinite(torch.stack(stats["policy"] + stats["value"])).all() & ~bad_grad
                    if not bool(finite) or not bool(_all_finite(dict(agent.named_parameters()))):
                        raise TrainingDiverged(f"non-finite loss, gradient or weights at step {global_step} (update "
                                               f"{update}); stopped; the last good checkpoint is {ckpt.latest_path}")
                    if cfg.ppo.target_kl is not None and float(stats["approx_kl"][-1]) > cfg.ppo.target_kl:
                        break

            # -- logging: one host sync per update --
            means = {key: float(torch.stack(v).mean()) for key, v in stats.items()}
            for key, v in means.items():
                writer.add_scalar(f"losses/{key}", v, global_step)
            writer.add_scalar("losses/explained_variance", explained_variance(values.flatten(), returns.flatten()),
                              global_step)
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            cnt = int(ret_cnt)
            if cnt:
                recent_return = float(ret_sum) / cnt
                writer.add_scalar("charts/episode_return", recent_return, global_step)
                writer.add_scalar("charts/episode_length", float(len_sum) / cnt, global_step)
            sps = (global_step - steps_at_loop) / max(time.perf_counter() - t_loop - eval_seconds, 1e-9)
            writer.add_scalar("charts/steps_per_second", sps, global_step)
            bar.update(min(global_step, cfg.total_steps) - bar.n)
            bar.set_postfix_str(f"{sps:,.0f} steps/s, return {recent_return:.1f}", refresh=False)

            if global_step >= next_eval or update == num_updates:
                last_eval = run_eval(global_step)
                next_eval = (global_step // cfg.eval.interval_steps + 1) * cfg.eval.interval_steps
                ckpt.save_latest(payload(global_step, update))
                next_ckpt = global_step + cfg.checkpoint_interval_steps
                tqdm.write(f"step {global_step:>10,}  eval interpolation {last_eval['interpolation']:8.1f}  "
                           f"extrapolation {last_eval['extrapolation']:8.1f}", file=sys.stderr)
                if cfg.stop_at_return is not None and min(last_eval.values()) >= cfg.stop_at_return:
                    stopped_early = True
                    break
            elif global_step >= next_ckpt:
                ckpt.save_latest(payload(global_step, update))
                next_ckpt = global_step + cfg.checkpoint_interval_steps
    except BaseException:
        writer.close()
        raise
    finally:
        bar.close()
        env.close()
    wall = elapsed_before + time.perf_counter() - t_start
    metrics = {
        "family": family.name,
        "env_steps": global_step,
        "updates": update,
        "wall_clock_s": wall,
        "steps_per_second": (global_step - steps_at_loop) / max(time.perf_counter() - t_loop - eval_seconds, 1e-9),
        "eval_seconds": eval_seconds,
        "eval_interpolation_return": last_eval.get("interpolation"),
        "eval_extrapolation_return": last_eval.get("extrapolation"),
        "best_heldout_return": best_score,
        "time_to_target_s": time_to_target,
        "steps_to_target": steps_to_target,
        "target_return": cfg.stop_at_return if cfg.stop_at_return is not None else family.success_return,
        "stopped_early": stopped_early,
        "history": history,
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
        run_dir = Path(args.resume)
        if args.env_family or args.config or args.overrides or args.run_dir or args.seed is not None:
            raise HyperrlError("--resume takes the run's own config; only --total-steps and --device may be given")
        if not (run_dir / "config.yaml").is_file():
            raise HyperrlError(f"{run_dir} is not a hyperrl run dir (no config.yaml)")
        cfg = load_yaml_config(TrainConfig, run_dir / "config.yaml")
        family = load_family(run_dir / "family.yaml")
        cfg = replace(cfg, **{k_: v for k_, v in {"total_steps": args.total_steps, "device": args.device}.items()
                              if v is not None})
        ckpt = CheckpointManager(run_dir)
        payload = load_checkpoint(ckpt.latest_path, map_location=parse_device(cfg.device))
        if payload["step"] >= cfg.total_steps:
            print(f"run {run_dir} already has {payload['step']:,} of {cfg.total_steps:,} steps; nothing to do")
            return 0
        check_writable(run_dir)
        check_writable(ckpt.latest_path.parent)
        save_config(cfg, run_dir / "config.yaml")
        train(cfg, family, run_dir, resume=payload)
        print(f"run dir: {run_dir}")
        return 0

    if not args.env_family:
        parser.error("--env-family is required (or --resume RUN_DIR)")
    family = load_family(args.env_family)
    cfg = resolve_config(family, args.config, args.overrides, args.seed, args.total_steps, args.device)
    parse_device(cfg.device)  # fail before creating anything
    batch = cfg.env.num_envs * cfg.ppo.num_steps
    if cfg.num_updates * batch != cfg.total_steps:  # say so instead of overshooting silently
        print(f"note: total_steps {cfg.total_steps:,} is not a multiple of env.num_envs x ppo.num_steps = "
              f"{batch:,}; training runs {cfg.num_updates:,} update(s) = {cfg.num_updates * batch:,} steps",
              file=sys.stderr)
    # A run that fails before its first checkpoint leaves nothing worth keeping: its files go
    # again, so the same --run-dir is free once the problem is fixed.
    with fresh_run_dir(family.name, "", cfg.seed, args.run_dir,
                       keep=lambda d: CheckpointManager(d).latest_path.is_file(),
                       exists_hint="use --resume to continue it or pick another --run-dir") as run_dir:
        save_config(cfg, run_dir / "config.yaml")
        write_json(run_dir / "run.json", {"method": "hyperrl", "family": family.name, "seed": cfg.seed,
                                          "version": __version__})
        shutil.copyfile(family.source, run_dir / "family.yaml")
        metrics = train(cfg, family, run_dir)
    print(f"run dir: {run_dir}")
    print(f"held-out return: interpolation {metrics['eval_interpolation_return']:.1f}, "
          f"extrapolation {metrics['eval_extrapolation_return']:.1f}; "
          f"{metrics['env_steps']:,} steps in {metrics['wall_clock_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main)())
