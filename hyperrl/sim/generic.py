"""Generic backend: any family through ``gymnasium.vector`` with per-env parameters.

Used for families without a batched torch simulator (user-written
YAMLs) and, with ``backend="gymnasium"``, as the reference the batched simulators are
checked against. Each sub-env is ``family.make_env(values)`` (a real ``gymnasium.make``
env, time limit included) wrapped in :class:`ParamResetWrapper`, which applies its
pending parameter values through :meth:`Family.apply` (derived attributes included) at
the start of every ``reset``. Because the vector env runs with
``AutoresetMode.SAME_STEP``, the reset of a finished episode happens *inside*
``step``; the pending values are therefore pushed to the sub-envs *before* each step,
so an env that ends an episode starts the next one with its row of ``next_params``.
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch

from hyperrl.errors import FamilyError
from hyperrl.families import Family, gym_make
from hyperrl.ppo import clip_action
from hyperrl.sim.base import StepOut, VecEnv

__all__ = ["GymnasiumVecEnv", "ParamResetWrapper"]

VECTORIZATIONS = ("sync", "async")


class ParamResetWrapper(gym.Wrapper):
    """Applies ``next_values`` (a list of floats in ``family.param_names`` order) to the
    unwrapped env at the start of every ``reset``, then resets.

    ``values`` holds what the current episode runs with. ``next_values`` stays set (it
    is the value every later reset takes until it is changed), which matches
    :class:`VecEnv` semantics: an env keeps taking its row of ``next_params``.
    """

    def __init__(self, env: gym.Env, family: Family, values: Sequence[float]):
        super().__init__(env)
        self.family = family
        self.values = [float(x) for x in values]
        self.next_values = list(self.values)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self.family.apply(self.env, self.next_values)
        self.values = list(self.next_values)
        return self.env.reset(seed=seed, options=options)


class _EnvFactory:
    """Picklable env constructor (AsyncVectorEnv ships it to a worker process)."""

    def __init__(self, family: Family, values: Sequence[float]):
        self.family = family
        self.values = [float(x) for x in values]

    def __call__(self) -> gym.Env:
        return ParamResetWrapper(self.family.make_env(self.values), self.family, self.values)


def _time_limit(env: gym.Env) -> int | None:
    e: Any = env
    while True:
        if isinstance(e, gym.wrappers.TimeLimit):
            return int(e._max_episode_steps)
        if not isinstance(e, gym.Wrapper):
            return None
        e = e.env


def _default_values(family: Family, probe: gym.Env) -> list[float]:
    """Gymnasium's own attribute values when they are valid for the family, else the
    first interpolation held-out point (inside the train range by construction)."""
    base = probe.unwrapped
    try:
        vals = [float(getattr(base, n)) for n in family.param_names]
        family.validate(torch.tensor(vals, dtype=torch.float64))
        return vals
    except (AttributeError, TypeError, ValueError, FamilyError):
        return family.heldout_values("interpolation")[0].tolist()


class GymnasiumVecEnv(VecEnv):
    """``num_envs`` variants of ``family`` stepped through ``gymnasium.vector``.

    Same contract as the batched simulators (:class:`hyperrl.sim.base.VecEnv`): tensors on
    ``device``/``dtype``, same-step autoreset, ``final_obs``, per-env ``params`` and
    ``next_params``. ``vectorization`` is ``"sync"`` (default: one process) or
    ``"async"`` (one worker process per env).
    """

    def __init__(
        self,
        family: Family,
        num_envs: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        vectorization: str = "sync",
    ):
        if vectorization not in VECTORIZATIONS:
            raise FamilyError(
                f"unknown vectorization '{vectorization}'; expected one of: {', '.join(VECTORIZATIONS)}"
            )
        if int(num_envs) < 1:
            raise FamilyError(f"num_envs must be >= 1, got {num_envs}")
        self.family = family
        self.num_envs = int(num_envs)
        self.param_names = family.param_names
        self.device = torch.device(device)
        self.dtype = dtype
        self.vectorization = vectorization
        self._seed = seed

        # One probe env in this process: spaces, time limit and default values.
        kwargs = dict(family.env_kwargs)
        if family.max_episode_steps is not None:
            kwargs.setdefault("max_episode_steps", family.max_episode_steps)
        probe = gym_make(family.env_id, **kwargs)  # as family.make_env, before any apply
        try:
            defaults = _default_values(family, probe)
            family.apply(probe, defaults)
            self.single_observation_space = probe.observation_space
            self.single_action_space = probe.action_space
            limit = _time_limit(probe)
        finally:
            probe.close()
        space = self.single_observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise FamilyError(
                f"family '{family.name}': {family.env_id} has observation space {space}; "
                "the generic backend needs a 1-D Box"
            )
        act = self.single_action_space
        if not isinstance(act, (gym.spaces.Discrete, gym.spaces.Box)):
            raise FamilyError(
                f"family '{family.name}': {family.env_id} has action space {act}; "
                "the generic backend supports Discrete and Box actions"
            )
        self._discrete = isinstance(act, gym.spaces.Discrete)
        if not self._discrete:
            self._act_shape = tuple(act.shape)
            self._act_low = torch.as_tensor(np.asarray(act.low), dtype=torch.float64)
            self._act_high = torch.as_tensor(np.asarray(act.high), dtype=torch.float64)
        if limit is None:
            raise FamilyError(
                f"family '{family.name}': {family.env_id} has no time limit; "
                "set max_episode_steps in the family file"
            )
        self.max_episode_steps = limit

        fns = [_EnvFactory(family, defaults) for _ in range(self.num_envs)]
        mode = gym.vector.AutoresetMode.SAME_STEP
        if vectorization == "sync":
            self.vector: gym.vector.VectorEnv = gym.vector.SyncVectorEnv(fns, copy=False, autoreset_mode=mode)
        else:
            self.vector = gym.vector.AsyncVectorEnv(fns, copy=False, autoreset_mode=mode)

        n, p = self.num_envs, family.num_params
        row = np.asarray(defaults, dtype=np.float64)
        # float64 host copies: what each sub-env runs with / will take at its next reset.
        self._current = np.tile(row, (n, 1))
        self._pushed = self._current.copy()
        self.params = self._to_device(self._current).reshape(n, p)
        self.next_params = self.params.clone()
        self._last_next = self.next_params.clone()
        self._closed = False

    # ---- helpers --------------------------------------------------------------------
    def _to_device(self, x: np.ndarray) -> torch.Tensor:
        return torch.tensor(x, dtype=self.dtype, device=self.device)

    def _as_rows(self, values: torch.Tensor | np.ndarray | Sequence) -> np.ndarray:
        v = torch.as_tensor(values).detach().to("cpu", torch.float64)
        p = self.family.num_params
        if v.ndim == 1 and v.numel() == p:
            v = v.expand(self.num_envs, p)
        if v.numel() != self.num_envs * p:
            raise FamilyError(
                f"expected parameter values of shape [{self.num_envs}, {p}] "
                f"({', '.join(self.param_names)}); got {tuple(v.shape)}"
            )
        return v.reshape(self.num_envs, p).numpy().copy()

    def _push(self, rows: np.ndarray, which: np.ndarray) -> None:
        """Set sub-envs ``which`` to take ``rows[which]`` at their next reset."""
        if not which.any():
            return
        self.family.validate(torch.from_numpy(rows[which]))
        self._pushed[which] = rows[which]
        if isinstance(self.vector, gym.vector.SyncVectorEnv):
            for i in np.flatnonzero(which):
                self.vector.envs[i].next_values = self._pushed[i].tolist()
        else:
            self.vector.set_attr("next_values", [r.tolist() for r in self._pushed])

    def _sync_next_params(self) -> None:
        """Push rows of ``next_params`` that changed since they were last pushed (the
        trainer may reassign ``next_params`` or edit it in place)."""
        nxt = self.next_params
        last = self._last_next
        if nxt.shape != last.shape or nxt.dtype != last.dtype or nxt.device != last.device:
            changed = np.ones(self.num_envs, dtype=bool)
        else:
            diff = (nxt.reshape(self.num_envs, -1) != last.reshape(self.num_envs, -1)).any(-1)
            if not bool(diff.any()):
                return
            changed = diff.cpu().numpy()
        rows = self._as_rows(nxt)
        self._push(rows, changed)
        self._last_next = nxt.detach().clone()

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """An attribute of every sub-env (looked up through the wrappers, e.g. ``LINK_MASS_1``)."""
        return tuple(self.vector.get_attr(name))

    # ---- VecEnv -----------------------------------------------------------------------
    def reset(self, params: torch.Tensor | None = None, seed: int | None = None) -> torch.Tensor:
        if seed is None and self._seed is not None:
            seed, self._seed = self._seed, None  # the constructor's seed seeds the first reset
        if params is not None:
            rows = self._as_rows(params)
        else:
            rows = self._current.copy()  # like the batched sims: keep each env's values
        self._push(rows, np.ones(self.num_envs, dtype=bool))
        obs, _ = self.vector.reset(seed=seed)
        self._current = rows.copy()
        self.params = self._to_device(rows)
        if params is not None:
            self.next_params = self.params.clone()
        # envs take next_params at their next reset: pushed lazily before the next step
        self._last_next = self.params.clone()
        self._sync_next_params()
        return self._to_device(np.asarray(obs))

    def _actions(self, action: torch.Tensor) -> np.ndarray:
        a = torch.as_tensor(action).detach().to("cpu")
        if self._discrete:
            if a.numel() != self.num_envs:
                raise ValueError(f"expected [{self.num_envs}] discrete actions, got shape {tuple(a.shape)}")
            return a.reshape(self.num_envs).to(torch.int64).numpy()
        want = (self.num_envs, *self._act_shape)
        if a.numel() != int(np.prod(want)):
            raise ValueError(f"expected actions of shape {list(want)}, got {tuple(a.shape)}")
        x = clip_action(a.to(torch.float64).reshape(want), self._act_low, self._act_high).numpy()
        return x.astype(self.single_action_space.dtype, copy=False)

    def step(self, action: torch.Tensor) -> StepOut:
        acts = self._actions(action)
        self._sync_next_params()
        obs, reward, terminated, truncated, infos = self.vector.step(acts)
        obs = np.asarray(obs)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        done = terminated | truncated
        final = obs.copy()
        if done.any():
            finals = infos["final_obs"]
            idx = np.flatnonzero(done)
            for i in idx:
                final[i] = finals[i]
            # those envs started their next episode with their pushed next_params
            self._current[idx] = self._pushed[idx]
            self.params = self.params.clone()
            self.params[torch.from_numpy(idx).to(self.device)] = self._to_device(self._pushed[idx])
        return StepOut(
            self._to_device(obs),
            torch.tensor(np.asarray(reward), dtype=self.dtype, device=self.device),
            torch.from_numpy(terminated).to(self.device),
            torch.from_numpy(truncated).to(self.device),
            self._to_device(final),
        )

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.vector.close()
