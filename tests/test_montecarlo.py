"""Monte-Carlo evaluation: per-chip draws, bit-identical weights, the chip's placement and
plan, adaptive chip counts, settings and their overrides, tied weights, and ranks."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from toys import toy_problem

import swimkit
from swimkit import ChipSpec, EvaluationSettings, GaussianDevice, Placement
from swimkit.chipstats import ci_half_width
from swimkit.mapping import effective_weights, layer_ranges
from swimkit.montecarlo import ROUND_GROWTH, ROUND_MIN, round_ends


class Untouchable:
    """Test batches that fail when read: a refusal met before them came before any work."""

    def __iter__(self):
        raise AssertionError("the batches were read before the settings were checked")


def test_clean_accuracy_and_noise_effects():
    model, batches = toy_problem()
    clean = swimkit.accuracy(model, batches)
    device = GaussianDevice(sigma=2.0, sigma_verified=0.0)
    noisy = swimkit.evaluate(model, batches, device, "none", samples=8, seed=0)
    verified = swimkit.evaluate(model, batches, device, "all", samples=8, seed=0)
    assert clean > 90
    assert noisy.mean < clean - 5 and noisy.std > 0
    assert verified.accuracies.tolist() == [clean] * 8


def test_each_instance_holds_one_draw_over_the_whole_test_set():
    """Accuracy of instance k equals a manual evaluation with that instance's draw."""
    model, batches = toy_problem()
    device = GaussianDevice(sigma=1.0)
    res = swimkit.evaluate(model, batches, device, samples=3, seed=5)
    values = effective_weights(swimkit.device_weights(model))
    scales = layer_ranges(values)
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
    swimkit.evaluate(model, batches, GaussianDevice(sigma=1.0), samples=2)
    bad = batches + [(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))]
    with pytest.raises(RuntimeError):
        swimkit.evaluate(model, bad, GaussianDevice(sigma=1.0), samples=2)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [id(p) for p in model.parameters()] == params_before
    assert all(type(m) in (nn.Linear, nn.ReLU) for m in model)


def test_seed_reproducible_and_common_random_numbers():
    model, batches = toy_problem()
    device = GaussianDevice(sigma=1.0, sigma_verified=0.1)
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
    device = GaussianDevice(sigma=3.0, sigma_verified=0.0)
    names = list(swimkit.device_weights(model))
    masks = {n: torch.ones_like(model.get_parameter(n), dtype=torch.bool) for n in names}
    plan = swimkit.Plan(masks=masks, method="manual")
    res = swimkit.evaluate(model, batches, device, plan, samples=3)
    assert res.accuracies.tolist() == [swimkit.accuracy(model, batches)] * 3


def test_excluded_layers_stay_exact():
    """A layer the chip's placement keeps digital computes with its exact weights on
    every chip; the others not."""
    model, batches = toy_problem()
    device = GaussianDevice(sigma=5.0)
    with torch.no_grad():
        clean = [model[0](x) for x, _ in batches]
    seen = {"0": [], "2": []}
    hooks = [model[i].register_forward_hook(
        lambda m, args, out, key=str(i): seen[key].append((args[0].clone(), out.clone())))
        for i in (0, 2)]
    try:
        swimkit.evaluate(model, batches, ChipSpec(device, placement=Placement(exclude=("0",))),
                         samples=2)
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
        swimkit.evaluate(model, batches,
                         ChipSpec(device, placement=Placement(exclude=("nope",))), samples=2)


def test_a_plan_must_agree_with_the_chips_placement():
    """A plan programming a layer the placement keeps digital, or a placement naming no
    layer, is refused; a plan made without the digital layers evaluates."""
    model, batches = toy_problem()
    device = GaussianDevice(sigma=0.5)
    every = {n: torch.ones_like(model.get_parameter(n), dtype=torch.bool)
             for n in swimkit.device_weights(model)}
    digital = ChipSpec(device, placement=Placement(exclude=("0",)))
    with pytest.raises(swimkit.SwimkitError, match="plan programs '0.weight'.*keeps digital"):
        swimkit.evaluate(model, batches, digital, swimkit.Plan(masks=every), samples=2)
    with pytest.raises(swimkit.SwimkitError, match="matches no"):
        swimkit.evaluate(model, batches, ChipSpec(device, placement=Placement(
            exclude=("nope",))), swimkit.Plan(masks=every), samples=2)
    partial = swimkit.Plan(masks={"2.weight": every["2.weight"]})
    agreed = swimkit.evaluate(model, batches, digital, partial, samples=2)
    assert agreed.samples == 2
    with pytest.raises(swimkit.SwimkitError, match="leaves out 1 layer"):  # 0 would be exact
        swimkit.evaluate(model, batches, device, partial, samples=2)


