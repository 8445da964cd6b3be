# cython: language_level=3
"""allones._core: memslots, KVM_SET_USER_MEMORY_REGION's rules, and gfn -> hva -> pfn.

What the kernel keeps in virt/kvm/kvm_main.c and include/linux/kvm_host.h, as nogil C
functions over immutable generations (declared in _core.pxd), plus the thin cdef classes
that own those generations. Semantics follow Linux v6.6 with the KVM_MEM_ALLONES RFC
(and its v2, KVM_MEM_PCI_HOLE) applied; each function names its kernel counterpart.

Left out here: the stage-2 table and the access engine (they build on this module),
and all policy (what raises which exception: allones.vm does that).
"""

import operator
from collections import namedtuple

from cpython.buffer cimport PyBUF_WRITABLE
from libc.errno cimport EEXIST, EINVAL, ENOMEM, errno
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memmove, memset
from posix.mman cimport (MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_FAILED, MAP_NORESERVE, MAP_PRIVATE,
                         PROT_NONE, PROT_READ, PROT_WRITE, madvise, mmap, mprotect, munmap)
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import numpy as np

Memslot = namedtuple("Memslot", "id base_gfn npages userspace_addr flags")
Memslot.__doc__ = """One memslot: [base_gfn, base_gfn + npages) at userspace_addr, with flags."""


cdef uint64_t u64_arg(object value, str name) except? 0xFFFFFFFFFFFFFFFF:
    """An integer argument that must fit a __u64. Cython's own conversion would truncate a
    float silently and raise OverflowError; this gives TypeError for anything that is not
    an integer and ValueError, naming the argument, for one out of range."""
    cdef uint64_t v
    if type(value) is not int:
        value = int_arg(value, name)
    try:
        v = value   # C conversion: OverflowError for negative or wider than 64 bits
    except OverflowError:
        raise ValueError(f"{name}={value:#x} does not fit a __u64") from None
    return v


cdef object int_arg(object value, str name):
    """value as a Python int (operator.index: ints, numpy ints and bools, not floats)."""
    if type(value) is int:
        return value
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None


cdef int32_t slot_id_arg(object id) except? -2:
    """A memslot id to look up: any integer; -1 for one no memslot can have."""
    id = int_arg(id, "id")
    return id if 0 <= id <= 0xFFFF else -1


def c_constants():
    """The kernel constants as compiled into the core (tests check constants.py against it)."""
    return dict(
        PAGE_SHIFT=ALLONES_PAGE_SHIFT, PAGE_SIZE=ALLONES_PAGE_SIZE,
        KVM_MEM_LOG_DIRTY_PAGES=KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY=KVM_MEM_READONLY,
        KVM_MEM_ALLONES=KVM_MEM_ALLONES, KVM_MEM_PCI_HOLE=KVM_MEM_PCI_HOLE,
        KVM_ADDRESS_SPACE_NUM=KVM_ADDRESS_SPACE_NUM, KVM_MEM_SLOTS_NUM=KVM_MEM_SLOTS_NUM,
        KVM_USER_MEM_SLOTS=KVM_USER_MEM_SLOTS, KVM_MEM_MAX_NR_PAGES=KVM_MEM_MAX_NR_PAGES,
        KVM_PFN_ERR_MASK=KVM_PFN_ERR_MASK, KVM_PFN_ERR_NOSLOT_MASK=KVM_PFN_ERR_NOSLOT_MASK,
        KVM_PFN_NOSLOT=KVM_PFN_NOSLOT, KVM_PFN_ERR_FAULT=KVM_PFN_ERR_FAULT,
        KVM_PFN_ERR_HWPOISON=KVM_PFN_ERR_HWPOISON, KVM_PFN_ERR_RO_FAULT=KVM_PFN_ERR_RO_FAULT,
        KVM_PFN_ERR_SIGPENDING=KVM_PFN_ERR_SIGPENDING, KVM_HVA_ERR_BAD=KVM_HVA_ERR_BAD,
        KVM_HVA_ERR_RO_BAD=KVM_HVA_ERR_RO_BAD,
    )


# ---------------------------------------------------------------------------------------
# Memslot search (include/linux/kvm_host.h: search_memslots, __gfn_to_memslot)
# ---------------------------------------------------------------------------------------

cdef inline bint slot_contains(const kvm_memory_slot *slot, gfn_t gfn) noexcept nogil:
    # One unsigned compare: gfn < base_gfn wraps to a huge offset, which fails too.
    return gfn - slot.base_gfn < slot.npages


cdef inline int32_t floor_index(const gfn_t *base, int32_t n, gfn_t gfn) noexcept nogil:
    """Index of the last base <= gfn (0 if none); n >= 1.

    Branch-free: the step is taken by arithmetic, not a jump, so random keys cost no
    mispredictions (gcc emits cmov); this is what beats np.searchsorted on random gfns.
    """
    cdef const gfn_t *p = base
    cdef int32_t half
    while n > 1:
        half = n >> 1
        p = p + half if p[half] <= gfn else p
        n -= half
    return <int32_t>(p - base)


cdef int32_t search_memslots(kvm_memslots *slots, gfn_t gfn, lookup_stats *st) noexcept nogil:
    """Index of the memslot holding gfn, or -1.

    As the kernel's search_memslots(): try the last-used slot first, else binary search,
    and remember a hit. The cache is a hint shared by all readers, hence relaxed atomics.
    Indices: last_used_slot is -1 or an index this generation stored; floor_index runs
    over used_slots >= 1 entries.
    """
    cdef int32_t i
    if st != NULL:
        st.lookups += 1
    if slots.used_slots == 0:
        return -1
    i = allones_load_relaxed(&slots.last_used_slot)
    if i >= 0 and slot_contains(&slots.memslots[i], gfn):
        if st != NULL:
            st.cache_hits += 1
        return i
    i = floor_index(slots.base_gfns, slots.used_slots, gfn)
    if slot_contains(&slots.memslots[i], gfn):
        allones_store_relaxed(&slots.last_used_slot, i)
        return i
    return -1


