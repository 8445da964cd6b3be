"""Differential test of the access engine (`VM.run`) against tests/run_reference.py.

The oracle is a plain Python model of the spec (docs/engine.md): it reuses
tests/reference.py for memslots and gfn_to_pfn, keeps mappings in dicts and derives table
pages from the leaves. Each batch runs on the oracle first (it reads the host's real memory
and keeps its writes to itself), then on the core; then everything observable must agree:
values, every counter, the exits in order (MMIO, and the emulated pci_hole reads, which
record_exits also lists), table pages per address space, the memory
the core wrote, walks of the interesting gfns, dirty logs, and the host's all-ones page.

Layouts are random over a small gfn window that crosses the 1 GiB and 512 GiB table
boundaries: all-ones slots (aligned or not to 2 MiB), READONLY slots over read-only and
writable memory, normal slots with and without LOG_DIRTY_PAGES, over read-only memory, slots
running past their mapping, and thp=True mappings with 2 MiB-aligned slots (2 MiB leaves),
with gaps between them, in both address spaces. Between runs: deletes, moves, flag changes,
munmaps and KVM_GET_DIRTY_LOG.
"""

import errno

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import allones
from allones.constants import PROT_READ, PROT_WRITE

import reference as R        # tests/reference.py (tests/ is on sys.path via conftest)
import run_reference as RR   # tests/run_reference.py

PAGE = R.PAGE_SIZE
LOG, RO, BIT2 = R.KVM_MEM_LOG_DIRTY_PAGES, R.KVM_MEM_READONLY, R.KVM_MEM_BIT2
COMBOS = [(p, a) for p in RR.PREFAULTS for a in RR.ALLONES_MAPS]
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- the core, as the spec names it ---

def make_host(pci_hole=False, materialize=True, phys_bits=48):
    kwargs = {"bit2": "pci_hole"} if pci_hole else {}
    kwargs["phys_bits"] = phys_bits
    if not materialize:
        kwargs["materialize"] = False
    return allones.Host(**kwargs)


def core_run(vm, gpas, sizes, is_write, values, as_id=0, on_mmio=None, mmio_gfns=None):
    kwargs = {}
    if as_id:
        kwargs["as_id"] = as_id
    if on_mmio is not None:
        kwargs["on_mmio"] = on_mmio
    if mmio_gfns is not None:
        kwargs["mmio_gfns"] = np.asarray(sorted(mmio_gfns), dtype=np.uint64)
    return vm.run(np.asarray(gpas, dtype=np.uint64), np.asarray(sizes, dtype=np.uint8),
                  np.asarray(is_write, dtype=bool), np.asarray(values, dtype=np.uint64),
                  record_exits=True, **kwargs)


def exits_of(res):
    return [(int(e["index"]), int(e["gpa"]), int(e["size"]), bool(e["is_write"]), int(e["value"]))
            for e in res.exits]


def stats_of(stats):
    assert set(stats) >= set(RR.STAT_NAMES)
    return {k: int(stats[k]) for k in RR.STAT_NAMES}


