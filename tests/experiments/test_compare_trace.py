"""`allones compare --trace`: a real boot (Linux 6.1 on QEMU q35 with OVMF, 30k config accesses)
through the strategies, with the same table, CSV and JSON as the built-in scans; bad input
fails before anything is written."""

import contextlib
import csv
import io
import json
from pathlib import Path

import pytest

from allones.cli import main
from allones.experiments import report
from allones.experiments.compare import TraceSpec, compare
from allones.experiments.fleet import run_fleet
from allones.experiments.strategies import STRATEGIES

REAL = Path(__file__).resolve().parents[1] / "data" / "q35-ovmf-default"
LOG, INFO_PCI = REAL / "qemu-trace.log.gz", REAL / "info_pci.txt"
LABEL = "trace:qemu-trace.log.gz:all"


def run(tmp_path, *args):
    """`allones compare --trace` on the real log, 2 VMs, in this process; (exit code, out dir)."""
    out = tmp_path / "out"
    code = main(["compare", "--trace", str(LOG), "--topology", str(INFO_PCI), "--vms", "2",
                 "--workers", "1", "--out", str(out), *args])
    return code, out


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def every_strategy(tmp_path_factory):
    """Every strategy on the real log: (stdout, summary CSV rows, per-VM CSV rows, JSON)."""
    tmp = tmp_path_factory.mktemp("trace")
    text = io.StringIO()               # capsys is per test: this runs once for the module
    with contextlib.redirect_stdout(text):
        code, out = run(tmp, "--no-plots")
    assert code == 0
    return (text.getvalue(), read_csv(out / "compare.csv"), read_csv(out / "compare-vms.csv"),
            json.loads((out / "compare.json").read_text()))


def test_one_row_per_strategy_under_the_trace_label(every_strategy):
    text, rows, vms, doc = every_strategy
    assert [r["strategy"] for r in rows] == list(STRATEGIES)
    assert {r["scan"] for r in rows} == {LABEL} and LABEL in text
    assert [r["strategy"] for r in rows if r["error"]] == ["memfd-alias"]   # past max_map_count
    assert len(vms) == 2 * (len(STRATEGIES) - 1)


def test_mmio_hole_reads_all_exit_and_allones_hole_reads_do_not(every_strategy):
    _, _, vms, _ = every_strategy
    by = {r["strategy"]: r for r in vms if r["vm"] == "0"}
    mmio, allones = by["mmio"], by["allones"]
    holes = int(mmio["mmconfig_hole_reads"]) + int(mmio["mmconfig_hole_writes"])
    assert int(mmio["mmconfig_hole_reads"]) > 0
    assert int(mmio["mmio_exits"]) - int(mmio["mmio_exits_present"]) == holes
    assert allones["mmio_exits"] == allones["mmio_exits_present"] and allones["kernel_exits"] == "0"
    assert int(allones["faults"]) > 0            # the hole reads were answered by mapped pages


def test_every_vm_of_a_trace_fleet_gives_the_same_counts(every_strategy):
    _, _, vms, _ = every_strategy
    for strategy in ("mmio", "allones", "filled"):
        first, second = (r for r in vms if r["strategy"] == strategy)
        assert first["topology"] == second["topology"]
        assert [first[k] for k in ("accesses", "mmio_exits", "pio_exits")] == \
               [second[k] for k in ("accesses", "mmio_exits", "pio_exits")]


def test_table_csv_and_json_give_the_same_numbers(every_strategy):
    text, rows, _, doc = every_strategy
    assert [r["strategy"] for r in doc["summary"]] == [r["strategy"] for r in rows]
    for row, summary in zip(rows, doc["summary"]):
        if row["error"]:
            assert summary["error"] == row["error"]
            continue
        for key in ("mmio_exits_per_vm", "faults_per_vm", "pio_exits_per_vm", "modeled_ecam_ms_per_vm"):
            assert float(row[key]) == pytest.approx(summary[key])
    mmio = next(r for r in rows if r["strategy"] == "mmio")
    cells = next(cells for line in text.splitlines()
                 if (cells := [c.strip() for c in line.split("│")[1:-1]])[:1] == ["mmio"])
    column = dict(zip(report.TABLE_COLUMNS, cells))
    assert column["exit user"] == f"{float(mmio['mmio_exits_per_vm']):,.0f}"     # 4,028: under 10k
    assert column["ECAM ms"] == f"{float(mmio['modeled_ecam_ms_per_vm']):.2f}"


def test_the_json_records_the_capture(every_strategy):
    _, _, _, doc = every_strategy
    trace = doc["params"]["trace"]
    assert trace["path"] == str(LOG) and trace["topology"] == str(INFO_PCI) and trace["part"] == "all"
    assert len(trace["sha256"]) == 64 and doc["params"]["scans"] == [LABEL]
    assert {f["scan"] for f in doc["fleets"]} == {LABEL}


def test_figures_are_written(tmp_path, capsys):
    code, out = run(tmp_path, "--strategies", "mmio,allones")
    assert code == 0 and "6 figures" in capsys.readouterr().out
    for name in ("memory", "time", "events"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / f"{name}.svg").read_text().lstrip().startswith("<?xml")


