"""The figures of a comparison (matplotlib, PNG and SVG) for papers: host memory vs fleet
size, modeled time per VM, faults and exits per VM.

Each figure function takes (pyplot, results, rows) and returns its Figure. Conventions: a
series hidden under an identical one is merged with it (one line, its label naming every
strategy); no two legend entries share a colour; a zero is drawn as zero (and labelled),
never as a small bar on a log axis; every axis says whether it is log and what it counts."""

from __future__ import annotations

import math
from pathlib import Path

from .report import format_size, reason


def plot_all(results, rows, out: Path) -> list[Path]:
    """The three figures, as PNG and SVG: memory vs VMs, modeled time, faults and exits."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    for name, draw in (("memory", memory_figure), ("time", time_figure), ("events", events_figure)):
        fig = draw(plt, results, rows)
        for ext in ("png", "svg"):
            path = out / f"{name}.{ext}"
            fig.savefig(path, dpi=130, bbox_inches="tight")
            written.append(path)
        plt.close(fig)
    return written


def palette(n: int) -> list:
    """n distinct colours: tab10, tab20 past ten, then evenly spaced hues."""
    import matplotlib
    if n <= 10:
        return list(matplotlib.colormaps["tab10"].colors[:n])
    if n <= 20:
        return list(matplotlib.colormaps["tab20"].colors[:n])
    return [matplotlib.colormaps["hsv"](i / n) for i in range(n)]


def merge_series(named) -> list[tuple[list, list]]:
    """[(key, values)] -> [([keys], values)]: identical series (one would hide the other)
    become one, in the order they first appear."""
    groups: dict = {}
    for key, values in named:
        groups.setdefault(tuple(values), []).append(key)
    return [(keys, list(values)) for values, keys in groups.items()]


def short_count(v: float) -> str:
    """A per-VM mean for a bar label: 0 exactly, else 3 significant figures or so."""
    if v == 0:
        return "0"
    if v < 10:
        return f"{v:.1f}"
    if v < 10_000:
        return f"{v:,.0f}"
    return f"{v / 1000:.1f}k"


def _size_axis(ax) -> None:
    """A log y axis in bytes, ticks at 1, 4 and 32 B, KiB, MiB, GiB."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator
    ax.set_yscale("log", base=1024)
    ax.yaxis.set_major_locator(LogLocator(base=1024, subs=(1.0, 4.0, 32.0)))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_size(v).replace(".0 ", " ")))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _title_and_legend(fig, title, ax, ncol) -> None:
    """The title, then the legend of `ax`'s series under it, both above the panels (a figure
    legend covers no bar); the panels fill the rest (tight_layout)."""
    height = fig.get_figheight()
    handles, labels = ax.get_legend_handles_labels()
    fig.suptitle(title, y=1 - 0.08 / height, va="top")
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.4 / height), ncol=ncol,
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))


_STYLES = ("-", "--", "-.", ":")
_MARKERS = "osD^v<>ph*"


def memory_figure(plt, results, rows):
    """Two panels over fleet size, log y in bytes: (a) host data memory (the frames:
    memory_curve) and (b) page-table memory (table_curve), one scan (brute-force if run).
    KSM's merged result is a labelled star at the last VM; series at 0 B cannot be drawn on
    a log axis and are named under the panel instead, as are the strategies that failed."""
    label = next((spec.label for spec, _ in results if spec.scan == "brute-force"), results[0][0].label)
    fleets = [f for spec, f in results if spec.label == label and not f.error]
    failed = [f"{f.strategy} ({reason(f.error)})" for spec, f in results if spec.label == label and f.error]
    ksm = [f for f in fleets if f.host["data_bytes_merged"] != f.host["data_bytes"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), layout="constrained", sharex=True)
    panels = ((axes[0], "memory_curve", "(a) host data memory (page frames)", "host data memory"),
              (axes[1], "table_curve", "(b) page-table memory (EPT and shared tables)", "page-table memory"))
    for ax, curve, title, what in panels:
        series = [(", ".join(names), values)
                  for names, values in merge_series((f.strategy, getattr(f, curve)) for f in fleets)]
        extra = ksm if curve == "memory_curve" else []
        colors = palette(len(series) + len(extra))
        zero = []
        for i, ((names, values), color) in enumerate(zip(series, colors)):
            if not any(v > 0 for v in values):
                zero.append(names)
                continue
            n = len(values)
            every = max(n // 8, 1)
            ax.plot(range(1, n + 1), [v if v > 0 else math.nan for v in values], ls=_STYLES[i % 4],
                    color=color, marker=_MARKERS[i % len(_MARKERS)], ms=4, mfc="none",
                    markevery=(i * every // max(len(series), 1) % every, every),
                    label=f"{names}: {format_size(values[-1])}")
        for fleet, color in zip(extra, colors[len(series):]):
            n, merged = fleet.host["vms"], fleet.host["data_bytes_merged"]
            text = (f"{fleet.strategy} after KSM merge ({fleet.host['ksm_merge_seconds'] / 60:.0f} min): "
                    f"{format_size(merged)}")
            ax.plot([n], [merged], "*", ms=11, color=color, mec="black", mew=0.5, ls="none", label=text)
            ax.annotate(text, (n, merged), xytext=(-8, 14), textcoords="offset points", ha="right",
                        fontsize=7, color="black", arrowprops=dict(arrowstyle="-", color=color, lw=0.8))
        notes = []
        if zero:
            notes.append(f"0 B, not drawn on a log axis: {', '.join(zero)}")
        if failed:
            notes.append(f"no result: {', '.join(failed)}")
        _size_axis(ax)
        ax.set(title=title, ylabel=f"{what} (bytes, log scale)",
               xlabel="\n".join(["VMs on the host"] + notes))
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.17 - 0.07 * len(notes)), ncol=1,
                  frameon=False)
    fig.suptitle(f"Host memory for PCI holes vs fleet size, scan: {label}")
    return fig


