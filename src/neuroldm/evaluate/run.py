"""``neuroldm evaluate``: synthetic volumes against the real cohort, with a real-vs-real baseline side by side.

Sets (all on the prepared grid, with the prepared normalisation):

- **reference**: the real ``reference_split`` (default ``train``), the distribution the generator learned;
- **synthetic**: the sample folder's volumes (`neuroldm.samples`);
- **held-out**: the real ``heldout_split`` (default ``test``). Held-out vs reference is the **real-vs-real
  baseline**: what the metrics read for real data the generator never saw, at the same N, on this cohort.

With ``evaluate.match_n`` the synthetic set is subsampled (seeded) to the held-out count per class, so synthetic
and baseline FIDs share one N (FID is biased upward at small N). Every metric is computed for each class and
overall ("groups"), for both comparisons. Results go to ``OUT/metrics.json`` (keys documented in
`evaluate`), with figures: FID against slice position per axis (``slice_fid_<group>.png``) and the closest
synthetic/training pairs (``closest_pairs.png``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from neuroldm import __version__
from neuroldm.config import EvaluateConfig
from neuroldm.data.dataset import load_prepared_volume
from neuroldm.data.manifest import read_manifest
from neuroldm.errors import InputError
from neuroldm.evaluate import diversity, ladder, memorization
from neuroldm.evaluate.class_difference import class_difference
from neuroldm.evaluate.features3d import load_medicalnet, volume_features
from neuroldm.evaluate.fidelity import conditional_fidelity
from neuroldm.evaluate.inception import FeatureNetwork, resolve_feature_network
from neuroldm.evaluate.slice_fid import (
    AXES,
    SliceFeatures,
    extract_slice_features,
    intensity_window,
    per_slice_fid,
    slice_positions,
)
from neuroldm.io import atomic_path, write_json_atomic
from neuroldm.metrics.frechet import frechet_distance
from neuroldm.runs import EvaluationDir, PreparedDir, RunDir, SampleDir
from neuroldm.samples import SampleSet, read_sample_manifest
from neuroldm.vae.decode import encode_volume
from neuroldm.vae.encode import load_latents
from neuroldm.vae.weights import load_vae
from neuroldm.viz.slices import comparison_figure

log = logging.getLogger(__name__)

Predict = Callable[[torch.Tensor], torch.Tensor]


def _ids(rows: pd.DataFrame) -> list[str]:
    if "session" in rows.columns:
        return [f"{s}_{ses}" if ses else str(s) for s, ses in zip(rows["subject"], rows["session"], strict=True)]
    return [str(s) for s in rows["subject"]]


def _subsample(rows: pd.DataFrame, n: int | None, rng: np.random.Generator) -> pd.DataFrame:
    if n is None or len(rows) <= n:
        return rows.reset_index(drop=True)
    return rows.iloc[np.sort(rng.choice(len(rows), n, replace=False))].reset_index(drop=True)


def _match_per_class(synthetic: pd.DataFrame, target: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    parts = [_subsample(synthetic[synthetic["label"] == c], int((target["label"] == c).sum()), rng)
             for c in sorted(synthetic["label"].unique())]
    return pd.concat(parts, ignore_index=True)


def _counts(rows: pd.DataFrame, classes: list[str]) -> dict:
    return {"total": len(rows)} | {name: int((rows["label"] == c).sum()) for c, name in enumerate(classes)}


# --------------------------------------------------------------------------------------------------------------
# Selection: the sets compared
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvaluationSets:
    """The volumes an evaluation reads (manifest rows with ``path`` and ``label``).

    ``reference`` and ``heldout``: the real splits (at most ``max_volumes`` each); ``audited``: the synthetic volumes
    (at most ``max_volumes``) that the memorization audit, the class difference and the fidelity see;
    ``synthetic``: those the distribution metrics compare (``audited`` matched per class to the held-out counts with
    ``match_n``); ``training``: the generator's training volumes, as ``training_set`` says; ``baseline``: real
    volumes in neither the training nor the held-out set (the class-difference verdict's real baseline), as
    ``baseline_set`` says (empty when the cohort has none).
    """

    reference: pd.DataFrame
    heldout: pd.DataFrame
    samples: SampleSet
    audited: pd.DataFrame
    synthetic: pd.DataFrame
    grid: tuple[int, ...]
    training: pd.DataFrame
    training_set: str
    baseline: pd.DataFrame | None = None
    baseline_set: str = ""

    def compared(self) -> dict[str, pd.DataFrame]:
        """The three sets the distribution metrics compare, by the name their features go under."""
        return {"reference": self.reference, "real_baseline": self.heldout, "synthetic": self.synthetic}


def select_sets(real: str | Path, synthetic: str | Path, cfg: EvaluateConfig, reference_split: str = "train",
                heldout_split: str = "test") -> EvaluationSets:
    """Read the prepared cohort and the sample folder; subsample (seeded by ``evaluate.seed``) and match the sets."""
    rng = np.random.default_rng(cfg.seed)
    rows = read_manifest(real)
    ref = _subsample(rows[rows["split"] == reference_split], cfg.max_volumes, rng)
    held = _subsample(rows[rows["split"] == heldout_split], cfg.max_volumes, rng)
    for name, part, split in (("reference", ref, reference_split), ("held-out", held, heldout_split)):
        if len(part) < 2:
            raise InputError(PreparedDir(real).manifest, f"the {name} split '{split}' has {len(part)} usable "
                                                          f"volume(s); the evaluation needs at least 2")
    samples = read_sample_manifest(synthetic)
    syn_all = _subsample(samples.rows, cfg.max_volumes, rng)
    if len(syn_all) < 2:
        raise InputError(SampleDir(samples.folder).manifest, "the evaluation needs at least 2 synthetic volumes")
    grid = load_prepared_volume(ref["path"].iloc[0]).shape
    syn_grid = load_prepared_volume(syn_all["path"].iloc[0]).shape
    if syn_grid != grid:
        raise InputError(syn_all["path"].iloc[0], f"synthetic grid {syn_grid} differs from the prepared grid {grid}")
    syn = _match_per_class(syn_all, held, rng) if cfg.match_n else syn_all
    # memorization and class difference: against the generator's own training volumes when the sample folder
    # names them
    train_subjects = set(samples.train_subjects)
    if train_subjects:
        training = rows[rows["subject"].isin(train_subjects)].reset_index(drop=True)
        training_set = "generator's training subjects (samples.json)"
    else:
        training = rows[rows["split"] == reference_split].reset_index(drop=True)
        training_set = f"real '{reference_split}' split (samples.json lists no training subjects)"
    baseline, baseline_set = _baseline_rows(rows, training, held, cfg, reference_split, heldout_split)
    return EvaluationSets(reference=ref, heldout=held, samples=samples, audited=syn_all, synthetic=syn,
                          grid=grid, training=training, training_set=training_set, baseline=baseline,
                          baseline_set=baseline_set)


def _baseline_rows(rows: pd.DataFrame, training: pd.DataFrame, held: pd.DataFrame, cfg: EvaluateConfig,
                   reference_split: str, heldout_split: str) -> tuple[pd.DataFrame, str]:
    """The class-difference verdict's real baseline: the first of the splits val, test, train that is neither the
    reference nor the held-out split, without the generator's training and the held-out subjects (at most
    ``max_volumes``, its own seeded draw so that the other sets' draws stay as they were)."""
    split = next((s for s in ("val", "test", "train") if s not in (reference_split, heldout_split)), None)
    part = rows[(rows["split"] == split) & ~rows["subject"].isin(set(training["subject"]) | set(held["subject"]))]
    part = _subsample(part, cfg.max_volumes, np.random.default_rng([cfg.seed, 1]))
    return part, f"real '{split}' split, without the generator's training subjects" if len(part) else ""


# --------------------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Features:
    """Features of the compared sets, by set name (`EvaluationSets.compared`).

    ``slices``: per-slice network features; ``volumes``: each volume's slice features averaged over positions and
    axes ``(N, F)`` (KID, PRDC); ``volumes_3d``: MedicalNet features ``(N, 512)``, or None without its weights.
    """

    network: FeatureNetwork
    window: tuple[float, float]
    positions: list[np.ndarray]
    slices: dict[str, SliceFeatures]
    volumes: dict[str, np.ndarray]
    volumes_3d: dict[str, np.ndarray] | None


def extract_features(sets: EvaluationSets, cfg: EvaluateConfig, device: str | torch.device = "cpu",
                     progress: bool = True) -> Features:
    """Slice features of every compared volume (one intensity window, from the reference set), and 3D features
    when ``evaluate.medicalnet_path`` is set. The ladder's rungs are added later, to the same window and
    positions (`add_features`)."""
    net = resolve_feature_network(cfg)  # fails in one line before any heavy work when there are no weights
    window = intensity_window(list(sets.reference["path"]), cfg.window_percentiles, cfg.seed)
    positions = slice_positions(sets.grid, cfg.slice_stride)
    compared = sets.compared()
    ids = {k: (_ids(v) if k != "synthetic" else list(v["sample"])) for k, v in compared.items()}
    slices = {k: extract_slice_features(list(v["path"]), ids[k], net, window, positions, batch_size=cfg.batch_size,
                                        device=device, progress=progress, desc=f"{net.metric} features: {k}")
              for k, v in compared.items()}
    volumes_3d = None
    if cfg.medicalnet_path:
        mn = load_medicalnet(cfg.medicalnet_path)
        volumes_3d = {k: volume_features(mn, list(v["path"]), device, progress, f"3D features: {k}")
                      for k, v in compared.items()}
    return Features(network=net, window=window, positions=positions, slices=slices,
                    volumes={k: f.volume_features() for k, f in slices.items()}, volumes_3d=volumes_3d)


def add_features(features: Features, name: str, source: ladder.VolumeSource, cfg: EvaluateConfig,
                 device: str | torch.device = "cpu", progress: bool = True) -> SliceFeatures:
    """Slice features of `source` under `name`, through the same network, window and slice positions as the
    evaluation's other sets."""
    f = extract_slice_features(source.keys, source.ids, features.network, features.window, features.positions,
                               batch_size=cfg.batch_size, device=device, progress=progress,
                               desc=f"{features.network.metric} features: {name}", load=source.load)
    features.slices[name] = f
    features.volumes[name] = f.volume_features()
    return f

# --------------------------------------------------------------------------------------------------------------
# Distribution metrics
# --------------------------------------------------------------------------------------------------------------

LADDER_ONLY = ("reconstruction", "vae_prior")  # the autoencoder's rungs (`ladder_rungs`)


def compared_sources(sets: EvaluationSets, rungs: dict[str, ladder.VolumeSource] | None = None
                     ) -> dict[str, ladder.VolumeSource]:
    """Each comparison of ``groups`` (synthetic, real_baseline, then any ladder rung) -> the volumes it compares
    with the reference set."""
    out = {"synthetic": _source(sets.synthetic, list(sets.synthetic["sample"])),
           "real_baseline": _source(sets.heldout, _ids(sets.heldout))}
    return out | dict(rungs or {})


def _source(rows: pd.DataFrame, ids: list[str]) -> ladder.VolumeSource:
    return ladder.VolumeSource(list(rows["path"]), ids, rows["label"].to_numpy(int), load_prepared_volume)


def distribution_metrics(sets: EvaluationSets, features: Features, classes: list[str], cfg: EvaluateConfig,
                         progress: bool = True, sources: dict[str, ladder.VolumeSource] | None = None) -> dict:
    """``groups`` of metrics.json: per group (overall, each class), each compared set (synthetic, held-out real,
    and the ladder's rungs when `sources` names them; `compared_sources`) against the reference set: per-slice
    FID, 3D FID, KID, PRDC, and the set's MS-SSIM diversity. An unconditional set (no labels) is compared overall
    only."""
    net = features.network
    suffix = "" if net.metric == "fid" else "_random_features"
    sources = sources or compared_sources(sets)
    feats, vfeats, feats3d = features.slices, features.volumes, features.volumes_3d
    groups: dict = {}
    for group, label in [("overall", None), *[(name, c) for c, name in enumerate(classes)]]:
        i_ref = (np.arange(len(sets.reference)) if label is None
                 else np.flatnonzero(sets.reference["label"].to_numpy() == label))
        groups[group] = {}
        for comparison, src in sources.items():
            if label is not None and src.labels is None:
                groups[group][comparison] = {"skipped": "an unconditional set: compared overall only"}
                continue
            idx = np.arange(len(src)) if label is None else np.flatnonzero(src.labels == label)
            res: dict = {"n_reference": len(i_ref), "n_compared": len(idx)}
            if len(i_ref) < 2 or len(idx) < 2:
                res["skipped"] = f"needs at least 2 volumes per set, have {len(i_ref)} and {len(idx)}"
                groups[group][comparison] = res
                continue
            res[net.metric] = per_slice_fid(feats["reference"], i_ref, feats[comparison], idx, net.metric)
            res["fid_3d"] = ({"value": frechet_distance(feats3d["reference"][i_ref], feats3d[comparison][idx]),
                              "n_a": len(i_ref), "n_b": len(idx), "network": "MedicalNet ResNet-10"}
                             if feats3d and comparison in feats3d
                             else {"skipped": "no MedicalNet weights (evaluate.medicalnet_path)" if not feats3d
                                   else "not computed for the ladder's rungs"})
            res["kid" + suffix] = diversity.kid(vfeats["reference"][i_ref], vfeats[comparison][idx],
                                                cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)
            res["prdc" + suffix] = diversity.prdc(vfeats["reference"][i_ref], vfeats[comparison][idx], cfg.prdc_k)
            if label is not None and comparison in LADDER_ONLY:
                res["ms_ssim"] = {"skipped": "the ladder's rungs: diversity overall only"}
            else:
                res["ms_ssim"] = diversity.ms_ssim_diversity([src.keys[i] for i in idx], cfg.ms_ssim_pairs,
                                                             cfg.seed, progress, f"MS-SSIM pairs: {group}, "
                                                             f"{comparison}", load=src.load)
            groups[group][comparison] = res
    return groups


# --------------------------------------------------------------------------------------------------------------
# The realism ladder
# --------------------------------------------------------------------------------------------------------------

def ladder_rungs(sets: EvaluationSets, vae: ladder.Autoencoder, cfg: EvaluateConfig) -> dict[str, ladder.VolumeSource]:
    """The autoencoder's rungs: reconstructions of the held-out volumes, and as many decoded prior latents."""
    held = sets.heldout
    return {"reconstruction": ladder.reconstruction_source(vae, list(held["path"]), _ids(held), held["label"]),
            "vae_prior": ladder.prior_source(vae, len(held), cfg.seed)}


def _voxel_mm(path: str) -> float:
    """The geometric mean voxel size (mm) of a prepared volume: σ in voxels times this is σ in mm."""
    return float(np.prod(nib.load(path).header.get_zooms()[:3]) ** (1 / 3))


def realism_ladder(sets: EvaluationSets, features: Features, groups: dict, sources: dict[str, ladder.VolumeSource],
                   cfg: EvaluateConfig, latent_info: dict | None, device: str | torch.device = "cpu",
                   progress: bool = True) -> dict:
    """``ladder`` of metrics.json (`neuroldm.evaluate.ladder`): the blur scale and each rung's equivalent blur,
    the sharpness ratios, the latent dispersion. The rungs' FID, KID, PRDC and MS-SSIM are in ``groups``."""
    metric = features.network.metric
    held = sets.heldout
    i_ref = np.arange(len(sets.reference))
    mm = _voxel_mm(held["path"].iloc[0])
    blur: dict = {"sigmas_voxels": [], "sigmas_mm": [], "fid": [], "fid_2_5d": [], "n_a": len(i_ref),
                  "n_b": len(held), "set": "held-out real volumes blurred by an isotropic Gaussian"}
    for sigma in cfg.blur_sigmas:
        src = ladder.blurred_source(list(held["path"]), _ids(held), held["label"], sigma)
        f = add_features(features, f"blur_{sigma:g}", src, cfg, device, progress)
        r = per_slice_fid(features.slices["reference"], i_ref, f, np.arange(len(src)), metric)
        blur["sigmas_voxels"].append(float(sigma))
        blur["sigmas_mm"].append(float(sigma) * mm)
        blur["fid"].append(r["mean"])
        blur["fid_2_5d"].append(r["fid_2_5d"])
    overall = groups["overall"]
    baseline = overall["real_baseline"].get(metric, {})
    equivalent = {}
    for rung in ("reconstruction", "synthetic", "vae_prior"):
        r = overall.get(rung, {}).get(metric)
        if r and baseline:
            e = ladder.equivalent_blur(blur["sigmas_voxels"], blur["fid"], baseline["mean"], r["mean"])
            equivalent[rung] = e | {"sigma_mm": e["sigma_voxels"] * mm, "fid": r["mean"]}
    ref_sum = None
    for p in sets.reference["path"]:
        v = load_prepared_volume(p).astype(np.float64)
        ref_sum = v if ref_sum is None else ref_sum + v
    mask = ladder.brain_mask(ref_sum / len(sets.reference), features.window)
    per_volume = {name: np.array([ladder.gradient_magnitude(src.load(k), mask) for k in src.keys])
                  for name, src in sources.items()}
    real = per_volume["real_baseline"]
    sharpness = {"measure": "mean gradient magnitude inside the brain mask, relative to held-out real volumes",
                 "mask_voxels": int(mask.sum()), "real_mean": float(real.mean()), "n_real": len(real)}
    sharpness |= {name: ladder.sharpness_ratio(v, real, cfg.seed).to_dict()
                  for name, v in per_volume.items() if name != "real_baseline"}
    stems = list(sets.audited["sample"])
    latent = (ladder.latent_dispersion([SampleDir(sets.samples.folder).sidecar(s) for s in stems], latent_info)
              if latent_info is not None else {"skipped": "no autoencoder run given"})
    return {"rungs": [r for r in ladder.RUNGS if r in sources], "voxel_mm": mm, "blur": blur,
            "equivalent_blur": equivalent, "sharpness": sharpness, "latent": latent}


def ladder_figure(sets: EvaluationSets, sources: dict[str, ladder.VolumeSource], window: tuple[float, float],
                  path: Path) -> Path:
    """The same slices of one held-out volume, its reconstruction, a synthetic volume of its class and a prior
    volume, in one intensity window; the second row zooms on the hippocampi (the held-out volume's ROI, else the
    grid's centre)."""
    held = sets.heldout
    i = int(np.flatnonzero(held["label"].to_numpy() == held["label"].max())[0])
    label = int(held["label"].iloc[i])
    picks = {"real_baseline": i, "reconstruction": i, "vae_prior": 0}
    syn = sources["synthetic"]
    same = np.flatnonzero(syn.labels == label)
    picks["synthetic"] = int(same[0]) if len(same) else 0
    volumes = {name: sources[name].load(sources[name].keys[k]) for name, k in picks.items() if name in sources}
    shape = np.array(next(iter(volumes.values())).shape)
    centre = shape // 2
    roi = held["roi_path"].iloc[i] if "roi_path" in held.columns else ""
    if isinstance(roi, str) and roi and Path(roi).exists():
        m = np.asarray(nib.load(roi).dataobj) > 0
        if m.any():
            centre = np.round(np.argwhere(m).mean(0)).astype(int)
    half = np.maximum(shape // 6, 4)
    lo_, hi_ = np.clip(centre - half, 0, shape), np.clip(centre + half, 0, shape)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo_, hi_, strict=True))
    names = {"real_baseline": "held-out real", "reconstruction": "reconstruction", "synthetic": "synthetic",
             "vae_prior": "VAE prior"}
    kw = {"vmin": window[0], "vmax": window[1]}
    order = [r for r in ladder.RUNGS if r in volumes]
    rows = [("whole volume", [(names[r], volumes[r], kw) for r in order]),
            ("hippocampi (zoom)", [(names[r], volumes[r][crop], kw) for r in order])]
    return comparison_figure(rows, path, title="Realism ladder: one held-out volume, its reconstruction, a synthetic "
                                               "volume of its class, a prior sample (one window)")


