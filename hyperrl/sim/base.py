"""The vectorised-environment contract shared by the batched simulators and the generic
``gymnasium.vector`` backend.

Semantics follow Gymnasium (reward, termination, ``TimeLimit`` truncation) with
*same-step* autoreset: when env ``i`` ends an episode in ``step``, the returned ``obs[i]``
is already the first observation of its next episode and ``final_obs[i]`` is the
observation the episode ended on (needed to bootstrap a truncated episode; see
SB3 issue #633). Each env carries its own parameter values (``params``, ``[N, P]``); an
env that resets takes its row of ``next_params`` (the trainer re-draws variants there).
"""

from __future__ import annotations

import abc
import ast
import math
from typing import Mapping, NamedTuple, Sequence

import gymnasium as gym
import numpy as np
import torch

from hyperrl.errors import FamilyError
from hyperrl.families import check_expr, eval_expr, expr_names


class StepOut(NamedTuple):
    obs: torch.Tensor  # [N, obs_dim] after autoreset
    reward: torch.Tensor  # [N]
    terminated: torch.Tensor  # [N] bool
    truncated: torch.Tensor  # [N] bool (time limit); may be True together with terminated
    final_obs: torch.Tensor  # [N, obs_dim] the observation each env reached before any reset


class VecEnv(abc.ABC):
    """N variants stepped at once; tensors live on ``device``."""

    num_envs: int
    param_names: tuple[str, ...]
    device: torch.device
    dtype: torch.dtype
    single_observation_space: gym.spaces.Box
    single_action_space: gym.spaces.Space
    max_episode_steps: int
    params: torch.Tensor  # [N, P] current values per env
    next_params: torch.Tensor  # [N, P] values an env takes when it next resets

    @property
    def obs_dim(self) -> int:
        return int(self.single_observation_space.shape[0])

    @abc.abstractmethod
    def reset(self, params: torch.Tensor | None = None, seed: int | None = None) -> torch.Tensor:
        """Reset every env (optionally to new ``params`` [N, P]); returns obs [N, obs_dim]."""

    @abc.abstractmethod
    def step(self, action: torch.Tensor) -> StepOut:
        """action: [N] long (discrete) or [N, act_dim] float (continuous, clipped to bounds)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class BatchedSim(VecEnv):
    """Base of the torch simulators: subclasses supply physics, reset sampling and obs.

    Physical attributes not varied by the family are constants (Gymnasium's defaults,
    overridable through the family's ``fixed``). A family's ``derived`` entry for an
    attribute the sim models is evaluated from the current values at every step, as
    :meth:`Family.apply` evaluates it on the Gymnasium env. :meth:`attribute_values`
    gives every attribute in ``DEFAULTS`` order: a ``[N]`` tensor where it varies per env
    (a column of ``params``, or derived from one), a 0-dim tensor where it is constant, so
    the physics is written once and derived quantities (CartPole's ``total_mass``) are
    always recomputed from the current values, never cached.
    """

    DEFAULTS: Mapping[str, float] = {}  # attribute -> Gymnasium default value
    # Attributes Gymnasium caches in __init__ that the sim computes itself at every step
    # (attribute -> the sim's expression): a family's ``derived`` entry for one must agree.
    RECOMPUTED: Mapping[str, str] = {}
    # Attributes of the Gymnasium env the sim deliberately does not offer -> why (named in
    # the refusal, so a family varying one learns the reason).
    NOT_OFFERED: Mapping[str, str] = {}
    MAX_EPISODE_STEPS: int = 0  # the registered TimeLimit
    STATE_DIM: int = 0

    def __init__(
        self,
        num_envs: int,
        param_names: Sequence[str],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        constants: Mapping[str, float] | None = None,
        max_episode_steps: int | None = None,
        seed: int | None = None,
        derived: Mapping[str, str] | None = None,
    ):
        unknown = [n for n in list(param_names) + list(constants or {}) if n not in self.DEFAULTS]
        if unknown:
            why = self.NOT_OFFERED.get(unknown[0])
            raise FamilyError(
                f"batched {type(self).__name__} cannot vary '{unknown[0]}'"
                + (f": {why}" if why else f"; it supports: {', '.join(self.DEFAULTS)}")
            )
        self.num_envs = int(num_envs)
        self.param_names = tuple(param_names)
        self.device = torch.device(device)
        self.dtype = dtype
        self.constants = {**self.DEFAULTS, **(constants or {})}
        self.max_episode_steps = int(max_episode_steps or self.MAX_EPISODE_STEPS)
        self._col = {n: j for j, n in enumerate(self.param_names)}
        self._derived = self._check_derived(dict(derived or {}))
        # (params column or None, 0-dim constant or None) per attribute, in DEFAULTS order.
        # Constants are 0-dim tensors on the device: cheaper than python scalars per op (no
        # wrapped-scalar allocation), never a host transfer, and ``float / tensor`` (torch's
        # reciprocal-then-multiply) never replaces a division.
        self._slots = [
            (self._col.get(k), None if k in self._col else self.scalar(self.constants[k])) for k in self.DEFAULTS
        ]
        self._np_slots: list[tuple[int | None, np.generic | None]] | None = None
        consts = {float(n.value) for _, tree in self._derived for n in ast.walk(tree) if isinstance(n, ast.Constant)}
        self._derived_consts = {v: self.scalar(v) for v in consts}
        self.generator = torch.Generator(device=self.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        n, p = self.num_envs, len(self.param_names)
        default_row = torch.tensor([self.constants[k] for k in self.param_names], dtype=dtype)
        self.params = default_row.to(self.device).expand(n, p).clone()
        self.next_params = self.params.clone()
        self.state = torch.zeros(n, self.STATE_DIM, dtype=dtype, device=self.device)
        self.elapsed = torch.zeros(n, dtype=torch.long, device=self.device)
        # How ``step`` autoresets; both give the same result. Branch-free (always on
        # accelerators): draw N fresh states and blend, no host sync. Indexed (CPU): reset only
        # the envs that ended; there a host "sync" is free and drawing N states cost more than physics.
        self.branch_free_autoreset = self.device.type != "cpu"
        # The last step's ended envs on the indexed (CPU) path, (done mask [N], indices), for
        # wrappers that need them (FamilyVectorEnv) instead of computing them again; else None.
        self.ended: tuple[np.ndarray, np.ndarray] | None = None

    # ---- to implement ---------------------------------------------------------------
    @abc.abstractmethod
    def initial_state(self, n: int) -> torch.Tensor:
        """[n, STATE_DIM] fresh episode starts drawn with ``self.generator``."""

    @abc.abstractmethod
    def observe(self, state: torch.Tensor) -> torch.Tensor:
        """[N, STATE_DIM] -> [N, obs_dim]."""

    @abc.abstractmethod
    def dynamics(
        self, state: torch.Tensor, action: torch.Tensor, params: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step for all envs -> (next_state [N, S], reward [N], terminated [N] bool)."""

    @classmethod
    def gymnasium_reset_state(cls, rng: np.random.Generator) -> np.ndarray:
        """[STATE_DIM] float64: the state the Gymnasium env's ``reset`` draws from its
        ``np_random`` (subclasses mirror Gymnasium's reset call exactly)."""
        raise NotImplementedError(f"{cls.__name__} does not mirror Gymnasium's reset")

    @classmethod
    def gymnasium_initial_states(cls, seed: int, n: int) -> torch.Tensor:
        """[n, STATE_DIM] float64: env ``i``'s state after Gymnasium's ``reset(seed=seed + i)``,
        i.e. what ``gymnasium.vector``'s ``reset(seed=seed)`` gives its sub-envs (and
        :class:`hyperrl.sim.generic.GymnasiumVecEnv`)."""
        from gymnasium.utils import seeding

        rows = [cls.gymnasium_reset_state(seeding.np_random(int(seed) + i)[0]) for i in range(int(n))]
        out = np.stack(rows).astype(np.float64) if rows else np.zeros((0, cls.STATE_DIM))
        return torch.from_numpy(out)

    # ---- shared -----------------------------------------------------------------------
    def scalar(self, value: float) -> torch.Tensor:
        """A 0-dim tensor of ``value`` in the sim's dtype, on its device."""
        return torch.tensor(value, dtype=self.dtype, device=self.device)

    def _check_derived(self, derived: dict[str, str]) -> list[tuple[str, ast.Expression]]:
        """The family's ``derived`` entries the physics must evaluate per step, in order.

        An entry reading only constants becomes a constant (folded into ``self.constants``);
        one for a ``RECOMPUTED`` attribute must give what the sim computes itself; any other
        attribute is refused, as is an expression reading an attribute the sim does not model.
        """
        cls = type(self).__name__
        out: list[tuple[str, ast.Expression]] = []
        varying = set(self.param_names)
        for name, expr in derived.items():
            tree = check_expr(str(expr), f"derived.{name}")
            if name in self.RECOMPUTED:
                self._check_recomputed(name, str(expr), tree)
                continue
            if name not in self.DEFAULTS:
                why = self.NOT_OFFERED.get(name)
                raise FamilyError(f"batched {cls} cannot derive '{name}'"
                                  + (f": {why}" if why else f"; it supports: {', '.join(self.DEFAULTS)}"))
            reads = expr_names(tree)
            outside = sorted(reads - set(self.DEFAULTS))
            if outside:
                raise FamilyError(f"batched {cls}: derived.{name} = {expr} reads '{outside[0]}', which it does "
                                  f"not model; it supports: {', '.join(self.DEFAULTS)}")
            if reads & varying or name in varying:
                out.append((name, tree))
                varying.add(name)
            else:  # constants only: one value, as Family.apply computes it (python floats)
                self.constants[name] = float(eval_expr(tree, self.constants.__getitem__))
        self._varying = frozenset(varying)
        return out

    def _check_recomputed(self, name: str, expr: str, tree: ast.Expression) -> None:
        """Refuse a ``derived`` entry that disagrees with the sim's own formula for ``name``
        (compared at three points where every attribute differs from the others)."""
        ours = check_expr(self.RECOMPUTED[name], "")
        names = list(self.DEFAULTS)
        for k in (1, 2, 3):
            point = {n: (self.DEFAULTS[n] or 1.0) * (1.0 + 0.137 * k * (i + 1)) for i, n in enumerate(names)}
            try:
                theirs = float(eval_expr(tree, point.__getitem__))
            except KeyError as e:
                raise FamilyError(f"batched {type(self).__name__}: derived.{name} = {expr} reads {e}, which it "
                                  f"does not model; it computes {name} = {self.RECOMPUTED[name]}") from None
            except (ArithmeticError, ValueError, TypeError):
                theirs = math.nan
            if not math.isclose(theirs, float(eval_expr(ours, point.__getitem__)), rel_tol=1e-9):
                raise FamilyError(f"batched {type(self).__name__} computes {name} = {self.RECOMPUTED[name]} "
                                  f"at every step; the family's derived.{name} = {expr} differs")

    def varies(self, name: str) -> bool:
        """Whether attribute ``name`` may differ between envs (a parameter or derived from one)."""
        return name in self._varying

    def attribute_values(self, params: torch.Tensor) -> list[torch.Tensor]:
        """Every attribute in ``DEFAULTS`` order for ``params`` [N, P]: a [N] tensor where it
        varies, a 0-dim tensor where it is constant; ``derived`` entries evaluated in order,
        each reading the values before it (as :meth:`Family.apply` does)."""
        cols = params.unbind(-1) if self._col else ()
        vals = [cols[j] if j is not None else c for j, c in self._slots]
        if not self._derived:
            return vals
        named = dict(zip(self.DEFAULTS, vals))
        for name, tree in self._derived:
            named[name] = eval_expr(tree, named.__getitem__, const=self._derived_consts.__getitem__)
        return list(named.values())

    @staticmethod
    def state_rows(state: torch.Tensor) -> torch.Tensor:
        """``state`` [N, S] as contiguous rows [S, N], each variable one flat vectorised loop
        (an op on a column of [N, S] costs ~3x). A sim that returns its new state as the
        [N, S] view of an [S, N] buffer gets it back here without a copy."""
        rows = state.t()
        return rows if rows.is_contiguous() else rows.contiguous()

    def attribute_arrays(self, params: torch.Tensor) -> list[np.ndarray | np.generic]:
        """:meth:`attribute_values` as NumPy (CPU tensors only): [N] views of ``params``'
        columns where an attribute varies, NumPy scalars where it is constant."""
        if self._derived:
            return [v.numpy() if v.dim() else v.numpy()[()] for v in self.attribute_values(params)]
        if self._np_slots is None:  # the constants as NumPy scalars, made once
            self._np_slots = [(j, None if c is None else c.numpy()[()]) for j, c in self._slots]
        cols = params.numpy()
        return [cols[:, j] if j is not None else c for j, c in self._np_slots]

    def attr(self, name: str, params: torch.Tensor) -> torch.Tensor | float:
        """One attribute: its [N] values where it varies, a python float where it is constant."""
        if not self.varies(name):
            return self.constants[name]
        return self.attribute_values(params)[list(self.DEFAULTS).index(name)]

    def reset(
        self,
        params: torch.Tensor | None = None,
        seed: int | None = None,
        initial_state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Reset every env; ``initial_state`` ``[N, STATE_DIM]`` starts the episodes there
        instead of drawing (e.g. :meth:`gymnasium_initial_states`, to replay Gymnasium's
        first episodes exactly). Later autoresets draw with ``self.generator`` as usual."""
        if seed is not None:
            self.generator.manual_seed(seed)
        if params is not None:
            self.params = params.to(device=self.device, dtype=self.dtype).reshape(self.num_envs, -1).clone()
            self.next_params = self.params.clone()
        if initial_state is not None:
            want = (self.num_envs, self.STATE_DIM)
            if tuple(initial_state.shape) != want:
                raise ValueError(f"initial_state must have shape {list(want)}, got {tuple(initial_state.shape)}")
            self.state = initial_state.to(device=self.device, dtype=self.dtype).clone()
        else:
            self.state = self.initial_state(self.num_envs)
        self.elapsed = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        return self.observe(self.state)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything that decides the next steps: per-env state, step counters, current and
        next parameter values, and the reset generator (CPU tensors, for a checkpoint)."""
        return {"state": self.state.cpu(), "elapsed": self.elapsed.cpu(), "params": self.params.cpu(),
                "next_params": self.next_params.cpu(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Continue exactly where :meth:`state_dict` was taken; returns the observation."""
        self.state = state["state"].to(self.device, self.dtype)
        self.elapsed = state["elapsed"].to(self.device)
        self.params = state["params"].to(self.device, self.dtype)
        self.next_params = state["next_params"].to(self.device, self.dtype)
        self.generator.set_state(state["generator"].cpu())
        return self.observe(self.state)

    def step(self, action: torch.Tensor) -> StepOut:
        new_state, reward, terminated = self.dynamics(self.state, action, self.params)
        final_obs = self.observe(new_state)
        if self.branch_free_autoreset or self.device.type != "cpu":
            # No host sync, the same work every step.
            self.ended = None
            elapsed = self.elapsed + 1
            truncated = elapsed >= self.max_episode_steps  # Gymnasium's TimeLimit: may co-occur
            done = terminated | truncated
            d = done.unsqueeze(-1)
            self.state = torch.where(d, self.initial_state(self.num_envs), new_state)
            self.params = torch.where(d, self.next_params, self.params)
            self.elapsed = elapsed.masked_fill_(done, 0)
            return StepOut(self.observe(self.state), reward, terminated, truncated, final_obs)
        # Indexed (CPU only): the same bookkeeping on NumPy views of the same memory (NumPy's
        # ops on a few thousand rows cost a fraction of torch's), resetting only the envs
        # that ended.
        elapsed = self.elapsed.numpy() + 1
        trunc = elapsed >= self.max_episode_steps  # Gymnasium's TimeLimit: may co-occur
        done = terminated.numpy() | trunc
        ended = np.flatnonzero(done)
        self.ended = (done, ended)
        truncated = torch.from_numpy(trunc)
        self.elapsed = torch.from_numpy(elapsed)
        if ended.size == 0:
            self.state = new_state  # nothing reset: obs equals final_obs (a separate tensor)
            return StepOut(final_obs.clone(), reward, terminated, truncated, final_obs)
        elapsed[ended] = 0
        # copies: final_obs may share new_state's memory, and params may be held outside
        fresh = self.initial_state(ended.size)
        self.state = new_state.clone()
        self.state.numpy()[ended] = fresh.numpy()
        params = self.params.numpy().copy()
        params[ended] = self.next_params.numpy()[ended]
        self.params = torch.from_numpy(params)
        return StepOut(self.observe(self.state), reward, terminated, truncated, final_obs)
