"""A tiny trained run for the counterfactual tests: phantoms with left/right ROI masks, a 2-step autoencoder, a
4-step diffusion model, and an untrained real-regime classifier where the pipeline puts it."""

from pathlib import Path

import numpy as np
import torch

from neuroldm.classify.network import build_classifier
from neuroldm.classify.predict import export_classifier
from neuroldm.config import ClassifierConfig, load_config
from neuroldm.data.prepare import prepare_cohort
from neuroldm.diffusion.train import train_diffusion
from neuroldm.runs import RunDir
from neuroldm.vae.encode import encode_cohort
from neuroldm.vae.train import train_vae

from phantoms import phantom, save, write_bids

TINY = ["prepare.spacing=[8,8,8]", "prepare.grid=[20,24,20]", "split.folds=0", "split.val_fraction=0.2",
        "split.test_fraction=0.4", "vae.arch=demo", "vae.perceptual=none", "vae.train.batch_size=2",
        "vae.train.steps=2", "vae.train.val_every=2", "diffusion.model=tiny", "diffusion.patch=[1,2,1]",
        "diffusion.window=[2,2,2]", "diffusion.train.steps=4", "diffusion.train.batch_size=4",
        "diffusion.train.val_every=2", "diffusion.train.ckpt_every=2", "diffusion.train.log_every=1",
        "diffusion.train.warmup_steps=0", "diffusion.train.ema_decay=0.9", "diffusion.train.lr=1e-3",
        "counterfactual.steps=10", "counterfactual.strength=0.5", "counterfactual.strengths=[0.5,1.0]",
        "counterfactual.guidance=3", "counterfactual.figures=1",
        "evaluate.memorization_downsample=1"]
SUBJECTS = {f"sub-{i:02d}": "HC" if i % 2 else "TLE" for i in range(10)}


def roi_mask(shape=(80, 96, 80), spacing=2.0, smaller: str = "left") -> tuple[np.ndarray, np.ndarray]:
    """A left (1) and a right (2) 'hippocampus' on the phantom's grid; the `smaller` one has half the radius."""
    _, affine = phantom(shape, spacing, marker=False)
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1).T
    x, y, z = (ijk @ affine[:3, :3].T + affine[:3, 3]).T.reshape(3, *shape)
    mask = np.zeros(shape, np.uint8)
    for label, side, centre in ((1, "left", -25.0), (2, "right", 25.0)):
        r = 9.0 if side == smaller else 14.0
        mask[(x - centre) ** 2 + (y + 10) ** 2 + (z + 10) ** 2 < r ** 2] = label
    return mask, affine


def make_counterfactual_run(root: Path) -> Path:
    """Build the run under `root` (a few seconds on 2 cores) and return its folder."""
    bids = write_bids(root / "bids", SUBJECTS)
    for k, sub in enumerate(sorted(SUBJECTS)):
        save(bids / "derivatives" / "rois" / sub / "anat" / f"{sub}_label-hippocampus_mask.nii.gz",
             *roi_mask(smaller="left" if k % 4 < 2 else "right"))
    cfg = load_config(None, None, TINY)
    prepare_cohort(bids, root / "prep", cfg, progress=False)
    run = root / "run"
    train_vae(root / "prep", run, cfg, progress=False)
    encode_cohort(run, root / "prep", progress=False)
    train_diffusion(run, cfg, progress=False)
    RunDir(run).save_config(cfg)
    torch.manual_seed(0)
    ccfg = ClassifierConfig(arch="cnn")
    export_classifier(build_classifier(ccfg, 2).eval(), ccfg, RunDir(run).grid.run("real", 0, None).model,
                      {"classes": ["HC", "TLE"], "grid": [20, 24, 20], "spacing": [8.0, 8.0, 8.0]})
    return run