# --------------------------------------------------------------------------------------------------------------
# Memorization
# --------------------------------------------------------------------------------------------------------------

ClosestPair = tuple[str, str, str, str, float]  # synthetic id, its path, nearest training id, its path, distance


def memorization_audits(sets: EvaluationSets, cfg: EvaluateConfig, vae_run: str | Path | None = None,
                        device: str | torch.device = "cpu", progress: bool = True) -> tuple[dict, list[ClosestPair]]:
    """``memorization`` of metrics.json: the audited synthetic volumes' nearest training volumes in image space
    (and in latent space with `vae_run`), against those of held-out real volumes the generator never saw; and the
    ``evaluate.closest_pairs`` closest synthetic/training pairs in image space, closest first."""
    syn_all, train = sets.audited, sets.training
    unseen = sets.heldout[~sets.heldout["subject"].isin(set(sets.samples.train_subjects))].reset_index(drop=True)
    train_ids = _ids(train)
    q_syn = np.stack([memorization.standardised_vector(load_prepared_volume(p), cfg.memorization_downsample)
                      for p in syn_all["path"]])
    q_held = np.stack([memorization.standardised_vector(load_prepared_volume(p), cfg.memorization_downsample)
                       for p in unseen["path"]]) if len(unseen) else np.zeros((0, q_syn.shape[1]), np.float32)
    d, nn_idx = memorization.nearest_training(np.concatenate([q_syn, q_held]), list(train["path"]),
                                              cfg.memorization_downsample, progress=progress)
    syn_ids = list(syn_all["sample"])
    mem = {"training_set": sets.training_set, "n_training": len(train),
           "image": memorization.audit(d[:len(q_syn)], nn_idx[:len(q_syn)], d[len(q_syn):], syn_ids, train_ids,
                                       cfg.memorization_percentile, cfg.memorization_copy_ratio)
           | {"space": f"image, 1 - correlation after {cfg.memorization_downsample}x average pooling"}}
    mem["latent"] = (_latent_audit(vae_run, train_ids, _ids(unseen), list(syn_all["path"]), syn_ids,
                                   cfg.memorization_percentile, cfg.memorization_copy_ratio, device)
                     if vae_run is not None else {"skipped": "no autoencoder run given"})
    order = np.argsort(d[:len(q_syn)])[:cfg.closest_pairs]
    pairs = [(syn_ids[i], syn_all["path"].iloc[i], train_ids[nn_idx[i]], train["path"].iloc[nn_idx[i]], float(d[i]))
             for i in order]
    return mem, pairs


