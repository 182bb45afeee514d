"""The family layer: loading, validation messages, sampling, context, held-out sets."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from hyperrl.errors import FamilyError, HyperrlError
from hyperrl.families import (
    Family,
    builtin_families_dir,
    family_from_dict,
    list_families,
    load_family,
)

BUILTINS = ["acrobot-actuator", "acrobot-links", "cartpole-actuator", "cartpole-mass", "cartpole-mass-length",
            "pendulum-actuator", "pendulum-mass-length"]


def raw_builtin(name: str) -> dict:
    return yaml.safe_load((builtin_families_dir() / f"{name}.yaml").read_text())


def write_yaml(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------
def test_list_families_has_builtins():
    assert set(BUILTINS) <= set(list_families())
    assert list_families() == sorted(list_families())


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_loads_by_name_and_path(name):
    by_name = load_family(name)
    by_path = load_family(builtin_families_dir() / f"{name}.yaml")
    assert isinstance(by_name, Family)
    assert by_name.name == by_path.name == name
    assert by_name.param_names == by_path.param_names
    assert by_name.num_params == len(by_name.params) >= 1
    for split in ("interpolation", "extrapolation"):
        assert torch.equal(by_name.heldout_values(split), by_path.heldout_values(split))
    # a real env with the first interpolation point applied
    values = by_name.heldout_values("interpolation")[0]
    env = by_name.make_env(values)
    try:
        for n, v in by_name.as_dict(values).items():
            assert getattr(env.unwrapped, n) == pytest.approx(v)
        env.reset(seed=0)
        env.step(env.action_space.sample())
    finally:
        env.close()


def test_cartpole_mass_derived_attributes_recomputed():
    fam = load_family("cartpole-mass")
    env = fam.make_env({"masspole": 0.4})
    try:
        base = env.unwrapped
        assert base.masspole == 0.4
        assert base.total_mass == pytest.approx(0.4 + base.masscart)
        assert base.polemass_length == pytest.approx(0.4 * base.length)
        fam.apply(env, [0.06])
        assert base.total_mass == pytest.approx(0.06 + base.masscart)
    finally:
        env.close()


# --------------------------------------------------------------------------------------
# Cached attributes (design rule 2): a family that would leave one stale is refused
# --------------------------------------------------------------------------------------
class CachedEnv(gym.Env):
    """A tiny env whose __init__ caches two values of k: one its dynamics read, one not."""

    def __init__(self):
        self.k = 1.0
        self.k2 = self.k * 2.0  # read by step: goes stale when k is set alone
        self.label = self.k + 100.0  # never read by the dynamics
        self.observation_space = gym.spaces.Box(-1e9, 1e9, (1,), dtype=np.float64)
        self.action_space = gym.spaces.Discrete(2)
        self.x = 0.0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = 0.5
        return np.array([self.x]), {}

    def step(self, action):
        self.x = self.x + 0.1 * self.k2 * (1 if action else -1)
        return np.array([self.x]), 1.0, False, False, {}


def test_init_computed_attributes_of_cartpole():
    from hyperrl.families import init_computed_attributes

    cls = type(gym.make("CartPole-v1").unwrapped)
    assert init_computed_attributes(cls) == {"total_mass": "masspole + masscart",
                                             "polemass_length": "masspole * length"}
    assert init_computed_attributes(type(gym.make("Pendulum-v1").unwrapped)) == {}


@pytest.mark.parametrize("param, stale", [
    ("masspole", ["total_mass = masspole + masscart", "polemass_length = masspole * length"]),
    ("length", ["polemass_length = masspole * length"]),
    ("masscart", ["total_mass = masspole + masscart"]),
])
def test_family_leaving_cartpole_caches_stale_is_refused(tmp_path, param, stale):
    raw = {"name": "cp", "env_id": "CartPole-v1",
           "params": {param: {"bounds": [0.01, 5.0], "train": {"ranges": [[0.05, 0.5]]}}},
           "heldout": {"interpolation": {"values": [0.1]}, "extrapolation": {"values": [1.0]}}}
    with pytest.raises(FamilyError) as e:
        load_family(write_yaml(tmp_path / "cp.yaml", raw))
    msg = str(e.value)
    assert all(s in msg for s in stale) and len(msg.splitlines()) == 1
    assert f"setting {param} alone" in msg and "derived: {" in msg
    # the fix the message names makes the family load, and the physics follow the parameter
    raw["derived"] = dict(x.split(" = ") for x in stale)
    fam = load_family(write_yaml(tmp_path / "cp.yaml", raw))
    env = fam.make_env([0.3])
    try:
        base = env.unwrapped
        assert base.total_mass == pytest.approx(base.masspole + base.masscart)
        assert base.polemass_length == pytest.approx(base.masspole * base.length)
    finally:
        env.close()


def test_stale_check_flags_only_attributes_the_dynamics_read():
    env_id = "hyperrl-test/Cached-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=CachedEnv, max_episode_steps=10)
    raw = {"name": "cached", "env_id": env_id,
           "params": {"k": {"bounds": [0.1, 5.0], "train": {"ranges": [[0.5, 1.5]]}}},
           "heldout": {"interpolation": {"values": [1.0]}, "extrapolation": {"values": [3.0]}}}
    fam = family_from_dict(raw)
    assert fam.stale_attributes() == [("k2", "k * 2.0", "k")]  # 'label' is computed but never read
    raw["derived"] = {"k2": "k * 2.0"}
    assert family_from_dict(raw).stale_attributes() == []


USER_PENDULUM = """\
name: pendulum-gravity
description: Pendulum-v1 with varying gravity (written by a user, no code)
env_id: Pendulum-v1
max_episode_steps: 50
params:
  g:
    unit: m/s^2
    bounds: [1.0, 25.0]
    context: linear
    train: {dist: uniform, ranges: [[8.0, 12.0]]}
