import argparse
import json
import logging
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
                                  ["config", "show", "--help"], ["export", "--help"]])
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


def test_the_paper_preset_without_perceptual_weights_stops_before_prepare(tmp_path, capsys):
    """Refused in one line naming the setting and both ways out, before anything is written (not in train-vae,
    after prepare has run)."""
    run = tmp_path / "r"
    argv = ["run", "--preset", "paper", "--set", "pipeline.input=demo-cohort", "--out", str(run), "--no-progress"]
    for _ in ("absent", "empty"):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert err.startswith("neuroldm run: error: vae.perceptual=2.5d needs a local copy of torchvision's ImageNet "
                              "VGG16 weights (vgg16-397923af.pth; nothing is downloaded)")
        assert "--set vae.perceptual_weights_path=/path/to/vgg16-397923af.pth" in err
        assert "--set vae.perceptual=none" in err
        assert not run.exists() or list(run.iterdir()) == []
        run.mkdir(exist_ok=True)  # then again into an empty folder: it stays empty


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
    # nothing else but the run's log, which keeps the failed attempt and its error
    assert sorted(p.name for p in run.root.iterdir()) == ["config.yaml", "run.json", "run.log"]
    assert "error: " in run.log.read_text().splitlines()[-1]


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
                                     "saliency", "counterfactual"])
def test_every_command_on_a_run_starts_from_its_config(tmp_path, monkeypatch, capsys, command):
    from neuroldm import cli

    bases = []

    def stop(preset, config, overrides):
        bases.append((preset, config))
        raise cli.ConfigError("stopped here")

    monkeypatch.setattr(cli, "load_config", stop)
    run = _run_with_config(tmp_path)
    extra = {"sample": ["--n", "1", "--label", "HC", "--out", str(tmp_path / "s")],
             "counterfactual": ["--input", str(tmp_path / "x.nii.gz"), "--to", "HC", "--out", str(tmp_path / "c")]
             }.get(command, [])
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
    from neuroldm import cli

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


def _all_parsers(parser, prefix=()):
    for name, sub in _subcommands(parser).items():
        if any(a.__class__.__name__ == "_SubParsersAction" for a in sub._actions):
            yield from _all_parsers(sub, (*prefix, name))
        else:
            yield (*prefix, name), sub


def test_torchrun_passes_every_documented_option_through():
    # torchrun's parser (abbreviations allowed) reads the options after `-m neuroldm` too: an option of ours that
    # abbreviates two of its own (`--run`: --run-path/--run_path; `--n`: --nnodes/--nproc-per-node/...) stops it
    from torch.distributed.run import parse_args

    seen = 0
    for command, sub in _all_parsers(build_parser()):
        for action in sub._actions:
            if action.help == argparse.SUPPRESS:
                continue
            for option in action.option_strings:
                for argv in ([*command, option, "x"], [*command, f"{option}=x"]):
                    ns = parse_args(["--nproc_per_node=2", "-m", "neuroldm", *argv])
                    assert (ns.module, ns.training_script, ns.training_script_args) == (True, "neuroldm", argv)
                    seen += 1
    assert seen > 200
    with pytest.raises(SystemExit):  # why it is --run-dir: torchrun stops at --run before neuroldm starts
        parse_args(["--nproc_per_node=2", "-m", "neuroldm", "train-vae", "--run", "R"])


def _documented_torchrun_lines():
    from neuroldm import cli

    texts = [(ROOT / "README.md").read_text(), cli.__doc__]
    for _, sub in _all_parsers(build_parser()):  # what --help shows
        texts += [sub.description or "", *(a.help or "" for a in sub._actions)]
    lines = set()
    for text in texts:
        lines |= set(re.findall(r"`(torchrun [^`]*)`", text))
        lines |= {ln.strip() for ln in re.findall(r"^\s*(torchrun .*)$", text, flags=re.MULTILINE)}
    return sorted(line for line in lines if "-m neuroldm " in line)  # not "drop `torchrun ... -m`"


