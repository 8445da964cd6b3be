"""Reports of a comparison: a summary row per fleet, tables for people (rich), CSV and JSON
for programs (the figures are allones.experiments.figures)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .. import __version__

MIB = 1 << 20


def summary_rows(results) -> list[dict]:
    """One row per fleet: host totals and per-VM means (counts) of its scan."""
    rows = []
    for spec, fleet in results:
        row = dict(scan=spec.label, strategy=fleet.strategy, mechanism=fleet.mechanism,
                   error=fleet.error or "")
        if fleet.error is None:
            h, n = fleet.host, fleet.host["vms"]
            row.update(vms=n, materialized=h["materialized"], data_bytes=h["data_bytes"],
                       data_bytes_merged=h["data_bytes_merged"], ksm_merge_seconds=h["ksm_merge_seconds"],
                       table_bytes=h["table_bytes"], memslots_per_vm=h["memslots"] / n)
            for key in ("faults", "prefaulted", "mmio_exits", "kernel_exits", "pio_exits", "tlb_hits",
                        "pages_filled"):
                row[f"{key}_per_vm"] = h[key] / n
            for key in ("modeled_scan_ns", "modeled_ecam_ns", "modeled_pio_ns", "modeled_setup_ns"):
                row[key.replace("_ns", "_ms_per_vm")] = h[key] / n / 1e6
            row.update(hole_mismatches=h["hole_mismatches"], wall_seconds=h["wall_seconds"])
        rows.append(row)
    return rows


def format_size(n: float) -> str:
    """Bytes for people: B, KiB, MiB, GiB."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", MIB), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _count(n: float) -> str:
    return f"{n / 1000:.1f}k" if n >= 10_000 else f"{n:,.0f}"


def reason(error: str) -> str:
    """A failure, short: what the real setup would return."""
    if "max_map_count" in error:
        return "ENOMEM: max_map_count"
    return "fails: " + error.split(":")[0][:30]


TABLE_COLUMNS = ("strategy", "host data", "tables", "faults", "prefault", "exit user",
                 "exit KVM", "exit PIO", "ECAM ms", "PIO ms", "setup ms")
CELL_EXTRA = 3       # a rich cell's padding (1 + 1) and its left border
#: the tables' column groups (indices in TABLE_COLUMNS), merged while they fit the width
COLUMN_GROUPS = (("host memory", (1, 2)), ("events per VM", (3, 4, 5, 6, 7)),
                 ("modeled ms per VM", (8, 9, 10)))


def table_cells(r) -> list[str]:
    """A summary row as TABLE_COLUMNS' texts (an error: its reason, then blanks)."""
    if r["error"]:
        return [r["strategy"], reason(r["error"])] + [""] * (len(TABLE_COLUMNS) - 2)
    data = format_size(r["data_bytes"])
    if r["data_bytes_merged"] != r["data_bytes"]:
        data += f" → {format_size(r['data_bytes_merged'])}"
    return [r["strategy"], data, format_size(r["table_bytes"]), _count(r["faults_per_vm"]),
            _count(r["prefaulted_per_vm"]), _count(r["mmio_exits_per_vm"]), _count(r["kernel_exits_per_vm"]),
            _count(r["pio_exits_per_vm"]), f"{r['modeled_ecam_ms_per_vm']:.2f}",
            f"{r['modeled_pio_ms_per_vm']:.2f}", f"{r['modeled_setup_ms_per_vm']:.1f}"]


def column_widths(cells: list[list[str]]) -> list[int]:
    """Each TABLE_COLUMNS column's width in a rich table: its widest cell or header, padded."""
    return [max(len(c[i]) for c in cells + [list(TABLE_COLUMNS)]) + CELL_EXTRA for i in range(len(TABLE_COLUMNS))]


def column_groups(cells: list[list[str]], width: int | None) -> list[tuple[str, list[int]]]:
    """Tables that fit `width` terminal columns: (title, TABLE_COLUMNS' indices) each led by
    the strategy, COLUMN_GROUPS merged while they fit (a cell is never cut: a group too wide
    stands alone, and the terminal wraps it); None: one table of every column."""
    need = column_widths(cells)
    tables = []
    for title, columns in COLUMN_GROUPS:
        if tables and (width is None or sum(need[i] for i in tables[-1][1] + list(columns)) + 1 <= width):
            tables[-1] = (f"{tables[-1][0]}; {title}", tables[-1][1] + list(columns))
        else:
            tables.append((title, [0, *columns]))
    return tables


def print_tables(rows, costs_text: str, console=None, wide: bool = False) -> None:
    """Per scan, strategies as rows (counts and modeled ms are per VM, memory for the whole
    host), in tables split by column groups to fit a terminal (never a number cut); `wide`,
    or output that is not a terminal: one table as wide as it needs. Then the cost constants."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
    console = console or Console()
    fit = console.is_terminal and not wide
    for label in dict.fromkeys(r["scan"] for r in rows):
        group = [r for r in rows if r["scan"] == label]
        vms = next((r["vms"] for r in group if not r["error"]), 0)
        cells = [table_cells(r) for r in group]
        tables = column_groups(cells, console.width if fit else None)
        if not fit:          # a file or pipe: as wide as the table, so that nothing wraps
            console.width = max(console.width, sum(column_widths(cells)) + 1)   # + the right border
        console.print(Text(f"{label}, {vms} VMs", style="bold"))
        for title, columns in tables:
            table = Table(title=title, title_justify="left")
            for i in columns:
                table.add_column(TABLE_COLUMNS[i], justify="left" if i == 0 else "right", no_wrap=True)
            for r, c in zip(group, cells):
                table.add_row(*(Text(c[i], style="red" if r["error"] and i == 1 else "") for i in columns))
            console.print(table)
        console.print(_caption(group), highlight=False)
        console.print()
        console.file.flush()        # a pipe gets each scan's tables as they are printed
    console.print("Modeled time = events x cost; a strategy changes only the ECAM part (port I/O "
                  "config cycles exit to userspace whatever backs the window). Constants:")
    console.print(costs_text, highlight=False)


def _caption(group) -> str:
    """What the columns mean, and why some values look odd."""
    text = ("exits: to userspace (ECAM), inside KVM, port I/O (conf1, two per access); ms: modeled "
            "per VM. host data 4.0 KiB: the all-ones page an RFC kernel allocates at start (a v2 "
            "kernel, pci-hole, has none)")
    for r in group:
        if not r["error"] and r["data_bytes_merged"] != r["data_bytes"]:
            text += (f"; {r['strategy']} →: once KSM merged it, after {r['ksm_merge_seconds'] / 60:.0f} min "
                     f"(the merged page and that one)")
    return text


def write_csv(rows, path) -> None:
    """The summary rows as CSV (one per fleet)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)


def write_vm_csv(results, path) -> None:
    """Every VM's row of every fleet as CSV (a tidy table)."""
    rows = [dict(label=spec.label, **row) for spec, fleet in results for row in fleet.rows]
    write_csv(rows, path)


def write_json(results, rows, params: dict, path) -> None:
    """Everything: parameters, the cost constants, summaries, per-VM rows, memory curves."""
    doc = dict(allones_version=__version__, params=params,
               costs=results[0][1].costs if results else {}, summary=rows,
               fleets=[dict(scan=spec.label, strategy=f.strategy, mechanism=f.mechanism, error=f.error,
                            host=f.host, memory_curve=f.memory_curve, table_curve=f.table_curve,
                            vms=f.rows) for spec, f in results])
    Path(path).write_text(json.dumps(doc, indent=1, default=str))
