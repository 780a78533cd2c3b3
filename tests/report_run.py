"""A small fake run directory in the formats the stages write, made with their own writers where that is cheap
(the report tests use it; the numbers they look for in the page are module constants here)."""

from types import SimpleNamespace

import numpy as np
import pandas as pd

from neuroldm.classify.grid import pooled_comparison, summary_table
from neuroldm.config import DiffusionConfig, load_config
from neuroldm.data.manifest import MANIFEST_COLUMNS, write_manifest
from neuroldm.diffusion.weights import export_dit, save_train_subjects
from neuroldm.evaluate import diversity, ladder, memorization
from neuroldm.evaluate.class_difference import class_difference
from neuroldm.evaluate.fidelity import conditional_fidelity
from neuroldm.evaluate.run import _fid_figure
from neuroldm.evaluate.slice_fid import AXES, per_slice_fid
from neuroldm.evaluate.stats import mean_summary
from neuroldm.io import ALIGNED_ANAT, save_nifti_atomic, write_json_atomic
from neuroldm.metrics.classification import METRICS, classification_report
from neuroldm.metrics.interval import BOOTSTRAP, NORMAL, WILSON, Interval
from neuroldm.runs import RunDir
from neuroldm.samples import SAMPLE_COLUMNS, write_sample_manifest
from neuroldm.viz.slices import comparison_figure

GRID = (16, 20, 16)
CLASSES = ["HC", "TLE"]
RUN_METRICS = {"wall_seconds": 5321.0, "vae.val.ssim": 0.8123, "classifier.real.auc": 0.7791,
               "classifier.real.auc.low": 0.6112, "classifier.real.auc.high": 0.9023, "classifier.real.auc.n": 24,
               "fid.synthetic.overall": 41.73, "fid.real_baseline.overall": 18.37, "memorization.flagged": 0.0}
RECON = {"psnr": 27.46, "ssim": 0.8123, "ms_ssim": 0.9341, "l1": 0.0712}
ENRICHMENT = Interval(3.214, 2.052, 4.377, 6, BOOTSTRAP)
CF_VALIDITY = Interval(0.9167, 0.7417, 0.9768, 24, WILSON)
CF_SSIM = Interval(0.9537, 0.9481, 0.9593, 24, NORMAL)


def _png(path, seed=0):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.imshow(np.random.default_rng(seed).random((8, 8)))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=50)
    plt.close(fig)


