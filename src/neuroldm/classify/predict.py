"""A trained classifier as one file, and the public API to score volumes with it.

``model.safetensors`` holds the evaluation weights plus, in its metadata, the `ClassifierConfig` that built the
network, the class names and the grid and spacing it was trained on. Other stages (the generative evaluation
checks that synthetic volumes are classified as the label they were sampled for) use only::

    model, info = load_classifier("RUN")                   # or RUN/classifier, or the .safetensors file
    probs = predict_proba(model, volumes)                  # (B, 1, D, H, W) -> (B, n_classes), rows sum to 1

``info`` holds ``classes``, ``grid``, ``spacing``, ``arch``, ``regime``, ``sha256`` and the training summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from neuroldm.classify.network import build_classifier
from neuroldm.config import ClassifierConfig
from neuroldm.errors import InputError
from neuroldm.io import load_weights, save_weights_atomic, verified_sha256
from neuroldm.runs import ClassifierDir, RunDir, model_record


def export_classifier(model: nn.Module, cfg: ClassifierConfig, path: str | Path, info: dict) -> Path:
    """Write `model`'s weights with its config and `info` (must hold ``classes``, ``grid``, ``spacing``)."""
    missing = {"classes", "grid", "spacing"} - set(info)
    if missing:
        raise ValueError(f"classifier info lacks {sorted(missing)}")
    return save_weights_atomic(model, path, {"classifier_config": cfg.model_dump_json(), "info": json.dumps(info)},
                               record=model_record(path))


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """``(model in eval mode, info)`` from a classifier file, a folder holding ``model.safetensors``, or a run
    directory (its ``classifier/model.safetensors``)."""
    path = Path(path)
    if path.is_dir():
        in_run = RunDir(path).classifier.model
        path = in_run if in_run.exists() else ClassifierDir(path).model
    if not path.exists():
        raise InputError(path, "no trained classifier; run `neuroldm classify` first")
    digest = verified_sha256(path, model_record(path))  # a damaged file is refused before it is used
    state, metadata = load_weights(path, device, required_key="classifier_config", what="classifier")
    cfg = ClassifierConfig.model_validate_json(metadata["classifier_config"])
    info = json.loads(metadata.get("info", "{}"))
    model = build_classifier(cfg, num_classes=len(info["classes"]))
    model.load_state_dict(state)  # strict: a mismatch is an error, never a half-loaded model
    info.update(arch=cfg.arch, config=cfg.model_dump(mode="json"), sha256=digest, path=str(path))
    return model.to(device).eval(), info


@torch.no_grad()
def predict_proba(model: nn.Module, volumes: torch.Tensor, batch_size: int = 4) -> torch.Tensor:
    """Class probabilities ``(B, n_classes)`` (softmax of the logits) of volumes ``(B, 1, D, H, W)``.

    The model is put in eval mode (dropout and stochastic depth off, BatchNorm running statistics); inputs go
    to the model's device in chunks of `batch_size`; the result is float32 on the CPU.
    """
    if volumes.ndim != 5 or volumes.shape[1] != 1:
        raise ValueError(f"expected volumes of shape (B, 1, D, H, W), got {tuple(volumes.shape)}")
    model.eval()
    device = next(model.parameters()).device
    out = [torch.softmax(model(chunk.to(device, torch.float32)).float(), dim=1).cpu()
           for chunk in volumes.split(batch_size)]
    return torch.cat(out)
