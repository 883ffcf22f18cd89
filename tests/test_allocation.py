"""Method allocate: convex hulls, the greedy optimum, exact budgets, menus; and learned.

``python tests/test_allocation.py`` records the plans of :func:`recorded_cases` into
``fixtures/allocate_plans.json`` (a digest of every level, the time spent, the devices
verified); the tests then hold every later planner to them, also when it works in pieces.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from toys import toy_problem

import swimkit
from swimkit.plans import Plan
from swimkit.selection import allocation, prefix
from swimkit.selection.allocation import lower_hulls
from swimkit.sensitivity import Sensitivity

T_P, T_R = 100e-9, 50e-9
RECORDED = Path(__file__).parent / "fixtures" / "allocate_plans.json"


def test_hull_drops_dominated_and_non_convex_points():
    times = torch.tensor([[1.0, 2.0, 2.5, 3.0, 4.0]])
    variances = torch.tensor([[10.0, 6.0, 7.0, 5.5, 1.0]])
    hull = lower_hulls(times, variances)
    assert hull.options[0, : int(hull.size[0])].tolist() == [0, 1, 4]
    torch.testing.assert_close(hull.cost[0, :2], torch.tensor([1.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(hull.gain[0, :2], torch.tensor([4.0, 5.0], dtype=torch.float64))
    ratio = hull.ratio[0, :2]
    assert float(ratio[0]) > float(ratio[1])  # efficiency falls along the hull


def test_default_menu_lies_on_the_hull():
    """At sigma 0.3 every menu tolerance is on the hull, loose to tight."""
    dm = swimkit.DeviceModel()
    menu = dm.default_menu()
    assert [round(t, 3) for t in menu] == [0.45, 0.3, 0.2, 0.15, 0.1, round(dm.loop.tolerance, 3)]
    sig = dm.option_sigmas(torch.ones(1), torch.tensor(1.0), menu)
    tim = dm.option_times(torch.ones(1), torch.tensor(1.0), menu)
    hull = lower_hulls(tim[None], sig.square()[None])
    assert int(hull.size[0]) == len(menu) + 1
    expected = [100, 173, 220, 303, 392, 574, 1090]
    assert [float(t) * 1e9 for t in tim] == pytest.approx(expected, abs=2.0)


def tiny_problem(h: list[float]):
    """A 1 x len(h) linear layer, 2 devices per weight, with h given per weight."""
    model = nn.Sequential(nn.Linear(len(h), 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.linspace(0.5, 1.0, len(h))[None])
    second = {"0.weight": torch.tensor([h])}
    sens = Sensitivity(second=second, first={"0.weight": torch.zeros(1, len(h))},
                       scale={"0.weight": torch.tensor(1.0)}, engine="test", samples=1)
    dm = swimkit.DeviceModel(bits_per_weight=2, bits_per_device=1)
    return model, sens, dm


def objective(plan: Plan, dm, model, h: list[float]) -> float:
    values = {"0.weight": model[0].weight.detach()}
    var = dm.variance(values, {"0.weight": torch.tensor(1.0)}, plan)
    return float((torch.tensor(h, dtype=torch.float64) * var["0.weight"][0]).sum())


def brute_force(dm, menu, h, budget):
    """min sum_i h_i Var_i over every assignment of options to the 2 x len(h) devices."""
    sig = dm.option_sigmas(torch.ones(1), torch.tensor(1.0), menu).tolist()
    tim = dm.option_times(torch.ones(1), torch.tensor(1.0), menu).tolist()
    share = dm.slicing.variance_weights().tolist()
    best = float("inf")
    for choice in itertools.product(range(len(sig)), repeat=2 * len(h)):
        time = sum(tim[o] for o in choice)
        if time <= budget * (1 + 1e-12):
            var = [sum(share[j] * sig[choice[2 * i + j]] ** 2 for j in range(2))
                   for i in range(len(h))]
            best = min(best, sum(hi * v for hi, v in zip(h, var, strict=True)))
    return best


@pytest.mark.parametrize("menu", [(0.3, 0.1), (0.45, 0.2, 0.05)])
def test_greedy_is_the_optimum_where_its_steps_fit_the_budget(menu):
    """At budgets that end exactly on a greedy step the relaxed optimum is integral:
    allocate must then match a brute-force search over every assignment."""
    h = [5.0, 1.0, 0.2]
    model, sens, dm = tiny_problem(h)
    sig = dm.option_sigmas(torch.ones(1), torch.tensor(1.0), menu).tolist()
    tim = dm.option_times(torch.ones(1), torch.tensor(1.0), menu).tolist()
    share = dm.slicing.variance_weights().tolist()
    steps = [(h[i] * share[j] * (sig[s] ** 2 - sig[s + 1] ** 2) / (tim[s + 1] - tim[s]),
              tim[s + 1] - tim[s]) for i in range(3) for j in range(2)
             for s in range(len(menu))]  # every option of this menu is on the hull
    spent = 6 * T_P
    for _, cost in sorted(steps, reverse=True)[:8]:
        spent += cost
        plan = swimkit.select(model, sens, method="allocate", time_budget=spent,
                              device_model=dm, tolerances=menu)
        assert plan.programming.time_plan_s == pytest.approx(spent, rel=1e-12)
        got = objective(plan, dm, model, h)
        assert got == pytest.approx(brute_force(dm, menu, h, spent), rel=1e-9)


def test_most_significant_devices_get_the_tightest_tolerances():
    model, sens, dm = tiny_problem([3.0, 3.0, 3.0])
    plan = swimkit.select(model, sens, method="allocate", speedup=4.0, device_model=dm)
    levels = plan.levels["0.weight"][0]
    assert bool((levels[:, 0] >= levels[:, 1]).all())  # device 1 (MSB) at least as tight
    assert int(levels[:, 0].max()) > 0


def lenet_problem(reference):
    model = swimkit.models.LeNet()
    model.load_state_dict(reference["state_dict"])
    sens = swimkit.sensitivity(model, [(reference["x"], reference["y"])])
    return model, sens


def test_exact_budget_and_a_menu_beats_one_tolerance(reference):
    model, sens = lenet_problem(reference)
    dm = swimkit.DeviceModel()
    one = swimkit.select(model, sens, method="allocate-one", speedup=8.0)
    same = swimkit.select(model, sens, method="allocate", speedup=8.0,
                          tolerances=[dm.loop.tolerance])
    assert all(torch.equal(one.levels[k], same.levels[k]) for k in one.levels)
    menu = swimkit.select(model, sens, method="allocate", speedup=8.0)
    values = {k: model.get_parameter(k).detach() for k in sens.names}
    scales = sens.scale
    predicted = {}
    for name, plan in (("one", one), ("menu", menu)):
        prog = plan.programming
        budget = prog.time_full_verify_s / 8.0
        assert prog.time_plan_s <= budget * (1 + 1e-12)
        step = dm.loop.verify_time(0.3) - T_P  # the largest step of either menu
        assert budget - prog.time_plan_s < step  # spent to within one step
        var = dm.variance(values, scales, plan)
        predicted[name] = sum(float((sens.second[k].double() * var[k]).sum()) for k in var)
    assert predicted["menu"] < 0.8 * predicted["one"]
    assert one.menu == (dm.loop.tolerance,) and len(menu.menu) == 6
    assert menu.devices_verified > one.devices_verified


def test_fraction_of_devices_verifies_that_many_devices_at_the_tightest_option(reference):
    model, sens = lenet_problem(reference)
    plan = swimkit.select(model, sens, fraction=0.05, method="allocate")
    assert plan.devices_verified == round(0.05 * plan.devices_total)
    top = len(plan.menu)
    assert all(set(v.unique().tolist()) <= {0, top} for v in plan.levels.values())


def test_plan_files_for_a_programming_flow(reference, tmp_path):
    import json

    import numpy as np

    model, sens = lenet_problem(reference)
    plan = swimkit.select(model, sens, method="allocate", speedup=6.0)
    back = Plan.load(plan.save(tmp_path / "plan.pt"))
    assert back.menu == plan.menu and back.programming == plan.programming
    assert all(torch.equal(back.levels[k], plan.levels[k]) for k in plan.levels)
    arrays = np.load(plan.export_npz(tmp_path / "plan.npz"))
    assert arrays["menu"].tolist() == list(plan.menu)
    assert arrays["fc1.weight"].shape == (120, 784, 8) and arrays["fc1.weight"].dtype == np.uint8
    summary = json.loads(plan.export_summary(tmp_path / "plan.json").read_text())
    layer = summary["layers"]["fc1.weight"]
    assert sum(layer["devices_per_option"]) == 120 * 784 * 8
    assert summary["devices_verified"] == plan.devices_verified
    rows = plan.export_summary(tmp_path / "plan.csv").read_text().splitlines()
    assert rows[0].startswith("layer,weights,weights_verified,devices,devices_plain")
    assert len(rows) == 1 + len(plan.levels)
    with pytest.raises(swimkit.SwimkitError, match=".json or .csv"):
        plan.export_summary(tmp_path / "plan.txt")


def test_value_dependent_devices_get_their_own_hulls(reference):
    model, sens = lenet_problem(reference)
    band = swimkit.DeviceModel(variation="band:3")
    plan = swimkit.select(model, sens, method="allocate", speedup=5.0, device_model=band)
    assert plan.programming.speedup >= 5.0 * (1 - 1e-9)
    values = {k: model.get_parameter(k).detach() for k in sens.names}
    report = band.programming_report(values, sens.scale, plan)
    assert report.time_plan_s == pytest.approx(plan.programming.time_plan_s)


def test_bad_menus_are_clear_errors(reference):
    model, sens = lenet_problem(reference)
    with pytest.raises(swimkit.SwimkitError, match="tolerance"):
        swimkit.select(model, sens, method="allocate", speedup=2.0, tolerances=[0.1, -1])
    with pytest.raises(swimkit.SwimkitError, match="one tolerance"):
        swimkit.select(model, sens, fraction=0.1, method="swim", tolerances=[0.3, 0.1])
    with pytest.raises(swimkit.SwimkitError, match="below the time"):
        swimkit.select(model, sens, method="allocate", speedup=50.0)


# --- learned ----------------------------------------------------------------------------


def test_learned_plan_meets_the_budget_and_records_its_cost():
    model, batches = toy_problem()
    sens = swimkit.sensitivity(model, batches)
    dm = swimkit.DeviceModel(sigma=0.5, sigma_verified=0.05)
    kwargs = {"speedup": 6.0, "device_model": dm, "data": batches,
              "options": {"epochs": 2}, "seed": 3}
    plan = swimkit.select(model, sens, method="learned", **kwargs)
    again = swimkit.select(model, sens, method="learned", **kwargs)
    assert all(torch.equal(plan.levels[k], again.levels[k]) for k in plan.levels)
    prog = plan.programming
    assert prog.time_plan_s <= prog.time_full_verify_s / 6.0 * (1 + 1e-12)
    assert plan.meta["learn_epochs"] == 2 and plan.meta["learn_batches"] == 6
    assert plan.meta["learn_seconds"] > 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    swimkit.select(model, sens, method="learned", **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(swimkit.SwimkitError, match="learns on data"):
        swimkit.select(model, sens, method="learned", speedup=6.0)
    with pytest.raises(swimkit.SwimkitError, match="unknown option 'steps'"):
        swimkit.select(model, sens, method="learned", speedup=6.0, data=batches,
                       options={"steps": 3})


@pytest.mark.parametrize("device", ["band", "pcm", "multilevel"])
def test_learned_injects_the_variance_of_the_plan_it_stands_for(device):
    """At hull points the relaxed plan's variance per weight is the device model's
    variance of that plan: each device's variance weighted by 4^(-j m)."""
    from swimkit.selection import METHODS, inputs_for
    from swimkit.selection.learned import _Relaxed

    model, batches = toy_problem()
    dm = recorded_devices()[device][0]
    inputs = inputs_for(model, swimkit.sensitivity(model, batches), METHODS.get("learned"),
                        device_model=dm, data=batches)
    problem = allocation.Problem.build(inputs, dm.default_menu())
    levels = problem.best_devices(1000)  # every device at its first or its last hull point
    relaxed = _Relaxed(problem, levels)
    with torch.no_grad():
        for name, position in relaxed.positions.items():
            position.copy_(torch.where(levels[name].reshape(position.shape) > 0, torch.inf,
                                       -torch.inf))
        variance, _ = relaxed.variance_and_time(relaxed.base_variance(problem.option_variance))
    plan = Plan(levels=levels, menu=dm.default_menu())
    expected = dm.variance(inputs.values, inputs.scales, plan)
    for name, value in inputs.values.items():
        torch.testing.assert_close(variance[name].reshape(value.shape), expected[name],
                                   rtol=1e-12, atol=0.0)