def test_every_documented_torchrun_line_parses_as_written():
    import shlex

    from torch.distributed.run import parse_args

    lines = _documented_torchrun_lines()
    for command in ("train-vae", "train-diffusion", "classify", "classify-grid", "run"):
        assert any(f" {command} " in line for line in lines), command
    for line in lines:
        words = shlex.split(line)
        ns = parse_args(words[1:])
        assert ns.module and ns.training_script == "neuroldm", line
        args = build_parser().parse_args(ns.training_script_args)  # exits on an unknown option
        assert args.command == ns.training_script_args[0]


TORCHRUN_TINY = [
    "prepare.spacing=[8,8,8]", "prepare.grid=[20,24,20]", "split.folds=0", "split.val_fraction=0.25",
    "split.test_fraction=0.25", "vae.arch=demo", "vae.perceptual=none", "vae.train.batch_size=1",
    "vae.train.steps=2", "vae.train.val_every=2", "diffusion.model=tiny", "diffusion.patch=[1,2,1]",
    "diffusion.window=[2,2,2]", "diffusion.train.steps=2", "diffusion.train.batch_size=2",
    "diffusion.train.val_every=2", "diffusion.train.warmup_steps=0", "classifier.arch=cnn",
    "classifier.train.batch_size=2", "classifier.train.steps=2", "classifier.train.warmup_steps=0",
    "classifier.train.val_every=2", "classifier.patience=null", "classifier.bootstrap=10", "classifier.seeds=[0]",
    "classifier.regimes=[real]"]


@pytest.mark.slow  # ten torchrun launches of two processes each: about 110 s on two free cores
def test_every_stage_command_runs_under_torchrun_as_documented(tmp_path):
    """`torchrun --nproc_per_node=2 -m neuroldm STAGE --run-dir R ...`, as the README and --help write it, for every
    command that takes --run-dir: the DDP stages train on both ranks, the others run on rank 0 alone."""
    from neuroldm.data.prepare import prepare_cohort

    from phantoms import write_bids

    groups = {f"sub-{i:02d}": "HC" if i % 2 else "TLE" for i in range(12)}
    prepare_cohort(write_bids(tmp_path / "bids", groups), tmp_path / "prep", load_config(None, None, TORCHRUN_TINY),
                   progress=False, workers=1)
    run, port = tmp_path / "run", 29541

    def torchrun(*argv):
        nonlocal port
        port += 1
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               f"--master_port={port}", "-m", "neuroldm", *argv, "--run-dir", str(run),
                               "--no-progress"], capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    sets = [x for t in TORCHRUN_TINY for x in ("--set", t)]
    out = torchrun("train-vae", "--prepared", str(tmp_path / "prep"), *sets)
    assert out.count("trained the autoencoder") == 1  # rank 0 speaks
    assert json.loads((run / "vae" / "train_summary.json").read_text())["world_size"] == 2
    assert torchrun("encode").count("encoded 12 volumes") == 1  # the run's config, on rank 0 alone
    torchrun("train-diffusion")
    assert json.loads((run / "diffusion" / "train_summary.json").read_text())["world_size"] == 2
    torchrun("classify")
    assert json.loads((run / "classifier" / "result.json").read_text())["test"]["n"] == 3
    torchrun("classify-grid")
    assert (run / "classify-grid" / "summary.md").exists()
    # and every other command that takes --run-dir, each on rank 0 alone
    assert torchrun("reconstruct").count("PSNR") == 1
    assert torchrun("vae-sample", "-n", "1", "--out", str(tmp_path / "prior")).count("wrote 1 volumes") == 1
    assert torchrun("sample", "-n", "1", "--label", "TLE", "--steps", "2", "--out", str(tmp_path / "s")).count(
        "volume(s) written") == 1
    assert len(list((tmp_path / "s").glob("TLE_*.nii.gz"))) == 1
    assert torchrun("saliency", "--limit", "2").count("maps, figures and attributions.csv") == 1
    scan = tmp_path / "bids" / "sub-00" / "anat" / "sub-00_T1w.nii.gz"
    assert torchrun("counterfactual", "--input", str(scan), "--to", "HC", "--out", str(tmp_path / "cf")).count(
        "counterfactual(s) to HC") == 1


