"""Drawing only: one paper style, one colour per agent, each figure a small function on an ``ax``.

Every function here takes numbers already computed by :mod:`plots.stats` / :mod:`plots.report`
(so every number in a figure can also be printed without matplotlib) and draws them; none of
them reads files or computes a statistic. The Agg backend is used, so figures build headless.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import EngFormatter

from plots.references import Reference
from plots.stats import AGGREGATE_NAMES, AGGREGATES, Curve, Estimate

# Fixed colours for the suite's agents (colour-blind-safe Tableau hues); other labels (sweep
# variants, new agents) take the palette in sorted order, so a label keeps its colour across
# every figure of a report.
FIXED_COLORS = {"ppo": "#1f77b4", "rainbow": "#d62728", "btr": "#2ca02c", "pqn": "#6a3d9a", "random": "#7f7f7f"}
PALETTE = ["#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79", "#ad494a",
           "#637939", "#7b4173"]  # fmt: skip
PHASE_STYLE = {"env": (1.0, ""), "act": (0.7, "//"), "learn": (0.45, ".."), "eval": (0.2, "xx")}

STYLE = {
    "font.size": 8.5,
    "axes.titlesize": 9,
    "axes.labelsize": 8.5,
    "legend.fontsize": 8,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.6,
    "legend.frameon": False,
    "figure.dpi": 110,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,  # TrueType in PDFs, as publishers ask
    "ps.fonttype": 42,
}

CI_ALPHA = 0.2


def colors_for(labels: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    for lab in sorted(set(labels)):
        if lab in FIXED_COLORS:
            out[lab] = FIXED_COLORS[lab]
        else:
            out[lab] = PALETTE[i % len(PALETTE)]
            i += 1
    return out


@contextmanager
def paper_style() -> Iterator[None]:
    with matplotlib.rc_context(STYLE):
        yield


def new_figure(ncols: int, nrows: int = 1, panel_w: float = 3.2, panel_h: float = 2.5):
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_w * ncols, panel_h * nrows), squeeze=False)
    return fig, axes


def save(fig, stem: Path, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` (or the ``formats`` given); close the figure."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(f".{ext}") for ext in formats]
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths


def time_unit(max_s: float) -> tuple[float, str]:
    """(divisor, unit) that keeps wall-clock ticks readable."""
    if max_s >= 2 * 3600:
        return 3600.0, "h"
    if max_s >= 120:
        return 60.0, "min"
    return 1.0, "s"


def count_axis(ax, which: str = "x") -> None:
    """Engineering ticks (200k, 1.5M) for step / frame / sample counts."""
    (ax.xaxis if which == "x" else ax.yaxis).set_major_formatter(EngFormatter(sep=""))


# Learning curves ---------------------------------------------------------------------------


def draw_curve(ax, curve: Curve, color: str, label: str, x_scale: float = 1.0) -> None:
    """IQM curve with its CI band. Solid where every run has data; dotted (and without a band)
    where some runs have ended or not yet scored; nothing where none has data."""
    x = curve.grid / x_scale
    have = curve.n > 0
    full = curve.full & have
    part = have & ~full
    # Extend the dotted part by one point on each side so the two pieces join.
    part_ext = part.copy()
    part_ext[1:] |= part[:-1] & have[1:]
    part_ext[:-1] |= part[1:] & have[:-1]
    ax.plot(x, np.where(full, curve.iqm, np.nan), color=color, label=label, drawstyle="steps-post")
    if part.any():
        ax.plot(x, np.where(part_ext, curve.iqm, np.nan), color=color, ls=":", drawstyle="steps-post")
    band = np.isfinite(curve.lo) & np.isfinite(curve.hi)
    if band.any():
        ax.fill_between(x, np.where(band, curve.lo, np.nan), np.where(band, curve.hi, np.nan), color=color,
                        alpha=CI_ALPHA, lw=0, step="post")  # fmt: skip


REF_STYLES = ("--", "-.", (0, (1, 1)), (0, (5, 1, 1, 1, 1, 1)))


def draw_references(ax, refs: list[Reference], y_data_max: float) -> None:
    """Published scores as horizontal lines, one line style each. A reference far above the
    data (short runs against a 10M-step result) gets a legend entry marked "above the plotted
    range" instead of a line, so it does not squash the curves."""
    for i, ref in enumerate(refs):
        style = REF_STYLES[i % len(REF_STYLES)]
        if math.isfinite(y_data_max) and ref.score > 2.0 * max(y_data_max, 1e-9):
            ax.plot(
                [],
                [],
                color="0.3",
                ls=style,
                lw=1.0,
                label=f"{ref.name}: {ref.score:g} (above plotted range)",
            )
        else:
            ax.axhline(ref.score, color="0.3", ls=style, lw=1.0, label=f"{ref.name}: {ref.score:g}")


