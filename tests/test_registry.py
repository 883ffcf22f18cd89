"""Registries: names and aliases checked, every entry of every registry holding what the
command line, the help and the README read from it; plugins isolated (a failing one is
skipped with what it registered taken back from every registry, an override announced)."""

from __future__ import annotations

import warnings
from importlib import metadata

import pytest

import swimkit
from swimkit.cli import main
from swimkit.data import DATASETS
from swimkit.devices import DEVICE_MODELS
from swimkit.devices.registry import COMMON
from swimkit.models import MODELS
from swimkit.selection import METHODS
from swimkit.sensitivity import ENGINES

REGISTRIES = {"methods": METHODS, "engines": ENGINES, "models": MODELS,
              "datasets": DATASETS, "device models": DEVICE_MODELS}
ENTRIES = [pytest.param(registry, entry.name, id=f"{what}:{entry.name}")
           for what, registry in REGISTRIES.items() for entry in registry]


@pytest.mark.parametrize("registry,name", ENTRIES)
def test_every_entry_is_found_by_its_name_and_aliases(registry, name):
    """Each entry: its name and every alias, in any case, give it; it has a help line."""
    entry = registry.get(name)
    assert entry.name == name and entry.help.strip()
    for spelling in (name, name.upper(), *entry.aliases, *(a.upper() for a in entry.aliases)):
        assert registry.canonical(spelling) == name


@pytest.mark.parametrize("registry,name", [p for p in ENTRIES
                                           if p.values[0] in (METHODS, ENGINES)])
def test_every_option_flag_names_a_declared_option(registry, name):
    """A method's or an engine's option flags (--probes) set options it declares."""
    entry = registry.get(name)
    for flag, option in entry.option_flags.items():
        assert flag.startswith("--") and option in entry.options, (flag, option)


@pytest.mark.parametrize("name", DEVICE_MODELS.names())
def test_no_device_model_option_is_named_like_a_common_setting(name):
    """A device model's options and the common settings (sigma, ...) never share a name."""
    entry = DEVICE_MODELS.get(name)
    assert not set(entry.options) & set(COMMON)
    assert set(entry.settings) <= set(COMMON)


def last_layer_first(inputs):
    last = list(inputs.normalised)[-1]
    return {k: w.abs() + (10.0 if k == last else 0.0) for k, w in inputs.normalised.items()}


def test_names_are_checked():
    """A name registered twice, an alias taken by another entry, a score that is not
    callable: each refused by name."""
    swimkit.register_method("lastfirst", last_layer_first, needs_sensitivity=False)
    try:
        with pytest.raises(swimkit.SwimkitError, match="already registered"):
            swimkit.register_method("lastfirst", last_layer_first)
        with pytest.raises(swimkit.SwimkitError, match="already taken by 'swim'"):
            swimkit.register_method("mine", last_layer_first, aliases=("SM",))
        with pytest.raises(swimkit.SwimkitError, match="must be callable"):
            swimkit.register_method("broken", None)
    finally:
        METHODS.remove("lastfirst")
    assert "mine" not in METHODS and "broken" not in METHODS


# --- plugins are isolated -------------------------------------------------------------------


class _Point:
    def __init__(self, name, register):
        self.name, self._register = name, register

    def load(self):
        return self._register


def _plugins(monkeypatch, points, registry=METHODS):
    real = metadata.entry_points
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: points
                        if group == registry.entry_point_group else real(group=group))
    monkeypatch.setattr(registry, "_plugins_loaded", False)


def test_a_failing_plugin_is_skipped_with_a_warning_and_the_others_load(monkeypatch):
    """A plugin that raises or exits is named in a warning and skipped, with what it had
    registered taken back; the others and the built-ins load; an override is announced."""
    def broken():
        swimkit.register_method("half-done", lambda i: i.normalised, needs_sensitivity=False)
        raise RuntimeError("boom")

    def exits():
        raise SystemExit(7)

    def fine():
        swimkit.register_method("fine", lambda i: i.normalised, needs_sensitivity=False)

    def override():
        swimkit.register_method("magnitude", lambda i: i.normalised, needs_sensitivity=False,
                                replace=True)

    _plugins(monkeypatch, [_Point("broken", broken), _Point("exits", exits),
                           _Point("fine", fine)])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            names = METHODS.names()
        assert "fine" in names and "half-done" not in names and "swim" in names
        said = " ".join(str(w.message) for w in caught)
        assert "'broken'" in said and "boom" in said and "'exits'" in said
    finally:
        if "fine" in METHODS:
            METHODS.remove("fine")
    saved = dict(METHODS._entries), dict(METHODS._lookup)
    _plugins(monkeypatch, [_Point("override", override)])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            METHODS.names()
        assert any("replaces the selection method 'magnitude'" in str(w.message)
                   for w in caught)
    finally:
        METHODS._entries, METHODS._lookup = saved


def test_a_failed_plugin_is_rolled_back_from_every_registry(monkeypatch):
    """A device-model plugin that registered a method, an engine and a model, then
    failed: none of them is left behind, in any registry, and the built-ins are intact."""
    from swimkit import register_device_model

    before = {what: registry.names() for what, registry in REGISTRIES.items()}

    def partial():
        swimkit.register_method("plugged-method", last_layer_first, needs_sensitivity=False)
        swimkit.register_model("plugged-model", lambda: None, dataset="fashion-mnist",
                               input_shape=(1, 28, 28), num_classes=10, help="a toy")
        register_device_model("plugged-device", swimkit.GaussianDevice, help="a toy")
        raise RuntimeError("the plugin failed after registering")

    _plugins(monkeypatch, [_Point("partial", partial)], DEVICE_MODELS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = DEVICE_MODELS.names()
    assert "plugged-device" not in names
    assert "'partial'" in " ".join(str(w.message) for w in caught)
    assert "plugged-method" not in METHODS and "plugged-model" not in MODELS
    assert {what: registry.names() for what, registry in REGISTRIES.items()} == before


def test_the_command_line_survives_a_plugin_that_exits(monkeypatch, capsys):
    """A plugin calling sys.exit while registering does not end `swimkit --help`."""
    _plugins(monkeypatch, [_Point("exits", lambda: (_ for _ in ()).throw(SystemExit(7)))])
    with pytest.raises(SystemExit) as ended:
        main(["run", "--help"])
    assert ended.value.code == 0  # argparse's help exit, not the plugin's 7
    assert "warning: plugin 'exits'" in capsys.readouterr().err
