"""A fuzz harness over the Cython core: bytes in, a sequence of calls out, invariants checked.

One input drives one Host and one VM through memslot updates (well-formed and not),
mmap/munmap, lookups, translations, guest runs (whose exit handler may itself change
memslots) and dirty logs, decoded from the input's bytes. After every call the harness
checks what must hold whatever the input:

  * an error is a Python exception of the documented kind, and changes nothing: the same
    memslots generation objects stay published, the same host generation, the same
    stage-2 tables;
  * memslots stay sorted, disjoint, within the guest's address width, ids unique;
  * the shared all-ones page is all 0xff;
  * every stage-2 leaf maps a gfn of a current memslot (no stale mapping after a delete,
    move or munmap), all-ones leaves are read-only and point at the shared page, and the
    table-page counters match a walk of the table;
  * a run's counters add up: accesses = reads + writes = tlb_hits + faults, bytes moved =
    the sizes, exits <= faults; reads of all-ones slots and holes answer all-ones;
  * lookups and translations agree with a linear scan of the published slots.

Used by the atheris driver (fuzz/fuzz_core.py, minutes on demand) and by a hypothesis
test (tests/reliability/test_fuzz.py, a short smoke run in CI). Any other exception, or
a crash, is a finding. The decoder reads bytes past the input's end as zeros, so every
input is valid, short inputs are cheap, and a zero byte picks the ordinary choice.
"""

import collections

import numpy as np

import allones
from allones.constants import (KVM_ADDRESS_SPACE_NUM, KVM_MEM_ALLONES, KVM_MEM_LOG_DIRTY_PAGES,
                               KVM_MEM_READONLY, KVM_PFN_ERR_FAULT, KVM_PFN_ERR_RO_FAULT,
                               KVM_PFN_NOSLOT, KVM_USER_MEM_SLOTS, PAGE_SHIFT, PAGE_SIZE,
                               PROT_READ, PROT_WRITE)

# What a refused call may raise: the kernel's errno (KvmError), or a value or type that
# the API refuses before any kernel rule applies. Anything else is a bug.
EXPECTED_ERRORS = (allones.KvmError, ValueError, TypeError, OverflowError, BufferError)
U64 = (1 << 64) - 1
MAX_OPS = 48
# Values that sit on the rules' edges: pages, the 2^31-page slot limit, the 48- and
# 52-bit address widths, the top of the user half, and the ends of the integer types.
EDGES = [0, 1, PAGE_SIZE - 1, PAGE_SIZE, PAGE_SIZE + 1, 2 << 20, (2 << 20) - PAGE_SIZE,
         ((1 << 31) - 1) * PAGE_SIZE, (1 << 31) * PAGE_SIZE, 1 << 36, 1 << 46, 1 << 47,
         1 << 48, 1 << 52, 1 << 63, U64 - PAGE_SIZE + 1, U64, -1, 1 << 64]

GOOD_FLAGS = (0, 0, KVM_MEM_ALLONES, KVM_MEM_ALLONES, KVM_MEM_READONLY, KVM_MEM_LOG_DIRTY_PAGES,
              KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY)

# Counts over all inputs run in this process: calls by kind and outcome.
COUNTS = collections.Counter()


