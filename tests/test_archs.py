"""model.arch: every architecture's generated weight dict computes exactly the network it
names (checked against a plain per-variant PyTorch module), trains end to end, and the
distractor context dimensions are per-variant noise that never reaches the physics."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch
from torch import nn

from hyperrl.agent import HyperAgent, SlotRows
from hyperrl.archs import ARCHS
from hyperrl.families import distractor_context, load_family
from hyperrl.hypernet import functional_mlp
from hyperrl.train_config import ModelConfig, TrainConfig
from hyperrl.config import ConfigError, apply_overrides

from helpers import train_tiny

D, C, A, B = 4, 3, 2, 5


def _agent(arch: str, **kw) -> HyperAgent:
    torch.manual_seed(0)
    return HyperAgent(D, gym.spaces.Discrete(A), C, ModelConfig(arch=arch, hidden_sizes=(8, 6), **kw)).double()


def _inputs(s: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ctx = torch.rand(B, C, generator=g, dtype=torch.float64) * 2 - 1
    obs = torch.randn(B, s, D, generator=g, dtype=torch.float64)
    return ctx, obs


def _tanh_mlp(layers: list[nn.Linear], x: torch.Tensor) -> torch.Tensor:
    for i, lin in enumerate(layers):
        x = lin(x)
        if i < len(layers) - 1:
            x = torch.tanh(x)
    return x


def test_concat_is_an_mlp_on_observation_and_context():
    agent = _agent("concat")
    ctx, obs = _inputs()
    out = functional_mlp(agent.policy_weights(ctx), obs, "tanh")  # [B, S, A]
    layers = list(agent.actor.mlp.layers)
    first = nn.Linear(D + C, 8).double()
    with torch.no_grad():
        first.weight.copy_(torch.cat([layers[0].weight, agent.actor.context_weight], 1))
        first.bias.copy_(layers[0].bias)
    x = torch.cat([obs, ctx.unsqueeze(1).expand(B, obs.shape[1], C)], -1)
    ref = _tanh_mlp([first, *layers[1:]], x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    # the same gradients as the plain module's
    out.square().sum().backward()
    g_ctx = agent.actor.context_weight.grad.clone()
    agent.zero_grad()
    ref2 = _tanh_mlp([first, *layers[1:]], x)
    ref2.square().sum().backward()
    torch.testing.assert_close(g_ctx, first.weight.grad[:, D:], rtol=0, atol=1e-10)


def test_blind_gives_every_variant_the_same_policy():
    agent = _agent("blind")
    ctx, obs = _inputs()
    w = agent.policy_weights(ctx)
    for v in w.values():
        assert torch.equal(v, v[:1].expand_as(v))
    out = functional_mlp(w, obs, "tanh")
    torch.testing.assert_close(out, _tanh_mlp(list(agent.actor.mlp.layers), obs), rtol=0, atol=1e-12)


def test_cgate_multiplies_observation_features_by_context_features():
    agent = _agent("cgate", embed_sizes=(5,))
    ctx, obs = _inputs()
    out = functional_mlp(agent.policy_weights(ctx), obs, "tanh")
    layers = list(agent.actor.mlp.layers)
    phi = torch.tanh(layers[1](torch.tanh(layers[0](obs))))  # [B, S, 6]
    psi = agent.actor.gate(ctx)  # [B, 6]
    ref = layers[2](phi * psi.unsqueeze(1))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    # the gate depends on the context; the features do not
    assert not torch.allclose(psi[0], psi[1])


def test_adapter_is_a_residual_generated_mlp_after_the_first_hidden_layer():
    agent = _agent("adapter", adapter_sizes=(4,))
    ctx, obs = _inputs()
    w = agent.policy_weights(ctx)
    out = functional_mlp(w, obs, "tanh")
    layers = list(agent.actor.mlp.layers)
    for b in range(B):  # one variant at a time, with real modules
        a1, a2 = nn.Linear(8, 4).double(), nn.Linear(4, 8).double()
        with torch.no_grad():
            a1.weight.copy_(w["adapter.0.weight"][b]); a1.bias.copy_(w["adapter.0.bias"][b])
            a2.weight.copy_(w["adapter.2.weight"][b]); a2.bias.copy_(w["adapter.2.bias"][b])
        h = torch.tanh(layers[0](obs[b]))
        h = h + a2(torch.tanh(a1(h)))
        ref = layers[2](torch.tanh(layers[1](h)))
        torch.testing.assert_close(out[b], ref, rtol=0, atol=1e-12)
    # the one-input (rollout step) path agrees with the [B, S, D] path
    torch.testing.assert_close(functional_mlp(w, obs[:, 0], "tanh"), out[:, 0], rtol=0, atol=1e-12)
    # the adapter starts small: the network starts close to the shared MLP
    base = _tanh_mlp(layers, obs)
    assert (out - base).abs().max() < 0.05 * base.abs().max() + 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_rows_match_a_per_variant_loop_and_gradients_reach_every_parameter(arch):
    """The rollout/update machinery (slot rows) is the same for every arch."""
    agent = _agent(arch)
    ctx, obs = _inputs(s=3)
    rows = SlotRows.one_each(B, torch.device("cpu"))
    w = agent.policy_weights(ctx)
    dist = agent.dist_rows(w, obs[:, :1], rows)
    for b in range(B):
        wb = agent.policy_weights(ctx[b:b + 1])
        logits = functional_mlp(wb, obs[b:b + 1, 0], "tanh")
        torch.testing.assert_close(dist.logits[b, 0], torch.log_softmax(logits[0], -1), rtol=0, atol=1e-12)
    dist.log_prob(torch.zeros(B, 1, dtype=torch.long)).sum().backward()
    missing = [n for n, p in agent.actor.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_arch_settings_are_checked():
    with pytest.raises(ConfigError, match="'arch': must be one of 'hyper', 'concat', 'blind', 'cgate', 'adapter'"):
        ModelConfig(arch="film")
    with pytest.raises(ValueError, match="log_std generated needs model.arch hyper"):
        ModelConfig(arch="concat", log_std="generated")
    with pytest.raises(ValueError, match="hidden layer"):
        ModelConfig(arch="adapter", hidden_sizes=())
    cfg = apply_overrides(TrainConfig(), ["model.arch=cgate", "env.distractors=20"])
    assert (cfg.model.arch, cfg.env.distractors) == ("cgate", 20)


@pytest.mark.parametrize("arch", ["concat", "blind", "cgate", "adapter"])
def test_every_arch_trains_evaluates_and_reloads(tmp_path, arch):
    import hyperrl

    run = train_tiny(tmp_path / arch, "cartpole-actuator", 2048,
                     [f"model.arch={arch}", "env.num_envs=16", "ppo.num_steps=16", "ppo.num_minibatches=2",
                      "model.hidden_sizes=[16,16]", "model.embed_sizes=[16]", "env.distractors=2",
                      "eval.episodes=1", "progress=false"], eval_interval=1024)
    loaded = hyperrl.load(run)
    assert loaded.family.distractors == 2 and loaded.family.context_dim == 4
    assert loaded.agent.cfg.arch == arch
    ctx = loaded.family.context(loaded.family.heldout_values("extrapolation"))
    w = loaded.agent.policy_weights(ctx.to(loaded.dtype))
    assert w["0.weight"].shape[0] == ctx.shape[0]


# ---- distractors --------------------------------------------------------------------------
def test_distractors_are_uniform_per_variant_noise():
    fam = load_family("cartpole-actuator").with_distractors(6)
    v = fam.sample(20000, torch.Generator().manual_seed(0), dtype=torch.float64)
    ctx = fam.context(v)
    assert ctx.shape == (20000, 2 + 6) and fam.context_dim == 8
    d = ctx[:, 2:]
    assert d.min() > -1 and d.max() < 1
    assert d.mean(0).abs().max() < 0.02 and (d.std(0) - 3 ** -0.5).abs().max() < 0.01
    corr = torch.corrcoef(torch.cat([v.T, ctx[:, 1:2].T, d.T]))[:2, 2:]
    assert corr.abs().max() < 0.05  # unrelated to the variant's value and its context
    # the same variant gets the same draw in float32 and float64; different variants differ
    torch.testing.assert_close(fam.context(v[:10].float())[:, 2:].double(), d[:10].float().double())
    assert torch.unique(d[:, 0]).numel() > 19900
    # the physical part of the context is unchanged
    torch.testing.assert_close(ctx[:, :2], load_family("cartpole-actuator").context(v))


def test_distractor_hash_is_fixed():
    """The draw is part of a run's meaning: a variant's distractors never change between versions."""
    d = distractor_context(torch.tensor([[1.0], [-2.5]], dtype=torch.float64), 3)
    # lowbias32 on the float32 bit pattern, computed independently in pure Python
    def mix(h):
        h ^= h >> 16; h = (h * 0x7FEB352D) & 0xFFFFFFFF; h ^= h >> 15
        h = (h * 0x846CA68B) & 0xFFFFFFFF; return h ^ (h >> 16)
    import struct
    for row, x in enumerate([1.0, -2.5]):
        h = mix(0x9E3779B9 ^ struct.unpack("<I", struct.pack("<f", x))[0])
        for k in range(3):
            u = mix(h ^ mix(k + 1))
            assert d[row, k].item() == pytest.approx((u + 0.5) * 2.0 / 2**32 - 1.0, abs=1e-15)


def test_distractors_do_not_touch_the_physics():
    from hyperrl.sim import make_vec_env

    base = load_family("cartpole-actuator")
    fam = base.with_distractors(20)
    v = base.sample(8, torch.Generator().manual_seed(3), dtype=torch.float64)
    outs = []
    for f in (base, fam):
        env = make_vec_env(f, 8, dtype=torch.float64, seed=0)
        env.reset(params=v, seed=0)
        outs.append([env.step(torch.ones(8, dtype=torch.long)).obs for _ in range(5)])
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_distractors_setting_is_checked_and_written_into_the_run_family(tmp_path):
    from hyperrl.families import FamilyError, family_from_dict
    from hyperrl.yamlio import read_yaml_file

    base = load_family("cartpole-actuator")
    with pytest.raises(FamilyError, match="distractors"):
        base.with_distractors(-1)
    raw = read_yaml_file(base.source)
    raw["distractors"] = "many"
    with pytest.raises(FamilyError, match="distractors: expected an integer"):
        family_from_dict(raw, "x.yaml")
    base.with_distractors(7).save_copy(tmp_path / "family.yaml")
    assert load_family(tmp_path / "family.yaml").distractors == 7
    base.save_copy(tmp_path / "same.yaml")
    assert (tmp_path / "same.yaml").read_text() == open(base.source).read()