def test_a_plan_must_cover_the_mapped_layers():
    """A plan of fewer layers than the chip holds would leave the others exact."""
    model, batches = toy_problem()
    values = {n: p.detach() for n, p in model.named_parameters() if n.endswith("weight")}
    partial = swimkit.Plan.uniform({"0.weight": values["0.weight"]}, True)
    with pytest.raises(swimkit.SwimkitError, match="leaves out 1 layer.*Placement"):
        swimkit.evaluate(model, batches, GaussianDevice(), partial, samples=2)
    fine = swimkit.evaluate(model, batches, ChipSpec(placement=Placement(exclude=("2",))),
                            partial, samples=2)
    assert fine.samples == 2


def test_bad_plan_shape_is_clear():
    model, batches = toy_problem()
    plan = swimkit.Plan(masks={"0.weight": torch.ones(2, 2, dtype=torch.bool),
                               "2.weight": torch.ones(3, 32, dtype=torch.bool)}, method="x")
    with pytest.raises(swimkit.SwimkitError, match="shape"):
        swimkit.evaluate(model, batches, GaussianDevice(), plan, samples=1)


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


def test_more_chips_per_pass_than_memory_holds_is_refused():
    model, batches = toy_problem()
    with pytest.raises(swimkit.SwimkitError, match="GiB"):
        swimkit.evaluate(model, batches, GaussianDevice(), samples=2, chips_per_pass=10**9)


# --- settings and keyword overrides ----------------------------------------------------------


def test_keywords_act_as_overrides_of_the_settings_given():
    """evaluate(settings, samples=7) evaluates 7 chips with the rest of the settings, the
    same chips as settings of 7; the settings given stay as they were."""
    model, batches = toy_problem()
    device = GaussianDevice(sigma=1.0)
    settings = EvaluationSettings(samples=100, seed=3)
    seven = swimkit.evaluate(model, batches, device, None, settings, samples=7)
    assert seven.samples == 7 and seven.seed == 3
    direct = swimkit.evaluate(model, batches, device, settings=EvaluationSettings(samples=7,
                                                                                 seed=3))
    assert torch.equal(seven.accuracies, direct.accuracies)
    assert settings.samples == 100
    reseeded = swimkit.evaluate(model, batches, device, None, settings, samples=7, seed=4)
    assert reseeded.seed == 4 and not torch.equal(reseeded.accuracies, seven.accuracies)
    stopped = swimkit.evaluate(model, batches, device, None, settings, ci_target=50.0)
    assert stopped.ci_target == 50.0 and stopped.samples < 100
    pcm = swimkit.build_device_model("pcm")
    read = swimkit.evaluate(model, batches, pcm, None, settings, samples=3, times=[1, 60])
    assert [r.meta["time_s"] for r in read] == [1.0, 60.0]
    with pytest.raises(swimkit.SwimkitError, match="evaluate\\(\\) has no setting 'within'"):
        swimkit.evaluate(model, batches, device, None, settings, within=1.0)
    with pytest.raises(swimkit.SwimkitError, match="takes a EvaluationSettings"):
        swimkit.evaluate(model, batches, device, None, swimkit.SelectionSettings())


