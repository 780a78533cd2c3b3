"""benchmarks/paper_scale.py: the preset's plan it projects with, its table, and one --quick run end to end."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from neuroldm.config import load_config

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "paper_scale.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("paper_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_projection_uses_the_presets_steps_and_the_whole_classifier_grid(bench):
    cfg = load_config("paper")
    plan = bench.plan_of(cfg)
    assert plan["train-vae"] == {"steps": 100_000, "runs": 1}  # paper.yaml's vae.train.steps
    assert plan["train-diffusion"] == {"steps": cfg.diffusion.train.steps, "runs": 1}  # as the pipeline resolves it
    # classifier grid: real, synthetic, mixed x 4 ratios, subset x 2 fractions = 8 regimes, x 3 seeds, 1 split
    assert plan["classify"] == {"steps": cfg.classifier.train.steps, "runs": 24}
    cv = bench.plan_of(load_config("paper", None, ["classifier.folds=cv", "classifier.seeds=[0]"]))
    assert cv["classify"]["runs"] == 8 * 5  # every fold of split.folds as validation


def _report(training, sampling=None, evaluate=None):
    return {"quick": False, "overrides": [], "steps": 3, "warmup": 1,
            "machine": {"device_name": "CPU (x86_64)", "threads": 2, "torch": "2.13.0"},
            "plan": {"train-vae": {"steps": 100, "runs": 1}, "train-diffusion": {"steps": 200, "runs": 1},
                     "classify": {"steps": 10, "runs": 24}},
            "training": training, "sampling": sampling or {"error": "not run"}, "evaluate": evaluate or
            {"error": "not run"}}


def test_the_table_projects_each_row_and_says_why_a_row_failed(bench):
    row = {"stage": "classify", "amp": "bf16", "sdpa": "default", "compile": False, "grad_checkpointing": True,
           "batch": 8, "seconds_per_step": 30.0, "samples_per_second": 8 / 30, "peak_rss_gb": 6.5,
           "rss_scope": "stage"}
    failed = {"stage": "train-diffusion", "amp": "off (auto)", "sdpa": "flash", "compile": False,
              "grad_checkpointing": False, "error": "RuntimeError: No available kernel. Aborting execution."}
    text = bench.markdown(_report([row, failed]))
    # 30 s x 10 steps x 24 runs = 2 h; the attention column only for the DiT
    assert "| classify | bf16 | – | off | on | 8 | 30 | 0.267 | 6.50 | 10 × 24 runs | 2.0 h |" in text
    assert "| train-diffusion | off (auto) | flash | off | off | failed: RuntimeError: No available kernel." in text
    assert "| failed: not run |" in text


def test_the_table_has_only_the_parts_that_were_measured(bench):
    """``--stages sampling``: no training table and no evaluation row, and no error for them either."""
    report = _report([], sampling={"samplers": [{"sampler": "ddim", "steps": 50, "timed_steps": 2, "batch": 4,
                                                 "seconds_per_step": 2.0, "decode_seconds_per_volume": 9.0,
                                                 "seconds_per_volume": 34.0, "peak_rss_gb": 5.0,
                                                 "rss_scope": "stage"}]})
    report["evaluate"] = {}
    text = bench.markdown(report)
    assert "| ddim | 50 | 2 (extrapolated) | 4 | 2 | 9 | 34 | 5.00 |" in text
    assert "| stage |" not in text and "slice features" not in text and "failed" not in text


@pytest.mark.slow  # five child processes, each importing torch and MONAI: ~2 CPU minutes (15 on a busy machine)
def test_a_quick_run_measures_every_stage_and_writes_the_table(tmp_path):
    # its own process group, so a timeout ends the measuring children too, not only the script
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--quick", "--steps", "2", "--warmup", "1",
                             "--sampling-steps", "2", "--amp", "bf16", "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    report = json.loads((tmp_path / "paper_scale.json").read_text())
    assert [r["stage"] for r in report["training"]] == ["train-vae", "train-diffusion", "classify"]
    for row in report["training"]:
        assert "error" not in row, row
        assert row["seconds_per_step"] > 0 and row["samples_per_second"] > 0 and row["peak_rss_gb"] > 0.1
    samplers = {r["sampler"]: r for r in report["sampling"]["samplers"]}
    assert set(samplers) == {"ddpm", "ddim", "dpm++"}
    assert samplers["ddpm"]["steps"] == 1000 and samplers["ddpm"]["timed_steps"] == 2  # extrapolated
    assert all(r["seconds_per_volume"] > r["decode_seconds_per_volume"] > 0 for r in samplers.values())
    assert report["evaluate"]["slices"] == 4 + 5 + 4 and report["evaluate"]["seconds_per_volume"] > 0  # stride 8
    assert (tmp_path / "paper_scale.md").read_text().startswith("# Paper-scale cost on CPU")
