"""`neuroldm run`'s make-like bookkeeping, on toy stages that record when they run."""

import json

import pytest

import neuroldm.pipeline.runner as runner
from neuroldm.config import load_config
from neuroldm.errors import ConfigError, NeuroLDMError
from neuroldm.pipeline.stages import STAGE_NAMES, Stage, truncated


def _toy_stages(calls: list[str], fail: set[str] | None = None):
    """a -> b -> c, each writing one output file; b reads vae.*, c reads diffusion.*; `fail` names stages that raise."""
    fail = fail if fail is not None else set()

    def make(name):
        def run(ctx):
            calls.append(name)
            if name in fail:  # interrupted after writing e.g. a checkpoint
                (ctx.run / name).mkdir(exist_ok=True)
                (ctx.run / name / "checkpoint").write_text("partial")
                raise KeyboardInterrupt
            (ctx.run / name).mkdir(exist_ok=True)
            (ctx.run / name / "out.txt").write_text(name)
            return {"ok": name}
        return run

    return (Stage("a", make("a"), ("prepare",), (), ("a/out.txt",), clean=("a",), always=False),
            Stage("b", make("b"), ("vae",), ("a",), ("b/out.txt",), clean=("b",)),
            Stage("c", make("c"), ("diffusion",), ("b",), ("c/out.txt",), clean=("c",)))


@pytest.fixture
def toy(monkeypatch, tmp_path):
    calls: list[str] = []
    stages = _toy_stages(calls)
    monkeypatch.setattr(runner, "STAGES", stages)
    monkeypatch.setattr(runner, "STAGE_NAMES", tuple(s.name for s in stages))
    return calls


def _cfg(*overrides):
    return load_config("demo", None, ["pipeline.input=/nowhere", *overrides])


def test_second_run_reuses_everything(toy, tmp_path):
    runner.run_pipeline(tmp_path, _cfg(), progress=False)
    assert toy == ["a", "b", "c"]
    state = runner.run_pipeline(tmp_path, _cfg(), progress=False)
    assert toy == ["a", "b", "c"]  # nothing ran again
    assert [s["status"] for s in state["last_invocation"]["stages"]] == ["reused"] * 3
    on_disk = json.loads((tmp_path / "pipeline.json").read_text())
    assert set(on_disk["stages"]) == {"a", "b", "c"} and on_disk["stages"]["b"]["summary"] == {"ok": "b"}


def test_each_built_stage_records_its_own_peak_memory(monkeypatch, tmp_path):
    import os

    import numpy as np

    from test_memory import ISOLATED, in_a_fresh_process

    if os.environ.get(ISOLATED) != "1":  # alone in a new interpreter: see `in_a_fresh_process`
        in_a_fresh_process(__file__, "test_each_built_stage_records_its_own_peak_memory")
        return

    from neuroldm import memory

    calls: list[str] = []
    a, b, c = _toy_stages(calls)

    def heavy(ctx):  # 160 MB resident while it runs
        block = np.ones(20 << 20)
        calls.append("b")
        (ctx.run / "b").mkdir(exist_ok=True)
        (ctx.run / "b" / "out.txt").write_text(str(block[0]))
        return {"seconds_per_step": 0.25}

    stages = (a, Stage("b", heavy, b.keys, b.after, b.outputs, clean=b.clean), c)
    monkeypatch.setattr(runner, "STAGES", stages)
    monkeypatch.setattr(runner, "STAGE_NAMES", tuple(s.name for s in stages))
    runner.run_pipeline(tmp_path, _cfg(), progress=False)
    records = json.loads((tmp_path / "pipeline.json").read_text())["stages"]
    assert all(set(r["memory"]) == {"peak_rss_gb", "rss_scope"} for r in records.values())  # no GPU here
    if records["c"]["memory"]["rss_scope"] == "stage":  # Linux: c's peak is its own, not b's
        assert records["b"]["memory"]["peak_rss_gb"] - records["c"]["memory"]["peak_rss_gb"] > 0.1
    assert records["b"]["summary"]["seconds_per_step"] == 0.25  # what the report shows as s/step

    # without the reset, the peak is the process's so far and says so
    monkeypatch.setattr(memory, "_CLEAR_REFS", tmp_path / "no" / "clear_refs")
    runner.run_pipeline(tmp_path, _cfg(), from_stage="c", progress=False)
    record = json.loads((tmp_path / "pipeline.json").read_text())["stages"]["c"]
    assert record["memory"]["rss_scope"] == "process" and record["memory"]["peak_rss_gb"] > 0


def test_a_changed_setting_rebuilds_its_stage_and_everything_below(toy, tmp_path):
    runner.run_pipeline(tmp_path, _cfg(), progress=False)
    (tmp_path / "b" / "stale.txt").write_text("from the old settings")
    runner.run_pipeline(tmp_path, _cfg("vae.train.lr=0.5"), progress=False)
    assert toy == ["a", "b", "c", "b", "c"]
    assert not (tmp_path / "b" / "stale.txt").exists()  # old outputs removed before the rebuild
    runner.run_pipeline(tmp_path, _cfg("vae.train.lr=0.5", "diffusion.train.lr=0.1"), progress=False)
    assert toy[5:] == ["c"]


