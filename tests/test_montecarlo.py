"""Monte-Carlo evaluation: per-instance draws, statistics, bit-identical weights, ranks."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from toys import toy_problem

import swimkit
from swimkit.chipstats import t_quantile_975


def test_statistics_and_ci():
    res = swimkit.MCResult(torch.tensor([90.0, 91.0, 92.0, 93.0]), seed=0)
    assert res.mean == pytest.approx(91.5)
    assert res.std == pytest.approx(torch.tensor([90.0, 91, 92, 93]).std().item())
    half = t_quantile_975(3) * res.std / 2
    assert res.ci95 == pytest.approx((91.5 - half, 91.5 + half))
    data = res.to_dict()
    assert data["accuracies_percent"] == [90.0, 91.0, 92.0, 93.0]
    assert data["mean_percent"] == pytest.approx(91.5)
    assert data["yield_fraction"] is None  # no reference yet
    back = swimkit.MCResult.from_dict(data)
    assert torch.equal(back.accuracies, res.accuracies.double()) and back.seed == 0


def test_p05_yield_and_paired_gap():
    accs = torch.arange(80.0, 100.0)  # 20 chips: 80, 81, ..., 99
    res = swimkit.MCResult(accs, seed=4, reference=98.5, within=1.0)
    assert res.p05 == pytest.approx(80.95)  # linear interpolation, as numpy
    assert res.chip_yield == pytest.approx(2 / 20)  # 98 and 99 are within 1 of 98.5
    assert res.yield_within(90.0, 0.0) == pytest.approx(10 / 20)
    data = res.to_dict()
    assert data["p05_percent"] == pytest.approx(80.95) and data["yield_fraction"] == 0.1
    assert data["yield_reference_percent"] == 98.5 and data["yield_within_points"] == 1.0
    other = swimkit.MCResult(accs + 1.0, seed=4)
    gap = res.paired_difference(other)
    assert gap.mean == pytest.approx(-1.0) and gap.std == pytest.approx(0.0)
    with pytest.raises(swimkit.SwimkitError, match="same seed"):
        res.paired_difference(swimkit.MCResult(accs, seed=5))


@pytest.mark.parametrize("dof,expected", [(1, 12.7062), (2, 4.3027), (3, 3.1824),
                                          (5, 2.5706), (9, 2.2622), (29, 2.0452),
                                          (99, 1.9842), (10_000, 1.9602)])
def test_t_quantile(dof, expected):
    """Against the printed table of Student's t (four decimals)."""
    assert t_quantile_975(dof) == pytest.approx(expected, abs=1e-4)


def test_clean_accuracy_and_noise_effects():
    model, batches = toy_problem()
    clean = swimkit.accuracy(model, batches)
    device = swimkit.DeviceModel(sigma=2.0, sigma_verified=0.0)
    noisy = swimkit.evaluate(model, batches, device, "none", samples=8, seed=0)
    verified = swimkit.evaluate(model, batches, device, "all", samples=8, seed=0)
    assert clean > 90
    assert noisy.mean < clean - 5 and noisy.std > 0
    assert verified.accuracies.tolist() == [clean] * 8


def test_each_instance_holds_one_draw_over_the_whole_test_set():
    """Accuracy of instance k equals a manual evaluation with that instance's draw."""
    model, batches = toy_problem()
    device = swimkit.DeviceModel(sigma=1.0)
    res = swimkit.evaluate(model, batches, device, samples=3, seed=5)
    weights = swimkit.device_weights(model)
    values = swimkit.mapping.effective_weights(weights)
    scales = swimkit.mapping.weight_scales(values)
    for k in range(3):
        deltas = device.sample(values, scales, None, swimkit.seeding.generator_for(5, k))
        state = {n: p.clone() for n, p in model.state_dict().items()}
        for name, delta in deltas.items():
            state[name] = state[name] + delta
        twin = toy_problem()[0]
        twin.load_state_dict(state)
        assert res.accuracies[k].item() == pytest.approx(swimkit.accuracy(twin, batches))


