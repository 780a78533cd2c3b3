"""``neuroldm saliency``: Captum attributions of a trained classifier, as NIfTI maps, figures and numbers.

Methods (``classifier.saliency.methods``), all on the logit of the target class (the true label, or the
predicted class):

- ``integrated_gradients`` — Sundararajan et al. 2017; ``ig_steps`` Gauss-Legendre steps from a baseline,
  evaluated ``internal_batch_size`` at a time; the convergence delta (sum of attributions − (f(x) − f(baseline)),
  the completeness axiom) is recorded per volume;
- ``input_x_gradient`` (relative to the all-zero image, which after z-scoring is the mean brain intensity, so
  grey matter near the mean gets little attribution whatever the gradient); ``saliency`` (absolute gradient,
  Simonyan et al. 2014);
- ``gradient_shap`` — Lundberg & Lee 2017: ``shap_samples`` random points between the input (plus Gaussian noise of
  ``noise_std``) and baselines drawn around the chosen baseline;
- ``smoothgrad`` — absolute gradients averaged over ``smoothgrad_samples`` noisy copies (Smilkov et al. 2017,
  via Captum's NoiseTunnel).

The baseline is ``background`` (a volume filled with the scan's background value, the median of its border voxels:
an empty scan, so voxels outside the head get no attribution), ``zero`` (the cohort's mean intensity after
z-scoring, the seed's choice) or ``blur`` (the scan smoothed with σ = 3 voxels).

Completeness (attributions summing to f(x) − f(baseline)) holds for IG up to the path quadrature error when the
network is smooth along the path, as it is with BatchNorm in eval mode (an affine map). With
``classifier.norm: group`` the network is scale-invariant and singular at a constant image, so IG from a constant
baseline needs many more steps: check the recorded convergence delta.

Memory: one volume is explained at a time; IG holds ``internal_batch_size`` forward/backward passes, GradientSHAP
``shap_samples`` and SmoothGrad ``internal_batch_size``. On a full 112×136×112 volume GradientSHAP with 8 samples
peaked at 7.2 GB on CPU with a 4.7 M-parameter 3D EfficientNet-B0; lower the sample counts or the internal batch
size where memory is short.

Writes ``RUN/saliency/`` (or ``--out``):

- ``<method>/<subject>[_<session>].nii.gz`` — the attribution map on the prepared volume's grid and affine (the
  name sanitised by `neuroldm.names`; `neuroldm.runs.SaliencyDir.subject_name` keeps it off the class means');
- ``<method>/mean_<class>.nii.gz`` — per true class, the mean of the subjects' |attribution| maps, each normalised
  to unit sum, on the cohort's mean affine (prepared grids differ by a translation only; the demo cohort's brains
  are roughly aligned, a real cohort should be registered to a template before `prepare`);
- ``<method>/figures/*.png`` — nilearn overlays of |attribution| (top 1%) on the subject's scan, with the ROI
  outline when there is one, for ``figures`` subjects per class, and of each class mean on the mean scan;
- ``attributions.csv`` — per subject and method: label, target, ROI enrichment, seconds, IG convergence delta;
- ``summary.json`` — per method, ``enrichment`` per class (and ``all``): the mean ROI enrichment over subjects
  with its 95% percentile-bootstrap CI, ``{"value", "low", "high", "n", "method", "level"}``
  (`neuroldm.metrics.interval.Interval`); seconds per volume, and the process's peak memory.

**ROI enrichment** = (share of attribution mass in the top ``top_fraction`` voxels that falls inside the ROI) ÷
(the ROI's share of the grid's voxels): 1 is chance, 5 means the most attributed voxels sit in the ROI five times
more often than uniformly spread ones would.
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from captum.attr import GradientShap, InputXGradient, IntegratedGradients, NoiseTunnel, Saliency
from scipy import ndimage
from torch import nn
from tqdm.auto import tqdm

from neuroldm.classify.predict import load_classifier, predict_proba
from neuroldm.config import Config, SaliencyConfig
from neuroldm.data.dataset import load_prepared_volume
from neuroldm.data.manifest import read_manifest, reference_affine, reference_frame_code
from neuroldm.errors import InputError, NeuroLDMError
from neuroldm.evaluate.stats import bootstrap_mean_ci
from neuroldm.io import atomic_path, read_frame_code, save_nifti_atomic, write_json_atomic
from neuroldm.names import UniqueNames
from neuroldm.runs import SaliencyDir
from neuroldm.viz.overlay import overlay_figure

log = logging.getLogger(__name__)

def border_value(volume: torch.Tensor) -> float:
    """Median of the voxels on the six faces of a (D, H, W) volume: the scan's background intensity."""
    v = volume.detach()
    faces = torch.cat([v[0].ravel(), v[-1].ravel(), v[:, 0].ravel(), v[:, -1].ravel(), v[:, :, 0].ravel(),
                       v[:, :, -1].ravel()])
    return float(faces.median())


