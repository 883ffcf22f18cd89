"""Fixtures of the sensitivity tests."""

from __future__ import annotations

import pytest

from swimkit.sensitivity.swim import registry as rule_registry


@pytest.fixture()
def clean_rules():
    """Rules a test registers are removed afterwards."""
    saved = set(rule_registry.RULES.names())
    yield
    for name in set(rule_registry.RULES.names()) - saved:
        rule_registry.RULES.remove(name)
