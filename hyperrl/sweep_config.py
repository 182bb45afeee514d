"""The sweep file: what ``python -m hyperrl.sweep SWEEP.yaml`` runs, every key documented once.

A sweep is a grid of trials, each one run dir: families x (architectures and their grid
points, baselines) x seeds, optionally per-variant oracles, and optionally a search over
config keys instead of fixed values. ``configs/sweeps/`` holds the shipped ones;
``python -m hyperrl.sweep --help-config`` prints this documentation. Loaded like a training
config (:mod:`hyperrl.config`): unknown keys and bad values are one-line errors, ``--set``
overrides any key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from hyperrl.archs import ARCHS
from hyperrl.config import Checked, opt
from hyperrl.seeding import MAX_SEED

__all__ = ["SweepConfig", "SearchConfig", "TrialEvalConfig", "OracleConfig", "NAME_RE", "SEARCH_RE"]

BASELINES = ("dr", "concat", "oracle")  # hyperrl.baselines.METHODS, without importing stable-baselines3
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=,-]{0,99}$")
# KEY=DIST(ARGS): the distributions a search may draw a config key from
SEARCH_RE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*=\s*(uniform|loguniform|randint|choice)\s*\((.*)\)\s*$")


@dataclass(frozen=True)
class TrialEvalConfig(Checked):
    enabled: bool = opt(False, "after training, evaluate each trial's run on every held-out variant, as "
                        "`python -m hyperrl.evaluate RUN --split all` does (oracles: their own variant), into "
                        "RUN/eval/<name>; the comparison then scores each variant (else the final in-training "
                        "evaluation's split means)")
    name: str = opt("heldout-all", "the evaluation's folder name under RUN/eval/ (the comparison reads it)")
    episodes: int = opt(10, "episodes per held-out variant", min=1)
    backend: str = opt("batched", "batched: the family's batched simulator (the same physics step for step, "
                       "much cheaper); gymnasium: real Gymnasium envs", choices=("batched", "gymnasium"))
    checkpoint: str = opt("latest", "hyperrl runs: the checkpoint evaluated; latest is the final policy (best "
                          "is chosen on the held-out sets themselves)", choices=("latest", "best"))
    seed: int = opt(0, "env i of the evaluation is reset with seed + i", min=0, max=MAX_SEED)


@dataclass(frozen=True)
class OracleConfig(Checked):
    enabled: bool = opt(False, "also train a per-variant oracle for every held-out variant of each family: "
                        "the `arch` policy trained on that variant alone (a one-variant copy of the family), "
                        "so the comparison normalises every score between random actions (0) and the "
                        "oracle (1), as benchmarks/protocol.py does")
    arch: str = opt("blind", "the oracles' model.arch (one variant: no context needed)", choices=ARCHS)
    total_steps: Optional[int] = opt(None, "env steps per oracle (null: the trials' total_steps)", min=1)
    seed: int = opt(1, "the oracles' seed", min=0, max=MAX_SEED)
    schedules: tuple[tuple[str, ...], ...] = opt(
        ((),), "one oracle run per held-out variant and per schedule: a list of --set overrides on top of "
        "the family's config and the sweep's `set` (e.g. a smaller batch for one variant); each variant's "
        "oracle return is the best of its runs")


@dataclass(frozen=True)
class SearchConfig(Checked):
    space: tuple[str, ...] = opt((), "config keys to search, each KEY=DIST(ARGS): uniform(lo, hi), "
                                 "loguniform(lo, hi), randint(lo, hi) (hi excluded), choice(v1, v2, ...); "
                                 "empty: no search, the sweep is the grid")
    algorithm: str = opt("random", "random: Ray Tune's random sampling; optuna: Optuna's TPE "
                         "(ray.tune.search.optuna.OptunaSearch), which learns from finished trials",
                         choices=("random", "optuna"))
    samples: int = opt(8, "configurations tried per cell (family x method x grid point); each is one trial "
                       "with the sweep's one seed", min=1)
    metric: str = opt("interpolation", "the held-out mean return maximised: interpolation (keeps the "
                      "extrapolation set unseen by the tuning), extrapolation, or heldout (their mean)",
                      choices=("interpolation", "extrapolation", "heldout"))
    scheduler: str = opt("asha", "asha: ASHA stops trials whose evaluations trail the others' at the same "
                         "env step (each periodic held-out evaluation is a report); fifo: every trial runs "
                         "to the end", choices=("asha", "fifo"))
    grace_steps: int = opt(0, "ASHA: env steps a trial runs before it may be stopped (0: its first "
                           "evaluation interval)", min=0)
    reduction_factor: int = opt(3, "ASHA: the fraction 1/reduction_factor of trials continues at each rung",
                                min=2)
    seed: int = opt(0, "seed of the search's own sampling", min=0, max=2**31 - 1)


@dataclass(frozen=True)
class SweepConfig(Checked):
    name: str = opt("", "the sweep's name: its run dirs are <storage>/<name>/<family>/<trial>/ (empty: the "
                    "sweep file's name without .yaml)")
    storage: str = opt("runs/sweeps", "the folder of every sweep's run dirs (relative paths from the current "
                       "directory); on a cluster a path that every node mounts at the same place")
    families: tuple[str, ...] = opt((), "families, by built-in name or family YAML path")
    archs: tuple[str, ...] = opt(("hyper",), "model.arch values trained by hyperrl.train, one trial each per "
                                 "family, grid point and seed", choices=ARCHS)
    baselines: tuple[str, ...] = opt((), "stable-baselines3 methods trained by hyperrl.baselines (labelled "
                                     "sb3-<method>): dr, concat, oracle", choices=BASELINES)
    seeds: tuple[int, ...] = opt((1,), "seeds: every trial runs once per seed", min=0, max=MAX_SEED)
    config: Optional[str] = opt(None, "training config YAML for every family (null: configs/<family>.yaml)")
    set: tuple[str, ...] = opt((), "--set overrides (KEY=VALUE) for every hyperrl trial and oracle")
    grid: tuple[tuple[str, ...], ...] = opt(
        (), "grid axes for the hyperrl trials: each a list of --set alternatives, e.g. [ppo.lr=0.001, "
        "ppo.lr=0.0025]; every combination is a grid point (its trials are labelled arch-<key>=<value>, "
        "env.distractors=K as arch-dK)")
    total_steps: Optional[int] = opt(None, "env steps per hyperrl trial (null: the config's total_steps)", min=1)
    baseline_steps: int = opt(100_000, "env steps per baseline trial (oracle: per variant)", min=1)
    baseline_set: tuple[str, ...] = opt((), "KEY=VALUE stable-baselines3 PPO settings for the baseline trials "
                                        "(hyperrl.baselines --set)")
    cpus: float = opt(1.0, "CPUs reserved per trial; its torch thread count (at least 1)", gt=0.0)
    gpus: float = opt(0.0, "GPUs reserved per trial; a fraction shares one GPU between trials", min=0.0)
    device: str = opt("auto", "auto: cuda for trials with gpus > 0, else cpu; or cpu, cuda, cuda:N")
    max_failures: int = opt(2, "retries of a failed trial (each continues from the run dir's latest "
                            "checkpoint); a trial still failing after them is reported and the others finish",
                            min=0)
    max_concurrent: int = opt(0, "at most this many trials at once (0: as many as the cluster's resources allow)",
                              min=0)
    evaluate: TrialEvalConfig = opt(TrialEvalConfig, "the held-out evaluation of each trial after training")
    oracles: OracleConfig = opt(OracleConfig, "per-variant oracles for normalised scores")
    search: SearchConfig = opt(SearchConfig, "a search over config keys (hyperparameter tuning)")
    reference: str = opt("hyper", "the comparison's reference method (hyperrl.compare --reference)")
    bootstrap_reps: int = opt(2000, "bootstrap resamples of the comparison's confidence intervals", min=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.name and not NAME_RE.match(self.name):
            raise ValueError(f"name {self.name!r}: use letters, digits and . _ + = , - (not starting with . or -)")
        for what, items in (("families", self.families), ("archs", self.archs), ("baselines", self.baselines),
                            ("seeds", self.seeds)):
            if len(set(items)) != len(items):
                raise ValueError(f"{what}: an entry is given twice")
        if not self.seeds:
            raise ValueError("seeds: give at least one seed")
        for i, axis in enumerate(self.grid):
            if not axis:
                raise ValueError(f"grid[{i}]: an axis needs at least one KEY=VALUE")
        for i, item in enumerate(self.search.space):
            if not SEARCH_RE.match(item):
                raise ValueError(f"search.space[{i}] {item!r}: expected KEY=DIST(ARGS) with DIST one of uniform, "
                                 "loguniform, randint, choice")
        if self.search.space and len(self.seeds) != 1:
            raise ValueError("a search (search.space) trains each sampled configuration on one seed: give "
                             "exactly one seed (then run the chosen settings on many seeds as a grid)")
