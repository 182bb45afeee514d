"""Return-versus-parameter figures for evaluation reports and TensorBoard.

Figures are built with :class:`matplotlib.figure.Figure` and rendered by the Agg canvas
directly: pyplot is never imported, so no GUI backend is touched, the global backend is
left alone, and figures are not kept alive by pyplot's registry (no leaks in long runs).

* :func:`return_vs_param_figure` picks the plot from the family's number of parameters:
  a curve (1 parameter), a heatmap or scatter (2), one panel per parameter (3 or more).
* :func:`figure_to_array` renders to an ``[H, W, 3]`` uint8 array for
  ``SummaryWriter.add_image(..., dataformats="HWC")``.
* :func:`save_figure` writes a PNG (atomically).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter, NullLocator

from hyperrl.families import SPLITS, Family, ParamSpec

__all__ = ["return_vs_param_figure", "figure_to_array", "save_figure", "close_figure"]

_SPLIT_STYLE = {
    "interpolation": dict(marker="o", color="C0", label="interpolation (inside train range)"),
    "extrapolation": dict(marker="D", color="C3", label="extrapolation (outside train range)"),
}
_TRAIN_SHADE = dict(color="0.5", alpha=0.18, lw=0)
_GRID_MIN_FILL = 0.25  # fraction of the unique-value lattice that must be present for a heatmap
_GRID_MAX_CELLS = 900
_ANNOTATE_MAX_CELLS = 144


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def _np(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numeric, got {type(x).__name__}") from None


def _label(spec: ParamSpec) -> str:
    return f"{spec.name} [{spec.unit}]" if spec.unit else spec.name


def _nice_ticks(lo: float, hi: float) -> list[float]:
    """Readable 1-2-5 style ticks within [lo, hi] (0 < lo <= hi), at least 3 when possible."""
    kmin, kmax = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
    ticks: list[float] = []
    for mant in ((1,), (1, 2, 5), (1, 2, 3, 5), (1, 1.5, 2, 3, 4, 5, 6, 8)):
        ticks = [float(f"{m * 10.0 ** k:.6g}") for k in range(kmin, kmax + 1) for m in mant]
        ticks = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
        if len(ticks) >= 3:
            break
    step = max(1, math.ceil(len(ticks) / 9))
    return ticks[::step]


def _set_scale(ax: Any, spec: ParamSpec, data: np.ndarray, axis: str = "x",
               ticks: Sequence[float] | None = None) -> None:
    """Log axis for log-context parameters (symlog across zero for signed ones), with
    plain-number tick labels (``0.3``, not ``3x10^-1``) at ``ticks`` or at 1-2-5 values."""
    which = ax.xaxis if axis == "x" else ax.yaxis
    if spec.context == "log":
        setter = ax.set_xscale if axis == "x" else ax.set_yscale
        if spec.signed:
            setter("symlog", linthresh=max(float(spec.bounds[0]), 1e-12), linscale=0.25)
        else:
            setter("log")
    if ticks is None:
        if spec.context != "log":
            return
        pts = np.concatenate([np.abs(data[np.isfinite(data)]),
                              np.abs(np.asarray(spec.train_ranges, dtype=np.float64).reshape(-1))])
        pts = pts[pts > 0]
        if pts.size == 0:
            return
        mags = _nice_ticks(float(pts.min()), float(pts.max()))
        ticks = sorted([-t for t in mags] + mags) if spec.signed else mags
    which.set_major_locator(FixedLocator(list(ticks)))
    which.set_major_formatter(FixedFormatter([f"{t:g}" for t in ticks]))
    which.set_minor_formatter(NullFormatter())
    if spec.signed:
        which.set_minor_locator(NullLocator())


def _shade_train(ax: Any, spec: ParamSpec, label: bool = True) -> None:
    for i, (lo, hi) in enumerate(spec.train_ranges):
        ax.axvspan(lo, hi, **_TRAIN_SHADE, label="train range" if (label and i == 0) else None)


def _threshold(ax: Any, threshold: float | None) -> None:
    if threshold is not None:
        ax.axhline(float(threshold), ls="--", lw=1.2, color="k", label=f"threshold {float(threshold):g}")


def _fmt(values: np.ndarray) -> str:
    finite = values[np.isfinite(values)]
    big = finite.size and float(np.nanmax(np.abs(finite))) >= 100
    return "{:.0f}" if big else "{:.3g}"


def _edges(centers: np.ndarray, spec: ParamSpec) -> np.ndarray:
    """Cell edges halfway between sorted centres (in log space for log parameters)."""
    use_log = spec.context == "log" and not spec.signed and bool((centers > 0).all())
    t = np.log(centers) if use_log else centers.astype(np.float64)
    if t.size == 1:
        half = 0.5 if not use_log else math.log(1.25)
        e = np.array([t[0] - half, t[0] + half])
    else:
        mid = (t[1:] + t[:-1]) / 2
        e = np.concatenate([[t[0] - (t[1] - t[0]) / 2], mid, [t[-1] + (t[-1] - t[-2]) / 2]])
    return np.exp(e) if use_log else e


def _mid(edges: np.ndarray, i: int, spec: ParamSpec) -> float:
    """The visual centre of cell ``i`` (geometric mean on a log axis)."""
    a, b = float(edges[i]), float(edges[i + 1])
    if spec.context == "log" and not spec.signed and a > 0 and b > 0:
        return math.sqrt(a * b)
    return (a + b) / 2


def _unique(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique values (tolerant to float noise) and each element's index among them."""
    key = np.array([float(f"{v:.10g}") for v in x])
    u, inv = np.unique(key, return_inverse=True)
    return u, inv.reshape(-1)


