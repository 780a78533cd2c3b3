"""The engine's early stopping: `patience` validations without a better monitored value end the run."""

import torch
from torch import nn
from torch.utils.data import Dataset

from neuroldm.config import TrainConfig
from neuroldm.train.checkpoint import load_state
from neuroldm.train.engine import Trainer


class Noise(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, item):
        return {"x": torch.randn(4, generator=torch.Generator().manual_seed(item[0]))}


def _loss(ctx, batch):
    return {"loss": ctx.module("model")(batch["x"]).pow(2).mean()}


def _trainer(tmp, scores, patience, steps=40):
    cfg = TrainConfig(steps=steps, batch_size=2, lr=1e-2, val_every=2, ckpt_every=100, log_every=1, seed=0)
    it = iter(scores)
    return Trainer(nn.Linear(4, 1), cfg, tmp, dataset=Noise(), loss_fn=_loss, progress=False, monitor="auc",
                   mode="max", validate=lambda t: {"auc": next(it)}, patience=patience)


def test_stops_after_patience_validations_without_improvement(tmp_path):
    # best at the 2nd validation (step 4); 3 worse ones follow -> stop at the 5th validation, step 10
    summary = _trainer(tmp_path, [0.6, 0.8, 0.7, 0.8, 0.75] + [0.9] * 20, patience=3).fit()
    assert summary["early_stopped"] and summary["steps"] == 10 and summary["best"] == 0.8
    assert load_state(tmp_path / "checkpoints" / "best.safetensors")["step"] == 4
    assert load_state(tmp_path / "checkpoints" / "last.safetensors")["step"] == 10


def test_improvements_reset_the_count_and_no_patience_runs_to_the_end(tmp_path):
    rising = [0.5 + 0.01 * k for k in range(20)]
    assert not _trainer(tmp_path / "a", rising, patience=1).fit()["early_stopped"]
    flat = _trainer(tmp_path / "b", [0.5] * 20, patience=None).fit()
    assert flat["steps"] == 40 and not flat["early_stopped"]


def test_resume_keeps_the_count(tmp_path):
    scores = [0.6, 0.8, 0.7, 0.7, 0.7] + [0.9] * 20
    t = _trainer(tmp_path, scores, patience=3)
    t.fit(until_step=8)  # two bad validations so far, saved in the last checkpoint
    assert load_state(tmp_path / "checkpoints" / "last.safetensors")["since_best"] == 2
    resumed = _trainer(tmp_path, scores[4:], patience=3)  # a new process continues with the 5th validation
    summary = resumed.fit()
    assert summary["early_stopped"] and summary["steps"] == 10
