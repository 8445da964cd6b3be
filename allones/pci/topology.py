"""Topologies: which PCI functions are present, and how bridges connect buses.

A `Topology` is a set of present `Function`s placed in ECAM `Segment`s. Everything else in
the windows is a hole: a function that does not exist and reads as all-ones. Builders for
common layouts live in `builders.py`, text parsers in `parsers.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import IntEnum

from .ecam import Bdf, PciAddressError, Segment, _index

Q35_ECAM_BASE = 0xB000_0000   # QEMU q35: MCH_HOST_BRIDGE_PCIEXBAR_DEFAULT


def _segment(segment) -> Segment:
    """A segment argument of the builders and trace readers: None means q35's 256-bus
    window at 0xB0000000."""
    if segment is None:
        return Segment(Q35_ECAM_BASE)
    if not isinstance(segment, Segment):
        raise TypeError(f"segment must be a Segment, not {type(segment).__name__}")
    return segment


class PortType(IntEnum):
    """PCI_EXP_TYPE_* (include/uapi/linux/pci_regs.h): the PCIe capability's port type."""

    ENDPOINT = 0x0
    LEG_END = 0x1
    ROOT_PORT = 0x4
    UPSTREAM = 0x5
    DOWNSTREAM = 0x6
    PCI_BRIDGE = 0x7
    PCIE_BRIDGE = 0x8
    RC_END = 0x9
    RC_EC = 0xA


class BarKind(IntEnum):
    """The low bits a memory or I/O BAR reads back (PCI_BASE_ADDRESS_*)."""

    IO = 0x1          # PCI_BASE_ADDRESS_SPACE_IO
    MEM32 = 0x0       # PCI_BASE_ADDRESS_MEM_TYPE_32
    MEM64 = 0x4       # PCI_BASE_ADDRESS_MEM_TYPE_64


@dataclass(frozen=True)
class Bar:
    """One base address register: its size (a power of two) and kind."""

    size: int
    kind: BarKind = BarKind.MEM32
    prefetchable: bool = False

    def __post_init__(self):
        object.__setattr__(self, "size", _index("BAR size", self.size))
        try:
            object.__setattr__(self, "kind", BarKind(self.kind))
        except ValueError:
            raise ValueError(f"BAR kind {self.kind!r} is not one of "
                             f"{', '.join(f'{k.name} ({k.value})' for k in BarKind)}") from None
        low = 4 if self.kind == BarKind.IO else 16
        limit = 1 << 64 if self.kind == BarKind.MEM64 else 1 << 32
        if self.size & (self.size - 1) or not low <= self.size <= limit // 2:
            raise ValueError(f"BAR size {self.size:#x} must be a power of two in "
                             f"[{low:#x}, {limit // 2:#x}]")
        if self.prefetchable and self.kind == BarKind.IO:
            raise ValueError("an I/O BAR cannot be prefetchable")


#: class code (base class, subclass) names, as QEMU's pci_class_descriptions[] (hw/pci/pci.c)
#: prints them (its typos kept); the first of two equal names is the one parsed back
CLASS_NAMES = {
    0x0100: "SCSI controller", 0x0101: "IDE controller", 0x0102: "Floppy controller",
    0x0103: "IPI controller", 0x0104: "RAID controller", 0x0106: "SATA controller",
    0x0107: "SAS controller", 0x0108: "NVMe controller", 0x0180: "Storage controller",
    0x0200: "Ethernet controller", 0x0201: "Token Ring controller", 0x0202: "FDDI controller",
    0x0203: "ATM controller", 0x0280: "Network controller", 0x0300: "VGA controller",
    0x0301: "XGA controller", 0x0302: "3D controller", 0x0380: "Display controller",
    0x0400: "Video controller", 0x0401: "Audio controller", 0x0402: "Phone",
    0x0403: "Audio controller", 0x0480: "Multimedia controller", 0x0500: "RAM controller",
    0x0501: "Flash controller", 0x0580: "Memory controller", 0x0600: "Host bridge",
    0x0601: "ISA bridge", 0x0602: "EISA bridge", 0x0603: "MC bridge", 0x0604: "PCI bridge",
    0x0605: "PCMCIA bridge", 0x0606: "NUBUS bridge", 0x0607: "CARDBUS bridge",
    0x0608: "RACEWAY bridge", 0x0680: "Bridge", 0x0700: "Serial port", 0x0701: "Parallel port",
    0x0800: "Interrupt controller", 0x0801: "DMA controller", 0x0802: "Timer", 0x0803: "RTC",
    0x0900: "Keyboard", 0x0901: "Pen", 0x0902: "Mouse", 0x0A00: "Dock station",
    0x0B00: "i386 cpu", 0x0c00: "Fireware contorller", 0x0c01: "Access bus controller",
    0x0c02: "SSA controller", 0x0c03: "USB controller", 0x0c04: "Fibre channel controller",
    0x0c05: "SMBus",
}


