"""Each stage's outputs in a run directory, read into report blocks (`neuroldm.report.html`).

One function per section, each taking the run directory (a `neuroldm.runs.RunDir`) and returning its blocks.
Every file is found and read through the run directory object, in the stages' own formats: the flat metrics
(`neuroldm.report.headline`) and pipeline.json, the prepared and sample manifests, the training engine's logs, the
reconstruction, evaluation, classifier grid and saliency outputs. A stage whose files are missing gives a "Not
run" note; a file that exists but cannot be read gives a note naming it, so a partial or damaged run still yields
a page.
"""

from __future__ import annotations

import json
import logging
import math
import platform
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from neuroldm import __version__
from neuroldm.data.dataset import load_prepared_volume
from neuroldm.data.manifest import read_manifest
from neuroldm.errors import NeuroLDMError
from neuroldm.metrics.interval import Interval, wilson_interval
from neuroldm.report.figures import real_vs_synthetic, training_curves
from neuroldm.report.headline import NO_INTERVAL, VERDICT_KEYS, key_meaning, pipeline_order
from neuroldm.report.html import Block, Details, Figure, Note, Paragraph, Section, Table, not_run
from neuroldm.runs import ModelDir, RunDir, SaliencyDir, read_json, truncation_text
from neuroldm.samples import read_sample_manifest

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOLUMES_PER_CLASS = 3
SUBJECT_FIGURES_PER_METHOD = 2

# errors of reading a stage's file that leave the rest of the report intact (anything else is a bug)
READ_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError, NeuroLDMError)


# --------------------------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------------------------

def fmt(value: object) -> str:
    """A number for a table: integers as they are, floats to a precision that suits their size, "–" if absent."""
    if value is None or isinstance(value, str):
        return "–" if value in (None, "") else value
    if isinstance(value, bool | int | np.integer):
        return str(int(value))
    x = float(value)
    if not math.isfinite(x):
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if x == 0 or abs(x) >= 0.01:
        return f"{x:.3f}"
    return f"{x:.3g}"


def fmt_ci(low: object, high: object, number: Callable[[object], str] = fmt) -> str:
    """``[low, high]``, or "–" when a bound is absent or not finite."""
    if low is None or high is None or not all(math.isfinite(float(v)) for v in (low, high)):
        return "–"
    return f"[{number(low)}, {number(high)}]"


def fmt_pct(value: object) -> str:
    return "–" if value is None or not math.isfinite(float(value)) else f"{100 * float(value):.1f}%"


def fmt_interval(d: dict | None, number: Callable[[object], str] = fmt, *, unit: str = "",
                 n_name: str | None = None) -> str:
    """An interval of a stage's JSON (`Interval.to_dict`) as ``value[unit] ± std [low, high] (N=n n_name)``.

    `number` formats the value, std and bounds (`fmt`, or `fmt_pct` for a share); ``± std`` only where the dict
    has a ``std``; ``(N=…)`` only with `n_name` ("" for a bare N). Absent or of no values: "–"; skipped: why.
    """
    if not d:
        return "–"
    if "skipped" in d:
        return f"skipped ({d['skipped']})"
    iv = Interval.from_dict(d)
    if iv.n == 0:
        return "–"
    text = number(iv.value) + unit + (f" ± {number(d['std'])}" if "std" in d else "")
    text += f" {fmt_ci(iv.low, iv.high, number)}"
    return text if n_name is None else f"{text} (N={fmt(iv.n)}{' ' + n_name if n_name else ''})"


def _png(path: Path, caption: str) -> Block:
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        return Note(f"{path.name} is not a PNG image; left out.")
    return Figure(data, caption)


def _curves(folder: ModelDir, title: str) -> list[Block]:
    csv = folder.train_log
    if not csv.exists():
        return [not_run(f"no training log ({csv.parent.name}/{csv.name})")]
    table = pd.read_csv(csv)
    if table.empty or "step" not in table:
        return [Note(f"{csv.parent.name}/{csv.name} holds no logged steps yet.")]
    return [Figure(training_curves(table, title), f"{title}: training loss and validation metrics against "
                                                  f"optimiser step (from {csv.parent.name}/{csv.name}).")]


def _train_summary(folder: ModelDir) -> list[str]:
    s = folder.read_train_summary()
    if not s:
        return []
    return [f"{s.get('steps', '–')} steps in {fmt(s.get('seconds'))} s",
            f"best {s.get('monitor', 'validation')} {fmt(s.get('best'))}",
            *(["stopped early (no validation improvement)"] if s.get("early_stopped") else []),
            *([f"TRUNCATED: stopped at step {s.get('steps')} of {s.get('planned_steps')} planned"]
              if s.get("truncated") else [])]


# --------------------------------------------------------------------------------------------------------------
# 1. Summary
# --------------------------------------------------------------------------------------------------------------

_SUFFIXES = (".low", ".high", ".n")


def summary_meaning(key: str) -> str:
    if key_meaning(key):
        return key_meaning(key)
    last = key.rsplit(".", 1)[-1]
    for token, meaning in (("auc", "area under the ROC curve (0.5 = chance, 1 = perfect)"),
                           ("ms_ssim", "multi-scale structural similarity"), ("ssim", "structural similarity"),
                           ("psnr", "peak signal-to-noise ratio, dB"), ("fid", "Fréchet distance (lower = closer)"),
                           ("kid", "kernel inception distance (lower = closer)"), ("seconds", "seconds")):
        if token in key:
            return meaning
    return last.replace("_", " ")


HEADLINE_COLUMNS = ("metric", "value", "95% CI", "N", "what it means")


def headline_rows(metrics: dict) -> list[list[str]]:
    """The measured numbers of metrics.json (not its verdicts), in pipeline order, as rows of `HEADLINE_COLUMNS`;
    a number without an interval says why in its place (`NO_INTERVAL`)."""
    rows = []
    for key in pipeline_order(k for k in metrics if not k.endswith(_SUFFIXES) and k not in VERDICT_KEYS):
        ci = fmt_ci(metrics.get(f"{key}.low"), metrics.get(f"{key}.high"))
        why = NO_INTERVAL.get(key.replace("fid_random_features", "fid"))
        rows.append([key, fmt(metrics[key]), f"none: {why}" if ci == "–" and why else ci,
                     fmt(metrics.get(f"{key}.n")), summary_meaning(key)])
    return rows