class Bytes:
    """The input as a stream of choices; past its end every read is 0."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def uint(self, nbytes: int) -> int:
        chunk = self.data[self.pos:self.pos + nbytes]
        self.pos += nbytes
        return int.from_bytes(chunk.ljust(nbytes, b"\0"), "little")

    def below(self, n: int) -> int:
        return self.uint(1 if n <= 256 else 2) % n

    def pick(self, seq):
        return seq[self.below(len(seq))]

    def flag(self) -> bool:
        return bool(self.uint(1) & 1)


class Case:
    """One input's world: a host, a VM, the host mappings made, and gfns touched."""

    def __init__(self, b: Bytes):
        self.b = b
        bit2 = b.pick(("allones", "allones", "pci_hole"))
        self.host = allones.Host(bit2=bit2, phys_bits=b.pick((46, 46, 36, 13, 48)))
        maps = ("4k",) if bit2 == "pci_hole" else allones.vm.ALLONES_MAPS
        # A small page-table limit, so the harness meets ENOMEM (a whole-slot prefault of a
        # 2^31-page slot would otherwise take 32 GiB) and stays fast.
        self.vm = allones.VM(self.host, prefault=b.pick(allones.vm.PREFAULT_POLICIES),
                             allones_map=b.pick(maps), max_table_pages=b.pick((4096, 64, 4)))
        self.max_gfn = (1 << (self.host.phys_bits - PAGE_SHIFT)) - 1
        self.touched = set()           # gfns accessed by runs: candidates for stage-2 leaves
        self.depth = 0                 # exit handlers may update memslots, but not recurse

    # --- values ---

    def number(self) -> int:
        """An address or size: small page multiples (so slots collide), edges, or raw."""
        kind = self.b.below(8)
        if kind < 4:
            return self.b.below(64) * PAGE_SIZE
        if kind < 6:
            return self.b.pick(EDGES)
        if kind == 6:
            return self.b.below(64) * PAGE_SIZE + self.b.pick((1, 0x800, PAGE_SIZE - 1))
        return self.b.uint(8)

    def hva(self) -> int:
        """0, somewhere in a host mapping, or any number."""
        mappings = self.host.mappings
        kind = self.b.below(4)
        if kind == 0 or not mappings:
            return 0 if kind < 2 else self.number()
        m = self.b.pick(mappings)
        return m.hva + self.b.below(m.npages + 1) * PAGE_SIZE if kind < 3 else self.number()

    def gfns(self) -> np.ndarray:
        """Gfns around the current slots' edges, plus far ones."""
        edges = [0, self.max_gfn, self.max_gfn + 1, U64]
        for as_id in range(KVM_ADDRESS_SPACE_NUM):
            for s in self.vm.memslots(as_id):
                edges += [s.base_gfn - 1, s.base_gfn, s.base_gfn + s.npages - 1, s.base_gfn + s.npages]
        n = self.b.below(24)
        return np.array([self.b.pick(edges) % (1 << 64) if self.b.flag() else self.b.below(80)
                         for _ in range(n)], dtype=np.uint64)

    # --- state snapshots, for "an error changes nothing" ---

    def state(self):
        vm = self.vm
        return ([vm.memslots(a) for a in range(KVM_ADDRESS_SPACE_NUM)], self.host.mm,
                [vm.table_pages(a) for a in range(KVM_ADDRESS_SPACE_NUM)],
                sorted((g, a, vm.walk(g, a)) for g, a in self.touched))

    def refused(self, kind: str, call):
        """Run call; an expected error must leave the whole state as it was."""
        before = self.state()
        try:
            result = call()
        except EXPECTED_ERRORS as exc:
            after = self.state()
            assert after[0][0] is before[0][0] and after[0][1] is before[0][1], f"{kind}: memslots changed"
            assert after[1] is before[1], f"{kind}: host mappings changed"
            assert after[2:] == before[2:], f"{kind}: stage-2 tables changed"
            COUNTS[f"{kind}: {type(exc).__name__}"] += 1
            return None
        COUNTS[f"{kind}: ok"] += 1
        return result

    # --- operations ---

    def op_set(self):
        b = self.b
        if not b.flag():   # well-formed: few ids, small gfns, so slots collide and move
            slot = b.pick((0, 0, 1)) << 16 | b.below(8)
            flags = b.pick(GOOD_FLAGS)
            # pages mostly (slots collide), else 2 MiB or 1 GiB apart: more table pages,
            # 2 MiB leaves, and the page-table limit (max_table_pages) reached
            gpa = b.below(64) * b.pick((PAGE_SIZE, PAGE_SIZE, 2 << 20, 1 << 30))
            size = b.below(24) * b.pick((PAGE_SIZE, PAGE_SIZE, 2 << 20))
            hva = 0 if flags & KVM_MEM_ALLONES else self.hva()
        else:              # anything, with the rules' edges
            slot = b.pick((0, 1, 2, 0x7FFF, 0xFFFF)) << 16 | b.pick(
                (0, 1, 7, KVM_USER_MEM_SLOTS - 1, KVM_USER_MEM_SLOTS, 0xFFFF)) if b.flag() else self.number()
            flags = b.pick(GOOD_FLAGS + (KVM_MEM_ALLONES | KVM_MEM_READONLY, 1 << 3, 1 << 31, b.uint(4)))
            gpa, size, hva = self.number(), self.number(), self.hva()
        old = [list(self.vm.memslots(a)) for a in range(KVM_ADDRESS_SPACE_NUM)]
        change = self.refused("set_user_memory_region",
                              lambda: self.vm.set_user_memory_region(slot, flags, gpa, size, hva))
        if change is not None:   # it succeeded, so slot is a valid as_id << 16 | id
            self.check_change(old, slot >> 16, slot & 0xFFFF, flags, gpa, size, hva, change)

    def check_change(self, old, as_id, id_, flags, gpa, size, hva, change):
        """A committed change did what the request said, and only that."""
        new = list(self.vm.memslots(as_id))
        others = [s for s in old[as_id] if s.id != id_]
        if size == 0:
            assert change == allones.Change.KVM_MR_DELETE and new == others
            return
        made = allones.Memslot(id_, gpa >> PAGE_SHIFT, size >> PAGE_SHIFT, hva, flags)
        assert sorted(others + [made]) == sorted(new), "the new table is not old + the change"
        assert list(self.vm.memslots(1 - as_id)) == old[1 - as_id], "the other address space changed"

    def op_mmap(self):
        b = self.b
        bad = b.below(4) == 3
        size = b.pick((PAGE_SIZE, 2 * PAGE_SIZE, 16 * PAGE_SIZE, 2 << 20, 4 << 20) +
                      ((0, PAGE_SIZE + 1, -PAGE_SIZE, 1 << 48) if bad else ()))
        fill = b.pick((None, 0, 0xFF, 0x5A) + ((256, -1, 1.5) if bad else ()))
        prot = b.pick((PROT_READ | PROT_WRITE, PROT_READ) + ((PROT_WRITE, 0, 0x10) if bad else ()))
        if b.below(8) == 0:
            self.refused("mmap_alias", lambda: self.host.mmap_alias(size, 0xFF if fill is None else fill,
                                                                    prot, max_map_count=b.pick((8, 65530))))
        else:
            self.refused("mmap", lambda: self.host.mmap(size, fill, prot, thp=b.flag()))

    def op_munmap(self):
        mappings = self.host.mappings
        hva = self.b.pick(mappings).hva + self.b.pick((0, 0, 0, PAGE_SIZE)) if mappings else self.number()
        self.refused("munmap", lambda: self.host.munmap(hva))

    def op_lookup(self):
        as_id = self.b.pick((0, 0, 1, 2))
        gfns = self.mangle(self.gfns())
        ids = self.refused("lookup_batch", lambda: self.vm.lookup_batch(gfns, as_id))
        if ids is None:
            return
        gfns = [int(g) for g in np.ravel(gfns)]   # what was accepted
        slots = list(self.vm.memslots(as_id))
        expected = [next((s.id for s in slots if s.base_gfn <= int(g) < s.base_gfn + s.npages), -1)
                    for g in gfns]
        assert ids.tolist() == expected, "lookup_batch disagrees with a linear scan"

    def mangle(self, gfns: np.ndarray):
        """The same gfns, or a bad array: another dtype (values may wrap: the caller checks
        against what it passed), a 2-D or strided or read-only array, a list."""
        kind = self.b.below(10)
        if kind == 5:
            return gfns.astype(self.b.pick((np.int64, np.uint32, np.float64, np.int8, object)))
        if kind == 6:
            return np.repeat(gfns, 2)[::2]                  # not contiguous, same values
        if kind == 7:
            ro = gfns.copy()
            ro.flags.writeable = False
            return ro
        if kind == 8:
            return gfns.reshape(1, -1)
        if kind == 9:
            return [int(g) for g in gfns] + ([-1] if self.b.flag() else [])
        return gfns

    def op_translate(self):
        as_id, write = self.b.pick((0, 0, 1, 5)), self.b.flag()
        gfns = self.mangle(self.gfns())
        out = self.refused("translate", lambda: self.vm.translate(gfns, write, as_id))
        if out is None:
            return
        slots, mm = list(self.vm.memslots(as_id)), self.host.mm
        assert len(out.pfn) == np.size(gfns)
        for g, pfn, writable in zip(np.ravel(gfns).tolist(), out.pfn.tolist(), out.writable.tolist()):
            expected = self.expected_pfn(slots, mm, g, write)
            assert (pfn, writable) == expected, \
                f"translate(gfn {g:#x}, write={write}) = {pfn:#x}, {writable}, not {expected}: {slots} {mm.mappings}"

    def expected_pfn(self, slots, mm, gfn, write):
        """__gfn_to_pfn_memslot by a linear scan (the rules of _core.gfn_to_pfn_memslot)."""
        slot = next((s for s in slots if s.base_gfn <= gfn < s.base_gfn + s.npages), None)
        if slot is None:
            return KVM_PFN_NOSLOT, False
        if slot.flags & KVM_MEM_ALLONES:
            if self.host.allones_page is None or write:
                return KVM_PFN_NOSLOT, False
            return self.host.allones_pfn, False
        if slot.flags & KVM_MEM_READONLY and write:
            return KVM_PFN_ERR_RO_FAULT, False
        hva = slot.userspace_addr + (gfn - slot.base_gfn) * PAGE_SIZE
        m = next((m for m in mm.mappings if m.hva <= hva < m.hva + m.size), None)
        if m is None or (write and not m.writable):
            return KVM_PFN_ERR_FAULT, False
        pfn = m.base_pfn if m.is_alias else m.base_pfn + ((hva - m.hva) >> PAGE_SHIFT)
        return pfn, bool(m.writable and not slot.flags & KVM_MEM_READONLY)

    def op_run(self):
        b = self.b
        n = b.below(12)
        gfns = self.gfns()
        gpas = [((int(gfns[k % len(gfns)]) if len(gfns) else b.below(80)) << PAGE_SHIFT | b.below(PAGE_SIZE))
                % (1 << 64) for k in range(n)]
        sizes = [b.pick((1, 2, 4, 4, 8) if b.below(16) < 15 else (0, 3, 16, 255)) for _ in range(n)]
        gpas = [g & ~(s - 1) if s in (1, 2, 4, 8) and b.below(4) else g for g, s in zip(gpas, sizes)]
        writes = [b.below(4) == 0 for _ in range(n)]
        values = np.array([b.uint(8) for _ in range(n)], dtype=np.uint64)
        as_id = b.pick((0, 0, 0, 1))
        handler = self.handler if b.flag() else None
        slots = list(self.vm.memslots(as_id))
        all_ones = [k for k, g in enumerate(gpas) if not writes[k] and self.reads_all_ones(slots, g >> PAGE_SHIFT)]
        before = self.state()
        try:
            result = self.vm.run(np.array(gpas, dtype=np.uint64), sizes, writes, values,
                                 on_mmio=handler, as_id=as_id)
        except (allones.BadAddress, allones.NoMemory) as exc:
            # KVM_RUN's EFAULT or ENOMEM (past max_table_pages): what ran before access
            # exc.index stays, as in the kernel.
            assert exc.stats["accesses"] == exc.index, exc.stats
            COUNTS[f"run: {type(exc).__name__}"] += 1
            return
        except (ValueError, TypeError) as exc:
            assert self.state() == before, "a refused run changed state"
            COUNTS[f"run: {type(exc).__name__}"] += 1
            return
        finally:
            self.touched.update((g >> PAGE_SHIFT, as_id) for g in gpas)
        COUNTS["run: ok"] += 1
        self.check_run(result, sizes, writes, [] if handler else all_ones)

    def reads_all_ones(self, slots, gfn) -> bool:
        """Does a read of gfn answer all-ones with no handler: a hole or an all-ones slot?"""
        slot = next((s for s in slots if s.base_gfn <= gfn < s.base_gfn + s.npages), None)
        return slot is None or bool(slot.flags & KVM_MEM_ALLONES)

    def handler(self, gpa, size, is_write, value):
        """An exit handler that may change memslots in the middle of the run."""
        if self.depth == 0 and self.b.below(4) == 0:
            self.depth += 1
            try:
                self.op_set()
            finally:
                self.depth -= 1
        return None if self.b.flag() else self.b.uint(8)

    def check_run(self, result, sizes, writes, all_ones):
        st = result.stats
        assert st["accesses"] == len(sizes) == st["reads"] + st["writes"]
        assert st["writes"] == sum(writes)
        assert st["accesses"] == st["tlb_hits"] + st["faults"], st
        assert st["bytes_read"] + st["bytes_written"] == sum(sizes)
        assert st["exits_mmio"] + st["exits_emulated"] <= st["faults"]
        for k in all_ones:
            assert int(result.values[k]) == (1 << (8 * sizes[k])) - 1, "a hole read is not all-ones"

    def op_dirty_log(self):
        slot = self.b.pick((0, 1, 2, 1 << 16, 2 << 16, 0xFFFF, -1, 1 << 32))
        self.refused("get_dirty_log", lambda: self.vm.get_dirty_log(slot))

    OPS = (op_set, op_set, op_set, op_mmap, op_munmap, op_lookup, op_translate, op_run, op_run,
           op_dirty_log)

    # --- invariants ---

    def check_invariants(self):
        page = self.host.allones_page
        assert page is None or bytes(memoryview(page)) == b"\xff" * PAGE_SIZE, "shared page not all 0xff"
        for as_id in range(KVM_ADDRESS_SPACE_NUM):
            slots = list(self.vm.memslots(as_id))
            assert len({s.id for s in slots}) == len(slots), "duplicate slot ids"
            for prev, s in zip(slots, slots[1:]):
                assert prev.base_gfn + prev.npages <= s.base_gfn, "memslots overlap or are unsorted"
            assert all(0 < s.npages and s.base_gfn + s.npages - 1 <= self.max_gfn for s in slots)
            assert self.vm.table_pages(as_id) == self.vm.recount_table_pages(as_id)
        for gfn, as_id in self.touched:
            self.check_leaf(gfn, as_id)

    def check_leaf(self, gfn, as_id):
        """A stage-2 leaf maps only a gfn of a current slot; all-ones leaves are read-only."""
        leaf = self.vm.walk(gfn, as_id)
        if leaf is None:
            return
        slot = self.vm.gfn_to_memslot(gfn, as_id)
        assert slot is not None, f"stale stage-2 leaf for gfn {gfn:#x} (as {as_id}) outside every slot"
        pfn, writable, level = leaf
        if slot.flags & KVM_MEM_ALLONES:
            assert not writable, "an all-ones leaf is writable"
            huge = self.host.allones_hugepage
            assert pfn == self.host.allones_pfn or (
                huge is not None and huge.base_pfn <= pfn < huge.base_pfn + huge.npages)
        else:
            expected, may_write = self.expected_pfn(list(self.vm.memslots(as_id)), self.host.mm, gfn, False)
            assert pfn == expected and (may_write or not writable), f"leaf of gfn {gfn:#x} is stale"


def run_one(data: bytes) -> None:
    """Decode one input and run it; raises AssertionError (or anything unexpected) on a finding."""
    b = Bytes(data)
    case = Case(b)
    COUNTS["inputs"] += 1
    for _ in range(MAX_OPS):
        if b.left() <= 0:
            break
        b.pick(Case.OPS)(case)
        COUNTS["calls"] += 1
        case.check_invariants()
