"""Tests for hyperrl.agent: slot rows, batched application of generated weights against a
per-variant loop over real ``nn.Sequential`` modules, the HyperAgent's heads and critic."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from hyperrl.agent import HyperAgent, ObsNorm, SlotRows, act, apply_rows, gather_slots
from hyperrl.hypernet import HyperNetwork, make_target_mlp
from hyperrl.ppo import ppo_loss
from hyperrl.train_config import ModelConfig

DTYPE = torch.float64
CARTPOLE_SPACE = gym.spaces.Discrete(2)  # CartPole-v1's action space (obs_dim 4)
PENDULUM_SPACE = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)  # Pendulum-v1's (obs_dim 3)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def slot_pattern(m: int, t: int, k: int, seed: int = 0) -> torch.Tensor:
    """[M, T] non-decreasing slots as a rollout makes them; column 0 never leaves slot 0,
    column 1 visits all K slots, the others are random."""
    g = torch.Generator().manual_seed(seed)
    ends = torch.rand(m, t, generator=g) < 0.3
    slot = torch.cumsum(ends.long(), 1).clamp(max=k - 1)
    slot[0] = 0
    slot[1] = torch.linspace(0, k - 1, t).round().long()
    assert set(slot[1].tolist()) == set(range(k))
    return slot


def loop_outputs(hyper: HyperNetwork, ctx_tab, obs, slot, activation):
    """Reference: each sample through a real nn.Sequential holding its variant's weights."""
    m, t, _ = obs.shape
    out = torch.zeros(m, t, hyper.target_sizes[-1], dtype=obs.dtype)
    for i in range(m):
        for j in range(t):
            w = hyper(ctx_tab[i, slot[i, j]].unsqueeze(0))
            net = make_target_mlp(hyper.target_sizes, activation).to(obs.dtype)
            net.load_state_dict({k: v[0] for k, v in w.items() if k in hyper.mlp_shapes})
            with torch.no_grad():
                out[i, j] = net(obs[i, j])
    return out


def make_hyper(ctx_dim=3, sizes=(5, 8, 8, 3), activation="tanh", **kw):
    return HyperNetwork(ctx_dim, list(sizes), activation=activation, embed_sizes=(16,), **kw).to(DTYPE)


# ---------------------------------------------------------------------------------------
# SlotRows / apply_rows / gather_slots
# ---------------------------------------------------------------------------------------
def test_all_slots_and_used_slots_layout():
    slot = torch.tensor([[0, 0, 0], [0, 1, 2], [1, 1, 1]])
    rows = SlotRows.all_slots(slot, 3)
    assert rows.col.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert rows.slot.tolist() == [0, 1, 2] * 3
    assert rows.sample_row.tolist() == [[0, 0, 0], [3, 4, 5], [7, 7, 7]]
    used = SlotRows.used_slots(slot, 3)
    assert list(zip(used.col.tolist(), used.slot.tolist())) == [(0, 0), (1, 0), (1, 1), (1, 2), (2, 1)]
    assert used.sample_row.tolist() == [[0, 0, 0], [1, 2, 3], [4, 4, 4]]
    # every sample's row holds its own column and slot
    for r in (rows, used):
        assert torch.equal(r.col[r.sample_row], torch.arange(3).unsqueeze(1).expand(3, 3))
        assert torch.equal(r.slot[r.sample_row], slot)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("m,t,k", [(6, 9, 3), (4, 5, 2), (5, 1, 4)])
def test_used_slots_equals_all_slots_and_loop(activation, m, t, k):
    hyper = make_hyper(activation=activation)
    ctx_tab = torch.randn(m, k, 3, dtype=DTYPE)
    obs = torch.randn(m, t, 5, dtype=DTYPE)
    slot = slot_pattern(m, t, k, seed=m * 10 + t) if t > 1 else torch.randint(0, k, (m, 1))
    with torch.no_grad():
        ra = SlotRows.all_slots(slot, k)
        ru = SlotRows.used_slots(slot, k)
        ya = apply_rows(hyper(ctx_tab[ra.col, ra.slot]), obs, ra, activation)
        yu = apply_rows(hyper(ctx_tab[ru.col, ru.slot]), obs, ru, activation)
    assert ya.shape == yu.shape == (m, t, 3)
    assert ru.col.numel() <= m * k
    torch.testing.assert_close(yu, ya, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ya, loop_outputs(hyper, ctx_tab, obs, slot, activation), rtol=1e-10, atol=1e-10)


