"""A family as a stable-baselines3 ``VecEnv``: :class:`SB3VecEnv`.

SB3's algorithms take a ``VecEnv`` whose ``step`` resets an env whose episode ended and
reports, per env, ``infos[i]["terminal_observation"]`` (the observation it ended on: PPO
bootstraps a truncated episode from its value) and ``infos[i]["TimeLimit.truncated"]``
(truncated by the time limit and not terminated). A :class:`hyperrl.vector.FamilyVectorEnv`
in its default same-step autoreset mode already resets inside ``step`` and returns the
final observations, so the adapter only reshapes: no per-env Python env, no copy of the
simulator's arrays beyond SB3's list of N info dicts.

    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecMonitor
    venv = VecMonitor(SB3VecEnv("cartpole-mass", num_envs=8))  # episode stats for SB3's logger
    PPO("MlpPolicy", venv).learn(100_000)

``get_attr("params")`` gives each env's values (``{name: value}``); ``set_attr("params",
values, indices)`` fixes the values of envs (from their next reset; ``None``: back to the
train distribution), as :meth:`FamilyVectorEnv.set_params`; ``env_method("set_params",
values)`` too. Seeding: ``venv.seed(s)`` seeds the next ``reset``.
"""

from __future__ import annotations

from typing import Any, Iterable

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from hyperrl.families import Family
from hyperrl.vector import FamilyVectorEnv

__all__ = ["SB3VecEnv"]


class SB3VecEnv(VecEnv):
    """stable-baselines3 ``VecEnv`` over a :class:`FamilyVectorEnv` (same-step autoreset,
    NumPy). Give a vector env, or a family (name, path or :class:`Family`) and ``num_envs``
    plus :class:`FamilyVectorEnv`'s keywords (``values``, ``append_context``, ``dtype``, ...).
    """

    def __init__(self, env: FamilyVectorEnv | Family | str, num_envs: int | None = None, **kwargs: Any):
        if isinstance(env, FamilyVectorEnv):
            if num_envs is not None or kwargs:
                raise ValueError("give either a FamilyVectorEnv or a family with num_envs and options, not both")
            venv = env
        else:
            if num_envs is None:
                raise ValueError("num_envs is required with a family")
            venv = FamilyVectorEnv(env, num_envs, **kwargs)
        if venv.autoreset_mode != AutoresetMode.SAME_STEP or venv.tensors:
            raise ValueError("SB3VecEnv needs a FamilyVectorEnv with same-step autoreset and NumPy arrays "
                             "(autoreset_mode='SameStep', tensors=False)")
        self.venv = venv
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    # ---- stepping ------------------------------------------------------------------------
    def reset(self) -> VecEnvObs:
        """Reset every env, with the seed given to :meth:`seed` since the last reset (if any)."""
        options = [o for o in self._options if o]
        if options:
            raise ValueError(f"SB3VecEnv takes no reset options (got {options[0]}); use set_attr('params', ...)")
        seed = self._seeds[0]
        obs, info = self.venv.reset(seed=seed)
        self.reset_infos = self._per_env_params(info["params"])
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        obs, reward, terminated, truncated, info = self.venv.step(self._actions)
        dones = np.logical_or(terminated, truncated)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        final = info["final_obs"]
        for i in np.flatnonzero(dones).tolist():
            # SB3's DummyVecEnv convention: bootstrap only a time-limit cut, never a termination
            infos[i]["terminal_observation"] = final[i]
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, reward.astype(np.float32, copy=False), dones, infos

    def close(self) -> None:
        self.venv.close()

    # ---- attributes ----------------------------------------------------------------------
    def _per_env_params(self, columns: dict[str, Any]) -> list[dict[str, Any]]:
        names = self.venv.param_names
        rows = np.stack([np.asarray(columns[n], dtype=np.float64) for n in names], axis=-1)
        return [{"params": dict(zip(names, r.tolist()))} for r in rows]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """``params``: each env's ``{name: value}``; ``render_mode``: None; any other name an
        attribute of the vector env (the same for every env)."""
        idx = list(self._get_indices(indices))
        if attr_name == "params":
            values = np.asarray(self.venv.params, dtype=np.float64)
            return [dict(zip(self.venv.param_names, values[i].tolist())) for i in idx]
        if attr_name == "render_mode":
            return [None for _ in idx]
        value = getattr(self.venv, attr_name)
        return [value for _ in idx]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Only ``params``: :meth:`FamilyVectorEnv.set_params` for the envs ``indices``."""
        if attr_name != "params":
            raise AttributeError(f"SB3VecEnv can set only 'params' (the envs' parameter values), not {attr_name!r}")
        self.venv.set_params(value, indices=list(self._get_indices(indices)))

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """Only ``set_params(values)``, for the envs ``indices``."""
        if method_name != "set_params":
            raise AttributeError(f"SB3VecEnv has no per-env method {method_name!r}; it offers set_params")
        idx = list(self._get_indices(indices))
        self.venv.set_params(*method_args, indices=idx, **method_kwargs)
        return [None for _ in idx]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """No env is a wrapped Gymnasium env (episode statistics: wrap in ``VecMonitor``)."""
        return [False for _ in self._get_indices(indices)]

    def _get_indices(self, indices: VecEnvIndices) -> Iterable[int]:
        if isinstance(indices, (np.integer, int)):
            return [int(indices)]
        if indices is None:
            return range(self.num_envs)
        return [int(i) for i in indices]  # type: ignore[union-attr]
