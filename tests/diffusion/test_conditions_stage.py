"""A tiny run with covariates: `data.covariates` and `diffusion.conditions` set on the command line, trained, and
sampled with `--condition`, `--conditions FILE` and the default draw from the training cohort; sidecars, manifest,
bad requests and the exported bundle."""

import json

import pandas as pd
import pytest

from neuroldm.bundle import open_bundle
from neuroldm.cli import main
from neuroldm.config import load_config
from neuroldm.diffusion.conditions import draw_training_row, training_values
from neuroldm.diffusion.weights import load_dit
from neuroldm.export import export_run
from neuroldm.samples import read_sample_manifest

from tiny_run import SUBJECTS, TINY, encoded_run

COVARIATES = ["data.covariates=[age,sex]"]
CONDITIONS = [("diffusion.conditions=[{name: age, type: continuous, range: [0, 100]}, "
               "{name: sex, type: categorical, levels: [F, M]}]")]
# TLE subjects (even numbers) are F, HC ones M; sub-03 has no age (n/a: its null condition)
AGES = {s: "n/a" if s == "sub-03" else str(20 + 5 * i) for i, s in enumerate(sorted(SUBJECTS))}
SEXES = {s: "F" if SUBJECTS[s] == "TLE" else "M" for s in SUBJECTS}
SAMPLE = ["--sampler", "ddim", "--steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = encoded_run(tmp_path_factory.mktemp("conditions"), TINY + COVARIATES, {"age": AGES, "sex": SEXES})
    sets = [x for s in CONDITIONS for x in ("--set", s)]
    assert main(["train-diffusion", "--run", str(run), "--no-progress", *sets]) == 0
    return run


def _sidecars(out):
    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json") if p.name != "samples.json"}


def test_the_model_records_its_conditions_and_samples_with_given_ones(run, tmp_path):
    _, dcfg, _ = load_dit(run)
    assert [c.name for c in dcfg.conditions] == ["age", "sex"] and dcfg.conditions[1].levels == ["F", "M"]
    out = tmp_path / "s"
    assert main(["sample", "--run", str(run), "--label", "TLE", "--condition", "age=70", "--condition", "sex=F",
                 "--n", "1", "--out", str(out), *SAMPLE]) == 0
    side = _sidecars(out)["TLE_ddim2_g1_seed0"]
    assert side["conditions"] == {"age": 70.0, "sex": "F"} and side["conditions_source"] == "given"
    rows = read_sample_manifest(out).rows
    assert rows[["age", "sex"]].values.tolist() == [[70.0, "F"]]
    # a condition left out is null; the same volume asked with other conditions is refused, not skipped
    assert main(["sample", "--run", str(run), "--label", "TLE", "--condition", "age=30", "--n", "1", "--seed", "5",
                 "--out", str(out), *SAMPLE]) == 0
    assert _sidecars(out)["TLE_ddim2_g1_seed5"]["conditions"] == {"age": 30.0, "sex": None}
    assert main(["sample", "--run", str(run), "--label", "TLE", "--condition", "age=40", "--n", "1", "--out", str(out),
                 *SAMPLE]) == 2


def test_the_default_draws_training_rows_of_the_class_by_seed(run, tmp_path):
    out = tmp_path / "s"
    assert main(["sample", "--run", str(run), "--label", "TLE", "--n", "6", "--out", str(out), *SAMPLE]) == 0
    _, dcfg, _ = load_dit(run)
    index = pd.read_csv(run / "latents" / "index.csv", dtype=str, keep_default_na=False)
    train = index[(index["split"] == "train") & (index["label_name"] == "TLE")]
    rows = training_values(dcfg.conditions, train, "index")
    assert rows and all(r["sex"] == "F" for r in rows)
    for side in _sidecars(out).values():
        assert side["conditions_source"] == "training-cohort"
        assert side["conditions"] == draw_training_row(rows, side["seed"]) and side["conditions"] in rows


def test_a_conditions_table_gives_each_volume_its_label_and_conditions(run, tmp_path):
    table = tmp_path / "conditions.csv"
    table.write_text("label,age,sex\nTLE,70,F\nHC,,M\n")
    out = tmp_path / "s"
    assert main(["sample", "--run", str(run), "--conditions", str(table), "--seed", "3", "--out", str(out),
                 *SAMPLE]) == 0
    sides = _sidecars(out)
    assert sides["TLE_ddim2_g1_seed3"]["conditions"] == {"age": 70.0, "sex": "F"}
    assert sides["HC_ddim2_g1_seed4"]["conditions"] == {"age": None, "sex": "M"}
    rows = read_sample_manifest(out).rows.set_index("sample")
    # one column per condition, a null one empty (the reader keeps the column as text then)
    assert rows.loc["HC_ddim2_g1_seed4", ["age", "sex"]].tolist() == ["", "M"]
    assert rows.loc["TLE_ddim2_g1_seed3", ["age", "sex"]].tolist() == ["70.0", "F"]


@pytest.mark.parametrize("args,message", [
    (["--label", "TLE", "-n", "1", "--condition", "site=A"],
     "unknown condition 'site'; the model's conditions: age in [0, 100]; sex one of F, M"),
    (["--label", "TLE", "-n", "1", "--condition", "age=150"],
     "condition age=150 is outside its range; valid: age in [0, 100]"),
    (["--label", "TLE", "-n", "1", "--condition", "sex=X"], "condition sex='X' is not a level; valid: sex one of F, M"),
    (["--label", "TLE"], "give --label and -n (or --conditions FILE)"),
])
def test_bad_requests_exit_2_with_one_line(run, tmp_path, capsys, args, message):
    assert main(["sample", "--run", str(run), *args, "--out", str(tmp_path / "s"), *SAMPLE]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"neuroldm sample: error: {message}"
    assert not (tmp_path / "s").exists()


def test_a_bad_table_row_is_named(run, tmp_path, capsys):
    table = tmp_path / "c.csv"
    table.write_text("label,age\nTLE,50\nTLE,101\n")
    assert main(["sample", "--run", str(run), "--conditions", str(table), "--out", str(tmp_path / "s"), *SAMPLE]) == 2
    assert capsys.readouterr().err.strip() == ("neuroldm sample: error: conditions row 2: condition age=101 is outside "
                                               "its range; valid: age in [0, 100]")


def test_the_bundle_carries_the_conditions(run, tmp_path):
    bundle = tmp_path / "bundle"
    export_run(run, bundle)
    assert open_bundle(bundle).manifest["conditions"][0] == {"name": "age", "type": "continuous",
                                                            "range": [0.0, 100.0], "levels": None}
    out = tmp_path / "s"
    assert main(["sample", "--model", str(bundle), "--label", "HC", "--condition", "sex=M", "--n", "1",
                 "--out", str(out), *SAMPLE]) == 0
    assert main(["sample", "--model", str(bundle), "--label", "HC", "--n", "1", "--seed", "1", "--out", str(out),
                 *SAMPLE]) == 0
    sides = _sidecars(out)
    assert sides["HC_ddim2_g1_seed0"]["conditions"] == {"age": None, "sex": "M"}
    # a bundle holds no subject's covariates: without conditions they are null
    assert sides["HC_ddim2_g1_seed1"]["conditions"] == {"age": None, "sex": None}
    assert sides["HC_ddim2_g1_seed1"]["conditions_source"] == "null"
    assert load_config(None, None, TINY).diffusion.conditions == []
