"""Inputs and threads that must not corrupt the engine (found by review; each crashed once)."""

import threading

import numpy as np
import pytest

import allones
from allones.constants import KVM_MEM_ALLONES, KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE

ECAM = 0xB000_0000


def test_handler_cannot_change_accesses_already_checked(host, ram):
    vm = allones.VM(host)
    vm.set_user_memory_region(0, 0, 0, ram.size, ram.hva)
    sizes = np.array([4, 4], np.uint8)
    gpas = np.array([ECAM, 0], np.uint64)

    def handler(*args):
        sizes[1], gpas[1] = 255, 0xFFE
        return 0

    r = vm.run(gpas, sizes, False, on_mmio=handler)
    assert r.stats["accesses"] == 2 and r.stats["bytes_read"] == 8


@pytest.mark.parametrize("size", [(1 << 64) - PAGE_SIZE, 1 << 48])
def test_mmap_refuses_sizes_beyond_the_user_address_space(host, size):
    with pytest.raises(ValueError):
        host.mmap(size, thp=True)


def test_dirty_bitmap_view_is_read_only(vm, ram):
    vm.set_user_memory_region(0, KVM_MEM_LOG_DIRTY_PAGES, 0, ram.size, ram.hva)
    view = vm.memslots().dirty_bitmap(0)
    with pytest.raises(ValueError):
        view[0] = 1
    with pytest.raises(ValueError):
        view.resize(1)


def test_handler_exception_keeps_what_ran_and_counts_shared_pages():
    host = allones.Host()
    vm = allones.VM(host, allones_map="shared-pt")
    vm.set_user_memory_region(1, KVM_MEM_ALLONES, ECAM, 512 * PAGE_SIZE, 0)

    def device(*args):
        raise RuntimeError("device model failed")

    with pytest.raises(RuntimeError) as exc:
        vm.run([ECAM, ECAM + 4], 4, [False, True], on_mmio=device)
    assert exc.value.allones_index == 1 and exc.value.allones_stats["accesses"] == 2
    assert host.shared_pt_pages == 1 and vm.walk(ECAM >> 12) is not None


def test_runs_and_memslot_updates_from_threads():
    """Readers replay scans while another thread creates and deletes slots: no crash, and
    every read answers 0xff.. (holes exit, slots map the shared page)."""
    host = allones.Host()
    vm = allones.VM(host)
    scan = ECAM + np.arange(4096, dtype=np.uint64) * PAGE_SIZE
    stop, errors = threading.Event(), []

    def reader():
        try:
            while not stop.is_set():
                assert (vm.run(scan, 4).values == 0xFFFFFFFF).all()
        except Exception as exc:   # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(200):
        slot, gpa = i % 8, ECAM + (i % 8) * 512 * PAGE_SIZE
        if vm.memslots().get(slot) is None:
            vm.set_user_memory_region(slot, KVM_MEM_ALLONES, gpa, 512 * PAGE_SIZE, 0)
        else:
            vm.set_user_memory_region(slot, 0, gpa, 0, 0)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert vm.table_pages() == vm.recount_table_pages()


@pytest.mark.parametrize("allones_map", ["4k", "shared-pt"])
def test_a_whole_slot_prefault_past_the_table_limit_is_enomem_not_the_oom_killer(allones_map):
    """Found by the fuzzer: one read of a 2^31-page all-ones slot under whole-slot prefault
    wanted 4M table pages (32 GiB here) and got the process OOM-killed. Past
    max_table_pages the fault fails with ENOMEM; what was mapped stays and is counted."""
    host = allones.Host()
    vm = allones.VM(host, prefault="whole-slot", allones_map=allones_map, max_table_pages=64)
    npages = (1 << 31) - 1
    vm.set_user_memory_region(1, KVM_MEM_ALLONES, 1 << 40, npages * PAGE_SIZE, 0)
    with pytest.raises(allones.NoMemory) as exc:
        vm.read(1 << 40)
    assert exc.value.errno == 12 and exc.value.index == 0 and exc.value.stats["accesses"] == 0
    assert sum(vm.table_pages()) == 64 == sum(vm.recount_table_pages())
    st = exc.value.stats
    assert st["mapped_4k"] + st["mapped_2m"] > 0 and st["table_pages_allocated"] == 63
    # The VM still works: other accesses run, and deleting the slot frees its tables.
    assert vm.read(0) == 0xFFFFFFFF
    vm.set_user_memory_region(1, KVM_MEM_ALLONES, 0, 0, 0)
    assert vm.table_pages() == (0, 0, 0, 1)


def test_max_table_pages_is_checked():
    host = allones.Host()
    for bad, exc in [(3, ValueError), (-1, ValueError), (1.5, TypeError)]:
        with pytest.raises(exc, match="max_table_pages|max_pages"):
            allones.VM(host, max_table_pages=bad)