def test_used_slots_skips_unvisited_slots():
    slot = torch.zeros(4, 6, dtype=torch.long)  # no episode ended anywhere
    rows = SlotRows.used_slots(slot, 3)
    assert rows.col.tolist() == [0, 1, 2, 3] and rows.slot.tolist() == [0, 0, 0, 0]


def test_rollout_step_rows_match_loop():
    """The trainer's per-step rows: all_slots over a zero slot, shifted by the current slot."""
    n, k = 5, 3
    hyper = make_hyper()
    ctx_tab = torch.randn(n, k, 3, dtype=DTYPE)
    all_rows = SlotRows.all_slots(torch.zeros(n, 1, dtype=torch.long), k)
    slot = torch.tensor([0, 2, 1, 0, 2])
    rows = SlotRows(all_rows.col, all_rows.slot, all_rows.sample_row + slot.unsqueeze(1))
    obs = torch.randn(n, 5, dtype=DTYPE)
    with torch.no_grad():
        y = apply_rows(hyper(ctx_tab.view(n * k, -1)), obs.unsqueeze(1), rows, "tanh")
    ref = loop_outputs(hyper, ctx_tab, obs.unsqueeze(1), slot.unsqueeze(1), "tanh")
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)


def test_gather_slots():
    n, k, f, t = 4, 3, 2, 5
    table = torch.randn(n, k, f)
    slot = torch.randint(0, k, (t, n), generator=torch.Generator().manual_seed(3))
    out = gather_slots(table, slot)
    assert out.shape == (t, n, f)
    for i in range(t):
        for j in range(n):
            assert torch.equal(out[i, j], table[j, slot[i, j]])


# ---------------------------------------------------------------------------------------
# HyperAgent
# ---------------------------------------------------------------------------------------
def small_cfg(**kw) -> ModelConfig:
    base = dict(hidden_sizes=(8, 8), embed_sizes=(16,), critic_hidden_sizes=(8,))
    base.update(kw)
    return ModelConfig(**base)


def make_agent(space, obs_dim, ctx_dim=2, **kw) -> HyperAgent:
    return HyperAgent(obs_dim, space, ctx_dim, small_cfg(**kw)).to(DTYPE)


def rollout_like(m, t, k, obs_dim, ctx_dim, seed=0):
    g = torch.Generator().manual_seed(seed)
    ctx_tab = torch.randn(m, k, ctx_dim, generator=g, dtype=DTYPE)
    obs = torch.randn(m, t, obs_dim, generator=g, dtype=DTYPE)
    return ctx_tab, obs, slot_pattern(m, t, k, seed)


AGENT_CASES = [
    ("discrete", CARTPOLE_SPACE, 4, {}),
    ("discrete-chunked", CARTPOLE_SPACE, 4, {"chunk_size": 16}),
    ("gauss-learned", PENDULUM_SPACE, 3, {"log_std": "learned", "log_std_init": -0.5}),
    ("gauss-generated", PENDULUM_SPACE, 3, {"log_std": "generated", "log_std_init": -0.5}),
    ("gauss-generated-chunked", PENDULUM_SPACE, 3, {"log_std": "generated", "chunk_size": 16}),
    ("gauss-2d-generated", gym.spaces.Box(np.array([-1.0, -2.0], np.float32), np.array([1.0, 3.0], np.float32)), 3,
     {"log_std": "generated"}),
]


