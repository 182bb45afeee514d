"""Loading an adapted run, ``hyperrl.load(RUN_DIR/adapt/<name>)``: the loader that
:data:`hyperrl.runs.LOADERS` names for ``method: adapted``."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import torch

from hyperrl.adapt.config import POLICY_FILE
from hyperrl.adapt.learners import WeightsPolicy, space_bounds
from hyperrl.episodes import ActorFactory
from hyperrl.errors import HyperrlError
from hyperrl.families import Family, load_family
from hyperrl.runs import Values, read_metrics, read_run_info


class AdaptedRun:
    """A policy adapted to ONE variant (``method: adapted``), implementing
    :class:`hyperrl.runs.LoadedRun`.

    :meth:`actor_factory` and :meth:`policy` act with the adapted policy whatever values they
    are asked about (it is a single-variant policy: ``variants`` is ``[[values]]``, so
    ``hyperrl.evaluate`` restricts held-out selections to it). ``policy.pt`` holds the
    adapted weights for every mode, plus the found context (context mode; the policy is
    the frozen hypernetwork there, :meth:`regenerate` re-derives it from the source run) or
    the fine-tuned hypernetwork's state dict (hypernet and sim modes). The policy lives on
    ``device``, where :meth:`actor_factory`, :meth:`policy` and :meth:`regenerate` act unless
    they are given another device.
    """

    method = "adapted"

    def __init__(self, run_dir: str | os.PathLike, info: Mapping[str, Any] | None = None,
                 device: torch.device | str = "cpu"):
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.run_info = dict(info) if info is not None else read_run_info(self.run_dir)
        fam_path = self.run_dir / "family.yaml"
        if not fam_path.is_file():
            raise HyperrlError(f"{self.run_dir} is not an adapted run dir (no family.yaml)")
        self.family: Family = load_family(fam_path)
        try:
            self.values = self.family.values_tensor(self.run_info["values"])
            self.mode = str(self.run_info["mode"])
        except (KeyError, TypeError) as e:
            raise HyperrlError(f"{self.run_dir / 'run.json'} is corrupt: {e}") from None
        self.variants = self.values.reshape(1, -1)
        self.info: dict[str, Any] = read_metrics(self.run_dir)
        self.step = self.info.get("env_steps")
        ppath = self.run_dir / POLICY_FILE
        if not ppath.is_file():
            raise HyperrlError(f"{ppath} is missing")
        try:
            self.payload = torch.load(ppath, map_location="cpu", weights_only=True)
            weights = self.payload["weights"]
            activation = self.payload["activation"]
        except Exception as e:  # noqa: BLE001 - any failure means an unusable file
            raise HyperrlError(f"{ppath} is corrupt: {type(e).__name__}: {e}") from None
        probe = self.family.make_env(self.values)
        try:
            self.observation_space, self.action_space = probe.observation_space, probe.action_space
        finally:
            probe.close()
        discrete = isinstance(self.action_space, gym.spaces.Discrete)
        w = {k: v.unsqueeze(0) for k, v in weights.items()}
        dtype = w["0.weight"].dtype
        low, high = space_bounds(self.action_space, dtype, torch.device("cpu"))
        self.weights_policy = WeightsPolicy(w, self.payload.get("log_std"), activation, discrete, low,
                                            high).to(self.device)

    def __repr__(self) -> str:
        return (f"AdaptedRun({str(self.run_dir)!r}, mode={self.mode!r}, "
                f"values={self.family.as_dict(self.values)})")

    def source_dir(self) -> Path:
        rel = self.run_info.get("source_run")
        if rel is not None and (self.run_dir / rel).is_dir():
            return (self.run_dir / rel).resolve()
        return Path(self.run_info.get("source_run_abs", ""))

    def source_checkpoint(self) -> str:
        """The source run's checkpoint the adaptation started from: the recorded path, or,
        when the run dirs have moved since, the checkpoint of the same name in the source run."""
        recorded = self.payload.get("source_checkpoint")
        if not recorded:
            return "best"
        if Path(recorded).is_file():
            return str(recorded)
        return Path(recorded).stem if Path(recorded).stem in ("best", "latest") else str(recorded)

    def regenerate(self) -> WeightsPolicy:
        """Context / hypernet / sim mode: the policy re-derived from the source run (context
        mode) or the saved hypernetwork (hypernet and sim modes) at the saved context, on the
        run's device."""
        from hyperrl.hyperrun import HyperRun

        ctx = self.payload.get("context")
        if ctx is None:
            raise HyperrlError(f"{self.run_dir}: a '{self.mode}' adapted run has no context to regenerate from")
        src = HyperRun(self.source_dir(), checkpoint=self.source_checkpoint())
        agent = src.agent_on(self.device)
        if self.mode in ("hypernet", "sim") and self.payload.get("hypernet") is not None:
            agent = copy.deepcopy(agent)
            agent.load_state_dict(self.payload["hypernet"])
        with torch.no_grad():
            w = agent.policy_weights(ctx.reshape(1, -1).to(self.device, src.dtype))
        log_std = agent.log_std_of(w)
        low, high = space_bounds(src.action_space, src.dtype, self.device)
        return WeightsPolicy({k: v for k, v in w.items() if k != "log_std"}, log_std, agent.cfg.activation,
                             agent.discrete, low, high)

    def actor_factory(self, deterministic: bool = True, seed: int = 0,
                      device: torch.device | str | None = None) -> ActorFactory:
        """Actors of the adapted policy on ``device`` (default: the run's)."""
        return self.weights_policy.actor_factory(deterministic, seed, self.device if device is None else device)

    def policy(self, values: Values | None = None, device: torch.device | str | None = None,
               seed: int = 0) -> Any:
        """A :class:`hyperrl.policy.GeneratedPolicy` (SB3's ``predict``) of the adapted policy on
        ``device`` (default: the run's). ``values`` (validated when given) does not change it:
        this is a one-variant policy."""
        from hyperrl.policy import GeneratedPolicy

        if values is not None:
            if isinstance(values, Mapping):
                self.family.values_tensor(values)
            else:
                self.family.validate(torch.as_tensor(values, dtype=torch.float64))
        wp = self.weights_policy.to(self.device if device is None else device)
        return GeneratedPolicy({k: v[0] for k, v in wp.weights.items()}, wp.activation, self.action_space,
                               self.observation_space, log_std=wp.log_std, family=self.family,
                               values=self.values, seed=seed)


def load_adapted_run(run_dir: Path, info: dict[str, Any], device: torch.device | str = "cpu") -> AdaptedRun:
    """The loader :func:`hyperrl.runs.load` calls for ``method: adapted``."""
    return AdaptedRun(run_dir, info, device=device)
