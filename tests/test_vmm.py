"""The VMM: hole memslots per backing, all-or-nothing install, and what scans cost on a VM."""

import numpy as np
import pytest

from allones import VM, Host, SlotOverlap
from allones.constants import (KVM_MEM_ALLONES, KVM_MEM_READONLY, KVM_USER_MEM_SLOTS, PAGE_SHIFT,
                               PAGE_SIZE)
from allones.pci.builders import q35_default
from allones.pci.ecam import Bdf
from allones.pci.holes import MemslotBudgetError, hole_layout
from allones.pci.scans import plan_scan
from allones.vmm import Vmm

Q35_PRESENT = 12
Q35_HOLE_PAGES = 65536 - Q35_PRESENT
Q35_RUNS = 8


@pytest.fixture(scope="module")
def q35():
    return q35_default()


def gfn(topology, bdf):
    return topology.segment(bdf.segment).gpa(bdf.bus, bdf.dev, bdf.fn) >> PAGE_SHIFT


# -- installing -----------------------------------------------------------------------------------

def test_one_memslot_per_hole_run(q35, host, vm):
    vmm = Vmm(vm, q35, "allones")
    runs = hole_layout(q35).runs
    assert len(runs) == Q35_RUNS and vmm.slots == list(range(1, Q35_RUNS + 1))
    assert len(vm.memslots()) == Q35_RUNS
    for slot, run in zip(vmm.slots, runs):
        m = vm.gfn_to_memslot(run.gpa >> PAGE_SHIFT)
        assert (m.id, m.base_gfn, m.npages, m.flags, m.userspace_addr) == (
            slot, run.gpa >> PAGE_SHIFT, run.npages, KVM_MEM_ALLONES, 0)
        assert vm.gfn_to_memslot(((run.gpa + run.size) >> PAGE_SHIFT) - 1).id == slot


def test_present_functions_pages_stay_unbacked(q35, vm):
    """Their accesses must exit to the VMM's emulation."""
    Vmm(vm, q35, "allones")
    for f in q35:
        assert vm.gfn_to_memslot(gfn(q35, f.bdf)) is None
    assert vm.gfn_to_memslot(gfn(q35, Bdf(0, 4, 0, 0))) is not None     # empty root port's bus
    assert vm.gfn_to_memslot(gfn(q35, Bdf(0, 0x80, 3, 1))) is not None


def test_filled_backing_maps_the_holes_in_read_only_memory(q35, host, vm):
    before = host.nr_frames
    vmm = Vmm(vm, q35, "filled", first_slot=10)
    assert host.nr_frames - before == Q35_HOLE_PAGES
    assert sum(m.size for m in host.mappings) == Q35_HOLE_PAGES * PAGE_SIZE
    assert vmm.slots == list(range(10, 10 + Q35_RUNS))
    m = vm.gfn_to_memslot(gfn(q35, Bdf(0, 0, 3, 0)))
    assert m.flags == KVM_MEM_READONLY and m.userspace_addr in vmm.mappings


def test_allones_backing_maps_no_memory(q35, host, vm):
    before = host.nr_frames
    Vmm(vm, q35, "allones")
    assert host.nr_frames == before and host.mappings == ()


def test_mmio_backing_installs_nothing(q35, vm):
    vmm = Vmm(vm, q35, "mmio")
    assert vmm.slots == [] and len(vm.memslots()) == 0


def test_pci_hole_backing_on_a_v2_host(q35):
    vm = VM(Host(bit2="pci_hole"))
    vmm = Vmm(vm, q35, "pci-hole")
    assert len(vm.memslots()) == Q35_RUNS
    assert all(m.flags == KVM_MEM_ALLONES and m.userspace_addr == 0 for m in vm.memslots())
    assert vmm.run_scan("brute-force", "mmconfig").hole_mismatches == 0


def test_bit2_backing_must_match_the_host(q35):
    with pytest.raises(ValueError, match="bit2='allones'"):
        Vmm(VM(Host(bit2="pci_hole")), q35, "allones")
    with pytest.raises(ValueError, match="bit2='pci_hole'"):
        Vmm(VM(Host()), q35, "pci-hole")


def test_unknown_backing_raises(q35, vm):
    with pytest.raises(ValueError, match="unknown backing 'zeros'"):
        Vmm(vm, q35, "zeros")
    assert len(vm.memslots()) == 0