cdef struct memslot_cursor:
    # A batch's place in the table: the tile (slot or gap) it resolved last, and the
    # kernel's last-used slot, to count what search_memslots' cache would have answered.
    gfn_t lo                      # the tile is [lo, lo + span) (unsigned: may run to 2^64)
    gfn_t span
    int32_t tile
    int32_t slot                  # tile_slots[tile]: a memslot index or -1
    int32_t kernel_cached
    uint64_t hits


cdef inline gfn_t tile_span(const kvm_memslots *slots, int32_t t) noexcept nogil:
    # The last tile runs to 2^64: 0 - start, in unsigned arithmetic.
    cdef gfn_t end = slots.tile_starts[t + 1] if t + 1 < slots.nr_tiles else 0
    return end - slots.tile_starts[t]


cdef inline void cursor_init(const kvm_memslots *slots, memslot_cursor *c) noexcept nogil:
    """An empty tile before tile 0, so the first gfn seeks."""
    c.lo, c.span, c.tile, c.slot, c.hits = 0, 0, -1, -1, 0
    c.kernel_cached = allones_load_relaxed(&slots.last_used_slot)


cdef inline void cursor_seek(const kvm_memslots *slots, memslot_cursor *c, gfn_t gfn) noexcept nogil:
    """Move to the tile holding gfn: the next tile if a scan stepped into it, else search.
    Indices: t + 1 is checked against nr_tiles; floor_index runs over nr_tiles >= 1 (the
    tiles cover [0, 2^64)); tile_slots holds -1 or a memslot index of this generation."""
    cdef int32_t t = c.tile + 1
    if not (t < slots.nr_tiles and gfn - slots.tile_starts[t] < tile_span(slots, t)):
        t = floor_index(slots.tile_starts, slots.nr_tiles, gfn)
    c.tile, c.lo, c.span, c.slot = t, slots.tile_starts[t], tile_span(slots, t), slots.tile_slots[t]
    if c.slot >= 0:
        c.hits += c.slot == c.kernel_cached
        c.kernel_cached = c.slot


cdef inline int32_t cursor_lookup(const kvm_memslots *slots, memslot_cursor *c,
                                  gfn_t gfn) noexcept nogil:
    """Index of the memslot holding gfn, or -1: search_memslots' answer."""
    if gfn - c.lo < c.span:
        c.hits += c.slot >= 0         # inside the slot last found: the kernel's cache hits
    else:
        cursor_seek(slots, c, gfn)
    return c.slot


cdef void lookup_memslots(kvm_memslots *slots, const gfn_t *gfns, Py_ssize_t n,
                          int32_t *ids, lookup_stats *st) noexcept nogil:
    """ids[k] = id of the memslot holding gfns[k], or -1: search_memslots over an array.

    A cursor remembers the last tile (slot or gap), so a sequential scan costs one compare
    per gfn and one more per tile; statistics count what the kernel's cache would have hit.
    Indices: k < n, the caller's array length; memslots[] is read only for a slot tile.
    """
    cdef Py_ssize_t k
    cdef memslot_cursor c
    cdef gfn_t lo = 0, span = 0, gfn
    cdef int32_t id = -1, in_slot = 0
    cdef uint64_t hits = 0            # locals: c lives in memory (its address is taken)
    cursor_init(slots, &c)
    for k in range(n):
        gfn = gfns[k]
        if gfn - lo < span:           # the hot path: subtract, compare, store
            ids[k] = id
            hits += in_slot
            continue
        cursor_seek(slots, &c, gfn)
        in_slot = c.slot >= 0
        lo, span, id = c.lo, c.span, slots.memslots[c.slot].id if in_slot else -1
        ids[k] = id
    if slots.used_slots:
        allones_store_relaxed(&slots.last_used_slot, c.kernel_cached)
    if st != NULL:
        st.lookups += n
        st.cache_hits += c.hits + hits


cdef void build_tiles(kvm_memslots *slots) noexcept nogil:
    """Fill tile_starts/tile_slots from the sorted memslots (room for 2n + 1 tiles):
    a gap before each slot that does not start where the previous one ended, the slot,
    and the gap after the last one (slots end below 2^52, so it is never empty)."""
    cdef int32_t i, t = 0
    cdef gfn_t end = 0
    for i in range(slots.used_slots):
        if slots.memslots[i].base_gfn > end:
            slots.tile_starts[t], slots.tile_slots[t] = end, -1
            t += 1
        slots.tile_starts[t], slots.tile_slots[t] = slots.memslots[i].base_gfn, i
        t += 1
        end = slots.memslots[i].base_gfn + slots.memslots[i].npages
    slots.tile_starts[t], slots.tile_slots[t] = end, -1
    slots.nr_tiles = t + 1


cdef int memslots_alloc(kvm_memslots *slots, int32_t n) noexcept nogil:
    """Allocate a generation's arrays for n slots; 0 or -ENOMEM (and nothing allocated)."""
    slots.used_slots = 0
    slots.last_used_slot = -1   # a new generation starts with no cached slot (v6.6: NULL)
    slots.nr_tiles = 0
    slots.base_gfns = <gfn_t *>malloc(max(n, 1) * sizeof(gfn_t))
    slots.memslots = <kvm_memory_slot *>malloc(max(n, 1) * sizeof(kvm_memory_slot))
    slots.tile_starts = <gfn_t *>malloc((2 * n + 1) * sizeof(gfn_t))
    slots.tile_slots = <int32_t *>malloc((2 * n + 1) * sizeof(int32_t))
    if slots.base_gfns == NULL or slots.memslots == NULL or \
            slots.tile_starts == NULL or slots.tile_slots == NULL:
        memslots_free(slots)
        return -ENOMEM
    return 0


