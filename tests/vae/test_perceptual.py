import pytest
import torch
from safetensors.torch import save_file

from neuroldm.config import VAEConfig
from neuroldm.errors import ConfigError, InputError
from neuroldm.vae.perceptual import (MedicalNetResNet10, SlicePerceptualLoss, VGG16Features, VolumePerceptualLoss,
                                     build_perceptual)

# torchvision's vgg16().state_dict() names: convs at these indices of `features`, then a 3-layer classifier
TORCHVISION_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


@pytest.fixture(scope="module")
def vgg_files(tmp_path_factory):
    """A random VGG16 saved as torchvision does (plain state dict, classifier included) and as safetensors."""
    torch.manual_seed(0)
    state = VGG16Features().state_dict()
    assert sorted(state) == sorted(f"features.{i}.{p}" for i in TORCHVISION_VGG16_CONVS for p in ("weight", "bias"))
    d = tmp_path_factory.mktemp("vgg")
    pth, st = d / "vgg16-397923af.pth", d / "vgg16.safetensors"
    torch.save({**state, "classifier.0.weight": torch.zeros(4, 8), "classifier.0.bias": torch.zeros(4)}, pth)
    save_file(state, str(st))
    return state, pth, st


@pytest.fixture(scope="module")
def medicalnet_file(tmp_path_factory):
    """A random ResNet-10 saved as MedicalNet's files are: {"state_dict": {"module.<name>": ...}} + seg head."""
    torch.manual_seed(1)
    net = MedicalNetResNet10()
    for m in net.modules():  # non-trivial BatchNorm statistics, so that loading them matters
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    state = net.state_dict()
    path = tmp_path_factory.mktemp("mednet") / "resnet_10_23dataset.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()} |
                {"module.conv_seg.0.weight": torch.zeros(2, 512, 1, 1, 1)}}, path)
    return state, path


def _cfg(mode, path, slices=2):
    return VAEConfig(perceptual=mode, perceptual_weight=1.0, perceptual_weights_path=str(path),
                     perceptual_slices=slices)


def _pair(shape=(2, 1, 24, 28, 20), seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g)
    recon = (target + 0.2 * torch.randn(shape, generator=g)).requires_grad_(True)
    return recon, target


def _assert_zero_when_equal_and_trains_only_the_input(loss, recon, target):
    """0 for identical volumes, > 0 otherwise; the gradient reaches the reconstruction, never the backbone."""
    assert loss(target.clone(), target).item() == 0.0
    value = loss(recon, target)
    assert value.item() > 0
    value.backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.backbone.parameters())


@pytest.mark.parametrize("which", ["pth", "safetensors"])
def test_vgg_weights_load_strictly_from_either_format(vgg_files, which):
    state, pth, st = vgg_files
    loss = build_perceptual(_cfg("2.5d", pth if which == "pth" else st))
    assert isinstance(loss, SlicePerceptualLoss)
    for k, v in loss.backbone.state_dict().items():
        assert torch.equal(v, state[k])