def _autograd_variance_and_time(relaxed, base_var):
    """The relaxed plan's variance and time written as plain autograd over whole tensors:
    the oracle for the piecewise :class:`_HullFill`."""
    from swimkit.selection.learned import _between

    w, points = relaxed.problem.weights, relaxed.point_var.shape[1]
    variance, total = {}, torch.zeros((), dtype=torch.float64)
    for layer in relaxed.problem.layers:
        t = relaxed.position(layer)
        low = t.detach().floor().clamp_(0, points - 2)
        index = low.long().add_(layer.kind.long() * points).view(-1)
        fraction = t - low
        added = (_between(relaxed.point_var, relaxed.step_var, index, fraction) * w).sum(1)
        variance[layer.name] = base_var[layer.name] + added
        total = total + _between(relaxed.point_time, relaxed.step_time, index, fraction).sum()
    return variance, total


@pytest.mark.parametrize("device", ["uniform", "curve", "pcm", "multilevel"])
def test_learned_relaxation_in_pieces_matches_autograd(device, monkeypatch):
    """The relaxed variance, time and their gradient, computed in pieces of a few devices
    with a hand-written backward, equal plain autograd's to float64 rounding, at positions
    spread over the whole hull."""
    from swimkit.selection import METHODS, inputs_for, learned
    from swimkit.selection.registry import Budget

    monkeypatch.setattr(learned, "PIECE_DEVICES", 7)  # many pieces, some partial
    model, batches = toy_problem()
    dm = recorded_devices()[device][0]
    inputs = inputs_for(model, swimkit.sensitivity(model, batches), METHODS.get("learned"),
                        device_model=dm, data=batches)
    problem = allocation.Problem.build(inputs, dm.default_menu())
    seconds = allocation.seconds_above_base(problem, inputs, Budget("speedup", 4.0))
    relaxed = learned._Relaxed(problem, problem.spend(seconds))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for position in relaxed.positions.values():
            position.add_(3 * torch.randn(position.shape, generator=gen, dtype=torch.float64))
    base = relaxed.base_variance(problem.option_variance)
    upstream = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64)
                for k, v in base.items()}

    def objective(variance, total):
        return sum((v * upstream[k]).sum() for k, v in variance.items()) + 0.7 * total

    pieces, oracle = relaxed.variance_and_time(base), _autograd_variance_and_time(relaxed, base)
    for name in base:
        torch.testing.assert_close(pieces[0][name], oracle[0][name], rtol=1e-13, atol=0.0)
    torch.testing.assert_close(pieces[1], oracle[1], rtol=1e-13, atol=0.0)
    got = torch.autograd.grad(objective(*pieces), relaxed.parameters())
    want = torch.autograd.grad(objective(*oracle), relaxed.parameters())
    assert any(bool(g.abs().gt(0).any()) for g in want)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15 * float(b.abs().max()))


