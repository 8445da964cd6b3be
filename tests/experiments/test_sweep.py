"""`allones sweep`: the grid, a local pool, Dask, resume, reproducibility and the command."""

import copy
import csv
import json

import pytest

from allones import cli
from allones.errors import NoMemory
from allones.experiments import compare, sweep
from allones.experiments.sweep import TIMING_COLUMNS, expand, load_config, run_sweep
from allones.experiments.strategies import STRATEGIES as ALL_STRATEGIES

STRATEGIES = ["mmio", "pci-hole", "allones"]
CONFIG = {"sweep": {
    "seed": 3,
    "strategies": STRATEGIES,
    "scans": [{"label": "firmware", "scan": "firmware", "mechanism": "mmconfig", "options": {"passes": 1}},
              {"scan": "linux-probe", "mechanism": "mmconfig"}],
    "vms": [1, 2],
    "topologies": [{"name": "q35-only", "mix": ["q35"]}],
    "costs": [{"name": "default"}, {"name": "slow-exits", "set": {"exit_to_userspace_ns": 10000}}],
}}
CELLS = 3 * 2 * 2 * 1 * 2
TOML = """\
[sweep]
seed = 3
strategies = ["mmio", "pci-hole", "allones"]
vms = [1, 2]

[[sweep.scans]]
label = "firmware"
scan = "firmware"
mechanism = "mmconfig"
options = {passes = 1}

[[sweep.scans]]
scan = "linux-probe"
mechanism = "mmconfig"

[[sweep.topologies]]
name = "q35-only"
mix = ["q35"]

[[sweep.costs]]
name = "default"

[[sweep.costs]]
name = "slow-exits"
set = {exit_to_userspace_ns = 10000}
"""


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def untimed(rows):
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def with_sweep(**changes):
    config = copy.deepcopy(CONFIG)
    config["sweep"].update(changes)
    return config


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory):
    """The sweep once, on a local pool of 2 processes."""
    out = tmp_path_factory.mktemp("pool")
    return out, run_sweep(CONFIG, out, workers=2)


# ---- the grid -----------------------------------------------------------------------------

def test_expand_gives_the_grid_in_order():
    cells = expand(CONFIG)
    assert len(cells) == CELLS
    assert [c.index for c in cells] == list(range(CELLS))
    # strategies innermost, then fleet sizes, cost variants, topologies, scans outermost
    assert [c.strategy for c in cells[:4]] == STRATEGIES + ["mmio"]
    assert [c.vms for c in cells[:6]] == [1, 1, 1, 2, 2, 2]
    assert [c.cost for c in cells[::6]] == ["default", "slow-exits"] * 2
    assert [c.scan.label for c in cells[::12]] == ["firmware", "linux-probe"]
    assert cells[12].scan == compare.ScanSpec("linux-probe", "linux-probe", "mmconfig", {})
    assert dict(cells[6].overrides) == {"exit_to_userspace_ns": 10000}
    assert len({c.key for c in cells}) == CELLS
    assert [c.key for c in expand(CONFIG)] == [c.key for c in cells]          # stable
    assert expand(with_sweep(seed=4))[0].key != cells[0].key                   # the seed is a parameter


def test_defaults_and_all_strategies():
    config = load_config({"sweep": {"strategies": "all", "vms": 2}})
    assert config.strategies == tuple(ALL_STRATEGIES) and config.vms == (2,)
    assert config.scans == compare.DEFAULT_SCANS and config.seed == 0
    assert len(expand(config)) == len(ALL_STRATEGIES) * len(compare.DEFAULT_SCANS)


