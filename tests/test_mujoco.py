"""MuJoCo families: model quantities as parameters, the cheetah-vel env and the batched backend.

* Derived constants: after ``Family.apply`` the model's ``mj_setConst`` outputs
  (``body_subtreemass``, ``dof_invweight0``, ``actuator_acc0``, ``stat.meaninertia``, ...) equal
  those of a model compiled from scratch (``mujoco.MjSpec``) with the same masses, inertias,
  gravity, friction, damping and gears: the CARL class of bug (a context that never reaches
  the simulator, or reaches it half-way) cannot happen.
* Values are relative to the compiled model and never compound across resets.
* ``hyperrl/HalfCheetahVel-v5`` is HalfCheetah-v5 with cheetah-vel's reward.
* The batched backend (``batched: mujoco``) equals Gymnasium one step at a time, across
  time limits, terminations and autoresets, for every MuJoCo family.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

mujoco = pytest.importorskip("mujoco")

from hyperrl.errors import FamilyError  # noqa: E402
from hyperrl.families import family_from_dict, gym_make, list_families, load_family  # noqa: E402
from hyperrl.mujoco_params import quiet_compile  # noqa: E402

F64 = torch.float64
MUJOCO_FAMILIES = [f for f in list_families() if load_family(f).batched == "mujoco"]


def _family(params: dict, env_id: str = "HalfCheetah-v5", **top) -> "object":
    first = {k: (v["train"]["ranges"][0][0]) for k, v in params.items()}
    raw = {"name": "t", "env_id": env_id, "params": params,
           "heldout": {"interpolation": {"values": [first]},
                       "extrapolation": {"values": [{k: params[k]["bounds"][1] for k in params}]}}, **top}
    fam = family_from_dict(raw, source="t.yaml")
    fam.check_env()
    return fam


def _param(target: dict, bounds=(0.1, 10.0), train=(0.5, 2.0), **kw) -> dict:
    return {"mujoco": target, "bounds": list(bounds), "train": {"ranges": [list(train)]}, **kw}


CHEETAH = {
    "mass": _param({"quantity": "mass"}),
    "torso": _param({"quantity": "mass", "bodies": ["torso", "bthigh"]}),
    "g": _param({"quantity": "gravity", "mode": "value"}, bounds=(1.0, 40.0), train=(5.0, 15.0)),
    "mu": _param({"quantity": "friction", "geoms": ["bfoot", "ffoot"]}),
    "damp": _param({"quantity": "damping"}),
    "gear": _param({"quantity": "gear", "joints": ["bthigh"]}, signed=True, train=(0.5, 2.0)),
    "gear_all": _param({"quantity": "gear"}),
}
VALUES = {"mass": 1.7, "torso": 3.0, "g": 14.0, "mu": 0.4, "damp": 2.5, "gear": -1.5, "gear_all": 0.8}


def _fresh_model(base, values: dict) -> "mujoco.MjModel":
    """HalfCheetah-v5 compiled from scratch with the quantities ``values`` describe: every
    body's inertial given explicitly (the compiled masses and inertias, scaled), so the
    compiler, not mj_setConst on an edited model, computes every derived constant."""
    m0 = base.model
    with quiet_compile():
        spec = mujoco.MjSpec.from_file(base.fullpath)
    spec.compiler.inertiafromgeom = mujoco.mjtInertiaFromGeom.mjINERTIAFROMGEOM_FALSE
    spec.compiler.settotalmass = -1
    for body in spec.bodies[1:]:
        i = m0.body(body.name).id
        k = values["mass"] * (values["torso"] if body.name in ("torso", "bthigh") else 1.0)
        body.explicitinertial = True
        body.mass = m0.body_mass[i] * k
        body.inertia = m0.body_inertia[i] * k
        body.ipos, body.iquat = m0.body_ipos[i], m0.body_iquat[i]
    spec.option.gravity = [0.0, 0.0, -values["g"]]
    for geom in spec.geoms:
        if geom.name in ("bfoot", "ffoot"):
            geom.friction = [geom.friction[0] * values["mu"], geom.friction[1], geom.friction[2]]
    for joint in spec.joints:
        joint.damping = joint.damping * values["damp"]
    for act in spec.actuators:
        k = values["gear_all"] * (values["gear"] if act.name == "bthigh" else 1.0)
        act.gear = [act.gear[0] * k, *act.gear[1:]]
    return spec.compile()


def _setconst_outputs(m) -> dict[str, np.ndarray]:
    out = {f: np.array(getattr(m, f)) for f in mujoco.MjModel._setconst_outputs}
    out["stat.meaninertia"] = np.array(m.stat.meaninertia)
    out["stat.meanmass"] = np.array(m.stat.meanmass)
    return out


def test_derived_constants_equal_a_freshly_compiled_model():
    fam = _family(CHEETAH)
    env = fam.make_env(VALUES)
    base = env.unwrapped
    env.reset(seed=0)
    ref = _fresh_model(gym_make("HalfCheetah-v5").unwrapped, VALUES)
    for f in ("body_mass", "body_inertia", "geom_friction", "dof_damping", "actuator_gear"):
        np.testing.assert_allclose(getattr(base.model, f), getattr(ref, f), rtol=1e-12, atol=1e-12, err_msg=f)
    np.testing.assert_array_equal(base.model.opt.gravity, ref.opt.gravity)
    ours, theirs = _setconst_outputs(base.model), _setconst_outputs(ref)
    for f in theirs:
        np.testing.assert_allclose(ours[f], theirs[f], rtol=1e-10, atol=1e-12, err_msg=f)
    # the constants did change: a stale model would fail the comparison above
    untouched = gym_make("HalfCheetah-v5").unwrapped.model
    for f in ("body_subtreemass", "dof_invweight0", "actuator_acc0"):
        assert np.abs(getattr(untouched, f) - getattr(ref, f)).max() > 1e-3, f
    # and the same one step from the same state: the simulator runs what the family says
    d = mujoco.MjData(ref)
    d.qpos[:], d.qvel[:] = base.data.qpos, base.data.qvel
    a = np.linspace(-1, 1, 6)
    base.data.ctrl[:] = d.ctrl[:] = a
    mujoco.mj_step(base.model, base.data, nstep=5)
    mujoco.mj_step(ref, d, nstep=5)
    np.testing.assert_allclose(base.data.qpos, d.qpos, rtol=1e-9, atol=1e-10)


def test_setting_a_mass_alone_leaves_constants_stale():
    """The issue's example: on HalfCheetah-v5, ``body_mass[1] *= 3`` leaves
    ``body_subtreemass[1]`` at 14.0; the family's mass parameter makes it 26.5."""
    naive = gym_make("HalfCheetah-v5").unwrapped.model
    naive.body_mass[1] *= 3
    assert naive.body_subtreemass[1] == pytest.approx(14.0)
    fam = _family({"torso": _param({"quantity": "mass", "bodies": ["torso"]})})
    m = fam.make_env({"torso": 3.0}).unwrapped.model
    assert m.body_subtreemass[1] == pytest.approx(26.5, abs=0.01)
    assert m.body_inertia[1] == pytest.approx(3 * gym_make("HalfCheetah-v5").unwrapped.model.body_inertia[1])


