"""The `allones` command."""

import io

from allones import cli


def test_demo_prints_translations():
    out = io.StringIO()
    assert cli.demo(out) == 0
    text = out.getvalue()
    assert "KVM_CAP_ALLONES_MEM = 1" in text
    assert "write gpa 0x0b0000000 00:00.0 (hole)  -> MMIO exit (KVM_PFN_NOSLOT)" in text
    assert "all 0xff: True, read-only: True" in text


def test_main_runs_demo(capsys):
    assert cli.main(["demo"]) == 0
    assert "memslot 1" in capsys.readouterr().out
