"""Functions, topologies and their checks; the topology builders."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allones.pci.builders import (endpoint, from_spec, multi_segment, q35_default, random_topology,
                                  root_port, root_port_farm)
from allones.pci.ecam import Bdf, PciAddressError, Segment
from allones.pci.topology import Q35_ECAM_BASE, Bar, BarKind, Function, PortType, Topology

MEM32, MEM64, IO = BarKind.MEM32, BarKind.MEM64, BarKind.IO


def fn(bus, dev, f=0, segment=0, **kw):
    kw.setdefault("vendor", 0x1234)
    kw.setdefault("device", 0x0001)
    kw.setdefault("class_code", 0x020000)
    return Function(Bdf(segment, bus, dev, f), **kw)


def bridge(bus, dev, secondary, subordinate=None, f=0, segment=0, **kw):
    return fn(bus, dev, f, segment, class_code=0x060400, header_type=1, secondary=secondary,
              subordinate=secondary if subordinate is None else subordinate, **kw)


def bdfs(topology):
    return [str(f.bdf) for f in topology]


# -- Bar --------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, kind", [(3000, MEM32), (4097, MEM32), (0, MEM32), (8, MEM32),
                                        (1 << 32, MEM32), (2, IO), (48, IO), (1 << 64, MEM64)])
def test_bar_size_must_be_a_power_of_two_in_range(size, kind):
    with pytest.raises(ValueError, match="power of two"):
        Bar(size, kind)


@pytest.mark.parametrize("size, kind", [(16, MEM32), (1 << 31, MEM32), (4, IO), (1 << 32, MEM64),
                                        (1 << 63, MEM64)])
def test_bar_sizes_at_the_limits(size, kind):
    assert Bar(size, kind).size == size


def test_io_bar_cannot_be_prefetchable():
    with pytest.raises(ValueError, match="prefetchable"):
        Bar(32, IO, prefetchable=True)


# -- Function ---------------------------------------------------------------------------------

@pytest.mark.parametrize("vendor", [0xFFFF, 0x0000])
def test_vendor_meaning_no_function_is_rejected(vendor):
    """0xffff is what a hole reads; 0x0000 is also 'no device' to pci_bus_generic_read_dev_vendor_id."""
    with pytest.raises(ValueError, match="vendor"):
        fn(0, 1, vendor=vendor)


@pytest.mark.parametrize("field, value, what", [("class_code", 1 << 24, "class code"),
                                                ("device", 1 << 16, "device"), ("vendor", -1, "vendor"),
                                                ("revision", 256, "revision")])
def test_header_fields_must_fit_their_bits(field, value, what):
    with pytest.raises(ValueError, match=what):
        fn(0, 1, **{field: value})


def test_header_type_other_than_0_or_1():
    with pytest.raises(ValueError, match="header type"):
        fn(0, 1, header_type=2)


def test_bridge_needs_bus_numbers():
    with pytest.raises(ValueError, match="bus numbers"):
        fn(0, 1, class_code=0x060400, header_type=1)


def test_only_a_bridge_has_bus_numbers():
    with pytest.raises(ValueError, match="bus numbers"):
        fn(0, 1, secondary=1, subordinate=1)


@pytest.mark.parametrize("bus, secondary, subordinate", [(2, 2, 2), (2, 1, 3), (0, 3, 2)])
def test_bridge_bus_numbers_must_increase(bus, secondary, subordinate):
    """bus < secondary <= subordinate, as pci_scan_bridge_extend() requires."""
    with pytest.raises(ValueError, match="bus < secondary"):
        bridge(bus, 0, secondary, subordinate)


@pytest.mark.parametrize("bars", [
    ((0, Bar(16 << 10, MEM64)), (1, Bar(4096))),      # BAR1 is BAR0's upper half
    ((2, Bar(4096)), (2, Bar(4096))),
    ((5, Bar(16 << 10, MEM64)),),                      # would need a BAR6
    ((6, Bar(4096)),),
])
def test_bad_bar_indexes(bars):
    with pytest.raises(ValueError, match="BAR"):
        fn(0, 1, bars=bars)


def test_bridge_has_only_two_bars():
    with pytest.raises(ValueError, match="BAR"):
        bridge(0, 1, 1, bars=((2, Bar(4096)),))
    with pytest.raises(ValueError, match="BAR"):
        bridge(0, 1, 1, bars=((1, Bar(4096, MEM64)),))
    assert bridge(0, 1, 1, bars=((0, Bar(4096, MEM64)),)).bars


def test_64_bit_bar_in_bar4_is_fine():
    assert fn(0, 1, bars=((4, Bar(16 << 10, MEM64)),)).bars[0][0] == 4


@pytest.mark.parametrize("rom_size", [1024, 3000, 64 << 10 | 1])
def test_rom_size_must_be_a_power_of_two_of_at_least_2k(rom_size):
    with pytest.raises(ValueError, match="ROM"):
        fn(0, 1, rom_size=rom_size)


def test_class_name_falls_back_to_the_code():
    assert fn(0, 1, class_code=0x020000).class_name == "Ethernet controller"
    assert fn(0, 1, class_code=0x00FF00).class_name == "Class 00ff"


# -- Topology checks --------------------------------------------------------------------------

def test_duplicate_bdf():
    with pytest.raises(ValueError, match="twice"):
        Topology([fn(0, 1), fn(0, 1, device=2)])


def test_function_on_a_bus_no_bridge_reaches():
    with pytest.raises(ValueError, match="no bridge leads to bus"):
        Topology([fn(0, 1), fn(5, 0)])


def test_two_bridges_with_the_same_secondary_bus():
    with pytest.raises(ValueError, match="already in use"):
        Topology([bridge(0, 1, 1), bridge(0, 2, 1)])


def test_bridge_whose_secondary_is_a_root_bus():
    seg = Segment(Q35_ECAM_BASE, start_bus=0)
    with pytest.raises(ValueError, match="already in use"):
        Topology([bridge(0, 1, 5)], [seg], extra_roots=((0, 5),))


def test_child_bridge_outside_its_parents_bus_range():
    with pytest.raises(ValueError, match="parent bridge"):
        Topology([bridge(0, 1, 1, 2), bridge(1, 0, 2, 3)])


def test_child_bridge_inside_its_parents_bus_range():
    t = Topology([bridge(0, 1, 1, 3), bridge(1, 0, 2, 3), bridge(2, 0, 3), fn(3, 0)])
    assert t.bridge_to(0, 3).bdf == Bdf(0, 2, 0, 0)


def test_sibling_bridges_with_overlapping_bus_ranges():
    """Buses 3..3 lie inside the first root port's 1..5: both bridges would claim bus 3's cycles."""
    with pytest.raises(ValueError):
        Topology([bridge(0, 1, 1, 5), bridge(0, 2, 3, 3)])


def test_function_outside_its_segments_buses():
    seg = Segment(Q35_ECAM_BASE, end_bus=15)
    with pytest.raises(PciAddressError, match="outside segment"):
        Topology([bridge(0, 1, 16)], [seg])
    with pytest.raises(PciAddressError, match="outside segment"):
        Topology([bridge(0, 1, 1, 16)], [seg])


def test_function_in_a_segment_that_does_not_exist():
    with pytest.raises(PciAddressError, match="segment 1"):
        Topology([fn(0, 1, segment=1)])


def test_overlapping_segment_windows():
    with pytest.raises(ValueError, match="overlap"):
        Topology([], [Segment(Q35_ECAM_BASE), Segment(Q35_ECAM_BASE + (255 << 20), segment=1)])


def test_adjacent_segment_windows_are_fine():
    """Segment 1's window starts at its bus 0x10: base + 16 MiB, where segment 0's ends."""
    t = Topology([], [Segment(Q35_ECAM_BASE, end_bus=15), Segment(Q35_ECAM_BASE, segment=1, start_bus=16)])
    assert len(t.segments) == 2


def test_repeated_segment_numbers():
    with pytest.raises(ValueError, match="repeat"):
        Topology([], [Segment(Q35_ECAM_BASE), Segment(0x80_0000_0000)])


def test_functions_on_a_segments_start_bus_are_roots():
    seg = Segment(Q35_ECAM_BASE, start_bus=0x10)
    t = Topology([fn(0x10, 0), bridge(0x10, 1, 0x11), fn(0x11, 0)], [seg])
    assert t.root_buses() == [(0, 0x10)]
    with pytest.raises(ValueError, match="no bridge"):
        Topology([fn(0x20, 0)], [seg])


def test_extra_roots_are_root_buses():
    t = Topology([fn(0, 1), fn(0x80, 0)], extra_roots=((0, 0x80),))
    assert t.root_buses() == [(0, 0), (0, 0x80)]
    assert t.bridge_to(0, 0x80) is None


# -- Topology queries -------------------------------------------------------------------------

def test_is_multifunction_derived_from_siblings():
    """QEMU sets PCI_HEADER_TYPE_MULTI_FUNCTION on every function of a multi-function device."""
    t = q35_default()
    assert t.is_multifunction(Bdf(0, 0, 2, 0)) and t.is_multifunction(Bdf(0, 0, 0x1F, 3))
    assert not t.is_multifunction(Bdf(0, 0, 1, 0))
    assert not t.is_multifunction(Bdf(0, 1, 0, 0))


def test_is_multifunction_explicit_wins():
    t = Topology([fn(0, 1, 0, multifunction=False), fn(0, 1, 1), fn(0, 2, 0, multifunction=True)])
    assert not t.is_multifunction(Bdf(0, 0, 1, 0))
    assert t.is_multifunction(Bdf(0, 0, 1, 1))
    assert t.is_multifunction(Bdf(0, 0, 2, 0))


def test_functions_are_sorted_and_found_by_bdf():
    t = Topology([fn(0, 3), fn(0, 1, 2), fn(0, 1, 0)])
    assert bdfs(t) == ["0000:00:01.0", "0000:00:01.2", "0000:00:03.0"]
    assert Bdf(0, 0, 1, 2) in t and Bdf(0, 0, 1, 1) not in t
    assert t.get(Bdf(0, 0, 1, 1)) is None and t.get(Bdf(0, 0, 3, 0)).bdf.dev == 3
    assert len(t) == 3


def test_children_by_devfn():
    t = q35_default()
    assert [str(f.bdf) for f in t.children(0, 0)] == [
        "0000:00:00.0", "0000:00:01.0", "0000:00:02.0", "0000:00:02.1", "0000:00:02.2", "0000:00:02.3",
        "0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"]
    assert [str(f.bdf) for f in t.children(0, 2)] == ["0000:02:00.0"]
    assert t.children(0, 4) == [] and t.children(1, 0) == []


def test_bridge_to():
    t = q35_default()
    assert t.bridge_to(0, 0) is None
    assert [t.bridge_to(0, b).bdf for b in (1, 2, 3, 4)] == [Bdf(0, 0, 2, f) for f in range(4)]
    assert t.bridge_to(0, 5) is None


def test_segment_lookup():
    t = multi_segment(2)
    assert t.segment(1).segment == 1
    with pytest.raises(PciAddressError):
        t.segment(2)


def test_with_functions_validates_again():
    t = q35_default()
    assert len(t.with_functions(t.functions[:2])) == 2
    with pytest.raises(ValueError, match="no bridge"):
        t.with_functions([f for f in t if str(f.bdf) != "0000:00:02.0"])


def test_format_tree_mentions_every_function_and_empty_buses():
    t = q35_default()
    tree = t.format_tree()
    for f in t:
        assert f"{f.bdf.bus:02x}:{f.bdf.dev:02x}.{f.bdf.fn}" in tree
    assert "bus 04 (empty)" in tree
    assert tree.count("(empty)") == 1
    assert "ECAM 0xb0000000..0xbfffffff" in tree


def test_format_tree_of_a_farm_counts_empty_ports():
    t = root_port_farm(16, 0.25, seed=1)
    assert t.format_tree().count("(empty)") == 4


# -- builders: q35_default --------------------------------------------------------------------

def test_q35_default_functions():
    t = q35_default()
    assert bdfs(t) == ["0000:00:00.0", "0000:00:01.0", "0000:00:02.0", "0000:00:02.1", "0000:00:02.2",
                       "0000:00:02.3", "0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3",
                       "0000:01:00.0", "0000:02:00.0", "0000:03:00.0"]
    assert t.segments == [Segment(0xB000_0000)]


def test_q35_default_root_ports():
    t = q35_default()
    ports = [f for f in t if f.is_bridge]
    assert [(f.bdf.dev, f.bdf.fn, f.secondary, f.subordinate) for f in ports] == [
        (2, 0, 1, 1), (2, 1, 2, 2), (2, 2, 3, 3), (2, 3, 4, 4)]
    assert {(f.vendor, f.device, f.class_code, f.port_type) for f in ports} == {
        (0x1B36, 0x000C, 0x060400, PortType.ROOT_PORT)}


def test_q35_default_endpoints_and_chipset():
    t = q35_default()
    assert [(f.bdf.bus, f.vendor, f.device, f.port_type) for f in t if f.bdf.bus] == [
        (1, 0x1AF4, 0x1041, PortType.ENDPOINT), (2, 0x1AF4, 0x1042, PortType.ENDPOINT),
        (3, 0x1B36, 0x000D, PortType.ENDPOINT)]
    chipset = {str(f.bdf): (f.vendor, f.device, f.class_code) for f in t if f.port_type is None}
    assert chipset == {"0000:00:00.0": (0x8086, 0x29C0, 0x060000), "0000:00:01.0": (0x1234, 0x1111, 0x030000),
                       "0000:00:1f.0": (0x8086, 0x2918, 0x060100), "0000:00:1f.2": (0x8086, 0x2922, 0x010601),
                       "0000:00:1f.3": (0x8086, 0x2930, 0x0C0500)}


# -- builders: root_port_farm -----------------------------------------------------------------

def empty_ports(t):
    return [f for f in t if f.is_bridge and not t.children(f.bdf.segment, f.secondary)]


@pytest.mark.parametrize("n, fraction", [(1, 0.0), (8, 0.5), (13, 0.25), (6, 0.3), (7, 0.5), (32, 0.75),
                                        (40, 1.0), (0, 0.5)])
def test_farm_has_n_ports_and_round_n_fraction_empty(n, fraction):
    t = root_port_farm(n, fraction, seed=3)
    ports = [f for f in t if f.is_bridge]
    assert len(ports) == n
    assert [(f.bdf.dev, f.bdf.fn) for f in ports] == [(2 + i // 8, i % 8) for i in range(n)]
    assert [f.secondary for f in ports] == list(range(1, n + 1))
    assert len(empty_ports(t)) == round(n * fraction)
    assert len(t) == 5 + n + n - round(n * fraction)


def test_farm_same_seed_same_topology():
    assert root_port_farm(32, 0.5, seed=7) == root_port_farm(32, 0.5, seed=7)


def test_farm_different_seed_differs():
    a, b = root_port_farm(32, 0.5, seed=1), root_port_farm(32, 0.5, seed=2)
    assert a.functions != b.functions


def test_farm_at_its_limits():
    assert len([f for f in root_port_farm(232, 1.0) if f.is_bridge]) == 232
    for bad in (dict(nr_ports=233), dict(nr_ports=-1), dict(nr_ports=4, empty_fraction=1.5),
                dict(nr_ports=4, empty_fraction=-0.1)):
        with pytest.raises(ValueError):
            root_port_farm(**bad)


def test_farm_limited_by_segment_buses():
    seg = Segment(Q35_ECAM_BASE, end_bus=8)
    assert len(empty_ports(root_port_farm(8, 1.0, segment=seg))) == 8
    with pytest.raises(ValueError):
        root_port_farm(9, segment=seg)


def test_farm_in_a_segment_starting_above_bus_0():
    """The chipset and root ports sit on the segment's start bus, the root bus."""
    seg = Segment(0x80_0000_0000, segment=1, start_bus=0x10)
    t = root_port_farm(4, 0.5, segment=seg)
    assert {f.bdf.bus for f in t if not f.is_bridge and f.port_type is None} == {0x10}
    assert [f.secondary for f in t if f.is_bridge] == [0x11, 0x12, 0x13, 0x14]


