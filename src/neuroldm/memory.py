"""Peak memory of a stretch of work (a pipeline stage, a benchmark step): resident memory and CUDA memory.

- **Resident memory (RSS)** is what the operating system gave this process, torch's allocator and the interpreter
  included (``tracemalloc`` does not see torch's memory). Linux keeps the process's high-water mark (``VmHWM`` in
  ``/proc/self/status``) and lets the process reset it (``echo 5 > /proc/self/clear_refs``, Linux ≥ 4.0), so the
  peak is that of the stretch alone: ``rss_scope`` ``"stage"``. Where the reset is refused (another system, a
  locked-down container), the peak is the process's peak so far (``ru_maxrss``) as of the end of the stretch,
  which includes every earlier stage: ``rss_scope`` ``"process"``, so it is never read as the stretch's own.
- **CUDA memory** is torch's allocator peak after ``reset_peak_memory_stats``: the tensors torch allocated on the
  device, not the driver's context or the allocator's cache.

Child processes (DataLoader workers, subprocesses) are not counted; under torchrun each process measures itself.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

import torch

GB = 2**30
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_rss_peak() -> bool:
    """Reset the kernel's high-water mark of this process's RSS; False where that is not possible."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _hwm_bytes() is not None


def _hwm_bytes() -> int | None:
    """``VmHWM`` of ``/proc/self/status`` in bytes (None where the file or the line is missing)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def lifetime_peak_rss_bytes() -> int:
    """The process's peak RSS since it started (``ru_maxrss``: kB on Linux, bytes on macOS; on Linux since the
    last reset of the high-water mark, where one succeeded)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.result()``: the peak RSS (and CUDA memory on a CUDA
    `device`) of the block, as ``{"peak_rss_gb", "rss_scope", "peak_cuda_gb"}`` (the last only on CUDA)."""

    def __init__(self, device: str | torch.device | None = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.rss_scope = "process"
        self.peak_rss_bytes: int | None = None
        self.peak_cuda_bytes: int | None = None

    def __enter__(self):
        self.rss_scope = "stage" if _reset_rss_peak() else "process"
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        hwm = _hwm_bytes() if self.rss_scope == "stage" else None
        if hwm is None:
            self.rss_scope = "process"
        self.peak_rss_bytes = hwm if hwm is not None else lifetime_peak_rss_bytes()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_cuda_bytes = torch.cuda.max_memory_allocated(self.device)

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {"peak_rss_gb": round(self.peak_rss_bytes / GB, 3), "rss_scope": self.rss_scope}
        if self.peak_cuda_bytes is not None:
            out["peak_cuda_gb"] = round(self.peak_cuda_bytes / GB, 3)
        return out
