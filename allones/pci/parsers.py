"""Read and write topologies as `lspci -n` text and as QEMU's monitor `info pci` text.

`lspci -n` gives addresses, class and IDs only; bridges' bus numbers are rebuilt the way
firmware and Linux number buses (depth first, in devfn order: `pci_scan_bridge_extend()`),
and port types from where a bridge sits. `info pci` (QEMU's hmp_info_pci_device()) gives
bus numbers, BARs and subsystem IDs but no segment: everything lands in segment 0.

Both read QEMU's expander bridges (pxb, pxb-pcie): a bus that has functions but that no
bridge leads to becomes an extra root bus (`Topology.extra_roots`) when an expander
host-bridge function on a root bus is there to open it, one bus per expander.
"""

from __future__ import annotations

import re
from pathlib import Path

from .builders import QEMU_SUBSYS
from .ecam import Bdf, PciAddressError, Segment
from .topology import (CLASS_NAMES, Q35_ECAM_BASE, Bar, BarKind, Function, PortType, Topology)

EXTRA_SEGMENT_BASE = 0x80_0000_0000   # where segments > 0 go when text does not say
#: QEMU bridges by ID: their port type (None: a conventional PCI-to-PCI bridge). Other
#: bridges get a port type from where they sit.
KNOWN_BRIDGES = {
    (0x1B36, 0x000C): PortType.ROOT_PORT,      # pcie-root-port
    (0x8086, 0x7075): PortType.ROOT_PORT,      # ioh3420
    (0x104C, 0x8232): PortType.UPSTREAM,       # x3130-upstream
    (0x104C, 0x8233): PortType.DOWNSTREAM,     # xio3130-downstream
    (0x1B36, 0x000E): PortType.PCIE_BRIDGE,    # pcie-pci-bridge
    (0x1B36, 0x0001): None,                    # pci-bridge
}
#: QEMU's expander bridges (hw/pci-bridge/pci_expander_bridge.c; IDs from include/hw/pci/pci.h):
#: a host-bridge function (class 0x0600) on a root bus that opens a root bus of its own, numbered
#: by its `bus_nr` property; `info pci` lists that bus as a group of its own.
PCI_VENDOR_ID_REDHAT = 0x1B36
PCI_DEVICE_ID_REDHAT_PXB = 0x0009
PCI_DEVICE_ID_REDHAT_PXB_PCIE = 0x000B
EXPANDER_BRIDGES = {
    (PCI_VENDOR_ID_REDHAT, PCI_DEVICE_ID_REDHAT_PXB): "pxb",
    (PCI_VENDOR_ID_REDHAT, PCI_DEVICE_ID_REDHAT_PXB_PCIE): "pxb-pcie",
}


class ParseError(ValueError):
    """Text that cannot be read; `.line` is the 1-based line number (0: the whole text),
    `.source` the file it came from (None for text), `.detail` the message alone."""

    def __init__(self, line: int, message: str, source: str | None = None):
        text = f"line {line}: {message}" if line else message
        super().__init__(text if source is None else f"{source}: {text}")
        self.line, self.source, self.detail = line, source, message

    def __reduce__(self):          # picklable (a process pool sends errors back)
        return type(self), (self.line, self.detail, self.source)


class TopologyParseError(ParseError):
    """Text that is not a topology (lspci or `info pci`)."""


