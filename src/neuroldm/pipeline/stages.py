"""The stages of `neuroldm run`, in order: what each reads from the config and the run, and how it is run.

Every stage is a thin call of the stage function its own command uses (``neuroldm prepare``, ``train-vae``, ...),
with the run directory's fixed layout::

    RUN/cohort/          demo-cohort   (only with pipeline.input = demo-cohort)
    RUN/prepared/        prepare
    RUN/vae/             train-vae     (+ reconstruction/ of the validation split)
    RUN/latents/         encode
    RUN/diffusion/       train-diffusion
    RUN/samples/         sample        (both classes, one folder, with manifest.csv and samples.json)
    RUN/classify-grid/   classify-grid (real-only, synthetic, mixed, subset regimes; seeds)
    RUN/evaluation/      evaluate      (FID, diversity, memorization, fidelity by the real-only classifier)
    RUN/saliency/        saliency      (of the real-only classifier, first seed)
    RUN/report.html      report

A stage's *fingerprint* hashes the config sections it reads and the fingerprints of the stages it reads from, so a
change anywhere upstream makes every stage below it out of date, as in make.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist

from neuroldm.config import Config
from neuroldm.errors import ConfigError

DEMO_INPUT = "demo-cohort"


@dataclass(frozen=True)
class Context:
    """What a stage needs besides the config: the run directory, the device, progress bars on or off."""

    run: Path
    cfg: Config
    device: str = "cpu"
    progress: bool = True

    @property
    def prepared(self) -> Path:
        return self.run / "prepared"

    @property
    def samples(self) -> Path:
        return self.run / "samples"

    def cohort(self) -> Path:
        source = self.cfg.pipeline.input
        if source is None:
            raise ConfigError("pipeline.input is not set: name the cohort (a BIDS folder or a CSV) with "
                              "--set pipeline.input=PATH, or run `neuroldm demo`")
        return self.run / "cohort" if source == DEMO_INPUT else Path(source)


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    `keys` are the config sections (dotted) whose values enter the fingerprint; `after` the stages whose outputs it
    reads; `outputs` the paths (relative to the run) that must exist for the stage to count as done; `clean` the
    paths removed before the stage is rebuilt with a new fingerprint (a stale checkpoint must not be resumed).
    """

    name: str
    run: Callable[[Context], dict]
    keys: tuple[str, ...]
    after: tuple[str, ...]
    outputs: tuple[str, ...]
    clean: tuple[str, ...] = ()
    # when only these upstream stages changed, `partial_clean` removes just what depends on them (the rest of the
    # stage's outputs are reused by the stage itself), instead of everything in `clean`
    partial: tuple[str, ...] = ()
    partial_clean: Callable[[Path], None] | None = None
    distributed: bool = False  # runs on every torchrun rank (DDP training); otherwise on rank 0 only
    always: bool = False  # cheap or self-caching: run every time (its fingerprint is then taken from its output)
    enabled: Callable[[Config], bool] = field(default=lambda cfg: True)


# --------------------------------------------------------------------------------------------------------------
# Stage functions: each returns a small JSON-able summary for pipeline.json
# --------------------------------------------------------------------------------------------------------------

def _is_main() -> bool:
    """Rank 0 of a torchrun group, or the only process."""
    return not dist.is_initialized() or dist.get_rank() == 0


def _demo_cohort(ctx: Context) -> dict:
    from neuroldm.demo.cohort import make_demo_cohort

    table = make_demo_cohort(ctx.run / "cohort", ctx.cfg.demo_cohort, progress=ctx.progress)
    return {"subjects": len(table), "tle": int((table["group"] == "TLE").sum())}


def _prepare(ctx: Context) -> dict:
    import json

    from neuroldm.data.prepare import prepare_cohort

    df = prepare_cohort(ctx.cohort(), ctx.prepared, ctx.cfg, progress=ctx.progress)
    summary = json.loads((ctx.prepared / "prepare_summary.json").read_text())
    return {"usable": int((df["status"] == "ok").sum()), "computed": summary.get("computed"),
            "reused": summary.get("reused")}


