"""A tiny run on 10 phantom subjects (prepare, train-vae and encode in seconds; train-diffusion 4 steps), for the tests
of the stages that read a trained run."""

from pathlib import Path

from neuroldm.config import load_config
from neuroldm.data.prepare import prepare_cohort
from neuroldm.diffusion.train import train_diffusion
from neuroldm.runs import RunDir
from neuroldm.vae.encode import encode_cohort
from neuroldm.vae.train import train_vae

from phantoms import write_bids

TINY = ["prepare.spacing=[8,8,8]", "prepare.grid=[20,24,20]", "split.folds=0", "split.val_fraction=0.2",
        "split.test_fraction=0.2", "vae.arch=demo", "vae.perceptual=none", "vae.train.batch_size=2",
        "vae.train.steps=2", "vae.train.val_every=2", "diffusion.model=tiny", "diffusion.patch=[1,2,1]",
        "diffusion.window=[2,2,2]", "diffusion.train.steps=4", "diffusion.train.batch_size=4",
        "diffusion.train.val_every=2", "diffusion.train.ckpt_every=2", "diffusion.train.log_every=1",
        "diffusion.train.warmup_steps=0", "diffusion.train.ema_decay=0.9", "diffusion.train.lr=1e-3"]

SUBJECTS = {f"sub-{i:02d}": "HC" if i % 2 else "TLE" for i in range(10)}  # subject -> group


def encoded_run(root: Path, settings: list[str] = TINY, extra_columns: dict[str, dict[str, str]] | None = None) -> Path:
    """``root/run``: the tiny cohort prepared (``root/prep``), the autoencoder trained and the cohort encoded, the
    settings recorded in the run as its commands record them; `extra_columns` of participants.tsv (covariates)."""
    cfg = load_config(None, None, settings)
    prepare_cohort(write_bids(root / "bids", SUBJECTS, extra_columns=extra_columns), root / "prep", cfg,
                   progress=False)
    train_vae(root / "prep", root / "run", cfg, progress=False)
    encode_cohort(root / "run", root / "prep", progress=False)
    RunDir(root / "run").record_stage("encode", cfg, prepared=root / "prep")
    return root / "run"


def trained_run(root: Path) -> Path:
    """`encoded_run` with the diffusion model trained too."""
    run = encoded_run(root)
    train_diffusion(run, load_config(None, None, TINY), progress=False)
    return run
