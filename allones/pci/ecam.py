"""ECAM geometry: where a function's config space sits in guest-physical memory.

PCIe ECAM (PCI Firmware Spec 3.x, "Enhanced Configuration Access Mechanism"): each segment
(PCI domain) has a window described by one ACPI MCFG entry (base address, segment, start and
end bus). Within it a function's 4 KiB of config space starts at

    offset = (bus - start_bus) << 20 | dev << 15 | fn << 12 | reg

Linux computes the same in `PCI_MMCFG_BUS_OFFSET()` / `pci_dev_base()` of
arch/x86/pci/mmconfig_64.c: the MCFG base address is that of bus 0 even when start_bus > 0,
so the window begins at base + (start_bus << 20).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

import numpy as np

BUS_SHIFT, DEV_SHIFT, FN_SHIFT = 20, 15, 12
NR_BUSES, NR_DEVS, NR_FNS = 256, 32, 8
CONFIG_SPACE_SIZE = 4096          # PCI_CFG_SPACE_EXP_SIZE
LEGACY_CONFIG_SPACE_SIZE = 256    # PCI_CFG_SPACE_SIZE
MAX_SEGMENT = 0xFFFF


class PciAddressError(ValueError):
    """A bus, device, function, register or address outside what PCI (or the window) allows."""


def _index(name: str, value) -> int:
    """value as an int (TypeError naming it for a float, a str, a bool, None...)."""
    if type(value) is int:   # the common case, first: exits call this per access
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, not bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None


def _check(name: str, value, limit: int) -> int:
    value = _index(name, value)
    if not 0 <= value < limit:
        raise PciAddressError(f"{name} {value:#x} out of range 0..{limit - 1:#x}")
    return value


def _int_array(name: str, values, too_big=None) -> np.ndarray:
    """values as an integer numpy array: TypeError naming `name` for floats, strings,
    booleans or objects; `too_big` (default PciAddressError) for Python integers past 64 bits."""
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as exc:     # ragged nesting
        raise TypeError(f"{name} must be integers: {exc}") from None
    if arr.dtype == object:                     # Python ints past int64, or mixed objects
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in arr.reshape(-1).tolist()):
            raise TypeError(f"{name} must be integers, got dtype object")
        raise (too_big or PciAddressError)(f"{name} has values past 64 bits")
    if arr.size == 0 and arr.dtype.kind == "f":   # np.asarray([]) is float64
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    return arr


def _broadcast(names: str, *arrays) -> list[np.ndarray]:
    """np.broadcast_arrays, with a ValueError naming the arrays for mismatched lengths."""
    try:
        return np.broadcast_arrays(*arrays)
    except ValueError:
        shapes = ", ".join(str(a.shape) for a in arrays)
        raise ValueError(f"{names}: arrays of mismatched lengths (shapes {shapes})") from None


@dataclass(frozen=True, order=True)
class Bdf:
    """A function's address: segment (domain), bus, device, function; printed as lspci does."""

    segment: int
    bus: int
    dev: int
    fn: int

    def __post_init__(self):
        for name, field, limit in (("segment", "segment", MAX_SEGMENT + 1), ("bus", "bus", NR_BUSES),
                                   ("device", "dev", NR_DEVS), ("function", "fn", NR_FNS)):
            object.__setattr__(self, field, _check(name, getattr(self, field), limit))

    @property
    def devfn(self) -> int:
        """PCI_DEVFN(dev, fn)."""
        return self.dev << 3 | self.fn

    @property
    def key(self) -> int:
        """segment << 16 | bus << 8 | devfn: one integer per function (see access.page_keys)."""
        return self.segment << 16 | self.bus << 8 | self.dev << 3 | self.fn

    def __str__(self) -> str:
        return f"{self.segment:04x}:{self.bus:02x}:{self.dev:02x}.{self.fn:x}"

    _PATTERN = re.compile(r"^(?:([0-9a-fA-F]{1,4}):)?([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$")

    @classmethod
    def parse(cls, text: str) -> Bdf:
        """'0000:00:1f.3' or '00:1f.3' (segment 0), as lspci prints them."""
        if not isinstance(text, str):
            raise TypeError(f"a PCI address to parse must be a str, not {type(text).__name__}")
        m = cls._PATTERN.match(text.strip())
        if not m:
            raise PciAddressError(f"not a PCI address [[segment:]bus:dev.fn]: {text!r}")
        seg, bus, dev, fn = m.groups()
        return cls(int(seg or "0", 16), int(bus, 16), int(dev, 16), int(fn, 16))


