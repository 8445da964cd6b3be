"""One test per check of KVM_SET_USER_MEMORY_REGION, named after the kernel check.

Kernel: Linux v6.6 virt/kvm/kvm_main.c (kvm_vm_ioctl_set_memory_region,
check_memory_region_flags, __kvm_set_memory_region, kvm_check_memslot_overlap),
arch/x86/kvm/x86.c (kvm_arch_prepare_memory_region), with the KVM_MEM_ALLONES RFC.
Each asserts the errno and the rule, never the message, and that nothing changed.
"""

import errno

import pytest

import allones
from allones import Change
from allones.constants import (KVM_MEM_ALLONES, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_MAX_NR_PAGES,
                               KVM_MEM_READONLY, KVM_USER_MEM_SLOTS, PAGE_SIZE)

GPA = 0xC000_0000


def refused(vm, err, rule, *args):
    """Call set_user_memory_region expecting errno `err` by `rule`, and no change."""
    before = [vm.memslots(a) for a in (0, 1)]
    with pytest.raises(allones.KvmError) as exc:
        vm.set_user_memory_region(*args)
    assert exc.value.errno == err
    assert exc.value.rule == rule
    assert [vm.memslots(a) for a in (0, 1)] == before  # the very same generations


# --- kvm_vm_ioctl_set_memory_region ---

@pytest.mark.parametrize("slot_id", [KVM_USER_MEM_SLOTS, KVM_USER_MEM_SLOTS + 1, 0xFFFF])
def test_kvm_vm_ioctl_set_memory_region_rejects_internal_slot_ids(vm, ram, slot_id):
    """(u16)mem->slot >= KVM_USER_MEM_SLOTS -> EINVAL, before any other check."""
    refused(vm, errno.EINVAL, "RULE_USER_SLOT_ID", slot_id, 0xFF, GPA + 1, 1, 1)


def test_kvm_vm_ioctl_set_memory_region_accepts_last_user_slot(vm, ram):
    vm.set_user_memory_region(KVM_USER_MEM_SLOTS - 1, 0, GPA, PAGE_SIZE, ram.hva)
    assert vm.lookup(GPA >> 12) == KVM_USER_MEM_SLOTS - 1


# --- check_memory_region_flags ---

@pytest.mark.parametrize("bit", range(3, 32))
def test_check_memory_region_flags_rejects_unknown_bits(vm, ram, bit):
    refused(vm, errno.EINVAL, "RULE_FLAGS", 0, 1 << bit, GPA, PAGE_SIZE, ram.hva)


@pytest.mark.parametrize("flags", [0, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
                                   KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY])
def test_check_memory_region_flags_accepts_known_bits(vm, ram, flags):
    assert vm.set_user_memory_region(0, flags, GPA, PAGE_SIZE, ram.hva) == Change.KVM_MR_CREATE


# --- __kvm_set_memory_region: general sanity checks ---

@pytest.mark.parametrize("size", [1, PAGE_SIZE - 1, PAGE_SIZE + 1, 2 * PAGE_SIZE + 0x800])
def test_kvm_set_memory_region_rejects_unaligned_memory_size(vm, ram, size):
    refused(vm, errno.EINVAL, "RULE_SIZE_ALIGN", 0, 0, GPA, size, ram.hva)


@pytest.mark.parametrize("gpa", [GPA + 1, GPA + PAGE_SIZE - 1, GPA | 0x800])
def test_kvm_set_memory_region_rejects_unaligned_guest_phys_addr(vm, ram, gpa):
    refused(vm, errno.EINVAL, "RULE_GPA_ALIGN", 0, 0, gpa, PAGE_SIZE, ram.hva)


@pytest.mark.parametrize("offset", [1, 8, PAGE_SIZE - 1])
def test_kvm_set_memory_region_rejects_unaligned_userspace_addr(vm, ram, offset):
    refused(vm, errno.EINVAL, "RULE_HVA_ALIGN", 0, 0, GPA, PAGE_SIZE, ram.hva + offset)