def truncation_notes(run: RunDir) -> list[Block]:
    """The banner of a run with a training stopped before its planned steps (pipeline.json's truncated stages)."""
    truncated = run.truncated_stages() if run.pipeline.exists() else {}
    return [Note(f"Truncated: {name} stopped before its planned steps ({truncation_text(stopped) or 'steps unknown'})."
                 " Its model is under-trained, and every number of this report that depends on it is not the "
                 "configuration's result. Run `neuroldm run` again without max_minutes: it resumes the stage from "
                 "its checkpoint, completes the planned steps and rebuilds what depends on it.")
            for name, stopped in truncated.items()]


def summary_blocks(run: RunDir) -> list[Block]:
    blocks: list[Block] = truncation_notes(run)
    metrics = run.read_metrics()
    if metrics is None:
        blocks.append(not_run("no metrics.json (written by `neuroldm run` at the end of a full pipeline)"))
    else:
        if metrics.get("quick"):
            blocks.append(Note("Quick run: a smoke test of every stage. Its models are far too short-trained, so the "
                               "numbers below mean nothing, and no quality bar is judged."))
        elif metrics.get("bars"):
            rows = [[key, "missing" if bar.get("missing") else fmt(bar["value"]),
                     fmt_ci(bar.get("low"), bar.get("high")), fmt(bar.get("n")), bar["bar"],
                     "✓ met" if bar["pass"] else "✗ missed"]
                    for key, bar in ((k, metrics["bars"][k]) for k in pipeline_order(metrics["bars"]))]
            verdict = "every bar met" if metrics.get("bars_passed") else "NOT every bar met"
            blocks.append(Table(["metric", "value", "95% CI", "N", "bar", "verdict"], rows,
                                f"Quality bars of this run (pipeline.bars), in pipeline order: {verdict}"))
        blocks.append(Table(list(HEADLINE_COLUMNS), headline_rows(metrics),
                            "Headline numbers of the run (metrics.json), in pipeline order"))
    if not run.pipeline.exists():
        blocks.append(not_run("no pipeline.json (stage timings of `neuroldm run`)"))
    else:
        # pipeline.json (neuroldm.pipeline.runner): per stage the record of its last build, and the last invocation
        pipeline = run.read_pipeline()
        records = pipeline.get("stages", {})
        last = {s["name"]: s["status"] for s in (pipeline.get("last_invocation") or {}).get("stages", [])}
        order = {name: i for i, name in enumerate(run.stage_order())}
        rows, total = [], 0.0
        for name, rec in sorted(records.items(), key=lambda item: order.get(item[0], len(order))):
            if name == "report" and rec.get("state") == "running":
                continue  # this page, being written
            built = rec.get("state") in ("done", "truncated")
            seconds = float(rec.get("seconds") or 0) if built else None
            total += seconds or 0.0
            per_step = (rec.get("summary") or {}).get("seconds_per_step") if built else None
            rows.append([name, rec.get("state", "?"), last.get(name, ""), fmt(seconds), fmt(per_step),
                         peak_memory_text(rec.get("memory")) if built else "–", rec.get("finished", "")])
        rows.append(["total", "", "", fmt(total), "", "", ""])
        blocks.append(Table(["stage", "state", "last invocation", "seconds to build", "s/step", "peak memory",
                             "finished"], rows,
                            "Pipeline stages (last invocation: ran = computed, reused = up to date, failed, "
                            "truncated = stopped before its planned steps). s/step: the training stages' mean "
                            "optimiser step, validation and checkpoints excluded. Peak memory: the resident memory "
                            "of the main process while the stage ran (GB; 'process peak' where only the process's "
                            "peak so far could be read, earlier stages included) and torch's CUDA allocator peak on "
                            "a GPU"))
    return blocks


def peak_memory_text(memory: dict | None) -> str:
    """A stage's ``memory`` record of pipeline.json (`neuroldm.memory.PeakMemory.result`) for the stage table."""
    if not memory or memory.get("peak_rss_gb") is None:
        return "–"
    text = f"{fmt(memory['peak_rss_gb'])} GB RSS" + (" (process peak)" if memory.get("rss_scope") != "stage" else "")
    if memory.get("peak_cuda_gb") is not None:
        text += f", {fmt(memory['peak_cuda_gb'])} GB CUDA"
    return text


# --------------------------------------------------------------------------------------------------------------
# 2. Real vs synthetic
# --------------------------------------------------------------------------------------------------------------

def real_vs_synthetic_blocks(run: RunDir, per_class: int = VOLUMES_PER_CLASS) -> list[Block]:
    blocks: list[Block] = []
    classes: dict[int, str] = {}
    real: dict[int, list[tuple[str, str]]] = {}
    prepared = run.find_prepared()
    if prepared is None:
        blocks.append(not_run("no prepared cohort (prepared/manifest.csv)"))
    else:
        rows = read_manifest(prepared.manifest)
        rows = rows[rows["split"] == "train"].sort_values(["label", "subject", "session"])
        for label, part in rows.groupby("label"):
            classes[int(label)] = str(part["label_name"].iloc[0])
            real[int(label)] = [(f"real {r.subject}", r.path) for r in part.head(per_class).itertuples()]
    synthetic: dict[int, list[tuple[str, str]]] = {}
    if not run.samples.manifest.exists():
        blocks.append(not_run("no synthetic volumes (samples/manifest.csv)"))
    else:
        samples = read_sample_manifest(run.samples.root)
        for label, part in samples.rows.sort_values(["label", "sample"]).groupby("label"):
            classes.setdefault(int(label), str(part["label_name"].iloc[0]))
            synthetic[int(label)] = [(f"synthetic {r.sample}", r.path) for r in part.head(per_class).itertuples()]
    if not classes:
        return blocks
    volumes = {path: load_prepared_volume(path) for pairs in (*real.values(), *synthetic.values())
               for _, path in pairs}
    window_from = [volumes[p] for pairs in real.values() for _, p in pairs] or list(volumes.values())
    lo, hi = np.percentile(np.concatenate([v[::2, ::2, ::2].ravel() for v in window_from]), [0.5, 99.5])
    # a real row above a synthetic row per class: half the width of one row per class, so slices stay legible
    fig_rows = [(f"{classes[c]} {kind}", [(name, volumes[p]) for name, p in group.get(c, [])])
                for c in sorted(classes) for kind, group in (("real", real), ("synthetic", synthetic))
                if group.get(c)]
    counts = ", ".join(f"{classes[c]}: {len(real.get(c, []))} real, {len(synthetic.get(c, []))} synthetic"
                       for c in sorted(classes))
    blocks.append(Figure(real_vs_synthetic(fig_rows, (float(lo), float(hi))),
                         f"Orthogonal mid slices, a real and a synthetic row per class ({counts}); real volumes "
                         f"from the training split. One grey window for all: {fmt(lo)} to {fmt(hi)}, the "
                         f"{'real' if real else 'synthetic'} volumes' 0.5th to 99.5th percentile."))
    return blocks


