"""Env-steps per second of ``gymnasium.make_vec`` on a hyperrl family beside the batched
simulator it wraps and beside Gymnasium's own ``CartPoleVectorEnv``, same N, same run.

* ``make_vec``: ``gymnasium.make_vec("hyperrl/cartpole-mass-v0", num_envs=N,
  vectorization_mode="vector_entry_point")`` (:class:`hyperrl.vector.FamilyVectorEnv`):
  NumPy actions in, NumPy arrays out, every env its own pole mass, a new one drawn from the
  train distribution at each of its resets, ``info`` with the values and ``final_obs``.
* ``simulator``: the batched simulator alone (``hyperrl.sim.make_vec_env``), each env its
  own pole mass, fresh ``next_params`` at resets (as ``bench_sim.py``), torch tensors out;
  the same NumPy actions, wrapped with ``torch.from_numpy``.
* ``gymnasium``: ``gymnasium.make_vec("CartPole-v1", num_envs=N,
  vectorization_mode="vector_entry_point")``, Gymnasium's numpy ``CartPoleVectorEnv`` (one
  shared parameter set, next-step autoreset), the same NumPy actions.

Random actions (``numpy.random.Generator.integers``) are drawn inside every timed loop. The
three run in interleaved rounds (``--rounds``, ``--seconds`` each), so a machine whose load
changes slows all three alike; each ratio is the median over rounds of the ratio within a
round, the rates the median over rounds.

Part ``sb3`` (what ``hyperrl.baselines`` trains on): SB3 PPO with the baselines' settings
(:func:`hyperrl.baselines.make_sb3_ppo`, rl-zoo hyperparameters: CartPole 8 envs, Pendulum
4, Acrobot 16) on each family, its env steps per second of rollout collection on SB3's
``DummyVecEnv`` of Gymnasium envs beside :class:`hyperrl.sb3.SB3VecEnv` on the batched
simulator (interleaved rounds, medians), and of whole training (rollout + PPO update; the
update is the same work on either env, so one figure, the median of one update on each after
a warm-up one, serves both).

    python benchmarks/bench_gym_api.py                 # both parts: N = 4096, 7 rounds of 1 s
    python benchmarks/bench_gym_api.py --quick         # 3 rounds of 0.3 s; sb3: 3 rollouts
    python benchmarks/bench_gym_api.py --part env --sizes 1024 4096 16384

Targets: ``make_vec`` >= 0.8x the simulator and >= Gymnasium's ``CartPoleVectorEnv``.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Callable

import gymnasium as gym
import numpy as np
import torch
from bench_sim import _cpu_name, _fmt, _rate

import hyperrl  # noqa: F401 - registers the families with Gymnasium
from hyperrl.families import load_family
from hyperrl.sim import make_vec_env

FAMILY = "cartpole-mass"


def make_steppers(n: int, seed: int = 0) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    """name -> (step, close) for the three vector envs, each reset and ready."""
    rng = np.random.default_rng(seed + 1)

    def actions() -> np.ndarray:
        return rng.integers(0, 2, size=n)

    ours = gym.make_vec(hyperrl.family_env_id(FAMILY), num_envs=n, vectorization_mode="vector_entry_point")
    ours.reset(seed=seed)

    family = load_family(FAMILY)
    gen = torch.Generator().manual_seed(seed)
    sim = make_vec_env(family, n, seed=seed, backend="batched")
    sim.reset(params=family.sample(n, gen))
    sim.next_params = family.sample(n, gen)

    theirs = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="vector_entry_point")
    theirs.reset(seed=seed)
    return {
        "make_vec": (lambda: ours.step(actions()), ours.close),
        "simulator": (lambda: sim.step(torch.from_numpy(actions())), sim.close),
        "gymnasium": (lambda: theirs.step(actions()), theirs.close),
    }


def measure(n: int, rounds: int, seconds: float) -> dict[str, list[float]]:
    """Env-steps/s of each stepper, one entry per round (the three interleaved)."""
    steppers = make_steppers(n)
    rates: dict[str, list[float]] = {k: [] for k in steppers}
    for _ in range(rounds):
        for name, (step, _) in steppers.items():
            rates[name].append(_rate(step, n, seconds, warmup=20))
    for _, close in steppers.values():
        close()
    return rates


SB3_FAMILIES = ("cartpole-mass", "pendulum-mass-length", "acrobot-links")


def measure_sb3(family_name: str, rounds: int) -> dict[str, dict[str, float]]:
    """Per VecEnv kind: median rollout env-steps/s over ``rounds`` rollouts, and env-steps/s
    of rollout + one PPO update."""
    import time

    from stable_baselines3.common.callbacks import ConvertCallback

    from hyperrl.baselines import make_sb3_ppo

    family = load_family(family_name)
    models = {}
    for kind in ("dummy", "batched"):
        model = make_sb3_ppo(family, "dr", seed=0, vec_env=kind)
        model._setup_learn(10**9, None)
        callback = ConvertCallback(None)
        callback.init_callback(model)
        models[kind] = (model, callback)
    rollout: dict[str, list[float]] = {k: [] for k in models}
    updates: list[float] = []
    for r in range(rounds + 1):
        for kind, (model, callback) in models.items():
            t0 = time.perf_counter()
            model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
            t1 = time.perf_counter()
            if r <= 1:  # round 0 warms up; the update's work does not depend on the env
                model.train()
                if r == 1:
                    updates.append(time.perf_counter() - t1)
            if r > 0:
                rollout[kind].append(t1 - t0)
    t_update = statistics.median(updates)  # the same work on either env: one figure for both
    out = {}
    for kind, (model, _) in models.items():
        steps = model.n_steps * model.n_envs
        t_roll = statistics.median(rollout[kind])
        out[kind] = {"n_envs": model.n_envs, "rollout": steps / t_roll, "train": steps / (t_roll + t_update)}
        model.env.close()
    return out


def main_sb3(rounds: int) -> None:
    print(f"\nSB3 PPO as hyperrl.baselines trains it (dr, rl-zoo settings); {rounds} rollouts per env, "
          "interleaved; medians\n")
    print("| family | envs | rollout, DummyVecEnv (env-steps/s) | rollout, SB3VecEnv | ratio "
          "| rollout + update, DummyVecEnv | rollout + update, SB3VecEnv | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in SB3_FAMILIES:
        r = measure_sb3(name, rounds)
        d, b = r["dummy"], r["batched"]
        print(f"| {name} | {d['n_envs']} | {d['rollout']:.0f} | {b['rollout']:.0f} "
              f"| {b['rollout'] / d['rollout']:.2f}x | {d['train']:.0f} | {b['train']:.0f} "
              f"| {b['train'] / d['train']:.2f}x |", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096], help="numbers of envs N")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per size")
    ap.add_argument("--seconds", type=float, default=1.0, help="wall-clock seconds per measurement")
    ap.add_argument("--quick", action="store_true", help="3 rounds of 0.3 s; sb3: 3 rollouts per env")
    ap.add_argument("--part", choices=("env", "sb3", "all"), default="all",
                    help="env: make_vec vs simulator vs Gymnasium; sb3: SB3 PPO on DummyVecEnv vs SB3VecEnv")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (numpy's CartPole uses 1)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 3, 0.3
    torch.set_num_threads(args.threads)
    if args.part in ("env", "all"):
        main_env(args)
    if args.part in ("sb3", "all"):
        main_sb3(args.rounds)


def main_env(args: argparse.Namespace) -> None:
    print(f"{FAMILY} on the CPU ({_cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"gymnasium {gym.__version__}); {args.rounds} interleaved rounds of {args.seconds:g} s; "
          "medians over rounds\n")
    print("| N | make_vec (env-steps/s) | simulator | gymnasium CartPoleVectorEnv | make_vec / simulator "
          "| make_vec / gymnasium |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        r = measure(n, args.rounds, args.seconds)
        med = {k: statistics.median(v) for k, v in r.items()}
        vs_sim = statistics.median(a / b for a, b in zip(r["make_vec"], r["simulator"]))
        vs_gym = statistics.median(a / b for a, b in zip(r["make_vec"], r["gymnasium"]))
        print(f"| {n} | {_fmt(med['make_vec'])} | {_fmt(med['simulator'])} | {_fmt(med['gymnasium'])} "
              f"| {vs_sim:.2f}x | {vs_gym:.2f}x |", flush=True)
    print("\ntargets: make_vec / simulator >= 0.8x; make_vec / gymnasium >= 1.0x")


if __name__ == "__main__":
    main()