@pytest.mark.parametrize("hva,size", [
    (1 << 63, PAGE_SIZE),                       # the kernel half
    ((1 << 63) - PAGE_SIZE, PAGE_SIZE),         # ends exactly at bit 63
    ((1 << 63) - PAGE_SIZE, 2 * PAGE_SIZE),     # ends past the user half
    ((1 << 64) - PAGE_SIZE, 2 * PAGE_SIZE),     # addr + size wraps
])
def test_kvm_set_memory_region_rejects_what_access_ok_refuses(vm, hva, size):
    refused(vm, errno.EINVAL, "RULE_ACCESS_OK", 0, 0, GPA, size, hva)


@pytest.mark.parametrize("hva", [0, PAGE_SIZE, 0x7FFF_FFFF_F000, (1 << 63) - 2 * PAGE_SIZE])
def test_access_ok_passes_unmapped_user_addresses(vm, hva):
    """An address that passes access_ok but has nothing behind it is accepted; the guest's
    access fails later (KVM_PFN_ERR_FAULT, i.e. KVM_RUN's EFAULT). v6.6's access_ok only
    wants addr + size to neither wrap nor reach bit 63: TASK_SIZE_MAX is not consulted."""
    from allones.constants import KVM_PFN_ERR_FAULT
    vm.set_user_memory_region(0, 0, GPA, PAGE_SIZE, hva)
    assert vm.gfn_to_pfn(GPA >> 12) == (KVM_PFN_ERR_FAULT, False)


@pytest.mark.parametrize("as_id", [2, 3, 0xFFFF])
def test_kvm_set_memory_region_rejects_as_id_beyond_address_spaces(vm, ram, as_id):
    refused(vm, errno.EINVAL, "RULE_AS_ID", as_id << 16, 0, GPA, PAGE_SIZE, ram.hva)


def test_kvm_set_memory_region_uses_both_x86_address_spaces(vm, ram):
    """as_id 1 (SMM) is a separate memslot set: the same id and gfns do not collide."""
    vm.set_user_memory_region(0, 0, GPA, PAGE_SIZE, ram.hva)
    vm.set_user_memory_region(1 << 16, 0, GPA, PAGE_SIZE, ram.hva + PAGE_SIZE)
    assert vm.gfn_to_pfn(GPA >> 12, as_id=1)[0] == vm.gfn_to_pfn(GPA >> 12)[0] + 1


def test_kvm_set_memory_region_rejects_wrapping_guest_phys_addr(vm):
    refused(vm, errno.EINVAL, "RULE_GPA_WRAP", 0, KVM_MEM_ALLONES, (1 << 64) - PAGE_SIZE,
            2 * PAGE_SIZE, 0)


def test_kvm_set_memory_region_rejects_more_than_max_nr_pages(vm):
    size = (KVM_MEM_MAX_NR_PAGES + 1) * PAGE_SIZE
    refused(vm, errno.EINVAL, "RULE_NR_PAGES", 0, KVM_MEM_ALLONES, 0, size, 0)


def test_kvm_set_memory_region_accepts_max_nr_pages(vm):
    size = KVM_MEM_MAX_NR_PAGES * PAGE_SIZE
    assert vm.set_user_memory_region(0, KVM_MEM_ALLONES, 0, size, 0) == Change.KVM_MR_CREATE


# --- the RFC's additions ---

def test_kvm_mem_allones_requires_null_userspace_addr(vm, ram):
    """RFC: "KVM_MEM_ALLONES doesn't need userspace_addr" -> EINVAL when it is set."""
    refused(vm, errno.EINVAL, "RULE_NO_MEMORY_HVA", 0, KVM_MEM_ALLONES, GPA, PAGE_SIZE, ram.hva)


@pytest.mark.parametrize("other", [KVM_MEM_READONLY, KVM_MEM_LOG_DIRTY_PAGES])
def test_kvm_mem_allones_is_exclusive_with_readonly_and_dirty_logging(vm, other):
    refused(vm, errno.EINVAL, "RULE_ALLONES_EXCLUSIVE", 0, KVM_MEM_ALLONES | other, GPA, PAGE_SIZE, 0)


def test_kvm_mem_allones_skips_userspace_addr_checks(vm):
    """RFC: "KVM_MEM_ALLONES slots don't have any userspace memory attached": no access_ok."""
    size = KVM_MEM_MAX_NR_PAGES * PAGE_SIZE
    vm.set_user_memory_region(0, KVM_MEM_ALLONES, 0, size, 0)
    assert list(vm.memslots())[0].userspace_addr == 0


