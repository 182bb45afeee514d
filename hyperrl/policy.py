"""One variant's generated policy, usable without the hypernetwork.

:class:`GeneratedPolicy` holds one variant's target-MLP weights: stable-baselines3's
``predict`` (so ``evaluate_policy(policy, env)`` takes it as is), a standalone ``nn.Module``
(:meth:`GeneratedPolicy.to_module`) and TorchScript / ONNX export (:mod:`hyperrl.export`).
Trained runs hand them out (:meth:`hyperrl.hyperrun.HyperRun.policy`)::

    run = hyperrl.load("runs/cartpole-mass/...")
    policy = run.policy({"masspole": 0.7})
    action, _ = policy.predict(obs)
    policy.export_torchscript("masspole-0.7.pt")  # torch.jit.load(...) without hyperrl
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from hyperrl.errors import HyperrlError
from hyperrl.families import Family
from hyperrl.hypernet import ADAPTER_PREFIX, make_target_mlp, mlp_layer_count
from hyperrl.ppo import Categorical, DiagGaussian, clip_action

__all__ = ["GeneratedPolicy", "PolicyModule", "ArgmaxHead", "ClipHead"]


# --------------------------------------------------------------------------------------
# The standalone module: generated MLP + deterministic action head
# --------------------------------------------------------------------------------------
class ArgmaxHead(nn.Module):
    """Logits ``[..., A]`` -> the most likely discrete action ``[...]`` (int64)."""

    def forward(self, out: torch.Tensor) -> torch.Tensor:
        return out.argmax(-1)


class ClipHead(nn.Module):
    """Gaussian mean ``[..., A]`` -> the action clipped to the Box bounds."""

    def __init__(self, low: torch.Tensor, high: torch.Tensor):
        super().__init__()
        self.register_buffer("low", low.clone())
        self.register_buffer("high", high.clone())

    def forward(self, out: torch.Tensor) -> torch.Tensor:
        return clip_action(out, self.low, self.high)


class PolicyModule(nn.Module):
    """One variant's policy as a plain module: ``obs [B, D]`` (or ``[D]``) -> action.

    ``mlp`` is the real ``nn.Sequential`` of :func:`hyperrl.hypernet.make_target_mlp` with
    the generated weights baked in; ``head`` maps its output to the deterministic action
    (argmax for discrete actions, the clipped mean for continuous ones). The observation
    is cast to the weights' dtype first. Scriptable (:func:`torch.jit.script`).
    """

    def __init__(self, mlp: nn.Sequential, head: nn.Module):
        super().__init__()
        self.mlp = mlp
        self.head = head
        ref = next(mlp.parameters())
        self.register_buffer("dtype_ref", torch.zeros(0, dtype=ref.dtype, device=ref.device))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(obs.to(self.dtype_ref.dtype)))


# --------------------------------------------------------------------------------------
# One generated policy
# --------------------------------------------------------------------------------------
class GeneratedPolicy:
    """The generated policy of ONE variant, usable without the hypernetwork.

    ``weights`` holds that variant's target-MLP tensors (``"0.weight" [h1, D]``,
    ``"0.bias"``, ...; no batch dimension). :meth:`predict` follows stable-baselines3:
    a single observation ``[D]`` or a batch ``[B, D]`` in, ``(action, state)`` out as NumPy
    (discrete: int64 of shape ``()`` / ``[B]``; continuous: float32 clipped to the bounds).
    """

    def __init__(
        self,
        weights: Mapping[str, torch.Tensor],
        activation: str,
        action_space: gym.spaces.Space,
        observation_space: gym.spaces.Space | None = None,
        log_std: torch.Tensor | None = None,
        family: Family | None = None,
        values: torch.Tensor | None = None,
        seed: int = 0,
    ):
        if any(k.startswith(ADAPTER_PREFIX) for k in weights):
            raise HyperrlError("a policy with a residual adapter (model.arch adapter) is not a plain MLP: "
                               "it has no standalone GeneratedPolicy or export; evaluate it through its run")
        n = mlp_layer_count(weights)
        self.weights = {f"{2 * i}.{k}": weights[f"{2 * i}.{k}"].detach() for i in range(n) for k in ("weight", "bias")}
        w0 = self.weights["0.weight"]
        if w0.dim() != 2:
            raise HyperrlError(f"GeneratedPolicy holds one variant: '0.weight' must be 2-D, got {tuple(w0.shape)}")
        self.sizes = [int(w0.shape[1])] + [int(self.weights[f"{2 * i}.weight"].shape[0]) for i in range(n)]
        self.activation = activation
        self.action_space = action_space
        self.observation_space = observation_space
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if not self.discrete and not (isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1):
            raise HyperrlError(f"unsupported action space {action_space}")
        self.family = family
        self.values = values
        self.device = w0.device
        self.dtype = w0.dtype
        self.log_std = None if log_std is None else log_std.detach().to(self.device, self.dtype).reshape(-1)
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self._net = self.to_module()

    # ---- properties ----------------------------------------------------------------
    @property
    def obs_dim(self) -> int:
        return self.sizes[0]

    @property
    def act_dim(self) -> int:
        return self.sizes[-1]

    @property
    def params(self) -> dict[str, float] | None:
        """The variant's parameter values by name (when known)."""
        if self.family is None or self.values is None:
            return None
        return self.family.as_dict(self.values)

    def __repr__(self) -> str:
        what = self.params if self.params is not None else "?"
        return f"GeneratedPolicy({what}, mlp {self.sizes}, {self.activation})"

    # ---- module / export ---------------------------------------------------------------
    def to_module(self) -> PolicyModule:
        """A standalone ``nn.Module`` (``obs -> deterministic action``) with the weights baked in."""
        mlp = make_target_mlp(self.sizes, self.activation).to(device=self.device, dtype=self.dtype)
        mlp.load_state_dict({k: v.clone() for k, v in self.weights.items()})
        if self.discrete:
            head: nn.Module = ArgmaxHead()
        else:
            low = torch.as_tensor(self.action_space.low, dtype=self.dtype, device=self.device)
            high = torch.as_tensor(self.action_space.high, dtype=self.dtype, device=self.device)
            head = ClipHead(low, high)
        module = PolicyModule(mlp, head)
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        return module

    def export_torchscript(self, path: str | os.PathLike) -> Path:
        """:func:`hyperrl.export.export_torchscript` of this policy."""
        from hyperrl.export import export_torchscript

        return export_torchscript(self, path)

    def export_onnx(self, path: str | os.PathLike, opset_version: int | None = None) -> Path:
        """:func:`hyperrl.export.export_onnx` of this policy."""
        from hyperrl.export import export_onnx

        return export_onnx(self, path, opset_version)

    # ---- acting ---------------------------------------------------------------------
    def _obs_tensor(self, observation: Any) -> tuple[torch.Tensor, bool]:
        if isinstance(observation, torch.Tensor):
            obs = observation.detach()
        elif isinstance(observation, (dict, tuple)):
            raise ValueError(f"GeneratedPolicy.predict expects an array observation, got {type(observation).__name__}")
        else:
            obs = torch.as_tensor(np.asarray(observation))
        if obs.dim() not in (1, 2) or obs.shape[-1] != self.obs_dim:
            raise ValueError(f"expected an observation of shape [{self.obs_dim}] or a batch "
                             f"[B, {self.obs_dim}], got {tuple(obs.shape)}")
        single = obs.dim() == 1
        return obs.reshape(-1, self.obs_dim).to(device=self.device, dtype=self.dtype), single

    @torch.no_grad()
    def action_tensor(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """obs ``[B, D]`` (weights' dtype/device) -> env actions ``[B]`` / ``[B, A]`` (torch)."""
        out = self._net.mlp(obs)
        if deterministic:
            return self._net.head(out)
        if self.discrete:
            return Categorical(out).sample(self.generator)
        if self.log_std is None:
            raise HyperrlError("this policy has no log-std: only deterministic actions are available")
        return self._net.head(DiagGaussian(out, self.log_std).sample(self.generator))

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """stable-baselines3's ``predict``: ``(action, state)``; ``state`` is passed through
        (the policy is not recurrent) and ``episode_start`` is ignored."""
        obs, single = self._obs_tensor(observation)
        action = self.action_tensor(obs, deterministic).cpu().numpy()
        action = action.astype(np.int64) if self.discrete else action.astype(np.float32)
        if single:
            action = action.reshape(action.shape[1:])  # an array of shape () / [A], as SB3
        return action, state

    def __call__(self, observation: Any, deterministic: bool = True) -> np.ndarray:
        return self.predict(observation, deterministic=deterministic)[0]
