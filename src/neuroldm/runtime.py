"""Where this process runs, decided in one place: rank, world size, device, autocast and the process group.

``torchrun --nproc_per_node N -m neuroldm ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; a plain
``neuroldm ...`` is a world of one. Nothing here starts processes. Every other module asks this one:

- `resolve_device` turns ``--device`` (a name, ``auto`` or nothing) into this rank's device;
- `autocast` is the mixed-precision context of the ``train.amp`` setting on that device, `check_amp` refuses a
  setting the device cannot run, and `grad_scaler` is the loss scaler that float16 needs;
- `sync_batch_norm` makes BatchNorm layers normalise over the whole batch of every process (GPUs);
- `init_process_group` joins the torchrun group once (NCCL on GPU, gloo on CPU) with `BARRIER_TIMEOUT`;
- `is_main`, `barrier`, `all_true`, `mean_across`, `teardown` are what the stages and the engine need of it;
- `setup` does all of it for a training run and returns the `World` the engine keeps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from neuroldm.errors import ConfigError

log = logging.getLogger(__name__)

# one timeout for every collective: under `neuroldm run` rank 0 samples and evaluates alone while the other ranks
# wait at a barrier, and NCCL's default of 10 minutes would end that wait with an error
BARRIER_TIMEOUT = timedelta(hours=12)


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank: the group's when joined, else torchrun's ``RANK`` (0 for a plain process)."""
    return dist.get_rank() if _initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if _initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's index on its machine: the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0 of a torchrun group, or the only process: the one that writes shared files and prints."""
    return rank() == 0


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``None`` or ``auto`` is this rank's GPU (``cuda:LOCAL_RANK``) when CUDA is available,
    else the CPU; ``cuda`` is this rank's GPU; ``cuda:N``, ``cpu`` (or another torch device) are taken as given."""
    if isinstance(name, torch.device):
        name = str(name)
    if name is None or name == "auto":
        return torch.device(f"cuda:{local_rank()}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank()}")
    return device


def amp_dtype(device: str | torch.device, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype of a ``train.amp`` setting on `device`: bfloat16 for ``bf16`` (on any device) and for
    ``auto`` on CUDA, float16 for ``fp16``; None (float32) for ``off``, or for ``auto`` on the CPU."""
    if amp == "bf16" or (amp == "auto" and torch.device(device).type == "cuda"):
        return torch.bfloat16
    return torch.float16 if amp == "fp16" else None


def autocast(device: str | torch.device, amp: str = "auto") -> contextlib.AbstractContextManager:
    """The mixed-precision context of a ``train.amp`` setting on `device` (`amp_dtype`), or a null context."""
    device = torch.device(device)
    dtype = amp_dtype(device, amp)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def check_amp(device: str | torch.device, amp: str) -> None:
    """Refuse, in one line, an autocast setting this torch cannot run on `device`.

    torch's autocast does not fail on a dtype it does not support there: it warns and runs in float32, so a run
    asking for float16 would silently be another run. A matrix product under the context shows what it does.
    """
    device = torch.device(device)
    dtype = amp_dtype(device, amp)
    if dtype is None:
        return
    other = "fp16 or off" if dtype == torch.bfloat16 else "bf16 or off"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the warning of an unsupported dtype; the probe below is the verdict
            with torch.autocast(device_type=device.type, dtype=dtype):
                got = (torch.ones(2, 2, device=device) @ torch.ones(2, 2, device=device)).dtype
    except RuntimeError as e:  # e.g. "Current CUDA Device does not support bfloat16" (a GPU before Ampere)
        raise ConfigError(f"train.amp={amp}: {str(e).splitlines()[0].rstrip('.')}; use {other}") from None
    if got != dtype:
        raise ConfigError(f"train.amp={amp}: torch {torch.__version__} has no {str(dtype).removeprefix('torch.')} "
                          f"autocast on {device.type}; use {other}")


def grad_scaler(device: str | torch.device, amp: str) -> torch.amp.GradScaler:
    """The loss scaler of a ``train.amp`` setting: on for float16 autocast (float16 gradients underflow without
    it), a pass-through otherwise (bfloat16 has float32's exponent range)."""
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=amp_dtype(device, amp) == torch.float16)


def sync_batch_norm(module: nn.Module, world: World) -> nn.Module:
    """`module` with every BatchNorm layer a `torch.nn.SyncBatchNorm` when it trains in several CUDA processes.

    Under DDP a plain BatchNorm normalises with the statistics of its own process's batch (``batch_size``, not
    the whole batch of ``batch_size × world size``), and its running statistics are rank 0's (DDP broadcasts the
    buffers). SyncBatchNorm gathers the statistics of every process. It runs on GPUs only, so on CPU processes
    (gloo) the layers stay per-process and a warning says so; GroupNorm does not depend on the batch at all. The
    state dict keys are those of BatchNorm, so the weights load into a network built without it.
    """
    if not world.distributed or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
        return module
    if world.device.type != "cuda":
        if world.is_main:
            log.warning("BatchNorm in %d CPU processes: SyncBatchNorm runs on GPUs only, so each process normalises "
                        "with the statistics of its own batch; classifier.norm=group does not depend on the batch",
                        world.size)
        return module
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def init_process_group(device: str | torch.device) -> None:
    """Join the torchrun group (NCCL for a CUDA device, else gloo) unless joined already or alone in the world."""
    if _initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives run on the current device: this rank's own GPU
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=BARRIER_TIMEOUT)


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a world of one)."""
    if _initialized():
        dist.barrier()


def teardown() -> None:
    """Leave the process group, if joined."""
    if _initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class World:
    """This process's place among the torchrun processes, and its device."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def setup(device: str | torch.device | None = None) -> World:
    """Resolve the device, make a GPU this process's current one, join the group when launched by torchrun."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    init_process_group(dev)
    return World(rank=rank(), size=world_size(), local_rank=local_rank(), device=dev)


def all_true(flag: bool, world: World) -> bool:
    """True on every rank only if `flag` is true on every rank (one collective)."""
    if not world.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def mean_across(values: dict[str, float], world: World) -> dict[str, float]:
    """Average scalar logs over ranks, so rank 0 logs the whole batch's numbers."""
    if not world.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return {k: float(v) / world.size for k, v in zip(keys, t.tolist(), strict=True)}
