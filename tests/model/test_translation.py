"""gfn -> hva -> pfn with the RFC's rules (__gfn_to_hva_memslot, __gfn_to_pfn_memslot, hva_to_pfn)."""

import numpy as np
import pytest

import allones
from allones.constants import (KVM_MEM_ALLONES, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_PCI_HOLE,
                               KVM_MEM_READONLY, KVM_PFN_ERR_FAULT, KVM_PFN_ERR_RO_FAULT,
                               KVM_PFN_NOSLOT, PAGE_SIZE, PROT_READ, is_error_noslot_pfn,
                               is_error_pfn, is_noslot_pfn)

ECAM = 0xB000_0000 >> 12


@pytest.fixture
def guest(host, vm, ram):
    """RAM at gfn 0 (16 pages), READONLY ROM at 0x100, all-ones ECAM (1024 pages)."""
    rom = host.mmap(4 * PAGE_SIZE, fill=0xAA, prot=PROT_READ)
    vm.set_user_memory_region(0, 0, 0, ram.size, ram.hva)
    vm.set_user_memory_region(1, KVM_MEM_READONLY, 0x100 << 12, rom.size, rom.hva)
    vm.set_user_memory_region(2, KVM_MEM_ALLONES, ECAM << 12, 1024 * PAGE_SIZE, 0)
    return vm, ram, rom


def test_allones_read_gives_the_shared_page_not_writable(host, guest):
    vm = guest[0]
    for gfn in (ECAM, ECAM + 1, ECAM + 1023):
        assert vm.gfn_to_pfn(gfn) == (host.allones_pfn, False)
        assert vm.gfn_to_hva(gfn) == host.allones_hva


def test_allones_write_is_noslot(guest):
    """RFC __gfn_to_pfn_memslot: a write fault returns KVM_PFN_NOSLOT: an MMIO exit."""
    assert guest[0].gfn_to_pfn(ECAM + 5, write_fault=True) == (KVM_PFN_NOSLOT, False)


def test_every_allones_slot_of_every_vm_shares_one_page(host):
    vms = [allones.VM(host) for _ in range(3)]
    for i, vm in enumerate(vms):
        vm.set_user_memory_region(i, KVM_MEM_ALLONES, (ECAM + i) << 12, PAGE_SIZE, 0)
    assert {vm.gfn_to_pfn(ECAM + i)[0] for i, vm in enumerate(vms)} == {host.allones_pfn}
    assert host.nr_frames == 1


def test_normal_slot_read_and_write(guest):
    vm, ram, _ = guest
    assert vm.gfn_to_pfn(3) == (ram.base_pfn + 3, True)
    assert vm.gfn_to_pfn(3, write_fault=True) == (ram.base_pfn + 3, True)
    assert vm.gfn_to_hva(3) == ram.hva + 3 * PAGE_SIZE


def test_readonly_slot_read_is_not_writable_and_write_is_ro_fault(guest):
    vm, _, rom = guest
    assert vm.gfn_to_pfn(0x101) == (rom.base_pfn + 1, False)
    assert vm.gfn_to_pfn(0x101, write_fault=True) == (KVM_PFN_ERR_RO_FAULT, False)


def test_readonly_slot_over_writable_memory_maps_read_only(host, vm, ram):
    """ "Do not map writable pfn in the readonly memslot." """
    vm.set_user_memory_region(0, KVM_MEM_READONLY, 0, ram.size, ram.hva)
    assert vm.gfn_to_pfn(0) == (ram.base_pfn, False)


def test_no_slot_is_noslot(guest):
    vm = guest[0]
    assert vm.gfn_to_pfn(0x50) == (KVM_PFN_NOSLOT, False)
    assert vm.gfn_to_pfn(0x50, write_fault=True) == (KVM_PFN_NOSLOT, False)
    with pytest.raises(allones.BadAddress):
        vm.gfn_to_hva(0x50)


