"""The pipeline's counterfactual stage: every real subject of a split to every other class, and what that proves.

For each subject of ``counterfactual.split`` (the held-out test split) and each class but its own (HC → TLE and
TLE → HC in the demo), a counterfactual at ``counterfactual.strength`` and at every strength of the sweep
``counterfactual.strengths`` (`neuroldm.counterfactual.make.Counterfactuals`; an inversion is conditioned on the
subject's class), each measured against the subject's reconstruction (`neuroldm.counterfactual.measures`), and:

- **validity**: the real-trained classifier (`neuroldm.classify.predict`) assigns it to the target class;
- **identity**: its nearest real volume in the whole cohort (every split) is the subject's own, by the distance
  of the memorization audit (`neuroldm.evaluate.memorization.nearest_training`: 1 − correlation after average
  pooling by ``evaluate.memorization_downsample``).

Written to RUN/counterfactual (`neuroldm.runs.CounterfactualDir`): each subject's reconstruction; at the default
strength each counterfactual's volume, difference map and sidecar, and overlay figures of the first ``figures``
subjects per direction; ``counterfactuals.csv`` (one row per counterfactual and strength); ``summary.json``::

    {"split", "n_subjects", "classes", "reference_class", "method", "strength", "strengths", "guidance",
     "sampler", "steps", "seed", "model_evaluations", "classifier", "classifier_sha256", "checkpoint_sha256",
     "vae_sha256", "seconds",
     "default": MEASURES, "sweep": [{"strength": s, **MEASURES}, ...], "directions": {"HC->TLE": MEASURES, ...}}

MEASURES holds `neuroldm.metrics.interval.Interval` dicts over the counterfactuals (N: how many): ``validity`` and
``identity`` (Wilson shares), ``roi_enrichment`` (bootstrap mean), ``ssim_outside_roi`` and ``psnr_outside_roi``
(normal means); over the counterfactuals *from* the reference class (data.classes[0], the demo's HC),
``lateralisation``; over those *to* it, ``reversal`` (the mean lesion-side change: > 0 brightens the lesion, i.e.
reduces its signal) and ``contralateral_change`` (the same on the other side: the control).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from neuroldm.classify.predict import load_classifier, predict_proba
from neuroldm.config import Config
from neuroldm.counterfactual.make import Counterfactuals, Source, counterfactual_name, write_counterfactual
from neuroldm.counterfactual.measures import measure
from neuroldm.data.dataset import load_prepared_volume
from neuroldm.data.manifest import read_manifest, volume_affine
from neuroldm.errors import NeuroLDMError
from neuroldm.evaluate.memorization import nearest_training, standardised_vector
from neuroldm.evaluate.stats import bootstrap_mean_ci, mean_ci
from neuroldm.io import atomic_path, read_frame_code, save_nifti_atomic, write_json_atomic
from neuroldm.metrics.interval import NORMAL, Interval, wilson_interval
from neuroldm.names import UniqueNames
from neuroldm.runs import CounterfactualDir


def _mean(values) -> Interval:
    """`mean_ci` of the finite values (NaN throughout, N = 0, when there are none)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return mean_ci(v) if v.size else Interval(math.nan, math.nan, math.nan, 0, NORMAL)


def _share(flags) -> Interval:
    flags = np.asarray(flags, bool)
    return wilson_interval(int(flags.sum()), int(flags.size))


def summarise(table: pd.DataFrame, reference: str) -> dict:
    """The MEASURES of the module docstring over the counterfactuals of `table` (rows of counterfactuals.csv)."""
    def column(rows: pd.DataFrame, name: str) -> np.ndarray:
        return rows[name].to_numpy(float) if name in rows else np.array([])

    from_reference = table[table["source_class"] == reference]
    to_reference = table[(table["target_class"] == reference) & (table["source_class"] != reference)]
    return {"validity": _share(table["valid"]).to_dict(), "identity": _share(table["identity"]).to_dict(),
            "roi_enrichment": bootstrap_mean_ci(column(table, "enrichment")).to_dict(),
            "ssim_outside_roi": _mean(column(table, "ssim_outside_roi")).to_dict(),
            "psnr_outside_roi": _mean(column(table, "psnr_outside_roi")).to_dict(),
            "lateralisation": _mean(column(from_reference, "lateralisation")).to_dict(),
            "reversal": _mean(column(to_reference, "lesion_change")).to_dict(),
            "contralateral_change": _mean(column(to_reference, "contralateral_change")).to_dict()}


