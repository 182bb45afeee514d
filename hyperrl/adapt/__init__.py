"""Few-episode adaptation of a trained hypernetwork run to one variant.

``python -m hyperrl.adapt RUN_DIR --values NAME=V --episodes K --mode MODE`` adapts with at
most K episodes of the variant's real dynamics, every one of them counted by one
:class:`EpisodeBudget`; evaluation episodes use other seeds and do not count. README's
Adaptation section is the manual. Modes (``all`` runs the four):

* ``context``: search the frozen hypernetwork's context (:mod:`hyperrl.adapt.context`);
* ``weights`` / ``hypernet``: PPO on the generated weights / on a regularised copy of the
  hypernetwork (:mod:`hyperrl.adapt.ppo_modes`);
* ``sim``: identify the parameters, then train further in the simulator (:mod:`hyperrl.adapt.sim`).

References on the same budgets: ``scratch`` and ``dr-finetune`` (:mod:`hyperrl.adapt.references`).
Shared parts: settings and seeds (``config``), the budget and episode collection
(``budget``), system identification (``sysid``), policies and learners (``learners``), PPO on
recorded episodes (``finetune``), scoring adapted policies (``scoring``); :mod:`hyperrl.adapt.run`
orchestrates, ``report`` writes the output folder, ``adapted_run`` loads it, ``cli`` is the
command line.
"""

from hyperrl.adapt.adapted_run import AdaptedRun, load_adapted_run
from hyperrl.adapt.budget import BudgetExceeded, EpisodeBudget, run_episodes
from hyperrl.adapt.cli import main
from hyperrl.adapt.config import DEFAULT_BUDGETS, MODES, REFERENCES, AdaptConfig
from hyperrl.adapt.scoring import evaluate_policy
from hyperrl.adapt.learners import WeightsPolicy
from hyperrl.adapt.references import adapt_reference
from hyperrl.adapt.run import adapt, adapt_mode
from hyperrl.adapt.sysid import Identification, identify
from hyperrl.episodes import Episodes

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
