"""A plain pure-Python model of one VM's stage-2 MMU and its access engine (`VM.run`): a test oracle.

Written from the spec (docs/engine.md, "allones stage-2 MMU and access engine"),
independently of allones/_core.pyx. Memslot rules, the memslot table and gfn_to_pfn come from
tests/reference.py (ReferenceVM), which is reused, not copied. No cleverness and no speed:

  * mappings are dicts per address space: `leaves[as_id]` gfn -> (pfn, writable, kind) for
    4 KiB leaves; `big[as_id]` region (gfn >> 9) -> (kind, pfn, writable) for level-2 entries
    (kind "huge": a 2 MiB leaf of VMM memory; "allones-huge": a 2 MiB leaf of the host's 2 MiB
    all-ones page, whose pfn is only known once the core allocates it, so it is stored as the
    offset 0 and resolved against host.allones_hugepage; "shared-pt": the host's shared
    level-1 table of all-ones pages);
  * table pages are never counted incrementally: the set of table pages is derived from the
    leaves (the spec's recount rule) and the counters come from set differences;
  * memslot lookups replay search_memslots' last-used-slot cache over the sorted slot list
    (the cache is an index into that list; it starts at 0 and every committed change, i.e. a
    new memslots generation of that address space, resets it to 0);
  * memory: a read of a memory-backed page reads the real bytes through
    memoryview(host_mapping); writes go to a private overlay (`overlay`, pfn -> bytearray),
    never to the host's memory. So the oracle must run a batch BEFORE the core runs it; the
    test then checks the core stored exactly the overlay (`written_pages`).

Where the spec is silent, the oracle reads it as follows (and the core agrees):
  * reads, writes, bytes_read and bytes_written count every completed access (MMIO and
    emulated ones too); the access that stops a run with EFAULT counts only its fault and
    its memslot lookup;
  * values: a write gives back its value as given (not truncated), an MMIO exit records the
    same; on_mmio returning None answers all-ones; on_mmio gets the access's own value;
  * a shared-pt entry walks as (host.allones_pfn, False, 1): its leaf is a 4 KiB one, in
    the host's shared level-1 table; a 2 MiB leaf walks as (base pfn + (gfn & 511), w, 2);
  * `records` (what record_exits returns) has the emulated pci_hole reads among the MMIO
    exits; `exit_log` has the MMIO exits only;
  * the dirty bitmap follows v6.6 kvm_prepare_memory_region: dropped with LOG_DIRTY_PAGES,
    kept by a MOVE that keeps the flag, clean when the flag is gained;
  * a change in one address space resets only that address space's lookup cache.

The oracle must be told of every KVM_SET_USER_MEMORY_REGION (`set_user_memory_region`, which
returns the reference's (rc, change) and does not call the core), of every host.mmap with thp
(`mmap`, which calls host.mmap) and of every host.munmap (`munmap`, which calls host.munmap).
"""

from typing import NamedTuple

import reference as R  # tests/reference.py

PAGE = R.PAGE_SIZE
REGION_PAGES = 512                    # gfns under one level-2 entry
LOG, BIT2 = R.KVM_MEM_LOG_DIRTY_PAGES, R.KVM_MEM_BIT2
MAX_GFN_BITS = 36                     # a table maps 48-bit gpas
TOPUP_PAGES = 4                       # one mmu_topup_memory_caches: enough for one translation

STAT_NAMES = (
    "accesses", "reads", "writes", "tlb_hits", "faults", "prefaulted", "exits_mmio",
    "exits_emulated", "memslot_lookups", "memslot_cache_hits", "mapped_4k", "mapped_2m",
    "table_pages_allocated", "table_pages_freed", "rfc_topup_shortfall", "bytes_read",
    "bytes_written",
)

PREFAULTS = ("on-demand", "whole-slot")
ALLONES_MAPS = ("4k", "shared-pt", "hugepage")


class RunResult(NamedTuple):
    values: list          # one value per access (reads: what was read; writes: the value written)
    stats: dict           # the counters, STAT_NAMES
    exits: list           # (index, gpa, size, is_write, value) of this run's MMIO exits
    bad_index: int | None  # the access that stopped the run with EFAULT, or None
    records: list         # the same for MMIO and emulated (pci_hole read) exits, in order:
                          # what the core's record_exits gives (its documented choice)


