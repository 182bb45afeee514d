"""Tests of ``hyperrl.compare``'s evaluation protocol (Agarwal et al. 2021): IQM, probability
of improvement and performance profiles with their stratified-bootstrap intervals, method
labels, normalised scores, the outputs and the one-line errors.

Run dirs here are written by hand (run.json, metrics.json, config.yaml, family.yaml and an
``eval/heldout-all/results.json`` built by ``hyperrl.evaluate.build_results``), so every
score is known; the compare tests that use real trained runs are in tests/test_baselines.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import helpers
import pytest
import torch

from hyperrl import compare as C
from hyperrl.compare import main as compare_main
from hyperrl.episodes import EpisodeStats
from hyperrl.evaluate import build_results, select_values
from hyperrl.families import builtin_families_dir, load_family

FAMILY = "cartpole-mass"
FAM = load_family(FAMILY)
HELDOUT = select_values(FAM)  # 9 interpolation + 9 extrapolation variants
M = HELDOUT.values.shape[0]
PNG = b"\x89PNG\r\n\x1a\n"


def fake_run(path: Path, returns: Any = None, method: str = "hyperrl", config: str | None = None,
             seed: int = 0, keep: Any = None) -> Path:
    """A finished run dir of ``method``; ``returns`` ``[M]`` (one per held-out variant, in
    HELDOUT's order) become its eval/heldout-all/results.json, ``keep`` ``[M]`` bool picks
    the variants it was evaluated on."""
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"method": method, "family": FAMILY, "seed": seed}))
    (path / "metrics.json").write_text(json.dumps({"env_steps": 1000, "wall_clock_s": 1.0,
                                                   "eval_interpolation_return": 1.0,
                                                   "eval_extrapolation_return": 2.0}))
    shutil.copyfile(builtin_families_dir() / f"{FAMILY}.yaml", path / "family.yaml")
    if config is not None:
        (path / "config.yaml").write_text(config)
    if returns is not None:
        r = torch.as_tensor(returns, dtype=torch.float64).reshape(-1)
        k = torch.ones(M, dtype=torch.bool) if keep is None else torch.as_tensor(keep)
        sel = SimpleNamespace(splits=[s for s, kk in zip(HELDOUT.splits, k.tolist()) if kk])
        stats = EpisodeStats(HELDOUT.values[k], r[k][:, None], torch.full((int(k.sum()), 1), 10))
        results = build_results(SimpleNamespace(family=FAM, run_dir=path, method=method), sel, stats, {})
        (path / "eval" / "heldout-all").mkdir(parents=True)
        (path / "eval" / "heldout-all" / "results.json").write_text(json.dumps(results))
    return path


def fixed_random(value: float = 10.0):
    """A stand-in for compare.random_returns: every variant's random-policy return is ``value``."""
    return lambda family, values, episodes=20, seed=0: np.full(values.shape[0], value)


# ---------------------------------------------------------------------------------------
# Statistics by hand
# ---------------------------------------------------------------------------------------
def test_probability_of_improvement_by_hand():
    # x=1 beats 0: 1; x=2 beats 0 and ties both 2s: 1 + 1/2 + 1/2; x=3 beats all: 3 -> 6/9
    assert C.probability_of_improvement([[1], [2], [3]], [[2], [2], [0]]) == pytest.approx(2 / 3, abs=1e-15)
    assert C.probability_of_improvement([[2], [2], [0]], [[1], [2], [3]]) == pytest.approx(1 / 3, abs=1e-15)
    # averaged over variants: variant 0 gives 2/3, variant 1 (x always lower) gives 0
    x, y = [[1, 0], [2, 0], [3, 0]], [[2, 5], [2, 5], [0, 5]]
    assert C.probability_of_improvement(x, y) == pytest.approx(1 / 3, abs=1e-15)
    assert C.probability_of_improvement(x, x) == 0.5  # identical runs: every pair a tie or mirrored
    with pytest.raises(ValueError):
        C.probability_of_improvement([[1, 2]], [[1]])


def test_iqm_and_improvement_intervals():
    x = [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0], [100.0, 7.0]]  # 8 scores: IQM drops 1, 2 and 7, 100
    assert C.iqm(x) == pytest.approx((3 + 4 + 5 + 6) / 4)
    one = [[0.3, 0.9]]  # one run: every interval has zero width
    assert C.stratified_bootstrap_ci(one) == (0.6, 0.6)
    assert C.probability_of_improvement_ci(one, [[0.3, 0.1]], reps=50) == (0.75, 0.75)
    assert C.probability_of_improvement_ci(np.ones((3, 2)), np.zeros((4, 2)), reps=50) == (1.0, 1.0)
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, (6, 5)), rng.normal(0, 1, (4, 5))
    lo, hi = C.probability_of_improvement_ci(a, b, reps=500, seed=4)
    assert (lo, hi) == C.probability_of_improvement_ci(a, b, reps=500, seed=4)  # seeded
    assert 0 <= lo < C.probability_of_improvement(a, b) < hi <= 1


