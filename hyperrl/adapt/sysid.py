"""System identification by one-step simulation: the recorded transitions ``(s, a, s')``
are replayed through the family's batched simulator for a grid of candidate parameter
values, refined coarse to fine around the best; the values that predict them best are the
*identified* values. It reuses recorded episodes, so it costs none."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

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
    dev = torch.device(device)
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
            sim = cls(m * t, family.param_names, device=dev, dtype=torch.float64, constants=family.constants(),
                      derived=family.derived)
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


def mismatch(ident: Identification, belief: torch.Tensor, ratio: float) -> bool:
    """True when the believed values predict the transitions ``ratio`` times worse than the
    identified ones (and clearly worse than the numerical floor)."""
    e_belief = ident.error_at(belief)
    return e_belief > ratio * ident.error + 1e-10
