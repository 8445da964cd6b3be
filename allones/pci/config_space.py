"""Config space of present functions, as the VMM emulates it: enough for a Linux probe.

Registers follow include/uapi/linux/pci_regs.h. Each function gets a header (IDs, command,
status with CAP_LIST, class, header type with the multifunction bit), BARs that answer
sizing (write all-ones, read back the size mask: `__pci_read_base()`), bridge bus numbers
and windows, a capability list (PM, PCI Express with its port type, MSI) and, for PCIe
functions, an extended capability (AER) at 0x100. Reads past a conventional function's
256 bytes return all-ones, as QEMU's pcie_mmcfg_data_read() does.
"""

from __future__ import annotations

from .ecam import CONFIG_SPACE_SIZE, LEGACY_CONFIG_SPACE_SIZE, Bdf, PciAddressError, _index
from .topology import BarKind, Function, Topology

# pci_regs.h offsets
PCI_VENDOR_ID, PCI_DEVICE_ID, PCI_COMMAND, PCI_STATUS = 0x00, 0x02, 0x04, 0x06
PCI_REVISION_ID, PCI_CLASS_PROG, PCI_CACHE_LINE_SIZE, PCI_HEADER_TYPE = 0x08, 0x09, 0x0C, 0x0E
PCI_BASE_ADDRESS_0, PCI_SUBSYSTEM_VENDOR_ID, PCI_ROM_ADDRESS = 0x10, 0x2C, 0x30
PCI_CAPABILITY_LIST, PCI_INTERRUPT_LINE, PCI_INTERRUPT_PIN = 0x34, 0x3C, 0x3D
PCI_PRIMARY_BUS, PCI_IO_BASE, PCI_MEMORY_BASE, PCI_PREF_MEMORY_BASE = 0x18, 0x1C, 0x20, 0x24
PCI_ROM_ADDRESS1, PCI_BRIDGE_CONTROL = 0x38, 0x3E
PCI_STATUS_CAP_LIST = 0x10
PCI_HEADER_TYPE_MFD = 0x80
PCI_CAP_ID_PM, PCI_CAP_ID_MSI, PCI_CAP_ID_EXP = 0x01, 0x05, 0x10
PCI_EXT_CAP_ID_ERR = 0x0001
PCI_CFG_SPACE_SIZE = LEGACY_CONFIG_SPACE_SIZE

# where this model puts its capabilities
PM_CAP, EXP_CAP, MSI_CAP, AER_CAP = 0x40, 0x50, 0x90, 0x100


