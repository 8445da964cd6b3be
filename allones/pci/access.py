"""Config accesses as arrays, the two mechanisms that carry them, and the scan driver.

A scan is a program: a generator that yields batches of config accesses (ACCESS_DTYPE
arrays) and is sent back the values its reads returned, so what it touches next can depend
on what it read (Linux probes function 1 only if function 0 says "multifunction"). A driver
answers each batch: `scans.plan_scan()` from the topology's own config spaces (fast, pure
Python), `allones.vmm.Vmm.run_scan()` through a VM's memslots and exits.

Mechanisms (arch/x86/pci/common.c: raw_pci_read()):
- MMCONFIG: a load/store in the segment's ECAM window, which memslots can back;
- CONF1: `outl(0xCF8, address)` then an access to `0xCFC + (reg & 3)`: two port I/O exits
  to userspace, whatever backs the ECAM window (arch/x86/pci/direct.c: pci_conf1_read()).
  It reaches segment 0 and registers below 0x100 only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .ecam import Bdf, PciAddressError, Segment, _broadcast, _int_array
from .topology import Topology

ACCESS_DTYPE = np.dtype([("segment", "<u2"), ("bus", "u1"), ("dev", "u1"), ("fn", "u1"),
                         ("reg", "<u2"), ("size", "u1"), ("is_write", "u1"), ("mech", "u1"),
                         ("value", "<u8")])
MMCONFIG, CONF1 = 0, 1
MECH_NAMES = {MMCONFIG: "mmconfig", CONF1: "conf1"}
#: how a scan's accesses reach config space (docs/pci.md, "Mechanisms")
MECHANISMS = ("mmconfig", "conf1", "linux-x86-default")
PCI_CONF1_ADDRESS_PORT, PCI_CONF1_DATA_PORT = 0xCF8, 0xCFC
_LIMITS = (("segment", 1 << 16), ("bus", 256), ("dev", 32), ("fn", 8), ("reg", 4096))


def all_ones(size) -> int | np.ndarray:
    """What a read of `size` bytes returns from nothing (PCI_ERROR_RESPONSE, masked)."""
    if np.isscalar(size):
        return (1 << 8 * int(size)) - 1
    size = np.asarray(size, dtype=np.uint64)
    return np.where(size >= 8, np.uint64(2**64 - 1), (np.uint64(1) << (np.uint64(8) * size)) - np.uint64(1))


def accesses(segment, bus, dev, fn, reg, size, is_write=0, value=0, mech=MMCONFIG) -> np.ndarray:
    """An ACCESS_DTYPE array from scalars or equal-length arrays (broadcast), every field
    checked: TypeError for non-integers, PciAddressError for a part out of range, ValueError
    for mismatched lengths, a bad size, an unaligned access, a value that does not fit its
    size, or a bad flag or mechanism (see check_accesses)."""
    names = ("segment", "bus", "dev", "fn", "reg", "size", "is_write", "mech", "value")
    raw = (segment, bus, dev, fn, reg, size, is_write, mech, value)
    cols = []
    for name, x in zip(names, raw):
        arr = np.asarray(x) if name == "is_write" else None
        if arr is not None and arr.dtype == bool:
            arr = arr.astype(np.uint8)
        cols.append(_int_array(name, x if arr is None else arr, None if name in dict(_LIMITS) else ValueError))
    cols = _broadcast(", ".join(names), *cols)
    for name, col in zip(names, cols):
        if col.size and col.min() < 0:
            raise (PciAddressError if name in dict(_LIMITS) else ValueError)(
                f"{name} has negative values (min {col.min()})")
    for (name, limit), col in zip(_LIMITS, cols):
        if col.size and col.max() >= limit:
            raise PciAddressError(f"{name} out of range 0..{limit - 1:#x} (max {col.max():#x})")
    out = np.empty(cols[0].shape, dtype=ACCESS_DTYPE).reshape(-1)
    for name, col in zip(names, cols):
        if name in ("size", "is_write", "mech") and col.size and col.max() > 255:
            raise ValueError(f"{name} {col.max()} out of range")
        out[name] = col.reshape(-1)
    return check_accesses(out)


def check_accesses(batch, name: str = "accesses") -> np.ndarray:
    """Check an ACCESS_DTYPE array before anything runs it; the array, unchanged.

    TypeError unless a 1-D numpy array of ACCESS_DTYPE; ValueError for a size other than 1,
    2, 4, 8, an access crossing the end of config space or not naturally aligned, is_write
    other than 0/1, an unknown mechanism, a value that does not fit its size, or a conf1
    access that conf1 cannot make (segment > 0 or register >= 0x100); PciAddressError for a
    device or function out of range. The message names the first bad access's index."""
    if not isinstance(batch, np.ndarray) or batch.dtype != ACCESS_DTYPE:
        what = f"dtype {batch.dtype}" if isinstance(batch, np.ndarray) else type(batch).__name__
        raise TypeError(f"{name} must be an ACCESS_DTYPE array (see accesses()), not {what}")
    if batch.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {batch.shape}")
    if not len(batch):
        return batch
    size, reg = batch["size"], batch["reg"].astype(np.int64)
    value, conf1 = batch["value"], batch["mech"] == CONF1
    checks = (
        (batch["dev"] >= 32, PciAddressError, "device out of range 0..0x1f"),
        (batch["fn"] >= 8, PciAddressError, "function out of range 0..0x7"),
        (~np.isin(size, (1, 2, 4, 8)), ValueError, "size not 1, 2, 4 or 8"),
        (reg + size > 4096, PciAddressError, "register past the 4 KiB of config space"),
        (reg % np.maximum(size, 1) != 0, ValueError, "register not aligned to the size"),
        (batch["is_write"] > 1, ValueError, "is_write not 0 or 1"),
        (~np.isin(batch["mech"], (MMCONFIG, CONF1)), ValueError, "mechanism not MMCONFIG (0) or CONF1 (1)"),
        ((size < 8) & (value >> (np.uint64(8) * np.minimum(size, 7).astype(np.uint64)) != 0), ValueError,
         "value does not fit the size"),
        (conf1 & ((batch["segment"] != 0) | (reg >= 0x100)), ValueError,
         "conf1 reaches segment 0 and registers below 0x100 only"),
    )
    for bad, cls, what in checks:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            a = batch[i]
            raise cls(f"{name}[{i}]: {what} ({_describe(a)})")
    return batch


