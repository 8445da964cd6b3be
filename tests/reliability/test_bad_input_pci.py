"""Bad input on the guest side's public entry points (allones.pci, allones.vmm.Vmm, the
Unicorn EcamWindow, and the `topology show`, `scan`, `trace import` and `demo` commands):
each gets a clear Python exception of the most specific class, naming the argument, value
or line, and leaves no state changed. One test per row of docs/_bad_input_rows.md."""

import gzip
import re

import numpy as np
import pytest

from allones import VM, Host
from allones.pci.access import ACCESS_DTYPE, CONF1, ScanResult, accesses, check_accesses
from allones.pci.builders import from_spec, multi_segment, q35_chipset, q35_default, random_topology, root_port_farm
from allones.pci.config_space import ConfigSpace, ConfigSpaces
from allones.pci.ecam import Bdf, PciAddressError, Segment, decode_offset, ecam_offset
from allones.pci.holes import MemslotBudgetError, hole_layout
from allones.pci.parsers import TopologyParseError, parse_info_pci, parse_lspci, read_topology
from allones.pci.scans import plan_scan, scan_program
from allones.pci.topology import Bar, Function, Topology
from allones.pci.traces import TraceParseError, format_csv, parse_csv, parse_qemu_trace, read_trace
from allones.vmm import Vmm
from cli_run import run_cli   # tests/reliability/cli_run.py

Q35 = q35_default()
SEG = Segment(0xB000_0000, end_bus=15)
GOOD = accesses(0, [0, 1, 0], [0, 0, 5], 0, 0, 4)            # 00:00.0, 01:00.0 (present), 00:05.0 (hole)
LINE = "1@1:memory_region_ops_{op} cpu 0 mr 0x1 addr {addr} value {value} size {size} name '{name}'\n"


Q35_WINDOW = Segment(0xB000_0000)


def trace_line(op="read", addr="0xb0000000", value="0xffffffff", size=4, name="pcie-mmcfg-mmio"):
    return LINE.format(op=op, addr=addr, value=value, size=size, name=name)


def make_vmm(backing="allones", topology=Q35, **kw):
    host = Host(bit2="pci_hole" if backing == "pci-hole" else "allones")
    return Vmm(VM(host), topology, backing, **kw)


def vmm_state(vmm):
    """Everything a refused call must leave as it was: memslots, stage-2 tables, host frames,
    the VMM's counters and the devices' config spaces."""
    vm = vmm.vm
    return ([(s.id, s.base_gfn, s.npages, s.flags) for s in vm.memslots(0)], vm.table_pages(),
            vm.host.nr_frames, vmm.mmio_emulated, id(vmm.spaces),
            {k: bytes(s.data) for k, s in vmm.spaces._spaces.items()})


def with_field(batch, **fields):
    out = batch.copy()
    for k, v in fields.items():
        out[k] = v
    return out


def raises(cls, match, fn, *args, **kwargs):
    with pytest.raises(cls, match=match) as info:
        fn(*args, **kwargs)
    assert type(info.value) is cls, f"{type(info.value).__name__} is not exactly {cls.__name__}"
    return info.value


# -- numbers ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, cls, match", [
    (lambda: Bdf(0, -1, 0, 0), PciAddressError, r"bus -0x1 out of range"),
    (lambda: Bdf(1 << 70, 0, 0, 0), PciAddressError, r"segment 0x4000+ out of range"),
    (lambda: Segment(-(1 << 20)), PciAddressError, r"ECAM base -0x100000 out of range"),
    (lambda: Segment(1 << 64), PciAddressError, r"ECAM base 0x10000000000000000 out of range"),
    (lambda: Segment((1 << 64) - (1 << 20)), PciAddressError, r"ends past 64 bits"),
    (lambda: SEG.gpa(0, 0, 0, -4), PciAddressError, r"register -0x4 out of range"),
    (lambda: SEG.decode(1 << 80), PciAddressError, r"gpa 0x1000+ outside segment 0's ECAM window"),
    (lambda: SEG.gpas([1 << 70], 0, 0), PciAddressError, r"bus has values past 64 bits"),
    (lambda: ecam_offset(0, 0, 0, -1), PciAddressError, r"register -0x1 out of range"),
    (lambda: decode_offset(1 << 70), PciAddressError, r"ECAM offset 0x4000+ out of range"),
    (lambda: accesses(0, 0, 0, 0, 0, 4, 1, -1), ValueError, r"value has negative values"),
    (lambda: accesses(0, 0, 0, 0, 0, 4, 1, 1 << 70), ValueError, r"value has values past 64 bits"),
    (lambda: ConfigSpace(Q35.functions[0], False).write(4, 2, -1), ValueError, r"value -0x1 .* negative or past 64 bits"),
    (lambda: ConfigSpace(Q35.functions[0], False).write(4, 2, 1 << 64), ValueError, r"past 64 bits"),
    (lambda: ConfigSpaces(Q35).read_key(-1, 0, 4), PciAddressError, r"key -0x1 is not"),
    (lambda: hole_layout(Q35, -1), ValueError, r"budget -1 is negative"),
    (lambda: make_vmm(first_slot=-1), ValueError, r"first_slot -1 not in 0\.\.32763"),
    (lambda: make_vmm(budget=-3), ValueError, r"budget -3 is negative"),
    (lambda: root_port_farm(-1), ValueError, r"-1 root ports do not fit"),
    (lambda: random_topology(-1), ValueError, r"seed -1 must be a non-negative integer"),
    (lambda: plan_scan(Q35, "random", seed=-1), ValueError, r"seed -1 must be a non-negative integer"),
    (lambda: plan_scan(Q35, "random", count=-1), ValueError, r"count -1 must be at least 0"),
    (lambda: plan_scan(Q35, "linux-boot-x86", last_bus=1 << 64), ValueError, r"last_bus 18446744073709551616 not in -1\.\.255"),
])
def test_negative_or_too_wide_numbers(fn, cls, match):
    raises(cls, match, fn)