def test_weights_bit_identical_after_evaluation_even_on_error():
    model, batches = toy_problem()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = [id(p) for p in model.parameters()]
    swimkit.evaluate(model, batches, swimkit.DeviceModel(sigma=1.0), samples=2)
    bad = batches + [(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))]
    with pytest.raises(RuntimeError):
        swimkit.evaluate(model, bad, swimkit.DeviceModel(sigma=1.0), samples=2)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [id(p) for p in model.parameters()] == params_before
    assert all(type(m) in (nn.Linear, nn.ReLU) for m in model)


def test_seed_reproducible_and_common_random_numbers():
    model, batches = toy_problem()
    device = swimkit.DeviceModel(sigma=1.0, sigma_verified=0.1)
    a = swimkit.evaluate(model, batches, device, samples=6, seed=3)
    b = swimkit.evaluate(model, batches, device, samples=6, seed=3)
    c = swimkit.evaluate(model, batches, device, samples=6, seed=4)
    assert torch.equal(a.accuracies, b.accuracies)
    assert not torch.equal(a.accuracies, c.accuracies)
    full = swimkit.evaluate(model, batches, device, "all", samples=6, seed=3)
    diff = full.paired_difference(a)
    assert diff.mean == pytest.approx(full.mean - a.mean)


def test_plan_controls_which_weights_are_quiet():
    model, batches = toy_problem()
    device = swimkit.DeviceModel(sigma=3.0, sigma_verified=0.0)
    names = list(swimkit.device_weights(model))
    masks = {n: torch.ones_like(model.get_parameter(n), dtype=torch.bool) for n in names}
    plan = swimkit.Plan(masks=masks, method="manual")
    res = swimkit.evaluate(model, batches, device, plan, samples=3)
    assert res.accuracies.tolist() == [swimkit.accuracy(model, batches)] * 3


def test_excluded_layers_stay_exact():
    """An excluded layer computes with its exact weights on every chip; the others not."""
    model, batches = toy_problem()
    device = swimkit.DeviceModel(sigma=5.0)
    with torch.no_grad():
        clean = [model[0](x) for x, _ in batches]
    seen = {"0": [], "2": []}
    hooks = [model[i].register_forward_hook(
        lambda m, args, out, key=str(i): seen[key].append((args[0].clone(), out.clone())))
        for i in (0, 2)]
    try:
        swimkit.evaluate(model, batches, device, samples=2, exclude=["0"])
    finally:
        for h in hooks:
            h.remove()
    # the chips' calls (a probe forward of two images may come first)
    chip_calls = [out for _, out in seen["0"] if len(out) == len(batches[0][0])]
    assert len(chip_calls) == 2 * len(batches)
    for i, out in enumerate(chip_calls):
        assert torch.equal(out, clean[i % len(batches)])
    on_chips = [(inp, out) for inp, out in seen["2"] if len(out) == len(batches[0][0])]
    with torch.no_grad():
        exact_fc2 = [model[2](inp.clone()) for inp, _ in on_chips]
    assert not any(torch.equal(e, out) for e, (_, out) in zip(exact_fc2, on_chips, strict=True))
    with pytest.raises(swimkit.SwimkitError, match="matches no"):
        swimkit.evaluate(model, batches, device, samples=2, exclude=["nope"])


def test_a_plan_must_agree_with_the_excluded_layers():
    """exclude with a Plan is checked, not ignored: unknown layers and layers the plan
    programs are refused; a plan made without them evaluates as before."""
    model, batches = toy_problem()
    device = swimkit.DeviceModel(sigma=0.5)
    every = {n: torch.ones_like(model.get_parameter(n), dtype=torch.bool)
             for n in swimkit.device_weights(model)}
    with pytest.raises(swimkit.SwimkitError, match="plan programs '0.weight'.*excluded"):
        swimkit.evaluate(model, batches, device, swimkit.Plan(masks=every), samples=2,
                         exclude=["0"])
    with pytest.raises(swimkit.SwimkitError, match="matches no"):
        swimkit.evaluate(model, batches, device, swimkit.Plan(masks=every), samples=2,
                         exclude=["nope"])
    partial = swimkit.Plan(masks={"2.weight": every["2.weight"]})
    agreed = swimkit.evaluate(model, batches, device, partial, samples=2, exclude=["0"])
    assert agreed.samples == 2
    with pytest.raises(swimkit.SwimkitError, match="leaves out 1 layer"):  # 0 would be exact
        swimkit.evaluate(model, batches, device, partial, samples=2)