def test_learned_epochs_may_end_in_a_share_of_an_epoch():
    """A share of an epoch is its first batches (rounded up): what bounds the cost of
    learning on a large training set."""
    model, batches = toy_problem()
    sens = swimkit.sensitivity(model, batches)
    for epochs, seen in ((0.5, 2), (0.01, 1), (1.34, 5), (1, 3)):
        plan = swimkit.select(model, sens, method="learned", speedup=4.0, data=batches,
                              options={"epochs": epochs})
        assert plan.meta["learn_batches"] == seen and plan.meta["learn_epochs"] == epochs
        assert plan.programming.speedup >= 4.0 * (1 - 1e-12)
    with pytest.raises(swimkit.SwimkitError, match="can be counted"):
        swimkit.select(model, sens, method="learned", speedup=4.0, data=iter(batches),
                       options={"epochs": 0.5})
    with pytest.raises(swimkit.SwimkitError, match="epochs must be a number > 0"):
        swimkit.select(model, sens, method="learned", speedup=4.0, data=batches,
                       options={"epochs": 0})


def test_quantized_models_allocate_on_their_quantized_weights():
    model = swimkit.build_model("qlenet", seed=0).eval()
    batches = [(torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)))]
    model.train()
    model(batches[0][0])  # calibrate the output ranges
    model.eval()
    sens = swimkit.sensitivity(model, batches)
    plan = swimkit.select(model, sens, method="allocate", speedup=5.0)
    assert plan.programming.speedup >= 5.0 * (1 - 1e-9)
    res = swimkit.evaluate(model, batches, swimkit.DeviceModel(), plan, samples=2)
    assert res.samples == 2