def test_the_bootstrap_never_mixes_variants():
    runs, variants = 4, 3
    x = 100.0 * np.arange(variants) + np.arange(runs)[:, None]  # variant j holds 100 j + run
    s = C.stratified_resample(x, 300, np.random.default_rng(0))
    assert s.shape == (300, runs, variants)
    for j in range(variants):
        assert set(np.unique(s[:, :, j])) <= set(x[:, j]) and len(np.unique(s[:, :, j])) == runs
    assert not all(np.array_equal(rep, x) for rep in s)  # runs are redrawn
    seen: list[np.ndarray] = []
    C.stratified_bootstrap_ci(x, lambda rep: seen.append(rep) or 0.0, reps=50)
    assert all(set(rep[:, j]) <= set(x[:, j]) for rep in seen for j in range(variants))
    # one variant with runs 0 and 10, another with 10 and 0: redrawn per variant, the means
    # spread; resampling whole runs (rows) would always give 5
    lo, hi = C.stratified_bootstrap_ci([[0.0, 10.0], [10.0, 0.0]], "mean", reps=2000)
    assert lo < 5.0 < hi


def test_performance_profile_at_known_taus():
    scores = [[0.0, 0.5], [1.0, 2.0]]
    taus = [-1.0, 0.0, 0.5, 0.99, 2.0]  # strictly above tau
    assert C.performance_profile(scores, taus).tolist() == [1.0, 0.75, 0.5, 0.5, 0.0]
    lo, hi = C.performance_profile_band([[0.0, 0.5, 1.0, 2.0]], taus, reps=30)  # one run
    assert lo.tolist() == hi.tolist() == [1.0, 0.75, 0.5, 0.5, 0.0]
    lo, hi = C.performance_profile_band([[0.0], [1.0]], [0.5], reps=2000)  # 0, 1/2 or 1 above
    assert lo.tolist() == [0.0] and hi.tolist() == [1.0]
    taus = C.profile_taus([np.array([[0.2, 1.4]]), np.array([[-0.5]])], normalised=True)
    assert taus[0] == -0.5 and taus[-1] == 1.4 and len(taus) == C.PROFILE_POINTS
    assert C.profile_taus([np.array([[500.0]])], normalised=False)[[0, -1]].tolist() == [499.5, 500.5]


def test_score_matrix_aligns_variants_by_label():
    m, cols, per_variant = C.score_matrix([[1, 2, 3], [30, 10, 20]], [["a", "b", "c"], ["c", "a", "b"]])
    assert m.tolist() == [[1, 2, 3], [10, 20, 30]] and cols == ["a", "b", "c"] and per_variant
    m, cols, per_variant = C.score_matrix([[1, 3], [5, 7]], [["a", "b"], ["a", "c"]])  # other variants
    assert m.tolist() == [[2.0], [6.0]] and cols is None and not per_variant