cdef void memslots_free(kvm_memslots *slots) noexcept nogil:
    free(slots.base_gfns)
    free(slots.memslots)
    free(slots.tile_starts)
    free(slots.tile_slots)
    slots.base_gfns, slots.memslots, slots.tile_starts, slots.tile_slots = NULL, NULL, NULL, NULL
    slots.used_slots = slots.nr_tiles = 0


cdef int32_t index_of_id(const kvm_memslots *slots, int32_t id) noexcept nogil:
    """Index of slot `id` in this generation, or -1 (a linear scan: updates are O(n) anyway)."""
    cdef int32_t i
    for i in range(slots.used_slots):
        if slots.memslots[i].id == id:
            return i
    return -1


cdef bint kvm_memslots_overlap(const kvm_memslots *slots, int32_t id,
                               gfn_t start, gfn_t end) noexcept nogil:
    """Does [start, end) overlap a slot other than `id`? (kvm_check_memslot_overlap)

    Slots are sorted and disjoint, so their ends ascend too: walk down from the last slot
    that starts below `end` while slots still end after `start`.
    """
    cdef int32_t i
    if slots.used_slots == 0 or end == 0:
        return False
    i = floor_index(slots.base_gfns, slots.used_slots, end - 1)
    while i >= 0 and slots.memslots[i].base_gfn < end and \
            slots.memslots[i].base_gfn + slots.memslots[i].npages > start:
        if slots.memslots[i].id != id:
            return True
        i -= 1
    return False


# ---------------------------------------------------------------------------------------
# KVM_SET_USER_MEMORY_REGION (virt/kvm/kvm_main.c: kvm_vm_ioctl_set_memory_region,
# check_memory_region_flags, __kvm_set_memory_region; x86's kvm_arch_prepare_memory_region)
# ---------------------------------------------------------------------------------------

cdef inline bint access_ok(uint64_t addr, uint64_t size) noexcept nogil:
    """x86-64 access_ok(): [addr, addr + size) lies in the user half, without wrapping.

    v6.6's __access_ok() checks that addr + size neither wraps nor sets bit 63
    (valid_user_address); a range past TASK_SIZE_MAX that passes it only faults on use.
    The model uses the exact v6.6 test, so such an address is accepted, as the issue and
    the kernel both say, and fails later at translation with EFAULT.
    """
    cdef uint64_t end = addr + size
    return end >= addr and <int64_t>end >= 0


cdef int check_memory_region(const kvm_userspace_memory_region *mem, const kvm_config *cfg,
                             memslot_rule *rule) noexcept nogil:
    """The stateless checks, in the kernel's order: 0, or -EINVAL with *rule set."""
    cdef uint32_t id = mem.slot & 0xffff, as_id = mem.slot >> 16
    # Bit 2 (KVM_MEM_ALLONES, or KVM_MEM_PCI_HOLE on a v2 kernel): no userspace memory.
    cdef bint no_memory = (mem.flags & KVM_MEM_ALLONES) != 0
    cdef bint exclusive = no_memory and mem.flags & (KVM_MEM_READONLY | KVM_MEM_LOG_DIRTY_PAGES)
    rule[0] = RULE_OK
    if id >= KVM_USER_MEM_SLOTS:             # kvm_vm_ioctl_set_memory_region
        rule[0] = RULE_USER_SLOT_ID
    elif mem.flags & ~(<uint32_t>KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY | KVM_MEM_ALLONES):
        # check_memory_region_flags: both series add bit 2 to valid_flags unconditionally.
        rule[0] = RULE_FLAGS
    elif mem.memory_size & (ALLONES_PAGE_SIZE - 1):
        rule[0] = RULE_SIZE_ALIGN
    elif mem.guest_phys_addr & (ALLONES_PAGE_SIZE - 1):
        rule[0] = RULE_GPA_ALIGN
    elif cfg.pci_hole and exclusive:
        # v2 tests exclusivity before userspace_addr; the RFC after. Same errno.
        rule[0] = RULE_ALLONES_EXCLUSIVE
    elif no_memory and mem.userspace_addr != 0:
        # RFC: "KVM_MEM_ALLONES doesn't need userspace_addr"; v2 likewise for PCI_HOLE.
        rule[0] = RULE_NO_MEMORY_HVA
    elif exclusive:
        rule[0] = RULE_ALLONES_EXCLUSIVE
    elif not no_memory and mem.userspace_addr & (ALLONES_PAGE_SIZE - 1):
        # "We can read the guest memory with __xxx_user() later on." Slots with no
        # userspace memory attached skip this check and the next (the RFC's change).
        rule[0] = RULE_HVA_ALIGN
    elif not no_memory and not access_ok(mem.userspace_addr, mem.memory_size):
        rule[0] = RULE_ACCESS_OK
    elif as_id >= KVM_ADDRESS_SPACE_NUM:
        # (id >= KVM_MEM_SLOTS_NUM, the next kernel check, cannot fail after the ioctl's.)
        rule[0] = RULE_AS_ID
    elif mem.guest_phys_addr + mem.memory_size < mem.guest_phys_addr:
        rule[0] = RULE_GPA_WRAP
    elif (mem.memory_size >> ALLONES_PAGE_SHIFT) > KVM_MEM_MAX_NR_PAGES:
        rule[0] = RULE_NR_PAGES
    return -EINVAL if rule[0] != RULE_OK else 0