def test_values_are_relative_to_the_compiled_model_and_never_compound():
    fam = _family(CHEETAH)
    env = fam.make_env(VALUES)
    once = _setconst_outputs(env.unwrapped.model) | {"mass": env.unwrapped.model.body_mass.copy()}
    for _ in range(3):  # re-applying (every reset does) changes nothing
        fam.apply(env, VALUES)
        env.reset()
    again = _setconst_outputs(env.unwrapped.model) | {"mass": env.unwrapped.model.body_mass.copy()}
    for f in once:
        np.testing.assert_array_equal(once[f], again[f], err_msg=f)
    ones = {k: 1.0 for k in VALUES} | {"g": 9.81}
    fam.apply(env, ones)
    pristine = gym_make("HalfCheetah-v5").unwrapped.model
    for f in ("body_mass", "body_inertia", "geom_friction", "dof_damping", "actuator_gear", "body_subtreemass",
              "dof_invweight0", "actuator_acc0"):
        np.testing.assert_allclose(getattr(env.unwrapped.model, f), getattr(pristine, f), rtol=1e-13, atol=0, err_msg=f)


def test_apply_keeps_the_simulation_state():
    """mj_setConst works in ``data`` at qpos0; ``apply`` puts the running state back."""
    fam = _family({"mass": CHEETAH["mass"]})
    env = fam.make_env({"mass": 1.0})
    env.reset(seed=1)
    for _ in range(5):
        env.step(np.full(6, 0.5, dtype=np.float32))
    d = env.unwrapped.data
    qpos, qvel, t = d.qpos.copy(), d.qvel.copy(), d.time
    fam.apply(env, {"mass": 2.0})
    assert np.array_equal(d.qpos, qpos) and np.array_equal(d.qvel, qvel) and d.time == t


