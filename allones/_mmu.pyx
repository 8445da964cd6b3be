# cython: language_level=3
"""allones._mmu: the stage-2 table and the access engine (kvm_mmu_page_fault and friends).

A VM's guest accesses run here: walk the stage-2 table; on a hit, read or write the real
backing bytes; on an EPT violation, look the gfn up in the memslots, get its pfn with the
RFC's rules (allones._core) and map it, or exit to userspace (KVM_EXIT_MMIO), or emulate
the read in KVM (the v2's PCI_HOLE). The loop runs without the GIL; it stops only for an
exit that the caller's Python handler must answer, and resumes after it.

Semantics: Linux v6.6's TDP MMU where the RFC leaves it alone, with these model choices:
table pages are freed as soon as they are empty; no MMIO SPTEs are cached (every access
to a hole exits); memslot DELETE, MOVE and FLAGS_ONLY zap the old slot's range.
"""

from libc.errno cimport EFAULT, ENOMEM
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy

import numpy as np

from allones._core cimport (ALLONES_PAGE_SHIFT, ALLONES_PAGE_SIZE, HPAGE_SIZE, KVM_MEM_ALLONES,
                            KVM_MEM_LOG_DIRTY_PAGES, KVM_PFN_ERR_MASK, KVM_PFN_ERR_RO_FAULT,
                            KVM_PFN_NOSLOT, PAGES_PER_HPAGE, VMA_ACCOUNTING, VMA_ALIAS, VMA_THP,
                            HostMM, Memslots,
                            find_vma, gfn_to_hva_memslot, gfn_to_pfn_memslot, host_vma, index_of_id,
                            lookup_stats, search_memslots)

# `data` of a leaf whose memory is only accounted: this bit, and the fill byte below it.
cdef uint64_t DATA_FILL = 1ULL << 63
# Table pages the RFC's whole-slot loop could count on: mmu_topup_memory_caches() "only
# ensures there are enough objects available to map a single translation, i.e. one entry
# per level, sans the root" (Sean Christopherson's review of RFC 4/5); 4 on 5-level hosts.
cdef int RFC_TOPUP_TABLE_PAGES = 4
# A gpa the 4-level table can map: gfn < 2^36 (48-bit guest physical addresses).
cdef gfn_t MAX_GFN_4LEVEL = (1ULL << 36) - 1

EXIT_DTYPE = np.dtype({"names": ["index", "gpa", "value", "size", "is_write"],
                       "formats": ["<u8", "<u8", "<u8", "u1", "?"],
                       "offsets": [0, 8, 16, 24, 25], "itemsize": sizeof(exit_record)})
STAT_NAMES = ("accesses", "reads", "writes", "tlb_hits", "faults", "prefaulted", "exits_mmio",
              "exits_emulated", "memslot_lookups", "memslot_cache_hits", "mapped_4k", "mapped_2m",
              "table_pages_allocated", "table_pages_freed", "rfc_topup_shortfall",
              "bytes_read", "bytes_written")

# ---------------------------------------------------------------------------------------
# Table pages: allocation, walk, map, zap
# ---------------------------------------------------------------------------------------

cdef inline int pt_index(gfn_t gfn, int level) noexcept nogil:
    return (gfn >> (9 * (level - 1))) & (PT_ENTRIES - 1)


cdef inline gfn_t entry_pages(int level) noexcept nogil:
    """gfns one entry of a table at `level` covers: 1, 512, 512^2, 512^3."""
    return 1ULL << (9 * (level - 1))


cdef int32_t s2_alloc(stage2 *s2, int level, run_stats *st) noexcept nogil:
    """A zeroed table page of `level`; its index, or -1 (ENOMEM): out of memory, or past
    max_pages, as a VM whose page tables are charged to a memory cgroup (the kernel
    allocates them GFP_KERNEL_ACCOUNT) gets -ENOMEM from its page fault. The limit also
    keeps the pool's int32 indices from overflowing."""
    cdef int32_t idx
    cdef s2_table **grown
    cdef int32_t *grown_free
    if s2.table_pages[1] + s2.table_pages[2] + s2.table_pages[3] + s2.table_pages[4] >= s2.max_pages:
        return -1
    if s2.nr_free == 0:
        grown = <s2_table **>realloc(s2.pages, 2 * s2.capacity * sizeof(s2_table *))
        if grown == NULL:
            return -1
        s2.pages = grown
        grown_free = <int32_t *>realloc(s2.free_slots, 2 * s2.capacity * sizeof(int32_t))
        if grown_free == NULL:
            return -1
        s2.free_slots = grown_free
        for idx in range(2 * s2.capacity - 1, s2.capacity - 1, -1):
            s2.pages[idx] = NULL
            s2.free_slots[s2.nr_free] = idx
            s2.nr_free += 1
        s2.capacity *= 2
    idx = s2.free_slots[s2.nr_free - 1]
    s2.pages[idx] = <s2_table *>calloc(1, sizeof(s2_table))
    if s2.pages[idx] == NULL:
        return -1
    s2.nr_free -= 1
    s2.pages[idx].level = level
    s2.table_pages[level] += 1
    if st != NULL:
        st.table_pages_allocated += 1
    return idx