def test_a_file_that_does_not_match_the_backbone_is_refused(vgg_files, tmp_path):
    state, _, _ = vgg_files
    missing = dict(state)
    del missing["features.28.bias"]
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(InputError, match="missing: features.28.bias"):
        build_perceptual(_cfg("2.5d", tmp_path / "missing.safetensors"))
    wrong = dict(state)
    wrong["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(InputError, match="wrong shape: features.0.weight"):
        build_perceptual(_cfg("2.5d", tmp_path / "wrong.safetensors"))
    (tmp_path / "junk.pth").write_bytes(b"not a weights file")
    with pytest.raises(InputError, match="not a readable weights file"):
        build_perceptual(_cfg("2.5d", tmp_path / "junk.pth"))


def test_missing_weights_file_says_what_to_do_on_one_line(tmp_path):
    for path in (None, tmp_path / "nowhere.pth"):
        cfg = VAEConfig(perceptual="2.5d", perceptual_weight=0.6,
                        perceptual_weights_path=None if path is None else str(path))
        with pytest.raises(ConfigError) as err:
            build_perceptual(cfg)
        msg = str(err.value)
        assert "\n" not in msg
        assert "vgg16-397923af.pth" in msg
        assert "--set vae.perceptual_weights_path=/path/to/vgg16-397923af.pth" in msg
        assert "--set vae.perceptual=none" in msg
        if path is not None:
            assert str(path) in msg
    with pytest.raises(ConfigError, match="resnet_10_23dataset.pth"):
        build_perceptual(VAEConfig(perceptual="3d", perceptual_weight=0.6))
    assert build_perceptual(VAEConfig(perceptual="none")) is None
    assert build_perceptual(VAEConfig(perceptual="2.5d", perceptual_weight=0.0)) is None


def test_slice_loss_is_zero_for_equal_inputs_positive_otherwise_and_trains_only_the_input(vgg_files):
    loss = build_perceptual(_cfg("2.5d", vgg_files[2]))
    loss.train()  # a training loop may call .train() on everything: the backbone must stay frozen
    assert not loss.backbone.training
    assert not any(p.requires_grad for p in loss.parameters())
    _assert_zero_when_equal_and_trains_only_the_input(loss, *_pair(shape=(1, 1, 16, 20, 16)))


def test_slice_loss_runs_the_backbone_on_only_the_requested_slices(vgg_files):
    loss = build_perceptual(_cfg("2.5d", vgg_files[2], slices=3))
    calls = []
    loss.backbone.register_forward_hook(lambda m, inp, out: calls.append(tuple(inp[0].shape)))
    recon, target = _pair(shape=(2, 1, 24, 28, 20))
    loss(recon.detach(), target)
    # per axis: one call on the reconstruction slices and one on the target slices, each B * slices = 6 images
    assert calls == [(6, 3, 28, 20)] * 2 + [(6, 3, 24, 20)] * 2 + [(6, 3, 24, 28)] * 2


def test_slice_loss_only_sees_the_chosen_slices(vgg_files):
    """Changing the reconstruction outside the drawn slices does not change the loss (global torch RNG)."""
    loss = build_perceptual(_cfg("2.5d", vgg_files[2], slices=1))
    recon, target = _pair(shape=(1, 1, 16, 16, 16))
    recon = recon.detach()
    torch.manual_seed(5)
    base = loss(recon, target)
    torch.manual_seed(5)
    drawn = [torch.randperm(16)[:1].item() for _ in range(3)]
    keep = torch.zeros(16, 16, 16, dtype=torch.bool)
    keep[drawn[0], :, :] = keep[:, drawn[1], :] = keep[:, :, drawn[2]] = True
    changed = torch.where(keep, recon, recon + 1.0)
    torch.manual_seed(5)
    assert loss(changed, target).item() == pytest.approx(base.item(), rel=1e-6)


def test_slice_loss_is_reproducible_under_a_seed(vgg_files):
    """Same generator seed, same slices, same value (the global-RNG case is in the test above)."""
    recon, target = _pair(shape=(1, 1, 16, 20, 16))
    recon = recon.detach()
    loss = build_perceptual(_cfg("2.5d", vgg_files[2]))
    values = []
    for seed in (7, 7, 8):
        loss.generator = torch.Generator().manual_seed(seed)
        values.append(loss(recon, target).item())
    assert values[0] == values[1] and values[0] != values[2]


def test_medicalnet_weights_load_and_the_3d_loss_behaves(medicalnet_file):
    state, path = medicalnet_file
    loss = build_perceptual(_cfg("3d", path))
    assert isinstance(loss, VolumePerceptualLoss)
    for k, v in loss.backbone.state_dict().items():
        assert torch.equal(v, state[k])
    loss.train()
    assert not loss.backbone.training, "BatchNorm must keep its running statistics"
    recon, target = _pair(shape=(1, 1, 32, 32, 32))
    assert loss.backbone(target).shape == (1, 512, 4, 4, 4)  # stride 8: layers 3 and 4 dilate, not stride
    _assert_zero_when_equal_and_trains_only_the_input(loss, recon, target)
