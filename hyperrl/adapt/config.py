"""Adaptation settings and the constants every part of the adapter shares: the modes and
references, the reported budgets, the seed ranges (adaptation and evaluation episodes never
share a start) and the format of ``policy.pt``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from hyperrl.config import Checked, ConfigError, apply_overrides, opt
from hyperrl.errors import HyperrlError

MODES = ("context", "weights", "hypernet", "sim")
REFERENCES = ("scratch", "dr-finetune")
DEFAULT_BUDGETS = (0, 1, 2, 5, 10)
EVAL_SEED = 20_000  # evaluation episodes: env i reset with Gymnasium seed EVAL_SEED + i
ADAPT_SEED = 500_000  # adaptation episodes: simulator seeds from here (never an evaluation seed)
SIM_CHECK_SEED = 700_000  # sim mode: the simulated comparison's starts (neither of the above)
POLICY_FILE = "policy.pt"
FORMAT = 1


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
