"""benchmarks/cohort_draws.py: its draws, the settings it gives each, and its table of bars per draw."""

import importlib.util
import json
from pathlib import Path

import pytest

from neuroldm.config import load_config

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "cohort_draws.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("cohort_draws", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_draw_is_a_seed_a_loss_range_and_a_tle_share(bench):
    draw = bench.parse_draw("7:0.35-0.45:0.4")
    assert draw == {"seed": 7, "atrophy": [0.35, 0.45], "tle_fraction": 0.4}
    cfg = load_config("demo", None, bench.draw_overrides(draw))  # the demo preset takes them as they are
    assert (cfg.demo_cohort.seed, cfg.demo_cohort.atrophy, cfg.demo_cohort.tle_fraction) == (7, (0.35, 0.45), 0.4)
    for bad, says in (("7:0.35:0.4", "expected SEED:LO-HI:SHARE"), ("7:0.5-0.4:0.4", "LO <= HI"),
                      ("7:0.3-0.4:1.0", "0 < SHARE < 1")):
        with pytest.raises(SystemExit, match=says):
            bench.parse_draw(bad)
    # the defaults span the range and leave out the preset's own draw (seed 0)
    defaults = [bench.parse_draw(t) for t in bench.DEFAULT_DRAWS]
    assert len(defaults) >= 3 and 0 not in {d["seed"] for d in defaults}
    assert min(d["atrophy"][0] for d in defaults) == 0.35 and max(d["atrophy"][1] for d in defaults) == 0.60
    assert {d["tle_fraction"] for d in defaults} == {0.4, 0.5, 0.6}


def _metrics(auc_syn: float) -> dict:
    return {"vae.val.ssim": 0.86, "vae.val.ssim.low": 0.85, "vae.val.ssim.high": 0.87, "vae.val.ssim.n": 24,
            "classifier.real.auc": 1.0, "classifier.synthetic.auc": auc_syn,
            "classifier.synthetic.auc_ratio": auc_syn, "synthetic.class_difference.verdict": "ok",
            "wall_seconds": 1500.0}


def test_each_draw_is_judged_by_the_recipes_bars_and_the_table_gives_their_spread(bench, tmp_path):
    bars = {"vae.val.ssim": ">= 0.85", "classifier.synthetic.auc_ratio": ">= 0.85"}
    draws = []
    for seed, auc in ((1, 0.77), (2, 0.95), (3, 1.0)):
        folder = tmp_path / f"draw-{seed}"
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps(_metrics(auc)))
        draws.append({"seed": seed, "atrophy": [0.35, 0.45], "tle_fraction": 0.4,
                      "result": bench.read_draw(folder, bars)})
    assert [d["result"]["bars"]["classifier.synthetic.auc_ratio"]["pass"] for d in draws] == [False, True, True]
    text = bench.markdown({"quick": False, "overrides": [], "bar_keys": list(bars), "draws": draws})
    assert "| `classifier.synthetic.auc_ratio` >= 0.85 | 0.77 ✗ | 0.95 ✓ | 1 ✓ | 2 of 3 | 0.77 / 0.95 / 1 |" in text
    assert "| `vae.val.ssim` >= 0.85 | 0.86 [0.85, 0.87] (N=24) ✓ |" in text
    assert "| class-difference verdict | ok | ok | ok |" in text and "QUICK" not in text
    quick = bench.markdown({"quick": True, "overrides": [], "bar_keys": list(bars), "draws": draws})
    assert "these numbers mean nothing" in quick
