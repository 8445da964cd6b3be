"""ECAM geometry: Bdf, Segment windows (MCFG semantics), offsets and their checks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allones.pci.ecam import Bdf, PciAddressError, Segment, decode_offset, ecam_offset

BASE = 0xB000_0000
MiB = 1 << 20

buses = st.integers(0, 255)
devs = st.integers(0, 31)
fns = st.integers(0, 7)
regs = st.integers(0, 4095)


@st.composite
def segments(draw):
    """A window with any start..end buses; its base (that of bus 0) 1 MiB aligned."""
    start = draw(st.integers(0, 255))
    end = draw(st.integers(start, 255))
    base = draw(st.integers(0, (1 << 20) - 1)) * 256 * MiB
    return Segment(base, draw(st.integers(0, 0xFFFF)), start, end)


@st.composite
def segment_and_address(draw):
    seg = draw(segments())
    return seg, draw(st.integers(seg.start_bus, seg.end_bus)), draw(devs), draw(fns), draw(regs)


# -- Segment.gpa / decode ---------------------------------------------------------------------

def test_gpa_is_base_plus_ecam_offset():
    seg = Segment(BASE)
    assert seg.gpa(0, 0, 0) == BASE
    assert seg.gpa(1, 2, 3, 0x44) == BASE + (1 << 20) + (2 << 15) + (3 << 12) + 0x44
    assert seg.gpa(255, 31, 7, 4095) == BASE + (256 << 20) - 1


def test_window_of_a_segment_starting_above_bus_0():
    """MCFG: the base address is that of bus 0 even when start_bus > 0 (PCI_MMCFG_BUS_OFFSET)."""
    seg = Segment(BASE, segment=1, start_bus=0x10, end_bus=0x1F)
    assert seg.window_start == BASE + (0x10 << 20)
    assert seg.window_end == BASE + (0x20 << 20)
    assert seg.size == 16 * MiB and seg.nr_buses == 16
    assert seg.gpa(0x10, 0, 0) == seg.window_start
    assert seg.decode(seg.window_start) == (Bdf(1, 0x10, 0, 0), 0)
    assert seg.decode(seg.window_end - 1) == (Bdf(1, 0x1F, 31, 7), 0xFFF)


@settings(max_examples=200)
@given(segment_and_address())
def test_gpa_decode_round_trip(case):
    seg, bus, dev, fn, reg = case
    gpa = seg.gpa(bus, dev, fn, reg)
    assert seg.window_start <= gpa < seg.window_end
    assert gpa == seg.base + (bus << 20 | dev << 15 | fn << 12 | reg)
    assert seg.decode(gpa) == (Bdf(seg.segment, bus, dev, fn), reg)


@settings(max_examples=100)
@given(segments(), st.data())
def test_decode_gpa_round_trip(seg, data):
    gpa = data.draw(st.integers(seg.window_start, seg.window_end - 1))
    bdf, reg = seg.decode(gpa)
    assert seg.gpa(bdf.bus, bdf.dev, bdf.fn, reg) == gpa


@settings(max_examples=50)
@given(segments(), st.data())
def test_page_index_counts_pages_from_window_start(seg, data):
    bus = data.draw(st.integers(seg.start_bus, seg.end_bus))
    dev, fn = data.draw(devs), data.draw(fns)
    index = seg.page_index(Bdf(seg.segment, bus, dev, fn))
    assert index == ((bus - seg.start_bus) << 8) + (dev << 3) + fn
    assert 0 <= index < seg.size >> 12


# -- ecam_offset / decode_offset --------------------------------------------------------------

@settings(max_examples=200)
@given(buses, devs, fns, regs)
def test_decode_offset_inverts_ecam_offset(bus, dev, fn, reg):
    assert decode_offset(ecam_offset(bus, dev, fn, reg)) == (bus, dev, fn, reg)


@settings(max_examples=200)
@given(st.integers(0, (256 << 20) - 1))
def test_ecam_offset_inverts_decode_offset(offset):
    assert ecam_offset(*decode_offset(offset)) == offset


@pytest.mark.parametrize("offset", [-1, 256 << 20])
def test_decode_offset_rejects_offsets_outside_256_buses(offset):
    with pytest.raises(PciAddressError, match="offset"):
        decode_offset(offset)


# -- out-of-range parts -----------------------------------------------------------------------

OUT_OF_RANGE = [
    ("bus", (256, 0, 0, 0)), ("bus", (-1, 0, 0, 0)),
    ("device", (0, 32, 0, 0)), ("device", (0, -1, 0, 0)),
    ("function", (0, 0, 8, 0)), ("function", (0, 0, -1, 0)),
    ("register", (0, 0, 0, 4096)), ("register", (0, 0, 0, -1)),
]


@pytest.mark.parametrize("name, parts", OUT_OF_RANGE)
def test_ecam_offset_names_the_bad_part(name, parts):
    with pytest.raises(PciAddressError, match=name):
        ecam_offset(*parts)


@pytest.mark.parametrize("name, parts", OUT_OF_RANGE)
def test_segment_gpa_names_the_bad_part(name, parts):
    with pytest.raises(PciAddressError, match=name):
        Segment(BASE).gpa(*parts)


def test_pci_address_error_is_a_value_error():
    assert issubclass(PciAddressError, ValueError)


@pytest.mark.parametrize("bus", [0x0F, 0x20])
def test_gpa_rejects_a_bus_outside_the_segment(bus):
    seg = Segment(BASE, start_bus=0x10, end_bus=0x1F)
    with pytest.raises(PciAddressError, match="bus"):
        seg.gpa(bus, 0, 0)


@pytest.mark.parametrize("offset", [-1, 16 * MiB])
def test_decode_rejects_a_gpa_outside_the_window(offset):
    seg = Segment(BASE, start_bus=0x10, end_bus=0x1F)
    with pytest.raises(PciAddressError, match="gpa"):
        seg.decode(seg.window_start + offset)


def test_decode_rejects_bus_0_page_below_a_window_starting_later():
    """The MCFG base itself is bus 0's page, outside a window that starts at bus 0x10."""
    with pytest.raises(PciAddressError, match="gpa"):
        Segment(BASE, start_bus=0x10).decode(BASE)


