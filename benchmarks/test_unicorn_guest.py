"""The guest program (examples/guest/scan.asm: every bus/device/function's vendor ID, the
multifunction bit honoured) run by a real CPU emulator, Unicorn, with the ECAM window's
holes backed four ways. This measures Unicorn, not the model:

- `mmio-callback`: the whole window is an MMIO region; every access calls Python (a hole
  answers all-ones, a present function goes to the VMM);
- `filled`: per-VM emulator memory filled with 0xff for the holes (the window's bytes);
- `allones-on-demand`: holes are read-only aliases of the host's one 0xff page, mapped a page
  per fault (allones.integrations.unicorn.EcamWindow);
- `allones-whole-slot`: the same, each slot's run mapped at its first fault, in 2 MiB aliases
  of one shared 0xff buffer.

The window is 16 buses (4,096 function pages): on-demand's 4 KiB regions cost Unicorn
superlinearly (a 256-bus scan takes ~37 s that way, 2.5 ms whole-slot). Setup (building the
emulator and its mappings) is outside the timing; extra_info carries the emulator memory
mapped for the window and the faults and exits.
Run: python -m pytest benchmarks/test_unicorn_guest.py --benchmark-only --benchmark-group-by=group
"""

from pathlib import Path

import pytest

unicorn = pytest.importorskip("unicorn")
pytest.importorskip("keystone")

from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_READ, Uc  # noqa: E402
from unicorn.x86_const import UC_X86_REG_RAX, UC_X86_REG_RDI, UC_X86_REG_RSI  # noqa: E402

from allones import VM, Host  # noqa: E402
from allones.integrations.unicorn import EcamWindow, assemble  # noqa: E402
from allones.pci.builders import q35_default  # noqa: E402
from allones.vmm import Vmm  # noqa: E402

SCAN = assemble((Path(__file__).resolve().parents[1] / "examples" / "guest" / "scan.asm").read_text(), 0x10000)
CODE, NR_BUSES = 0x10000, 16
TOPOLOGY = q35_default().with_window(0, NR_BUSES)
WINDOW = TOPOLOGY.segments[0]


def _load_code(uc):
    uc.mem_map(CODE, 0x1000)
    uc.mem_write(CODE, SCAN)
    uc.reg_write(UC_X86_REG_RDI, WINDOW.window_start)
    uc.reg_write(UC_X86_REG_RSI, NR_BUSES)


def _mmio_callback():
    vmm = Vmm(VM(Host()), TOPOLOGY, "mmio")
    uc, exits = Uc(UC_ARCH_X86, UC_MODE_64), [0]

    def read(uc, offset, size, data):
        exits[0] += 1
        value = vmm.handle_mmio(WINDOW.window_start + offset, size, False, 0)
        return (1 << 8 * size) - 1 if value is None else value

    def write(uc, offset, size, value, data):
        exits[0] += 1
        vmm.handle_mmio(WINDOW.window_start + offset, size, True, value)

    uc.mmio_map(WINDOW.window_start, WINDOW.size, read, None, write, None)
    _load_code(uc)
    return uc, lambda: uc.emu_start(CODE, CODE + len(SCAN) - 1), dict(window_bytes=0, exits=exits)


def _filled():
    vmm = Vmm(VM(Host()), TOPOLOGY, "mmio")        # present functions still exit to the VMM
    uc, exits = Uc(UC_ARCH_X86, UC_MODE_64), [0]
    present = {WINDOW.gpa(f.bdf.bus, f.bdf.dev, f.bdf.fn) for f in TOPOLOGY}
    start, end = WINDOW.window_start, WINDOW.window_end

    def read(uc, offset, size, page):
        exits[0] += 1
        return vmm.handle_mmio(page + offset, size, False, 0)

    gpa = start
    for page in sorted(present) + [end]:           # 0xff memory between present pages
        if page > gpa:
            uc.mem_map(gpa, page - gpa, UC_PROT_READ)
            uc.mem_write(gpa, b"\xff" * (page - gpa))
        if page < end:
            uc.mmio_map(page, 4096, read, page, None, None)
        gpa = page + 4096
    _load_code(uc)
    return uc, lambda: uc.emu_start(CODE, CODE + len(SCAN) - 1), dict(window_bytes=WINDOW.size - 4096 * len(present),
                                                                      exits=exits)


def _allones(policy):
    vmm = Vmm(VM(Host(), prefault=policy), TOPOLOGY, "allones")
    win = EcamWindow(vmm, policy=policy)
    _load_code(win.uc)
    # the host's one 0xff page, and the window's two 2 MiB buffers (0xff, and the scratch
    # that absorbs a hole write)
    return win.uc, lambda: win.run(CODE, CODE + len(SCAN) - 1), dict(window_bytes=4096 + (4 << 20), win=win)


SETUPS = {"mmio-callback": _mmio_callback, "filled": _filled,
          "allones-on-demand": lambda: _allones("on-demand"),
          "allones-whole-slot": lambda: _allones("whole-slot")}


@pytest.mark.parametrize("backing", SETUPS)
def test_guest_scan(benchmark, backing):
    benchmark.group = f"unicorn/guest scan of {NR_BUSES} buses"
    made = []

    def setup():
        made.append(SETUPS[backing]())
        return (made[-1][1],), {}

    benchmark.pedantic(lambda start: start(), setup=setup, rounds=3)
    uc, _, info = made[-1]
    assert uc.reg_read(UC_X86_REG_RAX) == len(TOPOLOGY)          # the guest found every function
    extra = dict(backing=backing, window_bytes=info["window_bytes"])
    if "win" in info:
        extra.update(info["win"].stats)
    else:
        extra.update(exits=info["exits"][0])
    benchmark.extra_info.update(extra)