def note(ax, text: str, loc: str = "lower right") -> None:
    x, ha = (0.98, "right") if "right" in loc else (0.02, "left")
    y, va = (0.03, "bottom") if "lower" in loc else (0.97, "top")
    ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=7, color="0.35", style="italic")


@dataclass
class CurvePanel:
    """One axis of a learning-curve figure."""

    title: str  # "vs training wall clock"
    xlabel: str  # "training wall clock"
    kind: str  # "time" | "count"
    curves: dict[str, Curve]  # label -> curve on this axis
    n_runs: dict[str, int]  # label -> runs behind the curve (legend)
    missing: dict[str, str]  # label -> why it is not drawn here
    log: bool = False  # log-spaced grid: draw on a log x axis


def curves_figure(panels: list[CurvePanel], colors: dict[str, str], ylabel: str, title: str,
                  references: list[Reference] = ()):  # fmt: skip
    """A row of learning-curve panels (one per x axis) sharing a legend."""
    fig, axes = new_figure(len(panels))
    for ax, p in zip(axes[0], panels, strict=True):
        scale, unit = 1.0, ""
        if p.kind == "time":
            xmax = max((float(np.nanmax(c.grid)) for c in p.curves.values() if len(c.grid)), default=1.0)
            scale, unit = time_unit(xmax)
        for lab in sorted(p.curves):
            draw_curve(ax, p.curves[lab], colors[lab], _seeds_label(lab, p.n_runs[lab]), x_scale=scale)
        draw_references(ax, list(references), _top(p.curves.values()))
        if p.log:
            ax.set_xscale("log")
        if p.kind == "count":
            count_axis(ax)
        ax.set_xlabel(f"{p.xlabel} ({unit})" if unit else p.xlabel)
        ax.set_title(p.title + (" (log scale)" if p.log else ""))
        if not p.log:
            ax.set_xlim(left=0)
        if p.missing:
            note(ax, "; ".join(f"{k}: {v}" for k, v in sorted(p.missing.items())))
        if not p.curves:
            note(ax, "no data on this axis", loc="upper left")
    axes[0][0].set_ylabel(ylabel)
    shared_legend(fig, axes[0])
    # A long game list would set the figure's width; wrap it to the panels' width instead.
    title = "\n".join(textwrap.wrap(title, width=max(60, 45 * len(panels)), break_on_hyphens=False))
    if any((~c.full & (c.n > 0)).any() for p in panels for c in p.curves.values()):
        title += "\ndotted: not every run has data there (ended early or no episode yet), no CI"
    fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def _top(curves) -> float:
    """Highest drawn value (IQM or CI) of some curves; NaN if none has data."""
    tops = [float(np.nanmax(np.concatenate([c.iqm, c.hi]))) for c in curves if np.isfinite(c.iqm).any()]
    return max(tops, default=math.nan)


def _seeds_label(label: str, n: int) -> str:
    return f"{label} ({n} seed{'s' if n != 1 else ''}{', no CI' if n < 2 else ''})"


def footnote(fig, text: str, below=None) -> None:
    """Small italic text under the figure, under ``below`` (a legend) when given: measured, so a
    legend of several rows never runs into it."""
    y = -0.02
    if below is not None:
        box = below.get_window_extent(fig.canvas.get_renderer()).transformed(fig.transFigure.inverted())
        y = box.y0 - 0.02
    fig.text(0.5, y, text, ha="center", va="top", fontsize=7, color="0.35", style="italic")


def shared_legend(fig, axes):
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        # Hung from its top edge below the panels, so more rows grow downwards (the figure is saved
        # with a tight bbox) instead of up over the x labels; many labels get more columns.
        ncol = min(len(labels), 4 if len(labels) <= 8 else 6)
        return fig.legend(handles, labels, loc="upper center", ncol=ncol, bbox_to_anchor=(0.5, -0.02))
    return None


# Final score vs a swept quantity -------------------------------------------------------------


@dataclass
class SweepPoint:
    label: str  # the setting's label (e.g. ppo-reuse4)
    series: str  # the line it belongs to: the agent (one line per agent across its settings)
    x: float  # the swept value (median over the group's runs)
    x_lo: float  # range of the measured value in the group (reuse ratio varies slightly)
    x_hi: float
    y: Estimate  # final-score IQM and CI over the group's runs
    n: int  # runs in the group