@pytest.mark.parametrize("backing", ["filled", "allones"])
def test_install_is_all_or_nothing_on_overlap(q35, host, vm, backing):
    """A slot of another owner overlaps the 6th run: the 5 slots made (and their memory) go."""
    sixth = hole_layout(q35).runs[5]
    vm.set_user_memory_region(100, KVM_MEM_ALLONES, sixth.gpa, PAGE_SIZE, 0)
    frames = host.nr_frames
    with pytest.raises(SlotOverlap):
        Vmm(vm, q35, backing)
    assert [m.id for m in vm.memslots()] == [100]
    assert host.mappings == () and host.nr_frames == frames


def test_slot_ids_past_the_limit_are_a_budget_error_before_anything_changes(q35, host, vm):
    """Slot ids from first_slot would run past KVM_USER_MEM_SLOTS at the 4th run."""
    with pytest.raises(MemslotBudgetError) as err:
        Vmm(vm, q35, "filled", first_slot=KVM_USER_MEM_SLOTS - 3)
    assert err.value.budget == 3 and err.value.needed == 8
    assert len(vm.memslots()) == 0
    assert host.mappings == () and host.nr_frames == 1


def test_remove_deletes_slots_and_memory(q35, host, vm):
    vmm = Vmm(vm, q35, "filled")
    vmm.remove()
    assert len(vm.memslots()) == 0 and host.mappings == () and host.nr_frames == 1
    assert vmm.slots == [] and vmm.mappings == []
    assert vm.gfn_to_memslot(gfn(q35, Bdf(0, 9, 9, 1))) is None


def test_budget_smaller_than_the_layout_raises_and_changes_nothing(q35, host, vm):
    with pytest.raises(MemslotBudgetError) as exc:
        Vmm(vm, q35, "filled", budget=Q35_RUNS - 1)
    assert (exc.value.needed, exc.value.budget) == (Q35_RUNS, Q35_RUNS - 1)
    assert len(vm.memslots()) == 0 and host.nr_frames == 1
    assert len(Vmm(vm, q35, "allones", budget=Q35_RUNS).slots) == Q35_RUNS


# -- scans on a VM ------------------------------------------------------------------------------------

def test_brute_force_with_mmio_backing_exits_on_every_access(q35, vm):
    run = Vmm(vm, q35, "mmio").run_scan("brute-force", "mmconfig")
    assert run.stats["exits_mmio"] == 65536
    assert run.mmio_emulated == Q35_PRESENT          # only present functions reach the emulation
    assert run.hole_mismatches == run.present_mismatches == 0


def test_brute_force_with_allones_exits_only_for_present_functions(q35, vm):
    run = Vmm(vm, q35, "allones").run_scan("brute-force", "mmconfig")
    assert run.stats["exits_mmio"] == run.mmio_emulated == Q35_PRESENT
    assert run.stats["faults"] == Q35_HOLE_PAGES + Q35_PRESENT   # on demand: one per hole page
    assert run.stats["mapped_4k"] == Q35_HOLE_PAGES
    assert run.pio_exits == 0 and run.hole_mismatches == 0


def test_brute_force_whole_slot_prefault_faults_once_per_memslot(q35, host):
    run = Vmm(VM(host, prefault="whole-slot"), q35, "allones").run_scan("brute-force", "mmconfig")
    assert run.stats["faults"] == Q35_RUNS + Q35_PRESENT
    assert run.stats["prefaulted"] == Q35_HOLE_PAGES - Q35_RUNS
    assert run.hole_mismatches == 0


def test_filled_backing_answers_like_allones(q35, host):
    run = Vmm(VM(host), q35, "filled").run_scan("brute-force", "mmconfig")
    assert run.stats["exits_mmio"] == Q35_PRESENT and run.hole_mismatches == run.present_mismatches == 0


@pytest.mark.parametrize("name", ["linux-probe", "linux-boot-x86"])
def test_conf1_costs_two_port_io_exits_per_access(q35, vm, name):
    run = Vmm(vm, q35, "allones").run_scan(name)
    conf1 = run.accesses["conf1_reads"] + run.accesses["conf1_writes"]
    assert conf1 > 0 and run.pio_exits == 2 * conf1
    assert run.stats["accesses"] == run.accesses["mmconfig_reads"] + run.accesses["mmconfig_writes"]


@pytest.mark.parametrize("name, mechanism", [("linux-probe", "linux-x86-default"),
                                             ("linux-probe", "mmconfig"),
                                             ("linux-boot-x86", "linux-x86-default")])
