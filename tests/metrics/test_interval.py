"""The one interval type: its JSON shape, NaN bounds and the text form."""

import json
import math

import numpy as np
import pytest

from neuroldm.io import write_json_atomic
from neuroldm.metrics.interval import BOOTSTRAP, DELONG, WILSON, Interval


def test_to_dict_and_back_through_json(tmp_path):
    iv = Interval(np.float64(0.972), 0.858, np.float32(0.995), np.int64(36), DELONG)
    d = iv.to_dict(std=0.04)
    assert d == {"value": 0.972, "low": 0.858, "high": pytest.approx(0.995), "n": 36, "method": "delong",
                 "level": 0.95, "std": 0.04}
    assert type(d["n"]) is int and type(d["value"]) is float  # numpy scalars never reach the JSON writer
    write_json_atomic(tmp_path / "x.json", d)
    back = Interval.from_dict(json.loads((tmp_path / "x.json").read_text()))
    assert back == iv and back.level == 0.95


def test_nan_bounds_survive_the_json_writer_and_null_reads_as_nan(tmp_path):
    iv = Interval(0.5, math.nan, math.nan, 1, BOOTSTRAP, 0.9)
    write_json_atomic(tmp_path / "x.json", {"enrichment": iv.to_dict()})
    back = Interval.from_dict(json.loads((tmp_path / "x.json").read_text())["enrichment"])
    assert back.value == 0.5 and math.isnan(back.low) and math.isnan(back.high) and back.level == 0.9
    assert not back.bounded and Interval(0.5, 0.1, 0.9, 3, WILSON).bounded
    nulls = Interval.from_dict({"value": None, "low": None, "high": 1.0, "n": 0, "method": "none"})
    assert math.isnan(nulls.value) and math.isnan(nulls.low) and nulls.high == 1.0 and nulls.level == 0.95


def test_extras_may_not_overwrite_the_interval_and_a_non_interval_is_refused():
    with pytest.raises(ValueError, match="low"):
        Interval(1.0, 0.0, 2.0, 3, DELONG).to_dict(low=5)
    with pytest.raises(KeyError, match="method"):
        Interval.from_dict({"value": 1.0, "low": 0.0, "high": 2.0, "n": 3})
    with pytest.raises(KeyError):
        Interval.from_dict({"mean": 1.0, "ci95": [0.0, 2.0]})  # the shape of old outputs


def test_text():
    iv = Interval(0.97213, 0.85806, 0.99512, 36, DELONG)
    assert str(iv) == iv.text() == "0.972 [0.858, 0.995] (N=36)"
    assert Interval(3.214, 2.052, 4.377, 6, BOOTSTRAP).text(".2f", "x") == "3.21x [2.05, 4.38] (N=6)"
    assert iv.text(with_n=False) == "0.972 [0.858, 0.995]"
    assert Interval(0.5, math.nan, math.nan, 1, BOOTSTRAP).text() == "0.500 [nan, nan] (N=1)"
