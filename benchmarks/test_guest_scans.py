"""Realistic guest scans replayed on a fresh VM: the guest side (allones.pci) and the VMM
(allones.vmm) over the engine.

Scans: `linux-boot-x86` (what a Linux 6.1 x86-64 guest does at boot, Intel vCPU) under the
x86 default mechanism (conf1 below 0x100: only extended registers use the ECAM window) and
with MMCONFIG preferred; `linux-probe` and `brute-force` under MMCONFIG. Topologies: the q35
default and a farm of 32 root ports, half empty. Hole backings: `filled`, `allones`, and
`allones` with the whole-slot prefault. The plan (which accesses, in order) is made once in
setup; each round installs the holes on a new VM (untimed) and times the replay.
extra_info carries the counts (memslots, faults, exits, data and table memory).
Run: python -m pytest benchmarks/test_guest_scans.py --benchmark-only --benchmark-group-by=group
"""

import pytest

import allones
from allones.constants import PAGE_SIZE
from allones.pci.builders import q35_default, root_port_farm
from allones.pci.scans import plan_scan
from allones.vmm import Vmm

TOPOLOGIES = {"q35": q35_default(), "farm-32": root_port_farm(32, 0.5, seed=1)}
SCANS = {
    "linux-boot-x86": "linux-x86-default",
    "linux-boot-x86/mmconfig": "mmconfig",
    "linux-probe": "mmconfig",
    "brute-force": "mmconfig",
}
BACKINGS = {"filled": ("filled", "on-demand"), "allones": ("allones", "on-demand"),
            "allones-whole-slot": ("allones", "whole-slot")}
PLANS = {}


def plan(topology, scan):
    key = (topology, scan)
    if key not in PLANS:
        PLANS[key] = plan_scan(TOPOLOGIES[topology], scan.split("/")[0], SCANS[scan])
    return PLANS[key]


@pytest.mark.parametrize("backing", BACKINGS)
@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_scan(benchmark, topology, scan, backing):
    benchmark.group = f"guest_scan/{topology}/{scan}"
    planned = plan(topology, scan)
    made = []

    def setup():
        host = allones.Host()
        kind, prefault = BACKINGS[backing]
        made.append(Vmm(allones.VM(host, prefault=prefault), TOPOLOGIES[topology], kind))
        return (made[-1],), {}

    run = benchmark.pedantic(lambda vmm: vmm.replay(planned), setup=setup, rounds=3)
    vmm = made[-1]
    k = run.stats
    benchmark.extra_info.update(
        backing=backing, memslots=len(vmm.slots), accesses=len(planned),
        mmconfig_hole_reads=run.accesses["mmconfig_hole_reads"],
        conf1_accesses=run.accesses["conf1_reads"] + run.accesses["conf1_writes"],
        pio_exits=run.pio_exits, faults=k.get("faults", 0), prefaulted=k.get("prefaulted", 0),
        mmio_exits=k.get("exits_mmio", 0), data_bytes=vmm.vm.host.nr_frames * PAGE_SIZE,
        table_bytes=sum(vmm.vm.table_pages()) * PAGE_SIZE)
    assert run.hole_mismatches == 0 and run.present_mismatches == 0
    assert k.get("exits_mmio", 0) == run.mmio_emulated     # only present functions exit