def _latent_audit(vae_run: str | Path, train_ids: list[str], heldout_ids: list[str], synthetic_paths: list[str],
                  synthetic_ids: list[str], percentile: float, copy_ratio: float,
                  device: str | torch.device) -> dict:
    """Nearest training volume in latent space (posterior means, Euclidean), the synthetic volumes encoded here."""
    latents = load_latents(vae_run)
    by_id = dict(zip(_ids(latents.index), latents.mu, strict=True))
    missing = [i for i in train_ids + heldout_ids if i not in by_id]
    if missing:
        raise InputError(RunDir(vae_run).latents, f"no latents for {len(missing)} real volume(s), e.g. "
                                                    f"{missing[0]}; run `neuroldm encode` on this cohort")
    model, vae_cfg, _ = load_vae(vae_run, device)
    with torch.no_grad():
        syn = torch.stack([encode_volume(model, torch.from_numpy(load_prepared_volume(p))[None, None].to(device),
                                         vae_cfg)[0][0].cpu() for p in synthetic_paths])
    train = torch.stack([by_id[i] for i in train_ids]).numpy()
    d_syn, nn_syn = memorization.nearest_euclidean(syn.numpy(), train)
    d_held, _ = memorization.nearest_euclidean(torch.stack([by_id[i] for i in heldout_ids]).numpy(), train)
    return memorization.audit(d_syn, nn_syn, d_held, synthetic_ids, train_ids, percentile, copy_ratio) | {
        "space": "latent posterior mean, Euclidean"}


