"""Bad input on the experiments layer's public entry points (strategies by name, the cost
model and its TOML loader, ScanSpec, compare's options, the sweep config loader) and the
`compare` command: a clear exception naming the argument, key, value or file (and the TOML
line), checked before any fleet runs. One test per row of docs/_bad_input_rows.md."""

import re
import tomllib

import pytest

from allones.experiments.compare import ScanSpec, compare
from allones.experiments.costmodel import CostModel
from allones.experiments.strategies import Strategy, get_strategy
from allones.experiments.sweep_config import SweepConfig, load_config
from cli_run import run_cli   # tests/reliability/cli_run.py

ONE_SCAN = (ScanSpec("bf", "brute-force", "mmconfig"),)


def raises(cls, match, fn, *args, **kwargs):
    with pytest.raises(cls, match=match) as info:
        fn(*args, **kwargs)
    assert type(info.value) is cls, f"{type(info.value).__name__} is not exactly {cls.__name__}"
    return info.value


def never(*args):
    raise AssertionError("a fleet ran although the arguments were bad")


@pytest.mark.parametrize("name, cls, match", [
    ("bogus", ValueError, r"unknown strategy 'bogus'; one of mmio, pci-hole, filled"),
    ("", ValueError, r"unknown strategy ''; one of"),
    ("MMIO", ValueError, r"unknown strategy 'MMIO'"),
    (None, TypeError, r"a strategy name must be a str, not NoneType"),
    (["mmio"], TypeError, r"a strategy name must be a str, not list"),
])
@pytest.mark.parametrize("entry", ["get_strategy", "compare", "sweep config"])
def test_unknown_strategy_names(entry, name, cls, match):
    if entry == "get_strategy":
        raises(cls, match, get_strategy, name)
    elif entry == "compare":
        raises(cls, match, compare, ["mmio", name], ONE_SCAN, n_vms=1, workers=1, progress=never)
    elif isinstance(name, str):
        raises(ValueError, r"sweep\.strategies\[1\]: " + match.replace("'; one of", "'; one of"),
               load_config, {"sweep": {"strategies": ["mmio", name]}})
    else:
        raises(ValueError, r"sweep\.strategies\[1\]: .* is not a str", load_config, {"sweep": {"strategies": ["mmio", name]}})


@pytest.mark.parametrize("kwargs, cls, match", [
    (dict(backing="bogus"), ValueError, r"strategy 'x': backing 'bogus' is not one of mmio, filled, memfd-alias"),
    (dict(backing="mmio", bit2="zz"), ValueError, r"strategy 'x': bit2 'zz' is not one of allones, pci_hole"),
    (dict(backing="allones", prefault="eager"), ValueError, r"prefault 'eager' is not one of on-demand, whole-slot"),
    (dict(backing="allones", allones_map="1g"), ValueError, r"allones_map '1g' is not one of 4k, shared-pt, hugepage"),
    (dict(backing="pci-hole"), ValueError, r"backing 'pci-hole' needs bit2='pci_hole', not 'allones'"),
    (dict(backing="allones", thp=True), ValueError, r"thp and ksm apply to the filled backing only"),
    (dict(backing="filled", ksm="yes"), TypeError, r"ksm must be True or False, not 'yes'"),
])
def test_bad_strategy_definitions(kwargs, cls, match):
    raises(cls, match, Strategy, "x", **kwargs)


def test_make_host_wants_a_bool():
    raises(TypeError, r"materialize must be True or False, not 'no'", get_strategy("mmio").make_host, "no")


