"""``RUN/metrics.json``: the run's headline numbers as flat keys, gathered from the stages' own outputs.

The report stage writes it (then the page that shows it); every stage output is read through `neuroldm.runs`.

Every key is documented in `KEYS` (and in the README); a number whose stage has not run is absent, never 0.
Confidence intervals sit beside their value as ``<key>.low`` / ``<key>.high`` and sample sizes as ``<key>.n``:
a stage's `neuroldm.metrics.interval.Interval` dict flattened (`KEYS` names each one's method).

With K > 2 classes the keys of two classes keep their names, ``classifier.<regime>.auc`` becomes the macro
one-vs-rest AUC (stratified subject bootstrap CI), and per-class keys are added (`CLASS_KEYS`, ``<class>`` a name
of ``data.classes``): ``classifier.<regime>.auc.<class>``, ``classifier.<regime>.recall.<class>`` and
``synthetic.class_fidelity.<class>``. A run of two classes has none of them, so its keys are those it always had.
"""

from __future__ import annotations

import math
from pathlib import Path

from neuroldm.config import PipelineConfig
from neuroldm.errors import ConfigError
from neuroldm.evaluate.stats import mean_ci
from neuroldm.io import write_json_atomic
from neuroldm.metrics.interval import Interval, wilson_interval
from neuroldm.report.bars import judge
from neuroldm.runs import RunDir