heldout:
  interpolation:
    values: [9.0, 10.0, 11.0]
  extrapolation:
    values: [3.0, 5.0, 15.0, 20.0]
"""


def test_user_family_yaml_works_without_code(tmp_path):
    from hyperrl.sim import make_vec_env
    from hyperrl.sim.generic import GymnasiumVecEnv

    path = tmp_path / "pendulum-gravity.yaml"
    path.write_text(USER_PENDULUM)
    fam = load_family(str(path))
    assert fam.name == "pendulum-gravity" and fam.param_names == ("g",)
    assert fam.batched is None and fam.max_episode_steps == 50
    env = fam.make_env({"g": 3.7})
    try:
        assert env.unwrapped.g == 3.7
        assert env.spec.max_episode_steps == 50
    finally:
        env.close()
    vec = make_vec_env(fam, 2, seed=0)
    try:
        assert isinstance(vec, GymnasiumVecEnv)
        obs = vec.reset(params=torch.tensor([[9.0], [15.0]], dtype=torch.float64))
        assert obs.shape == (2, 3)
        assert vec.get_attr("g") == (9.0, 15.0)
        for _ in range(50):
            out = vec.step(torch.zeros(2, 1))
        assert out.truncated.all() and not out.terminated.any()
    finally:
        vec.close()


# --------------------------------------------------------------------------------------
# Bad input: every message names what is wrong
# --------------------------------------------------------------------------------------
def test_unknown_family_name_lists_available():
    with pytest.raises(FamilyError) as e:
        load_family("cartpole-bogus")
    msg = str(e.value)
    assert "cartpole-bogus" in msg
    for name in BUILTINS:
        assert name in msg
    assert issubclass(FamilyError, HyperrlError)


def test_missing_family_file(tmp_path):
    with pytest.raises(FamilyError, match="does not exist"):
        load_family(tmp_path / "nope.yaml")


def test_malformed_yaml_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nenv_id: CartPole-v1\nparams:\n  masspole: {bounds: [0.1, 1.0]\nheldout: {}\n")
    with pytest.raises(FamilyError) as e:
        load_family(path)
    msg = str(e.value)
    assert "malformed YAML" in msg and "line " in msg and str(path) in msg


def test_unknown_key_names_key_path(tmp_path):
    raw = raw_builtin("cartpole-mass")
    raw["params"]["masspole"]["bogus"] = 1
    with pytest.raises(FamilyError, match=r"params\.masspole\.bogus: unknown key"):
        load_family(write_yaml(tmp_path / "f.yaml", raw))

    raw = raw_builtin("cartpole-mass")
    raw["params"]["masspole"]["train"]["shape"] = "flat"
    with pytest.raises(FamilyError, match=r"params\.masspole\.train\.shape"):
        family_from_dict(raw)

    raw = raw_builtin("cartpole-mass")
    raw["colour"] = "red"
    with pytest.raises(FamilyError, match=r"colour: unknown key"):
        family_from_dict(raw)


@pytest.mark.parametrize(
    "path, key",
    [((), "env_id"), ((), "heldout"), (("params", "masspole"), "bounds"),
     (("params", "masspole"), "train"), (("params", "masspole", "train"), "ranges")],
)
def test_missing_required_key(path, key):
    raw = raw_builtin("cartpole-mass")
    d = raw
    for k in path:
        d = d[k]
    del d[key]
    with pytest.raises(FamilyError) as e:
        family_from_dict(raw, source="x.yaml")
    msg = str(e.value)
    assert f"missing required key '{key}'" in msg and "x.yaml" in msg
    if path:
        assert ".".join(path) in msg


def test_train_range_outside_bounds():
    raw = raw_builtin("cartpole-mass")
    raw["params"]["masspole"]["train"]["ranges"] = [[0.001, 0.5]]
    with pytest.raises(FamilyError, match=r"params\.masspole\.train\.ranges\[0\].*physical bounds"):
        family_from_dict(raw)


def test_signed_train_range_crossing_zero_rejected():
    # |force_mag| >= 0.5 physically: a range through 0 would sample non-physical gains
    raw = raw_builtin("cartpole-actuator")
    raw["params"]["force_mag"]["train"]["ranges"] = [[-15.0, 15.0]]
    with pytest.raises(FamilyError, match=r"params\.force_mag\.train\.ranges\[0\].*crosses 0"):
        family_from_dict(raw)


def test_bad_bounds_and_choices():
    raw = raw_builtin("cartpole-mass")
    raw["params"]["masspole"]["bounds"] = [1.0, 0.5]
    with pytest.raises(FamilyError, match=r"params\.masspole\.bounds.*low must be < high"):
        family_from_dict(raw)
    raw = raw_builtin("cartpole-mass")
    raw["params"]["masspole"]["train"]["dist"] = "gaussian"
    with pytest.raises(FamilyError, match=r"params\.masspole\.train\.dist.*uniform, log_uniform"):
        family_from_dict(raw)


@pytest.mark.parametrize("split, value, match", [
    ("interpolation", 0.7, r"heldout\.interpolation.*masspole=0\.7.*outside the train range"),
    ("extrapolation", 0.2, r"heldout\.extrapolation.*masspole=0\.2.*inside the train range"),
    ("extrapolation", 5.0, r"heldout\.extrapolation.*masspole=5.*physical bounds"),
])
def test_heldout_point_in_the_wrong_place(split, value, match):
    raw = raw_builtin("cartpole-mass")
    raw["heldout"][split]["values"].append(value)
    with pytest.raises(FamilyError, match=match):
        family_from_dict(raw)


@pytest.mark.parametrize(
    "family, values, name, bounds",
    [
        ("cartpole-mass", {"masspole": -0.1}, "masspole", "[0.005, 2]"),  # negative mass
        ("cartpole-mass", {"masspole": 3.0}, "masspole", "[0.005, 2]"),
        ("acrobot-links", {"LINK_MASS_1": 1.0, "LINK_MASS_2": 1.0, "LINK_LENGTH_1": 0.0},
         "LINK_LENGTH_1", "[0.1, 3]"),  # zero length
        ("cartpole-actuator", {"force_mag": 0.0}, "force_mag", "|force_mag| in [0.5, 30]"),
        ("cartpole-actuator", {"force_mag": -40.0}, "force_mag", "|force_mag| in [0.5, 30]"),
        ("cartpole-mass", {"masspole": float("nan")}, "masspole", "[0.005, 2]"),
    ],
)
def test_value_outside_physical_bounds(family, values, name, bounds):
    fam = load_family(family)
    with pytest.raises(FamilyError) as e:
        fam.values_tensor(values)
    assert name in str(e.value) and bounds in str(e.value)
    with pytest.raises(FamilyError) as e:
        fam.make_env(values)
    assert name in str(e.value) and bounds in str(e.value)


def test_signed_values_accept_either_sign():
    fam = load_family("cartpole-actuator")
    assert fam.values_tensor({"force_mag": -7.5}).tolist() == [-7.5]
    env = fam.make_env([-7.5])
    try:
        assert env.unwrapped.force_mag == -7.5
    finally:
        env.close()


def test_unknown_parameter_name_and_wrong_count():
    fam = load_family("cartpole-mass-length")
    with pytest.raises(FamilyError, match=r"no parameter 'mass'.*masspole, length"):
        fam.values_tensor({"mass": 0.1, "length": 0.5})
    with pytest.raises(FamilyError, match=r"no parameter 'bogus'"):
        fam.spec("bogus")
    with pytest.raises(FamilyError, match=r"no value given for parameter\(s\) length"):
        fam.values_tensor({"masspole": 0.1})
    with pytest.raises(FamilyError, match=r"2 parameter\(s\).*got 3"):
        fam.values_tensor([0.1, 0.5, 0.3])


# --------------------------------------------------------------------------------------
# Load-time validation: a family that loads can run (one FamilyError naming file and key)
# --------------------------------------------------------------------------------------
CARTPOLE_MASS = """\
name: cp
description: CartPole-v1 with a varying pole mass
env_id: CartPole-v1
params:
  masspole:
    bounds: [0.005, 2.0]
    train: {ranges: [[0.05, 0.5]]}
