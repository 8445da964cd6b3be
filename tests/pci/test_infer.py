"""infer_topology: the functions a log's pci_cfg_* events show answering, rebuilt from what
they answered (IDs, class, header type, bus numbers, BAR and ROM sizing, PCIe port type)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allones.pci.ecam import Bdf, Segment
from allones.pci.infer import InferenceError, infer_topology
from allones.pci.qemu_log import Responder
from allones.pci.topology import Bar, BarKind, Function, PortType, Topology
from allones.pci.traces import parse_qemu_trace

BASE = 0xB000_0000
WINDOW = Segment(BASE)


def responder(name="dev", vendor=0x1AF4, device=0x1000, class_code=0x020000, header=0x00, revision=1,
              subsystem=None, line=1):
    """A Responder as if the function's header had been read dword by dword."""
    r = Responder(name, line)
    r.saw(0x00, 4, device << 16 | vendor, False)
    r.saw(0x08, 4, class_code << 8 | revision, False)
    r.saw(0x0C, 4, header << 16, False)
    if subsystem is not None:
        r.saw(0x2C, 4, subsystem[1] << 16 | subsystem[0], False)
    return r


HOST = responder("mch", 0x8086, 0x29C0, 0x060000)


def infer(responders, window=WINDOW):
    return infer_topology({(0, 0, 0): HOST, **responders}, window)


# -- the header ------------------------------------------------------------------------------

def test_ids_class_header_and_multifunction_from_reads():
    topo, notes = infer({(0, 6, 0): responder("virtio-rng-pci", 0x1AF4, 0x1005, 0x00FF00, header=0x80,
                                              revision=0, subsystem=(0x1AF4, 0x0004)),
                         (0, 6, 2): responder("virtio-balloon-pci", 0x1AF4, 0x1002, 0x00FF00, header=0x80)})
    rng, balloon = topo.get(Bdf(0, 0, 6, 0)), topo.get(Bdf(0, 0, 6, 2))
    assert (rng.vendor, rng.device, rng.class_code, rng.revision, rng.header_type) == (0x1AF4, 0x1005, 0x00FF00, 0, 0)
    assert rng.multifunction is True and balloon.multifunction is True
    assert rng.subsystem == (0x1AF4, 0x0004) and balloon.subsystem == (0, 0)   # never read: 0
    assert rng.name == "virtio-rng-pci" and rng.port_type is None and not rng.bars and rng.rom_size == 0
    assert topo.get(Bdf(0, 0, 0, 0)).multifunction is False
    assert topo.segments == [WINDOW] and notes == []


def test_header_type_never_read_is_noted():
    r = Responder("odd", 7)
    r.saw(0, 4, 0x12341AF4, False)
    topo, notes = infer({(0, 4, 0): r})
    f = topo.get(Bdf(0, 0, 4, 0))
    assert f.header_type == 0 and f.class_code == 0 and f.multifunction is None
    assert any("0000:00:04.0 (odd)" in n and "never read" in n for n in notes)


def test_a_function_whose_vendor_was_never_read_is_refused():
    r = Responder("ghost", 42)
    r.saw(0x04, 2, 0x0007, True)                      # only a command write
    with pytest.raises(InferenceError, match=r"0000:00:05\.0 \(ghost\) answered \(log line 42\).*--topology"):
        infer({(0, 5, 0): r})


def test_no_responders_is_refused():
    with pytest.raises(InferenceError, match="no pci_cfg_\\* events"):
        infer_topology({}, WINDOW)


def test_responder_values_are_little_endian_and_none_when_unknown():
    r = Responder("x", 1)
    r.saw(0x10, 2, 0xBEEF, False)
    r.saw(0x10, 1, 0x11, True)
    assert r.value(0x10, 2) == 0xBEEF and r.value(0x10, 2, "last") == 0xBE11
    assert r.value(0x10, 4) is None and r.value(0x11, 1) == 0xBE