# -- builders: multi_segment ------------------------------------------------------------------

def test_multi_segment_windows_are_disjoint_and_numbered():
    t = multi_segment(4, nr_ports=8)
    assert [s.segment for s in t.segments] == [0, 1, 2, 3]
    spans = sorted((s.window_start, s.window_end) for s in t.segments)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
    assert {f.bdf.segment for f in t} == {0, 1, 2, 3}


def test_multi_segment_contents():
    t = multi_segment(3, nr_ports=8, empty_fraction=0.5)
    assert [f for f in t if f.bdf.segment == 0] == q35_default().functions
    for s in (1, 2):
        seg_fns = [f for f in t if f.bdf.segment == s]
        assert len([f for f in seg_fns if f.is_bridge]) == 8
        assert len(seg_fns) == 5 + 8 + 4
        assert t.segment(s).window_start >= 1 << 32


@pytest.mark.parametrize("n", [0, 65])
def test_multi_segment_limits(n):
    with pytest.raises(ValueError):
        multi_segment(n)


# -- builders: random_topology ----------------------------------------------------------------

def check_nesting(t):
    """Every bridge's bus range lies inside its parent's, and siblings' ranges are disjoint."""
    for f in t:
        parent = t.bridge_to(f.bdf.segment, f.bdf.bus)
        if parent is not None:
            assert parent.secondary == f.bdf.bus
            if f.is_bridge:
                assert parent.secondary < f.secondary <= f.subordinate <= parent.subordinate
    for s, bus in {(f.bdf.segment, f.bdf.bus) for f in t}:
        ranges = sorted((f.secondary, f.subordinate) for f in t.children(s, bus) if f.is_bridge)
        assert all(a_end < b_start for (_, a_end), (b_start, _) in zip(ranges, ranges[1:]))


