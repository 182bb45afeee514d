"""The field's protocol: every architecture, many seeds, normalised scores, one family per command.

    python benchmarks/protocol.py --family cartpole-actuator --steps 500000 --oracle-steps 200000 \
        --oracle-set env.num_envs=16 --oracle-set ppo.num_steps=128 --oracle-set ppo.num_minibatches=4 \
        --oracle-set ppo.lr=0.001                                                # 10 seeds x 5 archs
    python benchmarks/protocol.py --family pendulum-actuator --seeds 5
    python benchmarks/protocol.py --family cartpole-actuator --distractors 100 --seeds 5
    python benchmarks/protocol.py --family cartpole-actuator --tune ppo.lr=0.001,0.0025 --tune-seeds 2

All architectures (``model.arch``: hyper, adapter, cgate, concat, blind) train with the same
PPO, the family's config (``configs/<family>.yaml``), the same simulators and the same env-step
budget (``--steps``, default the config's ``total_steps``), so a comparison measures the
architecture and nothing else. Then, for the family:

1. train ``arch`` x ``seed`` (``python -m hyperrl.train --set model.arch=A --seed S``), each
   run's final policy evaluated on every held-out variant (``python -m hyperrl.evaluate RUN
   --split all --checkpoint latest --backend batched``: the 'best' checkpoint is chosen on the
   held-out sets themselves);
2. oracles: for each held-out variant a ``blind`` policy trained on that variant alone (a
   one-variant family written next to the runs), ``--oracle-steps`` env steps with the
   family's config plus ``--oracle-set`` overrides, evaluated on its variant; the
   random-policy return is computed by ``hyperrl.compare``;
3. ``python -m hyperrl.compare RUNS --oracle ORACLES``: per variant
   ``(R - R_random) / (R_oracle - R_random)``, IQM with 95 % stratified-bootstrap CIs,
   probability of improvement of ``hyper`` over every other arch, performance profiles
   (table and PNGs in ``<out>/<family>[-dK]/comparison``), then the issue's target ratios.

With ``--distractors K`` the comparison also holds the K = 0 runs of the same archs and seeds
(when they exist), and prints the share of its K = 0 IQM each arch keeps.

``--tune KEY=V1,V2,...`` first tries every value for every arch on ``--tune-seeds`` seeds
(seeds 1001, 1002, ... so tuning never sees an evaluation seed) and keeps, per arch, the
value with the best IQM of raw return on the *interpolation* set (extrapolation stays
unseen); the choices are printed and saved in ``<out>/<family>/tuning.json``.

Every run and evaluation is reused when the script runs again with the same ``--out``
(default ``runs/protocol``), unless the run's saved config disagrees with the settings asked
for now (a tuned value, another ``--steps``): such a run is moved aside and retrained;
``--workers`` processes run at once, one torch thread each (and one MuJoCo thread:
``env.sim_threads=1`` for a ``batched: mujoco`` family).
Each command's output is in ``<out>/logs``; the wall-clock of each phase is printed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_compare import parse_list, parse_seeds  # noqa: E402
from hyperrl.archs import ARCHS  # noqa: E402
from hyperrl.compare import iqm  # noqa: E402
from hyperrl.families import SPLITS, Family, load_family  # noqa: E402
from hyperrl.fileio import write_json  # noqa: E402
from hyperrl.runs import read_json, read_metrics  # noqa: E402
from hyperrl.train import config_differences  # noqa: E402
from hyperrl.yamlio import read_yaml_file  # noqa: E402

ARCH_ORDER = ("hyper", "adapter", "cgate", "concat", "blind")
EVAL_NAME = "heldout-all"
TUNE_SEED0 = 1000


def run_cmd(cmd: list[str], log: Path) -> None:
    """Run one command with one torch thread, output to ``log``; raise with the log's tail on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if rc != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(cmd[2:5])}... failed (exit {rc}); {log}: {' | '.join(tail)}")


def log_name(run_dir: Path) -> str:
    """``<family tag>-<arch>-<seed>`` (or ``<oracles>-<variant>-run``): one log per run."""
    return "-".join(run_dir.parts[-3:])