@pytest.mark.parametrize("fn, match", [
    (lambda: Bdf(0, 1.5, 0, 0), r"bus must be an integer, not float"),
    (lambda: Bdf(0, True, 0, 0), r"bus must be an integer, not bool"),
    (lambda: Bdf.parse(None), r"PCI address to parse must be a str, not NoneType"),
    (lambda: Segment("0xb0000000"), r"ECAM base must be an integer, not str"),
    (lambda: SEG.decode(0xB000_0000 + 0.5), r"gpa must be an integer, not float"),
    (lambda: SEG.gpa(0, 0, 0, None), r"register must be an integer, not NoneType"),
    (lambda: Q35.with_window(0, "4"), r"nr_buses must be an integer, not str"),
    (lambda: Q35.segment("0"), r"segment must be an integer, not str"),
    (lambda: Function(Bdf(0, 0, 3, 0), 1.5, 0, 0), r"0000:00:03\.0: vendor must be an integer, not float"),
    (lambda: Bar(4096.0), r"BAR size must be an integer, not float"),
    (lambda: ConfigSpace(Q35.functions[0], False).read("0", 4), r"register must be an integer, not str"),
    (lambda: ConfigSpace(Q35.functions[0], False).read(0, True), r"size must be an integer, not bool"),
    (lambda: hole_layout(Q35, 8.5), r"budget must be an integer, not float"),
    (lambda: root_port_farm("4"), r"nr_ports must be an integer, not str"),
    (lambda: root_port_farm(4, "half"), r"empty_fraction must be a number, not str"),
    (lambda: multi_segment(2.5), r"nr_segments must be an integer, not float"),
    (lambda: random_topology(1.5), r"seed must be an integer, not float"),
    (lambda: plan_scan(Q35, "firmware", passes="6"), r"passes must be an integer, not str"),
    (lambda: plan_scan(Q35, "linux-probe", pcie_scan_all="no"), r"pcie_scan_all must be True or False"),
    (lambda: make_vmm(first_slot="1"), r"first_slot must be an integer, not str"),
    (lambda: make_vmm("filled", thp="yes"), r"thp must be True or False"),
])
def test_numbers_of_the_wrong_type(fn, match):
    raises(TypeError, match, fn)


@pytest.mark.parametrize("fn, cls, match, line", [
    (lambda: Segment(0xB000_1000), PciAddressError, r"ECAM base 0xb0001000 not 1 MiB aligned", None),
    (lambda: accesses(0, 0, 0, 0, 2, 4), ValueError, r"accesses\[0\]: register not aligned to the size", None),
    (lambda: check_accesses(with_field(GOOD, reg=1, size=2)), ValueError, r"accesses\[0\]: register not aligned", None),
    (lambda: make_vmm().access(with_field(GOOD, reg=6), {}), ValueError, r"batch\[0\]: register not aligned", None),
    (lambda: parse_csv("r,0,4,0\nr,2,4,0\n"), TraceParseError, r"line 2: size 4 at offset 0x2: .*aligned", 2),
    (lambda: parse_qemu_trace(trace_line() + trace_line(addr="0xb0000001"), Q35_WINDOW), TraceParseError,
     r"line 2: ECAM access of 4 bytes at 0xb0000001 is not aligned", 2),
    (lambda: parse_qemu_trace(trace_line("write", "0xcf8", "0x80000000", 4, "pci-conf-idx")
                              + trace_line(addr="0xcfd", name="pci-conf-data")), TraceParseError,
     r"line 2: conf1 access of 4 bytes at port 0xcfd is not aligned", 2),
])
def test_unaligned_values(fn, cls, match, line):
    exc = raises(cls, match, fn)
    if line is not None:
        assert exc.line == line


@pytest.mark.parametrize("fn, match", [
    (lambda: Bdf(0x10000, 0, 0, 0), r"segment 0x10000 out of range 0\.\.0xffff"),
    (lambda: Bdf(0, 256, 0, 0), r"bus 0x100 out of range 0\.\.0xff"),
    (lambda: Bdf(0, 0, 32, 0), r"device 0x20 out of range 0\.\.0x1f"),
    (lambda: Bdf(0, 0, 0, 8), r"function 0x8 out of range 0\.\.0x7"),
    (lambda: Bdf.parse("00:20.0"), r"device 0x20 out of range"),
    (lambda: SEG.gpa(16, 0, 0), r"bus 0x10 outside segment 0's window \(buses 0x0\.\.0xf\)"),
    (lambda: SEG.gpa(0, 0, 0, 0x1000), r"register 0x1000 out of range 0\.\.0xfff"),
    (lambda: SEG.gpas(0, [0, 32], 0), r"device out of range 0x0\.\.0x1f in segment 0"),
    (lambda: ecam_offset(0, 0, 8), r"function 0x8 out of range"),
    (lambda: accesses(0, 0, 0, 0, 4096, 1), r"reg out of range 0\.\.0xfff"),
    (lambda: accesses(0, 0, 0, 0, 0xFFE, 4), r"accesses\[0\]: register past the 4 KiB of config space"),
    (lambda: check_accesses(with_field(GOOD, dev=40)), r"accesses\[0\]: device out of range 0\.\.0x1f"),
    (lambda: make_vmm().access(with_field(GOOD, fn=9), {}), r"batch\[0\]: function out of range 0\.\.0x7"),
    (lambda: make_vmm().access(with_field(GOOD, segment=7), {}), r"no ECAM segment 7"),
    (lambda: Q35.segment(9), r"no ECAM segment 9"),
])
def test_bdf_parts_out_of_range(fn, match):
    raises(PciAddressError, match, fn)


@pytest.mark.parametrize("size", [0, 3, 16])
@pytest.mark.parametrize("entry", ["ConfigSpace.read", "ConfigSpaces.read (hole)", "ConfigSpaces.write",
                                   "accesses", "Vmm.access", "parse_qemu_trace", "parse_csv"])
def test_access_sizes_other_than_1_2_4_8(entry, size):
    vmm = make_vmm()
    before = vmm_state(vmm)
    calls = {
        "ConfigSpace.read": (ValueError, rf"config access of {size} bytes at 0x0: sizes are 1, 2, 4, 8",
                             lambda: ConfigSpace(Q35.functions[0], False).read(0, size)),
        "ConfigSpaces.read (hole)": (ValueError, rf"config access of {size} bytes",
                                     lambda: ConfigSpaces(Q35).read(Bdf(0, 0, 5, 0), 0, size)),
        "ConfigSpaces.write": (ValueError, rf"config access of {size} bytes",
                               lambda: vmm.spaces.write(Bdf(0, 0, 1, 0), 4, size, 0)),
        "accesses": (ValueError, r"accesses\[0\]: size not 1, 2, 4 or 8", lambda: accesses(0, 0, 0, 0, 0, size)),
        "Vmm.access": (ValueError, r"batch\[1\]: size not 1, 2, 4 or 8",
                       lambda: vmm.access(with_field(GOOD, size=[4, size, 4]), {})),
        "parse_qemu_trace": (TraceParseError, rf"line 2: access size {size}",
                             lambda: parse_qemu_trace(trace_line() + trace_line(size=size))),
        "parse_csv": (TraceParseError, rf"line 2: size {size} at offset 0x0: sizes are 1, 2, 4, 8",
                      lambda: parse_csv(f"r,0,4,0\nr,0,{size},0\n")),
    }
    cls, match, fn = calls[entry]
    exc = raises(cls, match, fn)
    if cls is TraceParseError:
        assert exc.line == 2
    assert vmm_state(vmm) == before


