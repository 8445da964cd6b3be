"""The stage-2 table and the fault path: one test per rule of the access engine (VM.run).

Kernel: Linux v6.6 TDP MMU (kvm_mmu_page_fault, kvm_tdp_mmu_map, make_spte,
kvm_mmu_hugepage_adjust) with the KVM_MEM_ALLONES RFC 2/5 and 4/5, and the v2 PCI_HOLE.
"""

import numpy as np
import pytest

import allones
from allones.constants import (KVM_MEM_ALLONES, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_PCI_HOLE,
                               KVM_MEM_READONLY, PAGE_SIZE, PROT_READ)

ECAM = 0xB000_0000
HPAGE = 2 << 20


def allones_vm(host=None, npages=1024, **kwargs):
    vm = allones.VM(host or allones.Host(), **kwargs)
    vm.set_user_memory_region(1, KVM_MEM_ALLONES, ECAM, npages * PAGE_SIZE, 0)
    return vm


def pages(first, n):
    return first + np.arange(n, dtype=np.uint64) * PAGE_SIZE


def test_allones_read_maps_shared_page_read_only_and_reads_0xff():
    vm = allones_vm()
    r = vm.run(pages(ECAM, 3), 4)
    assert r.values.tolist() == [0xFFFFFFFF] * 3
    assert r.stats["faults"] == 3 and r.stats["mapped_4k"] == 3 and r.stats["exits_mmio"] == 0
    assert vm.walk(ECAM >> 12) == (vm.host.allones_pfn, False, 1)


def test_second_pass_hits_the_table():
    vm = allones_vm()
    vm.run(pages(ECAM, 8), 4)
    r = vm.run(pages(ECAM, 8), 4)
    assert r.stats["tlb_hits"] == 8 and r.stats["faults"] == 0 and r.stats["memslot_lookups"] == 0


@pytest.mark.parametrize("size,expect", [(1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF), (8, 2**64 - 1)])
def test_allones_read_sizes(size, expect):
    assert allones_vm().read(ECAM + 8, size) == expect


def test_allones_write_exits_and_is_discarded():
    """RFC __gfn_to_pfn_memslot: a write fault is KVM_PFN_NOSLOT: KVM_EXIT_MMIO; the VMM drops it."""
    vm = allones_vm()
    vm.read(ECAM)
    r = vm.run([ECAM], 4, True, [0x1234], record_exits=True)
    assert r.stats["exits_mmio"] == 1 and r.stats["faults"] == 1
    assert r.exits.tolist() == [(0, ECAM, 0x1234, 4, True)]
    assert vm.read(ECAM) == 0xFFFFFFFF
    assert vm.walk(ECAM >> 12) == (vm.host.allones_pfn, False, 1)   # still mapped read-only


def test_no_slot_every_access_exits():
    vm = allones.VM(allones.Host())
    r = vm.run(pages(ECAM, 4).repeat(2), 2, record_exits=True)
    assert r.stats["exits_mmio"] == 8 and r.stats["faults"] == 8 and vm.table_pages() == (0, 0, 0, 1)
    assert r.values.tolist() == [0xFFFF] * 8 and len(r.exits) == 8


def test_readonly_slot_read_maps_write_exits(host):
    vm = allones.VM(host)
    rom = host.mmap(PAGE_SIZE, fill=0x5A, prot=PROT_READ)
    vm.set_user_memory_region(0, KVM_MEM_READONLY, 0, PAGE_SIZE, rom.hva)
    assert vm.read(0, 2) == 0x5A5A
    r = vm.run([4], 4, True, [7])
    assert r.stats["exits_mmio"] == 1 and vm.read(4) == 0x5A5A5A5A


def test_normal_slot_reads_and_writes_real_memory(host, ram):
    vm = allones.VM(host)
    vm.set_user_memory_region(0, 0, 0, ram.size, ram.hva)
    vm.write(0x1008, 0x1122334455667788, 8)
    assert bytes(memoryview(ram)[0x1008:0x1010]) == (0x1122334455667788).to_bytes(8, "little")
    assert vm.read(0x100A, 2) == 0x5566
    assert vm.walk(1) == (ram.base_pfn + 1, True, 1)


