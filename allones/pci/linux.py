"""What Linux reads and writes in config space: the probe of drivers/pci/probe.c (v6.1) and
the x86-64 boot sequence around it.

Each function mirrors the kernel function named in its docstring, access for access where
the access decides what is touched next (vendor IDs, header types, bridges' bus numbers)
and for BAR sizing; capability searches follow pci_init_capabilities() in kind and order,
close to but not exactly in count (the real log has a few more on present functions).
"""

from __future__ import annotations

from .access import ConfigCycles
from .config_space import (PCI_BASE_ADDRESS_0, PCI_CAP_ID_EXP, PCI_CAP_ID_MSI, PCI_CAP_ID_PM,
                           PCI_CAPABILITY_LIST, PCI_COMMAND, PCI_HEADER_TYPE,
                           PCI_INTERRUPT_LINE, PCI_INTERRUPT_PIN, PCI_PRIMARY_BUS, PCI_ROM_ADDRESS,
                           PCI_ROM_ADDRESS1, PCI_STATUS, PCI_STATUS_CAP_LIST, PCI_SUBSYSTEM_VENDOR_ID,
                           PCI_BRIDGE_CONTROL, PCI_CFG_SPACE_SIZE, PCI_IO_BASE, PCI_PREF_MEMORY_BASE,
                           PCI_VENDOR_ID)
from .ecam import Bdf, NR_DEVS
from .topology import PortType, Topology

PCI_CLASS_REVISION, PCI_CLASS_DEVICE = 0x08, 0x0A
PCI_SEC_STATUS, PCI_PREF_BASE_UPPER32 = 0x1E, 0x28
PCI_CFG_SPACE_EXP_SIZE = 0x1000
PCI_COMMAND_DECODE_ENABLE = 0x3          # PCI_COMMAND_IO | PCI_COMMAND_MEMORY
PCI_COMMAND_INTX_DISABLE = 0x400
PCI_ROM_ADDRESS_MASK = 0xFFFFF800
PCI_FIND_CAP_TTL = 48
PCI_CAP_ID_VPD, PCI_CAP_ID_PCIX, PCI_CAP_ID_MSIX, PCI_CAP_ID_AF, PCI_CAP_ID_EA = 0x03, 0x07, 0x11, 0x13, 0x14
#: extended capabilities pci_init_capabilities() looks for on a PCIe function (v6.1 order:
#: ARI, SR-IOV, ATS, PRI, PASID, ACS, PTM, AER (ERR), DPC, L1SS via ASPM, DOE)
PROBE_EXT_CAPS = (0x0E, 0x10, 0x0F, 0x13, 0x1B, 0x0D, 0x1F, 0x01, 0x1D, 0x1E, 0x2E)


class Dev:
    """What the kernel remembers of a function while probing it (a slice of struct pci_dev)."""

    __slots__ = ("bdf", "hdr_type", "multifunction", "pcie_cap", "port_type", "cfg_size",
                 "bus_parent", "mmio_always_on")

    def __init__(self, bdf: Bdf, parent: Dev | None):
        self.bdf, self.bus_parent = bdf, parent
        self.hdr_type = self.pcie_cap = self.port_type = 0
        self.multifunction = self.mmio_always_on = False
        self.cfg_size = PCI_CFG_SPACE_SIZE


def probe(cycles: ConfigCycles, topology: Topology, rng, pcie_scan_all: bool = False):
    """The ACPI root bridges' scan: pci_scan_child_bus() of every root bus, in order.
    Returns the (segment, bus) of every bus it scanned."""
    scanned = set()
    for segment, bus in topology.root_buses():
        scanned |= yield from scan_child_bus(cycles, segment, bus, None, pcie_scan_all)
    return scanned


