"""Small machines: the RAM a comparison really allocates is sized from the memory available
and shared by the fleets running at once; an unreachable Dask scheduler fails in seconds."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from allones.experiments import fleet
from allones.experiments.compare import ScanSpec, compare
from allones.experiments.fleet import available_memory, default_ram_budget

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = (ScanSpec("firmware", "firmware", "mmconfig", {"passes": 1}),)


def _meminfo(tmp_path, kb: int) -> str:
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       32000000 kB\nMemFree:        1000 kB\nMemAvailable:   {kb} kB\n")
    return str(path)


def test_available_memory_reads_memavailable(tmp_path):
    assert available_memory(_meminfo(tmp_path, 2048), str(tmp_path / "no-cgroup")) == 2048 * 1024


def test_a_cgroup_limit_leaves_less(tmp_path):
    cgroup = tmp_path / "cg"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(f"{300 << 20}\n")
    (cgroup / "memory.current").write_text(f"{100 << 20}\n")
    assert available_memory(_meminfo(tmp_path, 8 << 20), str(cgroup)) == 200 << 20
    (cgroup / "memory.max").write_text("max\n")           # no limit: MemAvailable decides
    assert available_memory(_meminfo(tmp_path, 8 << 20), str(cgroup)) == 8 << 30


def test_nothing_readable_is_unknown(tmp_path):
    assert available_memory(str(tmp_path / "none"), str(tmp_path / "none")) is None


@pytest.mark.parametrize("available, at_once, budget", [
    (None, 1, fleet.RAM_BUDGET), (None, 2, fleet.RAM_BUDGET // 2),
    (64 << 30, 1, fleet.RAM_BUDGET),                      # a big machine: capped
    (2 << 30, 1, 256 << 20), (2 << 30, 4, 64 << 20),      # a small one: an eighth, shared
    (0, 1, 0)])
def test_the_default_budget_is_a_share_of_what_is_available(monkeypatch, available, at_once, budget):
    monkeypatch.setattr(fleet, "available_memory", lambda: available)
    assert default_ram_budget(at_once) == budget


def test_one_worker_does_not_allocate_past_the_default_budget(monkeypatch):
    """workers=1 used to give one fleet the whole 4 GiB: 16 filled VMs allocated for real."""
    monkeypatch.setattr(fleet, "available_memory", lambda: 24 << 30)
    [(_, result)] = compare(["filled"], FIRMWARE, n_vms=8, workers=1)
    assert not result.host["materialized"]          # 8 x 256 MiB > 1 GiB
    assert result.host["data_bytes"] > fleet.RAM_BUDGET            # counted all the same


def test_a_budget_that_fits_allocates_for_real_with_the_same_counts():
    [(_, counted)] = compare(["filled"], FIRMWARE, n_vms=2, workers=1, ram_budget=0)
    [(_, real)] = compare(["filled"], FIRMWARE, n_vms=2, workers=1, ram_budget=1 << 30)
    assert (counted.host["materialized"], real.host["materialized"]) == (False, True)
    drop = ("materialized", "wall_seconds", "setup_seconds", "fill_seconds")
    assert {k: v for k, v in counted.host.items() if k not in drop} == \
           {k: v for k, v in real.host.items() if k not in drop}


@pytest.mark.parametrize("bad", [-1, 1.5, "1G"])
def test_a_bad_budget_is_refused(bad):
    with pytest.raises((TypeError, ValueError), match="ram_budget"):
        compare(["filled"], FIRMWARE, n_vms=1, workers=1, ram_budget=bad)


def test_the_cli_takes_a_size(tmp_path):
    from allones.cli import main
    assert main(["compare", "--vms", "1", "--strategies", "filled", "--workers", "1", "--ram-budget",
                 "512M", "--no-plots", "--out", str(tmp_path)]) == 0
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--ram-budget", "lots", "--out", str(tmp_path)])
    assert exc.value.code == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_scheduler_fails_in_seconds_naming_it(tmp_path):
    pytest.importorskip("distributed")
    address = f"tcp://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "allones", "sweep", str(ROOT / "examples" / "sweep.toml"),
                           "--out", str(tmp_path), "--scheduler", address],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - start < 20          # distributed's own default waits 30 s
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("allones: error: no Dask scheduler answers at " + address), proc.stderr
