"""The cost model: documented defaults, overrides from TOML, modeled time, ksmd's merge time."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from allones.experiments.costmodel import EVENTS, SOURCES, CostModel

FIELDS = [f.name for f in dataclasses.fields(CostModel)]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "costs.toml"


def test_defaults_are_positive_and_ordered_sensibly():
    c = CostModel.default()
    assert all(getattr(c, name) > 0 for name in FIELDS)
    assert c.exit_to_userspace_ns > c.exit_in_kernel_ns > c.tlb_hit_access_ns
    assert c.ept_violation_map_ns > c.prefault_entry_ns > c.tlb_hit_access_ns
    assert c.memslot_update_ns > c.exit_to_userspace_ns      # an ioctl that synchronizes SRCU
    assert isinstance(c.ksm_pages_to_scan, int) and (c.ksm_pages_to_scan, c.ksm_sleep_ms) == (100, 20.0)


def test_every_field_has_a_source_and_every_event_a_field():
    assert set(SOURCES) == set(FIELDS)
    assert all(SOURCES[name].strip() for name in FIELDS)
    assert set(EVENTS.values()) <= set(FIELDS)


def test_describe_mentions_every_field_with_its_value():
    text = CostModel.default().with_overrides(exit_to_userspace_ns=12345).describe()
    for name in FIELDS:
        assert name in text
    assert "12,345 ns" in text and "[" not in text       # rich would read brackets as markup
    assert text.count("OVERRIDDEN") == 1 and "default 6,000 ns" in text
    assert "OVERRIDDEN" not in CostModel.default().describe()


def test_toml_override_round_trip(tmp_path):
    path = tmp_path / "costs.toml"
    path.write_text("[costs]\nexit_to_userspace_ns = 10000\nksm_pages_to_scan = 1000\n"
                    "tlb_hit_access_ns = 2.5\n")
    c = CostModel.from_toml(path)
    assert c == CostModel.default().with_overrides(exit_to_userspace_ns=10000.0,
                                                   ksm_pages_to_scan=1000, tlb_hit_access_ns=2.5)
    assert c.exit_in_kernel_ns == CostModel.default().exit_in_kernel_ns     # the rest: defaults
    # and back: every constant written out reads back the same model
    path.write_text("[costs]\n" + "".join(f"{k} = {v!r}\n" for k, v in c.as_dict().items()))
    assert CostModel.from_toml(path) == c


def test_example_override_file_loads():
    c = CostModel.from_toml(EXAMPLE)
    assert c != CostModel.default()
    assert c.exit_to_userspace_ns > c.exit_in_kernel_ns


@pytest.mark.parametrize("text, match", [
    ("[costs]\nexit_to_user_ns = 1\n", r"unknown cost 'exit_to_user_ns'; allowed: exit_to_userspace_ns"),
    ("[costs]\npage_fill_ns = -1\n", r"page_fill_ns: -1 is negative"),
    ("[costs]\npage_fill_ns = 'fast'\n", r"page_fill_ns: 'fast' is not a number"),
    ("[costs]\nksm_pages_to_scan = 0\n", r"ksm_pages_to_scan: 0 is not a whole number"),
    ("[costs]\nksm_pages_to_scan = 1.5\n", r"ksm_pages_to_scan: 1.5 is not a whole number"),
    ("[cost]\npage_fill_ns = 1\n", r"unknown top-level key\(s\) 'cost'"),
    ("title = 'x'\n", r"unknown top-level key\(s\) 'title'"),
    ("", r"no \[costs\] table"),
])
def test_toml_errors_name_the_problem(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        CostModel.from_toml(path)


@pytest.mark.parametrize("overrides, match", [
    ({"nope_ns": 1}, "unknown cost 'nope_ns'"),
    ({"exit_in_kernel_ns": -0.5}, "negative"),
    ({"exit_in_kernel_ns": "1"}, "not a number"),
    ({"exit_in_kernel_ns": True}, "not a number"),
    ({"exit_in_kernel_ns": float("inf")}, "not finite"),
])
def test_with_overrides_checks_as_toml_does(overrides, match):
    with pytest.raises(ValueError, match=match):
        CostModel.default().with_overrides(**overrides)


def test_direct_construction_is_checked_too():
    with pytest.raises(ValueError, match="memslot_update_ns"):
        CostModel(memslot_update_ns=-1)


def test_with_overrides_leaves_the_original_alone():
    c = CostModel.default()
    d = c.with_overrides(page_fill_ns=0)
    assert d.page_fill_ns == 0.0 and c.page_fill_ns == CostModel().page_fill_ns


def test_as_dict_has_every_field_as_plain_numbers():
    d = CostModel.default().as_dict()
    assert list(d) == FIELDS
    assert all(type(v) in (int, float) for v in d.values())


def test_modeled_ns_is_counts_times_costs():
    c = CostModel.default().with_overrides(
        exit_to_userspace_ns=6000, exit_in_kernel_ns=1000, ept_violation_map_ns=1500,
        prefault_entry_ns=100, tlb_hit_access_ns=10, page_fill_ns=1500, memslot_update_ns=20000)
    events = dict(userspace_exits=2, kernel_exits=3, ept_faults=4, prefaulted=5, tlb_hits=6,
                  pages_filled=7, memslot_updates=8)
    # 2*6000 + 3*1000 + 4*1500 + 5*100 + 6*10 + 7*1500 + 8*20000
    assert c.modeled_ns(events) == 12000 + 3000 + 6000 + 500 + 60 + 10500 + 160000 == 192060


def test_modeled_ns_of_the_readme_scan():
    # One ECAM segment brute-forced (65,536 hole pages) under mmio, pci-hole and allones whole-slot.
    c = CostModel.default()
    assert c.modeled_ns({"userspace_exits": 65536}) == 65536 * 6000
    assert c.modeled_ns({"kernel_exits": 65536}) == 65536 * 1000
    assert c.modeled_ns({"ept_faults": 1, "prefaulted": 65535}) == 1500 + 65535 * 100


def test_missing_events_count_zero_and_numpy_counts_work():
    c = CostModel.default()
    assert c.modeled_ns({}) == 0.0
    assert c.modeled_ns({"tlb_hits": np.uint64(3)}) == 3 * c.tlb_hit_access_ns


def test_breakdown_sums_to_modeled_ns_and_names_every_event():
    c = CostModel.default()
    events = dict(userspace_exits=7, ept_faults=11, prefaulted=13, tlb_hits=1000, memslot_updates=8)
    parts = c.breakdown(events)
    assert list(parts) == list(EVENTS)
    assert parts["kernel_exits"] == 0.0 and parts["ept_faults"] == 11 * c.ept_violation_map_ns
    assert sum(parts.values()) == pytest.approx(c.modeled_ns(events))


@pytest.mark.parametrize("events, match", [
    ({"user_exits": 1}, "unknown event"),
    ({"tlb_hits": -1}, "'tlb_hits': count -1"),
    ({"tlb_hits": "3"}, "'tlb_hits': count '3'"),
])
def test_bad_events_are_refused(events, match):
    with pytest.raises(ValueError, match=match):
        CostModel.default().modeled_ns(events)
    with pytest.raises(ValueError, match=match):
        CostModel.default().breakdown(events)


def test_ksm_merge_seconds_is_two_full_scans_at_ksmds_rate():
    c = CostModel.default()
    # 65,524 hole pages (the q35 default): 655.24 batches of 100, 20 ms each, twice.
    assert c.ksm_scan_seconds(65524) == pytest.approx(655.24 * 0.020)
    assert c.ksm_merge_seconds(65524) == pytest.approx(2 * 655.24 * 0.020) == pytest.approx(26.2096)
    assert c.ksm_merge_seconds(0) == 0.0
    faster = c.with_overrides(ksm_pages_to_scan=1000, ksm_sleep_ms=10)
    assert faster.ksm_merge_seconds(65524) == pytest.approx(2 * 65.524 * 0.010)


@pytest.mark.parametrize("pages", [-1, 1.5, "10"])
def test_ksm_merge_seconds_refuses_bad_page_counts(pages):
    with pytest.raises(ValueError, match="pages"):
        CostModel.default().ksm_merge_seconds(pages)
