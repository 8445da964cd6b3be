"""`info pci` and `lspci -n` forms real QEMU guests produce: expander bridges (pxb, pxb-pcie)
with root buses of their own, bridges nobody configured, several segments; round trips.

The `info pci` texts are written the way QEMU's hmp_info_pci_device() prints them (see
tests/data/*/info_pci.txt for real captures)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allones.pci.builders import ENDPOINTS, QEMU_SUBSYS, random_topology
from allones.pci.config_space import ConfigSpaces
from allones.pci.ecam import Bdf, Segment
from allones.pci.parsers import (EXPANDER_BRIDGES, PCI_DEVICE_ID_REDHAT_PXB, PCI_DEVICE_ID_REDHAT_PXB_PCIE,
                                 TopologyParseError, format_info_pci, format_lspci, parse_info_pci,
                                 parse_lspci)
from allones.pci.scans import plan_scan
from allones.pci.topology import Q35_ECAM_BASE, Bar, BarKind, Function, PortType, Topology

DATA = Path(__file__).resolve().parents[1] / "data"

# q35 + OVMF, `-device pxb-pcie,id=pxb0,bus_nr=64,bus=pcie.0,addr=3 -device pcie-root-port,bus=pxb0,...`:
# a root port with an endpoint on bus 0, two root ports on the pxb's bus 64, one endpoint behind
# the first (OVMF numbers the buses behind a pxb from its bus_nr up)
Q35_PXB_PCIE = """\
  Bus  0, device   0, function 0:
    Host bridge: PCI device 8086:29c0
      PCI subsystem 1af4:1100
      id ""
  Bus  0, device   1, function 0:
    VGA controller: PCI device 1234:1111
      PCI subsystem 1af4:1100
      BAR0: 32 bit prefetchable memory at 0xc0000000 [0xc0ffffff].
      BAR2: 32 bit memory at 0xc1088000 [0xc1088fff].
      BAR6: 32 bit memory at 0xffffffffffffffff [0x0000fffe].
      id ""
  Bus  0, device   2, function 0:
    PCI bridge: PCI device 1b36:000c
      IRQ 10, pin A
      BUS 0.
      secondary bus 1.
      subordinate bus 1.
      IO range [0x1000, 0x1fff]
      memory range [0xc1000000, 0xc11fffff]
      prefetchable memory range [0x800000000, 0x8000fffff]
      BAR0: 32 bit memory at 0xc1089000 [0xc1089fff].
      id "rp0"
  Bus  1, device   0, function 0:
    Ethernet controller: PCI device 1af4:1041
      PCI subsystem 1af4:1100
      IRQ 10, pin A
      BAR1: 32 bit memory at 0xc1000000 [0xc1000fff].
      BAR4: 64 bit prefetchable memory at 0x800000000 [0x800003fff].
      BAR6: 32 bit memory at 0xffffffffffffffff [0x0003fffe].
      id "net0"
  Bus  0, device   3, function 0:
    Host bridge: PCI device 1b36:000b
      PCI subsystem 1af4:1100
      id "pxb0"
  Bus  0, device  31, function 0:
    ISA bridge: PCI device 8086:2918
      PCI subsystem 1af4:1100
      id ""
  Bus 64, device   0, function 0:
    PCI bridge: PCI device 1b36:000c
      IRQ 10, pin A
      BUS 64.
      secondary bus 65.
      subordinate bus 65.
      IO range [0x2000, 0x2fff]
      memory range [0xc1200000, 0xc13fffff]
      prefetchable memory range [0x800100000, 0x8001fffff]
      BAR0: 32 bit memory at 0xc108a000 [0xc108afff].
      id "rp1"
  Bus 65, device   0, function 0:
    SCSI controller: PCI device 1af4:1042
      PCI subsystem 1af4:1100
      IRQ 10, pin A
      BAR1: 32 bit memory at 0xc1200000 [0xc1200fff].
      BAR4: 64 bit prefetchable memory at 0x800100000 [0x800103fff].
      id "blk0"
  Bus 64, device   1, function 0:
    PCI bridge: PCI device 1b36:000c
      IRQ 10, pin A
      BUS 64.
      secondary bus 66.
      subordinate bus 66.
      IO range [0xf000, 0x0fff]
      memory range [0xfff00000, 0x000fffff]
      prefetchable memory range [0xfff00000, 0x000fffff]
      BAR0: 32 bit memory at 0xc108b000 [0xc108bfff].
      id "rp2"
