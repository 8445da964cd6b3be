"""The Host: the shared all-ones page (kvm_init's kvm_allones_pg) and the VMM's mappings."""

import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import allones
from allones.constants import KVM_CAP_ALLONES_MEM, KVM_CAP_PCI_HOLE_MEM, PAGE_SIZE, PROT_READ


def test_shared_page_is_one_real_page_of_0xff(host):
    page = memoryview(host.allones_page)
    assert len(page) == PAGE_SIZE and bytes(page) == b"\xff" * PAGE_SIZE
    assert host.allones_hva % PAGE_SIZE == 0


def test_shared_page_refuses_writes_through_python(host):
    assert memoryview(host.allones_page).readonly
    arr = np.frombuffer(host.allones_page, dtype=np.uint8)
    with pytest.raises(ValueError):
        arr[0] = 0


def test_shared_page_write_through_a_raw_pointer_faults():
    """The page is mprotect(PROT_READ): a store through its address kills the writer with
    SIGSEGV, so a write is impossible, not merely unlikely."""
    code = textwrap.dedent("""
        import ctypes, allones
        host = allones.Host()
        ctypes.memset(host.allones_hva, 0, 1)
        print("wrote")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    # Under tools/memcheck asan, AddressSanitizer reports the SEGV and aborts instead.
    asan_segv = "AddressSanitizer" in proc.stderr and "SEGV" in proc.stderr
    assert proc.returncode == -signal.SIGSEGV or asan_segv, (proc.returncode, proc.stdout, proc.stderr)
    assert "wrote" not in proc.stdout


def test_each_host_allocates_its_own_page_once():
    a, b = allones.Host(), allones.Host()
    assert a.allones_hva != b.allones_hva
    assert a.nr_frames == b.nr_frames == 1


def test_mmap_gives_real_filled_memory(host):
    m = host.mmap(3 * PAGE_SIZE, fill=0xFF)
    assert bytes(memoryview(m)) == b"\xff" * m.size
    view = np.frombuffer(m, dtype=np.uint8)
    view[5] = 7   # a writable mapping takes writes
    assert memoryview(m)[5] == 7
    assert m.npages == 3 and host.nr_frames == 1 + 3


def test_mmap_unfilled_is_zero(host):
    assert bytes(memoryview(host.mmap(PAGE_SIZE))) == bytes(PAGE_SIZE)


def test_mmap_read_only(host):
    m = host.mmap(PAGE_SIZE, fill=1, prot=PROT_READ)
    assert memoryview(m).readonly and not m.writable and memoryview(m)[0] == 1


def test_mmap_pfns_are_distinct_and_contiguous(host):
    a, b = host.mmap(2 * PAGE_SIZE), host.mmap(PAGE_SIZE)
    assert b.base_pfn == a.base_pfn + 2
    assert host.hva_to_pfn(a.hva + PAGE_SIZE) == (a.base_pfn + 1, True)
    assert host.allones_pfn not in (a.base_pfn, a.base_pfn + 1, b.base_pfn)


@pytest.mark.parametrize("kwargs,exc", [
    (dict(size=0), ValueError), (dict(size=100), ValueError), (dict(size=-PAGE_SIZE), ValueError),
    (dict(size=1.5), TypeError), (dict(size=PAGE_SIZE, fill=256), ValueError),
    (dict(size=PAGE_SIZE, prot=0), ValueError), (dict(size=PAGE_SIZE, prot=8), ValueError),
])
def test_mmap_rejects_bad_arguments(host, kwargs, exc):
    before = host.mappings
    with pytest.raises(exc):
        host.mmap(**kwargs)
    assert host.mappings == before


def test_munmap(host):
    m = host.mmap(PAGE_SIZE)
    host.munmap(m.hva)
    assert host.mappings == () and host.nr_frames == 1
    with pytest.raises(ValueError):
        host.munmap(m.hva)


def test_munmap_keeps_memory_alive_for_holders(host):
    """A view taken before munmap still reads the memory (no use-after-free)."""
    m = host.mmap(PAGE_SIZE, fill=9)
    view = memoryview(m)
    host.munmap(m.hva)
    del m
    assert view[0] == 9


@pytest.mark.parametrize("kwargs", [dict(bit2="ones"), dict(phys_bits=12), dict(phys_bits=53)])
def test_host_rejects_bad_configuration(kwargs):
    with pytest.raises(ValueError):
        allones.Host(**kwargs)


def test_check_extension(host):
    vm = allones.VM(host)
    assert vm.check_extension(KVM_CAP_ALLONES_MEM) == 1
    assert vm.check_extension(KVM_CAP_PCI_HOLE_MEM) == 0
    assert vm.check_extension(10) == 32764   # KVM_CAP_NR_MEMSLOTS
    assert vm.check_extension(118) == 2      # KVM_CAP_MULTI_ADDRESS_SPACE
    assert vm.check_extension(999999) == 0
    v2 = allones.VM(allones.Host(bit2="pci_hole"))
    assert v2.check_extension(KVM_CAP_ALLONES_MEM) == 0
    assert v2.check_extension(KVM_CAP_PCI_HOLE_MEM) == 1


def test_vm_needs_a_host():
    with pytest.raises(TypeError):
        allones.VM(object())
