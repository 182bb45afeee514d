"""Policies and learners. A :class:`WeightsPolicy` is one variant's policy as generated-MLP
weights (what every mode ends with and ``policy.pt`` stores); a learner is what the PPO loop
of :mod:`hyperrl.adapt.finetune` trains: the generated weights (``weights`` mode and
``scratch``), a copy of the hypernetwork (``hypernet`` mode) or the ``dr`` baseline's SB3
policy (``dr-finetune``)."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any, Mapping

import gymnasium as gym
import torch
from torch import nn

from hyperrl.adapt.budget import PolicyStep
from hyperrl.adapt.config import AdaptConfig
from hyperrl.episodes import Actor, ActorFactory
from hyperrl.hypernet import functional_mlp
from hyperrl.ppo import Categorical, DiagGaussian, clip_action


def _head(discrete: bool, out: torch.Tensor, log_std: torch.Tensor | None):
    if discrete:
        return Categorical(out)
    assert log_std is not None
    return DiagGaussian(out, log_std)


class _Acting:
    """``env_action`` and ``step_fn`` for anything with ``dist(obs)``, ``discrete`` and the
    action space's bounds ``low`` / ``high`` (None for discrete actions)."""

    discrete: bool
    low: torch.Tensor | None
    high: torch.Tensor | None

    def env_action(self, a: torch.Tensor) -> torch.Tensor:
        return a if self.discrete else clip_action(a, self.low, self.high)

    def step_fn(self, deterministic: bool, gen: torch.Generator | None) -> PolicyStep:
        def step(obs: torch.Tensor):
            with torch.no_grad():
                d = self.dist(obs)  # type: ignore[attr-defined]
                a = d.mode() if deterministic else d.sample(gen)
                return a, self.env_action(a), d.log_prob(a)  # type: ignore[attr-defined]

        return step


