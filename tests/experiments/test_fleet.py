"""Fleets: per-VM rows, host totals, memory as VMs are added, KSM, modeled time."""

import pytest

from allones.constants import PAGE_SIZE
from allones.experiments.costmodel import CostModel
from allones.experiments.fleet import run_fleet, topology_mix
from allones.pci.holes import hole_layout

MIX = ("q35",)


def fleet(strategy, n, **kw):
    return run_fleet(strategy, "brute-force", "mmconfig", n_vms=n, mix=MIX, **kw)


def test_topology_mix_is_seeded_and_mixed():
    a, b = topology_mix(16, seed=3), topology_mix(16, seed=3)
    assert [t.name for t in a] == [t.name for t in b]
    assert len({t.name for t in a}) > 1
    assert [t.name for t in topology_mix(16, seed=4)] != [t.name for t in a]


@pytest.mark.parametrize("n", [1, 3])
def test_allones_data_memory_is_one_page_per_host_whatever_the_fleet(n):
    result = fleet("allones", n)
    assert result.host["data_bytes"] == PAGE_SIZE and result.memory_curve == [PAGE_SIZE] * n


def test_filled_memory_is_hole_pages_per_vm():
    holes = hole_layout(topology_mix(1, MIX)[0]).hole_pages
    result = fleet("filled", 3, materialize=False)
    assert [r["data_bytes"] for r in result.rows] == [holes * PAGE_SIZE] * 3
    assert result.host["data_bytes"] == 3 * holes * PAGE_SIZE + PAGE_SIZE
    assert result.memory_curve == [k * holes * PAGE_SIZE + PAGE_SIZE for k in (1, 2, 3)]
    assert not result.host["materialized"]


def test_ksm_merges_every_filled_page_into_one_in_the_time_ksmd_takes():
    costs = CostModel.default()
    result = fleet("filled-ksm", 2, materialize=False, costs=costs)
    filled = result.host["pages_filled"]
    assert result.host["data_bytes_merged"] == result.host["data_bytes"] - (filled - 1) * PAGE_SIZE
    assert result.host["ksm_merge_seconds"] == pytest.approx(costs.ksm_merge_seconds(filled))


def test_modeled_time_is_events_times_costs():
    costs = CostModel.default()
    row = fleet("mmio", 1, costs=costs).rows[0]
    assert row["modeled_ecam_ns"] == pytest.approx(row["mmio_exits"] * costs.exit_to_userspace_ns)
    assert row["modeled_pio_ns"] == 0 and row["modeled_scan_ns"] == row["modeled_ecam_ns"]


def test_port_io_is_costed_separately_and_strategies_do_not_change_it():
    rows = {s: run_fleet(s, "linux-boot-x86", "linux-x86-default", n_vms=1, mix=MIX).rows[0]
            for s in ("mmio", "allones", "filled")}
    assert len({r["modeled_pio_ns"] for r in rows.values()}) == 1
    assert all(r["pio_exits"] > 0 for r in rows.values())


def test_bad_fleet_size_is_refused():
    with pytest.raises(ValueError):
        fleet("allones", 0)


@pytest.mark.parametrize("kwargs, error", [(dict(mix="q35"), ValueError), (dict(mix=()), ValueError),
                                           (dict(costs={"x": 1}), TypeError)])
def test_bad_fleet_arguments_are_refused(kwargs, error):
    with pytest.raises(error):
        run_fleet("allones", "brute-force", "mmconfig", n_vms=1, **kwargs)
    with pytest.raises(TypeError):
        run_fleet(3, "brute-force", "mmconfig", n_vms=1)


def test_filled_fleets_past_the_ram_budget_are_counted_not_allocated():
    result = run_fleet("filled", "firmware", "mmconfig", n_vms=2, mix=("multi:2",), ram_budget=256 << 20)
    assert not result.host["materialized"]
