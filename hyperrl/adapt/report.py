"""What an adaptation writes: ``RUN_DIR/adapt/<name>/`` (``run.json``, ``family.yaml``,
``metrics.json``, ``policy.pt``, the returns-vs-episodes figure and TensorBoard scalars),
published whole by :func:`hyperrl.fileio.publish_dir`, and the curves as a table."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from hyperrl.adapt.config import FORMAT, POLICY_FILE, REFERENCES
from hyperrl.adapt.learners import WeightsPolicy
from hyperrl.adapt.result import AdaptResult
from hyperrl.evaluate import OUTPUT_NAME_MAX, OUTPUT_NAME_RE
from hyperrl.families import Family
from hyperrl.fileio import publish_dir

# (colour, marker) per mode and reference: every line of the figure stays distinguishable
# (references are also dashed)
LINE_STYLES: dict[str, tuple[str, str]] = {
    "context": ("C0", "o"), "weights": ("C1", "s"), "hypernet": ("C2", "^"), "sim": ("C4", "v"),
    "scratch": ("C7", "x"), "dr-finetune": ("C3", "D"),
}


def default_name(family: Family, mode: str, values: torch.Tensor, hidden: bool, k: int, seed: int) -> str:
    """``<mode>-<name=value,...>[-hidden]-k<K>-s<seed>``; the values hashed when they do not
    make a valid output name."""
    label = ",".join(f"{n}={float(x):g}" for n, x in zip(family.param_names, values.tolist()))
    name = f"{mode}-{label}{'-hidden' if hidden else ''}-k{k}-s{seed}"
    if len(name) > OUTPUT_NAME_MAX or not OUTPUT_NAME_RE.match(name):
        name = f"{mode}-{hashlib.sha1(label.encode()).hexdigest()[:10]}{'-hidden' if hidden else ''}-k{k}-s{seed}"
    return name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def curves_figure(family: Family, curves: Mapping[str, Sequence[Mapping[str, Any]]], title: str,
                  threshold: float | None = None, oracle: float | None = None):
    """Return against episodes used, one line (mean ± std band) per mode and reference."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for i, (line, pts) in enumerate(curves.items()):
        if not pts:
            continue
        color, marker = LINE_STYLES.get(line, (f"C{i % 10}", "o"))
        x = np.array([p["budget"] for p in pts], dtype=float)
        y = np.array([p["return_mean"] for p in pts])
        s = np.array([p["return_std"] for p in pts])
        ls = "--" if line in REFERENCES else "-"
        ax.plot(x, y, ls, marker=marker, color=color, label=line)
        ax.fill_between(x, y - s, y + s, color=color, alpha=0.12, lw=0)
    if threshold is not None:
        ax.axhline(threshold, color="0.3", lw=0.8, ls=":", label=f"success ({threshold:g})")
    if oracle is not None:
        ax.axhline(oracle, color="k", lw=0.8, ls="-.", label="oracle")
    ax.set_xlabel("episodes used for adaptation")
    ax.set_ylabel("return (fresh evaluation episodes)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def format_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    budgets = sorted({p["budget"] for pts in curves.values() for p in pts})
    head = ["line"] + [f"{b} ep" for b in budgets]
    rows = []
    for line, pts in curves.items():
        by = {p["budget"]: p for p in pts}
        rows.append([line] + [f"{by[b]['return_mean']:.1f}" if b in by else "" for b in budgets])
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


def _policy_payload(res: AdaptResult, source: Any, mode: str) -> dict[str, Any]:
    pol: WeightsPolicy = res.policy
    agent = source.agent
    from hyperrl.config import to_dict

    payload: dict[str, Any] = {
        "format": FORMAT,
        "mode": mode,
        "activation": pol.activation,
        "weights": {k: v[0].detach().cpu().clone() for k, v in pol.weights.items()},
        "log_std": None if pol.log_std is None else pol.log_std.detach().cpu().clone(),
        "context": None if res.context is None else res.context.detach().cpu().to(torch.float64).clone(),
        "context_values": None if res.context_values is None else [float(x) for x in res.context_values],
        "model_config": to_dict(agent.cfg),
        "source_checkpoint": str(source.checkpoint_path),
        "source_checkpoint_sha256": _sha256(Path(source.checkpoint_path)),
    }
    if mode in ("hypernet", "sim"):
        payload["hypernet"] = res.hypernet_state
    return payload


def write_adapted(source: Any, out_dir: Path, mode: str, res: AdaptResult, run_info: dict[str, Any],
                  metrics: dict[str, Any], curves: Mapping[str, Any], force: bool) -> Path:
    """Write ``out_dir`` whole (:func:`hyperrl.fileio.publish_dir`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from torch.utils.tensorboard import SummaryWriter

    from hyperrl.plots import close_figure, figure_to_array

    family: Family = source.family

    def build(tmp: Path) -> None:
        shutil.copyfile(source.run_dir / "family.yaml", tmp / "family.yaml")
        (tmp / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        torch.save(_policy_payload(res, source, mode), tmp / POLICY_FILE)
        title = (f"{family.name}: adapt to {family.label(run_info['values_list'])}"
                 f"{' (hidden)' if run_info['hidden'] else ''}, K={run_info['budget']}")
        fig = curves_figure(family, curves, title, family.success_return)
        if not isinstance(fig.canvas, FigureCanvasAgg):
            FigureCanvasAgg(fig)
        fig.savefig(tmp / "returns_vs_episodes.png", dpi=120)
        image = figure_to_array(fig, close=False)
        close_figure(fig)
        writer = SummaryWriter(str(tmp))
        try:
            for line, pts in curves.items():
                for p in pts:
                    writer.add_scalar(f"adapt/{line}/return_mean", p["return_mean"], p["budget"])
                    writer.add_scalar(f"adapt/{line}/return_std", p["return_std"], p["budget"])
                    writer.add_scalar(f"adapt/{line}/env_steps", p["env_steps"], p["budget"])
            writer.add_scalar("adapt/zero_shot_return", metrics["zero_shot_return"], 0)
            writer.add_scalar("adapt/final_return", metrics["final_return"], metrics["episodes_used"])
            writer.add_image("adapt/return_vs_episodes", image, 0, dataformats="HWC")
            writer.add_text("adapt/table", "    " + format_curves(curves).replace("\n", "\n    "), 0)
        finally:
            writer.close()

    return publish_dir(out_dir, build, force)