@pytest.mark.parametrize(("param", "env_id", "expect"), [
    ({"mujoco": {"quantity": "volume"}}, "HalfCheetah-v5", "params.p.mujoco.quantity: expected one of mass, gravity"),
    ({"mujoco": {"quantity": "mass", "geoms": ["x"]}}, "HalfCheetah-v5", "params.p.mujoco.geoms: unknown key for quantity mass"),
    ({"mujoco": {"quantity": "mass", "mode": "double"}}, "HalfCheetah-v5", "params.p.mujoco.mode: expected one of scale, value"),
    ({"mujoco": {"quantity": "mass", "bodies": []}}, "HalfCheetah-v5", "params.p.mujoco.bodies: expected a non-empty list"),
    ({"mujoco": {"quantity": "mass", "bodies": ["torsoo"]}}, "HalfCheetah-v5",
     "params.p.mujoco.bodies: HalfCheetah-v5 has no body 'torsoo' (did you mean 'torso'?); its body names: world, torso"),
    ({"mujoco": {"quantity": "mass", "bodies": ["world"]}}, "HalfCheetah-v5", "has no body 'world'"),
    ({"mujoco": {"quantity": "gear", "joints": ["rootx"]}}, "HalfCheetah-v5", "no actuator of HalfCheetah-v5 drives joint 'rootx'"),
    ({"mujoco": {"quantity": "gear", "joints": ["bthigh"], "actuators": ["bthigh"]}}, "HalfCheetah-v5", "give one of"),
    ({"mujoco": {"quantity": "mass"}, "signed": True}, "HalfCheetah-v5", "a mass cannot change sign"),
    ({"mujoco": {"quantity": "damping"}, "bounds": [-1.0, 2.0], "train": {"ranges": [[0.5, 1.0]]}}, "HalfCheetah-v5",
     "a damping cannot be negative"),
    ({"mujoco": "mass"}, "HalfCheetah-v5", "params.p.mujoco: expected a mapping"),
    ({"mujoco": {"quantity": "mass"}}, "CartPole-v1", "CartPole-v1 is not a MuJoCo env"),
])
def test_schema_errors_are_one_clear_line(param, env_id, expect):
    spec = {"bounds": [0.1, 10.0], "train": {"ranges": [[0.5, 2.0]]}} | param
    with pytest.raises(FamilyError) as e:
        _family({"p": spec}, env_id=env_id)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("family file t.yaml: ") and expect in msg, msg


def test_cheetah_vel_is_half_cheetah_with_the_velocity_reward():
    """Same model, observations and resets as HalfCheetah-v5; reward -|v - v*| - 0.05 |a|^2."""
    ours, theirs = gym_make("hyperrl/HalfCheetahVel-v5"), gym_make("HalfCheetah-v5")
    assert ours.spec.max_episode_steps == theirs.spec.max_episode_steps == 1000
    assert ours.observation_space == theirs.observation_space and ours.action_space == theirs.action_space
    ours.unwrapped.target_velocity = 1.5
    o1, _ = ours.reset(seed=3)
    o2, _ = theirs.reset(seed=3)
    np.testing.assert_array_equal(o1, o2)
    rng = np.random.default_rng(0)
    for _ in range(30):
        a = rng.uniform(-1, 1, 6).astype(np.float32)
        (o1, r1, *_), (o2, r2, *_, i2) = ours.step(a), theirs.step(a)
        np.testing.assert_array_equal(o1, o2)
        v = i2["x_velocity"]
        assert r1 == pytest.approx(-abs(v - 1.5) - 0.05 * float(np.sum(np.square(a))), rel=1e-6)
        assert r2 == pytest.approx(v - 0.1 * float(np.sum(np.square(a))), rel=1e-6)


def test_cheetah_vel_copies_keep_its_cost_weight():
    """EzPickle rebuilds a copy from the positional arguments HalfCheetah-v5 records."""
    import copy

    env = gym_make("hyperrl/HalfCheetahVel-v5").unwrapped
    assert env._ctrl_cost_weight == 0.05
    with quiet_compile():  # the copy compiles half_cheetah.xml again
        assert copy.deepcopy(env)._ctrl_cost_weight == 0.05
    assert gym_make("hyperrl/HalfCheetahVel-v5", ctrl_cost_weight=0.2).unwrapped._ctrl_cost_weight == 0.2