class WeightsPolicy(_Acting):
    """One variant's policy as generated-MLP weights (each ``[1, ...]``) plus its log-std."""

    def __init__(self, weights: Mapping[str, torch.Tensor], log_std: torch.Tensor | None, activation: str,
                 discrete: bool, low: torch.Tensor | None = None, high: torch.Tensor | None = None):
        self.weights = {k: v.detach() for k, v in weights.items()}
        self.log_std = None if log_std is None else log_std.detach().reshape(-1)
        self.activation = activation
        self.discrete = discrete
        self.low, self.high = low, high

    def to(self, device: torch.device | str) -> "WeightsPolicy":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return WeightsPolicy({k: v.to(device) for k, v in self.weights.items()}, mv(self.log_std),
                             self.activation, self.discrete, mv(self.low), mv(self.high))

    @property
    def dtype(self) -> torch.dtype:
        return self.weights["0.weight"].dtype

    def dist(self, obs: torch.Tensor):
        out = functional_mlp(self.weights, obs.to(self.dtype).unsqueeze(0), self.activation)[0]
        return _head(self.discrete, out, self.log_std)

    def actor_factory(self, deterministic: bool = True, seed: int = 0,
                      device: torch.device | str = "cpu") -> ActorFactory:
        pol = self.to(device)
        dev = torch.device(device)

        def factory(context: torch.Tensor, values: torch.Tensor | None = None) -> Actor:
            gen = torch.Generator(device=dev).manual_seed(int(seed))

            def actor(obs: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    d = pol.dist(obs.to(dev))
                    a = d.mode() if deterministic else d.sample(gen)
                return pol.env_action(a).to(obs.device)

            return actor

        return factory


def space_bounds(space: gym.spaces.Space, dtype: torch.dtype, device: torch.device):
    if isinstance(space, gym.spaces.Discrete):
        return None, None
    return (torch.as_tensor(space.low, dtype=dtype, device=device),
            torch.as_tensor(space.high, dtype=dtype, device=device))


def generated_policy(source: Any, values: torch.Tensor, device: torch.device | str = "cpu",
                     agent: Any = None) -> WeightsPolicy:
    """The frozen hypernetwork's policy for ``values`` [P] (any values, also extrapolated);
    ``agent`` (default: the run's own) generates it, e.g. a fine-tuned copy."""
    agent = source.agent_on(device) if agent is None else agent
    dev = next(agent.parameters()).device
    ctx = source.family.context(torch.as_tensor(values, dtype=torch.float64).reshape(1, -1)).to(dev, source.dtype)
    with torch.no_grad():
        w = agent.policy_weights(ctx)
    log_std = agent.log_std_of(w)
    low, high = space_bounds(source.action_space, source.dtype, dev)
    return WeightsPolicy({k: v for k, v in w.items() if k != "log_std"}, log_std, agent.cfg.activation,
                         agent.discrete, low, high)


class Learner(_Acting):
    """What the PPO loop needs: a distribution and a value per observation, parameter
    groups with their learning rates, an optional extra loss, and the current policy."""

    dtype: torch.dtype

    def dist(self, obs: torch.Tensor) -> Any: ...

    def value(self, obs: torch.Tensor) -> torch.Tensor: ...

    def param_groups(self) -> list[tuple[list[nn.Parameter], float]]: ...

    def extra_loss(self) -> torch.Tensor | None:
        return None


class ValueAt(nn.Module):
    """The run's critic (a trainable copy) at one fixed context: ``obs [B, D] -> [B]``."""

    def __init__(self, agent: Any, context: torch.Tensor):
        super().__init__()
        self.activation = agent.cfg.activation
        ctx = agent.condition(context.reshape(1, -1)).detach().clone()
        if agent.critic is not None:
            self.mlp: nn.Module | None = copy.deepcopy(agent.critic)
            for p in self.mlp.parameters():
                p.requires_grad_(True)
            self.register_buffer("ctx", ctx)
            self.keys: list[str] = []
            self.w = nn.ParameterList()
        else:
            self.mlp = None
            self.register_buffer("ctx", ctx)
            with torch.no_grad():
                cw = agent.critic_weights(context.reshape(1, -1))
            self.keys = list(cw.keys())
            self.w = nn.ParameterList([nn.Parameter(v.detach().clone()) for v in cw.values()])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.mlp is not None:
            return self.mlp(torch.cat([obs, self.ctx.to(obs.dtype).expand(obs.shape[0], -1)], -1)).squeeze(-1)
        w = dict(zip(self.keys, self.w))
        return functional_mlp(w, obs.unsqueeze(0), self.activation)[0].squeeze(-1)


class WeightsLearner(Learner):
    """``weights`` mode (and ``scratch``): the policy's weights are the parameters."""

    def __init__(self, policy: WeightsPolicy, critic: nn.Module, lr: float, critic_lr: float):
        self.keys = list(policy.weights.keys())
        self.w = [nn.Parameter(v.detach().clone()) for v in policy.weights.values()]
        self.log_std = None if policy.log_std is None else nn.Parameter(policy.log_std.detach().clone())
        self.critic = critic
        self.activation, self.discrete = policy.activation, policy.discrete
        self.low, self.high = policy.low, policy.high
        self.dtype = policy.dtype
        self.lr, self.critic_lr = lr, critic_lr

    def dist(self, obs: torch.Tensor):
        w = dict(zip(self.keys, self.w))
        out = functional_mlp(w, obs.to(self.dtype).unsqueeze(0), self.activation)[0]
        return _head(self.discrete, out, self.log_std)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs.to(self.dtype))

    def param_groups(self):
        actor = self.w + ([self.log_std] if self.log_std is not None else [])
        return [(actor, self.lr), (list(self.critic.parameters()), self.critic_lr)]

    def policy(self) -> WeightsPolicy:
        return WeightsPolicy(dict(zip(self.keys, self.w)), self.log_std, self.activation, self.discrete,
                             self.low, self.high)


