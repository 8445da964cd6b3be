"""The sweep's config: load and check a `[sweep]` TOML table (every error names its key),
and expand it into the grid of cells, in a fixed order, each with a stable key. See sweep.py
for the format. A scan may be a recorded boot (`trace = "path"`): its cells run on the
capture's topology, not on the topology mixes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from .. import __version__
from ..pci.access import MECHANISMS
from ..pci.builders import from_spec
from ..pci.qemu_log import ECAM_ADDRESSING
from ..pci.scans import SCANS
from .compare import DEFAULT_SCANS, TRACE_PARTS, ScanSpec, TraceSpec
from .costmodel import CostModel
from .fleet import DEFAULT_MIX
from ..pci.builders import q35_chipset
from ..pci.topology import Topology
from ..pci.scans import default_mechanism, scan_program
from .strategies import STRATEGIES

#: the columns that are measured (wall time), not computed from the config and seed
TIMING_COLUMNS = ("wall_seconds", "cell_seconds")
#: the parameter columns every row starts with
PARAM_COLUMNS = ("key", "strategy", "scan", "scan_program", "mechanism", "options", "vms",
                 "topology", "mix", "cost", "cost_overrides", "seed")
DEFAULT_VMS = (64,)
DEFAULT_OUT = "sweep-results"
_KEYS = {"seed", "strategies", "scans", "vms", "topologies", "costs", "out"}
_SCAN_KEYS = {"label", "scan", "mechanism", "options"}
_TRACE_KEYS = {"label", "trace", "topology", "part", "ecam_base", "ecam_buses", "ecam_addr", "strict"}


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep config (load_config); `source` is the TOML text it was read from."""

    seed: int = 0
    strategies: tuple[str, ...] = tuple(STRATEGIES)
    scans: tuple[ScanSpec | TraceSpec, ...] = DEFAULT_SCANS
    vms: tuple[int, ...] = DEFAULT_VMS
    topologies: tuple[tuple[str, tuple[str, ...]], ...] = (("default", DEFAULT_MIX),)
    costs: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = (("default", ()),)
    out: str = DEFAULT_OUT
    source: str | None = field(default=None, compare=False, repr=False)

    def to_toml(self) -> str:
        """The config as TOML (load_config of it gives this config back)."""
        lines = ["[sweep]", f"seed = {self.seed}", f"strategies = {_toml(list(self.strategies))}",
                 f"vms = {_toml(list(self.vms))}", f"out = {_toml(self.out)}"]
        for s in self.scans:
            lines += ["", "[[sweep.scans]]", f"label = {_toml(s.label)}"] + _scan_toml(s)
        for name, mix in self.topologies:
            lines += ["", "[[sweep.topologies]]", f"name = {_toml(name)}", f"mix = {_toml(list(mix))}"]
        for name, overrides in self.costs:
            lines += ["", "[[sweep.costs]]", f"name = {_toml(name)}", f"set = {_toml(dict(overrides))}"]
        return "\n".join(lines) + "\n"


def _scan_toml(spec) -> list[str]:
    """A scan's lines of to_toml but its label: a capture's paths are absolute (as loaded),
    so the copy loads from anywhere."""
    if isinstance(spec, ScanSpec):
        return [f"scan = {_toml(spec.scan)}", f"mechanism = {_toml(spec.mechanism)}",
                f"options = {_toml(dict(spec.options))}"]
    optional = (("topology", spec.topology), ("ecam_base", spec.ecam_base), ("ecam_buses", spec.ecam_buses),
                ("ecam_addr", spec.ecam_addr))
    return ([f"trace = {_toml(spec.path)}", f"part = {_toml(spec.part)}", f"strict = {_toml(spec.strict)}"]
            + [f"{key} = {_toml(value)}" for key, value in optional if value is not None])