@pytest.mark.parametrize("name,space,obs_dim,kw", AGENT_CASES, ids=[c[0] for c in AGENT_CASES])
def test_dist_rows_log_probs_match_per_variant_loop(name, space, obs_dim, kw):
    m, t, k, c = 5, 6, 3, 2
    agent = make_agent(space, obs_dim, c, **kw)
    ctx_tab, obs, slot = rollout_like(m, t, k, obs_dim, c)
    rows = SlotRows.used_slots(slot, k)
    with torch.no_grad():
        w = agent.policy_weights(ctx_tab[rows.col, rows.slot])
        dist = agent.dist_rows(w, obs, rows)
        actions = dist.sample(torch.Generator().manual_seed(1))
        lp, ent = dist.log_prob(actions), dist.entropy()
    assert lp.shape == (m, t) and ent.shape == (m, t)
    if agent.discrete:
        assert actions.shape == (m, t)
    else:
        assert actions.shape == (m, t, agent.act_dim)
    sizes = [obs_dim, 8, 8, agent.act_dim]
    for i in range(m):
        for j in range(t):
            wv = agent.policy_weights(ctx_tab[i, slot[i, j]].unsqueeze(0))
            net = make_target_mlp(sizes, "tanh").to(DTYPE)
            net.load_state_dict({key: wv[key][0] for key in net.state_dict()})
            with torch.no_grad():
                out = net(obs[i, j])
            if agent.discrete:
                ref = torch.distributions.Categorical(logits=out)
                ref_lp, ref_ent = ref.log_prob(actions[i, j]), ref.entropy()
            else:
                log_std = agent.log_std if agent.log_std is not None else wv["log_std"][0]
                ref = torch.distributions.Normal(out, log_std.exp())
                ref_lp, ref_ent = ref.log_prob(actions[i, j]).sum(-1), ref.entropy().sum(-1)
            torch.testing.assert_close(lp[i, j], ref_lp.detach(), rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(ent[i, j], ref_ent.detach(), rtol=1e-9, atol=1e-9)


def test_generated_log_std_starts_at_init_and_depends_on_row():
    agent = make_agent(PENDULUM_SPACE, 3, 2, log_std="generated", log_std_init=-0.5)
    assert agent.log_std is None
    w = agent.policy_weights(torch.randn(4, 2, dtype=DTYPE))
    torch.testing.assert_close(w["log_std"], torch.full((4, 1), -0.5, dtype=DTYPE))
    learned = make_agent(PENDULUM_SPACE, 3, 2, log_std="learned", log_std_init=-0.5)
    assert "log_std" not in learned.policy_weights(torch.randn(4, 2, dtype=DTYPE))
    torch.testing.assert_close(learned.log_std.detach(), torch.full((1,), -0.5, dtype=DTYPE))


def test_env_action_clips_to_bounds():
    agent = make_agent(PENDULUM_SPACE, 3)
    a = torch.tensor([[-5.0], [0.5], [3.0], [-2.0]], dtype=DTYPE)
    assert agent.env_action(a).tolist() == [[-2.0], [0.5], [2.0], [-2.0]]
    box = gym.spaces.Box(np.array([-1.0, -2.0], np.float32), np.array([1.0, 3.0], np.float32))
    agent2 = make_agent(box, 3)
    a = torch.tensor([[-9.0, -9.0], [9.0, 9.0], [0.25, 2.5]])
    assert agent2.env_action(a).tolist() == [[-1.0, -2.0], [1.0, 3.0], [0.25, 2.5]]
    assert agent2.env_action(a).dtype == a.dtype
    disc = make_agent(CARTPOLE_SPACE, 4)
    d = torch.tensor([0, 1, 1])
    assert torch.equal(disc.env_action(d), d)


def test_unsupported_action_space():
    with pytest.raises(TypeError):
        HyperAgent(3, gym.spaces.MultiDiscrete([2, 2]), 2, small_cfg())


def test_act_matches_loop():
    agent = make_agent(CARTPOLE_SPACE, 4)
    ctx = torch.randn(6, 2, dtype=DTYPE)
    obs = torch.randn(6, 4, dtype=DTYPE)
    w = agent.policy_weights(ctx)
    a = act(agent, w, obs, deterministic=True)
    for i in range(6):
        net = agent.actor.variant_mlp(w, i).to(DTYPE)
        assert a[i].item() == int(net(obs[i]).argmax())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(act(agent, w, obs, False, g1), act(agent, w, obs, False, g2))


@pytest.mark.parametrize("name,space,obs_dim,kw", AGENT_CASES, ids=[c[0] for c in AGENT_CASES])
def test_ppo_loss_gradients_reach_the_hypernetwork(name, space, obs_dim, kw):
    m, t, k, c = 4, 5, 2, 2
    agent = make_agent(space, obs_dim, c, **kw)
    ctx_tab, obs, slot = rollout_like(m, t, k, obs_dim, c, seed=2)
    ctx_buf = gather_slots(ctx_tab, slot.t()).transpose(0, 1)  # [M, T, C]
    rows = SlotRows.used_slots(slot, k)
    ctx_rows = ctx_tab[rows.col, rows.slot]
    with torch.no_grad():
        d0 = agent.dist_rows(agent.policy_weights(ctx_rows), obs, rows)
        actions = d0.sample(torch.Generator().manual_seed(0))
        old_lp = d0.log_prob(actions)
        old_v = agent.value(obs, ctx_buf)
    # perturb the policy a little so the ratio is not exactly 1
    with torch.no_grad():
        for p in agent.actor.parameters():
            p.add_(0.01 * torch.randn_like(p))
    dist = agent.dist_rows(agent.policy_weights(ctx_rows), obs, rows)
    new_v = agent.value(obs, ctx_buf)
    g = torch.Generator().manual_seed(9)
    adv = torch.randn(m * t, generator=g, dtype=DTYPE)
    ret = torch.randn(m * t, generator=g, dtype=DTYPE)
    lo = ppo_loss(dist.log_prob(actions).reshape(-1), old_lp.reshape(-1), adv, new_v.reshape(-1),
                  old_v.reshape(-1), ret, dist.entropy().reshape(-1), 0.2, 0.5, 0.01)
    agent.zero_grad(set_to_none=True)
    lo.loss.backward()
    for pname, p in agent.actor.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    # the trunk (context embedding) gets gradient only through the generated weights
    assert agent.actor.embed[0].weight.grad.abs().sum() > 0
    for p in agent.critic.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    if agent.log_std is not None:
        assert agent.log_std.grad is not None and agent.log_std.grad.abs().sum() > 0
    elif not agent.discrete:  # generated log-std: its (zero-initialised) head rows learn too
        if agent.actor.chunk_size:
            assert agent.actor.extra_head.weight.grad.abs().sum() > 0
        else:
            off, n, _ = agent.actor.layout["log_std"]
            assert agent.actor.head.weight.grad[off:off + n].abs().sum() > 0
            assert agent.actor.head.bias.grad[off:off + n].abs().sum() > 0


@pytest.mark.parametrize("space,obs_dim", [(CARTPOLE_SPACE, 4), (PENDULUM_SPACE, 3)])
def test_hyper_critic_with_rows(space, obs_dim):
    m, t, k, c = 5, 6, 3, 2
    agent = make_agent(space, obs_dim, c, critic="hyper", critic_hidden_sizes=(8, 8))
    assert agent.critic is None and agent.critic_hyper is not None
    ctx_tab, obs, slot = rollout_like(m, t, k, obs_dim, c, seed=4)
    ctx_buf = gather_slots(ctx_tab, slot.t()).transpose(0, 1)
    rows = SlotRows.used_slots(slot, k)
    cw = agent.critic_weights(ctx_tab[rows.col, rows.slot])
    v = agent.value(obs, ctx_buf, rows, cw)
    assert v.shape == (m, t)
    for i in range(m):
        for j in range(t):
            wv = agent.critic_weights(ctx_tab[i, slot[i, j]].unsqueeze(0))
            net = make_target_mlp([obs_dim, 8, 8, 1], "tanh").to(DTYPE)
            net.load_state_dict({key: val[0] for key, val in wv.items()})
            with torch.no_grad():
                torch.testing.assert_close(v[i, j].detach(), net(obs[i, j])[0], rtol=1e-10, atol=1e-10)
    # the same values through all_slots rows
    ra = SlotRows.all_slots(slot, k)
    va = agent.value(obs, ctx_buf, ra, agent.critic_weights(ctx_tab[ra.col, ra.slot]))
    torch.testing.assert_close(va, v, rtol=1e-12, atol=1e-12)
    # gradients of a value loss reach the critic hypernetwork and not the actor
    agent.zero_grad(set_to_none=True)
    (v - 1.0).pow(2).mean().backward()
    assert agent.critic_hyper.embed[0].weight.grad.abs().sum() > 0
    assert agent.critic_hyper.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in agent.actor.parameters())


