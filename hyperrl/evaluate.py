"""Evaluate any run dir zero-shot on fixed parameter values.

    python -m hyperrl.evaluate RUN_DIR [--split interpolation|extrapolation|all]
        [--values masspole=0.02,0.7 [--values length=0.3,0.6]] [--grid N]
        [--episodes K] [--backend gymnasium|batched] [--seed S] [--device D]
        [--checkpoint best|latest] [--name NAME] [--stochastic]

Works for every method (``hyperrl``, ``dr``, ``concat``, ``oracle``, ``adapted``) through
:func:`hyperrl.runs.load`, so all of them are scored by the same code
(:func:`hyperrl.episodes.evaluate_values`).

What is evaluated (one of):

* default / ``--split``: the family's fixed held-out values (both splits by default);
* ``--values NAME=V1,V2,...`` (repeatable, one per parameter, or all in one:
  ``--values m=0.3,2,l=0.5``; every parameter of the family must be given): the cartesian
  product of the listed values. Values inside the physical bounds but outside the train
  range are allowed and marked ``extrapolation``; values outside the physical bounds are
  refused;
* ``--grid N``: :meth:`Family.grid` (N points per parameter across the physical bounds).

Each variant runs ``--episodes`` episodes (default 10) with deterministic actions on real
Gymnasium envs (default) or on the family's batched simulator (``--backend batched``).
Episode ``e`` of variant ``m`` is env ``i = m * K + e``, reset with seed ``seed + i`` on
both backends (the batched simulator starts from Gymnasium's initial states and runs in
float64), so the two backends give the same returns for the same policy, up to float
rounding that a long balancing episode can amplify.

Outputs (written only after the evaluation succeeded; the folder appears whole, and an
existing one is replaced only with ``--force``, as every command's outputs):
``RUN_DIR/eval/<name>/results.json``, ``results.csv``, ``return_vs_param.png``; the same
scalars, the figure and the table in the run's TensorBoard under ``eval/<name>/...``
(a new event file in RUN_DIR); a table on stdout. ``<name>`` defaults to the selection
(``heldout-all``, ``values-masspole=0.02,0.7``, ``grid-9``; ``-batched``, ``-latest``,
``-stochastic`` appended for non-default settings).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from hyperrl.cli import int_range, main_guard, make_parser, parse_device, seed_arg
from hyperrl.errors import HyperrlError
from hyperrl.fileio import check_writable, publish_dir, refuse_existing
from hyperrl.episodes import EpisodeStats, evaluate_values
from hyperrl.runlock import run_lock
from hyperrl.runs import load
from hyperrl.families import SPLITS, Family

__all__ = [
    "Selection",
    "parse_values",
    "select_values",
    "run_evaluation",
    "build_results",
    "format_table",
    "write_outputs",
    "evaluate_run",
    "main",
]

BACKENDS = ("gymnasium", "batched")
MAX_ENVS_PER_CALL = 1024  # variants x episodes stepped at once (bounded memory for big grids)
OUTPUT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=,+-]*$")
OUTPUT_NAME_MAX = 100


# --------------------------------------------------------------------------------------
# What to evaluate
# --------------------------------------------------------------------------------------
@dataclass
class Selection:
    """The variants to evaluate: values ``[M, P]`` float64, each row's split, and how they
    were chosen (``kind``: heldout / values / grid, ``detail`` for results.json)."""

    values: torch.Tensor
    splits: list[str]
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)
    name: str = ""


def _fmt(x: float) -> str:
    return f"{x:g}"


def _split_named(items: Sequence[str]) -> list[str]:
    """``["m=2.5,l=0.8"]`` -> ``["m=2.5", "l=0.8"]``: within one item, a comma-separated part
    holding ``=`` starts the next parameter (``m=0.5,1,l=0.8`` -> ``m=0.5,1`` and ``l=0.8``)."""
    out: list[str] = []
    for item in items:
        parts = str(item).split(",")
        cur: list[str] = []
        for part in parts:
            if "=" in part and cur:
                out.append(",".join(cur))
                cur = []
            cur.append(part)
        out.append(",".join(cur))
    return out


def parse_values(family: Family, items: Sequence[str]) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """``["masspole=0.02,0.7", "length=0.3,0.6"]`` (or the same in one item,
    ``"masspole=0.02,0.7,length=0.3,0.6"``) -> the cartesian product ``[M, P]`` (in the
    family's parameter order) and the per-parameter lists. Every parameter of the family
    must be given (for a one-parameter family the name may be left out: ``0.02,0.7``)."""
    names = family.param_names
    given: dict[str, list[float]] = {}
    for item in _split_named(items):
        text = str(item).strip()
        if "=" in text:
            name, _, rest = text.partition("=")
            name = name.strip()
        elif len(names) == 1:
            name, rest = names[0], text
        else:
            raise HyperrlError(f"--values {text!r}: expected NAME=V1,V2,... with NAME one of: {', '.join(names)}")
        if name not in names:
            family.spec(name)  # raises naming the family's parameters
        if name in given:
            raise HyperrlError(f"--values: parameter {name} is given twice; list all its values once: "
                               f"{name}=V1,V2,...")
        parts = [p.strip() for p in rest.split(",")]
        if not rest.strip() or any(not p for p in parts):
            raise HyperrlError(f"--values {text!r}: expected {name}=V1,V2,... (comma-separated numbers)")
        vals: list[float] = []
        for p in parts:
            try:
                v = float(p)
            except ValueError:
                raise HyperrlError(f"--values {text!r}: {p!r} is not a number") from None
            if not math.isfinite(v):
                raise HyperrlError(f"--values {text!r}: {p!r} is not a finite number")
            vals.append(v)
        given[name] = vals
    missing = [n for n in names if n not in given]
    if missing:
        raise HyperrlError(
            f"family '{family.name}' has parameters {', '.join(names)}: give every one with "
            f"--values NAME=V1,V2,... (missing: {', '.join(missing)})")
    rows = list(itertools.product(*(given[n] for n in names)))
    values = torch.tensor(rows, dtype=torch.float64).reshape(-1, len(names))
    family.validate(values)  # one line naming the parameter and its physical bounds
    return values, {n: given[n] for n in names}


def select_values(
    family: Family,
    split: str | None = None,
    values: Sequence[str] | None = None,
    grid: int | None = None,
) -> Selection:
    """The variants for one of ``split`` (default ``all``), ``values`` or ``grid``."""
    chosen = [x is not None for x in (split, values, grid)]
    if sum(chosen) > 1:
        raise HyperrlError("give only one of --split, --values and --grid")
    if values is not None:
        v, lists = parse_values(family, values)
        label = "-".join(f"{n}=" + ",".join(_fmt(x) for x in xs) for n, xs in lists.items())
        name = f"values-{label}"
        if len(name) > 60 or not OUTPUT_NAME_RE.match(name):
            name = "values-" + hashlib.sha1(label.encode()).hexdigest()[:10]
        return Selection(v, family.split_of(v), "values", {"values": lists}, name)
    if grid is not None:
        if int(grid) < 1:
            raise HyperrlError(f"--grid must be at least 1, got {grid}")
        v = family.grid(int(grid))
        return Selection(v, family.split_of(v), "grid", {"points": int(grid)}, f"grid-{int(grid)}")
    split = split or "all"
    if split not in (*SPLITS, "all"):
        raise HyperrlError(f"unknown split '{split}'; expected one of: {', '.join(SPLITS)}, all")
    parts = SPLITS if split == "all" else (split,)
    vals = [family.heldout_values(s) for s in parts]
    splits = [s for s, v in zip(parts, vals) for _ in range(v.shape[0])]
    return Selection(torch.cat(vals), splits, "heldout", {"split": split}, f"heldout-{split}")


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------
def run_evaluation(
    run: Any,
    values: torch.Tensor,
    episodes: int = 10,
    seed: int = 0,
    backend: str = "gymnasium",
    device: torch.device | str = "cpu",
    deterministic: bool = True,
) -> EpisodeStats:
    """``episodes`` episodes of every variant of ``values`` ``[M, P]`` for a loaded run.

    Env ``i = m * episodes + e`` is reset with seed ``seed + i`` on both backends (the
    batched simulator starts from Gymnasium's initial states, in float64), so the two
    backends agree up to float rounding (the sim's ``sin``/``cos`` may differ from Python's
    in the last bit, and a balancing episode of hundreds of steps can amplify that). Large
    selections run in chunks of at most ``MAX_ENVS_PER_CALL`` envs with the same env-to-seed
    mapping.
    """
    if backend not in BACKENDS:
        raise HyperrlError(f"unknown backend '{backend}'; expected one of: {', '.join(BACKENDS)}")
    if int(episodes) < 1:
        raise HyperrlError(f"--episodes must be at least 1, got {episodes}")
    family: Family = run.family
    if backend == "batched" and family.batched is None:
        raise HyperrlError(f"family '{family.name}' has no batched simulator; use --backend gymnasium")
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1, family.num_params)
    family.validate(values)
    per_call = max(1, MAX_ENVS_PER_CALL // int(episodes))
    returns, lengths = [], []
    for m0 in range(0, values.shape[0], per_call):
        chunk = values[m0:m0 + per_call]
        s = int(seed) + m0 * int(episodes)  # env i of the whole selection always gets seed + i
        actor = run.actor_factory(deterministic=deterministic, seed=s, device=device)
        st = evaluate_values(actor, family, chunk, int(episodes), seed=s, device=device, dtype=torch.float64,
                             deterministic=deterministic, backend=backend, gymnasium_resets=True)
        returns.append(st.returns)
        lengths.append(st.lengths)
    return EpisodeStats(values, torch.cat(returns), torch.cat(lengths))


def build_results(run: Any, sel: Selection, stats: EpisodeStats, settings: dict[str, Any]) -> dict[str, Any]:
    """The content of results.json: settings, one entry per variant, per-split summaries."""
    family: Family = run.family
    thr = family.success_return
    variants = []
    for i in range(stats.values.shape[0]):
        r = stats.returns[i]
        entry: dict[str, Any] = {
            "values": family.as_dict(stats.values[i]),
            "split": sel.splits[i],
            "mean": float(r.mean()),
            "std": float(r.std(unbiased=False)),
            "length": float(stats.lengths[i].double().mean()),
            "success": float((r >= thr).double().mean()) if thr is not None else None,
            "returns": [float(x) for x in r.tolist()],
            "lengths": [int(x) for x in stats.lengths[i].tolist()],
        }
        variants.append(entry)
    summary: dict[str, Any] = {}
    for split in (*SPLITS, "all"):
        rows = [v for v in variants if split == "all" or v["split"] == split]
        if not rows:
            continue
        means = [v["mean"] for v in rows]
        summary[split] = {
            "variants": len(rows),
            "mean": sum(means) / len(means),
            "min": min(means),
            "max": max(means),
            "length": sum(v["length"] for v in rows) / len(rows),
            "success": (sum(v["success"] for v in rows) / len(rows)) if thr is not None else None,
        }
    return {
        "run_dir": str(run.run_dir),
        "method": getattr(run, "method", None),
        "family": family.name,
        "env_id": family.env_id,
        "param_names": list(family.param_names),
        "success_return": thr,
        "settings": settings,
        "variants": variants,
        "splits": summary,
    }


def _csv_text(results: dict[str, Any]) -> str:
    names = results["param_names"]
    episodes = max(len(v["returns"]) for v in results["variants"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*names, "split", "mean", "std", "length", "success", *[f"return_{e}" for e in range(episodes)]])
    for v in results["variants"]:
        w.writerow([*(repr(v["values"][n]) for n in names), v["split"], repr(v["mean"]), repr(v["std"]),
                    repr(v["length"]), "" if v["success"] is None else repr(v["success"]),
                    *(repr(x) for x in v["returns"])])
    return buf.getvalue()


def format_table(results: dict[str, Any]) -> str:
    """Per-variant and per-split table (plain text)."""
    names = results["param_names"]
    has_success = results["success_return"] is not None
    head = [*names, "split", "return (mean ± std)", "length"] + (["success"] if has_success else [])
    rows = []
    for v in results["variants"]:
        row = [_fmt(v["values"][n]) for n in names]
        row += [v["split"], f"{v['mean']:.1f} ± {v['std']:.1f}", f"{v['length']:.1f}"]
        if has_success:
            row.append(f"{100 * v['success']:.0f}%")
        rows.append(row)
    lines = _columns(head, rows)
    lines.append("")
    head2 = ["split", "variants", "mean return", "min", "max", "length"] + (["success"] if has_success else [])
    rows2 = []
    for split, s in results["splits"].items():
        row = [split, str(s["variants"]), f"{s['mean']:.1f}", f"{s['min']:.1f}", f"{s['max']:.1f}",
               f"{s['length']:.1f}"]
        if has_success:
            row.append(f"{100 * s['success']:.0f}%")
        rows2.append(row)
    lines += _columns(head2, rows2)
    return "\n".join(lines)


def _columns(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return [fmt(head), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


# --------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------
def _figure(run: Any, results: dict[str, Any], name: str):
    from hyperrl.plots import return_vs_param_figure

    family: Family = run.family
    v = torch.tensor([[r["values"][n] for n in family.param_names] for r in results["variants"]],
                     dtype=torch.float64)
    means = torch.tensor([r["mean"] for r in results["variants"]])
    stds = torch.tensor([r["std"] for r in results["variants"]])
    s = results["settings"]
    title = f"{family.name}: {name} ({s['episodes']} episodes, {s['backend']})"
    return return_vs_param_figure(family, v, means, stds, title=title, threshold=family.success_return)


def write_outputs(run: Any, results: dict[str, Any], name: str, tensorboard: bool = True,
                  force: bool = False) -> Path:
    """Write ``RUN_DIR/eval/<name>/`` (results.json, results.csv, return_vs_param.png; the
    folder appears whole, an existing one is replaced only with ``force``) and log to the
    run's TensorBoard; returns the output folder. Everything is rendered in memory first, so
    a failure leaves the run dir untouched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from hyperrl.plots import close_figure, figure_to_array

    json_bytes = (json.dumps(results, indent=2) + "\n").encode()
    csv_bytes = _csv_text(results).encode()
    fig = _figure(run, results, name)
    png = io.BytesIO()
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.savefig(png, format="png", dpi=120)
    image = figure_to_array(fig, close=False)
    close_figure(fig)

    def build(folder: Path) -> None:
        (folder / "results.json").write_bytes(json_bytes)
        (folder / "results.csv").write_bytes(csv_bytes)
        (folder / "return_vs_param.png").write_bytes(png.getvalue())

    out = publish_dir(Path(run.run_dir) / "eval" / name, build, force)
    if tensorboard:
        _log_tensorboard(run, results, name, image)
    return out


def _log_tensorboard(run: Any, results: dict[str, Any], name: str, image: Any) -> None:
    from torch.utils.tensorboard import SummaryWriter

    step = int(results["settings"].get("step") or 0)
    writer = SummaryWriter(str(run.run_dir))
    try:
        for split, s in results["splits"].items():
            writer.add_scalar(f"eval/{name}/{split}/return_mean", s["mean"], step)
            writer.add_scalar(f"eval/{name}/{split}/return_min", s["min"], step)
            writer.add_scalar(f"eval/{name}/{split}/length_mean", s["length"], step)
            if s["success"] is not None:
                writer.add_scalar(f"eval/{name}/{split}/success_rate", s["success"], step)
        for v in results["variants"]:
            label = ",".join(f"{k}={_fmt(x)}" for k, x in v["values"].items())
            writer.add_scalar(f"eval/{name}/variant/{label}/return_mean", v["mean"], step)
            writer.add_scalar(f"eval/{name}/variant/{label}/return_std", v["std"], step)
        writer.add_image(f"eval/{name}/return_vs_param", image, step, dataformats="HWC")
        writer.add_text(f"eval/{name}/table", "    " + format_table(results).replace("\n", "\n    "), step)
    finally:
        writer.close()


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------
def _default_name(sel: Selection, backend: str, checkpoint: str | None, deterministic: bool) -> str:
    name = sel.name
    if backend != "gymnasium":
        name += f"-{backend}"
    if checkpoint not in (None, "best"):
        name += f"-{checkpoint}"
    if not deterministic:
        name += "-stochastic"
    return name


def check_output_name(name: str) -> str:
    if not OUTPUT_NAME_RE.match(name) or len(name) > OUTPUT_NAME_MAX:
        raise HyperrlError(f"--name {name!r}: use at most {OUTPUT_NAME_MAX} letters, digits and . _ = , + - "
                           "(not starting with . or -)")
    return name


def evaluate_run(
    run_dir: str | os.PathLike,
    split: str | None = None,
    values: Sequence[str] | None = None,
    grid: int | None = None,
    episodes: int = 10,
    backend: str = "gymnasium",
    seed: int = 0,
    device: str = "cpu",
    checkpoint: str | None = None,
    name: str | None = None,
    deterministic: bool = True,
    write: bool = True,
    force: bool = False,
) -> tuple[dict[str, Any], Path | None]:
    """Load ``run_dir`` (any method), evaluate the selection, write the outputs (``write``;
    an existing ``eval/<name>`` only with ``force``). Returns ``(results, output folder)``.
    Every error is raised before anything is written. Writing holds a shared lock on the
    run dir (:mod:`hyperrl.runlock`): refused while a trainer trains into it."""
    if backend not in BACKENDS:
        raise HyperrlError(f"unknown backend '{backend}'; expected one of: {', '.join(BACKENDS)}")
    if int(episodes) < 1:
        raise HyperrlError(f"--episodes must be at least 1, got {episodes}")
    if name is not None:
        check_output_name(name)
    dev = parse_device(device)
    run = load(run_dir, checkpoint=checkpoint)
    family: Family = run.family
    sel = select_values(family, split, values, grid)
    own = getattr(run, "variants", None)  # a per-variant method (oracle, adapted) acts on these alone
    if own is not None and sel.kind == "heldout":
        keep = torch.isclose(sel.values[:, None, :], own[None].to(sel.values.dtype), rtol=1e-9, atol=0.0)
        keep = keep.all(-1).any(-1)
        if not bool(keep.any()) and split is None:
            # nothing chosen and none of its variants is held out (an adapted run's variant
            # usually is not): evaluate the run's own variants
            v = own.to(torch.float64).reshape(-1, len(family.param_names))
            sel = Selection(v, family.split_of(v), "run_variants", {"run_variants": v.tolist()}, "run-variants")
        elif not bool(keep.any()):
            raise HyperrlError(f"{run_dir} has policies only for other variants than the '{split or 'all'}' "
                               "held-out set; run without --split to evaluate its own variants, or give --values")
        else:
            sel = Selection(sel.values[keep], [s for s, k in zip(sel.splits, keep.tolist()) if k], sel.kind,
                            {**sel.detail, "restricted_to_run_variants": True}, sel.name)
    name = name or _default_name(sel, backend, checkpoint, deterministic)
    check_output_name(name)
    with contextlib.ExitStack() as stack:
        if write:  # before the evaluation, which may take long
            # a shared lock: refused while a trainer holds the run dir (hyperrl.runlock)
            stack.enter_context(run_lock(run_dir, exclusive=False, what="write an evaluation into"))
            refuse_existing(Path(run_dir) / "eval" / name, force)
            check_writable(Path(run_dir) / "eval")
        return _evaluate_and_write(run, sel, name, episodes, seed, backend, dev, deterministic, checkpoint,
                                   write, force)


def _evaluate_and_write(run: Any, sel: Selection, name: str, episodes: int, seed: int, backend: str,
                        dev: torch.device, deterministic: bool, checkpoint: str | None, write: bool,
                        force: bool) -> tuple[dict[str, Any], Path | None]:
    from hyperrl import __version__

    t0 = time.perf_counter()
    stats = run_evaluation(run, sel.values, episodes, seed, backend, dev, deterministic)
    ckpt = getattr(run, "checkpoint_path", None)
    settings = {
        "name": name,
        "selection": {"kind": sel.kind, **sel.detail},
        "episodes": int(episodes),
        "seed": int(seed),
        "backend": backend,
        "deterministic": bool(deterministic),
        "device": str(dev),
        "sim_dtype": "float64",
        "initial_states": "Gymnasium's reset(seed=seed + i) for env i = variant * episodes + episode",
        "checkpoint": str(ckpt) if ckpt is not None else checkpoint,
        "step": getattr(run, "step", None) or (run.info or {}).get("env_steps"),
        "hyperrl_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "eval_seconds": round(time.perf_counter() - t0, 3),
    }
    results = build_results(run, sel, stats, settings)
    out = write_outputs(run, results, name, force=force) if write else None
    return results, out


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m hyperrl.evaluate",
                         "Evaluate a run dir (any method) zero-shot on held-out, chosen or grid parameter values.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run dir written by hyperrl.train, baselines or adapt")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--split", choices=(*SPLITS, "all"), default=None,
                       help="the family's held-out values (used when no selection is given: all)")
    group.add_argument("--values", action="append", metavar="NAME=V1,V2,...", default=None,
                       help="values of one parameter (repeat for every parameter, or all in one: "
                            "m=0.3,2,l=0.5; the grid is their cartesian product)")
    group.add_argument("--grid", type=int_range(1), metavar="N", default=None,
                       help="N points per parameter across the physical bounds")
    parser.add_argument("--episodes", type=int_range(1), default=10, help="episodes per variant")
    parser.add_argument("--backend", choices=BACKENDS, default="gymnasium",
                        help="real Gymnasium envs, or the family's batched simulator (the same physics step for step; "
                             "returns agree up to float rounding, which a long balancing episode can amplify)")
    parser.add_argument("--seed", type=seed_arg, default=0, help="env i is reset with seed + i")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default=None,
                        help="hyperrl runs: which checkpoint (best when not given)")
    parser.add_argument("--name", default=None, help="output name under RUN_DIR/eval/ (derived from the selection when not given)")
    parser.add_argument("--stochastic", action="store_true", help="sample actions instead of the policy's mode")
    parser.add_argument("--force", action="store_true", help="replace an existing RUN_DIR/eval/<name>/")
    args = parser.parse_args(argv)

    results, out = evaluate_run(args.run_dir, split=args.split, values=args.values, grid=args.grid,
                                episodes=args.episodes, backend=args.backend, seed=args.seed,
                                device=args.device, checkpoint=args.checkpoint, name=args.name,
                                deterministic=not args.stochastic, force=args.force)
    s = results["settings"]
    print(f"{results['run_dir']} ({results['method']}, {results['family']}), checkpoint {s['checkpoint']}, "
          f"step {s['step']}: {s['episodes']} episodes per variant, {s['backend']} backend, seed {s['seed']}, "
          f"{'deterministic' if s['deterministic'] else 'stochastic'} actions")
    print(format_table(results))
    print(f"wrote {out}/ (results.json, results.csv, return_vs_param.png) and TensorBoard tags eval/{s['name']}/")
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main)())