def _describe(a) -> str:
    return (f"segment {int(a['segment'])}, bus {int(a['bus']):#x}, device {int(a['dev']):#x}, "
            f"function {int(a['fn'])}, register {int(a['reg']):#x}, size {int(a['size'])}, "
            f"is_write {int(a['is_write'])}, mech {int(a['mech'])}, value {int(a['value']):#x}")


class ConfigCycles:
    """How a guest reaches config space under one mechanism: the scans' access helpers.

    `read`, `write` are generators (use `yield from`) returning what the access returns;
    each yields one access as a tuple in ACCESS_DTYPE's field order. `batch` builds an
    array of reads to yield at once. `early=True` is the kernel's early port I/O
    (arch/x86/pci/early.c: read_pci_config()), conf1 whatever the mechanism. An access no
    mechanism reaches (conf1 past 0xFF or in another segment) returns all-ones without any
    access, as pci_conf1_read() fails with -EINVAL and pci_bus_read_config_*() then reports
    PCI_ERROR_RESPONSE.
    """

    def __init__(self, topology: Topology, mechanism: str = "linux-x86-default"):
        if not isinstance(topology, Topology):
            raise TypeError(f"topology must be a Topology, not {type(topology).__name__}")
        if not isinstance(mechanism, str) or mechanism not in MECHANISMS:
            raise ValueError(f"unknown mechanism {mechanism!r}; one of {', '.join(MECHANISMS)}")
        self.mechanism = mechanism
        self._windows = {s.segment: (s.start_bus, s.end_bus) for s in topology.segments}

    def route(self, segment: int, reg: int, early: bool = False, bus: int | None = None) -> int | None:
        """MMCONFIG, CONF1, or None (nothing reaches it). MMCONFIG reaches only buses in a
        segment's window (pci_mmcfg_read() fails elsewhere); conf1 reaches any bus of
        segment 0. `bus` None: assume a bus in the window."""
        conf1_ok = segment == 0 and reg < 0x100
        if early or self.mechanism == "conf1":
            return CONF1 if conf1_ok else None
        if self.mechanism == "linux-x86-default" and conf1_ok:
            return CONF1                            # raw_pci_read(): conf1 first on x86
        window = self._windows.get(segment)
        if window is None or (bus is not None and not window[0] <= bus <= window[1]):
            return None
        return MMCONFIG

    def read(self, bdf: Bdf, reg: int, size: int, early: bool = False):
        """Read `size` bytes at `reg` of bdf (a generator: `value = yield from ...`)."""
        mech = self.route(bdf.segment, reg, early, bdf.bus)
        if mech is None:
            return (1 << 8 * size) - 1
        return (yield (bdf.segment, bdf.bus, bdf.dev, bdf.fn, reg, size, 0, mech, 0))

    def write(self, bdf: Bdf, reg: int, size: int, value: int, early: bool = False):
        """Write `size` bytes at `reg` of bdf (a generator: `yield from ...`)."""
        mech = self.route(bdf.segment, reg, early, bdf.bus)
        if mech is not None:
            yield (bdf.segment, bdf.bus, bdf.dev, bdf.fn, reg, size, 1, mech, value)

    def batch(self, segment: int, bus, dev, fn, reg, size) -> np.ndarray:
        """Reads that do not depend on each other, each routed (all must be reachable)."""
        reg = np.asarray(reg)
        low, high = self.route(segment, 0), self.route(segment, 0x100)
        if low is None or (high is None and np.any(reg >= 0x100)):
            raise ValueError(f"mechanism {self.mechanism} cannot reach segment {segment}"
                             + ("" if low is None else " registers past 0xff"))
        mech = np.where(reg < 0x100, low, MMCONFIG if high is None else high)
        return accesses(segment, bus, dev, fn, reg, size, 0, 0, mech)


