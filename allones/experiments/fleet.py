"""Fleets: N VMs on one Host, each with its own topology, each running a scan (or one ready
plan, such as a recorded boot, on the plan's topology) under one strategy; per-VM and host
totals, and the modeled time from the cost model.

Memory is the host's frames (really allocated in materialized mode, counted in accounting
mode, which a fleet of filled VMs beyond `ram_budget` uses). Page-table memory is every VM's
stage-2 pages plus the host's shared ones. filled-ksm reports the filled peak, the memory
once ksmd has merged every identical page (one frame for all of them) and the time that
takes at ksmd's default rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..constants import PAGE_SIZE
from ..pci.access import ScanResult
from ..pci.builders import from_spec
from ..pci.scans import plan_scan
from ..pci.topology import Topology
from .costmodel import CostModel
from .strategies import Strategy, get_strategy

#: "different VMs usually require different memory": the q35 default and root-port farms
DEFAULT_MIX = ("q35", "farm:8:0.5", "farm:16:0.5", "farm:32:0.5")
FARM_VARIANTS = 4             # seeds per farm size: which ports are empty differs
#: the most a fleet allocates for real by default; filled fleets past it are counted, not
#: allocated (accounting mode gives the same counts: materializing only proves them)
RAM_BUDGET = 1 << 30
#: by default a fleet may allocate this share of the memory available (MemAvailable)
RAM_SHARE = 1 / 8


_TOPOLOGIES: dict[str, Topology] = {}


def available_memory(meminfo: str = "/proc/meminfo", cgroup: str = "/sys/fs/cgroup") -> int | None:
    """Bytes this process could allocate without pushing others out: the kernel's
    MemAvailable estimate (si_mem_available()), less if a cgroup v2 memory.max leaves less
    (memory.max - memory.current); None where neither can be read (not Linux)."""
    available = None
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024     # kB, as /proc/meminfo says
                    break
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path(cgroup, "memory.max").read_text().strip()
        if limit != "max":
            room = max(int(limit) - int(Path(cgroup, "memory.current").read_text()), 0)
            available = room if available is None else min(available, room)
    except (OSError, ValueError):
        pass
    return available


def default_ram_budget(fleets_at_once: int = 1) -> int:
    """What one of `fleets_at_once` fleets running together may really allocate: RAM_SHARE
    of the memory available, shared between them, at most RAM_BUDGET in all; RAM_BUDGET
    shared where the available memory is unknown."""
    available = available_memory()
    total = RAM_BUDGET if available is None else min(RAM_BUDGET, int(available * RAM_SHARE))
    return total // max(fleets_at_once, 1)


def topology_mix(n: int, mix=DEFAULT_MIX, seed: int = 0) -> list[Topology]:
    """n topologies drawn from `mix` (specs for builders.from_spec), seeded; farms get one of
    FARM_VARIANTS seeds each. Equal specs give the same Topology object, in this process,
    so their scan plans are made once (cached_plan)."""
    rng = np.random.default_rng(seed)
    out = []
    for choice in rng.integers(0, len(mix), n).tolist():
        spec = mix[choice]
        if spec.startswith("farm:") and spec.count(":") == 2:
            spec = f"{spec}:{int(rng.integers(FARM_VARIANTS))}"
        if spec not in _TOPOLOGIES:
            _TOPOLOGIES[spec] = from_spec(spec)
        out.append(_TOPOLOGIES[spec])
    return out


_PLANS: dict = {}


def cached_plan(topology: Topology, scan: str, mechanism: str, options: dict) -> ScanResult:
    """plan_scan() once per (topology, scan, mechanism, options) in this process."""
    key = (id(topology), scan, mechanism, tuple(sorted(options.items())))
    if key not in _PLANS:
        _PLANS[key] = (topology, plan_scan(topology, scan, mechanism, **options))
    return _PLANS[key][1]


@dataclass
class FleetResult:
    """One fleet's run: a row per VM, host totals, and memory as VMs were added."""

    strategy: str
    scan: str
    mechanism: str
    rows: list[dict]
    host: dict
    memory_curve: list[int] = field(default_factory=list)   # host data bytes after VM k
    table_curve: list[int] = field(default_factory=list)    # page-table bytes after VM k
    costs: dict = field(default_factory=dict)
    error: str | None = None      # the host refused the setup (the fleet did not run)


def scan_events(stats: dict, pio_exits: int) -> tuple[dict, dict]:
    """(ECAM events, port I/O events) for the cost model, from VM.run's counters."""
    exits = stats.get("exits_mmio", 0) + stats.get("exits_emulated", 0)
    ecam = dict(userspace_exits=stats.get("exits_mmio", 0), kernel_exits=stats.get("exits_emulated", 0),
                ept_faults=stats.get("faults", 0) - exits, prefaulted=stats.get("prefaulted", 0),
                tlb_hits=stats.get("tlb_hits", 0))
    return ecam, dict(userspace_exits=pio_exits)


