"""Tests for hyperrl.ppo: GAE (hand-computed), the clipped PPO loss, the action distributions."""

from __future__ import annotations

import math

import pytest
import torch

from hyperrl.ppo import Categorical, DiagGaussian, explained_variance, gae, ppo_loss

# ---------------------------------------------------------------------------------------
# GAE
# ---------------------------------------------------------------------------------------
# T=4, N=2, gamma=0.5, lambda=0.5 (gamma*lambda=0.25: every number below is exact in binary).
# Column 0 TERMINATES at t=1, column 1 is TRUNCATED at t=2. ``next_values`` at an episode
# end is V(final_obs) and deliberately differs from values[t+1] (the next episode's start).
GAMMA, LAM = 0.5, 0.5
REWARDS = torch.tensor([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [4.0, 1.0]], dtype=torch.float64)
VALUES = torch.tensor([[0.5, 1.0], [1.0, 2.0], [0.25, 3.0], [2.0, 4.0]], dtype=torch.float64)
NEXT_VALUES = torch.tensor([[1.0, 2.0], [8.0, 3.0], [2.0, 10.0], [6.0, 5.0]], dtype=torch.float64)
TERM = torch.tensor([[False, False], [True, False], [False, False], [False, False]])
TRUNC = torch.tensor([[False, False], [False, False], [False, True], [False, False]])

# Column 0:  delta = r + 0.5 * (1 - term) * next_v - v
#   delta0 = 1 + 0.5*1 - 0.5    = 1.0
#   delta1 = 2 + 0 (terminated) - 1.0 = 1.0      (V(final_obs)=8 must NOT be used)
#   delta2 = 3 + 0.5*2 - 0.25   = 3.75
#   delta3 = 4 + 0.5*6 - 2      = 5.0
#   adv3 = 5.0; adv2 = 3.75 + 0.25*5 = 5.0; adv1 = 1.0 (episode ended: trace stops);
#   adv0 = 1.0 + 0.25*1.0 = 1.25
# Column 1:
#   delta0 = 1 + 0.5*2 - 1 = 1.0; delta1 = 1 + 0.5*3 - 2 = 0.5
#   delta2 = 1 + 0.5*10 - 3 = 3.0   (truncated: bootstraps from V(final_obs)=10)
#   delta3 = 1 + 0.5*5 - 4 = -0.5
#   adv3 = -0.5; adv2 = 3.0 (trace stops); adv1 = 0.5 + 0.25*3 = 1.25; adv0 = 1 + 0.25*1.25 = 1.3125
EXPECTED_ADV = torch.tensor([[1.25, 1.3125], [1.0, 1.25], [5.0, 3.0], [5.0, -0.5]], dtype=torch.float64)
EXPECTED_RET = torch.tensor([[1.75, 2.3125], [2.0, 3.25], [5.25, 6.0], [7.0, 3.5]], dtype=torch.float64)


def test_gae_hand_computed():
    adv, ret = gae(REWARDS, VALUES, NEXT_VALUES, TERM, TRUNC, GAMMA, LAM)
    assert adv.shape == (4, 2) and ret.shape == (4, 2)
    torch.testing.assert_close(adv, EXPECTED_ADV, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, EXPECTED_RET, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, adv + VALUES, rtol=0, atol=0)


def test_gae_truncation_bootstraps_termination_does_not():
    adv, _ = gae(REWARDS, VALUES, NEXT_VALUES, TERM, TRUNC, GAMMA, LAM)
    nv = NEXT_VALUES.clone()
    nv[1, 0] += 100.0  # V(final_obs) of the terminated step: ignored
    adv2, _ = gae(REWARDS, VALUES, nv, TERM, TRUNC, GAMMA, LAM)
    torch.testing.assert_close(adv2, adv, rtol=0, atol=0)
    nv = NEXT_VALUES.clone()
    nv[2, 1] += 4.0  # V(final_obs) of the truncated step: bootstrapped, gamma * 4 = 2 at t=2
    adv3, _ = gae(REWARDS, VALUES, nv, TERM, TRUNC, GAMMA, LAM)
    diff = adv3 - adv
    assert diff[2, 1] == pytest.approx(2.0)
    assert diff[1, 1] == pytest.approx(0.25 * 2.0)  # propagates back inside the same episode
    assert diff[0, 1] == pytest.approx(0.25 * 0.25 * 2.0)
    assert diff[3, 1] == 0 and (diff[:, 0] == 0).all()


