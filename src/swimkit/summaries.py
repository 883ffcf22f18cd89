"""One-line summaries of results and settings, for the printed reports and the plots'
titles alike: a Monte-Carlo result, a duration, a time after programming, a device model,
a crossbar, a set of chips."""

from __future__ import annotations

import math
from typing import Any

from .chipstats import MCResult


def format_mc(mc: MCResult) -> str:
    """'mean +- std % (95% CI low-high), p05, yield' of a Monte-Carlo result."""
    if mc.samples < 2:
        return f"{mc.mean:6.2f} %  (one chip: no spread, no CI)"
    low, high = mc.ci95
    text = f"{mc.mean:6.2f} +- {mc.std:5.2f} %  (95% CI {low:.2f}-{high:.2f}, p05 {mc.p05:.2f}"
    if mc.chip_yield is not None:
        text += f", yield {100 * mc.chip_yield:.0f} %"
    text += f", {mc.samples} chips"
    if mc.ci_stop is not None:
        text += f" to {mc.ci_stop}"
    return text + ")"


def seconds(value: float) -> str:
    for unit, factor in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {unit}"
    return f"{value:.3g} s"


def format_time(value: float) -> str:
    """Seconds after programming as the largest unit that divides them: 1 s, 1 h, 1 d, 1 y."""
    for unit, size in (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("min", 60)):
        if value >= size and math.isclose(value / size, round(value / size, 2)):
            return f"{value / size:g} {unit}"
    return f"{value:g} s"


def device_summary(described: dict[str, Any]) -> str:
    """'sigma 0.3, sigma_verified 0.03' and the model's kind when it is not gaussian."""
    base = described.get("base", described)
    text = f"sigma {base.get('sigma')}, sigma_verified {base.get('sigma_verified')}"
    kind = described.get("kind", "gaussian")
    if kind == "stuck":
        text = (f"{base.get('kind')} + stuck {described['low']:g} low / "
                f"{described['high']:g} high, " + text)
    elif kind != "gaussian":
        text = f"{kind}, " + text
    crossbar = described.get("crossbar")
    return text if not crossbar else f"{text}; {crossbar_summary(crossbar)}"


def crossbar_summary(crossbar: dict[str, Any]) -> str:
    """'256x256 tiles, column ranges, pairs, DAC 8 / ADC 8 bits' of a crossbar's settings."""
    parts = []
    if crossbar.get("tile_rows"):
        parts.append(f"{crossbar['tile_rows']}x{crossbar['tile_columns']} tiles")
    parts.append(f"{crossbar.get('ranges', 'layer')} ranges")
    parts.append({"pair": "pairs", "offset": "offset"}.get(crossbar.get("signed"), "magnitude"))
    converters = [f"{name} {crossbar[key]}" for name, key in (("DAC", "dac_bits"),
                                                              ("ADC", "adc_bits"))
                  if crossbar.get(key)]
    if converters:
        parts.append(" / ".join(converters) + " bits")
    if crossbar.get("output_noise"):
        parts.append(f"output noise {crossbar['output_noise']:g}")
    return ", ".join(parts)


def chips_summary(evaluation: dict[str, Any]) -> str:
    """'100 Monte-Carlo chips' or 'up to 100 ..., until the 95% CI is +-0.5 points'."""
    if evaluation.get("ci_target"):
        return (f"up to {evaluation['samples']} Monte-Carlo chips, until the 95% CI is +-"
                f"{evaluation['ci_target']:g} points")
    return f"{evaluation['samples']} Monte-Carlo chips"


__all__ = ["chips_summary", "crossbar_summary", "device_summary", "format_mc", "format_time",
           "seconds"]
