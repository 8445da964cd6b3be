"""Import recorded config accesses: QEMU trace logs (qemu_log.py reads them) and CSV.

A Trace is the config accesses in order (ACCESS_DTYPE, reads carrying the recorded value),
the log line of each, where the kernel took over, the console text, the functions that
answered (QEMU's pci_cfg_* events), what was skipped, and how the ECAM addresses were read.
`load_capture()` adds the topology the boot ran on and checks the two agree.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .access import ACCESS_DTYPE, CONF1, MMCONFIG, ScanResult, check_accesses
from .ecam import BUS_SHIFT, DEV_SHIFT, FN_SHIFT, Bdf, PciAddressError, Segment, ecam_offset
from .parsers import ParseError, quote
from .qemu_log import (ECAM_ADDRESSING, MMCFG_REGION, EcamAddressing, LogError, console_window, decode,
                       ecam_addressing, open_log, read_log)
from .topology import Topology, _segment

class TraceParseError(ParseError):
    """A trace line that cannot be what it claims (`.line`, `.source`: see ParseError)."""


@dataclass
class Trace:
    """Config accesses recorded from a guest, with where the kernel took over.

    `accesses` is ACCESS_DTYPE (segment 0), reads carrying the recorded value; `lines` the
    log line of each; `kernel_start` the index of the kernel's first access (None if the
    console never printed "Linux version"). From a QEMU log also: `responders`, the functions
    that answered ((bus, dev, fn) -> qemu_log.Responder); `skipped`, the lines left out by
    kind; `ecam`, how ECAM addresses were read (qemu_log.EcamAddressing, None without ECAM
    accesses); `window`, segment 0's ECAM window when the log or the caller says it;
    `notes`, what a reader should know (assumptions, skipped lines worth a word).
    """

    accesses: np.ndarray
    lines: np.ndarray
    kernel_start: int | None
    console: str = ""
    responders: dict = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    ecam: EcamAddressing | None = None
    window: Segment | None = None
    notes: list = field(default_factory=list)

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
        if not isinstance(topology, Topology):
            raise TypeError(f"topology must be a Topology, not {type(topology).__name__}")
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
def parse_qemu_trace(source, segment: Segment | None = None, region: str = MMCFG_REGION, *,
                     ecam_addr: str = "auto", strict: bool = False, progress=None) -> Trace:
    """Read a QEMU trace log (path, .gz path or text) as QEMU writes it (see qemu_log.py):
    config accesses through `region` (the ECAM window) and the conf1 ports, the pci_cfg_*
    responder events, the console; every other line is counted in `Trace.skipped`.

    segment: segment 0's ECAM window if the caller knows it; None takes it from the log (the
    responder events give bus 0's address, the kernel's console the bus range). ecam_addr:
    'auto' detects whether `addr` is guest-physical or an offset in the window (an alias, as
    arm64 virt maps it), 'gpa' or 'offset' say so. strict: refuse any line that is not a
    memory_region_ops_* or pci_cfg_* event, and a last line cut short. progress(done, total):
    bytes read so far, every 65,536 lines. TraceParseError names the line of anything
    malformed or contradictory."""
    window = None if segment is None else _segment(segment)
    if not isinstance(region, str):
        raise TypeError(f"region must be a str, not {type(region).__name__}")
    if ecam_addr not in ECAM_ADDRESSING:
        raise ValueError(f"ecam_addr {ecam_addr!r}: one of {', '.join(ECAM_ADDRESSING)}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, not {type(progress).__name__}")
    name = _source_name(source)
    try:
        if name is not None and Path(name).is_file():
            f, where, total = open_log(name)
        else:
            f, where, total = _open_text(source), None, None
            if isinstance(f, io.StringIO):             # text: read as the bytes a file would hold
                f = io.BytesIO(f.getvalue().encode())
        with f:
            raw = read_log(f, region, strict, progress, total, where)
        console = _console(raw.consoles)
        how, announced = "the given window", console_window(console)
        if announced is not None and window is not None and announced[0] != window:
            raise LogError(0, f"the kernel's console places the ECAM window at {announced[0].base:#x}, buses "
                           f"{announced[0].start_bus:02x}-{announced[0].end_bus:02x} ({announced[1]!r}), but the "
                           f"given window is at {window.base:#x}, buses {window.start_bus:02x}-{window.end_bus:02x}"
                           ": a log of another machine?")
        if window is None and announced is not None:
            window, how = announced[0], f"the kernel's console ({announced[1]!r})"
        addressing = ecam_addressing(raw.rows, ecam_addr, window, how)
        acc = _accesses(raw.rows, decode(raw.rows, addressing), window)
    except LogError as exc:
        raise TraceParseError(exc.line, exc.detail) from None
    notes = _notes(raw, addressing, acc, region)
    if window is None and addressing is not None and addressing.base is not None:
        window = Segment(addressing.base)
        notes.append(f"ECAM window: bus 0 at {addressing.base:#x} ({addressing.how}); its bus range is "
                     "not in the log (no ECAM/MMCONFIG console line): 00-ff assumed, give --ecam-buses")
    # The kernel's first accesses precede its console text (printk is buffered until the
    # early console): it starts after the firmware's last MMCONFIG access before the text.
    start = None
    if raw.linux_at is not None:
        before = np.flatnonzero(raw.rows["mech"][:raw.linux_at] == MMCONFIG)
        start = int(before[-1]) + 1 if len(before) else 0
    return Trace(acc, raw.rows["line"].copy(), start, console, raw.responders, raw.skipped,
                 addressing, window, notes)


def _console(consoles: dict) -> str:
    """The console text: the UART that printed "Linux version", else the longest."""
    texts = [bytes(b).decode("latin-1") for b in consoles.values()]     # a byte a character, as written
    with_linux = [t for t in texts if "Linux version" in t]
    return max(with_linux or texts or [""], key=len)


def _accesses(rows: np.ndarray, off: np.ndarray, window: Segment | None) -> np.ndarray:
    """ACCESS_DTYPE rows from decoded offsets; LogError at the first unaligned access, or
    the first ECAM access on a bus outside a known window."""
    acc = np.zeros(len(rows), dtype=ACCESS_DTYPE)
    acc["bus"], acc["dev"], acc["fn"] = off >> BUS_SHIFT, off >> DEV_SHIFT & 31, off >> FN_SHIFT & 7
    acc["reg"], acc["size"], acc["is_write"] = off & 0xFFF, rows["size"], rows["is_write"]
    acc["mech"], acc["value"] = rows["mech"], rows["value"]
    bad = acc["reg"] % acc["size"] != 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LogError(int(rows["line"][i]), f"ECAM access of {int(acc['size'][i])} bytes at "
                       f"{int(rows['addr'][i]):#x} is not aligned")        # conf1's are checked as read
    if window is not None:
        out = (acc["mech"] == MMCONFIG) & ((acc["bus"] < window.start_bus) | (acc["bus"] > window.end_bus))
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise LogError(int(rows["line"][i]), f"ECAM access to bus {int(acc['bus'][i]):#04x}, outside the "
                           f"window's buses {window.start_bus:02x}-{window.end_bus:02x}")
    return acc


def _notes(raw, addressing, acc, region) -> list[str]:
    """What a reader of the import should be told."""
    notes = []
    if raw.cut_last_line:
        notes.append(f"the log ends inside line {raw.lines} (cut while QEMU wrote it)")
    if addressing is not None and addressing.mode == "offset":
        notes.append(f"'{region}' is reached through an alias: addr is the offset in the ECAM window "
                     f"({addressing.how})")
    if not len(acc):
        seen = sorted(k[len("region '"):-1] for k in raw.skipped if k.startswith("region '"))
        notes.append(f"no config accesses: no '{region}', 'pci-conf-idx' or 'pci-conf-data' accesses in "
                     f"{raw.lines} lines (regions seen: {', '.join(seen[:12]) or 'none'})")
    return notes


#: CSV header names, lower case, by what they hold (the first of each group a file has wins)
CSV_COLUMNS = {
    "op": ("op", "rw", "dir", "direction", "access", "type", "kind"),
    "is_write": ("is_write", "write", "iswrite"),
    "offset": ("offset", "ecam_offset", "off"),
    "gpa": ("gpa", "addr", "address", "phys", "paddr"),
    "bdf": ("bdf", "device_address", "pci"),
    "bus": ("bus",), "dev": ("dev", "device", "slot"), "fn": ("fn", "func", "function"),
    "reg": ("reg", "register", "where", "cfg_offset"),
    "size": ("size", "len", "length", "width", "bytes"),
    "value": ("value", "data", "val", "result"),
}
_OPS = {"r": 0, "read": 0, "ld": 0, "load": 0, "w": 1, "write": 1, "st": 1, "store": 1}


@_naming_source
def parse_csv(source, segment: Segment | None = None) -> Trace:
    """CSV of config accesses (path, .gz path or text), read by column name when a header
    row names them (see CSV_COLUMNS: an op or is_write column; an address as `offset` from
    the window's bus-0 page, as a guest-physical `gpa`, or as `bdf`/`bus,dev,fn` with `reg`;
    `size`; `value`), else as `op,offset,size,value`. Numbers are decimal or 0x-hex; rows
    starting with '#' are comments; other columns are ignored (Trace.notes names them).
    A `gpa` column needs `segment` (the window). TraceParseError names the line and column."""
    window = None if segment is None else _segment(segment)
    rows, lines, columns, notes = [], [], None, []
    with _open_text(source) as f:
        for lineno, row in _csv_rows(f, _source_name(source)):
            if columns is None:
                columns = _csv_header(row, lineno, window, notes)
                if columns is not None:
                    continue
                columns = dict(op=0, offset=1, size=2, value=3, _width=4, _positional=True)
            rows.append(_csv_access(row, lineno, columns, window))
            lines.append(lineno)
    acc = np.array(rows, dtype=ACCESS_DTYPE) if rows else np.empty(0, dtype=ACCESS_DTYPE)
    ecam = EcamAddressing("gpa" if columns and "gpa" in columns else "offset",   # only the form used is kept
                          None if window is None else window.base, window, "the CSV's address column")
    return Trace(acc, np.array(lines, dtype=np.int64), None, ecam=ecam if rows else None, window=window,
                 notes=notes)


def _csv_rows(f, name):
    """(line number, fields) of each non-empty, non-comment CSV row."""
    reader, lineno = csv.reader(_lines(f, name)), 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise TraceParseError(lineno + 1, f"not CSV: {exc}") from None
        lineno = reader.line_num
        if row and not row[0].strip().startswith("#") and any(x.strip() for x in row):
            yield lineno, [x.strip() for x in row]


#: the ways a CSV gives the address, in the order they are preferred when several are there
_ADDRESS_FORMS = (("bdf", "reg"), ("bus", "dev", "fn", "reg"), ("offset",), ("gpa",))
_ALL_NAMES = {name for names in CSV_COLUMNS.values() for name in names}


def _csv_header(row, lineno, window, notes) -> dict | None:
    """Column indices by role if `row` is a header (it names a column past its first field,
    or its first field is neither an op nor a number), else None."""
    names = [x.lower() for x in row]
    if not (any(n in _ALL_NAMES for n in names[1:]) or names[0] not in _OPS and not names[0][:1].isdigit()):
        return None
    columns = {}
    for role, aliases in CSV_COLUMNS.items():
        found = [names.index(a) for a in aliases if a in names]
        if found:
            columns[role] = min(found)
    if "offset" in columns and ("bdf" in columns or "bus" in columns) and "reg" not in columns:
        columns["reg"] = columns.pop("offset")      # beside a bdf, 'offset' is the register
    address = next((form for form in _ADDRESS_FORMS if all(r in columns for r in form)), None)
    for what, roles in (("op or is_write", ("op", "is_write")), ("size", ("size",)), ("value", ("value",))):
        if not any(r in columns for r in roles):
            raise TraceParseError(lineno, _no_column(row, what, roles))
    if address is None:         # name what a partly given form lacks, else every form
        present = [(sum(r in columns for r in form), -i, form) for i, form in enumerate(_ADDRESS_FORMS)]
        partial = max(present)[2] if max(present)[0] else None
        lacking = tuple(r for r in partial if r not in columns) if partial else ("offset", "gpa", "bdf", "reg")
        raise TraceParseError(lineno, _no_column(row, ", ".join(lacking) if partial else "address", lacking))
    if address == ("gpa",) and window is None:
        raise TraceParseError(lineno, "a gpa column needs the ECAM window's base (ecam_base, --ecam-base)")
    used = {"op", "is_write", "size", "value", *address} if "op" not in columns else {"op", "size", "value", *address}
    kept = {role: i for role, i in columns.items() if role in used}
    unused = [row[i] for i in range(len(row)) if i not in kept.values()]
    if unused:
        notes.append(f"CSV columns not used: {', '.join(unused)}")
    kept["_width"] = len(row)
    return kept


def _no_column(row, what, roles) -> str:
    return (f"the header {quote(','.join(row))} has no {what} column (names: "
            f"{', '.join(a for r in roles for a in CSV_COLUMNS[r][:3])})")


def _csv_access(row, lineno, columns, window) -> tuple:
    """One ACCESS_DTYPE row from a CSV row."""
    if len(row) != columns["_width"]:
        names = "op,offset,size,value" if "_positional" in columns else f"{columns['_width']} fields"
        raise TraceParseError(lineno, f"expected {names}; got {len(row)} fields: {quote(','.join(row))}")

    def number(role):
        text = row[columns[role]]
        try:
            return int(text, 0)
        except ValueError:
            raise TraceParseError(lineno, f"{role} {quote(text)} is not a number") from None

    if "op" in columns:
        op = row[columns["op"]].lower()
        if op not in _OPS:
            raise TraceParseError(lineno, f"op {quote(row[columns['op']])} is not r/read/w/write")
        is_write = _OPS[op]
    else:
        flag = row[columns["is_write"]].lower()
        if flag not in ("0", "1", "true", "false"):
            raise TraceParseError(lineno, f"is_write {quote(row[columns['is_write']])} is not 0/1/true/false")
        is_write = int(flag in ("1", "true"))
    bus, dev, fn, reg = _csv_address(row, lineno, columns, window, number)
    size, value = number("size"), number("value")
    if size not in (1, 2, 4, 8) or reg % size:
        raise TraceParseError(lineno, f"size {size} at offset {ecam_offset(bus, dev, fn, reg):#x}: sizes are "
                              "1, 2, 4, 8, aligned")
    if value < 0 or value >> 8 * size:
        raise TraceParseError(lineno, f"value {value:#x} does not fit {size} bytes")
    return (0, bus, dev, fn, reg, size, is_write, MMCONFIG, value)


def _csv_address(row, lineno, columns, window, number) -> tuple[int, int, int, int]:
    try:
        if "bdf" in columns:
            bdf = Bdf.parse(row[columns["bdf"]])
            parts = bdf.bus, bdf.dev, bdf.fn, number("reg")
        elif "bus" in columns:
            parts = number("bus"), number("dev"), number("fn"), number("reg")
        else:
            offset = number("offset") if "offset" in columns else number("gpa") - window.base
            if offset < 0:
                raise PciAddressError(f"offset {offset:#x} is below the window's bus-0 page" if "offset" in columns
                                      else f"gpa {number('gpa'):#x} below the window's base {window.base:#x}")
            if offset >> BUS_SHIFT >= 256:
                raise PciAddressError(f"offset {offset:#x} is past bus 255 of the window")
            parts = offset >> BUS_SHIFT, offset >> DEV_SHIFT & 31, offset >> FN_SHIFT & 7, offset & 0xFFF
        ecam_offset(*parts)                            # each part in range
    except PciAddressError as exc:
        raise TraceParseError(lineno, str(exc)) from None
    if window is not None and not window.has_bus(parts[0]):
        raise TraceParseError(lineno, f"bus {parts[0]:#04x} outside the window's buses "
                              f"{window.start_bus:02x}-{window.end_bus:02x}")
    return parts


def format_csv(accesses: np.ndarray) -> str:
    """MMCONFIG accesses as `op,offset,size,value` CSV (the inverse of parse_csv)."""
    check_accesses(accesses)
    out = ["op,offset,size,value"]
    for a in accesses[accesses["mech"] == MMCONFIG]:
        offset = ecam_offset(int(a["bus"]), int(a["dev"]), int(a["fn"]), int(a["reg"]))
        out.append(f"{'w' if a['is_write'] else 'r'},{offset:#x},{int(a['size'])},{int(a['value']):#x}")
    return "\n".join(out) + "\n"


def read_trace(path, segment: Segment | None = None, **options) -> Trace:
    """A QEMU trace log or a CSV file (told apart by the name: .csv, .csv.gz); options go
    to parse_qemu_trace (ecam_addr, region, strict, progress; a CSV takes none of them but
    strict, which it is by nature). FileNotFoundError if there is no such file;
    TraceParseError (naming the file and line) for what is not a trace."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path, not {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trace file {path}")
    if path.suffix == ".csv" or path.name.endswith(".csv.gz"):
        return parse_csv(path, segment)
    return parse_qemu_trace(path, segment, **options)


