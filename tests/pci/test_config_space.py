"""Config space of present functions, probed the way Linux probes it; holes read all-ones."""

import pytest

from allones.pci.builders import multi_segment, q35_default, random_topology, root_port_farm
from allones.pci.config_space import ConfigSpace, ConfigSpaces
from allones.pci.ecam import Bdf
from allones.pci.topology import Bar, BarKind, Function, PortType, Topology

TOPOLOGIES = {"q35": q35_default(), "farm": root_port_farm(16, 0.5, seed=1), "multi": multi_segment(2, 4),
              "random-1": random_topology(1), "random-7": random_topology(7)}


def cases(keep=lambda f: True):
    """(topology name, bdf) of every builder function that `keep` accepts, as a parametrization."""
    found = [(name, f.bdf) for name, t in TOPOLOGIES.items() for f in t if keep(f)]
    return pytest.mark.parametrize("name, bdf", found, ids=[f"{n}-{b}" for n, b in found])


ALL = cases()
TYPE_0 = cases(lambda f: not f.is_bridge)
BRIDGES = cases(lambda f: f.is_bridge)

PCI_COMMAND, PCI_STATUS, PCI_HEADER_TYPE, PCI_CAPABILITY_LIST = 0x04, 0x06, 0x0E, 0x34
PCI_STATUS_CAP_LIST, PCI_CAP_ID_EXP, PCI_EXT_CAP_ID_ERR = 0x10, 0x10, 0x0001


def space_of(name, bdf):
    """A fresh config space (writes in one test do not leak into another)."""
    t = TOPOLOGIES[name]
    return t.get(bdf), ConfigSpaces(t).get(bdf), t


# -- the Linux probe, as the kernel does it ---------------------------------------------------

def read_base(space, reg, mask=0xFFFFFFFF):
    """__pci_read_base(): save, write all-ones (the ROM: PCI_ROM_ADDRESS_MASK), read, restore."""
    saved = space.read(reg, 4)
    if mask != 0xFFFFFFFF:
        saved &= ~1                                # PCI_ROM_ADDRESS_ENABLE cleared while sizing
    space.write(reg, 4, saved | mask)
    size_mask = space.read(reg, 4)
    space.write(reg, 4, saved)
    return saved, size_mask