def test_gae_terminated_and_truncated_together_does_not_bootstrap():
    term = TRUNC.clone()
    adv_both, _ = gae(REWARDS, VALUES, NEXT_VALUES, term, TRUNC, GAMMA, LAM)
    # delta2 (column 1) = 1 + 0 - 3 = -2; trace still stops there
    assert adv_both[2, 1] == pytest.approx(-2.0)
    assert adv_both[1, 1] == pytest.approx(0.5 + 0.25 * -2.0)


def test_gae_nothing_leaks_across_an_autoreset():
    """Changing anything after an episode end leaves the earlier advantages untouched."""
    adv, _ = gae(REWARDS, VALUES, NEXT_VALUES, TERM, TRUNC, GAMMA, LAM)
    r, v, nv = REWARDS.clone(), VALUES.clone(), NEXT_VALUES.clone()
    r[2:, 0] += 7.0
    v[2:, 0] -= 3.0
    nv[2:, 0] += 11.0
    r[3, 1] += 5.0
    v[3, 1] += 2.0
    nv[3, 1] -= 9.0
    adv2, _ = gae(r, v, nv, TERM, TRUNC, GAMMA, LAM)
    torch.testing.assert_close(adv2[:2, 0], adv[:2, 0], rtol=0, atol=0)
    torch.testing.assert_close(adv2[:3, 1], adv[:3, 1], rtol=0, atol=0)