def train_and_evaluate(family_arg: str, run_dir: Path, seed: int, steps: int, sets: list[str],
                       episodes: int, logs: Path, evaluate_args: list[str] | None = None,
                       sb3: str | None = None, config: Path | None = None, check: bool = True) -> Path:
    """One training run (``hyperrl.train``, or ``hyperrl.baselines --method sb3``) and its
    held-out evaluation; both skipped when already done. With ``check``, a finished run whose
    saved config disagrees with ``seed``, ``steps`` or ``sets`` is set aside and retrained
    (oracles skip it: their schedule may differ per variant, see ``--more-oracles``)."""
    py = sys.executable
    results = run_dir / "eval" / EVAL_NAME / "results.json"
    stale = [] if sb3 or not check else config_differences(
        run_dir, load_family(family_arg), str(config) if config else None, ["progress=false", *sets], seed, steps, "cpu")
    if stale:  # a run made with other settings (e.g. before a tuning changed them): set aside, never deleted
        print(f"  {run_dir}: {', '.join(stale)}; retraining")
        run_dir.rename(run_dir.with_name(run_dir.name + f".stale-{int(time.time())}"))
    if results.is_file() and not stale:
        return run_dir
    if not (run_dir / "metrics.json").is_file():
        if run_dir.exists():  # an unfinished run: move it aside, never delete
            run_dir.rename(run_dir.with_name(run_dir.name + f".unfinished-{int(time.time())}"))
        common = ["--env-family", family_arg, "--seed", str(seed), "--total-steps", str(steps),
                  "--device", "cpu", "--run-dir", str(run_dir)]
        if sb3:
            cmd = [py, "-m", "hyperrl.baselines", "--method", sb3, *common, "--threads", "1"]
        else:
            cmd = [py, "-m", "hyperrl.train", *common, "--set", "progress=false",
                   *(["--config", str(config)] if config else [])]
        for s in sets:
            cmd += ["--set", s]
        run_cmd(cmd, logs / f"{log_name(run_dir)}-train.log")
    # the final policy: a 'best' checkpoint is chosen on the held-out sets themselves
    # the batched simulator: equivalent to Gymnasium step by step (tests/test_sim_equivalence.py), and
    # ~10x cheaper than a Python env per variant
    cmd = [py, "-m", "hyperrl.evaluate", str(run_dir), "--episodes", str(episodes), "--name", EVAL_NAME,
           *([] if sb3 else ["--checkpoint", "latest"]), "--backend", "batched", "--force",
           *(evaluate_args or ["--split", "all"])]
    run_cmd(cmd, logs / f"{log_name(run_dir)}-eval.log")
    return run_dir


def oracle_family(family: Family, values: list[float], path: Path) -> Path:
    """A one-variant family YAML: every parameter's train range is the point ``values``."""
    return family.save_one_variant(values, path)


