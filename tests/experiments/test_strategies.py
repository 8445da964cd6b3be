"""Each strategy's counters on a small topology, against values computed by hand.

The topology: the q35 default in an 8-bus MCFG window: 8 x 256 = 2,048 function pages, 12
present, 2,036 holes in 8 runs (one memslot each). The scan: brute force through MMCONFIG,
one dword per page, on a fresh VM.
"""

import pytest

from allones.errors import NoMemory
from allones.experiments.fleet import scan_events
from allones.experiments.strategies import STRATEGIES, get_strategy
from allones.pci.builders import q35_default

PAGES, PRESENT, HOLES, SLOTS = 2048, 12, 2036, 8


@pytest.fixture(scope="module")
def small():
    return q35_default().with_window(0, 8)


def brute_force(name, topology):
    strategy = get_strategy(name)
    host = strategy.make_host()
    vm = strategy.make_vm(host)
    frames = host.nr_frames
    vmm = strategy.install(vm, topology)
    run = vmm.run_scan("brute-force", "mmconfig")
    ecam, pio = scan_events(run.stats, run.pio_exits)
    return host, vm, vmm, run, ecam, host.nr_frames - frames


def test_the_small_topology_is_what_the_counts_assume(small):
    from allones.pci.holes import hole_layout
    layout = hole_layout(small)
    assert (layout.window_pages, layout.present_pages, layout.nr_memslots) == (PAGES, PRESENT, SLOTS)


def test_mmio_exits_to_userspace_once_per_access(small):
    host, vm, vmm, run, ecam, frames = brute_force("mmio", small)
    assert ecam == dict(userspace_exits=PAGES, kernel_exits=0, ept_faults=0, prefaulted=0, tlb_hits=0)
    assert vmm.slots == [] and frames == 0


def test_pci_hole_emulates_hole_reads_in_kvm(small):
    host, vm, vmm, run, ecam, frames = brute_force("pci-hole", small)
    assert ecam["kernel_exits"] == HOLES and ecam["userspace_exits"] == PRESENT
    assert ecam["ept_faults"] == 0 and host.nr_frames == 0 and len(vmm.slots) == SLOTS


@pytest.mark.parametrize("name", ["filled", "filled-ksm"])
def test_filled_maps_a_page_per_hole_per_vm(small, name):
    host, vm, vmm, run, ecam, frames = brute_force(name, small)
    assert frames == HOLES                              # hole pages x 4 KiB of this VM's memory
    assert ecam["ept_faults"] == HOLES and ecam["userspace_exits"] == PRESENT


def test_filled_thp_maps_2m_leaves_where_aligned(small):
    host, vm, vmm, run, ecam, frames = brute_force("filled-thp", small)
    assert run.stats["mapped_2m"] > 0 and ecam["ept_faults"] < HOLES
    assert ecam["userspace_exits"] == PRESENT and run.hole_mismatches == 0


def test_memfd_alias_costs_one_page_and_a_vma_per_hole(small):
    host, vm, vmm, run, ecam, frames = brute_force("memfd-alias", small)
    assert frames == 1 and host.nr_vmas == HOLES
    assert ecam["ept_faults"] == HOLES and ecam["userspace_exits"] == PRESENT


def test_memfd_alias_fails_past_max_map_count_as_mmap_would():
    """65,524 aliases for a 256-bus window plus the VMM's own mappings exceed 65,530."""
    strategy = get_strategy("memfd-alias")
    host = strategy.make_host()
    vm = strategy.make_vm(host)
    with pytest.raises(NoMemory, match="max_map_count"):
        strategy.install(vm, q35_default())
    assert len(vm.memslots()) == 0 and host.nr_vmas == 0


def test_allones_faults_once_per_hole_page_and_allocates_nothing(small):
    host, vm, vmm, run, ecam, frames = brute_force("allones", small)
    assert frames == 0 and host.nr_frames == 1                 # the one shared page
    assert ecam["ept_faults"] == HOLES and ecam["userspace_exits"] == PRESENT


def test_allones_prefault_faults_once_per_slot(small):
    host, vm, vmm, run, ecam, frames = brute_force("allones-prefault", small)
    assert ecam["ept_faults"] == SLOTS and ecam["prefaulted"] == HOLES - SLOTS
    assert ecam["tlb_hits"] == HOLES - SLOTS                   # the rest of each slot was mapped


def test_allones_sharedpt_and_hugepage_use_few_tables(small):
    _, vm4k, *_ = brute_force("allones", small)
    for name in ("allones-sharedpt", "allones-hugepage"):
        host, vm, vmm, run, ecam, frames = brute_force(name, small)
        assert sum(vm.table_pages()) < sum(vm4k.table_pages())
        assert ecam["ept_faults"] < HOLES and run.hole_mismatches == 0
    assert frames == 512                                       # the shared 2 MiB all-ones page


def test_every_strategy_answers_every_hole_read_with_all_ones(small):
    for name in STRATEGIES:
        run = brute_force(name, small)[3]
        assert run.hole_mismatches == 0 and run.present_mismatches == 0, name


def test_unknown_strategy_names_the_known_ones():
    with pytest.raises(ValueError, match="allones-prefault"):
        get_strategy("allones-turbo")
