"""Files of the right kind with missing or wrong fields, and models without values: each a
SwimkitError naming the problem, never a raw exception."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import swimkit
from swimkit.checkpoints import load_checkpoint, save_checkpoint


@pytest.fixture()
def checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, swimkit.build_model("lenet"), model_name="lenet")
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("state", ["drop", [1, 2], {"conv1.weight": "x"}])
def test_checkpoint_without_a_state_dict_of_tensors(tmp_path, checkpoint, state):
    if state == "drop":
        checkpoint.pop("state_dict")
    else:
        checkpoint["state_dict"] = state
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(swimkit.SwimkitError, match="holds no state_dict of tensors"):
        load_checkpoint(tmp_path / "bad.pt")


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
def test_plan_with_missing_or_wrong_fields(tmp_path, saved_plan, damage, needle):
    damage(saved_plan)
    torch.save(saved_plan, tmp_path / "bad.pt")
    with pytest.raises(swimkit.SwimkitError, match=needle):
        swimkit.Plan.load(tmp_path / "bad.pt")


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
    batches = [(torch.randn(2, 4), torch.zeros(2, dtype=torch.long))]
    with pytest.raises(swimkit.SwimkitError, match=needle):
        swimkit.evaluate(model, batches, swimkit.DeviceModel(), samples=1)
    with pytest.raises(swimkit.SwimkitError, match=needle):
        swimkit.sensitivity(model, batches)
