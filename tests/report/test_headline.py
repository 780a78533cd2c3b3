"""The flat RUN/metrics.json is read from the stages' own outputs (the report tests' fake run)."""

import json

import pytest
from report_run import CF_SSIM, CF_VALIDITY, ENRICHMENT, RECON, make_fake_run

from neuroldm.metrics.interval import Interval
from neuroldm.report.headline import KEYS, collect_metrics, write_metrics


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    return run, make_fake_run(run)


def test_metrics_come_from_the_stage_outputs(fake):
    run, facts = fake
    m = collect_metrics(run)
    assert m["vae.val.ssim"] == RECON["ssim"] and m["vae.val.ssim.n"] == 2 and m["vae.val.psnr"] == RECON["psnr"]
    pooled = {r["regime"]: r for r in facts.grid["pooled"] if r["split"] == "test"}
    real = pooled["real"]
    assert (m["classifier.real.auc"], m["classifier.real.auc.low"], m["classifier.real.auc.high"],
            m["classifier.real.auc.n"]) == (real["auc"], real["auc_low"], real["auc_high"], real["n"])
    syn = next(r for k, r in pooled.items() if k.startswith("synthetic"))
    assert m["classifier.synthetic.auc"] == syn["auc"]
    assert m["classifier.synthetic.auc_ratio"] == pytest.approx(syn["auc"] / real["auc"])
    ig = (m["saliency.ig.roi_enrichment"], m["saliency.ig.roi_enrichment.low"], m["saliency.ig.roi_enrichment.high"],
          m["saliency.ig.roi_enrichment.n"])
    assert ig == (ENRICHMENT.value, ENRICHMENT.low, ENRICHMENT.high, ENRICHMENT.n)
    overall = facts.groups["overall"]
    assert m["fid_random_features.synthetic.overall"] == overall["synthetic"]["fid_random_features"]["mean"]
    assert m["fid_random_features.real_baseline.overall"] == overall["real_baseline"]["fid_random_features"]["mean"]
    assert "fid.synthetic.overall" not in m  # random features are never called FID
    assert m["memorization.flagged"] == 0 and m["memorization.flagged.n"] == 4
    assert 0 <= m["synthetic.class_fidelity.low"] <= m["synthetic.class_fidelity"] <= 1
    assert m["wall_seconds"] == pytest.approx(0.4 + 3456.5)  # finished stages only
    cd = json.loads((run / "evaluation" / "metrics.json").read_text())["class_difference"]["contrasts"]["TLE-HC"]
    corr_heldout = Interval.from_dict(cd["corr_heldout"])
    assert (m["synthetic.class_difference.corr_heldout"], m["synthetic.class_difference.corr_heldout.low"],
            m["synthetic.class_difference.corr_heldout.high"], m["synthetic.class_difference.corr_heldout.n"]) == \
        (corr_heldout.value, corr_heldout.low, corr_heldout.high, 4)
    assert m["synthetic.class_difference.corr_training"] == cd["corr_training"] > 0  # brighter TLE brains in all sets
    assert m["synthetic.class_difference.corr_training.n"] == 4
    assert m["real.class_difference.corr_training_heldout"] == cd["corr_training_heldout"]
    assert m["synthetic.class_difference.amplification"] == cd["amplification"]
    # the counterfactual stage's numbers at its default strength, each with its interval and N
    assert (m["counterfactual.validity"], m["counterfactual.validity.low"], m["counterfactual.validity.n"]) == \
        (CF_VALIDITY.value, CF_VALIDITY.low, CF_VALIDITY.n)
    assert (m["counterfactual.ssim_outside_roi"], m["counterfactual.ssim_outside_roi.high"]) == (CF_SSIM.value,
                                                                                               CF_SSIM.high)
    assert m["counterfactual.roi_enrichment"] == pytest.approx(10.3) and m["counterfactual.identity"] == 1.0
    assert m["counterfactual.reversal"] == 0.443 and m["counterfactual.reversal.n"] == 12


def test_the_realism_ladder_keys_come_from_the_evaluation(fake):
    run, facts = fake
    m = collect_metrics(run)
    ev = json.loads((run / "evaluation" / "metrics.json").read_text())
    overall, lad = ev["groups"]["overall"], ev["ladder"]
    key = "fid_random_features"
    for rung in ("reconstruction", "vae_prior"):
        assert m[f"{key}.{rung}.overall"] == overall[rung][key]["mean"]
        assert m[f"{key}.{rung}.overall.n"] == 6 and m[f"{key}.{rung}.2_5d"] == overall[rung][key]["fid_2_5d"]
    base = overall["real_baseline"][key]["mean"]
    assert m[f"{key}.synthetic.baseline_ratio"] == pytest.approx(overall["synthetic"][key]["mean"] / base)
    assert m[f"{key}.reconstruction.baseline_ratio"] == pytest.approx(overall["reconstruction"][key]["mean"] / base)
    assert m[f"{key}.synthetic.equivalent_blur_mm"] == lad["equivalent_blur"]["synthetic"]["sigma_mm"]
    sharp = Interval.from_dict(lad["sharpness"]["synthetic"])
    assert (m["sharpness.synthetic"], m["sharpness.synthetic.low"], m["sharpness.synthetic.high"],
            m["sharpness.synthetic.n"]) == (sharp.value, sharp.low, sharp.high, 6)
    assert m["sharpness.reconstruction"] == lad["sharpness"]["reconstruction"]["value"]
    assert m["latent.std_ratio"] == 0.8 and m["latent.std_ratio.n"] == 4


def test_written_atomically_and_every_headline_key_documented(fake, tmp_path):
    run, _ = fake
    m = write_metrics(run)
    assert json.loads((run / "metrics.json").read_text()) == m
    for key in m:
        base = key.rsplit(".", 1)[0] if key.endswith((".low", ".high", ".n")) else key
        assert base in KEYS or base.replace("fid_random_features", "fid") in KEYS, key


def test_a_run_with_nothing_yet_has_no_numbers(tmp_path):
    assert collect_metrics(tmp_path) == {}


def test_every_headline_number_has_an_interval_or_says_why_not(fake):
    """Each key of the fake run's metrics either has .low/.high or a reason in NO_INTERVAL, and the report shows
    the reason in the interval's place."""
    from neuroldm.report import write_report
    from neuroldm.report.headline import NO_INTERVAL, VERDICT_KEYS

    run, _ = fake
    m = write_metrics(run)
    for key in m:
        if key.endswith((".low", ".high", ".n")) or key in VERDICT_KEYS:
            continue
        assert f"{key}.low" in m or key.replace("fid_random_features", "fid") in NO_INTERVAL, key
    assert m["vae.val.ssim.low"] <= m["vae.val.ssim"] <= m["vae.val.ssim.high"] and m["vae.val.ssim.n"] == 2
    html = write_report(run).read_text()
    assert f"none: {NO_INTERVAL['memorization.z_u']}" in html