class RunReference:
    """One VM on `host`: its memslots (a ReferenceVM) and its two stage-2 tables."""

    def __init__(self, host, prefault="on-demand", allones_map="4k"):
        assert prefault in PREFAULTS and allones_map in ALLONES_MAPS
        self.host = host
        self.ref = R.ReferenceVM(host)
        self.prefault = prefault
        self.allones_map = allones_map
        self.pci_hole = host.bit2 == "pci_hole"
        self.materialize = getattr(host, "materialize", True)
        n = R.KVM_ADDRESS_SPACE_NUM
        self.leaves = [dict() for _ in range(n)]     # gfn -> (pfn, writable, kind)
        self.big = [dict() for _ in range(n)]        # region -> (kind, pfn, writable)
        self.cache = [0] * n                         # last-used index into ref.slots(as_id)
        self.dirty = {}                              # (as_id, id) -> set of page indexes
        self.thp = {}                                # hva -> thp flag, from self.mmap
        self.fill = {}                               # hva -> fill byte or None
        self.used_hugepage = False                   # did this VM make the host allocate...
        self.used_shared_pt = False                  # ...its 2 MiB page / its shared table
        self.exit_log = []                           # every MMIO exit of every run, in order
        self.record_log = []                         # ... and the emulated ones among them
        self.overlay = {}                            # pfn -> bytearray: this run's writes

    # --- what the oracle must be told of ---

    def mmap(self, size, fill=None, prot=None, thp=False):
        kwargs = {} if prot is None else {"prot": prot}
        if thp:
            kwargs["thp"] = True
        m = self.host.mmap(size, fill=fill, **kwargs)
        self.thp[m.hva] = bool(thp)
        self.fill[m.hva] = fill
        return m

    def munmap(self, hva, others=()):
        """host.munmap(hva), then the MMU notifier in this VM and in `others` (the oracles of
        the host's other VMs): zap every mapping of a gfn whose slot hva was unmapped."""
        m = next(m for m in self.host.mappings if m.hva == hva)
        self.host.munmap(hva)
        for ref in (self, *others):
            ref.invalidate_hva_range(m.hva, m.hva + m.size)

    def invalidate_hva_range(self, lo, hi):
        for as_id in range(R.KVM_ADDRESS_SPACE_NUM):
            def hit(gfn):
                s = self.ref.slot_for(gfn, as_id)
                assert s is not None, "a mapping outside every slot"
                if s.flags & BIT2:
                    return False
                return lo <= s.userspace_addr + (gfn - s.base_gfn) * PAGE < hi
            for gfn in [g for g in self.leaves[as_id] if hit(g)]:
                del self.leaves[as_id][gfn]
            for r in [r for r in self.big[as_id]
                      if any(hit(g) for g in range(r * REGION_PAGES, (r + 1) * REGION_PAGES))]:
                del self.big[as_id][r]

    def set_user_memory_region(self, slot, flags, guest_phys_addr, memory_size, userspace_addr=0):
        """The reference's (rc, change); on a committed change: new generation, zap, dirty log."""
        as_id, id_ = slot >> 16, slot & 0xFFFF
        old = self.ref.spaces[as_id].get(id_) if as_id < R.KVM_ADDRESS_SPACE_NUM else None
        rc, change = self.ref.set_user_memory_region(slot, flags, guest_phys_addr, memory_size,
                                                     userspace_addr)
        if rc or change == R.KVM_MR_NONE:
            return rc, change
        self.cache[as_id] = None                     # a new memslots generation caches nothing
        if change in (R.KVM_MR_DELETE, R.KVM_MR_MOVE):
            self._zap(as_id, old.base_gfn, old.base_gfn + old.npages)
        elif change == R.KVM_MR_FLAGS_ONLY and flags & LOG:
            # Logging starts: 4 KiB leaves lose write access, 2 MiB entries go.
            lo, hi = old.base_gfn, old.base_gfn + old.npages
            for r in [r for r in self.big[as_id]
                      if r * REGION_PAGES < hi and lo < (r + 1) * REGION_PAGES]:
                del self.big[as_id][r]
            for gfn, leaf in list(self.leaves[as_id].items()):
                if lo <= gfn < hi:
                    self.leaves[as_id][gfn] = (leaf[0], False, leaf[2])
        new = self.ref.spaces[as_id].get(id_)
        key = (as_id, id_)
        # kvm_prepare_memory_region: the bitmap goes with LOG_DIRTY_PAGES; a MOVE keeping
        # the flag keeps it, a slot that gains the flag starts clean.
        if new is None or not new.flags & LOG:
            self.dirty.pop(key, None)
        elif old is None or not old.flags & LOG:
            self.dirty[key] = set()
        return rc, change

    def _zap(self, as_id, lo, hi):
        for gfn in [g for g in self.leaves[as_id] if lo <= g < hi]:
            del self.leaves[as_id][gfn]
        for r in [r for r in self.big[as_id]
                  if r * REGION_PAGES < hi and lo < (r + 1) * REGION_PAGES]:
            del self.big[as_id][r]

    # --- KVM_GET_DIRTY_LOG ---

    def get_dirty_log(self, slot):
        """List of bools (npages), or the errno the core raises (kvm_get_dirty_log_protect:
        EINVAL for an as_id or id out of range, ENOENT for no slot or no dirty log)."""
        as_id, id_ = slot >> 16, slot & 0xFFFF
        if as_id >= R.KVM_ADDRESS_SPACE_NUM or id_ >= R.KVM_USER_MEM_SLOTS:
            return R.errno.EINVAL
        s = self.ref.spaces[as_id].get(id_)
        if s is None or not s.flags & LOG:
            return R.errno.ENOENT
        marks = self.dirty.setdefault((as_id, id_), set())
        out = [i in marks for i in range(s.npages)]
        for i in marks:
            gfn = s.base_gfn + i
            leaf = self.leaves[as_id].get(gfn)
            if leaf is not None and leaf[1]:
                self.leaves[as_id][gfn] = (leaf[0], False, leaf[2])
        marks.clear()
        return out

    # --- the table ---

    def table_page_set(self, as_id):
        """Every table page below the root, derived from the leaves: (level, index)."""
        pages = set()
        for gfn in self.leaves[as_id]:
            pages |= {(3, gfn >> 27), (2, gfn >> 18), (1, gfn >> 9)}
        for r in self.big[as_id]:
            gfn = r * REGION_PAGES
            pages |= {(3, gfn >> 27), (2, gfn >> 18)}
        return pages

    def table_pages(self, as_id=0):
        """(L1, L2, L3, L4) as vm.table_pages(as_id) returns them."""
        pages = self.table_page_set(as_id)
        return tuple(sum(1 for lv, _ in pages if lv == level) for level in (1, 2, 3)) + (1,)

    def _entry(self, gfn, as_id):
        """(pfn, writable, level, kind) of gfn's mapping, or None. pfn None: not known yet."""
        e = self.big[as_id].get(gfn >> 9)
        if e is not None:
            kind, pfn, writable = e
            if kind == "shared-pt":      # the leaf is a 4 KiB one, in the host's shared table
                return self.host.allones_pfn, False, 1, kind
            if kind == "allones-huge":
                hp = getattr(self.host, "allones_hugepage", None)
                base = None if hp is None else hp.base_pfn
                return (None if base is None else base + (gfn & 511)), False, 2, kind
            return pfn + (gfn & 511), writable, 2, kind
        leaf = self.leaves[as_id].get(gfn)
        if leaf is not None:
            return leaf[0], leaf[1], 1, leaf[2]
        return None

    def walk(self, gfn, as_id=0):
        """None or (pfn, writable, level), as vm.walk(gfn, as_id) returns it."""
        e = self._entry(gfn, as_id)
        return None if e is None else e[:3]

    def mapped_gfns(self, as_id=0):
        gfns = set(self.leaves[as_id])
        for r in self.big[as_id]:
            gfns.update(range(r * REGION_PAGES, (r + 1) * REGION_PAGES))
        return gfns

    # --- memory ---

    def _mapping_of_pfn(self, pfn):
        for m in self.host.mappings:
            if m.base_pfn <= pfn < m.base_pfn + m.npages:
                return m
        raise AssertionError(f"pfn {pfn:#x} is mapped but no host mapping holds it")

    def _load(self, pfn, kind, off, size):
        if kind in ("allones", "allones-huge", "shared-pt"):
            return (1 << (8 * size)) - 1
        if pfn in self.overlay:
            data = self.overlay[pfn][off:off + size]
        else:
            m = self._mapping_of_pfn(pfn)
            if self.materialize:
                start = (pfn - m.base_pfn) * PAGE + off
                data = bytes(memoryview(m)[start:start + size])
            else:
                fill = self.fill[m.hva] if m.hva in self.fill else getattr(m, "fill", None)
                data = bytes([fill or 0]) * size
        return int.from_bytes(data, "little")

    def _store(self, pfn, kind, off, size, value):
        assert kind in ("mem", "huge"), "a store through a read-only all-ones mapping"
        if not self.materialize:
            return
        if pfn not in self.overlay:
            m = self._mapping_of_pfn(pfn)
            start = (pfn - m.base_pfn) * PAGE
            self.overlay[pfn] = bytearray(memoryview(m)[start:start + PAGE])
        self.overlay[pfn][off:off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def written_pages(self):
        """pfn -> the bytes the last run must have left in that host page."""
        return {pfn: bytes(b) for pfn, b in self.overlay.items()}

    # --- memslot lookup with search_memslots' last-used cache ---

    def _lookup(self, gfn, as_id, st):
        st["memslot_lookups"] += 1
        slots = self.ref.slots(as_id)
        if not slots:
            return None
        c = slots[self.cache[as_id]] if self.cache[as_id] is not None else None
        if c is not None and c.base_gfn <= gfn < c.base_gfn + c.npages:
            st["memslot_cache_hits"] += 1
            return c
        for i, s in enumerate(slots):
            if s.base_gfn <= gfn < s.base_gfn + s.npages:
                self.cache[as_id] = i
                return s
        return None

    # --- installing entries ---

    def _install(self, as_id, st, fn):
        """Run fn() (which adds entries) and count the table pages it allocated/freed."""
        before = self.table_page_set(as_id)
        fn()
        after = self.table_page_set(as_id)
        allocated = len(after - before)
        st["table_pages_allocated"] += allocated
        st["table_pages_freed"] += len(before - after)
        return allocated

    def _put_big(self, as_id, region, entry):
        for g in range(region * REGION_PAGES, (region + 1) * REGION_PAGES):
            self.leaves[as_id].pop(g, None)          # replaces a level-1 table
        self.big[as_id][region] = entry

    def _put_leaf(self, as_id, gfn, entry):
        assert (gfn >> 9) not in self.big[as_id], "a 4 KiB leaf under a level-2 entry"
        self.leaves[as_id][gfn] = entry

    def _map_allones(self, as_id, slot, gfn, st):
        """A read fault in an all-ones slot on an RFC host (spec 3, first case)."""
        end = slot.base_gfn + slot.npages
        whole = self.prefault == "whole-slot"
        gfns = range(slot.base_gfn, end) if whole else [gfn]
        installed = 0

        def fn():
            nonlocal installed
            for g in gfns:
                r = g >> 9
                if (self.allones_map != "4k" and slot.base_gfn <= r * REGION_PAGES
                        and (r + 1) * REGION_PAGES <= end):
                    if r in self.big[as_id]:
                        continue
                    if self.allones_map == "shared-pt":
                        self._put_big(as_id, r, ("shared-pt", None, False))
                        self.used_shared_pt = True
                    else:
                        self._put_big(as_id, r, ("allones-huge", 0, False))
                        self.used_hugepage = True
                    st["mapped_2m"] += 1
                else:
                    if g in self.leaves[as_id]:
                        continue
                    self._put_leaf(as_id, g, (self.host.allones_pfn, False, "allones"))
                    st["mapped_4k"] += 1
                installed += 1

        allocated = self._install(as_id, st, fn)
        if whole:
            st["prefaulted"] += installed - 1
            st["rfc_topup_shortfall"] += max(0, allocated - TOPUP_PAGES)

    def _thp_mapping(self, hva):
        for m in self.host.mappings:
            if m.hva <= hva < m.hva + m.size:
                thp = self.thp.get(m.hva, getattr(m, "thp", False))
                return m if thp else None
        return None

    def _map_memory(self, as_id, slot, gfn, pfn, writable, st):
        """A fault that got a pfn in a slot with memory (spec 3, second case)."""
        r = gfn >> 9
        rbase = r * REGION_PAGES
        huge = False
        if (slot.base_gfn <= rbase and rbase + REGION_PAGES <= slot.base_gfn + slot.npages
                and (slot.base_gfn ^ (slot.userspace_addr >> 12)) & 511 == 0
                and not slot.flags & LOG):
            hva0 = slot.userspace_addr + (rbase - slot.base_gfn) * PAGE
            m = self._thp_mapping(hva0)
            huge = m is not None and hva0 + REGION_PAGES * PAGE <= m.hva + m.size
        if huge:
            entry = ("huge", pfn - (gfn & 511), writable)
            self._install(as_id, st, lambda: self._put_big(as_id, r, entry))
            st["mapped_2m"] += 1
        else:
            self._install(as_id, st, lambda: self._put_leaf(as_id, gfn, (pfn, writable, "mem")))
            st["mapped_4k"] += 1
            if writable and slot.flags & LOG:
                self.dirty.setdefault((as_id, slot.id), set()).add(gfn - slot.base_gfn)

    # --- run ---

    def validate(self, gpas, sizes, is_write, values):
        """The batch checks: ValueError for the whole batch, before anything runs."""
        n = len(gpas)
        if len(sizes) != n or len(is_write) != n or (values is not None and len(values) != n):
            raise ValueError("arrays of different lengths")
        for gpa, size in zip(gpas, sizes):
            gpa, size = int(gpa), int(size)
            if size not in (1, 2, 4, 8):
                raise ValueError(f"size {size}")
            if (gpa & (PAGE - 1)) + size > PAGE:
                raise ValueError(f"gpa {gpa:#x} size {size} crosses a page")
            if gpa >> 12 >= 1 << min(MAX_GFN_BITS, self.host.phys_bits - 12):
                raise ValueError(f"gpa {gpa:#x} beyond the guest's physical address width")

    def run(self, gpas, sizes, is_write, values=None, as_id=0, on_mmio=None, mmio_gfns=None):
        """Run a batch as the spec says; return a RunResult (bad_index set on EFAULT)."""
        self.validate(gpas, sizes, is_write, values)
        n = len(gpas)
        if values is None:
            values = [0] * n
        if mmio_gfns is not None:
            mmio_gfns = {int(g) for g in mmio_gfns}
        st = dict.fromkeys(STAT_NAMES, 0)
        out = [0] * n
        exits, records = [], []
        self.overlay = {}
        for k in range(n):
            gpa, size, w, v = int(gpas[k]), int(sizes[k]), bool(is_write[k]), int(values[k])
            gfn, off = gpa >> 12, gpa & (PAGE - 1)
            ones = (1 << (8 * size)) - 1
            e = self._entry(gfn, as_id)
            if e is not None and (not w or e[1]):
                st["tlb_hits"] += 1
            else:
                st["faults"] += 1
                slot = self._lookup(gfn, as_id, st)
                emulated = mmio = False
                if self.pci_hole and slot is not None and slot.flags & BIT2 and not w:
                    emulated = True
                else:
                    pfn, writable = self.ref.gfn_to_pfn(gfn, w, as_id)
                    if pfn in (R.KVM_PFN_NOSLOT, R.KVM_PFN_ERR_RO_FAULT):
                        mmio = True
                    elif pfn == R.KVM_PFN_ERR_FAULT:
                        self.exit_log.extend(exits)
                        self.record_log.extend(records)
                        return RunResult(out[:k], st, exits, k, records)
                    else:
                        assert not pfn & R.KVM_PFN_ERR_MASK and not pfn & R.KVM_PFN_NOSLOT
                        if slot.flags & BIT2:
                            assert not w and pfn == self.host.allones_pfn
                            self._map_allones(as_id, slot, gfn, st)
                        else:
                            self._map_memory(as_id, slot, gfn, pfn, writable, st)
                        e = self._entry(gfn, as_id)
                        assert e is not None and (not w or e[1])
                if emulated:
                    st["exits_emulated"] += 1
                    e = None
                    out[k] = ones
                    records.append((k, gpa, size, w, out[k]))
                elif mmio:
                    st["exits_mmio"] += 1
                    e = None
                    if on_mmio is not None and (mmio_gfns is None or gfn in mmio_gfns):
                        r = on_mmio(gpa, size, w, v)
                        out[k] = v if w else ones if r is None else int(r)
                    else:
                        out[k] = v if w else ones
                    exits.append((k, gpa, size, w, out[k]))
                    records.append(exits[-1])
            if e is not None:                      # the access on the backing memory
                pfn, _, _, kind = e
                if w:
                    self._store(pfn, kind, off, size, v)
                    out[k] = v
                else:
                    out[k] = self._load(pfn, kind, off, size)
            st["accesses"] += 1
            if w:
                st["writes"] += 1
                st["bytes_written"] += size
            else:
                st["reads"] += 1
                st["bytes_read"] += size
        self.exit_log.extend(exits)
        self.record_log.extend(records)
        return RunResult(out, st, exits, None, records)