def quote(text: str, limit: int = 120) -> str:
    """repr() of input for an error message: all of it, or its first `limit` characters
    and a visible "…" (a message should not swallow a megabyte line, nor cut it silently)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "…"


def _is_expander(class_code: int, vendor: int, device: int) -> bool:
    """A pxb / pxb-pcie host-bridge function (class_code: the 24-bit class, prog-if low)."""
    return class_code >> 8 == 0x0600 and (vendor, device) in EXPANDER_BRIDGES


def _unreached(lineno: int, bdf, bus: int, hint: str = "") -> TopologyParseError:
    return TopologyParseError(lineno, f"{bdf}: no bridge leads to bus {bus:02x}{hint}, and no expander host "
                              "bridge (pxb, pxb-pcie) on a root bus is left to open it as a root bus")


# -- lspci -n -------------------------------------------------------------------------------

_LSPCI = re.compile(r"^(?P<bdf>(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])\s+"
                    r"(?P<cls>[0-9a-fA-F]{4}):\s+(?P<ven>[0-9a-fA-F]{4}):(?P<dev>[0-9a-fA-F]{4})"
                    r"(?:\s+\(rev (?P<rev>[0-9a-fA-F]{2})\))?(?:\s+\(prog-if (?P<pi>[0-9a-fA-F]{2})[^)]*\))?\s*$")


def parse_lspci(text: str, name: str = "lspci") -> Topology:
    """`lspci -n` (or `-nD`) lines: `[dddd:]bb:dd.f cccc: vvvv:dddd [(rev rr)] [(prog-if pp)]`."""
    _check_text(text)
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LSPCI.match(line.strip())
        if not m:
            raise TopologyParseError(lineno, f"not an `lspci -n` line: {quote(line.strip())}")
        try:
            bdf = Bdf.parse(m["bdf"])
        except PciAddressError as exc:
            raise TopologyParseError(lineno, str(exc)) from None
        cls = int(m["cls"], 16) << 8 | int(m["pi"] or "0", 16)
        rows.append((lineno, bdf, cls, int(m["ven"], 16), int(m["dev"], 16), int(m["rev"] or "0", 16)))
    if not rows:
        raise TopologyParseError(0, "no functions in the text")
    return _number_buses(rows, name)


def _number_buses(rows, name) -> Topology:
    """Give bridges (class 0604) bus numbers depth first, as firmware does, from each root
    bus; check every function's bus is reached."""
    by_bus, seen = {}, set()
    for row in rows:
        if row[1] in seen:
            raise TopologyParseError(row[0], f"{row[1]} appears twice")
        seen.add(row[1])
        by_bus.setdefault((row[1].segment, row[1].bus), []).append(row)
    functions, numbered, extra = [], set(), []
    for seg in sorted({b.segment for _, b, *_ in rows}):
        extra += _number_segment(seg, by_bus, functions, numbered)
    segments = [Segment(Q35_ECAM_BASE if s == 0 else EXTRA_SEGMENT_BASE + (s - 1) * (256 << 20), s)
                for s in sorted({f.bdf.segment for f in functions})]
    line_of = {row[1]: row[0] for row in rows}
    return _checked(functions, [line_of[f.bdf] for f in functions],
                    dict(segments=segments, extra_roots=tuple(extra), name=name))


def _number_segment(seg, by_bus, out, numbered) -> list[tuple[int, int]]:
    """Number a segment from its lowest bus; then the lowest bus still not reached, if an
    expander on a root bus is left to open it, is an extra root bus, and so on. Below a pxb
    root bus, numbering goes on from the pxb's bus_nr (firmware numbers the buses behind it
    from there; Linux's pci_scan_child_bus() of that root bus reads them). Returns the extra
    root buses."""
    roots = [min(bus for s, bus in by_bus if s == seg)]
    _walk(seg, roots[0], None, [roots[0]], by_bus, out, numbered)
    while True:
        left = sorted(bus for s, bus in by_bus if s == seg and (s, bus) not in numbered)
        if not left:
            return [(seg, bus) for bus in roots[1:]]
        expanders = sum(1 for f in out if f.bdf.segment == seg and f.bdf.bus in roots
                        and _is_expander(f.class_code, f.vendor, f.device))
        if expanders < len(roots):         # the root bus itself needs no expander
            lineno, bdf = by_bus[(seg, left[0])][0][:2]
            raise _unreached(lineno, bdf, left[0], " (bus numbers are not depth-first from a root bus)")
        roots.append(left[0])
        _walk(seg, left[0], None, [left[0]], by_bus, out, numbered)


def _walk(seg, bus, parent_type, next_bus, by_bus, out, numbered):
    numbered.add((seg, bus))
    for lineno, bdf, cls, ven, dev, rev in sorted(by_bus.get((seg, bus), []), key=lambda r: r[1]):
        bridge = cls >> 8 == 0x0604
        port = _port_by_place(parent_type, bridge, (ven, dev))
        kw = dict(vendor=ven, device=dev, class_code=cls, revision=rev, port_type=port)
        try:
            if bridge:
                next_bus[0] += 1
                secondary = next_bus[0]
                _walk(seg, secondary, "pci" if port is None else port, next_bus, by_bus, out, numbered)
                out.append(Function(bdf, header_type=1, secondary=secondary, subordinate=next_bus[0], **kw))
            else:
                out.append(Function(bdf, **kw))
        except TopologyParseError:
            raise
        except ValueError as exc:
            raise TopologyParseError(lineno, str(exc)) from None


