"""The fuzz harness (tests/fuzz_harness.py) in CI: a short hypothesis run, a short atheris
run, and proof that the harness's oracles catch a broken core.

Minutes on demand: `python fuzz/fuzz_core.py fuzz/corpus -max_total_time=300`, or
ALLONES_FUZZ_EXAMPLES=20000 for this file's hypothesis run.
"""

import ctypes
import importlib.util
import mmap
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import allones

import fuzz_harness   # tests/fuzz_harness.py (tests/ is on sys.path via conftest)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = int(os.environ.get("ALLONES_FUZZ_EXAMPLES", "1000"))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.binary(max_size=1024))
def test_harness_on_hypothesis_inputs(data):
    fuzz_harness.run_one(data)


def test_harness_on_random_inputs():
    """Plain random bytes reach deeper call sequences than shrink-friendly ones."""
    rng = np.random.default_rng(6)
    for _ in range(EXAMPLES):
        fuzz_harness.run_one(rng.bytes(int(rng.integers(200, 1200))))
    assert fuzz_harness.COUNTS["set_user_memory_region: ok"] > 0
    assert fuzz_harness.COUNTS["run: ok"] > 0


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_atheris_smoke_run(tmp_path):
    """The on-demand fuzzer itself, for 2,000 inputs: it runs, and finds nothing."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "fuzz" / "fuzz_core.py"), "-runs=2000", "-seed=1",
         "-max_len=1024", "-len_control=0", f"-artifact_prefix={tmp_path}/",
         # No RSS limit: a bounded run, and under ASAN (tools/memcheck) the shadow memory
         # alone passes libFuzzer's default 2 GB.
         "-rss_limit_mb=0"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done 2000 runs" in proc.stderr
    assert "#allones 2000 inputs" in proc.stderr


# --- the oracles can fail ---

SEEDS = [np.random.default_rng(k).bytes(800) for k in range(40)]


def _finds(monkeypatch, cls, name, broken) -> bool:
    monkeypatch.setattr(cls, name, broken)
    try:
        for data in SEEDS:
            fuzz_harness.run_one(data)
    except AssertionError:
        return True
    return False


def test_oracle_catches_wrong_lookups(monkeypatch):
    real = allones.VM.lookup_batch
    assert _finds(monkeypatch, allones.VM, "lookup_batch",
                  lambda self, gfns, as_id=0: np.maximum(real(self, gfns, as_id), 0))


def test_oracle_catches_a_half_made_change(monkeypatch):
    real = allones.VM._set_locked

    def change_then_fail(self, slot, flags, gpa, size, hva):
        real(self, slot & 0xFFFF, 0, 0, 0, 0) if self.memslots().get(slot & 0xFFFF) else None
        return real(self, slot, flags, gpa, size, hva)

    assert _finds(monkeypatch, allones.VM, "_set_locked", change_then_fail)


def test_oracle_catches_a_written_shared_page(monkeypatch):
    real = allones.Host.mmap
    pages = []

    def scribble(self, *args, **kwargs):
        if self.allones_page is not None:
            pages.append(self.allones_page)
            _poke(self.allones_page.hva, b"\0")
        return real(self, *args, **kwargs)

    try:
        assert _finds(monkeypatch, allones.Host, "mmap", scribble)
    finally:
        for page in pages:   # repaired, for the conftest's own check of every host
            _poke(page.hva, b"\xff")


def _poke(addr, data):
    """Write bytes at a read-only page's address: the bug a broken core would have."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(addr, allones.constants.PAGE_SIZE, mmap.PROT_READ | mmap.PROT_WRITE) == 0
    ctypes.memmove(addr, data, len(data))
    libc.mprotect(addr, allones.constants.PAGE_SIZE, mmap.PROT_READ)
