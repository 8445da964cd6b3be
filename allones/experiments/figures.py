"""The figures of a comparison (matplotlib, PNG and SVG) for papers: host memory vs fleet
size, modeled time per VM, faults and exits per VM."""

from __future__ import annotations

from pathlib import Path

from .report import MIB, reason


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
                ax.text(0.01, i, reason(by[s]["error"]), va="center", fontsize=7, color="red",
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
