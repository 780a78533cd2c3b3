"""``MODEL_CARD.md`` of a bundle (`neuroldm export`): what the generator is, what it learnt from, how it scored, what
it is for and what it is not (after Mitchell et al. 2019, "Model Cards for Model Reporting", FAT* '19).

Built from the run's own outputs, read through `neuroldm.runs`: the model files' headers, the training summaries,
the latent index (cohort counts), ``metrics.json`` (headline numbers with CIs and N) and the evaluation's
memorization audit. It gives counts and aggregates only: no subject ID (the audit's nearest-training pairs name
subjects; the card gives their number).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from neuroldm import __version__
from neuroldm.config import Config, DiffusionConfig, VAEConfig, load_config
from neuroldm.report.headline import pipeline_order
from neuroldm.report.sections import HEADLINE_COLUMNS, fmt, fmt_ci, fmt_interval, fmt_pct, headline_rows
from neuroldm.runs import ModelDir, RunDir, truncation_text

SPLITS = (("train", "training (the generator's)"), ("val", "validation"), ("test", "test (held out)"))


def model_card(run: str | Path, *, vae_sha256: str, dit_sha256: str) -> str:
    """The Markdown model card of `run`'s generator, whose exported model files have these sha256."""
    run = RunDir(run)
    cfg = load_config(None, run.config)
    vae, vae_meta = _header(run.vae)
    dit, dit_meta = _header(run.diffusion)
    classes = list(dit_meta["classes"])
    intro = (f"Exported by neuroldm {__version__} on {time.strftime('%Y-%m-%d')}. A class-conditional latent "
             f"diffusion model: a 3D KL autoencoder and a 3D diffusion transformer (DiT) over its latents. Sample "
             f"from this folder with `neuroldm sample --model BUNDLE -n N --label CLASS --out DIR` (classes: "
             f"{', '.join(classes)}); `bundle.json` holds the sha256 of every file, checked when it is opened.")
    subjects = (f"Cohort: {_cohort_name(cfg)}. The training subjects' IDs stay in the run directory; the diffusion "
                f"model file records only their sha256 (`train_subjects_sha256`: "
                f"`{dit_meta.get('train_subjects_sha256', '–')}`), so whoever holds the run can check which subjects "
                f"trained it.")
    lines = [f"# Model card: neuroldm 3D brain MRI generator ({', '.join(classes)})", "", intro, ""]
    lines += _section("Model", _models(vae, vae_meta, vae_sha256, dit, dit_meta, dit_sha256))
    lines += _section("Training data", [*_cohort(run, classes), "", subjects])
    lines += _section("Preprocessing", _preprocessing(cfg, vae_meta))
    lines += _section("Training", _training(run, cfg))
    lines += _section("Evaluation", _evaluation(run))
    lines += _section("Memorization audit", _memorization(run))
    lines += _section("Intended use", INTENDED_USE)
    lines += _section("Limits", _limits(run, cfg, classes))
    return "\n".join(lines).rstrip() + "\n"


INTENDED_USE = [
    ("- Research on generative models of 3D brain MRI and on synthetic data: augmenting or replacing real training "
     "volumes of an image classifier of these classes, and measuring whether that helps (train on synthetic, test "
     "on real)."),
    "- Developing and testing image-analysis pipelines on volumes that belong to no person.",
    ("- Not for diagnosis, treatment or any decision about a patient; not as evidence about a disease on its own: a "
     "synthetic volume shows what the model learnt from its cohort, including the cohort's chance differences "
     "between groups."),
]

LIMITS = [
    ("- Volumes come on the prepared grid, spacing and intensity normalisation above, in the cohort's reference "
     "space (affine of the training split), not in scanner units."),
    ("- Small test sets give wide intervals: read each number with its 95% CI and N; a number without one says "
     "why."),
    ("- Sampled from this bundle, `samples.json` lists no training subjects (the bundle names none): "
     "`neuroldm evaluate` then audits memorization against the real reference split of the cohort you give it "
     "(the training split by default), and `neuroldm classify` refuses the samples, since its leak guard cannot "
     "check them against its validation and test subjects."),
]


