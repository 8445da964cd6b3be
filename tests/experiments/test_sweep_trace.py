"""`allones sweep` with a recorded boot as a scan: paths from the TOML's directory, one cell
per strategy x fleet size x cost (not x topology mix), keys that follow the file's content,
resume, and bad trace keys refused at load, naming them."""

import copy
import csv
import gzip
import os
import shutil
from pathlib import Path

import pytest

from allones import cli
from allones.experiments.compare import TraceSpec
from allones.experiments.sweep import expand, load_config, run_sweep

REAL = Path(__file__).resolve().parents[1] / "data" / "q35-ovmf-default"
LOG, INFO_PCI = REAL / "qemu-trace.log.gz", REAL / "info_pci.txt"
STRATEGIES = ["mmio", "allones"]


def toml(directory: Path, log=LOG, topology=INFO_PCI) -> str:
    """One capture (its kernel part, paths relative to `directory`) and one built-in scan,
    two topology mixes."""
    rel = lambda p: os.path.relpath(p, directory)   # noqa: E731
    return f"""\
[sweep]
strategies = {STRATEGIES!r}
vms = [1]

[[sweep.scans]]
trace = "{rel(log)}"
topology = "{rel(topology)}"
part = "kernel"

[[sweep.scans]]
scan = "linux-probe"
mechanism = "mmconfig"

[[sweep.topologies]]
name = "q35"
mix = ["q35"]

[[sweep.topologies]]
name = "farm"
mix = ["farm:8:0.5"]
""".replace("'", '"')


def config(**trace) -> dict:
    """A parsed config: the capture's table (absolute paths) updated by `trace`, a scan."""
    table = {"trace": str(LOG), "topology": str(INFO_PCI), **trace}
    return {"sweep": {"strategies": STRATEGIES, "vms": [1],
                      "scans": [{"scan": "linux-probe", "mechanism": "mmconfig"},
                                {k: v for k, v in table.items() if v is not None}],
                      "topologies": [{"name": "q35", "mix": ["q35"]}]}}


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_capture_is_one_cell_per_strategy_not_per_topology_mix(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(toml(tmp_path))
    cells = expand(path)
    trace = [c for c in cells if isinstance(c.scan, TraceSpec)]
    assert len(cells) == len(STRATEGIES) * (1 + 2) and len(trace) == len(STRATEGIES)
    assert {c.scan.path for c in trace} == {str(LOG.resolve())}        # from the TOML's directory
    assert {c.scan.topology for c in trace} == {str(INFO_PCI.resolve())}
    assert {(c.topology, c.mix) for c in trace} == {("info_pci.txt", ())}
    assert trace[0].scan.label == "trace:qemu-trace.log.gz:kernel"
    params = trace[0].params()
    assert params["scan_program"] == "trace" and '"part": "kernel"' in params["options"]


def test_a_sweep_with_a_capture_runs_and_resumes(tmp_path, capsys):
    path = tmp_path / "sweep.toml"
    path.write_text(toml(tmp_path))
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--out", str(out), "--workers", "1"]) == 0
    assert "ran 6, skipped 0" in capsys.readouterr().out
    rows = read_csv(out / "results.csv")
    trace = [r for r in rows if r["scan_program"] == "trace"]
    assert [r["strategy"] for r in trace] == STRATEGIES and all(not r["error"] for r in trace)
    assert all(r["topology"] == "info_pci.txt" for r in trace)
    assert cli.main(["sweep", str(path), "--out", str(out), "--workers", "1"]) == 0
    assert "ran 0, skipped 6" in capsys.readouterr().out
    assert (out / "memory.png").exists() and (out / "results.md").read_text().count("trace:") == 2


def test_cell_keys_follow_the_capture_file_content(tmp_path):
    log = tmp_path / LOG.name
    shutil.copy(LOG, log)
    path = tmp_path / "sweep.toml"
    path.write_text(toml(tmp_path, log=log))
    before = [c.key for c in expand(path)]
    assert before == [c.key for c in expand(path)]                     # stable
    with open(log, "ab") as f:       # a second gzip member: the same accesses, another file
        f.write(gzip.compress(b"\n"))
    after = [c.key for c in expand(path)]
    changed = [a != b for a, b in zip(before, after)]
    assert changed == [isinstance(c.scan, TraceSpec) for c in expand(path)]


def test_to_toml_round_trips_a_capture(tmp_path):
    loaded = load_config(config(part="firmware", label="fw"))
    path = tmp_path / "copy.toml"
    path.write_text(loaded.to_toml())
    assert load_config(path) == loaded
    assert [c.key for c in expand(path)] == [c.key for c in expand(loaded)]


@pytest.mark.parametrize("changes, key", [
    ({"trace": "missing.log.gz"}, "sweep.scans[1].trace: no trace file"),
    ({"trace": 3}, "sweep.scans[1].trace"),
    ({"part": "bogus"}, "sweep.scans[1].part"),
    ({"topology": "missing-info-pci.txt"}, "sweep.scans[1].topology"),
    ({"ecam_base": "0xb0000000"}, "sweep.scans[1].ecam_base"),
    ({"ecam_base": -1}, "sweep.scans[1].ecam_base"),
    ({"ecam_buses": 0}, "sweep.scans[1].ecam_buses"),
    ({"ecam_addr": "physical"}, "sweep.scans[1].ecam_addr"),
    ({"strict": "yes"}, "sweep.scans[1].strict"),
    ({"mechanism": "mmconfig"}, "sweep.scans[1]: unknown key 'mechanism'"),
    ({"label": ""}, "sweep.scans[1].label"),
])
def test_bad_trace_keys_are_refused_naming_them(changes, key):
    with pytest.raises(ValueError) as info:
        load_config(config(**changes))
    assert key in str(info.value)


def test_a_trace_that_is_no_trace_is_refused_at_load(tmp_path):
    garbage = tmp_path / "garbage.log"
    garbage.write_bytes(b"\x00\xff\xfe not a log \x80\n")
    with pytest.raises(ValueError, match=r"sweep\.scans\[1\]\.trace: .*garbage\.log"):
        load_config(config(trace=str(garbage)))


def test_the_cli_refuses_a_bad_trace_key(tmp_path, capsys):
    path = tmp_path / "sweep.toml"
    path.write_text(toml(tmp_path).replace('part = "kernel"', 'part = "bogus"'))
    out = tmp_path / "out"
    assert cli.main(["sweep", str(path), "--out", str(out)]) == 1
    assert "allones: error: sweep.scans[0].part" in capsys.readouterr().err
    assert not out.exists()


def test_a_mapping_config_resolves_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(REAL)
    loaded = load_config(copy.deepcopy(config(trace=LOG.name, topology=INFO_PCI.name)))
    trace = loaded.scans[1]
    assert trace.path == str(LOG.resolve()) and trace.topology == str(INFO_PCI.resolve())


def test_a_local_pool_gives_what_one_process_gives(tmp_path):
    untimed = lambda rows: [{k: v for k, v in r.items() if k not in ("wall_seconds", "cell_seconds")}  # noqa: E731
                            for r in rows]
    trace_only = config()
    trace_only["sweep"]["scans"] = trace_only["sweep"]["scans"][1:]
    serial = run_sweep(trace_only, tmp_path / "serial", workers=1)
    pooled = run_sweep(trace_only, tmp_path / "pool", workers=2)
    assert len(pooled.ran) == len(STRATEGIES) and untimed(pooled.rows) == untimed(serial.rows)