"""

# i440fx + SeaBIOS, `-device pxb,id=pxb1,bus_nr=32 -device virtio-net-pci,bus=pxb1`: a conventional
# pxb puts a pci-bridge (1b36:0001, id = the pxb's) at slot 0 of its root bus; devices sit behind
# it (pxb_dev_realize_common())
I440FX_PXB = """\
  Bus  0, device   0, function 0:
    Host bridge: PCI device 8086:1237
      PCI subsystem 1af4:1100
      id ""
  Bus  0, device   1, function 0:
    ISA bridge: PCI device 8086:7000
      PCI subsystem 1af4:1100
      id ""
  Bus  0, device   4, function 0:
    Host bridge: PCI device 1b36:0009
      PCI subsystem 1af4:1100
      id "pxb1"
  Bus 32, device   0, function 0:
    PCI bridge: PCI device 1b36:0001
      BUS 32.
      secondary bus 33.
      subordinate bus 33.
      IO range [0xc000, 0xcfff]
      memory range [0xfe800000, 0xfe9fffff]
      prefetchable memory range [0xfe000000, 0xfe1fffff]
      id "pxb1"
  Bus 33, device   1, function 0:
    Ethernet controller: PCI device 1af4:1000
      PCI subsystem 1af4:0001
      IRQ 11, pin A
      BAR0: I/O at 0xc000 [0xc01f].
      BAR1: 32 bit memory at 0xfe800000 [0xfe800fff].
      BAR4: 64 bit prefetchable memory at 0xfe000000 [0xfe003fff].
      BAR6: 32 bit memory at 0xffffffffffffffff [0x0003fffe].
      id "net1"
"""

# arm64 `virt` booted from a device tree: nobody numbers the root port on the pxb-pcie's bus, so
# its bus registers keep their reset value 0 and QEMU lists nothing behind it
ARM64_UNCONFIGURED = """\
  Bus  0, device   0, function 0:
    Host bridge: PCI device 1b36:0008
      PCI subsystem 1af4:1100
      id ""
  Bus  0, device   2, function 0:
    Host bridge: PCI device 1b36:000b
      PCI subsystem 1af4:1100
      id "pxb0"
  Bus 64, device   0, function 0:
    PCI bridge: PCI device 1b36:000c
      IRQ 255, pin A
      BUS {primary}.
      secondary bus 0.
      subordinate bus 0.
      IO range [0x0000, 0x0fff]
      memory range [0x00000000, 0x000fffff]
      prefetchable memory range [0x00000000, 0x000fffff]
      BAR0: 32 bit memory at 0xffffffffffffffff [0x00000ffe].
      id "rp0"
"""

LSPCI_Q35_PXB_PCIE = """\
00:00.0 0600: 8086:29c0
00:01.0 0300: 1234:1111 (rev 02)
00:02.0 0604: 1b36:000c
00:03.0 0600: 1b36:000b
00:1f.0 0601: 8086:2918 (rev 02)
01:00.0 0200: 1af4:1041 (rev 01)
40:00.0 0604: 1b36:000c
40:01.0 0604: 1b36:000c
41:00.0 0100: 1af4:1042 (rev 01)
"""

# two domains; segment 1 has a pxb-pcie whose bus 0x80 holds a root port with an nvme behind it
LSPCI_TWO_SEGMENTS = """\
0000:00:00.0 0600: 8086:29c0
0000:00:02.0 0604: 1b36:000c
0000:01:00.0 0200: 1af4:1041 (rev 01)
0001:00:00.0 0600: 8086:29c0
0001:00:02.0 0604: 1b36:000c
0001:00:03.0 0600: 1b36:000b
0001:01:00.0 0c03: 1b36:000d (prog-if 30 [XHCI])
0001:80:00.0 0604: 1b36:000c
0001:81:00.0 0108: 1b36:0010 (rev 02) (prog-if 02 [NVM Express])
"""


def unconfigured(primary=0):
    return ARM64_UNCONFIGURED.format(primary=primary)


def line_of(text, start):
    """The 1-based number of the first line of `text` that starts with `start`."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if line.startswith(start))


def parse_error(parse, text):
    with pytest.raises(TopologyParseError) as info:
        parse(text)
    return info.value


