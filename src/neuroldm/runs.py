"""The run directory: every path of a run, and the readers of each stage's outputs, in one place.

    RUN/
      config.yaml          resolved configuration of the last stage run here
      run.json             where the prepared cohort is, and which stages ran when
      pipeline.json        `neuroldm run`: per stage its fingerprint, state and wall time; the stage order
      .neuroldm.lock       held (flock) by the process writing the run: its pid, host, command, start time
      metrics.json         the run's headline numbers (flat keys)
      run.log              what the commands run here showed on the console, with timestamps (appended)
      report.html          `neuroldm report`
      cohort/              demo-cohort (only with pipeline.input = demo-cohort)
      prepared/            prepare: manifest.csv, prepare_summary.json, volumes/, rois/
      vae/                 train-vae: checkpoints/, metrics.csv, train_summary.json, model.safetensors (+ .sha256),
                           reconstruction/ (metrics.json, reconstruction.png, volumes/)
      latents/             encode: volumes/<key>.safetensors, index.csv, latents.json (scale factor)
      diffusion/           train-diffusion: checkpoints/, metrics.csv, train_summary.json, model.safetensors
                           (+ .sha256), train_subjects.json (the IDs the model file records only the sha256 of)
      samples/             sample: one NIfTI + JSON sidecar per volume, manifest.csv, samples.json
      classifier/          classify: model.safetensors, result.json, predictions.csv, training_set.csv, ...
      classify-grid/       classify-grid: <regime>/seed-<s>[/fold-<k>]/ (each a classifier folder), runs.csv,
                           predictions.csv, summary.json / .md / .html
      evaluation/          evaluate: metrics.json and figures
      saliency/            saliency: summary.json, attributions.csv, <method>/ maps and figures/
      counterfactual/      counterfactual: per test subject its reconstruction and, at the default strength, its
                           counterfactual, difference map, sidecar (a few figures); counterfactuals.csv, summary.json

`neuroldm export RUN --out BUNDLE` writes a run's generator to a folder of its own (`BundleDir`), to sample from on
another machine:

    BUNDLE/
      bundle.json          the sha256 of every other file (checked when the bundle is opened); written last
      MODEL_CARD.md        cohort, preprocessing, training, headline metrics, memorization audit, use and limits
      config.yaml          the run's configuration
      vae.safetensors      RUN/vae/model.safetensors, byte for byte
      diffusion.safetensors  RUN/diffusion/model.safetensors, byte for byte (no subject IDs: their sha256 only)
      latents.json         the latent statistics: scale factor, latent shape, reference affine, grid, spacing

A folder holding ``run.json`` or ``pipeline.json`` (`RUN_MARKERS`) is a neuroldm run; `neuroldm run` and `demo` write
nothing into a non-empty folder that is not one (`RunDir.check_holds_a_run`).

Each folder has a small view class (`ModelDir`, `SampleDir`, ...) that names the files inside it. A view works on
any folder, inside a run or not (``neuroldm sample --out DIR`` writes a `SampleDir` anywhere), so a stage writes
and a reader reads through the same names; no other module spells a run sub-folder or an output file name.

This module sits low in the package: it imports nothing of neuroldm but the config, errors, io and names.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml
from safetensors import safe_open

from neuroldm.config import Config, save_config
from neuroldm.errors import InputError, RunInUse
from neuroldm.io import write_json_atomic
from neuroldm.names import safe_name

CONFIG_NAME = "config.yaml"
MODEL_NAME = "model.safetensors"
LOCK_NAME = ".neuroldm.lock"
RUN_MARKERS = ("run.json", "pipeline.json")  # a folder holding one of these is a neuroldm run
BUNDLE_MARKER = "bundle.json"  # a folder holding it is a bundle of `neuroldm export`

# The stages of `neuroldm run`, in order. `neuroldm.pipeline.stages` defines one Stage per name (and checks the
# order); the report and the summary read the order from here, or from the run's pipeline.json.
STAGE_ORDER = ("demo-cohort", "prepare", "train-vae", "encode", "train-diffusion", "sample", "classify-grid",
               "evaluate", "saliency", "counterfactual", "report")


def truncation_text(truncated: list[dict]) -> str:
    """``train-vae 147 of 1400 steps`` for a truncated stage's record (`RunDir.truncated_stages`): the log, the
    CLI's table and the report say it alike."""
    return ", ".join(f"{t['name']} {t['steps']} of {t['planned_steps']} steps" for t in truncated)


