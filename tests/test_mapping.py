"""Which weights are on devices and how they are perturbed (swimkit.mapping): tied weights
as one device weight, parameters named with params, and offsets that follow the range."""

from __future__ import annotations

import pytest
import torch
from tied import TiedMLP, tied_model
from torch import nn

import swimkit
from swimkit.errors import SwimkitError
from swimkit.mapping import aliases, device_weights, named_weights, perturbed


def test_a_tied_weight_is_one_device_weight_named_by_its_first_use():
    """One Parameter read by two Linear layers: one DeviceWeight, its other use in
    .shared, in definition order with the untied weights."""
    model = tied_model()
    weights = device_weights(model)
    assert list(weights) == ["a.weight", "head.weight"]
    tied = weights["a.weight"]
    assert [use.name for use in tied.uses] == ["a.weight", "b.weight"]
    assert tied.shared[0].module is model.b and tied.shared[0].value is model.a.weight
    assert weights["head.weight"].shared == ()
    assert aliases(weights) == {"b.weight": "a.weight"}


def test_a_plan_naming_both_uses_of_a_tied_weight_is_refused():
    """A plan that names the two uses of one parameter was made for another model."""
    model = tied_model()
    with pytest.raises(SwimkitError, match="a.weight and b.weight, which are one parameter"):
        named_weights(model, ["a.weight", "b.weight", "head.weight"], "the plan")
    one = named_weights(model, ["a.weight", "head.weight"], "the plan")
    assert [use.name for use in one["a.weight"].uses] == ["a.weight", "b.weight"]


@pytest.mark.parametrize("placement", [{"exclude": ["b"]}, {"exclude": ["a"]},
                                       {"layers": ["a", "head"]}])
def test_a_tied_weight_on_devices_in_one_layer_only_is_refused(placement):
    """A parameter cannot be on devices in one layer and digital in the other: one line,
    from device_weights and from a chip's placement."""
    model = tied_model()
    with pytest.raises(SwimkitError) as err:
        device_weights(model, **placement)
    message = str(err.value)
    assert "\n" not in message and "are one parameter (tied weights)" in message
    assert "exclude both layers or neither" in message
    chip = swimkit.ChipSpec(placement=swimkit.Placement(**placement))
    with pytest.raises(SwimkitError, match="tied weights"):
        chip.weights(model)
    assert list(device_weights(model, exclude=["a", "b"])) == ["head.weight"]


def test_an_offset_on_a_tied_weight_acts_on_both_uses():
    """perturbed() adds one delta to every layer that reads the weight, and leaves the
    parameter as it was."""
    model = tied_model()
    x = torch.randn(4, 6)
    weights = device_weights(model)
    delta = torch.full_like(model.a.weight, 0.1)
    twin = TiedMLP()
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        twin.a.weight += delta
    with perturbed(model, weights, {"a.weight": delta}):
        assert torch.equal(model.a.weight, model.b.weight)
        torch.testing.assert_close(model(x), twin(x), rtol=0, atol=0)
    assert model.b.weight is model.a.weight
    assert not torch.equal(model(x), twin(x))


class _Raw(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Parameter(torch.randn(4, 5))
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(x @ self.proj)


def test_params_naming_only_weights_already_on_devices_is_refused():
    """--map-params (params=) that would add nothing is one line; naming a raw matrix
    adds it."""
    model = _Raw()
    for patterns in (["fc.weight"], ["f*.weight"]):
        with pytest.raises(SwimkitError) as err:
            device_weights(model, params=patterns)
        message = str(err.value)
        assert "\n" not in message and "would have no effect" in message
        assert "fc.weight" in message
    assert list(device_weights(model, params=["proj"])) == ["fc.weight", "proj"]
    with pytest.raises(SwimkitError, match="matches no parameter"):
        device_weights(model, params=["nothing*"])
    with pytest.raises(SwimkitError, match="only weight matrices"):
        device_weights(model, params=["fc.bias", "proj"])


def test_scale_aware_noise_has_the_same_value_and_the_gradient_of_the_range() -> None:
    """delta * max|w| / s equals delta at w, and passes d(max|w|) to the largest weight."""
    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, -2.0, 1.0], [0.1, 0.2, -0.3]]))
    weights = swimkit.device_weights(model)
    delta = {"0.weight": torch.tensor([[0.1, 0.2, -0.1], [0.3, -0.2, 0.1]])}
    scale = {"0.weight": torch.tensor(2.0)}
    x = torch.ones(1, 3)
    grads = {}
    for name, scales in (("plain", None), ("aware", scale)):
        model.zero_grad()
        with swimkit.perturbed(model, weights) as offsets:
            offsets.set(delta, scales)
            out = model(x).sum()
            value = out.item()
            out.backward()
        grads[name] = model[0].weight.grad.clone()
        if name == "plain":
            plain_value = value
    assert value == pytest.approx(plain_value)
    extra = grads["aware"] - grads["plain"]
    # only the largest |w| (-2.0 at [0, 1]) gets d/dw of delta * |w| / 2: -sum(delta) / 2
    expected = torch.zeros(2, 3)
    expected[0, 1] = -float(delta["0.weight"].sum()) / 2.0
    torch.testing.assert_close(extra, expected)
