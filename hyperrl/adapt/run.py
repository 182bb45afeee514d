"""Orchestration: :func:`adapt` checks the inputs, runs every mode and reference at every
reported budget (:func:`run_line`, each budget an independent adaptation scored on fresh
evaluation episodes) and writes one output folder per mode; :func:`adapt_mode` dispatches
one adaptation to its mode's module."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from hyperrl.adapt.budget import EpisodeBudget
from hyperrl.adapt.config import DEFAULT_BUDGETS, EVAL_SEED, MODES, AdaptConfig
from hyperrl.adapt.context import context_adapt, prior_values
from hyperrl.adapt.scoring import evaluate_policy, forgetting
from hyperrl.adapt.ppo_modes import ppo_mode_adapt
from hyperrl.adapt.references import adapt_reference
from hyperrl.adapt.report import default_name, write_adapted
from hyperrl.adapt.result import AdaptResult
from hyperrl.adapt.sim import sim_adapt
from hyperrl.adapt.sysid import sysid_available
from hyperrl.errors import HyperrlError
from hyperrl.evaluate import check_output_name
from hyperrl.families import Family, load_family
from hyperrl.fileio import check_writable, refuse_existing
from hyperrl.runlock import run_lock
from hyperrl.runs import read_run_info


def adapt_mode(source: Any, mode: str, env_values: torch.Tensor, given_values: torch.Tensor | None,
               episodes: int, cfg: AdaptConfig | None = None, seed: int = 0,
               device: torch.device | str = "cpu", world: Family | None = None) -> AdaptResult:
    """Adapt the frozen run ``source`` (a :class:`hyperrl.hyperrun.HyperRun`) to the variant
    ``env_values`` with exactly ``episodes`` episodes. ``given_values`` is what the adapter is
    told (``None``: hidden). ``world``: the family whose env the episodes run in, when it is
    not the run's own (a model error no parameter value absorbs; see :func:`adapt`)."""
    if mode not in MODES:
        raise HyperrlError(f"unknown mode '{mode}'; expected one of: {', '.join(MODES)}")
    cfg = cfg or AdaptConfig()
    dev = torch.device(device)
    family: Family = source.family
    hidden = given_values is None
    belief = prior_values(family) if hidden else torch.as_tensor(given_values, dtype=torch.float64)
    use_sysid = cfg.identify and sysid_available(family)
    budget = EpisodeBudget(episodes)
    t0 = time.perf_counter()
    args = (env_values, belief, hidden, budget, cfg, seed, dev, use_sysid, t0, world)
    if mode == "sim":
        return sim_adapt(source, *args)
    if mode == "context":
        return context_adapt(source, *args)
    return ppo_mode_adapt(source, mode, *args)


def budgets_for(k: int, budgets: Sequence[int] | None = None) -> list[int]:
    """The budgets to report: ``budgets`` (default 0, 1, 2, 5, 10) up to ``k``, plus 0 (the
    zero-shot return every output reports) and ``k``."""
    base = DEFAULT_BUDGETS if budgets is None else budgets
    out = sorted({int(b) for b in base if 0 <= int(b) <= k} | {0, int(k)})
    return out


def parse_single_values(family: Family, values: Any, flag: str = "--values") -> torch.Tensor:
    """``{name: v}``, ``[P]`` or CLI strings ``["masspole=0.9"]`` -> [P] (one variant)."""
    if isinstance(values, (list, tuple)) and values and all(isinstance(x, str) for x in values):
        from hyperrl.evaluate import parse_values

        v, lists = parse_values(family, list(values))
        if v.shape[0] != 1:
            many = [n for n, xs in lists.items() if len(xs) > 1]
            raise HyperrlError(f"{flag}: adaptation is to ONE variant; give one value per parameter "
                               f"({', '.join(many)} has several)")
        return v[0]
    if isinstance(values, str):
        return parse_single_values(family, [values], flag)
    return family.values_tensor(values)


def _curve_point(budget: int, res: AdaptResult, returns: torch.Tensor) -> dict[str, Any]:
    pt = {
        "budget": int(budget),
        "episodes_used": res.budget.used,
        "env_steps": res.budget.env_steps,
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std(unbiased=False)),
        "returns": [float(x) for x in returns],
        "adapt_seconds": round(res.wall_s, 3),
    }
    if res.context_values is not None:
        pt["context_values"] = [float(x) for x in res.context_values]
    ident = res.info.get("identified_values")
    if ident is not None:
        pt["identified_values"] = [float(x) for x in ident]
    return pt


