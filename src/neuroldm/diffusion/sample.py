"""``neuroldm sample``: labelled synthetic volumes from a run's diffusion model and autoencoder, or a bundle's.

The settings (sampler, steps, guidance, guidance interval, eta, batch size) travel together as one `SampleConfig`.
Every volume has its own seed (``seed + i``) that fixes its initial noise and the noise of stochastic samplers,
so the same seed and settings give the same volume whatever the batch size or which volumes were already done.
Each volume is written as ``<class>_<sampler tag><steps>_g<guidance>_seed<seed>.nii.gz`` on the prepared grid
with the cohort's reference affine, with a JSON sidecar beside it (marked synthetic, with the software versions);
`neuroldm.samples` describes the sidecar, the folder's ``manifest.csv`` and ``samples.json``. A re-run skips
volumes whose files exist (writes are atomic, so an existing file is a finished one) and rewrites the manifest over
every volume in the folder.

A model trained with `diffusion.conditions` takes covariates (`neuroldm.diffusion.conditions`): given for every
volume (`sample_to_folder`'s `conditions`, ``--condition``), per volume (`sample_table`, ``--conditions FILE``), or,
by default, a training volume's of the same class drawn with the volume's seed, so the synthetic cohort keeps the
real one's joint distribution of covariates per class (from a bundle, which holds no subject's covariates: null).
The sidecar records ``conditions`` and ``conditions_source`` (given, training-cohort or null) and the manifest has
a column per condition. The file name does not hold the conditions, so a finished volume is skipped only when it
was sampled with the conditions asked for now. A model without conditions writes exactly what it wrote before.

`generate` is the Python API: latents or decoded volumes as tensors, no files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from neuroldm.bundle import Bundle, open_bundle
from neuroldm.config import DiffusionConfig, SampleConfig
from neuroldm.diffusion.conditions import check_request, draw_training_row, encode, training_values
from neuroldm.diffusion.process import sample_latents
from neuroldm.diffusion.samplers import get_sampler
from neuroldm.diffusion.weights import load_dit, load_train_subjects, read_dit
from neuroldm.errors import ConfigError, InputError
from neuroldm.io import ALIGNED_ANAT, save_nifti_atomic, write_json_atomic
from neuroldm.names import safe_name
from neuroldm.runs import BundleDir, RunDir, SampleDir
from neuroldm.samples import SAMPLE_COLUMNS, software_versions, write_sample_manifest
from neuroldm.vae.decode import decode_volume
from neuroldm.vae.latent_space import LatentSpace
from neuroldm.vae.weights import load_vae, read_vae


class Generator:
    """A diffusion model (EMA weights) and its autoencoder, ready to sample: a run's, or a bundle's (`neuroldm
    export`; a folder holding ``bundle.json``, or an opened `Bundle`), which samples the same volumes."""

    def __init__(self, source: str | Path | Bundle, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        bundle = source if isinstance(source, Bundle) else \
            open_bundle(source) if BundleDir(source).is_bundle() else None
        self.kind = "bundle" if bundle is not None else "run"
        if bundle is not None:  # every file was checked against the manifest when the bundle was opened
            folder = bundle.folder
            self.source, self.dit_file, self.vae_file = folder.root, folder.diffusion, folder.vae
            self.dit, self.cfg, self.meta = read_dit(folder.diffusion, self.device,
                                                     sha256=bundle.sha256(folder.diffusion))
            self.vae, self.vae_cfg, self.vae_meta = read_vae(folder.vae, self.device, sha256=bundle.sha256(folder.vae))
            self.latent_info = bundle.latent_info()
        else:
            layout = RunDir(source)
            self.source, self.dit_file, self.vae_file = Path(source), layout.diffusion.model, layout.vae.model
            self.dit, self.cfg, self.meta = load_dit(source, self.device)
            self.vae, self.vae_cfg, self.vae_meta = load_vae(source, self.device)
            if not layout.latents.info.exists():
                raise InputError(layout.latents.info, "missing: the run has no encoded latents (reference affine, "
                                                      "grid)")
            self.latent_info = layout.latents.read_info()
        if self.latent_info.get("vae_sha256") != self.vae_meta["sha256"]:
            raise InputError(self.vae_file,
                             "the autoencoder changed after the latents were encoded; re-run encode and "
                             "train-diffusion")
        trained_on = self.meta.get("vae_sha256")  # recorded by train-diffusion
        if trained_on and trained_on != self.vae_meta["sha256"]:
            raise InputError(self.dit_file,
                             "the diffusion model was trained on the latents of another autoencoder than the run's; "
                             "re-run encode and train-diffusion")
        self.classes: list[str] = list(self.meta["classes"])
        self.latent_shape = tuple(self.meta["latent_shape"])
        self.space = LatentSpace.from_meta(self.meta)  # the factor training scaled by
        self._train_rows: tuple[list[int], list[dict]] | None = None

    def train_subjects(self) -> list[str]:
        """The IDs of the subjects the model was trained on: the run's list (checked against the sha256 the model
        records); none for a bundle, which names no subject."""
        return [] if self.kind == "bundle" else load_train_subjects(self.source, self.meta)

    def label_index(self, label: str | int) -> int:
        if isinstance(label, int) or str(label).isdigit():
            idx = int(label)
            if not 0 <= idx < len(self.classes):
                raise InputError(self.source, f"label {idx} out of range; classes are {self.classes}")
            return idx
        if label not in self.classes:
            raise InputError(self.source, f"unknown label '{label}'; classes are {', '.join(self.classes)}")
        return self.classes.index(label)

    def initial_noise(self, seeds: Sequence[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        noise = torch.stack([torch.randn(self.latent_shape, generator=g) for g in gens])
        return noise.to(self.device), gens

    @torch.no_grad()
    def latents(self, labels: Sequence[int], seeds: Sequence[int], scfg: SampleConfig,
                progress=None, conditions: Sequence[Mapping[str, Any]] | None = None) -> torch.Tensor:
        """VAE latents ``(B, C, d, h, w)`` (unscaled, ready to decode) for `labels` and `seeds`, sampled as `scfg`
        says; `conditions`: each volume's checked covariates (`check_request`) for a model with conditions (None:
        all null)."""
        noise, gens = self.initial_noise(seeds)
        y = torch.tensor([int(v) for v in labels], device=self.device)
        cov = None
        if self.cfg.conditions:
            cov = encode(self.cfg.conditions, conditions or [{}] * len(seeds)).to(self.device)
        z = sample_latents(self.dit, self.cfg, y, noise, scfg, generators=gens, progress=progress, covariates=cov)
        return self.space.unscale(z)

    def training_conditions(self, label: int) -> list[dict]:
        """The checked covariates of the run's training volumes of class `label` (the latents index's train split,
        what the model trained on); none for a bundle, which holds no subject's covariates."""
        if self.kind == "bundle" or not self.cfg.conditions:
            return []
        if self._train_rows is None:
            path = RunDir(self.source).latents.index
            index = pd.read_csv(path, dtype=str, keep_default_na=False)
            index = index[index["split"] == "train"]
            self._train_rows = (index["label"].astype(int).tolist(),
                                training_values(self.cfg.conditions, index, path))
        labels, rows = self._train_rows
        return [r for y, r in zip(labels, rows) if y == label]

    def volume_conditions(self, label: int, seed: int, given: dict | None) -> tuple[dict, str]:
        """``(conditions, where they came from)`` of one volume: `given` ("given"), else a training volume's of
        its class drawn with its seed ("training-cohort"), else all null ("null": a bundle, or no such volume)."""
        if not self.cfg.conditions:
            return {}, ""
        if given is not None:
            return dict(given), "given"
        rows = self.training_conditions(label)
        if rows:
            return draw_training_row(rows, seed), "training-cohort"
        return {c.name: None for c in self.cfg.conditions}, "null"

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([decode_volume(self.vae, z[i:i + 1], self.vae_cfg) for i in range(z.shape[0])])


