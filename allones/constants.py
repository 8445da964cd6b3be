"""Kernel constants the model uses, by their kernel names (Linux v6.6 + the ALLONES RFC).

The core compiles the same values from _kvm.h; a test checks that the two agree.
"""

import errno as _errno
import mmap as _mmap

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

# include/uapi/linux/kvm.h: struct kvm_userspace_memory_region::flags
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
KVM_MEM_ALLONES = 1 << 2    # the RFC's bit 2
KVM_MEM_PCI_HOLE = 1 << 2   # the v2's meaning of the same bit (a Host picks one)

# include/uapi/linux/kvm.h: KVM_CHECK_EXTENSION capabilities the model answers
KVM_CAP_USER_MEMORY = 3
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_SYNC_MMU = 16
KVM_CAP_READONLY_MEM = 81
KVM_CAP_MULTI_ADDRESS_SPACE = 118
KVM_CAP_ALLONES_MEM = 183   # the RFC
KVM_CAP_PCI_HOLE_MEM = 187  # its v2

# arch/x86/include/asm/kvm_host.h and include/linux/kvm_host.h (x86)
KVM_ADDRESS_SPACE_NUM = 2
KVM_MEM_SLOTS_NUM = 32767                     # SHRT_MAX
KVM_USER_MEM_SLOTS = KVM_MEM_SLOTS_NUM - 3    # less KVM_INTERNAL_MEM_SLOTS: 32764
KVM_MEM_MAX_NR_PAGES = (1 << 31) - 1

# include/linux/kvm_host.h: error pfns and hvas
KVM_PFN_ERR_MASK = 0x7FF << 52
KVM_PFN_ERR_NOSLOT_MASK = 0xFFF << 52
KVM_PFN_NOSLOT = 1 << 63
KVM_PFN_ERR_FAULT = KVM_PFN_ERR_MASK
KVM_PFN_ERR_HWPOISON = KVM_PFN_ERR_MASK + 1
KVM_PFN_ERR_RO_FAULT = KVM_PFN_ERR_MASK + 2
KVM_PFN_ERR_SIGPENDING = KVM_PFN_ERR_MASK + 3
KVM_HVA_ERR_BAD = 0xFFFF888000000000  # PAGE_OFFSET, x86-64 4-level without KASLR
KVM_HVA_ERR_RO_BAD = KVM_HVA_ERR_BAD + PAGE_SIZE

# mmap(2) protections, for Host.mmap
PROT_READ = _mmap.PROT_READ
PROT_WRITE = _mmap.PROT_WRITE

# include/linux/mm.h: the default of the vm.max_map_count sysctl (a process's VMA limit;
# do_mmap() fails with ENOMEM past it): USHRT_MAX - MAPCOUNT_ELF_CORE_MARGIN (5).
DEFAULT_MAX_MAP_COUNT = 65535 - 5

# Stage-2 table pages a VM may have live per address space, as a memory cgroup limits the
# page tables KVM charges to it (GFP_KERNEL_ACCOUNT): past it a fault fails with ENOMEM
# instead of taking the host's memory. 2^17 pages (512 MiB of tables) map 256 GiB at 4 KiB;
# a whole-slot prefault of one 2^31-page all-ones slot would need 4M pages.
DEFAULT_MAX_TABLE_PAGES = 1 << 17

EINVAL = _errno.EINVAL
EEXIST = _errno.EEXIST
EFAULT = _errno.EFAULT
ENOMEM = _errno.ENOMEM


def is_error_pfn(pfn: int) -> bool:
    """is_error_pfn(): pfn is one of the KVM_PFN_ERR_* values (not NOSLOT)."""
    return bool(pfn & KVM_PFN_ERR_MASK)


def is_error_noslot_pfn(pfn: int) -> bool:
    """is_error_noslot_pfn(): pfn is an error or KVM_PFN_NOSLOT."""
    return bool(pfn & KVM_PFN_ERR_NOSLOT_MASK)


def is_noslot_pfn(pfn: int) -> bool:
    """is_noslot_pfn(): no memslot (or no memory) backs the gfn: an MMIO exit."""
    return pfn == KVM_PFN_NOSLOT


def kvm_is_error_hva(hva: int) -> bool:
    """kvm_is_error_hva(): hva is KVM_HVA_ERR_BAD or another kernel-half address."""
    return hva >= KVM_HVA_ERR_BAD
