"""`lspci -n` and QEMU `info pci` text: round trips, a real QEMU q35 dump, errors with line numbers."""

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allones.pci.builders import multi_segment, q35_default, random_topology, root_port_farm
from allones.pci.ecam import Bdf
from allones.pci.parsers import (TopologyParseError, quote, format_info_pci, format_lspci, parse_info_pci,
                                 parse_lspci, read_topology)
from allones.pci.topology import Bar, BarKind, Function, PortType

TRACE_DIR = Path(__file__).resolve().parents[1] / "data" / "q35-ovmf-default"   # a copy of ../shared/traces

BUILT = {"q35": q35_default, "farm": lambda: root_port_farm(24, 0.5, seed=2),
         "multi": lambda: multi_segment(3, 8), "random-1": lambda: random_topology(1),
         "random-7": lambda: random_topology(7)}


def lspci_view(t):
    """What `lspci -n` text carries, plus the bus numbers and port types rebuilt from it."""
    return [(f.bdf, f.vendor, f.device, f.class_code, f.revision, f.header_type, f.secondary, f.subordinate,
             f.port_type, t.is_multifunction(f.bdf)) for f in t]


def info_pci_view(t, port_types=True):
    """What `info pci` text carries: no prog-if, no revision, no segment."""
    return [(f.bdf, f.vendor, f.device, f.class_code >> 8, f.header_type, f.secondary, f.subordinate,
             f.bars, f.rom_size, f.subsystem, t.is_multifunction(f.bdf), f.port_type if port_types else None)
            for f in t]


# -- round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BUILT)
def test_lspci_round_trip(name):
    t = BUILT[name]()
    back = parse_lspci(format_lspci(t))
    assert lspci_view(back) == lspci_view(t)
    assert [s.segment for s in back.segments] == [s.segment for s in t.segments]


def test_multi_segment_lspci_windows():
    t = multi_segment(3, 8)
    assert parse_lspci(format_lspci(t)).segments == t.segments


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_lspci_round_trip_random(seed):
    t = random_topology(seed)
    assert lspci_view(parse_lspci(format_lspci(t))) == lspci_view(t)


def test_format_lspci_line():
    t = q35_default()
    lines = format_lspci(t).splitlines()
    assert lines[0] == "0000:00:00.0 0600: 8086:29c0"
    assert "0000:00:1f.2 0106: 8086:2922 (prog-if 01)" in lines
    assert "0000:01:00.0 0200: 1af4:1041 (rev 01)" in lines


@pytest.mark.parametrize("name", ["q35", "farm"])
def test_info_pci_round_trip(name):
    t = BUILT[name]()
    back = parse_info_pci(format_info_pci(t))
    assert info_pci_view(back) == info_pci_view(t)
    assert all(f.class_code & 0xFF == 0 and f.revision == 0 for f in back)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_info_pci_round_trip_random(seed):
    """Port types aside (see test_info_pci_downstream_ports_behind_a_switch)."""
    t = random_topology(seed)
    back = parse_info_pci(format_info_pci(t))
    assert info_pci_view(back, port_types=False) == info_pci_view(t, port_types=False)


def test_info_pci_keeps_segment_0_only():
    """`info pci` text has no segment: only segment 0's functions are written."""
    t = multi_segment(3, 8)
    back = parse_info_pci(format_info_pci(t))
    assert [f.bdf for f in back] == [f.bdf for f in t if f.bdf.segment == 0]


def test_info_pci_port_types_of_root_ports_and_what_sits_below_them():
    """Root ports on bus 0; what sits right under a root port: upstream port or endpoint."""
    t = random_topology(1)
    back = parse_info_pci(format_info_pci(t))
    for f in back:
        parent = t.bridge_to(0, f.bdf.bus)
        if parent is None:
            assert f.port_type == (PortType.ROOT_PORT if f.is_bridge else None)
        elif parent.port_type == PortType.ROOT_PORT:
            assert f.port_type == t.get(f.bdf).port_type


def test_info_pci_downstream_ports_behind_a_switch():
    t = random_topology(1)
    assert any(f.port_type == PortType.DOWNSTREAM for f in t)
    back = parse_info_pci(format_info_pci(t))
    assert [f.port_type for f in back] == [f.port_type for f in t]


def test_info_pci_round_trip_with_a_five_digit_decimal_class():
    t = q35_default()
    odd = Function(Bdf(0, 0, 5, 0), vendor=0x1234, device=0x0001, class_code=0xFF0000)
    t = t.with_functions(list(t) + [odd])
    assert "Class 65280: PCI device 1234:0001" in format_info_pci(t)
    assert parse_info_pci(format_info_pci(t)).get(odd.bdf).class_code == 0xFF0000


