"""Run a grid of trainings (or a hyperparameter search) on Ray Tune, locally or on a cluster.

    python -m hyperrl.sweep SWEEP.yaml [--address auto|HOST:PORT|ray://...] [--resume]
        [--set KEY=VALUE ...] [--list] [--help-config]

A sweep file (``configs/sweeps/``; every key: ``--help-config``, :mod:`hyperrl.sweep_config`)
names families, architectures (``model.arch``), stable-baselines3 baselines, seeds, grid
axes of ``--set`` overrides, optional per-variant oracles and an optional search. Each trial
is one run dir, ``<storage>/<sweep>/<family>/<trial>/`` (oracles:
``<storage>/<sweep>/<family>-oracles/<variant>/``), written by the code of
``hyperrl.train`` (:func:`hyperrl.train.start_run`) or ``hyperrl.baselines``, so
``hyperrl.evaluate``, ``hyperrl.compare`` and TensorBoard read it as any other. At the end
the sweep writes ``hyperrl.compare``'s tables and figures for the whole grid to
``<storage>/<sweep>/comparison/`` and prints them.

Ray Tune runs the trials: a function trainable that reports each periodic held-out
evaluation (``env_steps``, ``interpolation``, ``extrapolation``, ``heldout``: their mean)
and reserves ``cpus`` / ``gpus`` per trial; the trial's torch thread count is its CPUs.
Without ``--address`` (and without ``RAY_ADDRESS``) a local Ray with every core of this
machine is started for the sweep; with it the sweep attaches to that cluster, as
``ray.init(address=...)`` does. Tune's own files go to ``<storage>/<sweep>/.tune``, each
trial's output to ``<storage>/<sweep>/logs/<family>/<trial>.log`` and a record of its
attempts (node, the step it started from, errors) to ``<trial>.json`` beside it; the
resolved sweep file is saved as ``<storage>/<sweep>/sweep.yaml`` and a summary of every
trial as ``sweep.json``.

Faults: a trial that fails is retried up to ``max_failures`` times, each retry continuing
from its run dir's latest checkpoint; one that still fails is reported with its error and
the others finish (exit status 1). ``--resume`` continues a sweep whose driver was stopped
or killed: a finished trial (its ``metrics.json`` and evaluation written) is never run again,
an interrupted one continues from its latest checkpoint (``hyperrl.train --resume``), an
SB3 baseline without a finished model starts again. Every trial holds its run dir's lock
(:mod:`hyperrl.runlock`), so no two processes ever train into one run dir.

With ``search.space`` the sweep tunes instead: per cell (family x architecture x grid point)
``search.samples`` configurations drawn at random or by Optuna, each one trial (one seed),
ASHA stopping trials whose held-out return trails at the same env step; the cells run one
after another, each its own Tune experiment. It prints each cell's trials ranked and the
best settings, and saves them to ``<storage>/<sweep>/search.json``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from hyperrl.cli import main_guard, make_parser
from hyperrl.config import apply_overrides, config_docs, load_yaml_config, save_config, scalar_from_text, to_dict
from hyperrl.errors import HyperrlError, one_line
from hyperrl.fileio import check_writable, write_json
from hyperrl.resources import builtin_dir
from hyperrl.runlock import LOCK_NAME, run_lock
from hyperrl.sweep_config import NAME_RE, SEARCH_RE, SweepConfig

__all__ = ["TrialSpec", "load_sweep", "plan_trials", "run_trial", "run_sweep", "ray_init_kwargs", "main"]

Report = Callable[[dict[str, Any]], None]
LOCK_WAIT_S = 120.0  # a retried trial waits this long for a dying predecessor to release the run dir
TUNE_DIR = ".tune"


# --------------------------------------------------------------------------------------------
# Trials
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialSpec:
    """One trial: everything a worker needs, as plain data (Tune ships it in the trial's
    config). Paths are absolute, so any node with the shared storage can run it."""

    name: str  # run dir name, e.g. hyper-lr=0.001-s1
    family: str  # a built-in family name or an absolute family YAML path
    family_name: str
    kind: str  # hyperrl | sb3 | oracle
    method: str  # the arch (hyperrl, oracle) or the SB3 method
    label: str  # the comparison's method label (run.json "label")
    seed: int
    run_dir: str
    log: str  # <storage>/<sweep>/logs/<family>/<name>.log; the attempts record is .json beside it
    sweep: str
    sets: tuple[str, ...] = ()  # hyperrl: --set overrides; sb3: SB3 PPO KEY=VALUE settings
    config: str | None = None
    total_steps: int | None = None
    threads: int = 1
    device: str = "cpu"
    evaluate: dict[str, Any] | None = None  # hyperrl.evaluate.evaluate_run keyword arguments
    search: bool = False  # a search trial: its name and settings come from Tune's sample

    @property
    def path(self) -> Path:
        return Path(self.run_dir)

    @property
    def record(self) -> Path:
        return Path(self.log).with_suffix(".json")

    def finished(self) -> bool:
        """Whether the trial is done: its ``metrics.json`` (and evaluation, when asked) written."""
        if not (self.path / "metrics.json").is_file():
            return False
        return self.evaluate is None or (self.path / "eval" / self.evaluate["name"] / "results.json").is_file()


def _tag(item: str) -> str:
    """The label tag of one grid setting: ``lr=0.001`` for ``ppo.lr=0.001``,
    ``hidden_sizes=32x32`` for ``model.hidden_sizes=[32,32]``."""
    key, _, value = item.partition("=")
    value = re.sub(r"[^A-Za-z0-9._+-]", "", value.strip().replace(",", "x"))
    return f"{key.strip().split('.')[-1]}={value}"


def _distractors(item: str) -> int | None:
    key, _, value = item.partition("=")
    if key.strip() != "env.distractors":
        return None
    try:
        return int(str(scalar_from_text(value)))
    except ValueError:
        return None


def _family_arg(arg: str) -> str:
    """A family argument as workers will read it: a built-in name as it is, a file as an
    absolute path."""
    p = Path(arg)
    return str(p.resolve()) if p.suffix in (".yaml", ".yml") or p.is_file() else arg


def load_sweep(path_or_name: str, overrides: Sequence[str] = ()) -> tuple[SweepConfig, Path]:
    """The sweep file (a path, or the name of a shipped one in ``configs/sweeps/``) with
    ``--set`` overrides; its name defaults to the file's."""
    p = Path(path_or_name)
    if not p.is_file():
        shipped = builtin_dir("configs") / "sweeps" / f"{path_or_name}.yaml"
        if p.suffix not in (".yaml", ".yml") and shipped.is_file():
            p = shipped
        elif not p.exists():
            known = sorted(q.stem for q in (builtin_dir("configs") / "sweeps").glob("*.yaml"))
            raise HyperrlError(f"sweep file {path_or_name} not found (shipped sweeps: {', '.join(known) or 'none'})")
    cfg = apply_overrides(load_yaml_config(SweepConfig, p), list(overrides))
    if not cfg.name:
        if not NAME_RE.match(p.stem):
            raise HyperrlError(f"{p}: the file name cannot name the sweep; set name: in it")
        cfg = replace(cfg, name=p.stem)
    return cfg, p


