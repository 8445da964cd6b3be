"""Scan programs and the registry that names them.

Every scan is a generator `program(cycles, topology, rng, **options)` (see access.py) and
is run by `plan_scan()` against the topology's own config spaces, or by a VMM against a VM.
Linux's scans are in linux.py; here are the ones that are not Linux.
"""

from __future__ import annotations

import inspect
import math
import numbers

import numpy as np

from . import linux
from .access import ConfigCycles, ScanResult, SpacesResponder, drive
from .config_space import ConfigSpaces
from .ecam import Bdf, NR_DEVS, NR_FNS, _index
from .topology import Topology


def brute_force(cycles: ConfigCycles, topology: Topology, rng):
    """Every function of every bus of every window the mechanism reaches, one dword at
    offset 0, one bus a batch."""
    dev, fn = np.divmod(np.arange(NR_DEVS * NR_FNS), NR_FNS)
    for seg in _reachable(cycles, topology):
        for bus in range(seg.start_bus, seg.end_bus + 1):
            yield cycles.batch(seg.segment, bus, dev, fn, 0, 4)


def full_dump(cycles: ConfigCycles, topology: Topology, rng, max_buses: int | None = None):
    """Every dword of every function (`lspci -xxxx` of everything): 1024 dwords a function,
    or 64 where the mechanism stops at 0x100; `max_buses` per segment bounds the work (a
    256-bus window is 67M accesses)."""
    if max_buses is not None and max_buses < 1:
        raise ValueError(f"max_buses {max_buses} must be at least 1")
    for seg in _reachable(cycles, topology):
        top = 0x1000 if cycles.route(seg.segment, 0x100) is not None else 0x100
        devfn, reg = np.divmod(np.arange(NR_DEVS * NR_FNS * (top // 4)), top // 4)
        last = seg.end_bus if max_buses is None else min(seg.end_bus, seg.start_bus + max_buses - 1)
        for bus in range(seg.start_bus, last + 1):
            yield cycles.batch(seg.segment, bus, devfn >> 3, devfn & 7, reg * 4, 4)


def _reachable(cycles: ConfigCycles, topology: Topology):
    """The segments the mechanism reaches (conf1: segment 0 only)."""
    return [seg for seg in topology.segments if cycles.route(seg.segment, 0) is not None]


def firmware(cycles: ConfigCycles, topology: Topology, rng, passes: int = 1):
    """A simple enumerate-everything firmware walk (EDK2 PciBusDxe's PciPciDeviceInfoCollector
    shape): per bus, per device, function 0's vendor/device dword; if present, its header
    type, and functions 1-7 only if multifunction; bridges are followed depth first into the
    bus number their secondary register holds. OVMF walks the tree 6 times on q35 (the real
    log in tests/data): `passes=6`."""
    if passes < 1:
        raise ValueError(f"passes {passes} must be at least 1")
    for _ in range(passes):
        for segment, root in topology.root_buses():
            yield from _firmware_bus(cycles, segment, root)


def _firmware_bus(cycles, segment, bus):
    for dev in range(NR_DEVS):
        for fn in range(NR_FNS):
            bdf = Bdf(segment, bus, dev, fn)
            ids = yield from cycles.read(bdf, 0x00, 4)
            if ids & 0xFFFF in (0xFFFF, 0x0000):
                if fn == 0:
                    break
                continue
            header = yield from cycles.read(bdf, 0x0E, 1)
            yield from cycles.read(bdf, 0x08, 4)                     # class, revision
            if header & 0x7F == 1:
                buses = yield from cycles.read(bdf, 0x18, 4)
                secondary = buses >> 8 & 0xFF
                if secondary > bus:
                    yield from _firmware_bus(cycles, segment, secondary)
            if fn == 0 and not header & 0x80:
                break


def random_scan(cycles: ConfigCycles, topology: Topology, rng, count: int = 4096,
                write_fraction: float = 0.0):
    """`count` dword accesses at random functions and registers of the windows the
    mechanism reaches, shared out evenly (seeded); a `write_fraction` of them writes."""
    if count < 0 or not 0 <= write_fraction <= 1:
        raise ValueError(f"count {count} must be >= 0 and write_fraction {write_fraction} in [0, 1]")
    segments = _reachable(cycles, topology)
    for i, seg in enumerate(segments):
        n = count // len(segments) + (i < count % len(segments))
        top = 0x1000 if cycles.route(seg.segment, 0x100) is not None else 0x100
        batch = cycles.batch(seg.segment, rng.integers(seg.start_bus, seg.end_bus + 1, n),
                             rng.integers(0, NR_DEVS, n), rng.integers(0, NR_FNS, n),
                             rng.integers(0, top // 4, n) * 4, 4)
        batch["is_write"] = rng.random(n) < write_fraction
        batch["value"] = np.where(batch["is_write"] == 1, rng.integers(0, 2**32, n, dtype=np.uint64), 0)
        yield batch


#: name -> scan program (see each one's docstring)
SCANS = {
    "linux-boot-x86": linux.boot_x86,
    "linux-probe": linux.probe,
    "brute-force": brute_force,
    "full-dump": full_dump,
    "firmware": firmware,
    "random": random_scan,
}


def default_mechanism(name: str) -> str:
    """How a scan reaches config space unless told: Linux scans as x86 Linux does
    (linux-x86-default), the others (firmware, tools) through MMCONFIG."""
    return "linux-x86-default" if name.startswith("linux-") else "mmconfig"


def _int_option(lo: int, hi: int | None = None):
    def check(name, value):
        value = _index(name, value)
        if hi is None and value < lo:
            raise ValueError(f"{name} {value} must be at least {lo}")
        if hi is not None and not lo <= value <= hi:
            raise ValueError(f"{name} {value} not in {lo}..{hi}")
    return check


def _fraction(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise ValueError(f"{name} {value} not in [0, 1]")


def _flag(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, not {value!r}")


def _cpu(name, value):
    if not isinstance(value, str) or value not in linux.CPUS:
        raise ValueError(f"unknown {name} {value!r}; one of {', '.join(linux.CPUS)}")


#: option -> check(name, value): every scan's options, checked before the scan starts
OPTION_CHECKS = {
    "max_buses": _int_option(1, 256), "passes": _int_option(1), "count": _int_option(0),
    "write_fraction": _fraction, "cpu": _cpu, "last_bus": _int_option(-1, 255),
    "pcie_scan_all": _flag,
}


def scan_program(topology: Topology, name: str, mechanism: str = "linux-x86-default",
                 seed: int = 0, **options):
    """(ConfigCycles, generator) of the named scan; ValueError for unknown names or options,
    and TypeError or ValueError naming an option or the seed whose value is bad (checked
    here, before the scan starts)."""
    if not isinstance(name, str) or name not in SCANS:
        raise ValueError(f"unknown scan {name!r}; one of {', '.join(SCANS)}")
    seed = _index("seed", seed)
    if seed < 0:
        raise ValueError(f"seed {seed} must be a non-negative integer")
    cycles = ConfigCycles(topology, mechanism)
    program = SCANS[name]
    allowed = set(inspect.signature(program).parameters) - {"cycles", "topology", "rng"}
    unknown = set(options) - allowed
    if unknown:
        raise ValueError(f"scan {name!r} takes no option {', '.join(sorted(unknown))} "
                         f"(it takes: {', '.join(sorted(allowed)) or 'none'})")
    for key, value in options.items():
        OPTION_CHECKS[key](key, value)
    return cycles, program(cycles, topology, np.random.default_rng(seed), **options)


def plan_scan(topology: Topology, name: str, mechanism: str = "linux-x86-default", seed: int = 0,
              progress=None, **options) -> ScanResult:
    """Run a scan against the topology's own config spaces: every access, in order, with the
    values a correct VMM returns (holes all-ones). progress(accesses planned so far): called
    after each batch (full-dump plans a bus at a time)."""
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, not {type(progress).__name__}")
    cycles, program = scan_program(topology, name, mechanism, seed, **options)
    return ScanResult(name, mechanism, topology,
                      drive(program, SpacesResponder(ConfigSpaces(topology)), progress))
