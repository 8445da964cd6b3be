# cython: language_level=3
"""The stage-2 (EPT-like) table and the access engine: declarations, see _mmu.pyx.

A table page holds 512 entries (`spte`) and, for leaves, where the page's bytes are
(`data`: a real hva, or DATA_FILL | byte for memory that is only accounted). Table pages
live in a per-address-space pool and are named by their index in it.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t

from allones._core cimport gfn_t, host_mm, hva_t, kvm_memory_slot, kvm_memslots, pfn_t

cdef enum:
    SPTE_PRESENT = 1 << 0         # readable (and executable: not modeled apart)
    SPTE_WRITABLE = 1 << 1
    SPTE_HUGE = 1 << 7            # level 2: a 2 MiB leaf
    SPTE_SHARED_PT = 1 << 8       # level 2: the host's shared all-ones level-1 table
    SPTE_ADDR_SHIFT = 12          # pfn (leaf) or child table index (non-leaf) from bit 12
    PT_ENTRIES = 512
    PT_LEVELS = 4

cdef enum prefault_policy:
    PREFAULT_ON_DEMAND = 0        # one fault maps one page (or one 2 MiB region)
    PREFAULT_WHOLE_SLOT = 1       # the series' follow-up: the first fault maps the slot

cdef enum allones_map:
    ALLONES_MAP_4K = 0            # the RFC: 4 KiB entries to the shared page
    ALLONES_MAP_SHARED_PT = 1     # a shared level-1 table of 512 entries to the page
    ALLONES_MAP_HUGEPAGE = 2      # a shared 2 MiB all-ones page, 2 MiB entries

cdef struct s2_table:
    uint64_t spte[PT_ENTRIES]     # pfn << 12 | SPTE_* (leaf), index << 12 | PRESENT (table)
    uint64_t data[PT_ENTRIES]     # leaves: hva of the page (2 MiB leaf: of the region)
    int32_t nr_present            # present entries; the page is freed at 0 (not the root)
    int32_t level                 # 1..4

cdef struct stage2:
    s2_table **pages              # the pool; NULL slots are free
    int32_t capacity              # slots in `pages`
    int32_t *free_slots           # a stack of free indices
    int32_t nr_free
    int32_t root                  # index of the level-4 table
    int64_t table_pages[PT_LEVELS + 1]   # live table pages by level, [1]..[4]
    int64_t max_pages             # live table pages allowed: the VM's page-table memory limit

cdef struct mmu_config:
    int prefault                  # prefault_policy
    int allones_map               # allones_map
    bint pci_hole                 # bit 2 is KVM_MEM_PCI_HOLE: reads emulated, no page
    hva_t allones_hva             # the shared 4 KiB page
    pfn_t allones_pfn
    hva_t allones_huge_hva        # the shared 2 MiB page (0 unless ALLONES_MAP_HUGEPAGE)
    pfn_t allones_huge_pfn

# What a run counts (DESIGN.md section 5). All are totals over the run.
cdef struct run_stats:
    uint64_t accesses
    uint64_t reads
    uint64_t writes
    uint64_t tlb_hits             # served by an existing mapping
    uint64_t faults               # EPT violations handled by the fault path
    uint64_t prefaulted           # entries a whole-slot prefault added beyond the faulting one
    uint64_t exits_mmio           # KVM_EXIT_MMIO to userspace
    uint64_t exits_emulated       # reads emulated inside KVM (v2 PCI_HOLE)
    uint64_t memslot_lookups
    uint64_t memslot_cache_hits
    uint64_t mapped_4k            # 4 KiB leaves installed
    uint64_t mapped_2m            # 2 MiB leaves or shared-pt entries installed
    uint64_t table_pages_allocated
    uint64_t table_pages_freed
    uint64_t rfc_topup_shortfall  # table pages the RFC's one cache top-up would have lacked
    uint64_t bytes_read
    uint64_t bytes_written

# One MMIO or emulated exit, as recorded (numpy dtype EXIT_DTYPE mirrors it).
cdef struct exit_record:
    uint64_t index                # position of the access in the run
    uint64_t gpa
    uint64_t value                # data written, or the answer to a read
    uint8_t size
    uint8_t is_write

cdef class Stage2:
    cdef stage2 c
    cdef readonly int as_id

cdef int s2_init(stage2 *s2) noexcept nogil
cdef void s2_destroy(stage2 *s2) noexcept nogil
cdef bint s2_walk(const stage2 *s2, const mmu_config *cfg, gfn_t gfn, uint64_t *spte,
                  uint64_t *page_data, int *level) noexcept nogil
cdef void s2_zap_range(stage2 *s2, gfn_t start, gfn_t end, run_stats *st) noexcept nogil