def run_line(source: Any, line: str, env_values: torch.Tensor, given_values: torch.Tensor | None,
             budgets: Sequence[int], cfg: AdaptConfig, seed: int, device: torch.device, eval_episodes: int,
             dr_run: Any = None, log: Callable[[str], None] | None = None,
             world: Family | None = None) -> tuple[list[dict[str, Any]], AdaptResult]:
    """The curve of one mode or reference: an independent run per budget, each evaluated on
    the same fresh evaluation episodes. Returns the points and the largest budget's result."""
    points, last = [], None
    for b in budgets:
        if line in MODES:
            res = adapt_mode(source, line, env_values, given_values, b, cfg, seed, device, world)
        else:
            res = adapt_reference(source, line, env_values, b, cfg, seed, device, dr_run, world)
        assert res.budget.used == b, (line, b, res.budget)
        rets = evaluate_policy(world or source.family, res.policy, env_values, eval_episodes, EVAL_SEED, device)
        pt = _curve_point(b, res, rets)
        if line == "hypernet" and b == max(budgets) and cfg.check_forgetting and source.family.batched:
            agent = res.info.get("_agent")
            if agent is not None:
                pt["family_interpolation_return"] = forgetting(source, agent, device)
        points.append(pt)
        last = res
        if log:
            log(f"  {line:<12} budget {b:>3}: return {pt['return_mean']:8.1f} ± {pt['return_std']:.1f} "
                f"({res.budget.used} episodes, {res.budget.env_steps} steps, {res.wall_s:.1f} s)")
    assert last is not None
    return points, last


def _world_info(world: Family) -> dict[str, Any]:
    return {"family": world.name, "fixed": dict(world.fixed), "env_kwargs": dict(world.env_kwargs),
            "source": world.source or None}


