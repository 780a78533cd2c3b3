"""The 3D EfficientNetV2: shapes and parameter counts of every preset, stochastic depth, the block layout."""

import pytest
import torch

from neuroldm.classify.cnn import PlainCNN3d
from neuroldm.classify.efficientnet import PRESETS, EfficientNetV2, MBConv, SqueezeExcite, StochasticDepth

# 3D parameter counts with 2 classes (the paper's 2D V2-S/M/L have 21.5/54.1/118.5 M with 1000 classes)
PARAMS = {"tiny": 418_686, "s": 22_397_650, "m": 56_776_566, "l": 125_493_218}


@pytest.mark.parametrize("preset", ["s", "m", "l"])
def test_large_presets_shapes_and_parameter_counts(preset):
    with torch.device("meta"):  # no memory, no compute: the shapes and counts are exact all the same
        model = EfficientNetV2(preset, num_classes=2)
        out = model(torch.empty(2, 1, 40, 48, 40))
        feats = model.features(torch.empty(2, 1, 40, 48, 40))
    assert out.shape == (2, 2) and feats.shape == (2, 1280)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[preset]


def test_tiny_runs_on_a_small_grid_and_counts_parameters():
    torch.manual_seed(0)
    model = EfficientNetV2("tiny", num_classes=3).eval()
    x = torch.randn(1, 1, 40, 48, 40)
    assert model(x).shape == (1, 3)
    assert sum(p.numel() for p in EfficientNetV2("tiny").parameters()) == PARAMS["tiny"]
    # the stem and four stages each halve the grid: 32x downsampling (ceil)
    assert model.blocks(model.stem(x)).shape[2:] == (2, 2, 2)


def test_stage_layout_is_fused_early_and_mbconv_with_se_later():
    with torch.device("meta"):
        model = EfficientNetV2("s")
    kinds = [s.block for s in PRESETS["s"].stages]
    assert kinds == ["fused"] * 3 + ["mbconv"] * 3
    blocks = list(model.blocks)
    assert len(blocks) == sum(s.layers for s in PRESETS["s"].stages) == 40
    first, last = blocks[0], blocks[-1]
    assert not any(isinstance(m, SqueezeExcite) for m in first.modules())
    assert any(isinstance(m, SqueezeExcite) for m in last.modules())
    depthwise = [m for m in last.modules() if isinstance(m, torch.nn.Conv3d) and m.groups > 1]
    assert len(depthwise) == 1 and depthwise[0].groups == depthwise[0].in_channels
    # drop rates grow linearly to (not including) the configured rate
    rates = [b.drop.rate for b in blocks if isinstance(b.drop, StochasticDepth)]
    assert rates == sorted(rates) and rates[0] < 0.02 and 0.19 < rates[-1] < 0.2


def test_stochastic_depth_drops_whole_samples_in_training_and_is_identity_in_eval():
    sd = StochasticDepth(0.5)
    x = torch.ones(4000, 2, 3, 3, 3)
    torch.manual_seed(0)
    y = sd.train()(x)
    per_sample = y.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}  # dropped or scaled by 1/(1-p), per sample
    assert (per_sample.min(1).values == per_sample.max(1).values).all()
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.5) < 0.03
    assert abs(y.mean().item() - 1.0) < 0.05  # unbiased
    assert torch.equal(sd.eval()(x), x)


def test_residual_branch_really_dropped_in_training():
    torch.manual_seed(0)
    block = MBConv(8, 8, expand=4, stride=1, kernel=3, se_ratio=0.25, fused=False, drop=0.99, norm="group")
    x = torch.randn(64, 8, 4, 4, 4)
    block.train()
    y = block(x)
    same = [(torch.equal(y[i], x[i])) for i in range(64)]
    assert sum(same) > 50  # ~99% of samples skip the branch entirely: output == input
    block.eval()
    assert not torch.equal(block(x), x)  # eval: the branch always contributes


def test_model_is_deterministic_in_eval_and_random_in_train():
    torch.manual_seed(0)
    model = EfficientNetV2("tiny", stochastic_depth=0.5, dropout=0.0, norm="group")
    x = torch.randn(2, 1, 16, 16, 16)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    outs = [model(x) for _ in range(3)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_plain_cnn_baseline_shapes():
    model = PlainCNN3d(num_classes=2, norm="group").eval()
    assert model(torch.randn(1, 1, 24, 32, 24)).shape == (1, 2)


def _train_pass(model, seed=0):
    """One training forward (stochastic depth and dropout on) and backward on a fixed batch, under seed `seed`."""
    torch.manual_seed(seed)
    x, y = torch.randn(2, 1, 32, 36, 32), torch.tensor([0, 1])
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    return loss.detach(), grads, {k: b.clone() for k, b in model.named_buffers()}


def test_gradient_checkpointing_gives_the_same_loss_gradients_and_batchnorm_statistics():
    from neuroldm.classify.network import build_classifier
    from neuroldm.config import ClassifierConfig, TrainConfig

    runs = {}
    for on in (False, True):
        cfg = ClassifierConfig(arch="efficientnetv2-tiny", stochastic_depth=0.5,
                               train=TrainConfig(grad_checkpointing=on))
        torch.manual_seed(0)
        model = build_classifier(cfg, 2)
        assert model.grad_checkpointing is on  # the classifier.train key builds it
        calls = []
        model.blocks[1].register_forward_pre_hook(lambda *_, seen=calls: seen.append(1))
        runs[on] = (*_train_pass(model), len(calls))
    (loss_off, grads_off, bufs_off, calls_off), (loss_on, grads_on, bufs_on, calls_on) = runs[False], runs[True]
    assert (calls_off, calls_on) == (1, 2)  # checkpointed: the block runs again in the backward pass
    # equal to float32 round-off (rtol 1e-6, atol 1e-8); the same stochastic-depth masks in both passes
    torch.testing.assert_close(loss_on, loss_off, rtol=1e-6, atol=1e-8)
    for k in grads_off:
        torch.testing.assert_close(grads_on[k], grads_off[k], rtol=1e-6, atol=1e-8, msg=k)
    # the recomputation does not update the BatchNorm running statistics a second time
    assert int(bufs_on["blocks.1.block.0.1.num_batches_tracked"]) == 1
    for k in bufs_off:
        torch.testing.assert_close(bufs_on[k], bufs_off[k], rtol=1e-6, atol=1e-8, msg=k)


def test_gradient_checkpointing_is_off_in_eval_and_refused_for_the_plain_cnn():
    from neuroldm.config import load_config
    from neuroldm.errors import ConfigError

    torch.manual_seed(0)
    model = EfficientNetV2("tiny", grad_checkpointing=True).eval()
    calls = []
    model.blocks[1].register_forward_pre_hook(lambda *_, seen=calls: seen.append(1))
    x = torch.randn(1, 1, 32, 32, 32, requires_grad=True)
    model(x).sum().backward()  # saliency: gradients of the input in eval mode, nothing recomputed
    assert calls == [1]
    with pytest.raises(ConfigError, match="classifier.train.grad_checkpointing recomputes EfficientNetV2 blocks"):
        load_config(None, None, ["classifier.arch=cnn", "classifier.train.grad_checkpointing=true"])
