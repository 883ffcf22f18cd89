"""Resuming a training run (swimkit.resume): bit-identical continuation, and refusing a
folder whose run had other settings, another model, other noise or other data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from toy_training import CountingStuckAt, fit, fresh, same_state, toy, without_time

import swimkit
from swimkit import training
from swimkit.checkpoints import load_checkpoint, plain_state_dict
from swimkit.errors import SwimkitError
from swimkit.resume import MUST_MATCH, UNRECORDED
from swimkit.training import TrainConfig, train


@pytest.mark.slow
def test_resume_continues_bit_identically(tmp_path: Path) -> None:
    """Two epochs, then two more from last.pt: the weights and history of four at once."""
    straight = fit(epochs=4)
    fit(epochs=2, checkpoint_dir=tmp_path)
    # A different initialisation proves the resumed run starts from the checkpoint.
    resumed = fit(init_seed=7, epochs=4, checkpoint_dir=tmp_path)
    assert same_state(resumed.model, straight.model)
    assert without_time(resumed.history) == without_time(straight.history)
    assert resumed.best_accuracy == straight.best_accuracy
    assert resumed.best_epoch == straight.best_epoch


@pytest.mark.slow
def test_resume_after_a_crash_with_noise_and_quantization(tmp_path: Path) -> None:
    """A run stopped after epoch 1 goes on to the weights of an uninterrupted one."""
    options = {"name": "qlenet", "epochs": 3, "sigma_train": 0.5}
    straight = fit(**options)

    def crash_after_epoch_1(line: str) -> None:
        if line.startswith("epoch 1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(**options, checkpoint_dir=tmp_path, log=crash_after_epoch_1)
    assert load_checkpoint(tmp_path / "last.pt", fresh("qlenet"))[1]["extra"]["epoch"] == 1
    resumed = fit(**options, init_seed=3, checkpoint_dir=tmp_path)
    assert same_state(resumed.model, straight.model)
    assert without_time(resumed.history) == without_time(straight.history)


def test_finished_run_returns_without_training(tmp_path: Path, monkeypatch) -> None:
    """A folder that holds every epoch asked for returns its run without training."""
    done = fit(epochs=2, checkpoint_dir=tmp_path)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(training, "_train_epoch", no_training)
    again = fit(init_seed=5, epochs=2, checkpoint_dir=tmp_path)
    assert without_time(again.history) == without_time(done.history)
    assert again.history == done.history  # stored as is, times included
    assert (again.best_epoch, again.last_path) == (done.best_epoch, done.last_path)
    assert same_state(again.model, done.model)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"lr": 3e-3}, "lr"),
        ({"seed": 1}, "seed"),
        ({"batch_size": 16}, "batch_size"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"sigma_train": 0.1}, "sigma_train"),
    ],
)
def test_resume_refuses_changed_settings(tmp_path: Path, change: dict, key: str) -> None:
    """Another setting than the stored run's: one line naming it, the model untouched."""
    fit(epochs=1, checkpoint_dir=tmp_path)
    model = fresh(seed=9)
    before = {k: v.clone() for k, v in plain_state_dict(model).items()}
    config = TrainConfig(**{"epochs": 2, "batch_size": 32, **change})
    with pytest.raises(SwimkitError, match="resume=False") as err:
        train(model, toy(), config, model_name="lenet", checkpoint_dir=tmp_path)
    assert key in str(err.value) and "checkpoint_dir" in str(err.value)
    assert "--out" in err.value.command_line and "--no-resume" not in err.value.command_line
    assert all(torch.equal(before[k], v) for k, v in plain_state_dict(model).items())


def test_resume_refuses_another_model(tmp_path: Path) -> None:
    """A folder of a LeNet run does not go on as a quantized LeNet."""
    fit(epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(SwimkitError, match="resume=False"):
        fit("qlenet", epochs=2, checkpoint_dir=tmp_path)


def test_no_resume_starts_over(tmp_path: Path) -> None:
    """resume=False overwrites the folder with a fresh run."""
    fit(epochs=1, checkpoint_dir=tmp_path, seed=1)
    result = fit(epochs=1, checkpoint_dir=tmp_path, resume=False)
    assert same_state(result.model, fit(epochs=1).model)
    _, info = load_checkpoint(tmp_path / "last.pt", fresh())
    assert info["extra"]["config"]["seed"] == 0


def test_resume_refuses_other_noise(tmp_path: Path) -> None:
    """The same sigma_train drawn from another device model is other noise."""
    fit(epochs=1, sigma_train=0.2, chip=CountingStuckAt(0.0), checkpoint_dir=tmp_path)
    with pytest.raises(SwimkitError, match="holds a run with model=.*stuck-at.* but this run "
                       "asks for model=.*gaussian"):
        fit(epochs=2, sigma_train=0.2, chip=swimkit.GaussianDevice(), checkpoint_dir=tmp_path)


def test_scale_aware_training_resumes_only_as_such(tmp_path: Path) -> None:
    """A scale-aware run does not go on as a plain one."""
    fit(epochs=1, sigma_train=0.3, scale_aware=True, checkpoint_dir=tmp_path)
    with pytest.raises(SwimkitError, match="scale_aware"):
        fit(epochs=2, sigma_train=0.3, checkpoint_dir=tmp_path)


# --------------------------------------------------------------------------- data


@pytest.mark.parametrize(("other", "named"), [(toy(96, 64), "train_images=128"),
                                              (toy(128, 32), "test_images=64")],
                         ids=["train", "test"])
def test_resuming_on_other_data_is_refused(tmp_path: Path, other, named: str) -> None:
    """Another train limit (or test set) than the stored run's: one line naming the
    data, and nothing of the folder changes."""
    fit(epochs=1, checkpoint_dir=tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(SwimkitError) as err:
        fit(epochs=2, dataset=other, checkpoint_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message and f"holds a run with {named}, but" in message
    assert "resume=False" in message
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_checkpoint_from_before_the_data_was_recorded_still_resumes(tmp_path: Path) -> None:
    """A last.pt whose settings lack "data" (written by an earlier release) goes on, to
    the weights of an uninterrupted run."""
    assert "data" in MUST_MATCH and "data" in UNRECORDED
    fit(epochs=1, checkpoint_dir=tmp_path)
    path = tmp_path / "last.pt"
    raw = torch.load(path, weights_only=False)
    del raw["extra"]["settings"]["data"]
    torch.save(raw, path)
    resumed = fit(init_seed=4, epochs=2, checkpoint_dir=tmp_path)
    straight = fit(epochs=2)
    assert same_state(resumed.model, straight.model)
    assert without_time(resumed.history) == without_time(straight.history)


def test_a_checkpoint_from_before_distillation_still_resumes(tmp_path: Path) -> None:
    """A run without distillation records no distillation settings, as an earlier
    release did not: such a last.pt goes on, to the weights of an uninterrupted run, and
    a run that asks for distillation does not go on from it."""
    fit(epochs=1, checkpoint_dir=tmp_path)
    path = tmp_path / "last.pt"
    raw = torch.load(path, weights_only=False)
    recorded = raw["extra"]["settings"]["train"]
    assert "distill" not in recorded and "distill_temperature" not in recorded
    resumed = fit(init_seed=4, epochs=2, checkpoint_dir=tmp_path)
    assert same_state(resumed.model, fit(epochs=2).model)
    with pytest.raises(SwimkitError, match="holds a run with teacher=None, but this run asks"):
        fit(epochs=3, distill=0.5, teacher=fresh(), checkpoint_dir=tmp_path)