def _train_vae(ctx: Context) -> dict:
    from neuroldm.runs import record_stage
    from neuroldm.vae.reconstruct import reconstruct
    from neuroldm.vae.train import train_vae

    main = _is_main()
    if main:
        record_stage(ctx.run, "train-vae", ctx.cfg, prepared=ctx.prepared.resolve())
    summary = train_vae(ctx.prepared, ctx.run, ctx.cfg, progress=ctx.progress and main)
    if not main:
        return {}
    recon = reconstruct(ctx.run, ctx.prepared, split="val", device=ctx.device, progress=ctx.progress)
    return {"steps": summary["steps"], "train_seconds": round(summary["seconds"], 1), "val_n": recon["n"],
            **{f"val_{k}": round(v, 4) for k, v in recon["mean"].items()}}


def _encode(ctx: Context) -> dict:
    from neuroldm.vae.encode import encode_cohort

    info = encode_cohort(ctx.run, ctx.prepared, device=ctx.device, progress=ctx.progress)
    return {"n": info["n"], "scale_factor": info["scale_factor"]}


def _train_diffusion(ctx: Context) -> dict:
    from neuroldm.diffusion.train import train_diffusion

    summary = train_diffusion(ctx.run, ctx.cfg, progress=ctx.progress)
    if not _is_main():
        return {}
    return {"steps": summary["steps"], "train_seconds": round(summary["seconds"], 1), "best_val_loss": summary["best"]}


def samples_per_class(cfg: Config, prepared: Path) -> dict[str, int]:
    """Synthetic volumes to draw per class: `pipeline.samples_per_class`, or what the grid and evaluation need.

    The grid's synthetic and mixed regimes take up to ``max(ratio) x`` the real training count, in the real class
    proportions; the evaluation compares with the held-out split at equal N per class.
    """
    from neuroldm.data.manifest import read_manifest

    classes = list(cfg.data.classes)
    if cfg.pipeline.samples_per_class is not None:
        return {c: cfg.pipeline.samples_per_class for c in classes}
    rows = read_manifest(prepared)
    ccfg = cfg.classifier
    ratios = ([ccfg.synthetic_ratio] if "synthetic" in ccfg.regimes else []) + \
             (list(ccfg.mix_ratios) if "mixed" in ccfg.regimes else [])
    top = max(ratios, default=0.0)
    out = {}
    for i, name in enumerate(classes):
        n_train = int(((rows["split"] == "train") & (rows["label"] == i)).sum())
        n_held = int(((rows["split"] == "test") & (rows["label"] == i)).sum())
        out[name] = max(2, n_held, math.ceil(top * n_train))
    return out


def _sample(ctx: Context) -> dict:
    from neuroldm.diffusion.sample import sample_to_folder

    counts = samples_per_class(ctx.cfg, ctx.prepared)
    seconds, written = 0.0, 0
    for k, (name, n) in enumerate(counts.items()):
        # seeds of different classes never overlap: class k starts at seed + k * 1e6
        r = sample_to_folder(ctx.run, ctx.samples, n, name, ctx.cfg.sample, seed=ctx.cfg.seed + k * 1_000_000,
                             device=ctx.device, progress=ctx.progress)
        seconds += r["seconds"]
        written += r["written"]
    return {"per_class": counts, "written": written, "seconds_per_volume": round(seconds / max(written, 1), 3)}


def headline_classifier(ctx: Context) -> Path:
    """The grid's real-only classifier with the first seed: it labels synthetic volumes and is explained."""
    from neuroldm.classify.data import Regime
    from neuroldm.classify.grid import GRID_DIR, run_dir_of

    fold = None if ctx.cfg.classifier.folds == "split" else 0
    return run_dir_of(ctx.run / GRID_DIR, Regime("real"), ctx.cfg.classifier.seeds[0], fold)


def _classify_grid(ctx: Context) -> dict:
    from neuroldm.classify.grid import run_grid

    summary = run_grid(ctx.prepared, ctx.run, ctx.cfg, samples=ctx.samples, progress=ctx.progress)
    return {"runs": summary.get("runs"), "regimes": summary.get("regimes")}


