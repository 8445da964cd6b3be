"""Topology builders: a q35-like default, root-port farms, several segments, random ones.

IDs and BARs are those QEMU gives its devices (hw/pci-host/q35.c, hw/isa/lpc_ich9.c,
hw/ide/ich.c, hw/i2c/smbus_ich9.c, hw/display/bochs-display.c, hw/pci-bridge/gen_pcie_root_port.c,
hw/pci-bridge/xio3130_upstream.c and _downstream.c, hw/virtio/virtio-pci.c,
hw/usb/hcd-xhci-pci.c, hw/nvme/ctrl.c). Simplification: devices on a root bus are conventional
PCI here, as virtio is in QEMU; QEMU gives xhci, e1000e and nvme an RC-integrated-endpoint
PCIe capability there.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np

from .ecam import Bdf, Segment, _index
from .topology import Bar, BarKind, Function, PortType, Topology, _segment

MEM32, MEM64, IO = BarKind.MEM32, BarKind.MEM64, BarKind.IO
QEMU_SUBSYS = (0x1AF4, 0x1100)


def _seed(seed) -> int:
    """A seed for numpy's default_rng: a non-negative integer (TypeError/ValueError naming it)."""
    seed = _index("seed", seed)
    if seed < 0:
        raise ValueError(f"seed {seed} must be a non-negative integer")
    return seed


def _fn(seg, bus, dev, fn, **kw) -> Function:
    return Function(Bdf(seg, bus, dev, fn), **kw)


def q35_chipset(seg: int = 0, bus: int = 0) -> list[Function]:
    """What `-machine q35` always has: the MCH, VGA, and ICH9's LPC + AHCI + SMBus at 1f.x,
    on the root bus `bus`."""
    return [
        _fn(seg, bus, 0, 0, vendor=0x8086, device=0x29C0, class_code=0x060000, subsystem=QEMU_SUBSYS,
            name="mch"),
        _fn(seg, bus, 1, 0, vendor=0x1234, device=0x1111, class_code=0x030000, subsystem=QEMU_SUBSYS,
            bars=((0, Bar(16 << 20, MEM32, True)), (2, Bar(4096))), rom_size=64 << 10, name="VGA"),
        _fn(seg, bus, 31, 0, vendor=0x8086, device=0x2918, class_code=0x060100, subsystem=QEMU_SUBSYS,
            name="ICH9-LPC"),
        _fn(seg, bus, 31, 2, vendor=0x8086, device=0x2922, class_code=0x010601, subsystem=QEMU_SUBSYS,
            bars=((4, Bar(32, IO)), (5, Bar(4096))), name="ich9-ahci"),
        _fn(seg, bus, 31, 3, vendor=0x8086, device=0x2930, class_code=0x0C0500, subsystem=QEMU_SUBSYS,
            bars=((4, Bar(64, IO)),), name="ICH9-SMB"),
    ]


#: PCIe endpoints QEMU puts behind root ports (modern virtio, xhci, nvme, e1000e)
ENDPOINTS = {
    "virtio-net": dict(vendor=0x1AF4, device=0x1041, class_code=0x020000, revision=1,
                       bars=((1, Bar(4096)), (4, Bar(16 << 10, MEM64, True))), rom_size=256 << 10),
    "virtio-blk": dict(vendor=0x1AF4, device=0x1042, class_code=0x010000, revision=1,
                       bars=((1, Bar(4096)), (4, Bar(16 << 10, MEM64, True)))),
    "qemu-xhci": dict(vendor=0x1B36, device=0x000D, class_code=0x0C0330, bars=((0, Bar(16 << 10, MEM64)),)),
    "nvme": dict(vendor=0x1B36, device=0x0010, class_code=0x010802, revision=2,
                 bars=((0, Bar(16 << 10, MEM64)),)),
    "e1000e": dict(vendor=0x8086, device=0x10D3, class_code=0x020000,
                   bars=((0, Bar(128 << 10)), (1, Bar(128 << 10)), (2, Bar(32, IO)), (3, Bar(16 << 10)))),
}


def endpoint(seg: int, bus: int, kind: str, dev: int = 0, fn: int = 0) -> Function:
    """A PCIe endpoint of one of the ENDPOINTS kinds."""
    return _fn(seg, bus, dev, fn, port_type=PortType.ENDPOINT, subsystem=(0x1AF4, 0x1100),
               name=kind, **ENDPOINTS[kind])


def root_port(seg: int, dev: int, fn: int, secondary: int, subordinate: int | None = None,
              bus: int = 0) -> Function:
    """QEMU's generic pcie-root-port (1b36:000c), a type 1 header on the root bus `bus`."""
    return _fn(seg, bus, dev, fn, vendor=0x1B36, device=0x000C, class_code=0x060400, header_type=1,
               port_type=PortType.ROOT_PORT, bars=((0, Bar(4096)),), secondary=secondary,
               subordinate=secondary if subordinate is None else subordinate, name="pcie-root-port")


