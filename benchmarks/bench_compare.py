"""Every method on the benchmark families, several seeds, one comparison table per family.

    python benchmarks/bench_compare.py                       # the full benchmark (hours on CPU)
    python benchmarks/bench_compare.py --families cartpole-mass --seeds 1 --baseline-steps 100000
    python benchmarks/bench_compare.py --out runs/bench-compare-X   # resume: finished runs are reused

For each family and seed, in this order:

1. ``hyperrl``: ``python -m hyperrl.train --env-family F --seed s`` with the family's default
   config (``configs/<family>.yaml``; ``--train-args`` appends flags, e.g. for a quick try);
2. ``dr``, ``concat``, ``oracle``: ``python -m hyperrl.baselines --method M --seed s
   --total-steps B`` with B = the env steps the hyperrl run of that family and seed used
   (its ``metrics.json``), or ``--baseline-steps N`` when that is smaller (the output says
   so). The oracle trains one policy per held-out variant of ``--oracle-split``
   (``--oracle-max-variants`` of them, evenly spaced), each with B steps.
3. ``python -m hyperrl.evaluate RUN_DIR`` for every run when that module exists (a failure is
   reported and that run falls back to its ``metrics.json``);
4. ``python -m hyperrl.compare`` on all runs: the tables are printed and written, with the
   chart, to ``<out>/comparison/`` and, with the settings, to ``<out>/bench.md``.

Runs go to ``<out>/<family>/<method>-s<seed>`` (default ``--out runs/bench-compare-<timestamp>``);
rerunning with the same ``--out`` reuses every finished run (one with ``metrics.json``) and
moves an unfinished one aside. One process at a time; each run's output is in ``<out>/logs``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FAMILIES = ("cartpole-mass", "cartpole-actuator", "pendulum-mass-length")
METHODS = ("hyperrl", "dr", "concat", "oracle")


def parse_seeds(text: str) -> list[int]:
    """'3' -> seeds 1, 2, 3; '0,4,7' -> exactly those."""
    if "," in text:
        return [int(s) for s in text.split(",") if s.strip()]
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("--seeds must be a count >= 1 or a comma-separated list")
    return list(range(1, n + 1))


def parse_list(text: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if allowed is not None:
        bad = [s for s in items if s not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; expected some of {', '.join(allowed)}")
    return items


def finished(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file()


def run_logged(cmd: list[str], log: Path, label: str) -> bool:
    """Run one CLI process (output to ``log``); True on success, else print its tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"  {label} ...", end="", flush=True)
    with open(log, "w") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f" FAILED (exit {proc.returncode}, {dt:.0f} s); last lines of {log}:")
        for line in log.read_text().splitlines()[-6:]:
            print(f"      {line}")
        return False
    print(f" done in {dt:.0f} s")
    return True


