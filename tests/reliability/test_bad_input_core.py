"""Bad input to the core's public entry points: one test per row of docs/reliability.md's
table (section "The core"). Each checks the exception class, that its message names the
argument, and that nothing changed."""

import numpy as np
import pytest

import allones
from allones import _core
from allones.constants import (KVM_MEM_ALLONES, KVM_MEM_LOG_DIRTY_PAGES, KVM_PFN_NOSLOT,
                               KVM_USER_MEM_SLOTS, PAGE_SIZE, PROT_READ, PROT_WRITE)

HOLE = 0xB000_0000


@pytest.fixture
def world():
    """A host with 16 pages of RAM at gfn 0 and an all-ones slot at HOLE (slot 1)."""
    host = allones.Host()
    vm = allones.VM(host)
    ram = host.mmap(16 * PAGE_SIZE, fill=0x11)
    vm.set_user_memory_region(0, 0, 0, ram.size, ram.hva)
    vm.set_user_memory_region(1, KVM_MEM_ALLONES, HOLE, 512 * PAGE_SIZE, 0)
    vm.read(0)   # a stage-2 mapping, so a change to the tables would show
    return host, vm, ram


def state(host, vm):
    return (vm.memslots(0), vm.memslots(1), host.mm, host.nr_frames, vm.table_pages(),
            vm.walk(0), bytes(memoryview(host.mappings[0])))


def unchanged(world, call, exc, *fragments):
    """call raises exc whose message holds every fragment, and changes nothing."""
    host, vm, _ = world
    before = state(host, vm)
    with pytest.raises(exc) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    after = state(host, vm)
    assert all(a is b or a == b for a, b in zip(after, before))
    return info.value


def scalar_calls(world, value):
    """(name in the message, call) for every entry point taking one integer."""
    host, vm, ram = world
    ms, mm = vm.memslots(), host.mm
    return [
        ("gfn", lambda: vm.lookup(value)), ("gfn", lambda: vm.gfn_to_memslot(value)),
        ("gfn", lambda: vm.gfn_to_hva(value)), ("gfn", lambda: vm.gfn_to_pfn(value)),
        ("gfn", lambda: vm.walk(value)), ("gfn", lambda: ms.lookup(value)),
        ("gfn", lambda: ms.gfn_to_memslot(value)), ("gfn", lambda: ms.gfn_to_hva(mm, value)),
        ("gfn", lambda: ms.gfn_to_pfn(mm, value, False)),
        ("hva", lambda: mm.hva_to_pfn(value, False)), ("hva", lambda: host.hva_to_pfn(value)),
        ("slot", lambda: vm.set_user_memory_region(value, 0, 0x100000, PAGE_SIZE, ram.hva)),
        ("flags", lambda: vm.set_user_memory_region(2, value, 0x100000, PAGE_SIZE, ram.hva)),
        ("guest_phys_addr", lambda: vm.set_user_memory_region(2, 0, value, PAGE_SIZE, ram.hva)),
        ("memory_size", lambda: vm.set_user_memory_region(2, 0, 0x100000, value, ram.hva)),
        ("userspace_addr", lambda: vm.set_user_memory_region(2, 0, 0x100000, PAGE_SIZE, value)),
        ("slot", lambda: vm.get_dirty_log(value)), ("cap", lambda: vm.check_extension(value)),
        ("value", lambda: vm.write(0, value)), ("gpas", lambda: vm.read(value)),
        ("size", lambda: host.mmap(value)), ("size", lambda: host.mmap_alias(value)),
        ("max_map_count", lambda: host.mmap_alias(PAGE_SIZE, max_map_count=value)),
        ("phys_bits", lambda: allones.Host(phys_bits=value)),
    ]


@pytest.mark.parametrize("value", [1.0, 2.5, "1", None, b"\x01"])
def test_a_number_that_is_not_an_integer(world, value):
    for name, call in scalar_calls(world, value):
        unchanged(world, call, TypeError, name)
    host, vm, _ = world
    for name, call in [("as_id", lambda: vm.memslots(value)), ("as_id", lambda: vm.lookup(0, value)),
                       ("id", lambda: vm.memslots().get(value)),
                       ("id", lambda: vm.memslots().dirty_bitmap(value)),
                       ("hva", lambda: host.munmap(value)), ("fill", lambda: host.mmap(PAGE_SIZE, value)),
                       ("prot", lambda: host.mmap(PAGE_SIZE, None, value))]:
        if value is None and name in ("fill",):
            continue   # fill=None: no fill, the default
        unchanged(world, call, TypeError, name)


