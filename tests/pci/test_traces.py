"""Trace import: QEMU memory_region_ops logs and CSV, the firmware/kernel split, replay."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from allones import VM, Host
from allones.pci.access import ACCESS_DTYPE, CONF1, MMCONFIG, ScanResult
from allones.pci.ecam import Segment
from allones.pci.parsers import read_topology
from allones.pci.traces import TraceParseError, format_csv, parse_csv, parse_qemu_trace, read_trace
from allones.vmm import Vmm

DATA = Path(__file__).resolve().parents[1] / "data"
SMALL_TRACE, SMALL_CSV = DATA / "small-trace.log", DATA / "small.csv"
REAL = DATA / "q35-ovmf-default"

# What small-trace.log holds, access by access: (log line, bus, dev, fn, reg, size, is_write, mech, value)
SMALL_EXPECTED = [
    (4, 0, 0x00, 0, 0x02, 2, 0, CONF1, 0x29C0),        # latch 0x80000000, data port 0xcfe
    (8, 0, 0x1F, 0, 0x40, 4, 1, CONF1, 0x601),         # a write through 0xcfc
    (11, 0, 0x1F, 0, 0x40, 4, 0, MMCONFIG, 0x601),
    (12, 0, 0x02, 0, 0x00, 4, 0, MMCONFIG, 0xFFFFFFFF),  # hole, printed as 64-bit all-ones
    (13, 0, 0x02, 1, 0x00, 2, 0, MMCONFIG, 0xFFFF),
    (14, 0, 0x00, 0, 0x04, 2, 1, MMCONFIG, 0),
    (16, 0, 0x00, 0, 0x00, 4, 0, MMCONFIG, 0x29C08086),  # the firmware's last ECAM access
    (18, 0, 0x18, 0, 0x68, 4, 0, CONF1, 0xFFFFFFFF),   # early_init_amd(): before the console text
    (38, 0, 0x00, 0, 0x0E, 1, 0, CONF1, 0),            # latch 0x8000000e (low bits set) + 0xcfe
    (41, 0, 0x00, 0, 0x0F, 1, 0, CONF1, 0),            # 0xcfb byte write left the latch alone
    (43, 0, 0x02, 0, 0x00, 2, 0, CONF1, 0xFFFF),       # hole, printed unmasked 0xffffffff
    (45, 0, 0x01, 0, 0x10, 4, 1, CONF1, 0xFFFFFFFF),
    (46, 0, 0x01, 0, 0x10, 4, 0, CONF1, 0xFF000008),
    (47, 0, 0x01, 0, 0x11, 1, 0, CONF1, 0),            # latch reused, port 0xcfd
    (48, 0, 0x00, 0, 0x100, 4, 0, MMCONFIG, 0xFFFFFFFF),
]
SMALL_KERNEL_START = 7

LINE = ("1250@1795630434.147055:memory_region_ops_read cpu 0 mr 0x557c32abc7d0 addr {addr} "
        "value 0xffffffffffffffff size {size} name '{name}'")


def rows(accesses):
    return [tuple(int(a[f]) for f in ("bus", "dev", "fn", "reg", "size", "is_write", "mech", "value"))
            for a in accesses]


@pytest.fixture(scope="module")
def small():
    return parse_qemu_trace(SMALL_TRACE)


@pytest.fixture(scope="module")
def real_topology():
    return read_topology(REAL / "info_pci.txt")


@pytest.fixture(scope="module")
def real():
    return parse_qemu_trace(REAL / "qemu-trace.log.gz")


# -- the hand-written trace ---------------------------------------------------------------------

def test_small_trace_accesses(small):
    assert rows(small.accesses) == [r[1:] for r in SMALL_EXPECTED]
    assert small.lines.tolist() == [r[0] for r in SMALL_EXPECTED]
    assert (small.accesses["segment"] == 0).all()


def test_small_trace_kernel_starts_after_the_last_ecam_access_before_linux_version(small):
    """The kernel's 00:18.0 read (line 18) precedes "Linux version" on the console."""
    assert small.kernel_start == SMALL_KERNEL_START
    assert len(small.part("firmware")) == 7 and len(small.part("kernel")) == 8
    assert rows(small.part("kernel")[:1]) == [SMALL_EXPECTED[7][1:]]
    assert len(small.part("all")) == len(SMALL_EXPECTED)


def test_console_skips_divisor_latch_bytes(small):
    """A THR write while LCR.DLAB is set is the divisor, not text."""
    assert small.console == "\x1bLinux version"


