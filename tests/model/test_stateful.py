"""Differential oracle test: allones.VM against the pure-Python reference (tests/reference.py).

A hypothesis state machine drives one `allones.VM` on one `allones.Host` and a
`ReferenceVM` side by side with the same KVM_SET_USER_MEMORY_REGION calls (well-formed
creates, deletes, moves and flag changes over a few slot ids and a small gfn range, so
overlaps are frequent, plus raw calls with mostly-invalid fields) and the same lookups and
translations. After every call the two must agree on success/errno and on the change
made; after every step their memslots must be equal, sorted and disjoint, and the host's
shared all-ones page must still be all 0xff. An error must change nothing: the very
same memslots generation objects stay published.

Kernel: Linux v6.6 with the KVM_MEM_ALLONES RFC (or its v2 KVM_MEM_PCI_HOLE): see the
rules in tests/reference.py. Runs for an "allones" and a "pci_hole" host, and for a host
with a small MAXPHYADDR (phys_bits=36).
"""

import errno

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import allones
from allones.constants import PROT_READ, PROT_WRITE

import reference as R  # tests/reference.py: tests/conftest.py puts tests/ on sys.path

PAGE = R.PAGE_SIZE
LOG, RO, BIT2 = R.KVM_MEM_LOG_DIRTY_PAGES, R.KVM_MEM_READONLY, R.KVM_MEM_BIT2

EXC_FOR_ERRNO = {errno.EINVAL: allones.InvalidArgument, errno.EEXIST: allones.SlotOverlap,
                 errno.ENOMEM: allones.NoMemory}

# --- strategies ---
# A gfn pick is resolved against the host in the machine, so one strategy serves every
# phys_bits: ("lo", g) is g itself (a small range: overlaps are frequent);
# ("top", k) is max_gfn - k (k < 0 is past the max gfn).
LOW_GFNS = 24
gfn_picks = st.one_of(
    st.tuples(st.just("lo"), st.integers(0, LOW_GFNS)),
    st.tuples(st.just("lo"), st.integers(0, LOW_GFNS)),
    st.tuples(st.just("top"), st.integers(-3, 9)),
)
# Lookups also probe far gfns that no gpa can reach and gfns relative to existing slots.
slot_relative = st.tuples(st.just("slot"), st.integers(0, 11), st.integers(-1, 9))
lookup_gfn_picks = st.one_of(
    gfn_picks,
    slot_relative,
    slot_relative,
    slot_relative,
    st.tuples(st.just("abs"), st.sampled_from([(1 << 52) - 1, 1 << 52, (1 << 63) - 1, (1 << 64) - 1])),
)

slot_ids = st.sampled_from([0, 1, 2, 3, 4, 5] * 3 + [R.KVM_USER_MEM_SLOTS])
as_ids = st.sampled_from([0, 0, 0, 0, 1, 1, 1, 2, 0x8000])
good_flags = st.sampled_from([0, 0, LOG, RO, LOG | RO, BIT2, BIT2])
all_low_flags = st.integers(0, 7)
flag_toggles = st.one_of(st.just(LOG), st.just(LOG), st.integers(0, 7))   # LOG alone: FLAGS_ONLY
raw_flags = st.one_of(
    all_low_flags,
    all_low_flags,
    st.sampled_from([0, LOG, RO, LOG | RO]),
    st.sampled_from([1 << k for k in range(32)]),
    st.integers(0, (1 << 32) - 1),
)
# Well-formed hvas (for creates) by name; resolved in the machine.
GOOD_HVAS = ["zero", "ram_a", "ram_a_mid", "ram_a_tail", "ram_b", "rom", "gone"]
RAW_HVAS = GOOD_HVAS + ["unaligned", "one", "task_size_max", "below_half", "half", "top",
                        "edge_ok", "edge_fail", "wrap"]
MAX_BYTES = R.KVM_MEM_MAX_NR_PAGES * PAGE
raw_sizes = st.one_of(
    st.integers(0, 8).map(lambda n: n * PAGE),
    st.sampled_from([1, 0x800, PAGE - 1, PAGE + 1, MAX_BYTES, MAX_BYTES + PAGE, 1 << 52, 1 << 63,
                     (1 << 64) - PAGE, (1 << 64) - 1]),
)
raw_gpas = st.one_of(
    st.tuples(st.just("gfn"), gfn_picks, st.just(0)),
    st.tuples(st.just("gfn"), gfn_picks, st.sampled_from([1, 0x800, PAGE - 1])),
    st.tuples(st.just("abs"), st.sampled_from([(1 << 64) - PAGE, (1 << 64) - 2 * PAGE, (1 << 64) - 1,
                                               1 << 63, (1 << 52) - PAGE]), st.just(0)),
)