def check_buses_depth_first(t):
    """Bus numbers as firmware hands them out: each bridge's range is exactly its subtree."""
    for f in t:
        if f.is_bridge:
            below = [g for g in t if g.is_bridge and f.secondary <= g.bdf.bus <= f.subordinate]
            assert f.subordinate == max([f.secondary] + [g.subordinate for g in below])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_topology_is_valid_and_nested(seed):
    t = random_topology(seed)
    check_nesting(t)
    check_buses_depth_first(t)
    assert [f.bdf for f in t if f.bdf.bus == 0 and f.bdf.dev == 31] == [Bdf(0, 0, 31, f) for f in (0, 2, 3)]
    for f in t:
        if f.bdf.bus:
            assert f.port_type is not None
            if t.bridge_to(0, f.bdf.bus).port_type in (PortType.ROOT_PORT, PortType.DOWNSTREAM):
                assert f.bdf.dev == 0          # only_one_child()


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_topology_is_deterministic_per_seed(seed):
    assert random_topology(seed) == random_topology(seed)


def test_random_topologies_differ_between_seeds():
    assert len({tuple(random_topology(s).functions) for s in range(10)}) == 10


def test_random_topology_has_switches_for_some_seeds():
    kinds = {f.port_type for s in range(20) for f in random_topology(s)}
    assert {PortType.UPSTREAM, PortType.DOWNSTREAM, PortType.ROOT_PORT, PortType.ENDPOINT} <= kinds


