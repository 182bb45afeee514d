"""Few-episode adaptation (``hyperrl.adapt``) on the extrapolation variants, as Markdown tables.

    python benchmarks/bench_adapt.py --run cartpole-mass=DIR --run cartpole-actuator=DIR \\
        --run pendulum-mass-length=DIR [--dr FAMILY=DR_DIR ...] [--oracle FAMILY=ORACLE_DIR ...]
    python benchmarks/bench_adapt.py --fast          # smoke run: tiny runs trained here, minutes

For each family (a pre-trained ``hyperrl`` run per ``--run``; families without one are trained
here with ``--train-steps N`` on the family's default config, or with tiny settings under
``--fast``):

* the **extrapolation** held-out variants (plus, with ``--grid N``, the points of an N-per-
  parameter grid across the physical bounds that lie outside the train range); for CartPole
  families only those whose zero-shot return is below the family's success return (475);
  Pendulum: all (``--max-variants`` thins any family's list, evenly spaced). ``--checkpoint
  latest`` adapts each run's final checkpoint instead of its best-by-held-out one (a run's
  best checkpoint often balances every held-out variant, leaving nothing to adapt);
* each mode (``--modes``, default all three) and the references (``scratch``; ``dr-finetune``
  when ``--dr FAMILY=DIR`` is given, otherwise skipped and said so) with budgets
  ``--budgets`` (default 0,1,2,5,10), every budget an independent adaptation evaluated on
  ``--eval-episodes`` fresh episodes (:func:`hyperrl.adapt.adapt`, nothing written into the
  runs);
* ``cartpole-actuator`` with ``--hidden`` (sign and size of the gain unknown), context mode,
  budgets ``--hidden-budgets`` (default 0,1,2,3), on every held-out variant (both splits);
* Pendulum: the gap between zero-shot and the per-variant oracle closed after 10 episodes,
  ``(R_10 - R_0) / (R_oracle - R_0)``; the oracle is the SB3 oracle run ``--oracle
  pendulum-mass-length=DIR`` (``hyperrl.baselines --method oracle``), evaluated here on the
  same evaluation episodes, for the variants it has.

* ``--world FAMILY_YAML``: the episodes and every evaluation run in that family's env (the
  run's parameters, other fixed constants: a model error; e.g. ``benchmarks/worlds/
  pendulum-model-error.yaml``) while the adapter's model stays the run's family; give an
  ``--oracle`` trained in the same world. ``--gap-only`` adapts only the Pendulum variants
  whose oracle beats the zero-shot return (the ones the gap target is about).

Tables go to stdout and ``<out>/results.md``; all curves to ``<out>/results.json``; one PNG per
family (mean over its variants) to ``<out>/<family>.png``. Default ``--out
runs/bench-adapt-<timestamp>``. One torch thread (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

FAMILIES = ("cartpole-mass", "cartpole-actuator", "pendulum-mass-length")
MIN_GAP = 10.0  # Pendulum: a smaller zero-shot-to-oracle gap is not counted (noise)


def has_gap(oracle: float | None, zero_shot: float) -> bool:
    """The oracle beats the zero-shot return by more than noise: max(MIN_GAP, 5% of |oracle|)."""
    return oracle is not None and oracle - zero_shot >= max(MIN_GAP, 0.05 * abs(oracle))


FAST_TRAIN = [
    "env.num_envs=32", "ppo.num_steps=32", "eval.episodes=1", "progress=false", "ppo.update_epochs=4",
    "ppo.num_minibatches=2", "ppo.target_kl=null", "ppo.lr=0.005", "model.hidden_sizes=[16,16]",
    "model.embed_sizes=[16,16]", "model.critic_hidden_sizes=[16,16]", "model.chunk_size=0",
    "stop_at_return=null", "histogram_interval_evals=0", "dtype=float32",
]


def family_map(items: list[str], flag: str) -> dict[str, Path]:
    out = {}
    for item in items or []:
        fam, sep, path = item.partition("=")
        if not sep or fam not in FAMILIES:
            raise SystemExit(f"error: {flag} {item!r}: expected FAMILY=DIR with FAMILY one of {', '.join(FAMILIES)}")
        out[fam] = Path(path)
    return out


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def thin(rows: list[Any], k: int | None) -> list[Any]:
    if k is None or len(rows) <= k:
        return rows
    idx = sorted({round(i * (len(rows) - 1) / max(k - 1, 1)) for i in range(k)})
    return [rows[i] for i in idx]


def train_run(family: str, out: Path, steps: int, fast: bool, seed: int) -> Path:
    from hyperrl.train import main as train_main

    run_dir = out / "runs" / family
    if (run_dir / "metrics.json").is_file():
        print(f"  reusing {run_dir}")
        return run_dir
    args = ["--env-family", family, "--total-steps", str(steps), "--device", "cpu", "--run-dir", str(run_dir),
            "--seed", str(seed)]
    sets = FAST_TRAIN + [f"eval.interval_steps={steps}"] if fast else ["progress=false"]
    for s in sets:
        args += ["--set", s]
    t0 = time.perf_counter()
    train_main(args)
    print(f"  trained {run_dir} ({steps:,} steps, {time.perf_counter() - t0:.0f} s)")
    return run_dir


def train_dr(family: str, out: Path, steps: int, seed: int) -> Path:
    from hyperrl.baselines import main as baselines_main

    run_dir = out / "runs" / f"{family}-dr"
    if (run_dir / "metrics.json").is_file():
        return run_dir
    baselines_main(["--env-family", family, "--method", "dr", "--total-steps", str(steps), "--eval-episodes", "1",
                    "--device", "cpu", "--run-dir", str(run_dir), "--seed", str(seed)])
    return run_dir


def reached(points: list[dict[str, Any]], threshold: float, within: int) -> int | None:
    """The smallest evaluated budget <= within whose return reaches the threshold."""
    hits = [p["budget"] for p in points if p["budget"] <= within and p["return_mean"] >= threshold]
    return min(hits) if hits else None


def md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def summarise(md: list[str], fam: Any, fam_name: str, summary_lines: dict[str, list[Any]], args: Any,
              thr: float | None, oracle_run: Any, fam_res: dict[str, Any], k: int, out: Path, n_sel: int) -> None:
    """Summary table, the family's PNG and (Pendulum) the gap to the oracle."""
    from hyperrl.adapt.report import curves_figure
    from hyperrl.plots import save_figure

    # ---- summary per line ----
    srows = []
    windows = [w for w in (5, 10) if w <= max(args.budgets)] or [max(args.budgets)]
    for ln, curves in summary_lines.items():
        means = [sum(c[i]["return_mean"] for c in curves) / len(curves) for i in range(len(curves[0]))]
        row = [ln, str(len(curves))] + [fmt(m) for m in means]
        if thr is not None:
            for within in windows:
                n = sum(reached(c, thr, within) is not None for c in curves)
                row.append(f"{n}/{len(curves)}")
        srows.append(row)
    head = ["line", "variants"] + [f"mean {b} ep" for b in args.budgets]
    if thr is not None:
        head += [f"≥{thr:g} within {w} ep" for w in windows]
    md += ["Summary (mean over the adapted variants):", "", md_table(head, srows), ""]
    agg = {ln: [{"budget": c[0][i]["budget"],
                 "return_mean": sum(x[i]["return_mean"] for x in c) / len(c),
                 "return_std": float(torch.tensor([x[i]["return_mean"] for x in c]).std(unbiased=False))}
                for i in range(len(c[0]))] for ln, c in summary_lines.items()}
    fig = curves_figure(fam, agg, f"{fam_name}: mean over {n_sel} extrapolation variants "
                                  "(band: std across variants)", thr)
    save_figure(fig, out / f"{fam_name}.png")

    # ---- pendulum: gap to the oracle ----
    if thr is None:
        if oracle_run is None:
            md += ["No `--oracle` run: the gap to the per-variant oracle is not measured.", ""]
        else:
            grows, closed, summed = [], {}, {}
            for e in fam_res["variants"]:
                o = e.get("oracle")
                row = [fam.label(torch.tensor(list(e["values"].values()))), fmt(e["zero_shot"]), fmt(o)]
                for ln in summary_lines:
                    pts = e["curves"][ln]
                    r10 = pts[-1]["return_mean"]
                    frac = None
                    if has_gap(o, e["zero_shot"]):
                        frac = (r10 - e["zero_shot"]) / (o - e["zero_shot"])
                        closed.setdefault(ln, []).append(frac)
                        acc = summed.setdefault(ln, [0.0, 0.0])
                        acc[0] += r10 - e["zero_shot"]
                        acc[1] += o - e["zero_shot"]
                    row.append(f"{fmt(r10)} ({fmt(frac, 2) if frac is not None else '–'})")
                grows.append(row)
            md += [f"Gap to the oracle closed after {k} episodes, (R_{k} − R_0)/(R_oracle − R_0):", "",
                   md_table(["variant", "zero-shot", "oracle"] + [f"{ln} R_{k} (gap closed)"
                                                                 for ln in summary_lines], grows), ""]
            crow = [[ln, f"{sum(f >= 0.5 for f in fr)}/{len(fr)}",
                     fmt(sorted(fr)[len(fr) // 2], 2) if fr else "–",
                     fmt(summed[ln][0] / summed[ln][1], 2)] for ln, fr in closed.items()]
            md += [md_table(["line", "variants closing ≥ half the gap", "median fraction",
                             "summed gap closed"], crow), "",
                   f"A variant counts only when the oracle beats the zero-shot return by at least "
                   f"max({MIN_GAP:g}, 5% of |oracle|); the fraction is measured from the hypernetwork's "
                   "zero-shot return for every line; the summed gap closed is Σ(R_k − R_0) / Σ(R_oracle − R_0) "
                   "over those variants.", ""]


def hidden_section(md: list[str], fam: Any, run_dir: Path, args: Any, cfg: Any, thr: float,
                   fam_res: dict[str, Any]) -> None:
    """cartpole-actuator with --hidden: context mode, every held-out variant (both splits)."""
    from hyperrl.adapt import adapt

    hk = max(args.hidden_budgets)
    hrows, hits = [], {"interpolation": [0, 0], "extrapolation": [0, 0]}
    for split in ("interpolation", "extrapolation"):
        for row in thin(list(fam.heldout_values(split)), args.max_variants and 2 * args.max_variants):
            res = adapt(run_dir, fam.as_dict(row), episodes=hk, modes=["context"], hidden=True,
                        seed=args.seed, budgets=args.hidden_budgets, eval_episodes=args.eval_episodes,
                        config=cfg, references=False, save=False, checkpoint=args.checkpoint)
            pts = res["curves"]["context"]
            by = {pt["budget"]: pt for pt in pts}
            ok = reached(pts, thr, 3) is not None
            hits[split][0] += ok
            hits[split][1] += 1
            ident = pts[-1].get("identified_values")
            hrows.append([fam.label(row), split] + [fmt(by[b]["return_mean"]) if b in by else "–"
                                                     for b in args.hidden_budgets]
                         + [fmt(ident[0], 2) if ident else "–",
                            fmt(pts[-1].get("context_values", [math.nan])[0], 2)])
            fam_res.setdefault("hidden", []).append({"values": fam.as_dict(row), "split": split,
                                                     "curve": pts})
    md += ["`--hidden` (context mode; the sign and size of the gain unknown):", "",
           md_table(["variant", "split"] + [f"{b} ep" for b in args.hidden_budgets]
                    + ["identified", "context of"], hrows), "",
           md_table(["split", f"≥{thr:g} within 3 episodes"],
                    [[s, f"{a}/{b}"] for s, (a, b) in hits.items()]), ""]
    print("  hidden: within 3 episodes: " + ", ".join(f"{s} {a}/{b}" for s, (a, b) in hits.items()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", default=[], metavar="FAMILY=DIR", help="pre-trained hyperrl run")
    p.add_argument("--dr", action="append", default=[], metavar="FAMILY=DIR", help="dr baseline run (dr-finetune)")
    p.add_argument("--oracle", action="append", default=[], metavar="FAMILY=DIR", help="SB3 oracle run")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset")
    p.add_argument("--modes", default="context,weights,hypernet")
    p.add_argument("--budgets", type=ints, default=[0, 1, 2, 5, 10])
    p.add_argument("--hidden-budgets", type=ints, default=[0, 1, 2, 3])
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--max-variants", type=int, default=None, help="at most this many variants per family")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-steps", type=int, default=None,
                   help="train a run for families without --run (default config, this many steps)")
    p.add_argument("--fast", action="store_true",
                   help="smoke run: tiny runs (and tiny dr runs) trained here, budgets 0,1,2,5, 3 eval episodes, "
                        "3 variants per family")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="adaptation setting (hyperrl.adapt --set)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                   help="which checkpoint of each --run is adapted (best: by held-out return)")
    p.add_argument("--world", type=Path, default=None, metavar="FAMILY_YAML",
                   help="the system the episodes and every evaluation run in (hyperrl.adapt --world): the run's "
                        "family with other fixed constants, a model error; give an --oracle trained in it")
    p.add_argument("--gap-only", action="store_true",
                   help="Pendulum: adapt only the variants whose oracle beats the zero-shot return (needs --oracle)")
    p.add_argument("--no-references", action="store_true", help="skip PPO from scratch and dr-finetune")
    p.add_argument("--grid", type=int, default=0, metavar="N",
                   help="also consider the extrapolation points of Family.grid(N) (N per parameter across the "
                        "physical bounds, outside the train range) as candidate variants")
    args = p.parse_args()

    torch.set_num_threads(max(1, args.threads))
    from hyperrl.adapt import AdaptConfig, adapt, evaluate_policy
    from hyperrl.adapt.learners import generated_policy
    from hyperrl.runs import load
    from hyperrl.families import load_family
    from hyperrl.hyperrun import HyperRun

    runs, drs, oracles = family_map(args.run, "--run"), family_map(args.dr, "--dr"), family_map(args.oracle, "--oracle")
    families = [f for f in args.families.split(",") if f.strip()]
    if args.fast:
        args.budgets = [b for b in args.budgets if b <= 5] or [0, 1, 2, 5]
        args.eval_episodes = min(args.eval_episodes, 3)
        args.max_variants = args.max_variants or 3
    out = args.out or ROOT / "runs" / f"bench-adapt-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    cfg = AdaptConfig.from_overrides(args.overrides)
    modes = [m for m in args.modes.split(",") if m.strip()]
    k = max(args.budgets)
    t_start = time.perf_counter()
    results: dict[str, Any] = {"settings": {k_: (str(v) if isinstance(v, Path) else v) for k_, v in vars(args).items()},
                               "families": {}}
    md: list[str] = [f"# hyperrl.adapt benchmark ({time.strftime('%Y-%m-%d %H:%M')})", "",
                     f"Budgets {args.budgets}; {args.eval_episodes} fresh evaluation episodes per point; "
                     f"modes {', '.join(modes)}; seed {args.seed}.", ""]

    for fam_name in families:
        print(f"{fam_name}:")
        if fam_name in runs:
            run_dir = runs[fam_name]
        elif args.fast or args.train_steps:
            steps = args.train_steps or (30_720 if fam_name.startswith("pendulum") else 20_480)
            run_dir = train_run(fam_name, out, steps, args.fast, args.seed + 1)
        else:
            print("  no --run given and no --train-steps: skipped")
            md += [f"## {fam_name}", "", "skipped: no run given", ""]
            continue
        dr_dir = drs.get(fam_name)
        if dr_dir is None and args.fast:
            dr_dir = train_dr(fam_name, out, 512, args.seed)
        source = HyperRun(run_dir, checkpoint=args.checkpoint)
        fam = source.family
        thr = fam.success_return
        world = load_family(args.world) if args.world else fam  # where the episodes run
        oracle_run = load(oracles[fam_name]) if fam_name in oracles else None
        if args.gap_only and (oracle_run is None or thr is not None):
            raise SystemExit(f"error: --gap-only needs an --oracle run and a family without a success return "
                             f"({fam_name})")
        if args.world and oracle_run is not None and oracle_run.family.fixed != world.fixed:
            raise SystemExit(f"error: --oracle {oracles[fam_name]} was trained in '{oracle_run.family.name}', "
                             f"not in the --world '{world.name}'")
        fam_res: dict[str, Any] = {"run": str(run_dir), "dr": str(dr_dir) if dr_dir else None, "variants": []}
        results["families"][fam_name] = fam_res
        md += [f"## {fam_name}", "", f"Run `{run_dir}`" + (f", dr `{dr_dir}`" if dr_dir else
                                                            ", no dr run: dr-finetune skipped") + ".", ""]
        if args.world:
            md += [f"Episodes and evaluations run in the world `{args.world}` ({world.description}), "
                   f"fixed {dict(world.fixed)}; the adapter's model is the run's family.", ""]

        # ---- variants: extrapolation, zero-shot below the success return (CartPole) ----
        cands = fam.heldout_values("extrapolation")
        if args.grid:
            g = fam.grid(args.grid)
            cands = torch.cat([cands, g[~fam.in_train_range(g)]])
        selected, oracle_of = [], {}  # oracle_of: label -> its return, or why there is none
        for row in cands:
            zs = evaluate_policy(world, generated_policy(source, row), row, args.eval_episodes)
            z = float(zs.mean())
            if thr is not None and z >= thr:
                continue  # CartPole: already solved zero-shot, nothing to adapt (no oracle needed)
            if oracle_run is not None:
                try:
                    oracle_of[fam.label(row)] = float(evaluate_policy(world, oracle_run, row, args.eval_episodes).mean())
                except Exception as e:  # noqa: BLE001 - the oracle lacks this variant
                    oracle_of[fam.label(row)] = str(e).splitlines()[0]
            o = oracle_of.get(fam.label(row))
            if not args.gap_only or (isinstance(o, float) and has_gap(o, z)):
                selected.append((row, z))
        note = (f"{len(selected)} of {cands.shape[0]} extrapolation variants{' (held-out + grid)' if args.grid else ''}"
                f" have zero-shot < {thr:g} ({args.checkpoint} checkpoint)"
                if thr is not None else
                f"{len(selected)} of {cands.shape[0]} extrapolation variants have a gap to the oracle"
                if args.gap_only else f"{cands.shape[0]} extrapolation variants")
        selected = thin(selected, args.max_variants)
        print(f"  {note}; adapting {len(selected)}")
        md += [note + f"; {len(selected)} adapted.", ""]

        rows, summary_lines = [], {}
        for row, z in selected:
            t0 = time.perf_counter()
            res = adapt(run_dir, fam.as_dict(row), episodes=k, modes=modes, seed=args.seed, dr=dr_dir,
                        budgets=args.budgets, eval_episodes=args.eval_episodes, config=cfg, save=False,
                        checkpoint=args.checkpoint, references=not args.no_references,
                        world=world if args.world else None)
            entry = {"values": fam.as_dict(row), "zero_shot": z, "curves": res["curves"], "notes": res["notes"]}
            if oracle_run is not None:
                o = oracle_of[fam.label(row)]
                entry["oracle"] = o if isinstance(o, float) else None
                if not isinstance(o, float):
                    entry["oracle_note"] = o
            fam_res["variants"].append(entry)
            print(f"  {fam.label(row)}: zero-shot {z:.1f}; " + "; ".join(
                f"{ln} {pts[-1]['return_mean']:.1f}" for ln, pts in res["curves"].items())
                  + f" ({time.perf_counter() - t0:.0f} s)")
            for ln, pts in res["curves"].items():
                by = {pt["budget"]: pt["return_mean"] for pt in pts}
                rows.append([fam.label(row), ln] + [fmt(by.get(b)) for b in args.budgets])
                summary_lines.setdefault(ln, []).append(pts)
            if res["notes"]:
                fam_res["notes"] = res["notes"]
        if not selected:
            md += ["(no variant to adapt)", ""]
        else:
            md += ["Return after each budget (episodes used):", "",
                   md_table(["variant", "line"] + [f"{b} ep" for b in args.budgets], rows), ""]
            summarise(md, fam, fam_name, summary_lines, args, thr, oracle_run, fam_res, k, out,
                      len(selected))
        if fam_name == "cartpole-actuator":
            hidden_section(md, fam, run_dir, args, cfg, thr, fam_res)

    md.append(f"Total wall-clock {time.perf_counter() - t_start:.0f} s.")
    text = "\n".join(md) + "\n"
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(text)
    print(f"wrote {out}/results.md, results.json and one PNG per family")
    return 0


if __name__ == "__main__":
    sys.exit(main())
