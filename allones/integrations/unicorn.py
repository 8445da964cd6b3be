"""Give a Unicorn x86-64 CPU the PCIe ECAM window of an allones `Vmm`.

`EcamWindow(vmm)` maps every ECAM window of the VMM's topology into a `unicorn.Uc`:

- Holes (pages of KVM_MEM_ALLONES memslots) become READ-ONLY guest memory that points at
  shared host memory full of 0xff (`uc.mem_map_ptr(..., UC_PROT_READ, ptr)`), so the guest
  reads them at emulator speed with no callback. Unicorn's cost per mapped region grows
  superlinearly with the number of regions, so a run of holes is mapped in as few regions as
  possible: every 2 MiB-aligned 2 MiB chunk is one region on a shared 2 MiB 0xff buffer (made
  once per window, read-only after filling); the unaligned head and tail of a run are one
  region each on that buffer (`edges="coalesce"`, the default) or one 4 KiB alias of the
  host's shared all-ones page per page (`edges="4k"`, as KVM would map them). Single pages
  mapped on demand alias the host's page (`host.allones_hva`).
- Present functions' pages are `uc.mmio_map` regions whose callbacks call
  `vmm.handle_mmio` (the VMM's config-space emulation): each access is an exit.
- When the holes are mapped is the `policy` (the VM's `prefault` by default):
  "on-demand": an unmapped read faults (UC_HOOK_MEM_READ_UNMAPPED) and maps that one page;
  "whole-slot": the first read of a slot faults and maps the slot's whole run of holes;
  "eager": everything is mapped before the guest runs (no faults).
- Writes to holes are dropped, as KVM does for an all-ones slot (an MMIO exit the VMM
  discards). Unicorn cannot drop a write from a hook: a UC_HOOK_MEM_WRITE_PROT (or
  _WRITE_UNMAPPED) hook that returns True makes Unicorn store the value anyway, through the
  read-only mapping into the shared buffer. So the hook records the write and returns False
  (the emulator stops with UC_ERR_WRITE_PROT / _WRITE_UNMAPPED, RIP at the writing
  instruction), and `run()` (the KVM_RUN loop) emulates the instruction: it swaps the hole's
  region for a scratch copy of all-ones (writable), single-steps the instruction (count=1),
  puts the read-only alias back, refills the scratch with 0xff and resumes. The write lands
  in the scratch and is thrown away; the shared pages never change.

Counters (`stats`), and what in `VM.run(...).stats` (with `on_mmio=vmm.handle_mmio,
mmio_gfns=present gfns`, as `Vmm.mmconfig` runs it) each corresponds to for the same accesses:

- faults: hole faults (reads of unmapped hole pages). VM.run's `faults` also counts every
  MMIO exit (each is a stage-2 fault first), so VM.run's faults == faults + exits_mmio on the
  same policy ("eager" has no hole faults; KVM has no eager policy). A write to an
  all-ones slot exits and maps nothing, in KVM and here.
- pages_mapped: 4 KiB pages of holes mapped -- VM.run's `mapped_4k + 512 * mapped_2m`;
  with whole-slot, VM.run's `prefaulted` == pages_mapped - faults. `regions` counts the
  Unicorn regions that took (not a KVM quantity).
- exits_mmio: accesses that left the emulator for the VMM: present functions' reads and
  writes plus writes to holes -- VM.run's `exits_mmio`.
- exits_emulated: the present functions' accesses `vmm.handle_mmio` emulated (its
  `vmm.mmio_emulated` grows by as much); hole_writes: writes to holes dropped
  (exits_mmio == exits_emulated + hole_writes).
"""

from __future__ import annotations

import bisect
import ctypes
import mmap

from unicorn import (UC_ARCH_X86, UC_ERR_WRITE_PROT, UC_ERR_WRITE_UNMAPPED, UC_HOOK_MEM_READ,
                     UC_HOOK_MEM_READ_UNMAPPED, UC_HOOK_MEM_WRITE_PROT, UC_HOOK_MEM_WRITE_UNMAPPED,
                     UC_MODE_64, UC_PROT_READ, UC_PROT_WRITE, UC_QUERY_ARCH, UC_QUERY_MODE, Uc, UcError)
from unicorn.x86_const import UC_X86_REG_RIP

