"""`allones compare`: the grid runs, failures are rows, and every output exists and parses."""

import csv
import json

from allones.cli import main
from allones.experiments import report
from allones.experiments.compare import DEFAULT_SCANS, ScanSpec, compare

SMALL = ["mmio", "memfd-alias", "allones", "allones-prefault"]


def test_compare_runs_every_strategy_and_scan_in_grid_order():
    scans = (ScanSpec("probe", "linux-probe", "mmconfig"), ScanSpec("fw", "firmware", "mmconfig", {"passes": 2}))
    results = compare(SMALL, scans, n_vms=2, mix=("q35",), workers=1)
    assert [(spec.label, f.strategy) for spec, f in results] == [(s.label, n) for s in scans for n in SMALL]
    errors = {f.strategy for _, f in results if f.error}
    assert errors == {"memfd-alias"}                   # 65,524 aliases: past vm.max_map_count
    rows = report.summary_rows(results)
    assert all(r["vms"] == 2 for r in rows if not r["error"])
    fw = {r["strategy"]: r for r in rows if r["scan"] == "fw"}
    assert fw["mmio"]["faults_per_vm"] == 0 and fw["allones"]["faults_per_vm"] > 0


def test_pool_and_serial_runs_agree():
    scans = DEFAULT_SCANS[2:3]
    serial = report.summary_rows(compare(["allones"], scans, n_vms=2, workers=1))
    pooled = report.summary_rows(compare(["allones"], scans, n_vms=2, workers=2))
    drop = {"wall_seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in serial] == \
           [{k: v for k, v in r.items() if k not in drop} for r in pooled]


def test_the_cli_writes_table_csv_json_and_figures(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["compare", "--vms", "2", "--strategies", "mmio,allones,filled", "--out", str(out),
                 "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "linux-boot (MMCONFIG)" in text and "allones" in text and "Constants" in text
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert len(rows) == 3 * len(DEFAULT_SCANS)
    vms = list(csv.DictReader(open(out / "compare-vms.csv")))
    assert len(vms) == 2 * 3 * len(DEFAULT_SCANS)
    doc = json.loads((out / "compare.json").read_text())
    assert doc["params"]["vms"] == 2 and doc["costs"] and len(doc["fleets"]) == len(rows)
    for name in ("memory", "time", "events"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / f"{name}.svg").read_text().lstrip().startswith("<?xml")


def test_the_cli_refuses_unknown_strategies(tmp_path, capsys):
    assert main(["compare", "--strategies", "nope", "--out", str(tmp_path)]) == 1
    assert "unknown strategy" in capsys.readouterr().err


def test_bad_grids_are_refused_before_any_work():
    import pytest
    for kwargs in (dict(strategies="allones"), dict(strategies=[]), dict(strategies=["allones", "allones"]),
                   dict(strategies=["nope"]), dict(n_vms=0), dict(workers=0)):
        with pytest.raises(ValueError):
            compare(**{"strategies": ["allones"], **kwargs})


def test_only_a_real_refusal_is_a_result(monkeypatch):
    """ENOMEM (max_map_count) and the memslot budget are results; any other error is a bug."""
    import pytest
    from allones.errors import BadAddress
    from allones.experiments import compare as module

    def broken(*args, **kwargs):
        raise BadAddress("a bug", "test")
    monkeypatch.setattr(module, "run_fleet", broken)
    with pytest.raises(BadAddress):
        compare(["allones"], DEFAULT_SCANS[:1], n_vms=1, workers=1)
