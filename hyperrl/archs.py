"""Policy architectures: how a variant's context enters its policy (``model.arch``).

Every architecture is an *actor*: a module mapping contexts ``[B, C]`` to one dict of
per-variant weights keyed like the target MLP's state dict (``"0.weight" [B, h1, D]``,
``"0.bias" [B, h1]``, ...), applied by the one pure function
:func:`hyperrl.hypernet.functional_mlp`. The trainer, evaluation and adaptation therefore
treat every architecture alike, and a comparison between them measures the architecture
and nothing else (same PPO, same simulators, same critic). Weights that do not depend on
the context are the module's own parameters ``expand``-ed over the batch (no copies).

* ``hyper``: a :class:`~hyperrl.hypernet.HyperNetwork` generates every weight (Beck et al.,
  "Hypernetworks in Meta-Reinforcement Learning", CoRL 2022; HyperZero, AAAI 2023).
* ``concat``: one MLP on ``[observation, context]``. Its first layer
  ``W [h1, D + C]`` acts as ``W_o o + (W_c c + b)``, so it is the target MLP whose
  first-layer bias is ``W_c c + b``: the same function and the same gradients.
* ``blind``: one MLP on the observation only (domain randomisation): every variant gets
  the same weights.
* ``cgate``: cGate (Benjamins et al., "Contextualize Me -- The Case for Context in
  Reinforcement Learning", TMLR 2023): observation features ``phi(o)`` (the MLP's hidden
  layers) multiplied element-wise by context features ``psi(c)`` (a context MLP) before the
  output layer. ``W (phi * psi) + b = (W diag(psi)) phi + b``: the generated output weight
  is ``W * psi[None, :]``.
* ``adapter``: Decision Adapter (Beukman et al., "Dynamics Generalisation in Reinforcement
  Learning via Adaptive Context-Aware Policies", NeurIPS 2023): a shared MLP with a
  residual adapter MLP after its first hidden layer, ``h1 <- h1 + A_c(h1)``, whose weights
  a hypernetwork generates from the context (entries ``"adapter.{2j}.weight"`` ...). The
  adapter's output layer starts near zero, so training starts from the shared MLP.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperrl.hypernet import ADAPTER_PREFIX, HIDDEN_GAIN, TRAIN_ACT_MODULES, HyperNetwork

__all__ = ["ARCHS", "SharedMLP", "BlindActor", "ConcatActor", "CGateActor", "AdapterActor", "make_actor"]

ARCHS = ("hyper", "concat", "blind", "cgate", "adapter")


class SharedMLP(nn.Module):
    """A target MLP's weights as ordinary parameters, with the standard (CleanRL) init the
    hypernetwork's ``bias_hyperinit`` also starts from: orthogonal, gain sqrt(2) for hidden
    layers and ``out_gain`` for the last, biases 0."""

    def __init__(self, sizes: Sequence[int], out_gain: float):
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(self.sizes[:-1], self.sizes[1:]))
        for i, lin in enumerate(self.layers):
            nn.init.orthogonal_(lin.weight, out_gain if i == len(self.layers) - 1 else HIDDEN_GAIN)
            nn.init.zeros_(lin.bias)

    def weights(self, batch: int) -> dict[str, Tensor]:
        """The weights for ``batch`` variants: ``{"{2i}.weight": [B, out, in], ...}`` (expanded views)."""
        out: dict[str, Tensor] = {}
        for i, lin in enumerate(self.layers):
            out[f"{2 * i}.weight"] = lin.weight.expand(batch, *lin.weight.shape)
            out[f"{2 * i}.bias"] = lin.bias.expand(batch, *lin.bias.shape)
        return out


class BlindActor(nn.Module):
    """``blind``: one policy for every variant; the context is ignored."""

    def __init__(self, context_dim: int, sizes: Sequence[int], out_gain: float):
        super().__init__()
        self.context_dim = int(context_dim)
        self.mlp = SharedMLP(sizes, out_gain)

    def forward(self, context: Tensor) -> dict[str, Tensor]:
        """context ``[B, C]`` -> weights, each ``[B, ...]``."""
        return self.mlp.weights(context.shape[0])


class ConcatActor(nn.Module):
    """``concat``: an MLP on ``[observation, context]``, its context columns folded into the
    first layer's bias per variant."""

    def __init__(self, context_dim: int, sizes: Sequence[int], out_gain: float):
        super().__init__()
        self.context_dim = int(context_dim)
        self.mlp = SharedMLP(sizes, out_gain)
        h1, d = self.mlp.sizes[1], self.mlp.sizes[0]
        # The orthogonal init of the whole [h1, D + C] first layer, split by columns, so the
        # network starts as ``nn.Linear(D + C, h1)`` with CleanRL's init would.
        full = torch.empty(h1, d + self.context_dim)
        nn.init.orthogonal_(full, HIDDEN_GAIN)
        with torch.no_grad():
            self.mlp.layers[0].weight.copy_(full[:, :d])
        self.context_weight = nn.Parameter(full[:, d:].clone())  # [h1, C]

    def forward(self, context: Tensor) -> dict[str, Tensor]:
        """context ``[B, C]`` -> weights, each ``[B, ...]``; ``"0.bias" = W_c c + b``."""
        w = self.mlp.weights(context.shape[0])
        w["0.bias"] = F.linear(context, self.context_weight, self.mlp.layers[0].bias)  # [B, h1]
        return w