def generate(source: str | Path | Bundle, labels: Sequence[str | int], seeds: Sequence[int],
             scfg: SampleConfig | None = None, *, decode: bool = True, device: str = "cpu",
             conditions: Sequence[Mapping[str, Any]] | None = None) -> torch.Tensor:
    """Synthetic volumes ``(B, 1, D, H, W)`` (or latents with ``decode=False``) for `labels`, one per seed, sampled
    as `scfg` says (default: `SampleConfig`'s defaults), from a run or a bundle (`Generator`); `conditions`: one
    ``{name: value}`` per volume for a model with conditions (None or a name left out: null)."""
    gen = Generator(source, device)
    checked = None if conditions is None else [check_request(gen.cfg.conditions, c) for c in conditions]
    z = gen.latents([gen.label_index(v) for v in labels], seeds, scfg or SampleConfig(), conditions=checked)
    return gen.decode(z) if decode else z


def sample_name(label: str, scfg: SampleConfig, seed: int) -> str:
    """File stem, e.g. ``TLE_dpmpp25_g3_seed7``; guidance limited to timesteps 0-500 adds ``i0-500``.

    ``scfg.steps`` should be the steps taken (`steps_taken`), so a ddpm sample names all of them.
    """
    interval = "" if scfg.guidance_interval is None or scfg.guidance == 1.0 else \
        f"i{scfg.guidance_interval[0]}-{scfg.guidance_interval[1]}"
    return f"{safe_name(label)}_{get_sampler(scfg.sampler).tag}{scfg.steps}_g{scfg.guidance:g}{interval}_seed{seed}"