def capabilities(space):
    """__pci_find_next_cap_ttl() walk from PCI_CAPABILITY_LIST: [(position, id)]."""
    if not space.read(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST:
        return []
    caps, pos = [], space.read(PCI_CAPABILITY_LIST, 1)
    for _ in range(48):                            # PCI_FIND_CAP_TTL
        if pos < 0x40:
            return caps
        pos &= ~3
        ent = space.read(pos, 2)
        if ent & 0xFF == 0xFF:
            return caps
        caps.append((pos, ent & 0xFF))
        pos = ent >> 8
    raise AssertionError("capability list does not end")


def bar_slots(f):
    """BAR registers a function implements (a 64-bit BAR's upper half included)."""
    slots = set()
    for index, bar in f.bars:
        slots |= {index, index + 1} if bar.kind == BarKind.MEM64 else {index}
    return slots


def has_capabilities(f):
    """PM + PCIe for PCIe functions, MSI for non-bridges with BARs (config_space's choice)."""
    return f.is_pcie or (bool(f.bars) and not f.is_bridge)


# -- the header ---------------------------------------------------------------------------------

@ALL
def test_ids_class_and_header_type_read_back(name, bdf):
    f, space, t = space_of(name, bdf)
    assert space.read(0x00, 2) == f.vendor and space.read(0x02, 2) == f.device
    assert space.read(0x00, 4) == f.device << 16 | f.vendor
    assert space.read(0x08, 4) == f.class_code << 8 | f.revision
    assert space.read(0x0B, 1) == f.class_code >> 16 and space.read(0x09, 1) == f.class_code & 0xFF
    assert space.read(PCI_HEADER_TYPE, 1) == f.header_type | (0x80 if t.is_multifunction(bdf) else 0)


def test_multifunction_bit_on_q35():
    spaces = ConfigSpaces(TOPOLOGIES["q35"])
    assert spaces.read(Bdf(0, 0, 2, 3), PCI_HEADER_TYPE, 1) == 0x81
    assert spaces.read(Bdf(0, 0, 0x1F, 0), PCI_HEADER_TYPE, 1) == 0x80
    assert spaces.read(Bdf(0, 0, 1, 0), PCI_HEADER_TYPE, 1) == 0x00


@TYPE_0
def test_subsystem_ids_of_type_0_headers(name, bdf):
    f, space, _ = space_of(name, bdf)
    assert (space.read(0x2C, 2), space.read(0x2E, 2)) == f.subsystem


@ALL
def test_read_only_registers_ignore_writes(name, bdf):
    f, space, _ = space_of(name, bdf)
    registers = ((0x00, 4), (0x08, 4), (PCI_HEADER_TYPE, 1), (PCI_STATUS, 2), (PCI_CAPABILITY_LIST, 1))
    before = [space.read(reg, size) for reg, size in registers]
    for reg, size in registers:
        space.write(reg, size, 0)
        space.write(reg, size, (1 << 8 * size) - 1)
    assert [space.read(reg, size) for reg, size in registers] == before
    assert before[0] == f.device << 16 | f.vendor


@ALL
def test_command_register_keeps_only_writable_bits(name, bdf):
    """IO, MEMORY, MASTER, PARITY, SERR, INTX_DISABLE; firmware (OVMF) left IO, MEMORY and
    MASTER on where there is something to decode."""
    f, space, _ = space_of(name, bdf)
    assert space.read(PCI_COMMAND, 2) == (0x0007 if f.bars or f.is_bridge else 0)
    space.write(PCI_COMMAND, 2, 0xFFFF)
    assert space.read(PCI_COMMAND, 2) == 0x0547
    space.write(PCI_COMMAND, 1, 0x02)
    assert space.read(PCI_COMMAND, 2) == 0x0502
    space.write(PCI_COMMAND, 2, 0)
    assert space.read(PCI_COMMAND, 2) == 0


# -- BAR sizing ---------------------------------------------------------------------------------

@ALL
def test_bar_sizing_as_linux_does_it(name, bdf):
    """Reading back all-ones gives ~(size - 1) with the type bits; the saved value is restored."""
    f, space, _ = space_of(name, bdf)
    for index, bar in f.bars:
        reg = 0x10 + 4 * index
        saved, lo = read_base(space, reg)
        flags = int(bar.kind) | (0x8 if bar.prefetchable else 0)
        assert saved == flags and space.read(reg, 4) == saved
        assert lo == ((1 << 32) - bar.size) & 0xFFFFFFFF | flags
        if bar.kind == BarKind.MEM64:
            saved_hi, hi = read_base(space, reg + 4)
            assert saved_hi == 0 and space.read(reg + 4, 4) == 0
            assert hi == ((1 << 64) - bar.size) >> 32
            size_mask = hi << 32 | lo & ~0xF
            assert (~size_mask + 1) & ((1 << 64) - 1) == bar.size     # pci_size()
        else:
            assert (~(lo & ~(0x3 if bar.kind == BarKind.IO else 0xF)) + 1) & 0xFFFFFFFF == bar.size


def sizing_function(bars, **kw):
    f = Function(Bdf(0, 0, 3, 0), vendor=0x1234, device=1, class_code=0x020000, bars=bars, **kw)
    return ConfigSpace(f, multifunction=False)


@pytest.mark.parametrize("bar, expected", [
    (Bar(32, BarKind.IO), 0xFFFFFFE1), (Bar(4, BarKind.IO), 0xFFFFFFFD),
    (Bar(16 << 20, BarKind.MEM32, True), 0xFF000008), (Bar(16), 0xFFFFFFF0), (Bar(1 << 31), 0x80000000),
])
def test_bar_size_masks(bar, expected):
    space = sizing_function(((0, bar),))
    assert read_base(space, 0x10)[1] == expected


@pytest.mark.parametrize("size, lo, hi", [(16 << 10, 0xFFFFC00C, 0xFFFFFFFF), (1 << 32, 0x0000000C, 0xFFFFFFFF),
                                          (1 << 40, 0x0000000C, 0xFFFFFF00)])
def test_64_bit_bar_size_masks(size, lo, hi):
    space = sizing_function(((2, Bar(size, BarKind.MEM64, True)),))
    assert read_base(space, 0x18)[1] == lo
    assert read_base(space, 0x1C)[1] == hi


def test_bar_takes_an_aligned_address():
    space = sizing_function(((0, Bar(16 << 20, BarKind.MEM32, True)), (2, Bar(16 << 10, BarKind.MEM64)),
                             (4, Bar(32, BarKind.IO))))
    space.write(0x10, 4, 0xC1234567)
    assert space.read(0x10, 4) == 0xC1000008
    space.write(0x18, 4, 0xFEBF0000)
    space.write(0x1C, 4, 0x00000080)
    assert (space.read(0x18, 4), space.read(0x1C, 4)) == (0xFEBF0004, 0x80)
    space.write(0x20, 4, 0x6163)
    assert space.read(0x20, 4) == 0x6161
    space.write(0x12, 2, 0xABCD)                   # a 16-bit write to the upper half
    assert space.read(0x10, 4) == 0xAB000008


@ALL
def test_unimplemented_bars_read_0_and_ignore_writes(name, bdf):
    f, space, _ = space_of(name, bdf)
    for index in set(range(2 if f.is_bridge else 6)) - bar_slots(f):
        reg = 0x10 + 4 * index
        assert space.read(reg, 4) == 0
        space.write(reg, 4, 0xFFFFFFFF)
        assert space.read(reg, 4) == 0


@ALL
def test_rom_sizing(name, bdf):
    """PCI_ROM_ADDRESS_MASK (0xfffff800) written: the size mask comes back, enable bit clear."""
    f, space, _ = space_of(name, bdf)
    reg = 0x38 if f.is_bridge else 0x30
    saved, size_mask = read_base(space, reg, mask=0xFFFFF800)
    if not f.rom_size:
        assert (saved, size_mask) == (0, 0)
        return
    assert saved == 0 and size_mask == ((1 << 32) - f.rom_size) & 0xFFFFF800
    assert space.read(reg, 4) == 0


@pytest.mark.parametrize("is_bridge", [False, True])
def test_rom_enable_bit_is_writable(is_bridge):
    kw = dict(header_type=1, secondary=1, subordinate=1, class_code=0x060400) if is_bridge else {}
    f = Function(Bdf(0, 0, 3, 0), **{"vendor": 0x1234, "device": 1, "class_code": 0x020000, **kw},
                 rom_size=2048)
    space = ConfigSpace(f, multifunction=False)
    reg = 0x38 if is_bridge else 0x30
    space.write(reg, 4, 0xFFFFFFFF)
    assert space.read(reg, 4) == 0xFFFFF801
    space.write(reg, 4, 0xFEB00001)
    assert space.read(reg, 4) == 0xFEB00001
    space.write(reg, 4, 0xFFFFF800)
    assert space.read(reg, 4) == 0xFFFFF800


# -- capabilities -------------------------------------------------------------------------------

@ALL
def test_status_cap_list_set_iff_there_are_capabilities(name, bdf):
    f, space, _ = space_of(name, bdf)
    assert bool(space.read(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST) == has_capabilities(f)
    caps = capabilities(space)
    assert bool(caps) == has_capabilities(f)
    assert len({pos for pos, _ in caps}) == len(caps) and all(0x40 <= pos < 0x100 for pos, _ in caps)


@ALL
def test_pcie_capability_holds_the_port_type(name, bdf):
    """set_pcie_port_type(): PCI_EXP_FLAGS_TYPE = (flags & 0xf0) >> 4, only for PCIe functions."""
    f, space, _ = space_of(name, bdf)
    exp = [pos for pos, cap_id in capabilities(space) if cap_id == PCI_CAP_ID_EXP]
    if not f.is_pcie:
        assert exp == []
        return
    assert len(exp) == 1
    flags = space.read(exp[0] + 2, 2)
    assert PortType((flags & 0xF0) >> 4) == f.port_type
    assert flags & 0xF == 2                                                  # capability version 2
    assert bool(flags & 0x0100) == (f.port_type in (PortType.ROOT_PORT, PortType.DOWNSTREAM))   # slot


@ALL
def test_extended_capabilities_only_for_pcie(name, bdf):
    """pci_cfg_space_size(): a conventional function reads all-ones from 0x100 on (QEMU
    pcie_mmcfg_data_read()); a PCIe one has AER at 0x100, the list's end."""
    f, space, _ = space_of(name, bdf)
    header = space.read(0x100, 4)
    if f.is_pcie:
        assert space.size == 4096
        assert header & 0xFFFF == PCI_EXT_CAP_ID_ERR and header >> 20 == 0
    else:
        assert space.size == 256
        assert header == 0xFFFFFFFF
        assert space.read(0xFFF, 1) == 0xFF and space.read(0x100, 2) == 0xFFFF


@ALL
def test_reads_past_the_config_space_are_all_ones(name, bdf):
    _, space, _ = space_of(name, bdf)
    end = space.size
    if end < 4096:
        assert space.read(end - 2, 4) == 0xFFFFFFFF        # straddles the end
        assert space.read(end, 1) == 0xFF
    assert space.read(end - 4, 4) == 0                      # the last dword is in range (and empty)


@pytest.mark.parametrize("reg, size", [(-1, 1), (4094, 4), (4096, 1), (0, 3), (0, 0), (0, 16)])
def test_accesses_outside_the_4k_page_or_of_odd_sizes_are_refused(reg, size):
    """A config access stays within the function's 4 KiB page, 1/2/4/8 bytes wide."""
    space = ConfigSpaces(TOPOLOGIES["q35"]).get(Bdf(0, 0, 0, 0))
    with pytest.raises(ValueError):
        space.read(reg, size)
    with pytest.raises(ValueError):
        space.write(reg, size, 0)


def test_writes_past_a_conventional_space_are_dropped():
    space = ConfigSpaces(TOPOLOGIES["q35"]).get(Bdf(0, 0, 0, 0))
    before = bytes(space.data)
    space.write(0x100, 4, 0x12345678)
    space.write(0xFE, 4, 0x12345678)
    assert bytes(space.data) == before


# -- bridges ------------------------------------------------------------------------------------

@BRIDGES
def test_bridge_bus_numbers(name, bdf):
    """PCI_PRIMARY_BUS, PCI_SECONDARY_BUS, PCI_SUBORDINATE_BUS at 0x18..0x1a."""
    f, space, _ = space_of(name, bdf)
    assert (space.read(0x18, 1), space.read(0x19, 1), space.read(0x1A, 1)) == (
        f.bdf.bus, f.secondary, f.subordinate)
    space.write(0x19, 1, 0x42)                     # firmware may renumber
    assert space.read(0x18, 4) & 0xFFFFFF == f.subordinate << 16 | 0x42 << 8 | f.bdf.bus


# -- ConfigSpaces: holes ------------------------------------------------------------------------

HOLES = [Bdf(0, 0, 3, 0), Bdf(0, 0, 1, 1), Bdf(0, 0, 0x1F, 1), Bdf(0, 4, 0, 0), Bdf(0, 1, 1, 0),
         Bdf(0, 0xFF, 31, 7), Bdf(1, 0, 0, 0)]


@pytest.mark.parametrize("hole", HOLES, ids=str)
@pytest.mark.parametrize("size", [1, 2, 4])
def test_holes_read_all_ones(hole, size):
    spaces = ConfigSpaces(TOPOLOGIES["q35"])
    assert spaces.get(hole) is None
    for reg in (0, 0x0E, 0x100, 0xFFC):
        assert spaces.read(hole, reg, size) == (1 << 8 * size) - 1
    key = hole.segment << 16 | hole.bus << 8 | hole.devfn
    assert spaces.read_key(key, 0, size) == (1 << 8 * size) - 1


def test_writes_to_holes_are_dropped_and_change_nothing():
    t = TOPOLOGIES["q35"]
    spaces = ConfigSpaces(t)
    before = {f.bdf: bytes(spaces.get(f.bdf).data) for f in t}
    for hole in HOLES:
        for size in (1, 2, 4):
            assert spaces.write(hole, 0x10, size, 0) is False
            assert spaces.write(hole, 0x04, size, 0xFFFFFFFF) is False
        assert spaces.read(hole, 0x10, 4) == 0xFFFFFFFF and spaces.get(hole) is None
    assert {f.bdf: bytes(spaces.get(f.bdf).data) for f in t} == before


def test_writes_to_present_functions_are_applied():
    spaces = ConfigSpaces(TOPOLOGIES["q35"])
    bdf = Bdf(0, 1, 0, 0)
    assert spaces.write(bdf, PCI_COMMAND, 2, 0x0006) is True
    assert spaces.read(bdf, PCI_COMMAND, 2) == 0x0006
    assert spaces.get(bdf) is spaces.get(bdf)                     # one space per function, kept


def test_config_spaces_keep_segments_apart():
    t = TOPOLOGIES["multi"]
    spaces = ConfigSpaces(t)
    before = spaces.read(Bdf(0, 0, 2, 0), 0x3C, 1)             # PCI_INTERRUPT_LINE
    spaces.write(Bdf(1, 0, 2, 0), 0x3C, 1, 0x0B)
    assert spaces.read(Bdf(1, 0, 2, 0), 0x3C, 1) == 0x0B
    assert spaces.read(Bdf(0, 0, 2, 0), 0x3C, 1) == before != 0x0B
    assert spaces.read(Bdf(2, 0, 0, 0), 0, 4) == 0xFFFFFFFF


def test_a_multifunction_topology_built_by_hand():
    fns = [Function(Bdf(0, 0, 5, fn), vendor=0x1AF4, device=0x1005, class_code=0x00FF00) for fn in (0, 2)]
    spaces = ConfigSpaces(Topology(fns))
    assert spaces.read(Bdf(0, 0, 5, 2), PCI_HEADER_TYPE, 1) == 0x80
    assert spaces.read(Bdf(0, 0, 5, 1), 0, 2) == 0xFFFF
