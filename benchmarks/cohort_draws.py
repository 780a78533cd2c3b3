"""The demo recipe over several cohort draws: does every bar hold on a cohort the preset was not tuned on?

    .venv/bin/python benchmarks/cohort_draws.py --out DIR [--draw SEED:ATROPHY_LO-ATROPHY_HI:TLE_SHARE ...]
                                                [--quick] [--set KEY=VALUE ...]

One cohort is one draw: users have one cohort, and it will not be the demo's. Each draw is the demo cohort
generated with another `demo_cohort.seed`, another hippocampal volume loss range (`demo_cohort.atrophy`) and another
TLE share (`demo_cohort.tle_fraction`); the recipe (the demo preset, plus any ``--set``, one set of settings for
every draw) runs on it unchanged through ``neuroldm demo --out DIR/draw-<seed>``, one draw after another (never two
at once: a busy machine is a slow machine, though the numbers would not change). Run again on the same `--out`, a
complete draw's stages are all reused and a stopped one resumes where it stopped.

The default draws span the range the robustness issue asks for (lesion 35-60 % loss, TLE share 40-60 %), none of
them the preset's own (seed 0, 45-60 %, 50 %)::

    1:0.35-0.45:0.4   2:0.45-0.60:0.6   3:0.40-0.55:0.5

Writes ``cohort_draws.md`` and ``cohort_draws.json`` to `--out`: every bar of the recipe per draw (value, 95 % CI,
N, met or not, by `neuroldm.report.bars.judge` on the run's flat metrics), the headline numbers beside them
(train-on-real and train-on-synthetic AUC, the class-difference agreement with held-out subjects and the verdict),
and per bar its spread over the draws (min, median, max) and how many draws met it. With ``--quick`` every draw is a
``demo --quick`` run (24 subjects, a few steps per model): a check of this script in minutes, whose numbers mean
nothing, as its table says.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DRAWS = ("1:0.35-0.45:0.4", "2:0.45-0.60:0.6", "3:0.40-0.55:0.5")
# read beside the bars: what the robustness issue's table shows
EXTRA_KEYS = ("classifier.real.auc", "classifier.synthetic.auc", "synthetic.class_difference.corr_heldout",
              "synthetic.class_difference.excess_training_agreement")


def parse_draw(text: str) -> dict:
    """``"SEED:LO-HI:SHARE"`` -> ``{"seed", "atrophy": [lo, hi], "tle_fraction"}``; a malformed draw is a one-line
    `SystemExit`."""
    try:
        seed, atrophy, share = text.split(":")
        lo, hi = (float(v) for v in atrophy.split("-"))
        draw = {"seed": int(seed), "atrophy": [lo, hi], "tle_fraction": float(share)}
    except ValueError:
        raise SystemExit(f"--draw {text!r}: expected SEED:LO-HI:SHARE, e.g. 1:0.35-0.45:0.4") from None
    if not (0 <= lo <= hi < 1 and 0 < draw["tle_fraction"] < 1):
        raise SystemExit(f"--draw {text!r}: need 0 <= LO <= HI < 1 and 0 < SHARE < 1")
    return draw


def draw_overrides(draw: dict) -> list[str]:
    lo, hi = draw["atrophy"]
    return [f"demo_cohort.seed={draw['seed']}", f"demo_cohort.atrophy=[{lo},{hi}]",
            f"demo_cohort.tle_fraction={draw['tle_fraction']}"]


def run_draw(draw: dict, folder: Path, quick: bool, overrides: list[str]) -> float:
    """``neuroldm demo`` on one draw into `folder`; its wall seconds (0 when the folder was already complete)."""
    cmd = [sys.executable, "-m", "neuroldm", "demo", "--out", str(folder), "--no-progress",
           *(["--quick"] if quick else []),
           *(x for o in [*draw_overrides(draw), *overrides] for x in ("--set", o))]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    rc = subprocess.call(cmd, stdout=subprocess.DEVNULL)
    if rc != 0:
        raise SystemExit(f"draw {draw['seed']}: neuroldm demo exited {rc}; see {folder / 'run.log'}")
    return time.perf_counter() - start


def read_draw(folder: Path, bars: dict[str, str]) -> dict:
    """One finished draw's bars (judged on its flat metrics) and extra numbers."""
    from neuroldm.report.bars import judge

    metrics = json.loads((folder / "metrics.json").read_text())
    extra = {k: {s: metrics.get(f"{k}{'.' + s if s != 'value' else ''}") for s in ("value", "low", "high", "n")}
             for k in EXTRA_KEYS}
    return {"bars": judge(metrics, bars), "extra": extra,
            "verdict": metrics.get("synthetic.class_difference.verdict"),
            "wall_seconds": metrics.get("wall_seconds")}


