"""Vectorised environments for a family: built-in batched torch simulators, the batched MuJoCo
backend, or gymnasium.vector."""

from __future__ import annotations

import importlib

import torch

from hyperrl.errors import FamilyError
from hyperrl.families import Family
from hyperrl.sim.base import BatchedSim, StepOut, VecEnv

__all__ = ["BATCHED_SIMS", "FAMILY_BACKENDS", "BatchedSim", "StepOut", "VecEnv", "make_vec_env", "batched_sim_class"]

# name used in a family's `batched:` key -> "module:Class"
BATCHED_SIMS = {
    "cartpole": "hyperrl.sim.cartpole:BatchedCartPole",
    "pendulum": "hyperrl.sim.pendulum:BatchedPendulum",
    "acrobot": "hyperrl.sim.acrobot:BatchedAcrobot",
}
# name -> "module:Class" of backends built from the whole family (their own VecEnv, not a
# BatchedSim): MuJoCo's batched stepping
FAMILY_BACKENDS = {"mujoco": "hyperrl.sim.mujoco:MujocoVecEnv"}
BACKENDS = ("auto", "batched", "gymnasium")


def batched_sim_class(name: str) -> type[BatchedSim]:
    if name not in BATCHED_SIMS:
        raise FamilyError(
            f"unknown batched simulator '{name}'; available: {', '.join([*BATCHED_SIMS, *FAMILY_BACKENDS])} "
            "(omit 'batched' to use the generic gymnasium.vector backend)"
        )
    module, cls = BATCHED_SIMS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def make_vec_env(
    family: Family,
    num_envs: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
    backend: str = "auto",
    threads: int = 1,
) -> VecEnv:
    """N envs of ``family``: its batched simulator when it has one (``auto``/``batched``),
    else (or with ``backend='gymnasium'``) gymnasium.vector with per-env parameters.
    ``threads``: worker threads of the batched MuJoCo backend (0: one per CPU)."""
    if backend not in BACKENDS:
        raise FamilyError(f"unknown backend '{backend}'; expected one of: {', '.join(BACKENDS)}")
    if backend == "batched" and family.batched is None:
        raise FamilyError(f"family '{family.name}' has no batched simulator; use backend 'gymnasium'")
    if backend != "gymnasium" and family.batched in FAMILY_BACKENDS:
        module, name = FAMILY_BACKENDS[family.batched].split(":")
        cls = getattr(importlib.import_module(module), name)
        return cls(family, num_envs, device=device, dtype=dtype, seed=seed, threads=threads)
    if backend != "gymnasium" and family.batched is not None:
        cls = batched_sim_class(family.batched)
        return cls(
            num_envs,
            family.param_names,
            device=device,
            dtype=dtype,
            constants=family.constants(),
            max_episode_steps=family.max_episode_steps,
            seed=seed,
            derived=family.derived,
        )
    from hyperrl.sim.generic import GymnasiumVecEnv

    return GymnasiumVecEnv(family, num_envs, device=device, dtype=dtype, seed=seed)
