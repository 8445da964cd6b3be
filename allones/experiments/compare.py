"""`allones compare`: every strategy, on a fleet of VMs, under the scans a real guest makes.

The default grid: 64 VMs (the q35 default and root-port farms, seeded), every strategy, and
four scans: the Linux x86 boot with the x86 default mechanism (port I/O below 0x100: what a
strategy cannot change) and with MMCONFIG preferred, a brute-force scan, and OVMF's six
firmware passes. Fleets run in a process pool; each is independent and seeded.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

from ..errors import NoMemory
from ..pci.access import MECHANISMS
from ..pci.builders import from_spec
from ..pci.ecam import _index
from ..pci.holes import MemslotBudgetError
from ..pci.scans import OPTION_CHECKS, SCANS
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

    def __post_init__(self):
        """Check every field now (not in each fleet later): ValueError or TypeError naming it."""
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"ScanSpec label {self.label!r} is not a non-empty str")
        if not isinstance(self.scan, str) or self.scan not in SCANS:
            raise ValueError(f"ScanSpec {self.label!r}: unknown scan {self.scan!r}; one of {', '.join(SCANS)}")
        if not isinstance(self.mechanism, str) or self.mechanism not in MECHANISMS:
            raise ValueError(f"ScanSpec {self.label!r}: unknown mechanism {self.mechanism!r}; one of "
                             f"{', '.join(MECHANISMS)}")
        if not isinstance(self.options, Mapping):
            raise TypeError(f"ScanSpec {self.label!r}: options must be a mapping, not "
                            f"{type(self.options).__name__}")
        allowed = set(inspect.signature(SCANS[self.scan]).parameters) - {"cycles", "topology", "rng"}
        for key, value in self.options.items():
            if key not in allowed:
                raise ValueError(f"ScanSpec {self.label!r}: scan {self.scan!r} takes no option {key!r} "
                                 f"(it takes: {', '.join(sorted(allowed)) or 'none'})")
            try:
                OPTION_CHECKS[key](key, value)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"ScanSpec {self.label!r}: {exc}") from None


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
    if isinstance(scans, (str, ScanSpec)) or not scans:
        raise ValueError("scans: a non-empty list of ScanSpecs")
    scans = list(scans)
    for i, spec in enumerate(scans):
        if not isinstance(spec, ScanSpec):
            raise TypeError(f"scans[{i}] must be a ScanSpec, not {type(spec).__name__}")
    if len({s.label for s in scans}) != len(scans):
        raise ValueError(f"scan labels repeat: {[s.label for s in scans]}")
    n_vms = _index("n_vms", n_vms)
    if n_vms < 1:
        raise ValueError(f"n_vms {n_vms} must be at least 1")
    _check_mix(mix)
    seed = _index("seed", seed)
    if seed < 0:
        raise ValueError(f"seed {seed} must be a non-negative integer")
    if costs is not None and not isinstance(costs, CostModel):
        raise TypeError(f"costs must be a CostModel, not {type(costs).__name__}")
    if workers is not None:
        workers = _index("workers", workers)
        if workers < 1:
            raise ValueError(f"workers {workers} must be at least 1")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, not {type(progress).__name__}")
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


def _check_mix(mix) -> None:
    """A fleet's topology mix: a non-empty list of specs from_spec accepts (checked here,
    before any fleet starts, so a bad one fails at once, naming it)."""
    if isinstance(mix, str) or not hasattr(mix, "__iter__"):
        raise ValueError(f"mix: a non-empty list of topology specs, not {mix!r}")
    mix = list(mix)
    if not mix:
        raise ValueError("mix: a non-empty list of topology specs, not an empty one")
    for i, spec in enumerate(mix):
        try:
            from_spec(spec)
        except (FileNotFoundError, TypeError, ValueError) as exc:
            if type(exc) not in (FileNotFoundError, TypeError, ValueError):
                raise            # TopologyParseError and the like: they name the file and line
            raise type(exc)(f"mix[{i}]: {exc}") from None