cdef int classify_memory_region(const kvm_memslots *slots,
                                const kvm_userspace_memory_region *mem,
                                const kvm_config *cfg, memslot_change *chg,
                                memslot_rule *rule) noexcept nogil:
    """The stateful half of __kvm_set_memory_region: what changes, or why not.

    Returns 0 (chg filled; KVM_MR_NONE if nothing changes), -EINVAL or -EEXIST.
    The caller has run check_memory_region() first.
    """
    cdef int32_t id = mem.slot & 0xffff
    cdef gfn_t base_gfn = mem.guest_phys_addr >> ALLONES_PAGE_SHIFT
    cdef uint64_t npages = mem.memory_size >> ALLONES_PAGE_SHIFT
    cdef int32_t i = index_of_id(slots, id)
    cdef const kvm_memory_slot *old = &slots.memslots[i] if i >= 0 else NULL
    rule[0] = RULE_OK
    chg.old_index = i
    chg.new.id, chg.new.base_gfn, chg.new.npages = id, base_gfn, npages
    chg.new.userspace_addr, chg.new.flags = mem.userspace_addr, mem.flags
    if npages == 0:
        chg.change = KVM_MR_DELETE
        if old == NULL:                      # "if (!old || !old->npages) return -EINVAL;"
            rule[0] = RULE_DELETE_MISSING
            return -EINVAL
        return 0
    if old == NULL:
        # (The kernel's nr_memslot_pages overflow check cannot fire on 64 bits: at most
        # 32764 slots of < 2^31 pages each.)
        chg.change = KVM_MR_CREATE
    elif mem.userspace_addr != old.userspace_addr:
        rule[0] = RULE_MODIFY_HVA
    elif npages != old.npages:
        rule[0] = RULE_MODIFY_NPAGES
    elif (mem.flags ^ old.flags) & KVM_MEM_READONLY:
        rule[0] = RULE_MODIFY_READONLY
    elif (mem.flags ^ old.flags) & KVM_MEM_ALLONES:
        # v2 refuses toggling PCI_HOLE here. The RFC forgot it, and would let a normal slot
        # at userspace_addr 0 become all-ones by a FLAGS_ONLY change that keeps its old
        # mappings and large-page metadata (x86 copies old->arch); refused for both.
        rule[0] = RULE_MODIFY_NO_MEMORY
    elif base_gfn != old.base_gfn:
        chg.change = KVM_MR_MOVE
    elif mem.flags != old.flags:
        chg.change = KVM_MR_FLAGS_ONLY
    else:
        chg.change = KVM_MR_NONE             # "Nothing to change."
    if rule[0] != RULE_OK:
        return -EINVAL
    if chg.change == KVM_MR_CREATE or chg.change == KVM_MR_MOVE:
        if kvm_memslots_overlap(slots, id, base_gfn, base_gfn + npages):
            rule[0] = RULE_OVERLAP
            return -EEXIST
        if base_gfn + npages - 1 > cfg.max_gfn:  # x86 kvm_arch_prepare_memory_region
            rule[0] = RULE_MAX_GFN
            return -EINVAL
    return 0


cdef inline int32_t insert_index(const kvm_memslots *slots, int32_t skip, gfn_t base_gfn) noexcept nogil:
    """Where a slot starting at base_gfn goes once index `skip` (or -1) is removed."""
    cdef int32_t i = 0
    if slots.used_slots > 0:
        i = floor_index(slots.base_gfns, slots.used_slots, base_gfn)
        if slots.base_gfns[i] < base_gfn:
            i += 1
    return i - 1 if skip >= 0 and skip < i else i


cdef int commit_memory_region(const kvm_memslots *old, const memslot_change *chg,
                              kvm_memslots *new) noexcept nogil:
    """Build the next generation in *new (old minus the old slot, plus the new one).

    Like the kernel before v5.12 (kvm_dup_memslots + update_memslots): a full copy, O(n),
    then published whole by the caller. Returns 0 or -ENOMEM (and then *new owns nothing).
    """
    cdef int32_t n = old.used_slots, k, j, at = -1
    if chg.change == KVM_MR_CREATE:
        n += 1
    elif chg.change == KVM_MR_DELETE:
        n -= 1
    if chg.change != KVM_MR_DELETE:
        at = insert_index(old, chg.old_index, chg.new.base_gfn)
    if memslots_alloc(new, n):
        return -ENOMEM
    new.generation = old.generation + 1
    # Old slots minus the changed one, in block copies...
    if chg.old_index < 0:
        memcpy(new.memslots, old.memslots, old.used_slots * sizeof(kvm_memory_slot))
    else:
        j = chg.old_index
        memcpy(new.memslots, old.memslots, j * sizeof(kvm_memory_slot))
        memcpy(new.memslots + j, old.memslots + j + 1, (old.used_slots - j - 1) * sizeof(kvm_memory_slot))
    # ...then open a gap for the new slot at its sorted place.
    if at >= 0:
        memmove(new.memslots + at + 1, new.memslots + at, (n - 1 - at) * sizeof(kvm_memory_slot))
        new.memslots[at] = chg.new
    for k in range(n):
        new.base_gfns[k] = new.memslots[k].base_gfn
    new.used_slots = n
    build_tiles(new)
    return 0


# ---------------------------------------------------------------------------------------
# Translation (__gfn_to_hva_memslot, __gfn_to_pfn_memslot, hva_to_pfn)
# ---------------------------------------------------------------------------------------

cdef hva_t gfn_to_hva_memslot(const kvm_memory_slot *slot, gfn_t gfn,
                              const host_mm *mm) noexcept nogil:
    """__gfn_to_hva_memslot(): the hva backing gfn in slot (gfn must be in the slot).

    RFC: every gfn of an all-ones slot is backed by the one shared page. A v2 PCI_HOLE
    slot has no page at all: KVM_HVA_ERR_BAD, so translation ends in KVM_PFN_NOSLOT.
    """
    if slot.flags & KVM_MEM_ALLONES:
        return mm.allones_hva if mm.allones_hva != 0 else KVM_HVA_ERR_BAD
    return slot.userspace_addr + (gfn - slot.base_gfn) * ALLONES_PAGE_SIZE


cdef int32_t find_vma(host_mm *mm, hva_t hva) noexcept nogil:
    """Index of the host mapping holding hva, or -1 (find_vma, with a last-used cache).
    Indices: last_used_vma starts at 0 and holds only indices found here; nr_vmas >= 1."""
    cdef int32_t i
    if mm.nr_vmas == 0:
        return -1
    i = allones_load_relaxed(&mm.last_used_vma)
    if hva - mm.vmas[i].start < mm.vmas[i].npages * ALLONES_PAGE_SIZE:
        return i
    i = floor_index(mm.starts, mm.nr_vmas, hva)
    if hva - mm.vmas[i].start < mm.vmas[i].npages * ALLONES_PAGE_SIZE:
        allones_store_relaxed(&mm.last_used_vma, i)
        return i
    return -1