def test_kvm_mem_allones_delete_still_checks_userspace_addr(vm):
    vm.set_user_memory_region(0, KVM_MEM_ALLONES, GPA, PAGE_SIZE, 0)
    refused(vm, errno.EINVAL, "RULE_NO_MEMORY_HVA", 0, KVM_MEM_ALLONES, GPA, 0, PAGE_SIZE)


# --- changes to an existing slot ---

def test_kvm_set_memory_region_rejects_deleting_missing_slot(vm):
    refused(vm, errno.EINVAL, "RULE_DELETE_MISSING", 3, 0, GPA, 0, 0)


def test_kvm_set_memory_region_delete_ignores_other_fields(vm, ram):
    vm.set_user_memory_region(3, 0, GPA, PAGE_SIZE, ram.hva)
    assert vm.set_user_memory_region(3, KVM_MEM_READONLY, 0, 0, 0) == Change.KVM_MR_DELETE
    assert len(vm.memslots()) == 0


def test_kvm_set_memory_region_rejects_changing_userspace_addr(vm, ram):
    vm.set_user_memory_region(0, 0, GPA, PAGE_SIZE, ram.hva)
    refused(vm, errno.EINVAL, "RULE_MODIFY_HVA", 0, 0, GPA, PAGE_SIZE, ram.hva + PAGE_SIZE)


def test_kvm_set_memory_region_rejects_changing_size(vm, ram):
    vm.set_user_memory_region(0, 0, GPA, PAGE_SIZE, ram.hva)
    refused(vm, errno.EINVAL, "RULE_MODIFY_NPAGES", 0, 0, GPA, 2 * PAGE_SIZE, ram.hva)


def test_kvm_set_memory_region_rejects_toggling_readonly(vm, ram):
    vm.set_user_memory_region(0, 0, GPA, PAGE_SIZE, ram.hva)
    refused(vm, errno.EINVAL, "RULE_MODIFY_READONLY", 0, KVM_MEM_READONLY, GPA, PAGE_SIZE, ram.hva)


def test_kvm_set_memory_region_rejects_toggling_allones(vm):
    """A normal slot at userspace_addr 0 may not become all-ones by a flags change (nor back):
    v2 refuses toggling PCI_HOLE; the model refuses bit 2 for the RFC too."""
    vm.set_user_memory_region(0, 0, GPA, PAGE_SIZE, 0)
    refused(vm, errno.EINVAL, "RULE_MODIFY_NO_MEMORY", 0, KVM_MEM_ALLONES, GPA, PAGE_SIZE, 0)
    vm.set_user_memory_region(1, KVM_MEM_ALLONES, 0, PAGE_SIZE, 0)
    refused(vm, errno.EINVAL, "RULE_MODIFY_NO_MEMORY", 1, 0, 0, PAGE_SIZE, 0)


def test_kvm_set_memory_region_flags_only_change(vm, ram):
    vm.set_user_memory_region(0, 0, GPA, PAGE_SIZE, ram.hva)
    gen = vm.memslots().generation
    assert vm.set_user_memory_region(0, KVM_MEM_LOG_DIRTY_PAGES, GPA, PAGE_SIZE, ram.hva) == \
        Change.KVM_MR_FLAGS_ONLY
    assert vm.gfn_to_memslot(GPA >> 12).flags == KVM_MEM_LOG_DIRTY_PAGES
    assert vm.memslots().generation == gen + 1


def test_kvm_set_memory_region_move(vm, ram):
    vm.set_user_memory_region(0, 0, GPA, PAGE_SIZE, ram.hva)
    assert vm.set_user_memory_region(0, 0, GPA - PAGE_SIZE, PAGE_SIZE, ram.hva) == Change.KVM_MR_MOVE
    assert vm.lookup(GPA >> 12) == -1
    assert vm.gfn_to_hva((GPA >> 12) - 1) == ram.hva


def test_kvm_set_memory_region_nothing_to_change_returns_early(vm, ram):
    vm.set_user_memory_region(0, 0, GPA, PAGE_SIZE, ram.hva)
    slots = vm.memslots()
    assert vm.set_user_memory_region(0, 0, GPA, PAGE_SIZE, ram.hva) == Change.KVM_MR_NONE
    assert vm.memslots() is slots


