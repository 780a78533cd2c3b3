"""Three classes end to end on a tiny cohort (HC, and a darker left or right 'hippocampus'): classifier grid
(real and synthetic regimes), conditional fidelity, saliency, metrics.json and the report, with the labels of a
``diagnosis`` column that need no label_map entry (an empty label_map)."""

import json

import numpy as np
import pandas as pd
import pytest
from classify_cohort import TINY, write_samples

from neuroldm.classify.grid import run_grid
from neuroldm.classify.predict import load_classifier, predict_proba
from neuroldm.classify.saliency import explain_cohort
from neuroldm.config import load_config
from neuroldm.data.manifest import read_manifest
from neuroldm.data.prepare import prepare_cohort
from neuroldm.evaluate.fidelity import conditional_fidelity
from neuroldm.io import write_json_atomic
from neuroldm.report import write_report
from neuroldm.report.headline import key_meaning, write_metrics
from neuroldm.runs import RunDir

from phantoms import phantom, save

CLASSES = ["HC", "TLE-L", "TLE-R"]
THREE = TINY + ["classifier.train.steps=2", "classifier.train.val_every=2", "classifier.train.ckpt_every=2",
                "data.bids.label_column=diagnosis", "data.classes=[HC,TLE-L,TLE-R]", "data.label_map={}",
                "split.folds=0",
                "classifier.regimes=[real,synthetic]", "classifier.synthetic_ratio=1.0",
                "classifier.saliency.methods=[integrated_gradients]", "classifier.saliency.ig_steps=2",
                "classifier.saliency.figures=0"]


def _cohort(root):
    """18 subjects, 6 per class; TLE-L / TLE-R have a darker left / right ROI. Returns the prepared folder."""
    bids = root / "bids"
    lines = ["participant_id\tdiagnosis"]
    for k in range(18):
        sub, dx = f"sub-{k:02d}", CLASSES[k % 3]
        data, affine = phantom(shape=(48, 56, 48), spacing=3.0, seed=k, marker=False)
        xyz = np.indices(data.shape).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3]
        for side, x in (("TLE-L", -20.0), ("TLE-R", 20.0)):
            roi = (np.linalg.norm((xyz - [x, 0.0, -10.0]) / [10, 16, 8], axis=1) < 1).reshape(data.shape)
            if dx == side:
                data[roi] *= 0.6
        save(bids / sub / "anat" / f"{sub}_T1w.nii.gz", data, affine)
        lines.append(f"{sub}\t{dx}")
    (bids / "participants.tsv").write_text("\n".join(lines) + "\n")
    prepare_cohort(bids, root / "prep", load_config(None, None, THREE), progress=False, workers=1)
    return root / "prep"


def test_three_classes_end_to_end(tmp_path):
    cfg = load_config(None, None, THREE)
    prep = _cohort(tmp_path)
    rows = read_manifest(prep)
    assert sorted(rows["label_name"].unique()) == CLASSES and set(rows["label"]) == {0, 1, 2}
    train = rows[rows["split"] == "train"]
    samples = write_samples(prep, tmp_path / "samples", train["subject"], per_class=4, classes=CLASSES)
    run = tmp_path / "run"

    grid = run_grid(prep, run, cfg, samples=samples, progress=False)
    assert grid["classes"] == CLASSES and grid["regimes"] == ["real", "synthetic-1.00"]
    real = RunDir(run).grid.run("real", 0, None)
    result = json.loads(real.result.read_text())
    test = result["test"]
    assert set(test["per_class"]) == set(CLASSES) and np.array(test["confusion"]).sum() == test["n"]
    assert test["auc_roc"]["value"] == pytest.approx(np.mean([test["per_class"][c]["auc_roc"]["value"]
                                                              for c in CLASSES]))
    preds = pd.read_csv(real.predictions)
    assert "score" not in preds and {f"p_{c}" for c in CLASSES} <= set(preds.columns)
    assert set(preds["prediction"]) <= {0, 1, 2}
    pooled = {r["regime"]: r for r in grid["pooled"]}
    assert np.isnan(pooled["real"]["p_vs_real"]) and 0 <= pooled["synthetic-1.00"]["p_vs_real"] <= 1
    assert all(0 <= pooled["real"][f"auc_{c}"] <= 1 for c in CLASSES)
    assert "macro AUC" in (RunDir(run).grid.summary_md.read_text())

    # conditional fidelity of the synthetic volumes by the real-trained classifier, where the pipeline puts it
    model, _ = load_classifier(real.root)
    sm = pd.read_csv(samples / "manifest.csv")
    paths = [str(samples / p) for p in sm["path"]]
    fid = conditional_fidelity(lambda v: predict_proba(model, v), paths, list(sm["label"]), CLASSES)
    assert set(fid["per_class"]) == set(CLASSES)
    write_json_atomic(RunDir(run).evaluation.metrics, {"fidelity": fid, "feature_network": {"metric": "fid"},
                                                       "groups": {"overall": {}}})

    explain_cohort(real.root, prep, RunDir(run).saliency.root, cfg, limit=3, progress=False)
    attributions = pd.read_csv(RunDir(run).saliency.root / "attributions.csv")
    assert sorted(attributions["label"]) == [0, 1, 2]  # one volume of each class explained (limit 3)

    m = write_metrics(run)  # the report shows metrics.json
    for regime in ("real", "synthetic"):
        for c in CLASSES:
            key = f"classifier.{regime}.auc.{c}"
            assert m[f"{key}.low"] <= m[key] <= m[f"{key}.high"] and m[f"{key}.n"] == test["n"]
            assert key_meaning(key) and key_meaning(f"classifier.{regime}.recall.{c}")
        assert m[f"classifier.{regime}.auc"] == pytest.approx(np.mean([m[f"classifier.{regime}.auc.{c}"]
                                                                        for c in CLASSES]))
    assert all(f"synthetic.class_fidelity.{c}" in m for c in CLASSES)
    page = write_report(run).read_text()
    assert "Confusion matrix" in page and "AUC TLE-R [95% CI, DeLong]" in page
    assert "classifier.real.auc.TLE-L" in page
