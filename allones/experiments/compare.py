"""`allones compare`: every strategy, on a fleet of VMs, under the scans a real guest makes.

The default grid: 64 VMs (the q35 default and root-port farms, seeded), every strategy, and
four scans: the Linux x86 boot with the x86 default mechanism (port I/O below 0x100: what a
strategy cannot change) and with MMCONFIG preferred, a brute-force scan, and OVMF's six
firmware passes. Fleets run in a process pool; each is independent and seeded.

A recorded boot (TraceSpec: a QEMU trace log or CSV and the topology it ran on) is a scan
too: every VM of its fleets has the capture's topology and replays the capture.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NoMemory
from ..pci.access import MECHANISMS
from ..pci.builders import from_spec
from ..pci.ecam import _index
from ..pci.holes import MemslotBudgetError
from ..pci.qemu_log import ECAM_ADDRESSING
from ..pci.scans import OPTION_CHECKS, SCANS
from .costmodel import CostModel
from .fleet import DEFAULT_MIX, FleetResult, default_ram_budget, run_fleet
from .strategies import STRATEGIES, get_strategy


@dataclass(frozen=True)
class ScanSpec:
    """A scan as the reports name it: label, scan program, mechanism, options."""

    label: str
    scan: str
    mechanism: str
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        """Check every field now (not in each fleet later): ValueError or TypeError naming it."""
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"ScanSpec label {self.label!r} is not a non-empty str")
        if not isinstance(self.scan, str) or self.scan not in SCANS:
            raise ValueError(f"ScanSpec {self.label!r}: unknown scan {self.scan!r}; one of {', '.join(SCANS)}")
        if not isinstance(self.mechanism, str) or self.mechanism not in MECHANISMS:
            raise ValueError(f"ScanSpec {self.label!r}: unknown mechanism {self.mechanism!r}; one of "
                             f"{', '.join(MECHANISMS)}")
        if not isinstance(self.options, Mapping):
            raise TypeError(f"ScanSpec {self.label!r}: options must be a mapping, not "
                            f"{type(self.options).__name__}")
        allowed = set(inspect.signature(SCANS[self.scan]).parameters) - {"cycles", "topology", "rng"}
        for key, value in self.options.items():
            if key not in allowed:
                raise ValueError(f"ScanSpec {self.label!r}: scan {self.scan!r} takes no option {key!r} "
                                 f"(it takes: {', '.join(sorted(allowed)) or 'none'})")
            try:
                OPTION_CHECKS[key](key, value)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"ScanSpec {self.label!r}: {exc}") from None


#: the parts of a capture TraceSpec replays (traces.Trace.part)
TRACE_PARTS = ("all", "firmware", "kernel")

# per process: TraceSpec.cache_key() -> Capture. Workers get the parent's (share_captures)
# or read the file again: a capture is read once per process, never pickled per fleet
_CAPTURES: dict = {}


@dataclass(frozen=True)
class TraceSpec:
    """A recorded boot as a scan of the grid: a capture (QEMU trace log or CSV, read by
    allones.pci.traces.load_capture), the topology it ran on (a spec or file for
    builders.from_spec; None: inferred from the log where load_capture can), the part to
    replay, and load_capture's `ecam_base`, `strict`, `ecam_buses` and `ecam_addr`. The label
    defaults to `trace:<file name>:<part>`.

    Construction reads and checks the capture (a bad one fails here, before any fleet) and
    records `digest`, the sha256 of the trace file and of the topology file if there is one,
    and `mechanism`, the recorded accesses' (mmconfig, conf1 or recorded: both)."""

    path: str
    topology: str | None = None
    part: str = "all"
    ecam_base: int | None = None
    strict: bool = False
    label: str = ""
    ecam_buses: int | None = None
    ecam_addr: str = "auto"
    digest: str = field(init=False, default="")
    mechanism: str = field(init=False, default="")

    #: the "scan program" column of the reports, for every capture
    scan = "trace"

    def __post_init__(self):
        """Check the fields, hash the files, read the capture: ValueError or OSError naming
        the problem otherwise."""
        if not isinstance(self.path, (str, os.PathLike)) or not str(self.path):
            raise TypeError(f"TraceSpec path: a file name, not {self.path!r}")
        object.__setattr__(self, "path", str(self.path))
        if self.topology is not None and (not isinstance(self.topology, str) or not self.topology):
            raise TypeError(f"TraceSpec topology: a spec or file name (or None), not {self.topology!r}")
        if self.part not in TRACE_PARTS:
            raise ValueError(f"unknown trace part {self.part!r}: one of {', '.join(TRACE_PARTS)}")
        if self.ecam_base is not None and (not isinstance(self.ecam_base, int) or isinstance(
                self.ecam_base, bool) or self.ecam_base < 0):
            raise ValueError(f"ecam_base {self.ecam_base!r} is not an address (an integer >= 0)")
        if self.ecam_buses is not None and (not isinstance(self.ecam_buses, int) or isinstance(
                self.ecam_buses, bool) or not 1 <= self.ecam_buses <= 256):
            raise ValueError(f"ecam_buses {self.ecam_buses!r} is not a bus count (1 to 256)")
        if self.ecam_addr not in ECAM_ADDRESSING:
            raise ValueError(f"ecam_addr {self.ecam_addr!r}: one of {', '.join(ECAM_ADDRESSING)}")
        if not isinstance(self.strict, bool):
            raise TypeError(f"TraceSpec strict: a bool, not {self.strict!r}")
        if not isinstance(self.label, str):
            raise TypeError(f"TraceSpec label: a str, not {self.label!r}")
        object.__setattr__(self, "label", self.label or f"trace:{Path(self.path).name}:{self.part}")
        object.__setattr__(self, "digest", self._file_digest())
        object.__setattr__(self, "mechanism", self.load().scan.mechanism)

    @property
    def options(self) -> dict:
        """What identifies the capture, wherever its files are (the sweep's options column
        and cell keys): file names, part, load options and the files' sha256."""
        topology = self.topology
        if topology is not None and Path(topology).is_file():
            topology = Path(topology).name
        return dict(trace=Path(self.path).name, topology=topology, part=self.part,
                    ecam_base=self.ecam_base, ecam_buses=self.ecam_buses, ecam_addr=self.ecam_addr,
                    strict=self.strict, sha256=self.digest)

    def cache_key(self) -> tuple:
        """The per-process cache's key: where the files are, how they are read, and what
        they held when this spec was made."""
        return (str(Path(self.path).resolve()), self.topology, self.part, self.ecam_base,
                self.ecam_buses, self.ecam_addr, self.strict, self.digest)

    def load(self):
        """The Capture (allones.pci.traces), read once per process. ValueError if the files
        changed since this spec was made (its results would not be the ones it names)."""
        key = self.cache_key()
        if key not in _CAPTURES:
            if self._file_digest() != self.digest:
                raise ValueError(f"{self.path} (or its topology) changed since it was checked")
            _CAPTURES[key] = self._read()
        return _CAPTURES[key]

    def _read(self):
        from ..pci.traces import load_capture
        capture = load_capture(self.path, self.topology, self.part, ecam_base=self.ecam_base,
                               ecam_buses=self.ecam_buses, ecam_addr=self.ecam_addr, strict=self.strict)
        if not len(capture.scan):     # nothing to replay: not a trace of a boot at all
            raise ValueError(f"{self.path}: no config-space accesses in part {self.part!r} (a QEMU "
                             "trace log's memory_region_ops_* lines, or CSV op,offset,size,value rows)")
        return capture

    def _file_digest(self) -> str:
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"no trace file {self.path}")
        files = [self.path] + ([self.topology] if self.topology and Path(self.topology).is_file() else [])
        digest = hashlib.sha256()
        for name in files:
            with open(name, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()


def captures(scans) -> dict:
    """The loaded captures of the TraceSpecs among `scans` (share_captures' argument)."""
    return {spec.cache_key(): spec.load() for spec in scans if isinstance(spec, TraceSpec)}


def share_captures(loaded: dict) -> None:
    """A pool initializer: this process's capture cache gets the parent's, so a worker
    neither reads the files again nor receives the arrays with every fleet (forked workers
    inherit them; spawned ones get them pickled once)."""
    _CAPTURES.update(loaded)


DEFAULT_SCANS = (
    ScanSpec("linux-boot (x86 default)", "linux-boot-x86", "linux-x86-default"),
    ScanSpec("linux-boot (MMCONFIG)", "linux-boot-x86", "mmconfig"),
    ScanSpec("brute-force", "brute-force", "mmconfig"),
    ScanSpec("firmware (OVMF-like)", "firmware", "mmconfig", {"passes": 6}),
)
#: the names `compare --scans` takes for DEFAULT_SCANS (any other scan program's name runs
#: it with its default mechanism and options)
SCAN_NAMES = dict(zip(("linux-boot-x86", "linux-boot-mmconfig", "brute-force", "firmware"), DEFAULT_SCANS))


def compare_scans(names: str | None) -> tuple[ScanSpec, ...]:
    """ScanSpecs from comma-separated names: SCAN_NAMES, or any scan program of
    allones.pci.scans with its default mechanism (None: DEFAULT_SCANS). ValueError naming
    the choices otherwise."""
    from ..pci.scans import default_mechanism
    if names is None:
        return DEFAULT_SCANS
    specs = []
    for name in (n.strip() for n in names.split(",")):
        if name in SCAN_NAMES:
            specs.append(SCAN_NAMES[name])
        elif name in SCANS:
            specs.append(ScanSpec(name, name, default_mechanism(name)))
        else:
            raise ValueError(f"unknown scan {name!r}; one of {', '.join(dict.fromkeys([*SCAN_NAMES, *SCANS]))}")
    if len({s.label for s in specs}) != len(specs):
        raise ValueError(f"scans repeat: {names!r}")
    return tuple(specs)


def run_one(strategy, spec, n_vms, mix, seed, costs, ram_budget=None) -> tuple:
    """One fleet of a ScanSpec (VMs drawn from `mix`) or a TraceSpec (every VM on the
    capture's topology); a strategy the host refuses (memfd-alias past vm.max_map_count:
    ENOMEM, too many memslots) is a result with its error, as the real setup would fail. Any
    other error is a bug and propagates. ram_budget: run_fleet's."""
    trace = spec.load().scan if isinstance(spec, TraceSpec) else None
    try:
        if trace is not None:
            return spec, run_fleet(strategy, n_vms=n_vms, costs=costs, ram_budget=ram_budget, plan=trace)
        return spec, run_fleet(strategy, spec.scan, spec.mechanism, n_vms, mix, seed, costs,
                               options=spec.options, ram_budget=ram_budget)
    except (NoMemory, MemslotBudgetError) as exc:
        return spec, FleetResult(strategy, spec.scan if trace is None else trace.name, spec.mechanism,
                                 [], {}, error=str(exc), costs=costs.as_dict())


def compare(strategies=tuple(STRATEGIES), scans=DEFAULT_SCANS, n_vms: int = 64, mix=DEFAULT_MIX,
            seed: int = 0, costs: CostModel | None = None, workers: int | None = None,
            progress=None, ram_budget: int | None = None) -> list[tuple[ScanSpec | TraceSpec, FleetResult]]:
    """Run every (strategy, scan) fleet; results in grid order (a scan: a ScanSpec or a
    TraceSpec, whose fleets ignore `mix` and `seed`). `progress(done, total)` is
    called as fleets finish. workers: processes (default: the CPUs; 1 runs in this process).
    ram_budget: bytes all fleets running at once may really allocate, shared between them
    (default: fleet.default_ram_budget); filled fleets past their share are counted, not
    allocated, with the same results."""
    if isinstance(strategies, str) or not strategies:
        raise ValueError("strategies: a non-empty list of names")
    strategies = [get_strategy(s).name for s in strategies]
    if len(set(strategies)) != len(strategies):
        raise ValueError(f"strategies repeat: {strategies}")
    if isinstance(scans, (str, ScanSpec, TraceSpec)) or not scans:
        raise ValueError("scans: a non-empty list of ScanSpecs and TraceSpecs")
    scans = list(scans)
    for i, spec in enumerate(scans):
        if not isinstance(spec, (ScanSpec, TraceSpec)):
            raise TypeError(f"scans[{i}] must be a ScanSpec, not {type(spec).__name__} (or a TraceSpec)")
    if len({s.label for s in scans}) != len(scans):
        raise ValueError(f"scan labels repeat: {[s.label for s in scans]}")
    n_vms = _index("n_vms", n_vms)
    if n_vms < 1:
        raise ValueError(f"n_vms {n_vms} must be at least 1")
    check_mix(mix)
    seed = _index("seed", seed)
    if seed < 0:
        raise ValueError(f"seed {seed} must be a non-negative integer")
    if costs is not None and not isinstance(costs, CostModel):
        raise TypeError(f"costs must be a CostModel, not {type(costs).__name__}")
    if workers is not None:
        workers = _index("workers", workers)
        if workers < 1:
            raise ValueError(f"workers {workers} must be at least 1")
    if ram_budget is not None:
        ram_budget = _index("ram_budget", ram_budget)
        if ram_budget < 0:
            raise ValueError(f"ram_budget {ram_budget} must be a byte count >= 0")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, not {type(progress).__name__}")
    costs = costs or CostModel.default()
    jobs = [(s, spec) for spec in scans for s in strategies]
    workers = workers or os.cpu_count() or 1
    at_once = min(workers, len(jobs))                   # fleets at once share the RAM
    budget = default_ram_budget(at_once) if ram_budget is None else ram_budget // at_once
    results = {}
    if workers == 1:
        for i, (s, spec) in enumerate(jobs):
            results[i] = run_one(s, spec, n_vms, mix, seed, costs, budget)
            if progress:
                progress(len(results), len(jobs))
    else:
        with ProcessPoolExecutor(workers, initializer=share_captures, initargs=(captures(scans),)) as pool:
            futures = {pool.submit(run_one, s, spec, n_vms, mix, seed, costs, budget): i for i, (s, spec) in enumerate(jobs)}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if progress:
                    progress(len(results), len(jobs))
    return [results[i] for i in range(len(jobs))]


def check_mix(mix) -> None:
    """A fleet's topology mix: a non-empty list of specs from_spec accepts (checked here,
    before any fleet starts, so a bad one fails at once, naming it)."""
    if isinstance(mix, str) or not hasattr(mix, "__iter__"):
        raise ValueError(f"mix: a non-empty list of topology specs, not {mix!r}")
    mix = list(mix)
    if not mix:
        raise ValueError("mix: a non-empty list of topology specs, not an empty one")
    for i, spec in enumerate(mix):
        try:
            from_spec(spec)
        except (FileNotFoundError, TypeError, ValueError) as exc:
            if type(exc) not in (FileNotFoundError, TypeError, ValueError):
                raise            # TopologyParseError and the like: they name the file and line
            raise type(exc)(f"mix[{i}]: {exc}") from None
