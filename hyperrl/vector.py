"""A family as a ``gymnasium.vector.VectorEnv``: :class:`FamilyVectorEnv`.

``gymnasium.make_vec("hyperrl/<family>-v0", num_envs=N, vectorization_mode=
"vector_entry_point")`` builds one (:mod:`hyperrl.registration`). It steps the family's
batched torch simulator (:mod:`hyperrl.sim`), or, for a family without one, Gymnasium's own
``SyncVectorEnv`` of the family's envs (:class:`hyperrl.sim.generic.GymnasiumVecEnv`), each
env with its own parameter values:

* **values**: ``make_vec(..., masspole=0.3)`` runs that variant in every env,
  ``masspole=[...]`` (``num_envs`` numbers) one per env; without values every env draws a
  new variant from the train distribution at each of its resets (domain randomisation),
  from a generator seeded by ``reset(seed=...)``. :meth:`FamilyVectorEnv.set_params`
  changes them (from each env's next reset; ``reset()`` to start all now).
  ``info["params"]`` holds each env's values (``{name: [N]}``, Gymnasium's ``_name`` masks).
* **autoreset**: the simulators reset an env inside the ``step`` that ends its episode, so
  the default is ``AutoresetMode.SAME_STEP``: ``obs[i]`` is already the next episode's first
  observation, ``info["final_obs"][i]`` the one the episode ended on, ``info["final_info"]
  ["params"]`` its values (rows valid where ``info["_final_obs"]``). Unlike
  ``SyncVectorEnv``'s object array of N entries, ``final_obs`` is one ``[N, obs_dim]``
  array: no Python object per env and step. ``autoreset_mode="NextStep"`` (batched
  simulators only) gives Gymnasium's default instead (the step after an episode ends
  returns the reset observation and ignores that env's action), which Gymnasium's vector
  ``NormalizeObservation`` requires.
* **arrays**: NumPy in and out by default; ``tensors=True`` takes and returns torch tensors
  on ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``), with no host transfer per step on an
  accelerator (``info`` entries are tensors too).
* ``append_context=True`` appends the family's context vector (:meth:`Family.context`) to
  every observation (the ``concat`` baseline's input).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from hyperrl.errors import FamilyError
from hyperrl.families import Family, load_family
from hyperrl.seeding import stream_seed
from hyperrl.sim import make_vec_env
from hyperrl.sim.base import BatchedSim, VecEnv
from hyperrl.wrappers import context_observation_space

__all__ = ["FamilyVectorEnv", "OPTIONS"]

# FamilyVectorEnv's keyword options (make_vec's other keywords are parameter values)
OPTIONS = ("tensors", "device", "dtype", "autoreset_mode", "append_context", "backend", "max_episode_steps")
_MODES = (AutoresetMode.SAME_STEP, AutoresetMode.NEXT_STEP)
_DRAW_ROWS = 8  # draws of the train distribution made at once, in units of num_envs


def _autoreset_mode(mode: AutoresetMode | str) -> AutoresetMode:
    if isinstance(mode, AutoresetMode):
        found = mode
    else:
        key = str(mode).replace("_", "").replace("-", "").lower()
        found = next((m for m in AutoresetMode if m.value.lower() == key or m.name.replace("_", "").lower() == key),
                     None)
    if found not in _MODES:
        raise FamilyError(f"autoreset_mode must be one of {', '.join(m.value for m in _MODES)}, got {mode!r}")
    return found


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    found = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise FamilyError(f"dtype must be a floating torch dtype such as float32 or float64, got {dtype!r}")
    return found


class FamilyVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` variants of ``family`` as one Gymnasium vector env (see the module doc).

    ``values``: ``None`` (domain randomisation), a mapping ``{name: value or [N] values}``,
    a ``[P]`` sequence or an ``[N, P]`` array. ``backend``: ``auto`` (the batched simulator
    when the family has one), ``batched`` or ``gymnasium``. ``max_episode_steps`` overrides
    the family's time limit. The underlying :class:`hyperrl.sim.VecEnv` is :attr:`sim`.
    """

    def __init__(
        self,
        family: Family | str,
        num_envs: int,
        values: Mapping[str, Any] | Sequence[float] | np.ndarray | torch.Tensor | None = None,
        *,
        tensors: bool = False,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str = torch.float32,
        autoreset_mode: AutoresetMode | str = AutoresetMode.SAME_STEP,
        append_context: bool = False,
        backend: str = "auto",
        max_episode_steps: int | None = None,
    ):
        from hyperrl.cli import parse_device

        fam = family if isinstance(family, Family) else load_family(family)
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise FamilyError(f"num_envs must be a positive integer, got {num_envs!r}")
        if max_episode_steps is not None and max_episode_steps != fam.max_episode_steps:
            if isinstance(max_episode_steps, bool) or not isinstance(max_episode_steps, (int, np.integer)) \
                    or max_episode_steps < 1:
                raise FamilyError(f"max_episode_steps must be a positive integer, got {max_episode_steps!r}")
            fam = dataclasses.replace(fam, max_episode_steps=int(max_episode_steps))
        self.family = fam
        self.num_envs = int(num_envs)
        self.param_names = fam.param_names
        self.tensors = bool(tensors)
        self.append_context = bool(append_context)
        self.autoreset_mode = _autoreset_mode(autoreset_mode)
        dev = parse_device(str(device))
        self.sim: VecEnv = make_vec_env(fam, self.num_envs, device=dev, dtype=_dtype(dtype), backend=backend)
        self.closed = False
        self.device = self.sim.device
        self._next_step = self.autoreset_mode == AutoresetMode.NEXT_STEP
        if self._next_step and not isinstance(self.sim, BatchedSim):
            raise FamilyError(f"family '{fam.name}' has no batched simulator, so its vector env resets in the "
                              "step that ends an episode (SameStep); for NextStep use gymnasium.make_vec(..., "
                              "vectorization_mode='sync')")

        self.metadata = {"autoreset_mode": self.autoreset_mode, "render_modes": []}
        self.render_mode = None
        obs_space = self.sim.single_observation_space
        if self.append_context:
            obs_space = context_observation_space(obs_space, fam.context_dim)
        self.single_observation_space = obs_space
        self.single_action_space = self.sim.single_action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._obs_dtype = obs_space.dtype
        self._discrete = isinstance(self.single_action_space, gym.spaces.Discrete)
        self._act_shape = () if self._discrete else tuple(self.single_action_space.shape)
        self._act_numel = self.num_envs * int(np.prod(self._act_shape))
        self._cpu = self.device.type == "cpu"

        # Parameter draws: their own generator (seeded from reset's seed, as its own stream),
        # drawn _DRAW_ROWS * N at a time and handed out in order.
        self._generator = torch.Generator(device=self.device)
        self._generator.seed()  # unseeded until reset(seed=...): fresh entropy, as Gymnasium
        if isinstance(self.sim, BatchedSim):
            self.sim.generator.seed()
        self._draws: torch.Tensor | None = None
        self._draws_np: np.ndarray | None = None
        self._drawn = 0
        self._next_view: tuple[torch.Tensor | None, Any] = (None, None)  # (next_params, its NumPy view)
        n, p = self.num_envs, fam.num_params
        self._random = torch.ones(n, dtype=torch.bool, device=self.device)  # env draws its values
        self._fixed = torch.zeros(n, p, dtype=self.sim.dtype, device=self.device)  # values where not
        self._all_random = self._any_random = True
        self._pending = torch.zeros(n, dtype=torch.bool, device=self.device)  # NextStep: reset obs due
        self._everywhere = self._out(torch.ones(n, dtype=torch.bool, device=self.device))
        if not self.tensors:
            self._everywhere.flags.writeable = False
        if values is not None:
            self.set_params(values)

    @property
    def _branch_free(self) -> bool:
        """Whether ``step`` avoids host syncs (masks applied with ``where``), as the simulator
        does on accelerators; else it indexes only the envs that ended, as the simulator does
        on the CPU."""
        return bool(getattr(self.sim, "branch_free_autoreset", False)) or not self._cpu

    # ---- parameter values --------------------------------------------------------------
    def set_params(self, values: Mapping[str, Any] | Sequence[float] | np.ndarray | torch.Tensor | None,
                   indices: Sequence[int] | np.ndarray | torch.Tensor | None = None) -> None:
        """Fix the variants of the envs ``indices`` (all by default) from their next reset on.

        ``values``: as the constructor's, for the envs named (``{name: value or one per env}``,
        ``[P]`` or ``[len(indices), P]``); ``None``: those envs go back to drawing from the
        train distribution. Call ``reset()`` to start every env with its new values now.
        Values outside the family's physical bounds are one ``FamilyError``.
        """
        idx = torch.arange(self.num_envs, device=self.device) if indices is None else \
            torch.as_tensor(np.asarray(indices), dtype=torch.long).reshape(-1).to(self.device)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_envs):
            raise FamilyError(f"env indices must lie in [0, {self.num_envs - 1}]")
        nxt = self.sim.next_params.clone()
        if values is None:
            self._random[idx] = True
            nxt[idx] = self._take(idx.numel())
        else:
            rows = self.family.values_rows(values, idx.numel()).to(self.device, self.sim.dtype)
            self._random[idx] = False
            self._fixed[idx] = rows
            nxt[idx] = rows
        self._all_random, self._any_random = bool(self._random.all()), bool(self._random.any())
        self.sim.next_params = nxt

    @property
    def params(self) -> np.ndarray | torch.Tensor:
        """``[N, P]`` the values each env runs with now (``param_names`` order)."""
        return self._out(self.sim.params)

    def _take(self, k: int) -> torch.Tensor:
        """The next ``k`` draws from the train distribution, ``[k, P]`` in the sim's dtype."""
        if self._draws is None or self._drawn + k > self._draws.shape[0]:
            size = max(k, _DRAW_ROWS * self.num_envs)
            self._draws = self.family.sample(size, self._generator, device=self.device, dtype=self.sim.dtype)
            self._draws_np = self._draws.numpy() if self._cpu else None
            self._drawn = 0
        out = self._draws[self._drawn:self._drawn + k]
        self._drawn += k
        return out

    def _take_np(self, k: int) -> np.ndarray:
        """:meth:`_take` as a NumPy view (CPU): slicing an array costs less than a tensor."""
        if self._draws is None or self._drawn + k > self._draws.shape[0]:
            return self._take(k).numpy()  # draws afresh
        out = self._draws_np[self._drawn:self._drawn + k]
        self._drawn += k
        return out

    def _values(self) -> torch.Tensor:
        """``[N, P]``: fresh draws where an env randomises, its fixed values elsewhere."""
        if self._all_random:
            return self._take(self.num_envs).clone()
        return torch.where(self._random.unsqueeze(-1), self._take(self.num_envs), self._fixed)

    # ---- conversions ---------------------------------------------------------------------
    def _out(self, x: torch.Tensor) -> Any:
        if self.tensors:
            return x
        return x.numpy() if self._cpu else x.detach().cpu().numpy()

    def _live(self, x: torch.Tensor) -> bool:
        """Whether ``x`` shares memory with the simulator's live state or values (CartPole
        observes its state itself): a caller must get a copy of it, to write as they like."""
        sim = self.sim
        state = sim.state if isinstance(sim, BatchedSim) else None
        if x is sim.params or x is state:  # the common case, without the storage lookups
            return True
        ptr = x.untyped_storage().data_ptr()
        return ptr == sim.params.untyped_storage().data_ptr() or (
            state is not None and ptr == state.untyped_storage().data_ptr())

    def _owned(self, x: torch.Tensor) -> Any:
        """``x`` as returned (:meth:`_out`), copied where it is live (a NumPy copy is cheaper
        than a torch one; NumPy from an accelerator is a host copy already). The copy keeps
        the memory layout (a transposed [N, D] view stays one, as Gymnasium's CartPole
        returns its observations): a reordering copy costs several times more."""
        if self.tensors:
            return x.clone() if self._live(x) else x
        if not self._cpu:
            return self._out(x)
        return x.numpy().copy(order="K") if self._live(x) else x.numpy()

    def _obs(self, obs: torch.Tensor, params: torch.Tensor) -> Any:
        if self.append_context:
            obs = torch.cat([obs, self.family.context(params).to(obs.dtype)], dim=-1)
        out = self._owned(obs)
        if self.tensors or out.dtype == self._obs_dtype:
            return out
        return out.astype(self._obs_dtype)

    def _params_info(self, params: torch.Tensor, mask: Any) -> dict[str, Any]:
        """``{name: [N] values, _name: mask}``: Gymnasium's layout of a per-env info dict."""
        values = self._owned(params)
        cols = values.unbind(-1) if self.tensors else values.T
        out: dict[str, Any] = {}
        for name, col in zip(self.param_names, cols):
            out[name], out[f"_{name}"] = col, mask
        return out

    def _actions(self, actions: Any) -> torch.Tensor:
        if self.tensors:
            a = torch.as_tensor(actions, device=self.device)
        else:
            arr = np.asarray(actions)
            a = torch.from_numpy(arr) if self._cpu and arr.dtype != object else \
                torch.as_tensor(arr, device=self.device)
        if a.numel() != self._act_numel:
            want = [self.num_envs, *self._act_shape]
            raise ValueError(f"expected actions of shape {want}, got {list(a.shape)}")
        return a

    # ---- VectorEnv -----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Start every env's episode; ``seed`` seeds the start states and the variant draws."""
        if options:
            raise ValueError(f"FamilyVectorEnv.reset takes no options (got {sorted(options)}); "
                             "set_params() changes the values")
        if seed is not None:
            self._generator.manual_seed(stream_seed(seed, "params"))
            self._draws = None
        obs = self.sim.reset(params=self._values(), seed=seed)
        self.sim.next_params = self._values()
        self._pending = torch.zeros_like(self._pending)
        params = self.sim.params
        return self._obs(obs, params), {"params": self._params_info(params, self._everywhere),
                                        "_params": self._everywhere}

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """One step of every env: ``actions`` ``[N]`` (discrete) or ``[N, act_dim]``
        (continuous; the simulators clip to the bounds) -> ``(obs [N, obs_dim], reward [N],
        terminated [N], truncated [N], info)``, with the autoreset of :attr:`autoreset_mode`."""
        sim = self.sim
        before = sim.params  # the sims replace params (never write into them): the ended episodes' values
        if self._next_step:
            state, elapsed = sim.state, sim.elapsed
        out = sim.step(self._actions(actions))
        obs, reward, terminated, truncated = out.obs, out.reward, out.terminated, out.truncated
        if self._next_step:
            pending = self._pending
            if self._branch_free or bool(pending.any()):
                # Envs whose reset observation is due take no step: undo the one the sim took
                # and return the start it drew when their last episode ended.
                rows = pending.unsqueeze(-1)
                sim.state = torch.where(rows, state, sim.state)
                sim.params = torch.where(rows, before, sim.params)
                sim.elapsed = torch.where(pending, elapsed, sim.elapsed)
                obs = torch.where(rows, sim.observe(state), obs)
                reward = reward.masked_fill(pending, 0.0)
                terminated, truncated = terminated & ~pending, truncated & ~pending
        terminated, truncated, done, done_t = self._ended(terminated, truncated)
        if self._next_step:
            self._pending = done_t
            rows = done_t.unsqueeze(-1)
            obs = torch.where(rows, out.final_obs, obs)
            shown = torch.where(rows, before, sim.params)
            info: dict[str, Any] = {"params": self._params_info(shown, self._everywhere), "_params": self._everywhere}
        else:
            shown = sim.params
            info = {"params": self._params_info(shown, self._everywhere), "_params": self._everywhere,
                    "final_obs": self._obs(out.final_obs, before), "_final_obs": done,
                    "final_info": {"params": self._params_info(before, done), "_params": done},
                    "_final_info": done}
        return self._obs(obs, shown), self._out(reward), terminated, truncated, info

    def _ended(self, terminated: torch.Tensor, truncated: torch.Tensor) -> tuple[Any, Any, Any, torch.Tensor | None]:
        """``(terminated, truncated, done)`` as returned (arrays or tensors) and, for NextStep,
        ``done`` as a tensor of the simulator's own; first, new draws in ``next_params`` for
        the randomising envs that ended (the sim just took theirs).

        On the CPU the masks are NumPy views (a NumPy op on a few thousand bools costs less
        than a torch op); on accelerators tensors, with no host sync."""
        if self._branch_free:
            done = terminated | truncated
            if self._any_random:
                mask = done if self._all_random else done & self._random
                self.sim.next_params = torch.where(mask.unsqueeze(-1), self._take(self.num_envs),
                                                   self.sim.next_params)
            return (self._out(terminated), self._out(truncated), self._out(done),
                    done.clone() if self._next_step else None)  # not the returned tensor
        term, trunc = terminated.numpy(), truncated.numpy()
        known = None if self._next_step else getattr(self.sim, "ended", None)  # the sim's own, this step
        done_np = np.logical_or(term, trunc) if known is None else known[0]
        if self._any_random:
            if self._all_random:
                idx = np.flatnonzero(done_np) if known is None else known[1]
            else:
                idx = np.flatnonzero(done_np & self._random.numpy())
            if idx.size:
                nxt = self.sim.next_params
                if self._next_view[0] is not nxt:  # replaced (reset, set_params): a new view
                    self._next_view = (nxt, nxt.numpy())
                self._next_view[1][idx] = self._take_np(idx.size)
        pending = torch.from_numpy(done_np.copy()) if self._next_step else None  # not the returned array
        if self.tensors:
            return terminated, truncated, torch.from_numpy(done_np), pending
        return term, trunc, done_np, pending

    def close_extras(self, **kwargs: Any) -> None:
        self.sim.close()