# -- bridges and buses -------------------------------------------------------------------------

def bridge(bus_numbers_read=0, bus_numbers_written=None, name="pcie-root-port"):
    r = responder(name, 0x1B36, 0x000C, 0x060400, header=0x01)
    r.saw(0x18, 4, bus_numbers_read, False)
    if bus_numbers_written is not None:
        r.saw(0x18, 4, bus_numbers_written, True)
    return r


def test_bridge_bus_numbers_are_the_last_written():
    behind = responder("virtio-net-pci")
    topo, _ = infer({(0, 1, 0): bridge(0, 0x00050100), (1, 0, 0): behind})
    rp = topo.get(Bdf(0, 0, 1, 0))
    assert (rp.secondary, rp.subordinate) == (1, 5) and rp.is_configured
    assert topo.bridge_to(0, 1) == rp and Bdf(0, 1, 0, 0) in topo


def test_bridge_bus_numbers_by_byte_writes():
    r = bridge(0)
    r.saw(0x19, 1, 0x02, True)
    r.saw(0x1A, 1, 0x03, True)
    topo, _ = infer({(0, 1, 0): r})
    assert (topo.get(Bdf(0, 0, 1, 0)).secondary, topo.get(Bdf(0, 0, 1, 0)).subordinate) == (2, 3)


def test_an_unconfigured_bridge_is_kept_with_nothing_behind_it():
    """Never numbered (its bus-number dword reads 0): secondary = subordinate = 0."""
    topo, _ = infer({(0, 1, 0): bridge(0)})
    rp = topo.get(Bdf(0, 0, 1, 0))
    assert rp.is_bridge and (rp.secondary, rp.subordinate) == (0, 0) and not rp.is_configured
    assert topo.bridge_to(0, 0) is None
    # Topology itself takes it, beside a configured one
    Topology([Function(Bdf(0, 0, 0, 0), 0x8086, 0x29C0, 0x060000), rp,
              Function(Bdf(0, 0, 2, 0), 0x1B36, 0xC, 0x060400, header_type=1, secondary=1, subordinate=1)])


def test_a_bridge_numbered_below_its_own_bus_is_taken_as_unconfigured():
    """Secondary <= its bus (e.g. only primary written): treated as never numbered."""
    topo, _ = infer({(0, 1, 0): bridge(0, 0x00000000)})
    assert not topo.get(Bdf(0, 0, 1, 0)).is_configured


def test_functions_on_a_bus_no_bridge_leads_to_are_refused():
    with pytest.raises(InferenceError, match="bus 02, which no bridge in the log leads to and 0 expander"):
        infer({(2, 0, 0): responder()})
    with pytest.raises(InferenceError, match="bus 01"):     # its bridge is unconfigured
        infer({(0, 1, 0): bridge(0), (1, 0, 0): responder()})


@pytest.mark.parametrize("pxb_device", [0x0009, 0x000B])
def test_an_expander_host_bridge_opens_a_root_bus(pxb_device):
    pxb = responder("pxb-pcie", 0x1B36, pxb_device, 0x060000)
    topo, _ = infer({(0, 5, 0): pxb, (0x80, 0, 0): responder()})
    assert topo.extra_roots == ((0, 0x80),) and Bdf(0, 0x80, 0, 0) in topo
    with pytest.raises(InferenceError, match="1 expander host bridge"):   # one pxb, two orphan buses
        infer({(0, 5, 0): pxb, (0x80, 0, 0): responder(), (0x90, 0, 0): responder()})


# -- synthetic logs: BAR and ROM sizing, capability lists --------------------------------------

