"""The topology a log shows: the functions QEMU's pci_cfg_* events say answered, with what
they answered.

A function that answered is present; everything else of the window is a hole. Its header is
rebuilt from the bytes it was read (the first value of each byte: IDs, class, header type
and capabilities do not change), its bus numbers from the last value of the bus-number
dword (read or written: the numbering the boot left), its BARs and ROM from their sizing
(what they read back after an all-ones write, sized as Linux's pci_size() does: the lowest
set bit of the mask), and its port type from its PCI Express capability (PCI_EXP_FLAGS bits
7:4) when the capability list was read. What the log never read is left at the Function
default, and said so in the notes.
"""

from __future__ import annotations

from .ecam import Bdf, Segment
from .parsers import EXPANDER_BRIDGES
from .qemu_log import Responder
from .topology import Bar, BarKind, Function, PortType, Topology

PCI_HEADER_TYPE, PCI_CAPABILITY_LIST, PCI_CAP_ID_EXP = 0x0E, 0x34, 0x10
PCI_PRIMARY_BUS, PCI_ROM_ADDRESS, PCI_ROM_ADDRESS1 = 0x18, 0x30, 0x38
PCI_SUBSYSTEM_VENDOR_ID = 0x2C
PCI_CFG_SPACE_SIZE = 0x100


class InferenceError(ValueError):
    """The log's responders do not make a topology."""


def infer_topology(responders: dict, window: Segment, name: str = "log") -> tuple[Topology, list[str]]:
    """A Topology of the functions in `responders` ((bus, dev, fn) -> Responder, as
    qemu_log.read_log gathers them) in segment 0's `window`, and notes on what was guessed."""
    if not responders:
        raise InferenceError("the log has no pci_cfg_* events, so it does not say which functions are "
                             "present: give the topology (--topology FILE: QEMU `info pci` or `lspci -n`)")
    notes, functions = [], []
    for (bus, dev, fn), resp in sorted(responders.items()):
        functions.append(_function(Bdf(0, bus, dev, fn), resp, notes))
    bridged = {f.secondary for f in functions if f.is_configured}
    pxbs = sum((f.vendor, f.device) in EXPANDER_BRIDGES for f in functions)
    orphans = sorted({f.bdf.bus for f in functions} - bridged - {window.start_bus})
    if len(orphans) > pxbs:
        raise InferenceError(f"functions answered on bus {', '.join(f'{b:02x}' for b in orphans)}, which no "
                             f"bridge in the log leads to and {pxbs} expander host bridge(s) open: a log whose "
                             "buses were renumbered? give the topology (--topology FILE)")
    try:
        return Topology(functions, [window], extra_roots=tuple((0, b) for b in orphans), name=name), notes
    except ValueError as exc:
        raise InferenceError(f"the functions that answered in the log do not make a topology: {exc}") from None


def _function(bdf: Bdf, r: Responder, notes: list) -> Function:
    vendor, device = r.value(0, 2), r.value(2, 2)
    if vendor is None or device is None:
        raise InferenceError(f"{bdf} ({r.name}) answered (log line {r.first_line}) but its vendor and "
                             "device ID were never read: give the topology (--topology FILE)")
    header = r.value(PCI_HEADER_TYPE, 1)
    class_code = r.value(0x09, 3)
    if header is None or class_code is None:
        notes.append(f"{bdf} ({r.name}): header type or class never read; taken as 0")
    header_type = (header or 0) & 0x7F
    kw = dict(vendor=vendor, device=device, class_code=class_code or 0, header_type=header_type,
              revision=r.value(0x08, 1) or 0, multifunction=None if header is None else bool(header & 0x80),
              port_type=_port_type(r, bdf, header_type, notes), name=r.name)
    bars = _bars(r, 2 if header_type == 1 else 6)
    rom = _size(r.sizing.get(PCI_ROM_ADDRESS1 if header_type == 1 else PCI_ROM_ADDRESS), 0xFFFFF800)
    if header_type == 1:
        secondary, subordinate = r.last.get(PCI_PRIMARY_BUS + 1, 0), r.last.get(PCI_PRIMARY_BUS + 2, 0)
        if secondary <= bdf.bus:       # never given bus numbers: a bridge with nothing behind it
            secondary = subordinate = 0
        kw.update(secondary=secondary, subordinate=subordinate)
    else:
        sub = r.value(PCI_SUBSYSTEM_VENDOR_ID, 2), r.value(PCI_SUBSYSTEM_VENDOR_ID + 2, 2)
        kw["subsystem"] = sub if None not in sub else (0, 0)
    try:
        return Function(bdf, bars=bars, rom_size=rom if rom and rom >= 2048 else 0, **kw)
    except ValueError as exc:
        raise InferenceError(f"{bdf} ({r.name}, log line {r.first_line}): {exc}") from None


def _port_type(r: Responder, bdf: Bdf, header_type: int, notes: list) -> PortType | None:
    """From the PCI Express capability, found by walking the capability list as read."""
    ptr, seen = r.first.get(PCI_CAPABILITY_LIST), set()
    while ptr and ptr not in seen and len(seen) < 48:
        seen.add(ptr)
        ptr &= 0xFC
        if r.first.get(ptr) == PCI_CAP_ID_EXP and r.value(ptr + 2, 1) is not None:
            try:
                return PortType(r.value(ptr + 2, 1) >> 4 & 0xF)
            except ValueError:
                break
        ptr = r.first.get(ptr + 1)
    if any(reg >= PCI_CFG_SPACE_SIZE for reg in r.last):     # extended config space answered
        guess = PortType.ROOT_PORT if header_type == 1 else PortType.ENDPOINT
        notes.append(f"{bdf} ({r.name}): PCI Express (answered past 0x100) but its capability was not "
                     f"read; port type taken as {guess.name.lower()}")
        return guess
    return None


def _bars(r: Responder, count: int) -> tuple:
    """(index, Bar) for each BAR the log sized."""
    bars, index = [], 0
    while index < count:
        reg = 0x10 + 4 * index
        mask = r.sizing.get(reg)
        if not mask:
            index += 1
            continue
        if mask & 1:                                   # PCI_BASE_ADDRESS_SPACE_IO
            size = _size(mask, 0xFFFFFFFC) & 0xFFFF or None
            if size:
                bars.append((index, Bar(size, BarKind.IO)))
            index += 1
            continue
        wide = mask >> 1 & 3 == 2 and index + 1 < count   # PCI_BASE_ADDRESS_MEM_TYPE_64
        full = mask | (r.sizing.get(reg + 4, 0) << 32 if wide else 0)
        size = _size(full, 0xFFFFFFFF_FFFFFFF0 if wide else 0xFFFFFFF0)
        if size:
            bars.append((index, Bar(size, BarKind.MEM64 if wide else BarKind.MEM32, bool(mask & 8))))
        index += 2 if wide else 1
    return tuple(bars)


def _size(mask: int | None, bits: int) -> int:
    """pci_size(): the lowest set bit of the address bits the register kept (0: none)."""
    if not mask:
        return 0
    kept = mask & bits
    return kept & -kept
