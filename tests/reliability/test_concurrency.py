"""The SRCU promise for memslots, under stress: readers that run GIL-free batch lookups,
translations and guest reads while a writer creates, moves and deletes memslots and maps and
unmaps host memory must each get the answer of ONE complete generation, never a mix, and a
generation a reader still holds must keep giving its own answers (nothing freed under it).

How it checks that (docs/embedding.md, "Thread safety"):
- The writer is the only thread that changes anything. Every publish (a memslot change, an
  mmap, a munmap) is one numbered *event*: it bumps `started`, publishes, then records the
  state after it (memslot generation number and the slot list it asked for; host-mm sequence
  number and the mappings it holds) and sets `done`. Events are sequential, so a reader that
  reads `started` == b before a call and == a after it used a state published by events
  b - 1 .. a: those are its candidates.
- The expected answers are computed from the recorded slot and mapping lists with plain
  numpy (searchsorted over base gfns / hvas), never with a library lookup.
- A move shifts a whole slot (512 or 1024 pages) to another 4 MiB bay, and every RAM mapping
  has its own fill byte and frames, so consecutive generations differ at many of the
  ~200k random gfns a reader sends: a torn answer matches no candidate.

ALLONES_STRESS_SECONDS (default 3) sets how long the stress runs; it stops earlier once the
writer made ALLONES_STRESS_MAX_EVENTS publishes (default 1,000,000), and runs on (up to 3x
the time, at most 8 s more) while the non-vacuity targets are not met yet. Run with -s to see the
counts reached, e.g. `ALLONES_STRESS_SECONDS=300 python -m pytest -s tests/reliability/`.
"""

import os
import threading
import time

import numpy as np

import allones
from allones.constants import (KVM_MEM_ALLONES, KVM_MEM_READONLY, KVM_PFN_ERR_FAULT,
                               KVM_PFN_ERR_RO_FAULT, KVM_PFN_NOSLOT, PAGE_SHIFT, PAGE_SIZE,
                               PROT_WRITE)

SECONDS = float(os.environ.get("ALLONES_STRESS_SECONDS", "3"))
MAX_EVENTS = int(os.environ.get("ALLONES_STRESS_MAX_EVENTS", "1000000"))

BAY = 1024                  # gfns per bay (4 MiB); a slot lives inside one bay
NBAYS = 32
SPACE = (NBAYS + 2) * BAY   # gfns the readers send: the bays, and holes past them
NSLOT_IDS = 16
RAM_PAGES = 512             # a RAM slot: 512 pages of a 640-page mapping, at an offset
MAP_PAGES = 640
ALLONES_PAGES = BAY         # an all-ones slot fills its bay
NREADERS = 3
NGFNS = 200_000             # per lookup / translate call
NGPAS = 100_000             # per run
PIN_EVENTS = 300            # a reader re-pins its old generation after this many events
WAIT = 30.0                 # seconds a reader waits for the writer to record an event

# Non-vacuity targets (the stress runs on, within its extension, until they are met).
MIN_DISTINCT_GENERATIONS = 3
MIN_STRADDLES = 3           # calls that got one whole generation while a newer one appeared
MIN_PIN_AGE = 20            # generations made since a pinned generation that still answered


def u64(x):
    return np.uint64(x)


# ---------------------------------------------------------------------------------------
# The oracle: plain numpy over recorded slot and mapping lists
# ---------------------------------------------------------------------------------------

def _slot_arrays(slots):
    """Columns of a slot list (sorted by base_gfn)."""
    return (np.array([s.base_gfn for s in slots], np.uint64),
            np.array([s.npages for s in slots], np.uint64),
            np.array([s.userspace_addr for s in slots], np.uint64),
            np.array([s.flags for s in slots], np.uint64),
            np.array([s.id for s in slots], np.int32))


def _find(starts, lengths, keys):
    """(index, inside) of the range [starts[i], starts[i] + lengths[i]) holding each key."""
    if len(starts) == 0:
        return np.zeros(len(keys), np.intp), np.zeros(len(keys), bool)
    j = np.searchsorted(starts, keys, side="right") - 1
    jj = np.maximum(j, 0)
    return jj, (j >= 0) & (keys - starts[jj] < lengths[jj])   # j >= 0: no wrap


def expected_ids(slots, gfns):
    base, npages, _, _, ids = _slot_arrays(slots)
    jj, inside = _find(base, npages, gfns)
    return np.where(inside, ids[jj] if len(ids) else -1, -1).astype(np.int32)