def _ports(seg: int, first_dev: int, n: int):
    """(dev, fn) of n root ports packed 8 to a device from first_dev, as libvirt lays them out."""
    for i in range(n):
        yield first_dev + i // 8, i % 8


def q35_default() -> Topology:
    """The q35 chipset plus four root ports at 00:02.0-3, three with a device behind them."""
    behind = ["virtio-net", "virtio-blk", "qemu-xhci", None]
    functions = q35_chipset()
    for i, (dev, fn) in enumerate(_ports(0, 2, len(behind))):
        functions.append(root_port(0, dev, fn, secondary=i + 1))
        if behind[i]:
            functions.append(endpoint(0, i + 1, behind[i]))
    return Topology(functions, name="q35")


def root_port_farm(nr_ports: int, empty_fraction: float = 0.5, seed: int = 0,
                   segment: Segment | None = None) -> Topology:
    """The q35 chipset plus `nr_ports` root ports (8 per device from 00:02), of which
    round(nr_ports * empty_fraction), chosen by `seed`, are empty hot-plug spares."""
    nr_ports = _index("nr_ports", nr_ports)
    if isinstance(empty_fraction, bool) or not isinstance(empty_fraction, numbers.Real):
        raise TypeError(f"empty_fraction must be a number, not {type(empty_fraction).__name__}")
    if not 0 <= empty_fraction <= 1:
        raise ValueError(f"empty_fraction {empty_fraction} not in [0, 1]")
    seed, segment = _seed(seed), _segment(segment)
    if not 0 <= nr_ports <= min(29 * 8, segment.end_bus - segment.start_bus):
        raise ValueError(f"{nr_ports} root ports do not fit 29 devices x 8 functions, "
                         f"or buses {segment.start_bus}..{segment.end_bus}")
    rng = np.random.default_rng(seed)
    empty = set(rng.choice(nr_ports, size=round(nr_ports * empty_fraction), replace=False).tolist())
    kinds = list(ENDPOINTS)
    seg, root = segment.segment, segment.start_bus
    functions = q35_chipset(seg, root)
    for i, (dev, fn) in enumerate(_ports(seg, 2, nr_ports)):
        bus = root + i + 1
        functions.append(root_port(seg, dev, fn, secondary=bus, bus=root))
        if i not in empty:
            functions.append(endpoint(seg, bus, kinds[int(rng.integers(len(kinds)))]))
    return Topology(functions, [segment], name=f"farm-{nr_ports}")


def multi_segment(nr_segments: int = 2, nr_ports: int = 8, empty_fraction: float = 0.5,
                  seed: int = 0, base: int = 0x80_0000_0000) -> Topology:
    """Segment 0 is the q35 default at 0xB0000000; segments 1.. are root-port farms, each a
    256-bus window above 4 GiB from `base` (as a pxb-pcie or a second host bridge would be)."""
    nr_segments, seed = _index("nr_segments", nr_segments), _seed(seed)
    if not 1 <= nr_segments <= 64:
        raise ValueError(f"nr_segments {nr_segments} not in 1..64")
    base = _index("base", base)
    default = q35_default()
    functions, segments = list(default.functions), list(default.segments)
    for s in range(1, nr_segments):
        seg = Segment(base + (s - 1) * (256 << 20), segment=s)
        farm = root_port_farm(nr_ports, empty_fraction, seed + s, seg)
        functions += farm.functions
        segments.append(seg)
    return Topology(functions, segments, name=f"multi-{nr_segments}")