# --------------------------------------------------------------------------------------------------------------
# 3. Autoencoder
# --------------------------------------------------------------------------------------------------------------

def autoencoder_blocks(run: RunDir) -> list[Block]:
    folder = run.vae
    if not folder.exists():
        return [not_run("no vae/ folder (`neuroldm train-vae`)")]
    blocks: list[Block] = []
    facts = _train_summary(folder)
    if facts:
        blocks.append(Paragraph("Training: " + "; ".join(facts) + "."))
    rec = folder.reconstruction.read_metrics()
    if rec is None:
        blocks.append(not_run("no reconstruction metrics (`neuroldm reconstruct`)"))
    else:
        meanings = {"psnr": ("PSNR (dB)", "peak signal-to-noise ratio; higher = closer"),
                    "ssim": ("SSIM", "structural similarity; 1 = identical"),
                    "ms_ssim": ("MS-SSIM", "structural similarity over several scales; 1 = identical"),
                    "l1": ("L1", "mean absolute intensity error (z-scored units); 0 = identical")}
        rows = [[label, fmt(rec["mean"][k]), fmt(rec.get("std", {}).get(k)), fmt(rec["n"]), meaning]
                for k, (label, meaning) in meanings.items() if k in rec["mean"]]
        blocks.append(Table(["metric", "mean", "std", "N volumes", "what it means"], rows,
                            f"Reconstruction of the {rec.get('split', '?')} split (posterior mean, decoded)"))
        png = folder.reconstruction.figure
        if png.exists():
            blocks.append(_png(png, "Real volumes, their reconstructions and the absolute errors (first subjects "
                                    "of the split)."))
    blocks += _curves(folder, "Autoencoder")
    return blocks


# --------------------------------------------------------------------------------------------------------------
# 4. Diffusion
# --------------------------------------------------------------------------------------------------------------

def diffusion_model_facts(meta: dict[str, str], n_params: int, n_subjects: int | None = None) -> list[list[str]]:
    """Rows of facts from the diffusion model file's header (its metadata and parameter count) and the number of
    its training subjects (the run's list, `neuroldm.runs.DiffusionDir.train_subjects`; a file written before the
    IDs left it lists them itself)."""
    cfg = json.loads(meta.get("diffusion_config", "{}"))
    info = json.loads(meta.get("meta", "{}"))
    rows = [["network", str(cfg.get("model", "?")), "DiT preset"],
            ["parameters", f"{n_params / 1e6:.2f} M" if n_params >= 1e5 else f"{n_params:,}",
             "weights in the exported file"],
            ["latent shape", "x".join(map(str, info.get("latent_shape", []))) or "–", "channels x grid"],
            ["patch", "x".join(map(str, cfg["patch"])) if cfg.get("patch") else "the preset's",
             "latent voxels per token"],
            ["prediction", str(cfg.get("prediction", "–")), "what the network predicts (noise or velocity)"],
            ["noise schedule", f"{cfg.get('schedule', '?')}, {cfg.get('num_train_timesteps', '?')} steps",
             "training timesteps"],
            ["classes", ", ".join(info.get("classes", [])) or "–", "conditioning labels"],
            ["latent scale factor", fmt(info.get("scale_factor")), "1/std of the training latents"],
            ["weights", f"step {info.get('step', '?')}{', EMA' if info.get('ema') else ''}", "exported weights"],
            ["training subjects", fmt(len(info["train_subjects"]) if "train_subjects" in info else n_subjects),
             "subjects the generator has seen"]]
    return rows


def diffusion_blocks(run: RunDir) -> list[Block]:
    folder = run.diffusion
    if not folder.exists():
        return [not_run("no diffusion/ folder (`neuroldm train-diffusion`)")]
    blocks: list[Block] = []
    facts = _train_summary(folder)
    if facts:
        blocks.append(Paragraph("Training: " + "; ".join(facts) + "."))
    header = folder.read_model_header()
    if header is not None:
        subjects = read_json(folder.train_subjects)
        n_subjects = len(subjects.get("train_subjects", [])) if subjects else None
        blocks.append(Table(["", "value", "what it is"], diffusion_model_facts(*header, n_subjects),
                            "The exported model"))
    else:
        blocks.append(not_run("no exported model (diffusion/model.safetensors)"))
    blocks += _curves(folder, "Diffusion model")
    return blocks


# --------------------------------------------------------------------------------------------------------------
# 5. Evaluation
# --------------------------------------------------------------------------------------------------------------

