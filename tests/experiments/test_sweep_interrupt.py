"""`allones sweep` stopped for real: Ctrl-C, a killed worker, SIGTERM, a failing cell, damaged
cell files. Every finished cell must stay on disk, complete, and a rerun must skip exactly
those and end with the table of an uninterrupted run.

The interrupted sweeps are real `python -m allones sweep` processes, each in a session of its
own so that Ctrl-C can be sent to its process group as a terminal does, and so that a finally
can kill whatever is left of it (workers included)."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

import allones
from allones.experiments.sweep import TIMING_COLUMNS, expand, load_config, run_sweep
from allones.pci.builders import q35_default
from allones.pci.parsers import format_lspci

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and POSIX signals")

ROOT = Path(allones.__file__).resolve().parent.parent
# 6 cells of half a second to a second each (a brute-force scan on ~100 VMs; more on a busy
# machine): a signal sent as the first cell is saved finds most of them still to do
VMS = list(range(96, 102))
TOML = f"""\
[sweep]
seed = 1
strategies = ["allones"]
vms = {VMS}

[[sweep.scans]]
scan = "brute-force"
mechanism = "mmconfig"

[[sweep.topologies]]
name = "q35"
mix = ["q35"]
"""
CELLS = len(VMS)
KEPT = rf"(\d+) of {CELLS} cells kept in (.+); rerun to resume"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def untimed(rows):
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The results table of an uninterrupted run (in this process), timing columns dropped."""
    path = tmp_path_factory.mktemp("reference")
    (path / "sweep.toml").write_text(TOML)
    run_sweep(path / "sweep.toml", path / "out", workers=2)
    return untimed(read_csv(path / "out" / "results.csv"))


@pytest.fixture
def config(tmp_path):
    (tmp_path / "sweep.toml").write_text(TOML)
    return tmp_path / "sweep.toml"


# ---- running the command ------------------------------------------------------------------

