"""load_capture: a recorded boot with the topology it ran on (given, parsed from a file, or
inferred from the log), checked against the log, and replayed."""

from pathlib import Path

import pytest

import allones.pci.traces as traces
from allones import VM, Host
from allones.pci.access import MMCONFIG
from allones.pci.builders import q35_default
from allones.pci.ecam import Bdf, Segment
from allones.pci.infer import InferenceError
from allones.pci.parsers import format_lspci
from allones.pci.topology import Function, Topology
from allones.pci.traces import Capture, TraceParseError, load_capture
from allones.vmm import Vmm

DATA = Path(__file__).resolve().parents[1] / "data"
Q35, ARM = DATA / "q35-ovmf-default", DATA / "arm64-virt-aavmf"
Q35_BASE, ARM_BASE = 0xB000_0000, 0x40_1000_0000
LOGS = {"q35": Q35 / "qemu-trace.log.gz", "arm64": ARM / "qemu-trace.log.gz"}


@pytest.fixture(scope="module", autouse=True)
def _real_logs_read_once():
    """Each real log is read once in this module: load_capture's read_trace calls on the
    repository's logs, with the same arguments, share one Trace (load_capture does not
    change it)."""
    real, cache = traces.read_trace, {}

    def read_once(path, segment=None, **options):
        if Path(path).resolve().parent.parent != DATA:
            return real(path, segment, **options)
        key = (str(Path(path).resolve()), segment, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = real(path, segment, **options)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(traces, "read_trace", read_once)
        yield


@pytest.fixture(scope="module")
def captures():
    """(machine, 'inferred' | 'info_pci') -> Capture."""
    out = {}
    for machine, log in LOGS.items():
        out[machine, "inferred"] = load_capture(log)
        out[machine, "info_pci"] = load_capture(log, log.parent / "info_pci.txt")
    return out


def functions_of(folder):
    out = []
    for line in (folder / "topology.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#") and ":" in parts[0]:
            out.append(parts[0])
    return out


# -- the real logs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("machine", ["q35", "arm64"])
@pytest.mark.parametrize("how", ["inferred", "info_pci"])
@pytest.mark.parametrize("backing", ["mmio", "allones"])
def test_real_captures_replay_without_hole_mismatches(captures, machine, how, backing):
    capture = captures[machine, how]
    assert isinstance(capture, Capture) and capture.inferred == (how == "inferred")
    run = Vmm(VM(Host()), capture.topology, backing).replay(capture.scan)
    assert run.hole_mismatches == 0
    assert run.accesses["accesses"] == len(capture.trace.accesses)


@pytest.mark.parametrize("machine", ["q35", "arm64"])
def test_inferred_and_parsed_topologies_have_the_same_functions(captures, machine):
    folder = Q35 if machine == "q35" else ARM
    inferred, parsed = captures[machine, "inferred"].topology, captures[machine, "info_pci"].topology
    listed = functions_of(folder)
    assert [f"{f.bdf.bus:02x}:{f.bdf.dev:02x}.{f.bdf.fn:x}" for f in inferred] == listed
    assert [f.bdf for f in inferred] == [f.bdf for f in parsed]
    for a, b in zip(inferred, parsed):
        assert (a.vendor, a.device, a.class_code >> 8, a.header_type) == (b.vendor, b.device, b.class_code >> 8,
                                                                          b.header_type)
        assert a.bars == b.bars and a.rom_size == b.rom_size
    assert [f.name for f in inferred] == [r.name for _, r in sorted(captures[machine, "inferred"].trace.responders.items())]


def test_a_parsed_topology_takes_the_logs_window(captures):
    """info pci text carries no ECAM window: the arm64 log's (from its console) is used."""
    assert captures["arm64", "info_pci"].topology.segments[0] == Segment(ARM_BASE, 0, 0, 255)
    assert captures["arm64", "inferred"].topology.segments[0] == Segment(ARM_BASE, 0, 0, 255)
    assert captures["q35", "info_pci"].topology.segments[0] == Segment(Q35_BASE, 0, 0, 255)
    assert captures["arm64", "inferred"].topology.name == "log:qemu-trace.log.gz"


def test_arm64_kernel_part_is_all_ecam():
    capture = load_capture(LOGS["arm64"], ARM / "info_pci.txt", "kernel")
    assert capture.part == "kernel" and capture.scan.mechanism == "mmconfig"
    assert (capture.scan.accesses["mech"] == MMCONFIG).all()
    assert len(capture.scan.accesses) == len(capture.trace.accesses) - capture.trace.kernel_start
    run = Vmm(VM(Host()), capture.topology, "allones").replay(capture.scan)
    assert run.hole_mismatches == 0


def test_a_q35_builder_topology_is_refused_for_the_arm64_log():
    with pytest.raises(ValueError, match="a log of another machine"):
        load_capture(LOGS["arm64"], "q35")


def test_a_topology_lacking_functions_the_log_shows_is_refused():
    """The arm64 machine's info pci has no VGA, LPC, AHCI or SMBus: the q35 log shows them answer."""
    with pytest.raises(ValueError, match=r"lacks 4 function\(s\) the log shows answering: 0000:00:01\.0 \(VGA, "
                                         r"\d+ accesses from line \d+\), 0000:00:1f\.0 \(ICH9-LPC"):
        load_capture(LOGS["q35"], ARM / "info_pci.txt")


# -- synthetic logs ------------------------------------------------------------------------------

def ops(write, addr, value, size, name="pcie-mmcfg-mmio"):
    return (f"memory_region_ops_{'write' if write else 'read'} cpu 0 mr 0x55d0 addr {addr:#x} value {value:#x} "
            f"size {size} name '{name}'")


HOST = (0, 0, 0), "mch", 0x8086, 0x29C0, 0x060000
NIC = (0, 3, 0), "virtio-net-pci", 0x1AF4, 0x1000, 0x020000


def header_reads(fn, base, events=True):
    """The lines of a probe of a present function's header: vendor/device, class, header type."""
    (bus, dev, f), name, vendor, device, cls = fn
    offset = bus << 20 | dev << 15 | f << 12
    lines = []
    for reg, value in ((0x0, device << 16 | vendor), (0x8, cls << 8 | 0x01), (0xC, 0)):
        if events:
            lines.append(f"pci_cfg_read {name} {bus:02x}:{dev:02x}.{f:x} @{reg:#x} -> {value:#x}")
        lines.append(ops(False, base + offset + reg, value, 4))
    return lines


def hole(offset, base):
    return ops(False, base + offset, (1 << 64) - 1, 4)


def write_log(tmp_path, lines, name="boot.log"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def topology_file(tmp_path, functions):
    path = tmp_path / "topo.lspci"
    path.write_text(format_lspci(Topology(functions)))
    return path


def func(bdf, vendor, device, cls):
    return Function(Bdf.parse(bdf), vendor, device, cls)


def test_a_file_topology_lacking_an_answering_function_is_refused(tmp_path):
    log = write_log(tmp_path, header_reads(HOST, Q35_BASE) + header_reads(NIC, Q35_BASE) + [hole(0x28000, Q35_BASE)])
    only_host = topology_file(tmp_path, [func("00:00.0", 0x8086, 0x29C0, 0x060000)])
    with pytest.raises(ValueError, match=r"lacks 1 function\(s\) the log shows answering: 0000:00:03\.0 "
                                         r"\(virtio-net-pci, 3 accesses from line 7\)"):
        load_capture(log, only_host)
    both = topology_file(tmp_path, [func("00:00.0", 0x8086, 0x29C0, 0x060000),
                                    func("00:03.0", 0x1AF4, 0x1000, 0x020000)])
    capture = load_capture(log, both)
    assert not capture.inferred and capture.topology.segments[0] == Segment(Q35_BASE)
    assert len(capture.scan.accesses) == 7
    assert Vmm(VM(Host()), capture.topology, "allones").replay(capture.scan).hole_mismatches == 0


def test_a_builder_topology_whose_window_the_responders_contradict_is_refused(tmp_path):
    log = write_log(tmp_path, header_reads(HOST, 0xE000_0000))
    with pytest.raises(ValueError, match="a log of another machine"):
        load_capture(log, "q35")
    with pytest.raises(ValueError, match="a log of another machine"):
        load_capture(log, q35_default())
    assert load_capture(log).topology.segments[0].base == 0xE000_0000


def test_inferred_capture_of_a_synthetic_log(tmp_path):
    log = write_log(tmp_path, header_reads(HOST, Q35_BASE) + [hole(0x8000, Q35_BASE)] + header_reads(NIC, Q35_BASE))
    capture = load_capture(log)
    assert capture.inferred and [str(f.bdf) for f in capture.topology] == ["0000:00:00.0", "0000:00:03.0"]
    assert [f.name for f in capture.topology] == ["mch", "virtio-net-pci"]
    assert any("bus range is not in the log" in n for n in capture.notes)
    run = Vmm(VM(Host()), capture.topology, "mmio").replay(capture.scan)
    assert run.hole_mismatches == 0 and run.accesses["accesses"] == 7


def test_ecam_buses_needs_ecam_base(tmp_path):
    log = write_log(tmp_path, header_reads(HOST, Q35_BASE))
    with pytest.raises(ValueError, match="ecam_buses needs ecam_base"):
        load_capture(log, ecam_buses=16)


def test_ecam_base_and_buses_give_the_window(tmp_path):
    log = write_log(tmp_path, header_reads(HOST, Q35_BASE, events=False) + [hole(0x8000, Q35_BASE)])
    topo = topology_file(tmp_path, [func("00:00.0", 0x8086, 0x29C0, 0x060000)])
    capture = load_capture(log, topo, ecam_base=Q35_BASE, ecam_buses=16)
    assert capture.topology.segments[0] == Segment(Q35_BASE, 0, 0, 15)
    assert capture.trace.window == Segment(Q35_BASE, 0, 0, 15)
    with pytest.raises(ValueError, match="outside segment 0's ECAM window"):
        load_capture(write_log(tmp_path, [hole(0x1000000, Q35_BASE)], "far.log"), topo, ecam_base=Q35_BASE,
                     ecam_buses=16)


def test_a_log_without_responders_needs_a_topology(tmp_path):
    log = write_log(tmp_path, header_reads(HOST, Q35_BASE, events=False))
    with pytest.raises(InferenceError, match="--topology"):
        load_capture(log, ecam_base=Q35_BASE)
    topo = topology_file(tmp_path, [func("00:00.0", 0x8086, 0x29C0, 0x060000)])
    with pytest.raises(ValueError, match="--ecam-base"):        # and the window
        load_capture(log, topo)
    assert len(load_capture(log, topo, ecam_base=Q35_BASE).scan.accesses) == 3


def test_an_offset_log_without_a_window_names_ecam_base(tmp_path):
    """Responders say addr is an offset (an alias), nothing says where the window is."""
    log = write_log(tmp_path, header_reads(HOST, 0))
    topo = topology_file(tmp_path, [func("00:00.0", 0x8086, 0x29C0, 0x060000)])
    with pytest.raises(ValueError, match="--ecam-base"):
        load_capture(log, topo)
    capture = load_capture(log, topo, ecam_base=ARM_BASE)
    assert capture.trace.ecam.mode == "offset" and capture.topology.segments[0] == Segment(ARM_BASE)


def test_load_capture_of_a_csv(tmp_path):
    path = tmp_path / "boot.csv"
    path.write_text("op,gpa,size,value\nr,0xb0000000,4,0x29c08086\nr,0xb0008000,4,0xffffffff\n")
    topo = topology_file(tmp_path, [func("00:00.0", 0x8086, 0x29C0, 0x060000)])
    with pytest.raises(TraceParseError, match="ecam_base"):
        load_capture(path, topo)
    capture = load_capture(path, topo, ecam_base=Q35_BASE)
    assert capture.scan.mechanism == "mmconfig" and len(capture.scan.accesses) == 2
    assert Vmm(VM(Host()), capture.topology, "allones").replay(capture.scan).hole_mismatches == 0
    with pytest.raises(InferenceError, match="--topology"):
        load_capture(path, ecam_base=Q35_BASE)


def test_a_kernel_part_needs_linux_version_on_the_console(tmp_path):
    log = write_log(tmp_path, header_reads(HOST, Q35_BASE))
    with pytest.raises(ValueError, match="Linux version"):
        load_capture(log, part="kernel")
    with pytest.raises(TypeError, match="topology must be"):
        load_capture(log, 35)
    with pytest.raises(FileNotFoundError):
        load_capture(tmp_path / "missing.log")
    with pytest.raises(ValueError, match="unknown trace part"):
        load_capture(log, part="bios")
