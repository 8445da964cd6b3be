"""linux-boot-x86: the x86-64 Linux 6.1 boot's config accesses, against the real q35/OVMF log
and rule by rule (CPU vendor, pci=lastbus, MCFG window, mechanism)."""

from pathlib import Path

import numpy as np
import pytest

from allones.pci.access import CONF1, MMCONFIG, ConfigCycles, SpacesResponder, drive
from allones.pci.builders import q35_chipset, q35_default
from allones.pci.config_space import ConfigSpaces
from allones.pci.ecam import Bdf, Segment
from allones.pci.linux import CPUS, search_agp_bridge
from allones.pci.parsers import read_topology
from allones.pci.scans import plan_scan
from allones.pci.topology import Q35_ECAM_BASE, Bar, Function, Topology
from allones.pci.traces import parse_qemu_trace

TRACE_DIR = Path(__file__).resolve().parents[1] / "data" / "q35-ovmf-default"


@pytest.fixture(scope="module")
def real_topology():
    return read_topology(TRACE_DIR / "info_pci.txt")


@pytest.fixture(scope="module")
def logged(real_topology):
    """The kernel part of the real log, as a scan on the real topology (parsed once)."""
    return parse_qemu_trace(TRACE_DIR / "qemu-trace.log.gz").as_scan(real_topology, "kernel")


@pytest.fixture(scope="module")
def k8_boot(real_topology):
    return plan_scan(real_topology, "linux-boot-x86", "linux-x86-default", cpu="amd-k8")


def select(a, **fields):
    keep = np.ones(len(a), dtype=bool)
    for name, value in fields.items():
        keep &= a[name] == value
    return a[keep]


def peer_bridge_reads(scan):
    """pcibios_scan_specific_bus()'s 16-bit vendor reads on buses > 0, devices > 0
    (early_pci_scan_bus() also reads 16-bit vendor IDs, but of present functions only)."""
    a = scan.accesses
    return a[(a["reg"] == 0) & (a["size"] == 2) & (a["bus"] > 0) & (a["dev"] > 0)]


# -- against the real log ------------------------------------------------------------------------

def test_k8_boot_touches_the_logs_missing_conf1_functions(k8_boot, logged):
    """Every phase that reaches a hole (GART scans, northbridge probes, early quirks, probe,
    peer-bridge scan) touches exactly the missing functions the real kernel touched."""
    expected = logged.touched(CONF1, holes=True)
    assert len(expected) == 8266
    assert k8_boot.touched(CONF1, holes=True) == expected


def test_k8_boot_reaches_no_hole_through_mmconfig(k8_boot, logged):
    assert logged.touched(MMCONFIG, holes=True) == set()
    assert k8_boot.touched(MMCONFIG, holes=True) == set()


def test_k8_boot_hole_reads_within_1_percent_of_the_log(k8_boot, logged):
    """The log has 24,772 (3 more than the model: i2c-i801's p2sb reads, a driver)."""
    model, real = k8_boot.counts()["conf1_hole_reads"], logged.counts()["conf1_hole_reads"]
    assert real == 24772
    assert abs(model - real) <= 0.01 * real


def test_k8_boot_touches_every_present_function(k8_boot, real_topology):
    assert k8_boot.touched(holes=False) == {f.bdf for f in real_topology}


# -- CPU vendor -----------------------------------------------------------------------------------

def test_intel_boot_scans_buses_1_to_255_once(real_topology):
    """No GART code (early_gart_iommu_check / gart_iommu_hole_init are AMD K8 only): only
    pcibios_fixup_peer_bridges() goes past bus 0, one 16-bit vendor read per device."""
    a = plan_scan(real_topology, "linux-boot-x86", cpu="intel").accesses
    beyond = a[a["bus"] > 0]
    mmcfg_probe = (beyond["bus"] == 0xFF) & (beyond["dev"] == 0) & (beyond["size"] == 4)
    assert np.count_nonzero(mmcfg_probe) == 1          # pci_mmcfg_check_hostbridge(): ff:00.0
    peer = beyond[~mmcfg_probe]
    assert len(peer) == 255 * 32
    assert set(zip(peer["reg"].tolist(), peer["size"].tolist(), peer["fn"].tolist(),
                   peer["mech"].tolist())) == {(0, 2, 0, CONF1)}
    assert len({(b, d) for b, d in zip(peer["bus"].tolist(), peer["dev"].tolist())}) == 255 * 32