def drive(program, responder, progress=None) -> np.ndarray:
    """Run a scan program; `responder.one(access)` answers a single access (a tuple) and
    `responder.batch(array)` an array of them. Returns every access in order, reads
    carrying the value they returned. progress(accesses so far) is called after each batch."""
    done, singles, count = [], [], 0
    try:
        item = next(program)
        while True:
            if type(item) is tuple:
                value = responder.one(item)
                singles.append(item if item[6] else item[:8] + (value,))
            else:
                if singles:
                    done.append(np.array(singles, dtype=ACCESS_DTYPE))
                    singles = []
                value = np.asarray(responder.batch(item), dtype=np.uint64)
                item = item.copy()
                reads = item["is_write"] == 0
                item["value"][reads] = value[reads]
                done.append(item)
                if progress is not None:
                    count += len(item)
                    progress(count)
            item = program.send(value)
    except StopIteration:
        pass
    if singles:
        done.append(np.array(singles, dtype=ACCESS_DTYPE))
    return np.concatenate(done) if done else np.empty(0, dtype=ACCESS_DTYPE)


class SpacesResponder:
    """Answers from ConfigSpaces, as a correct VMM does: present functions' registers; holes
    read all-ones and drop writes. A write's answer is the value written."""

    def __init__(self, spaces):
        self.spaces = spaces
        self.present = present_keys(spaces.topology)

    def one(self, a: tuple) -> int:
        """Answer one access, a tuple in ACCESS_DTYPE's field order."""
        key = a[0] << 16 | a[1] << 8 | a[2] << 3 | a[3]
        if a[6]:
            self.spaces.write_key(key, a[4], a[5], a[8])
            return a[8]
        return self.spaces.read_key(key, a[4], a[5])

    def batch(self, batch: np.ndarray) -> np.ndarray:
        """Answer an ACCESS_DTYPE array, in order."""
        values = np.where(batch["is_write"] == 1, batch["value"], all_ones(batch["size"])).astype(np.uint64)
        for i in np.flatnonzero(np.isin(page_keys(batch), self.present)).tolist():
            values[i] = self.one(tuple(batch[i].tolist()))
        return values


