"""The aihwkit interop without aihwkit: the models are registered all the same and say how
to install it, nothing imports it until asked, and the checkpoint-reader hook the interop
reads aihwkit files through (tests/interop/test_aihwkit.py needs aihwkit)."""

from __future__ import annotations

import sys

import pytest
import torch

import swimkit
import swimkit.checkpoints
from swimkit.devices import build_device_model


def test_without_aihwkit_a_model_names_the_install_line(monkeypatch):
    for name in [m for m in sys.modules if m == "aihwkit" or m.startswith("aihwkit.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "aihwkit", None)
    for model in ("aihwkit-pcm", "aihwkit-reram-wan", "aihwkit-reram-cmo"):
        with pytest.raises(swimkit.SwimkitError, match=r'pip install "swimkit\[aihwkit\]"'):
            build_device_model(model)
    assert "aihwkit-pcm" in swimkit.devices.DEVICE_MODELS  # registered all the same


def test_swimkit_its_registries_and_the_interop_package_do_not_import_aihwkit():
    import subprocess

    code = ("import sys, swimkit, swimkit.interop.aihwkit\n"
            "from swimkit.checkpoints import CHECKPOINT_READERS\n"
            "swimkit.devices.DEVICE_MODELS.names(); list(CHECKPOINT_READERS)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'aihwkit', "
            "'aihwkit_lightning'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_checkpoint_readers_are_asked_before_the_reference_format(tmp_path):
    """The core hook the interop reads aihwkit files through: a registered reader gets what
    torch.load read, and a file it does not claim goes on to the other formats."""
    from swimkit.checkpoints import CHECKPOINT_READERS, register_checkpoint_reader

    seen = []

    def read(obj, path, model, model_name):
        seen.append(path.name)
        if "marker" not in obj:
            return None
        built = swimkit.build_model("lenet", seed=0)
        return built, {"format": "marked", "path": str(path), "model_name": "lenet"}

    register_checkpoint_reader("marked", read)
    try:
        marked, plain = tmp_path / "marked.pt", tmp_path / "plain.pt"
        torch.save({"marker": torch.zeros(1)}, marked)
        torch.save(swimkit.build_model("lenet", seed=0).state_dict(), plain)
        assert swimkit.checkpoints.load_checkpoint(marked)[1]["format"] == "marked"
        assert swimkit.checkpoints.load_checkpoint(plain, model_name="lenet")[1][
            "format"] == "reference"
        assert seen == ["marked.pt", "plain.pt"]
    finally:
        CHECKPOINT_READERS.remove("marked")


