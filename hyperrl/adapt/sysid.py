"""System identification by one-step simulation: the recorded transitions ``(s, a, s')``
are replayed through the family's batched simulator for a grid of candidate parameter
values, refined coarse to fine around the best; the values that predict them best are the
*identified* values. It reuses recorded episodes, so it costs none.

A MuJoCo family (``batched: mujoco``) replays them through MuJoCo itself: each candidate's
model (its values applied as in training, derived constants recomputed), the state the
observation describes, one step of the recorded action
(:meth:`hyperrl.sim.mujoco.MujocoVecEnv.predict`). There the reward is predicted too, so a
task parameter that shows only in the reward (cheetah-vel's target velocity) is identified
as well; the grid is coarser (a MuJoCo step costs ~1000x a torch one)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from hyperrl.episodes import Episodes
from hyperrl.families import Family


def _obs_to_state(sim_name: str, obs: torch.Tensor) -> torch.Tensor:
    if sim_name == "cartpole":
        return obs
    if sim_name == "pendulum":
        return torch.stack([torch.atan2(obs[..., 1], obs[..., 0]), obs[..., 2]], -1)
    raise KeyError(sim_name)


def sysid_available(family: Family) -> bool:
    return family.batched in ("cartpole", "pendulum", "mujoco")


MUJOCO_TRANSITIONS = 128  # transitions replayed per candidate (evenly spaced over the recording)
MUJOCO_SIMS = 2048  # simulations per MuJoCo batch (candidates x transitions)


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
    predicted and observed next observation (and reward, for MuJoCo), per dimension divided
    by the variance of the observed one-step change (parameter-free dimensions then weigh
    nothing special). A grid
    over the physical bounds (log-spaced for log-context parameters, both signs for signed
    ones) is refined four times around the best point."""
    if not sysid_available(family):
        return None
    dev = torch.device(device)
    mj = family.batched == "mujoco"
    obs, act, nxt, rew = [], [], [], []
    for e in episodes:
        m = e.mask.reshape(-1)
        obs.append(e.obs.reshape(m.numel(), -1)[m])
        nxt.append(e.final_obs.reshape(m.numel(), -1)[m])
        rew.append(e.rewards.reshape(-1)[m])
        a = e.env_actions
        act.append(a.reshape(m.numel(), *a.shape[2:])[m])
    if not obs or sum(o.shape[0] for o in obs) == 0:
        return None
    obs_t, nxt_t, act_t, rew_t = torch.cat(obs), torch.cat(nxt), torch.cat(act), torch.cat(rew)
    if mj:
        max_transitions = min(max_transitions, MUJOCO_TRANSITIONS)
    if obs_t.shape[0] > max_transitions:  # evenly spaced subset
        idx = torch.linspace(0, obs_t.shape[0] - 1, max_transitions).round().long()
        obs_t, nxt_t, act_t, rew_t = obs_t[idx], nxt_t[idx], act_t[idx], rew_t[idx]
    obs64, nxt64 = obs_t.to(dev, torch.float64), nxt_t.to(dev, torch.float64)
    act_t = act_t.to(dev)
    t = obs64.shape[0]
    delta = nxt64 - obs64
    if mj:  # the reward is one more predicted quantity (its scale: its own spread)
        delta = torch.cat([delta, rew_t.to(dev, torch.float64).unsqueeze(1)], 1)
        nxt64 = torch.cat([nxt64, rew_t.to(dev, torch.float64).unsqueeze(1)], 1)
    scale = delta.std(0, unbiased=False) if t > 1 else delta.abs().reshape(-1)
    scale = scale.clamp_min(1e-6)
    if mj:
        predict = _mujoco_predictor(family, obs_t, act_t)
    else:
        predict = _torch_predictor(family, _obs_to_state(family.batched, obs64), act_t, dev)

    def errors(cands: torch.Tensor) -> torch.Tensor:  # [M, P] -> [M]
        cands = cands.to(dev, torch.float64)
        out = []
        per = max(1, (MUJOCO_SIMS if mj else 65536) // t)
        for c0 in range(0, cands.shape[0], per):
            pred = predict(cands[c0:c0 + per]).to(dev)  # [m, T, D (+1)]
            err = ((pred - nxt64) / scale).pow(2).sum(-1).mean(-1)
            out.append(torch.nan_to_num(err, nan=math.inf))
        return torch.cat(out).cpu()

    # grid in (sign, scale) space: log|v| or |v|
    p_n = family.num_params
    per_dim = max(5, int(round((32 if mj else 4096) ** (1.0 / p_n))))
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


def _torch_predictor(family: Family, state: torch.Tensor, act: torch.Tensor,
                     dev: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """candidates [m, P] -> predicted next observations [m, T, D] by the batched torch sim."""
    from hyperrl.sim import batched_sim_class

    cls = batched_sim_class(family.batched)
    t = state.shape[0]

    def predict(c: torch.Tensor) -> torch.Tensor:
        m = c.shape[0]
        sim = cls(m * t, family.param_names, device=dev, dtype=torch.float64, constants=family.constants(),
                  derived=family.derived)
        a = act.repeat(m, *([1] * (act.dim() - 1)))
        with torch.no_grad():
            ns, _, _ = sim.dynamics(state.repeat(m, 1), a, c.repeat_interleave(t, 0))
            return sim.observe(ns).view(m, t, -1)

    return predict


def _mujoco_predictor(family: Family, obs: torch.Tensor, act: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """candidates [m, P] -> predicted (next observation, reward) [m, T, D + 1]: one MuJoCo
    step from each recorded observation's state under each candidate's model."""
    from hyperrl.sim.mujoco import MujocoVecEnv

    t = obs.shape[0]
    per = max(1, MUJOCO_SIMS // t)
    sim = MujocoVecEnv(family, per * t, dtype=torch.float64, threads=0)
    obs_np = obs.to("cpu", torch.float64).numpy()
    act_np = act.to("cpu", torch.float64).numpy()

    def predict(c: torch.Tensor) -> torch.Tensor:
        m = c.shape[0]
        values = c.to("cpu", torch.float64).repeat_interleave(t, 0).numpy()
        o, r = sim.predict(values, np.tile(obs_np, (m, 1)), np.tile(act_np.reshape(t, -1), (m, 1)))
        return torch.from_numpy(np.concatenate([o, r[:, None]], 1)).view(m, t, -1)

    return predict


def mismatch(ident: Identification, belief: torch.Tensor, ratio: float) -> bool:
    """True when the believed values predict the transitions ``ratio`` times worse than the
    identified ones (and clearly worse than the numerical floor)."""
    e_belief = ident.error_at(belief)
    return e_belief > ratio * ident.error + 1e-10
