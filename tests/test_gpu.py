"""The whole flow on a CUDA GPU (skipped where none is): every tensor stays on one device."""

from __future__ import annotations

import json

import pytest
import torch

from swimkit.cli import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("model,extra", [("lenet", ["--variation", "band:3"]),
                                         ("qlenet", [])])
def test_sweep_on_the_gpu_prices_and_evaluates_every_method(fmnist, tmp_path, model, extra):
    out = tmp_path / model
    code = main(["sweep", "--model", model, "--dataset", "fashion-mnist",
                 "--data-dir", str(fmnist), "--epochs", "1", "--samples", "3",
                 "--sigma", "0.5", "--device", "cuda", "--out", str(out), "--no-progress",
                 "--sigma-train", "0,0.1", "--scale-aware", "both", "--engine", "ggn",
                 "--methods", "swim,allocate,allocate-one,learned", "--speedups", "4",
                 "--learn-epochs", "1", "--within", "5", "--search-steps", "2", *extra])
    assert code == 0
    result = json.loads((out / "sweep.json").read_text())
    assert len(result["models"]) == 3
    for entry in result["models"]:
        for point in entry["points"]:
            assert point["programming"]["speedup"] == pytest.approx(4.0, rel=0.02)
            accuracies = point["accuracy"]["accuracies_percent"]
            assert len(accuracies) == 3 and all(0 <= a <= 100 for a in accuracies)
