"""Whole-volume features for a 3D FID: MedicalNet's ResNet-10 (Chen et al. 2019), from a local weights file.

The backbone and its loader are the perceptual loss's (`neuroldm.vae.perceptual`): same architecture, same strict
key check, no download. Each volume is z-scored with its own mean and std (MedicalNet's training input), passed
through the network, and its last stage global-average-pooled to a 512-d vector; the Fréchet distance of those
vectors is the 3D FID. Its scale differs from the 2D Inception FID by orders of magnitude: never compare the two.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from neuroldm.data.dataset import load_prepared_volume
from neuroldm.errors import InputError
from neuroldm.vae.perceptual import MedicalNetResNet10, load_backbone, read_weights

MEDICALNET_DIM = 512


def load_medicalnet(path: str | Path) -> MedicalNetResNet10:
    """MedicalNet ResNet-10 in eval mode from a ``.pth`` (read with ``weights_only``) or ``.safetensors`` file."""
    if not Path(path).is_file():
        raise InputError(path, "MedicalNet weights file not found (evaluate.medicalnet_path; nothing is downloaded)")
    net = MedicalNetResNet10()
    load_backbone(net, read_weights(path), path, ignore_prefixes=("conv_seg.", "fc."),
                  optional_suffixes=("num_batches_tracked",))
    return net.eval()


@torch.no_grad()
def volume_features(net: MedicalNetResNet10, paths: list[str], device: str = "cpu", progress: bool = True,
                    desc: str = "3D features") -> np.ndarray:
    """``(N, 512)`` float64: pooled last-stage MedicalNet features of each volume (z-scored per volume)."""
    net.to(device)
    out = np.zeros((len(paths), MEDICALNET_DIM), np.float64)
    for i, p in enumerate(tqdm(paths, desc=desc, unit="vol", disable=not progress)):
        x = torch.from_numpy(load_prepared_volume(p))
        x = ((x - x.mean()) / x.std().clamp_min(1e-6))[None, None].to(device)
        out[i] = net(x).mean(dim=(2, 3, 4))[0].double().cpu().numpy()
    return out
