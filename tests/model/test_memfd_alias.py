"""The memfd-alias strategy: a reviewer's userspace alternative to KVM_MEM_ALLONES.

The VMM makes ONE 4 KiB page of 0xff in a memfd and mmaps it again and again (one VMA per
4 KiB, every one aliasing file offset 0), then puts those contiguous aliases behind an
ordinary KVM_MEM_READONLY memslot. Every alias page is the same host frame; each costs a
VMA, so vm.max_map_count (include/linux/mm.h DEFAULT_MAX_MAP_COUNT) bounds it.
"""

import errno

import numpy as np
import pytest

import allones
from allones import _core
from allones.constants import (DEFAULT_MAX_MAP_COUNT, KVM_MEM_READONLY, KVM_PFN_ERR_FAULT,
                               KVM_PFN_ERR_RO_FAULT, PAGE_SIZE, PROT_READ, PROT_WRITE)

NPAGES = 64
ECAM = 0xB000_0000
ECAM_GFN = ECAM >> 12


def pages(first, n):
    return first + np.arange(n, dtype=np.uint64) * PAGE_SIZE


def alias_vm(host, npages=NPAGES, **kwargs):
    """A VM with one READONLY slot at ECAM over an alias mapping of `npages` pages."""
    alias = host.mmap_alias(npages * PAGE_SIZE)
    vm = allones.VM(host, **kwargs)
    vm.set_user_memory_region(1, KVM_MEM_READONLY, ECAM, alias.size, alias.hva)
    return vm, alias


def test_constant_is_the_kernel_default():
    assert DEFAULT_MAX_MAP_COUNT == 65530   # USHRT_MAX - MAPCOUNT_ELF_CORE_MARGIN


def test_alias_mapping_is_one_frame_and_npages_vmas(host):
    frames, vmas = host.nr_frames, host.nr_vmas
    m = host.mmap_alias(NPAGES * PAGE_SIZE)
    assert m.is_alias and not m.writable and not m.thp and m.materialized
    assert (m.npages, m.nr_frames, m.nr_vmas, m.fill) == (NPAGES, 1, NPAGES, 0xFF)
    assert host.nr_frames == frames + 1 and host.nr_vmas == vmas + NPAGES
    # The buffer is the one real page, apart from the reserved hvas.
    page = memoryview(m)
    assert len(page) == PAGE_SIZE and page.readonly and bytes(page) == b"\xff" * PAGE_SIZE
    assert m.data_hva not in range(m.hva, m.hva + m.size)
    # Every alias page is the same frame; past the end is nothing.
    for k in range(NPAGES):
        assert host.hva_to_pfn(m.hva + k * PAGE_SIZE + 123) == (m.base_pfn, False)
    assert host.hva_to_pfn(m.hva, write_fault=True) == (KVM_PFN_ERR_FAULT, False)
    assert host.hva_to_pfn(m.hva + m.size)[0] == KVM_PFN_ERR_FAULT
    # It took one pfn: the next mapping's frames follow it.
    assert host.mmap(PAGE_SIZE).base_pfn == m.base_pfn + 1
    assert host.nr_vmas == vmas + NPAGES + 1


def test_ordinary_mappings_count_one_vma_and_npages_frames(host):
    m = host.mmap(3 * PAGE_SIZE)
    assert not m.is_alias and (m.nr_frames, m.nr_vmas) == (3, 1) and m.data_hva == m.hva
    assert host.nr_vmas == 1 and host.nr_frames == 1 + 3


