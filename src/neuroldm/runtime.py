"""Where this process runs, decided in one place: rank, world size, device, autocast and the process group.

``torchrun --nproc_per_node N -m neuroldm ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; a plain
``neuroldm ...`` is a world of one. Nothing here starts processes. Every other module asks this one:

- `resolve_device` turns ``--device`` (a name, ``auto`` or nothing) into this rank's device;
- `autocast` is the mixed-precision context of the ``train.amp`` setting on that device;
- `init_process_group` joins the torchrun group once (NCCL on GPU, gloo on CPU) with `BARRIER_TIMEOUT`;
- `is_main`, `barrier`, `all_true`, `mean_across`, `teardown` are what the stages and the engine need of it;
- `setup` does all of it for a training run and returns the `World` the engine keeps.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from neuroldm.errors import ConfigError

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


def autocast(device: str | torch.device, amp: str = "auto") -> contextlib.AbstractContextManager:
    """The mixed-precision context of a ``train.amp`` setting on `device`: bf16 autocast for ``bf16`` (on any
    device) and for ``auto`` on CUDA; none for ``off``, or for ``auto`` on the CPU."""
    device = torch.device(device)
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
