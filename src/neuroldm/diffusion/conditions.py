"""Covariate conditions of the DiT (`diffusion.conditions`): reading, checking and encoding their values.

A condition's value is a float (continuous), a level (categorical, as text) or None, the null condition: not
given, or missing in the manifest (an empty cell or ``n/a``, BIDS's missing value). The network sees the values as
one row per volume of `encode` (``(B, K)`` float, in `diffusion.conditions` order): a continuous value normalised
to [0, 1] over its range, a categorical one as its level's index, null as NaN (`neuroldm.diffusion.layers
.CovariateEmbedder` maps NaN to the condition's learned null embedding).

Values come from the latents index (``RUN/latents/index.csv``), which carries the manifest's covariate columns
(`data.covariates`). Out-of-range values and unknown levels are errors, in the manifest as in a sampling request:
a value the network never saw a range for would be extrapolated silently. Without a condition given, sampling from a
run draws a training volume's row of the asked class (`draw_training_row`), so a synthetic cohort has the real
one's joint distribution of the covariates per class.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from neuroldm.config import ConditionSpec
from neuroldm.errors import ConfigError, InputError

MISSING = {"", "n/a", "na", "nan", "none", "null"}  # case-insensitive text of a missing value

Value = float | str | None


def _is_missing(raw: Any) -> bool:
    return raw is None or (isinstance(raw, float) and math.isnan(raw)) or \
        (isinstance(raw, str) and raw.strip().lower() in MISSING)


def describe(spec: ConditionSpec) -> str:
    """``age in [0, 100]`` or ``sex one of F, M``: what a valid value of `spec` is."""
    if spec.type == "continuous":
        return f"{spec.name} in [{spec.range[0]:g}, {spec.range[1]:g}]"
    return f"{spec.name} one of {', '.join(spec.levels)}"


def parse_value(spec: ConditionSpec, raw: Any) -> Value:
    """`raw` (text, a number or None) as a value of `spec`: a float in its range, one of its levels, or None
    (missing). ValueError naming the valid range or levels otherwise."""
    if _is_missing(raw):
        return None
    if spec.type == "continuous":
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{spec.name}={raw!r} is not a number; valid: {describe(spec)}") from None
        lo, hi = spec.range
        if not lo <= value <= hi:
            raise ValueError(f"{spec.name}={value:g} is outside its range; valid: {describe(spec)}")
        return value
    text = str(raw).strip()
    if text not in spec.levels:
        raise ValueError(f"{spec.name}={text!r} is not a level; valid: {describe(spec)}")
    return text


def check_request(specs: Sequence[ConditionSpec], values: Mapping[str, Any]) -> dict[str, Value]:
    """A sampling request ``{name: raw value}`` checked against the model's conditions: every condition, the ones
    not given null. An unknown name or a bad value is a `ConfigError` naming the valid names or values."""
    by_name = {s.name: s for s in specs}
    unknown = [k for k in values if k not in by_name]
    if unknown:
        valid = "; ".join(describe(s) for s in specs) if specs else "none (the model has no conditions)"
        raise ConfigError(f"unknown condition '{unknown[0]}'; the model's conditions: {valid}")
    try:
        return {s.name: parse_value(s, values.get(s.name)) for s in specs}
    except ValueError as e:
        raise ConfigError(f"condition {e}") from None


def parse_condition_args(items: Sequence[str]) -> dict[str, str]:
    """``["age=70", "sex=F"]`` (``--condition``) as ``{"age": "70", "sex": "F"}``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--condition {item!r}: expected NAME=VALUE, e.g. age=70")
        if name.strip() in out:
            raise ConfigError(f"--condition {name.strip()} given twice")
        out[name.strip()] = value.strip()
    return out


def read_conditions_table(path: str | Path) -> list[tuple[str, dict[str, str]]]:
    """``--conditions FILE``: a CSV (or TSV) with a ``label`` column and one column per condition, one row per
    volume; returns ``[(label, {name: raw value})]`` (an empty cell is the null condition)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "conditions table not found")
    table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str, keep_default_na=False)
    if "label" not in table.columns:
        raise InputError(path, f"no 'label' column (columns: {', '.join(table.columns)}); one row per volume: label "
                               f"and the condition columns")
    if table.empty:
        raise InputError(path, "no rows: one row per volume to sample")
    names = [c for c in table.columns if c != "label"]
    return [(str(r["label"]).strip(), {n: r[n] for n in names}) for _, r in table.iterrows()]


def encode(specs: Sequence[ConditionSpec], rows: Sequence[Mapping[str, Value]]) -> torch.Tensor:
    """``(B, K)`` float32 network input of checked values (`check_request`, `training_values`); NaN = null."""
    out = torch.full((len(rows), len(specs)), float("nan"))
    for i, row in enumerate(rows):
        for k, spec in enumerate(specs):
            v = row.get(spec.name)
            if v is None:
                continue
            if spec.type == "continuous":
                lo, hi = spec.range
                out[i, k] = (float(v) - lo) / (hi - lo)
            else:
                out[i, k] = float(spec.levels.index(str(v)))
    return out


def training_values(specs: Sequence[ConditionSpec], index: pd.DataFrame, where: str | Path) -> list[dict[str, Value]]:
    """Each volume's checked condition values from the latents index's covariate columns (missing -> None); a
    column the index lacks or a bad value is an `InputError` on `where` that says how to fix it."""
    absent = [s.name for s in specs if s.name not in index.columns]
    if absent:
        raise InputError(where, f"no column {absent[0]!r} for diffusion.conditions: add it to data.covariates (its "
                                f"column of participants.tsv or the cohort table), then run prepare and encode again")
    rows = []
    for _, rec in index.iterrows():
        try:
            rows.append({s.name: parse_value(s, rec[s.name]) for s in specs})
        except ValueError as e:
            raise InputError(where, f"subject {rec.get('subject', '?')}: {e} (diffusion.conditions)") from None
    return rows


def draw_training_row(rows: Sequence[Mapping[str, Value]], seed: int) -> dict[str, Value]:
    """One of `rows` (the training volumes of a class), drawn with `seed`: each volume's conditions depend on its
    own seed only, so resampling with replacement volume by volume keeps the rows' joint distribution."""
    if not rows:
        raise ValueError("no training rows to draw conditions from")
    return dict(rows[int(np.random.default_rng(int(seed)).integers(len(rows)))])
