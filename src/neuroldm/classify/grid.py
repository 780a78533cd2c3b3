"""``neuroldm classify-grid``: every data regime × seed × fold, one classifier each, and the statistics.

Runs go to ``RUN/classify-grid/<regime>/seed-<s>[/fold-<k>]/`` (the layout of `neuroldm.classify.train`); a run
whose ``result.json`` exists is reused, so an interrupted grid continues where it stopped. Then:

- ``runs.csv`` — one row per run: regime, seed, fold, training counts, selected step, validation AUC and every
  test metric (`neuroldm.metrics.classification.METRICS`) with its own 95% CI;
- ``predictions.csv`` — every run's validation and test scores;
- ``summary.md`` / ``summary.html`` / ``summary.json`` — per regime, the mean ± std over runs of each test
  metric with a 95% t-interval over runs (N = runs), and the *pooled* analysis: each subject's score averaged
  over the regime's runs, its AUC with DeLong's 95% CI (N = subjects), and a paired DeLong test against
  real-only on the same subjects. The pooled analysis is done on the test split and, with
  ``classifier.folds: cv``, on the pooled out-of-fold validation scores (every non-test subject scored once
  per seed by the fold that held it out).

With K > 2 classes (`neuroldm.metrics.multiclass`) the per-run metrics are accuracy, balanced accuracy, the macro
one-vs-rest AUC (``auc_roc``) and each class's one-vs-rest AUC (``auc_roc_<class>``); the pooled analysis averages
each subject's probability vector over runs and gives the macro AUC (stratified subject bootstrap CI), each
class's AUC (DeLong CI, ``auc_<class>``), the balanced accuracy (MOVER-Wilson CI) and confusion matrix of the most
probable class, and against real-only a paired stratified bootstrap test of the macro AUC (``p_vs_real``) with a
paired DeLong test per class (``p_vs_real_<class>``).

Regimes that need synthetic volumes are skipped (with a warning, recorded in ``summary.json``) when no sample
folder is given. A run stopped before its planned steps (a user's ``max_minutes``) is listed in ``summary.json``
as ``truncated_runs`` and is resumed, not reused, by the next grid. Under ``folds: cv`` the leak guard is checked
for every fold before anything is trained: a generator trained on the manifest's train split has seen the other
folds' validation subjects.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from neuroldm.classify.data import check_leak, fold_split, grid_regimes
from neuroldm.classify.train import train_classifier
from neuroldm.config import Config
from neuroldm.data.manifest import read_manifest
from neuroldm.io import atomic_path, write_json_atomic, write_text_atomic
from neuroldm.metrics.classification import METRICS, auc_score_interval, paired_delong
from neuroldm.metrics.multiclass import multiclass_report, paired_macro_auc_test
from neuroldm.metrics.interval import NONE, Interval, T
from neuroldm.runs import RunDir
from neuroldm.samples import read_sample_manifest

log = logging.getLogger(__name__)

LABELS = {"accuracy": "Accuracy", "balanced_accuracy": "Bal. acc.", "sensitivity": "Sensitivity",
          "specificity": "Specificity", "ppv": "PPV", "npv": "NPV", "f1": "F1", "auc_roc": "AUC-ROC",
          "auc_pr": "AUC-PR"}


MULTICLASS_METRICS = ("accuracy", "balanced_accuracy", "auc_roc")


def grid_metrics(classes: list[str]) -> tuple[str, ...]:
    """The per-run metric columns: `METRICS` with two classes; with K > 2 `MULTICLASS_METRICS` and
    ``auc_roc_<class>`` (one-vs-rest) per class."""
    if len(classes) == 2:
        return METRICS
    return MULTICLASS_METRICS + tuple(f"auc_roc_{c}" for c in classes)


def _run_row(result: dict) -> dict:
    row = {k: result[k] for k in ("regime", "seed", "fold", "n_train", "n_train_real", "n_train_synthetic",
                                  "selected_step", "val_auc")}
    test = result["test"]
    row["n_test"] = test["n"]
    multiclass = "per_class" in test
    if multiclass:
        test = test | {f"auc_roc_{c}": d["auc_roc"] for c, d in test["per_class"].items()}
    for name in grid_metrics(test["classes"]) if multiclass else METRICS:
        # value, low and high only: result.json files written before N and method were added
        row[name] = test[name]["value"]
        row[f"{name}_low"], row[f"{name}_high"] = test[name]["low"], test[name]["high"]
    return row


def mean_std_ci(values: pd.Series, level: float = 0.95) -> tuple[Interval, float]:
    """The mean over runs with Student's t-interval (N = runs; NaN bounds with one run), and the std."""
    v = values.dropna().to_numpy(dtype=np.float64)
    if v.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, T, level), math.nan
    mean = float(v.mean())
    if v.size == 1:
        return Interval(mean, math.nan, math.nan, 1, T, level), math.nan
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * std / math.sqrt(v.size))
    return Interval(mean, mean - half, mean + half, v.size, T, level), std