def test_mlp_critic_uses_context():
    agent = make_agent(CARTPOLE_SPACE, 4, 2)
    obs = torch.randn(3, 4, 4, dtype=DTYPE)
    ctx = torch.randn(3, 4, 2, dtype=DTYPE)
    v = agent.value(obs, ctx)
    assert v.shape == (3, 4)
    ref = agent.critic(torch.cat([obs, ctx], -1)).squeeze(-1)
    torch.testing.assert_close(v, ref)
    assert not torch.allclose(agent.value(obs, ctx + 1.0), v)


@pytest.mark.parametrize("branch_free", [False, True], ids=["cpu-index", "accelerator-where"])
def test_rollout_weights_track_each_envs_slot(branch_free):
    """RolloutWeights.current always equals the table row of each env's current slot."""
    from hyperrl.agent import RolloutWeights

    n, k = 6, 3
    gen = torch.Generator().manual_seed(0)
    table = {"0.weight": torch.randn(n * k, 4, 3, generator=gen), "0.bias": torch.randn(n * k, 4, generator=gen)}
    rw = RolloutWeights(table, n, k)
    slot = torch.zeros(n, dtype=torch.long)
    for _ in range(5):
        done = torch.rand(n, generator=gen) < 0.5
        slot = torch.where(done, (slot + 1).clamp(max=k - 1), slot)
        rw.advance(done, slot, branch_free=branch_free)
        for key, w in table.items():
            expected = w.view(n, k, *w.shape[1:])[torch.arange(n), slot]
            assert torch.equal(rw.current[key], expected)


