"""The `allones` command as people use it: complete help, --json, every strategy in `scan`,
compare's --topology and --scans, tables that fit a terminal, progress on stderr."""

import argparse
import io
import json
import subprocess
import sys

import pytest
from rich.console import Console

from allones import cli, progress
from allones.experiments import report
from allones.experiments.compare import SCAN_NAMES
from allones.experiments.strategies import STRATEGIES
from allones.pci.scans import SCANS


def _actions(parser, path=("allones",)):
    """Every (command path, argparse action) of the parser and its subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, path + (name,))
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_argument_has_help_that_gives_its_default():
    missing = []
    for path, action in _actions(cli._parser()):
        if isinstance(action, argparse._VersionAction):
            continue
        text = action.help or ""
        if not text:
            missing.append((path, action.dest, "no help"))
        elif action.option_strings and action.default not in (None, False) and "default" not in text:
            missing.append((path, action.dest, f"default {action.default!r} not said"))
        elif action.option_strings and "default" not in text:
            missing.append((path, action.dest, "what happens without it is not said"))
    assert missing == []


def test_compare_help_lists_every_strategy_and_scan(capsys):
    with pytest.raises(SystemExit):
        cli.main(["compare", "--help"])
    text = capsys.readouterr().out
    for name in [*STRATEGIES, *SCAN_NAMES, *SCANS]:
        assert f"\n  {name} " in text, name


def test_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.startswith("allones ")


def test_scan_takes_every_strategy(capsys):
    """-b: any strategy of compare (an all-ones map policy included); memfd-alias past
    vm.max_map_count is refused with ENOMEM, as the real mmap would be."""
    mapped = {}
    for name in STRATEGIES:
        rc = cli.main(["scan", "brute-force", "-b", name, "--json"])
        out, err = capsys.readouterr()
        if name == "memfd-alias":
            assert rc == 1 and "max_map_count" in err
            continue
        assert rc == 0, err
        run = json.loads(out)["run"]
        assert run["backing"] == STRATEGIES[name].backing and run["hole_mismatches"] == 0
        mapped[name] = run["kvm_mapped_4k"] + run["kvm_mapped_2m"]
    assert mapped["mmio"] == 0 and mapped["allones-sharedpt"] < mapped["allones"]
    assert mapped["allones-hugepage"] < mapped["allones"]


def test_scan_json_agrees_with_its_text(capsys):
    assert cli.main(["scan", "linux-probe", "-t", "farm:4", "-m", "mmconfig"]) == 0
    text = capsys.readouterr().out
    assert cli.main(["scan", "linux-probe", "-t", "farm:4", "-m", "mmconfig", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert f"accesses           {doc['run']['accesses']:>9}" in text
    assert doc["topology"] == "farm-4" and f"topology farm-4: {doc['functions']} functions" in text


def test_demo_json(capsys):
    assert cli.main(["demo", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["faults"] for r in doc["scan"]}["allones whole-slot"] == 1
    write_hole = [t for t in doc["translations"] if t["name"] == "00:00.0 (hole)" and t["write"]]
    assert write_hole[0]["result"] == "mmio_exit"


def test_demo_fits_80_columns(capsys):
    assert cli.main(["demo"]) == 0
    assert max(len(line) for line in capsys.readouterr().out.splitlines()) <= 80


def test_trace_import_json(capsys, tmp_path):
    from pathlib import Path
    small = Path(__file__).resolve().parent / "data" / "small.csv"
    assert cli.main(["trace", "import", str(small), "-t", "q35", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["capture"]["replayed"] == doc["run"]["accesses"] > 0
    assert doc["capture"]["topology"]["inferred"] is False


def test_compare_topology_and_scans(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["compare", "--vms", "2", "--strategies", "allones", "--scans", "brute-force,linux-probe",
                     "-t", "farm:4,q35", "--out", str(out), "--workers", "1", "--no-plots"]) == 0
    doc = json.loads((out / "compare.json").read_text())
    assert doc["params"]["mix"] == ["farm:4", "q35"]
    assert doc["params"]["scans"] == ["brute-force", "linux-probe"]
    tops = {vm["topology"] for fleet in doc["fleets"] for vm in fleet["vms"]}
    assert tops and tops <= {"farm-4", "q35"}


@pytest.mark.parametrize("argv, says", [
    (["--scans", "nope"], "unknown scan 'nope'"),
    (["--scans", "brute-force,brute-force"], "scans repeat"),
    (["-t", "farm:x"], "--topology 'farm:x'"),
])
def test_compare_refuses_bad_scans_and_mixes(tmp_path, capsys, argv, says):
    assert cli.main(["compare", "--out", str(tmp_path), *argv]) == 1
    assert says in capsys.readouterr().err


def _summary_rows():
    from allones.experiments.compare import DEFAULT_SCANS, compare
    results = compare(["mmio", "filled-ksm", "memfd-alias", "allones"], DEFAULT_SCANS[1:3], n_vms=2,
                      mix=("q35", "farm:32"), workers=1)
    return report.summary_rows(results)


@pytest.fixture(scope="module")
def rows():
    return _summary_rows()


@pytest.mark.parametrize("width", [80, 120, 200])
def test_tables_fit_the_terminal_and_never_cut_a_number(rows, width):
    console = Console(width=width, force_terminal=True, color_system=None)
    with console.capture() as captured:
        report.print_tables(rows, "constants", console)
    text = captured.get()
    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text
    lines = text.splitlines()
    for r in rows:
        cells = report.table_cells(r)
        for i, cell in enumerate(cells[1:], 1):
            if cell:    # the cell, whole, on a line of its strategy's row in some table
                assert any(f"│ {r['strategy']} " in line and f" {cell} │" in line for line in lines), (width, cell)


def test_wide_and_piped_output_is_one_table_per_scan(rows):
    out = io.StringIO()
    report.print_tables(rows, "constants", Console(file=out, width=80))     # not a terminal
    text = out.getvalue()
    assert text.count("┃ strategy") == len({r["scan"] for r in rows})
    assert all(col in text for col in report.TABLE_COLUMNS)


def test_progress_is_quiet_on_short_runs_and_plain_off_a_terminal(monkeypatch):
    err = io.StringIO()
    with progress.Progress("fleets", total=3, stream=err) as p:
        p(1)
    assert err.getvalue() == ""                      # shorter than PLAIN_EVERY: nothing
    monkeypatch.setattr(progress, "PLAIN_EVERY", 0.0)
    with progress.Progress("fleets", total=3, stream=err) as p:
        for done in (1, 2, 3):
            p(done)
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("fleets: 1/3, ") and lines[-1].endswith(", done")


def test_long_scans_say_how_far_they_are_on_stderr(monkeypatch, capsys):
    monkeypatch.setattr(progress, "PLAIN_EVERY", 0.0)
    monkeypatch.setattr("allones.vmm.REPLAY_CHUNK", 1 << 16)
    assert cli.main(["scan", "full-dump", "--max-buses", "2"]) == 0
    out, err = capsys.readouterr()
    assert "planning full-dump: " in err and "replaying full-dump: " in err and err.rstrip().endswith("done")
    assert "planning" not in out and "accesses" in out    # stdout: the results alone


def test_compare_progress_goes_to_stderr_as_fleets_finish(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(progress, "PLAIN_EVERY", 0.0)
    assert cli.main(["compare", "--vms", "1", "--strategies", "mmio,allones", "--scans", "brute-force",
                     "--out", str(tmp_path), "--workers", "1", "--no-plots"]) == 0
    out, err = capsys.readouterr()
    assert "fleets of 1 VMs: 1/2" in err and "fleets of 1 VMs: 2/2" in err
    assert "fleets of" not in out


def test_a_closed_pipe_ends_quietly():
    """`allones demo | head -1`: no traceback, no error line, when the reader stops."""
    proc = subprocess.Popen([sys.executable, "-m", "allones", "demo"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 1) and err == ""


@pytest.mark.parametrize("argv", [["scan", "linux-boot-x86"], ["scan", "brute-force", "-b", "filled"],
                                  ["scan", "linux-boot-x86", "--cpu", "amd-k8", "-t", "farm:32"]])
def test_scan_text_fits_80_columns(capsys, argv):
    assert cli.main(argv) == 0
    assert max(len(line) for line in capsys.readouterr().out.splitlines()) <= 80