def _device(cfg: SweepConfig) -> str:
    if cfg.device == "auto":
        return "cuda" if cfg.gpus > 0 else "cpu"
    return cfg.device


def plan_trials(cfg: SweepConfig, root: Path) -> tuple[list[TrialSpec], list[dict[str, Any]]]:
    """Every trial of the sweep (``root`` = ``<storage>/<name>``), each configuration checked
    here, before anything runs: a bad key or value is one error line. Returns the trials of
    the grid (search cells: one template per cell) and the oracle family files to write."""
    from hyperrl.families import SPLITS, load_family
    from hyperrl.train import resolve_config

    if not cfg.families:
        raise HyperrlError("families: name at least one family")
    if not cfg.archs and not cfg.baselines:
        raise HyperrlError("archs and baselines are both empty: nothing to train")
    threads = max(1, int(round(cfg.cpus)))
    device = _device(cfg)
    evaluate = None
    if cfg.evaluate.enabled:
        evaluate = {"name": cfg.evaluate.name, "episodes": cfg.evaluate.episodes, "backend": cfg.evaluate.backend,
                    "seed": cfg.evaluate.seed, "split": "all"}
    if cfg.oracles.enabled and evaluate is None:
        raise HyperrlError("oracles.enabled needs evaluate.enabled: true (the comparison normalises each variant "
                           "by its oracle's evaluated return)")
    if cfg.search.space and (cfg.baselines or cfg.oracles.enabled):
        raise HyperrlError("a search (search.space) tunes hyperrl trials only: run baselines and oracles in a "
                           "grid sweep")
    config = str(Path(cfg.config).resolve()) if cfg.config else None
    axes = [list(axis) for axis in cfg.grid]
    for item in [*cfg.set, *itertools.chain(*axes)]:
        key = item.partition("=")[0].strip()
        if key in ("seed", "device"):
            raise HyperrlError(f"{item!r}: use the sweep's {'seeds' if key == 'seed' else 'device'} key instead")
        if key == "total_steps" and cfg.total_steps is not None:
            raise HyperrlError(f"{item!r}: total_steps is set twice (the sweep's total_steps key and --set); "
                               "give total_steps: null to vary it in the grid")
    for i, axis in enumerate(axes):
        tags = [_tag(x) for x in axis]
        if len(set(tags)) != len(tags):
            raise HyperrlError(f"grid[{i}]: two settings give the same trial name ({', '.join(tags)})")
    specs: list[TrialSpec] = []
    oracle_files: list[dict[str, Any]] = []
    for fam_arg in cfg.families:
        family = load_family(fam_arg)
        fam = _family_arg(fam_arg)
        logs = root / "logs" / family.name
        for arch in cfg.archs:
            for point in itertools.product(*axes) if axes else [()]:
                sets = (*cfg.set, *point, f"model.arch={arch}", "progress=false")
                tags = [_tag(x) for x in point if _distractors(x) is None]
                for seed in cfg.seeds:
                    try:
                        tcfg = resolve_config(family, config, sets, seed, cfg.total_steps, device)
                    except HyperrlError as e:
                        where = " ".join([family.name, arch, *point])
                        raise HyperrlError(f"{where}: {e}") from None
                    label = arch + (f"-d{tcfg.env.distractors}" if tcfg.env.distractors else "") + \
                        "".join(f"-{t}" for t in tags)
                    name = f"{label}-s{seed}"
                    specs.append(TrialSpec(
                        name=name, family=fam, family_name=family.name, kind="hyperrl", method=arch, label=label,
                        seed=seed, run_dir=str(root / family.name / name), log=str(logs / f"{name}.log"),
                        sweep=cfg.name, sets=sets, config=config, total_steps=cfg.total_steps, threads=threads,
                        device=device, search=bool(cfg.search.space),
                        evaluate=None if evaluate is None else {**evaluate, "checkpoint": cfg.evaluate.checkpoint}))
                    if cfg.search.space:
                        _check_space(cfg, family, config, sets, seed, device)
        if cfg.baselines:
            from hyperrl.baselines import parse_overrides

            parse_overrides(list(cfg.baseline_set))
        for method in cfg.baselines:
            for seed in cfg.seeds:
                label = f"sb3-{method}"
                name = f"{label}-s{seed}"
                specs.append(TrialSpec(name=name, family=fam, family_name=family.name, kind="sb3", method=method,
                                       label=label, seed=seed, run_dir=str(root / family.name / name),
                                       log=str(logs / f"{name}.log"), sweep=cfg.name, sets=tuple(cfg.baseline_set),
                                       total_steps=cfg.baseline_steps, threads=threads, device=device,
                                       evaluate=None if evaluate is None else {**evaluate, "checkpoint": None}))
        if cfg.oracles.enabled:
            o = cfg.oracles
            for split in SPLITS:
                for v in family.heldout_values(split).tolist():
                    vlabel = family.label(v).replace("=", "").replace(",", "_")
                    fam_file = root / ".families" / family.name / f"{vlabel}.yaml"
                    oracle_files.append({"family": fam_arg, "values": v, "path": str(fam_file)})
                    for k, schedule in enumerate(o.schedules):
                        name = vlabel + (f"-k{k + 1}" if len(o.schedules) > 1 else "")
                        sets = (*cfg.set, *schedule, f"model.arch={o.arch}", "env.distractors=0", "progress=false")
                        try:
                            resolve_config(family, config, sets, o.seed, o.total_steps or cfg.total_steps, device)
                        except HyperrlError as e:
                            raise HyperrlError(f"{family.name} oracles, schedule {k + 1}: {e}") from None
                        specs.append(TrialSpec(
                            name=name, family=str(fam_file), family_name=family.name, kind="oracle", method=o.arch,
                            label="oracle", seed=o.seed, run_dir=str(root / f"{family.name}-oracles" / name),
                            log=str(root / "logs" / f"{family.name}-oracles" / f"{name}.log"), sweep=cfg.name,
                            sets=sets, config=config or _builtin_config(family.name),
                            total_steps=o.total_steps or cfg.total_steps, threads=threads, device=device,
                            evaluate={**evaluate, "split": "interpolation", "checkpoint": cfg.evaluate.checkpoint}))
    names = [(s.family_name, s.kind == "oracle", s.name) for s in specs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise HyperrlError(f"two trials of the sweep would share the run dir {dup[0]}/{dup[2]}")
    return specs, oracle_files


def _builtin_config(family_name: str) -> str | None:
    """An oracle's family file is a copy elsewhere: it keeps its family's built-in config."""
    path = builtin_dir("configs") / f"{family_name}.yaml"
    return str(path) if path.is_file() else None


# --------------------------------------------------------------------------------------------
# Search spaces: KEY=DIST(ARGS)
# --------------------------------------------------------------------------------------------
def _parse_space_item(item: str) -> tuple[str, str, list[Any]]:
    m = SEARCH_RE.match(item)
    assert m is not None  # SweepConfig checked it
    key, dist, args_text = m.group(1), m.group(2), m.group(3)
    try:
        args = scalar_from_text(f"[{args_text}]")
    except Exception:  # noqa: BLE001 - reported below
        args = None
    if not isinstance(args, list):
        raise HyperrlError(f"search.space {item!r}: cannot read the arguments {args_text!r}")
    args = [float(a) if isinstance(a, str) and _is_number(a) else a for a in args]
    if dist in ("uniform", "loguniform", "randint"):
        if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args) \
                or not args[0] < args[1]:
            raise HyperrlError(f"search.space {item!r}: {dist} takes two numbers lo < hi")
        if dist == "loguniform" and args[0] <= 0:
            raise HyperrlError(f"search.space {item!r}: loguniform needs lo > 0")
        if dist == "randint" and not all(float(a).is_integer() for a in args):
            raise HyperrlError(f"search.space {item!r}: randint takes two integers")
    elif not args:
        raise HyperrlError(f"search.space {item!r}: choice needs at least one value")
    return key, dist, args


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _space_values(dist: str, args: list[Any]) -> list[Any]:
    """The values a distribution's ends (or choices) take: each must be a valid setting."""
    if dist == "choice":
        return list(args)
    if dist == "randint":
        return [int(args[0]), int(args[1]) - 1]
    return [args[0], args[1]]