@pytest.mark.parametrize("overrides,needle", [
    ({"seed": "a"}, "seed must be an integer \\(got 'a'\\)"),
    ({"samples": 0}, "samples must be an integer >= 1"),
    ({"min_samples": 5}, "min_samples would have no effect"),
    ({"times": [0, 3600]}, "times \\[0.0, 3600.0\\] would have no effect: device model "
                           "'gaussian'"),
    ({"times": [5, 5]}, "repeat"),
    ({"ci_target": -1}, "ci_target must be a number of points >= 0"),
    ({"chips_per_pass": 0}, "chips_per_pass must be an integer >= 1"),
    ({"device_model": GaussianDevice()}, "no setting 'device_model'.*chip="),
    ({"exclude": ["0"]}, "no setting 'exclude'.*Placement"),
])
def test_settings_that_cannot_act_are_refused_before_work(overrides, needle):
    """A value of the wrong kind, min_samples without ci_target, times on a model that
    stays as programmed, or a keyword of an earlier release: one SwimkitError, before
    the test batches are read."""
    model, _ = toy_problem()
    with pytest.raises(swimkit.SwimkitError, match=needle):
        swimkit.evaluate(model, Untouchable(), GaussianDevice(), **overrides)


def test_a_ci_target_of_zero_is_a_fixed_count():
    """ci_target 0, as on the command line, means every chip (as None does)."""
    model, batches = toy_problem()
    device = GaussianDevice(sigma=1.0)
    zero = swimkit.evaluate(model, batches, device, samples=12, ci_target=0)
    fixed = swimkit.evaluate(model, batches, device, samples=12)
    assert zero.samples == 12 and zero.ci_target is None
    assert torch.equal(zero.accuracies, fixed.accuracies)
    assert EvaluationSettings(ci_target=0).ci_target is None


# --- tied weights: one parameter, one draw ---------------------------------------------------


class TwoUses(nn.Module):
    """Logits (0, |first(x) - second(x)|): class 0 exactly when the two layers, which share
    one weight (and one bias), compute the same."""

    def __init__(self, tied: bool) -> None:
        super().__init__()
        self.first = nn.Linear(4, 5)
        self.second = nn.Linear(4, 5)
        with torch.no_grad():
            self.second.weight.copy_(self.first.weight)
        self.second.bias = self.first.bias
        if tied:
            self.second.weight = self.first.weight

    def forward(self, x):
        gap = (self.first(x) - self.second(x)).abs().sum(-1)
        return torch.stack([torch.zeros_like(gap), gap], dim=-1)


def test_both_uses_of_a_tied_weight_read_the_same_draw():
    """Every use of a shared parameter computes with the chip's one value of it (100 %
    here on every chip); two equal but separate weights draw apart (0 %)."""
    torch.manual_seed(0)
    x = torch.randn(16, 4)
    batches = [(x, torch.zeros(16, dtype=torch.long))]
    device = GaussianDevice(sigma=1.0)
    tied = TwoUses(tied=True)
    assert list(swimkit.device_weights(tied)) == ["first.weight"]
    assert swimkit.evaluate(tied, batches, device, samples=4).accuracies.tolist() == [100.0] * 4
    plan = swimkit.select(tied, None, method="magnitude", fraction=0.3, chip=device)
    assert plan.names == ["first.weight"]
    planned = swimkit.evaluate(tied, batches, device, plan, samples=4)
    assert planned.accuracies.tolist() == [100.0] * 4
    apart = TwoUses(tied=False)
    assert swimkit.evaluate(apart, batches, device, samples=4).accuracies.tolist() == [0.0] * 4


# --- adaptive chip counts ------------------------------------------------------------------


