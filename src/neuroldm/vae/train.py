"""``neuroldm train-vae``: the autoencoder trained through the shared engine on a prepared cohort's train split.

Selection is on the validation split's SSIM of the posterior-mean reconstruction (the best checkpoint); the
test split is never read. The exported ``RUN/vae/model.safetensors`` holds the best checkpoint's evaluation
weights (the EMA when ``vae.train.ema_decay`` is set).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from neuroldm.config import Config
from neuroldm.data.dataset import VolumeDataset
from neuroldm.data.manifest import read_manifest
from neuroldm.errors import InputError
from neuroldm.runs import PreparedDir, RunDir
from neuroldm.train.checkpoint import load_state
from neuroldm.train.engine import Part, StepContext, Trainer, eval_weights
from neuroldm.vae.losses import VAELoss, build_discriminator, discriminator_loss
from neuroldm.vae.network import build_vae, check_grid, vae_arch
from neuroldm.vae.perceptual import build_perceptual
from neuroldm.vae.reconstruct import volume_metrics
from neuroldm.vae.weights import export_vae

log = logging.getLogger(__name__)

class VAEObjective:
    """The engine's loss function for the autoencoder (and its discriminator, when adversarial training is on)."""

    def __init__(self, cfg: Config, perceptual: torch.nn.Module | None, discriminator: torch.nn.Module | None):
        # the generator loss calls the *unwrapped* discriminator: its gradients must not be synchronised or kept
        self.loss = VAELoss(cfg.vae, perceptual=perceptual, discriminator=discriminator)
        off = {"perceptual"} if perceptual is None else set()
        off |= {"adversarial"} if discriminator is None else set()
        self.logged = [k for k, w in self.loss.weights().items() if w > 0 and k not in off]
        self._fake: torch.Tensor | None = None

    def __call__(self, ctx: StepContext, batch: dict) -> dict[str, torch.Tensor | float]:
        x = batch["image"]
        if ctx.part == "model":
            recon, mu, sigma = ctx.module("model")(x)
            out = self.loss(x, recon, mu, sigma, step=ctx.step)
            self._fake = recon.detach()
            return {"loss": out["total"], **{k: out[k] for k in self.logged}}
        # discriminator step on the reconstruction the model step just made
        return {"loss": discriminator_loss(ctx.module("disc"), x, self._fake)}


def reconstruction_metrics(model: torch.nn.Module, dataset: VolumeDataset, device: torch.device,
                           batch_size: int = 4) -> dict[str, float]:
    """Mean PSNR, SSIM, MS-SSIM and L1 of posterior-mean reconstructions over `dataset`.

    Volumes go through the network `batch_size` at a time (on the CPU, oneDNN's fast 3D convolutions need a batch
    above 1; one volume at a time fell back to im2col and made a validation cost as much as 150 training steps);
    the metrics are per volume.
    """
    sums: dict[str, float] = {}
    for start in range(0, len(dataset), batch_size):
        x = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))]).to(device)
        mu, _ = model.encode(x)
        recon = model.decode(mu)
        for j in range(len(x)):
            for k, v in volume_metrics(recon[j:j + 1], x[j:j + 1]).items():
                sums[k] = sums.get(k, 0.0) + v
    return {k: v / len(dataset) for k, v in sums.items()}


def train_vae(prepared: str | Path, run_dir: str | Path, cfg: Config, *, resume: bool = True,
              device: str | torch.device | None = None, progress: bool = True) -> dict:
    """Train, select on validation SSIM, export the best weights; returns the training summary.

    `device`: see `neuroldm.runtime.resolve_device` (default: this rank's GPU when there is one, else the CPU).
    """
    layout = RunDir(run_dir).vae
    out = layout.root
    rows = read_manifest(prepared)
    train_rows, val_rows = rows[rows["split"] == "train"], rows[rows["split"] == "val"]
    tcfg = cfg.vae.train
    train_set = VolumeDataset(train_rows, cfg.vae.augment, seed=tcfg.seed, crop=cfg.vae.patch_size)
    # the volumes it trains on, as prepared (the settings were checked before any work, `neuroldm.preflight`)
    factor = vae_arch(cfg.vae).downsample
    check_grid(train_set.shape, factor)
    if cfg.vae.patch_size is not None:
        check_grid(cfg.vae.patch_size, factor)
    if tuple(train_set.shape) != tuple(cfg.prepare.grid):
        log.warning("prepared volumes are %s but prepare.grid is %s: training on the prepared shape",
                    train_set.shape, cfg.prepare.grid)
    val_set = VolumeDataset(val_rows) if len(val_rows) else None

    torch.manual_seed(tcfg.seed)
    model = build_vae(cfg.vae, grad_checkpointing=tcfg.grad_checkpointing)
    perceptual = build_perceptual(cfg.vae)
    parts = [Part("model", model)]
    disc = build_discriminator(cfg.vae)
    if disc is not None:
        parts.append(Part("disc", disc, lr=cfg.vae.disc_lr, active_from=cfg.vae.adversarial_start_step))

    objective = VAEObjective(cfg, perceptual, disc)
    trainer = Trainer(parts, tcfg, out, dataset=train_set, loss_fn=objective,
                      validate=(lambda t: reconstruction_metrics(t.eval_module(), val_set, t.world.device))
                      if val_set is not None else None,
                      monitor="ssim", mode="max", meta={"stage": "train-vae", "config": cfg.to_dict()},
                      progress=progress, desc="train-vae", device=device)
    if perceptual is not None:
        perceptual.to(trainer.world.device)
    summary = trainer.fit(resume=resume)
    if trainer.world.is_main:
        best = layout.checkpoints.best if val_set is not None else layout.checkpoints.last
        if not best.exists():
            best = layout.checkpoints.last
        export_best(best, cfg, layout.model, grid=train_set.shape,
                    spacing=prepared_spacing(train_rows, PreparedDir(prepared).manifest))
        summary["exported"] = str(layout.model)
    return summary


def prepared_spacing(rows: pd.DataFrame, manifest: Path) -> list[float]:
    """The voxel size (mm) of the prepared volumes, from their manifest rows (``spacing`` like ``1.5x1.5x1.5``)."""
    spacings = set(rows["spacing"])
    if len(spacings) != 1:
        raise InputError(manifest, f"the prepared volumes have {len(spacings)} voxel sizes "
                                          f"({', '.join(sorted(spacings))}); prepare the cohort again")
    return [float(v) for v in spacings.pop().split("x")]


def export_best(checkpoint: Path, cfg: Config, path: Path, *, grid: tuple[int, ...], spacing: list[float]) -> None:
    """Write the evaluation weights (EMA if present) of a training checkpoint as the run's autoencoder, with the
    `grid` and `spacing` of the prepared volumes it was trained on (not the ``prepare`` settings now in force)."""
    state = load_state(checkpoint)
    model = build_vae(cfg.vae)
    model.load_state_dict(eval_weights(state))
    # the checkpoint relative to the model file: no local path travels in a file that `neuroldm export` copies
    where = checkpoint.relative_to(path.parent) if checkpoint.is_relative_to(path.parent) else checkpoint.name
    export_vae(model, cfg.vae, path, meta={"step": state["step"], "best": state["best"],
                                           "checkpoint": str(where), "grid": [int(g) for g in grid],
                                           "spacing": [float(s) for s in spacing]})
