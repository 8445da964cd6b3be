"""The sweep's outputs: the tidy results (CSV, Parquet when available), Markdown and LaTeX
tables, figures and the manifest that makes a sweep reproducible."""

from __future__ import annotations

import csv
import json
import platform
from pathlib import Path


from .. import __version__
from .costmodel import CostModel
from .report import MIB, format_size

#: the columns that are measured (wall time), not computed from the config and seed
from .sweep_config import TIMING_COLUMNS, PARAM_COLUMNS, SweepConfig


def write_outputs(rows, cells, config: SweepConfig, out: Path, missing=()) -> list[Path]:
    """results.csv (+ .parquet), .md, .tex, the figures and manifest.json; the paths."""
    out = Path(out)
    files = [out / "results.csv"]
    columns = _columns(rows)
    with open(files[0], "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    if rows and _write_parquet(rows, columns, out / "results.parquet"):
        files.append(out / "results.parquet")
    files.append(out / "results.md")
    files[-1].write_text(markdown_table(rows))
    files.append(out / "results.tex")
    files[-1].write_text(latex_table(rows))
    files += plot_sweep(rows, out)
    files.append(out / "config.toml")
    files.append(out / "manifest.json")
    costs = {name: CostModel.default().with_overrides(**dict(o)).as_dict() for name, o in config.costs}
    manifest = dict(allones_version=__version__, python=platform.python_version(), seed=config.seed,
                    config="config.toml", costs=costs, timing_columns=list(TIMING_COLUMNS),
                    cells=[dict(key=c.key, strategy=c.strategy, scan=c.scan.label, vms=c.vms,
                                topology=c.topology, cost=c.cost) for c in cells],
                    missing=list(missing), files=[p.name for p in files])
    files[-1].write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    return files


def _columns(rows) -> list[str]:
    """The parameters, then the results as summary_rows orders them, timing last."""
    seen = dict.fromkeys(PARAM_COLUMNS)
    for row in rows:
        seen.update(dict.fromkeys(row))
    return [c for c in seen if c not in TIMING_COLUMNS] + [c for c in TIMING_COLUMNS if c in seen]


def _write_parquet(rows, columns, path: Path) -> bool:
    full = [{c: row.get(c) for c in columns} for row in rows]
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        try:
            import fastparquet  # noqa: F401
            import pandas
        except ImportError:
            return False
        pandas.DataFrame(full, columns=columns).to_parquet(path, engine="fastparquet", index=False)
        return True
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(full), path)
    return True


def _table_rows(rows):
    """(headers, [[cell text]]) of the Markdown and LaTeX tables: one row per cell."""
    headers = ["strategy", "scan", "VMs", "topology", "costs", "host data", "page tables",
               "slots/VM", "EPT faults/VM", "exits/VM", "scan ms/VM", "setup ms/VM", "cell"]
    body = []
    for r in rows:
        line = [r["strategy"], r["scan"], str(r["vms"]), r["topology"], r["cost"]]
        if r.get("error"):
            line += [f"fails: {r['error']}"] + [""] * 6
        else:
            line += [format_size(r["data_bytes"]), format_size(r["table_bytes"]), f"{r['memslots_per_vm']:.1f}",
                     f"{r['faults_per_vm']:,.0f}", f"{r['mmio_exits_per_vm'] + r['kernel_exits_per_vm']:,.0f}",
                     f"{r['modeled_scan_ms_per_vm']:.3f}", f"{r['modeled_setup_ms_per_vm']:.3f}"]
        body.append(line + [r["key"]])
    return headers, body