def scan_child_bus(cycles, segment, bus, bridge: Dev | None, pcie_scan_all):
    """pci_scan_child_bus_extend(): every slot, then every bridge found (pass 0 then 1).
    Returns the (segment, bus) of this bus and every bus scanned below it."""
    found, scanned = [], {(segment, bus)}
    for dev in range(NR_DEVS):
        found += yield from scan_slot(cycles, segment, bus, dev, bridge, pcie_scan_all)
    bridges = [d for d in found if d.hdr_type & 0x7F == 1]
    for pass_ in (0, 1):
        for d in bridges:
            scanned |= yield from scan_bridge(cycles, d, pass_, pcie_scan_all)
    return scanned


def only_one_child(bridge: Dev | None, pcie_scan_all: bool) -> bool:
    """only_one_child(): below a PCIe downstream port (pcie_downstream_port(): a root port, a
    switch downstream port or a PCI/PCI-X to PCIe bridge) only device 0 exists, unless
    pci=pcie_scan_all (PCI_SCAN_ALL_PCIE_DEVS)."""
    if bridge is None or not bridge.pcie_cap or pcie_scan_all:
        return False
    return bridge.port_type in (PortType.ROOT_PORT, PortType.DOWNSTREAM, PortType.PCIE_BRIDGE)


def scan_slot(cycles, segment, bus, dev, bridge, pcie_scan_all):
    """pci_scan_slot(): function 0, then next_fn(): functions 1-7 only while the last one
    found is multifunction (any function found above 0 is marked so); a missing function 0
    ends the slot (no hypervisor_isolated_pci_functions() on KVM)."""
    if dev > 0 and only_one_child(bridge, pcie_scan_all):
        return []
    found = []
    for fn in range(8):
        d = yield from scan_device(cycles, Bdf(segment, bus, dev, fn), bridge)
        if d is not None:
            if fn > 0:
                d.multifunction = True
            found.append(d)
        elif fn == 0:
            break
        if d is not None and not d.multifunction:
            break
    return found


def scan_device(cycles, bdf: Bdf, parent: Dev | None):
    """pci_scan_device(): pci_bus_read_dev_vendor_id() then pci_setup_device() and
    pci_device_add() (pci_init_capabilities)."""
    ids = yield from cycles.read(bdf, PCI_VENDOR_ID, 4)
    if ids in (0xFFFFFFFF, 0, 0x0000FFFF, 0xFFFF0000):    # PCI_POSSIBLE_ERROR() and broken boards
        return None
    dev = Dev(bdf, parent)
    yield from setup_device(cycles, dev)
    yield from init_capabilities(cycles, dev)
    return dev


def setup_device(cycles, dev: Dev):
    """pci_setup_device(): header type, PCIe port type, class, config space size, the INTx
    masking test, IRQ pin/line, BARs, subsystem IDs (the order the real log shows)."""
    dev.hdr_type = yield from cycles.read(dev.bdf, PCI_HEADER_TYPE, 1)
    dev.multifunction = bool(dev.hdr_type & 0x80)
    yield from set_pcie_port_type(cycles, dev)
    class_rev = yield from cycles.read(dev.bdf, PCI_CLASS_REVISION, 4)
    dev.mmio_always_on = class_rev >> 16 == 0x0600    # quirk_mmio_always_on(): host bridges
    yield from cfg_space_size(cycles, dev, class_rev >> 8)
    yield from intx_mask_broken(cycles, dev)
    pin = yield from cycles.read(dev.bdf, PCI_INTERRUPT_PIN, 1)      # pci_read_irq()
    if pin:
        yield from cycles.read(dev.bdf, PCI_INTERRUPT_LINE, 1)
    if dev.hdr_type & 0x7F == 1:
        yield from read_bases(cycles, dev, 2, PCI_ROM_ADDRESS1)
        yield from read_bridge_windows(cycles, dev)
    else:
        yield from read_bases(cycles, dev, 6, PCI_ROM_ADDRESS)
        yield from cycles.read(dev.bdf, PCI_SUBSYSTEM_VENDOR_ID, 2)
        yield from cycles.read(dev.bdf, PCI_SUBSYSTEM_VENDOR_ID + 2, 2)