def _backing(slots, mappings, gfns):
    """Per gfn: slot found, all-ones, READONLY, mapped (hva in a mapping), and that mapping."""
    base, npages, uaddr, flags, _ = _slot_arrays(slots)
    jj, inside = _find(base, npages, gfns)
    if len(base):
        allones = inside & ((flags[jj] & u64(KVM_MEM_ALLONES)) != 0)
        ro = inside & ((flags[jj] & u64(KVM_MEM_READONLY)) != 0)
        hva = uaddr[jj] + (gfns - base[jj]) * u64(PAGE_SIZE)
    else:
        allones = ro = np.zeros(len(gfns), bool)
        hva = np.zeros(len(gfns), np.uint64)
    ram = inside & ~allones
    mstart = np.array([m[0] for m in mappings], np.uint64)
    msize = np.array([m[1] * PAGE_SIZE for m in mappings], np.uint64)
    kk, mapped = _find(mstart, msize, hva)
    return inside, allones, ro, ram, hva, kk, mapped & ram


def expected_translation(slots, mappings, allones_pfn, gfns, write):
    """(pfn, writable) as __gfn_to_pfn_memslot gives them (docs/embedding.md, _core.pyx)."""
    inside, allones, ro, ram, hva, kk, mapped = _backing(slots, mappings, gfns)
    mbase = np.array([m[2] for m in mappings], np.uint64)
    mwrit = np.array([m[3] for m in mappings], bool)
    mstart = np.array([m[0] for m in mappings], np.uint64)
    pfn = np.full(len(gfns), KVM_PFN_NOSLOT, np.uint64)
    writable = np.zeros(len(gfns), bool)
    if not write:
        pfn[allones] = allones_pfn
    ro_fault = ram & ro & write
    pfn[ro_fault] = KVM_PFN_ERR_RO_FAULT
    memory = ram & ~ro_fault
    if len(mbase):
        ok = memory & mapped & (mwrit[kk] | (not write))
        pfn[memory & ~ok] = KVM_PFN_ERR_FAULT
        pfn[ok] = mbase[kk[ok]] + ((hva[ok] - mstart[kk[ok]]) >> u64(PAGE_SHIFT))
        writable[ok] = mwrit[kk[ok]] & ~ro[ok]
    else:
        pfn[memory] = KVM_PFN_ERR_FAULT
    return pfn, writable


def expected_run(slots, mappings, gpas):
    """(values, efault index or None) of 4-byte reads: RAM gives its fill byte, all-ones
    slots and holes 0xffffffff; the first read of RAM without a mapping stops the run."""
    _, _, _, ram, _, kk, mapped = _backing(slots, mappings, gpas >> u64(PAGE_SHIFT))
    fills = np.array([m[4] for m in mappings], np.uint64)
    values = np.full(len(gpas), 0xFFFFFFFF, np.uint64)
    if len(fills):
        values[mapped] = fills[kk[mapped]] * u64(0x01010101)
    bad = np.flatnonzero(ram & ~mapped)
    return values, (int(bad[0]) if len(bad) else None)


# ---------------------------------------------------------------------------------------
# The publication log
# ---------------------------------------------------------------------------------------

