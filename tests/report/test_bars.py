"""Quality bars: parsing, verdicts in pipeline order, metrics.json, the CLI's table and --strict, the report."""

import json

import pytest
from report_run import make_fake_run

from neuroldm.cli import main
from neuroldm.config import PipelineConfig, load_config
from neuroldm.errors import ConfigError
from neuroldm.preflight import preflight
from neuroldm.report import write_report
from neuroldm.report.bars import Bar, judge
from neuroldm.report.headline import KEYS, VERDICT_KEYS, collect_metrics, pipeline_order, write_metrics


@pytest.mark.parametrize("text, value, passes", [(">= 0.85", 0.85, True), (">= 0.85", 0.849, False),
                                                  ("> 5", 5.0, False), ("<= 3", 3.0, True), ("< 1e-3", 0.0, True),
                                                  ("== 0", 0, True), ("== 0", 1, False), (">= 0.5", float("nan"),
                                                                                          False)])
def test_a_bar_is_a_comparison_with_a_number(text, value, passes):
    assert Bar.parse("k", text).passes(value) is passes


def test_bad_bars_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"pipeline.bars.vae.val.ssim: 'at least 0.85' is not a bar"):
        load_config("demo", None, ['pipeline.bars={vae.val.ssim: "at least 0.85"}'])
    cfg = load_config("demo", None, ['pipeline.bars={vae.val.sim: ">= 0.85"}'])
    with pytest.raises(ConfigError, match=r"pipeline.bars: vae.val.sim is not a metric of metrics.json; .*"
                                          r"vae.val.ssim"):
        preflight(cfg, ["report"])


def test_a_config_replaces_the_presets_bars_whole():
    assert set(load_config("demo", None, []).pipeline.bars) == {
        "vae.val.ssim", "classifier.real.auc", "synthetic.class_fidelity", "classifier.synthetic.auc_ratio",
        "saliency.ig.roi_enrichment", "counterfactual.validity", "counterfactual.roi_enrichment",
        "counterfactual.ssim_outside_roi", "counterfactual.identity", "memorization.flagged",
        "fid.synthetic.baseline_ratio", "fid.reconstruction.baseline_ratio"}
    cfg = load_config("demo", None, ['pipeline.bars={vae.val.ssim: ">= 0.9"}'])
    assert cfg.pipeline.bars == {"vae.val.ssim": ">= 0.9"}
    preflight(load_config("demo", None, []), ["report"])  # the demo's own bars name real metrics


def test_verdicts_carry_the_value_interval_and_n_and_a_missing_metric_fails():
    metrics = {"vae.val.ssim": 0.86, "vae.val.ssim.n": 24, "classifier.real.auc": 1.0,
               "classifier.real.auc.low": 0.832, "classifier.real.auc.high": 1.0, "classifier.real.auc.n": 24}
    verdicts = judge(metrics, {"vae.val.ssim": ">= 0.85", "classifier.real.auc": ">= 0.9",
                               "synthetic.class_fidelity": ">= 0.85"})
    assert verdicts["vae.val.ssim"] == {"bar": ">= 0.85", "value": 0.86, "n": 24, "pass": True}
    assert verdicts["classifier.real.auc"] == {"bar": ">= 0.9", "value": 1.0, "low": 0.832, "high": 1.0, "n": 24,
                                               "pass": True}
    assert verdicts["synthetic.class_fidelity"] == {"bar": ">= 0.85", "value": None, "missing": True,
                                                    "pass": False}


def test_pipeline_order_follows_the_stages_not_the_alphabet():
    assert pipeline_order(["memorization.flagged", "vae.val.ssim", "zzz", "classifier.real.auc"]) == [
        "vae.val.ssim", "classifier.real.auc", "memorization.flagged", "zzz"]
    assert all(k in KEYS for k in VERDICT_KEYS)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    make_fake_run(run)
    return run


def test_metrics_json_holds_the_verdicts_and_the_report_leads_with_them_in_pipeline_order(fake):
    measured = collect_metrics(fake)
    bars = {"memorization.flagged": "== 0", "vae.val.ssim": ">= 0.99", "classifier.real.auc": ">= 0.5"}
    m = write_metrics(fake, PipelineConfig(bars=bars))
    assert pipeline_order(m["bars"]) == ["vae.val.ssim", "classifier.real.auc", "memorization.flagged"]
    assert m["bars"]["vae.val.ssim"]["pass"] is (measured["vae.val.ssim"] >= 0.99)
    assert m["bars_passed"] is all(v["pass"] for v in m["bars"].values())
    assert json.loads((fake / "metrics.json").read_text()) == m
    html = write_report(fake).read_text()
    table = html.index("Quality bars of this run")
    assert table < html.index("Headline numbers of the run")  # the bars lead the summary
    assert html.index("vae.val.ssim", table) < html.index("memorization.flagged", table)

    quick = write_metrics(fake, PipelineConfig(bars=bars, quick=True))
    assert quick["quick"] is True and "bars" not in quick and "bars_passed" not in quick
    html = write_report(fake).read_text()
    assert "Quick run: a smoke test" in html and "Quality bars of this run" not in html


def _fake_pipeline(metrics: dict):
    def run_pipeline(out, cfg, **kw):
        out.mkdir(parents=True, exist_ok=True)
        write = {**metrics, "bars": judge(metrics, cfg.pipeline.bars)}
        write["bars_passed"] = all(v["pass"] for v in write["bars"].values())
        (out / "metrics.json").write_text(json.dumps(write))
        return {"last_invocation": {"stages": [{"name": "report", "status": "ran", "seconds": 0.1}], "seconds": 0.1},
                "stages": {}}
    return run_pipeline


@pytest.mark.parametrize("ssim, strict, status", [(0.9, True, 0), (0.5, False, 0), (0.5, True, 1)])
def test_run_prints_the_bar_table_and_strict_fails_on_a_miss(tmp_path, capsys, monkeypatch, ssim, strict, status):
    import neuroldm.pipeline.runner as runner

    monkeypatch.setattr(runner, "run_pipeline", _fake_pipeline({"vae.val.ssim": ssim, "vae.val.ssim.n": 24}))
    argv = ["run", "--preset", "demo", "--set", "pipeline.input=/nowhere", "--set",
            'pipeline.bars={vae.val.ssim: ">= 0.85"}', "--set", "evaluate.random_features=true",
            "--out", str(tmp_path / "r"), "--no-progress", *(["--strict"] if strict else [])]
    assert main(argv) == status
    out = capsys.readouterr().out
    line = next(s for s in out.splitlines() if s.startswith("vae.val.ssim") and ">= 0.85" in s)
    assert ("✓" in line) is (ssim >= 0.85) and ("FAILED" in line) is (ssim < 0.85)
    assert ("NOT every bar met" in out) is (ssim < 0.85)