def test_intel_boot_skips_the_amd_northbridge_function_3_probes(real_topology):
    """amd_nb_bus_dev_ranges[] (00:18-1f.3, fe/ff:xx.3) are read only by the GART checks."""
    touched = plan_scan(real_topology, "linux-boot-x86", cpu="intel").touched()
    assert not {b for b in touched if b.fn == 3 and b.bus in (0xFE, 0xFF)}
    assert not {b for b in touched if b.fn == 3 and b.bus == 0 and 0x18 <= b.dev <= 0x1E}
    k8 = plan_scan(real_topology, "linux-boot-x86", cpu="amd-k8").touched()
    assert {Bdf(0, bus, dev, 3) for bus in (0xFE, 0xFF) for dev in range(32)} <= k8


@pytest.mark.parametrize("cpu", CPUS)
def test_extapicid_reads_only_on_amd(real_topology, cpu):
    """early_init_amd() and identify_boot_cpu() read 00:18.0 0x68 on AMD only."""
    a = plan_scan(real_topology, "linux-boot-x86", cpu=cpu).accesses
    reads = select(a, bus=0, dev=0x18, fn=0, reg=0x68)
    assert len(reads) == (2 if cpu.startswith("amd") else 0)
    assert (reads["mech"] == CONF1).all()


@pytest.mark.parametrize("cpu, gart_reads", [("intel", 0), ("amd", 0), ("amd-k8", 2 * 255 * 32)])
def test_gart_search_agp_bridge_only_on_k8(real_topology, cpu, gart_reads):
    """search_agp_bridge() reads each bus' devices' class dword, twice per boot on K8."""
    a = plan_scan(real_topology, "linux-boot-x86", cpu=cpu).accesses
    assert len(a[(a["bus"] > 0) & (a["reg"] == 0x08)]) == gart_reads


def test_unknown_cpu_raises(real_topology):
    with pytest.raises(ValueError, match="unknown cpu 'via'"):
        plan_scan(real_topology, "linux-boot-x86", cpu="via")


# -- pcibios_last_bus -------------------------------------------------------------------------------

@pytest.mark.parametrize("last_bus", [1, 10, 200])
def test_last_bus_limits_the_peer_bridge_scan(real_topology, last_bus):
    """pci=lastbus=N: pcibios_fixup_peer_bridges() scans buses 0..N (bus 0 exists already)."""
    peer = peer_bridge_reads(plan_scan(real_topology, "linux-boot-x86", last_bus=last_bus))
    assert set(peer["bus"].tolist()) == set(range(1, last_bus + 1))


def test_last_bus_0_means_no_peer_bridge_scan(real_topology):
    """pcibios_fixup_peer_bridges() returns when pcibios_last_bus <= 0."""
    assert len(peer_bridge_reads(plan_scan(real_topology, "linux-boot-x86", last_bus=0))) == 0


def test_mcfg_end_bus_is_the_default_last_bus():
    """__pci_mmcfg_init(): pcibios_last_bus = segment 0's MCFG end bus (63 here)."""
    topo = Topology(q35_chipset(), [Segment(Q35_ECAM_BASE, end_bus=63)])
    peer = peer_bridge_reads(plan_scan(topo, "linux-boot-x86"))
    assert set(peer["bus"].tolist()) == set(range(1, 64))
    same = peer_bridge_reads(plan_scan(q35_default().with_window(0, 64), "linux-boot-x86"))
    assert set(same["bus"].tolist()) == set(range(5, 64))


def test_peer_bridge_scan_skips_buses_behind_bridges():
    """pcibios_scan_specific_bus(): pci_find_bus() finds the root ports' buses 1-4."""
    peer = peer_bridge_reads(plan_scan(q35_default(), "linux-boot-x86"))
    assert set(peer["bus"].tolist()) == set(range(5, 256))


# -- mechanism ------------------------------------------------------------------------------------

