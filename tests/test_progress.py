"""What `run` prints while the grid runs, in a log (plain lines) and on a terminal (live)."""

from __future__ import annotations

import io
from types import SimpleNamespace

from fake_results import fake_result
from rich.console import Console

from bayesbench.progress import GridProgress, format_duration


def test_format_duration():
    assert [format_duration(s) for s in (0, 8.4, 59.6, 75, 3599, 3725)] == [
        "0s", "8s", "1m00s", "1m15s", "59m59s", "1h02m"]


def specs_and_results():
    results = [fake_result("map", "toy", s, 0.9, 0.05) for s in range(3)]
    results[2].status, results[2].error = "failed", "RuntimeError: boom"
    specs = [SimpleNamespace(key=r.key, label=r.label, dataset_label=r.dataset, seed=r.seed)
             for r in results]
    return specs, results


def test_a_log_gets_one_plain_line_per_finished_run_with_the_eta():
    specs, results = specs_and_results()
    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=False)
    with GridProgress(specs, stored={specs[0].key}, console=console) as progress:
        assert progress.eta() == "eta unknown"
        for r in results[1:]:
            progress.on_event(("start", r.key))
            progress.on_event(("epoch", r.key, "train", 1, 2, 0.5))
            progress.on_event(("evaluate", r.key))
            progress.on_result(r)
        assert progress.eta() == "done"
    lines = buf.getvalue().splitlines()
    assert lines[0] == "2 of 3 run(s) to do, 1 already stored"
    assert lines[1].startswith("[2/3] complete map · toy · seed 1  ")
    assert "accuracy 0.900 ece 0.050  eta " in lines[1]  # one left, at the rate seen so far
    assert lines[2].startswith("[3/3] failed map · toy · seed 2: RuntimeError: boom")
    assert len(lines) == 3  # epochs and phases are not logged line by line


def test_the_live_display_shows_each_run_and_evaluating():
    specs, results = specs_and_results()
    console = Console(file=io.StringIO(), width=200, force_terminal=True)
    with GridProgress(specs, stored=set(), console=console, live=True) as progress:
        progress.on_event(("start", results[0].key))
        progress.on_event(("epoch", results[0].key, "train", 1, 4, 0.5))
        task = progress._progress.tasks[-1]
        assert (task.completed, task.total, task.fields["info"]) == (1, 4, "train loss 0.500")
        progress.on_event(("evaluate", results[0].key))
        assert progress._progress.tasks[-1].fields["info"] == "evaluating"
        progress.on_result(results[0])
        assert len(progress._progress.tasks) == 1  # the run's line is gone, the grid's stays
        assert progress._progress.tasks[0].completed == 1


def test_a_run_its_backbone_cannot_serve_is_counted_and_its_reason_shown():
    specs, results = specs_and_results()
    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=False)
    with GridProgress(specs, stored=set(), console=console) as progress:
        progress.on_event(("unsupported", specs[0].key, "mfvi replaces linear layers"))
        assert progress.completed == 1
        for r in results[1:]:
            progress.on_result(r)
        assert progress.eta() == "done"
    lines = buf.getvalue().splitlines()
    assert lines[1] == "skipped map · toy · seed 0: mfvi replaces linear layers"
