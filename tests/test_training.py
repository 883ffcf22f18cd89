"""Training (swimkit.training): settings, optimizers, learning, reproducibility, the
checkpoints of a run, keyword overrides, plan-aware fine-tuning and refusing to save a
diverged run."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from toy_training import cifar_like, fit, fresh, same_state, toy, without_time

import swimkit
from swimkit import training
from swimkit.checkpoints import load_checkpoint, plain_state_dict
from swimkit.chip import ChipSpec
from swimkit.crossbar import Crossbar
from swimkit.data import preload
from swimkit.errors import SwimkitError
from swimkit.models import build_model
from swimkit.montecarlo import accuracy
from swimkit.plans import Plan
from swimkit.quantization import OutputQuantizer
from swimkit.training import TrainConfig, TrainResult, make_optimizer, train

# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "bad",
    [
        {"epochs": -1},
        {"epochs": 1.5},
        {"batch_size": 0},
        {"lr": 0.0},
        {"lr": -1e-3},
        {"optimizer": "rmsprop"},
        {"momentum": -0.1},
        {"weight_decay": -1.0},
        {"sigma_train": -0.1},
        {"seed": "zero"},
    ],
)
def test_config_rejects_bad_values(bad: dict) -> None:
    """A setting out of range is one line naming it, from TrainConfig and from train()."""
    with pytest.raises(SwimkitError) as err:
        TrainConfig(**bad)
    assert "\n" not in str(err.value)
    assert next(iter(bad)) in str(err.value)
    with pytest.raises(SwimkitError) as err:
        train(fresh(), toy(), **bad)
    assert "\n" not in str(err.value) and next(iter(bad)) in str(err.value)


def test_config_normalises_optimizer_name() -> None:
    """Optimizer names are case-insensitive."""
    assert TrainConfig(optimizer="Adam").optimizer == "adam"


def test_lenet_defaults_to_constant_adam() -> None:
    """LeNet trains with Adam at 1e-3, no weight decay, no schedule."""
    optimizer, scheduler = make_optimizer(fresh("lenet"), TrainConfig(), "lenet")
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    assert optimizer.param_groups[0]["lr"] == 1e-3
    assert optimizer.param_groups[0]["weight_decay"] == 0.0


def test_resnet_defaults_to_sgd_with_cosine() -> None:
    """ResNet-18 trains with SGD (0.01, momentum 0.9, 5e-4) under a cosine schedule."""
    model = build_model("resnet18")
    optimizer, scheduler = make_optimizer(model, TrainConfig(epochs=4), "resnet18")
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.01, 0.9, 5e-4)
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.01)
    assert all(a > b > 0 for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[2] == pytest.approx(0.005)  # half-way down the cosine


def test_explicit_settings_override_the_family() -> None:
    """Explicit optimizer settings win over the family's defaults."""
    config = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.5, weight_decay=0.0)
    optimizer, scheduler = make_optimizer(fresh("lenet"), config, "lenet")
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD) and scheduler is not None
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.5, 0.0)


def test_unnamed_resnet_still_gets_sgd() -> None:
    """Without a registry name a ResNet-18 is recognised by its class."""
    optimizer, _ = make_optimizer(build_model("resnet18"), TrainConfig(), None)
    assert isinstance(optimizer, torch.optim.SGD)