class Log:
    """QEMU's lines for ECAM accesses a present function answers (gpa addressing)."""

    def __init__(self, key=(0, 3, 0), name="virtio-net-pci"):
        self.key, self.name, self.lines = key, name, []
        self.read(0x00, 4, 0x10001AF4)
        self.read(0x08, 4, 0x02000001)
        self.read(0x0C, 4, 0x00000000)

    def _addr(self, reg):
        bus, dev, fn = self.key
        return BASE + (bus << 20 | dev << 15 | fn << 12 | reg)

    def _event(self, op, reg, arrow, value):
        bus, dev, fn = self.key
        return f"pci_cfg_{op} {self.name} {bus:02x}:{dev:02x}.{fn:x} @{reg:#x} {arrow} {value:#x}"

    def read(self, reg, size, value):
        self.lines.append(self._event("read", reg, "->", value))
        self.lines.append(f"memory_region_ops_read cpu 0 mr 0x55d0 addr {self._addr(reg):#x} value {value:#x} "
                          f"size {size} name 'pcie-mmcfg-mmio'")

    def write(self, reg, size, value):
        self.lines.append(f"memory_region_ops_write cpu 0 mr 0x55d0 addr {self._addr(reg):#x} value {value:#x} "
                          f"size {size} name 'pcie-mmcfg-mmio'")
        self.lines.append(self._event("write", reg, "<-", value))

    def size_bar(self, reg, mask, restore=0, written=0xFFFFFFFF):
        """As Linux __pci_read_base() does: read, write all ones, read the mask, restore."""
        self.read(reg, 4, restore)
        self.write(reg, 4, written)
        self.read(reg, 4, mask)
        self.write(reg, 4, restore)
        self.read(reg, 4, restore)             # after the restore: not the sizing

    def function(self):
        t = parse_qemu_trace("\n".join(self.lines) + "\n")
        host = responder("mch", 0x8086, 0x29C0, 0x060000)
        topo, notes = infer_topology({(0, 0, 0): host, **t.responders}, t.window)
        return topo.get(Bdf(0, *self.key)), notes, t


def test_a_4k_mem32_bar():
    log = Log()
    log.size_bar(0x14, 0xFFFFF000)
    f, _, t = log.function()
    assert t.responders[(0, 3, 0)].sizing == {0x14: 0xFFFFF000}
    assert f.bars == ((1, Bar(0x1000, BarKind.MEM32)),)


def test_a_64bit_prefetchable_bar_from_two_dwords():
    log = Log()
    log.size_bar(0x20, 0x0000000C)                 # 8 GiB: nothing kept in the low dword's address bits
    log.size_bar(0x24, 0xFFFFFFFE)
    f, _, _ = log.function()
    assert f.bars == ((4, Bar(1 << 33, BarKind.MEM64, True)),)


def test_an_io_bar_of_32_bytes_and_a_rom():
    log = Log()
    log.size_bar(0x10, 0xFFFFFFE1)
    log.size_bar(0x30, 0xFFFC0000, written=0xFFFFF800)   # Linux: l | PCI_ROM_ADDRESS_MASK
    f, _, _ = log.function()
    assert f.bars == ((0, Bar(32, BarKind.IO)),) and f.rom_size == 256 * 1024


def test_edk2_rom_sizing_write_and_a_bridge_rom():
    log = Log((0, 1, 0), "pcie-root-port")
    log.lines = []
    log.read(0x00, 4, 0x000C1B36)
    log.read(0x08, 4, 0x06040000)
    log.read(0x0C, 4, 0x00010000)
    log.read(0x18, 4, 0)
    log.size_bar(0x38, 0xFFFFF800, written=0xFFFFFFFE)    # edk2: all ones but the enable bit
    log.size_bar(0x10, 0xFFFFF000)
    f, _, _ = log.function()
    assert f.is_bridge and f.rom_size == 2048 and f.bars == ((0, Bar(4096, BarKind.MEM32)),)


def test_a_write_that_is_no_sizing_sizes_nothing():
    log = Log()
    log.read(0x10, 4, 0)
    log.write(0x10, 4, 0xFEB00000)                 # an address assigned
    log.read(0x10, 4, 0xFEB00000)
    f, _, t = log.function()
    assert t.responders[(0, 3, 0)].sizing == {} and f.bars == ()