def _check_text(text) -> None:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__} (read_topology() reads files)")


def format_lspci(topology: Topology) -> str:
    """`lspci -nD` text of a topology."""
    lines = []
    for f in topology:
        rev = f" (rev {f.revision:02x})" if f.revision else ""
        pi = f" (prog-if {f.class_code & 0xFF:02x})" if f.class_code & 0xFF else ""
        lines.append(f"{f.bdf} {f.class_code >> 8:04x}: {f.vendor:04x}:{f.device:04x}{rev}{pi}")
    return "\n".join(lines) + "\n"


# -- QEMU info pci --------------------------------------------------------------------------

_HEAD = re.compile(r"^\s*Bus\s+(\d{1,9}), device\s+(\d{1,9}), function (\d{1,9}):\s*$")
_CLASS = re.compile(r"^\s*(?:Class (\d{1,9})|(.+?)): PCI device ([0-9a-f]{4}):([0-9a-f]{4})\s*$")
_BAR = re.compile(r"^\s*BAR(\d): (?:I/O at (0x[0-9a-f]+) \[(0x[0-9a-f]+)\]|(32|64) bit( prefetchable)? "
                  r"memory at (0x[0-9a-f]+) \[(0x[0-9a-f]+)\])\.\s*$")
_FIELDS = {
    "subsystem": re.compile(r"^\s*PCI subsystem ([0-9a-f]{4}):([0-9a-f]{4})\s*$"),
    "primary": re.compile(r"^\s*BUS (\d{1,9})\.\s*$"),
    "secondary": re.compile(r"^\s*secondary bus (\d{1,9})\.\s*$"),
    "subordinate": re.compile(r"^\s*subordinate bus (\d{1,9})\.\s*$"),
}
#: what a field's line looks like, by how it starts: to name the field of a line that is not it
_LINE_FORMS = (("Bus", "Bus N, device N, function N:"), ("PCI subsystem", "PCI subsystem vvvv:dddd"),
          ("BUS", "BUS N."), ("secondary bus", "secondary bus N."), ("subordinate bus", "subordinate bus N."),
          ("BAR", "BARn: I/O at 0x... [0x...]. or BARn: 32|64 bit [prefetchable] memory at 0x... [0x...]."))
_IGNORED = re.compile(r"^\s*(IRQ \d+.*|(IO|memory|prefetchable memory) range \[.*\]|id \".*\"|\(qemu\).*)\s*$")
_CLASS_BY_NAME = {}
for _code, _name in CLASS_NAMES.items():
    _CLASS_BY_NAME.setdefault(_name, _code)


def parse_info_pci(text: str, name: str = "info-pci") -> Topology:
    """QEMU monitor `info pci` text (as hmp_info_pci_device() prints it) as a topology.

    Class descriptions map back through QEMU's table (prog-if is not printed: 0); a BAR's
    size is end - start + 1 (mod 2^64, so unassigned BARs at all-ones still give it); BAR6 is
    the expansion ROM; a function with bridge lines is a type 1 header ("secondary bus 0.":
    unconfigured, nothing behind it). Port types: a bridge on a root bus is a root port, other
    functions are conventional PCI unless behind a bridge. A bus that no bridge leads to is an
    extra root bus when a pxb / pxb-pcie function on a root bus opens it (QEMU lists each host
    bridge's bus as a group of its own; groups may come in any order).
    """
    _check_text(text)
    records, cur = [], None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or _IGNORED.match(line):
            continue
        m = _HEAD.match(line)
        if m:
            cur = dict(line=lineno, bus=int(m[1]), dev=int(m[2]), fn=int(m[3]), bars=[], rom=0)
            records.append(cur)
            continue
        if cur is None:
            raise TopologyParseError(lineno, f"expected '  Bus N, device N, function N:', got {quote(line.strip())}")
        _info_pci_line(cur, lineno, line)
    if not records:
        raise TopologyParseError(0, "no functions in the text")
    # a bridge whose secondary bus is not above its own is refused by Function() (or, at 0,
    # unconfigured: it leads nowhere); leaving it out keeps _port_type() from looping
    parents = {r["secondary"]: r for r in records if r.get("secondary", -1) > r["bus"]}
    functions = [_info_pci_function(r, parents) for r in records]
    extra = _info_pci_extra_roots(records, parents)
    return _checked(functions, [r["line"] for r in records], dict(name=name, extra_roots=extra))


