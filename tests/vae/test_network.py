import time

import pytest
import torch

from neuroldm.config import VAEConfig
from neuroldm.errors import ConfigError
from neuroldm.vae.network import (VAE_ARCHS, build_vae, check_grid, decode, downsample_factor, encode_stats,
                                  latent_shape)


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ["demo", "paper"])
def test_shapes_on_a_small_grid(arch):
    torch.manual_seed(0)
    cfg = VAEConfig(arch=arch, latent_channels=4)
    model = build_vae(cfg)
    x = torch.randn(2, 1, 16, 20, 24)
    mu, sigma = encode_stats(model, x)
    assert mu.shape == sigma.shape == (2, *latent_shape((16, 20, 24), cfg)) == (2, 4, 4, 5, 6)
    assert (sigma > 0).all()
    assert decode(model, mu).shape == x.shape
    recon, mu2, sigma2 = model(x)
    assert recon.shape == x.shape and torch.equal(mu2, mu) and torch.equal(sigma2, sigma)


def test_presets_are_the_documented_architectures():
    assert VAE_ARCHS["paper"].channels == (32, 64, 128) and VAE_ARCHS["paper"].num_res_blocks == (1, 1, 1)
    assert VAE_ARCHS["paper"].norm_num_groups == 16
    assert VAE_ARCHS["maisi"].channels == (64, 128, 256) and VAE_ARCHS["maisi"].num_res_blocks == (2, 2, 2)
    # MAISI's official autoencoder has 20.94 M parameters (stack-facts.md, measured with AutoencoderKlMaisi)
    maisi = build_vae(VAEConfig(arch="maisi"))
    assert _n_params(maisi) == 20_944_897
    for arch in VAE_ARCHS:
        model = build_vae(VAEConfig(arch=arch, latent_channels=3))
        assert downsample_factor(model) == 4
        names = [type(m).__name__.lower() for m in model.modules()]
        assert not any("attention" in n or "attnblock" in n for n in names), "no attention anywhere"
        groups = {m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)}
        assert groups == {VAE_ARCHS[arch].norm_num_groups}
        assert model.quant_conv_mu.conv.out_channels == 3


def test_grid_not_divisible_by_four_is_a_config_error():
    expected = r"grid \(112, 134, 112\) is not divisible by 4.*prepare.grid=\[112,136,112\]"
    with pytest.raises(ConfigError, match=expected):
        latent_shape((112, 134, 112), VAEConfig())
    with pytest.raises(ConfigError, match="not divisible by 4"):
        encode_stats(build_vae(VAEConfig(arch="demo")), torch.zeros(1, 1, 16, 18, 16))
    check_grid((52, 64, 56))
    assert latent_shape((112, 136, 112), VAEConfig()) == (4, 28, 34, 28)
    assert latent_shape((52, 64, 56), VAEConfig(latent_channels=8)) == (8, 13, 16, 14)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = build_vae(VAEConfig(arch="demo"))
    ckpt = build_vae(VAEConfig(arch="demo"), grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.use_checkpoint and not plain.use_checkpoint
    x = torch.randn(1, 1, 16, 16, 16)
    grads = []
    for model in (plain, ckpt):
        mu, _ = model.encode(x)
        model.decode(mu).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_paper_arch_at_the_paper_grid():
    """One no-grad pass at 1x1x112x136x112: latent 4x28x34x28 and back (about 24 s on 2 CPU cores)."""
    torch.manual_seed(0)
    model = build_vae(VAEConfig(arch="paper")).eval()
    x = torch.randn(1, 1, 112, 136, 112)
    start = time.perf_counter()
    with torch.no_grad():
        mu, sigma = encode_stats(model, x)
        assert mu.shape == sigma.shape == (1, 4, 28, 34, 28)
        out = decode(model, mu)
    assert out.shape == x.shape and torch.isfinite(out).all()
    print(f"paper arch encode+decode at 112x136x112: {time.perf_counter() - start:.1f} s")
