"""Compare run dirs of any method: a Markdown table and a chart of held-out return and cost.

    python -m hyperrl.compare RUN_DIR... [--out DIR] [--name NAME] [--eval-name heldout-all]
        [--bootstrap-reps 2000] [--bootstrap-seed 0]

Each RUN_DIR is a run dir of ``hyperrl.train``, ``hyperrl.baselines`` or ``hyperrl.adapt``
(``run.json`` + ``metrics.json``). Runs are grouped by family (one table each) and method.

Scores, per run and held-out split:

* ``RUN_DIR/eval/<eval-name>/results.json`` (written by ``python -m hyperrl.evaluate RUN_DIR``;
  default name ``heldout-all``) when present: one score per variant (its ``mean`` return),
  taken from every entry that has a ``split`` (interpolation/extrapolation) and a numeric
  ``mean``;
* otherwise ``metrics.json``'s ``eval_interpolation_return``/``eval_extrapolation_return``
  (the final evaluation at the end of training, already averaged over the split's
  variants): one score per run.

With several runs of a method the table gives the IQM (interquartile mean) over all
runs x variants with a 95% stratified-bootstrap confidence interval (runs resampled with
replacement independently for each variant, percentile interval; Agarwal et al. 2021, "Deep
RL at the Edge of the Statistical Precipice") and the plain mean; with one run, just its
values. When the runs of a method do not all have the same variants (mixed sources, or
oracle runs of different subsets), each run's split mean is one score instead. Env steps
and wall-clock are the mean over the runs (oracle: variants x steps per variant).

Writes ``comparison.md``, ``comparison.png`` and ``comparison.json`` into ``--out``
(default ``runs/<family>/comparisons/<name or timestamp>``; ``runs/comparisons/...`` when the
runs span several families). Bad input (missing dir, not a run dir, corrupt JSON) is a
one-line error with exit status 2, and nothing is written.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from hyperrl.cli import int_range, main_guard, make_parser, seed_arg
from hyperrl.errors import HyperrlError
from hyperrl.fileio import publish_dir, refuse_existing
from hyperrl.runs import read_json, read_metrics, read_run_info
from hyperrl.families import SPLITS

__all__ = ["iqm", "stratified_bootstrap_ci", "aggregate", "RunScores", "load_run_scores",
           "compare", "markdown_tables", "comparison_figure", "main"]

METHOD_ORDER = ("hyperrl", "concat", "dr", "oracle", "adapted")
DEFAULT_EVAL_NAME = "heldout-all"


# --------------------------------------------------------------------------------------
# Statistics (numpy only)
# --------------------------------------------------------------------------------------
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


def stratified_bootstrap_ci(scores: Any, statistic: str | Callable[[np.ndarray], float] = "iqm",
                            reps: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile confidence interval of ``statistic`` over a ``[runs, tasks]`` score matrix
    (here tasks = held-out variants), by the stratified bootstrap of Agarwal et al. 2021:
    each replicate redraws the runs with replacement independently for every task.

    ``statistic``: 'iqm', 'mean' or a function of a ``[runs, tasks]`` array. Seeded numpy
    generator: the same inputs give the same interval. One run -> a zero-width interval.
    """
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"scores must be a non-empty [runs, tasks] matrix, got shape {x.shape}")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    r, t = x.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, r, size=(reps, r, t))
    samples = x[idx, np.arange(t)]  # [reps, runs, tasks]
    if statistic == "iqm":
        stats = _trimmed_mean_sorted(np.sort(samples.reshape(reps, -1), axis=1))
    elif statistic == "mean":
        stats = samples.reshape(reps, -1).mean(1)
    elif callable(statistic):
        stats = np.array([statistic(s) for s in samples])
    else:
        raise ValueError(f"unknown statistic {statistic!r}")
    alpha = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(stats, [alpha, 100 - alpha])
    return float(lo), float(hi)