def counterfactual_cohort(run_dir: str | Path, classifier: str | Path, prepared: str | Path, out_dir: str | Path,
                          cfg: Config, *, device: str | torch.device = "cpu", progress: bool = True) -> dict:
    """Counterfactuals of every subject of ``counterfactual.split`` to every other class, measured (module
    docstring); `classifier` is the real-trained classifier that judges validity. Returns ``summary.json``."""
    ccfg = cfg.counterfactual
    maker = Counterfactuals(run_dir, ccfg, device)
    model, info = load_classifier(classifier, device)
    classes = maker.classes
    if list(info["classes"]) != classes:
        raise NeuroLDMError(f"{classifier}: classifier classes {info['classes']} differ from the diffusion model's "
                            f"{classes}")
    everyone = read_manifest(prepared)
    rows = everyone[everyone["split"] == ccfg.split].reset_index(drop=True)
    if rows.empty:
        raise NeuroLDMError(f"{prepared}: no volumes in the {ccfg.split} split to make counterfactuals of")
    strengths = sorted({ccfg.strength, *ccfg.strengths})
    out = CounterfactualDir(out_dir)
    names = UniqueNames()
    downsample = cfg.evaluate.memorization_downsample
    records, queries = [], []
    shown: Counter = Counter()
    start = time.perf_counter()
    bar = tqdm(total=len(rows) * (len(classes) - 1) * len(strengths), unit="vol", desc="counterfactual",
               disable=not progress, dynamic_ncols=True)
    try:
        for b in range(0, len(rows), ccfg.batch_size):
            chunk = rows.iloc[b:b + ccfg.batch_size]
            images = np.stack([load_prepared_volume(p) for p in chunk["path"]])
            rois = [load_prepared_volume(p) if p else None for p in chunk["roi_path"]]
            affines = [volume_affine(p) for p in chunk["path"]]
            frames = [read_frame_code(p) for p in chunk["path"]]
            mu = maker.encode(torch.from_numpy(images)[:, None])
            recon = maker.decode(mu).cpu().numpy()[:, 0]
            chunk_names = [names.take(f"{r.subject}_{r.session}" if r.session else r.subject)
                           for r in chunk.itertuples()]
            for i, name in enumerate(chunk_names):
                save_nifti_atomic(recon[i], affines[i], out.reconstruction(name), what="reconstruction",
                                  frame=frames[i])
            sources = chunk["label"].tolist()
            for k in range(1, len(classes)):  # the k-th other class of each subject
                targets = [(s + k) % len(classes) for s in sources]
                for strength in strengths:
                    cf = maker.decode(maker.edit(mu, targets, strength, sources)).cpu().numpy()[:, 0]
                    probs = predict_proba(model, torch.from_numpy(cf)[:, None])
                    for i, row in enumerate(chunk.itertuples()):
                        source, target = classes[sources[i]], classes[targets[i]]
                        cf_name = counterfactual_name(chunk_names[i], target, ccfg, strength)
                        records.append({
                            "subject": row.subject, "session": row.session, "counterfactual": cf_name,
                            "source_class": source, "target_class": target, "strength": strength,
                            "p_target": float(probs[i, targets[i]]), "predicted": classes[int(probs[i].argmax())],
                            "valid": int(probs[i].argmax()) == targets[i],
                            **measure(cf[i], recon[i], rois[i], top_fraction=ccfg.top_fraction,
                                      side=str(getattr(row, "side", "") or ""))})
                        queries.append(standardised_vector(cf[i], downsample))
                        if strength == ccfg.strength:
                            direction = (source, target)
                            record = {**maker.record(Source(chunk_names[i], Path(row.path), source), target,
                                                     strength), "subject": row.subject, "session": row.session}
                            write_counterfactual(out, cf_name, chunk_names[i], cf[i], recon[i], affines[i], record,
                                                 frame=frames[i], background=images[i], roi=rois[i],
                                                 figure=shown[direction] < ccfg.figures)
                            shown[direction] += 1
                        bar.update()
    finally:
        bar.close()

    table = pd.DataFrame(records)
    _, nearest = nearest_training(np.stack(queries), everyone["path"].tolist(), downsample, progress=progress)
    own = list(zip(table["subject"], table["session"]))
    table["nearest_real"] = everyone["subject"].to_numpy()[nearest]
    table["identity"] = [(everyone["subject"].iat[j], everyone["session"].iat[j]) == own[i]
                         for i, j in enumerate(nearest)]
    with atomic_path(out.table) as tmp:
        table.to_csv(tmp, index=False)

    reference = classes[0]
    default = table[table["strength"] == ccfg.strength]
    timesteps = maker.timesteps(ccfg.strength)
    summary = {
        "split": ccfg.split, "n_subjects": len(rows), "classes": classes, "reference_class": reference,
        "method": ccfg.method, "strength": ccfg.strength, "strengths": strengths, "guidance": ccfg.guidance,
        "sampler": maker.scfg.sampler, "steps": ccfg.steps, "seed": ccfg.seed if ccfg.method == "sdedit" else None,
        "start_timestep": timesteps[0] if timesteps else None,
        "model_evaluations": {f"{s:g}": len(maker.timesteps(s)) * (2 if ccfg.method == "inversion" else 1)
                              for s in strengths},
        "top_fraction": ccfg.top_fraction, "classifier": info.get("path"), "classifier_sha256": info.get("sha256"),
        "checkpoint_sha256": maker.gen.meta["sha256"], "vae_sha256": maker.gen.vae_meta["sha256"],
        "seconds": round(time.perf_counter() - start, 1),
        "default": summarise(default, reference),
        "sweep": [{"strength": s, **summarise(table[table["strength"] == s], reference)} for s in strengths],
        "directions": {f"{a}->{b}": summarise(part, reference)
                       for (a, b), part in default.groupby(["source_class", "target_class"], sort=False)}}
    write_json_atomic(out.summary, summary)
    return summary