def random_topology(seed: int, nr_root_devices: int = 8, max_depth: int = 3,
                    segment: Segment | None = None) -> Topology:
    """A seeded random tree: root-bus devices (some multifunction), root ports with endpoints
    or switches (an upstream port and downstream ports) behind them, some ports empty."""
    seed, segment = _seed(seed), _segment(segment)
    nr_root_devices, max_depth = _index("nr_root_devices", nr_root_devices), _index("max_depth", max_depth)
    if not 0 <= nr_root_devices <= 29:
        raise ValueError(f"nr_root_devices {nr_root_devices} not in 0..29 (devices 02..1e of the root bus)")
    if max_depth < 0:
        raise ValueError(f"max_depth {max_depth} is negative")
    rng = np.random.default_rng(seed)
    seg, root, kinds = segment.segment, segment.start_bus, list(ENDPOINTS)
    functions = q35_chipset(seg, root)
    next_bus = [segment.start_bus + 1]

    def take_bus():
        if next_bus[0] > segment.end_bus:
            raise ValueError("random topology ran out of bus numbers")
        next_bus[0] += 1
        return next_bus[0] - 1

    def below_port(bus, depth):   # what sits below a root or downstream port: dev 0 only
        choice = rng.random()
        if choice < 0.3:
            return
        if choice < 0.45 and depth < max_depth:
            switch_bus = take_bus()
            downs = []
            for d in range(int(rng.integers(1, 5))):
                dbus = take_bus()
                downs.append((d, dbus))
                below_port(dbus, depth + 1)
            sub = next_bus[0] - 1
            functions.append(_fn(seg, bus, 0, 0, vendor=0x104C, device=0x8232, class_code=0x060400,
                                 header_type=1, port_type=PortType.UPSTREAM, secondary=switch_bus,
                                 subordinate=sub, name="x3130-upstream"))
            for d, dbus in downs:
                functions.append(_fn(seg, switch_bus, d, 0, vendor=0x104C, device=0x8233,
                                     class_code=0x060400, header_type=1, port_type=PortType.DOWNSTREAM,
                                     secondary=dbus, subordinate=_subtree_end(dbus),
                                     name="xio3130-downstream"))
            return
        nfn = 1 if rng.random() < 0.8 else int(rng.integers(2, 5))
        for fn in range(nfn):
            functions.append(endpoint(seg, bus, kinds[int(rng.integers(len(kinds)))], 0, fn))

    def _subtree_end(bus):
        ends = [f.subordinate for f in functions if f.is_bridge and f.bdf.bus == bus]
        return max([bus] + ends)

    devs = sorted(rng.choice(np.arange(2, 31), size=nr_root_devices, replace=False).tolist())
    for dev in devs:
        if rng.random() < 0.5:
            for fn in range(int(rng.integers(1, 5))):
                bus = take_bus()
                below_port(bus, 1)
                functions.append(root_port(seg, dev, fn, bus, next_bus[0] - 1, bus=root))
        else:
            for fn in range(1 if rng.random() < 0.7 else int(rng.integers(2, 4))):
                kind = kinds[int(rng.integers(len(kinds)))]
                functions.append(_fn(seg, root, dev, fn, name=kind,   # QEMU: no PCIe cap on the root bus
                                     **ENDPOINTS[kind]))
    return Topology(functions, [segment], name=f"random-{seed}")


def from_spec(spec: str) -> Topology:
    """A topology by name: 'q35', 'farm:N[:EMPTY_FRACTION[:SEED]]', 'multi:SEGMENTS[:PORTS]',
    'random:SEED', or a path to `lspci -n` / QEMU `info pci` text. ValueError naming the spec
    for bad numbers in a spec; anything else is a file name (FileNotFoundError if there is
    none, TopologyParseError for text that is not a topology)."""
    if not isinstance(spec, str):
        raise TypeError(f"a topology spec must be a str, not {type(spec).__name__}")
    if not spec.strip():
        raise ValueError(f"empty topology spec; one of {SPECS}, or a file")
    name, colon, rest = spec.partition(":")
    args = rest.split(":") if colon else []
    if name in _BUILDERS:
        parse, nargs = _BUILDERS[name]
        if nargs[0] <= len(args) <= nargs[1] and all(args):
            try:
                return parse(args)
            except ValueError as exc:
                raise ValueError(f"topology {spec!r}: {exc}") from None
        if not Path(spec).exists():     # else a file that happens to be named like a spec
            raise FileNotFoundError(f"topology {spec!r}: No such file, and not of the form {_FORMS[name]}")
    from .parsers import read_topology   # a file
    try:
        return read_topology(spec)
    except FileNotFoundError:
        raise FileNotFoundError(f"topology {spec!r}: No such file (nor a spec: {SPECS})") from None


def _number(text: str, kind, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{what} {text!r} is not finite")
    return value


_BUILDERS = {
    "q35": (lambda a: q35_default(), (0, 0)),
    "farm": (lambda a: root_port_farm(*(_number(x, k, w) for x, k, w in zip(
        a, (int, float, int), ("ports", "empty fraction", "seed")))), (1, 3)),
    "multi": (lambda a: multi_segment(*(_number(x, int, w) for x, w in zip(a, ("segments", "ports")))), (1, 2)),
    "random": (lambda a: random_topology(_number(a[0], int, "seed")), (1, 1)),
}
_FORMS = {"q35": "'q35'", "farm": "'farm:N[:EMPTY_FRACTION[:SEED]]'", "multi": "'multi:SEGMENTS[:PORTS]'",
          "random": "'random:SEED'"}
SPECS = ", ".join(_FORMS.values())
