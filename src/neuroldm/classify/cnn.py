"""A small plain 3D CNN: the baseline every EfficientNetV2 result is compared with.

Four levels of two 3×3×3 convolutions (norm, ReLU) followed by 2× max pooling, then global average pooling,
dropout and a linear layer. No residuals, no squeeze-excitation: if it matches the V2 network on a cohort, the
extra machinery buys nothing there.
"""

from __future__ import annotations

import torch
from torch import nn

from neuroldm.classify.efficientnet import norm_layer


class PlainCNN3d(nn.Module):
    """``forward((B, C, D, H, W)) -> (B, num_classes)`` logits."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, channels: tuple[int, ...] = (16, 32, 64, 128),
                 dropout: float = 0.3, norm: str = "batch"):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, cout in enumerate(channels):
            for j in range(2):
                layers += [nn.Conv3d(cin if j == 0 else cout, cout, 3, padding=1, bias=False), norm_layer(norm, cout),
                           nn.ReLU(inplace=True)]
            if i < len(channels) - 1:
                layers.append(nn.MaxPool3d(2))
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool3d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))
