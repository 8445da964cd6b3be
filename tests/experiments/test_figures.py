"""The figures tell the truth: checked on their data (the artists matplotlib would draw), not
their pixels. Every legend entry is a visible series, no two share a colour, a zero is drawn
as zero, every scan and event kind the rows carry is drawn, and axes say what they are."""

import math

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt                                     # noqa: E402
from matplotlib.colors import to_rgb                                # noqa: E402
from matplotlib.container import BarContainer                       # noqa: E402
from matplotlib.lines import Line2D                                 # noqa: E402

from allones.experiments import figures, report, sweep_outputs      # noqa: E402
from allones.experiments.compare import DEFAULT_SCANS, compare      # noqa: E402
from allones.experiments.strategies import STRATEGIES as ALL        # noqa: E402

STRATEGIES = list(ALL)         # all ten: as many series as the default figures have
SCANS = DEFAULT_SCANS[:3]      # x86 default (port I/O), MMCONFIG, brute-force


@pytest.fixture(scope="module")
def grid():
    """A small compare: 2 VMs, filled fleets counted not allocated (ram_budget=0)."""
    results = compare(STRATEGIES, SCANS, n_vms=2, mix=("q35",), workers=1, ram_budget=0)
    return results, report.summary_rows(results)


@pytest.fixture(scope="module")
def drawn(grid):
    results, rows = grid
    made = {name: draw(plt, results, rows) for name, draw in (
        ("memory", figures.memory_figure), ("time", figures.time_figure), ("events", figures.events_figure))}
    yield made
    for fig in made.values():
        plt.close(fig)


def series_of(ax):
    """{label: [artists]} of the series an axes draws (lines, bar containers)."""
    out = {}
    for artist in list(ax.lines) + list(ax.containers):
        label = artist.get_label()
        if label and not label.startswith("_"):
            out.setdefault(label, []).append((ax, artist))
    return out


def legends(fig):
    """[(legend, {label: [(ax, artist)]})]: an axes legend's series are its axes', a figure
    legend's any axes'."""
    found = []
    everywhere = {}
    for ax in fig.axes:
        for label, artists in series_of(ax).items():
            everywhere.setdefault(label, []).extend(artists)
        if ax.get_legend() is not None:
            found.append((ax.get_legend(), series_of(ax)))
    found += [(legend, everywhere) for legend in fig.legends]
    return found


def visible(ax, artist) -> bool:
    if isinstance(artist, Line2D):
        ys = [float(y) for y in artist.get_ydata()]
        if ax.get_yscale() == "log":
            return any(math.isfinite(y) and y > 0 for y in ys)
        return any(math.isfinite(y) for y in ys)
    if isinstance(artist, BarContainer):
        return any(p.get_height() != 0 and p.get_width() != 0 for p in artist.patches)
    raise AssertionError(f"unexpected series {artist!r}")


def colour(artist):
    if isinstance(artist, Line2D):
        return to_rgb(artist.get_color())
    return to_rgb(artist.patches[0].get_facecolor()) if artist.patches else None


def titles(fig):
    return [fig.get_suptitle()] + [ax.get_title() for ax in fig.axes]


def check_legends(fig, distinct=lambda artist: colour(artist)):
    """Every entry of every legend has a visible series; no two entries look alike."""
    found = legends(fig)
    assert found, "no legend"
    for legend, series in found:
        labels = [t.get_text() for t in legend.get_texts()]
        assert len(labels) == len(set(labels)), labels
        looks = []
        for label in labels:
            assert label in series, f"legend entry {label!r} draws nothing"
            assert any(visible(ax, a) for ax, a in series[label]), f"legend entry {label!r} is not visible"
            looks.append(distinct(series[label][0][1]))
        assert len(looks) == len(set(looks)), f"two legend entries look alike: {list(zip(labels, looks))}"
        curves = [(tuple(a.get_xdata()), tuple(a.get_ydata())) for label in labels
                  for _, a in series[label] if isinstance(a, Line2D)]
        assert len(curves) == len(set(curves)), "two legend entries draw the same curve (one hides the other)"


@pytest.mark.parametrize("name", ["memory", "time", "events"])
def test_compare_legend_entries_are_visible_and_distinct(drawn, name):
    check_legends(drawn[name])


