"""Tests for hyperrl.hypernet: generated-weight layout, the batched functional MLP,
gradient flow through generated weights, and the initialisation schemes."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from hyperrl.errors import HyperrlError
from hyperrl.hypernet import (
    HyperNetwork,
    functional_mlp,
    make_target_mlp,
    target_shapes,
)

ACT_MODULES = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU}
SIZES = [4, 64, 64, 2]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def reference_sequential(sizes, activation):
    """Written out independently of the module under test."""
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(ACT_MODULES[activation]())
    return nn.Sequential(*layers)


def loop_reference(weights, x, sizes, activation):
    """Per-variant loop: load each variant's weights into a real nn.Sequential and run it."""
    keys = list(target_shapes(sizes))
    outs = []
    for i in range(x.shape[0]):
        net = reference_sequential(sizes, activation)
        net.load_state_dict({k: weights[k][i].detach() for k in keys})  # strict
        with torch.no_grad():
            outs.append(net(x[i]))
    return torch.stack(outs)


def contexts(n, dim, lo=-1.0, hi=1.0):
    return torch.rand(n, dim) * (hi - lo) + lo


def orthogonal_linear_std(fan_in, fan_out, gain):
    lin = nn.Linear(fan_in, fan_out)
    nn.init.orthogonal_(lin.weight, gain=gain)
    return lin.weight.std().item()


# ---------------------------------------------------------------- layout


@pytest.mark.parametrize("sizes", [[4, 64, 64, 2], [3, 5], [6, 8, 7, 9, 1]])
def test_target_shapes_match_sequential_state_dict(sizes):
    ref = {k: tuple(v.shape) for k, v in reference_sequential(sizes, "tanh").state_dict().items()}
    shapes = target_shapes(sizes)
    assert list(shapes) == list(ref)
    assert shapes == ref
    assert {k: tuple(v.shape) for k, v in make_target_mlp(sizes, "relu").state_dict().items()} == ref
    with_extra = target_shapes(sizes, {"log_std": (sizes[-1],)})
    assert list(with_extra) == list(ref) + ["log_std"]
    assert with_extra["log_std"] == (sizes[-1],)


@pytest.mark.parametrize("chunk_size", [0, 100])
def test_generated_keys_and_shapes(chunk_size):
    hn = HyperNetwork(3, SIZES, chunk_size=chunk_size, extra_shapes={"log_std": (2,)})
    w = hn(contexts(5, 3))
    ref = reference_sequential(SIZES, "tanh").state_dict()
    assert list(w) == list(ref) + ["log_std"]
    for k, v in ref.items():
        assert w[k].shape == (5, *v.shape)
    assert w["log_std"].shape == (5, 2)
    n = sum(v.numel() for v in ref.values()) + 2
    assert hn.num_target_weights == n
    flat = hn.generate_flat(contexts(5, 3))
    assert flat.shape == (5, n)
    # flat_to_dict gives views of the flat vector
    d = hn.flat_to_dict(flat)
    assert d["2.weight"].data_ptr() == flat[:, hn.layout["2.weight"][0]:].data_ptr()


def test_forward_equals_flat_path():
    hn = HyperNetwork(2, SIZES, init="hyperfan_in", extra_shapes={"log_std": (2,)})
    c = contexts(7, 2)
    a = hn(c)
    b = hn.flat_to_dict(hn.generate_flat(c))
    for k in a:
        torch.testing.assert_close(a[k], b[k])


# ------------------------------------------------------ functional MLP


