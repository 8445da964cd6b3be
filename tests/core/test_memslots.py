"""The core's memslot table: sorted generations, search_memslots and its cache, batch lookup."""

import numpy as np
import pytest

import allones
from allones import _core, constants
from allones.constants import KVM_MEM_ALLONES, PAGE_SIZE


def allones_slots(vm, layout):
    """Create all-ones slots from [(id, base_gfn, npages)]."""
    for slot_id, gfn, npages in layout:
        vm.set_user_memory_region(slot_id, KVM_MEM_ALLONES, gfn << 12, npages * PAGE_SIZE, 0)


def test_core_constants_match_constants_module():
    for name, value in _core.c_constants().items():
        assert getattr(constants, name) == value, name


def test_slots_are_kept_sorted_by_base_gfn(vm):
    allones_slots(vm, [(5, 50, 5), (1, 10, 5), (9, 90, 1), (3, 30, 10)])
    assert [s.base_gfn for s in vm.memslots()] == [10, 30, 50, 90]
    assert [s.id for s in vm.memslots()] == [1, 3, 5, 9]


def test_lookup_bounds_are_half_open(vm):
    allones_slots(vm, [(0, 10, 5)])
    assert [vm.lookup(g) for g in (9, 10, 14, 15)] == [-1, 0, 0, -1]


def test_lookup_on_empty_table(vm):
    assert vm.lookup(0) == -1
    ids = vm.lookup_batch(np.arange(10, dtype=np.uint64))
    assert ids.tolist() == [-1] * 10


def test_lookup_extremes(vm):
    allones_slots(vm, [(0, 0, 1), (1, (1 << 34) - 1, 1)])
    assert vm.lookup(0) == 0 and vm.lookup((1 << 34) - 1) == 1
    assert vm.lookup(2**64 - 1) == -1


def test_batch_lookup_agrees_with_scalar(vm):
    rng = np.random.default_rng(0)
    bases = np.sort(rng.choice(100_000, size=200, replace=False)) * 8
    allones_slots(vm, [(i, int(b), int(rng.integers(1, 8))) for i, b in enumerate(bases)])
    gfns = rng.integers(0, 900_000, size=5000).astype(np.uint64)
    assert vm.lookup_batch(gfns).tolist() == [vm.lookup(int(g)) for g in gfns]
    assert vm.lookup_batch(np.sort(gfns)).tolist() == [vm.lookup(int(g)) for g in np.sort(gfns)]


def test_batch_lookup_counts_cache_hits(vm):
    """Sequential gfns hit the last-used slot but at the first gfn and the slot change, as
    search_memslots intends (a new generation caches nothing)."""
    allones_slots(vm, [(0, 0, 100), (1, 100, 100)])
    ids, stats = vm.memslots().lookup_batch(np.arange(200, dtype=np.uint64))
    assert ids.tolist() == [0] * 100 + [1] * 100
    assert stats == {"lookups": 200, "cache_hits": 198}
    _, stats = vm.memslots().lookup_batch(np.arange(100, 200, dtype=np.uint64))
    assert stats["cache_hits"] == 100   # the cache now holds slot 1


def test_batch_lookup_out_argument(vm):
    allones_slots(vm, [(0, 0, 4)])
    out = np.full(3, 7, dtype=np.int32)
    ids, _ = vm.memslots().lookup_batch(np.array([0, 3, 4], dtype=np.uint64), out)
    assert ids is out and out.tolist() == [0, 0, -1]
    with pytest.raises(ValueError):
        vm.memslots().lookup_batch(np.zeros(2, dtype=np.uint64), out)


def test_batch_lookup_accepts_read_only_arrays(vm):
    allones_slots(vm, [(0, 0, 4)])
    gfns = np.arange(6, dtype=np.uint64)
    gfns.flags.writeable = False
    assert vm.lookup_batch(gfns).tolist() == [0, 0, 0, 0, -1, -1]


@pytest.mark.parametrize("gfns,exc", [
    (np.array([1.0]), TypeError), (np.array([-1]), ValueError),
    (np.zeros((2, 2), dtype=np.uint64), ValueError), (["a"], TypeError),
])
def test_batch_lookup_rejects_bad_arrays(vm, gfns, exc):
    with pytest.raises(exc):
        vm.lookup_batch(gfns)


def test_batch_lookup_converts_other_integer_arrays(vm):
    allones_slots(vm, [(0, 0, 4)])
    assert vm.lookup_batch([0, 5]).tolist() == [0, -1]
    assert vm.lookup_batch(np.array([3], dtype=np.int16)).tolist() == [0]
    assert vm.lookup_batch(np.arange(8, dtype=np.uint64)[::2]).tolist() == [0, 0, -1, -1]


def test_update_publishes_a_new_generation_and_keeps_the_old(vm):
    """A reader holding a generation keeps seeing it, whole (the memslots swap)."""
    allones_slots(vm, [(0, 0, 4)])
    old = vm.memslots()
    allones_slots(vm, [(1, 4, 4)])
    vm.set_user_memory_region(0, KVM_MEM_ALLONES, 0, 0, 0)
    new = vm.memslots()
    assert new is not old and new.generation == old.generation + 2
    assert [s.id for s in old] == [0] and old.lookup(5) == -1
    assert [s.id for s in new] == [1] and new.lookup(1) == -1 and new.lookup(5) == 1


def test_memslots_get_by_id(vm):
    allones_slots(vm, [(7, 3, 2)])
    assert vm.memslots().get(7) == allones.Memslot(7, 3, 2, 0, KVM_MEM_ALLONES)
    assert vm.memslots().get(8) is None
    assert vm.gfn_to_memslot(4).id == 7 and vm.gfn_to_memslot(5) is None


def test_table_holds_kvm_user_mem_slots(vm):
    """Up to KVM_USER_MEM_SLOTS (32764) slots per address space, all findable."""
    n = constants.KVM_USER_MEM_SLOTS
    allones_slots(vm, [(i, 2 * i, 1) for i in range(n)])
    assert len(vm.memslots()) == n
    gfns = np.arange(2 * n, dtype=np.uint64)
    expect = np.where(gfns % 2 == 0, gfns.astype(np.int64) // 2, -1)
    assert np.array_equal(vm.lookup_batch(gfns), expect)
    assert vm.lookup(2 * (n - 1)) == n - 1


@pytest.mark.parametrize("as_id", [-1, 2, 1000])
def test_address_space_out_of_range_is_an_error(vm, as_id):
    with pytest.raises(ValueError):
        vm.lookup(0, as_id)
    with pytest.raises(ValueError):
        vm.memslots(as_id)
    with pytest.raises(ValueError):
        vm.translate([0], as_id=as_id)
