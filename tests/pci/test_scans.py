"""Scan programs: which functions and registers each scan touches, by which mechanism."""

import numpy as np
import pytest

from allones.pci.access import CONF1, MMCONFIG, page_keys
from allones.pci.builders import (endpoint, multi_segment, q35_chipset, q35_default, random_topology,
                                  root_port)
from allones.pci.ecam import Bdf
from allones.pci.scans import SCANS, plan_scan, scan_program
from allones.pci.topology import Function, PortType, Topology

MECHANISMS = ("linux-x86-default", "mmconfig", "conf1")


def fns(bus, devs, fns=(0,)):
    return {Bdf(0, bus, d, f) for d in devs for f in fns}


# q35_default, worked out by hand from pci_scan_slot() / only_one_child():
# bus 0: function 0 of every device; 02.x are four root ports (02.0-3), so a multifunction
# device: 02.1-7 probed; 1f.0/2/3 likewise: 1f.1-7 probed; nothing else has fns 1-7.
# Buses 1-4 sit below root ports: only device 0, function 0.
Q35_PROBED = (fns(0, range(32)) | fns(0, [2], range(1, 8)) | fns(0, [31], range(1, 8))
              | {Bdf(0, b, 0, 0) for b in (1, 2, 3, 4)})
Q35_PROBED_HOLES = (fns(0, [2], range(4, 8)) | fns(0, range(3, 31)) | fns(0, [31], (1, 4, 5, 6, 7))
                    | {Bdf(0, 4, 0, 0)})    # root port 02.3 is empty


@pytest.fixture(scope="module")
def q35():
    return q35_default()


def upstream(bus, secondary, subordinate):
    return Function(Bdf(0, bus, 0, 0), vendor=0x1B36, device=0x000E, class_code=0x060400, header_type=1,
                    port_type=PortType.UPSTREAM, secondary=secondary, subordinate=subordinate)


def downstream(bus, dev, secondary):
    return Function(Bdf(0, bus, dev, 0), vendor=0x1B36, device=0x000F, class_code=0x060400,
                    header_type=1, port_type=PortType.DOWNSTREAM, secondary=secondary,
                    subordinate=secondary)


def accesses_to(scan, bdf):
    a = scan.accesses
    return a[(a["bus"] == bdf.bus) & (a["dev"] == bdf.dev) & (a["fn"] == bdf.fn)]


# -- linux-probe ------------------------------------------------------------------------------

@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_linux_probe_touches_exactly_what_pci_scan_slot_reaches(q35, mechanism):
    """pci_scan_slot(): fn 0 of each device, fns 1-7 only of multifunction devices;
    only_one_child(): device 0 only below root ports. The mechanism changes nothing here."""
    scan = plan_scan(q35, "linux-probe", mechanism)
    assert scan.touched() == Q35_PROBED
    assert len(Q35_PROBED) == 32 + 7 + 7 + 4


def test_linux_probe_hole_set(q35):
    scan = plan_scan(q35, "linux-probe")
    assert scan.touched(holes=True) == Q35_PROBED_HOLES
    assert scan.touched(holes=False) == {f.bdf for f in q35}


def test_linux_probe_reads_each_hole_once_at_vendor_id(q35):
    """pci_bus_read_dev_vendor_id(): a missing function costs exactly one dword read of reg 0."""
    scan = plan_scan(q35, "linux-probe")
    holes = scan.accesses[scan.hole_mask()]
    assert len(holes) == len(Q35_PROBED_HOLES)
    assert set(holes["reg"].tolist()) == {0} and set(holes["size"].tolist()) == {4}
    assert not holes["is_write"].any()


def test_pcie_scan_all_probes_every_device_below_root_ports(q35):
    """only_one_child() is false with pci=pcie_scan_all (PCI_SCAN_ALL_PCIE_DEVS)."""
    below = {b for b in plan_scan(q35, "linux-probe", pcie_scan_all=True).touched() if b.bus}
    assert below == {Bdf(0, bus, dev, 0) for bus in (1, 2, 3, 4) for dev in range(32)}
    default = {b for b in plan_scan(q35, "linux-probe").touched() if b.bus}
    assert default == {Bdf(0, bus, 0, 0) for bus in (1, 2, 3, 4)}


