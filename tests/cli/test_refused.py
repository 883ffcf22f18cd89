"""Every option acts or is refused before any work: a flag that would change nothing is
one line and exit 2, never a result that records a setting that did nothing."""

from __future__ import annotations

import pytest


def refused(cli, args, needle: str, out=None) -> None:
    """``args`` end in one line holding ``needle``, exit 2; with ``out``: before any
    training (nothing trained there)."""
    code, _, err = cli(*args)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("swimkit: error:") and needle in err, err
    assert "Traceback" not in err
    if out is not None:
        assert not (out / "train").exists()


@pytest.mark.parametrize("args,needle", [
    (["sweep", "--sigma-train", "0,0"], "given twice"),
    (["sweep", "--methods", "swim,SM"], "given twice"),
    (["sweep", "--speedups", "3,3"], "given twice"),
    (["run", "--times", "1,1"], "given twice"),
    (["run", "--scale-aware"], "--scale-aware"),
    (["run", "--noise-time", "100"], "--noise-time"),
    (["run", "--tolerances", "0.1,0.1", "--method", "allocate", "--speedup", "3"], "twice"),
    (["run", "--threads", "100000"], "per core"),
    (["run", "--device-model", "pcm", "--variation", "band:3"], "takes no 'variation'"),
    (["run", "--device-model", "pcm", "--device-option", "drift=1"], "no option 'drift'"),
    (["run", "--device-option", "levels"], "KEY=VALUE"),
])
def test_options_without_effect_are_refused(args, needle, flow_args, tmp_path, cli):
    """Values given twice, noise-training shapes without noise training, more threads
    than cores, settings and options a device model does not take."""
    refused(cli, [*args, *flow_args(tmp_path / "o")], needle)


#: Issue 35's options that did nothing but were recorded: each refused now, by the
#: place that decides it (the method, the device model, the crossbar, the chips' group).
IDLE = {
    "plan time with swim": (["--plan-time", "100", "--method", "swim", "--device-model",
                             "pcm"], "plan_time 100 would have no effect: method 'swim'"),
    "plan time with magnitude": (["--plan-time", "100", "--method", "magnitude",
                                  "--device-model", "pcm"], "method 'magnitude' does not read"),
    "plan time on gaussian": (["--plan-time", "100", "--method", "allocate"],
                              "device model 'gaussian' stays as programmed"),
    "adc range without adc bits": (["--adc-range", "8"], "give adc_bits (--adc-bits)"),
    "tile with layer ranges": (["--tile", "64x64"], "tiles would change nothing here"),
    "tile with layer ranges given": (["--tile", "64x64", "--ranges", "layer"],
                                     "tiles would change nothing here"),
    "noise time on gaussian": (["--noise-time", "100", "--sigma-train", "0.1"],
                               "--noise-time 100 s would have no effect"),
    "times on gaussian": (["--times", "0,10"], "--times 0,10 would have no effect"),
    "tolerances with allocate-one": (["--tolerances", "0.1,0.2", "--method", "allocate-one"],
                                     "tolerances would have no effect"),
    "several tolerances with swim": (["--tolerances", "0.1,0.2", "--method", "swim"],
                                     "give one tolerance"),
    "min samples without a CI target": (["--min-samples", "4", "--ci-target", "0"],
                                        "min_samples would have no effect"),
    "learn epochs without learned": (["--learn-epochs", "3"],
                                     "method option 'epochs' would have no effect"),
    "probes without hutchinson": (["--probes", "5"], "engine 'swim' has no option 'probes'"),
    "an engine option swim does not take": (["--engine-option", "probes=3"],
                                            "has no option 'probes'"),
    "a method option no method takes": (["--method-option", "wobble=3"],
                                        "method option 'wobble' would have no effect"),
    "adc range out of range": (["--adc-range", "1e300", "--adc-bits", "8"], "<= 1e+09"),
    "output noise out of range": (["--output-noise", "1e300"], "<= 1e+09"),
}


