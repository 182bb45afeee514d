"""``python -m hyperrl.adapt``: few-episode adaptation of a tiny trained run.

The variant is deliberately mismatched: the adapter is told ``force_mag=+10`` while the
episodes run with a reversed motor (``-10``), so the zero-shot policy pushes the wrong way.
Every mode must improve on it within its budget; the budget is counted exactly (checked
independently by counting the envs the adapter creates); the pre-trained run's files keep
their bytes; bad input gives one ``error:`` line and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import helpers
import pytest
import torch

import hyperrl
import hyperrl.adapt.sim
import hyperrl.sim
from hyperrl import adapt as adapt_mod
from hyperrl.adapt import (MODES, REFERENCES, AdaptConfig, AdaptedRun, BudgetExceeded, EpisodeBudget, adapt,
                           adapt_mode, adapt_reference, evaluate_policy, identify, run_episodes)
from hyperrl.adapt.scoring import forgetting
from hyperrl.adapt.learners import generated_policy
from hyperrl.adapt.run import budgets_for
from hyperrl.cli import main_guard
from hyperrl.errors import HyperrlError
from hyperrl.families import load_family
from hyperrl.hyperrun import HyperRun

TINY = [
    "env.num_envs=32", "ppo.num_steps=32", "eval.episodes=1", "progress=false", "ppo.update_epochs=4",
    "ppo.num_minibatches=2", "ppo.target_kl=null", "ppo.lr=0.005", "model.hidden_sizes=[16,16]",
    "model.embed_sizes=[16,16]", "model.critic_hidden_sizes=[16,16]", "model.chunk_size=0",
    "stop_at_return=null", "histogram_interval_evals=0", "dtype=float32",
]
TOLD = {"force_mag": 10.0}
TRUE = {"force_mag": -10.0}


def train_tiny(run_dir: Path, family: str, steps: int) -> Path:
    return helpers.train_tiny(run_dir, family, steps, TINY, eval_interval=steps)


@pytest.fixture(scope="module")
def actuator_run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("adapt") / "run", "cartpole-actuator", 20480)


@pytest.fixture(scope="module")
def source(actuator_run) -> HyperRun:
    return HyperRun(actuator_run)


def tree_hash(folder: Path, skip: str = "adapt") -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).parts[0] != skip}


def expect_error(capsys, *args) -> str:
    return helpers.expect_cli_error(capsys, adapt_mod.main, args)


def v(d: dict[str, float]) -> torch.Tensor:
    return torch.tensor(list(d.values()), dtype=torch.float64)


# --------------------------------------------------------------------------------------
# Budget
# --------------------------------------------------------------------------------------
def test_episode_budget_refuses_overdraw():
    b = EpisodeBudget(3)
    b.take(2, "a")
    with pytest.raises(BudgetExceeded, match="asked for 2 episode.*1 of 3 left"):
        b.take(2, "b")
    b.take(1, "c")
    assert (b.used, b.remaining) == (3, 0)
    with pytest.raises(BudgetExceeded):
        b.take(1, "d")
    assert [e["purpose"] for e in b.log] == ["a", "c"]


def test_run_episodes_records_and_counts():
    fam = load_family("cartpole-actuator")
    b = EpisodeBudget(4)
    left = lambda obs: (torch.zeros(obs.shape[0], dtype=torch.long),) * 2 + (torch.zeros(obs.shape[0]),)  # noqa: E731
    eps = run_episodes(fam, v(TRUE), left, 3, b, seed=0, purpose="probe")
    assert b.used == 3 and b.env_steps == eps.steps == int(eps.lengths.sum())
    assert eps.obs.shape[1] == 3 and bool(eps.mask[0].all())
    assert bool(((eps.terminated | eps.truncated) & eps.mask).sum(0).eq(1).all())  # each episode ends once
    with pytest.raises(BudgetExceeded):
        run_episodes(fam, v(TRUE), left, 2, b, seed=0, purpose="too many")
    assert b.used == 3  # refused before running


@pytest.mark.parametrize("line", ["context", "weights", "hypernet", "sim", "scratch"])
def test_budget_is_counted_exactly(source, line, monkeypatch):
    """Independent count: every env the adapter creates is an episode it can observe."""
    created = []
    real = hyperrl.sim.make_vec_env

    def counting(family, num_envs, *a, **k):
        created.append(int(num_envs))
        return real(family, num_envs, *a, **k)

    monkeypatch.setattr(hyperrl.sim, "make_vec_env", counting)
    for k in (1, 4):
        created.clear()
        if line == "scratch":
            res = adapt_reference(source, "scratch", v(TRUE), k, seed=1)
        else:
            cfg = AdaptConfig(episodes_per_update=3, sim_steps=2048)  # batches of 3, the last one cut to fit
            res = adapt_mode(source, line, v(TRUE), None if line == "context" else v(TOLD), k, cfg, seed=1)
        assert res.budget.used == k == sum(created), (line, k, created)
        assert res.budget.env_steps == sum(e["steps"] for e in res.budget.log)


@pytest.mark.parametrize("line", ["context", "weights", "sim", "scratch"])
def test_world_runs_every_episode_in_its_env(source, line, monkeypatch):
    """``world``: the episodes run in another family's env (here gravity 30 instead of 9.8,
    a model error), while identification and the sim mode's simulator keep the run's family."""
    import dataclasses

    world = dataclasses.replace(source.family, name="cartpole-actuator-g30", fixed={"gravity": 30.0})
    seen = []
    real = hyperrl.sim.make_vec_env

    def recording(family, num_envs, *a, **k):
        seen.append((family.name, dict(family.constants()), int(num_envs)))
        return real(family, num_envs, *a, **k)

    monkeypatch.setattr(hyperrl.sim, "make_vec_env", recording)
    k = 3
    if line == "scratch":
        res = adapt_reference(source, "scratch", v(TRUE), k, seed=1, world=world)
    else:
        cfg = AdaptConfig(sim_steps=2048)
        res = adapt_mode(source, line, v(TRUE), v(TOLD), k, cfg, seed=1, world=world)
    assert res.budget.used == k == sum(n for _, _, n in seen)
    assert all(name == "cartpole-actuator-g30" and c["gravity"] == 30.0 for name, c, _ in seen), seen


def test_world_evaluations_and_errors(actuator_run, source):
    import dataclasses

    world = dataclasses.replace(source.family, name="cartpole-actuator-g30", fixed={"gravity": 30.0})
    kw = dict(episodes=1, modes="context", references=False, budgets=[0], eval_episodes=3, save=False)
    home = adapt(actuator_run, TRUE, **kw)
    away = adapt(actuator_run, TRUE, world=world, **kw)
    pol = generated_policy(source, v(TRUE))
    # the zero-shot point is the generated policy evaluated in the world, not at home
    assert away["curves"]["context"][0]["returns"] == evaluate_policy(world, pol, v(TRUE), 3).tolist()
    assert home["curves"]["context"][0]["returns"] == evaluate_policy(source.family, pol, v(TRUE), 3).tolist()
    assert away["curves"]["context"][0]["returns"] != home["curves"]["context"][0]["returns"]
    assert away["world"]["fixed"] == {"gravity": 30.0} and home["world"] is None
    with pytest.raises(HyperrlError, match="must have the run's env and parameters"):
        adapt(actuator_run, TRUE, world="cartpole-mass", **kw)


# --------------------------------------------------------------------------------------
# Every mode improves on the mismatched variant
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["context", "weights", "hypernet"])
def test_each_mode_improves_mismatched_variant(source, mode):
    zero = evaluate_policy(source.family, adapt_mode(source, mode, v(TRUE), v(TOLD), 0).policy, v(TRUE), 4)
    res = adapt_mode(source, mode, v(TRUE), v(TOLD), 3, seed=0)
    after = evaluate_policy(source.family, res.policy, v(TRUE), 4)
    assert res.budget.used == 3
    assert float(zero.mean()) < 30  # the wrong sign: the pole falls at once
    assert float(after.mean()) > float(zero.mean()) + 100, (mode, zero, after, res.info)
    # system identification found the reversed motor from the recorded transitions
    assert res.info["identified_values"][0] == pytest.approx(-10.0, rel=0.02)


def test_sim_mode_identifies_then_finetunes_in_simulation(source):
    """sim: one real episode identifies the reversed motor, the agent is trained further in
    the simulator at the identified value (no episodes), the real-env check keeps it."""
    cfg = AdaptConfig(sim_steps=4096)
    zero = evaluate_policy(source.family, adapt_mode(source, "sim", v(TRUE), v(TOLD), 0, cfg).policy, v(TRUE), 4)
    res = adapt_mode(source, "sim", v(TRUE), v(TOLD), 2, cfg, seed=0)
    after = evaluate_policy(source.family, res.policy, v(TRUE), 4)
    assert res.budget.used == 2 and res.budget.env_steps == sum(e["steps"] for e in res.budget.log)
    assert res.info["identified_values"][0] == pytest.approx(-10.0, rel=0.02)
    assert res.info["sim_values"][0] == pytest.approx(-10.0, rel=0.02)
    assert res.info["sim_steps"] >= 4096 and res.info["kept"] in ("sim", "zero-shot")
    assert float(zero.mean()) < 30 and float(after.mean()) > float(zero.mean()) + 100, (zero, after, res.info)
    if res.info["kept"] == "sim":  # the saved agent differs from the source: it was trained
        src = source.agent.state_dict()
        assert any(not torch.equal(res.hypernet_state[k], src[k].cpu()) for k in src)


@pytest.mark.parametrize("episodes", [1, 3])
def test_sim_mode_reverts_a_finetune_that_loses_in_its_own_simulator(source, monkeypatch, episodes):
    """The simulated comparison (free, common starts) rejects a fine-tune that does worse than
    the zero-shot policy at the identified values, with or without real check episodes."""
    import copy

    def broken_finetune(src, values, cfg, seed, dev):
        agent = copy.deepcopy(src.agent)
        with torch.no_grad():
            for p in agent.parameters():
                p.mul_(-1.0)  # a policy that pushes the wrong way everywhere
        return agent.to(dev), {"sim_steps": 0}

    monkeypatch.setattr(hyperrl.adapt.sim, "sim_finetune", broken_finetune)
    # told the true reversed motor: the zero-shot policy is the good one here
    res = adapt_mode(source, "sim", v(TRUE), v(TRUE), episodes, AdaptConfig(), seed=0)
    chk = res.info["sim_check_return"]
    assert chk["tuned"] < chk["zero_shot"] and res.info["kept"] == "zero-shot"
    assert res.hypernet_state is None and res.budget.used == episodes
    zero = adapt_mode(source, "sim", v(TRUE), v(TRUE), 0, AdaptConfig()).policy
    for k, w in zero.weights.items():
        assert torch.equal(res.policy.weights[k], w), k


def test_context_search_without_identification_tries_both_signs(source):
    cfg = AdaptConfig(identify=False)
    res = adapt_mode(source, "context", v(TRUE), None, 3, cfg, seed=0)  # hidden: sign unknown
    signs = [np.sign(c["values"][0]) for c in res.info["candidates"]]
    assert signs[:2] == [1.0, -1.0]
    assert res.context_values[0] < 0
    zero = evaluate_policy(source.family, adapt_mode(source, "context", v(TRUE), None, 0).policy, v(TRUE), 4)
    after = evaluate_policy(source.family, res.policy, v(TRUE), 4)
    assert float(after.mean()) > float(zero.mean()) + 100


def test_ppo_update_improves_without_identification(source):
    """The PPO path alone (no identification, no restart) learns on the reversed motor."""
    cfg = AdaptConfig(identify=False, hypernet_lr=1e-3)
    res = adapt_mode(source, "hypernet", v(TRUE), v(TOLD), 20, cfg, seed=0)
    zero = evaluate_policy(source.family, adapt_mode(source, "hypernet", v(TRUE), v(TOLD), 0).policy, v(TRUE), 4)
    after = evaluate_policy(source.family, res.policy, v(TRUE), 4)
    assert res.info["updates"] == 20 and not res.info["restarted_from_identified"]
    assert float(after.mean()) > float(zero.mean()) + 5


def test_hypernet_mode_keeps_the_family(source):
    res = adapt_mode(source, "hypernet", v(TRUE), v(TOLD), 5, seed=0)
    fam = source.family
    ctx = fam.context(fam.heldout_values("interpolation")).float()
    with torch.no_grad():
        before = source.agent.policy_weights(ctx)
        after = res.info["_agent"].policy_weights(ctx)
    rel = max(float((after[k] - before[k]).norm() / before[k].norm()) for k in before)
    assert rel < 0.2  # the regulariser keeps the train contexts' weights
    forget = forgetting(source, res.info["_agent"], torch.device("cpu"))
    assert forget["after"] >= 0.8 * forget["before"], forget


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_scratch_critic_uses_the_runs_activation(activation):
    """The scratch reference's fresh critic has the activation modules of the run's own
    critic (built here from a model config, nothing trained)."""
    import gymnasium as gym
    from types import SimpleNamespace

    from hyperrl.adapt.references import fresh_policy
    from hyperrl.agent import HyperAgent
    from hyperrl.train_config import ModelConfig

    cfg = ModelConfig(activation=activation, hidden_sizes=(8,), embed_sizes=(8,), critic_hidden_sizes=(8, 8))
    agent = HyperAgent(4, gym.spaces.Discrete(2), 1, cfg)
    src = SimpleNamespace(agent=agent, dtype=torch.float32, action_space=gym.spaces.Discrete(2))
    pol, critic = fresh_policy(src, seed=0, device=torch.device("cpu"))
    acts = lambda net: [type(m) for m in net.modules() if type(m) in (torch.nn.ReLU, torch.nn.Tanh)]  # noqa: E731
    expected = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[activation]
    assert acts(critic) == [expected, expected] == acts(agent.critic)
    assert pol.activation == activation and critic(torch.zeros(5, 4)).shape == (5,)


def test_identify_recovers_parameters():
    for name, true in (("cartpole-actuator", [-3.7]), ("cartpole-mass", [0.83]), ("pendulum-mass-length", [2.2, 0.4])):
        fam = load_family(name)
        g = torch.Generator().manual_seed(0)

        def rand_policy(obs):
            if fam.batched == "cartpole":
                a = torch.randint(2, (obs.shape[0],), generator=g)
                return a, a, torch.zeros(obs.shape[0])
            a = torch.rand(obs.shape[0], 1, generator=g) * 4 - 2
            return a, a, torch.zeros(obs.shape[0])

        eps = run_episodes(fam, torch.tensor(true, dtype=torch.float64), rand_policy, 1, EpisodeBudget(1), 3, "probe")
        ident = identify(fam, [eps])
        assert ident is not None
        np.testing.assert_allclose(ident.values.numpy(), true, rtol=0.02, err_msg=name)


# --------------------------------------------------------------------------------------
# CLI, outputs, loader, the pre-trained run untouched
# --------------------------------------------------------------------------------------
def test_cli_outputs_loader_and_source_untouched(actuator_run, capsys):
    before = tree_hash(actuator_run)
    capsys.readouterr()
    rc = main_guard(adapt_mod.main)([str(actuator_run), "--values", "force_mag=10", "--true-values",
                                     "force_mag=-10", "--episodes", "2", "--mode", "context,weights",
                                     "--eval-episodes", "2", "--seed", "3"])
    assert rc == 0
    out = capsys.readouterr()
    assert "dr-finetune skipped: no --dr" in out.out and "scratch" in out.out
    assert tree_hash(actuator_run) == before  # checkpoints, config, metrics, events: same bytes
    dirs = sorted((actuator_run / "adapt").iterdir())
    assert [d.name for d in dirs] == ["context-force_mag=-10-k2-s3", "weights-force_mag=-10-k2-s3"]
    for d in dirs:
        assert {"run.json", "family.yaml", "metrics.json", "policy.pt", "returns_vs_episodes.png"} <= \
            {p.name for p in d.iterdir()}
        assert any(p.name.startswith("events.out.tfevents") for p in d.iterdir())
        info = json.loads((d / "run.json").read_text())
        assert info["method"] == "adapted" and info["values"] == TRUE and info["episodes_used"] == 2
        assert (d / info["source_run"]).resolve() == actuator_run.resolve()
        m = json.loads((d / "metrics.json").read_text())
        assert set(m["returns"]) == {"0", "1", "2"} and set(m["curves"]) == {"context", "weights", "scratch"}
        assert m["episodes_used"] == 2 and m["env_steps"] > 0
        assert m["curves"][info["mode"]][-1]["return_mean"] == m["final_return"]

        run = hyperrl.load(d)
        assert isinstance(run, AdaptedRun) and run.variants.tolist() == [[-10.0]]
        again = evaluate_policy(run.family, run, v(TRUE), 2)
        assert float(again.mean()) == pytest.approx(m["final_return"])  # same policy, same eval episodes
        obs = np.zeros(4, dtype=np.float32)
        action, _ = run.policy(TRUE).predict(obs)
        assert action.shape == () and int(action) in (0, 1)
    ctx_run = hyperrl.load(dirs[0])
    regen = ctx_run.regenerate()
    for k, w in ctx_run.weights_policy.weights.items():
        torch.testing.assert_close(regen.weights[k], w)

    from hyperrl.evaluate import evaluate_run

    results, path = evaluate_run(dirs[0], values=["force_mag=-10"], episodes=2, backend="batched")
    assert results["method"] == "adapted" and path.parent.parent == dirs[0]
    assert tree_hash(actuator_run) == before
    # an existing output is refused unless --force
    err = expect_error(capsys, actuator_run, "--values", "force_mag=10", "--true-values", "force_mag=-10",
                       "--episodes", "2", "--mode", "weights", "--seed", "3", "--no-references")
    assert "already exists" in err


def test_help_lists_every_mode_and_reference(capsys, monkeypatch):
    """``python -m hyperrl.adapt --help``, run as ``-m`` runs it (runpy, ``__main__``)."""
    import runpy
    import warnings

    monkeypatch.setattr(sys, "argv", ["hyperrl.adapt", "--help"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. runpy's warning about a __main__ imported by the package
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_module("hyperrl.adapt", run_name="__main__", alter_sys=True)
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0 and err == "", err
    epilog = " ".join(out[out.index("modes:"):].split())
    for mode in MODES:
        assert f"{mode} = " in epilog, (mode, epilog)
    for ref in REFERENCES:
        assert ref in epilog, (ref, epilog)


def test_curves_figure_gives_every_line_its_own_style():
    from hyperrl.adapt.report import curves_figure
    from hyperrl.plots import close_figure

    lines = [*MODES, *REFERENCES]
    assert len(lines) == 6
    curves = {ln: [{"budget": b, "return_mean": 10.0 * i + b, "return_std": 1.0} for b in (0, 1, 2)]
              for i, ln in enumerate(lines)}
    fig = curves_figure(load_family("cartpole-actuator"), curves, "styles")
    drawn = {ln.get_label(): (ln.get_color(), ln.get_marker()) for ln in fig.axes[0].get_lines()}
    close_figure(fig)
    assert set(drawn) == set(lines)
    assert len({color for color, _ in drawn.values()}) == 6, drawn
    assert len({marker for _, marker in drawn.values()}) == 6, drawn


def test_budgets_without_zero_still_report_zero_shot(actuator_run, capsys):
    """--budgets 2 (no 0): the zero-shot return is still measured and written (it crashed the
    TensorBoard writer once, after the adaptation had run)."""
    assert budgets_for(3, [2]) == [0, 2, 3]
    rc = main_guard(adapt_mod.main)([str(actuator_run), "--values", "force_mag=-10", "--episodes", "2",
                                     "--mode", "weights", "--budgets", "2", "--eval-episodes", "2",
                                     "--no-references", "--name", "nozero"])
    assert rc == 0
    m = json.loads((actuator_run / "adapt" / "nozero" / "metrics.json").read_text())
    assert set(m["returns"]) == {"0", "2"} and m["zero_shot_return"] == m["returns"]["0"]
    assert isinstance(m["zero_shot_return"], float)


def test_dr_finetune_reference(actuator_run, tmp_path):
    from hyperrl.baselines import main as baselines_main

    dr = tmp_path / "dr"
    assert baselines_main(["--env-family", "cartpole-actuator", "--method", "dr", "--total-steps", "512",
                           "--eval-episodes", "1", "--device", "cpu", "--run-dir", str(dr)]) == 0
    res = adapt(actuator_run, TRUE, episodes=2, modes="context", dr=dr, eval_episodes=2, save=False)
    assert [p["episodes_used"] for p in res["curves"]["dr-finetune"]] == [0, 1, 2]
    assert res["notes"] == []
    with pytest.raises(hyperrl.errors.HyperrlError, match="expected a 'dr' baseline"):
        adapt(actuator_run, TRUE, episodes=1, dr=actuator_run, save=False)


@pytest.mark.parametrize("args, needle", [
    (["--values", "masspole=0.9"], "has no parameter 'masspole'"),
    (["--values", "force_mag=45"], "outside its physical bounds"),
    (["--values", "force_mag=0.1"], "outside its physical bounds"),
    (["--values", "force_mag=10", "--episodes", "0"], "argument --episodes: must be an integer >= 1"),
    (["--values", "force_mag=10", "--episodes", "-2"], "argument --episodes: must be an integer >= 1"),
    (["--values", "force_mag=10,12"], "ONE variant"),
    (["--values", "force_mag=10", "--hidden", "--true-values", "force_mag=-10"], "exclude each other"),
    (["--values", "force_mag=10", "--mode", "bogus"], "unknown --mode 'bogus'"),
    (["--values", "force_mag=10", "--budgets", "0,20", "--episodes", "5"], "--budgets"),
    (["--values", "force_mag=10", "--set", "bogus=1"], "--set"),
    (["--values", "force_mag=10", "--set", "elite_frac=5"], "--set: config key 'elite_frac': must be <= 1.0"),
    (["--values", "force_mag=10", "--set", "target_kl=0"], "--set: config key 'target_kl': must be > 0.0"),
    (["--values", "force_mag=10", "--seed", str(2**70)], "argument --seed: must be an integer [0, "),
    (["--values", "force_mag=10", "--threads", "-1"], "argument --threads: must be an integer >= 0"),
])
def test_bad_input_one_line_error_nothing_written(actuator_run, capsys, args, needle):
    before = tree_hash(actuator_run, skip="")
    err = expect_error(capsys, actuator_run, *args)
    assert needle in err, err
    assert tree_hash(actuator_run, skip="") == before


def test_not_a_hyperrl_run(tmp_path, capsys):
    err = expect_error(capsys, tmp_path / "nope", "--values", "force_mag=10")
    assert "does not exist" in err


def test_adapt_set_reads_scientific_notation():
    # YAML 1.1 reads "3e-3" (no dot) as a string; --set must take it as the number
    cfg = AdaptConfig.from_overrides(["lr=3e-3", "sim_steps=2e5", "target_kl=null", "identify=false"])
    assert cfg.lr == pytest.approx(3e-3) and cfg.sim_steps == 200_000 and isinstance(cfg.sim_steps, int)
    assert cfg.target_kl is None and cfg.identify is False
    with pytest.raises(HyperrlError, match="lr"):
        AdaptConfig.from_overrides(["lr=-1e-3"])


def test_evaluate_adapted_run_defaults_to_its_own_variant(actuator_run, tmp_path):
    from hyperrl.evaluate import evaluate_run

    res = adapt(actuator_run, {"force_mag": -11.0}, episodes=1, modes="context", references=False,
                eval_episodes=1, budgets=[1], name="own-variant")
    out = Path(res["dirs"]["context"])
    results, path = evaluate_run(out, episodes=1, backend="batched", write=False)
    assert results["settings"]["selection"]["kind"] == "run_variants"  # -11 N is no held-out value
    assert [r["values"] for r in results["variants"]] == [{"force_mag": -11.0}]
    # a held-out split chosen explicitly, with none of the run's variants in it: one clear error
    with pytest.raises(HyperrlError, match="run without --split to evaluate its own variants"):
        evaluate_run(out, split="interpolation", episodes=1, write=False)
    # chosen values are evaluated as given
    results, _ = evaluate_run(out, values=["force_mag=-11,-12"], episodes=1, backend="batched", write=False)
    assert len(results["variants"]) == 2


def test_adapted_run_honours_its_device(actuator_run, monkeypatch):
    """The adapted policy lives on the device the run is loaded to; ``meta`` (a device no
    tensor reaches by accident) shows it without CUDA."""
    res = adapt(actuator_run, TRUE, episodes=1, modes="context", references=False, eval_episodes=1,
                budgets=[1], name="device")
    out = Path(res["dirs"]["context"])
    cpu = AdaptedRun(out, device="cpu")
    meta = hyperrl.load(out, device="meta")
    assert isinstance(meta, AdaptedRun)
    assert (cpu.device, meta.device) == (torch.device("cpu"), torch.device("meta"))
    for run, dev in ((cpu, "cpu"), (meta, "meta")):
        assert {w.device.type for w in run.weights_policy.weights.values()} == {dev}
    assert {k: w.shape for k, w in meta.weights_policy.weights.items()} == \
        {k: w.shape for k, w in cpu.weights_policy.weights.items()}
    seen = []
    monkeypatch.setattr(meta.weights_policy, "actor_factory",
                        lambda deterministic, seed, device: seen.append(torch.device(device)))
    meta.actor_factory()  # actors default to the run's device
    meta.actor_factory(device="cpu")
    assert seen == [torch.device("meta"), torch.device("cpu")]