def _info_pci_extra_roots(records, parents) -> tuple[tuple[int, int], ...]:
    """Buses with functions that no bridge leads to, lowest first, each opened by an expander
    host bridge on bus 0 or on an extra root bus already found (`info pci` does not say which
    expander has which bus_nr: only how many there are matters)."""
    roots = [0]
    for bus in sorted({r["bus"] for r in records} - set(parents) - {0}):
        expanders = sum(1 for r in records
                        if r["bus"] in roots and _is_expander(r["class"], r["vendor"], r["device"]))
        if expanders < len(roots):         # bus 0 itself needs no expander
            first = next(r for r in records if r["bus"] == bus)
            raise _unreached(first["line"], Bdf(0, bus, first["dev"], first["fn"]), bus)
        roots.append(bus)
    return tuple((0, bus) for bus in roots[1:])


def _checked(functions, lines, kw) -> Topology:
    """Topology(functions), its errors turned into TopologyParseError at the culprit's line."""
    try:
        return Topology(functions, **kw)
    except ValueError as exc:
        culprit = str(exc).split(": ", 1)[0]
        # the last of a bdf's lines: for a duplicate, the second one is the culprit
        line = max((n for f, n in zip(functions, lines) if str(f.bdf) == culprit), default=0)
        raise TopologyParseError(line, str(exc)) from None


def _port_type(r, parents) -> PortType | None:
    """The port type of an `info pci` record: its parent bridge's, then _port_by_place()."""
    parent = parents.get(r["bus"])
    parent_type = None if parent is None else (_port_type(parent, parents) or "pci")
    return _port_by_place(parent_type, "secondary" in r, (r["vendor"], r["device"]))


def _port_by_place(parent_type, bridge: bool, ids) -> PortType | None:
    """A known bridge's own type; else where it sits: a bridge on a root bus (parent_type
    None) is a root port, below an upstream port a downstream port, below other ports an
    upstream port; other functions below a PCIe port are endpoints, elsewhere conventional
    PCI. parent_type "pci" is a conventional bridge."""
    if bridge and ids in KNOWN_BRIDGES:
        return KNOWN_BRIDGES[ids]
    if parent_type is None:
        return PortType.ROOT_PORT if bridge else None
    if parent_type == "pci":
        return None
    if not bridge:
        return PortType.ENDPOINT
    return PortType.DOWNSTREAM if parent_type == PortType.UPSTREAM else PortType.UPSTREAM


def _info_pci_line(cur, lineno, line):
    m = _CLASS.match(line)
    if m and "class" not in cur:
        if m[1] is not None:
            cur["class"] = int(m[1]) << 8            # "Class %04" PRId64: decimal
        elif m[2].strip() in _CLASS_BY_NAME:
            cur["class"] = _CLASS_BY_NAME[m[2].strip()] << 8
        else:
            raise TopologyParseError(lineno, f"unknown class description {quote(m[2].strip())}")
        cur["vendor"], cur["device"] = int(m[3], 16), int(m[4], 16)
        return
    m = _BAR.match(line)
    if m:
        index = int(m[1])
        start, end = (int(m[2], 16), int(m[3], 16)) if m[2] else (int(m[6], 16), int(m[7], 16))
        if max(start, end) >> 64:
            raise TopologyParseError(lineno, f"BAR{index} address {max(start, end):#x} does not fit 64 bits")
        size = (end - start + 1) % (1 << 64)
        try:
            if index == 6:
                cur["rom"] = size
            elif m[2]:
                cur["bars"].append((index, Bar(size, BarKind.IO)))
            else:
                cur["bars"].append((index, Bar(size, BarKind.MEM64 if m[4] == "64" else BarKind.MEM32,
                                               bool(m[5]))))
        except ValueError as exc:
            raise TopologyParseError(lineno, str(exc)) from None
        return
    for key, pattern in _FIELDS.items():
        m = pattern.match(line)
        if m:
            if key in cur:             # else the second one would silently win
                raise TopologyParseError(lineno, f"a second {key} line for this function: {quote(line.strip())}")
            cur[key] = (int(m[1], 16), int(m[2], 16)) if key == "subsystem" else int(m[1])
            return
    text = line.strip()
    for start, form in _LINE_FORMS:
        if text.startswith(start):
            raise TopologyParseError(lineno, f"malformed {start} line (expected {form!r}): {quote(text)}")
    raise TopologyParseError(lineno, f"not an `info pci` line: {quote(text)}")


