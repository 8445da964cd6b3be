"""The QEMU trace importer (qemu_log.py, traces.parse_qemu_trace) on real and synthetic logs:
raw vs filtered logs, ECAM addressing, logs cut anywhere, interleaved noise, refusals."""

import ast
import gzip
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allones.pci.access import ACCESS_DTYPE, CONF1, MMCONFIG
from allones.pci.ecam import Segment
from allones.pci.infer import infer_topology
from allones.pci.traces import TraceParseError, format_csv, parse_csv, parse_qemu_trace

DATA = Path(__file__).resolve().parents[1] / "data"
Q35, ARM = DATA / "q35-ovmf-default", DATA / "arm64-virt-aavmf"
Q35_BASE, ARM_BASE = 0xB000_0000, 0x40_1000_0000

FIELDS = ("bus", "dev", "fn", "reg", "size", "is_write", "mech", "value")


def rows(accesses):
    return [tuple(int(a[f]) for f in FIELDS) for a in accesses]


def topology_txt(path):
    """(bdf, QEMU name) of each function topology.txt lists, and its enumeration lines."""
    names, ids = [], {}
    for line in path.read_text().splitlines():
        m = re.match(r"([0-9a-f]{2}:[0-9a-f]{2}\.[0-7])\s+(\S.*)$", line)
        if m:
            names.append((m[1], m[2].strip()))
        m = re.match(r"pci 0000:(\S+): \[([0-9a-f]{4}):([0-9a-f]{4})\] type ([0-9a-f]{2}) class 0x([0-9a-f]{6})", line)
        if m:
            ids[m[1]] = (int(m[2], 16), int(m[3], 16), int(m[4], 16), int(m[5], 16))
    return names, ids


# -- real logs (each parsed once in this module) -----------------------------------------------

@pytest.fixture(scope="module")
def q35_raw():
    return parse_qemu_trace(Q35 / "qemu-trace-raw.log.gz")


@pytest.fixture(scope="module")
def q35():
    return parse_qemu_trace(Q35 / "qemu-trace.log.gz")


@pytest.fixture(scope="module")
def arm64():
    return parse_qemu_trace(ARM / "qemu-trace.log.gz")


@pytest.fixture(scope="module")
def arm64_text():
    return gzip.decompress((ARM / "qemu-trace.log.gz").read_bytes())


def test_raw_q35_log_reads_as_its_filtered_twin(q35_raw, q35):
    assert q35_raw.accesses.dtype == ACCESS_DTYPE
    assert np.array_equal(q35_raw.accesses, q35.accesses)
    assert len(q35_raw.lines) == len(q35.lines) == len(q35.accesses)
    assert q35_raw.kernel_start == q35.kernel_start is not None
    assert q35_raw.console == q35.console and "Linux version" in q35.console
    assert {k: r.name for k, r in q35_raw.responders.items()} == {k: r.name for k, r in q35.responders.items()}
    assert q35_raw.ecam == q35.ecam and q35_raw.window == q35.window


def test_raw_q35_log_counts_what_it_skipped(q35_raw, q35):
    raw = q35_raw.skipped
    assert raw["device accesses (cpu -1)"] > 0           # MSI writes devices made
    assert raw["region 'usb3 port #1'"] > 0 and raw["region 'acpi-tmr'"] > 0   # names with spaces, too
    assert not any(k.startswith("region '") for k in q35.skipped)
    assert "a last line cut short" not in raw and "lines that are not trace events" not in raw
    # the filtered log drops only lines that are no config access
    assert sum(raw.values()) > sum(q35.skipped.values())


@pytest.mark.parametrize("which", ["q35", "arm64"])
def test_inferred_topology_has_the_functions_that_answered(which, q35, arm64):
    trace, folder = (q35, Q35) if which == "q35" else (arm64, ARM)
    names, ids = topology_txt(folder / "topology.txt")
    topo, _ = infer_topology(trace.responders, trace.window)
    assert [(f"{f.bdf.bus:02x}:{f.bdf.dev:02x}.{f.bdf.fn:x}", f.name) for f in topo] == names
    for f in topo:
        key = f"{f.bdf.bus:02x}:{f.bdf.dev:02x}.{f.bdf.fn:x}"
        assert (f.vendor, f.device, f.header_type, f.class_code) == ids[key]
    assert topo.segments == [trace.window]


def test_q35_ecam_is_guest_physical(q35):
    assert (q35.ecam.mode, q35.ecam.base) == ("gpa", Q35_BASE)
    assert "paired" in q35.ecam.how
    assert q35.window == Segment(Q35_BASE, 0, 0, 255)
    assert set(np.unique(q35.accesses["mech"])) == {CONF1, MMCONFIG}


def test_arm64_ecam_is_an_offset_and_the_window_comes_from_the_console(arm64):
    assert arm64.ecam.mode == "offset" and arm64.ecam.base == ARM_BASE
    assert arm64.window == Segment(ARM_BASE, 0, 0, 255)
    assert "ECAM at [mem 0x4010000000-0x401fffffff] for [bus 00-ff]" in arm64.console
    assert any("alias" in n for n in arm64.notes)
    kernel = arm64.part("kernel")
    assert len(kernel) and (kernel["mech"] == MMCONFIG).all()
    assert (arm64.accesses["mech"] == MMCONFIG).all()
    assert arm64.console.count("Linux version") == 1


