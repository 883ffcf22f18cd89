"""Device models from outside swimkit: what they answer is checked before anything uses
it, and what goes wrong is one error naming the model."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
from plan_problems import toy_with_sensitivity

import swimkit
from swimkit import ChipSpec, Crossbar, GaussianDevice
from swimkit.devices import build_device_model
from swimkit.devices.checked import CheckedDevice, checked
from swimkit.devices.mapped import MappedDevice
from swimkit.programming import ProgrammingReport


class Faulty:
    """The Gaussian model, answering wrongly in one call (``fault``: (call, how))."""

    def __init__(self, call: str = "", how: str = "") -> None:
        self.base = GaussianDevice()
        self.call, self.how = call, how

    def __getattr__(self, name):
        if name in ("base", "call", "how") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def slicing(self):
        return self.base.slicing

    @property
    def sigma(self):
        return self.base.sigma

    @property
    def loop(self):
        return self.base.loop

    @property
    def prices_by_value(self):
        return False

    def default_menu(self):
        return self.base.default_menu()

    def with_sigma(self, sigma):
        return self

    def describe(self):
        return {"kind": "faulty", "call": self.call, "how": self.how}

    def _spoilt(self, call, out):
        """``out`` spoilt as ``how`` says when ``call`` is the faulty one."""
        if call != self.call:
            return out
        if self.how == "raises":
            raise ValueError("the model broke\nsecond line")
        if isinstance(out, dict):
            return {k: self._tensor(v) for k, v in out.items()}
        if isinstance(out, torch.Tensor):
            return self._tensor(out)
        if isinstance(out, tuple):
            return {"negative": (-out[0], out[1]), "nan": (math.nan, out[1])}[self.how]
        if isinstance(out, ProgrammingReport):
            return {"speedup": replace(out, speedup=out.speedup * 2.43),
                    "not a report": out.to_dict()}[self.how]
        return out

    def _tensor(self, value):
        return {"shape": lambda v: torch.zeros(3, dtype=v.dtype),
                "nan": lambda v: torch.full_like(v, math.nan),
                "negative": lambda v: -1.0 - v.abs()}[self.how](value)

    def sampler(self, values, scales, plan=None, times=(0.0,)):
        sample = self._spoilt("sampler", self.base.sampler(values, scales, plan, times))
        if self.call != "draw":
            return sample

        def draw(generator):
            reads = sample(generator)
            if self.how == "raises":
                raise RuntimeError("no chip today")
            return [{k: self._tensor(v) for k, v in read.items()} for read in reads]

        return draw

    def variance(self, values, scales, plan=None, time=0.0):
        return self._spoilt("variance", self.base.variance(values, scales, plan, time))

    def option_variances(self, value, scale, menu, time=0.0):
        return self._spoilt("option_variances",
                            self.base.option_variances(value, scale, menu, time))

    def option_times(self, value, scale, menu):
        return self._spoilt("option_times", self.base.option_times(value, scale, menu))

    def reference_times(self, values, scales):
        return self._spoilt("reference_times", self.base.reference_times(values, scales))

    def programming_report(self, values, scales, plan):
        return self._spoilt("programming_report",
                            self.base.programming_report(values, scales, plan))


@pytest.fixture(scope="module")
def toy():
    return toy_with_sensitivity()


def evaluated(toy, dm):
    model, batches, _ = toy
    return swimkit.evaluate(model, batches, dm, samples=2)


def selected(method, **budget):
    def run(toy, dm):
        model, batches, sens = toy
        return swimkit.select(model, sens, method=method, chip=dm, **budget)

    return run


#: The steps that ask a model: a variance-scored plan, a device-level plan, a weight-level
#: plan under a speedup (reference times, option times, a report), a magnitude plan.
SCORED = selected("variance", fraction=0.1)
ALLOCATED = selected("allocate", speedup=3.0)
SWIM = selected("swim", speedup=3.0)
MAGNITUDE = selected("magnitude", speedup=3.0)


@pytest.mark.parametrize("call,how,step,needle", [
    ("sampler", "raises", evaluated, "failed in sampler\\(\\): ValueError: the model broke"),
    ("draw", "raises", evaluated, "failed drawing a chip: RuntimeError: no chip today"),
    ("draw", "shape", evaluated, "a tensor shaped \\(3,\\) for 0.weight.* from sampler"),
    ("draw", "nan", evaluated, "NaN or infinite numbers for 0.weight from sampler"),
    ("variance", "shape", SCORED, "shaped \\(3,\\) .* variance"),
    ("variance", "nan", SCORED, "NaN or infinite .* variance"),
    ("variance", "negative", SCORED, "negative numbers .* variance"),
    ("variance", "raises", SCORED, "failed in variance\\(\\)"),
    ("option_variances", "shape", ALLOCATED, "a table shaped \\(3,\\) .* option_variances"),
    ("option_variances", "nan", ALLOCATED, "NaN or infinite .* option_variances"),
    ("option_times", "negative", ALLOCATED, "negative numbers .* option_times"),
    ("option_times", "negative", SWIM, "negative .* option_times"),
    ("reference_times", "negative", SWIM, "not two seconds > 0 .* reference_times"),
    ("reference_times", "nan", ALLOCATED, "not two seconds > 0 .* reference_times"),
    ("programming_report", "speedup", SWIM, "speedup .* programming_report"),
    ("programming_report", "not a report", ALLOCATED,
     "a dict, not a swimkit.programming.ProgrammingReport"),
    ("programming_report", "raises", MAGNITUDE, "failed in programming_report\\(\\)"),
])
def test_a_wrong_answer_is_one_error_naming_the_model(toy, call, how, step, needle):
    """Wrong shapes, NaN, negative variances or seconds, a report whose speedup does not
    follow from its times, or an exception: one SwimkitError of one line that names the
    model and the call, with no traceback of the model's own chained to it."""
    with pytest.raises(swimkit.SwimkitError, match=needle) as caught:
        step(toy, Faulty(call, how))
    message = str(caught.value)
    assert "device model 'faulty'" in message and "\n" not in message
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None or caught.value.__suppress_context__


