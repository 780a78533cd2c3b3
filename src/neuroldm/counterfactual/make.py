"""``neuroldm counterfactual``: a real volume as the run's models would draw it in another class.

For each input: prepare it as the cohort was (`neuroldm.data.prepare.prepare_file`, with the prepare settings
saved beside the run's prepared cohort, so the same grid and normalisation), encode it to its posterior mean,
edit that latent toward the target class (`neuroldm.diffusion.edit`: sdedit or DDIM inversion to the level of
``strength``, then guided denoising) and decode. Written to a `neuroldm.runs.CounterfactualDir`, on the input's
prepared grid with its affine:

- ``<input>_reconstruction.nii.gz``: the decoded posterior mean, the no-change reference (what the autoencoder alone
  makes of the input);
- ``<name>.nii.gz``, ``<name>_difference.nii.gz`` (counterfactual − reconstruction), ``<name>.json`` (method,
  strength, the timesteps it denoised at, guidance, seed, the models' hashes, the preparation), ``<name>.png``
  (the difference over the prepared input); ``<name>`` is `counterfactual_name`.

Inputs (`read_inputs`): a NIfTI file, a folder of them, or a CSV/TSV with the cohort CSV's path column (and,
optionally, its subject, session and label columns: names and the inputs' classes). Every input is read and
prepared before anything is written, so one bad input stops the command with nothing written.

`Counterfactuals` is the Python API: tensors in, tensors out, no files.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from neuroldm.config import CounterfactualConfig, DataConfig, PrepareConfig, SampleConfig, load_config
from neuroldm.data.cohort import read_table, require_columns
from neuroldm.data.prepare import prepare_file
from neuroldm.diffusion.edit import edit_latents, edit_timesteps, sampler_of
from neuroldm.diffusion.sample import Generator
from neuroldm.errors import InputError, InputErrors
from neuroldm.io import read_frame_code, save_nifti_atomic, sha256_file, write_json_atomic
from neuroldm.names import UniqueNames, safe_name
from neuroldm.runs import CounterfactualDir, PreparedDir, RunDir
from neuroldm.vae.decode import encode_volume
from neuroldm.viz.overlay import overlay_figure

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def counterfactual_name(source: str, target: str, ccfg: CounterfactualConfig, strength: float) -> str:
    """File stem of a counterfactual, e.g. ``sub-01_to-HC_inversion-s0.5_g3`` (sdedit adds ``_seed<seed>``: its
    noise); `source` is the input's (already safe) name."""
    seed = f"_seed{ccfg.seed}" if ccfg.method == "sdedit" else ""
    return f"{source}_to-{safe_name(target)}_{ccfg.method}-s{strength:g}_g{ccfg.guidance:g}{seed}"


@dataclass(frozen=True)
class Source:
    """One input: the name its outputs take, its file, and its class when the input says it."""

    name: str
    path: Path
    label: str | None = None


def _stem(path: Path) -> str:
    return path.name[:-len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem


def read_inputs(path: str | Path, data: DataConfig, label: str | None = None) -> list[Source]:
    """The inputs of a NIfTI file, a folder (its ``*.nii`` and ``*.nii.gz``, sorted) or a CSV/TSV table, each
    with a unique safe name; `label` (a class name) is every input's class, else a table's label column says it."""
    path = Path(path)
    names = UniqueNames()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(NIFTI_SUFFIXES))
        if not files:
            raise InputError(path, "no NIfTI file (*.nii, *.nii.gz) in this folder")
        return [Source(names.take(_stem(f)), f, label) for f in files]
    if path.suffix.lower() in (".csv", ".tsv"):
        return _read_table_inputs(path, data, label, names)
    if path.name.endswith(NIFTI_SUFFIXES) or not path.exists():  # a missing file: load_volume says so
        return [Source(names.take(_stem(path)), path, label)]
    raise InputError(path, "not a NIfTI file (.nii, .nii.gz), a folder of them or a CSV/TSV table of their paths")


def _read_table_inputs(path: Path, data: DataConfig, label: str | None, names: UniqueNames) -> list[Source]:
    c = data.csv
    table = read_table(path, "\t" if path.suffix.lower() == ".tsv" else ",")
    require_columns(table, [c.path_column], path)
    if table.empty:
        raise InputError(path, "no rows: the table has a header but lists no image")
    out = []
    for i, rec in table.iterrows():
        where = f"{path} row {i + 2}"  # 1-based line number, header included
        file = rec[c.path_column].strip()
        if not file:
            raise InputError(where, "empty path")
        name = "_".join(v for v in (rec.get(c.subject_column, "").strip(), rec.get(c.session_column, "").strip())
                        if v) or _stem(Path(file))
        cls = label
        if cls is None and c.label_column in table.columns:
            raw = rec[c.label_column].strip()
            index = data.class_index(raw)
            if index is None:
                raise InputError(where, f"label {raw!r} is not a class ({', '.join(data.classes)}) nor mapped to "
                                        f"one by data.label_map")
            cls = data.classes[index]
        out.append(Source(names.take(name), path.parent / file, cls))
    return out