@pytest.mark.parametrize("backing", ["mmio", "allones", "filled"])
def test_windows_beyond_the_guest_address_width(backing):
    host = Host(phys_bits=40)
    vm = VM(host)
    far = Topology(q35_chipset(), [Segment(1 << 40)])
    frames, vmas = host.nr_frames, host.nr_vmas
    raises(PciAddressError, r"segment 0's ECAM window \[0x10000000000, 0x10010000000\) ends past the guest's "
           r"40-bit physical address width", Vmm, vm, far, backing)
    assert list(vm.memslots(0)) == [] and (host.nr_frames, host.nr_vmas) == (frames, vmas)
    raises(PciAddressError, r"gpa 0x10000000 outside segment 0's ECAM window \[0xb0000000, 0xb1000000\)",
           SEG.decode, 1 << 28)


@pytest.mark.parametrize("fn, match", [
    (lambda: accesses(0, [0.0, 1.0], 0, 0, 0, 4), r"bus must be integers, got dtype float64"),
    (lambda: accesses(0, np.array(["a"]), 0, 0, 0, 4), r"bus must be integers, got dtype <U1"),
    (lambda: SEG.gpas(np.array([0.5]), 0, 0), r"bus must be integers, got dtype float64"),
    (lambda: SEG.gpas(0, np.array([True]), 0), r"device must be integers, got dtype bool"),
    (lambda: make_vmm().access(np.zeros(3, dtype=np.uint64), {}), r"batch must be an ACCESS_DTYPE array .*not dtype uint64"),
    (lambda: make_vmm().access([1, 2], {}), r"batch must be an ACCESS_DTYPE array .*not list"),
    (lambda: make_vmm().conf1(np.zeros(3)), r"batch must be an ACCESS_DTYPE array .*not dtype float64"),
    (lambda: make_vmm().mmconfig(np.zeros(3), {}), r"batch must be an ACCESS_DTYPE array"),
    (lambda: make_vmm().access(GOOD, None), r"totals must be a dict"),
    (lambda: format_csv(np.zeros(3)), r"accesses must be an ACCESS_DTYPE array .*not dtype float64"),
    (lambda: ScanResult("x", "mmconfig", Q35, np.zeros(3)), r"accesses must be a 1-D ACCESS_DTYPE array"),
])
def test_wrong_numpy_dtypes(fn, match):
    raises(TypeError, match, fn)


def test_non_contiguous_and_read_only_arrays_give_the_same_answers():
    batch = accesses(0, np.arange(8), 0, 0, 0, 4)
    strided, frozen = batch[::2], batch.copy()
    frozen.setflags(write=False)
    want = make_vmm().access(np.ascontiguousarray(strided), {})
    assert not strided.flags.c_contiguous
    assert np.array_equal(make_vmm().access(strided, {}), want)
    assert np.array_equal(make_vmm().access(frozen, {}), make_vmm().access(batch, {}))
    assert np.array_equal(frozen, batch)                         # not written to
    bus = np.arange(16)[::3]
    bus.setflags(write=False)
    assert np.array_equal(SEG.gpas(bus, 1, 2), SEG.gpas(bus.copy(), 1, 2))
    assert np.array_equal(accesses(0, bus, 0, 0, 0, 4)["bus"], bus)
    plan = plan_scan(Q35, "linux-probe", "mmconfig")
    recorded = plan.accesses.copy()
    recorded.setflags(write=False)
    spread = np.zeros(2 * len(recorded), dtype=ACCESS_DTYPE)
    spread[::2] = recorded
    assert not spread[::2].flags.c_contiguous
    runs = [make_vmm().replay(ScanResult("probe", "mmconfig", Q35, a)) for a in (recorded, spread[::2])]
    assert all(r.hole_mismatches == r.present_mismatches == 0 for r in runs)
    assert np.array_equal(recorded, plan.accesses)


@pytest.mark.parametrize("fn, match", [
    (lambda: accesses(0, [0, 1], [0, 1, 2], 0, 0, 4), r"segment, bus, dev, fn, reg, size, is_write, mech, value: "
                                                      r"arrays of mismatched lengths \(shapes \(\), \(2,\), \(3,\)"),
    (lambda: accesses(0, 0, 0, 0, [0, 4], [4, 4, 4]), r"arrays of mismatched lengths"),
    (lambda: SEG.gpas([0, 1], [0, 1, 2], 0), r"bus, device, function, register: arrays of mismatched lengths"),
    (lambda: make_vmm().access(accesses(0, np.arange(4), 0, 0, 0, 4).reshape(2, 2), {}), r"batch must be 1-D, got shape \(2, 2\)"),
])
def test_arrays_of_mismatched_lengths(fn, match):
    raises(ValueError, match, fn)


def test_empty_arrays():
    empty = accesses(0, [], [], [], [], 4)
    assert empty.dtype == ACCESS_DTYPE and len(empty) == 0
    assert SEG.gpas([], [], []).dtype == np.uint64 and len(SEG.gpas([], [], [])) == 0
    vmm = make_vmm()
    before = vmm_state(vmm)
    totals = {}
    assert len(vmm.access(empty, totals)) == 0 and totals == {}
    assert vmm_state(vmm) == before
    run = vmm.replay(ScanResult("empty", "mmconfig", Q35, empty))
    assert run.accesses["accesses"] == 0 and run.hole_mismatches == run.present_mismatches == 0
    assert format_csv(empty) == "op,offset,size,value\n"
    assert len(parse_csv("op,offset,size,value\n").accesses) == 0


