"""Build the configured classifier network: ``classifier.arch`` -> an `nn.Module` mapping (B, 1, D, H, W) to logits."""

from __future__ import annotations

from torch import nn

from neuroldm.classify.cnn import PlainCNN3d
from neuroldm.classify.efficientnet import EfficientNetV2
from neuroldm.config import ClassifierConfig


def build_classifier(cfg: ClassifierConfig, num_classes: int) -> nn.Module:
    """The network of ``cfg.arch`` (``classifier.train.grad_checkpointing`` applies in training only)."""
    if cfg.arch == "cnn":
        return PlainCNN3d(num_classes=num_classes, dropout=cfg.dropout, norm=cfg.norm)
    preset = cfg.arch.removeprefix("efficientnetv2-")
    return EfficientNetV2(preset, num_classes=num_classes, dropout=cfg.dropout,
                          stochastic_depth=cfg.stochastic_depth, norm=cfg.norm,
                          grad_checkpointing=cfg.train.grad_checkpointing)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
