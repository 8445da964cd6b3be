"""Read a QEMU trace log as QEMU writes it: the config accesses a guest made, what answered
them, and the console text; everything else is counted and skipped.

The events, from QEMU's trace-events files (`-trace enable=memory_region_ops_*
-trace enable=pci_cfg_*`; the log backend prefixes "PID@SEC.USEC:" under
`-msg timestamp=on`, nothing without):

- `memory_region_ops_read|write cpu %d mr %p addr 0x%x value 0x%x size %u name '%s'`
  (system/memory.c, memory_region_read_accessor() and friends). `addr` is
  memory_region_to_absolute_addr(): the offset walked up the region's containers. That is the
  guest-physical address for a region mapped into system memory (q35's `pcie-mmcfg-mmio`:
  pcie_host_mmcfg_map()), but the offset inside the region when the guest reaches it through
  an alias, whose target has no container (arm64 `virt`: create_pcie() maps the GPEX
  `pcie-mmcfg-mmio` through the alias "pcie-ecam"). `cpu -1` is an access no vCPU made
  (current_cpu is NULL: a device's own DMA, such as an MSI write). Values are printed
  unmasked; missing functions answer all-ones (pci_host.c), masked here to the size.
- `pci_cfg_read|write %s %02x:%02x.%x @0x%x -> 0x%x` (hw/pci/trace-events), fired by
  pci_host_config_read_common() and _write_common() only when a present function took the
  access: its name, its bus number at the time, slot, function, register. A read's event
  comes before its memory_region_ops_read line (the accessor traces after the read
  returns), a write's after its memory_region_ops_write line (traced before ops->write).

Port I/O config cycles (`pci-conf-idx` at 0xCF8, `pci-conf-data` at 0xCFC-0xCFF) are decoded
as pci_host_config_write()/pci_host_data_read() do: a 32-bit write to 0xCF8 latches the
address (bit 31 enable, bus 23:16, device 15:11, function 10:8, register 7:0); a data-port
access reaches register (latch | (port & 3)) & 0xFF when bit 31 is set (pci_data_read() of
`config_reg | (addr & 3)`: low latch bits a guest sets are kept), and nothing otherwise.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .access import CONF1, MMCONFIG, PCI_CONF1_ADDRESS_PORT, PCI_CONF1_DATA_PORT
from .ecam import BUS_SHIFT, DEV_SHIFT, FN_SHIFT, NR_BUSES, Segment
from .parsers import quote

MMCFG_REGION = "pcie-mmcfg-mmio"          # pcie_host_mmcfg_init() (hw/pci/pcie_host.c)
CONF_IDX_REGION, CONF_DATA_REGION = "pci-conf-idx", "pci-conf-data"   # pci_host_conf_le_ops users
UART_8250, UART_PL011 = "serial", "pl011"  # hw/char/serial.c, hw/char/pl011.c
_UART_LCR, _UART_LCR_DLAB = 3, 0x80        # 8250: THR at +0 unless LCR.DLAB, LCR at +3
ECAM_ADDRESSING = ("auto", "gpa", "offset")

# a trace event: the log backend's prefix, or a name with an underscore (QEMU's are
# subsystem_event), then a space; "char device redirected to ..." is not one
_HEAD = re.compile(r"(?:\d+@\d+(?:\.\d+)?:([a-z][a-z0-9_]*)|([a-z][a-z0-9]*_[a-z0-9_]*)) ")
_OPS = re.compile(r"cpu (-?\d{1,9}) mr (?:0x[0-9a-f]{1,16}|\(nil\)) addr 0x([0-9a-f]{1,40}) "
                  r"value 0x([0-9a-f]{1,40}) size (\d{1,9}) name '(.*)'$")
_CFG = re.compile(r"(.*) ([0-9a-f]{2}):([0-9a-f]{2})\.([0-7]) @0x([0-9a-f]{1,4}) (->|<-) 0x([0-9a-f]{1,8})$")
_CHUNK = 1 << 16
#: an enumerator sizes a BAR by writing all ones and reading back: Linux __pci_read_base()
#: writes ~0, or `l | PCI_ROM_ADDRESS_MASK` (bits 31:11) for a ROM; edk2 writes 0xFFFFFFFF,
#: or 0xFFFFFFFE for a ROM. Every such write has bits 31:11 set.
_SIZING_BITS = 0xFFFFF800
ROW_DTYPE = np.dtype([("mech", "u1"), ("addr", "<u8"), ("size", "u1"), ("is_write", "u1"),
                      ("value", "<u8"), ("line", "<i8"), ("resp", "<i8")])


class LogError(ValueError):
    """A line of the log that cannot be what it claims: `.line` (1-based), `.detail`."""

    def __init__(self, line: int, detail: str):
        super().__init__(f"line {line}: {detail}")
        self.line, self.detail = line, detail


@dataclass
class Responder:
    """A present function as the log's pci_cfg_* events show it, at the bus number it had
    then: its QEMU device name, the first value read of each config byte, the last value
    read or written of each byte, what BAR and ROM registers read back after an all-ones
    write (their sizing), and how many events it answered."""

    name: str
    first_line: int
    first: dict = field(default_factory=dict)       # reg byte -> first value read
    last: dict = field(default_factory=dict)        # reg byte -> last value read or written
    sizing: dict = field(default_factory=dict)      # dword reg -> value read after an all-ones write
    events: int = 0

    def saw(self, reg: int, size: int, value: int, is_write: bool) -> None:
        """One answered access of `size` bytes at `reg`."""
        for i in range(size):
            byte = value >> 8 * i & 0xFF
            self.last[reg + i] = byte
            if not is_write:
                self.first.setdefault(reg + i, byte)

    def value(self, reg: int, size: int, which: str = "first") -> int | None:
        """The bytes at reg..reg+size-1 as one little-endian value (None if any is unknown)."""
        known = self.first if which == "first" else self.last
        try:
            return sum(known[reg + i] << 8 * i for i in range(size))
        except KeyError:
            return None


@dataclass
class RawLog:
    """What one pass over a log gathers (see read_log)."""

    rows: np.ndarray                                 # ROW_DTYPE, in log order
    responders: dict                                 # (bus, dev, fn) -> Responder
    consoles: dict                                   # (region, base) -> bytearray of console bytes
    linux_at: int | None                             # rows before the console said "Linux version"
    skipped: Counter                                 # kind -> count
    lines: int
    cut_last_line: bool


class _Rows:
    """Rows gathered in bounded chunks (a 1 GB log holds millions of accesses: tuples of
    Python ints would take ~10x the memory of the packed rows)."""

    def __init__(self):
        self.chunks, self.pending, self.count = [], [], 0

    def append(self, row: tuple) -> int:
        self.pending.append(row)
        self.count += 1
        if len(self.pending) == _CHUNK:
            self._flush()
        return self.count - 1

    def set_resp(self, index: int, resp: int) -> None:
        base = self.count - len(self.pending)
        if index >= base:
            row = self.pending[index - base]
            self.pending[index - base] = row[:-1] + (resp,)
        else:                                       # the paired row was flushed already
            offset = index
            for chunk in self.chunks:
                if offset < len(chunk):
                    chunk["resp"][offset] = resp
                    return
                offset -= len(chunk)

    def _flush(self):
        if self.pending:
            self.chunks.append(np.array(self.pending, dtype=ROW_DTYPE))
            self.pending = []

    def array(self) -> np.ndarray:
        self._flush()
        return np.concatenate(self.chunks) if self.chunks else np.empty(0, dtype=ROW_DTYPE)


class _Reader:
    """One pass over the lines; state: the conf1 latch, the pending responder event, consoles."""

    def __init__(self, region: str, strict: bool):
        self.region, self.strict = region, strict
        self.rows, self.responders, self.consoles = _Rows(), {}, {}
        self.skipped, self.latch, self.lcr = Counter(), 0, {}
        self.pending_read = None       # (offset, responder, reg, value) of a read event awaiting its access
        self.last_write = None         # (row index, size, mech, addr) of the latest config write
        self.written = {}              # (bus, dev, fn, reg) -> the last dword written (BAR sizing)
        self.linux_at, self.lineno = None, 0

    def line(self, lineno: int, text: str) -> None:
        self.lineno = lineno
        m = _HEAD.match(text)
        if m is None:
            if text.strip():
                self._unknown("lines that are not trace events", text)
            return
        event = m[1] or m[2]
        if event in ("memory_region_ops_read", "memory_region_ops_write"):
            self._ops(event.endswith("write"), text, m.end())
        elif event in ("pci_cfg_read", "pci_cfg_write"):
            self._cfg(event.endswith("write"), text, m.end())
        else:
            self._unknown(f"other trace events ({event})", text)

    def _unknown(self, kind: str, text: str) -> None:
        if self.strict:
            raise LogError(self.lineno, f"not a memory_region_ops_* or pci_cfg_* event ({kind}): {quote(text)} "
                                        "(strict refuses what it does not know)")
        self.skipped[kind] += 1

    def _ops(self, is_write: bool, text: str, start: int) -> None:
        k = text.rfind(" name '")
        name = text[k + 7:-1] if k > 0 and text.endswith("'") else None
        wanted = name in (self.region, CONF_IDX_REGION, CONF_DATA_REGION, UART_8250, UART_PL011)
        if not wanted and not self.strict and name is not None:
            self.skipped["device accesses (cpu -1)" if " cpu -1 " in text else f"region '{name}'"] += 1
            return
        m = _OPS.match(text, start)
        if not m:
            raise LogError(self.lineno, f"malformed memory_region_ops line: {quote(text)}")
        cpu, addr, value, size, name = int(m[1]), int(m[2], 16), int(m[3], 16), int(m[4]), m[5]
        if size not in (1, 2, 4, 8):
            raise LogError(self.lineno, f"access size {size} (QEMU accesses are 1, 2, 4 or 8 bytes)")
        for what, number in (("addr", addr), ("value", value)):
            if number >> 64:
                raise LogError(self.lineno, f"{what} {number:#x} does not fit 64 bits")
        if cpu < 0:
            self.skipped["device accesses (cpu -1)"] += 1
            return
        value &= (1 << 8 * size) - 1
        if name == self.region:
            self._config(MMCONFIG, addr, size, is_write, value)
        elif name == CONF_IDX_REGION:
            if is_write and addr == PCI_CONF1_ADDRESS_PORT and size == 4:
                self.latch = value              # pci_host_config_write(): only a dword at 0xCF8
            else:
                self.skipped["conf1 address-port reads and narrow writes"] += 1
        elif name == CONF_DATA_REGION:
            self._conf1_data(addr, size, is_write, value)
        elif name in (UART_8250, UART_PL011):
            self._uart(name, addr, is_write, value)
        else:
            self.skipped[f"region '{name}'"] += 1

    def _conf1_data(self, port, size, is_write, value) -> None:
        if not PCI_CONF1_DATA_PORT <= port <= PCI_CONF1_DATA_PORT + 3:
            raise LogError(self.lineno, f"pci-conf-data access at port {port:#x} (the data port is "
                                        "0xcfc-0xcff)")
        if not self.latch & 0x8000_0000:       # pci_host_data_read(): no cycle, all-ones
            self.skipped["conf1 data accesses with the enable bit clear (no config cycle)"] += 1
            return
        reg = (self.latch | port & 3) & 0xFF     # pci_data_read(s->bus, s->config_reg | (addr & 3))
        if reg % size:
            raise LogError(self.lineno, f"conf1 access of {size} bytes at port {port:#x} is not aligned")
        bdf = self.latch >> 8 & 0xFFFF          # bus 23:16, devfn 15:8
        self._config(CONF1, (bdf >> 8) << BUS_SHIFT | (bdf & 0xFF) << FN_SHIFT | reg, size, is_write, value)

    def _config(self, mech, addr, size, is_write, value) -> None:
        index = self.rows.append((mech, addr, size, int(is_write), value, self.lineno, -1))
        if is_write:
            self.last_write = (index, size, mech, addr)
        elif self.pending_read is not None:
            offset, resp, reg, answer = self.pending_read
            self.pending_read = None
            if _same_access(mech, addr, offset):
                self.rows.set_resp(index, offset)
                resp.saw(reg, size, answer, False)
            else:
                self.skipped["pci_cfg events that match no access"] += 1

    def _cfg(self, is_write: bool, text: str, start: int) -> None:
        m = _CFG.match(text, start)
        if not m:
            raise LogError(self.lineno, f"malformed pci_cfg line: {quote(text)}")
        bus, dev, fn, reg, value = int(m[2], 16), int(m[3], 16), int(m[4], 16), int(m[5], 16), int(m[7], 16)
        if dev > 31 or reg > 0xFFF or (m[6] == "<-") != is_write:
            raise LogError(self.lineno, f"malformed pci_cfg line: {quote(text)}")
        key, offset = (bus, dev, fn), bus << BUS_SHIFT | dev << DEV_SHIFT | fn << FN_SHIFT | reg
        resp = self.responders.get(key)
        if resp is None:
            resp = self.responders[key] = Responder(m[1], self.lineno)
        resp.events += 1
        if is_write:
            if self.last_write is not None and _same_access(*self.last_write[2:], offset):
                index, size = self.last_write[:2]    # the write this event reports, just before it
                self.rows.set_resp(index, offset)
                resp.saw(reg, size, value, True)
                self.written[key + (reg,)] = value if size == 4 else None
            else:
                self.skipped["pci_cfg events that match no access"] += 1
            self.last_write = None
            return
        if self.pending_read is not None:      # a read event no guest access took
            self.skipped["pci_cfg events that match no access"] += 1
        self.pending_read = (offset, resp, reg, value)
        written = self.written.pop(key + (reg,), None)
        if written is not None and written & _SIZING_BITS == _SIZING_BITS:
            resp.sizing[reg] = value            # pci_read_bases()/edk2 BAR sizing: the mask read back

    def _uart(self, name, addr, is_write, value) -> None:
        """Console bytes: an 8250's THR (offset 0 of its 8 ports, LCR.DLAB clear) or a PL011's
        UARTDR (offset 0 of its 4 KiB page)."""
        if not is_write:
            return
        if name == UART_8250:
            base, offset = addr & ~7, addr & 7
            if offset == _UART_LCR:
                self.lcr[base] = value
            if offset or self.lcr.get(base, 0) & _UART_LCR_DLAB:
                return
        else:
            base = addr & ~0xFFF
            if addr & 0xFFF:
                return
        out = self.consoles.setdefault((name, base), bytearray())
        out.append(value & 0xFF)
        if self.linux_at is None and out.endswith(b"Linux version"):
            self.linux_at = self.rows.count


def _same_access(mech: int, addr: int, offset: int) -> bool:
    """Can a pci_cfg event at `offset` (bus << 20 | devfn << 12 | reg) report this access? A
    conf1 access carries the same offset; an ECAM one the same register (bus 0's page is
    1 MiB aligned, so addr's low 12 bits are the register)."""
    return addr == offset if mech == CONF1 else (addr & 0xFFF) == (offset & 0xFFF)


def read_log(f, region: str = MMCFG_REGION, strict: bool = False, progress=None,
             total_bytes: int | None = None, where=None) -> RawLog:
    """One pass over the lines of an open binary log `f` (bytes lines). progress(done,
    total) is called every 65,536 lines with the bytes read so far (`where()` tells them)
    and total_bytes. LogError for what cannot be read (not UTF-8, a broken gzip stream)."""
    reader = _Reader(region, strict)
    wanted = {n.encode() for n in (region, CONF_IDX_REGION, CONF_DATA_REGION, UART_8250, UART_PL011)}
    regions, lineno, raw = Counter(), 0, b"\n"
    try:
        for lineno, raw in enumerate(f, 1):
            # The fast path, for the bulk of a raw log: an access to a region config space
            # does not need is counted by name without decoding (strict reads every line).
            k = raw.rfind(b" name '")
            if k > 0 and not strict and raw.endswith(b"'\n") and raw[k + 7:-2] not in wanted \
                    and raw.find(b"memory_region_ops_", 0, 64) >= 0:
                regions[b"-1" if b" cpu -1 " in raw else raw[k + 7:-2]] += 1
            else:
                _slow_line(reader, lineno, raw, strict)
            if progress is not None and not lineno & 0xFFFF:
                progress(where() if where else 0, total_bytes)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise LogError(lineno + 1, f"not a readable gzip file ({exc})") from None
    cut = not raw.endswith(b"\n")
    if cut and strict:
        raise LogError(lineno, f"the log ends inside a line: {quote(raw.decode(errors='replace'))}")
    for name, count in regions.items():
        kind = "device accesses (cpu -1)" if name == b"-1" else f"region '{name.decode(errors='replace')}'"
        reader.skipped[kind] += count
    if progress is not None:
        progress(total_bytes, total_bytes)
    return RawLog(reader.rows.array(), reader.responders, reader.consoles, reader.linux_at,
                  reader.skipped, lineno, cut)


def _slow_line(reader, lineno: int, raw: bytes, strict: bool) -> None:
    """A line the fast path did not take: decoded and read whole. A last line cut short
    (no newline: the log was copied while QEMU wrote it) is counted, not refused, unless
    strict."""
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        raise LogError(lineno, f"not UTF-8 text ({exc.reason} at column {exc.start + 1})") from None
    if raw.endswith(b"\n") or strict:
        reader.line(lineno, text.rstrip("\r\n"))
    elif text.rstrip("\r").endswith("'") and "memory_region_ops_" in text:   # whole but for its newline
        reader.line(lineno, text.rstrip("\r"))
    else:                          # a number or a name may be cut: nothing of it is trusted
        reader.skipped["a last line cut short"] += 1


def open_log(path):
    """(binary file, where(), total bytes) of a log path: gzip by its magic bytes (LogError
    for a .gz name without them)."""
    size = os.path.getsize(path)
    raw = open(path, "rb")
    gzipped = raw.read(2) == b"\x1f\x8b"
    raw.seek(0)
    if gzipped:
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw.tell, size
    if str(path).endswith(".gz"):
        raw.close()
        raise LogError(1, "not a readable gzip file (no gzip magic bytes)")
    return raw, raw.tell, size


# -- the ECAM window ----------------------------------------------------------------------

_CONSOLE_WINDOWS = (
    # arch/x86/pci/mmconfig-shared.c, pci_mmconfig_add() users (Linux <= 6.8)
    re.compile(r"MMCONFIG for domain (?P<seg>[0-9a-f]{4}) \[bus (?P<start>[0-9a-f]{2})-(?P<end>[0-9a-f]{2})\] "
               r"at \[mem 0x[0-9a-f]+-0x[0-9a-f]+[^\]]*\] \(base (?P<base>0x[0-9a-f]+)\)"),
    # the same message since Linux 6.9 ("ECAM ... for domain")
    re.compile(r"ECAM \[mem 0x[0-9a-f]+-0x[0-9a-f]+[^\]]*\] \(base (?P<base>0x[0-9a-f]+)\) for domain "
               r"(?P<seg>[0-9a-f]{4}) \[bus (?P<start>[0-9a-f]{2})-(?P<end>[0-9a-f]{2})\]"),
    # drivers/pci/ecam.c, pci_ecam_create(): "ECAM at %pR for %pR"; the resource starts at
    # the first bus's page, so bus 0's base is start - (first bus << 20)
    re.compile(r"ECAM at \[mem (?P<first>0x[0-9a-f]+)-0x[0-9a-f]+[^\]]*\] for "
               r"\[bus (?P<start>[0-9a-f]{2})-(?P<end>[0-9a-f]{2})\]"),
)


def console_window(console: str) -> tuple[Segment, str] | None:
    """Segment 0's ECAM window as the kernel announced it on the console, and the line."""
    for line in console.splitlines():
        for pattern in _CONSOLE_WINDOWS:
            m = pattern.search(line)
            if m is None or int(m.groupdict().get("seg") or "0", 16) != 0:
                continue
            start, end = int(m["start"], 16), int(m["end"], 16)
            base = int(m["base"], 16) if m.groupdict().get("base") else int(m["first"], 16) - (start << BUS_SHIFT)
            try:
                return Segment(base, 0, start, end), line.strip()
            except ValueError:
                continue
    return None


@dataclass(frozen=True)
class EcamAddressing:
    """How the log's ECAM `addr`s map to the window: 'gpa' (addr is guest-physical, bus 0 at
    `base`) or 'offset' (addr is the offset from bus 0's page: an alias); `window` the full
    window when known (the caller's, or the kernel's console), `how` says what decided."""

    mode: str
    base: int | None
    window: Segment | None
    how: str


def ecam_addressing(rows: np.ndarray, mode: str, window: Segment | None,
                    window_how: str) -> EcamAddressing | None:
    """Decide the addressing of the ECAM rows (None if there are none). Responder pairs
    (an access and the pci_cfg event of the function that took it) give bus 0's address
    exactly: addr - (bus << 20 | dev << 15 | fn << 12 | reg). LogError when the log
    contradicts itself, the window, or `mode`, or when nothing decides."""
    ecam = rows[rows["mech"] == MMCONFIG]
    if not len(ecam):
        return None
    paired = ecam[ecam["resp"] >= 0]
    if len(paired):
        bases = paired["addr"].astype(np.int64) - paired["resp"]
        first = int(bases[0])
        other = np.flatnonzero(bases != first)
        if len(other):
            raise LogError(int(paired["line"][other[0]]), f"this ECAM access and the function that answered it put "
                           f"bus 0 at {int(bases[other[0]]):#x}, but line {int(paired['line'][0])}'s at {first:#x}")
        found = "offset" if first == 0 else "gpa"
        how = f"{len(paired)} accesses paired with the pci_cfg_* event of the function that answered"
        if mode != "auto" and mode != found:
            raise LogError(int(paired["line"][0]), f"ecam addressing {mode!r} was asked for, but the "
                           f"responders show addr is {'an offset in the window' if first == 0 else 'guest-physical'}")
        if found == "gpa":
            if window is not None and window.base != first:
                raise LogError(int(paired["line"][0]), f"the log's ECAM accesses put bus 0 at {first:#x}, but "
                               f"{window_how} puts it at {window.base:#x}: a log of another machine?")
            return EcamAddressing("gpa", first, window, how)
        return EcamAddressing("offset", None if window is None else window.base, window, how)
    return _by_range(ecam, mode, window, window_how)


def _by_range(ecam, mode, window, window_how) -> EcamAddressing:
    """No responder events: decide by where the addresses fall."""
    hi = int(ecam["addr"].max())
    first_line = int(ecam["line"][0])
    if mode == "offset" or (mode == "auto" and window is not None and hi < window.window_end - window.base
                            and not window.window_start <= hi):
        return EcamAddressing("offset", None if window is None else window.base, window, f"{window_how} "
                              "(every addr is below the window's size and none inside it)" if mode == "auto"
                              else "asked for")
    if window is None:
        if mode == "gpa":
            raise LogError(first_line, "ECAM addresses are guest-physical, but nothing says where bus 0 is: "
                           "the log has no pci_cfg_* events and the console no ECAM/MMCONFIG line; give the "
                           "window's base (ecam_base, --ecam-base)")
        raise LogError(first_line, "cannot tell whether ECAM addr is guest-physical or an offset in the "
                       "window (an alias, as arm64 virt maps it): the log has no pci_cfg_* events and the "
                       "console no ECAM/MMCONFIG line; give the window's base (--ecam-base) and, if "
                       "needed, the addressing (--ecam-addr gpa|offset)")
    outside = (ecam["addr"] < np.uint64(window.window_start)) | (ecam["addr"] >= np.uint64(window.window_end))
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise LogError(int(ecam["line"][i]), f"gpa {int(ecam['addr'][i]):#x} outside segment 0's ECAM window "
                       f"[{window.window_start:#x}, {window.window_end:#x}) ({window_how}): a log of another machine?")
    return EcamAddressing("gpa", window.base, window, f"{window_how} (every addr falls inside it)")


def decode(rows: np.ndarray, addressing: EcamAddressing | None) -> np.ndarray:
    """Each row's offset from bus 0's config page (conf1 rows carry it already)."""
    off = rows["addr"].copy()
    ecam = rows["mech"] == MMCONFIG
    if addressing is not None and addressing.mode == "gpa":
        below = ecam & (rows["addr"] < np.uint64(addressing.base))
        if below.any():
            i = int(np.flatnonzero(below)[0])
            raise LogError(int(rows["line"][i]), f"ECAM addr {int(rows['addr'][i]):#x} below bus 0's page "
                           f"{addressing.base:#x}")
        off[ecam] -= np.uint64(addressing.base)
    past = off >= np.uint64(NR_BUSES << BUS_SHIFT)
    if past.any():
        i = int(np.flatnonzero(past)[0])
        raise LogError(int(rows["line"][i]), f"ECAM addr {int(rows['addr'][i]):#x} is past bus 255 of the window")
    return off
