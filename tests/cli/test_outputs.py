"""What a command will write is checked before any work: an output never overwrites an
input or another output, and a file that cannot be written is said before training."""

from __future__ import annotations

import pytest


def test_an_output_that_is_an_input_is_refused_before_work(tmp_path, cli):
    """report's table over its input, a result given twice, select's plan and summary
    as one file, a summary of another kind: one line each, nothing written."""
    sweep = tmp_path / "a.json"
    sweep.write_text("{}")
    code, _, err = cli("report", sweep, "--table", sweep)
    assert code == 2 and "would overwrite the input" in err
    assert sweep.read_text() == "{}"
    code, _, err = cli("report", sweep, sweep)
    assert code == 2 and "given twice" in err
    code, _, err = cli("select", "--checkpoint", tmp_path / "c.pt", "-o", tmp_path / "p.json",
                       "--summary", tmp_path / "p.json")
    assert code == 2 and "are the same file" in err
    code, _, err = cli("select", "--checkpoint", tmp_path / "c.pt", "-o", tmp_path / "p.pt",
                       "--summary", tmp_path / "a.txt")
    assert code == 2 and "--summary must end in .json or .csv" in err
    assert not (tmp_path / "p.pt").exists()


def test_a_configuration_file_is_an_input(tmp_path, cli):
    """--config names a file read: an output over it is refused like any input's."""
    config = tmp_path / "study.toml"
    config.write_text('results = ["a.json"]\n')
    code, _, err = cli("report", "--config", config, "--table", config)
    assert code == 2 and "would overwrite the input --config" in err
    assert config.read_text() == 'results = ["a.json"]\n'


@pytest.mark.parametrize("extra,needle", [(["--exclude", "conv9"], "matches no"),
                                          (["--json", "/proc/x/r.json"], "--json /proc/x"),
                                          (["--plot", "/proc/x/p.png"], "--plot /proc/x")])
def test_options_are_checked_before_training(flow_args, tmp_path, cli, extra, needle):
    """An --exclude that matches no layer and outputs that cannot be written: one line
    before any training."""
    out = tmp_path / "early"
    code, _, err = cli("sweep", "--model", "lenet", *flow_args(out), "--fractions", "0.1",
                       "--methods", "magnitude", *extra)
    assert code == 2 and needle in err and err.count("\n") == 1
    assert not (out / "train").exists()


def test_a_result_runs_again_in_its_own_folder(tmp_path):
    """A sweep's result given as --config may be written again by its run in the same
    --out (it is read whole before any work); any other output over it is refused."""
    import argparse

    from swimkit.commands import check_paths
    from swimkit.errors import SwimkitError

    result = tmp_path / "sweep.json"
    args = argparse.Namespace(command="sweep", config=str(result), json=None, plot=None)
    check_paths(args, tmp_path)
    with pytest.raises(SwimkitError, match="would overwrite the input --config"):
        check_paths(argparse.Namespace(command="sweep", config=str(result), json=str(result),
                                       plot=None), tmp_path / "elsewhere")