def _random_rollout(t=7, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(t, n, generator=g, dtype=torch.float64)
    v = torch.randn(t, n, generator=g, dtype=torch.float64)
    nv = torch.randn(t, n, generator=g, dtype=torch.float64)
    term = torch.rand(t, n, generator=g) < 0.2
    trunc = torch.rand(t, n, generator=g) < 0.2
    return r, v, nv, term, trunc


def test_gae_lambda_zero_is_one_step_td():
    r, v, nv, term, trunc = _random_rollout()
    gamma = 0.9
    adv, ret = gae(r, v, nv, term, trunc, gamma, 0.0)
    td = r + gamma * (~term).double() * nv - v
    torch.testing.assert_close(adv, td, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, r + gamma * (~term).double() * nv, rtol=0, atol=1e-12)


def test_gae_lambda_one_gamma_one_is_monte_carlo_return_minus_value():
    t, n = 6, 3
    g = torch.Generator().manual_seed(1)
    r = torch.randn(t, n, generator=g, dtype=torch.float64)
    v = torch.randn(t, n, generator=g, dtype=torch.float64)
    nv = torch.randn(t, n, generator=g, dtype=torch.float64)  # V(final_obs) at episode ends
    nv[:-1] = v[1:]  # inside an episode the successor's value is the next step's value
    term = torch.zeros(t, n, dtype=torch.bool)
    term[-1] = True  # every column's episode terminates at the last step
    term[2, 1] = True  # column 1 also terminates at t=2 (a second episode starts at t=3)
    trunc = torch.zeros(t, n, dtype=torch.bool)
    adv, ret = gae(r, v, nv, term, trunc, 1.0, 1.0)
    mc = torch.zeros_like(r)
    for col in range(n):
        acc = 0.0
        for step in range(t - 1, -1, -1):
            if term[step, col]:
                acc = 0.0
            acc = r[step, col] + acc
            mc[step, col] = acc
    torch.testing.assert_close(ret, mc, rtol=0, atol=1e-12)
    torch.testing.assert_close(adv, mc - v, rtol=0, atol=1e-12)


def test_gae_lambda_one_gamma_one_bootstraps_at_rollout_end():
    r = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    v = torch.tensor([[0.5], [0.25], [4.0]], dtype=torch.float64)
    nv = torch.tensor([[0.25], [4.0], [10.0]], dtype=torch.float64)  # = v[t+1], then V(s_T)
    no = torch.zeros(3, 1, dtype=torch.bool)
    adv, ret = gae(r, v, nv, no, no, 1.0, 1.0)
    torch.testing.assert_close(ret[:, 0], torch.tensor([16.0, 15.0, 13.0], dtype=torch.float64))
    torch.testing.assert_close(adv, ret - v)


# ---------------------------------------------------------------------------------------
# PPO loss
# ---------------------------------------------------------------------------------------
def _loss(new_lp, old_lp, adv, **kw):
    b = new_lp.shape[0]
    args = dict(new_value=torch.zeros(b, dtype=torch.float64), old_value=torch.zeros(b, dtype=torch.float64),
                returns=torch.zeros(b, dtype=torch.float64), entropy=torch.zeros(b, dtype=torch.float64),
                clip_coef=0.2, vf_coef=0.5, ent_coef=0.0)
    args.update(kw)
    return ppo_loss(new_lp, old_lp, adv, **args)


def test_ppo_loss_ratio_one():
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(64, generator=g, dtype=torch.float64)
    adv = torch.randn(64, generator=g, dtype=torch.float64) * 3 + 1
    out = _loss(lp, lp.clone(), adv, norm_adv=True)
    norm = (adv - adv.mean()) / (adv.std() + 1e-8)
    assert float(out.policy) == pytest.approx(float(-norm.mean()), abs=1e-12)
    assert abs(float(out.policy)) < 1e-12  # normalised advantages have mean 0
    assert float(out.approx_kl) == 0.0
    assert float(out.clipfrac) == 0.0
    out = _loss(lp, lp.clone(), adv, norm_adv=False)
    assert float(out.policy) == pytest.approx(float(-adv.mean()), abs=1e-12)


def test_ppo_loss_clipping_hand_computed():
    # eps = 0.2; per sample -min(r A, clip(r) A):
    #   r=1.5, A=+1 -> -min(1.5, 1.2)  = -1.2 (clipped: no gradient)
    #   r=1.5, A=-1 -> -min(-1.5,-1.2) = +1.5 (unclipped, pessimistic)
    #   r=0.5, A=+1 -> -min(0.5, 0.8)  = -0.5 (unclipped)
    #   r=0.5, A=-1 -> -min(-0.5,-0.8) = +0.8 (clipped: no gradient)
    #   r=1.1, A=+2 -> -2.2 (inside the clip range)
    ratio = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0], dtype=torch.float64)
    old = torch.tensor([-0.3, -1.0, -2.0, -0.7, -0.1], dtype=torch.float64)
    new = (old + ratio.log()).requires_grad_(True)
    out = _loss(new, old, adv, norm_adv=False)
    assert float(out.policy.detach()) == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8 - 2.2) / 5, abs=1e-12)
    assert float(out.clipfrac) == pytest.approx(4 / 5)
    kl = ((ratio - 1) - ratio.log()).mean()
    assert float(out.approx_kl) == pytest.approx(float(kl), abs=1e-12)
    out.policy.backward()
    # d/d logp of -A r is -A r where unclipped, 0 where the clipped branch is taken
    expected = torch.tensor([0.0, 1.5, -0.5, 0.0, -2.2], dtype=torch.float64) / 5
    torch.testing.assert_close(new.grad, expected, rtol=0, atol=1e-12)


def test_ppo_loss_value_clipping_hand_computed():
    # clip 0.2 around old_value:
    #   old 0, new 0.5, R 1: clipped v = 0.2 -> max(0.25, 0.64) = 0.64
    #   old 0, new 0.1, R 1: inside -> 0.81
    #   old 0, new 2.0, R 1: clipped 0.2 -> max(1.0, 0.64) = 1.0
    #   old 1, new 0.5, R 0.6: clipped 0.8 -> max(0.01, 0.04) = 0.04
    old_v = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    new_v = torch.tensor([0.5, 0.1, 2.0, 0.5], dtype=torch.float64)
    ret = torch.tensor([1.0, 1.0, 1.0, 0.6], dtype=torch.float64)
    lp = torch.zeros(4, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 0.5, 0.25], dtype=torch.float64)
    ent = torch.tensor([0.4, 0.6, 0.8, 1.0], dtype=torch.float64)
    out = _loss(lp, lp, adv, new_value=new_v, old_value=old_v, returns=ret, entropy=ent,
                clip_vloss=True, norm_adv=False, vf_coef=0.5, ent_coef=0.1)
    v_clip = 0.5 * (0.64 + 0.81 + 1.0 + 0.04) / 4
    assert float(out.value) == pytest.approx(v_clip, abs=1e-12)
    assert float(out.entropy) == pytest.approx(0.7, abs=1e-12)
    assert float(out.loss) == pytest.approx(float(out.policy) - 0.1 * 0.7 + 0.5 * v_clip, abs=1e-12)
    out = _loss(lp, lp, adv, new_value=new_v, old_value=old_v, returns=ret, entropy=ent,
                clip_vloss=False, norm_adv=False)
    assert float(out.value) == pytest.approx(0.5 * (0.25 + 0.81 + 1.0 + 0.01) / 4, abs=1e-12)


