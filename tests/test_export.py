"""`neuroldm export`: a tiny run's generator as a bundle that names no subject, samples the run's volumes, refuses a
tampered file, and carries a model card with the run's numbers."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neuroldm.cli import main
from neuroldm.config import load_config
from neuroldm.diffusion.train import train_diffusion
from neuroldm.diffusion.weights import load_dit, subjects_sha256
from neuroldm.evaluate import memorization
from neuroldm.export import shareable_config
from neuroldm.io import save_weights_atomic, write_json_atomic
from neuroldm.runs import RunDir, model_record
from neuroldm.samples import read_sample_manifest

from tiny_run import SUBJECTS, TINY, trained_run

# the run's headline numbers, as `neuroldm report` writes them (flat keys, CIs and N beside their value)
METRICS = {"vae.val.ssim": 0.8123, "vae.val.ssim.low": 0.7901, "vae.val.ssim.high": 0.8345, "vae.val.ssim.n": 2,
           "classifier.real.auc": 0.7791, "classifier.real.auc.low": 0.6112, "classifier.real.auc.high": 0.9023,
           "classifier.real.auc.n": 24, "fid.synthetic.overall": 41.73, "memorization.flagged": 1,
           "memorization.flagged.n": 4, "truncated_stages": []}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny run, trained, with metrics.json and an evaluation whose memorization audit names training
    subjects (as a real one does), so the export is shown to leave them out."""
    run = trained_run(tmp_path_factory.mktemp("export"))
    layout = RunDir(run)
    write_json_atomic(layout.metrics, METRICS)
    train_ids = sorted(SUBJECTS)[:6]
    audit = memorization.audit(np.array([0.3, 0.01, 0.25, 0.4]), np.array([0, 1, 2, 3]), np.array([0.2, 0.3, 0.35]),
                               ["TLE_a", "TLE_b", "HC_a", "HC_b"], train_ids)
    write_json_atomic(layout.evaluation.metrics, {"memorization": {
        "training_set": "generator's training subjects (samples.json)", "n_training": len(train_ids),
        "image": audit | {"space": "image, 1 - correlation after 2x average pooling"}}})
    assert audit["n_copies"] == 1 and audit["copies"][0]["nearest_training"] == train_ids[1]
    return run


