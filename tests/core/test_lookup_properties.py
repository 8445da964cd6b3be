"""Properties of the lookup kernels over random layouts (hypothesis).

The batch kernel steps through tiles (slots and gaps); these check it answers exactly as a
linear scan does and counts exactly the cache hits the kernel's search_memslots would.
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import allones
from allones.constants import KVM_MEM_ALLONES, PAGE_SHIFT


@st.composite
def layouts(draw):
    """Disjoint [base, base + npages) slots, often adjacent or starting at gfn 0."""
    slots, gfn = [], draw(st.sampled_from([0, 0, 1, 5]))
    for slot_id in range(draw(st.integers(0, 12))):
        gfn += draw(st.sampled_from([0, 0, 1, 2, 7]))
        npages = draw(st.integers(1, 9))
        slots.append((slot_id, gfn, npages))
        gfn += npages
    return slots


def linear_scan(slots, gfn):
    return next((i for i, base, n in slots if base <= gfn < base + n), -1)


def kernel_cache_hits(slots, gfns):
    """What search_memslots' last_used_slot would answer, replayed in Python."""
    ordered = sorted(slots, key=lambda s: s[1])
    cached, hits = None, 0            # a new generation caches nothing (v6.6: NULL)
    for gfn in gfns:
        if cached is not None:
            _, base, n = ordered[cached]
            if base <= gfn < base + n:
                hits += 1
                continue
        for i, (_, base, n) in enumerate(ordered):
            if base <= gfn < base + n:
                cached = i
    return hits


def make_vm(slots):
    vm = allones.VM(allones.Host())
    for slot_id, gfn, npages in reversed(slots):   # insertion order must not matter
        vm.set_user_memory_region(slot_id, KVM_MEM_ALLONES, gfn << PAGE_SHIFT,
                                  npages << PAGE_SHIFT, 0)
    return vm


@settings(max_examples=300, deadline=None)
@given(layouts(), st.lists(st.integers(0, 120), max_size=60), st.integers(0, 100))
def test_batch_lookup_matches_linear_scan_and_kernel_cache(slots, gfns, start):
    vm = make_vm(slots)
    scan = list(range(start, start + 40))            # a sequential stretch, then random
    keys = np.array(scan + gfns + [2**64 - 1], dtype=np.uint64)
    ids, stats = vm.memslots().lookup_batch(keys)
    expected = [linear_scan(slots, int(g)) for g in keys]
    assert ids.tolist() == expected
    assert [vm.lookup(int(g)) for g in keys] == expected
    assert stats == {"lookups": len(keys), "cache_hits": kernel_cache_hits(slots, keys.tolist())}


@settings(max_examples=200, deadline=None)
@given(layouts(), st.lists(st.integers(0, 120), max_size=60), st.booleans())
def test_translate_matches_scalar_gfn_to_pfn(slots, gfns, write):
    vm = make_vm(slots)
    keys = np.array(gfns, dtype=np.uint64)
    t = vm.translate(keys, write=write)
    assert [(int(p), bool(w)) for p, w in zip(t.pfn, t.writable)] == \
        [vm.gfn_to_pfn(g, write) for g in gfns]