def _fid_rows(group: str, res: dict, metric: str) -> list[list[str]]:
    syn, base = res.get("synthetic", {}), res.get("real_baseline", {})
    s, b = syn.get(metric), base.get(metric)
    if not s and not b:
        reason = syn.get("skipped") or base.get("skipped") or "not computed"
        return [[group, "–", "–", "–", reason]]
    s, b = s or {}, b or {}
    n = f"N {fmt(s.get('n_b'))} vs {fmt(s.get('n_a'))}; baseline N {fmt(b.get('n_b'))} vs {fmt(b.get('n_a'))}"
    rows = [[group, "all positions, mean", fmt(s.get("mean")), fmt(b.get("mean")), n],
            [group, "2.5D (pooled per axis, mean)", fmt(s.get("fid_2_5d")), fmt(b.get("fid_2_5d")), ""]]
    for axis in ("sagittal", "coronal", "axial"):
        sa, ba = s.get("axes", {}).get(axis, {}), b.get("axes", {}).get(axis, {})
        rows.append([group, f"{axis}, mean over {len(sa.get('positions', [])) or '?'} positions",
                     fmt(sa.get("mean")), fmt(ba.get("mean")), ""])
    f3s, f3b = syn.get("fid_3d", {}), base.get("fid_3d", {})
    if "value" in f3s or "value" in f3b:
        rows.append([group, "3D FID (MedicalNet)", fmt(f3s.get("value")), fmt(f3b.get("value")), ""])
    return rows


LADDER_NAMES = {"real_baseline": "held-out real (baseline)", "reconstruction": "autoencoder reconstruction",
                "synthetic": "diffusion samples", "vae_prior": "autoencoder prior (floor)"}


def ladder_blocks(m: dict, metric: str) -> list[Block]:
    """The realism ladder: one table (each rung's FID against the reference, its ratio to the baseline, the blur
    it equals, its sharpness), the blur scale it is read on, and the latent dispersion."""
    lad = m.get("ladder")
    if not lad or "skipped" in lad:
        return [Note(f"Realism ladder: skipped ({(lad or {}).get('skipped', 'not computed')}).")] if lad else []
    overall = m.get("groups", {}).get("overall", {})
    suffix = "" if metric == "fid" else "_random_features"
    base = (overall.get("real_baseline", {}).get(metric) or {}).get("mean")
    rows = []
    for rung in lad.get("rungs", []):
        r = overall.get(rung, {})
        f = r.get(metric)
        if not f:
            rows.append([LADDER_NAMES.get(rung, rung), f"skipped ({r.get('skipped', 'not computed')})"] + ["–"] * 5)
            continue
        e = lad.get("equivalent_blur", {}).get(rung)
        blur = "–" if e is None else (f"{'≥ ' if e['censored'] == 'above' else ''}{e['sigma_mm']:.2f} mm "
                                      f"({e['sigma_voxels']:.2f} vox)")
        sharp = lad.get("sharpness", {}).get(rung)
        kid = r.get("kid" + suffix)
        rows.append([LADDER_NAMES.get(rung, rung), f"{fmt(f['mean'])} (2.5D {fmt(f['fid_2_5d'])})",
                     fmt(f["mean"] / base) if base else "–", blur,
                     fmt_interval(sharp) if sharp else "1 (reference)" if rung == "real_baseline" else "–",
                     fmt_interval(kid, n_name="subsets") if kid else "–", f"{f['n_b']} vs {f['n_a']}"])
    blocks: list[Block] = [Table(
        ["rung", f"per-slice {metric}", "÷ baseline", "equivalent blur", "sharpness ÷ real [95% CI]",
         "KID [95% CI]", "N (set vs reference)"], rows,
        "Realism ladder: where realism is lost. The reconstruction is the best any latent model can do with this "
        "autoencoder; the prior is what a model that learned nothing but the latent scale makes. Equivalent blur: "
        "the Gaussian that, applied to held-out real volumes, gives the same FID")]
    blur = lad.get("blur", {})
    if blur.get("sigmas_voxels"):
        blocks.append(Table(["σ (voxels)", "σ (mm)", f"per-slice {metric}", "2.5D"],
                            [[fmt(a), fmt(b), fmt(c), fmt(d)] for a, b, c, d in
                             zip(blur["sigmas_voxels"], blur["sigmas_mm"], blur["fid"], blur["fid_2_5d"])],
                            f"The blur scale: held-out real volumes blurred by a Gaussian of σ (N {blur['n_b']} vs "
                            f"{blur['n_a']}); σ = 0 is the baseline, {fmt(base)}"))
    lat = lad.get("latent", {})
    if "channels" in lat:
        rows = [[str(c["channel"]), fmt(c["generated_mean"]), fmt(c["real_mean"]), fmt(c["generated_std"]),
                 fmt(c["real_std"]), fmt(c["std_ratio"])] for c in lat["channels"]]
        rows.append(["all (RMS)", "", "", "", "", fmt(lat["std_ratio"])])
        blocks.append(Table(["channel", "generated mean", "real mean", "generated std", "real std", "std ratio"],
                            rows, f"Latent dispersion ({lat['units']}; N {lat['n_generated']} generated, "
                                  f"{lat['n_real']} real): a ratio under 1 means samples under-dispersed"))
    elif "skipped" in lat:
        blocks.append(Note(f"Latent dispersion: skipped ({lat['skipped']})."))
    return blocks


def _prdc_text(d: dict | None) -> str:
    if not d:
        return "–"
    if "skipped" in d:
        return f"skipped ({d['skipped']})"
    return (f"P {fmt(d['precision'])}, R {fmt(d['recall'])}, D {fmt(d['density'])}, C {fmt(d['coverage'])} "
            f"(k={d.get('k')}, N {d.get('n_fake')} vs {d.get('n_real')})")


def _memorization_rows(mem: dict) -> list[list[str]]:
    rows = []
    for space in ("image", "latent"):
        a = mem.get(space)
        if not a:
            continue
        if "skipped" in a:
            rows.append([space, f"skipped ({a['skipped']})", "–", "–", "–"])
            continue
        k = len(a.get("flagged", []))
        rows.append([space, f"{fmt_interval(a['flagged_share'], fmt_pct)} ({k} of {a['n_synthetic']})",
                     fmt(a.get("z_u")), fmt(a.get("median_ratio")),
                     f"{a['n_synthetic']} synthetic, {a['n_heldout']} held-out real"])
    return rows


def _class_difference_rows(cd: dict) -> list[list[str]]:
    rows = []
    for name, c in cd.get("contrasts", {}).items():
        if "skipped" in c:
            rows.append([name, f"skipped ({c['skipped']})", "–", "–", "–", "–", "–", "–"])
            continue
        n = c["n"]
        excess = c.get("excess_training_agreement")
        rows.append([name, fmt(c["corr_training"]), fmt_interval(c["corr_heldout"]), fmt(c["corr_training_heldout"]),
                     fmt(c["amplification"]), " / ".join(str(sum(n[k])) for k in ("training", "heldout", "synthetic")),
                     fmt_interval(excess) if excess else "–", c.get("verdict", "–")])
    return rows


