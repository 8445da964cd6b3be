"""A plain pure-Python reference model of KVM memslots, used only as a test oracle.

Written from the kernel rules, independently of allones/_core.pyx (which it must not share
code or tables with), so that a differential test can catch the core's bugs. No
cleverness: a dict of slots per address space and linear scans.

What it models:
  * KVM_SET_USER_MEMORY_REGION as Linux v6.6 does it (kvm_vm_ioctl_set_memory_region,
    check_memory_region_flags, __kvm_set_memory_region, kvm_check_memslot_overlap and x86
    kvm_arch_prepare_memory_region), with flag bit 2 added by the KVM_MEM_ALLONES RFC
    (2/5) on an "allones" host, or by its v2 (KVM_MEM_PCI_HOLE) on a "pci_hole" host.
    Returns 0 or -errno; on error the state is unchanged.
  * __gfn_to_memslot (lookup), __gfn_to_pfn_memslot / hva_to_pfn (gfn_to_pfn) and the
    read path of gfn_to_hva (gfn_to_hva_prot), each with the RFC's / v2's bit-2 branch.
"""

import errno
from typing import NamedTuple

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
U64 = 1 << 64

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_BIT2 = 1 << 2          # KVM_MEM_ALLONES (RFC) or KVM_MEM_PCI_HOLE (v2): one bit, two meanings
VALID_FLAGS = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY | KVM_MEM_BIT2

KVM_ADDRESS_SPACE_NUM = 2      # x86 with CONFIG_KVM_SMM
KVM_MEM_SLOTS_NUM = 32767      # SHRT_MAX
KVM_USER_MEM_SLOTS = 32764     # less the 3 x86 internal slots
KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1

KVM_PFN_ERR_MASK = 0x7FF << 52
KVM_PFN_NOSLOT = 1 << 63
KVM_PFN_ERR_FAULT = KVM_PFN_ERR_MASK
KVM_PFN_ERR_RO_FAULT = KVM_PFN_ERR_MASK + 2

PROT_WRITE = 0x2               # mmap(2)'s PROT_WRITE on Linux

# enum kvm_mr_change
KVM_MR_NONE, KVM_MR_CREATE, KVM_MR_DELETE, KVM_MR_MOVE, KVM_MR_FLAGS_ONLY = 0, 1, 2, 3, 4


class Slot(NamedTuple):
    id: int
    base_gfn: int
    npages: int
    userspace_addr: int
    flags: int


def access_ok(addr, size):
    """x86-64 v6.6 __access_ok with a run-time size: sum = addr + size neither wraps nor
    reaches the kernel half (bit 63)."""
    total = addr + size
    return total < U64 and total < (1 << 63)