def test_no_settotalmass_warning_from_hyperrl(capfd):
    capfd.readouterr()
    load_family("cheetah-vel").make_env({"target_velocity": 1.0})
    captured = capfd.readouterr()
    assert "settotalmass" not in captured.err + captured.out


# ------------------------------------------------------------------------------------------
# The batched backend against Gymnasium, one re-synced step at a time
# ------------------------------------------------------------------------------------------
TOL = 1e-7  # the backend steps the same library on the same state: equal up to float32 sums


def _sync(sim, envs) -> None:
    """Every simulation's integration state (time, qpos, qvel, warm start, ...) := Gymnasium's."""
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    for i, e in enumerate(envs):
        mujoco.mj_getState(e.unwrapped.model, e.unwrapped.data, sim.batch.state[i], spec)


def _side_by_side(family, n: int, steps: int, seed: int, threads: int = 1, perturb=None) -> tuple[int, int]:
    """``n`` random variants stepped in the backend and in ``family.make_env`` envs, re-synced
    before every step; asserts the same observation, reward, terminated and truncated, and
    at every autoreset the same new variant's first observation. -> (terminations, truncations)."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    values = family.sample(n, gen, dtype=F64)
    sim = _make(family, n, seed=seed, threads=threads)
    obs = sim.reset(params=values, seed=seed).numpy()
    envs = [family.make_env(values[i]) for i in range(n)]
    gobs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
    np.testing.assert_array_equal(obs, gobs)  # the same seeded reset noise
    if perturb is not None:
        perturb(sim)
    nxt = family.sample(n, gen, dtype=F64)
    sim.next_params = nxt.clone()
    terms = truncs = 0
    act_dim = sim.single_action_space.shape[0]
    # strong random actions (beyond the bounds: both clip) fall quickly; weak ones reach the limit
    scale = np.array([1.3, 0.02, 0.5])[np.arange(n) % 3, None]
    for t in range(steps):
        _sync(sim, envs)
        a = rng.uniform(-1.0, 1.0, (n, act_dim)) * scale
        out = sim.step(torch.from_numpy(a))
        res = [e.step(np.clip(a[i], -1, 1).astype(np.float32)) for i, e in enumerate(envs)]
        where = f"{family.name} step {t}"
        np.testing.assert_allclose(out.final_obs.numpy(), np.stack([r[0] for r in res]), rtol=TOL, atol=TOL,
                                   err_msg=where)
        np.testing.assert_allclose(out.reward.numpy(), [r[1] for r in res], rtol=TOL, atol=TOL, err_msg=where)
        term, trunc = np.array([r[2] for r in res]), np.array([r[3] for r in res])
        assert np.array_equal(out.terminated.numpy(), term) and np.array_equal(out.truncated.numpy(), trunc), where
        for i in np.flatnonzero(term | trunc):
            terms, truncs = terms + int(term[i]), truncs + int(trunc[i])
            family.apply(envs[i], nxt[i])  # Gymnasium's env takes the new variant and resets
            np.testing.assert_array_equal(out.obs[i].numpy(), envs[i].reset()[0], err_msg=where)
            assert torch.equal(sim.params[i], nxt[i]), where
            nxt[i] = family.sample(1, gen, dtype=F64)[0]
            sim.next_params[i] = nxt[i]
    for e in envs:
        e.close()
    return terms, truncs


def _make(family, n, seed=0, threads=1):
    from hyperrl.sim import make_vec_env

    return make_vec_env(family, n, dtype=F64, seed=seed, threads=threads)


@pytest.mark.parametrize("family_name", MUJOCO_FAMILIES)
def test_batched_backend_matches_gymnasium_step_by_step(family_name):
    import dataclasses

    family = dataclasses.replace(load_family(family_name), max_episode_steps=50)  # truncations, quickly
    terms, truncs = _side_by_side(family, n=5, steps=130, seed=3)
    assert truncs >= 2
    if family.env_id.startswith(("Hopper", "Walker")):
        assert terms >= 5  # random actions fall: terminations and autoresets exercised


def test_a_small_physics_error_is_caught():
    """The comparison sees a 0.1 % error in one env's gravity, and a stale derived constant."""
    import dataclasses

    family = dataclasses.replace(load_family("hopper-actuator"), max_episode_steps=50)

    def heavier(sim):
        sim.models[0].opt.gravity[2] *= 1.001
        sim.batch.set_models(sim.models)

    def stale(sim):  # the masses of a 2x heavier hopper, the constants of the old one
        sim.models[1].body_mass[:] *= 2.0
        sim.models[1].body_inertia[:] *= 2.0
        sim.batch.set_models(sim.models)

    for perturb in (heavier, stale):
        with pytest.raises(AssertionError):
            _side_by_side(family, n=3, steps=20, seed=1, perturb=perturb)