class Pair:
    """One core VM and its oracle on one host, driven together."""

    def __init__(self, host, prefault="on-demand", allones_map="4k"):
        self.host = host
        self.vm = allones.VM(host, prefault=prefault, allones_map=allones_map)
        self.ref = RR.RunReference(host, prefault, allones_map)
        self.probe = set()           # gfns whose walks are compared after every run

    def mmap(self, npages, fill=None, prot=PROT_READ | PROT_WRITE, thp=False):
        return self.ref.mmap(npages * PAGE, fill=fill, prot=prot, thp=thp)

    def munmap(self, hva):
        self.ref.munmap(hva)         # calls host.munmap

    def set_region(self, slot, flags, gpa, size, hva=0):
        rc, change = self.ref.set_user_memory_region(slot, flags, gpa, size, hva)
        if rc == 0:
            assert int(self.vm.set_user_memory_region(slot, flags, gpa, size, hva)) == change
        else:
            with pytest.raises(allones.KvmError) as ei:
                self.vm.set_user_memory_region(slot, flags, gpa, size, hva)
            assert ei.value.errno == -rc
        base = gpa >> 12
        self.probe.update({base - 1, base, base + 1, base + (size >> 12) - 1, base + (size >> 12)})
        return rc

    def dirty_log(self, slot):
        want = self.ref.get_dirty_log(slot)
        if isinstance(want, int):
            with pytest.raises(allones.KvmError) as exc:
                self.vm.get_dirty_log(slot)
            assert exc.value.errno == want
        else:
            got = self.vm.get_dirty_log(slot)
            assert got.dtype == np.bool_ and got.tolist() == want
        return want

    def run(self, accesses, as_id=0, on_mmio=None, mmio_gfns=None, check_values=True):
        """Run [(gpa, size, is_write, value)] on both; compare; return the oracle's result."""
        gpas = [a[0] for a in accesses]
        sizes = [a[1] for a in accesses]
        writes = [a[2] for a in accesses]
        values = [a[3] for a in accesses]
        self.probe.update(g >> 12 for g in gpas)
        want = self.ref.run(gpas, sizes, writes, values, as_id, on_mmio, mmio_gfns)
        if want.bad_index is not None:
            with pytest.raises(allones.BadAddress) as ei:
                core_run(self.vm, gpas, sizes, writes, values, as_id, on_mmio, mmio_gfns)
            assert ei.value.errno == errno.EFAULT
            assert ei.value.index == want.bad_index
            assert stats_of(ei.value.stats) == want.stats
        else:
            res = core_run(self.vm, gpas, sizes, writes, values, as_id, on_mmio, mmio_gfns)
            if check_values:
                assert [int(v) for v in res.values] == want.values
            assert stats_of(res.stats) == want.stats
            assert exits_of(res) == want.records     # MMIO exits, and emulated ones
        if check_values and self.ref.materialize:
            for pfn, data in self.ref.written_pages().items():
                m = self.ref._mapping_of_pfn(pfn)
                start = (pfn - m.base_pfn) * PAGE
                assert bytes(memoryview(m)[start:start + PAGE]) == data, f"page {pfn:#x}"
        self.check()
        return want

    def check(self):
        """Table pages, walks of the probed gfns, and the invariants."""
        host, vm, ref = self.host, self.vm, self.ref
        if host.allones_page is not None:
            assert bytes(memoryview(host.allones_page)) == b"\xff" * PAGE
        allones_pfns = {host.allones_pfn}
        if getattr(host, "allones_hugepage", None) is not None:
            base = host.allones_hugepage.base_pfn
            allones_pfns.update(range(base, base + 512))
        for as_id in range(2):
            assert tuple(vm.table_pages(as_id)) == ref.table_pages(as_id)
            assert tuple(vm.table_pages(as_id)) == tuple(vm.recount_table_pages(as_id))
            gfns = self.probe | ref.mapped_gfns(as_id)
            for gfn in sorted(g for g in gfns if 0 <= g < 1 << 36):
                got = vm.walk(gfn, as_id)
                if got is not None:
                    got = (int(got[0]), bool(got[1]), int(got[2]))
                    assert not (got[1] and got[0] in allones_pfns), f"writable all-ones {gfn:#x}"
                    assert ref.ref.slot_for(gfn, as_id) is not None, f"{gfn:#x} mapped, no slot"
                assert got == ref.walk(gfn, as_id), f"walk({gfn:#x}, {as_id})"
        if not host.pci_hole:
            # Made no later than first used (test_shared_allones_pages_made_on_first_use
            # pins "not before"); counted as frames once made.
            hp = host.allones_hugepage
            assert host.shared_pt_pages == 1 or not ref.used_shared_pt
            assert hp is not None or not ref.used_hugepage
            assert host.nr_frames == (sum(m.npages for m in host.mappings) + 1
                                      + (512 if hp is not None else 0))


# --- layouts ---

MEM_KINDS = ["rom", "ro_rw", "ram", "ram_log", "rohost", "rohost_log", "short",
             "thp", "thp_log", "thp_ro", "thp_rohost", "thp_short"]