@dataclass(frozen=True)
class Function:
    """A present PCI function: what its config header says.

    `bars` maps a BAR index (0..5; 0..1 for bridges) to its Bar; a 64-bit BAR also uses the
    next index. `multifunction` None means "set on every function of a device that has more
    than one", as QEMU does. `port_type` None means a conventional PCI function (no PCIe
    capability, 256 bytes of config space). Bridges (header type 1) have bus numbers:
    bus < secondary <= subordinate, or secondary = subordinate = 0 for an unconfigured bridge
    (its reset state, which QEMU's `info pci` shows as "secondary bus 0." when firmware never
    numbered it, e.g. a root port on a pxb bus after an arm64 device-tree boot): it leads to
    no bus and nothing is behind it (`is_configured` is False).
    """

    bdf: Bdf
    vendor: int
    device: int
    class_code: int
    header_type: int = 0
    revision: int = 0
    subsystem: tuple[int, int] = (0, 0)
    bars: tuple[tuple[int, Bar], ...] = ()
    rom_size: int = 0
    port_type: PortType | None = None
    multifunction: bool | None = None
    secondary: int | None = None
    subordinate: int | None = None
    name: str = ""

    def __post_init__(self):
        if not isinstance(self.bdf, Bdf):
            raise TypeError(f"a Function's bdf must be a Bdf, not {type(self.bdf).__name__}")
        for field_, what in (("vendor", "vendor"), ("device", "device"), ("class_code", "class code"),
                             ("revision", "revision"), ("header_type", "header type"),
                             ("rom_size", "ROM size")):
            object.__setattr__(self, field_, _index(f"{self.bdf}: {what}", getattr(self, field_)))
        for field_ in ("secondary", "subordinate"):
            if getattr(self, field_) is not None:
                object.__setattr__(self, field_, _index(f"{self.bdf}: {field_} bus", getattr(self, field_)))
        self._check_ids()
        if self.port_type is not None:
            try:
                object.__setattr__(self, "port_type", PortType(self.port_type))
            except ValueError:
                raise ValueError(f"{self.bdf}: port type {self.port_type!r} is not a PortType "
                                 f"({', '.join(f'{t.name} ({t.value:#x})' for t in PortType)})") from None
        if self.multifunction not in (None, True, False):
            raise TypeError(f"{self.bdf}: multifunction must be None, True or False, not {self.multifunction!r}")
        if self.header_type not in (0, 1):
            raise ValueError(f"{self.bdf}: header type {self.header_type} (0 or 1 modeled)")
        self._check_bars()
        if not (self.is_bridge == (self.secondary is not None) == (self.subordinate is not None)):
            raise ValueError(f"{self.bdf}: a bridge (header type 1) needs secondary and subordinate "
                             "bus numbers, and only a bridge has them")
        if self.is_configured and not self.bdf.bus < self.secondary <= self.subordinate <= 255:
            hint = " (or secondary = subordinate = 0: unconfigured)" if 0 in (self.secondary, self.subordinate) else ""
            raise ValueError(f"{self.bdf}: bus numbers need bus < secondary <= subordinate <= 255{hint}, "
                             f"got {self.bdf.bus}, {self.secondary}, {self.subordinate}")

    def _check_ids(self):
        for what, v, bits in (("vendor", self.vendor, 16), ("device", self.device, 16),
                              ("class code", self.class_code, 24), ("revision", self.revision, 8)):
            if not 0 <= v < 1 << bits:
                raise ValueError(f"{self.bdf}: {what} {v:#x} does not fit {bits} bits")
        if self.vendor in (0xFFFF, 0x0000):
            raise ValueError(f"{self.bdf}: vendor {self.vendor:#06x} means 'no function'")
        sub = self.subsystem
        if not isinstance(sub, tuple) or len(sub) != 2:
            raise TypeError(f"{self.bdf}: subsystem must be a (vendor, device) pair, not {sub!r}")
        sub = tuple(_index(f"{self.bdf}: subsystem {what}", v) for what, v in zip(("vendor", "device"), sub))
        if not all(0 <= v <= 0xFFFF for v in sub):
            raise ValueError(f"{self.bdf}: subsystem {sub[0]:#x}:{sub[1]:#x} does not fit 16 bits each")
        object.__setattr__(self, "subsystem", sub)

    def _check_bars(self):
        nr = 2 if self.is_bridge else 6
        used = set()
        for entry in self.bars:
            if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[1], Bar)):
                raise TypeError(f"{self.bdf}: each BAR must be an (index, Bar) pair, not {entry!r}")
            index, bar = _index(f"{self.bdf}: BAR index", entry[0]), entry[1]
            if index < 0:
                raise ValueError(f"{self.bdf}: BAR index {index} is negative")
            span = {index, index + 1} if bar.kind == BarKind.MEM64 else {index}
            if max(span) >= nr or span & used:
                raise ValueError(f"{self.bdf}: BAR{index} overlaps another or passes BAR{nr - 1}")
            used |= span
        if self.rom_size and (self.rom_size & (self.rom_size - 1) or self.rom_size < 2048):
            raise ValueError(f"{self.bdf}: ROM size {self.rom_size:#x} not a power of two >= 2 KiB")

    @property
    def is_bridge(self) -> bool:
        """A type 1 (PCI-to-PCI bridge) header."""
        return self.header_type == 1

    @property
    def is_configured(self) -> bool:
        """A bridge whose bus numbers are assigned: it forwards to buses secondary..subordinate.
        False for an unconfigured bridge (secondary = subordinate = 0: it claims no bus, and
        scans that follow a bridge only when secondary > bus do not enter it) and for a
        type 0 function."""
        return self.is_bridge and (self.secondary, self.subordinate) != (0, 0)

    @property
    def is_pcie(self) -> bool:
        """Has a PCI Express capability (and 4 KiB of config space)."""
        return self.port_type is not None

    @property
    def class_name(self) -> str:
        """The class as QEMU's `info pci` names it."""
        return CLASS_NAMES.get(self.class_code >> 8, f"Class {self.class_code >> 8:04x}")