@dataclass
class Capture:
    """A recorded boot made ready to replay: the trace, the topology it ran on (given, or
    inferred from the log), the chosen part as a ScanResult (what Vmm.replay and the fleets
    take), and notes a reader should see (what was assumed or guessed)."""

    trace: Trace
    topology: Topology
    scan: ScanResult
    part: str
    inferred: bool = False
    notes: list = field(default_factory=list)


def load_capture(path, topology=None, part: str = "all", *, ecam_base: int | None = None,
                 ecam_buses: int | None = None, ecam_addr: str = "auto", region: str = MMCFG_REGION,
                 strict: bool = False, progress=None) -> Capture:
    """Read a capture (QEMU log or CSV) and the topology it ran on, and check they agree.

    topology: a Topology, a spec for builders.from_spec (a builder name, or a file of `info
    pci` / `lspci -n` text, which carries no ECAM window: the log's is used), or None to
    infer the present functions from the log's pci_cfg_* events (InferenceError, naming the
    --topology option, when it has none). ecam_base / ecam_buses: segment 0's window (bus 0's
    guest-physical address, and how many buses from bus 0), when the log does not say it.
    ValueError when the log and the topology disagree: a window elsewhere (a log of another
    machine), or a function the log shows answering that the topology lacks."""
    from .builders import from_spec
    from .infer import InferenceError, infer_topology
    window = _given_window(ecam_base, ecam_buses)
    from_file, inferred = isinstance(topology, (str, Path)) and Path(topology).is_file(), topology is None
    if isinstance(topology, (str, Path)):
        topology = from_spec(str(topology))
    if topology is not None and not isinstance(topology, Topology):
        raise TypeError(f"topology must be a Topology, a spec or None, not {type(topology).__name__}")
    if window is None and topology is not None and not from_file:
        window = topology.segments[0]
    reader = read_trace if progress is None else functools.partial(read_trace, progress=progress)
    trace = reader(path, window, ecam_addr=ecam_addr, region=region, strict=strict)
    notes = list(trace.notes)
    if topology is None:
        if not trace.responders:
            raise InferenceError("the log has no pci_cfg_* events, so it does not say which functions are "
                                 "present: give the topology (--topology FILE: QEMU `info pci` or `lspci -n`)")
        topology, guessed = infer_topology(trace.responders, _log_window(trace), name=f"log:{Path(str(path)).name}")
        notes += guessed
    elif from_file:
        topology = _on_window(topology, _log_window(trace))
    _check_answering(trace, topology)
    scan = trace.as_scan(topology, part, name=Path(str(path)).name)
    return Capture(trace, topology, scan, part, inferred, notes)


