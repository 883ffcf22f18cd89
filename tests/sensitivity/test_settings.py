"""The sensitivity step's settings (swimkit.sensitivity.settings): the engine, its typed
options, the pass's batch and limit, and what enters a cache key."""

from __future__ import annotations

import pytest

import swimkit
from swimkit.sensitivity import GRADIENT_BATCH, SensitivitySettings


def test_the_images_are_drawn_in_g_s_batch_whatever_the_pass_runs_at():
    """swim draws its images in SWIM's batch whatever it runs at; the exact engines draw
    them at the batch given."""
    assert SensitivitySettings().loader_batch == GRADIENT_BATCH
    assert SensitivitySettings(batch_size=32).loader_batch == GRADIENT_BATCH
    assert SensitivitySettings(engine="ggn").loader_batch == GRADIENT_BATCH
    assert SensitivitySettings(engine="ggn", batch_size=32).loader_batch == 32


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("batch_size", 0, "batch_size must be an integer >= 1"),
    ("batch_size", 2.5, "batch_size must be an integer >= 1"),
    ("limit", 0, "limit must be an integer >= 1 images"),
    ("engine", "newton", "newton"),
    ("options", {"probes": 0.5, "nope": 1}, "has no option 'nope'"),
])
def test_bad_settings_are_one_line(field: str, value, needle: str):
    """A value out of range, an unknown engine or option: one line naming it."""
    with pytest.raises(swimkit.SwimkitError) as err:
        SensitivitySettings(**{field: value})
    assert "\n" not in str(err.value) and needle in str(err.value)


def test_engine_names_and_options_are_read_as_declared():
    """An engine's alias or case is its name; options from the command line's text are
    typed like their defaults and completed with the others."""
    settings = SensitivitySettings(engine="Hutchinson", options=[("probes", "50")])
    assert settings.engine == "hutchinson" and settings.options == {"probes": 50}
    assert settings.engine_options["probes"] == 50 and "seed" in settings.engine_options
    with pytest.raises(swimkit.SwimkitError, match="option probes of .* must be a finite"):
        SensitivitySettings(engine="hutchinson", options={"probes": "fifty"})


def test_the_pass_batch_enters_no_cache_key():
    """It changes no result, so points and sensitivity files of any pass batch are reused."""
    from swimkit.caches import evaluation_key
    from swimkit.settings import Settings

    default = Settings()
    given = Settings(sensitivity=SensitivitySettings(batch_size=16))
    assert evaluation_key(given) == evaluation_key(default)
    exact = Settings(sensitivity=SensitivitySettings(engine="ggn", batch_size=16))
    assert evaluation_key(exact) != evaluation_key(Settings(sensitivity=SensitivitySettings(
        engine="ggn")))
    assert SensitivitySettings(batch_size=16).key() == SensitivitySettings().key()
    options = SensitivitySettings(engine="hutchinson", options={"probes": 7}).key()
    assert options != SensitivitySettings(engine="hutchinson").key()