def test_info_pci_class_number_is_decimal():
    """hmp_info_pci_device(): 'Class %04" PRId64' when the class has no description."""
    text = "  Bus  0, device   6, function 0:\n    Class 0255: PCI device 1af4:1005\n"
    assert parse_info_pci(text).get(Bdf(0, 0, 6, 0)).class_code == 0x00FF00
    odd = Function(Bdf(0, 0, 5, 0), vendor=0x1234, device=1, class_code=0x00FF00)
    assert "Class 0255: PCI device 1234:0001" in format_info_pci(q35_default().with_functions([odd]))


# -- a real QEMU q35 + OVMF `info pci` ----------------------------------------------------------

KERNEL_LINE = re.compile(r"^pci 0000:(\S+): \[([0-9a-f]{4}):([0-9a-f]{4})\] type (\d\d) class 0x([0-9a-f]{6})$")


@pytest.fixture(scope="module")
def real():
    return parse_info_pci((TRACE_DIR / "info_pci.txt").read_text())


@pytest.fixture(scope="module")
def kernel_lines():
    """{bdf: (vendor, device, header type, class)} from the guest kernel's enumeration log."""
    out = {}
    for line in (TRACE_DIR / "topology.txt").read_text().splitlines():
        m = KERNEL_LINE.match(line)
        if m:
            out[Bdf.parse(m[1])] = (int(m[2], 16), int(m[3], 16), int(m[4]), int(m[5], 16))
    return out


def test_real_info_pci_has_the_functions_that_answered(real, kernel_lines):
    listed = [Bdf.parse(line.split()[0]) for line in (TRACE_DIR / "topology.txt").read_text().splitlines()
              if re.match(r"^00:[0-9a-f]{2}\.\d\s", line)]
    assert len(listed) == 11 and len(kernel_lines) == 11
    assert [f.bdf for f in real] == listed == sorted(kernel_lines)


def test_real_info_pci_ids_and_classes_match_the_kernel(real, kernel_lines):
    """info pci has no prog-if: compare base class and subclass; 'Class 0255' is decimal 0x00ff."""
    for f in real:
        vendor, device, header_type, cls = kernel_lines[f.bdf]
        assert (f.vendor, f.device, f.header_type, f.class_code >> 8) == (vendor, device, header_type, cls >> 8)
    assert real.get(Bdf(0, 0, 6, 0)).class_code == 0x00FF00
    assert real.get(Bdf(0, 0, 6, 2)).class_code == 0x00FF00


@pytest.mark.parametrize("bdf, bars, rom", [
    ("00:01.0", ((0, Bar(16 << 20, BarKind.MEM32, True)), (2, Bar(4096))), 64 << 10),
    ("00:03.0", ((0, Bar(32, BarKind.IO)), (1, Bar(4096)), (4, Bar(16 << 10, BarKind.MEM64, True))), 256 << 10),
    ("00:04.0", ((0, Bar(128 << 10)), (1, Bar(128 << 10)), (2, Bar(32, BarKind.IO)), (3, Bar(16 << 10))),
     256 << 10),
    ("00:05.0", ((0, Bar(128, BarKind.IO)), (1, Bar(4096)), (4, Bar(16 << 10, BarKind.MEM64, True))), 0),
    ("00:06.2", ((0, Bar(64, BarKind.IO)), (4, Bar(16 << 10, BarKind.MEM64, True))), 0),
    ("00:07.0", ((0, Bar(16 << 10, BarKind.MEM64)),), 0),
    ("00:1f.2", ((4, Bar(32, BarKind.IO)), (5, Bar(4096))), 0),
    ("00:1f.3", ((4, Bar(64, BarKind.IO)),), 0),
    ("00:00.0", (), 0),
])
def test_real_info_pci_bar_sizes(real, bdf, bars, rom):
    f = real.get(Bdf.parse(bdf))
    assert f.bars == bars and f.rom_size == rom


def test_real_info_pci_subsystems_and_multifunction(real):
    assert real.get(Bdf(0, 0, 4, 0)).subsystem == (0x8086, 0x0000)
    assert real.get(Bdf(0, 0, 6, 2)).subsystem == (0x1AF4, 0x0005)
    assert real.is_multifunction(Bdf(0, 0, 6, 0)) and real.is_multifunction(Bdf(0, 0, 6, 2))
    assert real.is_multifunction(Bdf(0, 0, 0x1F, 0))
    assert not real.is_multifunction(Bdf(0, 0, 7, 0))
    assert all(f.port_type is None and not f.is_bridge for f in real)