@pytest.mark.parametrize("seed", [1, 7])
def test_random_topology_in_a_segment_starting_above_bus_0(seed):
    seg = Segment(0x80_0000_0000, segment=1, start_bus=0x10)
    t = random_topology(seed, segment=seg)
    assert t.root_buses() == [(1, 0x10)]
    assert min(f.bdf.bus for f in t) == 0x10
    assert {f.bdf.segment for f in t} == {1}
    check_nesting(t)
    check_buses_depth_first(t)


# -- builders: from_spec ----------------------------------------------------------------------

@pytest.mark.parametrize("spec, build", [
    ("q35", q35_default), ("farm:8", lambda: root_port_farm(8)),
    ("farm:8:0.25", lambda: root_port_farm(8, 0.25)), ("farm:8:0.25:3", lambda: root_port_farm(8, 0.25, 3)),
    ("multi:3", lambda: multi_segment(3)), ("multi:3:4", lambda: multi_segment(3, 4)),
    ("random:5", lambda: random_topology(5)),
])
def test_from_spec(spec, build):
    t, expected = from_spec(spec), build()
    assert t.functions == expected.functions and t.segments == expected.segments


def test_from_spec_arguments_matter():
    assert from_spec("farm:8:0.25:3") != from_spec("farm:8:0.25:4")
    assert len(empty_ports(from_spec("farm:8:0.25"))) == 2


