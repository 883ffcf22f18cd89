"""Selection: scores, one global threshold, exact counts, budgets, plans on disk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import swimkit
from swimkit.programming import WriteVerify
from swimkit.selection import top_k


@pytest.fixture(scope="module")
def lenet_and_sens(reference):
    model = swimkit.models.LeNet()
    model.load_state_dict(reference["state_dict"])
    sens = swimkit.sensitivity(model, [(reference["x"], reference["y"])])
    return model, sens


def test_reference_verified_set_is_reproduced(lenet_and_sens, reference):
    model, sens = lenet_and_sens
    plan = swimkit.select(model, sens, fraction=reference["mask_p"], method="swim")
    for name, mask in reference["verified"].items():
        assert torch.equal(plan.masks[name], mask), name
    for name, score in reference["score"].items():
        w_hat = model.get_parameter(name).detach() / sens.scale[name]
        ours = 1e6 * sens.combined[name].abs() + w_hat.abs()
        torch.testing.assert_close(ours, score, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("method", ["swim", "second", "magnitude", "random", "uswim",
                                    "variance"])
@pytest.mark.parametrize("fraction", [0.0, 0.013, 0.1, 0.5, 1.0])
def test_exact_count_for_every_method(lenet_and_sens, method, fraction):
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


def test_magnitude_picks_largest_normalised_weights():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.5], [0.1, -2.0]]))
        model[1].weight.copy_(torch.tensor([[0.01, -0.009]]))
    plan = swimkit.select(model, None, fraction=0.5, method="magnitude")
    # normalised: layer0 = [0.5, .25, .05, 1], layer1 = [1, 0.9]: top 3 of 6 are 1, 1, 0.9
    assert plan.masks["0.weight"].tolist() == [[False, False], [False, True]]
    assert plan.masks["1.weight"].tolist() == [[True, True]]


def test_random_is_seeded(lenet_and_sens):
    model, _ = lenet_and_sens
    a = swimkit.select(model, None, fraction=0.1, method="random", seed=1)
    b = swimkit.select(model, None, fraction=0.1, method="random", seed=1)
    c = swimkit.select(model, None, fraction=0.1, method="random", seed=2)
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert any(not torch.equal(a.masks[k], c.masks[k]) for k in a.masks)


def test_variance_ranks_like_second_when_sigma_is_uniform(lenet_and_sens):
    model, sens = lenet_and_sens
    device = swimkit.DeviceModel(sigma=0.3, sigma_verified=0.03)
    for fraction in (0.01, 0.1, 0.37):
        a = swimkit.select(model, sens, fraction=fraction, method="variance", device_model=device)
        b = swimkit.select(model, sens, fraction=fraction, method="second", device_model=device)
        assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)


def test_uswim_weights_by_variation_factor(lenet_and_sens):
    model, sens = lenet_and_sens
    uniform = swimkit.select(model, sens, fraction=0.1, method="uswim")
    swim = swimkit.select(model, sens, fraction=0.1, method="swim")
    assert all(torch.equal(uniform.masks[k], swim.masks[k]) for k in swim.masks)
    band = swimkit.DeviceModel(variation="band:3")
    banded = swimkit.select(model, sens, fraction=0.1, method="uswim", device_model=band)
    assert any(not torch.equal(banded.masks[k], swim.masks[k]) for k in swim.masks)
    # the first release's formula: alpha |S| sigma_i / sigma + |w_hat| (same top set)
    flat, legacy = [], []
    for k, value in model.state_dict().items():
        if k in sens.names:
            w_hat = value / sens.scale[k]
            factor = band.weight_sigma(value, sens.scale[k]) / band.sigma
            legacy.append((1e6 * sens.combined[k].abs() * factor + w_hat.abs()).reshape(-1))
            flat.append(banded.masks[k].reshape(-1))
    legacy_mask = top_k(torch.cat(legacy), int(torch.cat(flat).sum()))
    assert torch.equal(legacy_mask, torch.cat(flat))


def test_top_k_beyond_float_quantile_limit():
    """torch.quantile fails beyond 2^24 elements; the global top-k must not."""
    n = 20_000_000
    scores = torch.rand(n, generator=torch.Generator().manual_seed(0))
    k = round(0.1 * n)
    mask = top_k(scores, k)
    assert int(mask.sum()) == k
    assert float(scores[mask].min()) >= float(scores[~mask].max())


def test_large_model_selection():
    model = nn.Sequential(nn.Linear(4200, 4200, bias=False), nn.Linear(4200, 10, bias=False))
    assert sum(p.numel() for p in model.parameters()) > 2**24
    plan = swimkit.select(model, None, fraction=0.03, method="magnitude")
    assert plan.weights_verified == round(0.03 * plan.weights_total)


def test_speedup_budget(lenet_and_sens):
    model, sens = lenet_and_sens
    device = swimkit.DeviceModel(write_verify=WriteVerify(0.05, max_attempts=100))
    for speedup in (1.0, 2.0, 5.0):
        plan = swimkit.select(model, sens, speedup=speedup, device_model=device)
        assert plan.programming.speedup >= speedup * (1 - 1e-9)
        # one more verified weight would break the budget
        per_weight = plan.programming.time_full_verify_s - plan.programming.time_no_verify_s
        per_weight /= plan.weights_total
        slower = plan.programming.time_plan_s + per_weight
        assert plan.programming.time_full_verify_s / slower < speedup or plan.fraction_verified == 1
    top = swimkit.select(model, sens, speedup=5.0, device_model=device)
    by_fraction = swimkit.select(model, sens, fraction=top.fraction_verified)
    assert all(torch.equal(top.masks[k], by_fraction.masks[k]) for k in top.masks)
    with pytest.raises(swimkit.SwimkitError, match="speedup"):
        swimkit.select(model, sens, speedup=1e6, device_model=device)


def test_time_budget_in_seconds(lenet_and_sens):
    model, sens = lenet_and_sens
    device = swimkit.DeviceModel(write_verify=WriteVerify(0.05, max_attempts=100))
    full = swimkit.select(model, sens, fraction=1.0, device_model=device).programming
    budget = 0.5 * (full.time_no_verify_s + full.time_full_verify_s)
    plan = swimkit.select(model, sens, time_budget=budget, device_model=device)
    assert plan.programming.time_plan_s <= budget
    assert plan.fraction_verified == pytest.approx(0.5, abs=1e-4)


@pytest.mark.parametrize(
    "kwargs,needle",
    [({"fraction": 1.5}, "between 0 and 1"), ({"fraction": -0.1}, "between 0 and 1"),
     ({"fraction": 0.1, "method": "best"}, "unknown selection method"),
     ({"fraction": 0.1, "speedup": 2.0}, "exactly one budget"), ({}, "exactly one budget")],
)
def test_bad_requests(lenet_and_sens, kwargs, needle):
    model, sens = lenet_and_sens
    with pytest.raises(swimkit.SwimkitError, match=needle):
        swimkit.select(model, sens, **kwargs)


def test_sensitivity_needed_for_swim(lenet_and_sens):
    model, _ = lenet_and_sens
    with pytest.raises(swimkit.SwimkitError, match="sensitivit"):
        swimkit.select(model, None, fraction=0.1, method="swim")


def test_plan_save_load_and_npz(lenet_and_sens, tmp_path):
    model, sens = lenet_and_sens
    plan = swimkit.select(model, sens, fraction=0.1,
                          device_model=swimkit.DeviceModel(write_verify=WriteVerify(0.05, 100)))
    plan.save(tmp_path / "plan.pt")
    back = swimkit.Plan.load(tmp_path / "plan.pt")
    assert all(torch.equal(back.masks[k], plan.masks[k]) for k in plan.masks)
    assert back.programming == plan.programming and back.method == "swim"
    plan.export_npz(tmp_path / "plan.npz")
    arrays = np.load(tmp_path / "plan.npz")
    assert set(arrays.files) == {*plan.masks, "menu"}
    assert arrays["menu"].tolist() == [] and plan.menu is None
    for k, mask in plan.masks.items():
        assert arrays[k].dtype == np.uint8 and arrays[k].shape == (*mask.shape, 8)
        assert (arrays[k] == mask.numpy()[..., None]).all()
    with pytest.raises(swimkit.SwimkitError, match="not a swimkit write-verify plan"):
        swimkit.Plan.load(tmp_path / "plan.npz")


def test_exclude_keeps_layers_out_of_the_plan(lenet_and_sens):
    model, sens = lenet_and_sens
    plan = swimkit.select(model, sens, fraction=0.1, method="magnitude", exclude=["conv1", "fc3"])
    assert set(plan.masks) == {"conv2.weight", "fc1.weight", "fc2.weight"}
    assert plan.weights_verified == round(0.1 * plan.weights_total)
    partial = swimkit.sensitivity(model, [(torch.rand(2, 1, 28, 28), torch.tensor([0, 1]))],
                                  exclude=["fc3"])
    with pytest.raises(swimkit.SwimkitError, match="same layers"):
        swimkit.select(model, partial, fraction=0.1, exclude=["conv1"])


def test_scores_cut_at_many_budgets_match_select(lenet_and_sens):
    from swimkit.selection import cut, score

    model, sens = lenet_and_sens
    scores = score(model, sens, "swim")
    for fraction in (0.01, 0.2):
        a = cut(scores, fraction)
        b = swimkit.select(model, sens, fraction=fraction)
        assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
        assert a.programming is not None and a.programming.speedup > 1


@pytest.mark.parametrize("tolerance", [0.1, 0.2])
def test_speedup_of_a_weight_level_plan_at_another_tolerance(lenet_and_sens, tolerance):
    """The speedup is over full verify with the default loop, whatever the plan's tolerance."""
    model, sens = lenet_and_sens
    plan = swimkit.select(model, sens, speedup=5.0, tolerances=[tolerance])
    prog = plan.programming
    assert plan.menu == (tolerance,)
    assert 5.0 * (1 - 1e-9) <= prog.speedup < 5.05
    default = swimkit.select(model, sens, fraction=1.0).programming
    assert prog.time_full_verify_s == pytest.approx(default.time_full_verify_s)