PAST_MAPPING = ("short", "thp_short")     # slots that run past their mapping
# Windows crossing an L2 (1 GiB) and an L3 (512 GiB) table boundary, and the top of the 48 bits.
TOP = (1 << 36) - 4200
ANCHORS = [0, 0x40000 - 1024, 0x8000000 - 1536, TOP]


@st.composite
def layouts(draw, kinds=tuple(MEM_KINDS)):
    """[(kind, as_id, base_gfn, npages, fill, hva_shift)], disjoint per address space."""
    slots = []
    cur = draw(st.sampled_from(ANCHORS))
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["allones"] * 4 + list(kinds)))
        if kind == "allones":
            npages = draw(st.sampled_from([1100, 1, 512, 513, 2, 700, 1024, 5, 511, 1600]))
            align = draw(st.booleans())
        elif kind.startswith("thp"):
            npages = draw(st.sampled_from([1024, 512, 600] if kind != "thp_short" else [1024, 1100]))
            align = True
        else:
            npages = draw(st.integers(2 if kind == "short" else 1, 6))
            align = False
        base = cur + draw(st.sampled_from([0, 0, 1, 3, 40, 512]))
        if align:
            base = -(-base // 512) * 512 + draw(st.sampled_from([0, 0, 0, 1, 511]))
        shift = draw(st.sampled_from([0, 0, 0, 1])) if kind.startswith("thp") else 0
        fill = draw(st.sampled_from([None, 0, 0x5A, 0xFF, 0x11]))
        as_id = draw(st.sampled_from([0, 0, 0, 1]))
        slots.append((kind, as_id, base, npages, fill, shift))
        cur = base + npages
    return slots


def build(pair, layout):
    """Map memory and create the slots; slot i has id i. Returns [(hva of mapping or None)]."""
    maps = []
    for i, (kind, as_id, base, npages, fill, shift) in enumerate(layout):
        m, flags, hva = None, 0, 0
        if kind == "allones":
            flags = BIT2
        elif kind in ("rom", "rohost", "rohost_log"):
            m = pair.mmap(npages, fill=fill, prot=PROT_READ)
            flags = {"rom": RO, "rohost": 0, "rohost_log": LOG}[kind]
        elif kind in ("ro_rw", "ram", "ram_log"):
            m = pair.mmap(npages, fill=fill)
            flags = {"ro_rw": RO, "ram": 0, "ram_log": LOG}[kind]
        elif kind == "short":
            m = pair.mmap(npages - 1, fill=fill)
        elif kind == "thp_short":       # the second 2 MiB region only half inside the mapping
            m = pair.mmap(768 + shift, fill=fill, thp=True)
        else:
            prot = PROT_READ if kind == "thp_rohost" else PROT_READ | PROT_WRITE
            m = pair.mmap(npages + shift, fill=fill, prot=prot, thp=True)
            flags = {"thp": 0, "thp_log": LOG, "thp_ro": RO, "thp_rohost": 0}[kind]
        if m is not None:
            hva = m.hva + shift * PAGE
        pair.set_region(as_id << 16 | i, flags, base << 12, npages * PAGE, hva)   # past the top: EINVAL
        maps.append(None if m is None else m.hva)
    return maps


@st.composite
def streams(draw, layout, as_id=0, n_max=50):
    """[(gpa, size, is_write, value)]: gfns from a small pool in and around the slots
    (of address space as_id, when it has any)."""
    mine = [s for s in layout if s[1] == as_id] or layout
    pool = []
    for _ in range(draw(st.integers(1, 8))):
        where = draw(st.sampled_from(["slot"] * 5 + ["window"]))   # the simplest first
        if where == "slot":
            _, _, base, npages, _, _ = mine[draw(st.integers(0, len(mine) - 1))]
            rel = draw(st.sampled_from(["any", 0, "any", 1, npages - 1, npages, -1]))
            if rel == "any":
                rel = draw(st.integers(0, npages - 1))
            gfn = base + rel
        else:
            gfn = draw(st.sampled_from(ANCHORS)) + draw(st.integers(0, 3000))
        pool.append(min(max(gfn, 0), (1 << 36) - 1))
    out = []
    for _ in range(draw(st.integers(1, n_max))):
        gfn = draw(st.sampled_from(pool))
        size = draw(st.sampled_from([1, 2, 4, 8]))
        off = draw(st.one_of(st.integers(0, PAGE - size), st.sampled_from([0, PAGE - size])))
        write = draw(st.integers(0, 9)) >= 6
        value = draw(st.one_of(st.integers(0, (1 << (8 * size)) - 1),    # wider: stored truncated;
                               st.integers(0, (1 << 64) - 1)))           # reads ignore theirs
        out.append(((gfn << 12) | off, size, write, value))
    return out


OPS = st.tuples(st.sampled_from(["delete", "move", "flags", "munmap", "dirty", "dirty"]),
                st.integers(0, 4), st.sampled_from([-512, -3, 1, 5, 512, 4096]))


def apply_op(pair, layout, maps, op):
    kind, i, delta = op
    if i >= len(layout):
        return
    _, as_id, base, npages, _, _ = layout[i]
    slot = as_id << 16 | i
    cur = pair.ref.ref.spaces[as_id].get(i)
    if kind == "delete":
        pair.set_region(slot, 0, base << 12, 0, 0)
    elif kind == "move":
        if cur is not None and cur.base_gfn + delta >= 0:
            pair.set_region(slot, cur.flags, (cur.base_gfn + delta) << 12, cur.npages * PAGE,
                            cur.userspace_addr)
    elif kind == "flags":
        if cur is not None:
            pair.set_region(slot, cur.flags ^ LOG, cur.base_gfn << 12, cur.npages * PAGE,
                            cur.userspace_addr)
    elif kind == "munmap":
        if maps[i] is not None:
            pair.munmap(maps[i])
            maps[i] = None
    else:
        pair.dirty_log(slot)


def scenario(draw, pair, kinds=tuple(MEM_KINDS)):
    layout = draw(layouts(kinds))
    maps = build(pair, layout)
    pair.check()
    for r in range(draw(st.integers(1, 3))):
        if r:
            for op in draw(st.lists(OPS, max_size=3)):
                apply_op(pair, layout, maps, op)
            pair.check()
        used = sorted({s[1] for s in layout})
        as_id = draw(st.sampled_from(used * 3 + [1 - used[0]]))
        pair.run(draw(streams(layout, as_id)), as_id=as_id)
    for i, (_, as_id, *_rest) in enumerate(layout):
        pair.dirty_log(as_id << 16 | i)
    return layout


@pytest.mark.parametrize("prefault,allones_map", COMBOS)
@SETTINGS
@given(data=st.data())
def test_random_layouts_and_streams(prefault, allones_map, data):
    scenario(data.draw, Pair(make_host(), prefault, allones_map))


@pytest.mark.parametrize("prefault", RR.PREFAULTS)
@SETTINGS
@given(data=st.data())
def test_random_layouts_and_streams_pci_hole(prefault, data):
    scenario(data.draw, Pair(make_host(pci_hole=True), prefault, "4k"))   # others need the 0xff page


def mmio_value(gpa, size, is_write, value):
    """A pure on_mmio answer (the oracle and the core both call it); None: all-ones."""
    if gpa & 0x10:
        return None
    return (gpa * 2654435761 + size) & ((1 << (8 * size)) - 1)


@SETTINGS
@given(data=st.data(), pci_hole=st.booleans())
def test_random_on_mmio_with_mmio_gfns(data, pci_hole):
    """The VMM's handler is called for exactly the MMIO exits at mmio_gfns (all of them
    without mmio_gfns), with the access's fields, in order; its answers are the values."""
    pair = Pair(make_host(pci_hole=pci_hole), "on-demand", "4k")
    layout = data.draw(layouts())
    build(pair, layout)
    stream = data.draw(streams(layout))
    gfns = sorted({gpa >> 12 for gpa, *_ in stream})
    mmio_gfns = data.draw(st.one_of(st.none(), st.sets(st.sampled_from(gfns))))
    calls = []

    def on_mmio(gpa, size, is_write, value):
        calls.append((int(gpa), int(size), bool(is_write), int(value)))
        return mmio_value(gpa, size, is_write, value)

    want = pair.run(stream, on_mmio=on_mmio, mmio_gfns=mmio_gfns)
    half = len(calls) // 2                  # the oracle's calls, then the core's
    assert calls[:half] == calls[half:]
    assert calls[:half] == [(gpa, size, w, stream[k][3]) for k, gpa, size, w, _ in want.exits
                            if mmio_gfns is None or gpa >> 12 in mmio_gfns]


@SETTINGS
@given(data=st.data(), prefault=st.sampled_from(RR.PREFAULTS),
       allones_map=st.sampled_from(RR.ALLONES_MAPS))
def test_accounting_host_counts_as_a_real_one(data, prefault, allones_map):
    """Host(materialize=False): every counter, exit and table page as with materialize=True
    (both checked against the oracle, values too: an accounting host reads fill bytes)."""
    kinds = tuple(k for k in MEM_KINDS if k not in PAST_MAPPING)   # what lies past: hvas
    layout = data.draw(layouts(kinds))
    runs = [data.draw(streams(layout)) for _ in range(data.draw(st.integers(1, 2)))]
    results = []
    for materialize in (True, False):
        pair = Pair(make_host(materialize=materialize), prefault, allones_map)
        build(pair, layout)
        got = []
        for stream in runs:
            want = pair.run(stream)
            got.append((want.bad_index, want.stats, want.records,
                        pair.ref.table_pages(0), pair.ref.table_pages(1)))
        results.append(got)
    assert results[0] == results[1]


# --- hand-checked cases (they pin the oracle to the spec as much as the core) ---

def single(pair, gpa, size=4, write=False, value=0, as_id=0):
    return pair.run([(gpa, size, write, value)], as_id=as_id)


@pytest.mark.parametrize("allones_map,entries,l1", [("4k", 1100, 3), ("shared-pt", 2 + 76, 1),
                                                    ("hugepage", 2 + 76, 1)])
def test_whole_slot_prefault_counts_by_hand(allones_map, entries, l1):
    """1100 all-ones pages from gfn 0x3fc00: regions 0x1fe..0x200, the 1 GiB boundary at
    0x40000 in the middle (two L2 pages). Regions 0x1fe and 0x1ff lie inside the slot; the
    slot ends 76 pages into 0x200. 4k: 3 L1 + 2 L2 + 1 L3 = 6 pages, 2 short of one top-up;
    level-2 entries: 1 + 2 + 1 = 4 pages, no shortfall."""
    pair = Pair(make_host(), "whole-slot", allones_map)
    pair.set_region(0, BIT2, 0x3fc00 << 12, 1100 * PAGE)
    want = single(pair, (0x3fc00 + 600) << 12)
    tables = l1 + 2 + 1
    assert want.stats["prefaulted"] == entries - 1
    assert want.stats["table_pages_allocated"] == tables
    assert want.stats["rfc_topup_shortfall"] == tables - 4
    assert want.stats["mapped_4k"] + want.stats["mapped_2m"] == entries
    assert pair.ref.table_pages(0) == (l1, 2, 1, 1)
    again = single(pair, (0x3fc00 + 1099) << 12, size=8)
    assert again.values == [2**64 - 1] and again.stats["tlb_hits"] == 1


def test_on_demand_allones_by_hand():
    pair = Pair(make_host(), "on-demand", "hugepage")
    pair.set_region(0, BIT2, 0x200 << 12, 1024 * PAGE)       # two whole regions
    pair.set_region(1, BIT2, 0x600 << 12, 3 * PAGE)
    w = pair.run([(0x200 << 12, 4, False, 0), (0x3ff << 12, 4, False, 0),
                  (0x601 << 12, 2, False, 0), (0x201 << 12, 1, True, 7)])
    assert w.values == [0xFFFFFFFF, 0xFFFFFFFF, 0xFFFF, 7]
    assert w.stats["mapped_2m"] == 1 and w.stats["mapped_4k"] == 1 and w.stats["tlb_hits"] == 1
    assert w.stats["exits_mmio"] == 1 and w.exits == [(3, 0x201 << 12, 1, True, 7)]
    assert w.stats["memslot_lookups"] == 3 and w.stats["memslot_cache_hits"] == 0
    assert pair.host.allones_hugepage is not None
    assert pair.vm.walk(0x2ff, 0) == (pair.host.allones_hugepage.base_pfn + 0xff, False, 2)


@pytest.mark.parametrize("allones_map", ["shared-pt", "hugepage"])
def test_shared_allones_pages_made_on_first_use(allones_map):
    """Spec 3: the host's shared level-1 table / 2 MiB all-ones page are allocated once per
    host, on first use (and then counted: host.shared_pt_pages, host.nr_frames)."""
    pair = Pair(make_host(), "on-demand", allones_map)
    pair.set_region(0, BIT2, 0x200 << 12, 512 * PAGE)
    pair.set_region(1, BIT2, 0x800 << 12, 3 * PAGE)
    frames = pair.host.nr_frames
    pair.run([(0x801 << 12, 4, False, 0)])                     # a 4 KiB leaf: no use yet
    assert (pair.host.shared_pt_pages, pair.host.allones_hugepage) == (0, None)
    assert pair.host.nr_frames == frames
    pair.run([(0x201 << 12, 4, False, 0)])                     # first level-2 entry
    if allones_map == "shared-pt":
        assert pair.host.shared_pt_pages == 1 and pair.host.nr_frames == frames
    else:
        assert pair.host.allones_hugepage is not None and pair.host.nr_frames == frames + 512
    allones.VM(pair.host, allones_map=allones_map)             # once per host
    pair.run([(0x202 << 12, 4, False, 0)])
    assert pair.host.shared_pt_pages in (0, 1)


def test_thp_slot_maps_2m_and_dirty_log_forces_4k():
    pair = Pair(make_host(), "on-demand", "4k")
    m = pair.mmap(1024, fill=0x22, thp=True)
    pair.set_region(0, 0, 0x400 << 12, m.size, m.hva)
    w = pair.run([(0x401 << 12, 8, False, 0), (0x7ff << 12 | 8, 4, True, 0xDEADBEEF),
                  (0x7ff << 12 | 8, 4, False, 0)])
    assert w.values == [0x2222222222222222, 0xDEADBEEF, 0xDEADBEEF]
    assert w.stats["mapped_2m"] == 2 and pair.ref.table_pages(0) == (0, 1, 1, 1)
    assert pair.vm.walk(0x7ff, 0) == (m.base_pfn + 0x3ff, True, 2)
    pair.set_region(0, LOG, 0x400 << 12, m.size, m.hva)      # FLAGS_ONLY: zapped
    assert pair.vm.walk(0x401, 0) is None and tuple(pair.vm.table_pages(0)) == (0, 0, 0, 1)
    w = pair.run([(0x401 << 12, 8, False, 0)])
    assert w.stats["mapped_4k"] == 1 and w.stats["mapped_2m"] == 0
    assert pair.dirty_log(0)[1]                               # a writable leaf: dirty


def test_dirty_log_by_hand():
    pair = Pair(make_host(), "on-demand", "4k")
    ram = pair.mmap(8, fill=0)
    pair.set_region(3, LOG, 0x10 << 12, ram.size, ram.hva)
    pair.set_region(4, 0, 0x20 << 12, ram.size, ram.hva)
    assert pair.dirty_log(3) == [False] * 8
    pair.dirty_log(4)                                         # no LOG_DIRTY_PAGES: EINVAL
    pair.dirty_log(5)                                         # no slot: EINVAL
    pair.dirty_log(1 << 16 | 3)                               # not in address space 1
    w = pair.run([(0x12 << 12, 4, True, 5), (0x12 << 12, 4, True, 6), (0x15 << 12, 1, False, 0)])
    assert w.stats["faults"] == 2 and w.stats["tlb_hits"] == 1
    assert pair.dirty_log(3) == [False, False, True, False, False, True, False, False]
    assert not pair.vm.walk(0x12, 0)[1]                       # write-protected
    w = pair.run([(0x12 << 12, 4, False, 0), (0x12 << 12, 4, True, 7)])
    assert w.values == [6, 7] and w.stats["faults"] == 1 and w.stats["mapped_4k"] == 1
    assert pair.dirty_log(3) == [False, False, True] + [False] * 5
    assert pair.dirty_log(3) == [False] * 8


def test_bad_address_stops_the_run():
    pair = Pair(make_host(), "on-demand", "4k")
    ram = pair.mmap(4, fill=0x33)
    rom = pair.mmap(2, fill=0x44, prot=PROT_READ)
    pair.set_region(0, 0, 0, ram.size, ram.hva)
    pair.set_region(1, 0, 0x10 << 12, rom.size, rom.hva)      # writable slot, read-only memory
    pair.set_region(2, BIT2, 0x20 << 12, PAGE)
    stream = [(0x0, 4, True, 1), (0x10 << 12, 2, False, 0), (0x20 << 12, 4, True, 9),
              (0x11 << 12, 4, True, 2), (0x1 << 12, 4, False, 0)]
    want = pair.run(stream)
    assert want.bad_index == 3
    assert want.stats["accesses"] == 3 and want.stats["faults"] == 4
    assert pair.vm.walk(0, 0)[1] and not pair.vm.walk(0x10, 0)[1]
    assert bytes(memoryview(ram)[:4]) == b"\x01\x00\x00\x00"
    pair.munmap(ram.hva)                                      # the mapping goes: zapped
    assert pair.vm.walk(0, 0) is None
    assert pair.run([(0x20 << 12, 4, False, 0), (0x8, 8, False, 0)]).bad_index == 1


def test_munmap_zaps_every_vm_of_the_host():
    """host.munmap: in every VM of the host, the gfns backed by the mapping lose their
    mappings (2 MiB leaves whole); other mappings stay."""
    host = make_host()
    pairs = [Pair(host, "on-demand", "4k"), Pair(host, "whole-slot", "hugepage")]
    thp = pairs[0].mmap(1024, fill=0x31, thp=True)
    ram = pairs[0].mmap(4, fill=0x32)
    pairs[1].ref.thp.update(pairs[0].ref.thp)
    pairs[1].ref.fill.update(pairs[0].ref.fill)
    for i, pair in enumerate(pairs):
        pair.set_region(0, 0, 0x200 << 12, thp.size, thp.hva)
        pair.set_region(1, 0, (0x800 + i) << 12, ram.size, ram.hva)
        pair.set_region(2, BIT2, 0x1000 << 12, 600 * PAGE)
        pair.run([(0x300 << 12, 8, False, 0), (0x500 << 12, 1, True, 1),
                  ((0x801 + i) << 12, 2, False, 0), (0x1001 << 12, 4, False, 0)])
    pairs[0].ref.munmap(thp.hva, others=[pairs[1].ref])
    for pair in pairs:
        pair.check()
        assert pair.vm.walk(0x300, 0) is None and pair.vm.walk(0x500, 0) is None
        assert pair.vm.walk(0x1001, 0) is not None
    assert pairs[0].vm.walk(0x801, 0) is not None and pairs[1].vm.walk(0x802, 0) is not None
    assert pairs[1].run([(0x3ff << 12, 1, False, 0)]).bad_index == 0


def test_top_of_the_48_bit_table():
    """The last gfn of a 48-bit table (all indexes 511), and the first gpa past it."""
    pair = Pair(make_host(phys_bits=48), "on-demand", "hugepage")
    top = (1 << 36) - 1
    ram = pair.mmap(1, fill=0x66)
    pair.set_region(0, 0, top << 12, PAGE, ram.hva)
    pair.set_region(1, BIT2, (top - 1023) << 12, 1023 * PAGE)
    w = pair.run([((top << 12) + 4088, 8, False, 0), ((top - 1) << 12, 2, False, 0),
                  ((top - 600) << 12, 2, False, 0)])
    assert w.values == [0x6666666666666666, 0xFFFF, 0xFFFF]
    assert pair.ref.table_pages(0) == (1, 1, 1, 1) and w.stats["mapped_2m"] == 1
    with pytest.raises(ValueError):
        core_run(pair.vm, [1 << 48], [1], [False], [0])


def test_scalar_read_and_write():
    pair = Pair(make_host(), "on-demand", "shared-pt")
    ram = pair.mmap(2, fill=0)
    pair.set_region(0, 0, 0, ram.size, ram.hva)
    pair.set_region(1, BIT2, 0x200 << 12, 512 * PAGE)
    pair.vm.write(0x10, 0x1234, size=2)
    assert pair.vm.read(0x10, size=4) == 0x1234
    assert pair.vm.read(0x2000A0, size=1) == 0xFF
    assert pair.vm.walk(0x2FF, 0) == (pair.host.allones_pfn, False, 1)   # the shared table's leaf
    assert pair.host.shared_pt_pages == 1
    assert pair.vm.read(0x1000 << 12, size=8) == 2**64 - 1     # no slot: the hole answer
    rom = pair.mmap(1, fill=0x77, prot=PROT_READ)
    pair.set_region(2, 0, 0x10 << 12, PAGE, rom.hva)
    assert pair.vm.read(0x10 << 12, size=2) == 0x7777
    with pytest.raises(allones.BadAddress):
        pair.vm.write(0x10 << 12, 1)                           # read-only memory: EFAULT


BAD_BATCHES = {
    "size3": ([0x2000], [3], [True], [1]),
    "size0": ([0x2000], [0], [False], [0]),
    "size16": ([0x2000], [16], [False], [0]),
    "cross": ([(1 << 12) - 4], [8], [True], [1]),
    "cross2": ([(1 << 12) - 1], [2], [False], [0]),
    "gpa48": ([1 << 48], [1], [False], [0]),
    "lengths_values": ([0x2000], [4], [False], [0, 0]),
    "lengths_sizes": ([0x2000], [4, 4], [False], [0]),
}


@pytest.mark.parametrize("bad", sorted(BAD_BATCHES))
def test_rejected_batches_change_nothing(bad):
    """A bad access after good ones: ValueError, and not even the good ones ran."""
    pair = Pair(make_host(), "whole-slot", "hugepage")
    ram = pair.mmap(4, fill=0x10)
    pair.set_region(0, LOG, 0, ram.size, ram.hva)
    pair.set_region(1, BIT2, 0x400 << 12, 1024 * PAGE)
    pair.set_region(2, BIT2, 0x1000 << 12, PAGE)
    good = [(0x1000 << 12, 4, False, 0), (0x0, 4, True, 9), (0x400 << 12, 8, False, 0)]
    extra = BAD_BATCHES[bad]
    gpas, sizes, writes, values = ([a[i] for a in good] + extra[i] for i in range(4))
    with pytest.raises(ValueError):
        pair.ref.validate(gpas, sizes, writes, values)
    with pytest.raises(ValueError):
        core_run(pair.vm, gpas, sizes, writes, values)
    assert bytes(memoryview(ram)) == b"\x10" * ram.size
    assert tuple(pair.vm.table_pages(0)) == (0, 0, 0, 1)
    assert pair.vm.walk(0x1000, 0) is None and pair.vm.walk(0, 0) is None
    assert pair.dirty_log(0) == [False] * 4
    pair.run(good)        # counters, memslot cache included, as if the batch never came
    pair.run(good)


def test_invalid_arguments_to_run():
    pair = Pair(make_host(), "on-demand", "4k")
    with pytest.raises((ValueError, allones.InvalidArgument)):
        core_run(pair.vm, [0], [4], [False], [0], as_id=2)
    res = core_run(pair.vm, [], [], [], [])
    assert stats_of(res.stats) == dict.fromkeys(RR.STAT_NAMES, 0) and len(res.exits) == 0
