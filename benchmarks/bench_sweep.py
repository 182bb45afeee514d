"""Wall-clock of a sweep on Ray beside the same trainings run one after another.

    python benchmarks/bench_sweep.py                 # 8 trials of 131,072 env steps
    python benchmarks/bench_sweep.py --quick         # 8 trials of 32,768 env steps (a few minutes)
    python benchmarks/bench_sweep.py --quick --serial-threads 0   # serial runs with torch's default threads

The same 8 trainings (cartpole-mass, the family's config, arch hyper, seeds 1..8, CPU) run
twice, each timed as a whole from the command's start to its end:

* one after another, ``python -m hyperrl.train --seed S ...`` per trial, with
  ``--serial-threads`` torch threads each (default 1, as a sweep trial has: the ratio then
  measures running trials side by side, and the sweep's overhead; 0: torch's own default,
  every core, what a user gets without setting ``OMP_NUM_THREADS``);
* as one sweep, ``python -m hyperrl.sweep`` with one CPU (and one torch thread) per trial on
  a local Ray started by the sweep (Ray's start, the final comparison and every process
  start included).

Prints both wall-clocks and their ratio sweep / serial (the target: at most 0.6 on a
2-core machine) and the machine's load average before and after, since the figures are
wall-clock and a shared machine reads slow. Outputs under ``--out`` (default
``runs/bench-sweep``), replaced on each run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Run ``cmd`` to its end (output to ``log``); its wall-clock in seconds."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if rc != 0:
        tail = " | ".join(log.read_text().strip().splitlines()[-3:])
        raise SystemExit(f"error: {' '.join(cmd[:4])} ... failed (exit {rc}); {log}: {tail}")
    return time.perf_counter() - t0


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=None, help="env steps per trial (default 131072; --quick 32768)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--family", default="cartpole-mass")
    ap.add_argument("--serial-threads", type=int, default=1,
                    help="torch threads of each serial run (0: torch's default, every core)")
    ap.add_argument("--out", default="runs/bench-sweep")
    args = ap.parse_args(argv)
    steps = args.steps or (32_768 if args.quick else 131_072)
    seeds = list(range(1, args.trials + 1))
    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    (out / "logs").mkdir(parents=True)
    py = sys.executable
    base_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the sweep starts its own Ray
    base_env["PYTHONPATH"] = str(ROOT)
    cores = os.cpu_count() or 1
    print(f"{args.trials} trials: {args.family}, arch hyper, seeds {seeds[0]}..{seeds[-1]}, {steps:,} env steps "
          f"each, CPU; {cores} cores; load average before: {load()}", flush=True)

    # ---- one after another ---------------------------------------------------------------
    serial_env = dict(base_env)
    if args.serial_threads:
        serial_env["OMP_NUM_THREADS"] = str(args.serial_threads)
    else:
        serial_env.pop("OMP_NUM_THREADS", None)
    per_run = []
    for s in seeds:
        per_run.append(run([py, "-m", "hyperrl.train", "--env-family", args.family, "--seed", str(s),
                            "--total-steps", str(steps), "--device", "cpu", "--run-dir", str(out / "serial" / f"s{s}"),
                            "--set", "progress=false"], serial_env, out / "logs" / f"serial-s{s}.log"))
    serial = sum(per_run)
    print(f"one after another (hyperrl.train, {args.serial_threads or 'default'} thread(s)): {serial:.1f} s "
          f"({serial / len(seeds):.1f} s per run); load average: {load()}", flush=True)

    # ---- one sweep -----------------------------------------------------------------------
    sweep = out / "bench.yaml"
    sweep.write_text(yaml.safe_dump({"name": "bench", "storage": str(out / "sweeps"), "families": [args.family],
                                     "archs": ["hyper"], "seeds": seeds, "total_steps": steps, "cpus": 1}))
    sweep_env = {**base_env, "OMP_NUM_THREADS": "1"}
    wall = run([py, "-m", "hyperrl.sweep", str(sweep)], sweep_env, out / "logs" / "sweep.log")
    summary = json.loads((out / "sweeps" / "bench" / "sweep.json").read_text())
    finished = sum(t["status"] == "finished" for t in summary["trials"])
    assert finished == len(seeds), f"only {finished} of {len(seeds)} sweep trials finished"
    print(f"one sweep (hyperrl.sweep, local Ray, 1 CPU per trial): {wall:.1f} s; load average: {load()}")

    def mean_return(run_dir: Path) -> float:
        m = json.loads((run_dir / "metrics.json").read_text())
        return 0.5 * (m["eval_interpolation_return"] + m["eval_extrapolation_return"])

    a = [mean_return(out / "serial" / f"s{s}") for s in seeds]
    b = [mean_return(out / "sweeps" / "bench" / args.family / f"hyper-s{s}") for s in seeds]
    print(f"mean held-out return over the trials: serial {sum(a) / len(a):.1f}, sweep {sum(b) / len(b):.1f}")
    print(f"sweep / serial wall-clock: {wall / serial:.2f} (target <= 0.6)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
