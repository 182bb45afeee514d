"""Compare run dirs of any method under the field's evaluation protocol: Markdown tables,
JSON and charts of zero-shot held-out performance with its uncertainty, and training cost.

    python -m hyperrl.compare RUN_DIR... [--oracle ORACLE_DIR...] [--reference hyper]
        [--random-episodes 20] [--random-seed 0] [--out DIR] [--name NAME]
        [--eval-name heldout-all] [--bootstrap-reps 2000] [--bootstrap-seed 0] [--force]

Each RUN_DIR is a run dir of ``hyperrl.train``, ``hyperrl.baselines`` or ``hyperrl.adapt``
(``run.json`` + ``metrics.json``). Runs are grouped by family (one section each) and by
method label:

* a ``hyperrl.train`` run: its architecture, ``model.arch`` in its ``config.yaml``
  (``hyper`` when absent), with ``-d{K}`` appended when ``env.distractors`` K > 0
  (``hyper-d100``: K irrelevant context dimensions);
* a stable-baselines3 run of ``hyperrl.baselines``: ``sb3-concat``, ``sb3-dr``, ``sb3-oracle``;
* a run of ``hyperrl.adapt``: ``adapted``;
* a run whose ``run.json`` has a ``label`` (a sweep's trials with grid settings,
  ``hyper-lr=0.001``): that label.

Methods are listed hyper, adapter, cgate, concat, blind (each followed by its distractor runs,
``hyper-d20``, ``hyper-d100``), then the others alphabetically.

Returns, per run and held-out split:

* ``RUN_DIR/eval/<eval-name>/results.json`` (written by ``python -m hyperrl.evaluate RUN_DIR``;
  default name ``heldout-all``) when present: one return per variant (its ``mean``), from
  every entry that has a ``split`` (interpolation/extrapolation) and a numeric ``mean``,
  each variant named by its parameter values (``Family.label`` of the run's ``family.yaml``);
* otherwise ``metrics.json``'s ``eval_interpolation_return``/``eval_extrapolation_return``
  (the final evaluation at the end of training, already averaged over the split's
  variants): one score per run.

The protocol (Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the
Statistical Precipice", NeurIPS; the protocol of DMA*-SH and the Decision Adapter) works on
each method's ``[runs, variants]`` score matrix, per family and split:

* score: the return; with ``--oracle`` the normalised score
  ``(R - R_random) / (R_oracle - R_random)``, 0 for uniform random actions and 1 for the
  oracle. ``R_oracle`` is the best return among the ``--oracle`` runs (any method) whose
  evaluation covers the variant, matched by its parameter values; ``R_random`` is the mean
  return of ``--random-episodes`` episodes of uniform random actions from the env's action
  space, run here through the episode loop ``hyperrl.evaluate`` scores runs with, on the
  same real Gymnasium envs (env ``i`` reset with seed ``random-seed + i``). Every variant
  needs an oracle return above its random one;
* IQM (interquartile mean: the mean of the middle 50% of all runs x variants scores, robust
  to outlier runs yet less noisy than the median) with a 95% stratified-bootstrap
  confidence interval: each of ``--bootstrap-reps`` replicates redraws the runs with
  replacement independently for every variant (a variant's runs are never mixed with
  another's), percentile interval, seeded by ``--bootstrap-seed``; and the plain mean;
* probability of improvement P(reference > method): per variant, the chance that a random
  run of ``--reference`` (default ``hyper``) scores above a random run of the method
  (Mann-Whitney U / (n_x n_y), a tie counting 1/2), averaged over the variants both were
  evaluated on, with a 95% stratified-bootstrap CI (each method's runs resampled
  independently within each variant); above 0.5 the reference tends to do better;
* the IQM ratio reference / method (the form of the project's targets; given when both
  IQMs are positive);
* the performance profile: for each threshold tau of a grid spanning the scores (and
  [0, 1] for normalised ones), the fraction of the method's runs x variants scoring above
  tau, with a 95% stratified-bootstrap band; a curve that lies above another everywhere
  dominates it.

When the runs of a method do not all have the same variants (mixed sources, or oracle runs
of different subsets), each run's split mean is its one score instead. With one run, the
intervals have zero width.

Writes into ``--out`` (default ``runs/<family>/comparisons/<name or timestamp>``;
``runs/comparisons/...`` when the runs span several families): ``comparison.md`` (per
family: held-out return, env steps and wall-clock per method; then per split: method,
runs x variants, IQM [95% CI], mean, P(reference > method) [95% CI], IQM ratio),
``comparison.json`` (every statistic, the score matrices, the oracle and random returns per
variant, the settings), ``comparison.png`` (held-out return per method), ``iqm.png`` (IQM
with CI bars per method, one panel per split), ``improvement.png`` (probability of
improvement with CIs, a line at 0.5) and ``profiles.png`` (performance profiles with their
bands, one panel per split). The folder appears whole; an existing comparison is replaced
only with ``--force``. Bad input (missing dir, not a run dir, corrupt JSON or YAML, a variant
without an oracle return or with one not above the random return, an unknown
``--reference``) is a one-line error with exit status 2, and nothing is written.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from hyperrl.cli import int_range, main_guard, make_parser, seed_arg
from hyperrl.episodes import ActorFactory
from hyperrl.errors import HyperrlError
from hyperrl.families import SPLITS, Family, load_family
from hyperrl.fileio import publish_dir, refuse_existing
from hyperrl.runs import read_json, read_metrics, read_run_info
from hyperrl.yamlio import YamlInputError, read_yaml_file

__all__ = ["iqm", "stratified_resample", "stratified_bootstrap_ci", "probability_of_improvement",
           "probability_of_improvement_ci", "performance_profile", "performance_profile_band",
           "profile_taus", "score_matrix", "aggregate", "RunScores", "method_label", "load_run_scores",
           "RandomPolicy", "random_returns", "normalise", "compare", "protocol", "markdown_tables",
           "comparison_figure", "iqm_figure", "improvement_figure", "profiles_figure", "write_comparison",
           "main"]

METHOD_ORDER = ("hyper", "adapter", "cgate", "concat", "blind")
SB3_METHODS = ("dr", "concat", "oracle")  # hyperrl.baselines methods, labelled sb3-<method>
DEFAULT_EVAL_NAME = "heldout-all"
DEFAULT_REFERENCE = "hyper"
PROFILE_POINTS = 101
ARCH_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=,-]{0,99}$")
_CHUNK_ELEMENTS = 1 << 24  # bounds the boolean arrays of a chunk of bootstrap replicates


# --------------------------------------------------------------------------------------
# Statistics (numpy only)
# --------------------------------------------------------------------------------------
def _matrix(scores: Any, name: str = "scores") -> np.ndarray:
    """``scores`` as a float64 ``[runs, tasks]`` matrix (a 1-D array is one task)."""
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty [runs, tasks] matrix, got shape {x.shape}")
    return x


def _trimmed_mean_sorted(sorted_x: np.ndarray) -> np.ndarray:
    """IQM along the last axis of already sorted data: drop floor(n/4) from each end."""
    n = sorted_x.shape[-1]
    k = int(math.floor(0.25 * n))
    return sorted_x[..., k:n - k].mean(-1)


def iqm(scores: Any) -> float:
    """Interquartile mean of all scores (any shape): the mean of the middle 50% after
    dropping floor(n/4) scores from each end, as ``scipy.stats.trim_mean(x, 0.25)`` and
    rliable. IQM of 1..8 is mean(3, 4, 5, 6) = 4.5."""
    x = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    if x.size == 0:
        raise ValueError("iqm of no scores")
    return float(_trimmed_mean_sorted(x))


def stratified_resample(x: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """The stratified bootstrap's replicates of a ``[runs, tasks]`` matrix ->
    ``[reps, runs, tasks]``: each replicate redraws the runs with replacement independently
    for every task, so column j of a replicate only holds values of column j."""
    r, t = x.shape
    idx = rng.integers(0, r, size=(reps, r, t))
    return x[idx, np.arange(t)]


def _percentile_interval(stats: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along axis 0 of bootstrap statistics ``[reps, ...]`` -> (lo, hi),
    each ``[...]``."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    alpha = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(stats, [alpha, 100 - alpha], axis=0)
    return lo, hi


def _chunks(reps: int, per_rep: int) -> list[slice]:
    """Slices of the replicates whose boolean work arrays stay under ``_CHUNK_ELEMENTS``."""
    step = max(1, _CHUNK_ELEMENTS // max(1, per_rep))
    return [slice(i, min(i + step, reps)) for i in range(0, reps, step)]


def stratified_bootstrap_ci(scores: Any, statistic: str | Callable[[np.ndarray], float] = "iqm",
                            reps: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile confidence interval of ``statistic`` over a ``[runs, tasks]`` score matrix
    (here tasks = held-out variants), by the stratified bootstrap of Agarwal et al. 2021
    (:func:`stratified_resample`).

    ``statistic``: 'iqm', 'mean' or a function of a ``[runs, tasks]`` array. Seeded numpy
    generator: the same inputs give the same interval. One run -> a zero-width interval.
    """
    x = _matrix(scores)
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    samples = stratified_resample(x, reps, np.random.default_rng(seed))  # [reps, runs, tasks]
    if statistic == "iqm":
        stats = _trimmed_mean_sorted(np.sort(samples.reshape(reps, -1), axis=1))
    elif statistic == "mean":
        stats = samples.reshape(reps, -1).mean(1)
    elif callable(statistic):
        stats = np.array([statistic(s) for s in samples])
    else:
        raise ValueError(f"unknown statistic {statistic!r}")
    lo, hi = _percentile_interval(stats, confidence)
    return float(lo), float(hi)


