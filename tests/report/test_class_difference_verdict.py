"""The class-difference verdict in metrics.json, the bars and the report (the report tests' fake run, its
evaluation given a flagged verdict)."""

import json
from html import escape

import pytest
from report_run import make_fake_run

from neuroldm.config import PipelineConfig
from neuroldm.errors import ConfigError
from neuroldm.metrics.interval import Interval
from neuroldm.report import write_report
from neuroldm.report.headline import NO_INTERVAL, check_bar_keys, collect_metrics, write_metrics

EXCESS = Interval(0.62, 0.50, 0.73, 40, "jackknife")
WHY = ("the generator learned chance differences between its training groups; guidance amplifies them "
       "(amplification 2.3) (excess agreement with training 0.62 [0.50, 0.73]): lower guidance, condition on "
       "nuisance factors (head size, position), or select the checkpoint and guidance on validation subjects")
KEY = "synthetic.class_difference.excess_training_agreement"


@pytest.fixture(scope="module")
def flagged(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    make_fake_run(run)
    path = run / "evaluation" / "metrics.json"
    ev = json.loads(path.read_text())
    cd = ev["class_difference"]
    cd["contrasts"]["TLE-HC"] |= {"corr_baseline_training": 0.36, "corr_baseline_heldout": 0.35,
                                  "excess_training_agreement": EXCESS.to_dict(),
                                  "verdict": "overfits-training-groups", "why": WHY}
    cd |= {"verdict": "overfits-training-groups", "why": WHY, "baseline_set": "real 'val' split"}
    path.write_text(json.dumps(ev))
    return run


def test_the_fake_run_without_baseline_subjects_is_inconclusive_and_says_why(fake_run):
    m = collect_metrics(fake_run[0])
    assert m["synthetic.class_difference.verdict"] == "inconclusive" and KEY not in m
    html = write_report(fake_run[0]).read_text()
    assert "Class-difference verdict: inconclusive (no real baseline subjects" in html


def test_the_excess_and_the_verdict_are_flat_keys_and_shown(flagged):
    m = collect_metrics(flagged)
    assert (m[KEY], m[f"{KEY}.low"], m[f"{KEY}.high"], m[f"{KEY}.n"]) == (0.62, 0.50, 0.73, 40)
    assert m["synthetic.class_difference.verdict"] == "overfits-training-groups"
    write_metrics(flagged)
    html = write_report(flagged).read_text()
    assert escape(f"Class-difference verdict: overfits-training-groups ({WHY}). Real baseline: real 'val' split.") \
        in html
    assert "0.620 [0.500, 0.730]" in html  # the table's excess column
    assert f"none: {NO_INTERVAL['synthetic.class_difference.verdict']}" in html  # the headline row


def test_a_bar_on_the_excess_is_judged_and_the_verdict_takes_no_bar(flagged):
    bars = {KEY: "<= 0"}
    check_bar_keys(bars)
    m = write_metrics(flagged, PipelineConfig(bars=bars))
    assert m["bars"][KEY] == {"bar": "<= 0", "value": 0.62, "low": 0.50, "high": 0.73, "n": 40, "pass": False}
    assert m["bars_passed"] is False
    html = write_report(flagged).read_text()
    table = html.index("Quality bars of this run")
    assert html.index(KEY, table) < html.index("✗ missed", table)
    with pytest.raises(ConfigError, match="synthetic.class_difference.verdict is not a metric"):
        check_bar_keys({"synthetic.class_difference.verdict": "== 0"})