def test_bad_plan_shape_is_clear():
    model, batches = toy_problem()
    plan = swimkit.Plan(masks={"0.weight": torch.ones(2, 2, dtype=torch.bool),
                               "2.weight": torch.ones(3, 32, dtype=torch.bool)}, method="x")
    with pytest.raises(swimkit.SwimkitError, match="shape"):
        swimkit.evaluate(model, batches, swimkit.DeviceModel(), plan, samples=1)


def test_quantized_noise_lands_after_quantization():
    model = swimkit.quantize(nn.Sequential(nn.Linear(8, 4)), 2)
    model.train()
    model(torch.randn(16, 8))
    model.eval()
    weights = swimkit.device_weights(model)
    q = model[0].weight.detach().clone()
    delta = torch.full_like(q, 1e-3)
    with swimkit.perturbed(model, weights, {"0.weight": delta}):
        torch.testing.assert_close(model[0].weight, q + delta)
    torch.testing.assert_close(model[0].weight, q)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        model, batches = toy_problem()
        res = swimkit.evaluate(model, batches, swimkit.DeviceModel(sigma=1.0), samples=7,
                               seed=11)
        queue.put((rank, res.accuracies.tolist()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_same_result_on_any_number_of_processes():
    model, batches = toy_problem()
    single = swimkit.evaluate(model, batches, swimkit.DeviceModel(sigma=1.0), samples=7, seed=11)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    world = 3
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, world, port, queue)) for rank in range(world)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for _, accuracies in got:
        assert accuracies == single.accuracies.tolist()


# --- a device model written here: the NoiseModel protocol is all swimkit asks ----------


class StuckAt:
    """Two-state device: a weight is stuck at zero with probability ``p`` (``p_verified``
    where a plan verifies any of its devices), else exact."""

    slicing = swimkit.slicing.BitSlicing(8, 1)

    def __init__(self, p: float, p_verified: float = 0.0) -> None:
        self.p, self.p_verified = p, p_verified
        self.samplers = 0

    def with_sigma(self, sigma):
        return StuckAt(sigma, self.p_verified)

    def _p(self, values, plan):
        masks = plan.masks if plan is not None else {}
        return {k: torch.where(masks[k], self.p_verified, self.p) if k in masks
                else torch.full_like(v, self.p) for k, v in values.items()}

    def sampler(self, values, scales, plan=None, times=(0.0,)):
        probability = self._p(values, plan)
        self.samplers += 1

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


def test_a_device_model_from_outside_works_in_evaluate_and_select():
    model, batches = toy_problem()
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
    sens = swimkit.sensitivity(model, batches)
    plan = swimkit.select(model, sens, fraction=0.5, method="variance", device_model=noisy)
    assert plan.programming is None  # a stuck-at model prices no programming time
    protected = swimkit.evaluate(model, batches, noisy, plan, samples=20, seed=1)
    exposed = swimkit.evaluate(model, batches, noisy, samples=20, seed=1)
    assert protected.mean > exposed.mean
    with pytest.raises(swimkit.SwimkitError, match="price programming"):
        swimkit.select(model, sens, speedup=2.0, method="variance", device_model=noisy)
    with pytest.raises(swimkit.SwimkitError, match="price programming"):
        swimkit.select(model, sens, speedup=2.0, method="allocate", device_model=noisy)
    with pytest.raises(swimkit.SwimkitError, match="NoiseModel"):
        swimkit.evaluate(model, batches, object(), samples=1)