# -- a log cut anywhere --------------------------------------------------------------------------

def _interesting_offsets(text: bytes):
    """Byte offsets near lines where a cut matters: the first ECAM access and responder
    events, the kernel's ECAM console line, a pci_cfg_write."""
    out = []
    for needle in (b"pci_cfg_read gpex-root", b"name 'pcie-mmcfg-mmio'", b"pci_cfg_write", b"value 0x45 size 1"):
        i = text.find(needle)
        if i >= 0:
            start = text.rfind(b"\n", 0, i) + 1
            end = text.find(b"\n", i)
            out += [start, start + 7, start + 30, i, i + 5, end - 1, end, end + 1]
    return sorted(set(out))


@pytest.fixture(scope="module")
def cut_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cut")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                HealthCheck.too_slow])
@given(data=st.data())
def test_a_log_cut_anywhere_reads_as_a_prefix_or_is_refused_at_a_line(data, arm64, arm64_text, cut_dir):
    text = arm64_text
    cut = data.draw(st.one_of(st.integers(0, len(text)), st.sampled_from(_interesting_offsets(text)),
                              st.integers(500_000, 800_000)), label="cut")
    prefix = text[:cut]
    path = cut_dir / "prefix.log"
    path.write_bytes(prefix)
    complete = prefix.count(b"\n")                    # whole lines in the prefix
    tail = prefix[prefix.rfind(b"\n") + 1:].decode()  # the cut last line ("" when none)
    try:
        t = parse_qemu_trace(path)
    except TraceParseError as exc:
        # e.g. ECAM accesses and nothing yet that places the window
        assert 1 <= exc.line <= complete + 1 and str(exc).startswith(f"{path}: line {exc.line}: ")
        return
    n = len(t.accesses)
    base = int(np.searchsorted(arm64.lines, complete, side="right"))   # accesses on whole lines
    assert n in (base, base + 1)
    assert np.array_equal(t.accesses, arm64.accesses[:n]) and np.array_equal(t.lines, arm64.lines[:n])
    if n == base + 1:                                 # the cut line was whole but for its newline
        assert arm64.lines[base] == complete + 1 and tail.endswith("'")
    if tail:
        assert f"the log ends inside line {complete + 1} (cut while QEMU wrote it)" in t.notes
        # a tail without "event " is counted as a non-trace line, and a pci_cfg_* tail may parse
        # whole (see the cut-line tests below)
        parses = tail.endswith("'") or re.search(r"pci_cfg_(read|write) .* @0x[0-9a-f]+ (->|<-) 0x[0-9a-f]+$", tail)
        if n == base and not parses and " " in tail:
            assert t.skipped["a last line cut short"] == 1
    else:
        assert "a last line cut short" not in t.skipped
    assert set(t.responders) <= set(arm64.responders)


@pytest.mark.parametrize("line", [10, 4652, 81095])
def test_strict_refuses_a_log_cut_inside_a_line(line, arm64_text, tmp_path):
    lines = arm64_text.split(b"\n")
    start = sum(len(x) + 1 for x in lines[:line - 1])
    cut = start + len(lines[line - 1]) // 2
    path = tmp_path / "cut.log"
    path.write_bytes(arm64_text[:cut])
    with pytest.raises(TraceParseError) as exc:
        parse_qemu_trace(path, strict=True)
    assert exc.value.line == line
    assert "ends inside a line" in str(exc.value) or "malformed" in str(exc.value)


def test_strict_reads_a_log_cut_between_lines(arm64, arm64_text, tmp_path):
    lines = arm64_text.split(b"\n")
    path = tmp_path / "whole-lines.log"
    path.write_bytes(b"\n".join(lines[:5000]) + b"\n")
    t = parse_qemu_trace(path, strict=True)
    n = int(np.searchsorted(arm64.lines, 5000, side="right"))
    assert n > 0 and np.array_equal(t.accesses, arm64.accesses[:n])
    assert not any("ends inside" in note for note in t.notes)


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_a_truncated_gzip_is_refused_at_a_line(keep, tmp_path):
    raw = (ARM / "qemu-trace.log.gz").read_bytes()
    path = tmp_path / "t.log.gz"
    path.write_bytes(raw[:int(len(raw) * keep)])
    with pytest.raises(TraceParseError, match="not a readable gzip file") as exc:
        parse_qemu_trace(path)
    assert exc.value.line >= 1 and exc.value.source == str(path)


def test_a_gz_name_without_gzip_data_is_refused(tmp_path):
    path = tmp_path / "plain.log.gz"
    path.write_text(ecam_line(0, 4, 0x1, write=False, gpa=True) + "\n")
    with pytest.raises(TraceParseError, match="not a readable gzip file") as exc:
        parse_qemu_trace(path)
    assert exc.value.line == 1


CUT_EVENT_LINES = [
    # a BAR sized (all-ones written), its read-back event cut inside the value: 0xfffff000 -> 0xfff
    ["memory_region_ops_write cpu 0 mr 0x1 addr 0xb0018010 value 0xffffffff size 4 name 'pcie-mmcfg-mmio'",
     "pci_cfg_write virtio-net-pci 00:03.0 @0x10 <- 0xffffffff",
     "pci_cfg_read virtio-net-pci 00:03.0 @0x10 -> 0xfff"],
    # bus numbers written, the event cut inside the value: 0x20100 -> 0x201
    ["memory_region_ops_write cpu 0 mr 0x1 addr 0xb0018018 value 0x20100 size 4 name 'pcie-mmcfg-mmio'",
     "pci_cfg_write virtio-net-pci 00:03.0 @0x18 <- 0x201"],
]