@pytest.mark.slow
def test_tiny_resnet_trains_with_sgd_and_decreasing_lr(monkeypatch) -> None:
    """A ResNet-18 run uses SGD and its learning rate falls from epoch to epoch."""
    built = []

    def spy(*args, **kwargs):
        built.append(make_optimizer(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(training, "make_optimizer", spy)
    result = fit("resnet18", dataset=cifar_like(2), epochs=2, batch_size=2)
    assert isinstance(built[0][0], torch.optim.SGD)
    lrs = [row["lr"] for row in result.history]
    assert lrs[0] == pytest.approx(0.01) and lrs[1] < lrs[0]


# --------------------------------------------------------------------------- the call


def test_keyword_overrides_act_on_a_copy_of_the_settings() -> None:
    """train(model, ds, TrainConfig(...), epochs=1) trains one epoch; the settings given
    stay as they were, and the overrides are what a second run with them gives."""
    config = TrainConfig(epochs=5, batch_size=32, seed=1)
    result = train(fresh(), toy(), config, epochs=1)
    assert [row["epoch"] for row in result.history] == [1]
    assert (config.epochs, config.seed) == (5, 1)
    spelled = train(fresh(), toy(), TrainConfig(epochs=1, batch_size=32, seed=1))
    assert same_state(result.model, spelled.model)


@pytest.mark.parametrize(("keyword", "needle"), [
    ("noise_model", "chip="),
    ("device", "move it first"),
    ("exclude", "placement=Placement(exclude"),
    ("epoch", "its settings (TrainConfig) are"),
])
def test_a_keyword_that_is_no_setting_is_one_line(keyword: str, needle: str) -> None:
    """A keyword train() does not take is refused by name before any work."""
    model = fresh()
    before = copy.deepcopy(plain_state_dict(model))
    with pytest.raises(SwimkitError) as err:
        train(model, toy(), **{keyword: 1})
    message = str(err.value)
    assert "\n" not in message and f"train() has no setting '{keyword}'" in message
    assert needle in message
    assert all(torch.equal(before[k], v) for k, v in plain_state_dict(model).items())


def test_a_settings_object_of_another_group_is_refused() -> None:
    """train() takes a TrainConfig as its settings, nothing else."""
    with pytest.raises(SwimkitError, match="train.. takes a TrainConfig"):
        train(fresh(), toy(), swimkit.SensitivitySettings())


# --------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_training_learns_a_simple_task() -> None:
    """Four epochs on the toy task lower the loss and beat chance by far."""
    result = fit(dataset=toy(256, 128), epochs=4)
    first, last = result.history[0], result.history[-1]
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]
    assert last["train_loss"] < first["train_loss"] - 0.3
    assert last["train_accuracy"] > first["train_accuracy"] + 30
    assert last["test_accuracy"] > 50  # chance is 10%
    assert result.best_accuracy == max(row["test_accuracy"] for row in result.history)
    assert result.last_path is None and result.best_path is None


def test_log_gets_one_line_per_epoch_and_progress_runs() -> None:
    """The log hears one line per epoch; progress bars do not break the run."""
    lines: list[str] = []
    fit(epochs=2, log=lines.append, progress=True)
    assert len(lines) == 2
    assert lines[1].startswith("epoch 2/2") and "test acc" in lines[1]


def test_zero_epochs_trains_nothing() -> None:
    """epochs=0 returns an empty history and leaves the weights as they were."""
    model = fresh()
    before = {k: v.clone() for k, v in plain_state_dict(model).items()}
    result = train(model, toy(), TrainConfig(epochs=0))
    assert result.history == [] and result.best_epoch is None
    assert all(torch.equal(before[k], v) for k, v in plain_state_dict(model).items())


@pytest.mark.slow
def test_same_seed_gives_identical_weights() -> None:
    """Two runs of one seed are bit-identical; another seed differs."""
    a, b = fit(epochs=2), fit(epochs=2)
    assert same_state(a.model, b.model)
    assert without_time(a.history) == without_time(b.history)
    assert not same_state(a.model, fit(epochs=2, seed=1).model)


def test_quantized_model_trains_and_calibrates_outputs() -> None:
    """A quantized model trains in place and its output quantizers get calibrated."""
    model = fresh("qlenet")
    quantizers = [m for m in model.modules() if isinstance(m, OutputQuantizer)]
    assert quantizers and not any(bool(q.calibrated) for q in quantizers)
    result = train(model, toy(), TrainConfig(epochs=2, batch_size=32), model_name="qlenet")
    assert isinstance(result, TrainResult) and result.model is model
    assert all(bool(q.calibrated) and float(q.running_max) > 0 for q in quantizers)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_empty_splits_are_refused() -> None:
    """A dataset without training or test images is one line."""
    data = toy()
    with pytest.raises(SwimkitError, match="training set is empty"):
        train(fresh(), data.subset(n_train=0))
    with pytest.raises(SwimkitError, match="test set is empty"):
        train(fresh(), data.subset(n_test=0))


# --------------------------------------------------------------------------- checkpoints


def test_checkpoints_hold_last_and_best_epoch(tmp_path: Path) -> None:
    """last.pt holds the last epoch and what resuming needs, best.pt the best epoch."""
    data = toy()
    result = fit(dataset=data, epochs=3, checkpoint_dir=tmp_path)
    assert result.last_path == tmp_path / "last.pt"
    assert result.best_path == tmp_path / "best.pt"
    best_model, info = load_checkpoint(result.best_path, fresh())
    extra = info["extra"]
    assert info["model_name"] == "lenet"
    assert extra["epoch"] == result.best_epoch == extra["best_epoch"]
    assert extra["best_accuracy"] == result.best_accuracy
    test_batches = preload(data.test, data, 1000)
    assert accuracy(best_model, test_batches) == pytest.approx(result.best_accuracy)
    last_model, info = load_checkpoint(result.last_path, fresh())
    assert same_state(last_model, result.model)
    assert info["extra"]["epoch"] == 3 and len(info["extra"]["history"]) == 3
    assert info["extra"]["config"]["batch_size"] == 32
    assert info["extra"]["settings"]["data"] == {"dataset": "toy", "train_images": 128,
                                                 "test_images": 64}
    for key in ("optimizer", "scheduler", "rng"):
        assert key in info["extra"]


# --------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("diverging", [{"sigma_train": 1e30}, {"lr": 1e30},
                                       {"optimizer": "sgd", "lr": 1e6}])