def _setting(key: str, value: Any) -> str:
    """``KEY=VALUE`` text of a sampled value (YAML flow syntax, as --set reads it)."""
    if isinstance(value, float):
        return f"{key}={value!r}"
    return f"{key}={json.dumps(value) if isinstance(value, (list, dict, str)) else value}"


def _check_space(cfg: SweepConfig, family: Any, config: str | None, sets: Sequence[str], seed: int,
                 device: str) -> None:
    from hyperrl.train import resolve_config

    for item in cfg.search.space:
        key, dist, args = _parse_space_item(item)
        for v in _space_values(dist, args):
            try:
                resolve_config(family, config, [*sets, _setting(key, v)], seed, cfg.total_steps, device)
            except HyperrlError as e:
                raise HyperrlError(f"search.space {item!r}: {e}") from None


def _tune_space(cfg: SweepConfig) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for item in cfg.search.space:
        key, dist, args = _parse_space_item(item)
        space[key] = {"uniform": lambda a: tune.uniform(a[0], a[1]),
                      "loguniform": lambda a: tune.loguniform(a[0], a[1]),
                      "randint": lambda a: tune.randint(int(a[0]), int(a[1])),
                      "choice": lambda a: tune.choice(a)}[dist](args)
    return space


# --------------------------------------------------------------------------------------------
# One trial (runs on a Ray worker; plain Python, testable without Ray)
# --------------------------------------------------------------------------------------------
def _record(spec: TrialSpec, **update: Any) -> dict[str, Any]:
    """Update the trial's attempts record (one writer: the holder of the run dir's lock)."""
    path = spec.record
    try:
        rec = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        rec = {}
    rec.setdefault("trial", spec.name)
    rec.setdefault("family", spec.family_name)
    rec.setdefault("run_dir", spec.run_dir)
    rec.setdefault("attempts", [])
    attempt = update.pop("attempt", None)
    if attempt is not None:
        rec["attempts"].append(attempt)
    elif update and rec["attempts"]:
        rec["attempts"][-1].update(update)
    write_json(path, rec)
    return rec


