"""MuJoCo speed: backends for the cheetah families, hyperrl training on the fastest, SB3 PPO.

    python benchmarks/bench_mujoco.py            # N = 32 variants, 3 s per point, 64 k training steps
    python benchmarks/bench_mujoco.py --quick    # N = 16, 1.5 s per point, 16 k training steps (~2 min)

1. Env steps/s of each backend on cheetah-vel and cheetah-mass-gravity, every one of the N
   envs its own variant (train-distribution draws; an env that ends its episode takes a new
   one), uniform random actions: Gymnasium's ``SyncVectorEnv`` and ``AsyncVectorEnv`` (one
   worker process per env) through hyperrl's generic backend, and the batched MuJoCo
   backend (``mujoco.batch``) with 1 and 2 threads.
2. hyperrl training (rollout + PPO update, evaluation excluded) on the fastest backend, with
   the family's config (``configs/<family>.yaml``) and with a light update (1 epoch x 4
   minibatches), and the backend alone at that config's N (measured right after each):
   training / backend is the share of time MuJoCo's step takes (target >= 2/3).
3. SB3 PPO (MlpPolicy, defaults, one ``HalfCheetah-v5`` env) in the same run: env steps/s of
   ``learn()`` and hyperrl training / SB3 (target >= 10x).

Torch runs one intra-op thread (the machine's other core is MuJoCo's second thread). Every
figure is measured in this process on this machine at this moment: on a machine shared
with other jobs they move with the load, so compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from hyperrl.families import load_family  # noqa: E402
from hyperrl.sim import make_vec_env  # noqa: E402
from hyperrl.sim.generic import GymnasiumVecEnv  # noqa: E402

FAMILIES = ("cheetah-vel", "cheetah-mass-gravity")


def _rate(step, n: int, seconds: float, warmup: int = 3) -> float:
    """Env steps per second of ``step()`` (one step of ``n`` envs) over >= ``seconds``."""
    for _ in range(warmup):
        step()
    done, t0 = 0, time.perf_counter()
    while True:
        step()
        done += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return done * n / elapsed


def backend_rate(family_name: str, backend: str, n: int, seconds: float, seed: int = 0) -> float:
    """Env steps/s of one backend: ``sync``, ``async`` or ``mujoco-<threads>``."""
    family = load_family(family_name)
    gen = torch.Generator().manual_seed(seed)
    if backend in ("sync", "async"):
        env = GymnasiumVecEnv(family, n, seed=seed, vectorization=backend)
    else:
        env = make_vec_env(family, n, seed=seed, threads=int(backend.split("-")[1]))
    try:
        env.reset(params=family.sample(n, gen))
        env.next_params = family.sample(n, gen)  # every autoreset takes a new variant
        act_dim = env.single_action_space.shape[0]
        return _rate(lambda: env.step(torch.rand(n, act_dim, generator=gen) * 2 - 1), n, seconds)
    finally:
        env.close()


# training schedules measured: the family's config, and a light update (one epoch)
SCHEDULES = {"config": [], "1 epoch x 4 minibatches": ["ppo.update_epochs=1", "ppo.num_minibatches=4"]}


def training_rate(family_name: str, steps: int, threads: int, extra: list[str]) -> tuple[float, int]:
    """hyperrl training env steps/s (rollout + update, no evaluation) with the family's
    config and ``extra`` overrides -> (steps/s, N)."""
    from hyperrl.train import resolve_config, train

    family = load_family(family_name)
    sets = ["progress=false", "eval.interval_steps=1000000000", "histogram_interval_evals=0",
            "checkpoint_interval_steps=1000000000", f"env.sim_threads={threads}", *extra]
    cfg = resolve_config(family, None, sets, total_steps=steps, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        metrics = train(cfg, family, Path(tmp) / "run")
    return float(metrics["steps_per_second"]), cfg.env.num_envs


def sb3_rate(steps: int) -> float:
    """SB3 PPO, MlpPolicy, defaults, one HalfCheetah-v5 env: env steps/s of learn()."""
    from stable_baselines3 import PPO

    from hyperrl.families import gym_make

    model = PPO("MlpPolicy", gym_make("HalfCheetah-v5"), seed=0, device="cpu", verbose=0,
                n_steps=min(2048, steps))
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps)
    return model.num_timesteps / (time.perf_counter() - t0)


def _k(rate: float) -> str:
    return f"{rate / 1e3:.2f} k"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 16, 1.5 s per point, 16 k training steps")
    ap.add_argument("--num-envs", type=int, help="N for the backend table (default 32, --quick 16)")
    ap.add_argument("--seconds", type=float, help="seconds per backend point (default 3, --quick 1.5)")
    ap.add_argument("--train-steps", type=int, help="steps of each training measurement (default 65536, --quick 16384)")
    ap.add_argument("--sb3-steps", type=int, help="SB3 PPO steps (default 8192, --quick 4096)")
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), help="families to measure")
    args = ap.parse_args(argv)
    n = args.num_envs or (16 if args.quick else 32)
    seconds = args.seconds or (1.5 if args.quick else 3.0)
    train_steps = args.train_steps or (16384 if args.quick else 65536)
    sb3_steps = args.sb3_steps or (4096 if args.quick else 8192)
    torch.set_num_threads(1)
    print(f"bench_mujoco: {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f} at the start; "
          f"torch {torch.__version__}, 1 intra-op thread\n")

    backends = ["sync", "async", "mujoco-1", "mujoco-2"]
    print(f"## Backends: env steps/s, N = {n}, every env its own variant\n")
    print("| family | " + " | ".join(backends) + " | fastest / sync |")
    print("|---|" + "---:|" * (len(backends) + 1))
    fastest: dict[str, str] = {}
    for fam in args.families:
        rates = {b: backend_rate(fam, b, n, seconds) for b in backends}
        best = max(rates, key=rates.get)
        fastest[fam] = best
        print(f"| {fam} | " + " | ".join(_k(rates[b]) for b in backends)
              + f" | {rates[best] / rates['sync']:.1f}x ({best}) |", flush=True)

    sb3 = sb3_rate(sb3_steps)
    print(f"\n## Training on the fastest backend vs the backend alone and SB3 PPO "
          f"(SB3 PPO on HalfCheetah-v5: {_k(sb3)} steps/s)\n")
    print("| family | backend | N | backend alone | schedule | hyperrl training | training / backend | "
          "training / SB3 |")
    print("|---|---|---:|---:|---|---:|---:|---:|")
    for fam in args.families:
        best = fastest[fam]
        if not best.startswith("mujoco"):
            print(f"| {fam} | {best} | - | - | - | - | - | - |  (training runs the batched backend only)")
            continue
        threads = int(best.split("-")[1])
        for label, extra in SCHEDULES.items():
            rate, n_train = training_rate(fam, train_steps, threads, extra)
            alone = backend_rate(fam, best, n_train, seconds)
            print(f"| {fam} | {best} | {n_train} | {_k(alone)} | {label} | {_k(rate)} | {rate / alone:.2f} | "
                  f"{rate / sb3:.1f}x |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
