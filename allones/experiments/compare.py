"""`allones compare`: every strategy, on a fleet of VMs, under the scans a real guest makes.

The default grid: 64 VMs (the q35 default and root-port farms, seeded), every strategy, and
four scans: the Linux x86 boot with the x86 default mechanism (port I/O below 0x100: what a
strategy cannot change) and with MMCONFIG preferred, a brute-force scan, and OVMF's six
firmware passes. Fleets run in a process pool; each is independent and seeded.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

from ..errors import NoMemory
from ..pci.holes import MemslotBudgetError
from .costmodel import CostModel
from .fleet import DEFAULT_MIX, RAM_BUDGET, FleetResult, run_fleet
from .strategies import STRATEGIES, get_strategy


@dataclass(frozen=True)
class ScanSpec:
    """A scan as the reports name it: label, scan program, mechanism, options."""

    label: str
    scan: str
    mechanism: str
    options: dict = field(default_factory=dict)


DEFAULT_SCANS = (
    ScanSpec("linux-boot (x86 default)", "linux-boot-x86", "linux-x86-default"),
    ScanSpec("linux-boot (MMCONFIG)", "linux-boot-x86", "mmconfig"),
    ScanSpec("brute-force", "brute-force", "mmconfig"),
    ScanSpec("firmware (OVMF-like)", "firmware", "mmconfig", {"passes": 6}),
)


def run_one(strategy, spec, n_vms, mix, seed, costs, ram_budget=RAM_BUDGET) -> tuple[ScanSpec, FleetResult]:
    """One fleet; a strategy the host refuses (memfd-alias past vm.max_map_count: ENOMEM,
    too many memslots) is a result with its error, as the real setup would fail. Any other
    error is a bug and propagates."""
    try:
        return spec, run_fleet(strategy, spec.scan, spec.mechanism, n_vms, mix, seed, costs,
                               options=spec.options, ram_budget=ram_budget)
    except (NoMemory, MemslotBudgetError) as exc:
        return spec, FleetResult(strategy, spec.scan, spec.mechanism, [], {}, error=str(exc),
                                 costs=costs.as_dict())


def compare(strategies=tuple(STRATEGIES), scans=DEFAULT_SCANS, n_vms: int = 64, mix=DEFAULT_MIX,
            seed: int = 0, costs: CostModel | None = None, workers: int | None = None,
            progress=None) -> list[tuple[ScanSpec, FleetResult]]:
    """Run every (strategy, scan) fleet; results in grid order. `progress(done, total)` is
    called as fleets finish. workers: processes (default: the CPUs; 1 runs in this process)."""
    if isinstance(strategies, str) or not strategies:
        raise ValueError("strategies: a non-empty list of names")
    strategies = [get_strategy(s).name for s in strategies]
    if len(set(strategies)) != len(strategies):
        raise ValueError(f"strategies repeat: {strategies}")
    if n_vms < 1:
        raise ValueError(f"n_vms {n_vms} must be at least 1")
    if workers is not None and workers < 1:
        raise ValueError(f"workers {workers} must be at least 1")
    costs = costs or CostModel.default()
    jobs = [(s, spec) for spec in scans for s in strategies]
    workers = workers or os.cpu_count() or 1
    budget = RAM_BUDGET // min(workers, len(jobs))     # fleets at once share the RAM
    results = {}
    if workers == 1:
        for i, (s, spec) in enumerate(jobs):
            results[i] = run_one(s, spec, n_vms, mix, seed, costs, budget)
            if progress:
                progress(len(results), len(jobs))
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = {pool.submit(run_one, s, spec, n_vms, mix, seed, costs, budget): i for i, (s, spec) in enumerate(jobs)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if progress:
                    progress(len(results), len(jobs))
    return [results[i] for i in range(len(jobs))]
