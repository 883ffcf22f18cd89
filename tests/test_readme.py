"""The README shows the registries' tables as the code generates them."""

from __future__ import annotations

from pathlib import Path

import pytest

from swimkit.reports import registry_tables

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("name", ["methods", "engines", "models", "datasets", "device models"])
def test_readme_tables_are_the_registries(name):
    table = registry_tables()[name]
    assert table in README.read_text(), (
        f"the README's {name} table is out of date; paste this one:\n{table}")