def test_unaligned_access_inside_a_page_is_allowed(host, ram):
    vm = allones.VM(host)
    vm.set_user_memory_region(0, 0, 0, ram.size, ram.hva)
    vm.write(0x0FFD, 0xABCD, 2)
    assert vm.read(0x0FFD, 2) == 0xABCD and vm.read(0x0FFE, 1) == 0xAB


@pytest.mark.parametrize("gpa,size", [(0xFFD, 4), (0xFFF, 2), (0x1FF9, 8)])
def test_page_crossing_access_is_refused_and_nothing_runs(gpa, size):
    vm = allones_vm()
    with pytest.raises(ValueError, match="crosses a page"):
        vm.run([ECAM, gpa], [4, size])
    assert vm.table_pages() == (0, 0, 0, 1)


@pytest.mark.parametrize("sizes", [3, 0, 16])
def test_bad_sizes_are_refused(sizes):
    with pytest.raises(ValueError):
        allones_vm().run([ECAM], sizes)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        allones_vm().run([ECAM, ECAM], [4, 4, 4])


def test_missing_host_memory_stops_the_run_with_efault(host):
    """hva_to_pfn() finds no VMA: KVM_PFN_ERR_FAULT, and KVM_RUN returns EFAULT."""
    vm = allones_vm(host)
    vm.set_user_memory_region(0, 0, 0, PAGE_SIZE, 0x7000_0000_0000)
    with pytest.raises(allones.BadAddress) as exc:
        vm.run([ECAM, 0, ECAM + PAGE_SIZE], 4)
    assert exc.value.errno == 14 and exc.value.index == 1
    assert exc.value.stats["accesses"] == 1 and exc.value.stats["faults"] == 2


def test_pci_hole_reads_are_emulated_and_map_nothing():
    host = allones.Host(bit2="pci_hole")
    vm = allones.VM(host)
    vm.set_user_memory_region(1, KVM_MEM_PCI_HOLE, ECAM, 16 * PAGE_SIZE, 0)
    r = vm.run(pages(ECAM, 16).repeat(2), 4)
    assert r.stats["exits_emulated"] == 32 and r.stats["exits_mmio"] == 0
    assert r.values.tolist() == [0xFFFFFFFF] * 32 and vm.table_pages() == (0, 0, 0, 1)
    assert vm.run([ECAM], 4, True).stats["exits_mmio"] == 1


def test_exit_handler_answers_only_its_gfns():
    vm = allones.VM(allones.Host())
    seen = []

    def device(gpa, size, is_write, value):
        seen.append((gpa, size, is_write, value))
        return 0x8086

    r = vm.run([ECAM, ECAM + PAGE_SIZE, ECAM + 2], 2, on_mmio=device, mmio_gfns=[ECAM >> 12])
    assert r.values.tolist() == [0x8086, 0xFFFF, 0x8086]
    assert seen == [(ECAM, 2, False, 0), (ECAM + 2, 2, False, 0)]


def test_exit_handler_may_change_memslots_between_exits():
    """Userspace handles an exit outside KVM_RUN: a memslot made there serves the next access."""
    vm = allones.VM(allones.Host())

    def add_slot(gpa, size, is_write, value):
        vm.set_user_memory_region(1, KVM_MEM_ALLONES, ECAM + PAGE_SIZE, PAGE_SIZE, 0)
        return 0

    r = vm.run([ECAM, ECAM + PAGE_SIZE], 4, on_mmio=add_slot)
    assert r.values.tolist() == [0, 0xFFFFFFFF] and r.stats["exits_mmio"] == 1


def test_whole_slot_prefault_maps_the_slot_at_first_fault():
    vm = allones_vm(npages=65536, prefault="whole-slot")
    r = vm.run(pages(ECAM, 65536), 4)
    assert r.stats["faults"] == 1 and r.stats["prefaulted"] == 65535 and r.stats["tlb_hits"] == 65535
    assert vm.table_pages() == (128, 1, 1, 1)
    # The RFC's loop had one MMU-cache top-up (4 pages) for 130 new table pages.
    assert r.stats["rfc_topup_shortfall"] == 130 - 4


