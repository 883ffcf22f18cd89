"""The data tests stay off the network, the user's cache and the system's datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from swimkit import data


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, request: pytest.FixtureRequest):
    """Keep tests off the network, the user's cache and (except realdata) /usr/share/datasets."""
    calls: list[tuple[str, Path]] = []

    def no_network(name: str, root: Path) -> None:
        calls.append((name, root))
        raise ConnectionError("no network in tests")

    monkeypatch.setattr(data.locate, "download_with_torchvision", no_network)
    monkeypatch.setattr(data.locate, "DEFAULT_CACHE_DIR", tmp_path / "user-cache")
    if request.node.get_closest_marker("realdata") is None:
        monkeypatch.setattr(data.locate, "SYSTEM_DATA_DIRS", (tmp_path / "system",))
    return calls
