"""The registry of sensitivity engines (swimkit.sensitivity.engines): every registered
engine, read from the registry, gives finite sensitivities shaped like the weights,
takes its declared options and refuses others."""

from __future__ import annotations

import pytest
import torch
from toys import toy_problem

import swimkit
from swimkit.mapping import device_weights
from swimkit.sensitivity import ENGINES
from swimkit.sensitivity.engines import register_engine

#: A few probes for an engine that takes them: its results' accuracy is not tested here.
QUICK = {"probes": 3}


def declared_options(name: str) -> dict:
    """The engine's declared options at their defaults, with a few probes if it takes
    probes: every option given explicitly."""
    options = dict(ENGINES.get(name).options)
    options.update({k: v for k, v in QUICK.items() if k in options})
    return options


@pytest.mark.parametrize("name", ENGINES.names())
def test_every_engine_gives_finite_sensitivities_shaped_like_the_weights(name: str):
    """With each of its declared options given, an engine returns h and g for every
    device weight, shaped like it and finite, counts every sample, records the options
    it ran with, and leaves the model as it was (in training mode if it was)."""
    model, batches = toy_problem()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    options = declared_options(name)
    sens = swimkit.sensitivity(model, batches, name, options=options)
    weights = device_weights(model)
    assert sens.engine == name and sens.names == list(weights)
    assert sens.samples == sum(len(y) for _, y in batches)
    for key, weight in weights.items():
        for part in (sens.second[key], sens.first[key]):
            assert part.shape == weight.value.shape and bool(torch.isfinite(part).all()), key
        torch.testing.assert_close(sens.scale[key], weight.value.detach().abs().amax())
    assert float(sum(h.abs().sum() for h in sens.second.values())) > 0
    assert sens.meta["options"] == {**ENGINES.get(name).options, **options}
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", ENGINES.names())
def test_every_engine_refuses_an_option_it_does_not_declare(name: str):
    """An undeclared option is one line naming the engine, the option and what it
    takes, before any work."""
    model, batches = toy_problem()
    with pytest.raises(swimkit.SwimkitError) as err:
        swimkit.sensitivity(model, batches, name, options={"no_such_option": 1})
    message = str(err.value)
    declared = ", ".join(ENGINES.get(name).options) or "none"
    assert "\n" not in message
    assert f"engine {name!r} has no option 'no_such_option'; its options: {declared}" in message


@pytest.mark.parametrize("name", ENGINES.names())
def test_every_engine_checks_the_kind_of_its_numeric_options(name: str):
    """A numeric option given as text that is no number is refused by name."""
    numeric = [k for k, v in ENGINES.get(name).options.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    model, batches = toy_problem()
    for option in numeric:
        with pytest.raises(swimkit.SwimkitError, match=f"option {option} of .* must be a "
                                                      "finite number"):
            swimkit.sensitivity(model, batches, name, options={option: "many"})


@pytest.mark.parametrize("name", ENGINES.names())
def test_every_engine_is_described_and_its_flags_name_declared_options(name: str):
    """Each engine has a callable compute and a one-line help; each of its option flags
    is a long flag setting one declared option, no two flags the same option."""
    entry = ENGINES.get(name)
    assert callable(entry.compute) and entry.help and "\n" not in entry.help
    assert isinstance(entry.own_batch, bool)
    for flag, option in entry.option_flags.items():
        assert flag.startswith("--") and option in entry.options, (flag, option)
    assert len(set(entry.option_flags.values())) == len(entry.option_flags)
    assert entry.option_help == (", ".join(f"{k}={v}" for k, v in entry.options.items())
                                 or "-")


def test_a_registered_engine_runs_with_its_options_and_is_removed():
    """An engine from outside gets the weights, the batches and its options, completed
    with its defaults; removed, it is unknown again."""
    seen = {}

    def plain(model, weights, batches, progress=False, **options):
        seen.update(options)
        ones = {k: torch.ones_like(w.value) for k, w in weights.items()}
        return ones, ones, sum(len(y) for _, y in batches)

    register_engine("ones", plain, options={"level": 1.0, "mode": "a"}, help="a test's toy")
    try:
        model, batches = toy_problem()
        sens = swimkit.sensitivity(model, batches, "ones", options={"level": 2.0})
        assert seen == {"level": 2.0, "mode": "a"} and sens.engine == "ones"
        assert sens.samples == 600
        for key, h in sens.second.items():
            torch.testing.assert_close(h, torch.ones_like(h) * sens.scale[key] ** 2)
    finally:
        ENGINES.remove("ones")
    with pytest.raises(swimkit.SwimkitError, match="ones"):
        swimkit.sensitivity(model, batches, "ones")