@pytest.mark.parametrize("allones_map", ["shared-pt", "hugepage"])
def test_shared_mappings_use_one_level2_entry_per_aligned_region(allones_map):
    host = allones.Host()
    vm = allones_vm(host, npages=65536 + 3, allones_map=allones_map)   # 128 regions + 3 pages
    r = vm.run(pages(ECAM, 65536 + 3), 4)
    assert r.stats["mapped_2m"] == 128 and r.stats["mapped_4k"] == 3
    assert vm.table_pages() == (1, 2, 1, 1)   # the 3 pages start the next GiB: a second L2
    assert r.values.tolist() == [0xFFFFFFFF] * (65536 + 3)
    pfn, writable, level = vm.walk((ECAM >> 12) + 513)
    assert not writable
    if allones_map == "hugepage":
        assert (pfn, level) == (host.allones_hugepage.base_pfn + 1, 2)
        assert host.nr_frames == 1 + 512
    else:
        assert (pfn, level) == (host.allones_pfn, 1) and host.shared_pt_pages == 1


def test_shared_mappings_are_made_once_per_host_on_first_use():
    host = allones.Host()
    vms = [allones_vm(host, npages=512, allones_map="hugepage") for _ in range(3)]
    assert host.allones_hugepage is None and host.nr_frames == 1
    assert all(vm.read(ECAM) == 0xFFFFFFFF for vm in vms)
    assert host.nr_frames == 1 + 512
    assert len({vm.walk(ECAM >> 12) for vm in vms}) == 1


def test_shared_pt_is_counted_once_used():
    host = allones.Host()
    vm = allones_vm(host, npages=511, allones_map="shared-pt")    # no whole 2 MiB region
    vm.read(ECAM)
    assert host.shared_pt_pages == 0
    allones_vm(host, npages=512, allones_map="shared-pt").read(ECAM)
    assert host.shared_pt_pages == 1


def test_thp_backing_gives_2m_leaves(host):
    vm = allones.VM(host)
    mem = host.mmap(2 * HPAGE, fill=0xFF, thp=True)
    assert mem.hva % HPAGE == 0 and mem.base_pfn % 512 == 0
    vm.set_user_memory_region(0, KVM_MEM_READONLY, 0x4000_0000, mem.size, mem.hva)
    r = vm.run(pages(0x4000_0000, 1024), 4)
    assert r.stats["faults"] == 2 and r.stats["mapped_2m"] == 2 and vm.table_pages() == (0, 1, 1, 1)
    assert vm.walk((0x4000_0000 >> 12) + 5) == (mem.base_pfn + 5, False, 2)


@pytest.mark.parametrize("why", ["unaligned gpa", "dirty logging", "no thp", "partial region"])
def test_2m_leaves_only_where_slot_alignment_and_backing_allow(host, why):
    vm = allones.VM(host)
    mem = host.mmap(2 * HPAGE, thp=why != "no thp")
    gpa = 0x4000_0000 + (PAGE_SIZE if why == "unaligned gpa" else 0)
    flags = KVM_MEM_LOG_DIRTY_PAGES if why == "dirty logging" else 0
    size = HPAGE - PAGE_SIZE if why == "partial region" else mem.size
    vm.set_user_memory_region(0, flags, gpa, size, mem.hva)
    r = vm.run([gpa], 4)
    assert r.stats["mapped_2m"] == 0 and r.stats["mapped_4k"] == 1


def test_starting_dirty_logging_write_protects_instead_of_zapping(host, ram):
    """kvm_mmu_slot_apply_flags(): reads keep hitting, only writes fault (and mark)."""
    vm = allones.VM(host)
    vm.set_user_memory_region(0, 0, 0, ram.size, ram.hva)
    vm.run(pages(0, 16), 4)
    vm.set_user_memory_region(0, KVM_MEM_LOG_DIRTY_PAGES, 0, ram.size, ram.hva)   # FLAGS_ONLY
    assert vm.walk(0) == (ram.base_pfn, False, 1)
    assert vm.run(pages(0, 16), 4).stats["tlb_hits"] == 16
    assert not vm.get_dirty_log(0).any()
    assert vm.run([0], 4, True).stats["faults"] == 1 and vm.get_dirty_log(0)[0]