@pytest.mark.parametrize("activation", ["tanh", "relu", "elu", "silu"])
@pytest.mark.parametrize("chunk_size", [0, 97])
def test_functional_mlp_matches_per_variant_loop(activation, chunk_size):
    sizes = [5, 16, 12, 3]
    # hyperfan_in: generated nets differ clearly from variant to variant
    hn = HyperNetwork(2, sizes, activation=activation, init="hyperfan_in", chunk_size=chunk_size,
                      embed_sizes=(32,))
    B, S = 6, 9
    w = hn(contexts(B, 2))
    x2 = torch.randn(B, sizes[0])
    x3 = torch.randn(B, S, sizes[0])
    y2 = functional_mlp(w, x2, activation)
    y3 = hn.apply_mlp(w, x3)
    assert y2.shape == (B, 3) and y3.shape == (B, S, 3)
    torch.testing.assert_close(y2, loop_reference(w, x2, sizes, activation), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y3, loop_reference(w, x3, sizes, activation), atol=1e-5, rtol=1e-5)
    # variants really differ, so the equality is not trivial
    assert (y3[0] - y3[1]).abs().max() > 1e-2
    # the export helper loads the same weights
    net = hn.variant_mlp(w, 4)
    with torch.no_grad():
        torch.testing.assert_close(net(x3[4]), y3[4], atol=1e-5, rtol=1e-5)


