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

    [[sweep.scans]]                           # a recorded boot instead of a scan program
    label = "my boot"                         # default: trace:<file name>:<part>
    trace = "boot.log.gz"                     # QEMU trace log or CSV (pci.traces.load_capture)
    topology = "info_pci.txt"                 # a file or a builder spec (default: from the log)
    part = "kernel"                           # all (the default), firmware or kernel
    ecam_base = 0xb0000000                    # bus 0's ECAM address (default: from the log)
    # also ecam_buses, ecam_addr, strict: load_capture's (as `allones compare --trace` takes them)

    [[sweep.topologies]]                      # default: one mix, "default" = fleet.DEFAULT_MIX
    name = "q35-only"
    mix = ["q35"]                             # specs for pci.builders.from_spec

    [[sweep.costs]]                           # default: one variant, "default"
    name = "slow-exits"
    set = {exit_to_userspace_ns = 10000}      # CostModel.with_overrides(**set)

Relative `trace` and `topology` paths start at the TOML file's directory. A capture's cells
ignore `[[sweep.topologies]]`: every VM has the capture's topology, so it gives one cell per
strategy, fleet size and cost variant, whose key carries the sha256 of its files (change
the file and its cells run again). The capture is read when the config loads (a bad one is
an error naming its key); workers get it from this process or read it again.

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

Stopping early loses only the cells running at the time: Ctrl-C (KeyboardInterrupt) drops
the queued cells, stops the running ones and raises SweepInterrupted; a local worker process
that dies (killed, out of memory) stops the sweep with WorkerDied. Both say how many cells are
kept; the tables and figures are not written; a rerun resumes.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path


from .. import __version__
from . import compare as _compare
from .report import summary_rows

#: the columns that are measured (wall time), not computed from the config and seed
from .sweep_config import (DEFAULT_OUT, DEFAULT_VMS, PARAM_COLUMNS, TIMING_COLUMNS, Cell,
                           SweepConfig, SweepResult, expand, load_config)
from .sweep_outputs import latex_escape, latex_table, markdown_table, plot_sweep, write_outputs

__all__ = ["load_config", "expand", "run_cell", "run_sweep", "write_outputs", "markdown_table",
           "latex_table", "latex_escape", "plot_sweep", "SweepConfig", "SweepResult", "Cell",
           "TIMING_COLUMNS", "PARAM_COLUMNS", "DEFAULT_OUT", "DEFAULT_VMS", "SweepInterrupted",
           "WorkerDied"]


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during run_sweep: the finished cells are saved, `result` says which (ran,
    skipped). Still a KeyboardInterrupt, so callers stop as they would have."""

    def __init__(self, message: str, result: SweepResult):
        super().__init__(message)
        self.result = result


class WorkerDied(RuntimeError):
    """A local worker process died (killed, out of memory): the pool is gone, so the sweep
    stops; the finished cells are saved, `result` says which."""

    def __init__(self, message: str, result: SweepResult):
        super().__init__(message)
        self.result = result


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
    # every finished cell is on disk already (report): stopping early only has to say so
    kept = lambda: f"{len(stored)} of {len(cells)} cells kept in {celldir}"   # noqa: E731
    try:
        _run_cells(todo, scheduler, workers, report)
        result.rows = [row for cell in cells for row in stored.get(cell.key, [])]
        result.failed = [c.key for c in cells if any(r.get("error") for r in stored.get(c.key, []))]
        result.files = write_outputs(result.rows, cells, config, out, missing=list(result.crashed))
    except KeyboardInterrupt:
        raise SweepInterrupted(f"interrupted: {kept()}; rerun to resume", result) from None
    except BrokenProcessPool as exc:
        raise WorkerDied(f"a worker process died (killed, or out of memory?): {kept()}; "
                         f"rerun to resume", result) from exc
    return result


def _run_cells(todo, scheduler, workers, report) -> None:
    """The cells not done yet: on Dask, in a local pool, or one by one in this process."""
    if not todo:
        return
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


def _run_pool(todo, workers, report) -> None:
    pool = ProcessPoolExecutor(workers, initializer=_worker_init,
                               initargs=(_compare.captures([cell.scan for cell in todo]),))
    futures, reported = {}, set()
    try:
        futures = {pool.submit(run_cell, cell): cell for cell in todo}
        for future in as_completed(futures):
            reported.add(future)
            _report_future(future, futures[future], report)
    except BaseException:
        # Ctrl-C or a dead worker: stop now, not when the running cells end (their work is
        # lost either way), drop the queued ones, and keep any that finished meanwhile
        _stop_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)
        for future, cell in futures.items():
            if future not in reported and future.done() and not future.cancelled() \
                    and future.exception() is None:
                report(cell, future.result())
        raise
    pool.shutdown(wait=True)


def _report_future(future, cell, report) -> None:
    try:
        rows = future.result()
    except BrokenProcessPool:
        raise   # not this cell's fault: every cell not yet finished fails with it
    except Exception as exc:   # a bug in one cell: keep the others
        report(cell, exc=exc)
    else:
        report(cell, rows)


def _worker_init(loaded: dict) -> None:
    """In each worker: the parent's captures (compare.share_captures), and its signals."""
    _compare.share_captures(loaded)
    _worker_signals()


def _worker_signals() -> None:
    """In each worker: Ctrl-C reaches the whole process group, and a worker waiting for a
    cell would die of it with a traceback of its own; the sweep's process stops them, with
    SIGTERM, which must kill (a handler the parent had, e.g. the command's, is inherited)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stop_workers(pool) -> None:
    """Terminate the pool's processes: shutdown() alone waits for the running cells. Private,
    but there from 3.8 to 3.14 (whose terminate_workers() would not wait for the pool to end);
    without it the running cells are waited for, as before."""
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


def _run_dask(todo, scheduler, report) -> None:
    try:
        from distributed import Client, as_completed as dask_completed
    except ImportError as exc:
        raise ImportError("a Dask scheduler needs dask.distributed: pip install 'allones[dask]'") from exc
    own = not isinstance(scheduler, Client)
    client = _connect(Client, scheduler) if own else scheduler
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


#: how long a scheduler address may take to answer (distributed's default is 30 s)
SCHEDULER_CONNECT_SECONDS = 5


def _connect(Client, scheduler):
    """A Client of the scheduler at `scheduler` (an address or a Cluster); ConnectionError
    naming the address if nothing there answers as a Dask scheduler within
    SCHEDULER_CONNECT_SECONDS."""
    try:
        return Client(scheduler, timeout=SCHEDULER_CONNECT_SECONDS)
    except (OSError, ValueError, MemoryError) as exc:
        # MemoryError: a peer that is not a scheduler answered, and its bytes were read as
        # a frame length
        raise ConnectionError(f"no Dask scheduler answers at {scheduler} within "
                              f"{SCHEDULER_CONNECT_SECONDS} s ({type(exc).__name__}: {exc})") from None


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
    try:
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        os.replace(tmp, path)
    except BaseException:   # Ctrl-C or a full disk half-way: no stray temporary file
        tmp.unlink(missing_ok=True)
        raise


# ---- outputs ------------------------------------------------------------------------------
