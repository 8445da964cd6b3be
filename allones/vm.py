"""A VM's guest-physical memory: KVM_SET_USER_MEMORY_REGION, lookups and translation.

`VM` is the Python face of the core's `VMCore`: it coerces arguments, turns the core's
return codes into `KvmError`s and documents the API. Every rule lives in the core
(allones/_core.pyx); nothing here decides what is valid.
"""

import operator
from typing import NamedTuple

import numpy as np

from . import _core
from .constants import (KVM_ADDRESS_SPACE_NUM, KVM_CAP_ALLONES_MEM, KVM_CAP_MULTI_ADDRESS_SPACE,
                        KVM_CAP_NR_MEMSLOTS, KVM_CAP_PCI_HOLE_MEM, KVM_CAP_READONLY_MEM,
                        KVM_CAP_SYNC_MMU, KVM_CAP_USER_MEMORY, KVM_MEM_MAX_NR_PAGES,
                        KVM_USER_MEM_SLOTS, PAGE_SHIFT, kvm_is_error_hva)
from .errors import BadAddress, error_for
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

    def __init__(self, host: Host):
        if not isinstance(host, Host):
            raise TypeError(f"host must be an allones.Host, not {type(host).__name__}")
        self.host = host
        self._configure(host.pci_hole, host.phys_bits)

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
        rc, rule, change = self._set_user_memory_region(slot, flags, gpa, size, hva)
        if rc:
            gfn, npages = gpa >> PAGE_SHIFT, size >> PAGE_SHIFT
            text = _RULE_TEXT[rule].format(
                id=slot & 0xFFFF, as_id=slot >> 16, flags=flags, gpa=gpa, size=size, hva=hva,
                npages=npages, gfn=gfn, end=gfn + npages, last=gfn + npages - 1,
                max_gfn=(1 << (self.host.phys_bits - PAGE_SHIFT)) - 1)
            raise error_for(-rc, text, rule.name)
        return Change(change)

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM: >0 if supported (a count where the cap is one)."""
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
        ids, _ = self.memslots(as_id).lookup_batch(as_gfns(gfns))
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
        pfn, writable = self.memslots(as_id).translate(self.host.mm, as_gfns(gfns), write)
        return Translation(pfn, writable)

    def __repr__(self):
        return f"VM(memslots={[len(self.memslots(a)) for a in range(KVM_ADDRESS_SPACE_NUM)]}, host={self.host!r})"


def as_gfns(gfns) -> np.ndarray:
    """gfns as a C-contiguous 1-D uint64 array (no copy when it already is one).

    Raises TypeError for a non-integer dtype, ValueError for negative values or ndim != 1.
    """
    arr = np.asarray(gfns)
    if arr.ndim != 1:
        raise ValueError(f"gfns must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.uint64:
        return np.ascontiguousarray(arr)
    if arr.size == 0:
        return np.empty(0, dtype=np.uint64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"gfns must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "i" and arr.min() < 0:
        raise ValueError("gfns must be non-negative")
    return arr.astype(np.uint64)


def _field(name: str, value, bits: int) -> int:
    """value as an int that fits an unsigned field of `bits` bits, as the ioctl struct has."""
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{name}={value:#x} does not fit a __u{bits}")
    return value
