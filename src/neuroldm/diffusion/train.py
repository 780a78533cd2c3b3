"""``neuroldm train-diffusion``: the class-conditional DiT on the encoded latents, through the shared engine.

Each step draws a fresh posterior sample ``z = mu + sigma·eps`` of every latent in the batch (the encoder's
uncertainty as augmentation, as the seed did) and scales it into the diffusion model's latent space
(`neuroldm.vae.latent_space.LatentSpace`: times the stored scale factor), so the latents the noise schedule sees
have unit variance. Validation: the same loss on the validation latents at fixed timesteps and fixed noise (a
deterministic number, comparable across steps). Sampling uses the EMA weights of the last step (the seed sampled
with the raw weights), exported to ``RUN/diffusion/model.safetensors``.

With `diffusion.conditions`, each latent's covariates come from the latents index (the manifest's covariate
columns, `neuroldm.diffusion.conditions.training_values`): a missing value is that subject's null condition, and
a value outside a condition's range or levels stops training with the subject named.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import Dataset

from neuroldm.config import Config, DiffusionConfig
from neuroldm.diffusion.conditions import encode, training_values
from neuroldm.diffusion.process import diffusion_loss, prediction_error, training_scheduler
from neuroldm.diffusion.weights import dit_from_config, export_dit, save_train_subjects
from neuroldm.errors import InputError
from neuroldm.runs import RunDir
from neuroldm.train.checkpoint import load_state
from neuroldm.train.engine import StepContext, Trainer, eval_weights
from neuroldm.vae.encode import LatentSet, load_latents
from neuroldm.vae.latent_space import LatentSpace

log = logging.getLogger(__name__)


class LatentDataset(Dataset):
    """Items ``{"mu", "sigma", "label"}`` of a `LatentSet` (and ``"covariates"`` ``(K,)`` when given, the rows of
    `neuroldm.diffusion.conditions.encode`); the posterior sample is drawn in the loss."""

    def __init__(self, latents: LatentSet, covariates: torch.Tensor | None = None):
        self.latents, self.covariates = latents, covariates

    def __len__(self) -> int:
        return len(self.latents.labels)

    def __getitem__(self, item) -> dict:
        i = item[0] if isinstance(item, tuple) else item  # the engine's items are (index, epoch)
        item = {"mu": self.latents.mu[i], "sigma": self.latents.sigma[i], "label": self.latents.labels[i]}
        if self.covariates is not None:
            item["covariates"] = self.covariates[i]
        return item


class DiffusionObjective:
    def __init__(self, cfg: DiffusionConfig, space: LatentSpace):
        self.cfg, self.space = cfg, space
        self.scheduler = training_scheduler(cfg)

    def latents(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        mu, sigma = batch["mu"], batch["sigma"]
        if self.cfg.posterior_sample:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            mu = mu + sigma * eps
        return self.space.scale(mu)

    def __call__(self, ctx: StepContext, batch: dict) -> dict:
        model = ctx.module("model")
        return {"loss": diffusion_loss(model, self.scheduler, self.cfg, self.latents(batch), batch["label"],
                                       covariates=batch.get("covariates"))}

    @torch.no_grad()
    def validation_loss(self, model: torch.nn.Module, data: LatentDataset, device: torch.device,
                        timesteps: int = 10, batch_size: int = 8) -> float:
        """Mean loss over the validation latents at `timesteps` evenly spaced t, with noise fixed by seed 0."""
        g = torch.Generator(device="cpu").manual_seed(0)
        ts = torch.linspace(0, self.cfg.num_train_timesteps - 1, timesteps).round().long()
        total, n = 0.0, 0
        for start in range(0, len(data), batch_size):
            items = [data[i] for i in range(start, min(len(data), start + batch_size))]
            batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
            x0 = self.latents(batch, g).to(device)
            y = batch["label"].to(device)
            cov = batch["covariates"].to(device) if "covariates" in batch else None
            for t in ts:
                noise = torch.randn(x0.shape, generator=g).to(device)
                tt = torch.full((x0.shape[0],), int(t), device=device, dtype=torch.long)
                total += float(prediction_error(model, self.scheduler, self.cfg, x0, y, tt, noise, cov).sum())
                n += x0.shape[0]
        return total / n


def class_names(latents: LatentSet, cfg: Config) -> list[str]:
    names = list(cfg.data.classes)
    seen = dict(zip(latents.index["label"].astype(int), latents.index["label_name"]))
    for label, name in seen.items():
        if label >= len(names) or names[label] != name:
            raise InputError(RunDir(".").latents.index, f"label {label} is '{name}' in the latents but "
                                                        f"data.classes is {names}; train with the classes the "
                                                        f"cohort was prepared with")
    return names


def condition_rows(latents: LatentSet, cfg: DiffusionConfig, where: Path) -> torch.Tensor | None:
    """The network's covariates ``(N, K)`` of `latents`, from their index (`where`); None without conditions."""
    if not cfg.conditions:
        return None
    return encode(cfg.conditions, training_values(cfg.conditions, latents.index, where))