def test_mmconfig_mechanism_moves_probe_and_peer_scan_only(real_topology, k8_boot):
    """Early read_pci_config*() are port I/O whatever raw_pci_read() prefers: the conf1
    accesses are the early phases, a prefix identical to the default boot's; from the
    probe's first vendor read of 00:00.0 on, everything is MMCONFIG."""
    a = plan_scan(real_topology, "linux-boot-x86", "mmconfig", cpu="amd-k8").accesses
    early = np.count_nonzero(a["mech"] == CONF1)
    assert (a["mech"][:early] == CONF1).all() and (a["mech"][early:] == MMCONFIG).all()
    assert np.array_equal(a[:early], k8_boot.accesses[:early])
    first = a[early]
    assert (first["bus"], first["dev"], first["fn"], first["reg"], first["size"]) == (0, 0, 0, 0, 4)
    peer = a[early:][(a[early:]["reg"] == 0) & (a[early:]["size"] == 2) & (a[early:]["bus"] > 0)]
    assert len(peer) == 255 * 32


def test_mmconfig_mechanism_keeps_the_same_hole_functions(real_topology, k8_boot):
    scan = plan_scan(real_topology, "linux-boot-x86", "mmconfig", cpu="amd-k8")
    assert scan.touched(holes=True) == k8_boot.touched(holes=True)


# -- find_cap() ----------------------------------------------------------------------------------

def test_search_agp_bridge_walks_capabilities_a_byte_at_a_time():
    """find_cap(): read_pci_config_16(STATUS), _byte(CAPABILITY_LIST), then per entry
    _byte(pos + PCI_CAP_LIST_ID) and _byte(pos + PCI_CAP_LIST_NEXT)."""
    host = Function(Bdf(0, 0, 0, 0), vendor=0x8086, device=0x29C0, class_code=0x060000,
                    bars=((0, Bar(4096)),))       # a BAR: this model gives it an MSI capability at 0x90
    topo = Topology([host])
    cycles = ConfigCycles(topo)
    a = drive(search_agp_bridge(cycles), SpacesResponder(ConfigSpaces(topo)))
    first = select(a, bus=0, dev=0, fn=0)
    assert list(zip(first["reg"].tolist(), first["size"].tolist())) == [
        (0x08, 4), (0x06, 2), (0x34, 1), (0x90, 1), (0x91, 1), (0x0E, 1)]


def test_conf1_only_boot_has_no_mmconfig_setup_and_no_peer_bridge_scan(real_topology):
    """pci=nommconf: __pci_mmcfg_init() never runs, so no pci_mmcfg_check_hostbridge() reads
    and pcibios_last_bus stays -1 (pcibios_fixup_peer_bridges() returns at once)."""
    scan = plan_scan(real_topology, "linux-boot-x86", "conf1")
    assert len(peer_bridge_reads(scan)) == 0
    assert not (scan.accesses["bus"] == 0xFF).any()      # ff:00.0 was only pci_mmcfg_probes[]
    lastbus = plan_scan(real_topology, "linux-boot-x86", "conf1", last_bus=9)
    assert len(peer_bridge_reads(lastbus)) == 9 * 31     # buses 1-9, devices 1-31


def test_peer_bridge_scan_finds_a_bus_the_probe_could_not_see():
    """A bridge at device 1 behind a root port is hidden from pci_scan_slot() (only_one_child());
    pcibios_scan_specific_bus() then finds its secondary bus as a peer bus and scans it."""
    from allones.pci.builders import root_port
    hidden = Function(Bdf(0, 1, 1, 0), vendor=0x1B36, device=0x0001, class_code=0x060400,
                      header_type=1, secondary=2, subordinate=2)
    leaf = Function(Bdf(0, 2, 0, 0), vendor=0x1AF4, device=0x1000, class_code=0x020000)
    topo = Topology(q35_chipset() + [root_port(0, 2, 0, 1, 2), hidden, leaf])
    scan = plan_scan(topo, "linux-boot-x86")
    probe = plan_scan(topo, "linux-probe")
    assert Bdf(0, 2, 0, 0) not in probe.touched()
    reads = select(scan.accesses, bus=2, dev=0, fn=0, reg=0)
    assert (reads["size"] == 2).any() and (reads["size"] == 4).any()   # found, then probed