def prepare(run_dir: Path) -> bool:
    """True if ``run_dir`` already holds a finished run (reuse); moves an unfinished one aside."""
    if finished(run_dir):
        return True
    if run_dir.exists():
        aside = run_dir.with_name(f"{run_dir.name}.unfinished-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(aside)
        print(f"  moved the unfinished {run_dir} aside to {aside.name}")
    return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", type=parse_list, default=list(FAMILIES), help="comma-separated family names")
    p.add_argument("--seeds", type=parse_seeds, default=[1, 2, 3], help="a count (3 = seeds 1,2,3) or a list 0,4,7")
    p.add_argument("--methods", type=lambda s: parse_list(s, METHODS), default=list(METHODS),
                   help="comma-separated, from " + ",".join(METHODS))
    p.add_argument("--baseline-steps", type=int, help="cap on the baselines' env-step budget (oracle: per variant)")
    p.add_argument("--oracle-split", default="extrapolation", choices=("extrapolation", "interpolation", "all"))
    p.add_argument("--oracle-max-variants", type=int, default=3,
                   help="oracle policies per run (evenly spaced held-out variants); 0 = all of the split")
    p.add_argument("--device", default=None, help="--device for hyperrl.train (baselines train on cpu)")
    p.add_argument("--train-args", default="", help="extra flags for hyperrl.train, e.g. \"--total-steps 200000\"")
    p.add_argument("--baseline-args", default="", help="extra flags for hyperrl.baselines, e.g. \"--eval-episodes 1\"")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/bench-compare-<timestamp>)")
    args = p.parse_args()
    out: Path = (args.out or ROOT / "runs" / f"bench-compare-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    have_evaluate = importlib.util.find_spec("hyperrl.evaluate") is not None
    baselines = [m for m in args.methods if m != "hyperrl"]
    notes: list[str] = []
    run_dirs: list[Path] = []
    failed: list[str] = []
    t_all = time.perf_counter()

    print(f"bench_compare: families {', '.join(args.families)}; seeds {', '.join(map(str, args.seeds))}; "
          f"methods {', '.join(args.methods)}; out {out}")
    for fam in args.families:
        for seed in args.seeds:
            print(f"{fam}, seed {seed}:")
            hyper_dir = out / fam / f"hyperrl-s{seed}"
            if "hyperrl" in args.methods:
                if prepare(hyper_dir):
                    print(f"  hyperrl: reusing {hyper_dir}")
                else:
                    cmd = [py, "-m", "hyperrl.train", "--env-family", fam, "--seed", str(seed),
                           "--run-dir", str(hyper_dir), "--set", "progress=false"]
                    if args.device:
                        cmd += ["--device", args.device]
                    cmd += shlex.split(args.train_args)
                    if not run_logged(cmd, out / "logs" / f"{fam}-hyperrl-s{seed}.log", "hyperrl train"):
                        failed.append(f"{fam} hyperrl s{seed}")
                if finished(hyper_dir):
                    run_dirs.append(hyper_dir)
            if not baselines:
                continue
            # the baselines' budget: the hyperrl run's env steps, capped by --baseline-steps
            hyper_steps = None
            if finished(hyper_dir):
                hyper_steps = int(json.loads((hyper_dir / "metrics.json").read_text())["env_steps"])
            if hyper_steps is None and args.baseline_steps is None:
                print("  no hyperrl run to take the budget from and no --baseline-steps: skipping the baselines")
                failed.append(f"{fam} baselines s{seed} (no budget)")
                continue
            budget = min(x for x in (hyper_steps, args.baseline_steps) if x is not None)
            if hyper_steps is None:
                note = f"{fam} seed {seed}: baselines {budget:,} env steps (--baseline-steps; no hyperrl run)"
            elif budget < hyper_steps:
                note = (f"{fam} seed {seed}: baselines {budget:,} env steps, CAPPED by --baseline-steps "
                        f"(the hyperrl run used {hyper_steps:,})")
            else:
                note = f"{fam} seed {seed}: baselines {budget:,} env steps (= the hyperrl run's)"
            if "oracle" in baselines:
                note += "; oracle: that many PER VARIANT"
            notes.append(note)
            print(f"  {note}")
            for method in baselines:
                run_dir = out / fam / f"{method}-s{seed}"
                if prepare(run_dir):
                    print(f"  {method}: reusing {run_dir}")
                else:
                    cmd = [py, "-m", "hyperrl.baselines", "--env-family", fam, "--method", method,
                           "--seed", str(seed), "--total-steps", str(budget), "--run-dir", str(run_dir)]
                    if method == "oracle":
                        cmd += ["--oracle-split", args.oracle_split]
                        if args.oracle_max_variants:
                            cmd += ["--oracle-max-variants", str(args.oracle_max_variants)]
                    cmd += shlex.split(args.baseline_args)
                    if not run_logged(cmd, out / "logs" / f"{fam}-{method}-s{seed}.log", f"{method} train"):
                        failed.append(f"{fam} {method} s{seed}")
                if finished(run_dir):
                    run_dirs.append(run_dir)

    if have_evaluate:
        print("evaluating every run with python -m hyperrl.evaluate:")
        for run_dir in run_dirs:
            if (run_dir / "eval" / "heldout-all" / "results.json").is_file():
                continue
            label = f"evaluate {run_dir.relative_to(out)}"
            if not run_logged([py, "-m", "hyperrl.evaluate", str(run_dir)],
                              out / "logs" / f"evaluate-{run_dir.parent.name}-{run_dir.name}.log", label):
                notes.append(f"{run_dir.relative_to(out)}: hyperrl.evaluate failed; scored from metrics.json")
    else:
        notes.append("hyperrl.evaluate is not available: every run is scored from its metrics.json "
                     "(the final evaluation at the end of training)")
        print(notes[-1])

    if not run_dirs:
        print("no finished runs to compare")
        return 1
    cmp_out = out / "comparison"
    proc = subprocess.run([py, "-m", "hyperrl.compare", *map(str, run_dirs), "--out", str(cmp_out), "--force"],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"hyperrl.compare failed: {proc.stderr.strip()}")
        return 1
    tables = (cmp_out / "comparison.md").read_text()
    header = [
        "# bench_compare",
        "",
        f"Families {', '.join(args.families)}; seeds {', '.join(map(str, args.seeds))}; "
        f"methods {', '.join(args.methods)}; total wall-clock {(time.perf_counter() - t_all) / 60:.1f} min "
        "(this invocation; reused runs not counted).",
        f"hyperrl.train: default config per family{' + ' + args.train_args if args.train_args else ''}. "
        f"Baselines: SB3 PPO, rl-zoo hyperparameters{' + ' + args.baseline_args if args.baseline_args else ''}; "
        f"oracle: {args.oracle_split} split, "
        f"{args.oracle_max_variants or 'all'} variant(s) per run, the budget per variant.",
        "",
        *[f"- {n}" for n in notes],
        *[f"- FAILED: {f}" for f in failed],
        "",
    ]
    (out / "bench.md").write_text("\n".join(header) + "\n" + tables)
    print()
    print("\n".join(header))
    print(tables)
    print(f"wrote {out / 'bench.md'} and {cmp_out}/comparison.{{md,png,json}}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
