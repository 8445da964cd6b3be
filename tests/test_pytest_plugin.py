"""The pytest plugin (allones.pytest_plugin): a user's test file, run by pytester in a
subprocess, uses every fixture; the plugin is declared as a pytest11 entry point.

The subprocess loads the plugin by hand (-p allones.pytest_plugin) with entry-point autoload
off, so the test means the same whether or not an installed allones declares the entry point
(pytest refuses a plugin loaded both ways).
"""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent     # the source tree: pyproject.toml, allones/

USER_TESTS = '''
import pytest


def test_host(allones_host):
    assert allones_host.bit2 == "allones" and allones_host.materialize
    assert allones_host.nr_frames == 1          # the shared all-ones page only


@pytest.mark.parametrize("strategy", ["allones", "allones-prefault", "mmio", "pci-hole", "filled"])
def test_vm_reads_all_ones_at_a_hole(allones_vm_factory, strategy):
    vm, vmm = allones_vm_factory(strategy, "q35")
    hole = vmm.topology.segment(0).gpa(200, 0, 0)       # no bus 200 on q35
    assert vm.read(hole, 4) == 0xFFFFFFFF
    mch = vmm.topology.segment(0).gpa(0, 0, 0)          # present: exits to the VMM
    assert vm.run([mch], 2, on_mmio=vmm.handle_mmio).values[0] == 0x8086
    assert len(vmm.slots) == (0 if strategy == "mmio" else vmm.layout.nr_memslots)
    assert vm.host.materialize == (strategy != "filled")


def test_vm_factory_options(allones_vm_factory, allones_host):
    vm, vmm = allones_vm_factory("allones", "farm:8:0.5", host=allones_host, first_slot=10)
    assert vm.host is allones_host and vmm.slots[0] == 10
    assert vmm.topology.name == "farm-8"
    with pytest.raises(ValueError, match="unknown strategy"):
        allones_vm_factory("nonesuch")


def test_fleet(allones_fleet):
    result = allones_fleet("allones", vms=2)
    assert len(result.rows) == 2 and result.host["vms"] == 2
    assert result.scan == "linux-boot-x86" and result.mechanism == "linux-x86-default"
    assert result.host["hole_mismatches"] == 0 and result.host["modeled_scan_ns"] > 0


def test_plan(allones_plan, allones_vm_factory):
    plan = allones_plan("q35", "brute-force", "mmconfig")
    assert plan is allones_plan("q35", "brute-force", "mmconfig")      # cached
    assert len(plan) == 256 * 32 * 8                                     # every function's ID
    vm, vmm = allones_vm_factory("allones-prefault", plan.topology)
    run = vmm.replay(plan)
    assert run.hole_mismatches == 0 and run.present_mismatches == 0


def test_a_users_benchmark(benchmark, allones_vm_factory, allones_plan):
    plan = allones_plan("farm:8:0.5:1", "linux-boot-x86", "mmconfig")

    def setup():
        return (allones_vm_factory("allones", plan.topology)[1],), {}

    run = benchmark.pedantic(lambda vmm: vmm.replay(plan), setup=setup, rounds=2)
    assert run.hole_mismatches == 0
'''


def _env(pytester, monkeypatch):
    """allones importable from the subprocess (installed or not); no plugin autoload."""
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + (os.pathsep + path if path else ""))
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


def test_fixtures_in_a_users_tests(pytester, monkeypatch):
    _env(pytester, monkeypatch)
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "allones.pytest_plugin", "-p", "pytest_benchmark.plugin", "--benchmark-disable",
        "-p", "no:cacheprovider")
    result.assert_outcomes(passed=10)


def test_fixtures_listed(pytester, monkeypatch):
    _env(pytester, monkeypatch)
    result = pytester.runpytest_subprocess("-p", "allones.pytest_plugin", "--fixtures")
    for name in ("allones_host", "allones_vm_factory", "allones_fleet", "allones_plan"):
        result.stdout.fnmatch_lines([f"{name} -- *pytest_plugin.py:*"])


def test_import_is_light():
    """Importing the plugin loads neither the PCI model nor the experiments."""
    code = ("import sys, allones.pytest_plugin; print(sorted(m for m in sys.modules "
            "if m.startswith(('allones.pci', 'allones.experiments', 'allones.vmm'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_entry_point_declared():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"allones": "allones.pytest_plugin"}


def test_installed_entry_point_loads_the_plugin(pytester, monkeypatch):
    """Where allones is installed with the entry point, pytest loads the plugin by itself."""
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    eps = importlib.metadata.entry_points(group="pytest11", name="allones")
    if not eps:
        pytest.skip("allones is not installed with its pytest11 entry point (pip install -e .)")
    assert next(iter(eps)).value == "allones.pytest_plugin"
    result = pytester.runpytest_subprocess("--fixtures")
    result.stdout.fnmatch_lines(["allones_vm_factory*"])