@dataclass
class Topology:
    """Present functions in ECAM segments; the rest of each window is holes.

    Every function's bus must be a segment's root bus (its start bus, or one listed in
    `extra_roots` as (segment, bus), for host bridges the firmware describes separately) or a
    configured bridge's secondary bus (an unconfigured bridge leads to no bus).
    """

    functions: list[Function]
    segments: list[Segment] = field(default_factory=lambda: [Segment(Q35_ECAM_BASE)])
    extra_roots: tuple[tuple[int, int], ...] = ()
    name: str = ""

    def __post_init__(self):
        self.functions = _items("functions", self.functions, Function, "Function")
        self.segments = _items("segments", self.segments, Segment, "Segment")
        if not self.segments:
            raise ValueError("a topology needs at least one ECAM segment")
        self.extra_roots = _roots(self.extra_roots)
        self.functions = sorted(self.functions, key=lambda f: f.bdf)
        self._by_bdf = {}
        for f in self.functions:
            if f.bdf in self._by_bdf:
                raise ValueError(f"{f.bdf}: appears twice")
            self._by_bdf[f.bdf] = f
        seg_ids = [s.segment for s in self.segments]
        if len(set(seg_ids)) != len(seg_ids):
            raise ValueError(f"segment numbers repeat: {seg_ids}")
        self._segments = {s.segment: s for s in self.segments}
        self._check_windows_disjoint()
        self._check_reachable()

    def _check_windows_disjoint(self):
        spans = sorted((s.window_start, s.window_end, s.segment) for s in self.segments)
        for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
            if start < end:
                raise ValueError(f"ECAM windows of segments {a} and {b} overlap")

    def _check_reachable(self):
        for seg, bus in self.extra_roots:
            if not self.segment(seg).has_bus(bus):
                raise PciAddressError(f"extra root bus {bus:#x} outside segment {seg}'s window")
        roots = {(s.segment, s.start_bus) for s in self.segments} | set(self.extra_roots)
        secondaries = {}
        for f in self.functions:
            seg = self._segments.get(f.bdf.segment)
            if seg is None:
                raise PciAddressError(f"{f.bdf}: no ECAM segment {f.bdf.segment}")
            if not seg.has_bus(f.bdf.bus) or (f.is_configured and not seg.has_bus(f.subordinate)):
                raise PciAddressError(f"{f.bdf}: bus outside segment {seg.segment}'s buses "
                                      f"{seg.start_bus:#x}..{seg.end_bus:#x}")
            if f.is_configured:
                key = (f.bdf.segment, f.secondary)
                if key in secondaries or key in roots:
                    raise ValueError(f"{f.bdf}: secondary bus {f.secondary:#x} already in use")
                secondaries[key] = f
        self._check_siblings(secondaries.values())
        for f in self.functions:
            key = (f.bdf.segment, f.bdf.bus)
            if key not in roots and key not in secondaries:
                raise ValueError(f"{f.bdf}: no bridge leads to bus {f.bdf.bus:#04x}")
            parent = secondaries.get(key)
            if parent is not None and not (parent.secondary <= f.bdf.bus
                                           and (not f.is_configured or f.subordinate <= parent.subordinate)):
                raise ValueError(f"{f.bdf}: buses outside its parent bridge {parent.bdf}'s range")

    @staticmethod
    def _check_siblings(bridges):
        """Configured bridges on one bus decode disjoint bus ranges (else two would claim a bus)."""
        by_bus = {}
        for b in bridges:
            by_bus.setdefault((b.bdf.segment, b.bdf.bus), []).append(b)
        for group in by_bus.values():
            group.sort(key=lambda b: b.secondary)
            for a, b in zip(group, group[1:]):
                if b.secondary <= a.subordinate:
                    raise ValueError(f"{b.bdf}: buses {b.secondary:#04x}-{b.subordinate:#04x} overlap "
                                     f"{a.bdf}'s {a.secondary:#04x}-{a.subordinate:#04x}")

    # -- queries ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.functions)

    def __iter__(self):
        return iter(self.functions)

    def __contains__(self, bdf) -> bool:
        return bdf in self._by_bdf

    def get(self, bdf: Bdf) -> Function | None:
        """The function at bdf, or None for a hole."""
        if not isinstance(bdf, Bdf):
            raise TypeError(f"bdf must be a Bdf, not {type(bdf).__name__}")
        return self._by_bdf.get(bdf)

    def segment(self, number: int) -> Segment:
        """The segment numbered `number` (PciAddressError if none)."""
        number = _index("segment", number)
        try:
            return self._segments[number]
        except KeyError:
            raise PciAddressError(f"no ECAM segment {number}") from None

    def root_buses(self) -> list[tuple[int, int]]:
        """(segment, bus) of every root bus, in order."""
        return sorted({(s.segment, s.start_bus) for s in self.segments} | set(self.extra_roots))

    def is_multifunction(self, bdf: Bdf) -> bool:
        """The multifunction bit (bit 7 of PCI_HEADER_TYPE) as `bdf` reports it (ValueError
        for a hole: nothing reports it)."""
        f = self.get(bdf)
        if f is None:
            raise ValueError(f"{bdf}: no function there (a hole has no header type)")
        if f.multifunction is not None:
            return f.multifunction
        return any(Bdf(bdf.segment, bdf.bus, bdf.dev, fn) in self._by_bdf
                   for fn in range(8) if fn != bdf.fn)

    def children(self, segment: int, bus: int) -> list[Function]:
        """Functions on one bus, by devfn."""
        return [f for f in self.functions if f.bdf.segment == segment and f.bdf.bus == bus]

    def bridge_to(self, segment: int, bus: int) -> Function | None:
        """The bridge whose secondary bus is `bus`, or None for a root bus (an unconfigured
        bridge's secondary 0 leads nowhere)."""
        for f in self.functions:
            if f.is_configured and f.bdf.segment == segment and f.secondary == bus:
                return f
        return None

    def with_window(self, segment: int, nr_buses: int) -> Topology:
        """A copy whose segment's MCFG window covers only `nr_buses` buses from its start
        (a smaller window: Linux then scans fewer buses); ValueError if a function or a
        bridge's buses would fall outside."""
        seg = self.segment(segment)
        nr_buses = _index("nr_buses", nr_buses)
        if not 1 <= nr_buses <= 256 - seg.start_bus:
            raise PciAddressError(f"{nr_buses} buses do not fit from bus {seg.start_bus:#x}")
        smaller = replace(seg, end_bus=seg.start_bus + nr_buses - 1)
        return replace(self, segments=[smaller if s is seg else s for s in self.segments],
                       name=f"{self.name}@{nr_buses}")

    def with_functions(self, functions, name: str | None = None) -> Topology:
        """A copy with another function list (validated again)."""
        return replace(self, functions=list(functions), name=self.name if name is None else name)

    # -- display ----------------------------------------------------------------------------

    def format_tree(self) -> str:
        """A tree of segments, buses, functions and the buses behind bridges (for people)."""
        lines = []
        for seg in self.segments:
            lines.append(f"segment {seg.segment:04x}: ECAM {seg.window_start:#x}..{seg.window_end - 1:#x}"
                         f", buses {seg.start_bus:02x}-{seg.end_bus:02x}")
            for s, bus in self.root_buses():
                if s == seg.segment:
                    self._tree_bus(lines, s, bus, "")
        return "\n".join(lines)

    def _tree_bus(self, lines, segment, bus, indent):
        kids = self.children(segment, bus)
        lines.append(f"{indent}└─ bus {bus:02x}" + ("" if kids else " (empty)"))
        indent += "   "
        for i, f in enumerate(kids):
            last = i == len(kids) - 1
            lines.append(f"{indent}{'└─' if last else '├─'} {_describe(f, self.is_multifunction(f.bdf))}")
            if f.is_configured:
                self._tree_bus(lines, segment, f.secondary, indent + ("   " if last else "│  "))