cdef pfn_t hva_to_pfn(host_mm *mm, hva_t hva, bint write_fault, bint *writable) noexcept nogil:
    """hva_to_pfn(): the frame behind hva, or KVM_PFN_ERR_FAULT.

    No mapping, or a write fault on a read-only mapping, is KVM_PFN_ERR_FAULT (KVM_RUN then
    fails with EFAULT). On a read fault the kernel asks for a writable page anyway, so
    *writable is the mapping's PROT_WRITE. Host mappings are populated: no async faults.
    Every page of an alias mapping (VMA_ALIAS) is the same frame: its base_pfn.
    """
    # The shared all-ones page is not among the VMM's mappings: in the kernel it is a
    # kernel address, which no userspace_addr can name (access_ok refuses it).
    cdef int32_t i = find_vma(mm, hva)
    if i < 0 or (write_fault and not (mm.vmas[i].prot & PROT_WRITE)):
        return KVM_PFN_ERR_FAULT
    if writable != NULL:
        writable[0] = (mm.vmas[i].prot & PROT_WRITE) != 0
    if mm.vmas[i].flags & VMA_ALIAS:
        return mm.vmas[i].base_pfn
    return mm.vmas[i].base_pfn + ((hva - mm.vmas[i].start) >> ALLONES_PAGE_SHIFT)


cdef pfn_t gfn_to_pfn_memslot(const kvm_memory_slot *slot, gfn_t gfn, bint write_fault,
                              bint *writable, host_mm *mm) noexcept nogil:
    """__gfn_to_pfn_memslot() with the RFC applied. slot may be NULL (no memslot).

    all-ones, read   -> the shared page's pfn, not writable
    all-ones, write  -> KVM_PFN_NOSLOT (an MMIO exit to userspace)
    READONLY, write  -> KVM_PFN_ERR_RO_FAULT (__gfn_to_hva_many gave KVM_HVA_ERR_RO_BAD)
    no slot, or an hva error (a PCI_HOLE slot) -> KVM_PFN_NOSLOT
    """
    cdef hva_t hva
    if writable != NULL:
        writable[0] = False
    if slot == NULL:
        return KVM_PFN_NOSLOT
    if slot.flags & KVM_MEM_ALLONES and mm.allones_hva != 0:
        return KVM_PFN_NOSLOT if write_fault else mm.allones_pfn
    if slot.flags & KVM_MEM_READONLY and write_fault:
        return KVM_PFN_ERR_RO_FAULT
    hva = gfn_to_hva_memslot(slot, gfn, mm)
    if hva >= KVM_HVA_ERR_BAD:                 # kvm_is_error_hva()
        return KVM_PFN_NOSLOT
    if slot.flags & KVM_MEM_READONLY:
        # "Do not map writable pfn in the readonly memslot."
        return hva_to_pfn(mm, hva, write_fault, NULL)
    return hva_to_pfn(mm, hva, write_fault, writable)


cdef void translate_gfns(kvm_memslots *slots, host_mm *mm, const gfn_t *gfns, Py_ssize_t n,
                         bint write_fault, pfn_t *pfns, uint8_t *writable,
                         lookup_stats *st) noexcept nogil:
    """pfns[k], writable[k] = gfn_to_pfn(gfns[k], write_fault) for every k."""
    cdef Py_ssize_t k
    cdef int32_t i
    cdef bint w
    cdef memslot_cursor c
    cursor_init(slots, &c)
    for k in range(n):
        i = cursor_lookup(slots, &c, gfns[k])
        pfns[k] = gfn_to_pfn_memslot(&slots.memslots[i] if i >= 0 else NULL,
                                     gfns[k], write_fault, &w, mm)
        writable[k] = w
    if slots.used_slots:
        allones_store_relaxed(&slots.last_used_slot, c.kernel_cached)
    if st != NULL:
        st.lookups += n
        st.cache_hits += c.hits


# ---------------------------------------------------------------------------------------
# Owners of the C state
# ---------------------------------------------------------------------------------------