def aggregate(per_run: Sequence[Sequence[float]], reps: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Scores of one method on one split, one list per run -> n, mean, IQM and its 95% CI.

    Runs with equal-length lists form the ``[runs, variants]`` matrix; otherwise each run's
    mean is its one score (``per_variant`` False)."""
    runs = [np.asarray(s, dtype=np.float64).reshape(-1) for s in per_run]
    runs = [s for s in runs if s.size]
    if not runs:
        return {"n_runs": 0}
    per_variant = len({s.size for s in runs}) == 1
    matrix = np.stack(runs) if per_variant else np.array([[s.mean()] for s in runs])
    out: dict[str, Any] = {
        "n_runs": len(runs), "n_variants": int(matrix.shape[1]), "per_variant": per_variant,
        "mean": float(matrix.mean()), "iqm": iqm(matrix),
        "run_means": [float(s.mean()) for s in runs],
    }
    if len(runs) > 1:
        out["ci95"] = list(stratified_bootstrap_ci(matrix, "iqm", reps=reps, seed=seed))
    return out


# --------------------------------------------------------------------------------------
# Reading run dirs
# --------------------------------------------------------------------------------------
@dataclass
class RunScores:
    run_dir: Path
    method: str
    family: str
    seed: Any
    env_steps: float | None
    wall_clock_s: float | None
    scores: dict[str, list[float]] = field(default_factory=dict)  # split -> per-variant (or [run mean])
    source: str = "metrics.json"
    oracle_variants: int | None = None
    steps_per_variant: float | None = None


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
        return None
    return float(x)


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


def _scores_from_results(path: Path) -> dict[str, list[float]]:
    rows = _result_rows(read_json(path))
    variant_rows = [r for r in rows if "values" in r or "params" in r]
    rows = variant_rows or rows
    if not rows:
        raise HyperrlError(f"{path} has no per-variant results (entries with 'split' and a numeric 'mean')")
    out: dict[str, list[float]] = {}
    for r in rows:
        out.setdefault(r["split"], []).append(float(r["mean"]))
    return out


def load_run_scores(run_dir: str | Path, eval_name: str = DEFAULT_EVAL_NAME) -> RunScores:
    """One run dir's method, family, cost and held-out scores (see the module docstring)."""
    path = Path(run_dir)
    info = read_run_info(path)
    mpath = path / "metrics.json"
    if not mpath.is_file():
        raise HyperrlError(f"{path} has no metrics.json (an unfinished or interrupted run?)")
    metrics = read_metrics(path)
    family = info.get("family") or metrics.get("family")
    if not isinstance(family, str) or not family:
        raise HyperrlError(f"{path / 'run.json'} is corrupt: no 'family'")
    rs = RunScores(run_dir=path, method=info["method"], family=family,
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
        rs.scores = _scores_from_results(results)
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
# Grouping and reporting
# --------------------------------------------------------------------------------------
def _method_key(m: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m)


def compare(runs: Sequence[RunScores], reps: int = 2000, seed: int = 0) -> dict[str, Any]:
    """{family: {method: summary}} with per-split :func:`aggregate` and mean cost."""
    out: dict[str, Any] = {}
    for fam in sorted({r.family for r in runs}):
        fam_runs = [r for r in runs if r.family == fam]
        out[fam] = {}
        for method in sorted({r.method for r in fam_runs}, key=_method_key):
            group = [r for r in fam_runs if r.method == method]
            summary: dict[str, Any] = {
                "runs": [str(r.run_dir) for r in group],
                "seeds": [r.seed for r in group],
                "sources": sorted({r.source for r in group}),
            }
            for split in SPLITS:
                summary[split] = aggregate([r.scores.get(split, []) for r in group], reps=reps, seed=seed)
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


def markdown_tables(summary: dict[str, Any], reps: int = 2000) -> str:
    """One Markdown table per family (see the module docstring for the statistics)."""
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
                    iqm_text = (f"{a['iqm']:.1f} [{a['ci95'][0]:.1f}, {a['ci95'][1]:.1f}]" if "ci95" in a
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
        if "oracle" in methods:
            notes.append("oracle: one policy per held-out variant it was trained on, each with the full "
                         "env-step budget (env steps = variants × steps per variant); scored only on its "
                         "own variants, so a missing split shows —.")
        if any("metrics.json" in s["sources"] for s in methods.values()):
            notes.append("scores from metrics.json: the final evaluation at the end of training, one split "
                         "mean per run.")
        if notes:
            parts.append("".join(f"- {n_}\n" for n_ in notes))
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
                if "ci95" in a:
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(
        "python -m hyperrl.compare",
        "Compare run dirs (hyperrl, dr, concat, oracle, adapted): Markdown table + chart of zero-shot "
        "held-out return, env steps and wall-clock per method, one table per family.",
        epilog="Scores come from RUN_DIR/eval/<eval-name>/results.json (python -m hyperrl.evaluate) when "
               "present, else from metrics.json's final evaluation. Several runs of a method: IQM over "
               "runs x variants with a 95% stratified-bootstrap CI, and the mean.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
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

    seen: dict[Path, str] = {}
    runs = []
    for d in args.run_dirs:
        key = Path(d).resolve()
        if key in seen:
            raise HyperrlError(f"run dir {d} is given twice (also as {seen[key]})")
        seen[key] = d
        runs.append(load_run_scores(d, args.eval_name))
    summary = compare(runs, reps=args.bootstrap_reps, seed=args.bootstrap_seed)
    out = Path(args.out) if args.out else _default_out(list(summary), args.name)
    if out.exists() and not out.is_dir():
        raise HyperrlError(f"--out {out} exists and is not a folder")
    if (out / "run.json").exists():
        raise HyperrlError(f"--out {out} is a run dir; pick another folder")
    # --force replaces a comparison, never a folder of other files
    if out.is_dir() and any(out.iterdir()) and not (out / "comparison.json").is_file():
        raise HyperrlError(f"--out {out} exists and holds other files than a comparison; pick another folder")
    refuse_existing(out, args.force, "pick another --out or --name, or pass --force")

    text = markdown_tables(summary, reps=args.bootstrap_reps)
    fig = comparison_figure(summary)
    data = {"families": summary, "bootstrap": {"reps": args.bootstrap_reps, "seed": args.bootstrap_seed,
                                               "confidence": 0.95, "statistic": "iqm"},
            "eval_name": args.eval_name}
    from hyperrl.plots import save_figure

    def build(folder: Path) -> None:
        (folder / "comparison.md").write_text(text)
        save_figure(fig, folder / "comparison.png")
        (folder / "comparison.json").write_text(json.dumps(data, indent=2))

    publish_dir(out, build, args.force, "pick another --out or --name, or pass --force")
    print(text)
    print(f"wrote {out / 'comparison.md'}, {out / 'comparison.png'}, {out / 'comparison.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main)())
