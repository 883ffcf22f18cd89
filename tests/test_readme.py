"""The README shows the registries' tables as the code generates them: each table whole,
and each entry of each registry as its row (so an entry added later is checked too)."""

from __future__ import annotations

from pathlib import Path

import pytest

from swimkit.reports import registry_tables

README = Path(__file__).resolve().parents[1] / "README.md"
TABLES = registry_tables()


@pytest.mark.parametrize("name", list(TABLES))
def test_readme_tables_are_the_registries(name):
    """Every registry's table appears in the README verbatim."""
    table = TABLES[name]
    assert table in README.read_text(), (
        f"the README's {name} table is out of date; paste this one:\n{table}")


ROWS = [pytest.param(row, id=f"{name}:{row.split('|')[1].strip()}")
        for name, table in TABLES.items() for row in table.splitlines()[2:]]


@pytest.mark.parametrize("row", ROWS)
def test_every_registry_entry_has_its_row_in_the_readme(row):
    """Each entry's row (name, aliases, help) is a line of the README."""
    assert row in README.read_text().splitlines()


def test_the_tables_cover_every_registry_entry():
    """One row per entry of each registry, nothing more."""
    from swimkit.data import DATASETS
    from swimkit.devices import DEVICE_MODELS
    from swimkit.models import MODELS
    from swimkit.selection import METHODS
    from swimkit.sensitivity import ENGINES

    registries = {"methods": METHODS, "engines": ENGINES, "models": MODELS,
                  "datasets": DATASETS, "device models": DEVICE_MODELS}
    assert set(registries) == set(TABLES)
    for name, registry in registries.items():
        rows = TABLES[name].splitlines()[2:]
        assert [row.split("|")[1].strip() for row in rows] == [f"`{n}`"
                                                               for n in registry.names()]
