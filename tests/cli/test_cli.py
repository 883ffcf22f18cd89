"""The command line's entry points and its errors: any mistake is one line on stderr and
exit status 2; Ctrl-C while starting is one line too."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import swimkit


@pytest.mark.parametrize(
    "args,needle",
    [
        (["run", "--fraction", "1.5"], "fraction"),
        (["run", "--sigma", "-0.2"], "--sigma"),
        (["run", "--model", "alexnet"], "unknown model"),
        (["run", "--dataset", "imagenet"], "unknown dataset"),
        (["run", "--method", "best"], "unknown method"),
        (["run", "--samples", "0"], "samples"),
        (["run", "--variation", "wobbly"], "variation"),
        (["evaluate", "--dataset", "fashion-mnist"], "--checkpoint"),
        (["run", "--sigma-verified", "0.5"], "residual sigma"),
        (["run", "--t-program", "0", "--t-read", "0"], "no time"),
        (["run", "--speedup", "inf"], "expected a speedup >= 1"),
        (["run", "--speedup", "0.5"], "expected a speedup >= 1"),
        (["sweep", "--methods", ","], "expected a comma-separated list"),
        (["sweep", "--speedups", " , "], "expected a comma-separated list"),
        (["train", "--epochs", "0"], "--checkpoint instead"),
        (["run", "--epochs", "0"], "--checkpoint instead"),
        (["sweep", "--plot", "plot.xyz"], "--plot"),
        (["run", "--device", "abacus"], "unknown device"),
        (["run", "--device", "meta"], "cannot run swimkit"),
        (["run", "--device", "mps"], "has no Apple GPU"),
        (["run", "--device", "xpu"], "has no Intel GPU"),
        (["sweep", "--yield", "0.9"], "--within"),
        # learned learns under a time budget (the wording of 0.2 was "not fractions")
        (["sweep", "--methods", "learned", "--fractions", "0.1"], "not a fraction"),
        (["run", "--method", "allocate", "--tolerances", "0.2,-1"], "expected a number"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle, fmnist, tmp_path, cli):
    """Each bad value or combination is one line naming it, exit 2, no traceback."""
    with_out = args[0] in ("run", "sweep")
    code, _, err = cli(*args, "--no-progress", *(["--out", tmp_path / "x"] if with_out else []))
    assert code == 2
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err, err


def test_missing_data_says_how_to_get_it(fmnist, tmp_path, cli):
    """A data set that is not there names how to get it, in one line."""
    code, _, err = cli("run", "--dataset", "fashion-mnist", "--data-dir", tmp_path / "empty",
                       "--out", tmp_path / "o", "--no-progress")
    assert code == 2
    assert err.count("\n") == 1 and "apt-get install dataset-fashion-mnist" in err


def test_checkpoint_that_does_not_fit(fmnist, tmp_path, cli):
    """A checkpoint whose weights are not the model it claims: one line, "does not fit"."""
    path = tmp_path / "convnet.pt"
    swimkit.checkpoints.save_checkpoint(path, swimkit.build_model("convnet"),
                                        model_name="convnet")
    state = torch.load(path, weights_only=True)
    state["model_name"] = "lenet"
    torch.save(state, path)
    code, _, err = cli("evaluate", "--model", "lenet", "--checkpoint", path, "--dataset",
                       "fashion-mnist", "--data-dir", fmnist)
    assert code == 2 and err.count("\n") == 1 and "does not fit" in err


@pytest.mark.slow
def test_console_script_and_module_entry_point():
    """python -m swimkit answers --version, and a bad flag there is one line, exit 2."""
    done = subprocess.run([sys.executable, "-m", "swimkit", "--version"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0 and "swimkit" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "swimkit", "run", "--mask_p", "2"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_ctrl_c_while_starting_is_one_line(monkeypatch, capsys):
    """Ctrl-C while the command line is still importing: one line, exit 130."""
    import importlib.abc

    import swimkit_launcher

    class Interrupted(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "swimkit.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "swimkit.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupted(), *sys.meta_path])
    assert swimkit_launcher.main() == 130
    assert capsys.readouterr().err == "swimkit: interrupted while starting; nothing was written\n"
