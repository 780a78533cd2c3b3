"""`neuroldm classify` and `classify-grid` end to end on a tiny prepared cohort (EfficientNetV2-tiny, 4 steps)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from neuroldm.classify.grid import run_grid
from neuroldm.classify.predict import load_classifier, predict_proba
from neuroldm.classify.train import train_classifier
from neuroldm.cli import main
from neuroldm.data.dataset import load_prepared_volume
from neuroldm.data.manifest import read_manifest
from neuroldm.metrics.classification import METRICS, SHARES, confusion
from neuroldm.metrics.interval import Interval

from classify_cohort import TINY, tiny_cfg, write_samples


def test_classify_real_selects_on_validation_and_reports_test_with_cis(cohort, tmp_path):
    result = train_classifier(cohort, tmp_path / "c", tiny_cfg(), progress=False)
    rows = read_manifest(cohort)
    test = rows[rows["split"] == "test"]
    assert result["regime"] == "real" and result["n_train"] == (rows["split"] == "train").sum()
    assert result["test"]["n"] == len(test) and result["selected_step"] in (2, 4)
    scored = pd.read_csv(tmp_path / "c" / "predictions.csv").query("split == 'test'")
    shares = {name: share(*confusion(scored["label"], scored["score"]))[1] for name, share in SHARES.items()}
    for name in METRICS:
        assert set(result["test"][name]) == {"value", "low", "high", "n", "method", "level"}
        # a share's N is its denominator (e.g. sensitivity: the positives); every other metric's, the test split
        assert Interval.from_dict(result["test"][name]).n == shares.get(name, len(test)), name
    assert result["test"]["auc_roc"]["method"] == "auc-score"
    with open(tmp_path / "c" / "metrics.csv") as f:
        assert {"val_auc", "val_loss", "loss"} <= set(f.readline().strip().split(","))

    # the exported model reproduces the written test scores through the public API
    model, info = load_classifier(tmp_path / "c")
    assert info["classes"] == ["HC", "TLE"] and info["grid"] == [20, 24, 20] and info["regime"] == "real"
    preds = pd.read_csv(tmp_path / "c" / "predictions.csv", dtype={"subject": str})
    t = preds[preds["split"] == "test"]
    assert t["subject"].tolist() == test["subject"].tolist()
    x = torch.stack([torch.from_numpy(load_prepared_volume(p))[None] for p in test["path"]])
    probs = predict_proba(model, x)
    assert probs.shape == (len(test), 2) and torch.allclose(probs.sum(1), torch.ones(len(test)))
    np.testing.assert_allclose(probs[:, 1].numpy(), t["score"].to_numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        predict_proba(model, x[:, 0])

    # same seed, same numbers (CPU)
    again = train_classifier(cohort, tmp_path / "d", tiny_cfg(), progress=False)
    assert again["test"]["auc_roc"]["value"] == result["test"]["auc_roc"]["value"]
    np.testing.assert_array_equal(pd.read_csv(tmp_path / "d" / "predictions.csv")["score"], preds["score"])


def test_cli_mixed_regime_counts_and_leak_guard(cohort, tmp_path, capsys):
    rows = read_manifest(cohort)
    train = rows[rows["split"] == "train"]
    samples = write_samples(cohort, tmp_path / "syn", train["subject"])
    args = ["classify", "--run", str(tmp_path / "run"), "--prepared", str(cohort), "--no-progress",
            "--regime", "mixed-0.50", "--samples", str(samples)] + [a for t in TINY for a in ("--set", t)]
    assert main(args) == 0
    assert "test N=" in capsys.readouterr().out
    used = pd.read_csv(tmp_path / "run" / "classifier" / "training_set.csv")
    syn = used[used["source"] == "synthetic"]
    assert len(syn) == round(0.5 * len(train)) and (used["source"] == "real").sum() == len(train)
    assert abs(syn["label"].mean() - train["label"].mean()) <= 1 / len(syn)

    leaky = write_samples(cohort, tmp_path / "leaky", rows["subject"])  # the generator saw every subject
    args[args.index(str(samples))] = str(leaky)
    assert main(args + ["--no-resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "samples.json" in err and "validation split" in err


def test_grid_tables_and_paired_delong(cohort, tmp_path):
    rows = read_manifest(cohort)
    samples = write_samples(cohort, tmp_path / "syn", rows.loc[rows["split"] == "train", "subject"])
    cfg = tiny_cfg("classifier.regimes=[mixed]", "classifier.mix_ratios=[1.0]")
    summary = run_grid(cohort, tmp_path / "run", cfg, samples=samples, progress=False)
    grid = tmp_path / "run" / "classify-grid"
    runs = pd.read_csv(grid / "runs.csv")
    assert runs["regime"].tolist() == ["real", "mixed-1.00"] and summary["runs"] == 2
    pooled = {r["regime"]: r for r in summary["pooled"]}
    assert np.isnan(pooled["real"]["p_vs_real"]) and 0 <= pooled["mixed-1.00"]["p_vs_real"] <= 1
    md = (grid / "summary.md").read_text()
    assert "| mixed-1.00 |" in md and "AUC-ROC" in md and "paired DeLong" in md
    assert (grid / "summary.html").read_text().startswith("<!doctype html>")
    # a finished grid is reused, not retrained
    stamp = (grid / "real" / "seed-0" / "result.json").stat().st_mtime_ns
    run_grid(cohort, tmp_path / "run", cfg, samples=samples, progress=False)
    assert (grid / "real" / "seed-0" / "result.json").stat().st_mtime_ns == stamp
    assert json.loads((grid / "summary.json").read_text())["skipped_regimes"] == []
    # the grid's step time: its runs' own, weighted by the steps each timed
    timed = [json.loads((grid / r / "seed-0" / "result.json").read_text())["train_summary"]
             for r in ("real", "mixed-1.00")]
    assert all(t["seconds_per_step"] > 0 and t["steps_this_run"] == 4 for t in timed)
    assert summary["seconds_per_step"] == pytest.approx(sum(t["seconds_per_step"] for t in timed) / 2, abs=1e-4)


def test_grid_seconds_per_step_weights_each_run_by_its_timed_steps():
    from neuroldm.classify.grid import seconds_per_step

    assert seconds_per_step([{"seconds_per_step": 1.0, "steps_this_run": 3},
                             {"seconds_per_step": 2.0, "steps_this_run": 1},
                             {"steps": 5}]) == 1.25  # a run trained before steps were timed is left out
    assert seconds_per_step([{"seconds_per_step": None, "steps_this_run": 0}]) is None


def test_a_truncated_grid_run_is_listed_then_resumed_not_reused(cohort, tmp_path):
    cfg = tiny_cfg("classifier.regimes=[]")  # the real-only run alone
    stopped = run_grid(cohort, tmp_path / "run", tiny_cfg("classifier.regimes=[]", "classifier.train.max_minutes=0"),
                       progress=False)
    assert stopped["truncated_runs"] == [{"name": "real seed 0", "steps": 1, "planned_steps": 4}]
    result = tmp_path / "run" / "classify-grid" / "real" / "seed-0" / "result.json"
    assert json.loads(result.read_text())["train_summary"]["truncated"]
    done = run_grid(cohort, tmp_path / "run", cfg, progress=False)  # resumed to the planned steps
    assert done["truncated_runs"] == []
    summary = json.loads(result.read_text())["train_summary"]
    assert summary["steps"] == 4 and summary["steps_this_run"] == 3 and not summary["truncated"]


def test_selection_prefers_auc_and_breaks_ties_by_loss():
    from neuroldm.classify.train import selection_score

    assert selection_score(1.0, 0.1) > selection_score(1.0, 0.5)
    # the smallest AUC step of a 300 x 300 validation set still outweighs any loss difference
    assert selection_score(0.9 + 1 / (300 * 300), 10.0) > selection_score(0.9, 0.0)
