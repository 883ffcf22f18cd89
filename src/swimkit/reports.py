"""Human-readable output: summary lines, tables, the registries' tables, and the files
of a sweep (its plots are drawn by :mod:`swimkit.plots`)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import DATASETS
from .devices import DEVICE_MODELS
from .errors import SwimkitError, first_line
from .models import MODELS
from .montecarlo import MCResult
from .registry import markdown_table
from .results import Evaluation, Point, Search, SweepResult
from .selection import METHODS
from .sensitivity import ENGINES
from .storage import atomic_write_text
from .summaries import (
    chips_summary,
    device_summary,
    format_mc,
    format_time,
    seconds,
)


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def run_lines(result: SweepResult) -> list[str]:
    """The summary of a run: one model, its baselines and its points."""
    result = result.with_reference()
    s = result.settings
    dm, ev = s["device_model"], s["evaluation"]
    lines = [
        f"model {s['model']['name']} on {s['data']['dataset']}; {device_summary(dm)}, "
        f"{chips_summary(ev)} (seed {ev['seed']}); yield = chips "
        f"within {result.within_points:g} point(s) of {result.reference_percent:.2f} %",
    ]
    for model in result.models:
        prefix = f"[{model.label}] " if len(result.models) > 1 else ""
        lines.append(f"{prefix}clean accuracy       {model.clean_accuracy_percent:6.2f} %")
        lines.append(f"{prefix}no write-verify      {format_mc(model.no_verify.mc)}")
        lines += _time_lines(model.no_verify, prefix)
        lines.append(f"{prefix}full write-verify    {format_mc(model.full_verify.mc)}")
        lines += _time_lines(model.full_verify, prefix)
        for point in model.points:
            lines += _point_lines(point, prefix)
    lines.append("written:")
    lines.extend(file_lines(result.files))
    return lines


def _point_lines(point: Point, prefix: str) -> list[str]:
    c = point.counts
    lines = [
        f"{prefix}{point.label}: {format_mc(point.mc)}",
        f"{prefix}  devices verified   {c.devices_verified:,} of {c.devices_total:,} "
        f"({_percent(c.devices_fraction_verified)}); weights touched {c.weights_verified:,} "
        f"of {c.weights_total:,} ({_percent(c.fraction_verified)})",
    ]
    prog = point.programming
    if prog is not None:
        lines.append(f"{prefix}  programming time   {seconds(prog.time_plan_s)} (full verify "
                     f"{seconds(prog.time_full_verify_s)}): speedup {prog.speedup:.2f}x")
    if prog is not None and prog.stuck_devices_verified is not None:
        lines.append(f"{prefix}  stuck cells        {prog.stuck_devices_verified:,.0f} tried "
                     f"(expected), {seconds(prog.time_stuck_s or 0.0)} burnt on them")
    lines += _time_lines(point, prefix)
    if point.gap is not None:
        low, high = point.gap.ci95
        lines.append(f"{prefix}  gap to full verify {point.gap.mean:+.2f} points "
                     f"(95% CI {low:+.2f} to {high:+.2f}, paired chips)")
    if "learn_seconds" in point.meta:
        lines.append(f"{prefix}  learning the plan  {point.meta['learn_seconds']:.1f} s "
                     f"({point.meta['learn_epochs']} epochs)")
    return lines


def _time_lines(point: Point, prefix: str) -> list[str]:
    """One line per time of a point read at several times."""
    lines = []
    for mc in point.over_time or []:
        when = "at " + format_time(mc.meta["time_s"])
        lines.append(f"{prefix}  {when:<18} {format_mc(mc)}")
    return lines


def file_lines(files: dict[str, str]) -> list[str]:
    """The files written, one per line, names aligned."""
    width = max((len(name) for name in files), default=0)
    return [f"  {name:<{width}} {path}" for name, path in files.items()]


def evaluation_lines(evaluation: Evaluation) -> list[str]:
    """The summary of an evaluation: clean accuracy, then each time's chips and yield."""
    lines = [f"clean accuracy {evaluation.clean_accuracy_percent:.2f} %"]
    for time, mc in zip(evaluation.times or [None], evaluation.results, strict=True):
        when = "" if time is None else f" {format_time(time)} after programming"
        lines.append(f"under variation{when}: {mc}")
        if mc.chip_yield is not None:
            lines.append(f"yield: {100 * mc.chip_yield:.1f} % of chips within {mc.within:g} "
                         f"points of {mc.reference:.2f} %")
    return lines