def train_diffusion(run_dir: str | Path, cfg: Config, *, resume: bool = True,
                    device: str | torch.device | None = None, progress: bool = True) -> dict:
    """Train on the train-split latents, validate on the val split, export the EMA weights; returns the summary.

    `device`: see `neuroldm.runtime.resolve_device` (default: this rank's GPU when there is one, else the CPU).
    """
    run_dir = Path(run_dir)
    layout = RunDir(run_dir)
    out = layout.diffusion.root
    dcfg, tcfg = cfg.diffusion, cfg.diffusion.train
    train = load_latents(run_dir, ("train",))
    try:
        val = load_latents(run_dir, ("val",))
    except InputError:
        val = None
    classes = class_names(train, cfg)
    latent_shape = tuple(train.mu.shape[1:])

    torch.manual_seed(tcfg.seed)
    model = dit_from_config(dcfg, latent_shape, len(classes))
    objective = DiffusionObjective(dcfg, train.space)
    val_set = LatentDataset(val, condition_rows(val, dcfg, layout.latents.index)) if val is not None else None
    counts = torch.bincount(train.labels, minlength=len(classes)).float()
    train_set = LatentDataset(train, condition_rows(train, dcfg, layout.latents.index))
    trainer = Trainer(model, tcfg, out, dataset=train_set, loss_fn=objective,
                      validate=(lambda t: {"loss": objective.validation_loss(t.eval_module(), val_set,
                                                                             t.world.device)})
                      if val_set is not None else None,
                      monitor="loss", mode="min",
                      meta={"stage": "train-diffusion", "config": cfg.to_dict()}, progress=progress,
                      desc="train-diffusion", device=device)
    log.info("train-diffusion: %s (%.2f M parameters) on %d latents %s (%s), scale factor %.4f",
             dcfg.model, sum(p.numel() for p in model.parameters()) / 1e6, len(train.labels),
             "x".join(map(str, latent_shape)),
             ", ".join(f"{n} {c}" for c, n in zip(classes, counts.int().tolist())), train.scale_factor)
    summary = trainer.fit(resume=resume)
    if trainer.world.is_main:
        state = load_state(layout.diffusion.checkpoints.last)
        final = dit_from_config(dcfg, latent_shape, len(classes))
        final.load_state_dict(eval_weights(state))
        # the IDs stay in the run; the model file, which `neuroldm export` takes elsewhere, holds their sha256
        subjects = save_train_subjects(run_dir, train.index["subject"])
        export_dit(final, dcfg, layout.diffusion.model,
                   meta={"latent_shape": list(latent_shape), "classes": classes, "scale_factor": train.scale_factor,
                         "step": state["step"], "ema": state.get("ema") is not None,
                         "train_subjects_sha256": subjects, "vae_sha256": train.info.get("vae_sha256", "")})
        summary["exported"] = str(layout.diffusion.model)
    return summary
