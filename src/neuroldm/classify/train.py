"""``neuroldm classify``: train a 3D classifier on one data regime, select on validation AUC, report on test.

Through the shared engine (resume, progress, checkpoints, DDP under torchrun): cross-entropy on the logits,
class-balanced sampling (weights 1 / class count), the plausible augmentation of `neuroldm.data.dataset`, and
early stopping when the validation AUC (ties broken by the validation loss, `selection_score`) has not improved
for ``classifier.patience`` validations. The best checkpoint by that measure is exported as ``OUT/model.safetensors``; only then is the real test split scored, once.

Writes into ``OUT`` (``RUN/classifier`` for ``neuroldm classify``):

- ``training_set.csv`` — every training volume (subject or sample id, path, label, source real/synthetic);
- ``checkpoints/``, ``metrics.csv``, ``train_summary.json`` — the engine's;
- ``model.safetensors`` — the selected weights (`neuroldm.classify.predict.load_classifier` reads it);
- ``predictions.csv`` — per validation and test volume: split, subject, session, label, P(class) per class
  (``p_<class>``), and with two classes score (= P(positive class)) and the prediction at the threshold; with
  K > 2 classes the prediction is the most probable class;
- ``result.json`` — ``test``: every test metric as ``{"value", "low", "high", "n", "method", "level"}`` (95% CI;
  two classes: `neuroldm.metrics.classification.classification_report`; K > 2:
  `neuroldm.metrics.multiclass.multiclass_report`, whose ``auc_roc`` is the macro one-vs-rest AUC), the
  validation AUC (macro one-vs-rest with K > 2), the regime, fold, seed and training counts.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from torch import nn

from neuroldm.classify.data import Regime, fold_split, regime_rows
from neuroldm.classify.network import build_classifier, count_parameters
from neuroldm.classify.predict import export_classifier, predict_proba
from neuroldm.config import Config
from neuroldm.data.dataset import VolumeDataset
from neuroldm.data.manifest import read_manifest
from neuroldm.errors import InputError, NeuroLDMError
from neuroldm.io import atomic_path, write_json_atomic
from neuroldm.metrics.classification import auc_roc, classification_report
from neuroldm.metrics.multiclass import macro_auc, multiclass_report
from neuroldm.runs import ClassifierDir
from neuroldm.samples import SampleSet, read_sample_manifest
from neuroldm.train.checkpoint import load_state
from neuroldm.train.engine import StepContext, Trainer, eval_weights

log = logging.getLogger(__name__)



def cross_entropy(ctx: StepContext, batch: dict) -> dict[str, torch.Tensor]:
    logits = ctx.module("model")(batch["image"])
    return {"loss": nn.functional.cross_entropy(logits.float(), batch["label"])}


def score_dataset(model: nn.Module, dataset: VolumeDataset, batch_size: int = 4) -> np.ndarray:
    """``(N, n_classes)`` probabilities of every volume of `dataset` (no augmentation)."""
    out = []
    for start in range(0, len(dataset), batch_size):
        x = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))])
        out.append(predict_proba(model, x, batch_size).numpy())
    return np.concatenate(out)


def _validation(dataset: VolumeDataset, batch_size: int):
    labels = dataset.labels.numpy()

    def validate(trainer: Trainer) -> dict[str, float]:
        probs = score_dataset(trainer.eval_module(), dataset, batch_size)
        nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()
        auc = validation_auc(labels, probs)
        return {"auc": auc, "loss": float(nll), "accuracy": float((probs.argmax(1) == labels).mean()),
                "selection": selection_score(auc, float(nll))}
    return validate


def validation_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """AUC of P(class 1) with two classes; with K > 2 the macro one-vs-rest AUC (`neuroldm.metrics.multiclass`)."""
    return auc_roc(labels, probs[:, 1]) if probs.shape[1] == 2 else macro_auc(labels, probs)


def selection_score(auc: float, loss: float) -> float:
    """Validation AUC, ties broken by the lower cross-entropy.

    AUCs of n validation subjects take values k / (n_pos · n_neg), so two different AUCs differ by at least
    1 / (n_pos · n_neg); the loss term stays below 1e-6 and so only ever decides between equal AUCs. Small validation
    sets saturate at AUC 1 early, and without the tie-break the first (often badly calibrated) such model wins.
    """
    return auc - 1e-7 * min(loss, 10.0)


def _check_shapes(rows: pd.DataFrame, shape: tuple[int, ...]) -> None:
    for path in rows["path"]:
        got = tuple(nib.load(path).shape)
        if got != tuple(shape):
            raise InputError(path, f"volume is {'x'.join(map(str, got))} but the prepared cohort is "
                                   f"{'x'.join(map(str, shape))}; synthetic volumes must be on the prepared grid")


def _spacing(rows: pd.DataFrame) -> list[float]:
    return [float(v) for v in str(rows["spacing"].iloc[0]).split("x")] if "spacing" in rows else []


def prediction_table(rows: pd.DataFrame, probs: np.ndarray, split: str, classes: list[str],
                     threshold: float) -> pd.DataFrame:
    table = pd.DataFrame({"split": split, "subject": rows["subject"].to_numpy(),
                          "session": rows["session"].to_numpy() if "session" in rows else "",
                          "label": rows["label"].to_numpy()})
    for c, name in enumerate(classes):
        table[f"p_{name}"] = probs[:, c]
    if len(classes) == 2:
        table["score"] = probs[:, 1]
        table["prediction"] = (probs[:, 1] >= threshold).astype(int)
    else:  # no single score: the threshold is for P(class 1) of two classes
        table["prediction"] = probs.argmax(1)
    return table


def split_report(table: pd.DataFrame, classes: list[str], threshold: float, n_bootstrap: int, seed: int) -> dict:
    """The test metrics of a `prediction_table`: binary at `threshold` with two classes, else K-class."""
    if len(classes) == 2:
        return classification_report(table["label"], table["score"], threshold, n_bootstrap, seed=seed)
    return multiclass_report(table["label"], table[[f"p_{c}" for c in classes]].to_numpy(), classes, n_bootstrap,
                             seed=seed)


def train_classifier(prepared: str | Path, out_dir: str | Path, cfg: Config, *, regime: Regime | str = "real",
                     samples: str | Path | SampleSet | None = None, fold: int | None = None,
                     seed: int | None = None, resume: bool = True, device: str | torch.device | None = None,
                     progress: bool = True) -> dict:
    """Train one classifier (regime, fold, seed) and score the test split; returns the ``result.json`` content.

    `device`: see `neuroldm.runtime.resolve_device` (default: this rank's GPU when there is one, else the CPU).
    """
    ccfg, classes = cfg.classifier, list(cfg.data.classes)
    regime = Regime.parse(regime) if isinstance(regime, str) else regime
    seed = ccfg.train.seed if seed is None else seed
    tcfg = ccfg.train.model_copy(update={"seed": seed})
    out = ClassifierDir(out_dir)

    rows = read_manifest(prepared)
    train, val, test = fold_split(rows, fold)
    for name, part in (("train", train), ("validation", val), ("test", test)):
        if part.empty:
            raise NeuroLDMError(f"{prepared}: the {name} split is empty; the classifier needs train, validation "
                                f"and test subjects (split.val_fraction, split.test_fraction)")
    sample_set = read_sample_manifest(samples) if isinstance(samples, (str, Path)) else samples
    training = regime_rows(regime, train, val, test, sample_set, len(classes), seed)
    with atomic_path(out.training_set) as tmp:
        training.to_csv(tmp, index=False)

    train_set = VolumeDataset(training, ccfg.augment, seed=seed)
    val_set, test_set = VolumeDataset(val), VolumeDataset(test)
    _check_shapes(training[training["source"] == "synthetic"], val_set.shape)
    if tuple(train_set.shape) != tuple(val_set.shape):
        raise InputError(training["path"].iloc[0], f"volume shape {train_set.shape} differs from the validation "
                                                   f"volumes' {val_set.shape}")
    counts = np.bincount(training["label"], minlength=len(classes))
    if (counts == 0).any():
        raise NeuroLDMError(f"regime {regime.name}: no training volume of class "
                            f"{classes[int(np.argmin(counts))]}")
    weights = (1.0 / counts[training["label"]]).tolist() if ccfg.balanced_sampling else None

    torch.manual_seed(seed)
    model = build_classifier(ccfg, len(classes))
    trainer = Trainer(model, tcfg, out.root, dataset=train_set, loss_fn=cross_entropy,
                      validate=_validation(val_set, tcfg.batch_size), monitor="selection", mode="max",
                      sample_weights=weights, patience=ccfg.patience, progress=progress,
                      desc=f"classify {regime.name}" + (f" fold {fold}" if fold is not None else ""),
                      meta={"stage": "classify", "regime": regime.name, "fold": fold, "seed": seed}, device=device)
    summary = trainer.fit(resume=resume)
    if not trainer.world.is_main:
        return {}

    best = out.checkpoints.best
    checkpoint = best if best.exists() else out.checkpoints.last
    state = load_state(checkpoint)
    final = build_classifier(ccfg, len(classes))
    final.load_state_dict(eval_weights(state))
    final.to(trainer.world.device)
    tables = []
    for split, part, dataset in (("val", val, val_set), ("test", test, test_set)):
        tables.append(prediction_table(part, score_dataset(final, dataset, tcfg.batch_size), split, classes,
                                       ccfg.threshold))
    predictions = pd.concat(tables, ignore_index=True)
    v = predictions[predictions["split"] == "val"]
    val_auc = validation_auc(v["label"].to_numpy(), v[[f"p_{c}" for c in classes]].to_numpy())
    info = {"classes": classes, "grid": list(val_set.shape), "spacing": _spacing(rows), "regime": regime.name,
            "fold": fold, "seed": seed, "step": state["step"], "val_auc": val_auc,
            "checkpoint": str(checkpoint), "parameters": count_parameters(final)}
    export_classifier(final, ccfg, out.model, info)
    with atomic_path(out.predictions) as tmp:
        predictions.to_csv(tmp, index=False)
    t = predictions[predictions["split"] == "test"]
    result = {"regime": regime.name, "fold": fold, "seed": seed, "arch": ccfg.arch, "classes": classes,
              "n_train": len(training), "n_train_real": int((training["source"] == "real").sum()),
              "n_train_synthetic": int((training["source"] == "synthetic").sum()),
              "train_class_counts": counts.tolist(), "selected_step": state["step"],
              "val_auc": val_auc, "test": split_report(t, classes, ccfg.threshold, ccfg.bootstrap, seed),
              "train_summary": summary, "samples": str(sample_set.folder) if sample_set else None}
    write_json_atomic(out.result, result)
    return result