def markdown_table(rows) -> str:
    """A Markdown table, one row per cell (exits: to userspace and in-kernel)."""
    headers, body = _table_rows(rows)
    esc = lambda s: s.replace("|", "\\|").replace("\n", " ")   # noqa: E731
    right = {"VMs", "host data", "page tables", "slots/VM", "EPT faults/VM", "exits/VM",
             "scan ms/VM", "setup ms/VM"}
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if h in right else "---" for h in headers) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in line) + " |" for line in body]
    return "\n".join(lines) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def latex_table(rows) -> str:
    """A LaTeX tabular, booktabs style (\\usepackage{booktabs}), one row per cell."""
    headers, body = _table_rows(rows)
    headers, body = headers[:-1], [line[:-1] for line in body]   # no key: too wide for a page
    spec = "llrll" + "r" * (len(headers) - 5)
    lines = ["% allones sweep: needs \\usepackage{booktabs}", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(latex_escape(h) for h in headers) + r" \\", "\\midrule"]
    for line in body:
        if line[5].startswith("fails: "):
            line = line[:5] + [f"\\multicolumn{{{len(headers) - 5}}}{{l}}{{{latex_escape(line[5][:60])}}}"]
            lines.append(" & ".join(latex_escape(c) for c in line[:5]) + " & " + line[5] + r" \\")
        else:
            lines.append(" & ".join(latex_escape(c) for c in line) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def plot_sweep(rows, out: Path) -> list[Path]:
    """modeled_time and memory, PNG and SVG (matplotlib, Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows if not r.get("error")]
    written = []
    with matplotlib.rc_context({"svg.hashsalt": "allones-sweep"}):
        for name, draw in (("modeled_time", _time_figure), ("memory", _memory_figure)):
            fig = draw(plt, ok)
            for ext in ("png", "svg"):
                path = Path(out) / f"{name}.{ext}"
                fig.savefig(path, dpi=130, bbox_inches="tight",
                            metadata={"Date": None} if ext == "svg" else None)
                written.append(path)
            plt.close(fig)
    return written


_STYLES = ("-", "--", ":", "-.")
_MARKERS = "osD^vx+*<>"   # overlapping lines stay visible


def _panels(plt, nrows, ncols):
    fig, axes = plt.subplots(nrows, ncols, figsize=(min(4.2 * ncols, 18), min(3.6 * nrows, 15) + 0.6),
                             squeeze=False)
    return fig, axes


def _lines(ax, rows, ykey, scale=1.0, styles=True, colors=None, ylabel=""):
    """A line per strategy (and topology, by line style) over fleet sizes. Identical series
    (one would hide the other) are one line whose label names every strategy. Linear y
    starts at 0; a log y (over a decade or more) says so in `ylabel`, and a series with no
    positive value is named in the x label, not drawn. Returns the names not drawn."""
    from .figures import merge_series, palette
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    topologies = list(dict.fromkeys(r["topology"] for r in rows))
    colors = colors or palette(len(strategies))
    named = []       # ((topology index, strategy), points)
    for t, topology in enumerate(topologies):
        for strategy in strategies:
            pts = sorted((r["vms"], r[ykey] * scale) for r in rows
                         if r["strategy"] == strategy and r["topology"] == topology)
            if pts:
                named.append(((t, strategy), pts))
    series = []      # (topology index, first strategy index, label, points)
    for members, pts in merge_series(named):
        t, first = members[0]
        series.append((t, strategies.index(first), _label(members, topologies, styles), pts))
    positive = [y for *_, pts in series for _, y in pts if y > 0]
    log = bool(positive) and max(positive) > 10 * min(positive)   # log only over a decade or more
    hidden = []
    for t, s, label, pts in series:
        if log and not any(y > 0 for _, y in pts):
            hidden.append(label)
            continue
        ax.plot(*zip(*pts), _STYLES[t % len(_STYLES)] if styles else "-", label=label,
                color=colors[s], marker=_MARKERS[s % len(_MARKERS)], ms=4, mfc="none")
    xs = sorted({r["vms"] for r in rows})
    if xs:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
    if log:
        ax.set_yscale("log")
    else:           # from 0, and room above the highest line (it is not the frame)
        ax.set_ylim(0, max((y for *_, pts in series for _, y in pts), default=0) * 1.08 or 1)
    if ylabel and log:
        ylabel = f"{ylabel[:-1]}, log)" if ylabel.endswith(")") else f"{ylabel} (log)"
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=8)
    return hidden


def _label(members, topologies, styles) -> str:
    """A merged line's label: its strategies, and (several topologies) the topologies each
    set of strategies is drawn for: "filled, allones (q35, farm)"."""
    if len(topologies) == 1 or not styles:
        return ", ".join(dict.fromkeys(s for _, s in members))
    by_topology: dict = {}
    for t, strategy in members:
        by_topology.setdefault(topologies[t], []).append(strategy)
    parts: dict = {}
    for topology, names in by_topology.items():
        parts.setdefault(", ".join(names), []).append(topology)
    return "; ".join(f"{names} ({', '.join(tops)})" for names, tops in parts.items())


def _xlabel(ax, last_row, hidden):
    lines = (["VMs on the host"] if last_row else []) + (
        [f"0, not drawn on a log axis: {', '.join(hidden)}"] if hidden else [])
    ax.set_xlabel("\n".join(lines) or None, fontsize=8)


def _legend(ax):
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)


def _time_figure(plt, rows):
    """A panel per scan (columns) and cost variant (rows), each with its own legend (which
    series coincide differs between panels)."""
    scans = list(dict.fromkeys(r["scan"] for r in rows)) or ["(no results)"]
    costs = list(dict.fromkeys(r["cost"] for r in rows)) or [""]
    colors = _palette_for(rows)
    fig, axes = _panels(plt, len(costs), len(scans))
    for i, cost in enumerate(costs):
        for j, scan in enumerate(scans):
            ax = axes[i][j]
            group = [r for r in rows if r["scan"] == scan and r["cost"] == cost]
            hidden = _lines(ax, group, "modeled_scan_ms_per_vm", colors=_recolor(colors, group),
                            ylabel="modeled scan ms per VM")
            ax.set_title(scan if len(costs) == 1 else f"{scan}\ncosts: {cost}", fontsize=9)
            _xlabel(ax, i == len(costs) - 1, hidden)
            _legend(ax)
    fig.suptitle("Modeled scan time per VM (ECAM + port I/O) vs fleet size")
    fig.tight_layout()
    return fig


def _palette_for(rows, extra=0):
    """{strategy: colour}, one colour per strategy of the whole figure (and `extra` more)."""
    from .figures import palette
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    colors = palette(len(strategies) + extra)
    return dict(zip(strategies, colors)), colors[len(strategies):]


def _recolor(colors, group):
    """The colours of a panel's strategies, in its order, so a strategy keeps its colour."""
    return [colors[0][s] for s in dict.fromkeys(r["strategy"] for r in group)]


def _memory_figure(plt, rows):
    """Host data memory does not depend on the cost constants: the first variant's rows.
    A strategy with KSM has a second series, once merged, in a colour of its own."""
    first = next((r["cost"] for r in rows), None)
    rows = [r for r in rows if r["cost"] == first]
    scans = list(dict.fromkeys(r["scan"] for r in rows)) or ["(no results)"]
    topologies = list(dict.fromkeys(r["topology"] for r in rows)) or [""]
    ksm = list(dict.fromkeys(r["strategy"] for r in rows if r["data_bytes_merged"] != r["data_bytes"]))
    colors = _palette_for(rows, len(ksm))
    fig, axes = _panels(plt, len(topologies), len(scans))
    for i, topology in enumerate(topologies):
        for j, scan in enumerate(scans):
            ax = axes[i][j]
            group = [r for r in rows if r["scan"] == scan and r["topology"] == topology]
            if not group:      # a capture runs on its own topology, not on the mixes
                ax.axis("off")
                continue
            hidden = _lines(ax, group, "data_bytes", 1 / MIB, styles=False, colors=_recolor(colors, group),
                            ylabel="host data memory (MiB)")
            for strategy, color in zip(ksm, colors[1]):
                merged = sorted((r["vms"], r["data_bytes_merged"] / MIB) for r in group
                                if r["strategy"] == strategy and r["data_bytes_merged"] != r["data_bytes"])
                if merged:
                    ax.plot(*zip(*merged), ":", color=color, marker="*", ms=7,
                            label=f"{strategy} after KSM merge")
            ax.set_title(scan if len(topologies) == 1 else f"{scan}\nmix: {topology}", fontsize=9)
            _xlabel(ax, i == len(topologies) - 1, hidden)
            _legend(ax)
    fig.suptitle("Host data memory vs fleet size")
    fig.tight_layout()
    return fig