@pytest.mark.parametrize("spec", ["farm:x", "farm:300", "farm:8:1.5", "farm:8:0.5:y", "multi:0", "multi:x",
                                  "random:abc"])
def test_from_spec_bad_arguments_raise_value_error(spec):
    with pytest.raises(ValueError, match="topology"):
        from_spec(spec)


@pytest.mark.parametrize("spec", ["bogus", "q35:1", "farm", "random:1:2"])
def test_from_spec_unknown_names_are_read_as_files(spec, tmp_path, monkeypatch):
    """Anything else is a path to lspci/info pci text: a missing file is an OSError."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError):
        from_spec(spec)


def test_endpoint_and_root_port_helpers():
    ep = endpoint(0, 5, "nvme")
    assert (ep.bdf, ep.class_code, ep.port_type) == (Bdf(0, 5, 0, 0), 0x010802, PortType.ENDPOINT)
    rp = root_port(0, 3, 1, secondary=6, subordinate=9)
    assert (rp.bdf, rp.secondary, rp.subordinate, rp.header_type) == (Bdf(0, 0, 3, 1), 6, 9, 1)


# -- with_window --------------------------------------------------------------------------------

def test_with_window_shrinks_the_mcfg_window():
    t = q35_default().with_window(0, 8)
    assert t.segments == [Segment(Q35_ECAM_BASE, 0, 0, 7)] and t.name == "q35@8"
    assert t.functions == q35_default().functions


def test_with_window_must_keep_every_function():
    with pytest.raises(ValueError):
        q35_default().with_window(0, 4)          # bus 4 is root port 00:02.3's secondary
    for bad in (0, 257):
        with pytest.raises(PciAddressError):
            q35_default().with_window(0, bad)
    with pytest.raises(PciAddressError):
        q35_default().with_window(1, 8)