def test_a_run_that_diverges_at_once_saves_nothing(tmp_path: Path, diverging: dict) -> None:
    """Noise or a learning rate that drives the weights to NaN: one SwimkitError naming
    the epoch, and no checkpoint at all (no best.pt of NaN weights)."""
    with pytest.raises(SwimkitError) as err:
        fit(epochs=2, checkpoint_dir=tmp_path, **diverging)
    message = str(err.value)
    assert "\n" not in message
    assert "training diverged in epoch 1" in message and "nothing was saved" in message
    assert list(tmp_path.iterdir()) == []


def test_a_diverged_epoch_keeps_the_last_good_checkpoint_byte_for_byte(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Epoch 1 trains well; in epoch 2 the learning rate explodes: the error names the
    kept checkpoint, last.pt and best.pt stay those of epoch 1 byte for byte, and no
    other file appears."""
    real = training._train_epoch

    def exploding(model, data, optimizer, noise, epoch, *args, **kwargs):
        if epoch == 2:
            for group in optimizer.param_groups:
                group["lr"] = 1e30
        return real(model, data, optimizer, noise, epoch, *args, **kwargs)

    monkeypatch.setattr(training, "_train_epoch", exploding)
    saved = {}

    def after_epoch(line: str) -> None:
        if line.startswith("epoch 1/"):
            saved.update({p.name: p.read_bytes() for p in tmp_path.iterdir()})

    with pytest.raises(SwimkitError) as err:
        fit(epochs=3, checkpoint_dir=tmp_path, log=after_epoch)
    message = str(err.value)
    assert "\n" not in message and "training diverged in epoch 2" in message
    assert f"{tmp_path / 'last.pt'} (epoch 1) is kept" in message
    assert set(saved) == {"last.pt", "best.pt"}
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == saved
    model, info = load_checkpoint(tmp_path / "last.pt", fresh())
    assert info["extra"]["epoch"] == 1
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


# --------------------------------------------------------------------------- the chip


def test_plan_aware_training_draws_the_plan_noise() -> None:
    """A plan that verifies every device to a residual of 0 trains like clean training;
    one that verifies none like noise injection at the plain-write sigma."""
    values = {n: p.detach() for n, p in fresh().named_parameters() if n.endswith("weight")}
    exact = swimkit.GaussianDevice(sigma=0.3, sigma_verified=0.0)
    protected = fit(epochs=1, chip=exact, plan=Plan.uniform(values, True))
    assert same_state(protected.model, fit(epochs=1).model)
    exposed = fit(epochs=1, chip=exact, plan=Plan.uniform(values, False))
    assert same_state(exposed.model, fit(epochs=1, sigma_train=0.3).model)
    assert not same_state(exposed.model, protected.model)


def test_a_model_fine_tuned_under_a_plan_loads_without_trust(tmp_path: Path) -> None:
    """The checkpoints of plan-aware fine-tuning record the plan's settings as plain
    data: tensor-only files that load without ``trusted``."""
    chip = ChipSpec(swimkit.GaussianDevice())
    plan = swimkit.select(fresh(), None, method="magnitude", fraction=0.5, chip=chip)
    fit(epochs=1, chip=chip, plan=plan, checkpoint_dir=tmp_path)
    for name in ("best.pt", "last.pt"):
        torch.load(tmp_path / name, weights_only=True)
        model, info = load_checkpoint(tmp_path / name, fresh())
        assert info["extra"]["settings"]["noise"]["plan"]["requested"] == {"fraction": 0.5}


def test_a_plan_for_another_model_is_a_clear_error() -> None:
    """A plan naming weights the model lacks, or of other shapes, is one line."""
    plan = Plan(masks={"fc9.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(SwimkitError, match="names weight 'fc9.weight'"):
        fit(epochs=1, sigma_train=0.1, plan=plan)
    wrong = Plan(masks={"fc1.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(SwimkitError, match="shape"):
        fit(epochs=1, sigma_train=0.1, plan=wrong)


@pytest.mark.parametrize("other", [
    ChipSpec(swimkit.build_device_model("pcm")),
    ChipSpec(swimkit.GaussianDevice(sigma=0.5)),
    ChipSpec(crossbar=Crossbar(ranges="column")),
], ids=["pcm", "other-sigma", "column-ranges"])
def test_fine_tuning_under_a_plan_made_for_another_chip_is_refused(other: ChipSpec) -> None:
    """A plan records its chip: fine-tuning under it on another chip is one line naming
    the first difference, before any work; on its own chip it trains."""
    planned_for = ChipSpec(swimkit.GaussianDevice())
    model = fresh()
    plan = swimkit.select(model, None, method="magnitude", fraction=0.5, chip=planned_for)
    assert plan.chip == planned_for.describe_all()
    before = copy.deepcopy(plain_state_dict(model))
    with pytest.raises(SwimkitError) as err:
        train(model, toy(), epochs=1, batch_size=32, chip=other, plan=plan)
    message = str(err.value)
    assert "\n" not in message and "the plan was made for another chip" in message
    assert "fine-tune under it on the chip it was planned for" in message
    assert all(torch.equal(before[k], v) for k, v in plain_state_dict(model).items())
    done = train(model, toy(), epochs=1, batch_size=32, chip=planned_for, plan=plan)
    assert len(done.history) == 1


# --------------------------------------------------------------------------- distillation


def test_the_distillation_loss_mixes_cross_entropy_and_the_softened_kl() -> None:
    """(1 - w) CE + w T^2 KL(teacher || model) at temperature T, written out by hand."""
    torch.manual_seed(0)
    teacher = torch.nn.Linear(5, 4)
    x, y, logits = torch.randn(8, 5), torch.randint(0, 4, (8,)), torch.randn(8, 4)
    weight, t = 0.3, 2.5
    loss = training.training_loss(TrainConfig(distill=weight, distill_temperature=t),
                                  teacher)(logits, x, y)
    p = torch.softmax(teacher(x) / t, dim=-1)
    q = torch.softmax(logits / t, dim=-1)
    kl = (p * (p.log() - q.log())).sum(dim=-1).mean()
    ce = -torch.log_softmax(logits, dim=-1)[torch.arange(8), y].mean()
    assert torch.allclose(loss, (1 - weight) * ce + weight * t**2 * kl, atol=1e-6)
    plain = training.training_loss(TrainConfig())(logits, x, y)
    assert torch.allclose(plain, ce, atol=1e-6)


def test_pure_distillation_from_its_own_copy_leaves_a_model_as_it_was() -> None:
    """With distill 1 and no noise a model that already gives its teacher's outputs has
    no gradient (up to rounding): plain SGD leaves it where it was, while the labels or
    noise move it; the teacher never moves."""
    teacher = fresh()
    kept = copy.deepcopy(plain_state_dict(teacher))
    sgd = {"epochs": 1, "batch_size": 32, "optimizer": "sgd", "lr": 0.1, "weight_decay": 0.0}

    def moved(**options) -> float:
        model = train(fresh(), toy(), **sgd, **options).model
        return max(float((a - kept[k]).abs().max())
                   for k, a in plain_state_dict(model).items())

    assert moved(distill=1.0, teacher=teacher) < 1e-6
    assert moved(distill=1.0, sigma_train=0.3, teacher=teacher) > 1e-4
    assert moved() > 1e-4
    assert all(torch.equal(kept[k], v) for k, v in plain_state_dict(teacher).items())


def test_distillation_resumes_bit_identically(tmp_path: Path) -> None:
    """A distilling run stopped after an epoch goes on to an uninterrupted run's weights."""
    teacher = fit(epochs=1).model
    options = {"epochs": 2, "distill": 0.5, "sigma_train": 0.2, "scale_aware": True}
    straight = fit(init_seed=2, teacher=copy.deepcopy(teacher), **options)
    fit(init_seed=2, teacher=copy.deepcopy(teacher), checkpoint_dir=tmp_path,
        **{**options, "epochs": 1})
    resumed = fit(init_seed=8, teacher=copy.deepcopy(teacher), checkpoint_dir=tmp_path,
                  **options)
    assert same_state(resumed.model, straight.model)
    assert without_time(resumed.history) == without_time(straight.history)


@pytest.mark.parametrize(("options", "needle"), [
    ({"distill": 0.5}, "needs the clean teacher model"),
    ({"teacher": "self", "distill": 0.5}, "pass a copy"),
    ({"teacher": "copy"}, "only read by distillation"),
    ({"distill": 1.5}, "distill must be a weight between 0 and 1"),
    ({"distill": 0.5, "teacher": "copy", "distill_temperature": 0.0},
     "distill_temperature must be a number > 0"),
])
def test_distillation_without_its_teacher_is_one_line(options: dict, needle: str) -> None:
    model = fresh()
    teachers = {"self": model, "copy": copy.deepcopy(model)}
    if "teacher" in options:
        options = {**options, "teacher": teachers[options["teacher"]]}
    with pytest.raises(SwimkitError, match=needle) as err:
        train(model, toy(), epochs=1, batch_size=32, **options)
    assert "\n" not in str(err.value)
