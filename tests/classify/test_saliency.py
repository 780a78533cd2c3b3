"""Saliency: IG completeness, ROI enrichment, and the maps written on the prepared grid and affine."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from neuroldm.classify.efficientnet import EfficientNetV2
from neuroldm.classify.network import build_classifier
from neuroldm.classify.predict import export_classifier
from neuroldm.classify.saliency import attribute, explain_cohort, make_baseline, roi_enrichment
from neuroldm.data.manifest import read_manifest
from neuroldm.io import ALIGNED_ANAT
from neuroldm.metrics.interval import Interval

from classify_cohort import tiny_cfg
from niftis import assert_neuroldm_header


@pytest.mark.parametrize("baseline", ["background", "zero", "blur"])
def test_integrated_gradients_are_complete(baseline):
    """Sum of IG attributions = f(x) − f(baseline) for the target logit (Sundararajan et al. 2017, Prop. 1)."""
    torch.manual_seed(0)
    # BatchNorm in eval mode is affine, so f is smooth along the path (GroupNorm is scale-invariant, singular
    # at a constant image: IG from a constant baseline then needs far more steps)
    model = EfficientNetV2("tiny", num_classes=2, norm="batch").double().eval()
    x = torch.randn(1, 1, 16, 20, 16, dtype=torch.float64)
    cfg = tiny_cfg(f"classifier.saliency.baseline={baseline}", "classifier.saliency.ig_steps=64").classifier.saliency
    attr, delta = attribute(model, x, 1, "integrated_gradients", cfg)
    with torch.no_grad():
        gap = (model(x) - model(make_baseline(x, baseline)))[0, 1].item()
    assert attr.shape == x.shape
    assert attr.sum().item() == pytest.approx(gap, rel=0.02, abs=1e-4)
    assert abs(delta) < 0.02 * abs(gap) + 1e-4


def test_background_baseline_is_the_scan_border():
    x = torch.full((1, 1, 8, 8, 8), -0.7)
    x[..., 2:6, 2:6, 2:6] = 3.0
    assert torch.equal(make_baseline(x, "background"), torch.full_like(x, -0.7))


def test_roi_enrichment_is_one_at_chance_and_one_over_roi_fraction_when_all_in_roi():
    rng = np.random.default_rng(0)
    roi = np.zeros((40, 40, 40), bool)
    roi[10:20, 10:20, 10:20] = True  # 1/64 of the grid
    inside = np.where(roi, 1.0, 0.0) + 1e-3 * rng.random(roi.shape)
    got = roi_enrichment(inside, roi, top_fraction=0.01)
    assert got["roi_fraction"] == pytest.approx(1 / 64) and got["enrichment"] == pytest.approx(64)
    uniform = [roi_enrichment(rng.random(roi.shape), roi, 0.01)["enrichment"] for _ in range(5)]
    assert np.mean(uniform) == pytest.approx(1.0, abs=0.25)
    assert np.isnan(roi_enrichment(np.zeros(roi.shape), roi)["enrichment"])


@pytest.fixture(scope="module")
def model_file(cohort, tmp_path_factory):
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = build_classifier(cfg.classifier, 2)
    path = tmp_path_factory.mktemp("sal") / "model.safetensors"
    return export_classifier(model, cfg.classifier, path, {"classes": ["HC", "TLE"], "grid": [20, 24, 20],
                                                          "spacing": [8, 8, 8]})


def test_maps_have_the_volume_shape_and_affine(cohort, model_file, tmp_path):
    methods = "[integrated_gradients,input_x_gradient,gradient_shap,saliency,smoothgrad]"
    cfg = tiny_cfg(f"classifier.saliency.methods={methods}", "classifier.saliency.figures=0",
                   "classifier.saliency.ig_steps=4", "classifier.saliency.shap_samples=2",
                   "classifier.saliency.smoothgrad_samples=2")
    summary = explain_cohort(model_file, cohort, tmp_path, cfg, limit=2, progress=False)
    rows = read_manifest(cohort)
    test = rows[rows["split"] == "test"].groupby("label").head(1)
    table = pd.read_csv(tmp_path / "attributions.csv", dtype={"subject": str})
    assert len(table) == 2 * 5 and table["enrichment"].notna().all()
    for method in ("integrated_gradients", "gradient_shap", "smoothgrad"):
        for row in test.itertuples():
            img, vol = nib.load(tmp_path / method / f"{row.subject}.nii.gz"), nib.load(row.path)
            assert img.shape == vol.shape and np.allclose(img.affine, vol.affine)
            assert np.abs(np.asarray(img.dataobj)).sum() > 0
            assert_neuroldm_header(tmp_path / method / f"{row.subject}.nii.gz", ALIGNED_ANAT, f"saliency {method}")
        for cls in ("HC", "TLE"):
            mean = nib.load(tmp_path / method / f"mean_{cls}.nii.gz")
            assert mean.shape == (20, 24, 20) and np.asarray(mean.dataobj).sum() == pytest.approx(1, rel=1e-4)
            assert_neuroldm_header(tmp_path / method / f"mean_{cls}.nii.gz", ALIGNED_ANAT, f"mean |map| {cls}")
    enrichment = Interval.from_dict(summary["methods"]["integrated_gradients"]["enrichment"]["all"])
    assert enrichment.n == 2 and enrichment.method == "bootstrap"
    assert json.loads((tmp_path / "summary.json").read_text())["n_volumes"] == 2


def test_overlay_figures_are_written(cohort, model_file, tmp_path):
    cfg = tiny_cfg("classifier.saliency.methods=[saliency]", "classifier.saliency.figures=1")
    explain_cohort(model_file, cohort, tmp_path, cfg, limit=2, progress=False)
    pngs = sorted(p.name for p in (tmp_path / "saliency" / "figures").glob("*.png"))
    assert len(pngs) == 4 and "mean_TLE.png" in pngs
    assert all((tmp_path / "saliency" / "figures" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_hostile_subject_ids_stay_inside_the_output_folder_and_off_the_class_means(cohort, model_file, tmp_path):
    """A subject id from the cohort table names files only through the sanitiser: ``../../../../elsewhere/SAL``
    writes inside the output folder, and a subject named ``mean_HC`` does not overwrite the HC mean map."""
    rows = pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False)
    test = rows.index[rows["split"] == "test"]
    hc, tle = (test[rows.loc[test, "label_name"] == c][0] for c in ("HC", "TLE"))
    rows.loc[hc, "subject"], rows.loc[tle, "subject"] = "mean_HC", "../../../../elsewhere/SAL"
    for col in ("path", "roi_path"):
        rows[col] = [str((cohort / p).resolve()) for p in rows[col]]
    hostile = tmp_path / "a" / "b" / "c" / "hostile"
    hostile.mkdir(parents=True)
    rows.to_csv(hostile / "manifest.csv", index=False)
    out = tmp_path / "a" / "b" / "c" / "out"
    cfg = tiny_cfg("classifier.saliency.methods=[saliency]", "classifier.saliency.figures=1")
    explain_cohort(model_file, hostile, out, cfg, limit=2, progress=False)
    written = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert all(p.startswith(("a/b/c/hostile/", "a/b/c/out/")) for p in written), written
    maps = sorted(p.name for p in (out / "saliency").glob("*.nii.gz"))
    assert maps == ["--..-..-..-elsewhere-SAL.nii.gz", "_mean_HC.nii.gz", "mean_HC.nii.gz", "mean_TLE.nii.gz"]
    mean = nib.load(out / "saliency" / "mean_HC.nii.gz")
    assert np.asarray(mean.dataobj).sum() == pytest.approx(1, rel=1e-4)  # the class mean, not the subject's map
    table = pd.read_csv(out / "attributions.csv", dtype={"subject": str})
    assert set(table["subject"]) == {"mean_HC", "../../../../elsewhere/SAL"}  # the ids themselves are kept