# ---------------------------------------------------------------------------------------
# Method labels
# ---------------------------------------------------------------------------------------
def test_method_labels(tmp_path):
    cases = {
        "model:\n  hidden_sizes: [8]\n": "hyper",  # a run from before model.arch: a hypernetwork
        "model:\n  arch: concat\nenv:\n  distractors: 0\n": "concat",
        "model:\n  arch: hyper\nenv:\n  num_envs: 4\n  distractors: 100\n": "hyper-d100",
        "model:\n  arch: cgate\nenv:\n  distractors: 5\n": "cgate-d5",
    }
    for i, (config, label) in enumerate(cases.items()):
        assert C.method_label(fake_run(tmp_path / f"r{i}", config=config), "hyperrl") == label
    assert C.method_label(fake_run(tmp_path / "old"), "hyperrl") == "hyper"  # no config.yaml
    for method in ("concat", "dr", "oracle"):
        assert C.method_label(tmp_path, method) == f"sb3-{method}"
    assert C.method_label(tmp_path, "adapted") == "adapted"
    bad_configs = [("model:\n  arch: [1]\n", "model.arch must be"),
                   ("env:\n  distractors: -1\n", "env.distractors must be an integer >= 0"),
                   ("env:\n  distractors: true\n", "env.distractors must be"),
                   ("model: [\n", "is corrupt")]
    for i, (config, needle) in enumerate(bad_configs):
        bad = fake_run(tmp_path / f"bad{i}", config=config)
        with pytest.raises(C.HyperrlError, match=needle):
            C.method_label(bad, "hyperrl")


def test_labels_group_and_order_the_tables(tmp_path, capsys):
    r = np.linspace(20, 200, M)
    dirs = [fake_run(tmp_path / "b", r, "concat"), fake_run(tmp_path / "a", r, "adapted"),
            fake_run(tmp_path / "d", r, config="model:\n  arch: hyper\nenv:\n  distractors: 100\n"),
            fake_run(tmp_path / "c", r, config="model:\n  arch: concat\n"),
            fake_run(tmp_path / "h", r, config="model:\n  arch: hyper\n"),
            fake_run(tmp_path / "x", r, config="model:\n  arch: adapter\n")]
    out = tmp_path / "cmp"
    assert compare_main([*map(str, dirs), "--out", str(out), "--bootstrap-reps", "20"]) == 0
    data = json.loads((out / "comparison.json").read_text())
    order = ["hyper", "hyper-d100", "adapter", "concat", "adapted", "sb3-concat"]
    assert list(data["families"][FAMILY]) == order
    assert list(data["protocol"][FAMILY]["interpolation"]["methods"]) == order