class HypernetLearner(Learner):
    """``hypernet`` mode: a copy of the hypernetwork and critic, conditioned on one context,
    regularised toward the pre-trained hypernetwork's outputs on train contexts."""

    def __init__(self, source: Any, context: torch.Tensor, cfg: AdaptConfig, gen: torch.Generator,
                 device: torch.device | str):
        ref = source.agent_on(device)
        dev = next(ref.parameters()).device
        self.agent = copy.deepcopy(ref)
        self.agent.train()
        for p in self.agent.parameters():
            p.requires_grad_(True)
        self.discrete = self.agent.discrete
        self.dtype = source.dtype
        self.context = context.reshape(1, -1).to(dev, self.dtype)
        self.cfg = cfg
        self.gen = gen
        fam = source.family
        pool = fam.context(fam.sample(8 * cfg.reg_contexts, torch.Generator().manual_seed(int(gen.initial_seed())),
                                      dtype=torch.float64)).to(dev, self.dtype)
        with torch.no_grad():
            anchor = ref.policy_weights(pool)
        self.pool = pool
        self.anchor = {k: v.detach() for k, v in anchor.items()}
        self.anchor_scale = {k: v.pow(2).mean().clamp_min(1e-8) for k, v in self.anchor.items()}
        self.low, self.high = space_bounds(source.action_space, self.dtype, dev)

    def _weights(self) -> dict[str, torch.Tensor]:
        return self.agent.policy_weights(self.context)

    def dist(self, obs: torch.Tensor):
        w = self._weights()
        out = functional_mlp(w, obs.to(self.dtype).unsqueeze(0), self.agent.cfg.activation)[0]
        return _head(self.discrete, out, self.agent.log_std_of(w))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        obs = obs.to(self.dtype)
        if self.agent.critic is not None:
            ctx = self.agent.condition(self.context).expand(obs.shape[0], -1)
            return self.agent.critic(torch.cat([obs, ctx], -1)).squeeze(-1)
        cw = self.agent.critic_weights(self.context)
        return functional_mlp(cw, obs.unsqueeze(0), self.agent.cfg.activation)[0].squeeze(-1)

    def extra_loss(self) -> torch.Tensor | None:
        if self.cfg.reg_coef <= 0:
            return None
        idx = torch.randint(self.pool.shape[0], (self.cfg.reg_contexts,), generator=self.gen).to(self.pool.device)
        w = self.agent.policy_weights(self.pool[idx])
        terms = [(w[k] - self.anchor[k][idx]).pow(2).mean() / self.anchor_scale[k] for k in w]
        return self.cfg.reg_coef * torch.stack(terms).mean()

    def regulariser(self) -> float:
        """The full penalty over the whole pool (reporting)."""
        with torch.no_grad():
            w = self.agent.policy_weights(self.pool)
            terms = [(w[k] - self.anchor[k]).pow(2).mean() / self.anchor_scale[k] for k in w]
        return float(torch.stack(terms).mean())

    def param_groups(self):
        return [(self.agent.actor_parameters(), self.cfg.hypernet_lr),
                (self.agent.critic_parameters(), self.cfg.critic_lr)]

    def policy(self) -> WeightsPolicy:
        with torch.no_grad():
            w = self._weights()
        return WeightsPolicy({k: v for k, v in w.items() if k != "log_std"}, self.agent.log_std_of(w),
                             self.agent.cfg.activation, self.discrete, self.low, self.high)


class _SB3Dist:
    """An SB3 distribution with the interface the PPO loop uses (seeded sampling)."""

    def __init__(self, dist: Any, device: torch.device):
        self.d = dist
        self.device = torch.device(device)

    def sample(self, gen: torch.Generator | None = None) -> torch.Tensor:
        seed = int(torch.randint(2**62, (1,), generator=gen, device=gen.device)) if gen is not None else 0
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return self.d.get_actions(deterministic=False)

    def mode(self) -> torch.Tensor:
        return self.d.get_actions(deterministic=True)

    def log_prob(self, a: torch.Tensor) -> torch.Tensor:
        return self.d.log_prob(a)

    def entropy(self) -> torch.Tensor:
        e = self.d.entropy()
        if e is None:
            return torch.zeros(())
        return e


def _clone_sb3_policy(policy: Any) -> Any:
    """A fresh copy of an SB3 policy (``deepcopy`` fails on the tensors its distribution
    keeps from the last forward pass): rebuilt from its constructor arguments."""
    clone = type(policy)(**policy._get_constructor_parameters())
    clone.load_state_dict(policy.state_dict())
    return clone.to(policy.device)


class SB3Learner(Learner):
    """``dr-finetune``: an SB3 ActorCriticPolicy (a copy) fine-tuned with the same loop."""

    def __init__(self, model: Any, lr: float):
        self.policy_module = _clone_sb3_policy(model.policy)
        self.policy_module.set_training_mode(True)
        self.action_space = model.action_space
        self.discrete = isinstance(model.action_space, gym.spaces.Discrete)
        self.dtype = torch.float32
        self.lr = lr
        self.device = model.device
        self.low, self.high = space_bounds(model.action_space, torch.float32, torch.device(model.device))

    def dist(self, obs: torch.Tensor):
        return _SB3Dist(self.policy_module.get_distribution(obs.to(self.device, torch.float32)), self.device)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy_module.predict_values(obs.to(self.device, torch.float32)).squeeze(-1)

    def step_fn(self, deterministic: bool, gen: torch.Generator | None) -> PolicyStep:
        if getattr(self.policy_module, "use_sde", False):
            self.policy_module.reset_noise(1)
        return super().step_fn(deterministic, gen)

    def param_groups(self):
        return [(list(self.policy_module.parameters()), self.lr)]

    def actor_factory(self, deterministic: bool = True, seed: int = 0,
                      device: torch.device | str = "cpu") -> ActorFactory:
        from hyperrl.baselines import sb3_actor

        pol = _clone_sb3_policy(self.policy_module).to(device)
        pol.set_training_mode(False)
        model = SimpleNamespace(policy=pol, device=torch.device(device), action_space=self.action_space)
        return sb3_actor(model, False, deterministic, seed)
