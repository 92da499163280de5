"""The report's figures are laid out with explicit margins (constrained layout cost half of
their drawing time): no two texts overlap and every text lies inside the figure, for the
smallest and the largest grids the report draws."""

from __future__ import annotations

import itertools

import matplotlib.figure
import matplotlib.text
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from bayesbench.report.figures import reliability_stats_png
from bayesbench.report.sweeps import sweep_png, sweep_summary
from tests.test_sweeps import sweep_runs


@pytest.fixture
def drawn(monkeypatch):
    """The Figure objects the drawing functions save (their PNG bytes say nothing of it)."""
    figures = []
    save = matplotlib.figure.Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    return figures


def _texts(fig):
    """Window extents of every visible, non-empty text: titles, labels, tick labels, legend."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    skipped = set()  # ids of texts matplotlib does not draw
    for ax in fig.axes:
        if not ax.get_visible():  # an unused grid cell
            skipped.update(id(t) for t in ax.findobj(matplotlib.text.Text))
            continue
        for axis in (ax.xaxis, ax.yaxis):  # spare tick labels off the axis
            ticks = axis.get_major_ticks() + axis.get_minor_ticks()
            drawn = {id(t.label1) for t in axis._update_ticks()}
            skipped.update(id(label) for t in ticks for label in (t.label1, t.label2)
                           if id(label) not in drawn)
    out = []
    for text in fig.findobj(matplotlib.text.Text):
        if id(text) not in skipped and text.get_visible() and text.get_text().strip():
            out.append((text.get_text(), text.get_window_extent(renderer)))
    return out


def _check_layout(fig):
    width, height = fig.bbox.width, fig.bbox.height
    texts = _texts(fig)
    assert texts
    for label, box in texts:
        assert box.x0 >= -0.5 and box.y0 >= -0.5, f"{label!r} is cut off: {box}"
        assert box.x1 <= width + 0.5 and box.y1 <= height + 0.5, f"{label!r} is cut off: {box}"
    legend_texts = {t.get_text() for ax in fig.axes if ax.get_legend()
                    for t in ax.get_legend().get_texts()}
    for (a, box_a), (b, box_b) in itertools.combinations(texts, 2):
        if a in legend_texts and b in legend_texts:
            continue  # a legend's entries are stacked by the legend itself
        overlap = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0), \
            min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
        assert not (overlap[0] > 1 and overlap[1] > 1), f"{a!r} overlaps {b!r}"


def _reliability(n_bins: int = 15) -> dict:
    counts = [0] * 5 + [10] * (n_bins - 5)
    return {"n_bins": n_bins, "counts": counts,
            "confidence_sum": [c * (i + 0.5) / n_bins for i, c in enumerate(counts)],
            "correct_sum": [c * 0.8 for c in counts]}


@pytest.mark.parametrize("labels", [1, 4, 18])
def test_reliability_panels_do_not_overlap(drawn, labels):
    stats = {f"method_{i}@kl_weight=0.001": [_reliability(), _reliability()]
             for i in range(labels)}
    if labels > 1:
        stats["no_data"] = [None]
    reliability_stats_png("digits", stats)
    _check_layout(drawn[-1])


@pytest.mark.parametrize("swept", [("prior_scale",), ("prior_scale", "temperature")])
def test_sweep_panels_do_not_overlap(drawn, swept):
    runs = [r for r in sweep_runs() if r.label == "map" or r.spec["swept"]]
    for r in runs:
        r.spec["swept"] = {k: v for k, v in r.spec["swept"].items() if k in swept}
    members = [r for r in runs if r.spec["swept"]]
    sweep_png("toy", "mfvi", sweep_summary(members), reference={"nll": 0.5})
    _check_layout(drawn[-1])