def _attempt(from_step: Any, status: str) -> dict[str, Any]:
    """A new entry of a trial's attempts record: where it runs, from which step."""
    import socket

    import torch

    node: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "from_step": from_step,
                            "status": status, "host": socket.gethostname(), "pid": os.getpid(),
                            "threads": torch.get_num_threads()}
    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            node["node_id"] = ray.get_runtime_context().get_node_id()
    return node


def _clear_unfinished(spec: TrialSpec) -> None:
    """Empty the trial's run dir (this process holds its lock) for a fresh start: only a
    run dir this sweep wrote (or an empty one), never a folder of other files."""
    run_dir = spec.path
    content = [p for p in run_dir.iterdir() if p.name != LOCK_NAME]
    if not content:
        return
    info_path = run_dir / "run.json"
    try:
        owner = (json.loads(info_path.read_text()).get("sweep") or {}).get("name")
    except (OSError, json.JSONDecodeError, AttributeError):
        owner = None
    if owner != spec.sweep:
        raise HyperrlError(f"{run_dir} holds files that are not this sweep's unfinished run; move them away")
    for p in content:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _row(row: dict[str, Any]) -> dict[str, Any]:
    """A Tune report from an evaluation history entry."""
    out = {"env_steps": int(row["step"]), "interpolation": float(row["interpolation"]),
           "extrapolation": float(row["extrapolation"]), "time_s": float(row.get("time_s", 0.0))}
    out["heldout"] = 0.5 * (out["interpolation"] + out["extrapolation"])
    return out


def _final(spec: TrialSpec) -> dict[str, Any]:
    """The finished trial's last report: its final metrics (and evaluation's split means)."""
    from hyperrl.runs import read_json, read_metrics

    m = read_metrics(spec.path)
    out: dict[str, Any] = {"env_steps": int(m.get("env_steps") or 0), "finished": True,
                           "wall_clock_s": float(m.get("wall_clock_s") or 0.0)}
    for split in ("interpolation", "extrapolation"):
        v = m.get(f"eval_{split}_return")
        out[split] = float(v) if isinstance(v, (int, float)) else float("nan")
    if spec.evaluate is not None:
        res = read_json(spec.path / "eval" / spec.evaluate["name"] / "results.json")
        for split, s in (res.get("splits") or {}).items():
            out[f"eval_{split}"] = float(s["mean"])
    vals = [out[s] for s in ("interpolation", "extrapolation") if math.isfinite(out[s])]
    out["heldout"] = sum(vals) / len(vals) if vals else float("nan")
    return out