cdef class Memslots:
    """One immutable generation of an address space's memslots, sorted by base_gfn.

    Made by VMCore on every committed update and swapped in whole (as the kernel
    publishes a new struct kvm_memslots under SRCU): a reader holding one never sees a
    later change, and its memory lives as long as the reader holds it.
    """

    def __cinit__(self, int as_id=0):
        self.as_id = as_id
        self._bitmaps = {}
        if memslots_alloc(&self.c, 0):   # an empty generation: one gap tile, [0, 2^64)
            raise MemoryError()
        build_tiles(&self.c)

    def __dealloc__(self):
        memslots_free(&self.c)

    @property
    def generation(self):
        """How many committed updates made this generation: 0, 1, 2, ... per address space.

        Not the kernel's numbering (v6.6 starts address space i at i, adds 2 per swap and 4
        for DELETE/MOVE, even for a MOVE that then fails); only its order is modeled.
        """
        return self.c.generation

    def __len__(self):
        return self.c.used_slots

    def __iter__(self):
        """The memslots as Memslot tuples, ascending by base_gfn."""
        return iter([self._slot(i) for i in range(self.c.used_slots)])

    cdef object _slot(self, int32_t i):
        cdef kvm_memory_slot *s = &self.c.memslots[i]
        return Memslot(s.id, s.base_gfn, s.npages, s.userspace_addr, s.flags)

    def dirty_bitmap(self, id):
        """The dirty log of slot `id` (a read-only uint8 view, one per page), or None.

        Read-only, and a view: the core keeps a pointer into the array, which must never
        be written or resized from Python (KVM_GET_DIRTY_LOG clears it, in the core).
        """
        bitmap = self._bitmaps.get(slot_id_arg(id))
        if bitmap is None:
            return None
        view = bitmap.view()
        view.flags.writeable = False
        return view

    def get(self, id):
        """The Memslot with this id, or None."""
        cdef int32_t i = index_of_id(&self.c, slot_id_arg(id))
        return self._slot(i) if i >= 0 else None

    def lookup(self, gfn):
        """Id of the memslot holding gfn, or -1 (search_memslots)."""
        cdef int32_t i = search_memslots(&self.c, u64_arg(gfn, "gfn"), NULL)
        return self.c.memslots[i].id if i >= 0 else -1

    def gfn_to_memslot(self, gfn):
        """The Memslot holding gfn, or None (__gfn_to_memslot)."""
        cdef int32_t i = search_memslots(&self.c, u64_arg(gfn, "gfn"), NULL)
        return self._slot(i) if i >= 0 else None

    def lookup_batch(self, const gfn_t[::1] gfns not None, int32_t[::1] out=None):
        """Ids of the memslots holding each gfn (-1 for none), as an int32 array.

        Runs without the GIL. Returns (ids, stats) where stats is {"lookups", "cache_hits"}.
        """
        cdef lookup_stats st = lookup_stats(0, 0)
        if out is None:
            out = np.empty(gfns.shape[0], dtype=np.int32)
        elif out.shape[0] != gfns.shape[0]:
            raise ValueError(f"out has {out.shape[0]} entries for {gfns.shape[0]} gfns")
        with nogil:
            lookup_memslots(&self.c, &gfns[0] if gfns.shape[0] else NULL, gfns.shape[0],
                            &out[0] if out.shape[0] else NULL, &st)
        return out.base, {"lookups": st.lookups, "cache_hits": st.cache_hits}

    def translate(self, HostMM mm not None, const gfn_t[::1] gfns not None, bint write_fault):
        """(pfns, writable) for each gfn, as __gfn_to_pfn_memslot gives them; nogil inside."""
        cdef Py_ssize_t n = gfns.shape[0]
        cdef lookup_stats st = lookup_stats(0, 0)
        pfn_arr = np.empty(n, dtype=np.uint64)
        w_arr = np.empty(n, dtype=np.bool_)
        cdef pfn_t[::1] pfns = pfn_arr
        cdef uint8_t[::1] writable = w_arr.view(np.uint8)
        if n:
            with nogil:
                translate_gfns(&self.c, &mm.c, &gfns[0], n, write_fault,
                               &pfns[0], &writable[0], &st)
        return pfn_arr, w_arr

    def gfn_to_hva(self, HostMM mm not None, gfn_arg):
        """hva backing gfn (gfn_to_hva), or KVM_HVA_ERR_BAD if no memslot holds it."""
        cdef gfn_t gfn = u64_arg(gfn_arg, "gfn")
        cdef int32_t i = search_memslots(&self.c, gfn, NULL)
        if i < 0:
            return KVM_HVA_ERR_BAD
        return gfn_to_hva_memslot(&self.c.memslots[i], gfn, &mm.c)

    def gfn_to_pfn(self, HostMM mm not None, gfn_arg, bint write_fault):
        """(pfn, writable) for gfn (gfn_to_pfn_prot); error pfns are returned, not raised."""
        cdef gfn_t gfn = u64_arg(gfn_arg, "gfn")
        cdef bint writable
        cdef int32_t i = search_memslots(&self.c, gfn, NULL)
        cdef pfn_t pfn = gfn_to_pfn_memslot(&self.c.memslots[i] if i >= 0 else NULL,
                                            gfn, write_fault, &writable, &mm.c)
        return pfn, bool(writable)