def test_missing_output_rebuilds(toy, tmp_path):
    runner.run_pipeline(tmp_path, _cfg(), progress=False)
    (tmp_path / "c" / "out.txt").unlink()
    runner.run_pipeline(tmp_path, _cfg(), progress=False)
    assert toy == ["a", "b", "c", "c"]


def test_from_and_only(toy, tmp_path):
    runner.run_pipeline(tmp_path, _cfg(), progress=False)
    runner.run_pipeline(tmp_path, _cfg(), from_stage="b", progress=False)
    assert toy[3:] == ["b", "c"]
    runner.run_pipeline(tmp_path, _cfg(), only="b", progress=False)
    assert toy[5:] == ["b"]
    with pytest.raises(ConfigError, match="unknown stage"):
        runner.run_pipeline(tmp_path, _cfg(), from_stage="train-vea", progress=False)
    with pytest.raises(ConfigError, match="exclude each other"):
        runner.run_pipeline(tmp_path, _cfg(), from_stage="a", only="b", progress=False)


def test_only_needs_the_earlier_stages(toy, tmp_path):
    with pytest.raises(NeuroLDMError, match="earlier stage 'a' has not been run"):
        runner.run_pipeline(tmp_path, _cfg(), only="b", progress=False)


def test_an_interrupted_stage_is_reentered_without_removing_its_outputs(monkeypatch, tmp_path):
    calls: list[str] = []
    monkeypatch.setattr(runner, "STAGES", _toy_stages(calls, fail={"b"}))
    with pytest.raises(KeyboardInterrupt):
        runner.run_pipeline(tmp_path, _cfg(), progress=False)
    state = json.loads((tmp_path / "pipeline.json").read_text())
    assert state["stages"]["b"]["state"] == "running"
    assert [s["status"] for s in state["last_invocation"]["stages"]] == ["ran", "failed"]
    monkeypatch.setattr(runner, "STAGES", _toy_stages(calls))
    runner.run_pipeline(tmp_path, _cfg(), progress=False)
    assert calls == ["a", "b", "b", "c"]
    assert (tmp_path / "b" / "checkpoint").exists()  # resumed, not wiped


def test_missing_input_fails_before_anything_runs(toy, tmp_path):
    with pytest.raises(ConfigError, match="pipeline.input is not set"):
        runner.run_pipeline(tmp_path, load_config("paper", None, []), progress=False)
    assert toy == []


def test_the_real_stage_order():
    assert STAGE_NAMES == ("demo-cohort", "prepare", "train-vae", "encode", "train-diffusion", "sample",
                           "classify-grid", "evaluate", "saliency", "counterfactual", "report")


def test_partial_clean_keeps_what_does_not_depend_on_the_changed_stage(monkeypatch, tmp_path):
    calls: list[str] = []
    a, b, c = _toy_stages(calls)

    def only_synthetic(run):
        (run / "c" / "synthetic.txt").unlink(missing_ok=True)

    c = Stage(c.name, c.run, c.keys, c.after, c.outputs, clean=c.clean, partial=("b",), partial_clean=only_synthetic)
    monkeypatch.setattr(runner, "STAGES", (a, b, c))
    runner.run_pipeline(tmp_path, _cfg(), progress=False)
    for name in ("real.txt", "synthetic.txt"):
        (tmp_path / "c" / name).write_text("a finished run")
    runner.run_pipeline(tmp_path, _cfg("vae.train.lr=0.5"), progress=False)  # b changed: c keeps its real runs
    assert calls == ["a", "b", "c", "b", "c"]
    assert (tmp_path / "c" / "real.txt").exists() and not (tmp_path / "c" / "synthetic.txt").exists()
    runner.run_pipeline(tmp_path, _cfg("vae.train.lr=0.5", "diffusion.train.lr=0.1"), progress=False)
    assert not (tmp_path / "c" / "real.txt").exists()  # c's own settings changed: everything goes


TORCHRUN_SCRIPT = '''
import json, os, sys
from pathlib import Path
import torch
import torch.distributed as dist
import neuroldm.pipeline.runner as runner
from neuroldm.config import load_config
from neuroldm.pipeline.stages import Stage

run = Path(sys.argv[1])
rank = int(os.environ["RANK"])

def main_only(ctx):  # e.g. sampling: rank 0 alone
    (ctx.run / "a").mkdir(exist_ok=True)
    (ctx.run / "a" / "out.txt").write_text(f"rank {rank}")
    return {"rank": rank}

def ddp(ctx):  # e.g. training: every rank, one collective
    t = torch.tensor([1.0])
    dist.all_reduce(t)
    (ctx.run / "b").mkdir(exist_ok=True)
    (ctx.run / "b" / f"rank{rank}.txt").write_text(str(int(t.item())))
    return {"world": int(t.item())}

runner.STAGES = (Stage("a", main_only, (), (), ("a/out.txt",), clean=("a",)),
                 Stage("b", ddp, (), ("a",), ("b/rank0.txt",), clean=("b",), distributed=True))
runner.run_pipeline(run, load_config("demo", None, ["pipeline.input=/nowhere"]), progress=False)
'''