def run_trial(spec: TrialSpec, report: Report | None = None) -> dict[str, Any]:
    """Run one trial to its end in this process, holding its run dir's lock: skip a finished
    one, continue an interrupted hyperrl run from its latest checkpoint, else start it
    afresh; then evaluate it (when asked). ``report`` receives each periodic held-out
    evaluation and the final metrics. Returns the final metrics."""
    import torch

    torch.set_num_threads(spec.threads)
    report = report or (lambda _row: None)
    spec.path.mkdir(parents=True, exist_ok=True)
    Path(spec.log).parent.mkdir(parents=True, exist_ok=True)
    with run_lock(spec.path, exclusive=True, wait_s=LOCK_WAIT_S, what="run a sweep trial in"):
        if spec.finished():
            _record(spec, attempt=_attempt(None, "finished before: not run again"))
            final = _final(spec)
            report(final)
            return final
        with open(spec.log, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}: an attempt of trial {spec.name} (pid {os.getpid()})")
            try:
                _train_and_evaluate(spec, lambda row: report(_row(row)))
            except SystemExit:  # how Tune ends the thread of a trial its scheduler stops
                _record(spec, status="stopped by the scheduler")
                raise
            except BaseException as e:
                traceback.print_exc()
                _record(spec, status="failed", error=one_line(f"{type(e).__name__}: {e}", 500))
                raise
        _record(spec, status="done", ended=time.strftime("%Y-%m-%d %H:%M:%S"))
        final = _final(spec)
    report(final)
    return final


def _train_and_evaluate(spec: TrialSpec, report: Report) -> None:
    from hyperrl.checkpoint import CheckpointManager

    run_info = {"label": spec.label, "sweep": {"name": spec.sweep, "trial": spec.name}}
    latest = CheckpointManager(spec.path).latest_path
    if not (spec.path / "metrics.json").is_file():
        from_step = 0
        if spec.kind != "sb3" and latest.is_file():
            from hyperrl.checkpoint import load_checkpoint

            from_step = int(load_checkpoint(latest, map_location="cpu")["step"])
        _record(spec, attempt=_attempt(from_step, "running"))
        if spec.kind == "sb3":
            from hyperrl.baselines import run_baseline
            from hyperrl.families import load_family

            _clear_unfinished(spec)  # SB3 cannot resume: an interrupted baseline starts again
            run_baseline(load_family(spec.family), spec.method, spec.total_steps or 100_000, spec.seed,
                         spec.path, spec.device, spec.sets, threads=spec.threads, run_info=run_info, report=report)
        else:
            from hyperrl.train import resume_run, start_run

            metrics = None
            if from_step:
                _check_same_settings(spec)
                metrics, _ = resume_run(spec.path, on_eval=report)
            if metrics is None and not (spec.path / "metrics.json").is_file():
                # no checkpoint yet, or one at the last step whose metrics.json was never
                # written (killed in between): the run starts again
                _clear_unfinished(spec)
                start_run(spec.family, spec.config, spec.sets, spec.seed, spec.total_steps, spec.device,
                          spec.path, run_info=run_info, on_eval=report)
    else:
        _record(spec, attempt=_attempt("finished", "evaluating"))
    if spec.evaluate is not None and not spec.finished():
        from hyperrl.evaluate import evaluate_run

        ev = spec.evaluate
        evaluate_run(spec.path, split=ev["split"], episodes=ev["episodes"], backend=ev["backend"], seed=ev["seed"],
                     device=spec.device, checkpoint=ev["checkpoint"], name=ev["name"], force=True)


def _check_same_settings(spec: TrialSpec) -> None:
    """Refuse to continue a run dir trained with other settings than the trial's (a search
    restarted without Tune's state samples new settings under the same trial names)."""
    from hyperrl.families import load_family
    from hyperrl.train import config_differences

    diff = config_differences(spec.path, load_family(spec.family), spec.config, spec.sets, spec.seed,
                              spec.total_steps, spec.device)
    if diff:
        raise HyperrlError(f"{spec.path} holds a run with other settings than trial {spec.name} ({'; '.join(diff[:3])}); "
                           "move it away to train the trial afresh")


