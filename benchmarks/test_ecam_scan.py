"""Replay of a brute-force scan of one ECAM segment: 65,536 function pages, one dword each.

Strategies for the holes (here: the whole segment): `filled` (a READONLY slot over per-VM
memory really filled with 0xff), `allones` (the RFC: KVM_MEM_ALLONES, on-demand faults) and
`allones-whole-slot` (the series' follow-up: the first fault maps the slot). `cold` replays on
a fresh VM (every fault taken), `warm` on a VM that already ran the scan; in `warm`, the
pure-Python oracle (tests/run_reference.py) replays the same stream for scale. (Its cold
replay rebuilds the table-page set per fault, by design: quadratic, not benchmarked.)
Run: python -m pytest benchmarks/test_ecam_scan.py --benchmark-only --benchmark-group-by=group
"""

import sys
from pathlib import Path

import numpy as np
import pytest

import allones
from allones.constants import KVM_MEM_ALLONES, KVM_MEM_READONLY, PAGE_SIZE, PROT_READ

ECAM_BASE = 0xB000_0000
SEGMENT = 256 << 20                      # 256 buses x 32 devices x 8 functions x 4 KiB
SCAN = ECAM_BASE + np.arange(SEGMENT // PAGE_SIZE, dtype=np.uint64) * PAGE_SIZE
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import run_reference  # noqa: E402  (tests/run_reference.py: the pure-Python oracle)

STRATEGIES = {
    "filled": dict(),
    "allones": dict(),
    "allones-whole-slot": dict(prefault="whole-slot"),
}


def make_vm(strategy):
    """A host and a VM whose ECAM segment is backed as `strategy` says."""
    host = allones.Host()
    vm = allones.VM(host, **STRATEGIES[strategy])
    if strategy == "filled":
        holes = host.mmap(SEGMENT, fill=0xFF, prot=PROT_READ)
        vm.set_user_memory_region(1, KVM_MEM_READONLY, ECAM_BASE, SEGMENT, holes.hva)
    else:
        vm.set_user_memory_region(1, KVM_MEM_ALLONES, ECAM_BASE, SEGMENT, 0)
    return host, vm


def record(benchmark, strategy, host, vm, stats):
    benchmark.extra_info.update(
        strategy=strategy, accesses=stats["accesses"], faults=stats["faults"],
        prefaulted=stats["prefaulted"], exits=stats["exits_mmio"] + stats["exits_emulated"],
        data_bytes=host.nr_frames * PAGE_SIZE, table_bytes=sum(vm.table_pages()) * PAGE_SIZE,
        fill_seconds=host.fill_seconds)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cold(benchmark, strategy):
    """A fresh VM each round: every fault (and, for filled, no fill: setup is not timed)."""
    benchmark.group = "ecam_scan/cold"
    made = []

    def setup():
        made.append(make_vm(strategy))
        return (made[-1][1],), {}

    result = benchmark.pedantic(lambda vm: vm.run(SCAN, 4), setup=setup, rounds=5)
    host, vm = made[-1]
    record(benchmark, strategy, host, vm, result.stats)
    assert (result.values == 0xFFFFFFFF).all()
    assert result.stats["faults"] == (1 if strategy == "allones-whole-slot" else len(SCAN))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_warm(benchmark, strategy):
    """The same scan again: every access hits the stage-2 table."""
    benchmark.group = "ecam_scan/warm"
    host, vm = make_vm(strategy)
    vm.run(SCAN, 4)
    result = benchmark(vm.run, SCAN, 4)
    record(benchmark, strategy, host, vm, result.stats)
    assert result.stats["tlb_hits"] == len(SCAN) and (result.values == 0xFFFFFFFF).all()


def oracle_vm(strategy):
    host = allones.Host()
    ref = run_reference.RunReference(host, **STRATEGIES[strategy])
    ref.set_user_memory_region(1, KVM_MEM_ALLONES, ECAM_BASE, SEGMENT, 0)
    return ref


ORACLE_ROUNDS = 3  # a fraction of a second each: the point is the ratio, not its precision


def test_warm_oracle(benchmark):
    benchmark.group = "ecam_scan/warm"
    benchmark.extra_info.update(strategy="allones (Python oracle)")
    ref = oracle_vm("allones-whole-slot")   # warmed by one fault: its cold path is quadratic
    args = SCAN, [4] * len(SCAN), [False] * len(SCAN)
    ref.run(*args)
    result = benchmark.pedantic(ref.run, args, rounds=ORACLE_ROUNDS)
    assert result.stats["tlb_hits"] == len(SCAN)