def test_round_ends_grow_within_bounds():
    for done in (2, 5, 10, 37, 80):
        for half in (0.1, 0.6, 2.0, 40.0, float("inf")):
            end = round_ends(done, half, 0.5, 100)
            assert min(100, done + ROUND_MIN) <= end <= max(done + ROUND_MIN,
                                                            -(-done * ROUND_GROWTH // 1))
            assert end <= 100
    # a spread that needs few more chips asks for few more (at least ROUND_MIN)
    assert round_ends(40, 0.51, 0.5, 100) == 44


def _adaptive_setup():
    model, batches = toy_problem()
    return model, batches, GaussianDevice(sigma=0.5, sigma_verified=0.05)


def test_an_adaptive_run_stops_at_the_first_round_that_meets_the_target():
    model, batches, dm = _adaptive_setup()
    full = swimkit.evaluate(model, batches, dm, samples=60)
    target = 1.5 * ci_half_width(full.accuracies[:30])
    res = swimkit.evaluate(model, batches, dm, samples=60, ci_target=target, min_samples=6)
    n = res.samples
    assert 6 <= n < 60
    # the same chips as the fixed run: chip k depends on (seed, k) only
    assert torch.equal(res.accuracies, full.accuracies[:n])
    assert res.ci_reached == pytest.approx(ci_half_width(res.accuracies))
    assert res.ci_reached <= target
    # ... and no earlier round boundary met the target
    done = 6
    while done < n:
        assert ci_half_width(full.accuracies[:done]) > target
        done = round_ends(done, ci_half_width(full.accuracies[:done]), target, 60)
    assert done == n
    again = swimkit.evaluate(model, batches, dm, samples=60, ci_target=target, min_samples=6)
    assert torch.equal(again.accuracies, res.accuracies)  # deterministic
    data = res.to_dict()
    assert data["samples"] == n and data["ci_target_points"] == target
    assert data["ci_of"] == "mean" and data["ci_reached_points"] == res.ci_reached
    back = swimkit.MCResult.from_dict(data)
    assert (back.ci_target, back.ci_of, back.ci_reached) == (target, "mean", res.ci_reached)


def test_an_unreachable_target_uses_every_chip():
    model, batches, dm = _adaptive_setup()
    res = swimkit.evaluate(model, batches, dm, samples=15, ci_target=1e-6, min_samples=4)
    assert res.samples == 15 and res.ci_reached > 1e-6


def test_the_paired_rule_stops_on_the_gap_to_the_reference():
    model, batches, dm = _adaptive_setup()
    reference = swimkit.evaluate(model, batches, dm, "all", samples=80)
    alone = swimkit.evaluate(model, batches, dm, "none", samples=80)
    gaps = alone.accuracies - reference.accuracies
    target = 1.2 * ci_half_width(gaps[:40])
    paired = swimkit.evaluate(model, batches, dm, "none", samples=80, ci_target=target,
                              min_samples=8, against=reference)
    n = paired.samples
    assert paired.ci_of == "paired difference"
    assert paired.ci_reached == pytest.approx(ci_half_width(gaps[:n]))
    assert paired.ci_reached <= target
    assert torch.equal(paired.accuracies, alone.accuracies[:n])
    gap = paired.paired_difference(reference)  # over the chips both have
    assert gap.samples == n and torch.equal(gap.accuracies, gaps[:n])


@pytest.mark.parametrize("kwargs,message", [
    (dict(ci_target=float("nan")), "ci_target must be a number of points >= 0"),
    (dict(ci_target=0.5, min_samples=1), "min_samples must be an integer >= 2"),
    (dict(against="all"), "give ci_target as well"),
])
def test_bad_stopping_inputs_are_refused(kwargs, message):
    model, batches, dm = _adaptive_setup()
    with pytest.raises(swimkit.SwimkitError, match=message):
        swimkit.evaluate(model, batches, dm, samples=10, **kwargs)


def test_a_reference_that_cannot_be_paired_is_refused():
    model, batches, dm = _adaptive_setup()
    short = swimkit.evaluate(model, batches, dm, "all", samples=5)
    with pytest.raises(swimkit.SwimkitError, match="against has 5 chips but this run may use 20"):
        swimkit.evaluate(model, batches, dm, samples=20, ci_target=0.5, against=short)
    other = swimkit.evaluate(model, batches, dm, "all", samples=20, seed=1)
    with pytest.raises(swimkit.SwimkitError, match="seed 1, this run with 0"):
        swimkit.evaluate(model, batches, dm, samples=20, ci_target=0.5, against=other)


# --- any number of processes -----------------------------------------------------------------


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
        res = swimkit.evaluate(model, batches, GaussianDevice(sigma=1.0), samples=7, seed=11)
        queue.put((rank, res.accuracies.tolist()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_same_result_on_any_number_of_processes():
    model, batches = toy_problem()
    single = swimkit.evaluate(model, batches, GaussianDevice(sigma=1.0), samples=7, seed=11)
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
