"""Covariate conditions of the DiT: the unconditioned model unchanged, value checks, dropout, guidance, draws."""

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch

from neuroldm.config import ConditionSpec, DiffusionConfig, SampleConfig, load_config
from neuroldm.diffusion.conditions import (
    check_request,
    draw_training_row,
    encode,
    parse_condition_args,
    read_conditions_table,
    training_values,
)
from neuroldm.diffusion.process import diffusion_loss, sample_latents, training_scheduler
from neuroldm.diffusion.weights import dit_from_config
from neuroldm.errors import ConfigError, InputError

AGE = ConditionSpec(name="age", type="continuous", range=(0, 100))
SEX = ConditionSpec(name="sex", type="categorical", levels=["F", "M"])


def _tiny_run(cfg: DiffusionConfig, covariates=None):
    """Build (seed 0), train 3 AdamW steps (label dropout on) and sample 2 latents with guidance, as the golden
    values below were recorded on the code before conditions existed."""
    torch.manual_seed(0)
    m = dit_from_config(cfg, (2, 4, 4, 4), 2)
    spec = hashlib.sha256(";".join(f"{k}:{tuple(v.shape)}" for k, v in m.state_dict().items()).encode()).hexdigest()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    sched = training_scheduler(cfg)
    data, y = torch.randn(4, 2, 4, 4, 4), torch.tensor([0, 1, 0, 1])
    losses = []
    m.train()
    for _ in range(3):
        loss = diffusion_loss(m, sched, cfg, data, y, covariates=covariates)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    total = float(sum(p.detach().double().abs().sum() for p in m.parameters()))
    m.eval()
    noise = torch.randn(2, 2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    out = sample_latents(m, cfg, torch.tensor([0, 1]), noise, SampleConfig(sampler="ddim", steps=4, guidance=2.0),
                         covariates=None if covariates is None else covariates[:2])
    return m, spec, losses, total, out


TINY_CFG = {"model": "tiny", "patch": (2, 2, 2), "window": (1, 2, 2), "class_dropout": 0.5,
            "prediction": "v_prediction"}


def test_a_model_without_conditions_is_the_model_of_before():
    """Golden values recorded with the code before `diffusion.conditions` existed (commit c6d3639): the same
    parameters, the same random draws in training, the same samples."""
    m, spec, losses, total, out = _tiny_run(DiffusionConfig(**TINY_CFG))
    assert m.c_embedder is None and len(m.state_dict()) == 31
    assert spec == "f93b7803cb840d2748e1430691039507e2015c129dba2f52ff1efd27e0cd1804"
    np.testing.assert_allclose(losses, [0.8420767784118652, 1.0358607769012451, 1.000622272491455], rtol=1e-5)
    assert total == pytest.approx(5340.245499391483, rel=1e-6)
    np.testing.assert_allclose(out.flatten()[:4].tolist(), [-0.9534129500389099, -0.1571453958749771,
                                                            -0.5742835998535156, -1.196069359779358], atol=1e-4)
    assert float(out.double().sum()) == pytest.approx(-1.6680620104889385, abs=1e-3)
    # the config without conditions dumps as before (model file header, sidecars, pipeline fingerprint)
    assert "conditions" not in DiffusionConfig().model_dump() and "conditions" not in load_config("demo").to_dict()[
        "diffusion"]


def test_a_model_with_conditions_adds_only_its_embedders_and_trains():
    cfg = DiffusionConfig(**TINY_CFG, conditions=[AGE, SEX])
    cov = encode(cfg.conditions, [{"age": 70.0, "sex": "F"}, {"age": None, "sex": "M"}, {"age": 20.0, "sex": None},
                                  {"age": 45.0, "sex": "F"}])
    m, _, losses, _, out = _tiny_run(cfg, cov)
    plain = dit_from_config(DiffusionConfig(**TINY_CFG), (2, 4, 4, 4), 2)
    new = set(m.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(m.state_dict()) and all(k.startswith("c_embedder.") for k in new)
    assert m.state_dict()["c_embedder.embedders.1.weight"].shape == (3, 48)  # F, M and the null level
    assert all(np.isfinite(losses)) and bool(torch.isfinite(out).all())
    assert cfg.model_dump()["conditions"][0] == {"name": "age", "type": "continuous", "range": (0.0, 100.0),
                                                 "levels": None}


def test_encode_normalises_to_the_range_and_levels_with_nan_for_null():
    cov = encode([AGE, SEX], [{"age": 25.0, "sex": "M"}, {"age": None, "sex": "F"}, {}])
    assert cov[0].tolist() == [0.25, 1.0] and bool(torch.isnan(cov[1, 0])) and cov[1, 1] == 0.0 and torch.isnan(cov[2]).all()


def test_bad_requests_are_one_line_naming_the_valid_names_or_values():
    assert check_request([AGE, SEX], {"age": "70"}) == {"age": 70.0, "sex": None}
    with pytest.raises(ConfigError, match=r"^unknown condition 'site'; the model's conditions: age in \[0, 100\]; "
                                          r"sex one of F, M$"):
        check_request([AGE, SEX], {"site": "A"})
    with pytest.raises(ConfigError, match=r"^condition age=120 is outside its range; valid: age in \[0, 100\]$"):
        check_request([AGE, SEX], {"age": "120"})
    with pytest.raises(ConfigError, match=r"^condition sex='X' is not a level; valid: sex one of F, M$"):
        check_request([AGE, SEX], {"sex": "X"})
    with pytest.raises(ConfigError, match=r"^condition age='old' is not a number"):
        check_request([AGE], {"age": "old"})
    with pytest.raises(ConfigError, match=r"the model's conditions: none \(the model has no conditions\)"):
        check_request([], {"age": "70"})
    assert parse_condition_args(["age=70", " sex = F"]) == {"age": "70", "sex": "F"}
    for bad, msg in ((["age"], "expected NAME=VALUE"), (["age=1", "age=2"], "age given twice")):
        with pytest.raises(ConfigError, match=msg):
            parse_condition_args(bad)


@pytest.mark.parametrize("spec,msg", [
    ("{name: age, type: continuous}", "continuous condition 'age' needs range"),
    ("{name: age, type: continuous, range: [5, 5]}", "continuous condition 'age' needs range"),
    ("{name: sex, type: categorical}", "categorical condition 'sex' needs levels"),
    ("{name: sex, type: categorical, levels: [F, F]}", "categorical condition 'sex' needs levels"),
    ("{name: label, type: categorical, levels: [a]}", "condition name 'label' is a column of the sample manifest"),
    ("{name: age, type: ordinal, levels: [a]}", "diffusion.conditions.0.type"),
])
def test_the_conditions_setting_is_checked(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(None, None, [f"diffusion.conditions=[{spec}]"])
    with pytest.raises(ConfigError, match="condition names must be distinct"):
        load_config(None, None, [("diffusion.conditions=[{name: a, type: categorical, levels: [x]},"
                                  "{name: a, type: categorical, levels: [y]}]")])
    # levels are text: 0/1 codes in YAML are the levels "0" and "1"
    cfg = load_config(None, None, ["diffusion.conditions=[{name: site, type: categorical, levels: [0, 1]}]"])
    assert cfg.diffusion.conditions[0].levels == ["0", "1"]


def test_training_values_null_the_missing_and_refuse_the_out_of_range(tmp_path):
    index = pd.DataFrame({"subject": ["a", "b", "c"], "age": ["30", "n/a", ""], "sex": ["F", "M", "NA"]})
    assert training_values([AGE, SEX], index, tmp_path) == [{"age": 30.0, "sex": "F"}, {"age": None, "sex": "M"},
                                                            {"age": None, "sex": None}]
    with pytest.raises(InputError, match=r"subject b: age=130 is outside its range; valid: age in \[0, 100\]"):
        training_values([AGE], index.assign(age=["30", "130", ""]), tmp_path)
    with pytest.raises(InputError, match="no column 'site' for diffusion.conditions: add it to data.covariates"):
        training_values([ConditionSpec(name="site", type="categorical", levels=["A"])], index, tmp_path)


def test_covariates_drop_independently_and_with_the_label(monkeypatch):
    """Training: the label's dropout draw nulls its row's covariates too (the unconditional model is trained as
    often as before); on the other rows each covariate is dropped with the same probability, independently."""
    torch.manual_seed(0)
    m = dit_from_config(DiffusionConfig(**TINY_CFG, conditions=[AGE, SEX]), (2, 4, 4, 4), 2).train()
    seen = {}
    original = type(m.c_embedder).forward

    def spy(self, values, force_drop=None):
        seen["label"] = force_drop
        if force_drop is not None:
            torch.manual_seed(123)
            seen["cov"] = torch.isnan(values) | force_drop[:, None] | (torch.rand(values.shape) < self.dropout)
            torch.manual_seed(123)  # the same draw inside
        return original(self, values, force_drop)

    monkeypatch.setattr(type(m.c_embedder), "forward", spy)
    n = 20000
    y = torch.zeros(n, dtype=torch.long)
    cov = encode([AGE, SEX], [{"age": 40.0, "sex": "F"}] * n)
    with torch.no_grad():
        c = m.condition(y, None, cov)
    label, drop = seen["label"], seen["cov"]
    # the embedding is what the masks say: class null + each condition's null where dropped
    emb = m.c_embedder.embedders
    age_null, sex_null = emb[0]["null"].weight[0], emb[1].weight[2]
    expect = torch.where(label[:, None], m.y_embedder.table.weight[2], m.y_embedder.table.weight[0])
    for k, (null_vec, kept) in enumerate(((age_null, None), (sex_null, emb[1].weight[0]))):
        if kept is None:
            feats = torch.cat([torch.sin(0.4 * m.c_embedder.freqs), torch.cos(0.4 * m.c_embedder.freqs)])
            kept = emb[0]["mlp"](feats)
        expect = expect + torch.where(drop[:, k:k + 1], null_vec, kept)
    expect = expect.detach()
    torch.testing.assert_close(c, expect, rtol=1e-5, atol=1e-6)
    assert 0.48 < float(label.float().mean()) < 0.52  # class_dropout 0.5
    assert bool(drop[label].all())  # a dropped label takes every covariate with it
    rest = drop[~label].float()
    p_age, p_sex, p_both = rest[:, 0].mean(), rest[:, 1].mean(), (rest[:, 0] * rest[:, 1]).mean()
    assert 0.47 < float(p_age) < 0.53 and 0.47 < float(p_sex) < 0.53
    assert abs(float(p_both) - float(p_age * p_sex)) < 0.02  # independent of each other
    m.eval()
    seen.clear()
    m.condition(y[:4], None, cov[:4])
    assert seen["label"] is None  # no dropout when sampling


def test_guidance_nulls_class_and_covariates_in_its_unconditional_branch():
    torch.manual_seed(0)
    m = dit_from_config(DiffusionConfig(**TINY_CFG, conditions=[AGE, SEX]), (2, 4, 4, 4), 2)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.eval()
    x, t, y = torch.randn(2, 2, 4, 4, 4), torch.tensor([100, 700]), torch.tensor([1, 0])
    cov = encode([AGE, SEX], [{"age": 70.0, "sex": "F"}, {"age": 20.0, "sex": None}])
    cond = m(x, t, y, covariates=cov)
    ones = torch.ones(2, dtype=torch.bool)
    uncond = m(x, t, y, force_drop=ones, covariates=cov)
    torch.testing.assert_close(uncond, m(x, t, 1 - y, force_drop=ones, covariates=torch.full_like(cov, float("nan"))))
    torch.testing.assert_close(m.forward_with_cfg(x, t, y, 3.0, covariates=cov), uncond + 3.0 * (cond - uncond),
                               rtol=1e-4, atol=1e-5)
    assert not torch.allclose(cond, m(x, t, y, covariates=encode([AGE, SEX], [{"age": 30.0, "sex": "M"}] * 2)))
    with pytest.raises(ValueError, match=r"expected covariates of shape \(2, 2\)"):
        m(x, t, y, covariates=cov[:, :1])


def test_default_draw_takes_whole_training_rows_by_seed():
    rows = [{"age": 20.0 + i, "sex": "F" if i % 2 else "M"} for i in range(5)]
    draws = [draw_training_row(rows, s) for s in range(4000)]
    assert draw_training_row(rows, 7) == draw_training_row(rows, 7)
    assert all(d in rows for d in draws)  # a drawn row is a training row: the joint distribution, not the marginals
    counts = np.bincount([int(d["age"] - 20) for d in draws], minlength=5) / len(draws)
    np.testing.assert_allclose(counts, 0.2, atol=0.03)


def test_conditions_table(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("label,age,sex\nTLE,70,F\nHC,,M\n")
    assert read_conditions_table(path) == [("TLE", {"age": "70", "sex": "F"}), ("HC", {"age": "", "sex": "M"})]
    path.write_text("age,sex\n70,F\n")
    with pytest.raises(InputError, match="no 'label' column"):
        read_conditions_table(path)