def _items(what: str, values, cls, cls_name: str) -> list:
    """values as a list of `cls` instances (TypeError naming the first that is not)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{what} must be a list of {cls_name}s, not {type(values).__name__}")
    values = list(values)
    for i, v in enumerate(values):
        if not isinstance(v, cls):
            raise TypeError(f"{what}[{i}] must be a {cls_name}, not {type(v).__name__}")
    return values


def _roots(extra_roots) -> tuple[tuple[int, int], ...]:
    """extra_roots as (segment, bus) pairs of ints."""
    if isinstance(extra_roots, (str, bytes)) or not hasattr(extra_roots, "__iter__"):
        raise TypeError(f"extra_roots must be (segment, bus) pairs, not {type(extra_roots).__name__}")
    out = []
    for i, pair in enumerate(extra_roots):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"extra_roots[{i}] must be a (segment, bus) pair, not {pair!r}")
        out.append((_index(f"extra_roots[{i}] segment", pair[0]), _index(f"extra_roots[{i}] bus", pair[1])))
    return tuple(out)


def _describe(f: Function, multifunction: bool) -> str:
    text = f"{f.bdf.bus:02x}:{f.bdf.dev:02x}.{f.bdf.fn} [{f.vendor:04x}:{f.device:04x}] {f.class_name}"
    extras = [f.name] if f.name else []
    if f.port_type is not None:
        extras.append(f.port_type.name.lower().replace("_", " "))
    if multifunction:
        extras.append("multifunction")
    if f.is_bridge:
        extras.append(f"buses {f.secondary:02x}-{f.subordinate:02x}" if f.is_configured else "unconfigured")
    return text + (f" ({', '.join(extras)})" if extras else "")