@st.composite
def bars(draw):
    kind = draw(st.sampled_from([BarKind.IO, BarKind.MEM32, BarKind.MEM64]))
    low, high = {BarKind.IO: (2, 8), BarKind.MEM32: (4, 31), BarKind.MEM64: (4, 40)}[kind]
    size = 1 << draw(st.integers(low, high))
    prefetch = kind != BarKind.IO and draw(st.booleans())
    return Bar(size, kind, prefetch)


@settings(max_examples=60, deadline=None)
@given(bar=bars(), index=st.integers(0, 4))
def test_bar_sizing_gives_the_size_and_kind(bar, index):
    """What a BAR of each size and kind reads back after all ones, through the log, to the BAR."""
    log = Log()
    reg, mask = 0x10 + 4 * index, (~(bar.size - 1)) & 0xFFFF_FFFF_FFFF_FFFF
    if bar.kind == BarKind.IO:
        log.size_bar(reg, mask & 0xFFFFFFFC | 1)
    else:
        low = mask & 0xFFFFFFF0 | (4 if bar.kind == BarKind.MEM64 else 0) | (8 if bar.prefetchable else 0)
        log.size_bar(reg, low)
        if bar.kind == BarKind.MEM64:
            log.size_bar(reg + 4, mask >> 32)
    f, _, _ = log.function()
    assert f.bars == ((index, bar),)


def capability_log(flags_byte, via_pm=False, read_flags=True):
    log = Log()
    log.read(0x34, 1, 0x50 if via_pm else 0x40)
    if via_pm:
        log.read(0x50, 2, 0x4001)                  # PM capability (id 1), next 0x40
    log.read(0x40, 2, 0x0010)                      # PCI Express (id 0x10), last
    if read_flags:
        log.read(0x42, 2, flags_byte)
    return log


@pytest.mark.parametrize("flags, port", [(0x0002, PortType.ENDPOINT), (0x0042, PortType.ROOT_PORT),
                                         (0x0092, PortType.RC_END), (0x0062, PortType.DOWNSTREAM)])
@pytest.mark.parametrize("via_pm", [False, True])
def test_pcie_port_type_from_the_capability_list(flags, port, via_pm):
    f, notes, _ = capability_log(flags, via_pm).function()
    assert f.port_type == port and f.is_pcie and notes == []


def test_extended_config_answered_without_the_capability_read_is_guessed_and_noted():
    log = capability_log(0, read_flags=False)
    log.read(0x100, 4, 0)
    f, notes, _ = log.function()
    assert f.port_type == PortType.ENDPOINT
    assert any("0000:00:03.0" in n and "port type taken as endpoint" in n for n in notes)


def test_conventional_pci_without_a_capability_list():
    f, notes, _ = Log().function()
    assert f.port_type is None and notes == []


def test_a_bridge_from_a_log_with_a_device_behind_it():
    """A root port numbered by a write after it was read, and a function on its bus."""
    rp = Log((0, 1, 0), "pcie-root-port")
    rp.lines = []
    rp.read(0x00, 4, 0x000C1B36)
    rp.read(0x08, 4, 0x06040000)
    rp.read(0x0C, 4, 0x00810000)                  # header type 1, multifunction
    rp.read(0x18, 4, 0)
    rp.write(0x18, 4, 0x00010100)
    dev = Log((1, 0, 0), "virtio-net-pci")
    t = parse_qemu_trace("\n".join(rp.lines + dev.lines) + "\n")
    topo, _ = infer_topology({(0, 0, 0): HOST, **t.responders}, t.window)
    f = topo.get(Bdf(0, 0, 1, 0))
    assert (f.secondary, f.subordinate, f.multifunction) == (1, 1, True)
    assert [str(x.bdf) for x in topo] == ["0000:00:00.0", "0000:00:01.0", "0000:01:00.0"]