def pooled_comparison(predictions: pd.DataFrame, split: str, reference: str = "real",
                      classes: list[str] | None = None, n_bootstrap: int = 2000) -> pd.DataFrame:
    """Per regime: each subject's score averaged over runs, its AUC with the score interval that stays honest at
    AUC 1 (`auc_score_interval`), and the paired DeLong test vs `reference`. With K > 2 `classes`:
    `pooled_multiclass` (`n_bootstrap` resamples)."""
    if classes is not None and len(classes) > 2:
        return pooled_multiclass(predictions, split, classes, reference, n_bootstrap)
    pred = predictions[predictions["split"] == split]
    key = ["subject", "session"]
    pooled = pred.groupby(["regime", *key]).agg(score=("score", "mean"), label=("label", "first")).reset_index()
    ref = pooled[pooled["regime"] == reference].set_index(key)
    rows = []
    for regime, part in pooled.groupby("regime", sort=False):
        part = part.set_index(key)
        auc = (auc_score_interval(part["label"], part["score"]) if part["label"].nunique() == 2
               else Interval(math.nan, math.nan, math.nan, len(part), NONE))
        row = {"regime": regime, "split": split, "n": len(part), "auc": auc.value, "auc_low": auc.low,
               "auc_high": auc.high, "diff_vs_real": math.nan, "p_vs_real": math.nan}
        common = part.index.intersection(ref.index)
        if regime != reference and len(common) and part.loc[common, "label"].nunique() == 2:
            test = paired_delong(part.loc[common, "label"], part.loc[common, "score"], ref.loc[common, "score"])
            row.update(diff_vs_real=test["diff"], p_vs_real=test["p"], n_paired=len(common))
        rows.append(row)
    return pd.DataFrame(rows)


def pooled_multiclass(predictions: pd.DataFrame, split: str, classes: list[str], reference: str = "real",
                      n_bootstrap: int = 2000) -> pd.DataFrame:
    """`pooled_comparison` for K > 2 classes: each subject's probability vector averaged over the regime's runs;
    macro one-vs-rest AUC (``auc``; stratified subject bootstrap CI), per class ``auc_<class>`` (DeLong CI),
    ``balanced_accuracy`` (MOVER-Wilson CI) and ``confusion`` of the most probable class; against `reference` on
    the same subjects ``diff_vs_real`` / ``p_vs_real`` (paired stratified bootstrap of the macro AUC, seed 0) and
    ``p_vs_real_<class>`` (paired DeLong)."""
    cols = [f"p_{c}" for c in classes]
    pred = predictions[predictions["split"] == split]
    key = ["subject", "session"]
    pooled = pred.groupby(["regime", *key]).agg(label=("label", "first"),
                                                 **{c: (c, "mean") for c in cols}).reset_index()
    ref = pooled[pooled["regime"] == reference].set_index(key)
    rows = []
    for regime, part in pooled.groupby("regime", sort=False):
        part = part.set_index(key)
        y, p = part["label"].to_numpy(int), part[cols].to_numpy(np.float64)
        rep = multiclass_report(y, p, classes, n_bootstrap)
        macro = rep["auc_roc"]
        row = {"regime": regime, "split": split, "n": len(part), "auc": macro["value"], "auc_low": macro["low"],
               "auc_high": macro["high"], "diff_vs_real": math.nan, "p_vs_real": math.nan}
        for c in classes:
            auc = rep["per_class"][c]["auc_roc"]
            row |= {f"auc_{c}": auc["value"], f"auc_{c}_low": auc["low"], f"auc_{c}_high": auc["high"],
                    f"p_vs_real_{c}": math.nan}
        bal = rep["balanced_accuracy"]
        row |= {"balanced_accuracy": bal["value"], "balanced_accuracy_low": bal["low"],
                "balanced_accuracy_high": bal["high"], "confusion": rep["confusion"]}
        common = part.index.intersection(ref.index)
        if regime != reference and len(common):
            test = paired_macro_auc_test(part.loc[common, "label"].to_numpy(int), part.loc[common, cols].to_numpy(),
                                         ref.loc[common, cols].to_numpy(), n_bootstrap)
            row.update(diff_vs_real=test["diff"], p_vs_real=test["p"], n_paired=len(common))
            for c, t in zip(classes, test["per_class"]):
                if t is not None:
                    row[f"p_vs_real_{c}"] = t["p"]
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(runs: pd.DataFrame, order: list[str], metrics: tuple[str, ...] = METRICS) -> pd.DataFrame:
    rows = []
    for regime in order:
        part = runs[runs["regime"] == regime]
        if part.empty:
            continue
        row = {"regime": regime, "runs": len(part), "n_train_real": int(part["n_train_real"].iloc[0]),
               "n_train_synthetic": int(part["n_train_synthetic"].iloc[0]), "n_test": int(part["n_test"].iloc[0])}
        for name in metrics:
            ci, std = mean_std_ci(part[name])
            row.update({f"{name}_mean": ci.value, f"{name}_std": std, f"{name}_low": ci.low,
                        f"{name}_high": ci.high})
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(mean: float, std: float, lo: float, hi: float) -> str:
    if math.isnan(mean):
        return "–"
    s = f"{mean:.3f}"
    if not math.isnan(std):
        s += f" ± {std:.3f} [{lo:.3f}, {hi:.3f}]"
    return s