def test_write_to_read_only_mapping_faults(host, vm):
    """hva_to_pfn: a write fault on a VMA without PROT_WRITE is KVM_PFN_ERR_FAULT."""
    ro = host.mmap(PAGE_SIZE, prot=PROT_READ)
    vm.set_user_memory_region(0, 0, 0, PAGE_SIZE, ro.hva)
    assert vm.gfn_to_pfn(0) == (ro.base_pfn, False)
    assert vm.gfn_to_pfn(0, write_fault=True) == (KVM_PFN_ERR_FAULT, False)


def test_unmapped_backing_faults(host, vm):
    """A slot whose hva has no host mapping (never, or no longer) is KVM_PFN_ERR_FAULT."""
    m = host.mmap(2 * PAGE_SIZE)
    vm.set_user_memory_region(0, KVM_MEM_LOG_DIRTY_PAGES, 0, 2 * PAGE_SIZE, m.hva)
    assert vm.gfn_to_pfn(1)[0] == m.base_pfn + 1
    host.munmap(m.hva)
    assert vm.gfn_to_pfn(1) == (KVM_PFN_ERR_FAULT, False)


def test_slot_cannot_name_the_shared_page_as_userspace_memory(host, vm):
    """In the kernel the page is a kernel address; here it is not among the VMM's mappings."""
    vm.set_user_memory_region(0, 0, 0, PAGE_SIZE, host.allones_hva)
    assert vm.gfn_to_pfn(0) == (KVM_PFN_ERR_FAULT, False)


def test_pci_hole_host_has_no_page_and_every_access_is_noslot():
    """v2: __gfn_to_hva_many gives KVM_HVA_ERR_BAD for PCI_HOLE slots, reads and writes."""
    host = allones.Host(bit2="pci_hole")
    vm = allones.VM(host)
    vm.set_user_memory_region(0, KVM_MEM_PCI_HOLE, ECAM << 12, PAGE_SIZE, 0)
    assert host.allones_page is None and host.nr_frames == 0
    assert vm.gfn_to_pfn(ECAM) == (KVM_PFN_NOSLOT, False)
    assert vm.gfn_to_pfn(ECAM, write_fault=True) == (KVM_PFN_NOSLOT, False)
    with pytest.raises(allones.BadAddress):
        vm.gfn_to_hva(ECAM)


@pytest.mark.parametrize("write", [False, True])
def test_translate_agrees_with_gfn_to_pfn(guest, write):
    vm = guest[0]
    gfns = np.array([0, 3, 15, 16, 0x100, 0x103, 0x104, ECAM, ECAM + 1023, ECAM + 1024, 2**52],
                    dtype=np.uint64)
    t = vm.translate(gfns, write=write)
    assert t.pfn.dtype == np.uint64 and t.writable.dtype == np.bool_
    assert [(int(p), bool(w)) for p, w in zip(t.pfn, t.writable)] == \
        [vm.gfn_to_pfn(int(g), write) for g in gfns]


def test_translate_empty(guest):
    t = guest[0].translate(np.empty(0, dtype=np.uint64))
    assert t.pfn.shape == (0,) and t.writable.shape == (0,)


def test_error_pfn_predicates():
    """include/linux/kvm_host.h: NOSLOT is not an error pfn, but is error-or-noslot."""
    assert is_noslot_pfn(KVM_PFN_NOSLOT) and not is_error_pfn(KVM_PFN_NOSLOT)
    assert is_error_noslot_pfn(KVM_PFN_NOSLOT)
    for pfn in (KVM_PFN_ERR_FAULT, KVM_PFN_ERR_RO_FAULT):
        assert is_error_pfn(pfn) and is_error_noslot_pfn(pfn) and not is_noslot_pfn(pfn)
    assert not is_error_noslot_pfn(0x100000)


def test_hva_to_gfn_memslot_inverts_gfn_to_hva(guest):
    """hva_to_gfn_memslot(gfn_to_hva(g)) == g for slots with userspace memory."""
    vm = guest[0]
    for gfn in (0, 7, 15, 0x100, 0x103):
        slot = vm.gfn_to_memslot(gfn)
        assert slot.base_gfn + ((vm.gfn_to_hva(gfn) - slot.userspace_addr) >> 12) == gfn
