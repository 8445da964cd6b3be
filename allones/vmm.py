"""The userspace side of a VM (the VMM, e.g. QEMU): back the ECAM windows' holes with
memslots, emulate present functions' config space on exits, and run guest scans.

Backings (the experiments layer, allones.experiments.strategies, adds MMU policies on top):
- "mmio": no memslot; every hole access exits to userspace, which answers all-ones;
- "filled": per-VM anonymous memory filled with 0xff in KVM_MEM_READONLY slots (`thp`:
  2 MiB-aligned transparent huge pages, placed so hva and gpa agree modulo 2 MiB);
- "memfd-alias": one 0xff page aliased once per hole page (Host.mmap_alias: one VMA each,
  so it fails past vm.max_map_count) behind KVM_MEM_READONLY slots;
- "allones": KVM_MEM_ALLONES slots (the RFC), on a Host whose bit 2 means that;
- "pci-hole": KVM_MEM_PCI_HOLE slots (the series' v2), on a Host whose bit 2 means that.
Present functions' pages never get a slot: their accesses exit and are emulated here.
Port I/O config cycles (conf1: 0xCF8 then 0xCFC) always exit: two exits per access.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .constants import (DEFAULT_MAX_MAP_COUNT, KVM_MEM_ALLONES, KVM_MEM_READONLY, KVM_USER_MEM_SLOTS,
                        PAGE_SIZE, PROT_READ)
from .errors import NoMemory
from .pci.access import (ACCESS_DTYPE, CONF1, MMCONFIG, ScanResult, SpacesResponder, check_accesses,
                         drive, gpas_of, recorded_answers)
from .pci.config_space import ConfigSpaces
from .pci.ecam import CONFIG_SPACE_SIZE, FN_SHIFT, PciAddressError, _index
from .pci.holes import HoleLayout, hole_layout, present_gfns
from .pci.scans import plan_scan, scan_program
from .pci.topology import Topology
from .vm import VM

BACKINGS = ("mmio", "filled", "memfd-alias", "allones", "pci-hole")
HPAGE_SIZE = 2 << 20
#: A VMM process's own mappings (code, libraries, heap, thread stacks) besides hole aliases:
#: an estimate of a QEMU process's /proc/PID/maps line count, not a measurement. memfd-alias
#: must fit its aliases in vm.max_map_count minus these.
VMM_OTHER_VMAS = 256
REPLAY_CHUNK = 1 << 20      # accesses between two progress calls of a replay (~10 ms each)
PIO_EXITS_PER_CONF1 = 2      # outl(0xCF8) + the 0xCFC access, each KVM_EXIT_IO


@dataclass
class ScanRun:
    """What one scan cost on one VM, split by mechanism.

    `accesses` counts the scan's accesses (see ScanResult.counts); `stats` sums VM.run's
    counters over the MMCONFIG part; `pio_exits` counts conf1's port I/O exits;
    `mmio_emulated` the MMCONFIG exits the VMM emulated for present functions;
    `mismatches` counts reads that returned something other than the plan (or trace)
    expected, for holes and for present functions.
    """

    name: str
    mechanism: str
    backing: str
    accesses: dict
    stats: dict
    pio_exits: int
    mmio_emulated: int
    hole_mismatches: int
    present_mismatches: int
    wall_seconds: float
    values: np.ndarray = field(repr=False, default=None)

    def as_row(self) -> dict:
        """A flat dict for tables and CSV."""
        row = dict(scan=self.name, mechanism=self.mechanism, backing=self.backing)
        row.update(self.accesses)
        row.update({f"kvm_{k}": v for k, v in self.stats.items()})
        row.update(pio_exits=self.pio_exits, mmio_emulated=self.mmio_emulated,
                   hole_mismatches=self.hole_mismatches, present_mismatches=self.present_mismatches,
                   wall_seconds=self.wall_seconds)
        return row


class Vmm:
    """One VM's userspace: its topology's holes backed one way, exits emulated.

    Installing is all or nothing: if a memslot or mapping fails, those already made are
    removed and the error propagates (MemslotBudgetError when the layout needs more slots
    than `budget`).
    """

    def __init__(self, vm: VM, topology: Topology, backing: str = "allones", *,
                 first_slot: int = 1, budget: int | None = None, thp: bool = False):
        if not isinstance(vm, VM):
            raise TypeError(f"vm must be an allones.VM, not {type(vm).__name__}")
        if not isinstance(topology, Topology):
            raise TypeError(f"topology must be a Topology, not {type(topology).__name__}")
        if not isinstance(backing, str) or backing not in BACKINGS:
            raise ValueError(f"unknown backing {backing!r}; one of {', '.join(BACKINGS)}")
        if backing in ("allones", "pci-hole") and vm.host.pci_hole != (backing == "pci-hole"):
            raise ValueError(f"backing {backing!r} needs a Host(bit2={backing.replace('-', '_')!r})")
        if not isinstance(thp, (bool, np.bool_)):
            raise TypeError(f"thp must be True or False, not {thp!r}")
        if thp and backing != "filled":
            raise ValueError("thp applies to the filled backing only")
        first_slot = _index("first_slot", first_slot)
        if not 0 <= first_slot < KVM_USER_MEM_SLOTS:
            raise ValueError(f"first_slot {first_slot} not in 0..{KVM_USER_MEM_SLOTS - 1}")
        if budget is not None:
            budget = _index("budget", budget)
            if budget < 0:
                raise ValueError(f"budget {budget} is negative")
        width = vm.host.phys_bits
        for seg in topology.segments:        # the guest cannot address past MAXPHYADDR
            if seg.window_end > 1 << width:
                raise PciAddressError(f"segment {seg.segment}'s ECAM window [{seg.window_start:#x}, "
                                      f"{seg.window_end:#x}) ends past the guest's {width}-bit "
                                      "physical address width (Host.phys_bits)")
        self.vm, self.topology, self.backing, self.thp = vm, topology, backing, bool(thp)
        limit = KVM_USER_MEM_SLOTS - first_slot      # slot ids must stay below the limit
        self.layout: HoleLayout = hole_layout(topology, limit if budget is None else min(budget, limit))
        self.slots: list[int] = []
        self.mappings: list[int] = []
        self.reset_devices()
        self._present_gfns = present_gfns(topology)
        self.mmio_emulated = 0
        self._install(first_slot)

    def _install(self, first_slot: int) -> None:
        if self.backing == "mmio":
            return
        self._alias_next = None
        try:
            for i, run in enumerate(self.layout.runs):
                hva, flags = 0, KVM_MEM_ALLONES      # the same bit 2 as KVM_MEM_PCI_HOLE
                if self.backing in ("filled", "memfd-alias"):
                    hva, flags = self._map_holes(run), KVM_MEM_READONLY
                self.vm.set_user_memory_region(first_slot + i, flags, run.gpa, run.size, hva)
                self.slots.append(first_slot + i)
        except BaseException:
            self.remove()
            raise

    def _map_holes(self, run) -> int:
        """The VMM memory behind one run of holes; its hva for userspace_addr."""
        host = self.vm.host
        if self.backing == "memfd-alias":
            if self._alias_next is None:
                self._alias_next = self._map_aliases()
            hva, self._alias_next = self._alias_next, self._alias_next + run.size
            return hva
        if self.thp and run.size >= HPAGE_SIZE:
            # Huge stage-2 leaves need hva == gpa modulo 2 MiB (kvm_mmu_max_mapping_level()):
            # start the slot at the matching offset of a 2 MiB-aligned mapping (the offset's
            # pages are filled too: the model's fill touches every page it maps).
            offset = run.gpa % HPAGE_SIZE
            mapping = host.mmap(run.size + offset, fill=0xFF, prot=PROT_READ, thp=True)
            self.mappings.append(mapping.hva)
            return mapping.hva + offset
        else:
            mapping = host.mmap(run.size, fill=0xFF, prot=PROT_READ)
        self.mappings.append(mapping.hva)
        return mapping.hva

    def _map_aliases(self) -> int:
        """One memfd page aliased once per hole page (one VMA each), in this VMM process;
        runs take consecutive parts of it. NoMemory (ENOMEM) past vm.max_map_count."""
        host, pages = self.vm.host, self.layout.hole_pages
        if pages + VMM_OTHER_VMAS > DEFAULT_MAX_MAP_COUNT:
            raise NoMemory(f"memfd-alias needs {pages} VMAs (one per hole page) besides the VMM's "
                           f"~{VMM_OTHER_VMAS}: past vm.max_map_count ({DEFAULT_MAX_MAP_COUNT}); "
                           "mmap fails with ENOMEM", "max_map_count")
        # The limit is per process: other VMMs' aliases on this Host do not count.
        mapping = host.mmap_alias(pages * PAGE_SIZE, max_map_count=host.nr_vmas + pages)
        self.mappings.append(mapping.hva)
        return mapping.hva

    def remove(self) -> None:
        """Delete this VMM's memslots and unmap its memory."""
        for slot in reversed(self.slots):
            self.vm.set_user_memory_region(slot, 0, 0, 0, 0)
        for hva in self.mappings:
            self.vm.host.munmap(hva)
        self.slots, self.mappings = [], []

    # -- exits ------------------------------------------------------------------------------

    def handle_mmio(self, gpa: int, size: int, is_write: bool, value: int):
        """KVM_EXIT_MMIO in an ECAM window: emulate a present function; holes all-ones."""
        for seg in self.topology.segments:
            if seg.window_start <= gpa < seg.window_end:
                # The engine checked the access (size, alignment within the page), so the
                # offset decodes straight to a key (segment << 16 | bus << 8 | devfn) and reg.
                off = gpa - seg.base
                key, reg = seg.segment << 16 | off >> FN_SHIFT, off & (CONFIG_SPACE_SIZE - 1)
                self.mmio_emulated += 1
                if is_write:
                    self.spaces._write_key(key, reg, size, value)
                    return None
                return self.spaces._read_key(key, reg, size)
        return None

    def conf1(self, batch: np.ndarray) -> np.ndarray:
        """Port I/O config cycles (every one exits twice): values read (writes: as written).
        TypeError or ValueError (see check_accesses) for a bad batch or a non-CONF1 access."""
        self._check(batch, CONF1)
        return self._emulate.batch(batch)

    def mmconfig(self, batch: np.ndarray, totals: dict) -> np.ndarray:
        """MMCONFIG accesses through VM.run (present functions' exits emulated here); adds
        the run's counters to `totals`. The batch is checked first (see access())."""
        self._check(batch, MMCONFIG)
        return self._mmconfig(batch, gpas_of(self.topology, batch), _totals(totals))

    def _mmconfig(self, batch, gpas, totals) -> np.ndarray:
        result = self.vm.run(gpas, batch["size"], batch["is_write"], batch["value"],
                             on_mmio=self.handle_mmio, mmio_gfns=self._present_gfns)
        for k, v in result.stats.items():
            totals[k] = totals.get(k, 0) + v
        return result.values

    def _check(self, batch, mech: int) -> None:
        check_accesses(batch, "batch")
        if np.any(batch["mech"] != mech):
            i = int(np.flatnonzero(batch["mech"] != mech)[0])
            raise ValueError(f"batch[{i}]: not a {'CONF1' if mech == CONF1 else 'MMCONFIG'} access "
                             "(Vmm.access() takes both)")

    def access(self, batch: np.ndarray, totals: dict) -> np.ndarray:
        """Any accesses, in order: each run of one mechanism goes in one go.

        The whole batch is checked before any access runs (nothing changes if it is
        refused): TypeError unless a 1-D ACCESS_DTYPE array and `totals` a dict; ValueError
        or PciAddressError for a bad access (check_accesses) or an MMCONFIG access outside
        the topology's windows."""
        totals = _totals(totals)
        return self._access(batch, self._gpas(batch, "batch"), totals)

    def _gpas(self, batch, name: str) -> np.ndarray:
        """Check a batch (check_accesses) and give the ECAM gpa of each MMCONFIG access (0
        for conf1): PciAddressError for one outside the topology's windows."""
        check_accesses(batch, name)
        gpas = np.zeros(len(batch), dtype=np.uint64)
        mmio = batch["mech"] == MMCONFIG
        gpas[mmio] = gpas_of(self.topology, batch[mmio])
        return gpas

    def _access(self, batch, gpas, totals, progress=None) -> np.ndarray:
        """Runs of one mechanism in order, each to its path; with progress(done, total), in
        chunks of REPLAY_CHUNK accesses (in order too: the same result)."""
        values = np.empty(len(batch), dtype=np.uint64)
        if not len(batch):
            return values
        mech = batch["mech"]
        cuts = np.flatnonzero(np.diff(mech)) + 1
        if progress is not None:
            cuts = np.union1d(cuts, np.arange(REPLAY_CHUNK, len(batch), REPLAY_CHUNK))
        for lo, hi in zip([0] + cuts.tolist(), cuts.tolist() + [len(batch)]):
            part = batch[lo:hi]
            values[lo:hi] = (self._mmconfig(part, gpas[lo:hi], totals) if mech[lo] == MMCONFIG
                             else self._emulate.batch(part))
            if progress is not None:
                progress(hi, len(batch))
        return values

    # -- scans ------------------------------------------------------------------------------

    def reset_devices(self) -> None:
        """Config space back to what firmware left (a guest reboot; memslots and mappings stay)."""
        self.spaces = ConfigSpaces(self.topology)
        self._emulate = SpacesResponder(self.spaces)

    def replay(self, scan: ScanResult, name: str | None = None, progress=None) -> ScanRun:
        """Reboot the devices, replay recorded accesses (a plan or a trace) in order, and count
        reads that return other than recorded. progress(done, total): called as accesses are
        replayed."""
        if progress is not None and not callable(progress):
            raise TypeError(f"progress must be callable, not {type(progress).__name__}")
        if not isinstance(scan, ScanResult):
            raise TypeError(f"scan must be a ScanResult (plan_scan(), Trace.as_scan()), not "
                            f"{type(scan).__name__}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, not {type(name).__name__}")
        gpas = self._gpas(scan.accesses, "scan.accesses")      # checked before the devices reboot
        start, emulated, totals = time.perf_counter(), self.mmio_emulated, {}
        self.reset_devices()
        values = self._access(scan.accesses, gpas, totals, progress)
        return self._result(scan.name if name is None else name, scan, values, totals, start, emulated)

    def _result(self, name, scan, values, totals, start, emulated) -> ScanRun:
        reads = scan.accesses["is_write"] == 0
        wrong = reads & (values != scan.accesses["value"])
        holes = scan.hole_mask()
        return ScanRun(name, scan.mechanism, self.backing, scan.counts(), totals,
                       PIO_EXITS_PER_CONF1 * int(np.count_nonzero(scan.accesses["mech"] == CONF1)),
                       self.mmio_emulated - emulated, int(np.count_nonzero(wrong & holes)),
                       int(np.count_nonzero(wrong & ~holes)), time.perf_counter() - start, values)

    def run_scan(self, name: str, mechanism: str = "linux-x86-default", seed: int = 0,
                 reactive: bool = False, **options) -> ScanRun:
        """Reboot the devices and run a named scan on this VM. By default the scan is planned
        against the topology (what a correct VMM answers) and replayed; `reactive=True` feeds
        the scan program the values the VM really returns, access by access (slower; the same
        result unless the VM answers wrongly, which the default reports as mismatches)."""
        if not isinstance(reactive, (bool, np.bool_)):
            raise TypeError(f"reactive must be True or False, not {reactive!r}")
        if not reactive:
            return self.replay(plan_scan(self.topology, name, mechanism, seed, **options))
        _, program = scan_program(self.topology, name, mechanism, seed, **options)   # checks first
        start, emulated, totals = time.perf_counter(), self.mmio_emulated, {}
        self.reset_devices()
        got = drive(program, _VmResponder(self, totals))
        expected = ScanResult(name, mechanism, self.topology, recorded_answers(self.topology, got))
        return self._result(name, expected, got["value"], totals, start, emulated)


def _totals(totals) -> dict:
    if not isinstance(totals, dict):
        raise TypeError(f"totals must be a dict (counters are added to it), not {type(totals).__name__}")
    return totals


class _VmResponder:
    """Answers a reactive scan through the VM (MMCONFIG) and the port I/O handler (conf1)."""

    def __init__(self, vmm: Vmm, totals: dict):
        self.vmm, self.totals = vmm, totals

    def one(self, a: tuple) -> int:
        if a[7] == CONF1:
            return self.vmm._emulate.one(a)
        batch = np.array([a], dtype=ACCESS_DTYPE)
        return int(self.vmm._mmconfig(batch, gpas_of(self.vmm.topology, batch), self.totals)[0])

    def batch(self, batch: np.ndarray) -> np.ndarray:
        return self.vmm.access(batch, self.totals)