# ---------------------------------------------------------------------------------------
# Distributions
# ---------------------------------------------------------------------------------------
def test_categorical_matches_torch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, 4, generator=g) * 3
    actions = torch.randint(0, 4, (6, 5), generator=g)
    ours = Categorical(logits)
    ref = torch.distributions.Categorical(logits=logits)
    torch.testing.assert_close(ours.log_prob(actions), ref.log_prob(actions), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.entropy(), ref.entropy(), rtol=1e-6, atol=1e-6)
    assert torch.equal(ours.mode(), logits.argmax(-1))


def test_categorical_extreme_logits_finite():
    logits = torch.tensor([[0.0, -1e4, 50.0]])
    d = Categorical(logits)
    assert torch.isfinite(d.entropy()).all()
    assert d.sample(torch.Generator().manual_seed(0)).item() == 2


def test_categorical_gumbel_sampling_frequencies():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    n = 100_000
    logits = probs.log().float().expand(n, 4) + 1.7  # unnormalised on purpose
    d = Categorical(logits)
    s = d.sample(torch.Generator().manual_seed(123))
    assert s.shape == (n,) and s.dtype == torch.long
    counts = torch.bincount(s, minlength=4).double()
    expected = probs * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 25.0  # 3 dof: P(chi2 > 25) ~ 1.6e-5 (and the draw is seeded)


