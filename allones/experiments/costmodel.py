"""The cost model: what one event of each kind costs, in nanoseconds, and modeled time.

Owns the per-event constants (an exit to userspace, an exit handled inside KVM, an EPT
violation that maps a page, one more SPTE while prefaulting, a guest load that needs no exit,
filling a page with 0xff in the VMM, a memslot update, and ksmd's scan rate), where each comes
from (`SOURCES`, derivations in docs/costmodel.md), how to override them (`[costs]` in a TOML
file, or `with_overrides`), and the arithmetic: modeled time = sum of count x cost.

Leaves out: counting the events (VM.run's counters, `fleet.scan_events`), and any claim that
the sum is a measurement. It is a first-order model of one vCPU on a modern x86 server with
VMX/EPT and the usual speculative-execution mitigations; costs do not overlap or contend.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["CostModel", "EVENTS", "SOURCES"]

#: Event kind -> the CostModel field that prices it (the keys `modeled_ns` accepts).
EVENTS: dict[str, str] = {
    "userspace_exits": "exit_to_userspace_ns",
    "kernel_exits": "exit_in_kernel_ns",
    "ept_faults": "ept_violation_map_ns",
    "prefaulted": "prefault_entry_ns",
    "tlb_hits": "tlb_hit_access_ns",
    "pages_filled": "page_fill_ns",
    "memslot_updates": "memslot_update_ns",
}

#: Field -> one-line citation (full quotes and arithmetic: docs/costmodel.md). No square
#: brackets: reports print these through rich, which would read them as markup.
SOURCES: dict[str, str] = {
    "exit_to_userspace_ns":
        "Kuznetsov, KVM_MEM_PCI_HOLE v2 cover letter, kvm list 2020-08-07: userspace exit 0.000006 s",
    "exit_in_kernel_ns":
        "Kuznetsov, same letter: exit handled in KVM 0.000001 s (outl_to_kernel ~2,008 cycles, 2022)",
    "ept_violation_map_ns":
        "estimate: in-kernel exit 1 us (Kuznetsov 2020) + TDP MMU map of a resident page ~0.5 us",
    "prefault_entry_ns":
        "estimate: 3 x 34 ns/SPTE of a TDP MMU memslot walk (dirty_log_perf_test, K. Zhu, 2021-04)",
    "tlb_hit_access_ns":
        "estimate: cache-hot load, between L2 4 ns and DRAM 100 ns (C. Scott's latency numbers ~2020)",
    "page_fill_ns":
        "2 x 446 ns (4 KiB at 9.19 GB/s, Ice Lake-X, A. Arora 2023) + ~0.6 us fault; measured 1.5 us",
    "memslot_update_ns":
        "Szmigiero, memslot_perf_test, Xeon 8167M, 2021-02-03: 16.2 us per create, 40.8 per move",
    "ksm_pages_to_scan":
        "mm/ksm.c ksm_thread_pages_to_scan = 100 (admin-guide/mm/ksm.rst: Default: 100)",
    "ksm_sleep_ms":
        "mm/ksm.c ksm_thread_sleep_millisecs = 20 (admin-guide/mm/ksm.rst: Default: 20)",
}


@dataclass(frozen=True)
class CostModel:
    """Per-event costs in nanoseconds (KSM: pages per batch and milliseconds between batches).

    Every field is checked at construction: a number, finite, not negative (and
    `ksm_pages_to_scan` a whole number of at least 1); ValueError names the field otherwise.
    """

    # One guest access that exits to the VMM and back: VM exit, KVM hands KVM_EXIT_MMIO (or
    # KVM_EXIT_IO) to userspace, ioctl(KVM_RUN) returns, the VMM answers, KVM_RUN re-enters.
    exit_to_userspace_ns: float = 6000.0
    # One exit handled inside KVM: the KVM_MEM_PCI_HOLE (v2) read, emulated and answered
    # with all-ones without leaving the kernel; also the cost of an in-kernel PIO exit.
    exit_in_kernel_ns: float = 1000.0
    # One EPT violation that maps a 4 KiB page whose host frame already exists (the shared
    # all-ones page, or VMM memory already filled): exit, memslot lookup, pfn, SPTE, re-entry.
    ept_violation_map_ns: float = 1500.0
    # One more leaf SPTE installed while prefaulting (whole-slot loop or
    # KVM_PRE_FAULT_MEMORY): no exit, MMU lock already held, table pages mostly present.
    prefault_entry_ns: float = 100.0
    # One guest load that needs no exit (translation present; the data is cache-hot).
    tlb_hit_access_ns: float = 10.0
    # The VMM filling one 4 KiB page with 0xff: first-touch anonymous fault (which zeroes the
    # page) plus memset(0xff).
    page_fill_ns: float = 1500.0
    # One KVM_SET_USER_MEMORY_REGION (a create, as the VMM does per hole slot).
    memslot_update_ns: float = 20000.0
    # ksmd: pages scanned per batch (/sys/kernel/mm/ksm/pages_to_scan).
    ksm_pages_to_scan: int = 100
    # ksmd: milliseconds slept between batches (/sys/kernel/mm/ksm/sleep_millisecs).
    ksm_sleep_ms: float = 20.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _checked(f.name, getattr(self, f.name)))

    @classmethod
    def default(cls) -> CostModel:
        """The documented defaults (docs/costmodel.md)."""
        return cls()

    @classmethod
    def from_toml(cls, path) -> CostModel:
        """The defaults with the `[costs]` table of a TOML file applied.

        Raises ValueError for a file without a `[costs]` table, other top-level keys, an
        unknown key in `[costs]` (naming it and the allowed ones) or a bad value; OSError if
        the file cannot be read; tomllib.TOMLDecodeError (a ValueError) naming the file for bad
        TOML (or bytes that are not UTF-8).
        """
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path must be a str or Path, not {type(path).__name__}")
        if not str(path):
            raise ValueError("path is empty: name a TOML file with a [costs] table")
        with Path(path).open("rb") as f:
            try:
                data = tomllib.load(f)
            except tomllib.TOMLDecodeError as exc:
                raise tomllib.TOMLDecodeError(f"{path}: invalid TOML: {exc}") from None
            except UnicodeDecodeError as exc:
                raise tomllib.TOMLDecodeError(f"{path}: invalid TOML: not UTF-8 text ({exc.reason} "
                                              f"at byte {exc.start})") from None
        extra = sorted(set(data) - {"costs"})
        if extra:
            raise ValueError(f"{path}: unknown top-level key(s) {', '.join(map(repr, extra))}; "
                             f"only a [costs] table is read")
        if not isinstance(data.get("costs"), dict):
            raise ValueError(f"{path}: no [costs] table")
        try:
            return cls.default().with_overrides(**data["costs"])
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def with_overrides(self, **overrides) -> CostModel:
        """A copy with some constants replaced. Raises ValueError as `from_toml` does."""
        allowed = [f.name for f in dataclasses.fields(self)]
        for key in overrides:
            if key not in allowed:
                raise ValueError(f"unknown cost {key!r}; allowed: {', '.join(allowed)}")
        return dataclasses.replace(self, **overrides)

    def as_dict(self) -> dict:
        """Every constant by field name (plain floats and ints, JSON-ready)."""
        return dataclasses.asdict(self)

    def breakdown(self, events: dict) -> dict[str, float]:
        """Modeled ns per event kind of `events` (every kind of EVENTS, 0 where absent).

        events: counts keyed by EVENTS' names; a missing key counts 0. Raises ValueError for
        an unknown key or a count that is not a non-negative number.
        """
        if not isinstance(events, Mapping):
            raise TypeError(f"events must be a mapping of event kind to count, not {type(events).__name__}")
        unknown = sorted(set(events) - set(EVENTS), key=repr)
        if unknown:
            raise ValueError(f"unknown event(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(EVENTS)}")
        out = {}
        for kind, field in EVENTS.items():
            count = events.get(kind, 0)
            if (isinstance(count, bool) or not isinstance(count, numbers.Real)
                    or not _finite(count) or count < 0):
                raise ValueError(f"event {kind!r}: count {count!r} is not a non-negative number")
            out[kind] = float(count) * getattr(self, field)
        return out

    def modeled_ns(self, events: dict) -> float:
        """Modeled time in ns: the sum over event kinds of count x cost (see `breakdown`)."""
        return sum(self.breakdown(events).values())

    def ksm_scan_seconds(self, pages: int) -> float:
        """Seconds for ksmd to scan `pages` pages once: pages / pages_to_scan batches, each
        followed by sleep_ms. The scanning itself is not counted (100 checksums take far less
        than the 20 ms sleep). Raises ValueError for a negative or non-integer count."""
        pages = _page_count(pages)
        return pages / self.ksm_pages_to_scan * self.ksm_sleep_ms / 1000.0

    def ksm_merge_seconds(self, pages: int) -> float:
        """Seconds until ksmd has merged `pages` identical pages: two full scans.

        KSM inserts a page into its unstable tree only if its checksum has not changed since
        the previous full scan (mm/ksm.c, "DOC: Overview", technique 2), so the first pass
        only records checksums; on the second the first 0xff page enters the unstable tree
        and the rest merge with it (then with its stable-tree node). 65,524 pages at the
        defaults: 2 x 655.24 batches x 20 ms = 26.2 s.
        """
        return 2.0 * self.ksm_scan_seconds(pages)

    def describe(self) -> str:
        """A short table of every constant, its value and its source (reports print it)."""
        width = max(len(f.name) for f in dataclasses.fields(self))
        lines = ["Cost model (docs/costmodel.md; override with --costs FILE.toml, a costs table):"]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            source = SOURCES[f.name]
            if value != f.default:
                source = f"OVERRIDDEN (default {_shown(f.name, f.default)}: {source})"
            lines.append(f"  {f.name:<{width}}  {_shown(f.name, value):>12}  {source}")
        return "\n".join(lines)


def _shown(name: str, value) -> str:
    """A constant with its unit, as describe() prints it."""
    if name == "ksm_pages_to_scan":
        return f"{value:,} pages"
    if name == "ksm_sleep_ms":
        return f"{value:g} ms"
    return f"{value:,.0f} ns" if value == round(value) else f"{value:,} ns"


def _checked(name: str, value):
    """The field's value, coerced (float, or int for ksm_pages_to_scan); ValueError if bad."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: {value!r} is not a number")
    try:
        finite = math.isfinite(value)
    except OverflowError:        # an int past a float's range
        finite = False
    if not finite:
        raise ValueError(f"{name}: {value!r} is not finite")
    if value < 0:
        raise ValueError(f"{name}: {value!r} is negative")
    if name == "ksm_pages_to_scan":
        if value != int(value) or value < 1:
            raise ValueError(f"{name}: {value!r} is not a whole number of pages >= 1")
        return int(value)
    return float(value)


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:        # an int past a float's range
        return False


def _page_count(pages) -> int:
    if isinstance(pages, bool) or not isinstance(pages, numbers.Integral) or pages < 0:
        raise ValueError(f"pages: {pages!r} is not a non-negative whole number")
    return int(pages)
