"""The realism ladder: each rung against a phantom whose answer is known."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from evaluation_phantoms import brain, write_samples
from scipy import ndimage

from neuroldm.config import EvaluateConfig, VAEConfig
from neuroldm.data.manifest import read_manifest
from neuroldm.evaluate import ladder
from neuroldm.evaluate.run import evaluate
from neuroldm.runs import RunDir, SampleDir
from neuroldm.vae import encode
from neuroldm.vae.network import build_vae
from neuroldm.vae.weights import export_vae

CLASSES = ["HC", "TLE"]


def test_equivalent_blur_interpolates_between_measured_points():
    sigmas, fids = [0.5, 1.0, 2.0], [20.0, 40.0, 100.0]
    # baseline 10 at sigma 0; 30 lies halfway between 20 (0.5) and 40 (1.0)
    assert ladder.equivalent_blur(sigmas, fids, 10.0, 30.0) == {"sigma_voxels": 0.75, "censored": None}
    assert ladder.equivalent_blur(sigmas, fids, 10.0, 15.0) == {"sigma_voxels": 0.25, "censored": None}
    assert ladder.equivalent_blur(sigmas, fids, 10.0, 70.0) == {"sigma_voxels": 1.5, "censored": None}
    assert ladder.equivalent_blur(sigmas, fids, 10.0, 100.0) == {"sigma_voxels": 2.0, "censored": None}


def test_equivalent_blur_says_when_it_is_a_bound():
    assert ladder.equivalent_blur([1.0], [50.0], 10.0, 9.0) == {"sigma_voxels": 0.0, "censored": "below"}
    assert ladder.equivalent_blur([1.0], [50.0], 10.0, 10.0) == {"sigma_voxels": 0.0, "censored": "below"}
    assert ladder.equivalent_blur([0.5, 1.0], [20.0, 50.0], 10.0, 80.0) == {"sigma_voxels": 1.0, "censored": "above"}
    assert np.isnan(ladder.equivalent_blur([1.0], [float("nan")], 10.0, 20.0)["sigma_voxels"])


def test_pooled_channel_stats_equal_numpy_on_the_union():
    rng = np.random.default_rng(0)
    vols = [rng.normal(loc=rng.normal(size=(3, 1)), scale=rng.uniform(0.5, 2, size=(3, 1)), size=(3, 50))
            for _ in range(5)]
    mean, std = ladder.pooled_channel_stats(np.stack([v.mean(1) for v in vols]), np.stack([v.std(1) for v in vols]))
    union = np.concatenate(vols, axis=1)
    np.testing.assert_allclose(mean, union.mean(1), rtol=1e-12)
    np.testing.assert_allclose(std, union.std(1), rtol=1e-12)


def test_sharpness_is_one_for_real_and_drops_with_blur():
    volumes = [brain(seed=s, label=s % 2) for s in range(8)]
    window = (float(np.percentile(volumes[0], 0.5)), float(np.percentile(volumes[0], 99.5)))
    mask = ladder.brain_mask(np.mean(volumes, 0), window)
    assert 0 < mask.mean() < 1
    real = np.array([ladder.gradient_magnitude(v, mask) for v in volumes])
    same = ladder.sharpness_ratio(real, real)
    assert same.value == pytest.approx(1.0) and same.low <= 1.0 <= same.high and same.n == 8
    blurred = np.array([ladder.gradient_magnitude(ndimage.gaussian_filter(v, 1.5), mask) for v in volumes])
    ratio = ladder.sharpness_ratio(blurred, real)
    assert ratio.value < 0.8 and ratio.high < 1.0  # the interval excludes "as sharp as real"
    assert ratio.method == "percentile-bootstrap"


def test_latent_dispersion_reads_the_sidecars(tmp_path):
    rng = np.random.default_rng(1)
    scale = 0.5
    latents = [rng.normal(scale=0.8, size=(2, 40)) for _ in range(4)]  # scaled units, std ~0.8
    paths = []
    for i, z in enumerate(latents):
        p = tmp_path / f"s{i}.json"
        p.write_text(json.dumps({"latent_mean": z.mean(1).tolist(), "latent_std": z.std(1).tolist()}))
        paths.append(p)
    info = {"scale_factor": scale, "channel_mean": [0.0, 0.0], "channel_std": [2.0, 2.0], "n_train": 10}
    d = ladder.latent_dispersion(paths, info)
    union = np.concatenate(latents, axis=1)
    np.testing.assert_allclose([c["std_ratio"] for c in d["channels"]], union.std(1) / (2.0 * scale), rtol=1e-12)
    assert d["std_ratio"] == pytest.approx(np.sqrt(np.mean(union.std(1) ** 2)) / 1.0)
    assert d["n_generated"] == 4 and d["n_real"] == 10
    (tmp_path / "old.json").write_text("{}")
    assert "records no latent statistics" in ladder.latent_dispersion([tmp_path / "old.json"], info)["skipped"]


def test_prior_latents_are_those_vae_sample_draws():
    class Fake(ladder.Autoencoder):
        def __init__(self):  # the latent statistics only
            self.latent_shape = (2, 3, 3, 3)
            self.channel_mean = torch.tensor([1.0, -1.0])
            self.channel_std = torch.tensor([2.0, 0.5])

    g = torch.Generator().manual_seed(7)
    expected = [torch.randn((2, 3, 3, 3), generator=g) for _ in range(3)]
    z = Fake().prior_latent(7, 2)
    torch.testing.assert_close(z, expected[2] * torch.tensor([2.0, 0.5])[:, None, None, None]
                               + torch.tensor([1.0, -1.0])[:, None, None, None])


@pytest.fixture
def vae_run(cohort, tmp_path, monkeypatch):
    """A run with a tiny autoencoder and encoded latents (a pooled stand-in encoder, as the latent audit test)."""
    def pooled_encoder(model, x, cfg):
        mu = torch.nn.functional.avg_pool3d(x, 4)
        return mu, torch.ones_like(mu)

    monkeypatch.setattr(encode, "encode_volume", pooled_encoder)
    torch.manual_seed(0)
    vae_cfg = VAEConfig(arch="demo", latent_channels=1)
    export_vae(build_vae(vae_cfg).eval(), vae_cfg, RunDir(tmp_path / "run").vae.model)
    encode.encode_cohort(tmp_path / "run", cohort, progress=False)
    return tmp_path / "run"


def _cfg(tiny_script, **kw):
    path, sha1 = tiny_script
    return EvaluateConfig(**({"inception_path": str(path), "inception_sha1": sha1, "slice_stride": 7,
                              "ms_ssim_pairs": 2, "kid_subsets": 3, "prdc_k": 2, "batch_size": 8,
                              "closest_pairs": 0, "blur_sigmas": (0.5, 1.0, 2.0)} | kw))


def test_ladder_rungs_against_known_answers(cohort, tmp_path, tiny_script, vae_run, monkeypatch):
    # the reconstruction is the input itself: its rung must read exactly the baseline; the synthetic set is the
    # held-out volumes blurred by 1 voxel: its FID is the blur curve's at sigma 1, so its equivalent blur is 1 voxel
    monkeypatch.setattr(ladder.Autoencoder, "reconstruct", lambda self, v: np.asarray(v, np.float32))
    test = read_manifest(cohort).query("split == 'test'")
    volumes = [(ndimage.gaussian_filter(np.asarray(nib.load(p).dataobj, np.float32), 1.0, mode="nearest"), int(y))
               for p, y in zip(test["path"], test["label"], strict=True)]
    samples = write_samples(tmp_path / "syn", volumes, train_subjects=[])
    m = evaluate(cohort, samples, tmp_path / "out", _cfg(tiny_script), CLASSES, vae_run=vae_run, progress=False)

    overall = m["groups"]["overall"]
    base, recon = overall["real_baseline"]["fid"], overall["reconstruction"]["fid"]
    assert recon["mean"] == pytest.approx(base["mean"], rel=1e-9)
    assert recon["fid_2_5d"] == pytest.approx(base["fid_2_5d"], rel=1e-9)
    assert overall["reconstruction"]["n_compared"] == 6 and overall["vae_prior"]["n_compared"] == 6
    assert m["groups"]["HC"]["vae_prior"] == {"skipped": "an unconditional set: compared overall only"}
    assert m["groups"]["HC"]["reconstruction"]["fid"]["n_b"] == 3

    lad = m["ladder"]
    assert lad["rungs"] == ["real_baseline", "reconstruction", "synthetic", "vae_prior"]
    blur = lad["blur"]
    assert blur["sigmas_voxels"] == [0.5, 1.0, 2.0] and blur["sigmas_mm"] == pytest.approx([1.5, 3.0, 6.0])
    assert blur["fid"][0] > base["mean"] * 1.5 and blur["fid"][2] > blur["fid"][0]  # blur costs, by a margin
    assert overall["synthetic"]["fid"]["mean"] == pytest.approx(blur["fid"][1], rel=1e-6)
    syn = lad["equivalent_blur"]["synthetic"]
    assert syn["sigma_voxels"] == pytest.approx(1.0, rel=1e-5) and syn["sigma_mm"] == pytest.approx(3.0, rel=1e-5)
    assert lad["equivalent_blur"]["reconstruction"] == {"sigma_voxels": 0.0, "censored": "below", "sigma_mm": 0.0,
                                                        "fid": recon["mean"]}
    sharp = lad["sharpness"]
    assert sharp["reconstruction"]["value"] == pytest.approx(1.0)
    assert sharp["synthetic"]["value"] < 0.9 and sharp["synthetic"]["n"] == 6
    assert lad["latent"]["skipped"] == "syn-00.json is missing: no latent statistics"  # samples without sidecars
    assert "realism_ladder.png" in m["figures"] and (tmp_path / "out" / "realism_ladder.png").stat().st_size > 1000


def test_ladder_reads_generated_latent_statistics(cohort, tmp_path, tiny_script, vae_run):
    samples = write_samples(tmp_path / "syn", [(brain(900 + s, s % 2), s % 2) for s in range(6)], [])
    for s in range(6):  # sidecars as `neuroldm sample` writes them: one channel, std 0.5 in scaled units
        SampleDir(samples).sidecar(f"syn-{s:02d}").write_text(json.dumps({"latent_mean": [0.0],
                                                                          "latent_std": [0.5]}))
    m = evaluate(cohort, samples, tmp_path / "out", _cfg(tiny_script, figures=False, blur_sigmas=(1.0,)),
                 CLASSES, vae_run=vae_run, progress=False)
    info = RunDir(vae_run).latents.read_info()
    real_std = info["channel_std"][0] * info["scale_factor"]
    assert m["ladder"]["latent"]["std_ratio"] == pytest.approx(0.5 / real_std)


def test_ladder_off_or_without_a_run_is_skipped_with_why(cohort, tmp_path, tiny_script, vae_run):
    samples = write_samples(tmp_path / "syn", [(brain(900 + s, s % 2), s % 2) for s in range(6)], [])
    m = evaluate(cohort, samples, tmp_path / "a", _cfg(tiny_script, figures=False), CLASSES, progress=False)
    assert m["ladder"] == {"skipped": "no autoencoder run given"} and "reconstruction" not in m["groups"]["overall"]
    m = evaluate(cohort, samples, tmp_path / "b", _cfg(tiny_script, figures=False, ladder=False), CLASSES,
                 vae_run=vae_run, latent_memorization=False, progress=False)
    assert m["ladder"] == {"skipped": "evaluate.ladder is off"}
    assert m["memorization"]["latent"] == {"skipped": "no autoencoder run given"}


def test_blur_sigmas_must_increase():
    with pytest.raises(ValueError, match="strictly increasing"):
        EvaluateConfig(blur_sigmas=(1.0, 0.5))
    with pytest.raises(ValueError, match="positive"):
        EvaluateConfig(blur_sigmas=(0.0, 1.0))


def test_a_decoded_rung_is_made_once_and_handed_out_as_copies():
    made = []

    def load(key):
        made.append(key)
        return np.full((2, 3, 4), float(key), np.float32)

    load_kept = ladder.kept(load, max_bytes=2 * 2 * 3 * 4 * 4)  # room for two volumes
    first = load_kept(1)
    first[:] = -1  # a reader that writes into its volume changes nothing kept
    for key in (1, 2, 1, 2):
        np.testing.assert_array_equal(load_kept(key), float(key))
    assert made == [1, 2]
    load_kept(3), load_kept(3)  # beyond the budget: made again each time
    assert made == [1, 2, 3, 3]