def _class_difference_verdict(cd: dict) -> list[Block]:
    """The verdict of the class-difference check in one line, a warning when it flags the generator."""
    if "verdict" not in cd:
        return []
    text = f"Class-difference verdict: {cd['verdict']} ({cd.get('why', '')})."
    base = f" Real baseline: {cd['baseline_set']}." if cd.get("baseline_set") else ""
    flagged = cd["verdict"] in ("overfits-training-groups", "amplifies")
    return [Note(text + base) if flagged else Paragraph(text + base)]


def evaluation_blocks(run: RunDir) -> list[Block]:
    folder = run.evaluation
    m = folder.read_metrics()
    if m is None:
        return [not_run("no evaluation/metrics.json (`neuroldm evaluate`)")]
    net = m.get("feature_network", {})
    metric = net.get("metric", "fid")
    suffix = "" if metric == "fid" else "_random_features"
    real, syn = m.get("real", {}), m.get("synthetic", {})
    blocks: list[Block] = [Paragraph(
        f"Reference: real '{real.get('reference_split')}' split "
        f"(N={fmt((real.get('n_reference') or {}).get('total'))}); "
        f"baseline: held-out real '{real.get('heldout_split')}' split "
        f"(N={fmt((real.get('n_heldout') or {}).get('total'))}); synthetic volumes used: "
        f"N={fmt((syn.get('n_used') or {}).get('total'))}. Features: {net.get('name', '?')}"
        f" ({metric}). The real-vs-real baseline is what each number reads for real volumes the generator never "
        f"saw; a synthetic number near it is as good as this cohort can show.")]
    if metric != "fid":
        blocks.append(Note("These distances use a fixed random feature network, not InceptionV3: compare them "
                           "with the baseline only, never with published FIDs."))
    groups = m.get("groups", {})
    blocks += ladder_blocks(m, metric)
    rows = [r for g, res in groups.items() for r in _fid_rows(g, res, metric)]
    blocks.append(Table(["group", "measure", "synthetic vs real", "real baseline", "N (compared vs reference)"],
                        rows, f"Per-slice FID{' (random features)' if suffix else ''}, lower = closer to the real "
                              f"reference"))
    rows = []
    for g, res in groups.items():
        for comparison, name in (("synthetic", "synthetic"), ("real_baseline", "real baseline")):
            r = res.get(comparison, {})
            if "skipped" in r:
                rows.append([g, name, f"skipped ({r['skipped']})", "–", "–"])
                continue
            rows.append([g, name, fmt_interval(r.get("kid" + suffix), n_name="subsets"),
                         _prdc_text(r.get("prdc" + suffix)), fmt_interval(r.get("ms_ssim"), n_name="pairs")])
    blocks.append(Table(["group", "set", "KID mean ± std [95% CI]", "precision/recall/density/coverage",
                         "MS-SSIM diversity mean ± std [95% CI]"], rows,
                        "KID: lower = closer. Precision: share of the set that looks real; recall / coverage: "
                        "share of the real variety it covers. MS-SSIM between random pairs: lower = more diverse, "
                        "should match the real baseline"))
    mem = m.get("memorization", {})
    rows = _memorization_rows(mem)
    if rows:
        blocks.append(Table(["space", "flagged share [95% CI, Wilson]", "Z_U", "median distance ratio", "N"],
                            rows, "Memorization audit: share of synthetic volumes closer to a training volume than "
                                  "the nearest-training distance of almost all held-out real volumes (0% = no "
                                  "copying); Z_U < 0 means synthetic volumes sit closer to the training set than "
                                  "unseen real ones do (data copying)"))
        if mem.get("training_set"):
            blocks.append(Paragraph(f"Training set audited against: {mem['training_set']} "
                                    f"(N={fmt(mem.get('n_training'))})."))
    fid = m.get("fidelity", {})
    if "skipped" in fid or not fid:
        blocks.append(Note(f"Conditional fidelity: skipped ({fid.get('skipped', 'not computed')})."))
    else:
        rows = [[name, fmt_interval(c, fmt_pct), fmt(c["n"]), fmt(c.get("mean_p_requested"))]
                for name, c in {"all": fid, **fid.get("per_class", {})}.items()]
        blocks.append(Table(["requested class", "labelled as requested [95% CI, Wilson]", "N", "mean P(requested)"],
                            rows,
                            "Conditional fidelity: does a classifier trained on real volumes see the requested class?"))
    rows = _class_difference_rows(m.get("class_difference", {}))
    if rows:
        blocks.append(Table(["contrast", "synthetic vs training", "synthetic vs held-out [95% CI]",
                             "real: training vs held-out", "amplification", "N (training / held-out / synthetic)",
                             "excess training agreement [95% CI]", "verdict"],
                            rows, "Class-difference agreement: correlation of the class-mean difference maps. A "
                                  "generator that learned the effect agrees with held-out subjects about as well as "
                                  "the training subjects do (real column); one that agrees with its training "
                                  "subjects far better than with held-out ones learned their chance differences, "
                                  "and a classifier trained on its samples will not transfer. Excess: (synthetic "
                                  "vs training − synthetic vs held-out) − the same for real validation subjects; "
                                  "above 0 with its CI: overfits-training-groups"))
        blocks += _class_difference_verdict(m.get("class_difference", {}))
    names = list(m.get("figures") or []) or sorted(p.name for p in folder.root.glob("*.png"))
    for name in names:
        path = folder / name
        if not path.exists():
            blocks.append(Note(f"Figure {name} is listed in metrics.json but missing."))
        elif folder.figure_kind(name)[0] == "slice_fid":
            blocks.append(_png(path, f"{metric} against slice position per axis, group "
                                     f"'{folder.figure_kind(name)[1]}': synthetic vs the real baseline."))
        elif folder.figure_kind(name)[0] == "closest_pairs":
            blocks.append(_png(path, "The synthetic volumes closest to a training volume, beside that volume."))
        elif folder.figure_kind(name)[0] == "ladder":
            blocks.append(_png(path, "The realism ladder in pictures: a held-out volume, its reconstruction, a "
                                     "synthetic volume of its class and a prior sample, in one intensity window; "
                                     "below, the same around the hippocampi."))
        else:
            blocks.append(_png(path, name))
    return blocks