# -- lspci: a switch --------------------------------------------------------------------------

SWITCH_LSPCI = """\
00:00.0 0600: 8086:29c0
00:1c.0 0604: 1b36:000c
00:1c.1 0604: 1b36:000c
00:1f.2 0106: 8086:2922 (rev 02) (prog-if 01 [AHCI 1.0])
01:00.0 0604: 104c:8232
02:00.0 0604: 104c:8233
02:01.0 0604: 104c:8233
02:02.0 0604: 104c:8233
03:00.0 0200: 1af4:1041 (rev 01)
05:00.0 0108: 1b36:0010 (rev 02) (prog-if 02 [NVM Express])
06:00.0 0c03: 1b36:000d (prog-if 30 [XHCI])
"""


def test_lspci_switch_gets_depth_first_bus_numbers():
    """Buses numbered as pci_scan_bridge_extend() does: depth first, in devfn order."""
    t = parse_lspci(SWITCH_LSPCI)
    buses = {str(f.bdf)[5:]: (f.secondary, f.subordinate) for f in t if f.is_bridge}
    assert buses == {"00:1c.0": (1, 5), "01:00.0": (2, 5), "02:00.0": (3, 3), "02:01.0": (4, 4),
                     "02:02.0": (5, 5), "00:1c.1": (6, 6)}


def test_lspci_switch_port_types():
    t = parse_lspci(SWITCH_LSPCI)
    types = {str(f.bdf)[5:]: f.port_type for f in t}
    assert types == {"00:00.0": None, "00:1c.0": PortType.ROOT_PORT, "00:1c.1": PortType.ROOT_PORT,
                     "00:1f.2": None, "01:00.0": PortType.UPSTREAM, "02:00.0": PortType.DOWNSTREAM,
                     "02:01.0": PortType.DOWNSTREAM, "02:02.0": PortType.DOWNSTREAM,
                     "03:00.0": PortType.ENDPOINT, "05:00.0": PortType.ENDPOINT, "06:00.0": PortType.ENDPOINT}


def test_lspci_prog_if_and_revision():
    t = parse_lspci(SWITCH_LSPCI)
    assert t.get(Bdf(0, 0, 0x1F, 2)).class_code == 0x010601 and t.get(Bdf(0, 0, 0x1F, 2)).revision == 2
    assert t.get(Bdf(0, 6, 0, 0)).class_code == 0x0C0330
    assert t.get(Bdf(0, 3, 0, 0)).revision == 1


def test_lspci_skips_blank_and_comment_lines():
    t = parse_lspci("# lspci -nD\n\n0000:00:00.0 0600: 8086:29c0\n   \n")
    assert [f.bdf for f in t] == [Bdf(0, 0, 0, 0)]


# -- errors and their line numbers ------------------------------------------------------------

def parse_error(parse, text):
    with pytest.raises(TopologyParseError) as info:
        parse(text)
    return info.value


def test_parse_error_is_a_value_error_with_line_in_message():
    err = parse_error(parse_lspci, "00:00.0 0600: 8086:29c0\nnonsense\n")
    assert isinstance(err, ValueError)
    assert err.line == 2 and str(err).startswith("line 2:")


@pytest.mark.parametrize("text, line", [
    ("00:00.0 0600: 8086:29c0\n\n00:01.0 0300 1234:1111\n00:02.0 0600: 8086:29c0\n", 3),   # no colon
    ("00:00.0 0600: 8086:29c0\n00:01.0 0300: 1234:111\n", 2),                            # short device id
    ("00:00.0 0600: 8086:29c0\n00:01.8 0300: 1234:1111\n", 2),                           # function 8
    ("00:00.0 0600: 8086:29c0\n00:20.0 0300: 1234:1111\n", 2),                           # device 0x20
    ("00:00.0 0600: 8086:29c0\n00:01.0 0300: ffff:1111\n", 2),                           # vendor ffff
    ("00:00.0 0600: 8086:29c0\n00:01.0 0300: 1234:1111\n# c\n00:01.0 0200: 1234:2222\n", 4),   # duplicate
    ("00:00.0 0600: 8086:29c0\n00:1c.0 0604: 1b36:000c\n01:00.0 0200: 1af4:1041\n"
     "03:00.0 0200: 1af4:1041\n", 4),                                                    # bus 3 unreached
], ids=["no-colon", "short-id", "fn-8", "dev-20", "vendor-ffff", "duplicate", "unreached-bus"])
def test_lspci_errors_carry_the_line(text, line):
    assert parse_error(parse_lspci, text).line == line


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_lspci_empty_text_is_line_0(text):
    err = parse_error(parse_lspci, text)
    assert err.line == 0 and not str(err).startswith("line")