def _tune_trial(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable: one :class:`TrialSpec` (a search trial: plus its
    sampled settings), reported to Tune."""
    from ray import tune

    spec = TrialSpec(**{**config["trial"], "sets": tuple(config["trial"]["sets"])})
    if spec.search:
        spec = _search_trial(spec, tune.get_context().get_trial_name(), config.get("search") or {})
    run_trial(spec, lambda row: tune.report(row))


def _search_trial(cell: TrialSpec, tname: str, sampled: dict[str, Any]) -> TrialSpec:
    """The trial ``tname`` of a search cell, with its sampled settings."""
    label = f"{cell.label}-{tname}"
    name = f"{label}-s{cell.seed}"
    return replace(cell, name=name, label=label, run_dir=str(Path(cell.run_dir).parent / name),
                   log=str(Path(cell.log).parent / f"{name}.log"), search=False,
                   sets=(*cell.sets, *(_setting(k, v) for k, v in sampled.items())))


# --------------------------------------------------------------------------------------------
# Ray and Tune
# --------------------------------------------------------------------------------------------
def ray_init_kwargs(address: str | None, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``ray.init`` arguments: attach to ``address`` (``auto``, ``HOST:PORT``, ``ray://...``)
    or to ``RAY_ADDRESS``; otherwise start a local Ray with every core of this machine."""
    environ = os.environ if environ is None else environ
    common = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        return {"address": address, **common}
    if environ.get("RAY_ADDRESS"):
        return {**common}  # ray.init attaches to RAY_ADDRESS itself
    return {"num_cpus": os.cpu_count() or 1, "include_dashboard": False, **common}


class _Progress:
    """One line per trial event on stdout (Tune's own console output is off)."""

    def __init__(self, total: int, max_failures: int):
        self.total, self.max_failures, self.done = total, max_failures, 0

    def line(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    @staticmethod
    def name(trial: Any) -> str:
        spec = (trial.config or {}).get("trial") or {}
        if spec.get("search"):
            return f"{spec.get('family_name')}/{spec.get('label')}-{trial}"
        return f"{spec.get('family_name', '?')}/{spec.get('name', trial.trial_id)}"

    @staticmethod
    def error(trial: Any) -> str:
        text = ""
        with contextlib.suppress(Exception):
            text = trial.get_error() or ""
        lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
        # the exception line of the innermost traceback: "hyperrl.train.TrainingDiverged: ..."
        last = next((ln for ln in reversed(lines) if re.match(r"^[\w.]+(Error|Exception|Diverged|Exit)\b", ln)),
                    lines[-1] if lines else "unknown error")
        return one_line(last, 300)

    def callback(self) -> Any:
        from ray.tune import Callback

        outer = self

        class _Cb(Callback):
            def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                outer.line(f"start  {outer.name(trial)}")

            def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                outer.done += 1
                r = trial.last_result or {}
                if r.get("finished") and "interpolation" in r:
                    outer.line(f"done   {outer.name(trial)} ({outer.done}/{outer.total}): held-out return "
                               f"interpolation {r['interpolation']:.1f}, extrapolation {r['extrapolation']:.1f}")
                else:
                    outer.line(f"stopped {outer.name(trial)} ({outer.done}/{outer.total}) by the scheduler at "
                               f"{r.get('env_steps', 0):,} env steps")

            def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                outer.line(f"retry  {outer.name(trial)} after failure {trial.num_failures} of at most "
                           f"{outer.max_failures + 1}: {outer.error(trial)}")

            def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                outer.done += 1
                outer.line(f"FAILED {outer.name(trial)} ({outer.done}/{outer.total}) after {trial.num_failures} "
                           f"attempt(s): {outer.error(trial)}")

        return _Cb()


def _run_experiment(cfg: SweepConfig, root: Path, name: str, param_space: dict[str, Any], num_trials: int,
                    search: dict[str, Any] | None = None) -> Any:
    """One Tune experiment under ``<root>/.tune/<name>``, restored when it exists there."""
    from ray import tune

    resources = {"cpu": cfg.cpus, "gpu": cfg.gpus}
    trainable = tune.with_resources(_tune_trial, resources)
    storage = str(root / TUNE_DIR)
    progress = _Progress(num_trials, cfg.max_failures)
    # Tune's JSON and CSV results (its result grids read them); not its TensorBoard files,
    # which would sit in TensorBoard's view of the sweep beside the run dirs' own
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    callbacks = [progress.callback(), JsonLoggerCallback(), CSVLoggerCallback()]
    run_config = tune.RunConfig(name=name, storage_path=storage, verbose=0, callbacks=callbacks,
                                failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                                log_to_file=False)
    path = Path(storage) / name
    if tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=trainable, param_space=param_space,
                                   resume_unfinished=True, resume_errored=True)
    else:
        kwargs: dict[str, Any] = {}
        if search is not None:
            kwargs = search
        tuner = tune.Tuner(trainable, param_space=param_space, run_config=run_config,
                           tune_config=tune.TuneConfig(
                               max_concurrent_trials=cfg.max_concurrent or None, reuse_actors=True,
                               trial_name_creator=_trial_name, trial_dirname_creator=_trial_name, **kwargs))
    return tuner.fit()


def _trial_name(trial: Any) -> str:
    """Tune's name (and folder) of a trial: the run dir's for a grid trial; ``t<N>`` for a
    search trial (N: its sample number, from Tune's experiment tag)."""
    spec = (trial.config or {}).get("trial") or {}
    if not spec.get("search"):
        return f"{spec.get('family_name')}__{spec.get('name')}"
    m = re.match(r"^(\d+)", str(getattr(trial, "experiment_tag", "") or ""))
    return f"t{int(m.group(1)):03d}" if m else f"t{trial.trial_id}"


def _next_experiment(root: Path, prefix: str) -> str:
    i = 1
    while (root / TUNE_DIR / f"{prefix}-{i}").exists():
        i += 1
    return f"{prefix}-{i}"


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------
# Keys that only add trials, or change how many run at once: --resume accepts other values.
_RESUMABLE_CHANGES = {"families", "archs", "baselines", "seeds", "cpus", "gpus", "device", "max_failures",
                      "max_concurrent", "reference", "bootstrap_reps", "storage"}


def _check_resume(cfg: SweepConfig, saved_path: Path) -> None:
    saved = load_yaml_config(SweepConfig, saved_path)
    a, b = to_dict(saved), to_dict(cfg)
    changed = [k for k in a if a[k] != b[k] and k not in _RESUMABLE_CHANGES]
    if changed:
        raise HyperrlError(f"the sweep's settings changed since it started ({', '.join(changed)}; saved in "
                           f"{saved_path}): --resume needs the same settings; start a new sweep (another name) instead")


def run_sweep(cfg: SweepConfig, address: str | None = None, resume: bool = False,
              list_only: bool = False) -> int:
    """Plan, check, run on Ray Tune and compare; returns the exit status (0: every trial
    finished; 1: some failed)."""
    root = (Path(cfg.storage) / cfg.name).resolve()
    specs, oracle_files = plan_trials(cfg, root)
    if list_only:
        common = {*cfg.set, "progress=false", "env.distractors=0"}
        for s in specs:
            own = [x for x in s.sets if x not in common and not x.startswith("model.arch=")]
            print(f"{Path(s.run_dir).relative_to(root)}" + (" (a search cell)" if s.search else "") +
                  f": {s.kind} {s.method}, seed {s.seed}" + (f", {' '.join(own)}" if own else ""))
        print(f"{len(specs)} {'cells' if cfg.search.space else 'trials'}; run dirs under {root}")
        return 0
    saved = root / "sweep.yaml"
    if saved.is_file() or any(Path(s.run_dir).exists() for s in specs):
        if not resume:
            raise HyperrlError(f"sweep '{cfg.name}' already exists in {root}; --resume continues it, or name "
                               "another sweep (--set name=...)")
        if saved.is_file():
            _check_resume(cfg, saved)
    check_writable(root)
    root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, saved)
    from hyperrl.families import load_family

    for f in oracle_files:
        if not Path(f["path"]).is_file():
            load_family(f["family"]).save_one_variant(f["values"], f["path"])

    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    t0 = time.perf_counter()
    ray.init(**ray_init_kwargs(address))
    try:
        res = ray.cluster_resources()
        print(f"sweep {cfg.name}: {len(specs)} {'cells' if cfg.search.space else 'trials'} on Ray "
              f"({res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs, {len(ray.nodes())} node(s)); "
              f"{cfg.cpus:g} CPU(s) per trial; run dirs under {root}", flush=True)
        if cfg.search.space:
            search_summary = _run_search(cfg, root, specs)
        else:
            todo = [s for s in specs if not s.finished()]
            if len(todo) < len(specs):
                print(f"{len(specs) - len(todo)} trial(s) already finished: not run again", flush=True)
            if todo:
                from ray import tune

                _run_experiment(cfg, root, _next_experiment(root, "grid"),
                                {"trial": tune.grid_search([_plain(s) for s in todo])}, len(todo))
            search_summary = None
    finally:
        ray.shutdown()
    return _finish(cfg, root, specs, search_summary, time.perf_counter() - t0)