def view(t):
    """What both texts carry (lspci adds revision and prog-if, info pci BARs and subsystems)."""
    return [(f.bdf, f.vendor, f.device, f.class_code >> 8, f.header_type, f.secondary, f.subordinate,
             f.port_type, t.is_multifunction(f.bdf)) for f in t]


def lspci_view(t):
    return view(t) + [(f.bdf, f.class_code, f.revision) for f in t]


def info_pci_view(t):
    return view(t) + [(f.bdf, f.bars, f.rom_size, f.subsystem) for f in t]


# -- pxb / pxb-pcie: extra root buses -----------------------------------------------------------

def test_expander_ids_are_qemus():
    """include/hw/pci/pci.h: PCI_DEVICE_ID_REDHAT_PXB 0x0009, PCI_DEVICE_ID_REDHAT_PXB_PCIE 0x000b."""
    assert (PCI_DEVICE_ID_REDHAT_PXB, PCI_DEVICE_ID_REDHAT_PXB_PCIE) == (0x0009, 0x000B)
    assert EXPANDER_BRIDGES == {(0x1B36, 0x0009): "pxb", (0x1B36, 0x000B): "pxb-pcie"}


def test_info_pci_pxb_pcie_bus_is_an_extra_root():
    t = parse_info_pci(Q35_PXB_PCIE)
    assert t.extra_roots == ((0, 64),)
    assert t.root_buses() == [(0, 0), (0, 64)]
    pxb = t.get(Bdf.parse("00:03.0"))
    assert (pxb.class_code, pxb.header_type, pxb.port_type) == (0x060000, 0, None)
    ports = {str(f.bdf)[5:]: (f.secondary, f.subordinate, f.port_type) for f in t if f.is_bridge}
    assert ports == {"00:02.0": (1, 1, PortType.ROOT_PORT), "40:00.0": (65, 65, PortType.ROOT_PORT),
                     "40:01.0": (66, 66, PortType.ROOT_PORT)}
    blk = t.get(Bdf.parse("41:00.0"))
    assert blk.port_type == PortType.ENDPOINT and t.bridge_to(0, 65).bdf == Bdf.parse("40:00.0")
    assert blk.bars == ((1, Bar(4096)), (4, Bar(16 << 10, BarKind.MEM64, True)))
    assert t.bridge_to(0, 64) is None


def test_info_pci_groups_in_qemus_order_parse_the_same():
    """qmp_query_pci() walks pci_host_bridges, where pci_host_bus_register() puts the newest
    first: a real capture may list the pxb's group before bus 0's."""
    head, sep, pxb_group = Q35_PXB_PCIE.partition("  Bus 64, device   0")
    assert parse_info_pci(sep + pxb_group + head) == parse_info_pci(Q35_PXB_PCIE)


def test_info_pci_conventional_pxb_behind_its_internal_bridge():
    t = parse_info_pci(I440FX_PXB)
    assert t.extra_roots == ((0, 32),)
    bridge, net = t.get(Bdf.parse("20:00.0")), t.get(Bdf.parse("21:01.0"))
    assert (bridge.secondary, bridge.subordinate, bridge.port_type) == (33, 33, None)
    assert net.port_type is None and net.bars[0] == (0, Bar(32, BarKind.IO))


def test_lspci_pxb_pcie_numbering_goes_on_from_the_pxb_bus():
    t = parse_lspci(LSPCI_Q35_PXB_PCIE)
    assert t.extra_roots == ((0, 0x40),)
    buses = {str(f.bdf)[5:]: (f.secondary, f.subordinate) for f in t if f.is_bridge}
    assert buses == {"00:02.0": (1, 1), "40:00.0": (0x41, 0x41), "40:01.0": (0x42, 0x42)}
    assert t.get(Bdf.parse("41:00.0")).port_type == PortType.ENDPOINT


def test_lspci_and_info_pci_of_one_pxb_pcie_guest_agree():
    """Same machine, both texts (lspci shows no BARs, info pci no revision)."""
    a, b = parse_lspci(LSPCI_Q35_PXB_PCIE), parse_info_pci(Q35_PXB_PCIE)
    assert view(a) == view(b) and a.extra_roots == b.extra_roots


