"""Device-by-device models: the digits a weight is spelled in, and a model of one's own
planned for the time it is read."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch
from chip_draws import layer
from toys import toy_problem

import swimkit
from swimkit.devices import CellModel
from swimkit.devices.cells import cells_of
from swimkit.mapping import effective_weights, layer_ranges
from swimkit.programming import WriteVerify
from swimkit.slicing import BitSlicing


@pytest.mark.parametrize("bits_per_device", [1, 2, 4])
def test_digits_spell_each_weight_code(bits_per_device):
    values, scales = layer()
    slicing = BitSlicing(8, bits_per_device)
    cells = cells_of(values["w"], scales["w"], slicing)
    assert int(cells.digits.max()) <= 2**bits_per_device - 1 and int(cells.digits.min()) >= 0
    code = (cells.digits.double() * slicing.significances()).sum(-1)
    assert float((code - values["w"].abs() / scales["w"]).abs().max()) <= 2.0**-8 + 1e-12
    assert torch.equal(cells.sign, torch.where(values["w"] < 0, -1.0, 1.0).double())


@dataclass(frozen=True)
class Fading(CellModel):
    """A toy device: after programming, cells at the top level lose what programming gave
    them (they re-randomise), so verifying them is wasted on a chip read later."""

    sigma: float = 0.4
    sigma_verified: float = 0.04

    def __post_init__(self) -> None:
        object.__setattr__(self, "slicing", BitSlicing(8, 1))

    @property
    def loop(self) -> WriteVerify:
        return WriteVerify().resolved(self.sigma, self.sigma_verified)

    @property
    def changes_with_time(self) -> bool:
        return True

    def plain_sigmas(self, cells):
        return torch.full(cells.levels.shape, self.sigma, dtype=torch.float64)

    def with_sigma(self, sigma):
        return replace(self, sigma=sigma)

    def evolve(self, cells, programmed, times, generator, reads):
        fresh = cells.digits + self.sigma * torch.randn(programmed.shape, generator=generator,
                                                        dtype=torch.float64)
        return [programmed if t == 0 else torch.where(cells.digits > 0, fresh, programmed)
                for t in times]

    def second_moments(self, cells, variances, time):
        if time == 0:
            return variances
        faded = torch.full_like(variances, self.sigma**2)
        return torch.where((cells.digits > 0).unsqueeze(-1), faded, variances)

    def describe(self):
        return {"kind": "fading", "sigma": self.sigma}


def test_planning_for_a_day_beats_planning_for_now_when_judged_a_day_later():
    """A plan for the time the chip is read wins there, as its predicted loss says."""
    model, batches = toy_problem()
    sens = swimkit.sensitivity(model, batches)
    device = Fading()
    plans = {t: swimkit.select(model, sens, method="allocate", speedup=4.0, chip=device,
                               plan_time=t) for t in (0.0, 86400.0)}
    assert plans[86400.0].meta["plan_time_s"] == 86400.0
    judged = {t: swimkit.evaluate(model, batches, device, plan, samples=40, seed=2,
                                  times=[86400.0])[0] for t, plan in plans.items()}
    gap = judged[86400.0].paired_difference(judged[0.0])
    assert gap.ci95[0] > 0, f"planning for the day should win: {gap}"
    values = effective_weights(plans[0.0].weights_in(model))
    scales = layer_ranges(values)
    h = sens.second
    predicted = {t: sum(float((h[k].double() * v).sum()) for k, v in device.variance(
        values, scales, p, 86400.0).items()) for t, p in plans.items()}
    assert predicted[86400.0] < predicted[0.0]