def split_returns(run_dir: Path, split: str) -> list[float]:
    res = read_json(run_dir / "eval" / EVAL_NAME / "results.json")
    return [float(v["mean"]) for v in res["variants"] if v.get("split") == split]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", required=True)
    ap.add_argument("--archs", type=lambda s: parse_list(s, ARCHS), default=list(ARCH_ORDER))
    ap.add_argument("--seeds", type=parse_seeds, default=parse_seeds("10"), help="a count (1..N) or a list")
    ap.add_argument("--steps", type=int, default=None, help="env steps per run (default: the config's)")
    ap.add_argument("--distractors", type=int, default=0, help="K irrelevant context dimensions")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override for every run")
    ap.add_argument("--oracle-steps", type=int, default=None, help="env steps per oracle (default: --steps)")
    ap.add_argument("--oracle-set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the oracles only (a one-variant task often wants a smaller batch)")
    ap.add_argument("--no-oracles", action="store_true", help="compare raw returns (no oracle runs)")
    ap.add_argument("--more-oracles", nargs="*", default=[], metavar="RUN_DIR",
                    help="further oracle runs (e.g. another schedule); a variant's oracle is its best run")
    ap.add_argument("--sb3-seeds", type=int, default=0,
                    help="also train stable-baselines3's concat (hyperrl.baselines) on seeds 1..N, same steps")
    ap.add_argument("--episodes", type=int, default=10, help="evaluation episodes per held-out variant")
    ap.add_argument("--tune", default=None, metavar="KEY=V1,V2,...", help="small equal tuning budget per arch")
    ap.add_argument("--tune-seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default="runs/protocol")
    ap.add_argument("--bootstrap-reps", type=int, default=2000)
    ap.add_argument("--compare-name", default="comparison", help="folder of the comparison under the family's")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    family = load_family(args.family)
    config_path = ROOT / "configs" / f"{family.name}.yaml"  # the oracles' too, named explicitly
    config = read_yaml_file(config_path)
    steps = args.steps or int(config["total_steps"])
    oracle_steps = args.oracle_steps or steps
    tag = family.name + (f"-d{args.distractors}" if args.distractors else "")
    out = Path(args.out) / tag
    logs = Path(args.out) / "logs"
    # one thread per run, MuJoCo's batched backend included: --workers runs share the cores
    thread_sets = ["env.sim_threads=1"] if family.batched == "mujoco" else []
    base_sets = [f"env.distractors={args.distractors}", *thread_sets, *args.sets]
    pool = ThreadPoolExecutor(max_workers=max(1, args.workers))
    print(f"{tag}: archs {', '.join(args.archs)}; seeds {args.seeds[0]}..{args.seeds[-1]} ({len(args.seeds)}); "
          f"{steps:,} env steps per run; {args.workers} worker(s); out {out}")

    # ---- tuning (interpolation only) -----------------------------------------------------
    chosen: dict[str, list[str]] = {a: [] for a in args.archs}
    if args.tune:
        t = time.perf_counter()
        key, vals = args.tune.split("=", 1)
        values = [v for v in vals.split(",") if v]
        tune_seeds = [TUNE_SEED0 + i for i in range(1, args.tune_seeds + 1)]
        jobs = {(a, v, s): pool.submit(train_and_evaluate, args.family, out / "tuning" / f"{a}-{key}={v}" / f"s{s}",
                                       s, steps, [*base_sets, f"model.arch={a}", f"{key}={v}"], args.episodes, logs)
                for a in args.archs for v in values for s in tune_seeds}
        table = {}
        for a in args.archs:
            scores = {v: iqm([r for s in tune_seeds for r in split_returns(jobs[(a, v, s)].result(), "interpolation")])
                      for v in values}
            best = max(values, key=lambda v: scores[v])
            chosen[a] = [f"{key}={best}"]
            table[a] = {"scores": scores, "chosen": best}
            print(f"  tune {a:8s} " + "  ".join(f"{key}={v}: {scores[v]:.1f}" for v in values) + f"  -> {best}")
        write_json(out / "tuning.json", {"key": key, "seeds": tune_seeds, "archs": table})
        print(f"tuning: {len(jobs)} runs in {time.perf_counter() - t:.0f} s")
    elif (out / "tuning.json").is_file():  # a later run of the protocol keeps the tuned values
        tuned = read_json(out / "tuning.json")
        for a in args.archs:
            if a in tuned["archs"]:
                chosen[a] = [f"{tuned['key']}={tuned['archs'][a]['chosen']}"]
        print("tuned settings (tuning.json): " + ", ".join(f"{a}: {' '.join(c) or 'config'}" for a, c in chosen.items()))

    # ---- the runs ---------------------------------------------------------------------------
    t = time.perf_counter()
    runs = {(a, s): pool.submit(train_and_evaluate, args.family, out / a / f"s{s}", s, steps,
                                [*base_sets, f"model.arch={a}", *chosen[a]], args.episodes, logs)
            for s in args.seeds for a in args.archs}
    # ---- oracles: one blind policy per held-out variant, trained on that variant alone ------
    sb3 = [pool.submit(train_and_evaluate, args.family, out / "sb3-concat" / f"s{s}", s, steps, [],
                       args.episodes, logs, ["--split", "all"], "concat") for s in range(1, args.sb3_seeds + 1)]
    oracles = []
    for split in ([] if args.no_oracles else SPLITS):
        for v in family.heldout_values(split).tolist():
            label = family.label(v).replace("=", "").replace(",", "_")
            fam_path = oracle_family(family, v, out.parent / f"{family.name}-oracles" / label / "family.yaml")
            run_dir = fam_path.parent / "run"
            oracles.append(pool.submit(
                train_and_evaluate, str(fam_path), run_dir, 1, oracle_steps,
                ["model.arch=blind", *thread_sets, *args.sets, *args.oracle_set],
                args.episodes, logs, ["--split", "interpolation"], None, config_path, False))
    run_dirs = [f.result() for f in [*runs.values(), *sb3]]
    oracle_dirs = [f.result() for f in oracles] + [Path(d) for d in args.more_oracles]
    print(f"runs: {len(run_dirs)} + {len(oracle_dirs)} oracles in {time.perf_counter() - t:.0f} s")

    # ---- statistics -------------------------------------------------------------------------
    if args.distractors:  # the same archs and seeds without distractors, where they exist, side by side
        k0 = [Path(args.out) / family.name / a / f"s{s}" for s in args.seeds for a in args.archs]
        run_dirs += [d for d in k0 if (d / "eval" / EVAL_NAME / "results.json").is_file()]
    cmp_out = out / args.compare_name
    cmd = [sys.executable, "-m", "hyperrl.compare", *map(str, run_dirs),
           *(["--oracle", *map(str, oracle_dirs)] if oracle_dirs else []), "--eval-name", EVAL_NAME, "--out", str(cmp_out), "--force", "--bootstrap-reps", str(args.bootstrap_reps)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rc = subprocess.run(cmd, env=env, cwd=ROOT).returncode
    if rc != 0:  # compare printed its one-line error
        return rc
    print_per_seed({key: f.result() for key, f in runs.items()}, args.archs, args.seeds)
    train_s = [read_metrics(d).get("wall_clock_s", 0.0) for d in run_dirs + oracle_dirs]
    print(f"  training wall-clock summed over the {len(train_s)} runs (oracles included): {sum(train_s):.0f} s "
          f"(one thread each; reused runs count their original time)")
    print_targets(cmp_out / "comparison.json", family.name)
    print(f"{tag}: wall-clock {time.perf_counter() - t0:.0f} s")
    return 0


def print_per_seed(runs: dict[tuple[str, int], Path], archs: list[str], seeds: list[int]) -> None:
    """Per seed and arch: the mean held-out return, interpolation / extrapolation."""
    print("  per seed, mean held-out return (interpolation / extrapolation):")
    print("    " + "seed".ljust(6) + "".join(a.rjust(18) for a in archs))
    for s in seeds:
        cells = [f"{mean(split_returns(runs[(a, s)], 'interpolation')):.1f} / "
                 f"{mean(split_returns(runs[(a, s)], 'extrapolation')):.1f}" for a in archs]
        print("    " + str(s).ljust(6) + "".join(c.rjust(18) for c in cells))


def mean(x: list[float]) -> float:
    return sum(x) / len(x)


def print_targets(path: Path, family: str) -> None:
    """Per split: each arch's IQM of normalised score, hyper's IQM ratio over it and the
    probability that hyper improves on it, from compare's ``comparison.json``."""
    panels = read_json(path)["protocol"].get(family, {})
    for split, panel in panels.items():
        print(f"  {split} ({panel['score']}):")
        for m, s in panel["methods"].items():
            lo, hi = s["ci95"]
            line = f"    {m:12s} IQM {s['iqm']:7.3f} [{lo:.3f}, {hi:.3f}]"
            if s.get("iqm_ratio") is not None:
                line += f"   hyper/{m} {s['iqm_ratio']:.2f}x"
            if s.get("improvement"):
                p, (plo, phi) = s["improvement"]["p"], s["improvement"]["ci95"]
                line += f"   P(hyper > {m}) {p:.2f} [{plo:.2f}, {phi:.2f}]"
            base, _, k = m.partition("-d")
            if k and base in panel["methods"] and panel["methods"][base]["iqm"] > 0:
                line += f"   keeps {s['iqm'] / panel['methods'][base]['iqm']:.1%} of {base}'s K=0 IQM"
            print(line)


if __name__ == "__main__":
    sys.exit(main())
