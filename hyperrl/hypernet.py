"""Hypernetwork that generates every weight of a variant's policy/value MLP from its context.

A *target* MLP is ``nn.Sequential(Linear, Act, Linear, Act, ..., Linear)`` with layer
sizes ``[in, h1, ..., out]``. It never exists as a module during training: the
:class:`HyperNetwork` maps a batch of context vectors ``[B, C]`` (one per environment
variant) to a dict of batched tensors keyed exactly like that Sequential's
``state_dict()`` (``"0.weight" [B, h1, in]``, ``"0.bias" [B, h1]``, ``"2.weight"`` ...),
and :func:`functional_mlp` applies them with batched matmuls. PPO's loss therefore
back-propagates through the generated weights into the hypernetwork.

Vocabulary: ``params`` are *environment* parameters; generated tensors are ``weights``.

Embedding: ``e = rmsnorm(trunk(context))`` -- the trunk's output is RMS-normalised (no
learnable gain; ``embed_norm=False`` turns it off), so ``E_k[e_k^2] = 1`` exactly for
*every* context. The variance arguments below then hold per variant rather than on
average, and the generated weights' scale cannot grow with ``|context|`` on
extrapolation contexts (with a ReLU trunk it otherwise grows ~linearly: the
"magnitude proportionality" of Ortiz, Guttag, Dalca, "Magnitude Invariant
Parametrizations Improve Hypernetwork Learning", ICLR 2024).

Initialisation schemes (``init=``):

* ``"bias_hyperinit"`` (default) -- Beck, Jackson, Vuorio, Whiteson, "Hypernetworks in
  Meta-Reinforcement Learning", CoRL 2022. The output heads' *bias* holds a standard
  initialisation of the target net (CleanRL: orthogonal, gain sqrt(2) for hidden layers,
  ``out_gain`` for the last layer -- 0.01 for a policy, 1.0 for a value head -- biases 0)
  and the heads' *weights* are small, so at init every variant gets almost the same,
  properly initialised target net. Beck et al. set those weights to exactly zero; here they
  are drawn so the context-dependent part of every generated tensor has std
  ``context_scale`` times the tensor's init std (default 5%), which keeps a non-zero
  gradient into the embedding trunk from the first update.
* ``"hyperfan_in"`` -- Chang, Flokas, Lipson, "Principled Weight Initialization for
  Hypernetworks", ICLR 2020. Head biases 0; head weights with the hyperfan-in variance so
  a layer of the generated net preserves the variance of its input. Because the target
  layers have (generated) biases, the paper splits the output variance between the two
  terms: ``Var(H) = 1 / (2 * fan_in * d_k * Var(e))`` for a weight head and
  ``Var(G) = 1 / (2 * d_k * Var(e))`` for a bias head, so generated weights have variance
  ``1 / (2 fan_in)``, generated biases ``1 / 2`` and ``fan_in Var(W) + Var(b) = 1``.
  ``d_k`` is the embedding size; ``Var(e)`` is replaced by the embedding's second moment
  ``E[e^2]`` (the right quantity when ``e`` is not zero-mean, e.g. after a ReLU): exactly 1
  with ``embed_norm``, otherwise measured at construction on reference contexts drawn
  from ``U[-1, 1]^C`` (the min-max range :meth:`hyperrl.families.Family.context` maps the
  train distribution to). ``out_gain`` is not applied (the paper's scheme, kept pure for
  ablations), so the initial policy is not near-uniform under this scheme.

Chunked generation (``chunk_size > 0``; von Oswald et al., "Continual learning with
hypernetworks", ICLR 2020): the flat target vector (all MLP tensors, concatenated in
state-dict order, zero-padded to ``K * chunk_size``) is produced ``chunk_size`` numbers at
a time by ONE shared head from ``concat(e, z_j)``, with a learned chunk embedding
``z_j [chunk_embed_dim]`` per chunk. The head is a one-hidden-layer MLP (a purely linear
head of ``concat(e, z_j)`` would add the *same* context-dependent vector to every chunk);
it runs batched over ``[B, K]``. Parameters do not grow with the target size except for
the ``K x chunk_embed_dim`` chunk embeddings. Scheme (fixed, non-learned buffers)::

    w = base + scale * h(e, z_j)          # per element of the flat target vector

``scale`` is the hyperfan-in std of the element's tensor (``1/sqrt(2 fan_in)`` for
weights, ``1/sqrt(2)`` for biases): a fan-in normalisation (as in equalised-learning-rate
parametrisations) so unit-scale head outputs are correctly scaled for every layer (and
an update of the shared head moves every layer's weights in proportion to its scale).
``h(e, z_j) = W2 rmsnorm(act(W1 concat(e, z_j) + b1)) + b2`` with ``b2 = 0`` and
``Var(W2) = rho^2 / H`` so ``E[h^2] = rho^2`` for every chunk and variant at init;
``W1`` is drawn so ``e`` and ``z_j ~ N(0, 1)`` contribute equally to the hidden
pre-activation. ``hyperfan_in``: ``base = 0``, ``rho = 1`` (variance as above).
``bias_hyperinit``: ``base`` = the standard (orthogonal, CleanRL gains, ``out_gain``)
init of the target net, frozen, and ``rho = context_scale``, so every variant starts at
``base`` plus a small context-dependent perturbation (for the tiny ``out_gain`` layer the
perturbation, ``context_scale / sqrt(2 fan_in)``, exceeds the base but stays small).

Extra entries (e.g. ``log_std``) are generated by head rows with zero weights and bias
``extra_init`` (both schemes), so every variant starts exactly at the initial value; in
chunked mode they have their own small linear head (their size does not scale with the
MLP).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyperrl.errors import HyperrlError

__all__ = [
    "ACTIVATIONS",
    "ADAPTER_PREFIX",
    "FastTanh",
    "TRAIN_ACT_MODULES",
    "fast_tanh",
    "INITS",
    "HyperNetwork",
    "functional_mlp",
    "make_target_mlp",
    "mlp_layer_count",
    "split_adapter",
    "target_shapes",
]

class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) = 2 sigmoid(2x) - 1, with backward g (1 - y^2) (ATen's tanh_backward).

    Why: on CPU, ATen's vectorised ``tanh`` costs several times more per element than
    ``sigmoid`` (benchmarks/README.md, training throughput profile); the identity is exact
    up to float rounding (max |error| 1.8e-7 in float32, 3e-16 in float64, checked in
    tests/test_agent.py).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        y = torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        # ATen's tanh_backward kernel (g * (1 - y^2) in one vectorised pass) is ~2.5x faster
        # on CPU than addcmul(g, g * y, y, value=-1) (two passes, addcmul not vectorised)
        return torch.ops.aten.tanh_backward(grad, y)


def fast_tanh(x: Tensor) -> Tensor:
    """``torch.tanh`` computed through ``sigmoid`` on CPU (faster there); native elsewhere
    (one fused kernel on CUDA beats three)."""
    if x.device.type == "cpu" and x.numel() >= 1024:
        return _SigmoidTanh.apply(x)
    return torch.tanh(x)


class FastTanh(nn.Module):
    """``nn.Tanh`` through :func:`fast_tanh` (same output to ~1e-7; no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return fast_tanh(x)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "tanh": torch.tanh,
    "fast_tanh": fast_tanh,
    "relu": F.relu,
    "elu": F.elu,
    "silu": F.silu,
}
_ACT_MODULES: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "fast_tanh": nn.Tanh,  # exported networks use the standard module
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}
# Modules used inside hyperrl's own networks (critic, embedding trunk); exported target
# networks (make_target_mlp) keep the standard modules. "fast_tanh" is opt-in
# (model.activation): cheaper on CPU, but some long pendulum runs with it have collapsed
# late (benchmarks/README.md), so "tanh" is the default.
TRAIN_ACT_MODULES: dict[str, type[nn.Module]] = {**_ACT_MODULES, "fast_tanh": FastTanh}
INITS = ("bias_hyperinit", "hyperfan_in")

