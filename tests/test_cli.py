import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from neuroldm.cli import build_parser, main
from neuroldm.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _subcommands(parser):
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


@pytest.mark.parametrize("argv", [["--help"], ["prepare", "--help"], ["demo-cohort", "--help"],
                                  ["config", "show", "--help"]])
def test_help_works(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert "usage: neuroldm" in capsys.readouterr().out


def test_every_subcommand_has_help_text():
    for name, sub in _subcommands(build_parser()).items():
        assert sub.description, f"'{name}' has no description"


def test_config_show_prints_the_resolved_preset(capsys):
    assert main(["config", "show", "--preset", "paper", "--set", "split.seed=9"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    expected = load_config("paper", None, ["split.seed=9"]).to_dict()
    assert shown == expected


def test_user_errors_are_one_line_with_status_2(capsys):
    assert main(["config", "show", "--set", "prepare.gird=[1,2,3]"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown config key 'prepare.gird'" in err
    assert main(["prepare", "/nonexistent/cohort.csv", "--out", "/tmp/x", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "neuroldm prepare: error: /nonexistent/cohort.csv: file not found"


def test_console_script_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "neuroldm", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and re.fullmatch(r"neuroldm \d+\.\d+\.\d+\n", out.stdout)


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quickstart, flags=re.S)
    assert len(commands) == 2, "the Quickstart holds two commands: set up + run, set up + test"
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1].strip() in ci.splitlines()


def test_run_errors_are_one_line(tmp_path, capsys):
    assert main(["run", "--preset", "paper", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pipeline.input is not set" in err
    assert main(["demo", "--out", str(tmp_path / "d"), "--from", "train-vea", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown stage" in err and "train-diffusion" in err
    assert not (tmp_path / "d").exists()  # nothing written before the arguments are checked


BAD_SETTINGS = [  # (override(s), key the one-line refusal names)
    (["diffusion.model=DiT-S/3"], "diffusion.model"),
    (["sample.sampler=euler"], "sample.sampler"),
    (["data.classes=[HC,EPI]"], "data.classes"),
    (["data.label_map={TLE: HC, left: HC, right: HC}"], "data.label_map"),
    (["prepare.grid=[30,32,32]"], "prepare.grid"),
    (["vae.perceptual=2.5d", "vae.perceptual_weights_path=/nope.pth"], "vae.perceptual_weights_path"),
]


@pytest.mark.parametrize("sets, key", BAD_SETTINGS)
def test_run_refuses_a_bad_setting_in_one_line_before_writing(tmp_path, capsys, sets, key):
    run = tmp_path / "r"
    argv = ["run", "--preset", "demo", "--out", str(run), "--no-progress", *(x for s in sets for x in ("--set", s))]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("neuroldm run: error:") and key in err
    assert not run.exists()


def test_an_existing_run_is_left_as_it_was(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("an earlier run's settings\n")
    assert main(["demo", "--out", str(run), "--no-progress", "--set", "diffusion.model=DiT-S/3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("neuroldm demo: error: diffusion.model 'DiT-S/3'")
    assert [p.name for p in run.iterdir()] == ["config.yaml"]
    assert (run / "config.yaml").read_text() == "an earlier run's settings\n"


@pytest.mark.parametrize("argv, key", [
    (["train-diffusion", "--set", "diffusion.model=DiT-S/3"], "diffusion.model"),
    (["train-vae", "--prepared", "P", "--preset", "demo", "--set", "prepare.grid=[30,32,32]"], "prepare.grid"),
    (["train-vae", "--prepared", "P", "--set", "vae.perceptual_weights_path=/nope.pth"], "vae.perceptual"),
    (["classify", "--prepared", "P", "--set", "data.classes=[HC,EPI]"], "data.classes"),
])
def test_a_stage_command_refuses_a_bad_setting_without_touching_the_run(tmp_path, capsys, argv, key):
    run = tmp_path / "r"
    assert main([*argv, "--run", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"neuroldm {argv[0]}: error:") and key in err
    assert not run.exists()


def test_evaluate_refuses_a_missing_medicalnet_file_before_reading_volumes(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["evaluate", "--real", str(tmp_path / "absent"), "--synthetic", str(tmp_path / "absent"),
                 "--out", str(out), "--random-features", "--no-progress",
                 "--set", f"evaluate.medicalnet_path={tmp_path / 'nope.pth'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "evaluate.medicalnet_path" in err and not out.exists()


def _run_with_config(tmp_path, *sets):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text(load_config("demo", None, list(sets)).to_yaml())
    return run


def test_sample_uses_the_runs_config_unless_told_otherwise(tmp_path, monkeypatch):
    import neuroldm.diffusion.sample as sample_module

    seen = []

    def fake_sample_to_folder(run, out, n, label, scfg, **kw):
        seen.append(scfg)
        return {"written": 0, "label": label, "skipped": 0, "seconds": 0.0}

    monkeypatch.setattr(sample_module, "sample_to_folder", fake_sample_to_folder)
    run = _run_with_config(tmp_path, "sample.guidance=3", "sample.steps=9")
    argv = ["sample", "--run", str(run), "--n", "1", "--label", "TLE", "--out", str(tmp_path / "s"), "--no-progress"]
    assert main(argv) == 0
    assert (seen[-1].guidance, seen[-1].steps) == (3, 9)  # the run's, not the built-in guidance 1
    assert main([*argv, "--set", "sample.steps=5"]) == 0  # --set applies over the run's config
    assert (seen[-1].guidance, seen[-1].steps) == (3, 5)
    assert main([*argv, "--preset", "paper"]) == 0  # --preset (or --config) is another base
    assert seen[-1].guidance == load_config("paper").sample.guidance
    other = tmp_path / "other.yaml"
    other.write_text("sample:\n  guidance: 2\n")
    assert main([*argv, "--config", str(other)]) == 0
    assert (seen[-1].guidance, seen[-1].steps) == (2, load_config().sample.steps)


@pytest.mark.parametrize("command", ["train-vae", "encode", "train-diffusion", "sample", "classify", "classify-grid",
                                     "saliency"])
def test_every_command_on_a_run_starts_from_its_config(tmp_path, monkeypatch, capsys, command):
    import neuroldm.cli as cli

    bases = []

    def stop(preset, config, overrides):
        bases.append((preset, config))
        raise cli.ConfigError("stopped here")

    monkeypatch.setattr(cli, "load_config", stop)
    run = _run_with_config(tmp_path)
    extra = ["--n", "1", "--label", "HC", "--out", str(tmp_path / "s")] if command == "sample" else []
    assert main([command, "--run", str(run), "--no-progress", *extra]) == 2
    assert bases == [(None, run / "config.yaml")]
    assert main([command, "--run", str(run), "--no-progress", "--preset", "demo", *extra]) == 2
    assert bases[-1] == ("demo", None)
    assert main([command, "--run", str(tmp_path / "new"), "--no-progress", *extra]) == 2
    assert bases[-1] == (None, None)  # a new run: the built-in defaults


@pytest.mark.parametrize("command", ["reconstruct", "vae-sample"])
def test_commands_that_read_the_models_settings_take_no_config_options(tmp_path, capsys, command):
    out = ["--out", str(tmp_path / "o")] if command == "vae-sample" else []
    with pytest.raises(SystemExit) as e:
        main([command, "--run", str(tmp_path), *out, "--preset", "demo"])
    assert e.value.code == 2 and "unrecognized arguments: --preset demo" in capsys.readouterr().err


def test_demo_honours_config_and_refuses_another_preset(tmp_path, monkeypatch, capsys):
    import neuroldm.cli as cli

    seen = []
    monkeypatch.setattr(cli, "_run_pipeline", lambda args, cfg: seen.append(cfg) or 0)
    out = ["--out", str(tmp_path / "d"), "--no-progress"]
    assert main(["demo", *out, "--preset", "paper"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--preset paper: demo runs the demo preset" in err
    assert main(["demo", *out, "--config", "/nope.yaml"]) == 2
    assert capsys.readouterr().err.strip() == "neuroldm demo: error: /nope.yaml: config file not found"
    mine = tmp_path / "mine.yaml"
    mine.write_text("sample:\n  guidance: 2.5\ndiffusion:\n  train:\n    steps: 11\n")
    assert main(["demo", *out, "--config", str(mine), "--set", "sample.steps=7"]) == 0
    cfg = seen[-1]
    assert cfg.preset == "demo" and cfg.pipeline.input == "demo-cohort"
    assert (cfg.sample.guidance, cfg.sample.steps, cfg.diffusion.train.steps) == (2.5, 7, 11)
    assert cfg.prepare.grid == load_config("demo").prepare.grid
    assert main(["demo", *out, "--quick", "--preset", "demo", "--config", str(mine)]) == 0
    quick = seen[-1]  # the file applies over --quick's settings
    assert quick.diffusion.train.steps == 11 and quick.vae.train.steps == 6 and quick.demo_cohort.subjects == 24
    mine.write_text("preset: paper\n")
    assert main(["demo", *out, "--config", str(mine)]) == 2
    assert "names preset 'paper', but preset 'demo' was asked for" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