def test_thread_count_and_checkpoint_do_not_change_the_run():
    """Two threads step bit for bit as one; a state_dict taken mid-run continues exactly."""
    family = load_family("walker-mass")
    gen = torch.Generator().manual_seed(0)
    values = family.sample(6, gen, dtype=F64)
    actions = torch.rand(60, 6, 6, generator=gen, dtype=F64) * 2 - 1
    runs = []
    for threads in (1, 2):
        sim = _make(family, 6, seed=4, threads=threads)
        sim.reset(params=values, seed=4)
        sim.next_params = family.sample(6, gen.manual_seed(1), dtype=F64)
        outs = []
        for t, a in enumerate(actions):
            if t == 30:
                snap = sim.state_dict()
            outs.append(sim.step(a))
        runs.append((outs, snap))
    for a, b in zip(runs[0][0], runs[1][0]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    resumed = _make(family, 6, seed=99)
    resumed.reset()
    resumed.load_state_dict(runs[0][1])
    for t in range(30, 60):
        out = resumed.step(actions[t])
        assert all(torch.equal(x, y) for x, y in zip(out, runs[0][0][t])), t


def test_inverted_thigh_is_the_negated_thigh_action():
    """hopper-actuator: under thigh_gear -g the hopper moves as under +g with the thigh's
    action negated (same reward: the control cost is even), in Gymnasium and in the backend."""
    family = load_family("hopper-actuator")
    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, (25, 3)).astype(np.float32)
    flip = np.array([-1.0, 1.0, 1.0], dtype=np.float32)
    inv, ref = family.make_env({"thigh_gear": -0.9}), family.make_env({"thigh_gear": 0.9})
    inv.reset(seed=2), ref.reset(seed=2)
    sim = _make(family, 2, seed=2)
    sim.reset(params=torch.tensor([[-0.9], [0.9]], dtype=F64), seed=2)
    sim.batch.state[1] = sim.batch.state[0]
    for t, a in enumerate(acts):
        (o1, r1, *_), (o2, r2, *_) = inv.step(a), ref.step(a * flip)
        np.testing.assert_allclose(o1, o2, rtol=0, atol=1e-12, err_msg=f"step {t}")
        assert r1 == pytest.approx(r2, abs=1e-12)
        out = sim.step(torch.from_numpy(np.stack([a, a * flip]).astype(np.float64)))
        np.testing.assert_allclose(out.final_obs[0].numpy(), out.final_obs[1].numpy(), rtol=0, atol=1e-12)
    moved = np.abs(o1 - family.make_env({"thigh_gear": 0.9}).reset(seed=2)[0]).max()
    assert moved > 0.05


@pytest.mark.parametrize(("params", "env_id", "top", "expect"), [
    ({"p": _param({"quantity": "mass"})}, "Ant-v5", {}, "batched mujoco supports HalfCheetah-v5"),
    ({"p": {"bounds": [0.1, 2.0], "train": {"ranges": [[0.5, 1.0]]}}}, "HalfCheetah-v5", {},
     None),  # an attribute HalfCheetah-v5 does not have: refused at load already
])
def test_backend_refusals_are_one_line(params, env_id, top, expect):
    if expect is None:
        with pytest.raises(FamilyError, match="has no attribute 'p'"):
            _family(params, env_id=env_id, batched="mujoco")
        return
    fam = _family(params, env_id=env_id, batched="mujoco", **top)
    with pytest.raises(FamilyError) as e:
        _make(fam, 2)
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_backend_refuses_attributes_it_does_not_model():
    raw = {"name": "t", "env_id": "hyperrl/HalfCheetahVel-v5", "batched": "mujoco",
           "params": {"frame_skip": {"bounds": [1, 10], "train": {"ranges": [[4, 6]]}}},
           "heldout": {"interpolation": {"values": [5]}, "extrapolation": {"values": [8]}}}
    fam = family_from_dict(raw, source="t.yaml")
    with pytest.raises(FamilyError, match="batched mujoco cannot vary attribute 'frame_skip'.*target_velocity"):
        _make(fam, 2)