# ---- CPU fast paths (training throughput): same numbers as the standard modules ----------
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 3e-7), (torch.float64, 1e-15)])
def test_fast_tanh_matches_torch_tanh_values_and_gradients(dtype, tol):
    from hyperrl.hypernet import fast_tanh

    x = torch.cat([torch.linspace(-30, 30, 4001, dtype=dtype), torch.randn(4000, dtype=dtype)]).requires_grad_()
    y = fast_tanh(x)
    ref = torch.tanh(x.detach())
    assert (y.detach() - ref).abs().max().item() <= tol
    assert y.detach().abs().max().item() <= 1.0  # saturates exactly at +-1, never beyond
    g = torch.randn_like(ref)
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.allclose(gx, g * (1 - ref**2), atol=10 * tol, rtol=0)
    assert torch.isnan(fast_tanh(torch.full((2048,), float("nan"), dtype=dtype))).all()
    xd = torch.randn(2048, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fast_tanh, (xd,))


def test_mlp_critic_output_layer_equals_nn_linear():
    """The critic's width-1 output layer (broadcast multiply) gives nn.Linear's output and grads."""
    agent = make_agent(gym.spaces.Discrete(2), 4, critic="mlp")
    out = agent.critic[-1]
    ref = torch.nn.Linear(out.in_features, 1, dtype=DTYPE)
    ref.load_state_dict(out.state_dict())
    x = torch.randn(7, 5, out.in_features, dtype=DTYPE, requires_grad=True)
    y, y_ref = out(x), ref(x)
    assert y.shape == y_ref.shape == (7, 5, 1)
    assert torch.allclose(y, y_ref, atol=1e-6)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, out.weight, out.bias], g)
    grads_ref = torch.autograd.grad(y_ref, [x, ref.weight, ref.bias], g)
    for a, b in zip(grads, grads_ref):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("critic", ["mlp", "hyper"])
@pytest.mark.parametrize("slot_rows", [SlotRows.used_slots, SlotRows.all_slots])
def test_critic_values_equal_two_full_passes(critic, slot_rows):
    """The trainer's one-pass bootstrap values equal V(s_t) and V(final_obs_t) computed in
    two full passes, each under the variant that produced step t, wherever GAE uses them
    (every step but the terminated ones), with truncations and slot changes mid-rollout."""
    from hyperrl.train import critic_values

    t_len, n, k, d, c = 9, 6, 3, 4, 2
    agent = make_agent(CARTPOLE_SPACE, d, ctx_dim=c, critic=critic)
    g = torch.Generator().manual_seed(3)
    ctx_tab = torch.randn(n, k, c, generator=g, dtype=DTYPE)
    done = torch.rand(t_len, n, generator=g) < 0.25
    trunc = done & (torch.rand(t_len, n, generator=g) < 0.5)
    done[2, 0] = trunc[2, 0] = True  # at least one truncation
    done[4, 1], trunc[4, 1] = True, False  # and one termination
    term = done & ~trunc
    slot = torch.zeros(t_len + 1, n, dtype=torch.long)
    for t in range(t_len):
        slot[t + 1] = torch.where(done[t], (slot[t] + 1).clamp(max=k - 1), slot[t])
    obs = torch.randn(t_len + 1, n, d, generator=g, dtype=DTYPE)  # s_0 .. s_T (s_{t+1} after a reset if done)
    final = torch.where(done.unsqueeze(-1), torch.randn(t_len, n, d, generator=g, dtype=DTYPE), obs[1:])

    values, next_values, ctx = critic_values(agent, ctx_tab, obs[:-1], slot[:-1], final, trunc, obs[-1], slot[-1],
                                             slot_rows)

    ctx_ref = ctx_tab[torch.arange(n), slot[:-1]]  # [T, N, C]
    with torch.no_grad():
        if critic == "mlp":
            v_ref = agent.value(obs[:-1].transpose(0, 1), ctx_ref.transpose(0, 1)).t()
            nv_ref = agent.value(final.transpose(0, 1), ctx_ref.transpose(0, 1)).t()
        else:  # per-sample loop through each variant's generated critic
            v_ref = torch.zeros(t_len, n, dtype=DTYPE)
            nv_ref = torch.zeros(t_len, n, dtype=DTYPE)
            for t in range(t_len):
                for i in range(n):
                    w = agent.critic_weights(ctx_ref[t, i].unsqueeze(0))
                    rows = SlotRows.one_each(1, torch.device("cpu"))
                    v_ref[t, i] = agent.value(obs[t, i].view(1, 1, d), None, rows, w)[0, 0]
                    nv_ref[t, i] = agent.value(final[t, i].view(1, 1, d), None, rows, w)[0, 0]
    assert torch.equal(ctx, ctx_ref)
    assert torch.allclose(values, v_ref, atol=1e-10)
    used = ~term
    assert torch.allclose(next_values[used], nv_ref[used], atol=1e-10)
    assert trunc.any() and term.any() and (slot[-1] > 0).any()