def test_multifunction_endpoint_behind_a_port_gets_fns_1_to_7():
    """next_fn(): a multifunction device 0 below a port has all of its functions tried."""
    topo = Topology(q35_chipset() + [root_port(0, 2, 0, secondary=1), endpoint(0, 1, "virtio-net", 0, 0),
                                     endpoint(0, 1, "nvme", 0, 1)])
    scan = plan_scan(topo, "linux-probe")
    assert {b for b in scan.touched() if b.bus == 1} == fns(1, [0], range(8))
    assert {b for b in scan.touched(holes=True) if b.bus == 1} == fns(1, [0], range(2, 8))


def test_bridge_chain_is_recursed():
    """pci_scan_bridge_extend(): root port -> switch upstream port -> downstream ports; all
    32 devices below the upstream port (not a downstream port), device 0 below the others."""
    topo = Topology(q35_chipset() + [root_port(0, 2, 0, secondary=1, subordinate=4), upstream(1, 2, 4),
                                     downstream(2, 0, 3), downstream(2, 1, 4), endpoint(0, 3, "nvme")])
    scan = plan_scan(topo, "linux-probe")
    below = {b for b in scan.touched() if b.bus}
    assert below == {Bdf(0, 1, 0, 0)} | fns(2, range(32)) | {Bdf(0, 3, 0, 0), Bdf(0, 4, 0, 0)}
    assert scan.touched(holes=False) == {f.bdf for f in topo}


def test_random_topology_switch_is_recursed():
    """random_topology(3): 00:xx root port -> 01:00.0 upstream -> 02:00-02 downstream (buses 3-5)."""
    topo = random_topology(3)
    ups = [f for f in topo if f.port_type == PortType.UPSTREAM]
    downs = sorted(f.secondary for f in topo if f.port_type == PortType.DOWNSTREAM)
    assert [f.bdf for f in ups] == [Bdf(0, 1, 0, 0)] and downs == [3, 4, 5]
    scan = plan_scan(topo, "linux-probe")
    assert scan.touched(holes=False) == {f.bdf for f in topo}
    touched = scan.touched()
    assert {b for b in touched if b.bus == 2} == fns(2, range(32))
    for bus in downs:
        assert {b.dev for b in touched if b.bus == bus} == {0}


def test_missing_function_0_ends_the_slot(q35):
    """pci_scan_slot(): function 0 is required (no hypervisor_isolated_pci_functions() on x86):
    a lone 00:05.1 is never found, and empty slots' fns 1-7 are never touched."""
    lone = Function(Bdf(0, 0, 5, 1), vendor=0x8086, device=0x1234, class_code=0x020000)
    scan = plan_scan(Topology(q35_chipset() + [lone]), "linux-probe")
    assert {b for b in scan.touched() if b.dev == 5} == {Bdf(0, 0, 5, 0)}
    q35_scan = plan_scan(q35, "linux-probe")
    for b in q35_scan.touched():
        if b.fn:
            assert Bdf(0, b.bus, b.dev, 0) in q35


def test_present_function_above_0_keeps_the_slot_scan_going():
    """pci_scan_slot(): `if (fn > 0) dev->multifunction = 1;` before next_fn()."""
    mk = dict(vendor=0x8086, device=0x1234, class_code=0x020000)
    topo = Topology(q35_chipset() + [Function(Bdf(0, 0, 5, 0), multifunction=True, **mk),
                                     Function(Bdf(0, 0, 5, 1), multifunction=False, **mk),
                                     Function(Bdf(0, 0, 5, 2), **mk)])
    scan = plan_scan(topo, "linux-probe")
    assert {b for b in scan.touched() if b.dev == 5} == fns(0, [5], range(8))


# -- mechanisms -------------------------------------------------------------------------------

