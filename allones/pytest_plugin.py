"""pytest fixtures for your own benchmarks and tests: a ready Host, VMs whose holes are backed
by any strategy, fleets of VMs, and cached scan plans.

Installing allones registers this module as a pytest plugin (entry point `pytest11`, name
`allones`), so the fixtures are there in any test session. Without the installed entry point
(or with PYTEST_DISABLE_PLUGIN_AUTOLOAD set), load it by hand: `pytest -p allones.pytest_plugin`
or `pytest_plugins = ["allones.pytest_plugin"]` in a conftest.py. Do not do both: pytest
refuses a plugin registered twice (under the entry point's name and the module's).

Fixtures:

- `allones_host`: a fresh `allones.Host()` (bit 2 means KVM_MEM_ALLONES, memory materialized).
- `allones_vm_factory`: `make(strategy="allones", topology="q35", *, host=None,
  materialize=None, **vmm_kwargs) -> (vm, vmm)`: a new VM on a new host of the strategy's
  kernel (or on `host`), its topology's holes backed the strategy's way
  (`allones.experiments.strategies`). `strategy` is a name or a Strategy; `topology` a
  `builders.from_spec` spec ("q35", "farm:32:0.5:1", "multi:2", "random:7", a file) or a
  Topology. `materialize=None` counts filled strategies' memory instead of allocating it
  (their slots are read-only, so guests read the same 0xff); other strategies get real
  memory. `vmm_kwargs` go to the Vmm (`first_slot`, `budget`).
- `allones_fleet`: `run(strategy, scan="linux-boot-x86", mechanism="linux-x86-default",
  vms=4, **kw) -> FleetResult`: `experiments.fleet.run_fleet` with `n_vms=vms` (kw: `mix`,
  `seed`, `costs`, `materialize`, `options`, ...): a row per VM and host totals.
- `allones_plan`: `plan(topology="q35", scan="linux-boot-x86", mechanism="linux-x86-default",
  **options) -> ScanResult`: a scan planned once per process (`experiments.fleet.cached_plan`)
  and replayed with `vmm.replay(plan)` as often as you like.

A benchmark of your own (pytest-benchmark), the plan made once and each round on a new VM::

    def test_brute_force_allones(benchmark, allones_vm_factory, allones_plan):
        plan = allones_plan("farm:32:0.5:1", "brute-force", "mmconfig")

        def setup():      # untimed: a new VM with its holes backed
            vm, vmm = allones_vm_factory("allones-prefault", plan.topology)
            return (vmm,), {}

        run = benchmark.pedantic(lambda vmm: vmm.replay(plan), setup=setup, rounds=5)
        assert run.hole_mismatches == 0
        benchmark.extra_info["faults"] = run.stats["faults"]

Importing this module loads the `allones` package (Host, VM) and pytest only: the PCI model
and the experiments are imported when a fixture is first used, so sessions that use none of
these fixtures pay nothing more.
"""

from __future__ import annotations

import pytest

_TOPOLOGIES: dict = {}     # spec -> Topology, so equal specs share one object (and its plans)


def _topology(spec):
    """The Topology for a from_spec spec (one object per spec in this process), or `spec`."""
    if not isinstance(spec, str):
        return spec
    if spec not in _TOPOLOGIES:
        from allones.pci.builders import from_spec
        _TOPOLOGIES[spec] = from_spec(spec)
    return _TOPOLOGIES[spec]


def _strategy(strategy):
    from allones.experiments.strategies import get_strategy
    return get_strategy(strategy) if isinstance(strategy, str) else strategy


@pytest.fixture
def allones_host():
    """A fresh Host: KVM with the RFC (bit 2 is KVM_MEM_ALLONES), real memory."""
    from allones import Host
    return Host()


@pytest.fixture
def allones_vm_factory():
    """make(strategy="allones", topology="q35", *, host=None, materialize=None, **vmm_kwargs)
    -> (vm, vmm): a new VM with the topology's holes backed by the strategy."""

    def make(strategy="allones", topology="q35", *, host=None, materialize=None, **vmm_kwargs):
        chosen = _strategy(strategy)
        if host is None:
            real = not chosen.fills if materialize is None else materialize
            host = chosen.make_host(materialize=real)
        elif materialize is not None:
            raise ValueError("materialize applies to the host the factory makes; not with host=")
        vm = chosen.make_vm(host)
        return vm, chosen.install(vm, _topology(topology), **vmm_kwargs)

    return make


@pytest.fixture
def allones_fleet():
    """run(strategy, scan="linux-boot-x86", mechanism="linux-x86-default", vms=4, **kw)
    -> FleetResult (experiments.fleet.run_fleet with n_vms=vms)."""

    def run(strategy, scan="linux-boot-x86", mechanism="linux-x86-default", vms=4, **kw):
        from allones.experiments.fleet import run_fleet
        return run_fleet(_strategy(strategy), scan, mechanism, n_vms=vms, **kw)

    return run


@pytest.fixture
def allones_plan():
    """plan(topology="q35", scan="linux-boot-x86", mechanism="linux-x86-default", **options)
    -> ScanResult, planned once per (topology, scan, mechanism, options) in this process."""

    def plan(topology="q35", scan="linux-boot-x86", mechanism="linux-x86-default", **options):
        from allones.experiments.fleet import cached_plan
        return cached_plan(_topology(topology), scan, mechanism, options)

    return plan