def test_a_model_that_answers_right_gives_the_numbers_of_the_model_it_wraps(toy):
    """Checking changes no number: a faultless outside model plans and evaluates as the
    Gaussian model it answers for."""
    model, batches, sens = toy
    outside, own = Faulty(), GaussianDevice()
    assert isinstance(ChipSpec(outside).device, CheckedDevice)
    for method in ("swim", "allocate"):
        a = swimkit.select(model, sens, method=method, speedup=3.0, chip=outside)
        b = swimkit.select(model, sens, method=method, speedup=3.0, chip=own)
        assert all(torch.equal(a.levels[k], b.levels[k]) for k in a.levels)
        assert a.programming == b.programming
    assert torch.equal(swimkit.evaluate(model, batches, outside, samples=3).accuracies,
                       swimkit.evaluate(model, batches, own, samples=3).accuracies)


def test_swimkits_own_models_are_not_wrapped():
    """Only outside code is checked: swimkit's models are used as they are, on any
    crossbar, and a checked model is not checked twice."""
    for dm in (GaussianDevice(), build_device_model("pcm"), build_device_model("stuck")):
        assert ChipSpec(dm).device is dm and checked(dm) is dm
        mapped = ChipSpec(dm, crossbar=Crossbar(signed="pair")).device
        assert isinstance(mapped, MappedDevice) and mapped.base is dm
    wrapped = checked(Faulty())
    assert checked(wrapped) is wrapped
    mapped = ChipSpec(Faulty(), crossbar=Crossbar(signed="pair")).device
    assert isinstance(mapped.base, CheckedDevice)


# --- a device model written here: the NoiseModel protocol is all swimkit asks ----------


class StuckAt:
    """Two-state device: a weight is stuck at zero with probability ``p`` (``p_verified``
    where a plan verifies any of its devices), else exact."""

    slicing = swimkit.slicing.BitSlicing(8, 1)

    def __init__(self, p: float, p_verified: float = 0.0) -> None:
        self.p, self.p_verified = p, p_verified

    def with_sigma(self, sigma):
        return StuckAt(sigma, self.p_verified)

    def _p(self, values, plan):
        masks = plan.masks if plan is not None else {}
        return {k: torch.where(masks[k], self.p_verified, self.p) if k in masks
                else torch.full_like(v, self.p) for k, v in values.items()}

    def sampler(self, values, scales, plan=None, times=(0.0,)):
        probability = self._p(values, plan)

        def draw(generator):
            chip = {k: -v * (torch.rand(v.shape, generator=generator) < probability[k])
                    for k, v in values.items()}
            return [chip] * len(times)

        return draw

    def variance(self, values, scales, plan=None, time=0.0):
        p = self._p(values, plan)
        return {k: p[k] * (1 - p[k]) * (v / scales[k]) ** 2 for k, v in values.items()}

    def describe(self):
        return {"kind": "stuck-at", "p": self.p, "p_verified": self.p_verified}


def test_a_device_model_from_outside_works_in_evaluate_and_select(toy):
    """A model that only draws chips evaluates and selects at a fraction; budgets in
    time need one that prices programming."""
    model, batches, sens = toy
    clean = swimkit.accuracy(model, batches)
    never = swimkit.evaluate(model, batches, StuckAt(0.0), samples=3)
    assert never.accuracies.tolist() == [clean] * 3
    always = swimkit.evaluate(model, batches, StuckAt(1.0), samples=2)
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed[0].weight.zero_()
        zeroed[2].weight.zero_()
    assert always.accuracies.tolist() == [swimkit.accuracy(zeroed, batches)] * 2
    noisy = StuckAt(0.3, p_verified=0.0)
    plan = swimkit.select(model, sens, fraction=0.5, method="variance", chip=noisy)
    assert plan.programming is None  # a stuck-at model prices no programming time
    protected = swimkit.evaluate(model, batches, noisy, plan, samples=20, seed=1)
    exposed = swimkit.evaluate(model, batches, noisy, samples=20, seed=1)
    assert protected.mean > exposed.mean
    for method in ("variance", "allocate"):
        with pytest.raises(swimkit.SwimkitError, match="price programming"):
            swimkit.select(model, sens, speedup=2.0, method=method, chip=noisy)
    with pytest.raises(swimkit.SwimkitError, match="NoiseModel"):
        swimkit.evaluate(model, batches, object(), samples=1)
