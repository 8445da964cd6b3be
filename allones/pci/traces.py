"""Import recorded config accesses: QEMU trace logs and plain CSV.

QEMU (`-trace enable=memory_region_ops_*`) logs every access to a MemoryRegion:
    PID@TIME:memory_region_ops_read cpu 0 mr 0x... addr 0xb0010000 value 0xff.. size 4 name 'pcie-mmcfg-mmio'
Accesses to the ECAM region become MMCONFIG accesses (addr is the guest-physical address);
port I/O config cycles become CONF1 accesses: a 32-bit write to 0xCF8 latches an address
(bit 31 enable, bus 23:16, device 15:11, function 10:8, register 7:2) and an access to
0xCFC-0xCFF reaches register (latch & 0xFC) + (port - 0xCFC), as QEMU's pci_host_data_*
does. Values are masked to the access size (QEMU prints missing functions unmasked).
Writes to the 'serial' region rebuild the console text, which tells firmware from kernel.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .access import (ACCESS_DTYPE, CONF1, MMCONFIG, PCI_CONF1_ADDRESS_PORT, PCI_CONF1_DATA_PORT,
                     ScanResult, check_accesses)
from .ecam import PciAddressError, Segment, ecam_offset
from .parsers import ParseError
from .topology import Topology, _segment

MMCFG_REGION = "pcie-mmcfg-mmio"
_LINE = re.compile(r"^(?:\S+?:)?memory_region_ops_(read|write) cpu \d+ mr 0x[0-9a-f]+ addr (0x[0-9a-f]+) "
                   r"value (0x[0-9a-f]+) size (\d{1,9}) name '([^']*)'\s*$")
_UART_THR, _UART_LCR, _UART_LCR_DLAB = 0x3F8, 0x3FB, 0x80


class TraceParseError(ParseError):
    """A trace line that cannot be what it claims (`.line`, `.source`: see ParseError)."""


@dataclass
class Trace:
    """Config accesses recorded from a guest, with where the kernel took over.

    `accesses` is ACCESS_DTYPE (segment 0), reads carrying the recorded value; `lines`
    the log line of each; `kernel_start` the index of the kernel's first access (None if
    the console never printed "Linux version").
    """

    accesses: np.ndarray
    lines: np.ndarray
    kernel_start: int | None
    console: str = ""

    def part(self, which: str) -> np.ndarray:
        """'all', 'firmware' (before the kernel) or 'kernel' accesses."""
        if which == "all":
            return self.accesses
        if which not in ("firmware", "kernel"):
            raise ValueError(f"unknown trace part {which!r}: all, firmware or kernel")
        if self.kernel_start is None:
            raise ValueError("the console never printed 'Linux version': no kernel part")
        return self.accesses[self.kernel_start:] if which == "kernel" else self.accesses[:self.kernel_start]

    def as_scan(self, topology: Topology, which: str = "all", name: str = "trace") -> ScanResult:
        """The accesses as a ScanResult against a topology (to replay on a Vmm)."""
        acc = self.part(which)
        mech = "mmconfig" if np.all(acc["mech"] == MMCONFIG) else (
            "conf1" if np.all(acc["mech"] == CONF1) else "recorded")
        return ScanResult(f"{name}:{which}", mech, topology, acc)


def _open_text(source) -> io.IOBase:
    """A Path, or a one-line str naming a file, is read (gunzipped if .gz); other text is
    the data itself. A one-line str that is neither a file nor data (no ',' and no
    'memory_region_ops_') is taken for a missing file: FileNotFoundError."""
    if not isinstance(source, (str, Path)):
        raise TypeError(f"expected a path or text, got {type(source).__name__}")
    if isinstance(source, str) and not source.strip():
        raise ValueError("empty source: neither a file name nor trace text")
    if _source_name(source) is not None:
        path = Path(source)       # bytes: _lines() decodes each line, to name a bad one
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    return io.StringIO(source)


def _source_name(source) -> str | None:
    """The file a source names (see _open_text), or None for text."""
    text = str(source)
    if isinstance(source, Path) or ("\n" not in text and (Path(text).is_file() or not (
            "," in text or "memory_region_ops_" in text))):
        return text
    return None


def _lines(f, name):
    """The lines of an open source; undecodable bytes or a broken gzip stream become a
    TraceParseError at the line they are on."""
    lineno = 0
    try:
        for lineno, line in enumerate(f, 1):
            yield line if isinstance(line, str) else line.decode()
    except UnicodeDecodeError as exc:
        raise TraceParseError(lineno, f"not UTF-8 text ({exc.reason} at column {exc.start + 1})", name) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise TraceParseError(lineno + 1, f"not a readable gzip file ({exc})", name) from None


def _naming_source(parse):
    """parse(source, ...) whose TraceParseErrors name the file `source` names."""
    @functools.wraps(parse)
    def wrapper(source, *args, **kwargs):
        try:
            return parse(source, *args, **kwargs)
        except TraceParseError as exc:
            name = _source_name(source)
            if exc.source is not None or name is None:
                raise
            raise TraceParseError(exc.line, exc.detail, name) from None
    return wrapper


@_naming_source
def parse_qemu_trace(source, segment: Segment | None = None, region: str = MMCFG_REGION) -> Trace:
    """Read a QEMU trace log (path, .gz path or text): MMCONFIG accesses to `region` inside
    `segment`'s window (default: q35's, 0xB0000000, buses 0-255), conf1 cycles through
    0xCF8/0xCFC, and the serial console. Other lines are skipped. TraceParseError names the
    line of anything malformed: a size other than 1, 2, 4, 8, an address or value past 64
    bits, an ECAM access outside the window or not naturally aligned."""
    segment = _segment(segment)
    if not isinstance(region, str):
        raise TypeError(f"region must be a str, not {type(region).__name__}")
    rows, lines, console = [], [], []
    latch, lcr, last_mmcfg, linux_at = 0, 0, -1, None
    with _open_text(source) as f:
        for lineno, line in enumerate(_lines(f, _source_name(source)), 1):
            if "memory_region_ops_" not in line:
                continue
            m = _LINE.match(line)
            if not m:
                raise TraceParseError(lineno, f"malformed memory_region_ops line: {line.strip()[:120]!r}")
            op, addr, value, size, name = m[1], int(m[2], 16), int(m[3], 16), int(m[4]), m[5]
            if size not in (1, 2, 4, 8):
                raise TraceParseError(lineno, f"access size {size}")
            for what, number in (("addr", addr), ("value", value)):
                if number >> 64:
                    raise TraceParseError(lineno, f"{what} {number:#x} does not fit 64 bits")
            is_write = op == "write"
            value &= (1 << 8 * size) - 1
            if name == region:
                try:
                    bdf, reg = segment.decode(addr)
                except PciAddressError as exc:
                    raise TraceParseError(lineno, str(exc)) from None
                if reg % size:
                    raise TraceParseError(lineno, f"ECAM access of {size} bytes at {addr:#x} is not aligned")
                rows.append((bdf.segment, bdf.bus, bdf.dev, bdf.fn, reg, size, int(is_write), MMCONFIG, value))
                lines.append(lineno)
                last_mmcfg = len(rows)
            elif name == "pci-conf-idx":
                if is_write and addr == PCI_CONF1_ADDRESS_PORT and size == 4:
                    latch = value
            elif name == "pci-conf-data":
                if not PCI_CONF1_DATA_PORT <= addr <= PCI_CONF1_DATA_PORT + 3:
                    raise TraceParseError(lineno, f"pci-conf-data access at port {addr:#x}")
                if latch & 0x8000_0000:
                    reg = (latch & 0xFC) + (addr - PCI_CONF1_DATA_PORT)
                    if reg % size:
                        raise TraceParseError(lineno, f"conf1 access of {size} bytes at port {addr:#x} "
                                              "is not aligned")
                    rows.append((0, latch >> 16 & 0xFF, latch >> 11 & 31, latch >> 8 & 7, reg, size,
                                 int(is_write), CONF1, value))
                    lines.append(lineno)
            elif name == "serial" and is_write:
                if addr == _UART_LCR:
                    lcr = value
                elif addr == _UART_THR and not lcr & _UART_LCR_DLAB:
                    console.append(chr(value))
                    if linux_at is None and "".join(console[-13:]) == "Linux version":
                        linux_at = last_mmcfg
    acc = np.array(rows, dtype=ACCESS_DTYPE) if rows else np.empty(0, dtype=ACCESS_DTYPE)
    # The kernel's first accesses precede its console text (printk is buffered until the
    # early console): it starts after the firmware's last MMCONFIG access before the text.
    start = None if linux_at is None else max(linux_at, 0)
    return Trace(acc, np.array(lines, dtype=np.int64), start, "".join(console))


@_naming_source
def parse_csv(source, segment: Segment | None = None) -> Trace:
    """CSV rows `op,offset,size,value` (op: r/read or w/write; offset from the window's bus-0
    base; numbers decimal or 0x-hex; an optional header row, first but for comments) as
    MMCONFIG accesses. TraceParseError names the line of anything malformed."""
    segment = _segment(segment)
    rows, lines, first = [], [], True
    with _open_text(source) as f:
        reader, lineno = csv.reader(_lines(f, _source_name(source))), 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise TraceParseError(lineno + 1, f"not CSV: {exc}") from None
            lineno += 1
            if not row or row[0].strip().startswith("#"):
                continue
            header, first = first and row[0].strip().lower() == "op", False
            if header:
                continue
            if len(row) != 4:
                raise TraceParseError(lineno, f"expected op,offset,size,value; got {len(row)} fields")
            op = row[0].strip().lower()
            if op not in ("r", "read", "w", "write"):
                raise TraceParseError(lineno, f"op {row[0]!r} is not r/read/w/write")
            try:
                offset, size, value = (int(x.strip(), 0) for x in row[1:])
            except ValueError:
                raise TraceParseError(lineno, f"not numbers: {','.join(row[1:])[:120]!r}") from None
            if size not in (1, 2, 4, 8) or offset % size:
                raise TraceParseError(lineno, f"size {size} at offset {offset:#x}: sizes are 1, 2, 4, 8, aligned")
            if value < 0 or value >> 8 * size:
                raise TraceParseError(lineno, f"value {value:#x} does not fit {size} bytes")
            try:
                bdf, reg = segment.decode(segment.base + offset)
            except PciAddressError as exc:
                raise TraceParseError(lineno, str(exc)) from None
            rows.append((bdf.segment, bdf.bus, bdf.dev, bdf.fn, reg, size, int(op[0] == "w"), MMCONFIG, value))
            lines.append(lineno)
    acc = np.array(rows, dtype=ACCESS_DTYPE) if rows else np.empty(0, dtype=ACCESS_DTYPE)
    return Trace(acc, np.array(lines, dtype=np.int64), None)


def format_csv(accesses: np.ndarray) -> str:
    """MMCONFIG accesses as `op,offset,size,value` CSV (the inverse of parse_csv)."""
    check_accesses(accesses)
    out = ["op,offset,size,value"]
    for a in accesses[accesses["mech"] == MMCONFIG]:
        offset = ecam_offset(int(a["bus"]), int(a["dev"]), int(a["fn"]), int(a["reg"]))
        out.append(f"{'w' if a['is_write'] else 'r'},{offset:#x},{int(a['size'])},{int(a['value']):#x}")
    return "\n".join(out) + "\n"


def read_trace(path, segment: Segment | None = None) -> Trace:
    """A QEMU trace log or a CSV file (told apart by the name: .csv, .csv.gz);
    FileNotFoundError if there is no such file; TraceParseError (naming the file and line)
    for what is not a trace."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path, not {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trace file {path}")
    if path.suffix == ".csv" or path.name.endswith(".csv.gz"):
        return parse_csv(path, segment)
    return parse_qemu_trace(path, segment)


@dataclass
class Capture:
    """A recorded boot made ready to replay: the trace, the topology it ran on, and the
    chosen part of it as a ScanResult (what Vmm.replay and the fleets take)."""

    trace: Trace
    topology: Topology
    scan: ScanResult
    part: str


def load_capture(path, topology=None, part: str = "all", *, ecam_base: int | None = None,
                 strict: bool = False) -> Capture:
    """Read a capture (QEMU log or CSV) and the topology it ran on.

    topology: a Topology, a spec for builders.from_spec (a builder or a file of `info pci` /
    `lspci -n` text), or None to infer the present functions from the log's pci_cfg_*
    responder events (ValueError naming the `topology` option when the log has none)."""
    from .builders import from_spec
    if topology is None:
        raise ValueError("the log has no pci_cfg_* responder events to infer the present functions "
                         "from: give a topology (--topology FILE: QEMU `info pci` or `lspci -n`)")
    if isinstance(topology, str):
        topology = from_spec(topology)
    if not isinstance(topology, Topology):
        raise TypeError(f"topology must be a Topology, a spec or None, not {type(topology).__name__}")
    trace = read_trace(path, topology.segments[0])
    return Capture(trace, topology, trace.as_scan(topology, part, name=Path(str(path)).name), part)
