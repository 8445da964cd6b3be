"""The `allones` command."""

import io

from allones import cli


def test_demo_prints_translations_and_the_scan_table():
    out = io.StringIO()
    assert cli.demo(out) == 0
    text = out.getvalue()
    assert "write gpa 0x0b0000000 00:00.0 (hole)  -> MMIO exit (KVM_PFN_NOSLOT)" in text
    assert "allones whole-slot" in text


def test_scan_costs_show_the_patch_claims():
    """allones: one page of data (the shared one) instead of 256 MiB; whole-slot: one fault."""
    filled, ones, whole = (cli.scan_costs(n) for n in ("filled", "allones", "allones whole-slot"))
    assert filled["data_kib"] == 256 * 1024 + 4 and ones["data_kib"] == 4
    assert ones["faults"] == 65536 and whole["faults"] == 1 and whole["prefaulted"] == 65535
    mmio, v2 = cli.scan_costs("mmio"), cli.scan_costs("pci-hole (v2)")
    # compare's names: an access that exits took no fault that mapped a page
    assert (mmio["faults"], mmio["exits_user"], mmio["exits_kvm"]) == (0, 65536, 0)
    assert (v2["faults"], v2["exits_user"], v2["exits_kvm"]) == (0, 0, 65536)
    assert ones["exits_user"] == whole["exits_user"] == 0


def test_main_runs_demo(capsys):
    assert cli.main(["demo"]) == 0
    assert "Brute-force scan" in capsys.readouterr().out
