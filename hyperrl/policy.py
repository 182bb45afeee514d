"""A trained hypernetwork run as a policy source: ``hyperrl.load(RUN_DIR)``.

:class:`HyperRun` is the ``hyperrl`` loader of :func:`hyperrl.api.load`. It rebuilds the
:class:`~hyperrl.agent.HyperAgent` of a run dir written by ``python -m hyperrl.train``
(``config.yaml``, ``family.yaml``, ``checkpoints/best.pt`` or ``latest.pt``) and offers

* :meth:`HyperRun.actor_factory` for :func:`hyperrl.evaluation.evaluate_values` (the same
  evaluator scores every method),
* :meth:`HyperRun.generate`: the generated weights of M variants (batched dict),
* :meth:`HyperRun.policy`: a :class:`GeneratedPolicy` holding ONE variant's weights, with
  stable-baselines3's ``predict`` (so ``evaluate_policy(policy, env)`` takes it as is), a
  standalone ``nn.Module`` (:meth:`GeneratedPolicy.to_module`) and TorchScript / ONNX export.

Example::

    run = hyperrl.load("runs/cartpole-mass/...")
    policy = run.policy({"masspole": 0.7})
    action, _ = policy.predict(obs)
    policy.export_torchscript("masspole-0.7.pt")  # torch.jit.load(...) without hyperrl
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import os
import secrets
import warnings
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from hyperrl.agent import HyperAgent, act
from hyperrl.api import LoadedRun, Values, read_run_info, register_loader
from hyperrl.checkpoint import CheckpointError, load_checkpoint
from hyperrl.config import load_yaml_config
from hyperrl.errors import HyperrlError
from hyperrl.evaluation import Actor, ActorFactory
from hyperrl.families import Family, load_family
from hyperrl.hypernet import make_target_mlp, mlp_layer_count
from hyperrl.ppo import Categorical, DiagGaussian
from hyperrl.train_config import TrainConfig

__all__ = ["HyperRun", "GeneratedPolicy", "PolicyModule", "ArgmaxHead", "ClipHead", "load_hyperrl_run"]

CHECKPOINTS = ("best", "latest")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _one_line(text: str, limit: int = 200) -> str:
    s = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _atomic_path_write(path: Path, write: Any) -> Path:
    """``write(tmp_path)`` then rename over ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


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
        return torch.max(torch.min(out, self.high), self.low)


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
        """Save a TorchScript module (``torch.jit.load(path)`` needs only torch): obs ``[B, D]``
        or ``[D]`` float -> action. Written atomically; returns the path."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in newer torch
            scripted = torch.jit.script(self.to_module())
            return _atomic_path_write(Path(path), lambda tmp: torch.jit.save(scripted, str(tmp)))

    def export_onnx(self, path: str | os.PathLike, opset_version: int | None = None) -> Path:
        """Save an ONNX model: input ``obs`` float32 ``[batch, D]`` -> output ``action``
        (int64 ``[batch]`` or float32 ``[batch, A]``). Needs the ``onnx`` package (and
        ``onnxscript`` for torch's current exporter; without it the legacy exporter is used).
        """
        missing = [m for m in ("onnx",) if not _importable(m)]
        if missing:
            raise HyperrlError(f"ONNX export needs the '{missing[0]}' package, which is not installed "
                               f"(pip install {missing[0]} onnxscript)")
        module = self.to_module().to(device="cpu", dtype=torch.float32)
        example = torch.zeros(2, self.obs_dim, dtype=torch.float32)
        names = dict(input_names=["obs"], output_names=["action"])
        has_dynamo_flag = "dynamo" in inspect.signature(torch.onnx.export).parameters

        def write(tmp: Path) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if has_dynamo_flag and _importable("onnxscript"):
                    batch = torch.export.Dim("batch")
                    torch.onnx.export(module, (example,), str(tmp), dynamo=True, verbose=False,
                                      dynamic_shapes={"obs": {0: batch}}, opset_version=opset_version,
                                      external_data=False, **names)
                else:
                    extra = {"dynamo": False} if has_dynamo_flag else {}
                    torch.onnx.export(module, (example,), str(tmp), opset_version=opset_version,
                                      dynamic_axes={"obs": {0: "batch"}, "action": {0: "batch"}},
                                      **names, **extra)

        with contextlib.redirect_stdout(_Null()):  # torch's exporter reports progress on stdout
            return _atomic_path_write(Path(path), write)

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


class _Null:
    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------
def _read_metrics(run_dir: Path) -> dict[str, Any]:
    """``metrics.json`` (absent while a run is still training or after a crash: ``{}``)."""
    path = run_dir / "metrics.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


class HyperRun(LoadedRun):
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
        self.info = _read_metrics(self.run_dir)

        probe = self.family.make_env(self.family.heldout_values("interpolation")[0])
        try:
            self.observation_space = probe.observation_space
            self.action_space = probe.action_space
        finally:
            probe.close()
        if not isinstance(self.observation_space, gym.spaces.Box) or len(self.observation_space.shape) != 1:
            raise HyperrlError(f"{self.family.env_id}: observation space {self.observation_space} is not a 1-D Box")
        self.dtype = _DTYPES[self.config.dtype]
        agent = HyperAgent(int(self.observation_space.shape[0]), self.action_space, self.family.context_dim,
                           self.config.model).to(dtype=self.dtype)
        state = payload["hypernet"]
        try:
            if not isinstance(state, Mapping):
                raise TypeError(f"'hypernet' is a {type(state).__name__}, not a state dict")
            agent.load_state_dict(state)
        except (RuntimeError, TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint {self.checkpoint_path} does not fit the run's config.yaml / "
                                  f"family.yaml: {_one_line(str(e))}") from None
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
        log_std = None
        if not agent.discrete:
            log_std = agent.log_std if agent.log_std is not None else weights.get("log_std", [None])[0]
        return GeneratedPolicy({k: t[0] for k, t in weights.items() if k != "log_std"}, agent.cfg.activation,
                               self.action_space, self.observation_space, log_std=log_std,
                               family=self.family, values=v[0], seed=seed)


def load_hyperrl_run(run_dir: Path, info: dict[str, Any], checkpoint: str | os.PathLike = "best",
                     map_location: Any = "cpu") -> HyperRun:
    """The loader :func:`hyperrl.api.load` calls for ``method: hyperrl``."""
    return HyperRun(run_dir, info, checkpoint=checkpoint, map_location=map_location)


register_loader("hyperrl", load_hyperrl_run)
