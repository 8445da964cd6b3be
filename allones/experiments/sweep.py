"""`allones sweep CONFIG.toml`: a grid of fleets (strategies x scans x fleet sizes x topology
mixes x cost constants), one tidy results table, figures and tables for papers; reproducible
from the config and its seed.

The config is TOML, one `[sweep]` table (every key optional except as noted)::

    [sweep]
    seed = 0                                  # seeds every fleet's topology mix
    strategies = ["mmio", "filled", "allones"]  # or "all" (the default)
    vms = [2, 8]                              # fleet sizes (default [64])
    out = "sweep-results"                     # relative to the working directory

    [[sweep.scans]]                           # default: compare.DEFAULT_SCANS
    label = "probe"                           # default: the scan's name
    scan = "linux-probe"                      # a name of pci.scans.SCANS
    mechanism = "mmconfig"                    # default: linux-x86-default for linux-*, else mmconfig
    options = {pcie_scan_all = true}          # the scan's keyword options

    [[sweep.topologies]]                      # default: one mix, "default" = fleet.DEFAULT_MIX
    name = "q35-only"
    mix = ["q35"]                             # specs for pci.builders.from_spec

    [[sweep.costs]]                           # default: one variant, "default"
    name = "slow-exits"
    set = {exit_to_userspace_ns = 10000}      # CostModel.with_overrides(**set)

Every cell (one fleet) uses the same seed, so strategies compare on the same topologies.
Cells run in a local process pool, or on a Dask cluster (`scheduler=`: an address, a
Cluster or a `distributed.Client`); only the cells travel, results come back to this
process, so workers need `allones` (and any topology file a mix names) but not `out`.

Output, in `out`:

- `cells/<key>.json`: each finished cell's rows, written atomically as it finishes. A rerun
  skips the cells whose file exists (resume); a cell's key hashes all its parameters
  (including the resolved cost constants), so a changed config reruns only what changed.
- `results.csv`: the tidy table, one row per cell in grid order: the parameters, then the
  fleet's host totals and per-VM means (report.summary_rows). Timing columns
  (TIMING_COLUMNS) are measured, everything else is a function of the config and seed.
- `results.parquet`: the same, only if pyarrow (or fastparquet with pandas) is importable;
  skipped silently otherwise.
- `results.md` and `results.tex`: a Markdown table and a LaTeX tabular (booktabs).
- `modeled_time.png/.svg` and `memory.png/.svg`: modeled scan time per VM and host data
  memory against fleet size, a line per strategy.
- `config.toml` (the input) and `manifest.json` (allones version, seed, cell keys).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import re
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10
    import tomli as tomllib

from .. import __version__
from ..pci.access import MECHANISMS
from ..pci.builders import from_spec
from ..pci.scans import SCANS
from . import compare as _compare
from .compare import DEFAULT_SCANS, ScanSpec
from .costmodel import CostModel
from .fleet import DEFAULT_MIX
from ..pci.builders import q35_chipset
from ..pci.topology import Topology
from ..pci.scans import default_mechanism, scan_program
from .report import MIB, format_size, summary_rows
from .strategies import STRATEGIES

#: the columns that are measured (wall time), not computed from the config and seed
TIMING_COLUMNS = ("wall_seconds", "cell_seconds")
#: the parameter columns every row starts with
PARAM_COLUMNS = ("key", "strategy", "scan", "scan_program", "mechanism", "options", "vms",
                 "topology", "mix", "cost", "cost_overrides", "seed")
DEFAULT_VMS = (64,)
DEFAULT_OUT = "sweep-results"
_KEYS = {"seed", "strategies", "scans", "vms", "topologies", "costs", "out"}


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep config (load_config); `source` is the TOML text it was read from."""

    seed: int = 0
    strategies: tuple[str, ...] = tuple(STRATEGIES)
    scans: tuple[ScanSpec, ...] = DEFAULT_SCANS
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
            lines += ["", "[[sweep.scans]]", f"label = {_toml(s.label)}", f"scan = {_toml(s.scan)}",
                      f"mechanism = {_toml(s.mechanism)}", f"options = {_toml(dict(s.options))}"]
        for name, mix in self.topologies:
            lines += ["", "[[sweep.topologies]]", f"name = {_toml(name)}", f"mix = {_toml(list(mix))}"]
        for name, overrides in self.costs:
            lines += ["", "[[sweep.costs]]", f"name = {_toml(name)}", f"set = {_toml(dict(overrides))}"]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Cell:
    """One fleet of the grid: everything run_cell needs (picklable), and its stable key."""

    index: int
    strategy: str
    scan: ScanSpec
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
    source = None
    if not isinstance(config, Mapping):
        source = Path(config).read_text()
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
        kwargs["scans"] = _scans(sweep["scans"])
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



