"""Shared inputs for the benchmarks: seeded memslot layouts and gfn streams.

A layout is `nslots` all-ones slots with gaps between them (the shape of the holes between
present functions in an ECAM window, at larger scale), spanning about 1.25M pages whatever
the slot count. Its gfn streams have 1M keys each: `random`, uniform over the span (gaps
included, so some lookups miss), and `sequential`, every gfn of the span's first 1M pages
in ascending order, as a scan of config space walks it.
"""

import numpy as np
import pytest

import allones
from allones.constants import KVM_MEM_ALLONES, PAGE_SHIFT

NKEYS = 1_000_000
SPAN = 1_250_000  # pages the slots and gaps cover, about
SEED = 20200514   # the RFC's date


class Layout:
    """A VM with `nslots` memslots and the plain arrays the baselines search."""

    def __init__(self, nslots: int, seed: int = SEED):
        rng = np.random.default_rng(seed)
        mean = SPAN // nslots
        npages = rng.integers(1, 2 * mean * 4 // 5, size=nslots, dtype=np.uint64)
        gaps = rng.integers(0, 2 * mean // 5, size=nslots, dtype=np.uint64)
        starts = gaps + np.concatenate(([0], npages[:-1])).astype(np.uint64)
        self.bases = np.cumsum(starts) + 0xB0000
        self.ends = self.bases + npages
        self.ids = np.arange(nslots, dtype=np.int32)
        self.host = allones.Host()
        self.vm = allones.VM(self.host)
        for i in range(nslots):
            self.vm.set_user_memory_region(i, KVM_MEM_ALLONES, int(self.bases[i]) << PAGE_SHIFT,
                                           int(npages[i]) << PAGE_SHIFT, 0)
        self.bases_list = self.bases.tolist()
        self.ends_list = self.ends.tolist()
        first, last = int(self.bases[0]), int(self.ends[-1])
        assert last - first >= NKEYS, "the layout must span at least NKEYS pages"
        self.gfns = {
            "random": rng.integers(first, last, size=NKEYS, dtype=np.uint64),
            "sequential": np.arange(first, first + NKEYS, dtype=np.uint64),
        }

    def expected_ids(self, gfns):
        """Slot ids by numpy alone (the oracle the benchmarks assert against)."""
        i = np.searchsorted(self.bases, gfns, side="right") - 1
        hit = (i >= 0) & (gfns < self.ends[np.maximum(i, 0)])
        return np.where(hit, self.ids[np.maximum(i, 0)], -1).astype(np.int32)


_layouts = {}


@pytest.fixture(scope="session")
def layout():
    """layout(nslots) -> a Layout, built once per session and size."""
    def get(nslots):
        if nslots not in _layouts:
            _layouts[nslots] = Layout(nslots)
        return _layouts[nslots]
    return get