def make_baseline(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The reference image of (1, 1, D, H, W) `x` for IG and GradientSHAP."""
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "background":
        return torch.full_like(x, border_value(x[0, 0]))
    if kind == "blur":
        blurred = ndimage.gaussian_filter(x[0, 0].detach().cpu().numpy(), sigma=3.0, mode="nearest")
        return torch.from_numpy(blurred)[None, None].to(x)
    raise ValueError(f"unknown baseline {kind!r}")


def attribute(model: nn.Module, x: torch.Tensor, target: int, method: str, cfg: SaliencyConfig,
              seed: int = 0) -> tuple[torch.Tensor, float | None]:
    """``(attribution like x, IG convergence delta or None)`` for one volume ``x`` of shape (1, 1, D, H, W)."""
    torch.manual_seed(seed)
    x = x.detach().clone().requires_grad_(True)
    if method == "integrated_gradients":
        attr, delta = IntegratedGradients(model).attribute(
            x, baselines=make_baseline(x, cfg.baseline), target=target, n_steps=cfg.ig_steps,
            internal_batch_size=cfg.internal_batch_size, return_convergence_delta=True)
        return attr.detach(), float(delta.abs().max())
    if method == "input_x_gradient":
        return InputXGradient(model).attribute(x, target=target).detach(), None
    if method == "saliency":
        return Saliency(model).attribute(x, target=target, abs=True).detach(), None
    if method == "gradient_shap":
        base = make_baseline(x, cfg.baseline)
        baselines = base + cfg.noise_std * torch.randn((cfg.shap_samples,) + tuple(x.shape[1:]), dtype=x.dtype,
                                                       device=x.device)
        return GradientShap(model).attribute(x, baselines=baselines, n_samples=cfg.shap_samples,
                                             stdevs=cfg.noise_std, target=target).detach(), None
    if method == "smoothgrad":
        return NoiseTunnel(Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=cfg.smoothgrad_samples, stdevs=cfg.noise_std,
            nt_samples_batch_size=cfg.internal_batch_size, target=target, abs=True).detach(), None
    raise ValueError(f"unknown attribution method {method!r}")


def roi_enrichment(attribution: np.ndarray, roi: np.ndarray, top_fraction: float = 0.01) -> dict[str, float]:
    """Share of |attribution| mass in the top `top_fraction` voxels that lies in `roi`, over the ROI's voxel share.

    Returns ``enrichment`` (1 = chance), ``mass_in_roi`` and ``roi_fraction``; NaN when the map or ROI is empty.
    """
    a = np.abs(np.asarray(attribution, dtype=np.float64)).ravel()
    r = np.asarray(roi).ravel() > 0
    if a.shape != r.shape:
        raise ValueError(f"attribution and ROI differ in size ({a.size} vs {r.size})")
    k = max(1, math.ceil(top_fraction * a.size))
    top = np.argpartition(a, a.size - k)[a.size - k:]
    mass = a[top].sum()
    roi_fraction = float(r.mean())
    if mass == 0 or roi_fraction == 0:
        return {"enrichment": math.nan, "mass_in_roi": math.nan, "roi_fraction": roi_fraction}
    in_roi = float(a[top][r[top]].sum() / mass)
    return {"enrichment": in_roi / roi_fraction, "mass_in_roi": in_roi, "roi_fraction": roi_fraction}


def _volume_name(row: pd.Series, names: UniqueNames) -> str:
    """The file name of a volume's map: its subject (and session) sanitised, unique within this call."""
    return names.take(SaliencyDir.subject_name(str(row["subject"]), str(row.get("session", "") or "")))


def _peak_rss_gb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20  # bytes on macOS, KiB on Linux


def explain_cohort(model_path: str | Path, prepared: str | Path, out_dir: str | Path, cfg: Config, *,
                   split: str | None = None, limit: int | None = None, device: str | torch.device = "cpu",
                   progress: bool = True) -> dict:
    """Attribute every volume of a split with every configured method; write maps, figures and numbers."""
    scfg = cfg.classifier.saliency
    split = split or scfg.split
    out = SaliencyDir(out_dir)
    model, info = load_classifier(model_path, device)
    for p in model.parameters():
        p.requires_grad_(False)  # gradients are needed for the input only
    classes = info["classes"]
    rows = read_manifest(prepared)
    rows = rows[rows["split"] == split].reset_index(drop=True)
    if limit is not None:
        rows = rows.groupby("label", group_keys=False).head(max(1, limit // len(classes))).reset_index(drop=True)
    if rows.empty:
        raise NeuroLDMError(f"{prepared}: no volumes in the {split} split to explain")

    records = []
    sums: dict[tuple[str, int], np.ndarray] = {}
    counts: dict[tuple[str, int], int] = {}
    shown: dict[tuple[str, int], int] = {}
    background_sum: dict[int, np.ndarray] = {}
    names = UniqueNames()
    bar = tqdm(total=len(rows) * len(scfg.methods), desc="saliency", unit="map", disable=not progress,
               dynamic_ncols=True)
    try:
        for i, row in rows.iterrows():
            volume = load_prepared_volume(row["path"])
            if list(volume.shape) != list(info["grid"]):
                raise InputError(row["path"], f"volume is {volume.shape} but the classifier was trained on "
                                              f"{tuple(info['grid'])}")
            affine, frame = nib.load(row["path"]).affine, read_frame_code(row["path"])
            roi = load_prepared_volume(row["roi_path"]) if row.get("roi_path") else None
            x = torch.from_numpy(volume)[None, None].to(device)
            probs = predict_proba(model, x)[0]
            target = int(row["label"]) if scfg.target == "label" else int(probs.argmax())
            label = int(row["label"])
            background_sum[label] = background_sum.get(label, 0) + volume
            name = _volume_name(row, names)
            for method in scfg.methods:
                start = time.perf_counter()
                attr, delta = attribute(model, x, target, method, scfg, seed=cfg.classifier.train.seed + i)
                seconds = time.perf_counter() - start
                a = attr[0, 0].cpu().numpy().astype(np.float32)
                save_nifti_atomic(a, affine, out.map(method, name), what=f"saliency {method}", frame=frame)
                absolute = np.abs(a, dtype=np.float64)
                total = absolute.sum()
                key = (method, label)
                sums[key] = sums.get(key, 0) + (absolute / total if total > 0 else absolute)
                counts[key] = counts.get(key, 0) + 1
                rec = {"subject": row["subject"], "session": row.get("session", ""), "label": label,
                       "target": target, "p_target": float(probs[target]), "method": method,
                       "seconds": seconds, "ig_delta": delta}
                if roi is not None:
                    rec.update(roi_enrichment(a, roi, scfg.top_fraction))
                records.append(rec)
                if shown.get(key, 0) < scfg.figures:
                    shown[key] = shown.get(key, 0) + 1
                    overlay_figure(a, volume, affine, out.figure(method, name),
                                   f"{method} | {name} ({classes[label]}), target {classes[target]}", roi)
                bar.update()
    finally:
        bar.close()

    ref, ref_frame = reference_affine(rows), reference_frame_code(rows)
    for (method, label), total in sums.items():
        mean = (total / counts[(method, label)]).astype(np.float32)
        save_nifti_atomic(mean, ref, out.map(method, out.mean_name(classes[label])), frame=ref_frame,
                          what=f"saliency {method} mean |map| {classes[label]}")
        if scfg.figures:
            bg = (background_sum[label] / int((rows["label"] == label).sum())).astype(np.float32)
            overlay_figure(mean, bg, ref, out.figure(method, out.mean_name(classes[label])),
                           f"{method} | mean over {counts[(method, label)]} {classes[label]}")

    table = pd.DataFrame(records)
    with atomic_path(out.attributions) as tmp:
        table.to_csv(tmp, index=False)
    summary: dict = {"model": info.get("path"), "model_sha256": info.get("sha256"), "split": split,
                     "n_volumes": len(rows), "grid": info["grid"], "baseline": scfg.baseline,
                     "target": scfg.target, "top_fraction": scfg.top_fraction, "peak_rss_gb": _peak_rss_gb(),
                     "methods": {}}
    for method, part in table.groupby("method", sort=False):
        entry = {"seconds_per_volume": float(part["seconds"].mean())}
        if part["ig_delta"].notna().any():
            entry["ig_max_abs_delta"] = float(part["ig_delta"].max())
        if "enrichment" in part:
            entry["enrichment"] = {"all": bootstrap_mean_ci(part["enrichment"].to_numpy(float)).to_dict()}
            for label, sub in part.groupby("label"):
                entry["enrichment"][classes[int(label)]] = \
                    bootstrap_mean_ci(sub["enrichment"].to_numpy(float)).to_dict()
        summary["methods"][method] = entry
    write_json_atomic(out.summary, summary)
    return summary
