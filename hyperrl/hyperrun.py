"""A trained hypernetwork run as a policy source (the ``hyperrl`` loader of
:func:`hyperrl.runs.load`).

:class:`HyperRun` rebuilds the :class:`~hyperrl.agent.HyperAgent` of a run dir written by
``python -m hyperrl.train`` (``config.yaml``, ``family.yaml``, ``checkpoints/best.pt`` or
``latest.pt``) and offers

* :meth:`HyperRun.actor_factory` for :func:`hyperrl.episodes.evaluate_values` (the same
  evaluator scores every method),
* :meth:`HyperRun.generate`: the generated weights of M variants (batched dict),
* :meth:`HyperRun.policy`: a :class:`~hyperrl.policy.GeneratedPolicy` holding ONE variant's
  weights (SB3's ``predict``, a standalone module, TorchScript / ONNX export).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import torch

from hyperrl.agent import HyperAgent, act
from hyperrl.checkpoint import CheckpointError, load_checkpoint
from hyperrl.config import load_yaml_config
from hyperrl.errors import HyperrlError, one_line
from hyperrl.episodes import Actor, ActorFactory
from hyperrl.families import Family, load_family
from hyperrl.policy import GeneratedPolicy
from hyperrl.runs import Values, read_metrics, read_run_info
from hyperrl.train_config import TrainConfig

__all__ = ["HyperRun", "load_hyper_run", "CHECKPOINTS"]

CHECKPOINTS = ("best", "latest")


class HyperRun:
    """A ``hyperrl.train`` run dir loaded for inference (the ``hyperrl`` loader).

    Args:
        run_dir: the run folder (``run.json``, ``config.yaml``, ``family.yaml``, ``checkpoints/``).
        info: its ``run.json`` (read when not given).
        checkpoint: ``"best"`` (default: the best held-out score), ``"latest"``, or a path.
        map_location: where the checkpoint is loaded (the agent starts on the CPU; the
            ``device`` arguments of the methods move a copy).

    Raises :class:`HyperrlError` / :class:`CheckpointError` with one line naming the file
    for a missing or corrupt run dir, config, family or checkpoint.
    """

    method = "hyperrl"

    def __init__(
        self,
        run_dir: str | os.PathLike,
        info: Mapping[str, Any] | None = None,
        checkpoint: str | os.PathLike = "best",
        map_location: Any = "cpu",
    ):
        self.run_dir = Path(run_dir)
        self.run_info = dict(info) if info is not None else read_run_info(self.run_dir)
        for name in ("config.yaml", "family.yaml"):
            if not (self.run_dir / name).is_file():
                raise HyperrlError(f"{self.run_dir} is not a hyperrl run dir (no {name})")
        self.config: TrainConfig = load_yaml_config(TrainConfig, self.run_dir / "config.yaml")
        self.family: Family = load_family(self.run_dir / "family.yaml")
        self.checkpoint_path = self._checkpoint_path(checkpoint)
        payload = load_checkpoint(self.checkpoint_path, map_location=map_location)
        self.step = int(payload["step"]) if isinstance(payload.get("step"), (int, float)) else 0
        self.best_score = payload.get("best_score")
        self.info = read_metrics(self.run_dir)

        probe = self.family.make_env(self.family.heldout_values("interpolation")[0])
        try:
            self.observation_space = probe.observation_space
            self.action_space = probe.action_space
        finally:
            probe.close()
        if not isinstance(self.observation_space, gym.spaces.Box) or len(self.observation_space.shape) != 1:
            raise HyperrlError(f"{self.family.env_id}: observation space {self.observation_space} is not a 1-D Box")
        self.dtype = self.config.torch_dtype
        agent = HyperAgent(int(self.observation_space.shape[0]), self.action_space, self.family.context_dim,
                           self.config.model).to(dtype=self.dtype)
        state = payload["hypernet"]
        try:
            if not isinstance(state, Mapping):
                raise TypeError(f"'hypernet' is a {type(state).__name__}, not a state dict")
            agent.load_state_dict(state)
        except (RuntimeError, TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {self.checkpoint_path} does not fit the run's config.yaml / "
                                  f"family.yaml: {one_line(e, 200)}") from None
        agent.eval()
        for p in agent.parameters():
            p.requires_grad_(False)
        self.agent = agent
        self._agents: dict[str, HyperAgent] = {str(torch.device("cpu")): agent}

    def __repr__(self) -> str:
        return (f"HyperRun({str(self.run_dir)!r}, family={self.family.name!r}, "
                f"checkpoint={self.checkpoint_path.name!r}, step={self.step})")

    def _checkpoint_path(self, checkpoint: str | os.PathLike) -> Path:
        if str(checkpoint) in CHECKPOINTS:
            path = self.run_dir / "checkpoints" / f"{checkpoint}.pt"
            if not path.exists():
                other = "latest" if str(checkpoint) == "best" else "best"
                hint = ""
                if (self.run_dir / "checkpoints" / f"{other}.pt").exists():
                    hint = f" (the run has a '{other}' checkpoint: choose it with checkpoint='{other}')"
                raise CheckpointError(f"checkpoint {path} does not exist{hint}")
            return path
        path = Path(checkpoint)
        if path.suffix != ".pt" and not path.exists():
            raise HyperrlError(f"unknown checkpoint {str(checkpoint)!r}; expected one of: "
                               f"{', '.join(CHECKPOINTS)} or the path of a .pt file")
        return path

    # ---- helpers ------------------------------------------------------------------------
    def agent_on(self, device: torch.device | str = "cpu") -> HyperAgent:
        """The agent on ``device`` (a cached copy for devices other than the CPU)."""
        dev = torch.device(device)
        key = str(dev)
        if key not in self._agents:
            self._agents[key] = copy.deepcopy(self.agent).to(dev)
        return self._agents[key]

    def values_2d(self, values: Values) -> torch.Tensor:
        """A mapping ``{name: value}``, ``[P]`` or ``[M, P]`` -> validated ``[M, P]`` float64."""
        fam = self.family
        if isinstance(values, Mapping):
            return fam.values_tensor(values).reshape(1, -1)
        v = torch.as_tensor(values, dtype=torch.float64)
        if v.dim() <= 1:
            return fam.values_tensor(v).reshape(1, -1)
        if v.shape[-1] != fam.num_params:
            raise HyperrlError(f"family '{fam.name}' has {fam.num_params} parameter(s) "
                               f"({', '.join(fam.param_names)}); got values of shape {tuple(v.shape)}")
        v = v.reshape(-1, fam.num_params)
        fam.validate(v)
        return v

    # ---- LoadedRun ------------------------------------------------------------------------
    def actor_factory(self, deterministic: bool = True, seed: int = 0,
                      device: torch.device | str = "cpu") -> ActorFactory:
        """(context ``[B, C]``, values ``[B, P]``) -> actor ``obs [B, D] -> env action``.

        Context and observations are cast to the agent's dtype (a float64 simulator works
        with a float32 agent); actions come back on the observations' device.
        """
        agent = self.agent_on(device)
        dev = next(agent.parameters()).device
        dtype = self.dtype

        def factory(context: torch.Tensor, values: torch.Tensor | None = None) -> Actor:
            with torch.no_grad():
                weights = agent.policy_weights(context.to(device=dev, dtype=dtype))
            gen = torch.Generator(device=dev).manual_seed(int(seed))

            def actor(obs: torch.Tensor) -> torch.Tensor:
                a = act(agent, weights, obs.to(device=dev, dtype=dtype), deterministic, gen)
                return agent.env_action(a).to(obs.device)

            return actor

        return factory

    @torch.no_grad()
    def generate(self, values: Values, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The generated weights of M variants: ``{"0.weight": [M, h1, D], ...}`` (plus
        ``log_std [M, A]`` when the log-std is generated per variant)."""
        v = self.values_2d(values)
        agent = self.agent_on(device)
        dev = next(agent.parameters()).device
        weights = agent.policy_weights(self.family.context(v).to(device=dev, dtype=self.dtype))
        return {k: t.detach() for k, t in weights.items()}

    def policy(self, values: Values, device: torch.device | str = "cpu", seed: int = 0) -> GeneratedPolicy:
        """The :class:`GeneratedPolicy` of one variant (``{name: value}`` or ``[P]``)."""
        v = self.values_2d(values)
        if v.shape[0] != 1:
            raise HyperrlError(f"policy() takes the values of ONE variant; got {v.shape[0]} "
                               "(use generate() for several)")
        weights = self.generate(v, device)
        agent = self.agent_on(device)
        log_std = agent.log_std_of(weights)  # [A] or [1, A]
        return GeneratedPolicy({k: t[0] for k, t in weights.items() if k != "log_std"}, agent.cfg.activation,
                               self.action_space, self.observation_space, log_std=log_std,
                               family=self.family, values=v[0], seed=seed)


def load_hyper_run(run_dir: Path, info: dict[str, Any], checkpoint: str | os.PathLike = "best",
                   map_location: Any = "cpu") -> HyperRun:
    """The loader :func:`hyperrl.runs.load` calls for ``method: hyperrl``."""
    return HyperRun(run_dir, info, checkpoint=checkpoint, map_location=map_location)