@pytest.mark.parametrize("device", ["uniform", "pcm", "stuck-pcm-1d"])
def test_a_speedup_of_one_verifies_every_device_by_the_own_loop(reference, device):
    """Every device at the tightest option, the own loop's: full verify's time exactly
    (the sum of every step, spent whole, also with a kind per device)."""
    model, sens = lenet_problem(reference)
    dm, plan_time = recorded_devices()[device]
    for method in ("allocate", "allocate-one"):
        plan = swimkit.select(model, sens, method=method, speedup=1.0, device_model=dm,
                              plan_time=plan_time)
        assert plan.devices_verified == plan.devices_total, method
        assert all(bool((v == len(plan.menu)).all()) for v in plan.levels.values()), method
        assert plan.programming.speedup == pytest.approx(1.0, rel=1e-12), method


def test_first_release_plan_files_load(tmp_path):
    torch.save({"kind": "swimkit.plan", "masks": {"w": torch.tensor([True, False])},
                "method": "swim", "requested": {"fraction": 0.5},
                "programming": {"time_plan": 1e-6, "time_full_verify": 2e-6,
                                "time_no_verify": 5e-7, "speedup": 2.0,
                                "fraction_verified": 0.5}}, tmp_path / "old.pt")
    plan = Plan.load(tmp_path / "old.pt")
    assert plan.masks["w"].tolist() == [True, False] and plan.menu is None
    assert plan.programming.time_plan_s == 1e-6
    assert plan.programming.devices_fraction_verified == 0.5