@dataclass(frozen=True)
class Segment:
    """One ECAM window: an MCFG entry (base of bus 0, segment, start..end bus, inclusive)."""

    base: int
    segment: int = 0
    start_bus: int = 0
    end_bus: int = 255

    def __post_init__(self):
        object.__setattr__(self, "base", _check("ECAM base", self.base, 1 << 64))
        for name, field, limit in (("segment", "segment", MAX_SEGMENT + 1), ("start bus", "start_bus", NR_BUSES),
                                   ("end bus", "end_bus", NR_BUSES)):
            object.__setattr__(self, field, _check(name, getattr(self, field), limit))
        if self.end_bus < self.start_bus:
            raise PciAddressError(f"end bus {self.end_bus:#x} below start bus {self.start_bus:#x}")
        if self.base % (1 << BUS_SHIFT):
            raise PciAddressError(f"ECAM base {self.base:#x} not 1 MiB aligned")
        if self.window_end > 1 << 64:
            raise PciAddressError(f"ECAM window of base {self.base:#x} and end bus {self.end_bus:#x} "
                                  "ends past 64 bits")

    @property
    def window_start(self) -> int:
        """Guest-physical address of start_bus's first config page."""
        return self.base + (self.start_bus << BUS_SHIFT)

    @property
    def window_end(self) -> int:
        """One past the window's last byte."""
        return self.base + ((self.end_bus + 1) << BUS_SHIFT)

    @property
    def size(self) -> int:
        """Bytes of the window."""
        return self.window_end - self.window_start

    @property
    def nr_buses(self) -> int:
        """Buses the window covers."""
        return self.end_bus - self.start_bus + 1

    def has_bus(self, bus: int) -> bool:
        """The bus is in the window."""
        return self.start_bus <= bus <= self.end_bus

    def gpa(self, bus: int, dev: int, fn: int, reg: int = 0) -> int:
        """Guest-physical address of (bus, dev, fn, reg) in this window."""
        bus = _check("bus", bus, NR_BUSES)
        if not self.has_bus(bus):
            raise PciAddressError(f"bus {bus:#x} outside segment {self.segment}'s window "
                                  f"(buses {self.start_bus:#x}..{self.end_bus:#x})")
        return self.base + (bus << BUS_SHIFT | _check("device", dev, NR_DEVS) << DEV_SHIFT
                            | _check("function", fn, NR_FNS) << FN_SHIFT
                            | _check("register", reg, CONFIG_SPACE_SIZE))

    def decode(self, gpa: int) -> tuple[Bdf, int]:
        """(Bdf, reg) of a guest-physical address inside the window."""
        gpa = _index("gpa", gpa)
        if not self.window_start <= gpa < self.window_end:
            raise PciAddressError(f"gpa {gpa:#x} outside segment {self.segment}'s ECAM window "
                                  f"[{self.window_start:#x}, {self.window_end:#x})")
        off = gpa - self.base
        return (Bdf(self.segment, off >> BUS_SHIFT, off >> DEV_SHIFT & 31, off >> FN_SHIFT & 7),
                off & (CONFIG_SPACE_SIZE - 1))

    def gpas(self, bus, dev, fn, reg=0) -> np.ndarray:
        """Vectorised gpa(): numpy arrays (or scalars) in, uint64 gpas out, checked."""
        names = ("bus", "device", "function", "register")
        parts = _broadcast("bus, device, function, register",
                           *(_int_array(n, x) for n, x in zip(names, (bus, dev, fn, reg))))
        for name, arr, lo, hi in zip(names, parts, (self.start_bus, 0, 0, 0),
                                     (self.end_bus + 1, NR_DEVS, NR_FNS, CONFIG_SPACE_SIZE)):
            if arr.size and (arr.min() < lo or arr.max() >= hi):
                raise PciAddressError(f"{name} out of range {lo:#x}..{hi - 1:#x} in segment "
                                      f"{self.segment}")
        bus, dev, fn, reg = (a.astype(np.int64) for a in parts)
        off = bus << BUS_SHIFT | dev << DEV_SHIFT | fn << FN_SHIFT | reg
        return (np.uint64(self.base) + off.astype(np.uint64)).astype(np.uint64)

    def page_index(self, bdf: Bdf) -> int:
        """Index of bdf's config page from the window's start (pages are 4 KiB)."""
        if not isinstance(bdf, Bdf):
            raise TypeError(f"bdf must be a Bdf, not {type(bdf).__name__}")
        return (self.gpa(bdf.bus, bdf.dev, bdf.fn) - self.window_start) >> FN_SHIFT


def ecam_offset(bus: int, dev: int, fn: int, reg: int = 0) -> int:
    """offset = bus << 20 | dev << 15 | fn << 12 | reg, each part checked."""
    return (_check("bus", bus, NR_BUSES) << BUS_SHIFT | _check("device", dev, NR_DEVS) << DEV_SHIFT
            | _check("function", fn, NR_FNS) << FN_SHIFT | _check("register", reg, CONFIG_SPACE_SIZE))


def decode_offset(offset: int) -> tuple[int, int, int, int]:
    """(bus, dev, fn, reg) of an offset from a window's bus-0 base."""
    offset = _check("ECAM offset", offset, NR_BUSES << BUS_SHIFT)
    return offset >> BUS_SHIFT, offset >> DEV_SHIFT & 31, offset >> FN_SHIFT & 7, offset & 0xFFF