def steps_taken(scfg: SampleConfig, cfg: DiffusionConfig) -> SampleConfig:
    """`scfg` with the steps its sampler takes on a model of `cfg` (every training timestep for ddpm), as the file
    names, sidecars and progress bar report them."""
    return scfg.model_copy(update={"steps": get_sampler(scfg.sampler).steps_for(cfg, scfg.steps)})


def sample_to_folder(source: str | Path | Bundle, out: str | Path, n: int, label: str | int, scfg: SampleConfig, *,
                     seed: int = 0, device: str = "cpu", progress: bool = True,
                     conditions: Mapping[str, Any] | None = None) -> dict:
    """Write `n` volumes of class `label` to `out` (skipping finished ones), ``scfg.batch_size`` at a time, from a
    run or a bundle (`Generator`); returns a summary.

    `conditions` (``{name: value}``, for a model with `diffusion.conditions`): the covariates of every volume, the
    ones not named null. None: each volume's covariates are a training volume's of that class, drawn with the
    volume's seed (`neuroldm.diffusion.conditions.draw_training_row`), so the synthetic cohort has the real one's
    joint distribution; from a bundle, which holds no subject's covariates, they are all null.

    samples.json lists the run's training subjects; from a bundle it lists none (the evaluation then audits
    memorization against the real training split, and the classifier's leak guard refuses the samples)."""
    gen = Generator(source, device)
    idx = gen.label_index(label)
    given = None if conditions is None else check_request(gen.cfg.conditions, conditions)
    return _write_samples(gen, out, [(idx, seed + i, given) for i in range(n)], scfg, progress=progress)


def sample_table(source: str | Path | Bundle, out: str | Path, table: Sequence[tuple[str | int, Mapping[str, Any]]],
                 scfg: SampleConfig, *, seed: int = 0, device: str = "cpu", progress: bool = True) -> dict:
    """One volume per row of `table` (``(label, {condition: value})``, `neuroldm.diffusion.conditions
    .read_conditions_table`), row i with seed ``seed + i``; the conditions a row leaves out or empty are null."""
    gen = Generator(source, device)
    items = []
    for i, (label, values) in enumerate(table):
        try:
            items.append((gen.label_index(label), seed + i, check_request(gen.cfg.conditions, values)))
        except (ConfigError, InputError) as e:
            raise ConfigError(f"conditions row {i + 1}: {e.problem if isinstance(e, InputError) else e}") from None
    return _write_samples(gen, out, items, scfg, progress=progress)


