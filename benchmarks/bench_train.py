"""Training targets, measured (not timed tests): throughput and time to target, beside SB3.

    python benchmarks/bench_train.py                     # everything below
    python benchmarks/bench_train.py --part throughput   # steps/s, N=1024, vs SB3 PPO CartPole-v1
    python benchmarks/bench_train.py --part cartpole-mass --seeds 3
    python benchmarks/bench_train.py --part cartpole-actuator
    python benchmarks/bench_train.py --part pendulum

* throughput: hyperrl training (rollout + update) env steps/s with N = 1,024 variants,
  beside SB3 PPO (MlpPolicy, defaults, one CartPole-v1 env) on the same machine, same run;
  then whole runs of the throughput config (configs/cartpole-mass-n1024.yaml) per seed:
  time to 475, final held-out returns and whole-run steps/s, so the fast schedule is
  shown to learn, not only to step.
* cartpole-mass: per seed, the whole ``python -m hyperrl.train`` process with the default
  config stopping at 475 on both held-out splits: time to target (from the start of
  training) and the whole process's wall-clock; then SB3 PPO 'concat' (context appended
  to the observation, rl-zoo CartPole hyperparameters) trained on the same family: its time
  to the same score on the same variants, or its score at the end of its budget.
* cartpole-actuator: the default config vs the context-blind ablation (model.context=none).
* pendulum: held-out mean return of the default config.
Figures are printed as Markdown tables; benchmarks/README.md records them with this command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_train(family: str, seed: int, extra: list[str], timeout: float = 900) -> dict:
    """The real CLI in a subprocess; returns metrics.json plus the process wall-clock."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "hyperrl.train", "--env-family", family, "--seed", str(seed),
               "--run-dir", str(run_dir), "--set", "progress=false", *extra]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["process_wall_s"] = wall
    return metrics


def sb3_cartpole_steps_per_second(steps: int = 8192) -> float:
    """SB3 PPO, MlpPolicy, defaults, one CartPole-v1 env: env steps/s of learn()."""
    import gymnasium as gym
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", gym.make("CartPole-v1"), seed=0, device="cpu", verbose=0)
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps)
    return model.num_timesteps / (time.perf_counter() - t0)


N1024 = ["--config", "configs/cartpole-mass-n1024.yaml"]


