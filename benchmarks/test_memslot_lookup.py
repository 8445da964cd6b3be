"""Memslot lookup: the core side by side with numpy.searchsorted, bisect and a Python model.

Groups pair the core with its baselines on the same seeded inputs:
- `lookup_batch/...`: 1M gfns over 509 and 32764 slots, random and sequential order;
  `core` (VM.lookup_batch: search + range check + id) vs `np.searchsorted` alone.
- `translate/...`: VM.translate (lookup + __gfn_to_pfn_memslot) on the same gfns.
- `lookup_scalar/...`: 10k calls from Python: VM.lookup vs bisect.bisect_right on a list,
  and vs a pure-Python lookup model (bisect + range check).
Run: python -m pytest benchmarks --benchmark-only --benchmark-group-by=group
"""

import bisect
import functools

import numpy as np
import pytest

NSLOTS = [509, 32764]
ORDERS = ["random", "sequential"]
SCALAR_KEYS = 10_000


def info(benchmark, layout, order, n):
    benchmark.extra_info.update(nslots=len(layout.bases), order=order, keys=n)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("nslots", NSLOTS)
class TestLookupBatch:
    def inputs(self, benchmark, layout, nslots, order, operation):
        """The layout and its gfn stream, with the benchmark put in its group."""
        lay = layout(nslots)
        gfns = lay.gfns[order]
        benchmark.group = f"{operation}/nslots={nslots}/{order}"
        info(benchmark, lay, order, len(gfns))
        return lay, gfns

    def test_core(self, benchmark, layout, nslots, order):
        lay, gfns = self.inputs(benchmark, layout, nslots, order, "lookup_batch")
        ids = benchmark(lay.vm.lookup_batch, gfns)
        assert np.array_equal(ids, lay.expected_ids(gfns))

    def test_searchsorted(self, benchmark, layout, nslots, order):
        lay, gfns = self.inputs(benchmark, layout, nslots, order, "lookup_batch")
        idx = benchmark(np.searchsorted, lay.bases, gfns, side="right")
        assert idx.shape == gfns.shape

    def test_translate(self, benchmark, layout, nslots, order):
        lay, gfns = self.inputs(benchmark, layout, nslots, order, "translate")
        t = benchmark(lay.vm.translate, gfns)
        hit = lay.expected_ids(gfns) >= 0
        assert np.all(t.pfn[hit] == lay.host.allones_pfn) and not t.writable.any()

    def test_translate_searchsorted(self, benchmark, layout, nslots, order):
        lay, gfns = self.inputs(benchmark, layout, nslots, order, "translate")
        assert benchmark(np.searchsorted, lay.bases, gfns, side="right").shape == gfns.shape


def python_lookup(bases, ends, gfn):
    """The pure-Python model of search_memslots: bisect, then the range check."""
    i = bisect.bisect_right(bases, gfn) - 1
    return i if i >= 0 and gfn < ends[i] else -1


@pytest.mark.parametrize("nslots", NSLOTS)
class TestLookupScalar:
    """The same loop over 10k Python ints, calling a different lookup each time."""

    def run(self, benchmark, layout, nslots, make_lookup):
        lay = layout(nslots)
        keys, lookup = lay.gfns["random"][:SCALAR_KEYS].tolist(), make_lookup(lay)
        benchmark.group = f"lookup_scalar/nslots={nslots}"
        info(benchmark, lay, "random", len(keys))
        return lay, keys, benchmark(lambda: [lookup(g) for g in keys])

    def test_core(self, benchmark, layout, nslots):
        lay, keys, ids = self.run(benchmark, layout, nslots, lambda lay: lay.vm.lookup)
        assert ids == lay.expected_ids(np.array(keys, dtype=np.uint64)).tolist()

    def test_bisect(self, benchmark, layout, nslots):
        def make(lay):
            return functools.partial(bisect.bisect_right, lay.bases_list)
        _, keys, found = self.run(benchmark, layout, nslots, make)
        assert len(found) == len(keys)

    def test_python_model(self, benchmark, layout, nslots):
        def make(lay):
            return functools.partial(python_lookup, lay.bases_list, lay.ends_list)
        lay, keys, ids = self.run(benchmark, layout, nslots, make)
        assert ids == lay.expected_ids(np.array(keys, dtype=np.uint64)).tolist()