# --- kvm_check_memslot_overlap ---

@pytest.mark.parametrize("gfn,npages", [(0, 2), (1, 1), (2, 1), (0, 8), (3, 4), (1, 2)])
def test_kvm_check_memslot_overlap_returns_eexist(vm, ram, gfn, npages):
    """Existing slot at gfns [1, 4): front, inside, back, covering, tail overlaps."""
    base = GPA >> 12
    vm.set_user_memory_region(0, 0, (base + 1) << 12, 3 * PAGE_SIZE, ram.hva)
    refused(vm, errno.EEXIST, "RULE_OVERLAP", 1, 0, (base + gfn) << 12, npages * PAGE_SIZE, ram.hva)


def test_kvm_check_memslot_overlap_allows_adjacent_slots(vm, ram):
    base = GPA >> 12
    vm.set_user_memory_region(0, 0, (base + 1) << 12, 3 * PAGE_SIZE, ram.hva)
    vm.set_user_memory_region(1, 0, base << 12, PAGE_SIZE, ram.hva)
    vm.set_user_memory_region(2, KVM_MEM_ALLONES, (base + 4) << 12, PAGE_SIZE, 0)
    assert [s.id for s in vm.memslots()] == [1, 0, 2]


def test_kvm_check_memslot_overlap_ignores_the_moving_slot(vm, ram):
    vm.set_user_memory_region(0, 0, GPA, 4 * PAGE_SIZE, ram.hva)
    assert vm.set_user_memory_region(0, 0, GPA + PAGE_SIZE, 4 * PAGE_SIZE, ram.hva) == Change.KVM_MR_MOVE


def test_kvm_check_memslot_overlap_on_move(vm, ram):
    vm.set_user_memory_region(0, 0, GPA, PAGE_SIZE, ram.hva)
    vm.set_user_memory_region(1, 0, GPA + 4 * PAGE_SIZE, PAGE_SIZE, ram.hva)
    refused(vm, errno.EEXIST, "RULE_OVERLAP", 0, 0, GPA + 4 * PAGE_SIZE, PAGE_SIZE, ram.hva)


def test_overlap_is_checked_before_max_gfn(ram):
    """kvm_arch_prepare_memory_region runs after the overlap check: EEXIST wins."""
    vm = allones.VM(allones.Host(phys_bits=32))
    vm.set_user_memory_region(0, KVM_MEM_ALLONES, 0xFFFF_F000, PAGE_SIZE, 0)
    refused(vm, errno.EEXIST, "RULE_OVERLAP", 1, KVM_MEM_ALLONES, 0xFFFF_F000, 2 * PAGE_SIZE, 0)


# --- kvm_arch_prepare_memory_region (x86) ---

def test_kvm_arch_prepare_memory_region_rejects_gfns_past_max_gfn():
    vm = allones.VM(allones.Host(phys_bits=32))
    vm.set_user_memory_region(0, KVM_MEM_ALLONES, 0xFFFF_F000, PAGE_SIZE, 0)   # last gfn ok
    refused(vm, errno.EINVAL, "RULE_MAX_GFN", 1, KVM_MEM_ALLONES, 1 << 32, PAGE_SIZE, 0)
    refused(vm, errno.EINVAL, "RULE_MAX_GFN", 0, KVM_MEM_ALLONES, 1 << 32, PAGE_SIZE, 0)  # move


# --- argument coercion (the struct's field widths) ---

@pytest.mark.parametrize("args", [(-1, 0, 0, 0, 0), (1 << 32, 0, 0, 0, 0), (0, 1 << 32, 0, 0, 0),
                                  (0, 0, -PAGE_SIZE, PAGE_SIZE, 0), (0, 0, 0, 1 << 64, 0)])
def test_fields_must_fit_the_struct(vm, args):
    with pytest.raises(ValueError):
        vm.set_user_memory_region(*args)
    assert len(vm.memslots()) == 0


def test_fields_must_be_integers(vm):
    with pytest.raises(TypeError):
        vm.set_user_memory_region(0, 0, 0.0, PAGE_SIZE, 0)