# --- plans as recorded, whole or in pieces ---------------------------------------------------


def synthetic_sensitivity(model: nn.Module, zeros: float, seed: int) -> Sensitivity:
    """Log-normal h with a share ``zeros`` of exact zeros (floored alike: many ties)."""
    gen = torch.Generator().manual_seed(seed)
    weights = swimkit.device_weights(model)
    second = {}
    for name, w in weights.items():
        h = torch.exp(2 * torch.randn(w.value.shape, generator=gen))
        second[name] = torch.where(torch.rand(w.value.shape, generator=gen) < zeros, 0.0, h)
    return Sensitivity(second, {k: torch.zeros_like(v) for k, v in second.items()},
                       {k: w.value.detach().abs().amax() for k, w in weights.items()},
                       engine="synthetic", samples=1)


def recorded_devices() -> dict[str, tuple[object, float]]:
    """Device models (alike, by weight, by device, in time) with the time planned for."""
    build = swimkit.build_device_model
    return {"uniform": (swimkit.DeviceModel(), 0.0),
            "band": (build("band", r=3.0), 0.0),
            "curve": (swimkit.DeviceModel(variation="pcm"), 0.0),  # a kind per weight
            "pcm": (build("pcm"), 0.0),
            "pcm-compensated-1d": (build("pcm", compensation=True), 86400.0),
            "stuck-pcm-1d": (build("stuck", base="pcm", compensation=True), 86400.0),
            "multilevel": (build("gaussian", levels="pcm", bits_per_device=2), 0.0)}