cdef class HostMapping:
    """Anonymous memory of the VMM: one mmap(2), page-aligned, with its frame numbers.

    Materialized (the default): real memory, filled with `fill` if given (the time it took
    is `fill_ns`). Not materialized ("accounting"): the address range is only reserved
    (PROT_NONE, MAP_NORESERVE: no RAM), reads of it are the fill byte and writes are dropped,
    so fleets larger than RAM keep the same counts. `thp`: the range is 2 MiB aligned and
    advised for transparent huge pages, so a VM may map it with 2 MiB entries.

    The memory lives until the last reference goes (host, snapshots, buffer views), so a
    reader can never see it freed. Buffer views are writable only for PROT_WRITE mappings.

    `alias`: a memfd-alias mapping, the userspace alternative to KVM_MEM_ALLONES: ONE page
    of a memfd (filled with `fill`) mmap'd again and again, one 4 KiB VMA per page of
    `size`, each aliasing the same file page, so every page is the same frame (`base_pfn`)
    with the same bytes. Modeled as one mapping (one host_vma, flag VMA_ALIAS) standing for
    `npages` VMAs (`nr_vmas`) and one frame (`nr_frames`): the `size` bytes at `hva` are
    reserved address space only (PROT_NONE, MAP_NORESERVE: distinct hvas, no RAM), and the
    one real page is mapped apart at `data_hva` (mprotect'ed to `prot`); the engine reads
    and writes every alias page there. Its buffer exposes that one page (PAGE_SIZE bytes),
    not `size` bytes; `fill_ns` times the fill of that page. Never THP. Not materialized:
    no real page at all, reads give `fill` as for any accounting mapping.
    """

    def __cinit__(self, uint64_t size, pfn_t base_pfn, fill=None,
                  uint32_t prot=PROT_READ | PROT_WRITE, bint thp=False, bint materialize=True,
                  *, bint alias=False):
        cdef timespec t0, t1
        cdef void *data               # the real memory: an alias's one page, else all of it
        cdef uint64_t data_size
        if size == 0 or size & (ALLONES_PAGE_SIZE - 1) or size > (1ULL << 47):
            raise ValueError(f"size {size:#x}: a positive multiple of the page size, at most 2^47")
        if prot & ~(PROT_READ | PROT_WRITE) or not prot & PROT_READ:
            raise ValueError(f"prot {prot:#x}: PROT_READ, optionally with PROT_WRITE")
        if fill is not None and not 0 <= int_arg(fill, "fill") <= 0xff:
            raise ValueError(f"fill {fill!r} must be a byte value 0..255")
        if alias and thp:
            raise ValueError("an alias mapping is 4 KiB VMAs of one file page: no THP")
        self.size, self.base_pfn, self.prot = size, base_pfn, prot
        self.fill = fill if fill is not None else 0
        self.thp, self.materialized, self.is_alias = thp, materialize, alias
        # An alias reserves its `size` bytes of hvas only; its memory is the one page.
        self.addr = map_anonymous(size, HPAGE_SIZE if thp else ALLONES_PAGE_SIZE,
                                  materialize and not alias)
        if self.addr == NULL:
            raise MemoryError(f"mmap of {size:#x} bytes failed (errno {errno})")
        if not materialize:
            return
        if alias:
            self.page = map_anonymous(ALLONES_PAGE_SIZE, ALLONES_PAGE_SIZE, True)
            if self.page == NULL:
                raise MemoryError(f"mmap of the alias page failed (errno {errno})")
        data = self.page if alias else self.addr
        data_size = ALLONES_PAGE_SIZE if alias else size
        if thp:
            madvise(data, data_size, MADV_HUGEPAGE)   # a hint: THP may be off on the host
        if self.fill:  # anonymous memory is already zero
            clock_gettime(CLOCK_MONOTONIC, &t0)
            memset(data, self.fill, data_size)
            clock_gettime(CLOCK_MONOTONIC, &t1)
            self.fill_ns = (t1.tv_sec - t0.tv_sec) * 1000000000 + (t1.tv_nsec - t0.tv_nsec)
        if prot != PROT_READ | PROT_WRITE and mprotect(data, data_size, prot) != 0:
            raise OSError(errno, "mprotect failed")

    def __dealloc__(self):
        if self.addr != NULL:
            munmap(self.addr, self.size)
        if self.page != NULL:
            munmap(self.page, ALLONES_PAGE_SIZE)

    @property
    def hva(self):
        """The mapping's real host virtual address."""
        return <uintptr_t>self.addr

    @property
    def data_hva(self):
        """Where the mapping's bytes are: `hva`, or an alias's one real page; 0 if not
        materialized."""
        if not self.materialized:
            return 0
        return <uintptr_t>(self.page if self.is_alias else self.addr)

    @property
    def npages(self):
        """Pages of address space (for an alias: the aliases, one VMA each)."""
        return self.size >> ALLONES_PAGE_SHIFT

    @property
    def nr_frames(self):
        """Host data frames it stands for: 1 for an alias, else npages (accounted or real)."""
        return 1 if self.is_alias else self.size >> ALLONES_PAGE_SHIFT

    @property
    def nr_vmas(self):
        """VMAs it stands for (vm.max_map_count's unit): npages for an alias, else 1."""
        return self.size >> ALLONES_PAGE_SHIFT if self.is_alias else 1

    @property
    def writable(self):
        return bool(self.prot & PROT_WRITE)

    def __getbuffer__(self, Py_buffer *buf, int flags):
        # An alias exposes its one real page (PAGE_SIZE bytes), whatever its size.
        if not self.materialized:
            raise BufferError("an accounting mapping has no memory")
        if flags & PyBUF_WRITABLE and not self.prot & PROT_WRITE:
            raise BufferError("the mapping is read-only (PROT_READ)")
        buf.buf = self.page if self.is_alias else self.addr
        buf.obj = self
        buf.len = ALLONES_PAGE_SIZE if self.is_alias else self.size
        buf.readonly = not (self.prot & PROT_WRITE)
        buf.itemsize = 1
        buf.format = "B"
        buf.ndim = 1
        buf.shape = NULL
        buf.strides = NULL
        buf.suboffsets = NULL
        buf.internal = NULL

    def __releasebuffer__(self, Py_buffer *buf):
        pass

    def __repr__(self):
        return (f"HostMapping(hva={self.hva:#x}, size={self.size:#x}, base_pfn={self.base_pfn:#x}, "
                f"prot={self.prot}, fill={self.fill}, thp={self.thp}, materialized={self.materialized}"
                + (", alias=True)" if self.is_alias else ")"))


cdef void *map_anonymous(uint64_t size, uint64_t align, bint materialize) noexcept nogil:
    """mmap `size` bytes at an `align`-aligned address: memory, or only reserved address space.

    Over-maps by `align` and trims both ends, so exactly [addr, addr + size) stays mapped.
    Returns NULL on failure.
    """
    cdef int prot = PROT_READ | PROT_WRITE if materialize else PROT_NONE
    cdef int flags = MAP_PRIVATE | MAP_ANONYMOUS | (0 if materialize else MAP_NORESERVE)
    cdef uint64_t span = size + (align - ALLONES_PAGE_SIZE)
    cdef char *base = <char *>mmap(NULL, span, prot, flags, -1, 0)
    cdef char *addr
    if base == <char *>MAP_FAILED:
        return NULL
    addr = <char *>(((<uintptr_t>base) + align - 1) & ~(<uintptr_t>align - 1))
    if addr > base:
        munmap(base, addr - base)
    if base + span > addr + size:
        munmap(addr + size, (base + span) - (addr + size))
    return addr