@pytest.mark.parametrize("lines", CUT_EVENT_LINES, ids=["bar-sizing-read", "bus-number-write"])
def test_a_pci_cfg_event_cut_in_its_value_is_not_trusted(lines):
    head = ["pci_cfg_read virtio-net-pci 00:03.0 @0x0 -> 0x10001af4",
            "memory_region_ops_read cpu 0 mr 0x1 addr 0xb0018000 value 0x10001af4 size 4 name 'pcie-mmcfg-mmio'"]
    t = parse_qemu_trace("\n".join(head + lines))      # no newline at the end: the last line is cut
    resp = t.responders[(0, 3, 0)]
    assert t.skipped["a last line cut short"] == 1
    assert 0x10 not in resp.sizing and resp.last.get(0x1A) in (None, 0x02)


@pytest.mark.parametrize("tail", ["1@1.000001:memory_reg", "1@1.000001:memory_region_ops_read", "1@1.0000"])
def test_a_line_cut_in_its_event_name_counts_as_cut_short(tail):
    good = ecam_line(0, 4, 0x1, write=False, gpa=False)
    t = parse_qemu_trace(good + "\n" + tail, ecam_addr="offset")
    assert t.skipped == Counter({"a last line cut short": 1})


# -- synthetic logs: config accesses with noise interleaved ----------------------------------

MMCFG, IDX, DATA_PORT = "pcie-mmcfg-mmio", "pci-conf-idx", "pci-conf-data"
#: present functions: QEMU name and config-space size (00:03.0 is conventional PCI: 256 bytes)
PRESENT = {(0, 0, 0): ("mch", 0x1000), (0, 3, 0): ("virtio-net-pci", 0x100)}
KEYS = [(0, 0, 0), (0, 3, 0), (0, 0, 1), (0, 5, 0), (1, 0, 0), (0, 31, 7)]


def space(key, reg, size):
    """What a present function's register reads (a fixed pattern)."""
    return sum((((reg + i) * 37 + key[1] * 11 + 5) & 0xFF) << 8 * i for i in range(size))


def ops(write, addr, value, size, name, cpu=0):
    return (f"memory_region_ops_{'write' if write else 'read'} cpu {cpu} mr 0x55d0c0ffee00 addr {addr:#x} "
            f"value {value:#x} size {size} name '{name}'")


def ecam_line(offset, size, value, write, gpa, base=Q35_BASE):
    return ops(write, base + offset if gpa else offset, value, size, MMCFG)


def cfg_event(key, reg, value, write):
    name = PRESENT[key][0]
    return (f"pci_cfg_{'write' if write else 'read'} {name} {key[0]:02x}:{key[1]:02x}.{key[2]:x} "
            f"@{reg:#x} {'<-' if write else '->'} {value:#x}")


NOISE = [  # (kind counted in Trace.skipped or None, line, is a trace line (gets a timestamp))
    ("region 'acpi-tmr'", ops(False, 0x608, 0x2B4C1, 4, "acpi-tmr"), True),
    ("region 'usb3 port #1'", ops(True, 0xFEBF0480, 0x0, 4, "usb3 port #1"), True),
    ("region 'hpet'", ops(False, 0xFED000F0, 0x1234, 8, "hpet"), True),
    ("device accesses (cpu -1)", ops(True, 0xFEE00000, 0x4021, 4, "apic-msi", cpu=-1), True),
    ("other trace events (memory_region_subpage_read)",
     "memory_region_subpage_read cpu 0 mr 0x55d0 offset 0x10 value 0x0 size 4", True),
    ("other trace events (pci_update_mappings_add)", "pci_update_mappings_add d=0x55d0 00:03.0 1,0xc0000000+0x1000",
     True),
    ("lines that are not trace events",
     "qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.80000001H:ECX.svm [bit 2]", False),
    ("lines that are not trace events", "VNC server running on 127.0.0.1:5900", False),
    ("conf1 address-port reads and narrow writes", ops(False, 0xCF8, 0x80000000, 4, IDX), True),
    ("conf1 address-port reads and narrow writes", ops(True, 0xCFB, 0x1, 1, IDX), True),
    (None, "", False),
    ("console", "A", True),
    ("console", "z", True),
    ("disabled", None, True),          # a data-port access with the latch's enable bit clear
]
INNER = [n for n in NOISE if n[0] not in ("disabled",) and not (n[0] or "").startswith("conf1")]
STRICT_KINDS = ("lines that are not trace events",)


@st.composite
def access(draw):
    mech = draw(st.sampled_from([MMCONFIG, CONF1]))
    key = draw(st.sampled_from(KEYS))
    size = draw(st.sampled_from([1, 2, 4]))
    reg = draw(st.integers(0, 0xFFF if mech == MMCONFIG else 0xFF)) & ~(size - 1)
    write = draw(st.booleans())
    value = draw(st.integers(0, (1 << 8 * size) - 1))
    hole64 = draw(st.booleans())
    inner = draw(st.lists(st.sampled_from(INNER), max_size=2))
    return mech, key, reg, size, write, value, hole64, inner