@pytest.mark.parametrize("name", ["memory", "time", "events"])
def test_compare_titles_have_no_doubled_parentheses(drawn, name):
    for title in titles(drawn[name]):
        assert "((" not in title and "))" not in title, title


def test_figure_functions_return_their_figure(drawn):
    assert all(isinstance(fig, matplotlib.figure.Figure) for fig in drawn.values())


def by_scan(rows, scan):
    return {r["strategy"]: r for r in rows if r["scan"] == scan}


def test_events_has_a_panel_per_scan_and_a_port_io_series(grid, drawn):
    _, rows = grid
    fig = drawn["events"]
    assert [ax.get_title() for ax in fig.axes] == [s.label for s in SCANS]
    names = [name for _, name in figures.EVENT_KEYS]
    assert "exits to port I/O (conf1)" in names
    assert dict(figures.EVENT_KEYS)["pio_exits_per_vm"] == "exits to port I/O (conf1)"
    x86 = series_of(fig.axes[0])["exits to port I/O (conf1)"][0][1]
    assert any(p.get_height() > 0 for p in x86.patches)      # the x86 default boot's conf1 exits


def test_events_bars_are_the_data_and_zero_is_zero(grid, drawn):
    _, rows = grid
    fig = drawn["events"]
    for ax, spec in zip(fig.axes, SCANS):
        assert ax.get_yscale() != "log" and ax.get_ylim()[0] == 0     # symlog: a zero is no bar
        by = by_scan(rows, spec.label)
        ok = [s for s in STRATEGIES if not by[s]["error"]]
        zeros = 0
        for key, name in figures.EVENT_KEYS:
            (_, bars), = series_of(ax)[name]
            heights = [p.get_height() for p in bars.patches]
            assert heights == pytest.approx([by[s][key] for s in ok]), (spec.label, name)
            zeros += heights.count(0)
        assert zeros > 0
        texts = [t.get_text() for t in ax.texts]
        assert texts.count("0") >= zeros                              # each zero says 0
        assert any("ENOMEM" in t for t in texts)                      # memfd-alias: its error


def test_time_bars_stack_ecam_port_io_and_setup(grid, drawn):
    _, rows = grid
    fig = drawn["time"]
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [s.label for s in SCANS]
    parts = [name for _, name, _ in figures._TIME_PARTS]
    assert "setup (fill, memslots)" in parts
    top = max(r["modeled_ecam_ms_per_vm"] + r["modeled_pio_ms_per_vm"] + r["modeled_setup_ms_per_vm"]
              for r in rows if not r["error"])
    for ax, spec in zip(panels, SCANS):
        by = by_scan(rows, spec.label)
        series = series_of(ax)
        left = [0.0] * len(STRATEGIES)
        for key, name, _ in figures._TIME_PARTS:
            (_, bars), = series[name]
            want = [0.0 if by[s]["error"] else by[s][key] for s in STRATEGIES]
            assert [p.get_width() for p in bars.patches] == pytest.approx(want), (spec.label, name)
            assert [p.get_x() for p in bars.patches] == pytest.approx(left)
            left = [a + b for a, b in zip(left, want)]
        setup = dict(zip(STRATEGIES, [p.get_width() for p in series["setup (fill, memslots)"][0][1].patches]))
        assert setup["filled"] == pytest.approx(by["filled"]["modeled_setup_ms_per_vm"]) and setup["filled"] > 50
        assert ax.get_xlim()[1] >= 1.15 * top * 0.999                 # the longest bar ends inside
        assert ax.get_xlim() == fig.axes[0].get_xlim()                # one x scale for all
        red = [t.get_text() for t in ax.texts if to_rgb(t.get_color()) == to_rgb("red")]
        assert red and all("ENOMEM" in t for t in red)
        totals = {t.get_text() for t in ax.texts}
        assert f"{left[STRATEGIES.index('filled')]:.1f}" in totals     # the value at the bar's end
    assert fig.legends and not any(ax.get_legend() for ax in fig.axes)   # above the panels