def _scans(value) -> tuple[ScanSpec, ...]:
    specs = []
    for i, table in enumerate(_list(value, "sweep.scans")):
        where = f"sweep.scans[{i}]"
        table = _table(table, where)
        _fields(table, where, {"label", "scan", "mechanism", "options"}, {"scan"})
        name = table["scan"]
        if name not in SCANS:
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
        label = table.get("label", name)
        if not isinstance(label, str) or not label:
            raise ValueError(f"{where}.label: {label!r} is not a name")
        specs.append(ScanSpec(label, name, mechanism, options))
    _unique([s.label for s in specs], "sweep.scans (label)")
    return tuple(specs)


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
        if not isinstance(table["name"], str) or not table["name"]:
            raise ValueError(f"{where}.name: {table['name']!r} is not a name")
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
        if not isinstance(table["name"], str) or not table["name"]:
            raise ValueError(f"{where}.name: {table['name']!r} is not a name")
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
    sizes, and strategies innermost. `config`: anything load_config takes."""
    config = load_config(config)
    resolved = {name: CostModel.default().with_overrides(**dict(o)).as_dict() for name, o in config.costs}
    cells = []
    for spec in config.scans:
        for topology, mix in config.topologies:
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


def run_cell(cell: Cell) -> list[dict]:
    """Run one cell's fleet: its summary row (parameters first, then report.summary_rows'
    host totals and per-VM means). A setup the host refuses is a row with its error."""
    start = time.perf_counter()
    # compare.run_one: the errors a real setup would fail with become the fleet's error
    result = _compare.run_one(cell.strategy, cell.scan, cell.vms, cell.mix, cell.seed, cell.cost_model())
    params = cell.params()
    row = dict(params)
    row.update((k, v) for k, v in summary_rows([result])[0].items() if k not in params)
    row["cell_seconds"] = time.perf_counter() - start
    return [{k: _plain(v) for k, v in row.items()}]


def _plain(value):
    """numpy scalars as Python ones (for JSON)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


# ---- running ------------------------------------------------------------------------------

def run_sweep(config, out=None, scheduler=None, workers: int | None = None,
              progress=None) -> SweepResult:
    """Run every cell not already done in `out` (default: the config's out), then write the
    results, tables, figures, config copy and manifest there.

    scheduler: None runs a local process pool of `workers` processes (default: the CPUs;
    1 runs in this process); an address (str), a dask Cluster or a distributed.Client
    submits the cells to Dask (`workers` is then the cluster's business). progress: called
    as `progress(done, total)` at the start and as cells finish (skipped cells count done).
    """
    config = load_config(config)
    if workers is not None and workers < 1:
        raise ValueError(f"workers {workers} must be at least 1")
    out = Path(out if out is not None else config.out)
    cells = expand(config)
    celldir = out / "cells"
    celldir.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(config.source if config.source is not None else config.to_toml())
    result = SweepResult(out, cells, [])
    stored = {}
    for cell in cells:
        rows = _read_cell(celldir, cell.key)
        if rows is not None:
            stored[cell.key] = rows
            result.skipped.append(cell.key)
    todo = [c for c in cells if c.key not in stored]

    def report(done_cell, rows=None, exc=None):
        if exc is None:
            _write_cell(celldir, done_cell, rows)
            stored[done_cell.key] = rows
            result.ran.append(done_cell.key)
        else:
            result.crashed[done_cell.key] = f"{type(exc).__name__}: {exc}"
        if progress:
            progress(len(stored) + len(result.crashed), len(cells))

    if progress:
        progress(len(stored), len(cells))
    if todo:
        if scheduler is not None:
            _run_dask(todo, scheduler, report)
        elif (workers or os.cpu_count() or 1) == 1 or len(todo) == 1:
            for cell in todo:
                try:
                    rows = run_cell(cell)
                except Exception as exc:   # a bug in one cell: keep the others
                    report(cell, exc=exc)
                else:
                    report(cell, rows)
        else:
            _run_pool(todo, min(workers or os.cpu_count() or 1, len(todo)), report)
    result.rows = [row for cell in cells for row in stored.get(cell.key, [])]
    result.failed = [c.key for c in cells if any(r.get("error") for r in stored.get(c.key, []))]
    result.files = write_outputs(result.rows, cells, config, out, missing=list(result.crashed))
    return result