class Log:
    """Emits QEMU's lines for config accesses and noise, and what the importer should make of them."""

    def __init__(self, gpa: bool, stamps: bool):
        self.gpa, self.stamps = gpa, stamps
        self.lines, self.expected, self.access_lines = [], [], []
        self.skipped, self.console, self.latch, self.first_strict = Counter(), [], None, None
        self.usec = 0

    def emit(self, text, trace=True):
        if trace and self.stamps:
            self.usec += 137
            text = f"4242@1795630425.{self.usec:06d}:" + text
        self.lines.append(text)
        return len(self.lines)

    def noise(self, item):
        kind, text, trace = item
        if kind == "console":
            self.emit(ops(True, 0x3F8, ord(text), 1, "serial"))
            self.console.append(text)
        elif kind == "disabled":
            self.emit(ops(True, 0xCF8, 0x0000F800, 4, IDX))
            self.latch = 0x0000F800
            self.emit(ops(False, 0xCFC, 0xFFFFFFFF, 4, DATA_PORT))
            self.skipped["conf1 data accesses with the enable bit clear (no config cycle)"] += 1
        else:
            line = self.emit(text, trace)
            if kind is not None:
                self.skipped[kind] += 1
            is_strict = kind in STRICT_KINDS or (kind or "").startswith("other trace events")
            if is_strict and self.first_strict is None:
                self.first_strict = line

    def access(self, mech, key, reg, size, write, value, hole64=False, inner=()):
        bus, dev, fn = key
        answered = key in PRESENT and reg < PRESENT[key][1]
        if mech == CONF1:
            latch = 0x8000_0000 | bus << 16 | dev << 11 | fn << 8 | (reg & 0xFC)
            if latch != self.latch:
                self.emit(ops(True, 0xCF8, latch, 4, IDX))
                self.latch = latch
            addr, region = 0xCFC + (reg & 3), DATA_PORT
        else:
            offset = bus << 20 | dev << 15 | fn << 12 | reg
            addr, region = (Q35_BASE + offset if self.gpa else offset), MMCFG
        if write:
            at = self.emit(ops(True, addr, value, size, region))
            if answered:
                self.emit(cfg_event(key, reg, value, True))
        else:
            value = space(key, reg, size) if answered else (1 << 8 * size) - 1
            printed = value if answered else ((1 << 64) - 1 if hole64 and mech == MMCONFIG else 0xFFFFFFFF)
            if answered:
                self.emit(cfg_event(key, reg, value, False))
            for item in inner:
                self.noise(item)
            at = self.emit(ops(False, addr, printed, size, region))
        self.access_lines.append(at)
        self.expected.append((bus, dev, fn, reg, size, int(write), mech, value))

    def text(self):
        return "\n".join(self.lines) + "\n"


def build(items, gpa, stamps):
    log = Log(gpa, stamps)
    log.access(MMCONFIG, (0, 0, 0), 0, 4, False, 0)      # a responder pair: decides the addressing
    for item in items:
        if isinstance(item, tuple) and len(item) == 8:
            log.access(*item)
        else:
            log.noise(item)
    return log


