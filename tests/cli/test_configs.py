"""Studies as files: every command takes --config (TOML, YAML or JSON, the keys its flags)
and prints its resolved configuration with --print-config; flags win over the file; a
result JSON records its configuration and runs again from it, with the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomllib
import yaml
from json_numbers import numbers

from swimkit.cli import COMMANDS, parse

#: What a command needs besides its flags (the files it must be told about).
NEEDS = {"sensitivity": ["-o", "s.pt"], "select": ["-o", "p.pt"], "report": ["a.json"]}
#: Flags away from their defaults, per settings group a command takes.
GIVEN = {
    "model": ["--model", "qlenet", "--bits", "3"],
    "data": ["--data-dir", "/d", "--test-limit", "70"],
    "train": ["--epochs", "3", "--clip-sigma", "2.5", "--clip-per", "channel"],
    "device_model": ["--sigma", "0.4", "--device-option", "levels=pcm", "--max-attempts", "200"],
    "crossbar": ["--tile", "64x32", "--ranges", "tile", "--adc-bits", "6", "--adc-range", "8"],
    "placement": ["--exclude", "conv1,fc3"],
    "sensitivity": ["--engine", "hutchinson", "--probes", "7"],
    "evaluation": ["--samples", "12", "--ci-target", "1", "--min-samples", "4", "--compile"],
    "settings": ["--device", "cpu:0"],
}
#: The grid of a command that takes a method and a budget (run and select: one point).
POINT = {"run": ["--method", "allocate", "--speedup", "3", "--tolerances", "0.1,0.2"],
         "select": ["--method", "allocate", "--speedup", "3", "--tolerances", "0.1,0.2"],
         "sweep": ["--methods", "swim,allocate", "--speedups", "3,5", "--within", "1",
                   "--search-steps", "3", "--sigma-train", "0,0.1"],
         "evaluate": ["--within", "2"]}


def argv_of(command: str) -> list[str]:
    """``command`` with a flag away from its default in every group it takes."""
    argv = [command, *NEEDS.get(command, [])]
    for group in COMMANDS[command].groups:
        argv += GIVEN.get(group, [])
    return argv + POINT.get(command, [])


def printed(cli, argv: list[str]) -> str:
    code, out, err = cli(*argv, "--print-config")
    assert code == 0 and err == "", err
    return out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_print_config_reads_back_to_the_same_configuration(command, cli, tmp_path):
    """--print-config prints TOML; --config reads it back to the same resolved
    configuration and the same settings, with nothing else given."""
    argv = argv_of(command)
    text = printed(cli, argv)
    assert text.startswith(f"# swimkit {command}: the resolved configuration")
    tomllib.loads(text)  # valid TOML
    path = tmp_path / "study.toml"
    path.write_text(text)
    original, again = parse(argv), parse([command, "--config", str(path)])
    assert again.config() == original.config()
    if command != "report":
        assert again.settings().describe() == original.settings().describe()
    assert printed(cli, [command, "--config", path]) == text


@pytest.mark.parametrize("command", ["run", "sweep", "select", "evaluate"])
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_yaml_and_json_configurations_read_as_toml_does(command, suffix, cli, tmp_path):
    """The same keys in YAML or JSON give the same configuration as in TOML."""
    argv = argv_of(command)
    values = tomllib.loads(printed(cli, argv))
    path = tmp_path / f"study{suffix}"
    path.write_text(yaml.safe_dump(values) if suffix == ".yaml" else json.dumps(values))
    assert parse([command, "--config", str(path)]).config() == parse(argv).config()


def test_flags_win_over_the_file_and_sections_hold_keys(tmp_path):
    """A flag given on the command line wins over the file's; the file's other keys stay;
    a table (a section) holds keys as the top level does; aliases and underscores work."""
    path = tmp_path / "study.toml"
    path.write_text('samples = 12\nsigma = 0.4\n[chip]\ndev_var = 0.4\ntile = "64x32"\n'
                    'ranges = "tile"\n[selection]\nmethods = ["magnitude"]\n')
    settings = parse(["run", "--config", str(path), "--sigma", "0.2"]).settings()
    assert settings.chip.device_model.sigma == 0.2
    assert settings.evaluation.samples == 12 and settings.grid.methods == ["magnitude"]
    assert settings.chip.crossbar.tile_rows == 64 and settings.chip.crossbar.ranges == "tile"


@pytest.mark.parametrize("content,needle", [
    ("wobble = 3\n", "no setting 'wobble'"),
    ("sigma = \"high\"\n", "sigma"),
    ("samples = [\n", "is not valid TOML"),
    ("compile = 3\n", "expected true or false"),
])
def test_a_bad_configuration_is_one_line(content, needle, cli, tmp_path):
    """An unknown key, a value of the wrong kind or a file that does not parse: one line
    naming it, exit 2, before any work."""
    path = tmp_path / "study.toml"
    path.write_text(content)
    code, _, err = cli("run", "--config", path, "--out", tmp_path / "o")
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert str(path) in err and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_sweep_result_runs_again_from_its_file(flow_args, tmp_path, cli):
    """sweep.json records its configuration: --config sweep.json runs the same sweep
    again, from the cache in its folder (nothing trained again) and from scratch in a
    fresh --out, with the same numbers; another command refuses it in one line."""
    out = tmp_path / "first"
    code, _, err = cli("sweep", "--model", "lenet", *flow_args(out, epochs=1, samples=3),
                       "--methods", "magnitude", "--fractions", "0.1", "--train-limit", "600",
                       "--test-limit", "200")
    assert code == 0, err
    recorded = json.loads((out / "sweep.json").read_text())
    assert recorded["config"]["command"] == "sweep"
    assert recorded["config"]["flags"]["methods"] == ["magnitude"]
    saved = tmp_path / "recorded.json"
    saved.write_text(json.dumps(recorded))
    trained = (out / "train" / "best.pt").stat().st_mtime_ns
    code, _, err = cli("sweep", "--config", saved)  # the same folder: the cache
    assert code == 0, err
    cached = json.loads((out / "sweep.json").read_text())
    assert numbers(cached["models"]) == numbers(recorded["models"])
    assert (out / "train" / "best.pt").stat().st_mtime_ns == trained
    fresh = tmp_path / "fresh"
    code, _, err = cli("sweep", "--config", saved, "--out", fresh)  # from scratch
    assert code == 0, err
    again = json.loads((fresh / "sweep.json").read_text())
    assert numbers(again["models"]) == numbers(recorded["models"])
    assert again["config"]["flags"]["out"] == str(fresh)
    code, _, err = cli("evaluate", "--config", saved)
    assert code == 2 and err.count("\n") == 1 and "records a 'swimkit sweep' run" in err


@pytest.mark.slow
def test_a_run_result_runs_again_and_evaluate_refuses_it(flow_args, tmp_path, cli):
    """A run's result.json runs again with --config (the same chips, from the cache);
    `evaluate --config result.json` is refused in one line naming the command."""
    out = tmp_path / "run"
    code, _, err = cli("run", "--model", "lenet", *flow_args(out, epochs=1, samples=2),
                       "--method", "magnitude", "--train-limit", "600", "--test-limit", "200")
    assert code == 0, err
    result = out / "result.json"
    first = json.loads(result.read_text())
    assert first["config"]["command"] == "run"
    copy = tmp_path / "result.json"
    copy.write_text(result.read_text())
    code, _, err = cli("run", "--config", copy)
    assert code == 0, err
    assert json.loads(result.read_text())["selected"] == first["selected"]
    code, _, err = cli("evaluate", "--config", copy)
    assert code == 2 and err.count("\n") == 1, err
    assert "records a 'swimkit run' run; give it to that command" in err


def test_a_configuration_file_that_is_missing_or_binary_is_one_line(cli, tmp_path):
    """A --config that cannot be read is one line naming the path."""
    binary = tmp_path / "study.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    for path in (tmp_path / "absent.toml", binary):
        code, _, err = cli("run", "--config", path)
        assert code == 2 and err.count("\n") == 1 and str(path) in err, err


def test_results_record_where_their_inputs_are(tmp_path):
    """Files a command reads are recorded as absolute paths: the result runs again from
    any folder."""
    config = parse(["evaluate", "--checkpoint", "c.pt", "--plan", "p.pt", "--data-dir",
                    "d"]).config()
    for key in ("checkpoint", "plan", "data-dir"):
        assert Path(config["flags"][key]).is_absolute()
    assert config["command"] == "evaluate" and config["swimkit"]
