"""Sweep ``hyperrl.adapt`` settings (``AdaptConfig`` keys) for one mode on fixed variants.

    python benchmarks/sweep_adapt_settings.py --mode weights --seeds 3 \\
        --run cartpole-actuator=runs/bench-adapt-s3/cartpole-actuator:-1,-0.75,-0.5,-1.05,1,0.5 \\
        --run cartpole-mass=runs/bench-adapt-s3/cartpole-mass:0.005,0.02,0.044,0.67,1,2 \\
        --setting "" --setting "lr=3e-2;target_kl=null" --setting "lr=1e-2;target_kl=0.05"
    python benchmarks/sweep_adapt_settings.py --mode hypernet --episodes 10 \
        --run pendulum=runs/bench-compare/pendulum-mass-length/hyperrl-s1:m=2,l=2/m=0.3,l=0.3 ...

For each setting (``;``-separated ``KEY=VALUE`` overrides, as ``--set`` of ``hyperrl.adapt``;
empty = defaults) and each run's variants (``V1,V2,...`` for a one-parameter family, or
``NAME=V,NAME=V/NAME=V,NAME=V/...``): ``--episodes`` adaptation episodes with the given (true)
values, then the mean return on ``--eval-episodes`` fresh evaluation episodes, averaged over
``--seeds`` adaptation seeds. Prints the zero-shot row, then one Markdown row per setting:
each variant's return and each run's mean. The runs' final checkpoints are used (``--checkpoint``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="weights", choices=("context", "weights", "hypernet"))
    p.add_argument("--run", action="append", required=True, metavar="LABEL=RUN_DIR:V1,V2,...")
    p.add_argument("--setting", action="append", default=None, metavar="KEY=V;KEY=V")
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--checkpoint", default="latest", choices=("best", "latest"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from hyperrl.adapt import AdaptConfig, adapt_mode, evaluate_policy
    from hyperrl.adapt.learners import generated_policy
    from hyperrl.adapt.run import parse_single_values
    from hyperrl.runs import read_run_info
    from hyperrl.hyperrun import HyperRun

    runs = []
    for item in args.run:
        label, _, rest = item.partition("=")
        run_dir, _, vals = rest.rpartition(":")
        src = HyperRun(run_dir, read_run_info(run_dir), checkpoint=args.checkpoint)
        specs = vals.split("/") if "=" in vals else vals.split(",")
        runs.append((label, src, [parse_single_values(src.family, spec) for spec in specs]))
    settings = args.setting if args.setting is not None else [""]
    head = [f"{label} {src.family.label(v)}"
            for label, src, vals in runs for v in vals] + [f"{label} mean" for label, _, _ in runs]
    print(f"{args.mode} mode, {args.episodes} episodes, {args.seeds} seeds, {args.checkpoint} checkpoints\n")
    print("| setting | " + " | ".join(head) + " | s |")
    print("|---" * (len(head) + 2) + "|")
    cells, means = [], []
    for _, src, vals in runs:
        per = [float(evaluate_policy(src.family, generated_policy(src, v), v, args.eval_episodes).mean()) for v in vals]
        cells += [f"{x:.0f}" for x in per]
        means.append(f"{sum(per) / len(per):.1f}")
    print("| zero-shot | " + " | ".join(cells + means) + " | – |", flush=True)
    for setting in settings:
        cfg = AdaptConfig.from_overrides([s for s in setting.split(";") if s.strip()])
        t0 = time.perf_counter()
        cells, means = [], []
        for _, src, vals in runs:
            per = []
            for ev in vals:
                rs = [float(evaluate_policy(src.family, adapt_mode(src, args.mode, ev, ev, args.episodes, cfg,
                                                                   seed=s).policy, ev, args.eval_episodes).mean())
                      for s in range(args.seeds)]
                per.append(sum(rs) / len(rs))
            cells += [f"{x:.0f}" for x in per]
            means.append(f"{sum(per) / len(per):.1f}")
        print(f"| {setting or 'defaults'} | " + " | ".join(cells + means) + f" | {time.perf_counter() - t0:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