cdef class HostMM:
    """One immutable generation of the host's mappings, plus the shared all-ones page.

    mappings: HostMapping objects with disjoint ranges (any order); allones: the shared
    page's HostMapping, or None on a host without one (KVM_MEM_PCI_HOLE kernels).
    """

    def __cinit__(self, mappings=(), HostMapping allones=None):
        cdef int32_t n, i
        cdef HostMapping m
        mappings = tuple(mappings)
        for m in mappings:
            if not isinstance(m, HostMapping):
                raise TypeError(f"mappings must be HostMapping objects, not {type(m).__name__}")
        ordered = tuple(sorted(mappings, key=lambda m: m.hva))
        n = len(ordered)
        self.c.starts = <hva_t *>malloc(max(n, 1) * sizeof(hva_t))
        self.c.vmas = <host_vma *>malloc(max(n, 1) * sizeof(host_vma))
        if self.c.starts == NULL or self.c.vmas == NULL:
            raise MemoryError()
        for i in range(n):
            m = ordered[i]
            self.c.vmas[i] = host_vma(m.hva, m.npages, m.base_pfn, m.prot,
                                      (VMA_THP if m.thp else 0) | (0 if m.materialized else VMA_ACCOUNTING)
                                      | (VMA_ALIAS if m.is_alias else 0),
                                      m.fill, <uintptr_t>m.page)
            self.c.starts[i] = m.hva
        self.c.nr_vmas = n
        self.c.last_used_vma = 0
        self.c.allones_hva = allones.hva if allones is not None else 0
        self.c.allones_pfn = allones.base_pfn if allones is not None else KVM_PFN_NOSLOT
        self._mappings = ordered + ((allones,) if allones is not None else ())

    def __dealloc__(self):
        free(self.c.starts)
        free(self.c.vmas)

    @property
    def mappings(self):
        """The host mappings (not the all-ones page), ascending by hva."""
        return self._mappings[:self.c.nr_vmas]

    def hva_to_pfn(self, hva, bint write_fault):
        """(pfn, writable) behind hva, or (KVM_PFN_ERR_FAULT, False)."""
        cdef bint writable = False
        cdef pfn_t pfn = hva_to_pfn(&self.c, u64_arg(hva, "hva"), write_fault, &writable)
        return pfn, bool(writable)


cdef uint8_t *prepare_dirty_bitmap(Memslots old, Memslots new, int32_t old_index,
                                   const kvm_memory_slot *slot) except? NULL:
    """The new slot's dirty bitmap, as kvm_prepare_memory_region() decides it.

    Logging off: none. Logging on in the old slot too (a move or flags change): the same
    bitmap. Newly on: a fresh, clean one. `new._bitmaps` keeps whatever is returned alive.
    """
    cdef uint8_t[::1] bitmap
    if not slot.flags & KVM_MEM_LOG_DIRTY_PAGES:
        new._bitmaps.pop(slot.id, None)
        return NULL
    if old_index >= 0 and old.c.memslots[old_index].dirty_bitmap != NULL:
        return old.c.memslots[old_index].dirty_bitmap
    array = np.zeros(slot.npages, dtype=np.uint8)
    new._bitmaps[slot.id] = array
    bitmap = array
    return &bitmap[0]


cdef class VMCore:
    """A VM's memslots per address space and the rules that change them.

    Python subclasses (allones.vm.VM) add policy: errors, docs, coercion. The current
    generation of each address space is swapped in whole after a committed update.
    """

    def __cinit__(self, *args, **kwargs):
        self._memslots = [Memslots(as_id) for as_id in range(KVM_ADDRESS_SPACE_NUM)]

    def _configure(self, bint pci_hole, int phys_bits):
        """Fix the kernel build this VM runs on: what bit 2 means, and MAXPHYADDR."""
        if not 13 <= phys_bits <= 52:
            raise ValueError(f"phys_bits {phys_bits} outside 13..52")
        self.cfg.pci_hole = pci_hole
        self.cfg.max_gfn = (1ULL << (phys_bits - ALLONES_PAGE_SHIFT)) - 1

    cdef Memslots _current(self, as_id):
        as_id = int_arg(as_id, "as_id")
        if not 0 <= as_id < KVM_ADDRESS_SPACE_NUM:
            raise ValueError(f"as_id {as_id} outside 0..{KVM_ADDRESS_SPACE_NUM - 1}")
        return self._memslots[as_id]

    def memslots(self, as_id=0):
        """The current Memslots generation of an address space (a consistent snapshot)."""
        return self._current(as_id)

    def lookup(self, gfn, as_id=0):
        """Id of the memslot holding gfn in address space as_id, or -1."""
        cdef Memslots slots = self._current(as_id)
        cdef int32_t i = search_memslots(&slots.c, u64_arg(gfn, "gfn"), NULL)
        return slots.c.memslots[i].id if i >= 0 else -1

    def _set_user_memory_region(self, uint32_t slot, uint32_t flags, uint64_t guest_phys_addr,
                                uint64_t memory_size, uint64_t userspace_addr):
        """Apply one KVM_SET_USER_MEMORY_REGION: returns (rc, rule, change).

        rc is 0 or -errno. Nothing changes unless rc == 0 and change != KVM_MR_NONE.
        """
        cdef kvm_userspace_memory_region mem = kvm_userspace_memory_region(
            slot, flags, guest_phys_addr, memory_size, userspace_addr)
        cdef memslot_rule rule
        cdef memslot_change chg
        cdef Memslots old, new
        cdef int rc = check_memory_region(&mem, &self.cfg, &rule)
        if rc:
            return rc, rule, KVM_MR_NONE
        old = self._memslots[slot >> 16]
        rc = classify_memory_region(&old.c, &mem, &self.cfg, &chg, &rule)
        if rc or chg.change == KVM_MR_NONE:
            return rc, rule, KVM_MR_NONE
        new = Memslots.__new__(Memslots, old.as_id)
        new._bitmaps = dict(old._bitmaps)
        chg.new.dirty_bitmap = NULL if chg.change == KVM_MR_DELETE else \
            prepare_dirty_bitmap(old, new, chg.old_index, &chg.new)
        if chg.change == KVM_MR_DELETE:
            new._bitmaps.pop(chg.new.id, None)
        memslots_free(&new.c)
        rc = commit_memory_region(&old.c, &chg, &new.c)
        if rc:
            return rc, RULE_NOMEM, KVM_MR_NONE
        self._memslots[slot >> 16] = new   # the swap: one reference store under the GIL
        return 0, RULE_OK, chg.change