def _default_signals() -> None:
    """In the child, before exec: SIGINT and SIGTERM as a terminal gives them. A suite run
    under nohup or in a background job inherits SIGINT ignored, and a Python started with it
    ignored installs no KeyboardInterrupt handler: the Ctrl-C tests would test nothing."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


@contextmanager
def sweep_process(config, out, workers):
    """`python -m allones sweep CONFIG --out OUT --workers N`, in a new session (its own
    process group); on the way out, SIGKILL to the group: nothing outlives the test."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)   # this checkout's allones, built in place
    proc = subprocess.Popen([sys.executable, "-m", "allones", "sweep", str(config), "--out", str(out),
                             "--workers", str(workers)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True, preexec_fn=_default_signals)
    try:
        yield proc
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()


def run_command(config, out, workers, timeout=30):
    """The command to its end: (returncode, stdout, stderr)."""
    with sweep_process(config, out, workers) as proc:
        stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout, stderr


def wait_for_cells(proc, celldir, timeout=15.0):
    """Poll until at least one cell file is there (the sweep still running)."""
    deadline = time.monotonic() + timeout
    while not list(celldir.glob("*.json")):
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before any cell was saved: {proc.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no cell saved in {timeout} s")
        time.sleep(0.02)


def workers_of(pid) -> list[int]:
    """The pool's worker processes: the children of `pid` (not multiprocessing's resource
    tracker, should there be one)."""
    children = []
    files = list(Path(f"/proc/{pid}/task").glob("*/children"))
    for path in files:
        try:
            children += [int(c) for c in path.read_text().split()]
        except OSError:   # a thread that just ended
            pass
    if not files:   # a kernel without CONFIG_PROC_CHILDREN: every process's parent
        children = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/stat") if _parent(p) == pid]
    return [c for c in children if b"resource_tracker" not in _cmdline(c)]


def _parent(stat: Path):
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid) -> bool:
    """Running (a zombie is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def the_line(stderr) -> str:
    """stderr's only line (the progress bar, which is not drawn off a terminal, may leave
    blank ones); no traceback."""
    assert "Traceback" not in stderr and "BrokenProcessPool" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def kept_cells(celldir, config) -> dict[str, int]:
    """The cells on disk, each checked whole: {key: mtime_ns}. Anything else in the directory
    (a temporary file, a partial write) fails."""
    keys = {c.key for c in expand(config)}
    kept = {}
    for path in celldir.iterdir():
        key = path.name.removesuffix(".json")
        assert path.name.endswith(".json") and key in keys, f"not a cell of this sweep: {path.name}"
        doc = json.loads(path.read_text())
        assert doc["key"] == key and len(doc["rows"]) == 1 and doc["rows"][0]["key"] == key
        assert doc["rows"][0]["error"] == "" and doc["rows"][0]["modeled_scan_ms_per_vm"] > 0
        kept[key] = path.stat().st_mtime_ns
    return kept


def check_stopped(proc, celldir, config, workers, returncode, message):
    """The stopped sweep: exit code, its one line naming the cells kept (as many as are on
    disk, all complete), no worker left running. The cells kept."""
    start = time.monotonic()
    _, stderr = proc.communicate(timeout=15)
    took = time.monotonic() - start
    assert proc.returncode == returncode, stderr
    match = re.fullmatch(message + KEPT, the_line(stderr))
    assert match, stderr
    kept = kept_cells(celldir, config)
    assert int(match[1]) == len(kept) and Path(match[2]) == celldir
    assert 1 <= len(kept) < CELLS            # stopped part-way, not at the end
    assert took < 5, f"{took:.1f} s to stop"
    assert not any(alive(pid) for pid in workers)
    return kept


def check_resumed(config, out, workers, kept, reference):
    """Rerun: it skips exactly the kept cells (their files untouched) and ends with the table
    of an uninterrupted run."""
    returncode, stdout, stderr = run_command(config, out, workers)
    assert returncode == 0, stderr
    assert f"ran {CELLS - len(kept)}, skipped {len(kept)} (already done)" in stdout
    again = kept_cells(out / "cells", config)
    assert len(again) == CELLS and all(again[key] == mtime for key, mtime in kept.items())
    assert untimed(read_csv(out / "results.csv")) == reference


# ---- the tests ----------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [2, 1])
def test_ctrl_c_keeps_the_finished_cells_and_a_rerun_resumes(config, tmp_path, reference, workers):
    out = tmp_path / "out"
    with sweep_process(config, out, workers) as proc:
        wait_for_cells(proc, out / "cells")
        pool = workers_of(proc.pid)
        assert len(pool) == (workers if workers > 1 else 0)
        os.killpg(proc.pid, signal.SIGINT)          # Ctrl-C: the terminal signals the whole group
        kept = check_stopped(proc, out / "cells", config, pool, 130, "allones: interrupted: ")
    assert not (out / "results.csv").exists()       # a table of part of the grid would mislead
    check_resumed(config, out, workers, kept, reference)


def test_a_killed_worker_stops_the_sweep_with_a_clear_error_and_a_rerun_resumes(config, tmp_path, reference):
    out = tmp_path / "out"
    with sweep_process(config, out, 2) as proc:
        wait_for_cells(proc, out / "cells")
        pool = workers_of(proc.pid)
        assert len(pool) == 2
        os.kill(pool[0], signal.SIGKILL)            # as the OOM killer would
        kept = check_stopped(proc, out / "cells", config, pool, 1,
                             r"allones: error: a worker process died \(killed, or out of memory\?\): ")
    check_resumed(config, out, 2, kept, reference)


def test_sigterm_stops_the_sweep_and_its_workers(config, tmp_path):
    """SIGTERM to the sweep alone (`timeout`, a batch system): by default it would die at once
    and leave its workers waiting for cells forever (and holding its pipes open)."""
    out = tmp_path / "out"
    with sweep_process(config, out, 2) as proc:
        wait_for_cells(proc, out / "cells")
        pool = workers_of(proc.pid)
        os.kill(proc.pid, signal.SIGTERM)
        check_stopped(proc, out / "cells", config, pool, 143, "allones: interrupted: ")


def test_a_failing_cell_in_the_pool_loses_only_itself(tmp_path):
    """A cell that raises (here: a topology file gone after the config was checked) is not
    saved; the pool's other cells are, and a rerun runs only the failed ones."""
    topology = tmp_path / "host.lspci"
    topology.write_text(format_lspci(q35_default()))
    config = load_config({"sweep": {
        "strategies": ["allones", "mmio"], "vms": [1, 2],
        "scans": [{"scan": "firmware", "options": {"passes": 1}}],
        "topologies": [{"name": "q35", "mix": ["q35"]}, {"name": "file", "mix": [str(topology)]}]}})
    cells = expand(config)
    from_file = [c.key for c in cells if c.topology == "file"]
    topology.unlink()
    first = run_sweep(config, tmp_path / "out", workers=2)
    assert sorted(first.crashed) == sorted(from_file) and len(first.ran) == len(cells) - len(from_file)
    assert all("FileNotFoundError" in error for error in first.crashed.values())
    assert sorted(p.stem for p in (tmp_path / "out" / "cells").iterdir()) == sorted(first.ran)
    assert len(read_csv(tmp_path / "out" / "results.csv")) == len(first.ran)
    topology.write_text(format_lspci(q35_default()))
    second = run_sweep(config, tmp_path / "out", workers=2)
    assert sorted(second.ran) == sorted(from_file) and sorted(second.skipped) == sorted(first.ran)
    assert not second.crashed and len(read_csv(tmp_path / "out" / "results.csv")) == len(cells)


def test_damaged_cell_files_are_run_again_not_trusted(tmp_path):
    """A torn or foreign cell file (a crash of another writer, a disk full) is run again, and a
    stray temporary file is not taken for a result."""
    config = load_config({"sweep": {"strategies": ["allones", "mmio"], "vms": [1, 2],
                                    "scans": [{"scan": "firmware", "options": {"passes": 1}}]}})
    out = tmp_path / "out"
    run_sweep(config, out, workers=1)
    expected = untimed(read_csv(out / "results.csv"))
    keys = [c.key for c in expand(config)]
    torn, foreign, gone = (out / "cells" / f"{key}.json" for key in keys[:3])
    torn.write_text(torn.read_text()[:40])
    foreign.write_text(json.dumps({"key": keys[3], "rows": []}))
    (out / "cells" / f".{keys[2]}.123.abcdef.tmp").write_text(gone.read_text())
    gone.unlink()
    again = run_sweep(config, out, workers=1)
    assert again.ran == keys[:3] and again.skipped == keys[3:]
    assert untimed(read_csv(out / "results.csv")) == expected
