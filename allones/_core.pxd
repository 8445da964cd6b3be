# cython: language_level=3
"""The C-level contract of allones' core: declarations only, see _core.pyx for details.

Glossary (include/linux/kvm_types.h):
  gpa   guest physical address          gfn  guest frame number, gpa >> PAGE_SHIFT
  hva   host (VMM) virtual address      pfn  host page frame number
  memslot  one guest-physical range [base_gfn, base_gfn + npages) backed by userspace
           memory at userspace_addr, or by the host's shared all-ones page
  as_id address space (x86: 0 normal, 1 SMM)

Stability: the typedefs, structs and functions below are the embedding API; changes to
them are additive. A `kvm_memslots` or `host_mm` pointer is valid while the Python object
that owns it (`Memslots`, `HostMM`) is alive: hold a reference across a `nogil` section.
Both are immutable generations (only the last-used caches change), so any number of
threads may read them at once.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

ctypedef uint64_t gfn_t
ctypedef uint64_t gpa_t
ctypedef uint64_t hva_t
ctypedef uint64_t pfn_t

cdef extern from "_kvm.h":
    enum:
        ALLONES_PAGE_SHIFT
        KVM_MEM_LOG_DIRTY_PAGES
        KVM_MEM_READONLY
        KVM_MEM_ALLONES
        KVM_MEM_PCI_HOLE
        KVM_ADDRESS_SPACE_NUM
        KVM_MEM_SLOTS_NUM
        KVM_USER_MEM_SLOTS
    const uint64_t ALLONES_PAGE_SIZE
    const uint64_t KVM_MEM_MAX_NR_PAGES
    const pfn_t KVM_PFN_ERR_MASK
    const pfn_t KVM_PFN_ERR_NOSLOT_MASK
    const pfn_t KVM_PFN_NOSLOT
    const pfn_t KVM_PFN_ERR_FAULT
    const pfn_t KVM_PFN_ERR_HWPOISON
    const pfn_t KVM_PFN_ERR_RO_FAULT
    const pfn_t KVM_PFN_ERR_SIGPENDING
    const hva_t KVM_HVA_ERR_BAD
    const hva_t KVM_HVA_ERR_RO_BAD
    int32_t allones_load_relaxed(const int32_t *p) noexcept nogil
    void allones_store_relaxed(int32_t *p, int32_t v) noexcept nogil


# include/uapi/linux/kvm.h
cdef struct kvm_userspace_memory_region:
    uint32_t slot                 # as_id << 16 | slot id
    uint32_t flags                # KVM_MEM_*
    uint64_t guest_phys_addr
    uint64_t memory_size          # bytes; 0 deletes the slot
    uint64_t userspace_addr       # hva of the backing; 0 for an all-ones slot


cdef struct kvm_memory_slot:
    gfn_t base_gfn                # first gfn
    uint64_t npages               # pages; the slot is [base_gfn, base_gfn + npages)
    hva_t userspace_addr          # hva of base_gfn's backing
    uint32_t flags                # KVM_MEM_*
    int32_t id                    # slot id (low 16 bits of the ioctl's `slot`)
    uint8_t *dirty_bitmap         # a byte per page while LOG_DIRTY_PAGES is on, else NULL


# One generation of an address space's memslots, as the kernel's struct kvm_memslots.
cdef struct kvm_memslots:
    uint64_t generation           # bumped by every change that was committed
    int32_t used_slots            # entries in memslots[] and base_gfns[]
    int32_t last_used_slot        # index of the last hit (relaxed atomic), -1 if none yet
    gfn_t *base_gfns              # [used_slots] ascending; what the binary search reads
    kvm_memory_slot *memslots     # [used_slots] in the same order
    # The slots and the gaps between them tile [0, 2^64): batch lookups search these, so a
    # gfn's answer is one search away with no range check, and a scan steps tile by tile.
    int32_t nr_tiles
    gfn_t *tile_starts            # [nr_tiles] ascending, tile_starts[0] == 0
    int32_t *tile_slots           # [nr_tiles] index into memslots, or -1 for a gap


# What set_user_memory_region does once validated (enum kvm_mr_change).
cpdef enum kvm_mr_change:
    KVM_MR_NONE = 0               # nothing to change; the kernel returns 0 early
    KVM_MR_CREATE
    KVM_MR_DELETE
    KVM_MR_MOVE
    KVM_MR_FLAGS_ONLY


# Which kernel check refused a region; the Python layer turns it into a message.
cpdef enum memslot_rule:
    RULE_OK = 0
    RULE_USER_SLOT_ID             # kvm_vm_ioctl_set_memory_region: id >= KVM_USER_MEM_SLOTS
    RULE_FLAGS                    # check_memory_region_flags: unknown or excluded bits
    RULE_SIZE_ALIGN               # memory_size not page-aligned
    RULE_GPA_ALIGN                # guest_phys_addr not page-aligned
    RULE_NO_MEMORY_HVA            # ALLONES / PCI_HOLE with userspace_addr != 0
    RULE_ALLONES_EXCLUSIVE        # ALLONES with READONLY or LOG_DIRTY_PAGES
    RULE_HVA_ALIGN                # userspace_addr not page-aligned
    RULE_ACCESS_OK                # access_ok(userspace_addr, memory_size) fails
    RULE_AS_ID                    # as_id >= KVM_ADDRESS_SPACE_NUM
    RULE_GPA_WRAP                 # guest_phys_addr + memory_size wraps
    RULE_NR_PAGES                 # npages > KVM_MEM_MAX_NR_PAGES
    RULE_DELETE_MISSING           # size 0 for a slot that does not exist
    RULE_MODIFY_HVA               # existing slot, different userspace_addr
    RULE_MODIFY_NPAGES            # existing slot, different size
    RULE_MODIFY_READONLY          # existing slot, READONLY toggled
    RULE_MODIFY_NO_MEMORY         # existing slot, ALLONES / PCI_HOLE toggled
    RULE_OVERLAP                  # kvm_check_memslot_overlap: EEXIST
    RULE_MAX_GFN                  # kvm_arch_prepare_memory_region: past kvm_mmu_max_gfn()
    RULE_NOMEM                    # allocation of the new generation failed: ENOMEM


# The kernel build a VM runs on: fixed when the host is made.
cdef struct kvm_config:
    bint pci_hole                 # bit 2 is the v2's KVM_MEM_PCI_HOLE, not KVM_MEM_ALLONES
    gfn_t max_gfn                 # kvm_mmu_max_gfn(): (1 << (phys_bits - 12)) - 1


# A validated request, ready to commit.
cdef struct memslot_change:
    kvm_mr_change change
    int32_t old_index             # index of the existing slot in the old generation, or -1
    kvm_memory_slot new           # the slot after the change (unused for DELETE)


# One host mapping (a VMA of the VMM) with its frames; pfns are the host's, contiguous,
# except for an alias mapping, whose every page is the same frame.
cdef enum:
    VMA_THP = 1                   # 2 MiB aligned, may back 2 MiB stage-2 leaves
    VMA_ACCOUNTING = 2            # reserved address space only: reads give `fill`
    VMA_ALIAS = 4                 # every page is the one frame base_pfn, bytes at alias_data
                                  # (one memfd page mmap'd again and again; never THP)

cdef enum:
    HPAGE_SHIFT = 21              # 2 MiB
    HPAGE_SIZE = 1 << 21
    PAGES_PER_HPAGE = 512


cdef struct host_vma:
    hva_t start                   # page-aligned hva
    uint64_t npages
    pfn_t base_pfn                # pfn of the first page
    uint32_t prot                 # PROT_READ / PROT_WRITE of the mapping
    uint32_t flags                # VMA_THP, VMA_ACCOUNTING, VMA_ALIAS
    uint8_t fill                  # the byte every page was filled with (0 if none)
    hva_t alias_data              # VMA_ALIAS: address of the one real page (0 if accounting)


# One generation of the host's address space, as seen by translation.
cdef struct host_mm:
    int32_t nr_vmas
    int32_t last_used_vma         # relaxed atomic cache, as last_used_slot
    hva_t *starts                 # [nr_vmas] ascending
    host_vma *vmas                # [nr_vmas] in the same order
    hva_t allones_hva             # the shared all-ones page (kvm_allones_pg), 0 if none
    pfn_t allones_pfn


# Lookup counters (the kernel's memslot cache statistics).
cdef struct lookup_stats:
    uint64_t lookups
    uint64_t cache_hits


cdef class Memslots:
    cdef kvm_memslots c           # owned arrays, freed in __dealloc__
    cdef readonly int as_id
    cdef dict _bitmaps            # slot id -> uint8 array behind its dirty_bitmap (kept alive)
    cdef object _slot(self, int32_t i)


cdef class HostMapping:
    cdef void *addr               # from mmap(2): memory, or reserved address space
    cdef readonly uint64_t size
    cdef readonly pfn_t base_pfn
    cdef readonly uint32_t prot
    cdef readonly uint8_t fill    # the fill byte (0 if none)
    cdef readonly bint thp        # 2 MiB aligned, advised for THP
    cdef readonly bint materialized  # False: accounting only, no memory
    cdef readonly int64_t fill_ns # time the fill took
    cdef readonly bint is_alias   # npages aliases of one page (VMA_ALIAS)
    cdef void *page               # alias, materialized: the one real page (else NULL)


cdef class HostMM:
    cdef host_mm c                # owned arrays, freed in __dealloc__
    cdef tuple _mappings          # keeps every mapped HostMapping (and its memory) alive


cdef class VMCore:
    cdef kvm_config cfg           # the kernel build the VM runs on
    cdef list _memslots           # [Memslots] per as_id: the current generations
    cdef Memslots _current(self, as_id)


# --- memslot table (search_memslots and friends) ---
cdef int32_t search_memslots(kvm_memslots *slots, gfn_t gfn, lookup_stats *st) noexcept nogil
cdef void lookup_memslots(kvm_memslots *slots, const gfn_t *gfns, Py_ssize_t n,
                          int32_t *ids, lookup_stats *st) noexcept nogil
cdef int32_t index_of_id(const kvm_memslots *slots, int32_t id) noexcept nogil
cdef bint kvm_memslots_overlap(const kvm_memslots *slots, int32_t id,
                               gfn_t start, gfn_t end) noexcept nogil

# --- set_user_memory_region: check, classify, commit ---
cdef int check_memory_region(const kvm_userspace_memory_region *mem, const kvm_config *cfg,
                             memslot_rule *rule) noexcept nogil
cdef int classify_memory_region(const kvm_memslots *slots,
                                const kvm_userspace_memory_region *mem,
                                const kvm_config *cfg, memslot_change *chg,
                                memslot_rule *rule) noexcept nogil
cdef int commit_memory_region(const kvm_memslots *old, const memslot_change *chg,
                              kvm_memslots *new) noexcept nogil

# --- translation (__gfn_to_hva_memslot, __gfn_to_pfn_memslot, hva_to_pfn) ---
cdef hva_t gfn_to_hva_memslot(const kvm_memory_slot *slot, gfn_t gfn,
                              const host_mm *mm) noexcept nogil
cdef int32_t find_vma(host_mm *mm, hva_t hva) noexcept nogil
cdef pfn_t hva_to_pfn(host_mm *mm, hva_t hva, bint write_fault, bint *writable) noexcept nogil
cdef pfn_t gfn_to_pfn_memslot(const kvm_memory_slot *slot, gfn_t gfn, bint write_fault,
                              bint *writable, host_mm *mm) noexcept nogil
cdef void translate_gfns(kvm_memslots *slots, host_mm *mm, const gfn_t *gfns, Py_ssize_t n,
                         bint write_fault, pfn_t *pfns, uint8_t *writable,
                         lookup_stats *st) noexcept nogil
