"""Type stub for the compiled core (allones/_core.pyx)."""

import enum
from typing import Iterator, NamedTuple

import numpy as np

class Memslot(NamedTuple):
    id: int
    base_gfn: int
    npages: int
    userspace_addr: int
    flags: int

class kvm_mr_change(enum.IntEnum):
    KVM_MR_NONE = 0
    KVM_MR_CREATE = 1
    KVM_MR_DELETE = 2
    KVM_MR_MOVE = 3
    KVM_MR_FLAGS_ONLY = 4

class memslot_rule(enum.IntEnum):
    RULE_OK = 0
    RULE_USER_SLOT_ID = 1
    RULE_FLAGS = 2
    RULE_SIZE_ALIGN = 3
    RULE_GPA_ALIGN = 4
    RULE_NO_MEMORY_HVA = 5
    RULE_ALLONES_EXCLUSIVE = 6
    RULE_HVA_ALIGN = 7
    RULE_ACCESS_OK = 8
    RULE_AS_ID = 9
    RULE_GPA_WRAP = 10
    RULE_NR_PAGES = 11
    RULE_DELETE_MISSING = 12
    RULE_MODIFY_HVA = 13
    RULE_MODIFY_NPAGES = 14
    RULE_MODIFY_READONLY = 15
    RULE_MODIFY_NO_MEMORY = 16
    RULE_OVERLAP = 17
    RULE_MAX_GFN = 18
    RULE_NOMEM = 19

def c_constants() -> dict[str, int]: ...

class Memslots:
    as_id: int
    @property
    def generation(self) -> int: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Memslot]: ...
    def get(self, id: int) -> Memslot | None: ...
    def dirty_bitmap(self, id: int) -> np.ndarray | None: ...
    def lookup(self, gfn: int) -> int: ...
    def gfn_to_memslot(self, gfn: int) -> Memslot | None: ...
    def lookup_batch(self, gfns: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, int]]: ...
    def translate(self, mm: HostMM, gfns: np.ndarray, write_fault: bool) -> tuple[np.ndarray, np.ndarray]: ...
    def gfn_to_hva(self, mm: HostMM, gfn: int) -> int: ...
    def gfn_to_pfn(self, mm: HostMM, gfn: int, write_fault: bool) -> tuple[int, bool]: ...

class HostMapping:
    size: int
    base_pfn: int
    prot: int
    fill: int
    thp: bool
    materialized: bool
    fill_ns: int
    is_alias: bool
    def __init__(self, size: int, base_pfn: int, fill: int | None = None, prot: int = ...,
                 thp: bool = False, materialize: bool = True, *, alias: bool = False) -> None: ...
    @property
    def hva(self) -> int: ...
    @property
    def data_hva(self) -> int: ...
    @property
    def npages(self) -> int: ...
    @property
    def nr_frames(self) -> int: ...
    @property
    def nr_vmas(self) -> int: ...
    @property
    def writable(self) -> bool: ...
    def __buffer__(self, flags: int) -> memoryview: ...

class HostMM:
    def __init__(self, mappings: tuple[HostMapping, ...] = ..., allones: HostMapping | None = None) -> None: ...
    @property
    def mappings(self) -> tuple[HostMapping, ...]: ...
    def hva_to_pfn(self, hva: int, write_fault: bool) -> tuple[int, bool]: ...

class VMCore:
    def _configure(self, pci_hole: bool, phys_bits: int) -> None: ...
    def memslots(self, as_id: int = 0) -> Memslots: ...
    def lookup(self, gfn: int, as_id: int = 0) -> int: ...
    def _set_user_memory_region(self, slot: int, flags: int, guest_phys_addr: int,
                                memory_size: int, userspace_addr: int) -> tuple[int, memslot_rule, int]: ...