def test_pxb_on_a_pxb_bus_opens_another_root():
    """An expander on an extra root bus counts too (lowest bus first)."""
    text = (LSPCI_Q35_PXB_PCIE + "40:02.0 0600: 1b36:000b\n"
            "60:00.0 0200: 1af4:1041 (rev 01)\n")
    assert parse_lspci(text).extra_roots == ((0, 0x40), (0, 0x60))


@pytest.mark.parametrize("parse, text, first, bus", [
    (parse_info_pci, Q35_PXB_PCIE.replace("1b36:000b", "8086:29c0"), "  Bus 64", "40"),   # no expander
    (parse_lspci, LSPCI_Q35_PXB_PCIE.replace("1b36:000b", "1b36:000c"), "40:", "40"),    # root port IDs
    (parse_lspci, LSPCI_Q35_PXB_PCIE.replace("0600: 1b36:000b", "0604: 1b36:000b"), "40:", "40"),  # a bridge
    (parse_info_pci, Q35_PXB_PCIE + "  Bus 80, device   0, function 0:\n    Ethernet controller: "
     "PCI device 1af4:1041\n", "  Bus 80", "50"),                                     # two buses, one pxb
    (parse_lspci, LSPCI_Q35_PXB_PCIE + "50:00.0 0200: 1af4:1041\n", "50:", "50"),
], ids=["info-no-expander", "lspci-root-port-ids", "lspci-bridge-class", "info-two-buses", "lspci-two-buses"])
def test_a_bus_nothing_opens_is_an_error_at_its_first_line(parse, text, first, bus):
    err = parse_error(parse, text)
    assert err.line == line_of(text, first)
    assert f"no bridge leads to bus {bus}" in err.detail and "no expander host bridge" in err.detail


def test_an_expander_off_the_root_buses_opens_nothing():
    """A pxb behind a root port is not on a root bus: bus 0x50 stays unreached."""
    text = LSPCI_Q35_PXB_PCIE + "42:00.0 0600: 1b36:000b\n50:00.0 0200: 1af4:1041\n"
    assert parse_error(parse_lspci, text).line == 11


# -- unconfigured bridges -------------------------------------------------------------------------

@pytest.mark.parametrize("primary", [0, 64])
def test_info_pci_unconfigured_root_port_is_a_bridge_with_nothing_behind(primary):
    t = parse_info_pci(unconfigured(primary))
    rp = t.get(Bdf.parse("40:00.0"))
    assert rp.is_bridge and not rp.is_configured and (rp.secondary, rp.subordinate) == (0, 0)
    assert rp.port_type == PortType.ROOT_PORT and rp.bars == ((0, Bar(4096)),)
    assert t.extra_roots == ((0, 64),) and t.bridge_to(0, 0) is None
    assert "40:00.0 [1b36:000c] PCI bridge (root port, unconfigured)" in t.format_tree()


def test_format_info_pci_prints_an_unconfigured_bridge_as_qemu_does():
    text = format_info_pci(parse_info_pci(unconfigured()))
    assert "      BUS 64.\n      secondary bus 0.\n      subordinate bus 0.\n" in text
    assert text.count("  Bus") == 3


def test_an_unconfigured_bridge_claims_no_bus():
    """Two unconfigured bridges on one bus do not overlap; one on bus 0 leads nowhere either,
    and a window that starts above bus 0 need not hold its secondary 0."""
    def rp(bus, dev, sec=0, sub=0):
        return Function(Bdf(0, bus, dev, 0), 0x1B36, 0x000C, 0x060400, header_type=1,
                        port_type=PortType.ROOT_PORT, secondary=sec, subordinate=sub)
    t = Topology([rp(0, 2), rp(0, 3), rp(0, 4, 1, 1), Function(Bdf(0, 1, 0, 0), 0x1AF4, 0x1041, 0x020000)])
    assert [f.is_configured for f in t if f.is_bridge] == [False, False, True]
    assert t.bridge_to(0, 1).bdf == Bdf.parse("00:04.0") and t.bridge_to(0, 0) is None
    high = Topology([rp(0x10, 2)], [Segment(Q35_ECAM_BASE, 0, 0x10, 0x1F)])
    assert not high.functions[0].is_configured
    assert not Function(Bdf(0, 0, 1, 0), 0x1234, 1, 0x020000).is_configured