@pytest.mark.parametrize("fields, match", [
    (dict(is_write=[0, 2, 0]), r"batch\[1\]: is_write not 0 or 1"),
    (dict(mech=[0, 0, 5]), r"batch\[2\]: mechanism not MMCONFIG \(0\) or CONF1 \(1\)"),
    (dict(size=1, is_write=1, value=[0, 0x1234, 0]), r"batch\[1\]: value does not fit the size"),
    (dict(mech=CONF1, reg=[0, 0x100, 0]), r"batch\[1\]: conf1 reaches segment 0 and registers below 0x100 only"),
    (dict(mech=CONF1, segment=[0, 1, 0]), r"batch\[1\]: conf1 reaches segment 0"),
])
@pytest.mark.parametrize("entry", ["access", "conf1 / mmconfig"])
def test_bad_access_batches_change_nothing(fields, match, entry):
    """A batch whose first access is fine (a write to 01:00.0's command register) and a later
    one bad: refused as a whole, before anything runs."""
    vmm = make_vmm()
    vmm.access(GOOD, {})                   # fault some pages in, create config spaces
    before = vmm_state(vmm)
    batch = with_field(GOOD, **fields)
    batch[0] = (0, 1, 0, 0, 4, 2, 1, batch[0]["mech"], 0)
    if entry == "access":
        raises(ValueError, match, vmm.access, batch, {})
    elif batch[0]["mech"] == CONF1:
        raises(ValueError, match, vmm.conf1, batch)
    else:
        raises(ValueError, match, vmm.mmconfig, batch, {})
    assert vmm_state(vmm) == before


def test_conf1_and_mmconfig_take_their_own_accesses_only():
    vmm = make_vmm()
    before = vmm_state(vmm)
    raises(ValueError, r"batch\[0\]: not a CONF1 access", vmm.conf1, GOOD)
    raises(ValueError, r"batch\[1\]: not a MMCONFIG access", vmm.mmconfig, with_field(GOOD, mech=[0, 1, 0]), {})
    assert vmm_state(vmm) == before


@pytest.mark.parametrize("fn, match", [
    (lambda: Topology(None), r"functions must be a list of Functions, not NoneType"),
    (lambda: Topology([1]), r"functions\[0\] must be a Function, not int"),
    (lambda: Topology([], [0xB000_0000]), r"segments\[0\] must be a Segment, not int"),
    (lambda: Topology([], extra_roots=(5,)), r"extra_roots\[0\] must be a \(segment, bus\) pair"),
    (lambda: Function("00:03.0", 0x8086, 0, 0), r"a Function's bdf must be a Bdf, not str"),
    (lambda: Function(Bdf(0, 0, 3, 0), 0x8086, 0, 0, bars=((0, 4096),)), r"each BAR must be an \(index, Bar\) pair"),
    (lambda: Function(Bdf(0, 0, 3, 0), 0x8086, 0, 0, subsystem=(1, 2, 3)), r"subsystem must be a \(vendor, device\) pair"),
    (lambda: Q35.get((0, 0, 0, 0)), r"bdf must be a Bdf, not tuple"),
    (lambda: Q35.segment([]), r"segment must be an integer, not list"),
    (lambda: SEG.page_index((0, 0, 0, 0)), r"bdf must be a Bdf, not tuple"),
    (lambda: ConfigSpace(5, False), r"function must be a Function, not int"),
    (lambda: ConfigSpaces(5), r"topology must be a Topology, not int"),
    (lambda: ConfigSpaces(Q35).read((0, 0, 0, 0), 0, 4), r"bdf must be a Bdf, not tuple"),
    (lambda: hole_layout(5), r"topology must be a Topology, not int"),
    (lambda: plan_scan(5, "brute-force"), r"topology must be a Topology, not int"),
    (lambda: root_port_farm(4, segment=5), r"segment must be a Segment, not int"),
    (lambda: random_topology(1, segment=5), r"segment must be a Segment, not int"),
    (lambda: from_spec(None), r"a topology spec must be a str, not NoneType"),
    (lambda: parse_lspci(b"00:00.0 0600: 8086:29c0\n"), r"text must be a str, not bytes"),
    (lambda: parse_info_pci(None), r"text must be a str, not NoneType"),
    (lambda: read_topology(None), r"path must be a str or Path, not NoneType"),
    (lambda: parse_qemu_trace(None), r"expected a path or text, got NoneType"),
    (lambda: parse_qemu_trace(trace_line(), segment=5), r"segment must be a Segment, not int"),
    (lambda: parse_qemu_trace(trace_line(), region=None), r"region must be a str, not NoneType"),
    (lambda: parse_csv(b"r,0,4,0\n"), r"expected a path or text, got bytes"),
    (lambda: read_trace(None), r"path must be a str or Path, not NoneType"),
    (lambda: read_trace("tests/data/small.csv").as_scan(5), r"topology must be a Topology, not int"),
    (lambda: Vmm(5, Q35), r"vm must be an allones\.VM, not int"),
    (lambda: Vmm(VM(Host()), 5), r"topology must be a Topology, not int"),
    (lambda: make_vmm().replay(5), r"scan must be a ScanResult .*not int"),
    (lambda: make_vmm().replay(plan_scan(Q35, "linux-probe"), name=5), r"name must be a str or None, not int"),
])
def test_wrong_object_types(fn, match):
    raises(TypeError, match, fn)


@pytest.mark.parametrize("fn, match", [
    (lambda: Function(Bdf(0, 0, 3, 0), 0x8086, 0, 0, port_type=3), r"0000:00:03\.0: port type 3 is not a PortType"),
    (lambda: Function(Bdf(0, 0, 3, 0), 0x8086, 0, 0, bars=((-1, Bar(4096)),)), r"0000:00:03\.0: BAR index -1 is negative"),
    (lambda: Function(Bdf(0, 0, 3, 0), 0x8086, 0, 0, subsystem=(0x10000, 0)), r"subsystem 0x10000:0x0 does not fit 16 bits"),
    (lambda: Function(Bdf(0, 0, 3, 0), 0xFFFF, 0, 0), r"vendor 0xffff means 'no function'"),
    (lambda: Bar(4096, 7), r"BAR kind 7 is not one of IO \(1\), MEM32 \(0\), MEM64 \(4\)"),
    (lambda: Topology([], []), r"a topology needs at least one ECAM segment"),
    (lambda: Q35.is_multifunction(Bdf(0, 0, 5, 0)), r"0000:00:05\.0: no function there"),
])
def test_bad_topology_contents(fn, match):
    raises(ValueError, match, fn)