def test_reactive_run_matches_the_planned_one(q35, name, mechanism):
    planned = Vmm(VM(Host()), q35, "allones").run_scan(name, mechanism)
    reactive = Vmm(VM(Host()), q35, "allones").run_scan(name, mechanism, reactive=True)
    assert reactive.accesses == planned.accesses
    assert reactive.stats == planned.stats
    assert (reactive.pio_exits, reactive.mmio_emulated) == (planned.pio_exits, planned.mmio_emulated)
    assert reactive.hole_mismatches == reactive.present_mismatches == 0
    reads = plan_scan(q35, name, mechanism).accesses["is_write"] == 0
    assert np.array_equal(reactive.values[reads], planned.values[reads])


def test_bar_sizing_through_mmio_exits_returns_size_masks(q35, vm):
    """Under MMCONFIG every access to a present function exits and is emulated: the read
    after __pci_read_base()'s all-ones write is the BAR's size mask."""
    run = Vmm(vm, q35, "allones").run_scan("linux-probe", "mmconfig")
    scan = plan_scan(q35, "linux-probe", "mmconfig")
    a = scan.accesses
    assert run.mmio_emulated == np.count_nonzero(~scan.hole_mask())   # holes never exit

    def sized(bus, dev, reg):
        hit = np.flatnonzero((a["bus"] == bus) & (a["dev"] == dev) & (a["fn"] == 0) & (a["reg"] == reg)
                             & (a["is_write"] == 1) & (a["value"] == 0xFFFFFFFF))
        assert len(hit) == 1
        return int(run.values[hit[0] + 1])

    assert sized(0, 1, 0x10) == 0xFF000008             # VGA: 16 MiB prefetchable
    assert sized(0, 1, 0x18) == 0xFFFFF000             # VGA: 4 KiB
    assert sized(1, 0, 0x14) == 0xFFFFF000             # virtio-net BAR1: 4 KiB
    assert sized(1, 0, 0x20) == 0xFFFFC00C             # virtio-net BAR4: 16 KiB, 64-bit prefetchable
    assert sized(1, 0, 0x24) == 0xFFFFFFFF             # ... its upper half
    assert sized(0, 2, 0x10) == 0xFFFFF000             # root port BAR0: 4 KiB
    assert run.present_mismatches == 0


def test_trace_replay_on_vmm_counts_wrong_answers(q35, vm):
    """A correct plan replayed reports no mismatch; tamper with one present read, get one."""
    scan = plan_scan(q35, "linux-probe", "mmconfig")
    vmm = Vmm(vm, q35, "allones")
    assert vmm.replay(scan).present_mismatches == 0
    acc = scan.accesses.copy()
    first_read = np.flatnonzero(acc["is_write"] == 0)[0]
    acc[first_read]["value"] ^= 1
    scan.accesses = acc
    run = Vmm(VM(Host()), q35, "allones").replay(scan)
    assert (run.present_mismatches, run.hole_mismatches) == (1, 0)


def test_an_empty_scan_replays_to_nothing(q35, vm):
    run = Vmm(vm, q35).run_scan("random", "mmconfig", count=0)
    assert run.accesses["accesses"] == 0 and run.stats == {} and run.hole_mismatches == 0


def test_each_run_starts_from_the_devices_firmware_left(q35, vm):
    """A run reboots the devices: an earlier run's BAR programming does not leak into the
    next run's answers (which plans expect from fresh config spaces)."""
    vmm = Vmm(vm, q35)
    bar = plan_scan(q35, "random", "mmconfig", count=1)
    bar.accesses[0] = (0, 0, 1, 0, 0x18, 4, 1, 0, 0xC100_0000)    # program VGA BAR2
    vmm.replay(bar)
    run = vmm.run_scan("linux-probe", "mmconfig")
    assert run.present_mismatches == 0 and run.hole_mismatches == 0


def test_linux_probe_below_a_pcie_to_pci_bridge_scans_device_0_only(host):
    """only_one_child() also holds below a PCIe-to-PCI bridge (pcie_downstream_port())."""
    from allones.pci.builders import q35_chipset, root_port
    from allones.pci.topology import Function, PortType, Topology
    bridge = Function(Bdf(0, 1, 0, 0), vendor=0x1B36, device=0x000E, class_code=0x060400,
                      header_type=1, port_type=PortType.PCIE_BRIDGE, secondary=2, subordinate=2)
    topo = Topology(q35_chipset() + [root_port(0, 2, 0, 1, 2), bridge])
    run = Vmm(VM(host), topo).run_scan("linux-probe", "mmconfig", reactive=True)
    assert run.accesses["mmconfig_hole_reads"] == plan_scan(topo, "linux-probe", "mmconfig").counts()["mmconfig_hole_reads"]
    assert Bdf(0, 2, 1, 0) not in plan_scan(topo, "linux-probe", "mmconfig").touched()
