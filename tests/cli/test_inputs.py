"""Files and models a command or a step is given, damaged or incomplete: each a
SwimkitError naming the problem (on the command line: one line naming the option),
never a raw exception."""

from __future__ import annotations

import os
import pickle
import re

import pytest
import torch
from torch import nn

import swimkit
from swimkit.checkpoints import load_checkpoint, save_checkpoint


def test_damaged_files_are_one_line_errors_that_name_options(tmp_path, cli):
    """Random bytes for a CSV, text for a checkpoint, a checkpoint of pickled objects:
    one line each, saying what to give (--trusted for the last), never trusted=True."""
    (tmp_path / "rand.csv").write_bytes(os.urandom(300) + b"\xff\xfe")
    (tmp_path / "text.pt").write_text("hello")
    torch.save({"model": object()}, tmp_path / "objects.pt", pickle_module=pickle)
    cases = [(["run", "--variation", tmp_path / "rand.csv"], "is not a text CSV file"),
             (["evaluate", "--checkpoint", tmp_path / "text.pt"],
              "is not a PyTorch checkpoint; give the file that training wrote"),
             (["evaluate", "--checkpoint", tmp_path / "objects.pt"], "add --trusted")]
    for args, needle in cases:
        code, _, err = cli(*args, "--no-progress")
        assert code == 2 and needle in err and err.count("\n") == 1, err
        assert "trusted=True" not in err


@pytest.fixture()
def checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, swimkit.build_model("lenet"), model_name="lenet")
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("state", ["drop", [1, 2], {"conv1.weight": "x"}])
def test_checkpoint_without_a_state_dict_of_tensors(tmp_path, checkpoint, state, cli):
    """A checkpoint without its state_dict of tensors is named so, by the API and by
    the command line (one line)."""
    if state == "drop":
        checkpoint.pop("state_dict")
    else:
        checkpoint["state_dict"] = state
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(swimkit.SwimkitError, match="holds no state_dict of tensors"):
        load_checkpoint(tmp_path / "bad.pt")
    code, _, err = cli("evaluate", "--checkpoint", tmp_path / "bad.pt", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "holds no state_dict of tensors" in err


@pytest.fixture()
def saved_plan(tmp_path):
    model = swimkit.build_model("lenet")
    masks = {n: torch.ones_like(model.get_parameter(n), dtype=torch.bool)
             for n in swimkit.device_weights(model)}
    swimkit.Plan(masks=masks).save(tmp_path / "plan.pt")
    return torch.load(tmp_path / "plan.pt", weights_only=True)


@pytest.mark.parametrize("damage,needle", [
    (lambda d: d.pop("masks"), "not a complete write-verify plan .no 'masks'"),
    (lambda d: d.update(masks=[1]), "damaged write-verify plan"),
    (lambda d: d.update(masks={k: v.float() for k, v in d["masks"].items()}),
     "must be a bool tensor"),
    (lambda d: d.update(programming={"speed": 2.0}), "programming report .unknown field 'speed'"),
])
def test_plan_with_missing_or_wrong_fields(tmp_path, saved_plan, damage, needle, cli):
    """A plan file with a field missing or of the wrong kind names the field, by the API
    and by `evaluate --plan` (one line, before any data is read)."""
    damage(saved_plan)
    torch.save(saved_plan, tmp_path / "bad.pt")
    with pytest.raises(swimkit.SwimkitError, match=needle):
        swimkit.Plan.load(tmp_path / "bad.pt")
    save_checkpoint(tmp_path / "model.pt", swimkit.build_model("lenet"), model_name="lenet")
    code, _, err = cli("evaluate", "--checkpoint", tmp_path / "model.pt", "--plan",
                       tmp_path / "bad.pt", "--data-dir", tmp_path / "no-data")
    assert code == 2 and err.count("\n") == 1 and re.search(needle, err), err
    assert "not found" not in err  # the plan is read before the data


class NoWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.fc.weight = None

    def forward(self, x):
        return x


@pytest.mark.parametrize("model,needle", [
    (NoWeight(), "has no weight"),
    (nn.Sequential(nn.LazyLinear(3)), "lazy layer not initialised"),
    (nn.Sequential(nn.Linear(4, 3)).to("meta"), "meta device"),
])
def test_models_without_weight_values_are_named(model, needle):
    """A layer without a weight, a lazy layer, weights on the meta device: named by
    evaluate and by sensitivity."""
    batches = [(torch.randn(2, 4), torch.zeros(2, dtype=torch.long))]
    with pytest.raises(swimkit.SwimkitError, match=needle):
        swimkit.evaluate(model, batches, swimkit.GaussianDevice(), samples=1)
    with pytest.raises(swimkit.SwimkitError, match=needle):
        swimkit.sensitivity(model, batches)