# --------------------------------------------------------------------------------------------------------------
# Class difference and fidelity
# --------------------------------------------------------------------------------------------------------------

def class_difference_agreement(sets: EvaluationSets, classes: list[str], progress: bool = True) -> dict:
    """``class_difference`` of metrics.json: the class-mean difference maps of the generator's training volumes,
    the held-out and the audited synthetic volumes compared (`neuroldm.evaluate.class_difference`)."""
    return class_difference((list(sets.training["path"]), list(sets.training["label"])),
                            (list(sets.heldout["path"]), list(sets.heldout["label"])),
                            (list(sets.audited["path"]), list(sets.audited["label"])), classes,
                            baseline=(None if sets.baseline is None
                                      else (list(sets.baseline["path"]), list(sets.baseline["label"]))),
                            progress=progress) | {"training_set": sets.training_set,
                                                  "baseline_set": sets.baseline_set}


def synthetic_fidelity(sets: EvaluationSets, classes: list[str], predict: Predict | None) -> dict:
    """``fidelity`` of metrics.json: the share of audited synthetic volumes a real-trained classifier labels as
    requested (`conditional_fidelity`), or why it was skipped."""
    if predict is None:
        return {"skipped": "no classifier given"}
    return conditional_fidelity(predict, list(sets.audited["path"]), list(sets.audited["label"]), classes)