cdef void s2_free(stage2 *s2, int32_t idx, run_stats *st) noexcept nogil:
    s2.table_pages[s2.pages[idx].level] -= 1
    free(s2.pages[idx])
    s2.pages[idx] = NULL
    s2.free_slots[s2.nr_free] = idx
    s2.nr_free += 1
    if st != NULL:
        st.table_pages_freed += 1


cdef int s2_init(stage2 *s2) noexcept nogil:
    """An empty table: the root (level 4) only. 0 or -ENOMEM."""
    cdef int i
    s2.capacity, s2.nr_free = 16, 16
    s2.pages = <s2_table **>calloc(s2.capacity, sizeof(s2_table *))
    s2.free_slots = <int32_t *>malloc(s2.capacity * sizeof(int32_t))
    for i in range(PT_LEVELS + 1):
        s2.table_pages[i] = 0
    s2.max_pages = PT_LEVELS      # the root now; the owner sets the limit it wants
    if s2.pages == NULL or s2.free_slots == NULL:
        return -ENOMEM
    for i in range(s2.capacity):
        s2.free_slots[i] = s2.capacity - 1 - i
    s2.root = s2_alloc(s2, PT_LEVELS, NULL)
    return -ENOMEM if s2.root < 0 else 0


cdef void s2_destroy(stage2 *s2) noexcept nogil:
    cdef int32_t i
    if s2.pages != NULL:
        for i in range(s2.capacity):
            free(s2.pages[i])
    free(s2.pages)
    free(s2.free_slots)
    s2.pages, s2.free_slots, s2.capacity, s2.nr_free = NULL, NULL, 0, 0


cdef inline s2_table *s2_child(const stage2 *s2, uint64_t spte) noexcept nogil:
    # A table entry holds the pool index s2_alloc() returned; zap frees the child before
    # clearing the entry, so a present table entry never names a freed slot.
    return s2.pages[spte >> SPTE_ADDR_SHIFT]


cdef inline bint is_table_entry(uint64_t spte) noexcept nogil:
    return (spte & SPTE_PRESENT) != 0 and (spte & (SPTE_HUGE | SPTE_SHARED_PT)) == 0


cdef s2_table *s2_level2(stage2 *s2, gfn_t gfn, bint create, run_stats *st) noexcept nogil:
    """The level-2 table covering gfn, made (with its level-3 parent) if `create`; else NULL."""
    cdef s2_table *t = s2.pages[s2.root]
    cdef int level, i
    cdef int32_t child
    for level in range(PT_LEVELS, 2, -1):
        i = pt_index(gfn, level)
        if not t.spte[i] & SPTE_PRESENT:
            if not create:
                return NULL
            child = s2_alloc(s2, level - 1, st)
            if child < 0:
                return NULL
            t.spte[i] = (<uint64_t>child << SPTE_ADDR_SHIFT) | SPTE_PRESENT
            t.nr_present += 1
        t = s2_child(s2, t.spte[i])
    return t


cdef bint s2_walk(const stage2 *s2, const mmu_config *cfg, gfn_t gfn, uint64_t *spte,
                  uint64_t *page_data, int *level) noexcept nogil:
    """The leaf mapping gfn: its spte (pfn of gfn's own page), page data and level."""
    cdef const s2_table *t = s2.pages[s2.root]
    cdef uint64_t e
    cdef int lv, i
    for lv in range(PT_LEVELS, 0, -1):
        i = pt_index(gfn, lv)
        e = t.spte[i]
        if not e & SPTE_PRESENT:
            return False
        if e & SPTE_SHARED_PT:
            spte[0] = (cfg.allones_pfn << SPTE_ADDR_SHIFT) | SPTE_PRESENT
            page_data[0], level[0] = cfg.allones_hva, 1
            return True
        if e & SPTE_HUGE:
            spte[0] = e + ((gfn & (PAGES_PER_HPAGE - 1)) << SPTE_ADDR_SHIFT)
            page_data[0] = page_in_region(t.data[i], gfn)
            level[0] = 2
            return True
        if lv == 1:
            spte[0], page_data[0], level[0] = e, t.data[i], 1
            return True
        t = s2_child(s2, e)
    return False


cdef inline uint64_t page_in_region(uint64_t region_data, gfn_t gfn) noexcept nogil:
    """Data of gfn's page inside a 2 MiB region's data."""
    if region_data & DATA_FILL:
        return region_data
    return region_data + (gfn & (PAGES_PER_HPAGE - 1)) * ALLONES_PAGE_SIZE