def _check(family: Family, values: Any, means: Any,
           stds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    v = _np(values, "values")
    P = family.num_params
    if v.ndim == 1 and P == 1:
        v = v.reshape(-1, 1)
    if v.ndim != 2 or v.shape[1] != P:
        raise ValueError(
            f"values must have shape [M, {P}] for family '{family.name}' "
            f"({', '.join(family.param_names)}); got {tuple(v.shape)}"
        )
    m = _np(means, "means").reshape(-1)
    if v.shape[0] == 0:
        raise ValueError("values is empty: nothing to plot")
    if m.shape[0] != v.shape[0]:
        raise ValueError(f"means has {m.shape[0]} entries but values has {v.shape[0]} rows")
    s = None
    if stds is not None:
        s = _np(stds, "stds").reshape(-1)
        if s.shape[0] != v.shape[0]:
            raise ValueError(f"stds has {s.shape[0]} entries but values has {v.shape[0]} rows")
    return v, m, s


# --------------------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------------------
def return_vs_param_figure(
    family: Family,
    values: Any,
    means: Any,
    stds: Any = None,
    title: str | None = None,
    threshold: float | None = None,
) -> Figure:
    """Mean return against the environment parameters.

    ``values`` is ``[M, P]`` (tensor or array; ``[M]`` is accepted for one parameter),
    ``means`` and ``stds`` are ``[M]`` (``stds`` optional). Points are marked as
    interpolation or extrapolation by :meth:`Family.split_of`; ``threshold`` (e.g. a
    family's ``success_return``) draws a reference level.

    * 1 parameter: a curve over the (signed) value, log x-axis for log-context parameters
      (symlog for signed ones, drawn as two curves that do not bridge zero), the train
      range(s) shaded, a ±std band.
    * 2 parameters: a heatmap over the unique grid values with each cell annotated and
      the train rectangle(s) outlined when the values (mostly) fill a grid; otherwise a
      scatter coloured by return. The threshold is marked on the colour bar.
    * 3 or more: one panel per parameter, return against that parameter.
    """
    v, m, s = _check(family, values, means, stds)
    splits = np.array(family.split_of(torch.as_tensor(v, dtype=torch.float64)))
    P = family.num_params
    if P == 1:
        fig = _curve(family, v, m, s, splits, threshold)
    elif P == 2:
        fig = _two_params(family, v, m, s, splits, threshold)
    else:
        fig = _panels(family, v, m, s, splits, threshold)
    if title is None:
        title = f"{family.name}: return vs {', '.join(family.param_names)}"
    fig.suptitle(title)
    return fig


def _curve(family: Family, v: np.ndarray, m: np.ndarray, s: np.ndarray | None,
           splits: np.ndarray, threshold: float | None) -> Figure:
    spec = family.params[0]
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    x = v[:, 0]
    _shade_train(ax, spec)
    # A signed parameter is drawn as two curves: joining -1 to +1 would suggest returns
    # at zero gain, a point the family excludes.
    segments = [x < 0, x >= 0] if spec.signed else [np.ones_like(x, dtype=bool)]
    first = True
    for seg in segments:
        if not seg.any():
            continue
        order = np.argsort(x[seg])
        xs, ms = x[seg][order], m[seg][order]
        ax.plot(xs, ms, color="0.25", lw=1.5, zorder=2, label="mean return" if first else None)
        if s is not None:
            ss = s[seg][order]
            ax.fill_between(xs, ms - ss, ms + ss, color="0.25", alpha=0.15, lw=0,
                            label="± std" if first else None)
        first = False
    for split in SPLITS:
        sel = splits == split
        if sel.any():
            st = _SPLIT_STYLE[split]
            ax.scatter(x[sel], m[sel], marker=st["marker"], color=st["color"], label=st["label"],
                       zorder=3, s=36, edgecolors="k", linewidths=0.5)
    _threshold(ax, threshold)
    _set_scale(ax, spec, x)
    if spec.signed:
        ax.axvline(0.0, color="0.6", lw=0.8)
    ax.set_xlabel(_label(spec))
    ax.set_ylabel("mean return")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig


def _train_rectangles(ax: Any, px: ParamSpec, py: ParamSpec) -> None:
    first = True
    for xlo, xhi in px.train_ranges:
        for ylo, yhi in py.train_ranges:
            ax.add_patch(Rectangle((xlo, ylo), xhi - xlo, yhi - ylo, fill=False, edgecolor="red",
                                   lw=2, ls="--", zorder=4, label="train range" if first else None))
            first = False


def _colorbar(fig: Figure, ax: Any, mappable: Any, threshold: float | None) -> None:
    cbar = fig.colorbar(mappable, ax=ax)
    cbar.set_label("mean return")
    if threshold is not None:
        lo, hi = cbar.ax.get_ylim()
        if lo <= float(threshold) <= hi:
            cbar.ax.axhline(float(threshold), color="k", lw=2)
        cbar.set_label(f"mean return (threshold {float(threshold):g})")


def _norm(m: np.ndarray) -> Normalize:
    finite = m[np.isfinite(m)]
    if finite.size == 0:
        return Normalize(0.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return Normalize(lo, hi)


def _two_params(family: Family, v: np.ndarray, m: np.ndarray, s: np.ndarray | None,
                splits: np.ndarray, threshold: float | None) -> Figure:
    px, py = family.params
    fig = Figure(figsize=(7.5, 6.0), layout="constrained")
    ax = fig.add_subplot()
    ux, ix = _unique(v[:, 0])
    uy, iy = _unique(v[:, 1])
    cells = len(ux) * len(uy)
    distinct = len(set(zip(ix.tolist(), iy.tolist())))
    # Grid-like: values repeat along each axis (a held-out grid, or the union of the
    # interpolation and extrapolation grids) rather than being scattered samples.
    is_grid = (2 <= len(ux) < len(v) and 2 <= len(uy) < len(v) and distinct == len(v)
               and len(v) / cells >= _GRID_MIN_FILL and cells <= _GRID_MAX_CELLS)
    norm, cmap = _norm(m), "viridis"
    if is_grid:
        C = np.full((len(uy), len(ux)), np.nan)
        C[iy, ix] = m
        ax.set_facecolor("0.92")  # missing cells
        ex, ey = _edges(ux, px), _edges(uy, py)
        mesh = ax.pcolormesh(ex, ey, np.ma.masked_invalid(C),
                             cmap=cmap, norm=norm, shading="flat")
        if cells <= _ANNOTATE_MAX_CELLS:
            fmt = _fmt(m)
            cm = mesh.get_cmap()
            small = "x-small" if cells > 36 else "small"
            for k in range(len(v)):
                if not np.isfinite(m[k]):
                    continue
                r, g, b, _ = cm(norm(m[k]))
                color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                text = fmt.format(m[k])
                if s is not None and np.isfinite(s[k]):
                    text += "\n±" + fmt.format(s[k])
                ax.text(_mid(ex, ix[k], px), _mid(ey, iy[k], py), text, ha="center", va="center", color=color,
                        fontsize=small, zorder=3)
        _colorbar(fig, ax, mesh, threshold)
    else:
        for split in SPLITS:
            sel = splits == split
            if sel.any():
                st = _SPLIT_STYLE[split]
                ax.scatter(v[sel, 0], v[sel, 1], c=m[sel], cmap=cmap, norm=norm, marker=st["marker"],
                           s=70, edgecolors="k", linewidths=0.6, zorder=3, label=st["label"])
        from matplotlib.cm import ScalarMappable

        _colorbar(fig, ax, ScalarMappable(norm=norm, cmap=cmap), threshold)
    _train_rectangles(ax, px, py)
    few = is_grid and len(ux) <= 12 and len(uy) <= 12
    _set_scale(ax, px, v[:, 0], "x", ticks=ux.tolist() if few else None)
    _set_scale(ax, py, v[:, 1], "y", ticks=uy.tolist() if few else None)
    if few:
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_minor_locator(NullLocator())
        if len(ux) > 6:
            ax.tick_params(axis="x", labelrotation=45)
    ax.set_xlabel(_label(px))
    ax.set_ylabel(_label(py))
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.12), fontsize="small", ncols=3,
              frameon=False)
    return fig