def _cell(entry: dict, mark: bool = True) -> str:
    value = entry.get("value")
    if value is None:
        return "–"
    text = f"{value:.3g}"
    if entry.get("low") is not None and entry.get("high") is not None:
        text += f" [{entry['low']:.3g}, {entry['high']:.3g}]"
    if entry.get("n") is not None:
        text += f" (N={entry['n']})"
    return text + ((" ✓" if entry["pass"] else " ✗") if mark and "pass" in entry else "")


def markdown(report: dict) -> str:
    draws = report["draws"]
    names = [f"seed {d['seed']}, loss {d['atrophy'][0]:.0%}–{d['atrophy'][1]:.0%}, TLE {d['tle_fraction']:.0%}"
             for d in draws]
    quick = ("\n\n**QUICK RUNS** (`demo --quick`): a check of the script; the models are far too short-trained, so "
             "these numbers mean nothing." if report["quick"] else "")
    recipe = f"the demo preset{', ' + ', '.join(report['overrides']) if report['overrides'] else ''}"
    out = [f"# The demo recipe over {len(draws)} cohort draws{quick}", "",
           f"Recipe: {recipe}; one set of settings for every draw. 95 % CIs, N beside each value.", "",
           "| | " + " | ".join(names) + " | met | spread (min / median / max) |",
           "|---|" + "---|" * len(draws) + "---|---|"]
    keys = list(report["bar_keys"])
    for key in keys:
        entries = [d["result"]["bars"][key] for d in draws]
        values = [e["value"] for e in entries if e.get("value") is not None]
        spread = (f"{min(values):.3g} / {statistics.median(values):.3g} / {max(values):.3g}" if values else "–")
        out.append(f"| `{key}` {entries[0]['bar']} | " + " | ".join(_cell(e) for e in entries)
                   + f" | {sum(e['pass'] for e in entries)} of {len(entries)} | {spread} |")
    for key in EXTRA_KEYS:
        out.append(f"| `{key}` | " + " | ".join(_cell(d["result"]["extra"][key], mark=False) for d in draws)
                   + " | | |")
    out.append("| class-difference verdict | " + " | ".join(str(d["result"]["verdict"]) for d in draws) + " | | |")
    out.append("| wall time | " + " | ".join(f"{d['result']['wall_seconds'] or 0:.0f} s" for d in draws) + " | | |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="a folder: one run folder per draw, and the tables")
    ap.add_argument("--draw", dest="draws", action="append", default=None, metavar="SEED:LO-HI:SHARE",
                    help=f"a cohort draw (repeatable; default: {' '.join(DEFAULT_DRAWS)})")
    ap.add_argument("--quick", action="store_true", help="demo --quick runs: checks the script, numbers mean nothing")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting of the recipe, the same for every draw")
    args = ap.parse_args(argv)
    draws = [parse_draw(t) for t in (args.draws or DEFAULT_DRAWS)]
    from neuroldm.config import load_config

    bars = load_config("demo", None, args.overrides).pipeline.bars  # the recipe's bars, judged on every draw
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for draw in draws:
        folder = out / f"draw-{draw['seed']}"
        run_draw(draw, folder, args.quick, args.overrides)
        draw["result"] = read_draw(folder, bars)
    report = {"quick": args.quick, "overrides": args.overrides, "bar_keys": list(bars), "draws": draws}
    text = markdown(report)
    (out / "cohort_draws.md").write_text(text)
    (out / "cohort_draws.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
