"""The steps of the flow: the shared context (its evaluation batch chosen per model and
kept), the plans of no device or every device, and the Monte-Carlo step as the keyword
evaluate with the settings' chips."""

from __future__ import annotations

import pytest
import torch
from toys import toy_problem

import swimkit
from swimkit.plans import Verify
from swimkit.settings import DataSettings, EvaluationSettings, ModelSettings, Settings
from swimkit.steps import Context, monte_carlo


def _tiny_dataset(shape=(1, 28, 28), images=40):
    from swimkit.data import Dataset, Split

    split = Split(torch.zeros(images, *shape, dtype=torch.uint8),
                  torch.zeros(images, dtype=torch.int64))
    return Dataset("tiny", split, split, 10, (0.5,) * shape[0], (0.5,) * shape[0], None)


@pytest.mark.parametrize("model,shape,chosen", [("lenet", (1, 28, 28), 256),
                                                ("resnet18", (3, 32, 32), 16)])
def test_the_evaluation_batch_is_chosen_per_model_and_kept(model, shape, chosen):
    """Without a test batch size the context chooses one per model and records it in its
    own copy of the settings (what caches and logs see); one given is kept."""
    settings = Settings(model=ModelSettings(name=model))
    ctx = Context(settings, _tiny_dataset(shape), print)
    assert ctx.settings.data.test_batch_size == chosen  # what caches and logs see
    assert [len(x) for x, _ in ctx.test_batches] == [min(chosen, 40 - i)
                                                    for i in range(0, 40, chosen)]
    assert settings.data.test_batch_size is None  # the caller's settings as given
    given = Settings(model=ModelSettings(name=model), data=DataSettings(test_batch_size=3))
    assert Context(given, _tiny_dataset(shape), print).settings.data.test_batch_size == 3


def test_verify_is_the_plan_of_no_device_or_every_device():
    """Verify.of reads None, "none" and "all" in any case, and refuses anything else."""
    assert Verify.of(None) is Verify.NONE and Verify.of("ALL") is Verify.ALL
    assert Verify.ALL == "all" and f"{Verify.NONE}" == "none"
    with pytest.raises(swimkit.SwimkitError, match="plan must be a Plan, 'none' or 'all'"):
        Verify.of("some")


def test_the_steps_monte_carlo_is_the_keyword_evaluate_with_the_evaluation_settings():
    """monte_carlo(settings) evaluates the settings' chip with the settings' chips: the
    same accuracies as evaluate() given them by keyword; not adaptive: every chip."""
    model, batches = toy_problem()
    settings = Settings(evaluation=EvaluationSettings(samples=12, seed=3, ci_target=0.5,
                                                      min_samples=4))
    stepped = monte_carlo(model, batches, Verify.NONE, settings)
    keyword = swimkit.evaluate(model, batches, settings.chip, "none", samples=12, seed=3,
                               ci_target=0.5, min_samples=4)
    assert len(stepped) == 1 and torch.equal(stepped[0].accuracies, keyword.accuracies)
    assert stepped[0].ci_reached == keyword.ci_reached
    full = monte_carlo(model, batches, Verify.ALL, settings, adaptive=False)[0]
    assert full.samples == 12 and full.ci_target is None