def part_throughput(args: argparse.Namespace) -> None:
    print("\n## Training throughput (rollout + update), cartpole-mass, N = 1,024 variants\n")
    sb3 = sb3_cartpole_steps_per_second()
    print("| trainer | env steps/s | ratio to SB3 |\n|---|---:|---:|")
    fast = ["--set", "model.activation=fast_tanh"]
    default_at_1024 = ["--set", "env.num_envs=1024"]  # the default config's schedule, N = 1,024
    variants = [
        ("configs/cartpole-mass-n1024.yaml: T=32, 1 epoch x 16 minibatches", N1024),
        ("configs/cartpole-mass-n1024.yaml, fast_tanh", [*N1024, *fast]),
        ("T=32, 4 epochs x 8 minibatches (cartpole-mass.yaml's schedule)", default_at_1024),
        ("T=32, 4 epochs x 8 minibatches, fast_tanh", [*default_at_1024, *fast]),
        ("T=32, 4 epochs x 8 minibatches, critic [32,32]", [*default_at_1024, "--set", "model.critic_hidden_sizes=[32,32]"]),
    ]
    for label, extra in variants:
        # 48 updates (1.57 M steps), evaluation only at the end (excluded from steps/s): long
        # enough that the first, slower updates (warm-up, short early episodes) do not set the figure.
        m = run_train("cartpole-mass", 1, [*extra, "--total-steps", str(48 * 1024 * 32),
                                           "--set", "eval.interval_steps=100000000"])
        ours = m["steps_per_second"]
        print(f"| hyperrl, N=1,024 variants, {label} ({m['device']}) | {ours:,.0f} | {ours / sb3:.0f}x |", flush=True)
    print(f"| SB3 PPO MlpPolicy, CartPole-v1, 1 env, defaults | {sb3:,.0f} | 1x |")

    # The throughput schedule must also learn: whole runs (evaluations included in the time
    # to target, excluded from steps/s), per seed.
    print(f"\n### configs/cartpole-mass-n1024.yaml learns: whole runs, {args.seeds} seeds\n")
    print("| seed | time to 475 (both splits) | env steps | final interp / extrap | steps/s (whole run) | ratio to SB3 | "
          "whole process |\n|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for seed in range(1, args.seeds + 1):
        m = run_train("cartpole-mass", seed, N1024)
        rows.append(m)
        ttt = m["time_to_target_s"]
        print(f"| {seed} | {'not reached' if ttt is None else f'{ttt:.1f} s'} | {m['steps_to_target'] or '-'} | "
              f"{m['eval_interpolation_return']:.0f} / {m['eval_extrapolation_return']:.0f} | "
              f"{m['steps_per_second']:,.0f} | {m['steps_per_second'] / sb3:.0f}x | {m['process_wall_s']:.1f} s |", flush=True)
    ttt = [m["time_to_target_s"] for m in rows]
    done = [t for t in ttt if t is not None]
    sps = statistics.median(m["steps_per_second"] for m in rows)
    print(f"\nreached 475 on {len(done)} of {len(rows)} seeds"
          + (f" (median {statistics.median(done):.1f} s, max {max(done):.1f} s)" if done else "")
          + f"; ended >= 475 on both splits on {sum(min(m['eval_interpolation_return'], m['eval_extrapolation_return']) >= 475 for m in rows)}"
          + f"; median whole-run steps/s {sps:,.0f} = {sps / sb3:.0f}x SB3 ({sb3:,.0f})")


def part_cartpole_mass(args: argparse.Namespace) -> None:
    from hyperrl.families import load_family
    from hyperrl.baselines import make_sb3_ppo, train_sb3_until

    print(f"\n## cartpole-mass: time to mean zero-shot return >= 475 on both held-out splits ({args.seeds} seeds)\n")
    rows = []
    for seed in range(1, args.seeds + 1):
        m = run_train("cartpole-mass", seed, ["--set", "stop_at_return=475"])
        rows.append(m)
        print(f"seed {seed}: time to target {m['time_to_target_s']}, steps {m['steps_to_target']}, "
              f"process {m['process_wall_s']:.1f} s, interp {m['eval_interpolation_return']:.1f}, "
              f"extrap {m['eval_extrapolation_return']:.1f}", flush=True)
    fam = load_family("cartpole-mass")
    sb3_rows = []
    for seed in range(1, args.sb3_seeds + 1):
        model = make_sb3_ppo(fam, "concat", seed)
        r = train_sb3_until(model, fam, "concat", 475.0, max_steps=args.sb3_steps, eval_every=10_000)
        sb3_rows.append(r)
        f = r["final"]
        print(f"SB3 concat seed {seed}: reached={r['reached']} time {r['time_to_target_s']} steps "
              f"{r['steps_to_target']}; final interp {f['interpolation']:.1f} extrap {f['extrapolation']:.1f} "
              f"after {r['steps']:,} steps, {r['wall_s']:.0f} s", flush=True)

    def fmt(x: float | None) -> str:
        return "not reached" if x is None else f"{x:.1f} s"

    ttt = [m["time_to_target_s"] for m in rows]
    reached = [t for t in ttt if t is not None]
    print("\n| method | seed | time to 475 (both splits) | env steps | whole process | final interp / extrap |")
    print("|---|---:|---:|---:|---:|---:|")
    for seed, m in enumerate(rows, 1):
        print(f"| hyperrl (default config) | {seed} | {fmt(m['time_to_target_s'])} | {m['steps_to_target'] or '-'} | "
              f"{m['process_wall_s']:.1f} s | {m['eval_interpolation_return']:.0f} / {m['eval_extrapolation_return']:.0f} |")
    for seed, r in enumerate(sb3_rows, 1):
        f = r["final"]
        print(f"| SB3 PPO concat (zoo hyperparameters) | {seed} | {fmt(r['time_to_target_s'])} | "
              f"{r['steps_to_target'] or '-'} | {r['wall_s']:.1f} s | {f['interpolation']:.0f} / {f['extrapolation']:.0f} |")
    if len(reached) == len(ttt):
        med = statistics.median(ttt)
        print(f"\nhyperrl median time to target {med:.1f} s, max {max(ttt):.1f} s; "
              f"median whole process {statistics.median(m['process_wall_s'] for m in rows):.1f} s")
        sb3_t = [r["time_to_target_s"] for r in sb3_rows if r["time_to_target_s"] is not None]
        if len(sb3_t) == len(sb3_rows) and sb3_t:
            print(f"SB3 concat median time to target {statistics.median(sb3_t):.1f} s: "
                  f"ratio {statistics.median(sb3_t) / med:.1f}x")
        else:
            print(f"SB3 concat did not reach 475 on both splits within {args.sb3_steps:,} steps in every seed")
    else:
        print(f"\nhyperrl did not reach the target in {len(ttt) - len(reached)} of {len(ttt)} seeds")


def part_actuator(args: argparse.Namespace) -> None:
    print("\n## cartpole-actuator: hypernetwork vs context-blind ablation (held-out mean return)\n")
    print("| method | seed | interpolation | extrapolation | env steps | wall-clock |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, extra in [("hyperrl (default config)", []), ("context-blind (model.context=none)", ["--set", "model.context=none"])]:
        for seed in range(1, args.seeds + 1):
            m = run_train("cartpole-actuator", seed, extra)
            print(f"| {label} | {seed} | {m['eval_interpolation_return']:.1f} | {m['eval_extrapolation_return']:.1f} | "
                  f"{m['env_steps']:,} | {m['process_wall_s']:.0f} s |", flush=True)


def part_pendulum(args: argparse.Namespace) -> None:
    print("\n## pendulum-mass-length: held-out mean return (default config)\n")
    print("| seed | interpolation | extrapolation | env steps | wall-clock |\n|---:|---:|---:|---:|---:|")
    for seed in range(1, args.seeds + 1):
        m = run_train("pendulum-mass-length", seed, [], timeout=3600)
        print(f"| {seed} | {m['eval_interpolation_return']:.1f} | {m['eval_extrapolation_return']:.1f} | "
              f"{m['env_steps']:,} | {m['process_wall_s']:.0f} s |", flush=True)


PARTS = {"throughput": part_throughput, "cartpole-mass": part_cartpole_mass,
         "cartpole-actuator": part_actuator, "pendulum": part_pendulum}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=[*PARTS, "all"], default="all")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--sb3-seeds", type=int, default=1, help="seeds of the SB3 concat reference")
    p.add_argument("--sb3-steps", type=int, default=300_000, help="env-step budget of the SB3 reference")
    args = p.parse_args()
    os.chdir(ROOT)
    import platform

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    for name, fn in PARTS.items():
        if args.part in (name, "all"):
            fn(args)


if __name__ == "__main__":
    main()