def _label(name: str) -> str:
    if name.startswith("auc_roc_"):
        return f"AUC {name[len('auc_roc_'):]}"
    return LABELS[name]


def render_tables(summary: pd.DataFrame, pooled: pd.DataFrame, metrics: tuple[str, ...] = METRICS,
                  classes: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two display tables: per-run metrics (mean ± std [95% CI over runs]) and the pooled AUC tests (with
    K > 2 `classes`: the macro AUC, each class's AUC and p, the paired bootstrap's p)."""
    per_run = pd.DataFrame({"regime": summary["regime"], "runs": summary["runs"],
                            "train real+syn": [f"{r}+{s}" for r, s in zip(summary["n_train_real"],
                                                                          summary["n_train_synthetic"])],
                            "N test": summary["n_test"]})
    for name in metrics:
        per_run[_label(name)] = [_fmt(*r) for r in summary[[f"{name}_mean", f"{name}_std", f"{name}_low",
                                                             f"{name}_high"]].itertuples(index=False)]
    tests = pd.DataFrame({
        "regime": pooled["regime"], "scores": pooled["split"].map({"test": "test", "val": "out-of-fold"}),
        "N": pooled["n"],
        "pooled AUC [95% CI, score]": [f"{a:.3f} [{lo:.3f}, {hi:.3f}]" if not math.isnan(a) else "–"
                                        for a, lo, hi in pooled[["auc", "auc_low", "auc_high"]].itertuples(
                                            index=False)],
        "ΔAUC vs real": ["–" if math.isnan(d) else f"{d:+.3f}" for d in pooled["diff_vs_real"]],
        "p (paired DeLong)": ["–" if math.isnan(p) else f"{p:.3g}" for p in pooled["p_vs_real"]]})
    if classes is not None and len(classes) > 2:
        per_run = per_run.rename(columns={LABELS["auc_roc"]: "AUC macro"})
        tests = tests.rename(columns={"pooled AUC [95% CI, score]": "pooled macro AUC [95% CI, bootstrap]",
                                      "p (paired DeLong)": "p (paired bootstrap)"})
        for c in classes:
            tests[f"AUC {c} [95% CI, DeLong]"] = [
                "–" if math.isnan(a) else f"{a:.3f} [{lo:.3f}, {hi:.3f}]"
                for a, lo, hi in pooled[[f"auc_{c}", f"auc_{c}_low", f"auc_{c}_high"]].itertuples(index=False)]
            tests[f"p {c} (paired DeLong)"] = ["–" if math.isnan(p) else f"{p:.3g}" for p in pooled[f"p_vs_real_{c}"]]
    return per_run, tests


def seconds_per_step(train_summaries: list[dict]) -> float | None:
    """The mean optimiser-step time over the grid's runs, each weighted by the steps it timed (its last training
    call); None when no run has a timing (a grid of runs trained before steps were timed)."""
    timed = [s for s in train_summaries if s.get("seconds_per_step") and s.get("steps_this_run")]
    steps = sum(s["steps_this_run"] for s in timed)
    return round(sum(s["seconds_per_step"] * s["steps_this_run"] for s in timed) / steps, 4) if steps else None


def _markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def run_grid(prepared: str | Path, run_dir: str | Path, cfg: Config, *, samples: str | Path | None = None,
             resume: bool = True, device: str | None = None, progress: bool = True) -> dict:
    """Train every run of the grid (reusing finished ones) and write the tables; returns ``summary.json``."""
    ccfg = cfg.classifier
    root = RunDir(run_dir).grid
    rows = read_manifest(prepared)
    sample_set = read_sample_manifest(samples) if samples is not None else None
    regimes = grid_regimes(ccfg.regimes, ccfg.mix_ratios, ccfg.subset_fractions, ccfg.synthetic_ratio)
    skipped = [r.name for r in regimes if r.needs_synthetic and sample_set is None]
    if skipped:
        log.warning("no --samples given: skipping %s", ", ".join(skipped))
    regimes = [r for r in regimes if r.name not in skipped]
    folds: list[int | None] = [None] if ccfg.folds == "split" else sorted(set(rows["fold"]) - {-1})
    if not folds:
        folds = [None]
    if sample_set is not None and any(r.needs_synthetic for r in regimes):
        for fold in folds:  # fail before training anything
            _, val, test = fold_split(rows, fold)
            check_leak(sample_set, val, test)

    results, predictions, truncated_runs, timings = [], [], [], []
    plan = [(r, s, f) for r in regimes for s in ccfg.seeds for f in folds]
    for k, (regime, seed, fold) in enumerate(plan, 1):
        out = root.run(regime.name, seed, fold)
        result = out.read_result() if resume and out.result.exists() else None
        if result is None or (result.get("train_summary") or {}).get("truncated"):  # a truncated run resumes
            log.info("grid run %d/%d: %s seed %d%s", k, len(plan), regime.name, seed,
                     f" fold {fold}" if fold is not None else "")
            result = train_classifier(prepared, out.root, cfg, regime=regime, samples=sample_set, fold=fold, seed=seed,
                                      resume=resume, device=device, progress=progress)
            if not result:  # a non-main torchrun process: rank 0 keeps the books
                continue
        if result["train_summary"].get("truncated"):
            truncated_runs.append({"name": f"{regime.name} seed {seed}" + (f" fold {fold}" if fold is not None else ""),
                                   "steps": result["train_summary"]["steps"],
                                   "planned_steps": result["train_summary"]["planned_steps"]})
        results.append(_run_row(result))
        timings.append(result["train_summary"])
        pred = pd.read_csv(out.predictions, dtype={"subject": str, "session": str}, keep_default_na=False)
        predictions.append(pred.assign(regime=regime.name, seed=seed, fold=-1 if fold is None else fold))

    if not results:
        return {}
    runs = pd.DataFrame(results)
    preds = pd.concat(predictions, ignore_index=True)
    for path, df in ((root.runs_table, runs), (root.predictions, preds)):
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False)
    order = [r.name for r in regimes]
    classes = list(cfg.data.classes)
    metrics = grid_metrics(classes)
    summary = summary_table(runs, order, metrics)
    pooled = pooled_comparison(preds, "test", classes=classes, n_bootstrap=ccfg.bootstrap)
    if ccfg.folds == "cv" and folds != [None]:
        pooled = pd.concat([pooled, pooled_comparison(preds, "val", classes=classes, n_bootstrap=ccfg.bootstrap)],
                           ignore_index=True)
    per_run, tests = render_tables(summary, pooled, metrics, classes)
    title = (f"Classifier grid: {ccfg.arch}, {len(ccfg.seeds)} seed(s) × {len(folds)} fold(s); test N = "
             f"{int(runs['n_test'].iloc[0])} real subjects")
    note = ("Per-run table: mean ± std over runs [95% t-interval over runs]; threshold "
            f"{ccfg.threshold} on P({cfg.data.classes[1]}). Pooled table: each subject's score averaged over the "
            "regime's runs; AUC with DeLong's 95% CI; paired DeLong test against real-only on the same subjects.")
    if len(classes) > 2:
        note = ("Per-run table: mean ± std over runs [95% t-interval over runs]; the prediction is the most probable "
                "class; AUC: macro one-vs-rest, AUC <class>: that class vs the rest. Pooled table: each subject's "
                "probabilities averaged over the regime's runs; macro AUC with a stratified subject bootstrap 95% CI "
                "and a paired stratified bootstrap test against real-only; per class DeLong's 95% CI and paired "
                "DeLong test.")
    write_text_atomic(root.summary_md, f"# {title}\n\n{note}\n\n{_markdown(per_run)}\n\n{_markdown(tests)}\n")
    write_text_atomic(root.summary_html,
                      f"<!doctype html><meta charset='utf-8'><title>{title}</title><h1>{title}</h1><p>{note}</p>"
                      + per_run.to_html(index=False, border=0) + tests.to_html(index=False, border=0))
    out = {"runs": len(runs), "regimes": order, "classes": classes, "skipped_regimes": skipped, "folds": folds,
           "seeds": ccfg.seeds,
           "summary": summary.to_dict(orient="records"), "pooled": pooled.to_dict(orient="records"),
           "truncated_runs": truncated_runs, "seconds_per_step": seconds_per_step(timings)}
    write_json_atomic(root.summary, out)
    return out
