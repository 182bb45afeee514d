"""What one adaptation (one mode or reference, one budget) returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hyperrl.adapt.budget import EpisodeBudget


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
