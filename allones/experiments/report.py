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


def print_tables(rows, costs_text: str, console=None) -> None:
    """One rich table per scan: strategies as rows (counts and modeled ms are per VM, memory
    for the whole host); then the cost constants used."""
    from rich.console import Console
    from rich.table import Table
    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)
    for label in dict.fromkeys(r["scan"] for r in rows):
        group = [r for r in rows if r["scan"] == label]
        vms = next((r["vms"] for r in group if not r["error"]), 0)
        table = Table(title=f"{label}, {vms} VMs: host memory; per-VM events and modeled time",
                      title_justify="left", caption="exits: to userspace (ECAM), inside KVM, port "
                      "I/O (conf1, two per access); ms: modeled per VM. host data: 4.0 KiB is the "
                      "all-ones page an RFC kernel allocates at start (a v2 kernel, pci-hole, has "
                      "none); KSM: → the merged page and that one", caption_justify="left")
        for col in TABLE_COLUMNS:
            table.add_column(col, justify="left" if col == "strategy" else "right", no_wrap=True)
        for r in group:
            if r["error"]:
                table.add_row(r["strategy"], f"[red]{reason(r['error'])}[/red]", *[""] * 9)
                continue
            data = format_size(r["data_bytes"])
            if r["data_bytes_merged"] != r["data_bytes"]:
                data += f" → {format_size(r['data_bytes_merged'])} in {r['ksm_merge_seconds'] / 60:.0f} min"
            table.add_row(r["strategy"], data, format_size(r["table_bytes"]), _count(r["faults_per_vm"]),
                          _count(r["prefaulted_per_vm"]), _count(r["mmio_exits_per_vm"]),
                          _count(r["kernel_exits_per_vm"]), _count(r["pio_exits_per_vm"]),
                          f"{r['modeled_ecam_ms_per_vm']:.2f}", f"{r['modeled_pio_ms_per_vm']:.2f}",
                          f"{r['modeled_setup_ms_per_vm']:.1f}")
        console.print(table)
    console.print("Modeled time = events x cost; a strategy changes only the ECAM part (port I/O "
                  "config cycles exit to userspace whatever backs the window). Constants:")
    console.print(costs_text, highlight=False)


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
