"""Peak memory of a stretch of work: the stretch's own RSS peak where Linux resets it, else said to be the process's."""

import gc

import numpy as np
import pytest
import torch

from neuroldm import memory
from neuroldm.memory import GB, PeakMemory


def _touch(nbytes: int) -> np.ndarray:
    return np.ones(nbytes // 8)  # written, so resident


def test_each_stretch_has_its_own_peak_where_linux_resets_it():
    if not memory._reset_rss_peak():
        pytest.skip("this system does not let a process reset its RSS high-water mark")
    # earlier tests' garbage collected first and none during the stretches: a collection inside the first could free
    # as much as it allocates, leaving its peak at its starting RSS (this failed once late in the full suite)
    gc.collect()
    gc.disable()
    try:
        with PeakMemory("cpu") as big:
            block = _touch(160 << 20)
            del block
        with PeakMemory("cpu") as small:
            block = _touch(16 << 20)
            del block
    finally:
        gc.enable()
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
