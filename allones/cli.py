"""The `allones` command: `compare` (every strategy on a fleet: the headline table and plots),
`demo` (one ECAM segment scanned under each backing), `topology show` (a topology as a tree,
with its hole layout), `scan` (a guest scan on one VM) and `trace import` (a recorded trace,
summarised and replayed)."""

import argparse
import os
import sys

import numpy as np

from .constants import (KVM_MEM_ALLONES, KVM_MEM_READONLY, KVM_PFN_NOSLOT, PAGE_SHIFT,
                        PAGE_SIZE, PROT_READ, is_error_noslot_pfn)
from .host import Host
from .progress import Progress
from .vm import VM

ECAM_BASE = 0xB000_0000   # q35's MMCONFIG window
ECAM_SIZE = 256 << 20     # 256 buses x 32 devices x 8 functions x 4 KiB

# name -> (Host kwargs, VM kwargs, how the segment is backed)
SCAN_SETUPS = {
    "mmio": ({}, {}, "none"),
    "pci-hole (v2)": ({"bit2": "pci_hole"}, {}, "bit2"),
    "filled": ({}, {}, "filled"),
    "allones": ({}, {}, "bit2"),
    "allones whole-slot": ({}, {"prefault": "whole-slot"}, "bit2"),
    "allones shared-pt": ({}, {"allones_map": "shared-pt"}, "bit2"),
    "allones hugepage": ({}, {"allones_map": "hugepage"}, "bit2"),
}


