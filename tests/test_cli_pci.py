"""The `allones` command's PCI subcommands: topology show, scan, trace import."""

import re
from pathlib import Path

import numpy as np
import pytest

from allones.cli import main
from allones.pci.access import MMCONFIG
from allones.pci.builders import q35_default
from allones.pci.scans import plan_scan
from allones.pci.traces import parse_csv, parse_qemu_trace

REAL = Path(__file__).resolve().parent / "data" / "q35-ovmf-default"
LOG, INFO_PCI = REAL / "qemu-trace.log.gz", REAL / "info_pci.txt"
SMALL_CSV = Path(__file__).resolve().parent / "data" / "small.csv"


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def field(out, label):
    """The first number after `label` in the output."""
    return int(re.search(re.escape(label) + r"\s+(\d+)", out).group(1))


def test_topology_show_default(capsys):
    rc, out, err = run(capsys, "topology", "show")
    assert rc == 0 and err == ""
    assert "segment 0000: ECAM 0xb0000000..0xbfffffff, buses 00-ff" in out
    assert "00:02.3 [1b36:000c] PCI bridge (pcie-root-port, root port, multifunction, buses 04-04)" in out
    assert "bus 04 (empty)" in out
    assert out.rstrip().endswith("12 present functions; 65524 hole pages in 8 memslots")


def test_topology_show_farm(capsys):
    rc, out, _ = run(capsys, "topology", "show", "-t", "farm:4")
    assert rc == 0
    assert out.count("pcie-root-port") == 4 and out.count("(empty)") == 2
    assert "11 present functions; 65525 hole pages in" in out


def test_topology_show_smaller_window(capsys):
    rc, out, _ = run(capsys, "topology", "show", "--ecam-buses", "16")
    assert rc == 0 and "buses 00-0f" in out
    assert f"12 present functions; {16 * 256 - 12} hole pages" in out


def test_scan_linux_boot_reports_the_plans_counts(capsys):
    rc, out, err = run(capsys, "scan", "linux-boot-x86")
    assert rc == 0 and err == ""
    counts = plan_scan(q35_default(), "linux-boot-x86").counts()
    assert "scan linux-boot-x86, mechanism linux-x86-default, holes backed by allones" in out
    assert field(out, "accesses") == counts["accesses"]
    assert field(out, "conf1     reads") == counts["conf1_reads"]
    assert field(out, "exit PIO") == 2 * (counts["conf1_reads"] + counts["conf1_writes"])
    assert "topology q35: 12 functions, 8 hole memslots" in out
    assert "holes 0, present 0" in out


def test_scan_brute_force_farm_filled(capsys):
    rc, out, _ = run(capsys, "scan", "brute-force", "-t", "farm:4", "-b", "filled")
    assert rc == 0
    assert "scan brute-force, mechanism mmconfig, holes backed by filled" in out
    assert field(out, "accesses") == 65536
    assert "exit user 11 (11 to present functions)" in out
    assert "holes 0, present 0" in out


def test_scan_options_reach_the_scan(capsys):
    """--cpu amd-k8 adds the GART scans; --last-bus 10 cuts the peer-bridge scan."""
    _, intel, _ = run(capsys, "scan", "linux-boot-x86", "--last-bus", "10")
    _, k8, _ = run(capsys, "scan", "linux-boot-x86", "--cpu", "amd-k8", "--last-bus", "10")
    expected = plan_scan(q35_default(), "linux-boot-x86", cpu="amd-k8", last_bus=10).counts()["accesses"]
    assert field(k8, "accesses") == expected > field(intel, "accesses")


def test_reactive_scan_prints_the_same_counts(capsys):
    _, planned, _ = run(capsys, "scan", "linux-probe")
    _, reactive, _ = run(capsys, "scan", "linux-probe", "--reactive")
    assert planned == reactive and "holes 0, present 0" in planned


def test_trace_import_kernel_part_writes_csv(capsys, tmp_path):
    out_csv = tmp_path / "kernel.csv"
    rc, out, err = run(capsys, "trace", "import", str(LOG), "-t", str(INFO_PCI), "--part", "kernel",
                       "--csv", str(out_csv))
    assert rc == 0 and err == ""
    assert "30159 config accesses; the kernel starts at access 3993" in out
    assert field(out, "accesses") == 26166
    assert "reads answered differently from expected: holes 0" in out
    written = parse_csv(out_csv).accesses
    kernel = parse_qemu_trace(LOG).part("kernel")
    assert len(written) == 68
    assert np.array_equal(written, kernel[kernel["mech"] == MMCONFIG])


@pytest.mark.parametrize("argv, says", [
    (["topology", "show", "-t", "nosuch:1"], "No such file"),
    (["topology", "show", "-t", "farm:4:2"], "empty_fraction 2.0 not in [0, 1]"),
    (["scan", "linux-probe", "-t", "farm:999"], "999 root ports do not fit"),
    (["trace", "import", "/nonexistent/trace.log"], "/nonexistent/trace.log"),
    (["trace", "import", str(SMALL_CSV), "-t", "q35", "--part", "kernel"], "no kernel part"),
    (["scan", "brute-force", "--cpu", "intel"], "takes no option cpu"),
])
def test_errors_return_1_with_a_message(capsys, argv, says):
    rc, out, err = run(capsys, *argv)
    assert rc == 1
    assert err.startswith("allones: error: ") and says in err