def recorded_cases() -> dict[str, Callable[[], Plan]]:
    """Small planning problems of every kind: name -> the plan's maker."""
    toy, batches = toy_problem()
    lenet = swimkit.build_model("lenet", seed=0).eval()
    sensitivities = {"toy-real": (toy, swimkit.sensitivity(toy, batches)),
                     "toy-zeros": (toy, synthetic_sensitivity(toy, 0.5, 1)),
                     "lenet-zeros": (lenet, synthetic_sensitivity(lenet, 0.3, 2))}
    budgets = {"3x": {"speedup": 3.0}, "1.7x": {"speedup": 1.7}, "5x": {"speedup": 5.0},
               "7%": {"fraction": 0.07},
               "one-3x": {"speedup": 3.0, "method": "allocate-one"},
               "close-menu-4x": {"speedup": 4.0, "tolerances": [0.3, 0.2999, 0.1, 0.05]}}
    devices = recorded_devices()
    cases = {}
    for sname, (model, sens) in sensitivities.items():
        chosen = budgets if sname.startswith("toy") else {"3x": budgets["3x"]}
        for dname, (dm, plan_time) in devices.items():
            for bname, budget in chosen.items():
                cases[f"{sname} {dname} {bname}"] = functools.partial(
                    swimkit.select, model, sens, **{"method": "allocate", **budget},
                    device_model=dm, plan_time=plan_time)
    toy_sens = sensitivities["toy-real"][1]
    for dname in ("uniform", "band"):
        for speedup in (3.0, 6.0):
            cases[f"toy-real {dname} learned-{speedup:g}x"] = functools.partial(
                swimkit.select, toy, toy_sens, method="learned", speedup=speedup,
                device_model=devices[dname][0], data=batches, options={"epochs": 2}, seed=3)
    return cases


def plan_digest(plan: Plan) -> dict:
    """What a recorded plan is held to: every level (a digest), the time, the devices."""
    digest = hashlib.sha256()
    for name, levels in plan.levels.items():
        digest.update(f"{name}{tuple(levels.shape)}".encode())
        digest.update(levels.cpu().contiguous().numpy().tobytes())
    return {"levels": digest.hexdigest(), "time_plan_s": plan.programming.time_plan_s.hex(),
            "devices_verified": plan.devices_verified}


#: Pieces far smaller than a pass reads (a toy: four weights' steps, five weights of
#: option tables), rows of option tables told apart by whole rows, not hashes.
SMALL_PIECES = {"toy": {"STEP_PIECE": 200, "TABLE_ROWS": 5, "COLLECT": 8, "BIN_BITS": 8},
                "lenet": {"STEP_PIECE": 2**16, "TABLE_ROWS": 2**13, "COLLECT": 2**10,
                          "BIN_BITS": 10}}


@pytest.mark.slow
@pytest.mark.parametrize("pieces", ["default", "small"])
def test_plans_are_the_recorded_ones_whole_or_in_pieces(monkeypatch, pieces):
    """The same levels to the bit and the same time (to float rounding: the sum of the
    devices' times depends on the threads' share of it), whatever the pieces a pass
    reads."""
    recorded = json.loads(RECORDED.read_text())
    cases = recorded_cases()
    assert sorted(cases) == sorted(recorded)
    for name, make in cases.items():
        if pieces == "small":
            monkeypatch.setattr(allocation, "_HASH", torch.zeros(64, dtype=torch.long))
            for setting, value in SMALL_PIECES[name.split("-")[0]].items():
                monkeypatch.setattr(prefix if setting in ("COLLECT", "BIN_BITS") else
                                    allocation, setting, value)
        got, want = plan_digest(make()), dict(recorded[name])
        time_s, want_s = (float.fromhex(d.pop("time_plan_s")) for d in (got, want))
        assert got == want, name
        assert time_s == pytest.approx(want_s, rel=1e-12), name


if __name__ == "__main__":
    RECORDED.write_text(json.dumps({name: plan_digest(make())
                                    for name, make in recorded_cases().items()}, indent=1))