@pytest.mark.parametrize("arch", ["hyper", "concat", "blind", "cgate", "adapter"])
@pytest.mark.parametrize("critic", ["mlp", "hyper"])
def test_obs_norm_folds_into_the_first_layer(arch, critic):
    """model.obs_norm: the running statistics equal NumPy's over every batch seen, and the
    generated policy (and critic) on raw observations equals the unfolded network on
    normalised observations."""
    if critic == "hyper" and arch != "hyper":
        pytest.skip("the hyper critic is independent of the arch")
    torch.manual_seed(0)
    space = gym.spaces.Box(-1.0, 1.0, (3,), dtype=np.float32)
    cfg = ModelConfig(arch=arch, obs_norm=True, critic=critic, hidden_sizes=(16, 16), embed_sizes=(8,),
                      critic_hidden_sizes=(16,))
    agent = HyperAgent(5, space, 2, cfg).double()
    scale = torch.tensor([1.0, 10.0, 0.1, 3.0, 50.0], dtype=torch.float64)
    batches = [torch.randn(4, 7, 5, dtype=torch.float64) * scale + 2.0 for _ in range(3)]
    for b in batches:
        agent.obs_norm.update(b)
    every = torch.cat([b.reshape(-1, 5) for b in batches]).numpy()
    n0 = 1e-4  # the prior's count (mean 0, variance 1)
    mean = every.sum(0) / (len(every) + n0)
    np.testing.assert_allclose(agent.obs_norm.mean.numpy(), mean, rtol=1e-9)
    second = (n0 * 1.0 + (every ** 2).sum(0)) / (len(every) + n0)  # the prior: variance 1 at mean 0
    np.testing.assert_allclose(agent.obs_norm.var.numpy(), second - mean ** 2, rtol=1e-9)
    ctx = torch.randn(6, 2, dtype=torch.float64)
    obs = torch.randn(6, 5, dtype=torch.float64) * scale
    normed = (obs - agent.obs_norm.mean) / torch.sqrt(agent.obs_norm.var + ObsNorm.EPS)
    raw_weights = agent.actor(ctx)
    from hyperrl.hypernet import functional_mlp

    want = functional_mlp(raw_weights, normed, cfg.activation)
    got = functional_mlp(agent.policy_weights(ctx), obs, cfg.activation)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    v_raw = agent.value(obs.unsqueeze(1), ctx.unsqueeze(1), SlotRows.one_each(6, obs.device),
                        agent.critic_weights(ctx))
    if critic == "mlp":
        v_want = agent.critic[1:](torch.cat([normed, ctx], -1)).squeeze(-1)
    else:
        v_want = functional_mlp(agent.critic_hyper(ctx), normed, cfg.activation).squeeze(-1)
    torch.testing.assert_close(v_raw.squeeze(1), v_want, rtol=1e-10, atol=1e-10)
    assert "obs_norm.mean" in agent.state_dict()  # saved with every checkpoint