def read_json(path: str | Path) -> dict | None:
    """A stage's JSON output, or None when the file is absent (a stage that has not run)."""
    path = Path(path)
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def model_record(model: str | Path) -> Path:
    """Where the sha256 of an exported model file is recorded when it is written: ``<file>.sha256`` beside it.

    The loaders (`load_vae`, `load_dit`, `load_classifier`) check it, so a damaged file is refused, not sampled."""
    model = Path(model)
    return model.with_name(f"{model.name}.sha256")


@dataclass(frozen=True)
class Folder:
    """A folder of known layout; ``str()`` and ``/`` behave like its path."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def __truediv__(self, other: str) -> Path:
        return self.root / other

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)

    def exists(self) -> bool:
        return self.root.is_dir()


@dataclass(frozen=True)
class PreparedDir(Folder):
    """``neuroldm prepare``: volumes on the model grid, their ROI masks and the manifest."""

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.csv"

    @property
    def summary(self) -> Path:
        return self.root / "prepare_summary.json"

    @property
    def config(self) -> Path:
        """The configuration the cohort was prepared with."""
        return self.root / CONFIG_NAME

    def volume(self, stem: str) -> Path:
        """Relative path of a prepared volume (stored relative in the manifest)."""
        return Path("volumes") / f"{stem}.nii"

    def roi(self, stem: str) -> Path:
        return Path("rois") / f"{stem}_roi.nii.gz"

    def cached_files(self) -> list[Path]:
        """Every prepared volume and ROI file in the folder (those the manifest lists and stale ones)."""
        return [f for folder in ("volumes", "rois") for f in sorted((self.root / folder).glob("*.nii*"))]

    def read_summary(self) -> dict | None:
        return read_json(self.summary)


@dataclass(frozen=True)
class CheckpointDir(Folder):
    """The training engine's checkpoints: ``last`` (resumable) and ``best`` (by the monitored metric)."""

    def named(self, name: str) -> Path:
        return self.root / f"{name}.safetensors"

    @property
    def last(self) -> Path:
        return self.named("last")

    @property
    def best(self) -> Path:
        return self.named("best")