@pytest.mark.parametrize("call, cls, match", [
    (lambda t: t.with_window(0, 0), PciAddressError, r"0 buses do not fit from bus 0x0"),
    (lambda t: t.with_window(0, 257), PciAddressError, r"257 buses do not fit"),
    (lambda t: t.with_window(0, 1), PciAddressError, r"0000:00:02\.0: bus outside segment 0's buses 0x0\.\.0x0"),
    (lambda t: t.with_window(5, 4), PciAddressError, r"no ECAM segment 5"),
    (lambda t: t.with_window(0, None), TypeError, r"nr_buses must be an integer, not NoneType"),
    (lambda t: t.with_functions([1]), TypeError, r"functions\[0\] must be a Function"),
])
def test_refused_topology_changes_leave_it_unchanged(call, cls, match):
    topology = q35_default()
    before = (list(topology.functions), list(topology.segments), topology.name, topology.format_tree())
    raises(cls, match, call, topology)
    assert (list(topology.functions), list(topology.segments), topology.name, topology.format_tree()) == before


@pytest.mark.parametrize("fn, cls, match", [
    (lambda: root_port_farm(4, 2), ValueError, r"empty_fraction 2 not in \[0, 1\]"),
    (lambda: root_port_farm(4, float("nan")), ValueError, r"empty_fraction nan not in \[0, 1\]"),
    (lambda: root_port_farm(True), TypeError, r"nr_ports must be an integer, not bool"),
    (lambda: root_port_farm(4, 0.5, 0, Segment(0xB000_0000, end_bus=2)), ValueError, r"4 root ports do not fit"),
    (lambda: multi_segment(0), ValueError, r"nr_segments 0 not in 1\.\.64"),
    (lambda: multi_segment(2, base=0x1000), PciAddressError, r"ECAM base 0x1000 not 1 MiB aligned"),
    (lambda: multi_segment(2, base=0xB000_0000), ValueError, r"ECAM windows of segments 0 and 1 overlap"),
    (lambda: random_topology(1, 30), ValueError, r"nr_root_devices 30 not in 0\.\.29"),
    (lambda: random_topology(1, -1), ValueError, r"nr_root_devices -1 not in 0\.\.29"),
    (lambda: random_topology(1, 8, -1), ValueError, r"max_depth -1 is negative"),
])
def test_builder_arguments(fn, cls, match):
    raises(cls, match, fn)