def test_functional_mlp_random_weights_and_extra_keys_ignored():
    sizes = [3, 7, 2]
    B = 4
    w = {k: torch.randn(B, *s) for k, s in target_shapes(sizes, {"log_std": (2,)}).items()}
    x = torch.randn(B, 11, 3)
    torch.testing.assert_close(functional_mlp(w, x, "tanh"), loop_reference(w, x, sizes, "tanh"),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(HyperrlError):
        functional_mlp(w, torch.randn(B, 2, 3, 3), "tanh")
    with pytest.raises(HyperrlError):
        functional_mlp(w, x, "sigmoid")


# ------------------------------------------------------------ gradients


@pytest.mark.parametrize("init", ["bias_hyperinit", "hyperfan_in"])
@pytest.mark.parametrize("chunk_size", [0, 128])
def test_gradients_reach_every_hypernet_parameter(init, chunk_size):
    hn = HyperNetwork(3, SIZES, init=init, chunk_size=chunk_size, extra_shapes={"log_std": (2,)})
    c = contexts(16, 3)
    w = hn(c)
    y = functional_mlp(w, torch.randn(16, 5, 4), "tanh")
    loss = (y * torch.randn_like(y)).sum() + (w["log_std"] * torch.randn(16, 2)).sum()
    loss.backward()
    names = [n for n, _ in hn.named_parameters()]
    assert any(n.startswith("embed.0.") for n in names)  # the trunk is included
    for name, p in hn.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
        assert torch.isfinite(p.grad).all(), name


# ------------------------------------------------------- bias_hyperinit


def _layer_sigma(sizes, i, out_gain):
    gain = out_gain if i == len(sizes) - 2 else math.sqrt(2.0)
    return orthogonal_linear_std(sizes[i], sizes[i + 1], gain)


def test_bias_hyperinit_statistics():
    C = 3
    hn = HyperNetwork(C, SIZES, init="bias_hyperinit", out_gain=0.01, extra_shapes={"log_std": (2,)})
    # very different contexts: the corners and centre of [-1, 1]^3 plus extrapolation
    grid = torch.tensor(list(itertools.product([-1.0, 0.0, 1.0], repeat=C)))
    c = torch.cat([grid, 2.0 * grid[:5], contexts(20, C)])
    with torch.no_grad():
        w = hn(c)
    n_layers = len(SIZES) - 1
    for i in range(n_layers):
        ref_std = _layer_sigma(SIZES, i, 0.01)
        W, b = w[f"{2 * i}.weight"], w[f"{2 * i}.bias"]
        # every variant gets (almost) the same net...
        spread = (W - W.mean(0)).std().item()
        assert spread < 0.15 * ref_std, (i, spread, ref_std)
        assert (b - b.mean(0)).std().item() < 0.15 * ref_std
        # ...which is a properly initialised one: per-layer std = orthogonal init's std
        per_variant_std = W.flatten(1).std(1)
        assert ((per_variant_std / ref_std - 1).abs() < 0.1).all(), (i, per_variant_std[:3], ref_std)
        assert b.abs().mean() < 0.1 * ref_std  # biases ~ 0
    assert w["4.weight"].abs().max() < 0.01  # small policy output layer
    # CleanRL orthogonal init makes the hidden weight matrices orthogonal (up to the gain)
    W0 = w["2.weight"][0]
    torch.testing.assert_close(W0 @ W0.T, 2.0 * torch.eye(64), atol=0.3, rtol=0.0)
    assert (w["log_std"] == 0).all()  # extras start exactly at their initial value


def test_bias_hyperinit_value_head_gain():
    hn = HyperNetwork(2, [4, 64, 64, 1], out_gain=1.0)
    with torch.no_grad():
        w = hn(contexts(8, 2))
    ref = orthogonal_linear_std(64, 1, 1.0)
    assert abs(w["4.weight"].flatten(1).std(1).mean().item() / ref - 1) < 0.1


def test_bias_hyperinit_chunked_statistics():
    hn = HyperNetwork(3, SIZES, chunk_size=256, extra_shapes={"log_std": (2,)})
    c = torch.cat([torch.tensor(list(itertools.product([-1.0, 1.0], repeat=3))), contexts(24, 3)])
    with torch.no_grad():
        w = hn(c)
    for i in range(2):  # hidden layers: the frozen orthogonal base dominates
        ref_std = _layer_sigma(SIZES, i, 0.01)
        W = w[f"{2 * i}.weight"]
        assert (W - W.mean(0)).std() < 0.15 * ref_std
        assert ((W.flatten(1).std(1) / ref_std - 1).abs() < 0.1).all()
        assert (w[f"{2 * i}.bias"] - w[f"{2 * i}.bias"].mean(0)).std() < 0.15 * ref_std
        assert w[f"{2 * i}.bias"].abs().mean() < 0.25 * ref_std
    assert w["4.weight"].abs().max() < 0.03  # output layer small
    assert w["4.weight"].std() < 0.01
    assert (w["log_std"] == 0).all()


# ---------------------------------------------------------- hyperfan_in


def _hyperfan_checks(w, sizes, n_ctx):
    """Chang et al. 2020 with generated biases: Var(W) = 1/(2 fan_in), Var(b) = 1/2, so a
    generated layer maps unit-variance inputs to unit-variance pre-activations."""
    for i in range(len(sizes) - 1):
        fan_in = sizes[i]
        W, b = w[f"{2 * i}.weight"], w[f"{2 * i}.bias"]
        var_w = W.pow(2).mean().item()  # head biases are 0, so the mean is 0
        assert 0.7 < var_w * 2 * fan_in < 1.4, (i, var_w, 1 / (2 * fan_in))
        if b.shape[1] >= 32:
            assert 0.6 < b.pow(2).mean().item() * 2 < 1.6, (i, b.pow(2).mean())
        x = torch.randn(n_ctx, 256, fan_in)
        pre = torch.baddbmm(b.unsqueeze(1), x, W.transpose(1, 2))
        if b.shape[1] >= 32:
            assert 0.7 < pre.var().item() < 1.4, (i, pre.var())


def test_hyperfan_in_variance():
    sizes = [8, 128, 128, 64]
    hn = HyperNetwork(3, sizes, init="hyperfan_in")
    with torch.no_grad():
        w = hn(contexts(256, 3))  # average over many contexts
    _hyperfan_checks(w, sizes, 256)


def test_hyperfan_in_variance_chunked():
    sizes = [8, 128, 128, 64]
    hn = HyperNetwork(3, sizes, init="hyperfan_in", chunk_size=512)
    with torch.no_grad():
        w = hn(contexts(256, 3))
    _hyperfan_checks(w, sizes, 256)


def test_hyperfan_in_depends_on_context():
    hn = HyperNetwork(2, SIZES, init="hyperfan_in")
    with torch.no_grad():
        w = hn(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    W = w["2.weight"]
    assert (W[0] - W[1]).std() > 0.3 * W.std()


# -------------------------------------------------------------- chunked


def test_chunked_parameter_count_independent_of_target_size():
    def count(hidden, chunk_size=128):
        hn = HyperNetwork(4, [4, hidden, hidden, 2], chunk_size=chunk_size, chunk_embed_dim=16,
                          extra_shapes={"log_std": (2,)})
        total = sum(p.numel() for p in hn.parameters())
        return total, total - hn.chunk_embeddings.numel(), hn

    small, small_wo, hs = count(64)
    big, big_wo, hb = count(512)
    assert small_wo == big_wo  # only the chunk embeddings grow
    assert hb.num_chunks > hs.num_chunks
    assert big - small == (hb.num_chunks - hs.num_chunks) * 16
    dense_head = (64 + 1) * hb.num_target_weights  # the non-chunked heads alone
    assert big < dense_head / 50


def test_chunked_state_dict_round_trip():
    a = HyperNetwork(2, SIZES, chunk_size=64, extra_shapes={"log_std": (2,)})
    torch.manual_seed(123)
    b = HyperNetwork(2, SIZES, chunk_size=64, extra_shapes={"log_std": (2,)})
    assert "base" in a.state_dict() and "scale" in a.state_dict()
    b.load_state_dict(a.state_dict())
    c = contexts(4, 2)
    for k, v in a(c).items():
        torch.testing.assert_close(b(c)[k], v)


# --------------------------------------------------------------- extras


@pytest.mark.parametrize("init", ["bias_hyperinit", "hyperfan_in"])
@pytest.mark.parametrize("chunk_size", [0, 128])
def test_extra_entries_start_at_their_initial_value(init, chunk_size):
    hn = HyperNetwork(2, SIZES, init=init, chunk_size=chunk_size,
                      extra_shapes={"log_std": (2,), "scale": (3, 2)},
                      extra_init={"log_std": -0.5})
    with torch.no_grad():
        w = hn(contexts(64, 2))
    assert w["log_std"].shape == (64, 2) and w["scale"].shape == (64, 3, 2)
    torch.testing.assert_close(w["log_std"], torch.full((64, 2), -0.5))
    torch.testing.assert_close(w["scale"], torch.zeros(64, 3, 2))  # default initial value 0.0
    # ... yet they can become context dependent: the head rows receive gradient
    w = hn(contexts(8, 2))
    w["log_std"].pow(2).sum().backward()
    head = hn.head if chunk_size == 0 else hn.extra_head
    assert head.weight.grad.abs().sum() > 0


# --------------------------------------------------------------- errors


def test_bad_arguments_raise_hyperrl_error():
    with pytest.raises(HyperrlError):
        HyperNetwork(2, SIZES, activation="gelu")
    with pytest.raises(HyperrlError):
        HyperNetwork(2, SIZES, init="xavier")
    with pytest.raises(HyperrlError):
        HyperNetwork(2, [4])
    with pytest.raises(HyperrlError):
        HyperNetwork(2, SIZES, extra_shapes={"0.weight": (1,)})
    with pytest.raises(HyperrlError):
        HyperNetwork(2, SIZES, extra_init={"log_std": 0.0})
    hn = HyperNetwork(2, SIZES)
    with pytest.raises(HyperrlError):
        hn(torch.zeros(3, 5))


# ------------------------------------------------------ embedding norm


@pytest.mark.parametrize("init", ["bias_hyperinit", "hyperfan_in"])
def test_generated_scale_does_not_grow_on_extrapolation(init):
    """With the RMS-normalised embedding the generated weights' scale is the same for
    contexts far outside the [-1, 1] train range (no magnitude proportionality)."""
    hn = HyperNetwork(2, SIZES, init=init)
    with torch.no_grad():
        near = hn(contexts(128, 2))
        far = hn(contexts(128, 2) * 10.0)
    for k in ("0.weight", "2.weight"):
        ratio = far[k].pow(2).mean() / near[k].pow(2).mean()
        assert 0.7 < ratio < 1.4, (k, ratio)
    if init == "bias_hyperinit":
        W = far["2.weight"]
        assert (W - W.mean(0)).std() < 0.15 * _layer_sigma(SIZES, 1, 0.01)


def test_hyperfan_in_without_embed_norm_uses_measured_second_moment():
    sizes = [8, 128, 128, 64]
    for embed_sizes in [(64, 64), ()]:  # () = the raw context is the embedding
        hn = HyperNetwork(3, sizes, init="hyperfan_in", embed_norm=False, embed_sizes=embed_sizes)
        assert not hn.embed_norm
        with torch.no_grad():
            w = hn(contexts(256, 3))  # the reference distribution U[-1, 1]^C
        _hyperfan_checks(w, sizes, 256)