def test_to_toml_round_trips(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(TOML)
    config = load_config(path)
    assert config == load_config(CONFIG) and config.source == TOML
    path.write_text(config.to_toml())
    assert [c.key for c in expand(path)] == [c.key for c in expand(config)]


@pytest.mark.parametrize("changes, key", [
    ({"colour": 1}, "sweep: unknown key 'colour'"),
    ({"seed": -1}, "sweep.seed"),
    ({"seed": "x"}, "sweep.seed"),
    ({"strategies": ["mmio", "nope"]}, "sweep.strategies[1]: unknown strategy 'nope'"),
    ({"strategies": ["mmio", "mmio"]}, "sweep.strategies[1]"),
    ({"strategies": []}, "sweep.strategies"),
    ({"vms": [2, 0]}, "sweep.vms[1]"),
    ({"vms": [1.5]}, "sweep.vms[0]"),
    ({"vms": [2, 2]}, "sweep.vms[1]"),
    ({"scans": [{"scan": "nope"}]}, "sweep.scans[0].scan: unknown scan 'nope'"),
    ({"scans": [{"scan": "firmware", "mechanism": "pigeon"}]}, "sweep.scans[0].mechanism"),
    ({"scans": [{"scan": "firmware", "options": {"bogus": 1}}]}, "sweep.scans[0].options"),
    ({"scans": [{"scan": "firmware", "speed": 1}]}, "sweep.scans[0]: unknown key 'speed'"),
    ({"scans": [{"label": "x"}]}, "sweep.scans[0]: missing key 'scan'"),
    ({"scans": [{"scan": "firmware"}, {"scan": "firmware"}]}, "sweep.scans (label)[1]"),
    ({"topologies": [{"name": "t", "mix": ["farm:x"]}]}, "sweep.topologies[0].mix[0]"),
    ({"topologies": [{"name": "t"}]}, "sweep.topologies[0]: missing key 'mix'"),
    ({"costs": [{"name": "c", "set": {"no_such_cost_ns": 1}}]}, "sweep.costs[0].set"),
    ({"costs": [{"name": "c"}, {"name": "c"}]}, "sweep.costs (name)[1]"),
    ({"out": 3}, "sweep.out"),
])
def test_bad_configs_name_the_key(changes, key):
    with pytest.raises(ValueError) as info:
        expand(with_sweep(**changes))
    assert key in str(info.value)


def test_bad_top_level():
    with pytest.raises(ValueError, match="no \\[sweep\\] table"):
        load_config({})
    with pytest.raises(ValueError, match="unknown key 'costs'"):
        load_config({"sweep": {}, "costs": {}})


# ---- running ------------------------------------------------------------------------------

def test_local_pool_writes_the_results(pool_run):
    out, result = pool_run
    cells = expand(CONFIG)
    assert sorted(result.ran) == sorted(c.key for c in cells) and not result.skipped
    assert not result.failed and not result.crashed
    rows = read_csv(out / "results.csv")
    assert len(rows) == CELLS
    assert [r["key"] for r in rows] == [c.key for c in cells]                 # grid order
    for row, cell in zip(rows, cells):
        assert (row["strategy"], row["scan"], row["vms"], row["topology"], row["cost"], row["seed"]) == \
            (cell.strategy, cell.scan.label, str(cell.vms), "q35-only", cell.cost, "3")
        assert row["error"] == "" and float(row["modeled_scan_ms_per_vm"]) >= 0
        assert float(row["data_bytes"]) >= 0 and row["mechanism"] == "mmconfig"
    assert list(rows[0])[:len(sweep.PARAM_COLUMNS)] == list(sweep.PARAM_COLUMNS)
    # the slower exits cost more for mmio (every hole access exits to userspace)
    by = {(r["strategy"], r["scan"], r["vms"], r["cost"]): float(r["modeled_scan_ms_per_vm"]) for r in rows}
    assert by["mmio", "linux-probe", "2", "slow-exits"] > by["mmio", "linux-probe", "2", "default"]
    assert len(list((out / "cells").glob("*.json"))) == CELLS
    md = (out / "results.md").read_text().splitlines()
    assert len(md) == CELLS + 2 and md[0].startswith("| strategy | scan |")
    tex = (out / "results.tex").read_text()
    assert "\\begin{tabular}" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    assert "q35-only" in tex and "slow-exits" in tex and "pci-hole" in tex
    for name in ("modeled_time", "memory"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (out / f"{name}.svg").read_text()
    assert load_config(out / "config.toml") == load_config(CONFIG)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 3 and [c["key"] for c in manifest["cells"]] == [c.key for c in cells]
    assert manifest["allones_version"] and "results.csv" in manifest["files"]
    assert {p.name for p in result.files} >= {"results.csv", "results.md", "results.tex", "memory.svg",
                                              "modeled_time.png", "config.toml", "manifest.json"}


def test_rerun_skips_every_cell_and_deleting_one_reruns_only_it(pool_run):
    out, _ = pool_run
    before = (out / "results.csv").read_text()
    again = run_sweep(CONFIG, out, workers=2)
    assert not again.ran and len(again.skipped) == CELLS
    assert (out / "results.csv").read_text() == before
    victim = expand(CONFIG)[5].key
    (out / "cells" / f"{victim}.json").unlink()
    third = run_sweep(CONFIG, out, workers=2)
    assert third.ran == [victim] and len(third.skipped) == CELLS - 1
    assert untimed(read_csv(out / "results.csv")) == untimed(read_csv_text(before))


def read_csv_text(text):
    return list(csv.DictReader(text.splitlines()))


def test_a_fresh_run_with_the_same_seed_is_the_same(pool_run, tmp_path):
    out, _ = pool_run
    run_sweep(CONFIG, tmp_path, workers=1)
    assert untimed(read_csv(tmp_path / "results.csv")) == untimed(read_csv(out / "results.csv"))


def test_dask_local_cluster_gives_the_same_results(pool_run, tmp_path):
    distributed = pytest.importorskip("distributed")
    out, _ = pool_run
    expected = untimed(read_csv(out / "results.csv"))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            result = run_sweep(CONFIG, tmp_path / "client", scheduler=client)
            assert len(result.ran) == CELLS and not result.crashed
            assert client.status == "running"                  # a Client given is left open
        result = run_sweep(CONFIG, tmp_path / "address", scheduler=cluster.scheduler_address)
        assert len(result.ran) == CELLS
    for name in ("client", "address"):
        assert untimed(read_csv(tmp_path / name / "results.csv")) == expected


def test_a_refused_setup_is_a_row_with_its_error(tmp_path, monkeypatch):
    """As in compare: the errors a real host would refuse the setup with (in this process)."""
    def refuse(*args, **kwargs):
        raise NoMemory("mmap: past vm.max_map_count")
    monkeypatch.setattr(compare, "run_fleet", refuse)
    config = with_sweep(strategies=["allones"], vms=[1], costs=[{"name": "default"}])
    result = run_sweep(config, tmp_path, workers=1)
    assert len(result.failed) == 2 and len(result.ran) == 2
    rows = read_csv(tmp_path / "results.csv")
    error = str(NoMemory("mmap: past vm.max_map_count"))
    assert [r["error"] for r in rows] == [error] * 2
    assert rows[0]["strategy"] == "allones" and rows[0]["vms"] == "1"
    assert f"fails: {error}" in (tmp_path / "results.md").read_text()
    assert "\\multicolumn" in (tmp_path / "results.tex").read_text()


def test_a_crashed_cell_is_not_saved_and_a_rerun_retries_it(tmp_path, monkeypatch):
    config = with_sweep(strategies=["allones"], vms=[1], costs=[{"name": "default"}])
    real = compare.run_fleet

    def crash_on_probe(strategy, scan, *args, **kwargs):
        if scan == "linux-probe":
            raise RuntimeError("boom")
        return real(strategy, scan, *args, **kwargs)
    monkeypatch.setattr(compare, "run_fleet", crash_on_probe)
    first = run_sweep(config, tmp_path, workers=1)
    probe = expand(config)[1].key
    assert first.crashed == {probe: "RuntimeError: boom"} and len(first.ran) == 1
    assert len(read_csv(tmp_path / "results.csv")) == 1
    assert json.loads((tmp_path / "manifest.json").read_text())["missing"] == [probe]
    monkeypatch.setattr(compare, "run_fleet", real)
    second = run_sweep(config, tmp_path, workers=1)
    assert second.ran == [probe] and not second.crashed
    assert len(read_csv(tmp_path / "results.csv")) == 2


# ---- the command --------------------------------------------------------------------------

def test_cli_sweep(tmp_path, capsys):
    config = tmp_path / "sweep.toml"
    config.write_text(TOML.replace('["mmio", "pci-hole", "allones"]', '["allones"]')
                      .replace("vms = [1, 2]", "vms = [1]"))
    out = tmp_path / "out"
    assert cli.main(["sweep", str(config), "--out", str(out), "--workers", "1"]) == 0
    assert len(read_csv(out / "results.csv")) == 4
    text = capsys.readouterr().out
    assert "4 cells" in text and "ran 4" in text and "results.csv" in text
    assert cli.main(["sweep", str(config), "--out", str(out)]) == 0
    assert "skipped 4" in capsys.readouterr().out


def test_cli_sweep_errors(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text('[sweep]\nstrategies = ["nope"]\n')
    assert cli.main(["sweep", str(config), "--out", str(tmp_path)]) == 1
    assert "allones: error: sweep.strategies[0]: unknown strategy 'nope'" in capsys.readouterr().err
    assert cli.main(["sweep", str(tmp_path / "missing.toml")]) == 1
    config.write_text("[sweep\n")
    assert cli.main(["sweep", str(config)]) == 1
    assert "allones: error:" in capsys.readouterr().err


@pytest.mark.parametrize("options", [{"passes": "six"}, {"passes": 0}])
def test_bad_scan_option_values_fail_when_the_config_loads(options):
    """A value the scan cannot take fails at load, naming the key, not in every cell."""
    config = {"sweep": {"seed": 0, "strategies": ["allones"], "vms": [1],
                        "scans": [{"scan": "firmware", "options": options}],
                        "topologies": [{"name": "q", "mix": ["q35"]}], "costs": [{"name": "default"}]}}
    with pytest.raises(ValueError, match=r"sweep\.scans\[0\]\.options"):
        load_config(config)