@pytest.mark.parametrize("secondary, subordinate", [(0, 3), (3, 0)])
def test_half_unconfigured_bus_numbers_are_refused(secondary, subordinate):
    with pytest.raises(ValueError, match=r"bus < secondary <= subordinate <= 255 \(or secondary = "
                                         r"subordinate = 0: unconfigured\)"):
        Function(Bdf(0, 0, 2, 0), 0x1B36, 0x000C, 0x060400, header_type=1, secondary=secondary,
                 subordinate=subordinate)


def test_info_pci_half_unconfigured_bridge_names_the_line_and_fields():
    text = unconfigured().replace("subordinate bus 0.", "subordinate bus 3.")
    err = parse_error(parse_info_pci, text)
    assert err.line == 9 and "secondary <= subordinate" in err.detail and "got 64, 0, 3" in err.detail


def test_unconfigured_bridge_config_space_and_scans_stay_out_of_bus_0():
    """PCI_PRIMARY_BUS's dword reads secondary 0, subordinate 0; Linux's pci_scan_bridge_extend()
    (pass 0) and the firmware walk follow a bridge only when secondary > its bus."""
    t = parse_info_pci(unconfigured())
    buses = ConfigSpaces(t).get(Bdf.parse("40:00.0")).read(0x18, 4)
    assert buses >> 8 & 0xFFFF == 0
    alone = t.with_functions([f for f in t if f.bdf.bus == 0])       # bus 0 as if bus 64 were empty
    for scan in ("linux-probe", "firmware"):
        runs = [plan_scan(x, scan, "mmconfig").accesses for x in (t, alone)]
        assert set(runs[0]["bus"].tolist()) == {0, 64}
        bus_0 = [a[a["bus"] == 0] for a in runs]
        assert len(bus_0[0]) == len(bus_0[1]) and (bus_0[0]["reg"] == bus_0[1]["reg"]).all()


# -- several segments -----------------------------------------------------------------------------

def test_lspci_segments_with_an_extra_root_in_one():
    t = parse_lspci(LSPCI_TWO_SEGMENTS)
    assert [s.segment for s in t.segments] == [0, 1] and t.extra_roots == ((1, 0x80),)
    assert t.get(Bdf.parse("0001:80:00.0")).secondary == 0x81
    assert t.get(Bdf.parse("0001:00:02.0")).secondary == 1
    back = parse_lspci(format_lspci(t))
    assert lspci_view(back) == lspci_view(t) and back.extra_roots == t.extra_roots
    assert back.segments == t.segments


def test_lspci_expander_in_segment_0_does_not_open_a_bus_of_segment_1():
    text = LSPCI_TWO_SEGMENTS.replace("0001:00:03.0 0600: 1b36:000b", "0000:00:03.0 0600: 1b36:000b")
    err = parse_error(parse_lspci, text)
    assert err.line == 8 and "0001:80:00.0: no bridge leads to bus 80" in err.detail


def test_info_pci_has_no_segment():
    """`info pci` text is segment 0's: other segments and their extra roots are left out."""
    t = parse_lspci(LSPCI_TWO_SEGMENTS + "0000:00:03.0 0600: 1b36:000b\n0000:40:00.0 0200: 1af4:1041\n")
    assert t.extra_roots == ((0, 0x40), (1, 0x80))
    back = parse_info_pci(format_info_pci(t))
    assert [f.bdf for f in back] == [f.bdf for f in t if f.bdf.segment == 0]
    assert back.extra_roots == ((0, 0x40),) and [s.segment for s in back.segments] == [0]


# -- round trips ------------------------------------------------------------------------------------

INFO_PCI_FORMS = {"q35-pxb-pcie": Q35_PXB_PCIE, "i440fx-pxb": I440FX_PXB, "arm64-unconfigured": unconfigured(),
                  "arm64-unconfigured-bus-64": unconfigured(64),
                  "real-q35-ovmf": (DATA / "q35-ovmf-default" / "info_pci.txt").read_text(),
                  "real-arm64-virt": (DATA / "arm64-virt-aavmf" / "info_pci.txt").read_text()}


@pytest.mark.parametrize("form", INFO_PCI_FORMS)
def test_info_pci_forms_round_trip(form):
    t = parse_info_pci(INFO_PCI_FORMS[form])
    back = parse_info_pci(format_info_pci(t))
    assert back.functions == t.functions and back.extra_roots == t.extra_roots


