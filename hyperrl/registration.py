"""Every family as a Gymnasium env id, ``hyperrl/<family>-v0``.

Importing :mod:`hyperrl` registers every built-in family (``envs/*.yaml``, or
``$HYPERRL_ENVS_DIR``); :func:`register_family` registers any family YAML on disk. Then:

* ``gymnasium.make("hyperrl/cartpole-mass-v0", masspole=0.3)``: one variant, every episode
  (:func:`make_family_env`, a :class:`hyperrl.wrappers.FamilyEnv`); without values each
  ``reset`` draws a variant from the train distribution (domain randomisation), seeded by
  ``reset(seed=...)``; ``info["params"]`` holds the values of the episode.
* ``gymnasium.make_vec("hyperrl/cartpole-mass-v0", num_envs=4096,
  vectorization_mode="vector_entry_point")``: a :class:`hyperrl.vector.FamilyVectorEnv`
  (the batched simulator, or ``gymnasium.vector`` for a family without one).

Gymnasium 1.x loads no plugins through package entry points (the ``gymnasium.envs``
entry-point loader of 0.26-0.29 was removed in 1.0); its way to reach an id without
importing the package first is to name the module in the id, which ``make`` imports:
``gymnasium.make("hyperrl:hyperrl/cartpole-mass-v0")``.

This module imports neither torch nor the families module: registering reads each built-in
YAML's env id, time limit and success return only, so ``import hyperrl`` stays cheap. A
family is loaded (and checked) when an env is made.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import gymnasium as gym

from hyperrl import gym_envs  # noqa: F401 - the ids hyperrl's families extend must resolve
from hyperrl.resources import builtin_families_dir, list_families
from hyperrl.yamlio import YamlInputError, read_yaml_file

__all__ = ["family_env_id", "register_family", "register_builtin_families", "make_family_env",
           "make_family_vector_env"]

ENTRY_POINT = "hyperrl.registration:make_family_env"
VECTOR_ENTRY_POINT = "hyperrl.registration:make_family_vector_env"


def family_env_id(name: str) -> str:
    """The Gymnasium id of the family called ``name``: ``hyperrl/<name>-v0``."""
    return f"hyperrl/{name}-v0"


def _spec_fields(raw: Any) -> dict[str, Any]:
    """``max_episode_steps``, ``reward_threshold`` and ``nondeterministic`` of a family's id,
    from its parsed YAML: the family's own time limit, else that of the env it varies; its
    success return as the reward threshold."""
    env_id = raw["env_id"]
    base = gym.spec(env_id)
    limit = raw.get("max_episode_steps") or base.max_episode_steps
    threshold = raw.get("success_return")
    return {"max_episode_steps": int(limit) if limit else None,
            "reward_threshold": float(threshold) if threshold is not None else None,
            "nondeterministic": bool(base.nondeterministic)}


def _register(env_id: str, source: str, fields: dict[str, Any]) -> None:
    # A time limit Gymnasium's ``make`` adds from the spec (TimeLimit outermost, its
    # ``max_episode_steps=`` override honoured); the inner env then has none. Where the limit
    # is unknown when registering, the inner env keeps its own.
    kwargs: dict[str, Any] = {"family": source}
    if fields.get("max_episode_steps") is None:
        kwargs["own_time_limit"] = True
    if env_id in gym.registry:
        del gym.registry[env_id]  # re-registering the same family: no "Overriding" warning
    gym.register(id=env_id, entry_point=ENTRY_POINT, vector_entry_point=VECTOR_ENTRY_POINT,
                 kwargs=kwargs, **fields)


def register_builtin_families() -> list[str]:
    """Register every built-in family; returns their ids. Never raises: a family file that
    cannot be read is registered all the same, and making it reports why it cannot load."""
    ids = []
    for name in list_families():
        env_id = family_env_id(name)
        try:
            fields = _spec_fields(read_yaml_file(builtin_families_dir() / f"{name}.yaml"))
        except (OSError, YamlInputError, KeyError, TypeError, ValueError, AttributeError, gym.error.Error):
            fields = {}
        try:
            _register(env_id, name, fields)
        except gym.error.Error:  # a file name that is no valid id: not reachable through Gymnasium
            continue
        ids.append(env_id)
    return ids


def register_family(family: str | os.PathLike, id: str | None = None) -> str:  # noqa: A002 - Gymnasium's name
    """Register a family (a YAML path, or a built-in name) with Gymnasium; returns its id.

    The file is loaded and checked now (:func:`hyperrl.load_family`: one ``FamilyError`` line
    when it is malformed). The id is ``hyperrl/<name>-v0`` unless ``id`` is given; an id
    already registered for another family file is refused (pass ``id``). Registering the
    same file again is allowed (it re-reads the file).
    """
    from hyperrl.errors import FamilyError
    from hyperrl.families import family_path, load_family

    path = family_path(family)
    fam = load_family(path)
    source = str(path.resolve())
    env_id = family_env_id(fam.name) if id is None else str(id)
    existing = gym.registry.get(env_id)
    if existing is not None:
        theirs = (existing.kwargs or {}).get("family")
        same = theirs is not None and _resolved(str(theirs)) == source
        if not same:
            held = f"family {theirs}" if theirs else existing.entry_point
            raise FamilyError(f"Gymnasium id '{env_id}' is already registered ({held}); register "
                              f"{path} under another id: register_family(path, id='hyperrl/<name>-v0')")
    try:
        gym.envs.registration.parse_env_id(env_id)
    except gym.error.Error as e:
        raise FamilyError(f"cannot register family '{fam.name}' as '{env_id}': {e}") from None
    limit = fam.max_episode_steps or gym.spec(fam.env_id).max_episode_steps
    _register(env_id, source, {"max_episode_steps": limit, "reward_threshold": fam.success_return,
                               "nondeterministic": gym.spec(fam.env_id).nondeterministic})
    return env_id


def _resolved(source: str) -> str:
    """A registered ``family`` kwarg as an absolute file path (a built-in name: its file)."""
    try:
        from hyperrl.families import family_path

        return str(family_path(source).resolve())
    except Exception:  # noqa: BLE001 - a file gone since: it cannot equal any existing path
        return source


@functools.lru_cache(maxsize=64)
def _load_cached(path: str, mtime_ns: int, size: int) -> Any:
    from hyperrl.families import load_family

    return load_family(path)


def load_registered_family(source: str) -> Any:
    """The family a registered id names (a built-in name or a file path), loaded once per
    version of its file: ``make_vec(..., vectorization_mode="sync")`` makes N envs."""
    from hyperrl.families import family_path

    path = family_path(source)
    st = path.stat()
    return _load_cached(str(path.resolve()), st.st_mtime_ns, st.st_size)


def make_family_env(family: str, own_time_limit: bool = False, append_context: bool = False,
                    render_mode: str | None = None, **values: Any) -> gym.Env:
    """Entry point of ``gymnasium.make("hyperrl/<family>-v0", **values)``.

    ``values``: every parameter of the family (``masspole=0.3``): that variant in every
    episode; none: a variant drawn from the train distribution at every reset. A value
    outside the physical bounds, an unknown or a missing name is one ``FamilyError``.
    ``append_context=True`` appends the family's context vector to the observation.
    """
    from hyperrl.wrappers import FamilyEnv

    fam = load_registered_family(family)
    make_kwargs: dict[str, Any] = {} if own_time_limit else {"max_episode_steps": -1}
    if render_mode is not None:
        make_kwargs["render_mode"] = render_mode
    return FamilyEnv(fam, values=values or None, append_context=append_context, seed=None, **make_kwargs)


def make_family_vector_env(num_envs: int = 1, family: str = "", own_time_limit: bool = False,
                           render_mode: str | None = None, **kwargs: Any) -> gym.vector.VectorEnv:
    """Vector entry point of ``gymnasium.make_vec(id, num_envs, vectorization_mode=
    "vector_entry_point", **kwargs)``: a :class:`hyperrl.vector.FamilyVectorEnv`.

    ``kwargs``: its options (``tensors``, ``device``, ``dtype``, ``autoreset_mode``,
    ``append_context``, ``backend``, ``max_episode_steps``); every other keyword is a
    parameter value, one number or ``num_envs`` of them (none: domain randomisation).
    """
    from hyperrl.errors import FamilyError
    from hyperrl.vector import OPTIONS, FamilyVectorEnv

    if render_mode is not None:
        raise FamilyError(f"family {family}: its vector env does not render (render_mode={render_mode!r}); "
                          "gymnasium.make gives a single env that does")
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in OPTIONS}
    return FamilyVectorEnv(load_registered_family(family), num_envs, values=kwargs or None, **options)
