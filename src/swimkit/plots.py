"""Plots of a sweep: accuracy under variation against modelled programming speedup (log
axis), a line and its 95 % confidence band per model and method, the best full-verify band
and the line P points below it; and accuracy against time after programming. Figures are
drawn with matplotlib's object API (no pyplot state, no backend switch) and written
atomically like every other file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .results import Point, SweepResult
from .storage import atomic_write
from .summaries import chips_summary, device_summary, format_time

_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_sweep(result: SweepResult, path: str | Path) -> Path | None:
    """Accuracy against modelled speedup (log axis): a line and its 95 % CI band per model
    and method (colour: model, line style and marker: method; colour: method for one
    model), the best full verify's band and the "points below" line. None without
    matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    result = result.with_reference()
    lines = _plot_lines(result)
    methods = list(dict.fromkeys(method for _, method in lines))
    labels = list(dict.fromkeys(label for label, _ in lines))
    several = len(result.models) > 1
    fig = Figure(figsize=(9.5 if several else 7.5, 4.8))
    ax = fig.add_subplot()
    for (label, method), points in lines.items():
        k, j = methods.index(method), labels.index(label)
        colour = f"C{j % 10}" if several else f"C{k % 10}"
        xs = [p.speedup for p in points]
        ax.plot(xs, [p.mc.mean for p in points], color=colour,
                linestyle=_STYLES[k % len(_STYLES)] if several else "-",
                marker=_MARKERS[k % len(_MARKERS)], markersize=3,
                label=f"{method} ({label})" if several else method)
        ax.fill_between(xs, [p.mc.ci95[0] for p in points], [p.mc.ci95[1] for p in points],
                        color=colour, alpha=0.15, linewidth=0)
    best = max(result.models, key=lambda m: m.full_verify.mc.mean)
    low, high = best.full_verify.mc.ci95
    ax.axhspan(low, high, color="gray", alpha=0.3,
               label=f"full verify ({best.label})" if several else "full verify")
    ax.axhline(result.reference_percent - result.within_points, color="gray", linestyle="--",
               label=f"{result.within_points:g} point below")
    _speedup_axis(ax, [p.speedup for ps in lines.values() for p in ps])
    ax.set_ylabel("accuracy under variation (%)")
    floor = result.reference_percent - 4 * max(result.within_points, 1.0)
    ax.set_ylim(bottom=max(floor, min((p.mc.ci95[0] for ps in lines.values() for p in ps),
                                      default=floor)))
    s = result.settings
    when = "" if not s["evaluation"].get("times") else (
        f", judged at {format_time(_judged_time(s))}")
    ax.set_title(f"{s['model']['name']} / {s['data']['dataset']}, "
                 f"{device_summary(s['device_model'])}\n{chips_summary(s['evaluation'])}"
                 f"{when}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    if several:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def _judged_time(settings: dict[str, Any]) -> float:
    """The time a sweep judged its plans at (earlier releases kept it with the chips)."""
    evaluation = settings["evaluation"]
    judge = settings.get("grid", {}).get("judge_time", evaluation.get("judge_time"))
    return float(evaluation["times"][0] if judge is None else judge)


def plot_over_time(result: SweepResult, path: str | Path) -> Path | None:
    """Accuracy against time after programming (log axis), a line and its 95 % CI band
    per evaluated plan. None without matplotlib or without times."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    points = [(m.label, p) for m in result.models
              for p in (m.no_verify, m.full_verify, *m.points) if p.over_time]
    if not points:
        return None
    fig = Figure(figsize=(8.5, 4.8))
    ax = fig.add_subplot()
    several = len(result.models) > 1
    for k, (label, point) in enumerate(points):
        xs = [max(mc.meta["time_s"], 1e-1) for mc in point.over_time]
        colour = f"C{k % 10}"
        ax.plot(xs, [mc.mean for mc in point.over_time], color=colour, marker="o",
                markersize=3, label=f"{point.label} ({label})" if several else point.label)
        ax.fill_between(xs, [mc.ci95[0] for mc in point.over_time],
                        [mc.ci95[1] for mc in point.over_time], color=colour, alpha=0.15,
                        linewidth=0)
    ax.set_xscale("log")
    times = [mc.meta["time_s"] for _, p in points for mc in p.over_time]
    ax.set_xticks([max(t, 1e-1) for t in dict.fromkeys(times)])
    ax.set_xticklabels([format_time(t) for t in dict.fromkeys(times)])
    ax.set_xlabel("time after programming")
    ax.set_ylabel("accuracy under variation (%)")
    s = result.settings
    ax.set_title(f"{s['model']['name']} / {s['data']['dataset']}, "
                 f"{device_summary(s['device_model'])}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)


def _plot_lines(result: SweepResult) -> dict[tuple[str, str], list[Point]]:
    """Points with a speedup per (model, method), searches included, sorted by speedup."""
    lines: dict[tuple[str, str], list[Point]] = {}
    for model in result.models:
        found = [s.point for s in model.searches if s.point is not None]
        for point in (*model.points, *found):
            if point.speedup is not None:
                lines.setdefault((model.label, point.method), []).append(point)
    return {key: sorted({p.speedup: p for p in points}.values(), key=lambda p: p.speedup)
            for key, points in lines.items()}


def _speedup_axis(ax: Any, speeds: list[float]) -> None:
    """Log x axis with round ticks (1.5x, 2x, 3x...), the ends added where no tick is near."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    if speeds:
        low, high = min(speeds), max(speeds)
        round_ticks = [t for t in (1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20)
                       if low / 1.05 <= t <= high * 1.05]
        ends = [e for e in (round(low, 1), round(high, 1))
                if all(abs(math.log(e / t)) > 0.12 for t in round_ticks)]
        ax.set_xticks(sorted({*round_ticks, *ends}))
        ax.set_xlim(low / 1.1, high * 1.1)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("modelled programming speedup over full write-verify")


def _save(fig: Any, path: str | Path) -> Path:
    """``fig`` written atomically to ``path``, in the format its suffix names."""
    fig.tight_layout()
    suffix = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=130, format=suffix,
                                                      bbox_inches="tight"))


__all__ = ["plot_over_time", "plot_sweep"]