items = st.lists(st.one_of(access(), st.sampled_from(NOISE)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(items=items, stamps=st.booleans(), gpa=st.booleans())
def test_interleaved_noise_leaves_exactly_the_config_accesses(items, stamps, gpa):
    log = build(items, gpa, stamps)
    t = parse_qemu_trace(log.text())
    assert rows(t.accesses) == log.expected
    assert t.lines.tolist() == log.access_lines
    assert t.skipped == log.skipped
    assert t.console == "".join(log.console)
    assert t.ecam.mode == ("gpa" if gpa else "offset")
    if gpa:
        assert t.ecam.base == Q35_BASE and t.window == Segment(Q35_BASE)
    else:
        assert t.window is None and any("alias" in n for n in t.notes)
    # what answered: the present functions, with the bytes they were first read
    assert set(t.responders) <= set(PRESENT)
    for key, resp in t.responders.items():
        assert resp.name == PRESENT[key][0]
        assert all(byte == space(key, reg, 1) for reg, byte in resp.first.items())
    answered = Counter(a[:3] for a in log.expected if a[:3] in PRESENT and a[3] < PRESENT[a[:3]][1])
    assert {k: r.events for k, r in t.responders.items()} == dict(answered)
    assert (t.accesses["segment"] == 0).all()


@settings(max_examples=40, deadline=None)
@given(items=items, stamps=st.booleans())
def test_strict_refuses_the_first_unknown_line(items, stamps):
    log = build(items, True, stamps)
    if log.first_strict is None:
        t = parse_qemu_trace(log.text(), strict=True)
        assert rows(t.accesses) == log.expected
        return
    with pytest.raises(TraceParseError, match="strict") as exc:
        parse_qemu_trace(log.text(), strict=True)
    assert exc.value.line == log.first_strict


def test_conf1_latch_is_reused_until_rewritten():
    log = Log(True, False)
    log.access(MMCONFIG, (0, 0, 0), 0, 4, False, 0)
    log.access(CONF1, (0, 0, 0), 0x08, 1, False, 0)
    log.access(CONF1, (0, 0, 0), 0x09, 1, False, 0)       # same dword: no latch write between
    log.access(CONF1, (0, 0, 0), 0x0A, 2, False, 0)
    log.access(CONF1, (0, 3, 0), 0x04, 2, True, 0x7)
    assert sum(IDX in line for line in log.lines) == 2
    t = parse_qemu_trace(log.text())
    assert rows(t.accesses) == log.expected
    assert not t.skipped


def test_conf1_latch_low_bits_as_qemu_decodes_them():
    text = "\n".join([ops(True, 0xCF8, 0x8000_0001, 4, IDX),
                      "pci_cfg_read mch 00:00.0 @0x3 -> 0x29",
                      ops(False, 0xCFE, 0x29, 1, DATA_PORT)]) + "\n"
    t = parse_qemu_trace(text)
    assert rows(t.accesses) == [(0, 0, 0, 0x03, 1, 0, CONF1, 0x29)]
    assert "pci_cfg events that match no access" not in t.skipped


# -- the window: from responders, the console, or the caller --------------------------------------

def console_lines(text, region="serial", base=0x3F8):
    return [ops(True, base, ord(c), 1 if region == "serial" else 4, region) for c in text]


def test_mmconfig_console_line_gives_the_window_without_responders():
    text = console_lines("PCI: MMCONFIG for domain 0000 [bus 00-3f] at [mem 0xe0000000-0xe3ffffff] "
                         "(base 0xe0000000)\n")
    text.append(ops(False, 0xE0008000, 0xFFFFFFFF, 4, MMCFG))
    t = parse_qemu_trace("\n".join(text) + "\n")
    assert t.window == Segment(0xE000_0000, 0, 0, 0x3F)
    assert t.ecam.mode == "gpa" and t.ecam.base == 0xE000_0000 and "console" in t.ecam.how
    assert rows(t.accesses) == [(0, 1, 0, 0, 4, 0, MMCONFIG, 0xFFFFFFFF)]


def test_pl011_ecam_console_line_gives_an_offset_window():
    text = console_lines("[    0.5] ECAM at [mem 0x4010000000-0x401fffffff] for [bus 00-ff]\n", "pl011", 0x9000000)
    text += [ops(True, 0x9000004, 0x0, 4, "pl011"),           # not UARTDR: no console byte
             ops(False, 0x18000, 0xFFFFFFFF, 4, MMCFG)]       # 00:03.0 reg 0, as an offset
    t = parse_qemu_trace("\n".join(text) + "\n")
    assert t.console == "[    0.5] ECAM at [mem 0x4010000000-0x401fffffff] for [bus 00-ff]\n"
    assert (t.ecam.mode, t.ecam.base) == ("offset", ARM_BASE) and t.window == Segment(ARM_BASE)
    assert rows(t.accesses) == [(0, 3, 0, 0, 4, 0, MMCONFIG, 0xFFFFFFFF)]


def test_ecam_console_line_for_buses_from_one_places_bus_zero_below():
    text = console_lines("ECAM at [mem 0x40100000-0x4fffffff] for [bus 01-ff]\n")
    text.append(ops(False, 0x40100000, 0xFFFFFFFF, 4, MMCFG))   # bus 1, dev 0
    t = parse_qemu_trace("\n".join(text) + "\n")
    assert t.window == Segment(0x4000_0000, 0, 1, 0xFF)
    assert rows(t.accesses) == [(1, 0, 0, 0, 4, 0, MMCONFIG, 0xFFFFFFFF)]


def test_divisor_latch_bytes_and_other_uart_ports_are_not_console_text():
    text = [ops(True, 0x3FB, 0x80, 1, "serial"), ops(True, 0x3F8, 0x01, 1, "serial"),   # DLAB set: divisor
            ops(True, 0x3FB, 0x03, 1, "serial"), ops(True, 0x3F9, 0x41, 1, "serial"),   # IER, not THR
            ops(False, 0x3F8, 0x42, 1, "serial")] + console_lines("Linux version 6.1")
    text += [ops(False, 0xB0000000, 0xFFFFFFFF, 4, MMCFG)]
    t = parse_qemu_trace("\n".join(text) + "\n", Segment(Q35_BASE))
    assert t.console == "Linux version 6.1"
    assert t.kernel_start == 0 and len(t.part("kernel")) == 1


def test_a_given_window_that_the_console_contradicts_is_refused():
    text = console_lines("ECAM at [mem 0x4010000000-0x401fffffff] for [bus 00-ff]\n", "pl011", 0x9000000)
    text.append(ops(False, 0x0, 0xFFFFFFFF, 4, MMCFG))
    with pytest.raises(TraceParseError, match="a log of another machine"):
        parse_qemu_trace("\n".join(text) + "\n", Segment(Q35_BASE))


def test_without_responders_or_console_the_window_must_be_given():
    text = ops(False, 0xB0008000, 0xFFFFFFFF, 4, MMCFG) + "\n"
    with pytest.raises(TraceParseError, match="--ecam-base") as exc:
        parse_qemu_trace(text)
    assert exc.value.line == 1
    with pytest.raises(TraceParseError, match="ecam_base"):
        parse_qemu_trace(text, ecam_addr="gpa")
    t = parse_qemu_trace(text, Segment(Q35_BASE))
    assert t.ecam.mode == "gpa" and rows(t.accesses) == [(0, 1, 0, 0, 4, 0, MMCONFIG, 0xFFFFFFFF)]
    t = parse_qemu_trace(ops(False, 0x8000, 0xFFFFFFFF, 4, MMCFG) + "\n", Segment(Q35_BASE))
    assert t.ecam.mode == "offset" and rows(t.accesses) == [(0, 1, 0, 0, 4, 0, MMCONFIG, 0xFFFFFFFF)]


def test_asked_addressing_that_the_responders_contradict_is_refused():
    log = Log(True, False)
    log.access(MMCONFIG, (0, 0, 0), 0, 4, False, 0)
    with pytest.raises(TraceParseError, match="'offset' was asked for") as exc:
        parse_qemu_trace(log.text(), ecam_addr="offset")
    assert exc.value.line == 2


# -- refusals, with the line ----------------------------------------------------------------------

GOOD = ecam_line(0, 4, 0x29C08086, False, True)
PAIR = ["pci_cfg_read mch 00:00.0 @0x0 -> 0x29c08086", GOOD]


@pytest.mark.parametrize("bad, why", [
    (GOOD.replace("value 0x29c08086", "value 0xzz"), "malformed memory_region_ops line: \"memory_region_ops_read"),
    (GOOD.replace(" size 4", ""), "malformed memory_region_ops line"),
    (ecam_line(0, 3, 0, False, True), "access size 3"),
    (ops(False, 0xB0000001, 0xFFFF, 2, MMCFG), "ECAM access of 2 bytes at 0xb0000001 is not aligned"),
    (ops(False, 0xD00, 0xFFFFFFFF, 4, DATA_PORT), "pci-conf-data access at port 0xd00"),
    (ops(False, 0xB0000000, 1 << 64, 4, MMCFG), "value 0x10000000000000000 does not fit 64 bits"),
    ("pci_cfg_read mch 00:20.0 @0x0 -> 0x1", "malformed pci_cfg line"),       # slot 0x20
    ("pci_cfg_write mch 00:00.0 @0x0 -> 0x1", "malformed pci_cfg line"),      # a write with a read's arrow
])
def test_a_bad_line_is_refused_with_its_number(bad, why):
    text = "\n".join(PAIR + ["", bad, GOOD]) + "\n"
    with pytest.raises(TraceParseError, match=re.escape(why)) as exc:
        parse_qemu_trace(text)
    assert exc.value.line == 4 and str(exc.value).startswith("line 4: ")


def test_conf1_data_port_unaligned_to_the_latch_is_refused():
    text = "\n".join([ops(True, 0xCF8, 0x8000_0000, 4, IDX), ops(False, 0xCFD, 0xFFFF, 2, DATA_PORT)]) + "\n"
    with pytest.raises(TraceParseError, match="conf1 access of 2 bytes at port 0xcfd is not aligned") as exc:
        parse_qemu_trace(text)
    assert exc.value.line == 2


def test_a_long_malformed_line_is_quoted_cut_visibly():
    bad = GOOD.replace(" name '", " " + "x" * 300 + " name '")
    with pytest.raises(TraceParseError) as exc:
        parse_qemu_trace("\n".join(PAIR + [bad]) + "\n")
    message = str(exc.value)
    assert exc.value.line == 3 and message.endswith("…") and bad not in message
    quoted = message[message.index(": ", len("line 3: ")) + 2:-1]       # the repr() before the "…"
    assert 60 <= len(quoted) <= 170 and bad.startswith(ast.literal_eval(quoted))


def test_responder_pairs_that_disagree_on_bus_zero_are_refused():
    text = "\n".join(PAIR + ["pci_cfg_read virtio-net-pci 00:03.0 @0x0 -> 0x10001af4",
                             ops(False, 0xC0018000, 0x10001AF4, 4, MMCFG)]) + "\n"
    with pytest.raises(TraceParseError, match="put bus 0 at 0xc0000000, but line 2's at 0xb0000000") as exc:
        parse_qemu_trace(text)
    assert exc.value.line == 4


def test_responders_that_contradict_the_given_window_are_refused():
    with pytest.raises(TraceParseError, match="a log of another machine") as exc:
        parse_qemu_trace("\n".join(PAIR) + "\n", Segment(0xE000_0000))
    assert exc.value.line == 2


def test_ecam_accesses_outside_the_given_window_are_refused():
    window = Segment(Q35_BASE, 0, 0, 0x0F)                    # 16 buses
    text = "\n".join([ops(False, 0xB0008000, 0xFFFFFFFF, 4, MMCFG),
                      ops(False, 0xB2000000, 0xFFFFFFFF, 4, MMCFG)]) + "\n"
    with pytest.raises(TraceParseError, match="outside segment 0's ECAM window.*another machine") as exc:
        parse_qemu_trace(text, window)
    assert exc.value.line == 2
    # offsets (an alias, decided by the responders) past the window's buses
    log = Log(False, False)
    log.access(MMCONFIG, (0, 0, 0), 0, 4, False, 0)
    log.access(MMCONFIG, (0x20, 0, 0), 0, 4, False, 0)
    with pytest.raises(TraceParseError, match="bus 0x20, outside the window's buses 00-0f") as exc:
        parse_qemu_trace(log.text(), Segment(ARM_BASE, 0, 0, 0x0F))
    assert exc.value.line == 3


def test_a_log_with_no_config_accesses_says_so():
    text = "\n".join([ops(False, 0x608, 0x1, 4, "acpi-tmr"), ops(False, 0xFED00000, 0x1, 4, "hpet"),
                      ops(True, 0xFEE00000, 0x1, 4, "apic-msi", cpu=-1)]) + "\n"
    t = parse_qemu_trace(text)
    assert len(t.accesses) == 0 and t.ecam is None and t.window is None and t.kernel_start is None
    assert any("no config accesses" in n and "acpi-tmr, hpet" in n and "3 lines" in n for n in t.notes)
    assert t.skipped == Counter({"region 'acpi-tmr'": 1, "region 'hpet'": 1, "device accesses (cpu -1)": 1})


def test_binary_garbage_is_refused_at_its_line(tmp_path):
    path = tmp_path / "garbage.log"
    path.write_bytes(("\n".join(PAIR) + "\n").encode() + b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01 junk\n")
    with pytest.raises(TraceParseError, match="not UTF-8") as exc:
        parse_qemu_trace(path)
    assert exc.value.line == 3 and exc.value.source == str(path)


@pytest.mark.parametrize("kind, line", [
    ("line", "qemu-system-x86_64: warning: TCG doesn't support requested feature"),
    ("event", "memory_region_subpage_read cpu 0 mr 0x55d0 offset 0x10 value 0x0 size 4"),
    ("event", "4242@1.000001:kvm_run_exit cpu_index 0, reason 2"),
    ("cut", "4242@1.000001:memory_region_ops_read cpu 0 mr 0x55d0 addr 0xb0008000 val"),
])
def test_strict_refuses_each_unknown_kind(kind, line):
    text = "\n".join(PAIR + [line]) + ("" if kind == "cut" else "\n" + GOOD + "\n")
    lenient = parse_qemu_trace(text)
    assert len(lenient.accesses) == (1 if kind == "cut" else 2)
    with pytest.raises(TraceParseError) as exc:
        parse_qemu_trace(text, strict=True)
    assert exc.value.line == 3
    assert {"line": "not trace event", "event": "other trace event", "cut": "malformed"}[kind] in str(exc.value)
    # other regions and device accesses are no unknown lines: strict reads them
    ok = "\n".join(PAIR + [ops(False, 0x608, 0x1, 4, "acpi-tmr"), ops(True, 0xFEE00000, 0, 4, "apic-msi", cpu=-1)])
    assert parse_qemu_trace(ok + "\n", strict=True).skipped == Counter({"region 'acpi-tmr'": 1,
                                                                         "device accesses (cpu -1)": 1})


def test_crlf_and_blank_lines_are_read():
    text = "\r\n".join(["", *PAIR, "   ", GOOD]) + "\r\n"
    t = parse_qemu_trace(text, strict=True)
    assert rows(t.accesses) == [(0, 0, 0, 0, 4, 0, MMCONFIG, 0x29C08086)] * 2 and not t.skipped


# -- CSV, by column name ------------------------------------------------------------------------

CSV_ROWS = [  # (is_write, bus, dev, fn, reg, size, value)
    (0, 0, 0, 0, 0x00, 4, 0x29C08086),
    (0, 0, 2, 0, 0x00, 4, 0xFFFFFFFF),
    (1, 0, 0, 0, 0x04, 2, 0x0000),
    (1, 0, 0x1F, 0, 0x40, 4, 0x601),
    (0, 1, 0, 0, 0x100, 4, 0xFFFFFFFF),
    (0, 1, 0, 7, 0xFF, 1, 0xFF),
]
EXPECTED_CSV = [(b, d, f, r, s, w, MMCONFIG, v) for w, b, d, f, r, s, v in CSV_ROWS]


def csv_field(column, row):
    w, b, d, f, r, s, v = row
    offset = b << 20 | d << 15 | f << 12 | r
    return {"op": "w" if w else "r", "is_write": str(w), "offset": f"{offset:#x}", "gpa": f"{Q35_BASE + offset:#x}",
            "bdf": f"{b:02x}:{d:02x}.{f}", "bus": str(b), "dev": str(d), "fn": str(f), "reg": f"{r:#x}",
            "size": str(s), "value": f"{v:#x}", "comment": "seen", "timestamp": "12.5"}[column]


ADDRESSES = [("offset",), ("bdf", "reg"), ("bus", "dev", "fn", "reg"), ("gpa",)]


@settings(max_examples=40, deadline=None)
@given(address=st.sampled_from(ADDRESSES), op=st.sampled_from(["op", "is_write"]),
       extra=st.lists(st.sampled_from(["comment", "timestamp"]), unique=True), data=st.data())
def test_csv_columns_in_any_order(address, op, extra, data):
    columns = data.draw(st.permutations([op, *address, "size", "value", *extra]), label="columns")
    text = ",".join(columns) + "\n" + "".join(",".join(csv_field(c, row) for c in columns) + "\n" for row in CSV_ROWS)
    t = parse_csv(text, Segment(Q35_BASE) if "gpa" in address else None)
    assert rows(t.accesses) == EXPECTED_CSV
    assert t.lines.tolist() == list(range(2, 2 + len(CSV_ROWS)))
    assert t.ecam.mode == ("gpa" if "gpa" in address else "offset")
    if extra:
        assert t.notes == [f"CSV columns not used: {', '.join(c for c in columns if c in extra)}"]
    else:
        assert t.notes == []


def test_csv_gpa_needs_the_window():
    text = "op,gpa,size,value\nr,0xb0008000,4,0xffffffff\n"
    with pytest.raises(TraceParseError, match="ecam_base") as exc:
        parse_csv(text)
    assert exc.value.line == 1
    with pytest.raises(TraceParseError, match="gpa 0xa0000000 below the window's base 0xb0000000") as exc:
        parse_csv("op,gpa,size,value\nr,0xb0008000,4,0x1\nr,0xa0000000,4,0x1\n", Segment(Q35_BASE))
    assert exc.value.line == 3
    with pytest.raises(TraceParseError, match="bus 0x10 outside the window's buses 00-0f"):
        parse_csv("op,gpa,size,value\nr,0xb1000000,4,0x1\n", Segment(Q35_BASE, 0, 0, 15))


@pytest.mark.parametrize("header, missing", [
    ("op,offset,value", "size"),
    ("op,offset,size", "value"),
    ("offset,size,value", "op or is_write"),
    ("op,size,value", "address"),
    ("op,bdf,size,value", "reg"),
    ("op,bus,dev,reg,size,value", "fn"),
])
def test_a_csv_header_missing_a_column_is_refused_naming_it(header, missing):
    with pytest.raises(TraceParseError, match=re.escape(f"has no {missing} column")) as exc:
        parse_csv(header + "\n" + ",".join(["r", "0", "4", "0"][:header.count(",") + 1]) + "\n")
    assert exc.value.line == 1


def test_headerless_csv_is_op_offset_size_value():
    t = parse_csv("# a comment\nr,0x8000,4,0xffffffff\n\nW,0x4,2,7\nread,0x100000,1,0xff\n")
    assert rows(t.accesses) == [(0, 1, 0, 0, 4, 0, MMCONFIG, 0xFFFFFFFF), (0, 0, 0, 4, 2, 1, MMCONFIG, 7),
                                (1, 0, 0, 0, 1, 0, MMCONFIG, 0xFF)]
    assert t.lines.tolist() == [2, 4, 5] and t.notes == [] and t.ecam.mode == "offset"


def test_csv_is_write_takes_0_1_true_false():
    t = parse_csv("is_write,offset,size,value\n0,0,4,1\n1,4,2,0\ntrue,8,1,3\nFALSE,0xc,1,0\n")
    assert t.accesses["is_write"].tolist() == [0, 1, 1, 0]
    with pytest.raises(TraceParseError, match="is_write 'yes' is not 0/1/true/false") as exc:
        parse_csv("is_write,offset,size,value\n0,0,4,1\nyes,4,2,0\n")
    assert exc.value.line == 3


def test_a_csv_file_and_gzip_name_the_file(tmp_path):
    path = tmp_path / "acc.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("op,offset,size,value\nr,0,4,0x1\nr,0,3,0\n")
    with pytest.raises(TraceParseError, match="sizes are 1, 2, 4, 8") as exc:
        parse_csv(path)
    assert exc.value.line == 3 and exc.value.source == str(path)


access_rows = st.lists(st.tuples(st.integers(0, 255), st.integers(0, 31), st.integers(0, 7),
                                 st.sampled_from([1, 2, 4, 8]), st.integers(0, 0xFFF), st.booleans(),
                                 st.integers(0, (1 << 64) - 1)), max_size=30)


@settings(max_examples=50, deadline=None)
@given(access_rows)
def test_format_csv_round_trips(items):
    acc = np.zeros(len(items), dtype=ACCESS_DTYPE)
    for i, (b, d, f, s, r, w, v) in enumerate(items):
        acc[i] = (0, b, d, f, r & ~(s - 1), s, int(w), MMCONFIG, v & ((1 << 8 * s) - 1))
    text = format_csv(acc)
    assert np.array_equal(parse_csv(text).accesses, acc)
    assert text.splitlines()[0] == "op,offset,size,value" and len(text.splitlines()) == len(items) + 1


def test_csv_header_starting_with_the_write_column():
    t = parse_csv("write,offset,size,value\n0,0x0,4,0x1\n1,0x4,2,0x0\n")
    assert rows(t.accesses) == [(0, 0, 0, 0, 4, 0, MMCONFIG, 1), (0, 0, 0, 4, 2, 1, MMCONFIG, 0)]


@pytest.mark.parametrize("header, address", [("op,bdf,offset,size,value", "01:02.3,0x40"),
                                             ("op,bus,dev,fn,offset,size,value", "1,2,3,0x40")])
def test_csv_offset_beside_a_bdf_is_the_register(header, address):
    t = parse_csv(f"{header}\nr,{address},4,0x1\n")
    assert rows(t.accesses) == [(1, 2, 3, 0x40, 4, 0, MMCONFIG, 1)]


@pytest.mark.parametrize("header, row, unused, mode", [
    ("op,bdf,reg,size,value,offset", "r,01:02.3,0x40,4,0x1,0x7", "offset", "offset"),
    ("op,size,value,gpa,offset", "r,4,0x1,0xb0008000,0x8000", "gpa", "offset"),
])
def test_csv_unused_address_columns_are_named(header, row, unused, mode):
    t = parse_csv(f"{header}\n{row}\n")
    assert t.notes == [f"CSV columns not used: {unused}"] and t.ecam.mode == mode