KEYS: dict[str, str] = {
    "wall_seconds": "sum of the wall times of the stages that produced this run directory (pipeline.json)",
    "vae.val.ssim": "autoencoder: mean SSIM of posterior-mean reconstructions of the validation volumes (normal CI "
                    "of the mean; N: .n)",
    "vae.val.psnr": "autoencoder: mean PSNR (dB) of the same reconstructions",
    "vae.val.ms_ssim": "autoencoder: mean MS-SSIM of the same reconstructions",
    "classifier.real.auc": "test AUC-ROC of the classifier trained on real volumes (pooled over seeds; score CI, "
                           "which stays below 1 at perfect separation)",
    "classifier.real.balanced_accuracy": "its balanced accuracy at the 0.5 threshold (mean over seeds)",
    "classifier.synthetic.auc": "test AUC-ROC of the classifier trained on synthetic volumes only, tested on real",
    "classifier.synthetic.balanced_accuracy": "its balanced accuracy at the 0.5 threshold (mean over seeds)",
    "classifier.synthetic.auc_ratio": "classifier.synthetic.auc / classifier.real.auc (train-on-synthetic utility)",
    "synthetic.class_fidelity": "share of synthetic volumes the real-trained classifier labels as the class asked "
                                "for (Wilson CI)",
    "synthetic.class_difference.corr_heldout": "correlation of the synthetic and the held-out real class-difference "
                                               "maps (mean of one class minus the other; jackknife CI; N: held-out)",
    "synthetic.class_difference.corr_training": "the same against the generator's training volumes (near 1 with "
                                                "corr_heldout no better than the real baseline: it copies the "
                                                "training groups, chance differences included)",
    "real.class_difference.corr_training_heldout": "training vs held-out real maps: the baseline for corr_heldout "
                                                   "(what a generator that copies its training groups scores)",
    "synthetic.class_difference.amplification": "RMS of the synthetic class-difference map / that of the training "
                                                "volumes (guidance makes it > 1)",
    "synthetic.class_difference.excess_training_agreement": "[r(S,T) - r(S,H)] - [r(V,T) - r(V,H)]: how much more "
                                                            "the synthetic class-difference map agrees with the "
                                                            "training than the held-out map, beyond real validation "
                                                            "subjects (V); jackknife CI; N: held-out + validation",
    "synthetic.class_difference.verdict": "ok, overfits-training-groups (the excess CI above 0), amplifies "
                                          "(amplification >= 1.5 and corr_heldout below real subjects') or "
                                          "inconclusive (no validation subjects, or < 5 of a class); the cause in "
                                          "evaluation/metrics.json class_difference.why",
    "saliency.ig.roi_enrichment": "Integrated Gradients: share of the top-1% attribution mass inside the ROI "
                                  "divided by the ROI's share of the grid (1 = chance; bootstrap CI)",
    "saliency.ixg.roi_enrichment": "the same ROI enrichment for Input x Gradient",
    "saliency.gradient_shap.roi_enrichment": "the same ROI enrichment for GradientSHAP",
    "counterfactual.validity": "share of the held-out subjects' counterfactuals (each subject to the other class, "
                               "default strength) the real-trained classifier assigns to the target class (Wilson "
                               "CI; N: counterfactuals)",
    "counterfactual.roi_enrichment": "ROI enrichment of their difference maps (counterfactual - reconstruction), as "
                                     "for saliency (1 = chance; bootstrap CI)",
    "counterfactual.ssim_outside_roi": "mean SSIM of counterfactual vs reconstruction over the windows centred "
                                       "outside the ROI (normal CI)",
    "counterfactual.identity": "share of counterfactuals whose nearest real volume of the cohort (image space) is "
                               "their own source subject's (Wilson CI)",
    "counterfactual.reversal": "mean intensity change (z units) in the lesion-side hippocampus when a subject of "
                               "another class is edited to the reference class (TLE -> HC): > 0 reduces the "
                               "lesion signal (normal CI; N: those counterfactuals)",
    "memorization.flagged": "synthetic volumes flagged as copies of a training volume (image or latent space)",
    "memorization.z_u": "Meehan's data-copying Z_U in image space (<< 0: copying; > 0: farther than real data)",
    "fid.synthetic.overall": "per-slice FID (mean over slice positions and axes) of synthetic vs reference real "
                             "volumes, all classes",
    "fid.real_baseline.overall": "the same FID of held-out real vs reference real volumes: what real data scores",
    "fid.synthetic.2_5d": "2.5D FID (mean of the three pooled-axis FIDs) of synthetic vs reference real volumes",
    "fid.real_baseline.2_5d": "the same for held-out real volumes",
    "fid.reconstruction.overall": "realism ladder: the same FID of the autoencoder's posterior-mean reconstructions "
                                  "of the held-out volumes (the ceiling this autoencoder allows)",
    "fid.reconstruction.2_5d": "the same 2.5D FID for the reconstructions",
    "fid.vae_prior.overall": "realism ladder: the same FID of decoded Gaussian latents with the training latents' "
                             "per-channel mean and std (the floor the diffusion model must beat)",
    "fid.vae_prior.2_5d": "the same 2.5D FID for the prior samples",
    "fid.synthetic.baseline_ratio": "fid.synthetic.overall / fid.real_baseline.overall (1 = as real as held-out "
                                    "real volumes)",
    "fid.reconstruction.baseline_ratio": "fid.reconstruction.overall / fid.real_baseline.overall",
    "fid.synthetic.equivalent_blur_mm": "the Gaussian blur (sigma, mm) at which blurred held-out real volumes score "
                                        "the synthetic FID (0: no worse than real; a lower bound when above the "
                                        "largest sigma measured)",
    "fid.reconstruction.equivalent_blur_mm": "the same equivalent blur for the reconstructions",
    "sharpness.synthetic": "mean gradient magnitude inside the brain of synthetic volumes / that of held-out real "
                           "volumes (1 = as sharp; percentile bootstrap CI over volumes)",
    "sharpness.reconstruction": "the same sharpness ratio for the reconstructions of the held-out volumes",
    "latent.std_ratio": "std of the generated latents (before decoding) / std of the real training latents, "
                        "root-mean-square over channels (< 1: under-dispersed samples)",
    "quick": "true for a smoke run (`neuroldm demo --quick`): its numbers mean nothing, and no bar is judged",
    "bars": "each quality bar of pipeline.bars: the metric's value (with low, high, n), the bar, pass (a metric "
            "the run did not produce fails, marked missing); the CLI and the report list them in pipeline order",
    "bars_passed": "true when every bar passed",
    "truncated_stages": "stages whose training stopped before its planned steps (max_minutes, pipeline.json); "
                        "empty when every model trained its planned steps. The numbers of a truncated run are "
                        "not comparable with others: run it again to complete them",
}
# per-class keys of a run with K > 2 classes; <class> is a name of data.classes
CLASS_KEYS: dict[str, str] = {
    "classifier.real.auc.<class>": "K > 2 classes: that class's one-vs-rest test AUC of the real-trained classifier "
                                   "(pooled over seeds; DeLong CI); classifier.real.auc is then their mean, the "
                                   "macro AUC (stratified subject bootstrap CI)",
    "classifier.real.recall.<class>": "K > 2 classes: share of that class's test subjects whose most probable class "
                                      "(pooled over seeds) is theirs: a diagonal cell of the confusion matrix (Wilson)",
    "classifier.synthetic.auc.<class>": "the same one-vs-rest AUC for the classifier trained on synthetic volumes",
    "classifier.synthetic.recall.<class>": "the same recall for the classifier trained on synthetic volumes",
    "synthetic.class_fidelity.<class>": "K > 2 classes: share of the synthetic volumes asked for that class that the "
                                        "real-trained classifier labels as it (Wilson CI)",
}


