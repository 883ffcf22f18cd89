"""Plots of a sweep: written in the format their suffix names, atomically; the plot over
time only where chips were read at several times."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import swimkit
from swimkit.montecarlo import MCResult
from swimkit.plots import plot_over_time, plot_sweep
from swimkit.results import SweepResult

pytest.importorskip("matplotlib")

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "sweep-0.2.0"
MAGIC = {".png": b"\x89PNG", ".pdf": b"%PDF", ".svg": b"<?xml"}


def sweep() -> SweepResult:
    return SweepResult.from_dict(json.loads((FIXTURES / "sweep.json").read_text()))


@pytest.mark.parametrize("suffix", list(MAGIC))
def test_a_sweep_plot_is_written_in_the_format_of_its_suffix(suffix, tmp_path):
    """plot_sweep writes a PNG, a PDF or an SVG as the path says, and nothing else."""
    written = plot_sweep(sweep(), tmp_path / f"sweep{suffix}")
    assert written == tmp_path / f"sweep{suffix}"
    assert written.read_bytes().startswith(MAGIC[suffix])
    assert [p.name for p in tmp_path.iterdir()] == [written.name]  # no temporary left


def test_the_plot_over_time_needs_times(tmp_path):
    """Without times there is no plot over time; with a point read at two times there is."""
    result = sweep()
    assert plot_over_time(result, tmp_path / "t.png") is None
    model = result.models[0]
    times = [MCResult(torch.tensor([80.0, 82.0]), meta={"time_s": t}) for t in (1.0, 3600.0)]
    timed = dataclasses.replace(model, no_verify=dataclasses.replace(model.no_verify,
                                                                     over_time=times))
    written = plot_over_time(dataclasses.replace(result, models=[timed]), tmp_path / "t.png")
    assert written is not None and written.read_bytes().startswith(MAGIC[".png"])


def test_a_plot_that_cannot_be_written_is_one_error(tmp_path):
    """An unwritable place is a SwimkitError naming the file, not matplotlib's."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(swimkit.SwimkitError, match="could not write .*sweep.png"):
        plot_sweep(sweep(), blocker / "sweep.png")