class CGateActor(nn.Module):
    """``cgate``: observation features gated element-wise by context features before the
    output layer, folded into a per-variant output weight ``W * psi(c)[None, :]``."""

    def __init__(self, context_dim: int, sizes: Sequence[int], out_gain: float, activation: str,
                 gate_sizes: Sequence[int]):
        super().__init__()
        self.context_dim = int(context_dim)
        self.mlp = SharedMLP(sizes, out_gain)
        if len(self.mlp.sizes) < 3:
            raise ValueError("model.arch cgate needs at least one hidden layer (model.hidden_sizes)")
        # psi(c): a feature encoder like phi, the activation after every layer.
        layers: list[nn.Module] = []
        dims = [self.context_dim, *gate_sizes, self.mlp.sizes[-2]]
        for a, b in zip(dims[:-1], dims[1:]):
            lin = nn.Linear(a, b)
            nn.init.orthogonal_(lin.weight, HIDDEN_GAIN)
            nn.init.zeros_(lin.bias)
            layers += [lin, TRAIN_ACT_MODULES[activation]()]
        self.gate = nn.Sequential(*layers)
        self.last = f"{2 * (len(self.mlp.layers) - 1)}.weight"

    def forward(self, context: Tensor) -> dict[str, Tensor]:
        """context ``[B, C]`` -> weights, each ``[B, ...]``; the output weight ``[B, A, h_L]`` gated."""
        w = self.mlp.weights(context.shape[0])
        psi = self.gate(context)  # [B, h_L]
        w[self.last] = w[self.last] * psi.unsqueeze(1)  # [B, A, h_L]
        return w


class AdapterActor(nn.Module):
    """``adapter``: a shared MLP plus a generated residual adapter after its first hidden layer."""

    def __init__(self, context_dim: int, sizes: Sequence[int], out_gain: float, activation: str,
                 adapter_sizes: Sequence[int], hyper_kwargs: Mapping):
        super().__init__()
        self.context_dim = int(context_dim)
        self.mlp = SharedMLP(sizes, out_gain)
        if len(self.mlp.sizes) < 3:
            raise ValueError("model.arch adapter needs at least one hidden layer (model.hidden_sizes)")
        h1 = self.mlp.sizes[1]
        # out_gain 0.01 on the adapter's last layer: A_c(h) ~ 0 at init for every context.
        self.adapter = HyperNetwork(context_dim, [h1, *adapter_sizes, h1], activation=activation,
                                    out_gain=0.01, **hyper_kwargs)

    def forward(self, context: Tensor) -> dict[str, Tensor]:
        """context ``[B, C]`` -> weights, each ``[B, ...]``, with ``"adapter.*"`` entries."""
        w = self.mlp.weights(context.shape[0])
        w.update({ADAPTER_PREFIX + k: v for k, v in self.adapter(context).items()})
        return w


def make_actor(arch: str, context_dim: int, sizes: Sequence[int], activation: str, *,
               embed_sizes: Sequence[int], adapter_sizes: Sequence[int], hyper_kwargs: Mapping,
               extra_shapes: Mapping[str, Sequence[int]] | None = None,
               extra_init: Mapping[str, float] | None = None) -> nn.Module:
    """The actor of ``arch`` for a target MLP ``sizes = [obs_dim, *hidden, act_dim]``.

    ``hyper_kwargs`` go to every :class:`HyperNetwork` (init, chunking, embedding);
    ``extra_shapes`` (a generated log-std) exist for ``hyper`` only.
    """
    out_gain = 0.01  # a near-uniform initial policy (CleanRL's actor init)
    if arch == "hyper":
        return HyperNetwork(context_dim, sizes, activation=activation, out_gain=out_gain,
                            extra_shapes=extra_shapes, extra_init=extra_init, **hyper_kwargs)
    if extra_shapes:
        raise ValueError(f"model.arch {arch} generates no extra entries ({', '.join(extra_shapes)}); "
                         "use model.log_std: learned")
    if arch == "blind":
        return BlindActor(context_dim, sizes, out_gain)
    if arch == "concat":
        return ConcatActor(context_dim, sizes, out_gain)
    if arch == "cgate":
        return CGateActor(context_dim, sizes, out_gain, activation, embed_sizes)
    if arch == "adapter":
        return AdapterActor(context_dim, sizes, out_gain, activation, adapter_sizes, hyper_kwargs)
    raise ValueError(f"unknown model.arch {arch!r}; choose one of {', '.join(ARCHS)}")
