"""Env-steps per second of the batched torch CartPole beside Gymnasium's own numpy
``CartPoleVectorEnv``, same N, same run.

Ours: each of the N envs has its own pole mass drawn from the ``cartpole-mass`` family,
autoreset on with fresh ``next_params`` (the trainer's setting), random 0/1 actions drawn
on the device every step. Theirs: ``gymnasium.envs.classic_control.cartpole.CartPoleVectorEnv``
(one shared parameter set, its own next-step autoreset), random actions drawn with numpy
every step. Both include drawing the actions in the timed loop.

    python benchmarks/bench_sim.py                        # cuda if available, else cpu
    python benchmarks/bench_sim.py --device cpu --sizes 1024 4096 --seconds 2

Prints a Markdown table; the numbers are wall-clock rates, so a busy machine reads low.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

from hyperrl.families import load_family
from hyperrl.sim import make_vec_env


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(step, n: int, seconds: float, sync=lambda: None, warmup: int = 50) -> float:
    """Env-steps per second of ``step()`` over at least ``seconds`` of wall clock."""
    for _ in range(warmup):
        step()
    sync()
    chunk, done = 10, 0
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


def bench_ours(n: int, device: torch.device, seconds: float, seed: int = 0) -> float:
    family = load_family("cartpole-mass")
    gen = torch.Generator(device=device).manual_seed(seed)
    env = make_vec_env(family, n, device=device, dtype=torch.float32, seed=seed)
    env.reset(params=family.sample(n, gen, device=device))
    env.next_params = family.sample(n, gen, device=device)  # every autoreset draws a new variant
    act_gen = torch.Generator(device=device).manual_seed(seed + 1)

    def step() -> None:
        env.step(torch.randint(0, 2, (n,), generator=act_gen, device=device))

    return _rate(step, n, seconds, sync=lambda: _sync(device))


def bench_gymnasium(n: int, seconds: float, seed: int = 0) -> float:
    env = CartPoleVectorEnv(num_envs=n)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed + 1)

    def step() -> None:
        env.step(rng.integers(0, 2, size=n))

    rate = _rate(step, n, seconds)
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
        f"batched CartPole ({device}, {where}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)) vs gymnasium CartPoleVectorEnv (numpy, 1 thread); "
        f"{args.seconds:g} s per point\n"
    )
    print("| N | ours (env-steps/s) | gymnasium (env-steps/s) | ours / gymnasium |")
    print("|---:|---:|---:|---:|")
    for n in args.sizes:
        ours = bench_ours(n, device, args.seconds)
        theirs = bench_gymnasium(n, args.seconds)
        print(f"| {n} | {ours / 1e6:.2f} M | {theirs / 1e6:.2f} M | {ours / theirs:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