def _limits(run: RunDir, cfg: Config, classes: list[str]) -> list[str]:
    """The fixed limits, after what this run lacks or missed: a quick run, a truncated training, a missed bar."""
    out = []
    metrics = run.read_metrics() or {}
    if metrics.get("quick"):
        out.append("- **A quick smoke run**: its models are far too short-trained; its numbers mean nothing. Do not "
                   "use it for anything but checking that the software runs.")
    truncated = run.truncated_stages() if run.pipeline.exists() else {}
    for name, stopped in truncated.items():
        out.append(f"- **Truncated**: {name} stopped before its planned steps ({truncation_text(stopped)}); the "
                   f"model is under-trained and the numbers above are not the configuration's.")
    if metrics.get("bars_passed") is False:
        missed = [k for k in pipeline_order(metrics.get("bars", {})) if not metrics["bars"][k].get("pass")]
        out.append(f"- **Quality bars missed**: {', '.join(missed)} (pipeline.bars).")
    if cfg.pipeline.input == "demo-cohort":
        out.append("- Trained on the demo cohort: synthetic subjects warped from one template (MNI152) with a "
                   "simulated hippocampal atrophy, not real anatomy or disease.")
    out.append(f"- It generates only what it learnt from one cohort ({', '.join(classes)}, counts above): that "
               f"cohort's scanners, protocols, population and label definitions; it says nothing about others.")
    return out + LIMITS


# --------------------------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------------------------

def _header(folder: ModelDir) -> tuple[dict, dict]:
    """``(metadata, meta)`` of an exported model file's header (no weights read)."""
    metadata, _ = folder.read_model_header()
    return metadata, json.loads(metadata.get("meta", "{}"))


def _models(vae: dict, vae_meta: dict, vae_sha256: str, dit: dict, dit_meta: dict, dit_sha256: str) -> list[str]:
    """Architecture, exported weights and sha256 of the autoencoder and the diffusion model."""
    vae_cfg = VAEConfig.model_validate_json(vae["vae_config"])
    dit_cfg = DiffusionConfig.model_validate_json(dit["diffusion_config"])
    patch = _shape(dit_cfg.patch) if dit_cfg.patch else "of the size"
    attention = f"{_shape(dit_cfg.window)} windows" if dit_cfg.window else "global attention"
    return _table(["part", "architecture", "trained weights", "sha256"], [
        ["autoencoder", f"3D KL-VAE `{vae_cfg.arch}`, latent {_shape(dit_meta['latent_shape'])} (channels x grid)",
         f"step {fmt(vae_meta.get('step'))}, best validation SSIM {fmt(vae_meta.get('best'))}", f"`{vae_sha256}`"],
        ["diffusion model", (f"DiT `{dit_cfg.model}`, patch {patch}, {attention}, {dit_cfg.prediction} prediction, "
                             f"{dit_cfg.schedule} schedule"),
         f"{'EMA' if dit_meta.get('ema') else 'raw'} weights of step {fmt(dit_meta.get('step'))}", f"`{dit_sha256}`"],
    ])


def _cohort(run: RunDir, classes: list[str]) -> list[str]:
    """Subjects (volumes) per class and split, from the latent index (every volume the autoencoder encoded)."""
    index = pd.read_csv(run.latents.index, dtype={"subject": str, "session": str, "label_name": str},
                        keep_default_na=False)
    rows = []
    for name in [*classes, "all"]:
        part = index if name == "all" else index[index["label_name"] == name]
        rows.append([name, *(_count(part[part["split"] == split]) for split, _ in SPLITS)])
    return [("Subjects (volumes) per class and split; the autoencoder and the diffusion model were trained on the "
             "training split."), "", *_table(["class", *(title for _, title in SPLITS)], rows)]


def _count(rows: pd.DataFrame) -> str:
    return f"{rows['subject'].nunique()} ({len(rows)})"


def _cohort_name(cfg: Config) -> str:
    if cfg.pipeline.input == "demo-cohort":
        return "the demo cohort (`neuroldm demo-cohort`, generated from the MNI152 template)"
    return "the researcher's own (`pipeline.input` in config.yaml)"


def _preprocessing(cfg: Config, vae_meta: dict) -> list[str]:
    p = cfg.prepare
    norm = ("z-score with the brain mask's mean and standard deviation" if p.normalisation == "zscore" else
            f"the brain mask's {p.percentiles[0]:g}th-{p.percentiles[1]:g}th percentiles mapped to [0, 1], clipped")
    grid, spacing = vae_meta.get("grid") or list(p.grid), vae_meta.get("spacing") or list(p.spacing)
    return _table(["step", "setting"], [
        ["orientation", "RAS (exact axis permutation and flips)"],
        ["grid", f"{_shape(grid)} voxels"],
        ["spacing", f"{_shape(spacing)} mm"],
        ["resampling", f"{p.interpolation} interpolation{', Gaussian anti-aliasing' if p.anti_alias else ''}"],
        ["brain mask", (f"voxels above {p.mask_threshold:g} x the 99th intensity percentile, largest component, "
                        f"holes filled; crop/pad around it to the grid")],
        ["normalisation", norm],
    ]) + ["", ("Grid and spacing are those of the volumes the autoencoder was trained on. Skull stripping, bias "
               "correction and registration, if any, were done before `neuroldm prepare` and are not recorded here.")]


