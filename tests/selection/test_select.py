"""select, score and cut: the reference's verified set, exact counts, one global
threshold, the chip's placement, tied weights, and what a method's scores must be."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from plan_problems import T_P, lenet_problem
from torch import nn
from toys import toy_problem

import swimkit
from swimkit import ChipSpec, Placement
from swimkit.selection import METHODS, cut, score

#: Every registered weight-level method (an entry added later is covered too).
WEIGHT_LEVEL = [m.name for m in METHODS if m.planner is None]


@pytest.fixture(scope="module")
def lenet_and_sens(reference):
    return lenet_problem(reference)


def test_reference_verified_set_is_reproduced(lenet_and_sens, reference):
    """SWIM at the reference's fraction verifies the reference's weights, scored alike."""
    model, sens = lenet_and_sens
    plan = swimkit.select(model, sens, fraction=reference["mask_p"], method="swim")
    for name, mask in reference["verified"].items():
        assert torch.equal(plan.masks[name], mask), name
    for name, score_ in reference["score"].items():
        w_hat = model.get_parameter(name).detach() / sens.scale[name]
        ours = 1e6 * sens.combined[name].abs() + w_hat.abs()
        torch.testing.assert_close(ours, score_, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("method", WEIGHT_LEVEL)
@pytest.mark.parametrize("fraction", [0.0, 0.013, 0.1, 0.5, 1.0])
def test_exact_count_for_every_method(lenet_and_sens, method, fraction):
    """A fraction verifies exactly that share of every device weight, as bool masks."""
    model, sens = lenet_and_sens
    plan = swimkit.select(model, sens, fraction=fraction, method=method)
    assert plan.weights_total == sum(p.numel() for n, p in model.named_parameters()
                                     if n.endswith("weight"))
    assert plan.weights_verified == round(fraction * plan.weights_total)
    assert all(m.dtype == torch.bool for m in plan.masks.values())


def test_global_threshold_not_per_layer(lenet_and_sens):
    """Every verified weight scores at least as high as every unverified one."""
    model, sens = lenet_and_sens
    plan = swimkit.select(model, sens, fraction=0.05, method="magnitude")
    scores = {k: model.get_parameter(k).detach().abs() / sens.scale[k] for k in plan.masks}
    lowest_in = min(float(scores[k][m].min()) for k, m in plan.masks.items() if m.any())
    highest_out = max(float(scores[k][~m].max()) for k, m in plan.masks.items() if (~m).any())
    assert lowest_in >= highest_out
    per_layer = plan.per_layer()
    assert len({round(v["fraction_verified"], 3) for v in per_layer.values()}) > 1


@pytest.mark.parametrize(
    "kwargs,needle",
    [({"fraction": 1.5}, "between 0 and 1"), ({"fraction": -0.1}, "between 0 and 1"),
     ({"fraction": 0.1, "method": "best"}, "unknown selection method"),
     ({"fraction": 0.1, "speedup": 2.0}, "give one budget, not fraction and speedup"),
     ({"speedup": 2.0, "time_budget": 1.0}, "give one budget, not speedup and time_budget"),
     ({"method": None}, "give the method"),
     ({"device_model": swimkit.GaussianDevice()}, "no setting 'device_model'.*chip="),
     ({"exclude": ["conv1"]}, "no setting 'exclude'.*Placement")],
)
def test_bad_requests(lenet_and_sens, kwargs, needle):
    """Bad values, two budgets, no method and the keywords of earlier releases are one
    error that says what to give instead."""
    model, sens = lenet_and_sens
    with pytest.raises(swimkit.SwimkitError, match=needle):
        swimkit.select(model, sens, **kwargs)


def test_without_a_budget_the_default_fraction_is_verified(lenet_and_sens):
    """No budget given: the default fraction of the weights, recorded as asked for."""
    model, sens = lenet_and_sens
    plan = swimkit.select(model, sens)
    fraction = swimkit.selection.DEFAULT_FRACTION
    assert plan.weights_verified == round(fraction * plan.weights_total)
    assert plan.requested == {"fraction": fraction} and plan.method == "swim"


def test_sensitivity_needed_for_swim(lenet_and_sens):
    model, _ = lenet_and_sens
    with pytest.raises(swimkit.SwimkitError, match="sensitivit"):
        swimkit.select(model, None, fraction=0.1, method="swim")


def test_the_chips_placement_keeps_layers_out_of_the_plan(lenet_and_sens):
    """Excluded layers are not in the plan; sensitivities of other layers are refused."""
    model, sens = lenet_and_sens
    chip = ChipSpec(placement=Placement(exclude=("conv1", "fc3")))
    plan = swimkit.select(model, sens, fraction=0.1, method="magnitude", chip=chip)
    assert set(plan.masks) == {"conv2.weight", "fc1.weight", "fc2.weight"}
    assert plan.weights_verified == round(0.1 * plan.weights_total)
    assert plan.chip["placement"] == {"exclude": ["conv1", "fc3"]}
    partial = swimkit.sensitivity(model, [(torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))],
                                  chip=ChipSpec(placement=Placement(exclude=("fc3",))))
    with pytest.raises(swimkit.SwimkitError, match="same layers"):
        swimkit.select(model, partial, fraction=0.1,
                       chip=ChipSpec(placement=Placement(exclude=("conv1",))))


def test_scores_cut_at_many_budgets_match_select(lenet_and_sens):
    """One scoring cut at several budgets gives select's plans, priced."""
    model, sens = lenet_and_sens
    scores = score(model, sens, method="swim")
    for fraction in (0.01, 0.2):
        a = cut(scores, fraction)
        b = swimkit.select(model, sens, fraction=fraction)
        assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
        assert a.programming is not None and a.programming.speedup > 1
    with pytest.raises(swimkit.SwimkitError, match="no per-weight score"):
        score(model, sens, method="allocate")


