"""Figures (and CSVs, report.html) are redrawn only when their inputs change: which files a
second report rewrites, the input hashes, and parallel drawing giving the same bytes."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from fake_results import fake_result

from bayesbench.report import write_report
from bayesbench.report.render import (
    MANIFEST,
    FigureJob,
    frame_digest,
    input_hash,
    render_figures,
)
from bayesbench.store import ResultStore

FIGURES = ["cd_diagram.png", "cost_quality.png", "reliability_tiny.png", "reliability_toy.png"]


@pytest.fixture
def store(tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    for seed in range(2):
        for label, acc, ece in (("map", 0.9, 0.1), ("vi", 0.8, 0.05)):
            store.write(fake_result(label, "toy", seed, acc + 0.01 * seed, ece))
            store.write(fake_result(label, "tiny", seed, acc, ece + 0.01 * seed, shift=False,
                                    ood=False))
    return store


def _files(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_a_second_report_of_unchanged_runs_redraws_and_rewrites_nothing(store, tmp_path):
    out = tmp_path / "out"
    first: list[str] = []
    paths = write_report(store, out, rendered=first, workers=1)
    assert sorted(first) == FIGURES
    assert {p.name for p in paths} >= set(FIGURES) | {"report.html", "results.csv"}
    before = _files(out)
    again: list[str] = []
    assert write_report(store, out, rendered=again) == paths  # the same files, in order
    assert again == []
    after = _files(out)
    # leaderboard.md is always rewritten (same bytes); nothing else is touched at all
    assert {n: v[0] for n, v in after.items()} == {n: v[0] for n, v in before.items()}
    touched = {n for n in after if after[n][1] != before[n][1]}
    assert touched <= {"leaderboard.md"}


def test_changing_one_run_redraws_only_the_figures_it_feeds(store, tmp_path):
    out = tmp_path / "out"
    write_report(store, out, workers=1)
    toy = (out / "reliability_toy.png").read_bytes()
    results = (out / "results.csv").read_text()
    # vi on tiny, seed 0: other reliability bins and a slightly better accuracy; every mean
    # rank stays as it was, so the critical-difference diagram's inputs are unchanged
    run = fake_result("vi", "tiny", 0, 0.81, 0.05, shift=False, ood=False)
    run.reliability = {**run.reliability, "correct_sum": [0, 1, 1, 3, 4]}
    store.write(run)
    rendered: list[str] = []
    write_report(store, out, rendered=rendered, workers=1)
    assert sorted(rendered) == ["cost_quality.png", "reliability_tiny.png"]
    assert (out / "reliability_toy.png").read_bytes() == toy
    new_results = (out / "results.csv").read_text()
    assert new_results != results and "0.81" in new_results
    # a fresh report of the changed store in an empty folder gives the very same files
    fresh = tmp_path / "fresh"
    write_report(store, fresh, workers=1)
    for name in [*FIGURES, "results.csv", "summary.csv", "comparisons.csv", "report.html"]:
        assert (out / name).read_bytes() == (fresh / name).read_bytes(), name


def test_a_missing_or_edited_figure_is_redrawn(store, tmp_path):
    out = tmp_path / "out"
    write_report(store, out, workers=1)
    original = (out / "reliability_toy.png").read_bytes()
    (out / "reliability_toy.png").write_bytes(b"not the figure")
    (out / "cd_diagram.png").unlink()
    (out / "summary.csv").write_text("edited\n")
    rendered: list[str] = []
    write_report(store, out, rendered=rendered, workers=1)
    assert sorted(rendered) == ["cd_diagram.png", "reliability_toy.png"]
    assert (out / "reliability_toy.png").read_bytes() == original
    assert (out / "summary.csv").read_text().startswith("label,method,dataset")
    # a damaged manifest only costs a redraw
    (out / MANIFEST).write_text("{not json")
    rendered.clear()
    write_report(store, out, rendered=rendered, workers=1)
    assert sorted(rendered) == FIGURES
    assert json.loads((out / MANIFEST).read_text())["version"] == 1


def test_parallel_drawing_gives_the_same_bytes(store, tmp_path):
    write_report(store, tmp_path / "serial", workers=1)
    write_report(store, tmp_path / "parallel", workers=2)
    for name in [*FIGURES, "report.html"]:
        assert (tmp_path / "serial" / name).read_bytes() == \
            (tmp_path / "parallel" / name).read_bytes(), name


def _draw_constant(value):
    return f"png {value}".encode()


def test_render_figures_writes_due_jobs_and_reports_them(tmp_path):
    jobs = [FigureJob("a.png", _draw_constant, (1,)), FigureJob("b.png", _draw_constant, (2,))]
    rendered: list[str] = []
    assert render_figures(jobs, tmp_path, workers=1, rendered=rendered) == [
        tmp_path / "a.png", tmp_path / "b.png"]
    assert rendered == ["a.png", "b.png"] and (tmp_path / "b.png").read_bytes() == b"png 2"
    rendered.clear()
    jobs[1] = FigureJob("b.png", _draw_constant, (3,))
    render_figures(jobs, tmp_path, workers=1, rendered=rendered)
    assert rendered == ["b.png"] and (tmp_path / "b.png").read_bytes() == b"png 3"
    with pytest.raises(ValueError, match="share a file name"):
        render_figures([jobs[0], jobs[0]], tmp_path)


def test_input_hash_sees_every_value_and_its_order():
    frame = pd.DataFrame({"label": ["map", "vi"], "nll": [0.5, 0.25]})

    def h(*args):
        return input_hash(_draw_constant, args)

    assert h(frame, {"a": 1.0}) == h(frame.copy(), {"a": 1.0})
    assert h(frame) != h(frame.assign(nll=[0.5, 0.25 + 1e-15]))
    assert h(frame) != h(frame.iloc[::-1].reset_index(drop=True))
    assert h({"a": 1, "b": 2}) != h({"b": 2, "a": 1})  # the order of panels is shown
    assert h([None]) != h(["None"]) and h([1]) != h([1.0]) and h([True]) != h([1])
    assert h(math.nan) == h(float("nan")) and h(np.float64(0.5)) == h(0.5)
    with pytest.raises(TypeError, match="cannot hash"):
        h(object())


def test_frame_digest_tells_apart_frames_whose_csvs_differ():
    frame = pd.DataFrame({"key": ["a", "b", None], "value": [1.0, 2.0, math.nan],
                          "severity": pd.array([1, None, 2], dtype="Int64")})
    same = frame.copy()
    assert frame_digest(frame) == frame_digest(same)
    assert frame_digest(frame) != frame_digest(frame.assign(key=["a", "b", "None"]))
    assert frame_digest(frame) != frame_digest(frame.assign(value=[1.0, 2.0, 3.0]))
    assert frame_digest(frame) != frame_digest(
        frame.assign(severity=pd.array([1, 3, 2], dtype="Int64")))
    assert frame_digest(frame) != frame_digest(frame.rename(columns={"key": "run"}))


def test_a_list_of_floats_hashes_as_its_items_do():
    values = [0.5, math.nan, 2.0]
    assert input_hash(_draw_constant, (values,)) == input_hash(
        _draw_constant, ([np.float64(0.5), float("nan"), np.float64(2.0)],))
    assert input_hash(_draw_constant, ([0.5, 2.0],)) != input_hash(_draw_constant, ([0.5, 2],))
