"""Return-versus-parameter figures for 1-, 2- and 3-parameter families."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.collections import QuadMesh
from matplotlib.figure import Figure

from hyperrl.families import load_family
from hyperrl.plots import figure_to_array, return_vs_param_figure, save_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _heldout(name: str) -> tuple:
    fam = load_family(name)
    values = torch.cat([fam.heldout_values("interpolation"), fam.heldout_values("extrapolation")])
    g = torch.Generator().manual_seed(0)
    means = 500.0 - 100.0 * torch.rand(len(values), generator=g) * (~fam.in_train_range(values))
    stds = 10.0 * torch.rand(len(values), generator=g)
    return fam, values, means, stds


def test_one_param_curve() -> None:
    fam, values, means, stds = _heldout("cartpole-mass")
    fig = return_vs_param_figure(fam, values, means, stds, threshold=475, title="mass sweep")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"  # masspole's context scale is log
    assert fig._suptitle.get_text() == "mass sweep"
    labels = ax.get_legend_handles_labels()[1]
    assert any(lbl.startswith("interpolation") for lbl in labels)
    assert any(lbl.startswith("extrapolation") for lbl in labels)
    assert "threshold 475" in labels and "train range" in labels
    # numpy input, [M] values, no stds
    fig2 = return_vs_param_figure(fam, values[:, 0].numpy(), means.numpy())
    assert isinstance(fig2, Figure)


def test_signed_one_param() -> None:
    fam, values, means, stds = _heldout("cartpole-actuator")
    fig = return_vs_param_figure(fam, values, means, stds, threshold=fam.success_return)
    ax = fig.axes[0]
    assert ax.get_xscale() == "symlog"
    lo, hi = ax.get_xlim()
    assert lo < -15 and hi > 15  # plotted over the signed value
    # two curves (negative and positive gains), never a line across zero
    curves = [line for line in ax.get_lines() if line.get_label() != "threshold 475"
              and len(line.get_xdata()) > 2]
    assert len(curves) == 2
    for line in curves:
        x = np.asarray(line.get_xdata())
        assert (x < 0).all() or (x > 0).all()
    arr = figure_to_array(fig)
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8


def test_two_param_heatmap() -> None:
    fam = load_family("pendulum-mass-length")
    values = fam.heldout_values("interpolation")  # a 4 x 4 grid
    means = -200.0 - 10.0 * torch.arange(len(values), dtype=torch.float64)
    fig = return_vs_param_figure(fam, values, means, torch.ones(len(values)), threshold=-300)
    ax = fig.axes[0]
    assert any(isinstance(c, QuadMesh) for c in ax.collections)
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 16 and "-200\n±1" in texts
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"  # m: log, l: linear
    assert any(p.get_label() == "train range" for p in ax.patches)
    assert len(fig.axes) == 2  # plus the colour bar

    # extrapolation grid with the inside-train cell removed, and the union of both grids
    for vals in (fam.heldout_values("extrapolation"),
                 torch.cat([fam.heldout_values("interpolation"), fam.heldout_values("extrapolation")])):
        fig = return_vs_param_figure(fam, vals, torch.zeros(len(vals)))
        assert any(isinstance(c, QuadMesh) for c in fig.axes[0].collections)


def test_two_param_scattered_values() -> None:
    fam = load_family("pendulum-mass-length")
    vals = fam.sample(25, torch.Generator().manual_seed(1), dtype=torch.float64)
    fig = return_vs_param_figure(fam, vals, -torch.rand(25) * 1000)
    ax = fig.axes[0]
    assert not any(isinstance(c, QuadMesh) for c in ax.collections)
    assert len(ax.collections) >= 1 and len(fig.axes) == 2


def test_three_param_panels() -> None:
    fam, values, means, stds = _heldout("acrobot-links")
    fig = return_vs_param_figure(fam, values, -means, stds, threshold=-100)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3
    assert [ax.get_xlabel() for ax in visible] == ["LINK_MASS_1 [kg]", "LINK_MASS_2 [kg]", "LINK_LENGTH_1 [m]"]
    assert [ax.get_xscale() for ax in visible] == ["log", "log", "linear"]


def test_bad_shapes() -> None:
    fam = load_family("pendulum-mass-length")
    with pytest.raises(ValueError, match=r"\[M, 2\]"):
        return_vs_param_figure(fam, torch.ones(4, 3), torch.ones(4))
    with pytest.raises(ValueError, match="means has 3 entries"):
        return_vs_param_figure(fam, torch.ones(4, 2), torch.ones(3))


def test_figure_to_array_and_png(tmp_path: Path) -> None:
    fam, values, means, stds = _heldout("cartpole-mass")
    fig = return_vs_param_figure(fam, values, means, stds)
    w, h = fig.get_size_inches() * fig.dpi
    arr = figure_to_array(fig, close=False)
    assert arr.shape == (round(h), round(w), 3) and arr.dtype == np.uint8
    assert arr.min() < 100 and arr.max() == 255  # something was drawn on a white background

    out = save_figure(fig, tmp_path / "plots" / "return.png")
    assert out == tmp_path / "plots" / "return.png"
    data = out.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_SIGNATURE
    assert [p.name for p in out.parent.iterdir()] == ["return.png"]  # no temp file left
