"""The command line, ``python -m hyperrl.adapt`` (:mod:`hyperrl.adapt.__main__` runs
:func:`main`)."""

from __future__ import annotations

import sys
from typing import Sequence

import torch

from hyperrl.adapt.config import AdaptConfig
from hyperrl.adapt.report import format_curves
from hyperrl.adapt.run import adapt
from hyperrl.errors import HyperrlError


def main(argv: Sequence[str] | None = None) -> int:
    from hyperrl.cli import int_range, make_parser, seed_arg

    parser = make_parser(
        "python -m hyperrl.adapt",
        "Adapt a trained hypernetwork run to one variant with a budget of K episodes "
        "(every episode the adapter runs counts).",
        epilog="modes: context = search the frozen hypernetwork's context (CEM + system identification); "
               "weights = PPO on the generated weights; hypernet = PPO on the hypernetwork, regularised "
               "toward the pre-trained one; sim = identify the parameters from one episode, then train "
               "the hypernetwork further in the family's simulator at them (simulated steps cost no "
               "episodes). References: scratch (PPO from a fresh policy) and dr-finetune (--dr). "
               "Outputs: RUN_DIR/adapt/<name>/ (loadable by hyperrl.load).")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run dir written by python -m hyperrl.train")
    parser.add_argument("--values", action="append", required=True, metavar="NAME=V",
                        help="the variant: one value per parameter (repeat for each parameter, or all in "
                             "one: m=2,l=0.8)")
    parser.add_argument("--episodes", type=int_range(1), default=10, metavar="K",
                        help="adaptation budget: environment episodes, all uses counted")
    parser.add_argument("--mode", default="context",
                        help="context | weights | hypernet | sim | all (or a comma-separated list)")
    parser.add_argument("--hidden", action="store_true",
                        help="do not tell the adapter the values: it must find a context from its episodes")
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dr", metavar="DR_RUN_DIR", default=None,
                        help="a 'dr' baseline run dir (python -m hyperrl.baselines --method dr) for the "
                             "dr-finetune reference (skipped when not given)")
    parser.add_argument("--no-references", action="store_true", help="skip the scratch and dr-finetune references")
    parser.add_argument("--budgets", default=None, metavar="B1,B2,...",
                        help="budgets to report (default 0,1,2,5,10 up to K; 0 and K are always added)")
    parser.add_argument("--eval-episodes", type=int_range(1), default=10,
                        help="fresh evaluation episodes per reported budget (not counted)")
    parser.add_argument("--name", default=None, help="output folder name under RUN_DIR/adapt/")
    parser.add_argument("--force", action="store_true", help="replace an existing RUN_DIR/adapt/<name>/")
    parser.add_argument("--true-values", action="append", default=None, metavar="NAME=V",
                        help="run the episodes in this variant while the adapter is told --values "
                             "(a misspecified model; testing)")
    parser.add_argument("--world", default=None, metavar="FAMILY",
                        help="run the episodes (and evaluations) in this family's env: a family YAML with "
                             "the run's parameters but other fixed constants (a model error; testing)")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="adaptation setting, e.g. --set lr=3e-4 (see AdaptConfig in hyperrl/adapt/config.py)")
    parser.add_argument("--threads", type=int_range(0), default=1, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    budgets = None
    if args.budgets is not None:
        try:
            budgets = [int(x) for x in args.budgets.split(",") if x.strip()]
        except ValueError:
            raise HyperrlError(f"--budgets {args.budgets!r}: expected comma-separated integers") from None
    cfg = AdaptConfig.from_overrides(args.overrides)
    res = adapt(args.run_dir, args.values, episodes=args.episodes, modes=args.mode, hidden=args.hidden,
                seed=args.seed, device=args.device, dr=args.dr, references=not args.no_references,
                budgets=budgets, eval_episodes=args.eval_episodes, name=args.name, true_values=args.true_values,
                world=args.world,
                checkpoint=args.checkpoint, config=cfg, force=args.force,
                log=lambda s: print(s, file=sys.stderr))
    vals = ",".join(f"{k}={v:g}" for k, v in res["values"].items())
    print(f"{args.run_dir}: adapted to {vals}{' (values hidden from the adapter)' if res['hidden'] else ''}, "
          f"budget {res['budget']} episodes; returns on {args.eval_episodes} fresh evaluation episodes "
          f"(budget 0 = zero-shot):")
    print(format_curves(res["curves"]))
    for note in res["notes"]:
        print(f"note: {note}")
    for m, d in res["dirs"].items():
        print(f"wrote {d}/ ({m}: run.json, metrics.json, policy.pt, returns_vs_episodes.png, TensorBoard adapt/...)")
    return 0