def test_starting_dirty_logging_zaps_2m_leaves(host):
    vm = allones.VM(host)
    mem = host.mmap(HPAGE, thp=True)
    vm.set_user_memory_region(0, 0, 0, HPAGE, mem.hva)
    vm.read(0)
    assert vm.walk(0)[2] == 2
    vm.set_user_memory_region(0, KVM_MEM_LOG_DIRTY_PAGES, 0, HPAGE, mem.hva)
    assert vm.walk(0) is None and vm.table_pages() == (0, 0, 0, 1)


def test_delete_and_move_zap_the_old_range(host, ram):
    vm = allones.VM(host)
    vm.set_user_memory_region(0, KVM_MEM_LOG_DIRTY_PAGES, 0, ram.size, ram.hva)
    vm.run(pages(0, 16), 4)
    vm.set_user_memory_region(0, KVM_MEM_LOG_DIRTY_PAGES, 0x100000, ram.size, ram.hva)  # MOVE
    assert vm.walk(0) is None and vm.table_pages() == (0, 0, 0, 1)
    vm.run([0x100000], 4)
    vm.set_user_memory_region(0, 0, 0x100000, 0, 0)                                   # DELETE
    assert vm.walk(0x100) is None and vm.table_pages() == (0, 0, 0, 1)


def test_munmap_zaps_every_vm_mapping_of_it(host):
    mem = host.mmap(4 * PAGE_SIZE, fill=1)
    vms = [allones.VM(host) for _ in range(2)]
    for vm in vms:
        vm.set_user_memory_region(0, 0, 0, mem.size, mem.hva)
        vm.run(pages(0, 4), 4)
    host.munmap(mem.hva)
    for vm in vms:
        assert vm.walk(0) is None
        with pytest.raises(allones.BadAddress):
            vm.read(0)


def test_dirty_log_marks_writable_mappings_and_rearms(host, ram):
    vm = allones.VM(host)
    vm.set_user_memory_region(0, KVM_MEM_LOG_DIRTY_PAGES, 0, ram.size, ram.hva)
    vm.run(pages(0, 3), 4, True)
    assert vm.get_dirty_log(0).nonzero()[0].tolist() == [0, 1, 2]
    assert vm.get_dirty_log(0).sum() == 0                        # cleared
    assert vm.walk(1)[1] is False                                  # write-protected
    r = vm.run([PAGE_SIZE], 4, True)
    assert r.stats["faults"] == 1 and vm.get_dirty_log(0).nonzero()[0].tolist() == [1]


def test_dirty_log_refuses_slots_without_logging(vm, ram):
    """kvm_get_dirty_log_protect: ENOENT for no slot or no log; EINVAL out of range."""
    vm.set_user_memory_region(0, 0, 0, ram.size, ram.hva)
    for slot in (0, 5):
        with pytest.raises(allones.NotFound):
            vm.get_dirty_log(slot)
    for slot in (2 << 16, 32764):
        with pytest.raises(allones.InvalidArgument):
            vm.get_dirty_log(slot)


def test_accounting_host_counts_the_same_without_memory():
    stats = []
    for materialize in (True, False):
        host = allones.Host(materialize=materialize)
        vm = allones.VM(host)
        mem = host.mmap(64 * PAGE_SIZE, fill=0xFF)
        vm.set_user_memory_region(0, KVM_MEM_READONLY, ECAM, mem.size, mem.hva)
        r = vm.run(pages(ECAM, 64), 4)
        assert r.values.tolist() == [0xFFFFFFFF] * 64
        stats.append((r.stats, vm.table_pages(), host.nr_frames))
    assert stats[0] == stats[1]
    with pytest.raises(BufferError):
        memoryview(mem)


def test_filled_memory_fill_time_is_measured():
    host = allones.Host()
    host.mmap(256 * PAGE_SIZE, fill=0xFF)
    assert host.fill_seconds > 0
    assert allones.Host(materialize=False).fill_seconds == 0


def test_shared_page_never_writable_in_any_table():
    host = allones.Host()
    vm = allones_vm(host, npages=2048, prefault="whole-slot")
    vm.run(pages(ECAM, 2048), 4, np.arange(2048) % 2 == 0)
    for gfn in range(ECAM >> 12, (ECAM >> 12) + 2048):
        assert vm.walk(gfn) == (host.allones_pfn, False, 1)
    assert vm.table_pages() == vm.recount_table_pages()