@pytest.mark.parametrize("field, value, match", [
    ("exit_to_userspace_ns", -1, r"exit_to_userspace_ns: -1 is negative"),
    ("exit_to_userspace_ns", float("nan"), r"exit_to_userspace_ns: nan is not finite"),
    ("exit_to_userspace_ns", float("inf"), r"exit_to_userspace_ns: inf is not finite"),
    ("page_fill_ns", 10 ** 400, r"page_fill_ns: 1000+ is not finite"),
    ("page_fill_ns", "1500", r"page_fill_ns: '1500' is not a number"),
    ("page_fill_ns", True, r"page_fill_ns: True is not a number"),
    ("ksm_pages_to_scan", 0, r"ksm_pages_to_scan: 0 is not a whole number of pages >= 1"),
    ("ksm_pages_to_scan", 1.5, r"ksm_pages_to_scan: 1\.5 is not a whole number"),
    ("bogus_ns", 1, r"unknown cost 'bogus_ns'; allowed: exit_to_userspace_ns"),
])
@pytest.mark.parametrize("entry", ["CostModel", "with_overrides"])
def test_bad_cost_constants(entry, field, value, match):
    base = CostModel.default()
    if entry == "CostModel":
        if field == "bogus_ns":
            raises(TypeError, r"unexpected keyword argument 'bogus_ns'", CostModel, **{field: value})
        else:
            raises(ValueError, match, CostModel, **{field: value})
    else:
        raises(ValueError, match, base.with_overrides, **{field: value})
    assert base == CostModel.default()


@pytest.mark.parametrize("events, cls, match", [
    (None, TypeError, r"events must be a mapping of event kind to count, not NoneType"),
    ([1], TypeError, r"events must be a mapping"),
    ({"zz": 1}, ValueError, r"unknown event\(s\) 'zz'; known: userspace_exits"),
    ({1: 1, "zz": 2}, ValueError, r"unknown event\(s\) 'zz', 1|unknown event\(s\) 1, 'zz'"),
    ({"tlb_hits": -1}, ValueError, r"event 'tlb_hits': count -1 is not a non-negative number"),
    ({"tlb_hits": float("nan")}, ValueError, r"count nan is not a non-negative number"),
    ({"tlb_hits": 10 ** 400}, ValueError, r"count 1000+ is not a non-negative number"),
])
def test_bad_event_counts(events, cls, match):
    raises(cls, match, CostModel.default().modeled_ns, events)


@pytest.mark.parametrize("text, cls, match", [
    ("[costs\n", tomllib.TOMLDecodeError, r"costs\.toml: invalid TOML: Expected ']' .*\(at line 1, column 7\)"),
    ("[costs]\na = 1\nb = = 2\n", tomllib.TOMLDecodeError, r"costs\.toml: invalid TOML: Invalid value \(at line 3"),
    (b"\xff\xfe[costs]\n", tomllib.TOMLDecodeError, r"costs\.toml: invalid TOML: not UTF-8 text"),
    ("", ValueError, r"costs\.toml: no \[costs\] table"),
    ("costs = 5\n", ValueError, r"costs\.toml: no \[costs\] table"),
    ("x = 1\n[costs]\n", ValueError, r"costs\.toml: unknown top-level key\(s\) 'x'; only a \[costs\] table is read"),
    ("[costs]\nbogus = 1\n", ValueError, r"costs\.toml: unknown cost 'bogus'; allowed: "),
    ("[costs.x]\ny = 1\n", ValueError, r"costs\.toml: unknown cost 'x'"),
    ("[costs]\npage_fill_ns = \"fast\"\n", ValueError, r"costs\.toml: page_fill_ns: 'fast' is not a number"),
    ("[costs]\npage_fill_ns = [1]\n", ValueError, r"costs\.toml: page_fill_ns: \[1\] is not a number"),
    ("[costs]\npage_fill_ns = -1\n", ValueError, r"costs\.toml: page_fill_ns: -1 is negative"),
    ("[costs]\npage_fill_ns = nan\n", ValueError, r"costs\.toml: page_fill_ns: nan is not finite"),
])
def test_bad_costs_toml_files(tmp_path, text, cls, match):
    path = tmp_path / "costs.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    raises(cls, match, CostModel.from_toml, path)


