import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from neuroldm.config import TrainConfig
from neuroldm.train.checkpoint import load_state
from neuroldm.train.engine import Part, Trainer, TrainingDiverged, eval_weights, lr_factor, time_left


class Regression(Dataset):
    """y = x·w* + noise; items are (index, epoch) pairs as the engine's batch plan yields them."""

    def __init__(self, n=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ (torch.arange(1.0, 9.0) / 8) + 0.01 * torch.randn(n, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, item):
        i, _epoch = item
        return {"x": self.x[i], "y": self.y[i]}


def mse(ctx, batch):
    pred = ctx.module("model")(batch["x"]).squeeze(-1)
    return {"loss": ((pred - batch["y"]) ** 2).mean()}


def noisy_mse(ctx, batch):
    """Uses the global torch RNG (as dropout or diffusion noise would), so resume must restore it."""
    pred = ctx.module("model")(batch["x"] + 0.1 * torch.randn_like(batch["x"])).squeeze(-1)
    return {"loss": ((pred - batch["y"]) ** 2).mean()}


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def _cfg(**kw):
    base = dict(steps=8, batch_size=4, lr=1e-2, warmup_steps=2, schedule="cosine", grad_clip=1.0, val_every=4,
                ckpt_every=2, log_every=1, ema_decay=0.9, seed=3)
    return TrainConfig(**{**base, **kw})


def _trainer(tmp, cfg=None, loss=noisy_mse, **kw):
    return Trainer(_model(), cfg or _cfg(), tmp, dataset=Regression(), loss_fn=loss, progress=False,
                   validate=lambda t: {"loss": 1.0 / (1 + t.step)}, **kw)


def _weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_training_reduces_the_loss(tmp_path):
    t = _trainer(tmp_path, _cfg(steps=60, lr=3e-2, ema_decay=None, grad_clip=None), loss=mse)
    first = mse(type("C", (), {"module": lambda self, n: t.model})(), Regression()[(list(range(32)), 0)])
    t.fit()
    last = mse(type("C", (), {"module": lambda self, n: t.model})(), Regression()[(list(range(32)), 0)])
    assert float(last["loss"].detach()) < 0.2 * float(first["loss"].detach())


def test_without_a_bar_a_plain_line_says_where_training_is(tmp_path, monkeypatch, caplog):
    from neuroldm.train import engine

    monkeypatch.setattr(engine, "PLAIN_PROGRESS_SECONDS", 0.0)  # a line every step
    with caplog.at_level("INFO", logger="neuroldm.train.engine"):
        _trainer(tmp_path, _cfg(steps=3)).fit()
    lines = [r.getMessage() for r in caplog.records if ": step " in r.getMessage()]
    assert [ln.split(", loss")[0] for ln in lines] == [f"train: step {s}/3" for s in (1, 2, 3)]
    assert all("\r" not in ln for ln in lines)


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    straight = _trainer(tmp_path / "a")
    straight.fit()
    interrupted = _trainer(tmp_path / "b")
    interrupted.fit(until_step=3)  # 'killed' after step 3: last checkpoint is step 3
    assert load_state(tmp_path / "b" / "checkpoints" / "last.safetensors")["step"] == 3
    resumed = _trainer(tmp_path / "b")  # a new process would build everything anew
    resumed.fit()
    for (k, a), b in zip(_weights(straight.model).items(), _weights(resumed.model).values(), strict=True):
        assert torch.equal(a, b), k
    for a, b in zip(_weights(straight.ema).values(), _weights(resumed.ema).values(), strict=True):
        assert torch.equal(a, b)
    assert straight.optimizers["model"].state_dict()["state"][0]["exp_avg"].equal(
        resumed.optimizers["model"].state_dict()["state"][0]["exp_avg"])

    def rows(run):
        with open(tmp_path / run / "metrics.csv") as f:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
    assert rows("a") == rows("b")


def test_fp16_scales_the_loss_and_skips_the_updates_whose_gradients_overflow(tmp_path, monkeypatch):
    from neuroldm.train import engine

    # a first loss scale of 2^40: every float16 gradient overflows, so each update is skipped and the scale halved
    monkeypatch.setattr(engine.runtime, "grad_scaler",
                        lambda device, amp: torch.amp.GradScaler("cpu", init_scale=2.0**40, enabled=amp == "fp16"))
    t = _trainer(tmp_path, _cfg(steps=2, amp="fp16", ema_decay=None, warmup_steps=0), loss=mse)
    before = _weights(t.model)
    summary = t.fit()
    assert all(torch.equal(v, t.model.state_dict()[k]) for k, v in before.items())
    assert summary["last_terms"]["loss_scale"] == 2.0**39 and t.scaler.get_scale() == 2.0**38
    assert not math.isfinite(summary["last_terms"]["grad_norm"])  # clipped after unscaling: the overflow shows


def test_fp16_learns_and_resumes_with_its_loss_scale(tmp_path):
    cfg = _cfg(steps=30, lr=3e-2, amp="fp16", ema_decay=None)
    straight = _trainer(tmp_path / "a", cfg, loss=mse)
    summary = straight.fit()
    assert summary["last_terms"]["loss_scale"] > 0 and summary["last_terms"]["loss"] < 0.5
    interrupted = _trainer(tmp_path / "b", cfg, loss=mse)
    interrupted.fit(until_step=12)
    assert load_state(tmp_path / "b" / "checkpoints" / "last.safetensors")["scaler"] == interrupted.scaler.state_dict()
    resumed = _trainer(tmp_path / "b", cfg, loss=mse)
    resumed.fit()
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()
    for (k, a), b in zip(_weights(straight.model).items(), _weights(resumed.model).values(), strict=True):
        assert torch.equal(a, b), k


def test_without_fp16_there_is_no_loss_scale(tmp_path):
    summary = _trainer(tmp_path, _cfg(steps=2, amp="bf16"), loss=mse).fit()
    assert "loss_scale" not in summary["last_terms"]
    assert load_state(tmp_path / "checkpoints" / "last.safetensors")["scaler"] == {}


def test_the_engine_trains_the_module_with_synchronised_batchnorm(tmp_path, monkeypatch):
    from neuroldm.train import engine

    seen = []

    def convert(module, world):
        seen.append(world)
        return nn.Sequential(module)  # what SyncBatchNorm conversion of a BatchNorm root returns: a new module

    monkeypatch.setattr(engine.runtime, "sync_batch_norm", convert)
    t = _trainer(tmp_path, _cfg(steps=1), loss=mse)
    assert seen == [t.world] and isinstance(t.model, nn.Sequential) and isinstance(t.model[0], nn.Sequential)
    assert t.optimizers["model"].param_groups[0]["params"][0] is next(t.model.parameters())


def test_seconds_per_step_time_the_steps_alone(tmp_path, monkeypatch):
    clock = SlowClock(tick=1.0)  # every reading one second after the last
    monkeypatch.setattr("neuroldm.train.engine.time.perf_counter", clock)

    def slow_validation(t):
        for _ in range(10):  # ten seconds of validation
            clock()
        return {"loss": 1.0}

    t = Trainer(_model(), _cfg(steps=4, val_every=2), tmp_path, dataset=Regression(), loss_fn=mse, progress=False,
                validate=slow_validation)
    summary = t.fit()
    assert t.step_seconds == [1.0] * 4  # one reading before and one after each step
    assert summary["seconds_per_step"] == 1.0 and summary["seconds"] > 4 + 2 * 10
    assert summary["samples_per_step"] == 4


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path):
    big = _trainer(tmp_path / "a", _cfg(steps=3, batch_size=4, grad_accum=1, ema_decay=None), loss=mse)
    acc = _trainer(tmp_path / "b", _cfg(steps=3, batch_size=2, grad_accum=2, ema_decay=None), loss=mse)
    big.fit()
    acc.fit()
    for a, b in zip(big.model.parameters(), acc.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    def explode(ctx, batch):
        out = mse(ctx, batch)
        return {"loss": out["loss"] * (math.nan if ctx.step == 4 else 1.0)}

    t = _trainer(tmp_path, _cfg(ckpt_every=2), loss=explode)
    with pytest.raises(TrainingDiverged, match=r"model loss is not finite at step 5 \(loss=nan\); the last good "
                                               r"checkpoint is .*last.safetensors"):
        t.fit()
    assert load_state(tmp_path / "checkpoints" / "last.safetensors")["step"] == 4


def test_lr_schedule_warmup_then_cosine_to_the_floor():
    cfg = _cfg(steps=102, warmup_steps=2, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == 0.5 and lr_factor(1, cfg) == 1.0
    assert lr_factor(2, cfg) == pytest.approx(1.0)
    assert lr_factor(52, cfg) == pytest.approx(0.55)
    assert lr_factor(102, cfg) == pytest.approx(0.1)
    assert lr_factor(50, _cfg(schedule="constant")) == 1.0


def test_ema_follows_the_recursion(tmp_path):
    t = _trainer(tmp_path, _cfg(steps=1, ema_decay=0.5), loss=mse)
    t.fit()
    # first update copies the weights; later ones are ema = d * ema + (1 - d) * w
    assert all(torch.equal(a, b) for a, b in zip(t.ema.module.parameters(), t.model.parameters(), strict=True))
    before = [p.clone() for p in t.ema.module.parameters()]
    t.cfg = _cfg(steps=2, ema_decay=0.5)
    t.fit(resume=False)
    for e, b, w in zip(t.ema.module.parameters(), before, t.model.parameters(), strict=True):
        torch.testing.assert_close(e, 0.5 * b + 0.5 * w)


def test_eval_weights_of_a_checkpoint_are_the_ema_or_else_the_model(tmp_path):
    for name, decay in (("ema", 0.5), ("raw", None)):
        t = _trainer(tmp_path / name, _cfg(steps=3, ema_decay=decay), loss=mse)
        t.fit()
        bare = _model()
        # strict loading: no wrapper prefix and no EMA counter left in the keys
        bare.load_state_dict(eval_weights(load_state(tmp_path / name / "checkpoints" / "last.safetensors")))
        expected = t.ema.module if decay else t.model
        assert t.eval_module() is expected
        assert all(torch.equal(bare.state_dict()[k], v) for k, v in expected.state_dict().items())
        if decay:  # the EMA really is other weights than the model's
            assert not all(torch.equal(a, b) for a, b in zip(t.ema.module.parameters(), t.model.parameters()))


def test_best_checkpoint_follows_the_monitored_metric(tmp_path):
    t = _trainer(tmp_path, _cfg(steps=8, val_every=4))
    summary = t.fit()
    assert summary["best"] == pytest.approx(1 / 9)
    assert load_state(tmp_path / "checkpoints" / "best.safetensors")["step"] == 8


def test_auxiliary_part_trains_only_after_warmup_and_only_on_its_loss(tmp_path):
    torch.manual_seed(1)
    critic = nn.Linear(1, 1)
    critic_start = _weights(critic)
    seen = []

    def loss(ctx, batch):
        seen.append((ctx.step, ctx.part))
        pred = ctx.module("model")(batch["x"])
        if ctx.part == "model":  # the critic's output enters the model's loss but must not train the critic
            return {"loss": ((pred.squeeze(-1) - batch["y"]) ** 2).mean() + ctx.raw("critic")(pred).mean()}
        return {"loss": (ctx.module("critic")(pred.detach()) ** 2).mean()}

    t = Trainer([Part("model", _model()), Part("critic", critic, lr=1e-3, active_from=2)], _cfg(steps=3), tmp_path,
                dataset=Regression(), loss_fn=loss, progress=False)
    t.fit(until_step=2)
    assert all(torch.equal(a, b) for a, b in zip(_weights(critic).values(), critic_start.values(), strict=True))
    t.fit()
    assert not all(torch.equal(a, b) for a, b in zip(_weights(critic).values(), critic_start.values(), strict=True))
    assert seen == [(0, "model"), (1, "model"), (2, "model"), (2, "critic")]


DDP_SCRIPT = '''
import sys, torch
sys.path.insert(0, {tests!r})
from test_engine import Regression, _model, _cfg, mse
from neuroldm.train.engine import Trainer
from neuroldm import runtime
world = runtime.setup("cpu")
cfg = _cfg(steps=4, batch_size={bs}, ema_decay=None, grad_clip=None)
t = Trainer(_model(), cfg, {out!r} + "/rank" + str(world.rank), dataset=Regression(), loss_fn=mse,
            progress=False, world=world)
t.fit()
torch.save({{k: v for k, v in t.model.state_dict().items()}}, {out!r} + f"/w{{world.rank}}.pt")
runtime.teardown()
'''


def test_torchrun_ddp_on_cpu_keeps_ranks_identical(tmp_path):
    tests = str(Path(__file__).parent)
    for name, nproc, bs in (("ddp", 2, 2), ("single", 1, 4)):
        script = tmp_path / f"{name}.py"
        out = tmp_path / name
        out.mkdir()
        script.write_text(DDP_SCRIPT.format(tests=tests, out=str(out), bs=bs))
        run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                              "--master_port", str(29500 + nproc), str(script)], capture_output=True, text=True,
                             timeout=240)
        assert run.returncode == 0, run.stderr[-3000:]
    w0 = torch.load(tmp_path / "ddp" / "w0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "ddp" / "w1.pt", weights_only=True)
    single = torch.load(tmp_path / "single" / "w0.pt", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks disagree on {k}"
        # 2 ranks x batch 2 see the same samples as 1 process x batch 4, and DDP averages the gradients
        torch.testing.assert_close(w0[k], single[k], rtol=1e-5, atol=1e-6)


def _steps_logged(run):
    with open(run / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("fail_from, resumed_at", [(4, 4), (1, 0)])
def test_a_full_disk_at_a_checkpoint_is_one_line_and_the_rerun_resumes(tmp_path, monkeypatch, fail_from,
                                                                       resumed_at):
    """A full disk at the first `last` checkpoint made the rerun restart from step 0 and log every step twice.
    Now the error is one line naming what was kept, and the rerun resumes from the newest whole checkpoint (here
    `best`, written at the step the `last` write failed) with one log row per step."""
    import errno

    from neuroldm.errors import NeuroLDMError
    from neuroldm.train import engine

    straight = _trainer(tmp_path / "straight", _cfg(val_every=2, ckpt_every=4))
    straight.fit()
    real = engine.save_state

    def full_disk(state, path):
        if state["step"] >= fail_from and (path.name.startswith("last") or fail_from == 1):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(state, path)

    monkeypatch.setattr(engine, "save_state", full_disk)
    run = tmp_path / "run"
    with pytest.raises(NeuroLDMError) as e:
        _trainer(run, _cfg(val_every=2, ckpt_every=4)).fit()
    kept = "kept: best.safetensors (step 4)" if resumed_at else "no checkpoint kept"
    assert str(e.value) == (f"{run / 'checkpoints' / ('last' if resumed_at else 'best')}.safetensors: cannot write "
                            f"the step {fail_from if resumed_at else 2} checkpoint (No space left on device); {kept}; "
                            f"a rerun resumes from the latest")
    monkeypatch.setattr(engine, "save_state", real)
    summary = _trainer(run, _cfg(val_every=2, ckpt_every=4)).fit()
    assert summary["steps"] == 8 and summary["steps_this_run"] == 8 - resumed_at
    assert _steps_logged(run) == list(range(1, 9))
    if resumed_at:  # resumed exactly: the weights of the straight run
        state = load_state(run / "checkpoints" / "last.safetensors")
        ref = load_state(tmp_path / "straight" / "checkpoints" / "last.safetensors")
        assert all(torch.equal(state["modules"]["model"][k], v) for k, v in ref["modules"]["model"].items())


class SlowClock:
    """`time.perf_counter` of a machine where every reading is `tick` seconds after the last one."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_a_slow_machine_trains_the_same_steps_to_the_same_weights(tmp_path, monkeypatch):
    fast = _trainer(tmp_path / "fast")
    fast_summary = fast.fit()
    monkeypatch.setattr("neuroldm.train.engine.time.perf_counter", SlowClock(tick=3600.0))  # an hour per reading
    slow = _trainer(tmp_path / "slow")
    slow_summary = slow.fit()
    assert slow_summary["steps"] == fast_summary["steps"] == 8 and not slow_summary["truncated"]
    assert slow_summary["last_terms"] == fast_summary["last_terms"] and slow_summary["best"] == fast_summary["best"]
    for (k, a), b in zip(_weights(fast.model).items(), _weights(slow.model).values(), strict=True):
        assert torch.equal(a, b), k


def test_a_time_budget_truncates_validates_and_a_second_fit_completes_the_plan(tmp_path, monkeypatch, caplog):
    straight = _trainer(tmp_path / "a")
    straight.fit()
    clock = SlowClock(tick=20.0)  # the 1-minute budget is spent within the first steps
    monkeypatch.setattr("neuroldm.train.engine.time.perf_counter", clock)
    stopped = _trainer(tmp_path / "b", _cfg(max_minutes=1))
    with caplog.at_level("WARNING", logger="neuroldm.train.engine"):
        summary = stopped.fit()
    assert summary["truncated"] and summary["stop_reason"] == "max_minutes" and summary["stopped_early"]
    assert 1 <= summary["steps"] < summary["planned_steps"] == 8
    assert f"truncated at step {summary['steps']} of 8 planned steps" in caplog.text
    # stopped before the first scheduled validation (step 4): validated at the stop, so a best checkpoint exists
    assert summary["best"] == pytest.approx(1 / (1 + summary["steps"]))
    assert load_state(tmp_path / "b" / "checkpoints" / "best.safetensors")["step"] == summary["steps"]
    assert load_state(tmp_path / "b" / "checkpoints" / "last.safetensors")["step"] == summary["steps"]
    on_disk = json.loads((tmp_path / "b" / "train_summary.json").read_text())
    assert on_disk["truncated"] and on_disk["steps"] == summary["steps"] and on_disk["planned_steps"] == 8

    resumed = _trainer(tmp_path / "b")  # no budget: the planned steps, the weights and selection of a straight run
    done = resumed.fit()
    assert done["steps"] == 8 and not done["truncated"] and done["best"] == pytest.approx(1 / 9)
    for (k, a), b in zip(_weights(straight.model).items(), _weights(resumed.model).values(), strict=True):
        assert torch.equal(a, b), k
    assert load_state(tmp_path / "b" / "checkpoints" / "best.safetensors")["step"] == 8


def test_patience_is_part_of_the_plan_not_a_truncation(tmp_path):
    t = Trainer(_model(), _cfg(steps=40, val_every=2), tmp_path, dataset=Regression(), loss_fn=mse, progress=False,
                validate=lambda t: {"loss": 1.0}, patience=2)
    summary = t.fit()
    assert summary["early_stopped"] and summary["steps"] < 40 and not summary["truncated"]


def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_resumes(tmp_path):
    straight = _trainer(tmp_path / "a")
    straight.fit()

    def interrupted_at_step_3(ctx, batch):
        if ctx.step == 2:  # during the third step, as a user's Ctrl-C would
            os.kill(os.getpid(), signal.SIGINT)
        return noisy_mse(ctx, batch)

    t = _trainer(tmp_path / "b", loss=interrupted_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    assert load_state(tmp_path / "b" / "checkpoints" / "last.safetensors")["step"] == 3  # the whole step, saved
    summary = json.loads((tmp_path / "b" / "train_summary.json").read_text())
    assert summary["truncated"] and summary["stop_reason"] == "interrupted" and summary["steps"] == 3
    resumed = _trainer(tmp_path / "b")
    assert resumed.fit()["steps"] == 8
    for (k, a), b in zip(_weights(straight.model).items(), _weights(resumed.model).values(), strict=True):
        assert torch.equal(a, b), k


def test_time_left_reads_like_a_person_would_say_it():
    assert time_left(0.3, 1400) == "~7 min left at 0.3 s/step"
    assert time_left(0.25, 100) == "~25 s left at 0.25 s/step"
    assert time_left(2.0, 9000) == "~5.0 h left at 2 s/step"


def test_the_estimate_is_logged_after_the_first_steps_and_every_tenth(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("neuroldm.train.engine.time.perf_counter", SlowClock(tick=0.1))
    with caplog.at_level("INFO", logger="neuroldm.train.engine"):
        _trainer(tmp_path, _cfg(steps=20, val_every=20, ckpt_every=20), loss=mse).fit()
    lines = [r.getMessage() for r in caplog.records if "left at" in r.getMessage()]
    assert [line.split("(")[1] for line in lines] == [f"step {s} of 20)" for s in (2, 4, 5, 6, 8, 10, 12, 14, 16, 18)]
    assert all(line.startswith("train: ~") and line.split(" (")[0].endswith(" s/step") for line in lines)


def test_the_validation_at_a_stop_does_not_enter_the_resumed_selection(tmp_path):
    """The stop's own validation gives a best checkpoint, but a resumed run selects as a straight one would: from
    the scheduled validations only (it resumes from `last`, written before that validation)."""
    def val(t):  # the best value of all would be the one at the stop (step 3), not a scheduled one (4, 8)
        return {"loss": 0.0 if t.step == 3 else 1.0 / (1 + t.step)}

    straight = Trainer(_model(), _cfg(), tmp_path / "a", dataset=Regression(), loss_fn=noisy_mse, progress=False,
                       validate=val)
    straight.fit()
    stopped = Trainer(_model(), _cfg(), tmp_path / "b", dataset=Regression(), loss_fn=noisy_mse, progress=False,
                      validate=val)
    assert stopped.fit(until_step=3)["best"] == 0.0
    resumed = Trainer(_model(), _cfg(), tmp_path / "b", dataset=Regression(), loss_fn=noisy_mse, progress=False,
                      validate=val)
    assert resumed.fit()["best"] == straight.best == pytest.approx(1 / 9)
    assert load_state(tmp_path / "b" / "checkpoints" / "best.safetensors")["step"] == 8
