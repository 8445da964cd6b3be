"""A VM's guest-physical memory: KVM_SET_USER_MEMORY_REGION, lookups, translation, and
guest accesses through the stage-2 table (`run`).

`VM` is the Python face of the core's `VMCore` and of the engine (allones/_mmu.pyx): it
coerces arguments, turns return codes into `KvmError`s, keeps the stage-2 tables in step
with memslot changes, and documents the API. Every rule lives in the Cython modules; nothing
here decides what is valid.
"""

import operator
from typing import NamedTuple

import numpy as np

from . import _core, _mmu
from .constants import (DEFAULT_MAX_TABLE_PAGES, KVM_ADDRESS_SPACE_NUM, KVM_CAP_ALLONES_MEM, KVM_CAP_MULTI_ADDRESS_SPACE,
                        KVM_CAP_NR_MEMSLOTS, KVM_CAP_PCI_HOLE_MEM, KVM_CAP_READONLY_MEM,
                        KVM_CAP_SYNC_MMU, KVM_CAP_USER_MEMORY, KVM_MEM_ALLONES,
                        KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_MAX_NR_PAGES, KVM_USER_MEM_SLOTS,
                        PAGE_SHIFT, PAGE_SIZE, kvm_is_error_hva)
from .errors import BadAddress, InvalidArgument, NoMemory, NotFound, error_for
from .host import Host

Memslot = _core.Memslot
Change = _core.kvm_mr_change
Rule = _core.memslot_rule

# What each refusal means, by the kernel check that makes it (see _core.pxd).
_RULE_TEXT = {
    Rule.RULE_USER_SLOT_ID: "kvm_vm_ioctl_set_memory_region: slot id {id} >= KVM_USER_MEM_SLOTS "
                            f"({KVM_USER_MEM_SLOTS})",
    Rule.RULE_FLAGS: "check_memory_region_flags: flags {flags:#x} has unknown bits",
    Rule.RULE_SIZE_ALIGN: "__kvm_set_memory_region: memory_size {size:#x} is not page-aligned",
    Rule.RULE_GPA_ALIGN: "__kvm_set_memory_region: guest_phys_addr {gpa:#x} is not page-aligned",
    Rule.RULE_NO_MEMORY_HVA: "__kvm_set_memory_region: a slot with flag bit 2 (ALLONES/PCI_HOLE) "
                             "needs userspace_addr 0, not {hva:#x}",
    Rule.RULE_ALLONES_EXCLUSIVE: "__kvm_set_memory_region: flag bit 2 (ALLONES/PCI_HOLE) excludes "
                                 "READONLY and LOG_DIRTY_PAGES (flags {flags:#x})",
    Rule.RULE_HVA_ALIGN: "__kvm_set_memory_region: userspace_addr {hva:#x} is not page-aligned",
    Rule.RULE_ACCESS_OK: "__kvm_set_memory_region: access_ok({hva:#x}, {size:#x}) fails",
    Rule.RULE_AS_ID: "__kvm_set_memory_region: as_id {as_id} >= KVM_ADDRESS_SPACE_NUM "
                     f"({KVM_ADDRESS_SPACE_NUM})",
    Rule.RULE_GPA_WRAP: "__kvm_set_memory_region: guest_phys_addr {gpa:#x} + memory_size {size:#x} wraps",
    Rule.RULE_NR_PAGES: "__kvm_set_memory_region: {npages:#x} pages > KVM_MEM_MAX_NR_PAGES "
                        f"({KVM_MEM_MAX_NR_PAGES:#x})",
    Rule.RULE_DELETE_MISSING: "__kvm_set_memory_region: deleting slot {as_id}:{id}, which does not exist",
    Rule.RULE_MODIFY_HVA: "__kvm_set_memory_region: slot {as_id}:{id} exists; userspace_addr cannot change",
    Rule.RULE_MODIFY_NPAGES: "__kvm_set_memory_region: slot {as_id}:{id} exists; memory_size cannot change",
    Rule.RULE_MODIFY_READONLY: "__kvm_set_memory_region: slot {as_id}:{id} exists; READONLY cannot toggle",
    Rule.RULE_MODIFY_NO_MEMORY: "__kvm_set_memory_region: slot {as_id}:{id} exists; flag bit 2 "
                                "(ALLONES/PCI_HOLE) cannot toggle",
    Rule.RULE_OVERLAP: "kvm_check_memslot_overlap: gfns [{gfn:#x}, {end:#x}) of slot {as_id}:{id} "
                       "overlap another memslot",
    Rule.RULE_MAX_GFN: "kvm_arch_prepare_memory_region: last gfn {last:#x} > kvm_mmu_max_gfn() {max_gfn:#x}",
    Rule.RULE_NOMEM: "__kvm_set_memory_region: no memory for the new memslots",
}


