"""The Unicorn integration: a real x86-64 guest scans the ECAM window of a Vmm whose holes
are read-only aliases of shared all-ones memory."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("unicorn")
pytest.importorskip("keystone")

from unicorn import UcError  # noqa: E402
from unicorn.x86_const import UC_X86_REG_RAX, UC_X86_REG_RCX, UC_X86_REG_RDI, UC_X86_REG_RSI  # noqa: E402

from allones import VM, Host  # noqa: E402
from allones.constants import PAGE_SHIFT, PAGE_SIZE  # noqa: E402
from allones.integrations.unicorn import EcamWindow, assemble  # noqa: E402
from allones.pci.builders import q35_default  # noqa: E402
from allones.pci.ecam import Bdf  # noqa: E402
from allones.vmm import Vmm  # noqa: E402

SCAN_ASM = Path(__file__).resolve().parents[1] / "examples" / "guest" / "scan.asm"
CODE = 0x10000
NR_BUSES = 8


@pytest.fixture(scope="module")
def scan_code():
    return assemble(SCAN_ASM.read_text(), CODE)


def make(nr_buses=NR_BUSES, policy="on-demand", **kw):
    topo = q35_default() if nr_buses == 256 else q35_default().with_window(0, nr_buses)
    vm = VM(Host(), prefault="on-demand" if policy == "eager" else policy)
    vmm = Vmm(vm, topo, "allones")
    return topo, vmm, EcamWindow(vmm, policy=policy, **kw)


def run_code(win, code):
    win.uc.mem_map(CODE, 0x1000)
    win.uc.mem_write(CODE, code)
    win.run(CODE, CODE + len(code) - 1)     # stop at the final hlt
    return win.uc.reg_read(UC_X86_REG_RAX)


def _run_scan(win, topo, code, nr_buses):
    win.uc.reg_write(UC_X86_REG_RDI, topo.segments[0].window_start)
    win.uc.reg_write(UC_X86_REG_RSI, nr_buses)
    return run_code(win, code)


def probe_pages(topo, nr_buses):
    """Config pages a Linux-like probe of buses 0..nr_buses-1 touches: function 0 of every
    device; functions 1-7 of multifunction devices."""
    seg, pages = topo.segments[0], set()
    for bus in range(nr_buses):
        for dev in range(32):
            pages.add(seg.gpa(bus, dev, 0))
            fn0 = Bdf(0, bus, dev, 0)
            if fn0 in topo and topo.is_multifunction(fn0):
                pages.update(seg.gpa(bus, dev, fn) for fn in range(1, 8))
    return pages


def hole_pages(topo, pages):
    present = {topo.segments[0].gpa(f.bdf.bus, f.bdf.dev, f.bdf.fn) for f in topo}
    return pages - present


@pytest.mark.parametrize("policy", ["on-demand", "whole-slot", "eager"])
def test_guest_scan_counts_and_touches(scan_code, policy):
    topo, vmm, win = make(policy=policy, trace=True)
    assert _run_scan(win, topo, scan_code, NR_BUSES) == len(q35_default()) == 12
    touched = {addr & ~(PAGE_SIZE - 1) for addr, _ in win.reads}
    expected = probe_pages(topo, NR_BUSES)
    assert touched == expected
    holes = hole_pages(topo, expected)
    touched_slots = {vmm.vm.gfn_to_memslot(g >> PAGE_SHIFT).id for g in holes}
    faults = {"on-demand": len(holes), "whole-slot": len(touched_slots), "eager": 0}[policy]
    assert win.stats["faults"] == faults
    mapped = {"on-demand": len(holes), "whole-slot": sum(
        vmm.vm.memslots().get(i).npages for i in touched_slots), "eager": vmm.layout.hole_pages}
    assert win.stats["pages_mapped"] == mapped[policy]
    # 19 present-function reads: 12 vendor dwords + 7 fn-0 header-type bytes
    present_reads = sum(1 for a, _ in win.reads if a & ~(PAGE_SIZE - 1) not in holes)
    assert win.stats["exits_mmio"] == win.stats["exits_emulated"] == present_reads == 19
    assert vmm.mmio_emulated == 19
    assert win.stats["hole_writes"] == 0


@pytest.mark.parametrize("policy", ["on-demand", "whole-slot"])
def test_counters_match_vm_run(scan_code, policy):
    """The same reads replayed through VM.run count the same faults, exits and pages."""
    topo, vmm, win = make(policy=policy, trace=True)
    _run_scan(win, topo, scan_code, NR_BUSES)
    gpas = np.array([a for a, _ in win.reads], dtype=np.uint64)
    sizes = np.array([s for _, s in win.reads], dtype=np.uint8)
    _, vmm2, _ = make(policy=policy)
    res = vmm2.vm.run(gpas, sizes, on_mmio=vmm2.handle_mmio, mmio_gfns=vmm2._present_gfns)
    mine = win.vm_run_stats()
    assert res.stats["faults"] == mine["faults"] == win.stats["faults"] + win.stats["exits_mmio"]
    assert res.stats["exits_mmio"] == mine["exits_mmio"] == 19
    assert res.stats["mapped_4k"] + 512 * res.stats["mapped_2m"] == mine["mapped_pages"]
    assert res.stats["prefaulted"] == mine["prefaulted"]
    assert vmm2.mmio_emulated == win.stats["exits_emulated"]


def test_present_reads_give_topology_ids():
    topo, vmm, win = make(policy="whole-slot")
    seg = topo.segments[0]
    for f in topo:
        gpa = seg.gpa(f.bdf.bus, f.bdf.dev, f.bdf.fn)
        assert int.from_bytes(win.uc.mem_read(gpa, 4), "little") == f.vendor | f.device << 16
    assert win.stats["exits_emulated"] == len(topo) == vmm.mmio_emulated


@pytest.mark.parametrize("policy", ["on-demand", "whole-slot", "eager"])
def test_writes_to_holes_are_dropped(policy):
    topo, vmm, win = make(policy=policy)
    hole = topo.segments[0].gpa(5, 3, 0)          # bus 5: all holes
    code = assemble(f"""
        mov rbx, {hole:#x}
        mov eax, dword ptr [rbx]          ; a hole: all-ones
        mov dword ptr [rbx + 8], 0x12345678
        add dword ptr [rbx + 0x10], 1     ; read-modify-write of a hole
        mov ecx, dword ptr [rbx + 8]      ; still all-ones
        mov qword ptr [rbx + 0x2000], rcx ; another page (maybe not mapped yet)
        mov rax, qword ptr [rbx + 0x2000]
        add rax, rcx
        hlt
    """, CODE)
    value = run_code(win, code)
    assert win.uc.reg_read(UC_X86_REG_RCX) == 0xFFFFFFFF
    assert value == (0xFFFFFFFFFFFFFFFF + 0xFFFFFFFF) & 0xFFFFFFFFFFFFFFFF
    assert win.stats["hole_writes"] == win.stats["exits_mmio"] == 3
    assert win.stats["exits_emulated"] == 0 and vmm.mmio_emulated == 0
    assert bytes(win.uc.mem_read(hole, PAGE_SIZE)) == b"\xff" * PAGE_SIZE
    assert bytes(memoryview(vmm.vm.host.allones_page)) == b"\xff" * PAGE_SIZE
    assert bytes(win._huge) == b"\xff" * (2 << 20)
    assert bytes(win._scratch) == b"\xff" * (2 << 20)


def test_writes_to_present_functions_reach_the_vmm():
    topo, vmm, win = make(policy="eager")
    vga = topo.segments[0].gpa(0, 1, 0)
    code = assemble(f"""
        mov rbx, {vga:#x}
        mov dword ptr [rbx + 0x10], 0xffffffff   ; BAR0 sizing
        mov eax, dword ptr [rbx + 0x10]
        hlt
    """, CODE)
    value = run_code(win, code)
    assert value == (~((16 << 20) - 1) & 0xFFFFFFF0) | 0x8   # 16 MiB prefetchable mem32 BAR
    assert win.stats["exits_mmio"] == win.stats["exits_emulated"] == 2 and win.stats["hole_writes"] == 0


def test_edges_4k_aliases_the_host_page(scan_code):
    topo, vmm, win = make(policy="eager", edges="4k")
    assert _run_scan(win, topo, scan_code, NR_BUSES) == 12
    regions = win.mapped_regions()
    assert all(size == PAGE_SIZE or (start % (2 << 20) == 0 and size == 2 << 20) for start, size in regions)
    assert sum(size for _, size in regions) >> PAGE_SHIFT == vmm.layout.hole_pages


def test_outside_the_window_still_faults():
    _, _, win = make(policy="whole-slot")
    with pytest.raises(UcError):
        win.uc.mem_read(0xA0000000, 4)
    code = assemble("mov rbx, 0xA0000000; mov eax, dword ptr [rbx]; hlt", CODE)
    with pytest.raises(UcError):
        run_code(win, code)


@pytest.mark.parametrize("policy", ["whole-slot", "eager"])
def test_full_window_scan(scan_code, policy):
    """All 256 buses: 8192 device probes, the holes read at emulator speed."""
    topo, vmm, win = make(256, policy=policy)
    assert _run_scan(win, topo, scan_code, 256) == 12
    assert win.stats["exits_emulated"] == 19
    assert win.stats["faults"] == (0 if policy == "eager" else len(
        {vmm.vm.gfn_to_memslot(g >> PAGE_SHIFT).id for g in hole_pages(topo, probe_pages(topo, 256))}))


def test_bad_options():
    topo = q35_default().with_window(0, 8)
    with pytest.raises(ValueError):
        EcamWindow(Vmm(VM(Host()), topo, "mmio"))
    with pytest.raises(ValueError):
        EcamWindow(Vmm(VM(Host()), topo, "allones"), policy="lazy")
    with pytest.raises(ValueError):
        EcamWindow(Vmm(VM(Host(materialize=False)), topo, "allones"))