def _clean_synthetic_runs(run: Path) -> None:
    """New samples: only the grid's runs that trained on synthetic volumes (and the tables) are stale; real-only
    and subset runs are reused by `run_grid` from their result.json."""
    from neuroldm.classify.grid import GRID_DIR

    root = run / GRID_DIR
    if not root.is_dir():
        return
    for path in root.iterdir():
        if path.is_dir() and path.name.split("-")[0] in ("synthetic", "mixed"):
            shutil.rmtree(path)
        elif path.is_file():
            path.unlink()


def _evaluate(ctx: Context) -> dict:
    from neuroldm.classify.predict import load_classifier, predict_proba
    from neuroldm.evaluate.run import evaluate

    model, _ = load_classifier(headline_classifier(ctx), ctx.device)
    m = evaluate(ctx.prepared, ctx.samples, ctx.run / "evaluation", ctx.cfg.evaluate, ctx.cfg.data.classes,
                 predict=lambda volumes: predict_proba(model, volumes),
                 vae_run=ctx.run if ctx.cfg.pipeline.latent_memorization else None, device=ctx.device,
                 progress=ctx.progress)
    return {"seconds": m.get("seconds"), "metric": m["feature_network"]["metric"]}


def _saliency(ctx: Context) -> dict:
    from neuroldm.classify.saliency import explain_cohort

    summary = explain_cohort(headline_classifier(ctx), ctx.prepared, ctx.run / "saliency", ctx.cfg,
                             limit=ctx.cfg.pipeline.saliency_limit, progress=ctx.progress)
    return {m: round(e["seconds_per_volume"], 2) for m, e in summary["methods"].items()}


def _report(ctx: Context) -> dict:
    from neuroldm.pipeline.summary import write_metrics
    from neuroldm.report import write_report

    metrics = write_metrics(ctx.run)  # the report shows it, so it is written first
    return {"file": str(write_report(ctx.run)), "metrics": len(metrics)}


STAGES: tuple[Stage, ...] = (
    Stage("demo-cohort", _demo_cohort, ("demo_cohort",), (), ("cohort/participants.tsv",), clean=("cohort",),
          enabled=lambda cfg: cfg.pipeline.input == DEMO_INPUT),
    Stage("prepare", _prepare, ("data", "prepare", "split", "pipeline.input"), ("demo-cohort",),
          ("prepared/manifest.csv",), always=True),
    Stage("train-vae", _train_vae, ("vae", "data.classes"), ("prepare",),
          ("vae/model.safetensors", "vae/reconstruction/metrics.json"), clean=("vae",), distributed=True),
    Stage("encode", _encode, (), ("train-vae",), ("latents/latents.json",), clean=("latents",)),
    Stage("train-diffusion", _train_diffusion, ("diffusion",), ("encode",), ("diffusion/model.safetensors",),
          clean=("diffusion",), distributed=True),
    Stage("sample", _sample, ("sample", "seed", "pipeline.samples_per_class", "classifier.regimes",
                              "classifier.mix_ratios", "classifier.synthetic_ratio"),
          ("train-diffusion",), ("samples/manifest.csv",), clean=("samples",)),
    Stage("classify-grid", _classify_grid, ("classifier", "data.classes"), ("prepare", "sample"),
          ("classify-grid/summary.json",), clean=("classify-grid",), partial=("sample",),
          partial_clean=_clean_synthetic_runs, distributed=True),
    Stage("evaluate", _evaluate, ("evaluate", "data.classes", "pipeline.latent_memorization"),
          ("prepare", "sample", "classify-grid", "encode"), ("evaluation/metrics.json",), clean=("evaluation",)),
    Stage("saliency", _saliency, ("classifier.saliency", "pipeline.saliency_limit"), ("classify-grid",),
          ("saliency/summary.json",), clean=("saliency",)),
    Stage("report", _report, (), ("train-vae", "evaluate", "classify-grid", "saliency"), ("report.html",),
          always=True),
)

STAGE_NAMES = tuple(s.name for s in STAGES)


def remove_outputs(run: Path, stage: Stage) -> None:
    for rel in stage.clean:
        path = run / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