# ---------------------------------------------------------------------------------------
# Normalised scores and the outputs
# ---------------------------------------------------------------------------------------
def test_normalised_protocol_outputs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(C, "random_returns", fixed_random(10.0))
    base = np.linspace(60, 400, M)
    hyper = [fake_run(tmp_path / f"h{s}", base + 10 * s, seed=s) for s in range(3)]
    sb3 = [fake_run(tmp_path / f"c{s}", base - 50 + 5 * s, "concat", seed=s) for s in range(2)]
    oracle_a = fake_run(tmp_path / "oa", np.full(M, 410.0), "oracle", keep=np.arange(M) % 2 == 0)
    oracle_b = fake_run(tmp_path / "ob", np.full(M, 510.0), "oracle", keep=np.arange(M) >= 4)
    oracle_c = fake_run(tmp_path / "oc", np.full(M, 300.0), "oracle")  # never the best
    out = tmp_path / "cmp"
    capsys.readouterr()
    assert compare_main([*map(str, hyper + sb3), "--out", str(out), "--oracle", str(oracle_a), str(oracle_b),
                         "--oracle", str(oracle_c), "--bootstrap-reps", "200", "--random-episodes", "3"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["comparison.json", "comparison.md", "comparison.png", "improvement.png", "iqm.png",
                     "profiles.png"]
    assert all((out / n).read_bytes()[:8] == PNG for n in names if n.endswith(".png"))

    data = json.loads((out / "comparison.json").read_text())
    assert data["score"] == "normalised" and data["reference"] == "hyper"
    idx = np.arange(M)  # the best oracle run covering each variant:
    oracle = np.where(idx >= 4, 510.0, np.where(idx % 2 == 0, 410.0, 300.0))
    variants = data["normalisation"]["variants"][FAMILY]
    labels = [FAM.label(v) for v in HELDOUT.values]
    assert [variants[k]["oracle"] for k in labels] == oracle.tolist()
    assert {variants[k]["random"] for k in labels} == {10.0}
    want = {"hyper": np.stack([(base + 10 * s - 10) / (oracle - 10) for s in range(3)]),
            "sb3-concat": np.stack([(base - 50 + 5 * s - 10) / (oracle - 10) for s in range(2)])}
    for split in ("interpolation", "extrapolation"):
        cols = np.array([s == split for s in HELDOUT.splits])
        panel = data["protocol"][FAMILY][split]
        for m, w in want.items():
            s = panel["methods"][m]
            assert np.allclose(s["scores"], w[:, cols], rtol=0, atol=1e-12)
            assert s["variants"] == [k for k, c in zip(labels, cols) if c]
            assert s["iqm"] == pytest.approx(C.iqm(w[:, cols]), abs=1e-12)
            assert s["mean"] == pytest.approx(w[:, cols].mean(), abs=1e-12)
        imp = panel["methods"]["sb3-concat"]["improvement"]
        assert imp["p"] == 1.0 and imp["ci95"] == [1.0, 1.0]  # every hyper run beats every concat run
        ratio = panel["methods"]["hyper"]["iqm"] / panel["methods"]["sb3-concat"]["iqm"]
        assert panel["methods"]["sb3-concat"]["iqm_ratio"] == pytest.approx(ratio)
        prof = panel["profile"]
        assert prof["taus"][0] == 0.0 and prof["taus"][-1] == 1.0  # every score is in [0, 1]
        assert prof["methods"]["hyper"]["fraction"][0] == 1.0  # all scores are above 0 ...
        assert prof["methods"]["hyper"]["fraction"][-1] == 0.0  # ... and none above the top

    md = (out / "comparison.md").read_text()
    assert md in capsys.readouterr().out
    assert "#### interpolation: normalised score" in md and "#### extrapolation: normalised score" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| sb3-concat | 2 × 9 |"))
    assert "| 1.00 [1.00, 1.00] |" in row
    assert "| hyper | 3 × 9 |" in md and "| reference |" in md


def test_raw_protocol_without_oracle(tmp_path):
    r = np.linspace(20, 200, M)
    runs = [fake_run(tmp_path / "h", r), fake_run(tmp_path / "c", r[::-1].copy(), "concat")]
    out = tmp_path / "cmp"
    assert compare_main([*map(str, runs), "--out", str(out), "--bootstrap-reps", "10"]) == 0
    data = json.loads((out / "comparison.json").read_text())
    assert data["score"] == "return" and data["normalisation"] is None
    s = data["protocol"][FAMILY]["interpolation"]["methods"]["hyper"]
    assert s["scores"] == [r[:9].tolist()] and s["ci95"] == [s["iqm"], s["iqm"]]
    imp = data["protocol"][FAMILY]["interpolation"]["methods"]["sb3-concat"]["improvement"]
    assert imp["p"] == pytest.approx(np.mean(r[:9] > r[::-1][:9]))  # one run each: 0 or 1 per variant
    assert "#### interpolation: held-out return" in (out / "comparison.md").read_text()
    assert all((out / n).read_bytes()[:8] == PNG for n in ("iqm.png", "improvement.png", "profiles.png"))


def test_random_returns_are_those_of_uniform_actions_on_gymnasium_envs():
    values = torch.tensor([[0.1], [0.9]], dtype=torch.float64)
    got = C.random_returns(FAM, values, episodes=2, seed=7)
    assert got.tolist() == C.random_returns(FAM, values, episodes=2, seed=7).tolist()
    # the same episodes by hand: env i = variant * episodes + episode, reset with seed 7 + i,
    # all envs' actions drawn together from one generator seeded with 7
    gen = torch.Generator().manual_seed(7)
    envs = [FAM.make_env(values[i // 2]) for i in range(4)]
    for i, env in enumerate(envs):
        env.reset(seed=7 + i)
    ret, done = np.zeros(4), np.zeros(4, dtype=bool)
    while not done.all():
        actions = torch.randint(0, 2, (4,), generator=gen)
        for i, env in enumerate(envs):
            if not done[i]:
                _, r, term, trunc, _ = env.step(int(actions[i]))
                ret[i] += r
                done[i] = term or trunc
    assert got.tolist() == ret.reshape(2, 2).mean(1).tolist()
    assert (got > 5).all() and (got < 200).all()  # random play drops the pole quickly


def test_normalised_with_the_real_random_policy(tmp_path):
    runs = [fake_run(tmp_path / "h", np.full(M, 300.0))]
    oracle = fake_run(tmp_path / "o", np.full(M, 500.0), "oracle")
    out = tmp_path / "cmp"
    assert compare_main([str(runs[0]), "--oracle", str(oracle), "--out", str(out), "--bootstrap-reps", "10",
                         "--random-episodes", "2", "--random-seed", "3"]) == 0
    data = json.loads((out / "comparison.json").read_text())
    variants = data["normalisation"]["variants"][FAMILY]
    assert data["normalisation"]["random_policy"]["episodes"] == 2
    rand = C.random_returns(FAM, HELDOUT.values, episodes=2, seed=3)
    labels = [FAM.label(v) for v in HELDOUT.values]
    assert [variants[k]["random"] for k in labels] == rand.tolist()
    scores = data["protocol"][FAMILY]["interpolation"]["methods"]["hyper"]["scores"][0]
    assert scores == pytest.approx(((300 - rand) / (500 - rand))[:9].tolist(), abs=1e-12)


# ---------------------------------------------------------------------------------------
# Errors: one line, exit status 2, nothing written
# ---------------------------------------------------------------------------------------
def test_protocol_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(C, "random_returns", fixed_random(10.0))
    run = fake_run(tmp_path / "h", np.full(M, 100.0))
    partial = fake_run(tmp_path / "op", np.full(M, 500.0), "oracle", keep=np.arange(M) != 12)
    low = fake_run(tmp_path / "ol", np.where(np.arange(M) == 3, 10.0, 500.0), "oracle")
    no_eval = fake_run(tmp_path / "ne", method="oracle")
    other = fake_run(tmp_path / "pend", np.full(M, 500.0), "oracle")
    info = json.loads((other / "run.json").read_text())
    (other / "run.json").write_text(json.dumps({**info, "family": "pendulum-mass-length"}))
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    label = FAM.label(HELDOUT.values[12])
    cases = [
        (["--oracle", partial], f"no --oracle run covers variant {label} (extrapolation)"),
        (["--oracle", low], f"variant {FAM.label(HELDOUT.values[3])} of 'cartpole-mass': the oracle return 10 "),
        (["--reference", "nope"], "unknown --reference 'nope'; the methods compared are: hyper"),
        (["--oracle", tmp_path / "missing"], f"--oracle: run dir {tmp_path / 'missing'} does not exist"),
        (["--oracle", empty], f"--oracle: {empty} is not a hyperrl run dir"),
        (["--oracle", no_eval], "has no per-variant returns (scores from metrics.json)"),
        (["--oracle", other], "is a run of family 'pendulum-mass-length', which no RUN_DIR is"),
        (["--oracle", partial, partial], "is given twice"),
        (["--oracle", partial, "--random-episodes", "0"], "argument --random-episodes: must be an integer >= 1"),
    ]
    for extra, needle in cases:
        line = helpers.expect_cli_error(capsys, compare_main, [run, "--out", out, *extra])
        assert needle in line, line
        assert not out.exists()
    assert "not above the random-policy return 10" in helpers.expect_cli_error(
        capsys, compare_main, [run, "--out", out, "--oracle", low])
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