PREFAULT_POLICIES = ("on-demand", "whole-slot")
ALLONES_MAPS = ("4k", "shared-pt", "hugepage")
EXIT_DTYPE = _mmu.EXIT_DTYPE


class RunResult(NamedTuple):
    """What `VM.run` gives back."""

    values: np.ndarray     # uint64: read values filled in; written values as given
    stats: dict            # the run's counters (see VM.run)
    exits: np.ndarray | None   # EXIT_DTYPE records of MMIO and emulated exits, if asked


class Translation(NamedTuple):
    """gfn_to_pfn over an array: one pfn and one writable flag per gfn."""

    pfn: np.ndarray        # uint64: a host pfn, or KVM_PFN_NOSLOT / KVM_PFN_ERR_*
    writable: np.ndarray   # bool: may the stage-2 mapping be writable


class VM(_core.VMCore):
    """One VM: its memslots in KVM_ADDRESS_SPACE_NUM address spaces, on a Host.

    Every change is checked as Linux v6.6's KVM_SET_USER_MEMORY_REGION does, with the
    KVM_MEM_ALLONES RFC (or its v2, per `host.bit2`) applied, and then published as a new
    memslots generation in one step: readers see the old table or the new, never a mix.
    """

    def __init__(self, host: Host, *, prefault: str = "on-demand", allones_map: str = "4k",
                 max_table_pages: int = DEFAULT_MAX_TABLE_PAGES):
        """Args:
            host: the Host the VM runs on.
            prefault: "on-demand" (a fault maps one page) or "whole-slot" (the series'
                follow-up: the first read fault in an all-ones slot maps all of it).
            allones_map: how all-ones slots are mapped: "4k" (the RFC), "shared-pt" (one
                shared level-1 table of 512 entries to the 0xff page, per host) or
                "hugepage" (a shared 2 MiB all-ones page, 2 MiB entries); the last two
                where a slot covers an aligned 2 MiB region.
            max_table_pages: live stage-2 table pages allowed per address space (4 at
                least), as a memory cgroup limits the page tables KVM charges to the VM:
                a fault past it fails with ENOMEM (`run` raises NoMemory) rather than
                taking the host's memory.
        """
        if not isinstance(host, Host):
            raise TypeError(f"host must be an allones.Host, not {type(host).__name__}")
        if prefault not in PREFAULT_POLICIES:
            raise ValueError(f"prefault={prefault!r}: expected one of {PREFAULT_POLICIES}")
        if allones_map not in ALLONES_MAPS:
            raise ValueError(f"allones_map={allones_map!r}: expected one of {ALLONES_MAPS}")
        max_table_pages = _field("max_table_pages", max_table_pages, 63)
        self._stage2 = [_mmu.Stage2(as_id, max_table_pages) for as_id in range(KVM_ADDRESS_SPACE_NUM)]
        self.host = host
        self.prefault, self.allones_map = prefault, allones_map
        self._configure(host.pci_hole, host.phys_bits)
        host._register_vm(self, allones_map)   # last: munmap's notifier may call us from now on

    def _mmu_config(self) -> dict:
        """What the engine needs to know of this VM and its host, as it is now."""
        host, huge = self.host, self.host.allones_hugepage
        return dict(
            prefault=PREFAULT_POLICIES.index(self.prefault),
            allones_map=ALLONES_MAPS.index(self.allones_map), pci_hole=host.pci_hole,
            max_gfn=(1 << (host.phys_bits - PAGE_SHIFT)) - 1,
            allones_hva=host.allones_hva or 0, allones_pfn=host.allones_pfn or 0,
            allones_huge_hva=huge.hva if huge is not None else 0,
            allones_huge_pfn=huge.base_pfn if huge is not None else 0)

    # --- KVM_SET_USER_MEMORY_REGION / KVM_CHECK_EXTENSION ---

    def set_user_memory_region(self, slot: int, flags: int, guest_phys_addr: int,
                               memory_size: int, userspace_addr: int = 0) -> Change:
        """Create, delete (memory_size 0), move or re-flag a memslot.

        Args are the fields of struct kvm_userspace_memory_region: `slot` is
        as_id << 16 | id; `flags` KVM_MEM_*; addresses and size in bytes.

        Returns the change made (KVM_MR_CREATE, _DELETE, _MOVE, _FLAGS_ONLY, or _NONE).
        Raises:
            InvalidArgument (EINVAL): a malformed request or a refused change.
            SlotOverlap (EEXIST): the range overlaps another slot of the address space.
            NoMemory (ENOMEM): the new memslots could not be allocated.
            ValueError / TypeError: a value that does not fit the struct's field.
        On any error the VM is unchanged.
        """
        slot = _field("slot", slot, 32)
        flags = _field("flags", flags, 32)
        gpa = _field("guest_phys_addr", guest_phys_addr, 64)
        size = _field("memory_size", memory_size, 64)
        hva = _field("userspace_addr", userspace_addr, 64)
        with self.host._lock:
            return self._set_locked(slot, flags, gpa, size, hva)

    def _set_locked(self, slot, flags, gpa, size, hva) -> Change:
        as_id = slot >> 16
        old = self.memslots(as_id).get(slot & 0xFFFF) if as_id < KVM_ADDRESS_SPACE_NUM else None
        rc, rule, change = self._set_user_memory_region(slot, flags, gpa, size, hva)
        if rc:
            gfn, npages = gpa >> PAGE_SHIFT, size >> PAGE_SHIFT
            text = _RULE_TEXT[rule].format(
                id=slot & 0xFFFF, as_id=slot >> 16, flags=flags, gpa=gpa, size=size, hva=hva,
                npages=npages, gfn=gfn, end=gfn + npages, last=gfn + npages - 1,
                max_gfn=(1 << (self.host.phys_bits - PAGE_SHIFT)) - 1)
            raise error_for(-rc, text, rule.name)
        change = Change(change)
        end = old.base_gfn + old.npages if old is not None else 0
        if change in (Change.KVM_MR_DELETE, Change.KVM_MR_MOVE):
            # kvm_arch_flush_shadow_memslot(): no mapping of the old slot survives.
            self._stage2[as_id].zap(old.base_gfn, end)
        elif change == Change.KVM_MR_FLAGS_ONLY and flags & KVM_MEM_LOG_DIRTY_PAGES:
            # FLAGS_ONLY can only toggle LOG_DIRTY_PAGES (READONLY and bit 2 are refused).
            # Turning it off keeps the 4 KiB leaves (huge-page recovery is not modeled).
            self._stage2[as_id].log_dirty_enabled(old.base_gfn, end)
        return change

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM: >0 if supported (a count where the cap is one),
        0 for any other integer, as the kernel answers an unknown capability."""
        cap = _field("cap", cap, 64)
        return {
            KVM_CAP_USER_MEMORY: 1,
            KVM_CAP_SYNC_MMU: 1,
            KVM_CAP_READONLY_MEM: 1,
            KVM_CAP_NR_MEMSLOTS: KVM_USER_MEM_SLOTS,
            KVM_CAP_MULTI_ADDRESS_SPACE: KVM_ADDRESS_SPACE_NUM,
            KVM_CAP_ALLONES_MEM: int(not self.host.pci_hole),
            KVM_CAP_PCI_HOLE_MEM: int(self.host.pci_hole),
        }.get(cap, 0)

    # --- lookups (memslots() and lookup() come from the core) ---

    def gfn_to_memslot(self, gfn: int, as_id: int = 0) -> Memslot | None:
        """The Memslot holding gfn, or None (__gfn_to_memslot)."""
        return self.memslots(as_id).gfn_to_memslot(gfn)

    def lookup_batch(self, gfns, as_id: int = 0) -> np.ndarray:
        """Ids of the memslots holding each gfn, -1 where none does (int32 array)."""
        ids, _ = self.memslots(as_id).lookup_batch(_as_u64("gfns", gfns))
        return ids

    # --- translation ---

    def gfn_to_hva(self, gfn: int, as_id: int = 0) -> int:
        """The hva a read of gfn uses (gfn_to_hva_prot): for an all-ones slot, the shared page.

        Raises BadAddress (EFAULT) if no memslot holds gfn, or the slot has no memory
        (a v2 PCI_HOLE slot).
        """
        hva = self.memslots(as_id).gfn_to_hva(self.host.mm, gfn)
        if kvm_is_error_hva(hva):
            raise BadAddress(f"gfn {gfn:#x} has no hva in address space {as_id}", "gfn_to_hva")
        return hva

    def gfn_to_pfn(self, gfn: int, write_fault: bool = False, as_id: int = 0) -> tuple[int, bool]:
        """(pfn, writable) for gfn, as __gfn_to_pfn_memslot returns them.

        Errors are pfn values, as in the kernel: KVM_PFN_NOSLOT (no slot, or a write to an
        all-ones slot: an MMIO exit), KVM_PFN_ERR_RO_FAULT (a write to a READONLY slot),
        KVM_PFN_ERR_FAULT (no host mapping: KVM_RUN fails with EFAULT).
        """
        return self.memslots(as_id).gfn_to_pfn(self.host.mm, gfn, write_fault)

    def translate(self, gfns, write: bool = False, as_id: int = 0) -> Translation:
        """gfn_to_pfn for every gfn of an array, without the GIL; see gfn_to_pfn."""
        pfn, writable = self.memslots(as_id).translate(self.host.mm, _as_u64("gfns", gfns), write)
        return Translation(pfn, writable)

    # --- the access engine ---

    def run(self, gpas, sizes=4, is_write=False, values=None, *, on_mmio=None, mmio_gfns=None,
            record_exits: bool = False, as_id: int = 0) -> RunResult:
        """Replay guest accesses through the stage-2 table, faults and exits; no GIL inside.

        Args:
            gpas: guest physical addresses (1-D integer array).
            sizes: 1, 2, 4 or 8 bytes, per access or for all. An access may be unaligned
                but may not cross a 4 KiB page (the batch is refused: issue it as two),
                nor lie past the guest's physical address width (1 << host.phys_bits):
                a guest cannot make one (its page tables would have reserved bits set).
            is_write: per access or for all.
            values: values to write (reads ignore theirs); uint64, copied, not modified.
            on_mmio: called as on_mmio(gpa, size, is_write, value) for KVM_EXIT_MMIO exits
                (with mmio_gfns, only for exits at those gfns); its result answers a read
                (None: all-ones). Other exits get the hole answer: reads all-ones, writes
                dropped. It may change memslots or host mappings between exits.
            record_exits: also return every exit (EXIT_DTYPE: index, gpa, value, size, is_write).
            as_id: the address space (1: SMM).

        Returns RunResult(values, stats, exits). stats counts accesses, reads, writes,
        tlb_hits, faults, prefaulted, exits_mmio, exits_emulated, memslot_lookups,
        memslot_cache_hits, mapped_4k, mapped_2m, table_pages_allocated, table_pages_freed,
        rfc_topup_shortfall, bytes_read, bytes_written.
        Raises:
            ValueError / TypeError: bad arrays or accesses (nothing ran).
            BadAddress (EFAULT): access `exc.index` has no host memory behind it, as
                KVM_RUN fails; `exc.stats` counts what ran before it (mappings made stay).
            NoMemory (ENOMEM): a table page could not be allocated.
        """
        # Private copies: a handler (or another thread) must not change an access after
        # the engine checked it.
        gpas = _as_u64("gpas", gpas).copy()
        n = len(gpas)
        sizes = _broadcast("sizes", sizes, n, np.uint8).copy()
        is_write = _broadcast("is_write", is_write, n, np.uint8, top=1).copy()
        values = np.zeros(n, dtype=np.uint64) if values is None else _as_u64("values", values).copy()
        if on_mmio is not None and not callable(on_mmio):
            raise TypeError(f"on_mmio must be callable, not {type(on_mmio).__name__}")
        if mmio_gfns is not None:
            mmio_gfns = np.unique(_as_u64("mmio_gfns", mmio_gfns))
        self.memslots(as_id)   # checks as_id
        try:
            with self.host._lock:
                stats, exits = _mmu.run(
                    self._stage2[as_id], lambda: self.memslots(as_id), lambda: self.host.mm,
                    self._mmu_config, gpas, sizes, is_write, values, on_mmio, mmio_gfns,
                    record_exits, self.host._make_allones_hugepage, self.host._use_shared_pt)
        except _mmu.RunStopped as stop:
            cls = BadAddress if stop.errno == BadAddress.code else NoMemory
            exc = cls(f"access {stop.index} (gpa {int(gpas[stop.index]):#x}) has no host memory "
                      "behind it (KVM_RUN: EFAULT)" if cls is BadAddress else
                      f"no memory for a stage-2 table page at access {stop.index}", "kvm_mmu_page_fault")
            exc.index, exc.stats = stop.index, stop.stats
            raise exc from None
        return RunResult(values, stats, exits)

    def read(self, gpa: int, size: int = 4, as_id: int = 0) -> int:
        """One guest read of `size` bytes at gpa (see run)."""
        return int(self.run([gpa], size, False, as_id=as_id).values[0])

    def write(self, gpa: int, value: int, size: int = 4, as_id: int = 0) -> None:
        """One guest write of `size` bytes at gpa (see run); value must fit `size` bytes."""
        value = _field("value", value, 64)
        if size in (1, 2, 4) and value >> (8 * size):
            raise ValueError(f"value={value:#x} does not fit {size} bytes")
        self.run([gpa], size, True, [value], as_id=as_id)

    def get_dirty_log(self, slot: int) -> np.ndarray:
        """KVM_GET_DIRTY_LOG: the pages of `slot` (as_id << 16 | id) dirtied since the last
        call, as a bool array; the marks are cleared and those pages write-protected, so the
        next write to each faults and marks it again.

        Raises InvalidArgument (EINVAL) for an as_id or id out of range, NotFound (ENOENT)
        if the slot does not exist or is not dirty-logged (kvm_get_dirty_log_protect).
        """
        slot = _field("slot", slot, 32)
        as_id, slot_id = slot >> 16, slot & 0xFFFF
        if as_id >= KVM_ADDRESS_SPACE_NUM or slot_id >= KVM_USER_MEM_SLOTS:
            raise InvalidArgument(f"kvm_get_dirty_log_protect: slot {as_id}:{slot_id} out of range",
                                  "kvm_get_dirty_log_protect")
        with self.host._lock:
            dirty = self._stage2[as_id].take_dirty_log(self.memslots(as_id), slot_id)
        if dirty is None:
            raise NotFound(f"kvm_get_dirty_log_protect: slot {as_id}:{slot_id} does not exist or "
                           "has no dirty log (KVM_MEM_LOG_DIRTY_PAGES)", "kvm_get_dirty_log_protect")
        return dirty

    # --- the stage-2 table, for tests and reports ---

    def walk(self, gfn: int, as_id: int = 0) -> tuple[int, bool, int] | None:
        """(pfn, writable, level) of the stage-2 leaf mapping gfn (level 1: 4 KiB, 2: 2 MiB),
        or None."""
        gfn = _field("gfn", gfn, 64)
        self.memslots(as_id)
        with self.host._lock:
            return self._stage2[as_id].walk(gfn, self.host.mm, self._mmu_config())

    def table_pages(self, as_id: int = 0) -> tuple[int, int, int, int]:
        """Stage-2 table pages by level (L1, L2, L3, L4): this VM's page-table memory is
        4 KiB each (the host's shared pages are counted on the Host)."""
        self.memslots(as_id)
        with self.host._lock:
            return self._stage2[as_id].table_pages()

    def recount_table_pages(self, as_id: int = 0) -> tuple[int, int, int, int]:
        """table_pages, counted again by walking the table (for invariant checks)."""
        self.memslots(as_id)
        with self.host._lock:
            return self._stage2[as_id].recount_table_pages()

    def _invalidate_hva_range(self, start: int, end: int) -> None:
        """The MMU notifier (kvm_mmu_notifier_invalidate_range_start): unmap the gfns whose
        backing lies in [start, end)."""
        for as_id in range(KVM_ADDRESS_SPACE_NUM):
            for s in self.memslots(as_id):
                if s.flags & KVM_MEM_ALLONES:
                    continue
                lo = max(start, s.userspace_addr)
                hi = min(end, s.userspace_addr + s.npages * PAGE_SIZE)
                if lo < hi:
                    first = s.base_gfn + ((lo - s.userspace_addr) >> PAGE_SHIFT)
                    last = s.base_gfn + ((hi - 1 - s.userspace_addr) >> PAGE_SHIFT)
                    self._stage2[as_id].zap(first, last + 1)

    def __repr__(self):
        return f"VM(memslots={[len(self.memslots(a)) for a in range(KVM_ADDRESS_SPACE_NUM)]}, host={self.host!r})"


def _as_u64(name: str, values) -> np.ndarray:
    """values as a C-contiguous 1-D uint64 array (no copy when it already is one).

    Raises TypeError for a non-integer dtype (floats, bools, strings), ValueError for
    values outside 0..2^64-1 or ndim != 1.
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.uint64:
        return np.ascontiguousarray(arr)
    if arr.size == 0:
        return np.empty(0, dtype=np.uint64)
    if arr.dtype == object:   # Python ints too large for int64 (or not ints at all)
        ints = [_field(f"{name}[{k}]", v, 64) for k, v in enumerate(arr)]
        return np.array(ints, dtype=np.uint64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "i" and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative")
    return arr.astype(np.uint64)


def _broadcast(name: str, value, n: int, dtype, top: int | None = None) -> np.ndarray:
    """A per-access array of n entries from an array or one value for all, each in
    0..top (default: the dtype's maximum)."""
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = np.full(n, arr)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{name} must be one value or {n} values, got shape {arr.shape}")
    if arr.size == 0:   # np.asarray([]) is float64: an empty list is still no accesses
        return np.empty(0, dtype=dtype)
    if arr.dtype.kind not in "iub":
        raise TypeError(f"{name} must be integers or booleans, got dtype {arr.dtype}")
    top = np.iinfo(dtype).max if top is None else top
    if arr.min() < 0 or arr.max() > top:
        raise ValueError(f"{name} has values outside 0..{top}")
    return np.ascontiguousarray(arr, dtype=dtype)


def _field(name: str, value, bits: int) -> int:
    """value as an int that fits an unsigned field of `bits` bits, as the ioctl struct has."""
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{name}={value:#x} does not fit a __u{bits}")
    return value
