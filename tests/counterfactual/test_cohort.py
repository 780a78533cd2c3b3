"""The pipeline's counterfactual stage on a tiny run: its files, its table, its numbers, and how they reach
metrics.json; `summarise` on a table made by hand."""

import json

import numpy as np
import pandas as pd
import pytest

from neuroldm.config import load_config
from neuroldm.counterfactual.cohort import counterfactual_cohort, summarise
from neuroldm.data.manifest import read_manifest, reference_frame_code
from neuroldm.metrics.interval import Interval
from neuroldm.report.headline import KEYS, NO_INTERVAL, collect_metrics
from neuroldm.runs import RunDir

from counterfactual_run import TINY
from niftis import assert_neuroldm_header


def test_summarise_counts_and_averages_what_it_says():
    table = pd.DataFrame({
        "source_class": ["HC", "HC", "TLE", "TLE"], "target_class": ["TLE", "TLE", "HC", "HC"],
        "valid": [True, False, True, True], "identity": [True, True, True, False],
        "enrichment": [10.0, 20.0, np.nan, 30.0], "ssim_outside_roi": [0.9, 0.92, 0.94, 0.96],
        "psnr_outside_roi": [30.0, 31.0, 32.0, 33.0], "lateralisation": [0.9, 0.7, 0.5, 0.5],
        "lesion_change": [np.nan, np.nan, 0.2, 0.4], "contralateral_change": [np.nan, np.nan, 0.0, 0.1]})
    m = {k: Interval.from_dict(v) for k, v in summarise(table, "HC").items()}
    assert (m["validity"].value, m["validity"].n, m["validity"].method) == (0.75, 4, "wilson")
    assert (m["identity"].value, m["identity"].n) == (0.75, 4)
    assert (m["roi_enrichment"].value, m["roi_enrichment"].n, m["roi_enrichment"].method) == (20.0, 3, "bootstrap")
    assert m["ssim_outside_roi"].value == pytest.approx(0.93) and m["ssim_outside_roi"].method == "normal"
    assert (m["lateralisation"].value, m["lateralisation"].n) == (pytest.approx(0.8), 2)  # edits from HC only
    assert (m["reversal"].value, m["reversal"].n) == (pytest.approx(0.3), 2)  # edits to HC only
    assert m["contralateral_change"].value == pytest.approx(0.05)


def test_the_stage_edits_every_held_out_subject_to_the_other_class(tiny_run, tmp_path):
    cfg = load_config(None, None, TINY)
    run = RunDir(tmp_path / "run")
    prepared = RunDir(tiny_run).prepared_cohort(json.loads(RunDir(tiny_run).latents.info.read_text())["prepared"])
    out = run.counterfactual
    summary = counterfactual_cohort(tiny_run, RunDir(tiny_run).grid.run("real", 0, None).root, prepared, out.root,
                                    cfg, progress=False)
    test = read_manifest(prepared).query("split == 'test'")
    n = len(test)
    assert summary["n_subjects"] == n and summary["strengths"] == [0.5, 1.0]
    assert summary["model_evaluations"] == {"0.5": 10, "1": 20}  # inversion: up, then down
    table = pd.read_csv(out.table)
    assert len(table) == 2 * n and set(table["strength"]) == {0.5, 1.0}
    assert (table["source_class"] != table["target_class"]).all() and table["valid"].dtype == bool
    assert table["identity"].dtype == bool and table["enrichment"].notna().all()  # the phantoms have ROI masks
    for key in ("validity", "identity", "roi_enrichment", "ssim_outside_roi", "reversal", "lateralisation"):
        assert summary["default"][key]["n"] > 0, key
    assert [s["strength"] for s in summary["sweep"]] == [0.5, 1.0]
    assert sum(d["validity"]["n"] for d in summary["directions"].values()) == n

    # at the default strength: every volume, its difference and sidecar; a figure for the first per direction
    default = table[table["strength"] == 0.5]
    for name in default["counterfactual"]:
        assert out.volume(name).exists() and out.difference(name).exists() and out.sidecar(name).exists()
    frame = reference_frame_code(test)
    assert_neuroldm_header(out.volume(default["counterfactual"].iloc[0]), frame, "counterfactual")
    assert_neuroldm_header(next(out.root.glob("*_reconstruction.nii.gz")), frame, "reconstruction")
    assert len(out.figures()) == default.groupby(["source_class", "target_class"]).ngroups
    assert len(list(out.root.glob("*_reconstruction.nii.gz"))) == n
    assert not any(out.volume(name).exists() for name in table.loc[table["strength"] == 1.0, "counterfactual"])

    metrics = collect_metrics(run)
    for key in ("validity", "roi_enrichment", "ssim_outside_roi", "identity", "reversal"):
        flat = f"counterfactual.{key}"
        assert flat in KEYS and flat not in NO_INTERVAL
        assert metrics[flat] == summary["default"][key]["value"] and metrics[f"{flat}.n"] > 0
        assert f"{flat}.low" in metrics and f"{flat}.high" in metrics