def test_linux_default_mechanism_splits_at_0x100(q35):
    """raw_pci_read() on x86: conf1 below 0x100, MMCONFIG for extended registers."""
    a = plan_scan(q35, "linux-probe", "linux-x86-default").accesses
    low = a["reg"] < 0x100
    assert (a["mech"][low] == CONF1).all() and (a["mech"][~low] == MMCONFIG).all()
    assert low.any() and (~low).any()


def test_mmconfig_mechanism_uses_only_mmconfig(q35):
    a = plan_scan(q35, "linux-probe", "mmconfig").accesses
    assert (a["mech"] == MMCONFIG).all() and (a["reg"] >= 0x100).any()


def test_conf1_mechanism_never_reaches_extended_registers(q35):
    """pci_conf1_read() refuses reg > 255: the probe then sees all-ones and makes no access."""
    a = plan_scan(q35, "linux-probe", "conf1").accesses
    assert (a["mech"] == CONF1).all() and (a["reg"] < 0x100).all()


# -- BAR sizing -------------------------------------------------------------------------------

def test_bar_sizing_writes_all_ones_then_reads_each_bar(q35):
    """__pci_read_base(): write ~0 (ROM: PCI_ROM_ADDRESS_MASK) to the BAR, read it straight back."""
    scan = plan_scan(q35, "linux-probe")
    for f in q35:
        a = accesses_to(scan, f.bdf)
        regs = [0x10, 0x14] + ([0x38] if f.is_bridge else [0x18, 0x1C, 0x20, 0x24, 0x30])
        for reg in regs:
            mask = 0xFFFFF800 if reg in (0x30, 0x38) else 0xFFFFFFFF
            writes = np.flatnonzero((a["reg"] == reg) & (a["is_write"] == 1) & (a["value"] == mask))
            assert len(writes) == 1, (f.bdf, hex(reg))
            after = a[writes[0] + 1]
            assert (after["reg"], after["is_write"], after["size"]) == (reg, 0, 4), (f.bdf, hex(reg))


def test_bar_sizing_reads_back_the_size_masks(q35):
    """The read after the all-ones write is ~(size - 1) with the type bits (VGA: 16 MiB
    prefetchable BAR0, 4 KiB BAR2, 64 KiB ROM)."""
    a = accesses_to(plan_scan(q35, "linux-probe"), Bdf(0, 0, 1, 0))
    sized = {int(a[i + 1]["reg"]): int(a[i + 1]["value"]) for i in np.flatnonzero(a["is_write"] == 1)
             if a[i]["value"] in (0xFFFFFFFF, 0xFFFFF800) and a[i]["reg"] in range(0x10, 0x34)}
    assert sized == {0x10: 0xFF000008, 0x14: 0, 0x18: 0xFFFFF000, 0x1C: 0, 0x20: 0, 0x24: 0,
                     0x30: 0xFFFF0000}


# -- brute-force, full-dump ---------------------------------------------------------------------

def test_brute_force_reads_every_function_once_per_segment():
    topo = multi_segment(2)
    a = plan_scan(topo, "brute-force", "mmconfig").accesses
    assert len(a) == 2 * 65536
    assert (a["reg"] == 0).all() and (a["size"] == 4).all() and not a["is_write"].any()
    for seg in (0, 1):
        keys = page_keys(a[a["segment"] == seg])
        assert len(keys) == 65536 and len(np.unique(keys)) == 65536


def test_brute_force_under_linux_default_uses_conf1_in_segment_0_only():
    """conf1 reaches segment 0 only: other segments go through their MCFG windows."""
    a = plan_scan(multi_segment(2), "brute-force", "linux-x86-default").accesses
    assert (a["mech"][a["segment"] == 0] == CONF1).all()
    assert (a["mech"][a["segment"] == 1] == MMCONFIG).all()