# --------------------------------------------------------------------------------------------------------------
# 6. Classifier
# --------------------------------------------------------------------------------------------------------------

GRID_METRICS = {"auc_roc": "AUC-ROC", "balanced_accuracy": "Bal. acc.", "sensitivity": "Sensitivity",
                "specificity": "Specificity", "f1": "F1", "auc_pr": "AUC-PR"}


def _mean_std_ci(row: dict, name: str) -> str:
    mean, std = row.get(f"{name}_mean"), row.get(f"{name}_std")
    if mean is None or not math.isfinite(float(mean)):
        return "–"
    text = fmt(mean)
    if std is not None and math.isfinite(float(std)):
        text += f" ± {fmt(std)} {fmt_ci(row.get(f'{name}_low'), row.get(f'{name}_high'))}"
    return text


def _p(value: object) -> str:
    return "–" if value is None or not math.isfinite(float(value)) else f"{float(value):.3g}"


def multiclass_grid_blocks(grid: dict, classes: list[str]) -> list[Block]:
    """K > 2 classes: the per-run table (accuracy, balanced accuracy, macro and per-class AUC), the pooled table
    (macro AUC with its bootstrap CI and paired bootstrap p, each class's AUC with DeLong's CI and paired DeLong p)
    and each regime's pooled confusion matrix."""
    metrics = {"auc_roc": "AUC (macro)", "balanced_accuracy": "Bal. acc.", "accuracy": "Accuracy",
               **{f"auc_roc_{c}": f"AUC {c}" for c in classes}}
    rows = [[r["regime"], fmt(r.get("runs")), f"{fmt(r.get('n_train_real'))}+{fmt(r.get('n_train_synthetic'))}",
             fmt(r.get("n_test")), *[_mean_std_ci(r, k) for k in metrics]] for r in grid.get("summary", [])]
    blocks: list[Block] = [Table(["regime", "runs", "train real+syn", "N test", *metrics.values()], rows,
                                 "Per regime: mean ± std over runs [95% t-interval over runs, N = runs]; AUC <class>: "
                                 "that class vs the rest; prediction: the most probable class")]
    rows = []
    for r in grid.get("pooled", []):
        row = [r["regime"], {"test": "test", "val": "out-of-fold"}.get(r.get("split"), str(r.get("split"))),
               fmt(r.get("n")), f"{fmt(r.get('auc'))} {fmt_ci(r.get('auc_low'), r.get('auc_high'))}",
               _p(r.get("p_vs_real"))]
        for c in classes:
            row.append(f"{fmt(r.get(f'auc_{c}'))} {fmt_ci(r.get(f'auc_{c}_low'), r.get(f'auc_{c}_high'))}, "
                       f"p {_p(r.get(f'p_vs_real_{c}'))}")
        rows.append(row)
    blocks.append(Table(["regime", "scores", "N subjects", "macro AUC [95% CI, bootstrap]",
                         "p vs real (paired bootstrap)", *[f"AUC {c} [95% CI, DeLong], p vs real (paired DeLong)"
                                                           for c in classes]], rows,
                        "Pooled: each subject's probabilities averaged over the regime's runs; macro AUC = mean of "
                        "the one-vs-rest AUCs; p < 0.05 means the AUC differs from the real-only classifier's on "
                        "the same subjects"))
    for r in grid.get("pooled", []):
        cm = r.get("confusion")
        if not cm:
            continue
        rows = [[c, *[str(int(v)) for v in counts], fmt_interval(wilson_interval(int(counts[i]),
                                                                                   int(sum(counts))).to_dict())]
                for i, (c, counts) in enumerate(zip(classes, cm))]
        blocks.append(Table(["true \\ predicted", *classes, "recall [95% CI, Wilson]"], rows,
                            f"Confusion matrix, {r['regime']} ({r.get('split')}, N={fmt(r.get('n'))}; balanced "
                            f"accuracy {fmt(r.get('balanced_accuracy'))} "
                            f"{fmt_ci(r.get('balanced_accuracy_low'), r.get('balanced_accuracy_high'))}, MOVER-Wilson)"))
    return blocks