def test_the_kernel_part_has_fewer_accesses_than_all(tmp_path, capsys):
    accesses = {}
    for part in ("all", "kernel"):
        code, out = run(tmp_path / part, "--strategies", "allones", "--part", part, "--no-plots")
        assert code == 0
        rows = read_csv(out / "compare-vms.csv")
        assert {r["label"] for r in rows} == {f"trace:qemu-trace.log.gz:{part}"}
        accesses[part] = int(rows[0]["accesses"])
    assert 0 < accesses["kernel"] < accesses["all"]


def test_a_pool_gives_what_one_process_gives():
    spec = TraceSpec(LOG, str(INFO_PCI))
    serial, pooled = (report.summary_rows(compare(["mmio", "allones"], [spec], n_vms=1, workers=w))
                      for w in (1, 2))
    untimed = lambda rows: [{k: v for k, v in r.items() if k != "wall_seconds"} for r in rows]  # noqa: E731
    assert untimed(serial) == untimed(pooled)


def test_run_fleet_takes_a_ready_plan():
    capture = TraceSpec(LOG, str(INFO_PCI)).load()
    fleet = run_fleet("allones", n_vms=2, plan=capture.scan)
    assert fleet.scan == capture.scan.name and {r["topology"] for r in fleet.rows} == {capture.topology.name}
    with pytest.raises(ValueError, match="not both"):
        run_fleet("allones", "brute-force", n_vms=1, plan=capture.scan)
    with pytest.raises(TypeError, match="plan"):
        run_fleet("allones", n_vms=1, plan="brute-force")
    with pytest.raises(ValueError, match="scan name or a plan"):
        run_fleet("allones", n_vms=1)


# ---- bad input: an error exit, one line naming the problem, nothing written ---------------

def refused(tmp_path, capsys, args, code=1):
    out = tmp_path / "out"
    try:
        got = main(["compare", *args, "--vms", "1", "--workers", "1", "--no-plots", "--out", str(out)])
    except SystemExit as exc:     # argparse: exit 2, usage and the error
        got = exc.code
    assert got == code
    err = capsys.readouterr().err.strip().splitlines()
    assert not out.exists()
    return err[-1]


def test_a_missing_trace_file_is_refused(tmp_path, capsys):
    err = refused(tmp_path, capsys, ["--trace", str(tmp_path / "nope.log"), "--topology", str(INFO_PCI)])
    assert err.startswith("allones: error:") and "nope.log" in err


def test_a_bogus_part_is_refused(tmp_path, capsys):
    err = refused(tmp_path, capsys, ["--trace", str(LOG), "--part", "bogus"], code=2)
    assert "--part" in err and "bogus" in err


def test_a_bad_ecam_base_is_refused(tmp_path, capsys):
    err = refused(tmp_path, capsys, ["--trace", str(LOG), "--ecam-base", "0xzz"], code=2)
    assert "--ecam-base" in err and "0xzz" in err


@pytest.mark.parametrize("content", [b"\x00\xff\xfe garbage \x80\x81\n" * 4,      # not text
                                     b"hello\nthis is no trace at all\n"])       # no accesses
def test_a_garbage_file_is_refused(tmp_path, capsys, content):
    garbage = tmp_path / "garbage.log"
    garbage.write_bytes(content)
    err = refused(tmp_path, capsys, ["--trace", str(garbage), "--topology", "q35"])
    assert err.startswith("allones: error:") and ("garbage.log" in err or "ECAM" in err)


def test_trace_options_need_a_trace(tmp_path, capsys):
    err = refused(tmp_path, capsys, ["--part", "kernel", "--topology", str(INFO_PCI)])
    assert "--part: only with --trace" in err      # --topology alone is the fleets' mix
    err = refused(tmp_path, capsys, ["--ecam-addr", "gpa", "--strict"])
    assert "--ecam-addr, --strict: only with --trace" in err


def test_a_trace_spec_checks_its_fields():
    with pytest.raises(ValueError, match="unknown trace part"):
        TraceSpec(LOG, str(INFO_PCI), part="bogus")
    with pytest.raises(ValueError, match="ecam_base"):
        TraceSpec(LOG, str(INFO_PCI), ecam_base=-1)
    with pytest.raises(ValueError, match="ecam_buses"):
        TraceSpec(LOG, str(INFO_PCI), ecam_buses=257)
    with pytest.raises(ValueError, match="ecam_addr"):
        TraceSpec(LOG, str(INFO_PCI), ecam_addr="physical")
    with pytest.raises(FileNotFoundError, match="no trace file"):
        TraceSpec(LOG.with_name("missing.log"), str(INFO_PCI))


def test_a_capture_that_changed_since_it_was_checked_is_refused(tmp_path):
    """A worker would otherwise run other accesses than the spec (and a sweep key) names."""
    copy = tmp_path / LOG.name
    copy.write_bytes(LOG.read_bytes())
    spec = TraceSpec(copy, str(INFO_PCI))
    copy.write_bytes(LOG.read_bytes() + b"more")
    from allones.experiments import compare as module
    module._CAPTURES.pop(spec.cache_key())          # as in a fresh worker process
    with pytest.raises(ValueError, match="changed since"):
        spec.load()