def class_key_pattern(key: str) -> str | None:
    """The `CLASS_KEYS` pattern of a per-class key (``classifier.real.auc.HC`` -> ``classifier.real.auc.<class>``)."""
    for pattern in CLASS_KEYS:
        prefix = pattern[:-len("<class>")]
        if key.startswith(prefix) and key[len(prefix):] and "." not in key[len(prefix):]:
            return pattern
    return None


def key_meaning(key: str) -> str | None:
    """What a flat key means (`KEYS`, or `CLASS_KEYS` for a per-class key); None if undocumented."""
    return KEYS.get(key) or CLASS_KEYS.get(class_key_pattern(key) or "")


# what the run promised or left undone, not what it measured (the CLI and the report say them apart)
VERDICT_KEYS = ("quick", "bars", "bars_passed", "truncated_stages")
# measured, but words, not numbers: shown with the numbers, never given a bar
TEXT_KEYS = ("synthetic.class_difference.verdict",)

# why a headline number has no interval (the report prints it in the interval's place)
NO_INTERVAL: dict[str, str] = {
    "wall_seconds": "a measured time, not an estimate",
    "classifier.real.balanced_accuracy": "a mean over seeds: the grid's tables give each seed's interval",
    "classifier.synthetic.balanced_accuracy": "a mean over seeds: the grid's tables give each seed's interval",
    "classifier.synthetic.auc_ratio": "a ratio of two AUCs on the same subjects: see the paired DeLong test",
    "synthetic.class_difference.corr_training": "the generator's own training subjects: no sampling to bound",
    "real.class_difference.corr_training_heldout": "a reference for corr_heldout, not an estimate of it",
    "synthetic.class_difference.amplification": "a ratio of map norms; its spread is not estimated",
    "synthetic.class_difference.verdict": "a verdict, read off the CI of the excess",
    "memorization.flagged": "a count of flagged volumes (the evaluation gives the share's Wilson interval)",
    "memorization.z_u": "a test statistic (Meehan et al. 2020), not an estimate",
    "fid.synthetic.overall": "FID is one distance between two sets, biased at small N: compare with the baseline",
    "fid.real_baseline.overall": "FID is one distance between two sets: the baseline itself",
    "fid.synthetic.2_5d": "FID is one distance between two sets: compare with the baseline",
    "fid.real_baseline.2_5d": "FID is one distance between two sets: the baseline itself",
    "fid.reconstruction.overall": "FID is one distance between two sets: compare with the baseline",
    "fid.reconstruction.2_5d": "FID is one distance between two sets: compare with the baseline",
    "fid.vae_prior.overall": "FID is one distance between two sets: compare with the baseline",
    "fid.vae_prior.2_5d": "FID is one distance between two sets: compare with the baseline",
    "fid.synthetic.baseline_ratio": "a ratio of two FIDs at the same N",
    "fid.reconstruction.baseline_ratio": "a ratio of two FIDs at the same N",
    "fid.synthetic.equivalent_blur_mm": "read off the measured blur curve (evaluation/metrics.json ladder.blur)",
    "fid.reconstruction.equivalent_blur_mm": "read off the measured blur curve (evaluation/metrics.json ladder.blur)",
    "latent.std_ratio": "a ratio of pooled standard deviations (per channel in evaluation/metrics.json)",
}


def _put(out: dict, key: str, value, low=None, high=None, n=None) -> None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return
    out[key] = value
    for suffix, v in (("low", low), ("high", high), ("n", n)):
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            out[f"{key}.{suffix}"] = v


def _put_interval(out: dict, key: str, interval: dict) -> None:
    iv = Interval.from_dict(interval)
    _put(out, key, iv.value, iv.low, iv.high, iv.n)