def test_same_trace_from_text_and_gzip(small, tmp_path):
    text = SMALL_TRACE.read_text()
    gz = tmp_path / "t.log.gz"
    with gzip.open(gz, "wt") as f:
        f.write(text)
    for source in (text, gz, str(SMALL_TRACE)):
        t = parse_qemu_trace(source)
        assert np.array_equal(t.accesses, small.accesses) and t.kernel_start == small.kernel_start


def test_no_linux_version_means_no_kernel_part():
    text = "".join(l + "\n" for l in SMALL_TRACE.read_text().splitlines()[:20])
    t = parse_qemu_trace(text)
    assert t.kernel_start is None and len(t.accesses) == 8
    with pytest.raises(ValueError, match="never printed 'Linux version'"):
        t.part("kernel")
    with pytest.raises(ValueError, match="unknown trace part"):
        t.part("bios")


def test_other_regions_and_non_matching_lines_are_skipped():
    text = ("1250@1.000001:pci_cfg_read mch 00:00.0 @0x2 -> 0x29c0\n"
            + LINE.format(addr="0xfed00000", size=4, name="hpet") + "\n"
            + LINE.format(addr="0xb0008000", size=4, name="pcie-mmcfg-mmio") + "\n")
    t = parse_qemu_trace(text, Segment(0xB000_0000))
    assert rows(t.accesses) == [(0, 1, 0, 0, 4, 0, MMCONFIG, 0xFFFFFFFF)]
    assert t.lines.tolist() == [3]
    assert t.skipped == {"region 'hpet'": 1, "pci_cfg events that match no access": 1}


@pytest.mark.parametrize("bad, why", [
    (LINE.format(addr="0xb0000000", size=4, name="pcie-mmcfg-mmio").replace(" size 4", ""), "malformed"),
    (LINE.format(addr="0xb0000000", size=3, name="pcie-mmcfg-mmio"), "access size 3"),
    (LINE.format(addr="0xcf9", size=1, name="pci-conf-data"), "port 0xcf9"),
    (LINE.format(addr="0xc0000000", size=4, name="pcie-mmcfg-mmio"), "put bus 0 at 0xc0000000"),  # its responder says so
])
def test_malformed_trace_line_reports_its_number(bad, why):
    good = LINE.format(addr="0xb0000000", size=4, name="pcie-mmcfg-mmio")
    with pytest.raises(TraceParseError, match=why) as exc:
        parse_qemu_trace("\n".join([good, "1250@1.0:pci_cfg_read mch 00:00.0 @0x0 -> 0x1", bad, good]) + "\n",
                         Segment(0xB000_0000), ecam_addr="gpa")
    assert exc.value.line == 3
    assert str(exc.value).startswith("line 3: ")


# -- CSV ----------------------------------------------------------------------------------------

def test_small_csv_accesses():
    t = parse_csv(SMALL_CSV)
    assert rows(t.accesses) == [
        (0, 0, 0, 0x00, 4, 0, MMCONFIG, 0x29C08086),
        (0, 2, 0, 0x00, 4, 0, MMCONFIG, 0xFFFFFFFF),
        (0, 0, 0, 0x04, 2, 1, MMCONFIG, 0),
        (0, 0x1F, 0, 0x40, 4, 1, MMCONFIG, 0x601),
        (0, 0, 0, 0x100, 4, 0, MMCONFIG, 0xFFFFFFFF),
        (1, 0, 0, 0xFF, 1, 0, MMCONFIG, 0xFF),
    ]
    assert t.lines.tolist() == [3, 4, 5, 6, 7, 9]
    assert t.kernel_start is None


def test_read_trace_tells_csv_from_qemu_log(small):
    assert len(read_trace(SMALL_CSV).accesses) == 6
    assert np.array_equal(read_trace(SMALL_TRACE).accesses, small.accesses)


def test_format_csv_round_trips():
    t = parse_csv(SMALL_CSV)
    assert np.array_equal(parse_csv(format_csv(t.accesses)).accesses, t.accesses)
    assert format_csv(t.accesses).splitlines()[:2] == ["op,offset,size,value", "r,0x0,4,0x29c08086"]


def test_format_csv_keeps_only_mmconfig(small):
    back = parse_csv(format_csv(small.accesses)).accesses
    assert np.array_equal(back, small.accesses[small.accesses["mech"] == MMCONFIG])