def test_categorical_sampling_reproducible_with_generator():
    logits = torch.randn(1000, 5, generator=torch.Generator().manual_seed(4))
    d = Categorical(logits)
    a = d.sample(torch.Generator().manual_seed(7))
    b = d.sample(torch.Generator().manual_seed(7))
    c = d.sample(torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_diag_gaussian_matches_torch():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(7, 3, 2, generator=g)
    log_std = torch.randn(2, generator=g) * 0.5  # state-independent, broadcast
    action = torch.randn(7, 3, 2, generator=g) * 2
    d = DiagGaussian(mean, log_std)
    ref = torch.distributions.Normal(mean, log_std.exp().expand_as(mean))
    torch.testing.assert_close(d.log_prob(action), ref.log_prob(action).sum(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d.entropy(), ref.entropy().sum(-1), rtol=1e-5, atol=1e-5)
    assert d.log_prob(action).shape == (7, 3)
    assert torch.equal(d.mode(), mean)
    # a per-sample log-std (generated per variant) works the same way
    ls = torch.randn(7, 3, 2, generator=g) * 0.3
    d = DiagGaussian(mean, ls)
    ref = torch.distributions.Normal(mean, ls.exp())
    torch.testing.assert_close(d.log_prob(action), ref.log_prob(action).sum(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d.entropy(), ref.entropy().sum(-1), rtol=1e-5, atol=1e-5)


def test_diag_gaussian_sampling():
    mean = torch.tensor([1.0, -2.0]).expand(50_000, 2)
    log_std = torch.tensor([math.log(0.5), math.log(2.0)])
    d = DiagGaussian(mean, log_std)
    a = d.sample(torch.Generator().manual_seed(0))
    b = d.sample(torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    torch.testing.assert_close(a.mean(0), torch.tensor([1.0, -2.0]), rtol=0, atol=0.05)
    torch.testing.assert_close(a.std(0), torch.tensor([0.5, 2.0]), rtol=0.03, atol=0)


def test_diag_gaussian_log_prob_gradients():
    mean = torch.zeros(4, 2, requires_grad=True)
    log_std = torch.zeros(2, requires_grad=True)
    a = torch.ones(4, 2)
    DiagGaussian(mean, log_std).log_prob(a).sum().backward()
    # d/dmu = (a - mu)/sigma^2 = 1; d/dlog_std = z^2 - 1 = 0 per sample
    torch.testing.assert_close(mean.grad, torch.ones(4, 2))
    torch.testing.assert_close(log_std.grad, torch.zeros(2))


# ---------------------------------------------------------------------------------------
# explained variance
# ---------------------------------------------------------------------------------------
def test_explained_variance():
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(y, y) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(y, 2.5), y) == pytest.approx(0.0)
    assert explained_variance(-y, y) < 0
    assert math.isnan(explained_variance(y, torch.ones(4)))


# --------------------------------------------------------------------------------------
# ppo_update: the one update loop
# --------------------------------------------------------------------------------------
def _fake_loss(param, kls, calls, nan_at=None):
    """A minibatch loss whose approx-KL follows ``kls`` call by call (the loop only reads it)."""
    from hyperrl.ppo import LossOut

    def loss(mb):
        i = len(calls)
        calls.append(mb.clone())
        value = (param * mb.to(param.dtype)).sum()
        if nan_at == i:
            value = value * float("nan")
        z = torch.zeros(())
        return LossOut(value, value.detach(), value.detach(), z, torch.tensor(kls[i % len(kls)]), z)

    return loss


def test_ppo_update_minibatches_cover_every_item_each_epoch():
    from hyperrl.ppo import ppo_update

    p = torch.nn.Parameter(torch.zeros(()))
    calls = []
    opt = torch.optim.SGD([p], lr=0.0)
    stats = ppo_update(_fake_loss(p, [0.0], calls), opt, [[p]], num_items=10, minibatch_size=4, epochs=3,
                       max_grad_norm=1.0, target_kl=None, device="cpu", generator=torch.Generator().manual_seed(0))
    assert [len(c) for c in calls] == [4, 4, 2] * 3
    for e in range(3):
        assert sorted(torch.cat(calls[3 * e:3 * e + 3]).tolist()) == list(range(10))
    assert set(stats) == {"policy", "value", "entropy", "approx_kl", "clipfrac"} and stats["policy"].shape == (9,)


def test_ppo_update_stops_on_the_epochs_mean_kl():
    """Early stopping reads the epoch's MEAN approx-KL: one spiky minibatch does not stop it."""
    from hyperrl.ppo import ppo_update

    p = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([p], lr=0.0)
    calls = []  # 2 minibatches per epoch, KL 0.0 then 0.03: last 0.03 > 0.02 but mean 0.015 < 0.02
    ppo_update(_fake_loss(p, [0.0, 0.03], calls), opt, [[p]], 8, 4, 4, 1.0, 0.02, "cpu")
    assert len(calls) == 8  # all 4 epochs
    calls = []  # mean 0.025 > 0.02: stops after the first epoch
    ppo_update(_fake_loss(p, [0.02, 0.03], calls), opt, [[p]], 8, 4, 4, 1.0, 0.02, "cpu")
    assert len(calls) == 2


def test_ppo_update_refuses_non_finite_and_clips_each_group():
    from hyperrl.ppo import NonFiniteUpdate, ppo_update

    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))

    def loss(mb):
        from hyperrl.ppo import LossOut

        v = 100.0 * a.sum() + 0.001 * b.sum()
        z = torch.zeros(())
        return LossOut(v, v.detach(), v.detach(), z, z, z)

    opt = torch.optim.SGD([a, b], lr=1.0)
    ppo_update(loss, opt, [[a], [b]], 1, 1, 1, max_grad_norm=0.5, target_kl=None, device="cpu")
    # a's gradient (norm 173) is clipped to 0.5; b's (norm 0.0017) is not shrunk with it
    assert a.norm().item() == pytest.approx(0.5, rel=1e-5)
    assert b.norm().item() == pytest.approx(0.001 * 3 ** 0.5, rel=1e-5)
    p = torch.nn.Parameter(torch.zeros(()))
    with pytest.raises(NonFiniteUpdate, match="epoch 1"):
        ppo_update(_fake_loss(p, [0.0], [], nan_at=2), torch.optim.SGD([p], lr=0.1), [[p]], 4, 2, 3, 1.0, None, "cpu")