cdef int s2_map_4k(stage2 *s2, gfn_t gfn, uint64_t spte, uint64_t data, bint replace,
                   run_stats *st) noexcept nogil:
    """Install a 4 KiB leaf. 0 installed, 1 left alone (mapped already), -ENOMEM."""
    cdef s2_table *l2 = s2_level2(s2, gfn, True, st)
    cdef s2_table *l1
    cdef int i2 = pt_index(gfn, 2), i1 = pt_index(gfn, 1)
    cdef int32_t child
    if l2 == NULL:
        return -ENOMEM
    if l2.spte[i2] & (SPTE_HUGE | SPTE_SHARED_PT):
        return 1
    if not l2.spte[i2] & SPTE_PRESENT:
        child = s2_alloc(s2, 1, st)
        if child < 0:
            return -ENOMEM
        l2.spte[i2] = (<uint64_t>child << SPTE_ADDR_SHIFT) | SPTE_PRESENT
        l2.nr_present += 1
    l1 = s2_child(s2, l2.spte[i2])
    if l1.spte[i1] & SPTE_PRESENT:
        if not replace:
            return 1
    else:
        l1.nr_present += 1
    l1.spte[i1], l1.data[i1] = spte, data
    st.mapped_4k += 1
    return 0


cdef int s2_map_2m(stage2 *s2, gfn_t gfn, uint64_t spte, uint64_t data, run_stats *st) noexcept nogil:
    """Install a level-2 entry (a 2 MiB leaf or a shared-pt entry) for gfn's region,
    replacing a level-1 table there (as the TDP MMU does). 0, 1 (mapped already), -ENOMEM."""
    cdef s2_table *l2 = s2_level2(s2, gfn, True, st)
    cdef int i2 = pt_index(gfn, 2)
    cdef uint64_t old
    if l2 == NULL:
        return -ENOMEM
    old = l2.spte[i2]
    if old & (SPTE_HUGE | SPTE_SHARED_PT):
        return 1
    if old & SPTE_PRESENT:
        s2_free(s2, <int32_t>(old >> SPTE_ADDR_SHIFT), st)
    else:
        l2.nr_present += 1
    l2.spte[i2], l2.data[i2] = spte, data
    st.mapped_2m += 1
    return 0