@pytest.mark.parametrize("value", [-1, -PAGE_SIZE, 1 << 64, (1 << 64) + PAGE_SIZE])
def test_a_negative_or_wider_than_64_bit_number(world, value):
    for name, call in scalar_calls(world, value):
        if name == "cap":
            continue   # a cap is any integer: unknown ones answer 0 (KVM_CHECK_EXTENSION)
        if name == "size" and value > 0:
            continue   # sizes past the user address space: their own row
        unchanged(world, call, ValueError, name)


def test_slot_and_flags_wider_than_32_bits(world):
    host, vm, ram = world
    unchanged(world, lambda: vm.set_user_memory_region(1 << 32, 0, 0x100000, PAGE_SIZE, ram.hva),
              ValueError, "slot", "__u32")
    unchanged(world, lambda: vm.set_user_memory_region(2, 1 << 32, 0x100000, PAGE_SIZE, ram.hva),
              ValueError, "flags", "__u32")


@pytest.mark.parametrize("field, args, rule", [
    ("gpa", (2, 0, 0x100800, PAGE_SIZE), "guest_phys_addr 0x100800 is not page-aligned"),
    ("size", (2, 0, 0x100000, PAGE_SIZE + 1), "memory_size 0x1001 is not page-aligned"),
    ("hva", (2, 0, 0x100000, PAGE_SIZE), "userspace_addr"),
])
def test_unaligned_values_in_a_memory_region(world, field, args, rule):
    host, vm, ram = world
    hva = ram.hva + 8 if field == "hva" else ram.hva
    exc = unchanged(world, lambda: vm.set_user_memory_region(*args, hva), allones.InvalidArgument, rule)
    assert exc.errno == 22


@pytest.mark.parametrize("size", [0, 1, PAGE_SIZE + 1, (1 << 47) + PAGE_SIZE])
def test_a_mapping_size_that_is_not_a_positive_page_multiple(world, size):
    host = world[0]
    unchanged(world, lambda: host.mmap(size), ValueError, "size")
    unchanged(world, lambda: host.mmap_alias(size), ValueError, "size")


@pytest.mark.parametrize("fill, prot", [(256, PROT_READ), (-1, PROT_READ), (0, PROT_WRITE), (0, 7), (0, 0)])
def test_a_fill_that_is_not_a_byte_or_a_prot_that_is_not_r_or_rw(world, fill, prot):
    host = world[0]
    fragment = "fill" if fill not in (0,) else "prot"
    unchanged(world, lambda: host.mmap(PAGE_SIZE, fill, prot), ValueError, fragment)
    unchanged(world, lambda: host.mmap_alias(PAGE_SIZE, fill, prot), ValueError, fragment)


def _arrays_calls(world, arr):
    host, vm, _ = world
    return [("gfns", lambda: vm.lookup_batch(arr)), ("gfns", lambda: vm.translate(arr)),
            ("gpas", lambda: vm.run(arr)), ("values", lambda: vm.run([0] * len(arr), 4, True, arr)),
            ("mmio_gfns", lambda: vm.run([0], on_mmio=print, mmio_gfns=arr))]


@pytest.mark.parametrize("arr", [np.zeros(2), np.array([True, False]), np.array(["0", "1"]),
                                 np.array([0, None], dtype=object), np.array([1.0, 2.0], dtype=np.float32)])
def test_an_array_of_the_wrong_dtype(world, arr):
    for name, call in _arrays_calls(world, arr):
        unchanged(world, call, TypeError, name)
    host, vm, _ = world
    # The C-speed API takes only uint64, and says so (Cython's buffer check).
    unchanged(world, lambda: vm.memslots().lookup_batch(arr), (ValueError, TypeError))
    unchanged(world, lambda: vm.memslots().translate(host.mm, arr, False), (ValueError, TypeError))


@pytest.mark.parametrize("arr", [np.array([0, -1]), [0, 1 << 64], np.array([-5], dtype=np.int8)])
def test_an_array_with_negative_or_wider_than_64_bit_values(world, arr):
    for name, call in _arrays_calls(world, arr):
        unchanged(world, call, ValueError, name)


def test_a_non_contiguous_or_read_only_array(world):
    host, vm, _ = world
    gfns = np.arange(0, 64, dtype=np.uint64)
    strided, ro = gfns[::3], gfns.copy()
    ro.flags.writeable = False
    # The Python API copies what it must: the answers are those of a contiguous copy.
    for arr in (strided, ro):
        assert (vm.lookup_batch(arr) == vm.lookup_batch(np.array(arr))).all()
        assert (vm.translate(arr).pfn == vm.translate(np.array(arr)).pfn).all()
        assert (vm.run(arr << 12).values == vm.run(np.array(arr) << 12).values).all()
    # The C-speed API reads gfns in place: read-only is fine, strided is refused, and its
    # output array must be writable.
    ms = vm.memslots()
    assert (ms.lookup_batch(ro)[0] == vm.lookup_batch(gfns)).all()
    unchanged(world, lambda: ms.lookup_batch(strided), ValueError, "contiguous")
    unchanged(world, lambda: ms.translate(host.mm, strided, False), ValueError, "contiguous")
    out = np.zeros(len(gfns), np.int32)
    out.flags.writeable = False
    unchanged(world, lambda: ms.lookup_batch(gfns, out), ValueError, "read-only")