def _panels(family: Family, v: np.ndarray, m: np.ndarray, s: np.ndarray | None,
            splits: np.ndarray, threshold: float | None) -> Figure:
    P = family.num_params
    ncols = min(P, 3)
    nrows = math.ceil(P / ncols)
    fig = Figure(figsize=(4.3 * ncols, 3.7 * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    for j, spec in enumerate(family.params):
        ax = axes[j // ncols][j % ncols]
        _shade_train(ax, spec)
        for split in SPLITS:
            sel = splits == split
            if not sel.any():
                continue
            st = _SPLIT_STYLE[split]
            ax.errorbar(v[sel, j], m[sel], yerr=None if s is None else s[sel], fmt=st["marker"],
                        color=st["color"], ms=5, mec="k", mew=0.5, elinewidth=0.8, capsize=2,
                        alpha=0.85, label=st["label"], zorder=3)
        _threshold(ax, threshold)
        _set_scale(ax, spec, v[:, j])
        ax.set_xlabel(_label(spec))
        if j % ncols == 0:
            ax.set_ylabel("mean return")
        ax.grid(True, alpha=0.3)
    for k in range(P, nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize="small",
               frameon=False)
    return fig


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------
def close_figure(fig: Figure) -> None:
    """Release a figure (also from pyplot's registry if it was made with pyplot)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        with contextlib.suppress(Exception):
            plt.close(fig)
    fig.clear()


def figure_to_array(fig: Figure, close: bool = True) -> np.ndarray:
    """Render ``fig`` with Agg to an ``[H, W, 3]`` uint8 RGB array (closes it unless ``close=False``)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    arr = np.array(canvas.buffer_rgba(), dtype=np.uint8)[..., :3].copy()
    if close:
        close_figure(fig)
    return arr


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120, close: bool = True) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (:func:`hyperrl.fileio.atomic_write_path`:
    a reader never sees a partial image). Closes it unless ``close=False``."""
    from hyperrl.fileio import atomic_write_path

    try:
        if not isinstance(fig.canvas, FigureCanvasAgg):
            FigureCanvasAgg(fig)
        return atomic_write_path(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    finally:
        if close:
            close_figure(fig)
