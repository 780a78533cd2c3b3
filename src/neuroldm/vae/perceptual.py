"""Perceptual losses that work offline, from a local weights file.

Two modes (``cfg.vae.perceptual``):

- ``"2.5d"``: an ImageNet VGG16 (Simonyan & Zisserman 2015) applied to a *few* random 2D slices per axis and per
  call (``cfg.perceptual_slices``), compared LPIPS-style (Zhang et al. 2018, arXiv:1801.03924) at the five
  ``relu*_*`` stages LPIPS uses: features unit-normalised over channels, squared difference summed over channels,
  averaged over space, summed over stages. No learned linear heads (LPIPS's "baseline" variant). The seed
  back-propagated through all 360 slices of every volume; a few random slices per step give an unbiased estimate
  of the same mean at a fraction of the cost (4 slices per axis at 112x136x112: 5.9 s forward + backward on 2
  CPU cores, measured with random weights; the 3D mode below: 7.5 s). The VGG16 ``features`` stack is written
  here in plain torch with torchvision's layout and parameter names (``features.N.weight``), so torchvision's
  own ImageNet file ``vgg16-397923af.pth`` (a plain state dict) loads without torchvision.
- ``"3d"``: MedicalNet's ResNet-10 (Chen et al. 2019, arXiv:1904.00625) on the whole volume, compared at its
  last stage as in MONAI's ``MedicalNetPerceptualSimilarity``. Written here because MedicalNet's ResNet dilates
  its last two stages (dilation 2 and 4, stride 1), which ``monai.networks.nets.resnet10`` cannot express; the
  parameter names match MedicalNet's files (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...; a
  ``module.`` prefix from DataParallel and a ``{"state_dict": ...}`` wrapper are accepted).

Both backbones are frozen (eval mode, no parameter gradients); the gradient flows to the reconstruction only.
Weights come only from ``cfg.perceptual_weights_path``: nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from neuroldm.config import VAEConfig
from neuroldm.errors import ConfigError, InputError

# ImageNet statistics of torchvision's VGG16 training (inputs in [0, 1], RGB).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

EXPECTED_FILES = {
    "2.5d": ("vgg16-397923af.pth", "torchvision's ImageNet VGG16"),
    "3d": ("resnet_10_23dataset.pth", "MedicalNet's ResNet-10 (23 datasets)"),
}


# --------------------------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------------------------

def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or of a ``torch.save``-d state dict (read with ``weights_only=True``).

    A ``{"state_dict": ...}`` wrapper (MedicalNet's files) is unwrapped and a ``module.`` prefix (DataParallel)
    removed.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any damaged or foreign file: say which one, on one line
        raise InputError(path, f"not a readable weights file ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(path, f"expected a state dict of tensors, found {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_backbone(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path,
                  ignore_prefixes: Sequence[str] = (), optional_suffixes: Sequence[str] = ()) -> None:
    """Load `state` into `module`, strictly: every parameter and buffer must be there with its shape.

    Keys starting with one of `ignore_prefixes` (heads the backbone does not use: VGG's ``classifier.``,
    MedicalNet's ``conv_seg.``) are dropped first; module keys ending in one of `optional_suffixes` may be absent
    (``num_batches_tracked``, which older BatchNorm files lack).
    """
    state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore_prefixes))}
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(tuple(optional_suffixes))]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{name}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise InputError(path, f"does not match the {type(module).__name__} backbone ({'; '.join(parts)})")
    module.load_state_dict({**own, **state}, strict=True)


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _unit_normalise(f: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    # LPIPS Eq. 1: unit length over channels. eps inside the sqrt keeps the gradient finite at zero features.
    return f / torch.sqrt(f.pow(2).sum(1, keepdim=True) + eps)


def _feature_distance(fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """Per-sample LPIPS baseline distance of two ``(N, C, *spatial)`` feature maps: shape ``(N,)``."""
    d = (_unit_normalise(fx) - _unit_normalise(fy)).pow(2).sum(1)
    return d.flatten(1).mean(1)


# --------------------------------------------------------------------------------------------------------------
# 2.5D: VGG16 on random slices
# --------------------------------------------------------------------------------------------------------------

# torchvision's VGG16 "D" configuration: numbers are 3x3 conv widths, "M" a 2x2 max-pool.
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# indices in `features` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: the stages LPIPS compares
VGG16_LPIPS_STAGES = (3, 8, 15, 22, 29)


class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` in plain torch: same layer indices, same parameter names.

    `forward` takes ``(N, 3, H, W)`` ImageNet-normalised images and returns the activations after each layer in
    `stages` (a list of ``(N, C_s, H_s, W_s)``), stopping at the last one.
    """

    def __init__(self, stages: Sequence[int] = VGG16_LPIPS_STAGES):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for v in _VGG16_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.stages = tuple(sorted(stages))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.stages:
                out.append(x)
                if i == self.stages[-1]:
                    break
        return out


class SlicePerceptualLoss(nn.Module):
    """2.5D perceptual loss: LPIPS-style VGG16 distance on `slices` random slices per axis of each call.

    `forward(recon, target)` takes two ``(B, 1, D, H, W)`` volumes and returns a scalar: the distance averaged over
    the three axes, the chosen slices and the batch. Per axis the same slice indices serve the whole batch; they are
    drawn with `generator` (or the global torch RNG when None), so a seed makes the loss reproducible. The backbone
    runs once per axis on the ``B·slices`` reconstruction slices (with gradient) and once on the target slices
    (without).

    Intensity mapping: each target volume's min–max (detached) maps it to [0, 1]; the *same* affine map is applied
    to its reconstruction (so both are measured on one scale and no gradient flows through the range); the gray
    value is repeated to 3 channels and standardised with the ImageNet mean and std.
    """

    def __init__(self, backbone: VGG16Features, slices: int = 4, generator: torch.Generator | None = None):
        super().__init__()
        self.backbone = _freeze(backbone)
        self.slices = int(slices)
        self.generator = generator
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> SlicePerceptualLoss:
        super().train(mode)
        self.backbone.eval()  # frozen: never switch to training behaviour
        return self

    def _to_imagenet(self, s: torch.Tensor) -> torch.Tensor:
        return (s.expand(-1, 3, -1, -1) - self.mean) / self.std

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        b = target.shape[0]
        lo = target.detach().flatten(1).amin(1).view(b, 1, 1, 1, 1)
        span = (target.detach().flatten(1).amax(1).view(b, 1, 1, 1, 1) - lo).clamp_min(1e-6)
        x, y = (recon - lo) / span, (target - lo) / span
        per_axis = []
        for axis in (2, 3, 4):
            n = x.shape[axis]
            k = min(self.slices, n)
            idx = torch.randperm(n, generator=self.generator)[:k].to(x.device)
            sx = x.index_select(axis, idx).movedim(axis, 1).flatten(0, 1)  # (B·k, 1, ., .)
            sy = y.index_select(axis, idx).movedim(axis, 1).flatten(0, 1)
            fx = self.backbone(self._to_imagenet(sx))
            with torch.no_grad():
                fy = self.backbone(self._to_imagenet(sy))
            per_axis.append(sum(_feature_distance(a, c) for a, c in zip(fx, fy)).mean())
        return torch.stack(per_axis).mean()


# --------------------------------------------------------------------------------------------------------------
# 3D: MedicalNet ResNet-10
# --------------------------------------------------------------------------------------------------------------

class _BasicBlock3d(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:  # MedicalNet's shortcut type "B": 1x1x1 conv + BN
            self.downsample = nn.Sequential(nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False),
                                            nn.BatchNorm3d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class MedicalNetResNet10(nn.Module):
    """MedicalNet's 3D ResNet-10 feature extractor: ``(N, 1, D, H, W)`` → ``(N, 512, D/8, H/8, W/8)``.

    Stem: 7³ conv stride 2 + BN + ReLU + 3³ max-pool stride 2; stages of one basic block each with 64, 128
    (stride 2), 256 (dilation 2) and 512 (dilation 4) channels, as in Tencent/MedicalNet ``models/resnet.py``.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv3d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = nn.Sequential(_BasicBlock3d(64, 64))
        self.layer2 = nn.Sequential(_BasicBlock3d(64, 128, stride=2))
        self.layer3 = nn.Sequential(_BasicBlock3d(128, 256, dilation=2))
        self.layer4 = nn.Sequential(_BasicBlock3d(256, 512, dilation=4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class VolumePerceptualLoss(nn.Module):
    """3D perceptual loss: LPIPS-style distance of MedicalNet ResNet-10 features of two ``(B, 1, D, H, W)``
    volumes, returned as a scalar (batch mean).

    Intensity mapping: MedicalNet was trained on volumes z-scored with their own mean and std; here the target's
    (detached) mean and std standardise both volumes, so they are compared on one scale.
    """

    def __init__(self, backbone: MedicalNetResNet10):
        super().__init__()
        self.backbone = _freeze(backbone)

    def train(self, mode: bool = True) -> VolumePerceptualLoss:
        super().train(mode)
        self.backbone.eval()  # BatchNorm must keep its running statistics
        return self

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        b = target.shape[0]
        t = target.detach().flatten(1)
        mean, std = t.mean(1).view(b, 1, 1, 1, 1), t.std(1).view(b, 1, 1, 1, 1).clamp_min(1e-6)
        fx = self.backbone((recon - mean) / std)
        with torch.no_grad():
            fy = self.backbone((target - mean) / std)
        return _feature_distance(fx, fy).mean()


# --------------------------------------------------------------------------------------------------------------
# From a config
# --------------------------------------------------------------------------------------------------------------

def backbone_weights_path(cfg: VAEConfig) -> Path:
    """The local weights file of the perceptual backbone; missing, an `InputError` naming both ways out (give the
    file, or turn the term off). `neuroldm.preflight` calls it before any work, `build_perceptual` when building."""
    filename, what = EXPECTED_FILES[cfg.perceptual]
    found = "not set" if cfg.perceptual_weights_path is None else f"'{cfg.perceptual_weights_path}' does not exist"
    if cfg.perceptual_weights_path is None or not Path(cfg.perceptual_weights_path).is_file():
        raise ConfigError(
            f"vae.perceptual={cfg.perceptual} needs a local copy of {what} weights ({filename}; nothing is downloaded) "
            f"and vae.perceptual_weights_path is {found}: put the file on this machine and pass "
            f"--set vae.perceptual_weights_path=/path/to/{filename}, or run without the term with "
            f"--set vae.perceptual=none")
    return Path(cfg.perceptual_weights_path)


def build_perceptual(cfg: VAEConfig, generator: torch.Generator | None = None) -> nn.Module | None:
    """The frozen perceptual loss module of ``cfg.perceptual``, or None when it is "none" or its weight is 0.

    `generator` draws the 2.5D slices (None: the global torch RNG). Raises `ConfigError` when the weights file
    is not set or not found, and `InputError` when the file does not match the backbone.
    """
    if cfg.perceptual == "none" or cfg.perceptual_weight <= 0:
        return None
    path = backbone_weights_path(cfg)
    state = read_weights(path)
    if cfg.perceptual == "2.5d":
        vgg = VGG16Features()
        load_backbone(vgg, state, path, ignore_prefixes=("classifier.",))
        return SlicePerceptualLoss(vgg, slices=cfg.perceptual_slices, generator=generator)
    net = MedicalNetResNet10()
    load_backbone(net, state, path, ignore_prefixes=("conv_seg.", "fc."), optional_suffixes=("num_batches_tracked",))
    return VolumePerceptualLoss(net)