from ..constants import KVM_MEM_ALLONES, PAGE_SHIFT, PAGE_SIZE

__all__ = ["EcamWindow", "POLICIES", "EDGES", "assemble"]

POLICIES = ("on-demand", "whole-slot", "eager")
EDGES = ("coalesce", "4k")
HPAGE_SIZE = 2 << 20
_PAGE_MASK = ~(PAGE_SIZE - 1)


def _filled_buffer(size: int) -> tuple[mmap.mmap, int]:
    """Anonymous memory of `size` bytes, filled with 0xff; (the mmap, its address)."""
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    ctypes.memset(addr, 0xFF, size)
    return buf, addr


def _mprotect_read(addr: int, size: int) -> None:
    """mprotect(PROT_READ): a stray store through the mapping faults instead of corrupting it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if libc.mprotect(ctypes.c_void_p(addr), ctypes.c_size_t(size), mmap.PROT_READ) != 0:
        raise OSError(ctypes.get_errno(), "mprotect of the shared 2 MiB all-ones buffer failed")


class EcamWindow:
    """A Unicorn CPU's view of a Vmm's ECAM windows (see the module docstring).

    Args:
        vmm: an `allones.vmm.Vmm` with backing "allones" on a materialized Host
            (bit2="allones"): its memslots say where the holes are, its `handle_mmio`
            answers present functions.
        uc: the emulator (default: a new Uc(UC_ARCH_X86, UC_MODE_64)); the caller maps the
            guest's code and RAM, which must not overlap the windows.
        policy: "on-demand", "whole-slot" or "eager"; default the VM's `prefault`.
        edges: how the unaligned ends of hole runs are mapped, "coalesce" or "4k".
        trace: record (address, size) of every guest read in the windows in `reads` (a read
            hook: slows reads of holes down to a callback each).

    Raises TypeError for arguments of the wrong type; ValueError for another backing, a v2
    or accounting host, a bad option, an emulator that is not x86-64, or one that already maps
    memory inside an ECAM window (the emulator is left as it was).
    """

    def __init__(self, vmm, uc: Uc | None = None, *, policy: str | None = None,
                 edges: str = "coalesce", trace: bool = False):
        from ..vmm import Vmm
        if not isinstance(vmm, Vmm):
            raise TypeError(f"vmm must be an allones.vmm.Vmm, not {type(vmm).__name__}")
        if uc is not None and not isinstance(uc, Uc):
            raise TypeError(f"uc must be a unicorn.Uc, not {type(uc).__name__}")
        if uc is not None and (uc.query(UC_QUERY_ARCH), uc.query(UC_QUERY_MODE)) != (UC_ARCH_X86, UC_MODE_64):
            raise ValueError("uc must be an x86-64 emulator: Uc(UC_ARCH_X86, UC_MODE_64)")
        if not isinstance(trace, bool):
            raise TypeError(f"trace must be True or False, not {trace!r}")
        host = vmm.vm.host
        if vmm.backing != "allones" or host.allones_hva is None:
            raise ValueError("EcamWindow needs a Vmm with backing 'allones' on a Host(bit2='allones')")
        if not host.materialize:
            raise ValueError("EcamWindow needs a materialized Host (real memory behind the all-ones page)")
        policy = vmm.vm.prefault if policy is None else policy
        if not isinstance(policy, str) or policy not in POLICIES:
            raise ValueError(f"policy={policy!r}: expected one of {POLICIES}")
        if not isinstance(edges, str) or edges not in EDGES:
            raise ValueError(f"edges={edges!r}: expected one of {EDGES}")
        windows = [(s.window_start, s.window_end) for s in vmm.topology.segments]
        if uc is not None:              # nothing of the caller's may lie in a window
            for begin, end, _ in uc.mem_regions():
                for start, stop in windows:
                    if begin < stop and start <= end:
                        raise ValueError(f"uc already maps [{begin:#x}, {end + 1:#x}), which overlaps the "
                                         f"ECAM window [{start:#x}, {stop:#x})")
        self.vmm, self.vm, self.policy, self.edges = vmm, vmm.vm, policy, edges
        self.uc = Uc(UC_ARCH_X86, UC_MODE_64) if uc is None else uc
        self.page_ptr = host.allones_hva                 # the host's one shared 0xff page
        # Kept alive as long as the window: Unicorn only holds the pointers.
        self._huge, self.huge_ptr = _filled_buffer(HPAGE_SIZE)
        _mprotect_read(self.huge_ptr, HPAGE_SIZE)
        self._scratch, self._scratch_ptr = _filled_buffer(HPAGE_SIZE)
        self.stats = dict(faults=0, pages_mapped=0, regions=0, exits_mmio=0, exits_emulated=0,
                          hole_writes=0)
        self.reads: list[tuple[int, int]] = []
        self._starts: list[int] = []                    # mapped hole regions, sorted
        self._regions: dict[int, tuple[int, int]] = {}  # start -> (size, ptr)
        self._pending = None                            # a hole write waiting for run()
        self.windows = [(s.window_start, s.window_end) for s in vmm.topology.segments]
        self.present, self._hooks = [], []
        try:                            # all or nothing: a failure leaves the emulator as it was
            for gpa in sorted(int(g) << PAGE_SHIFT for g in vmm._present_gfns):
                self.uc.mmio_map(gpa, PAGE_SIZE, self._mmio_read, gpa, self._mmio_write, gpa)
                self.present.append(gpa)
            self._hooks += [
                self.uc.hook_add(UC_HOOK_MEM_READ_UNMAPPED, self._on_read_fault),
                self.uc.hook_add(UC_HOOK_MEM_WRITE_PROT | UC_HOOK_MEM_WRITE_UNMAPPED, self._on_write),
            ]
            if trace:
                for start, end in self.windows:
                    self._hooks.append(self.uc.hook_add(UC_HOOK_MEM_READ, self._on_read, None, start, end - 1))
            if policy == "eager":
                for run in vmm.layout.runs:
                    self._map_run(run.gpa, run.size)
        except BaseException:
            self.close()
            raise

    # -- mapping holes --------------------------------------------------------------------------

    def _map_region(self, start: int, size: int, ptr: int) -> None:
        self.uc.mem_map_ptr(start, size, UC_PROT_READ, ptr)
        bisect.insort(self._starts, start)
        self._regions[start] = (size, ptr)
        self.stats["regions"] += 1
        self.stats["pages_mapped"] += size >> PAGE_SHIFT

    def _map_edge(self, start: int, end: int) -> None:
        if start >= end:
            return
        if self.edges == "coalesce":
            self._map_region(start, end - start, self.huge_ptr)
        else:
            for gpa in range(start, end, PAGE_SIZE):
                self._map_region(gpa, PAGE_SIZE, self.page_ptr)

    def _map_run(self, gpa: int, size: int) -> None:
        """Map a run of holes: 2 MiB-aligned chunks on the 2 MiB buffer, then the edges."""
        end = gpa + size
        first = min(-(-gpa // HPAGE_SIZE) * HPAGE_SIZE, end)     # first 2 MiB boundary
        last = max(end // HPAGE_SIZE * HPAGE_SIZE, first)         # last one
        self._map_edge(gpa, first)
        for chunk in range(first, last, HPAGE_SIZE):
            self._map_region(chunk, HPAGE_SIZE, self.huge_ptr)
        self._map_edge(last, end)

    def _hole_slot(self, gpa: int):
        """The all-ones memslot holding gpa, or None."""
        slot = self.vm.gfn_to_memslot(gpa >> PAGE_SHIFT)
        return slot if slot is not None and slot.flags & KVM_MEM_ALLONES else None

    def _region_of(self, gpa: int) -> int | None:
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i >= 0 and gpa < self._starts[i] + self._regions[self._starts[i]][0]:
            return self._starts[i]
        return None

    # -- hooks ------------------------------------------------------------------------------------

    def _on_read_fault(self, uc, access, address, size, value, data) -> bool:
        slot = self._hole_slot(address)
        if slot is None or self.policy == "eager":
            return False                     # not a hole: UC_ERR_READ_UNMAPPED
        self.stats["faults"] += 1
        if self.policy == "whole-slot":
            self._map_run(slot.base_gfn << PAGE_SHIFT, slot.npages << PAGE_SHIFT)
        else:
            self._map_region(address & _PAGE_MASK, PAGE_SIZE, self.page_ptr)
        return True                          # retry the read: it now hits the mapping

    def _on_write(self, uc, access, address, size, value, data) -> bool:
        if self._hole_slot(address) is None:
            return False
        self.stats["exits_mmio"] += 1
        self.stats["hole_writes"] += 1
        self._pending = (address, size, value)
        return False                         # stop; run() drops the write (see module doc)

    def _on_read(self, uc, access, address, size, value, data) -> None:
        self.reads.append((address, size))

    def _mmio_read(self, uc, offset, size, gpa) -> int:
        self.stats["exits_mmio"] += 1
        self.stats["exits_emulated"] += 1
        value = self.vmm.handle_mmio(gpa + offset, size, False, 0)
        return (1 << 8 * size) - 1 if value is None else int(value)

    def _mmio_write(self, uc, offset, size, value, gpa) -> None:
        self.stats["exits_mmio"] += 1
        self.stats["exits_emulated"] += 1
        self.vmm.handle_mmio(gpa + offset, size, True, value)

    # -- running ----------------------------------------------------------------------------------

    def run(self, begin: int, until: int, timeout: int = 0, count: int = 0) -> None:
        """uc.emu_start(begin, until, timeout, count), dropping writes to holes on the way
        (each costs a stop and a single step). `count` and `timeout` apply per stretch
        between hole writes. Other emulator errors propagate (UcError)."""
        pc = begin
        while True:
            self._pending = None
            try:
                self.uc.emu_start(pc, until, timeout, count)
                return
            except UcError as e:
                if self._pending is None or e.errno not in (UC_ERR_WRITE_PROT, UC_ERR_WRITE_UNMAPPED):
                    raise
            pc = self._drop_write(until)
            if pc == until:
                return

    def _drop_write(self, until: int) -> int:
        """Execute the instruction that wrote a hole against a throwaway all-ones copy."""
        uc, (address, _, _) = self.uc, self._pending
        self._pending = None
        pc = uc.reg_read(UC_X86_REG_RIP)
        start = self._region_of(address)
        if start is not None:
            region_size, ptr = self._regions[start]
            uc.mem_unmap(start, region_size)
        else:
            start, region_size, ptr = address & _PAGE_MASK, PAGE_SIZE, None
        uc.mem_map_ptr(start, region_size, UC_PROT_READ | UC_PROT_WRITE, self._scratch_ptr)
        try:
            uc.emu_start(pc, until, 0, 1)
        finally:
            uc.mem_unmap(start, region_size)
            if ptr is not None:
                uc.mem_map_ptr(start, region_size, UC_PROT_READ, ptr)
            ctypes.memset(self._scratch_ptr, 0xFF, region_size)
        return uc.reg_read(UC_X86_REG_RIP)

    def vm_run_stats(self) -> dict:
        """This window's counters under VM.run's names (see the module docstring)."""
        st = self.stats
        return dict(faults=st["faults"] + st["exits_mmio"], exits_mmio=st["exits_mmio"],
                    mapped_pages=st["pages_mapped"],
                    prefaulted=st["pages_mapped"] - st["faults"] if self.policy == "whole-slot" else 0)

    # -- inspection -------------------------------------------------------------------------------

    def mapped_regions(self) -> list[tuple[int, int]]:
        """(start, size) of the hole regions mapped, ascending."""
        return [(s, self._regions[s][0]) for s in self._starts]

    def close(self) -> None:
        """Remove this window's hooks and mappings from the emulator."""
        for h in self._hooks:
            self.uc.hook_del(h)
        for start in self._starts:
            self.uc.mem_unmap(start, self._regions[start][0])
        for gpa in self.present:
            self.uc.mem_unmap(gpa, PAGE_SIZE)
        self._hooks, self._starts, self._regions, self.present = [], [], {}, []


def assemble(source: str, address: int = 0) -> bytes:
    """x86-64 machine code for `source` (Intel syntax, `;` comments) at `address`, with
    keystone (an optional dependency). Keystone reads `;` as a statement separator, so
    comments are stripped first. Raises keystone.KsError on bad assembly."""
    from keystone import KS_ARCH_X86, KS_MODE_64, Ks

    lines = [line.split(";", 1)[0].rstrip() for line in source.splitlines()]
    encoding, _ = Ks(KS_ARCH_X86, KS_MODE_64).asm("\n".join(l for l in lines if l.strip()), address)
    return bytes(encoding)
