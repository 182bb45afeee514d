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

import gymnasium as gym
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
        (o1, r1, *_, i1), (o2, r2, *_, i2) = ours.step(a), theirs.step(a)
        np.testing.assert_array_equal(o1, o2)
        v = i2["x_velocity"]
        assert r1 == pytest.approx(-abs(v - 1.5) - 0.05 * float(np.sum(np.square(a))), rel=1e-6)
        assert r2 == pytest.approx(v - 0.1 * float(np.sum(np.square(a))), rel=1e-6)


def test_no_settotalmass_warning_from_hyperrl(capfd):
    capfd.readouterr()
    load_family("cheetah-vel").make_env({"target_velocity": 1.0})
    captured = capfd.readouterr()
    assert "settotalmass" not in captured.err + captured.out