def _run_pool(todo, workers, report) -> None:
    pool = ProcessPoolExecutor(workers)
    try:
        futures = {pool.submit(run_cell, cell): cell for cell in todo}
        for future in as_completed(futures):
            try:
                rows = future.result()
            except Exception as exc:
                report(futures[future], exc=exc)
            else:
                report(futures[future], rows)
    finally:   # interrupted: drop the queued cells, let the running ones end
        pool.shutdown(wait=True, cancel_futures=True)


def _run_dask(todo, scheduler, report) -> None:
    try:
        from distributed import Client, as_completed as dask_completed
    except ImportError as exc:
        raise ImportError("a Dask scheduler needs dask.distributed: pip install 'allones[dask]'") from exc
    own = not isinstance(scheduler, Client)
    client = Client(scheduler) if own else scheduler
    token = uuid.uuid4().hex[:8]   # this run's tasks, whatever else the cluster holds
    futures = []
    try:
        by_key = {}
        for cell in todo:
            future = client.submit(run_cell, cell, key=f"allones-sweep-{cell.key}-{token}")
            by_key[future.key] = cell
            futures.append(future)
        for future in dask_completed(futures):
            try:
                rows = future.result()
            except Exception as exc:
                report(by_key[future.key], exc=exc)
            else:
                report(by_key[future.key], rows)
            future.release()
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending)
        if own:
            client.close()