@pytest.mark.parametrize("mechanism, dwords", [("mmconfig", 1024), ("conf1", 64)])
def test_full_dump_covers_every_dword_of_256_functions(q35, mechanism, dwords):
    a = plan_scan(q35, "full-dump", mechanism, max_buses=1).accesses
    assert len(a) == 256 * dwords
    assert (a["bus"] == 0).all() and (a["size"] == 4).all()
    assert len(np.unique(page_keys(a))) == 256
    per_fn = a[(a["dev"] == 7) & (a["fn"] == 5)]
    assert sorted(per_fn["reg"].tolist()) == list(range(0, 4 * dwords, 4))


# -- firmware -----------------------------------------------------------------------------------

def test_firmware_scan_follows_multifunction_and_bridges(q35):
    """EDK2-style: fns 1-7 only of multifunction devices (02, 1f), not stopping at missing
    1f.1; every device of each bridge's secondary bus (no only_one_child())."""
    scan = plan_scan(q35, "firmware", "mmconfig")
    expected = (fns(0, range(32)) | fns(0, [2, 31], range(1, 8))
                | {Bdf(0, bus, dev, 0) for bus in (1, 2, 3, 4) for dev in range(32)})
    assert scan.touched() == expected
    assert scan.touched(holes=False) == {f.bdf for f in q35}


def test_firmware_scan_reads_holes_at_vendor_id_only(q35):
    scan = plan_scan(q35, "firmware", "mmconfig")
    holes = scan.accesses[scan.hole_mask()]
    assert set(zip(holes["reg"].tolist(), holes["size"].tolist())) == {(0, 4)}
    assert len(holes) == len(scan.touched(holes=True))


# -- random -------------------------------------------------------------------------------------

def test_random_scan_is_seeded(q35):
    one = plan_scan(q35, "random", "mmconfig", seed=7, count=2000, write_fraction=0.5).accesses
    again = plan_scan(q35, "random", "mmconfig", seed=7, count=2000, write_fraction=0.5).accesses
    other = plan_scan(q35, "random", "mmconfig", seed=8, count=2000, write_fraction=0.5).accesses
    assert np.array_equal(one, again)
    assert not np.array_equal(one, other)
    assert len(one) == 2000


def test_random_scan_makes_count_accesses_over_several_segments():
    assert len(plan_scan(multi_segment(2), "random", "mmconfig", count=5).accesses) == 5


@pytest.mark.parametrize("fraction", [0.0, 0.25, 1.0])
def test_random_scan_respects_write_fraction(q35, fraction):
    a = plan_scan(q35, "random", "mmconfig", seed=1, count=4000, write_fraction=fraction).accesses
    assert abs(a["is_write"].mean() - fraction) < 0.03
    assert (a["reg"] % 4 == 0).all() and (a["reg"] < 0x1000).all()


def test_random_scan_under_conf1_stays_below_0x100(q35):
    a = plan_scan(q35, "random", "conf1", seed=2, count=1000).accesses
    assert (a["reg"] < 0x100).all() and (a["mech"] == CONF1).all()


# -- the registry -------------------------------------------------------------------------------

def test_scan_registry_names():
    assert set(SCANS) == {"linux-boot-x86", "linux-probe", "brute-force", "full-dump", "firmware", "random"}


def test_unknown_scan_name_lists_the_scans(q35):
    with pytest.raises(ValueError, match="unknown scan 'nope'") as exc:
        scan_program(q35, "nope")
    for name in SCANS:
        assert name in str(exc.value)


def test_unknown_option_lists_the_allowed_ones(q35):
    with pytest.raises(ValueError, match=r"takes no option bogus \(it takes: count, write_fraction\)"):
        scan_program(q35, "random", bogus=1)
    with pytest.raises(ValueError, match=r"it takes: none"):
        scan_program(q35, "brute-force", max_buses=1)
    with pytest.raises(ValueError, match="cpu, last_bus, pcie_scan_all"):
        plan_scan(q35, "linux-boot-x86", pcie_scan=True)


def test_unknown_mechanism_raises(q35):
    with pytest.raises(ValueError, match="unknown mechanism"):
        plan_scan(q35, "linux-probe", "conf2")