def _info_pci_function(r, parents) -> Function:
    if "class" not in r:
        raise TopologyParseError(r["line"], "function without a class/ID line")
    bridge = "secondary" in r
    port = _port_type(r, parents)
    try:
        return Function(Bdf(0, r["bus"], r["dev"], r["fn"]), vendor=r["vendor"], device=r["device"],
                        class_code=r["class"], header_type=int(bridge), subsystem=r.get("subsystem", (0, 0)),
                        bars=tuple(r["bars"]), rom_size=r["rom"], port_type=port,
                        secondary=r.get("secondary"), subordinate=r.get("subordinate"))
    except ValueError as exc:
        raise TopologyParseError(r["line"], str(exc)) from None


def format_info_pci(topology: Topology) -> str:
    """QEMU `info pci` text of a topology's segment 0: each root bus a group (bus 0's, then
    extra root buses in bus order; QEMU itself walks pci_host_bridges, newest first), devices
    of a bus after their bridge, none behind an unconfigured one (qmp_query_pci_bridge()
    lists a bridge's bus only when its secondary bus register is non-zero). An extra root
    bus without functions leaves no trace."""
    out = []
    for seg, bus in topology.root_buses():
        if seg == 0:
            _info_pci_bus(topology, bus, out)
    return "\n".join(out) + "\n"


def _info_pci_bus(topology, bus, out):
    for f in topology.children(0, bus):
        out.append(f"  Bus {f.bdf.bus:2d}, device {f.bdf.dev:3d}, function {f.bdf.fn}:")
        cls = f.class_code >> 8
        desc = CLASS_NAMES.get(cls, f"Class {cls:04d}")
        out.append(f"    {desc}: PCI device {f.vendor:04x}:{f.device:04x}")
        if f.subsystem != (0, 0):
            out.append(f"      PCI subsystem {f.subsystem[0]:04x}:{f.subsystem[1]:04x}")
        if f.is_bridge:
            out += [f"      BUS {f.bdf.bus}.", f"      secondary bus {f.secondary}.",
                    f"      subordinate bus {f.subordinate}."]
        for index, bar in f.bars:
            if bar.kind == BarKind.IO:
                out.append(f"      BAR{index}: I/O at 0xffffffffffffffff [{bar.size - 2:#06x}].")
            else:
                bits = 64 if bar.kind == BarKind.MEM64 else 32
                pf = " prefetchable" if bar.prefetchable else ""
                out.append(f"      BAR{index}: {bits} bit{pf} memory at 0xffffffffffffffff [{bar.size - 2:#010x}].")
        if f.rom_size:
            out.append(f"      BAR6: 32 bit memory at 0xffffffffffffffff [{f.rom_size - 2:#010x}].")
        out.append('      id ""')
        if f.is_configured:
            _info_pci_bus(topology, f.secondary, out)


def read_topology(path: str | Path) -> Topology:
    """A topology from a file of `info pci` or `lspci -n` text (told apart by content).
    TopologyParseError (naming the file and line) for text that is not a topology, OSError
    if the file cannot be read."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path, not {type(path).__name__}")
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError as exc:
        raise TopologyParseError(0, f"not text ({exc.reason} at byte {exc.start})", str(path)) from None
    try:
        if "PCI device" in text:                        # every `info pci` record has it
            return parse_info_pci(text, name=Path(path).stem)
        return parse_lspci(text, name=Path(path).stem)
    except TopologyParseError as exc:
        raise TopologyParseError(exc.line, exc.detail, str(path)) from None


__all__ = ["TopologyParseError", "parse_lspci", "format_lspci", "parse_info_pci", "format_info_pci",
           "read_topology", "QEMU_SUBSYS", "EXPANDER_BRIDGES", "PCI_VENDOR_ID_REDHAT", "PCI_DEVICE_ID_REDHAT_PXB",
           "PCI_DEVICE_ID_REDHAT_PXB_PCIE"]