@pytest.fixture(scope="module")
def bundle(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "bundle"
    assert main(["export", str(run), "--out", str(out)]) == 0
    return out


def _sample(source_option, source, out, *extra):
    return main(["sample", source_option, str(source), "-n", "2", "--label", "TLE", "--sampler", "ddim", "--steps",
                 "3", "--guidance", "2", "--seed", "5", "--out", str(out), "--no-progress", *extra])


def test_the_bundle_names_no_subject(run, bundle):
    """Every byte of every file of the bundle, binary included, searched for every subject of the cohort."""
    ids = [s.encode() for s in SUBJECTS]
    where_they_are = (run / "diffusion" / "train_subjects.json").read_bytes() + \
        (run / "evaluation" / "metrics.json").read_bytes()
    assert sum(i in where_they_are for i in ids) >= 6  # the search finds them where they are
    files = sorted(p for p in bundle.rglob("*") if p.is_file())
    assert {p.name for p in files} == {"bundle.json", "MODEL_CARD.md", "config.yaml", "vae.safetensors",
                                       "diffusion.safetensors", "latents.json"}
    found = [(p.name, i.decode()) for p in files for i in ids if i in p.read_bytes()]
    assert found == []
    # the model file is the run's, byte for byte: its sha256 (the samples' checkpoint_sha256) is the same
    assert (bundle / "diffusion.safetensors").read_bytes() == (run / "diffusion" / "model.safetensors").read_bytes()


def test_sampling_from_the_bundle_gives_the_runs_volumes(run, bundle, tmp_path):
    """The bundle copied elsewhere and the run out of reach: the same seed gives the same volumes, bit for bit."""
    elsewhere = tmp_path / "other-machine" / "model"
    shutil.copytree(bundle, elsewhere)
    assert _sample("--run-dir", run, tmp_path / "from-run") == 0
    hidden = run.with_name("hidden-run")
    run.rename(hidden)  # the bundle must not need it
    try:
        assert _sample("--model", elsewhere, tmp_path / "from-bundle") == 0
    finally:
        hidden.rename(run)
    a, b = read_sample_manifest(tmp_path / "from-run"), read_sample_manifest(tmp_path / "from-bundle")
    assert list(a.rows["sample"]) == list(b.rows["sample"]) == ["TLE_ddim3_g2_seed5", "TLE_ddim3_g2_seed6"]
    for pa, pb in zip(a.rows["path"], b.rows["path"]):
        ia, ib = nib.load(pa), nib.load(pb)
        assert np.array_equal(np.asarray(ia.dataobj), np.asarray(ib.dataobj))
        assert np.array_equal(ia.affine, ib.affine)
    # the run's samples list its training subjects; the bundle's none, but the same hash of them
    subjects = json.loads((run / "diffusion" / "train_subjects.json").read_text())["train_subjects"]
    assert a.train_subjects == subjects and b.train_subjects == []
    assert a.info["train_subjects_sha256"] == b.info["train_subjects_sha256"] == subjects_sha256(subjects)
    assert a.info["checkpoint_sha256"] == b.info["checkpoint_sha256"]
    assert b.info["bundle"] == str(elsewhere.resolve()) and "run" not in b.info and b.info["prepared"] == ""
    assert not list(elsewhere.glob("run.log")) and not list(elsewhere.glob(".*"))  # the bundle is left as it was


def test_sample_takes_its_defaults_from_the_bundles_config(bundle, tmp_path, monkeypatch):
    import neuroldm.diffusion.sample as sample_module

    seen = []
    monkeypatch.setattr(sample_module, "sample_to_folder", lambda source, out, n, label, scfg, **kw: seen.append(
        scfg) or {"written": 0, "skipped": 0, "label": label, "seconds": 0.0})
    config = bundle / "config.yaml"
    assert "sample:" in config.read_text()
    assert main(["sample", "--model", str(bundle), "-n", "1", "--label", "HC", "--out", str(tmp_path / "s"),
                 "--no-progress"]) == 0
    assert seen[-1] == load_config(None, config).sample


def test_a_tampered_bundle_is_refused_in_one_line(bundle, tmp_path, capsys):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    model = copy / "diffusion.safetensors"
    data = bytearray(model.read_bytes())
    data[-64:] = b"\xff" * 64  # inside the weights: the header still parses
    model.write_bytes(bytes(data))
    out = tmp_path / "samples"
    assert _sample("--model", copy, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"neuroldm sample: error: {model}: damaged or replaced: its sha256 ")
    assert "recorded in bundle.json" in err and not out.exists()
    assert _sample("--run-dir", bundle, out) == 2  # a bundle given as a run: refused before anything is written
    assert capsys.readouterr().err.strip() == (f"neuroldm sample: error: {bundle}: a bundle of `neuroldm export`, not "
                                               f"a run directory: give it with --model")
    assert sorted(p.name for p in bundle.iterdir()) == sorted(p.name for p in copy.iterdir())


def test_the_model_card_gives_the_runs_numbers(run, bundle):
    card = (bundle / "MODEL_CARD.md").read_text()
    for title in ("Model", "Training data", "Preprocessing", "Training", "Evaluation", "Memorization audit",
                  "Intended use", "Limits"):
        assert f"\n## {title}\n" in card
    # cohort size per class and split, counted independently from the latent index
    index = pd.read_csv(run / "latents" / "index.csv", dtype={"subject": str})
    for name in ("HC", "TLE"):
        rows = index[index["label_name"] == name]
        cells = [f"{rows[rows['split'] == s]['subject'].nunique()} ({(rows['split'] == s).sum()})"
                 for s in ("train", "val", "test")]
        assert f"| {name} | {' | '.join(cells)} |" in card
    assert f"| all | {index[index['split'] == 'train']['subject'].nunique()} (" in card
    # preprocessing: the grid and spacing the autoencoder was trained on, the normalisation
    assert "| grid | 20x24x20 voxels |" in card and "| spacing | 8x8x8 mm |" in card
    assert "| normalisation | z-score with the brain mask's mean and standard deviation |" in card
    # training steps of each model (trained | planned | state)
    assert "| autoencoder | 2 | 2 | complete |" in card and "| diffusion model | 4 | 4 | complete |" in card
    # headline metrics with CI and N
    assert "| vae.val.ssim | 0.812 | [0.790, 0.835] | 2 |" in card
    assert "| classifier.real.auc | 0.779 | [0.611, 0.902] | 24 |" in card
    assert "| fid.synthetic.overall | 41.7 | none: FID is one distance" in card
    # the memorization audit: 1 of 4 copies, the flagged share with its interval, against 6 training volumes
    assert "| image | 1 of 4 (nearer than 0.5 x the closest held-out volume's distance) | 25.0% [" in card
    assert "(nearer than the 5th percentile of 3 held-out volumes" in card
    assert "among 6 training volumes; training set: generator's training subjects (samples.json)." in card
    meta = load_dit(run)[2]
    assert meta["sha256"] in card and meta["train_subjects_sha256"] in card
    assert "Not for diagnosis" in card


def test_export_refuses_what_it_must_not_write(run, tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("a user's file")
    assert main(["export", str(run), "--out", str(user)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"neuroldm export: error: {user}: not empty and not a neuroldm bundle (no bundle.json); give a "
                   f"new or empty folder, or an earlier bundle; nothing was written")
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    assert main(["export", str(tmp_path / "no-run"), "--out", str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err.strip().endswith("no-run: run directory not found")
    assert not (tmp_path / "no-run").exists() and not (tmp_path / "b").exists()


def test_a_model_file_that_lists_its_subjects_is_not_exported(run, tmp_path, capsys):
    """A run trained before the IDs left the model file: sampled from as before, refused by export until
    train-diffusion rewrites the file (resuming at its last step)."""
    old = tmp_path / "run"
    shutil.copytree(run, old)
    model, cfg, meta = load_dit(old)
    subjects = json.loads((old / "diffusion" / "train_subjects.json").read_text())["train_subjects"]
    legacy = {k: v for k, v in meta.items() if k not in ("sha256", "train_subjects_sha256")}
    path = old / "diffusion" / "model.safetensors"
    save_weights_atomic(model, path, {"diffusion_config": cfg.model_dump_json(),
                                      "meta": json.dumps({**legacy, "train_subjects": subjects})},
                        record=model_record(path))
    (old / "diffusion" / "train_subjects.json").unlink()
    assert _sample("--run-dir", old, tmp_path / "s") == 0
    assert read_sample_manifest(tmp_path / "s").train_subjects == subjects
    capsys.readouterr()
    assert main(["export", str(old), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"neuroldm export: error: {path}: lists its training "
                                                         f"subjects' IDs")
    assert not (tmp_path / "b" / "bundle.json").exists()
    summary = train_diffusion(old, load_config(None, None, TINY), progress=False)
    assert summary["steps_this_run"] == 0  # nothing retrained: the file is rewritten
    assert main(["export", str(old), "--out", str(tmp_path / "b")]) == 0


def test_the_model_card_says_what_the_run_lacks_or_missed(run, tmp_path):
    other = tmp_path / "run"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("evaluation", "metrics.json"))

    def card():
        assert main(["export", str(other), "--out", str(tmp_path / "bundle")]) == 0  # an earlier bundle is replaced
        return (tmp_path / "bundle" / "MODEL_CARD.md").read_text()

    text = card()
    assert "Not evaluated: the run has no `metrics.json`" in text
    assert "Not run: the run has no evaluation (`neuroldm evaluate`)" in text
    write_json_atomic(other / "metrics.json", {**METRICS, "quick": True})
    text = card()
    assert "**Quick run: these numbers mean nothing.**" in text and "- **A quick smoke run**" in text
    bars = {"vae.val.ssim": {"value": 0.8123, "low": 0.7901, "high": 0.8345, "n": 2, "bar": ">= 0.85",
                             "pass": False},
            "classifier.real.auc": {"value": 0.7791, "bar": ">= 0.7", "pass": True}}
    write_json_atomic(other / "metrics.json", {**METRICS, "bars": bars, "bars_passed": False})
    text = card()
    assert "Quality bars (pipeline.bars): NOT every bar met." in text
    assert "| vae.val.ssim | 0.812 | [0.790, 0.835] | 2 | >= 0.85 | MISSED |" in text
    assert "| classifier.real.auc | 0.779 | – | – | >= 0.7 | met |" in text
    assert "- **Quality bars missed**: vae.val.ssim (pipeline.bars)." in text


def test_no_local_path_leaves_in_the_bundle(run, bundle, tmp_path):
    """Every byte of every bundle file searched for the run's folder (the autoencoder file once named its
    checkpoint by absolute path); the config's file settings are emptied and its first line says which."""
    where = str(Path(run).resolve()).encode()
    found = [p.name for p in sorted(bundle.rglob("*")) if p.is_file() and where in p.read_bytes()]
    assert found == []
    header, _ = RunDir(run).vae.read_model_header()
    assert json.loads(header["meta"])["checkpoint"] == "checkpoints/best.safetensors"

    cfg = load_config(None, run / "config.yaml")
    local = cfg.model_copy(update={
        "pipeline": cfg.pipeline.model_copy(update={"input": "/home/someone/study/cohort.csv"}),
        "vae": cfg.vae.model_copy(update={"perceptual_weights_path": "/home/someone/vgg16-397923af.pth"})})
    config = tmp_path / "config.yaml"
    config.write_text(local.to_yaml())
    text = shareable_config(config)
    assert "/home/someone" not in text
    assert text.splitlines()[0] == ("# the run's config; local file settings emptied by neuroldm export: "
                                    "pipeline.input, vae.perceptual_weights_path")
    back = tmp_path / "back.yaml"
    back.write_text(text)
    shared = load_config(None, back)
    assert shared.sample == cfg.sample and shared.vae.arch == cfg.vae.arch  # what sampling reads is untouched
    assert shared.pipeline.input is None and shared.vae.perceptual_weights_path is None