def test_arrays_of_mismatched_lengths(world):
    host, vm, _ = world
    unchanged(world, lambda: vm.run([0, 8], [4, 4, 4]), ValueError, "sizes")
    unchanged(world, lambda: vm.run([0, 8], 4, [True]), ValueError, "is_write")
    unchanged(world, lambda: vm.run([0, 8], 4, True, [1]), ValueError, "values")
    unchanged(world, lambda: vm.memslots().lookup_batch(np.zeros(3, np.uint64), np.zeros(2, np.int32)),
              ValueError, "out has 2 entries for 3 gfns")


@pytest.mark.parametrize("empty", [[], np.zeros(0, np.uint64), np.zeros(0, np.int8), np.zeros(0)])
def test_empty_arrays_are_no_work_not_an_error(world, empty):
    host, vm, _ = world
    before = state(host, vm)
    assert vm.lookup_batch(empty).shape == (0,)
    assert vm.translate(empty).pfn.shape == (0,)
    r = vm.run(empty, [], [], [])
    assert r.values.shape == (0,) and r.stats["accesses"] == 0
    assert all(a is b or a == b for a, b in zip(state(host, vm), before))


@pytest.mark.parametrize("arr", [np.zeros((2, 2), np.uint64), 5, None])
def test_an_array_that_is_not_one_dimensional(world, arr):
    for name, call in _arrays_calls(world, arr)[:3]:
        unchanged(world, call, ValueError, name, "1-D")


@pytest.mark.parametrize("size", [0, 3, 5, 16, 255])
def test_an_access_size_other_than_1_2_4_8(world, size):
    host, vm, _ = world
    unchanged(world, lambda: vm.run([0, 8], [4, size]), ValueError, "access 1", "size must be 1, 2, 4 or 8")
    unchanged(world, lambda: vm.read(0, size), ValueError, "size")
    unchanged(world, lambda: vm.write(0, 0, size), ValueError, "size")
    unchanged(world, lambda: vm.run([0], 256), ValueError, "sizes")
    unchanged(world, lambda: vm.run([0], 4.0), TypeError, "sizes")


def test_an_access_that_crosses_a_page(world):
    host, vm, _ = world
    unchanged(world, lambda: vm.run([0, 0xFFE], 4), ValueError, "access 1", "crosses a page")


def test_a_gpa_beyond_the_guest_physical_address_width(world):
    host, vm, ram = world
    top = 1 << host.phys_bits
    unchanged(world, lambda: vm.run([0, top], 4), ValueError, "access 1", "physical address width")
    unchanged(world, lambda: vm.read(top - 4 + 4), ValueError, "physical address width")
    vm.read(top - 4)   # the last word is a hole: fine
    # A memslot there is refused as the kernel refuses it (x86 kvm_mmu_max_gfn()) ...
    exc = unchanged(world, lambda: vm.set_user_memory_region(2, 0, top, PAGE_SIZE, ram.hva),
                    allones.InvalidArgument, "kvm_mmu_max_gfn")
    assert exc.rule == "RULE_MAX_GFN"
    # ... and lookups of such gfns answer "no memslot", as __gfn_to_memslot does.
    far = np.array([top >> 12, (1 << 64) - 1], np.uint64)
    assert vm.lookup_batch(far).tolist() == [-1, -1]
    assert vm.translate(far).pfn.tolist() == [KVM_PFN_NOSLOT] * 2


def test_a_write_value_wider_than_its_access(world):
    host, vm, _ = world
    unchanged(world, lambda: vm.write(0, 1 << 32, 4), ValueError, "does not fit 4 bytes")
    # A batch's values are registers: a write stores the access's low bytes, as a CPU does.
    vm.run([0], 1, True, [0x1234])
    assert vm.read(0, 1) == 0x34


def test_is_write_other_than_0_or_1(world):
    host, vm, _ = world
    unchanged(world, lambda: vm.run([0], 4, 2), ValueError, "is_write", "0..1")
    unchanged(world, lambda: vm.run([0], 4, [0.5]), TypeError, "is_write")


