"""The VAE stage end to end on a tiny grid: train, resume, export, reconstruct, encode, prior samples."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from neuroldm.cli import main
from neuroldm.config import load_config
from neuroldm.data.prepare import prepare_cohort
from neuroldm.errors import ConfigError
from neuroldm.io import ALIGNED_ANAT
from neuroldm.train.checkpoint import load_state
from neuroldm.vae.encode import load_latents
from neuroldm.vae.train import train_vae
from neuroldm.vae.weights import load_vae

from niftis import assert_neuroldm_header
from phantoms import write_bids

TINY = ["prepare.spacing=[8,8,8]", "prepare.grid=[20,24,20]", "split.folds=0", "split.val_fraction=0.2",
        "split.test_fraction=0.2", "vae.arch=demo", "vae.perceptual=none", "vae.train.batch_size=2",
        "vae.train.steps=4", "vae.train.val_every=2", "vae.train.ckpt_every=2", "vae.train.log_every=1",
        "vae.train.lr=1e-3", "vae.augment.prob=0.5"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    groups = {f"sub-{i:02d}": "HC" if i % 2 else "TLE" for i in range(10)}
    bids = write_bids(root / "bids", groups)
    prepare_cohort(bids, root / "prep", load_config(None, None, TINY), progress=False)
    return root / "prep"


def test_train_export_and_resume_reproduces(prepared, tmp_path):
    cfg = load_config(None, None, TINY)
    summary = train_vae(prepared, tmp_path / "a", cfg, progress=False)
    assert summary["steps"] == 4 and summary["best"] is not None
    model, vcfg, meta = load_vae(tmp_path / "a")
    assert vcfg.arch == "demo" and meta["step"] in (2, 4) and len(meta["sha256"]) == 64
    with open(tmp_path / "a" / "vae" / "metrics.csv") as f:
        header = f.readline().strip().split(",")
    assert {"step", "lr", "loss", "l1", "kl", "val_ssim", "val_psnr", "val_ms_ssim"} <= set(header)

    # stopped by a zero time budget after its first step, then resumed: the same weights as the straight run
    stopped = train_vae(prepared, tmp_path / "b", load_config(None, None, TINY + ["vae.train.max_minutes=0"]),
                        progress=False)
    assert stopped["steps"] == 1 and stopped["stopped_early"]
    train_vae(prepared, tmp_path / "b", cfg, progress=False)
    a = load_state(tmp_path / "a" / "vae" / "checkpoints" / "last.safetensors")["modules"]["model"]
    b = load_state(tmp_path / "b" / "vae" / "checkpoints" / "last.safetensors")["modules"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_perceptual_without_weights_stops_with_one_line(prepared, tmp_path):
    cfg = load_config(None, None, [t for t in TINY if not t.startswith("vae.perceptual")])
    with pytest.raises(ConfigError) as e:
        train_vae(prepared, tmp_path, cfg, progress=False)
    assert "\n" not in str(e.value) and "vae.perceptual=none" in str(e.value)


def test_cli_train_reconstruct_encode_sample(prepared, tmp_path, capsys):
    run = tmp_path / "run"
    sets = [x for t in TINY for x in ("--set", t)]
    assert main(["train-vae", "--prepared", str(prepared), "--run", str(run), "--no-progress", *sets]) == 0
    assert (run / "config.yaml").exists() and json.loads((run / "run.json").read_text())["prepared"]

    assert main(["reconstruct", "--run", str(run), "--no-progress", "--save-volumes"]) == 0
    recons = sorted((run / "vae" / "reconstruction" / "volumes").glob("*.nii.gz"))
    assert len(recons) == 2
    for path in recons:  # the phantoms' frame (a plain nibabel image: code 2), through prepare
        assert_neuroldm_header(path, ALIGNED_ANAT, "VAE reconstruction")
    metrics = json.loads((run / "vae" / "reconstruction" / "metrics.json").read_text())
    assert metrics["n"] == 2 and -1 <= metrics["mean"]["ssim"] <= 1 and np.isfinite(metrics["mean"]["psnr"])
    assert (run / "vae" / "reconstruction" / "reconstruction.png").stat().st_size > 10_000

    assert main(["encode", "--run", str(run), "--no-progress", *sets]) == 0
    latents = load_latents(run)
    assert latents.mu.shape == (10, 4, 5, 6, 5) and latents.sigma.shape == latents.mu.shape
    assert (latents.sigma > 0).all()
    train = load_latents(run, splits=("train",))
    z_var = train.mu.double().var(unbiased=False) + (train.sigma.double() ** 2).mean()
    assert latents.scale_factor == pytest.approx(float(1 / z_var.sqrt()), rel=1e-6)
    shard = load_file(str(run / "latents" / latents.index["file"][0]))
    assert set(shard) == {"mu", "sigma"}
    # a second encode reuses every shard
    assert main(["encode", "--run", str(run), "--no-progress", *sets]) == 0
    assert "(10 reused)" in capsys.readouterr().out

    out = tmp_path / "prior"
    assert main(["vae-sample", "--run", str(run), "--n", "2", "--out", str(out), "--no-progress"]) == 0
    files = sorted(out.glob("*.nii.gz"))
    assert len(files) == 2
    img = nib.load(files[0])
    assert img.shape == (20, 24, 20)
    np.testing.assert_allclose(img.affine, np.asarray(latents.info["reference_affine"]))
    assert latents.info["reference_frame_code"] == ALIGNED_ANAT
    for path in files:
        assert_neuroldm_header(path, ALIGNED_ANAT, "VAE prior sample")