def collect_metrics(run: str | Path) -> dict:
    """The flat metrics of a run directory (whatever stages have finished)."""
    run = RunDir(run)
    out: dict = {}
    pipeline = run.read_pipeline()
    seconds = [s.get("seconds", 0.0) for name, s in pipeline.get("stages", {}).items()
               if s.get("state") in ("done", "truncated") and name != "report"]
    if seconds:
        out["wall_seconds"] = round(float(sum(seconds)), 1)
    if pipeline.get("stages"):
        out["truncated_stages"] = list(run.truncated_stages())

    recon = run.vae.reconstruction.read_metrics()
    if recon:
        for k in ("ssim", "psnr", "ms_ssim"):
            per_volume = [v[k] for v in recon.get("per_volume", [])]
            if len(per_volume) > 1:  # the mean's normal interval over the validation volumes
                ci = mean_ci(per_volume)
                _put(out, f"vae.val.{k}", recon["mean"][k], ci.low, ci.high, ci.n)
            else:
                _put(out, f"vae.val.{k}", recon["mean"][k], n=recon["n"])

    grid = run.grid.read_summary()
    if grid:
        pooled = {r["regime"]: r for r in grid.get("pooled", []) if r.get("split") == "test"}
        per_run = {r["regime"]: r for r in grid.get("summary", [])}
        for regime, name in (("real", "real"), ("synthetic", "synthetic")):
            key = next((k for k in pooled if k == regime or k.startswith(f"{regime}-")), None)
            if key is None:
                continue
            r = pooled[key]
            _put(out, f"classifier.{name}.auc", r["auc"], r["auc_low"], r["auc_high"], r["n"])
            bal = per_run.get(key, {}).get("balanced_accuracy_mean")
            _put(out, f"classifier.{name}.balanced_accuracy", bal)
            classes = grid.get("classes") or []
            if len(classes) > 2:  # per class: one-vs-rest AUC, and recall from the pooled confusion matrix
                for c, counts in zip(classes, r.get("confusion") or [[]] * len(classes)):
                    _put(out, f"classifier.{name}.auc.{c}", r.get(f"auc_{c}"), r.get(f"auc_{c}_low"),
                         r.get(f"auc_{c}_high"), r["n"])
                    if counts:
                        _put_interval(out, f"classifier.{name}.recall.{c}",
                                      wilson_interval(int(counts[classes.index(c)]), int(sum(counts))).to_dict())
        if "classifier.real.auc" in out and "classifier.synthetic.auc" in out and out["classifier.real.auc"] > 0:
            out["classifier.synthetic.auc_ratio"] = out["classifier.synthetic.auc"] / out["classifier.real.auc"]

    ev = run.evaluation.read_metrics()
    if ev:
        fid = ev.get("fidelity", {})
        if "value" in fid:
            _put_interval(out, "synthetic.class_fidelity", fid)
            if len(fid.get("per_class", {})) > 2:
                for c, d in fid["per_class"].items():
                    _put_interval(out, f"synthetic.class_fidelity.{c}", d)
        metric = ev["feature_network"]["metric"]
        prefix = "fid" if metric == "fid" else "fid_random_features"
        overall = ev["groups"]["overall"]
        for comparison in ("synthetic", "real_baseline", "reconstruction", "vae_prior"):
            r = overall.get(comparison, {}).get(metric)
            if r:
                _put(out, f"{prefix}.{comparison}.overall", r["mean"], n=r["n_b"])
                _put(out, f"{prefix}.{comparison}.2_5d", r["fid_2_5d"])
        base = out.get(f"{prefix}.real_baseline.overall")
        for comparison in ("synthetic", "reconstruction"):
            if base and f"{prefix}.{comparison}.overall" in out:
                _put(out, f"{prefix}.{comparison}.baseline_ratio", out[f"{prefix}.{comparison}.overall"] / base)
        rungs = ev.get("ladder", {})
        for comparison, e in rungs.get("equivalent_blur", {}).items():
            if comparison in ("synthetic", "reconstruction") and math.isfinite(e["sigma_mm"]):
                _put(out, f"{prefix}.{comparison}.equivalent_blur_mm", e["sigma_mm"])
        for comparison in ("synthetic", "reconstruction"):
            if "value" in rungs.get("sharpness", {}).get(comparison, {}):
                _put_interval(out, f"sharpness.{comparison}", rungs["sharpness"][comparison])
        if "std_ratio" in rungs.get("latent", {}):
            _put(out, "latent.std_ratio", rungs["latent"]["std_ratio"], n=rungs["latent"]["n_generated"])
        contrasts = ev.get("class_difference", {}).get("contrasts", {})
        first = next(iter(contrasts.values()), {})  # the first contrast: class 1 - class 0
        if "corr_heldout" in first:  # N: the held-out volumes
            _put_interval(out, "synthetic.class_difference.corr_heldout", first["corr_heldout"])
            _put(out, "synthetic.class_difference.corr_training", first["corr_training"],
                 n=sum(first["n"]["training"]))
            _put(out, "real.class_difference.corr_training_heldout", first["corr_training_heldout"])
            _put(out, "synthetic.class_difference.amplification", first["amplification"])
            if "excess_training_agreement" in first:
                _put_interval(out, "synthetic.class_difference.excess_training_agreement",
                              first["excess_training_agreement"])
        if "verdict" in ev.get("class_difference", {}):  # the worst contrast's
            out["synthetic.class_difference.verdict"] = ev["class_difference"]["verdict"]
        mem = ev.get("memorization", {})
        audits = [a for a in (mem.get("image"), mem.get("latent")) if a and "n_copies" in a]
        if audits:
            flagged = {c["sample"] for a in audits for c in a["copies"]}
            _put(out, "memorization.flagged", len(flagged), n=audits[0]["n_synthetic"])
        if mem.get("image", {}).get("z_u") is not None:
            _put(out, "memorization.z_u", mem["image"]["z_u"])

    sal = run.saliency.read_summary()
    if sal:
        for method, short in (("integrated_gradients", "ig"), ("input_x_gradient", "ixg"),
                              ("gradient_shap", "gradient_shap")):
            enr = (sal["methods"].get(method, {}).get("enrichment") or {}).get("all")
            if enr and enr.get("n"):
                _put_interval(out, f"saliency.{short}.roi_enrichment", enr)

    cf = run.counterfactual.read_summary()
    if cf:
        for key in ("validity", "roi_enrichment", "ssim_outside_roi", "identity", "reversal"):
            if cf["default"].get(key, {}).get("n"):
                _put_interval(out, f"counterfactual.{key}", cf["default"][key])
    return out