# ------------------------------------------------------------------------------------------
# System identification by replaying recorded transitions through MuJoCo
# ------------------------------------------------------------------------------------------
def _record(family, values: list[float], seed: int, scale: float = 1.0):
    """One recorded episode per variant under random actions (the backend, float64)."""
    from hyperrl.episodes import run_first_episodes

    n = len(values)
    env = _make(family, n, seed=seed)
    obs = env.reset(params=torch.tensor(values, dtype=F64).reshape(n, -1), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    act_dim = env.single_action_space.shape[0]

    def policy(o):
        a = (torch.rand(n, act_dim, generator=gen, dtype=F64) * 2 - 1) * scale
        return a, a, torch.zeros(n)

    _, _, eps = run_first_episodes(env, obs, policy, record=True, sync_every=1)
    return eps


@pytest.mark.parametrize("true", [-1.0, 0.8])
def test_identify_recovers_the_hidden_actuator_sign(true):
    """hopper-actuator with a hidden sign: one short random episode (a few dozen steps)
    replayed through MuJoCo picks the right sign, and the gear factor within 5 %."""
    from hyperrl.adapt.sysid import identify

    family = load_family("hopper-actuator")
    eps = _record(family, [true], seed=7)
    assert 10 <= eps.steps <= 200
    ident = identify(family, [eps])
    assert ident is not None
    got = float(ident.values[0])
    assert np.sign(got) == np.sign(true) and got == pytest.approx(true, rel=0.05), got
    assert ident.error_at(torch.tensor([-true])) > 10 * ident.error + 1e-9  # the other sign predicts far worse


def test_identify_reads_a_task_parameter_from_the_rewards():
    """cheetah-vel: the target velocity changes no observation, only the reward; the replay
    predicts rewards too, so a hidden target is identified."""
    import dataclasses

    from hyperrl.adapt.sysid import identify

    family = dataclasses.replace(load_family("cheetah-vel"), max_episode_steps=40)
    eps = _record(family, [1.3], seed=3)
    ident = identify(family, [eps])
    assert float(ident.values[0]) == pytest.approx(1.3, abs=0.02)


# ------------------------------------------------------------------------------------------
# A tiny MuJoCo run: train, evaluate (both backends), adapt with a hidden sign
# ------------------------------------------------------------------------------------------
def test_tiny_run_trains_evaluates_and_adapts(tmp_path, capsys):
    import json

    import helpers

    import hyperrl
    from hyperrl.adapt import main as adapt_main
    from hyperrl.evaluate import run_evaluation

    # hopper-actuator with 60-step episodes: every command runs whole episodes, quickly
    src = load_family("hopper-actuator").source
    fam_file = tmp_path / "hopper-actuator.yaml"
    fam_file.write_text(open(src).read() + "\nmax_episode_steps: 60\n")
    run = helpers.train_tiny(tmp_path / "run", str(fam_file), 512, [
        "env.num_envs=8", "ppo.num_steps=32", "ppo.num_minibatches=2", "eval.episodes=1", "progress=false",
        "model.hidden_sizes=[16,16]", "model.embed_sizes=[16]", "model.critic_hidden_sizes=[16]",
        "model.obs_norm=true", "env.sim_threads=1", "histogram_interval_evals=0"], eval_interval=512)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["env_steps"] == 512 and np.isfinite(metrics["eval_extrapolation_return"])
    loaded = hyperrl.load(run)
    values = torch.tensor([[-1.0], [0.6]], dtype=F64)
    gym_res = run_evaluation(loaded, values, episodes=2, seed=0, backend="gymnasium")
    bat_res = run_evaluation(loaded, values, episodes=2, seed=0, backend="batched")
    # the batched backend starts where Gymnasium does and steps the same physics
    assert gym_res.lengths.min() >= 5
    np.testing.assert_allclose(bat_res.returns.numpy(), gym_res.returns.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(bat_res.lengths.numpy(), gym_res.lengths.numpy())
    # adaptation to an inverted thigh (-0.9), the value hidden from the adapter
    assert adapt_main([str(run), "--values", "thigh_gear=-0.9", "--hidden",
                       "--episodes", "2", "--budgets", "0,2", "--eval-episodes", "1", "--no-references",
                       "--name", "hid"]) == 0
    m = json.loads((run / "adapt" / "hid" / "metrics.json").read_text())
    assert m["episodes_used"] == 2 and m["hidden"] is True
    # the first episode's transitions, replayed through MuJoCo, give the sign and the gear
    (ident,) = m["adaptation"]["identified_values"]
    assert ident == pytest.approx(-0.9, rel=0.03)
    assert np.isfinite(m["final_return"])
    assert (run / "adapt" / "hid" / "policy.pt").is_file()
