"""One sensitivity pass (swimkit.sensitivity.estimate): the settings group with keyword
overrides, SWIM's units, and one line for an engine or a model that returns nonsense."""

from __future__ import annotations

import pytest
import torch
from toys import toy_problem

import swimkit
from swimkit.chip import ChipSpec, Placement
from swimkit.sensitivity import ENGINES, SensitivitySettings, register_engine


def test_settings_and_keyword_overrides_act_on_a_copy():
    """sensitivity(model, batches, settings, engine=...) runs the override; a name alone
    is the engine; the settings given stay as they were."""
    model, batches = toy_problem()
    settings = SensitivitySettings(engine="ggn")
    fisher = swimkit.sensitivity(model, batches, settings, engine="fisher")
    assert fisher.engine == "fisher" and settings.engine == "ggn"
    by_name = swimkit.sensitivity(model, batches, "fisher")
    for key in fisher.names:
        assert torch.equal(fisher.second[key], by_name.second[key])
    probes = swimkit.sensitivity(model, batches, "hutchinson", options={"probes": 2})
    assert probes.meta["options"]["probes"] == 2


@pytest.mark.parametrize(("keyword", "needle"), [
    ("probes", "its settings (SensitivitySettings) are batch_size, engine, limit, options"),
    ("params", "placement=Placement(params"),
    ("exclude", "placement=Placement(exclude"),
    ("device_model", "chip="),
])
def test_a_keyword_that_is_no_setting_is_one_line(keyword: str, needle: str):
    """A keyword sensitivity() does not take is refused by name, pointing to its place."""
    model, batches = toy_problem()
    with pytest.raises(swimkit.SwimkitError) as err:
        swimkit.sensitivity(model, batches, **{keyword: 1})
    message = str(err.value)
    assert "\n" not in message and f"sensitivity() has no setting '{keyword}'" in message
    assert needle in message


def test_the_chips_placement_says_which_weights_have_sensitivities():
    """Only the chip's device weights get sensitivities, the same as on the whole model."""
    model, batches = toy_problem()
    whole = swimkit.sensitivity(model, batches, "ggn")
    part = swimkit.sensitivity(model, batches, "ggn",
                               chip=ChipSpec(placement=Placement(exclude=["0"])))
    assert whole.names == ["0.weight", "2.weight"] and part.names == ["2.weight"]
    assert torch.equal(part.second["2.weight"], whole.second["2.weight"])


@pytest.mark.parametrize(("returned", "needle"), [
    (None, "engine 'nonsense' returned NoneType, not (second, first, samples)"),
    (({}, {}, 3), "gave NoneType as the second derivative of 0.weight"),
    ("shapes", "gave (2,) as the second derivative of 0.weight, not a tensor shaped (32, 8)"),
    ("samples", "returned -1 as its sample count"),
    ("first", "returned list as its first derivatives"),
])
def test_an_engine_returning_nonsense_is_named(returned, needle):
    """What an engine from outside returns is checked: one line naming the engine and
    what is wrong."""
    model, batches = toy_problem()

    def nonsense(model, weights, batches, progress=False):
        right = {k: torch.zeros_like(w.value) for k, w in weights.items()}
        if returned == "shapes":
            return {k: torch.zeros(2) for k in weights}, right, 3
        if returned == "samples":
            return right, right, -1
        if returned == "first":
            return right, [], 3
        return returned

    register_engine("nonsense", nonsense, help="a test's toy")
    try:
        with pytest.raises(swimkit.SwimkitError) as err:
            swimkit.sensitivity(model, batches, "nonsense")
        assert "\n" not in str(err.value) and needle in str(err.value)
    finally:
        ENGINES.remove("nonsense")


class TupleOut(torch.nn.Module):
    """A model returning (logits, input): not one tensor of logits."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(x), x


@pytest.mark.parametrize("engine", ENGINES.names())
def test_a_model_returning_a_tuple_gets_one_message_everywhere(engine):
    """Every engine, and the Monte-Carlo evaluation, say the same one thing about a
    model that returns a tuple."""
    _, batches = toy_problem()
    model = TupleOut()
    with pytest.raises(swimkit.SwimkitError, match="returns a tuple, not one tensor of logits"):
        swimkit.sensitivity(model, batches, engine)
    with pytest.raises(swimkit.SwimkitError, match="returns a tuple"):
        swimkit.evaluate(model, batches, swimkit.GaussianDevice(), samples=2)