@dataclass(frozen=True)
class Cell:
    """One fleet of the grid: everything run_cell needs (picklable), and its stable key."""

    index: int
    strategy: str
    scan: ScanSpec | TraceSpec
    vms: int
    topology: str
    mix: tuple[str, ...]
    cost: str
    overrides: tuple[tuple[str, object], ...]
    seed: int
    key: str

    def params(self) -> dict:
        """The parameter columns of this cell's rows."""
        return dict(key=self.key, strategy=self.strategy, scan=self.scan.label,
                    scan_program=self.scan.scan, mechanism=self.scan.mechanism,
                    options=json.dumps(self.scan.options, sort_keys=True), vms=self.vms,
                    topology=self.topology, mix=",".join(self.mix), cost=self.cost,
                    cost_overrides=json.dumps(dict(self.overrides), sort_keys=True), seed=self.seed)

    def cost_model(self) -> CostModel:
        return CostModel.default().with_overrides(**dict(self.overrides))


@dataclass
class SweepResult:
    """What run_sweep did: cell keys run now, skipped (done before), failed (the host refused
    the setup: rows with an error), crashed (raised: not saved, a rerun retries them)."""

    out: Path
    cells: list[Cell]
    rows: list[dict]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    crashed: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


# ---- the config ---------------------------------------------------------------------------

