"""The generic gymnasium.vector backend (hyperrl.sim.generic.GymnasiumVecEnv).

Mostly on acrobot-links, which has a batched simulator too: every test here forces
``backend="gymnasium"``, so it exercises gymnasium.vector, not the batched sim."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml

from hyperrl.errors import FamilyError
from hyperrl.families import builtin_families_dir, load_family
from hyperrl.sim import make_vec_env
from hyperrl.sim.acrobot import BatchedAcrobot
from hyperrl.sim.generic import GymnasiumVecEnv

A = [1.0, 1.0, 1.0]
B = [2.0, 0.5, 1.4]
C = [0.6, 1.4, 0.6]


@pytest.fixture(scope="module")
def acrobot():
    return load_family("acrobot-links")


@pytest.fixture(scope="module")
def short_acrobot(tmp_path_factory):
    """acrobot-links with a 5-step time limit: truncation comes fast."""
    raw = yaml.safe_load((builtin_families_dir() / "acrobot-links.yaml").read_text())
    raw["max_episode_steps"] = 5
    path = tmp_path_factory.mktemp("fam") / "acrobot-short.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))  # keep the parameter order
    fam = load_family(path)
    assert fam.param_names == ("LINK_MASS_1", "LINK_MASS_2", "LINK_LENGTH_1")
    return fam


def rows(*r) -> torch.Tensor:
    return torch.tensor(r, dtype=torch.float64)


def actions(n: int, steps: int, high: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, high, (steps, n), generator=torch.Generator().manual_seed(seed))


def test_make_vec_env_picks_generic_backend(acrobot):
    """``backend='gymnasium'`` forces gymnasium.vector on a family with a batched simulator
    (acrobot-links: ``auto`` picks its batched sim); ``auto`` picks gymnasium.vector for a
    family without one, where ``batched`` is refused."""
    vec = make_vec_env(acrobot, 2, backend="gymnasium")
    try:
        assert isinstance(vec, GymnasiumVecEnv)
        assert vec.vectorization == "sync"
    finally:
        vec.close()
    assert isinstance(make_vec_env(acrobot, 2), BatchedAcrobot)
    unbatched = dataclasses.replace(acrobot, batched=None)
    vec = make_vec_env(unbatched, 2)
    try:
        assert isinstance(vec, GymnasiumVecEnv)
    finally:
        vec.close()
    with pytest.raises(FamilyError, match="no batched simulator"):
        make_vec_env(unbatched, 2, backend="batched")
    with pytest.raises(FamilyError, match="unknown vectorization"):
        GymnasiumVecEnv(acrobot, 2, vectorization="threads")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_dtypes_device(acrobot, dtype):
    vec = make_vec_env(acrobot, 3, dtype=dtype, seed=0, backend="gymnasium")
    try:
        assert vec.num_envs == 3 and vec.param_names == acrobot.param_names
        assert vec.device == torch.device("cpu") and vec.dtype == dtype
        assert vec.obs_dim == 6 and vec.single_action_space.n == 3
        assert vec.max_episode_steps == 500
        assert vec.params.shape == vec.next_params.shape == (3, 3)
        assert vec.params.dtype == dtype
        obs = vec.reset()
        assert obs.shape == (3, 6) and obs.dtype == dtype and obs.device.type == "cpu"
        out = vec.step(torch.tensor([0, 1, 2]))
        assert out.obs.shape == out.final_obs.shape == (3, 6)
        assert out.obs.dtype == out.final_obs.dtype == out.reward.dtype == dtype
        assert out.reward.shape == out.terminated.shape == out.truncated.shape == (3,)
        assert out.terminated.dtype == out.truncated.dtype == torch.bool
        assert torch.equal(out.reward, torch.full((3,), -1.0, dtype=dtype))
        # outputs are copies: the next step does not overwrite them
        kept = out.obs.clone()
        vec.step(torch.tensor([2, 2, 2]))
        assert torch.equal(out.obs, kept)
    finally:
        vec.close()


def test_params_really_applied(acrobot):
    vec = make_vec_env(acrobot, 3, seed=0, backend="gymnasium")
    try:
        assert vec.get_attr("LINK_MASS_1") == (1.0, 1.0, 1.0)  # Gymnasium's defaults
        vec.reset(params=rows(A, B, C))
        assert torch.allclose(vec.params, rows(A, B, C).float())
        assert vec.get_attr("LINK_MASS_1") == (1.0, 2.0, 0.6)
        assert vec.get_attr("LINK_MASS_2") == (1.0, 0.5, 1.4)
        assert vec.get_attr("LINK_LENGTH_1") == (1.0, 1.4, 0.6)
        # derived attribute recomputed per env
        assert vec.get_attr("LINK_COM_POS_1") == pytest.approx((0.5, 0.7, 0.3))
        with pytest.raises(FamilyError, match="LINK_LENGTH_1"):
            vec.reset(params=rows(A, B, [1.0, 1.0, 0.0]))
        with pytest.raises(FamilyError, match=r"shape \[3, 3\]"):
            vec.reset(params=rows(A, B))
    finally:
        vec.close()


def test_same_seed_different_params_diverge(acrobot):
    """Two vec envs, same seed: env 0 (same params) stays identical, env 1 diverges."""
    v1, v2 = make_vec_env(acrobot, 2, backend="gymnasium"), make_vec_env(acrobot, 2, backend="gymnasium")
    try:
        o1 = v1.reset(params=rows(A, A), seed=11)
        o2 = v2.reset(params=rows(A, B), seed=11)
        assert torch.equal(o1, o2)  # starts do not depend on the parameters
        acts = actions(2, 30, 3)
        for a in acts:
            s1, s2 = v1.step(a), v2.step(a)
        assert torch.equal(s1.obs[0], s2.obs[0])
        assert (s1.obs[1] - s2.obs[1]).abs().max() > 1e-3
    finally:
        v1.close()
        v2.close()


def test_reset_seeds_env_i_with_seed_plus_i(acrobot):
    vec = make_vec_env(acrobot, 3, backend="gymnasium")
    try:
        obs = vec.reset(seed=5).numpy()
        for i in range(3):
            env = acrobot.make_env(A)
            ref, _ = env.reset(seed=5 + i)
            env.close()
            assert np.array_equal(obs[i], ref)
        assert torch.equal(vec.reset(seed=5), torch.from_numpy(obs))
    finally:
        vec.close()
    v1, v2 = make_vec_env(acrobot, 2, seed=3, backend="gymnasium"), make_vec_env(acrobot, 2, backend="gymnasium")
    try:  # the constructor's seed seeds the first reset
        assert torch.equal(v1.reset(), v2.reset(seed=3))
    finally:
        v1.close()
        v2.close()


def test_truncation_same_step_autoreset_matches_gymnasium(short_acrobot):
    """At the time limit: truncated, final_obs is the last obs of the episode, obs is
    already the first obs of the next one (the sub-env's RNG continues, no reseed)."""
    fam = short_acrobot
    vec = make_vec_env(fam, 2, backend="gymnasium")
    refs = [fam.make_env(A), fam.make_env(B)]
    try:
        assert vec.max_episode_steps == 5
        obs = vec.reset(params=rows(A, B), seed=0)
        ref_obs = [refs[i].reset(seed=i)[0] for i in range(2)]
        assert np.array_equal(obs.numpy(), np.stack(ref_obs))
        acts = actions(2, 12, 3, seed=4)
        for t, a in enumerate(acts):
            out = vec.step(a)
            for i in range(2):
                o, r, term, trunc, _ = refs[i].step(int(a[i]))
                final = o
                if term or trunc:
                    o, _ = refs[i].reset()
                assert np.array_equal(out.obs[i].numpy(), o)
                assert np.array_equal(out.final_obs[i].numpy(), final)
                assert out.reward[i].item() == r
                assert bool(out.terminated[i]) == term and bool(out.truncated[i]) == trunc
            done_step = (t + 1) % 5 == 0
            assert out.truncated.tolist() == [done_step, done_step]
            assert not out.terminated.any()
            if done_step:
                assert not torch.equal(out.obs, out.final_obs)
            else:
                assert torch.equal(out.obs, out.final_obs)
    finally:
        vec.close()
        for e in refs:
            e.close()


def test_termination_flags_cartpole():
    """A terminated cartpole: final_obs is past the failure threshold, obs a fresh start."""
    fam = load_family("cartpole-mass")
    vec = make_vec_env(fam, 4, seed=0, backend="gymnasium")
    try:
        assert isinstance(vec, GymnasiumVecEnv)
        vec.reset()
        seen = 0
        for a in actions(4, 60, 2, seed=1):
            out = vec.step(a)
            assert not out.truncated.any()
            for i in torch.nonzero(out.terminated).flatten().tolist():
                seen += 1
                x, _, theta, _ = out.final_obs[i].tolist()
                assert abs(x) > 2.4 or abs(theta) > 12 * 2 * np.pi / 360
                assert bool((out.obs[i].abs() <= 0.05).all())
            keep = ~out.terminated
            assert torch.equal(out.obs[keep], out.final_obs[keep])
        assert seen > 0
    finally:
        vec.close()


def test_next_params_taken_at_reset(short_acrobot):
    """next_params is taken only when an env resets, and before its new episode starts."""
    fam = short_acrobot
    vec = make_vec_env(fam, 2, backend="gymnasium")
    ref = fam.make_env(A)
    try:
        vec.reset(params=rows(A, A), seed=0)
        ref.reset(seed=0)
        vec.next_params = rows(B, C)
        acts = actions(2, 9, 3, seed=2)
        for a in acts[:4]:
            vec.step(a)
            ref.step(int(a[0]))
        assert torch.equal(vec.params, rows(A, A).float())  # no reset yet
        assert vec.get_attr("LINK_MASS_1") == (1.0, 1.0)
        out = vec.step(acts[4])  # time limit: both reset into the new values
        ref.step(int(acts[4][0]))
        assert out.truncated.all()
        assert torch.equal(vec.params, rows(B, C).float())
        assert vec.get_attr("LINK_MASS_1") == (2.0, 0.6)
        assert vec.get_attr("LINK_COM_POS_1") == pytest.approx((0.7, 0.3))
        # the new episode ran with B from its first step: same as applying B, then reset
        fam.apply(ref, B)
        o, _ = ref.reset()
        assert np.array_equal(out.obs[0].numpy(), o)
        for a in acts[5:]:
            out = vec.step(a)
            o, *_ = ref.step(int(a[0]))
            assert np.array_equal(out.obs[0].numpy(), o)

        # in-place edit of one row: only that env changes, and only at its reset
        vec.next_params[1] = torch.tensor(A, dtype=vec.next_params.dtype)
        out = vec.step(acts[0])  # step 5 of this episode: both reset
        assert out.truncated.all()
        assert vec.get_attr("LINK_MASS_1") == (2.0, 1.0)
        assert torch.equal(vec.params, rows(B, A).float())

        # a full reset without params keeps each env's current values
        vec.next_params = rows(C, C)
        vec.reset()
        assert vec.get_attr("LINK_MASS_1") == (2.0, 1.0)
        assert torch.equal(vec.params, rows(B, A).float())
        for a in acts[:5]:
            vec.step(a)
        assert vec.get_attr("LINK_MASS_1") == (0.6, 0.6)  # ...and next_params still wins at the next reset

        vec.next_params = rows(A, [1.0, 1.0, -1.0])
        with pytest.raises(FamilyError, match="LINK_LENGTH_1"):
            vec.step(acts[0])
    finally:
        vec.close()
        ref.close()


def test_cartpole_generic_matches_direct_envs():
    """backend='gymnasium' on cartpole-mass == family.make_env envs stepped by hand."""
    fam = load_family("cartpole-mass")
    masses = [0.05, 0.2, 1.0]
    vec = make_vec_env(fam, 3, backend="gymnasium")
    envs = [fam.make_env({"masspole": m}) for m in masses]
    try:
        obs = vec.reset(params=rows(*[[m] for m in masses]), seed=7)
        ref = [e.reset(seed=7 + i)[0] for i, e in enumerate(envs)]
        assert np.array_equal(obs.numpy(), np.stack(ref))
        dones = 0
        for a in actions(3, 80, 2, seed=3):
            out = vec.step(a)
            for i, e in enumerate(envs):
                o, r, term, trunc, _ = e.step(int(a[i]))
                final = o
                if term or trunc:
                    dones += 1
                    o, _ = e.reset()
                assert np.array_equal(out.obs[i].numpy(), o)
                assert np.array_equal(out.final_obs[i].numpy(), final)
                assert out.reward[i].item() == r
                assert bool(out.terminated[i]) == term and bool(out.truncated[i]) == trunc
        assert dones > 0
        assert vec.get_attr("masspole") == tuple(masses)
        assert vec.get_attr("total_mass") == pytest.approx(tuple(m + 1.0 for m in masses))
    finally:
        vec.close()
        for e in envs:
            e.close()


def test_continuous_actions_clipped(tmp_path):
    """A user family on Pendulum-v1 (Box actions): out-of-range actions are clipped."""
    raw = {
        "name": "pendulum-g", "env_id": "Pendulum-v1", "max_episode_steps": 20,
        "params": {"g": {"bounds": [1.0, 25.0], "train": {"ranges": [[8.0, 12.0]]}}},
        "heldout": {"interpolation": {"values": [10.0]}, "extrapolation": {"values": [20.0]}},
    }
    path = tmp_path / "pendulum-g.yaml"
    path.write_text(yaml.safe_dump(raw))
    fam = load_family(path)
    vec = make_vec_env(fam, 2)
    envs = [fam.make_env([9.0]), fam.make_env([15.0])]
    try:
        vec.reset(params=rows([9.0], [15.0]), seed=1)
        for i, e in enumerate(envs):
            e.reset(seed=1 + i)
        for k in range(6):
            a = torch.tensor([[5.0], [-0.7]]) if k % 2 else torch.tensor([-9.0, 1.3])  # [N] too
            out = vec.step(a)
            clipped = a.reshape(2, 1).clamp(-2.0, 2.0).numpy()
            for i, e in enumerate(envs):
                o, r, *_ = e.step(clipped[i])
                assert np.allclose(out.obs[i].numpy(), o, atol=1e-6)
                assert out.reward[i].item() == pytest.approx(r, rel=1e-6)
    finally:
        vec.close()
        for e in envs:
            e.close()


def test_async_matches_sync(short_acrobot):
    outs = {}
    for mode in ("sync", "async"):
        vec = GymnasiumVecEnv(short_acrobot, 2, seed=4, vectorization=mode)
        try:
            seq = [vec.reset(params=rows(A, B)).flatten()]
            for t, a in enumerate(actions(2, 10, 3)):
                if t == 2:
                    vec.next_params = rows(C, A)
                out = vec.step(a)
                seq += [out.obs.flatten(), out.final_obs.flatten(), out.reward, out.truncated.float()]
            assert vec.get_attr("LINK_MASS_1") == (0.6, 1.0)
            assert torch.equal(vec.params, rows(C, A).float())
            outs[mode] = torch.cat(seq)
        finally:
            vec.close()
    assert torch.equal(outs["sync"], outs["async"])