class ConfigSpace:
    """One function's config space: read/write with the hardware's masks."""

    __slots__ = ("function", "size", "data", "wmask", "_bars")

    def __init__(self, function: Function, multifunction: bool):
        if not isinstance(function, Function):
            raise TypeError(f"function must be a Function, not {type(function).__name__}")
        self.function = function
        self.size = CONFIG_SPACE_SIZE if function.is_pcie else PCI_CFG_SPACE_SIZE
        self.data = bytearray(CONFIG_SPACE_SIZE)
        self.wmask = bytearray(CONFIG_SPACE_SIZE)
        self._bars = {}      # register offset -> (address mask, read-only low bits)
        self._header(multifunction)
        self._capabilities()

    # -- layout -------------------------------------------------------------------------

    def _put(self, reg: int, size: int, value: int, wmask: int = 0) -> None:
        self.data[reg:reg + size] = value.to_bytes(size, "little")
        self.wmask[reg:reg + size] = wmask.to_bytes(size, "little")

    def _header(self, multifunction: bool) -> None:
        f = self.function
        self._put(PCI_VENDOR_ID, 2, f.vendor)
        self._put(PCI_DEVICE_ID, 2, f.device)
        # IO, MEMORY, MASTER, PARITY, SERR, INTX_DISABLE writable; firmware left decoding and
        # bus mastering on where there is something to decode (as OVMF does)
        self._put(PCI_COMMAND, 2, 0x0007 if f.bars or f.is_bridge else 0, 0x0547)
        self._put(PCI_REVISION_ID, 4, f.class_code << 8 | f.revision)
        self._put(PCI_CACHE_LINE_SIZE, 2, 0, 0xFFFF)   # cache line size, latency timer
        self._put(PCI_HEADER_TYPE, 1, f.header_type | (PCI_HEADER_TYPE_MFD if multifunction else 0))
        self._put(PCI_INTERRUPT_LINE, 1, 0, 0xFF)
        self._put(PCI_INTERRUPT_PIN, 1, 1 if f.bars else 0)
        for index, bar in f.bars:
            reg = PCI_BASE_ADDRESS_0 + 4 * index
            low = int(bar.kind) | (0x8 if bar.prefetchable else 0)
            self._bars[reg] = ((~(bar.size - 1)) & 0xFFFFFFFF & ~(0x3 if bar.kind == BarKind.IO else 0xF), low)
            if bar.kind == BarKind.MEM64:
                self._bars[reg + 4] = ((~(bar.size - 1)) >> 32 & 0xFFFFFFFF, 0)
        rom = PCI_ROM_ADDRESS1 if f.is_bridge else PCI_ROM_ADDRESS
        if f.rom_size:
            self._bars[rom] = ((~(f.rom_size - 1)) & 0xFFFFF800 | 0x1, 0)
        for reg, (mask, low) in self._bars.items():
            self._put(reg, 4, low, mask)
        if f.is_bridge:
            self._bridge()
        else:
            self._put(PCI_SUBSYSTEM_VENDOR_ID, 4, f.subsystem[1] << 16 | f.subsystem[0])

    def _bridge(self) -> None:
        f = self.function
        self._put(PCI_PRIMARY_BUS, 4, f.subordinate << 16 | f.secondary << 8 | f.bdf.bus, 0xFFFFFFFF)
        self._put(PCI_IO_BASE, 2, 0x0101, 0xF0F0)                 # 32-bit I/O decode
        self._put(PCI_MEMORY_BASE, 4, 0, 0xFFF0FFF0)
        self._put(PCI_PREF_MEMORY_BASE, 4, 0x00010001, 0xFFF0FFF0)   # 64-bit prefetchable
        self._put(PCI_PREF_MEMORY_BASE + 4, 8, 0, (1 << 64) - 1)   # upper 32 bits of base, limit
        self._put(PCI_IO_BASE + 0x14, 4, 0, 0xFFFFFFFF)           # I/O base/limit upper 16
        self._put(PCI_BRIDGE_CONTROL, 2, 0, 0x0FFF)

    def _capabilities(self) -> None:
        f = self.function
        caps = []
        if f.is_pcie:
            caps += [(PM_CAP, PCI_CAP_ID_PM), (EXP_CAP, PCI_CAP_ID_EXP)]
        if f.bars and not f.is_bridge:
            caps.append((MSI_CAP, PCI_CAP_ID_MSI))
        if not caps:
            return
        self._put(PCI_STATUS, 2, PCI_STATUS_CAP_LIST)
        self._put(PCI_CAPABILITY_LIST, 1, caps[0][0])
        for (pos, cap_id), nxt in zip(caps, [c[0] for c in caps[1:]] + [0]):
            self._put(pos, 2, nxt << 8 | cap_id)
        if f.is_pcie:
            self._put(PM_CAP + 2, 2, 0x0003)                      # PMC: version 3
            self._put(PM_CAP + 4, 2, 0, 0x8103)                   # PMCSR
            slot = 0x0100 if f.port_type in (4, 6) else 0        # PCI_EXP_FLAGS_SLOT: root/downstream
            self._put(EXP_CAP + 2, 2, 0x2 | int(f.port_type) << 4 | slot)   # PCI_EXP_FLAGS v2
            for ctl in (0x08, 0x10, 0x18, 0x1C, 0x28, 0x30):       # DEVCTL LNKCTL SLTCTL RTCTL DEVCTL2 LNKCTL2
                self._put(EXP_CAP + ctl, 2, 0, 0xFFFF)
            self._put(AER_CAP, 4, PCI_EXT_CAP_ID_ERR | 2 << 16)   # version 2, next 0
            for reg in (0x08, 0x0C, 0x14, 0x18):                  # masks, severity, cap/control
                self._put(AER_CAP + reg, 4, 0, 0xFFFFFFFF)
        if any(c[1] == PCI_CAP_ID_MSI for c in caps):
            self._put(MSI_CAP + 2, 2, 0x0080, 0x0071)             # 64-bit capable; enable, MME
            self._put(MSI_CAP + 4, 10, 0, (1 << 80) - 1)          # address (64 bits), data

    # -- accesses ------------------------------------------------------------------------

    def read(self, reg: int, size: int) -> int:
        """Read `size` bytes at `reg` (all-ones past the function's config space size)."""
        return self._read(*_check_access(reg, size))

    def _read(self, reg: int, size: int) -> int:
        if reg + size > self.size:
            return (1 << 8 * size) - 1
        return int.from_bytes(self.data[reg:reg + size], "little")

    def write(self, reg: int, size: int, value: int) -> None:
        """Write the low `size` bytes of `value` (a non-negative integer of 64 bits at most)
        through the register masks; BAR and ROM registers keep their size bits."""
        reg, size = _check_access(reg, size)
        self._write(reg, size, _check_value(value, size))

    def _write(self, reg: int, size: int, value: int) -> None:
        if reg + size > self.size:
            return
        for i, byte in enumerate((value & ((1 << 8 * size) - 1)).to_bytes(size, "little")):
            m = self.wmask[reg + i]
            self.data[reg + i] = (self.data[reg + i] & ~m) | (byte & m)
        for bar in range(reg & ~3, reg + size, 4):
            if bar in self._bars:
                mask, low = self._bars[bar]
                old = int.from_bytes(self.data[bar:bar + 4], "little")
                self.data[bar:bar + 4] = ((old & mask) | low).to_bytes(4, "little")


