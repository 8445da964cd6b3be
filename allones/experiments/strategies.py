"""The ways to back PCI holes, as one small interface: a strategy says what the host kernel
is (the meaning of memslot flag bit 2), how the VMM backs the holes, and the VM's MMU policy.

| name | host bit 2 | backing | MMU policy |
|---|---|---|---|
| mmio | allones | none: every hole access exits to userspace | - |
| pci-hole | pci_hole | KVM_MEM_PCI_HOLE slots (the series' v2): reads emulated in KVM | - |
| filled | allones | per-VM 0xff memory, READONLY slots | 4 KiB faults |
| filled-thp | allones | the same on 2 MiB transparent huge pages | 2 MiB leaves where aligned |
| filled-ksm | allones | filled, then KSM merges the identical pages (see fleet.py) | 4 KiB faults |
| memfd-alias | allones | one 0xff memfd page aliased per hole page, READONLY slots | 4 KiB faults |
| allones | allones | KVM_MEM_ALLONES slots (the RFC) | 4 KiB, on demand |
| allones-prefault | allones | the same | the whole slot at its first fault |
| allones-sharedpt | allones | the same | one shared last-level table of 0xff entries |
| allones-hugepage | allones | the same | a shared 2 MiB all-ones page where aligned |
"""

from __future__ import annotations

from dataclasses import dataclass

from ..host import BIT2_MEANINGS, Host
from ..pci.topology import Topology
from ..vm import ALLONES_MAPS, PREFAULT_POLICIES, VM
from ..vmm import BACKINGS, Vmm


@dataclass(frozen=True)
class Strategy:
    """One way to back the holes: host kernel, VMM backing, VM MMU policy."""

    name: str
    backing: str
    bit2: str = "allones"
    prefault: str = "on-demand"
    allones_map: str = "4k"
    thp: bool = False
    ksm: bool = False
    doc: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Strategy name {self.name!r} is not a non-empty str")
        for what, value, allowed in (("backing", self.backing, BACKINGS), ("bit2", self.bit2, BIT2_MEANINGS),
                                     ("prefault", self.prefault, PREFAULT_POLICIES),
                                     ("allones_map", self.allones_map, ALLONES_MAPS)):
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(f"strategy {self.name!r}: {what} {value!r} is not one of {', '.join(allowed)}")
        for what in ("thp", "ksm"):
            if not isinstance(getattr(self, what), bool):
                raise TypeError(f"strategy {self.name!r}: {what} must be True or False, "
                                f"not {getattr(self, what)!r}")
        if self.backing in ("allones", "pci-hole") and self.bit2 != self.backing.replace("-", "_"):
            raise ValueError(f"strategy {self.name!r}: backing {self.backing!r} needs "
                             f"bit2={self.backing.replace('-', '_')!r}, not {self.bit2!r}")
        if (self.thp or self.ksm) and self.backing != "filled":
            raise ValueError(f"strategy {self.name!r}: thp and ksm apply to the filled backing only")

    @property
    def fills(self) -> bool:
        """The VMM fills memory with 0xff for each VM (setup time and per-VM memory)."""
        return self.backing == "filled"

    def make_host(self, materialize: bool = True) -> Host:
        """A host whose kernel carries the series this strategy needs."""
        if not isinstance(materialize, bool):
            raise TypeError(f"materialize must be True or False, not {materialize!r}")
        return Host(bit2=self.bit2, materialize=materialize)

    def make_vm(self, host: Host) -> VM:
        """A VM with this strategy's MMU policy."""
        return VM(host, prefault=self.prefault, allones_map=self.allones_map)

    def install(self, vm: VM, topology: Topology, **kwargs) -> Vmm:
        """The VMM side: the topology's holes backed this way (all or nothing)."""
        return Vmm(vm, topology, self.backing, thp=self.thp, **kwargs)


STRATEGIES = {s.name: s for s in (
    Strategy("mmio", "mmio", doc="no memslot: every hole access exits to userspace"),
    Strategy("pci-hole", "pci-hole", bit2="pci_hole",
             doc="the series' v2: reads emulated inside KVM, no mapping"),
    Strategy("filled", "filled", doc="per-VM memory filled with 0xff, READONLY slots"),
    Strategy("filled-thp", "filled", thp=True, doc="filled, on 2 MiB transparent huge pages"),
    Strategy("filled-ksm", "filled", ksm=True, doc="filled, merged by KSM over time"),
    Strategy("memfd-alias", "memfd-alias",
             doc="one 0xff memfd page aliased per hole page behind READONLY slots"),
    Strategy("allones", "allones", doc="the RFC: KVM_MEM_ALLONES, one shared page, 4 KiB faults"),
    Strategy("allones-prefault", "allones", prefault="whole-slot",
             doc="the RFC + the follow-up: map the whole slot at its first fault"),
    Strategy("allones-sharedpt", "allones", allones_map="shared-pt",
             doc="beyond the RFC: one shared last-level table of all-ones entries"),
    Strategy("allones-hugepage", "allones", allones_map="hugepage",
             doc="beyond the RFC: one shared 2 MiB all-ones page where slots are aligned"),
)}


def get_strategy(name: str) -> Strategy:
    """The named strategy (ValueError listing the names otherwise; TypeError for a name
    that is not a str)."""
    if not isinstance(name, str):
        raise TypeError(f"a strategy name must be a str, not {type(name).__name__}")
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; one of {', '.join(STRATEGIES)}") from None