def cohort_prepare_config(run_dir: str | Path, latent_info: dict) -> PrepareConfig:
    """The prepare settings of the cohort the run's latents were encoded from (its prepared folder's config.yaml,
    else the run's own)."""
    prepared = PreparedDir(latent_info.get("prepared", ""))
    for config in (prepared.config, RunDir(run_dir).config):
        if config.is_file():
            return load_config(None, config).prepare
    raise InputError(prepared.config, "missing: the prepare settings of the run's cohort are needed to prepare an "
                                      "input as the cohort was")


class Counterfactuals:
    """A run's diffusion model and autoencoder, ready to make counterfactuals with `ccfg`'s settings."""

    def __init__(self, run_dir: str | Path, ccfg: CounterfactualConfig, device: str | torch.device = "cpu"):
        self.gen = Generator(run_dir, device)
        self.ccfg = ccfg
        self.classes = self.gen.classes
        self.scfg = sampler_of(ccfg.method, SampleConfig(sampler=ccfg.sampler, steps=ccfg.steps,
                                                         guidance=ccfg.guidance))
        self.prepare_cfg = cohort_prepare_config(run_dir, self.gen.latent_info)
        grid = list(self.gen.vae_meta.get("grid") or self.prepare_cfg.grid)
        if list(self.prepare_cfg.grid) != grid:
            raise InputError(RunDir(run_dir).vae.model, f"the autoencoder was trained on the {grid} grid, but the "
                                                        f"cohort's prepare settings give {list(self.prepare_cfg.grid)}")

    def prepare(self, path: str | Path) -> dict:
        """`prepare_volume`'s dict of one input file, as the cohort was prepared; a bad file is an `InputError`."""
        return prepare_file(path, self.prepare_cfg)

    def timesteps(self, strength: float) -> list[int]:
        """The training timesteps a counterfactual of `strength` denoises at (empty: it takes no step)."""
        return edit_timesteps(self.gen.cfg, self.scfg, strength)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Posterior means ``(B, C, d, h, w)`` (autoencoder space) of prepared images ``(B, 1, D, H, W)``."""
        return torch.cat([encode_volume(self.gen.vae, images[i:i + 1].to(self.gen.device), self.gen.vae_cfg)[0]
                          for i in range(images.shape[0])])

    @torch.no_grad()
    def decode(self, mu: torch.Tensor) -> torch.Tensor:
        """Volumes ``(B, 1, D, H, W)`` of autoencoder latents; the reconstruction of an input is its mean's."""
        return self.gen.decode(mu)

    @torch.no_grad()
    def edit(self, mu: torch.Tensor, targets: Sequence[int], strength: float,
             sources: Sequence[int | None] | None = None, progress=None) -> torch.Tensor:
        """Counterfactual latents (autoencoder space) of posterior means `mu` toward class indices `targets`.

        `sources` (class indices) condition an inversion; None, or any None among them, inverts with the null
        class. sdedit's noise is drawn from ``ccfg.seed`` for every volume alike, so a counterfactual depends on its
        input and the settings only, not on the batch it is made in.
        """
        if not self.timesteps(strength):  # no step: the input's own latent (not one scaled there and back)
            return mu.clone()
        noise = generators = None
        if self.ccfg.method == "sdedit":
            noise, generators = self.gen.initial_noise([self.ccfg.seed] * mu.shape[0])
        device = self.gen.device
        y = torch.tensor([int(t) for t in targets], device=device)
        source = None if sources is None or any(s is None for s in sources) else \
            torch.tensor([int(s) for s in sources], device=device)
        z = edit_latents(self.gen.dit, self.gen.cfg, self.gen.space.scale(mu.to(device)), y, self.scfg,
                         method=self.ccfg.method, strength=strength, noise=noise, generators=generators,
                         source=source, progress=progress)
        return self.gen.space.unscale(z)

    def record(self, source: Source, target: str, strength: float) -> dict:
        """The sidecar of one counterfactual: what was edited, how, and with which models."""
        timesteps = self.timesteps(strength)
        ccfg = self.ccfg
        inversion = ccfg.method == "inversion"
        return {"input": str(source.path), "source_class": source.label, "target_class": target,
                "method": ccfg.method, "strength": strength, "start_timestep": timesteps[0] if timesteps else None,
                "timesteps": timesteps, "model_evaluations": len(timesteps) * (2 if inversion else 1),
                "sampler": self.scfg.sampler, "steps": ccfg.steps, "guidance": ccfg.guidance,
                "seed": None if inversion else ccfg.seed,
                "inversion_condition": (source.label or "null class") if inversion else None,
                "checkpoint_sha256": self.gen.meta["sha256"], "vae_sha256": self.gen.vae_meta["sha256"],
                "run": str(self.gen.source.resolve()), "prepare": self.prepare_cfg.model_dump(mode="json")}