def scan_costs(name: str) -> dict:
    """Brute-force scan (one dword per function page) of one segment made of holes."""
    host_kw, vm_kw, backing = SCAN_SETUPS[name]
    host = Host(**host_kw)
    vm = VM(host, **vm_kw)
    if backing == "filled":
        holes = host.mmap(ECAM_SIZE, fill=0xFF, prot=PROT_READ)
        vm.set_user_memory_region(1, KVM_MEM_READONLY, ECAM_BASE, ECAM_SIZE, holes.hva)
    elif backing == "bit2":
        vm.set_user_memory_region(1, KVM_MEM_ALLONES, ECAM_BASE, ECAM_SIZE, 0)
    gpas = ECAM_BASE + np.arange(ECAM_SIZE // PAGE_SIZE, dtype=np.uint64) * PAGE_SIZE
    from .experiments.fleet import scan_events
    ecam, _ = scan_events(vm.run(gpas, 4).stats, 0)    # compare's events, by compare's names
    return dict(name=name, data_kib=host.nr_frames * PAGE_SIZE // 1024,
                table_kib=(sum(vm.table_pages()) + host.shared_pt_pages) * PAGE_SIZE // 1024,
                faults=ecam["ept_faults"], prefaulted=ecam["prefaulted"],
                exits_user=ecam["userspace_exits"], exits_kvm=ecam["kernel_exits"],
                fill_ms=host.fill_seconds * 1e3)


DEMO_GPAS = (("RAM", 0x1000), ("00:00.0 (hole)", ECAM_BASE),
             ("05:1f.7 (hole)", ECAM_BASE + (5 << 20 | 31 << 15 | 7 << 12)), ("beyond RAM", 0x2000000))


DEMO_LEGEND = """\
data: the host's frames (an RFC kernel allocates its one all-ones page at start,
whatever backs the holes: mmio's 4 KiB; a v2 kernel, pci-hole, none);
PT: this VM's stage-2 page tables (and shared-pt's one shared table);
faults: EPT faults that mapped a page; prefault: entries mapped ahead of a
fault; exits: to userspace (MMIO) and inside KVM (v2's emulated reads), as
`allones compare` names them."""


def demo_translations() -> tuple[Host, list[dict]]:
    """A VM with 16 MiB of RAM and an all-ones ECAM slot: how each DEMO_GPAS address
    translates on a read and on a write."""
    host = Host()
    vm = VM(host)
    ram = host.mmap(16 << 20, fill=0)
    vm.set_user_memory_region(0, 0, 0, ram.size, ram.hva)
    vm.set_user_memory_region(1, KVM_MEM_ALLONES, ECAM_BASE, ECAM_SIZE, 0)
    rows = []
    for name, gpa in DEMO_GPAS:
        for write in (False, True):
            pfn, writable = vm.gfn_to_pfn(gpa >> PAGE_SHIFT, write)
            what = ("mmio_exit" if pfn == KVM_PFN_NOSLOT else "error_pfn" if is_error_noslot_pfn(pfn)
                    else "pfn")
            rows.append(dict(gpa=gpa, name=name, write=write, result=what, pfn=pfn, writable=writable))
    return host, rows


def demo(out=None, as_json: bool = False) -> int:
    """Translations in a VM with RAM and an all-ones ECAM slot, then the scan table."""
    out = out or sys.stdout
    host, translations = demo_translations()
    if as_json:
        _print_json(dict(allones_hva=host.allones_hva, allones_pfn=host.allones_pfn,
                         translations=translations, scan=[scan_costs(name) for name in SCAN_SETUPS]), out)
        return 0
    print(f"shared all-ones page: hva {host.allones_hva:#x} pfn {host.allones_pfn:#x}", file=out)
    for t in translations:
        what = {"mmio_exit": "MMIO exit (KVM_PFN_NOSLOT)", "error_pfn": f"error pfn {t['pfn']:#x}",
                "pfn": f"pfn {t['pfn']:#x} writable={t['writable']}"}[t["result"]]
        print(f"{'write' if t['write'] else 'read ':5} gpa {t['gpa']:#011x} {t['name']:15} -> {what}", file=out)
    print("\nBrute-force scan of one ECAM segment, all holes (65,536 function pages,\n"
          "one dword read from each):", file=out)
    print(f"{'backing':18} {'data KiB':>8} {'PT KiB':>6} {'faults':>6} {'prefault':>8} "
          f"{'exit user':>9} {'exit KVM':>8} {'fill ms':>7}", file=out, flush=True)
    for name in SCAN_SETUPS:
        c = scan_costs(name)
        print(f"{name:18} {c['data_kib']:>8} {c['table_kib']:>6} {c['faults']:>6} {c['prefaulted']:>8} "
              f"{c['exits_user']:>9} {c['exits_kvm']:>8} {c['fill_ms']:>7.1f}", file=out, flush=True)
    print(DEMO_LEGEND, file=out)
    return 0


def _int_in(lo: int, hi: int | None = None):
    """An argparse type: an integer in lo..hi (argparse reports anything else, exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"{value} is less than {lo}" if hi is None
                                             else f"{value} is not in {lo}..{hi}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"{value} is not in {lo}..{hi}")
        return value
    parse.__name__ = "int"
    return parse


def _topology_args(p) -> None:
    p.add_argument("--topology", "-t", default="q35", metavar="SPEC",
                   help="q35, farm:N[:EMPTY[:SEED]], multi:SEGMENTS[:PORTS], random:SEED, "
                        "or a file of `lspci -n` / QEMU `info pci` text (default q35)")
    p.add_argument("--ecam-buses", type=_int_in(1, 256), metavar="N",
                   help="shrink segment 0's MCFG window to N buses (default: the topology's own)")


def _topology(args):
    from .pci.builders import from_spec
    topology = from_spec(args.topology)
    return topology if args.ecam_buses is None else topology.with_window(0, args.ecam_buses)


def _vmm(args, topology):
    """A VM with its holes backed by the strategy -b names (--prefault overrides its policy)."""
    import dataclasses

    from .experiments.strategies import get_strategy
    strategy = get_strategy(args.backing)
    if args.prefault is not None:
        strategy = dataclasses.replace(strategy, prefault=args.prefault)
    vm = strategy.make_vm(strategy.make_host())
    return strategy.install(vm, topology)


def _backing_args(p) -> None:
    from .experiments.strategies import STRATEGIES
    p.add_argument("--backing", "-b", default="allones", choices=STRATEGIES, metavar="STRATEGY",
                   help="how the holes are backed: a strategy of `allones compare` ("
                        + ", ".join(STRATEGIES) + "; default allones)")
    p.add_argument("--prefault", choices=("on-demand", "whole-slot"),
                   help="override the strategy's fault policy for all-ones slots (default: the "
                        "strategy's: whole-slot for allones-prefault, on-demand otherwise)")


def _json_arg(p) -> None:
    p.add_argument("--json", action="store_true",
                   help="print the results as one JSON document instead of text (default: text)")


def _print_json(doc: dict, out) -> None:
    import json

    from . import __version__

    def plain(value):                 # numpy scalars and arrays, Paths
        return value.tolist() if hasattr(value, "tolist") else str(value)
    print(json.dumps(dict(allones_version=__version__, **doc), indent=1, default=plain), file=out)


def _print_run(run, out) -> None:
    a, k = run.accesses, run.stats
    print(f"scan {run.name}, mechanism {run.mechanism}, holes backed by {run.backing}", file=out)
    print(f"  accesses           {a['accesses']:>9}", file=out)
    for mech in ("conf1", "mmconfig"):
        print(f"  {mech:9} reads {a[mech + '_reads']:>8}  writes {a[mech + '_writes']:>6}  "
              f"of holes: reads {a[mech + '_hole_reads']:>8}  writes {a[mech + '_hole_writes']:>4}", file=out)
    print(f"  exit PIO           {run.pio_exits:>9}   (port I/O, two per conf1 access, any backing)",
          file=out)
    if k:
        mapped = k['faults'] - k['exits_mmio'] - k['exits_emulated']   # the others became exits
        # compare's names: faults that mapped a page, exits to userspace / inside KVM
        print(f"  ECAM: faults {mapped} (EPT faults that mapped a page), prefault {k['prefaulted']},\n"
              f"    exit user {k['exits_mmio']} ({run.mmio_emulated} to present functions), exit KVM "
              f"{k['exits_emulated']},\n    TLB hits {k['tlb_hits']}", file=out)
    print(f"  reads answered differently from expected: holes {run.hole_mismatches}, present "
          f"{run.present_mismatches}", file=out)


def topology_show(args, out) -> int:
    """`allones topology show`: the tree, then the hole layout's size."""
    from .pci.holes import hole_layout
    topology = _topology(args)
    print(topology.format_tree(), file=out)
    layout = hole_layout(topology)
    print(f"\n{len(topology)} present functions; {layout.hole_pages} hole pages in "
          f"{layout.nr_memslots} memslots", file=out)
    return 0


def scan(args, out) -> int:
    """`allones scan NAME`: one scan on one VM whose holes are backed as asked (progress on
    stderr: full-dump plans and replays tens of millions of accesses)."""
    from .pci.scans import default_mechanism, plan_scan
    options = {k: v for k, v in (("cpu", args.cpu), ("last_bus", args.last_bus),
                                 ("pcie_scan_all", args.pcie_scan_all or None),
                                 ("max_buses", args.max_buses), ("count", args.count)) if v is not None}
    vmm = _vmm(args, _topology(args))
    mechanism = args.mechanism or default_mechanism(args.name)
    if args.reactive:
        run = vmm.run_scan(args.name, mechanism, args.seed, reactive=True, **options)
    else:
        with Progress(f"planning {args.name}") as progress:
            plan = plan_scan(vmm.topology, args.name, mechanism, args.seed, progress=progress, **options)
        with Progress(f"replaying {args.name}") as progress:
            run = vmm.replay(plan, progress=progress)
    if args.json:
        _print_json(dict(topology=vmm.topology.name, functions=len(vmm.topology), memslots=len(vmm.slots),
                         run=run.as_row()), out)
        return 0
    print(f"topology {vmm.topology.name}: {len(vmm.topology)} functions, {len(vmm.slots)} hole memslots",
          file=out)
    _print_run(run, out)
    return 0


def trace_import(args, out) -> int:
    """`allones trace import PATH`: read a capture and the topology it ran on (given, or
    inferred from the log), say what was skipped and assumed, replay it on one VM, count
    reads answered differently; --csv writes the MMCONFIG accesses."""
    from pathlib import Path

    from .pci.traces import format_csv, load_capture
    if args.csv and not Path(args.csv).resolve().parent.is_dir():    # before the work
        raise FileNotFoundError(f"--csv {args.csv}: no such directory {Path(args.csv).resolve().parent}")
    with Progress(f"reading {Path(args.path).name}", in_bytes=True) as progress:
        capture = load_capture(args.path, args.topology, args.part, ecam_base=args.ecam_base,
                               ecam_buses=args.ecam_buses, ecam_addr=args.ecam_addr, strict=args.strict,
                               progress=progress)
    trace, topology = capture.trace, capture.topology
    with Progress(f"replaying {Path(args.path).name}") as progress:
        run = _vmm(args, topology).replay(capture.scan, progress=progress)
    if args.csv:
        with open(args.csv, "w") as f:
            f.write(format_csv(trace.part(args.part)))
    if args.json:
        _print_json(dict(capture=_capture_doc(capture), run=run.as_row(), csv=args.csv), out)
        return 0
    _print_capture(capture, out)
    _print_run(run, out)
    print("  (a hole read answered differently is a fault of the backing; a present\n"
          "  function's is the config-space model answering otherwise than QEMU's device\n"
          "  did, not an error in the log)", file=out)
    if args.csv:
        print(f"wrote the MMCONFIG accesses to {args.csv}", file=out)
    return 0


def _capture_doc(capture) -> dict:
    """What _print_capture says, for --json."""
    trace, seg = capture.trace, capture.topology.segments[0]
    return dict(accesses=len(trace.accesses), kernel_start=trace.kernel_start, part=capture.part,
                replayed=len(capture.scan.accesses),
                ecam=None if trace.ecam is None else dict(mode=trace.ecam.mode, how=trace.ecam.how),
                topology=dict(name=capture.topology.name, inferred=capture.inferred,
                              functions=len(capture.topology), window=seg.window_start,
                              start_bus=seg.start_bus, end_bus=seg.end_bus),
                skipped=dict(trace.skipped.most_common()), notes=list(capture.notes))


def _print_capture(capture, out) -> None:
    """What a capture holds, what was skipped, and what was assumed."""
    trace, topology = capture.trace, capture.topology
    print(f"{len(trace.accesses)} config accesses"
          + (f"; the kernel starts at access {trace.kernel_start}" if trace.kernel_start is not None else "")
          + f"; replaying {capture.part}: {len(capture.scan.accesses)}", file=out)
    if trace.ecam is not None:
        print(f"ECAM: addr read as {'guest-physical' if trace.ecam.mode == 'gpa' else 'an offset in the window'}"
              f" ({trace.ecam.how})", file=out)
    how = "inferred from the log's pci_cfg_* events" if capture.inferred else "given"
    print(f"topology {topology.name} ({how}): {len(topology)} functions; window {topology.segments[0].window_start:#x}"
          f", buses {topology.segments[0].start_bus:02x}-{topology.segments[0].end_bus:02x}", file=out)
    if trace.skipped:
        kinds = trace.skipped.most_common()
        print(f"skipped {sum(trace.skipped.values())} lines of {len(kinds)} kinds (not config accesses):", file=out)
        for kind, count in kinds[:10]:
            print(f"  {count:>9}  {kind}", file=out)
        if len(kinds) > 10:
            print(f"  {sum(c for _, c in kinds[10:]):>9}  in {len(kinds) - 10} other kinds "
                  f"({', '.join(k for k, _ in kinds[10:14])}…)", file=out)
    for note in capture.notes:
        print(f"note: {note}", file=out)


def _capture_args(p, topology: bool = True) -> None:
    """The options that read a capture (trace import, compare --trace)."""
    if topology:
        p.add_argument("--topology", "-t", metavar="SPEC",
                       help="the topology the boot ran on: a file of QEMU `info pci` / `lspci -n` text (its "
                            "ECAM window comes from the log), or a builder spec (q35, farm:N, ...); default: "
                            "inferred from the log's pci_cfg_* events; refused if it has none")
    p.add_argument("--ecam-base", type=_address, metavar="ADDR",
                   help="bus 0's guest-physical ECAM address, decimal or 0x-hex (default: from the log: its "
                        "responder events or the kernel's ECAM/MMCONFIG console line)")
    p.add_argument("--ecam-buses", type=_int_in(1, 256), metavar="N",
                   help="buses in the window from bus 0 (default: the kernel's console line; with "
                        "--ecam-base alone, 256)")
    p.add_argument("--ecam-addr", choices=("auto", "gpa", "offset"), default="auto",
                   help="whether the log's ECAM addr is guest-physical or an offset in the window (an "
                        "alias, as arm64 virt maps it); default auto: told by the responder events")
    p.add_argument("--strict", action="store_true",
                   help="refuse any line that is not a memory_region_ops_* or pci_cfg_* event, and a cut "
                        "last line (default: skip and count them)")


def _size(text: str) -> int:
    """An argparse type: a byte count, plain or with K, M, G or T (binary: 1K = 1024)."""
    scale = 1 << 10 * ("KMGT".index(text[-1].upper()) + 1) if text[-1:].upper() in ("K", "M", "G", "T") else 1
    try:
        value = int(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size: {text!r} (bytes, or a number with K, M, G or T)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is less than 0")
    return value


def _address(text: str) -> int:
    """An argparse type: a non-negative address, decimal or 0x-hex."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid address: {text!r}") from None
    if not 0 <= value < 1 << 64:
        raise argparse.ArgumentTypeError(f"{text} does not fit 64 bits")
    return value


def compare(args, out) -> int:
    """`allones compare`: every strategy x the default scans (or --scans, or a recorded boot,
    --trace) on a fleet; table, CSV, JSON, plots."""
    from pathlib import Path

    from rich.console import Console

    from .experiments import figures, report
    from .experiments.compare import compare as run_compare
    from .experiments.costmodel import CostModel
    from .experiments.fleet import DEFAULT_MIX
    from .experiments.strategies import STRATEGIES, get_strategy
    costs = CostModel.from_toml(args.costs) if args.costs is not None else CostModel.default()
    if args.strategies is None:
        strategies = list(STRATEGIES)
    else:
        strategies = [get_strategy(s.strip()).name for s in args.strategies.split(",")]
        if len(set(strategies)) != len(strategies):
            raise ValueError(f"--strategies: {args.strategies!r} names a strategy twice")
    scans, params = _compare_scans(args)           # a bad capture fails here: nothing written
    mix = DEFAULT_MIX if args.trace is not None or args.topology is None else _mix(args.topology)
    outdir = Path(args.out)
    outdir.mkdir(parents=True, exist_ok=True)      # before the work: a bad --out fails at once
    console = Console(file=out)
    with Progress(f"fleets of {args.vms} VMs", total=len(strategies) * len(scans)) as progress:
        results = run_compare(strategies, scans, args.vms, mix, seed=args.seed, costs=costs,
                              workers=args.workers, ram_budget=args.ram_budget, progress=progress)
    rows = report.summary_rows(results)
    report.print_tables(rows, costs.describe(), console, wide=args.wide)
    report.write_csv(rows, outdir / "compare.csv")
    report.write_vm_csv(results, outdir / "compare-vms.csv")
    report.write_json(results, rows, dict(vms=args.vms, seed=args.seed, strategies=strategies,
                                          scans=[s.label for s in scans], mix=list(mix), **params),
                      outdir / "compare.json")
    written = [] if args.no_plots else figures.plot_all(results, rows, outdir)
    console.print(f"wrote {outdir}/compare.csv, compare-vms.csv, compare.json"
                  + (f" and {len(written)} figures" if written else ""), soft_wrap=True)
    return 0


def _mix(text: str) -> list[str]:
    """--topology without --trace: the fleets' mix, comma-separated specs (a VM draws one)."""
    from .experiments.compare import check_mix
    mix = [spec.strip() for spec in text.split(",")]
    try:
        check_mix(mix)
    except ValueError as exc:
        raise ValueError(f"--topology {text!r}: {exc}") from None
    return mix


def _compare_scans(args) -> tuple[tuple, dict]:
    """compare's scans, and what compare.json records of them: --scans (default
    DEFAULT_SCANS), or the capture --trace names (read and checked now, before any fleet)."""
    from .experiments.compare import TraceSpec, compare_scans
    if args.trace is None:
        given = [option for option, value in (
            ("--part", args.part), ("--ecam-base", args.ecam_base),
            ("--ecam-buses", args.ecam_buses), ("--ecam-addr", None if args.ecam_addr == "auto" else 1),
            ("--strict", args.strict or None)) if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only with --trace")
        return compare_scans(args.scans), {}
    if args.scans is not None:
        raise ValueError("--scans: not with --trace (the capture is the scan)")
    spec = TraceSpec(args.trace, args.topology, args.part or "all", args.ecam_base, args.strict,
                     ecam_buses=args.ecam_buses, ecam_addr=args.ecam_addr)
    return (spec,), dict(trace=dict(path=spec.path, topology=spec.topology, part=spec.part,
                                    ecam_base=spec.ecam_base, ecam_buses=spec.ecam_buses,
                                    ecam_addr=spec.ecam_addr, strict=spec.strict, sha256=spec.digest,
                                    mechanism=spec.mechanism))


def sweep(args, out) -> int:
    """`allones sweep CONFIG.toml`: a grid of fleets from a TOML config (see
    allones.experiments.sweep); resumes in --out, on a local pool or a Dask scheduler."""
    import signal
    import threading

    from .experiments.sweep import WorkerDied, expand, load_config, run_sweep
    config = load_config(args.config)
    cells = len(expand(config))
    # SIGTERM (timeout, a batch system, docker stop) stops the sweep as Ctrl-C does: by default
    # it kills this process alone, and the pool's workers would wait for cells forever
    main_thread = threading.current_thread() is threading.main_thread()
    stopped_by = [signal.SIGINT]

    def on_sigterm(signum, frame):
        stopped_by[0] = signal.SIGTERM
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    try:
        with Progress("sweep cells", total=cells) as progress:
            result = run_sweep(config, args.out, scheduler=args.scheduler, workers=args.workers,
                               progress=progress)
    except ImportError as exc:
        raise ValueError(str(exc)) from None
    except WorkerDied as exc:   # one line, not BrokenProcessPool's traceback
        print(f"allones: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:   # SweepInterrupted says how many cells are kept
        print(f"allones: {str(exc) or 'interrupted'}", file=sys.stderr)
        return 128 + stopped_by[0]   # 130 or 143, as a shell reports a death by that signal
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    from .experiments.compare import TraceSpec
    captures = sum(isinstance(s, TraceSpec) for s in config.scans)

    def shape(n_scans, mixes):
        return " x ".join(f"{n} {one if n == 1 else many}" for n, one, many in (
            (len(config.strategies), "strategy", "strategies"), (n_scans, "scan", "scans"),
            (len(config.vms), "fleet size", "fleet sizes"), (mixes, "topology mix", "topology mixes"),
            (len(config.costs), "cost variant", "cost variants")))
    parts = [shape(len(config.scans) - captures, len(config.topologies))] if len(config.scans) > captures else []
    parts += [shape(captures, 1) + " (captures run on their own topology)"] if captures else []
    print(f"sweep: {cells} cells ({' + '.join(parts)}), seed {config.seed}", file=out)
    print(f"  ran {len(result.ran)}, skipped {len(result.skipped)} (already done), "
          f"failed {len(result.failed)} (the host refused the setup), crashed {len(result.crashed)}",
          file=out)
    for key, error in result.crashed.items():
        print(f"  crashed {key}: {error} (not saved: run again to retry)", file=out)
    print(f"  wrote {result.out}/: {', '.join(p.name for p in result.files)}", file=out)
    return 1 if result.crashed else 0


def _compare_epilog() -> str:
    """compare --help's list of strategies and scans, in 80 columns."""
    import textwrap

    from .experiments.compare import SCAN_NAMES
    from .experiments.strategies import STRATEGIES
    from .pci.scans import SCANS

    def item(name, text):
        return textwrap.fill(f"  {name:19} {text}", 79, subsequent_indent=" " * 22)
    lines = ["strategies (--strategies; default all):"]
    lines += [item(s.name, s.doc) for s in STRATEGIES.values()]
    lines += ["", "scans (--scans; default the first four):"]
    lines += [item(name, f"{spec.label}: {spec.scan} through {spec.mechanism}"
                   + "".join(f", {k}={v}" for k, v in spec.options.items())) for name, spec in SCAN_NAMES.items()]
    lines += [item(name, "with its default mechanism and options") for name in SCANS if name not in SCAN_NAMES]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    """The command line: every argument has a help text that gives its default."""
    import inspect

    from . import __version__
    from .experiments.fleet import DEFAULT_MIX
    from .pci.access import MECHANISMS
    from .pci.linux import CPUS
    from .pci.scans import SCANS
    parser = argparse.ArgumentParser(prog="allones", description=__doc__)
    parser.add_argument("--version", action="version", version=f"allones {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("compare", help="every strategy on a fleet of VMs: table, CSV, JSON, plots",
                       description="Every strategy x every scan on a fleet of VMs: tables on stdout,\n"
                                   "compare.csv, compare-vms.csv, compare.json and figures in --out;\n"
                                   "progress on stderr.",
                       epilog=_compare_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vms", type=_int_in(1), default=64, metavar="N", help="VMs in each fleet (default 64)")
    p.add_argument("--strategies", metavar="LIST", help="comma-separated strategy names (default: all; "
                                                        "listed below)")
    p.add_argument("--scans", metavar="LIST", help="comma-separated scan names (default: linux-boot-x86, "
                                                   "linux-boot-mmconfig, brute-force, firmware; listed below)")
    p.add_argument("--topology", "-t", metavar="SPEC[,SPEC...]",
                   help="without --trace: the fleet's topology mix, each VM drawing one (q35, farm:N[:EMPTY"
                        "[:SEED]], multi:SEGMENTS[:PORTS], random:SEED, or a file of `lspci -n` / QEMU `info "
                        "pci` text; default " + ", ".join(DEFAULT_MIX) + "). With --trace: the topology "
                        "the boot ran on (default: inferred from the log's pci_cfg_* events)")
    p.add_argument("--seed", type=_int_in(0), default=0, help="seeds the fleets' topology draws (default 0)")
    p.add_argument("--costs", metavar="TOML", help="override cost constants ([costs] table; default: "
                                                   "the built-in constants, docs/costmodel.md)")
    p.add_argument("--out", default="allones-results", metavar="DIR",
                   help="directory for CSV, JSON and plots (default allones-results)")
    p.add_argument("--workers", type=_int_in(1), metavar="N", help="processes (default: the CPUs)")
    p.add_argument("--ram-budget", type=_size, metavar="SIZE",
                   help="memory the fleets running at once may really allocate, shared between them, "
                        "e.g. 512M or 2G; a filled fleet past its share is counted, not allocated, with the "
                        "same results (default: an eighth of MemAvailable, at most 1G; 0: never allocate)")
    p.add_argument("--wide", action="store_true",
                   help="one table per scan however wide (default: on a terminal, tables split by "
                        "columns to fit its width; never a number cut)")
    p.add_argument("--no-plots", action="store_true", help="skip the figures (default: write them)")
    p.add_argument("--trace", metavar="FILE", help="run this recorded boot (a QEMU trace log, .gz or not, "
                   "or op,offset,size,value CSV) instead of the built-in scans; every VM has its topology. "
                   "The options below read it (default: the built-in scans on a topology mix)")
    p.add_argument("--part", choices=("all", "firmware", "kernel"),
                   help="with --trace: the accesses to replay, before or after the kernel's "
                        "'Linux version' (default all)")
    _capture_args(p, topology=False)
    p = sub.add_parser("demo", help="translations, and one ECAM segment scanned under each backing")
    _json_arg(p)
    topo = sub.add_parser("topology", help="PCI topologies").add_subparsers(dest="action", required=True,
                                                                             metavar="ACTION")
    _topology_args(topo.add_parser("show", help="print a topology as a tree, with its hole layout"))
    p = sub.add_parser("scan", help="run a guest config-space scan on one VM")
    p.add_argument("name", choices=list(SCANS), metavar="NAME", help="the scan: " + ", ".join(SCANS))
    _topology_args(p)
    _backing_args(p)
    p.add_argument("--mechanism", "-m", choices=MECHANISMS,
                   help="how the guest reaches config space: " + ", ".join(MECHANISMS)
                        + " (default: linux-x86-default for Linux scans, mmconfig for the others)")
    p.add_argument("--cpu", choices=CPUS, help="linux-boot-x86: the vCPU (default intel)")
    p.add_argument("--last-bus", type=_int_in(-1, 255), metavar="N",
                   help="linux-boot-x86: pci=lastbus=N (default: none, the kernel's own)")
    p.add_argument("--pcie-scan-all", action="store_true", help="Linux scans: pci=pcie_scan_all (default off)")
    p.add_argument("--max-buses", type=_int_in(1, 256), metavar="N",
                   help="full-dump: buses per segment (default: the whole window, 67M accesses)")
    p.add_argument("--count", type=_int_in(0), metavar="N", help="random: how many accesses (default "
                   f"{inspect.signature(SCANS['random']).parameters['count'].default})")
    p.add_argument("--seed", type=_int_in(0), default=0, help="seeds the random scan (default 0)")
    p.add_argument("--reactive", action="store_true",
                   help="feed the scan the VM's own answers, access by access (default: plan, then replay)")
    _json_arg(p)
    trace = sub.add_parser("trace", help="recorded config accesses").add_subparsers(dest="action", required=True,
                                                                                     metavar="ACTION")
    p = trace.add_parser("import", help="read a QEMU trace log or CSV, summarise and replay it")
    p.add_argument("path", help="a QEMU log of -trace memory_region_ops_* and pci_cfg_* (plain or gzip, "
                                "as QEMU wrote it), or a CSV of accesses (.csv)")
    _capture_args(p)
    _backing_args(p)
    p.add_argument("--part", default="all", choices=("all", "firmware", "kernel"),
                   help="the accesses to replay: before the kernel's console text, after, or all (default)")
    p.add_argument("--csv", metavar="FILE", help="also write its MMCONFIG accesses as op,offset,size,value "
                                                 "(default: not written)")
    _json_arg(p)
    p = sub.add_parser("sweep", help="a grid of fleets from a TOML config: tidy CSV, tables, figures")
    p.add_argument("config", metavar="CONFIG.toml", help="the grid: a [sweep] table (examples/sweep.toml)")
    p.add_argument("--out", metavar="DIR", help="directory for the results (default: the config's out)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the cells on this dask.distributed scheduler (default: local processes)")
    p.add_argument("--workers", type=_int_in(1), metavar="N", help="local processes (default: the CPUs)")
    return parser


def main(argv=None) -> int:
    """Entry point of the `allones` command."""
    args = _parser().parse_args(argv)
    commands = {"compare": compare, "demo": lambda a, o: demo(o, a.json), "topology": topology_show,
                "scan": scan, "trace": trace_import, "sweep": sweep}
    try:
        return commands[args.command](args, sys.stdout)
    except BrokenPipeError:           # `allones compare | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # no error at exit's flush
        return 1
    except (ValueError, OSError) as exc:
        print(f"allones: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
