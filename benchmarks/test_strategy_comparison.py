"""The strategy comparison as benchmarks: every strategy (allones.experiments.strategies) ×
the comparison's scans (experiments.compare.DEFAULT_SCANS) × two topologies, one VM each.

Topologies: the q35 default and a farm of 32 root ports, half empty (seed 1). Scans: the
Linux x86 boot under the x86 default mechanism and with MMCONFIG preferred, a brute-force
scan and OVMF's six firmware passes. Each benchmark group is one topology and one scan, its
rows the strategies, so

    python -m pytest benchmarks/test_strategy_comparison.py --benchmark-only --benchmark-group-by=group

reads as the comparison. The plan (which accesses, in order) is made once (fleet.cached_plan);
each round makes a new Host and VM and installs the strategy (untimed), then times
`vmm.replay(plan)`: the guest's scan through faults, exits and emulation.

The filled strategies (filled, filled-thp, filled-ksm) run on accounting hosts
(Host(materialize=False)): their 256 MiB of 0xff per ECAM window is counted, not allocated
and filled, which keeps RAM and setup time down and changes no counter (their slots are
read-only, so guests read 0xff either way). Every other strategy uses real memory.
memfd-alias is skipped where the host refuses its one VMA per hole page (vm.max_map_count),
as `allones compare` reports it.

extra_info: strategy, whether memory was materialized, memslots, hole pages, accesses, host
data bytes (host.nr_frames * 4 KiB: fills, aliases' memfd page, the shared all-ones pages),
stage-2 table bytes, EPT faults (faults that mapped something), pages prefaulted, exits to
userspace (MMIO), in-kernel exits (emulated reads of KVM_MEM_PCI_HOLE slots), port I/O
exits (conf1), and the modeled ECAM and port I/O time in ns (CostModel.default() over
fleet.scan_events, as `allones compare` models them).
"""

import pytest

from allones.constants import PAGE_SIZE
from allones.errors import KvmError
from allones.experiments.compare import DEFAULT_SCANS
from allones.experiments.costmodel import CostModel
from allones.experiments.fleet import cached_plan, scan_events
from allones.experiments.strategies import STRATEGIES
from allones.pci.builders import q35_default, root_port_farm
from allones.pci.holes import MemslotBudgetError

TOPOLOGIES = {"q35": q35_default(), "farm-32": root_port_farm(32, 0.5, seed=1)}
SCANS = {f"{spec.scan}/{spec.mechanism}": spec for spec in DEFAULT_SCANS}
COSTS = CostModel.default()
ROUNDS = 3


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_strategy(benchmark, topology, scan, strategy):
    spec, chosen, topo = SCANS[scan], STRATEGIES[strategy], TOPOLOGIES[topology]
    benchmark.group = f"strategies/{topology}/{spec.label}"
    plan = cached_plan(topo, spec.scan, spec.mechanism, spec.options)

    def fresh():
        host = chosen.make_host(materialize=not chosen.fills)
        return chosen.install(chosen.make_vm(host), topo)

    # The first round's VM, made before the benchmark starts: a setup the host refuses skips
    # here (skipping inside pedantic would leave a benchmark without data, which breaks
    # --benchmark-json and --benchmark-autosave).
    try:
        ready = [fresh()]
    except (KvmError, MemslotBudgetError) as exc:
        pytest.skip(f"{strategy} on {topology}: {exc}")
    made = []

    def setup():
        vmm = ready.pop() if ready else fresh()
        made[:] = [vmm]       # keep the last round's VM only
        return (vmm,), {}

    run = benchmark.pedantic(lambda vmm: vmm.replay(plan), setup=setup, rounds=ROUNDS)
    vmm = made[-1]
    host = vmm.vm.host
    ecam, pio = scan_events(run.stats, run.pio_exits)
    benchmark.extra_info.update(
        strategy=strategy, materialized=host.materialize, memslots=len(vmm.slots),
        hole_pages=vmm.layout.hole_pages, accesses=len(plan),
        data_bytes=host.nr_frames * PAGE_SIZE, table_bytes=sum(vmm.vm.table_pages()) * PAGE_SIZE,
        faults=ecam["ept_faults"], prefaulted=ecam["prefaulted"],
        mmio_exits=ecam["userspace_exits"], kernel_exits=ecam["kernel_exits"],
        pio_exits=run.pio_exits, modeled_ecam_ns=COSTS.modeled_ns(ecam),
        modeled_pio_ns=COSTS.modeled_ns(pio))
    assert run.hole_mismatches == 0 and run.present_mismatches == 0
    # Only present functions exit to userspace, except where nothing backs the holes.
    if chosen.backing != "mmio":
        assert ecam["userspace_exits"] == run.mmio_emulated