def test_a_bad_exit_handler(world):
    host, vm, _ = world
    unchanged(world, lambda: vm.run([HOLE - PAGE_SIZE], on_mmio=5), TypeError, "on_mmio must be callable")
    with pytest.raises(TypeError, match="on_mmio returned str") as info:
        vm.run([0, HOLE - PAGE_SIZE], on_mmio=lambda *a: "0")
    assert info.value.allones_index == 1 and info.value.allones_stats["accesses"] == 2
    # Wider or negative answers are cut to the access (KVM copies `len` bytes of mmio.data).
    assert vm.run([HOLE - PAGE_SIZE], 2, on_mmio=lambda *a: 0x123456).values[0] == 0x3456
    assert vm.run([HOLE - PAGE_SIZE], 2, on_mmio=lambda *a: -1).values[0] == 0xFFFF


@pytest.mark.parametrize("as_id", [2, -1, 1 << 16])
def test_an_address_space_out_of_range(world, as_id):
    host, vm, ram = world
    for call in (lambda: vm.memslots(as_id), lambda: vm.lookup(0, as_id),
                 lambda: vm.lookup_batch([0], as_id), lambda: vm.translate([0], False, as_id),
                 lambda: vm.run([0], as_id=as_id), lambda: vm.walk(0, as_id)):
        unchanged(world, call, ValueError, "as_id")
    if as_id == 2:   # in the ioctl's slot field, the kernel's own check: EINVAL
        exc = unchanged(world, lambda: vm.set_user_memory_region(as_id << 16 | 2, 0, 0x100000, PAGE_SIZE, ram.hva),
                        allones.InvalidArgument, "KVM_ADDRESS_SPACE_NUM")
        assert exc.rule == "RULE_AS_ID"


@pytest.mark.parametrize("slot_id", [KVM_USER_MEM_SLOTS, 0xFFFF])
def test_a_slot_id_out_of_range(world, slot_id):
    host, vm, ram = world
    exc = unchanged(world, lambda: vm.set_user_memory_region(slot_id, 0, 0x100000, PAGE_SIZE, ram.hva),
                    allones.InvalidArgument, "KVM_USER_MEM_SLOTS")
    assert exc.rule == "RULE_USER_SLOT_ID"
    unchanged(world, lambda: vm.get_dirty_log(slot_id), allones.InvalidArgument, "out of range")
    assert vm.memslots().get(slot_id) is None and vm.memslots().get(-1) is None


@pytest.mark.parametrize("flags", [1 << 3, 1 << 31, KVM_MEM_ALLONES | KVM_MEM_LOG_DIRTY_PAGES])
def test_unknown_or_excluded_flags(world, flags):
    host, vm, _ = world
    exc = unchanged(world, lambda: vm.set_user_memory_region(2, flags, 0x100000, PAGE_SIZE, 0),
                    allones.InvalidArgument, f"{flags:#x}")
    assert exc.rule in ("RULE_FLAGS", "RULE_ALLONES_EXCLUSIVE")


def test_unknown_names(world):
    host = world[0]
    for call, name in [(lambda: allones.Host(bit2="allone"), "bit2"),
                       (lambda: allones.VM(host, prefault="eager"), "prefault"),
                       (lambda: allones.VM(host, allones_map="2m"), "allones_map"),
                       (lambda: allones.VM(allones.Host(bit2="pci_hole"), allones_map="hugepage"),
                        "allones_map")]:
        unchanged(world, call, ValueError, name)


def test_objects_of_the_wrong_type(world):
    host, vm, _ = world
    unchanged(world, lambda: allones.VM(None), TypeError, "allones.Host")
    unchanged(world, lambda: vm.memslots().translate(None, np.zeros(1, np.uint64), False), TypeError, "mm")
    unchanged(world, lambda: _core.HostMM([1]), TypeError, "HostMapping")
    unchanged(world, lambda: allones.Host(materialize="no"), TypeError, "materialize")


def test_mmap_alias_past_max_map_count(world):
    host = world[0]
    exc = unchanged(world, lambda: host.mmap_alias(16 * PAGE_SIZE, max_map_count=8),
                    allones.NoMemory, "vm.max_map_count=8")
    assert exc.errno == 12


def test_munmap_where_no_mapping_starts(world):
    host, _, ram = world
    unchanged(world, lambda: host.munmap(ram.hva + PAGE_SIZE), ValueError, "no mapping starts")


def test_dirty_log_of_a_slot_without_one(world):
    host, vm, _ = world
    exc = unchanged(world, lambda: vm.get_dirty_log(0), allones.NotFound, "no dirty log")
    assert exc.errno == 2
    unchanged(world, lambda: vm.get_dirty_log(7), allones.NotFound, "does not exist")
