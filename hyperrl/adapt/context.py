"""``context`` mode: the hypernetwork stays frozen and only its context vector is searched,
one candidate context per episode (deterministic actions).

The search runs in context coordinates of physically valid values: each magnitude feature
min-max scaled so the train range is [-1, 1], plus a sign (±1) per signed parameter, both
signs searched while the sign is unknown. Candidates, in order: the believed context, the
nearest in-train-range one, the train centre, then sequential cross-entropy draws around the
best-returning candidates (spread ``sigma``, shrinking by ``sigma_decay`` per draw).
Candidates tied for the best mean return (CartPole saturates at the time limit) are raced,
up to ``race_evals`` episodes each, and a candidate's k-th episode starts from the k-th
common seeded start. Identification after every episode re-centres the search when it
changes the belief.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from hyperrl.adapt.budget import EpisodeBudget, run_episodes
from hyperrl.episodes import Episodes
from hyperrl.adapt.config import ADAPT_SEED, AdaptConfig
from hyperrl.adapt.learners import generated_policy
from hyperrl.adapt.result import AdaptResult
from hyperrl.adapt.sysid import identify, mismatch, sysid_available
from hyperrl.errors import HyperrlError
from hyperrl.families import Family


def prior_values(family: Family) -> torch.Tensor:
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
                if hidden or mismatch(ident, belief, cfg.mismatch_ratio):
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



def context_adapt(source: Any, env_values: torch.Tensor, belief: torch.Tensor, hidden: bool,
                  budget: EpisodeBudget, cfg: AdaptConfig, seed: int, dev: torch.device, use_sysid: bool,
                  t0: float, world: Family | None = None) -> AdaptResult:
    """The frozen hypernetwork's policy at the context the search chooses within ``budget``."""
    family: Family = source.family
    if source.agent.cfg.context == "none":
        raise HyperrlError(f"{source.run_dir} is a context-blind run (model.context: none): context mode "
                           "cannot change its policy; use --mode weights")
    chosen, info = _context_search(source, env_values, belief, hidden, budget, cfg, seed, dev, use_sysid, world)
    pol = generated_policy(source, chosen, dev)
    ctx = family.context(chosen.reshape(1, -1))[0]
    return AdaptResult("context", pol, budget, info, ctx, chosen, wall_s=time.perf_counter() - t0)
