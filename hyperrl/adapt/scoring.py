"""Evaluation of adapted policies on fresh episodes: their seeds (from ``EVAL_SEED``) are
never adaptation seeds, and they never count toward the budget."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from hyperrl.adapt.config import EVAL_SEED
from hyperrl.families import Family


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


def forgetting(source: Any, agent: Any, device: torch.device, episodes: int = 1) -> dict[str, float]:
    """Mean interpolation held-out return of the pre-trained and the adapted hypernetwork."""
    from hyperrl.episodes import evaluate_values

    fam = source.family
    vals = fam.heldout_values("interpolation")
    out = {}
    for key, ag in (("before", source.agent_on(device)), ("after", agent)):
        st = evaluate_values(ag, fam, vals, episodes, seed=EVAL_SEED, device=device, dtype=source.dtype)
        out[key] = float(st.mean.mean())
    return out