derived:
  total_mass: masspole + masscart
  polemass_length: masspole * length
heldout:
  interpolation: {values: [0.1]}
  extrapolation: {values: [1.0]}
"""


def load_text(tmp_path: Path, text: str, name: str = "bad.yaml") -> Family:
    path = tmp_path / name
    path.write_text(text)
    return load_family(path)


def refused(tmp_path: Path, text: str, match: str, name: str = "bad.yaml") -> str:
    """Load ``text`` as a family file, expect one FamilyError line matching ``match``."""
    with pytest.raises(FamilyError, match=match) as e:
        load_text(tmp_path, text, name)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and str(tmp_path / name) in msg
    return msg


def test_base_text_of_these_tests_loads(tmp_path):
    fam = load_text(tmp_path, CARTPOLE_MASS, "cp.yaml")
    assert fam.param_names == ("masspole",) and set(fam.derived) == {"total_mass", "polemass_length"}


@pytest.mark.parametrize("text, key, first", [
    (CARTPOLE_MASS + "env_id: Pendulum-v1\n", "env_id", 3),
    (CARTPOLE_MASS.replace("    train:", "    bounds: [0.1, 1.0]\n    train:"), r"params\.masspole\.bounds", 6),
    (CARTPOLE_MASS.replace("  polemass_length:", "  total_mass: masspole\n  polemass_length:"),
     r"derived\.total_mass", 9),
])
def test_duplicate_key_refused(tmp_path, text, key, first):
    # PyYAML keeps the last of two equal keys without a word; the loader names the dotted key
    refused(tmp_path, text, rf"bad\.yaml: malformed YAML at line \d+, column \d+: duplicate key '{key}' "
                            rf"\(first defined on line {first}\)")


def test_unknown_env_id_refused_at_load(tmp_path):
    # training on the batched simulator would work; evaluation would die in gym.make
    text = CARTPOLE_MASS.replace("env_id: CartPole-v1", "env_id: CartPol-v1")
    msg = refused(tmp_path, text.replace("derived:", "batched: cartpole\nderived:"),
                  r"bad\.yaml: env_id: gym\.make\('CartPol-v1'\) fails \(NameNotFound")
    assert "registered Gymnasium id" in msg


def test_env_kwargs_the_env_does_not_take_refused(tmp_path):
    refused(tmp_path, CARTPOLE_MASS + "env_kwargs: {gravity: 3.7}\n",
            r"bad\.yaml: env_kwargs: gym\.make\('CartPole-v1', gravity=3\.7\) fails \(TypeError.*'gravity'")
    ok = load_text(tmp_path, CARTPOLE_MASS + "env_kwargs: {sutton_barto_reward: true}\n", "ok.yaml")
    assert ok.env_kwargs == {"sutton_barto_reward": True}


@pytest.mark.parametrize("section, line, key, hint", [
    ("params", None, r"params\.masspol", "masspole"),
    ("fixed", "fixed: {gravty: 3.0}\n", r"fixed\.gravty", "gravity"),
    ("derived", "  total_mas: masspole + masscart\n", r"derived\.total_mas", "total_mass"),
])
def test_attribute_the_env_lacks_refused_at_load(tmp_path, section, line, key, hint):
    if section == "params":
        text = CARTPOLE_MASS.replace("  masspole:\n", "  masspol:\n").replace("masspole +", "masspol +")
        text = text.replace("masspole *", "masspol *")
    elif section == "fixed":
        text = CARTPOLE_MASS + line
    else:
        text = CARTPOLE_MASS.replace("derived:\n", "derived:\n" + line)
    refused(tmp_path, text, rf"bad\.yaml: {key}: CartPole-v1 has no attribute .*did you mean '{hint}'")


@pytest.mark.parametrize("expr, bounds, problem", [
    ("length / (masspole - 2.0)", [0.005, 2.0], r"divides by zero at masspole=2$"),  # at the upper bound
    ("masspole * lenght", [0.005, 2.0], r"CartPole-v1 has no attribute 'lenght' \(did you mean 'length'\?\)"),
    ("masspole ** 1000", [0.005, 5.0], r"overflows at masspole=5$"),
    ("10.0 ** 400", [0.005, 2.0], r"overflows at masspole=0\.005$"),
    ("9 ** 9 ** 9", [0.005, 2.0], r"overflows at"),  # numbers are floats: no unbounded int power
    ("1e308 * 10 * masspole", [0.005, 2.0], r"is inf at masspole=0\.005; .*finite number"),
    ("(masspole - 1) ** 0.5", [0.005, 2.0], r"is \(.*j\) at masspole=0\.005; .*finite number"),  # complex
])
def test_derived_that_cannot_be_evaluated_refused_at_load(tmp_path, expr, bounds, problem):
    text = CARTPOLE_MASS.replace("masspole * length", expr).replace("[0.005, 2.0]", str(bounds))
    refused(tmp_path, text, rf"bad\.yaml: derived\.polemass_length: .*{problem}")


def test_derived_checked_at_both_signs_of_a_signed_parameter(tmp_path):
    raw = raw_builtin("cartpole-actuator")
    raw["derived"] = {"tau": "0.002 * force_mag ** 0.5"}  # fine for a positive gain only
    write_yaml(tmp_path / "bad.yaml", raw)
    with pytest.raises(FamilyError, match=r"bad\.yaml: derived\.tau: .* at force_mag=-0\.5; "):
        load_family(tmp_path / "bad.yaml")


def test_probe_values_are_the_corners_or_each_end_with_the_others_mid():
    assert load_family("cartpole-actuator").probe_values().flatten().tolist() == [0.5, 30.0, -0.5, -30.0]
    corners = load_family("acrobot-links").probe_values()
    assert corners.shape == (8, 3) and {tuple(r) for r in corners.tolist()} == set(
        itertools.product([0.1, 3.0], repeat=3))
    # 7 parameters: 128 corners is past the cap, so each end with the others mid-train, plus all-low/all-high
    names = [f"p{i}" for i in range(7)]
    raw = {"name": "many", "env_id": "CartPole-v1",
           "params": {n: {"bounds": [1.0, 9.0], "train": {"ranges": [[2.0, 4.0]]}} for n in names},
           "heldout": {"interpolation": {"values": [dict.fromkeys(names, 3.0)]},
                       "extrapolation": {"values": [dict.fromkeys(names, 8.0)]}}}
    pts = family_from_dict(raw).probe_values()
    assert pts.shape == (2 + 7 * 2, 7)
    assert pts[0].tolist() == [1.0] * 7 and pts[1].tolist() == [9.0] * 7
    for j in range(7):
        ends = {tuple(r) for r in pts[2:].tolist() if sum(x != 3.0 for x in r) == 1 and r[j] != 3.0}
        assert ends == {tuple([3.0] * j + [x] + [3.0] * (6 - j)) for x in (1.0, 9.0)}


def test_apply_names_the_derived_key_and_the_values_at_run_time():
    # a family the load check cannot catch (it breaks inside the bounds) fails clearly in apply
    raw = raw_builtin("cartpole-mass")
    raw["derived"]["polemass_length"] = "length / (masspole - 0.3)"
    fam = family_from_dict(raw, source="mid.yaml")
    env = gym.make("CartPole-v1")
    try:
        fam.apply(env, [0.2])
        with pytest.raises(FamilyError, match=r"mid\.yaml: derived\.polemass_length: .*divides by zero at "
                                              r"masspole=0\.3$"):
            fam.apply(env, [0.3])
    finally:
        env.close()


def test_a_load_builds_one_env(monkeypatch):
    made = []
    real = gym.make
    monkeypatch.setattr(gym, "make", lambda *a, **k: made.append(a[0]) or real(*a, **k))
    load_family("cartpole-mass-length")  # env, attribute, stale and derived checks together
    assert made == ["CartPole-v1"]


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """A family whose description nests ``levels`` anchors of ``width`` aliases each."""
    lines = ["name: laughs", "env_id: CartPole-v1", "description:",
             f"  - &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"  - &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n" + CARTPOLE_MASS.split("env_id: CartPole-v1\n", 1)[1]


def test_alias_bomb_refused_before_expansion(tmp_path):
    import time
    import tracemalloc

    tracemalloc.start()
    try:
        start = time.perf_counter()
        msg = refused(tmp_path, billion_laughs(), r"bad\.yaml: too many YAML aliases at line \d+, column \d+: "
                                                  r"the aliases up to 'description\[\d\]\[\d\]' stand for more than")
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5 and peak < 20 * 2**20, (elapsed, peak)
    assert "billion laughs" in msg
    # a few aliases of small blocks are fine
    fam = load_text(tmp_path, billion_laughs(levels=2, width=3), "ok.yaml")
    assert fam.description == str([["lol"] * 3, [["lol"] * 3] * 3])


def test_family_file_over_1_mib_refused_before_parsing(tmp_path):
    text = CARTPOLE_MASS + "# " + "x" * (1 << 20) + "\n"
    refused(tmp_path, text, r"bad\.yaml: file too large: more than 1 MiB")


def test_cli_refuses_a_bad_family_with_one_line_and_no_run_dir(tmp_path, capsys):
    from hyperrl.cli import main_guard
    from hyperrl.train import main as train_main

    bad = tmp_path / "bad.yaml"
    bad.write_text(CARTPOLE_MASS.replace("env_id: CartPole-v1", "env_id: CartPol-v1"))
    run = tmp_path / "run"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main_guard(train_main)(["--env-family", str(bad), "--total-steps", "64", "--device", "cpu",
                                "--run-dir", str(run)])
    assert exc.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith(f"error: family file {bad}: env_id: "), err
    assert "Traceback" not in err[0] and not run.exists()


# --------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTINS)
def test_sampling_reproducible_and_inside_train(name):
    fam = load_family(name)
    a = fam.sample(2000, gen(1), dtype=torch.float64)
    b = fam.sample(2000, gen(1), dtype=torch.float64)
    c = fam.sample(2000, gen(2), dtype=torch.float64)
    assert a.shape == (2000, fam.num_params) and a.dtype == torch.float64
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert bool(fam.in_train_range(a).all())
    fam.validate(a)  # train draws are physical
    assert fam.sample(3, gen(0)).dtype == torch.float32


def test_log_uniform_median():
    fam = load_family("cartpole-mass")
    x = fam.sample(20000, gen(0), dtype=torch.float64)[:, 0]
    mid = 0.5 * (math.log(0.05) + math.log(0.5))
    assert float(torch.log(x).median()) == pytest.approx(mid, abs=0.05)
    # uniform would put the median at 0.275, far above exp(mid) ~ 0.158
    assert float(x.median()) < 0.2


def test_uniform_mean():
    fam = load_family("cartpole-mass-length")
    x = fam.sample(20000, gen(0), dtype=torch.float64)[:, 1]  # length uniform 0.25-0.75
    assert float(x.mean()) == pytest.approx(0.5, abs=0.01)


def test_union_of_intervals_mass_proportional_to_length():
    fam = load_family("cartpole-actuator")  # [-15,-5] u [5,15], equal lengths
    x = fam.sample(20000, gen(0), dtype=torch.float64)[:, 0]
    frac_neg = float((x < 0).double().mean())
    assert frac_neg == pytest.approx(0.5, abs=0.02)
    assert bool(((x.abs() >= 5) & (x.abs() <= 15)).all())

    raw = raw_builtin("cartpole-mass")
    raw["params"]["masspole"]["train"] = {"dist": "uniform", "ranges": [[0.1, 0.2], [0.5, 0.8]]}
    raw["heldout"] = {"interpolation": {"values": [0.15, 0.6]}, "extrapolation": {"values": [0.3, 1.0]}}
    fam = family_from_dict(raw)
    x = fam.sample(20000, gen(3), dtype=torch.float64)[:, 0]
    assert float((x <= 0.2).double().mean()) == pytest.approx(0.25, abs=0.02)
    assert not bool(((x > 0.2) & (x < 0.5)).any())


# --------------------------------------------------------------------------------------
# Context
# --------------------------------------------------------------------------------------
def test_context_train_ends_map_to_unit_interval():
    fam = load_family("cartpole-mass")  # log context over [0.05, 0.5]
    c = fam.context(torch.tensor([[0.05], [0.5], [math.sqrt(0.05 * 0.5)]], dtype=torch.float64))
    assert c.shape == (3, 1)
    assert torch.allclose(c[:, 0], torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64), atol=1e-9)

    fam = load_family("pendulum-mass-length")
    c = fam.context(torch.tensor([[0.5, 0.5], [1.5, 1.5], [1.0, 1.0]]))
    assert torch.allclose(c[0], torch.tensor([-1.0, -1.0]), atol=1e-6)
    assert torch.allclose(c[1], torch.tensor([1.0, 1.0]), atol=1e-6)
    assert c[2, 1].item() == pytest.approx(0.0, abs=1e-6)  # linear l: middle -> 0
    assert c[2, 0].item() > 0.0  # log m: 1.0 is above the log-middle sqrt(0.75)
    assert fam.context_dim == 2


def test_context_signed_gives_sign_and_magnitude():
    fam = load_family("cartpole-actuator")
    assert fam.context_dim == 2
    c = fam.context(torch.tensor([[-5.0], [15.0], [-15.0], [5.0], [10.0]]))
    assert c.shape == (5, 2)
    assert c[:, 0].tolist() == [-1.0, 1.0, -1.0, 1.0, 1.0]
    assert torch.allclose(c[:4, 1], torch.tensor([-1.0, 1.0, 1.0, -1.0]), atol=1e-6)
    # same magnitude, opposite sign: same magnitude feature
    c2 = fam.context(torch.tensor([[-10.0]]))
    assert c2[0, 0] == -1.0 and c2[0, 1] == pytest.approx(c[4, 1].item())


@pytest.mark.parametrize("name", ["cartpole-actuator", "cartpole-mass-length", "acrobot-links", "pendulum-actuator"])
def test_context_any_leading_shape(name):
    fam = load_family(name)
    v = fam.sample(24, gen(0))
    flat = fam.context(v)
    assert flat.shape == (24, fam.context_dim) and flat.dtype == torch.float32
    shaped = fam.context(v.reshape(2, 3, 4, fam.num_params))
    assert shaped.shape == (2, 3, 4, fam.context_dim)
    assert torch.equal(shaped.reshape(24, -1), flat)
    single = fam.context(v[5])
    assert single.shape == (fam.context_dim,) and torch.equal(single, flat[5])
    assert fam.context(v.double()).dtype == torch.float64
    assert bool((flat.abs() <= 1.0 + 1e-5).all())  # train draws stay inside [-1, 1]


# --------------------------------------------------------------------------------------
# Held-out sets, split_of, grid
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BUILTINS)
def test_heldout_sets(name):
    fam = load_family(name)
    interp = fam.heldout_values("interpolation")
    extra = fam.heldout_values("extrapolation")
    assert interp.dtype == extra.dtype == torch.float64
    assert interp.shape[1] == extra.shape[1] == fam.num_params
    assert len(interp) >= 1 and len(extra) >= 1
    assert bool(fam.in_train_range(interp).all())
    assert not bool(fam.in_train_range(extra).any())
    fam.validate(interp)
    fam.validate(extra)
    assert fam.split_of(interp) == ["interpolation"] * len(interp)
    assert fam.split_of(extra) == ["extrapolation"] * len(extra)
    # a copy: editing it leaves the family alone
    interp[0, 0] = -1.0
    assert fam.heldout_values("interpolation")[0, 0] != -1.0
    with pytest.raises(FamilyError, match="unknown split"):
        fam.heldout_values("test")


def test_cartpole_mass_heldout_counts():
    fam = load_family("cartpole-mass")
    assert len(fam.heldout_values("interpolation")) >= 8
    assert len(fam.heldout_values("extrapolation")) >= 8
    extra = fam.heldout_values("extrapolation")[:, 0]
    assert bool((extra < 0.05).any()) and bool((extra > 0.5).any())  # both sides


@pytest.mark.parametrize("name", ["cartpole-mass-length", "pendulum-mass-length"])
def test_extrapolation_grids_include_corners(name):
    fam = load_family(name)
    extra = fam.heldout_values("extrapolation")
    lo, hi = extra.min(0).values, extra.max(0).values
    rows = {tuple(r) for r in extra.tolist()}
    for corner in itertools.product(*zip(lo.tolist(), hi.tolist())):
        assert corner in rows
    # and the interpolation grid keeps every grid point (all inside)
    assert len(fam.heldout_values("interpolation")) == 16


def test_split_of_mixed_points():
    fam = load_family("cartpole-mass-length")
    pts = torch.tensor([[0.1, 0.5], [0.7, 0.5], [0.1, 0.9], [0.5, 0.75], [0.05, 0.25]])
    assert fam.split_of(pts) == ["interpolation", "extrapolation", "extrapolation",
                                 "interpolation", "interpolation"]
    fam = load_family("cartpole-actuator")
    assert fam.split_of(torch.tensor([[-10.0], [0.7], [10.0], [-20.0]])) == [
        "interpolation", "extrapolation", "interpolation", "extrapolation"]


def test_grid():
    fam = load_family("cartpole-mass")  # log-spaced over the bounds
    g = fam.grid(5)
    assert g.shape == (5, 1) and g.dtype == torch.float64
    fam.validate(g)  # the log-spaced ends stay inside the bounds (no 0.00499... rounding)
    assert g[0, 0].item() == pytest.approx(0.005) and g[-1, 0].item() == pytest.approx(2.0)
    ratios = g[1:, 0] / g[:-1, 0]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios))

    fam = load_family("cartpole-mass-length")
    g = fam.grid(3)
    assert g.shape == (9, 2)
    assert sorted(set(g[:, 1].tolist())) == pytest.approx([0.02, 1.01, 2.0])  # linear length
    fam.validate(g)

    fam = load_family("cartpole-actuator")  # signed: both signs
    g = fam.grid(4)
    assert g.shape == (8, 1)
    assert (g < 0).sum() == 4 and (g > 0).sum() == 4
    assert torch.equal(g[:4].flip(0), -g[4:])
    fam.validate(g)


@pytest.mark.parametrize("name", BUILTINS)
def test_grid_points_are_physical(name):
    fam = load_family(name)
    g = fam.grid(3)
    per_axis = [6 if p.signed else 3 for p in fam.params]
    assert g.shape == (math.prod(per_axis), fam.num_params)
    fam.validate(g)


def test_family_from_dict_copy_is_independent():
    raw = raw_builtin("acrobot-links")
    before = copy.deepcopy(raw)
    fam = family_from_dict(raw, source="mem")
    assert raw == before and fam.source == "mem"
    assert fam.derived == {"LINK_COM_POS_1": "0.5 * LINK_LENGTH_1"}


def test_label_is_the_one_spelling_of_a_variant():
    fam = load_family("pendulum-mass-length")
    assert fam.label(torch.tensor([2.0, 0.5])) == "m=2,l=0.5"
    assert fam.label([0.30000001, 1.7]) == "m=0.3,l=1.7"
    assert load_family("cartpole-actuator").label(torch.tensor([[-1.0]])) == "force_mag=-1"


def test_a_point_train_range_is_a_one_variant_family(tmp_path):
    """An oracle's family: train on exactly one value; its context is 0 (no spread to scale by)."""
    from hyperrl.families import FamilyError, family_from_dict
    from hyperrl.yamlio import read_yaml_file

    raw = read_yaml_file(load_family("cartpole-actuator").source)
    raw["params"]["force_mag"]["train"] = {"dist": "uniform", "ranges": [[-4.0, -4.0]]}
    raw["heldout"] = {"interpolation": {"values": [-4.0]}, "extrapolation": {"values": [4.0]}}
    fam = family_from_dict(raw, "one.yaml")
    v = fam.sample(5, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(v, torch.full((5, 1), -4.0, dtype=torch.float64))
    assert torch.equal(fam.context(v), torch.tensor([[-1.0, 0.0]] * 5, dtype=torch.float64))
    raw["params"]["force_mag"]["train"]["ranges"] = [[-4.0, -4.0], [5.0, 6.0]]
    with pytest.raises(FamilyError, match="a point \\[v, v\\] must be the only range"):
        family_from_dict(raw, "two.yaml")
    raw["params"]["force_mag"]["train"]["ranges"] = [[-3.0, -4.0]]
    with pytest.raises(FamilyError, match="low must be <= high"):
        family_from_dict(raw, "bad.yaml")