def draw_sweep(ax, points: list[SweepPoint], colors: dict[str, str], log_x: bool) -> None:
    """Final score against a swept value: IQM with CI error bars, one line per agent."""
    series = sorted({p.series for p in points})
    for i, name in enumerate(series):
        pts = sorted((p for p in points if p.series == name), key=lambda p: p.x)
        # Agents swept at the same values would hide each other's error bars: dodge them a
        # little sideways (a constant factor, so the dodge looks the same on a log axis).
        dodge = 2.0 ** (0.04 * (i - (len(series) - 1) / 2)) if log_x else 1.0
        xs = np.array([p.x for p in pts]) * dodge
        ys = np.array([p.y.point for p in pts])
        lo = np.array([p.y.point - p.y.lo if p.y.has_ci else 0.0 for p in pts])
        hi = np.array([p.y.hi - p.y.point if p.y.has_ci else 0.0 for p in pts])
        xerr = np.array([[p.x - p.x_lo for p in pts], [p.x_hi - p.x for p in pts]]) * dodge
        # A line only joins settings that differ in the swept value; several configs at one value
        # (e.g. the horizon view of a reuse study) are separate points, not a vertical segment.
        distinct = len({f"{x:.2g}" for x in xs}) == len(xs)
        ax.errorbar(xs, ys, yerr=[lo, hi], xerr=xerr, color=colors[name], marker="o", ms=4, capsize=2.5,
                    lw=1.2, ls="-" if distinct else "none", label=name)  # fmt: skip
        for x, p in zip(xs, pts, strict=True):
            # n runs behind each point; a single run has no CI (hollow ring marks it).
            ax.annotate(f"n={p.n}", (x, p.y.point), xytext=(4, 4), textcoords="offset points", fontsize=6.5,
                        color=colors[name])  # fmt: skip
            if not p.y.has_ci:
                ax.plot([x], [p.y.point], marker="o", ms=7, mfc="none", mec=colors[name], lw=0)
    if log_x:
        ax.set_xscale("log", base=2)
        # Ticks at whole powers of two spanning the data: the measured values (0.91, 1.0, 3.7)
        # sit close to the requested ones and would print on top of each other.
        xs_all = [v for p in points for v in (p.x_lo, p.x_hi)]
        lo_e, hi_e = math.floor(math.log2(min(xs_all)) + 0.2), math.ceil(math.log2(max(xs_all)) - 0.2)
        ticks = [2.0**e for e in range(lo_e, max(hi_e, lo_e + 1) + 1)]
        ax.set_xticks(ticks)
        ax.set_xlim(min(ticks[0], min(xs_all)) / 1.3, max(ticks[-1], max(xs_all)) * 1.3)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.margins(y=0.15)


# Aggregates --------------------------------------------------------------------------------


def draw_interval(ax, estimates: dict[str, Estimate], order: list[str], colors: dict[str, str], title: str,
                  show_labels: bool) -> None:  # fmt: skip
    """rliable-style interval estimate: a bar spanning the 95% CI, a black tick at the point."""
    for i, lab in enumerate(order):
        e = estimates[lab]
        if not math.isfinite(e.point):
            continue
        if e.has_ci:
            ax.barh(i, e.hi - e.lo, left=e.lo, height=0.6, color=colors[lab], alpha=0.75)
        else:
            ax.barh(i, 0, left=e.point, height=0.6, color=colors[lab])
            ax.plot([e.point], [i], marker="o", ms=5, color=colors[lab])
        ax.vlines(e.point, i - 0.3, i + 0.3, color="k", lw=1.5)
    ax.set_yticks(range(len(order)), order if show_labels else [""] * len(order))
    ax.set_ylim(-0.6, len(order) - 0.4)
    # Bars pin the autoscale to their edges ("sticky edges"); without a margin, single-seed dots at
    # the extremes sit half outside the axes.
    ax.use_sticky_edges = False
    ax.margins(x=0.08)
    ax.set_title(title)
    ax.grid(axis="y", visible=False)


def interval_figure(
    aggregates: dict[str, dict[str, Estimate]], colors: dict[str, str], xlabel: str, footnote: str
):
    order = sorted(aggregates)
    fig, axes = new_figure(len(AGGREGATES), panel_w=2.3, panel_h=0.45 * len(order) + 1.1)
    for j, (ax, key) in enumerate(zip(axes[0], AGGREGATES, strict=True)):
        draw_interval(ax, {lab: aggregates[lab][key] for lab in order}, order, colors, AGGREGATE_NAMES[key],
                      show_labels=j == 0)  # fmt: skip
        ax.set_xlabel(xlabel)
    fig.text(0.5, -0.02, footnote, ha="center", va="top", fontsize=7, color="0.35", style="italic")
    fig.tight_layout()
    return fig


