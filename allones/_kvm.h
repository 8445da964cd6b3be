/*
 * Constants and tiny helpers of Linux KVM that allones mirrors.
 *
 * Values follow Linux v6.6 (include/linux/kvm_host.h, include/uapi/linux/kvm.h,
 * arch/x86/include/asm/kvm_host.h) plus the KVM_MEM_ALLONES RFC (May 2020) and its v2,
 * KVM_MEM_PCI_HOLE. Bit 2 of the flags means one or the other, as on a kernel that carries
 * one series or the other; upstream later gave it to KVM_MEM_GUEST_MEMFD, not modeled here.
 */
#ifndef ALLONES_KVM_H
#define ALLONES_KVM_H

#include <stdint.h>

#define ALLONES_PAGE_SHIFT 12
#define ALLONES_PAGE_SIZE (1ULL << ALLONES_PAGE_SHIFT)

/* include/uapi/linux/kvm.h: kvm_userspace_memory_region::flags */
#define KVM_MEM_LOG_DIRTY_PAGES (1U << 0)
#define KVM_MEM_READONLY (1U << 1)
#define KVM_MEM_ALLONES (1U << 2)   /* the RFC */
#define KVM_MEM_PCI_HOLE (1U << 2)  /* its v2 */

/* arch/x86/include/asm/kvm_host.h */
#define KVM_ADDRESS_SPACE_NUM 2
#define KVM_INTERNAL_MEM_SLOTS 3
/* include/linux/kvm_host.h: KVM_MEM_SLOTS_NUM is SHRT_MAX */
#define KVM_MEM_SLOTS_NUM 32767
#define KVM_USER_MEM_SLOTS (KVM_MEM_SLOTS_NUM - KVM_INTERNAL_MEM_SLOTS)
#define KVM_MEM_MAX_NR_PAGES ((1ULL << 31) - 1)

/* include/linux/kvm_host.h: error pfns. NOSLOT means "no memslot": an MMIO exit. */
#define KVM_PFN_ERR_MASK (0x7ffULL << 52)
#define KVM_PFN_ERR_NOSLOT_MASK (0xfffULL << 52)
#define KVM_PFN_NOSLOT (0x1ULL << 63)
#define KVM_PFN_ERR_FAULT (KVM_PFN_ERR_MASK)
#define KVM_PFN_ERR_HWPOISON (KVM_PFN_ERR_MASK + 1)
#define KVM_PFN_ERR_RO_FAULT (KVM_PFN_ERR_MASK + 2)
#define KVM_PFN_ERR_SIGPENDING (KVM_PFN_ERR_MASK + 3)

/* include/linux/kvm_host.h: KVM_HVA_ERR_BAD is PAGE_OFFSET (x86-64, 4-level, no KASLR) */
#define KVM_HVA_ERR_BAD 0xffff888000000000ULL
#define KVM_HVA_ERR_RO_BAD (KVM_HVA_ERR_BAD + ALLONES_PAGE_SIZE)

/* The kernel's last_used_slot is read and written by many vCPUs without a lock: a plain,
 * untorn word. Relaxed atomics say the same in C11 terms, so nogil readers may share it. */
static inline int32_t allones_load_relaxed(const int32_t *p)
{
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void allones_store_relaxed(int32_t *p, int32_t v)
{
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

#endif