def classifier_blocks(run: RunDir) -> list[Block]:
    blocks: list[Block] = []
    grid = run.grid.read_summary()
    classes = (grid or {}).get("classes") or []
    if grid is None:
        blocks.append(not_run("no classifier grid (classify-grid/summary.json, `neuroldm classify-grid`)"))
    else:
        folds = grid.get("folds")
        folds_text = "the fixed validation split" if folds in ([None], None) else f"folds {folds}"
        k_text = f"; {len(classes)} classes ({', '.join(classes)})" if len(classes) > 2 else ""
        blocks.append(Paragraph(f"{grid.get('runs', '?')} runs: regimes {', '.join(grid.get('regimes', []))}; "
                                f"seeds {grid.get('seeds')}; {folds_text}{k_text}. Every number is on real "
                                f"test subjects."))
        if grid.get("skipped_regimes"):
            blocks.append(Note(f"Skipped regimes (no synthetic volumes given): {', '.join(grid['skipped_regimes'])}."))
    if grid is not None and len(classes) > 2:
        blocks += multiclass_grid_blocks(grid, classes)
    elif grid is not None:
        rows = [[r["regime"], fmt(r.get("runs")), f"{fmt(r.get('n_train_real'))}+{fmt(r.get('n_train_synthetic'))}",
                 fmt(r.get("n_test")), *[_mean_std_ci(r, k) for k in GRID_METRICS]] for r in grid.get("summary", [])]
        blocks.append(Table(["regime", "runs", "train real+syn", "N test", *GRID_METRICS.values()], rows,
                            "Per regime: mean ± std over runs [95% t-interval over runs, N = runs]"))
        rows = []
        for r in grid.get("pooled", []):
            n_paired = r.get("n_paired")
            rows.append([r["regime"], {"test": "test", "val": "out-of-fold"}.get(r.get("split"), str(r.get("split"))),
                         fmt(r.get("n")), f"{fmt(r.get('auc'))} {fmt_ci(r.get('auc_low'), r.get('auc_high'))}",
                         "–" if r.get("diff_vs_real") is None or not math.isfinite(r["diff_vs_real"])
                         else f"{r['diff_vs_real']:+.3f}",
                         "–" if r.get("p_vs_real") is None or not math.isfinite(r["p_vs_real"])
                         else f"{r['p_vs_real']:.3g}" + (f" (N={int(n_paired)} paired)" if n_paired else "")])
        blocks.append(Table(["regime", "scores", "N subjects", "pooled AUC [95% CI, score interval]", "ΔAUC vs real",
                             "p (paired DeLong)"], rows,
                            "Pooled: each subject's score averaged over the regime's runs; p < 0.05 means the AUC "
                            "differs from the real-only classifier's on the same subjects"))
    result = run.classifier.read_result()
    if result is None:
        blocks.append(not_run("no single classifier (classifier/result.json, `neuroldm classify`)"))
    else:
        test = result["test"]
        multiclass = "per_class" in test
        blocks.append(Paragraph(
            f"Single classifier ({result.get('arch', '?')}, regime {result.get('regime')}, seed {result.get('seed')}): "
            f"trained on {result.get('n_train_real')} real + {result.get('n_train_synthetic')} synthetic volumes, "
            f"selected at step {result.get('selected_step')} (validation AUC {fmt(result.get('val_auc'))})."))
        rows = [[label, fmt_interval(test[k])]
                for k, label in {"accuracy": "Accuracy", **GRID_METRICS, "ppv": "PPV", "npv": "NPV"}.items()
                if k in test]
        if multiclass:
            rows[[r[0] for r in rows].index("AUC-ROC")][0] = "AUC-ROC (macro one-vs-rest)"
            for c, d in test["per_class"].items():
                rows += [[f"AUC-ROC {c} vs rest", fmt_interval(d["auc_roc"])], [f"Recall {c}", fmt_interval(d["recall"])],
                         [f"Precision {c}", fmt_interval(d["precision"])]]
            blocks.append(Table(["metric", "value [95% CI]"], rows,
                                f"Real test split, N={test.get('n')} ({', '.join(f'{n} {c}' for c, n in zip(test['classes'], test['n_per_class']))}); "
                                "macro AUC: stratified subject bootstrap, AUC per class: DeLong, shares: Wilson, "
                                "balanced accuracy: MOVER-Wilson"))
            blocks.append(Table(["true \\ predicted", *test["classes"]],
                                [[c, *[str(v) for v in counts]] for c, counts in zip(test["classes"], test["confusion"])],
                                "Confusion matrix of the most probable class"))
        else:
            blocks.append(Table(["metric", "value [95% CI]"], rows,
                                f"Real test split, N={test.get('n')} ({test.get('n_pos')} positive); AUC: score interval "
                                f"(Newcombe 2006), shares: Wilson, balanced accuracy: MOVER-Wilson, F1 and AUC-PR: "
                                f"bootstrap — each stays below 1 at perfect separation except the bootstrap ones"))
        blocks += _curves(run.classifier, "Classifier")
    return blocks


# --------------------------------------------------------------------------------------------------------------
# 7. Saliency
# --------------------------------------------------------------------------------------------------------------

def saliency_figures(figures: Path, subjects: int = SUBJECT_FIGURES_PER_METHOD) -> list[Path]:
    """A method's class-mean overlays, then at most `subjects` subject overlays."""
    pngs = sorted(figures.glob("*.png"))
    means = [p for p in pngs if SaliencyDir.mean_class(p) is not None]
    return means + [p for p in pngs if SaliencyDir.mean_class(p) is None][:subjects]


def saliency_blocks(run: RunDir) -> list[Block]:
    folder = run.saliency
    s = folder.read_summary()
    if s is None:
        return [not_run("no saliency/summary.json (`neuroldm saliency`)")]
    blocks: list[Block] = [Paragraph(
        f"{s.get('n_volumes', '?')} volumes of the '{s.get('split', '?')}' split; baseline {s.get('baseline')}, "
        f"target {s.get('target')}; ROI enrichment of the top {fmt_pct(s.get('top_fraction'))} voxels: 1x is "
        f"chance, 5x means those voxels fall in the ROI five times more often than uniformly spread ones. "
        f"Peak memory {fmt(s.get('peak_rss_gb'))} GB.")]
    methods = s.get("methods", {})
    classes = sorted({c for e in methods.values() for c in (e.get("enrichment") or {}) if c != "all"})
    rows = [[method, *[fmt_interval((e.get("enrichment") or {}).get(c), unit="x", n_name="")
                       for c in ("all", *classes)],
             fmt(e.get("seconds_per_volume")), fmt(e.get("ig_max_abs_delta"))] for method, e in methods.items()]
    blocks.append(Table(["method", "ROI enrichment, all [95% CI]", *[f"… {c}" for c in classes], "s / volume",
                         "IG max |delta|"], rows, "Attribution methods (bootstrap CI over subjects)"))
    for method in methods:
        figures = saliency_figures(folder.figures(method))
        if not figures:
            blocks.append(Note(f"{method}: no figures (classifier.saliency.figures = 0)."))
        for path in figures:
            mean_of = SaliencyDir.mean_class(path)
            what = f"mean |attribution| of class {mean_of}" if mean_of is not None else f"subject {path.stem}"
            blocks.append(_png(path, f"{method}: {what} (top 1% overlaid on the scan)."))
    return blocks


# --------------------------------------------------------------------------------------------------------------
# 8. Counterfactuals
# --------------------------------------------------------------------------------------------------------------

COUNTERFACTUAL_FIGURES = 4


def _counterfactual_row(label: str, m: dict) -> list[str]:
    share = {"number": fmt_pct, "n_name": ""}
    return [label, fmt_interval(m.get("validity"), **share), fmt_interval(m.get("roi_enrichment"), unit="x"),
            fmt_interval(m.get("ssim_outside_roi")), fmt_interval(m.get("psnr_outside_roi"), unit=" dB"),
            fmt_interval(m.get("identity"), **share), fmt_interval(m.get("lateralisation"), fmt_pct),
            fmt_interval(m.get("reversal"), n_name=""), fmt_interval(m.get("contralateral_change"))]