cdef void zap_table(stage2 *s2, s2_table *t, int level, gfn_t base, gfn_t start, gfn_t end,
                    run_stats *st) noexcept nogil:
    """Remove every mapping of [start, end) below table t, which covers gfns from `base`;
    free the tables that become empty. A level-2 leaf touching the range goes whole."""
    cdef gfn_t span = entry_pages(level), lo
    cdef int i, first, last
    cdef s2_table *child
    first = <int>((start - base) // span) if start > base else 0
    last = <int>min(<gfn_t>(PT_ENTRIES - 1), (end - 1 - base) // span)
    for i in range(first, last + 1):
        if not t.spte[i] & SPTE_PRESENT:
            continue
        lo = base + <gfn_t>i * span
        if is_table_entry(t.spte[i]) and level > 1:
            child = s2_child(s2, t.spte[i])
            zap_table(s2, child, level - 1, lo, start, end, st)
            if child.nr_present:
                continue
            s2_free(s2, <int32_t>(t.spte[i] >> SPTE_ADDR_SHIFT), st)
        t.spte[i], t.data[i] = 0, 0
        t.nr_present -= 1


cdef void s2_zap_range(stage2 *s2, gfn_t start, gfn_t end, run_stats *st) noexcept nogil:
    """kvm_arch_flush_shadow_memslot / kvm_unmap_gfn_range for [start, end)."""
    if end > MAX_GFN_4LEVEL + 1:
        end = MAX_GFN_4LEVEL + 1
    if start < end:
        zap_table(s2, s2.pages[s2.root], PT_LEVELS, 0, start, end, st)


cdef void s2_write_protect(stage2 *s2, gfn_t gfn) noexcept nogil:
    """Clear the writable bit of gfn's 4 KiB leaf (dirty-logged slots have no 2 MiB leaves)."""
    cdef s2_table *l2 = s2_level2(s2, gfn, False, NULL)
    cdef int i2 = pt_index(gfn, 2)
    if l2 != NULL and is_table_entry(l2.spte[i2]):
        s2_child(s2, l2.spte[i2]).spte[pt_index(gfn, 1)] &= ~(<uint64_t>SPTE_WRITABLE)


cdef void s2_log_dirty_enabled(stage2 *s2, gfn_t start, gfn_t end) noexcept nogil:
    cdef gfn_t g = start
    cdef s2_table *l2
    cdef int i2
    while g < end:
        l2 = s2_level2(s2, g, False, NULL)
        i2 = pt_index(g, 2)
        if l2 != NULL and l2.spte[i2] & SPTE_HUGE:
            s2_zap_range(s2, g, g + 1, NULL)
        elif l2 != NULL and is_table_entry(l2.spte[i2]):
            s2_write_protect(s2, g)
        g += 1


cdef void recount(const stage2 *s2, const s2_table *t, int64_t *pages) noexcept nogil:
    cdef int i
    pages[t.level] += 1
    if t.level == 1:
        return
    for i in range(PT_ENTRIES):
        if is_table_entry(t.spte[i]):
            recount(s2, s2_child(s2, t.spte[i]), pages)


# ---------------------------------------------------------------------------------------
# The fault path (kvm_mmu_page_fault -> kvm_faultin_pfn -> kvm_tdp_mmu_map)
# ---------------------------------------------------------------------------------------

cdef enum fault_result:
    FAULT_MAPPED = 0              # a mapping now serves the access
    FAULT_MMIO                    # KVM_EXIT_MMIO to userspace
    FAULT_EMULATED                # read emulated in KVM (v2 PCI_HOLE): all-ones
    FAULT_EFAULT                  # KVM_RUN fails with EFAULT (no host memory)
    FAULT_ENOMEM                  # a table page could not be allocated
    FAULT_NEED_HUGEPAGE           # undone: the host's 2 MiB all-ones page must be made first


cdef struct run_ctx:
    stage2 *s2
    kvm_memslots *slots
    host_mm *mm
    mmu_config cfg
    const uint64_t *gpas
    const uint8_t *sizes
    const uint8_t *is_write
    uint64_t *values
    Py_ssize_t n
    const uint64_t *mmio_gfns     # sorted gfns whose exits the Python handler answers
    Py_ssize_t nr_mmio_gfns       # (-1: all of them; 0 with no handler: none)
    exit_record *exits            # NULL unless recording
    Py_ssize_t nr_exits
    bint used_shared_pt           # a shared-pt entry was installed
    run_stats st


cdef inline uint64_t fill_data(const host_vma *vma, hva_t hva) noexcept nogil:
    """Where a page's bytes are: its hva, the one real page of an alias mapping, or the
    fill byte for accounting memory."""
    if vma.flags & VMA_ACCOUNTING:
        return DATA_FILL | vma.fill
    return vma.alias_data if vma.flags & VMA_ALIAS else hva


cdef bint huge_allowed(const kvm_memory_slot *slot, gfn_t gfn, const host_vma *vma,
                       hva_t hva) noexcept nogil:
    """kvm_mmu_max_mapping_level() == 2 MiB: slot covers the aligned region, gfn and hva
    agree modulo 2 MiB (lpage_info), no dirty logging, and THP backs the hva region.
    Never for an alias mapping (4 KiB VMAs of one file page: no THP, pfns not contiguous)."""
    cdef gfn_t region = gfn & ~(<gfn_t>PAGES_PER_HPAGE - 1)
    cdef hva_t hregion = hva & ~(<hva_t>HPAGE_SIZE - 1)
    if region < slot.base_gfn or region + PAGES_PER_HPAGE > slot.base_gfn + slot.npages:
        return False
    if (slot.base_gfn ^ (slot.userspace_addr >> ALLONES_PAGE_SHIFT)) & (PAGES_PER_HPAGE - 1):
        return False
    if slot.flags & KVM_MEM_LOG_DIRTY_PAGES or not vma.flags & VMA_THP or vma.flags & VMA_ALIAS:
        return False
    return hregion >= vma.start and hregion + HPAGE_SIZE <= vma.start + vma.npages * ALLONES_PAGE_SIZE


cdef int map_normal(run_ctx *r, const kvm_memory_slot *slot, gfn_t gfn, pfn_t pfn,
                    bint writable) noexcept nogil:
    """Map a memory-backed gfn: 2 MiB where allowed, else 4 KiB; mark the dirty log."""
    cdef hva_t hva = gfn_to_hva_memslot(slot, gfn, r.mm)
    cdef const host_vma *vma = &r.mm.vmas[find_vma(r.mm, hva)]   # exists: pfn is valid
    cdef uint64_t flags = SPTE_PRESENT | (SPTE_WRITABLE if writable else 0)
    cdef gfn_t off = gfn & (PAGES_PER_HPAGE - 1)
    cdef int rc
    if huge_allowed(slot, gfn, vma, hva):
        return s2_map_2m(r.s2, gfn, ((pfn - off) << SPTE_ADDR_SHIFT) | flags | SPTE_HUGE,
                         fill_data(vma, hva - off * ALLONES_PAGE_SIZE), &r.st)
    rc = s2_map_4k(r.s2, gfn, (pfn << SPTE_ADDR_SHIFT) | flags, fill_data(vma, hva), True, &r.st)
    if rc == 0 and writable and slot.dirty_bitmap != NULL:
        # v6.6 make_spte(): a writable SPTE in a dirty-logged slot marks the page dirty.
        # The bitmap has npages bytes and gfn lies in the slot (the fault found it there).
        slot.dirty_bitmap[gfn - slot.base_gfn] = 1
    return rc


cdef int map_allones(run_ctx *r, const kvm_memory_slot *slot, gfn_t gfn) noexcept nogil:
    """Map a read fault in an all-ones slot: one page (or region), or the whole slot."""
    cdef gfn_t lo = gfn, hi = gfn + 1, g, region, chunk_end
    cdef gfn_t slot_end = slot.base_gfn + slot.npages
    cdef uint64_t entries = 0, pages_before = r.st.table_pages_allocated
    cdef bint whole = r.cfg.prefault == PREFAULT_WHOLE_SLOT
    cdef int rc = 0
    if whole:
        lo, hi = slot.base_gfn, slot_end
    if r.cfg.allones_map == ALLONES_MAP_HUGEPAGE and r.cfg.allones_huge_hva == 0 and \
            has_whole_region(lo, hi, slot.base_gfn, slot_end):
        return NEED_HUGEPAGE   # made on first use: the caller makes it and retries
    g = lo
    while g < hi and rc >= 0:     # ENOMEM part-way: what was mapped stays, and is counted
        region = g & ~(<gfn_t>PAGES_PER_HPAGE - 1)
        if r.cfg.allones_map != ALLONES_MAP_4K and region >= slot.base_gfn and \
                region + PAGES_PER_HPAGE <= slot_end:
            rc = s2_map_2m(r.s2, region, allones_region_spte(&r.cfg),
                           allones_region_data(&r.cfg), &r.st)
            r.used_shared_pt |= rc == 0 and r.cfg.allones_map == ALLONES_MAP_SHARED_PT
            entries += rc == 0
            g = region + PAGES_PER_HPAGE
        else:
            chunk_end = min(hi, region + PAGES_PER_HPAGE)
            while g < chunk_end and rc >= 0:
                rc = s2_map_4k(r.s2, g, (r.cfg.allones_pfn << SPTE_ADDR_SHIFT) | SPTE_PRESENT,
                               r.cfg.allones_hva, False, &r.st)
                entries += rc == 0
                g += 1
    if whole:
        r.st.prefaulted += entries - 1 if entries else 0
        if r.st.table_pages_allocated - pages_before > <uint64_t>RFC_TOPUP_TABLE_PAGES:
            r.st.rfc_topup_shortfall += r.st.table_pages_allocated - pages_before - RFC_TOPUP_TABLE_PAGES
    return rc if rc < 0 else 0


cdef enum:
    NEED_HUGEPAGE = 1             # map_allones: the host's 2 MiB all-ones page is not made yet


cdef inline bint has_whole_region(gfn_t lo, gfn_t hi, gfn_t base, gfn_t end) noexcept nogil:
    """Does [lo, hi) touch a 2 MiB-aligned region lying wholly in the slot [base, end)?"""
    cdef gfn_t first = (max(lo, base) + PAGES_PER_HPAGE - 1) & ~(<gfn_t>PAGES_PER_HPAGE - 1)
    if first + PAGES_PER_HPAGE <= end and first < hi:
        return True
    first = lo & ~(<gfn_t>PAGES_PER_HPAGE - 1)     # lo's own region
    return first >= base and first + PAGES_PER_HPAGE <= end


cdef inline uint64_t allones_region_spte(const mmu_config *cfg) noexcept nogil:
    if cfg.allones_map == ALLONES_MAP_SHARED_PT:
        return SPTE_PRESENT | SPTE_SHARED_PT
    return (cfg.allones_huge_pfn << SPTE_ADDR_SHIFT) | SPTE_PRESENT | SPTE_HUGE


cdef inline uint64_t allones_region_data(const mmu_config *cfg) noexcept nogil:
    return cfg.allones_hva if cfg.allones_map == ALLONES_MAP_SHARED_PT else cfg.allones_huge_hva


cdef fault_result handle_fault(run_ctx *r, gfn_t gfn, bint write) noexcept nogil:
    """kvm_mmu_page_fault() for an access that no mapping serves."""
    cdef lookup_stats ls = lookup_stats(0, 0)
    cdef int32_t i
    cdef const kvm_memory_slot *slot = NULL
    cdef bint writable
    cdef pfn_t pfn
    cdef int rc
    cdef run_stats before = r.st
    cdef int32_t cache_before = r.slots.last_used_slot
    r.st.faults += 1
    i = search_memslots(r.slots, gfn, &ls)
    r.st.memslot_lookups += ls.lookups
    r.st.memslot_cache_hits += ls.cache_hits
    if i >= 0:
        slot = &r.slots.memslots[i]
    if slot != NULL and r.cfg.pci_hole and slot.flags & KVM_MEM_ALLONES:
        # v2: a read fault returns RET_PF_EMULATE; __kvm_read_guest_page() gives 0xff.
        return FAULT_MMIO if write else FAULT_EMULATED
    pfn = gfn_to_pfn_memslot(slot, gfn, write, &writable, r.mm)
    if pfn == KVM_PFN_NOSLOT or pfn == KVM_PFN_ERR_RO_FAULT:
        return FAULT_MMIO
    if pfn & KVM_PFN_ERR_MASK:                  # is_error_pfn(): no host memory
        return FAULT_EFAULT
    if slot.flags & KVM_MEM_ALLONES:
        rc = map_allones(r, slot, gfn)
        if rc == NEED_HUGEPAGE:
            # Undone whole (counters, memslot cache): taken again once the page exists.
            r.st = before
            r.slots.last_used_slot = cache_before
            return FAULT_NEED_HUGEPAGE
    else:
        rc = map_normal(r, slot, gfn, pfn, writable)
    return FAULT_ENOMEM if rc < 0 else FAULT_MAPPED


# ---------------------------------------------------------------------------------------
# The access loop
# ---------------------------------------------------------------------------------------

cdef enum run_stop:
    RUN_DONE = 0
    RUN_HANDLER                   # access k exited; the Python handler must answer it
    RUN_EFAULT                    # access k has no host memory: KVM_RUN's EFAULT
    RUN_ENOMEM
    RUN_HUGEPAGE                  # access k needs the host's 2 MiB all-ones page made


cdef inline uint64_t size_mask(int size) noexcept nogil:
    return 0xFFFFFFFFFFFFFFFF if size == 8 else (1ULL << (8 * size)) - 1


cdef inline void access_memory(run_ctx *r, Py_ssize_t k, uint64_t page_data, uint64_t off,
                               int size, bint write) noexcept nogil:
    cdef uint64_t v = 0
    if write:
        r.st.bytes_written += size
        if not page_data & DATA_FILL:
            v = r.values[k]
            memcpy(<void *>(<size_t>(page_data + off)), &v, size)   # little-endian, as x86
        return
    r.st.bytes_read += size
    if page_data & DATA_FILL:
        v = (page_data & 0xFF) * 0x0101010101010101ULL
    else:
        memcpy(&v, <const void *>(<size_t>(page_data + off)), size)
    r.values[k] = v & size_mask(size)


cdef inline bint handler_answers(const run_ctx *r, gfn_t gfn) noexcept nogil:
    """Does the Python handler answer exits at gfn? (binary search of mmio_gfns)"""
    cdef Py_ssize_t lo = 0, hi = r.nr_mmio_gfns, mid
    if r.nr_mmio_gfns < 0:
        return True
    while lo < hi:
        mid = (lo + hi) >> 1
        if r.mmio_gfns[mid] < gfn:
            lo = mid + 1
        else:
            hi = mid
    return lo < r.nr_mmio_gfns and r.mmio_gfns[lo] == gfn


cdef inline void record_exit(run_ctx *r, Py_ssize_t k, uint64_t value) noexcept nogil:
    # exits[] has n entries and at most one exit is recorded per access: nr_exits <= k < n.
    if r.exits != NULL:
        r.exits[r.nr_exits] = exit_record(k, r.gpas[k], value, r.sizes[k], r.is_write[k])
        r.nr_exits += 1


cdef inline void count_access(run_ctx *r, bint write) noexcept nogil:
    r.st.accesses += 1
    if write:
        r.st.writes += 1
    else:
        r.st.reads += 1


cdef struct walk_cache:
    # The level-1 table of the last 2 MiB region walked (NULL if that region has none), so
    # a scan walks one level per access, not four. Valid until the table changes (a fault).
    gfn_t region
    s2_table *l1


cdef inline bint walk_cached(run_ctx *r, walk_cache *wc, gfn_t gfn, uint64_t *spte,
                             uint64_t *page_data) noexcept nogil:
    """s2_walk() through the cache: the leaf's spte and page data, if gfn is mapped."""
    cdef s2_table *l2
    cdef int level, i2
    cdef int i1 = gfn & (PT_ENTRIES - 1)
    if gfn >> 9 != wc.region:
        wc.region, wc.l1 = gfn >> 9, NULL
        l2 = s2_level2(r.s2, gfn, False, NULL)
        i2 = pt_index(gfn, 2)
        if l2 != NULL and is_table_entry(l2.spte[i2]):
            wc.l1 = s2_child(r.s2, l2.spte[i2])
    if wc.l1 != NULL:
        spte[0], page_data[0] = wc.l1.spte[i1], wc.l1.data[i1]
        return (spte[0] & SPTE_PRESENT) != 0
    return s2_walk(r.s2, &r.cfg, gfn, spte, page_data, &level)


cdef run_stop run_loop(run_ctx *r, Py_ssize_t *pos) noexcept nogil:
    """Replay accesses from *pos on; stop at the end or at an access Python must see."""
    cdef Py_ssize_t k
    cdef gfn_t gfn
    cdef uint64_t spte, page_data, off, hole
    cdef int level, size
    cdef bint write
    cdef fault_result fr
    cdef walk_cache wc = walk_cache(~(<gfn_t>0), NULL)
    for k in range(pos[0], r.n):
        gfn = r.gpas[k] >> ALLONES_PAGE_SHIFT
        off = r.gpas[k] & (ALLONES_PAGE_SIZE - 1)
        size, write = r.sizes[k], r.is_write[k]
        if walk_cached(r, &wc, gfn, &spte, &page_data) and (not write or spte & SPTE_WRITABLE):
            r.st.tlb_hits += 1
            count_access(r, write)
            access_memory(r, k, page_data, off, size, write)
            continue
        fr = handle_fault(r, gfn, write)
        wc.region = ~(<gfn_t>0)       # the table may have changed
        if fr == FAULT_MAPPED:
            s2_walk(r.s2, &r.cfg, gfn, &spte, &page_data, &level)
            count_access(r, write)
            access_memory(r, k, page_data, off, size, write)
        elif fr == FAULT_EMULATED:
            r.st.exits_emulated += 1
            count_access(r, write)
            r.st.bytes_read += size
            r.values[k] = size_mask(size)
            record_exit(r, k, r.values[k])
        elif fr == FAULT_MMIO:
            r.st.exits_mmio += 1
            count_access(r, write)
            if write:
                r.st.bytes_written += size
            else:
                r.st.bytes_read += size
            if handler_answers(r, gfn):
                pos[0] = k
                return RUN_HANDLER
            hole = r.values[k] if write else size_mask(size)   # holes: 0xff.., writes dropped
            if not write:
                r.values[k] = hole
            record_exit(r, k, hole)
        else:
            pos[0] = k
            return RUN_EFAULT if fr == FAULT_EFAULT else (
                RUN_HUGEPAGE if fr == FAULT_NEED_HUGEPAGE else RUN_ENOMEM)
    pos[0] = r.n
    return RUN_DONE


cdef Py_ssize_t check_accesses(const uint64_t *gpas, const uint8_t *sizes, Py_ssize_t n,
                               gfn_t max_gfn, int *why) noexcept nogil:
    """Index of the first access the engine refuses (why: 1 size, 2 crosses a page,
    3 gpa beyond the guest's physical address width), or -1.

    A guest cannot make an access past its MAXPHYADDR: its own page tables would have
    reserved bits set (a #PF in the guest, never an EPT violation). max_gfn is
    kvm_mmu_max_gfn(), at most MAX_GFN_4LEVEL (phys_bits <= 48).
    """
    cdef Py_ssize_t k
    for k in range(n):
        if sizes[k] != 1 and sizes[k] != 2 and sizes[k] != 4 and sizes[k] != 8:
            why[0] = 1
            return k
        if (gpas[k] & (ALLONES_PAGE_SIZE - 1)) + sizes[k] > ALLONES_PAGE_SIZE:
            why[0] = 2
            return k
        if gpas[k] >> ALLONES_PAGE_SHIFT > max_gfn:
            why[0] = 3
            return k
    return -1


# ---------------------------------------------------------------------------------------
# Python face
# ---------------------------------------------------------------------------------------

class RunStopped(Exception):
    """Internal: the run stopped early (carries index, errno and stats)."""

    def __init__(self, index, errno, stats):
        super().__init__(index, errno, stats)
        self.index, self.errno, self.stats = index, errno, stats


cdef class Stage2:
    """One address space's stage-2 table, with its table-page counts."""

    def __cinit__(self, int as_id=0, int64_t max_pages=1 << 17):
        self.as_id = as_id
        if max_pages < PT_LEVELS:
            raise ValueError(f"max_pages={max_pages}: a walk needs {PT_LEVELS} table pages")
        if s2_init(&self.c):
            s2_destroy(&self.c)
            raise MemoryError()
        self.c.max_pages = max_pages

    def __dealloc__(self):
        s2_destroy(&self.c)

    def table_pages(self):
        """Live table pages by level: (L1, L2, L3, L4)."""
        return tuple(int(self.c.table_pages[lv]) for lv in range(1, PT_LEVELS + 1))

    def recount_table_pages(self):
        """Table pages by level, counted by walking the table from its root."""
        cdef int64_t pages[PT_LEVELS + 1]
        for lv in range(PT_LEVELS + 1):
            pages[lv] = 0
        recount(&self.c, self.c.pages[self.c.root], pages)
        return tuple(int(pages[lv]) for lv in range(1, PT_LEVELS + 1))

    def zap(self, gfn_t start, gfn_t end):
        """Remove every mapping of gfns in [start, end)."""
        s2_zap_range(&self.c, start, end, NULL)

    def take_dirty_log(self, Memslots slots not None, int id):
        """KVM_GET_DIRTY_LOG for slot `id` of `slots` (the current generation): return the
        dirty pages as a bool array, clear the marks, write-protect those pages."""
        cdef int32_t i = index_of_id(&slots.c, id)
        cdef kvm_memory_slot *slot = &slots.c.memslots[i] if i >= 0 else NULL
        cdef uint64_t k
        if slot == NULL or slot.dirty_bitmap == NULL:
            return None
        dirty = np.zeros(slot.npages, dtype=np.bool_)
        for k in range(slot.npages):
            if slot.dirty_bitmap[k]:
                dirty[k] = True
                slot.dirty_bitmap[k] = 0
                s2_write_protect(&self.c, slot.base_gfn + k)
        return dirty

    def log_dirty_enabled(self, gfn_t start, gfn_t end):
        """kvm_mmu_slot_apply_flags() when dirty logging starts on [start, end): leaves are
        write-protected (kvm_mmu_slot_remove_write_access), 2 MiB ones zapped (a logged
        slot maps 4 KiB only), so the next write to each page faults and marks it."""
        s2_log_dirty_enabled(&self.c, start, end)

    def walk(self, gfn_t gfn, HostMM mm not None, dict cfg_values):
        """(pfn, writable, level) of the leaf mapping gfn, or None."""
        cdef mmu_config cfg = make_config(cfg_values)
        cdef uint64_t spte, data
        cdef int level
        if gfn > MAX_GFN_4LEVEL or not s2_walk(&self.c, &cfg, gfn, &spte, &data, &level):
            return None
        return int(spte >> SPTE_ADDR_SHIFT), bool(spte & SPTE_WRITABLE), level


cdef mmu_config make_config(dict v):
    cdef mmu_config cfg
    cfg.prefault, cfg.allones_map, cfg.pci_hole = v["prefault"], v["allones_map"], v["pci_hole"]
    cfg.allones_hva, cfg.allones_pfn = v["allones_hva"], v["allones_pfn"]
    cfg.allones_huge_hva, cfg.allones_huge_pfn = v["allones_huge_hva"], v["allones_huge_pfn"]
    return cfg


def run(Stage2 s2 not None, slots_of, mm_of, cfg_of,
        const uint64_t[::1] gpas not None, const uint8_t[::1] sizes not None,
        const uint8_t[::1] is_write not None, uint64_t[::1] values not None,
        on_mmio, const uint64_t[::1] mmio_gfns, bint record_exits, make_hugepage,
        used_shared_pt):
    """Replay accesses; see allones.vm.VM.run. slots_of(), mm_of() and cfg_of() give the
    current Memslots, HostMM and config dict; they are asked again whenever the run resumes
    after Python ran (an exit handler may change memslots or mappings; make_hugepage()
    makes the host's 2 MiB all-ones page on its first use). used_shared_pt() is called once
    if a shared-pt entry was installed, however the run ends.

    Returns (stats dict, exits array or None).
    Raises RunStopped(index, errno, stats).
    """
    cdef run_ctx r
    cdef Py_ssize_t pos = 0, bad
    cdef int why = 0
    cdef run_stop stop
    cdef Memslots slots
    cdef HostMM mm
    cdef uint8_t[::1] exit_bytes
    cdef Py_ssize_t n = gpas.shape[0]
    if sizes.shape[0] != n or is_write.shape[0] != n or values.shape[0] != n:
        raise ValueError("gpas, sizes, is_write and values must have the same length")
    cfg = cfg_of()
    bad = check_accesses(&gpas[0] if n else NULL, &sizes[0] if n else NULL, n,
                         min(<gfn_t>cfg["max_gfn"], MAX_GFN_4LEVEL), &why)
    if bad >= 0:
        reason = {1: "size must be 1, 2, 4 or 8",
                  2: "the access crosses a page boundary (not split: issue it as two)",
                  3: f"gpa beyond the guest's physical address width (max gfn {cfg['max_gfn']:#x})"}[why]
        raise ValueError(f"access {bad} (gpa {gpas[bad]:#x}, size {sizes[bad]}): {reason}")
    exits = np.zeros(n, dtype=EXIT_DTYPE) if record_exits else None
    r.s2 = &s2.c
    r.gpas = &gpas[0] if n else NULL
    r.sizes = &sizes[0] if n else NULL
    r.is_write = &is_write[0] if n else NULL
    r.values = &values[0] if n else NULL
    r.n = n
    r.mmio_gfns = &mmio_gfns[0] if mmio_gfns is not None and mmio_gfns.shape[0] else NULL
    r.nr_mmio_gfns = (mmio_gfns.shape[0] if mmio_gfns is not None else -1) if on_mmio is not None else 0
    r.exits = NULL
    if record_exits and n:
        exit_bytes = exits.view(np.uint8)   # EXIT_DTYPE has exit_record's layout
        r.exits = <exit_record *>&exit_bytes[0]
    r.nr_exits = 0
    r.used_shared_pt = False
    memset_stats(&r.st)
    try:
        while True:
            slots, mm = slots_of(), mm_of()   # held across the nogil run: never freed under it
            r.slots, r.mm, r.cfg = &slots.c, &mm.c, make_config(cfg_of())
            with nogil:
                stop = run_loop(&r, &pos)
            if stop == RUN_HANDLER:
                try:
                    answer_exit(&r, pos, on_mmio)
                except BaseException as exc:
                    # What ran stays (as at an EFAULT stop); say so on the exception.
                    exc.allones_index = pos
                    exc.allones_stats = {name: int(v) for name, v in zip(STAT_NAMES, stats_tuple(&r.st))}
                    raise
                pos += 1
            elif stop == RUN_HUGEPAGE:
                make_hugepage()
            else:
                break
    finally:
        if r.used_shared_pt:
            used_shared_pt()
    stats = {name: int(v) for name, v in zip(STAT_NAMES, stats_tuple(&r.st))}
    if stop == RUN_EFAULT or stop == RUN_ENOMEM:
        raise RunStopped(pos, EFAULT if stop == RUN_EFAULT else ENOMEM, stats)
    return stats, exits[:r.nr_exits] if exits is not None else None


cdef void answer_exit(run_ctx *r, Py_ssize_t k, on_mmio) except *:
    """Call the Python handler for exit k (with the GIL) and record its answer."""
    cdef int size = r.sizes[k]
    write = bool(r.is_write[k])
    answer = on_mmio(int(r.gpas[k]), size, write, int(r.values[k]))
    if not write:
        # KVM copies `len` bytes of run->mmio.data: wider answers are cut to the access.
        if answer is None:
            answer = size_mask(size)
        elif not isinstance(answer, (int, np.integer)):
            raise TypeError(f"on_mmio returned {type(answer).__name__}: an integer or None answers a read")
        r.values[k] = int(answer) & size_mask(size)
    record_exit(r, k, r.values[k])


cdef void memset_stats(run_stats *st) noexcept nogil:
    cdef uint64_t *p = <uint64_t *>st
    cdef int i
    for i in range(sizeof(run_stats) // sizeof(uint64_t)):
        p[i] = 0


cdef tuple stats_tuple(const run_stats *st):
    cdef const uint64_t *p = <const uint64_t *>st
    return tuple(p[i] for i in range(sizeof(run_stats) // sizeof(uint64_t)))