class Log:
    """What the writer published, event by event; readers pick their candidates from it."""

    def __init__(self, vm, mm_record):
        self.cond = threading.Condition()
        self.started = 0                 # events begun (event 0: the initial state)
        self.done = 0                    # events recorded
        gen = vm.memslots().generation
        self.states = {0: (gen, 0)}      # event -> (memslot generation, mm sequence) after it
        self.gens = {gen: tuple(vm.memslots())}
        self.mms = {0: mm_record}        # mm sequence -> mapping records sorted by hva
        self.holds = {}                  # reader -> first event it may still ask about
        self.pruned = 0                  # states below this are gone
        self.stop = threading.Event()
        self.errors = []

    def begin(self):
        with self.cond:
            self.started += 1
            return self.started

    def record(self, k, gen, slots, mm_seq, mm_record):
        with self.cond:
            self.gens.setdefault(gen, slots)
            self.mms.setdefault(mm_seq, mm_record)
            self.states[k] = (gen, mm_seq)
            self.done = k
            self.cond.notify_all()

    def hold(self, who):
        """Before a call: the first candidate event, kept until release()."""
        with self.cond:
            b = self.started
            self.holds[who] = b - 1
            return b

    def release(self, who):
        with self.cond:
            self.holds.pop(who, None)

    def window(self, b):
        """After a call begun at `started` == b: the (generations, mm sequences) it may have
        used, oldest first. None if the writer failed."""
        a = self.started
        with self.cond:
            if not self.cond.wait_for(lambda: self.done >= a or self.stop.is_set(), WAIT):
                raise AssertionError(f"the writer did not record event {a} in {WAIT} s")
            if self.done < a:
                return None
            states = [self.states[k] for k in range(b - 1, a + 1)]
        return sorted({g for g, _ in states}), sorted({m for _, m in states})

    def prune(self):
        """Forget states no reader can ask about any more (the grace period)."""
        with self.cond:
            # A reader that holds next asks from `started` - 1 >= done - 1: keep that too.
            floor = min(self.holds.values(), default=self.done)
            floor = min(floor, self.done - 1)
            if floor <= self.pruned:
                return
            gen_floor, mm_floor = self.states[floor]
            for k in range(self.pruned, floor):
                g, m = self.states.pop(k)
                if g < gen_floor:
                    self.gens.pop(g, None)
                if m < mm_floor:
                    self.mms.pop(m, None)
            self.pruned = floor


# ---------------------------------------------------------------------------------------
# The writer
# ---------------------------------------------------------------------------------------

