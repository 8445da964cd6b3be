"""Hole layouts: the complement of the present pages in each ECAM window, in maximal runs."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allones.constants import KVM_USER_MEM_SLOTS
from allones.pci.builders import multi_segment, q35_default, random_topology, root_port_farm
from allones.pci.ecam import Bdf, Segment
from allones.pci.holes import MemslotBudgetError, hole_layout, present_pages
from allones.pci.topology import Q35_ECAM_BASE, Function, Topology

PAGE = 4096


def present_gfns(t):
    """Guest page numbers of every present function's config page."""
    return {t.segment(f.bdf.segment).gpa(f.bdf.bus, f.bdf.dev, f.bdf.fn) // PAGE for f in t}


def window_gfns(t):
    return {g for s in t.segments for g in range(s.window_start // PAGE, s.window_end // PAGE)}


def run_gfns(run):
    return range(run.gpa // PAGE, (run.gpa + run.size) // PAGE)


def count_maximal_runs(t):
    """Maximal runs of non-present pages, counted page by page in each window."""
    present, runs = present_gfns(t), 0
    for s in t.segments:
        in_run = False
        for g in range(s.window_start // PAGE, s.window_end // PAGE):
            if g not in present and not in_run:
                runs += 1
            in_run = g not in present
    return runs


def check_layout(t, layout):
    """Runs are sorted, disjoint, page aligned, inside their window, never over a present page,
    and together with the present pages cover every window exactly."""
    present, window = present_gfns(t), window_gfns(t)
    covered = set()
    for run in layout.runs:
        seg = t.segment(run.segment)
        assert run.gpa % PAGE == 0 and run.size % PAGE == 0 and run.size > 0
        assert run.npages == run.size // PAGE
        assert seg.window_start <= run.gpa and run.gpa + run.size <= seg.window_end
        pages = set(run_gfns(run))
        assert not pages & present
        assert not pages & covered
        covered |= pages
    starts = [(t.segments.index(t.segment(r.segment)), r.gpa) for r in layout.runs]
    assert starts == sorted(starts)
    assert covered | present == window and not covered & present
    assert layout.present_pages == len(present) == len(t)
    assert layout.window_pages == len(window)
    assert layout.hole_pages == len(covered)
    assert layout.nr_memslots == len(layout.runs) == count_maximal_runs(t)
    assert layout.gpas().tolist() == [r.gpa for r in layout.runs]


# -- q35 --------------------------------------------------------------------------------------

def test_q35_default_layout_covers_the_window_minus_12_pages():
    t = q35_default()
    layout = hole_layout(t)
    assert len(present_gfns(t)) == 12
    check_layout(t, layout)
    assert layout.window_pages == 65536 and layout.hole_pages == 65536 - 12


def test_q35_default_runs():
    """Between 00:00.0, 00:01.0, 00:02.0-3, 00:1f.0, 00:1f.2-3 and buses 1..3's device 0."""
    layout = hole_layout(q35_default())
    pages = [(r.gpa - Q35_ECAM_BASE) // PAGE for r in layout.runs]
    ends = [p + r.npages for p, r in zip(pages, layout.runs)]
    assert list(zip(pages, ends)) == [(1, 8), (9, 16), (20, 248), (249, 250), (252, 256), (257, 512),
                                      (513, 768), (769, 65536)]
    assert layout.nr_memslots == 8


def test_present_pages_are_sorted_page_indices():
    t = q35_default()
    assert present_pages(t, 0).tolist() == [0, 8, 16, 17, 18, 19, 248, 250, 251, 256, 512, 768]


def test_a_window_starting_above_bus_0():
    """Pages count from the window start (base + start_bus << 20), not from the MCFG base."""
    seg = Segment(0x80_0000_0000, segment=1, start_bus=0x10, end_bus=0x1F)
    t = root_port_farm(4, 0.5, seed=1, segment=seg)
    layout = hole_layout(t)
    check_layout(t, layout)
    assert layout.window_pages == 16 * 256
    assert layout.runs[0].gpa == seg.window_start + PAGE
    assert present_pages(t, 1).tolist()[0] == 0


def test_a_smaller_window():
    t = q35_default().with_window(0, 8)
    layout = hole_layout(t)
    check_layout(t, layout)
    assert layout.window_pages == 8 * 256 and layout.nr_memslots == 8


def test_empty_topology_is_one_run_per_window():
    t = q35_default().with_functions([])
    layout = hole_layout(t)
    assert [(r.gpa, r.size) for r in layout.runs] == [(Q35_ECAM_BASE, 256 << 20)]


def test_present_pages_at_both_ends_of_the_window():
    seg = Segment(Q35_ECAM_BASE, end_bus=0)
    fns = [Function(Bdf(0, 0, d, f), vendor=0x1234, device=1, class_code=0x020000) for d, f in ((0, 0), (31, 7))]
    t = Topology(fns, [seg])
    layout = hole_layout(t)
    check_layout(t, layout)
    assert [(r.gpa - Q35_ECAM_BASE) // PAGE for r in layout.runs] == [1] and layout.runs[0].npages == 254


# -- farms, several segments, random ----------------------------------------------------------

@pytest.mark.parametrize("n, fraction", [(8, 0.5), (32, 0.25), (100, 0.9)])
def test_farm_layouts(n, fraction):
    t = root_port_farm(n, fraction, seed=5)
    check_layout(t, hole_layout(t))


@pytest.mark.parametrize("nr_segments", [1, 2, 4])
def test_multi_segment_counts(nr_segments):
    t = multi_segment(nr_segments, nr_ports=8, empty_fraction=0.5)
    layout = hole_layout(t)
    check_layout(t, layout)
    assert layout.window_pages == nr_segments * 65536
    assert layout.present_pages == 12 + (nr_segments - 1) * (5 + 8 + 4)
    assert {r.segment for r in layout.runs} == set(range(nr_segments))
    per_segment = [sum(r.segment == s for r in layout.runs) for s in range(nr_segments)]
    assert per_segment[0] == hole_layout(q35_default()).nr_memslots


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_topology_layouts(seed):
    t = random_topology(seed)
    check_layout(t, hole_layout(t))


# -- the memslot budget -----------------------------------------------------------------------

def test_budget_exactly_met():
    assert hole_layout(q35_default(), budget=8).nr_memslots == 8


def test_budget_too_small():
    with pytest.raises(MemslotBudgetError) as info:
        hole_layout(q35_default(), budget=7)
    assert (info.value.needed, info.value.budget) == (8, 7)
    assert isinstance(info.value, ValueError)
    assert "8" in str(info.value) and "7" in str(info.value)


def test_default_budget_is_kvm_user_mem_slots():
    """KVM_USER_MEM_SLOTS = KVM_MEM_SLOTS_NUM - KVM_INTERNAL_MEM_SLOTS (32764 on x86)."""
    t = root_port_farm(232, 0.0)
    assert hole_layout(t).nr_memslots < KVM_USER_MEM_SLOTS
    needed = hole_layout(t).nr_memslots
    with pytest.raises(MemslotBudgetError) as info:
        hole_layout(t, budget=needed - 1)
    assert info.value.needed == needed