@pytest.mark.parametrize("form", ["q35-pxb-pcie", "i440fx-pxb", "real-q35-ovmf", "real-arm64-virt"])
def test_info_pci_forms_through_lspci(form):
    """lspci renumbers buses depth first from each root bus: these were numbered so."""
    t = parse_info_pci(INFO_PCI_FORMS[form])
    back = parse_lspci(format_lspci(t))
    assert view(back) == view(t) and back.extra_roots == t.extra_roots


def test_lspci_form_round_trips():
    t = parse_lspci(LSPCI_Q35_PXB_PCIE)
    back = parse_lspci(format_lspci(t))
    assert back.functions == t.functions and back.extra_roots == t.extra_roots


def pxb_tree(rng, bus_nr, pcie):
    """What a guest puts on an expander's root bus `bus_nr`: behind a pxb-pcie a random tree of
    root ports (random_topology() from bus_nr, less the q35 chipset it puts on every root bus);
    behind a pxb its internal pci-bridge with conventional devices."""
    if pcie:
        sub = random_topology(int(rng.integers(2**32)), int(rng.integers(1, 5)), 2,
                              Segment(Q35_ECAM_BASE, 0, bus_nr))
        return [f for f in sub if not (f.bdf.bus == bus_nr and f.bdf.dev in (0, 1, 31))]
    kinds = list(ENDPOINTS)
    out = [Function(Bdf(0, bus_nr, 0, 0), 0x1B36, 0x0001, 0x060400, header_type=1, secondary=bus_nr + 1,
                    subordinate=bus_nr + 1)]
    for dev in sorted(rng.choice(np.arange(1, 32), int(rng.integers(1, 5)), replace=False).tolist()):
        spec = ENDPOINTS[kinds[int(rng.integers(len(kinds)))]]
        out.append(Function(Bdf(0, bus_nr + 1, dev, 0), subsystem=QEMU_SUBSYS, **spec))
    return out


def with_expanders(seed, count, unconfigure=False):
    """random_topology(seed) plus `count` pxb / pxb-pcie functions on bus 0, each with a root bus
    above every bus in use; `unconfigure`: empty bridges lose their bus numbers."""
    rng = np.random.default_rng(seed)
    t = random_topology(seed)
    functions, roots = list(t), []
    free = [d for d in range(32) if not any(f.bdf.dev == d for f in t.children(0, 0))]
    for dev in free[:count]:
        bus_nr = max(f.subordinate if f.is_bridge else f.bdf.bus for f in functions) + int(rng.integers(1, 16))
        if bus_nr > 150:         # room for the tree below it
            break
        pcie = bool(rng.integers(2))
        device = PCI_DEVICE_ID_REDHAT_PXB_PCIE if pcie else PCI_DEVICE_ID_REDHAT_PXB
        functions.append(Function(Bdf(0, 0, dev, 0), 0x1B36, device, 0x060000, subsystem=QEMU_SUBSYS))
        functions += pxb_tree(rng, bus_nr, pcie)
        roots.append((0, bus_nr))
    if unconfigure:
        used = {f.bdf.bus for f in functions}
        empty = [f for f in functions if f.is_bridge and f.secondary == f.subordinate and f.secondary not in used]
        functions = [replace(f, secondary=0, subordinate=0) if f in empty else f for f in functions]
    return Topology(functions, extra_roots=roots, name=f"pxb-{seed}")


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 3), st.booleans())
def test_random_topology_with_expanders_round_trips_info_pci(seed, count, unconfigure):
    t = with_expanders(seed, count, unconfigure)
    back = parse_info_pci(format_info_pci(t))
    assert info_pci_view(back) == info_pci_view(t)
    assert back.extra_roots == t.extra_roots and back.root_buses() == t.root_buses()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 3))
def test_random_topology_with_expanders_round_trips_lspci(seed, count):
    t = with_expanders(seed, count)
    back = parse_lspci(format_lspci(t))
    assert lspci_view(back) == lspci_view(t) and back.extra_roots == t.extra_roots


def test_with_expanders_makes_what_it_says():
    """The generator itself: expanders on bus 0, extra roots above the buses in use, unconfigured
    bridges when asked."""
    t = with_expanders(5, 3, unconfigure=True)
    assert len(t.extra_roots) == 3
    assert sum((f.vendor, f.device) in EXPANDER_BRIDGES for f in t.children(0, 0)) == 3
    assert any(f.is_bridge and not f.is_configured for f in t)