@pytest.mark.parametrize("spec, cls, match", [
    ("", ValueError, r"empty topology spec; one of 'q35'"),
    ("farm:x", ValueError, r"topology 'farm:x': ports 'x' is not an integer"),
    ("farm:4:nan", ValueError, r"topology 'farm:4:nan': empty fraction 'nan' is not finite"),
    ("random:-1", ValueError, r"topology 'random:-1': seed -1 must be a non-negative integer"),
    ("multi:100", ValueError, r"topology 'multi:100': nr_segments 100 not in 1\.\.64"),
    ("farm:4::1", FileNotFoundError, r"topology 'farm:4::1': No such file, and not of the form 'farm:N"),
    ("q35:1", FileNotFoundError, r"topology 'q35:1': No such file, and not of the form 'q35'"),
    ("bogus:1", FileNotFoundError, r"topology 'bogus:1': No such file \(nor a spec"),
])
def test_from_spec_malformed_specs(spec, cls, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raises(cls, match, from_spec, spec)


LSPCI_OK = "00:00.0 0600: 8086:29c0\n"


@pytest.mark.parametrize("text, line, match", [
    ("", 0, r"^no functions in the text$"),
    (LSPCI_OK + "hello\n", 2, r"^line 2: not an `lspci -n` line: 'hello'$"),
    (LSPCI_OK + "00:20.0 0600: 8086:29c0\n", 2, r"^line 2: device 0x20 out of range 0\.\.0x1f$"),
    (LSPCI_OK + "# c\n" + LSPCI_OK, 3, r"^line 3: 0000:00:00\.0 appears twice$"),
    (LSPCI_OK + "00:01.0 0600: ffff:29c0\n", 2, r"^line 2: 0000:00:01\.0: vendor 0xffff means 'no function'$"),
    (LSPCI_OK + "05:00.0 0200: 8086:1234\n", 2, r"^line 2: 0000:05:00\.0: no bridge leads to bus 05"),
    ("00:00.0 0604: 1b36:000c\n" + "".join(f"{b:02x}:00.0 0604: 104c:8232\n" for b in range(1, 256)), 256,
     r"^line 256: 0000:ff:00\.0: bus numbers need bus < secondary <= subordinate <= 255, got 255, 256, 256$"),
    (LSPCI_OK + "00:01.0 0600: 8086:29c0\x00\n", 2, r"^line 2: not an `lspci -n` line"),
])
def test_malformed_lspci_text(text, line, match):
    exc = raises(TopologyParseError, match, parse_lspci, text)
    assert exc.line == line


HEAD = "  Bus  {bus}, device   {dev}, function {fn}:\n"
HOST = "    Host bridge: PCI device 8086:29c0\n"
BRIDGE = "    PCI bridge: PCI device 1b36:000c\n      secondary bus {sec}.\n      subordinate bus {sub}.\n"


@pytest.mark.parametrize("text, line, match", [
    ("hello\n", 1, r"^line 1: expected '  Bus N, device N, function N:', got 'hello'$"),
    (HEAD.format(bus=0, dev=0, fn=0), 1, r"^line 1: function without a class/ID line$"),
    (HEAD.format(bus=0, dev=0, fn=0) + HOST + "    zzz\n", 3, r"^line 3: not an `info pci` line: 'zzz'$"),
    (HEAD.format(bus=300, dev=0, fn=0) + HOST, 1, r"^line 1: bus 0x12c out of range 0\.\.0xff$"),
    (HEAD.format(bus=0, dev=0, fn=9) + HOST, 1, r"^line 1: function 0x9 out of range 0\.\.0x7$"),
    (HEAD.format(bus="0" * 5000, dev=0, fn=0) + HOST, 1, r"^line 1: expected '  Bus N, device N, function N:'"),
    (HEAD.format(bus=0, dev=0, fn=0) + "    Flux capacitor: PCI device 8086:29c0\n", 2,
     r"^line 2: unknown class description 'Flux capacitor'$"),
    (HEAD.format(bus=0, dev=0, fn=0) + HOST + "      BAR0: 64 bit memory at 0x" + "f" * 20 + " [0x0].\n", 3,
     r"^line 3: BAR0 address 0xf{20} does not fit 64 bits$"),
    (HEAD.format(bus=0, dev=0, fn=0) + HOST + "      BAR0: 32 bit memory at 0xc0000000 [0xc0000002].\n", 3,
     r"^line 3: BAR size 0x3 must be a power of two"),
    (HEAD.format(bus=1, dev=0, fn=0) + BRIDGE.format(sec=2, sub=2) + HEAD.format(bus=2, dev=0, fn=0)
     + BRIDGE.format(sec=1, sub=1), 5, r"^line 5: 0000:02:00\.0: bus numbers need bus < secondary"),
    (HEAD.format(bus=1, dev=0, fn=0) + BRIDGE.format(sec=1, sub=1), 1, r"^line 1: 0000:01:00\.0: bus numbers need"),
])
def test_malformed_info_pci_text(text, line, match):
    exc = raises(TopologyParseError, match, parse_info_pci, text)
    assert exc.line == line


def test_topology_files_not_text_or_missing(tmp_path):
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    exc = raises(TopologyParseError, rf"^{re.escape(str(binary))}: not text \(invalid start byte at byte 0\)$",
                 read_topology, binary)
    assert exc.line == 0
    bad = tmp_path / "bad.lspci"
    bad.write_text(LSPCI_OK + "hello\n")
    exc = raises(TopologyParseError, rf"^{re.escape(str(bad))}: line 2: not an `lspci -n` line", from_spec, str(bad))
    assert exc.line == 2
    with pytest.raises(FileNotFoundError, match="missing.lspci"):
        read_topology(tmp_path / "missing.lspci")
    raises(FileNotFoundError, r"No such file \(nor a spec", from_spec, str(tmp_path / "missing.lspci"))


@pytest.mark.parametrize("lines, line, match", [
    ([trace_line(), "1@1:memory_region_ops_read garbage\n"], 2, r"malformed memory_region_ops line"),
    ([trace_line(), trace_line(size="9" * 5000)], 2, r"malformed memory_region_ops line"),
    ([trace_line(addr="0x1000")], 1, r"gpa 0x1000 outside segment 0's ECAM window"),   # with ecam_addr="gpa"
    ([trace_line(), trace_line(addr="0x" + "f" * 20)], 2, r"addr 0xf{20} does not fit 64 bits"),
    ([trace_line(), trace_line(value="0x" + "f" * 20)], 2, r"value 0xf{20} does not fit 64 bits"),
    ([trace_line(), trace_line(addr="0xd00", name="pci-conf-data")], 2, r"pci-conf-data access at port 0xd00"),
    ([trace_line(addr="0xb0000ffe")], 1, r"ECAM access of 4 bytes at 0xb0000ffe is not aligned"),
])
def test_malformed_qemu_trace_text(lines, line, match):
    # the q35 window given, addresses guest-physical: these lines carry no responder events
    exc = raises(TraceParseError, rf"^line {line}: {match}", parse_qemu_trace, "".join(lines), Q35_WINDOW,
                 ecam_addr="gpa")
    assert exc.line == line


@pytest.mark.parametrize("text, line, match", [
    ("r,0,4,0\nr,0,4\n", 2, r"expected op,offset,size,value; got 3 fields"),
    ("r,0,4,0\nx,0,4,0\n", 2, r"op 'x' is not r/read/w/write"),
    ("r,0,4,0\nr,zz,4,0\n", 2, r"offset 'zz' is not a number"),
    ("r,0,4,0\n\nr,-4,4,0\n", 3, r"offset -0x4 is below the window's bus-0 page"),
    ("r,0x10000000,4,0\n", 1, r"offset 0x10000000 is past bus 255 of the window"),
    ("r,0,1,0x100\n", 1, r"value 0x100 does not fit 1 bytes"),
    ("r,0,1,-1\n", 1, r"value -0x1 does not fit 1 bytes"),
    ("r,0,4,0\nop,offset,size,value\n", 2, r"op 'op' is not r/read/w/write"),
    ("r,0,4,0\nr,0,4," + "9" * 200000 + "\n", 2, r"not CSV: field larger than field limit"),
])
def test_malformed_csv_trace_text(text, line, match):
    exc = raises(TraceParseError, rf"^line {line}: {match}", parse_csv, text)
    assert exc.line == line


def test_trace_sources_missing_or_unreadable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raises(ValueError, r"empty source: neither a file name nor trace text", parse_qemu_trace, "")
    raises(FileNotFoundError, r"no trace file .*missing\.log", read_trace, tmp_path / "missing.log")
    raises(FileNotFoundError, r"no trace file", read_trace, tmp_path)               # a directory
    with pytest.raises(FileNotFoundError):
        parse_qemu_trace("missing.log")                    # one line, no data: a file name
    notgz = tmp_path / "trace.log.gz"
    notgz.write_bytes(b"not gzip")
    exc = raises(TraceParseError, rf"^{re.escape(str(notgz))}: line 1: not a readable gzip file", read_trace, notgz)
    assert exc.line == 1 and exc.source == str(notgz)
    cut = tmp_path / "cut.log.gz"
    cut.write_bytes(gzip.compress((trace_line() * 50).encode())[:-12])
    raises(TraceParseError, r"not a readable gzip file", read_trace, cut)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"r,0,4,0\nr,0,4,\xff\n")
    exc = raises(TraceParseError, rf"^{re.escape(str(binary))}: line 2: not UTF-8 text \(invalid start byte at column 7\)$",
                 read_trace, binary)
    assert exc.line == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("r,0,4,0\nr,0,3,0\n")
    exc = raises(TraceParseError, rf"^{re.escape(str(bad))}: line 2: size 3", read_trace, bad)
    assert (exc.line, exc.source) == (2, str(bad))