def write_counterfactual(out: CounterfactualDir, name: str, input_name: str, counterfactual: np.ndarray,
                         reconstruction: np.ndarray, affine: np.ndarray, record: dict, *, frame: int,
                         background: np.ndarray | None = None, roi: np.ndarray | None = None,
                         figure: bool = True) -> None:
    """One counterfactual's volume, difference map and sidecar, with `affine` and NIfTI frame code `frame` (the
    input's: `neuroldm.io.save_nifti_atomic`), and (with `figure`) the overlay of
    the difference on `background` (the prepared input); the input's reconstruction is written by the caller, once
    (`CounterfactualDir.reconstruction` of `input_name`)."""
    difference = counterfactual - reconstruction
    save_nifti_atomic(counterfactual.astype(np.float32), affine, out.volume(name),  # refuses NaN or Inf
                      what="counterfactual", frame=frame)
    save_nifti_atomic(difference.astype(np.float32), affine, out.difference(name),
                      what="counterfactual - reconstruction", frame=frame)
    if figure:
        overlay_figure(difference, reconstruction if background is None else background, affine, out.figure(name),
                       f"{name}: counterfactual - reconstruction", roi, signed=True)
    write_json_atomic(out.sidecar(name), {"counterfactual": name, **record,
                                          "reconstruction": out.reconstruction(input_name).name,
                                          "difference": out.difference(name).name})


def counterfactuals_to_folder(run_dir: str | Path, inputs: str | Path, out: str | Path, target: str,
                              ccfg: CounterfactualConfig, data: DataConfig, *, source_label: str | None = None,
                              device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """`neuroldm counterfactual`: every input of `inputs` (`read_inputs`) to class `target`, written to `out`.

    Everything is checked first (the models and their match, the class names, every input's preparation); a
    problem raises with nothing written. Returns a summary."""
    maker = Counterfactuals(run_dir, ccfg, device)
    to = maker.classes[maker.gen.label_index(target)]
    if source_label is not None:
        source_label = maker.classes[maker.gen.label_index(source_label)]
    sources = read_inputs(inputs, data, source_label)
    for s in sources:
        if s.label is not None and s.label not in maker.classes:
            raise InputError(s.path, f"class {s.label!r} is not one of the model's ({', '.join(maker.classes)})")
    prepared, errors = [], []
    for s in sources:  # all of them before any is written
        try:
            prepared.append(maker.prepare(s.path))
        except InputError as e:
            errors.append(e)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise InputErrors(errors, context="input that cannot be prepared")

    folder = CounterfactualDir(out)
    t_index = maker.classes.index(to)
    start = time.perf_counter()
    bar = tqdm(total=len(sources), unit="vol", desc=f"counterfactual to {to}", disable=not progress,
               dynamic_ncols=True)
    try:
        for b in range(0, len(sources), ccfg.batch_size):
            chunk = list(zip(sources[b:b + ccfg.batch_size], prepared[b:b + ccfg.batch_size]))
            images = torch.stack([torch.from_numpy(p["image"])[None] for _, p in chunk])
            mu = maker.encode(images)
            recon = maker.decode(mu).cpu().numpy()[:, 0]
            labels = [None if s.label is None else maker.classes.index(s.label) for s, _ in chunk]
            cf = maker.decode(maker.edit(mu, [t_index] * len(chunk), ccfg.strength, labels)).cpu().numpy()[:, 0]
            for i, (s, p) in enumerate(chunk):
                frame = read_frame_code(s.path)  # the prepared volume lies in the input's world, resampled
                save_nifti_atomic(recon[i], p["affine"], folder.reconstruction(s.name), what="reconstruction",
                                  frame=frame)
                record = {**maker.record(s, to, ccfg.strength), "input_sha256": sha256_file(s.path)}
                write_counterfactual(folder, counterfactual_name(s.name, to, ccfg, ccfg.strength), s.name, cf[i],
                                     recon[i], p["affine"], record, frame=frame, background=p["image"])
                bar.update()
    finally:
        bar.close()
    return {"n": len(sources), "target": to, "folder": str(folder.root),
            "seconds": round(time.perf_counter() - start, 2), "timesteps": maker.timesteps(ccfg.strength)}