@pytest.mark.parametrize("materialize", [True, False], ids=["real", "accounting"])
@pytest.mark.parametrize("prefault", ["on-demand", "whole-slot"])
def test_readonly_slot_over_aliases_reads_0xff_from_one_frame(materialize, prefault):
    host = allones.Host(materialize=materialize)
    frames, vmas = host.nr_frames, host.nr_vmas
    vm, alias = alias_vm(host, prefault=prefault)
    assert host.nr_frames == frames + 1 and host.nr_vmas == vmas + NPAGES
    r = vm.run(pages(ECAM, NPAGES), 4)
    assert r.values.tolist() == [0xFFFFFFFF] * NPAGES
    # Whole-slot prefault is for all-ones slots only: a READONLY slot faults once a page.
    s = r.stats
    assert (s["faults"], s["mapped_4k"], s["mapped_2m"], s["prefaulted"]) == (NPAGES, NPAGES, 0, 0)
    assert s["exits_mmio"] == 0 and s["tlb_hits"] == 0
    pfn = alias.base_pfn
    for gfn in range(ECAM_GFN, ECAM_GFN + NPAGES):
        assert vm.gfn_to_pfn(gfn) == (pfn, False)          # READONLY: never writable
        assert vm.walk(gfn) == (pfn, False, 1)
    t = vm.translate(np.arange(ECAM_GFN, ECAM_GFN + NPAGES, dtype=np.uint64))
    assert set(t.pfn.tolist()) == {pfn} and not t.writable.any()
    # Unaligned reads inside any alias page: still the page's bytes.
    assert vm.read(ECAM + 5 * PAGE_SIZE + 3, 1) == 0xFF
    assert vm.read(ECAM + 63 * PAGE_SIZE + 0xFF8, 8) == 2**64 - 1
    if materialize:
        assert bytes(memoryview(alias)) == b"\xff" * PAGE_SIZE
    else:
        assert alias.data_hva == 0
        with pytest.raises(BufferError):
            memoryview(alias)


def test_writes_to_the_readonly_slot_exit_to_userspace(host):
    """KVM_MEM_READONLY, write fault: KVM_PFN_ERR_RO_FAULT, an MMIO exit (as any READONLY
    slot); the page is never written and stays mapped read-only for reads."""
    vm, alias = alias_vm(host)
    assert vm.gfn_to_pfn(ECAM_GFN + 7, write_fault=True) == (KVM_PFN_ERR_RO_FAULT, False)
    vm.run(pages(ECAM, NPAGES), 4)                        # map every page first
    seen = []
    r = vm.run(pages(ECAM, NPAGES), 4, True, np.arange(NPAGES),
               on_mmio=lambda gpa, size, is_write, value: seen.append((gpa, is_write, value)))
    assert r.stats["exits_mmio"] == NPAGES and r.stats["faults"] == NPAGES
    assert r.stats["mapped_4k"] == 0 and r.stats["tlb_hits"] == 0
    assert seen == [(ECAM + k * PAGE_SIZE, True, k) for k in range(NPAGES)]
    # No handler: the write is dropped (the hole answer).
    vm.write(ECAM, 0)
    assert vm.read(ECAM) == 0xFFFFFFFF and bytes(memoryview(alias)) == b"\xff" * PAGE_SIZE
    assert vm.walk(ECAM_GFN) == (alias.base_pfn, False, 1)


def test_no_2m_leaves_over_aliases():
    """Even a 2 MiB-aligned slot of 1024 aliases maps 4 KiB leaves only (no THP, and the
    pfns are not contiguous)."""
    host = allones.Host(materialize=False)
    vm, alias = alias_vm(host, npages=1024)
    r = vm.run(pages(ECAM, 1024), 4)
    assert (r.stats["faults"], r.stats["mapped_4k"], r.stats["mapped_2m"]) == (1024, 1024, 0)
    assert vm.table_pages() == (2, 1, 1, 1)
    with pytest.raises(ValueError, match="THP"):
        _core.HostMapping(2 << 20, 0x1000, 0xFF, PROT_READ, True, alias=True)


def test_a_writable_alias_is_one_page_behind_every_gfn(host):
    """Behind an ordinary slot, a write through one alias is seen through all of them."""
    alias = host.mmap_alias(8 * PAGE_SIZE, fill=0, prot=PROT_READ | PROT_WRITE)
    vm = allones.VM(host)
    vm.set_user_memory_region(0, 0, 0, alias.size, alias.hva)
    vm.write(0x10, 0xDEADBEEF)
    assert [vm.read(k * PAGE_SIZE + 0x10) for k in range(8)] == [0xDEADBEEF] * 8
    assert memoryview(alias)[0x10] == 0xEF and not memoryview(alias).readonly
    assert vm.walk(3) == (alias.base_pfn, True, 1)