@pytest.mark.parametrize("call, match", [
    (lambda v: v.run_scan("bogus"), r"unknown scan 'bogus'; one of linux-boot-x86, linux-probe, brute-force"),
    (lambda v: v.run_scan(None, reactive=True), r"unknown scan None; one of"),
    (lambda v: v.run_scan("brute-force", "bogus"), r"unknown mechanism 'bogus'; one of mmconfig, conf1, linux-x86-default"),
    (lambda v: v.run_scan("linux-probe", "nommconf", reactive=True), r"unknown mechanism 'nommconf'"),
    (lambda v: plan_scan(v.topology, "bogus"), r"unknown scan 'bogus'"),
    (lambda v: plan_scan(v.topology, 5), r"unknown scan 5"),
    (lambda v: scan_program(v.topology, "linux-probe", []), r"unknown mechanism \[\]"),
])
def test_unknown_scan_names_and_mechanisms(call, match):
    vmm = make_vmm()
    vmm.access(accesses(0, 1, 0, 0, 4, 2, 1, 0), {})         # the devices' state a refused scan must keep
    before = vmm_state(vmm)
    raises(ValueError, match, call, vmm)
    assert vmm_state(vmm) == before


@pytest.mark.parametrize("name, options, cls, match", [
    ("brute-force", dict(bogus=1), ValueError, r"scan 'brute-force' takes no option bogus \(it takes: none\)"),
    ("linux-probe", dict(last_bus=5), ValueError, r"takes no option last_bus \(it takes: pcie_scan_all\)"),
    ("full-dump", dict(max_buses=0), ValueError, r"max_buses 0 not in 1\.\.256"),
    ("full-dump", dict(max_buses=1.5), TypeError, r"max_buses must be an integer, not float"),
    ("firmware", dict(passes=0), ValueError, r"passes 0 must be at least 1"),
    ("random", dict(write_fraction=2), ValueError, r"write_fraction 2 not in \[0, 1\]"),
    ("random", dict(write_fraction="x"), TypeError, r"write_fraction must be a number, not str"),
    ("linux-boot-x86", dict(cpu="arm"), ValueError, r"unknown cpu 'arm'; one of intel, amd, amd-k8"),
    ("linux-boot-x86", dict(last_bus=300), ValueError, r"last_bus 300 not in -1\.\.255"),
    ("linux-boot-x86", dict(seed=1.5), TypeError, r"seed must be an integer, not float"),
])
@pytest.mark.parametrize("reactive", [False, True])
def test_bad_scan_options(name, options, cls, match, reactive):
    vmm = make_vmm()
    vmm.access(accesses(0, 1, 0, 0, 4, 2, 1, 0), {})
    before = vmm_state(vmm)
    raises(cls, match, vmm.run_scan, name, "mmconfig", reactive=reactive, **options)
    assert vmm_state(vmm) == before
    options = dict(options)
    seed = options.pop("seed", 0)
    raises(cls, match, scan_program, Q35, name, "mmconfig", seed, **options)     # before the scan starts


@pytest.mark.parametrize("args, kwargs, cls, match", [
    (("bogus",), {}, ValueError, r"unknown backing 'bogus'; one of mmio, filled, memfd-alias, allones, pci-hole"),
    ((None,), {}, ValueError, r"unknown backing None"),
    (("pci-hole",), {}, ValueError, r"backing 'pci-hole' needs a Host\(bit2='pci_hole'\)"),
    (("allones",), dict(thp=True), ValueError, r"thp applies to the filled backing only"),
    (("allones",), dict(first_slot=40000), ValueError, r"first_slot 40000 not in 0\.\.32763"),
    (("allones",), dict(first_slot=1.0), TypeError, r"first_slot must be an integer, not float"),
    (("allones",), dict(budget="3"), TypeError, r"budget must be an integer, not str"),
    (("allones",), dict(budget=3), MemslotBudgetError, r"the hole layout needs 8 memslots, more than the budget of 3"),
    (("filled",), dict(first_slot=32760), MemslotBudgetError, r"needs 8 memslots, more than the budget of 4"),
])
def test_vmm_constructor_refusals_leave_the_vm_unchanged(args, kwargs, cls, match):
    host = Host()
    vm = VM(host)
    ram = host.mmap(1 << 20, fill=0)
    vm.set_user_memory_region(0, 0, 0, ram.size, ram.hva)
    before = ([(s.id, s.base_gfn, s.npages) for s in vm.memslots(0)], host.nr_frames, host.nr_vmas)
    raises(cls, match, Vmm, vm, Q35, *args, **kwargs)
    assert ([(s.id, s.base_gfn, s.npages) for s in vm.memslots(0)], host.nr_frames, host.nr_vmas) == before


@pytest.mark.parametrize("scan, cls, match", [
    (lambda: ScanResult("x", "mmconfig", Q35, accesses(1, 0, 0, 0, 0, 4)), PciAddressError, r"no ECAM segment 1"),
    (lambda: ScanResult("x", "mmconfig", Q35, with_field(GOOD, is_write=[0, 3, 0])), ValueError,
     r"scan\.accesses\[1\]: is_write not 0 or 1"),
    (lambda: ScanResult("x", "mmconfig", Q35, accesses(0, [0, 200], 0, 0, 0, 4)), PciAddressError,
     r"bus out of range 0x0\.\.0x7 in segment 0"),
])
def test_refused_replay_does_not_reboot_devices(scan, cls, match):
    vmm = make_vmm(topology=Q35.with_window(0, 8))
    vmm.access(accesses(0, 1, 0, 0, 4, 2, 1, 0), {})         # a guest wrote 01:00.0's command register
    before = vmm_state(vmm)
    raises(cls, match, vmm.replay, scan())
    assert vmm_state(vmm) == before
    assert vmm.spaces.read(Bdf(0, 1, 0, 0), 4, 2) == 0        # still as the guest left it


@pytest.fixture
def uc_vmm():
    pytest.importorskip("unicorn")
    return make_vmm(topology=Q35.with_window(0, 8))