def _plain(spec: TrialSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["sets"] = list(spec.sets)
    return d


def _run_search(cfg: SweepConfig, root: Path, cells: list[TrialSpec]) -> dict[str, Any]:
    """One Tune experiment per cell (family x arch x grid point), one after another."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from hyperrl.families import load_family
    from hyperrl.train import resolve_config

    s = cfg.search
    metric = s.metric
    summary: dict[str, Any] = {"metric": metric, "algorithm": s.algorithm, "cells": {}}
    for cell in cells:
        tcfg = resolve_config(load_family(cell.family), cell.config, cell.sets, cell.seed, cell.total_steps, cell.device)
        if s.algorithm == "optuna":
            import optuna
            from ray.tune.search.optuna import OptunaSearch

            optuna.logging.set_verbosity(optuna.logging.WARNING)

            algo: Any = OptunaSearch(seed=s.seed)
        else:
            algo = BasicVariantGenerator(random_state=s.seed)
        grace = s.grace_steps or tcfg.eval.interval_steps
        # Rungs strictly below total_steps, and no stop at max_t: a trial is never stopped at
        # its last evaluation, which would end it before it writes metrics.json
        scheduler = (ASHAScheduler(time_attr="env_steps", max_t=tcfg.total_steps - 1, grace_period=grace,
                                   reduction_factor=s.reduction_factor, stop_last_trials=False)
                     if s.scheduler == "asha" and grace < tcfg.total_steps - 1 else FIFOScheduler())
        exp = f"search-{cell.family_name}-{cell.label}"
        print(f"cell {cell.family_name}/{cell.label}: {s.samples} configurations ({s.algorithm}, {s.scheduler})",
              flush=True)
        grid = _run_experiment(cfg, root, exp, {"trial": _plain(cell), "search": _tune_space(cfg)}, s.samples,
                               search={"num_samples": s.samples, "search_alg": algo, "scheduler": scheduler,
                                       "metric": metric, "mode": "max"})
        rows = []
        for r in grid:
            sampled = r.config.get("search") or {}
            trial = _search_trial(cell, Path(r.path).name, sampled)
            m = r.metrics or {}
            rows.append({"trial": Path(r.path).name, "run_dir": trial.run_dir,
                         "settings": [_setting(k, v) for k, v in sampled.items()], "env_steps": m.get("env_steps"),
                         metric: m.get(metric), "finished": bool(m.get("finished")),
                         "error": None if r.error is None else one_line(r.error, 300)})
        done = [r for r in rows if r["finished"] and isinstance(r[metric], (int, float))]
        done.sort(key=lambda r: -r[metric])
        summary["cells"][f"{cell.family_name}/{cell.label}"] = {"trials": rows, "best": done[0] if done else None}
    return summary


def _finish(cfg: SweepConfig, root: Path, specs: list[TrialSpec], search: dict[str, Any] | None,
            wall_s: float) -> int:
    """Statuses, ``sweep.json``, the search's ranking and the comparison; the exit status."""
    from hyperrl.compare import write_comparison

    if search is not None:  # the search's trials, as trial specs of their own
        specs = [_search_trial(c, r["trial"], {}) for c in specs
                 for r in search["cells"][f"{c.family_name}/{c.label}"]["trials"]]
    rows, failed, unfinished = [], [], []
    for s in specs:
        rec: dict[str, Any] = {}
        with contextlib.suppress(OSError, json.JSONDecodeError):
            rec = json.loads(s.record.read_text())
        attempts = rec.get("attempts", [])
        if s.finished():
            status = "finished"
        elif attempts and attempts[-1].get("status") == "failed":
            status = "failed"
            failed.append((s, attempts[-1].get("error")))
        elif search is not None and (s.path / "checkpoints").is_dir():
            status = "stopped by the scheduler"
        else:
            status = "unfinished"
            unfinished.append(s)
        rows.append({"family": s.family_name, "trial": s.name, "kind": s.kind, "label": s.label, "seed": s.seed,
                     "run_dir": s.run_dir, "status": status, "attempts": len(attempts)})
    comparison = None
    runs = [s.run_dir for s in specs if s.kind != "oracle" and s.finished()]
    oracles = [s.run_dir for s in specs if s.kind == "oracle" and s.finished()]
    if runs:
        try:
            text, out, _ = write_comparison(runs, oracles, out=root / "comparison",
                                            reference=cfg.reference if any(s.label == cfg.reference for s in specs)
                                            else None,
                                            eval_name=cfg.evaluate.name, reps=cfg.bootstrap_reps, force=True)
            print(text)
            comparison = str(out)
            print(f"wrote {out}/: comparison.md, comparison.json, figures")
        except HyperrlError as e:
            print(f"comparison not written: {one_line(e)}", flush=True)
    if search is not None:
        _print_search(search)
        write_json(root / "search.json", search)
    write_json(root / "sweep.json", {"name": cfg.name, "wall_clock_s": wall_s, "comparison": comparison,
                                     "trials": rows})
    n_done = sum(r["status"] == "finished" for r in rows)
    print(f"sweep {cfg.name}: {n_done} of {len(rows)} trials finished in {wall_s:.0f} s; summary {root / 'sweep.json'}")
    for s, err in failed:
        print(f"  failed: {s.family_name}/{s.name}: {err} (log: {s.log})")
    if unfinished:
        print(f"  {len(unfinished)} trial(s) unfinished (interrupted): python -m hyperrl.sweep ... --resume continues them")
    return 1 if failed or unfinished else 0


def _print_search(search: dict[str, Any]) -> None:
    metric = search["metric"]
    for cell, data in search["cells"].items():
        print(f"search {cell} ({search['algorithm']}), ranked by the final {metric} return:")
        ranked = sorted(data["trials"], key=lambda r: (not r["finished"], -(r[metric] or -math.inf)))
        for r in ranked:
            state = "done" if r["finished"] else ("failed" if r["error"] else f"stopped at {r['env_steps'] or 0:,}")
            value = "—" if r[metric] is None else f"{r[metric]:.1f}"
            print(f"  {r['trial']:>6} {value:>9}  {state:<18} {' '.join(r['settings'])}")
        if data["best"]:
            print(f"  best: {' '.join('--set ' + x for x in data['best']['settings'])}")


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser("python -m hyperrl.sweep",
                         "Run a grid of trainings (families x archs or baselines x grid points x seeds, oracles) "
                         "or a hyperparameter search on Ray Tune, locally or on a Ray cluster; then compare.")
    parser.add_argument("sweep", metavar="SWEEP", nargs="?",
                        help="a sweep YAML, or the name of one in configs/sweeps/")
    parser.add_argument("--address", default=None,
                        help="a Ray cluster to run on: auto, HOST:PORT or ray://HOST:PORT (default: RAY_ADDRESS, "
                             "else a local Ray started for the sweep with every core)")
    parser.add_argument("--resume", action="store_true",
                        help="continue this sweep: finished trials are not run again, interrupted ones continue "
                             "from their latest checkpoint")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a sweep key, e.g. --set seeds=[1,2,3] (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the trials and exit")
    parser.add_argument("--help-config", action="store_true", help="list every sweep key and exit")
    args = parser.parse_args(argv)
    if args.help_config:
        print(config_docs(SweepConfig))
        return 0
    if not args.sweep:
        parser.error("a sweep file is required")
    cfg, _ = load_sweep(args.sweep, args.overrides)
    return run_sweep(cfg, address=args.address, resume=args.resume, list_only=args.list)


if __name__ == "__main__":
    sys.exit(main_guard(main)())