def recorded_answers(topology: Topology, recorded: np.ndarray) -> np.ndarray:
    """A copy of `recorded` whose read values are what a correct VMM answers, replaying its
    writes in order through fresh config spaces (the oracle for replays and traces)."""
    from .config_space import ConfigSpaces
    out = recorded.copy()
    out["value"] = SpacesResponder(ConfigSpaces(topology)).batch(recorded)
    return out


def present_keys(topology: Topology) -> np.ndarray:
    """page_keys() of the present functions, sorted."""
    return np.array(sorted(f.bdf.key for f in topology), dtype=np.uint64)


def page_keys(batch) -> np.ndarray:
    """segment << 16 | bus << 8 | devfn of each access: one key per function."""
    return (batch["segment"].astype(np.uint64) << np.uint64(16) | batch["bus"].astype(np.uint64) << np.uint64(8)
            | batch["dev"].astype(np.uint64) << np.uint64(3) | batch["fn"].astype(np.uint64))


def key_bdf(key: int) -> Bdf:
    """The Bdf of a Bdf.key."""
    return Bdf(key >> 16, key >> 8 & 0xFF, key >> 3 & 31, key & 7)


@dataclass
class ScanResult:
    """Every access a scan made, in order, with what reads returned."""

    name: str
    mechanism: str
    topology: Topology
    accesses: np.ndarray

    def __post_init__(self):
        if not isinstance(self.topology, Topology):
            raise TypeError(f"topology must be a Topology, not {type(self.topology).__name__}")
        if not isinstance(self.accesses, np.ndarray) or self.accesses.dtype != ACCESS_DTYPE \
                or self.accesses.ndim != 1:
            raise TypeError("accesses must be a 1-D ACCESS_DTYPE array")

    def __len__(self) -> int:
        return len(self.accesses)

    def hole_mask(self) -> np.ndarray:
        """True for accesses to functions that are not present."""
        return self._holes

    @cached_property
    def _holes(self) -> np.ndarray:
        return ~np.isin(page_keys(self.accesses), present_keys(self.topology))

    def touched(self, mech: int | None = None, holes: bool | None = None) -> set[Bdf]:
        """Functions accessed (by one mechanism; only holes or only present ones)."""
        sel = np.ones(len(self.accesses), dtype=bool)
        if mech is not None:
            sel &= self.accesses["mech"] == mech
        if holes is not None:
            sel &= self.hole_mask() == holes
        return {key_bdf(int(k)) for k in np.unique(page_keys(self.accesses[sel]))}

    def counts(self) -> dict[str, int]:
        """Accesses by mechanism and kind: `{mech}_{reads,writes,hole_reads,hole_writes}`."""
        holes, out = self.hole_mask(), {"accesses": len(self.accesses)}
        for mech, name in MECH_NAMES.items():
            m = self.accesses["mech"] == mech
            w = self.accesses["is_write"] == 1
            out[f"{name}_reads"] = int(np.count_nonzero(m & ~w))
            out[f"{name}_writes"] = int(np.count_nonzero(m & w))
            out[f"{name}_hole_reads"] = int(np.count_nonzero(m & ~w & holes))
            out[f"{name}_hole_writes"] = int(np.count_nonzero(m & w & holes))
        return out

    def mmconfig_gpas(self) -> np.ndarray:
        """Guest-physical addresses of the MMCONFIG accesses, in order."""
        return gpas_of(self.topology, self.accesses[self.accesses["mech"] == MMCONFIG])


def gpas_of(topology: Topology, batch: np.ndarray) -> np.ndarray:
    """ECAM gpa of each access (all must be in a segment's window)."""
    out = np.empty(len(batch), dtype=np.uint64)
    for number in np.unique(batch["segment"]).tolist():
        sel = batch["segment"] == number
        seg: Segment = topology.segment(number)
        b = batch[sel]
        out[sel] = seg.gpas(b["bus"], b["dev"], b["fn"], b["reg"])
    return out
