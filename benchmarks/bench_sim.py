"""Env-steps per second of a batched torch simulator beside Gymnasium's own vector env
of the same task, same N, same run.

Ours: each of the N envs has its own parameters drawn from the family (``cartpole-mass``:
the pole mass; ``acrobot-links``: both link masses and the first link's length), autoreset
on with fresh ``next_params`` (the trainer's setting), random actions drawn on the device
every step. Theirs, one shared parameter set and their own next-step autoreset, random
actions drawn with numpy every step: for CartPole Gymnasium's numpy
``CartPoleVectorEnv``; for Acrobot, which Gymnasium does not vectorise, the
``gymnasium.vector.SyncVectorEnv`` of N ``Acrobot-v1`` envs that ``gym.make_vec`` builds (what
the generic backend steps). Both include drawing the actions in the timed loop.

    python benchmarks/bench_sim.py                        # cuda if available, else cpu
    python benchmarks/bench_sim.py --device cpu --sizes 1024 4096 --seconds 2
    python benchmarks/bench_sim.py --family acrobot-links --device cpu

Prints a Markdown table; the numbers are wall-clock rates, so a busy machine reads low.
"""

from __future__ import annotations

import argparse
import platform
import time

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

from hyperrl.families import load_family
from hyperrl.sim import make_vec_env


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# family -> what Gymnasium's own vector env of its task is called in the table
THEIRS = {"cartpole-mass": "CartPoleVectorEnv (numpy)", "acrobot-links": "SyncVectorEnv of Acrobot-v1"}


def _rate(step, n: int, seconds: float, sync=lambda: None, warmup: int = 50, chunk: int = 10) -> float:
    """Env-steps per second of ``step()`` over at least ``seconds`` of wall clock."""
    for _ in range(warmup):
        step()
    sync()
    done = 0
    t0 = time.perf_counter()
    while True:
        for _ in range(chunk):
            step()
        done += chunk
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return done * n / elapsed
        chunk = min(chunk * 2, 1000)


def bench_ours(family_name: str, n: int, device: torch.device, seconds: float, seed: int = 0) -> float:
    family = load_family(family_name)
    gen = torch.Generator(device=device).manual_seed(seed)
    env = make_vec_env(family, n, device=device, dtype=torch.float32, seed=seed, backend="batched")
    env.reset(params=family.sample(n, gen, device=device))
    env.next_params = family.sample(n, gen, device=device)  # every autoreset draws a new variant
    act_gen = torch.Generator(device=device).manual_seed(seed + 1)
    num_actions = int(env.single_action_space.n)

    def step() -> None:
        env.step(torch.randint(0, num_actions, (n,), generator=act_gen, device=device))

    return _rate(step, n, seconds, sync=lambda: _sync(device))


def bench_gymnasium(family_name: str, n: int, seconds: float, seed: int = 0) -> float:
    if family_name == "cartpole-mass":
        env = CartPoleVectorEnv(num_envs=n)
        warmup, chunk = 50, 10
    else:  # one Python env per variant: a step of N envs takes ~N * 50 us, so few steps
        env = gym.make_vec(load_family(family_name).env_id, num_envs=n, vectorization_mode="sync")
        warmup, chunk = 2, 1
    env.reset(seed=seed)
    rng = np.random.default_rng(seed + 1)
    num_actions = int(env.single_action_space.n)

    def step() -> None:
        env.step(rng.integers(0, num_actions, size=n))

    rate = _rate(step, n, seconds, warmup=warmup, chunk=chunk)
    env.close()
    return rate


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="cartpole-mass", choices=sorted(THEIRS),
                    help="the batched simulator's family (and so Gymnasium's task)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    ap.add_argument("--seconds", type=float, default=2.0, help="wall-clock seconds per measurement")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 16384], help="numbers of envs N")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads on the CPU (default 1, like numpy's CartPole; 0 keeps "
                         "torch's default). On a shared machine more threads can stall: an op split "
                         "across threads waits for a core another process holds")
    args = ap.parse_args(argv)

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if device.type == "cpu" and args.threads > 0:
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    print(
        f"batched {args.family} ({device}, {where}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)) vs gymnasium {THEIRS[args.family]} (1 thread); "
        f"{args.seconds:g} s per point\n"
    )
    print("| N | ours (env-steps/s) | gymnasium (env-steps/s) | ours / gymnasium |")
    print("|---:|---:|---:|---:|")
    for n in args.sizes:
        ours = bench_ours(args.family, n, device, args.seconds)
        theirs = bench_gymnasium(args.family, n, args.seconds)
        print(f"| {n} | {_fmt(ours)} | {_fmt(theirs)} | {ours / theirs:.2f}x |", flush=True)


def _fmt(rate: float) -> str:
    return f"{rate / 1e6:.2f} M" if rate >= 1e6 else f"{rate / 1e3:.1f} k"


if __name__ == "__main__":
    main()