def _given_window(ecam_base, ecam_buses) -> Segment | None:
    if ecam_base is None:
        if ecam_buses is not None:
            raise ValueError("ecam_buses needs ecam_base (--ecam-buses needs --ecam-base)")
        return None
    return Segment(ecam_base, 0, 0, 255 if ecam_buses is None else ecam_buses - 1)


def _log_window(trace: Trace) -> Segment:
    """The window the log was read in (ValueError naming the option when nothing said it)."""
    if trace.window is not None:
        return trace.window
    if trace.ecam is not None:
        raise ValueError("the log addresses ECAM by offset in the window (an alias) and does not say where the "
                         "window is (no ECAM/MMCONFIG console line): give --ecam-base (and --ecam-buses)")
    raise ValueError("the log has no ECAM accesses and no console line that places the ECAM window: give "
                     "--ecam-base (and --ecam-buses)")


def _on_window(topology: Topology, window: Segment) -> Topology:
    """A parsed topology (whose text had no window) placed on the log's segment-0 window."""
    segments = [window if s.segment == 0 else s for s in topology.segments]
    try:
        return replace(topology, segments=segments)
    except ValueError as exc:
        raise ValueError(f"topology {topology.name!r} does not fit the log's ECAM window "
                         f"(buses {window.start_bus:02x}-{window.end_bus:02x}): {exc}") from None


def _check_answering(trace: Trace, topology: Topology) -> None:
    """Every function the log shows answering is in the topology (else the replay would read
    it as a hole, against the log)."""
    missing = [(key, r) for key, r in sorted(trace.responders.items()) if Bdf(0, *key) not in topology]
    if missing:
        shown = ", ".join(f"{Bdf(0, *k)} ({r.name}, {r.events} accesses from line {r.first_line})"
                          for k, r in missing[:4])
        raise ValueError(f"topology {topology.name!r} lacks {len(missing)} function(s) the log shows answering: "
                         f"{shown}{' …' if len(missing) > 4 else ''}")
