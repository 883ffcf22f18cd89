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
    """A sweep on the GPU trains, plans every method at its speedup and evaluates its
    chips."""
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


def test_chips_on_the_gpu_read_nothing_back_per_batch_and_stack_exactly():
    """Counting a chip's correct predictions syncs with the host nowhere, and stacked
    chips count as one by one."""
    import swimkit
    from swimkit.chips import ChipRunner

    model = swimkit.build_model("qlenet").cuda()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 1, 28, 28, generator=gen), torch.randint(0, 10, (512,), generator=gen)
    data = [(x[i:i + 128].cuda(), y[i:i + 128].cuda()) for i in range(0, 512, 128)]
    model.train()
    model(data[0][0])
    model.eval()
    values = {n: w.value.detach() for n, w in swimkit.device_weights(model).items()}
    chips = [{n: v + 0.1 * torch.randn_like(v) for n, v in values.items()} for _ in range(6)]
    counts = {}
    for per_pass in (1, 4):
        with ChipRunner(model, data, values, chips_per_pass=per_pass) as runner:
            counts[per_pass] = runner.correct(chips)  # warm-up: the quantizers' ranges read
            torch.cuda.set_sync_debug_mode("error")
            try:
                runner._count(values if per_pass == 1 else
                              {n: torch.stack([c[n] for c in chips[:4]]) for n in values})
            finally:
                torch.cuda.set_sync_debug_mode("default")
    assert counts[1] == counts[4]
    dm = swimkit.GaussianDevice(sigma=0.3)
    auto = swimkit.evaluate(model, data, dm, samples=12, ci_target=0.5, min_samples=4)
    assert auto.meta["chips_per_pass"] > 1
    one = swimkit.evaluate(model, data, dm, samples=12, ci_target=0.5, min_samples=4,
                           chips_per_pass=1)
    assert torch.equal(auto.accuracies, one.accuracies)