def test_run_and_n_stay_as_hidden_aliases(tmp_path, capsys):
    parser = build_parser()
    new = parser.parse_args(["sample", "--run-dir", "R", "-n", "3", "--label", "HC", "--out", "S"])
    old = parser.parse_args(["sample", "--run", "R", "--n", "3", "--label", "HC", "--out", "S"])
    assert (new.run, new.n) == (old.run, old.n) == ("R", 3)
    assert parser.parse_args(["vae-sample", "--run-dir", "R", "--out", "S"]).n == 8
    for command in ("train-vae", "sample"):
        text = _subcommands(parser)[command].format_help()
        assert "--run-dir RUN_DIR" in text and "--run " not in text and "--n " not in text
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["encode"])
    assert e.value.code == 2 and "--run-dir is required" in capsys.readouterr().err


def test_under_torchrun_a_one_process_command_is_left_to_rank_0(tmp_path, monkeypatch):
    from neuroldm import cli

    parser = build_parser()
    encode = parser.parse_args(["encode", "--run-dir", str(tmp_path)])
    assert not parser.parse_args(["report", str(tmp_path)]).__dict__.get("distributed")
    assert all(parser.parse_args([c, "--run-dir", "R"]).distributed for c in ("train-vae", "train-diffusion",
                                                                           "classify", "classify-grid"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert cli._left_to_rank_0(encode)
    monkeypatch.setenv("RANK", "0")
    assert not cli._left_to_rank_0(encode)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not cli._left_to_rank_0(encode)


def test_a_command_on_a_run_appends_the_console_to_run_log(tmp_path, monkeypatch, capsys):
    import neuroldm.diffusion.sample as sample_module

    progress = []

    def fake_sample_to_folder(run, out, n, label, scfg, **kw):
        progress.append(kw["progress"])
        logging.getLogger("neuroldm.diffusion.sample").info("sampling %d volume(s)", n)
        sys.stderr.write("\rTLE:  50%|#####     | 1/2\rTLE: 100%|##########| 2/2\n")  # a progress bar's redraws
        return {"written": n, "label": label, "skipped": 0, "seconds": 0.0}

    monkeypatch.setattr(sample_module, "sample_to_folder", fake_sample_to_folder)
    run = _run_with_config(tmp_path)
    argv = ["sample", "--run-dir", str(run), "-n", "2", "--label", "TLE", "--out", str(tmp_path / "s")]
    assert main(argv) == 0 and main([*argv, "--steps", "0"]) == 2
    assert progress == [False]  # stderr is not a terminal here: no progress bars
    lines = (run / "run.log").read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
    assert all(re.match(stamp, ln) for ln in lines) and not any("\r" in ln or "%|" in ln for ln in lines)
    text = [re.sub(stamp, "", ln, count=1) for ln in lines]
    assert text[0] == f"$ neuroldm {' '.join(argv)}"
    written = f"2 TLE volume(s) written, 0 already there, in 0.0 s; manifest: {tmp_path / 's' / 'manifest.csv'}"
    assert text[1:] == ["sampling 2 volume(s)", written]
    assert capsys.readouterr().out.count("2 TLE volume(s) written") == 1  # the console still shows it, once
    assert not hasattr(sys.stdout, "run_log")  # stdout is given back

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(argv) == 0 and progress[-1] is True
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(argv) == 0
    assert (run / "run.log").read_text().count("$ neuroldm sample") == 3  # appended per invocation, on rank 0


def test_a_refused_command_writes_no_run_log(tmp_path, capsys):
    run = _run_with_config(tmp_path)
    assert main(["train-diffusion", "--run-dir", str(run), "--set", "diffusion.model=DiT-S/3"]) == 2
    assert not (run / "run.log").exists()