class Writer:
    def __init__(self, vm, host, seed=1):
        self.vm, self.host = vm, host
        self.rng = np.random.default_rng(seed)
        self.slots = {}          # id -> Memslot: what the writer asked for
        self.backing = {}        # id -> HostMapping of a RAM slot
        self.bays = {}           # bay -> slot id
        self.maps = {}           # hva -> (hva, npages, base_pfn, writable, fill)
        self.mm_seq = 0
        self.next_fill = 0
        self.dangling = None     # a RAM slot whose mapping is already unmapped
        self.munmapped = set()   # base_pfns of unmapped mappings
        self.events = self.generations = self.mm_publishes = self.refused = 0
        self.log = Log(vm, self.mm_record())

    def mm_record(self):
        return tuple(self.maps[h] for h in sorted(self.maps))

    def slot_record(self):
        return tuple(sorted(self.slots.values(), key=lambda s: s.base_gfn))

    # -- one publish each --

    def _memslot_event(self, slot_id, flags, gpa, size, hva):
        k = self.log.begin()
        old = self.vm.memslots()
        self.vm.set_user_memory_region(slot_id, flags, gpa, size, hva)
        new = self.vm.memslots()
        assert new.generation == old.generation + 1
        slots = self.slot_record()
        assert tuple(new) == slots, "the published generation is not the one asked for"
        self.generations += 1
        self._recorded(k, new.generation, slots)

    def _mm_event(self, change):
        k = self.log.begin()
        change()
        self.mm_seq += 1
        record = self.mm_record()
        assert tuple(m.base_pfn for m in self.host.mm.mappings) == tuple(m[2] for m in record)
        self.mm_publishes += 1
        self._recorded(k, self.vm.memslots().generation, self.slot_record())

    def _recorded(self, k, gen, slots):
        self.log.record(k, gen, slots, self.mm_seq, self.mm_record())
        self.events = k
        if k % 256 == 0:
            self.log.prune()

    # -- the operations --

    def _free_bay(self):
        free = [b for b in range(NBAYS) if b not in self.bays]
        return int(self.rng.choice(free))

    def _place(self, npages, bay):
        return (bay * BAY + int(self.rng.integers(0, BAY - npages + 1))) * PAGE_SIZE

    def create(self):
        slot_id = int(self.rng.choice([i for i in range(NSLOT_IDS) if i not in self.slots]))
        bay = self._free_bay()
        if self.rng.random() < 0.5:
            flags, npages, hva = KVM_MEM_ALLONES, ALLONES_PAGES, 0
        else:
            self.next_fill = self.next_fill % 0xFD + 1        # 1..0xfd: never 0 or 0xff
            fill = self.next_fill
            box = []

            def mmap():
                m = self.host.mmap(MAP_PAGES * PAGE_SIZE, fill=fill)
                self.maps[m.hva] = (m.hva, m.npages, m.base_pfn, bool(m.prot & PROT_WRITE), fill)
                box.append(m)

            self._mm_event(mmap)
            mapping = box[0]
            flags = KVM_MEM_READONLY if self.rng.random() < 0.25 else 0
            npages = RAM_PAGES
            hva = mapping.hva + int(self.rng.integers(0, MAP_PAGES - RAM_PAGES + 1)) * PAGE_SIZE
            self.backing[slot_id] = mapping
        gpa = self._place(npages, bay)
        self.slots[slot_id] = allones.Memslot(slot_id, gpa >> PAGE_SHIFT, npages, hva, flags)
        self.bays[bay] = slot_id
        self._memslot_event(slot_id, flags, gpa, npages * PAGE_SIZE, hva)

    def move(self):
        slot_id = int(self.rng.choice(sorted(self.slots)))
        s = self.slots[slot_id]
        bay, old_bay = self._free_bay(), s.base_gfn // BAY
        gpa = self._place(s.npages, bay)
        self.slots[slot_id] = s._replace(base_gfn=gpa >> PAGE_SHIFT)
        del self.bays[old_bay]
        self.bays[bay] = slot_id
        self._memslot_event(slot_id, s.flags, gpa, s.npages * PAGE_SIZE, s.userspace_addr)

    def refused_move(self):
        """A move onto another slot: EEXIST, and no new generation."""
        slot_id, other = (int(i) for i in self.rng.choice(sorted(self.slots), 2, replace=False))
        s, o = self.slots[slot_id], self.slots[other]
        before = self.vm.memslots()
        try:
            self.vm.set_user_memory_region(slot_id, s.flags, o.base_gfn * PAGE_SIZE,
                                           s.npages * PAGE_SIZE, s.userspace_addr)
        except allones.SlotOverlap:
            pass
        else:
            raise AssertionError("an overlapping move was accepted")
        assert self.vm.memslots() is before, "a refused change published a generation"
        self.refused += 1

    def _unmap(self, slot_id):
        mapping = self.backing.pop(slot_id)

        def munmap():
            self.host.munmap(mapping.hva)
            del self.maps[mapping.hva]
            self.munmapped.add(mapping.base_pfn)

        self._mm_event(munmap)

    def delete(self, slot_id=None):
        if slot_id is None:
            slot_id = int(self.rng.choice(sorted(self.slots)))
        s = self.slots[slot_id]
        if slot_id in self.backing and self.dangling is None and self.rng.random() < 0.1:
            # Unmap first: the slot stays, pointing at nothing (runs there fail with EFAULT,
            # translations give KVM_PFN_ERR_FAULT); it is deleted by the next operation.
            self._unmap(slot_id)
            self.dangling = slot_id
            return
        del self.slots[slot_id], self.bays[s.base_gfn // BAY]
        self._memslot_event(slot_id, s.flags, s.base_gfn * PAGE_SIZE, 0, s.userspace_addr)
        if slot_id == self.dangling:
            self.dangling = None
        elif slot_id in self.backing:
            self._unmap(slot_id)

    def step(self):
        n = len(self.slots)
        if self.dangling is not None:
            return self.delete(self.dangling)
        r = self.rng.random()
        if n < 6 or (n < NSLOT_IDS and r < 0.25):
            self.create()
        elif r < 0.3:
            self.refused_move()
        elif r < 0.75:
            self.move()
        else:
            self.delete()

    def loop(self):
        try:
            while not self.log.stop.is_set() and self.events < MAX_EVENTS:
                self.step()
                time.sleep(float(self.rng.uniform(0, 0.001)))
        except BaseException as exc:   # noqa: BLE001 - re-raised by the test
            self.log.errors.append(exc)
            self.log.stop.set()


# ---------------------------------------------------------------------------------------
# The readers
# ---------------------------------------------------------------------------------------

KINDS = ("lookup_vm", "lookup_gen", "translate_vm", "translate_pair", "run")
SAMPLE = 2048   # the first SAMPLE gfns / gpas pick the candidate; then the whole answer


def _pair_equal(a, b):
    return np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def _run_equal(answer, expected):
    (values, efault), (exp_values, exp_efault) = answer, expected
    if efault != exp_efault:
        return False
    return efault is not None or np.array_equal(values, exp_values)


def _run_sample_equal(answer, expected):
    """A whole run's answer against the expected answer for its first SAMPLE gpas."""
    (values, efault), (exp_values, exp_efault) = answer, expected
    if efault is not None and efault < SAMPLE:
        return efault == exp_efault
    if exp_efault is not None:
        return False
    return values is None or np.array_equal(values[:SAMPLE], exp_values)


def _ids_sample_equal(answer, expected):
    return np.array_equal(answer[:SAMPLE], expected)


def _pfn_sample_equal(answer, expected):
    return _pair_equal((answer[0][:SAMPLE], answer[1][:SAMPLE]), expected)


EQUAL = {"ids": (_ids_sample_equal, np.array_equal), "pfn": (_pfn_sample_equal, _pair_equal),
         "run": (_run_sample_equal, _run_equal)}


class Reader:
    def __init__(self, idx, vm, host, writer):
        self.idx, self.vm, self.host, self.writer, self.log = idx, vm, host, writer, writer.log
        self.rng = rng = np.random.default_rng(100 + idx)
        self.gfns = rng.integers(0, SPACE, NGFNS, dtype=np.uint64)
        self.gpas = (rng.integers(0, SPACE, NGPAS, dtype=np.uint64) << u64(PAGE_SHIFT)) \
            + rng.integers(0, PAGE_SIZE // 4, NGPAS, dtype=np.uint64) * u64(4)
        self.allones_pfn = host.allones_pfn
        self.calls = dict.fromkeys(KINDS + ("pin_check",), 0)
        self.seen = set()            # generations whose answer a call got
        self.straddles = 0           # window held >= 2 generations with different answers
        self.in_flight_old = 0       # ... and the call got an older one: it held it mid-commit
        self.overlapped = 0          # explicit generation replaced during the call
        self.efaults = 0
        self.pin = None
        self.pin_max_age = 0         # generations since a pin that still answered right
        self.pin_max_unmapped = 0    # of its mappings unmapped since, still readable
        self._full, self._sample = {}, {}

    # -- expected answers, cached (the log's records are held while they are asked for) --

    def expected(self, what, gen, seq, write=False, sample=False):
        cache = self._sample if sample else self._full
        key = (what, gen, seq, write)
        if key not in cache:
            if len(cache) > (256 if sample else 8):
                cache.clear()
            slots = self.log.gens[gen]
            maps = self.log.mms[seq] if seq is not None else ()
            n = SAMPLE if sample else None
            if what == "ids":
                cache[key] = expected_ids(slots, self.gfns[:n])
            elif what == "pfn":
                cache[key] = expected_translation(slots, maps, self.allones_pfn,
                                                  self.gfns[:n], write)
            else:
                cache[key] = expected_run(slots, maps, self.gpas[:n])
        return cache[key]

    def _match(self, kind, what, answer, keys, write=False):
        """keys: the (generation, mm sequence) pairs the call may have used. The answer must
        equal exactly the expected answer of one of them (several may share it)."""
        sample_equal, equal = EQUAL[what]
        samples = [(k, self.expected(what, *k, write, sample=True)) for k in keys]
        hits = [k for k, e in samples if sample_equal(answer, e)]
        matched = next((k for k in hits if equal(answer, self.expected(what, *k, write))), None)
        if matched is None:
            raise AssertionError(
                f"reader {self.idx} {kind}: the answer is the whole answer of no single "
                f"(generation, host mm) among {keys} (sample matched {hits}): torn or wrong")
        self.seen.add(matched[0])
        gens = sorted({k[0] for k in keys})
        if len(gens) > 1:
            distinct = []
            for _, e in samples:
                if not any(sample_equal_expected(what, e, d) for d in distinct):
                    distinct.append(e)
            if len(distinct) > 1:
                self.straddles += 1
                if max(k[0] for k in hits) < gens[-1]:
                    self.in_flight_old += 1

    # -- the calls --

    def lookup_vm(self, b):
        ids = self.vm.lookup_batch(self.gfns)
        w = self.log.window(b)
        if w is not None:
            self._match("lookup_vm", "ids", ids, [(g, None) for g in w[0]])

    def lookup_gen(self, b):
        ms = self.vm.memslots()
        ids, _ = ms.lookup_batch(self.gfns)
        after = self.vm.memslots().generation
        w = self.log.window(b)
        if w is None:
            return
        assert ms.generation in w[0]
        self._match("lookup_gen", "ids", ids, [(ms.generation, None)])
        if after != ms.generation:
            self.overlapped += 1

    def translate_vm(self, b):
        write = bool(self.rng.integers(0, 2))
        t = self.vm.translate(self.gfns, write)
        w = self.log.window(b)
        if w is not None:
            self._match("translate_vm", "pfn", tuple(t), [(g, m) for g in w[0] for m in w[1]],
                        write)

    def translate_pair(self, b):
        write = bool(self.rng.integers(0, 2))
        ms, mm = self.vm.memslots(), self.host.mm
        answer = ms.translate(mm, self.gfns, write)
        after = self.vm.memslots().generation
        w = self.log.window(b)
        if w is None:
            return
        gen, seq = ms.generation, self._mm_seq(mm, w[1])
        assert gen in w[0]
        self._match("translate_pair", "pfn", answer, [(gen, seq)], write)
        if after != gen:
            self.overlapped += 1
        if self.pin is None or self.log.done - self.pin["event"] > PIN_EVENTS:
            self.pin = dict(ms=ms, mm=mm, gen=gen, event=self.log.done, maps=self.log.mms[seq],
                            ids=self.expected("ids", gen, None),
                            pfn=self.expected("pfn", gen, seq, False))

    def run(self, b):
        try:
            answer = (self.vm.run(self.gpas, 4).values, None)
        except allones.BadAddress as exc:
            answer = (None, exc.index)
            self.efaults += 1
        w = self.log.window(b)
        if w is not None:
            self._match("run", "run", answer, [(g, m) for g in w[0] for m in w[1]])

    def _mm_seq(self, mm, seqs):
        """Which recorded host mm (in the window) this HostMM is: mapping frames are never
        reused, so the base pfns name it."""
        key = tuple(m.base_pfn for m in mm.mappings)
        found = [s for s in seqs if tuple(m[2] for m in self.log.mms[s]) == key]
        assert found, f"reader {self.idx}: host.mm {key} is none of the published ones"
        return found[-1]

    # -- old generations stay alive --

    def check_pin(self):
        p = self.pin
        ids, _ = p["ms"].lookup_batch(self.gfns)
        assert np.array_equal(ids, p["ids"]), f"reader {self.idx}: pinned generation {p['gen']} changed"
        t = p["ms"].translate(p["mm"], self.gfns, False)
        assert _pair_equal(t, p["pfn"]), f"reader {self.idx}: pinned translation {p['gen']} changed"
        # The memory of every mapping the pinned mm lists is still there, with its fill,
        # though the writer may have unmapped it since.
        for m, rec in zip(p["mm"].mappings, p["maps"]):
            assert m.base_pfn == rec[2]
            assert (np.frombuffer(m, np.uint8)[::PAGE_SIZE // 4] == rec[4]).all()
        unmapped = sum(rec[2] in self.writer.munmapped for rec in p["maps"])
        age = self.vm.memslots().generation - p["gen"]
        self.pin_max_age = max(self.pin_max_age, age)
        self.pin_max_unmapped = max(self.pin_max_unmapped, unmapped)
        self.calls["pin_check"] += 1

    def loop(self):
        who = f"reader{self.idx}"
        try:
            i = 0
            while not self.log.stop.is_set():
                kind = KINDS[i % len(KINDS)]
                b = self.log.hold(who)
                try:
                    getattr(self, kind)(b)
                finally:
                    self.log.release(who)
                self.calls[kind] += 1
                if self.pin is not None and i % 4 == 3:
                    self.check_pin()
                i += 1
        except BaseException as exc:   # noqa: BLE001 - re-raised by the test
            self.log.errors.append(exc)
            self.log.stop.set()


def sample_equal_expected(what, a, b):
    """Are two expected answers for the sample the same?"""
    if what == "run":
        return a[1] == b[1] and np.array_equal(a[0], b[0])
    return _pair_equal(a, b) if what == "pfn" else np.array_equal(a, b)


# ---------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------

def _targets_met(readers):
    seen = set().union(*(r.seen for r in readers))
    return (len(seen) >= MIN_DISTINCT_GENERATIONS
            and sum(r.straddles for r in readers) >= MIN_STRADDLES
            and sum(r.overlapped for r in readers) >= 1
            and max(r.pin_max_age for r in readers) >= MIN_PIN_AGE
            and max(r.pin_max_unmapped for r in readers) >= 1)


def test_readers_see_whole_generations_while_a_writer_publishes(record_property):
    host = allones.Host()
    vm = allones.VM(host)
    writer = Writer(vm, host)
    for _ in range(8):
        writer.create()
    readers = [Reader(i, vm, host, writer) for i in range(NREADERS)]
    log = writer.log
    threads = [threading.Thread(target=r.loop, name=f"reader{r.idx}") for r in readers]
    threads.append(threading.Thread(target=writer.loop, name="writer"))
    t0 = time.monotonic()
    try:
        for t in threads:
            t.start()
        hard = t0 + min(3 * SECONDS, SECONDS + 8)
        while not log.stop.is_set() and writer.events < MAX_EVENTS:
            now = time.monotonic()
            if now >= hard or (now >= t0 + SECONDS and _targets_met(readers)):
                break
            log.stop.wait(0.05)
    finally:
        log.stop.set()
        for t in threads:
            t.join(timeout=60)
    elapsed = time.monotonic() - t0
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"threads did not stop: {hung}"
    if log.errors:
        raise log.errors[0]

    calls = {k: sum(r.calls[k] for r in readers) for k in readers[0].calls}
    seen = set().union(*(r.seen for r in readers))
    counts = dict(
        seconds=round(elapsed, 1), events=writer.events, generations=writer.generations,
        mm_publishes=writer.mm_publishes, refused_changes=writer.refused,
        calls=calls, distinct_generations_seen=len(seen),
        straddles=sum(r.straddles for r in readers),
        straddles_matching_older=sum(r.in_flight_old for r in readers),
        overlapped_explicit=sum(r.overlapped for r in readers),
        run_efaults=sum(r.efaults for r in readers),
        pin_max_age=max(r.pin_max_age for r in readers),
        pin_max_unmapped=max(r.pin_max_unmapped for r in readers),
        records_kept=len(log.states))
    print(f"\nconcurrency stress: {counts}")
    for name, value in counts.items():
        record_property(name, value)

    assert len(seen) >= MIN_DISTINCT_GENERATIONS, counts
    assert counts["straddles"] >= MIN_STRADDLES, counts
    assert counts["overlapped_explicit"] >= 1, counts
    assert counts["pin_max_age"] >= MIN_PIN_AGE, counts
    assert counts["pin_max_unmapped"] >= 1, counts
    assert all(calls[k] > 0 for k in calls), counts
    assert len(log.states) <= 4096, "the log was not pruned: a reader held an event forever"

    # Quiescent: the current generation answers as recorded, and the stage-2 table's
    # counts still match a recount after all the zaps.
    gen = vm.memslots().generation
    slots, maps = log.gens[gen], writer.mm_record()
    gfns = readers[0].gfns
    assert np.array_equal(vm.lookup_batch(gfns), expected_ids(slots, gfns))
    t = vm.translate(gfns, False)
    assert _pair_equal(t, expected_translation(slots, maps, host.allones_pfn, gfns, False))
    assert vm.table_pages() == vm.recount_table_pages()


def test_an_old_generation_outlives_later_changes_and_munmaps():
    """The deterministic half: hold a generation and its host mm, make many more (deleting
    and unmapping everything it pointed to), and it still answers as it did."""
    host = allones.Host()
    vm = allones.VM(host)
    writer = Writer(vm, host, seed=7)
    for _ in range(10):
        writer.create()
    old_ms, old_mm = vm.memslots(), host.mm
    old_slots, old_maps = writer.slot_record(), writer.mm_record()
    assert any(not s.flags & KVM_MEM_ALLONES for s in old_slots)
    gfns = np.random.default_rng(3).integers(0, SPACE, NGFNS, dtype=np.uint64)
    ids = expected_ids(old_slots, gfns)
    pfn = expected_translation(old_slots, old_maps, host.allones_pfn, gfns, False)
    assert np.array_equal(old_ms.lookup_batch(gfns)[0], ids)
    for slot_id in sorted(writer.slots):     # everything the old generation points to goes
        writer.delete(slot_id)
        if writer.dangling is not None:
            writer.delete(writer.dangling)
    while vm.memslots().generation < old_ms.generation + 300:
        writer.step()
    assert vm.memslots().generation >= old_ms.generation + 300
    assert all(m[2] in writer.munmapped for m in old_maps)
    assert np.array_equal(old_ms.lookup_batch(gfns)[0], ids)
    assert _pair_equal(old_ms.translate(old_mm, gfns, False), pfn)
    assert tuple(old_ms) == old_slots
    for m, rec in zip(old_mm.mappings, old_maps):
        assert (np.frombuffer(m, np.uint8) == rec[4]).all()
