"""Quality bars: what a run promised (``pipeline.bars``), checked against its flat metrics.

A bar is a comparison of one flat metric (`neuroldm.report.headline.KEYS`) with a number, written as in the
config: ``{"vae.val.ssim": ">= 0.85", "memorization.flagged": "== 0"}``. `judge` gives each bar its verdict with
the metric's value, interval and N as ``metrics.json`` holds them; a metric the run did not produce fails its bar
(``missing``). `neuroldm.report.headline` writes the verdicts into ``metrics.json`` in the pipeline's order.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

from neuroldm.config import BAR_PATTERN
from neuroldm.errors import ConfigError

_OPERATORS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Bar:
    key: str
    op: str
    threshold: float

    @classmethod
    def parse(cls, key: str, text: str) -> Bar:
        match = BAR_PATTERN.fullmatch(str(text).strip())
        if match is None:
            raise ConfigError(f"pipeline.bars.{key}: {text!r} is not a bar; write e.g. '>= 0.85'")
        return cls(key, match.group(1), float(match.group(2)))

    def passes(self, value: float) -> bool:
        return math.isfinite(value) and _OPERATORS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.op} {self.threshold:g}"


def judge(metrics: dict, bars: dict[str, str]) -> dict[str, dict]:
    """``{key: {"bar", "value", "low", "high", "n", "pass"[, "missing"]}}`` for every bar, in the order given."""
    out = {}
    for key in bars:
        bar = Bar.parse(key, bars[key])
        entry: dict = {"bar": str(bar)}
        if key not in metrics:
            entry.update(value=None, passed=False, missing=True)
        else:
            value = float(metrics[key])
            entry.update(value=metrics[key], passed=bar.passes(value))
        for suffix in ("low", "high", "n"):
            if f"{key}.{suffix}" in metrics:
                entry[suffix] = metrics[f"{key}.{suffix}"]
        entry["pass"] = entry.pop("passed")
        out[key] = entry
    return out