@pytest.mark.parametrize("args,needle", list(IDLE.values()), ids=list(IDLE))
def test_an_option_that_would_not_act_is_refused_before_work(args, needle, flow_args,
                                                            tmp_path, cli):
    """Each is one line naming the option and how to make it act (exit 2), before any
    training: nothing is trained and no result records it."""
    refused(cli, ["run", "--model", "lenet", *flow_args(tmp_path / "o"), *args], needle,
            tmp_path / "o")


@pytest.mark.parametrize("args", [["--scale-aware"], ["--clip-sigma", "2.5"],
                                  ["--learn-ranges"], ["--epochs", "3"],
                                  ["--sigma-train", "0.1"], ["--optimizer", "sgd"],
                                  ["--no-augment"]])
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_checkpoint_refuses_every_training_setting(command, args, tmp_path, cli):
    """With --checkpoint nothing is trained: a training setting given would not act, and
    is refused before the checkpoint is even read."""
    code, _, err = cli(command, "--checkpoint", tmp_path / "absent.pt", *args, "--out",
                       tmp_path / "o", "--no-progress")
    assert code == 2 and err.count("\n") == 1 and "would not act" in err, err


def test_a_checkpoint_with_noise_training_flags_is_refused(flow_args, tmp_path, cli):
    """A trained model given to a sweep that would train noisy models is refused."""
    out = tmp_path / "o"
    train = [a for a in flow_args(out, epochs=1) if a not in ("--samples", "4")]
    assert cli("train", "--model", "lenet", *train, "--train-limit", "600")[0] == 0
    code, _, err = cli("sweep", "--checkpoint", out / "train" / "best.pt",
                       "--sigma-train", "0.1", *flow_args(tmp_path / "s", epochs=1))
    assert code == 2 and "would not act" in err


@pytest.mark.parametrize("command", ["run", "select"])
def test_map_params_naming_a_weight_already_on_devices_is_refused(command, flow_args,
                                                                 tmp_path, cli):
    """--map-params adds parameters to the devices; naming a weight already there would
    change nothing: one line, before any pass."""
    ckpt = _checkpoint(tmp_path)
    args = (["run", "--model", "lenet", *flow_args(tmp_path / "o")] if command == "run"
            else ["select", "--checkpoint", ckpt, "-o", tmp_path / "p.pt", "--method",
                  "magnitude"])
    refused(cli, [*args, "--map-params", "conv1.weight"], "already on devices",
            tmp_path / "o")
    assert not (tmp_path / "p.pt").exists()


@pytest.mark.parametrize("command", ["run", "select", "evaluate"])
def test_a_tile_smaller_than_a_kernel_is_refused_before_any_pass(command, flow_args,
                                                                 fmnist, tmp_path, cli):
    """A 1x1 tile cannot hold a kernel's rows: refused when the model is known, before
    training, a pass or a plan (not by an export after the plan is written)."""
    ckpt = _checkpoint(tmp_path)
    data = ["--dataset", "fashion-mnist", "--data-dir", fmnist, "--no-progress"]
    args = {"run": ["run", "--model", "lenet", *flow_args(tmp_path / "o")],
            "select": ["select", "--checkpoint", ckpt, "-o", tmp_path / "p.pt", "--npz",
                       tmp_path / "p.npz", "--method", "magnitude", *data],
            "evaluate": ["evaluate", "--checkpoint", ckpt, "--samples", "2", *data]}[command]
    refused(cli, [*args, "--tile", "1x1", "--ranges", "tile"], "kernel", tmp_path / "o")
    assert not list(tmp_path.glob("p.*"))


def _checkpoint(folder):
    """An untrained LeNet saved as swimkit saves a trained one."""
    from swimkit import build_model
    from swimkit.checkpoints import save_checkpoint

    path = folder / "lenet.pt"
    save_checkpoint(path, build_model("lenet", seed=0), model_name="lenet")
    return path