def print_run(result: SweepResult) -> None:
    print("\n".join(run_lines(result)), flush=True)


COLUMNS = ("model", "method", "budget", "fraction_verified", "devices_fraction_verified",
           "speedup", "mean_percent", "std_percent", "ci95_low_percent", "ci95_high_percent",
           "p05_percent", "yield_fraction", "chips")


def sweep_rows(result: SweepResult) -> list[dict[str, Any]]:
    """One row per evaluated point, each model's baselines first."""
    result = result.with_reference()
    rows = []
    for model in result.models:
        for point in (model.no_verify, model.full_verify, *model.points):
            rows.append(_row(point))
    return rows


def _row(point: Point) -> dict[str, Any]:
    low, high = point.mc.ci95
    budget = "-" if point.budget_kind is None else (
        f"{point.budget_kind.replace('_', ' ')} {point.budget_value:g}")
    return {
        "model": point.model, "method": point.method, "budget": budget,
        "fraction_verified": point.counts.fraction_verified,
        "devices_fraction_verified": point.counts.devices_fraction_verified,
        "speedup": point.speedup, "mean_percent": point.mc.mean, "std_percent": point.mc.std,
        "ci95_low_percent": low, "ci95_high_percent": high, "p05_percent": point.mc.p05,
        "yield_fraction": point.mc.chip_yield, "chips": point.mc.samples,
    }