def adapt(
    run_dir: str | os.PathLike,
    values: Any,
    episodes: int = 10,
    modes: Sequence[str] | str = ("context",),
    hidden: bool = False,
    seed: int = 0,
    device: str = "cpu",
    dr: str | os.PathLike | None = None,
    references: bool = True,
    budgets: Sequence[int] | None = None,
    eval_episodes: int = 10,
    name: str | None = None,
    true_values: Any = None,
    world: Any = None,
    checkpoint: str = "best",
    config: AdaptConfig | None = None,
    save: bool = True,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Adapt the hypernetwork run ``run_dir`` to one variant; see the module docstring.

    ``values`` are the variant's parameters (``{name: v}``, ``[P]`` or ``["name=v", ...]``).
    With ``hidden`` the adapter is not told them (the episodes still run there). With
    ``true_values`` the episodes run in that variant while the adapter is told ``values``
    (a misspecified model). ``world`` (a :class:`Family`, a family name or YAML path): the
    episodes and the evaluations run in that family's env instead of the run's own; same
    parameters, other ``fixed`` constants or env kwargs: a model error that no parameter value
    absorbs (benchmarks of the ``sim`` mode). Every error is raised before anything is written.
    Returns
    ``{"curves": {line: [points]}, "dirs": {mode: path}, "notes": [...], ...}``.
    """
    from hyperrl.cli import parse_device
    from hyperrl.hyperrun import HyperRun

    cfg = config or AdaptConfig()
    if isinstance(modes, str):
        modes = list(MODES) if modes == "all" else [m.strip() for m in modes.split(",") if m.strip()]
    modes = list(dict.fromkeys(modes))
    if not modes:
        raise HyperrlError("--mode: give at least one of " + ", ".join(MODES))
    for m in modes:
        if m not in MODES:
            raise HyperrlError(f"unknown --mode '{m}'; expected one of: {', '.join(MODES)} (or all)")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise HyperrlError(f"--episodes must be at least 1, got {episodes}")
    if int(eval_episodes) < 1:
        raise HyperrlError(f"--eval-episodes must be at least 1, got {eval_episodes}")
    if budgets is not None:
        bad = [b for b in budgets if int(b) < 0 or int(b) > episodes]
        if bad:
            raise HyperrlError(f"--budgets: every budget must be in 0..{episodes} (--episodes), got {bad[0]}")
    if hidden and true_values is not None:
        raise HyperrlError("--true-values and --hidden exclude each other: with --hidden, --values is the "
                           "variant the episodes run in and the adapter is not told it")
    if name is not None:
        check_output_name(name)
        if len(modes) > 1:
            raise HyperrlError("--name names one adapted run; with several modes the names are derived")
    dev = parse_device(device)
    info = read_run_info(run_dir)
    if info["method"] != "hyperrl":
        raise HyperrlError(f"{run_dir} is a '{info['method']}' run; adaptation needs a hypernetwork run "
                           "(method 'hyperrl', written by python -m hyperrl.train)")
    source = HyperRun(run_dir, info, checkpoint=checkpoint)
    family: Family = source.family
    given = parse_single_values(family, values, "--values")
    env_values = given if true_values is None else parse_single_values(family, true_values, "--true-values")
    given_values = None if hidden else given
    if world is not None:
        if not isinstance(world, Family):
            world = load_family(world)
        if world.param_names != family.param_names or world.env_id != family.env_id:
            raise HyperrlError(f"--world '{world.name}' ({world.env_id}: {', '.join(world.param_names)}) must have "
                               f"the run's env and parameters ({family.env_id}: {', '.join(family.param_names)})")
        world.validate(env_values.reshape(1, -1))
    world_info = None if world is None else _world_info(world)
    dr_run = None
    notes: list[str] = []
    if dr is not None:
        from hyperrl.runs import load

        dr_method = read_run_info(dr)["method"]
        if dr_method != "dr":
            raise HyperrlError(f"--dr {dr}: expected a 'dr' baseline run dir, got method '{dr_method}'")
        dr_run = load(dr, device=str(dev))
        if dr_run.family.name != family.name:
            raise HyperrlError(f"--dr {dr}: family '{dr_run.family.name}' differs from the run's '{family.name}'")
    lines = list(modes)
    if references:
        lines.append("scratch")
        if dr_run is not None:
            lines.append("dr-finetune")
        else:
            notes.append("reference dr-finetune skipped: no --dr RUN_DIR given")
    else:
        notes.append("references skipped (--no-references)")
    bl = budgets_for(episodes, budgets)
    root = Path(run_dir) / "adapt"
    names = {m: (name or default_name(family, m, env_values, hidden, episodes, seed)) for m in modes}
    with contextlib.ExitStack() as stack:
        if save:  # before adapting, which may take long
            # a shared lock: refused while a trainer holds the run dir (hyperrl.runlock)
            stack.enter_context(run_lock(run_dir, exclusive=False, what="write an adaptation into"))
            for nm in names.values():
                refuse_existing(root / nm, force)
            check_writable(root)

        t0 = time.perf_counter()
        curves: dict[str, list[dict[str, Any]]] = {}
        finals: dict[str, AdaptResult] = {}
        for line in lines:
            if log:
                log(f"{line}:")
            t_line = time.perf_counter()
            pts, last = run_line(source, line, env_values, given_values, bl, cfg, seed, dev, eval_episodes,
                                 dr_run, log, world)
            curves[line] = pts
            finals[line] = last
            if log:
                log(f"  ({time.perf_counter() - t_line:.1f} s)")
        wall = time.perf_counter() - t0

        result: dict[str, Any] = {"family": family.name, "values": family.as_dict(env_values),
                                  "given_values": None if hidden else family.as_dict(given), "hidden": hidden,
                                  "budget": episodes, "budgets": bl, "curves": curves, "notes": notes,
                                  "world": world_info,
                                  "dirs": {}, "wall_clock_s": wall}
        if not save:
            result["finals"] = finals
            return result
        for m in modes:
            res = finals[m]
            pts = curves[m]
            final_pt = pts[-1]
            extra = {k: v for k, v in res.info.items() if not k.startswith("_")}
            run_info = {
                "method": "adapted", "family": family.name, "values": family.as_dict(env_values),
                "values_list": [float(x) for x in env_values], "mode": m, "hidden": hidden,
                "given_values": None if hidden else family.as_dict(given),
                "episodes_used": res.budget.used, "budget": episodes, "seed": seed,
                "world": world_info,
                "source_run": os.path.relpath(Path(run_dir).resolve(), (root / names[m]).resolve()),
                "source_run_abs": str(Path(run_dir).resolve()), "source_checkpoint": str(source.checkpoint_path),
                "version": _version(),
            }
            metrics = {
                "family": family.name, "mode": m, "values": family.as_dict(env_values), "hidden": hidden,
                "env_steps": res.budget.env_steps, "episodes_used": res.budget.used, "budget": episodes,
                "wall_clock_s": wall, "adapt_seconds": res.wall_s,
                "zero_shot_return": pts[0]["return_mean"],  # budgets_for always starts at budget 0
                "final_return": final_pt["return_mean"],
                "returns": {str(p["budget"]): p["return_mean"] for p in pts},
                "eval_episodes": int(eval_episodes), "eval_seed": EVAL_SEED,
                "budget_log": res.budget.log, "adaptation": extra, "curves": curves, "notes": notes,
                "config": dataclasses.asdict(cfg),
            }
            out = write_adapted(source, root / names[m], m, res, run_info, metrics, curves, force)
            result["dirs"][m] = str(out)
        return result


def _version() -> str:
    from hyperrl import __version__

    return __version__
