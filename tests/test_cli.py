import os
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


# --------------------------------------------------------------------------------------------------------------
# Faults and hostile input: each refused in one line, with nothing lost
# --------------------------------------------------------------------------------------------------------------

def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"neuroldm {command}: error:"), err
    return err


@pytest.mark.parametrize("command", ["demo", "run"])
def test_run_and_demo_refuse_a_folder_that_is_not_a_run(tmp_path, capsys, command):
    """`demo --quick --out DIR` on a user's folder holding cohort/precious.txt once deleted cohort/ within seconds."""
    out = tmp_path / "mine"
    (out / "cohort").mkdir(parents=True)
    (out / "cohort" / "precious.txt").write_text("years of work")
    argv = ["--out", str(out), "--no-progress"]
    argv = (["demo", "--quick", *argv] if command == "demo"
            else ["run", "--preset", "demo", "--set", "pipeline.input=demo-cohort", *argv])
    assert main(argv) == 2
    err = _one_line_error(capsys, command)
    assert str(out) in err and "not empty and not a neuroldm run" in err
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["cohort", "cohort/precious.txt"]
    assert (out / "cohort" / "precious.txt").read_text() == "years of work"


def test_a_locked_run_is_refused_naming_its_holder(tmp_path, capsys):
    """Two `run`s into one --out interleaved; now the second says who holds the run and touches nothing."""
    from neuroldm.runs import RunDir

    run = RunDir(tmp_path / "r")
    with run.locked("neuroldm run (the first)"):
        for argv in (["demo", "--quick", "--out", str(run)],
                     ["train-vae", "--preset", "demo", "--run", str(run), "--prepared", str(tmp_path / "p")],
                     ["train-diffusion", "--preset", "demo", "--run", str(run)],
                     ["reconstruct", "--run", str(run), "--prepared", str(tmp_path / "p")]):
            assert main([*argv, "--no-progress"]) == 2
            err = _one_line_error(capsys, argv[0])
            assert f"in use by `neuroldm run (the first)` (pid {os.getpid()} on " in err
        assert [p.name for p in run.root.iterdir()] == [".neuroldm.lock"]
    assert list(run.root.iterdir()) == []  # released and removed


@pytest.fixture
def recorded_run(tmp_path):
    from neuroldm.runs import RunDir

    run = RunDir(tmp_path / "r")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "manifest.csv").write_text("")
    run.record_stage("train-vae", load_config("demo", None, []), prepared=tmp_path / "p")
    return run


@pytest.mark.parametrize("argv", [["saliency"], ["encode", "--preset", "demo"], ["encode"],
                                  ["train-diffusion", "--preset", "demo"]])
def test_a_failed_command_leaves_the_runs_record_as_it_was(recorded_run, capsys, argv):
    """A failed `saliency --run R` rewrote R/config.yaml to the paper defaults; a later `run R/config.yaml` then
    rebuilt a 200-subject cohort and deleted vae/."""
    run = recorded_run
    before = {p: p.read_bytes() for p in (run.config, run.record)}
    assert main([*argv, "--run", str(run), "--no-progress"]) == 2
    _one_line_error(capsys, argv[0])
    assert {p: p.read_bytes() for p in (run.config, run.record)} == before
    assert sorted(p.name for p in run.root.iterdir()) == ["config.yaml", "run.json"]


def test_a_command_that_changes_the_runs_config_says_so(recorded_run, monkeypatch, caplog):
    import neuroldm.vae.encode

    run = recorded_run
    monkeypatch.setattr(neuroldm.vae.encode, "encode_cohort", lambda *a, **k: {
        "n": 1, "reused": 0, "latent_shape": [1, 2, 2, 2], "scale_factor": 1.0, "n_train": 1})
    assert main(["encode", "--preset", "demo", "--set", "vae.train.steps=7", "--run", str(run),
                 "--no-progress"]) == 0
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warning) == 1 and "config.yaml: these settings differ from the run's: vae.train.steps;" in warning[0]
    assert load_config(None, run.config).vae.train.steps == 7  # recorded, now that it succeeded
    assert set(run.read_record()["stages"]) == {"train-vae", "encode"}


def test_prepare_refuses_an_empty_table_in_one_line(tmp_path, capsys):
    (tmp_path / "c.csv").write_text("path,subject,label\n")
    assert main(["prepare", str(tmp_path / "c.csv"), "--out", str(tmp_path / "p"), "--no-progress"]) == 2
    assert "c.csv: no rows" in _one_line_error(capsys, "prepare")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("code", ["EROFS", "EACCES", "ENOSPC"])
def test_a_read_only_or_full_folder_is_one_line(tmp_path, capsys, monkeypatch, code):
    import errno

    import neuroldm.demo.cohort

    def refuse(out, *a, **k):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(Path(out) / "participants.tsv"))

    monkeypatch.setattr(neuroldm.demo.cohort, "make_demo_cohort", refuse)
    assert main(["demo-cohort", str(tmp_path / "ro"), "--no-progress"]) == 2
    err = _one_line_error(capsys, "demo-cohort")
    assert err.endswith(f"{tmp_path / 'ro' / 'participants.tsv'}: {os.strerror(getattr(errno, code))}")


def test_a_bug_keeps_its_traceback(monkeypatch):
    import neuroldm.demo.cohort

    def bug(*a, **k):
        raise OSError(2, "No such file or directory", "/a/bug")

    monkeypatch.setattr(neuroldm.demo.cohort, "make_demo_cohort", bug)
    with pytest.raises(FileNotFoundError):
        main(["demo-cohort", "/tmp/never-written", "--no-progress"])


@pytest.mark.parametrize("argv, problem", [
    (["sample", "--n", "-2", "--label", "TLE", "--out", "S"], "--n -2: the number of volumes must be at least 1"),
    (["sample", "--n", "0", "--label", "TLE", "--out", "S"], "--n 0: the number of volumes must be at least 1"),
    (["vae-sample", "--n", "-1", "--out", "S"], "--n -1: the number of volumes must be at least 1"),
    (["sample", "--n", "2", "--label", "TLE", "--out", "S", "--steps", "-3"], "--steps:"),
    (["sample", "--n", "2", "--label", "TLE", "--out", "S", "--guidance", "-5"], "--guidance:"),
    (["sample", "--n", "2", "--label", "TLE", "--out", "S", "--batch-size", "0"], "--batch-size:"),
])
def test_sample_options_are_checked_before_any_work(tmp_path, capsys, argv, problem):
    """`sample --n -2` printed "-2 already there" and `vae-sample --n -1` exited 0."""
    argv = [a if a != "S" else str(tmp_path / "s") for a in argv]
    assert main([*argv, "--run", str(tmp_path / "r"), "--no-progress"]) == 2
    assert problem in _one_line_error(capsys, argv[0])
    assert not (tmp_path / "s").exists() and not (tmp_path / "r").exists()
