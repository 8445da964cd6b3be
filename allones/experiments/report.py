"""Reports of a comparison: a summary row per fleet, tables for people (rich), CSV and JSON
for programs, and plots (matplotlib, PNG and SVG) for papers."""

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


def _reason(error: str) -> str:
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
                      "I/O (conf1, two per access); ms: modeled per VM", caption_justify="left")
        for col in TABLE_COLUMNS:
            table.add_column(col, justify="left" if col == "strategy" else "right", no_wrap=True)
        for r in group:
            if r["error"]:
                table.add_row(r["strategy"], f"[red]{_reason(r['error'])}[/red]", *[""] * 9)
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


def plot_all(results, rows, out: Path) -> list[Path]:
    """The three figures, as PNG and SVG: memory vs VMs, modeled time, faults and exits."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    for name, draw in (("memory", _memory), ("time", _time), ("events", _events)):
        fig = draw(plt, results, rows)
        for ext in ("png", "svg"):
            path = out / f"{name}.{ext}"
            fig.savefig(path, dpi=130, bbox_inches="tight")
            written.append(path)
        plt.close(fig)
    return written


def _memory(plt, results, rows):
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    label = next((spec.label for spec, _ in results if spec.scan == "brute-force"), results[0][0].label)
    styles = ["-", "--", "-.", ":"]
    for i, (spec, fleet) in enumerate(r for r in results if r[0].label == label and not r[1].error):
        xs = range(1, len(fleet.memory_curve) + 1)
        total = [(d + t) / MIB for d, t in zip(fleet.memory_curve, fleet.table_curve)]
        ax.plot(xs, total, ls=styles[i % 4], marker="o"[: i % 2], ms=3, label=fleet.strategy)
        if fleet.host["data_bytes_merged"] != fleet.host["data_bytes"]:
            merged = fleet.host["data_bytes_merged"] + fleet.table_curve[-1]
            ax.plot([xs[-1]], [merged / MIB], "v", c="grey", label=f"{fleet.strategy}, once KSM merged")
    ax.set(xlabel="VMs on the host", ylabel="host memory: data + page tables (MiB, log)", yscale="log",
           title=f"Host memory for PCI holes vs fleet size ({label})")
    ax.legend(fontsize=7, ncol=2)
    return fig


def _time(plt, results, rows):
    import numpy as np
    scans = list(dict.fromkeys(r["scan"] for r in rows))
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    cols = 2 if len(scans) > 1 else 1
    fig, axes = plt.subplots(-(-len(scans) // cols), cols, figsize=(11, 2.2 + 2.1 * len(scans) / cols),
                             squeeze=False, sharey=True)
    y = np.arange(len(strategies))
    for ax, scan in zip(axes.flat, scans):
        by = {r["strategy"]: r for r in rows if r["scan"] == scan}
        ecam = [by[s]["modeled_ecam_ms_per_vm"] if not by[s]["error"] else 0 for s in strategies]
        pio = [by[s]["modeled_pio_ms_per_vm"] if not by[s]["error"] else 0 for s in strategies]
        ax.barh(y, ecam, color="tab:blue", label="ECAM (the strategy's part)")
        ax.barh(y, pio, left=ecam, color="tab:orange", hatch="//", alpha=0.6, label="port I/O (conf1)")
        for i, s in enumerate(strategies):
            if by[s]["error"]:
                ax.text(0.01, i, _reason(by[s]["error"]), va="center", fontsize=7, color="red",
                        transform=ax.get_yaxis_transform())
        ax.set(title=scan, xlabel="modeled ms per VM")
        ax.set_yticks(y, strategies)
    axes.flat[0].invert_yaxis()          # shared: the first strategy on top in every panel
    for ax in list(axes.flat)[len(scans):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Modeled scan time per VM (cost model: events x cost)")
    fig.tight_layout()
    return fig


def _events(plt, results, rows):
    import numpy as np
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    labels = list(dict.fromkeys(r["scan"] for r in rows))     # a capture alone: its own
    label = "linux-boot (MMCONFIG)" if "linux-boot (MMCONFIG)" in labels else labels[0]
    by = {r["strategy"]: r for r in rows if r["scan"] == label and not r["error"]}
    fig, ax = plt.subplots(figsize=(8, 4))
    keys = (("faults_per_vm", "EPT faults"), ("prefaulted_per_vm", "prefaulted"),
            ("mmio_exits_per_vm", "exits to userspace"), ("kernel_exits_per_vm", "in-kernel exits"))
    x = np.arange(len(strategies))
    for i, (key, name) in enumerate(keys):
        ax.bar(x + i * 0.2, [max(by[s][key], 0.5) if s in by else 0 for s in strategies], 0.2, label=name)
    ax.set_xticks(x + 0.3, strategies, rotation=30, ha="right")
    ax.set(ylabel="per VM (log)", yscale="log", title=f"Faults and exits per VM ({label})")
    ax.legend(fontsize=7)
    return fig