# Gain of the standard (CleanRL) orthogonal init of a target net's hidden layers.
HIDDEN_GAIN = math.sqrt(2.0)
# Number of reference contexts used to measure the embedding's second moment at init.
_CALIB_CONTEXTS = 1024


def _check_activation(name: str, what: str = "activation") -> str:
    if name not in ACTIVATIONS:
        raise HyperrlError(f"unknown {what} {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return name


def _check_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise HyperrlError(f"target sizes must be [in, h1, ..., out] of positive ints, got {list(sizes)}")
    return sizes


def target_shapes(
    sizes: Sequence[int], extra_shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[int, ...]]:
    """Shapes of the target MLP's tensors, keyed like its ``nn.Sequential`` state_dict.

    ``sizes=[in, h1, ..., out]`` -> ``{"0.weight": (h1, in), "0.bias": (h1,), "2.weight":
    ..., }`` (Linear modules sit at even indices, activations at odd ones), followed by
    ``extra_shapes`` (e.g. ``{"log_std": (act_dim,)}``) in their given order.
    """
    sizes = _check_sizes(sizes)
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(len(sizes) - 1):
        shapes[f"{2 * i}.weight"] = (sizes[i + 1], sizes[i])
        shapes[f"{2 * i}.bias"] = (sizes[i + 1],)
    for name, shape in (extra_shapes or {}).items():
        if name in shapes:
            raise HyperrlError(f"extra entry {name!r} collides with a target MLP tensor name")
        shape = tuple(int(s) for s in shape)
        if any(s < 1 for s in shape):
            raise HyperrlError(f"extra entry {name!r} has a bad shape {shape}")
        shapes[name] = shape
    return shapes


def make_target_mlp(sizes: Sequence[int], activation: str = "tanh") -> nn.Sequential:
    """The real ``nn.Sequential`` a generated weight dict corresponds to (export / reference)."""
    sizes = _check_sizes(sizes)
    act = _ACT_MODULES[_check_activation(activation)]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def mlp_layer_count(weights: Mapping[str, Tensor]) -> int:
    """Number of Linear layers in a weight dict (consecutive ``"{2i}.weight"`` keys)."""
    n = 0
    while f"{2 * n}.weight" in weights:
        n += 1
    if n == 0:
        raise HyperrlError("weight dict has no '0.weight' entry")
    return n


ADAPTER_PREFIX = "adapter."


def split_adapter(weights: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a weight dict into the main MLP's entries and the residual adapter's
    (``"adapter.0.weight"`` ... renamed ``"0.weight"`` ...; empty without an adapter)."""
    main = {k: v for k, v in weights.items() if not k.startswith(ADAPTER_PREFIX)}
    adapter = {k[len(ADAPTER_PREFIX):]: v for k, v in weights.items() if k.startswith(ADAPTER_PREFIX)}
    return main, adapter


def functional_mlp(weights: Mapping[str, Tensor], x: Tensor, activation: str) -> Tensor:
    """Apply B generated MLPs to their own inputs in one batched pass (pure function).

    weights: ``"{2i}.weight" [B, out_i, in_i]`` and ``"{2i}.bias" [B, out_i]`` (extra keys,
        e.g. ``log_std``, are ignored). A weight may be an ``expand``-ed shared tensor
        (stride 0 over B). With ``"adapter.{2j}.weight"`` / ``"adapter.{2j}.bias"`` entries
        (``model.arch: adapter``) a residual adapter MLP runs after the first hidden layer:
        ``h1 <- h1 + adapter(h1)`` (Beukman et al., "Dynamics Generalisation in
        Reinforcement Learning via Adaptive Context-Aware Policies", NeurIPS 2023).
    x: ``[B, in]`` (one input per variant) or ``[B, S, in]`` (S inputs per variant, e.g. a
        rollout column of T timesteps).
    Returns ``[B, out]`` or ``[B, S, out]``; the activation follows every layer but the last.
    """
    if ADAPTER_PREFIX + "0.weight" not in weights:  # the common case: no dict rebuilt per call
        return _mlp(weights, x, activation, last_activation=False)
    main, adapter = split_adapter(weights)
    n = mlp_layer_count(main)
    if n < 2:
        raise HyperrlError("an adapter needs a target MLP with at least one hidden layer")
    first = {"0.weight": main["0.weight"], "0.bias": main["0.bias"]}
    h = _mlp(first, x, activation, last_activation=True)  # [B, (S,) h1]
    h = h + _mlp(adapter, h, activation, last_activation=False)
    rest = {f"{2 * (i - 1)}.{kind}": main[f"{2 * i}.{kind}"] for i in range(1, n) for kind in ("weight", "bias")}
    return _mlp(rest, h, activation, last_activation=False)


def _mlp(weights: Mapping[str, Tensor], x: Tensor, activation: str, last_activation: bool) -> Tensor:
    """:func:`functional_mlp` without the adapter; ``last_activation`` also activates the
    last layer's output (the first half of an adapter network)."""
    act = ACTIVATIONS[_check_activation(activation)]
    n = mlp_layer_count(weights)
    if x.dim() == 2:
        # One input per variant: a batched mat-vec as broadcast multiply + sum. On CPU this
        # beats bmm with a width-1 operand (~2x forward and backward, measured at B=1024).
        h = x  # [B, in]
        for i in range(n):
            w = weights[f"{2 * i}.weight"]  # [B, out, in]
            b = weights.get(f"{2 * i}.bias")  # [B, out] or None
            h = (w * h.unsqueeze(1)).sum(-1)  # [B, out]
            if b is not None:
                h = h + b
            if i < n - 1 or last_activation:
                h = act(h)
        return h
    if x.dim() != 3:
        raise HyperrlError(f"functional_mlp input must be [B, in] or [B, S, in], got {tuple(x.shape)}")
    # Activations are kept feature-major, h^T [B, features, S], so each layer is
    # W @ h^T and the gradient w.r.t. W comes out contiguous in W's own [B, out, in]
    # layout (with h @ W^T it would be a transposed copy of every generated weight).
    ht = x.transpose(1, 2)  # [B, in, S] (a view)
    for i in range(n):
        w = weights[f"{2 * i}.weight"]  # [B, out, in]
        b = weights.get(f"{2 * i}.bias")  # [B, out] or None
        if b is None:
            ht = torch.bmm(w, ht)  # [B, out, S]
        else:
            ht = torch.baddbmm(b.unsqueeze(2), w, ht)  # [B, out, 1] + [B, out, in] @ [B, in, S]
        if i < n - 1 or last_activation:
            ht = act(ht)
    return ht.transpose(1, 2)  # [B, S, out] (a view of the [B, out, S] result)


def _orthogonal_flat(shape: tuple[int, int], gain: float) -> Tensor:
    """A CleanRL-style orthogonal init of an ``[out, in]`` weight, flattened."""
    w = torch.empty(shape)
    nn.init.orthogonal_(w, gain=gain)
    return w.reshape(-1)


def _rms_normalise(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``x / rms(x)`` over the last dim (RMSNorm without a gain): mean of squares = 1."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _trunk_gain(activation: str) -> float:
    # He gain for the rectifier family (exact for ReLU, close for ELU/SiLU); 5/3 for tanh.
    return nn.init.calculate_gain("tanh") if activation in ("tanh", "fast_tanh") else math.sqrt(2.0)


class HyperNetwork(nn.Module):
    """Context ``[B, C]`` -> batched weights of B target MLPs (dict keyed like the state_dict).

    Architecture: embedding MLP ``context -> e [B, D]`` (``embed_sizes`` with
    ``embed_activation`` after every layer, then RMS-normalised; ``embed_sizes=()`` uses
    the raw context), then either one linear head per target tensor -- stored fused as one
    ``Linear(D, num_target_weights)`` (``self.head``) whose row blocks are the per-tensor
    heads -- or, with ``chunk_size > 0``, the shared chunk head of the module docstring.
    ``forward`` returns the dict; ``generate_flat`` + ``flat_to_dict`` give the same
    tensors as one flat ``[B, num_target_weights]`` vector and views into it.

    Args:
        context_dim: C, the context vector size.
        target_sizes: ``[in, h1, ..., out]`` of the generated MLP.
        activation: the target MLP's activation (used by :meth:`apply_mlp`).
        embed_sizes / embed_activation: the embedding trunk.
        init: ``"bias_hyperinit"`` or ``"hyperfan_in"`` (see module docstring).
        out_gain: orthogonal gain of the target's last layer under ``bias_hyperinit``.
        extra_shapes: extra generated entries, e.g. ``{"log_std": (act_dim,)}``.
        extra_init: initial value per extra entry (default 0.0).
        chunk_size / chunk_embed_dim: chunked generation (0 = off).
        context_scale: std of the context-dependent part of each generated MLP tensor at
            init, relative to that tensor's init std, under ``bias_hyperinit``.
        embed_norm: RMS-normalise the trunk's output (no learnable gain; ignored when
            ``embed_sizes=()``), so ``E[e^2] = 1`` exactly for every context.
    """

    def __init__(
        self,
        context_dim: int,
        target_sizes: Sequence[int],
        activation: str = "tanh",
        embed_sizes: Sequence[int] = (64, 64),
        embed_activation: str = "relu",
        init: str = "bias_hyperinit",
        out_gain: float = 0.01,
        extra_shapes: Mapping[str, Sequence[int]] | None = None,
        extra_init: Mapping[str, float] | None = None,
        chunk_size: int = 0,
        chunk_embed_dim: int = 16,
        context_scale: float = 0.05,
        embed_norm: bool = True,
    ) -> None:
        super().__init__()
        if int(context_dim) < 1:
            raise HyperrlError(f"context_dim must be >= 1, got {context_dim}")
        if init not in INITS:
            raise HyperrlError(f"unknown hypernetwork init {init!r}; choose one of {', '.join(INITS)}")
        if int(chunk_size) < 0 or int(chunk_embed_dim) < 1:
            raise HyperrlError("chunk_size must be >= 0 and chunk_embed_dim >= 1")
        if any(int(h) < 1 for h in embed_sizes):
            raise HyperrlError(f"embed_sizes must be positive ints, got {list(embed_sizes)}")
        extra_shapes = dict(extra_shapes or {})
        extra_init = dict(extra_init or {})
        unknown = set(extra_init) - set(extra_shapes)
        if unknown:
            raise HyperrlError(f"extra_init names {sorted(unknown)} are not in extra_shapes")

        self.context_dim = int(context_dim)
        self.target_sizes = _check_sizes(target_sizes)
        self.activation = _check_activation(activation)
        self.embed_activation = _check_activation(embed_activation, "embed_activation")
        self.init_scheme = init
        self.out_gain = float(out_gain)
        self.context_scale = float(context_scale)
        self.extra_init = {k: float(extra_init.get(k, 0.0)) for k in extra_shapes}
        self.chunk_size = int(chunk_size)
        self.chunk_embed_dim = int(chunk_embed_dim)

        # name -> shape for the MLP tensors, then the extras; offsets into the flat vector.
        self.mlp_shapes = target_shapes(self.target_sizes)
        self.shapes = target_shapes(self.target_sizes, extra_shapes)
        self.extra_names = tuple(extra_shapes)
        self.layout: dict[str, tuple[int, int, tuple[int, ...]]] = {}  # name -> (offset, numel, shape)
        off = 0
        for name, shape in self.shapes.items():
            n = math.prod(shape)
            self.layout[name] = (off, n, shape)
            off += n
        self._split_sizes = [n for _, n, _ in self.layout.values()]
        self.num_target_weights = off  # all generated numbers, extras included
        self.num_mlp_weights = sum(math.prod(s) for s in self.mlp_shapes.values())
        self.num_extra_weights = self.num_target_weights - self.num_mlp_weights

        # Embedding trunk.
        layers: list[nn.Module] = []
        d = self.context_dim
        for h in embed_sizes:
            layers += [nn.Linear(d, int(h)), TRAIN_ACT_MODULES[self.embed_activation]()]
            d = int(h)
        self.embed = nn.Sequential(*layers)
        self.embed_dim = d
        self.embed_norm = bool(embed_norm) and len(layers) > 0

        if self.chunk_size == 0:
            self.head = nn.Linear(d, self.num_target_weights)  # all per-tensor heads, fused
        else:
            n = self.num_mlp_weights
            self.num_chunks = -(-n // self.chunk_size)
            self.chunk_hidden_dim = int(embed_sizes[-1]) if len(embed_sizes) else 64
            self.chunk_embeddings = nn.Parameter(torch.empty(self.num_chunks, self.chunk_embed_dim))
            self.chunk_hidden = nn.Linear(d + self.chunk_embed_dim, self.chunk_hidden_dim)
            self.chunk_head = nn.Linear(self.chunk_hidden_dim, self.chunk_size)
            self.extra_head = nn.Linear(d, self.num_extra_weights) if self.num_extra_weights else None
            self.register_buffer("base", torch.zeros(n))  # [N_mlp] frozen offset
            self.register_buffer("scale", torch.ones(n))  # [N_mlp] frozen per-element std
        self.reset_parameters()

    # ------------------------------------------------------------------ init
    def _layer_specs(self) -> list[tuple[str, str, int, float]]:
        """(weight name, bias name, fan_in, orthogonal gain) per target layer."""
        n_layers = len(self.target_sizes) - 1
        return [
            (f"{2 * i}.weight", f"{2 * i}.bias", self.target_sizes[i],
             self.out_gain if i == n_layers - 1 else HIDDEN_GAIN)
            for i in range(n_layers)
        ]

    def _tensor_init(self) -> dict[str, tuple[Tensor | float, float]]:
        """name -> (base value: flat tensor or scalar, std of its context-dependent part).

        Non-chunked: base = head bias slice, std sets the head weight rows. In chunked mode
        the MLP entries are handled by :meth:`_chunk_init` instead.
        """
        spec: dict[str, tuple[Tensor | float, float]] = {}
        for wname, bname, fan_in, gain in self._layer_specs():
            shape = self.shapes[wname]
            if self.init_scheme == "bias_hyperinit":
                # Entry std of an orthogonal [out, in] matrix: gain / sqrt(max(out, in)).
                sigma = gain / math.sqrt(max(shape))
                spec[wname] = (_orthogonal_flat(shape, gain), self.context_scale * sigma)
                spec[bname] = (0.0, self.context_scale * sigma)
            else:  # hyperfan_in with generated biases (Chang et al. 2020): half the variance each
                spec[wname] = (0.0, math.sqrt(1.0 / (2.0 * fan_in)))
                spec[bname] = (0.0, math.sqrt(0.5))
        for name in self.extra_names:
            # Zero head weights (Beck et al.'s choice): every variant starts exactly at the
            # initial value; dL/dH = g e^T != 0, so context dependence is still learned.
            spec[name] = (self.extra_init[name], 0.0)
        return spec

    @torch.no_grad()
    def _reference_embeddings(self) -> Tensor:
        """Embeddings ``[n, D]`` of reference contexts ~ U[-1, 1]^C (fixed local seed)."""
        g = torch.Generator().manual_seed(0)
        c = torch.rand(_CALIB_CONTEXTS, self.context_dim, generator=g) * 2.0 - 1.0
        p = next(self.parameters())
        return self._embed(c.to(device=p.device, dtype=p.dtype))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """(Re-)initialise every parameter and buffer per ``init`` (see module docstring)."""
        gain = _trunk_gain(self.embed_activation)
        for m in self.embed:
            if isinstance(m, nn.Linear):
                # He/Kaiming-normal weights; small uniform (PyTorch-default) biases, so the
                # embedding is not positively homogeneous in the context (a context at 0
                # would otherwise give e = 0 and identical generated weights).
                nn.init.normal_(m.weight, 0.0, gain / math.sqrt(m.in_features))
                bound = 1.0 / math.sqrt(m.in_features)
                nn.init.uniform_(m.bias, -bound, bound)
        e = self._reference_embeddings()  # [n, D]
        m2 = float(e.pow(2).mean().clamp_min(1e-8))  # E[e^2] (per feature)
        spec = self._tensor_init()
        D = self.embed_dim

        def fill_head(head: nn.Linear, names: Sequence[str], first: int) -> None:
            for name in names:
                off, n, _ = self.layout[name]
                off -= first
                base, std = spec[name]
                # Context part std: Var(sum_k H_k e_k) = D * Var(H) * E[e^2] = std^2.
                head.weight[off:off + n].normal_(0.0, std / math.sqrt(D * m2))
                if isinstance(base, Tensor):
                    head.bias[off:off + n].copy_(base)
                else:
                    head.bias[off:off + n].fill_(base)

        if self.chunk_size == 0:
            fill_head(self.head, list(self.shapes), 0)
        else:
            self._chunk_init(m2)
            if self.extra_head is not None:
                fill_head(self.extra_head, self.extra_names, self.num_mlp_weights)

    @torch.no_grad()
    def _chunk_init(self, m2_e: float) -> None:
        """Chunk embeddings, shared chunk head, and the frozen ``base`` / ``scale`` buffers."""
        D, Ez, H = self.embed_dim, self.chunk_embed_dim, self.chunk_hidden_dim
        gain = _trunk_gain(self.embed_activation)
        nn.init.normal_(self.chunk_embeddings, 0.0, 1.0)
        # Hidden pre-activation: half its variance from e, half from z_j (z ~ N(0, 1)), so
        # chunks differ from each other as much as they depend on the context.
        w1 = self.chunk_hidden.weight
        w1[:, :D].normal_(0.0, gain / math.sqrt(2.0 * D * m2_e))
        w1[:, D:].normal_(0.0, gain / math.sqrt(2.0 * Ez))
        self.chunk_hidden.bias.zero_()
        # The hidden vector u is RMS-normalised (E_k[u_k^2] = 1 for every variant and chunk),
        # so Var(W2) = rho^2 / H gives E[h^2] = rho^2 exactly -- no calibration needed.
        rho = self.context_scale if self.init_scheme == "bias_hyperinit" else 1.0
        self.chunk_head.weight.normal_(0.0, rho / math.sqrt(H))
        self.chunk_head.bias.zero_()
        base = torch.zeros_like(self.base)
        scale = torch.ones_like(self.scale)
        for wname, bname, fan_in, gain_l in self._layer_specs():
            w_off, w_n, w_shape = self.layout[wname]
            b_off, b_n, _ = self.layout[bname]
            scale[w_off:w_off + w_n] = math.sqrt(1.0 / (2.0 * fan_in))  # hyperfan-in stds
            scale[b_off:b_off + b_n] = math.sqrt(0.5)
            if self.init_scheme == "bias_hyperinit":
                base[w_off:w_off + w_n] = _orthogonal_flat(w_shape, gain_l)
        self.base.copy_(base)
        self.scale.copy_(scale)

    # --------------------------------------------------------------- forward
    def _embed(self, context: Tensor) -> Tensor:
        """context ``[B, C]`` -> embedding ``[B, D]`` (RMS-normalised if ``embed_norm``)."""
        e = self.embed(context)
        return _rms_normalise(e) if self.embed_norm else e

    def _chunk_hidden_act(self, e: Tensor) -> Tensor:
        """e ``[B, D]`` -> ``[B, K, H]`` = rmsnorm(act(W1 concat(e, z_j) + b1)), all chunks."""
        D = self.embed_dim
        w1 = self.chunk_hidden.weight  # [H, D + Ez]
        a = F.linear(e, w1[:, :D], self.chunk_hidden.bias)  # [B, H]  (context part)
        z = F.linear(self.chunk_embeddings, w1[:, D:])  # [K, H]  (chunk part)
        u = ACTIVATIONS[self.embed_activation](a.unsqueeze(1) + z.unsqueeze(0))  # [B, K, H]
        # Normalised so every chunk of every variant feeds the shared output layer a vector
        # of the same norm: the init variance then holds per chunk, not just on average.
        return _rms_normalise(u)

    def _check_context(self, context: Tensor) -> None:
        if context.dim() != 2 or context.shape[1] != self.context_dim:
            raise HyperrlError(
                f"context must be [B, {self.context_dim}], got {tuple(context.shape)}")

    def generate_flat(self, context: Tensor) -> Tensor:
        """context ``[B, C]`` -> flat generated vector ``[B, num_target_weights]``."""
        self._check_context(context)
        e = self._embed(context)  # [B, D]
        if self.chunk_size == 0:
            return self.head(e)  # [B, N]
        h = self.chunk_head(self._chunk_hidden_act(e))  # [B, K, chunk]
        h = h.flatten(1)[:, : self.num_mlp_weights]  # [B, N_mlp] (view; padding dropped)
        mlp = torch.addcmul(self.base, self.scale, h)  # [B, N_mlp]  base + scale * h
        if self.extra_head is None:
            return mlp
        return torch.cat([mlp, self.extra_head(e)], dim=1)  # [B, N]

    def flat_to_dict(self, flat: Tensor) -> dict[str, Tensor]:
        """``[..., num_target_weights]`` -> ``{name: [..., *shape]}`` (views, no copies)."""
        lead = flat.shape[:-1]
        # One split (its backward is a single cat) rather than per-tensor slices, whose
        # backward would zero-fill a full [B, N] gradient per tensor.
        parts = flat.split(self._split_sizes, dim=-1)
        return {name: part.view(*lead, *shape)
                for (name, (_, _, shape)), part in zip(self.layout.items(), parts)}

    def forward(self, context: Tensor) -> dict[str, Tensor]:
        """context ``[B, C]`` -> ``{name: [B, *shape]}`` keyed like :func:`target_shapes`."""
        if self.chunk_size > 0:
            return self.flat_to_dict(self.generate_flat(context))
        self._check_context(context)
        e = self._embed(context)  # [B, D]
        B = e.shape[0]
        # One head per target tensor = a row block of the fused head (views of the
        # parameter). Separate outputs avoid materialising (and, in backward, re-assembling)
        # a [B, N] flat tensor. The blocks come from one ``split``, whose backward is one
        # ``cat`` of the block gradients: a slice per block would zero-fill a whole [N, D]
        # gradient per block and add them up (on CPU ~1/3 of a MuJoCo minibatch step).
        ws = self.head.weight.split(self._split_sizes)  # [n, D] each
        bs = self.head.bias.split(self._split_sizes)  # [n] each
        return {name: F.linear(e, w, b).view(B, *shape)
                for (name, (_, _, shape)), w, b in zip(self.layout.items(), ws, bs)}

    def apply_mlp(self, weights: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """:func:`functional_mlp` with this network's target activation."""
        return functional_mlp(weights, x, self.activation)

    def variant_mlp(self, weights: Mapping[str, Tensor], index: int) -> nn.Sequential:
        """A real ``nn.Sequential`` holding variant ``index``'s generated weights (detached)."""
        net = make_target_mlp(self.target_sizes, self.activation)
        net.load_state_dict({k: weights[k][index].detach() for k in self.mlp_shapes})
        return net.to(weights["0.weight"].device)