def _improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) averaged over tasks, batched: x ``[..., runs_x, tasks]``, y
    ``[..., runs_y, tasks]`` -> ``[...]``. Per task the Mann-Whitney U (pairs where X's run
    is higher, plus half the ties) is counted exactly, then divided by n_x n_y once, so the
    value is the same float as ``scipy.stats.mannwhitneyu``'s U / (n_x n_y)."""
    nx, ny = x.shape[-2], y.shape[-2]
    a, b = x[..., :, None, :], y[..., None, :, :]
    u = (a > b).sum((-3, -2)) + 0.5 * (a == b).sum((-3, -2))  # [..., tasks]
    return (u / (nx * ny)).mean(-1)


def probability_of_improvement(x: Any, y: Any) -> float:
    """Probability of improvement of method X over method Y (rliable's definition):
    x ``[runs_x, tasks]``, y ``[runs_y, tasks]`` with the same tasks in the same columns ->
    P(X > Y) per task (each pair of runs scores 1 when X's is higher, 1/2 on a tie) averaged
    over the tasks. P([[1],[2],[3]] > [[2],[2],[0]]) = (1 + 2 + 3) / 9 = 2/3."""
    x, y = _matrix(x, "x"), _matrix(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same tasks, got shapes {x.shape} and {y.shape}")
    return float(_improvement(x, y))


def probability_of_improvement_ci(x: Any, y: Any, reps: int = 2000, confidence: float = 0.95,
                                  seed: int = 0) -> tuple[float, float]:
    """Percentile CI of :func:`probability_of_improvement` by the stratified bootstrap, the
    runs of X and of Y resampled independently within each task (x's replicates, then y's,
    from one generator seeded with ``seed``)."""
    x, y = _matrix(x, "x"), _matrix(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same tasks, got shapes {x.shape} and {y.shape}")
    rng = np.random.default_rng(seed)
    xs, ys = stratified_resample(x, reps, rng), stratified_resample(y, reps, rng)
    stats = np.concatenate([_improvement(xs[c], ys[c]) for c in _chunks(reps, x.shape[0] * y.shape[0] * x.shape[1])])
    lo, hi = _percentile_interval(stats, confidence)
    return float(lo), float(hi)


def _profile(flat: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Fraction of each row's scores above each tau: ``[reps, n]``, ``[K]`` -> ``[reps, K]``."""
    return (flat[:, :, None] > taus).mean(1)


def performance_profile(scores: Any, taus: Any) -> np.ndarray:
    """Performance profile (rliable's score distribution): ``[runs, tasks]`` scores and
    ``[K]`` thresholds -> ``[K]``, the fraction of all runs x tasks scores above each tau."""
    x = _matrix(scores)
    t = np.asarray(taus, dtype=np.float64).reshape(-1)
    return _profile(x.reshape(1, -1), t)[0]


def performance_profile_band(scores: Any, taus: Any, reps: int = 2000, confidence: float = 0.95,
                             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile band of :func:`performance_profile` by the stratified bootstrap
    -> (lo ``[K]``, hi ``[K]``)."""
    x = _matrix(scores)
    t = np.asarray(taus, dtype=np.float64).reshape(-1)
    flat = stratified_resample(x, reps, np.random.default_rng(seed)).reshape(reps, -1)
    stats = np.concatenate([_profile(flat[c], t) for c in _chunks(reps, x.size * t.size)])
    return _percentile_interval(stats, confidence)


def profile_taus(matrices: Sequence[np.ndarray], normalised: bool, points: int = PROFILE_POINTS) -> np.ndarray:
    """``[points]`` thresholds spanning every score of ``matrices`` (and [0, 1] for
    normalised scores)."""
    flat = np.concatenate([np.asarray(m, dtype=np.float64).reshape(-1) for m in matrices])
    lo, hi = float(flat.min()), float(flat.max())
    if normalised:
        lo, hi = min(lo, 0.0), max(hi, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, points)


def score_matrix(per_run: Sequence[Sequence[float]], labels: Sequence[Sequence[str] | None] | None = None
                 ) -> tuple[np.ndarray, list[str] | None, bool]:
    """One method's scores on one split, one list per run (``labels``: each score's variant,
    per run, or None) -> (matrix ``[runs, variants]``, the variant of each column or None,
    per_variant).

    Runs with the same variants (by label when every run has labels, else by position when
    they have as many scores) form the matrix, columns in the first run's order; otherwise
    each run's mean is its one score (``[runs, 1]``, per_variant False). Runs without scores
    are left out (an empty ``[0, 0]`` matrix when none has any)."""
    rows = [(np.asarray(s, dtype=np.float64).reshape(-1), None if labels is None else labels[i])
            for i, s in enumerate(per_run)]
    rows = [(s, lab) for s, lab in rows if s.size]
    if not rows:
        return np.zeros((0, 0)), None, False
    labs = [lab for _, lab in rows]
    if all(lab is not None and len(lab) == s.size and len(set(lab)) == s.size for s, lab in rows):
        cols = list(labs[0])
        if all(set(lab) == set(cols) for lab in labs):
            where = [{c: j for j, c in enumerate(lab)} for lab in labs]
            return np.stack([s[[w[c] for c in cols]] for (s, _), w in zip(rows, where)]), cols, True
    elif all(lab is None for lab in labs) and len({s.size for s, _ in rows}) == 1:
        return np.stack([s for s, _ in rows]), None, True
    return np.array([[s.mean()] for s, _ in rows]), None, False


def _summary(matrix: np.ndarray, variants: list[str] | None, per_variant: bool, reps: int,
             seed: int) -> dict[str, Any]:
    """n, mean, IQM and its 95% CI of a ``[runs, variants]`` matrix, with the matrix."""
    return {
        "n_runs": int(matrix.shape[0]), "n_variants": int(matrix.shape[1]), "per_variant": per_variant,
        "mean": float(matrix.mean()), "iqm": iqm(matrix),
        "ci95": list(stratified_bootstrap_ci(matrix, "iqm", reps=reps, seed=seed)),
        "run_means": [float(v) for v in matrix.mean(1)],
        "variants": variants, "scores": matrix.tolist(),
    }


def aggregate(per_run: Sequence[Sequence[float]], reps: int = 2000, seed: int = 0,
              labels: Sequence[Sequence[str] | None] | None = None) -> dict[str, Any]:
    """Scores of one method on one split, one list per run (see :func:`score_matrix`) ->
    n_runs, n_variants, per_variant, mean, IQM and its 95% CI (zero width for one run), each
    run's mean, the variants and the ``[runs, variants]`` scores; ``{"n_runs": 0}`` without
    scores."""
    matrix, cols, per_variant = score_matrix(per_run, labels)
    if matrix.size == 0:
        return {"n_runs": 0}
    return _summary(matrix, cols, per_variant, reps, seed)


def _aligned(a: tuple[np.ndarray, list[str] | None, bool], b: tuple[np.ndarray, list[str] | None, bool]
             ) -> tuple[np.ndarray, np.ndarray] | None:
    """Two :func:`score_matrix` results restricted to the variants both have (columns in
    a's order), or None when they share none."""
    (xa, ca, pa), (xb, cb, pb) = a, b
    if ca is not None and cb is not None:
        common = [c for c in ca if c in cb]
        if not common:
            return None
        return xa[:, [ca.index(c) for c in common]], xb[:, [cb.index(c) for c in common]]
    if ca is None and cb is None and pa == pb and xa.shape[1] == xb.shape[1]:
        return xa, xb
    return None


# --------------------------------------------------------------------------------------
# Reading run dirs
# --------------------------------------------------------------------------------------
@dataclass
class RunScores:
    run_dir: Path
    method: str  # run.json's method
    label: str  # the method label runs are grouped by (method_label)
    family: str
    seed: Any
    env_steps: float | None
    wall_clock_s: float | None
    scores: dict[str, list[float]] = field(default_factory=dict)  # split -> per-variant returns (or [run mean])
    variants: dict[str, list[str]] = field(default_factory=dict)  # split -> each score's variant (Family.label)
    values: dict[str, list[float]] = field(default_factory=dict)  # variant -> its parameter values [P]
    family_def: Family | None = None  # the run's family.yaml, read with per-variant results
    normalised: dict[str, list[float]] = field(default_factory=dict)  # split -> normalised scores (--oracle)
    source: str = "metrics.json"
    oracle_variants: int | None = None
    steps_per_variant: float | None = None


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
        return None
    return float(x)


def method_label(run_dir: str | Path, method: str, label: Any = None) -> str:
    """The label a run is compared under: ``label`` (``run.json``'s ``label``: a sweep's
    trial label, e.g. ``hyper-lr=0.001``) when given; else a ``hyperrl.train`` run's
    ``model.arch`` in its ``config.yaml`` (``hyper`` when absent) with ``-d{K}`` for
    ``env.distractors`` K > 0; ``sb3-<method>`` for a stable-baselines3 run; any other method
    as it is."""
    if label is not None:
        if not isinstance(label, str) or not LABEL_RE.match(label):
            raise HyperrlError(f"{Path(run_dir) / 'run.json'}: 'label' must be letters, digits and . _ + = , - "
                               f"(not starting with . or -), got {label!r}")
        return label
    if method in SB3_METHODS:
        return f"sb3-{method}"
    if method != "hyperrl":
        return method
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return DEFAULT_REFERENCE
    try:
        cfg = read_yaml_file(path)
    except (YamlInputError, OSError) as e:
        raise HyperrlError(f"{path} is corrupt: {e}") from None
    if not isinstance(cfg, dict):
        raise HyperrlError(f"{path} is corrupt: expected a mapping of config sections")
    model, env = cfg.get("model") or {}, cfg.get("env") or {}
    if not isinstance(model, dict) or not isinstance(env, dict):
        raise HyperrlError(f"{path} is corrupt: 'model' and 'env' must be mappings")
    arch = model.get("arch", DEFAULT_REFERENCE)
    if not isinstance(arch, str) or not ARCH_RE.match(arch):
        raise HyperrlError(f"{path}: model.arch must be an architecture name, got {arch!r}")
    k = env.get("distractors", 0)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise HyperrlError(f"{path}: env.distractors must be an integer >= 0, got {k!r}")
    return f"{arch}-d{k}" if k else arch


def _result_rows(obj: Any, depth: int = 0) -> list[dict[str, Any]]:
    """Every dict (at any depth) with a held-out 'split' and a numeric 'mean'."""
    found: list[dict[str, Any]] = []
    if depth > 6:
        return found
    if isinstance(obj, dict):
        if obj.get("split") in SPLITS and _number(obj.get("mean")) is not None:
            found.append(obj)
        else:
            for v in obj.values():
                found += _result_rows(v, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            found += _result_rows(v, depth + 1)
    return found


def _variant_values(path: Path, family: Family, raw: Any) -> list[float]:
    """A results.json entry's ``values`` -> ``[P]`` in the family's parameter order."""
    names = family.param_names
    if not isinstance(raw, dict) or set(raw) != set(names) or any(_number(raw[n]) is None for n in names):
        raise HyperrlError(f"{path}: variant values {raw!r} do not match the parameters of family "
                           f"'{family.name}' ({', '.join(names)})")
    return [float(raw[n]) for n in names]


def _scores_from_results(path: Path, family: Family | None
                         ) -> tuple[dict[str, list[float]], dict[str, list[str]], dict[str, list[float]]]:
    """(split -> returns, split -> variant labels, label -> values) of a results.json; no
    labels without the run's family or without per-variant entries."""
    rows = _result_rows(read_json(path))
    variant_rows = [r for r in rows if "values" in r or "params" in r]
    rows = variant_rows or rows
    if not rows:
        raise HyperrlError(f"{path} has no per-variant results (entries with 'split' and a numeric 'mean')")
    scores: dict[str, list[float]] = {}
    labels: dict[str, list[str]] = {}
    values: dict[str, list[float]] = {}
    for r in rows:
        scores.setdefault(r["split"], []).append(float(r["mean"]))
        if family is not None and variant_rows:
            v = _variant_values(path, family, r.get("values", r.get("params")))
            label = family.label(v)
            labels.setdefault(r["split"], []).append(label)
            values[label] = v
    return scores, labels, values


def load_run_scores(run_dir: str | Path, eval_name: str = DEFAULT_EVAL_NAME) -> RunScores:
    """One run dir's method label, family, cost and held-out scores (see the module docstring)."""
    path = Path(run_dir)
    info = read_run_info(path)
    mpath = path / "metrics.json"
    if not mpath.is_file():
        raise HyperrlError(f"{path} has no metrics.json (an unfinished or interrupted run?)")
    metrics = read_metrics(path)
    family = info.get("family") or metrics.get("family")
    if not isinstance(family, str) or not family:
        raise HyperrlError(f"{path / 'run.json'} is corrupt: no 'family'")
    rs = RunScores(run_dir=path, method=info["method"], label=method_label(path, info["method"], info.get("label")),
                   family=family,
                   seed=info.get("seed", metrics.get("seed")),
                   env_steps=_number(metrics.get("env_steps")), wall_clock_s=_number(metrics.get("wall_clock_s")))
    if rs.method == "oracle":
        per = metrics.get("env_steps_per_variant")
        if isinstance(per, list) and per and all(_number(s) is not None for s in per):
            rs.oracle_variants, rs.steps_per_variant = len(per), float(np.mean(per))
        elif isinstance(info.get("variants"), list):
            rs.oracle_variants = len(info["variants"])
            rs.steps_per_variant = _number(info.get("total_steps"))
    results = path / "eval" / eval_name / "results.json"
    if results.is_file():
        if (path / "family.yaml").is_file():
            rs.family_def = load_family(path / "family.yaml")
        rs.scores, rs.variants, rs.values = _scores_from_results(results, rs.family_def)
        rs.source = f"eval/{eval_name}/results.json"
    else:
        for split in SPLITS:
            v = _number(metrics.get(f"eval_{split}_return"))
            if v is not None:
                rs.scores[split] = [v]
        if not rs.scores:
            raise HyperrlError(f"{mpath} has no eval_interpolation_return/eval_extrapolation_return "
                               f"and {results} does not exist: nothing to compare")
    return rs


# --------------------------------------------------------------------------------------
# Normalised scores: oracle and random-policy returns per variant
# --------------------------------------------------------------------------------------
class RandomPolicy:
    """Uniform random actions from a family's action space, as a run for
    :func:`hyperrl.evaluate.run_evaluation` (so it runs through the same episode loop,
    envs and seeding as every evaluated run)."""

    method = "random"

    def __init__(self, family: Family):
        import gymnasium as gym

        self.family = family
        with family.probe_env() as env:
            space = env.action_space
        bounded = isinstance(space, gym.spaces.Box) and bool(np.isfinite(space.low).all()
                                                             and np.isfinite(space.high).all())
        if not isinstance(space, gym.spaces.Discrete) and not bounded:
            raise HyperrlError(f"family '{family.name}': {family.env_id} has action space {space}; the random "
                               "policy of normalised scores needs a Discrete or a bounded Box space")
        self.space = space
        self.discrete = isinstance(space, gym.spaces.Discrete)

    def actor_factory(self, deterministic: bool = True, seed: int = 0,
                      device: torch.device | str = "cpu") -> ActorFactory:
        """(context ``[B, C]``, values) -> actor drawing ``[B]`` or ``[B, A]`` uniform actions
        from a generator seeded with ``seed`` (``deterministic`` does not apply)."""
        space, discrete = self.space, self.discrete

        def factory(context: torch.Tensor, values: torch.Tensor | None = None
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
            n = context.shape[0]
            gen = torch.Generator().manual_seed(int(seed))
            if discrete:
                start, count = int(space.start), int(space.n)
                return lambda obs: torch.randint(start, start + count, (n,), generator=gen).to(obs.device)
            low = torch.as_tensor(np.asarray(space.low), dtype=torch.float64)
            high = torch.as_tensor(np.asarray(space.high), dtype=torch.float64)
            return lambda obs: (low + (high - low) * torch.rand((n, *low.shape), generator=gen,
                                                                 dtype=torch.float64)).to(obs.device)

        return factory


def random_returns(family: Family, values: torch.Tensor, episodes: int = 20, seed: int = 0) -> np.ndarray:
    """Mean return of ``episodes`` episodes of uniform random actions on each variant of
    ``values`` ``[M, P]`` -> ``[M]``, on real Gymnasium envs as ``hyperrl.evaluate`` runs
    them (env ``i = m * episodes + e`` reset with seed ``seed + i``)."""
    from hyperrl.evaluate import run_evaluation

    stats = run_evaluation(RandomPolicy(family), values, episodes=episodes, seed=seed, backend="gymnasium")
    return stats.mean.numpy().astype(np.float64)


def _env_key(f: Family) -> tuple[Any, ...]:
    """What decides a variant's returns besides its parameter values."""
    return (f.env_id, repr(sorted(f.env_kwargs.items())), f.max_episode_steps, f.param_names,
            repr(sorted(f.fixed.items())), repr(sorted(f.derived.items())))


def normalise(runs: Sequence[RunScores], oracles: Sequence[RunScores], episodes: int = 20,
              seed: int = 0) -> dict[str, dict[str, dict[str, Any]]]:
    """Fill every run's ``normalised`` scores, (R - R_random) / (R_oracle - R_random) per
    variant; returns {family: {variant: {split, values, oracle, oracle_run, random}}}.

    One-line errors: a run or oracle without per-variant results, an oracle of a family no
    run has, runs of one family on different envs, a variant no oracle covers, an oracle
    return not above the random one. The random episodes run only once the oracles cover
    every variant."""
    for r in [*runs, *oracles]:
        if not r.variants:
            why = ("scores from metrics.json" if r.source == "metrics.json" else "no family.yaml"
                   if r.family_def is None else f"{r.source} has no variant values")
            raise HyperrlError(f"{r.run_dir} has no per-variant returns ({why}); normalised scores need "
                               f"python -m hyperrl.evaluate {r.run_dir} first")
    fams = sorted({r.family for r in runs})
    for o in oracles:
        if o.family not in fams:
            raise HyperrlError(f"--oracle {o.run_dir} is a run of family '{o.family}', which no RUN_DIR is")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for fam in fams:
        group = [r for r in runs if r.family == fam]
        fam_oracles = [o for o in oracles if o.family == fam]
        keys = {_env_key(r.family_def): r for r in [*group, *fam_oracles]}
        if len(keys) > 1:
            a, b = list(keys.values())[:2]
            raise HyperrlError(f"{a.run_dir} and {b.run_dir} run family '{fam}' on different envs (their "
                               "family.yaml differ): their returns cannot be normalised together")
        need: dict[str, tuple[str, list[float]]] = {}  # variant -> (split, values), first seen first
        for r in group:
            for split in SPLITS:
                for label in r.variants.get(split, []):
                    need.setdefault(label, (split, r.values[label]))
        best: dict[str, tuple[float, Path]] = {}
        for o in fam_oracles:
            for split in SPLITS:
                for label, ret in zip(o.variants.get(split, []), o.scores.get(split, [])):
                    if label not in best or ret > best[label][0]:
                        best[label] = (ret, o.run_dir)
        missing = [label for label in need if label not in best]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise HyperrlError(f"no --oracle run covers variant {missing[0]} ({need[missing[0]][0]}) of "
                               f"'{fam}'{more}; every variant needs an oracle run evaluated on it")
        labels = list(need)
        rand = random_returns(group[0].family_def, torch.tensor([need[k][1] for k in labels], dtype=torch.float64),
                              episodes, seed)
        random_of = {k: float(x) for k, x in zip(labels, rand)}
        for k in labels:
            if not best[k][0] > random_of[k]:
                raise HyperrlError(f"variant {k} of '{fam}': the oracle return {best[k][0]:.6g} ({best[k][1]}) is "
                                   f"not above the random-policy return {random_of[k]:.6g}; its normalised score "
                                   "is undefined")
        for r in group:
            r.normalised = {split: [(x - random_of[k]) / (best[k][0] - random_of[k])
                                    for k, x in zip(r.variants[split], r.scores[split])]
                            for split in r.variants}
        out[fam] = {k: {"split": need[k][0], "values": dict(zip(group[0].family_def.param_names, need[k][1])),
                        "oracle": best[k][0], "oracle_run": str(best[k][1]), "random": random_of[k]}
                    for k in labels}
    return out


# --------------------------------------------------------------------------------------
# Grouping and statistics per method
# --------------------------------------------------------------------------------------
def _method_key(m: str) -> tuple[int, int, str]:
    """Table order: the architectures in METHOD_ORDER, each followed by its distractor runs
    (``hyper``, ``hyper-d20``, ``hyper-d100``, ``adapter``, ...), then the others by name."""
    arch, _, k = m.partition("-d")
    if arch in METHOD_ORDER and (not k or k.isdigit()):
        return (METHOD_ORDER.index(arch), int(k or 0), "")
    return (len(METHOD_ORDER), 0, m)


def compare(runs: Sequence[RunScores], reps: int = 2000, seed: int = 0) -> dict[str, Any]:
    """{family: {method label: summary}}: per-split :func:`aggregate` of the returns and
    mean cost."""
    out: dict[str, Any] = {}
    for fam in sorted({r.family for r in runs}):
        fam_runs = [r for r in runs if r.family == fam]
        out[fam] = {}
        for method in sorted({r.label for r in fam_runs}, key=_method_key):
            group = [r for r in fam_runs if r.label == method]
            summary: dict[str, Any] = {
                "runs": [str(r.run_dir) for r in group],
                "seeds": [r.seed for r in group],
                "sources": sorted({r.source for r in group}),
            }
            for split in SPLITS:
                summary[split] = aggregate([r.scores.get(split, []) for r in group], reps=reps, seed=seed,
                                           labels=[r.variants.get(split) for r in group])
            for key in ("env_steps", "wall_clock_s"):
                vals = [getattr(r, key) for r in group if getattr(r, key) is not None]
                summary[key] = float(np.mean(vals)) if vals else None
                summary[key + "_range"] = [min(vals), max(vals)] if vals else None
            ov = [r.oracle_variants for r in group if r.oracle_variants]
            spv = [r.steps_per_variant for r in group if r.steps_per_variant]
            if ov:
                summary["oracle_variants"] = float(np.mean(ov))
            if spv:
                summary["steps_per_variant"] = float(np.mean(spv))
            out[fam][method] = summary
    return out


def protocol(runs: Sequence[RunScores], reference: str = DEFAULT_REFERENCE, reps: int = 2000, seed: int = 0,
             normalised: bool = False) -> dict[str, Any]:
    """{family: {split: panel}}, the protocol's statistics on each method's ``[runs,
    variants]`` scores (normalised ones with ``normalised``, else returns). A panel holds
    ``score``, ``reference`` (None when that method has no scores there), ``methods``
    (label -> :func:`aggregate`'s summary plus ``improvement`` {p, ci95, n_variants}, the
    reference's probability of improvement over it on their common variants, and
    ``iqm_ratio``) and ``profile`` (``taus`` and per method ``fraction`` and ``ci95`` [lo, hi])."""
    out: dict[str, Any] = {}
    for fam in sorted({r.family for r in runs}):
        fam_runs = [r for r in runs if r.family == fam]
        out[fam] = {}
        for split in SPLITS:
            mats: dict[str, tuple[np.ndarray, list[str] | None, bool]] = {}
            for m in sorted({r.label for r in fam_runs}, key=_method_key):
                group = [r for r in fam_runs if r.label == m]
                per_run = [(r.normalised if normalised else r.scores).get(split, []) for r in group]
                mat = score_matrix(per_run, [r.variants.get(split) for r in group])
                if mat[0].size:
                    mats[m] = mat
            if not mats:
                continue
            ref = reference if reference in mats else None
            methods = {m: _summary(mat[0], mat[1], mat[2], reps, seed) for m, mat in mats.items()}
            for m, s in methods.items():
                s["improvement"], s["iqm_ratio"] = None, None
                if ref is None or m == ref:
                    continue
                pair = _aligned(mats[ref], mats[m])
                if pair is not None:
                    x, y = pair
                    s["improvement"] = {"p": probability_of_improvement(x, y),
                                        "ci95": list(probability_of_improvement_ci(x, y, reps, seed=seed)),
                                        "n_variants": int(x.shape[1])}
                a, b = methods[ref]["iqm"], s["iqm"]
                s["iqm_ratio"] = a / b if a > 0 and b > 0 else None  # a ratio of negative returns misleads
            taus = profile_taus([mat[0] for mat in mats.values()], normalised)
            profile: dict[str, Any] = {"taus": taus.tolist(), "methods": {}}
            for m, mat in mats.items():
                lo, hi = performance_profile_band(mat[0], taus, reps, seed=seed)
                profile["methods"][m] = {"fraction": performance_profile(mat[0], taus).tolist(),
                                         "ci95": [lo.tolist(), hi.tolist()]}
            out[fam][split] = {"score": "normalised" if normalised else "return", "reference": ref,
                               "methods": methods, "profile": profile}
    return out


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------
def _fmt_ret(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def _fmt_steps(s: dict[str, Any]) -> str:
    if s.get("env_steps") is None:
        return "—"
    text = f"{s['env_steps']:,.0f}"
    lo, hi = s["env_steps_range"]
    if hi > lo:
        text += f" ({lo:,.0f}–{hi:,.0f})"
    if s.get("oracle_variants") and s.get("steps_per_variant"):
        k = s["oracle_variants"]
        k_text = f"{k:.0f}" if float(k).is_integer() else f"{k:.1f}"
        text = f"{k_text} × {s['steps_per_variant']:,.0f} = {text}"
    return text


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _fmt_seeds(seeds: list[Any]) -> str:
    return ", ".join(str(s) for s in seeds)


def _fmt_score(x: float, normalised: bool) -> str:
    return f"{x:.3f}" if normalised else f"{x:.1f}"


def _score_name(normalised: bool) -> str:
    return "normalised score" if normalised else "held-out return"


def _protocol_tables(panels: dict[str, Any], reps: int) -> str:
    """Per split: method, runs x variants, IQM [95% CI], mean and, with a reference,
    P(reference > method) [95% CI] and the IQM ratio."""
    parts: list[str] = []
    normalised = any(p["score"] == "normalised" for p in panels.values())
    refs = sorted({p["reference"] for p in panels.values() if p["reference"]})
    text = (f"Protocol of Agarwal et al. (2021) on the {_score_name(normalised)}"
            + (" ((R − R_random) / (R_oracle − R_random): 0 = uniform random actions, 1 = the oracle)"
               if normalised else "") +
            f" over runs × variants: IQM with a 95% stratified-bootstrap CI ({reps:,} resamples), mean")
    if refs:
        r = refs[0]
        text += (f", probability of improvement P({r} > method) with its 95% CI (per variant, over pairs of "
                 f"runs, ties 1/2; above 0.5: {r} tends to score higher) and the IQM ratio {r} / method "
                 "(when both IQMs are positive)")
    parts.append(text + ". Performance profiles: profiles.png.\n")
    for split, p in panels.items():
        ref = p["reference"]
        head = ["method", "runs × variants", "IQM [95% CI]", "mean"]
        if ref:
            head += [f"P({ref} > method) [95% CI]", f"IQM ratio {ref} / method"]
        lines = [f"#### {split}: {_score_name(p['score'] == 'normalised')}\n",
                 "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for m, s in p["methods"].items():
            f = lambda x: _fmt_score(x, p["score"] == "normalised")  # noqa: E731
            variants = f"{s['n_variants']}" if s["per_variant"] else "1 (run means)"
            cells = [m, f"{s['n_runs']} × {variants}", f"{f(s['iqm'])} [{f(s['ci95'][0])}, {f(s['ci95'][1])}]",
                     f(s["mean"])]
            if ref:
                imp = s["improvement"]
                if m == ref:
                    cells += ["reference", "—"]
                else:
                    pi = "—" if imp is None else f"{imp['p']:.2f} [{imp['ci95'][0]:.2f}, {imp['ci95'][1]:.2f}]"
                    if imp is not None and imp["n_variants"] != s["n_variants"]:
                        pi += f" ({imp['n_variants']} common variants)"
                    cells += [pi, "—" if s["iqm_ratio"] is None else f"{s['iqm_ratio']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def markdown_tables(summary: dict[str, Any], reps: int = 2000, panels: dict[str, Any] | None = None) -> str:
    """Per family: the held-out return and cost table, then with ``panels``
    (:func:`protocol`) the protocol's tables per split (see the module docstring)."""
    parts: list[str] = []
    for fam, methods in summary.items():
        multi = any(len(m["runs"]) > 1 for m in methods.values())
        parts.append(f"### {fam}\n")
        if multi:
            parts.append("Zero-shot held-out return (higher is better): IQM over runs × variants with a 95% "
                         f"stratified-bootstrap CI ({reps:,} resamples of the runs), and the mean. "
                         "Env steps and wall-clock to train: mean over runs.\n")
            head = ["method", "runs (seeds)", "interpolation IQM [95% CI]", "interpolation mean",
                    "extrapolation IQM [95% CI]", "extrapolation mean", "env steps", "wall-clock", "scores from"]
        else:
            parts.append("Zero-shot held-out return (higher is better; one run each), env steps and "
                         "wall-clock to train.\n")
            head = ["method", "seed", "interpolation", "extrapolation", "env steps", "wall-clock", "scores from"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        for method, s in methods.items():
            n = len(s["runs"])
            cells = [method, f"{n} ({_fmt_seeds(s['seeds'])})" if multi else _fmt_seeds(s["seeds"])]
            for split in SPLITS:
                a = s[split]
                if not a.get("n_runs"):
                    cells += ["—", "—"] if multi else ["—"]
                    continue
                if multi:
                    iqm_text = (f"{a['iqm']:.1f} [{a['ci95'][0]:.1f}, {a['ci95'][1]:.1f}]" if a["n_runs"] > 1
                                else "—")
                    if a["n_runs"] != n:
                        iqm_text += f" ({a['n_runs']} runs)"
                    cells += [iqm_text, _fmt_ret(a["mean"])]
                else:
                    cells.append(_fmt_ret(a["mean"]))
            src = "; ".join(s["sources"])
            scored = [s[sp] for sp in SPLITS if s[sp].get("n_runs")]
            if any(x.startswith("eval/") for x in s["sources"]) and all(a["per_variant"] for a in scored):
                src += " (" + " + ".join(str(a["n_variants"]) for a in scored) + " variants)"
            elif len(s["sources"]) > 1:
                src += " (mixed: one split mean per run)"
            cells += [_fmt_steps(s), _fmt_time(s.get("wall_clock_s")), src]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
        notes = []
        if "sb3-oracle" in methods:
            notes.append("sb3-oracle: one policy per held-out variant it was trained on, each with the full "
                         "env-step budget (env steps = variants × steps per variant); scored only on its "
                         "own variants, so a missing split shows —.")
        if any("metrics.json" in s["sources"] for s in methods.values()):
            notes.append("scores from metrics.json: the final evaluation at the end of training, one split "
                         "mean per run.")
        if notes:
            parts.append("".join(f"- {n_}\n" for n_ in notes))
        if panels and panels.get(fam):
            parts.append(_protocol_tables(panels[fam], reps))
    return "\n".join(parts).rstrip() + "\n"


def comparison_figure(summary: dict[str, Any]):
    """Per family, per method: the held-out return on each split (IQM with its 95% CI for
    several runs, else the value) and every run's split mean as a small dot."""
    from matplotlib.figure import Figure

    fams = list(summary)
    widths = [max(3.0, 1.1 * len(summary[f]) + 1.2) for f in fams]
    fig = Figure(figsize=(sum(widths), 4.2), layout="constrained")
    axes = fig.subplots(1, len(fams), squeeze=False, width_ratios=widths)[0]
    style = {"interpolation": dict(marker="o", color="C0", offset=-0.15),
             "extrapolation": dict(marker="D", color="C3", offset=0.15)}
    for ax, fam in zip(axes, fams):
        methods = list(summary[fam])
        for i, m in enumerate(methods):
            for split in SPLITS:
                a = summary[fam][m][split]
                if not a.get("n_runs"):
                    continue
                st = style[split]
                x = i + st["offset"]
                y = a["iqm"] if a["n_runs"] > 1 else a["mean"]
                yerr = None
                if a["n_runs"] > 1:
                    yerr = [[max(y - a["ci95"][0], 0.0)], [max(a["ci95"][1] - y, 0.0)]]
                first = not any(summary[fam][mm][split].get("n_runs") for mm in methods[:i])
                label = split if first else None
                ax.errorbar([x], [y], yerr=yerr, fmt=st["marker"], color=st["color"], capsize=4,
                            markersize=7, label=label)
                if a["n_runs"] > 1:
                    ax.scatter([x + 0.07] * len(a["run_means"]), a["run_means"], s=9, color=st["color"],
                               alpha=0.45, linewidths=0)
        ax.set_xticks(range(len(methods)), methods)
        ax.set_xlim(-0.6, len(methods) - 0.4)
        ax.set_title(fam)
        ax.set_ylabel("zero-shot held-out return")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    fig.supxlabel("several runs: IQM with its 95% stratified-bootstrap CI, dots = each run's mean; "
                  "one run: its value", fontsize="small")
    return fig


def _panel_axes(panels: dict[str, Any], panel_height: float, panel_width: float = 5.2):
    """A figure with one row per family and one column per split -> (figure, [(axes,
    family, split, panel or None)])."""
    from matplotlib.figure import Figure

    fams = list(panels)
    fig = Figure(figsize=(panel_width * len(SPLITS), panel_height * len(fams)), layout="constrained")
    axes = fig.subplots(len(fams), len(SPLITS), squeeze=False)
    cells = []
    for i, fam in enumerate(fams):
        for j, split in enumerate(SPLITS):
            ax, panel = axes[i][j], panels[fam].get(split)
            ax.set_title(f"{fam}: {split}", fontsize="medium")
            if panel is None:
                ax.text(0.5, 0.5, "no scores", ha="center", va="center", transform=ax.transAxes)
                ax.set_axis_off()
            cells.append((ax, fam, split, panel))
    return fig, cells


def _colors(panels: dict[str, Any]) -> dict[str, str]:
    """One colour per method label, the same in every figure."""
    labels = sorted({m for fam in panels.values() for p in fam.values() for m in p["methods"]}, key=_method_key)
    return {m: f"C{i % 10}" for i, m in enumerate(labels)}


def _height(panels: dict[str, Any]) -> float:
    most = max((len(p["methods"]) for fam in panels.values() for p in fam.values()), default=1)
    return 1.4 + 0.42 * most


def _point_with_ci(ax: Any, x: float, ci: Sequence[float], y: float, color: str) -> None:
    """A point at (x, y) with a horizontal bar over its interval ``ci`` [lo, hi]."""
    ax.errorbar([x], [y], xerr=[[max(x - ci[0], 0.0)], [max(ci[1] - x, 0.0)]], fmt="o", color=color, capsize=5,
                markersize=7, elinewidth=2)


def iqm_figure(panels: dict[str, Any]):
    """IQM with its 95% CI bar per method, one panel per family and split."""
    colors = _colors(panels)
    fig, cells = _panel_axes(panels, _height(panels))
    for ax, _fam, _split, p in cells:
        if p is None:
            continue
        names = list(p["methods"])
        for i, m in enumerate(names):
            s = p["methods"][m]
            y = len(names) - 1 - i
            _point_with_ci(ax, s["iqm"], s["ci95"], y, colors[m])
        ax.set_yticks(range(len(names)), names[::-1])
        ax.set_ylim(-0.6, len(names) - 0.4)
        ax.set_xlabel(f"IQM of the {_score_name(p['score'] == 'normalised')}")
        ax.grid(axis="x", alpha=0.3)
    fig.supxlabel("IQM over runs × variants with its 95% stratified-bootstrap CI (Agarwal et al. 2021)",
                  fontsize="small")
    return fig


def improvement_figure(panels: dict[str, Any]):
    """P(reference > method) with its 95% CI per other method, a line at 0.5, one panel per
    family and split."""
    colors = _colors(panels)
    fig, cells = _panel_axes(panels, _height(panels))
    for ax, _fam, _split, p in cells:
        if p is None:
            continue
        ref = p["reference"]
        rows = [(m, s["improvement"]) for m, s in p["methods"].items() if m != ref and s["improvement"]]
        if not rows:
            why = "no other method on common variants" if ref else "no reference method"
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        for i, (m, imp) in enumerate(rows):
            y = len(rows) - 1 - i
            _point_with_ci(ax, imp["p"], imp["ci95"], y, colors[m])
        ax.axvline(0.5, color="0.4", ls="--", lw=1)
        ax.set_yticks(range(len(rows)), [f"P({ref} > {m})" for m, _ in rows][::-1])
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("probability of improvement")
        ax.grid(axis="x", alpha=0.3)
    fig.supxlabel("per variant P(a run of the reference scores above a run of the method), ties 1/2, averaged "
                  "over variants; 95% stratified-bootstrap CI", fontsize="small")
    return fig


def profiles_figure(panels: dict[str, Any]):
    """Performance profiles with their 95% bands, one panel per family and split."""
    colors = _colors(panels)
    fig, cells = _panel_axes(panels, 3.8)
    for ax, _fam, _split, p in cells:
        if p is None:
            continue
        taus = np.asarray(p["profile"]["taus"])
        for m, prof in p["profile"]["methods"].items():
            ax.plot(taus, prof["fraction"], color=colors[m], lw=1.8, label=m)
            ax.fill_between(taus, prof["ci95"][0], prof["ci95"][1], color=colors[m], alpha=0.2, lw=0)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(taus[0], taus[-1])
        ax.set_xlabel(f"{_score_name(p['score'] == 'normalised')} τ")
        ax.set_ylabel("fraction of runs × variants > τ")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    fig.supxlabel("performance profiles (score distributions) with 95% stratified-bootstrap bands",
                  fontsize="small")
    return fig


def _default_out(families: list[str], name: str | None) -> Path:
    leaf = name or time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / families[0] / "comparisons" if len(families) == 1 else Path("runs") / "comparisons"
    path = base / leaf
    if name is None:
        i = 1
        while path.exists():
            path = base / f"{leaf}-{i}"
            i += 1
    return path


def _load_all(dirs: Sequence[str], eval_name: str, what: str, prefix: str = "") -> list[RunScores]:
    """Each dir's scores; a dir given twice is an error (``what`` names the argument,
    ``prefix`` starts every error about these dirs)."""
    seen: dict[Path, str] = {}
    out = []
    for d in dirs:
        key = Path(d).resolve()
        if key in seen:
            raise HyperrlError(f"{what} {d} is given twice (also as {seen[key]})")
        seen[key] = d
        try:
            out.append(load_run_scores(d, eval_name))
        except HyperrlError as e:
            if not prefix:
                raise
            raise HyperrlError(f"{prefix}{e}") from None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(
        "python -m hyperrl.compare",
        "Compare run dirs (hyperrl.train, hyperrl.baselines, hyperrl.adapt) under the protocol of Agarwal et al. "
        "2021: per family and held-out split, IQM with a 95% stratified-bootstrap CI, mean, probability of "
        "improvement of --reference over every other method, performance profiles; held-out return, env steps "
        "and wall-clock per method.",
        epilog="Returns come from RUN_DIR/eval/<eval-name>/results.json (python -m hyperrl.evaluate) when "
               "present, else from metrics.json's final evaluation. With --oracle every score is normalised: "
               "(R - R_random) / (R_oracle - R_random), R_oracle the best oracle return on the variant, "
               "R_random that of uniform random actions. Give --oracle after the run dirs.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--oracle", nargs="+", action="extend", metavar="ORACLE_DIR", default=None,
                        help="run dirs (any method, evaluated with python -m hyperrl.evaluate) whose best return "
                             "per variant is the oracle return of normalised scores")
    parser.add_argument("--reference", default=None,
                        help=f"the method whose probability of improvement over every other method and IQM ratio "
                             f"are reported; when not given, {DEFAULT_REFERENCE} if it is compared")
    parser.add_argument("--random-episodes", type=int_range(1), default=20,
                        help="episodes per variant of the random policy (with --oracle)")
    parser.add_argument("--random-seed", type=seed_arg, default=0,
                        help="the random policy's env i is reset with seed + i; its actions are seeded with it too")
    parser.add_argument("--out", help="output folder (default: runs/<family>/comparisons/<name or timestamp>)")
    parser.add_argument("--name", help="name of the comparison (default: a timestamp)")
    parser.add_argument("--eval-name", default=DEFAULT_EVAL_NAME,
                        help="use RUN_DIR/eval/<eval-name>/results.json when present")
    parser.add_argument("--bootstrap-reps", type=int_range(1), default=2000)
    parser.add_argument("--bootstrap-seed", type=seed_arg, default=0)
    parser.add_argument("--force", action="store_true", help="replace an existing comparison in --out")
    args = parser.parse_args(argv)
    if args.name is not None and (not args.name or "/" in args.name or args.name in (".", "..")):
        raise HyperrlError(f"--name must be a plain folder name, got {args.name!r}")

    text, out, figures = write_comparison(args.run_dirs, args.oracle or [], out=args.out, name=args.name,
                                          reference=args.reference, random_episodes=args.random_episodes,
                                          random_seed=args.random_seed, eval_name=args.eval_name,
                                          reps=args.bootstrap_reps, seed=args.bootstrap_seed, force=args.force)
    print(text)
    print(f"wrote {out}/: comparison.md, comparison.json, " + ", ".join(figures))
    return 0


def write_comparison(run_dirs: Sequence[str | Path], oracle_dirs: Sequence[str | Path] = (),
                     out: str | Path | None = None, name: str | None = None, reference: str | None = None, random_episodes: int = 20,
                     random_seed: int = 0, eval_name: str = DEFAULT_EVAL_NAME, reps: int = 2000, seed: int = 0,
                     force: bool = False) -> tuple[str, Path, list[str]]:
    """The comparison of ``run_dirs`` (normalised by ``oracle_dirs`` when given) written to
    ``out`` (default ``runs/<family>/comparisons/<name or timestamp>``): what ``python -m
    hyperrl.compare`` does, and a sweep's last step. Returns (Markdown tables, the output
    folder, the figure names). Every error is raised before anything is written."""
    runs = _load_all([str(d) for d in run_dirs], eval_name, "run dir")
    oracles = _load_all([str(d) for d in oracle_dirs], eval_name, "--oracle", prefix="--oracle: ")
    labels = sorted({r.label for r in runs}, key=_method_key)
    if reference is not None and reference not in labels:
        raise HyperrlError(f"unknown --reference '{reference}'; the methods compared are: {', '.join(labels)}")
    reference = reference or DEFAULT_REFERENCE
    families = sorted({r.family for r in runs})
    out = Path(out) if out else _default_out(families, name)
    if out.exists() and not out.is_dir():
        raise HyperrlError(f"--out {out} exists and is not a folder")
    if (out / "run.json").exists():
        raise HyperrlError(f"--out {out} is a run dir; pick another folder")
    # --force replaces a comparison, never a folder of other files
    if out.is_dir() and any(out.iterdir()) and not (out / "comparison.json").is_file():
        raise HyperrlError(f"--out {out} exists and holds other files than a comparison; pick another folder")
    refuse_existing(out, force, "pick another --out or --name, or pass --force")

    normalised = bool(oracles)
    variants = normalise(runs, oracles, random_episodes, random_seed) if normalised else None
    summary = compare(runs, reps=reps, seed=seed)
    panels = protocol(runs, reference, reps=reps, seed=seed, normalised=normalised)
    text = markdown_tables(summary, reps=reps, panels=panels)
    figures = {"comparison.png": comparison_figure(summary), "iqm.png": iqm_figure(panels),
               "improvement.png": improvement_figure(panels), "profiles.png": profiles_figure(panels)}
    data = {
        "families": summary,
        "protocol": panels,
        "score": "normalised" if normalised else "return",
        "reference": reference if reference in labels else None,
        "normalisation": None if not normalised else {
            "oracle_runs": [str(o.run_dir) for o in oracles],
            "random_policy": {"actions": "uniform over the action space", "episodes": random_episodes,
                              "seed": random_seed, "backend": "gymnasium"},
            "variants": variants},
        "bootstrap": {"reps": reps, "seed": seed, "confidence": 0.95, "kind": "stratified (runs within variants)",
                      "interval": "percentile"},
        "eval_name": eval_name,
    }
    from hyperrl.plots import save_figure

    def build(folder: Path) -> None:
        (folder / "comparison.md").write_text(text)
        for fname, fig in figures.items():
            save_figure(fig, folder / fname)
        (folder / "comparison.json").write_text(json.dumps(data, indent=2))

    publish_dir(out, build, force, "pick another --out or --name, or pass --force")
    return text, out, list(figures)


if __name__ == "__main__":
    sys.exit(main_guard(main)())