def test_max_map_count_refuses_with_enomem_and_changes_nothing():
    host = allones.Host()
    host.mmap(PAGE_SIZE)
    host.mmap_alias(NPAGES * PAGE_SIZE)
    assert host.nr_vmas == 1 + NPAGES
    limit = 1 + NPAGES + 10
    before = (host.nr_vmas, host.nr_frames, host.mappings, host.mm)
    with pytest.raises(allones.NoMemory) as info:
        host.mmap_alias(11 * PAGE_SIZE, max_map_count=limit)
    assert info.value.errno == errno.ENOMEM and "vm.max_map_count" in str(info.value)
    assert (host.nr_vmas, host.nr_frames, host.mappings, host.mm) == before
    assert host.mm is before[3]
    host.mmap_alias(10 * PAGE_SIZE, max_map_count=limit)   # exactly at the limit: fine
    assert host.nr_vmas == limit
    with pytest.raises(allones.NoMemory):
        host.mmap_alias(PAGE_SIZE, max_map_count=limit)


def test_default_max_map_count_bounds_the_aliases():
    """65530 aliases (256 MiB of guest-physical space) fit a process with no other VMAs;
    one more does not."""
    host = allones.Host(materialize=False)
    with pytest.raises(allones.NoMemory):
        host.mmap_alias((DEFAULT_MAX_MAP_COUNT + 1) * PAGE_SIZE)
    assert host.mappings == () and host.nr_vmas == 0
    host.mmap_alias(DEFAULT_MAX_MAP_COUNT * PAGE_SIZE)
    assert host.nr_vmas == DEFAULT_MAX_MAP_COUNT and host.nr_frames == 1 + 1
    with pytest.raises(allones.NoMemory, match="vm.max_map_count"):
        host.mmap_alias(PAGE_SIZE)


@pytest.mark.parametrize("kwargs,exc", [
    (dict(size=0), ValueError), (dict(size=100), ValueError), (dict(size=1.5), TypeError),
    (dict(size=PAGE_SIZE, fill=256), ValueError), (dict(size=PAGE_SIZE, fill=None), ValueError),
    (dict(size=PAGE_SIZE, prot=0), ValueError), (dict(size=PAGE_SIZE, prot=PROT_WRITE), ValueError),
])
def test_mmap_alias_rejects_bad_arguments(host, kwargs, exc):
    before = (host.mappings, host.nr_vmas, host.nr_frames)
    with pytest.raises(exc):
        host.mmap_alias(**kwargs)
    assert (host.mappings, host.nr_vmas, host.nr_frames) == before


@pytest.mark.parametrize("materialize", [True, False], ids=["real", "accounting"])
def test_munmap_of_aliases_zaps_and_then_faults(materialize):
    host = allones.Host(materialize=materialize)
    frames, vmas = host.nr_frames, host.nr_vmas
    vm, alias = alias_vm(host)
    vm.run(pages(ECAM, NPAGES), 4)
    host.munmap(alias.hva)
    assert host.mappings == () and (host.nr_frames, host.nr_vmas) == (frames, vmas)
    assert all(vm.walk(g) is None for g in range(ECAM_GFN, ECAM_GFN + NPAGES))
    assert vm.table_pages() == (0, 0, 0, 1)
    assert vm.gfn_to_pfn(ECAM_GFN + 3) == (KVM_PFN_ERR_FAULT, False)
    with pytest.raises(allones.BadAddress) as info:
        vm.read(ECAM + 9 * PAGE_SIZE)
    assert info.value.errno == errno.EFAULT


def test_munmap_keeps_the_alias_page_alive_for_holders(host):
    m = host.mmap_alias(4 * PAGE_SIZE, fill=0x5A)
    view = memoryview(m)
    host.munmap(m.hva)
    del m
    assert bytes(view) == b"\x5a" * PAGE_SIZE