def run_fleet(strategy: str | Strategy, scan: str | None = None, mechanism: str = "linux-x86-default",
              n_vms: int = 64, mix=DEFAULT_MIX, seed: int = 0, costs: CostModel | None = None,
              materialize: bool | None = None, ram_budget: int | None = None,
              progress=None, options: dict | None = None, *, plan: ScanResult | None = None) -> FleetResult:
    """Run `n_vms` VMs on one Host under `strategy`, each scanning its own topology.

    materialize: None decides by `ram_budget`, bytes (default: default_ram_budget()):
    filled fleets that would not fit are counted, not allocated; the counts are the same. progress: called with no arguments after each VM. options: the scan's.
    plan: a ready ScanResult (e.g. a recorded boot, traces.load_capture) instead of `scan`:
    every VM has the plan's topology and replays it (mechanism, mix, seed are then unused).
    """
    strategy = get_strategy(strategy) if isinstance(strategy, str) else strategy
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy: a name or a Strategy, not {type(strategy).__name__}")
    if n_vms < 1:
        raise ValueError(f"n_vms {n_vms} must be at least 1")
    costs = costs or CostModel.default()
    if not isinstance(costs, CostModel):
        raise TypeError(f"costs: a CostModel, not {type(costs).__name__}")
    topologies, plans = _fleet_plans(n_vms, scan, mechanism, mix, seed, options, plan)
    if materialize is None:      # what the fills would allocate: every segment's holes
        need = sum(sum(s.size for s in t.segments) for t in topologies) if strategy.fills else 0
        materialize = need <= (default_ram_budget() if ram_budget is None else ram_budget)
    host = strategy.make_host(materialize=materialize)
    rows, curve, tables, vms, vm_tables = [], [], [], [], 0
    for index, (topology, vm_plan) in enumerate(zip(topologies, plans)):
        rows.append(_run_vm(strategy, host, topology, vm_plan, index, costs, vms))
        curve.append(host.nr_frames * PAGE_SIZE)
        vm_tables += rows[-1]["table_bytes"]
        tables.append(vm_tables + host.shared_pt_pages * PAGE_SIZE)
        if progress is not None:
            progress()
    name, mechanism = (plan.name, plan.mechanism) if plan is not None else (scan, mechanism)
    return FleetResult(strategy.name, name, mechanism, rows,
                       _host_totals(strategy, host, vms, rows, costs, materialize), curve, tables,
                       costs.as_dict())


def _fleet_plans(n_vms, scan, mechanism, mix, seed, options, plan) -> tuple[list, list]:
    """(topology, plan) of each VM: drawn from `mix` and planned, or the one ready plan."""
    if plan is not None:
        if not isinstance(plan, ScanResult):
            raise TypeError(f"plan: a ScanResult, not {type(plan).__name__}")
        if scan is not None or options:
            raise ValueError("run_fleet: give a scan (and its options) or a plan, not both")
        return [plan.topology] * n_vms, [plan] * n_vms
    if scan is None:
        raise ValueError("run_fleet: give a scan name or a plan")
    if isinstance(mix, str) or not mix:
        raise ValueError(f"mix: a non-empty list of topology specs, not {mix!r}")
    topologies = topology_mix(n_vms, mix, seed)
    return topologies, [cached_plan(t, scan, mechanism, options or {}) for t in topologies]


def _run_vm(strategy, host, topology, plan, index, costs, vms) -> dict:
    start = time.perf_counter()
    frames = host.nr_frames
    vm = strategy.make_vm(host)
    vmm = strategy.install(vm, topology)
    vms.append(vm)
    setup_seconds = time.perf_counter() - start
    run = vmm.replay(plan)
    ecam, pio = scan_events(run.stats, run.pio_exits)
    filled = (host.nr_frames - frames) if strategy.fills else 0
    setup = dict(pages_filled=filled, memslot_updates=len(vmm.slots))
    row = dict(strategy=strategy.name, scan=plan.name, mechanism=plan.mechanism, vm=index,
               topology=topology.name,
               memslots=len(vmm.slots), hole_pages=vmm.layout.hole_pages,
               data_bytes=(host.nr_frames - frames) * PAGE_SIZE,
               table_bytes=sum(vm.table_pages()) * PAGE_SIZE, **run.accesses,
               faults=ecam["ept_faults"], prefaulted=ecam["prefaulted"], tlb_hits=ecam["tlb_hits"],
               mmio_exits=ecam["userspace_exits"], mmio_exits_present=run.mmio_emulated,
               kernel_exits=ecam["kernel_exits"], pio_exits=run.pio_exits,
               mapped_2m=run.stats.get("mapped_2m", 0),
               modeled_ecam_ns=costs.modeled_ns(ecam), modeled_pio_ns=costs.modeled_ns(pio),
               modeled_setup_ns=costs.modeled_ns(setup), pages_filled=filled,
               setup_seconds=setup_seconds, wall_seconds=time.perf_counter() - start,
               hole_mismatches=run.hole_mismatches)
    row["modeled_scan_ns"] = row["modeled_ecam_ns"] + row["modeled_pio_ns"]
    return row


def _host_totals(strategy, host, vms, rows, costs, materialize) -> dict:
    data = host.nr_frames * PAGE_SIZE
    tables = (sum(sum(vm.table_pages()) for vm in vms) + host.shared_pt_pages) * PAGE_SIZE
    totals = dict(strategy=strategy.name, vms=len(vms), materialized=materialize, data_bytes=data,
                  table_bytes=tables, memslots=sum(r["memslots"] for r in rows))
    for key in ("faults", "prefaulted", "mmio_exits", "kernel_exits", "pio_exits", "tlb_hits",
                "modeled_scan_ns", "modeled_ecam_ns", "modeled_pio_ns", "modeled_setup_ns",
                "setup_seconds", "wall_seconds", "pages_filled", "hole_mismatches"):
        totals[key] = sum(r[key] for r in rows)
    totals["fill_seconds"] = host.fill_seconds
    filled = totals["pages_filled"]
    totals["data_bytes_merged"] = data - max(filled - 1, 0) * PAGE_SIZE if strategy.ksm else data
    totals["ksm_merge_seconds"] = costs.ksm_merge_seconds(filled) if strategy.ksm else 0.0
    return totals