def test_torchrun_runs_training_stages_on_every_rank_and_the_rest_on_rank_0(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "toy_pipeline.py"
    script.write_text(TORCHRUN_SCRIPT)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29531", str(script), str(run)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "a" / "out.txt").read_text() == "rank 0"  # the main-only stage ran once, on rank 0
    assert [(run / "b" / f"rank{r}.txt").read_text() for r in (0, 1)] == ["2", "2"]  # both ranks joined the DDP one
    state = json.loads((run / "pipeline.json").read_text())
    assert state["stages"]["a"]["summary"] == {"rank": 0} and state["stages"]["b"]["summary"] == {"world": 2}


def _truncating_stages(calls: list[str]):
    """The toy stages, with b a training that a user's vae.train.max_minutes stops at step 3 of 8."""
    a, b, c = _toy_stages(calls)

    def train(ctx):
        calls.append("b")
        (ctx.run / "b").mkdir(exist_ok=True)
        (ctx.run / "b" / "out.txt").write_text("a model")
        last = ctx.run / "b" / "checkpoint"
        resumed_from = int(last.read_text()) if last.exists() else 0
        steps = 3 if ctx.cfg.vae.train.max_minutes is not None else 8
        last.write_text(str(steps))
        summary = {"steps": steps, "planned_steps": 8, "truncated": steps < 8, "resumed_from": resumed_from}
        return {"resumed_from": resumed_from, **({"truncated": truncated("b", summary)} if steps < 8 else {})}

    return a, Stage("b", train, b.keys, b.after, b.outputs, clean=b.clean), c


@pytest.fixture
def truncating(monkeypatch):
    calls: list[str] = []
    stages = _truncating_stages(calls)
    monkeypatch.setattr(runner, "STAGES", stages)
    monkeypatch.setattr(runner, "STAGE_NAMES", tuple(s.name for s in stages))
    return calls


def test_a_truncated_stage_says_so_and_the_next_run_completes_it_and_rebuilds_below(truncating, tmp_path, capsys):
    from neuroldm.cli import _print_pipeline
    from neuroldm.report.headline import write_metrics
    from neuroldm.report.html import render_block
    from neuroldm.report.sections import summary_blocks
    from neuroldm.runs import RunDir

    calls = truncating
    state = runner.run_pipeline(tmp_path, _cfg("vae.train.max_minutes=0.5"), progress=False)
    record = json.loads((tmp_path / "pipeline.json").read_text())["stages"]["b"]
    assert record["state"] == "truncated" and record["truncated"] == [{"name": "b", "steps": 3, "planned_steps": 8}]
    assert [s["status"] for s in state["last_invocation"]["stages"]] == ["ran", "truncated", "ran"]
    assert write_metrics(tmp_path)["truncated_stages"] == ["b"]
    _print_pipeline(state, tmp_path)
    printed = capsys.readouterr().out
    assert "b                truncated" in printed
    assert "WARNING: b is truncated (b 3 of 8 steps)" in printed
    banner = render_block(summary_blocks(RunDir(tmp_path))[0])
    assert 'class="note"' in banner and "Truncated: b stopped before its planned steps (b 3 of 8 steps)" in banner

    # the same settings again: a truncated stage is never up to date; it resumes (its checkpoint kept) and stays
    # truncated while the cap holds, and c, built on the under-trained b, is rebuilt each time b changes
    runner.run_pipeline(tmp_path, _cfg("vae.train.max_minutes=0.5"), progress=False)
    assert calls == ["a", "b", "c", "b"]
    assert json.loads((tmp_path / "pipeline.json").read_text())["stages"]["b"]["summary"]["resumed_from"] == 3
    state = runner.run_pipeline(tmp_path, _cfg(), progress=False)  # without the cap: completes, rebuilds c
    assert calls == ["a", "b", "c", "b", "b", "c"]
    record = json.loads((tmp_path / "pipeline.json").read_text())["stages"]["b"]
    assert record["state"] == "done" and "truncated" not in record and record["summary"]["resumed_from"] == 3
    assert [s["status"] for s in state["last_invocation"]["stages"]] == ["reused", "ran", "ran"]
    assert write_metrics(tmp_path)["truncated_stages"] == []
    assert not any("Truncated" in render_block(b) for b in summary_blocks(RunDir(tmp_path)))
    runner.run_pipeline(tmp_path, _cfg(), progress=False)
    assert calls[6:] == []  # done now: reused like any other stage


def test_only_accepts_a_truncated_earlier_stage(truncating, tmp_path):
    calls = truncating
    runner.run_pipeline(tmp_path, _cfg("vae.train.max_minutes=0.5"), progress=False)
    runner.run_pipeline(tmp_path, _cfg("vae.train.max_minutes=0.5"), only="c", progress=False)
    assert calls == ["a", "b", "c", "c"]