def draw_profile(ax, profiles: dict[str, Curve], colors: dict[str, str], n_runs: dict[str, int]) -> None:
    """Performance profile: fraction of runs above each threshold, with its CI band."""
    for lab in sorted(profiles):
        c = profiles[lab]
        ax.plot(c.grid, c.iqm, color=colors[lab], label=_seeds_label(lab, n_runs[lab]))
        if np.isfinite(c.lo).any():
            ax.fill_between(c.grid, c.lo, c.hi, color=colors[lab], alpha=CI_ALPHA, lw=0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(left=float(min(c.grid[0] for c in profiles.values())))
    ax.set_ylabel(r"fraction of runs with score $> \tau$")


def draw_poi(ax, pairs: list[tuple[str, str, Estimate]], colors: dict[str, str]) -> None:
    """Probability of improvement P(X > Y) per pair with its CI; 0.5 means no difference."""
    for i, (x, _y, e) in enumerate(pairs):
        if e.has_ci:
            ax.barh(i, e.hi - e.lo, left=e.lo, height=0.6, color=colors[x], alpha=0.75)
        else:
            ax.plot([e.point], [i], marker="o", ms=5, color=colors[x])
        ax.vlines(e.point, i - 0.3, i + 0.3, color="k", lw=1.5)
    ax.axvline(0.5, color="0.4", ls="--", lw=1)
    ax.set_yticks(range(len(pairs)), [f"P({x} > {y})" for x, y, _ in pairs])
    ax.set_ylim(-0.6, len(pairs) - 0.4)
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability of improvement")
    ax.grid(axis="y", visible=False)


# Compute -----------------------------------------------------------------------------------


def draw_phases(ax, phases: dict[str, dict[str, float]], order: list[str], colors: dict[str, str]) -> None:
    """Mean seconds per phase (env / act / learn / eval), stacked, one bar per label."""
    for i, lab in enumerate(order):
        left = 0.0
        for ph, (alpha, hatch) in PHASE_STYLE.items():
            v = phases[lab].get(ph, math.nan)
            if not math.isfinite(v) or v <= 0:
                continue
            ax.barh(i, v, left=left, height=0.6, color=colors[lab], alpha=alpha, hatch=hatch, edgecolor="white",
                    lw=0.5)  # fmt: skip
            left += v
    for ph, (alpha, hatch) in PHASE_STYLE.items():
        ax.barh(np.nan, 0, color="0.3", alpha=alpha, hatch=hatch, edgecolor="white", label=ph)
    ax.set_yticks(range(len(order)), order)
    ax.set_ylim(-0.6, len(order) - 0.4)
    ax.set_xlabel("seconds per run (mean)")
    ax.set_title("time per phase", pad=16)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, fontsize=7, handlelength=1.2,
              columnspacing=0.8)  # fmt: skip
    ax.grid(axis="y", visible=False)


def draw_per_run_bars(ax, values: dict[str, list[float]], order: list[str], colors: dict[str, str], title: str,
                      xlabel: str, log: bool = False) -> None:  # fmt: skip
    """A bar at the mean of each label's runs, with every run as a dot. ``log`` asks for a log
    axis, used only when the positive values span more than two decades."""
    pos = [x for v in values.values() for x in v if math.isfinite(x) and x > 0]
    log = log and bool(pos) and max(pos) / min(pos) > 100
    for i, lab in enumerate(order):
        v = np.array([x for x in values[lab] if math.isfinite(x)])
        if v.size == 0:
            note_at(ax, i, "n/a")
            continue
        m = float(v.mean())
        if m <= 0:
            note_at(ax, i, "0")
            continue
        ax.barh(i, m, height=0.6, color=colors[lab], alpha=0.75)
        ax.plot(v, np.full(v.size, i) + np.linspace(-0.12, 0.12, v.size), "o", ms=3, color="k", alpha=0.7)
    if log:
        ax.set_xscale("log")
        ax.set_title(f"{title} (log scale)")
    count_axis(ax)
    ax.set_yticks(range(len(order)), order)
    ax.set_ylim(-0.6, len(order) - 0.4)
    if not log:
        ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(axis="y", visible=False)


def note_at(ax, row: int, text: str) -> None:
    ax.text(0.02, row, text, transform=ax.get_yaxis_transform(), va="center", fontsize=7, color="0.35",
            style="italic")  # fmt: skip