def load_config(config) -> SweepConfig:
    """A SweepConfig from a path to a TOML file, a mapping (parsed TOML) or a SweepConfig.
    Everything is checked here: ValueError naming the key otherwise."""
    if isinstance(config, SweepConfig):
        return config
    source, base = None, Path.cwd()
    if not isinstance(config, (Mapping, str, os.PathLike)):
        raise TypeError(f"config: a path to a TOML file, a mapping or a SweepConfig, not "
                        f"{type(config).__name__}")
    if not isinstance(config, Mapping):
        base = Path(config).resolve().parent     # a capture's relative paths start here
        try:
            source = Path(config).read_text()
        except UnicodeDecodeError as exc:
            raise ValueError(f"{config}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        try:
            config = tomllib.loads(source)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{config}: {exc}") from None
    extra = set(config) - {"sweep"}
    if extra:
        raise ValueError(f"config: unknown key {_names(extra)} (everything goes in [sweep])")
    if "sweep" not in config:
        raise ValueError("config: no [sweep] table")
    sweep = _table(config["sweep"], "sweep")
    unknown = set(sweep) - _KEYS
    if unknown:
        raise ValueError(f"sweep: unknown key {_names(unknown)}; the keys are {', '.join(sorted(_KEYS))}")
    kwargs = dict(source=source)
    if "seed" in sweep:
        seed = sweep["seed"]
        if not _is_int(seed) or seed < 0:
            raise ValueError(f"sweep.seed: {seed!r} is not a non-negative integer")
        kwargs["seed"] = seed
    if "strategies" in sweep:
        kwargs["strategies"] = _strategies(sweep["strategies"])
    if "scans" in sweep:
        kwargs["scans"] = _scans(sweep["scans"], base)
    if "vms" in sweep:
        kwargs["vms"] = _vms(sweep["vms"])
    if "topologies" in sweep:
        kwargs["topologies"] = _topologies(sweep["topologies"])
    if "costs" in sweep:
        kwargs["costs"] = _costs(sweep["costs"])
    if "out" in sweep:
        if not isinstance(sweep["out"], str) or not sweep["out"]:
            raise ValueError(f"sweep.out: {sweep['out']!r} is not a directory name")
        kwargs["out"] = sweep["out"]
    return SweepConfig(**kwargs)


def _names(keys) -> str:
    return ", ".join(repr(k) for k in sorted(keys))


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _table(value, where: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a table, got {value!r}")
    return value


def _list(value, where: str, kind=None) -> list:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list, got {value!r}")
    if kind is not None:
        for i, item in enumerate(value):
            if not isinstance(item, kind):
                raise ValueError(f"{where}[{i}]: {item!r} is not a {kind.__name__}")
    return value


def _unique(values, where: str) -> None:
    seen = set()
    for i, v in enumerate(values):
        if v in seen:
            raise ValueError(f"{where}[{i}]: {v!r} appears twice")
        seen.add(v)


def _fields(table, where: str, allowed: set, required: set) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown key {_names(unknown)}; the keys are {', '.join(sorted(allowed))}")
    missing = required - set(table)
    if missing:
        raise ValueError(f"{where}: missing key {_names(missing)}")


def _name(value, where: str) -> str:
    """A non-empty string, or ValueError naming the key."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: {value!r} is not a name")
    return value


def _strategies(value) -> tuple[str, ...]:
    if value == "all":
        return tuple(STRATEGIES)
    names = _list(value, "sweep.strategies", str)
    for i, name in enumerate(names):
        if name not in STRATEGIES:
            raise ValueError(f"sweep.strategies[{i}]: unknown strategy {name!r}; one of "
                             f"{', '.join(STRATEGIES)} (or \"all\")")
    _unique(names, "sweep.strategies")
    return tuple(names)



def _scans(value, base: Path) -> tuple:
    """The [[sweep.scans]] tables: scan programs, and captures (`trace`) whose relative paths
    start at `base` (the TOML file's directory)."""
    specs = []
    for i, table in enumerate(_list(value, "sweep.scans")):
        where = f"sweep.scans[{i}]"
        table = _table(table, where)
        specs.append(_trace_scan(table, where, base) if "trace" in table else _program_scan(table, where))
    _unique([s.label for s in specs], "sweep.scans (label)")
    return tuple(specs)


def _program_scan(table, where: str) -> ScanSpec:
    _fields(table, where, _SCAN_KEYS, {"scan"})
    name = table["scan"]
    if not isinstance(name, str) or name not in SCANS:
        raise ValueError(f"{where}.scan: unknown scan {name!r}; one of {', '.join(SCANS)}")
    mechanism = table.get("mechanism", default_mechanism(name))
    if mechanism not in MECHANISMS:
        raise ValueError(f"{where}.mechanism: unknown mechanism {mechanism!r}; one of "
                         f"{', '.join(MECHANISMS)}")
    options = dict(_table(table.get("options", {}), f"{where}.options"))
    for key, v in options.items():
        if not isinstance(v, (bool, int, float, str)):
            raise ValueError(f"{where}.options.{key}: {v!r} is not a number, string or boolean")
    _try_scan(name, mechanism, options, f"{where}.options")
    label = _name(table.get("label", name), f"{where}.label")
    return ScanSpec(label, name, mechanism, options)


def _trace_scan(table, where: str, base: Path) -> TraceSpec:
    """A capture: every key checked, and the capture read (TraceSpec), now, not in each cell."""
    _fields(table, where, _TRACE_KEYS, {"trace"})
    path = base / _name(table["trace"], f"{where}.trace")
    if not path.is_file():
        raise ValueError(f"{where}.trace: no trace file {path}")
    topology = table.get("topology")
    if topology is not None:
        topology = _name(topology, f"{where}.topology")
        if (base / topology).is_file():           # else a builder spec, e.g. "q35"
            topology = str((base / topology).resolve())
        try:
            from_spec(topology)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{where}.topology: {exc}") from None
    part = table.get("part", "all")
    if part not in TRACE_PARTS:
        raise ValueError(f"{where}.part: {part!r} is not one of {', '.join(TRACE_PARTS)}")
    ecam_base, ecam_buses = table.get("ecam_base"), table.get("ecam_buses")
    if ecam_base is not None and (not _is_int(ecam_base) or ecam_base < 0):
        raise ValueError(f"{where}.ecam_base: {ecam_base!r} is not an address (an integer >= 0)")
    if ecam_buses is not None and (not _is_int(ecam_buses) or not 1 <= ecam_buses <= 256):
        raise ValueError(f"{where}.ecam_buses: {ecam_buses!r} is not a bus count (1 to 256)")
    ecam_addr = table.get("ecam_addr", "auto")
    if ecam_addr not in ECAM_ADDRESSING:
        raise ValueError(f"{where}.ecam_addr: {ecam_addr!r} is not one of {', '.join(ECAM_ADDRESSING)}")
    strict = table.get("strict", False)
    if not isinstance(strict, bool):
        raise ValueError(f"{where}.strict: {strict!r} is not true or false")
    label = _name(table["label"], f"{where}.label") if "label" in table else ""
    try:
        return TraceSpec(str(path.resolve()), topology, part, ecam_base, strict, label,
                         ecam_buses=ecam_buses, ecam_addr=ecam_addr)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{where}.trace: {exc}") from None


def _try_scan(name: str, mechanism: str, options: dict, where: str) -> None:
    """Start the scan on a one-bus q35 chipset so bad option names or values fail now,
    naming the key, not in every cell later."""
    try:
        _, program = scan_program(Topology(q35_chipset()).with_window(0, 1), name, mechanism, 0, **options)
        next(program, None)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def _vms(value) -> tuple[int, ...]:
    sizes = [value] if _is_int(value) else _list(value, "sweep.vms")
    for i, n in enumerate(sizes):
        if not _is_int(n) or n < 1:
            raise ValueError(f"sweep.vms[{i}]: {n!r} is not a fleet size (an integer >= 1)")
    _unique(sizes, "sweep.vms")
    return tuple(sizes)


def _topologies(value) -> tuple:
    mixes = []
    for i, table in enumerate(_list(value, "sweep.topologies")):
        where = f"sweep.topologies[{i}]"
        table = _table(table, where)
        _fields(table, where, {"name", "mix"}, {"name", "mix"})
        _name(table["name"], f"{where}.name")
        mix = [table["mix"]] if isinstance(table["mix"], str) else _list(table["mix"], f"{where}.mix", str)
        for j, spec in enumerate(mix):
            try:
                from_spec(spec)
            except (ValueError, OSError) as exc:
                raise ValueError(f"{where}.mix[{j}]: {exc}") from None
        mixes.append((table["name"], tuple(mix)))
    _unique([name for name, _ in mixes], "sweep.topologies (name)")
    return tuple(mixes)


def _costs(value) -> tuple:
    variants = []
    for i, table in enumerate(_list(value, "sweep.costs")):
        where = f"sweep.costs[{i}]"
        table = _table(table, where)
        _fields(table, where, {"name", "set"}, {"name"})
        _name(table["name"], f"{where}.name")
        overrides = dict(_table(table.get("set", {}), f"{where}.set"))
        try:
            CostModel.default().with_overrides(**overrides)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}.set: {exc}") from None
        variants.append((table["name"], tuple(sorted(overrides.items()))))
    _unique([name for name, _ in variants], "sweep.costs (name)")
    return tuple(variants)


def _toml(value) -> str:
    """A TOML value (strings, numbers, booleans, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if value != value else
                                                          ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        keys = (k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k) for k in value)
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in zip(keys, value.values())) + "}"
    raise ValueError(f"cannot write {value!r} as TOML")


# ---- the grid -----------------------------------------------------------------------------

def expand(config) -> list[Cell]:
    """The grid's cells in a fixed order: scans, then topology mixes, cost variants, fleet
    sizes, and strategies innermost. A capture's cells have its topology instead of the
    mixes: one per cost variant, fleet size and strategy. `config`: anything load_config
    takes."""
    config = load_config(config)
    resolved = {name: CostModel.default().with_overrides(**dict(o)).as_dict() for name, o in config.costs}
    cells = []
    for spec in config.scans:
        for topology, mix in _mixes(spec, config):
            for cost, overrides in config.costs:
                for n in config.vms:
                    for strategy in config.strategies:
                        params = dict(strategy=strategy, label=spec.label, scan=spec.scan,
                                      mechanism=spec.mechanism, options=spec.options, vms=n,
                                      topology=topology, mix=list(mix), cost=cost,
                                      overrides=dict(overrides), costs=resolved[cost], seed=config.seed,
                                      allones=__version__)   # another model: other cells
                        text = json.dumps(params, sort_keys=True, default=str)
                        key = hashlib.sha256(text.encode()).hexdigest()[:12]
                        cells.append(Cell(len(cells), strategy, spec, n, topology, mix, cost,
                                          overrides, config.seed, key))
    return cells


def _mixes(spec, config: SweepConfig) -> tuple:
    """(name, mix) pairs a scan's cells run on: the config's mixes, or for a capture its own
    topology alone (its options, hence its cells' keys, carry the files' sha256)."""
    if isinstance(spec, TraceSpec):
        return ((spec.options["topology"] or "inferred", ()),)
    return config.topologies
