# cython: language_level=3, boundscheck=False, wraparound=False
"""Embedding allones' core from Cython: translate guest frames with no Python in the loop.

The C API is allones/_core.pxd (see docs/embedding.md). This module only *reads* it:
it takes the VM's current memslots generation and the host's current mappings, then
walks an array of gfns in a `with nogil:` block calling the core's nogil C functions.
"""

import numpy as np

from libc.stdint cimport int32_t, uint32_t, uint64_t
from allones._core cimport (KVM_HVA_ERR_BAD, KVM_MEM_ALLONES, HostMM, Memslots, gfn_t, hva_t,
                            gfn_to_hva_memslot, kvm_memory_slot, kvm_memslots,
                            search_memslots)


def translate(vm, const gfn_t[::1] gfns not None, int as_id=0):
    """(hvas, ids) for each gfn: the hva gfn_to_hva gives (KVM_HVA_ERR_BAD where no memslot
    holds the gfn, or the slot has no memory) and the id of the memslot holding it (-1).

    Equal to `vm.memslots(as_id).gfn_to_hva(vm.host.mm, g)` and `vm.lookup_batch(gfns)`.
    """
    # One generation of each, taken once. Both are immutable, like the kernel's
    # SRCU-protected struct kvm_memslots: a concurrent KVM_SET_USER_MEMORY_REGION or
    # host.mmap/munmap publishes a *new* object and never touches these. The local
    # references below are our srcu_read_lock(): while they are alive, the C arrays
    # behind slots.c and mm.c (owned by those objects, freed in their __dealloc__) and the
    # host memory the hvas point at (owned by HostMapping objects that HostMM keeps alive)
    # stay valid, even with the GIL released.
    cdef Memslots slots = vm.memslots(as_id)     # also checks as_id
    cdef HostMM mm = vm.host.mm
    cdef Py_ssize_t n = gfns.shape[0], k
    cdef int32_t i
    hva_arr = np.empty(n, dtype=np.uint64)       # ours: allocated with the GIL held
    id_arr = np.empty(n, dtype=np.int32)
    cdef uint64_t[::1] hvas = hva_arr
    cdef int32_t[::1] ids = id_arr
    # Pointers into the owners' structs. search_memslots takes a non-const pointer: it
    # updates the generation's last_used_slot hint with a relaxed atomic store, which is
    # the only write and is safe with any number of concurrent readers.
    cdef kvm_memslots *s = &slots.c
    with nogil:
        for k in range(n):
            i = search_memslots(s, gfns[k], NULL)          # index in this generation, or -1
            if i < 0:
                hvas[k] = KVM_HVA_ERR_BAD                  # as Memslots.gfn_to_hva reports a miss
                ids[k] = -1
            else:
                # An all-ones slot gives the host's shared page; a v2 PCI_HOLE slot gives
                # KVM_HVA_ERR_BAD. Nothing returned here needs freeing.
                hvas[k] = gfn_to_hva_memslot(&s.memslots[i], gfns[k], &mm.c)
                ids[k] = s.memslots[i].id                  # ids, not indices: indices are
                                                           # per generation
    return hva_arr, id_arr


def count_allones(vm, const gfn_t[::1] gfns not None, int as_id=0):
    """How many gfns land in a KVM_MEM_ALLONES slot (reads a struct field: flags)."""
    cdef Memslots slots = vm.memslots(as_id)     # held until we return: see translate()
    cdef kvm_memslots *s = &slots.c
    cdef Py_ssize_t n = gfns.shape[0], k, count = 0
    cdef int32_t i
    cdef const kvm_memory_slot *slot
    with nogil:
        for k in range(n):
            i = search_memslots(s, gfns[k], NULL)
            if i >= 0:
                slot = &s.memslots[i]
                # On a Host(bit2="pci_hole") the same bit is KVM_MEM_PCI_HOLE.
                if slot.flags & <uint32_t>KVM_MEM_ALLONES:
                    count += 1
    return count