def _volume(seed: int, label: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, y, z = np.indices(GRID) - (np.array(GRID) / 2)[:, None, None, None]
    brain = ((x / 7) ** 2 + (y / 9) ** 2 + (z / 7) ** 2 < 1).astype(np.float32) * (1.0 + 0.3 * label)
    return brain + rng.normal(0, 0.1, GRID).astype(np.float32)


def _engine_log(path, val_columns, steps=20, val_every=5, seed=0):
    """An engine metrics.csv: every row has step/seconds/lr/loss; validation columns only every `val_every`."""
    rng = np.random.default_rng(seed)
    rows = []
    for step in range(1, steps + 1):
        row = {"step": step, "seconds": 0.5 * step, "lr": 1e-4, "loss": 1.0 / step + 0.01 * rng.random()}
        if step % val_every == 0:
            row |= {c: 0.5 + 0.02 * step for c in val_columns}
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    write_json_atomic(path.parent / "train_summary.json",
                      {"steps": steps, "seconds": 10.0, "stopped_early": False, "early_stopped": False,
                       "best": 0.9, "monitor": val_columns[0], "last_terms": {}, "last_validation": {},
                       "world_size": 1})


def _prepared(run):
    folder = run / "prepared"
    rows = []
    for k in range(8):
        label, split = k % 2, ("train", "train", "train", "train", "val", "val", "test", "test")[k]
        subject = f"sub-{k + 1:02d}"
        save_nifti_atomic(_volume(k, label), np.diag([4.0, 4.0, 4.0, 1.0]), folder / "volumes" / f"{subject}.nii",
                          what="test volume", frame=ALIGNED_ANAT)
        rows.append({"subject": subject, "session": "", "label": label, "label_name": CLASSES[label],
                     "raw_label": CLASSES[label], "split": split, "fold": 0 if split != "test" else -1,
                     "path": f"volumes/{subject}.nii", "roi_path": "", "shape": "x".join(map(str, GRID)),
                     "spacing": "4x4x4", "source": f"/raw/{subject}.nii.gz", "source_sha256": "0" * 64,
                     "prep_hash": "p", "data_sha256": f"{k}" * 64, "cropped_vox": 0, "status": "ok", "reason": ""})
    write_manifest(pd.DataFrame(rows, columns=MANIFEST_COLUMNS), folder / "manifest.csv")
    return folder


def _samples(run):
    folder = run / "samples"
    rows = []
    for k in range(4):
        label = k % 2
        sample = f"{CLASSES[label]}_{k:04d}"
        save_nifti_atomic(_volume(100 + k, label), np.diag([4.0, 4.0, 4.0, 1.0]), folder / f"{sample}.nii.gz",
                          what="test volume", frame=ALIGNED_ANAT)
        rows.append({"sample": sample, "path": f"{sample}.nii.gz", "label": label, "label_name": CLASSES[label],
                     "seed": k, "sampler": "dpm++", "steps": 25, "guidance": 1.0})
    write_sample_manifest(folder, pd.DataFrame(rows, columns=SAMPLE_COLUMNS),
                          {"train_subjects": ["sub-01", "sub-02", "sub-03", "sub-04"], "classes": CLASSES,
                           "grid": list(GRID)})
    return folder


def LADDER(groups):
    """The evaluation's ``ladder`` for the fake run: a blur scale, each rung's equivalent blur, sharpness, latents."""
    key = "fid_random_features"
    base = groups["overall"]["real_baseline"][key]["mean"]
    sigmas, fids = [0.5, 1.0, 2.0], [base + 1.0, base + 4.0, base + 9.0]
    equivalent = {r: ladder.equivalent_blur(sigmas, fids, base, groups["overall"][r][key]["mean"])
                  for r in ("reconstruction", "synthetic", "vae_prior")}
    rng = np.random.default_rng(3)
    real = rng.uniform(0.9, 1.1, 6)
    return {"rungs": list(ladder.RUNGS), "voxel_mm": 2.0,
            "blur": {"sigmas_voxels": sigmas, "sigmas_mm": [2 * s for s in sigmas], "fid": fids,
                     "fid_2_5d": fids, "n_a": 6, "n_b": 6, "set": "held-out real volumes blurred"},
            "equivalent_blur": {r: e | {"sigma_mm": 2 * e["sigma_voxels"], "fid": groups["overall"][r][key]["mean"]}
                                for r, e in equivalent.items()},
            "sharpness": {"measure": "mean gradient magnitude", "mask_voxels": 100, "real_mean": 1.0, "n_real": 6,
                          "reconstruction": ladder.sharpness_ratio(real * 0.8, real, n_boot=50).to_dict(),
                          "synthetic": ladder.sharpness_ratio(real * 0.7, real, n_boot=50).to_dict(),
                          "vae_prior": ladder.sharpness_ratio(real * 1.3, real, n_boot=50).to_dict()},
            "latent": {"n_generated": 4, "n_real": 4, "units": "diffusion-model units", "real": "posterior means",
                       "channels": [{"channel": 0, "generated_mean": 0.1, "generated_std": 0.8, "real_mean": 0.0,
                                     "real_std": 1.0, "std_ratio": 0.8}], "std_ratio": 0.8}}


def _evaluation(run, prepared, samples):
    out = run / "evaluation"
    rng = np.random.default_rng(0)
    positions = [np.array([4, 8, 12]), np.array([5, 10, 15]), np.array([4, 8, 12])]

    def features(n, shift):
        return SimpleNamespace(positions=positions, features=[rng.normal(shift, 1, (n, 3, 4)) for _ in AXES])

    ref, syn, held, recon, prior = (features(6, 0.0), features(6, 0.8), features(6, 0.1), features(6, 0.5),
                                    features(6, 2.0))
    groups = {}
    for group in ("overall", *CLASSES):
        groups[group] = {}
        for comparison, other in (("synthetic", syn), ("real_baseline", held), ("reconstruction", recon),
                                  ("vae_prior", prior)):
            if comparison == "vae_prior" and group != "overall":
                groups[group][comparison] = {"skipped": "an unconditional set: compared overall only"}
                continue
            vf_ref, vf_other = rng.normal(0, 1, (6, 4)), rng.normal(0.3, 1, (6, 4))
            groups[group][comparison] = {
                "n_reference": 6, "n_compared": 6,
                "fid_random_features": per_slice_fid(ref, range(6), other, range(6), "fid_random_features"),
                "fid_3d": {"skipped": "no MedicalNet weights (evaluate.medicalnet_path)"},
                "kid_random_features": diversity.kid(vf_ref, vf_other, subsets=5, subset_size=4, seed=0),
                "prdc_random_features": diversity.prdc(vf_ref, vf_other, k=2),
                "ms_ssim": mean_summary(rng.uniform(0.6, 0.8, 10)) | {"n_volumes": 6}}
    d_syn, d_held = np.array([0.02, 0.05, 0.07, 0.09]), np.array([0.03, 0.06, 0.08, 0.1])
    image = memorization.audit(d_syn, np.array([0, 1, 0, 2]), d_held, ["HC_0000", "TLE_0001", "HC_0002", "TLE_0003"],
                               ["sub-01", "sub-02", "sub-03", "sub-04"], percentile=5.0)
    mem = {"training_set": "generator's training subjects (samples.json)", "n_training": 4,
           "image": image | {"space": "image, 1 - correlation after 4x average pooling"},
           "latent": {"skipped": "no autoencoder run given"}}
    syn_paths = sorted(str(p) for p in samples.glob("*.nii.gz"))
    labels = [CLASSES.index(p.rsplit("/", 1)[1].split("_")[0]) for p in syn_paths]
    import torch

    fidelity = conditional_fidelity(lambda x: torch.tensor([[0.3, 0.7]] * len(x)), syn_paths, labels, CLASSES)
    figures = [_fid_figure(groups, "fid_random_features", g, out / f"slice_fid_{g}.png").name for g in groups]
    train_paths = sorted(str(p) for p in (prepared / "volumes").glob("*.nii"))
    held_out = (train_paths[4:], [0, 1, 0, 1])  # validation and test subjects: two per class for a jackknife CI
    class_diff = class_difference((train_paths[:4], [0, 1, 0, 1]), held_out, (syn_paths, labels), CLASSES)
    class_diff["training_set"] = "generator's training subjects (samples.json)"
    figures.append(memorization.closest_pairs_figure([("HC_0000", syn_paths[0], "sub-01", train_paths[0], 0.02)],
                                                     out / "closest_pairs.png").name)
    write_json_atomic(out / "metrics.json", {
        "version": "0.1.0", "settings": {}, "seconds": 12.0,
        "real": {"prepared": str(prepared), "reference_split": "train", "heldout_split": "test",
                 "n_reference": {"HC": 3, "TLE": 3, "total": 6}, "n_heldout": {"HC": 3, "TLE": 3, "total": 6}},
        "synthetic": {"folder": str(samples), "n_available": {"HC": 2, "TLE": 2, "total": 4},
                      "n_used": {"HC": 3, "TLE": 3, "total": 6}, "n_audited": {"HC": 2, "TLE": 2, "total": 4}},
        "feature_network": {"name": "random seeded CNN", "metric": "fid_random_features", "dim": 4},
        "intensity_window": [0.0, 1.3], "grid": list(GRID), "slice_positions": {a: 3 for a in AXES},
        "groups": groups, "ladder": LADDER(groups), "memorization": mem, "class_difference": class_diff,
        "fidelity": fidelity, "figures": figures})
    return groups


def _classifier_grid(run):
    rng = np.random.default_rng(1)
    runs, preds = [], []
    subjects = [f"sub-{k:02d}" for k in range(20)]
    labels = np.arange(20) % 2
    for regime in ("real", "synthetic"):
        for seed in (0, 1):
            scores = np.clip(labels * (0.35 if regime == "real" else 0.2) + rng.uniform(0, 0.65, 20), 0, 1)
            report = classification_report(labels, scores, 0.5, n_bootstrap=50)
            row = {"regime": regime, "seed": seed, "fold": -1, "n_train": 8, "n_train_real": 8 * (regime == "real"),
                   "n_train_synthetic": 8 * (regime != "real"), "selected_step": 10, "val_auc": 0.7, "n_test": 20}
            for name in METRICS:
                ci = Interval.from_dict(report[name])
                row |= {name: ci.value, f"{name}_low": ci.low, f"{name}_high": ci.high}
            runs.append(row)
            preds.append(pd.DataFrame({"split": "test", "subject": subjects, "session": "", "label": labels,
                                       "score": scores, "regime": regime, "seed": seed, "fold": -1}))
    summary = summary_table(pd.DataFrame(runs), ["real", "synthetic"])
    pooled = pooled_comparison(pd.concat(preds, ignore_index=True), "test")
    out = {"runs": 4, "regimes": ["real", "synthetic"], "skipped_regimes": [], "folds": [None], "seeds": [0, 1],
           "summary": summary.to_dict(orient="records"), "pooled": pooled.to_dict(orient="records")}
    write_json_atomic(run / "classify-grid" / "summary.json", out)
    return out


def _classifier(run):
    labels = np.arange(20) % 2
    scores = np.clip(labels * 0.4 + np.random.default_rng(2).uniform(0, 0.6, 20), 0, 1)
    result = {"regime": "real", "fold": None, "seed": 0, "arch": "cnn", "classes": CLASSES, "n_train": 4,
              "n_train_real": 4, "n_train_synthetic": 0, "train_class_counts": [2, 2], "selected_step": 10,
              "val_auc": 0.75, "test": classification_report(labels, scores, 0.5, n_bootstrap=50),
              "train_summary": {}, "samples": None}
    write_json_atomic(run / "classifier" / "result.json", result)
    _engine_log(run / "classifier" / "metrics.csv", ["val_auc", "val_loss", "val_accuracy", "val_selection"])
    return result


def _saliency(run):
    out = run / "saliency"
    methods = {}
    for method in ("integrated_gradients", "saliency"):
        methods[method] = {"seconds_per_volume": 1.25,
                           "enrichment": {"all": ENRICHMENT.to_dict(),
                                          "HC": Interval(2.5, 1.9, 3.1, 3, BOOTSTRAP).to_dict(),
                                          "TLE": Interval(3.9, 2.9, 4.8, 3, BOOTSTRAP).to_dict()}}
        for k, name in enumerate(("mean_HC", "mean_TLE", "sub-01", "sub-02", "sub-03")):
            _png(out / method / "figures" / f"{name}.png", seed=k)
    methods["integrated_gradients"]["ig_max_abs_delta"] = 0.0123
    write_json_atomic(out / "summary.json", {"model": "classifier/model.safetensors", "model_sha256": "0" * 64,
                                             "split": "test", "n_volumes": 6, "grid": list(GRID),
                                             "baseline": "background", "target": "label", "top_fraction": 0.01,
                                             "peak_rss_gb": 1.5, "methods": methods})


def _counterfactual(run):
    out = run / "counterfactual"

    def measures(scale: float) -> dict:
        return {"validity": CF_VALIDITY.to_dict(), "identity": Interval(1.0, 0.86, 1.0, 24, WILSON).to_dict(),
                "roi_enrichment": Interval(10.3 * scale, 8.1, 12.6, 24, BOOTSTRAP).to_dict(),
                "ssim_outside_roi": CF_SSIM.to_dict(), "psnr_outside_roi": Interval(31.2, 30.8, 31.6, 24,
                                                                                    NORMAL).to_dict(),
                "lateralisation": Interval(0.59, 0.55, 0.63, 12, NORMAL).to_dict(),
                "reversal": Interval(0.443, 0.38, 0.51, 12, NORMAL).to_dict(),
                "contralateral_change": Interval(0.289, 0.22, 0.35, 12, NORMAL).to_dict()}

    for k, name in enumerate(("sub-01_to-TLE_inversion-s0.3_g6", "sub-02_to-HC_inversion-s0.3_g6")):
        _png(out / f"{name}.png", seed=10 + k)
    write_json_atomic(out / "summary.json", {
        "split": "test", "n_subjects": 24, "classes": CLASSES, "reference_class": "HC", "method": "inversion",
        "strength": 0.3, "strengths": [0.3, 0.5], "guidance": 6.0, "sampler": "ddim", "steps": 20, "seed": None,
        "start_timestep": 299, "model_evaluations": {"0.3": 12, "0.5": 20}, "default": measures(1.0),
        "sweep": [{"strength": 0.3, **measures(1.0)}, {"strength": 0.5, **measures(0.5)}],
        "directions": {"HC->TLE": measures(1.0), "TLE->HC": measures(1.0)}})


def make_fake_run(run):
    """A run directory with every stage's outputs; returns the numbers the tests look for."""
    prepared = _prepared(run)
    samples = _samples(run)
    RunDir(run).record_stage("train-vae", load_config("demo", None, []), prepared=prepared.resolve())
    write_json_atomic(run / "metrics.json", RUN_METRICS)
    write_json_atomic(run / "pipeline.json", {
        "stages": {"prepare": {"state": "done", "seconds": 0.4, "finished": "2026-12-01T10:00:00",
                               "memory": {"peak_rss_gb": 0.812, "rss_scope": "process"}},
                   "train-vae": {"state": "done", "seconds": 3456.5, "finished": "2026-12-01T11:00:00",
                                 "memory": {"peak_rss_gb": 3.254, "rss_scope": "stage", "peak_cuda_gb": 11.5},
                                 "summary": {"seconds_per_step": 0.4123, "samples_per_step": 2}},
                   "saliency": {"state": "running", "started": "2026-12-01T11:10:00"}},
        "last_invocation": {"seconds": 3460.0, "stages": [{"name": "prepare", "status": "reused", "seconds": 0.0},
                                                          {"name": "train-vae", "status": "ran", "seconds": 3456.5},
                                                          {"name": "saliency", "status": "failed", "seconds": 2.0}]}})
    _engine_log(run / "vae" / "metrics.csv", ["val_ssim", "val_psnr", "val_ms_ssim", "val_l1"])
    write_json_atomic(run / "vae" / "reconstruction" / "metrics.json",
                      {"split": "val", "n": 2, "vae_sha256": "0" * 64, "mean": RECON,
                       "std": {k: 0.01 for k in RECON},
                       "per_volume": [{"subject": f"sub-0{i}", "session": "", **{k: v + d for k, v in RECON.items()}}
                                      for i, d in ((1, -0.005), (2, 0.005))]})
    vol = _volume(0, 0)
    comparison_figure([("sub-05 (HC)", [("real", vol, {}), ("reconstruction", vol, {})])],
                      run / "vae" / "reconstruction" / "reconstruction.png")
    _engine_log(run / "diffusion" / "metrics.csv", ["val_loss"])
    import torch

    export_dit(torch.nn.Linear(3, 2), DiffusionConfig(), run / "diffusion" / "model.safetensors",
               {"latent_shape": [3, 4, 5, 4], "classes": CLASSES, "scale_factor": 0.9876, "step": 20, "ema": True,
                "train_subjects_sha256": save_train_subjects(run, ["sub-01", "sub-02", "sub-03", "sub-04"])})
    groups = _evaluation(run, prepared, samples)
    grid = _classifier_grid(run)
    result = _classifier(run)
    _saliency(run)
    _counterfactual(run)
    return SimpleNamespace(groups=groups, grid=grid, result=result)