@dataclass(frozen=True)
class ModelDir(Folder):
    """A trained model's folder (autoencoder, diffusion model, one classifier): the engine's files and the export."""

    @property
    def model(self) -> Path:
        return self.root / MODEL_NAME

    @property
    def model_record(self) -> Path:
        """The exported model's recorded sha256 (`model_record`)."""
        return model_record(self.model)

    @property
    def checkpoints(self) -> CheckpointDir:
        return CheckpointDir(self.root / "checkpoints")

    @property
    def train_log(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def train_summary(self) -> Path:
        return self.root / "train_summary.json"

    def read_train_summary(self) -> dict | None:
        return read_json(self.train_summary)

    def read_model_header(self) -> tuple[dict[str, str], int] | None:
        """``(metadata, parameter count)`` of the exported model from its safetensors header (no weights are
        read), or None when there is no export."""
        if not self.model.exists():
            return None
        with safe_open(str(self.model), framework="np") as f:
            metadata = f.metadata() or {}
            n_params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (a handle)
        return metadata, n_params


@dataclass(frozen=True)
class DiffusionDir(ModelDir):
    """``neuroldm train-diffusion``: the engine's files, the exported model and its training subjects."""

    @property
    def train_subjects(self) -> Path:
        """The IDs of the subjects the model was trained on. They stay in the run: the model file records only
        their sha256 (``train_subjects_sha256``), so an exported model names no one."""
        return self.root / "train_subjects.json"


@dataclass(frozen=True)
class ReconstructionDir(Folder):
    """``neuroldm reconstruct``: per-split metrics, the comparison figure, optionally the volumes."""

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def figure(self) -> Path:
        return self.root / "reconstruction.png"

    def volume(self, stem: str) -> Path:
        return self.root / "volumes" / f"{stem}_recon.nii.gz"

    def read_metrics(self) -> dict | None:
        return read_json(self.metrics)


@dataclass(frozen=True)
class VaeDir(ModelDir):
    @property
    def reconstruction(self) -> ReconstructionDir:
        return ReconstructionDir(self.root / "reconstruction")


@dataclass(frozen=True)
class LatentsDir(Folder):
    """``neuroldm encode``: one safetensors file per volume, the index and latents.json (scale factor)."""

    @property
    def index(self) -> Path:
        return self.root / "index.csv"

    @property
    def info(self) -> Path:
        return self.root / "latents.json"

    def volume(self, key: str) -> Path:
        """Relative path (as stored in the index) of one volume's posterior."""
        return Path("volumes") / f"{key}.safetensors"

    def read_info(self) -> dict:
        info = read_json(self.info)
        if info is None:
            raise InputError(self.info, "no encoded latents; run `neuroldm encode` first")
        return info


@dataclass(frozen=True)
class SampleDir(Folder):
    """A sample folder (`neuroldm.samples`): a NIfTI and a JSON sidecar per volume, manifest.csv, samples.json."""

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.csv"

    @property
    def info(self) -> Path:
        return self.root / "samples.json"

    def volume(self, stem: str) -> Path:
        return self.root / f"{stem}.nii.gz"

    def sidecar(self, stem: str) -> Path:
        return self.root / f"{stem}.json"

    def sidecars(self) -> list[Path]:
        """Every per-volume sidecar, sorted (samples.json excluded)."""
        return [p for p in sorted(self.root.glob("*.json")) if p.name != self.info.name]

    @property
    def prior_info(self) -> Path:
        """``neuroldm vae-sample``'s record of how its volumes were drawn."""
        return self.root / "vae_prior.json"

    def prior_volume(self, seed: int, i: int) -> Path:
        return self.root / f"vae-prior_seed{seed}_{i:04d}.nii.gz"


@dataclass(frozen=True)
class ClassifierDir(ModelDir):
    """``neuroldm classify`` (one classifier): the model, result.json, predictions and the training set."""

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def training_set(self) -> Path:
        return self.root / "training_set.csv"

    def read_result(self) -> dict | None:
        return read_json(self.result)


@dataclass(frozen=True)
class GridDir(Folder):
    """``neuroldm classify-grid``: one classifier folder per regime, seed and fold, and the tables."""

    def run(self, regime: str, seed: int, fold: int | None) -> ClassifierDir:
        out = self.root / regime / f"seed-{seed}"
        return ClassifierDir(out / f"fold-{fold}" if fold is not None else out)

    def regime_of(self, path: Path) -> str:
        """The regime name of a folder directly inside the grid (e.g. ``synthetic-1``)."""
        return Path(path).relative_to(self.root).parts[0]

    @property
    def runs_table(self) -> Path:
        return self.root / "runs.csv"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def summary_md(self) -> Path:
        return self.root / "summary.md"

    @property
    def summary_html(self) -> Path:
        return self.root / "summary.html"

    def read_summary(self) -> dict | None:
        return read_json(self.summary)


@dataclass(frozen=True)
class EvaluationDir(Folder):
    """``neuroldm evaluate``: metrics.json and its figures."""

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    def slice_fid_figure(self, group: str) -> Path:
        return self.root / f"slice_fid_{group}.png"

    @property
    def closest_pairs_figure(self) -> Path:
        return self.root / "closest_pairs.png"

    @property
    def ladder_figure(self) -> Path:
        return self.root / "realism_ladder.png"

    def figure_kind(self, name: str) -> tuple[str, str | None]:
        """What a figure file of this folder shows: ``("slice_fid", group)``, ``("closest_pairs", None)``,
        ``("ladder", None)`` or ``("other", None)``."""
        if name.startswith("slice_fid_") and name.endswith(".png"):
            return "slice_fid", name[len("slice_fid_"):-len(".png")]
        if name == self.closest_pairs_figure.name:
            return "closest_pairs", None
        if name == self.ladder_figure.name:
            return "ladder", None
        return "other", None

    def read_metrics(self) -> dict | None:
        return read_json(self.metrics)


@dataclass(frozen=True)
class SaliencyDir(Folder):
    """``neuroldm saliency``: summary.json, attributions.csv, per method the maps and their figures."""

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def attributions(self) -> Path:
        return self.root / "attributions.csv"

    def map(self, method: str, name: str) -> Path:
        return self.root / method / f"{name}.nii.gz"

    MEAN_PREFIX = "mean_"

    @classmethod
    def mean_name(cls, class_name: str) -> str:
        """Name of a class-mean map (and its figure): the only names that start with `MEAN_PREFIX`."""
        return f"{cls.MEAN_PREFIX}{safe_name(class_name)}"

    @classmethod
    def subject_name(cls, subject: str, session: str = "") -> str:
        """Name of a subject's map (and its figure): ``<subject>[_<session>]`` sanitised, and a subject that would
        take `MEAN_PREFIX` (one named ``mean_HC``) gets a leading ``_``, so no subject map is a class mean's."""
        name = safe_name(f"{subject}_{session}" if session else subject)
        return f"_{name}" if name.startswith(cls.MEAN_PREFIX) else name

    @classmethod
    def mean_class(cls, path: Path) -> str | None:
        """The class of a class-mean map or figure, None for a subject's."""
        stem = Path(path).name.split(".")[0]
        return stem[len(cls.MEAN_PREFIX):] if stem.startswith(cls.MEAN_PREFIX) else None

    def figures(self, method: str) -> Path:
        return self.root / method / "figures"

    def figure(self, method: str, name: str) -> Path:
        return self.figures(method) / f"{name}.png"

    def read_summary(self) -> dict | None:
        return read_json(self.summary)


@dataclass(frozen=True)
class BundleDir(Folder):
    """``neuroldm export``: a run's autoencoder, diffusion model, latent statistics and config, with a model card;
    `neuroldm.bundle` opens one (every file checked against the sha256 recorded in `manifest`)."""

    @property
    def manifest(self) -> Path:
        return self.root / BUNDLE_MARKER

    @property
    def model_card(self) -> Path:
        return self.root / "MODEL_CARD.md"

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def vae(self) -> Path:
        return self.root / "vae.safetensors"

    @property
    def diffusion(self) -> Path:
        return self.root / "diffusion.safetensors"

    @property
    def latents(self) -> Path:
        return self.root / "latents.json"

    def files(self) -> list[Path]:
        """Every file the manifest records, in the order they are written."""
        return [self.vae, self.diffusion, self.latents, self.config, self.model_card]

    def is_bundle(self) -> bool:
        return self.manifest.is_file()


@dataclass(frozen=True)
class CounterfactualDir(Folder):
    """``neuroldm counterfactual`` (any folder) and the pipeline's counterfactual stage: per input its reconstruction,
    per counterfactual (named by `neuroldm.counterfactual.make.counterfactual_name`) the volume, the difference map,
    a JSON sidecar and an overlay figure; the stage adds counterfactuals.csv and summary.json."""

    def reconstruction(self, name: str) -> Path:
        """The input's reconstruction (its decoded posterior mean): the no-change reference."""
        return self.root / f"{name}_reconstruction.nii.gz"

    def volume(self, name: str) -> Path:
        return self.root / f"{name}.nii.gz"

    def difference(self, name: str) -> Path:
        """Counterfactual minus reconstruction."""
        return self.root / f"{name}_difference.nii.gz"

    def sidecar(self, name: str) -> Path:
        return self.root / f"{name}.json"

    def figure(self, name: str) -> Path:
        return self.root / f"{name}.png"

    def figures(self) -> list[Path]:
        return sorted(self.root.glob("*.png"))

    @property
    def table(self) -> Path:
        """One row per counterfactual with its measures (every strength of the stage's sweep)."""
        return self.root / "counterfactuals.csv"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def read_summary(self) -> dict | None:
        return read_json(self.summary)


@dataclass(frozen=True)
class RunDir(Folder):
    """One run directory: every stage's folder and the run's own files."""

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def record(self) -> Path:
        return self.root / RUN_MARKERS[0]

    @property
    def pipeline(self) -> Path:
        return self.root / RUN_MARKERS[1]

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_NAME

    @property
    def log(self) -> Path:
        """The console's record: each command run here appends its lines, timestamped (rank 0 only)."""
        return self.root / "run.log"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def cohort(self) -> Path:
        return self.root / "cohort"

    @property
    def cohort_participants(self) -> Path:
        """The demo cohort's BIDS participants table: written last, so its presence means the cohort is whole."""
        return self.cohort / "participants.tsv"

    @property
    def prepared(self) -> PreparedDir:
        return PreparedDir(self.root / "prepared")

    @property
    def vae(self) -> VaeDir:
        return VaeDir(self.root / "vae")

    @property
    def latents(self) -> LatentsDir:
        return LatentsDir(self.root / "latents")

    @property
    def diffusion(self) -> DiffusionDir:
        return DiffusionDir(self.root / "diffusion")

    @property
    def samples(self) -> SampleDir:
        return SampleDir(self.root / "samples")

    @property
    def classifier(self) -> ClassifierDir:
        return ClassifierDir(self.root / "classifier")

    @property
    def grid(self) -> GridDir:
        return GridDir(self.root / "classify-grid")

    @property
    def evaluation(self) -> EvaluationDir:
        return EvaluationDir(self.root / "evaluation")

    @property
    def saliency(self) -> SaliencyDir:
        return SaliencyDir(self.root / "saliency")

    @property
    def counterfactual(self) -> CounterfactualDir:
        return CounterfactualDir(self.root / "counterfactual")

    # ---- readers -------------------------------------------------------------------------------------------

    def read_record(self) -> dict:
        return read_json(self.record) or {}

    def read_pipeline(self) -> dict:
        return read_json(self.pipeline) or {"stages": {}}

    def read_metrics(self) -> dict | None:
        return read_json(self.metrics)

    def truncated_stages(self) -> dict[str, list[dict]]:
        """The stages pipeline.json records as truncated (stopped before their planned steps), in stage order, each
        with its stopped trainings ``[{"name", "steps", "planned_steps"}]`` (`truncation_text` says them)."""
        records = self.read_pipeline().get("stages", {})
        return {name: records[name].get("truncated") or [] for name in self.stage_order()
                if records.get(name, {}).get("state") == "truncated"}

    def stage_order(self) -> tuple[str, ...]:
        """The stage order recorded in pipeline.json by the run that wrote it, else today's `STAGE_ORDER`."""
        return tuple(self.read_pipeline().get("order") or STAGE_ORDER)

    def prepared_cohort(self, given: str | Path | None = None) -> PreparedDir:
        """The prepared cohort of a run: `given`, else the one recorded in run.json."""
        if given is not None:
            return PreparedDir(Path(given))
        recorded = self.read_record().get("prepared")
        if not recorded:
            raise InputError(self.record, "no prepared cohort recorded for this run; pass --prepared DIR")
        return PreparedDir(Path(recorded))

    def find_prepared(self) -> PreparedDir | None:
        """``RUN/prepared`` when it holds a manifest, else the cohort recorded in run.json, else None."""
        if self.prepared.manifest.exists():
            return self.prepared
        recorded = self.read_record().get("prepared")
        return PreparedDir(Path(recorded)) if recorded and PreparedDir(Path(recorded)).manifest.exists() else None

    # ---- writers -------------------------------------------------------------------------------------------

    def save_config(self, cfg: Config) -> Path:
        return save_config(cfg, self.config)

    def config_changes(self, cfg: Config) -> list[str]:
        """The dotted keys whose value in `cfg` differs from the run's recorded config.yaml (none without one)."""
        if not self.config.is_file():
            return []
        try:
            old = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            return ["config.yaml (unreadable)"]

        def diff(a, b, prefix: str) -> list[str]:
            if isinstance(a, dict) and isinstance(b, dict):
                return [k for key in sorted(set(a) | set(b), key=str)
                        for k in diff(a.get(key), b.get(key), f"{prefix}{key}.")]
            return [] if a == b else [prefix.rstrip(".")]

        return diff(old if isinstance(old, dict) else {}, cfg.to_dict(), "")

    def record_stage(self, stage: str, cfg: Config, **fields) -> None:
        """Save the resolved config in the run directory and note the stage (and e.g. the prepared dir) in run.json."""
        self.root.mkdir(parents=True, exist_ok=True)
        info = self.read_record()
        info.update({k: str(v) for k, v in fields.items() if v is not None})
        info.setdefault("stages", {})[stage] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json_atomic(self.record, info)
        self.save_config(cfg)

    # ---- ownership and locking -----------------------------------------------------------------------------

    def is_run(self) -> bool:
        """Whether the folder is a neuroldm run (it holds `RUN_MARKERS`)."""
        return any((self.root / name).is_file() for name in RUN_MARKERS)

    def check_holds_a_run(self) -> None:
        """Refuse a folder that neuroldm must not write a run into: a file, or a non-empty folder that is not a run
        (a user's data folder whose contents a stage's clean-up would remove). Absent or empty is fine."""
        if self.root.exists() and not self.root.is_dir():
            raise InputError(self.root, "not a folder; give a new or empty folder, or an earlier run")
        ours = {LOCK_NAME, self.log.name}  # what this command wrote before the check: its lock and its log
        if self.root.is_dir() and not self.is_run() and any(p.name not in ours for p in self.root.iterdir()):
            raise InputError(self.root, f"not empty and not a neuroldm run (no {' or '.join(RUN_MARKERS)}); give a "
                                        f"new or empty folder, or an earlier run; nothing was written")

    @contextlib.contextmanager
    def locked(self, command: str) -> Iterator[None]:
        """Hold the run's lock file (an exclusive `flock`) while `command` writes the run.

        A second process is refused with who holds it (`RunInUse`). The OS drops the lock when its process dies,
        so a killed run never blocks the next; the file is removed when the lock is released.
        """
        created = not self.root.exists()
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.lock_file
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode(errors="replace")
                os.close(fd)
                raise RunInUse(self.root, holder) from None
            try:  # the holder before us may have removed the file between our open and our lock: lock it anew
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        try:
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(holder).encode())
            yield
        except BaseException:
            self._release(fd, created)
            raise
        self._release(fd, False)

    def _release(self, fd: int, remove_if_empty: bool) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.lock_file.unlink()  # while still held, so no other process holds a lock on a removed file
        os.close(fd)
        if remove_if_empty:  # a command that failed in the folder it created leaves no trace
            with contextlib.suppress(OSError):
                self.root.rmdir()