def _write_samples(gen: Generator, out: str | Path, items: list[tuple[int, int, dict | None]], scfg: SampleConfig,
                   *, progress: bool) -> dict:
    """Sample and write ``(class index, seed, conditions or None to draw them)`` items not yet in `out`."""
    out = SampleDir(out)
    names = [gen.classes[idx] for idx, _, _ in items]
    scfg = steps_taken(scfg, gen.cfg)
    info = {"train_subjects": gen.train_subjects(),
            "train_subjects_sha256": gen.meta.get("train_subjects_sha256", ""), "classes": gen.classes,
            "grid": list(gen.vae_meta.get("grid", [])), "spacing": list(gen.vae_meta.get("spacing", [])),
            "affine": gen.latent_info["reference_affine"], "prepared": gen.latent_info.get("prepared", ""),
            "checkpoint_sha256": gen.meta["sha256"], "vae_sha256": gen.vae_meta["sha256"],
            gen.kind: str(gen.source.resolve())}
    _check_same_generator(out, info)
    affine = np.asarray(gen.latent_info["reference_affine"], dtype=np.float64)
    versions = software_versions()
    frame = int(gen.latent_info.get("reference_frame_code", ALIGNED_ANAT))  # latents encoded before it was recorded
    # (class, seed, stem, conditions, where they came from); a model without conditions records none
    todo, n = [], len(items)
    for (idx, s, given), name in zip(items, names):
        conds, origin = gen.volume_conditions(idx, s, given)
        stem = sample_name(name, scfg, s)
        if _done(out, stem):
            _check_same_conditions(out, stem, conds)
        else:
            todo.append((idx, s, stem, conds, origin))
    label_names = ", ".join(dict.fromkeys(names))
    per_volume = scfg.steps
    bar = tqdm(total=n * per_volume, initial=(n - len(todo)) * per_volume, unit="step", disable=not progress,
               desc=f"sample {label_names}", dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for b in range(0, len(todo), scfg.batch_size):
            chunk = todo[b:b + scfg.batch_size]
            seeds = [s for _, s, _, _, _ in chunk]
            z = gen.latents([idx for idx, *_ in chunk], seeds, scfg, progress=partial(bar.update, len(chunk)),
                            conditions=[c for *_, c, _ in chunk])
            _check_finite(z, gen.dit_file, "sampled latents", seeds)
            vols = gen.decode(z)
            _check_finite(vols, gen.vae_file, "decoded volumes", seeds)
            scaled = gen.space.scale(z).float().flatten(2)  # the diffusion model's units, before decoding
            for (idx, s, stem, conds, origin), vol, zs in zip(chunk, vols, scaled):
                name = gen.classes[idx]
                meta = {"sample": stem, "label": idx, "label_name": name, "seed": s,
                        # per-channel statistics of this volume's generated latent (the realism ladder's dispersion)
                        "latent_mean": zs.mean(1).tolist(), "latent_std": zs.std(1, correction=0).tolist(),
                        **scfg.model_dump(mode="json", exclude={"batch_size"}),
                        **({"conditions": conds, "conditions_source": origin} if gen.cfg.conditions else {}),
                        "checkpoint_sha256": info["checkpoint_sha256"], "vae_sha256": info["vae_sha256"],
                        gen.kind: info[gen.kind], "diffusion_config": gen.cfg.model_dump(mode="json"),
                        "synthetic": True, "software_versions": versions}
                save_nifti_atomic(vol[0].cpu().numpy().astype(np.float32), affine, out.volume(stem), frame=frame,
                                  what=f"synthetic T1w {name} seed {s}")
                write_json_atomic(out.sidecar(stem), meta)
    finally:
        bar.close()
        _write_manifest(out, info)
    return {"n": n, "written": len(todo), "skipped": n - len(todo), "label": label_names,
            "seconds": round(time.perf_counter() - start, 2), "folder": str(out.root)}


def _check_same_conditions(out: SampleDir, stem: str, conds: dict) -> None:
    """A finished volume is skipped only when it has the conditions asked for now (its name does not hold them)."""
    if not conds:
        return
    old = json.loads(out.sidecar(stem).read_text()).get("conditions")
    if old != conds:
        raise InputError(out.sidecar(stem), f"{stem} was sampled with conditions {old}, now {conds} are asked for; "
                                            f"use a new --out folder or another --seed")


def _check_finite(values: torch.Tensor, model: Path, what: str, seeds: list[int]) -> None:
    """Refuse NaN or Inf output, naming the model that produced it (a damaged file, a diverged training)."""
    bad = [s for s, v in zip(seeds, values) if not bool(torch.isfinite(v).all())]
    if bad:
        raise InputError(model, f"{what} of seed{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} are NaN or "
                                f"Inf; nothing was written for them. Is the model damaged, or did its training "
                                f"diverge?")


def _done(out: SampleDir, stem: str) -> bool:
    return out.volume(stem).exists() and out.sidecar(stem).exists()


def _check_same_generator(out: SampleDir, info: dict) -> None:
    path = out.info
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("checkpoint_sha256") != info["checkpoint_sha256"]:
            raise InputError(path, "this folder holds samples of another diffusion model; use a new --out folder")


def _write_manifest(out: SampleDir, info: dict) -> None:
    rows = []
    for sidecar in out.sidecars():
        meta = json.loads(sidecar.read_text())
        volume = out.volume(meta.get("sample"))
        if volume.exists():
            conds = {k: "" if v is None else v for k, v in (meta.get("conditions") or {}).items()}
            rows.append({**{k: meta[k] for k in SAMPLE_COLUMNS if k != "path"}, "path": volume.name, **conds})
    if rows:
        frame = pd.DataFrame(rows)
        write_sample_manifest(out.root, frame[SAMPLE_COLUMNS + [c for c in frame.columns if c not in SAMPLE_COLUMNS]],
                              info)