# --------------------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------------------

def _fid_figure(groups: dict, key: str, group: str, path: Path) -> Path:
    fig = Figure(figsize=(13, 3.4))  # matplotlib's object API: no pyplot state, no display backend
    axes = fig.subplots(1, 3, sharey=True)
    for ax, axis in zip(axes, AXES, strict=True):
        for comparison, style in (("synthetic", "-"), ("real_baseline", "--")):
            res = groups[group][comparison].get(key)
            if res and "axes" in res:
                a = res["axes"][axis]
                ax.plot(a["positions"], a["fid"], style, label=f"{comparison} (N {res['n_b']} vs {res['n_a']}; "
                                                                f"mean {a['mean']:.1f})")
        ax.set_title(axis)
        ax.set_xlabel("slice position (voxel)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel(key)
    fig.suptitle(f"{key} per slice position, {group}: synthetic and held-out real vs reference real", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    return path


def write_figures(groups: dict, metric: str, closest: list[ClosestPair], out: EvaluationDir,
                  cfg: EvaluateConfig) -> list[str]:
    """FID against slice position per group, and the closest synthetic/training pairs; returns the file names."""
    if not cfg.figures:
        return []
    figures = []
    for group in groups:
        if metric in groups[group]["synthetic"] or metric in groups[group]["real_baseline"]:
            figures.append(_fid_figure(groups, metric, group, out.slice_fid_figure(group)).name)
    if cfg.closest_pairs > 0:
        figures.append(memorization.closest_pairs_figure(closest, out.closest_pairs_figure).name)
    return figures


# --------------------------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------------------------

def evaluate(real: str | Path, synthetic: str | Path, out: str | Path, cfg: EvaluateConfig, classes: list[str], *,
             reference_split: str = "train", heldout_split: str = "test", predict: Predict | None = None,
             vae_run: str | Path | None = None, latent_memorization: bool = True, device: str | torch.device = "cpu",
             progress: bool = True) -> dict:
    """Evaluate a sample folder against a prepared cohort; write ``OUT/metrics.json`` and figures; return the dict.

    `vae_run`: the run whose autoencoder made the samples; with it (and ``evaluate.ladder``) the realism ladder's
    reconstruction and prior rungs are compared too, and (with `latent_memorization`) the memorization audit also
    runs in its latent space.

    ``metrics.json``:

    - ``version``, ``settings`` (the ``evaluate`` config), ``seconds``;
    - ``real``: ``prepared``, ``reference_split``, ``heldout_split``, ``n_reference`` / ``n_heldout`` (per class and
      ``total``); ``synthetic``: ``folder``, ``n_available``, ``n_used`` (after ``match_n``), ``n_audited``;
    - ``feature_network``: ``name``, ``metric`` (``fid``, or ``fid_random_features`` for the seeded stand-in),
      ``dim``, ``input_size``, ``file``, ``sha1``; ``intensity_window`` ``[lo, hi]``; ``slice_positions`` per axis;
    - ``groups``: ``{"overall" | <class>: {"synthetic" | "real_baseline" | "reconstruction" | "vae_prior": {...}}}``,
      each comparing a set (synthetic, held-out real, and with `vae_run` the ladder's rungs: the autoencoder's
      reconstructions of the held-out volumes and decoded prior latents, overall only) with the reference real
      volumes of that group:
        - ``<metric>`` (``fid`` / ``fid_random_features``): per-slice FID — ``n_a`` (reference volumes), ``n_b``,
          ``axes.<sagittal|coronal|axial>`` = ``positions``, ``fid`` (one per position), ``mean``, ``pooled``,
          ``n_slices_a``, ``n_slices_b``; ``mean`` over all positions; ``fid_2_5d`` (mean of the pooled FIDs);
        - ``fid_3d``: ``{"value", "n_a", "n_b", "network"}`` with MedicalNet weights, else ``{"skipped"}``;
        - ``kid`` (``kid_random_features``): the mean over random subsets as an interval (below) with ``n``
          subsets and a normal 95 % interval, plus ``std``, ``subset_size``, ``n_a``, ``n_b``;
        - ``prdc`` (``prdc_random_features``): ``precision``, ``recall``, ``density``, ``coverage``, ``k``, Ns
          (features: each volume's slice features averaged over positions and axes);
        - ``ms_ssim``: within-set diversity, the mean over random pairs as an interval (``n`` pairs, normal 95 %
          interval), plus ``std``, ``n_volumes``;
    - ``ladder``: `realism_ladder` — ``blur`` (FID of blurred held-out volumes per σ), ``equivalent_blur`` per
      rung (``sigma_voxels``, ``sigma_mm``, ``censored``), ``sharpness`` per rung (an interval, percentile
      bootstrap), ``latent`` (generated vs real latent std per channel and overall), or ``{"skipped"}``;
    - ``memorization``: ``image`` (and ``latent`` with `vae_run`): see `memorization.audit` (``flagged_share`` is
      an interval, Wilson); ``training_set`` says whether the training volumes are the generator's own
      (``samples.json`` ``train_subjects``);
    - ``class_difference``: `neuroldm.evaluate.class_difference.class_difference` of the generator's training
      volumes (as for memorization), the held-out and the audited synthetic volumes, plus ``training_set``
      (``corr_heldout`` is an interval, jackknife on Fisher's z), with the real ``val`` subjects as the baseline of
      its ``verdict`` (``excess_training_agreement``, an interval, jackknife) and ``baseline_set``;
    - ``fidelity``: `conditional_fidelity` with a classifier (the accuracy as an interval, Wilson, plus
      ``mean_p_requested`` and ``per_class``), else ``{"skipped"}``;
    - ``figures``: written file names.

    Every interval is `neuroldm.metrics.interval.Interval.to_dict()`: ``{"value", "low", "high", "n", "method",
    "level"}`` (NaN bounds where they cannot be computed).
    """
    t0 = time.time()
    out = EvaluationDir(out)
    sets = select_sets(real, synthetic, cfg, reference_split, heldout_split)
    vae = ladder.Autoencoder(vae_run, device) if vae_run is not None and cfg.ladder else None
    features = extract_features(sets, cfg, device, progress)
    rungs = ladder_rungs(sets, vae, cfg) if vae is not None else {}
    for name, src in rungs.items():
        add_features(features, name, src, cfg, device, progress)
    sources = compared_sources(sets, rungs)
    groups = distribution_metrics(sets, features, classes, cfg, progress, sources)
    realism = (realism_ladder(sets, features, groups, sources, cfg, RunDir(vae_run).latents.read_info(), device,
                              progress)
               if vae is not None else {"skipped": "no autoencoder run given" if cfg.ladder
                                        else "evaluate.ladder is off"})
    mem, closest = memorization_audits(sets, cfg, vae_run if latent_memorization else None, device, progress)
    figures = write_figures(groups, features.network.metric, closest, out, cfg)
    if vae is not None and cfg.figures:
        figures.append(ladder_figure(sets, sources, features.window, out.ladder_figure).name)
    class_diff = class_difference_agreement(sets, classes, progress)
    fidelity = synthetic_fidelity(sets, classes, predict)
    metrics = {
        "version": __version__, "settings": cfg.model_dump(mode="json"),
        "real": {"prepared": str(Path(real).resolve()), "reference_split": reference_split,
                 "heldout_split": heldout_split, "n_reference": _counts(sets.reference, classes),
                 "n_heldout": _counts(sets.heldout, classes)},
        "synthetic": {"folder": str(sets.samples.folder.resolve()), "n_available": _counts(sets.samples.rows, classes),
                      "n_used": _counts(sets.synthetic, classes), "n_audited": _counts(sets.audited, classes)},
        "feature_network": features.network.describe(), "intensity_window": list(features.window),
        "grid": list(sets.grid),
        "slice_positions": {a: len(p) for a, p in zip(AXES, features.positions, strict=True)},
        "groups": groups, "ladder": realism, "memorization": mem, "class_difference": class_diff, "fidelity": fidelity,
        "figures": figures,
        "seconds": round(time.time() - t0, 1),
    }
    write_json_atomic(out.metrics, metrics)
    return metrics