def intx_mask_broken(cycles, dev: Dev):
    """pci_intx_mask_broken(): toggle PCI_COMMAND_INTX_DISABLE, read it back, restore."""
    orig = yield from cycles.read(dev.bdf, PCI_COMMAND, 2)
    yield from cycles.write(dev.bdf, PCI_COMMAND, 2, orig ^ PCI_COMMAND_INTX_DISABLE)
    yield from cycles.read(dev.bdf, PCI_COMMAND, 2)
    yield from cycles.write(dev.bdf, PCI_COMMAND, 2, orig)


def find_capability(cycles, dev: Dev, cap: int):
    """pci_find_capability(): status's CAP_LIST bit, the list head, then the list."""
    status = yield from cycles.read(dev.bdf, PCI_STATUS, 2)
    if not status & PCI_STATUS_CAP_LIST:
        return 0
    pos = yield from cycles.read(dev.bdf, PCI_CAPABILITY_LIST, 1)
    for _ in range(PCI_FIND_CAP_TTL):               # __pci_find_next_cap_ttl()
        if pos < 0x40:
            break
        pos &= ~3
        ent = yield from cycles.read(dev.bdf, pos, 2)
        if ent & 0xFF == 0xFF:
            break
        if ent & 0xFF == cap:
            return pos
        pos = ent >> 8
    return 0


