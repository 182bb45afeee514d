"""Loading any run dir as a policy source: ``hyperrl.load(RUN_DIR)``.

Every method writes a run dir with ``run.json`` (``{"method": ..., "family": ...}``),
``family.yaml`` (the family definition it used) and ``metrics.json`` (at least
``env_steps`` and ``wall_clock_s``). :func:`load` dispatches on ``method``:

* ``hyperrl``: a trained hypernetwork (``hyperrl.train``),
* ``dr`` / ``concat`` / ``oracle``: stable-baselines3 baselines (``hyperrl.baselines``),
* ``adapted``: a policy adapted to one variant (``hyperrl.adapt``).

Each loader returns a :class:`LoadedRun`; the evaluator, the comparison and the adapter
only use this interface, so every method is scored by the same code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import torch

from hyperrl.errors import HyperrlError
from hyperrl.evaluation import ActorFactory
from hyperrl.families import Family

__all__ = ["LoadedRun", "load", "read_run_info", "register_loader", "RUN_INFO"]

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
        """For :func:`hyperrl.evaluation.evaluate_values`: (context, values) -> actor."""

    def policy(self, values: Values, device: torch.device | str = "cpu") -> Any:
        """The policy for one variant, with SB3's ``predict(obs, state, episode_start,
        deterministic) -> (action, state)``."""


_LOADERS: dict[str, Callable[[Path, dict[str, Any]], LoadedRun]] = {}


def register_loader(method: str, loader: Callable[[Path, dict[str, Any]], LoadedRun]) -> None:
    _LOADERS[method] = loader


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
    try:
        info = json.loads(info_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HyperrlError(f"{info_path} is corrupt: {e}") from None
    if not isinstance(info, dict) or not isinstance(info.get("method"), str):
        raise HyperrlError(f"{info_path} is corrupt: no 'method'")
    return info


def load(run_dir: str | Path, **kwargs: Any) -> LoadedRun:
    """Load a run dir written by ``hyperrl.train``, ``hyperrl.baselines`` or ``hyperrl.adapt``."""
    info = read_run_info(run_dir)
    method = info["method"]
    if method not in _LOADERS:
        _import_loaders()
    if method not in _LOADERS:
        raise HyperrlError(f"{run_dir}: unknown method '{method}' in {RUN_INFO}")
    return _LOADERS[method](Path(run_dir), info, **kwargs)


def _import_loaders() -> None:
    """Loaders register themselves on import; import the known modules lazily."""
    import importlib

    for module in ("hyperrl.policy", "hyperrl.baselines", "hyperrl.adapt"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