_TIME_PARTS = (("modeled_ecam_ms_per_vm", "scan: ECAM (the strategy's part)", dict(color="tab:blue")),
               ("modeled_pio_ms_per_vm", "scan: port I/O (conf1)",
                dict(color="tab:orange", hatch="//", edgecolor="saddlebrown", alpha=0.7)),
               ("modeled_setup_ms_per_vm", "setup (fill, memslots)",
                dict(color="tab:green", hatch="..", edgecolor="darkgreen", alpha=0.6)))


def time_figure(plt, results, rows):
    """Modeled ms per VM, a panel per scan, one x scale for all: ECAM + port I/O + setup
    stacked, the total at each bar's end; a failed setup is its error in red."""
    import numpy as np
    scans = list(dict.fromkeys(r["scan"] for r in rows))
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    cols = 2 if len(scans) > 1 else 1
    nrows = -(-len(scans) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(11, 1.4 + 2.4 * nrows), squeeze=False, sharey=True,
                             sharex=True)
    total = lambda r: sum(r[key] for key, _, _ in _TIME_PARTS)   # noqa: E731
    top = max((total(r) for r in rows if not r["error"]), default=0) or 1.0
    y = np.arange(len(strategies))
    for ax, scan in zip(axes.flat, scans):
        by = {r["strategy"]: r for r in rows if r["scan"] == scan}
        left = np.zeros(len(strategies))
        for key, name, style in _TIME_PARTS:
            width = np.array([by[s][key] if s in by and not by[s]["error"] else 0.0 for s in strategies])
            ax.barh(y, width, left=left, label=name, **style)
            left += width
        for i, s in enumerate(strategies):
            if s not in by:
                continue
            if by[s]["error"]:
                ax.text(0.01, i, reason(by[s]["error"]), va="center", fontsize=7, color="red",
                        transform=ax.get_yaxis_transform())
            else:
                ax.text(left[i] + top * 0.01, i, f"{left[i]:.1f}", va="center", fontsize=7)
        ax.set_title(scan)
        ax.set_yticks(y, strategies)
        ax.grid(True, axis="x", alpha=0.3)
    axes.flat[0].set_xlim(0, top * 1.15)
    axes.flat[0].invert_yaxis()          # shared: the first strategy on top in every panel
    for ax in axes[-1]:
        ax.set_xlabel("modeled ms per VM (one scale for all panels)")
        ax.xaxis.set_tick_params(labelbottom=True)
    for ax in list(axes.flat)[len(scans):]:
        ax.axis("off")
    _title_and_legend(fig, "Modeled time per VM: setup + scan (cost model: events x cost)", axes.flat[0],
                      len(_TIME_PARTS))
    return fig


EVENT_KEYS = (("faults_per_vm", "EPT faults"), ("prefaulted_per_vm", "prefaulted"),
              ("mmio_exits_per_vm", "exits to userspace (ECAM)"),
              ("kernel_exits_per_vm", "exits inside KVM (ECAM)"),
              ("pio_exits_per_vm", "exits to port I/O (conf1)"))


def events_figure(plt, results, rows):
    """Faults and exits per VM, a panel per scan (rows), symlog y (linear below 1, so a zero
    is no bar); every bar is labelled with its value, a failed setup with its error."""
    import numpy as np
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    scans = list(dict.fromkeys(r["scan"] for r in rows))
    fig, axes = plt.subplots(len(scans), 1, figsize=(11, 0.8 + 2.9 * len(scans)), squeeze=False,
                             sharex=True, sharey=True)
    axes = axes[:, 0]
    x = np.arange(len(strategies))
    width = 0.8 / len(EVENT_KEYS)
    colors = palette(len(EVENT_KEYS))
    top = max((r[key] for r in rows if not r["error"] for key, _ in EVENT_KEYS), default=1) or 1
    for ax, scan in zip(axes, scans):
        by = {r["strategy"]: r for r in rows if r["scan"] == scan}
        for i, ((key, name), color) in enumerate(zip(EVENT_KEYS, colors)):
            ok = [s for s in strategies if s in by and not by[s]["error"]]
            values = [by[s][key] for s in ok]
            xs = [x[strategies.index(s)] + (i - (len(EVENT_KEYS) - 1) / 2) * width for s in ok]
            bars = ax.bar(xs, values, width, label=name, color=color)
            ax.bar_label(bars, [short_count(v) for v in values], rotation=90, fontsize=5.5, padding=1.5)
        for j, s in enumerate(strategies):
            if s in by and by[s]["error"]:
                ax.text(x[j], 0.5, reason(by[s]["error"]), rotation=90, ha="center", va="bottom",
                        fontsize=7, color="red")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(0, top * 8)
        ax.set_title(scan, fontsize=10)
        ax.set_ylabel("per VM (symlog:\nlinear below 1)")
        ax.grid(True, axis="y", alpha=0.3)
    axes[-1].set_xticks(x, strategies, rotation=30, ha="right")
    _title_and_legend(fig, "Faults and exits per VM, by scan (a 0 is no bar, labelled 0)", axes[0],
                      len(EVENT_KEYS))
    return fig
