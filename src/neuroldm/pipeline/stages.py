"""The stages of `neuroldm run`, in order: what each reads from the config and the run, and how it is run.

Every stage is a thin call of the stage function its own command uses (``neuroldm prepare``, ``train-vae``, ...),
writing into the run directory's fixed layout (`neuroldm.runs.RunDir`, which names every folder and file).

A stage's *fingerprint* hashes the config sections it reads and the fingerprints of the stages it reads from, so a
change anywhere upstream makes every stage below it out of date, as in make.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from neuroldm import runtime
from neuroldm.classify.data import Regime
from neuroldm.classify.grid import run_grid
from neuroldm.classify.predict import load_classifier, predict_proba
from neuroldm.classify.saliency import explain_cohort
from neuroldm.config import Config
from neuroldm.counterfactual.cohort import counterfactual_cohort
from neuroldm.data.manifest import read_manifest
from neuroldm.data.prepare import prepare_cohort
from neuroldm.demo.cohort import make_demo_cohort
from neuroldm.diffusion.sample import sample_to_folder
from neuroldm.diffusion.train import train_diffusion
from neuroldm.evaluate.run import evaluate
from neuroldm.preflight import check_pipeline_input
from neuroldm.report import write_report
from neuroldm.report.headline import write_metrics
from neuroldm.runs import STAGE_ORDER, ClassifierDir, RunDir
from neuroldm.vae.encode import encode_cohort
from neuroldm.vae.reconstruct import reconstruct
from neuroldm.vae.train import train_vae

DEMO_INPUT = "demo-cohort"

_LAYOUT = RunDir(".")  # relative paths of the stages' outputs, for `Stage.outputs` and `Stage.clean`


@dataclass(frozen=True)
class Context:
    """What a stage needs besides the config: the run directory, the device, progress bars on or off."""

    run: Path
    cfg: Config
    device: str | torch.device = "cpu"  # resolved by neuroldm.runtime.resolve_device
    progress: bool = True

    @property
    def layout(self) -> RunDir:
        return RunDir(self.run)

    def cohort(self) -> Path:
        check_pipeline_input(self.cfg)
        source = self.cfg.pipeline.input
        return self.layout.cohort if source == DEMO_INPUT else Path(source)


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


def _rel(*paths) -> tuple[str, ...]:
    return tuple(str(p) for p in paths)


# --------------------------------------------------------------------------------------------------------------
# Stage functions: each returns a small JSON-able summary for pipeline.json
# --------------------------------------------------------------------------------------------------------------

def truncated(name: str, summary: dict) -> list[dict]:
    """The ``truncated`` entry of a stage summary for one training (`Trainer.fit`'s summary): ``[]`` when it ran
    its planned steps, else ``[{"name", "steps", "planned_steps"}]``; the runner then records the stage as
    truncated."""
    if not summary.get("truncated"):
        return []
    return [{"name": name, "steps": summary["steps"], "planned_steps": summary["planned_steps"]}]


def step_timing(summary: dict) -> dict:
    """The optimiser-step timing of a training summary (`Trainer.fit`): seconds per step (validation and
    checkpoints excluded) and the samples one step trains on (over every process)."""
    return {"seconds_per_step": summary.get("seconds_per_step"), "samples_per_step": summary.get("samples_per_step")}


def _demo_cohort(ctx: Context) -> dict:
    table = make_demo_cohort(ctx.layout.cohort, ctx.cfg.demo_cohort, progress=ctx.progress)
    return {"subjects": len(table), "tle": int((table["group"] == "TLE").sum())}


def _prepare(ctx: Context) -> dict:
    prepared = ctx.layout.prepared
    df = prepare_cohort(ctx.cohort(), prepared.root, ctx.cfg, progress=ctx.progress)
    summary = prepared.read_summary() or {}
    return {"usable": int((df["status"] == "ok").sum()), "computed": summary.get("computed"),
            "reused": summary.get("reused")}


def _train_vae(ctx: Context) -> dict:
    prepared = ctx.layout.prepared.root
    main = runtime.is_main()
    if main:
        ctx.layout.record_stage("train-vae", ctx.cfg, prepared=prepared.resolve())
    summary = train_vae(prepared, ctx.run, ctx.cfg, device=ctx.device, progress=ctx.progress and main)
    stopped = truncated("train-vae", summary)  # every rank stops at the same step: they agree on it
    if not main:
        return {"truncated": stopped} if stopped else {}
    recon = reconstruct(ctx.run, prepared, split="val", device=ctx.device, progress=ctx.progress)
    return {"steps": summary["steps"], "planned_steps": summary["planned_steps"],
            "train_seconds": round(summary["seconds"], 1), **step_timing(summary), "val_n": recon["n"],
            **{f"val_{k}": round(v, 4) for k, v in recon["mean"].items()},
            **({"truncated": stopped} if stopped else {})}


def _encode(ctx: Context) -> dict:
    info = encode_cohort(ctx.run, ctx.layout.prepared.root, device=ctx.device, progress=ctx.progress)
    return {"n": info["n"], "scale_factor": info["scale_factor"]}


def _train_diffusion(ctx: Context) -> dict:
    summary = train_diffusion(ctx.run, ctx.cfg, device=ctx.device, progress=ctx.progress)
    stopped = truncated("train-diffusion", summary)
    if not runtime.is_main():
        return {"truncated": stopped} if stopped else {}
    return {"steps": summary["steps"], "planned_steps": summary["planned_steps"],
            "train_seconds": round(summary["seconds"], 1), **step_timing(summary), "best_val_loss": summary["best"],
            **({"truncated": stopped} if stopped else {})}


def samples_per_class(cfg: Config, prepared: Path) -> dict[str, int]:
    """Synthetic volumes to draw per class: `pipeline.samples_per_class`, or what the grid and evaluation need.

    The grid's synthetic and mixed regimes take up to ``max(ratio) x`` the real training count, in the real class
    proportions; the evaluation compares with the held-out split at equal N per class.
    """
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
    counts = samples_per_class(ctx.cfg, ctx.layout.prepared.root)
    seconds, written = 0.0, 0
    for k, (name, n) in enumerate(counts.items()):
        # seeds of different classes never overlap: class k starts at seed + k * 1e6
        r = sample_to_folder(ctx.run, ctx.layout.samples.root, n, name, ctx.cfg.sample,
                             seed=ctx.cfg.seed + k * 1_000_000, device=ctx.device, progress=ctx.progress)
        seconds += r["seconds"]
        written += r["written"]
    return {"per_class": counts, "written": written, "seconds_per_volume": round(seconds / max(written, 1), 3)}


def headline_classifier(ctx: Context) -> ClassifierDir:
    """The grid's real-only classifier with the first seed: it labels synthetic volumes and is explained."""
    fold = None if ctx.cfg.classifier.folds == "split" else 0
    return ctx.layout.grid.run(Regime("real").name, ctx.cfg.classifier.seeds[0], fold)


def _classify_grid(ctx: Context) -> dict:
    summary = run_grid(ctx.layout.prepared.root, ctx.run, ctx.cfg, samples=ctx.layout.samples.root, device=ctx.device,
                       progress=ctx.progress)
    stopped = summary.get("truncated_runs") or []
    return {"runs": summary.get("runs"), "regimes": summary.get("regimes"),
            "seconds_per_step": summary.get("seconds_per_step"), **({"truncated": stopped} if stopped else {})}


def _clean_synthetic_runs(run: Path) -> None:
    """New samples: only the grid's runs that trained on synthetic volumes (and the tables) are stale; real-only
    and subset runs are reused by `run_grid` from their result.json."""
    grid = RunDir(run).grid
    if not grid.exists():
        return
    for path in grid.root.iterdir():
        if path.is_dir() and Regime(grid.regime_of(path).partition("-")[0]).needs_synthetic:
            shutil.rmtree(path)
        elif path.is_file():
            path.unlink()


def _evaluate(ctx: Context) -> dict:
    model, _ = load_classifier(headline_classifier(ctx).root, ctx.device)
    layout = ctx.layout
    m = evaluate(layout.prepared.root, layout.samples.root, layout.evaluation.root, ctx.cfg.evaluate,
                 ctx.cfg.data.classes, predict=lambda volumes: predict_proba(model, volumes),
                 vae_run=ctx.run, latent_memorization=ctx.cfg.pipeline.latent_memorization, device=ctx.device,
                 progress=ctx.progress)
    return {"seconds": m.get("seconds"), "metric": m["feature_network"]["metric"]}


def _saliency(ctx: Context) -> dict:
    summary = explain_cohort(headline_classifier(ctx).root, ctx.layout.prepared.root, ctx.layout.saliency.root,
                             ctx.cfg, limit=ctx.cfg.pipeline.saliency_limit, device=ctx.device,
                             progress=ctx.progress)
    return {m: round(e["seconds_per_volume"], 2) for m, e in summary["methods"].items()}


def _counterfactual(ctx: Context) -> dict:
    summary = counterfactual_cohort(ctx.run, headline_classifier(ctx).root, ctx.layout.prepared.root,
                                    ctx.layout.counterfactual.root, ctx.cfg, device=ctx.device, progress=ctx.progress)
    default = summary["default"]
    return {"n": default["validity"]["n"], "strengths": summary["strengths"],
            "model_evaluations": summary["model_evaluations"], "validity": default["validity"]["value"],
            "identity": default["identity"]["value"]}


def _report(ctx: Context) -> dict:
    metrics = write_metrics(ctx.run, ctx.cfg.pipeline)  # the report shows it, so it is written first
    return {"file": str(write_report(ctx.run)), "metrics": len(metrics)}


L = _LAYOUT
STAGES: tuple[Stage, ...] = (
    Stage("demo-cohort", _demo_cohort, ("demo_cohort",), (), _rel(L.cohort_participants),
          clean=_rel(L.cohort), enabled=lambda cfg: cfg.pipeline.input == DEMO_INPUT),
    Stage("prepare", _prepare, ("data", "prepare", "split", "pipeline.input"), ("demo-cohort",),
          _rel(L.prepared.manifest), always=True),
    Stage("train-vae", _train_vae, ("vae", "data.classes"), ("prepare",),
          _rel(L.vae.model, L.vae.reconstruction.metrics), clean=_rel(L.vae), distributed=True),
    Stage("encode", _encode, (), ("train-vae",), _rel(L.latents.info), clean=_rel(L.latents)),
    Stage("train-diffusion", _train_diffusion, ("diffusion",), ("encode",), _rel(L.diffusion.model),
          clean=_rel(L.diffusion), distributed=True),
    Stage("sample", _sample, ("sample", "seed", "pipeline.samples_per_class", "classifier.regimes",
                              "classifier.mix_ratios", "classifier.synthetic_ratio"),
          ("train-diffusion",), _rel(L.samples.manifest), clean=_rel(L.samples)),
    Stage("classify-grid", _classify_grid, ("classifier", "data.classes"), ("prepare", "sample"),
          _rel(L.grid.summary), clean=_rel(L.grid), partial=("sample",),
          partial_clean=_clean_synthetic_runs, distributed=True),
    Stage("evaluate", _evaluate, ("evaluate", "data.classes", "pipeline.latent_memorization"),
          ("prepare", "sample", "classify-grid", "encode"), _rel(L.evaluation.metrics), clean=_rel(L.evaluation)),
    Stage("saliency", _saliency, ("classifier.saliency", "pipeline.saliency_limit"), ("classify-grid",),
          _rel(L.saliency.summary), clean=_rel(L.saliency)),
    Stage("counterfactual", _counterfactual, ("counterfactual", "evaluate.memorization_downsample"),
          ("prepare", "encode", "train-diffusion", "classify-grid"), _rel(L.counterfactual.summary),
          clean=_rel(L.counterfactual)),
    Stage("report", _report, (), ("train-vae", "evaluate", "classify-grid", "saliency", "counterfactual"),
          _rel(L.report), always=True),
)
del L

STAGE_NAMES = tuple(s.name for s in STAGES)
if STAGE_NAMES != STAGE_ORDER:  # the run layout's order is what the report and the summary read
    raise ImportError(f"pipeline stages {STAGE_NAMES} differ from neuroldm.runs.STAGE_ORDER {STAGE_ORDER}")


def remove_outputs(run: Path, stage: Stage) -> None:
    for rel in stage.clean:
        path = run / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
