"""Tests of the SB3 baselines (``hyperrl.baselines``: dr, concat, oracle run dirs and their
loaders) and of ``hyperrl.compare`` (IQM / stratified bootstrap, tables, chart, errors),
on tiny budgets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import helpers
import pytest
import torch

from hyperrl.runs import LoadedRun, load
from hyperrl.baselines import BaselineRun, main as baselines_main, select_variants
from hyperrl.cli import main_guard
from hyperrl.compare import aggregate, iqm, main as compare_main, stratified_bootstrap_ci
from hyperrl.errors import HyperrlError
from hyperrl.episodes import evaluate_values
from hyperrl.families import load_family

FAMILY = "cartpole-mass"
TINY_BASELINE = ["--total-steps", "512", "--eval-episodes", "1", "--device", "cpu"]
# a tiny hypernetwork run (as tests/test_train.py pins it)
TINY_TRAIN = [
    "env.num_envs=16", "ppo.num_steps=16", "eval.interval_steps=1024", "eval.episodes=1",
    "progress=false", "ppo.update_epochs=2", "ppo.num_minibatches=2", "ppo.target_kl=null",
    "model.hidden_sizes=[16,16]", "model.embed_sizes=[16,16]", "model.critic_hidden_sizes=[16,16]",
    "model.chunk_size=0", "stop_at_return=null", "histogram_interval_evals=0", "env.variant_slots=2",
    "dtype=float32",
]


def baseline(run_dir: Path, method: str, *extra: str, family: str = FAMILY, seed: int = 0) -> Path:
    args = ["--env-family", family, "--method", method, "--seed", str(seed), "--run-dir", str(run_dir),
            *TINY_BASELINE, *extra]
    assert main_guard(baselines_main)(args) == 0
    return run_dir


def usage_error(capsys, fn, args) -> str:
    return helpers.expect_cli_error(capsys, fn, args)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    return {
        "dr": baseline(root / "dr", "dr"),
        "concat": baseline(root / "concat", "concat"),
        "oracle": baseline(root / "oracle", "oracle", "--oracle-max-variants", "2"),
    }


# ---------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------
def test_iqm_hand_made_numbers():
    assert iqm(range(1, 9)) == pytest.approx(4.5)  # mean(3, 4, 5, 6)
    assert iqm([1, 2, 3, 4]) == pytest.approx(2.5)  # mean(2, 3)
    assert iqm([8, 1, 7, 2, 6, 3, 5, 1000]) == pytest.approx(5.25)  # unsorted, outlier dropped: mean(3,5,6,7)
    assert iqm([[1, 2, 3, 4], [5, 6, 7, 8]]) == pytest.approx(4.5)  # runs x variants pooled
    assert iqm([7.0]) == 7.0 and iqm([1, 3]) == 2.0 and iqm([1, 2, 6]) == 3.0  # n < 4: plain mean
    with pytest.raises(ValueError):
        iqm([])


def test_stratified_bootstrap_ci():
    assert stratified_bootstrap_ci(np.full((3, 4), 2.5)) == (2.5, 2.5)
    assert stratified_bootstrap_ci([[1.0, 2.0, 3.0]]) == (2.0, 2.0)  # one run: zero width
    # one variant, runs 0 and 10: resampled means are 0, 5 or 10 (p = 1/4, 1/2, 1/4)
    assert stratified_bootstrap_ci([[0.0], [10.0]], "mean", reps=4000) == (0.0, 10.0)
    # stratified: runs are redrawn per variant, so the two runs' complementary scores mix;
    # resampling whole runs would always give a mean of 5
    lo, hi = stratified_bootstrap_ci([[0.0, 10.0], [10.0, 0.0]], "mean", reps=4000)
    assert lo < 5.0 < hi
    x = np.random.default_rng(1).normal(100, 10, size=(5, 9))
    ci = stratified_bootstrap_ci(x, reps=3000, seed=3)
    assert ci == stratified_bootstrap_ci(x, reps=3000, seed=3)  # seeded
    assert ci[0] < iqm(x) < ci[1] and ci[1] - ci[0] < 20
    lo, hi = stratified_bootstrap_ci(x, statistic=lambda s: float(np.median(s)), reps=200)
    assert lo < float(np.median(x)) < hi


def test_aggregate():
    a = aggregate([[1, 2, 3, 4], [5, 6, 7, 8]], reps=500)
    assert a["n_runs"] == 2 and a["n_variants"] == 4 and a["per_variant"]
    assert a["iqm"] == pytest.approx(4.5) and a["mean"] == pytest.approx(4.5)
    assert a["run_means"] == [2.5, 6.5] and a["ci95"][0] <= 4.5 <= a["ci95"][1]
    b = aggregate([[1, 2, 3], [10]])  # different variants: one mean per run
    assert not b["per_variant"] and b["n_variants"] == 1 and b["mean"] == pytest.approx(6.0)
    assert aggregate([[3.0, 4.0]])["ci95"] == [3.5, 3.5]  # one run: a zero-width interval
    assert aggregate([[], []]) == {"n_runs": 0}


# ---------------------------------------------------------------------------------------
# Baseline run dirs and loaders
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dr", "concat"])
def test_shared_run_dir_layout_and_load(runs, method):
    run = runs[method]
    info = json.loads((run / "run.json").read_text())
    assert info["method"] == method and info["family"] == FAMILY and info["seed"] == 0
    assert info["total_steps"] == 512 and info["hyperparams"]["n_steps"] == 32  # zoo CartPole-v1
    assert info["vec_env"] == "batched"  # CartPole: SB3 steps the batched simulator (faster)
    assert (run / "family.yaml").read_text() == Path(load_family(FAMILY).source).read_text()
    assert (run / "model.zip").is_file() and list(run.glob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["env_steps"] == 512 and metrics["wall_clock_s"] > 0 and metrics["seed"] == 0
    assert len(metrics["heldout"]) == 18
    loaded = load(run)
    assert isinstance(loaded, BaselineRun) and isinstance(loaded, LoadedRun)
    assert loaded.method == method and loaded.family.name == FAMILY and loaded.info == metrics
    assert loaded.run_dir == run
    # the loader's actor reproduces the run's own final evaluation
    fam = loaded.family
    for split in ("interpolation", "extrapolation"):
        st = evaluate_values(loaded.actor_factory(), fam, fam.heldout_values(split), 1, seed=metrics["eval_seed"])
        assert float(st.mean.mean()) == pytest.approx(metrics[f"eval_{split}_return"])
    stoch = loaded.actor_factory(deterministic=False, seed=5)
    a = evaluate_values(stoch, fam, fam.heldout_values("interpolation"), 1, seed=1).returns
    b = evaluate_values(stoch, fam, fam.heldout_values("interpolation"), 1, seed=1).returns
    assert torch.equal(a, b)


def test_concat_observation_includes_context(runs):
    dr, concat = load(runs["dr"]), load(runs["concat"])
    fam = concat.family
    assert dr.model.observation_space.shape == (4,)
    assert concat.model.observation_space.shape == (4 + fam.context_dim,)
    values = {"masspole": 0.7}
    policy = concat.policy(values)
    obs = np.array([0.01, -0.2, 0.03, 0.1], dtype=np.float32)
    ctx = fam.context(torch.tensor([[0.7]], dtype=torch.float64))[0].numpy().astype(np.float32)
    action, _ = policy.predict(obs, deterministic=True)
    expected, _ = concat.model.predict(np.concatenate([obs, ctx]), deterministic=True)
    assert int(action) == int(expected)
    batch, _ = policy.predict(np.stack([obs, obs]), deterministic=True)
    assert batch.shape == (2,)
    assert dr.policy(values) is dr.model
    with pytest.raises(HyperrlError, match="outside its physical bounds"):
        concat.policy({"masspole": 50.0})


def test_oracle_run_dir_and_lookup(runs):
    run = runs["oracle"]
    info = json.loads((run / "run.json").read_text())
    assert info["oracle_split"] == "extrapolation" and info["oracle_max_variants"] == 2
    assert [v["values"]["masspole"] for v in info["variants"]] == [0.01, 1.0]  # evenly spaced: first, last
    assert [v["index"] for v in info["variants"]] == [0, 8]
    assert (run / "models" / "0.zip").is_file() and (run / "models" / "1.zip").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["env_steps"] == 2 * 512 and metrics["env_steps_per_variant"] == [512, 512]
    assert metrics["eval_interpolation_return"] is None and metrics["eval_extrapolation_return"] is not None
    assert [v["values"]["masspole"] for v in metrics["variants"]] == [0.01, 1.0]

    oracle = load(run)
    fam = oracle.family
    vals = torch.tensor([[1.0], [0.01], [1.0 * (1 + 1e-12)]], dtype=torch.float64)  # within 1e-9 relative
    assert oracle.model_index(vals) == [1, 0, 1]
    st = evaluate_values(oracle.actor_factory(), fam, torch.tensor([[0.01], [1.0]], dtype=torch.float64), 1,
                         seed=metrics["eval_seed"])
    assert float(st.mean.mean()) == pytest.approx(metrics["eval_extrapolation_return"])
    assert oracle.policy({"masspole": 1.0}) is oracle.models[1]
    for bad in ({"masspole": 0.6}, {"masspole": 1.0 + 1e-6}):
        with pytest.raises(HyperrlError) as e:
            oracle.policy(bad)
        msg = str(e.value)
        assert "\n" not in msg and "has no model for" in msg and "masspole=0.01; masspole=1" in msg
    with pytest.raises(HyperrlError, match="has no model for"):
        evaluate_values(oracle.actor_factory(), fam, fam.heldout_values("interpolation"), 1, seed=0)


def test_select_variants():
    fam = load_family(FAMILY)
    assert [float(v["values"]) for v in select_variants(fam, "extrapolation", 3)] == [0.01, 0.6, 1.0]
    assert len(select_variants(fam, "interpolation", None)) == 9
    assert len(select_variants(fam, "interpolation", 100)) == 9
    both = select_variants(fam, "all", 2)
    assert [(v["split"], v["index"]) for v in both] == [("interpolation", 0), ("extrapolation", 8)]


def test_missing_or_corrupt_model(runs, tmp_path):
    run = tmp_path / "dr"
    shutil.copytree(runs["dr"], run)
    (run / "model.zip").write_bytes(b"not a zip file")
    with pytest.raises(HyperrlError) as e:
        load(run)
    assert "corrupt" in str(e.value) and "\n" not in str(e.value)
    (run / "model.zip").unlink()
    with pytest.raises(HyperrlError, match="model.zip is missing"):
        load(run)
    oracle = tmp_path / "oracle"
    shutil.copytree(runs["oracle"], oracle)
    (oracle / "models" / "1.zip").unlink()
    with pytest.raises(HyperrlError, match="1.zip is missing"):
        load(oracle)


def test_continuous_actions_pendulum(tmp_path):
    run = baseline(tmp_path / "pend", "dr", "--total-steps", "128", "--set", "n_envs=2", "--set", "n_steps=64",
                   family="pendulum-mass-length")
    info = json.loads((run / "run.json").read_text())
    assert info["hyperparams"]["use_sde"] is True and info["hyperparams"]["n_steps"] == 64
    assert "--set" in info["hyperparams_source"]
    assert info["vec_env"] == "dummy"  # Pendulum's few envs step faster as Gymnasium envs
    loaded = load(run)
    fam = loaded.family
    vals = fam.heldout_values("extrapolation")[:4]
    det = evaluate_values(loaded.actor_factory(), fam, vals, 1, seed=0)
    assert torch.isfinite(det.returns).all() and det.returns.shape == (4, 1)
    stoch = [evaluate_values(loaded.actor_factory(deterministic=False, seed=1), fam, vals, 1, seed=0).returns
             for _ in range(2)]
    assert torch.equal(stoch[0], stoch[1])
    action, _ = loaded.policy({"m": 1.0, "l": 1.0}).predict(np.zeros(3, dtype=np.float32))
    assert action.shape == (1,) and -2.0 <= float(action[0]) <= 2.0


@pytest.mark.parametrize("args, needle", [
    (["--env-family", "no-such-family", "--method", "dr"], "unknown family"),
    (["--env-family", FAMILY, "--method", "oracle", "--oracle-max-variants", "0"], "argument --oracle-max-variants: must be an integer >= 1"),
    (["--env-family", FAMILY, "--method", "dr", "--oracle-max-variants", "2"], "only applies"),
    (["--env-family", FAMILY, "--method", "dr", "--total-steps", "0"], "--total-steps"),
    (["--env-family", FAMILY, "--method", "dr", "--set", "n_step=3"], "not a PPO hyperparameter"),
    (["--env-family", FAMILY, "--method", "dr", "--set", "learning_rate=lin_x"], "schedule"),
    (["--env-family", FAMILY, "--method", "dr", "--set", "n_steps=abc"], "--set n_steps: expected an integer >= 1"),
    (["--env-family", FAMILY, "--method", "dr", "--set", "gamma=[1]"], "--set gamma: expected a number in [0, 1]"),
    (["--env-family", FAMILY, "--method", "dr", "--set", "learning_rate=abc"], "lin_<number>"),
    (["--env-family", FAMILY, "--method", "dr", "--set", "normalize_advantage=1"], "true or false"),
    (["--env-family", FAMILY, "--method", "dr", "--set", "policy_kwargs={bogus: 1}"], "rejects these hyperparameters"),
    (["--env-family", FAMILY, "--method", "dr", "--device", "cuda:99"], "device"),
    (["--env-family", FAMILY, "--method", "dr", "--seed", str(2**70)], "argument --seed: must be an integer [0, "),
    (["--env-family", FAMILY, "--method", "dr", "--set", "gamma=2"], "--set gamma: expected a number in [0, 1]"),
    (["--env-family", FAMILY, "--method", "dr", "--set", "batch_size=1"], "--set batch_size: expected an integer >= 2"),
    (["--env-family", FAMILY, "--method", "dr", "--set", "target_kl=0"], "--set target_kl: expected a positive"),
])
def test_baseline_cli_errors(tmp_path, capsys, args, needle):
    """One error line, exit 2, nothing created (a bad --set used to be a bare TypeError after
    the run dir existed)."""
    run = tmp_path / "run"
    line = usage_error(capsys, baselines_main, [*args, "--run-dir", str(run)])
    assert needle in line
    assert not run.exists()  # nothing created on bad input


def test_existing_run_dir_is_left_alone(runs, tmp_path, capsys):
    run = tmp_path / "dr"
    shutil.copytree(runs["dr"], run)
    before = snapshot(run)
    line = usage_error(capsys, baselines_main, ["--env-family", FAMILY, "--method", "dr", "--run-dir", str(run)])
    assert "not empty" in line and snapshot(run) == before


# ---------------------------------------------------------------------------------------
# hyperrl.compare
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hyperrl_run(tmp_path_factory):
    from hyperrl.train import main as train_main

    run = tmp_path_factory.mktemp("hyper") / "run"
    args = ["--env-family", FAMILY, "--total-steps", "1024", "--device", "cpu", "--run-dir", str(run)]
    for item in TINY_TRAIN:
        args += ["--set", item]
    assert train_main(args) == 0
    return run


def table_rows(md: str) -> dict[str, list[str]]:
    """The rows of the first table (held-out return and cost), by method label."""
    rows: dict[str, list[str]] = {}
    for line in md.splitlines():
        if rows and not line.startswith("|"):
            break
        if line.startswith("| ") and not line.startswith("| method"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def test_compare_tables_and_chart(runs, hyperrl_run, tmp_path, capsys):
    dr1 = baseline(tmp_path / "dr-s1", "dr", seed=1)
    out = tmp_path / "cmp"
    capsys.readouterr()
    assert compare_main([str(hyperrl_run), str(runs["dr"]), str(dr1), str(runs["oracle"]), "--out", str(out),
                         "--bootstrap-reps", "500"]) == 0
    printed = capsys.readouterr().out
    md = (out / "comparison.md").read_text()
    assert md in printed and "### cartpole-mass" in md
    rows = table_rows(md)
    assert list(rows) == ["hyper", "sb3-dr", "sb3-oracle"]
    hyper_seed = json.loads((hyperrl_run / "run.json").read_text())["seed"]
    assert rows["sb3-dr"][1] == "2 (0, 1)" and rows["hyper"][1] == f"1 ({hyper_seed})"
    m0, m1 = (json.loads((r / "metrics.json").read_text()) for r in (runs["dr"], dr1))
    mean = (m0["eval_interpolation_return"] + m1["eval_interpolation_return"]) / 2
    assert rows["sb3-dr"][3] == f"{mean:.1f}" and rows["sb3-dr"][2].count("[") == 1  # IQM [CI]
    hm = json.loads((hyperrl_run / "metrics.json").read_text())
    assert rows["hyper"][3] == f"{hm['eval_interpolation_return']:.1f}" and rows["hyper"][2] == "—"
    assert rows["hyper"][6] == f"{hm['env_steps']:,}"
    assert rows["sb3-oracle"][2] == rows["sb3-oracle"][3] == "—"
    assert rows["sb3-oracle"][6] == "2 × 512 = 1,024"
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "comparison.json").read_text())["families"][FAMILY]
    assert summary["sb3-dr"]["interpolation"]["n_runs"] == 2


def test_compare_prefers_evaluate_results(runs, tmp_path, capsys):
    run = tmp_path / "concat"
    shutil.copytree(runs["concat"], run)
    rows = [{"values": {"masspole": 0.1}, "split": "interpolation", "mean": 111.0},
            {"values": {"masspole": 0.2}, "split": "interpolation", "mean": 113.0},
            {"values": {"masspole": 1.0}, "split": "extrapolation", "mean": 50.0}]
    (run / "eval" / "heldout-all").mkdir(parents=True)
    (run / "eval" / "heldout-all" / "results.json").write_text(json.dumps({"variants": rows}))
    out = tmp_path / "cmp"
    assert compare_main([str(run), "--out", str(out)]) == 0
    cells = table_rows((out / "comparison.md").read_text())["sb3-concat"]
    assert cells[2:4] == ["112.0", "50.0"] and "results.json (2 + 1 variants)" in cells[-1]


def test_compare_default_out_and_families(runs, tmp_path, monkeypatch, capsys):
    pend = tmp_path / "pend"
    pend.mkdir()
    for name in ("run.json", "metrics.json"):
        d = json.loads((runs["dr"] / name).read_text())
        d["family"] = "pendulum-mass-length"
        (pend / name).write_text(json.dumps(d))
    monkeypatch.chdir(tmp_path)
    assert compare_main([str(runs["dr"]), "--name", "mine"]) == 0
    assert (tmp_path / "runs" / FAMILY / "comparisons" / "mine" / "comparison.md").is_file()
    assert compare_main([str(runs["dr"]), str(pend), "--name", "two"]) == 0
    md = (tmp_path / "runs" / "comparisons" / "two" / "comparison.md").read_text()
    assert "### cartpole-mass" in md and "### pendulum-mass-length" in md


def test_compare_bad_input(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(runs["dr"], corrupt)
    (corrupt / "metrics.json").write_text("{not json")
    corrupt_info = tmp_path / "corrupt-info"
    shutil.copytree(runs["dr"], corrupt_info)
    (corrupt_info / "run.json").write_text("[1, 2")
    bad_results = tmp_path / "bad-results"
    shutil.copytree(runs["dr"], bad_results)
    (bad_results / "eval" / "heldout-all").mkdir(parents=True)
    (bad_results / "eval" / "heldout-all" / "results.json").write_text(json.dumps({"variants": []}))
    before = {d: snapshot(d) for d in (runs["dr"], corrupt, corrupt_info, bad_results)}
    out = tmp_path / "out"
    cases = [
        ([str(tmp_path / "missing")], "does not exist"),
        ([str(empty)], "not a hyperrl run dir"),
        ([str(corrupt)], "corrupt"),
        ([str(corrupt_info)], "corrupt"),
        ([str(bad_results)], "no per-variant results"),
        ([str(runs["dr"]), str(runs["dr"])], "given twice"),
        ([str(runs["dr"]), "--bootstrap-reps", "0"], "argument --bootstrap-reps: must be an integer >= 1"),
        ([str(runs["dr"]), "--bootstrap-seed", "-1"], "argument --bootstrap-seed: must be an integer [0, "),
    ]
    for args, needle in cases:
        line = usage_error(capsys, compare_main, [*args, "--out", str(out)])
        assert needle in line, line
        assert not out.exists()
    assert "is a run dir" in usage_error(capsys, compare_main, [str(runs["dr"]), "--out", str(corrupt)])
    assert {d: snapshot(d) for d in before} == before


def test_set_values_are_typed():
    from hyperrl.baselines import parse_overrides

    hp = parse_overrides(["learning_rate=3e-4", "batch_size=1e2", "target_kl=null", "clip_range=lin_0.2",
                          "normalize_advantage=false", "sde_sample_freq=-1"])
    assert hp == {"learning_rate": 3e-4, "batch_size": 100, "target_kl": None, "clip_range": ("lin", 0.2),
                  "normalize_advantage": False, "sde_sample_freq": -1}
    assert isinstance(hp["batch_size"], int)
