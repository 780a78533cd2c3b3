"""The 3D DiT: shapes with padding, adaLN-Zero at init, classifier-free guidance, registry, position codes."""

import numpy as np
import pytest
import torch

from neuroldm.diffusion.dit import DIT_MODELS, build_dit
from neuroldm.diffusion.layers import sincos_1d, sincos_3d


def tiny(**kw):
    args = dict(patch=(2, 4, 2), window=(2, 2, 2), global_every=2, depth=4, hidden=48, heads=4)
    args.update(kw)
    return build_dit("DiT-S/2", (5, 6, 7), 4, 2, **args)


def test_output_matches_input_size_when_axes_are_not_multiples_of_the_patch():
    torch.manual_seed(0)
    m = tiny()
    assert m.x_embedder.grid == (3, 2, 4) and m.x_embedder.pad == (1, 2, 1)
    x = torch.randn(3, 4, 5, 6, 7)
    assert m(x, torch.tensor([0, 10, 999]), torch.tensor([0, 1, 1])).shape == x.shape


def test_adaln_zero_init_outputs_zero_and_blocks_are_identity():
    torch.manual_seed(0)
    m = tiny()
    x, t, y = torch.randn(2, 4, 5, 6, 7), torch.tensor([3, 500]), torch.tensor([0, 1])
    assert torch.count_nonzero(m(x, t, y)) == 0
    h = torch.randn(2, m.x_embedder.num_tokens, 48)
    c = torch.randn(2, 48)
    assert all(torch.equal(block(h, c), h) for block in m.blocks)


def test_layout_uses_windows_shifts_and_global_blocks():
    m = tiny()
    assert m.layout == [((2, 2, 2), False), (None, False), ((2, 2, 2), False), (None, False)]
    m = tiny(global_every=0)
    assert [s for _, s in m.layout] == [False, True, False, True]
    assert all(b.attn.window == (2, 2, 2) for b in m.blocks)
    assert all(b.attn.window is None for b in tiny(window=None).blocks)


def _trained_like(m):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def test_guidance_acts_on_every_channel():
    m = _trained_like(tiny())
    x, t, y = torch.randn(2, 4, 5, 6, 7), torch.tensor([100, 700]), torch.tensor([1, 0])
    cond = m(x, t, y)
    uncond = m(x, t, y, force_drop=torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(m.forward_with_cfg(x, t, y, 1.0), cond)
    guided = m.forward_with_cfg(x, t, y, 3.0)
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), rtol=1e-4, atol=1e-5)
    # the seed guided only the first 3 of 4 channels: here the 4th moves too
    assert not torch.allclose(guided[:, 3], cond[:, 3])


def test_label_dropout_uses_the_null_class_in_training_only():
    m = tiny(class_dropout=0.5)
    y = torch.zeros(4000, dtype=torch.long)
    torch.manual_seed(0)
    m.y_embedder.train()
    emb = m.y_embedder(y)
    null = (emb == m.y_embedder.table.weight[2]).all(1).float().mean()
    assert 0.45 < float(null) < 0.55
    m.y_embedder.eval()
    assert torch.equal(m.y_embedder(y[:5]), m.y_embedder.table.weight[[0] * 5])
    with pytest.raises(ValueError, match="no null class"):
        tiny(class_dropout=0.0).forward_with_cfg(torch.randn(1, 4, 5, 6, 7), torch.tensor([1]),
                                                 torch.tensor([0]), 2.0)


def test_registry_matches_dit_table_and_seed_parameter_count():
    assert (DIT_MODELS["DiT-S/4"].depth, DIT_MODELS["DiT-S/4"].hidden, DIT_MODELS["DiT-S/4"].heads) == (12, 384, 6)
    assert (DIT_MODELS["DiT-XL/2"].depth, DIT_MODELS["DiT-XL/2"].hidden) == (28, 1152)
    # the seed's DiT-S/4 with patch (4, 2, 4) on 4x28x34x28 latents: about 32.6 M parameters
    m = build_dit("DiT-S/4", (28, 34, 28), 4, 2, patch=(4, 2, 4), window=(4, 4, 4))
    assert m.x_embedder.grid == (7, 17, 7)
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(32.6e6, rel=0.01)


def test_sincos_codes():
    pos = np.array([0.0, 1.0, 5.0])
    code = sincos_1d(8, pos)
    omega = 1 / 10000 ** (np.arange(4) / 4)
    np.testing.assert_allclose(code[2], np.concatenate([np.sin(5 * omega), np.cos(5 * omega)]))
    grid = sincos_3d(48, (2, 3, 4))
    assert grid.shape == (24, 48)
    # token (d, h, w) = (1, 2, 3) is row 1*12 + 2*4 + 3; each axis owns a third of the channels
    np.testing.assert_allclose(grid[1 * 12 + 2 * 4 + 3], np.concatenate(
        [sincos_1d(16, np.array([1.0]))[0], sincos_1d(16, np.array([2.0]))[0], sincos_1d(16, np.array([3.0]))[0]]))
    assert len({tuple(r) for r in grid.round(6)}) == 24