INFO_OK = """\
  Bus  0, device   0, function 0:
    Host bridge: PCI device 8086:29c0
      PCI subsystem 1af4:1100
      id ""
  Bus  0, device   2, function 0:
    PCI bridge: PCI device 1b36:000c
      IRQ 10, pin A
      BUS 0.
      secondary bus 1.
      subordinate bus 1.
      IO range [0xf000, 0x0fff]
      memory range [0xc1000000, 0xc11fffff]
      prefetchable memory range [0x800000000, 0x8000fffff]
      BAR0: 32 bit memory at 0xc1089000 [0xc1089fff].
      id "rp0"
  Bus  1, device   0, function 0:
    Ethernet controller: PCI device 1af4:1041
      BAR4: 64 bit prefetchable memory at 0x800000000 [0x800003fff].
      id "net0"
"""


def test_info_pci_bridge_and_behind_it():
    t = parse_info_pci(INFO_OK)
    rp, ep = t.get(Bdf(0, 0, 2, 0)), t.get(Bdf(0, 1, 0, 0))
    assert (rp.header_type, rp.secondary, rp.subordinate, rp.port_type) == (1, 1, 1, PortType.ROOT_PORT)
    assert rp.bars == ((0, Bar(4096)),)
    assert ep.port_type == PortType.ENDPOINT and ep.bars == ((4, Bar(16 << 10, BarKind.MEM64, True)),)


def replace_line(text, lineno, new):
    lines = text.splitlines()
    lines[lineno - 1] = new
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("lineno, new", [
    (17, "    Frobnicator: PCI device 1af4:1041"),           # unknown class description
    (14, "      BAR0: 32 bit memory at 0xc1089000 [0xc1089ffe]."),   # BAR size not a power of two
    (9, "      secondary bus one."),                          # not an info pci line
    (6, "    PCI bridge: PCI device 1b36:000c extra"),        # class line garbled
])
def test_info_pci_errors_carry_the_line(lineno, new):
    assert parse_error(parse_info_pci, replace_line(INFO_OK, lineno, new)).line == lineno


def test_info_pci_text_before_the_first_bus_header():
    err = parse_error(parse_info_pci, "some banner\n" + INFO_OK)
    assert err.line == 1


def test_info_pci_function_without_a_class_line():
    """Reported at the function's 'Bus' header (INFO_OK has 19 lines)."""
    text = INFO_OK + "  Bus  0, device   3, function 0:\n      id \"x\"\n"
    assert parse_error(parse_info_pci, text).line == 20


INFO_DUPLICATE = INFO_OK + "  Bus  0, device   0, function 0:\n    Host bridge: PCI device 8086:29c0\n"
INFO_UNREACHED = INFO_OK.replace("Bus  1,", "Bus  2,")      # line 16: nothing leads to bus 2


def test_info_pci_duplicate_bdf_and_unreached_bus_are_errors():
    with pytest.raises(ValueError, match="twice"):
        parse_info_pci(INFO_DUPLICATE)
    with pytest.raises(ValueError, match="no bridge"):
        parse_info_pci(INFO_UNREACHED)


@pytest.mark.parametrize("text, line", [(INFO_DUPLICATE, 20), (INFO_UNREACHED, 16)],
                         ids=["duplicate", "unreached"])
def test_info_pci_topology_errors_carry_the_line(text, line):
    """docs/pci.md: parser errors are TopologyParseError with the 1-based .line (as parse_lspci does)."""
    assert parse_error(parse_info_pci, text).line == line


@pytest.mark.parametrize("text", ["", "(qemu) info pci\n", "   \n"])
def test_info_pci_empty_text_is_line_0(text):
    assert parse_error(parse_info_pci, text).line == 0


def test_info_pci_skips_the_monitor_prompt():
    t = parse_info_pci("(qemu) info pci\n" + INFO_OK)
    assert len(t) == 3


