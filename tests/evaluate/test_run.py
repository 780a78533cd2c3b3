"""``evaluate`` end to end on tiny phantom volumes: a well-formed metrics.json, the baseline, the audit, the CLI."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from evaluation_phantoms import brain, write_samples
from safetensors.torch import save_file

from neuroldm.cli import main
from neuroldm.config import EvaluateConfig
from neuroldm.data.manifest import read_manifest
from neuroldm.evaluate import inception
from neuroldm.evaluate.run import evaluate
from neuroldm.metrics.interval import Interval

CLASSES = ["HC", "TLE"]


def _cfg(tiny_script, **kw):
    path, sha1 = tiny_script
    return EvaluateConfig(**({"inception_path": str(path), "inception_sha1": sha1, "slice_stride": 7,
                              "ms_ssim_pairs": 2, "kid_subsets": 3, "prdc_k": 2, "batch_size": 8,
                              "closest_pairs": 2} | kw))


def _volume(path):
    return np.asarray(nib.load(path).dataobj, np.float32)


def test_metrics_json_is_well_formed_with_baseline_and_audit(cohort, tmp_path, tiny_script):
    rows = read_manifest(cohort)
    train = rows[rows["split"] == "train"]
    planted = _volume(train["path"].iloc[3])
    volumes = [(planted, int(train["label"].iloc[3]))] + [(brain(500 + s, s % 2), s % 2) for s in range(7)]
    samples = write_samples(tmp_path / "syn", volumes, train_subjects=list(train["subject"]))
    m = evaluate(cohort, samples, tmp_path / "out", _cfg(tiny_script), CLASSES, progress=False)

    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == json.loads(json.dumps(m))
    assert m["feature_network"]["metric"] == "fid" and m["feature_network"]["sha1"] == tiny_script[1]
    assert m["real"]["n_reference"] == {"total": 16, "HC": 8, "TLE": 8}
    assert m["real"]["n_heldout"] == {"total": 6, "HC": 3, "TLE": 3}
    assert m["synthetic"]["n_used"] == {"total": 6, "HC": 3, "TLE": 3}  # matched to the held-out N per class
    assert m["synthetic"]["n_audited"]["total"] == 8
    assert m["slice_positions"] == {"sagittal": 3, "coronal": 3, "axial": 3}
    assert set(m["groups"]) == {"overall", "HC", "TLE"}
    for group, n in (("overall", 16), ("HC", 8), ("TLE", 8)):
        for comparison in ("synthetic", "real_baseline"):
            res = m["groups"][group][comparison]
            fid = res["fid"]
            assert (fid["n_a"], fid["n_b"]) == (n, 6 if group == "overall" else 3)
            assert [len(fid["axes"][a]["fid"]) for a in ("sagittal", "coronal", "axial")] == [3, 3, 3]
            assert fid["mean"] > 0 and fid["fid_2_5d"] > 0
            assert res["fid_3d"] == {"skipped": "no MedicalNet weights (evaluate.medicalnet_path)"}
            assert res["kid"]["n"] == 3 and res["ms_ssim"]["n"] == 2
            assert Interval.from_dict(res["kid"]).method == Interval.from_dict(res["ms_ssim"]).method == "normal"
            assert set(res["prdc"]) >= {"precision", "recall", "density", "coverage"}
    image = m["memorization"]["image"]
    assert image["flagged"][0]["sample"] == "syn-00"
    assert image["flagged"][0]["nearest_training"] == train["subject"].iloc[3]
    assert m["memorization"]["training_set"].startswith("generator's training subjects")
    assert m["fidelity"] == {"skipped": "no classifier given"}
    assert m["memorization"]["latent"] == {"skipped": "no autoencoder run given"}
    for name in ("slice_fid_overall.png", "slice_fid_HC.png", "slice_fid_TLE.png", "closest_pairs.png"):
        assert name in m["figures"] and (tmp_path / "out" / name).stat().st_size > 1000


def test_test_volumes_as_synthetic_reproduce_the_baseline_exactly(cohort, tmp_path, tiny_script):
    # the same volumes entering as 'synthetic' and as held-out real must get the same numbers: one normalisation
    rows = read_manifest(cohort)
    test = rows[rows["split"] == "test"]
    volumes = [(_volume(p), int(y)) for p, y in zip(test["path"], test["label"], strict=True)]
    samples = write_samples(tmp_path / "syn", volumes, train_subjects=[])
    m = evaluate(cohort, samples, tmp_path / "out", _cfg(tiny_script, figures=False), CLASSES, progress=False)
    for group in ("overall", "HC", "TLE"):
        syn, base = m["groups"][group]["synthetic"], m["groups"][group]["real_baseline"]
        for axis in ("sagittal", "coronal", "axial"):
            # equal up to the summation order (rows come per class on the synthetic side)
            assert syn["fid"]["axes"][axis]["fid"] == pytest.approx(base["fid"]["axes"][axis]["fid"], rel=1e-7)
        assert syn["kid"]["value"] == pytest.approx(base["kid"]["value"], rel=1e-7)
    assert m["memorization"]["training_set"].startswith("real 'train' split")


def test_same_seed_same_numbers(cohort, tmp_path, tiny_script):
    samples = write_samples(tmp_path / "syn", [(brain(700 + s, s % 2), s % 2) for s in range(6)], [])
    runs = [evaluate(cohort, samples, tmp_path / f"o{i}", _cfg(tiny_script, figures=False, match_n=False, ms_ssim_pairs=1, max_volumes=6,
                                                                          slice_stride=100),
                     CLASSES, progress=False) for i in range(2)]
    for m in runs:
        m.pop("seconds")
    assert json.dumps(runs[0]["groups"], sort_keys=True) == json.dumps(runs[1]["groups"], sort_keys=True)


def test_cli_without_weights_is_one_line_and_exit_2(cohort, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(inception, "_package_file", lambda: None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    samples = write_samples(tmp_path / "syn", [(brain(800 + s, s % 2), s % 2) for s in range(4)], [])
    code = main(["evaluate", "--real", str(cohort), "--synthetic", str(samples), "--out", str(tmp_path / "o"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("neuroldm evaluate: error: no InceptionV3 FID weights found")
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_cli_random_features_runs_and_names_its_metric(cohort, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(inception, "_package_file", lambda: None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    samples = write_samples(tmp_path / "syn", [(brain(900 + s, s % 2), s % 2) for s in range(6)], [])
    code = main(["evaluate", "--real", str(cohort), "--synthetic", str(samples), "--out", str(tmp_path / "o"),
                 "--random-features", "--no-progress", "--set", "evaluate.slice_stride=100",
                 "--set", "evaluate.max_volumes=6",
                 "--set", "evaluate.kid_subsets=2",
                 "--set", "evaluate.figures=false", "--set", "evaluate.ms_ssim_pairs=1", "--set", "evaluate.prdc_k=2"])
    out = capsys.readouterr().out
    assert code == 0 and "fid_random_features" in out
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    res = m["groups"]["overall"]["synthetic"]
    assert "fid" not in res and "fid_random_features" in res and "kid_random_features" in res


def test_latent_space_audit_and_3d_fid(cohort, tmp_path, tiny_script, monkeypatch):
    from neuroldm.config import VAEConfig
    from neuroldm.evaluate import run as evaluate_run
    from neuroldm.runs import RunDir
    from neuroldm.vae import encode
    from neuroldm.vae.network import build_vae
    from neuroldm.vae.perceptual import MedicalNetResNet10
    from neuroldm.vae.weights import export_vae

    def pooled_encoder(model, x, cfg):  # a cheap deterministic stand-in for the autoencoder's posterior
        mu = torch.nn.functional.avg_pool3d(x, 4)
        return mu, torch.ones_like(mu)

    monkeypatch.setattr(encode, "encode_volume", pooled_encoder)  # encode_cohort's reference
    monkeypatch.setattr(evaluate_run, "encode_volume", pooled_encoder)  # the one evaluate imports
    vae_cfg = VAEConfig(arch="demo", latent_channels=1)
    export_vae(build_vae(vae_cfg).eval(), vae_cfg, RunDir(tmp_path / "run").vae.model)
    encode.encode_cohort(tmp_path / "run", cohort, progress=False)
    train = read_manifest(cohort).query("split == 'train'")
    volumes = [(_volume(train["path"].iloc[2]), 0)] + [(brain(600 + s, s % 2), s % 2) for s in range(5)]
    samples = write_samples(tmp_path / "syn", volumes, train_subjects=list(train["subject"]))
    torch.manual_seed(0)
    medicalnet = tmp_path / "resnet_10.safetensors"
    save_file(MedicalNetResNet10().state_dict(), str(medicalnet))
    cfg = _cfg(tiny_script, figures=False, slice_stride=100, ms_ssim_pairs=1, max_volumes=6,
               medicalnet_path=str(medicalnet))
    m = evaluate(cohort, samples, tmp_path / "out", cfg, CLASSES, vae_run=tmp_path / "run", progress=False)
    latent = m["memorization"]["latent"]
    assert latent["space"].startswith("latent") and latent["n_heldout"] == 6
    assert latent["closest"][0]["sample"] == "syn-00" and latent["closest"][0]["distance"] == pytest.approx(0, abs=1e-4)
    assert latent["closest"][0]["nearest_training"] == train["subject"].iloc[2]
    assert latent["closest"][1]["distance"] > 0.1
    fid3d = m["groups"]["overall"]["synthetic"]["fid_3d"]
    assert fid3d["value"] > 0 and (fid3d["n_a"], fid3d["n_b"]) == (6, m["synthetic"]["n_used"]["total"])


def test_cli_classifier_adds_conditional_fidelity(cohort, tmp_path, tiny_script, capsys):
    from neuroldm.classify.network import build_classifier
    from neuroldm.classify.predict import export_classifier
    from neuroldm.config import ClassifierConfig

    ccfg = ClassifierConfig(arch="cnn")
    torch.manual_seed(0)
    export_classifier(build_classifier(ccfg, num_classes=2), ccfg, tmp_path / "clf" / "model.safetensors",
                      {"classes": CLASSES, "grid": [1, 1, 1], "spacing": [1, 1, 1]})
    samples = write_samples(tmp_path / "syn", [(brain(700 + s, s % 2), s % 2) for s in range(4)], [])
    path, sha1 = tiny_script
    code = main(["evaluate", "--real", str(cohort), "--synthetic", str(samples), "--out", str(tmp_path / "o"),
                 "--classifier", str(tmp_path / "clf"), "--inception", str(path), "--no-progress",
                 "--set", f"evaluate.inception_sha1={sha1}", "--set", "evaluate.slice_stride=100",
                 "--set", "evaluate.figures=false", "--set", "evaluate.ms_ssim_pairs=1",
                 "--set", "evaluate.kid_subsets=2", "--set", "evaluate.prdc_k=2"])
    assert code == 0, capsys.readouterr().err
    fidelity = json.loads((tmp_path / "o" / "metrics.json").read_text())["fidelity"]
    assert fidelity["n"] == 4 and 0 <= fidelity["value"] <= 1 and fidelity["method"] == "wilson"
    assert {k: v["n"] for k, v in fidelity["per_class"].items()} == {"HC": 2, "TLE": 2}
