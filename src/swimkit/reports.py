"""Human-readable output of runs and sweeps: summary lines, tables and a plot."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .storage import atomic_write_text


def format_mc(point: dict[str, Any]) -> str:
    """'mean +- std % (95% CI low-high)' of a Monte-Carlo result dict."""
    low, high = point["ci95"]
    return f"{point['mean']:6.2f} +- {point['std']:5.2f} %  (95% CI {low:.2f}-{high:.2f})"


def _seconds(value: float) -> str:
    for unit, factor in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {unit}"
    return f"{value:.3g} s"


def run_lines(result: dict[str, Any]) -> list[str]:
    """The summary of a single-point run."""
    s = result["settings"]
    lines = [
        f"model {s['model']} on {s['dataset']}; sigma {s['sigma']}, sigma_verified "
        f"{s['sigma_verified']}, {s['samples']} Monte-Carlo samples (seed {s['seed']})",
        f"clean accuracy       {result['clean_accuracy']:6.2f} %",
        f"no write-verify      {format_mc(result['no_verify'])}",
        f"full write-verify    {format_mc(result['full_verify'])}",
    ]
    for point in result["points"]:
        label = f"{point['method']}, {100 * point['fraction_verified']:.2f}% verified"
        lines.append(f"{label:<20} {format_mc(point)}")
        lines.append(
            f"weights verified     {point['weights_verified']:,} of {point['weights_total']:,}"
        )
        prog = point.get("programming")
        if prog:
            lines.append(
                f"programming time     {_seconds(prog['time_plan'])} (full verify "
                f"{_seconds(prog['time_full_verify'])}): speedup {prog['speedup']:.2f}x"
            )
    lines.append("written:")
    lines.extend(f"  {name:<12} {path}" for name, path in result["files"].items())
    return lines


def print_run(result: dict[str, Any]) -> None:
    print("\n".join(run_lines(result)), flush=True)


COLUMNS = ("method", "budget", "fraction_verified", "speedup", "mean", "std", "ci95_low",
           "ci95_high")


def sweep_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per evaluated point, baselines first."""
    rows = []
    for name in ("no_verify", "full_verify"):
        rows.append(_row(name.replace("_", " "), "-", result[name]))
    for point in result["points"]:
        kind = next(k for k in ("fraction", "speedup", "time_budget") if k in point)
        budget = f"{kind.replace('_', ' ')} {point[kind]:g}"
        rows.append(_row(point["method"], budget, point))
    return rows


def _row(method: str, budget: str, point: dict[str, Any]) -> dict[str, Any]:
    prog = point.get("programming") or {}
    return {
        "method": method,
        "budget": budget,
        "fraction_verified": point.get("fraction_verified"),
        "speedup": prog.get("speedup"),
        "mean": point["mean"],
        "std": point["std"],
        "ci95_low": point["ci95"][0],
        "ci95_high": point["ci95"][1],
    }


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The sweep as a Markdown table (accuracy in percent)."""
    head = "| method | budget | verified | speedup | accuracy % | std | 95% CI |"
    lines = [head, "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        verified = "-" if r["fraction_verified"] is None else f"{100 * r['fraction_verified']:.2f}%"
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        lines.append(
            f"| {r['method']} | {r['budget']} | {verified} | {speedup} | {r['mean']:.2f} | "
            f"{r['std']:.2f} | {r['ci95_low']:.2f}-{r['ci95_high']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def needed_table(result: dict[str, Any]) -> str:
    """Per method: the smallest fraction within the target of full write-verify."""
    needed = result.get("needed")
    if not needed:
        return ""
    target = next(iter(needed.values()))["target"]
    lines = [f"Smallest verified fraction reaching {target:.2f} % (full write-verify "
             f"{result['full_verify']['mean']:.2f} % minus "
             f"{result['settings']['within']:g} points):", "",
             "| method | verified | accuracy % | 95% CI | modelled speedup |",
             "|---|---:|---:|---|---:|"]
    for method, p in needed.items():
        lines.append(f"| {method} | {100 * p['fraction_verified']:.2f}% | {p['mean']:.2f} | "
                     f"{p['ci95'][0]:.2f}-{p['ci95'][1]:.2f} | "
                     f"{p['programming']['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def plot_sweep(result: dict[str, Any], path: str | Path) -> Path | None:
    """Accuracy against verified fraction per method, with 95% CIs; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    methods: dict[str, list[dict]] = {}
    for point in result["points"]:
        methods.setdefault(point["method"], []).append(point)
    for method, points in methods.items():
        points = sorted(points, key=lambda p: p["fraction_verified"])
        xs = [100 * p["fraction_verified"] for p in points]
        ys = [p["mean"] for p in points]
        errs = [[p["mean"] - p["ci95"][0] for p in points], [p["ci95"][1] - p["mean"]
                                                             for p in points]]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=method)
    for name, style in (("full_verify", "--"), ("no_verify", ":")):
        ax.axhline(result[name]["mean"], linestyle=style, color="gray",
                   label=name.replace("_", " "))
    if all(p["fraction_verified"] > 0 for p in result["points"]):
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("weights write-verified (%)")
    ax.set_ylabel("accuracy under variation (%)")
    s = result["settings"]
    ax.set_title(f"{s['model']} / {s['dataset']}, sigma {s['sigma']}")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_sweep_reports(
    result: dict[str, Any], out_dir: Path, plot: str | None = None
) -> dict[str, str]:
    """Write sweep.md, sweep.csv and the plot; return their paths."""
    rows = sweep_rows(result)
    text = markdown_table(rows)
    if result.get("needed"):
        text += "\n" + needed_table(result)
    files = {
        "table": str(atomic_write_text(text, out_dir / "sweep.md")),
        "csv": str(atomic_write_text(csv_table(rows), out_dir / "sweep.csv")),
    }
    plotted = plot_sweep(result, plot or out_dir / "sweep.png")
    if plotted is not None:
        files["plot"] = str(plotted)
    return files


def print_sweep(result: dict[str, Any]) -> None:
    print(f"clean accuracy {result['clean_accuracy']:.2f} %", flush=True)
    print(markdown_table(sweep_rows(result)), end="", flush=True)
    if result.get("needed"):
        print("\n" + needed_table(result), end="", flush=True)
    print("written:")
    for name, path in result["files"].items():
        print(f"  {name:<12} {path}")