class MemslotMachine(RuleBasedStateMachine):
    """allones.VM and ReferenceVM, driven with the same calls."""

    BIT2_MEANING = "allones"
    PHYS_BITS = 46

    def __init__(self):
        super().__init__()
        self.host = allones.Host(bit2=self.BIT2_MEANING, phys_bits=self.PHYS_BITS)
        host = self.host
        self.ram_a = host.mmap(16 * PAGE)                        # writable, untouched
        self.ram_b = host.mmap(8 * PAGE, fill=0x5A)              # writable, touched
        self.rom = host.mmap(4 * PAGE, fill=0xA5, prot=PROT_READ)  # read-only
        gone = host.mmap(4 * PAGE, prot=PROT_READ | PROT_WRITE)
        self.gone_hva = gone.hva
        host.munmap(gone.hva)                                     # slots there: EFAULT
        del gone
        self.vm = allones.VM(host)
        self.ref = R.ReferenceVM(host)
        self.max_gfn = (1 << (self.PHYS_BITS - 12)) - 1

    # --- resolving picks ---

    def gfn(self, pick, as_id=0):
        kind = pick[0]
        if kind == "lo":
            return pick[1]
        if kind == "top":
            return self.max_gfn - pick[1]
        if kind == "abs":
            return pick[1]
        # ("slot", i, off): relative to the i-th slot of the address space (or, if it has
        # none, of the other one)
        slots = self.ref.slots(as_id) or self.ref.slots(1 - as_id if as_id in (0, 1) else 0)
        if not slots:
            return max(pick[2], 0)
        s = slots[pick[1] % len(slots)]
        return max(s.base_gfn + pick[2], 0)

    def hva(self, name, size=0):
        if name == "zero":
            return 0
        if name == "ram_a":
            return self.ram_a.hva
        if name == "ram_a_mid":
            return self.ram_a.hva + 8 * PAGE
        if name == "ram_a_tail":
            return self.ram_a.hva + 14 * PAGE          # a longer slot runs off the mapping
        if name == "ram_b":
            return self.ram_b.hva
        if name == "rom":
            return self.rom.hva
        if name == "gone":
            return self.gone_hva
        if name == "unaligned":
            return self.ram_a.hva + 0x800
        if name == "one":
            return 1
        if name == "task_size_max":
            return (1 << 47) - PAGE
        if name == "below_half":
            return (1 << 63) - PAGE
        if name == "half":
            return 1 << 63
        if name == "top":
            return (1 << 64) - PAGE
        # access_ok edges for this size (page-aligned, and kept within a __u64)
        base = ((1 << 63) - size) & ~(PAGE - 1) & ((1 << 64) - 1)
        if name == "edge_ok":
            return max(base - PAGE, 0)
        if name == "edge_fail":
            return base
        assert name == "wrap"
        return ((1 << 64) - size) & ((1 << 64) - PAGE)

    def existing(self, data):
        """(as_id, Slot) of a slot the reference holds."""
        pairs = [(a, s) for a in (0, 1) for s in self.ref.slots(a)]
        return data.draw(st.sampled_from(pairs), label="existing slot")

    def has_slots(self):
        return any(self.ref.slots(a) for a in (0, 1))

    # --- the one call both sides get ---

    def set(self, slot, flags, gpa, size, hva):
        before = [self.vm.memslots(a) for a in (0, 1)]
        gens = [m.generation for m in before]
        want_rc, want_change = self.ref.set_user_memory_region(slot, flags, gpa, size, hva)
        call = f"set_user_memory_region({slot:#x}, {flags:#x}, {gpa:#x}, {size:#x}, {hva:#x})"
        try:
            got = self.vm.set_user_memory_region(slot, flags, gpa, size, hva)
        except allones.KvmError as exc:
            assert want_rc != 0, f"{call}: core refused with errno {exc.errno}, reference made change {want_change}"
            assert -exc.errno == want_rc, f"{call}: core errno {exc.errno}, reference {-want_rc}"
            assert type(exc) is EXC_FOR_ERRNO[exc.errno]
            for a in (0, 1):
                assert self.vm.memslots(a) is before[a], f"{call}: failed, but as {a} has a new generation"
                assert self.vm.memslots(a).generation == gens[a]
            return
        assert want_rc == 0, f"{call}: core made change {got!r}, reference errno {-want_rc}"
        assert int(got) == want_change, f"{call}: core change {got!r}, reference {want_change}"
        changed = (slot >> 16) if want_change != R.KVM_MR_NONE else None
        for a in (0, 1):
            now = self.vm.memslots(a)
            if a == changed:
                assert now is not before[a] and now.generation > gens[a], f"{call}: no new generation"
            else:
                assert now is before[a] and now.generation == gens[a], f"{call}: as {a} changed"

    # --- rules: well-formed updates ---

    @rule(as_id=as_ids, id_=slot_ids, gfn=gfn_picks, npages=st.integers(1, 8), flags=good_flags,
          hva=st.sampled_from(GOOD_HVAS), bit2_hva_zero=st.booleans())
    def create(self, as_id, id_, gfn, npages, flags, hva, bit2_hva_zero):
        addr = 0 if flags & BIT2 and bit2_hva_zero else self.hva(hva)
        self.set(as_id << 16 | id_, flags, self.gfn(gfn) << 12, npages * PAGE, addr)

    @precondition(has_slots)
    @rule(data=st.data(), gfn=gfn_picks)
    def move(self, data, gfn):
        a, s = self.existing(data)
        self.set(a << 16 | s.id, s.flags, self.gfn(gfn) << 12, s.npages * PAGE, s.userspace_addr)

    @precondition(has_slots)
    @rule(data=st.data(), toggle=flag_toggles, move=st.booleans(), gfn=gfn_picks)
    def change_flags(self, data, toggle, move, gfn):
        a, s = self.existing(data)
        base = self.gfn(gfn) if move else s.base_gfn
        self.set(a << 16 | s.id, s.flags ^ toggle, base << 12, s.npages * PAGE, s.userspace_addr)

    @precondition(has_slots)
    @rule(data=st.data(), dpages=st.integers(-2, 2), hva=st.sampled_from(GOOD_HVAS + [None]))
    def modify_fixed_fields(self, data, dpages, hva):
        """A new size or hva for an existing slot: EINVAL unless both are unchanged."""
        a, s = self.existing(data)
        npages = max(s.npages + dpages, 1)
        addr = s.userspace_addr if hva is None else self.hva(hva)
        self.set(a << 16 | s.id, s.flags, s.base_gfn << 12, npages * PAGE, addr)

    @precondition(has_slots)
    @rule(data=st.data())
    def delete_existing(self, data):
        a, s = self.existing(data)
        self.set(a << 16 | s.id, s.flags, s.base_gfn << 12, 0, s.userspace_addr)

    @rule(as_id=as_ids, id_=slot_ids, flags=all_low_flags, gfn=gfn_picks, hva=st.sampled_from(["zero", "ram_a"]))
    def delete(self, as_id, id_, flags, gfn, hva):
        self.set(as_id << 16 | id_, flags, self.gfn(gfn) << 12, 0, self.hva(hva))

    # --- rules: raw calls, mostly invalid ---

    @rule(as_id=st.sampled_from([0, 0, 1, 2, 3, 0xFFFF]),
          id_=st.sampled_from([0, 1, 2, 3, 4, 5] * 2 + [7, 32763, 32764, 32766, 32767, 0xFFFF]),
          flags=raw_flags, gpa=raw_gpas, size=raw_sizes,
          hva=st.one_of(st.sampled_from(RAW_HVAS), st.sampled_from(["zero", "ram_a", "edge_ok"])))
    def raw(self, as_id, id_, flags, gpa, size, hva):
        kind, pick, low = gpa
        addr = pick if kind == "abs" else (self.gfn(pick) << 12) + low
        addr &= (1 << 64) - 1
        self.set(as_id << 16 | id_, flags, addr, size, self.hva(hva, size))

    @rule(as_id=st.sampled_from([0, 1]), id_=slot_ids, flags=good_flags, hva=st.sampled_from(["zero", "ram_a"]),
          case=st.sampled_from(["max_pages", "max_pages+1", "gpa_wraps", "gpa_ends_at_2^64", "gpa_below_2^64",
                                "hva_ends_at_2^63", "hva_ends_below_2^63"]))
    def boundaries(self, as_id, id_, flags, hva, case):
        """Well-formed calls at the edges of the size, gpa-wrap and access_ok checks."""
        top = 1 << 64
        gpa, size, addr = 0, PAGE, 0 if flags & BIT2 else self.hva(hva)
        if case == "max_pages":
            size = MAX_BYTES
        elif case == "max_pages+1":
            size = MAX_BYTES + PAGE
        elif case == "gpa_wraps":
            gpa, size = top - PAGE, 2 * PAGE
        elif case == "gpa_ends_at_2^64":
            gpa = top - PAGE
        elif case == "gpa_below_2^64":
            gpa = top - 2 * PAGE
        elif case == "hva_ends_at_2^63":
            addr = (1 << 63) - PAGE
        else:
            addr = (1 << 63) - 2 * PAGE
        self.set(as_id << 16 | id_, flags, gpa, size, addr)

    # --- rules: lookups and translation ---

    @rule(as_id=st.sampled_from([0, 0, 1]), picks=st.lists(lookup_gfn_picks, min_size=1, max_size=10))
    def lookups(self, as_id, picks):
        gfns = [self.gfn(p, as_id) for p in picks]
        vm, ref = self.vm, self.ref
        for g in gfns:
            assert vm.lookup(g, as_id) == ref.lookup(g, as_id), f"lookup({g:#x}, {as_id})"
            want = ref.slot_for(g, as_id)
            got = vm.gfn_to_memslot(g, as_id)
            assert (None if got is None else _fields(got)) == (None if want is None else tuple(want)), \
                f"gfn_to_memslot({g:#x}, {as_id})"
            for write in (False, True):
                got_pfn, got_w = vm.gfn_to_pfn(g, write, as_id)
                assert (got_pfn, bool(got_w)) == ref.gfn_to_pfn(g, write, as_id), \
                    f"gfn_to_pfn({g:#x}, write={write}, as {as_id})"
            want_hva = ref.gfn_to_hva(g, as_id)
            try:
                got_hva = vm.gfn_to_hva(g, as_id)
            except allones.BadAddress as exc:
                assert exc.errno == errno.EFAULT
                assert want_hva is None, f"gfn_to_hva({g:#x}, {as_id}): core EFAULT, reference {want_hva:#x}"
            else:
                assert got_hva == want_hva, f"gfn_to_hva({g:#x}, {as_id})"
        arr = np.array(gfns, dtype=np.uint64)
        ids = vm.lookup_batch(arr, as_id)
        assert ids.tolist() == [ref.lookup(g, as_id) for g in gfns], "lookup_batch"
        for write in (False, True):
            t = vm.translate(arr, write, as_id)
            want = [ref.gfn_to_pfn(g, write, as_id) for g in gfns]
            assert t.pfn.tolist() == [p for p, _ in want], f"translate(write={write}).pfn"
            assert t.writable.tolist() == [w for _, w in want], f"translate(write={write}).writable"

    # --- invariants ---

    @invariant()
    def memslots_match_reference(self):
        for a in (0, 1):
            got = [_fields(m) for m in self.vm.memslots(a)]
            assert got == [tuple(s) for s in self.ref.slots(a)], f"memslots({a})"
            for prev, cur in zip(got, got[1:]):
                assert prev[1] < cur[1], f"memslots({a}) not sorted by base_gfn"
                assert prev[1] + prev[2] <= cur[1], f"memslots({a}) overlap"
            assert len({m[0] for m in got}) == len(got), f"memslots({a}) repeat an id"

    @invariant()
    def shared_page_is_all_ones(self):
        page = self.host.allones_page
        if page is not None:
            assert bytes(memoryview(page)) == b"\xff" * PAGE


def _fields(m):
    return (m.id, m.base_gfn, m.npages, m.userspace_addr, m.flags)


SETTINGS = settings(max_examples=100, stateful_step_count=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


class AllonesHost(MemslotMachine):
    BIT2_MEANING = "allones"


class PciHoleHost(MemslotMachine):
    BIT2_MEANING = "pci_hole"


class SmallPhysBitsHost(MemslotMachine):
    BIT2_MEANING = "allones"
    PHYS_BITS = 36


TestAllonesHost = AllonesHost.TestCase
TestAllonesHost.settings = SETTINGS
TestPciHoleHost = PciHoleHost.TestCase
TestPciHoleHost.settings = SETTINGS
TestSmallPhysBitsHost = SmallPhysBitsHost.TestCase
TestSmallPhysBitsHost.settings = SETTINGS