class ReferenceVM:
    """One VM's memslots, per address space: {slot id: Slot}."""

    def __init__(self, host):
        # Read host facts only: its bit-2 meaning, MAXPHYADDR, mappings and shared page.
        self.host = host
        self.pci_hole = host.bit2 == "pci_hole"
        self.max_gfn = (1 << (host.phys_bits - PAGE_SHIFT)) - 1   # x86 kvm_mmu_max_gfn()
        self.spaces = [dict() for _ in range(KVM_ADDRESS_SPACE_NUM)]

    # --- KVM_SET_USER_MEMORY_REGION ---

    def set_user_memory_region(self, slot, flags, guest_phys_addr, memory_size, userspace_addr):
        """(0, change) on success, (-errno, None) on error (and nothing changed)."""
        gpa, size, hva = guest_phys_addr, memory_size, userspace_addr
        bit2 = bool(flags & KVM_MEM_BIT2)

        # kvm_vm_ioctl_set_memory_region
        if (slot & 0xFFFF) >= KVM_USER_MEM_SLOTS:
            return -errno.EINVAL, None
        # check_memory_region_flags (+ RFC: bit 2 is valid)
        if flags & ~VALID_FLAGS:
            return -errno.EINVAL, None

        as_id = slot >> 16
        id_ = slot & 0xFFFF

        # __kvm_set_memory_region: general sanity checks
        if size & (PAGE_SIZE - 1):
            return -errno.EINVAL, None
        if gpa & (PAGE_SIZE - 1):
            return -errno.EINVAL, None
        if bit2 and hva != 0:
            return -errno.EINVAL, None
        if bit2 and flags & (KVM_MEM_READONLY | KVM_MEM_LOG_DIRTY_PAGES):
            return -errno.EINVAL, None
        if not bit2 and (hva & (PAGE_SIZE - 1) or not access_ok(hva, size)):
            return -errno.EINVAL, None
        if as_id >= KVM_ADDRESS_SPACE_NUM or id_ >= KVM_MEM_SLOTS_NUM:
            return -errno.EINVAL, None
        if gpa + size >= U64:
            return -errno.EINVAL, None
        if (size >> PAGE_SHIFT) > KVM_MEM_MAX_NR_PAGES:
            return -errno.EINVAL, None

        space = self.spaces[as_id]
        old = space.get(id_)

        if size == 0:
            if old is None:
                return -errno.EINVAL, None
            del space[id_]
            return 0, KVM_MR_DELETE

        base_gfn = gpa >> PAGE_SHIFT
        npages = size >> PAGE_SHIFT

        if old is None:
            change = KVM_MR_CREATE
        else:
            if hva != old.userspace_addr:
                return -errno.EINVAL, None
            if npages != old.npages:
                return -errno.EINVAL, None
            if (flags ^ old.flags) & KVM_MEM_READONLY:
                return -errno.EINVAL, None
            if (flags ^ old.flags) & KVM_MEM_BIT2:
                return -errno.EINVAL, None
            if base_gfn != old.base_gfn:
                change = KVM_MR_MOVE
            elif flags != old.flags:
                change = KVM_MR_FLAGS_ONLY
            else:
                return 0, KVM_MR_NONE

        if change in (KVM_MR_CREATE, KVM_MR_MOVE):
            # kvm_check_memslot_overlap: any other id intersecting [base, base + npages)
            for other in space.values():
                if other.id == id_:
                    continue
                if base_gfn < other.base_gfn + other.npages and other.base_gfn < base_gfn + npages:
                    return -errno.EEXIST, None
            # kvm_arch_prepare_memory_region
            if base_gfn + npages - 1 > self.max_gfn:
                return -errno.EINVAL, None

        space[id_] = Slot(id_, base_gfn, npages, hva, flags)
        return 0, change

    # --- lookups ---

    def slots(self, as_id):
        """The slots of an address space, ascending by base_gfn."""
        return sorted(self.spaces[as_id].values(), key=lambda s: s.base_gfn)

    def slot_for(self, gfn, as_id=0):
        """The Slot holding gfn, or None (__gfn_to_memslot)."""
        for s in self.spaces[as_id].values():
            if s.base_gfn <= gfn < s.base_gfn + s.npages:
                return s
        return None

    def lookup(self, gfn, as_id=0):
        """Id of the slot holding gfn, or -1."""
        s = self.slot_for(gfn, as_id)
        return -1 if s is None else s.id

    # --- translation ---

    def _mapping(self, hva):
        for m in self.host.mappings:
            if m.hva <= hva < m.hva + m.size:
                return m
        return None

    def gfn_to_pfn(self, gfn, write_fault=False, as_id=0):
        """(pfn, writable) as __gfn_to_pfn_memslot returns them (errors are pfn values)."""
        s = self.slot_for(gfn, as_id)
        if s is None:
            return KVM_PFN_NOSLOT, False
        if s.flags & KVM_MEM_BIT2:
            if self.pci_hole:
                # v2: __gfn_to_hva_many gives KVM_HVA_ERR_BAD for PCI_HOLE slots.
                return KVM_PFN_NOSLOT, False
            # RFC: reads map the shared page read-only; writes exit as MMIO.
            if write_fault:
                return KVM_PFN_NOSLOT, False
            return self.host.allones_pfn, False
        if s.flags & KVM_MEM_READONLY and write_fault:
            return KVM_PFN_ERR_RO_FAULT, False
        hva = s.userspace_addr + (gfn - s.base_gfn) * PAGE_SIZE
        m = self._mapping(hva)
        if m is None:
            return KVM_PFN_ERR_FAULT, False
        can_write = bool(m.prot & PROT_WRITE)
        if write_fault and not can_write:
            return KVM_PFN_ERR_FAULT, False
        pfn = m.base_pfn + (hva - m.hva) // PAGE_SIZE
        return pfn, can_write and not (s.flags & KVM_MEM_READONLY)

    def gfn_to_hva(self, gfn, as_id=0):
        """hva a read of gfn uses (gfn_to_hva_prot), or None for an error hva."""
        s = self.slot_for(gfn, as_id)
        if s is None:
            return None
        if s.flags & KVM_MEM_BIT2:
            return None if self.pci_hole else self.host.allones_hva
        return s.userspace_addr + (gfn - s.base_gfn) * PAGE_SIZE