def _training(run: RunDir, cfg: Config) -> list[str]:
    rows = []
    for name, folder, planned in (("autoencoder", run.vae, cfg.vae.train.steps),
                                  ("diffusion model", run.diffusion, cfg.diffusion.train.steps)):
        s = folder.read_train_summary() or {}
        state = ("truncated" if s.get("truncated") else "stopped early (no validation improvement)"
                 if s.get("early_stopped") else "complete" if s else "–")
        rows.append([name, fmt(s.get("steps")), fmt(s.get("planned_steps", planned)), state,
                     fmt(s.get("seconds")), fmt(s.get("world_size"))])
    return _table(["model", "steps trained", "steps planned", "training", "seconds", "processes"], rows)


def _evaluation(run: RunDir) -> list[str]:
    metrics = run.read_metrics()
    if metrics is None:
        return [("Not evaluated: the run has no `metrics.json` (`neuroldm run` writes it at the end of the "
                 "pipeline). Evaluate the model before using its samples.")]
    out = []
    if metrics.get("quick"):
        out += ["**Quick run: these numbers mean nothing.**", ""]
    out += [("Headline numbers of the run (`metrics.json`; 95% confidence intervals, N = the sample size behind "
             "each):"), "", *_table(list(HEADLINE_COLUMNS), headline_rows(metrics))]
    if metrics.get("bars"):
        rows = [[key, "missing" if bar.get("missing") else fmt(bar.get("value")),
                 fmt_ci(bar.get("low"), bar.get("high")), fmt(bar.get("n")), bar.get("bar", ""),
                 "met" if bar.get("pass") else "MISSED"]
                for key, bar in ((k, metrics["bars"][k]) for k in pipeline_order(metrics["bars"]))]
        verdict = "every bar met" if metrics.get("bars_passed") else "NOT every bar met"
        out += ["", f"Quality bars (pipeline.bars): {verdict}.", "",
                *_table(["metric", "value", "95% CI", "N", "bar", "verdict"], rows)]
    return out


def _memorization(run: RunDir) -> list[str]:
    """The audit's verdict per space: copies, flagged share with its interval, Z_U, and what it was audited
    against (counts only)."""
    evaluation = run.evaluation.read_metrics()
    mem = (evaluation or {}).get("memorization")
    metrics = run.read_metrics() or {}
    if not mem:
        if "memorization.flagged" in metrics:
            return [(f"{fmt(metrics['memorization.flagged'])} of {fmt(metrics.get('memorization.flagged.n'))} "
                     f"synthetic volumes flagged as copies of a training volume (metrics.json); "
                     f"Z_U {fmt(metrics.get('memorization.z_u'))}.")]
        return [("Not run: the run has no evaluation (`neuroldm evaluate`). Audit the model for copies of its "
                 "training volumes before sharing its samples.")]
    intro = (f"Each synthetic volume's nearest training volume, against how near unseen real volumes come "
             f"(`evaluate.memorization_*`), among {mem.get('n_training', '–')} training volumes; training set: "
             f"{mem.get('training_set', '–')}. Z_U is the data-copying test statistic of Meehan et al. (AISTATS "
             f"2020): ≪ 0 means the synthetic volumes sit closer to the training set than new real data does; > 0, "
             f"farther.")
    out = [intro, ""]
    rows = []
    for space in ("image", "latent"):
        audit = mem.get(space)
        if not audit:
            continue
        if "skipped" in audit:
            rows.append([space, f"skipped ({audit['skipped']})", "–", "–", "–"])
            continue
        copies = (f"{audit['n_copies']} of {audit['n_synthetic']} (nearer than {audit['copy_ratio']:g} x the "
                  f"closest held-out volume's distance)")
        flagged = (f"{fmt_interval(audit['flagged_share'], fmt_pct)} (nearer than the {audit['percentile']:g}th "
                   f"percentile of {audit['n_heldout']} held-out volumes; about {audit['percentile']:g}% by chance)")
        rows.append([audit.get("space", space).split(",")[0], copies, flagged, fmt(audit.get("z_u")),
                     fmt(audit.get("distinct_training_neighbours"))])
    return out + _table(["space", "copies", "flagged share (95% CI)", "Z_U", "distinct nearest training volumes"],
                        rows)


# --------------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------------

def _section(title: str, body: list[str]) -> list[str]:
    return [f"## {title}", "", *body, ""]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(cell, row)) + " |" for row in rows)]


def _shape(values) -> str:
    return "–" if values is None else "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
