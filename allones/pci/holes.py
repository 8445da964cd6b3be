"""The VMM's hole layout: which parts of each ECAM window get memslots.

A hole is a function page nobody answers; present functions' pages must stay unbacked so
that their accesses exit to the VMM's emulation. The holes of a window are the complement
of the present pages, merged into maximal runs: one memslot per run, the fewest possible
(two runs can only merge if nothing present lies between them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..constants import KVM_USER_MEM_SLOTS, PAGE_SHIFT
from .ecam import _index
from .topology import Topology


class MemslotBudgetError(ValueError):
    """A hole layout needs more memslots than the VMM may use."""

    def __init__(self, needed: int, budget: int):
        super().__init__(f"the hole layout needs {needed} memslots, more than the budget of {budget} "
                         "(each run of holes between present functions needs its own slot)")
        self.needed, self.budget = needed, budget

    def __reduce__(self):          # picklable (a process pool sends errors back)
        return type(self), (self.needed, self.budget)


@dataclass(frozen=True)
class HoleRun:
    """A run of hole pages: one memslot's worth of guest-physical space."""

    segment: int
    gpa: int
    size: int

    @property
    def npages(self) -> int:
        """4 KiB pages in the run."""
        return self.size >> PAGE_SHIFT


@dataclass(frozen=True)
class HoleLayout:
    """Runs of holes over every window, with totals."""

    runs: tuple[HoleRun, ...]
    present_pages: int
    window_pages: int

    @property
    def nr_memslots(self) -> int:
        """Memslots the layout needs: one per run."""
        return len(self.runs)

    @property
    def hole_pages(self) -> int:
        """Pages of the windows that are holes."""
        return self.window_pages - self.present_pages

    def gpas(self) -> np.ndarray:
        """Start gpa of every run."""
        return np.array([r.gpa for r in self.runs], dtype=np.uint64)


def present_gfns(topology: Topology) -> np.ndarray:
    """Guest frame numbers of every present function's config page, sorted."""
    _check_topology(topology)
    return np.sort(np.concatenate([(seg.window_start >> PAGE_SHIFT) + present_pages(topology, seg.segment)
                                   for seg in topology.segments]).astype(np.uint64))


def present_pages(topology: Topology, segment: int) -> np.ndarray:
    """Sorted page indices (from the window start) of the segment's present functions."""
    seg = _check_topology(topology).segment(segment)
    return np.array(sorted(seg.page_index(f.bdf) for f in topology if f.bdf.segment == segment),
                    dtype=np.int64)


def hole_layout(topology: Topology, budget: int = KVM_USER_MEM_SLOTS) -> HoleLayout:
    """Maximal runs of holes in every segment; MemslotBudgetError past `budget` slots."""
    _check_topology(topology)
    budget = _index("budget", budget)
    if budget < 0:
        raise ValueError(f"budget {budget} is negative")
    runs, present, total = [], 0, 0
    for seg in topology.segments:
        pages = present_pages(topology, seg.segment)
        npages = seg.size >> PAGE_SHIFT
        starts = np.concatenate(([0], pages + 1))       # a run begins after each present page
        ends = np.concatenate((pages, [npages]))         # and ends at the next one
        for start, end in zip(starts.tolist(), ends.tolist()):
            if end > start:
                runs.append(HoleRun(seg.segment, seg.window_start + (start << PAGE_SHIFT),
                                    (end - start) << PAGE_SHIFT))
        present += len(pages)
        total += npages
    if len(runs) > budget:
        raise MemslotBudgetError(len(runs), budget)
    return HoleLayout(tuple(runs), present, total)


def _check_topology(topology) -> Topology:
    if not isinstance(topology, Topology):
        raise TypeError(f"topology must be a Topology, not {type(topology).__name__}")
    return topology