def pipeline_order(keys) -> list[str]:
    """`keys` in the order of `KEYS` (the pipeline's), others after them, alphabetically."""
    rank = {k: i for i, k in enumerate(KEYS)}

    def place(k: str) -> tuple[float, int, str]:
        """A per-class key right after its regime's ``.auc`` (or the fidelity) key: AUCs, then recalls, each in the
        order given (the classes'; `sorted` is stable)."""
        pattern = class_key_pattern(k)
        if k in rank or pattern is None:
            return rank.get(k, len(rank)), 0, k
        head, kind = pattern[:-len(".<class>")].rsplit(".", 1)
        parent = f"{head}.auc" if kind in ("auc", "recall") else f"{head}.{kind}"
        return rank.get(parent, len(rank)) + 0.5, int(kind == "recall"), ""
    return sorted(keys, key=place)


def check_bar_keys(bars: dict[str, str]) -> None:
    """Every bar names a flat metric (one line listing them otherwise)."""
    unknown = [k for k in bars if k not in KEYS or k in VERDICT_KEYS or k in TEXT_KEYS]
    if unknown:
        raise ConfigError(f"pipeline.bars: {', '.join(unknown)} is not a metric of metrics.json; bars can be set "
                          f"on {', '.join(k for k in KEYS if k not in VERDICT_KEYS + TEXT_KEYS)}")


def write_metrics(run: str | Path, pipeline: PipelineConfig | None = None) -> dict:
    """Write ``RUN/metrics.json``: `collect_metrics`, then what the run promised: a quick run says so
    (``quick``) and is given no verdicts; otherwise each of ``pipeline.bars`` is judged (``bars`` and
    ``bars_passed``)."""
    metrics = collect_metrics(run)
    if pipeline is not None and pipeline.quick:
        metrics["quick"] = True
    elif pipeline is not None and pipeline.bars:
        verdicts = judge(metrics, pipeline.bars)
        metrics["bars"] = verdicts
        metrics["bars_passed"] = all(v["pass"] for v in verdicts.values())
    write_json_atomic(RunDir(run).metrics, metrics)
    return metrics
