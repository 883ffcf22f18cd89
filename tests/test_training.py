"""Training: learning, reproducibility, exact resume, checkpoints, noise injection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from swimkit import training
from swimkit.checkpoints import load_checkpoint, plain_state_dict
from swimkit.data import Dataset, Split, preload
from swimkit.errors import SwimkitError
from swimkit.models import build_model
from swimkit.montecarlo import accuracy
from swimkit.quantization import OutputQuantizer
from swimkit.training import TrainConfig, TrainResult, make_optimizer, train


def patterns(n: int, seed: int, channels: int = 1, size: int = 28) -> Split:
    """Noise images with a bright block whose position is the label (learnable quickly)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 60, (n, channels, size, size), generator=g, dtype=torch.uint8)
    rows, cols = size // 2 - 4, size // 5
    for k in range(10):
        r, c = divmod(k, 5)
        top, left = 2 + r * rows, c * cols
        images[labels == k, :, top : top + 8, left : left + cols] = 255
    return Split(images, labels)


def toy(n_train: int = 128, n_test: int = 64) -> Dataset:
    """A tiny MNIST-like dataset (1x28x28, 10 classes, no augmentation)."""
    return Dataset("toy", patterns(n_train, 0), patterns(n_test, 1), 10, (0.0,), (1.0,), None)


def cifar_like(n: int = 4) -> Dataset:
    """A tiny CIFAR-like dataset (3x32x32, with the crop/flip augmentation)."""
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    train_split, test_split = patterns(n, 2, 3, 32), patterns(n, 3, 3, 32)
    return Dataset("toy-cifar", train_split, test_split, 10, mean, std, "crop_flip")


def fresh(name: str = "lenet", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name)


def fit(name: str = "lenet", init_seed: int = 0, dataset: Dataset | None = None, **kwargs):
    """Train a fresh model; ``kwargs`` split between TrainConfig and train()."""
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in TrainConfig.__dataclass_fields__}
    options.setdefault("batch_size", 32)
    config = TrainConfig(**options)
    return train(fresh(name, init_seed), dataset or toy(), config, model_name=name, **kwargs)


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = plain_state_dict(a), plain_state_dict(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


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
    with pytest.raises(SwimkitError) as err:
        TrainConfig(**bad)
    assert "\n" not in str(err.value)
    assert next(iter(bad)) in str(err.value)


def test_config_normalises_optimizer_name() -> None:
    assert TrainConfig(optimizer="Adam").optimizer == "adam"


def test_lenet_defaults_to_constant_adam() -> None:
    optimizer, scheduler = make_optimizer(fresh("lenet"), TrainConfig(), "lenet")
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    assert optimizer.param_groups[0]["lr"] == 1e-3
    assert optimizer.param_groups[0]["weight_decay"] == 0.0


def test_resnet_defaults_to_sgd_with_cosine() -> None:
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
    config = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.5, weight_decay=0.0)
    optimizer, scheduler = make_optimizer(fresh("lenet"), config, "lenet")
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD) and scheduler is not None
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.5, 0.0)


def test_unnamed_resnet_still_gets_sgd() -> None:
    optimizer, _ = make_optimizer(build_model("resnet18"), TrainConfig(), None)
    assert isinstance(optimizer, torch.optim.SGD)