def test_plan_time_on_a_device_that_stays_as_programmed_is_refused():
    """plan_time reads the device later: on the Gaussian model it would do nothing."""
    model, batches = toy_problem()
    sens = swimkit.sensitivity(model, batches)
    with pytest.raises(swimkit.SwimkitError, match="plan_time 3600 s would have no effect.*"
                                                   "'gaussian'"):
        swimkit.select(model, sens, method="allocate", speedup=3.0, plan_time=3600.0)
    pcm = swimkit.build_device_model("pcm")
    plan = swimkit.select(model, sens, method="allocate", speedup=3.0, plan_time=3600.0,
                          chip=pcm)
    assert plan.meta["plan_time_s"] == 3600.0


# --- tied weights: one parameter, one device weight ---------------------------------------


class Tied(nn.Module):
    """Two linear layers reading one weight, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(6, 6)
        self.second = nn.Linear(6, 6)
        self.second.weight = self.first.weight
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.second(torch.relu(self.first(x)))))


def test_a_tied_weight_is_planned_and_priced_once():
    """A parameter two layers use is one device weight: in the plan once, its devices
    counted and priced once."""
    torch.manual_seed(0)
    model = Tied()
    weights = swimkit.device_weights(model)
    assert list(weights) == ["first.weight", "head.weight"]
    assert [use.name for use in weights["first.weight"].shared] == ["second.weight"]
    plan = swimkit.select(model, None, method="magnitude", fraction=0.5)
    assert plan.names == ["first.weight", "head.weight"]
    assert plan.weights_total == 36 + 18 and plan.devices_total == (36 + 18) * 8
    report = plan.programming
    assert report.time_no_verify_s == pytest.approx(plan.devices_total * T_P, rel=1e-12)


# --- what a score method returns and may touch -------------------------------------------


@pytest.mark.parametrize("returned,needle", [
    (None, "returned NoneType"), ([1, 2], "returned list"),
    ({"0.weight": "x"}, "a str as the score"),
    ({"0.weight": torch.zeros(2, dtype=torch.bool)}, "torch.bool score"),
    ({"0.weight": torch.zeros(2, dtype=torch.complex64)}, "complex64 score"),
    ("nan", "NaN or infinite"),
])
def test_score_results_are_checked(returned, needle):
    """What a registered score returns is checked before it is cut, with one message."""
    model, _ = toy_problem()

    def method(inputs):
        if returned == "nan":
            return {k: torch.full_like(v, math.nan) for k, v in inputs.values.items()}
        return returned

    swimkit.register_method("odd", method, needs_sensitivity=False, replace=True)
    try:
        with pytest.raises(swimkit.SwimkitError, match=needle):
            swimkit.select(model, None, fraction=0.1, method="odd")
    finally:
        METHODS.remove("odd")


def test_a_score_cannot_write_the_model():
    """A method is given copies: zeroing what it sees leaves the model as it was."""
    model, _ = toy_problem()
    before = copy.deepcopy(model.state_dict())

    def vandal(inputs):
        for v in inputs.values.values():
            v.zero_()
        return {k: v.abs() for k, v in inputs.normalised.items()}

    swimkit.register_method("vandal", vandal, needs_sensitivity=False)
    try:
        swimkit.select(model, None, fraction=0.1, method="vandal")
    finally:
        METHODS.remove("vandal")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