def find_ext_capability(cycles, dev: Dev, cap: int):
    """pci_find_ext_capability(): walk from 0x100 (only with 4 KiB of config space)."""
    if dev.cfg_size <= PCI_CFG_SPACE_SIZE:
        return 0
    pos = PCI_CFG_SPACE_SIZE
    for _ in range((PCI_CFG_SPACE_EXP_SIZE - PCI_CFG_SPACE_SIZE) // 8):
        header = yield from cycles.read(dev.bdf, pos, 4)
        if header == 0 or header == 0xFFFFFFFF:
            return 0
        if header & 0xFFFF == cap:
            return pos
        pos = header >> 20 & 0xFFC
        if pos < PCI_CFG_SPACE_SIZE:
            return 0
    return 0


def set_pcie_port_type(cycles, dev: Dev):
    """set_pcie_port_type(): find the PCIe capability, read its flags and device caps."""
    pos = yield from find_capability(cycles, dev, PCI_CAP_ID_EXP)
    if not pos:
        return
    dev.pcie_cap = pos
    flags = yield from cycles.read(dev.bdf, pos + 2, 2)
    dev.port_type = flags >> 4 & 0xF
    yield from cycles.read(dev.bdf, pos + 4, 4)       # PCI_EXP_DEVCAP: max payload


def cfg_space_size(cycles, dev: Dev, class_code: int):
    """pci_cfg_space_size(): host bridges and PCIe functions try 0x100 (through MMCONFIG on
    x86), then pci_ext_cfg_is_aliased() compares it with the header (CONFIG_PCI_QUIRKS)."""
    if class_code >> 8 != 0x0600 and not dev.pcie_cap:
        pcix = yield from find_capability(cycles, dev, PCI_CAP_ID_PCIX)
        if not pcix:
            return
    status = yield from cycles.read(dev.bdf, PCI_CFG_SPACE_SIZE, 4)
    if status == 0xFFFFFFFF:
        return
    header = yield from cycles.read(dev.bdf, PCI_VENDOR_ID, 4)
    for pos in range(PCI_CFG_SPACE_SIZE, PCI_CFG_SPACE_EXP_SIZE, PCI_CFG_SPACE_SIZE):
        value = yield from cycles.read(dev.bdf, pos, 4)
        if value != header:
            dev.cfg_size = PCI_CFG_SPACE_EXP_SIZE
            return


def read_bases(cycles, dev: Dev, howmany: int, rom: int):
    """pci_read_bases(): size each BAR with __pci_read_base(), then the ROM."""
    pos = 0
    while pos < howmany:
        is64 = yield from read_base(cycles, dev, PCI_BASE_ADDRESS_0 + 4 * pos, 0xFFFFFFFF)
        pos += 2 if is64 else 1
    yield from read_base(cycles, dev, rom, PCI_ROM_ADDRESS_MASK)


def read_base(cycles, dev: Dev, reg: int, mask: int):
    """__pci_read_base(): decode off (unless mmio_always_on), save, write all-ones, read the
    size mask, restore, and the same for the upper half of a 64-bit memory BAR; decode on."""
    cmd = 0
    if not dev.mmio_always_on:
        cmd = yield from cycles.read(dev.bdf, PCI_COMMAND, 2)
        if cmd & PCI_COMMAND_DECODE_ENABLE:
            yield from cycles.write(dev.bdf, PCI_COMMAND, 2, cmd & ~PCI_COMMAND_DECODE_ENABLE)
    saved = yield from cycles.read(dev.bdf, reg, 4)
    yield from cycles.write(dev.bdf, reg, 4, saved | mask)
    sz = yield from cycles.read(dev.bdf, reg, 4)
    yield from cycles.write(dev.bdf, reg, 4, saved)
    is64 = mask == 0xFFFFFFFF and sz != 0xFFFFFFFF and sz & 0x7 == 0x4   # memory, TYPE_64
    if is64:
        saved_hi = yield from cycles.read(dev.bdf, reg + 4, 4)
        yield from cycles.write(dev.bdf, reg + 4, 4, 0xFFFFFFFF)
        yield from cycles.read(dev.bdf, reg + 4, 4)
        yield from cycles.write(dev.bdf, reg + 4, 4, saved_hi)
    if cmd & PCI_COMMAND_DECODE_ENABLE:
        yield from cycles.write(dev.bdf, PCI_COMMAND, 2, cmd)
    return is64


def read_bridge_windows(cycles, dev: Dev):
    """pci_read_bridge_windows(): do the I/O and prefetchable windows exist (a register that
    reads 0 gets a pattern written, read back, and 0 restored), and are the prefetchable
    window's upper 32 bits writable when it says it is 64-bit."""
    pmem = 0
    for reg, size, pattern in ((PCI_IO_BASE, 2, 0xE0F0), (PCI_PREF_MEMORY_BASE, 4, 0xFFE0FFF0)):
        value = yield from cycles.read(dev.bdf, reg, size)
        if value == 0:
            yield from cycles.write(dev.bdf, reg, size, pattern)
            value = yield from cycles.read(dev.bdf, reg, size)
            yield from cycles.write(dev.bdf, reg, size, 0)
        pmem = value
    if pmem & 0xF == 0x1:                                         # PCI_PREF_RANGE_TYPE_64
        upper = yield from cycles.read(dev.bdf, PCI_PREF_BASE_UPPER32, 4)
        yield from cycles.write(dev.bdf, PCI_PREF_BASE_UPPER32, 4, 0xFFFFFFFF)
        yield from cycles.read(dev.bdf, PCI_PREF_BASE_UPPER32, 4)
        yield from cycles.write(dev.bdf, PCI_PREF_BASE_UPPER32, 4, upper)


def init_capabilities(cycles, dev: Dev):
    """pci_init_capabilities(), in order: EA; MSI and MSI-X found and left disabled; PM
    (PMC, then PCI_STATUS for Immediate Readiness); VPD; the save buffers' searches (PCIe,
    PCI-X); the extended capabilities; pci_init_reset_methods() (AF, PM control)."""
    yield from find_capability(cycles, dev, PCI_CAP_ID_EA)       # pci_ea_init
    for cap, enable in ((PCI_CAP_ID_MSI, 0x0001), (PCI_CAP_ID_MSIX, 0x8000)):   # pci_msi(x)_init
        pos = yield from find_capability(cycles, dev, cap)
        if pos:
            ctrl = yield from cycles.read(dev.bdf, pos + 2, 2)
            if ctrl & enable:
                yield from cycles.write(dev.bdf, pos + 2, 2, ctrl & ~enable)
    pm = yield from find_capability(cycles, dev, PCI_CAP_ID_PM)   # pci_pm_init
    if pm:
        yield from cycles.read(dev.bdf, pm + 2, 2)                # PCI_PM_PMC
    yield from cycles.read(dev.bdf, PCI_STATUS, 2)                # PCI_STATUS_IMM_READY
    yield from find_capability(cycles, dev, PCI_CAP_ID_VPD)      # pci_vpd_init
    for cap in (PCI_CAP_ID_EXP, PCI_CAP_ID_PCIX):                 # pci_allocate_cap_save_buffers
        yield from find_capability(cycles, dev, cap)
    for cap in PROBE_EXT_CAPS:
        if cap == 0x0E and not dev.multifunction:
            continue                                               # ARI only matters then
        yield from find_ext_capability(cycles, dev, cap)
    yield from find_capability(cycles, dev, PCI_CAP_ID_AF)       # pci_af_flr()
    if pm:
        yield from cycles.read(dev.bdf, pm + 4, 2)                # pci_pm_reset(): PCI_PM_CTRL


def scan_bridge(cycles, dev: Dev, pass_: int, pcie_scan_all: bool):
    """pci_scan_bridge_extend() for a bridge firmware already numbered: pass 0 reads its bus
    numbers, quiets master-abort reporting and scans the secondary bus; pass 1 rereads; both
    clear the secondary status and restore the bridge control. Returns the buses scanned."""
    buses = yield from cycles.read(dev.bdf, PCI_PRIMARY_BUS, 4)
    bctl = yield from cycles.read(dev.bdf, PCI_BRIDGE_CONTROL, 2)
    yield from cycles.write(dev.bdf, PCI_BRIDGE_CONTROL, 2, bctl & ~0x20)   # ~MASTER_ABORT
    secondary, scanned = buses >> 8 & 0xFF, set()
    if pass_ == 0 and secondary > dev.bdf.bus:
        scanned = yield from scan_child_bus(cycles, dev.bdf.segment, secondary, dev, pcie_scan_all)
    yield from cycles.write(dev.bdf, PCI_SEC_STATUS, 2, 0xFFFF)
    yield from cycles.write(dev.bdf, PCI_BRIDGE_CONTROL, 2, bctl)
    return scanned


# -- the x86-64 boot ---------------------------------------------------------------------------
#
# Phases in the order a 6.1 kernel runs them (checked against the q35/OVMF trace in
# tests/data: see tests/pci/test_boot_matches_trace.py). `early=True` accesses are
# arch/x86/pci/early.c's read_pci_config*(): port I/O whatever the mechanism.

CPUS = ("intel", "amd", "amd-k8")
PCI_CLASS_BRIDGE_HOST, PCI_CLASS_BRIDGE_OTHER = 0x0600, 0x0680
PCI_CAP_ID_AGP = 0x02
#: arch/x86/kernel/amd_nb.c: amd_nb_bus_dev_ranges[] (bus, first dev, dev limit)
AMD_NB_BUS_DEV_RANGES = ((0x00, 0x18, 0x20), (0xFF, 0x00, 0x20), (0xFE, 0x00, 0x20))
#: arch/x86/pci/mmconfig-shared.c: pci_mmcfg_probes[] (bus, devfn) in order
MMCFG_PROBES = ((0, 0), (0, 0), (0, 0x18 << 3), (0xFF, 0), (0, 0))


def boot_x86(cycles, topology: Topology, rng, cpu: str = "intel", last_bus: int | None = None,
             pcie_scan_all: bool = False):
    """What an x86-64 Linux 6.1 guest does to config space from power-on to a probed PCI tree.

    cpu: "intel", "amd" (family 0x17+: no GART), or "amd-k8" (family 0xf, QEMU's default
    qemu64 model, which also runs the GART aperture checks: two "poor man's" scans of all
    256 buses through search_agp_bridge()).
    last_bus: pci=lastbus=N; by default pcibios_last_bus is segment 0's MCFG end bus, or -1
    (no peer-bridge scan) under the "conf1" mechanism, which is pci=nommconf: no MMCONFIG
    setup at all (__pci_mmcfg_init() never runs, nor pci_mmcfg_check_hostbridge()).
    pcie_scan_all: pci=pcie_scan_all.
    The mechanism given to the scan chooses raw_pci_read()'s path: "linux-x86-default"
    (conf1 below 0x100), or "mmconfig" (MMCONFIG preferred for every access); early
    accesses stay port I/O either way.
    """
    if cpu not in CPUS:
        raise ValueError(f"unknown cpu {cpu!r}; one of {', '.join(CPUS)}")
    amd, k8 = cpu.startswith("amd"), cpu == "amd-k8"
    if amd:
        yield from cycles.read(Bdf(0, 0, 0x18, 0), 0x68, 4, early=True)   # early_init_amd(): ExtAPICID
    yield from cycles.read(Bdf(0, 0, 2, 0), PCI_VENDOR_ID, 2, early=True)  # snb_gfx_workaround_needed()
    if k8:
        yield from gart_aperture_check(cycles)                            # early_gart_iommu_check()
    yield from cycles.read(Bdf(0, 0, 0x1F, 0), PCI_VENDOR_ID, 4, early=True)   # is_vsmp_box()
    yield from find_northbridge(cycles)                                   # amd_numa_init(), no SRAT
    yield from early_pci_scan_bus(cycles, 0)                              # early_quirks()
    if k8:
        yield from gart_aperture_check(cycles)                            # gart_iommu_hole_init()
    if amd:
        yield from cycles.read(Bdf(0, 0, 0x18, 0), 0x68, 4, early=True)   # identify_boot_cpu()
        for bus, dev in ((0, 0x18), (0, 0x18), (0xFF, 0), (0, 0x18), (0, 0x18)):   # amd_bus.c
            yield from cycles.read(Bdf(0, bus, dev, 0), PCI_VENDOR_ID, 4, early=True)
    mmconf = cycles.mechanism != "conf1"
    if mmconf:
        for bus, devfn in MMCFG_PROBES:                                   # pci_mmcfg_check_hostbridge()
            yield from cycles.read(Bdf(0, bus, devfn >> 3, devfn & 7), PCI_VENDOR_ID, 4, early=True)
    scanned = yield from probe(cycles, topology, rng, pcie_scan_all)      # ACPI root bridges
    if last_bus is None:
        seg0 = [s for s in topology.segments if s.segment == 0]
        last_bus = seg0[0].end_bus if mmconf and seg0 else -1
    yield from fixup_peer_bridges(cycles, {b for s, b in scanned if s == 0}, last_bus, pcie_scan_all)


def search_agp_bridge(cycles):
    """arch/x86/kernel/aperture_64.c: search_agp_bridge(): class of every function of every
    bus (a function loop stops at the first missing function or a single-function device);
    host bridges get an AGP capability search (find_cap())."""
    for bus in range(256):
        for dev in range(NR_DEVS):
            for fn in range(8):
                bdf = Bdf(0, bus, dev, fn)
                class_rev = yield from cycles.read(bdf, PCI_CLASS_REVISION, 4, early=True)
                if class_rev == 0xFFFFFFFF:
                    break
                if class_rev >> 16 in (PCI_CLASS_BRIDGE_HOST, PCI_CLASS_BRIDGE_OTHER):
                    yield from _early_find_cap(cycles, bdf, PCI_CAP_ID_AGP)
                header = yield from cycles.read(bdf, PCI_HEADER_TYPE, 1, early=True)
                if not header & 0x80:
                    break


def _early_find_cap(cycles, bdf, cap):
    """aperture_64.c: find_cap(): status's CAP_LIST bit, the list head, then per entry its
    ID byte and (if not the one sought) its next-pointer byte."""
    status = yield from cycles.read(bdf, PCI_STATUS, 2, early=True)
    if not status & PCI_STATUS_CAP_LIST:
        return 0
    pos = yield from cycles.read(bdf, PCI_CAPABILITY_LIST, 1, early=True)
    for _ in range(PCI_FIND_CAP_TTL):
        if pos < 0x40:
            break
        pos &= ~3
        cap_id = yield from cycles.read(bdf, pos, 1, early=True)
        if cap_id == 0xFF:
            break
        if cap_id == cap:
            return pos
        pos = yield from cycles.read(bdf, pos + 1, 1, early=True)
    return 0


def gart_aperture_check(cycles):
    """early_gart_iommu_check() / gart_iommu_hole_init() on a GART CPU: search_agp_bridge(),
    then function 3 (the northbridge's misc device) of each amd_nb_bus_dev_ranges[] slot."""
    yield from search_agp_bridge(cycles)
    for bus, first, limit in AMD_NB_BUS_DEV_RANGES:
        for dev in range(first, limit):
            yield from cycles.read(Bdf(0, bus, dev, 3), PCI_VENDOR_ID, 4, early=True)


def find_northbridge(cycles):
    """arch/x86/mm/amdtopology.c: find_northbridge(): function 0 of every device on bus 0,
    looking for an AMD K8/10h/11h northbridge whose function 1 matches too."""
    for dev in range(NR_DEVS):
        ids = yield from cycles.read(Bdf(0, 0, dev, 0), PCI_VENDOR_ID, 4, early=True)
        if ids in (0x1100_1022, 0x1200_1022, 0x1300_1022):
            ids1 = yield from cycles.read(Bdf(0, 0, dev, 1), PCI_VENDOR_ID, 4, early=True)
            if ids1 in (0x1101_1022, 0x1201_1022, 0x1301_1022):
                return


def early_pci_scan_bus(cycles, bus):
    """arch/x86/kernel/early-quirks.c: early_pci_scan_bus(): check_dev_quirk() per function:
    class (0xffff: stop this device), vendor, device, header type; bridges' secondary bus
    scanned recursively; functions 1-7 only on multifunction devices."""
    for dev in range(NR_DEVS):
        for fn in range(8):
            bdf = Bdf(0, bus, dev, fn)
            cls = yield from cycles.read(bdf, PCI_CLASS_DEVICE, 2, early=True)
            if cls == 0xFFFF:
                break
            yield from cycles.read(bdf, PCI_VENDOR_ID, 2, early=True)
            yield from cycles.read(bdf, PCI_VENDOR_ID + 2, 2, early=True)
            header = yield from cycles.read(bdf, PCI_HEADER_TYPE, 1, early=True)
            if header & 0x7F == 1:
                sec = yield from cycles.read(bdf, PCI_PRIMARY_BUS + 1, 1, early=True)
                if sec > bus:
                    yield from early_pci_scan_bus(cycles, sec)
            if not header & 0x80:
                break


def fixup_peer_bridges(cycles, known: set[int], last_bus: int, pcie_scan_all):
    """arch/x86/pci/legacy.c: pcibios_fixup_peer_bridges(): every bus of segment 0 up to
    pcibios_last_bus that no scan has found (not in `known`) gets
    pcibios_scan_specific_bus(): the vendor ID (16 bits, through raw_pci_read()) of function 0
    of each device until one answers; then that bus is scanned as a new root. Nothing when
    pcibios_last_bus is not in 1..255."""
    if not 0 < last_bus <= 0xFF:
        return
    known = set(known)
    for bus in range(last_bus + 1):
        if bus in known:
            continue
        for dev in range(NR_DEVS):
            vendor = yield from cycles.read(Bdf(0, bus, dev, 0), PCI_VENDOR_ID, 2)
            if vendor not in (0xFFFF, 0x0000):
                known |= {b for _, b in (yield from scan_child_bus(cycles, 0, bus, None, pcie_scan_all))}
                break
