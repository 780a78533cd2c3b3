"""The training engine shared by the VAE, the diffusion transformer and the classifier.

One loop, written once: AdamW, linear warm-up then cosine or constant learning rate, gradient accumulation and
clipping, bf16 autocast on GPU (or fp16 with a gradient scaler, ``train.amp``), an optional EMA of the weights
(`torch.optim.swa_utils.AveragedModel`), periodic validation with a *best* checkpoint, a *last* checkpoint every
``ckpt_every`` steps, exact resume, a NaN/Inf guard, a progress bar with an estimate of the time left and a CSV
metrics log, and DistributedDataParallel when launched by ``torchrun`` (with SyncBatchNorm on GPUs,
`neuroldm.runtime.sync_batch_norm`).

The number of steps is the contract: the clock never decides what is trained, unless a user sets ``max_minutes``.
A training stopped before its planned steps (``max_minutes``, Ctrl-C) checkpoints, validates when it had not yet,
says so in a WARNING and records ``truncated: true`` with ``steps`` and ``planned_steps`` in its summary; the next
`Trainer.fit` resumes it to the planned steps.

A model plugs in through a loss function ``loss_fn(ctx, batch) -> {"loss": tensor, <term>: tensor or float}``;
the other terms are only logged.
Models with an auxiliary network trained by its own optimiser (a VAE's discriminator) list it as a second
`Part`; the loss function is then called once per part and step, with ``ctx.part`` telling which, and only that
part's parameters receive gradients.

Resume reproduces the run: checkpoints hold the weights, EMA, optimiser, scheduler and loss-scaler states, the step
and every RNG state, and the batches are a pure function of (seed, step) (`neuroldm.train.batches`).

Timing: `Trainer.step_seconds` holds the wall time of each optimiser step of a `Trainer.fit` call (the batch, the
forward and backward passes and the update; not validation, checkpoints or logs), and the summary's
``seconds_per_step`` is their mean.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from neuroldm import runtime
from neuroldm.config import TrainConfig
from neuroldm.errors import NeuroLDMError
from neuroldm.io import atomic_path, write_json_atomic
from neuroldm.runs import ModelDir
from neuroldm.train.batches import BatchPlan
from neuroldm.train.checkpoint import checkpoint_step, load_state, save_state

log = logging.getLogger(__name__)

# without a progress bar (--no-progress, or stderr not a terminal), one plain line this often says where training is
PLAIN_PROGRESS_SECONDS = 60.0


class TrainingDiverged(NeuroLDMError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


@dataclass
class Part:
    """One module with its own optimiser. The first part is the model; others (a discriminator) are auxiliary.

    ``active_from``: the part is trained from this step on (a discriminator's warm-up); ``lr`` overrides the
    config's learning rate for this part.
    """

    name: str
    module: nn.Module
    lr: float | None = None
    active_from: int = 0


@dataclass
class StepContext:
    """What a loss function sees: the step, which part is being optimised, and the (wrapped) modules."""

    step: int
    part: str
    trainer: Trainer

    def module(self, name: str) -> nn.Module:
        """The module to call for a training forward pass (DDP-wrapped when distributed)."""
        return self.trainer._wrapped[name]

    def raw(self, name: str) -> nn.Module:
        """The unwrapped module, for forward passes whose gradients must not be synchronised."""
        return self.trainer.parts[name].module


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at `step`: linear warm-up, then constant or cosine to the floor."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": list(np.random.get_state()), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def eval_weights(state: dict[str, Any], model: str = "model") -> dict[str, torch.Tensor]:
    """The weights to evaluate from a training checkpoint (`Trainer.state_dict`): the EMA's when the run kept one,
    else `model`'s. Both are saved unwrapped (no DDP ``module.`` prefix); the EMA's keys lose the ``module.`` of
    its `AveragedModel` wrapper and its ``n_averaged`` counter, so they load into a bare network."""
    if state.get("ema") is not None:
        return {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
    return state["modules"][model]


def time_left(seconds_per_step: float, steps_left: int) -> str:
    """The estimate shown on the progress bar and in the log, e.g. ``~7 min left at 0.3 s/step``."""
    left = seconds_per_step * steps_left
    when = (f"~{left:.0f} s" if left < 90 else f"~{left / 60:.0f} min" if left < 90 * 60
            else f"~{left / 3600:.1f} h")
    return f"{when} left at {seconds_per_step:.3g} s/step"


class _CtrlC:
    """Ctrl-C during `Trainer.fit`: the first one asks the loop to stop after the current step (with a checkpoint,
    so the weights are never saved half-updated); a second one interrupts at once. Installed only in the main
    thread and only over Python's default handler."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def install(self) -> _CtrlC:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again stops at once)")

    def remove(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


class Trainer:
    """Train `parts` on `dataset` with `loss_fn`; checkpoints and logs go to ``run_dir``.

    `validate(trainer) -> {metric: value}` runs on the main process every ``val_every`` steps on
    `eval_module()` (the EMA weights when EMA is on); `monitor`/`mode` pick the best checkpoint. With
    `patience`, training stops early (with a last checkpoint) after that many validations without a better value.
    """

    def __init__(self, parts: list[Part] | nn.Module, cfg: TrainConfig, run_dir: str | Path, *,
                 dataset: Dataset, loss_fn: Callable[[StepContext, Any], dict[str, torch.Tensor | float]],
                 validate: Callable[[Trainer], dict[str, float]] | None = None, monitor: str = "loss",
                 mode: str = "min", sample_weights: list[float] | None = None, collate_fn=None,
                 meta: dict[str, Any] | None = None, progress: bool = True, desc: str = "train",
                 world: runtime.World | None = None, device: str | torch.device | None = None,
                 patience: int | None = None):
        if isinstance(parts, nn.Module):
            parts = [Part("model", parts)]
        if mode not in ("min", "max"):
            raise ValueError("mode must be 'min' or 'max'")
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.world = world or runtime.setup(device)
        self.parts = {p.name: p for p in parts}
        self.model_name = parts[0].name
        self.dataset, self.loss_fn, self.validate_fn = dataset, loss_fn, validate
        self.monitor, self.mode, self.meta = monitor, mode, meta or {}
        self.progress, self.desc = progress and self.world.is_main, desc
        self.collate_fn = collate_fn
        self.step = 0
        self.best: float | None = None
        self.patience = patience
        self.since_best = 0  # validations since the monitored value last improved
        self.layout = ModelDir(self.run_dir)
        self.checkpoints = self.layout.checkpoints
        self.metrics_path = self.layout.train_log

        runtime.check_amp(self.world.device, cfg.amp)
        seed_everything(cfg.seed)
        for p in parts:
            p.module = runtime.sync_batch_norm(p.module, self.world)
            p.module.to(self.world.device)
        self._wrapped: dict[str, nn.Module] = {
            name: (DistributedDataParallel(p.module, device_ids=[self.world.device.index]
                                           if self.world.device.type == "cuda" else None)
                   if self.world.distributed else p.module) for name, p in self.parts.items()}
        self.optimizers = {name: torch.optim.AdamW(p.module.parameters(), lr=p.lr or cfg.lr, betas=cfg.betas,
                                                   weight_decay=cfg.weight_decay)
                           for name, p in self.parts.items()}
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
                           for name, opt in self.optimizers.items()}
        # one scaler for every part (a pass-through unless amp is fp16), updated once per step
        self.scaler = runtime.grad_scaler(self.world.device, cfg.amp)
        self.step_seconds: list[float] = []
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
                    if cfg.ema_decay else None)
        self.plan = BatchPlan(len(dataset), cfg.batch_size, cfg.seed, self.world.rank, self.world.size,
                              weights=sample_weights)

    # ----------------------------------------------------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        return self.parts[self.model_name].module

    def eval_module(self) -> nn.Module:
        """The weights to evaluate and sample with (the live counterpart of `eval_weights`): the EMA when it is on,
        else the raw model (never the DDP wrapper)."""
        return self.ema.module if self.ema is not None else self.model

    def _loader(self, start_micro_step: int) -> Iterator[Any]:
        # the loader gets its own generator: iterating a DataLoader otherwise draws its base seed from the
        # global torch RNG, which would shift every later random draw of a resumed run by one
        loader = DataLoader(self.dataset, batch_sampler=self.plan.batches_from(start_micro_step),
                            num_workers=self.cfg.num_workers, collate_fn=self.collate_fn,
                            generator=torch.Generator().manual_seed(self.cfg.seed + start_micro_step),
                            persistent_workers=False, pin_memory=self.world.device.type == "cuda")
        return iter(loader)

    # ---------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "best": self.best, "since_best": self.since_best, "monitor": self.monitor,
                "meta": self.meta,
                "modules": {n: p.module.state_dict() for n, p in self.parts.items()},
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
                "scaler": self.scaler.state_dict(), "rng": _rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, p in self.parts.items():
            p.module.load_state_dict(state["modules"][n])
        if self.ema is not None:
            if state["ema"] is None:
                raise NeuroLDMError("the checkpoint has no EMA weights but train.ema_decay is set")
            self.ema.load_state_dict(state["ema"])
        for n, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][n])
        for n, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][n])
        if self.scaler.is_enabled() and state.get("scaler"):  # {} from a run without fp16
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.best = int(state["step"]), state["best"]
        self.since_best = int(state.get("since_best", 0))
        _set_rng_state(state["rng"])

    def save_checkpoint(self, name: str) -> Path:
        path = self.checkpoints.named(name)
        if self.world.is_main:
            try:
                save_state(self.state_dict(), path)
            except OSError as e:  # a full disk: the write is atomic, so the earlier checkpoints are whole
                kept = [f"{p.name} (step {checkpoint_step(p)})" for p in self._checkpoints()]
                raise NeuroLDMError(f"{path}: cannot write the step {self.step} checkpoint ({e.strerror or e}); "
                                    f"{'kept: ' + ', '.join(kept) if kept else 'no checkpoint kept'}; a rerun "
                                    f"resumes from the latest") from None
        return path

    def _checkpoints(self) -> list[Path]:
        return [p for p in (self.checkpoints.last, self.checkpoints.best) if p.exists()]

    def _resume(self) -> bool:
        """Resume from the latest whole checkpoint: ``last``, or ``best`` when it is newer (a ``last`` that could
        not be written); the log keeps only the rows of the steps it has seen. At the same step ``last`` wins: a
        stop's own validation writes ``best`` after it, and must not enter the resumed run's selection."""
        found = sorted(self._checkpoints(), key=lambda p: (checkpoint_step(p), p == self.checkpoints.last))
        if found:
            self.load_state_dict(load_state(found[-1], device="cpu"))
            log.info("resumed from %s at step %d", found[-1], self.step)
        self._truncate_log()
        return bool(found)

    # ------------------------------------------------------------------------------------------------ log
    def _truncate_log(self) -> None:
        """Keep the log rows of steps the checkpoint has seen, so a resumed run's log equals a straight one."""
        if not (self.world.is_main and self.metrics_path.exists()):
            return
        with open(self.metrics_path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        self._write_log(rows)

    def _write_log(self, rows: list[dict]) -> None:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with atomic_path(self.metrics_path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)

    def _log(self, row: dict[str, Any]) -> None:
        """Append one row; the file is rewritten (atomically) only when a row brings new columns."""
        if not self.world.is_main:
            return
        row = {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        header: list[str] = []
        if self.metrics_path.exists():
            with open(self.metrics_path, newline="") as f:
                header = next(csv.reader(f), [])
        if header and set(row) <= set(header):
            with open(self.metrics_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=header).writerow(row)
            return
        rows = []
        if header:
            with open(self.metrics_path, newline="") as f:
                rows = list(csv.DictReader(f))
        self._write_log(rows + [row])

    # ----------------------------------------------------------------------------------------------- loop
    def _active_parts(self) -> list[Part]:
        return [p for p in self.parts.values() if self.step >= p.active_from]

    @contextlib.contextmanager
    def _only_grads_for(self, part: Part):
        """Let only `part`'s parameters collect gradients (a generator loss must not train the discriminator)."""
        if len(self.parts) == 1:
            yield
            return
        saved = {}
        for other in self.parts.values():
            if other is not part:
                for prm in other.module.parameters():
                    saved[prm] = prm.requires_grad
                    prm.requires_grad_(False)
        try:
            yield
        finally:
            for prm, flag in saved.items():
                prm.requires_grad_(flag)

    def _train_step(self, batches: Iterator[Any]) -> dict[str, float]:
        cfg, terms = self.cfg, {}
        active = self._active_parts()
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        for micro in range(cfg.grad_accum):
            batch = _to_device(next(batches), self.world.device)
            for part in active:
                ctx = StepContext(self.step, part.name, self)
                wrapped = self._wrapped[part.name]
                sync = micro == cfg.grad_accum - 1 or not isinstance(wrapped, DistributedDataParallel)
                with self._only_grads_for(part), (contextlib.nullcontext() if sync else wrapped.no_sync()):
                    with runtime.autocast(self.world.device, self.cfg.amp):
                        out = self.loss_fn(ctx, batch)
                    loss = out["loss"]
                    finite = runtime.all_true(bool(torch.isfinite(loss.detach()).all()), self.world)
                    if not finite:
                        self._diverged(part.name, out)
                    self.scaler.scale(loss / cfg.grad_accum).backward()
                prefix = "" if part.name == self.model_name else f"{part.name}_"
                for k, v in out.items():
                    value = float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
                    terms[prefix + k] = terms.get(prefix + k, 0.0) + value / cfg.grad_accum
        for part in active:
            opt = self.optimizers[part.name]
            if cfg.grad_clip:
                self.scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
                norm = torch.nn.utils.clip_grad_norm_(part.module.parameters(), cfg.grad_clip)
                terms[("" if part.name == self.model_name else f"{part.name}_") + "grad_norm"] = float(norm)
            self.scaler.step(opt)  # with fp16, skipped when a gradient overflowed (the scale is then lowered)
        if self.scaler.is_enabled():
            terms["loss_scale"] = float(self.scaler.get_scale())
            self.scaler.update()
        with warnings.catch_warnings():
            # an fp16 update skipped for overflow still spends its step of the schedule (steps are the contract);
            # torch warns about that order of calls, which is intended here
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            for part in active:  # an auxiliary part's schedule (and warm-up) starts when the part switches on
                self.schedulers[part.name].step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        return terms

    def _diverged(self, part: str, out: dict[str, torch.Tensor]) -> None:
        last = self.checkpoints.last
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        detail = ", ".join(f"{k}={float(v.detach() if isinstance(v, torch.Tensor) else v):.4g}"
                           for k, v in out.items())
        raise TrainingDiverged(f"{self.desc}: {part} loss is not finite at step {self.step + 1} ({detail}); {kept}. "
                               f"Lower the learning rate, set a gradient clip, or check the inputs.")

    def _validate(self) -> dict[str, float]:
        if self.validate_fn is None or not self.world.is_main:
            return {}
        module = self.eval_module()
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                metrics = {f"val_{k}": float(v) for k, v in self.validate_fn(self).items()}
        finally:
            module.train(was_training)
        value = metrics.get(f"val_{self.monitor}")
        if value is not None and math.isfinite(value) and (
                self.best is None or (value < self.best if self.mode == "min" else value > self.best)):
            self.best = value
            self.since_best = 0
            self.save_checkpoint("best")
        elif value is not None:
            self.since_best += 1
        return metrics

    def fit(self, resume: bool = True, until_step: int | None = None) -> dict[str, Any]:
        """Train to ``cfg.steps`` (or `until_step`, for tests that simulate an interruption).

        Returns a summary: steps done and planned, whether the run was truncated (stopped before its planned steps
        by ``max_minutes`` or Ctrl-C; patience is part of the plan), seconds, the last logged terms and validation
        metrics, the best value. After Ctrl-C the checkpoint and summary are written, then KeyboardInterrupt is
        raised again.
        """
        cfg = self.cfg
        if resume:
            self._resume()
        elif self.world.is_main and self.metrics_path.exists():
            self.metrics_path.unlink()
        end = min(cfg.steps, until_step or cfg.steps)
        start_time, started_at = time.perf_counter(), self.step
        report_every = max(1, cfg.steps // 10)  # the estimate in the log: after 5 steps, then every ~10 %
        batches = self._loader(self.step * cfg.grad_accum)
        for module in self._wrapped.values():
            module.train()
        bar = tqdm(total=end, initial=self.step, desc=self.desc, unit="step", disable=not self.progress,
                   dynamic_ncols=True)
        terms: dict[str, float] = {}
        val: dict[str, float] = {}
        stopped_early = patience_out = False
        next_line = PLAIN_PROGRESS_SECONDS
        stop_reason = None
        ctrl_c = _CtrlC().install()
        self.step_seconds = []
        try:
            while self.step < end:
                step_start = time.perf_counter()
                # on a GPU an update's last kernels may still run when the step returns (its logged terms are read
                # back before the optimiser step): their time counts in the next step, so the mean is the true one
                step_terms = self._train_step(batches)
                self.step_seconds.append(time.perf_counter() - step_start)
                terms = runtime.mean_across(step_terms, self.world)
                lr = self.schedulers[self.model_name].get_last_lr()[0]
                done, elapsed = self.step - started_at, time.perf_counter() - start_time
                left = time_left(elapsed / done, cfg.steps - self.step)
                bar.update()
                bar.set_postfix(loss=f"{terms['loss']:.4g}", eta=left, refresh=False)
                if not self.progress and self.world.is_main and time.perf_counter() - start_time >= next_line:
                    next_line += PLAIN_PROGRESS_SECONDS
                    log.info("%s: step %d/%d, loss %.4g, %s", self.desc, self.step, end, terms["loss"], left)
                if self.world.is_main and self.step < end and (done == 5 or self.step % report_every == 0):
                    log.info("%s: %s (step %d of %d)", self.desc, left, self.step, cfg.steps)
                val = self._validate() if (self.step % cfg.val_every == 0 or self.step == cfg.steps) else {}
                if self.step % cfg.log_every == 0 or val or self.step == end:
                    self._log({"step": self.step, "seconds": round(time.perf_counter() - start_time, 3),
                               "lr": lr, **terms, **val})
                out_of_time = (cfg.max_minutes is not None
                               and time.perf_counter() - start_time > 60 * cfg.max_minutes)
                # one verdict for every rank: a Ctrl-C or the budget seen by any process stops them all
                out_of_time = not runtime.all_true(not (out_of_time or ctrl_c.requested), self.world)
                # only the main process validates, so its verdict (true on any rank) is the one every rank follows
                patience_out = not runtime.all_true(
                    not (self.patience is not None and self.since_best >= self.patience), self.world)
                if self.step % cfg.ckpt_every == 0 or self.step == end or out_of_time or patience_out:
                    self.save_checkpoint("last")
                if patience_out:
                    log.info("%s: no better val_%s in %d validations; stopping at step %d", self.desc,
                             self.monitor, self.patience, self.step)
                    break
                if out_of_time:
                    stopped_early = True
                    stop_reason = "interrupted" if ctrl_c.requested else "max_minutes"
                    break
        except Exception as e:
            if ctrl_c.requested:  # e.g. DataLoader workers that Ctrl-C ended: the interrupt is the cause
                raise KeyboardInterrupt from e
            raise
        finally:
            bar.close()
            ctrl_c.remove()
        truncated = self.step < cfg.steps and not patience_out
        if truncated and self.step > 0:
            if self.best is None and self.validate_fn is not None:
                # never leave a stopped run without a best checkpoint; after the 'last' one, so a resumed run
                # selects exactly as a straight one (its first validation replaces this best)
                val = self._validate() or val
            if self.world.is_main:
                why = {"max_minutes": f"max_minutes = {cfg.max_minutes} reached", "interrupted": "Ctrl-C"}.get(
                    stop_reason, "stopped")
                log.warning("%s: truncated at step %d of %d planned steps (%s): the model is under-trained; "
                            "running it again resumes from %s and completes them", self.desc, self.step, cfg.steps,
                            why, self.checkpoints.last)
        seconds = time.perf_counter() - start_time
        summary = {"steps": self.step, "planned_steps": cfg.steps, "truncated": truncated,
                   "stop_reason": stop_reason, "steps_this_run": self.step - started_at, "seconds": round(seconds, 2),
                   "seconds_per_step": (round(sum(self.step_seconds) / len(self.step_seconds), 4)
                                        if self.step_seconds else None),
                   "samples_per_step": cfg.batch_size * cfg.grad_accum * self.world.size,
                   "stopped_early": stopped_early, "early_stopped": patience_out, "best": self.best, "monitor": f"val_{self.monitor}",
                   "last_terms": terms, "last_validation": val, "world_size": self.world.size}
        if self.world.is_main:
            write_json_atomic(self.layout.train_summary, summary)
        if stop_reason == "interrupted":
            raise KeyboardInterrupt
        return summary
