"""The host: which KVM it runs, the VMM's memory, and the one shared all-ones page.

A `Host` is one machine with one KVM module loaded. It owns what the kernel owns once for
all VMs (the RFC's `kvm_allones_pg`, allocated when the host starts, as `kvm_init` does)
and what the VMM maps for its guests (`mmap`). Frames (pfns) are numbered per host.
VMs are made with `allones.VM(host)`.
"""

import operator
import threading
import weakref

from . import _core
from .constants import DEFAULT_MAX_MAP_COUNT, PAGE_SIZE, PROT_READ, PROT_WRITE
from .errors import NoMemory

HPAGE_SIZE = 2 << 20
PAGES_PER_HPAGE = HPAGE_SIZE // PAGE_SIZE

# Where the host's frame numbers start: any value works; this one keeps pfns visibly
# apart from guest frame numbers in output and tests.
FIRST_PFN = 0x100000

BIT2_MEANINGS = ("allones", "pci_hole")


class Host:
    """One host: its kernel build, its memory mappings and the shared all-ones page.

    Args:
        bit2: what flag bit 2 means on this kernel: "allones" (the RFC's KVM_MEM_ALLONES,
            with one shared read-only 0xff page) or "pci_hole" (the v2's KVM_MEM_PCI_HOLE:
            no page; reads are emulated in KVM).
        phys_bits: the host's MAXPHYADDR, 13..48; memslots must end below 1 << phys_bits
            (x86 kvm_mmu_max_gfn()), and a 4-level stage-2 table maps 48 bits.
        materialize: True to back `mmap` with real memory; False for accounting only
            (address space reserved, no RAM; reads give the fill byte, writes are dropped),
            for fleets larger than RAM. Every counter is the same either way.
    """

    def __init__(self, *, bit2: str = "allones", phys_bits: int = 46, materialize: bool = True):
        if bit2 not in BIT2_MEANINGS:
            raise ValueError(f"bit2={bit2!r}: expected one of {BIT2_MEANINGS}")
        phys_bits = _as_int("phys_bits", phys_bits)
        if not 13 <= phys_bits <= 48:
            raise ValueError(f"phys_bits={phys_bits}: expected 13..48")
        self.bit2 = bit2
        self.phys_bits = phys_bits
        if not isinstance(materialize, bool):   # "no" would be true
            raise TypeError(f"materialize must be True or False, not {materialize!r}")
        self.materialize = materialize
        self._next_pfn = FIRST_PFN
        self._mappings: dict[int, _core.HostMapping] = {}
        self._vms = weakref.WeakSet()
        # Serialises what changes or walks stage-2 tables (runs, zaps, munmap's notifier)
        # across this host's VMs: a run never meets a table, or host memory, changed or
        # freed under it. Re-entrant: an exit handler may update memslots or munmap.
        # Lookups and translations need no lock (immutable generations).
        self._lock = threading.RLock()
        self.fill_ns = 0
        # kvm_init(): alloc_page, memset 0xff, vmap PAGE_KERNEL_RO. Here: real memory,
        # filled, then mprotect(PROT_READ), so a write through it faults (SIGSEGV).
        self.allones_page = self._new_mapping(PAGE_SIZE, 0xFF, PROT_READ) if bit2 == "allones" else None
        # Beyond the patch, made on first use by a VM: a shared 2 MiB all-ones page, and one
        # shared level-1 table whose 512 entries map the 0xff page.
        self.allones_hugepage = None
        self.shared_pt_pages = 0
        self.mm = _core.HostMM((), self.allones_page)

    @property
    def pci_hole(self) -> bool:
        """True on a v2 kernel (bit 2 is KVM_MEM_PCI_HOLE)."""
        return self.bit2 == "pci_hole"

    @property
    def allones_hva(self) -> int | None:
        """Address of the shared all-ones page, or None on a v2 host."""
        return self.allones_page.hva if self.allones_page is not None else None

    @property
    def allones_pfn(self) -> int | None:
        """Frame of the shared all-ones page, or None on a v2 host."""
        return self.allones_page.base_pfn if self.allones_page is not None else None

    def _new_mapping(self, size, fill, prot, thp=False, materialize=True,
                     alias=False) -> _core.HostMapping:
        size = _page_multiple("size", size)
        if thp:  # a 2 MiB leaf needs a 2 MiB-aligned pfn
            self._next_pfn = -(-self._next_pfn // PAGES_PER_HPAGE) * PAGES_PER_HPAGE
        mapping = _core.HostMapping(size, self._next_pfn, fill, prot, thp, materialize, alias=alias)
        self._next_pfn += mapping.nr_frames
        return mapping

    def mmap(self, size: int, fill: int | None = None, prot: int = PROT_READ | PROT_WRITE,
             thp: bool = False) -> _core.HostMapping:
        """Map `size` bytes of anonymous memory for the VMM, as mmap(2) does.

        Args:
            size: bytes, a positive multiple of PAGE_SIZE.
            fill: a byte to fill every page with (touching them), or None to leave the
                memory zero and untouched (it costs no RAM until written).
            prot: PROT_READ, or PROT_READ | PROT_WRITE.
            thp: align to 2 MiB and back with transparent huge pages (madvise), so VMs
                can map it with 2 MiB stage-2 entries.

        Returns the HostMapping; its `hva` is the address to pass as `userspace_addr`.
        On an accounting host it has no memory (see `materialize`).
        Raises ValueError for a bad size, fill or prot; MemoryError if mmap fails.
        """
        prot = _as_int("prot", prot)
        with self._lock:   # frame numbers and the published generation change together
            mapping = self._new_mapping(size, fill, prot, bool(thp), self.materialize)
            self.fill_ns += mapping.fill_ns
            self._mappings[mapping.hva] = mapping
            self._publish()
        return mapping

    def mmap_alias(self, size: int, fill: int = 0xFF, prot: int = PROT_READ,
                   max_map_count: int = DEFAULT_MAX_MAP_COUNT) -> _core.HostMapping:
        """Map `size` bytes as aliases of ONE memfd page: the userspace alternative to
        KVM_MEM_ALLONES (memfd_create, write one page of `fill`, then one
        mmap(MAP_SHARED | MAP_FIXED, offset 0) per 4 KiB, to put behind ordinary
        KVM_MEM_READONLY memslots).

        Every page has the same frame (`base_pfn`) and bytes; the host spends one frame on
        it (nr_frames grows by 1) but size / PAGE_SIZE VMAs (nr_vmas): the aliases all map
        file offset 0, so adjacent ones never merge. Kept as one HostMapping (one host_vma);
        munmap(hva) unmaps every alias at once. On an accounting host there is no page:
        reads give `fill`. See HostMapping for the buffer (the one page only).

        Args:
            size: bytes, a positive multiple of PAGE_SIZE: one alias per page.
            fill: the byte the memfd page holds (0xFF: all-ones).
            prot: PROT_READ, or PROT_READ | PROT_WRITE (a write through any alias lands
                in the one page).
            max_map_count: the host's vm.max_map_count sysctl.

        Raises NoMemory (ENOMEM) if the host's VMAs (nr_vmas) plus the new ones would
        exceed max_map_count, as Linux's do_mmap() refuses an mmap once the process has
        too many mappings; nothing changes then. ValueError for a bad size, fill or prot.
        """
        size = _page_multiple("size", size)
        max_map_count = _as_int("max_map_count", max_map_count)
        if not 0 <= max_map_count < 1 << 31:   # the sysctl is an int
            raise ValueError(f"max_map_count={max_map_count} outside 0..2^31-1")
        if fill is None or not 0 <= _as_int("fill", fill) <= 0xFF:
            raise ValueError(f"fill={fill!r} must be a byte value 0..255")
        if prot not in (PROT_READ, PROT_READ | PROT_WRITE):
            raise ValueError(f"prot={prot!r}: PROT_READ, optionally with PROT_WRITE")
        new = size // PAGE_SIZE
        with self._lock:
            have = self.nr_vmas
            if have + new > max_map_count:
                raise NoMemory(f"mmap_alias of {new} pages: {have} VMAs + {new} aliases (one "
                               f"VMA each) would exceed vm.max_map_count={max_map_count} "
                               "(mmap: ENOMEM)", "max_map_count")
            mapping = self._new_mapping(size, fill, prot, False, self.materialize, alias=True)
            self.fill_ns += mapping.fill_ns
            self._mappings[mapping.hva] = mapping
            self._publish()
        return mapping

    def munmap(self, hva: int) -> None:
        """Unmap the whole mapping that starts at hva.

        Memslots that point there stay (as in the kernel); guest accesses through them
        then fail with EFAULT. Readers holding an older snapshot keep the memory alive.
        Raises ValueError if no mapping starts at hva, TypeError if hva is not an integer.
        """
        hva = _as_int("hva", hva)
        with self._lock:
            mapping = self._mappings.pop(hva, None)
            if mapping is None:
                raise ValueError(f"no mapping starts at hva {hva:#x}")
            self._publish()
            for vm in list(self._vms):  # the MMU notifier: no VM keeps a mapping of it
                vm._invalidate_hva_range(mapping.hva, mapping.hva + mapping.size)

    def _publish(self) -> None:
        # A new immutable generation, swapped in whole: translation never sees a half-made one.
        self.mm = _core.HostMM(tuple(self._mappings.values()), self.allones_page)

    @property
    def mappings(self) -> tuple:
        """The VMM's mappings, ascending by hva."""
        return self.mm.mappings

    @property
    def nr_vmas(self) -> int:
        """VMAs of the VMM's mappings, as vm.max_map_count counts them: one per mapping,
        one per page of an alias mapping (mmap_alias). The kernel's all-ones pages are not
        the VMM's; neither are the VMM process's other VMAs (code, heap, stacks), which a
        real process also has."""
        return sum(m.nr_vmas for m in self._mappings.values())

    @property
    def nr_frames(self) -> int:
        """Host data frames in use: every mapped page (one per alias mapping), the shared
        all-ones page, and the shared 2 MiB all-ones page once made."""
        pages = sum(m.nr_frames for m in self._mappings.values())
        pages += 1 if self.allones_page is not None else 0
        return pages + (PAGES_PER_HPAGE if self.allones_hugepage is not None else 0)

    @property
    def fill_seconds(self) -> float:
        """Time the VMM's mmap fills took (real fills only: accounting hosts fill nothing)."""
        return self.fill_ns / 1e9

    def _register_vm(self, vm, allones_map: str) -> None:
        """Know a new VM (for munmap's notifier)."""
        if allones_map != "4k" and self.allones_page is None:
            raise ValueError(f"allones_map={allones_map!r} needs the all-ones page: a bit2='allones' host")
        self._vms.add(vm)

    def _use_shared_pt(self) -> None:
        """A VM installed the first shared-pt entry: the host's one shared table now counts."""
        self.shared_pt_pages = 1

    def _make_allones_hugepage(self) -> None:
        """The shared 2 MiB all-ones page, made when a VM first maps it (real, read-only)."""
        if self.allones_hugepage is None:
            self.allones_hugepage = self._new_mapping(HPAGE_SIZE, 0xFF, PROT_READ, thp=True)

    def hva_to_pfn(self, hva: int, write_fault: bool = False) -> tuple[int, bool]:
        """(pfn, writable) behind a VMM address, or (KVM_PFN_ERR_FAULT, False)."""
        return self.mm.hva_to_pfn(hva, write_fault)

    def __repr__(self):
        return f"Host(bit2={self.bit2!r}, phys_bits={self.phys_bits}, mappings={len(self._mappings)})"


MAX_MAPPING = 1 << 47  # the x86-64 user address space


def _page_multiple(name: str, value) -> int:
    value = _as_int(name, value)
    if value <= 0 or value % PAGE_SIZE or value > MAX_MAPPING:
        raise ValueError(f"{name}={value:#x} must be a positive multiple of {PAGE_SIZE:#x} "
                         f"up to {MAX_MAPPING:#x}")
    return value


def _as_int(name: str, value) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None
