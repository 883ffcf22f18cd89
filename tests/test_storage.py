"""Atomic writes: whole files or none, the same bytes for the same object, clear errors."""

from __future__ import annotations

import errno

import pytest
import torch

from swimkit import SwimkitError
from swimkit.storage import atomic_save, atomic_write, atomic_write_text


def test_the_same_object_saved_twice_gives_the_same_bytes(tmp_path):
    obj = {"kind": "x", "w": torch.arange(10.0)}
    first, second = atomic_save(obj, tmp_path / "a.pt"), atomic_save(obj, tmp_path / "b.pt")
    assert first.read_bytes() == second.read_bytes()
    assert torch.equal(torch.load(first, weights_only=True)["w"], obj["w"])


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = atomic_write_text("old", tmp_path / "r.json")

    def disk_full(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SwimkitError, match=r"could not write .*r\.json \(No space left"):
        atomic_write(path, disk_full)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_an_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SwimkitError, match="could not write .*choose a writable output"):
        atomic_write_text("x", blocker / "out" / "r.json")