def test_tiny_resnet_trains_with_sgd_and_decreasing_lr(monkeypatch) -> None:
    built = []

    def spy(*args, **kwargs):
        built.append(make_optimizer(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(training, "make_optimizer", spy)
    result = fit("resnet18", dataset=cifar_like(2), epochs=2, batch_size=2)
    assert isinstance(built[0][0], torch.optim.SGD)
    lrs = [row["lr"] for row in result.history]
    assert lrs[0] == pytest.approx(0.01) and lrs[1] < lrs[0]


# --------------------------------------------------------------------------- learning


def test_training_learns_a_simple_task() -> None:
    result = fit(dataset=toy(256, 128), epochs=4)
    first, last = result.history[0], result.history[-1]
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]
    assert last["train_loss"] < first["train_loss"] - 0.3
    assert last["train_accuracy"] > first["train_accuracy"] + 30
    assert last["test_accuracy"] > 50  # chance is 10%
    assert result.best_accuracy == max(row["test_accuracy"] for row in result.history)
    assert result.last_path is None and result.best_path is None


def test_log_gets_one_line_per_epoch_and_progress_runs() -> None:
    lines: list[str] = []
    fit(epochs=2, log=lines.append, progress=True)
    assert len(lines) == 2
    assert lines[1].startswith("epoch 2/2") and "test acc" in lines[1]


def test_zero_epochs_trains_nothing() -> None:
    model = fresh()
    before = {k: v.clone() for k, v in plain_state_dict(model).items()}
    result = train(model, toy(), TrainConfig(epochs=0))
    assert result.history == [] and result.best_epoch is None
    assert all(torch.equal(before[k], v) for k, v in plain_state_dict(model).items())


def test_same_seed_gives_identical_weights() -> None:
    a, b = fit(epochs=2), fit(epochs=2)
    assert same_state(a.model, b.model)
    assert without_time(a.history) == without_time(b.history)
    assert not same_state(a.model, fit(epochs=2, seed=1).model)


# --------------------------------------------------------------------------- checkpoints


def test_resume_continues_bit_identically(tmp_path: Path) -> None:
    straight = fit(epochs=4)
    fit(epochs=2, checkpoint_dir=tmp_path)
    # A different initialisation proves the resumed run starts from the checkpoint.
    resumed = fit(init_seed=7, epochs=4, checkpoint_dir=tmp_path)
    assert same_state(resumed.model, straight.model)
    assert without_time(resumed.history) == without_time(straight.history)
    assert resumed.best_accuracy == straight.best_accuracy
    assert resumed.best_epoch == straight.best_epoch


def test_resume_after_a_crash_with_noise_and_quantization(tmp_path: Path) -> None:
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


def test_checkpoints_hold_last_and_best_epoch(tmp_path: Path) -> None:
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
    for key in ("optimizer", "scheduler", "rng"):
        assert key in info["extra"]


def test_finished_run_returns_without_training(tmp_path: Path, monkeypatch) -> None:
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
    fit(epochs=1, checkpoint_dir=tmp_path)
    with pytest.raises(SwimkitError, match="resume=False"):
        fit("qlenet", epochs=2, checkpoint_dir=tmp_path)


def test_no_resume_starts_over(tmp_path: Path) -> None:
    fit(epochs=1, checkpoint_dir=tmp_path, seed=1)
    result = fit(epochs=1, checkpoint_dir=tmp_path, resume=False)
    assert same_state(result.model, fit(epochs=1).model)
    _, info = load_checkpoint(tmp_path / "last.pt", fresh())
    assert info["extra"]["config"]["seed"] == 0


# --------------------------------------------------------------------------- noise injection


def test_noise_injection_changes_training_and_leaves_plain_parameters(monkeypatch) -> None:
    built = []

    def spy(*args, **kwargs):
        built.append(make_optimizer(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(training, "make_optimizer", spy)
    model = fresh()
    names_before = [name for name, _ in model.named_parameters()]
    params_before = list(model.parameters())
    result = train(model, toy(), TrainConfig(epochs=2, batch_size=32, sigma_train=0.3))
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert [name for name, _ in model.named_parameters()] == names_before
    assert all(a is b for a, b in zip(model.parameters(), params_before, strict=True))
    held = [p for group in built[0][0].param_groups for p in group["params"]]
    assert all(a is b for a, b in zip(held, params_before, strict=True))
    clean = fit(epochs=2)
    assert not same_state(result.model, clean.model)
    assert same_state(result.model, fit(epochs=2, sigma_train=0.3).model)  # seeded noise


def test_noise_reaches_the_forward() -> None:
    clean = fit(epochs=1)
    noisy = fit(epochs=1, sigma_train=50.0)
    assert noisy.history[0]["train_loss"] > 3 * clean.history[0]["train_loss"]


def test_quantized_model_trains_and_calibrates_outputs() -> None:
    model = fresh("qlenet")
    quantizers = [m for m in model.modules() if isinstance(m, OutputQuantizer)]
    assert quantizers and not any(bool(q.calibrated) for q in quantizers)
    result = train(model, toy(), TrainConfig(epochs=2, batch_size=32), model_name="qlenet")
    assert isinstance(result, TrainResult) and result.model is model
    assert all(bool(q.calibrated) and float(q.running_max) > 0 for q in quantizers)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


class CountingStuckAt:
    """A device model from outside swimkit: weights stuck at zero with probability p."""

    from swimkit.slicing import BitSlicing

    slicing = BitSlicing(8, 1)

    def __init__(self, p: float) -> None:
        self.p = p
        self.draws = 0

    def with_sigma(self, sigma):
        """sigma_train sets this model's stuck probability."""
        return CountingStuckAt(sigma)

    def sampler(self, values, scales, plan=None, times=(0.0,)):
        def draw(generator):
            self.draws += 1
            chip = {k: -v * (torch.rand(v.shape, generator=generator, device=v.device) < self.p)
                    for k, v in values.items()}
            return [chip] * len(times)

        return draw

    def variance(self, values, scales, plan=None, time=0.0):
        return {k: self.p * (1 - self.p) * (v / scales[k]) ** 2 for k, v in values.items()}

    def describe(self):
        return {"kind": "stuck-at", "p": self.p}


def test_noise_injection_with_a_device_model_from_outside() -> None:
    noise = CountingStuckAt(0.5)
    result = fit(epochs=1, noise_model=noise)
    assert noise.draws == 4  # one draw per mini-batch: 128 images / 32
    assert not same_state(result.model, fit(epochs=1).model)
    # sigma_train goes through the protocol (with_sigma): here, the stuck probability
    rescaled = fit(epochs=1, noise_model=noise, sigma_train=0.1)
    assert same_state(rescaled.model, fit(epochs=1, noise_model=CountingStuckAt(0.1)).model)
    assert not same_state(rescaled.model, result.model)


def test_plan_aware_training_draws_the_plan_noise() -> None:
    """A plan that verifies every device to a residual of 0 trains like clean training;
    one that verifies none like noise injection at the plain-write sigma."""
    from swimkit.devices import DeviceModel
    from swimkit.plans import Plan

    values = {n: p.detach() for n, p in fresh().named_parameters() if n.endswith("weight")}
    exact = DeviceModel(sigma=0.3, sigma_verified=0.0)
    protected = fit(epochs=1, noise_model=exact, plan=Plan.uniform(values, True))
    assert same_state(protected.model, fit(epochs=1).model)
    exposed = fit(epochs=1, noise_model=exact, plan=Plan.uniform(values, False))
    assert same_state(exposed.model, fit(epochs=1, sigma_train=0.3).model)
    assert not same_state(exposed.model, protected.model)


def test_a_plan_for_another_model_is_a_clear_error() -> None:
    from swimkit.plans import Plan

    plan = Plan(masks={"fc9.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(SwimkitError, match="names weight 'fc9.weight'"):
        fit(epochs=1, sigma_train=0.1, plan=plan)
    wrong = Plan(masks={"fc1.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(SwimkitError, match="shape"):
        fit(epochs=1, sigma_train=0.1, plan=wrong)


def test_resume_refuses_other_noise(tmp_path: Path) -> None:
    fit(epochs=1, noise_model=CountingStuckAt(0.2), checkpoint_dir=tmp_path)
    with pytest.raises(SwimkitError, match="noise"):
        fit(epochs=2, noise_model=CountingStuckAt(0.1), checkpoint_dir=tmp_path)


def test_scale_aware_noise_has_the_same_value_and_the_gradient_of_the_range() -> None:
    """delta * max|w| / s equals delta at w, and passes d(max|w|) to the largest weight."""
    import swimkit

    model = nn.Sequential(nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, -2.0, 1.0], [0.1, 0.2, -0.3]]))
    weights = swimkit.device_weights(model)
    delta = {"0.weight": torch.tensor([[0.1, 0.2, -0.1], [0.3, -0.2, 0.1]])}
    scale = {"0.weight": torch.tensor(2.0)}
    x = torch.ones(1, 3)
    grads = {}
    for name, scales in (("plain", None), ("aware", scale)):
        model.zero_grad()
        with swimkit.perturbed(model, weights) as offsets:
            offsets.set(delta, scales)
            out = model(x).sum()
            value = out.item()
            out.backward()
        grads[name] = model[0].weight.grad.clone()
        if name == "plain":
            plain_value = value
    assert value == pytest.approx(plain_value)
    extra = grads["aware"] - grads["plain"]
    # only the largest |w| (-2.0 at [0, 1]) gets d/dw of delta * |w| / 2: -sum(delta) / 2
    expected = torch.zeros(2, 3)
    expected[0, 1] = -float(delta["0.weight"].sum()) / 2.0
    torch.testing.assert_close(extra, expected)


def test_scale_aware_training_differs_and_resumes_only_as_such(tmp_path: Path) -> None:
    aware = fit(epochs=1, sigma_train=0.3, scale_aware=True, checkpoint_dir=tmp_path)
    assert not same_state(aware.model, fit(epochs=1, sigma_train=0.3).model)
    with pytest.raises(SwimkitError, match="scale_aware"):
        fit(epochs=2, sigma_train=0.3, checkpoint_dir=tmp_path)