@pytest.mark.parametrize("lineno, new, field", [
    (9, "      secondary bus one.", "secondary bus"),
    (10, "      subordinate bus -1.", "subordinate bus"),
    (8, "      BUS 0x0.", "BUS"),
    (3, "      PCI subsystem 1af4:11", "PCI subsystem"),
    (14, "      BAR0: 32 bit memory at 0xc1089000.", "BAR"),
    (16, "  Bus 1, device 0, function:", "Bus"),
])
def test_info_pci_malformed_field_lines_name_the_field(lineno, new, field):
    err = parse_error(parse_info_pci, replace_line(INFO_OK, lineno, new))
    assert err.line == lineno and err.detail.startswith(f"malformed {field} line (expected")
    assert err.detail.endswith(repr(new.strip()))


def test_info_pci_a_second_field_line_is_an_error():
    """A function's second 'secondary bus' line would silently replace the first."""
    err = parse_error(parse_info_pci, replace_line(INFO_OK, 10, "      secondary bus 2."))
    assert err.line == 10 and err.detail == "a second secondary line for this function: 'secondary bus 2.'"


# -- quoting input in messages ------------------------------------------------------------------

def test_quote_keeps_short_text_whole_and_cuts_long_text_visibly():
    assert quote("abc") == "'abc'"
    assert quote("x" * 120) == repr("x" * 120)
    assert quote("x" * 121) == repr("x" * 120) + "…"
    assert quote("abcdef", limit=3) == "'abc'…"


@pytest.mark.parametrize("parse, text, line, start", [
    (parse_lspci, "00:00.0 0600: 8086:29c0\n" + "z" * 500 + "\n", 2, "not an `lspci -n` line: "),
    (parse_info_pci, INFO_OK + "      " + "q" * 500 + "\n", 20, "not an `info pci` line: "),
    (parse_info_pci, "w" * 500 + "\n", 1, "expected '  Bus N, device N, function N:', got "),
    (parse_info_pci, replace_line(INFO_OK, 17, "    " + "F" * 300 + ": PCI device 1af4:1041"), 17,
     "unknown class description "),
], ids=["lspci", "info-pci", "before-first-bus", "class"])
def test_long_input_is_cut_visibly_in_messages(parse, text, line, start):
    err = parse_error(parse, text)
    cut = text.splitlines()[line - 1].strip()[:120]
    assert err.line == line and err.detail == start + repr(cut) + "…"


def test_input_of_up_to_120_characters_is_quoted_whole():
    line = "y" * 120
    assert parse_error(parse_lspci, line + "\n").detail == f"not an `lspci -n` line: {line!r}"


# -- read_topology ----------------------------------------------------------------------------

def test_read_topology_tells_the_formats_apart(tmp_path):
    q35 = q35_default()
    (tmp_path / "a.lspci").write_text(format_lspci(q35))
    (tmp_path / "b.txt").write_text(format_info_pci(q35))
    (tmp_path / "c.txt").write_text(SWITCH_LSPCI)
    a, b, c = (read_topology(tmp_path / n) for n in ("a.lspci", "b.txt", "c.txt"))
    assert lspci_view(a) == lspci_view(q35) and a.name == "a"
    assert [f.bars for f in b] == [f.bars for f in q35] and b.name == "b"     # only info pci has BARs
    assert [f.bars for f in a] == [()] * len(q35)
    assert len(c) == 11


def test_read_topology_of_the_real_dump():
    t = read_topology(TRACE_DIR / "info_pci.txt")
    assert len(t) == 11 and t.get(Bdf(0, 0, 1, 0)).rom_size == 64 << 10


def test_read_topology_of_a_one_line_info_pci(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("  Bus  0, device   0, function 0:\n    Host bridge: PCI device 8086:29c0\n")
    assert read_topology(path).get(Bdf(0, 0, 0, 0)).class_code == 0x060000


def test_info_pci_unknown_class_description_is_named():
    """Only QEMU's own descriptions map back to a class; anything else is an error."""
    err = parse_error(parse_info_pci, replace_line(INFO_OK, 17, "    Frobnicator: PCI device 1af4:1041"))
    assert "Frobnicator" in str(err)


def test_lspci_conventional_bridge_children_are_conventional():
    """QEMU's pci-bridge (1b36:0001) is PCI-to-PCI: what sits behind it has no PCIe port
    type, so a Linux probe scans all 32 devices of its bus (only_one_child() is false)."""
    t = parse_lspci("00:00.0 0600: 8086:29c0\n00:02.0 0604: 1b36:0001\n01:00.0 0200: 1af4:1000\n")
    assert t.get(Bdf.parse("00:02.0")).port_type is None
    assert t.get(Bdf.parse("01:00.0")).port_type is None