def test_costs_toml_files_that_are_not_there(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        CostModel.from_toml(tmp_path / "missing.toml")
    with pytest.raises(IsADirectoryError):
        CostModel.from_toml(tmp_path)
    raises(ValueError, r"path is empty", CostModel.from_toml, "")
    raises(TypeError, r"path must be a str or Path, not NoneType", CostModel.from_toml, None)


@pytest.mark.parametrize("args, cls, match", [
    (("", "brute-force", "mmconfig"), ValueError, r"ScanSpec label '' is not a non-empty str"),
    (("x", "bogus", "mmconfig"), ValueError, r"ScanSpec 'x': unknown scan 'bogus'; one of linux-boot-x86"),
    (("x", "brute-force", "nommconf"), ValueError, r"ScanSpec 'x': unknown mechanism 'nommconf'; one of mmconfig"),
    (("x", "brute-force", "mmconfig", 5), TypeError, r"ScanSpec 'x': options must be a mapping, not int"),
    (("x", "brute-force", "mmconfig", {"passes": 2}), ValueError,
     r"ScanSpec 'x': scan 'brute-force' takes no option 'passes' \(it takes: none\)"),
    (("x", "firmware", "mmconfig", {"passes": "6"}), TypeError, r"ScanSpec 'x': passes must be an integer, not str"),
    (("x", "firmware", "mmconfig", {"passes": 0}), ValueError, r"ScanSpec 'x': passes 0 must be at least 1"),
    (("x", "linux-boot-x86", "mmconfig", {"cpu": "arm"}), ValueError, r"ScanSpec 'x': unknown cpu 'arm'"),
])
def test_bad_scan_specs(args, cls, match):
    raises(cls, match, ScanSpec, *args)


@pytest.mark.parametrize("kwargs, cls, match", [
    (dict(strategies="mmio"), ValueError, r"strategies: a non-empty list of names"),
    (dict(strategies=[]), ValueError, r"strategies: a non-empty list of names"),
    (dict(strategies=["mmio", "mmio"]), ValueError, r"strategies repeat: \['mmio', 'mmio'\]"),
    (dict(scans=()), ValueError, r"scans: a non-empty list of ScanSpecs"),
    (dict(scans=[5]), TypeError, r"scans\[0\] must be a ScanSpec, not int"),
    (dict(scans=ONE_SCAN * 2), ValueError, r"scan labels repeat: \['bf', 'bf'\]"),
    (dict(n_vms=0), ValueError, r"n_vms 0 must be at least 1"),
    (dict(n_vms="2"), TypeError, r"n_vms must be an integer, not str"),
    (dict(n_vms=1.5), TypeError, r"n_vms must be an integer, not float"),
    (dict(mix=()), ValueError, r"mix: a non-empty list of topology specs, not an empty one"),
    (dict(mix="q35"), ValueError, r"mix: a non-empty list of topology specs, not 'q35'"),
    (dict(mix=("q35", "farm:x")), ValueError, r"mix\[1\]: topology 'farm:x': ports 'x' is not an integer"),
    (dict(mix=("bogus:1",)), FileNotFoundError, r"mix\[0\]: topology 'bogus:1': No such file"),
    (dict(seed=-1), ValueError, r"seed -1 must be a non-negative integer"),
    (dict(seed="x"), TypeError, r"seed must be an integer, not str"),
    (dict(costs=5), TypeError, r"costs must be a CostModel, not int"),
    (dict(workers=0), ValueError, r"workers 0 must be at least 1"),
    (dict(workers="2"), TypeError, r"workers must be an integer, not str"),
    (dict(progress=5), TypeError, r"progress must be callable, not int"),
])
def test_bad_compare_options(kwargs, cls, match):
    args = dict(strategies=["mmio"], scans=ONE_SCAN, n_vms=1, mix=("q35",), workers=1, progress=never)
    args.update(kwargs)
    raises(cls, match, compare, **args)


@pytest.mark.parametrize("sweep, match", [
    ({"seed": "x"}, r"sweep\.seed: 'x' is not a non-negative integer"),
    ({"seed": 1.5}, r"sweep\.seed: 1\.5 is not a non-negative integer"),
    ({"seed": True}, r"sweep\.seed: True is not a non-negative integer"),
    ({"strategies": "mmio"}, r"sweep\.strategies: expected a non-empty list, got 'mmio'"),
    ({"strategies": [1]}, r"sweep\.strategies\[0\]: 1 is not a str"),
    ({"vms": "2"}, r"sweep\.vms: expected a non-empty list, got '2'"),
    ({"vms": [1.5]}, r"sweep\.vms\[0\]: 1\.5 is not a fleet size"),
    ({"scans": 5}, r"sweep\.scans: expected a non-empty list, got 5"),
    ({"scans": [5]}, r"sweep\.scans\[0\]: expected a table, got 5"),
    ({"scans": [{"scan": ["firmware"]}]}, r"sweep\.scans\[0\]\.scan: unknown scan \['firmware'\]"),
    ({"scans": [{"scan": "firmware", "options": 5}]}, r"sweep\.scans\[0\]\.options: expected a table, got 5"),
    ({"scans": [{"scan": "firmware", "options": {"passes": [1]}}]},
     r"sweep\.scans\[0\]\.options\.passes: \[1\] is not a number, string or boolean"),
    ({"scans": [{"scan": "firmware", "options": {"passes": "6"}}]},
     r"sweep\.scans\[0\]\.options: passes must be an integer, not str"),
    ({"scans": [{"scan": "firmware", "label": 5}]}, r"sweep\.scans\[0\]\.label: 5 is not a name"),
    ({"topologies": [{"name": "x", "mix": 5}]}, r"sweep\.topologies\[0\]\.mix: expected a non-empty list, got 5"),
    ({"costs": [{"name": "x", "set": 5}]}, r"sweep\.costs\[0\]\.set: expected a table, got 5"),
    ({"costs": [{"name": "x", "set": {"page_fill_ns": "x"}}]}, r"sweep\.costs\[0\]\.set: page_fill_ns: 'x' is not a number"),
    ({"out": 5}, r"sweep\.out: 5 is not a directory name"),
])
def test_sweep_config_wrong_types(sweep, match):
    raises(ValueError, match, load_config, {"sweep": sweep})


@pytest.mark.parametrize("config, match", [
    ({"x": 1, "sweep": {}}, r"config: unknown key 'x' \(everything goes in \[sweep\]\)"),
    ({"sweep": {"bogus": 1}}, r"sweep: unknown key 'bogus'; the keys are costs, out, scans, seed"),
    ({"sweep": {"scans": [{"scan": "firmware", "zz": 1}]}}, r"sweep\.scans\[0\]: unknown key 'zz'; the keys are label"),
    ({"sweep": {"scans": [{"scan": "brute-force", "options": {"zz": 1}}]}},
     r"sweep\.scans\[0\]\.options: scan 'brute-force' takes no option zz"),
    ({"sweep": {"topologies": [{"name": "x", "mix": ["q35"], "zz": 1}]}}, r"sweep\.topologies\[0\]: unknown key 'zz'"),
    ({"sweep": {"costs": [{"name": "x", "set": {"zz": 1}}]}}, r"sweep\.costs\[0\]\.set: unknown cost 'zz'"),
])
def test_sweep_config_unknown_keys(config, match):
    raises(ValueError, match, load_config, config)


@pytest.mark.parametrize("config, match", [
    ({}, r"config: no \[sweep\] table"),
    ({"sweep": {"scans": [{"label": "x"}]}}, r"sweep\.scans\[0\]: missing key 'scan'"),
    ({"sweep": {"topologies": [{"name": "x"}]}}, r"sweep\.topologies\[0\]: missing key 'mix'"),
    ({"sweep": {"topologies": [{"mix": ["q35"]}]}}, r"sweep\.topologies\[0\]: missing key 'name'"),
    ({"sweep": {"costs": [{"set": {"page_fill_ns": 1}}]}}, r"sweep\.costs\[0\]: missing key 'name'"),
])
def test_sweep_config_missing_keys(config, match):
    raises(ValueError, match, load_config, config)


def test_sweep_config_bad_files(tmp_path):
    bad = tmp_path / "sweep.toml"
    bad.write_text("[sweep]\nseed = 0\nvms = = [2]\n")
    raises(ValueError, rf"{re.escape(str(bad))}: Invalid value \(at line 3, column 7\)", load_config, bad)
    bad.write_bytes(b"[sweep]\n\xff\n")
    raises(ValueError, rf"{re.escape(str(bad))}: not UTF-8 text", load_config, bad)
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(IsADirectoryError):
        load_config(tmp_path)
    raises(TypeError, r"config: a path to a TOML file, a mapping or a SweepConfig, not NoneType", load_config, None)
    raises(TypeError, r"not int", load_config, 5)
    good = tmp_path / "good.toml"
    good.write_text('[sweep]\nstrategies = ["mmio"]\nvms = [2]\n')
    assert isinstance(load_config(str(good)), SweepConfig)


@pytest.mark.parametrize("sweep, match", [
    ({"seed": -1}, r"sweep\.seed: -1 is not a non-negative integer"),
    ({"vms": [0]}, r"sweep\.vms\[0\]: 0 is not a fleet size"),
    ({"vms": [2, 2]}, r"sweep\.vms\[1\]: 2 appears twice"),
    ({"strategies": ["bogus"]}, r"sweep\.strategies\[0\]: unknown strategy 'bogus'"),
    ({"scans": [{"scan": "bogus"}]}, r"sweep\.scans\[0\]\.scan: unknown scan 'bogus'; one of linux-boot-x86"),
    ({"scans": [{"scan": "firmware", "mechanism": "x"}]}, r"sweep\.scans\[0\]\.mechanism: unknown mechanism 'x'"),
    ({"scans": [{"scan": "firmware", "options": {"passes": 0}}]}, r"sweep\.scans\[0\]\.options: passes 0 must be at least 1"),
    ({"scans": [{"scan": "linux-boot-x86", "options": {"last_bus": 300}}]}, r"last_bus 300 not in -1\.\.255"),
    ({"topologies": [{"name": "x", "mix": ["bogus:1"]}]}, r"sweep\.topologies\[0\]\.mix\[0\]: topology 'bogus:1': No such file"),
    ({"topologies": [{"name": "x", "mix": [""]}]}, r"sweep\.topologies\[0\]\.mix\[0\]: empty topology spec"),
    ({"topologies": [{"name": "x", "mix": ["farm:4::1"]}]}, r"mix\[0\]: topology 'farm:4::1': No such file, and not of the form"),
    ({"costs": [{"name": "x", "set": {"page_fill_ns": 1e400}}]}, r"sweep\.costs\[0\]\.set: page_fill_ns: inf is not finite"),
])
def test_sweep_config_bad_values(sweep, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raises(ValueError, match, load_config, {"sweep": sweep})


@pytest.mark.parametrize("argv, rc, says", [
    (["--vms", "0"], 2, "argument --vms: 0 is less than 1"),
    (["--vms", "x"], 2, "argument --vms: invalid int value: 'x'"),
    (["--workers", "0"], 2, "argument --workers: 0 is less than 1"),
    (["--seed", "-1"], 2, "argument --seed: -1 is less than 0"),
    (["--strategies", "bogus"], 1, "unknown strategy 'bogus'; one of mmio"),
    (["--strategies", ""], 1, "unknown strategy ''"),
    (["--strategies", "mmio,"], 1, "unknown strategy ''"),
    (["--strategies", "mmio,mmio"], 1, "--strategies: 'mmio,mmio' names a strategy twice"),
    (["--costs", "{missing}"], 1, "No such file or directory"),
    (["--costs", "{bad_toml}"], 1, "costs.toml: invalid TOML: Expected ']'"),
    (["--costs", "{unknown_toml}"], 1, "unknown.toml: unknown cost 'bogus'"),
    (["--costs", "{binary}"], 1, "binary.toml: invalid TOML: not UTF-8 text"),
    (["--costs", ""], 1, "path is empty"),
    (["--bogus"], 2, "unrecognized arguments: --bogus"),
])
def test_cli_compare_bad_input(capsys, tmp_path, argv, rc, says):
    (tmp_path / "costs.toml").write_text("[costs\n")
    (tmp_path / "unknown.toml").write_text("[costs]\nbogus = 1\n")
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe")
    paths = dict(missing=tmp_path / "missing.toml", bad_toml=tmp_path / "costs.toml",
                 unknown_toml=tmp_path / "unknown.toml", binary=tmp_path / "binary.toml")
    out_dir = tmp_path / "results"
    got, out, err = run_cli(capsys, "compare", "--out", str(out_dir), *(a.format(**paths) for a in argv))
    assert got == rc, err
    assert "Traceback" not in err and out == ""
    assert not out_dir.exists()                 # refused before any work (or output)
    lines = err.strip().splitlines()
    if rc == 1:
        assert len(lines) == 1 and lines[0].startswith("allones: error: ") and says in lines[0]
    else:
        assert re.match(r"allones( compare)?: error: ", lines[-1]) and says in lines[-1]

