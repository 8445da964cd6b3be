"""The cases of tools/testing/selftests/kvm/set_memory_region_test.c that a memslot model can run.

The selftest's guest reads become translations: a gfn that "reads 0 from memory" has a pfn,
one that "exits with MMIO" has KVM_PFN_NOSLOT. Constants are the selftest's own.
"""

import errno

import pytest

import allones
from allones.constants import (KVM_CAP_NR_MEMSLOTS, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
                               KVM_PFN_NOSLOT, PAGE_SIZE)

MEM_REGION_GPA = 0xC0000000
MEM_REGION_SIZE = 0x200000
MEM_REGION_SLOT = 10
MEM_REGION_GFN = MEM_REGION_GPA >> 12


@pytest.fixture
def region(host, vm):
    """The selftest's memslot 10: 2 MiB at 0xc0000000, plus slot 0 for the guest's code."""
    backing = host.mmap(MEM_REGION_SIZE + PAGE_SIZE)
    low = host.mmap(MEM_REGION_SIZE)
    vm.set_user_memory_region(0, 0, 0, MEM_REGION_SIZE, low.hva)
    vm.set_user_memory_region(MEM_REGION_SLOT, 0, MEM_REGION_GPA, MEM_REGION_SIZE, backing.hva)
    return vm, backing


def test_move_memory_region(region):
    """test_move_memory_region: move slot 10 down by a page and back; during the move the
    old first gfn is backed by the slot's second page, the page below reads memory."""
    vm, backing = region
    vm.set_user_memory_region(MEM_REGION_SLOT, 0, MEM_REGION_GPA - PAGE_SIZE, MEM_REGION_SIZE,
                              backing.hva)
    assert vm.gfn_to_hva(MEM_REGION_GFN) == backing.hva + PAGE_SIZE
    assert vm.gfn_to_hva(MEM_REGION_GFN - 1) == backing.hva
    vm.set_user_memory_region(MEM_REGION_SLOT, 0, MEM_REGION_GPA, MEM_REGION_SIZE, backing.hva)
    assert vm.gfn_to_hva(MEM_REGION_GFN) == backing.hva
    assert vm.gfn_to_pfn(MEM_REGION_GFN - 1) == (KVM_PFN_NOSLOT, False)


def test_delete_memory_region(region):
    """test_delete_memory_region: delete slot 10 (reads become MMIO), re-add it (reads hit
    memory again), delete it and slot 0."""
    vm, backing = region
    vm.set_user_memory_region(MEM_REGION_SLOT, 0, MEM_REGION_GPA, 0, 0)
    assert vm.gfn_to_pfn(MEM_REGION_GFN) == (KVM_PFN_NOSLOT, False)
    vm.set_user_memory_region(MEM_REGION_SLOT, 0, MEM_REGION_GPA, MEM_REGION_SIZE, backing.hva)
    assert vm.gfn_to_pfn(MEM_REGION_GFN)[0] == backing.base_pfn
    vm.set_user_memory_region(MEM_REGION_SLOT, 0, MEM_REGION_GPA, 0, 0)
    vm.set_user_memory_region(0, 0, 0, 0, 0)
    assert len(vm.memslots()) == 0
    assert vm.gfn_to_pfn(0) == (KVM_PFN_NOSLOT, False)


def test_zero_memory_regions(vm):
    """test_zero_memory_regions: a VM with no memslots; every gfn is NOSLOT."""
    assert len(vm.memslots()) == 0
    assert vm.gfn_to_pfn(0) == (KVM_PFN_NOSLOT, False)


@pytest.mark.parametrize("bit", [b for b in range(32) if b != 2])
def test_invalid_memory_region_flags(vm, bit):
    """test_invalid_memory_region_flags: slot 0, gpa 0, 2 MiB, hva NULL: every bit other
    than LOG_DIRTY_PAGES and READONLY is EINVAL. (Bit 2 is ALLONES here: it needs hva NULL,
    which this call has, so it is valid; test_set_user_memory_region covers it.)"""
    flags = 1 << bit
    if flags in (KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY):
        vm.set_user_memory_region(0, flags, 0, MEM_REGION_SIZE, 0)
        return
    with pytest.raises(allones.InvalidArgument) as exc:
        vm.set_user_memory_region(0, flags, 0, MEM_REGION_SIZE, 0)
    assert exc.value.errno == errno.EINVAL


def test_add_max_memory_regions(host, vm):
    """test_add_max_memory_regions: KVM_CAP_NR_MEMSLOTS slots of 2 MiB at slot * 2 MiB,
    all sharing one host mapping; one more (slot id == max) fails with EINVAL."""
    max_mem_slots = vm.check_extension(KVM_CAP_NR_MEMSLOTS)
    assert max_mem_slots == 32764
    # The selftest mmaps MEM_REGION_SIZE * max_mem_slots; the model needs no memory behind it.
    hva = 0x10_0000_0000
    for slot in range(max_mem_slots):
        vm.set_user_memory_region(slot, 0, slot * MEM_REGION_SIZE, MEM_REGION_SIZE,
                                  hva + slot * MEM_REGION_SIZE)
    with pytest.raises(allones.InvalidArgument) as exc:
        vm.set_user_memory_region(max_mem_slots, 0, max_mem_slots * MEM_REGION_SIZE,
                                  MEM_REGION_SIZE, hva + max_mem_slots * MEM_REGION_SIZE)
    assert exc.value.errno == errno.EINVAL
    assert len(vm.memslots()) == max_mem_slots


def test_add_overlapping_memory_regions(region):
    """The overlap shapes of test_add_overlapping_private_memory_regions, on plain gpas:
    a slot over the front half and one over the back half of slot 10 fail with EEXIST."""
    vm, backing = region
    half = MEM_REGION_SIZE // 2
    for gpa in (MEM_REGION_GPA - half, MEM_REGION_GPA + half):
        with pytest.raises(allones.SlotOverlap) as exc:
            vm.set_user_memory_region(11, 0, gpa, MEM_REGION_SIZE, backing.hva)
        assert exc.value.errno == errno.EEXIST
