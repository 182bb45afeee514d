"""Batched MuJoCo backend: N variants of a Gymnasium v5 MuJoCo env stepped by MuJoCo's own
thread pool (``mujoco.batch.Batch``), every env with its own model parameters.

A family selects it with ``batched: mujoco``. Supported envs: ``HalfCheetah-v5``,
``Hopper-v5``, ``Walker2d-v5`` and hyperrl's ``hyperrl/HalfCheetahVel-v5`` (their
``env_kwargs`` honoured: weights, ranges, noise scale, frame skip, XML file). Parameters:
any MuJoCo model quantity (``params.<p>.mujoco``) and cheetah-vel's ``target_velocity``.

How it matches Gymnasium: each simulation is an ``mjSTATE_INTEGRATION`` row (time, qpos,
qvel, act, warm start, controls), which ``Batch`` steps bit for bit as a loop of
``mj_step`` over one ``MjData`` per env does. Each env runs on its own copy of the compiled
``MjModel`` holding its parameter values, written and made consistent
(``mj_setConst`` and the compiler's statistics) by the functions ``Family.apply`` uses
(:func:`hyperrl.mujoco_params.field_values`, :func:`~hyperrl.mujoco_params.set_model`);
a per-simulation field of one shared model would not do, since the solver's
``stat.meaninertia`` cannot be per-simulation there. Observation, reward, termination (Hopper's and Walker's health checks)
and ``TimeLimit`` truncation are Gymnasium v5's formulas, vectorised in NumPy. Env ``i``
draws its reset noise from its own ``np.random.Generator`` seeded ``seed + i``, as
``gymnasium.vector`` seeds its sub-envs, so a seeded batch starts (and autoresets) where
Gymnasium's would. ``tests/test_mujoco.py`` checks every step against Gymnasium.

MuJoCo runs on the CPU: actions come to the host and observations go back to the training
device once per step, the engine's boundary.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import numpy as np
import torch

from hyperrl.errors import FamilyError
from hyperrl.families import Family
from hyperrl.mujoco_params import field_values, original_fields, resolve, set_model, touched_fields
from hyperrl.ppo import clip_action
from hyperrl.sim.base import StepOut, VecEnv

__all__ = ["MujocoVecEnv", "TASK_ATTRIBUTES"]

# env attributes (not model quantities) the backend can vary per env, by task
TASK_ATTRIBUTES = {"cheetah-vel": ("target_velocity",)}


def _task_of(base: Any) -> str:
    """Which Gymnasium v5 task ``base`` (an unwrapped env) is: its formulas are mirrored here."""
    from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
    from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
    from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv

    from hyperrl.mujoco_envs import HalfCheetahVelEnv

    # exact classes: a subclass may change the step, which this backend would not follow
    kinds = {HalfCheetahVelEnv: "cheetah-vel", HalfCheetahEnv: "cheetah", HopperEnv: "hopper",
             Walker2dEnv: "walker"}
    return kinds.get(type(base), "")


class MujocoVecEnv(VecEnv):
    """``num_envs`` variants of a MuJoCo family; the :class:`~hyperrl.sim.base.VecEnv`
    contract (same-step autoreset, ``final_obs``, per-env ``params`` / ``next_params``).

    ``threads``: MuJoCo's worker threads including the caller's (0: one per CPU).
    """

    def __init__(self, family: Family, num_envs: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int | None = None, threads: int = 1):
        import mujoco
        from mujoco.batch import Batch

        if int(num_envs) < 1:
            raise FamilyError(f"num_envs must be >= 1, got {num_envs}")
        self.family = family
        self.num_envs = n = int(num_envs)
        self.param_names = family.param_names
        self.device = torch.device(device)
        self.dtype = dtype
        with family.probe_env() as probe:  # env_kwargs applied, parameters not: the compiled model
            base = probe.unwrapped
            self.task = _task_of(base)
            if not self.task:
                raise FamilyError(f"family '{family.name}': batched mujoco supports HalfCheetah-v5, Hopper-v5, "
                                  f"Walker2d-v5 and hyperrl/HalfCheetahVel-v5, not {family.env_id} "
                                  f"({type(base).__name__}); omit 'batched' to use the gymnasium backend")
            self._check_family(base)
            for k, v in family.fixed.items():  # constants: read back below as the env holds them
                setattr(base, k, float(v))
            self._read_task(base)
            model = base.model
            self.single_observation_space = probe.observation_space
            self.single_action_space = probe.action_space
            limit = family.max_episode_steps or (probe.spec.max_episode_steps if probe.spec else None)
            self._mj_params = [p for p in family.params if p.mujoco is not None]
            self._mj_cols = [j for j, p in enumerate(family.params) if p.mujoco is not None]
            self._resolved = [resolve(model, p.mujoco, f"params.{p.name}.mujoco", family._fail, family.env_id)
                              for p in self._mj_params]
            self._fields = touched_fields(self._resolved)
            self._original = original_fields(model, self._fields)
            self.batch = Batch(model, nsim=n, nthread=int(threads))
            self.model = model
            self._scratch = mujoco.MjData(model)
        if limit is None:
            raise FamilyError(f"family '{family.name}': {family.env_id} has no time limit; "
                              "set max_episode_steps in the family file")
        self.max_episode_steps = int(limit)
        self.threads = int(threads)
        self.frame_skip = int(self._frame_skip)
        self.dt = float(model.opt.timestep) * self.frame_skip
        self._qpos = self.batch.bind("qpos")
        self._qvel = self.batch.bind("qvel")
        self._ctrl = self.batch.bind("ctrl")
        self._nq, self._nv = model.nq, model.nv
        act = self.single_action_space
        self._act_low = torch.as_tensor(np.asarray(act.low), dtype=torch.float64)
        self._act_high = torch.as_tensor(np.asarray(act.high), dtype=torch.float64)
        self._act_dtype = act.dtype
        self._tv_col = family.param_names.index("target_velocity") if "target_velocity" in family.param_names else None

        self.rngs: list[np.random.Generator] = []
        self._seed(seed)  # the constructor's seed seeds the first reset, as a BatchedSim's
        row = self._default_row()
        self._values = np.tile(row, (n, 1))  # float64 values each simulation's model holds
        self.params = self._to_device(self._values)
        self.next_params = self.params.clone()
        self.elapsed = np.zeros(n, dtype=np.int64)
        # Env i runs on models[i]: at first one shared model at the default values; an env
        # gets a copy of its own the first time its values are set (model quantities only).
        self.models: list[Any] = []
        self._pool: list[Any] = []  # models of predict()'s distinct values
        self._shared = None
        if self._resolved:
            shared = copy.copy(model)
            self._write(shared, row[None])
            self.models = [shared] * n
            self._shared = shared
            self.batch.set_models(self.models)
        self.batch.reset()

    # ---- set-up ---------------------------------------------------------------------
    def _check_family(self, base: Any) -> None:
        fam = self.family
        allowed = TASK_ATTRIBUTES.get(self.task, ())
        for p in fam.params:
            if p.mujoco is None and p.name not in allowed:
                extra = f" and {', '.join(allowed)}" if allowed else ""
                raise FamilyError(f"batched mujoco cannot vary attribute '{p.name}' of {fam.env_id}; it varies "
                                  f"MuJoCo model quantities (params.<p>.mujoco){extra}; omit 'batched' to use "
                                  "the gymnasium backend")
        if fam.derived:
            name = next(iter(fam.derived))
            raise FamilyError(f"batched mujoco cannot derive '{name}': it reads the env's settings once; omit "
                              "'batched' to use the gymnasium backend")

    def _read_task(self, base: Any) -> None:
        """Gymnasium's settings of the task, as ``env_kwargs`` and ``fixed`` left them."""
        self._frame_skip = base.frame_skip
        self._w_forward = float(base._forward_reward_weight)
        self._w_ctrl = float(base._ctrl_cost_weight)
        self._noise = float(base._reset_noise_scale)
        self._skip = int(bool(base._exclude_current_positions_from_observation))
        self._init_qpos = np.array(base.init_qpos, dtype=np.float64)
        self._init_qvel = np.array(base.init_qvel, dtype=np.float64)
        self._target = float(getattr(base, "target_velocity", 0.0))
        if self.task in ("hopper", "walker"):
            self._w_healthy = float(base._healthy_reward)
            self._terminate = bool(base._terminate_when_unhealthy)
            self._z_range = tuple(float(x) for x in base._healthy_z_range)
            self._angle_range = tuple(float(x) for x in base._healthy_angle_range)
            self._state_range = (tuple(float(x) for x in base._healthy_state_range) if self.task == "hopper"
                                 else None)

    def _default_row(self) -> np.ndarray:
        """Values every env starts with: 1 for a scale, the env's own target velocity, or
        the first interpolation point when those are outside the family's bounds."""
        fam = self.family
        row = []
        for p in fam.params:
            if p.mujoco is not None:
                m = p.mujoco
                orig = {"gravity": -float(self.model.opt.gravity[2])}.get(m.quantity) if m.mode == "value" else 1.0
                row.append(orig if orig is not None else float("nan"))
            else:
                row.append(self._target)
        vals = torch.tensor(row, dtype=torch.float64)
        try:
            fam.validate(vals)
        except FamilyError:
            vals = fam.heldout_values("interpolation")[0]
        if not bool(torch.isfinite(vals).all()):
            vals = fam.heldout_values("interpolation")[0]
        return vals.numpy().copy()

    def _seed(self, seed: int | None) -> None:
        """Env ``i``'s generator as ``gymnasium.vector``'s ``reset(seed=seed)`` seeds sub-env ``i``."""
        from gymnasium.utils import seeding

        self.rngs = [seeding.np_random(None if seed is None else int(seed) + i)[0] for i in range(self.num_envs)]

    # ---- helpers ---------------------------------------------------------------------
    def _to_device(self, x: np.ndarray) -> torch.Tensor:
        return torch.tensor(x, dtype=self.dtype, device=self.device)

    def _as_rows(self, values: Any) -> np.ndarray:
        v = torch.as_tensor(values).detach().to("cpu", torch.float64)
        p = self.family.num_params
        if v.ndim == 1 and v.numel() == p:
            v = v.expand(self.num_envs, p)
        if v.numel() != self.num_envs * p:
            raise FamilyError(f"expected parameter values of shape [{self.num_envs}, {p}] "
                              f"({', '.join(self.param_names)}); got {tuple(v.shape)}")
        return v.reshape(self.num_envs, p).numpy().copy()

    def _set_params(self, ids: np.ndarray, rows: np.ndarray) -> None:
        """Simulations ``ids`` take the values ``rows`` [len(ids), P]: their model fields
        from the original ones, then their derived constants (``mj_setConst``)."""
        if len(ids) == 0:
            return
        self.family.validate(torch.from_numpy(rows))
        self._values[ids] = rows
        if not self._resolved:
            return
        for k, i in enumerate(ids):
            if self.models[i] is self._shared:
                self.models[i] = copy.copy(self.model)
            self._write(self.models[i], rows[k:k + 1])
        self.batch.set_models(self.models)  # the batch reads the models as they are now

    def _write(self, model: Any, row: np.ndarray) -> None:
        """``model`` := the compiled model with the model quantities of ``row`` [1, P]."""
        new = field_values(self._original, self._resolved, row[:, self._mj_cols])
        set_model(model, self._scratch, {f: v[0] for f, v in new.items()})

    def _start(self, ids: np.ndarray) -> None:
        """Gymnasium's ``reset`` for envs ``ids``: ``mj_resetData``, then ``reset_model``'s
        noise drawn from each env's generator, then ``mj_forward``."""
        import mujoco

        self.batch.reset(ids, stage=mujoco.mjtStage.mjSTAGE_NONE)
        s = self._noise
        qpos = np.empty((len(ids), self._nq))
        qvel = np.empty((len(ids), self._nv))
        for k, i in enumerate(ids):
            rng = self.rngs[i]
            qpos[k] = self._init_qpos + rng.uniform(low=-s, high=s, size=self._nq)
            if self.task.startswith("cheetah"):
                qvel[k] = self._init_qvel + s * rng.standard_normal(self._nv)
            else:
                qvel[k] = self._init_qvel + rng.uniform(low=-s, high=s, size=self._nv)
        self._qpos[ids] = qpos
        self._qvel[ids] = qvel
        self.batch.forward(ids)
        self.elapsed[ids] = 0

    def _observe(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """[B, nq], [B, nv] -> [B, obs_dim] float64: ``_get_obs`` of the v5 task."""
        vel = qvel if self.task.startswith("cheetah") else np.clip(qvel, -10, 10)
        return np.concatenate([qpos[:, self._skip:], vel], axis=1)

    def _healthy(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """[B] bool: Hopper's / Walker2d's ``is_healthy`` (strict inequalities, as v5)."""
        z, angle = qpos[:, 1], qpos[:, 2]
        ok = (self._z_range[0] < z) & (z < self._z_range[1])
        ok &= (self._angle_range[0] < angle) & (angle < self._angle_range[1])
        if self._state_range is not None:
            state = np.concatenate([qpos, qvel], axis=1)[:, 2:]
            lo, hi = self._state_range
            ok &= ((lo < state) & (state < hi)).all(axis=1)
        return ok

    def _reward(self, x_velocity: np.ndarray, action: np.ndarray, values: np.ndarray,
                healthy: np.ndarray | None) -> np.ndarray:
        """[B] float64: ``_get_rew`` of the v5 task (the control cost in the action's float32,
        as Gymnasium computes it from the action it receives)."""
        ctrl_cost = (self._w_ctrl * np.sum(np.square(action), axis=1, dtype=action.dtype)).astype(np.float64)
        if self.task == "cheetah-vel":
            target = values[:, self._tv_col] if self._tv_col is not None else self._target
            return -self._w_forward * np.abs(x_velocity - target) - ctrl_cost
        forward = self._w_forward * x_velocity
        if self.task == "cheetah":
            return forward - ctrl_cost
        return (forward + healthy * self._w_healthy) - ctrl_cost

    def _actions(self, action: torch.Tensor) -> np.ndarray:
        a = torch.as_tensor(action).detach().to("cpu")
        want = (self.num_envs, *self.single_action_space.shape)
        if a.numel() != int(np.prod(want)):
            raise ValueError(f"expected actions of shape {list(want)}, got {tuple(a.shape)}")
        x = clip_action(a.to(torch.float64).reshape(want), self._act_low, self._act_high).numpy()
        return x.astype(self._act_dtype, copy=False)

    # ---- VecEnv ---------------------------------------------------------------------
    def reset(self, params: torch.Tensor | None = None, seed: int | None = None) -> torch.Tensor:
        """Reset every env (optionally to new ``params`` [N, P]); ``seed`` seeds env ``i``'s
        reset noise with ``seed + i`` (later resets continue those streams)."""
        if seed is not None:
            self._seed(seed)
        ids = np.arange(self.num_envs)
        if params is not None:
            rows = self._as_rows(params)
            self._set_params(ids, rows)
            self.params = self._to_device(rows)
            self.next_params = self.params.clone()
        self._start(ids)
        return self.observation()

    def step(self, action: torch.Tensor) -> StepOut:
        a = self._actions(action)
        x_before = self._qpos[:, 0].copy()
        self._ctrl[:] = a
        self.batch.step(nstep=self.frame_skip)
        qpos, qvel = self._qpos, self._qvel
        x_velocity = (qpos[:, 0] - x_before) / self.dt
        obs = self._observe(qpos, qvel)
        healthy = self._healthy(qpos, qvel) if self.task in ("hopper", "walker") else None
        reward = self._reward(x_velocity, a, self._values, healthy)
        if healthy is not None and self._terminate:
            terminated = ~healthy
        else:
            terminated = np.zeros(self.num_envs, dtype=bool)
        self.elapsed += 1
        truncated = self.elapsed >= self.max_episode_steps
        done = np.flatnonzero(terminated | truncated)
        final = obs
        if len(done):
            final = obs.copy()
            nxt = self._as_rows(self.next_params)[done]
            self._set_params(done, nxt)
            self._start(done)
            obs[done] = self._observe(qpos[done], qvel[done])
            self.params = self.params.clone()
            self.params[torch.from_numpy(done).to(self.device)] = self._to_device(nxt)
        return StepOut(self._to_device(obs), torch.tensor(reward, dtype=self.dtype, device=self.device),
                       torch.from_numpy(terminated).to(self.device), torch.from_numpy(truncated).to(self.device),
                       self._to_device(final))

    def observation(self) -> torch.Tensor:
        """[N, obs_dim]: every env's observation of its current state."""
        return self._to_device(self._observe(self._qpos, self._qvel))

    # ---- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything that decides the next steps: every simulation's integration state,
        step counters, current and next values, and each env's reset generator."""
        return {"state": torch.from_numpy(self.batch.state.copy()), "elapsed": torch.from_numpy(self.elapsed.copy()),
                "params": torch.from_numpy(self._values.copy()), "next_params": self.next_params.cpu(),
                "rngs": [r.bit_generator.state for r in self.rngs]}

    def load_state_dict(self, state: Mapping[str, Any]) -> torch.Tensor:
        """Continue exactly where :meth:`state_dict` was taken; returns the observation."""
        values = state["params"].to(torch.float64).numpy().copy()
        self._set_params(np.arange(self.num_envs), values)
        self.params = self._to_device(values)
        self.next_params = state["next_params"].to(self.device, self.dtype)
        self.batch.state[:] = state["state"].numpy()
        self.elapsed = state["elapsed"].numpy().copy()
        self._seed(0)
        for r, s in zip(self.rngs, state["rngs"]):
            r.bit_generator.state = s
        return self.observation()

    # ---- one-step prediction (system identification) ------------------------------------
    def states_from_obs(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[B, obs_dim] -> (qpos [B, nq], qvel [B, nv]); the excluded x position is 0 (the
        dynamics do not depend on it). Hopper's and Walker's velocities are as observed
        (clipped to +-10 where they were faster)."""
        obs = np.asarray(obs, dtype=np.float64)
        k = self._nq - self._skip
        qpos = np.zeros((len(obs), self._nq))
        qpos[:, self._skip:] = obs[:, :k]
        return qpos, obs[:, k:k + self._nv].copy()

    def predict(self, values: np.ndarray, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step from the states the observations ``obs`` [B, D] describe, each under its
        own values [B, P] and action [B, A], on the first ``B <= num_envs`` envs ->
        (next observation [B, D], reward [B]). Those envs' episodes are not continued: their
        state is replaced (their values, counters and generators are kept)."""
        import mujoco

        values = np.asarray(values, dtype=np.float64).reshape(-1, self.family.num_params)
        b = len(values)
        if b > self.num_envs:
            raise ValueError(f"predict: {b} rows for {self.num_envs} envs")
        self.family.validate(torch.from_numpy(values))
        ids = np.arange(b)
        if self._resolved:  # one model per distinct row of values, shared by its envs
            rows, inverse = np.unique(values, axis=0, return_inverse=True)
            while len(self._pool) < len(rows):
                self._pool.append(copy.copy(self.model))
            for k, row in enumerate(rows):
                self._write(self._pool[k], row[None])
            self.batch.set_models([self._pool[k] for k in inverse.reshape(-1)] + self.models[b:])
        self.batch.reset(ids, stage=mujoco.mjtStage.mjSTAGE_NONE)
        qpos, qvel = self.states_from_obs(obs)
        x_before = qpos[:, 0].copy()
        self._qpos[:b], self._qvel[:b] = qpos, qvel
        self.batch.forward(ids)
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(b, -1), self._act_low.numpy(),
                    self._act_high.numpy()).astype(self._act_dtype)
        self._ctrl[:b] = a
        self.batch.step(ids, nstep=self.frame_skip)
        qpos, qvel = self._qpos[:b], self._qvel[:b]
        x_velocity = (qpos[:, 0] - x_before) / self.dt
        healthy = self._healthy(qpos, qvel) if self.task in ("hopper", "walker") else None
        out = self._observe(qpos, qvel), self._reward(x_velocity, a, values, healthy)
        if self._resolved:
            self.batch.set_models(self.models)
        return out

    def close(self) -> None:
        self.batch = None  # type: ignore[assignment]