@pytest.mark.parametrize("base", [BASE + 4096, BASE + MiB // 2, -MiB])
def test_segment_base_must_be_1mib_aligned(base):
    with pytest.raises(PciAddressError, match="base"):
        Segment(base)


def test_segment_window_must_fit_64_bits():
    with pytest.raises(PciAddressError, match="base"):
        Segment((1 << 64) - 128 * MiB)
    assert Segment((1 << 64) - 256 * MiB).window_end == 1 << 64


def test_segment_end_bus_below_start_bus():
    with pytest.raises(PciAddressError, match="end bus"):
        Segment(BASE, start_bus=5, end_bus=4)


@pytest.mark.parametrize("kw, name", [(dict(start_bus=256), "start bus"), (dict(end_bus=256), "end bus"),
                                      (dict(segment=0x10000), "segment"), (dict(segment=-1), "segment")])
def test_segment_parts_out_of_range(kw, name):
    with pytest.raises(PciAddressError, match=name):
        Segment(BASE, **kw)


# -- Segment.gpas (vectorised) ----------------------------------------------------------------

@settings(max_examples=50)
@given(segments(), st.data())
def test_gpas_equal_scalar_gpa(seg, data):
    n = data.draw(st.integers(0, 20))
    bus = data.draw(st.lists(st.integers(seg.start_bus, seg.end_bus), min_size=n, max_size=n))
    dev = data.draw(st.lists(devs, min_size=n, max_size=n))
    fn = data.draw(st.lists(fns, min_size=n, max_size=n))
    reg = data.draw(st.lists(regs, min_size=n, max_size=n))
    out = seg.gpas(np.array(bus), np.array(dev), np.array(fn), np.array(reg))
    assert out.dtype == np.uint64
    assert out.tolist() == [seg.gpa(*p) for p in zip(bus, dev, fn, reg)]


def test_gpas_broadcasts_scalars():
    seg = Segment(BASE)
    assert seg.gpas(1, np.arange(4), 0).tolist() == [seg.gpa(1, d, 0) for d in range(4)]


def test_gpas_near_the_top_of_64_bits():
    seg = Segment((1 << 64) - 256 * MiB)
    assert int(seg.gpas([255], [31], [7], [4095])[0]) == (1 << 64) - 1


@pytest.mark.parametrize("name, parts", [
    ("bus", ([0x10, 0x20], 0, 0, 0)), ("bus", ([0x0F], 0, 0, 0)), ("device", (0x10, [0, 32], 0, 0)),
    ("function", (0x10, 0, [8], 0)), ("register", (0x10, 0, 0, [0, 4096])), ("register", (0x10, 0, 0, [-1])),
])
def test_gpas_rejects_out_of_range_arrays(name, parts):
    seg = Segment(BASE, start_bus=0x10, end_bus=0x1F)
    with pytest.raises(PciAddressError, match=name):
        seg.gpas(*(np.array(p) for p in parts))


# -- Bdf --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, bdf", [
    ("0000:00:1f.3", Bdf(0, 0, 31, 3)), ("00:1f.3", Bdf(0, 0, 31, 3)),
    ("0001:80:02.7", Bdf(1, 0x80, 2, 7)), ("ffff:FF:1F.0", Bdf(0xFFFF, 255, 31, 0)),
    ("  00:00.0\n", Bdf(0, 0, 0, 0)),
])
def test_bdf_parse(text, bdf):
    assert Bdf.parse(text) == bdf


@pytest.mark.parametrize("text", ["", "00:1f", "00:1f.8", "00:20.0", "000:00:00.0x", "00000:00:00.0",
                                  "100:00.0", "0000:00:00:00.0", "gg:00.0", "00.1f.3"])
def test_bdf_parse_rejects_bad_strings(text):
    with pytest.raises(PciAddressError):
        Bdf.parse(text)


def test_bdf_prints_like_lspci_d():
    assert str(Bdf(0, 0, 31, 3)) == "0000:00:1f.3"
    assert str(Bdf(0x1234, 0xAB, 1, 0)) == "1234:ab:01.0"


@settings(max_examples=100)
@given(st.integers(0, 0xFFFF), buses, devs, fns)
def test_str_bdf_round_trips(segment, bus, dev, fn):
    bdf = Bdf(segment, bus, dev, fn)
    assert Bdf.parse(str(bdf)) == bdf
    assert bdf.devfn == dev << 3 | fn


@pytest.mark.parametrize("parts, name", [((0, 256, 0, 0), "bus"), ((0, 0, 32, 0), "device"),
                                         ((0, 0, 0, 8), "function"), ((0x10000, 0, 0, 0), "segment")])
def test_bdf_checks_its_parts(parts, name):
    with pytest.raises(PciAddressError, match=name):
        Bdf(*parts)


def test_bdfs_sort_by_segment_bus_devfn():
    bdfs = [Bdf(1, 0, 0, 0), Bdf(0, 1, 0, 0), Bdf(0, 0, 1, 0), Bdf(0, 0, 0, 1)]
    assert sorted(bdfs) == bdfs[::-1]