@pytest.mark.parametrize("size,patch,window", [((28, 34, 28), (4, 2, 4), (4, 4, 4)),   # paper latents, seed patch
                                               ((28, 34, 28), (2, 2, 2), (4, 4, 4)),   # paper preset
                                               ((10, 12, 10), (2, 2, 2), (3, 3, 3))])  # demo latents
def test_output_shape_equals_input_at_paper_and_demo_sizes(size, patch, window):
    m = build_dit("tiny", size, 4, 2, patch=patch, window=window, hidden=24, heads=2)
    x = torch.randn(1, 4, *size)
    assert m(x, torch.tensor([5]), torch.tensor([1])).shape == x.shape


def test_a_tiny_model_overfits_two_latents():
    from neuroldm.config import DiffusionConfig, SampleConfig
    from neuroldm.diffusion.process import diffusion_loss, sample_latents, training_scheduler

    torch.manual_seed(0)
    cfg = DiffusionConfig(prediction="v_prediction", class_dropout=0.0)
    data = torch.randn(2, 2, 4, 4, 4)
    y = torch.tensor([0, 1])
    m = build_dit("tiny", (4, 4, 4), 2, 2, patch=(2, 2, 2), window=(1, 2, 2), class_dropout=0.0, hidden=64,
                  depth=3, heads=4)
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    sched = training_scheduler(cfg)
    losses = []
    for _ in range(250):
        loss = diffusion_loss(m, sched, cfg, data.repeat(8, 1, 1, 1, 1), y.repeat(8))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert sum(losses[-20:]) / 20 < 0.1 * sum(losses[:20]) / 20
    m.eval()
    out = sample_latents(m, cfg, y, torch.randn(2, 2, 4, 4, 4, generator=torch.Generator().manual_seed(1)),
                         SampleConfig(sampler="ddim", steps=20))
    # each class's sample lands near its own training latent, farther from the other's
    d = torch.cdist(out.flatten(1), data.flatten(1))
    assert d[0, 0] < 0.5 * d[0, 1] and d[1, 1] < 0.5 * d[1, 0]


def _loss_and_grads(model, seed=0):
    """One training forward (label dropout on) and backward of `model` on fixed inputs, under seed `seed`."""
    torch.manual_seed(seed)
    x, t, y = torch.randn(2, 4, 5, 6, 7), torch.tensor([3, 700]), torch.tensor([0, 1])
    model.train()
    loss = (model(x, t, y) - x).pow(2).mean()
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_loss_and_gradients_and_recomputes_each_block():
    from neuroldm.config import DiffusionConfig, TrainConfig
    from neuroldm.diffusion.weights import dit_from_config

    runs = {}
    for on in (False, True):
        cfg = DiffusionConfig(model="tiny", patch=(2, 4, 2), window=(2, 2, 2), class_dropout=0.5,
                              train=TrainConfig(grad_checkpointing=on))
        torch.manual_seed(0)
        m = _trained_like(dit_from_config(cfg, (4, 5, 6, 7), 2))  # non-zero gates: gradients reach every block
        assert m.grad_checkpointing is on  # the diffusion.train key builds it
        calls = []
        m.blocks[0].register_forward_pre_hook(lambda *_, seen=calls: seen.append(1))
        runs[on] = (*_loss_and_grads(m), len(calls))
    (loss_off, grads_off, calls_off), (loss_on, grads_on, calls_on) = runs[False], runs[True]
    assert (calls_off, calls_on) == (1, 2)  # checkpointed: the block runs again in the backward pass
    # the same operations on the same inputs: equal to float32 round-off (rtol 1e-6, atol 1e-8)
    torch.testing.assert_close(loss_on, loss_off, rtol=1e-6, atol=1e-8)
    assert grads_on.keys() == grads_off.keys() and len(grads_on) == len(list(m.parameters()))
    for k in grads_off:
        torch.testing.assert_close(grads_on[k], grads_off[k], rtol=1e-6, atol=1e-8, msg=k)


def test_the_seed_dit_s4_trains_on_the_paper_latent():
    """The seed's DiT-S/4 with patch (4, 2, 4) on 4x28x34x28 latents (833 tokens, global attention): one forward
    and backward pass of one latent."""
    torch.manual_seed(0)
    m = _trained_like(build_dit("DiT-S/4", (28, 34, 28), 4, 2, patch=(4, 2, 4))).train()
    assert m.x_embedder.num_tokens == 833 and all(b.attn.window is None for b in m.blocks)
    x = torch.randn(1, 4, 28, 34, 28)
    out = m(x, torch.tensor([500]), torch.tensor([1]))
    assert out.shape == x.shape
    (out - x).pow(2).mean().backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in m.parameters())
