"""Peak memory of a stretch of work: the stretch's own RSS peak where Linux resets it, else said to be the process's."""

import os

import numpy as np
import pytest
import torch

from neuroldm import memory
from neuroldm.memory import GB, PeakMemory


def _touch(nbytes: int) -> np.ndarray:
    return np.ones(nbytes // 8)  # written, so resident


ISOLATED = "NEUROLDM_ISOLATED_MEMORY_TEST"


def in_a_fresh_process(test_file: str, test_name: str) -> None:
    """Run one test of `test_file` alone in a new interpreter (with `ISOLATED` set) and fail with its output if it
    fails: a resident-memory peak depends on what else the process holds and frees meanwhile, which late in the
    full suite (earlier tests' threads and memory) made a stretch's own peak unreadable (it failed twice there and
    never alone)."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{test_file}::{test_name}"],
                          env={**os.environ, ISOLATED: "1"}, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout, proc.stdout[-2000:]


def test_each_stretch_has_its_own_peak_where_linux_resets_it():
    if os.environ.get(ISOLATED) != "1":
        in_a_fresh_process(__file__, "test_each_stretch_has_its_own_peak_where_linux_resets_it")
        return
    if not memory._reset_rss_peak():
        pytest.skip("this system does not let a process reset its RSS high-water mark")
    with PeakMemory("cpu") as big:
        block = _touch(160 << 20)
        del block
    with PeakMemory("cpu") as small:
        block = _touch(16 << 20)
        del block
    assert big.rss_scope == small.rss_scope == "stage"
    # the second stretch does not inherit the first one's 160 MB
    assert big.peak_rss_bytes - small.peak_rss_bytes > 120 << 20
    assert big.result() == {"peak_rss_gb": round(big.peak_rss_bytes / GB, 3), "rss_scope": "stage"}


def test_without_the_reset_the_peak_is_the_process_lifetime_one_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "_CLEAR_REFS", tmp_path / "no" / "clear_refs")  # the write fails
    with PeakMemory("cpu") as peak:
        block = _touch(16 << 20)
        del block
    assert peak.rss_scope == "process" and peak.result()["rss_scope"] == "process"
    assert peak.peak_rss_bytes == memory.lifetime_peak_rss_bytes()


def test_on_cuda_the_allocator_peak_is_reset_and_read(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * GB // 2)
    with PeakMemory("cuda:1") as peak:
        pass
    assert calls == [("reset", torch.device("cuda:1"))]
    assert peak.result()["peak_cuda_gb"] == 1.5
    with PeakMemory("cpu") as cpu:
        pass
    assert "peak_cuda_gb" not in cpu.result() and calls == [("reset", torch.device("cuda:1"))]