def test_memory_has_a_data_panel_and_a_page_table_panel(grid, drawn):
    results, _ = grid
    fig = drawn["memory"]
    data, tables = fig.axes
    assert "data" in data.get_title() and "page-table" in tables.get_title()
    fleets = {f.strategy: f for spec, f in results if spec.label == "brute-force" and not f.error}
    for ax, curve in ((data, "memory_curve"), (tables, "table_curve")):
        assert ax.get_yscale() == "log" and "log" in ax.get_ylabel() and ax.get_xlabel()
        drawn_names = []
        for label, ((_, line),) in series_of(ax).items():
            if "KSM" in label:
                continue
            names = label.split(":")[0].split(", ")
            drawn_names += names
            for name in names:          # a merged line is every one of its strategies' curve
                assert list(line.get_ydata()) == getattr(fleets[name], curve), (label, name)
        hidden = set(fleets) - set(drawn_names)
        assert all(not any(getattr(fleets[s], curve)) for s in hidden)   # only zeros are not drawn
        assert all(s in ax.get_xlabel() for s in hidden)                  # and they are named
        assert "memfd-alias" in ax.get_xlabel()                           # so is the failure
    allones = next(line for label, ((_, line),) in series_of(data).items() if "allones" in label.split(":")[0].split(", "))
    assert set(allones.get_ydata()) == {4096}                # one 4 KiB page per host
    ksm, = [(label, line) for label, ((_, line),) in series_of(data).items() if "KSM" in label]
    assert "filled-ksm after KSM merge" in ksm[0] and "min" in ksm[0]
    assert list(ksm[1].get_ydata()) == [fleets["filled-ksm"].host["data_bytes_merged"]]
    assert any("after KSM merge" in t.get_text() for t in data.texts)    # annotated on the panel


def sweep_rows(topologies=("q35",)):
    """Sweep rows as run_sweep writes them: mmio a little slower than filled and allones,
    which coincide; pci-hole has no host data (0 B); filled-ksm merges."""
    rows = []
    for topology in topologies:
        for cost, slow in (("default", 1.0), ("slow-exits", 2.0)):
            for vms in (2, 8):
                for strategy, ms, data, merged in (
                        ("mmio", 7.02, 4096, 4096), ("pci-hole", 6.9, 0, 0), ("filled", 6.85, vms << 28, vms << 28),
                        ("filled-ksm", 6.85, vms << 28, 8192), ("allones", 6.85, 4096, 4096)):
                    rows.append(dict(strategy=strategy, scan="linux-probe (MMCONFIG)", topology=topology,
                                     cost=cost, vms=vms, modeled_scan_ms_per_vm=ms * slow, data_bytes=data,
                                     data_bytes_merged=merged))
    return rows


@pytest.mark.parametrize("topologies", [("q35",), ("q35", "farm")])
@pytest.mark.parametrize("draw", [sweep_outputs._time_figure, sweep_outputs._memory_figure])
def test_sweep_figures_merge_identical_series_and_label_their_axes(draw, topologies):
    fig = draw(plt, sweep_rows(topologies))
    try:
        # a strategy keeps its colour in every panel; topologies differ by line style
        check_legends(fig, lambda a: (colour(a), a.get_linestyle()))
        for ax in fig.axes:
            if not ax.axison:
                continue
            labels = [line.get_label() for line in ax.lines]
            if draw is sweep_outputs._time_figure:
                assert any(label.startswith("filled, filled-ksm, allones") for label in labels), labels
            else:
                assert "mmio, allones" in labels and "filled, filled-ksm" in labels, labels
                assert "filled-ksm after KSM merge" in labels
                assert "pci-hole" in ax.get_xlabel()          # 0 B on a log axis: named, not drawn
            if ax.get_yscale() == "log":
                assert "log" in ax.get_ylabel()
            else:
                assert ax.get_ylim()[0] == 0                  # a 2.5 % gap is not drawn as a chasm
                assert ax.get_ylim()[1] > max(max(line.get_ydata()) for line in ax.lines)
        assert all("((" not in t and "))" not in t for t in titles(fig))
    finally:
        plt.close(fig)


def test_plot_sweep_writes_both_figures(tmp_path):
    written = sweep_outputs.plot_sweep(sweep_rows(), tmp_path)
    assert sorted(p.name for p in written) == ["memory.png", "memory.svg", "modeled_time.png",
                                               "modeled_time.svg"]
    assert all(p.stat().st_size > 0 for p in written)