@pytest.mark.parametrize("bad, why", [
    ("x,0,4,0", "op 'x'"),
    ("r,0,4", "got 3 fields"),
    ("r,zz,4,0", "offset .zz. is not a number"),
    ("r,0x2,4,0", "aligned"),
    ("r,0,3,0", "sizes are 1, 2, 4, 8"),
    ("r,0,2,0x10000", "does not fit 2 bytes"),
    ("r,0x10000000,4,0", "past bus 255 of the window"),
])
def test_malformed_csv_row_reports_its_number(bad, why):
    with pytest.raises(TraceParseError, match=why) as exc:
        parse_csv(f"op,offset,size,value\nr,0,4,0\n{bad}\nr,4,4,0\n")
    assert exc.value.line == 3


def test_one_line_of_text_without_newline_parses():
    assert rows(parse_csv("r,0x10000,4,0xffffffff").accesses) == [(0, 2, 0, 0, 4, 0, MMCONFIG, 0xFFFFFFFF)]


# -- the real log ---------------------------------------------------------------------------------

def test_real_log_counts(real):
    assert len(real.accesses) == 30159
    assert len(real.part("kernel")) == 26166 and len(real.part("firmware")) == 3993
    assert real.kernel_start == 3993
    assert real.lines[real.kernel_start] == 8818     # latch at 8817, its data-port read at 8818
    assert real.console.count("Linux version") == 1


def test_real_log_split_by_mechanism(real, real_topology):
    """Firmware: conf1 in PEI (27 r, 6 w), then ECAM only; kernel: conf1 below 0x100, ECAM
    only for extended registers (66 r, 2 w)."""
    fw = real.as_scan(real_topology, "firmware").counts()
    kernel = real.as_scan(real_topology, "kernel").counts()
    assert (fw["conf1_reads"], fw["conf1_writes"], fw["mmconfig_reads"],
            fw["mmconfig_writes"]) == (27, 6, 3258, 702)
    assert (kernel["conf1_reads"], kernel["conf1_writes"], kernel["mmconfig_reads"],
            kernel["mmconfig_writes"]) == (25777, 321, 66, 2)
    assert fw["mmconfig_hole_reads"] == 210 and kernel["conf1_hole_reads"] == 24772
    k = real.part("kernel")
    assert (k["reg"][k["mech"] == MMCONFIG] >= 0x100).all() and (k["reg"][k["mech"] == CONF1] < 0x100).all()


def test_real_log_holes_read_all_ones(real, real_topology):
    scan = real.as_scan(real_topology)
    holes = scan.accesses[scan.hole_mask() & (scan.accesses["is_write"] == 0)]
    assert len(holes) == 210 + 24772
    assert (holes["value"] == (1 << (8 * holes["size"].astype(np.uint64))) - 1).all()


def test_as_scan_names_the_mechanism(real, real_topology):
    assert real.as_scan(real_topology).mechanism == "recorded"
    assert parse_csv(SMALL_CSV).as_scan(real_topology).mechanism == "mmconfig"
    assert real.as_scan(real_topology, "kernel", name="boot").name == "boot:kernel"


# -- replay -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backing, bit2", [("mmio", "allones"), ("filled", "allones"),
                                           ("allones", "allones"), ("pci-hole", "pci_hole")])
def test_replaying_the_real_log_answers_every_hole_as_recorded(real, real_topology, backing, bit2):
    vmm = Vmm(VM(Host(bit2=bit2)), real_topology, backing)
    run = vmm.replay(real.as_scan(real_topology))
    assert run.hole_mismatches == 0
    assert run.accesses["accesses"] == 30159
    assert run.pio_exits == 2 * (run.accesses["conf1_reads"] + run.accesses["conf1_writes"])


def test_a_recorded_hole_read_that_is_not_all_ones_is_a_mismatch(small, real_topology):
    vmm = Vmm(VM(Host()), real_topology, "allones")
    assert vmm.replay(small.as_scan(real_topology)).hole_mismatches == 0
    acc = small.accesses.copy()
    acc[3]["value"] = 0            # 00:02.0 reg 0: a hole that read 0?
    run = Vmm(VM(Host()), real_topology, "allones").replay(ScanResult("bad", "recorded", real_topology, acc))
    assert run.hole_mismatches == 1


def test_replay_values_follow_the_vm(small, real_topology):
    """Reads of holes come back all-ones through either mechanism; the replay keeps order."""
    run = Vmm(VM(Host()), real_topology, "allones").replay(small.as_scan(real_topology))
    assert len(run.values) == len(SMALL_EXPECTED)
    assert int(run.values[3]) == 0xFFFFFFFF and int(run.values[4]) == 0xFFFF   # ECAM holes
    assert int(run.values[10]) == 0xFFFF and int(run.values[7]) == 0xFFFFFFFF   # conf1 holes
    assert small.accesses.dtype == ACCESS_DTYPE