def _read_cell(celldir: Path, key: str):
    """A finished cell's rows, or None (not there, or not readable: run it again)."""
    try:
        doc = json.loads((celldir / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("key") != key or not isinstance(doc.get("rows"), list):
        return None
    return doc["rows"]


def _write_cell(celldir: Path, cell: Cell, rows) -> None:
    """cells/<key>.json, atomically: a temporary file renamed over it."""
    path = celldir / f"{cell.key}.json"
    tmp = celldir / f".{cell.key}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp"
    doc = dict(key=cell.key, allones_version=__version__, params=cell.params(), rows=rows)
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, path)


# ---- outputs ------------------------------------------------------------------------------

def write_outputs(rows, cells, config: SweepConfig, out: Path, missing=()) -> list[Path]:
    """results.csv (+ .parquet), .md, .tex, the figures and manifest.json; the paths."""
    out = Path(out)
    files = [out / "results.csv"]
    columns = _columns(rows)
    with open(files[0], "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    if rows and _write_parquet(rows, columns, out / "results.parquet"):
        files.append(out / "results.parquet")
    files.append(out / "results.md")
    files[-1].write_text(markdown_table(rows))
    files.append(out / "results.tex")
    files[-1].write_text(latex_table(rows))
    files += plot_sweep(rows, out)
    files.append(out / "config.toml")
    files.append(out / "manifest.json")
    costs = {name: CostModel.default().with_overrides(**dict(o)).as_dict() for name, o in config.costs}
    manifest = dict(allones_version=__version__, python=platform.python_version(), seed=config.seed,
                    config="config.toml", costs=costs, timing_columns=list(TIMING_COLUMNS),
                    cells=[dict(key=c.key, strategy=c.strategy, scan=c.scan.label, vms=c.vms,
                                topology=c.topology, cost=c.cost) for c in cells],
                    missing=list(missing), files=[p.name for p in files])
    files[-1].write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    return files


def _columns(rows) -> list[str]:
    """The parameters, then the results as summary_rows orders them, timing last."""
    seen = dict.fromkeys(PARAM_COLUMNS)
    for row in rows:
        seen.update(dict.fromkeys(row))
    return [c for c in seen if c not in TIMING_COLUMNS] + [c for c in TIMING_COLUMNS if c in seen]


def _write_parquet(rows, columns, path: Path) -> bool:
    full = [{c: row.get(c) for c in columns} for row in rows]
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        try:
            import fastparquet  # noqa: F401
            import pandas
        except ImportError:
            return False
        pandas.DataFrame(full, columns=columns).to_parquet(path, engine="fastparquet", index=False)
        return True
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(full), path)
    return True


def _table_rows(rows):
    """(headers, [[cell text]]) of the Markdown and LaTeX tables: one row per cell."""
    headers = ["strategy", "scan", "VMs", "topology", "costs", "host data", "page tables",
               "slots/VM", "EPT faults/VM", "exits/VM", "scan ms/VM", "setup ms/VM", "cell"]
    body = []
    for r in rows:
        line = [r["strategy"], r["scan"], str(r["vms"]), r["topology"], r["cost"]]
        if r.get("error"):
            line += [f"fails: {r['error']}"] + [""] * 6
        else:
            line += [format_size(r["data_bytes"]), format_size(r["table_bytes"]), f"{r['memslots_per_vm']:.1f}",
                     f"{r['faults_per_vm']:,.0f}", f"{r['mmio_exits_per_vm'] + r['kernel_exits_per_vm']:,.0f}",
                     f"{r['modeled_scan_ms_per_vm']:.3f}", f"{r['modeled_setup_ms_per_vm']:.3f}"]
        body.append(line + [r["key"]])
    return headers, body


def markdown_table(rows) -> str:
    """A Markdown table, one row per cell (exits: to userspace and in-kernel)."""
    headers, body = _table_rows(rows)
    esc = lambda s: s.replace("|", "\\|").replace("\n", " ")   # noqa: E731
    right = {"VMs", "host data", "page tables", "slots/VM", "EPT faults/VM", "exits/VM",
             "scan ms/VM", "setup ms/VM"}
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if h in right else "---" for h in headers) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in line) + " |" for line in body]
    return "\n".join(lines) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def latex_table(rows) -> str:
    """A LaTeX tabular, booktabs style (\\usepackage{booktabs}), one row per cell."""
    headers, body = _table_rows(rows)
    headers, body = headers[:-1], [line[:-1] for line in body]   # no key: too wide for a page
    spec = "llrll" + "r" * (len(headers) - 5)
    lines = ["% allones sweep: needs \\usepackage{booktabs}", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(latex_escape(h) for h in headers) + r" \\", "\\midrule"]
    for line in body:
        if line[5].startswith("fails: "):
            line = line[:5] + [f"\\multicolumn{{{len(headers) - 5}}}{{l}}{{{latex_escape(line[5][:60])}}}"]
            lines.append(" & ".join(latex_escape(c) for c in line[:5]) + " & " + line[5] + r" \\")
        else:
            lines.append(" & ".join(latex_escape(c) for c in line) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def plot_sweep(rows, out: Path) -> list[Path]:
    """modeled_time and memory, PNG and SVG (matplotlib, Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows if not r.get("error")]
    written = []
    with matplotlib.rc_context({"svg.hashsalt": "allones-sweep"}):
        for name, draw in (("modeled_time", _time_figure), ("memory", _memory_figure)):
            fig = draw(plt, ok)
            for ext in ("png", "svg"):
                path = Path(out) / f"{name}.{ext}"
                fig.savefig(path, dpi=130, bbox_inches="tight",
                            metadata={"Date": None} if ext == "svg" else None)
                written.append(path)
            plt.close(fig)
    return written


_STYLES = ("-", "--", ":", "-.")
_MARKERS = "osD^vx+*<>"   # overlapping lines stay visible


def _panels(plt, nrows, ncols):
    fig, axes = plt.subplots(nrows, ncols, figsize=(min(4.2 * ncols, 18), min(3.4 * nrows, 14) + 0.6),
                             squeeze=False)
    return fig, axes


def _lines(ax, rows, ykey, scale=1.0, styles=True):
    """A line per strategy (and topology, by line style) over fleet sizes."""
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    topologies = list(dict.fromkeys(r["topology"] for r in rows))
    positive = []
    for s, strategy in enumerate(strategies):
        for t, topology in enumerate(topologies):
            pts = sorted((r["vms"], r[ykey] * scale) for r in rows
                         if r["strategy"] == strategy and r["topology"] == topology)
            if not pts:
                continue
            positive += [y for _, y in pts if y > 0]
            label = strategy if len(topologies) == 1 or not styles else f"{strategy} ({topology})"
            ax.plot(*zip(*pts), _STYLES[t % len(_STYLES)] if styles else "-", label=label,
                    color=f"C{s % 10}", marker=_MARKERS[s % len(_MARKERS)], ms=4, mfc="none")
    xs = sorted({r["vms"] for r in rows})
    if xs:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
    if positive and max(positive) > 10 * min(positive):   # a log axis only over a decade or more
        ax.set_yscale("log")


def _legend(ax):
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)


def _time_figure(plt, rows):
    scans = list(dict.fromkeys(r["scan"] for r in rows)) or ["(no results)"]
    costs = list(dict.fromkeys(r["cost"] for r in rows)) or [""]
    fig, axes = _panels(plt, len(costs), len(scans))
    for i, cost in enumerate(costs):
        for j, scan in enumerate(scans):
            ax = axes[i][j]
            _lines(ax, [r for r in rows if r["scan"] == scan and r["cost"] == cost], "modeled_scan_ms_per_vm")
            ax.set_title(scan if len(costs) == 1 else f"{scan}\ncosts: {cost}", fontsize=9)
            ax.set(xlabel="VMs on the host" if i == len(costs) - 1 else None,
                   ylabel="modeled scan ms per VM" if j == 0 else None)
    _legend(axes[0][0])
    fig.suptitle("Modeled scan time per VM (ECAM + port I/O) vs fleet size")
    fig.tight_layout()
    return fig


def _memory_figure(plt, rows):
    """Host data memory does not depend on the cost constants: the first variant's rows."""
    first = next((r["cost"] for r in rows), None)
    rows = [r for r in rows if r["cost"] == first]
    scans = list(dict.fromkeys(r["scan"] for r in rows)) or ["(no results)"]
    topologies = list(dict.fromkeys(r["topology"] for r in rows)) or [""]
    fig, axes = _panels(plt, len(topologies), len(scans))
    for i, topology in enumerate(topologies):
        for j, scan in enumerate(scans):
            ax = axes[i][j]
            group = [r for r in rows if r["scan"] == scan and r["topology"] == topology]
            _lines(ax, group, "data_bytes", 1 / MIB, styles=False)
            for strategy in dict.fromkeys(r["strategy"] for r in group):
                merged = sorted((r["vms"], r["data_bytes_merged"] / MIB) for r in group
                                if r["strategy"] == strategy and r["data_bytes_merged"] != r["data_bytes"])
                if merged:
                    ax.plot(*zip(*merged), ":", c="grey", marker=".", label=f"{strategy}, merged")
            ax.set_title(scan if len(topologies) == 1 else f"{scan}\nmix: {topology}", fontsize=9)
            ax.set(xlabel="VMs on the host" if i == len(topologies) - 1 else None,
                   ylabel="host data memory (MiB)" if j == 0 else None)
    _legend(axes[0][0])
    fig.suptitle("Host data memory vs fleet size (strategies with none are not drawn on a log axis)")
    fig.tight_layout()
    return fig