def markdown_rows(rows: Sequence[dict[str, Any]], within: float) -> str:
    """The sweep as a Markdown table (accuracy in percent)."""
    lines = [f"| model | method | budget | weights verified | devices verified | speedup | "
             f"accuracy % | std | 95% CI | p05 | yield (within {within:g}) | chips |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        chip_yield = "-" if r["yield_fraction"] is None else f"{100 * r['yield_fraction']:.0f}%"
        std = "-" if math.isnan(r["std_percent"]) else f"{r['std_percent']:.2f}"
        ci = "-" if math.isnan(r["ci95_low_percent"]) else (
            f"{r['ci95_low_percent']:.2f}-{r['ci95_high_percent']:.2f}")
        lines.append(
            f"| {r['model']} | {r['method']} | {r['budget']} | "
            f"{_percent(r['fraction_verified'])} | {_percent(r['devices_fraction_verified'])} | "
            f"{speedup} | {r['mean_percent']:.2f} | {std} | {ci} | "
            f"{r['p05_percent']:.2f} | {chip_yield} | {r['chips']} |"
        )
    return "\n".join(lines) + "\n"


def search_table(result: SweepResult) -> str:
    """Per model and method: the largest speedup meeting the target (one block per target,
    as merged sweeps may hold several)."""
    searches = [(s, m.full_verify.mc) for m in result.models for s in m.searches]
    blocks = []
    for target in dict.fromkeys(s.target for s, _ in searches):
        lines = [f"Largest modelled speedup per method: {target}", "",
                 "| model | method | speedup | accuracy % | 95% CI | p05 | yield | gap (95% CI) "
                 "| paired estimate % | chips |",
                 "|---|---|---:|---:|---|---:|---:|---|---:|---:|"]
        lines += [_search_row(s, full) for s, full in searches if s.target == target]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def _search_row(s: Search, full_verify: MCResult) -> str:
    if s.point is None:
        return f"| {s.model} | {s.method} | not met even by full verify | | | | | | | |"
    p = s.point
    low, high = p.mc.ci95
    gap = "-" if p.gap is None else (
        f"{p.gap.mean:+.2f} ({p.gap.ci95[0]:+.2f} to {p.gap.ci95[1]:+.2f})")
    chip_yield = "-" if p.mc.chip_yield is None else f"{100 * p.mc.chip_yield:.0f}%"
    return (f"| {s.model} | {s.method} | {p.speedup:.2f}x | {p.mc.mean:.2f} | "
            f"{low:.2f}-{high:.2f} | {p.mc.p05:.2f} | {chip_yield} | {gap} | "
            f"{p.mean_estimate(full_verify):.2f} | {p.mc.samples} |")


def csv_table(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def time_table(result: SweepResult) -> str:
    """Per evaluated plan: the mean accuracy (95 % CI half-width) at every time."""
    rows = [p for m in result.models for p in (m.no_verify, m.full_verify, *m.points)
            if p.over_time]
    if not rows:
        return ""
    times = [mc.meta["time_s"] for mc in rows[0].over_time]
    head = " | ".join(f"at {format_time(t)}" for t in times)
    lines = ["Accuracy % after programming (95% CI half-width), the same chips at every time",
             "", f"| model | method | budget | speedup | {head} |",
             "|---|---|---|---:|" + "---:|" * len(times)]
    for p in rows:
        budget = "-" if p.budget_kind is None else (
            f"{p.budget_kind.replace('_', ' ')} {p.budget_value:g}")
        speedup = "-" if p.speedup is None else f"{p.speedup:.2f}x"
        cells = " | ".join(f"{mc.mean:.2f} (+-{(mc.ci95[1] - mc.ci95[0]) / 2:.2f})"
                           for mc in p.over_time)
        lines.append(f"| {p.model} | {p.method} | {budget} | {speedup} | {cells} |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class MergedReport:
    """Sweeps read back and merged: the result, yields against the best full verify of
    all of them, and its markdown."""

    result: SweepResult
    text: str


def merged_report(paths: Sequence[str | Path]) -> MergedReport:
    """The sweeps written to ``paths`` (sweep.json files) as one, with one clear error
    naming the file that cannot be read or holds a value of the wrong kind."""
    loaded = []
    for path in paths:
        try:
            loaded.append(SweepResult.from_dict(json.loads(Path(path).read_text())))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SwimkitError(f"cannot read {path} ({exc}); give a sweep.json file") from None
        except SwimkitError as exc:
            raise SwimkitError(f"{path}: {exc}") from None
    try:
        result = SweepResult.merge(loaded).with_reference()
        return MergedReport(result, sweep_text(result))
    except SwimkitError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise SwimkitError(f"a result file holds a value of the wrong kind "
                           f"({first_line(exc, with_type=True)}); give sweep.json files as "
                           "swimkit writes them") from None


def sweep_text(result: SweepResult, rows: Sequence[dict[str, Any]] | None = None) -> str:
    """The markdown of a sweep (``rows``: its :func:`sweep_rows`, when already at hand):
    its points, then the searches' answers if any."""
    text = markdown_rows(sweep_rows(result) if rows is None else rows, result.within_points)
    if any(m.searches for m in result.models):
        text += "\n" + search_table(result)
    over_time = time_table(result)
    if over_time:
        text += "\n" + over_time
    return text


def write_sweep_reports(result: SweepResult, out_dir: Path, plot: str | None = None
                        ) -> dict[str, str]:
    """Write sweep.md, sweep.csv and the plot; return their paths."""
    rows = sweep_rows(result)
    files = {
        "table": str(atomic_write_text(sweep_text(result, rows), out_dir / "sweep.md")),
        "csv": str(atomic_write_text(csv_table(rows), out_dir / "sweep.csv")),
    }
    from .plots import plot_over_time, plot_sweep  # matplotlib only where a plot is drawn

    plotted = plot_sweep(result, plot or out_dir / "sweep.png")
    if plotted is not None:
        files["plot"] = str(plotted)
    over_time = plot_over_time(result, Path(files["table"]).with_name("sweep-time.png"))
    if over_time is not None:
        files["plot over time"] = str(over_time)
    return files


def print_sweep(result: SweepResult) -> None:
    for model in result.models:
        print(f"[{model.label}] clean accuracy {model.clean_accuracy_percent:.2f} %", flush=True)
    print(sweep_text(result), end="", flush=True)
    print("written:")
    print("\n".join(file_lines(result.files)))


def registry_tables() -> dict[str, str]:
    """Markdown tables of the registries (the README shows them verbatim)."""
    return {
        "methods": markdown_table(METHODS, {"method": "name", "aliases": "aliases",
                                            "level": "level",
                                            "needs sensitivities": "needs_sensitivity",
                                            "options (defaults)": "option_help",
                                            "what it does": "help"}),
        "engines": markdown_table(ENGINES, {"engine": "name",
                                            "options (defaults)": "option_help",
                                            "what it computes": "help"}),
        "models": markdown_table(MODELS, {"model": "name", "aliases": "aliases",
                                          "data": "dataset", "what it is": "help"}),
        "datasets": markdown_table(DATASETS, {"dataset": "name", "aliases": "aliases",
                                              "what it is": "help"}),
        "device models": markdown_table(DEVICE_MODELS, {"device model": "name",
                                                        "options (defaults)": "option_help",
                                                        "what it models": "help"}),
    }


__all__ = ["MergedReport", "evaluation_lines", "merged_report", "print_run", "print_sweep",
           "registry_tables", "run_lines", "time_table", "write_sweep_reports"]
