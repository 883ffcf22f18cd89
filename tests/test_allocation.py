"""Method allocate: convex hulls, the greedy optimum, exact budgets, menus; and learned."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from toys import toy_problem

import swimkit
from swimkit.plans import Plan
from swimkit.selection.allocation import lower_hulls
from swimkit.sensitivity import Sensitivity

T_P, T_R = 100e-9, 50e-9


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


def test_a_speedup_of_one_verifies_every_device(reference):
    model, sens = lenet_problem(reference)
    for method in ("allocate", "allocate-one"):
        plan = swimkit.select(model, sens, method=method, speedup=1.0)
        assert plan.devices_verified == plan.devices_total, method


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
