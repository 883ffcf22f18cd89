"""The numbers do not move when the code is reshaped: the per-chip accuracies and the plans
of a fixed set of runs, recorded on the code before the chip spec and the declared command
line, come out bit for bit.

``fixtures/recorded_models.pt`` holds a LeNet (2 epochs, sigma_train 0.1 scale-aware) and a
ViT (1 epoch) trained on the real Fashion-MNIST, and its first 256 test images;
``fixtures/recorded_chips.json`` what each run gave: Gaussian devices (no verify, full
verify, swim, allocate, learned), U-SWIM's band, PCM read at 1 s, 1 h, 1 day and 1 year,
stuck cells, multi-level cells, a column-range crossbar of device pairs with 8-bit
converters, and the ViT. Chips are 8 of seed 1; plans are held by a digest of every level.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import swimkit
from swimkit import ChipSpec, Crossbar, build_device_model, build_model
from swimkit.data.batches import normalize

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TIMES = [1.0, 3600.0, 86400.0, 31536000.0]


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads((FIXTURES / "recorded_chips.json").read_text())


@pytest.fixture(scope="module")
def problem() -> dict:
    fx = torch.load(FIXTURES / "recorded_models.pt", map_location="cpu", weights_only=True)
    lenet = build_model("lenet", seed=0)
    lenet.load_state_dict(fx["lenet"])
    vit = build_model("vit", seed=0)
    vit.load_state_dict(fx["vit"])
    x = normalize(fx["images"], (0.0,), (1.0,))
    y = fx["labels"].long()
    test = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    train = [(x[:128], y[:128]), (x[128:], y[128:])]
    return {"lenet": lenet.eval(), "vit": vit.eval(), "test": test, "train": train}


def digest(plan: swimkit.Plan) -> dict:
    h = hashlib.sha256()
    for name, levels in plan.levels.items():
        h.update(f"{name}{tuple(levels.shape)}".encode())
        h.update(levels.cpu().contiguous().numpy().tobytes())
    return {"levels": h.hexdigest(), "devices_verified": plan.devices_verified}


def runs(p: dict) -> dict:
    """Each recorded run: (model, chip, plan or "none"/"all", times)."""
    lenet, vit, train = p["lenet"], p["vit"], p["train"]
    swim = swimkit.sensitivity(lenet, train, "swim")
    ggn = swimkit.sensitivity(lenet, train, "ggn")
    gauss = ChipSpec(build_device_model("gaussian", sigma=0.3, sigma_verified=0.03))
    band = ChipSpec(build_device_model("band", sigma=0.3, sigma_verified=0.03, r=3.0))
    pcm = ChipSpec(build_device_model("pcm", compensation=True))
    stuck = ChipSpec(build_device_model("stuck", sigma=0.3, sigma_verified=0.03, low=0.01,
                                        high=0.005))
    cells = ChipSpec(build_device_model("gaussian", levels="pcm", bits_per_device=2))
    pairs = gauss.replace(crossbar=Crossbar(tile_rows=64, tile_columns=64, ranges="column",
                                            signed="pair", dac_bits=8, adc_bits=8))
    vsens = swimkit.sensitivity(vit, train, "swim")

    def allocate(model, sens, chip, speedup, **more):
        return swimkit.select(model, sens, chip=chip, method="allocate", speedup=speedup,
                              **more)

    return {
        "gaussian none": (lenet, gauss, "none", None),
        "gaussian all": (lenet, gauss, "all", None),
        "gaussian swim 10%": (lenet, gauss, swimkit.select(lenet, swim, chip=gauss,
                                                           method="swim", fraction=0.1), None),
        "gaussian allocate 5x": (lenet, gauss, allocate(lenet, ggn, gauss, 5.0), None),
        "gaussian learned 5x": (lenet, gauss, swimkit.select(
            lenet, ggn, chip=gauss, method="learned", speedup=5.0, data=train,
            options={"epochs": 8, "lr": 0.5}, seed=2), None),
        "band allocate 3x": (lenet, band, allocate(lenet, ggn, band, 3.0), None),
        "pcm none": (lenet, pcm, "none", TIMES),
        "pcm allocate 3x planned at 1 day": (lenet, pcm, allocate(lenet, ggn, pcm, 3.0,
                                                                 plan_time=86400.0), TIMES),
        "stuck allocate 3x": (lenet, stuck, allocate(lenet, ggn, stuck, 3.0), None),
        "multilevel allocate 3x": (lenet, cells, allocate(lenet, ggn, cells, 3.0), None),
        "column-pair crossbar 8-bit none": (lenet, pairs, "none", None),
        "column-pair crossbar 8-bit allocate 5x": (lenet, pairs, allocate(lenet, ggn, pairs,
                                                                         5.0), None),
        "vit none": (vit, gauss, "none", None),
        "vit allocate 5x": (vit, gauss, allocate(vit, vsens, gauss, 5.0), None),
        "vit swim 10%": (vit, gauss, swimkit.select(vit, vsens, chip=gauss, method="swim",
                                                    fraction=0.1), None),
    }


@pytest.mark.slow
def test_per_chip_accuracies_and_plans_are_the_recorded_ones(recorded, problem):
    made = runs(problem)
    assert sorted(made) == sorted(recorded)
    for name, (model, chip, plan, times) in made.items():
        found = swimkit.evaluate(model, problem["test"], chip, plan, samples=8, seed=1,
                                 times=times)
        chips = [r.accuracies.tolist() for r in (found if times else [found])]
        assert chips == recorded[name]["chips"], name
        if not isinstance(plan, str):
            assert digest(plan) == recorded[name]["plan"], name