COUNTERFACTUAL_HEADER = ["", "validity", "ROI enrichment", "SSIM outside ROI", "PSNR outside ROI", "identity",
                         "one-sidedness", "lesion-side change", "contralateral change"]


def counterfactual_blocks(run: RunDir) -> list[Block]:
    folder = run.counterfactual
    s = folder.read_summary()
    if s is None:
        return [not_run("no counterfactual/summary.json (the counterfactual stage of `neuroldm run`)")]
    ref = s.get("reference_class", "?")
    evaluations = s.get("model_evaluations", {})
    blocks: list[Block] = [Paragraph(
        f"Each of the {s.get('n_subjects', '?')} subjects of the '{s.get('split', '?')}' split, edited to every other "
        f"class: its posterior mean taken to timestep {s.get('start_timestep')} by {s.get('method')} (strength "
        f"{s['strength']:g}), then denoised under the target class with guidance {s['guidance']:g} "
        f"({s.get('sampler')}, {s.get('steps')} steps over the whole schedule; "
        f"model evaluations per volume by strength: {', '.join(f'{k}: {v}' for k, v in evaluations.items())}), "
        f"and decoded. Every number compares the counterfactual with the subject's reconstruction (its decoded "
        f"posterior mean, the no-change reference). "
        f"Validity: the real-trained classifier assigns the target class. ROI enrichment of |counterfactual − "
        f"reconstruction|: 1x is chance. Identity: the subject's own scan is the counterfactual's nearest real volume "
        f"in the cohort. One-sidedness: the share of the change inside the ROI on its heavier side, for edits from "
        f"{ref} (0.5: both sides alike). Lesion-side change: mean intensity change (z units) in the lesion-side "
        f"hippocampus for edits to {ref} (> 0: the lesion signal is reduced), beside the contralateral side's.")]
    rows = [_counterfactual_row("all", s["default"])]
    rows += [_counterfactual_row(direction.replace("->", " → "), m) for direction, m in s.get("directions", {}).items()]
    blocks.append(Table(COUNTERFACTUAL_HEADER, rows, f"At the default strength {s['strength']:g} (95% CI; N "
                                                     f"in the validity column, and in the lesion-side change's)"))
    sweep = [_counterfactual_row(f"strength {m['strength']:g}", m) for m in s.get("sweep", [])]
    blocks.append(Table(["", *COUNTERFACTUAL_HEADER[1:]], sweep,
                        "Strength sweep: a higher strength edits from more noise, which buys validity with identity"))
    for path in folder.figures()[:COUNTERFACTUAL_FIGURES]:
        blocks.append(_png(path, f"{path.stem}: counterfactual − reconstruction over the subject's scan (top 1% of "
                                 f"|change|; blue darker, red brighter), ROI outlined."))
    return blocks


# --------------------------------------------------------------------------------------------------------------
# 9. Configuration and software
# --------------------------------------------------------------------------------------------------------------

PACKAGES = ("torch", "monai", "nibabel", "nilearn", "captum", "scikit-learn", "numpy")


def software_versions() -> list[list[str]]:
    rows = [["python", platform.python_version()], ["neuroldm", __version__]]
    for dist in PACKAGES:
        try:
            rows.append([dist, metadata.version(dist)])
        except metadata.PackageNotFoundError:
            rows.append([dist, "not installed"])
    rows.append(["platform", platform.platform()])
    return rows


def configuration_blocks(run: RunDir) -> list[Block]:
    blocks: list[Block] = []
    cfg = run.config
    if cfg.exists():
        blocks.append(Details("config.yaml (the resolved configuration of the last stage run here)",
                              cfg.read_text(encoding="utf-8")))
    else:
        blocks.append(not_run("no config.yaml in the run directory"))
    info = run.read_record()
    if info.get("stages"):
        blocks.append(Table(["stage", "last run"], [[k, v] for k, v in info["stages"].items()],
                            f"Stages recorded in run.json (prepared cohort: {info.get('prepared', '–')})"))
    blocks.append(Table(["software", "version"], software_versions(), "Software that wrote this report"))
    return blocks


# --------------------------------------------------------------------------------------------------------------

SECTIONS: list[tuple[str, str, str, Callable[[RunDir], list[Block]]]] = [
    ("summary", "Summary", "The run's headline numbers and how long each stage took.", summary_blocks),
    ("real-vs-synthetic", "Real vs synthetic",
     "A few real training volumes of each class beside synthetic volumes of the same class.", real_vs_synthetic_blocks),
    ("autoencoder", "Autoencoder",
     "How faithfully the 3D autoencoder compresses and restores real volumes: the ceiling on synthetic detail.",
     autoencoder_blocks),
    ("diffusion", "Diffusion model",
     "The class-conditional transformer that generates latents; a falling validation loss means it generalises.",
     diffusion_blocks),
    ("evaluation", "Generative evaluation",
     "How close the synthetic volumes are to real ones, how varied they are, and whether any copy a training scan.",
     evaluation_blocks),
    ("classifier", "Classifier",
     "Does training on synthetic volumes help a classifier tell the classes apart on real test subjects?",
     classifier_blocks),
    ("saliency", "Saliency", "Where in the brain the classifier looks, and whether that is the expected region.",
     saliency_blocks),
    ("counterfactual", "Counterfactuals",
     ("Held-out subjects edited to the other class: does the edit convince the classifier, stay in the lesion's "
      "region and keep the subject recognisable?"), counterfactual_blocks),
    ("configuration", "Configuration and software", "What produced these results.", configuration_blocks),
]


def build_sections(run: str | Path | RunDir) -> list[Section]:
    """Every section of the report; a section whose files cannot be read says so instead of failing."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    sections = []
    for anchor, title, intro, blocks_of in SECTIONS:
        try:
            blocks = blocks_of(run)
        except READ_ERRORS as e:
            log.warning("report: %s: %s", title, e)
            blocks = [Note(f"Could not be read: {e}")]
        sections.append(Section(anchor, title, intro, blocks))
    return sections
