"""Reading run dirs: ``hyperrl.load(RUN_DIR)`` and the one reader of a run's JSON files.

Every method writes a run dir with ``run.json`` (``{"method": ..., "family": ...}``),
``family.yaml`` (the family definition it used) and ``metrics.json`` (at least
``env_steps`` and ``wall_clock_s``). :func:`load` dispatches on ``method`` through
:data:`LOADERS`, one explicit table:

* ``hyperrl``: a trained hypernetwork (``hyperrl.train``; :mod:`hyperrl.hyperrun`),
* ``dr`` / ``concat`` / ``oracle``: stable-baselines3 baselines (:mod:`hyperrl.baselines`),
* ``adapted``: a policy adapted to one variant (:mod:`hyperrl.adapt`).

Each loader returns a :class:`LoadedRun`; the evaluator, the comparison and the adapter
only use this interface, so every method is scored by the same code.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import torch

from hyperrl.errors import HyperrlError
from hyperrl.episodes import ActorFactory
from hyperrl.families import Family

__all__ = ["LOADERS", "LoadedRun", "load", "loader_for", "read_json", "read_metrics", "read_run_info",
           "RUN_INFO", "Values"]

RUN_INFO = "run.json"
Values = Mapping[str, float] | Sequence[float] | torch.Tensor


@runtime_checkable
class LoadedRun(Protocol):
    """What :func:`load` returns, whatever the method."""

    run_dir: Path
    method: str
    family: Family
    info: dict[str, Any]  # metrics.json (env_steps, wall_clock_s, ...)
    # Optional attribute ``variants`` ([K, P] tensor): the only values a per-variant method
    # (the oracle) can act on; absent or None for methods that generalise.

    def actor_factory(self, deterministic: bool = True, seed: int = 0,
                      device: torch.device | str = "cpu") -> ActorFactory:
        """For :func:`hyperrl.episodes.evaluate_values`: (context, values) -> actor."""

    def policy(self, values: Values, device: torch.device | str = "cpu") -> Any:
        """The policy for one variant, with SB3's ``predict(obs, state, episode_start,
        deterministic) -> (action, state)``."""


# method -> "module:function(run_dir, run_info, **options) -> LoadedRun"; imported only when
# a run of that method is loaded, so reading a baseline never imports the adapter.
LOADERS: dict[str, str] = {
    "hyperrl": "hyperrl.hyperrun:load_hyper_run",
    "dr": "hyperrl.baselines:load_baseline_run",
    "concat": "hyperrl.baselines:load_baseline_run",
    "oracle": "hyperrl.baselines:load_baseline_run",
    "adapted": "hyperrl.adapt.adapted_run:load_adapted_run",
}


def read_json(path: str | Path, what: str = "") -> Any:
    """The JSON content of ``path``; a missing, unreadable or corrupt file is one
    :class:`HyperrlError` naming it (``what`` says what the file is)."""
    p = Path(path)
    label = f"{p} ({what})" if what else str(p)
    if not p.is_file():
        raise HyperrlError(f"{label} does not exist")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HyperrlError(f"{label} is corrupt: {e}") from None


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """``metrics.json`` of a run dir: ``{}`` while the run has none yet (still training, or
    stopped before its end); a corrupt one is an error, never silently empty."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise HyperrlError(f"{path} is corrupt: expected a JSON object")
    return data


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """``run.json`` of a run dir, with one-line errors for a missing or corrupt run dir."""
    path = Path(run_dir)
    if not path.exists():
        raise HyperrlError(f"run dir {path} does not exist")
    if not path.is_dir():
        raise HyperrlError(f"run dir {path} is not a folder")
    info_path = path / RUN_INFO
    if not info_path.is_file():
        raise HyperrlError(f"{path} is not a hyperrl run dir (no {RUN_INFO})")
    info = read_json(info_path)
    if not isinstance(info, dict) or not isinstance(info.get("method"), str):
        raise HyperrlError(f"{info_path} is corrupt: no 'method'")
    return info


def loader_for(method: str, run_dir: str | Path = "") -> Callable[..., LoadedRun]:
    """The loader of ``method`` from :data:`LOADERS`."""
    if method not in LOADERS:
        where = f"{run_dir}: " if run_dir else ""
        raise HyperrlError(f"{where}unknown method '{method}' in {RUN_INFO}; known: {', '.join(LOADERS)}")
    module, name = LOADERS[method].split(":")
    return getattr(importlib.import_module(module), name)


def load(run_dir: str | Path, checkpoint: str | None = None, **kwargs: Any) -> LoadedRun:
    """Load a run dir written by ``hyperrl.train``, ``hyperrl.baselines`` or ``hyperrl.adapt``.

    ``checkpoint`` (``best`` or ``latest``) applies to methods whose loader takes it (hyperrl
    runs); for any other method it is an error rather than a silently ignored option."""
    info = read_run_info(run_dir)
    loader = loader_for(info["method"], run_dir)
    if checkpoint is not None:
        params = inspect.signature(loader).parameters.values()
        if not any(p.name == "checkpoint" and p.kind is not p.VAR_KEYWORD for p in params):
            raise HyperrlError(f"--checkpoint is not supported for '{info['method']}' runs ({run_dir})")
        kwargs["checkpoint"] = checkpoint
    return loader(Path(run_dir), info, **kwargs)
