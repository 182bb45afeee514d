"""``python -m hyperrl.sweep`` on Ray Tune, with tiny budgets.

Every sweep here runs on one simulated two-node Ray cluster (``ray.cluster_utils.Cluster``,
one CPU per node) started once for the module and reached through ``--address``, as a user
reaches a real cluster; starting Ray costs seconds, so the tests share it. The path without
an address (a local Ray started by the sweep) is what ``benchmarks/bench_sweep.py`` runs;
here its ``ray.init`` arguments are checked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import helpers
import pytest
import yaml

import hyperrl
from hyperrl.checkpoint import load_checkpoint
from hyperrl.sweep import main as sweep_main
from hyperrl.sweep import ray_init_kwargs

REPO = Path(__file__).resolve().parent.parent
TINY = ["env.num_envs=16", "ppo.num_steps=16", "ppo.num_minibatches=2", "ppo.update_epochs=1", "eval.episodes=1",
        "histogram_interval_evals=0", "model.hidden_sizes=[8,8]", "model.embed_sizes=[8,8]",
        "model.critic_hidden_sizes=[8,8]", "stop_at_return=null", "eval.interval_steps=256"]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def write_sweep(folder: Path, name: str, **keys) -> Path:
    data = {"name": name, "storage": str(folder / "sweeps"), "families": ["cartpole-mass"], "archs": ["hyper"],
            "seeds": [1], "total_steps": 512, "set": TINY, "cpus": 1, "bootstrap_reps": 200, **keys}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def records(root: Path) -> dict[str, dict]:
    return {f"{p.parent.name}/{p.stem}": json.loads(p.read_text()) for p in sorted((root / "logs").glob("*/*.json"))}


def test_grid_of_two_families_and_two_seeds_on_a_two_node_cluster(cluster, tmp_path, capsys):
    path = write_sweep(tmp_path, "grid", families=["cartpole-mass", "cartpole-actuator"], seeds=[1, 2],
                       evaluate={"enabled": True, "episodes": 1})
    assert sweep_main([str(path), "--address", cluster.address]) == 0
    out = capsys.readouterr().out
    root = tmp_path / "sweeps" / "grid"
    runs = sorted(root.glob("cartpole-*/hyper-s*"))
    assert [f"{r.parent.name}/{r.name}" for r in runs] == [
        "cartpole-actuator/hyper-s1", "cartpole-actuator/hyper-s2", "cartpole-mass/hyper-s1", "cartpole-mass/hyper-s2"]
    for run in runs:
        for f in ("config.yaml", "family.yaml", "run.json", "metrics.json", "checkpoints/latest.pt",
                  "eval/heldout-all/results.json"):
            assert (run / f).is_file(), (run, f)
        assert list(run.glob("events.out.tfevents.*"))
        info = json.loads((run / "run.json").read_text())
        assert info["method"] == "hyperrl" and info["label"] == "hyper" and info["sweep"]["name"] == "grid"
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["env_steps"] == 512 and [h["step"] for h in metrics["history"]] == [256, 512]
        assert hyperrl.load(run).family.name == run.parent.name  # a normal run dir
        # each periodic evaluation was reported to Tune, then the final metrics
        result = Path(next((root / ".tune").glob(f"grid-1/{run.parent.name}__{run.name}/result.json")))
        reports = [json.loads(line) for line in result.read_text().splitlines()]
        assert [r["env_steps"] for r in reports] == [256, 512, 512] and reports[-1]["finished"]
        assert reports[1]["interpolation"] == metrics["history"][1]["interpolation"]
    recs = records(root)
    assert all(len(r["attempts"]) == 1 and r["attempts"][0]["threads"] == 1 for r in recs.values())
    assert len({r["attempts"][0]["node_id"] for r in recs.values()}) == 2  # both nodes ran trials
    comparison = json.loads((root / "comparison" / "comparison.json").read_text())
    assert set(comparison["families"]) == {"cartpole-mass", "cartpole-actuator"}
    for fam in comparison["families"].values():
        assert list(fam) == ["hyper"] and len(fam["hyper"]["runs"]) == 2
        assert fam["hyper"]["sources"] == ["eval/heldout-all/results.json"]
    assert (root / "comparison" / "iqm.png").is_file() and "### cartpole-mass" in out
    summary = json.loads((root / "sweep.json").read_text())
    assert [t["status"] for t in summary["trials"]] == ["finished"] * 4
    # a second start without --resume is refused: one line, nothing run
    line = helpers.expect_cli_error(capsys, sweep_main, [path, "--address", cluster.address])
    assert "already exists" in line and "--resume" in line


def _files(run: Path) -> dict[str, tuple[int, int]]:
    """Every file of a run dir (the lock file aside: every holder writes it) with its mtime and size."""
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, p.stat().st_size) for p in run.rglob("*")
            if p.is_file() and p.name != ".lock"}


def test_a_failing_trial_and_a_killed_driver(cluster, tmp_path, capsys):
    """Three trials side by side: a short one, a long one, and one whose ppo.lr=1e30 diverges
    in its first update (a non-finite loss stops the run). The driver is killed once the
    short one has finished and the long one has a checkpoint; --resume runs no finished
    trial again, continues the long one from its checkpoint, retries the failing one
    (max_failures=1: two attempts) and reports it while the others finish."""
    path = write_sweep(tmp_path, "faults", grid=[["total_steps=512", "total_steps=4096", "ppo.lr=1e30"]],
                       total_steps=None, max_failures=1, set=[*TINY, "eval.interval_steps=1024"])
    root = tmp_path / "sweeps" / "faults"
    trials = root / "cartpole-mass"
    short, long, bad = (trials / f"hyper-{t}-s1" for t in ("total_steps=512", "total_steps=4096", "lr=1e30"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "hyperrl.sweep", str(path), "--address", cluster.address],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not ((short / "metrics.json").is_file() and (long / "checkpoints" / "latest.pt").is_file()):
            assert driver.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    before = _files(short)
    step = load_checkpoint(long / "checkpoints" / "latest.pt")["step"]
    assert not (long / "metrics.json").exists() and 0 < step < 4096
    attempts_before = len(records(root).get("cartpole-mass/hyper-lr=1e30-s1", {}).get("attempts", []))

    assert sweep_main([str(path), "--address", cluster.address, "--resume"]) == 1  # a trial failed
    out = capsys.readouterr().out
    assert "1 trial(s) already finished: not run again" in out
    recs = records(root)
    assert _files(short) == before  # not run again: every file as it was, one attempt
    assert len(recs[f"cartpole-mass/{short.name}"]["attempts"]) == 1
    attempts = recs[f"cartpole-mass/{long.name}"]["attempts"]  # continued from its checkpoint
    assert len(attempts) == 2 and attempts[-1]["from_step"] >= step and attempts[-1]["status"] == "done"
    metrics = json.loads((long / "metrics.json").read_text())
    assert metrics["env_steps"] == 4096 and [h["step"] for h in metrics["history"]] == [1024, 2048, 3072, 4096]
    # the failing trial: retried once in this session, then reported with its error
    failed = recs[f"cartpole-mass/{bad.name}"]["attempts"][attempts_before:]
    assert [a["status"] for a in failed] == ["failed", "failed"]
    assert "TrainingDiverged: non-finite loss" in failed[-1]["error"] and not (bad / "metrics.json").exists()
    assert f"retry  cartpole-mass/{bad.name} after failure 1" in out
    assert f"FAILED cartpole-mass/{bad.name}" in out and f"failed: cartpole-mass/{bad.name}: TrainingDiverged" in out
    comparison = json.loads((root / "comparison" / "comparison.json").read_text())
    assert set(comparison["families"]["cartpole-mass"]) == {"hyper-total_steps=512", "hyper-total_steps=4096"}
    status = {t["trial"]: t["status"] for t in json.loads((root / "sweep.json").read_text())["trials"]}
    assert status == {short.name: "finished", long.name: "finished", bad.name: "failed"}


def test_search_with_optuna_and_asha(cluster, tmp_path, capsys):
    path = write_sweep(tmp_path, "search", total_steps=2048, set=[*TINY, "eval.interval_steps=512"],
                       search={"space": ["ppo.lr=loguniform(1e-4, 1e-2)", "ppo.update_epochs=choice(1, 2)"],
                               "algorithm": "optuna", "samples": 4, "reduction_factor": 2})
    assert sweep_main([str(path), "--address", cluster.address]) == 0
    out = capsys.readouterr().out
    root = tmp_path / "sweeps" / "search"
    cell = json.loads((root / "search.json").read_text())["cells"]["cartpole-mass/hyper"]
    assert sorted(t["trial"] for t in cell["trials"]) == ["t001", "t002", "t003", "t004"]
    for t in cell["trials"]:
        run = Path(t["run_dir"])
        assert run.name == f"hyper-{t['trial']}-s1" and t["error"] is None
        info = json.loads((run / "run.json").read_text())
        assert info["label"] == f"hyper-{t['trial']}"
        config = yaml.safe_load((run / "config.yaml").read_text())
        lr, epochs = (s.partition("=")[2] for s in t["settings"])
        assert config["ppo"]["lr"] == float(lr) and config["ppo"]["update_epochs"] == int(epochs)
        assert 1e-4 <= config["ppo"]["lr"] <= 1e-2
        if t["finished"]:  # ran to the end: its final return is the one reported
            metrics = json.loads((run / "metrics.json").read_text())
            assert metrics["env_steps"] == 2048 and t["interpolation"] == metrics["eval_interpolation_return"]
        else:  # stopped by ASHA at a rung below the end, its checkpoint kept
            assert t["env_steps"] < 2048 and (run / "checkpoints" / "latest.pt").is_file()
            assert not (run / "metrics.json").exists()
    finished = [t for t in cell["trials"] if t["finished"]]
    assert finished and cell["best"]["trial"] == max(finished, key=lambda t: t["interpolation"])["trial"]
    assert "best: --set ppo.lr=" in out


def test_a_trial_in_this_process(tmp_path):
    """run_trial without Ray: an interrupted run dir of other settings is refused, one of the
    trial's own continues (here: killed after its last checkpoint, before metrics.json, so
    it trains again), and a finished trial only reports its final metrics."""
    from hyperrl.errors import HyperrlError
    from hyperrl.sweep import TrialSpec, run_trial
    from hyperrl.train import start_run

    run = tmp_path / "sweep" / "cartpole-mass" / "hyper-s1"
    start_run("cartpole-mass", None, [*TINY, "ppo.lr=0.001", "progress=false"], 1, 512, "cpu", run)
    (run / "metrics.json").unlink()
    spec = TrialSpec(name="hyper-s1", family="cartpole-mass", family_name="cartpole-mass", kind="hyperrl",
                     method="hyper", label="hyper", seed=1, run_dir=str(run), log=str(tmp_path / "logs" / "t.log"),
                     sweep="sweep", sets=(*TINY, "ppo.lr=0.002", "progress=false"), total_steps=512)
    with pytest.raises(HyperrlError, match="other settings than trial hyper-s1 .*ppo.lr: 0.001 there, 0.002 here"):
        run_trial(spec)
    assert not (run / "metrics.json").exists()
    (run / "run.json").write_text(json.dumps({**json.loads((run / "run.json").read_text()),
                                               "sweep": {"name": "sweep"}}))  # as a sweep's trial writes it
    reports = []
    final = run_trial(dataclasses.replace(spec, sets=(*TINY, "ppo.lr=0.001", "progress=false")), reports.append)
    assert [r["env_steps"] for r in reports] == [256, 512, 512] and final["finished"]
    before = _files(run)
    reports.clear()
    assert run_trial(spec, reports.append)["env_steps"] == 512  # finished: not run again, whatever it says
    assert len(reports) == 1 and _files(run) == before


def test_ray_init_arguments():
    local = ray_init_kwargs(None, {})
    assert local["num_cpus"] == os.cpu_count() and local["include_dashboard"] is False
    assert ray_init_kwargs("auto", {})["address"] == "auto"
    assert ray_init_kwargs("ray://head:10001", {})["address"] == "ray://head:10001"
    attach = ray_init_kwargs(None, {"RAY_ADDRESS": "10.0.0.1:6379"})  # ray.init reads it itself
    assert "address" not in attach and "num_cpus" not in attach


@pytest.mark.parametrize("keys,needle", [
    ({"bogus": 1}, "unknown config key 'bogus'"),
    ({"families": []}, "families: name at least one family"),
    ({"families": ["no-such-family"]}, "no-such-family"),
    ({"archs": ["hyperr"]}, "must be one of"),
    ({"set": ["ppo.lrr=1"]}, "ppo.lrr"),
    ({"grid": [["ppo.lr=-1"]]}, "'ppo.lr': must be > 0"),
    ({"seeds": [1, 2], "search": {"space": ["ppo.lr=loguniform(1e-4, 1e-2)"]}}, "exactly one seed"),
    ({"search": {"space": ["ppo.lr=loguniform(0, 1e-2)"]}}, "loguniform needs lo > 0"),
    ({"search": {"space": ["ppo.num_steps=choice(16, -1)"]}}, "'ppo.num_steps': must be >= 1"),
    ({"oracles": {"enabled": True}}, "oracles.enabled needs evaluate.enabled"),
    ({"grid": [["total_steps=64"]]}, "total_steps is set twice"),
    ({"set": ["seed=3"]}, "use the sweep's seeds"),
], ids=["unknown-key", "no-family", "unknown-family", "unknown-arch", "bad-set", "bad-grid-value", "search-seeds",
        "search-bounds", "search-value", "oracles-without-evaluation", "total-steps-twice", "seed-in-set"])
def test_bad_sweep_files_are_one_line_before_anything_runs(tmp_path, capsys, keys, needle):
    path = write_sweep(tmp_path, "bad", **keys)
    line = helpers.expect_cli_error(capsys, sweep_main, [path, "--address", "127.0.0.1:1"])
    assert needle in line
    assert not (tmp_path / "sweeps").exists()


def test_every_sweep_key_is_documented(capsys):
    from hyperrl.config import check_config_class
    from hyperrl.sweep_config import SweepConfig

    check_config_class(SweepConfig)
    assert sweep_main(["--help-config"]) == 0
    assert "search.algorithm: str = random  [one of random, optuna]" in capsys.readouterr().out


def test_list_and_shipped_sweeps(tmp_path, capsys):
    for f in sorted((REPO / "configs" / "sweeps").glob("*.yaml")):
        assert sweep_main([str(f), "--list", "--set", f"storage={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "cartpole-actuator/cgate-s10: hyperrl cgate, seed 10" in out  # the protocol's grid
    assert "cartpole-actuator-oracles/force_mag-14: oracle blind, seed 1" in out
    assert not any(tmp_path.iterdir())