def test_ecam_window_refusals_leave_the_emulator_unchanged(uc_vmm):
    from unicorn import UC_ARCH_ARM, UC_ARCH_X86, UC_MODE_64, UC_MODE_ARM, UC_PROT_ALL, Uc

    from allones.integrations.unicorn import EcamWindow
    mmio_vmm = make_vmm("mmio", topology=Q35.with_window(0, 8))
    for args, kwargs, cls, match in [
        ((5,), {}, TypeError, r"vmm must be an allones\.vmm\.Vmm, not int"),
        ((mmio_vmm,), {}, ValueError, r"EcamWindow needs a Vmm with backing 'allones'"),
        ((uc_vmm, 5), {}, TypeError, r"uc must be a unicorn\.Uc, not int"),
        ((uc_vmm, Uc(UC_ARCH_ARM, UC_MODE_ARM)), {}, ValueError, r"uc must be an x86-64 emulator"),
        ((uc_vmm,), dict(policy="bogus"), ValueError, r"policy='bogus': expected one of"),
        ((uc_vmm,), dict(edges=None), ValueError, r"edges=None: expected one of \('coalesce', '4k'\)"),
        ((uc_vmm,), dict(trace="no"), TypeError, r"trace must be True or False, not 'no'"),
    ]:
        raises(cls, match, EcamWindow, *args, **kwargs)
    for policy in ("on-demand", "eager"):
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.mem_map(0xB001_0000, 0x1000, UC_PROT_ALL)             # the caller's memory on 00:02.0's page
        before = list(uc.mem_regions())
        raises(ValueError, r"uc already maps \[0xb0010000, 0xb0011000\), which overlaps the ECAM window "
               r"\[0xb0000000, 0xb0800000\)", EcamWindow, uc_vmm, uc, policy=policy)
        assert list(uc.mem_regions()) == before
    window = EcamWindow(uc_vmm)                                   # the VMM is still usable
    window.close()


@pytest.mark.parametrize("argv, rc, says", [
    (["topology", "show", "-t", "bogus:1"], 1, "topology 'bogus:1': No such file"),
    (["topology", "show", "-t", ""], 1, "empty topology spec"),
    (["topology", "show", "-t", "farm:x"], 1, "topology 'farm:x': ports 'x' is not an integer"),
    (["topology", "show", "-t", "{bad_lspci}"], 1, "bad.lspci: line 2: not an `lspci -n` line: 'hello'"),
    (["topology", "show", "-t", "{binary}"], 1, "binary.txt: not text"),
    (["topology", "show", "--ecam-buses", "0"], 2, "argument --ecam-buses: 0 is not in 1..256"),
    (["topology", "show", "--ecam-buses", "x"], 2, "argument --ecam-buses: invalid int value: 'x'"),
    (["topology", "show", "--ecam-buses", "1"], 1, "0000:00:02.0: bus outside segment 0's buses 0x0..0x0"),
    (["scan", "bogus"], 2, "argument NAME: invalid choice: 'bogus'"),
    (["scan", "brute-force", "--mechanism", "bogus"], 2, "argument --mechanism/-m: invalid choice"),
    (["scan", "brute-force", "--backing", "bogus"], 2, "argument --backing/-b: invalid choice"),
    (["scan", "linux-boot-x86", "--cpu", "arm"], 2, "argument --cpu: invalid choice: 'arm'"),
    (["scan", "brute-force", "--seed", "-1"], 2, "argument --seed: -1 is less than 0"),
    (["scan", "linux-boot-x86", "--last-bus", "99999999999999999999999"], 2, "is not in -1..255"),
    (["scan", "full-dump", "--max-buses", "0"], 2, "argument --max-buses: 0 is not in 1..256"),
    (["scan", "random", "--count", "-1"], 2, "argument --count: -1 is less than 0"),
    (["scan", "random", "--last-bus", "3"], 1, "scan 'random' takes no option last_bus"),
    (["trace", "import", "{missing}"], 1, "no trace file"),
    (["trace", "import", "{bad_csv}"], 1, "bad.csv: line 2: size 3 at offset 0x0"),
    (["trace", "import", "{not_gz}"], 1, "trace.log.gz: line 1: not a readable gzip file"),
    (["trace", "import", "tests/data/small.csv", "-t", "q35", "--part", "kernel"], 1, "no kernel part"),
    (["trace", "import", "tests/data/small.csv"], 1, "no pci_cfg_* events, so it does not say which functions"),
    (["trace", "import", "tests/data/small.csv", "--ecam-base", "0x1"], 1, "not 1 MiB aligned"),
    (["trace", "import", "tests/data/small.csv", "--ecam-buses", "8"], 1, "--ecam-buses needs --ecam-base"),
    (["trace", "import", "tests/data/arm64-virt-aavmf/qemu-trace.log.gz", "-t", "q35"], 1, "a log of another machine"),
    (["trace", "import", "tests/data/q35-ovmf-default/qemu-trace.log.gz", "-t", "farm:4"], 1, "lacks 6 function(s) the log shows answering"),
    (["trace", "import", "tests/data/small.csv", "--part", "bogus"], 2, "argument --part: invalid choice"),
    (["trace", "import", "tests/data/small.csv", "--csv", "{missing}/x.csv"], 1, "--csv"),
    (["demo", "extra"], 2, "unrecognized arguments: extra"),
    (["bogus"], 2, "argument COMMAND: invalid choice: 'bogus'"),
])
def test_cli_pci_commands_bad_input(capsys, tmp_path, monkeypatch, request, argv, rc, says):
    monkeypatch.chdir(request.config.rootpath)
    (tmp_path / "bad.lspci").write_text(LSPCI_OK + "hello\n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe")
    (tmp_path / "bad.csv").write_text("r,0,4,0\nr,0,3,0\n")
    (tmp_path / "trace.log.gz").write_bytes(b"not gzip")
    paths = dict(bad_lspci=tmp_path / "bad.lspci", binary=tmp_path / "binary.txt", bad_csv=tmp_path / "bad.csv",
                 not_gz=tmp_path / "trace.log.gz", missing=tmp_path / "missing")
    got, out, err = run_cli(capsys, *(a.format(**paths) for a in argv))
    assert got == rc, err
    assert "Traceback" not in err and out == ""
    lines = err.strip().splitlines()
    if rc == 1:
        assert len(lines) == 1 and lines[0].startswith("allones: error: ") and says in lines[0]
    else:
        assert re.match(r"allones( [a-z]+)*: error: ", lines[-1]) and says in lines[-1]


@pytest.mark.parametrize("exc", [TopologyParseError(3, "not an `lspci -n` line: 'x'", "t.lspci"),
                                 TraceParseError(2, "access size 3", "t.log"), TraceParseError(0, "empty"),
                                 MemslotBudgetError(8, 3)])
def test_errors_survive_a_process_pool(exc):
    """compare and sweep run fleets in worker processes, which send errors back pickled."""
    import pickle
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and str(back) == str(exc)
    assert getattr(back, "line", None) == getattr(exc, "line", None)