def _check_access(reg: int, size: int) -> tuple[int, int]:
    """(reg, size) as ints; TypeError or ValueError naming them unless a size of 1, 2, 4 or 8
    bytes at a register within the 4 KiB of config space."""
    reg, size = _index("register", reg), _index("size", size)
    if size not in (1, 2, 4, 8) or not 0 <= reg <= CONFIG_SPACE_SIZE - size:
        raise ValueError(f"config access of {size} bytes at {reg:#x}: sizes are 1, 2, 4, 8 "
                         f"within {CONFIG_SPACE_SIZE:#x} bytes")
    return reg, size


def _check_value(value: int, size: int) -> int:
    """value as an int of 64 bits at most (a write keeps its low `size` bytes)."""
    value = _index("value", value)
    if not 0 <= value < 1 << 64:
        raise ValueError(f"value {value:#x} of a {size}-byte config write is negative or past 64 bits")
    return value


def _check_key(key: int) -> int:
    key = _index("key", key)
    if not 0 <= key < 1 << 32:
        raise PciAddressError(f"key {key:#x} is not segment << 16 | bus << 8 | devfn")
    return key


class ConfigSpaces:
    """Every present function's config space in a topology, made on first access, found by
    Bdf or by key (segment << 16 | bus << 8 | devfn)."""

    def __init__(self, topology: Topology):
        if not isinstance(topology, Topology):
            raise TypeError(f"topology must be a Topology, not {type(topology).__name__}")
        self.topology = topology
        self._functions = {f.bdf.key: f for f in topology}
        self._spaces = {}

    def get_key(self, key: int) -> ConfigSpace | None:
        """The function's config space, or None for a hole."""
        space = self._spaces.get(key)
        if space is None:
            function = self._functions.get(key)
            if function is None:
                return None
            space = self._spaces[key] = ConfigSpace(function, self.topology.is_multifunction(function.bdf))
        return space

    def get(self, bdf) -> ConfigSpace | None:
        """The config space at a Bdf, or None for a hole."""
        return self.get_key(_bdf(bdf).key)

    def read_key(self, key: int, reg: int, size: int) -> int:
        """What a config read returns: the register, or all-ones for a hole."""
        key, (reg, size) = _check_key(key), _check_access(reg, size)   # before making a space
        return self._read_key(key, reg, size)

    def write_key(self, key: int, reg: int, size: int, value: int) -> bool:
        """Apply a config write; False when it went to a hole (and was dropped)."""
        key, (reg, size) = _check_key(key), _check_access(reg, size)   # before making a space
        return self._write_key(key, reg, size, _check_value(value, size))

    # Unchecked: for accesses the engine decoded from a checked gpa (Vmm.handle_mmio) or
    # that check_accesses() passed, so an exit costs no argument checks.
    def _read_key(self, key: int, reg: int, size: int) -> int:
        space = self.get_key(key)
        return (1 << 8 * size) - 1 if space is None else space._read(reg, size)

    def _write_key(self, key: int, reg: int, size: int, value: int) -> bool:
        space = self.get_key(key)
        if space is not None:
            space._write(reg, size, value)
        return space is not None

    def read(self, bdf, reg: int, size: int) -> int:
        """read_key() by Bdf."""
        return self.read_key(_bdf(bdf).key, reg, size)

    def write(self, bdf, reg: int, size: int, value: int) -> bool:
        """write_key() by Bdf."""
        return self.write_key(_bdf(bdf).key, reg, size, value)


def _bdf(bdf) -> Bdf:
    if not isinstance(bdf, Bdf):
        raise TypeError(f"bdf must be a Bdf, not {type(bdf).__name__}")
    return bdf

